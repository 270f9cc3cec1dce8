-- Input that could not be used, with the reason and the original bytes.
CREATE TABLE IF NOT EXISTS ${DB}.dead_letters ${ON_CLUSTER}
(
    id           String,
    org_id       LowCardinality(String),
    device_id    String,
    received     DateTime64(3, 'UTC'),
    source       LowCardinality(String),
    reason       String,
    payload      String
)
ENGINE = ${REPLACING}
PARTITION BY toDate(received)
ORDER BY (org_id, received, id)
TTL toDateTime(received) + INTERVAL ${RAW_TTL_DAYS} DAY
