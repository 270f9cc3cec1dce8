"""`fieldtrack bench`: speed and scale, measured (issue 7).

Each benchmark is a module here exporting `NAME`, `TITLE`, `SIZES` ({"full", "quick", "tiny"}
-> its frozen `Params` dataclass) and `run(params, steps) -> BenchResult`; it prints its
tables and the harness appends one JSON record per run to `bench/results/<name>.jsonl`. To
add one write the module and
add it to `BENCHMARKS`: the CLI, `--only` and the tests pick it up from there. The gateway and
Kafka benchmarks run their servers, workers and load generator as child processes
(`pipeline.bench.procs`).
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from pipeline.bench.common import (
    DEFAULT_RESULTS_DIR,
    Steps,
    append_record,
    make_console,
    make_record,
    print_targets,
)

# name -> module, in the order `fieldtrack bench` runs them (imported lazily: the store
# benchmark starts chDB, the core one imports the peer libraries).
BENCHMARKS: dict[str, str] = {
    "core": "pipeline.bench.core",
    "fences": "pipeline.bench.fences",
    "state": "pipeline.bench.state",
    "store": "pipeline.bench.store",
    "gateway": "pipeline.bench.gateway",
    "kafka": "pipeline.bench.kafka",
}


def module(name: str) -> ModuleType:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[name])


def run_benchmark(
    name: str,
    size: str = "full",
    *,
    console: Console | None = None,
    results_dir: Path = DEFAULT_RESULTS_DIR,
    params: Any = None,
) -> dict[str, Any]:
    """Runs one benchmark at `size` (or with explicit `params`), prints its tables and
    appends its record to `results_dir/<name>.jsonl`; returns the record."""
    mod = module(name)
    console = console or make_console()
    params = params if params is not None else mod.SIZES[size]
    console.rule(f"[bold]{name}[/bold]: {mod.TITLE} ({size})")
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    result = mod.run(params, Steps(console))
    seconds = time.perf_counter() - started
    print_targets(console, result.targets)
    record = make_record(name, mod.TITLE, size, result, seconds, load_before)
    path = append_record(results_dir, name, record)
    console.print(f"[dim]{name}: {seconds:.0f} s; appended to {path}[/dim]")
    return record


def run_all(
    names: list[str] | None = None,
    *,
    quick: bool = False,
    console: Console | None = None,
    results_dir: Path = DEFAULT_RESULTS_DIR,
) -> list[dict[str, Any]]:
    names = names or list(BENCHMARKS)
    for name in names:
        module(name)  # fail on a bad name before anything long runs
    if "kafka" in names and names[0] != "kafka":
        module("kafka").prelaunch()  # the broker's JVM starts during the others
    try:
        return [
            run_benchmark(n, "quick" if quick else "full", console=console, results_dir=results_dir)
            for n in names
        ]
    finally:
        if "kafka" in names:
            module("kafka").stop_prelaunched()
