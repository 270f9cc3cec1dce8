"""SerialisableState: the compact dict form every processor state is stored in."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.processors.base import SerialisableState


@dataclass(slots=True)
class Example(SerialisableState):
    _json_names: ClassVar[dict[str, str]] = {"started_ms": "t"}

    started_ms: int = 0
    speed: float = 0.0
    label: str | None = None
    nested: list[list[Any]] = field(default_factory=list)
    by_id: dict[str, list[int]] = field(default_factory=dict)


def test_defaults_are_left_out_and_restored() -> None:
    assert Example().to_dict() == {}
    assert Example.from_dict({}) == Example()
    state = Example(started_ms=5, label="x")
    assert state.to_dict() == {"t": 5, "label": "x"}
    assert Example.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_left_out_only_when_equal_with_the_same_type() -> None:
    # 0 is not 0.0 (its repr differs downstream), False is not 0; both are kept.
    state = Example(started_ms=False, speed=0)  # type: ignore[arg-type]
    data = state.to_dict()
    assert data == {"t": False, "speed": 0}
    restored = Example.from_dict(data)
    assert type(restored.speed) is int and type(restored.started_ms) is bool


def test_short_names_are_written_and_long_names_still_read() -> None:
    assert Example(started_ms=7).to_dict() == {"t": 7}
    assert Example.from_dict({"started_ms": 7}).started_ms == 7  # a state saved before
    assert Example.from_dict({"t": 7, "unknown": 1}).started_ms == 7  # unknown keys ignored


def test_dict_form_never_aliases_the_live_state() -> None:
    state = Example(nested=[[1, (2, 3)]], by_id={"a": [1]})
    data = state.to_dict()
    assert data == {"nested": [[1, [2, 3]]], "by_id": {"a": [1]}}  # tuples as JSON has them
    data["nested"][0].append(9)
    data["by_id"]["a"].append(9)
    assert state.nested == [[1, (2, 3)]] and state.by_id == {"a": [1]}
