"""Validation, de-duplication and ordering of pings (pipeline.processors.validate)."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from pipeline.events import AlertType, DeviceState, Ping, TrackFlag
from pipeline.processors.base import NO_TIMER, Ctx, Result
from pipeline.processors.validate import ValidateParams, ValidateState, Validator
from pipeline.reference import ReferenceData
from pipeline.topology import DeviceBatch, Topology

ORG, DEV = "acme", "rep-1"
NOW = 1_717_000_000_000  # 2024-05-29 16:26:40 UTC
STEP = 5_000  # a fix every 5 s
REF = ReferenceData()


def validator() -> Validator:
    """The mechanism pinned with a 2 s hold, whatever the tuned default."""
    return Validator(ValidateParams(reorder_hold_ms=2000))


def ping(seq: int, ts: int, **kw: object) -> Ping:
    """A valid fix in Berlin; the position moves with seq so fixes differ."""
    values: dict[str, object] = {"lat": 52.52 + seq * 1e-4, "lon": 13.40, "accuracy_m": 8.0}
    values.update(kw)
    return Ping(ORG, DEV, seq, ts, **values)  # type: ignore[arg-type]


def track(first_seq: int, n: int, t0: int) -> list[Ping]:
    return [ping(first_seq + i, t0 + i * STEP) for i in range(n)]


def ctx(now: int) -> Ctx:
    return Ctx(ORG, DEV, now, REF)


def run(
    v: Validator, state: ValidateState, pings: list[Ping], now: int
) -> tuple[list[Ping], list[Ping], Result]:
    out = Result()
    in_order, late = v.process(state, pings, ctx(now), out)
    return in_order, late, out


def seqs(pings: list[Ping]) -> list[int]:
    return [p.seq for p in pings]


# ---------------------------------------------------------------------- static checks


def test_valid_ping_passes_including_optional_fields() -> None:
    v = validator()
    assert v.check(ping(1, NOW - 1000), NOW) is None
    full = ping(
        1,
        NOW,
        speed_mps=3.5,
        bearing_deg=360.0,
        altitude_m=-20.0,
        battery_pct=100.0,
        provider="fused",
        is_mock=True,
    )
    assert v.check(full, NOW) is None
    assert v.check(ping(0, NOW + 299_000), NOW) is None  # just inside the 5-minute skew


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"lat": math.nan}, "lat is not a finite number"),
        ({"lat": math.inf}, "lat is not a finite number"),
        ({"lat": 90.5}, "lat out of range [-90, 90]"),
        ({"lon": -math.inf}, "lon is not a finite number"),
        ({"lon": 180.01}, "lon out of range [-180, 180]"),
        ({"lat": 0.0, "lon": 0.0}, "position (0, 0) is not a real fix"),
        ({"accuracy_m": -1.0}, "accuracy_m must be >= 0"),
        ({"accuracy_m": math.nan}, "accuracy_m is not a finite number"),
        ({"accuracy_m": 50_000.0}, "accuracy_m above 10000 m is not a usable fix"),
        ({"ts_ms": NOW + 412_000}, "timestamp 412 s in the future"),
        ({"ts_ms": NOW - 91 * 86_400_000}, "timestamp older than the 90-day retention window"),
        ({"ts_ms": float(NOW)}, "ts_ms must be an integer (epoch milliseconds)"),
        ({"ts_ms": math.nan}, "ts_ms is not a finite number"),
        ({"seq": -1}, "seq must be >= 0"),
        ({"provider": "gsm"}, "provider must be one of fused, gps, network"),
        ({"battery_pct": 101.0}, "battery_pct out of range [0, 100]"),
        ({"battery_pct": math.nan}, "battery_pct is not a finite number"),
        ({"speed_mps": -0.1}, "speed_mps must be finite and >= 0"),
        ({"speed_mps": math.inf}, "speed_mps must be finite and >= 0"),
        ({"bearing_deg": math.nan}, "bearing_deg must be finite and in [0, 360]"),
        ({"altitude_m": math.inf}, "altitude_m is not a finite number"),
        ({"device_id": ""}, "device_id must be a non-empty string"),
        ({"lat": "52.5"}, "lat is not a finite number"),
    ],
)
def test_check_rejects_with_clear_reason(changes: dict[str, object], reason: str) -> None:
    bad = dataclasses.replace(ping(1, NOW), **changes)  # type: ignore[arg-type]
    assert validator().check(bad, NOW) == reason


def test_fast_path_agrees_with_detailed_check() -> None:
    """The one-expression fast path must accept exactly what the detailed check accepts."""
    v = validator()
    rnd = random.Random(3)
    weird = [None, math.nan, math.inf, -math.inf, -1.0, 0.0, 45.0, 100.0, 200.0, 400.0, "x"]
    for _ in range(3000):
        p = ping(
            rnd.choice([0, 1, -1, 7]),
            rnd.choice([NOW, NOW + 400_000, NOW - 100 * 86_400_000, NOW - 5]),
            lat=rnd.choice([52.5, 0.0, *weird[1:]]),
            lon=rnd.choice([13.4, 0.0, -181.0, *weird[1:]]),
            accuracy_m=rnd.choice([5.0, *weird[1:], 20_000.0]),
            speed_mps=rnd.choice(weird),
            bearing_deg=rnd.choice(weird),
            altitude_m=rnd.choice(weird),
            battery_pct=rnd.choice(weird),
            provider=rnd.choice(["gps", "network", "fused", "gsm"]),
        )
        p.device_id = rnd.choice([DEV, DEV, "", 7])  # type: ignore[assignment]
        assert (v.check(p, NOW) is None) == (v._reason(p, NOW) is None), p


def test_batch_fast_path_rejects_exactly_what_check_rejects() -> None:
    """`process` screens with `check` plus the batch's ids: same verdicts as `check`."""
    v = validator()
    rnd = random.Random(5)
    weird = [None, math.nan, math.inf, -1.0, 0.0, 45.0, 400.0, "x"]
    for _ in range(1500):
        p = ping(
            rnd.choice([0, 1, -1]),
            rnd.choice([NOW - 5, NOW + 400_000, NOW - 100 * 86_400_000]),
            lat=rnd.choice([52.5, 0.0, *weird[1:]]),
            lon=rnd.choice([13.4, 0.0, -181.0]),
            speed_mps=rnd.choice(weird),
            battery_pct=rnd.choice(weird),
            provider=rnd.choice(["gps", "gsm"]),
        )
        p.device_id = rnd.choice([DEV, DEV, "rep-2", "", 7])  # type: ignore[assignment]
        _, _, out = run(v, v.initial_state(), [p], NOW)
        valid = v.check(p, NOW) is None and p.device_id == DEV
        assert out.counters["rejected"] == (0 if valid else 1), p


def test_check_state() -> None:
    v = validator()
    assert v.check_state(DeviceState(ORG, DEV, NOW, "gps_off"), NOW) is None
    assert v.check_state(DeviceState(ORG, DEV, NOW, "coffee_break"), NOW).startswith(
        "kind must be one of "
    )
    assert v.check_state(DeviceState(ORG, DEV, NOW + 600_000, "boot"), NOW) == (
        "timestamp 600 s in the future"
    )
    assert v.check_state(DeviceState(ORG, "", NOW, "boot"), NOW) == (
        "device_id must be a non-empty string"
    )


# ---------------------------------------------------------------------- rejects


def test_invalid_pings_become_dead_letters_with_deterministic_ids() -> None:
    v = validator()
    batch = [ping(1, NOW - 10_000), ping(2, NOW - 5_000, lat=math.nan), ping(3, NOW, lon=200.0)]
    outs = []
    for _ in range(2):
        state = v.initial_state()
        in_order, late, out = run(v, state, batch, NOW)
        outs.append(out)
        assert seqs(in_order) == [1]
        assert late == []
        assert out.counters == {"rejected": 2, "accepted": 1}
    letters = outs[0].dead_letters
    assert [d.reason for d in letters] == [
        "lat is not a finite number",
        "lon out of range [-180, 180]",
    ]
    assert all(d.source == "validate" and d.device_id == DEV for d in letters)
    assert all(d.received_ms == NOW for d in letters)  # unknown receive time: processing time
    assert [d.id for d in letters] == [d.id for d in outs[1].dead_letters]
    assert letters[0].id != letters[1].id
    payload = json.loads(letters[0].payload)  # strict JSON even with NaN inside
    assert payload["seq"] == 2 and payload["lat"] == "nan"


def test_ping_of_another_device_is_rejected() -> None:
    v = validator()
    stray = dataclasses.replace(ping(1, NOW), device_id="rep-2")
    in_order, _, out = run(v, v.initial_state(), [stray], NOW)
    assert in_order == []
    assert out.counters["rejected"] == 1
    assert "rep-2" in out.dead_letters[0].reason


# ---------------------------------------------------------------------- ordering


def test_live_in_order_batch_is_released_without_holding() -> None:
    v = validator()
    state = v.initial_state()
    first = track(1, 12, NOW - 60_000)
    in_order, late, out = run(v, state, first, NOW)
    assert seqs(in_order) == list(range(1, 13))
    assert state.held == []
    # The next upload continues the seq run: released at once too.
    second = track(13, 12, NOW)
    in_order, late, out = run(v, state, second, NOW + 60_000)
    assert seqs(in_order) == list(range(13, 25))
    assert late == [] and state.held == []
    assert out.counters == {"accepted": 12}


def test_out_of_order_within_a_batch_is_sorted() -> None:
    v = validator()
    pings = track(1, 6, NOW - 30_000)
    shuffled = [pings[i] for i in (3, 0, 5, 1, 4, 2)]
    in_order, late, _ = run(v, v.initial_state(), shuffled, NOW)
    assert seqs(in_order) == [1, 2, 3, 4, 5, 6]
    assert late == []


def test_seq_gap_is_held_and_merged_with_the_missing_batch() -> None:
    v = validator()
    state = v.initial_state()
    run(v, state, track(1, 3, NOW - 60_000), NOW)
    # 7..9 arrives first: seq gap after 3, so it waits.
    in_order, _, _ = run(v, state, track(7, 3, NOW - 30_000), NOW + 100)
    assert in_order == []
    assert len(state.held) == 3
    # 4..6 arrives within the hold: everything goes, in order, without waiting for a tick.
    in_order, late, _ = run(v, state, track(4, 3, NOW - 45_000), NOW + 1_000)
    assert seqs(in_order) == [4, 5, 6, 7, 8, 9]
    assert late == [] and state.held == []


def test_backlog_uploaded_as_out_of_order_chunks_is_merged() -> None:
    """An hour offline, then three requests arriving newest chunk first within the hold."""
    v = validator()
    state = v.initial_state()
    run(v, state, track(1, 2, NOW - 3_700_000), NOW - 3_600_000)  # last live pings before
    t0 = NOW - 3_590_000
    chunks = [track(3 + 20 * i, 20, t0 + 20 * STEP * i) for i in range(3)]
    released: list[Ping] = []
    for k, chunk in enumerate(reversed(chunks)):
        in_order, late, _ = run(v, state, chunk, NOW + 300 * k)
        assert late == []
        released += in_order
    assert seqs(released) == list(range(3, 63))
    assert state.held == []


def test_held_pings_wait_for_the_hold_then_release_on_tick() -> None:
    v = validator()
    state = v.initial_state()
    run(v, state, track(1, 3, NOW - 60_000), NOW)
    run(v, state, track(10, 3, NOW - 30_000), NOW + 500)  # gap: 4..9 never come
    assert v.next_tick_ms(state) == NOW + 2_500  # what the drivers wait for
    assert v.release(state, ctx(NOW + 2_499)) == []
    released = v.release(state, ctx(NOW + 2_500))
    assert seqs(released) == [10, 11, 12]
    assert state.held == [] and state.released_seq == 12
    assert v.next_tick_ms(state) == NO_TIMER
    # After the gap the run restarts at 10, so 13 is contiguous again and goes at once.
    in_order, _, _ = run(v, state, [ping(13, NOW - 14_000)], NOW + 3_000)
    assert seqs(in_order) == [13]


def test_pings_behind_a_held_one_wait_too() -> None:
    """Release is oldest first: a contiguous ping never overtakes an older held one."""
    v = validator()
    state = v.initial_state()
    run(v, state, track(1, 2, NOW - 60_000), NOW)
    run(v, state, [ping(5, NOW - 40_000)], NOW)  # gap after 2
    in_order, _, _ = run(v, state, [ping(6, NOW - 35_000)], NOW + 100)
    assert in_order == []
    assert [h[2] for h in state.held] == [5, 6]


def test_batch_arriving_after_release_is_late() -> None:
    v = validator()
    state = v.initial_state()
    run(v, state, track(1, 3, NOW - 60_000), NOW)
    run(v, state, track(7, 3, NOW - 30_000), NOW)
    assert seqs(v.release(state, ctx(NOW + 2_000))) == [7, 8, 9]
    watermark = state.released_ts
    in_order, late, out = run(v, state, track(4, 3, NOW - 45_000), NOW + 3_000)
    assert in_order == []
    assert seqs(late) == [4, 5, 6]
    assert out.counters == {"late": 3}
    assert state.released_ts == watermark  # late pings do not move the stream
    # Their retry is a duplicate, not late again.
    in_order, late, out = run(v, state, track(4, 3, NOW - 45_000), NOW + 4_000)
    assert late == [] and out.counters == {"duplicate": 3}


def test_force_flushes_everything_in_order() -> None:
    v = validator()
    state = v.initial_state()
    run(v, state, track(1, 2, NOW - 60_000), NOW)
    run(v, state, track(20, 2, NOW - 20_000), NOW)
    run(v, state, track(10, 2, NOW - 40_000), NOW + 10)
    assert seqs(v.release(state, ctx(NOW + 20))) == []
    assert seqs(v.release(state, ctx(NOW + 20), force=True)) == [10, 11, 20, 21]
    assert state.held == []
    assert v.release(state, ctx(NOW + 30), force=True) == []


def test_device_without_seq_releases_live_pings_and_holds_backlog() -> None:
    """Trackers without a sequence number send seq 0: freshness decides instead."""
    v = validator()
    state = v.initial_state()
    live = [ping(0, NOW - 10_000, lat=52.1), ping(0, NOW - 5_000, lat=52.2)]
    in_order, _, _ = run(v, state, live, NOW)
    assert [p.lat for p in in_order] == [52.1, 52.2]
    # Ten minutes later: pings older than live_lag_s are a backlog and wait, although newer
    # than everything released, so an older chunk arriving just after is merged in order.
    later = NOW + 600_000
    backlog = [ping(0, later - 300_000 + i * STEP, lat=53 + i / 10) for i in range(3)]
    in_order, late, _ = run(v, state, backlog[1:], later)
    assert in_order == [] and late == []
    in_order, _, _ = run(v, state, backlog[:1], later + 500)
    assert in_order == []
    # The oldest arrived last, at later + 500: its hold decides for all behind it.
    assert v.release(state, ctx(later + 2_000)) == []
    assert [p.lat for p in v.release(state, ctx(later + 2_500))] == [53.0, 53.1, 53.2]
    # A live seq-less ping after the backlog goes at once again.
    in_order, _, _ = run(v, state, [ping(0, later - 1_000, lat=54.0)], later + 2_100)
    assert [p.lat for p in in_order] == [54.0]


def test_first_contact_backlog_is_held_live_is_not() -> None:
    v = validator()
    state = v.initial_state()
    in_order, _, _ = run(v, state, track(500, 2, NOW - 3_600_000), NOW)
    assert in_order == [] and len(state.held) == 2
    state = v.initial_state()
    in_order, _, _ = run(v, state, track(500, 2, NOW - 10_000), NOW)
    assert seqs(in_order) == [500, 501]


def test_zero_hold_disables_holding() -> None:
    v = Validator(ValidateParams(reorder_hold_ms=0))
    state = v.initial_state()
    run(v, state, track(1, 2, NOW - 60_000), NOW)
    in_order, _, _ = run(v, state, track(9, 2, NOW - 30_000), NOW)
    assert seqs(in_order) == [9, 10]
    assert state.held == []


def test_buffer_cap_releases_the_oldest() -> None:
    v = Validator(ValidateParams(max_held=5))
    state = v.initial_state()
    run(v, state, track(1, 1, NOW - 60_000), NOW)
    gappy = [ping(10 + 2 * i, NOW - 50_000 + i * STEP) for i in range(8)]  # every other seq
    in_order, _, out = run(v, state, gappy, NOW)
    assert seqs(in_order) == [10, 12, 14]
    assert len(state.held) == 5
    assert out.counters["reorder_overflow"] == 3


# ---------------------------------------------------------------------- duplicates


def test_duplicates_within_a_batch() -> None:
    v = validator()
    a = ping(1, NOW - 10_000)
    same_seq_and_ts = dataclasses.replace(a, lat=a.lat + 1e-9)  # re-serialised retry
    same_ts_and_pos = dataclasses.replace(a, seq=99)  # resent under a new seq
    in_order, late, out = run(v, v.initial_state(), [a, same_seq_and_ts, same_ts_and_pos], NOW)
    assert in_order == [a]
    assert late == []
    assert out.counters == {"accepted": 1, "duplicate": 2}


def test_retry_of_a_released_batch_is_duplicate_not_late() -> None:
    v = validator()
    state = v.initial_state()
    batch = track(1, 12, NOW - 60_000)
    run(v, state, batch, NOW)
    run(v, state, track(13, 12, NOW), NOW + 60_000)
    in_order, late, out = run(v, state, batch, NOW + 61_000)
    assert in_order == [] and late == []
    assert out.counters == {"duplicate": 12}


def test_duplicates_of_pings_still_in_the_buffer() -> None:
    v = validator()
    state = v.initial_state()
    run(v, state, track(1, 2, NOW - 60_000), NOW)
    held = track(8, 3, NOW - 30_000)
    run(v, state, held, NOW)
    in_order, late, out = run(v, state, [*held, ping(11, NOW - 15_000)], NOW + 100)
    assert in_order == [] and late == []
    assert out.counters == {"duplicate": 3, "accepted": 1}
    assert [h[2] for h in state.held] == [8, 9, 10, 11]


def test_same_seq_with_new_timestamp_is_not_a_duplicate() -> None:
    """Seq counters restart on reinstall; those fixes are new, not retries."""
    v = validator()
    state = v.initial_state()
    run(v, state, track(1, 3, NOW - 120_000), NOW - 60_000)
    in_order, _, out = run(v, state, track(1, 3, NOW - 10_000), NOW)
    assert out.counters["duplicate"] == 0
    # The restarted counter is a seq gap, so it is held briefly, then released.
    assert seqs(in_order + v.release(state, ctx(NOW + 2_000))) == [1, 2, 3]


def test_seq_run_detects_retries_however_old() -> None:
    v = Validator(ValidateParams(dedup_keys=4))
    state = v.initial_state()
    pings = track(1, 200, NOW - 1_000_000)
    for i in range(0, 200, 10):
        run(v, state, pings[i : i + 10], pings[i + 9].ts_ms + 1_000)
    assert state.held == [] and state.released_seq == 200
    _, late, out = run(v, state, [pings[3], pings[150]], NOW + 1)
    assert late == [] and out.counters == {"duplicate": 2}
    # A fix with a seq that was never released is late, not a duplicate.
    missing = ping(1_000, NOW - 500_000 + 1)
    _, late, _ = run(v, state, [missing], NOW + 2)
    assert late == [missing]


def test_dedup_memory_is_bounded_and_limits_seqless_retries() -> None:
    v = Validator(ValidateParams(dedup_keys=8))
    state = v.initial_state()
    pings = [ping(0, NOW - 1_000_000 + i * STEP, lat=50 + i / 1000) for i in range(150)]
    for i in range(0, 150, 5):
        run(v, state, pings[i : i + 5], pings[i + 4].ts_ms + 1_000)
    assert state.held == [] and state.released_ts == pings[-1].ts_ms
    assert len(state.recent_gaps) == 7  # 8 keys: the watermark and 7 gaps back
    assert len(json.dumps(state.to_dict())) < 300
    _, late, out = run(v, state, [pings[145], pings[142]], NOW + 1)
    assert out.counters == {"duplicate": 2}
    # Beyond the remembered keys a seq-less retry can only be told apart as late.
    _, late, _ = run(v, state, [pings[100]], NOW + 2)
    assert late == [pings[100]]
    for i in range(40):
        run(v, state, [ping(0, NOW - 999_999 + i, lat=40.0)], NOW + 3)
    assert len(state.late_ts) == 2  # a quarter of dedup_keys


def test_default_state_stays_small() -> None:
    v = validator()
    state = v.initial_state()
    for i in range(0, 2_000, 12):
        in_order, _, _ = run(v, state, track(i + 1, 12, NOW + i * STEP), NOW + (i + 12) * STEP)
        assert len(in_order) == 12
    assert len(json.dumps(state.to_dict())) < 400


# ---------------------------------------------------------------------- state


def test_state_round_trip_mid_buffer_gives_identical_outputs() -> None:
    v = validator()
    t = NOW - 600_000
    steps: list[tuple[str, list[Ping], int]] = [
        ("process", track(1, 5, t), NOW),
        ("process", track(12, 5, t + 11 * STEP), NOW + 100),  # gap: held
        ("process", [*track(3, 2, t + 2 * STEP), ping(30, t + 60 * STEP)], NOW + 200),
        ("release", [], NOW + 1_000),
        ("process", track(6, 3, t + 5 * STEP), NOW + 1_500),  # fills part of the gap
        ("release", [], NOW + 2_300),
        ("process", [ping(10, t + 9 * STEP), ping(31, t + 61 * STEP)], NOW + 2_400),
        ("release", [], NOW + 5_000),
        ("process", track(40, 3, t + 80 * STEP), NOW + 6_000),
        ("release", [], NOW + 9_000),
    ]

    def replay(round_trip: bool) -> list[tuple[list[int], list[int], dict[str, int]]]:
        state = v.initial_state()
        results = []
        for kind, pings, now in steps:
            if round_trip:
                state = ValidateState.from_dict(json.loads(json.dumps(state.to_dict())))
            if kind == "process":
                in_order, late, out = run(v, state, pings, now)
                results.append((seqs(in_order), seqs(late), dict(out.counters)))
            else:
                results.append((seqs(v.release(state, ctx(now))), [], {}))
        return results

    plain = replay(False)
    assert plain == replay(True)
    # The dict form: short names, defaults left out, the gaps a JSON list (an array in memory).
    state = v.initial_state()
    for kind, pings, now in steps:
        if kind == "process":
            run(v, state, pings, now)
        else:
            v.release(state, ctx(now))
    data = state.to_dict()
    assert set(data) == {"ts", "seq", "run_ts", "run_seq", "gaps", "late"}  # nothing held
    assert type(data["gaps"]) is list and data["gaps"] == list(state.recent_gaps)
    restored = ValidateState.from_dict(json.loads(json.dumps(data)))
    assert restored == state and restored.to_dict() == data
    assert any(r[0] == [] for r in plain[:3])  # something really was held mid-stream
    released = [s for r in plain for s in r[0]]
    assert released == sorted(released) and len(released) == len(set(released))


def test_released_pings_keep_every_field_through_the_buffer() -> None:
    v = validator()
    state = v.initial_state()
    run(v, state, [ping(1, NOW - 60_000)], NOW)
    p = ping(
        5,
        NOW - 30_000,
        speed_mps=2.5,
        bearing_deg=90.0,
        altitude_m=34.0,
        provider="network",
        is_mock=True,
        battery_pct=55.0,
        received_ms=NOW - 1,
    )
    run(v, state, [p], NOW)
    state = ValidateState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert v.release(state, ctx(NOW), force=True) == [p]


# ---------------------------------------------------------------------- phone clock ahead

AHEAD = 600_000  # the phone's clock runs 10 min fast
FUTURE_MS = 300_000  # the edge's max_future_s


def upload(k: int, offset: int = AHEAD, age_ms: int = 2_000) -> tuple[list[Ping], list[Ping]]:
    """The k-th live upload (a minute of fixes, the freshest `age_ms` old at arrival), split
    like the edge splits it: (accepted pings, future-stamped pings)."""
    received = NOW + k * 60_000
    fixes = [
        ping(k * 12 + i + 1, received - age_ms - (11 - i) * STEP + offset, received_ms=received)
        for i in range(12)
    ]
    future = [p for p in fixes if p.ts_ms > received + FUTURE_MS]
    return [p for p in fixes if p.ts_ms <= received + FUTURE_MS], future


def send(v: Validator, state: ValidateState, k: int, **kw: int) -> tuple[list[Ping], Result]:
    pings, future = upload(k, **kw)
    out = Result()
    in_order, late = v.process(state, pings, ctx(NOW + k * 60_000), out, future)
    assert late == []
    in_order += v.release(state, ctx(NOW + k * 60_000 + 2_000))  # a first backlog is held 2 s
    return in_order, out


def test_clock_ahead_is_corrected_from_the_third_upload_and_the_first_two_recovered() -> None:
    v = validator()
    state = v.initial_state()
    assert send(v, state, 0)[0] == [] and send(v, state, 1)[0] == []  # held, not lost
    assert len(state.clock_held) == 24
    in_order, out = send(v, state, 2)
    assert state.clock_offset_ms == AHEAD - 2_000  # the tightest bound: the freshest fix's
    assert seqs(in_order) == list(range(1, 37))  # all three uploads, in order
    true_ts = [p.ts_ms - AHEAD for _, f in (upload(k) for k in range(3)) for p in f]
    assert [p.ts_ms - 2_000 for p in in_order] == true_ts
    assert out.counters["clock_corrected"] == 36 and not state.clock_held
    later, _ = send(v, state, 3)
    assert seqs(later) == list(range(37, 49)) and later[0].ts_ms < NOW + 3 * 60_000
    # Bounded: an offset being corrected costs a few ints.
    assert len(json.dumps(state.to_dict())) < 600


def test_offline_backlog_far_behind_is_never_shifted() -> None:
    v = validator()
    state = v.initial_state()
    for k in range(6):  # hour-old fixes uploaded late, every upload alike: old, not a clock
        in_order, _ = send(v, state, k, offset=0, age_ms=3_600_000)
        assert seqs(in_order) == list(range(k * 12 + 1, k * 12 + 13))
    assert state.clock_offset_ms == 0 and not state.clock_uploads


def test_future_garbage_never_gets_through() -> None:
    v = validator()
    state = v.initial_state()
    for k in range(5):  # a sane phone that sends one fix stamped a day ahead each upload
        pings, _ = upload(k, offset=0)
        garbage = ping(900 + k, NOW + 86_400_000 + k, received_ms=NOW + k * 60_000)
        out = Result()
        in_order, _ = v.process(state, pings, ctx(NOW + k * 60_000), out, [garbage])
        assert garbage.seq not in seqs(in_order)
    assert state.clock_offset_ms == 0 and len(state.clock_held) <= 1
    # With a real offset established, a fix still in the future after correcting stays out.
    state = v.initial_state()
    for k in range(3):
        send(v, state, k)
    out = Result()
    garbage = ping(999, NOW + 86_400_000, received_ms=NOW + 3 * 60_000)
    pings, future = upload(3)
    in_order, _ = v.process(state, pings, ctx(NOW + 3 * 60_000), out, [*future, garbage])
    assert 999 not in seqs(in_order) and out.counters["future_rejected"] == 1


def test_retried_future_fix_is_no_clock_evidence() -> None:
    v = validator()
    state = v.initial_state()
    stuck = ping(7, NOW + AHEAD, received_ms=NOW)
    for k in range(5):  # the same fix re-sent: its offset shrinks by a minute per upload
        retry = dataclasses.replace(stuck, received_ms=NOW + k * 20_000)
        out = Result()
        assert v.process(state, [], ctx(NOW + k * 20_000), out, [retry]) == ([], [])
    assert state.clock_offset_ms == 0


def test_fixed_clock_ends_the_correction_and_small_skew_is_left_alone() -> None:
    v = validator()
    state = v.initial_state()
    for k in range(3):
        send(v, state, k)
    assert state.clock_offset_ms
    for k in range(3, 6):  # NTP fixed the clock: until three uploads agree, shifted too far
        pings, _ = upload(k, offset=0)
        in_order, late = v.process(state, pings, ctx(NOW + k * 60_000), Result())
        in_order += v.release(state, ctx(NOW + k * 60_000 + 2_000))  # after the seq gap
        assert (len(in_order), len(late)) == ((12, 0) if k == 5 else (0, 12))
    assert state.clock_offset_ms == 0
    in_order, _ = send(v, state, 20, offset=0)
    assert in_order and in_order[0].ts_ms == upload(20, offset=0)[0][0].ts_ms
    state = v.initial_state()
    for k in range(5):  # 40 s fast: below clock_fix_min_s
        send(v, state, k, offset=40_000)
    assert state.clock_offset_ms == 0 and not state.clock_uploads


def test_clock_state_round_trip_mid_hold_gives_identical_outputs() -> None:
    v = validator()

    def replay(round_trip: bool) -> list[list[tuple[int, int]]]:
        state = v.initial_state()
        results = []
        for k in range(4):
            if round_trip:
                state = ValidateState.from_dict(json.loads(json.dumps(state.to_dict())))
            in_order, _ = send(v, state, k)
            results.append([(p.seq, p.ts_ms) for p in in_order])
        return results

    assert replay(False) == replay(True)


def test_topology_corrects_the_track_and_still_warns_about_the_clock() -> None:
    topo = Topology()
    state = topo.initial_state()
    points, alerts = [], []
    for k in range(4):
        pings, future = upload(k)
        batch = DeviceBatch(ORG, DEV, pings, [], NOW + k * 60_000, future)
        out = topo.process(state, batch, topo.context(REF, ORG, DEV, NOW + k * 60_000))
        points += out.track_points
        alerts += [a.type for a in out.alerts]
    assert AlertType.SPOOF_CLOCK_SKEW in alerts
    assert len(points) == 48
    assert all(p.ts_ms < NOW + 4 * 60_000 for p in points)  # true time, not the phone's
    assert all(p.flags & TrackFlag.CLOCK_CORRECTED for p in points)  # and marked as shifted
