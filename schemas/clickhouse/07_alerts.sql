-- Spoofing, left post, forbidden zone, lost contact / restored: with the evidence.
CREATE TABLE IF NOT EXISTS ${DB}.alerts ${ON_CLUSTER}
(
    id         String,
    org_id     LowCardinality(String),
    device_id  String,
    ts         DateTime64(3, 'UTC'),
    type       LowCardinality(String),
    severity   LowCardinality(String),
    message    String,
    evidence   Map(String, String)
)
ENGINE = ${REPLACING}
PARTITION BY toDate(ts)
ORDER BY (org_id, device_id, ts, id)
