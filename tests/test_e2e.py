"""End to end on one machine: a simulated fleet posts over HTTP to the gateway, the topology
runs in-process, and the facts are read back from chDB with SQL."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

from rich.console import Console

from pipeline.config import Settings
from pipeline.replay import replay_file
from pipeline.sim import build_city, simulate, write_simulation
from pipeline.simrun import run_simulation
from pipeline.store.client import Store
from pipeline.store.queries import rep_summaries
from pipeline.store.reference import save_customers, save_fences

QUIET = Console(file=io.StringIO())
FACT_TABLES = ("track_points", "dwells", "visits", "fence_events", "alerts")


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


async def test_simulated_fleet_over_http_into_chdb(settings: Settings) -> None:
    settings.sim.reps = 4  # honest, driveby, spoofer_mock, honest
    service, simulation, stats = await run_simulation(settings, QUIET, show_progress=False)
    try:
        store = service.store
        assert store is not None
        db = settings.store.database
        assert stats.http_errors == 0
        rows = store.query(
            f"SELECT device_id, customer_id, toUnixTimestamp64Milli(arrive), "
            f"toUnixTimestamp64Milli(leave), verified FROM {db}.visits FINAL"
        ).rows
        truth = [t for t in simulation.truth if t["type"] == "visit" and t.get("observed", True)]
        for rep in ("rep-001", "rep-004"):  # honest reps: visits found and real
            found = [(c, (a, lv)) for d, c, a, lv, ok in rows if d == rep and ok]
            true = [(t["customer_id"], (t["arrive_ms"], t["leave_ms"])) for t in truth
                    if t["device_id"] == rep]  # fmt: skip
            hits = sum(any(c == tc and overlaps(w, tw) for c, w in found) for tc, tw in true)
            real = sum(any(c == tc and overlaps(w, tw) for tc, tw in true) for c, w in found)
            assert true and hits >= 0.8 * len(true), (rep, hits, len(true))
            assert real >= 0.9 * len(found), (rep, real, len(found))
        assert not [r for r in rows if r[0] == "rep-003" and r[4]]  # the spoofer: none verified
        spoof = store.query(
            f"SELECT count() FROM {db}.alerts FINAL "
            f"WHERE device_id = 'rep-003' AND type = 'spoof_mock_flag'"
        ).rows[0][0]
        assert spoof >= 1
        # 202 meant durable: every accepted ping is in the raw table
        accepted = service.metrics.records.labels("ping", "accepted")._value.get()
        raw = store.query(f"SELECT count() FROM {db}.raw_pings FINAL").rows[0][0]
        assert raw == accepted > 10_000
        summaries = {s.device_id: s for s in rep_summaries(
            store, stats.org_id, stats.day_start_ms, stats.day_end_ms)}  # fmt: skip
        assert summaries["rep-001"].km > 5
        assert summaries["rep-003"].visits == 0 and summaries["rep-003"].unverified_visits > 0
    finally:
        await service.stop()


async def test_replaying_a_file_twice_stores_each_fact_once(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    city = build_city()
    sim = simulate(city, reps=2, day=dt.date.today() - dt.timedelta(days=2), profiles={
        "rep-001": "honest", "rep-002": "no_network"})  # fmt: skip
    write_simulation(sim, city, tmp_path)
    save_customers(store, city.customers)  # as `fieldtrack customers import` would
    save_fences(store, city.fence_features, city.org_id)
    db = settings.store.database

    def counts() -> dict[str, tuple[int, int, int]]:
        out = {}
        for table in FACT_TABLES:
            key = "concat(toString(seq), toString(ts))" if table == "track_points" else "id"
            final, distinct = store.query(
                f"SELECT count(), uniqExact({key}) FROM {db}.{table} FINAL"
            ).rows[0]
            total = store.query(f"SELECT count() FROM {db}.{table}").rows[0][0]
            out[table] = (final, distinct, total)
        return out

    first = await replay_file(settings, store, tmp_path / "events.jsonl", city.org_id, QUIET)
    after_one = counts()
    second = await replay_file(settings, store, tmp_path / "events.jsonl", city.org_id, QUIET)
    after_two = counts()
    assert first == {**second, "seconds": first["seconds"], "records/s": first["records/s"]}
    assert first["accepted"] > 10_000
    for table in FACT_TABLES:
        final1, distinct1, _ = after_one[table]
        final2, distinct2, total2 = after_two[table]
        assert final1 > 0, table
        assert (final2, distinct2) == (final1, distinct1), table  # nothing new, nothing lost
        assert final2 == distinct2, table  # one row per fact id
        assert total2 >= final2  # unmerged duplicates exist; FINAL is the contract
