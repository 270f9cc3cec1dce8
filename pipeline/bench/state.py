"""Benchmark 3, state scaling: memory per active device, and what a rebalance costs.

Realistic mid-day states without simulating 100,000 phones: `templates` simulated devices (the
default roster's mix of profiles) run through the topology from the start of their day until
`midday_minutes` into the work day. Device i of N then starts from a copy of template i mod T
(restored from its JSON, as after a rebalance) under its own id and processes the first
`follow_pings` pings of its template's next upload (or its state events) through the topology,
so every state has been through real processing and has its own objects. The devices are held
the way the embedded runner holds them: a `DeviceStates` with the default
`runner.live_states` (states encoded at rest, the most recently used live), after which one
tick pass at the time of the last upload runs the timers due (the states with a timer at every
tick then stay live, as in a running driver).

Measured at each size N (sizes in increasing order; the population grows in place):
- JSON bytes per device (percentiles of each sampled device's compact
  `json.dumps(state.to_dict())`, by processor) and encoded bytes (`encode_state`);
- driver memory per device: the Python heap (tracemalloc) per device of `heap_sample`
  devices spread evenly (tracing is slow), restored from their snapshot into a fresh
  `DeviceStates` (keys, due times and encoded states: everything at rest), plus the live
  states the grown driver of N holds (`live_count`, over N) at the live-object heap per
  device below: an upper bound (a live state has no encoded copy);
- for comparison, the heap per device of the same devices as live `PipelineState` objects
  (what the runner held before: a dict of them); and the heap per device of the Kafka
  worker's table entries (key bytes -> its partition and encoded state: what its Faust table
  holds, whatever the fleet's size);
- snapshot: what the embedded runner's checkpoint does (`encoded_items` + the file's JSON,
  no file I/O); restore: `restore_snapshot` into a fresh `DeviceStates` (parse, and decode
  each state once for its due time), best of `repeats`, without tracemalloc.

Then, on the smallest size: the codec per state (`encode_state`, `decode_state`, best of
`repeats` over the sample), and the driver loop: `driver_devices` devices' uploads of the
`window_minutes` after mid-day with a tick pass per 60 s step (the runner's
`states.get` / `Topology.process` / `states.schedule` and due-only ticks), with the default
cache (most uploads find their state at rest) and with a cache larger than the fleet (all
live, as before), interleaved, best of `repeats`, CPU time per upload.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import statistics
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.bench.common import (
    DAY,
    BenchResult,
    Steps,
    Target,
    Timing,
    measure,
    mib,
    print_table,
    trim_memory,
)
from pipeline.bench.core import Params as CoreParams
from pipeline.bench.core import _screen, _steps, _window_uploads, run_window
from pipeline.config import ProcessorSettings, RunnerSettings
from pipeline.devices import DeviceInfo
from pipeline.embedded import DeviceKey, Snapshot, restore_snapshot
from pipeline.ingest import Screener
from pipeline.processors.base import Ctx
from pipeline.processors.validate import Validator
from pipeline.reference import ReferenceData
from pipeline.sim import build_city, simulate
from pipeline.state_store import DeviceStates, decode_state, encode_state
from pipeline.stream.worker import device_value
from pipeline.topology import DeviceBatch, PipelineState, Topology

NAME = "state"
TITLE = "State scaling: memory per active device, snapshot and restore"


@dataclass(frozen=True, slots=True)
class Params:
    sizes: tuple[int, ...] = (10_000, 100_000)
    templates: int = 100
    midday_minutes: int = 150  # templates run until 10:30
    window_minutes: int = 10  # uploads after mid-day: the follow upload, the driver loop
    repeats: int = 2
    repeat_max: int = 20_000  # larger populations are snapshotted and restored once
    follow_pings: int = 6  # pings of the template's next upload each device processes
    heap_sample: int = 2_000  # devices whose live-object heap tracemalloc measures
    driver_devices: int = 1_000  # devices in the driver loop (well beyond the cache)
    live_states: int | None = None  # the driver's cache; None: the runner's default
    seed: int = 1


SIZES = {
    "full": Params(),
    "quick": Params(sizes=(10_000,), templates=40, midday_minutes=90, driver_devices=300),
    "tiny": Params(sizes=(50, 200), templates=4, midday_minutes=30, repeats=1, heap_sample=100,
                   driver_devices=40, live_states=8),
}  # fmt: skip


def _live_snapshot(live: dict[DeviceKey, PipelineState]) -> str:
    """Live states as the runner's snapshots held them before (their `to_dict()`)."""
    return json.dumps(
        {
            "devices": [
                {"org_id": org, "device_id": dev, "state": state.to_dict()}
                for (org, dev), state in live.items()
            ]
        },
        separators=(",", ":"),
    )


def _restore_live(text: str) -> dict[DeviceKey, PipelineState]:
    return {
        (item["org_id"], item["device_id"]): PipelineState.from_dict(item["state"])
        for item in json.loads(text)["devices"]
    }


# The driver loop's input: the states, and per 60 s step the uploads of each device.
_DriverRun = tuple[DeviceStates[DeviceKey], list[tuple[int, list[tuple[DeviceKey, DeviceBatch]]]]]


def _as_device(batch: DeviceBatch, device_id: str, pings: int | None = None) -> DeviceBatch:
    """A template's upload as device `device_id` sent it (the validator rejects records of
    another device), with its first `pings` pings only when given."""
    return dataclasses.replace(
        batch,
        device_id=device_id,
        pings=[dataclasses.replace(p, device_id=device_id) for p in batch.pings[:pings]],
        states=[dataclasses.replace(e, device_id=device_id) for e in batch.states],
        future_pings=[dataclasses.replace(p, device_id=device_id) for p in batch.future_pings],
    )


def _heap(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes the object returned by `build()` keeps on the Python heap (tracemalloc)."""
    trim_memory()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        return tracemalloc.get_traced_memory()[0] - before, kept
    finally:
        tracemalloc.stop()


def _interleaved(runs: dict[str, tuple[Callable[[Any], Any], Callable[[], Any]]], repeats: int
                 ) -> dict[str, Timing]:  # fmt: skip
    """`measure` of each (fn, setup), one run each in turn: the machine's load hits all alike."""
    timings = {name: Timing([], []) for name in runs}
    for _ in range(max(1, repeats)):
        for name, (fn, setup) in runs.items():
            one = measure(fn, 1, setup)
            timings[name].runs_s.extend(one.runs_s)
            timings[name].cpu_s.extend(one.cpu_s)
    return timings


def run(params: Params, steps_ui: Steps) -> BenchResult:
    console = steps_ui.console
    settings = ProcessorSettings()
    runner = RunnerSettings()
    if params.live_states is not None:
        runner.live_states = params.live_states
    topology = Topology(settings)

    def new_states(capacity: int = runner.live_states) -> DeviceStates[DeviceKey]:
        """What the embedded runner holds its states in, with its settings."""
        return DeviceStates(topology, capacity, keep_due_within_ms=runner.tick_interval_ms)

    with steps_ui.step(f"{params.templates} template devices until mid-day (untimed)"):
        city = build_city()
        sim = simulate(city, reps=params.templates, day=DAY, seed=params.seed)
        devices = {d.device_id: DeviceInfo(d.org_id, d.device_id, d.name, d.schedule)
                   for d in sim.devices}  # fmt: skip
        workday = dt.datetime.combine(DAY, dt.time(8, 0), ZoneInfo(city.tz))
        window = CoreParams(warm_minutes=params.midday_minutes,
                            window_minutes=params.window_minutes)  # fmt: skip
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
    org_id = city.org_id
    tick_now = max((now for now, _ in follow.values()), default=midday)

    def device_key(i: int) -> DeviceKey:
        return (org_id, f"bench-{i:07d}")

    def device_ctx(key: DeviceKey, now: int) -> Ctx:
        """The context of the device's template (its schedule) under the device's own id."""
        ctx = topology.context(ref, org_id, templates[int(key[1][6:]) % len(templates)], now)
        ctx.device_id = key[1]
        return ctx

    states = new_states()
    rows: list[dict[str, Any]] = []
    for n in sorted(params.sizes):
        grow = n - len(states)
        text_step = f"{n:,} devices: {params.follow_pings} pings each through the topology"
        with steps_ui.step(text_step, total=grow) as advance:
            for i in range(len(states), n):
                t = i % len(templates)
                template = templates[t]
                state = PipelineState.from_dict(json.loads(template_json[t]))
                if template in follow:
                    now, batch = follow[template]
                    key = device_key(i)
                    batch = _as_device(batch, key[1], params.follow_pings)
                    topology.process(state, batch, device_ctx(key, now))
                states.put(device_key(i), state)
                if i % 1000 == 999:
                    advance(1000)
            # A tick pass, as the runner makes every tick interval: the states due at every
            # tick are then kept live.
            for key in states.due(tick_now):
                topology.tick(states.get(key), device_ctx(key, tick_now))
                states.schedule(key)
        repeats = params.repeats if n <= params.repeat_max else 1
        with steps_ui.step(f"{n:,} devices: snapshot and restore x{repeats} (timed)"):
            kept: dict[str, str] = {}  # the last snapshot, reused for restore and sizes

            def snapshot(_: Any, kept: dict[str, str] = kept) -> None:
                kept.pop("text", None)  # free the previous one before making the next
                kept["text"] = Snapshot(tick_now, tick_now, states.encoded_items()).to_json()

            t_snap = measure(snapshot, repeats)
            text = kept.pop("text")
            t_restore = measure(lambda _, text=text: restore_snapshot(text, new_states()),
                                repeats)  # fmt: skip
        with steps_ui.step(f"{n:,} devices: sizes and memory"):
            # tracemalloc slows allocation several times over: the heap is taken on an even
            # sample of the devices (per device it hardly depends on how many there are).
            step = max(1, n // params.heap_sample)
            items = states.encoded_items()[::step]
            items_text = Snapshot(0, 0, items).to_json()
            heap_at_rest, restored = _heap(lambda t=items_text: _restore_into_new(t, new_states))
            del restored
            sample = {key: decode_state(data) for key, data in items}
            sample_text = _live_snapshot(sample)
            heap_live, live = _heap(lambda t=sample_text: _restore_live(t))
            del live
            heap_table, table = _heap(lambda sample=sample: _kafka_table(sample))
            del table
            blobs = [len(json.dumps(s.to_dict(), separators=(",", ":")))
                     for s in sample.values()]  # fmt: skip
            encoded = [len(encode_state(s)) for s in sample.values()]
            # Which processor's state the bytes are in (mean over the sample).
            by_part: dict[str, float] = {}
            for state in sample.values():
                for part, value in state.to_dict().items():
                    size = len(json.dumps(value, separators=(",", ":")))
                    by_part[part] = by_part.get(part, 0.0) + size / len(sample)
        live_per_device = heap_live / len(sample)
        rows.append(
            {
                "devices": n,
                "json_bytes_mean": statistics.mean(blobs),
                "json_bytes_p50": statistics.median(blobs),
                "json_bytes_p95": sorted(blobs)[int(0.95 * (len(blobs) - 1))],
                "json_bytes_max": max(blobs),
                "encoded_bytes_mean": statistics.mean(encoded),
                "encoded_bytes_p95": sorted(encoded)[int(0.95 * (len(encoded) - 1))],
                "snapshot_bytes": len(text),
                "sampled_devices": len(sample),
                "json_bytes_by_part": by_part,
                "live_states": states.live_count,
                "pinned_states": states.pinned_count,
                "heap_at_rest_bytes_per_device": heap_at_rest / len(sample),
                "driver_bytes_per_device": heap_at_rest / len(sample)
                + states.live_count * live_per_device / n,
                "heap_live_objects_bytes_per_device": live_per_device,
                "kafka_table_bytes_per_device": heap_table / len(sample),
                "snapshot_s": t_snap.best_s,
                "restore_s": t_restore.best_s,
                "snapshot": t_snap.to_dict(),
                "restore": t_restore.to_dict(),
                "restore_devices_per_s": t_restore.rate(n),
            }
        )
        del text

    with steps_ui.step(f"codec and driver loop: {params.driver_devices:,} devices (timed)"):
        codec = _codec_timings(list(sample.values()), params.repeats)
        driver = _driver_loop(params, topology, templates, after, states, new_states, device_ctx)
    print_table(
        console,
        f"{TITLE}: states from {len(templates)} simulated devices at "
        f"{(workday + dt.timedelta(minutes=params.midday_minutes)).strftime('%H:%M')}, "
        f"plus {params.follow_pings} pings each",
        ["devices", "JSON B mean", "p95", "encoded B mean", "p95", "driver B/dev",
         "live states", "live-object B/dev", "Kafka table B/dev", "snapshot s", "restore s",
         "snapshot MiB"],
        [
            [r["devices"], r["json_bytes_mean"], r["json_bytes_p95"], r["encoded_bytes_mean"],
             r["encoded_bytes_p95"], r["driver_bytes_per_device"], r["live_states"],
             r["heap_live_objects_bytes_per_device"], r["kafka_table_bytes_per_device"],
             r["snapshot_s"], r["restore_s"], mib(r["snapshot_bytes"])]
            for r in rows
        ],
        caption=f"driver = heap (tracemalloc) at rest per device + live states x "
        f"live-object B/dev / devices (upper bound); live-object heap: for comparison (what a "
        f"dict of live states held); Kafka table: the worker's table entries; heap on "
        f"{params.heap_sample:,} sampled devices; snapshot/restore: CPU time, best of "
        f"{params.repeats} up to {params.repeat_max:,} devices, one run above",
    )  # fmt: skip
    print_table(
        console,
        f"Codec per state, and the driver loop ({driver['devices']:,} devices, "
        f"{driver['uploads']:,} uploads over {params.window_minutes} min, ticks due only)",
        ["step", "us", "per"],
        [
            ["encode_state", codec["encode_us"], "state"],
            ["decode_state", codec["decode_us"], "state"],
            ["driver loop, all states live", driver["all_live_us_per_upload"], "upload"],
            [f"driver loop, cache of {runner.live_states:,}", driver["at_rest_us_per_upload"],
             "upload"],
        ],
        caption=f"CPU time, best of {params.repeats}, interleaved; with the default cache "
        f"{driver['decodes_per_upload']:.2f} decodes and {driver['encodes_per_upload']:.2f} "
        "encodes per upload",
    )  # fmt: skip
    big = rows[-1]
    ratios = {
        "driver_vs_live_objects_bytes": big["driver_bytes_per_device"]
        / big["heap_live_objects_bytes_per_device"],
        "encoded_vs_json_bytes": big["encoded_bytes_mean"] / big["json_bytes_mean"],
        "driver_loop_at_rest_vs_all_live_time": driver["at_rest_us_per_upload"]
        / driver["all_live_us_per_upload"],
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
        Target(f"embedded driver state memory per active device at {big['devices']:,}",
               big["driver_bytes_per_device"], "<=", 2048, "B"),
        Target(f"Kafka worker state memory per active device at {big['devices']:,}",
               big["kafka_table_bytes_per_device"], "<=", 2048, "B"),
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
        results={
            "sizes": rows,
            "templates": len(templates),
            "codec": codec,
            "driver": driver,
            "live_states_setting": runner.live_states,
        },
        ratios=ratios,
        targets=targets,
        notes=[
            "driver memory: tracemalloc of sampled states restored at rest (keys, due times, "
            "encoded states) + live states x the live-object heap per device / devices "
            "(upper bound)",
            "live-object heap: tracemalloc of sampled states restored as PipelineState objects "
            "(what the runner's dict held before); Kafka table: the worker's Faust table "
            "entries (key -> partition + encoded state)",
            "snapshot = encoded_items + Snapshot.to_json as the embedded runner's checkpoint "
            "(no file I/O); restore = restore_snapshot into a fresh DeviceStates",
        ],
    )


def _kafka_table(sample: dict[DeviceKey, PipelineState]) -> dict[bytes, bytes]:
    """The sample as the Kafka worker's state table holds it."""
    return {
        f"{org}/{dev}".encode(): device_value(0, encode_state(state))
        for (org, dev), state in sample.items()
    }


def _restore_into_new(
    text: str, new_states: Callable[[], DeviceStates[DeviceKey]]
) -> DeviceStates[DeviceKey]:
    states = new_states()
    restore_snapshot(text, states)
    return states


def _codec_timings(sample: list[PipelineState], repeats: int) -> dict[str, float]:
    encoded = [encode_state(s) for s in sample]
    timings = _interleaved(
        {
            "encode": (lambda _: [encode_state(s) for s in sample], lambda: None),
            "decode": (lambda _: [decode_state(d) for d in encoded], lambda: None),
        },
        max(3, repeats),
    )
    return {
        "encode_us": timings["encode"].per_item_us(len(sample)),
        "decode_us": timings["decode"].per_item_us(len(sample)),
        "states": len(sample),
    }


def _driver_loop(
    params: Params,
    topology: Topology,
    templates: list[str],
    after: list[tuple[int, str, DeviceBatch]],
    population: DeviceStates[DeviceKey],
    new_states: Callable[[int], DeviceStates[DeviceKey]],
    device_ctx: Callable[[DeviceKey, int], Ctx],
) -> dict[str, Any]:
    """The window after mid-day for the first `driver_devices` devices, as the embedded runner
    drives it (`process_batch` and `tick_all` without the sink), per upload."""
    keys = list(population)[: params.driver_devices]
    chosen = set(keys)
    text = Snapshot(0, 0, [(k, d) for k, d in population.encoded_items() if k in chosen]).to_json()
    clones: dict[str, list[DeviceKey]] = {}
    for key in keys:
        clones.setdefault(templates[int(key[1][6:]) % len(templates)], []).append(key)
    steps = [(now, [(d, b) for _, d, b in group])
             for now, group in groupby(after, key=lambda item: item[0])]  # fmt: skip
    uploads = sum(len(clones.get(d, ())) for _, items in steps for d, _ in items)

    def drive(run: _DriverRun) -> None:
        states, device_steps = run
        for now, batches in device_steps:
            for key, batch in batches:
                topology.process(states.get(key), batch, device_ctx(key, now))
                states.schedule(key)
            for key in states.due(now):
                topology.tick(states.get(key), device_ctx(key, now))
                states.schedule(key)

    def fresh(capacity: int) -> Callable[[], _DriverRun]:
        def setup() -> _DriverRun:
            states = new_states(capacity)
            restore_snapshot(text, states)
            if capacity > len(keys):  # all live from the start: as a dict of live states
                for key in keys:
                    states.get(key)
            states.decodes = states.encodes = 0
            last.append(states)
            device_steps = [
                (now, [(key, _as_device(batch, key[1]))
                       for template, batch in items for key in clones.get(template, ())])
                for now, items in steps
            ]  # fmt: skip
            return states, device_steps

        return setup

    last: list[DeviceStates[DeviceKey]] = []
    timings = _interleaved(
        {
            "all_live": (drive, fresh(len(keys) + 1)),
            "at_rest": (drive, fresh(population.capacity)),
        },
        params.repeats,
    )
    at_rest = last[-1]
    return {
        "devices": len(keys),
        "uploads": uploads,
        "all_live_us_per_upload": timings["all_live"].per_item_us(uploads),
        "at_rest_us_per_upload": timings["at_rest"].per_item_us(uploads),
        "decodes_per_upload": at_rest.decodes / uploads if uploads else 0.0,
        "encodes_per_upload": at_rest.encodes / uploads if uploads else 0.0,
        "all_live": timings["all_live"].to_dict(),
        "at_rest": timings["at_rest"].to_dict(),
    }
