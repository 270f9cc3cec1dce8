-- Registered devices; tokens are stored only as SHA-256 hashes.
CREATE TABLE IF NOT EXISTS ${DB}.devices ${ON_CLUSTER}
(
    org_id      LowCardinality(String),
    device_id   String,
    name        String,
    token_hash  String,
    schedule    String COMMENT 'work hours as JSON {tz, days, start, end}; empty = all hours',
    active      Bool,
    updated     DateTime64(3, 'UTC')
)
ENGINE = ${REPLACING_V(updated)}
ORDER BY (org_id, device_id)
