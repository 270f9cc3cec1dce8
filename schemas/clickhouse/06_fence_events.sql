CREATE TABLE IF NOT EXISTS ${DB}.fence_events ${ON_CLUSTER}
(
    id          String,
    org_id      LowCardinality(String),
    device_id   String,
    fence_id    String,
    fence_kind  LowCardinality(String),
    transition  LowCardinality(String) COMMENT 'enter | exit',
    ts          DateTime64(3, 'UTC'),
    lat         Float64,
    lon         Float64,
    accuracy_m  Float32
)
ENGINE = ${REPLACING}
PARTITION BY toDate(ts)
ORDER BY (org_id, device_id, ts, id)
