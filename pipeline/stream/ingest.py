"""The gateway's IngestSink on Kafka: a batch is claimed only once the broker acknowledged it.

Idempotent producer with acks=all: every in-sync replica has the records before the gateway
answers 202, and a producer retry never duplicates them in the log. When the broker does not
acknowledge within `kafka.producer_timeout_s` the gateway answers 503 with Retry-After and
claims nothing; a record the producer still delivers later is a harmless duplicate of the
phone's retry (the same ids, one copy in the store).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline import codec
from pipeline.config import KafkaSettings
from pipeline.events import DeadLetter
from pipeline.ingest import IngestUnavailable
from pipeline.stream import records
from pipeline.stream.topics import Topics, device_key
from pipeline.topology import DeviceBatch

log = logging.getLogger(__name__)


class KafkaIngest:
    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        timeout_ms = int(settings.producer_timeout_s * 1000)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            request_timeout_ms=timeout_ms,
            retry_backoff_ms=200,
        )
        self._started = False

    async def start(self) -> None:
        try:
            await self.producer.start()
            self._started = True
        except KafkaError as exc:  # start anyway: answer 503 until the broker is reachable
            log.warning("Kafka not reachable at start (%s); will answer 503 until it is", exc)

    async def stop(self) -> None:
        if self._started:
            await self.producer.stop()

    async def ingest(
        self, batch: DeviceBatch, dead_letters: list[DeadLetter], accepted_at: float
    ) -> None:
        try:
            if not self._started:
                await self.producer.start()
                self._started = True
            key = device_key(batch.org_id, batch.device_id)
            pending = []
            if batch.pings or batch.future_pings:
                value = records.encode_pings(batch)
                pending.append(await self.producer.send(self.topics.pings, value, key=key))
            if batch.states:
                value = records.encode_states(batch)
                pending.append(await self.producer.send(self.topics.device_states, value, key=key))
            dead_topic = self.topics.name("dead-letters")
            for letter in dead_letters:
                value = codec.encode_avro("DeadLetter", letter)
                pending.append(await self.producer.send(dead_topic, value, key=key))
            await asyncio.wait_for(asyncio.gather(*pending), self.settings.producer_timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise IngestUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
