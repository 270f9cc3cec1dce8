"""What every processor shares: the context it reads, the result it appends to, and state
that serialises to a plain dict.

A processor is a small class built from its `Params` (documented defaults, settable from the
config file or environment). It owns no per-device data: the topology hands it the device's
state, the items and a `Ctx`, and the processor mutates the state in place and appends what
it derives to the `Result`. It performs no I/O and reads no clock: wall-clock time enters only
as `ctx.now_ms`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Self

from pipeline.events import Alert, DeadLetter, Dwell, FenceEvent, TrackPoint, Visit
from pipeline.reference import ReferenceData, Schedule


@dataclass(slots=True)
class Ctx:
    """What a processor may know beyond its own state."""

    org_id: str
    device_id: str
    now_ms: int  # processing clock: gateway receive time live, the replay clock in a replay
    ref: ReferenceData
    schedule: Schedule | None = None  # the device's work hours; None = at all hours


@dataclass(slots=True)
class Result:
    """Everything one call of the topology produced for one device."""

    track_points: list[TrackPoint] = field(default_factory=list)
    dwells: list[Dwell] = field(default_factory=list)
    visits: list[Visit] = field(default_factory=list)
    fence_events: list[FenceEvent] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # accepted, rejected, duplicate, late, outside_hours, outlier, ...
    counters: Counter[str] = field(default_factory=Counter)

    def extend(self, other: Result) -> None:
        self.track_points.extend(other.track_points)
        self.dwells.extend(other.dwells)
        self.visits.extend(other.visits)
        self.fence_events.extend(other.fence_events)
        self.alerts.extend(other.alerts)
        self.dead_letters.extend(other.dead_letters)
        self.counters.update(other.counters)

    def fact_count(self) -> int:
        return (
            len(self.track_points)
            + len(self.dwells)
            + len(self.visits)
            + len(self.fence_events)
            + len(self.alerts)
        )


class SerialisableState:
    """Mixin for processor state dataclasses: to/from a JSON-friendly dict.

    Fields must hold only primitives, lists, dicts and None, so the state can live in a Faust
    table or a snapshot file. Keep it bounded: ring buffers (lists trimmed to a maximum), not
    growing histories.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})
