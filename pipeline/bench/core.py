"""Benchmark 1, processor core: pings/s through the whole per-device topology on one core.

Workload: the simulator's day for `devices` devices (the default roster's mix of honest reps,
spoofers, contact losses, ...), with the city's reference data topped up to 5,000 customers
and 500 fences (`pipeline.bench.world`). Uploads are taken from the stream in send order like
`pipeline.evaluate.runner.drive` does: each upload processed at the end of its 60 s step, then
the timers of every device with one due tick (`Topology.next_tick_ms`, kept per device as the
embedded runner and the Kafka worker keep it). A warm-up stretch of the morning
(`warm_minutes`, from the first upload) runs untimed so the timed `window_minutes` start from
realistic mid-morning states; each timed repeat restores those states from their JSON
snapshot.

Times are process CPU time, best of `repeats` (see `pipeline.bench.common`), wall time kept
beside. Everything that is not the topology is done before the clock starts: uploads are encoded as
the phone sends them (a JSON array), decoded and screened at the edge. Timed separately, on
the same uploads of the window:

- decode floor: `json.loads` of each body and a touch of every ping's lat/lon/ts: the least
  any Python pipeline must spend per ping;
- edge: `codec.decode_pings_json` + `Screener.screen` (what the gateway does per request);
- whole topology: `Topology.process` per upload + `Topology.tick` per due device per step,
  per ping into the topology (the accepted ones, and the ones the edge rejected as stamped in the
  future, which the validator corrects once it knows the phone's clock and processes in full:
  5 % of the window, from the simulated phone 10 minutes ahead);
- dwell alone: `DwellDetector.process`/`tick` replayed on exactly the calls the topology made
  (recorded in an untimed run), against trackintel's `generate_staypoints(method="sliding")`
  on the same fixes (its GeoDataFrame built untimed: trackintel's best case);
- fences alone: `FenceTracker.process`/`tick` replayed likewise at 500 fences and at 1,000
  (500 more generated in the same metro), against a naive loop that tests each fix with
  shapely's point-in-polygon against all 1,000 fence polygons (one vectorised
  `contains_xy` call over the fences per fix; no index).

A cProfile run of the first half of the window (not timed) gives the top functions by
cumulative time.
"""

from __future__ import annotations

import cProfile
import datetime as dt
import importlib.util
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import shapely

from pipeline import codec
from pipeline.bench import world
from pipeline.bench.common import (
    DAY,
    STEP_MS,
    BenchResult,
    Steps,
    Target,
    Timing,
    measure,
    print_table,
)
from pipeline.bench.procs import profile_rows
from pipeline.config import ProcessorSettings
from pipeline.devices import DeviceInfo
from pipeline.ingest import Screener
from pipeline.processors.base import Ctx, Result
from pipeline.processors.dwell import DwellDetector, DwellState
from pipeline.processors.fences import FenceState, FenceTracker
from pipeline.processors.validate import Validator
from pipeline.reference import ReferenceData
from pipeline.sim import build_city, simulate
from pipeline.topology import DeviceBatch, PipelineState, Topology

NAME = "core"
TITLE = "Processor core: the per-device topology on one core"


@dataclass(frozen=True, slots=True)
class Params:
    devices: int = 1000
    customers: int = 5000
    fences: int = 500
    compare_fences: int = 1000  # fence processor vs the naive loop at this many fences
    metro_half_m: float = 12_000.0  # generated reference data: a 24 km square on the city
    warm_minutes: int = 20  # untimed: everything before this far into the work day
    window_minutes: int = 20  # timed
    repeats: int = 3
    naive_pings: int = 2000  # fixes the naive fence loop is timed on (per-fix cost)
    profile: bool = True
    seed: int = 1


SIZES = {
    "full": Params(),
    "quick": Params(devices=200, warm_minutes=10, window_minutes=10, repeats=2, naive_pings=300),
    "tiny": Params(devices=4, customers=400, fences=20, compare_fences=40, warm_minutes=10,
                   window_minutes=10, repeats=1, naive_pings=50, profile=True),
}  # fmt: skip


@dataclass(slots=True)
class EncodedUpload:
    now: int  # processing time: end of the upload's 60 s step
    device_id: str
    endpoint: str
    body: bytes  # what the phone sends
    records: int


# Steps of the window: (now, [(device_id, batch), ...]).
StepList = list[tuple[int, list[tuple[str, DeviceBatch]]]]


class _Recorder:
    """Stands in for a processor on one Topology instance: records each call the topology makes
    (device, points, ctx) and delegates, so the processor can later be replayed alone."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str, list[Any], Ctx, bool]] = []

    def process(self, state: Any, points: list[Any], ctx: Ctx, out: Result) -> None:
        self.calls.append(("p", ctx.device_id, list(points), ctx, False))
        self.inner.process(state, points, ctx, out)

    def tick(self, state: Any, ctx: Ctx, out: Result, final: bool = False) -> None:
        self.calls.append(("t", ctx.device_id, [], ctx, final))
        if isinstance(self.inner, DwellDetector):
            self.inner.tick(state, ctx, out, final=final)
        else:
            self.inner.tick(state, ctx, out)

    def __getattr__(self, name: str) -> Any:  # anything else the topology asks for
        return getattr(self.inner, name)


def _window_uploads(
    sim: Any, params: Params, workday_start_ms: int
) -> tuple[list[EncodedUpload], int, int, int]:
    """Encoded uploads up to the end of the window, plus (first_ms, warm_end, window_end).

    The warm-up holds everything sent before `warm_minutes` into the work day (the privacy
    filter drops what precedes the work hours at the edge)."""
    warm_end = workday_start_ms + params.warm_minutes * 60_000
    end = warm_end + params.window_minutes * 60_000
    uploads: list[EncodedUpload] = []
    first_ms = 0
    for upload in sim.iter_uploads():  # lazy: the rest of the day is never materialised
        if upload.send_ms >= end:
            break
        first_ms = first_ms or upload.send_ms
        now = (upload.send_ms // STEP_MS + 1) * STEP_MS
        body = json.dumps(upload.records).encode()
        uploads.append(
            EncodedUpload(now, upload.device_id, upload.endpoint, body, len(upload.records))
        )
    return uploads, first_ms, warm_end, end


def _screen(
    screener: Screener, devices: dict[str, DeviceInfo], uploads: list[EncodedUpload]
) -> list[tuple[int, str, DeviceBatch]]:
    """Decode and screen as the gateway does per request."""
    out = []
    for u in uploads:
        device = devices[u.device_id]
        ids = {"org_id": device.org_id, "device_id": device.device_id, "received_ms": u.now}
        if u.endpoint == "pings":
            pings, errors = codec.decode_pings_json(u.body, **ids)
            screened = screener.screen(device, u.now, pings, [], errors, "bench")
        else:
            states, errors = codec.decode_states_json(u.body, **ids)
            screened = screener.screen(device, u.now, [], states, errors, "bench")
        out.append((u.now, u.device_id, screened.batch))
    return out


def _decode_floor(uploads: list[EncodedUpload]) -> float:
    """The floor: parse each body and touch every ping."""
    total = 0.0
    for u in uploads:
        if u.endpoint != "pings":
            continue
        for record in json.loads(u.body):
            total += record["lat"] + record["lon"] + record["ts_ms"]
    return total


def _steps(screened: list[tuple[int, str, DeviceBatch]]) -> StepList:
    by_step: dict[int, list[tuple[str, DeviceBatch]]] = defaultdict(list)
    for now, device_id, batch in screened:
        by_step[now].append((device_id, batch))
    return sorted(by_step.items())


def run_window(
    topology: Topology,
    ref: ReferenceData,
    states: dict[str, PipelineState],
    steps: StepList,
    devices: dict[str, DeviceInfo],
) -> dict[str, Any]:
    """Drives the topology over the steps like `evaluate.runner.drive`; returns counts and
    the CPU time spent in ticks (two clock reads per step: negligible). Like the real drivers
    it keeps each device's `Topology.next_tick_ms` and ticks only the devices due (the same
    facts as ticking every device: tests/test_topology.py)."""
    tick_s = 0.0
    facts = 0
    clock = time.process_time
    due = {device_id: topology.next_tick_ms(state) for device_id, state in states.items()}
    for now, items in steps:
        for device_id, batch in items:
            state = states.get(device_id)
            if state is None:
                state = states[device_id] = topology.initial_state()
            device = devices[device_id]
            ctx = topology.context(ref, device.org_id, device_id, now)
            facts += topology.process(state, batch, ctx).fact_count()
            due[device_id] = topology.next_tick_ms(state)
        started = clock()
        for device_id, state in states.items():
            if due[device_id] > now:
                continue  # no timer due: the real drivers skip it too
            device = devices[device_id]
            ctx = topology.context(ref, device.org_id, device_id, now)
            facts += topology.tick(state, ctx).fact_count()
            due[device_id] = topology.next_tick_ms(state)
        tick_s += clock() - started
    return {"tick_s": tick_s, "facts": facts}


def _replay(processor: Any, calls: list[Any], states: dict[str, Any], new: Callable[[], Any]
            ) -> int:  # fmt: skip
    """One processor alone on the calls the topology made."""
    facts = 0
    dwell = isinstance(processor, DwellDetector)
    for kind, device_id, points, ctx, final in calls:
        state = states.get(device_id)
        if state is None:
            state = states[device_id] = new()
        out = Result()
        if kind == "p":
            processor.process(state, points, ctx, out)
        elif dwell:
            processor.tick(state, ctx, out, final=final)
        else:
            processor.tick(state, ctx, out)
        facts += out.fact_count()
    return facts


def _naive_fences(geoms: np.ndarray, lats: list[float], lons: list[float]) -> int:
    """Per fix, point-in-polygon against every fence (no index): one shapely call per fix,
    vectorised over the fences (the stronger naive baseline; the target uses it)."""
    hits = 0
    for lat, lon in zip(lats, lons, strict=True):
        hits += int(np.count_nonzero(shapely.contains_xy(geoms, lon, lat)))
    return hits


def _naive_fences_loop(geoms: list[Any], lats: list[float], lons: list[float]) -> int:
    """Per fix and per fence, `polygon.contains(point)`: the most literal naive loop
    (informational only)."""
    hits = 0
    for lat, lon in zip(lats, lons, strict=True):
        point = shapely.Point(lon, lat)
        for geom in geoms:
            if geom.contains(point):
                hits += 1
    return hits


def run(params: Params, steps_ui: Steps) -> BenchResult:
    console = steps_ui.console
    settings = ProcessorSettings()
    notes: list[str] = []

    with steps_ui.step(f"simulating {params.devices:,} devices' day"):
        city = build_city()
        sim = simulate(city, reps=params.devices, day=DAY, seed=params.seed)
        devices = {d.device_id: DeviceInfo(d.org_id, d.device_id, d.name, d.schedule)
                   for d in sim.devices}  # fmt: skip
    with steps_ui.step("reference data (customers, fences)"):
        ref = world.reference(city, sim, customers=params.customers, fences=params.fences,
                              half_m=params.metro_half_m, seed=params.seed)  # fmt: skip
        more = world.synthetic_fences(
            params.compare_fences - params.fences, org_id=city.org_id, center=city.center,
            half_m=params.metro_half_m, seed=params.seed + 1, prefix="bench-g",
        )  # fmt: skip
        ref_cmp = world.reference(city, sim, customers=params.customers, fences=params.fences,
                                  half_m=params.metro_half_m, seed=params.seed,
                                  more_fences=more)  # fmt: skip
    with steps_ui.step("encoding uploads as phones send them"):
        tz = ZoneInfo(city.tz)
        workday = dt.datetime.combine(DAY, dt.time(8, 0), tz)  # the simulated work hours
        uploads, first_ms, warm_end, end = _window_uploads(
            sim, params, int(workday.timestamp() * 1000)
        )
    warm = [u for u in uploads if u.now <= warm_end]
    timed = [u for u in uploads if u.now > warm_end]
    window_local = [dt.datetime.fromtimestamp(t / 1000, tz).strftime("%H:%M")
                    for t in (first_ms, warm_end, end)]  # fmt: skip

    screener = Screener(Validator(settings.validate), privacy=settings.privacy.enabled)
    with steps_ui.step("screening at the edge (untimed pass)"):
        warm_steps = _steps(_screen(screener, devices, warm))
        timed_steps = _steps(_screen(screener, devices, timed))
    offered = sum(u.records for u in timed if u.endpoint == "pings")
    accepted = sum(len(b.pings) for _, items in timed_steps for _, b in items)
    # What the topology processes: the accepted pings and those the edge held back as stamped
    # in the future (a phone clock ahead), which the validator corrects and passes on.
    into_topology = accepted + sum(
        len(b.future_pings) for _, items in timed_steps for _, b in items
    )
    if not accepted:
        raise RuntimeError("the timed window holds no accepted pings; widen it")

    with steps_ui.step("decode floor and edge screener (timed)"):
        t_floor = measure(lambda _: _decode_floor(timed), params.repeats)
        t_edge = measure(lambda _: _screen(screener, devices, timed), params.repeats)

    with steps_ui.step("warm-up: the morning before the window (untimed)"):
        topology = Topology(settings)
        warm_states: dict[str, PipelineState] = {}
        run_window(topology, ref, warm_states, warm_steps, devices)
        snapshot = {d: json.dumps(s.to_dict()) for d, s in warm_states.items()}

    def restored() -> dict[str, PipelineState]:
        return {d: PipelineState.from_dict(json.loads(s)) for d, s in snapshot.items()}

    tick_runs: list[float] = []

    def whole(states: dict[str, PipelineState]) -> None:
        tick_runs.append(run_window(topology, ref, states, timed_steps, devices)["tick_s"])

    with steps_ui.step(f"whole topology x{params.repeats} (timed)"):
        t_topo = measure(whole, params.repeats, setup=restored)
    tick_s = tick_runs[t_topo.best_index]

    with steps_ui.step("recording the dwell and fence calls (untimed)"):
        rec_topology = Topology(settings)
        dwell_rec = _Recorder(rec_topology.dwell)
        fence_rec = _Recorder(rec_topology.fences)
        rec_topology.dwell = dwell_rec  # type: ignore[assignment]
        rec_topology.fences = fence_rec  # type: ignore[assignment]
        facts_run = run_window(rec_topology, ref, restored(), timed_steps, devices)
    dwell_calls, fence_calls = dwell_rec.calls, fence_rec.calls
    dwell_points = [pt for c in dwell_calls for pt in c[2]]
    fence_points = [pt for c in fence_calls for pt in c[2]]

    dwell = DwellDetector(settings.dwell)
    fences = FenceTracker(settings.fences)

    def part(name: str) -> Callable[[], dict[str, Any]]:
        parsed = {d: json.loads(s)[name] for d, s in snapshot.items()}
        cls = {"dwell": DwellState, "fences": FenceState}[name]
        return lambda: {d: cls.from_dict(json.loads(json.dumps(v))) for d, v in parsed.items()}

    with steps_ui.step(f"dwell alone x{params.repeats} (timed)"):
        t_dwell = measure(lambda s: _replay(dwell, dwell_calls, s, dwell.initial_state),
                          params.repeats, setup=part("dwell"))  # fmt: skip
    t_trackintel = _trackintel(dwell_points, params.repeats, steps_ui, notes)

    cmp_calls = [
        (k, d, pts, Ctx(c.org_id, c.device_id, c.now_ms, ref_cmp, c.schedule), f)
        for k, d, pts, c, f in fence_calls
    ]
    with steps_ui.step(f"fences alone at {params.fences} and {params.compare_fences} (timed)"):
        # One untimed pass first: the index computes fence depths on first use (a memo).
        _replay(fences, cmp_calls, part("fences")(), fences.initial_state)
        t_fence = measure(lambda s: _replay(fences, fence_calls, s, fences.initial_state),
                          params.repeats, setup=part("fences"))  # fmt: skip
        t_fence_cmp = measure(lambda s: _replay(fences, cmp_calls, s, fences.initial_state),
                              params.repeats, setup=part("fences"))  # fmt: skip

    stride = max(1, len(fence_points) // max(1, params.naive_pings))
    sample = fence_points[::stride][: params.naive_pings]
    geoms = np.array([f.geometry for f in ref_cmp.fences.fences], dtype=object)
    lats, lons = [p.lat for p in sample], [p.lon for p in sample]
    with steps_ui.step(f"naive point-in-polygon, {len(sample):,} fixes x {len(geoms):,} fences"):
        t_naive = measure(lambda _: _naive_fences(geoms, lats, lons), params.repeats)
        few = max(1, len(sample) // 10)
        geom_list = geoms.tolist()
        t_loop = measure(
            lambda _: _naive_fences_loop(geom_list, lats[:few], lons[:few]), params.repeats
        )

    profile: list[dict[str, Any]] = []
    if params.profile:
        # The first half of the window: cProfile makes Python code several times slower.
        half = timed_steps[: max(1, len(timed_steps) // 2)]
        with steps_ui.step("profiling the first half of the window (cProfile, untimed)"):
            states = restored()
            profiler = cProfile.Profile()
            profiler.enable()
            run_window(topology, ref, states, half, devices)
            profiler.disable()
            profile = profile_rows(profiler, by="cum")

    # -- figures ------------------------------------------------------------------------------
    topo_rate = t_topo.rate(into_topology)
    floor_rate = t_floor.rate(offered)
    edge_rate = t_edge.rate(offered)
    dwell_rate = t_dwell.rate(len(dwell_points))
    fence_us = t_fence.per_item_us(len(fence_points))
    fence_cmp_us = t_fence_cmp.per_item_us(len(fence_points))
    naive_us = t_naive.per_item_us(len(sample))
    ti_rate = t_trackintel.rate(len(dwell_points)) if t_trackintel else None

    def row(name: str, t: Timing | None, n: int, what: str) -> dict[str, Any]:
        if t is None:
            return {"step": name, "available": False}
        return {"step": name, "items": n, "items_are": what, "per_s": t.rate(n),
                "us_per_item": t.per_item_us(n), **t.to_dict()}  # fmt: skip

    measured = [
        row("decode floor (json.loads + touch)", t_floor, offered, "pings offered"),
        row("edge: decode + Screener", t_edge, offered, "pings offered"),
        row("whole topology (process + ticks)", t_topo, into_topology,
            "pings into the topology: accepted + future-stamped ones it corrects"),
        row("dwell alone", t_dwell, len(dwell_points), "fixes into dwell"),
        row("trackintel generate_staypoints", t_trackintel, len(dwell_points),
            "fixes into dwell"),
        row(f"fences alone, {params.fences} fences", t_fence, len(fence_points),
            "fixes into fences"),
        row(f"fences alone, {params.compare_fences} fences", t_fence_cmp, len(fence_points),
            "fixes into fences"),
        row(f"naive point-in-polygon, {len(geoms)} fences", t_naive, len(sample), "fixes"),
        row(f"  (info) per-fence Python loop, {len(geoms)} fences", t_loop, few, "fixes"),
    ]  # fmt: skip
    print_table(
        console,
        f"{TITLE}: {params.devices:,} devices, {len(ref.customers):,} customers, "
        f"{len(ref.fences):,} fences; window {window_local[1]}-{window_local[2]} "
        f"(warm-up from {window_local[0]})",
        ["step", "items", "per s", "µs/item", "best s", "median s", "wall s"],
        [
            [m["step"], m.get("items", "-"), m.get("per_s", "n/a"), m.get("us_per_item", "-"),
             m.get("best_s", "-"), m.get("median_s", "-"), m.get("wall_of_best_s", "-")]
            for m in measured
        ],
        caption=f"CPU time, best of {params.repeats} (wall time of that run beside it); ticks: "
        f"{tick_s:.2f} s CPU of the best topology run",
    )  # fmt: skip

    ratios = {
        "topology_vs_decode_floor": topo_rate / floor_rate,
        "edge_vs_decode_floor": edge_rate / floor_rate,
        "naive_fence_vs_fences_alone_at_compare": naive_us / fence_cmp_us if fence_cmp_us else 0,
        "fences_alone_compare_vs_base": fence_cmp_us / fence_us if fence_us else 0,
    }
    targets = [
        Target("whole topology, one core", topo_rate, ">=", 100_000, "pings/s"),
        Target(f"naive fence loop / fences alone at {params.compare_fences} fences",
               ratios["naive_fence_vs_fences_alone_at_compare"], ">=", 30.0, "x"),
    ]  # fmt: skip
    if ti_rate is not None:
        ratios["dwell_vs_trackintel"] = dwell_rate / ti_rate
        targets.append(
            Target("dwell alone / trackintel staypoints", ratios["dwell_vs_trackintel"], ">=",
                   1.0, "x")
        )  # fmt: skip
    else:
        notes.append("trackintel not installed (pip install -e '.[eval]'): no dwell target")
    print_table(console, "Ratios (same run)", ["ratio", "value"],
                [[k, v] for k, v in ratios.items()])  # fmt: skip
    if profile:
        print_table(
            console,
            "Profile of the whole topology, first half of the window (cProfile, top 15 by "
            "cumulative time)",
            ["function", "calls", "tottime s", "cumtime s", "cum %"],
            [[p["function"], p["calls"], p["tottime_s"], p["cumtime_s"], p["cum_pct"]]
             for p in profile],
        )  # fmt: skip
    notes.append(
        "the whole topology, dwell alone and fences alone start from the same warm-up "
        "snapshot each repeat; trackintel gets the fixes dwell got, its GeoDataFrame built "
        "untimed; the naive loop tests a strided sample of the fixes fences got"
    )
    return BenchResult(
        params=asdict(params),
        results={
            "window_local": {
                "first_upload": window_local[0],
                "start": window_local[1],
                "end": window_local[2],
            },
            "uploads_timed": len(timed),
            "uploads_warm": len(warm),
            "pings_offered": offered,
            "pings_accepted": accepted,
            "pings_into_topology": into_topology,
            "facts": facts_run["facts"],
            "customers": len(ref.customers),
            "fences": len(ref.fences),
            "fixes_into_dwell": len(dwell_points),
            "fixes_into_fences": len(fence_points),
            "topology_pings_per_s": topo_rate,
            "topology_tick_s": tick_s,
            "edge_pings_per_s": edge_rate,
            "dwell_fixes_per_s": dwell_rate,
            "fences_us_per_fix": fence_us,
            "fences_compare_us_per_fix": fence_cmp_us,
            "steps": measured,
        },
        baselines={
            "decode_floor_pings_per_s": floor_rate,
            "trackintel_fixes_per_s": ti_rate,
            "naive_fence_us_per_fix": naive_us,
            "naive_fence_loop_us_per_fix": t_loop.per_item_us(few),
            "naive_fences": len(geoms),
            "naive_sample": len(sample),
        },
        ratios=ratios,
        targets=targets,
        notes=notes,
        extra={"profile": profile},
    )


def _trackintel(points: list[Any], repeats: int, steps_ui: Steps, notes: list[str]
                ) -> Timing | None:  # fmt: skip
    if importlib.util.find_spec("trackintel") is None or not points:
        return None
    import warnings

    import geopandas as gpd
    import pandas as pd
    from trackintel import Positionfixes
    from trackintel.preprocessing import generate_staypoints

    users: dict[str, int] = {}
    ordered = sorted(points, key=lambda p: (p.device_id, p.ts_ms))
    frame = gpd.GeoDataFrame(
        {
            "user_id": [users.setdefault(p.device_id, len(users)) for p in ordered],
            "tracked_at": pd.to_datetime([p.ts_ms for p in ordered], unit="ms", utc=True),
        },
        geometry=gpd.points_from_xy([p.lon for p in ordered], [p.lat for p in ordered]),
        crs="EPSG:4326",
    )

    def staypoints(pfs: Any) -> None:
        with warnings.catch_warnings():  # "no staypoints" notices are expected
            warnings.simplefilter("ignore")
            generate_staypoints(pfs, method="sliding", distance_metric="haversine",
                                dist_threshold=60.0, time_threshold=5.0, gap_threshold=15.0,
                                include_last=True)  # fmt: skip

    with steps_ui.step(f"trackintel generate_staypoints x{repeats} (timed)"):
        return measure(staypoints, repeats, setup=lambda: Positionfixes(frame.copy()))
