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
from pipeline.evaluate import scorers
from pipeline.evaluate.runner import (
    HELD_OUT_SEEDS,
    TUNING_SEEDS,
    Outcome,
    run_scenario,
    scenario_suite,
)
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


def run_suite(
    *,
    seeds: tuple[int, ...] = HELD_OUT_SEEDS,
    quick: bool = False,
    settings: ProcessorSettings | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    settings = settings or ProcessorSettings()
    console = console or Console()
    suite = scenario_suite(quick)
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
    console.print(
        f"{result['pings']:,} pings through the topology at "
        f"{result['topology_pings_per_s'] or 0:,} pings/s; wall {result['wall_s']} s"
    )


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
