"""What the multi-process benchmarks (gateway, kafka) share: child processes, their CPU time,
the load generator's runs, percentiles and cProfile summaries read from a stats file."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.bench.common import REPO_ROOT

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc; 0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return (sum(values[:8]) - idle) / CLK_TCK
    return 0.0


class Child:
    """A child Python process with its output in a log file; stopped with SIGTERM, then
    SIGKILL after a grace period."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=env or dict(os.environ),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, grace_s: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()
        return self.proc.returncode


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child appended to the list is stopped on the way out, whatever happened."""
    procs: list[Child] = []
    try:
        yield procs
    finally:
        for child in reversed(procs):
            with contextlib.suppress(Exception):
                child.stop()


async def wait_file(path: Path, child: Child, timeout_s: float = 120.0) -> dict[str, Any]:
    """A JSON file a child writes when it is ready."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if not child.alive():
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} not ready after {timeout_s:.0f} s:\n{child.tail()}")
        await asyncio.sleep(0.1)
    return dict(json.loads(path.read_text()))


async def run_loadgen(
    work: Path,
    tag: str,
    url: str,
    tokens_file: Path,
    *,
    seconds: float,
    concurrency: int,
    rate: float = 0.0,
    state: Path | None = None,
    wrap: bool = False,
    probes: bool = False,
    watch: list[Child] | None = None,
) -> dict[str, Any]:
    """Runs the load generator (a separate process) to completion; returns its result plus
    the CPU seconds the watched processes and the load generator spent meanwhile."""
    out = work / f"load-{tag}.json"
    args = [
        "-m",
        "pipeline.bench.loadgen",
        "--url",
        url,
        "--tokens",
        str(tokens_file),
        "--seconds",
        str(seconds),
        "--concurrency",
        str(concurrency),
        "--rate",
        str(rate),
        "--out",
        str(out),
    ]
    if state is not None:
        args += ["--state", str(state)]
    if wrap:
        args.append("--wrap")
    if probes:
        args.append("--probes")
    watch = watch or []
    before = [c.cpu() for c in watch]
    machine_before = machine_cpu_seconds()
    started = time.monotonic()
    gen = Child(f"loadgen-{tag}", args, work / f"load-{tag}.log")
    try:
        while gen.alive():
            await asyncio.sleep(0.05)
            gen_cpu = gen.cpu()
    finally:
        code = gen.stop()
    if code != 0 or not out.exists():
        raise RuntimeError(f"load generator failed ({code}):\n{gen.tail()}")
    result = dict(json.loads(out.read_text()))
    result["wall_s"] = time.monotonic() - started
    result["cpu_s"] = {c.name: c.cpu() - b for c, b in zip(watch, before, strict=True)}
    result["cpu_s"]["loadgen"] = gen_cpu
    result["machine_busy_cpu_s"] = machine_cpu_seconds() - machine_before
    return result


def window(result: dict[str, Any], skip_s: float) -> tuple[list[list[Any]], float]:
    """The requests that started after the first `skip_s` (warm-up: connections, caches),
    and the span they cover (first start to last end)."""
    log = [r for r in result["log"] if r[0] >= result["started_s"] + skip_s]
    if not log:
        return [], 0.0
    return log, max(r[1] for r in log) - min(r[0] for r in log)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def profile_rows(
    source: Path | cProfile.Profile, top: int = 15, *, by: str = "own"
) -> list[dict[str, Any]]:
    """The top functions of a cProfile run (a profiler or a stats file). `by="own"` ranks by
    own time (a server's cumulative times are dominated by the event loop, which holds
    everything); `by="cum"` by cumulative time, as a share of the outermost call (a driver
    loop that holds everything else)."""
    stats = pstats.Stats(str(source) if isinstance(source, Path) else source,
                         stream=io.StringIO())  # fmt: skip
    entries = stats.stats  # type: ignore[attr-defined]
    column = 2 if by == "own" else 3  # (cc, ncalls, tottime, cumtime, callers)
    if by == "own":
        total = sum(v[2] for v in entries.values()) or 1e-12
    else:
        total = max([1e-12, *(v[3] for v in entries.values())])
    share = "own_pct" if by == "own" else "cum_pct"
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in sorted(
        entries.items(), key=lambda kv: kv[1][column], reverse=True
    )[:top]:
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({func})",
                "calls": ncalls,
                "tottime_s": round(tottime, 4),
                "cumtime_s": round(cumtime, 4),
                share: round(100 * (tottime if by == "own" else cumtime) / total, 1),
            }
        )
    return rows


def _short(filename: str) -> str:
    if filename.startswith(("~", "<")):
        return filename
    parts = Path(filename).parts
    for anchor in ("site-packages", "pipeline", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + (anchor != "pipeline") :])
    return "/".join(parts[-2:])
