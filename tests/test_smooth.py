"""Trajectory smoothing: accuracy, mileage, outlier gating, restarts and state round-trips."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np

from pipeline.events import Ping, TrackFlag, TrackPoint
from pipeline.geo import LocalFrame, haversine_m
from pipeline.processors.base import Ctx, Result
from pipeline.processors.smooth import Smoother, SmoothParams, SmoothState

FRAME = LocalFrame(48.137, 11.575)
# The smoother never touches ctx.ref; a bare Ctx keeps the test off the reference stubs.
CTX = Ctx("org", "dev", 0, None)  # type: ignore[arg-type]


def make_pings(
    truth: list[tuple[float, float]],
    interval_s: float,
    noise_m: float,
    seed: int,
    accuracy_m: float | None = None,
    t0_ms: int = 1_700_000_000_000,
) -> list[Ping]:
    """Fixes along a true local-metre track with seeded Gaussian noise per axis."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, noise_m, size=(len(truth), 2)) if noise_m else np.zeros((len(truth), 2))
    pings = []
    for i, ((x, y), (nx, ny)) in enumerate(zip(truth, noise, strict=True)):
        lat, lon = FRAME.to_latlon(x + float(nx), y + float(ny))
        acc = accuracy_m if accuracy_m is not None else max(noise_m, 5.0)
        pings.append(Ping("org", "dev", i, t0_ms + int(i * interval_s * 1000), lat, lon, acc))
    return pings


def run(
    pings: list[Ping], params: SmoothParams | None = None
) -> tuple[list[TrackPoint], Result, SmoothState]:
    smoother = Smoother(params)
    state = smoother.initial_state()
    out = Result()
    points = smoother.process(state, pings, CTX, out)
    return points, out, state


def straight(n: int, speed_mps: float, interval_s: float) -> list[tuple[float, float]]:
    """A drive heading 37 degrees east of north."""
    ex, ny = math.sin(math.radians(37)), math.cos(math.radians(37))
    return [(speed_mps * interval_s * i * ex, speed_mps * interval_s * i * ny) for i in range(n)]


def rmse(points: list[TrackPoint], truth: list[tuple[float, float]]) -> tuple[float, float]:
    raw, smooth = [], []
    for p, (x, y) in zip(points, truth, strict=True):
        lat, lon = FRAME.to_latlon(x, y)
        raw.append(haversine_m(p.raw_lat, p.raw_lon, lat, lon) ** 2)
        smooth.append(haversine_m(p.lat, p.lon, lat, lon) ** 2)
    return math.sqrt(sum(raw) / len(raw)), math.sqrt(sum(smooth) / len(smooth))


def test_one_point_per_ping_with_raw_fix_kept() -> None:
    pings = make_pings(straight(30, 10.0, 1.0), 1.0, 8.0, seed=1)
    points, out, _ = run(pings)
    assert [p.seq for p in points] == [p.seq for p in pings]
    pairs = zip(points, pings, strict=True)
    assert all(p.raw_lat == q.lat and p.raw_lon == q.lon for p, q in pairs)
    assert out.track_points == []  # the topology appends the returned list, not the smoother


def test_straight_drive_rmse_and_mileage() -> None:
    for noise, interval in ((10.0, 1.0), (20.0, 1.0), (20.0, 5.0)):
        n = int(1200 / interval)
        truth = straight(n, 15.0, interval)
        points, out, _ = run(make_pings(truth, interval, noise, seed=9))
        raw_rmse, smooth_rmse = rmse(points, truth)
        assert smooth_rmse <= 0.6 * raw_rmse, (noise, interval, raw_rmse, smooth_rmse)
        true_length = 15.0 * interval * (n - 1)
        mileage = sum(p.step_m for p in points)
        assert abs(mileage / true_length - 1.0) < 0.03, (noise, interval, mileage, true_length)
        # The innovation gate is a 1-in-3000 test: an extreme Gaussian tail may be rejected.
        assert out.counters["outlier"] <= 1


def test_speed_and_heading_are_sane_while_driving() -> None:
    points, _, _ = run(make_pings(straight(120, 15.0, 1.0), 1.0, 10.0, seed=3))
    cruising = points[30:]
    assert all(p.moving for p in cruising)
    assert all(abs(p.speed_mps - 15.0) < 2.5 for p in cruising)
    assert all(abs((p.heading_deg - 37.0 + 180.0) % 360.0 - 180.0) < 10.0 for p in cruising)


def test_stationary_hour_adds_almost_no_mileage() -> None:
    for interval, seed in ((5.0, 1), (5.0, 2), (1.0, 3)):
        n = int(3600 / interval)
        points, _, _ = run(make_pings([(0.0, 0.0)] * n, interval, 20.0, seed=seed))
        assert sum(p.step_m for p in points) < 50.0
        assert sum(p.moving for p in points) <= 5
        assert all(p.speed_mps == 0.0 for p in points if not p.moving)


def test_stop_and_go_counts_the_drives_not_the_stops() -> None:
    # 10 min standing, 5 min at 12 m/s east, 10 min standing: 3600 m driven.
    interval = 5.0
    truth = [(0.0, 0.0)] * 120
    truth += [(12.0 * interval * (i + 1), 0.0) for i in range(60)]
    truth += [truth[-1]] * 120
    points, out, _ = run(make_pings(truth, interval, 15.0, seed=11))
    mileage = sum(p.step_m for p in points)
    assert abs(mileage - 3600.0) < 0.05 * 3600.0, mileage
    assert sum(p.step_m for p in points[:115]) == 0.0
    assert not points[-1].moving
    assert out.counters["outlier"] == 0


def test_single_spike_is_outlier_and_changes_nothing_after_it() -> None:
    truth = [(0.0, 0.0)] * 60
    pings = make_pings(truth, 5.0, 10.0, seed=4)
    k = 40
    clean_points, _, _ = run(pings[:k] + pings[k + 1 :])
    spiked = list(pings)
    lat, lon = FRAME.to_latlon(500.0, 0.0)
    spiked[k] = Ping("org", "dev", k, pings[k].ts_ms, lat, lon, 10.0)
    points, out, _ = run(spiked)
    spike = points[k]
    assert spike.flags & TrackFlag.OUTLIER and spike.flags & TrackFlag.SPIKE
    assert spike.step_m == 0.0
    assert haversine_m(spike.lat, spike.lon, *FRAME.to_latlon(0.0, 0.0)) < 20.0
    assert out.counters["outlier"] == 1
    # The filter did not see the spike: every later point is exactly as without that ping.
    assert points[k + 1 :] == clean_points[k:]


def test_spike_during_a_drive_at_one_hertz() -> None:
    truth = straight(120, 15.0, 1.0)
    pings = make_pings(truth, 1.0, 10.0, seed=5)
    x, y = truth[80]
    lat, lon = FRAME.to_latlon(x + 400.0, y - 300.0)
    pings[80] = Ping("org", "dev", 80, pings[80].ts_ms, lat, lon, 10.0)
    points, out, _ = run(pings)
    assert points[80].flags & TrackFlag.SPIKE
    assert out.counters["outlier"] == 1
    assert abs(sum(p.step_m for p in points) / (15.0 * 119) - 1.0) < 0.05


def test_low_accuracy_fix_is_gated() -> None:
    pings = make_pings([(0.0, 0.0)] * 20, 5.0, 5.0, seed=6)
    clean_points, _, _ = run(pings[:10] + pings[11:])
    lat, lon = FRAME.to_latlon(300.0, 300.0)
    pings[10] = Ping("org", "dev", 10, pings[10].ts_ms, lat, lon, 500.0)
    points, out, _ = run(pings)
    assert points[10].flags == TrackFlag.OUTLIER | TrackFlag.LOW_ACCURACY
    assert points[10].step_m == 0.0
    assert out.counters["outlier"] == 1
    assert points[11:] == clean_points[10:]


def test_teleport_then_consistent_fixes_reacquires_without_mileage() -> None:
    truth = [(0.0, 0.0)] * 20 + [(30_000.0, 0.0)] * 20  # 30 km in 5 s: not reachable
    points, out, _ = run(make_pings(truth, 5.0, 8.0, seed=7))
    rejected = [i for i, p in enumerate(points) if p.flags & TrackFlag.OUTLIER]
    assert rejected == [20, 21, 22]  # reacquire_after=4: the fourth consistent fix restarts
    new_place = FRAME.to_latlon(30_000.0, 0.0)
    assert all(haversine_m(p.lat, p.lon, *new_place) < 30.0 for p in points[23:])
    assert sum(p.step_m for p in points) == 0.0
    assert out.counters["outlier"] == 3


def test_first_fix_wrong_is_recovered() -> None:
    truth = [(0.0, 0.0)] * 20
    pings = make_pings(truth, 5.0, 5.0, seed=8)
    lat, lon = FRAME.to_latlon(2000.0, 0.0)
    pings[0] = Ping("org", "dev", 0, pings[0].ts_ms, lat, lon, 5.0)
    points, _, _ = run(pings)
    assert all(haversine_m(p.lat, p.lon, FRAME.lat0, FRAME.lon0) < 15.0 for p in points[4:])


def test_gap_restarts_filter_and_bridges_moderate_gaps_only() -> None:
    stay = make_pings([(0.0, 0.0)] * 10, 5.0, 5.0, seed=9)
    t_last = stay[-1].ts_ms
    # 10 min later, 3 km away: a plausible drive through a dead zone, bridged.
    lat, lon = FRAME.to_latlon(3000.0, 0.0)
    after = Ping("org", "dev", 10, t_last + 600_000, lat, lon, 5.0)
    points, _, state = run([*stay, after])
    assert points[-1].flags & TrackFlag.GAP_BEFORE
    assert abs(points[-1].step_m - 3000.0) < 30.0
    assert (points[-1].lat, points[-1].lon) == (lat, lon)  # restarted at the fix
    assert state.filter_ts_ms == after.ts_ms
    # Overnight (14 h) the displacement is not mileage.
    later = Ping("org", "dev", 10, t_last + 14 * 3_600_000, lat, lon, 5.0)
    points, _, _ = run([*stay, later])
    assert points[-1].flags & TrackFlag.GAP_BEFORE
    assert points[-1].step_m == 0.0
    # A gap below restart_gap_s does not restart.
    soon = Ping("org", "dev", 10, t_last + 60_000, stay[-1].lat, stay[-1].lon, 5.0)
    points, _, _ = run([*stay, soon])
    assert not points[-1].flags & TrackFlag.GAP_BEFORE


def test_mock_is_flagged_but_smoothed() -> None:
    pings = make_pings([(0.0, 0.0)] * 5, 5.0, 5.0, seed=10)
    pings[3].is_mock = True
    points, out, _ = run(pings)
    assert points[3].flags == TrackFlag.MOCK
    assert out.counters["outlier"] == 0


def test_reported_velocity_is_fused() -> None:
    truth = straight(3, 15.0, 5.0)
    pings = make_pings(truth, 5.0, 10.0, seed=12)
    for p in pings:
        p.speed_mps, p.bearing_deg = 15.0, 37.0
    _, _, fused = run(pings[:2])
    _, _, unfused = run(pings[:2], SmoothParams(fuse_reported_velocity=False))
    # After two fixes the Doppler speed pins the velocity; positions alone cannot yet.
    assert abs(fused.x[2] - 15.0 * math.sin(math.radians(37))) < 1.0
    assert abs(fused.x[3] - 15.0 * math.cos(math.radians(37))) < 1.0
    assert math.hypot(unfused.x[2] - fused.x[2], unfused.x[3] - fused.x[3]) > 1.0
    # A phone reporting 0 m/s without bearing is standing still: its velocity stays near 0.
    still = make_pings([(0.0, 0.0)] * 20, 5.0, 20.0, seed=15)
    for p in still:
        p.speed_mps = 0.0
    _, _, state = run(still)
    assert math.hypot(state.x[2], state.x[3]) < 0.5


def test_frame_recentres_on_long_drives() -> None:
    truth = straight(2000, 25.0, 1.0)  # 50 km
    points, _, state = run(make_pings(truth, 1.0, 5.0, seed=13))
    assert math.hypot(state.x[0], state.x[1]) < SmoothParams().recentre_m
    assert haversine_m(state.origin_lat, state.origin_lon, FRAME.lat0, FRAME.lon0) > 20_000
    end = FRAME.to_latlon(*truth[-1])
    assert haversine_m(points[-1].lat, points[-1].lon, *end) < 20.0
    assert abs(sum(p.step_m for p in points) / (25.0 * 1999) - 1.0) < 0.02


def test_state_round_trip_mid_track_gives_identical_outputs() -> None:
    interval = 5.0
    truth = [(0.0, 0.0)] * 40 + [(12.0 * interval * (i + 1), 0.0) for i in range(40)]
    pings = make_pings(truth, interval, 15.0, seed=14)
    lat, lon = FRAME.to_latlon(0.0, 900.0)
    pings[30] = Ping("org", "dev", 30, pings[30].ts_ms, lat, lon, 15.0)  # a spike too
    whole, _, _ = run(pings)
    smoother = Smoother()
    for cut in (30, 41, 55):
        state = smoother.initial_state()
        first = smoother.process(state, pings[:cut], CTX, Result())
        restored = SmoothState.from_dict(json.loads(json.dumps(state.to_dict())))
        rest = smoother.process(restored, pings[cut:], CTX, Result())
        assert first + rest == whole
    assert len(json.dumps(state.to_dict())) < 1200


def test_state_json_is_compact() -> None:
    """Short names, no defaults, no dead candidate or stationary fields, no mileage point
    while it is the estimate; the restored state is the same state."""
    truth = [(0.0, 0.0)] * 40 + [(60.0 * (i + 1), 0.0) for i in range(40)]
    pings = make_pings(truth, 5.0, 15.0, seed=14)
    lat, lon = FRAME.to_latlon(0.0, 900.0)
    pings[30] = Ping("org", "dev", 30, pings[30].ts_ms, lat, lon, 15.0)  # one rejected spike
    smoother = Smoother()
    state = smoother.initial_state()
    assert state.to_dict() == {}
    smoother.process(state, pings[:31], CTX, Result())
    assert state.cand_count == 1 and "cn" in state.to_dict()  # a candidate run is kept
    smoother.process(state, pings[31:], CTX, Result())
    data = state.to_dict()
    assert state.moving and state.cand_count == 0
    assert not {"c_lat", "cn", "sc", "aw", "ox", "oy", "ot", "p"} & set(data)
    assert len(json.dumps(data, separators=(",", ":"))) < 420
    restored = SmoothState.from_dict(json.loads(json.dumps(data)))
    assert restored == state


def test_state_saved_with_the_full_covariance_still_restores() -> None:
    smoother = Smoother()
    state = smoother.initial_state()
    pings = make_pings(straight(20, 10.0, 5.0), 5.0, 8.0, seed=3)
    smoother.process(state, pings, CTX, Result())
    old = {f: getattr(state, f) for f in ("origin_lat", "origin_lon", "x", "filter_ts_ms")}
    a, b, c = state.var_pos, state.cov_pos_vel, state.var_vel
    old["p"] = [a, 0.0, b, 0.0, 0.0, a, 0.0, b, b, 0.0, c, 0.0, 0.0, b, 0.0, c]
    restored = SmoothState.from_dict(json.loads(json.dumps(old)))
    assert (restored.var_pos, restored.cov_pos_vel, restored.var_vel) == (a, b, c)
    assert restored.x == state.x and restored.filter_ts_ms == state.filter_ts_ms


def test_late_point_is_pure_and_flagged() -> None:
    smoother = Smoother()
    ping = Ping("org", "dev", 7, 1_700_000_000_000, 48.1, 11.5, 12.0, speed_mps=3.0, is_mock=True)
    point = smoother.late_point(ping)
    assert (point.raw_lat, point.raw_lon, point.lat, point.lon) == (48.1, 11.5, 48.1, 11.5)
    assert point.flags == TrackFlag.LATE | TrackFlag.MOCK
    assert point.step_m == 0.0 and not point.moving
    assert point.speed_mps == 3.0 and point.heading_deg == 0.0


def with_velocity(pings: list[Ping], velocities: list[tuple[float, float]]) -> list[Ping]:
    """The same fixes with the phone's reported speed and bearing (east, north in m/s)."""
    out = []
    for p, (ve, vn) in zip(pings, velocities, strict=True):
        speed = math.hypot(ve, vn)
        bearing = math.degrees(math.atan2(ve, vn)) % 360.0 if speed >= 1.0 else None
        out.append(Ping(p.org_id, p.device_id, p.seq, p.ts_ms, p.lat, p.lon, p.accuracy_m,
                        speed_mps=speed, bearing_deg=bearing))  # fmt: skip
    return out


def test_multipath_burst_while_standing_is_rejected() -> None:
    # Standing still, the phone says 0 m/s; three fixes 150 m off with a lying 10 m accuracy.
    truth = [(0.0, 0.0)] * 60
    pings = with_velocity(make_pings(truth, 5.0, 6.0, seed=21), [(0.0, 0.0)] * 60)
    for k in (30, 31, 32):
        lat, lon = FRAME.to_latlon(150.0, 0.0)
        pings[k] = Ping("org", "dev", k, pings[k].ts_ms, lat, lon, 10.0, speed_mps=0.0)
    points, out, _ = run(pings)
    assert [i for i, p in enumerate(points) if p.flags & TrackFlag.OUTLIER] == [30, 31, 32]
    assert out.counters["outlier"] == 3
    assert sum(p.step_m for p in points) == 0.0
    assert not any(p.moving for p in points)


def test_standing_position_is_the_average_of_the_fixes() -> None:
    truth = [(0.0, 0.0)] * 240
    pings = with_velocity(make_pings(truth, 5.0, 10.0, seed=22), [(0.0, 0.0)] * 240)
    points, _, _ = run(pings)
    raw_rmse, smooth_rmse = rmse(points[40:], truth[40:])
    assert smooth_rmse < 0.25 * raw_rmse, (raw_rmse, smooth_rmse)


def test_mileage_at_60_s_follows_the_speed_not_the_corner_cut() -> None:
    # 630 s east then 600 s north at 10 m/s (12.3 km), fixes every 60 s: the turn falls between
    # two fixes, whose chord (424 m) cuts the 600 m driven there.
    def position(t: float) -> tuple[float, float]:
        s = 10.0 * min(max(t, 0.0), 1230.0)
        return (s, 0.0) if s <= 6300.0 else (6300.0, s - 6300.0)

    def velocity(t: float) -> tuple[float, float]:
        if t <= 0.0 or t >= 1230.0:
            return (0.0, 0.0)
        return (10.0, 0.0) if t < 630.0 else (0.0, 10.0)

    times = [60.0 * i for i in range(-10, 32)]
    truth = [position(t) for t in times]
    pings = with_velocity(make_pings(truth, 60.0, 5.0, seed=23), [velocity(t) for t in times])
    points, _, _ = run(pings)
    chords = sum(math.dist(a, b) for a, b in itertools.pairwise(truth))
    mileage = sum(p.step_m for p in points)
    assert chords < 12_150.0  # exact positions would lose the corner
    assert abs(mileage - 12_300.0) < 0.02 * 12_300.0, mileage
