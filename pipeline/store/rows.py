"""Records -> column-oriented batches for the tables in `schemas/clickhouse/`.

ClickHouse likes few large, column-oriented inserts; building one list per column straight from
the records avoids an intermediate row per record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pipeline.events import (
    Alert,
    DeadLetter,
    DeviceState,
    Dwell,
    FenceEvent,
    Ping,
    TrackFlag,
    TrackPoint,
    Visit,
    flag_names,
)


@dataclass(frozen=True, slots=True)
class TableSpec:
    table: str
    columns: tuple[str, ...]
    to_columns: Callable[[Sequence[Any]], list[list[Any]]]


@lru_cache(maxsize=256)
def _flags(bits: int) -> list[str]:
    return flag_names(bits)


def _raw_pings(rows: Sequence[Ping]) -> list[list[Any]]:
    return [
        [p.org_id for p in rows],
        [p.device_id for p in rows],
        [p.seq for p in rows],
        [p.ts_ms for p in rows],
        [p.lat for p in rows],
        [p.lon for p in rows],
        [p.accuracy_m for p in rows],
        [p.speed_mps for p in rows],
        [p.bearing_deg for p in rows],
        [p.altitude_m for p in rows],
        [p.provider for p in rows],
        [p.is_mock for p in rows],
        [p.battery_pct for p in rows],
        [p.received_ms for p in rows],
    ]


def _device_states(rows: Sequence[DeviceState]) -> list[list[Any]]:
    return [
        [s.org_id for s in rows],
        [s.device_id for s in rows],
        [s.ts_ms for s in rows],
        [s.kind for s in rows],
        [s.detail or "" for s in rows],
        [s.received_ms for s in rows],
    ]


def _track_points(rows: Sequence[TrackPoint]) -> list[list[Any]]:
    return [
        [t.org_id for t in rows],
        [t.device_id for t in rows],
        [t.seq for t in rows],
        [t.ts_ms for t in rows],
        [t.raw_lat for t in rows],
        [t.raw_lon for t in rows],
        [t.lat for t in rows],
        [t.lon for t in rows],
        [t.accuracy_m for t in rows],
        [t.speed_mps for t in rows],
        [t.heading_deg for t in rows],
        [t.moving for t in rows],
        [t.step_m for t in rows],
        [_flags(t.flags) for t in rows],
        [0 if t.flags & TrackFlag.LATE else 1 for t in rows],
    ]


def _dwells(rows: Sequence[Dwell]) -> list[list[Any]]:
    return [
        [d.id for d in rows],
        [d.org_id for d in rows],
        [d.device_id for d in rows],
        [d.start_ms for d in rows],
        [d.end_ms for d in rows],
        [d.lat for d in rows],
        [d.lon for d in rows],
        [d.radius_m for d in rows],
        [d.n_points for d in rows],
        [d.status for d in rows],
        [d.end_reason for d in rows],
        [d.customer_id or "" for d in rows],
        [d.version for d in rows],
    ]


def _visits(rows: Sequence[Visit]) -> list[list[Any]]:
    return [
        [v.id for v in rows],
        [v.org_id for v in rows],
        [v.device_id for v in rows],
        [v.customer_id for v in rows],
        [v.dwell_id for v in rows],
        [v.arrive_ms for v in rows],
        [v.leave_ms for v in rows],
        [v.minutes for v in rows],
        [v.distance_m for v in rows],
        [v.customer_grade for v in rows],
        [v.verified for v in rows],
        [v.suspect_alerts for v in rows],
    ]


def _fence_events(rows: Sequence[FenceEvent]) -> list[list[Any]]:
    return [
        [e.id for e in rows],
        [e.org_id for e in rows],
        [e.device_id for e in rows],
        [e.fence_id for e in rows],
        [e.fence_kind for e in rows],
        [e.transition for e in rows],
        [e.ts_ms for e in rows],
        [e.lat for e in rows],
        [e.lon for e in rows],
        [e.accuracy_m for e in rows],
    ]


def _alerts(rows: Sequence[Alert]) -> list[list[Any]]:
    return [
        [a.id for a in rows],
        [a.org_id for a in rows],
        [a.device_id for a in rows],
        [a.ts_ms for a in rows],
        [a.type for a in rows],
        [a.severity for a in rows],
        [a.message for a in rows],
        [a.evidence for a in rows],
    ]


def _dead_letters(rows: Sequence[DeadLetter]) -> list[list[Any]]:
    return [
        [d.id for d in rows],
        [d.org_id for d in rows],
        [d.device_id for d in rows],
        [d.received_ms for d in rows],
        [d.source for d in rows],
        [d.reason for d in rows],
        [d.payload.decode("utf-8", "backslashreplace") for d in rows],
    ]


TABLES: dict[str, TableSpec] = {
    spec.table: spec
    for spec in (
        TableSpec(
            "raw_pings",
            (
                "org_id", "device_id", "seq", "ts", "lat", "lon", "accuracy_m", "speed_mps",
                "bearing_deg", "altitude_m", "provider", "is_mock", "battery_pct", "received",
            ),
            _raw_pings,
        ),
        TableSpec(
            "device_states",
            ("org_id", "device_id", "ts", "kind", "detail", "received"),
            _device_states,
        ),
        TableSpec(
            "track_points",
            (
                "org_id", "device_id", "seq", "ts", "raw_lat", "raw_lon", "lat", "lon",
                "accuracy_m", "speed_mps", "heading_deg", "moving", "step_m", "flags", "version",
            ),
            _track_points,
        ),
        TableSpec(
            "dwells",
            (
                "id", "org_id", "device_id", "start", "end", "lat", "lon", "radius_m",
                "n_points", "status", "end_reason", "customer_id", "version",
            ),
            _dwells,
        ),
        TableSpec(
            "visits",
            (
                "id", "org_id", "device_id", "customer_id", "dwell_id", "arrive", "leave",
                "minutes", "distance_m", "customer_grade", "verified", "suspect_alerts",
            ),
            _visits,
        ),
        TableSpec(
            "fence_events",
            (
                "id", "org_id", "device_id", "fence_id", "fence_kind", "transition", "ts",
                "lat", "lon", "accuracy_m",
            ),
            _fence_events,
        ),
        TableSpec(
            "alerts",
            ("id", "org_id", "device_id", "ts", "type", "severity", "message", "evidence"),
            _alerts,
        ),
        TableSpec(
            "dead_letters",
            ("id", "org_id", "device_id", "received", "source", "reason", "payload"),
            _dead_letters,
        ),
    )
}  # fmt: skip

# Which Result list lands in which table.
RESULT_TABLES: tuple[tuple[str, str], ...] = (
    ("track_points", "track_points"),
    ("dwells", "dwells"),
    ("visits", "visits"),
    ("fence_events", "fence_events"),
    ("alerts", "alerts"),
    ("dead_letters", "dead_letters"),
)
