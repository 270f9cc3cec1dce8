"""Geofences: enter/exit events with hysteresis, forbidden-zone and left-post alerts.

Every cleaned point (smoothed position, raw accuracy) is looked up in the fence index of the
device's org. A device switches side of a fence only after `confirm_fixes` consecutive fixes
that are decisively on the new side: at least the hysteresis margin past the border. The
event's time and position are those of the FIRST fix of that run on the new side of the
border (not of the confirming fix), so the timing error stays within one sample while GPS noise
along a border produces no flapping. A fix on the old side of the border restarts the run.

Fixes that cannot be evidence of where the rep is do not drive transitions (a manager acts on
fence events; one derived from a position the anti-cheat rules call fake is wrong):
- mock fixes (`TrackFlag.MOCK`: the phone itself says the position is fake) are skipped;
- a run whose fixes all repeat its first fix's raw position to the last digit is "frozen" and
  does not confirm until a fresh fix differs (a parked spoofer's static fake position; real
  GNSS fixes never repeat exactly - the spoof detector's static rule, which needs 5-15 min to
  alert, rests on the same fact);
- a run that began with a leap no vehicle makes (see `jump_*`) is held for `jump_hold_s`:
  a teleport to a far customer and back produces no event.
On the tuning seeds these removed every fence FP of the "spoofers" scenario (before: 82 FP
with confirm_fixes 2; frozen runs 8 of them, jumps 12, mock fixes nearly all the rest) and cost
no true event anywhere.

Parameters (`FenceParams`, config section `[fences]`):

- `margin_m` = 15.0: the smallest hysteresis margin in metres.
- `accuracy_factor` = 1.5: the margin grows with the fix's reported accuracy:
  margin = max(margin_m, accuracy_factor * accuracy_m), at most `max_margin_m`, so a fix
  whose accuracy circle straddles the border never counts as decisive. With 1.0 the "border
  loiterer" scenario (10-30 m GPS, working 8-20 m inside an office edge) flapped 4 times on
  the tuning seeds; with 1.5 none (margin_m 10-20 made no difference).
- `max_margin_m` = 150.0: upper clamp of the margin.
- `max_accuracy_m` = 100.0: fixes less accurate than this neither advance nor reset a
  transition (they still move the left-post clock).
- `depth_fraction` = 0.5: to count as decisively inside, a fix must be min(margin, this
  fraction of the fence's inner depth) inside, the inner depth being the radius of the largest
  circle that fits in the fence; a small office stays enterable with a large margin.
- `confirm_fixes` = 4: consecutive decisive fixes on the new side needed to switch. Urban
  multipath displaces 1-3 consecutive fixes by 100-500 m while the phone reports ~10 m
  accuracy, and the smoother does not catch every burst (notably at 15-60 s sampling). On the
  tuning seeds (all scenarios, replayed through this processor) 2 gave 42 FP / 21 flaps,
  3 gave 12 FP / 5 flaps, 4 gave 1 FP / 0 flaps (F1 0.999), 5 lost a true event. Latency is
  `confirm_fixes` - 1 sampling intervals (15 s at 5 s sampling); the event time is not delayed.
- `jump_speed_mps` = 100.0, `jump_min_m` = 2000.0: a run starts with a jump when its first fix
  is more than `jump_min_m` from the previous fix and (distance - both accuracies) / dt exceeds
  `jump_speed_mps` (the spoof detector's teleport thresholds: 360 km/h; 100-500 m multipath
  jumps do not count).
- `jump_hold_s` = 1800.0: how long such a run must persist before it may confirm (a real
  relocation is still recorded, with its true time; a fake excursion returns before this). The
  simulator's teleports last 6-12 min; 0 disables the rule (tuning seeds: +12 FP, 6 flaps).
- `left_post_after_s` = 600.0: a device that leaves a fence that is its post (an office or
  workshop fence whose `assigned` devices include it or "*") during its work hours and stays
  out longer than this gets one "left_post" alert (warning) for that absence.
- `silent_grace_s` = 120.0: `tick` (processing time) raises the left-post alert for a device
  that went silent after leaving only once the limit is exceeded by this much more, so pings
  still in flight (uploads come in batches) can show it came back.
- `post_kinds` = "office,workshop": fence kinds that can be a post (comma list).
- `max_tracked` = 32: bound on fences tracked per device (inside + pending + absences).

Behaviour worth knowing:

- Events are emitted for every fence kind; a confirmed entry into a "forbidden" fence also
  raises a critical "forbidden_zone" alert, one per entry.
- Fence schedules: outside its schedule a fence does not exist for the tracker. No events are
  emitted then; a device inside when the schedule ends is dropped from it silently (no exit),
  and a device inside when the schedule starts gets an "enter" at its first fix in the active
  fence (after confirmation), so a forbidden zone that activates around a device alerts.
- Left post: the absence starts at the confirmed exit (its first fix outside) and only if that
  exit lies within the device's work schedule (`ctx.schedule`; none = always) and the fence is
  active. It is dropped without an alert when the work schedule or the fence's schedule is no
  longer active at the deadline (exit + limit), e.g. someone leaving just before the end of
  the shift; it ends when the device is confirmed back inside. A device that starts its day
  outside its post has not left it: no alert. While a return is being confirmed (first fix
  back inside before the deadline) the alert is held.
- Start of duty: the first fixes of a work shift (or of a device, or after a restart of
  state) inside a fence produce an "enter" at the first of them: that is how "at the office
  at 08:02" is recorded. Memberships are reset when a new shift of the device's work schedule
  (`ctx.schedule`) begins, i.e. when the previous fix lies before the start of the shift of
  the current one (checked only after a gap of a minute or more: with privacy on, off-duty
  fixes never arrive, so a shift boundary always shows as a gap). The end of a shift emits no
  exit. A recording gap inside a shift (phone off, GPS off) keeps the state: if the rep
  crossed meanwhile, the exit/enter comes at the first fix after the gap. The simulator's
  truth (`pipeline/sim/fleet.py`, `fence_crossing` with `initial`) follows this definition.
- Ids: events `make_id(org, device, "fence", fence_id, transition, ts_ms)`, alerts
  `make_id(org, device, "forbidden_zone" | "left_post", fence_id, enter or exit ts_ms)`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.events import (
    Alert,
    AlertType,
    FenceEvent,
    Severity,
    TrackFlag,
    TrackPoint,
    evidence,
    make_id,
)
from pipeline.geo import M_PER_DEG_LAT
from pipeline.processors.base import Ctx, Result, SerialisableState
from pipeline.reference.models import Fence, Schedule, schedule_active

_INF = float("inf")
_MOCK = int(TrackFlag.MOCK)
_SHIFT_GAP_MS = 60_000  # a shift boundary shows as a gap (privacy drops off-duty fixes)
_DAY_MS = 86_400_000


def _new_shift(schedule: Schedule, last_ts: int, ts: int) -> bool:
    """Did the work shift that `ts` belongs to start after `last_ts`?"""
    if ts - last_ts >= _DAY_MS:
        return True
    if not schedule.is_active(ts):
        return False  # off duty (privacy disabled): no shift to start
    local = dt.datetime.fromtimestamp(ts / 1000.0, ZoneInfo(schedule.tz))
    start = local.replace(
        hour=schedule.start_min // 60, minute=schedule.start_min % 60, second=0, microsecond=0
    )
    if start > local:  # the part after midnight of an overnight shift
        start -= dt.timedelta(days=1)
    return start.timestamp() * 1000.0 > last_ts


@dataclass(slots=True)
class FenceParams:
    margin_m: float = 15.0
    accuracy_factor: float = 1.5
    max_margin_m: float = 150.0
    max_accuracy_m: float = 100.0
    depth_fraction: float = 0.5
    confirm_fixes: int = 4
    jump_speed_mps: float = 100.0
    jump_min_m: float = 2000.0
    jump_hold_s: float = 1800.0
    left_post_after_s: float = 600.0
    silent_grace_s: float = 120.0
    post_kinds: str = "office,workshop"
    max_tracked: int = 32


# Indexes into the small lists kept in FenceState (lists, as they survive a JSON round-trip).
# pending: first fix of the run (smoothed position, accuracy, raw position), decisive count,
# 1 while every fix of the run repeats the first's raw position, 1 if it began with a jump.
_P_TS, _P_COUNT, _P_LAT, _P_LON, _P_ACC, _P_RAW_LAT, _P_RAW_LON, _P_FROZEN, _P_JUMPED = range(9)
_L_TS, _L_LAT, _L_LON, _L_RAW_LAT, _L_RAW_LON, _L_ACC = range(6)  # last fix
_A_EXIT, _A_ALERTED = range(2)  # away: exit time, 1 once the left-post alert fired


@dataclass(slots=True)
class FenceState(SerialisableState):
    # Fence id -> time the device entered it (confirmed inside).
    inside: dict[str, int] = field(default_factory=dict)
    # Fence id -> [first_ts, decisive_count, lat, lon, accuracy_m, raw_lat, raw_lon, frozen,
    # jumped] of a switch in progress (exit if the fence is in `inside`, else enter).
    pending: dict[str, list[Any]] = field(default_factory=dict)
    # Post fence id -> [exit_ts, alerted] while the device is away from its post.
    away: dict[str, list[int]] = field(default_factory=dict)
    # [ts_ms, lat, lon, raw_lat, raw_lon, accuracy_m] of the last (non-mock) fix: the anchor
    # of the jump test and the evidence of an alert raised by `tick`.
    last: list[Any] | None = None


class FenceTracker:
    def __init__(self, params: FenceParams | None = None) -> None:
        self.params = p = params or FenceParams()
        self._post_kinds = frozenset(k.strip() for k in p.post_kinds.split(",") if k.strip())
        self._left_post_ms = int(p.left_post_after_s * 1000)
        self._grace_ms = int(p.silent_grace_s * 1000)
        self._confirm = max(1, p.confirm_fixes)
        self._jump_hold_ms = int(p.jump_hold_s * 1000)

    def initial_state(self) -> FenceState:
        return FenceState()

    def margin_for(self, accuracy_m: float) -> float:
        p = self.params
        return min(p.max_margin_m, max(p.margin_m, p.accuracy_factor * accuracy_m))

    def process(self, state: FenceState, points: list[TrackPoint], ctx: Ctx, out: Result) -> None:
        if not points:
            return
        margins = [self.margin_for(pt.accuracy_m) for pt in points]
        nears = ctx.ref.fences.near_many(
            [pt.lat for pt in points], [pt.lon for pt in points], margins, org_id=ctx.org_id
        )
        last_ts = state.last[0] if state.last is not None else None
        for pt, margin, near in zip(points, margins, nears, strict=True):
            if (
                last_ts is not None
                and pt.ts_ms - last_ts >= _SHIFT_GAP_MS
                and ctx.schedule is not None
                and (state.inside or state.pending)
                and _new_shift(ctx.schedule, last_ts, pt.ts_ms)
            ):
                state.inside.clear()  # a new shift: its first fixes inside give the enters
                state.pending.clear()
            last_ts = pt.ts_ms
            if pt.flags & _MOCK:
                continue  # the phone says the position is fake: no fence event from it
            if near or state.inside or state.pending:
                self._step(state, pt, margin, near, ctx, out)
            if state.away:
                self._check_away(state, pt.ts_ms, pt.lat, pt.lon, False, ctx, out)
            last = state.last
            if last is None or len(last) <= _L_ACC:
                state.last = [pt.ts_ms, pt.lat, pt.lon, pt.raw_lat, pt.raw_lon, pt.accuracy_m]
            else:
                last[_L_TS], last[_L_LAT], last[_L_LON] = pt.ts_ms, pt.lat, pt.lon
                last[_L_RAW_LAT], last[_L_RAW_LON], last[_L_ACC] = (
                    pt.raw_lat,
                    pt.raw_lon,
                    pt.accuracy_m,
                )

    def tick(self, state: FenceState, ctx: Ctx, out: Result) -> None:
        """Processing time passed: raise left-post for a device silent since it left."""
        if state.away and state.last is not None:
            self._check_away(state, ctx.now_ms, state.last[1], state.last[2], True, ctx, out)

    # --- transitions -------------------------------------------------------------------------

    def _step(
        self,
        state: FenceState,
        pt: TrackPoint,
        margin: float,
        near: list[tuple[Fence, float]],
        ctx: Ctx,
        out: Result,
    ) -> None:
        ts = pt.ts_ms
        usable = pt.accuracy_m <= self.params.max_accuracy_m
        seen: set[str] = set()
        for fence, distance in near:
            if fence.org_id != ctx.org_id:
                continue
            if fence.schedule is not None and not fence.schedule.is_active(ts):
                self._forget(state, fence.fence_id)  # an inactive fence does not exist
                continue
            seen.add(fence.fence_id)
            if usable:
                self._observe(state, fence, distance, margin, pt, ctx, out)
        # Tracked fences the index did not return: the fix is beyond the margin outside them.
        for fence_id in [f for f in state.inside if f not in seen]:
            fence = ctx.ref.fences.get(fence_id, ctx.org_id)
            if fence is None or not schedule_active(fence.schedule, ts):
                self._forget(state, fence_id)  # removed from reference data or inactive
            elif usable:
                self._observe(state, fence, _INF, margin, pt, ctx, out)
        if usable and state.pending:
            for fence_id in [f for f in state.pending if f not in seen and f not in state.inside]:
                del state.pending[fence_id]

    def _observe(
        self,
        state: FenceState,
        fence: Fence,
        distance: float,
        margin: float,
        pt: TrackPoint,
        ctx: Ctx,
        out: Result,
    ) -> None:
        fence_id = fence.fence_id
        inside = fence_id in state.inside
        if inside:
            if distance <= 0.0:
                state.pending.pop(fence_id, None)
                return
            decisive = distance >= margin
        else:
            if distance >= 0.0:
                state.pending.pop(fence_id, None)
                return
            decisive = -distance >= margin or -distance >= (
                self.params.depth_fraction * ctx.ref.fences.inner_depth_m(fence)
            )
        pending = state.pending.get(fence_id)
        if pending is None:
            if len(state.inside) + len(state.pending) >= self.params.max_tracked:
                return
            pending = [pt.ts_ms, 0, pt.lat, pt.lon, pt.accuracy_m, pt.raw_lat, pt.raw_lon, 1,
                       int(self._jumped(state.last, pt))]  # fmt: skip
            state.pending[fence_id] = pending
        if decisive:
            pending[_P_COUNT] += 1
            if pending[_P_FROZEN] and (
                pt.raw_lat != pending[_P_RAW_LAT] or pt.raw_lon != pending[_P_RAW_LON]
            ):
                pending[_P_FROZEN] = 0
        else:
            pending[_P_COUNT] = 0
        if (
            pending[_P_COUNT] < self._confirm
            or pending[_P_FROZEN]  # one position repeated to the last digit: not a fresh fix
            or (pending[_P_JUMPED] and pt.ts_ms - pending[_P_TS] < self._jump_hold_ms)
        ):
            return
        del state.pending[fence_id]
        if inside:
            self._exit(state, fence, pending, ctx, out)
        else:
            self._enter(state, fence, pending, ctx, out)

    def _jumped(self, last: list[Any] | None, pt: TrackPoint) -> bool:
        """Did the fix arrive by a leap no vehicle makes (granting both accuracies)?"""
        if last is None or len(last) <= _L_ACC:
            return False
        p = self.params
        dy = (pt.raw_lat - last[_L_RAW_LAT]) * M_PER_DEG_LAT
        dx = (pt.raw_lon - last[_L_RAW_LON]) * M_PER_DEG_LAT * math.cos(math.radians(pt.raw_lat))
        dist = math.hypot(dx, dy)
        if dist <= p.jump_min_m:
            return False
        dt_s = max(pt.ts_ms - last[_L_TS], 1) / 1000.0
        return (dist - last[_L_ACC] - pt.accuracy_m) / dt_s > p.jump_speed_mps

    def _enter(
        self, state: FenceState, fence: Fence, first: list[Any], ctx: Ctx, out: Result
    ) -> None:
        ts = int(first[_P_TS])
        state.inside[fence.fence_id] = ts
        state.away.pop(fence.fence_id, None)  # back at the post: the absence is over
        out.fence_events.append(self._event(fence, "enter", first, ctx))
        if fence.kind == "forbidden":
            out.alerts.append(
                Alert(
                    id=make_id(ctx.org_id, ctx.device_id, "forbidden_zone", fence.fence_id, ts),
                    org_id=ctx.org_id,
                    device_id=ctx.device_id,
                    ts_ms=ts,
                    type=AlertType.FORBIDDEN_ZONE.value,
                    severity=Severity.CRITICAL.value,
                    message=f"{ctx.device_id} entered forbidden zone {fence.name}",
                    evidence=evidence(
                        fence_id=fence.fence_id,
                        fence_name=fence.name,
                        enter_ms=ts,
                        lat=float(first[_P_LAT]),
                        lon=float(first[_P_LON]),
                        accuracy_m=float(first[_P_ACC]),
                    ),
                )
            )

    def _exit(
        self, state: FenceState, fence: Fence, first: list[Any], ctx: Ctx, out: Result
    ) -> None:
        ts = int(first[_P_TS])
        del state.inside[fence.fence_id]
        out.fence_events.append(self._event(fence, "exit", first, ctx))
        if (
            fence.kind in self._post_kinds
            and schedule_active(ctx.schedule, ts)
            and ctx.ref.fences.is_post_of(fence, ctx.device_id)
        ):
            if len(state.away) >= self.params.max_tracked:
                oldest = min(state.away, key=lambda f: state.away[f][_A_EXIT])
                del state.away[oldest]
            state.away[fence.fence_id] = [ts, 0]

    def _event(self, fence: Fence, transition: str, first: list[Any], ctx: Ctx) -> FenceEvent:
        ts = int(first[_P_TS])
        return FenceEvent(
            id=make_id(ctx.org_id, ctx.device_id, "fence", fence.fence_id, transition, ts),
            org_id=ctx.org_id,
            device_id=ctx.device_id,
            fence_id=fence.fence_id,
            fence_kind=fence.kind,
            transition=transition,
            ts_ms=ts,
            lat=float(first[_P_LAT]),
            lon=float(first[_P_LON]),
            accuracy_m=float(first[_P_ACC]),
        )

    @staticmethod
    def _forget(state: FenceState, fence_id: str) -> None:
        state.inside.pop(fence_id, None)
        state.pending.pop(fence_id, None)

    # --- left post ---------------------------------------------------------------------------

    def _check_away(
        self,
        state: FenceState,
        now: int,
        lat: float,
        lon: float,
        from_tick: bool,
        ctx: Ctx,
        out: Result,
    ) -> None:
        limit = self._left_post_ms + (self._grace_ms if from_tick else 0)
        for fence_id, away in list(state.away.items()):
            exit_ts = away[_A_EXIT]
            if away[_A_ALERTED] or now - exit_ts <= limit:
                continue
            deadline = exit_ts + self._left_post_ms
            returning = state.pending.get(fence_id)
            if returning is not None and returning[_P_TS] <= deadline:
                continue  # back before the deadline, being confirmed
            fence = ctx.ref.fences.get(fence_id, ctx.org_id)
            if (
                fence is None
                or not schedule_active(ctx.schedule, deadline)
                or not schedule_active(fence.schedule, deadline)
            ):
                del state.away[fence_id]  # the shift (or the post) ended first
                continue
            away[_A_ALERTED] = 1
            minutes = (now - exit_ts) / 60000.0
            out.alerts.append(
                Alert(
                    id=make_id(ctx.org_id, ctx.device_id, "left_post", fence_id, exit_ts),
                    org_id=ctx.org_id,
                    device_id=ctx.device_id,
                    ts_ms=now,
                    type=AlertType.LEFT_POST.value,
                    severity=Severity.WARNING.value,
                    message=(
                        f"{ctx.device_id} away from post {fence.name} for {minutes:.0f} min "
                        f"during work hours"
                    ),
                    evidence=evidence(
                        fence_id=fence_id,
                        fence_name=fence.name,
                        exit_ms=exit_ts,
                        minutes_away=round(minutes, 1),
                        limit_min=round(self._left_post_ms / 60000.0, 1),
                        lat=float(lat),
                        lon=float(lon),
                        detected_by="tick" if from_tick else "fix",
                    ),
                )
            )
