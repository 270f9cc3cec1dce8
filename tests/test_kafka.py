"""The Kafka path against a real Apache Kafka broker (started by the project, see
pipeline/broker.py): gateway -> Kafka -> Faust workers (subprocesses) -> sink -> chDB.

Under CI=true a broker that cannot run fails these tests; on a developer machine without Java
or Maven they are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from rich.console import Console

from pipeline.broker import BrokerError, LocalKafka, java_available
from pipeline.clock import ManualClock
from pipeline.config import Settings, StoreSettings
from pipeline.service import EmbeddedService
from pipeline.sim import build_city, default_sim_day, simulate
from pipeline.simrun import post_fleet, prepare_kafka_fleet
from pipeline.store.client import Store
from pipeline.store.reference import save_customers, save_fences
from pipeline.stream import records
from pipeline.stream.service import KafkaGateway
from pipeline.stream.ticks import TickDriver
from pipeline.stream.topics import Topics, delete_topics, wait_drained
from pipeline.stream.worker import StallWatchdog

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"
NO_BROKER_TOOLS = java_available()
QUIET = Console(file=io.StringIO())
PROFILES = {
    "rep-001": "honest",
    "rep-002": "phone_off",
    "rep-003": "spoofer_mock",
    "rep-004": "forbidden",
    "rep-005": "no_network",  # a backlog that resumes contact: timers must see it in order
}
FACTS = {
    "visits": "id, customer_id, toUnixTimestamp64Milli(arrive), toUnixTimestamp64Milli(leave), "
    "verified",
    "fence_events": "id, fence_id, transition, toUnixTimestamp64Milli(ts)",
    "alerts": "id, type, toUnixTimestamp64Milli(ts), evidence['reason']",
}

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        NO_BROKER_TOOLS is not None and not IN_CI,
        reason=f"the Kafka tests need Java 17 and Maven to run the broker: {NO_BROKER_TOOLS}",
    ),
]


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalKafka]:
    """The project's broker: reused if `make kafka-up` started it, else started here."""
    if NO_BROKER_TOOLS is not None:
        pytest.fail(f"CI=true but the Kafka broker cannot run here: {NO_BROKER_TOOLS}")
    kafka = LocalKafka()
    running = kafka.answering()  # reused whoever started it (make kafka-up, another checkout)
    if not running:
        try:
            kafka.start()
        except BrokerError as exc:
            pytest.fail(f"the Kafka broker did not start: {exc}")
    yield kafka
    if not running:
        kafka.stop()


@cache
def fleet_day() -> Any:
    city = build_city()
    day = default_sim_day(dt.date.today())  # recent: raw tables have a retention TTL
    return city, simulate(city, reps=len(PROFILES), day=day, profiles=PROFILES)


def fact_rows(store: Store, database: str) -> dict[str, set[tuple[Any, ...]]]:
    return {
        table: set(store.query(f"SELECT {cols} FROM {database}.{table} FINAL").rows)
        for table, cols in FACTS.items()
    }


@pytest.fixture(scope="module")
def embedded_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[Any, ...]]]:
    """What the embedded runner stores for the fleet day: the reference for every Kafka run."""
    settings = Settings()
    settings.store = StoreSettings(data_dir=str(tmp_path_factory.mktemp("embedded")))
    settings.gateway.port = 0
    city, sim = fleet_day()

    async def run() -> dict[str, set[tuple[Any, ...]]]:
        clock = ManualClock(sim.uploads[0].send_ms)
        service = EmbeddedService(settings, clock=clock, auto_tick=False, restore_state=False)
        await service.start()
        assert service.store is not None and service.pipeline is not None
        pipeline = service.pipeline
        await asyncio.to_thread(save_customers, service.store, city.customers)
        await asyncio.to_thread(save_fences, service.store, city.fence_features, city.org_id)
        await service.set_reference([], [], city.org_id)
        tokens = {}
        for d in sim.devices:
            tokens[d.device_id] = await service.add_device(
                d.org_id, d.device_id, d.name, d.schedule
            )

        await post_fleet(service.url, clock, sim.uploads, tokens, pipeline.step, QUIET, False)
        facts = fact_rows(service.store, settings.store.database)
        await service.stop()
        return facts

    facts = asyncio.run(run())
    assert all(facts.values()), {k: len(v) for k, v in facts.items()}
    return facts


class Rig:
    """One isolated Kafka deployment (own topic prefix, groups and data dirs)."""

    def __init__(self, broker: LocalKafka, tmp: Path) -> None:
        self.tmp = tmp
        self.settings = Settings()
        kafka = self.settings.kafka
        kafka.bootstrap = broker.bootstrap
        kafka.topic_prefix = f"t{uuid.uuid4().hex[:8]}."
        kafka.tick_interval_ms = 0  # the test drives the clock: it writes the ticks ...
        kafka.tick_acks = True  # ... and waits for each to be processed
        kafka.session_timeout_s = 6.0
        self.settings.store = StoreSettings(data_dir=str(tmp / "sink"))
        self.settings.gateway.port = 0
        self.topics = Topics(kafka.topic_prefix)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.sinks: list[subprocess.Popen[bytes]] = []
        self.tokens: dict[str, str] = {}
        self.numbers: dict[int, int] = {}  # pid -> worker number (its log and scratch dir)
        self.restarts = 0

    def env(self) -> dict[str, str]:
        k = self.settings.kafka
        return {
            **os.environ,
            "FIELDTRACK_KAFKA__BOOTSTRAP": k.bootstrap,
            "FIELDTRACK_KAFKA__TOPIC_PREFIX": k.topic_prefix,
            "FIELDTRACK_KAFKA__TICK_INTERVAL_MS": "0",
            "FIELDTRACK_KAFKA__TICK_ACKS": "true",
            "FIELDTRACK_KAFKA__SESSION_TIMEOUT_S": str(k.session_timeout_s),
            "FIELDTRACK_KAFKA__STALL_TIMEOUT_S": "15",
            "FIELDTRACK_DATA_DIR": self.settings.store.data_dir,
        }

    async def prepare(self) -> None:
        city, sim = fleet_day()
        self.tokens = await prepare_kafka_fleet(
            self.settings.kafka, city, sim, city.customers, city.fence_features
        )

    def start(self, command: str, n: int) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{command}-{n}.log").open("ab")
        env = {**self.env()}
        if command == "worker":  # each worker its own scratch dir
            env["FIELDTRACK_DATA_DIR"] = str(self.tmp / f"worker-{n}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "-v", command],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        (self.workers if command == "worker" else self.sinks).append(proc)
        self.numbers[proc.pid] = n
        return proc

    async def supervise(self) -> None:
        """What systemd or Kubernetes does: restart a worker that its stall watchdog ended."""
        while True:
            for i, proc in enumerate(self.workers):
                if proc.poll() == StallWatchdog.EXIT_CODE:
                    n = self.numbers[proc.pid]
                    self.restarts += 1
                    self.workers[i] = self.start("worker", n)
                    self.workers.pop()  # start() appended it; it takes the old one's place
            await asyncio.sleep(0.5)

    def log(self, command: str, n: int) -> str:
        return (self.tmp / f"{command}-{n}.log").read_text(errors="replace")

    async def wait_drained(self, timeout_s: float = 90.0) -> None:
        # the final tick was acknowledged: every worker is done; the sink must catch up
        await wait_drained(self.settings.kafka, timeout_s, workers=False)

    async def post_day(self, on_step: Callable[[int], Awaitable[None]] | None = None) -> None:
        """The fleet day through a Kafka gateway; `on_step(step number)` can stir things up."""
        _, sim = fleet_day()
        gateway = KafkaGateway(self.settings, clock=ManualClock(sim.uploads[0].send_ms))
        await gateway.start()
        ticks = TickDriver(self.settings.kafka)
        await ticks.start()
        supervisor = asyncio.create_task(self.supervise())
        steps = 0

        async def step_done(now_ms: int, *, final: bool = False) -> None:
            nonlocal steps
            steps += 1
            await ticks.tick(now_ms, final=final)
            if on_step is not None:
                await on_step(steps)

        try:
            stats = await post_fleet(gateway.url, gateway.clock, sim.uploads, self.tokens,
                                     step_done, QUIET, False)  # fmt: skip
            assert stats.http_errors == 0
        finally:
            supervisor.cancel()
            await ticks.stop()
            await gateway.stop()

    def run_day(self, on_step: Callable[[int], Awaitable[None]] | None = None) -> None:
        """A worker and a sink, the fleet day posted through them, until the sink drained."""

        async def run() -> None:
            await self.prepare()
            self.start("worker", 1)
            self.start("sink", 1)
            await self.post_day(on_step)
            await self.wait_drained()

        try:
            asyncio.run(run())
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        for proc in [*self.workers, *self.sinks]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, *self.sinks]:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        with contextlib.suppress(Exception):  # leftover topics only slow the broker's restarts
            asyncio.run(delete_topics(self.settings.kafka))

    def stored_facts(self) -> dict[str, set[tuple[Any, ...]]]:
        store = Store(self.settings.store)
        try:
            return fact_rows(store, self.settings.store.database)
        finally:
            store.close()

    def exactly_once(self) -> dict[str, tuple[int, int]]:
        store = Store(self.settings.store)
        try:
            db = self.settings.store.database
            return {
                t: store.query(f"SELECT count(), uniqExact(id) FROM {db}.{t} FINAL").rows[0]
                for t in FACTS
            }
        finally:
            store.close()


def assert_same_facts(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for table in FACTS:
        missing = expected[table] - got[table]
        extra = got[table] - expected[table]
        assert not missing and not extra, (table, sorted(missing)[:3], sorted(extra)[:3])


def test_kafka_path_equals_embedded_fact_for_fact(
    broker: LocalKafka, tmp_path: Path, embedded_facts: dict[str, Any]
) -> None:
    rig = Rig(broker, tmp_path)

    rig.run_day()
    assert_same_facts(rig.stored_facts(), embedded_facts)
    assert "processed" in rig.log("worker", 1)
    city, sim = fleet_day()  # the reference topic lands in the store too, for analysts' joins
    store = Store(rig.settings.store)
    try:
        db = rig.settings.store.database
        stored = {t: store.query(f"SELECT count() FROM {db}.{t} FINAL").rows[0][0]
                  for t in ("customers", "fences", "devices")}  # fmt: skip
    finally:
        store.close()
    assert stored == {"customers": len(city.customers), "fences": len(city.fence_features),
                      "devices": len(sim.devices)}  # fmt: skip


def test_kill_9_worker_then_sink_mid_stream_stores_every_fact_once(
    broker: LocalKafka, tmp_path: Path, embedded_facts: dict[str, Any]
) -> None:
    rig = Rig(broker, tmp_path)
    total_steps = len({u.send_ms // 60_000 for u in fleet_day()[1].uploads})

    async def stir(step: int) -> None:
        if step == total_steps // 3:
            rig.workers[0].kill()  # SIGKILL: no flush, no commit, no goodbye
            rig.workers[0].wait()
            rig.start("worker", 2)
        elif step == 2 * total_steps // 3:
            rig.sinks[0].kill()
            rig.sinks[0].wait()
            rig.start("sink", 2)

    rig.run_day(stir)
    assert rig.workers[0].returncode == -signal.SIGKILL
    assert rig.sinks[0].returncode == -signal.SIGKILL
    for table, (rows, ids) in rig.exactly_once().items():
        assert rows == ids == len(embedded_facts[table]), (table, rows, ids)
    assert_same_facts(rig.stored_facts(), embedded_facts)


def test_workers_scale_out_and_in(
    broker: LocalKafka, tmp_path: Path, embedded_facts: dict[str, Any]
) -> None:
    rig = Rig(broker, tmp_path)
    total_steps = len({u.send_ms // 60_000 for u in fleet_day()[1].uploads})

    async def stir(step: int) -> None:
        if step == total_steps // 3:
            rig.start("worker", 3)  # a third worker joins
        elif step == 2 * total_steps // 3:
            rig.workers[0].send_signal(signal.SIGTERM)  # and one leaves, cleanly
            await asyncio.to_thread(rig.workers[0].wait, 60)

    async def run() -> None:
        await rig.prepare()
        rig.start("worker", 1)
        rig.start("worker", 2)
        rig.start("sink", 1)
        await asyncio.sleep(8)  # let both join before the load starts
        await rig.post_day(stir)
        await rig.wait_drained()

    try:
        asyncio.run(run())
    finally:
        rig.stop_all()
    for n in (1, 2, 3):
        assert "processed" in rig.log("worker", n), f"worker {n} processed nothing"
    assert_same_facts(rig.stored_facts(), embedded_facts)


async def _end_offsets(rig: Rig, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=rig.settings.kafka.bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(rig.settings.kafka.partitions)]
        return await consumer.end_offsets(parts)
    finally:
        await consumer.stop()


async def _commit_for_group(rig: Rig, offsets: dict[TopicPartition, int]) -> None:
    """Sets the worker group's committed offsets (the group must be empty), as Faust does when
    it commits past records no agent processed."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=rig.settings.kafka.bootstrap,
        group_id=f"{rig.settings.kafka.topic_prefix}worker",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def test_worker_processes_what_the_group_committed_past_and_skips_what_it_replays(
    broker: LocalKafka, tmp_path: Path, embedded_facts: dict[str, Any]
) -> None:
    """The group's committed offset is not what decides. With the worker down, each pings
    partition's offset is committed one record past what was processed (a record nobody saw,
    as Faust does around rebalances) and the device states' are set back to the start. The
    next worker must process the skipped records (rewinding to its table's positions when a
    later record shows the hole, or from the stall watchdog where none follows) and skip the
    replayed ones: the same facts as embedded, each once."""
    rig = Rig(broker, tmp_path)
    total_steps = len({u.send_ms // 60_000 for u in fleet_day()[1].uploads})
    moved: list[dict[TopicPartition, int]] = []

    async def skip_one_record_per_partition(processed: dict[TopicPartition, int]) -> None:
        # the next step's uploads and ticks reach the log; then the driver waits on the ticks
        while any(end <= processed[tp] for tp, end in (await _ends(rig.topics.pings)).items()):
            await asyncio.sleep(0.5)
        offsets = {tp: end + 1 for tp, end in processed.items()}
        offsets.update(dict.fromkeys(await _ends(rig.topics.device_states), 0))
        await _commit_for_group(rig, offsets)
        moved.append(offsets)
        rig.start("worker", 2)

    async def _ends(topic: str) -> dict[TopicPartition, int]:
        return await _end_offsets(rig, [topic])

    async def stir(step: int) -> None:
        if step == total_steps // 2:
            rig.workers[0].send_signal(signal.SIGTERM)
            await asyncio.to_thread(rig.workers[0].wait, 60)
            processed = await _ends(rig.topics.pings)
            asyncio.get_running_loop().create_task(skip_one_record_per_partition(processed))

    rig.run_day(stir)
    assert moved, "the offsets were never moved"
    log = rig.log("worker", 2)
    assert "rewinding" in log and "seeking them there" in log, log[-3000:]
    assert "'skip_done'" in log, log[-3000:]
    for table, (rows, ids) in rig.exactly_once().items():
        assert rows == ids == len(embedded_facts[table]), (table, rows, ids)
    assert_same_facts(rig.stored_facts(), embedded_facts)


def test_broker_down_gateway_answers_503_and_loses_nothing_it_acknowledged(
    broker: LocalKafka, tmp_path: Path
) -> None:
    rig = Rig(broker, tmp_path)
    rig.settings.kafka.producer_timeout_s = 2.0
    rig.settings.gateway.durable_timeout_s = 4.0
    now = int(time.time() * 1000)

    def ping(seq: int) -> dict[str, Any]:
        return {"seq": seq, "ts_ms": now - 600_000 + seq * 1000, "lat": 52.52, "lon": 13.405,
                "accuracy_m": 9.0}  # fmt: skip

    async def run() -> tuple[list[int], list[int]]:
        await rig.prepare()
        gateway = KafkaGateway(rig.settings)
        await gateway.start()
        token = await gateway.add_device("demo", "rep-x")
        acked: list[int] = []
        statuses: list[int] = []
        async with aiohttp.ClientSession(gateway.url) as http:

            async def post(seq: int) -> None:
                auth = {"Authorization": f"Bearer {token}"}
                async with http.post("/v1/pings", json=[ping(seq)], headers=auth) as r:
                    statuses.append(r.status)
                    if r.status == 202:
                        acked.append(seq)
                    else:
                        assert r.status == 503 and r.headers["Retry-After"]

            for seq in range(1, 6):
                await post(seq)
            await asyncio.to_thread(broker.stop)
            for seq in range(6, 9):
                await post(seq)
            await asyncio.to_thread(broker.start)
            for seq in range(9, 14):
                for _ in range(30):  # the phone retries until the gateway takes it
                    await post(seq)
                    if acked and acked[-1] == seq:
                        break
                    await asyncio.sleep(1)
        await gateway.stop()
        return acked, statuses

    acked, statuses = asyncio.run(run())
    assert 503 in statuses
    assert set(range(1, 6)) <= set(acked) and set(range(9, 14)) <= set(acked)

    async def read_back() -> set[int]:
        consumer = AIOKafkaConsumer(
            rig.topics.pings, bootstrap_servers=rig.settings.kafka.bootstrap,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        seen: set[int] = set()
        try:
            deadline = time.monotonic() + 30
            while not set(acked) <= seen and time.monotonic() < deadline:
                for messages in (await consumer.getmany(timeout_ms=1000)).values():
                    for msg in messages:
                        item = records.decode_input(msg.value)
                        seen.update(p.seq for p in getattr(item, "pings", []))
        finally:
            await consumer.stop()
        return seen

    assert set(acked) <= asyncio.run(read_back())  # every 202 is in the log
    rig.stop_all()


def test_alerts_tail_prints_what_ops_need() -> None:
    from pipeline.stream.alerts import format_alert

    line = format_alert(
        {
            "ts_ms": 1_764_000_000_000,
            "severity": "critical",
            "org_id": "acme",
            "device_id": "rep-7",
            "type": "forbidden_zone",
            "message": "entered Casino",
            "evidence": {"fence_id": "casino", "accuracy_m": "8"},
        }
    )
    assert "acme/rep-7" in line and "forbidden_zone" in line and "fence_id=casino" in line
    assert "2025-11-24 16:00:00" in line
