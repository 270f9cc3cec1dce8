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
- Speed (no effect on any output): a device's fixes are not each looked up in the fence
  index. The fences within 400 m of an anchor fix are kept in a memo (`FenceState.near_memo`,
  in memory only, never serialised) and decide the next fixes while provably none of them is
  near a border (`FenceTracker._near`); a batch needs at most one index lookup, and a batch in
  which nothing can change costs a bounding-box check. `tests/test_fences.py` compares it
  with looking every fix up.
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
from pipeline.processors.base import NO_TIMER, Ctx, Result, SerialisableState
from pipeline.reference.fences import REUSE_MARGIN_FACTOR, REUSE_MAX_ABS_LAT, FenceIndex
from pipeline.reference.models import Fence, Schedule, schedule_active

_INF = float("inf")
_MOCK = int(TrackFlag.MOCK)
_SHIFT_GAP_MS = 60_000  # a shift boundary shows as a gap (privacy drops off-duty fixes)
_DAY_MS = 86_400_000
# Fence lookups: the fences within this distance of a fix (and their signed distances) are
# reused for the device's next fixes while it stays well inside that distance (see `_near`).
# Not a detection parameter: outputs are the same for any value; 400 m was fastest in the
# processor-core benchmark (fewer re-queries while driving vs. more fences to check per fix).
_REUSE_RADIUS_M = 400.0
# A fix too close to a border to decide from an anchor farther than this is looked up in the
# index (and the batch re-anchored at its last fix); nearer ones have the anchor's fences
# measured. 50 m made the fewest lookups on the benchmark (0 and 100 more, by 5-10 %).
_REANCHOR_M = 50.0
Near = list[tuple[Fence, float]]
Cands = list[tuple[Fence, float, int]]  # (fence, signed distance, position in the index)


class _Deep(list[tuple[Fence, float]]):
    """The answer shared by the fixes decided from one neighbourhood: its fences that contain
    the anchor, with their distance there. `ids` are their ids, `schedules` their distinct
    schedules, `foreign` whether one belongs to another org (never, from an org's lookup):
    with them, "inside exactly these fences, all active" is one check for every fix."""

    ids: frozenset[str]
    schedules: tuple[Schedule, ...]
    foreign: bool


_NO_FENCES = _Deep()  # the answer for a fix near no fence (shared: never mutated)
_NO_FENCES.ids = frozenset()
_NO_FENCES.schedules = ()
_NO_FENCES.foreign = False


def _memo(
    index: FenceIndex, org_id: str, anchor: TrackPoint, kx: float, cands: Cands
) -> tuple[Any, ...]:
    """FenceState.near_memo: (index, org, anchor lat, lon, kx, fences within the reuse radius,
    smallest |signed distance| of them, the answer shared by the fixes they decide)."""
    return (index, org_id, anchor.lat, anchor.lon, kx, cands, *_hood(cands, org_id))


def _hood(cands: Cands, org_id: str) -> tuple[float, _Deep]:
    """(smallest |signed distance| of the fences, the shared answer) of a neighbourhood."""
    if not cands:
        return _INF, _NO_FENCES
    deep = _Deep((f, d) for f, d, _ in cands if d < 0.0)
    deep.ids = frozenset(f.fence_id for f, _ in deep)
    deep.schedules = tuple({f.schedule: None for f, _ in deep if f.schedule is not None})
    deep.foreign = any(f.org_id != org_id for f, _ in deep)
    return min(abs(d) for _, d, _ in cands), deep


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
    # Not state but a memo of the last fence lookup (index, org, lat, lon, kx, fences near):
    # never serialised, and no output depends on whether it is there.
    near_memo: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        memo = self.near_memo
        if memo is None:
            return SerialisableState.to_dict(self)
        self.near_memo = None  # at its default, the memo is left out of the dict
        try:
            return SerialisableState.to_dict(self)
        finally:
            self.near_memo = memo


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
        index = ctx.ref.fences
        org_id = ctx.org_id
        inside = state.inside  # cleared and updated in place, never replaced
        pending = state.pending
        last_ts = state.last[0] if state.last is not None else None
        memo = state.near_memo
        if (
            memo is not None
            and memo[0] is index
            and memo[1] == org_id
            and not pending
            and not state.away
            and not memo[7].foreign
            and inside.keys() == memo[7].ids
            and self._settled(memo, points)
        ):
            # The usual batch: every fix is decided alike from the memo, and the device is
            # already inside exactly those fences (or none): unless a fix is mock, follows a
            # gap (a new shift may begin) or finds a fence inactive, nothing below would
            # change but the last fix.
            previous = last_ts
            schedules = memo[7].schedules
            for pt in points:
                ts = pt.ts_ms
                if (
                    pt.flags & _MOCK
                    or (previous is not None and ts - previous >= _SHIFT_GAP_MS)
                    or (schedules and not all([sch.is_active(ts) for sch in schedules]))
                ):
                    break
                previous = ts
            else:
                self._remember(state, points[-1])
                return
        p = self.params
        lo, factor, hi = p.margin_m, p.accuracy_factor, p.max_margin_m
        margins = []  # `margin_for` of each fix, inlined
        for pt in points:
            margin = factor * pt.accuracy_m
            if not margin > lo:
                margin = lo
            if not margin < hi:
                margin = hi
            margins.append(margin)
        nears = self._near(state, index, points, margins, org_id)
        unwritten: TrackPoint | None = None  # the last fix, until state.last is needed
        for pt, margin, near in zip(points, margins, nears, strict=True):
            ts = pt.ts_ms
            if (
                last_ts is not None
                and ts - last_ts >= _SHIFT_GAP_MS
                and ctx.schedule is not None
                and (inside or pending)
                and _new_shift(ctx.schedule, last_ts, ts)
            ):
                inside.clear()  # a new shift: its first fixes inside give the enters
                pending.clear()
            last_ts = ts
            if pt.flags & _MOCK:
                continue  # the phone says the position is fake: no fence event from it
            if near or inside or pending:
                # Steady: inside every fence near, nothing pending, nothing tracked elsewhere,
                # every fence active: `_step` would change nothing.
                if pending:
                    steady = False
                elif type(near) is _Deep and not near.foreign:
                    steady = inside.keys() == near.ids and (
                        not near.schedules or all([sch.is_active(ts) for sch in near.schedules])
                    )
                else:
                    steady = len(near) == len(inside)
                    if steady:
                        for fence, distance in near:
                            schedule = fence.schedule
                            if (
                                distance > 0.0
                                or fence.fence_id not in inside
                                or fence.org_id != org_id
                                or (schedule is not None and not schedule.is_active(ts))
                            ):
                                steady = False
                                break
                if not steady:
                    if unwritten is not None:
                        self._remember(state, unwritten)  # the jump test reads the last fix
                        unwritten = None
                    self._step(state, pt, margin, near, ctx, out)
            if state.away:
                self._check_away(state, ts, pt.lat, pt.lon, False, ctx, out)
            unwritten = pt
        if unwritten is not None:
            self._remember(state, unwritten)

    def _settled(self, memo: tuple[Any, ...], points: list[TrackPoint]) -> bool:
        """Does the memo decide every fix of the batch without measuring (see `_near`)? The
        farthest corner of the fixes' bounding box moves at least as far as any fix (rounding
        is monotonic), and the least accurate fix has the widest margin."""
        min_abs = memo[6]
        if not min_abs > 0.0:
            return False
        accuracy = max([pt.accuracy_m for pt in points])
        if accuracy != accuracy:  # NaN first: max() saw no other value
            return False
        p = self.params
        margin = min(p.max_margin_m, max(p.margin_m, p.accuracy_factor * accuracy))
        lats = [pt.lat for pt in points]
        lons = [pt.lon for pt in points]
        a_lat, a_lon = memo[2], memo[3]
        dx = max(abs(max(lons) - a_lon), abs(min(lons) - a_lon)) * memo[4]
        dy = max(abs(max(lats) - a_lat), abs(min(lats) - a_lat)) * M_PER_DEG_LAT
        move = math.sqrt(dx * dx + dy * dy) * (1.0 + 1e-9) + 1e-6
        return move <= _REUSE_RADIUS_M - REUSE_MARGIN_FACTOR * margin and min_abs - move > margin

    @staticmethod
    def _remember(state: FenceState, pt: TrackPoint) -> None:
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

    def _near(
        self,
        state: FenceState,
        index: FenceIndex,
        points: list[TrackPoint],
        margins: list[float],
        org_id: str,
    ) -> list[Near]:
        """`index.near_many` of the fixes, mostly without asking the index.

        Fixes come close together, and most are far from every fence border. So the index is
        asked for the fences within R = `_REUSE_RADIUS_M` of a fix (the anchor; the memo), and
        that answer serves the device's following fixes while they stay within
        R - 1.05 * margin of it (`move` below; `FenceIndex.lookup` says why): a fence not in
        it is then beyond the margin, and when every fence in it has |signed distance| >
        margin + move, each is decided without measuring: beyond the margin outside, or
        deeper inside than the margin. Those inside are reported with their distance at the
        anchor: like the true distance it is below -margin, so it compares with 0 and the
        margin exactly as the true one does (all the tracker uses). A fix nearer a border has
        the anchor's fences whose border may be within its margin measured (the others are
        decided alike, fence by fence); a fix out of reach (or near a border and more than
        `_REANCHOR_M` from the anchor) is looked up like `near_many` does; either way its
        answer is `near_many`'s, up to the reported distance of fences it is deep inside.
        All of a batch's measuring is one `lookup`, which also re-anchors at the batch's last
        fix.
        """
        n = len(points)
        m_lat = M_PER_DEG_LAT
        radius = _REUSE_RADIUS_M
        factor = REUSE_MARGIN_FACTOR
        sqrt = math.sqrt
        nears: list[Near] = [_NO_FENCES] * n
        undecided: list[int] = []  # fixes whose anchor fences near a border are measured
        moves: dict[int, float] = {}  # of each undecided fix: how far it is from the anchor
        queried: list[int] = []  # fixes looked up in the index
        memo = state.near_memo
        last_move = _INF
        valid = memo is not None and memo[0] is index and memo[1] == org_id
        if valid:
            _, _, a_lat, a_lon, kx, cands, min_abs, deep = memo  # type: ignore[misc]
            for i in range(n):
                pt = points[i]
                margin = margins[i]
                dx = (pt.lon - a_lon) * kx
                dy = (pt.lat - a_lat) * m_lat
                move = sqrt(dx * dx + dy * dy) * (1.0 + 1e-9) + 1e-6
                if move <= radius - factor * margin:
                    if min_abs - move > margin:
                        nears[i] = deep
                        continue
                    if move <= _REANCHOR_M:
                        undecided.append(i)
                        moves[i] = move
                        continue
                queried.append(i)
            last_move = move
        elif -REUSE_MAX_ABS_LAT <= points[-1].lat <= REUSE_MAX_ABS_LAT:
            # No memo (a restored state, new reference data): anchor at the last fix first.
            # Usually the other fixes are then decided from it, with one small lookup.
            pt = points[-1]
            hoods, kx, _ = index.lookup([pt.lat], [pt.lon], [radius], org_id)
            state.near_memo = _memo(index, org_id, pt, kx, hoods[0])
            return self._near(state, index, points, margins, org_id)
        else:
            cands = []
            queried = list(range(n))
        if not queried and not undecided:
            return nears
        # One lookup: the queried fixes at their margins, the last fix (the new anchor) at R,
        # and the pairs (fix, anchor fence) of the undecided fixes.
        last = n - 1
        anchored = (queried or last_move > _REANCHOR_M) and (
            -REUSE_MAX_ABS_LAT <= points[last].lat <= REUSE_MAX_ABS_LAT
        )
        if anchored:
            if queried and queried[-1] == last:
                queried.pop()
            elif undecided and undecided[-1] == last:
                undecided.pop()
        looked = [*queried, last] if anchored else queried
        lats = [points[i].lat for i in looked]
        lons = [points[i].lon for i in looked]
        radii = [margins[i] for i in queried]
        if anchored:
            radii.append(radius)
        pair_positions: list[int] = []
        pair_lats: list[float] = []
        pair_lons: list[float] = []
        for i in undecided:
            pt = points[i]
            reach = moves[i] + margins[i]
            for fd in cands:
                # Only fences whose border may be within the margin: the others are decided
                # from the anchor like a deep fix's (below).
                if -reach <= fd[1] <= reach:
                    pair_positions.append(fd[2])
                    pair_lats.append(pt.lat)
                    pair_lons.append(pt.lon)
        hoods, kx, pair_signed = index.lookup(
            lats, lons, radii, org_id, pair_positions, pair_lats, pair_lons
        )
        for j, i in enumerate(queried):
            hood = hoods[j]
            if hood:
                nears[i] = [(f, d) for f, d, _ in hood]
        if anchored:
            hood = hoods[-1]
            margin = margins[last]
            nears[last] = [(f, d) for f, d, _ in hood if d <= margin]
            pt = points[last]
            state.near_memo = _memo(index, org_id, pt, kx, hood)
        elif not valid:
            state.near_memo = None
        if undecided:
            signed = iter(pair_signed)
            for i in undecided:
                margin = margins[i]
                reach = moves[i] + margin
                near = []
                for fd in cands:
                    distance = fd[1]
                    if distance > reach:
                        continue  # outside, beyond the margin
                    if distance >= -reach:
                        distance = next(signed)
                        if distance > margin:
                            continue
                    # else deeper inside than the margin: the anchor's distance serves
                    near.append((fd[0], distance))
                nears[i] = near
        return nears

    def next_tick_ms(self, state: FenceState) -> int:
        """`tick` acts only for a device that left a post: every tick then."""
        return 0 if state.away and state.last is not None else NO_TIMER

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
