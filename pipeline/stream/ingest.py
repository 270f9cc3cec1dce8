"""The gateway's IngestSink on Kafka: a batch is claimed only once the broker acknowledged it.

Idempotent producer with acks=all: every in-sync replica has the records before the gateway
answers 202, and a producer retry never duplicates them in the log. When the broker does not
acknowledge within `kafka.producer_timeout_s` the gateway answers 503 with Retry-After and
claims nothing; a record the producer still delivers later is a harmless duplicate of the
phone's retry (the same ids, one copy in the store).

A broker that restarts while records are in flight can leave the idempotent producer with a
sequence the broker no longer accepts (OutOfOrderSequenceNumber, UnknownProducerId): aiokafka
does not recover from that by itself, so every later batch would fail. The gateway then
replaces the producer (a new producer id) and answers that batch with 503; the phone's retry
goes through the new one.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from pipeline import codec
from pipeline.config import KafkaSettings
from pipeline.events import DeadLetter
from pipeline.ingest import IngestUnavailable
from pipeline.stream import records
from pipeline.stream.topics import Topics, device_key
from pipeline.topology import DeviceBatch

log = logging.getLogger(__name__)


# The idempotent producer's sequence state is broken: only a new producer id helps.
_PRODUCER_STATE_LOST = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


class KafkaIngest:
    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.producer = self._new_producer()
        self._started = False
        self.producer_resets = 0

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            request_timeout_ms=int(self.settings.producer_timeout_s * 1000),
            retry_backoff_ms=200,
        )

    async def _reset_producer(self) -> None:
        old, self.producer, self._started = self.producer, self._new_producer(), False
        self.producer_resets += 1
        try:
            await asyncio.wait_for(old.stop(), self.settings.producer_timeout_s)
        except Exception as exc:  # its buffered records are the phones' to retry
            log.warning("old producer did not stop cleanly: %r", exc)

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
        producer = self.producer
        try:
            if not self._started:
                await producer.start()
                self._started = True
            key = device_key(batch.org_id, batch.device_id)
            pending = []
            if batch.pings or batch.future_pings:
                value = records.encode_pings(batch)
                pending.append(await producer.send(self.topics.pings, value, key=key))
            if batch.states:
                value = records.encode_states(batch)
                pending.append(await producer.send(self.topics.device_states, value, key=key))
            dead_topic = self.topics.name("dead-letters")
            for letter in dead_letters:
                value = codec.encode_avro("DeadLetter", letter)
                pending.append(await producer.send(dead_topic, value, key=key))
            await asyncio.wait_for(asyncio.gather(*pending), self.settings.producer_timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            if isinstance(exc, _PRODUCER_STATE_LOST) and producer is self.producer:
                log.warning("producer state lost (%r): starting a new producer", exc)
                await self._reset_producer()
            raise IngestUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
