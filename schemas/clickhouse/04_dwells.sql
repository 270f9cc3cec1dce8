-- Stays; the open row is replaced by the closed one (higher version).
CREATE TABLE IF NOT EXISTS ${DB}.dwells ${ON_CLUSTER}
(
    id           String,
    org_id       LowCardinality(String),
    device_id    String,
    start        DateTime64(3, 'UTC'),
    end          DateTime64(3, 'UTC'),
    lat          Float64,
    lon          Float64,
    radius_m     Float32,
    n_points     UInt32,
    status       LowCardinality(String) COMMENT 'open | closed',
    end_reason   LowCardinality(String) COMMENT 'moved | gap | flush, empty while open',
    customer_id  String,
    version      UInt32
)
ENGINE = ${REPLACING_V(version)}
PARTITION BY toDate(start)
ORDER BY (org_id, device_id, start, id)
