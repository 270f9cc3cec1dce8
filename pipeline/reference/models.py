"""Reference data records: customers, fences and work schedules."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from shapely.geometry.base import BaseGeometry

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _parse_days(spec: str) -> frozenset[int]:
    """'mon-fri', 'mon,wed,fri', 'mon-sun' -> weekday numbers (0 = Monday)."""
    days: set[int] = set()
    for part in spec.lower().replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            i, j = DAY_NAMES.index(a[:3]), DAY_NAMES.index(b[:3])
            days.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        else:
            days.add(DAY_NAMES.index(part[:3]))
    return frozenset(days)


def _parse_hhmm(text: str) -> int:
    h, m = text.strip().split(":")
    minutes = int(h) * 60 + int(m)
    if not 0 <= minutes <= 24 * 60:
        raise ValueError(f"time of day out of range: {text!r}")
    return minutes


@dataclass(frozen=True, slots=True)
class Schedule:
    """Weekly hours in a time zone, e.g. Mon-Fri 08:00-18:00 Europe/Berlin.

    Used for a device's work hours (privacy, lost contact, left post) and a fence's active
    hours. `end_min` may be below `start_min` for a shift that crosses midnight.
    """

    tz: str = "UTC"
    days: frozenset[int] = frozenset(range(5))
    start_min: int = 8 * 60
    end_min: int = 18 * 60
    # `is_active` per UTC minute (a schedule is minute-grained): privacy, fences, contact and
    # dwell ask it per batch, and the time-zone conversion costs ~2 us. Bounded; not data.
    _memo: dict[int, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def parse(cls, spec: dict[str, Any] | str) -> Schedule:
        """From {"tz": "Europe/Berlin", "days": "mon-fri", "start": "08:00", "end": "18:00"}
        or the compact string "mon-fri 08:00-18:00 Europe/Berlin"."""
        if isinstance(spec, str):
            parts = spec.split()
            days, hours = parts[0], parts[1]
            tz = parts[2] if len(parts) > 2 else "UTC"
            start, end = hours.split("-")
            spec = {"tz": tz, "days": days, "start": start, "end": end}
        tz = str(spec.get("tz", "UTC"))
        _zone(tz)  # fail early on an unknown zone
        return cls(
            tz=tz,
            days=_parse_days(str(spec.get("days", "mon-fri"))),
            start_min=_parse_hhmm(str(spec.get("start", "08:00"))),
            end_min=_parse_hhmm(str(spec.get("end", "18:00"))),
        )

    def to_spec(self) -> dict[str, str]:
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
        return {
            "tz": self.tz,
            "days": days,
            "start": f"{self.start_min // 60:02d}:{self.start_min % 60:02d}",
            "end": f"{self.end_min // 60:02d}:{self.end_min % 60:02d}",
        }

    def is_active(self, ts_ms: int) -> bool:
        utc_minute = ts_ms // 60_000
        memo = self._memo
        active = memo.get(utc_minute)
        if active is not None:
            return active
        local = dt.datetime.fromtimestamp(ts_ms / 1000.0, _zone(self.tz))
        minute = local.hour * 60 + local.minute
        if self.start_min <= self.end_min:
            active = local.weekday() in self.days and self.start_min <= minute < self.end_min
        elif minute >= self.start_min:
            # Overnight shift: the part after midnight belongs to the previous day's shift.
            active = local.weekday() in self.days
        else:
            active = minute < self.end_min and (local.weekday() - 1) % 7 in self.days
        offset = local.utcoffset()
        # A UTC minute is one local minute only where the offset is whole minutes (not in
        # some zones' 19th-century local mean time).
        if offset is not None and not offset.seconds % 60:
            if len(memo) >= 256:
                memo.clear()
            memo[utc_minute] = active
        return active


ALWAYS = None  # a device or fence without a schedule is active at all hours


def schedule_active(schedule: Schedule | None, ts_ms: int) -> bool:
    return True if schedule is None else schedule.is_active(ts_ms)


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    org_id: str
    name: str
    lat: float
    lon: float
    radius_m: float = 100.0  # a dwell centred within this distance counts as a visit
    grade: str = "B"  # A/B/C: how often the customer must be visited


FENCE_KINDS = frozenset({"office", "workshop", "territory", "forbidden", "customer"})


@dataclass(frozen=True, slots=True)
class Fence:
    """A polygon or circle; geometry is in lon/lat (x = lon, y = lat), as GeoJSON."""

    fence_id: str
    org_id: str
    name: str
    kind: str
    geometry: BaseGeometry = field(compare=False)
    schedule: Schedule | None = None  # when the fence is active; None = always
    # For circles: the centre and radius in metres (geometry is then an approximating polygon
    # used for indexing; membership is tested exactly on the distance).
    circle: tuple[float, float, float] | None = None
