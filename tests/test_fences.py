"""FenceTracker: enter/exit with hysteresis, schedules, forbidden zones, left post."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import shapely

from pipeline.events import TrackFlag, TrackPoint
from pipeline.geo import LocalFrame
from pipeline.processors.base import Ctx, Result
from pipeline.processors.fences import FenceParams, FenceState, FenceTracker
from pipeline.reference import ReferenceData
from pipeline.reference.fences import FenceIndex, circle_fence
from pipeline.reference.models import Fence, Schedule

ORG, DEV = "acme", "rep-1"
FRAME = LocalFrame(52.52, 13.40)
MONDAY_10 = int(dt.datetime(2024, 1, 15, 10, 0, tzinfo=dt.UTC).timestamp() * 1000)
WORK = Schedule.parse("mon-fri 08:00-18:00 UTC")
STEP_MS = 5000


def at(hour: int, minute: int = 0) -> int:
    return MONDAY_10 + ((hour - 10) * 60 + minute) * 60_000


def square(
    fence_id: str,
    half: float,
    kind: str = "office",
    cx: float = 0.0,
    org: str = ORG,
    schedule: Schedule | None = None,
) -> Fence:
    ring = []
    for x, y in ((-half, -half), (half, -half), (half, half), (-half, half)):
        lat, lon = FRAME.to_latlon(cx + x, y)
        ring.append((lon, lat))
    return Fence(fence_id, org, fence_id, kind, shapely.Polygon(ring), schedule)


def point(ts: int, x: float, y: float, acc: float = 5.0) -> TrackPoint:
    lat, lon = FRAME.to_latlon(x, y)
    return TrackPoint(ORG, DEV, ts // 1000, ts, lat, lon, lat, lon, acc, 1.4, 90.0, True, 1.0)


def walk(start_ts: int, x0: float, x1: float, speed: float, y: float = 0.0) -> list[TrackPoint]:
    """A straight walk along x, one fix every 5 s."""
    n = int(abs(x1 - x0) / (speed * STEP_MS / 1000)) + 1
    sign = 1 if x1 >= x0 else -1
    return [point(start_ts + i * STEP_MS, x0 + sign * i * speed * 5, y) for i in range(n)]


def stay(start_ts: int, x: float, y: float, minutes: float) -> list[TrackPoint]:
    """Standing still: real fixes differ by a little (0.3 m steps), never repeat exactly."""
    return [
        point(start_ts + i * STEP_MS, x + 0.3 * (i % 3 - 1), y) for i in range(int(minutes * 12))
    ]


def make_ctx(index: FenceIndex, schedule: Schedule | None = WORK, device: str = DEV) -> Ctx:
    return Ctx(ORG, device, 0, ReferenceData(fences=index), schedule)


def run(
    tracker: FenceTracker,
    points: list[TrackPoint],
    index: FenceIndex,
    schedule: Schedule | None = WORK,
    state: FenceState | None = None,
    batch: int = 12,
) -> tuple[Result, FenceState]:
    """Feed the points in upload-sized batches, as the topology does."""
    state = state or tracker.initial_state()
    out = Result()
    ctx = make_ctx(index, schedule)
    for i in range(0, len(points), batch):
        chunk = points[i : i + batch]
        ctx.now_ms = chunk[-1].ts_ms
        tracker.process(state, chunk, ctx, out)
    return out, state


def transitions(out: Result) -> list[tuple[str, str, int]]:
    return [(e.fence_id, e.transition, e.ts_ms) for e in out.fence_events]


def test_crossing_in_and_out_gives_one_enter_one_exit_within_one_sample() -> None:
    tracker = FenceTracker()
    index = FenceIndex([square("yard", 100)])
    points = walk(MONDAY_10, -300, 300, 1.4)  # walking pace: 7 m per fix
    out, state = run(tracker, points, index)
    assert [(f, t) for f, t, _ in transitions(out)] == [("yard", "enter"), ("yard", "exit")]
    enter, exit_ = out.fence_events
    true_enter = MONDAY_10 + 200 / 1.4 * 1000
    true_exit = MONDAY_10 + 400 / 1.4 * 1000
    assert 0 <= enter.ts_ms - true_enter <= STEP_MS
    assert 0 <= exit_.ts_ms - true_exit <= STEP_MS
    # The first fix on the new side, not the confirming one (which is 2+ fixes later).
    first_inside = next(p for p in points if FRAME.to_xy(p.lat, p.lon)[0] > -100)
    assert enter.ts_ms == first_inside.ts_ms and enter.lat == first_inside.lat
    assert enter.id != exit_.id and enter.fence_kind == "office"
    assert state.inside == {} and state.pending == {}
    # Replaying the same input gives the same ids.
    again, _ = run(FenceTracker(), points, index)
    assert [e.id for e in again.fence_events] == [e.id for e in out.fence_events]


def test_loitering_on_border_with_30m_noise_does_not_flap() -> None:
    rng = np.random.default_rng(4)
    tracker = FenceTracker()
    fence = square("yard", 300)
    index = FenceIndex([fence])
    points = stay(MONDAY_10, -200, 0, 2)  # well inside first: one enter
    t0 = points[-1].ts_ms + STEP_MS
    naive_flips = 0
    naive_prev = True
    projected_inside = shapely.Polygon([(-300, -300), (300, -300), (300, 300), (-300, 300)])
    for i in range(12 * 60):  # an hour on the west border, walking slowly up and down it
        true_x = -300 + 5 * math.sin(i / 17)
        true_y = 250 * math.sin(i / 90)
        noise = rng.normal(0, 15, 2)
        if np.hypot(*noise) > 30:
            noise *= 30 / np.hypot(*noise)
        x, y = true_x + noise[0], true_y + noise[1]
        points.append(point(t0 + i * STEP_MS, x, y, acc=30.0))
        naive = projected_inside.contains(shapely.Point(x, y))
        naive_flips += naive != naive_prev
        naive_prev = naive
    out, state = run(tracker, points, index)
    assert naive_flips > 100  # per-fix point-in-polygon flaps all the time
    assert transitions(out) == [("yard", "enter", MONDAY_10)]  # the hysteresis holds
    assert "yard" in state.inside


def test_circle_fence_drive_through_and_exact_border() -> None:
    centre = FRAME.to_latlon(0, 0)
    index = FenceIndex([circle_fence("cust", ORG, "Customer", "customer", *centre, 80.0)])
    points = walk(MONDAY_10, -500, 500, 10.0)  # 50 m per fix: 3 fixes inside
    # A pass-through shorter than `confirm_fixes` fixes is not recorded (multipath guard)...
    out, _ = run(FenceTracker(), points, index)
    assert out.fence_events == []
    # ...with 2 confirming fixes the exact border timing shows.
    out, _ = run(FenceTracker(FenceParams(confirm_fixes=2)), points, index)
    (enter, exit_) = out.fence_events
    assert (enter.transition, exit_.transition) == ("enter", "exit")
    assert enter.fence_kind == "customer"
    assert 0 <= enter.ts_ms - (MONDAY_10 + 420 / 10 * 1000) <= STEP_MS
    assert 0 <= exit_.ts_ms - (MONDAY_10 + 580 / 10 * 1000) <= STEP_MS
    # Standing 1 m inside a circle of 80 m (outside its polygon approximation? no matter):
    # with a tiny margin and a small circle the depth cap still lets the device enter.
    small = FenceIndex([circle_fence("c", ORG, "C", "customer", *centre, 12.0)])
    out, _ = run(FenceTracker(), stay(MONDAY_10, 3, 0, 1), small)
    assert transitions(out) == [("c", "enter", MONDAY_10)]


def test_small_office_is_enterable_with_poor_accuracy() -> None:
    index = FenceIndex([square("kiosk", 15)])  # 30 m x 30 m, accuracy 20 m -> margin 30 m
    points = [point(MONDAY_10 + i * STEP_MS, 4 + 0.3 * (i % 2), -3, acc=20.0) for i in range(6)]
    out, _ = run(FenceTracker(), points, index)
    assert transitions(out) == [("kiosk", "enter", MONDAY_10)]


def test_low_accuracy_fixes_neither_confirm_nor_reset() -> None:
    index = FenceIndex([square("yard", 200)])
    params = FenceParams(max_accuracy_m=100.0, confirm_fixes=2)
    points = [
        point(at(10, 0), -300, 0),
        point(at(10, 1), 0, 0),  # first inside
        point(at(10, 2), 0, 0, acc=500.0),  # useless fix: ignored
        point(at(10, 3), 600, 0, acc=500.0),  # useless fix claiming outside: ignored
        point(at(10, 4), 1, 0),  # confirms
    ]
    out, _ = run(FenceTracker(params), points, index, batch=1)
    assert transitions(out) == [("yard", "enter", at(10, 1))]
    out, _ = run(FenceTracker(params), points[:4], index, batch=1)
    assert transitions(out) == []


def test_fence_schedule_only_active_inside_it() -> None:
    evening = Schedule.parse("mon-fri 08:00-18:00 UTC")
    index = FenceIndex([square("site", 200, kind="territory", schedule=evening)])
    # Inside from 07:30 to 08:30: nothing before 08:00, enter at the first active fix.
    morning = [point(at(7, 30) + i * 60_000, 0.3 * (i % 2), 0) for i in range(61)]
    out, state = run(FenceTracker(), morning, index, schedule=None)
    assert transitions(out) == [("site", "enter", at(8, 0))]
    # Still inside across 18:00: dropped silently, no exit, no state left.
    late = [point(at(17, 50) + i * 60_000, 0, 0) for i in range(20)]
    out, state = run(FenceTracker(), late, index, schedule=None, state=state)
    assert transitions(out) == [] and state.inside == {}
    # Walking through at 19:00: the fence does not exist.
    out, _ = run(FenceTracker(), walk(at(19), -400, 400, 5.0), index, schedule=None)
    assert transitions(out) == []


def test_forbidden_zone_alerts_once_per_entry() -> None:
    index = FenceIndex([square("vault", 100, kind="forbidden")])
    points = walk(at(10), -300, 0, 5.0)
    points += stay(points[-1].ts_ms + STEP_MS, 0, 0, 20)  # 20 minutes inside
    points += walk(points[-1].ts_ms + STEP_MS, 0, -300, 5.0)
    points += walk(points[-1].ts_ms + STEP_MS, -300, 0, 5.0)  # back in
    out, _ = run(FenceTracker(), points, index)
    assert [t for _, t, _ in transitions(out)] == ["enter", "exit", "enter"]
    assert len(out.alerts) == 2
    first, second = out.alerts
    assert first.type == "forbidden_zone" and first.severity == "critical"
    assert first.ts_ms == out.fence_events[0].ts_ms
    assert second.ts_ms == out.fence_events[2].ts_ms and first.id != second.id
    assert first.evidence["fence_id"] == "vault" and first.evidence["fence_name"] == "vault"
    assert {"lat", "lon", "accuracy_m", "enter_ms"} <= first.evidence.keys()
    assert float(first.evidence["accuracy_m"]) == 5.0


def post_index(assigned: list[str] | None = None) -> FenceIndex:
    return FenceIndex([square("hq", 100)], {"hq": assigned if assigned is not None else [DEV]})


def leave_and_stay_out(start: int, minutes: float) -> tuple[list[TrackPoint], int]:
    """Inside the office for 10 minutes, then out for `minutes`; returns the exit time."""
    points = stay(start, 10, 0, 10)
    out_walk = walk(points[-1].ts_ms + STEP_MS, 10, 410, 5.0)  # fixes at x = 10, 35, ... 110
    exit_ts = next(p.ts_ms for p in out_walk if FRAME.to_xy(p.lat, p.lon)[0] > 101)
    points += out_walk
    points += stay(points[-1].ts_ms + STEP_MS, 410, 0, minutes)
    return points, exit_ts


def test_left_post_after_limit_not_before_and_once() -> None:
    points, exit_ts = leave_and_stay_out(at(10), 30)
    tracker = FenceTracker()
    index = post_index()
    deadline = exit_ts + 600_000
    before = [p for p in points if p.ts_ms <= deadline]
    out, state = run(tracker, before, index)
    assert out.alerts == []  # exactly at the limit: not yet
    out, _ = run(tracker, points[len(before) :], index, state=state)
    (alert,) = out.alerts
    assert alert.type == "left_post" and alert.severity == "warning"
    assert alert.ts_ms == deadline + STEP_MS  # the first fix past the limit
    assert alert.evidence["fence_id"] == "hq" and alert.evidence["exit_ms"] == str(exit_ts)
    assert float(alert.evidence["minutes_away"]) == 10.1
    assert alert.evidence["detected_by"] == "fix"
    lat, lon = FRAME.to_latlon(410, 0)
    assert abs(float(alert.evidence["lat"]) - lat) < 1e-4
    assert abs(float(alert.evidence["lon"]) - lon) < 1e-4


def test_left_post_ends_on_return_and_a_new_absence_alerts_again() -> None:
    index = post_index()
    points, _ = leave_and_stay_out(at(10), 5)  # 5 minutes out: back in time
    points += walk(points[-1].ts_ms + STEP_MS, 410, 10, 5.0)
    second, exit2 = leave_and_stay_out(points[-1].ts_ms + STEP_MS, 20)
    out, state = run(FenceTracker(), points + second, index)
    assert [t for _, t, _ in transitions(out)] == ["enter", "exit", "enter", "exit"]
    (alert,) = out.alerts
    assert alert.evidence["exit_ms"] == str(exit2)
    assert state.away == {"hq": [exit2, 1]}


def test_left_post_held_while_return_is_confirmed() -> None:
    index = post_index()
    points, exit_ts = leave_and_stay_out(at(10), 9.5)
    back_in = exit_ts + 600_000 - 2 * STEP_MS  # first fix back inside just before the limit
    # 10 m inside (within the margin: not decisive) across the deadline, then deep inside.
    tail = [point(back_in + i * STEP_MS, 0.3 * i, -90 if i < 4 else 0) for i in range(6)]
    outside = [p for p in points if p.ts_ms < back_in]
    tracker = FenceTracker(FenceParams(confirm_fixes=2))
    out, _ = run(tracker, outside + tail, index, batch=1)
    assert out.alerts == []
    assert transitions(out)[-1] == ("hq", "enter", back_in)
    # Had the device stayed at the border, the alert would have come once the run broke.
    tail[4:] = [point(back_in + i * STEP_MS, 0, -120) for i in (4, 5)]
    out, _ = run(tracker, outside + tail, index, batch=1)
    assert [a.ts_ms for a in out.alerts] == [back_in + 4 * STEP_MS]  # the fix 20 m out


def test_left_post_not_outside_work_hours() -> None:
    index = post_index()
    # Leaves at 19:00: after work, not an absence.
    points, _ = leave_and_stay_out(at(18, 50), 60)
    out, state = run(FenceTracker(), points, index)
    assert out.alerts == [] and state.away == {}
    # Leaves at 17:55: the shift ends before the limit, no alert even hours later.
    points, exit_ts = leave_and_stay_out(at(17, 44), 60)
    assert at(17, 50) < exit_ts < at(18)
    out, state = run(FenceTracker(), points, index)
    assert [t for _, t, _ in transitions(out)] == ["enter", "exit"]
    assert out.alerts == [] and state.away == {}


def test_left_post_only_for_devices_assigned_to_the_post() -> None:
    points, _ = leave_and_stay_out(at(10), 30)
    out, _ = run(FenceTracker(), points, post_index(["someone-else"]))
    assert out.alerts == [] and len(out.fence_events) == 2
    out, _ = run(FenceTracker(), points, FenceIndex([square("hq", 100)]))  # nobody assigned
    assert out.alerts == []
    out, _ = run(FenceTracker(), points, post_index(["*"]))
    assert [a.type for a in out.alerts] == ["left_post"]
    # A territory is never a post, even when assigned.
    territory = FenceIndex([square("hq", 100, kind="territory")], {"hq": [DEV]})
    out, _ = run(FenceTracker(), points, territory)
    assert out.alerts == []


def test_tick_raises_left_post_for_a_device_gone_silent() -> None:
    tracker = FenceTracker()
    index = post_index()
    points, exit_ts = leave_and_stay_out(at(10), 1)  # then silence
    out, state = run(tracker, points, index)
    assert out.alerts == []
    assert tracker.next_tick_ms(state) == 0  # away from its post: every tick counts
    ctx = make_ctx(index)
    limit = exit_ts + 600_000 + 120_000  # limit plus the grace for pings in flight
    for now, expected in ((limit, 0), (limit + 500, 1), (limit + 60_000, 0)):
        ctx.now_ms = now
        tick_out = Result()
        tracker.tick(state, ctx, tick_out)
        assert len(tick_out.alerts) == expected
        if expected:
            alert = tick_out.alerts[0]
    assert alert.ts_ms == limit + 500 and alert.evidence["detected_by"] == "tick"
    # Same episode, same id as when fixes had shown it.
    full, _ = leave_and_stay_out(at(10), 30)
    fix_out, _ = run(FenceTracker(), full, index)
    assert fix_out.alerts[0].id == alert.id


def test_other_orgs_fences_are_ignored() -> None:
    index = FenceIndex(
        [square("theirs", 100, org="other", kind="forbidden"), square("ours", 100, cx=1000)],
        {"theirs": ["*"]},
    )
    points = walk(at(10), -300, 1300, 5.0)
    out, _ = run(FenceTracker(), points, index)
    assert [(f, t) for f, t, _ in transitions(out)] == [("ours", "enter"), ("ours", "exit")]
    assert out.alerts == []


def test_first_fixes_inside_record_arrival() -> None:
    index = FenceIndex([square("hq", 100)])
    out, state = run(FenceTracker(), stay(at(8), 10, 10, 3), index)
    assert transitions(out) == [("hq", "enter", at(8))]
    assert state.inside == {"hq": at(8)}


def mixed_day() -> tuple[list[TrackPoint], FenceIndex]:
    rng = np.random.default_rng(9)
    centre = FRAME.to_latlon(2000, 0)
    index = FenceIndex(
        [
            square("hq", 100),
            square("vault", 100, kind="forbidden", cx=1000),
            circle_fence("cust", ORG, "Customer", "customer", *centre, 60.0),
        ],
        {"hq": [DEV]},
    )
    points = stay(at(9), 0, 0, 10)
    points += walk(points[-1].ts_ms + STEP_MS, 0, 2000, 3.0)
    points += stay(points[-1].ts_ms + STEP_MS, 2000, 0, 15)
    points += walk(points[-1].ts_ms + STEP_MS, 2000, 0, 3.0)
    noisy = []
    for p in points:
        x, y = FRAME.to_xy(p.lat, p.lon)
        noisy.append(point(p.ts_ms, x + rng.normal(0, 8), y + rng.normal(0, 8), acc=12.0))
    return noisy, index


def test_state_survives_json_round_trip_mid_stream() -> None:
    points, index = mixed_day()
    tracker = FenceTracker()
    whole, _ = run(tracker, points, index)
    assert [t for _, t, _ in transitions(whole)].count("enter") >= 4
    assert {a.type for a in whole.alerts} == {"forbidden_zone", "left_post"}

    for cut in (100, 217, 330, 351):  # inside hq, walking, pending at the vault, at the customer
        first, state = run(tracker, points[:cut], index)
        blob = json.dumps(state.to_dict())
        assert len(blob) < 1024
        restored = FenceState.from_dict(json.loads(blob))
        rest, _ = run(tracker, points[cut:], index, state=restored)
        assert transitions(first) + transitions(rest) == transitions(whole)
        assert [a.id for a in first.alerts + rest.alerts] == [a.id for a in whole.alerts]
        assert [e.id for e in first.fence_events + rest.fence_events] == [
            e.id for e in whole.fence_events
        ]


def test_pending_state_round_trips_with_lists() -> None:
    index = FenceIndex([square("yard", 100)])
    tracker = FenceTracker()
    out, state = run(tracker, [point(at(10), 0, 0)], index)
    assert out.fence_events == [] and list(state.pending) == ["yard"]
    restored = FenceState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    more = [point(at(10) + i * STEP_MS, 0.3 * i, 0) for i in (1, 2, 3)]
    out, _ = run(tracker, more, index, state=restored)
    assert transitions(out) == [("yard", "enter", at(10))]


def test_multipath_burst_of_three_fixes_does_not_flip() -> None:
    index = FenceIndex([square("hq", 100)])
    points = stay(at(9), 0, 0, 2)
    t = points[-1].ts_ms
    # 3 fixes thrown 300 m out with a lying 10 m accuracy, then back where the rep is.
    points += [point(t + i * STEP_MS, 300 + i, 0, acc=10.0) for i in (1, 2, 3)]
    points += stay(t + 4 * STEP_MS, 0, 0, 1)
    out, state = run(FenceTracker(), points, index)
    assert transitions(out) == [("hq", "enter", at(9))]
    assert state.inside == {"hq": at(9)}
    # Two confirming fixes (the old default) flapped on it.
    out, _ = run(FenceTracker(FenceParams(confirm_fixes=2)), points, index)
    assert [t for _, t, _ in transitions(out)] == ["enter", "exit", "enter"]


def test_mock_fixes_give_no_fence_events() -> None:
    index = FenceIndex([square("vault", 100, kind="forbidden", cx=1000)])
    points = stay(at(10), 0, 0, 1) + stay(at(10, 1), 1000, 0, 10)  # a fake 10 min in the vault
    for p in points[12:]:
        p.flags |= TrackFlag.MOCK
    out, state = run(FenceTracker(), points, index)
    assert out.fence_events == [] and out.alerts == [] and state.pending == {}
    for p in points:
        p.flags = 0  # the same positions, real: an entry and a forbidden-zone alert
    out, _ = run(FenceTracker(), points, index)
    assert transitions(out) == [("vault", "enter", at(10, 1))]
    assert [a.type for a in out.alerts] == ["forbidden_zone"]


def test_frozen_position_does_not_confirm_until_a_fresh_fix() -> None:
    index = FenceIndex([square("hq", 100, cx=1000)])
    home = stay(at(10), 0, 0, 1)
    frozen = [point(at(10, 1) + i * STEP_MS, 1000, 0) for i in range(120)]  # 10 min, 0 jitter
    out, state = run(FenceTracker(), home + frozen, index)
    assert out.fence_events == [] and state.pending["hq"][0] == at(10, 1)
    # A fresh fix that differs: the stay was real after all, dated from its first fix.
    fresh = [point(at(10, 11), 1000.4, 0)]
    out, state = run(FenceTracker(), fresh, index, state=state)
    assert transitions(out) == [("hq", "enter", at(10, 1))]


def test_teleport_and_back_gives_no_event_a_real_relocation_does() -> None:
    index = FenceIndex([square("far", 150, cx=10_000)])
    before = stay(at(10), 0, 0, 1)
    away = stay(at(10, 1), 10_000, 0, 8)  # 10 km in 5 s, then 8 min there
    back = stay(at(10, 9), 0, 0, 2)
    out, _ = run(FenceTracker(), before + away + back, index)
    assert out.fence_events == []
    # Without the jump rule the excursion is an enter and an exit.
    out, _ = run(FenceTracker(FenceParams(jump_hold_s=0)), before + away + back, index)
    assert [t for _, t, _ in transitions(out)] == ["enter", "exit"]
    # Staying there longer than jump_hold_s: recorded, with the time of the first fix.
    out, _ = run(FenceTracker(FenceParams(jump_hold_s=300)), before + away, index)
    assert transitions(out) == [("far", "enter", at(10, 1))]
    # Arriving after a gap long enough to drive there is no jump at all.
    later = stay(at(10, 20), 10_000, 0, 1)
    out, _ = run(FenceTracker(), before + later, index)
    assert transitions(out) == [("far", "enter", at(10, 20))]


def test_a_new_work_shift_starts_with_an_enter() -> None:
    index = FenceIndex([square("hq", 100)])
    monday = stay(at(17, 50), 0, 0, 5)
    tuesday = stay(at(8) + 86_400_000, 0, 0, 2)  # still (again) inside the next morning
    out, state = run(FenceTracker(), monday + tuesday, index)
    assert transitions(out) == [("hq", "enter", at(17, 50)), ("hq", "enter", tuesday[0].ts_ms)]
    assert state.inside == {"hq": tuesday[0].ts_ms}
    # A gap inside one shift (phone off for an hour) keeps the state: no second enter.
    lunch = stay(at(13), 0, 0, 2)
    out, _ = run(FenceTracker(), stay(at(11), 0, 0, 2) + lunch, index)
    assert transitions(out) == [("hq", "enter", at(11))]
    # Without work hours there are no shifts: one enter.
    out, _ = run(FenceTracker(), monday + tuesday, index, schedule=None)
    assert transitions(out) == [("hq", "enter", at(17, 50))]


class PlainLookups(FenceTracker):
    """The tracker as it was before the memo: every fix asks the index."""

    def _near(self, state, index, points, margins, org_id):  # type: ignore[no-untyped-def]
        lats, lons = [p.lat for p in points], [p.lon for p in points]
        return index.near_many(lats, lons, margins, org_id=org_id)


def memo_world(seed: int) -> tuple[list[TrackPoint], FenceIndex]:
    """Fences of every kind around a day that stays by borders, walks and drives across
    them and jumps away and back; accuracies vary (so do the margins)."""
    rng = np.random.default_rng(seed)
    evening = Schedule.parse("mon-fri 10:30-23:00 UTC")
    fences: list[Fence] = [square("terr", 3000, kind="territory")]
    for i in range(40):
        cx, cy = rng.uniform(-2500, 2500, 2)
        lat, lon = FRAME.to_latlon(cx, cy)
        if i % 3:
            half = rng.uniform(20, 150)
            ring = [FRAME.to_latlon(cx + x, cy + y) for x, y in
                    ((-half, -half), (half, -half), (half, half), (-half, half))]  # fmt: skip
            geom = shapely.Polygon([(lo, la) for la, lo in ring])
            kind = ("office", "forbidden", "customer")[i % 3]
            fences.append(Fence(f"p{i}", ORG, f"p{i}", kind, geom, evening if i % 5 == 0 else None))
        else:
            fences.append(circle_fence(f"c{i}", ORG, f"c{i}", "customer", lat, lon,
                                       float(rng.uniform(30, 200))))  # fmt: skip
    points: list[TrackPoint] = []
    ts, x, y = MONDAY_10, 0.0, 0.0
    for leg in range(30):
        target = fences[int(rng.integers(1, len(fences)))]
        c = target.geometry.centroid
        tx, ty = FRAME.to_xy(c.y, c.x)
        speed = float(rng.choice([1.4, 8.0, 15.0]))
        steps = max(1, int(math.hypot(tx - x, ty - y) / (speed * 5)))
        for k in range(1, steps + 1):
            px, py = x + (tx - x) * k / steps, y + (ty - y) * k / steps
            points.append(point(ts, px, py, float(rng.uniform(3, 60))))
            ts += STEP_MS
        x, y = tx, ty
        for _ in range(int(rng.integers(10, 60))):  # linger by the fence's border or inside
            ox, oy = rng.normal(0, 40, 2)
            points.append(point(ts, x + ox, y + oy, float(rng.uniform(3, 40))))
            ts += STEP_MS
        if leg % 7 == 3:  # a teleport and back
            points.append(point(ts, x + 20_000, y, 10.0))
            ts += STEP_MS
    return points, FenceIndex(fences, {"p1": [DEV]})


def test_memo_gives_the_same_answers_as_asking_the_index_every_fix() -> None:
    for seed in (1, 2, 3):
        points, index = memo_world(seed)
        tracker = FenceTracker()
        state = tracker.initial_state()
        reused = measured = 0
        for i in range(0, len(points), 12):
            batch = points[i : i + 12]
            margins = [tracker.margin_for(p.accuracy_m) for p in batch]
            want = index.near_many(
                [p.lat for p in batch], [p.lon for p in batch], margins, org_id=ORG
            )
            got = tracker._near(state, index, batch, margins, ORG)
            for g, w, margin in zip(got, want, margins, strict=True):
                assert [f.fence_id for f, _ in g] == [f.fence_id for f, _ in w]
                for (_, dg), (_, dw) in zip(g, w, strict=True):
                    # Exact, or both deeper inside than the margin (all the tracker asks).
                    assert dg == dw or (dg < -margin and dw < -margin), (dg, dw, margin)
                    reused += dg != dw
                    measured += dg == dw
        assert reused > 100 and measured > 100  # both paths really ran


def test_memo_changes_no_event_alert_or_state() -> None:
    for seed in (4, 5):
        points, index = memo_world(seed)
        for batch in (1, 12, 50):
            fast, fast_state = run(FenceTracker(), points, index, batch=batch)
            plain, plain_state = run(PlainLookups(), points, index, batch=batch)
            assert transitions(fast) == transitions(plain)
            assert [a.id for a in fast.alerts] == [a.id for a in plain.alerts]
            assert fast_state.to_dict() == plain_state.to_dict()
        assert len(transitions(plain)) > 10 and plain.alerts


def test_memo_is_not_state_and_follows_the_index() -> None:
    tracker = FenceTracker()
    points = stay(at(10), 0, 0, 5)
    out, state = run(tracker, points, FenceIndex([square("yard", 100)]))
    assert state.near_memo is not None  # a memo was kept ...
    assert "near_memo" not in state.to_dict()  # ... but it is not part of the state
    assert FenceState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert transitions(out) == [("yard", "enter", at(10))]
    # New reference data: the memo of the old index must not answer for the new one.
    moved = FenceIndex([square("yard", 100, cx=5000)])
    out, state = run(tracker, stay(at(10, 10), 0, 0, 5), moved, state=state)
    assert state.near_memo is not None and state.near_memo[0] is moved
    # The new index says the device is out of the yard (the old memo said deep inside).
    assert transitions(out) == [("yard", "exit", at(10, 10))]
