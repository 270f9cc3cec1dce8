"""Benchmark 5, Kafka end to end on the real local broker (`pipeline.broker.LocalKafka`,
reused when already running, else started here and stopped afterwards).

Every deployment below gets a fresh topic prefix (its own topics and consumer groups) and runs
its processes as children: Faust workers (`fieldtrack worker`), the sink (`fieldtrack sink`,
chDB in a temporary directory), the gateway (`fieldtrack gateway`) and the load generator
(`pipeline.bench.loadgen`).

1. Capacity, 1 and 2 processes of each:
   - pass-through (the baseline): a bare aiokafka consumer -> decode (the project's Avro codec,
     `records.decode_input`) -> encode -> produce to the track-points topic, committing after
     the acks: the best any Python worker could do over these topics;
   - worker: the Faust worker with the whole topology (its own 1 s tick timer on).
   The processes start and join their group, a warm-up batch per device goes through, then a
   backlog of `backlog_batches` PingBatch records (50 pings each, the gateway's encoding of
   the load generator's bodies) is produced at once; throughput = backlog pings / (last output
   record's broker timestamp - start of the backlog). Consumer lag (end offset - committed, on
   the pings topic) is sampled every second meanwhile.
2. Sustained, 1 and 2 workers: gateway -> Kafka -> workers -> sink -> chDB for `seconds`, twice.
   First closed loop (the load generator posts as fast as the gateway answers): the
   deployment's capacity = accepted pings / (the newest output record's broker timestamp,
   once every accepted ping is out as a track point, - the first request). Then paced at
   `load_fraction` of that capacity: the latency target's load (the workers share the 2 cores
   with everything else, so half of what a worker does alone overloads the deployment).
   Probe devices each post once, at known times, a batch whose last ping is mock: the spoof
   rule raises a `spoof_mock_flag` alert. Ping->alert latency = the alert record's broker
   timestamp on the alerts topic (CreateTime, stamped by the worker's producer when it
   sends) - the load generator's send time of the probe's request (same wall clock), so it
   includes the HTTP request and the gateway's produce. Lag of the workers (pings topic) and of
   the sink (all topics) is sampled every second.

The machine has 2 cores and the broker, the gateway, the sink and the load generator need CPU
too: the tables show the CPU each process used, and the 2-worker figures say more about that
than about the workers. A cProfile of one worker draining a smaller backlog (a separate run:
profiling slows it) gives the top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.bench.common import BenchResult, Steps, Target, print_table
from pipeline.bench.loadgen import Fleet, device_ids
from pipeline.bench.procs import (
    Child,
    children,
    free_port,
    percentile,
    profile_rows,
    run_loadgen,
)

NAME = "kafka"
TITLE = "Kafka end to end: gateway -> Kafka -> workers -> sink -> chDB, on the local broker"
BATCH = 50


@dataclass(frozen=True, slots=True)
class Params:
    # x 50 pings, per capacity run: ~10 s of draining (2,000 drained in 4 s, too short for
    # two workers' fetches and commits to settle)
    backlog_batches: int = 5000
    devices: int = 1250  # keys of the backlog (4 batches each: clocks stay < 5 min ahead)
    workers: tuple[int, ...] = (1, 2)
    seconds: float = 30.0  # sustained runs
    load_fraction: float = 0.5
    probes: int = 40  # per sustained run
    # devices of the sustained runs: enough that closed loop (~16k pings/s) keeps their clocks
    # within the validator's 5 minutes ahead (50 s of pings per upload; 1,000 got 422s).
    # 5,000 cut closed-loop capacity by 20 % while every tick ran every device's timers
    # (before `Topology.next_tick_ms`); not measured since.
    fleet: int = 2000
    concurrency: int = 16
    profile_batches: int = 600  # 0: no profiled worker run
    drain_timeout_s: float = 240.0
    # After the workers' group first reports all members, before a sustained run's load: the
    # assignment's table recovery, first ticks and any rewinds (`pipeline.stream.positions`)
    # take a few seconds; the latency target is about a deployment in its steady state (seen:
    # probes sent in that window took 2 s, the rest 50-250 ms).
    settle_s: float = 5.0


SIZES = {
    "full": Params(),
    "quick": Params(  # ~50 s: make bench-quick takes about 1.5 min
        backlog_batches=200,
        devices=100,
        workers=(1,),
        seconds=4.0,
        probes=6,
        fleet=1500,
        profile_batches=0,
        drain_timeout_s=60.0,
        settle_s=2.0,
    ),
    "tiny": Params(
        backlog_batches=100,
        devices=50,
        workers=(1,),
        seconds=4.0,
        probes=4,
        fleet=100,
        profile_batches=0,
        drain_timeout_s=60.0,
        settle_s=0.0,
    ),
}


# -- the pass-through baseline (a child process) --------------------------------------------


async def _passthrough(args: argparse.Namespace) -> None:
    import signal

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from pipeline.stream import records
    from pipeline.stream.topics import Topics

    topics = Topics(args.prefix)
    consumer = AIOKafkaConsumer(
        topics.pings,
        bootstrap_servers=args.bootstrap,
        group_id=f"{args.prefix}passthrough",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True, linger_ms=1
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    await producer.start()
    out = topics.name("track-points")
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            pending = []
            for messages in batches.values():
                for msg in messages:
                    item = records.decode_input(msg.value)
                    if isinstance(item, records.Tick):
                        continue
                    # the same work a worker's codec does per batch: decode, encode, send
                    pending.append(
                        await producer.send(out, records.encode_pings(item), key=msg.key)
                    )
            for fut in pending:
                await fut
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="the pass-through baseline of the Kafka benchmark")
    p.add_argument("command", choices=("passthrough",))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True)
    asyncio.run(_passthrough(p.parse_args(argv)))


# -- the orchestration ---------------------------------------------------------------------


class Deployment:
    """One isolated deployment on the broker: own prefix, groups, data dirs and children."""

    def __init__(self, bootstrap: str, work: Path, procs: list[Child], tag: str) -> None:
        from pipeline.config import Settings, StoreSettings
        from pipeline.stream.topics import Topics

        self.tag = tag
        self.work = work / tag
        self.work.mkdir(parents=True)
        self.procs = procs
        self.settings = Settings()
        kafka = self.settings.kafka
        kafka.bootstrap = bootstrap
        kafka.topic_prefix = f"b{uuid.uuid4().hex[:8]}."
        # the default 10 s: with 6 s a starved 2-core machine saw rebalance storms
        kafka.session_timeout_s = 10.0
        self.settings.store = StoreSettings(data_dir=str(self.work / "sink"))
        self.topics = Topics(kafka.topic_prefix)
        self.children: list[Child] = []

    def env(self, data_dir: Path) -> dict[str, str]:
        k = self.settings.kafka
        return {
            **os.environ,
            "FIELDTRACK_KAFKA__BOOTSTRAP": k.bootstrap,
            "FIELDTRACK_KAFKA__TOPIC_PREFIX": k.topic_prefix,
            "FIELDTRACK_KAFKA__SESSION_TIMEOUT_S": str(k.session_timeout_s),
            "FIELDTRACK_DATA_DIR": str(data_dir),
        }

    def start(
        self,
        command: str,
        n: int,
        extra_env: dict[str, str] | None = None,
        profile: Path | None = None,
    ) -> Child:
        name = f"{command}-{n}"
        env = {**self.env(self.work / name), **(extra_env or {})}
        if command == "passthrough":
            args = [
                "-m",
                "pipeline.bench.kafka",
                "passthrough",
                "--bootstrap",
                self.settings.kafka.bootstrap,
                "--prefix",
                self.settings.kafka.topic_prefix,
            ]
        else:
            args = ["-m", "pipeline.cli", command]
            if profile is not None:
                args = ["-m", "cProfile", "-o", str(profile), "-m", "pipeline.cli", command]
            if command == "sink":
                env["FIELDTRACK_DATA_DIR"] = self.settings.store.data_dir
        child = Child(name, args, self.work / f"{name}.log", env)
        self.procs.append(child)
        self.children.append(child)
        return child

    async def prepare(self, tokens: dict[str, str]) -> None:
        from pipeline.devices import DeviceInfo, hash_token
        from pipeline.sim import build_city
        from pipeline.stream.reference import publish_reference
        from pipeline.stream.topics import create_topics

        await create_topics(self.settings.kafka)
        city = build_city()
        self.org_id = city.org_id
        devices = [(hash_token(t), DeviceInfo(city.org_id, d, d, None)) for d, t in tokens.items()]
        await publish_reference(
            self.settings.kafka,
            customers=list(city.customers),
            fences=[(city.org_id, f) for f in city.fence_features],
            devices=devices,
        )

    async def group_members(self, group: str) -> int:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import GroupCoordinatorNotAvailableError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap)
        await admin.start()
        try:
            try:
                described = await admin.describe_consumer_groups([group])
            except GroupCoordinatorNotAvailableError:
                return 0  # a fresh broker creates its offsets topic on the first group: soon
            groups = described[0].groups if hasattr(described[0], "groups") else []
            for g in groups:
                members = g[5] if isinstance(g, tuple) else getattr(g, "members", [])
                state = g[2] if isinstance(g, tuple) else ""
                if state == "Stable":
                    return len(members)
            return 0
        finally:
            await admin.close()

    async def lag(self, group: str, topics: list[str]) -> int:
        from pipeline.stream.topics import consumer_lag

        return sum((await consumer_lag(self.settings.kafka, group, topics)).values())

    async def stop(self) -> None:
        from pipeline.stream.topics import delete_topics

        for child in reversed(self.children):
            child.stop()
        with contextlib.suppress(Exception):  # a leftover topic only costs broker start time
            await delete_topics(self.settings.kafka)


class OutputWatch:
    """Reads an output topic from its start: record count and the newest broker timestamp;
    for the alerts topic, the first alert time of each device."""

    def __init__(self, bootstrap: str, topic: str, *, rows: bool = False) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        self.count = 0
        self.rows = 0  # rows the records carry (decoded: alerts, and rows=True)
        self.newest_ms = 0
        self.alerts: dict[str, tuple[int, str]] = {}  # device -> (broker ts ms, type)
        self.decode_alerts = topic.endswith("alerts")
        self.decode = self.decode_alerts or rows
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        from pipeline.stream.records import decode_for_store

        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for msg in messages:
                    self.count += 1
                    self.newest_ms = max(self.newest_ms, msg.timestamp)
                    if not self.decode:
                        continue
                    for _, rows in decode_for_store(msg.value):
                        self.rows += len(rows)
                        if self.decode_alerts:
                            for alert in rows:
                                self.alerts.setdefault(alert.device_id, (msg.timestamp, alert.type))

    async def wait_count(
        self, n: int, timeout_s: float, watch: list[Child], *, rows: bool = False
    ) -> bool:
        """Until `n` records (or rows) were read; False at the timeout."""
        deadline = time.monotonic() + timeout_s
        while (self.rows if rows else self.count) < n:
            for child in watch:
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()


def _encoded_backlog(
    fleet: Fleet, org_id: str, first: int, batches: int
) -> list[tuple[bytes, bytes]]:
    """(key, PingBatch) records as the gateway writes them, from the load generator's bodies:
    round robin over the devices, so each device's batches stay in order."""
    from pipeline import codec
    from pipeline.stream import records
    from pipeline.stream.topics import device_key
    from pipeline.topology import DeviceBatch

    now = time.time_ns() // 1_000_000
    out = []
    for k in range(first, first + batches):
        _, device, body, _ = fleet.body(k)
        pings, _ = codec.decode_pings_json(
            body, org_id=org_id, device_id=device.device_id, received_ms=now
        )
        batch = DeviceBatch(org_id, device.device_id, received_ms=now)
        batch.pings = pings
        out.append((device_key(org_id, device.device_id), records.encode_pings(batch)))
    return out


async def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futs = [await producer.send(topic, value, key=key) for key, value in items]
        for fut in futs:
            await fut
    finally:
        await producer.stop()


async def _sample_lag(
    dep: Deployment,
    groups: dict[str, list[str]],
    series: dict[str, list[Any]],
    started: float,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        for name, (group, topics) in groups.items():  # type: ignore[misc]
            with contextlib.suppress(Exception):
                series.setdefault(name, []).append(
                    (round(time.monotonic() - started, 1), await dep.lag(group, topics))
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _capacity(
    bootstrap: str,
    work: Path,
    procs: list[Child],
    kind: str,
    n: int,
    params: Params,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One capacity run: n processes of `kind` drain a backlog."""
    batches = params.profile_batches if profile else params.backlog_batches
    dep = Deployment(bootstrap, work, procs, f"{kind}{n}{'-profile' if profile else ''}")
    ids = device_ids(params.devices)
    tokens = {d: d for d in ids}  # the backlog skips the gateway: tokens unused
    await dep.prepare(tokens)
    group = f"{dep.settings.kafka.topic_prefix}{'worker' if kind == 'worker' else kind}"
    for i in range(n):
        dep.start(kind, i, profile=profile)
    out = OutputWatch(bootstrap, dep.topics.name("track-points"))
    await out.start()
    try:
        deadline = time.monotonic() + 90
        while await dep.group_members(group) < n:
            for child in dep.children:
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group}: {n} members did not join in 90 s")
            await asyncio.sleep(0.5)
        # warm-up: one batch per device (states created, reference loaded, partitions owned)
        fleet = Fleet(tokens, seed=1)
        warm = _encoded_backlog(fleet, dep.org_id, 0, params.devices)
        await _produce(bootstrap, dep.topics.pings, warm)
        if not await out.wait_count(len(warm), 90, dep.children):
            raise TimeoutError(f"{kind} x{n}: warm-up outputs missing ({out.count}/{len(warm)})")
        backlog = _encoded_backlog(fleet, dep.org_id, params.devices, batches)
        cpu_before = {c.name: c.cpu() for c in dep.children}
        series: dict[str, list[Any]] = {}
        stop = asyncio.Event()
        started_mono = time.monotonic()
        sampler = asyncio.create_task(
            _sample_lag(dep, {"lag": (group, [dep.topics.pings])}, series, started_mono, stop)
        )
        started_ms = time.time_ns() // 1_000_000
        await _produce(bootstrap, dep.topics.pings, backlog)
        produced_s = (time.time_ns() // 1_000_000 - started_ms) / 1000
        done = await out.wait_count(len(warm) + len(backlog), params.drain_timeout_s, dep.children)
        wall = time.monotonic() - started_mono
        stop.set()
        await sampler
        cpu = {c.name: c.cpu() - cpu_before[c.name] for c in dep.children}
        span_s = max(1e-3, (out.newest_ms - started_ms) / 1000)
        pings = len(backlog) * BATCH
        lags = [v for _, v in series.get("lag", [])]
        return {
            "kind": kind,
            "processes": n,
            "batches": len(backlog),
            "pings": pings,
            "complete": done,
            "outputs": out.count - len(warm),
            "pings_per_s": pings / span_s if done else (out.count - len(warm)) * BATCH / wall,
            "drain_s": span_s,
            "produce_s": produced_s,
            "lag_max": max(lags, default=0),
            "lag_end": lags[-1] if lags else 0,
            "lag_series": series.get("lag", []),
            "cpu_s": cpu,
            "cores": sum(cpu.values()) / span_s,
            # the processes' efficiency, whatever the machine had left for them
            "pings_per_cpu_s": pings / sum(cpu.values()) if done and sum(cpu.values()) else 0.0,
        }
    finally:
        await out.stop()
        await dep.stop()


async def _sustained(
    bootstrap: str,
    work: Path,
    procs: list[Child],
    n: int,
    rate_pings: float,
    params: Params,
    steps: Steps,
) -> dict[str, Any]:
    from pipeline.devices import new_token

    dep = Deployment(bootstrap, work, procs, f"{'paced' if rate_pings else 'closed'}{n}")
    tokens = {d: new_token() for d in device_ids(params.fleet)}
    tokens.update({d: new_token() for d in device_ids(params.probes, "probe")})
    await dep.prepare(tokens)
    tokens_file = dep.work / "tokens.json"
    tokens_file.write_text(json.dumps(tokens))
    port = free_port()
    for i in range(n):
        dep.start("worker", i)
    sink = dep.start("sink", 0)
    gateway = dep.start("gateway", 0, {"FIELDTRACK_GATEWAY__PORT": str(port)})
    alerts = OutputWatch(bootstrap, dep.topics.name("alerts"))
    await alerts.start()
    outputs = OutputWatch(bootstrap, dep.topics.name("track-points"), rows=True)
    await outputs.start()
    group = f"{dep.settings.kafka.topic_prefix}worker"
    try:
        deadline = time.monotonic() + 90
        while await dep.group_members(group) < n or not await _healthy(port):
            for child in dep.children:
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError("workers or gateway not ready in 90 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(params.settle_s)
        series: dict[str, list[Any]] = {}
        stop = asyncio.Event()
        started_mono = time.monotonic()
        groups = {
            "workers": (group, [dep.topics.pings]),
            "sink": (f"{dep.settings.kafka.topic_prefix}sink", dep.topics.all()),
        }
        sampler = asyncio.create_task(_sample_lag(dep, groups, series, started_mono, stop))
        workers = [c for c in dep.children if c.name.startswith("worker")]
        r = await run_loadgen(
            dep.work,
            "sustained",
            f"http://127.0.0.1:{port}",
            tokens_file,
            seconds=params.seconds,
            concurrency=params.concurrency,
            rate=rate_pings / BATCH,
            probes=True,
            watch=[gateway, sink, *workers],
        )
        ok = [x for x in r["log"] if x[2] == 202]
        probes = [p for p in r["probes"] if p["status"] == 202]
        # The workers are done when every accepted ping is out as a track point; the newest
        # output's broker timestamp then says when: the closed-loop run's capacity is accepted
        # pings / (that - the first request). (Neither output records, one per upload unless
        # a held ping leaves with the next one, nor the group's lag, which Faust can leave
        # behind after a rebalance (faust-streaming #596), tell it.)
        pings = sum(x[3] for x in ok)
        caught_up = await outputs.wait_count(
            pings + BATCH * len(probes), params.drain_timeout_s, dep.children, rows=True
        )
        caught_up_s = outputs.newest_ms / 1000 if caught_up else math.nan
        first_sent = min((x[0] for x in ok), default=math.nan)
        with steps.step(f"{n} worker(s): waiting for the probes' alerts and the sink"):
            wait_until = time.monotonic() + 60
            while time.monotonic() < wait_until and not all(
                p["device_id"] in alerts.alerts for p in probes
            ):
                await asyncio.sleep(0.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_until_drained(dep), 60)
        stop.set()
        await sampler
        latencies = [
            alerts.alerts[p["device_id"]][0] - p["sent_s"] * 1000
            for p in probes
            if p["device_id"] in alerts.alerts
        ]
        span = max(x[1] for x in ok) - first_sent if ok else 0.0
        processed_s = caught_up_s - first_sent
        worker_lag = [v for t, v in series.get("workers", []) if t <= r["wall_s"]]
        sink_lag = [v for t, v in series.get("sink", []) if t <= r["wall_s"]]
        return {
            "workers": n,
            "load": "closed loop" if not rate_pings else "paced",
            "offered_pings_per_s": rate_pings,
            "accepted_pings_per_s": pings / span if span else 0.0,
            "processed_pings_per_s": pings / processed_s if processed_s > 0 else 0.0,
            "caught_up": caught_up,
            "caught_up_after_load_s": caught_up_s - first_sent - span,
            "requests": len(r["log"]),
            "statuses": r["statuses"],
            "late_starts": r["late_starts"],
            "alert_ms_p50": percentile(latencies, 50),
            "alert_ms_p99": percentile(latencies, 99),
            "alert_ms_max": max(latencies, default=float("nan")),
            "probes_sent": len(probes),
            "probe_alerts": len(latencies),
            "worker_lag_max": max(worker_lag, default=0),
            "worker_lag_end_of_load": worker_lag[-1] if worker_lag else 0,
            "sink_lag_max": max(sink_lag, default=0),
            "sink_lag_end_of_load": sink_lag[-1] if sink_lag else 0,
            "lag_series": series,
            "cpu_s": r["cpu_s"],
            "cores": {k: v / r["wall_s"] for k, v in r["cpu_s"].items()},
            "machine_cores_busy": r["machine_busy_cpu_s"] / r["wall_s"],
        }
    finally:
        await alerts.stop()
        await outputs.stop()
        await dep.stop()


async def _healthy(port: int) -> bool:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            return resp.status == 200 and (await resp.json()).get("devices", 0) > 0
    except aiohttp.ClientError:
        return False


async def _until_drained(dep: Deployment) -> None:
    from pipeline.stream.topics import wait_drained

    await wait_drained(dep.settings.kafka, 60, workers=False)


_launched: subprocess.Popen[bytes] | None = None  # by `prelaunch`, for `run`


def prelaunch() -> None:
    """Launches the local broker now (unless one answers or it cannot run here), so its JVM
    start overlaps the benchmarks before this one; `run` then waits for it and stops it.
    The others measure process CPU time, which the broker's start on the other core barely
    touches."""
    from pipeline.broker import BrokerError, LocalKafka, java_available

    global _launched
    broker = LocalKafka()
    if _launched is None and java_available() is None and not broker.answering():
        with contextlib.suppress(BrokerError):  # `run` tries again and reports
            _launched = broker.launch()


def stop_prelaunched() -> None:
    """Stops a prelaunched broker that `run` never took over (interrupted, or failed before)."""
    from pipeline.broker import LocalKafka

    global _launched
    if _launched is not None:
        _launched = None
        LocalKafka().stop()


def run(params: Params, steps: Steps) -> BenchResult:
    from pipeline.broker import BrokerError, LocalKafka, java_available

    # The bench is never silently skipped: no broker is a loud failure (CI=true) or a printed
    # reason in the record.
    why = java_available()
    if why is not None:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"CI=true but the Kafka broker cannot run here: {why}")
        steps.console.print(f"[yellow]kafka benchmark skipped: {why}[/yellow]")
        return BenchResult(
            params=_params(params), results={"skipped": why}, notes=[f"skipped: {why}"]
        )
    # aiokafka retries a produce right after topic creation and says so on stderr, and so
    # does a consumer's first offset fetch while a new partition's leader settles: noise here
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("aiokafka.consumer.fetcher").setLevel(logging.CRITICAL)
    broker = LocalKafka()
    global _launched
    launched, _launched = _launched, None
    running = launched is None and broker.answering()  # reused whoever started it, left running
    if not running:
        what = "waiting for the broker launched at the start" if launched else "starting it"
        with steps.step(f"the local Kafka broker: {what}"):
            try:
                if launched is not None:
                    broker.wait_ready(launched)
                else:
                    broker.start()
            except BrokerError as exc:
                if os.environ.get("CI") == "true":
                    raise
                steps.console.print(f"[yellow]kafka benchmark skipped: {exc}[/yellow]")
                return BenchResult(
                    params=_params(params),
                    results={"skipped": str(exc)},
                    notes=[f"skipped: the broker did not start: {exc}"],
                )
    try:
        return asyncio.run(_run(broker.bootstrap, params, steps))
    finally:
        if not running:
            broker.stop()


def _params(params: Params) -> dict[str, Any]:
    return {**asdict(params), "workers": list(params.workers)}


async def _run(bootstrap: str, params: Params, steps: Steps) -> BenchResult:
    work = Path(tempfile.mkdtemp(prefix="fieldtrack-bench-kafka-"))
    capacity: list[dict[str, Any]] = []
    sustained: list[dict[str, Any]] = []
    profile: list[dict[str, Any]] = []
    notes_failed: list[str] = []
    try:
        with children() as procs:
            for kind in ("passthrough", "worker"):
                for n in params.workers:
                    label = f"{kind} x{n}: drain {params.backlog_batches * BATCH:,} pings"
                    with steps.step(label):
                        try:
                            capacity.append(
                                await _capacity(bootstrap, work, procs, kind, n, params)
                            )
                        except (RuntimeError, TimeoutError) as exc:
                            # recorded and shown, not fatal: the other deployments still run
                            steps.console.print(f"[red]{kind} x{n} failed: {exc}[/red]")
                            capacity.append(_failed(kind, n, exc))
            if params.profile_batches:
                with steps.step(
                    f"worker x1 under cProfile: {params.profile_batches * BATCH:,} pings"
                ):
                    stats = work / "worker.prof"
                    await _capacity(bootstrap, work, procs, "worker", 1, params, profile=stats)
                    if stats.exists():
                        profile = profile_rows(stats)
            for n in params.workers:
                # The whole deployment's capacity (closed loop), then a paced run at
                # `load_fraction` of it: the latency target's load.
                full_stack = 0.0
                for label, rate in (("closed loop", 0.0), ("paced", None)):
                    if rate is None:
                        if not full_stack > 0.0:
                            continue  # no capacity measured: nothing to take half of
                        rate = params.load_fraction * full_stack
                        label = f"{rate:,.0f} pings/s"
                    with steps.step(
                        f"gateway, {n} worker(s), sink: {label} for {params.seconds:.0f} s"
                    ):
                        try:
                            outcome = await _sustained(
                                bootstrap, work, procs, n, rate, params, steps
                            )
                        except (RuntimeError, TimeoutError) as exc:
                            steps.console.print(f"[red]{label}, {n} worker(s) failed: {exc}[/red]")
                            notes_failed.append(f"{label}, {n} worker(s) failed: {exc}")
                            continue
                    sustained.append(outcome)
                    if not rate:
                        full_stack = outcome["processed_pings_per_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = _result(steps, params, capacity, sustained, profile)
    result.notes += notes_failed
    result.notes += [
        f"{c['kind']} x{c['processes']} failed: {c['error']}" for c in capacity if c.get("error")
    ]
    return result


def _failed(kind: str, n: int, exc: BaseException) -> dict[str, Any]:
    return {
        "kind": kind,
        "processes": n,
        "complete": False,
        "pings_per_s": 0.0,
        "drain_s": float("nan"),
        "lag_max": 0,
        "lag_end": 0,
        "cores": float("nan"),
        "error": str(exc)[:2000],
    }


def _result(
    steps: Steps,
    params: Params,
    capacity: list[dict[str, Any]],
    sustained: list[dict[str, Any]],
    profile: list[dict[str, Any]],
) -> BenchResult:
    console = steps.console
    print_table(
        console,
        f"Capacity: draining a backlog of {params.backlog_batches:,} batches x 50 pings "
        f"({params.devices:,} devices, 8 partitions)",
        [
            "deployment",
            "pings/s",
            "drain s",
            "lag max",
            "lag end",
            "CPU cores (these procs)",
            "pings per CPU-s",
        ],
        [
            [
                f"{c['kind']} x{c['processes']}",
                c["pings_per_s"],
                c["drain_s"],
                c["lag_max"],
                c["lag_end"],
                c["cores"],
                c.get("pings_per_cpu_s", 0.0),
            ]
            for c in capacity
        ],
    )
    print_table(
        console,
        f"Sustained: gateway -> Kafka -> workers -> sink -> chDB, {params.seconds:.0f} s, "
        f"{params.fleet:,} devices: closed loop (the deployment's capacity: accepted pings / "
        f"time until the workers caught up), then paced at {params.load_fraction:.0%} of it",
        [
            "workers",
            "load",
            "offered pings/s",
            "accepted pings/s",
            "processed pings/s",
            "alert p50 ms",
            "alert p99 ms",
            "alerts/probes",
            "worker lag max",
            "worker lag end",
            "sink lag max",
            "sink lag end",
            "machine cores busy",
        ],
        [
            [
                s["workers"],
                s["load"],
                s["offered_pings_per_s"] or "as fast as accepted",
                s["accepted_pings_per_s"],
                s["processed_pings_per_s"],
                s["alert_ms_p50"],
                s["alert_ms_p99"],
                f"{s['probe_alerts']}/{s['probes_sent']}",
                s["worker_lag_max"],
                s["worker_lag_end_of_load"],
                s["sink_lag_max"],
                s["sink_lag_end_of_load"],
                s["machine_cores_busy"],
            ]
            for s in sustained
        ],
    )
    if sustained:
        names = sorted({k for s in sustained for k in s["cores"]})
        print_table(
            console,
            "CPU cores used during the sustained runs (CPU s / wall s)",
            ["workers", "load", *names],
            [
                [s["workers"], s["load"], *(s["cores"].get(k, 0.0) for k in names)]
                for s in sustained
            ],
        )
    if profile:
        print_table(
            console,
            "Profile of one worker draining a backlog (cProfile, top 15 by own time; idle "
            "waits included)",
            ["function", "calls", "tottime s", "cumtime s", "own %"],
            [
                [p["function"], p["calls"], p["tottime_s"], p["cumtime_s"], p["own_pct"]]
                for p in profile
            ],
        )

    def rate(kind: str, n: int) -> float:
        return next(
            (c["pings_per_s"] for c in capacity if c["kind"] == kind and c["processes"] == n), 0.0
        )

    ratios: dict[str, float] = {}
    targets: list[Target] = []
    if rate("passthrough", 1):
        ratios["worker1_vs_passthrough1"] = rate("worker", 1) / rate("passthrough", 1)
        targets.append(
            Target(
                "one worker / bare aiokafka pass-through",
                ratios["worker1_vs_passthrough1"],
                ">=",
                0.5,
                "x",
            )
        )
    if 2 in params.workers and rate("worker", 1):
        # a failed 2-worker run counts as 0: a missed target, never a missing one
        ratios["workers2_vs_worker1"] = rate("worker", 2) / rate("worker", 1)
        if rate("passthrough", 1):
            ratios["passthrough2_vs_passthrough1"] = rate("passthrough", 2) / rate("passthrough", 1)
        targets.append(
            Target("two workers / one worker", ratios["workers2_vs_worker1"], ">=", 1.7, "x")
        )
        # Informational: 1.0 means two workers do as much per CPU-second as one (the scale-out
        # itself costs nothing; what is missing is cores).
        per_cpu = {c["processes"]: c.get("pings_per_cpu_s", 0.0) for c in capacity
                   if c["kind"] == "worker"}  # fmt: skip
        if per_cpu.get(1) and per_cpu.get(2):
            ratios["workers2_vs_worker1_per_cpu_s"] = per_cpu[2] / per_cpu[1]
    for s in sustained:
        if s["load"] != "paced":
            continue
        targets.append(
            Target(
                f"p99 ping->alert, {s['workers']} worker(s), "
                f"{params.load_fraction:.0%} of the deployment's capacity",
                s["alert_ms_p99"],
                "<=",
                250.0,
                "ms",
            )
        )
    print_table(
        console, "Ratios (same run)", ["ratio", "value"], [[k, v] for k, v in ratios.items()]
    )
    return BenchResult(
        params=_params(params),
        results={
            "capacity": [c for c in capacity if c["kind"] == "worker"],
            "sustained": sustained,
        },
        baselines={"passthrough": [c for c in capacity if c["kind"] == "passthrough"]},
        ratios=ratios,
        targets=targets,
        notes=[
            "capacity = backlog pings / (newest output broker timestamp - backlog start); "
            "the sink is not running then",
            "ping->alert = alert record broker timestamp (CreateTime, worker's producer) - "
            "load generator send time of the probe request",
            "2 cores shared by broker, gateway, sink, workers and load generator: see the CPU "
            "table",
        ],
        extra={"profile": profile},
    )


if __name__ == "__main__":
    main()
