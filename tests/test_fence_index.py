"""FenceIndex: exact signed distances, GeoJSON loading, scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from pipeline.geo import M_PER_DEG_LAT, LocalFrame, haversine_m
from pipeline.reference.fences import (
    FenceIndex,
    assigned_from_geojson,
    circle_fence,
    fence_from_geojson,
)
from pipeline.reference.models import Fence, Schedule

LAT0, LON0 = 52.52, 13.40
FRAME = LocalFrame(LAT0, LON0)


def polygon_m(points_m: list[tuple[float, float]], frame: LocalFrame = FRAME) -> shapely.Polygon:
    """A lon/lat polygon from (x, y) metres in a frame."""
    ring = []
    for x, y in points_m:
        lat, lon = frame.to_latlon(x, y)
        ring.append((lon, lat))
    return shapely.Polygon(ring)


def square(fence_id: str, cx: float, cy: float, half: float, org: str = "acme") -> Fence:
    pts = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half),
           (cx - half, cy + half)]  # fmt: skip
    return Fence(fence_id, org, fence_id, "office", polygon_m(pts))


def random_fences(rng: np.random.Generator, n: int) -> list[Fence]:
    fences: list[Fence] = []
    for i in range(n):
        cx, cy = rng.uniform(-10_000, 10_000, 2)
        size = rng.uniform(30, 800)
        kind = i % 4
        if kind == 0:
            lat, lon = FRAME.to_latlon(cx, cy)
            fences.append(circle_fence(f"f{i}", "acme", f"c{i}", "customer", lat, lon, size))
            continue
        k = int(rng.integers(3, 12))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        radii = size * rng.uniform(0.3, 1.0, k)
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles, strict=True)
        ]
        geom: shapely.Geometry = shapely.make_valid(polygon_m(pts))
        if kind == 2:  # a courtyard: polygon with a hole
            geom = geom.difference(shapely.Point(*geom.centroid.coords[0]).buffer(0.00005))
        elif kind == 3:  # two parts
            lat, lon = FRAME.to_latlon(cx + 3 * size, cy)
            geom = shapely.union_all([geom, shapely.Point(lon, lat).buffer(0.0005)])
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        fences.append(Fence(f"f{i}", "acme", f"p{i}", "territory", geom))
    return fences


def brute_force(fences: list[Fence], bounds: np.ndarray, lat: float, lon: float) -> np.ndarray:
    """Signed distances of every fence to a point, in a frame centred on the point
    (independent of the index's per-fence frames); circles by haversine. Fences whose
    bounding box is over 200 m away get +inf (they are at least that far)."""
    out = np.full(len(fences), np.inf)
    frame = LocalFrame(lat, lon)
    scale = frame.m_per_deg_lon
    pad_lat, pad_lon = 200 / M_PER_DEG_LAT, 200 / scale
    close = np.flatnonzero(
        (bounds[:, 0] - pad_lon <= lon)
        & (lon <= bounds[:, 2] + pad_lon)
        & (bounds[:, 1] - pad_lat <= lat)
        & (lat <= bounds[:, 3] + pad_lat)
    )
    polygons = []
    for i in close.tolist():
        circle = fences[i].circle
        if circle is not None:
            out[i] = haversine_m(lat, lon, circle[0], circle[1]) - circle[2]
        else:
            polygons.append(i)
    if polygons:
        geoms = shapely.transform(
            np.array([fences[i].geometry for i in polygons], dtype=object),
            lambda c: np.column_stack(((c[:, 0] - lon) * scale, (c[:, 1] - lat) * M_PER_DEG_LAT)),
        )
        dist = shapely.distance(shapely.boundary(geoms), shapely.Point(0.0, 0.0))
        out[polygons] = np.where(shapely.contains_xy(geoms, 0.0, 0.0), -dist, dist)
    return out


def test_matches_brute_force_on_1000_random_fences() -> None:
    rng = np.random.default_rng(11)
    fences = random_fences(rng, 1000)
    index = FenceIndex(fences)
    bounds = shapely.bounds(np.array([f.geometry for f in fences], dtype=object))
    margin = 50.0
    points = [FRAME.to_latlon(*rng.uniform(-11_000, 11_000, 2)) for _ in range(600)]
    # And 400 points right at fences, where inside/outside and the margin matter.
    for f in fences[:400]:
        c = f.geometry.representative_point() if f.circle is None else f.geometry.centroid
        jitter = rng.normal(0, 0.002, 2)
        points.append((c.y + jitter[1] * 0.6, c.x + jitter[0]))
    compared = inside = 0
    for lat, lon in points:
        got = {f.fence_id: d for f, d in index.near(lat, lon, margin)}
        expected = brute_force(fences, bounds, lat, lon)
        for fence, want in zip(fences, expected.tolist(), strict=True):
            if abs(want - margin) < 1.0:
                continue  # on the edge of the margin: either answer is right
            if want <= margin:
                assert fence.fence_id in got, (fence.fence_id, lat, lon, want)
                assert got[fence.fence_id] == pytest.approx(want, abs=1.0)
                compared += 1
                inside += want < 0
            else:
                assert fence.fence_id not in got, (fence.fence_id, lat, lon, want)
    assert compared > 300 and inside > 100  # the test really exercised both sides


def test_near_many_equals_near_and_filters_org() -> None:
    rng = np.random.default_rng(5)
    fences = random_fences(rng, 200)
    other = [square("x1", 0, 0, 20_000, org="other")]
    index = FenceIndex(fences + other)
    lats, lons = zip(
        *(FRAME.to_latlon(*rng.uniform(-10_000, 10_000, 2)) for _ in range(300)), strict=True
    )
    margins = [float(m) for m in rng.uniform(0, 200, 300)]
    many = index.near_many(lats, lons, margins)
    for i in range(300):
        single = index.near(lats[i], lons[i], margins[i])
        assert [(f.fence_id, round(d, 6)) for f, d in single] == [
            (f.fence_id, round(d, 6)) for f, d in many[i]
        ]
        assert any(f.org_id == "other" for f, _ in single)  # the huge square holds every point
    acme_only = index.near_many(lats, lons, margins, org_id="acme")
    assert all(f.org_id == "acme" for hits in acme_only for f, _ in hits)
    assert sum(map(len, acme_only)) == sum(map(len, many)) - 300
    assert index.near_many(lats, lons, margins, org_id="nobody") == [[] for _ in range(300)]


def test_inside_returned_at_any_depth_and_signed() -> None:
    index = FenceIndex([square("big", 0, 0, 5000), square("small", 8000, 0, 50)])
    lat, lon = FRAME.to_latlon(0, 0)
    assert [(f.fence_id, round(d)) for f, d in index.near(lat, lon)] == [("big", -5000)]
    lat, lon = FRAME.to_latlon(8000, 80)  # 30 m north of the small square
    assert index.near(lat, lon, 0.0) == []
    (hit,) = index.near(lat, lon, 31.0)
    assert hit[0].fence_id == "small" and hit[1] == pytest.approx(30.0, abs=0.1)


def test_circle_membership_is_exact() -> None:
    centre = FRAME.to_latlon(0, 0)
    index = FenceIndex([circle_fence("c", "acme", "C", "customer", *centre, 100.0)])
    # Between the 64-gon and the true circle: the polygon says outside, the circle inside.
    for angle in np.linspace(0, 2 * math.pi, 37):
        lat, lon = FRAME.to_latlon(99.9 * math.cos(angle + 0.049), 99.9 * math.sin(angle + 0.049))
        (hit,) = index.near(lat, lon)
        assert hit[1] == pytest.approx(-0.1, abs=0.05)
    lat, lon = FRAME.to_latlon(110.0, 0.0)
    assert index.near(lat, lon, 9.0) == []
    assert index.near(lat, lon, 11.0)[0][1] == pytest.approx(10.0, abs=0.05)


def test_build_leaves_fence_geometry_untouched_and_rejects_duplicates() -> None:
    fence = square("a", 0, 0, 100)
    before = fence.geometry.wkt
    FenceIndex([fence, square("a", 0, 0, 100, org="other")])  # same id, other org: fine
    assert fence.geometry.wkt == before
    with pytest.raises(ValueError, match="duplicate"):
        FenceIndex([fence, square("a", 500, 0, 10)])
    assert FenceIndex([]).near(LAT0, LON0, 100) == []


def test_inner_depth() -> None:
    centre = FRAME.to_latlon(0, 0)
    office = square("office", 0, 0, 15)
    circle = circle_fence("c", "acme", "C", "customer", *centre, 40.0)
    index = FenceIndex([office, circle])
    assert index.inner_depth_m(office) == pytest.approx(15.0, abs=0.5)
    assert index.inner_depth_m(circle) == 40.0
    assert index.inner_depth_m(square("unknown", 0, 0, 1)) == 0.0


def feature(geometry: dict, **props: object) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def test_geojson_polygon_circle_schedule_and_assignment() -> None:
    ring = [[13.40, 52.52], [13.41, 52.52], [13.41, 52.53], [13.40, 52.53], [13.40, 52.52]]
    office = feature(
        {"type": "Polygon", "coordinates": [ring]},
        id="hq",
        name="Head office",
        kind="office",
        schedule="mon-fri 08:00-18:00 Europe/Berlin",
        assigned=["rep-1", "rep-2"],
    )
    depot = feature(
        {"type": "Point", "coordinates": [13.45, 52.50]},
        id="depot",
        kind="workshop",
        radius_m=120,
        schedule={"tz": "UTC", "days": "mon-sat", "start": "06:00", "end": "20:00"},
        assigned="*",
    )
    fence = fence_from_geojson(office, "acme")
    assert (fence.fence_id, fence.name, fence.kind, fence.org_id) == (
        "hq", "Head office", "office", "acme"
    )  # fmt: skip
    assert fence.schedule == Schedule.parse("mon-fri 08:00-18:00 Europe/Berlin")
    assert fence.circle is None and fence.geometry.area > 0
    circle = fence_from_geojson(depot, "acme")
    assert circle.circle == (52.50, 13.45, 120.0) and circle.name == "depot"
    assert circle.schedule is not None and 5 in circle.schedule.days
    assert assigned_from_geojson(office) == frozenset({"rep-1", "rep-2"})
    assert assigned_from_geojson(feature({}, id="x")) == frozenset()

    index = FenceIndex.from_geojson(
        {"type": "FeatureCollection", "features": [office, depot]}, "acme"
    )
    assert index.assigned("hq") == frozenset({"rep-1", "rep-2"})
    assert index.assigned("depot", "acme") == frozenset({"*"})
    assert index.assigned("depot", "other") == frozenset()
    # Rows of several orgs, as the store holds them.
    both = FenceIndex.from_features([("acme", office), ("beta", office), ("beta", depot)])
    assert len(both) == 3 and both.assigned("hq", "beta") == frozenset({"rep-1", "rep-2"})
    assert both.assigned("depot", "acme") == frozenset()
    hq = index.get("hq", "acme")
    depot_fence = index.get("depot", "acme")
    assert hq is not None and depot_fence is not None
    assert index.is_post_of(hq, "rep-1") and not index.is_post_of(hq, "rep-9")
    assert index.is_post_of(depot_fence, "anyone")
    (hit,) = index.near(52.50, 13.45)
    assert hit[0].fence_id == "depot" and hit[1] == pytest.approx(-120.0, abs=0.01)


def test_geojson_errors_and_repair() -> None:
    square_ring = [[13.40, 52.52], [13.41, 52.52], [13.41, 52.53], [13.40, 52.53], [13.40, 52.52]]
    poly = {"type": "Polygon", "coordinates": [square_ring]}
    with pytest.raises(ValueError, match="kind"):
        fence_from_geojson(feature(poly, id="a", kind="parking"), "acme")
    with pytest.raises(ValueError, match="id"):
        fence_from_geojson(feature(poly, kind="office"), "acme")
    with pytest.raises(ValueError, match="radius_m"):
        fence_from_geojson(
            feature({"type": "Point", "coordinates": [13.4, 52.5]}, id="p", kind="office"), "acme"
        )
    with pytest.raises(ValueError, match="geometry"):
        line = {"type": "LineString", "coordinates": [[13.4, 52.5], [13.5, 52.5]]}
        fence_from_geojson(feature(line, id="l", kind="office"), "acme")
    with pytest.raises(ValueError, match="schedule"):
        fence_from_geojson(feature(poly, id="s", kind="office", schedule="someday"), "acme")
    bowtie = [[13.40, 52.52], [13.41, 52.53], [13.41, 52.52], [13.40, 52.53], [13.40, 52.52]]
    fixed = fence_from_geojson(
        feature({"type": "Polygon", "coordinates": [bowtie]}, id="b", kind="territory"), "acme"
    )
    assert fixed.geometry.is_valid and fixed.geometry.area > 0
    # The feature's own id works too.
    f = {"type": "Feature", "id": 7, "geometry": poly, "properties": {"kind": "forbidden"}}
    assert fence_from_geojson(f, "acme").fence_id == "7"


def test_lookup_is_near_many_with_positions_and_pairs() -> None:
    rng = np.random.default_rng(21)
    fences = random_fences(rng, 400)
    index = FenceIndex([*fences, square("x1", 0, 0, 20_000, org="other")])
    for _ in range(60):
        # A device's batch: fixes close together (a few hundred metres), and sometimes one far.
        cx, cy = rng.uniform(-10_000, 10_000, 2)
        pts = [FRAME.to_latlon(cx + dx, cy + dy) for dx, dy in rng.normal(0, 150, (12, 2))]
        if rng.random() < 0.3:
            pts.append(FRAME.to_latlon(*rng.uniform(-10_000, 10_000, 2)))
        lats, lons = [p[0] for p in pts], [p[1] for p in pts]
        margins = [float(m) for m in rng.uniform(10, 400, len(pts))]
        want = index.near_many(lats, lons, margins, org_id="acme")
        positions = [int(i) for i in rng.integers(0, len(fences), 5)]
        hoods, _, pair_signed = index.lookup(
            lats, lons, margins, "acme", positions, lats[:5], lons[:5]
        )
        assert [[(f, d) for f, d, _ in hood] for hood in hoods] == want  # to the bit
        for hood in hoods:
            assert all(index.fences[pos] is f for f, _, pos in hood)
        single = [index.lookup([lats[k]], [lons[k]], [1e6], "acme")[0][0] for k in range(5)]
        for k, pos in enumerate(positions):
            assert pair_signed[k] == {p: d for _, d, p in single[k]}[pos]


def test_lookup_reuse_bound_holds_for_nearby_points() -> None:
    """What `FenceTracker` relies on: from an anchor's answer at radius R and its kx, a point
    `move` away has no other fence within R - move, and every listed fence's distance there
    is within `move` of the anchor's."""
    rng = np.random.default_rng(8)
    fences = random_fences(rng, 600)
    index = FenceIndex(fences)
    radius = 400.0
    checked = 0
    for _ in range(150):
        ax, ay = rng.uniform(-10_000, 10_000, 2)
        a_lat, a_lon = FRAME.to_latlon(ax, ay)
        hoods, kx, _ = index.lookup([a_lat], [a_lon], [radius], "acme")
        at_anchor = {f.fence_id: d for f, d, _ in hoods[0]}
        for dx, dy in rng.uniform(-300, 300, (5, 2)):
            lat, lon = FRAME.to_latlon(ax + dx, ay + dy)
            move = math.hypot((lon - a_lon) * kx, (lat - a_lat) * M_PER_DEG_LAT) + 1e-6
            for fence, d in index.near(lat, lon, radius - move):
                assert fence.fence_id in at_anchor
                assert abs(d - at_anchor[fence.fence_id]) <= move
                checked += 1
    assert checked > 100


def test_haversine_is_bit_for_bit_the_textbook_form() -> None:
    def textbook(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
        p1, p2 = math.radians(lat1), math.radians(lat2)
        dl = math.radians(lon2 - lon1)
        a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))

    rng = np.random.default_rng(3)
    for lat, lon, dlat, dlon in rng.uniform([-80, -180, -1, -1], [80, 180, 1, 1], (20_000, 4)):
        scale = 10.0 ** rng.integers(-6, 2)
        args = (lat, lon, lat + dlat * scale, lon + dlon * scale)
        assert haversine_m(*args) == textbook(*args)
