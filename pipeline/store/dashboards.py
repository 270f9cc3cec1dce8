"""The Grafana dashboards: every panel defined once, here.

Two dashboards, for the two people who open them every day:

- **Operations live** (ops manager, refreshing every 30 s over the last 12 h): where every rep is
  now, which alerts are open with their evidence, who went silent and probably why, and whether
  ingest is healthy (records per minute, dead letters by reason, share of flagged fixes).
- **Field activity report** (manager and analyst, today by default): verified visits per rep
  against unverified ones and why, time at customers by grade, customers overdue for a visit,
  mileage (smoothed, beside the raw sum for context), fence events and forbidden-zone time,
  spoofing alerts per rep over 30 days, and one rep's cleaned trajectory.

Each panel's SQL is written for the official Grafana ClickHouse plugin
(grafana-clickhouse-datasource): its macros `$__timeFilter(col)`, `$__fromTime`, `$__toTime`,
`$__timeInterval(col)`, `$__interval_s`, `$__conditionalAll(cond, $var)`, and the dashboard
variables `${db}` (constant, the store database), `${org}` and `${device}` (multi-select, "All"
by default). "Now" is `$__toTime`, so a past window shows the fleet as it was at its end.

`fieldtrack dashboards` writes `deploy/grafana/dashboards/*.json` from these definitions (a test
checks the committed files are current), and `render_sql` substitutes macros and variables for a
concrete window and org, which the tests use to run every panel on chDB and which
`fieldtrack dashboards --sql` prints for pasting into `fieldtrack query` or clickhouse-client.
Every table is read with FINAL (ReplacingMergeTree: replays and retries count once).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASOURCE_UID = "fieldtrack-clickhouse"  # deploy/grafana/provisioning/datasources/clickhouse.yaml
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 39  # Grafana 10.4 / 11 dashboard JSON
DEFAULT_DATABASE = "fieldtrack"

# Visit frequency policy by customer grade (the product promises "A/B/C customers must be
# visited N times per period"; nothing in the pipeline defines N yet): a customer is due when
# its last verified visit is older than this. Edit and run `fieldtrack dashboards` to change.
VISIT_EVERY_DAYS = {"A": 7, "B": 14, "C": 30}
LOOKBACK_DAYS = 90  # how far back "last verified visit" looks
SILENT_AFTER_MIN = 10  # the live map calls a rep silent after this long without a fix

VIZ_TYPES = ("table", "timeseries", "geomap", "stat", "barchart")
FORMAT_TIMESERIES, FORMAT_TABLE = 0, 1  # the plugin's query format numbers


@dataclass(frozen=True, slots=True)
class Panel:
    key: str  # stable name, used by the tests and `fieldtrack dashboards --sql KEY`
    title: str
    viz: str  # one of VIZ_TYPES
    description: str
    sql: str
    columns: tuple[str, ...]  # what the panel reads, in order: the query must return these
    width: int = 12  # Grafana grid: 24 columns wide
    height: int = 8
    time_from: str = ""  # panel-relative time ("30d"): the window ends at the dashboard's end
    unit: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[dict[str, Any], ...] = ()
    custom: dict[str, Any] = field(default_factory=dict)  # fieldConfig.defaults.custom


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    label: str
    query: str  # SQL for a query variable; the value for a constant
    kind: str = "query"  # query | constant
    multi: bool = False


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[Variable, ...]
    time_from: str
    time_to: str = "now"
    refresh: str = ""
    tags: tuple[str, ...] = ("fieldtrack",)

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


# -- shared SQL pieces ------------------------------------------------------------------------

ORG = "org_id = '${org}'"
DEVICES = "$__conditionalAll(device_id IN (${device:singlequote}), $device)"
# Lost-contact alerts that a contact_restored alert (evidence lost_contact_id) has closed.
RESTORED_IDS = (
    "SELECT evidence['lost_contact_id'] FROM ${db}.alerts FINAL "
    "WHERE org_id = '${org}' AND type = 'contact_restored' AND $__timeFilter(ts)"
)
EVIDENCE_TEXT = (
    "arrayStringConcat(arrayMap((k, v) -> concat(k, '=', v), mapKeys(evidence), "
    "mapValues(evidence)), '; ')"
)


def _sql(text: str) -> str:
    """Dedent and strip a query; keeps the line breaks so it reads well in Grafana."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return "\n".join(x[indent:] for x in lines).strip()


def _color_map(values: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "value",
        "options": {v: {"color": c, "index": i} for i, (v, c) in enumerate(values.items())},
    }


SEVERITY_COLORS = _color_map({"critical": "red", "warning": "orange", "info": "blue"})


def _by_name(name: str, *properties: dict[str, Any]) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name}, "properties": list(properties)}


def _cell_colored(name: str, mapping: dict[str, Any]) -> dict[str, Any]:
    return _by_name(
        name,
        {"id": "mappings", "value": [mapping]},
        {"id": "custom.cellOptions", "value": {"type": "color-text"}},
    )


# -- Operations live --------------------------------------------------------------------------


def _geomap(layer: str, style: dict[str, Any]) -> dict[str, Any]:
    """Geomap options: markers at (latitude, longitude), fitted to the data."""
    return {
        "view": {"id": "fit", "lat": 0, "lon": 0, "zoom": 11, "allLayers": True},
        "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
        "basemap": {"type": "default", "name": "Basemap", "config": {}},
        "layers": [
            {
                "type": "markers",
                "name": layer,
                "location": {"mode": "coords", "latitude": "latitude", "longitude": "longitude"},
                "tooltip": True,
                "config": {"showLegend": True, "style": style},
            }
        ],
        "tooltip": {"mode": "details"},
    }


FLEET_NOW = Panel(
    key="fleet_now",
    title="Fleet now",
    viz="stat",
    description=(
        f"Reps with a fix in the last {SILENT_AFTER_MIN} min, reps in an open lost-contact "
        "period, critical alerts and dead letters in the window, and the p95 delay between a "
        "fix and its arrival at the gateway (phones buffer while offline)."
    ),
    sql=_sql(f"""
        SELECT
          (SELECT uniqExact(device_id) FROM ${{db}}.raw_pings
            WHERE {ORG} AND ts > $__toTime - INTERVAL {SILENT_AFTER_MIN} MINUTE
              AND ts <= $__toTime) AS reporting,
          (SELECT uniqExact(device_id) FROM ${{db}}.alerts FINAL
            WHERE {ORG} AND type = 'lost_contact' AND $__timeFilter(ts)
              AND id NOT IN ({RESTORED_IDS})) AS lost_contact,
          (SELECT count() FROM ${{db}}.alerts FINAL
            WHERE {ORG} AND severity = 'critical' AND $__timeFilter(ts)) AS critical_alerts,
          (SELECT count() FROM ${{db}}.dead_letters FINAL
            WHERE org_id IN ('${{org}}', '') AND $__timeFilter(received)) AS dead_letters,
          (SELECT round(quantile(0.95)(dateDiff('millisecond', ts, received)) / 1000, 1)
             FROM ${{db}}.raw_pings
            WHERE {ORG} AND $__timeFilter(received)) AS upload_delay_p95_s
        """),
    columns=("reporting", "lost_contact", "critical_alerts", "dead_letters", "upload_delay_p95_s"),
    width=24,
    height=4,
    options={
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "none",
        "textMode": "value_and_name",
        "orientation": "horizontal",
    },
)

LIVE_MAP = Panel(
    key="live_map",
    title="Live map: last position of every rep",
    viz="geomap",
    description=(
        "Each rep's last smoothed position in the window (outlier fixes skipped), coloured by "
        f"minutes since that fix; status is silent after {SILENT_AFTER_MIN} min without a fix. "
        "last_flags shows 'mock' when the phone itself reported a fake-GPS fix."
    ),
    sql=_sql(f"""
        SELECT
          device_id,
          argMax(lat, ts) AS latitude,
          argMax(lon, ts) AS longitude,
          max(ts) AS last_fix,
          round(dateDiff('second', max(ts), $__toTime) / 60, 1) AS minutes_ago,
          multiIf(minutes_ago > {SILENT_AFTER_MIN}, 'silent',
                  argMax(moving, ts), 'moving', 'stopped') AS status,
          round(argMax(speed_mps, ts) * 3.6, 1) AS speed_kmh,
          round(argMax(accuracy_m, ts)) AS accuracy_m,
          arrayStringConcat(argMax(flags, ts), ',') AS last_flags
        FROM ${{db}}.track_points FINAL
        WHERE {ORG} AND $__timeFilter(ts) AND NOT has(flags, 'outlier')
        GROUP BY device_id
        ORDER BY device_id
        """),
    columns=(
        "device_id",
        "latitude",
        "longitude",
        "last_fix",
        "minutes_ago",
        "status",
        "speed_kmh",
        "accuracy_m",
        "last_flags",
    ),
    width=14,
    height=14,
    options=_geomap(
        "Reps",
        {
            "size": {"fixed": 8},
            "color": {"field": "minutes_ago"},
            "text": {"field": "device_id", "mode": "field"},
            "textConfig": {"fontSize": 11, "offsetY": -12, "textAlign": "center"},
        },
    ),
    custom={"thresholds_steps": [(None, "green"), (5, "orange"), (SILENT_AFTER_MIN, "red")]},
)

OPEN_ALERTS = Panel(
    key="open_alerts",
    title="Open alerts (newest first)",
    viz="table",
    description=(
        "Spoofing, left post, forbidden zone and lost contact in the window, newest first, with "
        "the evidence a rep can be shown (the points, the rule, the thresholds). Lost-contact "
        "alerts that contact was restored for are closed and left out; so are the restores."
    ),
    sql=_sql(f"""
        SELECT
          ts,
          device_id,
          severity,
          type,
          message,
          {EVIDENCE_TEXT} AS details
        FROM ${{db}}.alerts FINAL
        WHERE {ORG} AND $__timeFilter(ts) AND type != 'contact_restored'
          AND id NOT IN ({RESTORED_IDS})
        ORDER BY ts DESC
        LIMIT 500
        """),
    columns=("ts", "device_id", "severity", "type", "message", "details"),
    width=10,
    height=14,
    options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    overrides=(_cell_colored("severity", SEVERITY_COLORS),),
)

LOST_CONTACT = Panel(
    key="lost_contact",
    title="Lost contact now",
    viz="table",
    description=(
        "Reps whose latest lost-contact period has not ended, with the likely reason "
        "(powered off, app killed, GPS off, permission revoked, no network, battery died) "
        "inferred from the phone's last states and battery, the rule that decided it, and "
        "where the rep was last seen."
    ),
    sql=_sql(f"""
        SELECT
          device_id,
          fromUnixTimestamp64Milli(toInt64OrZero(evidence['last_seen_ms']), 'UTC') AS last_fix,
          round(dateDiff('second', last_fix, $__toTime) / 60) AS minutes_silent,
          evidence['reason'] AS likely_reason,
          evidence['rule'] AS rule,
          toFloat64OrNull(evidence['last_battery_pct']) AS battery_pct,
          toFloat64OrNull(evidence['last_lat']) AS last_lat,
          toFloat64OrNull(evidence['last_lon']) AS last_lon,
          ts AS alerted
        FROM ${{db}}.alerts FINAL
        WHERE {ORG} AND type = 'lost_contact' AND $__timeFilter(ts)
          AND id NOT IN ({RESTORED_IDS})
        ORDER BY ts DESC
        LIMIT 1 BY device_id
        """),
    columns=(
        "device_id",
        "last_fix",
        "minutes_silent",
        "likely_reason",
        "rule",
        "battery_pct",
        "last_lat",
        "last_lon",
        "alerted",
    ),
    width=24,
    height=7,
    options={"showHeader": True, "cellHeight": "sm"},
)

INGEST_RATE = Panel(
    key="ingest_rate",
    title="Ingest: records per minute",
    viz="timeseries",
    description=(
        "Pings and device states stored per minute by gateway receive time, beside dead "
        "letters (input that could not be used). A drop to zero in work hours means phones or "
        "the gateway are down; dead letters rising means a client sends bad data."
    ),
    sql=_sql("""
        SELECT time, series, n * 60 / $__interval_s AS per_minute
        FROM (
          SELECT $__timeInterval(received) AS time, 'pings' AS series, count() AS n
          FROM ${db}.raw_pings FINAL
          WHERE org_id = '${org}' AND $__timeFilter(received)
          GROUP BY time
          UNION ALL
          SELECT $__timeInterval(received) AS time, 'device states' AS series, count() AS n
          FROM ${db}.device_states FINAL
          WHERE org_id = '${org}' AND $__timeFilter(received)
          GROUP BY time
          UNION ALL
          SELECT $__timeInterval(received) AS time, 'dead letters' AS series, count() AS n
          FROM ${db}.dead_letters FINAL
          WHERE org_id IN ('${org}', '') AND $__timeFilter(received)
          GROUP BY time
        )
        ORDER BY time, series
        """),
    columns=("time", "series", "per_minute"),
    width=12,
    height=8,
    unit="short",
)

DEAD_LETTERS = Panel(
    key="dead_letters",
    title="Dead letters by reason",
    viz="table",
    description=(
        "Input that was rejected and kept with its original bytes: by reason and source "
        "(gateway, replay...), how many, which devices, the last one and an example payload."
    ),
    sql=_sql("""
        SELECT
          reason,
          source,
          count() AS records,
          uniqExact(device_id) AS devices,
          max(received) AS last_received,
          substring(any(payload), 1, 200) AS example
        FROM ${db}.dead_letters FINAL
        WHERE org_id IN ('${org}', '') AND $__timeFilter(received)
        GROUP BY reason, source
        ORDER BY records DESC
        LIMIT 100
        """),
    columns=("reason", "source", "records", "devices", "last_received", "example"),
    width=12,
    height=8,
    options={"showHeader": True, "cellHeight": "sm"},
)

TRACK_QUALITY = Panel(
    key="track_quality",
    title="Track quality: share of flagged fixes",
    viz="timeseries",
    description=(
        "Per interval, the percentage of fixes the pipeline flagged: late (arrived after the "
        "device's track had moved on), outlier (dropped from the smoothed track), mock (the "
        "phone said fake GPS) and low accuracy. A jump points at a phone model, an app "
        "version or an area with poor GPS."
    ),
    sql=_sql("""
        SELECT
          $__timeInterval(ts) AS time,
          round(100 * countIf(has(flags, 'late')) / count(), 2) AS late_pct,
          round(100 * countIf(has(flags, 'outlier')) / count(), 2) AS outlier_pct,
          round(100 * countIf(has(flags, 'mock')) / count(), 2) AS mock_pct,
          round(100 * countIf(has(flags, 'low_accuracy')) / count(), 2) AS low_accuracy_pct
        FROM ${db}.track_points FINAL
        WHERE org_id = '${org}' AND $__timeFilter(ts)
        GROUP BY time
        ORDER BY time
        """),
    columns=("time", "late_pct", "outlier_pct", "mock_pct", "low_accuracy_pct"),
    width=24,
    height=7,
    unit="percent",
)

# -- Field activity report --------------------------------------------------------------------

VISITS_PER_REP = Panel(
    key="visits_per_rep",
    title="Visits per rep: verified vs unverified",
    viz="table",
    description=(
        "Verified visits are dwells within a customer's radius with no anti-cheat episode "
        "overlapping them; unverified ones overlapped one, and the reasons column lists the "
        "alert types behind them."
    ),
    sql=_sql(f"""
        SELECT
          device_id,
          countIf(verified) AS verified_visits,
          uniqExactIf(customer_id, verified) AS customers,
          round(sumIf(minutes, verified)) AS minutes_at_customers,
          round(avgIf(minutes, verified), 1) AS avg_minutes,
          countIf(NOT verified) AS unverified_visits,
          arrayStringConcat(arraySort(arrayFilter(x -> x != '',
            groupUniqArrayArrayIf(splitByChar(',', suspect_alerts), NOT verified))), ', ')
            AS unverified_reasons
        FROM ${{db}}.visits FINAL
        WHERE {ORG} AND {DEVICES} AND $__timeFilter(arrive)
        GROUP BY device_id
        ORDER BY device_id
        """),
    columns=(
        "device_id",
        "verified_visits",
        "customers",
        "minutes_at_customers",
        "avg_minutes",
        "unverified_visits",
        "unverified_reasons",
    ),
    width=14,
    height=9,
    options={
        "showHeader": True,
        "cellHeight": "sm",
        "footer": {"show": True, "reducer": ["sum"], "countRows": False},
    },
)

TIME_AT_CUSTOMERS = Panel(
    key="time_at_customers",
    title="Time at customers by grade (minutes, verified visits)",
    viz="barchart",
    description=(
        "Minutes each rep spent at A, B and C customers in verified visits: is the time going "
        "to the customers that matter most?"
    ),
    sql=_sql(f"""
        SELECT
          device_id,
          round(sumIf(minutes, customer_grade = 'A')) AS grade_A,
          round(sumIf(minutes, customer_grade = 'B')) AS grade_B,
          round(sumIf(minutes, customer_grade NOT IN ('A', 'B'))) AS grade_C
        FROM ${{db}}.visits FINAL
        WHERE {ORG} AND {DEVICES} AND $__timeFilter(arrive) AND verified
        GROUP BY device_id
        ORDER BY device_id
        """),
    columns=("device_id", "grade_A", "grade_B", "grade_C"),
    width=10,
    height=9,
    unit="m",
    options={
        "xField": "device_id",
        "stacking": "normal",
        "orientation": "horizontal",
        "showValue": "never",
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
    },
)

UNVERIFIED_VISITS = Panel(
    key="unverified_visits",
    title="Unverified visits and why",
    viz="table",
    description=(
        "Each visit that an anti-cheat episode overlapped: who, which customer, when, how long, "
        "and the alert types behind it (see Open alerts for their evidence)."
    ),
    sql=_sql(f"""
        SELECT
          v.arrive AS arrive,
          v.leave AS leave,
          v.device_id AS device_id,
          v.customer_id AS customer_id,
          c.name AS customer,
          v.customer_grade AS grade,
          round(v.minutes, 1) AS minutes,
          v.suspect_alerts AS reasons
        FROM ${{db}}.visits AS v FINAL
        LEFT JOIN (
          SELECT customer_id, name FROM ${{db}}.customers FINAL WHERE {ORG}
        ) AS c ON c.customer_id = v.customer_id
        WHERE v.org_id = '${{org}}' AND NOT v.verified AND $__timeFilter(v.arrive)
          AND $__conditionalAll(v.device_id IN (${{device:singlequote}}), $device)
        ORDER BY v.arrive DESC
        LIMIT 500
        """),
    columns=(
        "arrive",
        "leave",
        "device_id",
        "customer_id",
        "customer",
        "grade",
        "minutes",
        "reasons",
    ),
    width=14,
    height=8,
    options={"showHeader": True, "cellHeight": "sm"},
)

_EVERY = ", ".join(f"grade = '{g}', {d}" for g, d in list(VISIT_EVERY_DAYS.items())[:-1])
CUSTOMERS_DUE = Panel(
    key="customers_due",
    title="Customers due by grade, not visited",
    viz="table",
    description=(
        "Customers whose last verified visit (looking back "
        f"{LOOKBACK_DAYS} days from the window's end) is older than their grade's visit "
        "frequency: "
        + ", ".join(f"{g} every {d} days" for g, d in VISIT_EVERY_DAYS.items())
        + ". Never-visited customers first, then the most overdue."
    ),
    sql=_sql(f"""
        SELECT
          c.grade AS grade,
          c.customer_id AS customer_id,
          c.name AS customer,
          if(v.n = 0, NULL, v.last_visit) AS last_verified_visit,
          if(v.n = 0, NULL, dateDiff('day', v.last_visit, $__toTime)) AS days_since,
          c.every_days AS visit_every_days
        FROM (
          SELECT customer_id, name, grade,
                 multiIf({_EVERY}, {list(VISIT_EVERY_DAYS.values())[-1]}) AS every_days
          FROM ${{db}}.customers FINAL
          WHERE {ORG}
        ) AS c
        LEFT JOIN (
          SELECT customer_id, max(arrive) AS last_visit, count() AS n
          FROM ${{db}}.visits FINAL
          WHERE {ORG} AND verified AND arrive <= $__toTime
            AND arrive > $__toTime - INTERVAL {LOOKBACK_DAYS} DAY
          GROUP BY customer_id
        ) AS v ON v.customer_id = c.customer_id
        WHERE v.n = 0 OR v.last_visit < $__toTime - toIntervalDay(c.every_days)
        ORDER BY grade, days_since IS NOT NULL, days_since DESC, customer_id
        LIMIT 500
        """),
    columns=(
        "grade",
        "customer_id",
        "customer",
        "last_verified_visit",
        "days_since",
        "visit_every_days",
    ),
    width=10,
    height=8,
    options={"showHeader": True, "cellHeight": "sm"},
)

MILEAGE = Panel(
    key="mileage",
    title="Mileage per rep: smoothed vs raw sum (km)",
    viz="barchart",
    description=(
        "km is the mileage to check expense claims against: the sum of the smoothed track's "
        "steps (outliers, GPS jitter at rest and spikes removed). raw_km sums the distance "
        "between consecutive raw fixes as the phone sent them, for context: the gap is noise "
        "a naive tracker would have paid out."
    ),
    sql=_sql(f"""
        SELECT
          device_id,
          round(sum(step_m) / 1000, 2) AS km,
          round(sum(raw_step_m) / 1000, 2) AS raw_km
        FROM (
          SELECT
            device_id,
            step_m,
            geoDistance(raw_lon, raw_lat,
                        lagInFrame(raw_lon, 1, raw_lon) OVER w,
                        lagInFrame(raw_lat, 1, raw_lat) OVER w) AS raw_step_m
          FROM ${{db}}.track_points FINAL
          WHERE {ORG} AND {DEVICES} AND $__timeFilter(ts)
          WINDOW w AS (PARTITION BY device_id ORDER BY ts, seq
                       ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
        )
        GROUP BY device_id
        ORDER BY device_id
        """),
    columns=("device_id", "km", "raw_km"),
    width=12,
    height=8,
    unit="lengthkm",
    options={
        "xField": "device_id",
        "orientation": "horizontal",
        "showValue": "auto",
        "groupWidth": 0.7,
        "barWidth": 0.9,
        "stacking": "none",
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
    },
)

FENCE_EVENTS = Panel(
    key="fence_events",
    title="Fence events",
    viz="table",
    description=(
        "Every fence entry and exit: office (on duty), workshop, territory, forbidden zone. "
        "The first entry of the day is the on-duty record."
    ),
    sql=_sql(f"""
        SELECT
          e.ts AS ts,
          e.device_id AS device_id,
          f.name AS fence,
          e.fence_kind AS kind,
          e.transition AS transition,
          round(e.accuracy_m) AS accuracy_m
        FROM ${{db}}.fence_events AS e FINAL
        LEFT JOIN (
          SELECT fence_id, name FROM ${{db}}.fences FINAL WHERE {ORG}
        ) AS f ON f.fence_id = e.fence_id
        WHERE e.org_id = '${{org}}' AND $__timeFilter(e.ts)
          AND $__conditionalAll(e.device_id IN (${{device:singlequote}}), $device)
        ORDER BY e.device_id, e.ts
        LIMIT 1000
        """),
    columns=("ts", "device_id", "fence", "kind", "transition", "accuracy_m"),
    width=12,
    height=8,
    options={"showHeader": True, "cellHeight": "sm"},
    overrides=(
        _cell_colored(
            "kind", _color_map({"forbidden": "red", "workshop": "orange", "office": "green"})
        ),
    ),
)

FORBIDDEN_TIME = Panel(
    key="forbidden_time",
    title="Time in forbidden zones",
    viz="table",
    description=(
        "Each stay in a forbidden zone (competitor depot, casino...): entered, left and "
        "minutes; a stay not yet left counts up to the window's end."
    ),
    sql=_sql(f"""
        SELECT
          device_id,
          fence_id,
          ts AS entered,
          if(next_transition = 'exit', next_ts, NULL) AS left_at,
          round(dateDiff('second', ts, ifNull(left_at, $__toTime)) / 60, 1) AS minutes
        FROM (
          SELECT
            device_id, fence_id, ts, transition,
            leadInFrame(toNullable(ts)) OVER w AS next_ts,
            leadInFrame(transition) OVER w AS next_transition
          FROM ${{db}}.fence_events FINAL
          WHERE {ORG} AND {DEVICES} AND fence_kind = 'forbidden' AND $__timeFilter(ts)
          WINDOW w AS (PARTITION BY device_id, fence_id ORDER BY ts
                       ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING)
        )
        WHERE transition = 'enter'
        ORDER BY entered DESC
        """),
    columns=("device_id", "fence_id", "entered", "left_at", "minutes"),
    width=12,
    height=8,
    options={
        "showHeader": True,
        "cellHeight": "sm",
        "footer": {"show": True, "reducer": ["sum"], "fields": ["minutes"]},
    },
)

SPOOF_30D = Panel(
    key="spoof_30d",
    title="Spoofing alerts per rep, last 30 days",
    viz="timeseries",
    description=(
        "Anti-cheat alerts (mock GPS, hidden mock, teleport, clock skew, device integrity, "
        "replayed track) per rep per day over the 30 days up to the dashboard's end: a rep "
        "with alerts every day is a pattern, one day is an incident."
    ),
    sql=_sql(f"""
        SELECT
          toStartOfDay(ts) AS time,
          device_id,
          count() AS alerts
        FROM ${{db}}.alerts FINAL
        WHERE {ORG} AND {DEVICES} AND startsWith(type, 'spoof_') AND $__timeFilter(ts)
        GROUP BY time, device_id
        ORDER BY time, device_id
        """),
    columns=("time", "device_id", "alerts"),
    width=12,
    height=8,
    time_from="30d",
    unit="short",
    custom={
        "drawStyle": "bars",
        "fillOpacity": 80,
        "stacking": {"mode": "normal", "group": "A"},
        "lineWidth": 1,
    },
)

TRAJECTORY = Panel(
    key="trajectory",
    title="Trajectory playback (selected reps)",
    viz="geomap",
    description=(
        "The cleaned track of the selected reps, one smoothed point per 30 s (outliers "
        "removed), coloured by rep; stops show as dense clusters. Pick one rep in the device "
        "variable for a readable day."
    ),
    sql=_sql(f"""
        SELECT
          toStartOfInterval(ts, INTERVAL 30 SECOND) AS time,
          device_id,
          avg(lat) AS latitude,
          avg(lon) AS longitude,
          round(max(speed_mps) * 3.6, 1) AS speed_kmh
        FROM ${{db}}.track_points FINAL
        WHERE {ORG} AND {DEVICES} AND $__timeFilter(ts) AND NOT has(flags, 'outlier')
        GROUP BY device_id, time
        ORDER BY device_id, time
        LIMIT 50000
        """),
    columns=("time", "device_id", "latitude", "longitude", "speed_kmh"),
    width=24,
    height=12,
    options=_geomap(
        "Track",
        {
            "size": {"fixed": 3},
            "color": {"field": "device_id"},
            "opacity": 0.7,
        },
    ),
)

# -- variables and dashboards -----------------------------------------------------------------

DB_VAR = Variable("db", "Database", DEFAULT_DATABASE, kind="constant")
ORG_VAR = Variable(
    "org",
    "Org",
    _sql("""
        SELECT org_id FROM (
          SELECT org_id FROM ${db}.devices FINAL
          UNION ALL SELECT org_id FROM ${db}.customers FINAL
          UNION ALL SELECT DISTINCT org_id FROM ${db}.raw_pings WHERE $__timeFilter(ts)
        ) GROUP BY org_id ORDER BY org_id
        """),
)
DEVICE_VAR = Variable(
    "device",
    "Rep",
    _sql("""
        SELECT DISTINCT device_id FROM ${db}.raw_pings
        WHERE org_id = '${org}' AND $__timeFilter(ts)
        ORDER BY device_id
        """),
    multi=True,
)

DASHBOARDS = (
    Dashboard(
        uid="fieldtrack-ops-live",
        title="fieldtrack: Operations live",
        description="Where every rep is now, open alerts with evidence, lost contact, ingest "
        "health. Generated by `fieldtrack dashboards` from pipeline/store/dashboards.py.",
        panels=(
            FLEET_NOW,
            LIVE_MAP,
            OPEN_ALERTS,
            LOST_CONTACT,
            INGEST_RATE,
            DEAD_LETTERS,
            TRACK_QUALITY,
        ),
        variables=(DB_VAR, ORG_VAR),
        time_from="now-12h",
        refresh="30s",
    ),
    Dashboard(
        uid="fieldtrack-field-report",
        title="fieldtrack: Field activity report",
        description="Verified visits, time at customers, overdue customers, mileage, fences "
        "and spoofing per rep. Generated by `fieldtrack dashboards` from "
        "pipeline/store/dashboards.py.",
        panels=(
            VISITS_PER_REP,
            TIME_AT_CUSTOMERS,
            UNVERIFIED_VISITS,
            CUSTOMERS_DUE,
            MILEAGE,
            SPOOF_30D,
            FENCE_EVENTS,
            FORBIDDEN_TIME,
            TRAJECTORY,
        ),
        variables=(DB_VAR, ORG_VAR, DEVICE_VAR),
        time_from="now/d",
        time_to="now/d",
    ),
)


def all_panels() -> list[Panel]:
    return [p for d in DASHBOARDS for p in d.panels]


def panel(key: str) -> Panel:
    for p in all_panels():
        if p.key == key:
            return p
    raise KeyError(f"no panel {key!r}; known: {', '.join(p.key for p in all_panels())}")


# -- macro and variable substitution ----------------------------------------------------------


def _epoch(t: dt.datetime) -> float:
    if t.tzinfo is None:
        raise ValueError("window times must be timezone-aware")
    return t.timestamp()


def _split_args(text: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of the call whose '(' is at `start` (nesting-aware) and
    the index after its ')'."""
    depth, args, current, quote = 0, [], [], ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    raise ValueError(f"unbalanced parentheses in macro call at {start}")


def _expand_calls(sql: str, name: str, expand: Any) -> str:
    """Replaces every `name(args...)` with expand(args)."""
    out, pos = [], 0
    pattern = re.compile(re.escape(name) + r"\(")
    while (m := pattern.search(sql, pos)) is not None:
        args, end = _split_args(sql, m.end() - 1)
        out += [sql[pos : m.start()], expand(args)]
        pos = end
    return "".join(out) + sql[pos:]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_sql(
    sql: str,
    start: dt.datetime,
    end: dt.datetime,
    org: str,
    devices: Sequence[str] | None = None,
    database: str = DEFAULT_DATABASE,
    interval_s: int = 60,
) -> str:
    """The SQL as Grafana and the ClickHouse plugin would send it for window [start, end]
    (timezone-aware), `org`, and `devices` (None: "All").

    Macros expand as the plugin documents them (`$__timeFilter(c)` -> `c >= toDateTime(s) AND
    c <= toDateTime(e)`, `$__fromTime` -> `toDateTime(s)`, `$__timeInterval(c)` ->
    `toStartOfInterval(toDateTime(c), INTERVAL n second)`...). Anything left that looks like a
    macro or variable raises ValueError, so a panel cannot use one this function (and so the
    tests) do not know.
    """
    s, e = _epoch(start), _epoch(end)
    s_i, e_i, s_ms, e_ms = int(s), int(e), round(s * 1000), round(e * 1000)

    def conditional_all(args: list[str]) -> str:
        if len(args) != 2:
            raise ValueError(f"$__conditionalAll takes 2 arguments, got {args}")
        return "1=1" if devices is None else args[0]

    sql = _expand_calls(sql, "$__conditionalAll", conditional_all)
    if devices is not None:
        if not devices:
            raise ValueError("devices: give at least one, or None for All")
        quoted = ",".join(_quote(d) for d in devices)
        sql = sql.replace("${device:singlequote}", quoted)
    sql = _expand_calls(
        sql,
        "$__timeFilter_ms",
        lambda a: (
            f"{a[0]} >= fromUnixTimestamp64Milli({s_ms}) AND "
            f"{a[0]} <= fromUnixTimestamp64Milli({e_ms})"
        ),
    )
    sql = _expand_calls(
        sql,
        "$__timeFilter",
        lambda a: f"{a[0]} >= toDateTime({s_i}) AND {a[0]} <= toDateTime({e_i})",
    )
    sql = _expand_calls(
        sql,
        "$__timeInterval",
        lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {interval_s} second)",
    )
    for macro, value in (
        ("$__fromTime_ms", f"fromUnixTimestamp64Milli({s_ms})"),
        ("$__toTime_ms", f"fromUnixTimestamp64Milli({e_ms})"),
        ("$__fromTime", f"toDateTime({s_i})"),
        ("$__toTime", f"toDateTime({e_i})"),
        ("$__interval_s", str(interval_s)),
        ("${db}", database),
        ("${org}", org.replace("\\", "\\\\").replace("'", "\\'")),
    ):
        sql = sql.replace(macro, value)
    left = re.search(r"\$(__\w+|\{[^}]*\}|[A-Za-z_]\w*)", sql)
    if left:
        raise ValueError(f"unknown macro or variable {left.group(0)!r} in:\n{sql}")
    return sql


def render_panel_sql(
    p: Panel,
    start: dt.datetime,
    end: dt.datetime,
    org: str,
    devices: Sequence[str] | None = None,
    database: str = DEFAULT_DATABASE,
    interval_s: int = 60,
) -> str:
    """render_sql for one panel, honouring its relative time (`time_from`, e.g. "30d": the
    window then ends at `end` and starts that long before it)."""
    if p.time_from:
        m = re.fullmatch(r"(\d+)([hd])", p.time_from)
        if not m:
            raise ValueError(f"{p.key}: unsupported time_from {p.time_from!r}")
        n = int(m.group(1))
        start = end - (dt.timedelta(days=n) if m.group(2) == "d" else dt.timedelta(hours=n))
    return render_sql(p.sql, start, end, org, devices, database, interval_s)


# -- Grafana dashboard JSON -------------------------------------------------------------------


def _target(p: Panel) -> dict[str, Any]:
    series = p.viz == "timeseries"
    return {
        "refId": "A",
        "datasource": DATASOURCE,
        "editorType": "sql",
        "format": FORMAT_TIMESERIES if series else FORMAT_TABLE,
        "queryType": "timeseries" if series else "table",
        "rawSql": p.sql,
    }


def _field_config(p: Panel) -> dict[str, Any]:
    custom = dict(p.custom)
    steps = custom.pop("thresholds_steps", [(None, "green")])
    defaults: dict[str, Any] = {
        "color": {"mode": "thresholds" if p.viz in ("stat", "geomap") else "palette-classic"},
        "thresholds": {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]},
        "mappings": [],
    }
    if p.unit:
        defaults["unit"] = p.unit
    if custom:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": list(p.overrides)}


def _layout(panels: Sequence[Panel]) -> list[dict[str, int]]:
    """Left to right, wrapping at 24 columns; a row is as high as its tallest panel."""
    out, x, y, row_h = [], 0, 0, 0
    for p in panels:
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append({"h": p.height, "w": p.width, "x": x, "y": y})
        x, row_h = x + p.width, max(row_h, p.height)
    return out


def _variable(v: Variable) -> dict[str, Any]:
    if v.kind == "constant":
        return {
            "name": v.name,
            "label": v.label,
            "type": "constant",
            "query": v.query,
            "hide": 2,
            "skipUrlSync": False,
        }
    return {
        "name": v.name,
        "label": v.label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": v.query,
        "definition": v.query,
        "refresh": 2,  # on time range change: reps come and go
        "multi": v.multi,
        "includeAll": v.multi,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if v.multi else {},
        "options": [],
        "sort": 1,
        "hide": 0,
        "skipUrlSync": False,
    }


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    panels = []
    for i, (p, pos) in enumerate(zip(d.panels, _layout(d.panels), strict=True), start=1):
        if p.viz not in VIZ_TYPES:
            raise ValueError(f"{p.key}: unknown visualization {p.viz!r}")
        item: dict[str, Any] = {
            "id": i,
            "type": p.viz,
            "title": p.title,
            "description": p.description,
            "datasource": DATASOURCE,
            "gridPos": pos,
            "targets": [_target(p)],
            "fieldConfig": _field_config(p),
            "options": p.options,
        }
        if p.time_from:
            item["timeFrom"] = p.time_from
        panels.append(item)
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": list(d.tags),
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": d.time_from, "to": d.time_to},
        "refresh": d.refresh,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [_variable(v) for v in d.variables]},
        "panels": panels,
    }


def dashboard_files() -> dict[str, str]:
    """File name -> the JSON text `fieldtrack dashboards` writes (stable, newline-terminated)."""
    return {
        d.filename: json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n"
        for d in DASHBOARDS
    }


def write_dashboards(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in dashboard_files().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_dashboards(out_dir: str | Path) -> list[str]:
    """Files in out_dir that differ from (or are missing against) the generated ones."""
    out = Path(out_dir)
    return [
        name
        for name, text in dashboard_files().items()
        if not (out / name).exists() or (out / name).read_text(encoding="utf-8") != text
    ]
