"""`fieldtrack sink`: Kafka -> ClickHouse.

Consumes the raw input topics (pings, device states) and every output topic, buffers rows per
table in the same batching `Sink` the embedded runner uses, and commits the consumed offsets
only after every buffered row is in the store. The compacted reference topic lands in the
customers, fences and devices tables, so analysts join visits to customer names and grades on
Kafka deployments as on embedded ones (deletions are not mirrored: the tables keep history).
A crash before the commit replays those records into the store again, and the tables'
ReplacingMergeTree keys keep one copy of each fact.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from pipeline.codec import CodecError
from pipeline.config import Settings
from pipeline.events import DeadLetter, make_id
from pipeline.metrics import Metrics
from pipeline.reference.models import Customer
from pipeline.store.client import Store
from pipeline.store.reference import save_customers, save_devices, save_fences
from pipeline.store.sink import Sink, StoreUnavailable
from pipeline.stream.records import decode_for_store
from pipeline.stream.reference import FenceFeature, RegisteredDevice, parse_reference
from pipeline.stream.topics import Topics

log = logging.getLogger(__name__)

RETRY_S = 1.0


class KafkaSink:
    def __init__(self, settings: Settings, store: Store, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.kafka.topic_prefix)
        self.metrics = metrics or Metrics()
        self.sink = Sink(store, settings.store, self.metrics)
        self.consumer = AIOKafkaConsumer(
            *self.topics.all(),
            self.topics.reference,
            bootstrap_servers=settings.kafka.bootstrap,
            group_id=f"{settings.kafka.topic_prefix}sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(settings.kafka.session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.kafka.session_timeout_s * 200),
        )
        self._offsets: dict[TopicPartition, int] = {}
        self.store = store
        self._reference: list[Customer | FenceFeature | RegisteredDevice] = []
        self.consumed = 0
        self.committed = 0

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.start()
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(
                    timeout_ms=100, max_records=self.settings.store.batch_rows
                )
                for tp, messages in batches.items():
                    for msg in messages:
                        self._buffer(msg)
                        self._offsets[tp] = msg.offset + 1
                if self._offsets and (self.sink.due() or not batches):
                    await self._flush_and_commit(stop)
            await self._flush_and_commit(stop, final=True)
        finally:
            await self.consumer.stop()
            await self.sink.close()

    def _buffer(self, msg: object) -> None:
        self.consumed += 1
        if msg.topic == self.topics.reference:  # type: ignore[attr-defined]
            if msg.key and msg.value:  # type: ignore[attr-defined]
                item = parse_reference(msg.key, msg.value)  # type: ignore[attr-defined]
                if item is not None:
                    self._reference.append(item)
            return
        try:
            for table, rows in decode_for_store(msg.value):  # type: ignore[attr-defined]
                self.sink.submit_rows(table, rows)
                self.metrics.facts.labels(table).inc(len(rows))
        except (CodecError, TypeError, KeyError) as exc:
            where = f"{msg.topic}[{msg.partition}]@{msg.offset}"  # type: ignore[attr-defined]
            log.error("undecodable record %s: %s", where, exc)
            letter = DeadLetter(
                id=make_id("sink", where),
                org_id="",
                device_id=(msg.key or b"").decode("utf-8", "replace"),  # type: ignore[attr-defined]
                received_ms=time.time_ns() // 1_000_000,
                source="sink",
                reason=f"undecodable record at {where}: {exc}",
                payload=msg.value or b"",  # type: ignore[attr-defined]
            )
            self.sink.submit_rows("dead_letters", [letter])

    def _save_reference(self) -> None:
        items, self._reference = self._reference, []
        customers = [i for i in items if isinstance(i, Customer)]
        if customers:
            save_customers(self.store, customers)
        by_org: dict[str, list[dict[str, object]]] = {}
        devices = []
        for item in items:
            if isinstance(item, FenceFeature):
                by_org.setdefault(item.org_id, []).append(item.feature)
            elif isinstance(item, RegisteredDevice):
                devices.append((item.token_hash, item.device))
        save_devices(self.store, devices)
        for org_id, features in by_org.items():
            save_fences(self.store, features, org_id)

    async def _flush_and_commit(self, stop: asyncio.Event, final: bool = False) -> None:
        while True:
            try:
                await self.sink.flush()
                if self._reference:
                    try:
                        await asyncio.to_thread(self._save_reference)
                    except ValueError as exc:  # a fence the index also refused: logged there
                        log.error("reference record not stored: %s", exc)
                break
            except StoreUnavailable as exc:
                log.error("store unavailable, retrying (offsets not committed): %s", exc)
                if final and stop.is_set():
                    raise
                await asyncio.sleep(RETRY_S)
        if self._offsets:
            await self.consumer.commit(dict(self._offsets))
            self.committed = self.consumed
            self._offsets.clear()


async def run_sink(settings: Settings, stop: asyncio.Event, store: Store | None = None) -> None:
    own = store is None
    store = store or Store(settings.store)
    store.apply_schema()
    try:
        await KafkaSink(settings, store).run(stop)
    finally:
        if own:
            store.close()
