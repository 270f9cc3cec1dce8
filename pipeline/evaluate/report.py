"""Runs the scenario suite, pools the results and prints them as tables (and JSON)."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pipeline.config import ProcessorSettings
from pipeline.evaluate import peers, scorers
from pipeline.evaluate.runner import (
    HELD_OUT_SEEDS,
    TUNING_SEEDS,
    Outcome,
    _city,
    run_scenario,
    scenario_suite,
)
from pipeline.events import FenceEvent, Ping, TrackPoint, Visit
from pipeline.geo import haversine_m
from pipeline.processors.base import Result


def _tag(outcome: Outcome) -> str:
    return f"{outcome.scenario.name}#{outcome.seed}/"


def pooled(outcomes: list[Outcome], settings: ProcessorSettings) -> dict[str, Any]:
    """Scores over several runs at once: device ids are made unique per run."""
    facts = Result()
    truth: list[dict[str, Any]] = []
    hours = honest = 0.0
    for o in outcomes:
        tag = _tag(o)
        for name in ("track_points", "visits", "fence_events", "alerts"):
            getattr(facts, name).extend(
                dataclasses.replace(f, device_id=tag + f.device_id) for f in getattr(o.facts, name)
            )
        truth.extend({**t, "device_id": tag + t["device_id"]} for t in o.truth)
        hours += o.hours_observed
        honest += o.scenario.honest_devices
    return {
        "visits": scorers.score_visits(facts.visits, truth).to_dict(),
        "fences": scorers.score_fences(facts.fence_events, truth, hours).to_dict(),
        "spoofing": scorers.score_spoofing(facts.alerts, truth, honest).to_dict(),
        "contact": scorers.score_contact(
            facts.alerts, truth, settings.contact.silence_limit_s
        ).to_dict(),
        "smoothing": scorers.score_smoothing(facts.track_points, truth).to_dict(),
    }


def _peer_visit(d: dict[str, Any]) -> Visit:
    minutes = (d["leave_ms"] - d["arrive_ms"]) / 60_000
    return Visit("", "", d["device_id"], d["customer_id"], "", d["arrive_ms"], d["leave_ms"],
                 minutes, 0.0)  # fmt: skip


def _peer_fence(d: dict[str, Any]) -> FenceEvent:
    return FenceEvent("", "", d["device_id"], d["fence_id"], "", d["transition"], d["ts_ms"],
                      0.0, 0.0, 0.0)  # fmt: skip


def _peer_points(pings: list[Ping], smoothed: dict[Any, tuple[float, float]]) -> list[TrackPoint]:
    """filterpy's positions as track points; mileage = every step between them (it has no
    notion of standing still)."""
    points, last = [], {}
    for p in sorted(pings, key=lambda p: (p.device_id, p.ts_ms, p.seq)):
        pos = smoothed.get((p.device_id, p.seq, p.ts_ms))
        if pos is None:
            continue
        prev = last.get(p.device_id)
        step = haversine_m(prev[0], prev[1], pos[0], pos[1]) if prev else 0.0
        last[p.device_id] = pos
        points.append(TrackPoint(p.org_id, p.device_id, p.seq, p.ts_ms, p.lat, p.lon, pos[0],
                                 pos[1], p.accuracy_m, 0.0, 0.0, True, step))  # fmt: skip
    return points


def peer_scores(
    outcomes: list[Outcome], console: Console, settings: ProcessorSettings
) -> dict[str, Any]:
    """The peer libraries on the pings our topology got, scored by the same scorers, beside
    our scores on exactly the same runs. MovingPandas manages ~2,400 pings/s here, so the
    peers see the first seed of every scenario (all of them, to stay within minutes)."""
    first_seed = min(o.seed for o in outcomes)
    outcomes = [o for o in outcomes if o.seed == first_seed]
    have = peers.available()
    if not any(have.values()):
        console.print("[dim]peer libraries not installed (pip install -e '.[eval]'): "
                      "only the naive fence check runs[/dim]")  # fmt: skip
    visits: dict[str, list[Visit]] = {"trackintel": [], "movingpandas": []}
    fences: list[FenceEvent] = []
    points: list[TrackPoint] = []
    truth: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    pings_total = 0
    hours = 0.0
    city_fences = list(_city().fences)
    for o in outcomes:
        tag = _tag(o)
        pings = [dataclasses.replace(p, device_id=tag + p.device_id) for p in o.accepted]
        pings_total += len(pings)
        truth.extend({**t, "device_id": tag + t["device_id"]} for t in o.truth)
        hours += o.hours_observed
        for name, run in peers.run_peers(pings, _city().customers, city_fences).items():
            if not run.get("available"):
                continue
            seconds[name] = seconds.get(name, 0.0) + run["seconds"]
            if name == "trackintel_visits":
                visits["trackintel"] += [_peer_visit(d) for d in run["output"]]
            elif name == "movingpandas_visits":
                visits["movingpandas"] += [_peer_visit(d) for d in run["output"]]
            elif name == "naive_fence_events":
                fences += [_peer_fence(d) for d in run["output"]]
            elif name == "filterpy_smooth":
                points += _peer_points(pings, run["output"]["smoothed"])
    out: dict[str, Any] = {
        "seed": first_seed,
        "fieldtrack": pooled(outcomes, settings),
        "naive_fences": scorers.score_fences(fences, truth, hours).to_dict(),
        "pings_per_s": {k: round(pings_total / v) for k, v in seconds.items() if v > 0},
    }
    for name, found in visits.items():
        if have.get(name):
            out[f"{name}_visits"] = scorers.score_visits(found, truth).to_dict()
    if have.get("filterpy"):
        out["filterpy_smoothing"] = scorers.score_smoothing(points, truth).to_dict()
    return out


def run_suite(
    *,
    seeds: tuple[int, ...] = HELD_OUT_SEEDS,
    quick: bool = False,
    settings: ProcessorSettings | None = None,
    console: Console | None = None,
    with_peers: bool = True,
    only: list[str] | None = None,
) -> dict[str, Any]:
    settings = settings or ProcessorSettings()
    console = console or Console()
    suite = scenario_suite(quick)
    if only:
        unknown = set(only) - {s.name for s in suite}
        if unknown:
            raise ValueError(
                f"unknown scenarios {sorted(unknown)}; known: {[s.name for s in suite]}"
            )
        suite = [s for s in suite if s.name in only]
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(suite) * len(seeds))
        for scenario in suite:
            for seed in seeds:
                progress.update(task, description=f"{scenario.name} (seed {seed})")
                outcomes.append(run_scenario(scenario, seed, settings))
                progress.advance(task)
    by_scenario = {
        s.name: pooled([o for o in outcomes if o.scenario.name == s.name], settings) for s in suite
    }
    pings = sum(o.pings for o in outcomes)
    busy = sum(o.seconds for o in outcomes)
    with console.status("running the peer libraries on the same pings ..."):
        peer = peer_scores(outcomes, console, settings) if with_peers else {}
    return {
        "seeds": list(seeds),
        "seed_set": "held-out"
        if tuple(seeds) == HELD_OUT_SEEDS
        else "tuning"
        if tuple(seeds) == TUNING_SEEDS
        else "custom",
        "machine": f"{platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}",
        "pings": pings,
        "topology_pings_per_s": round(pings / busy) if busy else None,
        "wall_s": round(time.perf_counter() - started, 1),
        "overall": pooled(outcomes, settings),
        "scenarios": by_scenario,
        "peers": peer,
        "targets": {f"{n}.{m}": t for (n, m), t in scorers.TARGETS.items() if t},
    }


def _get(scores: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return scores.get(section, {}).get(key)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


PEER_ROWS = [
    ("visits F1", "visits", "f1", "trackintel_visits", "movingpandas_visits"),
    ("visits precision", "visits", "precision", "trackintel_visits", "movingpandas_visits"),
    ("visit arrive error median s", "visits", "arrive_err_median_s", "trackintel_visits",
     "movingpandas_visits"),
    ("fence events F1", "fences", "f1", "naive_fences", None),
    ("fence flaps per hour", "fences", "flaps_per_hour", "naive_fences", None),
    ("RMSE to true path m", "smoothing", "rmse_smoothed_m", "filterpy_smoothing", None),
    ("mileage error % (mean abs)", "smoothing", "mileage_mape_ours_pct", "filterpy_smoothing",
     None),
]  # fmt: skip


def print_peers(result: dict[str, Any], console: Console) -> None:
    peer = result.get("peers") or {}
    if not peer:
        return
    table = Table(title=f"Beside the peers, on the same pings (seed {peer['seed']})",
                  header_style="bold")  # fmt: skip
    for column in ("metric", "fieldtrack", "peer", "peer 2"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    overall = peer["fieldtrack"]
    for label, section, key, first, second in PEER_ROWS:
        peer_key = key
        cells = []
        for name in (first, second):
            scores = peer.get(name) if name else None
            cells.append(f"{name.split('_')[0]}: {_fmt(scores.get(peer_key))}" if scores else "")
        table.add_row(label, _fmt(overall.get(section, {}).get(key)), *cells)
    console.print(table)
    speeds = ", ".join(f"{k} {v:,}" for k, v in peer.get("pings_per_s", {}).items())
    console.print(f"[dim]peer pings/s: {speeds}[/dim]")


def print_report(result: dict[str, Any], console: Console) -> None:
    overall = result["overall"]
    table = Table(title=f"Detection quality, {result['seed_set']} seeds {result['seeds']}",
                  header_style="bold")  # fmt: skip
    table.add_column("metric")
    table.add_column("fieldtrack", justify="right")
    table.add_column("target", justify="right")
    for metric, value, target in scorers.summarise(overall):
        table.add_row(metric, value, target)
    console.print(table)
    per = Table(title="Per scenario", header_style="bold")
    columns = ["visits.f1", "visits.arrive_err_median_s", "fences.f1", "fences.flaps_per_hour",
               "spoofing.precision", "spoofing.recall", "contact.recall",
               "contact.reason_accuracy", "smoothing.rmse_reduction_pct",
               "smoothing.mileage_mape_ours_pct", "smoothing.mileage_mape_raw_pct"]  # fmt: skip
    per.add_column("scenario")
    for c in columns:
        per.add_column(c.replace(".", " "), justify="right")
    for name, scores in result["scenarios"].items():
        per.add_row(name, *(_fmt(_get(scores, c)) for c in columns))
    console.print(per)
    print_peers(result, console)
    console.print(
        f"{result['pings']:,} pings through the topology at "
        f"{result['topology_pings_per_s'] or 0:,} pings/s; wall {result['wall_s']} s"
    )


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


SWEEP_COLUMNS = ["visits.f1", "visits.arrive_err_median_s", "visits.leave_err_median_s",
                 "fences.f1", "fences.flaps_per_hour", "spoofing.precision", "spoofing.recall",
                 "spoofing.false_alarms_per_100_days", "contact.recall", "contact.within_limit",
                 "smoothing.rmse_reduction_pct", "smoothing.mileage_mape_ours_pct"]  # fmt: skip


def sweep(
    setting: str,
    values: list[str],
    *,
    seeds: tuple[int, ...] = TUNING_SEEDS,
    only: list[str] | None = None,
    settings: ProcessorSettings | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """The pooled scores for each value of one processor setting ("section.field"): the
    evidence a default is chosen on. Runs without peers; tune on the tuning seeds only."""
    from pipeline.config import _set  # one coercion path with TOML and the environment

    console = console or Console()
    section_name, _, key = setting.partition(".")
    base = settings or ProcessorSettings()
    if not key or section_name not in {f.name for f in dataclasses.fields(base)}:
        raise ValueError(f"--sweep wants section.field, e.g. dwell.radius_m; got {setting!r}")
    rows: dict[str, Any] = {}
    for value in values:
        trial = ProcessorSettings(**{f.name: dataclasses.replace(getattr(base, f.name))
                                     for f in dataclasses.fields(base)})  # fmt: skip
        _set(getattr(trial, section_name), key, value, f"--sweep {setting}")
        console.print(f"[dim]{setting} = {value}[/dim]")
        result = run_suite(seeds=seeds, settings=trial, console=console, with_peers=False,
                           only=only)  # fmt: skip
        rows[value] = {"overall": result["overall"], "scenarios": result["scenarios"]}
    table = Table(title=f"Sweep of {setting}, seeds {list(seeds)}", header_style="bold")
    table.add_column(setting)
    for c in SWEEP_COLUMNS:
        table.add_column(c.replace(".", " "), justify="right")
    for value, row in rows.items():
        table.add_row(value, *(_fmt(_get(row["overall"], c)) for c in SWEEP_COLUMNS))
    console.print(table)
    return {"setting": setting, "seeds": list(seeds), "scenarios": only or "all",
            "values": rows}  # fmt: skip
