"""The Faust worker: the same topology as the embedded runner, state in a Faust table.

One agent consumes the `pings` and `device-states` topics (co-partitioned, keyed by device).
For a device batch it loads the device's `PipelineState` from the changelog-backed table, calls
`Topology.process`, writes the state back and sends the outputs to their topics. Timers run as
`Tick` records that the worker writes into each input partition it owns, in both input topics;
the agent runs the timers of partition p at time T for every device of p once it has read the
tick T from both topics' partition p — so everything received before T, pings and device
states alike, has been processed, whichever topic Faust happened to read first. (Faust only
lets a table change inside stream iteration, which a tick record also satisfies.) The
progress of that barrier is kept in the table, so a restarted worker resumes it.

Delivery is at-least-once: a device's new state is written to the table (its changelog) only
after the broker acknowledged that event's outputs, Faust commits source offsets only after
the event, a failed send stops the worker hard (so no offset past it is ever committed), and
outputs carry deterministic ids, so a replay after a crash stores nothing twice and loses
nothing. Agent concurrency stays 1
(a known Faust bug can commit past an in-flight event with more).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from pipeline.config import Settings
from pipeline.stream import records
from pipeline.stream.records import Tick
from pipeline.stream.reference import ReferenceFeed
from pipeline.stream.topics import Topics
from pipeline.topology import PipelineState, Topology

log = logging.getLogger(__name__)

STATE_TABLE = "device-state"


def _die(reason: object) -> None:
    log.critical(
        "an output could not be delivered (%s): stopping hard so the source offset is "
        "never committed past it",
        reason,
    )
    os._exit(70)


def _die_on_failed_send(fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        _die("cancelled")
    elif fut.exception() is not None:
        _die(fut.exception())


class Worker:
    """Builds the Faust app around the shared topology."""

    def __init__(self, settings: Settings, *, app_id: str = "", web_port: int = 0) -> None:
        self.settings = settings
        kafka = settings.kafka
        self.topics = Topics(kafka.topic_prefix)
        self.topology = Topology(settings.processors)
        self.feed = ReferenceFeed(kafka)
        self.processed = 0
        self.counters: Counter[str] = Counter()  # topology counters (duplicate, late, ...)
        self.reference_ready = asyncio.Event()
        data = Path(settings.store.data_dir) / "faust" / str(os.getpid())
        data.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            app_id or f"{kafka.topic_prefix}worker",
            broker=f"kafka://{kafka.bootstrap}",
            store="memory://",
            datadir=str(data),
            topic_partitions=kafka.partitions,
            topic_replication_factor=kafka.replication,
            table_standby_replicas=0,  # standby data would leak into the timers' key scans
            web_enabled=web_port > 0,
            web_port=web_port or 6066,
            broker_session_timeout=kafka.session_timeout_s,
            broker_heartbeat_interval=max(1.0, kafka.session_timeout_s / 5),
            producer_acks=-1,
            stream_wait_empty=True,
        )
        self.input = self.app.topic(
            self.topics.pings,
            self.topics.device_states,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.output_names = self.topics.outputs()
        # Outputs and ticks go through a plain idempotent producer whose acks we await:
        # waiting on Faust's own producer buffer from inside the agent can hang across a
        # rebalance, and the acks are what the state write below depends on.
        self.producer: AIOKafkaProducer | None = None
        # device key -> {"p": partition, "s": PipelineState dict}
        self.states = self.app.Table(STATE_TABLE, partitions=kafka.partitions, key_type=bytes)
        self.app.agent(self.input, name="topology", concurrency=1)(self._agent)
        self.app.task(self._start_reference)
        self.app.on_before_shutdown.connect(self._stop_reference)
        if kafka.tick_interval_ms > 0:
            self.app.timer(kafka.tick_interval_ms / 1000.0)(self._send_ticks)
        self.app.timer(5.0)(self._report)
        self._reported = 0

    # -- reference data -------------------------------------------------------------------

    async def _start_reference(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
        )
        await self.producer.start()
        await self.feed.start()
        self.reference_ready.set()
        log.info("reference loaded: %d customers, %d fences, %d devices",
                 len(self.feed.reference.customers), len(self.feed.reference.fences),
                 len(self.feed.registry))  # fmt: skip

    async def _stop_reference(self, app: Any, **kwargs: Any) -> None:
        await self.feed.stop()
        if self.producer is not None:
            await self.producer.stop()

    # -- timers ---------------------------------------------------------------------------

    def owned_partitions(self) -> list[int]:
        return sorted(
            tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.topics.pings
        )

    async def _send_ticks(self) -> None:
        if self.producer is None:
            return
        now_ms = time.time_ns() // 1_000_000
        tick = records.encode_tick(now_ms)
        for partition in self.owned_partitions():
            for topic in self.topics.inputs:
                fut = await self.producer.send(topic, tick, key=b"", partition=partition)
                fut.add_done_callback(_die_on_failed_send)

    async def _report(self) -> None:
        if self.processed != self._reported:
            self._reported = self.processed
            log.info("processed %d records; owns partitions %s", self.processed,
                     self.owned_partitions())  # fmt: skip

    # -- the agent ------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> Any:
        await self.reference_ready.wait()  # never process a batch without customers and fences
        async for event in stream.events():
            try:
                item = records.decode_input(event.value)
            except Exception as exc:  # a bad record must not stop the partition
                log.error("undecodable record at %s[%s]@%s: %s", event.message.topic,
                          event.message.partition, event.message.offset, exc)  # fmt: skip
                continue
            partition = event.message.partition
            if isinstance(item, Tick):
                await self._barrier(item, partition, event.message.topic)
            else:
                await self._process(item, partition, event.key)
            self.processed += 1
            yield None

    async def _process(self, batch: Any, partition: int, key: bytes) -> None:
        stored = self.states.get(key)
        state = PipelineState.from_dict(stored["s"]) if stored else self.topology.initial_state()
        ctx = self.topology.context(
            self.feed.reference, batch.org_id, batch.device_id, batch.received_ms
        )
        result = self.topology.process(state, batch, ctx)
        self.counters.update(result.counters)
        await self._emit(result)
        self.states[key] = {"p": partition, "s": state.to_dict()}

    async def _barrier(self, tick: Tick, partition: int, topic: str) -> None:
        """Run the timers of `partition` up to the newest tick read from both input topics."""
        key = b"\x00tick/%d" % partition
        seen = dict(self.states.get(key) or {"p": -1, "done": 0})
        seen[topic] = max(seen.get(topic, 0), tick.now_ms)
        if tick.final:
            seen["final"] = tick.now_ms
        ready = min(seen.get(t, 0) for t in self.topics.inputs)
        if ready > seen["done"]:
            seen["done"] = ready
            await self._tick(Tick(ready, seen.get("final") == ready), partition)
        self.states[key] = seen  # "p": -1 keeps it out of the timers' device scan
        if self.settings.kafka.tick_acks and self.producer is not None:
            # Also after a restart that finds the tick already done: the driver waits on it.
            ack = records.encode_tick(seen["done"])
            await (await self.producer.send(self.topics.tick_acks, ack, partition=partition))

    async def _tick(self, tick: Tick, partition: int) -> None:
        for key, stored in list(self.states.items()):
            if stored.get("p") != partition:
                continue
            org_id, _, device_id = key.decode().partition("/")
            state = PipelineState.from_dict(stored["s"])
            ctx = self.topology.context(self.feed.reference, org_id, device_id, tick.now_ms)
            result = self.topology.tick(state, ctx, final=tick.final)
            await self._emit(result)
            fresh = state.to_dict()
            if fresh != stored["s"]:  # write the changelog only when a timer changed state
                self.states[key] = {"p": partition, "s": fresh}

    async def _emit(self, result: Any) -> None:
        """Sends the outputs and waits until the broker has them all. Only then may the
        caller write the new state: a state in the changelog never runs ahead of the outputs
        it produced, so after a crash a replayed event either finds the old state (and emits
        the same outputs again, same ids) or finds its outputs already delivered."""
        assert self.producer is not None  # started before the agent reads anything
        pending = [
            await self.producer.send(self.output_names[short], value, key=key)
            for short, key, value in records.encode_outputs(result)
        ]
        for fut in pending:
            try:
                await fut
            except Exception as exc:
                _die(exc)


def run_worker(settings: Settings, *, loglevel: str = "warn", web_port: int = 0) -> None:
    """Blocks; SIGTERM/SIGINT stop it gracefully (in-flight events finish, offsets commit)."""
    worker = Worker(settings, web_port=web_port)
    faust.Worker(worker.app, loglevel=loglevel).execute_from_commandline()
