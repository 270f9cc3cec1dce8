"""Device states held encoded at rest (`pipeline.state_store`): the same facts whether a state
stayed live or went through its encoded form, in the embedded runner and through snapshots."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

# The day of test_topology: lost contact (a timer due at every tick while the episode is open),
# a left post (the same while away), spoofing evidence, an ordinary day.
from test_topology import PROFILES, day_of_uploads

from pipeline import codec
from pipeline.clock import ManualClock
from pipeline.config import Settings, StoreSettings
from pipeline.embedded import EmbeddedPipeline
from pipeline.processors.base import NO_TIMER, Result
from pipeline.reference import ReferenceData
from pipeline.state_store import STATE_FORMAT, DeviceStates, decode_state, encode_state
from pipeline.store.client import Store
from pipeline.topology import DeviceBatch, PipelineState, Topology

TICK_EVERY_MS = 10_000
HOUR = 3_600_000


def fresh_batch(batch: DeviceBatch) -> DeviceBatch:
    """The topology may flag the pings it is given: each run gets its own copies."""
    return dataclasses.replace(
        batch,
        pings=[dataclasses.replace(p) for p in batch.pings],
        states=[dataclasses.replace(s) for s in batch.states],
        future_pings=[dataclasses.replace(p) for p in batch.future_pings],
    )


def run_day(
    settings: Settings, store: Store, *, snapshot_every: int = 0, keep_due_live: bool = True
) -> tuple[list[dict[str, Any]], EmbeddedPipeline]:
    """Every fact the embedded runner derives from the day (timers every 10 s of processing
    time, a final tick at the end); with `snapshot_every`, the runner is stopped that often
    (snapshot file) and a new one continues from the file; without `keep_due_live`, states
    due at every tick are put to rest like any other."""
    ref, batches = day_of_uploads()
    clock = ManualClock()

    def new_pipeline() -> EmbeddedPipeline:
        pipeline = EmbeddedPipeline(settings, store, ref, clock, auto_tick=False)
        if not keep_due_live:
            pipeline.states.keep_due_within_ms = None
        return pipeline

    pipeline = new_pipeline()
    out = Result()
    last_tick = 0
    for n, batch in enumerate(batches, start=1):
        clock.set(batch.received_ms)
        out.extend(pipeline.process_batch(fresh_batch(batch)))
        if batch.received_ms - last_tick >= TICK_EVERY_MS:
            last_tick = batch.received_ms
            out.extend(pipeline.tick_all())
        if snapshot_every and n % snapshot_every == 0:
            pipeline.save_snapshot()
            pipeline = new_pipeline()
            assert pipeline.load_snapshot_mark() is not None
    out.extend(pipeline.tick_all(final=True, now_ms=last_tick + HOUR))
    facts = [*out.track_points, *out.dwells, *out.visits, *out.fence_events, *out.alerts]
    return [codec.to_json(f) for f in facts], pipeline


def with_runner(settings: Settings, **runner: Any) -> Settings:
    return dataclasses.replace(settings, runner=dataclasses.replace(settings.runner, **runner))


@pytest.fixture(scope="module")
def all_live(chdb_dir: Path) -> list[dict[str, Any]]:
    """The reference: a cache larger than the fleet, so no state is ever encoded."""
    settings = Settings()
    settings.store = StoreSettings(data_dir=str(chdb_dir), database="state_store_all_live")
    settings.runner.live_states = 1_000_000
    facts, pipeline = run_day(settings, Store(settings.store))
    assert pipeline.states.decodes == pipeline.states.encodes == 0
    return facts


def test_a_tiny_cache_derives_the_same_facts(
    settings: Settings, store: Store, all_live: list[dict[str, Any]]
) -> None:
    facts, pipeline = run_day(with_runner(settings, live_states=1), store)
    assert facts == all_live
    states = pipeline.states
    assert states.decodes > 1000 and states.encodes > 1000  # the codec really was in the way
    assert len(states) == len(PROFILES)


def test_without_keeping_due_states_live_the_same_facts(
    settings: Settings, store: Store, all_live: list[dict[str, Any]]
) -> None:
    """Every tick of every device through the encoded form too."""
    facts, pipeline = run_day(with_runner(settings, live_states=1), store, keep_due_live=False)
    assert pipeline.states.pinned_count == 0
    assert facts == all_live


def test_snapshots_mid_day_derive_the_same_facts(
    settings: Settings, store: Store, all_live: list[dict[str, Any]]
) -> None:
    facts, pipeline = run_day(with_runner(settings, live_states=2), store, snapshot_every=997)
    assert facts == all_live
    saved = json.loads(pipeline.snapshot_path.read_text())
    assert saved["state_format"] == STATE_FORMAT
    assert len(saved["device_states"]) == len(PROFILES)


def mid_day_states() -> dict[str, PipelineState]:
    ref, batches = day_of_uploads()
    topology = Topology()
    states: dict[str, PipelineState] = {}
    for batch in batches[: len(batches) // 2]:
        state = states.setdefault(batch.device_id, topology.initial_state())
        ctx = topology.context(ref, batch.org_id, batch.device_id, batch.received_ms)
        topology.process(state, fresh_batch(batch), ctx)
    return states


def test_encoded_form_round_trips_mid_day_states_and_is_small() -> None:
    for state in mid_day_states().values():
        data = encode_state(state)
        assert isinstance(data, bytes) and data[0] == STATE_FORMAT
        restored = decode_state(data)
        assert restored == state and restored is not state
        assert restored.to_dict() == state.to_dict()
        assert encode_state(restored) == data  # deterministic: equal states, equal bytes
        assert len(data) < len(json.dumps(state.to_dict(), separators=(",", ":")))
    with pytest.raises(ValueError, match="format byte"):
        decode_state(b"{}")


def test_a_snapshot_in_the_earlier_form_still_restores(settings: Settings, store: Store) -> None:
    states = mid_day_states()
    old_form = {
        "saved_ms": 5,
        "processed_before_ms": 4,
        "devices": [
            {"org_id": "acme", "device_id": device_id, "state": state.to_dict()}
            for device_id, state in states.items()
        ],
    }
    pipeline = EmbeddedPipeline(settings, store, ReferenceData(), ManualClock())
    pipeline.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
    pipeline.snapshot_path.write_text(json.dumps(old_form))
    assert pipeline.load_snapshot_mark() == 4
    for device_id, state in states.items():
        assert pipeline.states.get(("acme", device_id)) == state


class _Timers:
    """A topology stand-in whose states' due times the test sets."""

    def __init__(self) -> None:
        self.due: dict[int, int] = {}  # id(state) -> next_tick_ms
        self._topology = Topology()

    def initial_state(self) -> PipelineState:
        return self._topology.initial_state()

    def next_tick_ms(self, state: PipelineState) -> int:
        return self.due.get(id(state), NO_TIMER)


def test_states_due_at_the_next_tick_stay_live_beyond_the_cache() -> None:
    timers = _Timers()
    topology: Any = timers
    states: DeviceStates[str] = DeviceStates(topology, capacity=2, keep_due_within_ms=500)
    assert states.due(now_ms=1_000) == []
    every_tick = states.get("a")
    timers.due[id(every_tick)] = 0  # e.g. an open lost-contact episode
    states.schedule("a")
    for key in "bcd":
        states.get(key)
        states.schedule(key)
    # "a" fell out of the two most recently used but its timer runs at every pass: kept live.
    assert states.pinned_count == 1 and states.live_count == 3
    assert states.due(now_ms=1_500) == ["a"]
    assert states.get("a") is every_tick and states.decodes == 0
    timers.due[id(every_tick)] = NO_TIMER  # the episode closed
    states.schedule("a")
    assert states.pinned_count == 0 and states.live_count == 2
    states.get("e")
    states.get("f")
    assert states.get("a") == every_tick and states.decodes == 1  # it was put to rest
    assert list(states) == ["a", "b", "c", "d", "e", "f"]
    assert [key for key, _ in states.encoded_items()] == list(states)
