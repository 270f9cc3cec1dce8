"""Benchmark 3, state scaling: memory per active device, and what a rebalance costs.

Realistic mid-day states without simulating 100,000 phones: `templates` simulated devices (the
default roster's mix of profiles) run through the topology from the start of their day until
`midday_minutes` into the work day. Device i of N then starts from a copy of template i mod T
(restored from its JSON, as after a rebalance) under its own id and processes the first
`follow_pings` pings of its template's next upload (or its state events) through the topology,
so every state has been through real processing and has its own objects.

Measured at each size N (sizes in increasing order; the population grows in place):
- JSON bytes per device: the snapshot's size over the devices (mean), and percentiles of each
  sampled device's compact `json.dumps(state.to_dict())`;
- Python heap per device (tracemalloc, on `heap_sample` devices spread evenly: tracing is
  slow) of the states restored from a snapshot, which is what a worker holds after a
  rebalance, and of their dict form (`to_dict()`), which is what the Faust worker's table
  holds (an RSS delta was tried and dropped: freed heap reuse made it meaningless);
- snapshot: serialising all states to one JSON document as the embedded runner's
  `save_snapshot` does; restore: parsing it and `PipelineState.from_dict` for every device (best
  of `repeats`, without tracemalloc).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import statistics
import tracemalloc
from dataclasses import asdict, dataclass
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.bench.common import (
    DAY,
    BenchResult,
    Steps,
    Target,
    measure,
    mib,
    print_table,
    trim_memory,
)
from pipeline.bench.core import Params as CoreParams
from pipeline.bench.core import _screen, _steps, _window_uploads, run_window
from pipeline.config import ProcessorSettings
from pipeline.devices import DeviceInfo
from pipeline.ingest import Screener
from pipeline.processors.validate import Validator
from pipeline.reference import ReferenceData
from pipeline.sim import build_city, simulate
from pipeline.topology import DeviceBatch, PipelineState, Topology

NAME = "state"
TITLE = "State scaling: memory per active device, snapshot and restore"


@dataclass(frozen=True, slots=True)
class Params:
    sizes: tuple[int, ...] = (10_000, 100_000)
    templates: int = 100
    midday_minutes: int = 150  # templates run until 10:30
    repeats: int = 2
    repeat_max: int = 20_000  # larger populations are snapshotted and restored once
    follow_pings: int = 6  # pings of the template's next upload each device processes
    heap_sample: int = 2_000  # devices whose heap tracemalloc measures
    seed: int = 1


SIZES = {
    "full": Params(),
    "quick": Params(sizes=(10_000,), templates=40, midday_minutes=90),
    "tiny": Params(sizes=(50, 200), templates=4, midday_minutes=30, repeats=1, heap_sample=100),
}


def _snapshot(live: dict[str, PipelineState], org_id: str) -> str:
    """All states as one JSON document, the way the embedded runner saves them."""
    return json.dumps(
        {
            "devices": [
                {"org_id": org_id, "device_id": device_id, "state": state.to_dict()}
                for device_id, state in live.items()
            ]
        },
        separators=(",", ":"),
    )


def _restore(text: str) -> dict[str, PipelineState]:
    return {
        item["device_id"]: PipelineState.from_dict(item["state"])
        for item in json.loads(text)["devices"]
    }


def _heap(build: Any) -> tuple[int, Any]:
    """Bytes the object returned by `build()` keeps on the Python heap (tracemalloc)."""
    trim_memory()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        return tracemalloc.get_traced_memory()[0] - before, kept
    finally:
        tracemalloc.stop()


def run(params: Params, steps_ui: Steps) -> BenchResult:
    console = steps_ui.console
    settings = ProcessorSettings()
    topology = Topology(settings)
    with steps_ui.step(f"{params.templates} template devices until mid-day (untimed)"):
        city = build_city()
        sim = simulate(city, reps=params.templates, day=DAY, seed=params.seed)
        devices = {d.device_id: DeviceInfo(d.org_id, d.device_id, d.name, d.schedule)
                   for d in sim.devices}  # fmt: skip
        workday = dt.datetime.combine(DAY, dt.time(8, 0), ZoneInfo(city.tz))
        window = CoreParams(warm_minutes=params.midday_minutes, window_minutes=10)
        uploads, _, midday, _ = _window_uploads(sim, window, int(workday.timestamp() * 1000))
        screener = Screener(Validator(settings.validate), privacy=settings.privacy.enabled)
        before = _steps(_screen(screener, devices, [u for u in uploads if u.now <= midday]))
        after = _screen(screener, devices, [u for u in uploads if u.now > midday])
        ref = ReferenceData(schedules={(d.org_id, d.device_id): d.schedule for d in sim.devices})
        template_states: dict[str, PipelineState] = {}
        run_window(topology, ref, template_states, before, devices)
        # Each template's next upload after mid-day (its pings if any, else its states).
        follow: dict[str, tuple[int, DeviceBatch]] = {}
        for now, device_id, batch in after:
            if device_id not in follow or (batch.pings and not follow[device_id][1].pings):
                follow[device_id] = (now, batch)
    templates = sorted(template_states)
    template_json = [json.dumps(template_states[t].to_dict()) for t in templates]

    live: dict[str, PipelineState] = {}
    rows: list[dict[str, Any]] = []
    for n in sorted(params.sizes):
        grow = n - len(live)
        text_step = f"{n:,} devices: {params.follow_pings} pings each through the topology"
        with steps_ui.step(text_step, total=grow) as advance:
            for i in range(len(live), n):
                t = i % len(templates)
                template = templates[t]
                device_id = f"bench-{i:07d}"
                state = PipelineState.from_dict(json.loads(template_json[t]))
                if template in follow:
                    now, batch = follow[template]
                    batch = dataclasses.replace(batch, pings=batch.pings[: params.follow_pings])
                    ctx = topology.context(ref, city.org_id, template, now)
                    ctx.device_id = device_id  # the template's schedule, this device's id
                    topology.process(state, batch, ctx)
                live[device_id] = state
                if i % 1000 == 999:
                    advance(1000)
        repeats = params.repeats if n <= params.repeat_max else 1
        with steps_ui.step(f"{n:,} devices: snapshot and restore x{repeats} (timed)"):
            kept: dict[str, str] = {}  # the last snapshot, reused for restore and sizes

            def snapshot(_: Any, kept: dict[str, str] = kept) -> None:
                kept.pop("text", None)  # free the previous one before making the next
                kept["text"] = _snapshot(live, city.org_id)

            t_snap = measure(snapshot, repeats)
            text = kept.pop("text")
            t_restore = measure(lambda _, text=text: _restore(text), repeats)
        with steps_ui.step(f"{n:,} devices: sizes and memory"):
            # tracemalloc slows allocation several times over: the per-device heap is taken on
            # an even sample of the devices (it does not depend on how many there are).
            step = max(1, n // params.heap_sample)
            sample = dict(list(live.items())[::step])
            sample_text = _snapshot(sample, city.org_id)
            heap_restored, restored = _heap(lambda t=sample_text: _restore(t))
            del restored
            heap_dicts, dicts = _heap(lambda sample=sample: [s.to_dict() for s in sample.values()])
            del dicts
            blobs = [len(json.dumps(s.to_dict(), separators=(",", ":")))
                     for s in sample.values()]  # fmt: skip
            # Which processor's state the bytes are in (mean over the sample).
            by_part: dict[str, float] = {}
            for state in sample.values():
                for part, value in state.to_dict().items():
                    size = len(json.dumps(value, separators=(",", ":")))
                    by_part[part] = by_part.get(part, 0.0) + size / len(sample)
        rows.append(
            {
                "devices": n,
                "json_bytes_mean": len(text) / n,  # the snapshot, per device
                "json_bytes_p50": statistics.median(blobs),
                "json_bytes_p95": sorted(blobs)[int(0.95 * (len(blobs) - 1))],
                "json_bytes_max": max(blobs),
                "snapshot_bytes": len(text),
                "sampled_devices": len(sample),
                "json_bytes_by_part": by_part,
                "heap_bytes_per_device": heap_restored / len(sample),
                "heap_dict_form_bytes_per_device": heap_dicts / len(sample),
                "snapshot_s": t_snap.best_s,
                "restore_s": t_restore.best_s,
                "snapshot": t_snap.to_dict(),
                "restore": t_restore.to_dict(),
                "restore_devices_per_s": t_restore.rate(n),
            }
        )
        del text

    print_table(
        console,
        f"{TITLE}: states from {len(templates)} simulated devices at "
        f"{(workday + dt.timedelta(minutes=params.midday_minutes)).strftime('%H:%M')}, "
        f"plus {params.follow_pings} pings each",
        ["devices", "JSON B mean", "p50", "p95", "max", "heap B/dev", "dict-form B/dev",
         "snapshot s", "restore s", "snapshot MiB"],
        [
            [r["devices"], r["json_bytes_mean"], r["json_bytes_p50"], r["json_bytes_p95"],
             r["json_bytes_max"], r["heap_bytes_per_device"],
             r["heap_dict_form_bytes_per_device"], r["snapshot_s"],
             r["restore_s"], mib(r["snapshot_bytes"])]
            for r in rows
        ],
        caption=f"snapshot/restore: CPU time, best of {params.repeats} up to {params.repeat_max:,} "
        f"devices, one run above; JSON mean = snapshot bytes / devices, percentiles and heap "
        f"(tracemalloc) on {params.heap_sample:,} sampled devices",
    )  # fmt: skip
    big = rows[-1]
    ratios = {
        "heap_vs_json_bytes": big["heap_bytes_per_device"] / big["json_bytes_mean"],
        "restore_s_per_1k_devices": 1000 * big["restore_s"] / big["devices"],
        "snapshot_s_per_1k_devices": 1000 * big["snapshot_s"] / big["devices"],
    }
    if len(rows) > 1:
        small = rows[0]
        ratios["restore_time_growth_vs_devices"] = (big["restore_s"] / small["restore_s"]) / (
            big["devices"] / small["devices"]
        )
    targets = [
        Target(f"state JSON per active device at {big['devices']:,}", big["json_bytes_mean"],
               "<=", 2048, "B"),
        Target(f"state heap per active device at {big['devices']:,}",
               big["heap_bytes_per_device"], "<=", 2048, "B"),
    ]  # fmt: skip
    print_table(
        console,
        f"JSON bytes per device by processor state ({big['devices']:,} devices, sampled)",
        ["state", "bytes"],
        [[k, v] for k, v in sorted(big["json_bytes_by_part"].items(), key=lambda kv: -kv[1])],
    )
    print_table(console, "Ratios (same run)", ["ratio", "value"],
                [[k, v] for k, v in ratios.items()])  # fmt: skip
    return BenchResult(
        params=asdict(params),
        results={"sizes": rows, "templates": len(templates)},
        ratios=ratios,
        targets=targets,
        notes=[
            "heap: tracemalloc of the states restored from the snapshot (Python objects only)",
            "snapshot = json.dumps of all states as the embedded runner writes them (no file "
            "I/O); restore = json.loads + PipelineState.from_dict",
        ],
    )
