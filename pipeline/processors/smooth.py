"""Trajectory smoothing: a Kalman filter per device, outlier gating, moving flag and mileage.

Every in-order ping becomes exactly one `TrackPoint` carrying the raw fix and the filtered
position, speed, heading, a moving flag and `step_m`, the distance the point adds to mileage.

Filter. A constant-velocity Kalman filter in a local east/north metric frame around an origin
that is re-centred when the estimate gets `recentre_m` from it. A fix's `accuracy_m` is taken
as a 1-sigma error per axis (floored at `accuracy_floor_m`), so precise fixes pull harder than
vague ones. With isotropic noise the east and north axes are independent and share one 2x2
covariance block, so the per-ping path is a few dozen scalar operations (no numpy). The motion
model is continuous white-noise acceleration: given the velocity at both ends of an interval
the position between is the trapezoid of the two, uncertain by q*dt^3/12 (the path may bend).
Steady motion is smoothed with the small `process_noise`; when recent fixes keep surprising
the filter (running mean of the normalised innovation above `manoeuvre_gate`) it assumes a
manoeuvre (turn, start, stop) and follows the fixes with `manoeuvre_noise`.

Velocity fusion. If `fuse_reported_velocity`, the phone's reported speed with bearing (Doppler:
good when moving, untouched by multipath) is fused as a velocity measurement at the fix, BEFORE
the position is gated (1-sigma `reported_speed_sigma_mps` per axis); a reported speed under
0.5 m/s without a bearing counts as standing still. A reported velocity further off the
filter's than 5 sigma plus 6 m/s^2 of braking over the interval is ignored rather than fused.

Outliers are decided on arrival, holding nothing back (no added latency). A fix is rejected
when its accuracy is worse than `max_accuracy_m` (flags OUTLIER|LOW_ACCURACY), when the speed
implied from the last accepted fix exceeds `max_speed_mps` after both accuracies are given as
slack, or (OUTLIER|SPIKE) when it is more than `gate_min_distance_m` from the prediction and
beyond what the motion allows: with a reported velocity, beyond `innovation_gate` sigmas plus
a reach of `gate_path_fraction` x the larger end speed x dt (the path bends) plus
`gate_accel_mps2` x dt^2 / 4 (a device standing at both ends may have moved off and stopped);
without one, beyond `innovation_gate` sigmas of a prediction allowing a manoeuvre, and more
than `gate_min_distance_m` from the last accepted fix too (a sudden stop is near the last fix).
Multipath (a fix 100-500 m off while the phone reports 10 m accuracy and its true velocity) is
thus caught while standing or driving at 5 s sampling (169/171 such fixes on the tuning seeds,
against 55/179 before the reach gate; 38 of ~86,000 good fixes rejected); at 60 s nothing is
tight enough to tell a burst from a drive. A rejected fix leaves the filter untouched: its
point shows the prediction for that time, `step_m` 0, and it is counted in
`out.counters["outlier"]`. So the filter cannot reject a real relocation forever,
`reacquire_after` consecutive rejected fixes that agree with each other restart it at the
newest one; if the first of them was physically reachable from the last accepted fix, the
straight line is counted as mileage (a teleport is not).

Moving flag, stationary position and mileage (what expense checks rely on). A stationary
device keeps the place it stands (a weighted mean of its fixes, `anchor_memory` fixes long),
and that place is the point's smoothed position while the filter's speed is under
`moving_speed_mps`: the true position does not move, so averaging hard is right. It starts
moving when the filtered speed exceeds `moving_speed_mps` AND the estimate is beyond
`move_radius_m` (or three sigma of the estimate's and the anchor's combined uncertainty, if
larger) from that place, on `start_confirm` consecutive fixes (or one fix at least
`start_confirm_s` after the previous: sparse sampling cannot wait a minute). Mileage is the
path integrated from the speed at each fix (the trapezoid of the reported speeds, or the
filter's when none is reported): fix times do not depend on the traffic, so this is unbiased
even at 60 s where chords between exact positions cut the grid's corners by 8 %. It is counted
in chords: a step is added when the estimate is at least `min_step_m` (or two sigma of its
uncertainty) from the last counted position, or when the device stops, and a step is at most
`max_path_ratio` x its straight chord (no reported speed adds distance the positions do not
show). The departure step is at least the chord from where the device stood (its first
metres are driven before the speed confirms them). The device stops when the filtered speed
falls below `stopped_speed_mps` or no chord was completed for `stop_after_s`. While
stationary `step_m` is 0 and speed is reported as 0; the heading keeps its last moving value.

Gaps. After `restart_gap_s` without an accepted fix the filter restarts from the next fix
(flag GAP_BEFORE). If the gap is at most `bridge_gap_max_s` and the device moved beyond its
start radius meanwhile at a plausible speed, the straight line across the gap is counted as
mileage and that point is marked moving: a tunnel or a dead zone should not erase a drive.

Parameters (`SmoothParams`, config section `[smooth]`):

- `max_accuracy_m` (100.0): fixes reporting a worse accuracy are outliers (LOW_ACCURACY).
- `accuracy_floor_m` (3.0): the smallest 1-sigma error believed for a fix.
- `max_speed_mps` (70.0): implied speed from the last accepted fix, after subtracting both
  accuracies, above which a fix is an outlier (SPIKE).
- `innovation_gate` (16.0): squared Mahalanobis distance from the prediction (beyond the
  reach) above which a fix may be a spike; 16 is about 1 in 3000 for a 2-D Gaussian.
- `gate_min_distance_m` (60.0): a fix within this of the prediction is never a spike (nor,
  without a reported velocity, within this of the last accepted fix).
- `gate_path_fraction` (0.5): share of the distance coverable at the larger end speed that a
  path may bend away from the trapezoid (0.3 and 0.6 gave identical tuning results).
- `gate_accel_mps2` (0.5): acceleration for the reach of a device standing at both ends
  (a*dt^2/4: 3 m at 5 s, 28 m at 15 s); 0.5 rejects 54/69 multipath fixes at 15 s sampling
  (1.0: 41, 2.0: fewer) with 20 vs 24 good fixes rejected.
- `process_noise` (0.1): acceleration noise (sqrt of the spectral density, m/s^1.5) for
  steady motion; 0.3 was equal within noise on the tuning seeds.
- `manoeuvre_noise` (3.0): the same while manoeuvring (and, without a reported velocity, the
  acceleration allowed for by the spike gate); 6.0 lost 4 points of RMSE at 15 s sampling,
  1.0 lost 6-9 points at 5 s.
- `manoeuvre_gate` (6.0): running mean of the normalised innovation (expectation 2) above
  which the filter assumes a manoeuvre.
- `reported_speed_sigma_mps` (0.3): 1-sigma error of a reported velocity, per axis (phones'
  Doppler speed is good to a few dm/s); 0.3 vs 1.0 added 10-14 points of RMSE reduction.
- `fuse_reported_velocity` (True): fuse the phone's reported speed and bearing.
- `initial_speed_sigma_mps` (10.0): velocity uncertainty when the filter (re)starts without a
  reported velocity.
- `moving_speed_mps` (0.8): filtered speed above which a stationary device may start moving.
- `stopped_speed_mps` (0.4): filtered speed below which a moving device stops (hysteresis).
  1.6/0.8 counted a rep pacing at 0.6-1.3 m/s as standing ("border loiterer" mileage error
  27.5 %); 1.0/0.5 gave 16.1 %, 0.8/0.4 14.5 %, with "honest day", "40 m noise" and "60 s
  sampling" unchanged to the third digit (`evaluate --sweep smooth.moving_speed_mps`); the
  `move_radius_m` displacement still has to happen, so noise alone does not start a move.
- `move_radius_m` (25.0): least displacement from where it stood for a device to start moving.
- `min_step_m` (10.0): least chord counted into mileage while moving.
- `stop_after_s` (20.0): a moving device that completes no chord for this long has stopped.
- `start_confirm` (2): consecutive fixes that must agree before a device starts moving.
- `start_confirm_s` (10.0): a fix at least this long after the previous one confirms a start
  alone (60 s sampling: mileage error 7.6 % -> 2.7 %; a short hop was lost waiting).
- `anchor_memory` (100.0): how many fixes the stationary position averages over (at most);
  30 -> 100 gained ~1-3 points of RMSE reduction, 300 no more.
- `restart_gap_s` (300.0): time without an accepted fix after which the filter restarts.
- `bridge_gap_max_s` (900.0): gaps up to this long (and over `restart_gap_s`) count their
  straight-line displacement as mileage; 0 disables.
- `reacquire_after` (4): consecutive mutually consistent rejected fixes that restart the
  filter at the new place; multipath comes in bursts of up to 3 consistent fixes, and 3
  restarted the filter on them (RMSE reduction 49 % -> 65 % on "honest day" with 4).
- `recentre_m` (20000.0): distance of the estimate from the frame origin that re-centres the
  frame, keeping the equirectangular approximation accurate (distance error < 0.5 %).
- `max_path_ratio` (1.6): most a counted step may exceed its straight chord (a right-angle
  turn between fixes is 1.41); without the cap the integral is not bounded by the positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from pipeline.events import Ping, TrackFlag, TrackPoint
from pipeline.geo import M_PER_DEG_LAT, haversine_m
from pipeline.processors.base import Ctx, Result, SerialisableState

_DEG = math.pi / 180.0
_OUTLIER = int(TrackFlag.OUTLIER)
_LOW_ACCURACY = int(TrackFlag.OUTLIER | TrackFlag.LOW_ACCURACY)
_SPIKE = int(TrackFlag.OUTLIER | TrackFlag.SPIKE)
_MOCK = int(TrackFlag.MOCK)
_GAP = int(TrackFlag.GAP_BEFORE)
_LATE = int(TrackFlag.LATE)
# Below this reported speed a missing bearing does not matter: the phone says it stands still.
_STILL_REPORTED_MPS = 0.5
# A reported velocity this many sigmas off the prediction (squared), plus what a car can
# change its velocity by in the interval (hard braking), is ignored, not fused.
_VELOCITY_GATE = 25.0
_MAX_ACCEL_MPS2 = 6.0
# Bound on the averaged surprise so one huge accepted jump cannot blow the covariance up.
_SURPRISE_CAP = 400.0
# Weight of the newest fix in the averaged surprise.
_SURPRISE_RATE = 0.5


@dataclass(slots=True)
class SmoothParams:
    """Smoothing parameters; see the module docstring for what each one does."""

    max_accuracy_m: float = 100.0
    accuracy_floor_m: float = 3.0
    max_speed_mps: float = 70.0
    innovation_gate: float = 16.0
    gate_min_distance_m: float = 60.0
    gate_path_fraction: float = 0.5
    gate_accel_mps2: float = 0.5
    process_noise: float = 0.1
    manoeuvre_noise: float = 3.0
    manoeuvre_gate: float = 6.0
    reported_speed_sigma_mps: float = 0.3
    fuse_reported_velocity: bool = True
    initial_speed_sigma_mps: float = 10.0
    moving_speed_mps: float = 0.8
    stopped_speed_mps: float = 0.4
    move_radius_m: float = 25.0
    min_step_m: float = 10.0
    stop_after_s: float = 20.0
    start_confirm: int = 2
    start_confirm_s: float = 10.0
    anchor_memory: float = 100.0
    restart_gap_s: float = 300.0
    bridge_gap_max_s: float = 900.0
    reacquire_after: int = 4
    recentre_m: float = 20_000.0
    max_path_ratio: float = 1.6


@dataclass(slots=True)
class SmoothState(SerialisableState):
    """Per-device filter state (about 30 numbers).

    `x` is [east, north, v_east, v_north] in metres and m/s in the frame around
    (`origin_lat`, `origin_lon`). Its 4x4 covariance has only three distinct entries (east and
    north are independent and alike): `var_pos` (each position's variance), `cov_pos_vel`
    (each position with its own velocity) and `var_vel`. `filter_ts_ms` 0 means the filter has
    not started. `odo_x`/`odo_y` is where mileage was last counted to: the end of the last
    chord while moving, the place the device stands (a weighted mean of its fixes, weight
    `anchor_w`) while stationary. `surprise` is the running mean normalised innovation.
    `cand_*` is the newest rejected fix of the current run of consistent rejections (all at
    their defaults when there is no run); `start_count` and `anchor_w` are 0 while moving.
    In JSON the fields have short names (`_json_names`), fields at their defaults are left
    out, and so is the mileage point while it is the estimate: 350-420 B.
    """

    _json_names: ClassVar[dict[str, str]] = {
        "origin_lat": "o_lat",
        "origin_lon": "o_lon",
        "var_pos": "pp",
        "cov_pos_vel": "pv",
        "var_vel": "vv",
        "filter_ts_ms": "t",
        "fix_lat": "f_lat",
        "fix_lon": "f_lon",
        "fix_acc_m": "f_acc",
        "moving": "mv",
        "heading_deg": "hd",
        "odo_x": "ox",
        "odo_y": "oy",
        "odo_ts_ms": "ot",
        "cand_lat": "c_lat",
        "cand_lon": "c_lon",
        "cand_acc_m": "c_acc",
        "cand_ts_ms": "ct",
        "cand_count": "cn",
        "cand_reachable": "cr",
        "surprise": "su",
        "anchor_w": "aw",
        "start_count": "sc",
        "path_m": "pm",
        "last_speed_mps": "ls",
    }

    origin_lat: float = 0.0
    origin_lon: float = 0.0
    x: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    var_pos: float = 0.0
    cov_pos_vel: float = 0.0
    var_vel: float = 0.0
    filter_ts_ms: int = 0
    # Last accepted raw fix (for the speed gate and gap bridging).
    fix_lat: float = 0.0
    fix_lon: float = 0.0
    fix_acc_m: float = 0.0
    moving: bool = False
    heading_deg: float = 0.0
    odo_x: float = 0.0
    odo_y: float = 0.0
    odo_ts_ms: int = 0
    cand_lat: float = 0.0
    cand_lon: float = 0.0
    cand_acc_m: float = 0.0
    cand_ts_ms: int = 0
    cand_count: int = 0
    cand_reachable: bool = False
    surprise: float = 2.0
    anchor_w: float = 0.0
    start_count: int = 0
    # Path length (m) driven since `odo_x`/`odo_y`, integrated from the speed at each fix;
    # the speed at the last accepted fix (-1: unknown).
    path_m: float = 0.0
    last_speed_mps: float = -1.0

    def to_dict(self) -> dict[str, Any]:
        data = SerialisableState.to_dict(self)
        # While driving the mileage point is the estimate, counted at this fix: left out when
        # it is (and written even at its default when it is not; see `from_dict`).
        x = self.x
        if self.odo_x == x[0] and self.odo_y == x[1]:
            data.pop("ox", None)
            data.pop("oy", None)
        else:
            data["ox"] = self.odo_x
            data["oy"] = self.odo_y
        if self.odo_ts_ms == self.filter_ts_ms:
            data.pop("ot", None)
        else:
            data["ot"] = self.odo_ts_ms
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = super(SmoothState, cls).from_dict(data)
        if "ox" not in data and "odo_x" not in data:
            state.odo_x, state.odo_y = state.x[0], state.x[1]
        if "ot" not in data and "odo_ts_ms" not in data:
            state.odo_ts_ms = state.filter_ts_ms
        p = data.get("p")
        if p is not None and len(p) == 16:  # a state saved with the full 4x4 covariance
            state.var_pos, state.cov_pos_vel, state.var_vel = p[0], p[2], p[10]
        return state


class Smoother:
    """Kalman smoothing, outlier gating, moving flag and mileage per device."""

    def __init__(self, params: SmoothParams | None = None) -> None:
        self.params = prm = params or SmoothParams()
        self._slow2 = prm.moving_speed_mps * prm.moving_speed_mps
        # Per-ping constants, derived once (the parameters do not change after construction).
        self._q = prm.process_noise * prm.process_noise
        self._qm = prm.manoeuvre_noise * prm.manoeuvre_noise
        self._rv = prm.reported_speed_sigma_mps * prm.reported_speed_sigma_mps
        self._gmin2 = prm.gate_min_distance_m * prm.gate_min_distance_m
        self._reach_accel = 0.25 * prm.gate_accel_mps2
        self._recentre2 = prm.recentre_m * prm.recentre_m
        self._min_step2 = prm.min_step_m * prm.min_step_m
        self._move_radius2 = prm.move_radius_m * prm.move_radius_m
        self._stop_after_ms = prm.stop_after_s * 1000
        # What the per-fix loop reads, unpacked into locals once per batch.
        self._consts = (
            prm.max_accuracy_m,
            prm.accuracy_floor_m,
            prm.restart_gap_s,
            prm.max_speed_mps,
            prm.innovation_gate,
            self._gmin2,
            prm.fuse_reported_velocity,
            self._q,
            self._qm,
            self._rv,
            prm.manoeuvre_gate,
            self._recentre2,
            self._min_step2,
            prm.stopped_speed_mps,
            self._stop_after_ms,
            prm.moving_speed_mps,
            self._move_radius2,
            prm.start_confirm,
            prm.start_confirm_s,
            prm.anchor_memory,
            self._slow2,
        )

    def initial_state(self) -> SmoothState:
        return SmoothState()

    # ------------------------------------------------------------------ public API

    # fmt: off
    # (the loop's locals are loaded and saved as one row each)
    def process(
        self, state: SmoothState, pings: list[Ping], ctx: Ctx, out: Result
    ) -> list[TrackPoint]:
        """One TrackPoint per ping (event-time order, already validated).

        Written out as one loop because per-fix calls, state attribute lookups and temporary
        tuples were most of this processor's cost: the filter's running values live in locals,
        written back (`_save`) before a rare case hands the state to a helper (an outlier, a
        (re)start, a re-centred frame) and read again (`_load`) after it. Every float operation
        is the one of the fix-at-a-time formulas, in the same order, so results do not depend
        on how the pings are batched."""
        (max_acc, acc_floor, restart_gap_s, max_speed, gate, gmin2, fuse, q_steady, qm, rv,
         man_gate, recentre2, min_step2, stopped_speed, stop_after_ms, moving_speed,
         move_radius2, start_confirm, start_confirm_s, anchor_memory, slow2) = self._consts
        s = state
        (origin_lat, origin_lon, mlon, low_lat, x0, x1, x2, x3, var_pos, cov_pv, var_vel, filter_ts,
         fix_lat, fix_lon, fix_acc, moving, heading, odo_x, odo_y, odo_ts, surprise, anchor_w,
         start_count, path_m, last_speed) = self._load(s)
        counted = self._counted
        hypot = math.hypot
        sqrt = math.sqrt
        sin = math.sin
        cos = math.cos
        atan2 = math.atan2
        points: list[TrackPoint] = []
        append = points.append
        outliers = 0
        for ping in pings:
            raw_acc = ping.accuracy_m
            acc = raw_acc if raw_acc > acc_floor else acc_floor
            flags = _MOCK if ping.is_mock else 0
            if raw_acc > max_acc:
                self._save(s, x0, x1, x2, x3, var_pos, cov_pv, var_vel, filter_ts, fix_lat,
                           fix_lon, fix_acc, moving, heading, odo_x, odo_y, odo_ts, surprise,
                           anchor_w, start_count, path_m, last_speed)
                append(self._outlier(s, ping, flags | _LOW_ACCURACY))
                outliers += 1
                continue
            ts = ping.ts_ms
            gap_s = (ts - filter_ts) / 1000.0
            if filter_ts == 0 or gap_s > restart_gap_s:
                # The first fix, or the first after a long silence: (re)start the filter.
                self._save(s, x0, x1, x2, x3, var_pos, cov_pv, var_vel, filter_ts, fix_lat,
                           fix_lon, fix_acc, moving, heading, odo_x, odo_y, odo_ts, surprise,
                           anchor_w, start_count, path_m, last_speed)
                if filter_ts == 0:
                    self._restart(s, ping, acc)
                    step = 0.0
                else:
                    step = self._after_gap(s, ping, acc, gap_s)
                    flags |= _GAP
                (origin_lat, origin_lon, mlon, low_lat, x0, x1, x2, x3, var_pos, cov_pv, var_vel,
                 filter_ts, fix_lat, fix_lon, fix_acc, moving, heading, odo_x, odo_y, odo_ts,
                 surprise, anchor_w, start_count, path_m, last_speed) = self._load(s)
            else:
                lat = ping.lat
                lon = ping.lon
                # Speed gate against the last accepted raw fix, each accuracy given as slack.
                # The flat distance in the frame is within 5 % of the great circle here (both
                # fixes within 0.5 degrees of latitude of the origin, below 80 degrees): far
                # inside the limit, the haversine is not needed (most of a ping's trigonometry).
                slack = acc + fix_acc
                limit = max_speed * (gap_s if gap_s > 1.0 else 1.0)
                fx = (lon - fix_lon) * mlon
                fy = (lat - fix_lat) * M_PER_DEG_LAT
                far = 0.9 * (limit + slack)
                dist_fix = -1.0  # not computed yet
                if (
                    fx * fx + fy * fy <= far * far
                    and low_lat
                    and -0.3 < fix_lat - origin_lat < 0.3
                ):
                    reachable = True
                else:
                    dist_fix = haversine_m(fix_lat, fix_lon, lat, lon)
                    reachable = dist_fix - slack <= limit
                # Predict to the fix time (committed only if the fix is accepted). Continuous
                # white-noise acceleration: given the velocity at both ends, the position
                # between is uncertain by q*dt^3/12 (the path may bend), which is what makes
                # 60 s fixes barely smoothable.
                zx = (lon - origin_lon) * mlon
                zy = (lat - origin_lat) * M_PER_DEG_LAT
                dt = gap_s if gap_s > 0.0 else 0.0
                dt2 = dt * dt
                a_pred = var_pos + 2.0 * dt * cov_pv + dt2 * var_vel
                b_pred = cov_pv + dt * var_vel
                r = acc * acc
                # The phone's own velocity at the fix (Doppler: unaffected by multipath, good
                # when moving, ~0 when still); NaN when it did not say.
                hx = hy = math.nan
                reported = ping.speed_mps
                if reported is not None and fuse:
                    bearing = ping.bearing_deg
                    if bearing is not None:
                        hx = reported * sin(bearing * _DEG)
                        hy = reported * cos(bearing * _DEG)
                    elif reported <= _STILL_REPORTED_MPS:
                        hx = hy = 0.0
                # Steady motion first; the manoeuvre noise only if the fix is accepted while
                # recent fixes keep surprising the filter (the loop runs at most twice).
                q = q_steady
                manoeuvre = False
                while True:
                    a = a_pred + q * dt * dt * dt / 3.0
                    b = b_pred + q * dt * dt * 0.5
                    c = var_vel + q * dt
                    ex = x0 + x2 * dt
                    ey = x1 + x3 * dt
                    vx = x2
                    vy = x3
                    fused = False
                    if hx == hx:  # not NaN: fuse the reported velocity if it is plausible
                        svv = c + rv
                        jx = hx - vx
                        jy = hy - vy
                        dv = _MAX_ACCEL_MPS2 * dt
                        if jx * jx + jy * jy <= _VELOCITY_GATE * svv + dv * dv:
                            ga = b / svv
                            gb = c / svv
                            ex += ga * jx
                            ey += ga * jy
                            vx += gb * jx
                            vy += gb * jy
                            a -= ga * b  # (each from the values before this update)
                            b -= ga * c
                            c -= gb * c
                            fused = True
                    ix = zx - ex
                    iy = zy - ey
                    sv = a + r
                    if manoeuvre:
                        break
                    innov2 = ix * ix + iy * iy
                    # Far even from the steady prediction: is it far allowing for a manoeuvre?
                    spike = innov2 > gate * sv and innov2 > gmin2 and self._spike(
                        x0, x1, x2, x3, dt, a_pred, sv, r, innov2, fused, hx, hy, zx, zy,
                        fix_lat, fix_lon, lat, lon, dist_fix)
                    if spike or not reachable:
                        break
                    su = surprise + _SURPRISE_RATE * (innov2 / sv - surprise)
                    surprise = su if su < _SURPRISE_CAP else _SURPRISE_CAP
                    if su <= man_gate:
                        break
                    q = qm
                    manoeuvre = True
                if reachable and not spike:
                    # Accepted: update with the position.
                    ka = a / sv
                    kb = b / sv
                    x2 = vx + kb * ix
                    x3 = vy + kb * iy
                    x0 = ex + ka * ix
                    x1 = ey + ka * iy
                    var_pos = a * r / sv
                    cov_pv = b * r / sv
                    var_vel = c - kb * b
                    filter_ts = ts
                    fix_lat = lat
                    fix_lon = lon
                    fix_acc = acc
                    if s.cand_count:  # (the candidate lives in the state, not in locals)
                        _forget_candidate(s)
                    # Moving flag and mileage from the new estimate.
                    speed = hypot(x2, x3)
                    # Path driven since the last fix: the trapezoid of the speeds at both ends.
                    # Fix times do not depend on the traffic, so this is unbiased even at 60 s,
                    # where straight chords between fixes cut the corners of a city grid (-8 %
                    # with exact positions).
                    now_speed = reported if reported is not None else speed
                    last = last_speed if last_speed >= 0.0 else now_speed
                    last_speed = now_speed
                    interval_m = dt * (last + now_speed) * 0.5
                    dx = x0 - odo_x
                    dy = x1 - odo_y
                    d2 = dx * dx + dy * dy
                    step = 0.0
                    if moving:
                        heading = atan2(x2, x3) / _DEG % 360.0
                        path_m += interval_m
                        # Count in chords longer than the estimate's own wobble, so jitter adds
                        # nothing.
                        chord2 = 4.0 * var_pos
                        if chord2 < min_step2:
                            chord2 = min_step2
                        stopping = speed < stopped_speed
                        if d2 >= chord2 or stopping:
                            step = counted(path_m, sqrt(d2), False)
                            odo_x, odo_y, odo_ts = x0, x1, ts
                            path_m = 0.0
                        if stopping or ts - odo_ts > stop_after_ms:
                            # Stopped: the stop starts at the estimate, weighted by the filter's
                            # certainty.
                            moving = False
                            odo_x, odo_y = x0, x1
                            anchor_w = 1.0 / var_pos
                            start_count = 0
                            path_m = 0.0
                    else:
                        # Stationary: start only when fast AND clearly away from the stop, twice
                        # in a row.
                        spread = 9.0 * (1.0 / anchor_w + var_pos)
                        radius2 = move_radius2
                        if spread > radius2:
                            radius2 = spread
                        # The path of a departure is integrated from its first fast fix, before
                        # it is confirmed.
                        if now_speed > moving_speed:
                            path_m += interval_m
                        else:
                            path_m = 0.0
                        if speed > moving_speed and d2 > radius2:
                            start_count += 1
                            if start_count >= start_confirm or dt >= start_confirm_s:
                                moving = True
                                heading = atan2(x2, x3) / _DEG % 360.0
                                # From where it stood: the start is not lost.
                                step = counted(path_m, sqrt(d2), True)
                                odo_x, odo_y, odo_ts = x0, x1, ts
                                path_m = 0.0
                                # Unused while moving (the stop sets them afresh): defaults are
                                # not stored.
                                start_count = 0
                                anchor_w = 0.0
                        else:
                            start_count = 0
                            # Refine where the device stands: a weighted mean of its raw fixes,
                            # memory capped.
                            w = 1.0 / r
                            total = anchor_w + w
                            odo_x += (zx - odo_x) * w / total
                            odo_y += (zy - odo_y) * w / total
                            cap = anchor_memory * w
                            anchor_w = total if total < cap else cap
                    if x0 * x0 + x1 * x1 > recentre2:
                        self._save(s, x0, x1, x2, x3, var_pos, cov_pv, var_vel, filter_ts,
                                   fix_lat, fix_lon, fix_acc, moving, heading, odo_x, odo_y,
                                   odo_ts, surprise, anchor_w, start_count, path_m, last_speed)
                        self._recentre(s, mlon)
                        (origin_lat, origin_lon, mlon, low_lat, x0, x1, x2, x3, var_pos,
                         cov_pv, var_vel, filter_ts, fix_lat, fix_lon, fix_acc, moving, heading,
                         odo_x, odo_y, odo_ts, surprise, anchor_w, start_count, path_m,
                         last_speed) = self._load(s)
                else:
                    # Rejected: the filter is untouched, but a run of consistent rejections
                    # restarts it.
                    self._save(s, x0, x1, x2, x3, var_pos, cov_pv, var_vel, filter_ts, fix_lat,
                               fix_lon, fix_acc, moving, heading, odo_x, odo_y, odo_ts, surprise,
                               anchor_w, start_count, path_m, last_speed)
                    if not self._reacquiring(s, ping, acc, reachable):
                        # The point shows the steady prediction for its time.
                        append(self._outlier_point(s, ping, flags | _SPIKE,
                                                   origin_lat + ey / M_PER_DEG_LAT,
                                                   origin_lon + ex / mlon))
                        outliers += 1
                        continue
                    step = self._reacquire(s, ping, acc)
                    (origin_lat, origin_lon, mlon, low_lat, x0, x1, x2, x3, var_pos, cov_pv,
                     var_vel, filter_ts, fix_lat, fix_lon, fix_acc, moving, heading, odo_x,
                     odo_y, odo_ts, surprise, anchor_w, start_count, path_m,
                     last_speed) = self._load(s)
            # The point of an accepted fix. A device standing still is where it stands: the
            # average of its fixes (unless it may be leaving, when the filter is the better
            # guess).
            if not moving and start_count == 0 and x2 * x2 + x3 * x3 < slow2:
                append(TrackPoint(ping.org_id, ping.device_id, ping.seq, ts, ping.lat, ping.lon,
                                  origin_lat + odo_y / M_PER_DEG_LAT, origin_lon + odo_x / mlon,
                                  raw_acc, 0.0, heading, False, step, flags))
            else:
                append(TrackPoint(ping.org_id, ping.device_id, ping.seq, ts, ping.lat, ping.lon,
                                  origin_lat + x1 / M_PER_DEG_LAT, origin_lon + x0 / mlon,
                                  raw_acc, hypot(x2, x3) if moving else 0.0, heading, moving,
                                  step, flags))
        self._save(s, x0, x1, x2, x3, var_pos, cov_pv, var_vel, filter_ts, fix_lat, fix_lon,
                   fix_acc, moving, heading, odo_x, odo_y, odo_ts, surprise, anchor_w,
                   start_count, path_m, last_speed)
        if outliers:
            out.counters["outlier"] += outliers
        return points

    @staticmethod
    def _load(s: SmoothState) -> tuple[Any, ...]:
        """The state as the loop's locals, with metres per degree of longitude in the frame and
        whether its origin is below 80 degrees of latitude (where the flat speed gate holds)."""
        x = s.x
        lat = s.origin_lat
        return (lat, s.origin_lon, M_PER_DEG_LAT * math.cos(lat * _DEG), -80.0 < lat < 80.0,
                x[0], x[1], x[2], x[3], s.var_pos, s.cov_pos_vel, s.var_vel, s.filter_ts_ms,
                s.fix_lat, s.fix_lon, s.fix_acc_m, s.moving, s.heading_deg, s.odo_x, s.odo_y,
                s.odo_ts_ms, s.surprise, s.anchor_w, s.start_count, s.path_m, s.last_speed_mps)

    @staticmethod
    def _save(s: SmoothState, x0: float, x1: float, x2: float, x3: float, var_pos: float,
              cov_pv: float, var_vel: float, filter_ts: int, fix_lat: float, fix_lon: float,
              fix_acc: float, moving: bool, heading: float, odo_x: float, odo_y: float,
              odo_ts: int, surprise: float, anchor_w: float, start_count: int, path_m: float,
              last_speed: float) -> None:
        """The loop's locals back into the state (the frame origin is only changed by helpers
        that work on the state)."""
        x = s.x
        x[0], x[1], x[2], x[3] = x0, x1, x2, x3
        s.var_pos, s.cov_pos_vel, s.var_vel, s.filter_ts_ms = var_pos, cov_pv, var_vel, filter_ts
        s.fix_lat, s.fix_lon, s.fix_acc_m, s.moving, s.heading_deg = (
            fix_lat, fix_lon, fix_acc, moving, heading)
        s.odo_x, s.odo_y, s.odo_ts_ms, s.surprise, s.anchor_w = (
            odo_x, odo_y, odo_ts, surprise, anchor_w)
        s.start_count, s.path_m, s.last_speed_mps = start_count, path_m, last_speed

    # fmt: on

    def late_point(self, ping: Ping) -> TrackPoint:
        """A stored-only point for a ping that arrived too late to touch the state."""
        flags = _LATE | (_MOCK if ping.is_mock else 0)
        return TrackPoint(
            ping.org_id,
            ping.device_id,
            ping.seq,
            ping.ts_ms,
            ping.lat,
            ping.lon,
            ping.lat,
            ping.lon,
            ping.accuracy_m,
            ping.speed_mps if ping.speed_mps is not None else 0.0,
            ping.bearing_deg if ping.bearing_deg is not None else 0.0,
            False,
            0.0,
            flags,
        )

    # ------------------------------------------------------------------ internals

    def _spike(
        self,
        x0: float,
        x1: float,
        x2: float,
        x3: float,
        dt: float,
        a_pred: float,
        sv: float,
        r: float,
        innov2: float,
        fused: bool,
        hx: float,
        hy: float,
        zx: float,
        zy: float,
        fix_lat: float,
        fix_lon: float,
        lat: float,
        lon: float,
        dist_fix: float,
    ) -> bool:
        """Whether a fix far even from the steady prediction (squared innovation `innov2`, its
        variance `sv`, the fix's own `r`) is far allowing for a manoeuvre too; `dist_fix` is its
        distance from the last accepted fix (-1: not computed yet)."""
        prm = self.params
        if fused:
            # The phone said how fast it went at both ends: between them the path may bend by a
            # fraction of the distance it could cover, but a device standing still at both ends
            # (most of a rep's day) has not driven off 100 m and back.
            v_now = math.hypot(hx, hy)
            v_then = math.hypot(x2, x3)
            reach = dt * (
                prm.gate_path_fraction * (v_now if v_now > v_then else v_then)
                + self._reach_accel * dt
            )
            bound = reach + math.sqrt(prm.innovation_gate * sv)
            return innov2 > bound * bound
        # Without a reported velocity: allow a manoeuvre's constant acceleration over the whole
        # interval; a sudden stop is near the last fix, so a fix near the last one is never a
        # spike.
        jx = zx - x0 - x2 * dt
        jy = zy - x1 - x3 * dt
        dt2 = dt * dt
        a_m = a_pred + self._qm * dt2 * dt2 * 0.25
        if jx * jx + jy * jy > prm.innovation_gate * (a_m + r):
            if dist_fix < 0.0:
                dist_fix = haversine_m(fix_lat, fix_lon, lat, lon)
            return dist_fix > prm.gate_min_distance_m
        return False

    def _counted(self, path_m: float, chord_m: float, at_least_chord: bool) -> float:
        """Mileage for a stretch: the integrated path, at most `max_path_ratio` times the straight
        chord (no reported speed can add distance the positions do not show). A departure is
        at least its chord from where the device stood: its first metres were driven before
        the speed said so."""
        cap = self.params.max_path_ratio * chord_m
        if path_m > cap:
            return cap
        if at_least_chord and path_m < chord_m:
            return chord_m
        return path_m

    def _outlier(self, s: SmoothState, ping: Ping, flags: int) -> TrackPoint:
        """A rejected fix before any prediction was made (accuracy gate)."""
        if s.filter_ts_ms == 0:
            lat, lon = ping.lat, ping.lon
        else:
            dt = max(0.0, (ping.ts_ms - s.filter_ts_ms) / 1000.0)
            if dt > self.params.restart_gap_s:
                dt = 0.0  # a stale filter is not extrapolated for minutes
            x = s.x
            mlon = M_PER_DEG_LAT * math.cos(s.origin_lat * _DEG)
            lat = s.origin_lat + (x[1] + x[3] * dt) / M_PER_DEG_LAT
            lon = s.origin_lon + (x[0] + x[2] * dt) / mlon
        return self._outlier_point(s, ping, flags, lat, lon)

    def _outlier_point(
        self, s: SmoothState, ping: Ping, flags: int, lat: float, lon: float
    ) -> TrackPoint:
        moving = s.moving and s.filter_ts_ms != 0
        speed = math.hypot(s.x[2], s.x[3]) if moving else 0.0
        return TrackPoint(
            ping.org_id,
            ping.device_id,
            ping.seq,
            ping.ts_ms,
            ping.lat,
            ping.lon,
            lat,
            lon,
            ping.accuracy_m,
            speed,
            s.heading_deg,
            moving,
            0.0,
            flags,
        )

    def _reacquiring(self, s: SmoothState, ping: Ping, acc: float, reachable: bool) -> bool:
        """Note a fix rejected by the speed or innovation gate as the newest of a run of
        consistent rejections; whether the run is long enough to restart the filter there."""
        prm = self.params
        consistent = False
        if s.cand_count:
            d = haversine_m(s.cand_lat, s.cand_lon, ping.lat, ping.lon) - acc - s.cand_acc_m
            dt = max((ping.ts_ms - s.cand_ts_ms) / 1000.0, 1.0)
            consistent = d <= prm.max_speed_mps * dt
        if consistent:
            s.cand_count += 1
        else:
            s.cand_count = 1
            s.cand_reachable = reachable
        s.cand_lat, s.cand_lon, s.cand_acc_m, s.cand_ts_ms = ping.lat, ping.lon, acc, ping.ts_ms
        return s.cand_count >= prm.reacquire_after

    def _reacquire(self, s: SmoothState, ping: Ping, acc: float) -> float:
        """Restart at a place the filter kept rejecting; the step: the jump, counted only if
        reachable."""
        prm = self.params
        was_moving = s.moving
        mlon = M_PER_DEG_LAT * math.cos(s.origin_lat * _DEG)
        old_lat = s.origin_lat + s.odo_y / M_PER_DEG_LAT
        old_lon = s.origin_lon + s.odo_x / mlon
        reachable = s.cand_reachable
        self._restart(s, ping, acc)
        step = 0.0
        if reachable:
            step = haversine_m(old_lat, old_lon, ping.lat, ping.lon)
            s.moving = was_moving or step > max(prm.move_radius_m, acc)
            if not s.moving:
                step = 0.0
        return step

    def _after_gap(self, s: SmoothState, ping: Ping, acc: float, gap_s: float) -> float:
        """Restart after a long silence; the step: a moderate gap's displacement, bridged into
        mileage."""
        prm = self.params
        mlon = M_PER_DEG_LAT * math.cos(s.origin_lat * _DEG)
        old_lat = s.origin_lat + s.odo_y / M_PER_DEG_LAT
        old_lon = s.origin_lon + s.odo_x / mlon
        self._restart(s, ping, acc)
        step = 0.0
        if gap_s <= prm.bridge_gap_max_s:
            d = haversine_m(old_lat, old_lon, ping.lat, ping.lon)
            if d > max(prm.move_radius_m, acc) and d <= prm.max_speed_mps * gap_s:
                step = d
                s.moving = True
        return step

    def _restart(self, s: SmoothState, ping: Ping, acc: float) -> None:
        """(Re)start the filter at a fix, in a frame centred on it."""
        prm = self.params
        s.origin_lat = ping.lat
        s.origin_lon = ping.lon
        vx = vy = 0.0
        c = prm.initial_speed_sigma_mps**2
        if prm.fuse_reported_velocity and ping.speed_mps is not None:
            if ping.bearing_deg is not None:
                vx = ping.speed_mps * math.sin(ping.bearing_deg * _DEG)
                vy = ping.speed_mps * math.cos(ping.bearing_deg * _DEG)
                c = prm.reported_speed_sigma_mps**2
            elif ping.speed_mps <= _STILL_REPORTED_MPS:
                c = prm.reported_speed_sigma_mps**2
        s.x = [0.0, 0.0, vx, vy]
        a = acc * acc
        s.var_pos = a
        s.cov_pos_vel = 0.0
        s.var_vel = c
        s.filter_ts_ms = ping.ts_ms
        s.fix_lat, s.fix_lon, s.fix_acc_m = ping.lat, ping.lon, acc
        s.odo_x = s.odo_y = 0.0
        s.odo_ts_ms = ping.ts_ms
        s.moving = False
        _forget_candidate(s)
        s.surprise = 2.0
        s.anchor_w = 1.0 / a
        s.start_count = 0
        s.path_m = 0.0
        s.last_speed_mps = ping.speed_mps if ping.speed_mps is not None else -1.0

    def _recentre(self, s: SmoothState, mlon: float) -> None:
        """Move the frame origin to the current estimate; positions shift, velocity stays."""
        x = s.x
        lat = s.origin_lat + x[1] / M_PER_DEG_LAT
        lon = s.origin_lon + x[0] / mlon
        odo_lat = s.origin_lat + s.odo_y / M_PER_DEG_LAT
        odo_lon = s.origin_lon + s.odo_x / mlon
        s.origin_lat, s.origin_lon = lat, lon
        new_mlon = M_PER_DEG_LAT * math.cos(lat * _DEG)
        x[0] = x[1] = 0.0
        s.odo_x = (odo_lon - lon) * new_mlon
        s.odo_y = (odo_lat - lat) * M_PER_DEG_LAT


def _forget_candidate(s: SmoothState) -> None:
    """No run of rejected fixes: the candidate fields go back to their defaults (so they are
    not serialised)."""
    s.cand_count = 0
    s.cand_reachable = False
    s.cand_lat = s.cand_lon = s.cand_acc_m = 0.0
    s.cand_ts_ms = 0
