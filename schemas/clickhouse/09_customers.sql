CREATE TABLE IF NOT EXISTS ${DB}.customers ${ON_CLUSTER}
(
    org_id       LowCardinality(String),
    customer_id  String,
    name         String,
    lat          Float64,
    lon          Float64,
    radius_m     Float32,
    grade        LowCardinality(String) COMMENT 'A | B | C',
    updated      DateTime64(3, 'UTC')
)
ENGINE = ${REPLACING_V(updated)}
ORDER BY (org_id, customer_id)
