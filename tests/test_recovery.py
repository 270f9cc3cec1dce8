"""Embedded crash recovery: a pipeline killed mid-day (no drain, no flush, no snapshot at
stop) and restarted stores the same facts as one that never crashed, each once."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from pipeline.clock import ManualClock
from pipeline.config import Settings, StoreSettings
from pipeline.devices import DeviceInfo
from pipeline.embedded import EmbeddedPipeline
from pipeline.evaluate.runner import reference_for
from pipeline.ingest import Screener
from pipeline.processors.validate import Validator
from pipeline.sim import build_city, simulate
from pipeline.store.client import Store

DAY = dt.date.today() - dt.timedelta(days=2)
HOUR = 3_600_000


def uploads_between(first_h: float, last_h: float) -> tuple[Any, list[Any], Any]:
    city = build_city()
    sim = simulate(city, reps=2, day=DAY, profiles={"rep-001": "honest", "rep-002": "forbidden"})
    start = min(u.send_ms for u in sim.uploads)
    window = [u for u in sim.uploads
              if start + first_h * HOUR <= u.send_ms < start + last_h * HOUR]  # fmt: skip
    return sim, window, reference_for(city, sim)


async def feed(
    pipeline: EmbeddedPipeline, clock: ManualClock, uploads: list[Any], sim: Any,
    after_each: Callable[[int], Any] | None = None,
) -> None:  # fmt: skip
    screener = Screener(Validator(pipeline.settings.processors.validate))
    devices = {d.device_id: DeviceInfo(d.org_id, d.device_id, d.name, d.schedule)
               for d in sim.devices}  # fmt: skip
    for n, upload in enumerate(uploads):
        clock.set(upload.send_ms)
        screened = screener.screen_json(devices[upload.device_id], upload.send_ms,
                                        upload.endpoint, upload.records, "test")  # fmt: skip
        await pipeline.ingest(screened.batch, screened.dead_letters, 0.0)
        await pipeline.drain()
        pipeline.tick_all()
        if after_each is not None:
            await after_each(n)


def facts(store: Store) -> dict[str, tuple[int, set[str]]]:
    db = store.database
    out = {}
    for table in ("visits", "fence_events", "alerts", "dwells"):
        rows = store.query(f"SELECT id FROM {db}.{table} FINAL").rows
        total = store.query(f"SELECT count() FROM {db}.{table} FINAL").rows[0][0]
        out[table] = (total, {r[0] for r in rows})
    points = store.query(
        f"SELECT count(), uniqExact(device_id, seq, ts) FROM {db}.track_points FINAL"
    ).rows[0]
    out["track_points"] = (points[0], {str(points[1])})
    return out


def test_a_crash_mid_day_loses_nothing_and_counts_nothing_twice(chdb_dir: Any) -> None:
    sim, uploads, ref = uploads_between(1.0, 4.0)
    cut = len(uploads) * 2 // 3

    def settings_for(database: str) -> Settings:
        s = Settings()
        s.store = StoreSettings(data_dir=str(chdb_dir), database=database)
        s.runner.snapshot_interval_s = 0  # checkpoints are taken by hand below
        return s

    async def uninterrupted() -> dict[str, Any]:
        s = settings_for("recovery_ref")
        store = Store(s.store)
        store.apply_schema()
        clock = ManualClock()
        pipeline = EmbeddedPipeline(s, store, ref, clock, auto_tick=False)
        await pipeline.start()
        await feed(pipeline, clock, uploads, sim)
        await pipeline.step(final=True)
        await pipeline.stop()
        return facts(store)

    async def crashing() -> tuple[dict[str, Any], int]:
        s = settings_for("recovery_crash")
        store = Store(s.store)
        store.apply_schema()
        clock = ManualClock()
        pipeline = EmbeddedPipeline(s, store, ref, clock, auto_tick=False)
        await pipeline.start()

        async def checkpoint_once(n: int) -> None:
            if n == len(uploads) // 3:
                await pipeline.checkpoint()

        await feed(pipeline, clock, uploads[:cut], sim, checkpoint_once)
        for task in pipeline._tasks:  # kill -9: no drain, no flush, no snapshot
            task.cancel()
        await asyncio.gather(*pipeline._tasks, return_exceptions=True)
        # the restarted process, on the same data
        restarted = EmbeddedPipeline(s, store, ref, clock, auto_tick=False)
        await restarted.start()
        recovered = restarted.recovered_batches
        await feed(restarted, clock, uploads[cut:], sim)
        await restarted.step(final=True)
        await restarted.stop()
        return facts(store), recovered

    reference = asyncio.run(uninterrupted())
    after_crash, recovered = asyncio.run(crashing())
    assert recovered > 0  # everything after the checkpoint came back from the raw tables
    assert reference["visits"][0] > 0 and reference["fence_events"][0] > 0
    assert reference["alerts"][0] > 0 and reference["track_points"][0] > 1000
    for table, (count, ids) in reference.items():
        assert after_crash[table] == (count, ids), table
