"""Lost contact: notice when a phone goes silent during work hours and say why.

"Contact" means location data: a device is in contact while its pings keep arriving. Device
states (shutdown, gps_off, ...) are remembered as evidence but do not count as contact, because
a phone that reports `gps_off` and then keeps quiet is exactly the case ops must hear about.
Silence is measured on the processing clock, so a phone with a wrong clock cannot hide or fake
a silence: from the receive time of the last upload of pings, moved back by how much older its
newest fix was than usual. A phone whose GPS goes off at T uploads its last fix at T + up to
one upload interval and then keeps quiet; its location data stopped at T, not at the upload.
"Older than usual" = the upload's lag (receive time minus the newest fix's event time) minus
the lag of the previous upload that brought a newer fix; the difference cancels the phone's
clock offset and network latency, and is capped at `upload_slack_s`. On the tuning seeds this
moves gps_off / permission_revoked alerts 31-54 s earlier (their last fix is uploaded that
long after it was taken); a phone that dies between uploads has a usual lag, so nothing
changes there. Pings that bring no newer fix (an old backlog chunk) restart the silence from
their receive time: contact means pings keep arriving.

Episode life cycle (one alert per episode, not per tick):

1. `tick`: silence (above) longer than `silence_limit_s` -> open an episode and emit
   LOST_CONTACT (warning) with the reason inferred from what is known at that moment.
2. `on_device_state`: states keep arriving late (a phone uploads "shutdown" when it boots
   again); while an episode is open they refine its reason. The LOST_CONTACT alert already
   stored keeps what was known when it fired; no second alert is raised.
3. `observe`: the first pings after the silence end the episode; the first `tick`
   `restore_settle_s` later emits CONTACT_RESTORED (info) carrying the refined reason, the
   gap length and how many buffered pings were recorded inside the gap. A backlog arrives in
   several requests (chunks of 40-150 records 1.5 s apart in the simulator, a retry at the
   end), and the first chunk alone may hold only the newest pings, all within
   `upload_slack_s` of the gap's end: judged on it, an hour offline read as "unknown".
   Waiting for the tick also means every state received up to then counts (a phone uploads
   states and pings in separate requests, and on Kafka they are read from separate topics),
   and decisions only use states received by the moment judged, so the result does not
   depend on which request was read first.

Work hours: an episode is opened only if the device's schedule (`ctx.schedule`, None = always)
is active at the moment the limit passes (silence start + `silence_limit_s`). A silence
that starts before the end of the shift but whose limit passes after it never alerts, which
also covers a phone switched off at the end of the shift. A phone that never reports at the
start of a shift is not an episode either (that is attendance, not lost contact). A device
never seen is not alerted.

Explicit shutdown: a `shutdown` state received after the last fix raises the alert after only
`shutdown_alert_s` of silence instead of `silence_limit_s`: a manager hears quickly that the
phone was switched off, while the shorter guard still absorbs a quick reboot (30-90 s). It is
still subject to the work-hours rule above (same deadline), so switching off just before the
end of the shift stays quiet. Set `shutdown_alert_s = silence_limit_s` to disable.

Reason inference. States "about this silence" are the ones after the last fix: a cause kind
(shutdown, app_killed, gps_off, permission_revoked, network_off, airplane_on) at or after
last fix - `state_slack_s`, a recovery kind (boot, app_start, gps_on, permission_granted,
network_on, airplane_off) strictly after the last fix. Precedence follows the causal chain
power -> app -> location sensing -> delivery: when a lower link is broken the higher ones are
irrelevant (a reboot naturally also produces app_start and gps_on; a dead app records nothing,
whatever the network does), so the lowest broken link is the cause:

1. recording pings (restore only): pings whose event times lie well inside the gap
   (`upload_slack_s` away from both ends) arrived afterwards -> no_network. They physically
   prove the phone was on, the app alive and location on, so they outrank any state.
2. shutdown / boot -> powered_off, or battery_died if the last battery <= `battery_died_pct`
3. app_killed / app_start -> app_killed
4. gps_off / gps_on -> location_off
5. permission_revoked / permission_granted -> permission_revoked
6. airplane_on/off, network_off/on -> no_network
7. last battery reading <= `battery_died_pct` -> battery_died (died without reporting)
8. a battery_low state after the last fix -> battery_died
9. otherwise unknown

The battery reading is the newest `battery_pct` of a ping, or a numeric `detail` of a
`battery_low` state ("4" or "4%") if newer.

Ids: LOST_CONTACT `make_id(org, device, "lost_contact", start_ms)`, where start_ms is the event
time of the last fix before the silence (stable under replay, unlike receive or tick times);
CONTACT_RESTORED `make_id(org, device, "contact_restored", <lost-contact id>)`. In the rare case
that contact was restored by pings no newer than that fix and the phone falls silent again, the
receive time is appended so the second episode gets its own id.

Parameters (`ContactParams`, section `[contact]`):

- `silence_limit_s` (600): no ping received for longer than this during work hours raises
  LOST_CONTACT.
- `battery_died_pct` (5): a last battery reading at or below this explains a silence as
  battery_died (also turns an explicit shutdown or reboot into battery_died).
- `shutdown_alert_s` (180): after a received `shutdown` state, alert after this much silence
  instead of `silence_limit_s`; the guard against a quick reboot.
- `state_slack_s` (30): a cause state up to this long before the last fix still counts as
  explaining the silence (fix timestamps and state timestamps come from different APIs).
- `upload_slack_s` (120): pings within this of either end of the gap do not prove the phone
  was recording during it (the last, not yet uploaded batch before a shutdown; the first
  fresh batch after it). Should exceed the phones' upload interval. Also the most a silence
  start is moved back for an unusually old last fix (a phone holds a fix at most one upload
  interval; 54 s was the largest seen on the tuning seeds).
- `restore_settle_s` (30): CONTACT_RESTORED waits this long after the first pings that end
  the silence, so a backlog sent in several requests counts whole: an hour at 5 s sampling is
  720 pings, up to 18 chunks 1.5 s apart plus a retry (< 30 s). A fixed delay, not "until
  quiet", so a phone streaming every fix (Traccar, OwnTracks) is not held back. Judged
  after the first chunk (a 0.5-1 s timer), one of 60 hourly backlogs (tuning + held-out
  seeds, simulator) read as "unknown"; the restore alert is informational, 30 s is cheap.
- `min_recording_pings` (1): this many pings recorded well inside the gap make the reason
  no_network.
- `max_recent_states` (8): how many contact-relevant device states are kept (newest by
  event time); integrity states (mock app, root, ...) are not kept here.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from pipeline.events import (
    Alert,
    AlertType,
    ContactReason,
    DeviceState,
    Ping,
    Severity,
    evidence,
    make_id,
)
from pipeline.processors.base import NO_TIMER, Ctx, Result, SerialisableState
from pipeline.reference.models import schedule_active

__all__ = ["ContactMonitor", "ContactParams", "ContactState"]


@dataclass(slots=True)
class ContactParams:
    """Lost-contact thresholds; see the module docstring for what each one does."""

    silence_limit_s: float = 600.0
    battery_died_pct: float = 5.0
    shutdown_alert_s: float = 180.0
    state_slack_s: float = 30.0
    upload_slack_s: float = 120.0
    restore_settle_s: float = 30.0
    min_recording_pings: int = 1
    max_recent_states: int = 8


@dataclass(slots=True)
class ContactState(SerialisableState):
    """Per-device contact state; a few dozen numbers, bounded by `max_recent_states`.

    JSON: short names (`_json_names`), fields at their defaults left out, and the two times
    that usually repeat another one left out when they do (`silence_from_ms` equal to
    `last_rx_ms`, `last_battery_ms` equal to `last_fix_ms`): about 180 B between episodes.
    """

    _json_names: ClassVar[dict[str, str]] = {
        "last_rx_ms": "rx",
        "silence_from_ms": "silence",
        "fix_lag_ms": "lag",
        "last_fix_ms": "fix",
        "last_lat": "lat",
        "last_lon": "lon",
        "last_battery_pct": "bat",
        "last_battery_ms": "bat_ms",
        "recent_states": "states",
        "episode_id": "ep",
        "episode_start_ms": "ep_start",
        "episode_rx_ms": "ep_rx",
        "episode_opened_ms": "ep_opened",
        "alert_reason": "ep_alerted",
        "episode_reason": "ep_reason",
        "prev_episode_start_ms": "prev_ep_start",
        "settled_rx_ms": "settled",
        "pending_restore": "restore",
    }

    last_rx_ms: int | None = None  # processing time the newest ping was received
    # Processing time the silence is measured from: last_rx_ms, minus how much older than
    # usual the newest fix was when it arrived (see the module docstring).
    silence_from_ms: int | None = None
    fix_lag_ms: int | None = None  # receive minus event time of the newest fix, at its upload
    last_fix_ms: int | None = None  # event time of the newest ping
    last_lat: float | None = None
    last_lon: float | None = None
    last_battery_pct: float | None = None
    last_battery_ms: int | None = None  # event time of that battery reading
    # [ts_ms, kind, received_ms] of contact-relevant device states, sorted by ts, newest last,
    # bounded. received_ms lets a decision at processing time T use only what had arrived by
    # T, whatever order two input streams were read in (device states and pings may be
    # consumed from different Kafka topics).
    recent_states: list[list[Any]] = field(default_factory=list)
    # The open episode (all None when contact is fine).
    episode_id: str | None = None
    episode_start_ms: int | None = None  # event time of the last fix before the silence
    episode_rx_ms: int | None = None  # receive time of that fix
    episode_opened_ms: int | None = None  # when LOST_CONTACT was raised
    alert_reason: str | None = None  # the reason on the LOST_CONTACT alert
    episode_reason: str | None = None  # refined as late states arrive
    prev_episode_start_ms: int | None = None  # keeps ids distinct if a start repeats
    settled_rx_ms: int | None = None  # this silence was judged: outside hours, never alerts
    # Contact came back: [received_ms, buffered, recording, battery before it came back or -1]
    # waiting for a tick `restore_settle_s` later, which emits CONTACT_RESTORED once the
    # backlog and every state received up to then have been seen.
    pending_restore: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = SerialisableState.to_dict(self)
        # Left out when equal to the time they usually repeat; both are set with it, so a
        # missing one with that time present means "the same" (see `from_dict`).
        if self.silence_from_ms is not None and self.silence_from_ms == self.last_rx_ms:
            del data["silence"]
        if self.last_battery_ms is not None and self.last_battery_ms == self.last_fix_ms:
            del data["bat_ms"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = super(ContactState, cls).from_dict(data)
        if state.silence_from_ms is None and "silence_from_ms" not in data:
            state.silence_from_ms = state.last_rx_ms
        if state.last_battery_ms is None and state.last_battery_pct is not None:
            state.last_battery_ms = state.last_fix_ms
        if state.recent_states:
            # One shared string per kind, not one per state entry read from JSON.
            for entry in state.recent_states:
                entry[1] = _KIND_NAMES.get(entry[1], entry[1])
        return state


_POWERED_OFF = ContactReason.POWERED_OFF.value
_APP_KILLED = ContactReason.APP_KILLED.value
_LOCATION_OFF = ContactReason.LOCATION_OFF.value
_PERMISSION_REVOKED = ContactReason.PERMISSION_REVOKED.value
_NO_NETWORK = ContactReason.NO_NETWORK.value
_BATTERY_DIED = ContactReason.BATTERY_DIED.value
_UNKNOWN = ContactReason.UNKNOWN.value

# Kinds that start a condition (may slightly precede the last fix) ...
_CAUSE_KINDS: dict[str, str] = {
    "shutdown": _POWERED_OFF,
    "app_killed": _APP_KILLED,
    "gps_off": _LOCATION_OFF,
    "permission_revoked": _PERMISSION_REVOKED,
    "network_off": _NO_NETWORK,
    "airplane_on": _NO_NETWORK,
}
# ... and kinds that end one (prove it happened only if strictly after the last fix).
_RECOVERY_KINDS: dict[str, str] = {
    "boot": _POWERED_OFF,
    "app_start": _APP_KILLED,
    "gps_on": _LOCATION_OFF,
    "permission_granted": _PERMISSION_REVOKED,
    "network_on": _NO_NETWORK,
    "airplane_off": _NO_NETWORK,
}
_BATTERY_LOW = "battery_low"
_KEPT_KINDS = frozenset({*_CAUSE_KINDS, *_RECOVERY_KINDS, _BATTERY_LOW})
_KIND_NAMES = {kind: kind for kind in _KEPT_KINDS}
# Causal chain: the lowest broken link explains the silence.
_RANK = {
    _POWERED_OFF: 0,
    _APP_KILLED: 1,
    _LOCATION_OFF: 2,
    _PERMISSION_REVOKED: 3,
    _NO_NETWORK: 4,
}
_EVIDENCE_STATES = 4  # how many recent states an alert lists


def _battery_from_detail(detail: str | None) -> float | None:
    """A battery_low state may carry the level as "4" or "4%"."""
    if not detail:
        return None
    try:
        level = float(detail.strip().rstrip("%"))
    except ValueError:
        return None
    return level if 0.0 <= level <= 100.0 else None


def _or_blank(value: float | None) -> float | str:
    return "" if value is None else value


class ContactMonitor:
    """Lost-contact detection and reasons; pure, state passed in by the topology."""

    def __init__(self, params: ContactParams | None = None) -> None:
        self.params = p = params or ContactParams()
        self._limit_ms = int(p.silence_limit_s * 1000)
        self._shutdown_ms = int(min(p.shutdown_alert_s, p.silence_limit_s) * 1000)
        self._slack_ms = int(p.state_slack_s * 1000)
        self._upload_slack_ms = int(p.upload_slack_s * 1000)
        self._settle_ms = int(p.restore_settle_s * 1000)

    def initial_state(self) -> ContactState:
        return ContactState()

    # -- inputs -------------------------------------------------------------------------------

    def on_device_state(self, state: ContactState, ev: DeviceState, ctx: Ctx, out: Result) -> None:
        """Remember a contact-relevant state; refine the open episode's reason with it."""
        kind = ev.kind
        if kind not in _KEPT_KINDS:
            return
        ts = int(ev.ts_ms)
        recent = state.recent_states
        if any(e[0] == ts and e[1] == kind for e in recent):  # a retried upload
            return
        insort(recent, [ts, kind, int(ev.received_ms or ctx.now_ms)])
        if len(recent) > self.params.max_recent_states:
            del recent[0]
        if kind == _BATTERY_LOW:
            level = _battery_from_detail(ev.detail)
            if level is not None and (state.last_battery_ms is None or ts >= state.last_battery_ms):
                state.last_battery_pct = level
                state.last_battery_ms = ts

    def observe(
        self, state: ContactState, in_order: list[Ping], late: list[Ping], ctx: Ctx, out: Result
    ) -> None:
        """Pings arrived at `ctx.now_ms` (`in_order` sorted by event time; `late` ones are
        event-time late, often buffered during a network gap). Closes an open episode."""
        if in_order:
            newest = in_order[-1]
        elif late:
            newest = max(late, key=lambda p: p.ts_ms)
        else:
            return
        now = ctx.now_ms
        # The gateway's receive time is exact when it is on this clock; a ping held by the
        # reorder buffer is otherwise seen later than it arrived.
        rx = newest.received_ms
        if not (0 < rx <= now and now - rx < self._limit_ms):
            rx = now
        if state.episode_id is not None:
            self._note_restore(state, in_order, late, rx)
        if state.last_rx_ms is None or rx > state.last_rx_ms:
            state.last_rx_ms = rx
        silence_from = rx
        if state.last_fix_ms is None or newest.ts_ms > state.last_fix_ms:
            # A newer fix: start the silence when it was taken, if it came older than usual.
            lag = rx - newest.ts_ms
            if state.fix_lag_ms is not None and lag > state.fix_lag_ms:
                silence_from = rx - min(lag - state.fix_lag_ms, self._upload_slack_ms)
            state.fix_lag_ms = lag
            state.last_fix_ms = newest.ts_ms
            state.last_lat = newest.lat
            state.last_lon = newest.lon
        if state.silence_from_ms is None or silence_from > state.silence_from_ms:
            state.silence_from_ms = silence_from
        for p in reversed(in_order):  # usually one step: the newest ping carries the battery
            if p.battery_pct is not None:
                if state.last_battery_ms is None or p.ts_ms >= state.last_battery_ms:
                    state.last_battery_pct = float(p.battery_pct)
                    state.last_battery_ms = p.ts_ms
                break

    def next_tick_ms(self, state: ContactState) -> int:
        """The earliest processing time at which `tick` may act: every tick while an episode
        is open (its reason and restore are re-read), else once the silence passes the
        shutdown threshold (the first point where `tick` looks further)."""
        if state.episode_id is not None and state.episode_start_ms is not None:
            return 0
        last_rx = state.last_rx_ms
        if last_rx is None or state.episode_id is not None or state.settled_rx_ms == last_rx:
            return NO_TIMER
        since = last_rx if state.silence_from_ms is None else min(state.silence_from_ms, last_rx)
        return since + self._shutdown_ms + 1

    def tick(self, state: ContactState, ctx: Ctx, out: Result) -> None:
        """Processing time passed: close a restored episode, open one when the silence limit
        has passed."""
        if state.episode_id is not None and state.episode_start_ms is not None:
            state.episode_reason = self._infer(state, state.episode_start_ms, 0, ctx.now_ms)[0]
            pending = state.pending_restore
            if pending is not None and pending[0] + self._settle_ms <= ctx.now_ms:
                self._restore(state, ctx, out)
        last_rx = state.last_rx_ms
        if last_rx is None or state.episode_id is not None or state.settled_rx_ms == last_rx:
            return
        since = last_rx if state.silence_from_ms is None else min(state.silence_from_ms, last_rx)
        silence_ms = ctx.now_ms - since
        if silence_ms <= self._shutdown_ms:
            return
        early = silence_ms <= self._limit_ms
        if early and not self._shutdown_pending(state, ctx.now_ms):
            return
        if not schedule_active(ctx.schedule, since + self._limit_ms):
            state.settled_rx_ms = last_rx  # limit passes outside work hours: never alerts
            return
        self._open(state, silence_ms, early, ctx, out)

    # -- episode ------------------------------------------------------------------------------

    def _open(
        self, state: ContactState, silence_ms: int, early: bool, ctx: Ctx, out: Result
    ) -> None:
        start = state.last_fix_ms if state.last_fix_ms is not None else state.last_rx_ms
        assert start is not None
        reason, rule = self._infer(state, start, 0, ctx.now_ms)
        if early:
            rule += f"; shutdown reported, alerted after {self.params.shutdown_alert_s:g} s"
        id_parts: tuple[object, ...] = (ctx.org_id, ctx.device_id, "lost_contact", start)
        if start == state.prev_episode_start_ms:  # restored without a newer fix, silent again
            id_parts = (*id_parts, state.last_rx_ms)
        episode_id = make_id(*id_parts)
        state.episode_id = episode_id
        state.episode_start_ms = start
        state.episode_rx_ms = state.last_rx_ms
        state.episode_opened_ms = ctx.now_ms
        state.alert_reason = reason
        state.episode_reason = reason
        out.alerts.append(
            Alert(
                id=episode_id,
                org_id=ctx.org_id,
                device_id=ctx.device_id,
                ts_ms=ctx.now_ms,
                type=AlertType.LOST_CONTACT.value,
                severity=Severity.WARNING.value,
                message=f"No location data for {silence_ms / 1000:.0f} s during work hours; "
                f"likely {reason}",
                evidence=evidence(
                    reason=reason,
                    rule=rule,
                    last_seen_ms=start,
                    last_received_ms=state.last_rx_ms,
                    silence_from_ms=ctx.now_ms - silence_ms,
                    last_lat=_or_blank(state.last_lat),
                    last_lon=_or_blank(state.last_lon),
                    last_battery_pct=_or_blank(state.last_battery_pct),
                    last_states=self._states_text(state),
                    silence_s=silence_ms / 1000,
                    silence_limit_s=float(self.params.silence_limit_s),
                ),
            )
        )
        out.counters["contact_lost"] += 1

    def _note_restore(
        self, state: ContactState, in_order: list[Ping], late: list[Ping], rx: int
    ) -> None:
        """Pings after the silence: count those recorded inside the gap; the next tick emits
        CONTACT_RESTORED."""
        start = state.episode_start_ms
        opened_rx = state.episode_rx_ms
        assert start is not None and opened_rx is not None
        battery = -1.0 if state.last_battery_pct is None else state.last_battery_pct
        pending = state.pending_restore or [rx, 0, 0, battery]
        gap_ms = max(0, pending[0] - opened_rx)
        # Map the gap onto the phone's clock with the latency of the last fix before it; pings
        # near either end may be the unsent tail or the first fresh batch.
        gap_end = start + gap_ms - self._upload_slack_ms
        mid_start = start + self._upload_slack_ms
        for pings in (in_order, late):
            for p in pings:
                ts = p.ts_ms
                if start < ts <= gap_end:
                    pending[1] += 1
                    if ts > mid_start:
                        pending[2] += 1
        state.pending_restore = pending

    def _restore(self, state: ContactState, ctx: Ctx, out: Result) -> None:
        start = state.episode_start_ms
        opened_rx = state.episode_rx_ms
        assert start is not None and opened_rx is not None and state.pending_restore is not None
        rx, buffered, recording, battery = state.pending_restore
        rx, buffered, recording = int(rx), int(buffered), int(recording)
        gap_ms = max(0, rx - opened_rx)
        # the battery as the silence left it, not the fresh reading that ended it
        reason, rule = self._infer(state, start, recording, ctx.now_ms, battery)
        kept = state.episode_reason
        if reason == _UNKNOWN and kept is not None and kept != _UNKNOWN:
            # The evidence left the bounded state list; keep what was inferred while open.
            reason, rule = kept, "inferred while the episode was open"
        restored_id = make_id(ctx.org_id, ctx.device_id, "contact_restored", state.episode_id)
        out.alerts.append(
            Alert(
                id=restored_id,
                org_id=ctx.org_id,
                device_id=ctx.device_id,
                ts_ms=ctx.now_ms,
                type=AlertType.CONTACT_RESTORED.value,
                severity=Severity.INFO.value,
                message=f"Contact restored after {gap_ms / 1000:.0f} s; reason {reason}",
                evidence=evidence(
                    reason=reason,
                    rule=rule,
                    alert_reason=state.alert_reason,
                    lost_contact_id=state.episode_id,
                    gap_s=gap_ms / 1000,
                    last_seen_ms=start,
                    buffered_pings=buffered,
                    recording_pings=recording,
                    last_battery_pct=_or_blank(state.last_battery_pct),
                    last_states=self._states_text(state),
                ),
            )
        )
        out.counters["contact_restored"] += 1
        state.prev_episode_start_ms = start
        state.episode_id = None
        state.episode_start_ms = None
        state.episode_rx_ms = None
        state.episode_opened_ms = None
        state.alert_reason = None
        state.episode_reason = None
        state.pending_restore = None

    # -- inference ----------------------------------------------------------------------------

    def _infer(
        self,
        state: ContactState,
        start_ms: int,
        recording: int,
        now_ms: int,
        battery_at_silence: float | None = None,
    ) -> tuple[str, str]:
        """(reason, rule) for a silence after the fix at `start_ms`, from the states received
        by `now_ms`; see the precedence list."""
        p = self.params
        if p.min_recording_pings > 0 and recording >= p.min_recording_pings:
            return _NO_NETWORK, f"{recording} pings recorded inside the gap arrived afterwards"
        cause_floor = start_ms - self._slack_ms
        best_rank = len(_RANK)
        best: list[Any] | None = None
        battery_low_event = False
        for entry in state.recent_states:
            ts, kind = int(entry[0]), entry[1]
            if len(entry) > 2 and entry[2] > now_ms:
                continue  # arrived after the moment being judged
            cause = _CAUSE_KINDS.get(kind)
            if cause is None:
                cause = _RECOVERY_KINDS.get(kind)
                if cause is None:
                    battery_low_event = battery_low_event or (
                        kind == _BATTERY_LOW and ts >= cause_floor
                    )
                    continue
                if ts <= start_ms:
                    continue
            elif ts < cause_floor:
                continue
            rank = _RANK[cause]
            if rank < best_rank:
                best_rank, best = rank, entry
        battery = state.last_battery_pct if battery_at_silence is None else battery_at_silence
        if battery is not None and battery < 0:
            battery = None  # unknown when the silence began
        battery_low = battery is not None and battery <= p.battery_died_pct
        if best is not None:
            kind = best[1]
            cause = _CAUSE_KINDS.get(kind) or _RECOVERY_KINDS[kind]
            rule = f"{kind} at {best[0]} after the last fix at {start_ms}"
            if cause == _POWERED_OFF and battery_low:
                return _BATTERY_DIED, f"{rule} with battery {battery:g}% <= {p.battery_died_pct:g}%"
            return cause, rule
        if battery_low:
            return _BATTERY_DIED, f"last battery {battery:g}% <= {p.battery_died_pct:g}%"
        if battery_low_event:
            return _BATTERY_DIED, "battery_low state after the last fix"
        return _UNKNOWN, "no device state or battery evidence after the last fix"

    def _shutdown_pending(self, state: ContactState, now_ms: int) -> bool:
        """A shutdown was reported (by now) after the last fix and no boot followed it."""
        floor = (state.last_fix_ms or 0) - self._slack_ms
        pending = False
        for ts, kind, *received in state.recent_states:
            if ts < floor or (received and received[0] > now_ms):
                continue
            if kind == "shutdown":
                pending = True
            elif kind == "boot":
                pending = False
        return pending

    def _states_text(self, state: ContactState) -> str:
        return ",".join(f"{e[1]}@{e[0]}" for e in state.recent_states[-_EVIDENCE_STATES:])
