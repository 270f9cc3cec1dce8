"""The in-process driver: the topology on asyncio, states in a dict, results to the sink.

Per-device order is kept because one consumer takes batches in arrival order. The queue is
bounded: when the topology falls behind, `ingest` waits, and so does the gateway's answer to
the phone (back-pressure instead of unbounded memory).

Durability: a batch is written to the raw tables before `ingest` returns (that is what the
gateway's 202 promises). Device states are snapshotted to `<data_dir>/state/devices.json` on
clean shutdown and loaded at start, so dwells, timers and episodes survive a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from pipeline.clock import Clock
from pipeline.config import Settings
from pipeline.events import DeadLetter
from pipeline.ingest import IngestUnavailable
from pipeline.metrics import Metrics
from pipeline.processors.base import Result
from pipeline.reference import ReferenceData
from pipeline.store.client import Store
from pipeline.store.sink import Sink, StoreUnavailable
from pipeline.topology import DeviceBatch, PipelineState, Topology

log = logging.getLogger(__name__)

DeviceKey = tuple[str, str]


class EmbeddedPipeline:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        reference: ReferenceData,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        auto_tick: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        self.reference = reference
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.topology = Topology(settings.processors)
        self.sink = Sink(store, settings.store, self.metrics)
        self.states: dict[DeviceKey, PipelineState] = {}
        self.queue: asyncio.Queue[tuple[DeviceBatch, float]] = asyncio.Queue(
            maxsize=settings.runner.queue_batches
        )
        self.auto_tick = auto_tick  # False when the caller drives time (simulation, replay)
        self._tasks: list[asyncio.Task[None]] = []
        self.snapshot_path = Path(settings.store.data_dir) / "state" / "devices.json"

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, *, restore: bool = True) -> None:
        if restore:
            self.load_snapshot()
        self._tasks = [asyncio.create_task(self.sink.run()), asyncio.create_task(self._consume())]
        if self.auto_tick:
            self._tasks.append(asyncio.create_task(self._ticker()))

    async def stop(self, *, snapshot: bool = True) -> None:
        """Clean shutdown: finish queued work, flush the sink, save device state."""
        await self.drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sink.close()
        if snapshot:
            self.save_snapshot()

    async def drain(self) -> None:
        """Wait until every queued batch went through the topology."""
        await self.queue.join()

    async def step(self, now_ms: int = 0, *, final: bool = False) -> None:
        """For a driver that owns the clock (simulation): finish the step's batches, then run
        the timers; `final` also releases and closes everything and flushes the store."""
        await self.drain()
        self.tick_all(final=final)
        if final:
            await self.drain()
            await self.sink.flush()

    # -- the IngestSink edge --------------------------------------------------------------

    async def ingest(
        self, batch: DeviceBatch, dead_letters: list[DeadLetter], accepted_at: float
    ) -> None:
        try:
            await self.sink.write_durable(
                {
                    "raw_pings": batch.pings,
                    "device_states": batch.states,
                    "dead_letters": dead_letters,
                }
            )
        except StoreUnavailable as exc:
            raise IngestUnavailable(str(exc)) from exc
        if batch.pings or batch.states or batch.future_pings:
            await self.queue.put((batch, accepted_at))
            self.metrics.queue_depth.set(self.queue.qsize())

    def ingest_batched(self, batch: DeviceBatch, dead_letters: list[DeadLetter]) -> Result:
        """For a replay, whose file is the durable copy: raw rows join the sink's batched
        inserts and the batch is processed at once, with no per-upload round trip."""
        self.sink.submit_rows("raw_pings", batch.pings)
        self.sink.submit_rows("device_states", batch.states)
        self.sink.submit_rows("dead_letters", dead_letters)
        return self.process_batch(batch)

    # -- processing -----------------------------------------------------------------------

    def _state(self, key: DeviceKey) -> PipelineState:
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = self.topology.initial_state()
            self.metrics.devices.set(len(self.states))
        return state

    def process_batch(self, batch: DeviceBatch, accepted_at: float | None = None) -> Result:
        key = (batch.org_id, batch.device_id)
        ctx = self.topology.context(
            self.reference, batch.org_id, batch.device_id, batch.received_ms
        )
        result = self.topology.process(self._state(key), batch, ctx)
        self.sink.submit(result, accepted_at)
        return result

    def tick_all(self, *, final: bool = False) -> Result:
        """Run timers for every device at the clock's time (lost contact, reorder release)."""
        now = self.clock.now_ms()
        total = Result()
        for (org_id, device_id), state in self.states.items():
            ctx = self.topology.context(self.reference, org_id, device_id, now)
            result = self.topology.tick(state, ctx, final=final)
            if result.fact_count() or result.counters:
                self.sink.submit(result)
                total.extend(result)
        return total

    async def _consume(self) -> None:
        while True:
            batch, accepted_at = await self.queue.get()
            try:
                self.process_batch(batch, accepted_at)
            except Exception:
                # A bug must not stop the pipeline or lose the batch: it is in raw_pings
                # already and can be replayed once fixed.
                log.exception("topology failed on %s/%s", batch.org_id, batch.device_id)
                self.metrics.topology_counters.labels("topology_error").inc()
            finally:
                self.queue.task_done()
                self.metrics.queue_depth.set(self.queue.qsize())
            if self.queue.empty():
                await asyncio.sleep(0)

    async def _ticker(self) -> None:
        interval = self.settings.runner.tick_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick_all()
            except Exception:
                log.exception("tick failed")

    # -- snapshots ------------------------------------------------------------------------

    def save_snapshot(self) -> None:
        self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "saved_ms": self.clock.now_ms(),
            "devices": [
                {"org_id": org, "device_id": dev, "state": state.to_dict()}
                for (org, dev), state in self.states.items()
            ],
        }
        tmp = self.snapshot_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self.snapshot_path)  # atomic: a crash never leaves half a snapshot

    def load_snapshot(self) -> int:
        if not self.snapshot_path.exists():
            return 0
        started = time.monotonic()
        data = json.loads(self.snapshot_path.read_text())
        for item in data.get("devices", []):
            self.states[(item["org_id"], item["device_id"])] = PipelineState.from_dict(
                item["state"]
            )
        log.info("restored %d device states in %.2fs", len(self.states), time.monotonic() - started)
        self.metrics.devices.set(len(self.states))
        return len(self.states)
