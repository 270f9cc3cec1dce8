"""Spoof (anti-cheat) detection: per-device rules over raw, validated, event-ordered fixes.

Managers discipline reps on these alerts, so every rule is tuned for precision first: each one
fires on evidence that real phones do not produce (checked against the real tracks under
shared/data/real-tracks, which mix GPS, cached and cell fixes and raise nothing), and every
alert carries the points, the rule and the thresholds a rep could be shown.

One alert per episode: a rule that keeps firing extends its open episode; a new alert (and a
new id, `make_id(org, device, type, episode start ms)`) comes only after the condition has
been absent for `episode_gap_s` (`integrity_episode_gap_s` for device-integrity reports).

Rules and their parameters (`SpoofParams`, defaults in brackets):

1. Mock flag -> SPOOF_MOCK_FLAG (critical): a ping with `is_mock=True`. Evidence: the first
   mock fix of the episode (time, position) and how many mock fixes the batch held.
   Mock fixes are skipped by the geometric rules below (the phone already confessed).
   - `mock_clear_s` [300 s]: real (non-mock) fixes spanning this long after the last mock fix
     end the episode, so the next mock fix opens a new one. A parked spoofer who fakes each
     visit separately gets one alert per fake visit (a manager judges visits, not days):
     with only `episode_gap_s` the tuning seeds' mock spoofer was one alert per day and 6 of
     27 fake-visit episodes were reported; the sim's fake visits are 10+ min apart, and a mock
     app that pauses for under 5 min stays one episode.
2. Device integrity -> SPOOF_DEVICE_INTEGRITY: DeviceState kinds mock_app_detected and
   emulator (critical), rooted and developer_mode_on (warning); one alert per kind per episode.
   - `integrity_episode_gap_s` [43200 = 12 h]: a repeated report of the same kind within this
     time of the previous one belongs to the same episode (apps re-report on every start).
3. Teleport -> SPOOF_TELEPORT (critical): an implied speed between the last on-track fix and
   a new fix that no vehicle reaches, even granting both accuracies:
   (distance - acc1 - acc2) / dt > `teleport_speed_mps` [100 m/s = 360 km/h] and the
   distance > `teleport_min_m` [2000 m] (urban-canyon multipath jumps of 100-500 m with a lying
   10 m accuracy must not count). The decision waits until the jump resolves (the track came
   back, stayed away for `jump_back_max_s`, or moved on), so one episode gives one alert.
   Real-phone artefacts that are excluded on purpose:
   - fixes with accuracy <= `unknown_accuracy_m` [0.0] carry no usable accuracy (Android
     reports 0 when it has none; cell and cached fixes do this) and are ignored by rules 3-4;
   - a position repeated (within `stale_eps_m` [1.0 m]) is a stale/cached fix, not a fresh
     one: dt is measured from the first fix of that stale run, so a phone whose position
     froze while it travelled does not "teleport" when a fresh fix arrives.
4. Jump to a customer and back -> SPOOF_JUMP_BACK (critical): a fix or a run of fixes lasting
   at most `jump_back_max_s` [180 s], reached by an impossible leg (speed rule above, distance
   > `jump_back_min_m` [1000 m]) and left by an impossible leg that lands within
   `jump_back_return_frac` [0.25] x the jump distance of where the track left, with a jumped fix
   within a customer's radius (+ `jump_back_customer_extra_m` [25 m]). A jump at least
   `teleport_min_m` long that is not at a customer is reported as a teleport instead; shorter
   out-and-back spikes that are not at a customer are treated as glitches.
5. Zero-jitter static position -> SPOOF_STATIC (critical): consecutive fixes with EXACTLY
   identical lat/lon, at least `static_min_fixes` [20] of them, each within `static_max_gap_s`
   [30 s] of the previous, accuracy at most `static_max_accuracy_m` [100 m]. From a provider
   in `static_providers` ["gps"] the run must span >= `static_min_s` [300 s] when the accuracy
   is identical too, or >= `static_min_s_any_accuracy` [1800 s] when it varies (0 disables).
   From any other provider (fused, network) it must span >= `static_min_s_other_providers`
   [900 s] with identical accuracy too (0 disables): those providers legitimately resend a
   cached fix for a while, but not a quarter of an hour of fixes with fresh times at a 30 s
   cadence. On the tuning seeds a hidden-flag spoofer whose phone reports "fused" went
   undetected on 7 of 9 fake visits with GPS-only; its shortest fake visit is 21 min.
   A fresh GNSS fix never repeats to the last digit for minutes; sparse samplers (a fix a
   minute or rarer) may resend the last fix, hence the gap limit. Each frozen spot is its own
   episode (a spoofer parks the fake position at one customer after another: each fake visit
   is reported). The hidden-flag parked spoofer (static fake position at a customer) is the
   main case; a teleport into such a spot is reported inside the static alert (evidence
   `arrived_by_jump_m`) rather than as a second alert.
6. Constant accuracy on a too-perfect route -> SPOOF_CONSTANT_ACCURACY (warning): at least
   `constant_accuracy_min_fixes` [60] consecutive fixes with the exact same accuracy_m while
   moving, where at least `constant_accuracy_min_moving` [20] moving triples were seen and a
   fraction >= `constant_accuracy_perfect_frac` [0.6] of them are geometrically perfect:
   the middle fix within `perfect_line_m` [0.5 m] of the straight line between its neighbours
   AND the two step speeds within `perfect_speed_rel` [0.02] of each other (route-replay apps
   interpolate at constant speed). Constant accuracy alone is not enough: loggers without an
   accuracy (GeoLife, gpsies) report a constant placeholder.
7. Clock skew -> SPOOF_CLOCK_SKEW (warning): with the gateway's receive time known
   (`received_ms` > 0), a fix stamped more than `clock_skew_s` [120 s] AHEAD of its arrival.
   A clock BEHIND looks like buffered offline upload, so it is flagged only when uploads look
   live: `clock_behind_min_uploads` [5] consecutive uploads (0 disables), each at most
   `clock_behind_max_upload_gap_s` [300 s] after the previous, spanning at least
   `clock_behind_min_span_s` [600 s] of receive time, whose freshest fix is each more than
   `clock_skew_s` old with a lag that varies by at most `clock_behind_max_spread_s` [60 s]
   (a backlog being worked off shrinks its lag; a wrong clock keeps it constant).
   NOTE: the validator rejects fixes more than its max_future_s ahead of the processing clock
   before they reach this processor; `observe_clock` is public so the topology can feed those.

8. Replayed track -> SPOOF_REPLAY (critical): an earlier day's real track sent again with
   shifted times (a route- or GPS-log-replay app without the mock flag). A moving GNSS fix
   never repeats to the last digit on another day, so the rule keeps a bounded fingerprint of
   each day's EXACT positions and looks today's up in the previous day's: a bottom-k (KMV)
   sample, the `replay_k` [32] smallest 32-bit hashes of (lat, lon) rounded to 1e-7 deg (the
   ~1 cm the phone reports), over the fixes reporting a speed >= `replay_min_speed_mps`
   [2 m/s]. At most `replay_k` positions of the earlier day can be recognised, each the same
   uniform sample of its moving fixes, so a replay is recognised progressively as the day goes.
   Per moving fix: one hash and two integer compares (every bottom-k hash is <= its largest);
   a hit or an insertion (about k ln(n/k) a day) scans the 32 entries. `replay_min_matches`
   [3] DISTINCT earlier positions seen again today raise the alert (evidence: the matched
   positions and times, the earlier day); then every moving fix of the day extends the
   episode, so visits during it are not verified. One alert per day.
   A day ends when moving fixes pause for `replay_day_gap_s` [21600 s = 6 h] (the night: the
   privacy filter drops off-hours fixes) or after `replay_day_max_s` [86400 s] of them; its
   fingerprint then becomes the previous one, unless it holds fewer than `replay_min_matches`
   positions (at a fix a minute a whole day may not fill it: requiring `replay_k` missed 1
   of 12 replays at 60 s sampling; weekend drives do not get here, the privacy filter drops
   off-hours fixes). Only the previous day is kept (state budget):
   replaying a track two days old is not recognised, nor one whose positions were altered
   (re-rounded beyond 1e-7, jittered) or that reports no speed.
   Tuning ("replayed track", 2 replayers + 2 honest reps with a history day, seeds 1-3): all
   6 replays found, time to alert median 29 min, max 129 min, 0 alerts on honest reps. With
   k = 16 / 64 the median is 37 / 15 min and the max 239 / 76 min; the JSON fingerprint costs
   ~6 chars per entry, and both full ones with the times take ~440 B, so 32 is the size
   budget. `replay_min_matches` 2 / 4 give a median of 24 / 31 min (max 127 / 239): real
   phones do repeat a position across days (a cached or Wi-Fi fix: the Google excerpt of the
   real tracks has 2 exact positions recurring 7.6 h apart at rest), hence several distinct
   ones, and only while moving. `replay_min_speed_mps` 0 (all fixes) gives 51 / 65 min and
   lets resting positions in, which do recur: the simulator's honest phones repeat 20 exact
   positions at rest (0 moving) over 60 rep-day pairs of the tuning seeds (1 cm coincidences
   among thousands of fixes at one home); 5 m/s gives the same as 2.

Common: `episode_gap_s` [1800 s] ends an episode of rules 1, 3-7 after that much event time
without the condition.

Visit verification: `suspect_alerts(state, arrive, leave)` names the episodes (mock flag, mock
app, emulator, static, teleport, jump back, replay) overlapping a visit, give or take
`visit_margin_s` [600 s]; the topology then stores the visit with verified=False and those
alert types, so a fake visit never counts as verified. Warnings about the phone (root,
developer mode, clock skew, constant accuracy) do not unverify a visit.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import datetime as dt
import math
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any, Self

from pipeline.events import (
    Alert,
    AlertType,
    DeviceState,
    DeviceStateKind,
    Ping,
    Severity,
    evidence,
    make_id,
)
from pipeline.geo import M_PER_DEG_LAT
from pipeline.processors.base import Ctx, Result, SerialisableState

_DEG = math.pi / 180.0
_HASH_MASK = 0xFFFFFFFF  # 32-bit coordinate hashes (the fingerprint stores them as uint32)
assert array("I").itemsize == 4

INTEGRITY_SEVERITY: dict[str, str] = {
    DeviceStateKind.MOCK_APP_DETECTED.value: Severity.CRITICAL.value,
    DeviceStateKind.EMULATOR.value: Severity.CRITICAL.value,
    DeviceStateKind.ROOTED.value: Severity.WARNING.value,
    DeviceStateKind.DEVELOPER_MODE_ON.value: Severity.WARNING.value,
}
# Episode keys whose overlap with a visit means the visit is not verified, and the alert type
# the manager sees for each.
VISIT_INVALIDATING: dict[str, str] = {
    "mock": AlertType.SPOOF_MOCK_FLAG.value,
    "static": AlertType.SPOOF_STATIC.value,
    "teleport": AlertType.SPOOF_TELEPORT.value,
    "jump_back": AlertType.SPOOF_JUMP_BACK.value,
    "replay": AlertType.SPOOF_REPLAY.value,
    f"integrity:{DeviceStateKind.MOCK_APP_DETECTED.value}": AlertType.SPOOF_DEVICE_INTEGRITY.value,
    f"integrity:{DeviceStateKind.EMULATOR.value}": AlertType.SPOOF_DEVICE_INTEGRITY.value,
}
INTEGRITY_TEXT: dict[str, str] = {
    DeviceStateKind.MOCK_APP_DETECTED.value: "a mock-location app was detected on the phone",
    DeviceStateKind.EMULATOR.value: "the app is running on an emulator, not a phone",
    DeviceStateKind.ROOTED.value: "the phone is rooted",
    DeviceStateKind.DEVELOPER_MODE_ON.value: "developer mode is switched on",
}

# Fix layout in state lists: [ts_ms, lat, lon, accuracy_m].
TS, LAT, LON, ACC = 0, 1, 2, 3


@dataclass(slots=True)
class SpoofParams:
    """Spoof-detection thresholds; see the module docstring for what each one does."""

    episode_gap_s: float = 1800.0
    mock_clear_s: float = 30.0
    integrity_episode_gap_s: float = 43200.0
    visit_margin_s: float = 600.0
    teleport_speed_mps: float = 100.0
    teleport_min_m: float = 2000.0
    unknown_accuracy_m: float = 0.0
    stale_eps_m: float = 1.0
    jump_back_max_s: float = 180.0
    jump_back_min_m: float = 1000.0
    jump_back_return_frac: float = 0.25
    jump_back_customer_extra_m: float = 25.0
    static_providers: str = "gps"  # comma-separated
    static_min_fixes: int = 20
    static_min_s: float = 300.0
    static_min_s_any_accuracy: float = 1800.0
    static_min_s_other_providers: float = 900.0
    static_max_gap_s: float = 30.0
    static_max_accuracy_m: float = 100.0
    constant_accuracy_min_fixes: int = 60
    constant_accuracy_min_moving: int = 20
    constant_accuracy_perfect_frac: float = 0.6
    perfect_line_m: float = 0.5
    perfect_speed_rel: float = 0.02
    clock_skew_s: float = 120.0
    clock_behind_min_uploads: int = 5
    clock_behind_max_upload_gap_s: float = 300.0
    clock_behind_min_span_s: float = 600.0
    clock_behind_max_spread_s: float = 60.0
    replay_k: int = 32
    replay_min_matches: int = 3
    replay_min_speed_mps: float = 2.0
    replay_day_gap_s: float = 21600.0
    replay_day_max_s: float = 86400.0


def position_hash(lat: float, lon: float) -> int:
    """The 32-bit hash of an exact reported position (1e-7 deg) that the fingerprints hold.
    Python's hash of a tuple of ints: deterministic across processes (no hash seed) and
    platforms with a 64-bit hash; `_replay` inlines it."""
    return hash((round(lat * 1e7), round(lon * 1e7))) & _HASH_MASK


def _pack(values: array) -> str:
    """A fingerprint as JSON text: its uint32 hashes, little-endian, base64 (6 chars per 4
    bytes on average; decimal ints would take about 9)."""
    return base64.b64encode(struct.pack(f"<{len(values)}I", *values)).decode("ascii")


def _unpack(text: str | list[int]) -> array:
    if isinstance(text, list):  # tolerate the plain list form
        return array("I", sorted(text))
    raw = base64.b64decode(text)
    return array("I", struct.unpack(f"<{len(raw) // 4}I", raw))


@dataclass(slots=True)
class SpoofState(SerialisableState):
    """Per-device spoof state: a few scalars and short lists (under 1 KB as JSON; the replay
    fingerprints take up to ~440 B of it)."""

    # Open episodes: key (alert type, or "integrity:<kind>") -> [start_ms, last_ms].
    episodes: dict[str, list[int]] = field(default_factory=dict)
    # Event time of the latest real fix after the last mock fix (0: none since).
    real_after_mock_ms: int = 0
    # Teleport / jump-back: last on-track fix, start of its stale (frozen) run, pending jump.
    anchor: list[float] | None = None
    anchor_since_ms: int = 0
    # Pending excursion: {"origin": fix, "origin_since": ms, "first": fix, "last": fix,
    # "n": int, "same": bool (all jumped fixes identical)}.
    excursion: dict[str, Any] | None = None
    # Static run: [start_ms, last_ms, lat, lon, acc (-1 once it varied), n]; jump evidence.
    static: list[float] | None = None
    static_jump_m: float = 0.0
    # Constant-accuracy run: [acc, n, start_ms, moving triples, perfect triples].
    acc_run: list[float] | None = None
    prev: list[float] | None = None  # last two non-mock fixes [ts, lat, lon]
    prev2: list[float] | None = None
    # Clock: current upload [received_ms, min lag ms]; streak of live uploads that lag.
    upload: list[int] | None = None
    behind: list[int] | None = None
    # Replay fingerprints: the `replay_k` smallest 32-bit hashes of the exact coordinates of
    # the moving fixes of the previous day (minus those seen again today) and of today, sorted
    # (array('I'): ~130 B of heap each, base64 text in JSON); [today's first moving fix ms,
    # last moving fix ms, previous day's first ms]; today's matches [ts_ms, lat, lon] (at most
    # `replay_min_matches`: reaching it means today is reported as a replay).
    fp_prev: array = field(default_factory=lambda: array("I"))
    fp_today: array = field(default_factory=lambda: array("I"))
    fp_times: list[int] | None = None
    fp_hits: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = SerialisableState.to_dict(self)
        data["fp_prev"] = _pack(self.fp_prev)
        data["fp_today"] = _pack(self.fp_today)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["fp_prev"] = _unpack(values.get("fp_prev", ""))
        values["fp_today"] = _unpack(values.get("fp_today", ""))
        return cls(**values)


def _dist_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance: exact enough for the km-scale legs judged here, and cheap."""
    dx = (lon2 - lon1) * math.cos((lat1 + lat2) * 0.5 * _DEG)
    return math.hypot(dx, lat2 - lat1) * M_PER_DEG_LAT


class SpoofDetector:
    def __init__(self, params: SpoofParams | None = None) -> None:
        self.p = params or SpoofParams()
        self.static_providers = frozenset(
            s.strip() for s in self.p.static_providers.split(",") if s.strip()
        )
        self.replay_min_matches = max(1, self.p.replay_min_matches)
        self.replay_gap_ms = self.p.replay_day_gap_s * 1000
        self.replay_max_ms = self.p.replay_day_max_s * 1000
        self.replay_k = self.p.replay_k
        p = self.p
        # What `process` reads per fix, unpacked once per batch.
        self._consts = (
            p.clock_skew_s * 1000,
            p.clock_behind_min_uploads > 0,
            p.static_max_accuracy_m,
            p.static_max_gap_s * 1000,
            p.unknown_accuracy_m,
            p.stale_eps_m,
            min(p.jump_back_min_m, p.teleport_min_m),
            p.replay_min_speed_mps,
            p.constant_accuracy_min_fixes,
            p.constant_accuracy_min_moving,
            p.constant_accuracy_perfect_frac,
        )

    def initial_state(self) -> SpoofState:
        return SpoofState()

    # ---- episodes -------------------------------------------------------------------------

    def _episode(self, state: SpoofState, key: str, ts_ms: int, gap_s: float) -> int | None:
        """Extend or open the episode; returns its start when a NEW episode opened."""
        ep = state.episodes.get(key)
        if ep is not None and ts_ms - ep[1] <= gap_s * 1000:
            ep[1] = max(ep[1], ts_ms)
            return None
        state.episodes[key] = [ts_ms, ts_ms]
        return ts_ms

    def _alert(
        self,
        ctx: Ctx,
        out: Result,
        kind: AlertType,
        start_ms: int,
        ts_ms: int,
        severity: Severity | str,
        message: str,
        ev: dict[str, str],
        *id_extra: object,
    ) -> None:
        out.alerts.append(
            Alert(
                id=make_id(ctx.org_id, ctx.device_id, kind.value, start_ms, *id_extra),
                org_id=ctx.org_id,
                device_id=ctx.device_id,
                ts_ms=ts_ms,
                type=kind.value,
                severity=severity.value if isinstance(severity, Severity) else severity,
                message=message,
                evidence=ev,
            )
        )
        out.counters[f"alert_{kind.value}"] += 1

    # ---- visit verification ---------------------------------------------------------------

    def replaying(self, state: SpoofState) -> bool:
        """Today's track is proven to be an earlier day's replay: nothing it reports is where
        the rep is (the topology then derives no fence events from it)."""
        return len(state.fp_hits) >= self.replay_min_matches

    def suspect_alerts(self, state: SpoofState, start_ms: int, end_ms: int) -> list[str]:
        """Alert types of anti-cheat episodes that overlap [start_ms, end_ms] (give or take
        `visit_margin_s`): a visit during one is not verified. Rooted phones, developer mode,
        clock skew and constant accuracy are warnings about the phone, not proof that the
        position was fake, so they do not unverify a visit."""
        margin = int(self.p.visit_margin_s * 1000)
        found = []
        for key, (first, last) in state.episodes.items():
            alert_type = VISIT_INVALIDATING.get(key)
            if alert_type and first <= end_ms + margin and last >= start_ms - margin:
                found.append(alert_type)
        return sorted(set(found))

    # ---- device states --------------------------------------------------------------------

    def on_device_state(self, state: SpoofState, ev: DeviceState, ctx: Ctx, out: Result) -> None:
        severity = INTEGRITY_SEVERITY.get(ev.kind)
        if severity is None:
            return
        key = f"integrity:{ev.kind}"
        start = self._episode(state, key, ev.ts_ms, self.p.integrity_episode_gap_s)
        if start is None:
            return
        detail = f" ({ev.detail})" if ev.detail else ""
        self._alert(
            ctx,
            out,
            AlertType.SPOOF_DEVICE_INTEGRITY,
            start,
            ev.ts_ms,
            severity,
            f"Device integrity: {INTEGRITY_TEXT[ev.kind]}{detail}.",
            evidence(
                rule="device_integrity",
                kind=ev.kind,
                detail=ev.detail or "",
                reported_ms=ev.ts_ms,
                episode_gap_s=self.p.integrity_episode_gap_s,
            ),
            ev.kind,
        )

    def _mock_episode(self, state: SpoofState, ts_ms: int) -> int | None:
        mock = state.episodes.get("mock")
        cleared = (
            mock is not None and state.real_after_mock_ms - mock[1] >= self.p.mock_clear_s * 1000
        )
        state.real_after_mock_ms = 0
        if cleared:
            state.episodes["mock"] = [ts_ms, ts_ms]
            return ts_ms
        return self._episode(state, "mock", ts_ms, self.p.episode_gap_s)

    # ---- pings ----------------------------------------------------------------------------

    def process(self, state: SpoofState, pings: list[Ping], ctx: Ctx, out: Result) -> None:
        """The rules per fix. The common path of each (the same upload as the previous fix, a
        fix that moved, no pending jump) is written out here: per-fix calls and attribute
        lookups were most of this processor's cost; anything else goes to the rule's method,
        which decides afresh (the checks here are its own first steps)."""
        (skew_ms, behind_on, static_max_acc, static_gap_ms, unknown_acc, stale_eps, jump_min,
         replay_speed, ca_min_fixes, ca_min_moving, ca_frac) = self._consts  # fmt: skip
        hypot = math.hypot
        cos = math.cos
        episodes = state.episodes
        mock = episodes.get("mock")
        mock_first: Ping | None = None
        mock_start = 0
        mock_count = 0
        for ping in pings:
            ts = ping.ts_ms
            recv = ping.received_ms
            if recv:
                up = state.upload
                if behind_on and up is not None and recv == up[0] and ts - recv <= skew_ms:
                    if recv - ts < up[1]:  # the upload's freshest fix so far
                        up[1] = recv - ts
                else:
                    self.observe_clock(state, ping, ctx, out)
            if ping.is_mock:
                start = self._mock_episode(state, ts)
                if start is not None:
                    if mock_first is not None:  # a second episode inside one batch
                        self._mock_alert(ctx, out, mock_first, mock_start, mock_count)
                    mock_first, mock_start, mock_count = ping, start, 0
                mock_count += 1
                mock = episodes.get("mock")
                continue
            if mock is not None and ts > mock[1]:
                state.real_after_mock_ms = ts
            lat = ping.lat
            lon = ping.lon
            acc = ping.accuracy_m
            # Rule 5: a fix that starts a new static run.
            if acc <= static_max_acc:
                run = state.static
                if run is None or lat != run[2] or lon != run[3] or ts - run[1] > static_gap_ms:
                    state.static = [ts, ts, lat, lon, acc, 1]
                    state.static_jump_m = 0.0
                else:
                    self._static(state, ping, ctx, out)
            # Rule 6: count the run of equal accuracies and its moving triples.
            run = state.acc_run
            if run is None or run[0] != acc:
                run = state.acc_run = [acc, 0, ts, 0, 0]
            run[1] += 1
            a, b = state.prev2, state.prev
            if a is not None and b is not None and run[1] >= 3:
                self._triple(run, a, b, ping)
            state.prev2 = b
            state.prev = [ts, lat, lon]
            if run[1] >= ca_min_fixes and run[3] >= ca_min_moving and run[4] >= ca_frac * run[3]:
                self._constant_accuracy_alert(state, run, ping, ctx, out)
            # Rules 3-4: a fix near the last on-track one (no pending jump) just moves it.
            if acc > unknown_acc:
                anchor = state.anchor
                if state.excursion is None and anchor is not None:
                    alat = anchor[LAT]  # _dist_m, written out
                    d = hypot((lon - anchor[LON]) * cos((alat + lat) * 0.5 * _DEG), lat - alat)
                    d *= M_PER_DEG_LAT
                    if d <= stale_eps:  # frozen/cached position: keep when it was first seen
                        state.anchor = [ts, lat, lon, acc]
                    elif d > jump_min:
                        self._jumps(state, ping, ctx, out)
                    else:
                        state.anchor = [ts, lat, lon, acc]
                        state.anchor_since_ms = ts
                else:
                    self._jumps(state, ping, ctx, out)
            speed = ping.speed_mps
            if speed is not None and speed >= replay_speed:
                self._replay(state, ping, ctx, out)
        if mock_first is not None:
            self._mock_alert(ctx, out, mock_first, mock_start, mock_count)

    def _mock_alert(self, ctx: Ctx, out: Result, first: Ping, start: int, count: int) -> None:
        self._alert(
            ctx,
            out,
            AlertType.SPOOF_MOCK_FLAG,
            start,
            first.ts_ms,
            Severity.CRITICAL,
            f"The phone marked {count} location fix(es) as mock (fake GPS), "
            f"first at {first.lat:.6f}, {first.lon:.6f}.",
            evidence(
                rule="mock_flag",
                first_mock_ms=first.ts_ms,
                first_mock_seq=first.seq,
                first_mock_lat=first.lat,
                first_mock_lon=first.lon,
                mock_fixes_in_batch=count,
                episode_gap_s=self.p.episode_gap_s,
            ),
        )

    # ---- rule 8: replayed track ----------------------------------------------------------

    def _replay(self, state: SpoofState, ping: Ping, ctx: Ctx, out: Result) -> None:
        """One moving fix: day change, fingerprint lookup and update (one hash, two compares
        on the common path: bottom-k hashes are all below the fingerprint's largest)."""
        times = state.fp_times
        ts = ping.ts_ms
        min_matches = self.replay_min_matches
        if times is None:
            times = state.fp_times = [ts, ts, 0]
        elif ts - times[1] > self.replay_gap_ms or ts - times[0] > self.replay_max_ms:
            # A new day; one with too few moving fixes to ever prove a replay keeps the last.
            if len(state.fp_today) >= min_matches:
                state.fp_prev, times[2] = state.fp_today, times[0]
            state.fp_today = array("I")
            state.fp_hits = []
            times[0] = ts
        if ts > times[1]:
            times[1] = ts
        h = hash((round(ping.lat * 1e7), round(ping.lon * 1e7))) & _HASH_MASK  # position_hash
        prev = state.fp_prev
        hits = state.fp_hits  # `_replay_match` appends to this list
        if prev and h <= prev[-1] and h in prev:
            prev.remove(h)  # each exact position of the earlier day counts once
            if len(hits) < min_matches:
                self._replay_match(state, ping, ctx, out)
        if len(hits) >= min_matches:  # today is a replay: extend it
            episode = state.episodes["replay"]
            episode[1] = max(episode[1], ts)
        today = state.fp_today
        k = self.replay_k
        if len(today) < k or h < today[-1]:
            i = bisect.bisect_left(today, h)
            if i == len(today) or today[i] != h:
                today.insert(i, h)
                if len(today) > k:
                    today.pop()

    def _replay_match(self, state: SpoofState, ping: Ping, ctx: Ctx, out: Result) -> None:
        """An exact position of the earlier day; the `replay_min_matches`-th one alerts."""
        p = self.p
        hits = state.fp_hits
        hits.append([ping.ts_ms, ping.lat, ping.lon])
        if len(hits) < self.replay_min_matches:
            return
        start = int(hits[0][0])
        state.episodes["replay"] = [start, ping.ts_ms]
        assert state.fp_times is not None
        earlier_ms = state.fp_times[2]
        earlier = dt.datetime.fromtimestamp(earlier_ms / 1000, dt.UTC).strftime("%a %d %b %Y")
        shown = ", ".join(f"{lat:.7f} {lon:.7f}" for _, lat, lon in hits)
        self._alert(
            ctx,
            out,
            AlertType.SPOOF_REPLAY,
            start,
            ping.ts_ms,
            Severity.CRITICAL,
            f"{len(hits)} positions this phone reported while moving on an earlier day "
            f"({earlier}) came back today to the last digit (1 cm): {shown}. A moving GPS "
            f"never repeats a fix exactly; an earlier day's track is being replayed.",
            evidence(
                rule="replayed_track",
                matched_fixes=len(hits),
                matched_ms=",".join(str(int(t)) for t, _, _ in hits),
                matched_positions=shown,
                earlier_day_first_ms=earlier_ms,
                today_first_ms=state.fp_times[0],
                fingerprint_size=p.replay_k,
                min_matches=p.replay_min_matches,
                min_speed_mps=p.replay_min_speed_mps,
            ),
        )

    # ---- rule 7: clock --------------------------------------------------------------------

    def observe_clock(self, state: SpoofState, ping: Ping, ctx: Ctx, out: Result) -> None:
        """Clock-skew checks for one fix with a known gateway receive time."""
        p = self.p
        lag_ms = ping.received_ms - ping.ts_ms
        if -lag_ms > p.clock_skew_s * 1000:
            start = self._episode(state, "clock_ahead", ping.ts_ms, p.episode_gap_s)
            if start is not None:
                self._alert(
                    ctx,
                    out,
                    AlertType.SPOOF_CLOCK_SKEW,
                    start,
                    ping.received_ms,  # server time: the phone's own time is what is wrong
                    Severity.WARNING,
                    f"The phone's clock is {-lag_ms / 1000:.0f} s ahead of the server: fix "
                    f"stamped after it arrived.",
                    evidence(
                        rule="clock_ahead",
                        fix_ts_ms=ping.ts_ms,
                        received_ms=ping.received_ms,
                        ahead_s=-lag_ms / 1000,
                        threshold_s=p.clock_skew_s,
                    ),
                    "ahead",
                )
        if p.clock_behind_min_uploads <= 0:
            return
        up = state.upload
        if up is None or ping.received_ms > up[0]:
            if up is not None:
                self._close_upload(state, up, ctx, out)
            state.upload = [ping.received_ms, lag_ms]
        elif ping.received_ms == up[0] and lag_ms < up[1]:
            up[1] = lag_ms

    def _close_upload(self, state: SpoofState, up: list[int], ctx: Ctx, out: Result) -> None:
        """Extends or restarts the streak of live uploads whose freshest fix is too old."""
        p = self.p
        recv_ms, lag_ms = up
        streak = state.behind  # [first_recv_ms, last_recv_ms, uploads, min_lag, max_lag]
        if lag_ms <= p.clock_skew_s * 1000:
            state.behind = None
            return
        if (
            streak is None
            or recv_ms - streak[1] > p.clock_behind_max_upload_gap_s * 1000
            or max(streak[4], lag_ms) - min(streak[3], lag_ms) > p.clock_behind_max_spread_s * 1000
        ):
            state.behind = [recv_ms, recv_ms, 1, lag_ms, lag_ms]
            return
        streak[1] = recv_ms
        streak[2] += 1
        streak[3] = min(streak[3], lag_ms)
        streak[4] = max(streak[4], lag_ms)
        if (
            streak[2] < p.clock_behind_min_uploads
            or streak[1] - streak[0] < p.clock_behind_min_span_s * 1000
        ):
            return
        freshest_ms = recv_ms - lag_ms
        start = self._episode(state, "clock_behind", freshest_ms, p.episode_gap_s)
        if start is None:
            return
        self._alert(
            ctx,
            out,
            AlertType.SPOOF_CLOCK_SKEW,
            start,
            freshest_ms,
            Severity.WARNING,
            f"The phone's clock runs about {streak[3] / 1000:.0f} s behind the server: "
            f"{streak[2]} live uploads in a row each carried only fixes that old.",
            evidence(
                rule="clock_behind",
                uploads=streak[2],
                first_upload_ms=streak[0],
                last_upload_ms=streak[1],
                min_lag_s=streak[3] / 1000,
                max_lag_s=streak[4] / 1000,
                threshold_s=p.clock_skew_s,
                max_spread_s=p.clock_behind_max_spread_s,
            ),
            "behind",
        )

    # ---- rule 5: zero-jitter static -------------------------------------------------------

    def _static(self, state: SpoofState, ping: Ping, ctx: Ctx, out: Result) -> None:
        p = self.p
        if ping.accuracy_m > p.static_max_accuracy_m:
            return
        run = state.static
        if (
            run is None
            or ping.lat != run[2]
            or ping.lon != run[3]
            or ping.ts_ms - run[1] > p.static_max_gap_s * 1000
        ):
            state.static = [ping.ts_ms, ping.ts_ms, ping.lat, ping.lon, ping.accuracy_m, 1]
            state.static_jump_m = 0.0
            return
        run[1] = ping.ts_ms
        run[5] += 1
        if run[4] != ping.accuracy_m:
            run[4] = -1.0
        if run[5] < p.static_min_fixes:
            return
        span_s = (run[1] - run[0]) / 1000
        if ping.provider in self.static_providers:
            need_s = p.static_min_s if run[4] >= 0 else p.static_min_s_any_accuracy
        else:
            need_s = p.static_min_s_other_providers if run[4] >= 0 else 0.0
        if need_s <= 0 or span_s < need_s:
            return
        episode = state.episodes.get("static")
        if episode is not None and episode[0] == int(run[0]):  # this spot is already reported
            episode[1] = ping.ts_ms
            return
        start = int(run[0])
        state.episodes["static"] = [start, ping.ts_ms]
        exc = state.excursion
        if (
            exc is not None
            and exc["same"]
            and exc["first"][LAT] == run[2]
            and exc["first"][LON] == run[3]
        ):
            # The track jumped into this frozen spot: one alert, with the jump as evidence.
            state.static_jump_m = _dist_m(
                exc["origin"][LAT], exc["origin"][LON], exc["first"][LAT], exc["first"][LON]
            )
            state.excursion = None
            state.anchor = [ping.ts_ms, ping.lat, ping.lon, ping.accuracy_m]
            state.anchor_since_ms = int(run[0])
        same_acc = run[4] >= 0
        self._alert(
            ctx,
            out,
            AlertType.SPOOF_STATIC,
            start,
            ping.ts_ms,
            Severity.CRITICAL,
            f"Position frozen to the last digit at {run[2]:.6f}, {run[3]:.6f} for "
            f"{span_s / 60:.0f} min ({int(run[5])} {ping.provider} fixes"
            f"{', identical accuracy' if same_acc else ''}): real GPS always jitters.",
            evidence(
                rule="static_zero_jitter",
                lat=run[2],
                lon=run[3],
                first_ms=int(run[0]),
                last_ms=int(run[1]),
                fixes=int(run[5]),
                span_s=span_s,
                accuracy_m=run[4] if same_acc else "varies",
                provider=ping.provider,
                min_fixes=p.static_min_fixes,
                min_s=need_s,
                arrived_by_jump_m=state.static_jump_m,
            ),
        )

    # ---- rule 6: constant accuracy on a perfect route -------------------------------------

    def _constant_accuracy_alert(
        self, state: SpoofState, run: list[float], ping: Ping, ctx: Ctx, out: Result
    ) -> None:
        """The run (counted in `process`) qualifies: open or extend the episode."""
        p = self.p
        start = self._episode(state, "constant_accuracy", int(run[2]), p.episode_gap_s)
        if start is None:
            return
        self._alert(
            ctx,
            out,
            AlertType.SPOOF_CONSTANT_ACCURACY,
            start,
            ping.ts_ms,
            Severity.WARNING,
            f"{int(run[1])} fixes in a row report exactly {run[0]:g} m accuracy while moving on "
            f"a geometrically perfect path ({int(run[4])} of {int(run[3])} steps perfectly "
            f"straight at constant speed): typical of route-faking apps.",
            evidence(
                rule="constant_accuracy",
                accuracy_m=run[0],
                fixes=int(run[1]),
                first_ms=int(run[2]),
                last_ms=ping.ts_ms,
                moving_steps=int(run[3]),
                perfect_steps=int(run[4]),
                min_fixes=p.constant_accuracy_min_fixes,
                perfect_frac=p.constant_accuracy_perfect_frac,
                line_tolerance_m=p.perfect_line_m,
                speed_tolerance=p.perfect_speed_rel,
            ),
        )

    def _triple(self, run: list[float], a: list[float], b: list[float], c: Ping) -> None:
        """Counts a moving triple a-b-c and whether it is perfectly straight and even."""
        kx = math.cos(b[1] * _DEG) * M_PER_DEG_LAT
        x0, y0 = (a[2] - b[2]) * kx, (a[1] - b[1]) * M_PER_DEG_LAT
        x2, y2 = (c.lon - b[2]) * kx, (c.lat - b[1]) * M_PER_DEG_LAT
        s1, s2 = math.hypot(x0, y0), math.hypot(x2, y2)
        dt1, dt2 = b[0] - a[0], c.ts_ms - b[0]
        if s1 < 3.0 or s2 < 3.0 or dt1 <= 0 or dt2 <= 0:
            return
        run[3] += 1
        chord = math.hypot(x2 - x0, y2 - y0)
        if chord <= 0:
            return
        off_line = abs(x0 * y2 - x2 * y0) / chord  # distance of b from the line a-c
        v1, v2 = s1 / dt1, s2 / dt2
        if off_line < self.p.perfect_line_m and abs(v1 - v2) < self.p.perfect_speed_rel * max(
            v1, v2
        ):
            run[4] += 1

    # ---- rules 3 and 4: teleport, jump to a customer and back -----------------------------

    def _impossible(self, a: list[float], a_since: float, b: Ping) -> float:
        """Implied speed (m/s) granting both accuracies; dt from when `a` was first seen."""
        d = _dist_m(a[LAT], a[LON], b.lat, b.lon) - a[ACC] - b.accuracy_m
        if d <= 0:
            return 0.0
        dt_s = max(1.0, (b.ts_ms - a_since) / 1000)
        return d / dt_s

    def _jumps(self, state: SpoofState, ping: Ping, ctx: Ctx, out: Result) -> None:
        p = self.p
        exc = state.excursion
        if exc is not None and self._continue_excursion(state, exc, ping, ctx, out):
            return
        anchor = state.anchor
        fix = [ping.ts_ms, ping.lat, ping.lon, ping.accuracy_m]
        if anchor is None:
            state.anchor, state.anchor_since_ms = fix, ping.ts_ms
            return
        d = _dist_m(anchor[LAT], anchor[LON], ping.lat, ping.lon)
        if d <= p.stale_eps_m:  # frozen/cached position: keep when it was first seen
            state.anchor = fix
            return
        if (
            d > min(p.jump_back_min_m, p.teleport_min_m)
            and self._impossible(anchor, state.anchor_since_ms, ping) > p.teleport_speed_mps
        ):
            state.excursion = {
                "origin": anchor,
                "origin_since": state.anchor_since_ms,
                "first": fix,
                "last": fix,
                "n": 1,
                "same": True,
                "last_since": ping.ts_ms,
            }
            return
        state.anchor, state.anchor_since_ms = fix, ping.ts_ms

    def _continue_excursion(
        self, state: SpoofState, exc: dict[str, Any], ping: Ping, ctx: Ctx, out: Result
    ) -> bool:
        """Feeds a fix to a pending excursion; True when the fix was consumed by it."""
        p = self.p
        origin, first, last = exc["origin"], exc["first"], exc["last"]
        out_m = _dist_m(origin[LAT], origin[LON], first[LAT], first[LON])
        fix = [ping.ts_ms, ping.lat, ping.lon, ping.accuracy_m]
        # The return leg is timed from the last jumped fix: landing back near the origin is
        # evidence enough that the jumped fixes were not a frozen-then-fresh artefact.
        back_fast = self._impossible(last, last[TS], ping) > p.teleport_speed_mps
        home_m = _dist_m(origin[LAT], origin[LON], ping.lat, ping.lon)
        if back_fast and home_m <= p.jump_back_return_frac * out_m:
            # Came back to where it left: a jump-back (at a customer) or an out-and-back jump.
            away_s = (last[TS] - first[TS]) / 1000
            customer = self._customer_at(ctx, first) or self._customer_at(ctx, last)
            if away_s <= p.jump_back_max_s and customer is not None:
                self._jump_back_alert(state, exc, out_m, away_s, customer, ping, ctx, out)
            elif out_m > p.teleport_min_m:
                self._teleport_alert(state, exc, out_m, ctx, out, returned_ms=ping.ts_ms)
            state.excursion = None
            state.anchor, state.anchor_since_ms = fix, ping.ts_ms
            return True
        if not back_fast:
            # Stays at the new place: keep waiting while a jump-back is still possible.
            if _dist_m(last[LAT], last[LON], ping.lat, ping.lon) > p.stale_eps_m:
                exc["last_since"] = ping.ts_ms
            if ping.lat != first[LAT] or ping.lon != first[LON]:
                exc["same"] = False
            exc["last"] = fix
            exc["n"] += 1
            # A frozen landing spot is left to the static rule, which reports the jump with it.
            if exc["same"] or (ping.ts_ms - first[TS]) / 1000 <= p.jump_back_max_s:
                return True
            if out_m > p.teleport_min_m:
                self._teleport_alert(state, exc, out_m, ctx, out, returned_ms=0)
            state.excursion = None
            state.anchor, state.anchor_since_ms = fix, exc["last_since"]
            return True
        # Jumped on to a third place: the first jump stands on its own; judge this fix afresh.
        if out_m > p.teleport_min_m:
            self._teleport_alert(state, exc, out_m, ctx, out, returned_ms=0)
        state.excursion = None
        state.anchor, state.anchor_since_ms = last, exc["last_since"]
        return False

    def _customer_at(self, ctx: Ctx, fix: list[float]) -> tuple[Any, float] | None:
        hits = ctx.ref.customers.within(
            fix[LAT], fix[LON], self.p.jump_back_customer_extra_m, org_id=ctx.org_id
        )
        return hits[0] if hits else None

    def _teleport_alert(
        self,
        state: SpoofState,
        exc: dict[str, Any],
        out_m: float,
        ctx: Ctx,
        out: Result,
        returned_ms: int,
    ) -> None:
        origin, first = exc["origin"], exc["first"]
        start = self._episode(state, "teleport", int(first[TS]), self.p.episode_gap_s)
        if start is None:
            return
        dt_s = max(1.0, (first[TS] - exc["origin_since"]) / 1000)
        speed = (out_m - origin[ACC] - first[ACC]) / dt_s
        self._alert(
            ctx,
            out,
            AlertType.SPOOF_TELEPORT,
            start,
            int(first[TS]),
            Severity.CRITICAL,
            f"Impossible jump of {out_m / 1000:.1f} km in {dt_s:.0f} s "
            f"({speed * 3.6:.0f} km/h even granting both accuracies).",
            evidence(
                rule="teleport",
                from_ms=int(origin[TS]),
                from_lat=origin[LAT],
                from_lon=origin[LON],
                from_accuracy_m=origin[ACC],
                to_ms=int(first[TS]),
                to_lat=first[LAT],
                to_lon=first[LON],
                to_accuracy_m=first[ACC],
                distance_m=out_m,
                dt_s=dt_s,
                implied_speed_mps=speed,
                came_back_ms=returned_ms,
                speed_threshold_mps=self.p.teleport_speed_mps,
                min_distance_m=self.p.teleport_min_m,
            ),
        )

    def _jump_back_alert(
        self,
        state: SpoofState,
        exc: dict[str, Any],
        out_m: float,
        away_s: float,
        customer: tuple[Any, float],
        back: Ping,
        ctx: Ctx,
        out: Result,
    ) -> None:
        origin, first = exc["origin"], exc["first"]
        start = self._episode(state, "jump_back", int(first[TS]), self.p.episode_gap_s)
        if start is None:
            return
        cust, cust_m = customer
        self._alert(
            ctx,
            out,
            AlertType.SPOOF_JUMP_BACK,
            start,
            back.ts_ms,
            Severity.CRITICAL,
            f"Location jumped {out_m / 1000:.1f} km to customer {cust.name} "
            f"({cust.customer_id}) for {away_s:.0f} s and straight back.",
            evidence(
                rule="jump_back",
                customer_id=cust.customer_id,
                customer_distance_m=cust_m,
                left_ms=int(origin[TS]),
                left_lat=origin[LAT],
                left_lon=origin[LON],
                jump_ms=int(first[TS]),
                jump_lat=first[LAT],
                jump_lon=first[LON],
                jump_accuracy_m=first[ACC],
                jumped_fixes=int(exc["n"]),
                back_ms=back.ts_ms,
                back_lat=back.lat,
                back_lon=back.lon,
                distance_m=out_m,
                away_s=away_s,
                max_away_s=self.p.jump_back_max_s,
                speed_threshold_mps=self.p.teleport_speed_mps,
                min_distance_m=self.p.jump_back_min_m,
            ),
        )
