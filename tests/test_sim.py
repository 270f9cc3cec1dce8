"""The simulator: deterministic, every profile does what it promises, truth is exact."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from pipeline.events import DEVICE_STATE_KINDS, PROVIDERS, ContactReason
from pipeline.geo import LocalFrame, haversine_m
from pipeline.reference.models import Schedule
from pipeline.sim import (
    DEFAULT_ROSTER,
    PROFILES,
    Simulation,
    build_city,
    default_sim_day,
    simulate,
    write_simulation,
)
from pipeline.sim.city import City

DAY = dt.date(2024, 5, 14)  # a Tuesday
ROOT = Path(__file__).resolve().parent.parent
PING_KEYS = {
    "device_id",
    "seq",
    "ts_ms",
    "lat",
    "lon",
    "accuracy_m",
    "speed_mps",
    "bearing_deg",
    "altitude_m",
    "provider",
    "is_mock",
    "battery_pct",
}
STATE_KEYS = {"device_id", "ts_ms", "kind", "detail"}
WORK = Schedule.parse("mon-fri 08:00-18:00 Europe/Berlin")


@pytest.fixture(scope="module")
def city() -> City:
    return build_city()


@pytest.fixture(scope="module")
def sim(city: City) -> Simulation:
    """One rep per profile, a full day."""
    profiles = {f"rep-{i + 1:03d}": p for i, p in enumerate(PROFILES)}
    return simulate(city, reps=len(PROFILES), day=DAY, seed=11, profiles=profiles)


def dev(profile: str) -> str:
    return f"rep-{PROFILES.index(profile) + 1:03d}"


def pings_of(sim: Simulation, device_id: str) -> list[dict[str, Any]]:
    return [
        r
        for u in sim.uploads
        if u.device_id == device_id and u.endpoint == "pings"
        for r in u.records
    ]


def unique_pings(sim: Simulation, device_id: str) -> list[dict[str, Any]]:
    by_seq = {r["seq"]: r for r in pings_of(sim, device_id)}
    return [by_seq[s] for s in sorted(by_seq)]


def states_of(sim: Simulation, device_id: str) -> list[tuple[int, dict[str, Any]]]:
    return [
        (u.send_ms, r)
        for u in sim.uploads
        if u.device_id == device_id and u.endpoint == "device-states"
        for r in u.records
    ]


_TRUTH_INDEX: dict[int, tuple[Simulation, dict[tuple[str, str | None], list[dict[str, Any]]]]] = {}


def truth(sim: Simulation, kind: str, device_id: str | None = None) -> list[dict[str, Any]]:
    cached = _TRUTH_INDEX.get(id(sim))
    index = cached[1] if cached is not None and cached[0] is sim else None
    if index is None:
        index = defaultdict(list)
        for t in sim.truth:
            index[(t["type"], t["device_id"])].append(t)
            index[(t["type"], None)].append(t)
        _TRUTH_INDEX[id(sim)] = (sim, index)
    return index.get((kind, device_id), [])


def path_by_seq(sim: Simulation, device_id: str) -> dict[int, dict[str, Any]]:
    return {p["seq"]: p for p in truth(sim, "path", device_id)}


# ----------------------------------------------------------------------------- basics
def test_same_seed_gives_byte_identical_files(city: City, tmp_path: Path) -> None:
    profiles = {"rep-001": "no_network", "rep-002": "spoofer_mock", "rep-003": "slow_uploader"}
    a, b, c = (
        write_simulation(
            simulate(city, 3, DAY, seed=seed, ping_interval_s=15, profiles=profiles),
            city,
            tmp_path / name,
        )
        for seed, name in ((3, "a"), (3, "b"), (4, "c"))
    )
    names = ["events.jsonl", "truth.jsonl", "customers.csv", "fences.geojson", "devices.json"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "events.jsonl").read_bytes() != (c / "events.jsonl").read_bytes()
    lines = (a / "events.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["endpoint"] in ("pings", "device-states") and "send_ms" in first
    sends = [json.loads(line)["send_ms"] for line in lines]
    assert sends == sorted(sends)
    devices = json.loads((a / "devices.json").read_text())
    assert devices[0]["schedule"] == "mon-fri 08:00-18:00 Europe/Berlin"


def test_a_device_day_does_not_depend_on_fleet_size(city: City) -> None:
    small = simulate(city, 2, DAY, seed=5)
    large = simulate(city, 5, DAY, seed=5)
    assert pings_of(small, "rep-002") == pings_of(large, "rep-002")


def test_records_have_all_keys_and_valid_values(sim: Simulation) -> None:
    assert [u.send_ms for u in sim.uploads] == sorted(u.send_ms for u in sim.uploads)
    for upload in sim.uploads:
        assert upload.records and len(upload.records) <= 1000
        for r in upload.records:
            assert r["device_id"] == upload.device_id
            if upload.endpoint == "pings":
                assert set(r) == PING_KEYS
                assert isinstance(r["seq"], int) and isinstance(r["ts_ms"], int)
                assert 52.4 < r["lat"] < 52.65 and 13.2 < r["lon"] < 13.6
                assert 0 < r["accuracy_m"] <= 30 and r["speed_mps"] >= 0
                assert r["bearing_deg"] is None or 0 <= r["bearing_deg"] < 360.0001
                assert isinstance(r["is_mock"], bool) and r["provider"] in PROVIDERS
                assert 0 <= r["battery_pct"] <= 100
            else:
                assert upload.endpoint == "device-states"
                assert set(r) == STATE_KEYS and r["kind"] in DEVICE_STATE_KINDS
    json.dumps([u.records for u in sim.uploads[:50]])  # JSON-ready (no numpy scalars)
    json.dumps(sim.truth[:2000])


def test_path_truth_has_one_true_position_per_emitted_fix(sim: Simulation) -> None:
    for device in sim.devices:
        sent = {r["seq"]: r for r in pings_of(sim, device.device_id)}
        path = path_by_seq(sim, device.device_id)
        assert set(sent) == set(path)
        assert all(path[s]["ts_ms"] == sent[s]["ts_ms"] for s in sent)
        seqs = sorted(sent)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one seq per recorded fix


def test_noise_std_follows_reported_accuracy(sim: Simulation) -> None:
    frame = LocalFrame(52.52, 13.405)
    ratios: list[float] = []
    device_id = dev("honest")
    path = path_by_seq(sim, device_id)
    for r in unique_pings(sim, device_id):
        p = path[r["seq"]]
        if p["multipath"]:
            continue
        x, y = frame.to_xy(r["lat"], r["lon"])
        tx, ty = frame.to_xy(p["lat"], p["lon"])
        ratios += [(x - tx) / r["accuracy_m"], (y - ty) / r["accuracy_m"]]
    assert len(ratios) > 5000
    assert 0.9 < float(np.std(ratios)) < 1.1
    acc = [r["accuracy_m"] for r in unique_pings(sim, device_id)]
    assert np.percentile(acc, 5) >= 3 and np.percentile(acc, 95) <= 25


def test_multipath_jumps_lie_about_accuracy(city: City) -> None:
    day = simulate(city, 4, DAY, seed=2, profiles={})
    jumps = 0
    for device in day.devices:
        path = path_by_seq(day, device.device_id)
        for r in unique_pings(day, device.device_id):
            p = path[r["seq"]]
            if p["multipath"]:
                jumps += 1
                assert r["accuracy_m"] == 10.0
                assert 60 < haversine_m(r["lat"], r["lon"], p["lat"], p["lon"]) < 650
    assert jumps > 0


def test_truth_visits_are_at_customers_and_long_enough(sim: Simulation, city: City) -> None:
    customers = {c.customer_id: c for c in city.customers}
    visits = truth(sim, "visit")
    assert len(visits) > 30
    stops = {(s["device_id"], s["start_ms"]): s for s in truth(sim, "stop")}
    for v in visits:
        assert v["leave_ms"] - v["arrive_ms"] >= 5 * 60_000
        stop = stops[(v["device_id"], v["arrive_ms"])]
        c = customers[v["customer_id"]]
        assert haversine_m(stop["lat"], stop["lon"], c.lat, c.lon) < 0.5
        # The true path really stays at the customer during the visit.
        path = [
            p
            for p in truth(sim, "path", v["device_id"])
            if not p["spoofed"] and v["arrive_ms"] <= p["true_ms"] <= v["leave_ms"]
        ]
        assert path or not v["observed"]
        assert all(haversine_m(p["lat"], p["lon"], c.lat, c.lon) < 0.5 for p in path)


def test_honest_day_shape(sim: Simulation) -> None:
    device_id = dev("honest")
    customer_stops = [s for s in truth(sim, "stop", device_id) if s["kind"] == "customer"]
    assert 5 <= len(customer_stops) <= 9
    assert len([s for s in truth(sim, "stop", device_id) if s["kind"] == "lunch"]) == 1
    assert truth(sim, "mileage", device_id)[0]["km"] > 3
    assert not truth(sim, "spoof_episode", device_id) and not truth(sim, "contact_loss", device_id)
    battery = [r["battery_pct"] for r in unique_pings(sim, device_id)]
    assert battery[-1] < battery[0]


def test_default_roster_covers_every_detector_and_some_phones_run_out_of_hours(
    city: City,
) -> None:
    day = simulate(city, 20, DAY, seed=7, ping_interval_s=30)
    profiles = Counter(d.profile for d in day.devices)
    assert profiles["honest"] == 8 and len(profiles) == 13
    assert [d.profile for d in day.devices] == list(DEFAULT_ROSTER)
    kinds = {t["kind"] for t in truth(day, "spoof_episode")}
    assert {"mock_flag", "hidden_static", "teleport", "clock_skew", "device_integrity"} <= kinds
    assert truth(day, "left_post") and truth(day, "forbidden_visit")
    reasons = {t["reason"] for t in truth(day, "contact_loss")}
    assert {"powered_off", "no_network", "battery_died", "location_off", "app_killed"} <= reasons
    outside = [
        r
        for u in day.uploads
        if u.endpoint == "pings"
        for r in u.records
        if not WORK.is_active(r["ts_ms"])
    ]
    assert outside


def test_default_sim_day_is_the_previous_weekday() -> None:
    assert default_sim_day(dt.date(2024, 5, 15)) == dt.date(2024, 5, 14)
    assert default_sim_day(dt.date(2024, 5, 13)) == dt.date(2024, 5, 10)  # Monday -> Friday
    assert default_sim_day(dt.date(2024, 5, 12)) == dt.date(2024, 5, 10)  # Sunday -> Friday


def test_unknown_profile_is_rejected(city: City) -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        simulate(city, 1, DAY, profiles={"rep-001": "wizard"})


# ----------------------------------------------------------------------------- profiles
def test_driveby_stops_are_short_and_not_visits(sim: Simulation) -> None:
    device_id = dev("driveby")
    drivebys = [s for s in truth(sim, "stop", device_id) if s["kind"] == "driveby"]
    assert len(drivebys) >= 2
    assert all(60 <= s["duration_s"] < 180 for s in drivebys)
    visits = {(v["customer_id"], v["arrive_ms"]) for v in truth(sim, "visit", device_id)}
    assert not {(s["customer_id"], s["start_ms"]) for s in drivebys} & visits


@pytest.mark.parametrize("profile", ["spoofer_mock", "spoofer_hidden"])
def test_spoofers_stay_home_and_fake_static_visits(sim: Simulation, profile: str) -> None:
    device_id = dev(profile)
    episodes = truth(sim, "spoof_episode", device_id)
    fakes = [e for e in episodes if e["kind"] != "device_integrity"]
    assert len(fakes) >= 5
    assert not truth(sim, "visit", device_id) and truth(sim, "mileage", device_id)[0]["km"] == 0
    pings = unique_pings(sim, device_id)
    home = {(p["lat"], p["lon"]) for p in truth(sim, "path", device_id)}
    assert len(home) == 1  # the true position never moves
    for e in fakes:
        inside = [r for r in pings if e["start_ms"] <= r["ts_ms"] < e["end_ms"]]
        assert len(inside) > 10
        coords = {(r["lat"], r["lon"]) for r in inside}
        accuracy = {r["accuracy_m"] for r in inside}
        assert len(accuracy) == 1
        if profile == "spoofer_hidden":
            assert len(coords) == 1 and not any(r["is_mock"] for r in inside)
            assert {r["altitude_m"] for r in inside} == {38.0}
        else:
            assert all(r["is_mock"] for r in inside)
            assert max(haversine_m(*a, *b) for a in coords for b in list(coords)[:3]) < 10
    outside = [
        r for r in pings if not any(e["start_ms"] <= r["ts_ms"] < e["end_ms"] for e in fakes)
    ]
    assert not any(r["is_mock"] for r in outside)
    kinds = {r["kind"] for _, r in states_of(sim, device_id)}
    if profile == "spoofer_mock":
        assert {"mock_app_detected", "developer_mode_on"} <= kinds
        assert any(e["kind"] == "device_integrity" for e in episodes)
    else:
        assert not kinds & {"mock_app_detected", "developer_mode_on", "rooted", "emulator"}


def test_teleporter_jumps_10km_and_back(sim: Simulation, city: City) -> None:
    device_id = dev("teleporter")
    (episode,) = truth(sim, "spoof_episode", device_id)
    assert episode["kind"] == "teleport" and episode["end_ms"] - episode["start_ms"] >= 6 * 60_000
    path = path_by_seq(sim, device_id)
    during = [
        r
        for r in unique_pings(sim, device_id)
        if episode["start_ms"] <= r["ts_ms"] < episode["end_ms"]
    ]
    assert during and all(path[r["seq"]]["spoofed"] for r in during)
    assert all(
        haversine_m(r["lat"], r["lon"], path[r["seq"]]["lat"], path[r["seq"]]["lon"]) > 10_000
        for r in during
    )
    after = [r for r in unique_pings(sim, device_id) if r["ts_ms"] >= episode["end_ms"] + 60_000]
    r = after[0]
    assert haversine_m(r["lat"], r["lon"], path[r["seq"]]["lat"], path[r["seq"]]["lon"]) < 200
    assert not truth(sim, "visit", device_id) or all(
        not (v["arrive_ms"] <= episode["start_ms"] < v["leave_ms"])
        or v["customer_id"]
        not in {
            c.customer_id
            for c in city.customers
            if haversine_m(c.lat, c.lon, during[0]["lat"], during[0]["lon"]) < 200
        }
        for v in truth(sim, "visit", device_id)
    )


@pytest.mark.parametrize(
    ("profile", "reason", "off_kind", "on_kind"),
    [
        ("phone_off", ContactReason.POWERED_OFF, "shutdown", "boot"),
        ("app_killed", ContactReason.APP_KILLED, "app_killed", "app_start"),
        ("gps_off", ContactReason.LOCATION_OFF, "gps_off", "gps_on"),
        (
            "permission_revoked",
            ContactReason.PERMISSION_REVOKED,
            "permission_revoked",
            "permission_granted",
        ),
    ],
)
def test_recording_outages(
    sim: Simulation, profile: str, reason: ContactReason, off_kind: str, on_kind: str
) -> None:
    device_id = dev(profile)
    (loss,) = truth(sim, "contact_loss", device_id)
    assert loss["reason"] == reason.value and loss["end_ms"] - loss["start_ms"] >= 25 * 60_000
    ts = [r["ts_ms"] for r in unique_pings(sim, device_id)]
    assert not [t for t in ts if loss["start_ms"] <= t < loss["end_ms"]]
    gaps = np.diff(ts)
    assert gaps.max() >= 25 * 60_000
    states = {r["kind"]: (send, r["ts_ms"]) for send, r in states_of(sim, device_id)}
    assert states[off_kind][1] == loss["start_ms"]
    assert on_kind in states and states[on_kind][1] > states[off_kind][1]
    if profile in ("phone_off", "app_killed"):
        # Recorded before the outage, it can only be uploaded after the app is back.
        assert states[off_kind][0] >= loss["end_ms"]
    if profile == "phone_off":
        assert states["app_start"][1] > states["boot"][1]


def test_battery_died_has_no_shutdown_and_last_fix_at_3_percent(sim: Simulation) -> None:
    device_id = dev("battery_died")
    (loss,) = truth(sim, "contact_loss", device_id)
    assert loss["reason"] == "battery_died"
    pings = unique_pings(sim, device_id)
    before = [r for r in pings if r["ts_ms"] <= loss["start_ms"]]
    assert before[-1]["battery_pct"] == 3
    assert min(r["battery_pct"] for r in before) == 3
    kinds = [r["kind"] for _, r in states_of(sim, device_id)]
    assert "shutdown" not in kinds and "battery_low" in kinds and "boot" in kinds
    assert any(r["ts_ms"] >= loss["end_ms"] for r in pings)


@pytest.mark.parametrize("profile", ["no_network", "airplane"])
def test_network_outage_uploads_late_out_of_order_with_duplicates(
    sim: Simulation, profile: str
) -> None:
    device_id = dev(profile)
    (loss,) = truth(sim, "contact_loss", device_id)
    assert loss["reason"] == "no_network" and loss["end_ms"] - loss["start_ms"] >= 35 * 60_000
    uploads = [u for u in sim.uploads if u.device_id == device_id and u.endpoint == "pings"]
    assert not [u for u in uploads if loss["start_ms"] + 5_000 < u.send_ms < loss["end_ms"]]
    late = [u for u in uploads if any(u.send_ms - r["ts_ms"] > 10 * 60_000 for r in u.records)]
    assert len(late) >= 3
    assert all(u.send_ms >= loss["end_ms"] for u in late)
    assert any(
        [r["ts_ms"] for r in u.records] != sorted(r["ts_ms"] for r in u.records) for u in late
    )
    chunk_starts = [min(r["seq"] for r in u.records) for u in late]
    assert chunk_starts != sorted(chunk_starts)
    seqs = Counter(r["seq"] for u in uploads for r in u.records)
    assert any(n > 1 for n in seqs.values())
    # Recording went on: no gap in the fixes themselves beyond tunnels.
    ts = sorted({r["ts_ms"] for u in uploads for r in u.records})
    inside = [t for t in ts if loss["start_ms"] <= t < loss["end_ms"]]
    assert len(inside) > 300
    kinds = {r["kind"] for _, r in states_of(sim, device_id)}
    assert {"network_off", "network_on"} <= kinds or {"airplane_on", "airplane_off"} <= kinds


def test_slow_uploader_sends_hourly_messy_batches(sim: Simulation) -> None:
    device_id = dev("slow_uploader")
    uploads = [u for u in sim.uploads if u.device_id == device_id and u.endpoint == "pings"]
    sends = sorted(u.send_ms for u in uploads)
    bursts = 1 + sum(b - a > 5 * 60_000 for a, b in itertools.pairwise(sends))
    assert 9 <= bursts <= 13
    assert max(u.send_ms - min(r["ts_ms"] for r in u.records) for u in uploads) > 50 * 60_000
    seqs = Counter(r["seq"] for u in uploads for r in u.records)
    assert sum(n > 1 for n in seqs.values()) > 20
    losses = truth(sim, "contact_loss", device_id)
    assert len(losses) >= 8 and all(x["reason"] == "no_network" for x in losses)


def test_clock_skew_phone_is_ten_minutes_ahead(sim: Simulation) -> None:
    device_id = dev("clock_skew")
    uploads = [u for u in sim.uploads if u.device_id == device_id]
    ahead = [r["ts_ms"] - u.send_ms for u in uploads for r in u.records]
    assert min(ahead) > 8 * 60_000  # every record claims to come from the future
    honest = [
        r["ts_ms"] - u.send_ms
        for u in sim.uploads
        if u.device_id == dev("honest")
        for r in u.records
    ]
    assert max(honest) <= 0
    (episode,) = truth(sim, "spoof_episode", device_id)
    assert episode["kind"] == "clock_skew" and episode["alerts"] == ["spoof_clock_skew"]


def test_left_post_technician_leaves_the_workshop_for_about_30_min(sim: Simulation) -> None:
    device_id = dev("left_post")
    (episode,) = truth(sim, "left_post", device_id)
    assert 20 * 60_000 <= episode["end_ms"] - episode["start_ms"] <= 45 * 60_000
    assert WORK.is_active(episode["start_ms"]) and WORK.is_active(episode["end_ms"])
    crossings = [
        (c["transition"], c["ts_ms"])
        for c in truth(sim, "fence_crossing", device_id)
        if c["fence_id"] == "workshop" and not c["initial"]
    ]
    assert crossings == [("exit", episode["start_ms"]), ("enter", episode["end_ms"])]
    assert not truth(sim, "left_post", dev("honest"))


def test_forbidden_profile_enters_a_forbidden_zone(sim: Simulation, city: City) -> None:
    device_id = dev("forbidden")
    (episode,) = truth(sim, "forbidden_visit", device_id)
    assert episode["end_ms"] - episode["start_ms"] >= 15 * 60_000
    crossings = [
        c for c in truth(sim, "fence_crossing", device_id) if c["fence_id"] == episode["fence_id"]
    ]
    assert [c["transition"] for c in crossings] == ["enter", "exit"]
    # Nobody else goes near a forbidden zone, the workshop or a territory-free area.
    others = {
        c["fence_kind"]
        for c in truth(sim, "fence_crossing")
        if c["device_id"] not in (device_id, dev("left_post"))
    }
    assert others <= {"territory", "office"}


def test_fence_crossings_are_exact_on_the_true_path(sim: Simulation, city: City) -> None:
    crossings = truth(sim, "fence_crossing")
    assert len(crossings) >= 4
    checked = 0
    for c in crossings:
        assert WORK.is_active(c["ts_ms"])
        if c["initial"]:
            continue  # inside when observation started: not a crossing of the path
        path = sorted(truth(sim, "path", c["device_id"]), key=lambda p: p["true_ms"])
        before = [p for p in path if p["true_ms"] < c["ts_ms"]][-1:]
        after = [p for p in path if p["true_ms"] > c["ts_ms"]][:1]
        if not before or not after or after[0]["true_ms"] - before[0]["true_ms"] > 20_000:
            continue
        inside = []
        for p in (before[0], after[0]):
            x, y = city.frame.to_xy(p["lat"], p["lon"])
            inside.append(
                bool(city.fence_shapes[c["fence_id"]].contains(np.array([x]), np.array([y]))[0])
            )
        assert inside == ([False, True] if c["transition"] == "enter" else [True, False])
        checked += 1
    assert checked >= len(crossings) // 2


def test_demo_files_match_the_default_city(city: City) -> None:
    assert (ROOT / "data/demo/customers.csv").read_text(encoding="utf-8") == city.customers_csv()
    text = (ROOT / "data/demo/fences.geojson").read_text(encoding="utf-8")
    assert text == city.fences_geojson()
    features = json.loads(text)["features"]
    assert {f["properties"]["kind"] for f in features} == {
        "office",
        "workshop",
        "forbidden",
        "territory",
    }
    workshop = next(f for f in features if f["properties"]["kind"] == "workshop")
    assert workshop["properties"]["assigned"] == "*"
    circle = next(f for f in features if f["geometry"]["type"] == "Point")
    assert circle["properties"]["radius_m"] > 0


def test_city_customers(city: City) -> None:
    assert len(city.customers) == 300
    grades = Counter(c.grade for c in city.customers)
    assert 40 <= grades["A"] <= 80 and 60 <= grades["B"] <= 120 and grades["C"] >= 110
    assert all(60 <= c.radius_m <= 120 for c in city.customers)
    points = np.array([city.frame.to_xy(c.lat, c.lon) for c in city.customers])
    d = np.hypot(points[:, None, 0] - points[None, :, 0], points[:, None, 1] - points[None, :, 1])
    np.fill_diagonal(d, math.inf)
    assert d.min() >= 249
    by_fence = defaultdict(int)
    for c in city.customers:
        for f in city.fences:
            if f.kind != "territory" and f.geometry.contains(
                __import__("shapely").Point(c.lon, c.lat)
            ):
                by_fence[f.fence_id] += 1
    assert not by_fence
    circle = next(f for f in city.fences if f.circle is not None)
    assert circle.kind == "forbidden" and circle.circle[2] == 80.0


def test_fence_truth_starts_with_an_enter_into_the_fences_a_rep_is_in(
    sim: Simulation, city: City
) -> None:
    for device in sim.devices:
        crossings = truth(sim, "fence_crossing", device.device_id)
        initial = [c for c in crossings if c["initial"]]
        # Everyone starts the day inside exactly one territory (they cover the city); the
        # technician may already be in the workshop when work starts.
        kinds = sorted(c["fence_kind"] for c in initial)
        assert kinds in (["territory"], ["territory", "workshop"]), device.device_id
        (first,) = [c for c in initial if c["fence_kind"] == "territory"]
        assert first["transition"] == "enter"
        assert WORK.is_active(first["ts_ms"]) and not WORK.is_active(first["ts_ms"] - 60_000)
        path = sorted(truth(sim, "path", device.device_id), key=lambda p: p["true_ms"])
        nearest = min(path, key=lambda p: abs(p["true_ms"] - first["ts_ms"]))
        assert abs(nearest["true_ms"] - first["ts_ms"]) < 60_000
        x, y = city.frame.to_xy(nearest["lat"], nearest["lon"])
        shape = city.fence_shapes[first["fence_id"]]
        assert bool(shape.contains(np.array([x]), np.array([y]))[0])
        # Per fence, transitions alternate enter/exit from the initial state.
        for fence_id in {c["fence_id"] for c in crossings}:
            kinds = [c["transition"] for c in crossings if c["fence_id"] == fence_id]
            assert all(a != b for a, b in itertools.pairwise(kinds)), (device.device_id, kinds)


def test_fence_truth_reports_a_change_across_a_recording_gap_when_recording_resumes(
    city: City,
) -> None:
    found = 0
    for seed in (1, 2):  # rep-002's day as in the "contact loss" scenario (tuning seeds)
        day = simulate(city, reps=2, day=DAY, seed=seed, profiles={"rep-002": "app_killed"})
        (loss,) = [t for t in day.truth if t["type"] == "contact_loss"]
        mine = [t for t in day.truth if t["device_id"] == "rep-002"]
        for c in (t for t in mine if t["type"] == "fence_crossing"):
            assert not loss["start_ms"] <= c["ts_ms"] < loss["end_ms"]
            found += c["ts_ms"] == loss["end_ms"] and not c["initial"]
    assert found >= 1  # some rep crossed a territory border while the app was dead


def test_border_loiterer_works_inside_an_office_edge_with_a_poor_gps(
    sim: Simulation, city: City
) -> None:
    device_id = dev("border_loiterer")
    office = [c for c in truth(sim, "fence_crossing", device_id) if c["fence_kind"] == "office"]
    assert [c["transition"] for c in office] == ["enter", "exit"]
    enter, exit_ = office[0]["ts_ms"], office[1]["ts_ms"]
    assert exit_ - enter > 7 * 3_600_000
    shape = city.fence_shapes[office[0]["fence_id"]]
    assert shape.polygon_xy is not None
    boundary = shape.polygon_xy.exterior
    path = [p for p in truth(sim, "path", device_id) if enter + 600_000 < p["true_ms"] < exit_]
    depths = []
    for p in path:
        x, y = city.frame.to_xy(p["lat"], p["lon"])
        assert bool(shape.contains(np.array([x]), np.array([y]))[0])
        depths.append(boundary.distance(shapely.Point(x, y)))
    assert np.median(depths) < 25.0  # mostly along the edge, 8-20 m inside
    accs = [r["accuracy_m"] for r in unique_pings(sim, device_id)]
    assert np.median(accs) >= 10.0


def test_replayer_reports_its_own_earlier_day_to_the_last_digit_from_home(city: City) -> None:
    profiles = {"rep-001": "replayer", "rep-002": "honest"}
    day = dt.date(2024, 5, 13)  # a Monday: the replayed day is Friday, 3 days back
    sim = simulate(city, 2, day, seed=5, profiles=profiles, history_days=1)
    assert len(sim.history) == 1 and sim.history[0].day == dt.date(2024, 5, 10)
    assert [d.profile for d in sim.history[0].devices] == ["honest", "honest"]
    recorded = unique_pings(sim.history[0], "rep-001")
    replayed = unique_pings(sim, "rep-001")
    assert len(replayed) == len(recorded) > 5000
    keys = ("lat", "lon", "accuracy_m", "speed_mps", "bearing_deg", "altitude_m", "provider")
    assert all(all(a[k] == b[k] for k in keys) for a, b in zip(recorded, replayed, strict=True))
    shifts = {b["ts_ms"] - a["ts_ms"] for a, b in zip(recorded, replayed, strict=True)}
    assert len(shifts) == 1
    assert 0 <= shifts.pop() - 3 * 86_400_000 <= 300_000  # whole days plus a small offset
    assert not any(r["is_mock"] for r in replayed)
    assert replayed[0]["seq"] != recorded[0]["seq"]  # today's phone counts on
    # The rep stays home; the truth is one replayed episode over the whole reported day.
    assert len({(p["lat"], p["lon"]) for p in truth(sim, "path", "rep-001")}) == 1
    assert all(p["spoofed"] for p in truth(sim, "path", "rep-001"))
    assert not truth(sim, "visit", "rep-001") and truth(sim, "mileage", "rep-001")[0]["km"] == 0
    (episode,) = truth(sim, "spoof_episode", "rep-001")
    assert episode["kind"] == "replayed_track" and episode["alerts"] == ["spoof_replay"]
    assert (episode["start_ms"], episode["end_ms"]) == (replayed[0]["ts_ms"], replayed[-1]["ts_ms"])
    # The replayed day was a real working day.
    assert len(truth(sim.history[0], "visit", "rep-001")) >= 5
    # Without history the replayer's day is the same; today's honest day does not depend on it.
    alone = simulate(city, 2, day, seed=5, profiles=profiles)
    assert not alone.history
    assert unique_pings(alone, "rep-001") == replayed
    assert unique_pings(alone, "rep-002") == unique_pings(sim, "rep-002")


def test_history_days_are_honest_days_from_the_same_home_never_repeating_a_moving_fix(
    city: City,
) -> None:
    sim = simulate(city, 2, DAY, seed=3, profiles={"rep-001": "teleporter"}, history_days=2)
    assert [h.day for h in sim.history] == [dt.date(2024, 5, 10), dt.date(2024, 5, 13)]
    for device_id in ("rep-001", "rep-002"):
        days = [*sim.history, sim]
        homes = {
            (s["lat"], s["lon"])
            for d in days
            for s in truth(d, "stop", device_id)
            if s["kind"] == "home"
        }
        assert len(homes) == 1
        # While moving, a fix never repeats another day's to the last digit (at rest among
        # thousands of fixes a 1 cm coincidence does happen now and then).
        positions = [
            {(r["lat"], r["lon"]) for r in pings_of(d, device_id) if r["speed_mps"] >= 2}
            for d in days
        ]
        assert all(len(p) > 300 for p in positions)
        assert not positions[0] & positions[1] and not positions[1] & positions[2]
        assert all(not truth(d, "spoof_episode", device_id) for d in sim.history)
