-- Verified customer visits: a dwell within the customer's radius.
CREATE TABLE IF NOT EXISTS ${DB}.visits ${ON_CLUSTER}
(
    id              String,
    org_id          LowCardinality(String),
    device_id       String,
    customer_id     String,
    dwell_id        String,
    arrive          DateTime64(3, 'UTC'),
    leave           DateTime64(3, 'UTC'),
    minutes         Float32,
    distance_m      Float32,
    customer_grade  LowCardinality(String),
    verified        Bool COMMENT 'false when an anti-cheat episode overlaps the visit',
    suspect_alerts  String COMMENT 'alert types behind verified = false'
)
ENGINE = ${REPLACING}
PARTITION BY toDate(arrive)
ORDER BY (org_id, device_id, arrive, id)
