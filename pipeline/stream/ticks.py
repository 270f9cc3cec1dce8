"""Tick records from a driver that owns the clock (a simulation, a test, a replay).

A worker's own timer writes ticks on the wall clock; a driver that compresses a day into
seconds writes them itself after each step of simulated time, into every partition of both
input topics. With `kafka.tick_acks` the workers acknowledge each tick once they ran it, and
the driver waits for that before the next step — the Kafka counterpart of the embedded
driver's "drain, then tick".
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.config import KafkaSettings
from pipeline.stream import records
from pipeline.stream.records import Tick
from pipeline.stream.topics import Topics

ACK_TIMEOUT_S = 120.0


class TickDriver:
    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
        self.acks: AIOKafkaConsumer | None = None
        self.acked: dict[int, int] = {}

    async def start(self) -> None:
        await self.producer.start()
        if self.settings.tick_acks:
            self.acks = AIOKafkaConsumer(
                bootstrap_servers=self.settings.bootstrap, enable_auto_commit=False
            )
            await self.acks.start()
            parts = [TopicPartition(self.topics.tick_acks, p)
                     for p in range(self.settings.partitions)]  # fmt: skip
            self.acks.assign(parts)
            await self.acks.seek_to_end(*parts)  # only acks for ticks written from now on

    async def stop(self) -> None:
        await self.producer.stop()
        if self.acks is not None:
            await self.acks.stop()

    async def tick(self, now_ms: int, *, final: bool = False) -> None:
        value = records.encode_tick(now_ms, final)
        sent = [
            await self.producer.send(topic, value, key=b"", partition=p)
            for topic in self.topics.inputs
            for p in range(self.settings.partitions)
        ]
        await asyncio.gather(*sent)
        if self.acks is not None:
            await self._wait_acked(now_ms)

    async def _wait_acked(self, now_ms: int) -> None:
        assert self.acks is not None
        deadline = time.monotonic() + ACK_TIMEOUT_S
        partitions = range(self.settings.partitions)
        while any(self.acked.get(p, -1) < now_ms for p in partitions):
            if time.monotonic() > deadline:
                late = [p for p in partitions if self.acked.get(p, -1) < now_ms]
                raise TimeoutError(f"no worker acknowledged tick {now_ms} on partitions {late}")
            for tp, messages in (await self.acks.getmany(timeout_ms=200)).items():
                for msg in messages:
                    item = records.decode_input(msg.value)
                    if isinstance(item, Tick):
                        self.acked[tp.partition] = max(self.acked.get(tp.partition, -1),
                                                       item.now_ms)  # fmt: skip
