"""The `fieldtrack` command as a newcomer uses it (real subprocesses)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import Settings
from pipeline.service import EmbeddedService
from pipeline.store.client import Store


def fieldtrack(*args: str, data_dir: Path | str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FIELDTRACK_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_help_names_every_command(tmp_path: Path) -> None:
    result = fieldtrack("--help", data_dir=tmp_path)
    assert result.returncode == 0
    for command in ("run", "simulate", "replay", "query", "devices", "customers", "fences"):
        assert command in result.stdout


def test_csv_replay_then_query(tmp_path: Path) -> None:
    now = int(time.time()) - 3600
    lines = ["device_id,ts,lat,lon,accuracy_m"]
    for i in range(120):  # ten minutes parked, then a short drive
        lat = 52.52 + (0.0 if i < 120 - 20 else (i - 100) * 0.0004)
        lines.append(f"van-1,{now + i * 5},{lat:.6f},13.405,{8 + i % 3}")
    lines.append("van-1,not-a-time,52.5,13.4,5")
    track = tmp_path / "track.csv"
    track.write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    replay = fieldtrack("replay", str(track), "--org", "acme", data_dir=data)
    assert replay.returncode == 0, replay.stderr
    assert "accepted" in replay.stdout
    query = fieldtrack(
        "query",
        "SELECT count() AS n, countIf(has(flags, 'late')) AS late "
        "FROM fieldtrack.track_points FINAL WHERE device_id = 'van-1'",
        "--format", "csv",
        data_dir=data,
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    assert query.stdout.splitlines()[-1] == "120,0"
    dwells = fieldtrack(
        "query", "SELECT count() FROM fieldtrack.dwells FINAL", "--format", "csv", data_dir=data
    )
    assert dwells.stdout.splitlines()[-1] == "1"
    bad = fieldtrack("query", "SELECT nonsense(", data_dir=data)
    assert bad.returncode != 0 and "error" in bad.stderr.lower()


async def test_query_goes_through_the_running_instance(settings: Settings, store: Store) -> None:
    service = EmbeddedService(settings, store=store, restore_state=False)
    await service.start()
    try:
        await service.add_device("acme", "rep-9")
        # This process owns the chDB directory now: the CLI must use the instance, not hang.
        db = settings.store.database
        result = await asyncio.to_thread(
            fieldtrack, "query", f"SELECT device_id FROM {db}.devices FINAL", "--format", "csv",
            data_dir=settings.store.data_dir,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["device_id", "rep-9"]
        added = await asyncio.to_thread(
            fieldtrack, "devices", "add", "rep-10", "--org", "acme",
            data_dir=settings.store.data_dir,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        token = added.stdout.strip().splitlines()[-1]
        assert token.startswith("ft_")
        assert service.registry.authenticate(token) is not None  # live without a restart
        write = await asyncio.to_thread(
            fieldtrack, "query", f"DROP TABLE {db}.visits", data_dir=settings.store.data_dir
        )
        assert write.returncode != 0  # the instance only answers read-only SQL
    finally:
        await service.stop()
