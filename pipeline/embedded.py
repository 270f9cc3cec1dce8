"""The in-process driver: the topology on asyncio, states in a `DeviceStates`, results to the
sink.

Per-device order is kept because one consumer takes batches in arrival order. The queue is
bounded: when the topology falls behind, `ingest` waits, and so does the gateway's answer to
the phone (back-pressure instead of unbounded memory).

Memory: device states are held encoded (about 1 KB each), the `runner.live_states` most
recently used ones and those with a timer due at the next tick as live objects
(`pipeline.state_store`).

Durability: a batch is written to the raw tables before `ingest` returns (that is what the
gateway's 202 promises). Device states are snapshotted to `<data_dir>/state/<database>/
devices.json` (their encoded form, base64) on clean shutdown and every
`runner.snapshot_interval_s`, and loaded at start, so dwells, timers and episodes survive a
restart. A snapshot records its low-water mark: every batch received before it had been
processed and its facts flushed to the store (states are captured first, then the sink is
flushed, then the file is written). After a crash, start() reprocesses the
raw pings and device states received since that mark, oldest first: the validator drops what
the snapshot had already seen (retries look the same), and the facts re-emitted carry the same
ids, which the store's ReplacingMergeTree tables keep once. Nothing the gateway acknowledged
is lost, and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.clock import Clock
from pipeline.config import Settings
from pipeline.events import DeadLetter, DeviceState, Ping
from pipeline.ingest import IngestUnavailable
from pipeline.metrics import Metrics
from pipeline.processors.base import Result
from pipeline.reference import ReferenceData
from pipeline.state_store import STATE_FORMAT, DeviceStates
from pipeline.store.client import Store
from pipeline.store.sink import Sink, StoreUnavailable
from pipeline.topology import DeviceBatch, PipelineState, Topology

log = logging.getLogger(__name__)

DeviceKey = tuple[str, str]
RECOVERY_TICK_MS = 10_000


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
        # Encoded at rest, live when recently used or due at the next tick; with each
        # device's `Topology.next_tick_ms`, so a tick pass runs only the devices due.
        self.states: DeviceStates[DeviceKey] = DeviceStates(
            self.topology,
            settings.runner.live_states,
            keep_due_within_ms=settings.runner.tick_interval_ms,
        )
        self.queue: asyncio.Queue[tuple[DeviceBatch, float]] = asyncio.Queue(
            maxsize=settings.runner.queue_batches
        )
        self.auto_tick = auto_tick  # False when the caller drives time (simulation, replay)
        self._tasks: list[asyncio.Task[None]] = []
        self.snapshot_path = (
            Path(settings.store.data_dir) / "state" / settings.store.database / "devices.json"
        )
        # receive time -> batches accepted at the edge but not yet through the topology: the
        # snapshot's low-water mark is the oldest of them.
        self._pending: Counter[int] = Counter()
        self.recovered_batches = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, *, restore: bool = True) -> None:
        self._tasks = [asyncio.create_task(self.sink.run())]
        if restore:
            since = self.load_snapshot_mark()
            if since is not None:
                self.recover(since)
            await self.checkpoint()  # a crash before the first periodic one recovers from here
        self._tasks.append(asyncio.create_task(self._consume()))
        if self.auto_tick:
            self._tasks.append(asyncio.create_task(self._ticker()))
        if restore and self.settings.runner.snapshot_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._checkpointer()))

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
        # Pending from before the durable write: a checkpoint taken while it is in flight must
        # not put its mark past this batch.
        self._pending[batch.received_ms] += 1
        try:
            await self.sink.write_durable(
                {
                    "raw_pings": batch.pings,
                    "device_states": batch.states,
                    "dead_letters": dead_letters,
                }
            )
        except StoreUnavailable as exc:
            self._done(batch.received_ms)
            raise IngestUnavailable(str(exc)) from exc
        if batch.pings or batch.states or batch.future_pings:
            await self.queue.put((batch, accepted_at))
            self.metrics.queue_depth.set(self.queue.qsize())
        else:
            self._done(batch.received_ms)

    def _done(self, received_ms: int) -> None:
        self._pending[received_ms] -= 1
        if self._pending[received_ms] <= 0:
            del self._pending[received_ms]

    def ingest_batched(self, batch: DeviceBatch, dead_letters: list[DeadLetter]) -> Result:
        """For a replay, whose file is the durable copy: raw rows join the sink's batched
        inserts and the batch is processed at once, with no per-upload round trip."""
        self.sink.submit_rows("raw_pings", batch.pings)
        self.sink.submit_rows("device_states", batch.states)
        self.sink.submit_rows("dead_letters", dead_letters)
        return self.process_batch(batch)

    # -- processing -----------------------------------------------------------------------

    def process_batch(self, batch: DeviceBatch, accepted_at: float | None = None) -> Result:
        key = (batch.org_id, batch.device_id)
        ctx = self.topology.context(
            self.reference, batch.org_id, batch.device_id, batch.received_ms
        )
        known = len(self.states)
        result = self.topology.process(self.states.get(key), batch, ctx)
        self.states.schedule(key)
        if len(self.states) != known:
            self.metrics.devices.set(len(self.states))
        self.sink.submit(result, accepted_at)
        return result

    def tick_all(self, *, final: bool = False, now_ms: int | None = None) -> Result:
        """Run timers for every device at the clock's time (lost contact, reorder release)."""
        now = self.clock.now_ms() if now_ms is None else now_ms
        total = Result()
        states = self.states
        # Only devices with a timer due (`Topology.next_tick_ms`); a final tick closes all.
        for key in states if final else states.due(now):
            org_id, device_id = key
            ctx = self.topology.context(self.reference, org_id, device_id, now)
            result = self.topology.tick(states.get(key), ctx, final=final)
            states.schedule(key)
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
                self._done(batch.received_ms)
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

    # -- snapshots and recovery ------------------------------------------------------------

    def _capture(self) -> Snapshot:
        """The states and their low-water mark, captured synchronously (nothing can change
        them while this runs: processing and timers run on this same event loop). Cheap: the
        states at rest are already bytes; only the live ones are encoded."""
        mark = min(self._pending) if self._pending else self.clock.now_ms()
        return Snapshot(self.clock.now_ms(), mark, self.states.encoded_items())

    def _write(self, snapshot: Snapshot) -> None:
        self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.snapshot_path.with_suffix(".tmp")
        tmp.write_text(snapshot.to_json())
        os.replace(tmp, self.snapshot_path)  # atomic: a crash never leaves half a snapshot

    def save_snapshot(self) -> None:
        """For a stopped pipeline (everything drained and flushed)."""
        self._write(self._capture())

    async def checkpoint(self) -> None:
        """A snapshot while running: states first, then the flush of every fact they led to,
        then the file, so the file never runs ahead of the store."""
        snapshot = self._capture()
        await self.sink.flush()
        await asyncio.to_thread(self._write, snapshot)

    async def _checkpointer(self) -> None:
        interval = self.settings.runner.snapshot_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.checkpoint()
            except Exception:  # the store may be down for a while: try again next time
                log.exception("checkpoint failed")

    def load_snapshot_mark(self) -> int | None:
        """Loads the states; returns the mark to recover from (None without a snapshot)."""
        if not self.snapshot_path.exists():
            return None
        started = time.monotonic()
        mark = restore_snapshot(self.snapshot_path.read_text(), self.states)
        log.info("restored %d device states in %.2fs", len(self.states), time.monotonic() - started)
        self.metrics.devices.set(len(self.states))
        return mark

    def recover(self, since_ms: int) -> int:
        """Reprocesses what was received at or after `since_ms` (see the module docstring)."""
        batches = recovered_batches(self.store, since_ms)
        # Timers run between the batches as they did live (at most every 10 s: recovering an
        # hour must not take an hour of ticks), so held pings and silences resolve in order.
        every_ms = max(self.settings.runner.tick_interval_ms, RECOVERY_TICK_MS)
        next_tick = since_ms + every_ms
        for batch in batches:
            while next_tick <= batch.received_ms:
                self.tick_all(now_ms=next_tick)
                next_tick += every_ms
            self.process_batch(batch)
        if batches:
            log.warning("recovered %d batches received since the last snapshot", len(batches))
        self.recovered_batches = len(batches)
        return len(batches)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a snapshot file holds: every device's encoded state and the low-water mark."""

    saved_ms: int
    processed_before_ms: int  # every batch received before it was processed and flushed
    states: list[tuple[DeviceKey, bytes]]

    def to_json(self) -> str:
        """The file's text: JSON, each state as the base64 of its encoded form (written without
        decoding the states at rest, and about 30 % smaller than their JSON)."""
        return json.dumps(
            {
                "saved_ms": self.saved_ms,
                "processed_before_ms": self.processed_before_ms,
                "state_format": STATE_FORMAT,
                "device_states": [
                    [org, dev, base64.b64encode(data).decode("ascii")]
                    for (org, dev), data in self.states
                ],
            },
            separators=(",", ":"),
        )


def restore_snapshot(text: str, states: DeviceStates[DeviceKey]) -> int | None:
    """Loads a snapshot file's states into `states`; returns its low-water mark (None when it
    has none). Reads the earlier form too, states as `to_dict()` objects under "devices"."""
    data = json.loads(text)
    for org, dev, encoded in data.get("device_states", ()):
        states.put_encoded((org, dev), base64.b64decode(encoded))
    for item in data.get("devices", ()):
        states.put((item["org_id"], item["device_id"]), PipelineState.from_dict(item["state"]))
    mark = data.get("processed_before_ms")
    return int(mark) if mark is not None else None


def recovered_batches(store: Store, since_ms: int) -> list[DeviceBatch]:
    """The raw pings and device states received at or after `since_ms`, as the batches they
    arrived in (one per device and receive time), oldest first."""
    db = store.database
    since = {"since": since_ms}
    pings = store.query(
        "SELECT org_id, device_id, seq, toUnixTimestamp64Milli(ts), lat, lon, accuracy_m, "
        "speed_mps, bearing_deg, altitude_m, provider, is_mock, battery_pct, "
        f"toUnixTimestamp64Milli(received) AS r FROM {db}.raw_pings FINAL "
        "WHERE r >= {since:Int64} ORDER BY r, org_id, device_id, seq",
        since,
    ).rows
    states = store.query(
        "SELECT org_id, device_id, toUnixTimestamp64Milli(ts), kind, detail, "
        f"toUnixTimestamp64Milli(received) AS r FROM {db}.device_states FINAL "
        "WHERE r >= {since:Int64} ORDER BY r, org_id, device_id",
        since,
    ).rows
    batches: dict[tuple[int, str, str], DeviceBatch] = {}

    def batch_of(received: int, org_id: str, device_id: str) -> DeviceBatch:
        key = (received, org_id, device_id)
        if key not in batches:
            batches[key] = DeviceBatch(org_id, device_id, received_ms=received)
        return batches[key]

    for org, dev, seq, ts, lat, lon, acc, speed, bearing, alt, provider, mock, battery, r in pings:
        batch_of(r, org, dev).pings.append(
            Ping(
                org,
                dev,
                seq,
                ts,
                lat,
                lon,
                acc,
                speed,
                bearing,
                alt,
                provider,
                bool(mock),
                battery,
                received_ms=r,
            )
        )
    for org, dev, ts, kind, detail, r in states:
        batch_of(r, org, dev).states.append(DeviceState(org, dev, ts, kind, detail or None, r))
    return [batches[k] for k in sorted(batches)]
