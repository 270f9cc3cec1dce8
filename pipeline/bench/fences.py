"""Benchmark 2, fence scaling: cost per fix of the fence processor as fences grow 10 -> 100k.

Layout: fences at a constant density (`density_per_km2`, default 1 per km²: a metro's
customer sites, depots, offices and a few territories; the shape mix of
`pipeline.bench.world`) over a square centred on the simulated city whose side grows with
their number (10 fences: 3.2 km; 100,000: 316 km, a region). A fix therefore meets about the
same number of nearby fences at every size, as a device in one metro of a national fleet
does, and what grows is only the index. Fixes: the smoothed points the topology hands the fence
processor for `devices` simulated reps over `window_minutes` (recorded once, untimed); at the
small sizes, where the square does not cover the whole city, only fixes inside the square are
used (so the density they see stays the same).

Measured per size (CPU time, best of `repeats`): the fence processor alone
(`FenceTracker.process` on the recorded per-upload batches, fresh state each repeat, after one
untimed pass that fills the index's fence-depth memo), the `FenceIndex.near_many` lookups alone
on the same batches, how many fences a fix is near, the build time and the memory of the fences
plus their index (RSS delta after handing freed memory back to the OS: it includes GEOS
geometry, which tracemalloc cannot see). For contrast, up to `naive_max` fences, the naive
per-fix point-in-polygon loop of benchmark 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.bench import world
from pipeline.bench.common import (
    DAY,
    BenchResult,
    Steps,
    Target,
    measure,
    mib,
    print_table,
    rss_bytes,
    trim_memory,
)
from pipeline.bench.core import (
    _naive_fences,
    _Recorder,
    _replay,
    _screen,
    _steps,
    _window_uploads,
    run_window,
)
from pipeline.config import ProcessorSettings
from pipeline.devices import DeviceInfo
from pipeline.geo import M_PER_DEG_LAT
from pipeline.ingest import Screener
from pipeline.processors.base import Ctx
from pipeline.processors.fences import FenceTracker
from pipeline.processors.validate import Validator
from pipeline.reference import FenceIndex, ReferenceData
from pipeline.sim import build_city, simulate
from pipeline.topology import Topology

NAME = "fences"
TITLE = "Fence scaling: cost per fix as fences grow"


@dataclass(frozen=True, slots=True)
class Params:
    levels: tuple[int, ...] = (10, 100, 1_000, 10_000, 100_000)
    density_per_km2: float = 1.0
    devices: int = 40
    window_minutes: int = 60  # of fixes, from the start of the work day
    repeats: int = 3
    naive_max: int = 10_000
    naive_fixes: int = 200
    seed: int = 1


SIZES = {
    "full": Params(),
    "quick": Params(devices=20, window_minutes=40, repeats=2, naive_max=1_000,
                    naive_fixes=100),
    "tiny": Params(levels=(10, 100, 1_000), devices=3, window_minutes=20, repeats=1,
                   naive_max=100, naive_fixes=20),
}  # fmt: skip


def _record_fence_calls(params: Params, steps_ui: Steps) -> tuple[Any, list[Any]]:
    """The city, and the fence processor's calls of a simulated stretch of the work day."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from pipeline.bench.core import Params as CoreParams

    settings = ProcessorSettings()
    with steps_ui.step(f"simulating {params.devices} devices and recording the fence input"):
        city = build_city()
        sim = simulate(city, reps=params.devices, day=DAY, seed=params.seed)
        devices = {d.device_id: DeviceInfo(d.org_id, d.device_id, d.name, d.schedule)
                   for d in sim.devices}  # fmt: skip
        workday = dt.datetime.combine(DAY, dt.time(8, 0), ZoneInfo(city.tz))
        window = CoreParams(warm_minutes=0, window_minutes=params.window_minutes)
        uploads, *_ = _window_uploads(sim, window, int(workday.timestamp() * 1000))
        screener = Screener(Validator(settings.validate), privacy=settings.privacy.enabled)
        steps = _steps(_screen(screener, devices, uploads))
        topology = Topology(settings)
        recorder = _Recorder(topology.fences)
        topology.fences = recorder  # type: ignore[assignment]
        ref = ReferenceData(schedules={(d.org_id, d.device_id): d.schedule for d in sim.devices})
        run_window(topology, ref, {}, steps, devices)
    return city, [c for c in recorder.calls if c[0] == "p"]


def _inside_square(city: Any, half_m: float, points: list[Any]) -> list[Any]:
    lat0, lon0 = city.center
    m_per_deg_lon = M_PER_DEG_LAT * math.cos(math.radians(lat0))
    return [
        p
        for p in points
        if abs((p.lat - lat0) * M_PER_DEG_LAT) <= half_m
        and abs((p.lon - lon0) * m_per_deg_lon) <= half_m
    ]


def run(params: Params, steps_ui: Steps) -> BenchResult:
    console = steps_ui.console
    city, calls = _record_fence_calls(params, steps_ui)
    tracker = FenceTracker(ProcessorSettings().fences)
    rows: list[dict[str, Any]] = []
    for n in params.levels:
        half_m = math.sqrt(n / params.density_per_km2) * 1000.0 / 2.0
        trim_memory()
        rss_before = rss_bytes()
        with steps_ui.step(f"{n:,} fences: generating and indexing"):
            started = time.perf_counter()
            fences = world.synthetic_fences(
                n, org_id=city.org_id, center=city.center, half_m=half_m, seed=params.seed
            )
            generated_s = time.perf_counter() - started
            index = FenceIndex(fences)
            build_s = time.perf_counter() - started - generated_s
        del fences  # the index holds them
        trim_memory()
        index_bytes = rss_bytes() - rss_before
        ref = ReferenceData(fences=index)
        level_calls = []
        for _, device_id, points, ctx, _ in calls:
            kept = _inside_square(city, half_m, points)
            if kept:
                new_ctx = Ctx(ctx.org_id, device_id, ctx.now_ms, ref, ctx.schedule)
                level_calls.append(("p", device_id, kept, new_ctx, False))
        fixes = sum(len(c[2]) for c in level_calls)
        lookups = [
            ([p.lat for p in pts], [p.lon for p in pts], [tracker.margin_for(p.accuracy_m)
             for p in pts], ctx.org_id)
            for _, _, pts, ctx, _ in level_calls
        ]  # fmt: skip

        def lookup_all(_: Any, index: FenceIndex = index, lookups: list[Any] = lookups) -> int:
            return sum(
                len(near)
                for lats, lons, margins, org in lookups
                for near in index.near_many(lats, lons, margins, org_id=org)
            )

        with steps_ui.step(f"{n:,} fences: processor and lookups on {fixes:,} fixes (timed)"):
            _replay(tracker, level_calls, {}, tracker.initial_state)  # fills the depth memo
            t_proc = measure(
                lambda s, c=level_calls: _replay(tracker, c, s, tracker.initial_state),
                params.repeats,
                setup=dict,
            )
            near_total = lookup_all(None)
            t_index = measure(lookup_all, params.repeats)
        row: dict[str, Any] = {
            "fences": n,
            "square_km": 2 * half_m / 1000,
            "fixes": fixes,
            "near_per_fix": near_total / fixes if fixes else 0.0,
            "processor_us_per_fix": t_proc.per_item_us(fixes),
            "index_us_per_fix": t_index.per_item_us(fixes),
            "processor": t_proc.to_dict(),
            "index": t_index.to_dict(),
            "generate_s": generated_s,
            "build_s": build_s,
            "index_rss_bytes": index_bytes,
            "index_bytes_per_fence": index_bytes / n,
        }
        if n <= params.naive_max:
            every = [p for c in level_calls for p in c[2]]
            sample = every[:: max(1, len(every) // params.naive_fixes)][: params.naive_fixes]
            geoms = np.array([f.geometry for f in index.fences], dtype=object)
            lats, lons = [p.lat for p in sample], [p.lon for p in sample]
            t_naive = measure(lambda _, g=geoms, a=lats, b=lons: _naive_fences(g, a, b),
                              params.repeats)  # fmt: skip
            row["naive_us_per_fix"] = t_naive.per_item_us(len(sample))
        rows.append(row)
        del index, ref, level_calls, lookups

    print_table(
        console,
        f"{TITLE}: {params.density_per_km2:g} fence/km², fixes of {params.devices} simulated "
        f"reps over {params.window_minutes} min",
        ["fences", "square km", "fixes", "near/fix", "processor µs/fix", "lookup µs/fix",
         "naive µs/fix", "build s", "index MiB", "bytes/fence"],
        [
            [r["fences"], r["square_km"], r["fixes"], r["near_per_fix"],
             r["processor_us_per_fix"], r["index_us_per_fix"], r.get("naive_us_per_fix", "-"),
             r["build_s"], mib(r["index_rss_bytes"]), r["index_bytes_per_fence"]]
            for r in rows
        ],
        caption=f"CPU time, best of {params.repeats}; memory: RSS delta of the fences and their "
        "index",
    )  # fmt: skip

    by_n = {r["fences"]: r for r in rows}
    ratios: dict[str, float] = {}
    targets: list[Target] = []
    high = max(by_n)
    low = 100 if 100 in by_n else min(by_n)
    for key, column in (("processor", "processor_us_per_fix"), ("lookup", "index_us_per_fix")):
        if by_n[low][column] > 0:  # a level may hold no fix (tiny runs)
            ratios[f"{key}_{high}_vs_{low}"] = by_n[high][column] / by_n[low][column]
    ratios[f"fences_{high}_vs_{low}"] = high / low
    if high == 100_000 and low == 100 and "processor_100000_vs_100" in ratios:
        targets.append(
            Target("fence cost per fix at 100k / at 100 fences",
                   ratios["processor_100000_vs_100"], "<=", 3.0, "x")
        )  # fmt: skip
    print_table(console, "Ratios (same run)", ["ratio", "value"],
                [[k, v] for k, v in ratios.items()])  # fmt: skip
    return BenchResult(
        params=asdict(params),
        results={"levels": rows},
        baselines={"naive_us_per_fix": {r["fences"]: r.get("naive_us_per_fix") for r in rows}},
        ratios=ratios,
        targets=targets,
        notes=[
            "constant fence density over a square growing with the number of fences; fixes "
            "outside the square are left out at the small sizes",
            "index memory is an RSS delta (fences, GEOS geometry, STRtree, prepared metric "
            "copies), measured after malloc_trim",
        ],
    )
