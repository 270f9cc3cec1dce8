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

The agent works in rounds of up to `kafka.worker_batch_records` records (`take_events`). A
round processes its records in order against a local copy of the states they touch and sends
every output without waiting; a task then waits for all the acknowledgements and only then
writes the changed states (table store plus an explicit changelog record on the state's own
partition: outside Faust's per-event context a plain table write cannot know it), while the
agent already processes the next round, reading through the one in flight. One broker round
trip per round instead of one per record, and the worker does not sit idle during it.

Delivery: a device's new state is written to the table (its changelog) only after the broker
acknowledged the outputs that led to it, together with each input partition's position (the
next offset whose effects are not in the table, `pipeline.stream.positions`). The position,
not the group's committed offset, decides what a worker processes: records below it are
skipped (their outputs are out, their effects in the table), and a record above it means Faust
committed past records nobody processed, so the worker rewinds to the position. A failed send
stops the worker hard, and outputs carry deterministic ids, so a crash or a rebalance stores
nothing twice and loses nothing. Agent concurrency stays 1 (a known Faust bug can commit past
an in-flight event with more).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from faust.types import TP

from pipeline.config import Settings
from pipeline.events import DeadLetter, make_id
from pipeline.processors.base import Result
from pipeline.state_store import decode_state, encode_state
from pipeline.stream import records
from pipeline.stream.positions import InputPartition, InputPositions, Verdict
from pipeline.stream.records import Tick
from pipeline.stream.reference import ReferenceFeed
from pipeline.stream.topics import Topics, committed_offsets
from pipeline.topology import PipelineState, Topology

log = logging.getLogger(__name__)

# Values are bytes (raw serializer): a device's partition (2 bytes) and its encoded state
# (`pipeline.state_store`, ~1 KB a device where a dict of its `to_dict()` held ~4.5 KB); an
# input partition's tick barrier and positions as JSON. v2: the values were JSON dicts before.
STATE_TABLE = "device-state-v2"


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
        # input records skipped (already in the table), rewinds, records lost to retention
        self.delivery: Counter[str] = Counter()
        self.positions = InputPositions()
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
        self.states = self.app.Table(
            STATE_TABLE, partitions=kafka.partitions, key_type=bytes, value_type=bytes
        )
        self.app.agent(self.input, name="topology", concurrency=1)(self._agent)
        self.app.task(self._start_reference)
        self.app.on_before_shutdown.connect(self._stop_reference)
        if kafka.tick_interval_ms > 0:
            self.app.timer(kafka.tick_interval_ms / 1000.0)(self._send_ticks)
        self.app.timer(5.0)(self._report)
        self._reported = 0
        # device key -> `Topology.next_tick_ms` of its state, for the ticks to skip devices with
        # no timer due. In memory, forgotten at every rebalance (another worker may have
        # changed a state meanwhile): a key without an entry is simply ticked once.
        self.due: dict[bytes, int] = {}
        self.committing: _Round | None = None  # whose outputs' acks are still awaited
        self.app.on_partitions_revoked.connect(self._on_rebalance)
        self.app.on_partitions_assigned.connect(self._on_rebalance)
        self.watchdog = StallWatchdog(self)
        if kafka.stall_timeout_s > 0:
            self.app.timer(max(1.0, kafka.stall_timeout_s / 4))(self.watchdog.check)

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
        await self.wait_committed()
        log.info("stopping after %d records; delivery %s", self.processed, dict(self.delivery))
        await self.watchdog.stop()
        await self.feed.stop()
        if self.producer is not None:
            await self.producer.stop()

    # -- timers ---------------------------------------------------------------------------

    async def _on_rebalance(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        # The round in flight writes its states before the partitions move (Faust flushed its
        # producer already; flush again for the changelog records this wrote).
        if self.committing is not None:
            await self.wait_committed()
            await self.app.producer.flush()
        self.due.clear()
        self.positions.forget()

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
            log.info("processed %d records; owns partitions %s; delivery %s", self.processed,
                     self.owned_partitions(), dict(self.delivery))  # fmt: skip

    def table_position(self, tp: InputPartition) -> int | None:
        """The next offset of input partition `tp` whose effects are not in the table (None:
        none of its records was processed yet)."""
        record = self.states.data.get(positions_key(tp[1]))
        return json.loads(record)["next"].get(tp[0]) if record else None

    # -- the agent ------------------------------------------------------------------------

    async def _agent(self, stream: Any) -> Any:
        await self.reference_ready.wait()  # never process a batch without customers and fences
        kafka = self.settings.kafka
        async for events in stream.take_events(
            max(1, kafka.worker_batch_records), kafka.worker_batch_ms / 1000.0
        ):
            round_ = _Round(self, previous=self.committing)
            now = time.monotonic()
            owned = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}
            for event in events:
                message = event.message
                tp = (message.topic, message.partition)
                if tp not in owned:
                    # fetched before a rebalance took the partition away: its new owner's
                    # table position decides whether it still needs processing
                    self.delivery["not_owned"] += 1
                    continue
                verdict = self.positions.admit(tp, message.offset, round_.position(tp), now)
                if verdict is Verdict.REWIND:
                    verdict = await self._rewind(round_, tp, message.offset, now)
                if verdict is not Verdict.AWAIT_REWIND:
                    self.watchdog.processed(tp, now)
                if verdict is not Verdict.PROCESS:
                    self.delivery[verdict.value] += 1
                    continue
                round_.advance(tp, message.offset)
                try:
                    item = records.decode_input(event.value)
                except Exception as exc:  # a bad record must not stop the partition
                    log.error("undecodable record at %s[%s]@%s: %s", message.topic,
                              message.partition, message.offset, exc)  # fmt: skip
                    continue
                partition = message.partition
                try:
                    if isinstance(item, Tick):
                        await self._barrier(round_, item, partition, message.topic)
                    else:
                        await self._process(round_, item, partition, event.key)
                except Exception as exc:
                    # A bug must not stall the partition (Faust would never commit past an
                    # unacked event): the record goes to the dead letters with the reason,
                    # the device's state stays as it was before it.
                    log.exception("topology failed at %s[%s]@%s", message.topic, partition,
                                  message.offset)  # fmt: skip
                    await round_.emit(_failed(event, item, exc))
            await self.wait_committed()  # the previous round's states are in the table now
            round_.previous = None
            # The next round is processed while this one's outputs are acknowledged; its
            # events are acked at once (yield), which is safe because the table positions, not
            # the group's offsets, say what is processed.
            round_.committed = asyncio.ensure_future(round_.commit())
            self.committing = round_
            self.processed += len(events)
            yield None

    async def wait_committed(self) -> None:
        """Until the round in flight has its states and positions in the table."""
        if self.committing is not None and self.committing.committed is not None:
            await self.committing.committed
        self.committing = None

    async def _rewind(self, round_: _Round, tp: InputPartition, offset: int, now: float) -> Verdict:
        """Records of `tp` from its table position up to `offset` never reached the table:
        seek the consumer back to the position (or, where retention already deleted some of
        them, accept that loss and go on from the oldest record the broker still has)."""
        position = round_.position(tp)
        assert position is not None  # a rewind needs a position to go back to
        partition = TP(*tp)
        earliest = (await self.app.consumer.earliest_offsets(partition)).get(partition, 0)
        if earliest > position:
            log.critical("%s[%d]: records %d..%d were deleted by retention before any worker "
                         "processed them", tp[0], tp[1], position, earliest - 1)  # fmt: skip
            self.delivery["expired_unprocessed"] += earliest - position
            round_.advance(tp, earliest - 1)
            position = earliest
            if offset == position:
                self.positions.forget_rewind(tp)
                return Verdict.PROCESS
        if self.positions.rewind_started(tp, position, now):
            log.warning("%s[%d]: records %d..%d never reached the state table (the group's "
                        "committed offset ran past them): rewinding", tp[0], tp[1], position,
                        offset - 1)  # fmt: skip
            self.delivery["rewinds"] += 1
        else:
            self.delivery["rewind_retries"] += 1
        await self.app.consumer.seek_wait({partition: position})
        return Verdict.AWAIT_REWIND

    async def _process(self, round_: _Round, batch: Any, partition: int, key: bytes) -> None:
        stored = round_.get(key)
        state = _device_state(stored) if stored else self.topology.initial_state()
        ctx = self.topology.context(
            self.feed.reference, batch.org_id, batch.device_id, batch.received_ms
        )
        result = self.topology.process(state, batch, ctx)
        self.counters.update(result.counters)
        await round_.emit(result)
        self.due[key] = self.topology.next_tick_ms(state)
        round_.put(key, device_value(partition, encode_state(state)), partition)

    async def _barrier(self, round_: _Round, tick: Tick, partition: int, topic: str) -> None:
        """Run the timers of `partition` up to the newest tick read from both input topics."""
        key = barrier_key(partition)
        stored = round_.get(key)
        seen = json.loads(stored) if stored else {"done": 0}
        seen[topic] = max(seen.get(topic, 0), tick.now_ms)
        if tick.final:
            seen["final"] = tick.now_ms
        ready = min(seen.get(t, 0) for t in self.topics.inputs)
        if ready > seen["done"]:
            seen["done"] = ready
            await self._tick(round_, Tick(ready, seen.get("final") == ready), partition)
        round_.put(key, json.dumps(seen).encode(), partition)
        if self.settings.kafka.tick_acks:
            # Also after a restart that finds the tick already done: the driver waits on it.
            round_.tick_acks.append((partition, seen["done"]))

    async def _tick(self, round_: _Round, tick: Tick, partition: int) -> None:
        for key in round_.keys_of(partition):
            if not tick.final and self.due.get(key, 0) > tick.now_ms:
                continue  # none of the device's timers is due (`Topology.next_tick_ms`)
            stored = round_.get(key)
            org_id, _, device_id = key.decode().partition("/")
            state = _device_state(stored)
            ctx = self.topology.context(self.feed.reference, org_id, device_id, tick.now_ms)
            result = self.topology.tick(state, ctx, final=tick.final)
            await round_.emit(result)
            fresh = device_value(partition, encode_state(state))
            self.due[key] = self.topology.next_tick_ms(state)
            if fresh != stored:  # write the changelog only when a timer changed state
                round_.put(key, fresh, partition)


class StallWatchdog:
    """A partition with records waiting and no progress. Faust can leave an assigned partition
    unfetched after a rebalance (faust-streaming #629: no error, the worker just never reads
    it, and no other worker may), and a group offset committed past unprocessed records leaves
    them behind the fetch position with nothing after them to reveal the hole
    (`pipeline.stream.positions` finds a hole when a later record arrives). Every few seconds
    this compares each owned input partition's end offset with its position in the table (or,
    before the first record, the group's committed offset). A partition that has records
    waiting and no progress for `kafka.stall_timeout_s` is sought back to its table position
    and resumed (flow control and partition pause state); if it is still stuck after another
    timeout the worker exits with code 75 so its supervisor restarts it and the group
    reassigns the partitions."""

    EXIT_CODE = 75

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.progress: dict[InputPartition, float] = {}  # -> monotonic time of progress
        self.resumed: dict[InputPartition, float] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.admin: AIOKafkaAdminClient | None = None

    def processed(self, tp: InputPartition, now: float) -> None:
        self.progress[tp] = now

    async def check(self) -> None:
        worker = self.worker
        inputs = set(worker.topics.inputs)
        owned = [tp for tp in worker.app.consumer.assignment() if tp.topic in inputs]
        if not owned or not worker.reference_ready.is_set():
            return
        now = time.monotonic()
        keys = {(tp.topic, tp.partition) for tp in owned}
        for key in list(self.progress):  # revoked partitions start afresh when they return
            if key not in keys:
                self.progress.pop(key)
                self.resumed.pop(key, None)
        for key in keys:
            self.progress.setdefault(key, now)
        try:
            waiting = await self._waiting(keys)
        except Exception as exc:  # the broker may be briefly away: judge next time
            log.warning("stall check skipped: %s", exc)
            return
        timeout = worker.settings.kafka.stall_timeout_s
        stalled = {k: v for k, v in waiting.items() if now - self.progress[k] > timeout}
        if not stalled:
            return
        fresh = {k: v for k, v in stalled.items() if k not in self.resumed}
        if fresh:
            log.warning("partitions %s have records waiting beyond their positions and no "
                        "progress for %.0f s: seeking them there and resuming them", fresh,
                        timeout)  # fmt: skip
            await worker.app.consumer.seek_wait({TP(*k): v for k, v in fresh.items()})
            worker.app.consumer.resume_partitions([TP(*k) for k in fresh])
            worker.app.flow_control.resume()
            worker.app.consumer.resume_flow()
            for key in fresh:
                self.resumed[key] = now
                self.progress[key] = now
            return
        log.critical("partitions %s still stalled after a resume: exiting (code %d) so the "
                     "group reassigns them", list(stalled), self.EXIT_CODE)  # fmt: skip
        os._exit(self.EXIT_CODE)

    async def _waiting(self, keys: set[InputPartition]) -> dict[InputPartition, int]:
        """Owned partitions with records beyond their positions, and those positions."""
        bootstrap = self.worker.settings.kafka.bootstrap
        if self.consumer is None:
            self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
            await self.consumer.start()
        tps = [TopicPartition(t, p) for t, p in keys]
        ends = await self.consumer.end_offsets(tps)
        positions = {key: self.worker.table_position(key) for key in keys}
        unknown = [tp for tp in tps if positions[(tp.topic, tp.partition)] is None]
        committed: dict[TopicPartition, int] = {}
        if unknown:
            if self.admin is None:
                self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
                await self.admin.start()
            committed = await committed_offsets(self.admin, self.worker.app.conf.id, unknown)
        waiting = {}
        for tp in tps:
            key = (tp.topic, tp.partition)
            position = positions[key]
            done = committed.get(tp, 0) if position is None else position
            if ends[tp] > done:
                waiting[key] = done
        return waiting

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        if self.admin is not None:
            await self.admin.close()


def device_value(partition: int, encoded: bytes) -> bytes:
    """A device's table value: its partition (the timers scan a partition's devices) and its
    encoded state."""
    return struct.pack(">H", partition) + encoded


def _device_state(value: bytes) -> PipelineState:
    return decode_state(value[2:])


def barrier_key(partition: int) -> bytes:
    """The table key of an input partition's tick barrier (keys of an input partition's own
    records start with a zero byte, which no device key does)."""
    return b"\x00tick/%d" % partition


def positions_key(partition: int) -> bytes:
    """The table key of an input partition's positions, one per input topic: written only
    when a round commits, so a round in flight never holds a stale copy of it."""
    return b"\x00next/%d" % partition


def _failed(event: Any, item: Any, exc: Exception) -> Result:
    where = f"{event.message.topic}[{event.message.partition}]@{event.message.offset}"
    letter = DeadLetter(
        id=make_id("worker", where),
        org_id=getattr(item, "org_id", ""),
        device_id=getattr(item, "device_id", ""),
        received_ms=getattr(item, "received_ms", 0) or time.time_ns() // 1_000_000,
        source="worker",
        reason=f"topology failed at {where}: {type(exc).__name__}: {exc}",
        payload=event.value or b"",
    )
    out = Result()
    out.dead_letters.append(letter)
    return out


class _Round:
    """One round of the agent: states read through a local overlay, outputs in flight, and
    the writes that wait for their acknowledgements."""

    def __init__(self, worker: Worker, previous: _Round | None = None) -> None:
        self.worker = worker
        self.table = worker.states
        # The round before, whose acknowledgements may still be in flight (its states not yet
        # in the table): this round reads through it. Only one: a round's commit starts after
        # the previous round's commit ended.
        self.previous = previous
        self.committed: asyncio.Future[None] | None = None  # `commit()` under way or done
        self.changed: dict[bytes, tuple[Any, int]] = {}  # key -> (new value, partition)
        self.positions: dict[InputPartition, int] = {}  # input partition -> next offset
        self.in_flight: list[asyncio.Future[Any]] = []
        self.tick_acks: list[tuple[int, int]] = []

    def get(self, key: bytes) -> Any:
        if key in self.changed:
            return self.changed[key][0]
        if self.previous is not None and key in self.previous.changed:
            return self.previous.changed[key][0]
        return self.table.data.get(key)

    def put(self, key: bytes, value: Any, partition: int) -> None:
        self.changed[key] = (value, partition)

    def position(self, tp: InputPartition) -> int | None:
        """The next offset of input partition `tp` whose effects are not in the table."""
        if tp in self.positions:
            return self.positions[tp]
        if self.previous is not None and tp in self.previous.positions:
            return self.previous.positions[tp]
        return self.worker.table_position(tp)

    def advance(self, tp: InputPartition, offset: int) -> None:
        """The record at `offset` of `tp` is handled by this round."""
        self.positions[tp] = offset + 1

    def keys_of(self, partition: int) -> list[bytes]:
        """Device keys of `partition`, including devices first seen in this round."""
        prefix = struct.pack(">H", partition)
        keys = {k for k, v in self.table.data.items() if v.startswith(prefix) and k[:1] != b"\0"}
        for round_ in (self.previous, self):
            if round_ is not None:
                keys.update(
                    k for k, (v, _) in round_.changed.items()
                    if v.startswith(prefix) and k[:1] != b"\0"
                )  # fmt: skip
        return sorted(keys)

    async def emit(self, result: Any) -> None:
        producer = self.worker.producer
        assert producer is not None  # started before the agent reads anything
        for short, key, value in records.encode_outputs(result):
            self.in_flight.append(
                await producer.send(self.worker.output_names[short], value, key=key)
            )

    async def commit(self) -> None:
        """Waits until the broker has every output of the round; only then are the states
        written: a state in the changelog never runs ahead of the outputs it produced, so after
        a crash a replayed event either finds the old state (and emits the same outputs again,
        same ids) or finds its outputs already delivered."""
        for fut in self.in_flight:
            try:
                await fut
            except Exception as exc:
                _die(exc)
        for key, (value, partition) in self.changed.items():
            self.table.data[key] = value
            self.table.send_changelog(partition, key, value)
        # Positions last, on the states' own changelog partitions: a position in the changelog
        # implies the states of the records before it are there too.
        by_partition: dict[int, dict[str, int]] = {}
        for (topic, partition), offset in self.positions.items():
            by_partition.setdefault(partition, {})[topic] = offset
        for partition, offsets in by_partition.items():
            key = positions_key(partition)
            written = self.table.data.get(key)
            record = json.dumps(
                {"next": {**(json.loads(written)["next"] if written else {}), **offsets}}
            ).encode()
            self.table.data[key] = record
            self.table.send_changelog(partition, key, record)
        producer = self.worker.producer
        if self.tick_acks and producer is not None:
            sent = [
                await producer.send(
                    self.worker.topics.tick_acks, records.encode_tick(done), partition=partition
                )
                for partition, done in self.tick_acks
            ]
            for fut in sent:
                await fut


def run_worker(settings: Settings, *, loglevel: str = "warn", web_port: int = 0) -> None:
    """Blocks; SIGTERM/SIGINT stop it gracefully (in-flight events finish, offsets commit)."""
    worker = Worker(settings, web_port=web_port)
    faust.Worker(worker.app, loglevel=loglevel).execute_from_commandline()
