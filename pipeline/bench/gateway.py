"""Benchmark 4, embedded end to end: HTTP gateway -> topology -> chDB, driven over loopback by
a load generator in a second process (`pipeline.bench.loadgen`: device batches of 50 pings,
the JSON the app sends, `devices` devices registered first).

Three servers, each a child process of its own, each in turn loaded by the load generator:
- bare: a bare aiohttp handler that reads the body, `json.loads` it and answers 202 (the
  floor of any Python HTTP gateway here; the baseline);
- gateway alone: the real `Gateway` (auth, decode, screen, metrics, answer) in front of an
  ingest sink that does nothing: the gateway's own ceiling. It is one thread, so its rate per
  CPU second of its process is its rate on one core (the load generator, on the other core,
  cannot always saturate it; the wall rate and the process's CPU share are shown beside);
- embedded: `EmbeddedService` as `fieldtrack run` starts it (raw pings made durable in chDB
  before the 202, the topology on the in-process queue, the batching sink) on a temporary
  data directory, with the simulator city's customers and fences.

The embedded server is loaded twice: a closed loop (`concurrency` connections posting as fast
as answers come: the sustained rate, back-pressure included), then requests spaced evenly at
`paced_fraction` of that rate (the latency at a load it can carry).

"Visible" means the request's pings are rows of `track_points` (the processed track that the
dashboards and reports read): the bench polls the running instance's admin query route every
`poll_ms` for each device's newest stored seq (`SELECT device_id, max(seq) FROM track_points
GROUP BY device_id`; a device's rows are processed and stored in order) and takes the first
poll that saw a request's last seq. Latency runs from the
load generator's send (both processes read the same wall clock) to that poll, so it is late by
up to one poll interval. A 202 already means the raw pings are durable in `raw_pings`, so the
request latency is the raw row's visibility.

Wall times throughout (three processes share two cores: the table says how much CPU each
used). A cProfile of the gateway alone (a separate short run: profiling slows it) gives the
top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from pipeline.bench.common import BenchResult, Steps, Target, print_table
from pipeline.bench.loadgen import device_ids
from pipeline.bench.procs import (
    Child,
    children,
    percentile,
    profile_rows,
    run_loadgen,
    wait_file,
    window,
)

NAME = "gateway"
TITLE = "Embedded end to end: HTTP gateway -> store, load from a second process"
TARGET_PINGS_PER_CORE = 50_000


@dataclass(frozen=True, slots=True)
class Params:
    devices: int = 2000
    seconds: float = 15.0  # per loaded run
    warmup_s: float = 1.0  # of each run, not counted
    concurrency: int = 32
    paced_fraction: float = 0.5
    poll_ms: int = 100
    profile_seconds: float = 5.0  # 0: no profile run
    drain_timeout_s: float = 60.0


SIZES = {
    "full": Params(),
    "quick": Params(devices=1000, seconds=3.0, profile_seconds=2.0, drain_timeout_s=30.0),
    "tiny": Params(
        devices=400,
        seconds=2.0,
        warmup_s=0.5,
        concurrency=8,
        profile_seconds=1.5,
        drain_timeout_s=30.0,
    ),
}


# -- the servers (child processes) -----------------------------------------------------------


class _NullSink:
    """An ingest sink that takes everything at once: the gateway alone."""

    async def ingest(self, batch: Any, dead_letters: Any, accepted_at: float) -> None:
        return None


async def _serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from pipeline.clock import WallClock
    from pipeline.config import Settings, StoreSettings
    from pipeline.devices import DeviceInfo, DeviceRegistry, hash_token, new_token
    from pipeline.gateway.app import Gateway
    from pipeline.ingest import Screener
    from pipeline.metrics import Metrics
    from pipeline.processors.validate import Validator

    work = Path(args.dir)
    ids = device_ids(args.devices)
    tokens = {d: new_token() for d in ids}
    settings = Settings()
    settings.gateway.port = 0
    ready: dict[str, Any] = {}
    cleanup: list[Any] = []
    if args.mode == "bare":

        async def bare(request: web.Request) -> web.Response:
            records = json.loads(await request.read())
            return web.json_response({"accepted": len(records)}, status=202)

        app = web.Application(client_max_size=settings.gateway.max_body_bytes)
        app.add_routes([web.post("/v1/pings", bare)])
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
    elif args.mode == "edge":
        registry = DeviceRegistry()
        for device_id, token in tokens.items():
            registry.add(hash_token(token), DeviceInfo("bench", device_id, device_id, None))
        screener = Screener(
            Validator(settings.processors.validate), privacy=settings.processors.privacy.enabled
        )
        gateway = Gateway(settings.gateway, registry, screener, _NullSink(), WallClock(), Metrics())
        runner = web.AppRunner(gateway.app(), handle_signals=False, access_log=None)
    else:
        from pipeline.service import EmbeddedService
        from pipeline.sim import build_city

        settings.store = StoreSettings(data_dir=str(work / "store"))
        service = EmbeddedService(settings, restore_state=False)
        await service.start()
        cleanup.append(service.stop)
        city = build_city()
        await service.set_reference(list(city.customers), list(city.fence_features), city.org_id)
        await _register(service, city.org_id, tokens)
        ready.update(
            url=service.url, admin_token=service.admin_token, database=settings.store.database
        )
        runner = None
    if runner is not None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        ready["url"] = f"http://{host}:{port}"
        cleanup.append(runner.cleanup)
    tokens_file = work / f"tokens-{args.mode}.json"
    tokens_file.write_text(json.dumps(tokens))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    tmp = Path(args.ready + ".tmp")  # renamed: the bench never reads half a file
    tmp.write_text(json.dumps({**ready, "tokens_file": str(tokens_file)}))
    tmp.rename(args.ready)
    await stop.wait()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    for fn in reversed(cleanup):
        await fn()


async def _register(service: Any, org_id: str, tokens: dict[str, str]) -> None:
    """Registers the fleet in the store and the live registry in one insert (one
    `add_device` each would be one chDB insert per device)."""
    from pipeline.devices import DeviceInfo, hash_token

    store, pipeline = service._require()
    now = time.time_ns() // 1_000_000
    rows = [(org_id, d, d, hash_token(t), "", True, now) for d, t in tokens.items()]
    columns = [list(c) for c in zip(*rows, strict=True)]
    names = ("org_id", "device_id", "name", "token_hash", "schedule", "active", "updated")
    await pipeline.sink.call(store.insert, "devices", columns, names)
    for device_id, token in tokens.items():
        service.registry.add(hash_token(token), DeviceInfo(org_id, device_id, device_id, None))
    pipeline.reference.schedules = service.registry.schedules()


def serve_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="a server of the gateway benchmark")
    p.add_argument("mode", choices=("bare", "edge", "embedded"))
    p.add_argument("--dir", required=True)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--ready", required=True)
    p.add_argument("--profile", default="")
    asyncio.run(_serve(p.parse_args(argv)))


# -- the visibility poller ----------------------------------------------------------------------


class Visibility:
    """Polls the embedded instance for each device's newest stored track point (seq)."""

    def __init__(self, url: str, admin_token: str, database: str, poll_ms: int) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {admin_token}"}
        self.database = database
        self.poll_s = poll_ms / 1000.0
        # device -> [(poll time, newest seq then)], appended when the newest seq grows
        self.seen: dict[str, list[tuple[float, int]]] = {}
        self.polls = 0
        self.poll_ms: list[float] = []
        self.errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(headers=self.headers) as http:
            while not stop.is_set():
                await self.poll(http)
                await asyncio.sleep(self.poll_s)

    async def poll(self, http: aiohttp.ClientSession) -> None:
        sql = f"SELECT device_id, max(seq) FROM {self.database}.track_points GROUP BY device_id"
        started = time.time()
        try:
            async with http.post(f"{self.url}/v1/admin/query", json={"sql": sql}) as resp:
                data = await resp.json()
        except aiohttp.ClientError:
            self.errors += 1
            return
        now = time.time()
        self.polls += 1
        self.poll_ms.append((now - started) * 1000)
        if "rows" not in data:
            self.errors += 1
            return
        for device_id, seq in data["rows"]:
            marks = self.seen.setdefault(device_id, [])
            if not marks or seq > marks[-1][1]:
                marks.append((now, int(seq)))

    def visible_at(self, device_id: str, seq: int) -> float | None:
        """When the poller first saw `seq` of the device stored (its rows go in order)."""
        for at, newest in self.seen.get(device_id, ()):
            if newest >= seq:
                return at
        return None

    async def wait_for(self, wanted: list[tuple[str, int]], timeout_s: float) -> float:
        """Seconds until every wanted (device, seq) was seen (or the timeout)."""
        started = time.monotonic()
        newest: dict[str, int] = {}
        for device_id, seq in wanted:
            newest[device_id] = max(seq, newest.get(device_id, 0))
        while time.monotonic() - started < timeout_s and any(
            self.visible_at(d, q) is None for d, q in newest.items()
        ):
            await asyncio.sleep(self.poll_s)
        return time.monotonic() - started


# -- the benchmark ------------------------------------------------------------------------------


def run(params: Params, steps: Steps) -> BenchResult:
    return asyncio.run(_run(params, steps))


def _rate_row(name: str, r: dict[str, Any], params: Params, server: str) -> dict[str, Any]:
    log, span = window(r, params.warmup_s)
    ok = [x for x in log if x[2] == 202]
    pings = sum(x[3] for x in ok)
    lat = [(x[1] - x[0]) * 1000 for x in ok]
    server_cpu = r["cpu_s"].get(server, 0.0)
    # CPU over the whole run (warm-up included) against all accepted pings: per CPU second
    return {
        "run": name,
        "requests": len(log),
        "ok_requests": len(ok),
        "rejected_pings": sum(r["batch"] - x[3] for x in log),
        "statuses": r["statuses"],
        "pings_per_s": pings / span if span else 0.0,
        "request_ms_p50": percentile(lat, 50),
        "request_ms_p99": percentile(lat, 99),
        "server_cpu_s": server_cpu,
        "server_cores": server_cpu / r["wall_s"] if r["wall_s"] else 0.0,
        "pings_per_server_cpu_s": r["accepted_pings"] / server_cpu if server_cpu else 0.0,
        "loadgen_cores": r["cpu_s"]["loadgen"] / r["wall_s"] if r["wall_s"] else 0.0,
        "machine_cores_busy": r["machine_busy_cpu_s"] / r["wall_s"] if r["wall_s"] else 0.0,
        "late_starts": r["late_starts"],
        "concurrency": r["concurrency"],
        "offered_req_per_s": r["rate"],
    }


async def _start(
    work: Path, procs: list[Child], mode: str, params: Params, profile: Path | None = None
) -> tuple[Child, dict[str, Any]]:
    ready = work / f"ready-{mode}{'-profile' if profile else ''}.json"
    args = [
        "-m",
        "pipeline.bench.gateway",
        mode,
        "--dir",
        str(work),
        "--devices",
        str(params.devices),
        "--ready",
        str(ready),
    ]
    if profile:
        args += ["--profile", str(profile)]
    child = Child(mode, args, work / f"server-{mode}.log")
    procs.append(child)
    return child, await wait_file(ready, child)


async def _run(params: Params, steps: Steps) -> BenchResult:
    work = Path(tempfile.mkdtemp(prefix="fieldtrack-bench-gateway-"))
    rows: list[dict[str, Any]] = []
    profile: list[dict[str, Any]] = []
    visible: dict[str, Any] = {}
    try:
        with children() as procs:
            for mode, label in (
                ("bare", "bare aiohttp + json.loads (baseline)"),
                ("edge", "gateway alone (null sink)"),
            ):
                with steps.step(f"{label}: {params.seconds:.0f} s closed loop"):
                    server, ready = await _start(work, procs, mode, params)
                    r = await run_loadgen(
                        work,
                        mode,
                        ready["url"],
                        Path(ready["tokens_file"]),
                        seconds=params.seconds,
                        concurrency=params.concurrency,
                        wrap=True,
                        watch=[server],
                    )
                    rows.append(_rate_row(label, r, params, mode))
                    server.stop()
            if params.profile_seconds > 0:
                with steps.step(f"gateway alone under cProfile: {params.profile_seconds:.0f} s"):
                    stats = work / "edge.prof"
                    server, ready = await _start(work, procs, "edge", params, profile=stats)
                    await run_loadgen(
                        work,
                        "edge-profile",
                        ready["url"],
                        Path(ready["tokens_file"]),
                        seconds=params.profile_seconds,
                        concurrency=params.concurrency,
                        wrap=True,
                    )
                    server.stop()
                    profile = profile_rows(stats)
            with steps.step("embedded instance: start, reference data, register the fleet"):
                server, ready = await _start(work, procs, "embedded", params)
            visible = await _embedded_runs(work, server, ready, params, steps, rows)
            server.stop(grace_s=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _result(steps, params, rows, visible, profile)


async def _embedded_runs(
    work: Path,
    server: Child,
    ready: dict[str, Any],
    params: Params,
    steps: Steps,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    vis = Visibility(ready["url"], ready["admin_token"], ready["database"], params.poll_ms)
    stop = asyncio.Event()
    poller = asyncio.create_task(vis.run(stop))
    tokens = Path(ready["tokens_file"])
    out: dict[str, Any] = {}
    state = work / "fleet-state.json"  # the paced run continues the devices' clocks
    try:
        for tag, label in (("closed", "embedded, closed loop"), ("paced", "embedded, paced")):
            rate = 0.0
            if tag == "paced":
                sustained = rows[-1]["pings_per_s"]
                rate = max(1.0, params.paced_fraction * sustained / 50)  # requests/s
                label = f"embedded, paced at {params.paced_fraction:.0%} of sustained"
            with steps.step(f"{label}: {params.seconds:.0f} s"):
                r = await run_loadgen(
                    work,
                    f"embedded-{tag}",
                    ready["url"],
                    tokens,
                    seconds=params.seconds,
                    concurrency=params.concurrency,
                    rate=rate,
                    state=state,
                    watch=[server],
                )
            row = _rate_row(label, r, params, "embedded")
            log, _ = window(r, params.warmup_s)
            names = r["devices"]
            ok = [(names[x[5]], x[4]) for x in r["log"] if x[2] == 202]
            with steps.step(f"{label}: until every accepted request is visible"):
                drain_s = await vis.wait_for(ok, params.drain_timeout_s)
            lat = []
            for x in log:
                at = vis.visible_at(names[x[5]], x[4]) if x[2] == 202 else None
                if at is not None:
                    lat.append((at - x[0]) * 1000)
            row.update(
                visible_ms_p50=percentile(lat, 50),
                visible_ms_p99=percentile(lat, 99),
                visible_ms_max=max(lat, default=float("nan")),
                not_visible=sum(1 for d, q in ok if vis.visible_at(d, q) is None),
                drain_after_load_s=max(0.0, drain_s),
            )
            rows.append(row)
        out = {
            "polls": vis.polls,
            "poll_errors": vis.errors,
            "poll_query_ms_p50": percentile(vis.poll_ms, 50),
            "poll_query_ms_p99": percentile(vis.poll_ms, 99),
        }
    finally:
        stop.set()
        await asyncio.gather(poller, return_exceptions=True)
    return out


def _result(
    steps: Steps,
    params: Params,
    rows: list[dict[str, Any]],
    visible: dict[str, Any],
    profile: list[Any],
) -> BenchResult:
    console = steps.console
    bare, edge = rows[0], rows[1]
    embedded = [r for r in rows if r["run"].startswith("embedded")]
    print_table(
        console,
        f"HTTP ingest, batches of 50 pings, {params.devices:,} devices, load from a second process",
        [
            "run",
            "pings/s",
            "rejected",
            "req p50 ms",
            "req p99 ms",
            "server cores",
            "pings/server CPU s",
            "loadgen cores",
            "machine cores busy",
        ],
        [
            [
                r["run"],
                r["pings_per_s"],
                r["rejected_pings"],
                r["request_ms_p50"],
                r["request_ms_p99"],
                r["server_cores"],
                r["pings_per_server_cpu_s"],
                r["loadgen_cores"],
                r["machine_cores_busy"],
            ]
            for r in rows
        ],
    )
    print_table(
        console,
        f"Embedded: request -> track point visible in chDB (polled every {params.poll_ms} ms)",
        [
            "run",
            "pings/s",
            "visible p50 ms",
            "visible p99 ms",
            "max ms",
            "not visible",
            "drain after load s",
        ],
        [
            [
                r["run"],
                r["pings_per_s"],
                r["visible_ms_p50"],
                r["visible_ms_p99"],
                r["visible_ms_max"],
                r["not_visible"],
                r["drain_after_load_s"],
            ]
            for r in embedded
        ],
    )
    if profile:
        print_table(
            console,
            "Profile of the gateway alone (cProfile, top 15 by own time; the event loop's "
            "idle wait included)",
            ["function", "calls", "tottime s", "cumtime s", "own %"],
            [
                [p["function"], p["calls"], p["tottime_s"], p["cumtime_s"], p["own_pct"]]
                for p in profile
            ],
        )
    per_core = edge["pings_per_server_cpu_s"]
    ratios = {
        "gateway_alone_vs_bare_per_cpu_s": per_core / bare["pings_per_server_cpu_s"]
        if bare["pings_per_server_cpu_s"]
        else 0.0,
        "embedded_vs_gateway_alone_wall": embedded[0]["pings_per_s"] / edge["pings_per_s"]
        if edge["pings_per_s"]
        else 0.0,
    }
    print_table(
        console, "Ratios (same run)", ["ratio", "value"], [[k, v] for k, v in ratios.items()]
    )
    return BenchResult(
        params=asdict(params),
        results={
            "runs": rows,
            "gateway_alone_pings_per_core": per_core,
            "gateway_alone_pings_per_s_wall": edge["pings_per_s"],
            "embedded_sustained_pings_per_s": embedded[0]["pings_per_s"],
            "embedded_paced_visible_ms_p50": embedded[1]["visible_ms_p50"],
            "embedded_paced_visible_ms_p99": embedded[1]["visible_ms_p99"],
            "visibility": visible,
        },
        baselines={
            "bare_aiohttp_pings_per_core": bare["pings_per_server_cpu_s"],
            "bare_aiohttp_pings_per_s_wall": bare["pings_per_s"],
        },
        ratios=ratios,
        targets=[
            Target(
                "gateway alone: pings/s on one core, batches of 50",
                per_core,
                ">=",
                TARGET_PINGS_PER_CORE,
                "pings/s",
            )
        ],
        notes=[
            "pings/s per core = accepted pings / CPU seconds of the (single-threaded) server "
            "process; wall pings/s count from the first request after the warm-up",
            "visible = the request's track points are rows of track_points (polled through "
            "the instance's admin query route); a 202 already means raw_pings has them",
            "server, load generator and poller share the machine's cores (see the cores "
            "columns); the embedded server's CPU includes chDB's own threads",
        ],
        extra={"profile": profile},
    )


if __name__ == "__main__":
    serve_main()
