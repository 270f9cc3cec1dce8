"""Lost-contact processor: episode timing, work hours, reasons, late refinement, state."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from pipeline.events import Alert, AlertType, DeviceState, Ping, make_id
from pipeline.processors.base import Ctx, Result
from pipeline.processors.contact import ContactMonitor, ContactParams, ContactState
from pipeline.reference import ReferenceData
from pipeline.reference.models import Schedule

ORG, DEV = "org1", "dev1"
REF = ReferenceData()
BERLIN = ZoneInfo("Europe/Berlin")
WORK = Schedule.parse("mon-fri 08:00-18:00 Europe/Berlin")
S = 1000  # ms per second
LIMIT = 600 * S


def berlin_ms(hour: int, minute: int = 0, day: int = 12) -> int:
    """Epoch ms of a time on June 2024 in Berlin (the 12th is a Wednesday, 15th a Saturday)."""
    return int(dt.datetime(2024, 6, day, hour, minute, tzinfo=BERLIN).timestamp() * 1000)


T0 = berlin_ms(10)  # Wednesday 10:00, inside work hours


def ctx(now: int, schedule: Schedule | None = WORK) -> Ctx:
    return Ctx(ORG, DEV, now, REF, schedule)


def ping(ts: int, battery: float | None = 50.0, rx: int = 0) -> Ping:
    return Ping(ORG, DEV, ts // S, ts, 52.52, 13.40, 8.0, battery_pct=battery, received_ms=rx)


def dstate(kind: str, ts: int, detail: str | None = None) -> DeviceState:
    return DeviceState(ORG, DEV, ts, kind, detail)


class Harness:
    """Drives one device through the monitor, collecting alerts."""

    def __init__(self, params: ContactParams | None = None, schedule: Schedule | None = WORK):
        # Restores are judged at the tick right after the upload unless a test sets a settle
        # time (the settle tests below); reasons do not depend on it.
        self.mon = ContactMonitor(params or ContactParams(restore_settle_s=0.0))
        self.state = self.mon.initial_state()
        self.schedule = schedule
        self.alerts: list[Alert] = []

    def pings(self, now: int, pings: list[Ping], late: list[Ping] | None = None) -> None:
        """An upload at `now`, then the timers the drivers run after it (which emit a
        deferred CONTACT_RESTORED)."""
        out = Result()
        self.mon.observe(self.state, pings, late or [], ctx(now, self.schedule), out)
        self.mon.tick(self.state, ctx(now, self.schedule), out)
        self.alerts += out.alerts

    def states(self, now: int, *events: DeviceState) -> None:
        out = Result()
        for ev in events:
            self.mon.on_device_state(self.state, ev, ctx(now, self.schedule), out)
        self.alerts += out.alerts

    def tick(self, now: int) -> list[Alert]:
        out = Result()
        self.mon.tick(self.state, ctx(now, self.schedule), out)
        self.alerts += out.alerts
        return out.alerts

    def track(self, start: int, end: int, step_s: int = 5, battery: float = 50.0) -> None:
        """Live pings from start to end inclusive, each received 1 s after recording."""
        for ts in range(start, end + 1, step_s * S):
            self.pings(ts + S, [ping(ts, battery)])

    def of_type(self, kind: AlertType) -> list[Alert]:
        return [a for a in self.alerts if a.type == kind.value]


def lose(h: Harness, last_fix: int) -> Alert:
    """Tick past the limit (silence measured from the last receive, last_fix + 1 s)."""
    fired = h.tick(last_fix + S + LIMIT + 500)
    assert len(fired) == 1 and fired[0].type == AlertType.LOST_CONTACT.value
    return fired[0]


# -- timing and work hours ---------------------------------------------------------------------


def test_alert_exactly_when_limit_passes() -> None:
    h = Harness()
    h.track(T0, T0 + 60 * S)
    last_rx = T0 + 61 * S
    assert h.tick(last_rx + LIMIT) == []  # exactly the limit: not yet
    fired = h.tick(last_rx + LIMIT + 1)
    assert len(fired) == 1
    alert = fired[0]
    assert alert.severity == "warning"
    assert alert.ts_ms == last_rx + LIMIT + 1
    assert alert.evidence["last_seen_ms"] == str(T0 + 60 * S)
    assert alert.evidence["last_received_ms"] == str(last_rx)
    assert alert.evidence["silence_s"] == "600.001"
    assert alert.evidence["last_lat"] == "52.52"
    assert alert.evidence["last_battery_pct"] == "50"


def test_one_alert_per_episode_across_many_ticks() -> None:
    h = Harness()
    h.track(T0, T0 + 30 * S)
    for now in range(T0, T0 + 3 * 3600 * S, 500):
        h.tick(now)
    assert len(h.of_type(AlertType.LOST_CONTACT)) == 1
    assert h.of_type(AlertType.CONTACT_RESTORED) == []


def test_new_episode_after_restore_gets_new_alert() -> None:
    h = Harness()
    h.track(T0, T0 + 30 * S)
    first = lose(h, T0 + 30 * S)
    back = T0 + 3600 * S
    h.track(back, back + 30 * S)
    second = lose(h, back + 30 * S)
    assert first.id != second.id
    assert len(h.of_type(AlertType.CONTACT_RESTORED)) == 1


def test_device_never_seen_is_not_alerted() -> None:
    h = Harness()
    h.states(T0, dstate("shutdown", T0))
    assert h.tick(T0 + 5 * LIMIT) == []


def test_no_alert_when_limit_passes_after_work_hours() -> None:
    h = Harness()
    end = berlin_ms(17, 55)  # limit passes 18:05, after the shift
    h.track(end - 60 * S, end)
    for now in range(end, end + 16 * 3600 * S, 60 * S):  # overnight into Thursday 09:55
        h.tick(now)
    assert h.alerts == []


def test_switched_off_at_end_of_shift_is_fine() -> None:
    h = Harness()
    end = berlin_ms(17, 52)  # the shutdown guard passes 17:55, but the limit only at 18:02
    h.track(end - 60 * S, end)
    h.states(end + 10 * S, dstate("shutdown", end + 5 * S))
    for now in range(end, end + 3600 * S, 500):
        h.tick(now)
    assert h.alerts == []


def test_no_alert_on_weekend() -> None:
    h = Harness()
    sat = berlin_ms(11, day=15)
    h.track(sat, sat + 60 * S)
    assert h.tick(sat + 2 * LIMIT) == []
    always = Harness(schedule=None)  # a device without a schedule is watched at all hours
    always.track(sat, sat + 60 * S)
    assert len(always.tick(sat + 2 * LIMIT)) == 1


def test_late_tick_still_alerts_when_limit_passed_in_hours() -> None:
    h = Harness()
    last = berlin_ms(16)
    h.track(last, last)
    fired = h.tick(berlin_ms(18, 30))  # the runner was not ticking; the limit passed at 16:10
    assert len(fired) == 1


def test_shutdown_received_alerts_after_guard_not_limit() -> None:
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last)
    h.states(last + 20 * S, dstate("shutdown", last + 10 * S))
    guard_end = last + S + 180 * S
    assert h.tick(guard_end) == []  # a quick reboot would have come back by now
    fired = h.tick(guard_end + 500)
    assert len(fired) == 1
    assert fired[0].evidence["reason"] == "powered_off"
    assert "shutdown reported" in fired[0].evidence["rule"]


def test_quick_reboot_does_not_alert_early() -> None:
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last)
    h.states(last + 20 * S, dstate("shutdown", last + 10 * S))
    h.states(last + 70 * S, dstate("boot", last + 65 * S))
    assert h.tick(last + 300 * S) == []  # boot seen: wait for the normal limit
    h.track(last + 200 * S, last + 260 * S)
    assert h.tick(last + 500 * S) == []
    assert h.alerts == []


def test_last_fix_uploaded_late_starts_the_silence_when_it_was_taken() -> None:
    # GPS goes off right after the fix at `last`; the phone uploads it 50 s later, as usual
    # 1 s after recording plus the wait for the next upload.
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last - 5 * S)  # lag 1 s
    rx = last + 50 * S
    h.pings(rx, [ping(last)])  # lag 50 s: 49 s older than usual
    assert h.state.silence_from_ms == rx - 49 * S
    assert h.tick(rx - 49 * S + LIMIT) == []
    fired = h.tick(rx - 49 * S + LIMIT + 1)
    assert len(fired) == 1
    assert fired[0].evidence["silence_from_ms"] == str(rx - 49 * S)
    assert fired[0].evidence["last_received_ms"] == str(rx)


def test_silence_moved_back_at_most_upload_slack() -> None:
    h = Harness()
    h.track(T0, T0 + 60 * S)
    rx = T0 + 3600 * S
    h.pings(rx, [ping(T0 + 600 * S)])  # a fix 50 min old
    assert h.state.silence_from_ms == rx - 120 * S  # upload_slack_s
    assert h.tick(rx - 120 * S + LIMIT) == []
    assert len(h.tick(rx - 120 * S + LIMIT + 1)) == 1


def test_phone_clock_offset_does_not_move_the_silence() -> None:
    # A phone 10 min ahead: every fix looks 10 min "in the future", but consistently so.
    h = Harness()
    skew = 600 * S
    for ts in range(T0, T0 + 61 * S, 5 * S):
        h.pings(ts + S, [ping(ts + skew)])
    last_rx = T0 + 61 * S
    assert h.state.silence_from_ms == last_rx
    assert h.tick(last_rx + LIMIT) == []
    assert len(h.tick(last_rx + LIMIT + 1)) == 1


def test_old_pings_restart_the_silence_from_their_receive_time() -> None:
    h = Harness()
    h.track(T0, T0 + 60 * S)
    rx = T0 + 300 * S
    h.pings(rx, [], late=[ping(T0 + 30 * S)])  # a retried old chunk: no newer fix
    assert h.state.silence_from_ms == rx
    assert h.tick(rx + LIMIT) == []
    assert len(h.tick(rx + LIMIT + 1)) == 1


# -- reasons at alert time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "battery", "reason"),
    [
        ([("shutdown", 10)], 50.0, "powered_off"),
        ([("shutdown", 10)], 4.0, "battery_died"),
        ([], 4.0, "battery_died"),
        ([], 5.0, "battery_died"),  # at the threshold counts
        ([], 5.5, "unknown"),
        ([("app_killed", 10)], 50.0, "app_killed"),
        ([("gps_off", 10)], 50.0, "location_off"),
        ([("permission_revoked", 10)], 50.0, "permission_revoked"),
        ([("airplane_on", 10)], 50.0, "no_network"),
        ([("network_off", 10)], 50.0, "no_network"),
        ([], 50.0, "unknown"),
        # precedence: the lowest broken link of power -> app -> location -> network
        ([("network_off", 5), ("gps_off", 10), ("app_killed", 20)], 50.0, "app_killed"),
        ([("gps_off", 5), ("permission_revoked", 8)], 50.0, "location_off"),
        ([("app_killed", 5), ("shutdown", 20)], 50.0, "powered_off"),
        # states before the last fix (beyond the slack) are stale: pings followed them
        ([("gps_off", -120), ("app_killed", -60)], 50.0, "unknown"),
        ([("gps_off", -20)], 50.0, "location_off"),  # within the 30 s slack
        ([("app_start", -30)], 50.0, "unknown"),  # a recovery before the fix explains nothing
        ([("battery_low", 10)], 50.0, "battery_died"),  # reported low after the fix
        ([("battery_low", 10)], None, "battery_died"),
        ([("mock_app_detected", 10)], 50.0, "unknown"),  # integrity states are not kept
    ],
)
def test_reason_at_alert_time(
    events: list[tuple[str, int]], battery: float | None, reason: str
) -> None:
    h = Harness(ContactParams(shutdown_alert_s=600))  # normal limit for all, simpler timing
    last = T0 + 60 * S
    for ts in range(T0, last + 1, 5 * S):
        h.pings(ts + S, [ping(ts, battery)])
    for kind, offset_s in events:
        h.states(last + 30 * S, dstate(kind, last + offset_s * S))
    alert = lose(h, last)
    assert alert.evidence["reason"] == reason
    assert alert.evidence["rule"]
    assert reason in alert.message


def test_battery_level_from_battery_low_detail() -> None:
    h = Harness(ContactParams(shutdown_alert_s=600))
    last = T0 + 60 * S
    h.track(T0, last, battery=40.0)
    h.states(last + 10 * S, dstate("battery_low", last + 5 * S, "3%"), dstate("shutdown", last))
    alert = lose(h, last)
    assert alert.evidence["reason"] == "battery_died"
    assert alert.evidence["last_battery_pct"] == "3"
    assert "shutdown@" in alert.evidence["last_states"]


def test_recent_states_are_bounded() -> None:
    h = Harness()
    for i in range(50):
        h.states(T0 + i * S, dstate("gps_off" if i % 2 else "gps_on", T0 + i * S))
    h.states(T0 + 60 * S, dstate("gps_off", T0 + 49 * S))  # a retried upload
    assert len(h.state.recent_states) == 8
    # [event time, kind, received time]; the retry kept the first receipt
    assert h.state.recent_states[-2:] == [
        [T0 + 48 * S, "gps_on", T0 + 48 * S],
        [T0 + 49 * S, "gps_off", T0 + 49 * S],
    ]
    assert len(json.dumps(h.state.to_dict())) < 1000


# -- restore and refinement --------------------------------------------------------------------


def test_buffered_pings_restore_with_no_network_and_count() -> None:
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last)
    lost = lose(h, last)
    assert lost.evidence["reason"] == "unknown"
    back_rx = last + 1200 * S  # network back after 20 minutes: the phone uploads its buffer
    buffered = [ping(ts) for ts in range(last + 5 * S, last + 1195 * S, 5 * S)]
    h.pings(back_rx, buffered[:100], late=buffered[100:])
    restored = h.of_type(AlertType.CONTACT_RESTORED)
    assert len(restored) == 1
    ev = restored[0].evidence
    assert restored[0].severity == "info"
    assert ev["reason"] == "no_network"
    assert ev["alert_reason"] == "unknown"
    assert ev["lost_contact_id"] == lost.id
    assert ev["gap_s"] == "1199"
    # the gap on the phone's clock ends 1199 s after the last fix; pings up to 120 s (upload
    # slack) before that end count as buffered
    assert ev["buffered_pings"] == str(len([p for p in buffered if p.ts_ms <= last + 1079 * S]))
    assert int(ev["recording_pings"]) > 150
    assert h.state.episode_id is None
    assert h.tick(back_rx + 60 * S) == []  # contact is fine again


def test_unsent_tail_after_power_off_is_not_proof_of_recording() -> None:
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last)
    lose(h, last)
    back = last + 1800 * S
    tail = [ping(ts) for ts in range(last + 5 * S, last + 60 * S, 5 * S)]  # never uploaded
    fresh = [ping(ts) for ts in range(back - 40 * S, back, 5 * S)]  # first batch after boot
    h.states(back, dstate("shutdown", last + 60 * S), dstate("boot", back - 50 * S))
    h.pings(back, tail + fresh)
    ev = h.of_type(AlertType.CONTACT_RESTORED)[0].evidence
    assert ev["reason"] == "powered_off"
    assert ev["recording_pings"] == "0"
    assert ev["buffered_pings"] == str(len(tail))


@pytest.mark.parametrize(
    ("late_kind", "battery", "reason"),
    [
        ("boot", 50.0, "powered_off"),
        ("boot", 3.0, "battery_died"),
        ("shutdown", 50.0, "powered_off"),
        ("app_start", 50.0, "app_killed"),
        ("gps_on", 50.0, "location_off"),
        ("permission_granted", 50.0, "permission_revoked"),
        ("airplane_off", 50.0, "no_network"),
    ],
)
def test_late_state_refines_restored_reason(late_kind: str, battery: float, reason: str) -> None:
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last, battery=battery)
    lost = lose(h, last)
    expected_at_alert = "battery_died" if battery <= 5 else "unknown"
    assert lost.evidence["reason"] == expected_at_alert
    back = last + 1500 * S
    # the state and fresh pings arrive in one upload; the topology passes states first
    h.states(back, dstate(late_kind, back - 30 * S))
    h.pings(back, [ping(ts, 80.0) for ts in range(back - 20 * S, back, 5 * S)])
    restored = h.of_type(AlertType.CONTACT_RESTORED)
    assert len(restored) == 1
    assert restored[0].evidence["reason"] == reason
    assert restored[0].evidence["alert_reason"] == expected_at_alert
    assert len(h.of_type(AlertType.LOST_CONTACT)) == 1  # refinement raises no second alert
    assert h.state.last_battery_pct == 80.0  # the new battery reading after restore


def test_states_received_after_the_moment_judged_do_not_count() -> None:
    """A shutdown uploaded after boot must not explain an alert raised before it arrived,
    even if it was read first (two Kafka topics are read in no fixed order)."""
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last)
    later = last + 1500 * S
    h.states(later, dstate("shutdown", last + 10 * S))  # read early, received later
    lost = lose(h, last)
    assert lost.evidence["reason"] == "unknown"
    h.pings(later, [ping(later - 5 * S, 80.0)])
    restored = h.of_type(AlertType.CONTACT_RESTORED)
    assert restored[0].evidence["reason"] == "powered_off"  # by then it had arrived


def test_boot_plus_app_start_is_power_not_app() -> None:
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last)
    lose(h, last)
    back = last + 1500 * S
    h.states(back, dstate("boot", back - 60 * S), dstate("app_start", back - 40 * S))
    h.pings(back, [ping(back - 10 * S)])
    assert h.of_type(AlertType.CONTACT_RESTORED)[0].evidence["reason"] == "powered_off"


def test_restore_keeps_alert_reason_without_new_evidence() -> None:
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last)
    h.states(last + 5 * S, dstate("gps_off", last + 2 * S))
    assert lose(h, last).evidence["reason"] == "location_off"
    back = last + 900 * S
    h.pings(back, [ping(back - 3 * S)])
    assert h.of_type(AlertType.CONTACT_RESTORED)[0].evidence["reason"] == "location_off"


def test_restore_waits_for_the_rest_of_a_chunked_backlog() -> None:
    h = Harness(ContactParams())  # restore_settle_s 30
    last = T0 + 60 * S
    h.track(T0, last)
    lose(h, last)
    back = last + 3600 * S
    backlog = [ping(ts) for ts in range(last + 5 * S, back, 5 * S)]
    chunks = [backlog[-20:], backlog[:-20]]  # the newest pings first: none mid-gap
    h.pings(back, chunks[0])
    assert h.state.pending_restore is not None and h.state.pending_restore[2] == 0
    h.pings(back + 1500, chunks[1])
    assert h.tick(back + 30 * S - 1) == []  # still settling
    restored = h.tick(back + 30 * S)
    assert len(restored) == 1
    assert restored[0].evidence["reason"] == "no_network"
    assert int(restored[0].evidence["recording_pings"]) > 600
    assert restored[0].evidence["gap_s"] == "3599"  # last receipt to the backlog's first request


def test_restore_is_not_held_back_by_a_phone_streaming_every_fix() -> None:
    h = Harness(ContactParams())
    last = T0 + 60 * S
    h.track(T0, last)
    lose(h, last)
    back = last + 900 * S
    h.track(back, back + 60 * S)  # a live app: one request every 5 s
    assert len(h.of_type(AlertType.CONTACT_RESTORED)) == 1


# -- ids, replay and state ---------------------------------------------------------------------


def test_ids_are_deterministic_and_based_on_last_fix() -> None:
    def run(tick_step_ms: int) -> list[Alert]:
        h = Harness()
        last = T0 + 60 * S
        h.track(T0, last)
        for now in range(last, last + 700 * S, tick_step_ms):
            h.tick(now)
        h.pings(last + 900 * S, [ping(last + 890 * S)])
        return h.alerts

    a, b = run(500), run(7000)  # a different tick cadence still gives the same ids
    assert [x.id for x in a] == [x.id for x in b]
    assert a[0].id == make_id(ORG, DEV, "lost_contact", T0 + 60 * S)
    assert a[1].id == make_id(ORG, DEV, "contact_restored", a[0].id)
    assert a[0].id != a[1].id


def test_repeated_start_gets_distinct_id() -> None:
    h = Harness()
    last = T0 + 60 * S
    h.track(T0, last)
    first = lose(h, last)
    back = last + 1000 * S
    h.pings(back, [], late=[ping(last - 30 * S)])  # only an old ping: the last fix is unchanged
    assert h.state.last_fix_ms == last
    fired = h.tick(back + LIMIT + 1)
    assert len(fired) == 1 and fired[0].id != first.id


def test_received_ms_used_when_on_processing_clock() -> None:
    h = Harness()
    rx = T0 + 2 * S
    h.pings(T0 + 30 * S, [ping(T0, rx=rx)])  # held 28 s by the reorder buffer
    assert h.state.last_rx_ms == rx
    other = Harness()
    other.pings(T0 + 30 * S, [ping(T0, rx=T0 - 10 * 86400 * S)])  # replay: another clock
    assert other.state.last_rx_ms == T0 + 30 * S


def test_state_round_trip_mid_episode_gives_identical_outputs() -> None:
    def script(h: Harness, part: int) -> None:
        last = T0 + 60 * S
        if part == 0:
            h.track(T0, last, battery=30.0)
            h.states(last + 5 * S, dstate("network_off", last + 3 * S))
            for now in range(last, last + 650 * S, 500):
                h.tick(now)
        else:
            for now in range(last + 650 * S, last + 900 * S, 500):
                h.tick(now)
            h.states(last + 900 * S, dstate("network_on", last + 890 * S))
            h.pings(last + 900 * S, [ping(ts) for ts in range(last + 5 * S, last + 900 * S, 5 * S)])
            h.track(last + 901 * S, last + 1000 * S)
            lose(h, last + 1000 * S)

    straight = Harness()
    script(straight, 0)
    script(straight, 1)

    resumed = Harness()
    script(resumed, 0)
    assert resumed.state.episode_id is not None  # mid-episode
    data = json.loads(json.dumps(resumed.state.to_dict()))
    resumed.state = ContactState.from_dict(data)
    script(resumed, 1)

    assert [(a.id, a.type, a.ts_ms, a.evidence) for a in resumed.alerts] == [
        (a.id, a.type, a.ts_ms, a.evidence) for a in straight.alerts
    ]
    assert len(straight.alerts) == 3
    assert resumed.state.to_dict() == straight.state.to_dict()


def test_state_json_leaves_out_times_that_repeat_and_restores_them() -> None:
    h = Harness()
    assert h.state.to_dict() == {}
    h.pings(T0, [ping(T0 - 2 * S)])  # battery read with the fix; silence from the receipt
    data = h.state.to_dict()
    assert "silence" not in data and "bat_ms" not in data
    assert len(json.dumps(data, separators=(",", ":"))) < 120
    restored = ContactState.from_dict(json.loads(json.dumps(data)))
    assert restored == h.state
    assert restored.silence_from_ms == T0 and restored.last_battery_ms == T0 - 2 * S
    # A newer fix that arrives older than usual moves the silence start back, and a battery
    # level from a state after the last fix has its own time: both are then written.
    h.pings(T0 + 60 * S, [ping(T0 + 10 * S, battery=None)])
    h.states(T0 + 61 * S, dstate("battery_low", T0 + 50 * S, "4%"))
    data = h.state.to_dict()
    assert h.state.silence_from_ms != h.state.last_rx_ms and "silence" in data
    assert h.state.last_battery_ms != h.state.last_fix_ms and "bat_ms" in data
    assert ContactState.from_dict(json.loads(json.dumps(data))) == h.state
