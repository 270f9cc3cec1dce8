"""Batches records into the store.

Two paths:
- `write_durable`: input the gateway must not acknowledge before it is stored (raw pings,
  device states, dead letters). Concurrent requests are group-committed: everything that
  arrives within `durable_flush_ms` goes in one insert per table, and every waiting request is
  released (or failed) by that insert.
- `submit`: derived facts. Buffered per table and flushed when a buffer reaches `batch_rows` or
  its oldest row is `flush_interval_ms` old. A failed insert keeps the rows and is retried;
  the store's ReplacingMergeTree tables make a retried insert harmless.

All store calls run on one dedicated thread: chDB is one engine per process and calls block.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.config import StoreSettings
from pipeline.metrics import Metrics
from pipeline.processors.base import Result
from pipeline.store.client import Store
from pipeline.store.rows import RESULT_TABLES, TABLES

log = logging.getLogger(__name__)

RETRY_DELAY_S = 1.0


class Sink:
    def __init__(self, store: Store, settings: StoreSettings, metrics: Metrics | None = None):
        self.store = store
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._buffers: dict[str, list[Any]] = {t: [] for t in TABLES}
        self._oldest: dict[str, float] = {}
        # accepted_at (monotonic) and point count of results whose track points are buffered
        self._latency_marks: list[tuple[float, int]] = []
        self._durable: dict[str, list[Any]] = {}
        self._durable_waiters: list[asyncio.Future[None]] = []
        self._durable_task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._closed = False

    # -- blocking helpers, always on the store thread -------------------------------------

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run a blocking store call on the store thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _insert_now(self, table: str, rows: Sequence[Any]) -> None:
        spec = TABLES[table]
        self.store.insert(table, spec.to_columns(rows), spec.columns)

    # -- durable path ---------------------------------------------------------------------

    async def write_durable(self, batches: dict[str, Sequence[Any]]) -> None:
        """Returns once every row is in the store; raises if the store failed."""
        if not any(batches.values()):
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        for table, rows in batches.items():
            if rows:
                self._durable.setdefault(table, []).extend(rows)
        self._durable_waiters.append(waiter)
        if self._durable_task is None or self._durable_task.done():
            self._durable_task = asyncio.create_task(self._group_commit())
        await waiter

    async def _group_commit(self) -> None:
        await asyncio.sleep(self.settings.durable_flush_ms / 1000.0)
        while self._durable_waiters:
            pending, self._durable = self._durable, {}
            waiters, self._durable_waiters = self._durable_waiters, []
            try:
                for table, rows in pending.items():
                    await self.call(self._insert_now, table, rows)
                    self.metrics.store_rows.labels(table).inc(len(rows))
            except Exception as exc:
                log.error("durable insert failed: %s", exc)
                for table in pending:
                    self.metrics.store_errors.labels(table).inc()
                for w in waiters:
                    if not w.done():
                        w.set_exception(StoreUnavailable(str(exc)))
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    # -- derived facts --------------------------------------------------------------------

    def submit_rows(self, table: str, rows: Sequence[Any]) -> None:
        """Buffer rows for the next batched insert (no durability promise until flushed)."""
        if rows:
            self._buffers[table].extend(rows)
            self._oldest.setdefault(table, time.monotonic())

    def submit(self, result: Result, accepted_at: float | None = None) -> None:
        for attr, table in RESULT_TABLES:
            rows = getattr(result, attr)
            if rows:
                self.submit_rows(table, rows)
                self.metrics.facts.labels(table).inc(len(rows))
        if accepted_at is not None and result.track_points:
            self._latency_marks.append((accepted_at, len(result.track_points)))
        for name, n in result.counters.items():
            self.metrics.topology_counters.labels(name).inc(n)

    def buffered_rows(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def due(self) -> bool:
        now = time.monotonic()
        age = self.settings.flush_interval_ms / 1000.0
        return any(
            len(self._buffers[t]) >= self.settings.batch_rows or now - started >= age
            for t, started in self._oldest.items()
        )

    async def flush(self, *, only_due: bool = False) -> None:
        async with self._flush_lock:
            now = time.monotonic()
            age = self.settings.flush_interval_ms / 1000.0
            marks: list[tuple[float, int]] = []
            for table in list(self._oldest):
                rows = self._buffers[table]
                young = now - self._oldest[table] < age
                if only_due and len(rows) < self.settings.batch_rows and young:
                    continue
                self._buffers[table], started = [], self._oldest.pop(table)
                table_marks: list[tuple[float, int]] = []
                if table == "track_points":
                    table_marks, self._latency_marks = self._latency_marks, []
                try:
                    await self.call(self._insert_now, table, rows)
                except Exception as exc:
                    log.error(
                        "insert into %s failed (%d rows kept for retry): %s", table, len(rows), exc
                    )
                    self.metrics.store_errors.labels(table).inc()
                    self._buffers[table] = rows + self._buffers[table]
                    self._oldest[table] = started
                    self._latency_marks = table_marks + self._latency_marks
                    raise StoreUnavailable(str(exc)) from exc
                self.metrics.store_rows.labels(table).inc(len(rows))
                marks.extend(table_marks)
            done = time.monotonic()
            for accepted_at, n in marks:
                self.metrics.store_latency.observe(done - accepted_at)
                self.metrics.latency_sample.add(done - accepted_at, n)

    async def run(self) -> None:
        """Background flusher: call as a task; cancel to stop (then `close`)."""
        tick = max(0.01, self.settings.flush_interval_ms / 4000.0)
        while not self._closed:
            await asyncio.sleep(tick)
            if self.due():
                try:
                    await self.flush(only_due=True)
                except StoreUnavailable:
                    await asyncio.sleep(RETRY_DELAY_S)

    async def close(self) -> None:
        """Flush everything (retrying while the store fails) and stop the store thread."""
        self._closed = True
        if self._durable_task is not None:
            await asyncio.gather(self._durable_task, return_exceptions=True)
        for attempt in range(5):
            try:
                await self.flush()
                break
            except StoreUnavailable:
                if attempt == 4:
                    log.error("giving up: %d rows could not be stored", self.buffered_rows())
                await asyncio.sleep(RETRY_DELAY_S)
        self._executor.shutdown(wait=True)


class StoreUnavailable(RuntimeError):
    """The store did not take an insert; the caller decides whether to retry or answer 503."""
