"""Benchmark 6, store: insert rows/s into chDB through `pipeline.store`, and the latency of
the report and dashboard queries on `rows` track points.

The data is one org's fleet over a few days: `devices` devices x `days` days, their track
points spread evenly over 08:00-18:00 UTC of each day (a slowly wandering position, 0-15 m
steps, 1 % outliers flagged), generated vectorised with numpy one batch at a time and inserted
in `batch_rows` batches through `Store.insert` (the sink's column-oriented path; generating
the columns is not timed). Visits (10 per device-day), fence events (16) and alerts (2) go in
too, so the reports join real rows.

Times here are wall times (chDB works on threads of its own and does I/O; CPU time of this
process would not be the latency a user sees).

Queries (each run once to warm up, then `query_repeats` times; min, median and max):
- `rep_summaries` of `pipeline.store.queries` for the last day, and for all days;
- the example queries of `fieldtrack query` (the CLI's EXAMPLE_QUERIES);
- two dashboard queries defined here (the repo has no Grafana dashboards in deploy/): one
  rep's track for a day (the map), and every device's last position (the live map).

The store lives in a temporary directory (removed afterwards) unless `data_dir` is given;
never the user's data directory. chDB runs one engine per process bound to one directory, so
the tests pass the session's directory and a database of their own.
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.bench.common import BenchResult, Steps, mib, print_table
from pipeline.config import StoreSettings
from pipeline.events import Alert, FenceEvent, Visit
from pipeline.store.client import Store
from pipeline.store.queries import rep_summaries
from pipeline.store.rows import TABLES

NAME = "store"
TITLE = "Store: chDB inserts and report query latency"
ORG = "bench"
FIRST_DAY = dt.date(2026, 11, 16)


@dataclass(frozen=True, slots=True)
class Params:
    rows: int = 10_000_000
    devices: int = 500
    days: int = 4
    batch_rows: int = 500_000
    query_repeats: int = 5
    data_dir: str = ""  # empty: a fresh temporary directory, removed afterwards
    database: str = "fieldtrack_bench"
    seed: int = 1


SIZES = {
    "full": Params(),
    "quick": Params(rows=1_000_000, devices=100, days=2, batch_rows=250_000, query_repeats=3),
    "tiny": Params(rows=20_000, devices=10, days=2, batch_rows=5_000, query_repeats=1),
}


def _day_ms(day_index: int) -> int:
    day = FIRST_DAY + dt.timedelta(days=day_index)
    return int(dt.datetime.combine(day, dt.time(0), dt.UTC).timestamp() * 1000)


def _device_ids(devices: int) -> np.ndarray:
    return np.array([f"dev-{d:05d}" for d in range(devices)], dtype=object)


def track_point_columns(params: Params, start: int, stop: int) -> dict[str, list[Any]]:
    """Rows start..stop of the track points, column by column (vectorised)."""
    per_device_day = -(-params.rows // (params.devices * params.days))  # ceil
    i = np.arange(start, stop, dtype=np.int64)
    day, rest = np.divmod(i, params.devices * per_device_day)
    device, k = np.divmod(rest, per_device_day)
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, start]))
    n = i.size
    ts = (np.array([_day_ms(d) for d in range(params.days)])[day] + 8 * 3_600_000
          + k * (10 * 3_600_000 // per_device_day))  # fmt: skip
    phase = k / 300.0 + device
    lat = 52.52 + 0.05 * np.sin(phase + day) + 0.0004 * np.sin(device * 7.0)
    lon = 13.405 + 0.08 * np.cos(phase * 0.7 + day)
    noise = rng.normal(0, 5e-5, (2, n))
    outlier = rng.random(n) < 0.01
    empty: list[str] = []
    flagged = ["outlier"]
    columns: dict[str, list[Any]] = {
        "org_id": [ORG] * n,
        "device_id": _device_ids(params.devices)[device].tolist(),
        "seq": k.tolist(),
        "ts": ts.tolist(),
        "raw_lat": (lat + noise[0]).tolist(),
        "raw_lon": (lon + noise[1]).tolist(),
        "lat": lat.tolist(),
        "lon": lon.tolist(),
        "accuracy_m": rng.uniform(3, 30, n).round(1).tolist(),
        "speed_mps": rng.uniform(0, 20, n).round(2).tolist(),
        "heading_deg": rng.uniform(0, 360, n).round(1).tolist(),
        "moving": (rng.random(n) < 0.6).tolist(),
        "step_m": np.where(outlier, 0.0, rng.uniform(0, 15, n)).round(2).tolist(),
        "flags": [flagged if o else empty for o in outlier.tolist()],
        "version": [1] * n,
    }
    return columns


def _facts(params: Params) -> dict[str, list[Any]]:
    """Visits, fence events and alerts for every device-day (few rows: plain records)."""
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 0xFAC]))
    visits: list[Visit] = []
    events: list[FenceEvent] = []
    alerts: list[Alert] = []
    for day in range(params.days):
        base = _day_ms(day) + 8 * 3_600_000
        for device_id in _device_ids(params.devices).tolist():
            for v in range(10):
                arrive = base + v * 3_000_000 + int(rng.integers(0, 600_000))
                minutes = float(rng.uniform(5, 40))
                visits.append(Visit(f"v-{device_id}-{day}-{v}", ORG, device_id, f"c-{v * 7}",
                                    f"d-{device_id}-{day}-{v}", arrive,
                                    arrive + int(minutes * 60_000), minutes, 20.0, "B",
                                    v != 3, "" if v != 3 else "spoof_static"))  # fmt: skip
            for e in range(16):
                events.append(FenceEvent(f"f-{device_id}-{day}-{e}", ORG, device_id,
                                         f"fence-{e // 2}", "customer",
                                         "enter" if e % 2 == 0 else "exit",
                                         base + e * 2_000_000, 52.52, 13.4, 8.0))  # fmt: skip
            for a, kind in enumerate(("lost_contact", "spoof_static")):
                alerts.append(Alert(f"a-{device_id}-{day}-{a}", ORG, device_id,
                                    base + (a + 1) * 9_000_000, kind, "warning", "bench",
                                    {"reason": "phone_off"}))  # fmt: skip
    return {"visits": visits, "fence_events": events, "alerts": alerts}


def _queries(store: Store, params: Params) -> list[tuple[str, Any]]:
    from pipeline.cli import EXAMPLE_QUERIES

    db = store.database
    last_day = _day_ms(params.days - 1)
    end = _day_ms(params.days)
    one_device = _device_ids(params.devices)[0]
    queries: list[tuple[str, Any]] = [
        ("rep_summaries, one day", lambda: rep_summaries(store, ORG, last_day, end)),
        (f"rep_summaries, {params.days} days", lambda: rep_summaries(store, ORG, _day_ms(0), end)),
    ]
    for name, sql in EXAMPLE_QUERIES:
        sql = sql.replace("fieldtrack.", f"{db}.")
        queries.append((f"fieldtrack query: {name}", lambda sql=sql: store.query(sql)))
    track_sql = (
        f"SELECT ts, lat, lon, moving FROM {db}.track_points FINAL WHERE org_id = {{org:String}} "
        "AND device_id = {dev:String} AND ts >= toDateTime64({start:Float64}, 3) "
        "AND ts < toDateTime64({end:Float64}, 3) ORDER BY ts"
    )
    track_params = {"org": ORG, "dev": one_device, "start": last_day / 1000, "end": end / 1000}
    queries.append(("dashboard: one rep's track, one day",
                    lambda: store.query(track_sql, track_params)))  # fmt: skip
    last_sql = (
        f"SELECT device_id, max(ts), argMax(lat, ts), argMax(lon, ts) FROM {db}.track_points "
        "WHERE org_id = {org:String} AND ts >= toDateTime64({start:Float64}, 3) "
        "GROUP BY device_id"
    )
    last_params = {"org": ORG, "start": last_day / 1000}
    queries.append(("dashboard: last position of every device",
                    lambda: store.query(last_sql, last_params)))  # fmt: skip
    return queries


def run(params: Params, steps_ui: Steps) -> BenchResult:
    console = steps_ui.console
    own_dir = not params.data_dir
    data_dir = tempfile.mkdtemp(prefix="fieldtrack-bench-") if own_dir else params.data_dir
    store = Store(StoreSettings(data_dir=data_dir, database=params.database))
    try:
        return _run(params, steps_ui, store, console)
    finally:
        store.close()
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


def _run(params: Params, steps_ui: Steps, store: Store, console: Any) -> BenchResult:
    store.command(f"DROP DATABASE IF EXISTS {params.database}")
    store.apply_schema()
    spec = TABLES["track_points"]
    insert_s: list[float] = []
    generate_s = 0.0
    batches = range(0, params.rows, params.batch_rows)
    with steps_ui.step(f"inserting {params.rows:,} track points in batches of "
                       f"{params.batch_rows:,}", total=len(batches)) as advance:  # fmt: skip
        for start in batches:
            stop = min(params.rows, start + params.batch_rows)
            started = time.perf_counter()
            by_name = track_point_columns(params, start, stop)
            missing = set(spec.columns) - set(by_name)
            if missing:
                raise RuntimeError(f"track_points has columns the benchmark lacks: {missing}")
            columns = [by_name[c] for c in spec.columns]
            generate_s += time.perf_counter() - started
            started = time.perf_counter()
            store.insert("track_points", columns, spec.columns)
            insert_s.append(time.perf_counter() - started)
            advance(1)
    with steps_ui.step("inserting visits, fence events and alerts"):
        fact_rows = {}
        for table, records in _facts(params).items():
            table_spec = TABLES[table]
            store.insert(table, table_spec.to_columns(records), table_spec.columns)
            fact_rows[table] = len(records)
    db = params.database
    count = int(store.query(f"SELECT count() FROM {db}.track_points").rows[0][0])
    parts, disk = store.query(
        "SELECT count(), sum(bytes_on_disk) FROM system.parts WHERE database = {db:String} "
        "AND table = 'track_points' AND active",
        {"db": db},
    ).rows[0]

    latencies: list[dict[str, Any]] = []
    with steps_ui.step(f"queries x{params.query_repeats} (timed)"):
        for name, run_query in _queries(store, params):
            run_query()  # warm-up: first-use costs (marks, caches) are not what a user waits on
            times = []
            for _ in range(max(1, params.query_repeats)):
                started = time.perf_counter()
                run_query()
                times.append(time.perf_counter() - started)
            latencies.append({"query": name, "min_ms": 1000 * min(times),
                              "median_ms": 1000 * statistics.median(times),
                              "max_ms": 1000 * max(times), "runs_s": times})  # fmt: skip

    total_insert = sum(insert_s)
    rows_per_s = params.rows / total_insert if total_insert else 0.0
    best_batch = max(
        (min(params.batch_rows, params.rows - i * params.batch_rows) / s)
        for i, s in enumerate(insert_s)
    )
    print_table(
        console,
        f"{TITLE}: {params.rows:,} track points ({params.devices} devices x {params.days} days)",
        ["figure", "value"],
        [
            ["insert rows/s (all batches)", rows_per_s],
            ["insert rows/s (best batch)", best_batch],
            ["insert seconds", total_insert],
            ["generating columns, seconds (not timed)", generate_s],
            ["rows in the table", count],
            ["active parts after insert", int(parts)],
            ["on disk, MiB", mib(float(disk or 0))],
        ],
    )
    print_table(
        console,
        "Query latency",
        ["query", "min ms", "median ms", "max ms"],
        [[q["query"], q["min_ms"], q["median_ms"], q["max_ms"]] for q in latencies],
        caption=f"after one warm-up run; {params.query_repeats} runs each",
    )
    slowest = max(q["median_ms"] for q in latencies)
    return BenchResult(
        params=asdict(params),
        results={
            "insert_rows_per_s": rows_per_s,
            "insert_best_batch_rows_per_s": best_batch,
            "insert_s": total_insert,
            "insert_batches_s": insert_s,
            "generate_s": generate_s,
            "rows": count,
            "fact_rows": fact_rows,
            "parts": int(parts),
            "bytes_on_disk": int(disk or 0),
            "queries": latencies,
            "slowest_query_median_ms": slowest,
        },
        # Issue 7 sets no number for the store: the figures are recorded for comparison
        # between runs and commits.
        targets=[],
        notes=[
            "inserts through Store.insert (clickhouse-connect's chdb interface), column lists "
            "prepared beforehand; queries read with FINAL as the reports do",
            "no Grafana dashboards exist in deploy/: the two dashboard queries are defined here",
        ],
    )
