CREATE TABLE IF NOT EXISTS ${DB}.fences ${ON_CLUSTER}
(
    org_id    LowCardinality(String),
    fence_id  String,
    name      String,
    kind      LowCardinality(String) COMMENT 'office | workshop | territory | forbidden | customer',
    geojson   String COMMENT 'the GeoJSON Feature as imported',
    updated   DateTime64(3, 'UTC')
)
ENGINE = ${REPLACING_V(updated)}
ORDER BY (org_id, fence_id)
