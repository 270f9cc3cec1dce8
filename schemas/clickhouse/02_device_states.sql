-- Power, app, GPS, permission, network and integrity changes reported by phones.
CREATE TABLE IF NOT EXISTS ${DB}.device_states ${ON_CLUSTER}
(
    org_id     LowCardinality(String),
    device_id  String,
    ts         DateTime64(3, 'UTC'),
    kind       LowCardinality(String),
    detail     String,
    received   DateTime64(3, 'UTC')
)
ENGINE = ${REPLACING}
PARTITION BY toDate(ts)
ORDER BY (org_id, device_id, ts, kind)
TTL toDateTime(ts) + INTERVAL ${RAW_TTL_DAYS} DAY
