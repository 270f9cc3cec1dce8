"""Dwell / visit detection on small hand-made tracks (local metres around a fixed origin)."""

from __future__ import annotations

import json
import random
from dataclasses import replace

from pipeline.events import Dwell, TrackPoint
from pipeline.geo import LocalFrame, haversine_m
from pipeline.processors.base import Ctx, Result
from pipeline.processors.dwell import DwellDetector, DwellParams, DwellState
from pipeline.reference import ReferenceData
from pipeline.reference.customers import CustomerIndex
from pipeline.reference.models import Customer, Schedule

FRAME = LocalFrame(52.5, 13.4)
T0 = 1_700_000_000_000
ORG = "org1"
DEV = "dev1"
DT = 5.0  # sampling interval, seconds

Path = list[tuple[float, float, float]]  # (t_s, x_m, y_m)


def customer(cid: str, x: float, y: float, radius: float = 100.0, org: str = ORG) -> Customer:
    lat, lon = FRAME.to_latlon(x, y)
    return Customer(cid, org, cid.upper(), lat, lon, radius_m=radius, grade="A")


def make_ctx(*customers: Customer, now_ms: int = 0) -> Ctx:
    return Ctx(ORG, DEV, now_ms, ReferenceData(customers=CustomerIndex(customers)))


def drive(path: Path, t: float, x0: float, x1: float, speed: float) -> float:
    """Append fixes moving along the x axis from x0 (exclusive) to x1; return the next time."""
    step = speed * DT * (1 if x1 >= x0 else -1)
    x = x0 + step
    while (x < x1) if step > 0 else (x > x1):
        path.append((t, x, 0.0))
        t += DT
        x += step
    return t


def stay(path: Path, t: float, x: float, y: float, seconds: float) -> float:
    end = t + seconds
    while t < end:
        path.append((t, x, y))
        t += DT
    return t


def still(t: float, x: float, y: float, seconds: float) -> Path:
    path: Path = []
    stay(path, t, x, y, seconds)
    return path


def points(
    path: Path, noise_m: float = 0.0, seed: int = 1, accuracy: float = 20.0
) -> list[TrackPoint]:
    rng = random.Random(seed)
    out = []
    for seq, (t, x, y) in enumerate(path):
        lat, lon = FRAME.to_latlon(x + rng.gauss(0, noise_m), y + rng.gauss(0, noise_m))
        out.append(
            TrackPoint(
                ORG,
                DEV,
                seq,
                T0 + int(t * 1000),
                lat,
                lon,
                lat,
                lon,
                accuracy,
                0.0,
                0.0,
                False,
                0.0,
            )
        )
    return out


def stop_track(stop_s: float = 1200.0, speed: float = 12.0) -> tuple[Path, float, float]:
    """Drive in from 1 km west, stop at the origin, drive out east: (path, arrive, leave)."""
    path: Path = []
    t = drive(path, 0.0, -1000.0 - speed * DT, -0.1, speed)
    arrive = t
    t = stay(path, t, 0.0, 0.0, stop_s)
    leave = t - DT
    drive(path, t, 0.0, 1000.0, speed)
    return path, arrive, leave


def run(
    pts: list[TrackPoint],
    ctx: Ctx,
    params: DwellParams | None = None,
    batch: int = 7,
    final: bool = True,
) -> Result:
    det = DwellDetector(params)
    state = det.initial_state()
    out = Result()
    for i in range(0, len(pts), batch):
        det.process(state, pts[i : i + batch], ctx, out)
    if final:
        det.tick(state, ctx, out, final=True)
    return out


def secs(ms: int) -> float:
    return (ms - T0) / 1000.0


def test_stop_at_customer_gives_one_dwell_and_one_visit() -> None:
    path, arrive, leave = stop_track()
    ctx = make_ctx(customer("c1", 10.0, 5.0))
    out = run(points(path, noise_m=20.0, seed=3), ctx)
    assert [d.status for d in out.dwells] == ["open", "closed"]
    opened, closed = out.dwells
    assert opened.id == closed.id
    assert (opened.version, closed.version) == (1, 2)
    assert closed.end_reason == "moved"
    assert opened.customer_id == closed.customer_id == "c1"
    assert haversine_m(closed.lat, closed.lon, *FRAME.to_latlon(0, 0)) < 15.0
    assert 150 < closed.n_points <= 1200 / DT + 2
    assert 0 < closed.radius_m < 40
    assert len(out.visits) == 1
    v = out.visits[0]
    assert v.customer_id == "c1" and v.dwell_id == closed.id and v.customer_grade == "A"
    assert abs(secs(v.arrive_ms) - arrive) <= 60
    assert abs(secs(v.leave_ms) - leave) <= 60
    assert (v.arrive_ms, v.leave_ms) == (closed.start_ms, closed.end_ms)
    assert abs(v.minutes - (v.leave_ms - v.arrive_ms) / 60000) < 0.01
    assert (
        abs(
            v.distance_m
            - haversine_m(
                closed.lat,
                closed.lon,
                ctx.ref.customers.customers[0].lat,
                ctx.ref.customers.customers[0].lon,
            )
        )
        < 0.2
    )


def test_arrive_and_leave_errors_small_over_many_noisy_stops() -> None:
    errors = []
    ctx = make_ctx(customer("c1", 0.0, 0.0))
    for seed in range(8):
        path, arrive, leave = stop_track(stop_s=900.0)
        (v,) = run(points(path, noise_m=20.0, seed=seed), ctx).visits
        errors += [abs(secs(v.arrive_ms) - arrive), abs(secs(v.leave_ms) - leave)]
    errors.sort()
    assert errors[len(errors) // 2] <= 30
    assert errors[-1] <= 60


def test_walking_approach_is_trimmed_from_the_arrival() -> None:
    # Walking 1.4 m/s: without trimming, the stay would start ~80 m (~60 s) before the stop.
    path, arrive, leave = stop_track(stop_s=900.0, speed=1.4)
    (v,) = run(points(path, noise_m=5.0), make_ctx(customer("c1", 0.0, 0.0))).visits
    assert abs(secs(v.arrive_ms) - arrive) <= 35
    assert abs(secs(v.leave_ms) - leave) <= 35


def test_approach_at_the_start_of_a_stay_is_trimmed() -> None:
    # The first fix comes 70 m out (app just started) and the rep walks in: all of the walk is
    # inside the running radius, so only the trim keeps it out of the visit (50 s untrimmed).
    path: Path = [(i * DT, -70.0 + 1.4 * DT * i, 0.0) for i in range(10)]
    arrive = 10 * DT
    stay(path, arrive, 0.0, 0.0, 900.0)
    out = run(points(path, noise_m=3.0), make_ctx(customer("c1", 0.0, 0.0)))
    (v,) = out.visits
    assert 0 < arrive - secs(v.arrive_ms) <= 30
    assert out.dwells[0].start_ms == v.arrive_ms  # the open record already has the trimmed start
    assert haversine_m(out.dwells[1].lat, out.dwells[1].lon, FRAME.lat0, FRAME.lon0) < 3.0


def test_two_minute_drive_by_stop_gives_no_dwell() -> None:
    path: Path = []
    t = drive(path, 0.0, -1000.0, 0.0, 12.0)
    t = stay(path, t, 0.0, 0.0, 120.0)
    drive(path, t, 0.0, 1000.0, 12.0)
    out = run(points(path, noise_m=10.0), make_ctx(customer("c1", 0.0, 0.0)))
    assert out.dwells == [] and out.visits == []


def test_ten_minute_gap_inside_a_stay_does_not_split_it() -> None:
    path: Path = []
    t = stay(path, 0.0, 0.0, 0.0, 600.0)
    t = stay(path, t + 600.0, 0.0, 0.0, 600.0)
    drive(path, t, 0.0, 1000.0, 12.0)
    out = run(points(path, noise_m=10.0), make_ctx())
    assert [d.status for d in out.dwells] == ["open", "closed"]
    closed = out.dwells[1]
    assert closed.end_reason == "moved"
    assert secs(closed.start_ms) == 0.0
    assert secs(closed.end_ms) >= 1790.0 - 60


def test_thirty_minute_gap_ends_the_stay_with_gap() -> None:
    path: Path = []
    t = stay(path, 0.0, 0.0, 0.0, 600.0)
    last_before_gap = t - DT
    t = stay(path, t + 1800.0, 0.0, 0.0, 600.0)
    out = run(points(path, noise_m=10.0), make_ctx(customer("c1", 0.0, 0.0)))
    first_closed = out.dwells[1]
    assert first_closed.status == "closed" and first_closed.end_reason == "gap"
    assert secs(first_closed.end_ms) >= last_before_gap - 30
    assert secs(first_closed.end_ms) <= last_before_gap
    # The stay after the gap is a new dwell, flushed at the end of the replay.
    assert [(d.status, d.end_reason) for d in out.dwells[2:]] == [("open", ""), ("closed", "flush")]
    assert out.dwells[2].id != first_closed.id
    assert [secs(v.arrive_ms) for v in out.visits] == [0.0, secs(out.dwells[2].start_ms)]


def test_single_150m_jump_does_not_end_a_stay() -> None:
    path: Path = []
    t = stay(path, 0.0, 0.0, 0.0, 600.0)
    path.append((t, 150.0, 0.0))
    t = stay(path, t + DT, 0.0, 0.0, 600.0)
    drive(path, t, 0.0, 1000.0, 12.0)
    out = run(points(path, noise_m=10.0), make_ctx())
    assert [d.status for d in out.dwells] == ["open", "closed"]
    assert secs(out.dwells[1].end_ms) >= 1190.0


def test_two_outside_fixes_are_not_enough_to_leave() -> None:
    path: Path = []
    t = stay(path, 0.0, 0.0, 0.0, 600.0)
    t = stay(path, t, 200.0, 0.0, 2 * DT)  # two fixes (5 s apart) at a neighbour
    stay(path, t, 0.0, 0.0, 300.0)
    out = run(points(path), make_ctx(), final=False)
    assert [d.status for d in out.dwells] == ["open"]


def test_moving_to_a_neighbour_ends_the_stay_and_starts_another() -> None:
    path: Path = []
    t = stay(path, 0.0, 0.0, 0.0, 600.0)
    stay(path, t, 200.0, 0.0, 600.0)
    out = run(points(path, noise_m=5.0), make_ctx())
    assert [(d.status, d.end_reason) for d in out.dwells] == [
        ("open", ""),
        ("closed", "moved"),
        ("open", ""),
        ("closed", "flush"),
    ]
    assert secs(out.dwells[1].end_ms) == 595.0
    # The second stay starts with the first fix at the neighbour (re-fed from the exit buffer).
    assert secs(out.dwells[2].start_ms) == 600.0


def test_low_accuracy_fixes_neither_end_nor_move_a_stay() -> None:
    pts = points(still(0.0, 0.0, 0.0, 600.0))
    far = points([(600.0 + i * DT, 500.0, 0.0) for i in range(10)], accuracy=400.0)
    tail = points(still(650.0, 0.0, 0.0, 300.0))
    out = run(pts + far + tail, make_ctx())
    assert [d.status for d in out.dwells] == ["open", "closed"]
    closed = out.dwells[1]
    assert haversine_m(closed.lat, closed.lon, FRAME.lat0, FRAME.lon0) < 1.0
    assert secs(closed.end_ms) == 945.0


def test_stop_away_from_customers_gives_dwell_without_visit() -> None:
    path, _, _ = stop_track()
    out = run(points(path, noise_m=20.0), make_ctx(customer("c1", 500.0, 0.0)))
    assert [d.status for d in out.dwells] == ["open", "closed"]
    assert all(d.customer_id is None for d in out.dwells)
    assert out.visits == []


def test_nearest_of_two_adjacent_customers_is_chosen() -> None:
    path, _, _ = stop_track()
    ctx = make_ctx(customer("far", -40.0, 0.0), customer("near", 15.0, 0.0))
    out = run(points(path, noise_m=5.0), ctx)
    assert {d.customer_id for d in out.dwells} == {"near"}
    (v,) = out.visits
    assert v.customer_id == "near" and v.distance_m < 25


def test_customer_of_another_org_is_ignored() -> None:
    path, _, _ = stop_track()
    ctx = make_ctx(customer("theirs", 0.0, 0.0, org="org2"), customer("ours", 80.0, 0.0))
    out = run(points(path, noise_m=5.0), ctx)
    assert {d.customer_id for d in out.dwells} == {"ours"}
    assert [v.customer_id for v in out.visits] == ["ours"]


def test_tick_closes_an_open_dwell_after_silence() -> None:
    det = DwellDetector()
    state = det.initial_state()
    ctx = make_ctx(customer("c1", 0.0, 0.0))
    out = Result()
    det.process(state, points(still(0.0, 0.0, 0.0, 600.0)), ctx, out)
    assert [d.status for d in out.dwells] == ["open"]
    last_ms = T0 + 595_000
    ctx.now_ms = last_ms + 900_000  # exactly max_gap_s: not yet
    det.tick(state, ctx, out)
    assert len(out.dwells) == 1
    ctx.now_ms = last_ms + 900_001
    det.tick(state, ctx, out)
    assert [(d.status, d.end_reason) for d in out.dwells] == [("open", ""), ("closed", "gap")]
    assert out.dwells[1].end_ms == last_ms
    assert len(out.visits) == 1 and out.visits[0].leave_ms == last_ms
    det.tick(state, ctx, out)  # closed once only
    assert len(out.dwells) == 2 and state.dwell_id is None


def test_final_tick_flushes_open_dwell_and_is_quiet_without_one() -> None:
    det = DwellDetector()
    ctx = make_ctx(customer("c1", 0.0, 0.0))
    state = det.initial_state()
    out = Result()
    det.tick(state, ctx, out, final=True)
    assert out.dwells == []
    det.process(state, points(still(0.0, 0.0, 0.0, 400.0)), ctx, out)
    det.tick(state, ctx, out, final=True)
    assert [(d.status, d.end_reason) for d in out.dwells] == [("open", ""), ("closed", "flush")]
    assert len(out.visits) == 1
    assert abs(out.visits[0].minutes - 395 / 60) < 0.01
    # A short stay that never became a dwell is simply dropped.
    out2 = Result()
    det.process(state, points(still(1000.0, 0.0, 0.0, 100.0)), ctx, out2)
    det.tick(state, ctx, out2, final=True)
    assert out2.dwells == [] and out2.visits == []


def test_ids_are_deterministic_across_runs_and_batchings() -> None:
    path: Path = []
    t = stay(path, 0.0, 0.0, 0.0, 700.0)
    t = drive(path, t, 0.0, 800.0, 12.0)
    stay(path, t, 800.0, 0.0, 700.0)
    pts = points(path, noise_m=15.0, seed=9)
    ctx = make_ctx(customer("a", 0.0, 0.0), customer("b", 800.0, 0.0))
    runs = [run(pts, ctx, batch=b) for b in (1, 7, len(pts))]
    assert len(runs[0].visits) == 2
    for other in runs[1:]:
        assert other.dwells == runs[0].dwells
        assert other.visits == runs[0].visits
    ids = {d.id for d in runs[0].dwells}
    assert len(ids) == 2 and len({v.id for v in runs[0].visits}) == 2


def test_state_round_trip_mid_stream_gives_identical_outputs() -> None:
    path: Path = []
    t = drive(path, 0.0, -600.0, 0.0, 1.4)  # walk in: the head buffer is in use
    t = stay(path, t, 0.0, 0.0, 700.0)
    path.append((t, 150.0, 0.0))  # a jump: the pending buffer is in use
    t = stay(path, t + DT, 0.0, 0.0, 200.0)
    t = drive(path, t, 0.0, 800.0, 12.0)
    stay(path, t, 800.0, 0.0, 400.0)
    pts = points(path, noise_m=15.0, seed=4)
    ctx = make_ctx(customer("a", 0.0, 0.0))
    expected = run(pts, ctx, batch=1)
    assert len(expected.dwells) == 4
    det = DwellDetector()
    jump_index = next(i for i, (_, x, _) in enumerate(path) if x == 150.0)
    for cut in (40, 100, jump_index + 1, len(pts) - 30):
        state = det.initial_state()
        out = Result()
        det.process(state, pts[:cut], ctx, out)
        raw = json.loads(json.dumps(state.to_dict()))
        restored = DwellState.from_dict(raw)
        assert restored.to_dict() == state.to_dict()
        det.process(restored, pts[cut:], ctx, out)
        det.tick(restored, ctx, out, final=True)
        assert out.dwells == expected.dwells, cut
        assert out.visits == expected.visits, cut


def test_one_batch_and_fix_by_fix_with_round_trips_end_in_the_same_state() -> None:
    """The per-fix loop keeps the stay in locals within a batch (and feeds confirmed exits
    again): a batch must leave exactly the state that fix-by-fix feeding leaves, with the
    state serialised between fixes, including duplicates, vague fixes, gaps and exits."""
    path: Path = []
    t = drive(path, 0.0, -600.0, 0.0, 1.4)
    t = stay(path, t, 0.0, 0.0, 700.0)
    path.append((t, 150.0, 0.0))  # a glitch: pending, then cleared
    t = stay(path, t + DT, 0.0, 0.0, 200.0)
    t = drive(path, t, 0.0, 800.0, 12.0)  # exits confirmed, fixes fed again
    t = stay(path, t, 800.0, 0.0, 400.0)
    t = stay(path, t + 1200.0, 800.0, 0.0, 400.0)  # a gap ends the stay
    pts = points(path, noise_m=15.0, seed=5)
    rng = random.Random(3)
    for i in rng.sample(range(len(pts)), 25):
        pts[i] = replace(pts[i], accuracy_m=rng.choice([150.0, 12.5, 0.4]))
    pts[200:200] = [pts[199], replace(pts[150], seq=10_000)]  # a duplicate and a late fix
    ctx = make_ctx(customer("a", 0.0, 0.0), customer("b", 800.0, 0.0))
    det = DwellDetector()
    whole, whole_out = det.initial_state(), Result()
    det.process(whole, pts, ctx, whole_out)
    state, out = det.initial_state(), Result()
    for p in pts:
        det.process(state, [p], ctx, out)
        state = DwellState.from_dict(json.loads(json.dumps(state.to_dict())))
    closed = [d.end_reason for d in whole_out.dwells if d.status == "closed"]
    assert closed == ["moved", "gap"] and len(whole_out.visits) == 2
    assert out.dwells == whole_out.dwells
    assert out.visits == whole_out.visits
    assert json.dumps(state.to_dict()) == json.dumps(whole.to_dict())


def test_out_of_order_and_duplicate_points_are_ignored() -> None:
    pts = points(still(0.0, 0.0, 0.0, 600.0))
    ctx = make_ctx()
    clean = run(pts, ctx)
    messy = [*pts[:50], pts[10], pts[49], *pts[50:]]
    assert run(messy, ctx).dwells == clean.dwells


def test_state_stays_small_over_a_long_day() -> None:
    path: Path = []
    t = 0.0
    x = 0.0
    for _ in range(10):
        t = stay(path, t, x, 0.0, 900.0)
        t = drive(path, t, x, x + 2000.0, 1.4 if x % 4000 else 12.0)
        x += 2000.0
    det = DwellDetector()
    state = det.initial_state()
    ctx = make_ctx()
    out = Result()
    biggest = 0
    for p in points(path, noise_m=20.0, seed=2):
        det.process(state, [p], ctx, out)
        biggest = max(biggest, len(json.dumps(state.to_dict())))
    assert biggest < 1000
    reasons = [d.end_reason for d in out.dwells if d.status == "closed"]
    assert reasons == ["moved"] * 10  # one per stop; the walks between never become dwells


def test_params_change_behaviour() -> None:
    path, _, _ = stop_track(stop_s=240.0)
    pts = points(path, noise_m=5.0)
    assert run(pts, make_ctx()).dwells == []
    out = run(pts, make_ctx(), DwellParams(min_duration_s=180.0))
    assert [d.status for d in out.dwells] == ["open", "closed"]
    # visit_extra_m widens the customer's radius.
    far = customer("c1", 130.0, 0.0, radius=100.0)
    assert run(pts, make_ctx(far), DwellParams(min_duration_s=180.0)).visits == []
    wide = run(pts, make_ctx(far), DwellParams(min_duration_s=180.0, visit_extra_m=50.0))
    assert [v.customer_id for v in wide.visits] == ["c1"]


def test_dwell_records_carry_device_identity() -> None:
    out = run(points(still(0.0, 0.0, 0.0, 400.0)), make_ctx())
    assert all(isinstance(d, Dwell) and (d.org_id, d.device_id) == (ORG, DEV) for d in out.dwells)
    assert out.dwells[0].end_ms <= out.dwells[1].end_ms


def test_stays_cut_by_the_start_or_end_of_work_hours_are_not_verified() -> None:
    every_day = frozenset(range(7))
    t0_min = (T0 // 60_000) % 1440  # T0's minute of the (UTC) day
    pts = points(still(0.0, 0.0, 0.0, 1200.0), noise_m=5.0, seed=4)
    base = make_ctx(customer("c1", 0.0, 0.0))

    def visits(start_min: int, end_min: int) -> list[tuple[bool, str]]:
        schedule = Schedule("UTC", every_day, start_min % 1440, end_min % 1440)
        out = run(pts, replace(base, schedule=schedule))
        return [(v.verified, v.suspect_alerts) for v in out.visits]

    # Work hours began a minute before the first fix: the rep was already there.
    assert visits(t0_min - 1, t0_min + 120) == [(False, "arrival_not_observed")]
    # ... and end right after the last fix (20 min later): still there when tracking stopped.
    assert visits(t0_min - 60, t0_min + 21) == [(False, "departure_not_observed")]
    # Tracking ran well before and after: a proper visit. No schedule: tracked at all hours.
    assert visits(t0_min - 60, t0_min + 120) == [(True, "")]
    assert [v.verified for v in run(pts, base).visits] == [True]
