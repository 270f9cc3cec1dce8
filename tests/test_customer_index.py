"""CustomerIndex against a brute-force scan."""

from __future__ import annotations

import random

import pytest

from pipeline.geo import haversine_m
from pipeline.reference.customers import CustomerIndex
from pipeline.reference.models import Customer


def random_customers(n: int, seed: int = 5) -> list[Customer]:
    rng = random.Random(seed)
    return [
        Customer(
            customer_id=f"c{i}",
            org_id=rng.choice(("org1", "org2")),
            name=f"Customer {i}",
            # ~11 x 7 km around Berlin: dense enough that circles overlap.
            lat=52.45 + rng.random() * 0.1,
            lon=13.35 + rng.random() * 0.1,
            radius_m=rng.uniform(20.0, 300.0),
            grade=rng.choice("ABC"),
        )
        for i in range(n)
    ]


def brute_within(
    customers: list[Customer], lat: float, lon: float, extra_m: float, org_id: str | None
) -> list[tuple[str, float]]:
    found = [
        (c.customer_id, haversine_m(lat, lon, c.lat, c.lon))
        for c in customers
        if (org_id is None or c.org_id == org_id)
        and haversine_m(lat, lon, c.lat, c.lon) <= c.radius_m + extra_m
    ]
    return sorted(found, key=lambda cd: (cd[1], cd[0]))


CUSTOMERS = random_customers(2000)
INDEX = CustomerIndex(CUSTOMERS)


def test_within_matches_brute_force() -> None:
    rng = random.Random(11)
    non_empty = 0
    for _ in range(300):
        lat = 52.44 + rng.random() * 0.12
        lon = 13.34 + rng.random() * 0.12
        extra = rng.choice((0.0, 0.0, 25.0, 150.0))
        org = rng.choice((None, "org1", "org2"))
        got = [(c.customer_id, d) for c, d in INDEX.within(lat, lon, extra, org_id=org)]
        want = brute_within(CUSTOMERS, lat, lon, extra, org)
        assert [cid for cid, _ in got] == [cid for cid, _ in want]
        assert all(abs(a[1] - b[1]) < 1e-6 for a, b in zip(got, want, strict=True))
        non_empty += bool(want)
    assert non_empty > 100  # the comparison exercised real hits


def test_within_boundary_is_inclusive_and_extra_widens() -> None:
    c = CUSTOMERS[0]
    # A point due north at exactly radius + 0.5 m: outside, then inside with 1 m of slack.
    dlat = (c.radius_m + 0.5) / 111_195.0
    lat = c.lat + dlat
    d = haversine_m(lat, c.lon, c.lat, c.lon)
    assert d > c.radius_m
    assert c not in [x for x, _ in INDEX.within(lat, c.lon, org_id=c.org_id)]
    assert c in [x for x, _ in INDEX.within(lat, c.lon, extra_m=d - c.radius_m, org_id=c.org_id)]


def test_nearest_matches_brute_force() -> None:
    rng = random.Random(12)
    for _ in range(200):
        lat = 52.44 + rng.random() * 0.12
        lon = 13.34 + rng.random() * 0.12
        max_m = rng.choice((50.0, 200.0, 1000.0))
        org = rng.choice((None, "org1"))
        pool = [c for c in CUSTOMERS if org is None or c.org_id == org]
        dists = sorted(
            (haversine_m(lat, lon, c.lat, c.lon), c.customer_id)
            for c in pool
            if haversine_m(lat, lon, c.lat, c.lon) <= max_m
        )
        got = INDEX.nearest(lat, lon, max_m, org_id=org)
        if not dists:
            assert got is None
        else:
            assert got is not None
            assert got[0].customer_id == dists[0][1]
            assert got[1] == pytest.approx(dists[0][0])


def test_empty_index() -> None:
    empty = CustomerIndex([])
    assert len(empty) == 0
    assert empty.within(52.5, 13.4, 100.0) == []
    assert empty.nearest(52.5, 13.4, 1000.0) is None


def test_len_and_generator_input() -> None:
    index = CustomerIndex(c for c in CUSTOMERS[:10])
    assert len(index) == 10
    c = CUSTOMERS[3]
    hits = index.within(c.lat, c.lon)
    assert hits[0][0] == c and hits[0][1] == 0.0


def test_high_latitude_and_southern_hemisphere() -> None:
    north = Customer("n", "o", "N", 69.65, 18.95, radius_m=200.0)
    south = Customer("s", "o", "S", -33.87, 151.21, radius_m=50.0)
    index = CustomerIndex([north, south])
    # 190 m due east of each: at 69.65 N that is ~0.005 deg of longitude.
    east_n = 18.95 + 190.0 / (111_195.0 * 0.3475)
    assert [c.customer_id for c, _ in index.within(69.65, east_n)] == ["n"]
    east_s = 151.21 + 45.0 / (111_195.0 * 0.8302)
    assert [c.customer_id for c, _ in index.within(-33.87, east_s)] == ["s"]
    assert index.within(-33.87, 151.21 + 0.01) == []
