"""Validation, de-duplication and event-time ordering of a device's pings.

The first processor of the topology. It turns what phones upload — possibly invalid, retried,
out of order, in several requests — into one stream per device that downstream processors can
trust: every ping valid, each fix once, strictly increasing event time.

Static checks (`Validator.check`, also called by the HTTP gateway per record) reject a ping with
a reason an app developer can act on ("lat out of range [-90, 90]"). Rejected pings become
`DeadLetter`s (source "validate") with the ping as compact JSON; so does a ping whose org or
device differs from the batch's (held pings are stored without them).

Duplicates. A device cannot be at two places at one instant and a retry re-sends the fix with
its original timestamp, so two pings of one device with the same `ts_ms` are the same fix; the
second is dropped (counter "duplicate"). That covers a retry with the same seq and the same
(ts, lat, lon). A ping with a known seq but a new timestamp is NOT a duplicate: seq counters
restart when the app is reinstalled or its data cleared, and dropping those pings would lose a
rep's day. Duplicates are found among the pings of the batch, the pings held for ordering, and
what was released before: the current run of seq-contiguous released pings (a range, two ints,
however long: inside it every seq was seen, so a ping with a seq and ts inside it is a retry)
plus the last `dedup_keys` released timestamps (delta-encoded) for devices without usable seq.

Ordering. Downstream state must see strictly increasing event time. Holding every ping for a
fixed time would cost the normal case its latency (facts are due within a second), while
releasing everything at once would make a phone that uploads an offline backlog as several
requests, out of order, turn most of it late. The sequence number tells the two apart: the
oldest held ping is released at once when its seq follows the last released seq (nothing can
be missing before it); when there is a seq gap it waits up to `reorder_hold_ms` of processing
time for the missing pings to arrive, after which it is released anyway (the gap may be pings
the phone never sent). A device without usable seq (seq 0) or seen for the first time cannot
show a gap; its pings are released at once when they are fresh (recorded at most `live_lag_s`
before now; a live upload) and held when they are older (a backlog, the case where chunks
arrive out of order). Release is always oldest first, so a ping never overtakes an older held
one. Costs of this choice: a seq gap the phone itself created (pings it filtered, a restart)
delays the next ping by the hold once; a backlog chunk whose predecessors arrive after the
hold is late.

A ping at or before the newest released event time is LATE: returned separately (stored
flagged late, used as evidence by lost contact) and never fed to stateful processors.

Phone clock ahead. A fix cannot be recorded after the gateway received it, so for every fix
`ts_ms - received_ms` is a lower bound of how far the phone's clock runs ahead, and an
upload's freshest fix (seconds old on a live phone) makes it a tight one. Per upload (the
requests sharing a `received_ms`) the validator keeps that value of the freshest fix; when the
last `clock_uploads` uploads agree within `clock_spread_s`, each brought newer fixes than the
previous, and the largest value exceeds `clock_fix_min_s`, the phone's clock is wrong by a
stable offset and every ping's event time is shifted back by it (the largest value: the
tightest bound; corrected times err late by the smallest receive latency seen, seconds live).
An upload that also holds a fix stamped within `clock_spread_s` before its arrival is evidence
of a right clock (its fixes ahead are garbage, or another clock source), whatever its freshest
fix says. The edge still rejects the future-stamped records (the phone is told, and its
original record with the phone's `ts_ms` is the dead letter); the topology hands them here
(`future`), and they rejoin the stream once corrected. Until the offset is established they
are held (at most `clock_max_held`, none older than the uploads under consideration), then
corrected with it, so the first uploads of a wrong clock are not lost. Only a clock AHEAD is
corrected: old event times are what a phone uploading an offline backlog legitimately sends. A
fix still in the future after the correction (garbage, not a clock) stays rejected; so do
future fixes whose offsets do not agree across uploads, or that repeat a fix already seen (a
retry is no new evidence). The offset follows a changed clock once `clock_uploads` uploads
agree on a new value (up to a tighter bound within `clock_spread_s`, to another value beyond
it, or off below `clock_fix_min_s`); a backlog upload, whose freshest fix is old, does not
move it. Cost: when the phone's clock gets fixed, its pings of the next `clock_uploads` - 1
uploads are shifted too far back and come out late; for a clock ahead by less than the edge's
`max_future_s`, the pings before the offset is established go through uncorrected, and about
the offset's worth of pings after it come out late. `clock_offset_ms` in the state is the
correction applied (raw phone time = event time + it).

Counters partition the input: accepted (passed on in order, now or from the buffer), late,
duplicate, rejected; plus "reorder_overflow" when the buffer cap forces a release. Of the
future-stamped pings the edge hands on, each is either corrected into the stream (then
accepted, late or duplicate; "clock_corrected" counts every shifted ping) or
"future_rejected" (its dead letter came from the edge).

Parameters (`ValidateParams`, config section `[validate]`):

- `max_future_s` (300): a ping stamped more than this many seconds ahead of the processing
  clock is rejected (a wrong phone clock would otherwise poison ordering).
- `retention_days` (90): a ping older than this is rejected; raw data is kept no longer.
- `max_accuracy_m` (10000): a reported accuracy above this is no fix at all and is rejected;
  the smoother gates far lower.
- `reorder_hold_ms` (10000): processing time a ping after a seq gap (or a stale ping of a device
  without seq) is held to be merged with older pings that arrive just after it. 0 disables
  holding. A backlog upload comes as chunks 1.5 s apart in any order; on the tuning seeds'
  "uploads" scenario (`evaluate --sweep validate.reorder_hold_ms 2000,10000,30000`) 2 s left
  the slow uploader's later chunks late (fence F1 0.896, mileage error 5.9 %), 10 s took them
  all (fence F1 1.0, mileage 0.9 %, visits F1 0.874 -> 0.884); 30 s adds little (visits 0.904)
  for three times the delay. Live uploads have no seq gap and are never held.
- `live_lag_s` (120): for pings that cannot be checked for a seq gap, how old (event time
  against the processing clock) a ping may be and still count as a live upload released at
  once.
- `dedup_keys` (32): how many recently released timestamps per device are remembered for
  duplicate detection beyond the seq-contiguous run (a quarter of this for late pings). About
  6 bytes of state each.
- `max_held` (2000): most pings held per device; beyond it the oldest are released at once.
  A held ping costs about 100 bytes of state, only while a gap is open; in the steady state
  the whole validator state is about 240 bytes of JSON (about 340 while a clock is
  corrected).
- `clock_fix_min_s` (60): smallest stable clock offset corrected. Smaller skews shift visits
  and fence events by less than the product's one-minute timing target, and a phone's own
  clock is often a few seconds off.
- `clock_uploads` (3): consecutive uploads whose offsets must agree before it is corrected
  (or changed). Two could be a fix retried once; three uploads each with newer fixes and one
  offset are a clock. The tuning seeds' skewed phone (10 min ahead) locks at its third upload,
  and its two held uploads are recovered.
- `clock_spread_s` (120): how far the per-upload offsets may differ and still agree. They
  differ by the age of the freshest fix at arrival: seconds live (under 5 s in the
  evaluation, fixes every 5 s); 120 s leaves room for a slow network or a queue before the
  gateway, and still tells a clock from random garbage stamps. It is also how close to its
  arrival a fix must be stamped to prove the clock right (see "Phone clock ahead").
- `clock_max_held` (120): most future-stamped pings held while the offset is not established
  (two uploads at 1 s sampling); about 100 bytes each, only during those uploads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, ClassVar, Self

from pipeline.events import DEVICE_STATE_KINDS, PROVIDERS, DeadLetter, DeviceState, Ping, make_id
from pipeline.processors.base import NO_TIMER, Ctx, Result, SerialisableState

_INF = math.inf
_BY_TS = attrgetter("ts_ms")
_PROVIDER_LIST = ", ".join(sorted(PROVIDERS))
_KIND_LIST = ", ".join(sorted(DEVICE_STATE_KINDS))

# Layout of a held ping in the state (a plain list, JSON-friendly; org/device come from ctx).
_H_ARRIVAL, _H_TS, _H_SEQ = 0, 1, 2


@dataclass(slots=True)
class ValidateParams:
    max_future_s: float = 300.0
    retention_days: float = 90.0
    max_accuracy_m: float = 10_000.0
    reorder_hold_ms: int = 10000
    live_lag_s: float = 120.0
    dedup_keys: int = 32
    max_held: int = 2000
    clock_fix_min_s: float = 60.0
    clock_uploads: int = 3
    clock_spread_s: float = 120.0
    clock_max_held: int = 120


@dataclass(slots=True)
class ValidateState(SerialisableState):
    """Per-device ordering state: about 300 B of JSON in the steady state (short names, fields
    at their defaults left out), plus the held pings while a gap is open."""

    _json_names: ClassVar[dict[str, str]] = {
        "released_ts": "ts",
        "released_seq": "seq",
        "run_first_ts": "run_ts",
        "run_first_seq": "run_seq",
        "recent_gaps": "gaps",
        "late_ts": "late",
        "clock_offset_ms": "clock",
        "clock_uploads": "uploads",
    }

    # Pings waiting for ordering, oldest event time first:
    # [arrival_ms, ts_ms, seq, lat, lon, accuracy_m, speed_mps, bearing_deg, altitude_m,
    #  provider, is_mock, battery_pct, received_ms]
    held: list[list[Any]] = field(default_factory=list)
    released_ts: int | None = None  # watermark: event time of the newest released ping
    released_seq: int | None = None  # its seq
    # Start of the run of seq-contiguous released pings that ends at the watermark.
    run_first_ts: int | None = None
    run_first_seq: int | None = None
    # Recently released timestamps: gaps between consecutive ones, the last ending at
    # released_ts (so the newest key is released_ts, the one before released_ts - gaps[-1] ...).
    # An array of int64 in memory (8 B a gap, not a 32 B int object each), a list in JSON.
    recent_gaps: array = field(default_factory=lambda: array("q"))
    late_ts: list[int] = field(default_factory=list)  # recent late pings, for their retries
    # Phone clock: the correction applied to every ping (0 = none; raw ts = ts + offset), the
    # last uploads while one is considered or applied ([received_ms, freshest raw ts]), and
    # future-stamped pings waiting for an offset (held layout, arrival = received_ms).
    clock_offset_ms: int = 0
    clock_uploads: list[list[int]] = field(default_factory=list)
    clock_held: list[list[Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = SerialisableState.to_dict(self)
        if "gaps" in data:
            data["gaps"] = self.recent_gaps.tolist()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = super(ValidateState, cls).from_dict(data)
        state.recent_gaps = array("q", state.recent_gaps)
        return state


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def ping_payload(ping: Ping) -> bytes:
    """A compact JSON encoding of a ping (non-finite numbers as strings, so it stays JSON)."""
    data = {k: _json_safe(v) for k, v in dataclasses.asdict(ping).items()}
    return json.dumps(data, separators=(",", ":"), default=str).encode()


class Validator:
    def __init__(self, params: ValidateParams | None = None) -> None:
        self.params = p = params or ValidateParams()
        self._future_ms = int(p.max_future_s * 1000)
        self._retention_ms = int(p.retention_days * 86_400_000)
        self._max_accuracy = float(p.max_accuracy_m)
        self._hold_ms = int(p.reorder_hold_ms)
        self._live_lag_ms = int(p.live_lag_s * 1000)
        self._dedup_gaps = max(0, int(p.dedup_keys) - 1)  # the newest key is released_ts itself
        self._late_keys = max(1, int(p.dedup_keys) // 4)
        self._max_held = max(1, int(p.max_held))
        self._clock_min_ms = int(p.clock_fix_min_s * 1000)
        self._clock_uploads = max(1, int(p.clock_uploads))
        self._clock_spread_ms = int(p.clock_spread_s * 1000)
        self._clock_max_held = max(0, int(p.clock_max_held))

    def initial_state(self) -> ValidateState:
        return ValidateState()

    # ------------------------------------------------------------------ static checks

    def check(self, ping: Ping, now_ms: int) -> str | None:
        """Why the ping is unusable, in words for an app developer; None when it is valid."""
        # Fast path: one expression that only valid pings pass (NaN fails every comparison).
        try:
            ts = ping.ts_ms
            lat = ping.lat
            lon = ping.lon
            speed = ping.speed_mps
            bearing = ping.bearing_deg
            altitude = ping.altitude_m
            battery = ping.battery_pct
            if (
                type(ts) is int
                and now_ms - self._retention_ms <= ts <= now_ms + self._future_ms
                and -90.0 <= lat <= 90.0
                and -180.0 <= lon <= 180.0
                and (lat != 0.0 or lon != 0.0)
                and 0.0 <= ping.accuracy_m <= self._max_accuracy
                and type(ping.seq) is int
                and ping.seq >= 0
                and ping.provider in PROVIDERS
                and (speed is None or 0.0 <= speed < _INF)
                and (bearing is None or 0.0 <= bearing <= 360.0)
                and (altitude is None or -_INF < altitude < _INF)
                and (battery is None or 0.0 <= battery <= 100.0)
                and type(ping.device_id) is str
                and ping.device_id
                and type(ping.org_id) is str
                and ping.org_id
            ):
                return None
        except TypeError:
            pass
        return self._reason(ping, now_ms)

    def _reason(self, ping: Ping, now_ms: int) -> str | None:
        """The detailed check behind `check`: the first problem found, in words."""
        for name in ("org_id", "device_id"):
            value = getattr(ping, name)
            if not isinstance(value, str) or not value:
                return f"{name} must be a non-empty string"
        if type(ping.seq) is not int:
            return "seq must be an integer"
        if ping.seq < 0:
            return "seq must be >= 0"
        reason = self._time_reason(ping.ts_ms, now_ms)
        if reason:
            return reason
        lat, lon = ping.lat, ping.lon
        if not _finite(lat):
            return "lat is not a finite number"
        if not -90.0 <= lat <= 90.0:
            return "lat out of range [-90, 90]"
        if not _finite(lon):
            return "lon is not a finite number"
        if not -180.0 <= lon <= 180.0:
            return "lon out of range [-180, 180]"
        if lat == 0.0 and lon == 0.0:
            return "position (0, 0) is not a real fix"
        if not _finite(ping.accuracy_m):
            return "accuracy_m is not a finite number"
        if ping.accuracy_m < 0.0:
            return "accuracy_m must be >= 0"
        if ping.accuracy_m > self._max_accuracy:
            return f"accuracy_m above {self._max_accuracy:g} m is not a usable fix"
        if ping.speed_mps is not None and not (_finite(ping.speed_mps) and ping.speed_mps >= 0.0):
            return "speed_mps must be finite and >= 0"
        bearing = ping.bearing_deg
        if bearing is not None and not (_finite(bearing) and 0.0 <= bearing <= 360.0):
            return "bearing_deg must be finite and in [0, 360]"
        if ping.altitude_m is not None and not _finite(ping.altitude_m):
            return "altitude_m is not a finite number"
        try:
            known_provider = ping.provider in PROVIDERS
        except TypeError:
            known_provider = False
        if not known_provider:
            return f"provider must be one of {_PROVIDER_LIST}"
        battery = ping.battery_pct
        if battery is not None:
            if not _finite(battery):
                return "battery_pct is not a finite number"
            if not 0.0 <= battery <= 100.0:
                return "battery_pct out of range [0, 100]"
        return None

    def _time_reason(self, ts: Any, now_ms: int) -> str | None:
        if isinstance(ts, float) and not math.isfinite(ts):
            return "ts_ms is not a finite number"
        if type(ts) is not int:
            return "ts_ms must be an integer (epoch milliseconds)"
        if ts > now_ms + self._future_ms:
            return f"timestamp {round((ts - now_ms) / 1000)} s in the future"
        if ts < now_ms - self._retention_ms:
            return f"timestamp older than the {self.params.retention_days:g}-day retention window"
        return None

    def check_state(self, ev: DeviceState, now_ms: int) -> str | None:
        """Why a device-state event is unusable; None when it is valid."""
        for name in ("org_id", "device_id"):
            value = getattr(ev, name)
            if not isinstance(value, str) or not value:
                return f"{name} must be a non-empty string"
        try:
            known_kind = ev.kind in DEVICE_STATE_KINDS
        except TypeError:
            known_kind = False
        if not known_kind:
            return f"kind must be one of {_KIND_LIST}"
        return self._time_reason(ev.ts_ms, now_ms)

    # ------------------------------------------------------------------ stream

    def process(
        self,
        state: ValidateState,
        pings: list[Ping],
        ctx: Ctx,
        out: Result,
        future: list[Ping] | tuple[Ping, ...] = (),
    ) -> tuple[list[Ping], list[Ping]]:
        """Check, de-duplicate and order a batch: returns (in order, late).

        `future` are the batch's pings the edge rejected as stamped too far ahead: evidence of
        the phone's clock, and used once corrected (module docstring, "Phone clock ahead")."""
        now = ctx.now_ms
        counters = out.counters
        valid: list[Ping] = []
        for p in pings:
            reason = self.check(p, now)
            if reason is None and (p.device_id != ctx.device_id or p.org_id != ctx.org_id):
                reason = (
                    f"ping of {p.org_id}/{p.device_id} in a batch of {ctx.org_id}/{ctx.device_id}"
                )
            if reason is None:
                valid.append(p)
                continue
            counters["rejected"] += 1
            received = p.received_ms if type(p.received_ms) is int and p.received_ms else now
            out.dead_letters.append(
                DeadLetter(
                    id=make_id(ctx.org_id, ctx.device_id, "dead_letter", p.ts_ms, p.seq, reason),
                    org_id=ctx.org_id,
                    device_id=ctx.device_id,
                    received_ms=received,
                    source="validate",
                    reason=reason,
                    payload=ping_payload(p),
                )
            )
        if len(valid) > 1:
            valid.sort(key=_BY_TS)
        last = valid[-1] if valid else None
        if (
            future
            or state.clock_offset_ms
            or state.clock_uploads
            or (last and last.received_ms and last.ts_ms - last.received_ms > self._clock_min_ms)
        ):
            valid = self._clock(state, valid, future, ctx, out)
        if not valid:
            return [], []

        held = state.held
        held_ts = {h[_H_TS] for h in held} if held else None
        watermark = state.released_ts
        fresh: list[Ping] = []
        late: list[Ping] = []
        duplicates = 0
        prev_ts = None
        for p in valid:
            ts = p.ts_ms
            if ts == prev_ts or (held_ts is not None and ts in held_ts):
                duplicates += 1
                continue
            prev_ts = ts
            if watermark is not None and ts <= watermark:
                if self._seen(state, ts, p.seq):
                    duplicates += 1
                else:
                    late.append(p)
                    state.late_ts.append(ts)
                continue
            fresh.append(p)
        if duplicates:
            counters["duplicate"] += duplicates
        if late:
            counters["late"] += len(late)
            if len(state.late_ts) > self._late_keys:
                del state.late_ts[: len(state.late_ts) - self._late_keys]
        if not fresh:
            return [], late
        counters["accepted"] += len(fresh)

        in_order: list[Ping] = []
        if not held:
            # Common case: nothing waits, so release straight from the batch without
            # serialising, up to the first ping that has to wait.
            i = self._release_batch(state, fresh, now, in_order)
            if i < len(fresh):
                held.extend(_to_held(p, now) for p in fresh[i:])
        else:
            held.extend(_to_held(p, now) for p in fresh)
            held.sort(key=_held_ts)
            self._drain(state, ctx, now, False, in_order)
        if len(held) > self._max_held:
            excess = len(held) - self._max_held
            counters["reorder_overflow"] += excess
            self._release_front(state, ctx, excess, in_order)
            self._drain(state, ctx, now, False, in_order)
        return in_order, late

    def next_tick_ms(self, state: ValidateState) -> int:
        """When `release` may next let a held ping go: the oldest one's hold ends (the other
        ways out, continuing the released run or being live, do not open with time)."""
        return state.held[0][_H_ARRIVAL] + self._hold_ms if state.held else NO_TIMER

    def release(self, state: ValidateState, ctx: Ctx, force: bool = False) -> list[Ping]:
        """Release held pings whose hold expired (all with `force`), oldest first."""
        if not state.held:
            return []
        released: list[Ping] = []
        self._drain(state, ctx, ctx.now_ms, force, released)
        return released

    # ------------------------------------------------------------------ phone clock

    def _clock(
        self,
        state: ValidateState,
        valid: list[Ping],
        future: list[Ping] | tuple[Ping, ...],
        ctx: Ctx,
        out: Result,
    ) -> list[Ping]:
        """Track the phone's clock offset; the batch corrected by it (plus the future-stamped
        pings it recovers), or as it is while there is none (future pings then wait)."""
        counters = out.counters
        usable: list[Ping] = []
        for p in future:
            if (
                type(p.ts_ms) is int
                and type(p.received_ms) is int
                and p.device_id == ctx.device_id
                and p.org_id == ctx.org_id
            ):
                usable.append(p)
            else:
                counters["future_rejected"] += 1  # the edge already wrote its dead letter
        freshest = valid[-1] if valid else None
        for p in usable:
            if freshest is None or p.ts_ms > freshest.ts_ms:
                freshest = p
        received = freshest.received_ms if freshest is not None else 0
        if freshest is not None and type(received) is int and received:
            ts = freshest.ts_ms
            if ts > received and valid:
                # A fix stamped in the last moments before arrival says the clock is right:
                # fixes ahead beside it are garbage (or another clock source), not this clock.
                i = bisect_left(valid, received - self._clock_spread_ms, key=_BY_TS)
                if i < len(valid) and valid[i].ts_ms <= received:
                    ts = received
            self._track_clock(state, ts, received)

        offset = state.clock_offset_ms
        waiting = state.clock_held
        if not offset:
            uploads = state.clock_uploads
            if waiting:
                # Keep only what the uploads under consideration may still vouch for.
                oldest = uploads[0][0] if uploads else _INF
                kept = [h for h in waiting if h[_H_ARRIVAL] >= oldest]
                if len(kept) < len(waiting):
                    counters["future_rejected"] += len(waiting) - len(kept)
                    waiting[:] = kept
            if usable:
                if uploads:
                    waiting.extend(_to_held(p, p.received_ms) for p in usable)
                else:
                    counters["future_rejected"] += len(usable)
                if len(waiting) > self._clock_max_held:
                    excess = len(waiting) - self._clock_max_held
                    counters["future_rejected"] += excess
                    del waiting[:excess]
            return valid

        corrected = [_shifted(p, offset) for p in valid]
        if waiting or usable:
            recovered = [_from_held(h, ctx.org_id, ctx.device_id) for h in waiting]
            recovered.extend(usable)
            waiting.clear()
            now = ctx.now_ms
            for p in recovered:
                q = _shifted(p, offset)
                if self.check(q, now) is None:
                    corrected.append(q)
                else:
                    counters["future_rejected"] += 1  # still ahead: garbage, not the clock
            corrected.sort(key=_BY_TS)
        counters["clock_corrected"] += len(corrected)
        return corrected

    def _track_clock(self, state: ValidateState, ts: int, received: int) -> None:
        """Add an upload's freshest fix to the evidence and update the offset from it."""
        uploads = state.clock_uploads
        offset = state.clock_offset_ms
        if not offset and ts - received <= self._clock_min_ms:
            if uploads:
                uploads.clear()  # a fine clock in between: the streak is broken
            return
        if uploads and received <= uploads[-1][0]:
            if received < uploads[-1][0] or ts <= uploads[-1][1]:
                return
            uploads[-1][1] = ts  # another request of the same upload
        else:
            uploads.append([received, ts])
            if len(uploads) > self._clock_uploads:
                del uploads[0]
        if len(uploads) < self._clock_uploads:
            return
        low = high = uploads[0][1] - uploads[0][0]
        previous_ts = uploads[0][1]
        for upload_received, upload_ts in uploads[1:]:
            if upload_ts <= previous_ts:
                return  # no newer fixes: a retry or a stale backlog says nothing of the clock
            previous_ts = upload_ts
            ahead = upload_ts - upload_received
            low = min(low, ahead)
            high = max(high, ahead)
        if high - low > self._clock_spread_ms:
            return
        if high <= self._clock_min_ms:
            state.clock_offset_ms = 0  # the clock was fixed
            uploads.clear()
        elif high > offset or high < offset - self._clock_spread_ms:
            state.clock_offset_ms = high

    # ------------------------------------------------------------------ internals

    def _release_batch(
        self, state: ValidateState, fresh: list[Ping], now: int, into: list[Ping]
    ) -> int:
        """Release the batch's pings in order up to the first that has to wait (nothing is
        held); how many went. `_mark_released` per ping, its bookkeeping done once."""
        released_ts = state.released_ts
        released_seq = state.released_seq
        run_ts = state.run_first_ts
        run_seq = state.run_first_seq
        gaps = state.recent_gaps
        keep = self._dedup_gaps
        n = 0
        for p in fresh:
            seq = p.seq
            ts = p.ts_ms
            if released_seq is not None and seq == released_seq + 1:
                pass  # continues the released run (the common case of `_releasable`)
            elif self._releasable(seq, ts, now, released_seq, now):
                run_ts = ts
                run_seq = seq
            else:
                break
            if released_ts is not None and keep:
                gaps.append(ts - released_ts)
            released_ts = ts
            released_seq = seq
            into.append(p)
            n += 1
        if n:
            if len(gaps) > keep:
                del gaps[: len(gaps) - keep]
            state.released_ts = released_ts
            state.released_seq = released_seq
            state.run_first_ts = run_ts
            state.run_first_seq = run_seq
        return n

    def _releasable(self, seq: int, ts: int, arrival: int, last_seq: int | None, now: int) -> bool:
        """May the oldest waiting ping go now (see the module docstring for the rule)?
        `last_seq` is the seq of the newest released ping."""
        if now - arrival >= self._hold_ms:
            return True
        if last_seq is not None and seq == last_seq + 1:
            return True  # continues the released run: nothing can be missing before it
        if last_seq is None or seq == 0:
            return now - ts <= self._live_lag_ms  # cannot see gaps: a live upload goes at once
        return False

    def _drain(
        self, state: ValidateState, ctx: Ctx, now: int, force: bool, into: list[Ping]
    ) -> None:
        held = state.held
        n = 0
        for h in held:
            if not (
                force
                or self._releasable(h[_H_SEQ], h[_H_TS], h[_H_ARRIVAL], state.released_seq, now)
            ):
                break
            self._mark_released(state, h[_H_TS], h[_H_SEQ])
            into.append(_from_held(h, ctx.org_id, ctx.device_id))
            n += 1
        if n:
            del held[:n]

    def _release_front(self, state: ValidateState, ctx: Ctx, count: int, into: list[Ping]) -> None:
        held = state.held
        for h in held[:count]:
            self._mark_released(state, h[_H_TS], h[_H_SEQ])
            into.append(_from_held(h, ctx.org_id, ctx.device_id))
        del held[:count]

    def _mark_released(self, state: ValidateState, ts: int, seq: int) -> None:
        last_ts = state.released_ts
        if last_ts is not None and self._dedup_gaps:
            gaps = state.recent_gaps
            gaps.append(ts - last_ts)
            if len(gaps) > self._dedup_gaps:
                del gaps[0]
        if state.released_seq is None or seq != state.released_seq + 1:
            state.run_first_ts = ts
            state.run_first_seq = seq
        state.released_ts = ts
        state.released_seq = seq

    def _seen(self, state: ValidateState, ts: int, seq: int) -> bool:
        """Was a ping at or before the watermark already released (or returned late)?"""
        watermark = state.released_ts
        if watermark is None:
            return False
        if ts == watermark:
            return True
        first_ts, first_seq = state.run_first_ts, state.run_first_seq
        if (
            first_ts is not None
            and first_seq is not None
            and first_ts <= ts
            and first_seq <= seq <= state.released_seq  # type: ignore[operator]
        ):
            return True
        key = watermark
        for gap in reversed(state.recent_gaps):
            key -= gap
            if key <= ts:
                if key == ts:
                    return True
                break
        return ts in state.late_ts


def _held_ts(h: list[Any]) -> int:
    return h[_H_TS]  # type: ignore[no-any-return]


def _to_held(p: Ping, arrival: int) -> list[Any]:
    return [
        arrival,
        p.ts_ms,
        p.seq,
        p.lat,
        p.lon,
        p.accuracy_m,
        p.speed_mps,
        p.bearing_deg,
        p.altitude_m,
        p.provider,
        p.is_mock,
        p.battery_pct,
        p.received_ms,
    ]


def _shifted(p: Ping, offset_ms: int) -> Ping:
    """A copy of the ping with the phone's clock offset taken out of its event time."""
    return Ping(
        p.org_id,
        p.device_id,
        p.seq,
        p.ts_ms - offset_ms,
        p.lat,
        p.lon,
        p.accuracy_m,
        p.speed_mps,
        p.bearing_deg,
        p.altitude_m,
        p.provider,
        p.is_mock,
        p.battery_pct,
        p.received_ms,
    )


def _from_held(h: list[Any], org_id: str, device_id: str) -> Ping:
    return Ping(
        org_id, device_id, h[2], h[1], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11], h[12]
    )
