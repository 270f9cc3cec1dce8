"""Spoof detection: each rule fires once per episode with evidence; honest tracks raise nothing."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
import random
from pathlib import Path

import pytest

from pipeline.events import Alert, AlertType, DeviceState, Ping, make_id
from pipeline.geo import M_PER_DEG_LAT
from pipeline.processors.base import Ctx, Result
from pipeline.processors.spoof import SpoofDetector, SpoofParams, SpoofState, position_hash
from pipeline.reference import CustomerIndex, ReferenceData
from pipeline.reference.models import Customer

ORG, DEV = "acme", "rep-1"
T0 = 1_700_000_000_000
LAT0, LON0 = 52.52, 13.40
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-tracks"
if not REAL.exists():
    REAL = Path("/work/shared/data/real-tracks")


def offset(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    return (
        lat + north_m / M_PER_DEG_LAT,
        lon + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat))),
    )


def ping(seq: int, t_s: float, lat: float, lon: float, acc: float = 8.0, **kw: object) -> Ping:
    return Ping(ORG, DEV, seq, T0 + int(t_s * 1000), lat, lon, acc, **kw)  # type: ignore[arg-type]


CUSTOMER = Customer("c-42", ORG, "Bakery Nord", *offset(LAT0, LON0, 0, 6000), radius_m=80.0)


def ctx(customers: list[Customer] | None = None, now_ms: int = T0) -> Ctx:
    return Ctx(ORG, DEV, now_ms, ReferenceData(customers=CustomerIndex(customers or [CUSTOMER])))


class EverywhereCustomers:
    """Worst case for jump-back precision: every point is at a customer."""

    def within(
        self, lat: float, lon: float, extra_m: float = 0.0, org_id: str | None = None
    ) -> list[tuple[Customer, float]]:
        return [(Customer("c-any", ORG, "Anywhere", lat, lon), 0.0)]


def run(
    pings: list[Ping],
    batch: int = 12,
    c: Ctx | None = None,
    det: SpoofDetector | None = None,
    state: SpoofState | None = None,
) -> tuple[list[Alert], SpoofState]:
    det = det or SpoofDetector()
    state = state or det.initial_state()
    c = c or ctx()
    out = Result()
    for i in range(0, len(pings), batch):
        det.process(state, pings[i : i + batch], c, out)
    return out.alerts, state


def honest_stay(n: int, t0_s: float = 0.0, seed: int = 1, seq0: int = 0) -> list[Ping]:
    """A parked phone: 5-30 m noise following a varying reported accuracy, a fix every 5 s."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        acc = round(rng.uniform(5, 30), 1)
        lat, lon = offset(LAT0, LON0, rng.gauss(0, acc / 2), rng.gauss(0, acc / 2))
        out.append(ping(seq0 + i, t0_s + 5 * i, lat, lon, acc))
    return out


def drive(
    n: int,
    t0_s: float,
    start: tuple[float, float],
    speed: float,
    seed: int,
    seq0: int,
    heading_deg: float = 90.0,
) -> list[Ping]:
    """A car at ~`speed` m/s with GPS noise and varying accuracy, a fix every 5 s."""
    rng = random.Random(seed)
    out = []
    e = n_ = 0.0
    h = math.radians(heading_deg)
    for i in range(n):
        v = speed * rng.uniform(0.7, 1.2)
        e += v * 5 * math.sin(h)
        n_ += v * 5 * math.cos(h)
        acc = round(rng.uniform(4, 20), 1)
        lat, lon = offset(*start, e + rng.gauss(0, 4), n_ + rng.gauss(0, 4))
        out.append(ping(seq0 + i, t0_s + 5 * i, lat, lon, acc))
    return out


def types(alerts: list[Alert]) -> list[str]:
    return [a.type for a in alerts]


# ---- honest tracks ------------------------------------------------------------------------


def test_honest_hour_stay_raises_nothing() -> None:
    alerts, _ = run(honest_stay(720))
    assert alerts == []


def test_urban_canyon_multipath_jumps_raise_nothing() -> None:
    rng = random.Random(3)
    pings = drive(600, 0, (LAT0, LON0), 8.0, seed=4, seq0=0)
    for i in range(10, 590, 23):  # a 100-500 m jump with a lying 10 m accuracy, then back
        p = pings[i]
        p.lat, p.lon = offset(p.lat, p.lon, rng.uniform(-500, 500), rng.choice([-1, 1]) * 300)
        p.accuracy_m = 10.0
    c = Ctx(ORG, DEV, T0, ReferenceData())
    c.ref.customers = EverywhereCustomers()  # type: ignore[assignment]
    alerts, _ = run(pings, c=c)
    assert alerts == []


def _geolife(path: Path) -> list[Ping]:
    out = []
    for i, line in enumerate(path.read_text().splitlines()[6:]):
        f = line.split(",")
        t = dt.datetime.fromisoformat(f"{f[5]}T{f[6]}+00:00")
        # GeoLife has no accuracy: a replay gives every fix the same placeholder.
        out.append(Ping(ORG, DEV, i, int(t.timestamp() * 1000), float(f[0]), float(f[1]), 10.0))
    return out


def _csv(name: str, lat: str, lon: str, acc: str, ts: str) -> list[Ping]:
    rows = []
    with open(REAL / name) as fh:
        for r in csv.DictReader(fh, delimiter=";"):
            t = dt.datetime.fromisoformat(r[ts].replace("Z", "")[:26]).replace(tzinfo=dt.UTC)
            rows.append((int(t.timestamp() * 1000), float(r[lat]), float(r[lon]), float(r[acc])))
    rows.sort()
    return [Ping(ORG, DEV, i, *row) for i, row in enumerate(rows)]


def real_tracks() -> list[tuple[str, list[Ping]]]:
    tracks = [(p.name, _geolife(p)) for p in sorted(REAL.glob("geolife/*/Trajectory/*.plt"))]
    for name, cols in (
        ("gpsies_trajectory.csv", ("latitude", "longitude", "accuracy", "tracked_at")),
        ("google_trajectory.csv", ("latitude", "longitude", "accuracy", "tracked_at")),
        ("posmo_trajectory.csv", ("latitude", "longitude", "accuracy", "tracked_at")),
    ):
        tracks.append((name, _csv(name, *cols)))
    return tracks


def test_real_tracks_raise_nothing_even_with_customers_everywhere() -> None:
    tracks = real_tracks()
    assert len(tracks) == 8 and all(len(t) > 50 for _, t in tracks)
    c = Ctx(ORG, DEV, T0, ReferenceData())
    c.ref.customers = EverywhereCustomers()  # type: ignore[assignment]
    for name, pings in tracks:
        alerts, _ = run(pings, c=c)
        assert alerts == [], (name, [(a.type, a.evidence) for a in alerts])


# ---- rule 1: mock flag --------------------------------------------------------------------


def test_mock_pings_one_alert_per_episode_and_rearm_after_gap() -> None:
    lat, lon = CUSTOMER.lat, CUSTOMER.lon
    first = [ping(i, 5 * i, lat, lon, 3.0, is_mock=True) for i in range(40)]
    alerts, state = run(first, batch=10)
    assert types(alerts) == ["spoof_mock_flag"]
    a = alerts[0]
    assert a.severity == "critical" and a.ts_ms == T0
    assert a.evidence["first_mock_ms"] == str(T0) and a.evidence["mock_fixes_in_batch"] == "10"
    assert a.evidence["first_mock_lat"] == f"{lat:.6g}"
    # 20 min later: same episode. 40 min after that: a new one with a new id.
    more = [ping(100 + i, 200 + 1200 + i, lat, lon, 3.0, is_mock=True) for i in range(3)]
    later = [ping(200 + i, 1400 + 2400 + i, lat, lon, 3.0, is_mock=True) for i in range(3)]
    alerts2, _ = run(more + later, batch=3, state=state)
    assert types(alerts2) == ["spoof_mock_flag"]
    assert alerts2[0].ts_ms == later[0].ts_ms and alerts2[0].id != a.id


# ---- rule 2: device integrity -------------------------------------------------------------


def test_device_integrity_deduped_per_kind_with_severity() -> None:
    det = SpoofDetector()
    state = det.initial_state()
    out = Result()
    c = ctx()
    hour = 3_600_000
    for t, kind in [
        (0, "mock_app_detected"),
        (hour, "mock_app_detected"),
        (2 * hour, "rooted"),
        (3 * hour, "app_start"),
        (4 * hour, "rooted"),
        (20 * hour, "mock_app_detected"),  # 19 h after the last report: new episode
    ]:
        ev = DeviceState(ORG, DEV, T0 + t, kind, detail="com.fake.gps" if "mock" in kind else None)
        det.on_device_state(state, ev, c, out)
    got = [(a.evidence["kind"], a.severity, a.ts_ms - T0) for a in out.alerts]
    assert got == [
        ("mock_app_detected", "critical", 0),
        ("rooted", "warning", 2 * hour),
        ("mock_app_detected", "critical", 20 * hour),
    ]
    assert "com.fake.gps" in out.alerts[0].message
    assert len({a.id for a in out.alerts}) == 3


# ---- rules 3 and 4: teleport and jump-back ------------------------------------------------


def test_teleport_fires_once_for_out_and_return() -> None:
    far = offset(LAT0, LON0, 15000, 0)
    pings = honest_stay(60) + [
        ping(1000 + i, 300 + 5 * i, *offset(*far, (i % 3) * 7.0, (i % 2) * 5.0), 9.0 + i % 4)
        for i in range(120)  # 10 min somewhere 15 km away, with jitter
    ]
    pings += honest_stay(60, t0_s=900, seed=9, seq0=2000)  # and straight back
    alerts, _ = run(pings)
    assert types(alerts) == ["spoof_teleport"]
    ev = alerts[0].evidence
    assert alerts[0].ts_ms == T0 + 300_000
    assert float(ev["distance_m"]) > 14000 and float(ev["implied_speed_mps"]) > 100
    assert ev["to_ms"] == str(T0 + 300_000)


def test_jump_to_customer_and_back_is_one_jump_back_alert() -> None:
    home = drive(60, 0, (LAT0, LON0), 10.0, seed=2, seq0=0)
    t = 300
    jump = [ping(500 + i, t + 5 * i, CUSTOMER.lat, CUSTOMER.lon + i * 1e-6, 5.0) for i in range(3)]
    back_start = offset(LAT0, LON0, 60 * 5 * 10, 0)
    back = drive(40, t + 15, back_start, 10.0, seed=3, seq0=600)
    alerts, _ = run(home + jump + back)
    assert types(alerts) == ["spoof_jump_back"]
    ev = alerts[0].evidence
    assert ev["customer_id"] == "c-42" and ev["jumped_fixes"] == "3"
    assert float(ev["distance_m"]) > 5000 and alerts[0].ts_ms == back[0].ts_ms
    assert "Bakery Nord" in alerts[0].message
    # Elsewhere than at a customer, the same far jump is a teleport; a 1.2 km spike is a glitch.
    no_customers = ctx(customers=[Customer("c-9", ORG, "Far", 10.0, 10.0)])
    alerts, _ = run(home + jump + back, c=no_customers)
    assert types(alerts) == ["spoof_teleport"]
    spike = [ping(500, t, *offset(back_start[0], back_start[1] - 0.002, 0, 1200), 5.0)]
    alerts, _ = run(home + spike + back)
    assert alerts == []


def test_fresh_fix_after_frozen_position_is_not_a_teleport() -> None:
    # A phone whose position froze for 3 min on a train, then a fresh fix 6 km on.
    frozen = [ping(i, 5 * i, LAT0, LON0, 24.0, provider="network") for i in range(36)]
    fresh = ping(99, 36 * 5, *offset(LAT0, LON0, 6000, 0), 48.0)
    alerts, _ = run([*frozen, fresh])
    assert alerts == []


# ---- rule 5: zero-jitter static -----------------------------------------------------------


def test_hidden_parked_spoofer_static_one_alert_including_the_jump() -> None:
    home = honest_stay(60)
    fake = [ping(100 + i, 300 + 5 * i, CUSTOMER.lat, CUSTOMER.lon, 5.0) for i in range(240)]
    alerts, _ = run(home + fake)
    assert types(alerts) == ["spoof_static"]
    a = alerts[0]
    ev = a.evidence
    assert a.ts_ms == T0 + 600_000  # 300 s into the frozen run
    assert ev["fixes"] == "61" and ev["accuracy_m"] == "5" and ev["first_ms"] == str(T0 + 300_000)
    assert float(ev["arrived_by_jump_m"]) > 5900
    assert a.id == make_id(ORG, DEV, "spoof_static", T0 + 300_000)
    again, _ = run(home + fake)
    assert again[0].id == a.id


def test_static_needs_dense_fixes_and_longer_span_if_accuracy_varies_or_not_gps() -> None:
    fused = [ping(i, 5 * i, LAT0, LON0, 5.0, provider="fused") for i in range(170)]  # 845 s
    sparse = [ping(i, 60 * i, LAT0, LON0, 20.0) for i in range(40)]  # a cached fix a minute
    varying = [ping(i, 5 * i, LAT0, LON0, 5.0 + i % 7) for i in range(200)]  # 1000 s
    for pings in (fused, sparse, varying):
        alerts, _ = run(pings)
        assert alerts == []
    longer = [ping(i, 5 * i, LAT0, LON0, 5.0 + i % 7) for i in range(400)]  # 2000 s
    alerts, _ = run(longer)
    assert types(alerts) == ["spoof_static"] and alerts[0].evidence["accuracy_m"] == "varies"
    fused_longer = [ping(i, 5 * i, LAT0, LON0, 5.0, provider="fused") for i in range(190)]
    alerts, _ = run(fused_longer)  # 945 s of a fused fix frozen with fresh times
    assert types(alerts) == ["spoof_static"] and "fused" in alerts[0].message
    fused_varying = [ping(i, 5 * i, LAT0, LON0, 5.0 + i % 7, provider="fused") for i in range(800)]
    assert run(fused_varying)[0] == []


def test_each_frozen_spot_is_its_own_episode_and_a_mock_pause_ends_a_mock_episode() -> None:
    here = [ping(i, 5 * i, LAT0, LON0, 5.0) for i in range(80)]  # 400 s frozen
    lat1, lon1 = offset(LAT0, LON0, 300.0, 0.0)
    there = [ping(80 + i, 5 * (100 + i), lat1, lon1, 5.0) for i in range(80)]  # 100 s later
    alerts, _ = run(here + there)
    assert types(alerts) == ["spoof_static", "spoof_static"]
    mock_a = [ping(i, 5 * i, LAT0, LON0, 3.0, is_mock=True) for i in range(20)]
    real = [ping(20 + i, 100 + 5 * i, lat1, lon1, 8.0 + i % 3) for i in range(12)]  # 55 s
    mock_b = [ping(32 + i, 200 + 5 * i, LAT0, LON0, 3.0, is_mock=True) for i in range(20)]
    assert types(run(mock_a + real + mock_b)[0]) == ["spoof_mock_flag", "spoof_mock_flag"]
    short_pause = real[:4]  # 15 s of real fixes: the same mock episode
    assert types(run(mock_a + short_pause + mock_b)[0]) == ["spoof_mock_flag"]


# ---- rule 6: constant accuracy ------------------------------------------------------------


def fake_route(n: int, noise_m: float = 0.0) -> list[Ping]:
    """A route-faking app: constant speed along straight legs, the same accuracy every fix."""
    rng = random.Random(5)
    out = []
    for i in range(n):
        leg, k = divmod(i, 25)  # a corner every 25 fixes
        east = (leg + 1) // 2 * 25 * 60 + (k * 60 if leg % 2 == 0 else 0)
        north = leg // 2 * 25 * 60 + (k * 60 if leg % 2 == 1 else 0)
        lat, lon = offset(LAT0, LON0, east + rng.gauss(0, noise_m), north + rng.gauss(0, noise_m))
        out.append(ping(i, 5 * i, lat, lon, 3.0))
    return out


def test_constant_accuracy_on_perfect_route_warns_once() -> None:
    alerts, _ = run(fake_route(200))
    assert types(alerts) == ["spoof_constant_accuracy"]
    a = alerts[0]
    assert a.severity == "warning" and a.evidence["accuracy_m"] == "3"
    assert a.evidence["fixes"] == "60" and int(a.evidence["perfect_steps"]) >= 12


def test_constant_accuracy_with_real_noise_is_not_flagged() -> None:
    alerts, _ = run(fake_route(200, noise_m=3.0))
    assert alerts == []


# ---- rule 7: clock skew -------------------------------------------------------------------


def uploads(n_uploads: int, lag_s: float, per: int = 12, step_s: float = 5.0) -> list[Ping]:
    """A live phone uploading every minute; its clock runs `lag_s` behind (negative: ahead)."""
    out = []
    for u in range(n_uploads):
        recv = T0 + (u + 1) * per * int(step_s * 1000) + 1000
        for k in range(per):
            i = u * per + k
            true_ms = T0 + i * int(step_s * 1000)
            lat, lon = offset(LAT0, LON0, (i % 5) * 3.0, (i % 3) * 4.0)
            out.append(
                Ping(
                    ORG,
                    DEV,
                    i,
                    true_ms - int(lag_s * 1000),
                    lat,
                    lon,
                    8.0 + i % 4,
                    received_ms=recv,
                )
            )
    return out


def test_clock_ahead_one_alert() -> None:
    alerts, _ = run(uploads(20, lag_s=-200))
    assert types(alerts) == ["spoof_clock_skew"]
    assert alerts[0].evidence["rule"] == "clock_ahead"
    assert float(alerts[0].evidence["ahead_s"]) > 120


def test_clock_behind_only_when_uploads_look_live() -> None:
    alerts, _ = run(uploads(20, lag_s=600))
    assert types(alerts) == ["spoof_clock_skew"] and alerts[0].evidence["rule"] == "clock_behind"
    assert float(alerts[0].evidence["min_lag_s"]) >= 600
    # An hour buffered offline, uploaded in a few requests a second apart: not a clock fault.
    backlog = uploads(60, lag_s=0)
    for i, p in enumerate(backlog):
        p.received_ms = T0 + 3_700_000 + (i // 100) * 1000
    live = uploads(80, lag_s=0)[720:]
    alerts, _ = run(backlog + live)
    assert alerts == []
    assert run(uploads(20, lag_s=0))[0] == []


# ---- state --------------------------------------------------------------------------------


def scenario() -> list[Ping]:
    pings = honest_stay(60)
    pings += [ping(100 + i, 300 + 5 * i, CUSTOMER.lat, CUSTOMER.lon, 5.0) for i in range(100)]
    pings += drive(60, 1000, (LAT0, LON0), 10.0, seed=2, seq0=300)
    pings += [
        ping(500 + i, 1300 + 5 * i, CUSTOMER.lat, CUSTOMER.lon + i * 1e-6, 5.0) for i in range(3)
    ]
    pings += drive(40, 1315, offset(LAT0, LON0, 3000, 0), 10.0, seed=3, seq0=600)
    pings += [ping(900 + i, 1600 + 5 * i, LAT0, LON0, 3.0, is_mock=True) for i in range(5)]
    for i, p in enumerate(pings):
        p.received_ms = p.ts_ms - (200_000 if 150 < i < 160 else -500)
    return pings


@pytest.mark.parametrize("cut", [28, 98, 161, 224, 252])  # batch boundaries (multiples of 7)
def test_state_round_trip_mid_stream_gives_identical_alerts(cut: int) -> None:
    pings = scenario()
    straight, end_state = run(pings, batch=7)
    assert set(types(straight)) == {
        "spoof_static",
        "spoof_jump_back",
        "spoof_mock_flag",
        "spoof_clock_skew",
    }
    first, state = run(pings[:cut], batch=7)
    blob = json.dumps(state.to_dict())
    restored = SpoofState.from_dict(json.loads(blob))
    second, state2 = run(pings[cut:], batch=7, state=restored)
    assert [(a.id, a.ts_ms, a.evidence) for a in first + second] == [
        (a.id, a.ts_ms, a.evidence) for a in straight
    ]
    assert json.dumps(state2.to_dict()) == json.dumps(end_state.to_dict())
    assert len(blob) < 1200


def test_one_batch_and_fix_by_fix_with_round_trips_give_the_same_episodes_and_state() -> None:
    """`process` writes the common path of each rule out and reads the mock episode once per
    batch: a single batch must open the same episodes and leave the same state as fix-by-fix
    processing with the state serialised between fixes (mock fixes interleaved with real
    ones, a frozen spot, a jump back, clock lag, a perfect route)."""
    pings = scenario()
    t_s = (pings[-1].ts_ms - T0) / 1000 + 5
    for i in range(40):  # real fixes with a mock burst every 10: episodes clear and reopen
        lat, lon = offset(LAT0, LON0, 3 * i, 0)
        pings.append(ping(1000 + i, t_s + 5 * i, lat, lon, 6.0, is_mock=i % 10 >= 7))
    route = fake_route(120)
    for p in route:
        p.ts_ms += pings[-1].ts_ms + 5000 - T0
        p.received_ms = p.ts_ms + 700
    pings += route
    one_batch, whole = run(pings, batch=len(pings))
    state = SpoofState()
    det = SpoofDetector()
    out = Result()
    c = ctx()
    for p in pings:
        det.process(state, [p], c, out)
        state = SpoofState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert set(types(one_batch)) >= {
        "spoof_static",
        "spoof_jump_back",
        "spoof_mock_flag",
        "spoof_clock_skew",
        "spoof_constant_accuracy",
    }
    assert types(one_batch).count("spoof_mock_flag") >= 3
    assert sorted(a.id for a in out.alerts) == sorted(a.id for a in one_batch)
    assert json.dumps(state.to_dict()) == json.dumps(whole.to_dict())


def test_params_are_config_friendly() -> None:
    for name in SpoofParams.__dataclass_fields__:
        assert type(getattr(SpoofParams(), name)) in (int, float, str, bool), name
    assert AlertType.SPOOF_STATIC.value == "spoof_static"


# ---- replayed track -----------------------------------------------------------------------

DAY_MS = 86_400_000


def commute(day: int, seed: int, n: int = 600) -> list[Ping]:
    """A day's 50 min drive along the same road at 08:00, with this day's own GPS noise: the
    positions a phone reports (7 decimals) with the speed it reports."""
    pings = drive(n, day * DAY_MS / 1000 + 8 * 3600, (LAT0, LON0), 10.0, seed, day * 10_000)
    return [
        dataclasses.replace(p, lat=round(p.lat, 7), lon=round(p.lon, 7), speed_mps=10.0)
        for p in pings
    ]


def replayed(pings: list[Ping], days: int = 1, offset_ms: int = 97_000) -> list[Ping]:
    """The same fixes sent again `days` later (a replay app), with today's seq numbers."""
    return [
        dataclasses.replace(p, seq=p.seq + 50_000, ts_ms=p.ts_ms + days * DAY_MS + offset_ms)
        for p in pings
    ]


def test_replayed_day_is_one_critical_alert_with_the_matched_positions() -> None:
    day1 = commute(0, seed=1)
    day2 = replayed(day1)
    alerts, state = run(day1 + day2)
    (alert,) = alerts
    assert alert.type == AlertType.SPOOF_REPLAY.value and alert.severity == "critical"
    assert alert.evidence["matched_fixes"] == "3"
    assert alert.evidence["earlier_day_first_ms"] == str(day1[0].ts_ms)
    matched = [int(t) for t in alert.evidence["matched_ms"].split(",")]
    assert day2[0].ts_ms <= matched[0] < matched[-1] == alert.ts_ms
    assert alert.id == make_id(ORG, DEV, "spoof_replay", matched[0])
    earlier = {(p.lat, p.lon) for p in day1}
    shown = alert.evidence["matched_positions"].split(", ")
    assert all(tuple(map(float, pos.split())) in earlier for pos in shown)
    # Every moving fix after the alert extends the episode: later visits are not verified.
    assert state.episodes["replay"] == [matched[0], day2[-1].ts_ms]
    det = SpoofDetector()
    assert det.suspect_alerts(state, day2[-10].ts_ms, day2[-1].ts_ms) == ["spoof_replay"]
    # The same day replayed again the next day is a new episode with its own alert.
    again, _ = run(replayed(day1, days=2, offset_ms=0), state=state)
    assert types(again) == ["spoof_replay"] and again[0].id != alert.id


def test_same_route_with_fresh_noise_or_without_speed_is_not_a_replay() -> None:
    alerts, state = run(commute(0, seed=1) + commute(1, seed=2) + commute(2, seed=3))
    assert alerts == []
    assert len(state.fp_prev) == len(state.fp_today) == SpoofParams().replay_k  # compared
    no_speed = [dataclasses.replace(p, speed_mps=None) for p in commute(0, seed=1)]
    alerts, state = run(no_speed + replayed(no_speed))
    assert alerts == [] and len(state.fp_today) == 0  # a rule that cannot see, stays silent


def _fingerprinted(pings: list[Ping], state: SpoofState) -> list[Ping]:
    """The fixes of `pings` whose positions are in the state's fingerprint of their day."""
    hashes = set(state.fp_today)
    return [p for p in pings if position_hash(p.lat, p.lon) in hashes]


def test_one_cached_fix_repeated_the_next_morning_is_not_a_replay() -> None:
    day1 = commute(0, seed=1)
    _, state = run(day1)
    cached = _fingerprinted(day1, state)
    assert len(cached) == SpoofParams().replay_k  # one hash per distinct moving position
    day2 = commute(1, seed=2)
    # At app start the phone re-reports a fix of yesterday five times, 10 min before driving.
    stale = [
        dataclasses.replace(cached[-1], seq=90_000 + i, ts_ms=day2[0].ts_ms - 600_000 + 5000 * i)
        for i in range(5)
    ]
    alerts, state = run(stale + day2, state=state)
    assert alerts == [] and len(state.fp_hits) == 1  # seen, counted once, not enough
    # Two more distinct positions of yesterday make three: that is a replay.
    more = [
        dataclasses.replace(p, seq=91_000 + i, ts_ms=day2[-1].ts_ms + 600_000 * (i + 1))
        for i, p in enumerate(cached[:2])
    ]
    alerts, _ = run(more, state=state)
    assert types(alerts) == ["spoof_replay"]


@pytest.mark.parametrize("cut", [300, 600, 630, 700, 1100])
def test_replay_state_round_trip_mid_stream_gives_identical_alerts(cut: int) -> None:
    day1 = commute(0, seed=4)
    pings = day1 + replayed(day1)
    straight, end_state = run(pings, batch=10)
    assert types(straight) == ["spoof_replay"]
    first, state = run(pings[:cut], batch=10)
    blob = json.dumps(state.to_dict())
    restored = SpoofState.from_dict(json.loads(blob))
    second, state2 = run(pings[cut:], batch=10, state=restored)
    assert [(a.id, a.ts_ms, a.evidence) for a in first + second] == [
        (a.id, a.ts_ms, a.evidence) for a in straight
    ]
    assert json.dumps(state2.to_dict()) == json.dumps(end_state.to_dict())


def test_replay_fingerprints_stay_small() -> None:
    _, state = run(commute(0, seed=1) + commute(1, seed=2))
    fingerprint = {k: v for k, v in state.to_dict().items() if k.startswith("fp_")}
    assert len(state.fp_prev) == len(state.fp_today) == 32
    assert len(json.dumps(fingerprint, separators=(",", ":"))) <= 450
