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


def _empty_counter() -> Counter[str]:
    """An empty Counter without `Counter.__init__` (a Python-level call that costs a third of
    a `Result`, made once per batch and per tick); dict's constructor leaves it the same."""
    return Counter.__new__(Counter)


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
    counters: Counter[str] = field(default_factory=_empty_counter)

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


# `next_tick_ms` of a device none of whose timers runs: its ticks can be skipped until an
# upload arrives.
NO_TIMER = 2**62


class SerialisableState:
    """Mixin for processor state dataclasses: to/from a JSON-friendly dict.

    Fields must hold only primitives, lists, dicts and None, so the state can live in a Faust
    table or a snapshot file. Keep it bounded: ring buffers (lists trimmed to a maximum), not
    growing histories.

    The dict form is compact, because every device's state is written per batch (Faust
    changelog) or per snapshot: a field still at its default is left out (`from_dict` restores
    the default), and a class may name its fields shorter in JSON with `_json_names`
    (field -> key). Lists and dicts are copied, so the dict never aliases the live state.
    """

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, key, default in _schema(type(self))[0]:
            value = getattr(self, name)
            if value is default or (type(value) is type(default) and value == default):
                continue  # type-strict: 0 is not left out for a field whose default is 0.0
            kind = type(value)
            data[key] = _plain(value) if kind is list or kind is dict or kind is tuple else value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = _schema(cls)[1]
        return cls(**{names[k]: v for k, v in data.items() if k in names})


# Per state class: ((field, JSON key, default), ...) and {JSON key or field name: field}.
_SCHEMAS: dict[type, tuple[tuple[tuple[str, str, Any], ...], dict[str, str]]] = {}
_NO_DEFAULT = object()  # a required field: always written


def _schema(cls: type) -> tuple[tuple[tuple[str, str, Any], ...], dict[str, str]]:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        aliases: dict[str, str] = getattr(cls, "_json_names", {})
        fields = []
        names = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()  # compared with, never handed out
            else:
                default = _NO_DEFAULT
            key = aliases.get(f.name, f.name)
            fields.append((f.name, key, default))
            names[f.name] = names[key] = f.name  # the long name is read too (older states)
        schema = _SCHEMAS[cls] = (tuple(fields), names)
    return schema


def _plain(value: Any) -> Any:
    """A deep copy of nested lists, tuples (as lists) and dicts; other values as they are."""
    kind = type(value)
    if kind is list or kind is tuple:
        return [_plain(v) if type(v) in _CONTAINERS else v for v in value]
    if kind is dict:
        return {k: _plain(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
    return value


_CONTAINERS = frozenset({list, tuple, dict})
