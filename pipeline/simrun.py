"""`fieldtrack run --simulate`: a simulated fleet posts over HTTP to a live embedded instance.

The fleet's uploads go through the real gateway exactly as phones' would. Time is simulated: a
`ManualClock` shared with the gateway follows the simulated day in steps, and after each step
the driver waits for the topology to catch up and runs the timers, so a day compresses into
seconds and the results do not depend on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.clock import ManualClock
from pipeline.config import KafkaSettings, Settings
from pipeline.metrics import Metrics
from pipeline.reference.loader import load_customers_file, load_fence_features
from pipeline.reference.models import Customer
from pipeline.service import EmbeddedService
from pipeline.sim import City, Simulation, Upload, build_city, default_sim_day, simulate
from pipeline.store.client import Store

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"
DEFAULT_SEED = 7
STEP_MS = 60_000  # simulated time per step: uploads in a step are posted concurrently
CONCURRENCY = 64


@dataclass(slots=True)
class SimRunStats:
    org_id: str
    day_start_ms: int
    day_end_ms: int
    uploads: int
    records_sent: int
    wall_s: float
    http_errors: int


async def run_simulation(
    settings: Settings, console: Console, *, show_progress: bool = True
) -> tuple[EmbeddedService, Simulation, SimRunStats]:
    """Starts an instance, runs the fleet through it and returns the (still running) service."""
    city, simulation = _simulation(settings)
    uploads = simulation.uploads
    first_ms = uploads[0].send_ms if uploads else 0
    clock = ManualClock(first_ms)
    service = EmbeddedService(settings, clock=clock, auto_tick=False, restore_state=False)
    await service.start()
    try:
        await _load_reference(service, city, settings.sim.seed)
        tokens = {
            d.device_id: await service.add_device(d.org_id, d.device_id, d.name, d.schedule)
            for d in simulation.devices
        }
        assert service.pipeline is not None
        stats = await post_fleet(
            service.url, clock, uploads, tokens, service.pipeline.step, console, show_progress
        )
    except BaseException:
        await service.stop()
        raise
    stats.org_id = city.org_id
    stats.day_start_ms = min((u.send_ms for u in uploads), default=0) - 3_600_000
    stats.day_end_ms = clock.now_ms() + 3_600_000
    return service, simulation, stats


def _simulation(settings: Settings) -> tuple[City, Simulation]:
    sim_cfg = settings.sim
    day = dt.date.fromisoformat(sim_cfg.day) if sim_cfg.day else default_sim_day(dt.date.today())
    city = build_city(seed=sim_cfg.seed)
    simulation = simulate(
        city,
        reps=sim_cfg.reps,
        day=day,
        seed=sim_cfg.seed,
        ping_interval_s=sim_cfg.ping_interval_s,
        upload_interval_s=sim_cfg.upload_interval_s,
    )
    return city, simulation


def _reference_files(city: City, seed: int) -> tuple[list[Customer], list[dict[str, Any]]]:
    """The demo customers and fences shipped in the repo; another seed builds its own city."""
    if seed == DEFAULT_SEED and (DEMO_DIR / "customers.csv").exists():
        customers = load_customers_file(DEMO_DIR / "customers.csv", city.org_id)
        return customers, load_fence_features(DEMO_DIR / "fences.geojson")
    return list(city.customers), list(city.fence_features)


async def _load_reference(service: EmbeddedService, city: City, seed: int) -> None:
    customers, features = _reference_files(city, seed)
    await service.set_reference(customers, features, city.org_id)


StepHook = Callable[..., Awaitable[None]]


async def post_fleet(
    url: str,
    clock: ManualClock,
    uploads: list[Upload],
    tokens: dict[str, str],
    step_done: StepHook,
    console: Console,
    show_progress: bool = True,
) -> SimRunStats:
    """Posts the uploads to a gateway at `url` in steps of simulated time; after each step
    `step_done(now_ms)` lets the driver run its timers (embedded: in-process; Kafka: Tick
    records). At the end the clock runs on past the day so silences and open stays time out,
    then `step_done(now, final=True)`."""
    steps: dict[int, list[Upload]] = defaultdict(list)
    for u in uploads:
        steps[u.send_ms // STEP_MS].append(u)
    total_records = sum(len(u.records) for u in uploads)
    stats = SimRunStats("", 0, 0, len(uploads), 0, 0.0, 0)
    limiter = asyncio.Semaphore(CONCURRENCY)
    started = time.monotonic()
    progress = Progress(
        TextColumn("[bold]simulated {task.fields[clock]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[rate]:>8,.0f} records/s"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=False,
    )
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, timeout=timeout) as http:

        async def post(u: Upload) -> None:
            async with limiter:
                for attempt in range(20):
                    async with http.post(
                        f"/v1/{u.endpoint}",
                        json=u.records,
                        headers={"Authorization": f"Bearer {tokens[u.device_id]}"},
                    ) as resp:
                        await resp.read()
                        if resp.status in (202, 422):
                            stats.records_sent += len(u.records)
                            return
                        if resp.status != 503 or attempt == 19:
                            stats.http_errors += 1
                            return
                    await asyncio.sleep(0.25)  # 503: the phone retries, as real apps do

        with progress:
            task = progress.add_task("fleet", total=total_records, clock="", rate=0.0)
            for step in sorted(steps):
                batch = steps[step]
                clock.set((step + 1) * STEP_MS)  # receive time: the end of the step
                await asyncio.gather(*(post(u) for u in batch))
                await step_done(clock.now_ms())
                elapsed = max(1e-6, time.monotonic() - started)
                progress.update(
                    task,
                    advance=sum(len(u.records) for u in batch),
                    clock=_clock_text(clock.now_ms()),
                    rate=stats.records_sent / elapsed,
                )
    # The day is over: let silences and open stays time out, then close what is still open.
    for _ in range(8):
        clock.advance(15 * 60_000)
        await step_done(clock.now_ms())
    await step_done(clock.now_ms(), final=True)
    stats.wall_s = time.monotonic() - started
    return stats


def _clock_text(now_ms: int) -> str:
    stamp = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


async def prepare_kafka_fleet(
    kafka: KafkaSettings,
    city: City,
    simulation: Simulation,
    customers: list[Customer],
    features: list[dict[str, Any]],
) -> dict[str, str]:
    """Topics, and the reference topic filled with the city and the fleet's devices; returns
    each device's token (the phones' credentials for the gateway)."""
    from pipeline.devices import DeviceInfo, hash_token, new_token
    from pipeline.stream.reference import publish_reference
    from pipeline.stream.topics import create_topics

    await create_topics(kafka)
    tokens, devices = {}, []
    for d in simulation.devices:
        tokens[d.device_id] = token = new_token()
        devices.append((hash_token(token), DeviceInfo(d.org_id, d.device_id, d.name, d.schedule)))
    fences = [(city.org_id, f) for f in features]
    await publish_reference(kafka, customers=customers, fences=fences, devices=devices)
    return tokens


@dataclass
class KafkaSimRun:
    """A finished simulated day on Kafka: gateway, Faust worker and sink in this process."""

    store: Store
    metrics: Metrics
    stop: Callable[[], Awaitable[None]]


async def run_simulation_on_kafka(
    settings: Settings, console: Console, *, show_progress: bool = True
) -> tuple[KafkaSimRun, Simulation, SimRunStats]:
    """The same fleet through gateway -> Kafka -> Faust worker -> sink -> store. The driver
    owns the clock, so it writes the Tick records itself (into both input topics, every
    partition) after each step; the worker's own timer is off."""
    from pipeline.stream.service import KafkaGateway
    from pipeline.stream.sink import KafkaSink
    from pipeline.stream.ticks import TickDriver
    from pipeline.stream.topics import wait_drained
    from pipeline.stream.worker import Worker

    kafka = settings.kafka
    kafka.tick_interval_ms = 0  # this driver owns the clock: it writes the ticks ...
    kafka.tick_acks = True  # ... and waits for each to be processed, like the embedded drain
    city, simulation = _simulation(settings)
    uploads = simulation.uploads
    customers, features = _reference_files(city, settings.sim.seed)
    tokens = await prepare_kafka_fleet(kafka, city, simulation, customers, features)
    store = Store(settings.store)
    store.apply_schema()
    clock = ManualClock(uploads[0].send_ms if uploads else 0)
    gateway = KafkaGateway(settings, clock=clock, store=store)
    await gateway.start()
    sink_stop = asyncio.Event()
    sink_task = asyncio.create_task(KafkaSink(settings, store).run(sink_stop))
    worker = Worker(settings)
    await worker.app.start()
    ticks = TickDriver(kafka)
    await ticks.start()

    async def step_done(now_ms: int, *, final: bool = False) -> None:
        await ticks.tick(now_ms, final=final)

    async def stop() -> None:
        await ticks.stop()
        await gateway.stop()
        await worker.app.stop()
        sink_stop.set()
        await asyncio.gather(sink_task, return_exceptions=True)
        store.close()

    try:
        stats = await post_fleet(gateway.url, clock, uploads, tokens, step_done, console,
                                 show_progress)  # fmt: skip
        with console.status("waiting for the worker and the sink to catch up ..."):
            await wait_drained(kafka, workers=False)  # the final tick was acknowledged
        for name, count in worker.counters.items():
            gateway.metrics.topology_counters.labels(name).inc(count)
    except BaseException:
        await stop()
        raise
    stats.org_id = city.org_id
    stats.day_start_ms = min((u.send_ms for u in uploads), default=0) - 3_600_000
    stats.day_end_ms = clock.now_ms() + 3_600_000
    return KafkaSimRun(store, gateway.metrics, stop), simulation, stats
