-- Every accepted fix as the phone sent it (inside work hours only: privacy).
CREATE TABLE IF NOT EXISTS ${DB}.raw_pings ${ON_CLUSTER}
(
    org_id       LowCardinality(String),
    device_id    String,
    seq          UInt64,
    ts           DateTime64(3, 'UTC') COMMENT 'event time (phone clock)',
    lat          Float64,
    lon          Float64,
    accuracy_m   Float32,
    speed_mps    Nullable(Float32),
    bearing_deg  Nullable(Float32),
    altitude_m   Nullable(Float32),
    provider     LowCardinality(String),
    is_mock      Bool,
    battery_pct  Nullable(Float32),
    received     DateTime64(3, 'UTC') COMMENT 'gateway receive time'
)
ENGINE = ${REPLACING}
PARTITION BY toDate(ts)
ORDER BY (org_id, device_id, ts, seq)
TTL toDateTime(ts) + INTERVAL ${RAW_TTL_DAYS} DAY
