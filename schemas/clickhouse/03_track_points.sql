-- The cleaned trajectory: raw and smoothed position per fix; sum(step_m) is the mileage.
CREATE TABLE IF NOT EXISTS ${DB}.track_points ${ON_CLUSTER}
(
    org_id       LowCardinality(String),
    device_id    String,
    seq          UInt64,
    ts           DateTime64(3, 'UTC'),
    raw_lat      Float64,
    raw_lon      Float64,
    lat          Float64,
    lon          Float64,
    accuracy_m   Float32,
    speed_mps    Float32,
    heading_deg  Float32,
    moving       Bool,
    step_m       Float32 COMMENT 'distance this point adds to mileage',
    flags        Array(LowCardinality(String)) COMMENT 'outlier, late, mock, spike, low_accuracy, gap_before, clock_corrected',
    version      UInt8 COMMENT '0 for a late copy: a late retry never replaces the processed point'
)
ENGINE = ${REPLACING_V(version)}
PARTITION BY toDate(ts)
ORDER BY (org_id, device_id, ts, seq)
