"""Dwell (stay-point) detection and customer visits.

Streams a device's smoothed track points (event-time order, outliers already removed) and finds
stays: a run of fixes that remain within `radius_m` of their running centre. A stay that lasts
`min_duration_s` becomes a `Dwell` (emitted `status="open"`, version 1); when the device leaves,
falls silent or the replay ends, the same id is emitted again `status="closed"` (version 2) with
its `end_reason` ("moved", "gap" or "flush"). A closed dwell whose centre lies within a
customer's radius (plus `visit_extra_m`) of the device's own org also yields a `Visit` (the
nearest such customer; matched on the centre at opening and again on the final centre at
closing, and the closing match is the one the visit uses). Ids: dwell =
make_id(org, device, "dwell", start_ms); visit = make_id(org, device, "visit", customer, arrive).

How a stay is tracked:
- Positions are the smoothed lat/lon in a local metric frame anchored at the stay's first fix;
  the centre is the accuracy-weighted mean of the fixes inside the stay (fixes outside are
  never averaged in, so one GPS jump cannot drag it).
- The radius test is accuracy-aware: a fix is inside if it is within `radius_m` plus a slack of
  `accuracy_slack_frac * accuracy_m` (at most `max_accuracy_slack_m`). Fixes worse than
  `max_accuracy_m` say too little to move the centre or end a stay; they only count as a sign
  of life for the gap timer.
- Leaving needs `exit_confirm_points` consecutive fixes outside spanning `exit_confirm_s`
  (or a full pending buffer); the stay then ends ("moved") and a new stay is seeded from those
  outside fixes. Fewer outside fixes followed by a fix inside are dropped as a glitch.
- Arrival is the first fix of the stay, after trimming the approach: when the stay first
  reaches `min_duration_s`, leading fixes farther than the core distance
  (`core_frac * radius_m` + slack) from the centre are removed (up to the first
  `arrive_trim_points` fixes are remembered for this). Leaving is the last fix within that core
  distance, so the drive or walk out of the radius is not counted as time at the place.
- A silence longer than `max_gap_s` between fixes ends the stay ("gap"); `tick` does the same
  on the processing clock when no fix arrives, and `tick(final=True)` closes ("flush").

Parameters (`DwellParams`, section `[dwell]`):
- `radius_m` = 60.0: a stay is the fixes within this distance of its running centre.
- `min_duration_s` = 300.0: a stay becomes a dwell only once it lasts this long (a 2-minute
  drive-by or traffic-light stop does not count).
- `max_gap_s` = 900.0: a silence shorter than this inside a stay does not split it; a longer
  one ends it with end_reason "gap" (also enforced by `tick` on the processing clock).
- `exit_confirm_points` = 3: consecutive fixes outside the radius needed to end a stay.
- `exit_confirm_s` = 15.0: ... and the time those outside fixes must span (both must hold), so
  a single jump or a burst of bad fixes from a fast-sampling phone does not end a visit.
- `max_pending_points` = 10: outside fixes kept while an exit is unconfirmed; a full buffer
  confirms the exit regardless of `exit_confirm_s` (bounds the state).
- `accuracy_slack_frac` = 0.5: share of a fix's reported accuracy added to the radius tests.
- `max_accuracy_slack_m` = 30.0: cap on that slack.
- `max_accuracy_m` = 100.0: fixes with a worse accuracy neither move the centre nor end a stay.
- `accuracy_floor_m` = 5.0: accuracies below this weigh like this in the centre (phones report
  optimistic values; no single fix should dominate).
- `core_frac` = 0.5: the core distance (share of `radius_m`, plus slack) used to trim the
  approach from the arrival and the departure from the leave time.
- `arrive_trim_points` = 12: how many leading fixes of a stay are remembered for trimming the
  approach (about a minute at 5 s sampling; bounds the state).
- `visit_extra_m` = 0.0: slack added to every customer's radius when matching a dwell.
- `tracking_edge_s` = 120.0: a visit whose arrival lies within this long after the device's
  work hours begin (or whose leave lies within this long before they end) is stored with
  `verified=False` and reason `arrival_not_observed` (`departure_not_observed`): tracking only
  runs in work hours, so the rep was already there when it started (or still there when it
  stopped) and the stay may be the rep's home next to a customer. On the tuning seeds every
  false visit of the honest, drive-by, fences, noise and sampling scenarios (26 of 26) was such
  a stay at home (7 of 9 in "honest day"; the other 2 are lunch stops inside a customer's
  radius, which no location-based detector can tell from a visit), and no true visit was
  lost. Devices without a schedule are tracked at all hours and have no edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.events import Dwell, DwellStatus, TrackPoint, Visit, VisitDoubt, make_id
from pipeline.geo import M_PER_DEG_LAT
from pipeline.processors.base import NO_TIMER, Ctx, Result, SerialisableState

# Head entries: [ms since the stay's anchor fix, x_m, y_m, accuracy_m]; pending entries:
# [ts_ms, lat, lon, accuracy_m].
_H_DT, _H_X, _H_Y, _H_ACC = 0, 1, 2, 3
_P_TS, _P_LAT, _P_LON, _P_ACC = 0, 1, 2, 3
# Weights are (reference / accuracy)^2, scaled so typical fixes weigh about 1.
_WEIGHT_REF_M = 10.0


@dataclass(slots=True)
class DwellParams:
    radius_m: float = 60.0
    min_duration_s: float = 300.0
    max_gap_s: float = 900.0
    exit_confirm_points: int = 3
    exit_confirm_s: float = 15.0
    max_pending_points: int = 10
    accuracy_slack_frac: float = 0.5
    max_accuracy_slack_m: float = 30.0
    max_accuracy_m: float = 100.0
    accuracy_floor_m: float = 5.0
    core_frac: float = 0.5
    arrive_trim_points: int = 12
    visit_extra_m: float = 0.0
    tracking_edge_s: float = 120.0


@dataclass(slots=True)
class DwellState(SerialisableState):
    """One device's current stay (candidate or open dwell). `n == 0` means no stay."""

    last_seen_ms: int = 0  # event time of the last fix processed (gap timer)
    # Local frame of the stay: anchored at its first fix; kx = metres per degree of longitude.
    anchor_ms: int = 0
    anchor_lat: float = 0.0
    anchor_lon: float = 0.0
    kx: float = 0.0
    start_ms: int = 0  # first fix of the stay (after trimming the approach)
    last_in_ms: int = 0  # last fix inside the radius
    last_core_ms: int = 0  # last fix within the core distance (the leave time)
    n: int = 0  # fixes inside the stay
    # Accuracy-weighted sums over the fixes inside: weight, x, y, x^2 + y^2 (metres).
    sw: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sq: float = 0.0
    head: list[list[float]] = field(default_factory=list)  # first fixes, until the dwell opens
    pending: list[list[float]] = field(default_factory=list)  # fixes outside, exit unconfirmed
    dwell_id: str | None = None  # set while a dwell is open
    version: int = 0


class DwellDetector:
    def __init__(self, params: DwellParams | None = None) -> None:
        p = params or DwellParams()
        self.params = p
        self._radius = p.radius_m
        self._core = p.radius_m * p.core_frac
        self._min_ms = p.min_duration_s * 1000.0
        self._gap_ms = p.max_gap_s * 1000.0
        self._confirm_ms = p.exit_confirm_s * 1000.0
        self._confirm_pts = max(1, p.exit_confirm_points)
        self._pending_cap = max(self._confirm_pts, p.max_pending_points)
        self._slack_frac = p.accuracy_slack_frac
        self._slack_max = p.max_accuracy_slack_m
        self._max_acc = p.max_accuracy_m
        self._acc_floor = max(0.1, p.accuracy_floor_m)
        self._head_cap = max(1, p.arrive_trim_points)
        # What the per-fix loop reads, unpacked once per batch.
        self._consts = (
            self._gap_ms,
            self._max_acc,
            self._radius,
            self._core,
            self._slack_frac,
            self._slack_max,
            self._acc_floor,
            self._head_cap,
            self._min_ms,
            self._pending_cap,
            self._confirm_pts,
            self._confirm_ms,
        )

    def initial_state(self) -> DwellState:
        return DwellState()

    # -- public entry points ------------------------------------------------------------------

    def process(self, state: DwellState, points: list[TrackPoint], ctx: Ctx, out: Result) -> None:
        self._run(state, points, ctx, out, False)

    def next_tick_ms(self, state: DwellState) -> int:
        """An open dwell closes at the first tick more than the gap after its last fix."""
        return NO_TIMER if state.dwell_id is None else int(state.last_seen_ms + self._gap_ms) + 1

    def tick(self, state: DwellState, ctx: Ctx, out: Result, final: bool = False) -> None:
        if final:
            if state.dwell_id is not None:
                self._close(state, "flush", ctx, out)
            self._reset(state)
        elif state.dwell_id is not None and ctx.now_ms - state.last_seen_ms > self._gap_ms:
            self._close(state, "gap", ctx, out)
            self._reset(state)

    # -- per fix ------------------------------------------------------------------------------

    # fmt: off
    # (the loop's locals are loaded and saved as one row each)
    def _run(
        self, st: DwellState, fixes: Sequence[Any], ctx: Ctx, out: Result, refeed: bool
    ) -> None:
        """The per-fix loop over track points, or with `refeed` over pending entries fed again
        after a confirmed exit (older than `last_seen_ms`: the gap timer has seen them; already
        rounded and screened). Written out in one function because per-fix calls and state
        attribute lookups were most of this processor's cost: the stay's running values live
        in locals, written back (`_save`) before anything that reads or changes the state
        (opening, closing, an exit) and read again (`_load`) after it."""
        (gap_ms, max_acc, radius, core, slack_frac, slack_max, acc_floor, head_cap, min_ms,
         pending_cap, confirm_pts, confirm_ms) = self._consts
        (last_seen, n, sw, sx, sy, sq, last_in, last_core, start_ms, anchor_ms, anchor_lat,
         anchor_lon, kx, dwell_id, head, pending) = self._load(st)
        sqrt = math.sqrt
        for p in fixes:
            if refeed:
                ts, lat, lon, acc = p
                ts = int(ts)
            else:
                ts = p.ts_ms
                if ts <= last_seen:
                    continue  # not in event-time order (duplicate or late): cannot extend a stay
                if n and ts - last_seen > gap_ms:
                    self._save(st, last_seen, n, sw, sx, sy, sq, last_in, last_core, start_ms,
                               anchor_ms, anchor_lat, anchor_lon, kx)
                    if dwell_id is not None:
                        self._close(st, "gap", ctx, out)
                    self._reset(st)
                    (last_seen, n, sw, sx, sy, sq, last_in, last_core, start_ms, anchor_ms,
                     anchor_lat, anchor_lon, kx, dwell_id, head, pending) = self._load(st)
                last_seen = ts
                acc = p.accuracy_m
                if acc > max_acc:
                    continue  # too vague to place; it did refresh the gap timer above
                acc = round(acc)  # whole metres, as stored in the state: trims subtract exactly
                lat = p.lat
                lon = p.lon
            if n:
                x = (lon - anchor_lon) * kx
                y = (lat - anchor_lat) * M_PER_DEG_LAT
                dx = x - sx / sw
                dy = y - sy / sw
                d = sqrt(dx * dx + dy * dy)
                slack = acc * slack_frac
                if slack > slack_max:
                    slack = slack_max
                if d > radius + slack:
                    # Refed entries were rounded when first appended (again: same value).
                    pending.append(
                        [ts, lat, lon, acc] if refeed else [ts, round(lat, 7), round(lon, 7), acc]
                    )
                    if len(pending) >= pending_cap or (
                        len(pending) >= confirm_pts and ts - pending[0][_P_TS] >= confirm_ms
                    ):
                        self._save(st, last_seen, n, sw, sx, sy, sq, last_in, last_core,
                                   start_ms, anchor_ms, anchor_lat, anchor_lon, kx)
                        if dwell_id is not None:
                            self._close(st, "moved", ctx, out)
                        self._reset(st)  # detaches `pending` from the state
                        # The outside fixes are the start of whatever comes next.
                        self._run(st, pending, ctx, out, True)
                        (last_seen, n, sw, sx, sy, sq, last_in, last_core, start_ms, anchor_ms,
                         anchor_lat, anchor_lon, kx, dwell_id, head, pending) = self._load(st)
                    continue
                if pending:
                    pending.clear()  # the excursion was a glitch
                if d <= core + slack:
                    last_core = ts
            else:  # the first fix of a stay anchors its local frame
                anchor_ms = start_ms = last_core = ts
                anchor_lat = lat
                anchor_lon = lon
                kx = M_PER_DEG_LAT * math.cos(math.radians(lat))
                x = y = 0.0
            # Add the fix to the stay. Only remember leading fixes while the head still holds
            # every fix of the stay, so a trim never skips an unremembered fix.
            if dwell_id is None and n < head_cap and len(head) == n:
                # Whole metres (far below GPS noise) keep the state small; the sums get the
                # same values so a trim removes exactly what was added.
                x = round(x)
                y = round(y)
                head.append([ts - anchor_ms, x, y, acc])
            w = (_WEIGHT_REF_M / (acc if acc > acc_floor else acc_floor)) ** 2
            n += 1
            sw += w
            sx += w * x
            sy += w * y
            sq += w * (x * x + y * y)
            last_in = ts
            # n > 1: not the stay's first fix (a stay opens on a later fix).
            if dwell_id is None and n > 1 and ts - start_ms >= min_ms:
                self._save(st, last_seen, n, sw, sx, sy, sq, last_in, last_core, start_ms,
                           anchor_ms, anchor_lat, anchor_lon, kx)
                self._try_open(st, ctx, out)
                (last_seen, n, sw, sx, sy, sq, last_in, last_core, start_ms, anchor_ms,
                 anchor_lat, anchor_lon, kx, dwell_id, head, pending) = self._load(st)
        self._save(st, last_seen, n, sw, sx, sy, sq, last_in, last_core, start_ms, anchor_ms,
                   anchor_lat, anchor_lon, kx)

    @staticmethod
    def _load(st: DwellState) -> tuple[Any, ...]:
        return (st.last_seen_ms, st.n, st.sw, st.sx, st.sy, st.sq, st.last_in_ms,
                st.last_core_ms, st.start_ms, st.anchor_ms, st.anchor_lat, st.anchor_lon, st.kx,
                st.dwell_id, st.head, st.pending)

    @staticmethod
    def _save(st: DwellState, last_seen: int, n: int, sw: float, sx: float, sy: float,
              sq: float, last_in: int, last_core: int, start_ms: int, anchor_ms: int,
              anchor_lat: float, anchor_lon: float, kx: float) -> None:
        st.last_seen_ms, st.n, st.sw, st.sx, st.sy, st.sq = last_seen, n, sw, sx, sy, sq
        st.last_in_ms, st.last_core_ms, st.start_ms, st.anchor_ms = (
            last_in, last_core, start_ms, anchor_ms)
        st.anchor_lat, st.anchor_lon, st.kx = anchor_lat, anchor_lon, kx

    # fmt: on

    def _weight(self, acc: float) -> float:
        a = acc if acc > self._acc_floor else self._acc_floor
        return (_WEIGHT_REF_M / a) ** 2

    def _try_open(self, st: DwellState, ctx: Ctx, out: Result) -> None:
        self._trim_approach(st)
        if st.last_in_ms - st.start_ms < self._min_ms:
            return
        st.head = []  # no longer needed: keep the state small while the dwell lasts
        st.dwell_id = make_id(ctx.org_id, ctx.device_id, "dwell", st.start_ms)
        st.version = 1
        lat, lon = self._centre(st)
        match = self._customer(lat, lon, ctx)
        out.dwells.append(
            self._record(st, ctx, lat, lon, DwellStatus.OPEN.value, "", match[0] if match else None)
        )

    def _trim_approach(self, st: DwellState) -> None:
        """Drop leading fixes that lie off the stay's core: the walk or drive in."""
        head = st.head
        while len(head) >= 2:
            h = head[0]
            x, y, acc = h[_H_X], h[_H_Y], h[_H_ACC]
            dx = x - st.sx / st.sw
            dy = y - st.sy / st.sw
            slack = min(acc * self._slack_frac, self._slack_max)
            if dx * dx + dy * dy <= (self._core + slack) ** 2:
                break
            w = self._weight(acc)
            st.n -= 1
            st.sw -= w
            st.sx -= w * x
            st.sy -= w * y
            st.sq -= w * (x * x + y * y)
            head.pop(0)
            st.start_ms = st.anchor_ms + int(head[0][_H_DT])

    # -- outputs ------------------------------------------------------------------------------

    def _centre(self, st: DwellState) -> tuple[float, float]:
        return (
            st.anchor_lat + st.sy / st.sw / M_PER_DEG_LAT,
            st.anchor_lon + st.sx / st.sw / st.kx,
        )

    def _customer(self, lat: float, lon: float, ctx: Ctx) -> tuple[str, float, str] | None:
        found = ctx.ref.customers.within(lat, lon, self.params.visit_extra_m, org_id=ctx.org_id)
        if not found:
            return None
        c, d = found[0]
        return c.customer_id, d, c.grade

    def _record(
        self,
        st: DwellState,
        ctx: Ctx,
        lat: float,
        lon: float,
        status: str,
        reason: str,
        customer_id: str | None,
    ) -> Dwell:
        cx = st.sx / st.sw
        cy = st.sy / st.sw
        spread = math.sqrt(max(0.0, st.sq / st.sw - cx * cx - cy * cy))
        assert st.dwell_id is not None
        return Dwell(
            id=st.dwell_id,
            org_id=ctx.org_id,
            device_id=ctx.device_id,
            start_ms=st.start_ms,
            end_ms=max(st.start_ms, st.last_core_ms),
            lat=round(lat, 7),
            lon=round(lon, 7),
            radius_m=round(spread, 1),
            n_points=st.n,
            status=status,
            end_reason=reason,
            customer_id=customer_id,
            version=st.version,
        )

    def _close(self, st: DwellState, reason: str, ctx: Ctx, out: Result) -> None:
        st.version += 1
        lat, lon = self._centre(st)
        # Match again on the final centre: it is better than the one the dwell opened with.
        match = self._customer(lat, lon, ctx)
        dwell = self._record(
            st, ctx, lat, lon, DwellStatus.CLOSED.value, reason, match[0] if match else None
        )
        out.dwells.append(dwell)
        if match is None:
            return
        customer_id, distance, grade = match
        arrive, leave = dwell.start_ms, dwell.end_ms
        unobserved = self._unobserved_edges(arrive, leave, ctx)
        out.visits.append(
            Visit(
                id=make_id(ctx.org_id, ctx.device_id, "visit", customer_id, arrive),
                org_id=ctx.org_id,
                device_id=ctx.device_id,
                customer_id=customer_id,
                dwell_id=dwell.id,
                arrive_ms=arrive,
                leave_ms=leave,
                minutes=round((leave - arrive) / 60000.0, 2),
                distance_m=round(distance, 1),
                customer_grade=grade,
                verified=not unobserved,
                suspect_alerts=",".join(unobserved),
            )
        )

    def _unobserved_edges(self, arrive: int, leave: int, ctx: Ctx) -> list[str]:
        """Why the visit's arrival or departure was not seen: tracking started or stopped."""
        edge_ms = int(self.params.tracking_edge_s * 1000)
        schedule = ctx.schedule
        if schedule is None or edge_ms <= 0:
            return []
        reasons = []
        if not schedule.is_active(arrive - edge_ms):
            reasons.append(VisitDoubt.ARRIVAL_NOT_OBSERVED.value)
        if not schedule.is_active(leave + edge_ms):
            reasons.append(VisitDoubt.DEPARTURE_NOT_OBSERVED.value)
        return reasons

    def _reset(self, st: DwellState) -> None:
        """Forget the stay (the gap timer survives); the frame is rebuilt by the next fix."""
        st.n = 0
        st.sw = st.sx = st.sy = st.sq = 0.0
        if st.head:
            st.head = []
        if st.pending:
            st.pending = []
        st.dwell_id = None
        st.version = 0
