"""`fieldtrack replay FILE`: a recorded file through the same screening and topology as live.

Formats
- JSONL in the gateway's JSON format, one record per line with `device_id`; optional
  `endpoint` ("pings" | "device-states"; a record with `kind` is a device state) and `send_ms`
  (when the phone uploaded it: the replay clock). `fieldtrack simulate` writes this format.
- CSV with a header naming at least device_id, ts, lat, lon (optional accuracy_m, speed_mps,
  bearing_deg, altitude_m, provider, battery_pct, seq); the replay clock follows `ts`.

Time checks follow the replay clock, not the wall clock, so historical files are accepted. A
device without a registered schedule is tracked at all hours. Replaying the same file twice
stores each fact once (deterministic ids, ReplacingMergeTree).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.devices import DeviceInfo, DeviceRegistry
from pipeline.embedded import EmbeddedPipeline
from pipeline.ingest import Screener, dead_letter
from pipeline.processors.validate import Validator
from pipeline.store.client import Store
from pipeline.store.reference import load_devices, load_reference
from pipeline.topology import DeviceBatch

TICK_EVERY_MS = 30_000  # replay time between timer runs (lost contact, reorder release)
CSV_GROUP = 500  # CSV rows of one device per batch
REPLAY_KEYS = ("endpoint", "send_ms")


@dataclass(slots=True)
class Upload:
    device_id: str
    endpoint: str
    send_ms: int
    records: list[dict[str, Any]] = field(default_factory=list)


def _endpoint(record: dict[str, Any]) -> str:
    explicit = record.get("endpoint")
    if explicit in ("pings", "device-states"):
        return str(explicit)
    return "device-states" if "kind" in record else "pings"


def _record_time(record: dict[str, Any]) -> int:
    """Epoch ms of a record (send time if given, else event time); 0 if it has none."""
    for key in ("send_ms", "ts_ms", "ts", "timestamp", "time"):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value if value > 1e11 else value * 1000)
        if isinstance(value, str):
            try:
                stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.UTC)
            return int(stamp.timestamp() * 1000)
    return 0


def read_jsonl(path: Path, bad: list[tuple[int, str, bytes]]) -> Iterator[Upload]:
    current: Upload | None = None
    with path.open("rb") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not record.get("device_id"):
                    raise ValueError("a record must be an object with a device_id")
            except ValueError as exc:
                bad.append((n, f"line {n}: {exc}", line.rstrip(b"\n")))
                continue
            key = (str(record["device_id"]), _endpoint(record), _record_time(record))
            if (
                current is None
                or (current.device_id, current.endpoint) != key[:2]
                or ("send_ms" in record and current.send_ms != key[2])
            ):
                if current is not None:
                    yield current
                current = Upload(*key)
            current.send_ms = max(current.send_ms, key[2])
            current.records.append({k: v for k, v in record.items() if k not in REPLAY_KEYS})
    if current is not None:
        yield current


def read_csv(path: Path, bad: list[tuple[int, str, bytes]]) -> Iterator[Upload]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"device_id", "ts", "lat", "lon"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: CSV header lacks {', '.join(sorted(missing))}")
        current: Upload | None = None
        for row in reader:
            record: dict[str, Any] = {
                k: _csv_value(k, v) for k, v in row.items() if v not in ("", None)
            }
            device_id = str(record.get("device_id", ""))
            if (
                current is None
                or current.device_id != device_id
                or len(current.records) >= CSV_GROUP
            ):
                if current is not None:
                    yield current
                current = Upload(device_id, "pings", 0)
            current.records.append(record)
            current.send_ms = max(current.send_ms, _record_time(record))
        if current is not None:
            yield current


def _csv_value(key: str, value: str) -> Any:
    if key in ("device_id", "provider", "org_id"):
        return value
    if key == "is_mock":
        return value.strip().lower() in ("1", "true", "yes")
    try:
        number = float(value)
    except ValueError:
        return value  # e.g. an ISO timestamp; the codec decides
    return int(number) if number.is_integer() and key in ("ts", "ts_ms", "seq") else number


async def replay_file(
    settings: Settings, store: Store, path: Path, org_id: str | None, console: Console
) -> dict[str, Any]:
    org = org_id or settings.gateway.default_org
    registry = DeviceRegistry(load_devices(store))
    known = {(d.org_id, d.device_id): d for d in registry.devices()}
    reference = load_reference(store, registry)
    clock = ManualClock(0)
    pipeline = EmbeddedPipeline(settings, store, reference, clock, auto_tick=False)
    await pipeline.start(restore=False)
    screener = Screener(
        Validator(settings.processors.validate), privacy=settings.processors.privacy.enabled
    )
    counts = {"records": 0, "accepted": 0, "rejected": 0, "outside_hours": 0}
    bad: list[tuple[int, str, bytes]] = []
    is_csv = path.suffix.lower() == ".csv"
    uploads = read_csv(path, bad) if is_csv else read_jsonl(path, bad)
    started = time.monotonic()
    next_tick = 0
    progress = Progress(
        TextColumn("[bold]replaying {task.fields[name]}"), BarColumn(),
        TextColumn("{task.completed:,} records"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    try:
        with progress:
            task = progress.add_task("replay", total=None, name=path.name)
            for upload in uploads:
                device = known.get((org, upload.device_id)) or DeviceInfo(org, upload.device_id)
                clock.set(upload.send_ms)
                if next_tick and clock.now_ms() >= next_tick:
                    pipeline.tick_all()
                next_tick = (clock.now_ms() // TICK_EVERY_MS + 1) * TICK_EVERY_MS
                batch, dead = _screen(screener, device, upload, clock.now_ms(), counts)
                pipeline.ingest_batched(batch, dead)
                progress.update(task, advance=len(upload.records))
                if pipeline.sink.due():
                    await pipeline.sink.flush(only_due=True)
            if bad:
                lost = DeviceInfo(org, "?")
                letters = [
                    dead_letter(lost, clock.now_ms(), "replay", reason, raw, n)
                    for n, reason, raw in bad
                ]
                pipeline.ingest_batched(DeviceBatch(org, "?"), letters)
                counts["rejected"] += len(bad)
            pipeline.tick_all(final=True)
    finally:
        await pipeline.stop(snapshot=False)
    wall = time.monotonic() - started
    return {
        **counts,
        "devices": len(pipeline.states),
        "seconds": round(wall, 2),
        "records/s": round(counts["records"] / max(wall, 1e-9)),
    }


def _screen(
    screener: Screener,
    device: DeviceInfo,
    upload: Upload,
    now_ms: int,
    counts: dict[str, int],
) -> tuple[DeviceBatch, list[Any]]:
    screened = screener.screen_json(device, now_ms, upload.endpoint, upload.records, "replay")
    counts["records"] += len(upload.records)
    counts["accepted"] += len(screened.batch.pings) + len(screened.batch.states)
    counts["rejected"] += len(screened.rejected)
    counts["outside_hours"] += screened.outside_hours
    return screened.batch, screened.dead_letters
