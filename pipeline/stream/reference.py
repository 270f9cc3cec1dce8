"""Reference data on Kafka: customers, fences and devices on one compacted topic.

Every gateway, worker and sink reads the whole topic at start and follows it, so a customer
import or a new device reaches every process without a shared database; compaction keeps the
latest record per key forever. Keys: `customer/<org>/<id>`, `fence/<org>/<id>`,
`device/<org>/<id>`; values: JSON (a customer, a GeoJSON fence feature, a device with its
token *hash* and schedule); an empty value deletes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.config import KafkaSettings
from pipeline.devices import DeviceInfo, DeviceRegistry
from pipeline.reference import CustomerIndex, FenceIndex, ReferenceData
from pipeline.reference.models import Customer, Schedule
from pipeline.stream.topics import Topics

log = logging.getLogger(__name__)


def _customer_record(c: Customer) -> tuple[bytes, bytes]:
    return f"customer/{c.org_id}/{c.customer_id}".encode(), json.dumps(asdict(c)).encode()


def _fence_record(org_id: str, feature: dict[str, Any]) -> tuple[bytes, bytes]:
    props = feature.get("properties") or {}
    fence_id = props.get("id") or feature.get("id")
    if not fence_id:
        raise ValueError("a fence feature needs an id (properties.id)")
    return f"fence/{org_id}/{fence_id}".encode(), json.dumps(feature).encode()


def _device_record(token_hash: str, d: DeviceInfo) -> tuple[bytes, bytes]:
    value = {
        "org_id": d.org_id,
        "device_id": d.device_id,
        "name": d.name,
        "token_hash": token_hash,
        "schedule": d.schedule.to_spec() if d.schedule else None,
        "active": d.active,
    }
    return f"device/{d.org_id}/{d.device_id}".encode(), json.dumps(value).encode()


async def publish_reference(
    settings: KafkaSettings,
    *,
    customers: list[Customer] = (),  # type: ignore[assignment]
    fences: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    devices: list[tuple[str, DeviceInfo]] = (),  # type: ignore[assignment]
) -> int:
    """Writes reference records (acks=all); returns how many."""
    records = [
        *(_customer_record(c) for c in customers),
        *(_fence_record(org, f) for org, f in fences),
        *(_device_record(h, d) for h, d in devices),
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        topic = Topics(settings.topic_prefix).reference
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records)


class ReferenceFeed:
    """This process's copy of the reference topic, rebuilt into indexes when it changes."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.topic = Topics(settings.topic_prefix).reference
        self.records: dict[bytes, bytes] = {}
        self.reference = ReferenceData()
        self.registry = DeviceRegistry()
        self.listeners: list[Callable[[ReferenceFeed], None]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Reads the topic to its end (the current snapshot), then follows it."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        self._consumer = consumer
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            self._apply(await consumer.getmany(tp, timeout_ms=1000))
        self._rebuild()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            if batches and self._apply(batches):
                self._rebuild()

    def _apply(self, batches: dict[Any, list[Any]]) -> bool:
        changed = False
        for messages in batches.values():
            for msg in messages:
                if msg.key is None:
                    continue
                if msg.value:
                    self.records[msg.key] = msg.value
                else:
                    self.records.pop(msg.key, None)
                changed = True
        return changed

    def _rebuild(self) -> None:
        customers, fences, devices = [], [], {}
        for key, value in self.records.items():
            item = parse_reference(key, value)
            if item is None:
                continue
            if isinstance(item, Customer):
                customers.append(item)
            elif isinstance(item, FenceFeature):
                fences.append((item.org_id, item.feature))
            else:
                devices[item.token_hash] = item.device
        self.registry.replace_all(devices)
        # Swap whole indexes: a batch being processed never sees half an update.
        self.reference.customers = CustomerIndex(customers)
        self.reference.fences = FenceIndex.from_features(fences)
        self.reference.schedules = self.registry.schedules()
        for listener in self.listeners:
            listener(self)


@dataclass(frozen=True, slots=True)
class FenceFeature:
    org_id: str
    feature: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    token_hash: str
    device: DeviceInfo


def parse_reference(key: bytes, value: bytes) -> Customer | FenceFeature | RegisteredDevice | None:
    """One reference record (see the module docstring); None, logged, when it is bad."""
    try:
        kind, org_id, _ = key.decode().split("/", 2)
        data = json.loads(value)
        if kind == "customer":
            return Customer(**data)
        if kind == "fence":
            return FenceFeature(org_id, data)
        if kind == "device":
            schedule = data.get("schedule")
            device = DeviceInfo(
                data["org_id"],
                data["device_id"],
                data.get("name", ""),
                Schedule.parse(schedule) if schedule else None,
                bool(data.get("active", True)),
            )
            return RegisteredDevice(data["token_hash"], device)
        raise ValueError(f"unknown kind {kind!r}")
    except (TypeError, ValueError, KeyError) as exc:
        log.error("skipping bad reference record %s: %s", key, exc)
        return None
