"""Peer-library wrappers for `fieldtrack evaluate`.

The naive fence baseline and the helpers run everywhere; the trackintel / MovingPandas /
filterpy wrappers are optional extras and are tested only where they are installed.
"""

from __future__ import annotations

import itertools
import math

import pytest
from shapely.geometry import Polygon

from pipeline.evaluate import peers
from pipeline.events import Ping
from pipeline.geo import LocalFrame, haversine_m
from pipeline.reference.models import Customer, Fence, Schedule

ORG = "org-1"
FRAME = LocalFrame(52.52, 13.405)
T0 = 1_794_985_200_000  # 2026-11-18 08:00 Europe/Berlin (07:00 UTC), a Wednesday


def ping(
    seq: int, ts_s: float, x: float, y: float, device: str = "rep-1", accuracy: float = 5.0
) -> Ping:
    lat, lon = FRAME.to_latlon(x, y)
    return Ping(ORG, device, seq, T0 + int(ts_s * 1000), lat, lon, accuracy)


def box_fence(fence_id: str, x0: float, y0: float, x1: float, y1: float, **kw: object) -> Fence:
    corners = [FRAME.to_latlon(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    polygon = Polygon([(lon, lat) for lat, lon in corners])
    return Fence(fence_id, ORG, fence_id, "office", polygon, **kw)  # type: ignore[arg-type]


def circle_fence(fence_id: str, x: float, y: float, radius_m: float) -> Fence:
    lat, lon = FRAME.to_latlon(x, y)
    rough = Polygon(
        [
            (
                lon + radius_m / FRAME.m_per_deg_lon * math.cos(a),
                lat + radius_m / 111_195 * math.sin(a),
            )
            for a in (i * math.pi / 16 for i in range(32))
        ]
    )
    return Fence(fence_id, ORG, fence_id, "forbidden", rough, circle=(lat, lon, radius_m))


def walk_across_with_jitter() -> list[Ping]:
    """Walk east along y=50 through a fence spanning x 0..100, jittering at the west border.

    x positions: -60, -40, -20, then -3, +3, -3, +3 (border jitter), 30, 60, 90, 120, 150.
    """
    xs = [-60, -40, -20, -3, 3, -3, 3, 30, 60, 90, 120, 150]
    return [ping(i, 10 * i, x, 50) for i, x in enumerate(xs)]


# --- naive fences -------------------------------------------------------------------------


def test_naive_fence_flaps_on_border_jitter() -> None:
    fence = box_fence("office-a", 0, 0, 100, 100)
    events = peers.naive_fence_events(walk_across_with_jitter(), [fence])
    transitions = [(e["transition"], (e["ts_ms"] - T0) // 1000) for e in events]
    # Enter at the first fix inside (t=40), exit/enter flapping on the jitter, exit at t=100.
    assert transitions == [
        ("enter", 40),
        ("exit", 50),
        ("enter", 60),
        ("exit", 100),
    ]
    assert all(e["device_id"] == "rep-1" and e["fence_id"] == "office-a" for e in events)


def test_naive_fence_sorts_arrival_order_and_drops_repeated_timestamps() -> None:
    fixes = walk_across_with_jitter()
    # A second, inside fix at t=50 with a later seq: dropped, the first of the timestamp wins.
    shuffled = [*fixes[::-1], ping(99, 50, 50, 50)]
    fence = box_fence("office-a", 0, 0, 100, 100)
    assert peers.naive_fence_events(shuffled, [fence]) == peers.naive_fence_events(fixes, [fence])


def test_naive_fence_first_fix_inside_is_enter_and_other_orgs_ignored() -> None:
    fence = box_fence("office-a", 0, 0, 100, 100)
    other = Fence("elsewhere", "org-2", "x", "office", fence.geometry)
    fixes = [ping(0, 0, 50, 50), ping(1, 10, 52, 50), ping(2, 20, 200, 50)]
    events = peers.naive_fence_events(fixes, [fence, other])
    assert [(e["fence_id"], e["transition"]) for e in events] == [
        ("office-a", "enter"),
        ("office-a", "exit"),
    ]


def test_naive_fence_circle_uses_exact_distance() -> None:
    # The rough 32-gon lies inside the true circle; a fix at 99.5 m is inside the circle only.
    fence = circle_fence("zone", 0, 0, 100)
    fixes = [ping(0, 0, 0, 150), ping(1, 10, 0, 99.5), ping(2, 20, 0, 150)]
    events = peers.naive_fence_events(fixes, [fence])
    assert [e["transition"] for e in events] == ["enter", "exit"]
    assert events[0]["ts_ms"] == T0 + 10_000


def test_naive_fence_schedule_drops_device_silently() -> None:
    # Active 08:00-08:01 local: inside from 07:59:30 to 08:02 -> enter at 08:00 only.
    schedule = Schedule(tz="Europe/Berlin", days=frozenset(range(7)), start_min=480, end_min=481)
    fence = box_fence("timed", 0, 0, 100, 100, schedule=schedule)
    fixes = [ping(i, -30 + 30 * i, 50, 50) for i in range(6)]  # t = -30 .. 120 s
    events = peers.naive_fence_events(fixes, [fence])
    assert [(e["transition"], e["ts_ms"]) for e in events] == [("enter", T0)]
    ungated = peers.naive_fence_events(fixes, [fence], respect_schedules=False)
    assert [(e["transition"], e["ts_ms"]) for e in ungated] == [("enter", T0 - 30_000)]


def test_naive_fence_no_pings_or_fences() -> None:
    assert peers.naive_fence_events([], [box_fence("a", 0, 0, 1, 1)]) == []
    assert peers.naive_fence_events(walk_across_with_jitter(), []) == []


# --- helpers ------------------------------------------------------------------------------


def test_available_reports_every_peer() -> None:
    have = peers.available()
    assert set(have) == {"trackintel", "movingpandas", "filterpy"}
    assert all(isinstance(v, bool) for v in have.values())


def test_timed_returns_result_and_seconds() -> None:
    result, seconds = peers.timed(sum, [1, 2, 3])
    assert result == 6
    assert 0.0 <= seconds < 1.0


def test_mileage_sums_consecutive_positions_in_time_order() -> None:
    a, b, c = FRAME.to_latlon(0, 0), FRAME.to_latlon(300, 0), FRAME.to_latlon(300, 400)
    smoothed = {("d", 3, 3000): c, ("d", 1, 1000): a, ("d", 2, 2000): b, ("e", 1, 1000): a}
    km = peers.filterpy_mileage_km(smoothed)
    assert km["d"] == pytest.approx(0.7, abs=1e-3)
    assert km["e"] == 0.0


def test_run_peers_reports_each_peer_and_runs_the_naive_baseline() -> None:
    fence = box_fence("office-a", 0, 0, 100, 100)
    report = peers.run_peers(walk_across_with_jitter(), [], [fence])
    have = peers.available()
    library = {
        "trackintel_visits": "trackintel",
        "movingpandas_visits": "movingpandas",
        "filterpy_smooth": "filterpy",
    }
    for name, lib in library.items():
        assert report[name]["available"] is have[lib]
    naive = report["naive_fence_events"]
    assert naive["available"] is True
    assert len(naive["output"]) == 4
    assert naive["pings"] == 12 and naive["pings_per_s"] > 0


# --- peers (only where installed) ---------------------------------------------------------

CUSTOMER_X, CUSTOMER_Y = 1000.0, 0.0


def visit_day(device: str = "rep-1") -> tuple[list[Ping], int, int]:
    """Drive 10 m/s east to a customer at x=1000, stay 10 min (±8 m jitter), drive on."""
    fixes: list[Ping] = []
    t, seq = 0.0, 0
    for x in range(0, 1000, 50):  # approach: 5 s apart
        fixes.append(ping(seq, t, x, 0, device))
        t, seq = t + 5, seq + 1
    arrive = t
    for i in range(120):  # 600 s at the customer
        jx, jy = 8 * math.sin(i * 1.7), 8 * math.cos(i * 2.3)
        fixes.append(ping(seq, t, CUSTOMER_X + jx, CUSTOMER_Y + jy, device))
        t, seq = t + 5, seq + 1
    leave = t - 5
    for x in range(1050, 3000, 50):
        fixes.append(ping(seq, t, x, 0, device))
        t, seq = t + 5, seq + 1
    fixes.append(ping(seq, t + 3, x, 0, device))  # make the last stretch non-uniform
    return fixes, T0 + int(arrive * 1000), T0 + int(leave * 1000)


def customers() -> list[Customer]:
    lat, lon = FRAME.to_latlon(CUSTOMER_X, CUSTOMER_Y)
    far_lat, far_lon = FRAME.to_latlon(CUSTOMER_X, 5000)
    return [
        Customer("C1", ORG, "Shop", lat, lon, radius_m=80),
        Customer("C2", ORG, "Far", far_lat, far_lon, radius_m=80),
        Customer("C3", "org-2", "Other org", lat, lon, radius_m=80),
    ]


def assert_one_visit(visits: list[dict], arrive_ms: int, leave_ms: int, slack_s: float) -> None:
    assert len(visits) == 1
    visit = visits[0]
    assert visit["device_id"] == "rep-1" and visit["customer_id"] == "C1"
    assert abs(visit["arrive_ms"] - arrive_ms) <= slack_s * 1000
    assert abs(visit["leave_ms"] - leave_ms) <= slack_s * 1000


def test_trackintel_finds_the_visit() -> None:
    pytest.importorskip("trackintel")
    fixes, arrive, leave = visit_day()
    visits = peers.trackintel_visits(fixes[::-1], customers())  # arrival order does not matter
    # The sliding window ends a stay at the first fix outside: within two samples.
    assert_one_visit(visits, arrive, leave, slack_s=15)


def test_trackintel_no_fixes_no_visits() -> None:
    pytest.importorskip("trackintel")
    assert peers.trackintel_visits([], customers()) == []


def test_movingpandas_finds_the_visit() -> None:
    pytest.importorskip("movingpandas")
    fixes, arrive, leave = visit_day()
    visits = peers.movingpandas_visits(fixes, customers())
    assert_one_visit(visits, arrive, leave, slack_s=15)


def test_movingpandas_stop_away_from_customers_is_no_visit() -> None:
    pytest.importorskip("movingpandas")
    fixes, _, _ = visit_day()
    assert peers.movingpandas_visits(fixes, customers()[1:2]) == []


def test_filterpy_smooths_stationary_jitter_without_a_gate() -> None:
    pytest.importorskip("filterpy")
    fixes = [ping(i, 5 * i, 10 * math.sin(i * 1.7), 10 * math.cos(i * 2.3)) for i in range(60)]
    fixes.append(ping(60, 300, 400, 0))  # a 400 m outlier: no gate, so it pulls the estimate
    smoothed = peers.filterpy_smooth(fixes)
    assert set(smoothed) == {(p.device_id, p.seq, p.ts_ms) for p in fixes}
    centre = FRAME.to_latlon(0, 0)
    raw_err = [haversine_m(p.lat, p.lon, *centre) for p in fixes[30:60]]
    smooth_err = [
        haversine_m(*smoothed[(p.device_id, p.seq, p.ts_ms)], *centre) for p in fixes[30:60]
    ]
    assert sum(smooth_err) < 0.6 * sum(raw_err)
    assert max(smooth_err) < sum(raw_err) / len(raw_err)
    outlier = smoothed[("rep-1", 60, T0 + 300_000)]
    assert haversine_m(*outlier, *centre) > 20  # pulled off by the ungated outlier
    km = peers.filterpy_mileage_km(smoothed)
    raw_km = (
        sum(haversine_m(a.lat, a.lon, b.lat, b.lon) for a, b in itertools.pairwise(fixes)) / 1000
    )
    assert 0 < km["rep-1"] < raw_km
