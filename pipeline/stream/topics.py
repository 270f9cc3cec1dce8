"""Topic names, keys and partitioning.

Every topic is keyed by device (`org/device`) and has the same partition count, so a device's
input, state changelog and outputs stay on one partition number: co-partitioned, one worker
owns a device, and its state needs no lock or network hop. Names are versioned by a prefix
(`kafka.topic_prefix`, default `fieldtrack.v1.`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from pipeline.config import KafkaSettings

INPUT = ("pings", "device-states")
OUTPUT = ("track-points", "dwells", "visits", "fence-events", "alerts", "dead-letters")
REFERENCE = "reference"


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str

    def name(self, short: str) -> str:
        return f"{self.prefix}{short}"

    @property
    def pings(self) -> str:
        return self.name("pings")

    @property
    def device_states(self) -> str:
        return self.name("device-states")

    @property
    def reference(self) -> str:
        return self.name(REFERENCE)

    @property
    def inputs(self) -> tuple[str, str]:
        """The topology's input topics; a Tick is written into both (see stream.worker)."""
        return (self.pings, self.device_states)

    def outputs(self) -> dict[str, str]:
        return {short: self.name(short) for short in OUTPUT}

    @property
    def tick_acks(self) -> str:
        return self.name("tick-acks")

    def all(self) -> list[str]:
        return [self.name(t) for t in (*INPUT, *OUTPUT)]


def device_key(org_id: str, device_id: str) -> bytes:
    return f"{org_id}/{device_id}".encode()


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, as the Java client and aiokafka use)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def consumer_lag(settings: KafkaSettings, group: str, topics: list[str]) -> dict[str, int]:
    """Records not yet committed by `group`, per topic partition (end offset - committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap)
    await admin.start()
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        ends = await consumer.end_offsets(parts)
        done = await committed_offsets(admin, group, parts)
        return {f"{tp.topic}[{tp.partition}]": ends[tp] - done[tp] for tp in parts}
    finally:
        await consumer.stop()
        await admin.close()


async def committed_offsets(
    admin: AIOKafkaAdminClient, group: str, parts: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The next offset `group` will read in each partition (0 where it never committed)."""
    committed = await admin.list_consumer_group_offsets(group, partitions=parts)
    return {tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in parts}


async def wait_drained(
    settings: KafkaSettings, timeout_s: float = 120.0, *, workers: bool = True
) -> None:
    """Until the sink (and, with `workers`, the workers) committed everything written so far.

    A driver whose last tick was acknowledged already knows the workers are done (a tick runs
    only after everything before it was processed), so it passes `workers=False`: Faust can
    leave a partition's committed offset behind after a rebalance (faust-streaming #596)
    although every record was processed."""
    topics = Topics(settings.topic_prefix)
    deadline = time.monotonic() + timeout_s
    groups = [(f"{settings.topic_prefix}sink", topics.all())]
    if workers:
        groups.insert(0, (f"{settings.topic_prefix}worker", list(topics.inputs)))
    for group, names in groups:
        while True:
            lag = {k: v for k, v in (await consumer_lag(settings, group, names)).items() if v}
            if not lag:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group} still {sum(lag.values())} records behind: {lag}")
            await asyncio.sleep(1.0)


async def create_topics(settings: KafkaSettings) -> list[str]:
    """Creates missing topics (data topics co-partitioned; reference compacted, 1 partition).
    Returns the names created."""
    topics = Topics(settings.topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.partitions, settings.replication)
            for name in [*topics.all(), topics.tick_acks]
            if name not in existing
        ]
        if topics.reference not in existing:
            wanted.append(
                NewTopic(
                    topics.reference,
                    1,
                    settings.replication,
                    topic_configs={"cleanup.policy": "compact"},
                )
            )
        if wanted:
            # another process may have created them meanwhile
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
            await _until_led(admin, [t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def delete_topics(settings: KafkaSettings) -> list[str]:
    """Deletes every topic of this deployment's prefix (Faust's internal ones too): for test
    and benchmark deployments, whose thousands of leftover partitions otherwise make the
    local broker's start and stop take 30 s instead of 5. Returns the names deleted."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if names and settings.topic_prefix:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    """Waits until every partition of the new topics has a leader: a client that uses a topic
    the moment it is created otherwise logs a burst of "not found in cluster metadata" /
    NotLeaderForPartition errors while the controller catches up (it retries; this is for
    quiet logs and a prompt start)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        if len(described) == len(names) and all(
            not t["error_code"]
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        if asyncio.get_running_loop().time() > deadline:
            return  # the clients still retry; not worth failing over
        await asyncio.sleep(0.1)
