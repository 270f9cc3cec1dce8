"""A seeded fleet of phones driving through the synthetic city, with exact ground truth.

Model
-----
Each rep (`SimDevice`, ids "rep-001"...) works Mon-Fri 08:00-18:00 in the city's time zone.
The tracking app starts at 07:57-08:00 and stops at 18:00-18:03; about 30 % of reps ("overtime")
start it at 07:15-07:45 and stop it at 18:10-18:45, so the privacy filter has something to
drop. A rep leaves home 5-25 min after 08:00 (or after the app starts), a third of the honest
reps call at their office first (10-25 min), then drive to 5-9 planned customers chosen among
those within 4 km of home (at least the 30 nearest) in nearest-neighbour order (up to 9 while
more than an hour is left before a target end of day at 16:45-17:30), stay 6-60 min at each
(6 + 54 * Beta(2, 1.3), mean ~39 min),
take a 30-45 min lunch somewhere within 1.5 km once it is past 11:45, spend what is left of
the day (if over 30 min) at the nearest office, and drive home.

Driving follows the fastest path on the road grid at 75-100 % of the speed limit (each road
segment varies again by 88-108 %), waits 8-45 s at 30 % of the intersections, and uses short
driveways (6 m/s) between road and destination. The true path is piecewise linear in time;
stops and lights are knots with equal positions.

Fixes are recorded every `ping_interval_s` (+-120 ms jitter) while the app runs and has GPS;
none inside tunnels. Reported accuracy follows a log-AR(1) process around a per-rep base
(5-9 m; typical 4-25 m, clipped to 3-30 m). The position error per axis is
`accuracy * NOISE_SIGMA_PER_ACCURACY` (1.0) times a unit AR(1) process with correlation
`NOISE_CORRELATION` (0.5) between fixes. Urban multipath: on average one burst per
`MULTIPATH_EVERY_H` (1.5 h) of recording, 1-3 fixes displaced 100-500 m while the phone
reports 10 m accuracy. Speed and bearing come from the true motion plus noise (bearing only
above 1 m/s); altitude from a smooth terrain plus noise; battery drains 2-5 %/h from 70-100 %.

Uploads: every `upload_interval_s` (+-3 s) the app sends what it recorded since the last
upload, states first then pings (at most 1,000 records per request), in recording order. It
cannot upload while the app is down or the network is off; the first upload after a network
outage (and every upload of the slow uploader) is "messy": the backlog goes in chunks of
40-150 records sent 1.5 s apart in shuffled order, with records shuffled inside each chunk,
3 % of records repeated in another chunk and one chunk retried whole at the end.

Profiles (see `PROFILES`; `DEFAULT_ROSTER` assigns them when `profiles` is not given, 8 honest
and 12 with one issue each per 20 reps, so the demo exercises every detector):
honest; driveby (about half its customer stops last 1-2.5 min); spoofer_mock (parked at home,
a mock app reports static positions at its "visited" customers with is_mock=True, constant
3 m accuracy and 1 m jitter; developer_mode_on and mock_app_detected reported);
spoofer_hidden (same with is_mock False, zero jitter, constant 5 m accuracy and altitude,
no integrity states); teleporter (real day, but during a long stop the position jumps for 6-12
min to the customer farthest away - 10+ km, its home is in an outer corner - and back);
phone_off (shutdown, 40 min off, boot, app_start; the shutdown state is uploaded after boot);
app_killed (killed, restarted after 25-40 min, app_killed uploaded at restart); gps_off and
permission_revoked (30-40 min without fixes, the app keeps uploading states); airplane
(35-45 min without network, fixes buffered); battery_died (drains to 0 by early afternoon:
last fix at 3 %, battery_low at 15 %, no shutdown state, boot 60-90 min later); no_network
(45 min offline, backlog uploaded late, out of order, with duplicates); clock_skew (phone
clock 10 min ahead: every ts_ms is +600,000 ms); slow_uploader (uploads hourly, messy);
left_post (workshop technician: in the workshop all day but leaves for ~30 min during work
hours); forbidden (spends 15-35 min in the nearest forbidden zone after its second customer);
border_loiterer (all day at the nearest office, walking up and down one edge of its fence
`BORDER_INSET_M` (8-20 m) inside it, pausing 1-8 min at half the spots, with a poor GPS: base
accuracy `BORDER_LOITERER_ACCURACY_M` (10-30 m) instead of `BASE_ACCURACY_M` (5-9 m); truth is
one enter and one exit, so any other fence event there is a flap); replayer (stays home
while a replay app without the mock flag sends its own honest day of the weekday before,
every fix to the last digit - position, accuracy, speed, bearing, altitude, provider - with
times moved by whole days plus 0-5 min (`REPLAY_OFFSET_MS`); seq, battery and app_start are
today's phone's. That earlier day is simulated whether or not `history_days` asks for it).
Outages start at a random time between 11:00 and 14:00.

Ground truth (`Simulation.truth`, JSON-ready dicts with "type"):
- `stop` {device_id, kind (home/office/customer/driveby/lunch/forbidden/workshop/errand),
  start_ms, end_ms, duration_s, lat, lon, customer_id, fence_id}: every true stop >= 1 min
  (traffic lights are shorter and not listed), clipped to the app's running time.
- `visit` {device_id, customer_id, arrive_ms, leave_ms, minutes, observed}: customer stops
  >= 5 min; `observed` is False when fixes cover less than 4 min of it (phone off...).
- `fence_crossing` {device_id, fence_id, fence_kind, transition, ts_ms, initial}: the fence
  events a manager should see. Observation runs while the app records, in work hours, while the
  fence is active; inside it every crossing of the true path counts (to the ms). When
  observation starts (work hours begin, the app starts, the fence's schedule begins) with the
  rep inside, that is an "enter" at that moment with `initial` True: the on-duty record
  ("arrived at the office 08:02"; every rep starts the day inside a territory). A recording gap
  (phone off, app killed, GPS off, battery dead) keeps what is known: a crossing inside it is
  not observable, and a net change across the gap is an exit/enter when recording resumes.
  The end of work hours or of the fence's schedule is no exit.
- `left_post` / `forbidden_visit` {device_id, fence_id, start_ms, end_ms}: time outside the
  workshop / inside a forbidden zone during work hours.
- `spoof_episode` {device_id, kind, start_ms, end_ms, alerts}: kinds mock_flag,
  hidden_static, teleport, clock_skew, device_integrity, replayed_track (first to last
  replayed fix: the whole reported day); `alerts` lists the AlertType values a detector may
  legitimately raise for it.
- `contact_loss` {device_id, reason (ContactReason value), cause, start_ms, end_ms}: silences
  of the server's view overlapping work hours by more than 10 min.
- `mileage` {device_id, km}: true distance driven within work hours.
- `path` {device_id, seq, ts_ms, true_ms, lat, lon, multipath, spoofed}: the TRUE position
  for every emitted fix (seq and ts_ms as the phone sent them, true_ms the true time).
All truth times are true (UTC) time; only record and path `ts_ms` use the phone's clock.

Knobs of `simulate`: `reps` (20) devices rep-001...; `day` (default: the last weekday before
today); `seed` (7) - each device draws from its own stream (seed, device number), so a device's
day does not depend on the fleet size; `ping_interval_s` (5.0) between recorded fixes;
`upload_interval_s` (60.0) between uploads; `profiles` (None = `DEFAULT_ROSTER` cycled; a dict
device id -> profile, devices it leaves out are honest); `history_days` (0) earlier weekdays
in `Simulation.history` (oldest first): an honest day of every rep from the same home, each
from its own stream (seed, device number, days back), so today does not depend on it. Honest
phones never repeat a moving fix across days; at rest, among thousands of fixes at the same
home or office, 1 cm coincidences happen (20 positions in 60 rep-day pairs, tuning seeds).
Model constants (module level):
NOISE_SIGMA_PER_ACCURACY, NOISE_CORRELATION, MULTIPATH_EVERY_H, MULTIPATH_REPORTED_ACCURACY_M,
DRIVEWAY_SPEED_MPS, MAX_RECORDS_PER_UPLOAD, CLOCK_SKEW_MS, CONTACT_LOSS_MIN_MS,
REPLAY_OFFSET_MS.

Cost: 20 reps x one day at 5 s (~150k fixes) take well under a second to generate, plus about
as long to build the upload dicts; 1,000 reps about 15 s + 25 s and ~1 GB. For large fleets use
`Simulation.iter_uploads()` / `iter_truth()` rather than the materialised lists.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import heapq
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from pipeline.events import AlertType, ContactReason
from pipeline.reference.models import Schedule
from pipeline.sim.city import City, FenceShape, Place, node_xy

PROFILES = (
    "honest",
    "driveby",
    "spoofer_mock",
    "spoofer_hidden",
    "teleporter",
    "phone_off",
    "app_killed",
    "gps_off",
    "permission_revoked",
    "airplane",
    "battery_died",
    "no_network",
    "clock_skew",
    "slow_uploader",
    "left_post",
    "forbidden",
    "border_loiterer",
    "replayer",
)
DEFAULT_ROSTER = (
    "honest",
    "driveby",
    "spoofer_mock",
    "honest",
    "phone_off",
    "spoofer_hidden",
    "honest",
    "no_network",
    "teleporter",
    "honest",
    "left_post",
    "forbidden",
    "honest",
    "battery_died",
    "clock_skew",
    "honest",
    "gps_off",
    "app_killed",
    "honest",
    "honest",
)

NOISE_SIGMA_PER_ACCURACY = 1.0
NOISE_CORRELATION = 0.5
MULTIPATH_EVERY_H = 1.5
MULTIPATH_REPORTED_ACCURACY_M = 10.0
BASE_ACCURACY_M = (5.0, 9.0)  # per-rep base of the reported accuracy (x noise_scale)
BORDER_LOITERER_ACCURACY_M = (10.0, 30.0)  # a poor GPS next to a building
BORDER_INSET_M = (8.0, 20.0)  # how far inside the office fence the border loiterer works
DRIVEWAY_SPEED_MPS = 6.0
MAX_RECORDS_PER_UPLOAD = 1000
CLOCK_SKEW_MS = 600_000
CONTACT_LOSS_MIN_MS = 10 * 60_000
REPLAY_OFFSET_MS = (0, 300_000)  # a replay app shifts by whole days plus up to 5 min
MIN_STOP_MS = 60_000
MIN_VISIT_MS = 5 * 60_000
MIN = 60_000
HOUR = 3_600_000

_RECORDING_OUTAGES = {  # profile -> (state when it starts, state when it ends, reason, minutes)
    "phone_off": ("shutdown", "boot", ContactReason.POWERED_OFF, (40, 40)),
    "app_killed": ("app_killed", "app_start", ContactReason.APP_KILLED, (25, 40)),
    "gps_off": ("gps_off", "gps_on", ContactReason.LOCATION_OFF, (30, 40)),
    "permission_revoked": (
        "permission_revoked",
        "permission_granted",
        ContactReason.PERMISSION_REVOKED,
        (30, 40),
    ),
}
_NETWORK_OUTAGES = {
    "airplane": ("airplane_on", "airplane_off", (35, 45)),
    "no_network": ("network_off", "network_on", (45, 45)),
}
_SPOOF_ALERTS = {
    "mock_flag": [
        AlertType.SPOOF_MOCK_FLAG,
        AlertType.SPOOF_STATIC,
        AlertType.SPOOF_TELEPORT,
        AlertType.SPOOF_JUMP_BACK,
        AlertType.SPOOF_CONSTANT_ACCURACY,
    ],
    "hidden_static": [
        AlertType.SPOOF_STATIC,
        AlertType.SPOOF_CONSTANT_ACCURACY,
        AlertType.SPOOF_TELEPORT,
        AlertType.SPOOF_JUMP_BACK,
    ],
    "teleport": [AlertType.SPOOF_TELEPORT, AlertType.SPOOF_JUMP_BACK],
    "clock_skew": [AlertType.SPOOF_CLOCK_SKEW],
    "replayed_track": [AlertType.SPOOF_REPLAY],
    "device_integrity": [AlertType.SPOOF_DEVICE_INTEGRITY],
}
_FIRST = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Emma",
    "Felix",
    "Greta",
    "Hannes",
    "Ida",
    "Jonas",
    "Katrin",
    "Lukas",
    "Mia",
    "Noah",
    "Olga",
    "Paul",
    "Rosa",
    "Simon",
    "Tina",
    "Yusuf",
)
_LAST = (
    "Becker",
    "Fischer",
    "Hoffmann",
    "Klein",
    "Koch",
    "Meyer",
    "Müller",
    "Neumann",
    "Richter",
    "Schmidt",
    "Schneider",
    "Schulz",
    "Wagner",
    "Weber",
    "Wolf",
    "Zimmermann",
)


@dataclass(frozen=True, slots=True)
class SimDevice:
    device_id: str
    org_id: str
    schedule: Schedule
    profile: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        spec = self.schedule.to_spec()
        days = "mon-fri" if self.schedule.days == frozenset(range(5)) else spec["days"]
        return {
            "device_id": self.device_id,
            "org_id": self.org_id,
            "name": self.name,
            "profile": self.profile,
            "schedule": f"{days} {spec['start']}-{spec['end']} {spec['tz']}",
        }


@dataclass(slots=True)
class Upload:
    """One HTTP request a phone makes: `send_ms` is true time (the gateway's receive clock)."""

    send_ms: int
    device_id: str
    endpoint: str  # "pings" | "device-states"
    records: list[dict[str, Any]]


def default_sim_day(today: dt.date) -> dt.date:
    """The most recent weekday before `today`."""
    day = today - dt.timedelta(days=1)
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return day


# ---------------------------------------------------------------------------- true path
class _Track:
    """The true path: knots (t_ms, x, y); segment i (knot i -> i+1) may be in a tunnel."""

    __slots__ = ("t", "tunnel", "x", "y")

    def __init__(self, t0: int, x: float, y: float) -> None:
        self.t = [t0]
        self.x = [x]
        self.y = [y]
        self.tunnel: list[bool] = []

    @property
    def now(self) -> int:
        return self.t[-1]

    def add(self, t: float, x: float, y: float, tunnel: bool = False) -> None:
        self.t.append(max(round(t), self.t[-1] + 1))
        self.x.append(x)
        self.y.append(y)
        self.tunnel.append(tunnel)

    def stay_until(self, t: float) -> None:
        if t > self.t[-1]:
            self.add(t, self.x[-1], self.y[-1])

    def move_to(self, x: float, y: float, speed_mps: float, tunnel: bool = False) -> None:
        dist = math.hypot(x - self.x[-1], y - self.y[-1])
        if dist > 0.01:
            self.add(self.t[-1] + dist / speed_mps * 1000.0, x, y, tunnel)


def _drive(
    city: City, track: _Track, src: Place, dst: Place, rng: np.random.Generator, factor: float
) -> None:
    """Driveway out, fastest path on the grid, driveway in; lights at intersections."""
    roads = city.roads
    track.move_to(src.road_x, src.road_y, DRIVEWAY_SPEED_MPS)

    def edge_speed(edge: int) -> float:
        return float(roads.edge_speed[edge]) * factor * float(rng.uniform(0.88, 1.08))

    if src.edge == dst.edge:
        track.move_to(
            dst.road_x, dst.road_y, edge_speed(src.edge), bool(roads.edge_tunnel[src.edge])
        )
    else:
        best: tuple[float, int, int] | None = None
        for na, fa in (
            (int(roads.edge_u[src.edge]), src.frac),
            (int(roads.edge_v[src.edge]), 1 - src.frac),
        ):
            ta = fa * 1000.0 / float(roads.edge_speed[src.edge])
            for nb, fb in (
                (int(roads.edge_u[dst.edge]), dst.frac),
                (int(roads.edge_v[dst.edge]), 1 - dst.frac),
            ):
                tb = fb * 1000.0 / float(roads.edge_speed[dst.edge])
                total = ta + float(roads.travel_s[na, nb]) + tb
                if best is None or total < best[0]:
                    best = (total, na, nb)
        assert best is not None
        _, na, nb = best
        path = roads.node_path(na, nb)
        x, y = node_xy(na)
        track.move_to(x, y, edge_speed(src.edge), bool(roads.edge_tunnel[src.edge]))
        for a, b in itertools.pairwise(path):
            if rng.random() < 0.3:  # red light
                track.stay_until(track.now + rng.uniform(8_000, 45_000))
            edge = roads.edge_of[(a, b)]
            x, y = node_xy(b)
            track.move_to(x, y, edge_speed(edge), bool(roads.edge_tunnel[edge]))
        if rng.random() < 0.3:
            track.stay_until(track.now + rng.uniform(8_000, 45_000))
        track.move_to(
            dst.road_x, dst.road_y, edge_speed(dst.edge), bool(roads.edge_tunnel[dst.edge])
        )
    track.move_to(dst.x, dst.y, DRIVEWAY_SPEED_MPS)


# ---------------------------------------------------------------------------- day plan
@dataclass(slots=True)
class _Plan:
    track: _Track
    app_on: int
    app_off: int
    stops: list[dict[str, Any]] = field(default_factory=list)
    # (start, end, x, y, kind): reported positions replaced by a fake
    fakes: list[tuple[int, int, float, float, str]] = field(default_factory=list)
    events: list[tuple[int, str, str | None]] = field(default_factory=list)  # true ms, kind, detail
    recording_off: list[tuple[int, int]] = field(default_factory=list)
    app_down: list[tuple[int, int]] = field(default_factory=list)
    network_down: list[tuple[int, int]] = field(default_factory=list)
    contact_losses: list[dict[str, Any]] = field(default_factory=list)
    clock_offset_ms: int = 0
    battery_cut: tuple[int, int] | None = None  # battery_died: (last fix time, boot time)
    home: Place | None = None


class _DayPlanner:
    def __init__(self, city: City, device: SimDevice, rng: np.random.Generator, midnight_ms: int):
        self.city = city
        self.device = device
        self.rng = rng
        self.midnight = midnight_ms
        self._pos: Place = Place(0.0, 0.0, 0.0, 0.0, 0, 0.0)  # where the rep is now

    def at(self, hours: float) -> int:
        return self.midnight + round(hours * HOUR)

    def stop(
        self,
        plan: _Plan,
        kind: str,
        start: int,
        end: int,
        place: Place,
        customer_id: str | None = None,
        fence_id: str | None = None,
    ) -> None:
        plan.stops.append(
            {
                "kind": kind,
                "start": start,
                "end": end,
                "x": place.x,
                "y": place.y,
                "customer_id": customer_id,
                "fence_id": fence_id,
            }
        )

    def plan(self, home: Place | None = None) -> _Plan:
        """The day; `home` (an earlier day's plan: same rep, same home) skips drawing one."""
        rng = self.rng
        profile = self.device.profile
        overtime = rng.random() < 0.3 or profile == "left_post"
        if overtime:
            app_on = self.at(rng.uniform(7.25, 7.75))
            app_off = self.at(rng.uniform(18 + 10 / 60, 18.75))
        else:
            app_on = self.at(8) - int(rng.uniform(0, 180_000))
            app_off = self.at(18) + int(rng.uniform(0, 180_000))
        if home is None and profile == "teleporter":  # an outer corner: a customer 10+ km away
            corner = (4500.0 * rng.choice([-1, 1]), 4500.0 * rng.choice([-1, 1]))
            home = self.city.roadside_place(rng, near=corner, within_m=1500)
        elif home is None:
            home = self.city.roadside_place(rng)
        track = _Track(app_on - 10 * MIN, home.x, home.y)
        plan = _Plan(track, app_on, app_off, home=home)
        plan.events.append((app_on, "app_start", None))
        self._pos = home
        if profile == "left_post":
            self._technician_day(plan, home)
        elif profile in ("spoofer_mock", "spoofer_hidden"):
            self._spoofer_day(plan, home)
        elif profile == "border_loiterer":
            self._border_day(plan, home)
        else:
            self._sales_day(plan, track, home)
        track.stay_until(app_off + 10 * MIN)
        self._phone_events(plan)
        return plan

    def _move(
        self,
        plan: _Plan,
        track: _Track,
        place: Place,
        kind: str,
        stay_ms: float,
        factor: float,
        customer_id: str | None = None,
        fence_id: str | None = None,
    ) -> None:
        _drive(self.city, track, self._pos, place, self.rng, factor)
        start = track.now
        track.stay_until(start + stay_ms)
        self.stop(plan, kind, start, track.now, place, customer_id, fence_id)
        self._pos = place

    def _sales_day(self, plan: _Plan, track: _Track, home: Place) -> None:
        rng, city, profile = self.rng, self.city, self.device.profile
        factor = float(rng.uniform(0.75, 1.0))
        depart = max(plan.app_on, self.at(8)) + int(rng.uniform(5, 25) * MIN)
        track.stay_until(depart)
        self.stop(plan, "home", plan.app_on, depart, home)
        if profile == "honest" and rng.random() < 1 / 3:
            office = self._nearest(("office-north", "office-south"))
            self._move(
                plan,
                track,
                city.fence_places[office],
                "office",
                rng.uniform(10, 25) * MIN,
                factor,
                fence_id=office,
            )
        dists = np.hypot(city.customer_xy[:, 0] - home.x, city.customer_xy[:, 1] - home.y)
        # Customers within 4 km (at least the 30 nearest), visited in nearest-neighbour order.
        pool = np.argsort(dists, kind="stable")[: max(30, int((dists <= 4000).sum()))]
        planned = int(rng.integers(5, 10))  # more are added (up to 9) while time is left
        chosen = [int(i) for i in rng.choice(pool, size=min(9, len(pool)), replace=False)]
        order: list[int] = []
        x, y = home.x, home.y
        while chosen:  # nearest neighbour tour
            nxt = min(
                chosen,
                key=lambda i: math.hypot(city.customer_xy[i, 0] - x, city.customer_xy[i, 1] - y),
            )
            chosen.remove(nxt)
            order.append(nxt)
            x, y = city.customer_xy[nxt]
        # 5-9 planned calls; more (up to 9) while over an hour is left before the target end.
        target_end = self.at(rng.uniform(16.75, 17.5))
        minutes = 6 + 54 * rng.beta(2.0, 1.3, len(order))  # mean ~39 min
        drive_by = np.zeros(len(order), dtype=bool)
        if profile == "driveby":
            drive_by[rng.permutation(len(order))[: max(2, len(order) // 2)]] = True
        lunch_done = False
        for k, idx in enumerate(order):
            if not lunch_done and track.now >= self.at(11.75):
                self._lunch(plan, track, factor)
                lunch_done = True
            if profile == "forbidden" and k == 2:
                zone = self._nearest([f for f in city.fence_places if f.startswith("forbidden")])
                self._move(
                    plan,
                    track,
                    city.fence_places[zone],
                    "forbidden",
                    rng.uniform(15, 35) * MIN,
                    factor,
                    fence_id=zone,
                )
            if k >= planned and track.now > target_end - 60 * MIN:
                break  # the planned calls are done and the day is full
            customer = city.customers[idx]
            stay = rng.uniform(60_000, 150_000) if drive_by[k] else minutes[k] * MIN
            self._move(
                plan,
                track,
                city.customer_places[customer.customer_id],
                "driveby" if drive_by[k] else "customer",
                stay,
                factor,
                customer_id=customer.customer_id,
            )
        if not lunch_done:
            self._lunch(plan, track, factor)
        if track.now < target_end - 30 * MIN:  # paperwork at the nearest office until the end
            office = self._nearest(("office-north", "office-south"))
            place = city.fence_places[office]
            self._move(plan, track, place, "office", max(MIN, target_end - track.now), factor,
                       fence_id=office)  # fmt: skip
        _drive(city, track, self._pos, home, rng, factor)
        self._pos = home
        if track.now < plan.app_off:
            self.stop(plan, "home", track.now, plan.app_off, home)
        if profile == "teleporter":
            self._teleport(plan)

    def _nearest(self, fence_ids: Sequence[str]) -> str:
        here = (self._pos.x, self._pos.y)
        places = self.city.fence_places
        return min(fence_ids, key=lambda f: math.dist(here, (places[f].x, places[f].y)))

    def _lunch(self, plan: _Plan, track: _Track, factor: float) -> None:
        spot = self.city.roadside_place(self.rng, near=(self._pos.x, self._pos.y), within_m=1500)
        self._move(plan, track, spot, "lunch", self.rng.uniform(30, 45) * MIN, factor)

    def _teleport(self, plan: _Plan) -> None:
        city, rng = self.city, self.rng
        best: tuple[float, dict[str, Any], int] | None = None
        for stop in plan.stops:
            if stop["kind"] not in ("customer", "lunch") or stop["end"] - stop["start"] < 20 * MIN:
                continue
            d = np.hypot(city.customer_xy[:, 0] - stop["x"], city.customer_xy[:, 1] - stop["y"])
            far = int(np.argmax(d))
            if best is None or d[far] > best[0]:
                best = (float(d[far]), stop, far)
        if best is None:
            return
        _, stop, far = best
        length = int(rng.uniform(6, 12) * MIN)
        start = stop["start"] + (stop["end"] - stop["start"] - length) // 2
        target = city.customer_places[city.customers[far].customer_id]
        plan.fakes.append((start, start + length, target.x, target.y, "teleport"))

    def _spoofer_day(self, plan: _Plan, home: Place) -> None:
        """Parked at home; the fake 'visits' come from an honest plan that never happens."""
        virtual = _Track(plan.track.now, home.x, home.y)
        shadow = _Plan(virtual, plan.app_on, plan.app_off)
        self._sales_day(shadow, virtual, home)
        self._pos = home
        kind = "mock_flag" if self.device.profile == "spoofer_mock" else "hidden_static"
        for stop in shadow.stops:
            if stop["kind"] == "customer":
                # The fake pin lands 5-20 m from the customer point.
                angle, dist = self.rng.uniform(0, 2 * math.pi), self.rng.uniform(5, 20)
                plan.fakes.append(
                    (
                        stop["start"],
                        stop["end"],
                        stop["x"] + dist * math.cos(angle),
                        stop["y"] + dist * math.sin(angle),
                        kind,
                    )
                )
        self.stop(plan, "home", plan.app_on, plan.app_off, home)

    def _technician_day(self, plan: _Plan, home: Place) -> None:
        rng, city, track = self.rng, self.city, plan.track
        workshop = city.fence_places["workshop"]
        track.stay_until(plan.app_on + int(rng.uniform(2, 5) * MIN))
        self.stop(plan, "home", plan.app_on, track.now, home)
        self._move(plan, track, workshop, "workshop", 0, 1.0, fence_id="workshop")
        plan.stops.pop()
        arrive = track.now
        leave = self.at(rng.uniform(10.5, 14.5))
        track.stay_until(leave)
        self.stop(plan, "workshop", arrive, leave, workshop, fence_id="workshop")
        errand = city.roadside_place(rng, near=(workshop.x, workshop.y), within_m=2000)
        self._move(plan, track, errand, "errand", rng.uniform(18, 24) * MIN, 0.9)
        _drive(city, track, errand, workshop, rng, 0.9)
        back = track.now
        end = self.at(18) + int(rng.uniform(1, 5) * MIN)
        track.stay_until(end)
        self.stop(plan, "workshop", back, end, workshop, fence_id="workshop")
        _drive(city, track, workshop, home, rng, 0.9)
        self.stop(plan, "home", track.now, plan.app_off, home)
        self._pos = home

    def _border_day(self, plan: _Plan, home: Place) -> None:
        """All day at the nearest office, walking up and down one edge of its fence, inside."""
        rng, city, track = self.rng, self.city, plan.track
        factor = float(rng.uniform(0.75, 1.0))
        depart = max(plan.app_on, self.at(8)) + int(rng.uniform(5, 25) * MIN)
        track.stay_until(depart)
        self.stop(plan, "home", plan.app_on, depart, home)
        office = self._nearest(("office-north", "office-south"))
        place = city.fence_places[office]
        _drive(city, track, self._pos, place, rng, factor)
        arrive = track.now
        polygon = city.fence_shapes[office].polygon_xy
        assert polygon is not None
        minx, miny, maxx, maxy = polygon.bounds
        inset = float(rng.uniform(*BORDER_INSET_M))
        clear = 15.0  # keep off the corners, where two edges are near
        side = int(rng.integers(4))  # 0 south, 1 north, 2 west, 3 east
        if side < 2:
            line_y = miny + inset if side == 0 else maxy - inset
            lo, hi = minx + clear, maxx - clear

            def at(u: float) -> tuple[float, float]:
                return u, line_y
        else:
            line_x = minx + inset if side == 2 else maxx - inset
            lo, hi = miny + clear, maxy - clear

            def at(u: float) -> tuple[float, float]:
                return line_x, u

        leave = self.at(rng.uniform(16.75, 17.5))
        while track.now < leave:
            track.move_to(*at(float(rng.uniform(lo, hi))), float(rng.uniform(0.6, 1.3)))
            if rng.random() < 0.5:  # some work at that spot
                track.stay_until(track.now + rng.uniform(1, 8) * MIN)
        track.move_to(place.x, place.y, 1.2)
        self.stop(plan, "office", arrive, track.now, place, fence_id=office)
        _drive(city, track, place, home, rng, factor)
        self._pos = home
        if track.now < plan.app_off:
            self.stop(plan, "home", track.now, plan.app_off, home)

    def _phone_events(self, plan: _Plan) -> None:
        rng, profile = self.rng, self.device.profile
        start = self.at(11) + int(rng.uniform(0, 180) * MIN)
        if profile in _RECORDING_OUTAGES:
            kind_off, kind_on, reason, (lo, hi) = _RECORDING_OUTAGES[profile]
            end = start + int(rng.uniform(lo, hi) * MIN)
            detail = "location" if profile == "permission_revoked" else None
            plan.events += [(start, kind_off, detail), (end, kind_on, detail)]
            if profile == "phone_off":  # the app starts a little after the boot
                end += int(rng.uniform(30_000, 60_000))
                plan.events.append((end, "app_start", None))
            if profile in ("phone_off", "app_killed"):
                plan.app_down.append((start, end))
            plan.recording_off.append((start, end))
            plan.contact_losses.append(
                {"reason": reason.value, "cause": profile, "start_ms": start, "end_ms": end}
            )
        elif profile in _NETWORK_OUTAGES:
            kind_off, kind_on, (lo, hi) = _NETWORK_OUTAGES[profile]
            end = start + int(rng.uniform(lo, hi) * MIN)
            plan.events += [(start, kind_off, None), (end, kind_on, None)]
            plan.network_down.append((start, end))
            plan.contact_losses.append(
                {
                    "reason": ContactReason.NO_NETWORK.value,
                    "cause": profile,
                    "start_ms": start,
                    "end_ms": end,
                }
            )
        elif profile == "battery_died":
            cut = self.at(rng.uniform(13.0, 14.5))
            boot = cut + int(rng.uniform(60, 90) * MIN)
            app = boot + int(rng.uniform(30_000, 60_000))
            plan.battery_cut = (cut, boot)
            plan.events += [(boot, "boot", None), (app, "app_start", None)]
            plan.recording_off.append((cut + 1, app))
            plan.app_down.append((cut + 1, app))
            plan.contact_losses.append(
                {
                    "reason": ContactReason.BATTERY_DIED.value,
                    "cause": profile,
                    "start_ms": cut,
                    "end_ms": app,
                }
            )
        elif profile == "clock_skew":
            plan.clock_offset_ms = CLOCK_SKEW_MS
        elif profile == "spoofer_mock":
            plan.events.append((plan.app_on + 2_000, "developer_mode_on", None))
            if plan.fakes:
                plan.events.append((plan.fakes[0][0], "mock_app_detected", "com.fakegps.pro"))
        plan.events.sort(key=lambda e: e[0])


# ---------------------------------------------------------------------------- phone
def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Unit-variance AR(1) noise of length n (via a truncated convolution, no Python loop)."""
    if phi <= 0 or n == 0:
        return rng.standard_normal(n)
    length = max(2, math.ceil(math.log(1e-6) / math.log(phi)))
    e = rng.standard_normal(n + length)
    out = np.convolve(e, phi ** np.arange(length))[length : n + length]
    return out * math.sqrt(1 - phi * phi)


def _in_any(t: np.ndarray, intervals: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(len(t), dtype=bool)
    for a, b in intervals:
        mask |= (t >= a) & (t < b)
    return mask


@dataclass(slots=True)
class _DeviceDay:
    """Everything generated for one device, compact (numpy), turned into dicts on demand."""

    device: SimDevice
    order: int
    seq: np.ndarray
    ts: np.ndarray  # phone clock
    true_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    acc: np.ndarray
    speed: np.ndarray
    bearing: np.ndarray  # nan = not reported
    alt: np.ndarray
    battery: np.ndarray
    is_mock: np.ndarray
    true_lat: np.ndarray
    true_lon: np.ndarray
    multipath: np.ndarray
    spoofed: np.ndarray
    provider: str
    states: list[dict[str, Any]]
    # (send_ms, endpoint, ping indexes or state indexes)
    sends: list[tuple[int, str, list[int]]]
    truth: list[dict[str, Any]]
    home: Place | None = None

    def ping_records(self, idx: list[int]) -> list[dict[str, Any]]:
        device_id, provider = self.device.device_id, self.provider
        seq, ts = self.seq[idx].tolist(), self.ts[idx].tolist()
        lat, lon, acc = self.lat[idx].tolist(), self.lon[idx].tolist(), self.acc[idx].tolist()
        speed, alt, battery = (
            self.speed[idx].tolist(),
            self.alt[idx].tolist(),
            self.battery[idx].tolist(),
        )
        bearing = [None if b != b else b for b in self.bearing[idx].tolist()]
        mock = self.is_mock[idx].tolist()
        return [
            {
                "device_id": device_id,
                "seq": s,
                "ts_ms": t,
                "lat": la,
                "lon": lo,
                "accuracy_m": a,
                "speed_mps": sp,
                "bearing_deg": be,
                "altitude_m": al,
                "provider": provider,
                "is_mock": m,
                "battery_pct": ba,
            }
            for s, t, la, lo, a, sp, be, al, m, ba in zip(
                seq, ts, lat, lon, acc, speed, bearing, alt, mock, battery, strict=True
            )
        ]

    def uploads(self) -> Iterator[tuple[tuple[int, int, int], Upload]]:
        for k, (send_ms, endpoint, idx) in enumerate(self.sends):
            if endpoint == "pings":
                records = self.ping_records(idx)
            else:
                records = [self.states[i] for i in idx]
            yield (
                (send_ms, self.order, k),
                Upload(send_ms, self.device.device_id, endpoint, records),
            )

    def path_truth(self) -> list[dict[str, Any]]:
        device_id = self.device.device_id
        return [
            {
                "type": "path",
                "device_id": device_id,
                "seq": s,
                "ts_ms": t,
                "true_ms": tt,
                "lat": la,
                "lon": lo,
                "multipath": mp,
                "spoofed": sp,
            }
            for s, t, tt, la, lo, mp, sp in zip(
                self.seq.tolist(),
                self.ts.tolist(),
                self.true_ms.tolist(),
                self.true_lat.tolist(),
                self.true_lon.tolist(),
                self.multipath.tolist(),
                self.spoofed.tolist(),
                strict=True,
            )
        ]


def _simulate_device(
    city: City,
    device: SimDevice,
    order: int,
    rng: np.random.Generator,
    midnight_ms: int,
    ping_ms: int,
    upload_ms: int,
    noise_scale: float = 1.0,
    home: Place | None = None,
) -> _DeviceDay:
    plan = _DayPlanner(city, device, rng, midnight_ms).plan(home)
    track = plan.track
    kt = np.asarray(track.t, dtype=np.int64)
    kx = np.asarray(track.x)
    ky = np.asarray(track.y)
    seg_tunnel = np.asarray(track.tunnel, dtype=bool)
    work_start, work_end = midnight_ms + 8 * HOUR, midnight_ms + 18 * HOUR

    # --- fix times
    n = int((plan.app_off - plan.app_on) // ping_ms) + 1
    t = plan.app_on + np.arange(n, dtype=np.int64) * ping_ms
    t += np.clip(np.round(rng.normal(0, 120, n)), -400, 400).astype(np.int64)
    seg = np.clip(np.searchsorted(kt, t, side="right") - 1, 0, len(kt) - 2)
    keep = ~_in_any(t, plan.recording_off) & ~seg_tunnel[seg] & (t <= plan.app_off)
    t, seg = t[keep], seg[keep]
    m = len(t)
    tx = np.interp(t, kt, kx)
    ty = np.interp(t, kt, ky)
    dt_s = np.maximum(np.diff(kt), 1) / 1000.0
    vx = np.diff(kx) / dt_s
    vy = np.diff(ky) / dt_s
    true_speed = np.hypot(vx, vy)[seg]
    true_bearing = np.degrees(np.arctan2(vx, vy))[seg] % 360.0

    # --- accuracy and noise
    low, high = (
        BORDER_LOITERER_ACCURACY_M if device.profile == "border_loiterer" else BASE_ACCURACY_M
    )
    base = rng.uniform(low, high) * noise_scale
    acc = np.clip(base * np.exp(0.35 * _ar1(rng, m, 0.9)), 3.0, 30.0 * noise_scale)
    sigma = acc * NOISE_SIGMA_PER_ACCURACY
    rx = tx + sigma * _ar1(rng, m, NOISE_CORRELATION)
    ry = ty + sigma * _ar1(rng, m, NOISE_CORRELATION)
    speed = np.abs(true_speed + rng.normal(0, 0.25, m))
    bearing = np.where(true_speed >= 1.0, (true_bearing + rng.normal(0, 3.0, m)) % 360.0, np.nan)
    alt = 35 + 6 * np.sin(tx / 2200) + 4 * np.cos(ty / 1700) + rng.normal(0, 1, m) * acc * 0.8
    is_mock = np.zeros(m, dtype=bool)
    spoofed = np.zeros(m, dtype=bool)
    for start, end, fx, fy, kind in plan.fakes:
        sel = (t >= start) & (t < end)
        k = int(sel.sum())
        spoofed |= sel
        if kind == "teleport":  # an ordinary-looking fix, just somewhere else
            rx[sel] = fx + sigma[sel] * rng.standard_normal(k)
            ry[sel] = fy + sigma[sel] * rng.standard_normal(k)
            speed[sel] = np.abs(rng.normal(0, 0.3, k))
            bearing[sel] = np.nan
            continue
        jitter = 1.0 if kind == "mock_flag" else 0.0
        rx[sel] = fx + jitter * rng.standard_normal(k)
        ry[sel] = fy + jitter * rng.standard_normal(k)
        acc[sel] = 3.0 if kind == "mock_flag" else 5.0
        speed[sel] = 0.0
        bearing[sel] = np.nan
        alt[sel] = 38.0 if kind == "hidden_static" else alt[sel]
        is_mock[sel] = kind == "mock_flag"
    multipath = np.zeros(m, dtype=bool)
    hours = m * ping_ms / HOUR
    for _ in range(int(rng.poisson(hours / MULTIPATH_EVERY_H)) if m else 0):
        i = int(rng.integers(m))
        burst = slice(i, min(m, i + int(rng.integers(1, 4))))
        if spoofed[burst].any():
            continue
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(100, 500)
        rx[burst] += dist * math.cos(angle)
        ry[burst] += dist * math.sin(angle)
        acc[burst] = MULTIPATH_REPORTED_ACCURACY_M
        multipath[burst] = True

    # --- battery
    battery = rng.uniform(70, 100) - rng.uniform(2, 5) * (t - plan.app_on) / HOUR
    if plan.battery_cut is not None:
        cut, boot = plan.battery_cut
        before = t <= cut
        # Drain linearly from the start level to 2.6 % at the cut: the last fix reports 3 %.
        level0 = rng.uniform(60, 70)
        frac = (t - plan.app_on) / max(1, cut - plan.app_on)
        battery = np.where(before, level0 + (2.6 - level0) * frac, 20 + 15 * (t - boot) / HOUR)
    battery = np.clip(battery, 0, 100)
    low = np.flatnonzero(battery < 15)
    if len(low):
        plan.events.append((int(t[low[0]]), "battery_low", "15"))
        plan.events.sort(key=lambda e: e[0])

    # --- records (rounded as a phone would send them)
    lat, lon = city.to_latlon(rx, ry)
    true_lat, true_lon = city.to_latlon(tx, ty)
    seq = int(rng.integers(1, 50_000)) + np.arange(m, dtype=np.int64)
    states = [
        {
            "device_id": device.device_id,
            "ts_ms": ts + plan.clock_offset_ms,
            "kind": kind,
            "detail": detail,
        }
        for ts, kind, detail in plan.events
    ]
    day = _DeviceDay(
        device=device,
        order=order,
        seq=seq,
        ts=t + plan.clock_offset_ms,
        true_ms=t,
        lat=np.round(lat, 7),
        lon=np.round(lon, 7),
        acc=np.round(acc, 1),
        speed=np.round(speed, 2),
        bearing=np.round(bearing, 1),
        alt=np.round(alt, 1),
        battery=np.round(battery).astype(float),
        is_mock=is_mock,
        true_lat=np.round(true_lat, 7),
        true_lon=np.round(true_lon, 7),
        multipath=multipath,
        spoofed=spoofed,
        provider="fused" if rng.random() < 0.7 else "gps",
        states=states,
        sends=[],
        truth=[],
        home=plan.home,
    )
    _plan_uploads(day, plan, rng, upload_ms)
    day.truth = _truth(city, device, plan, day, kt, kx, ky, work_start, work_end, ping_ms)
    return day


def _replay_device(
    city: City,
    device: SimDevice,
    order: int,
    rng: np.random.Generator,
    midnight_ms: int,
    upload_ms: int,
    recorded: _DeviceDay,
    days_back: int,
    home: Place,
) -> _DeviceDay:
    """Today's phone of a `replayer`: it reports the fixes of `recorded` (its own honest day
    `days_back` days earlier) to the last digit, their times moved by whole days plus a small
    offset, while the rep stays at `home`. Fresh today: seq, battery, app_start."""
    shift_ms = days_back * 24 * HOUR + int(rng.integers(*REPLAY_OFFSET_MS))
    t = recorded.true_ms + shift_ms
    app_on, app_off = int(t[0]), int(t[-1])
    track = _Track(app_on - 10 * MIN, home.x, home.y)
    track.stay_until(app_off + 10 * MIN)
    plan = _Plan(track, app_on, app_off, home=home)
    plan.stops.append({"kind": "home", "start": app_on, "end": app_off, "x": home.x,
                       "y": home.y, "customer_id": None, "fence_id": None})  # fmt: skip
    plan.fakes.append((app_on, app_off, home.x, home.y, "replayed_track"))
    battery = rng.uniform(70, 100) - rng.uniform(2, 5) * (t - app_on) / HOUR
    battery = np.round(np.clip(battery, 0, 100)).astype(float)
    plan.events.append((app_on, "app_start", None))
    low = np.flatnonzero(battery < 15)
    if len(low):
        plan.events.append((int(t[low[0]]), "battery_low", "15"))
    m = len(t)
    home_lat, home_lon = city.frame.to_latlon(home.x, home.y)
    day = _DeviceDay(
        device=device,
        order=order,
        seq=int(rng.integers(1, 50_000)) + np.arange(m, dtype=np.int64),
        ts=t,
        true_ms=t,
        lat=recorded.lat.copy(),
        lon=recorded.lon.copy(),
        acc=recorded.acc.copy(),
        speed=recorded.speed.copy(),
        bearing=recorded.bearing.copy(),
        alt=recorded.alt.copy(),
        battery=battery,
        is_mock=np.zeros(m, dtype=bool),
        true_lat=np.full(m, round(home_lat, 7)),
        true_lon=np.full(m, round(home_lon, 7)),
        multipath=np.zeros(m, dtype=bool),
        spoofed=np.ones(m, dtype=bool),
        provider=recorded.provider,
        states=[
            {"device_id": device.device_id, "ts_ms": ts, "kind": kind, "detail": detail}
            for ts, kind, detail in plan.events
        ],
        sends=[],
        truth=[],
        home=home,
    )
    _plan_uploads(day, plan, rng, upload_ms)
    kt = np.asarray(track.t, dtype=np.int64)
    kx, ky = np.asarray(track.x), np.asarray(track.y)
    work_start, work_end = midnight_ms + 8 * HOUR, midnight_ms + 18 * HOUR
    day.truth = _truth(city, device, plan, day, kt, kx, ky, work_start, work_end, 0)
    return day


def _plan_uploads(day: _DeviceDay, plan: _Plan, rng: np.random.Generator, upload_ms: int) -> None:
    profile = day.device.profile
    if profile == "slow_uploader":
        upload_ms = HOUR
    attempts: list[int] = []
    a = plan.app_on + int(rng.uniform(5_000, upload_ms))
    while a < plan.app_off:
        attempts.append(a)
        a += upload_ms + int(rng.uniform(-3_000, 3_000))
    attempts.append(plan.app_off + int(rng.uniform(1_000, 10_000)))  # flush when the app stops
    for _, end in plan.app_down + plan.network_down:
        attempts.append(end + int(rng.uniform(5_000, 20_000)))
    blocked = plan.app_down + plan.network_down
    attempts = sorted(x for x in set(attempts) if not any(s <= x < e for s, e in blocked))
    state_times = np.array([e[0] for e in plan.events], dtype=np.int64)
    p_ptr = s_ptr = 0
    for a in attempts:
        s_end = int(np.searchsorted(state_times, a, side="right"))
        if s_end > s_ptr:
            day.sends.append((a, "device-states", list(range(s_ptr, s_end))))
            s_ptr = s_end
        p_end = int(np.searchsorted(day.true_ms, a, side="right"))
        if p_end <= p_ptr:
            continue
        idx = list(range(p_ptr, p_end))
        backlog_ms = a - int(day.true_ms[p_ptr])
        if profile == "slow_uploader" or (profile in _NETWORK_OUTAGES and backlog_ms > 5 * MIN):
            _messy_sends(day, a, idx, rng)
        else:
            for c in range(0, len(idx), MAX_RECORDS_PER_UPLOAD):
                day.sends.append((a + 1, "pings", idx[c : c + MAX_RECORDS_PER_UPLOAD]))
        p_ptr = p_end
    # A backlog's chunks may still be going out when the next regular upload starts.
    day.sends.sort(key=lambda send: send[0])


def _messy_sends(day: _DeviceDay, a: int, idx: list[int], rng: np.random.Generator) -> None:
    """A backlog sent in shuffled chunks, shuffled inside, with repeats and one retry."""
    chunks: list[list[int]] = []
    i = 0
    while i < len(idx):
        size = int(rng.integers(40, 151))
        chunks.append(idx[i : i + size])
        i += size
    chunks = [chunks[int(k)] for k in rng.permutation(len(chunks))]
    for chunk in chunks:
        perm = rng.permutation(len(chunk))
        chunk[:] = [chunk[int(k)] for k in perm]
    for k in rng.choice(len(idx), size=max(1, len(idx) * 3 // 100), replace=False):
        chunks[int(rng.integers(len(chunks)))].append(idx[int(k)])
    chunks.append(list(chunks[int(rng.integers(len(chunks)))]))  # a retry after a timeout
    for n, chunk in enumerate(chunks):
        day.sends.append((a + 1 + 1500 * n, "pings", chunk))


# ---------------------------------------------------------------------------- truth
def _crossings(
    shape: FenceShape, kt: np.ndarray, kx: np.ndarray, ky: np.ndarray, t0: int, t1: int
) -> list[tuple[int, str]]:
    """Exact (1 ms) crossings of the true path with a fence between t0 and t1."""
    grid = np.arange(t0, t1 + 1, 2_000, dtype=np.int64)
    x, y = np.interp(grid, kt, kx), np.interp(grid, kt, ky)
    minx, miny, maxx, maxy = (
        shape.polygon_xy.bounds
        if shape.polygon_xy is not None
        else (
            shape.circle_xy[0] - shape.circle_xy[2],
            shape.circle_xy[1] - shape.circle_xy[2],
            shape.circle_xy[0] + shape.circle_xy[2],
            shape.circle_xy[1] + shape.circle_xy[2],
        )
    )
    inside = np.zeros(len(grid), dtype=bool)
    near = np.flatnonzero((x >= minx - 1) & (x <= maxx + 1) & (y >= miny - 1) & (y <= maxy + 1))
    if len(near) == 0:
        return []
    inside[near] = shape.contains(x[near], y[near])
    out: list[tuple[int, str]] = []
    for i in np.flatnonzero(inside[1:] != inside[:-1]).tolist():
        lo, hi = int(grid[i]), int(grid[i + 1])
        was = bool(inside[i])
        while hi - lo > 1:  # bisection to the millisecond
            mid = (lo + hi) // 2
            now = bool(shape.contains(np.interp([mid], kt, kx), np.interp([mid], kt, ky))[0])
            lo, hi = (mid, hi) if now == was else (lo, mid)
        out.append((hi, "exit" if was else "enter"))
    return out


@functools.lru_cache(maxsize=256)
def _active_minutes(schedule: Schedule, t0: int, t1: int) -> tuple[tuple[int, int], ...]:
    """The intervals of [t0, t1) (whole minutes) during which `schedule` is active."""
    out: list[tuple[int, int]] = []
    for t in range(t0, t1, MIN):  # schedules change only on whole minutes
        if not schedule.is_active(t):
            continue
        if out and out[-1][1] == t:
            out[-1] = (out[-1][0], t + MIN)
        else:
            out.append((t, t + MIN))
    return tuple(out)


def _observed_transitions(
    shape: FenceShape,
    raw: list[tuple[int, str]],
    kt: np.ndarray,
    kx: np.ndarray,
    ky: np.ndarray,
    day_window: tuple[int, int],
    recording_off: list[tuple[int, int]],
    midnight: int,
) -> list[tuple[int, str, bool]]:
    """The fence events a manager should see, as (ts, transition, initial), in time order.

    Observation runs while the app records in work hours and the fence is active. Within it,
    every crossing of the true path counts. When observation STARTS (work hours, the app or
    the fence's schedule begin) with the rep inside the fence, that is an "enter" (initial:
    the on-duty record "at the office at 08:02"). A recording gap (phone off, app killed, GPS
    off, battery dead) does not reset what is known: a crossing inside it is not observable
    at its time, and the net change across the gap (in before it, out after it, or the other
    way round) is an exit or enter at the moment recording resumes.
    """
    start, end = day_window
    if end <= start:
        return []
    schedule = shape.fence.schedule
    if schedule is None:
        active = [(start, end)]
    else:
        day = _active_minutes(schedule, midnight, midnight + 25 * HOUR)  # one scan a day
        active = [(max(a, start), min(b, end)) for a, b in day if a < end and b > start]

    def inside(t: int) -> bool:
        x, y = np.interp([t], kt, kx), np.interp([t], kt, ky)
        return bool(shape.contains(x, y)[0])

    out: list[tuple[int, str, bool]] = []
    gaps = sorted(recording_off)
    for a, b in active:
        # Split the active interval at the recording gaps; state carries across a gap.
        pieces: list[tuple[int, int, bool]] = []
        cursor, carried = a, False
        for g0, g1 in gaps:
            if g1 <= cursor or g0 >= b:
                continue
            if g0 > cursor:
                pieces.append((cursor, g0, carried))
            cursor, carried = max(cursor, g1), True
        if cursor < b:
            pieces.append((cursor, b, carried))
        known = False  # nothing is known before observation starts: outside
        for p0, p1, carries in pieces:
            now = inside(p0)
            if now != (known if carries else False):
                out.append((p0, "enter" if now else "exit", not carries))
            out.extend((ts, tr, False) for ts, tr in raw if p0 < ts < p1)
            known = inside(p1)
    return out


def _truth(
    city: City,
    device: SimDevice,
    plan: _Plan,
    day: _DeviceDay,
    kt: np.ndarray,
    kx: np.ndarray,
    ky: np.ndarray,
    work_start: int,
    work_end: int,
    ping_ms: int,
) -> list[dict[str, Any]]:
    device_id = device.device_id
    out: list[dict[str, Any]] = []
    real_fix = day.true_ms[~day.spoofed]
    for stop in plan.stops:
        start, end = max(stop["start"], plan.app_on), min(stop["end"], plan.app_off)
        if end - start < MIN_STOP_MS:
            continue
        lat, lon = city.frame.to_latlon(stop["x"], stop["y"])
        out.append(
            {
                "type": "stop",
                "device_id": device_id,
                "kind": stop["kind"],
                "start_ms": start,
                "end_ms": end,
                "duration_s": round((end - start) / 1000, 1),
                "lat": round(lat, 7),
                "lon": round(lon, 7),
                "customer_id": stop["customer_id"],
                "fence_id": stop["fence_id"],
            }
        )
        if stop["kind"] == "customer" and end - start >= MIN_VISIT_MS:
            inside = real_fix[(real_fix >= start) & (real_fix <= end)]
            observed = len(inside) > 1 and int(inside[-1] - inside[0]) >= 4 * MIN
            out.append(
                {
                    "type": "visit",
                    "device_id": device_id,
                    "customer_id": stop["customer_id"],
                    "arrive_ms": start,
                    "leave_ms": end,
                    "minutes": round((end - start) / MIN, 2),
                    "observed": observed,
                }
            )
    day_window = (max(plan.app_on, work_start), min(plan.app_off, work_end))
    midnight = work_start - 8 * HOUR  # work starts at 08:00
    for shape in city.fence_shapes.values():
        fence = shape.fence
        raw = _crossings(shape, kt, kx, ky, plan.app_on, plan.app_off)
        for ts, transition, initial in _observed_transitions(
            shape, raw, kt, kx, ky, day_window, plan.recording_off, midnight
        ):
            out.append(
                {
                    "type": "fence_crossing",
                    "device_id": device_id,
                    "fence_id": fence.fence_id,
                    "fence_kind": fence.kind,
                    "transition": transition,
                    "ts_ms": ts,
                    "initial": initial,
                }
            )
        episode = {"workshop": ("exit", "left_post"), "forbidden": ("enter", "forbidden_visit")}
        if fence.kind in episode:
            opening, name = episode[fence.kind]
            if fence.kind == "workshop" and device.profile != "left_post":
                continue
            begin: int | None = None
            for ts, transition in raw:
                if transition == opening:
                    begin = ts
                elif begin is not None:
                    if min(ts, work_end) > max(begin, work_start):
                        out.append(
                            {
                                "type": name,
                                "device_id": device_id,
                                "fence_id": fence.fence_id,
                                "start_ms": begin,
                                "end_ms": ts,
                            }
                        )
                    begin = None
    for start, end, _, _, kind in plan.fakes:
        out.append(
            {
                "type": "spoof_episode",
                "device_id": device_id,
                "kind": kind,
                "start_ms": start,
                "end_ms": end,
                "alerts": [a.value for a in _SPOOF_ALERTS[kind]],
            }
        )
    integrity = [e for e in plan.events if e[1] in ("developer_mode_on", "mock_app_detected")]
    if integrity:
        out.append(
            {
                "type": "spoof_episode",
                "device_id": device_id,
                "kind": "device_integrity",
                "start_ms": integrity[0][0],
                "end_ms": plan.app_off,
                "alerts": [a.value for a in _SPOOF_ALERTS["device_integrity"]],
            }
        )
    if plan.clock_offset_ms:
        out.append(
            {
                "type": "spoof_episode",
                "device_id": device_id,
                "kind": "clock_skew",
                "start_ms": plan.app_on,
                "end_ms": plan.app_off,
                "alerts": [a.value for a in _SPOOF_ALERTS["clock_skew"]],
            }
        )
    losses = list(plan.contact_losses)
    if device.profile == "slow_uploader":
        sends = sorted({s for s, endpoint, _ in day.sends if endpoint == "pings"})
        for a, b in itertools.pairwise(sends):
            losses.append(
                {
                    "reason": ContactReason.NO_NETWORK.value,
                    "cause": "slow_upload",
                    "start_ms": a,
                    "end_ms": b,
                }
            )
    for loss in losses:
        overlap = min(loss["end_ms"], work_end) - max(loss["start_ms"], work_start)
        if overlap > CONTACT_LOSS_MIN_MS:
            out.append({"type": "contact_loss", "device_id": device_id, **loss})
    dist = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(kx), np.diff(ky)))])
    km = (np.interp(work_end, kt, dist) - np.interp(work_start, kt, dist)) / 1000.0
    out.append({"type": "mileage", "device_id": device_id, "km": round(float(km), 3)})
    return out


# ---------------------------------------------------------------------------- simulation
class Simulation:
    """The simulated day: devices, the upload stream (send order) and the ground truth.

    `uploads` and `truth` are built on first access; `iter_uploads()` streams the uploads
    without holding them all (use it for large fleets).
    """

    def __init__(
        self,
        city: City,
        day: dt.date,
        seed: int,
        days: list[_DeviceDay],
        history: list[Simulation] | None = None,
    ) -> None:
        self.city = city
        self.day = day
        self.seed = seed
        self.devices = [d.device for d in days]
        self._days = days
        # Earlier days of the same devices, oldest first (`simulate(history_days=...)`).
        self.history: list[Simulation] = history or []
        self._uploads: list[Upload] | None = None
        self._truth: list[dict[str, Any]] | None = None

    def iter_uploads(self) -> Iterator[Upload]:
        for _, upload in heapq.merge(*(d.uploads() for d in self._days), key=lambda kv: kv[0]):
            yield upload

    @property
    def uploads(self) -> list[Upload]:
        if self._uploads is None:
            self._uploads = list(self.iter_uploads())
        return self._uploads

    def iter_truth(self, include_path: bool = True) -> Iterator[dict[str, Any]]:
        for d in self._days:
            yield from d.truth
        if include_path:
            for d in self._days:
                yield from d.path_truth()

    @property
    def truth(self) -> list[dict[str, Any]]:
        if self._truth is None:
            self._truth = list(self.iter_truth())
        return self._truth

    @property
    def n_fixes(self) -> int:
        return sum(len(d.seq) for d in self._days)


def _midnight_ms(city: City, date: dt.date) -> int:
    return int(dt.datetime.combine(date, dt.time(0), ZoneInfo(city.tz)).timestamp() * 1000)


def _past_day(
    city: City,
    device: SimDevice,
    order: int,
    seed: int,
    back: int,
    date: dt.date,
    ping_ms: int,
    upload_ms: int,
    noise_scale: float,
    home: Place,
) -> _DeviceDay:
    """`device`'s day `back` weekdays before today, from its own stream (seed, device, back)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, order + 1, 0x51D, back]))
    return _simulate_device(city, device, order, rng, _midnight_ms(city, date), ping_ms,
                            upload_ms, noise_scale, home=home)  # fmt: skip


def _roster(reps: int, profiles: dict[str, str] | None) -> list[tuple[str, str]]:
    out = []
    for i in range(reps):
        device_id = f"rep-{i + 1:03d}"
        profile = (profiles or {}).get(device_id) if profiles is not None else None
        if profile is None:
            profile = "honest" if profiles is not None else DEFAULT_ROSTER[i % len(DEFAULT_ROSTER)]
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r} for {device_id}; known: {PROFILES}")
        out.append((device_id, profile))
    return out


def simulate(
    city: City,
    reps: int = 20,
    day: dt.date | None = None,
    seed: int = 7,
    ping_interval_s: float = 5.0,
    upload_interval_s: float = 60.0,
    profiles: dict[str, str] | None = None,
    noise_scale: float = 1.0,
    history_days: int = 0,
) -> Simulation:
    """Simulate `reps` devices for one work day.

    `history_days` (0) also simulates that many earlier weekdays (`Simulation.history`, oldest
    first) as honest days of the same reps with the same homes, each from its own random
    stream (seed, device number, days back); today's days do not depend on it.

    `noise_scale` multiplies every phone's accuracy, and so its GPS noise (1.0: typical
    accuracy 5-9 m with bursts to 30 m; 4.0: a 20-36 m phone, e.g. indoors or a cheap GPS).

    `day` defaults to `default_sim_day(today)` (a weekday; weekends have no work hours).
    `profiles` maps device ids ("rep-001"...) to profile names; devices it does not name are
    honest. Without it, `DEFAULT_ROSTER` is cycled. Each device draws from its own random
    stream (seed, device number), so a device's day does not depend on how many reps run.
    """
    if day is None:
        day = default_sim_day(dt.date.today())
    past_dates = [default_sim_day(day)]  # newest first
    while len(past_dates) < history_days:
        past_dates.append(default_sim_day(past_dates[-1]))
    schedule = Schedule.parse(f"mon-fri 08:00-18:00 {city.tz}")
    ping_ms, upload_ms = round(ping_interval_s * 1000), round(upload_interval_s * 1000)
    days: list[_DeviceDay] = []
    past_days: list[list[_DeviceDay]] = [[] for _ in range(history_days)]
    for order, (device_id, profile) in enumerate(_roster(reps, profiles)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, order + 1, 0x51D]))
        first, last = _FIRST[order % len(_FIRST)], _LAST[(order * 7 + seed) % len(_LAST)]
        title = "Technician" if profile == "left_post" else "Rep"
        device = SimDevice(device_id, city.org_id, schedule, profile, f"{title} {first} {last}")
        honest = dataclasses.replace(device, profile="honest")
        pasts: list[_DeviceDay] = []
        if profile == "replayer":  # replays its own honest day of the weekday before
            home = city.roadside_place(rng)
            pasts.append(_past_day(city, honest, order, seed, 1, past_dates[0], ping_ms,
                                   upload_ms, noise_scale, home))  # fmt: skip
            back = (day - past_dates[0]).days
            today = _replay_device(city, device, order, rng, _midnight_ms(city, day), upload_ms,
                                   pasts[0], back, home)  # fmt: skip
        else:
            today = _simulate_device(city, device, order, rng, _midnight_ms(city, day), ping_ms,
                                     upload_ms, noise_scale)  # fmt: skip
            assert today.home is not None
            home = today.home
        for back in range(len(pasts) + 1, history_days + 1):
            pasts.append(_past_day(city, honest, order, seed, back, past_dates[back - 1],
                                   ping_ms, upload_ms, noise_scale, home))  # fmt: skip
        days.append(today)
        for back in range(history_days):
            past_days[back].append(pasts[back])
    history = [Simulation(city, past_dates[b], seed, past_days[b]) for b in range(history_days)]
    return Simulation(city, day, seed, days, history[::-1])
