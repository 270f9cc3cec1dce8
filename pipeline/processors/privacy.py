"""Privacy: positions are recorded only inside the device's work hours.

A rep's phone may keep sending after the shift ends; nothing outside work hours is stored or
derived. The gateway calls `inside_work_hours` before it stores anything, and the topology runs
`PrivacyFilter` right after validation, so no downstream processor (track, dwell, fences, spoof,
lost contact) ever sees an off-duty position. Work hours are the device's `Schedule` (weekdays,
start and end in its own time zone, DST-aware, overnight shifts allowed); a device without a
schedule is tracked at all hours.

Deciding needs a time-zone conversion per ping, so the filter decides once per UTC minute: the
decision cannot change inside a minute because schedules are in whole minutes and time-zone
offsets in use are whole minutes.

Parameters (`PrivacyParams`, config section `[privacy]`):

- `enabled` (true): false stores positions at all hours, whatever the schedules say (for
  deployments whose agreement with the workforce allows it).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.events import Ping
from pipeline.processors.base import Ctx, Result
from pipeline.reference.models import Schedule, schedule_active

_MINUTE_MS = 60_000


@dataclass(slots=True)
class PrivacyParams:
    enabled: bool = True


def inside_work_hours(ts_ms: int, schedule: Schedule | None) -> bool:
    """May a position recorded at `ts_ms` be stored? No schedule means all hours."""
    return schedule_active(schedule, ts_ms)


class PrivacyFilter:
    """Stateless: keeps the pings inside `ctx.schedule`."""

    def __init__(self, params: PrivacyParams | None = None) -> None:
        self.params = params or PrivacyParams()

    def process(self, pings: list[Ping], ctx: Ctx, out: Result) -> list[Ping]:
        schedule = ctx.schedule
        if not pings or schedule is None or not self.params.enabled:
            return pings
        kept: list[Ping] = []
        minute = None
        inside = False
        for p in pings:
            m = p.ts_ms // _MINUTE_MS
            if m != minute:
                minute = m
                inside = schedule.is_active(p.ts_ms)
            if inside:
                kept.append(p)
        dropped = len(pings) - len(kept)
        if dropped:
            out.counters["outside_hours"] += dropped
        return kept
