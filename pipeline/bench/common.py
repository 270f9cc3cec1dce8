"""What every benchmark shares: timing, memory, machine facts, tables, progress and the JSON
record appended to `bench/results/<name>.jsonl`.

Timing rule: the machine has 2 cores and other work may run beside a benchmark, so nothing is
pinned; every figure is the best (shortest) of a few short repeats measured in this process,
taken on the process CPU time (single-threaded work: what one core spends, whatever else
runs), with the wall time of every run kept beside it; and a ratio only ever compares figures
measured in the same run. The median is recorded too, so a noisy run shows as a wide
best/median gap. The store benchmark uses wall time (chDB runs threads of its own).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS_DIR = Path("bench/results")
TIMING_METHOD = (
    "process CPU time, best (minimum) of `repeats` runs in one process, median kept; the wall "
    "time of every run is kept beside it (wall well above CPU = other work held the cores)"
)
SIZES = ("full", "quick", "tiny")  # tiny: seconds, for the tests
# The simulated day (a Wednesday, as `fieldtrack evaluate` uses) and the driver's step: each
# upload is processed at the end of its 60 s step of simulated time, then timers tick.
DAY = dt.date(2026, 11, 18)
STEP_MS = 60_000


# -- timing -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Timing:
    """Wall and process CPU times of repeated runs of one measured step.

    Figures use CPU time (`basis`): the work is single-threaded Python, so its CPU time is
    what one core spends on it, and it stays meaningful when other work shares the 2 cores
    (wall time then counts the waiting too). The wall times are kept: on an idle machine the
    two agree, and wall well above CPU shows contention.
    """

    runs_s: list[float]  # wall
    cpu_s: list[float] = field(default_factory=list)
    basis: str = "cpu"  # or "wall"

    @property
    def _series(self) -> list[float]:
        return self.cpu_s if self.basis == "cpu" and self.cpu_s else self.runs_s

    @property
    def best_s(self) -> float:
        return min(self._series)

    @property
    def median_s(self) -> float:
        return statistics.median(self._series)

    @property
    def best_index(self) -> int:
        return self._series.index(self.best_s)

    @property
    def wall_of_best_s(self) -> float:
        return self.runs_s[self.best_index]

    def rate(self, n: float) -> float:
        """Items per second at the best time."""
        return n / self.best_s if self.best_s > 0 else float("inf")

    def per_item_us(self, n: float) -> float:
        return self.best_s / n * 1e6 if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"basis": self.basis, "best_s": self.best_s, "median_s": self.median_s,
                "wall_of_best_s": self.wall_of_best_s, "wall_runs_s": self.runs_s,
                "cpu_runs_s": self.cpu_s}  # fmt: skip


def measure(
    fn: Callable[[Any], Any],
    repeats: int,
    setup: Callable[[], Any] | None = None,
    basis: str = "cpu",
) -> Timing:
    """Times `fn(setup())` `repeats` times; `setup` (fresh state, copies) is not timed.

    A collection before each run keeps garbage of the previous run out of the timed one.
    """
    runs, cpu = [], []
    for _ in range(max(1, repeats)):
        arg = setup() if setup is not None else None
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        fn(arg)
        runs.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return Timing(runs, cpu, basis)


# -- memory -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def trim_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so an RSS delta measured next
    counts new allocations rather than reuse of memory freed by an earlier step."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# -- facts about the run ----------------------------------------------------------------------


def git_commit() -> dict[str, Any]:
    """HEAD and whether the work tree has changes (read-only git calls)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """The machine as the record needs it; the load average says whether other work ran."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    mem_total = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_bytes": mem_total,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            p: _version(p) for p in ("numpy", "shapely", "rtree", "chdb", "trackintel", "rich")
        },
    }


# -- targets and records ----------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    """A target of issue 7: `value op threshold`, e.g. pings/s >= 100000."""

    name: str
    value: float
    op: str  # ">=" or "<="
    threshold: float
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass(slots=True)
class BenchResult:
    """What a benchmark returns; `record()` adds the facts about the run."""

    params: dict[str, Any]
    results: dict[str, Any]
    baselines: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. "profile"


def make_record(
    name: str, title: str, size: str, result: BenchResult, seconds: float, load_before: Any
) -> dict[str, Any]:
    return {
        "benchmark": name,
        "title": title,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "machine": {**machine_facts(), "load_avg_at_start": load_before},
        "size": size,
        "timing_method": TIMING_METHOD,
        "params": result.params,
        "results": result.results,
        "baselines": result.baselines,
        "ratios": result.ratios,
        "targets": [t.to_dict() for t in result.targets],
        "targets_met": all(t.met for t in result.targets),
        "notes": result.notes,
        "duration_s": round(seconds, 3),
        **result.extra,
    }


def append_record(results_dir: Path, name: str, record: dict[str, Any]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.jsonl"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, separators=(",", ":"), default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- output -----------------------------------------------------------------------------------


def make_console() -> Console:
    # Tables are wide: when output is not a terminal, do not squeeze them to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 160)


def print_table(
    console: Console,
    title: str,
    columns: list[str],
    rows: list[list[Any]],
    caption: str | None = None,
) -> None:
    table = Table(title=title, caption=caption, header_style="bold", title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console.print(table)


def print_targets(console: Console, targets: list[Target]) -> None:
    if not targets:
        return
    rows = [
        [t.name, f"{fmt(t.value)} {t.unit}".strip(), f"{t.op} {fmt(t.threshold)}",
         "[green]met[/green]" if t.met else "[red]missed[/red]"]
        for t in targets
    ]  # fmt: skip
    print_table(console, "Targets", ["target", "measured", "wanted", ""], rows)


def fmt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def mib(n_bytes: float) -> float:
    return n_bytes / (1024 * 1024)


class Steps:
    """Progress for long steps: a spinner with elapsed time, or a bar when the total is known.

    Steps are also logged as they finish, so a non-interactive log shows where time went.
    """

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def step(self, text: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        started = time.perf_counter()
        if not self.console.is_terminal:  # logs and pipes: one line per finished step
            yield lambda n=1: None
        else:
            progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}" if total else ""),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            with progress:
                task = progress.add_task(text, total=total)
                yield lambda n=1: progress.advance(task, n)
        self.console.print(f"[dim]  {text}: {time.perf_counter() - started:.1f} s[/dim]")
