"""A synthetic city: road grid, customers and fences, all seeded and reproducible.

Model
-----
The city is a square grid of roads in a local metric frame (x east, y north, metres) around
`center`. Grid lines run every `ROAD_SPACING_M` (1 km) across `CITY_SIZE_M` (12 km), so there
are 13 x 13 intersections. Most roads are 50 km/h streets; the lines at x or y = -4, 0 and
+4 km are 70 km/h arterials (the inner "ring" and the central cross). Two 2 km stretches of
arterial are tunnels (no GPS fix inside; 1.5-3 min gaps at driving speed).

Everything a rep can drive to is a `Place`: a destination point plus the point on a road it
is reached from (a short driveway). Customers, homes and lunch spots sit 15-40 m off a road
and at least `MIN_CUSTOMER_SPACING_M` apart; offices, the workshop and the forbidden zones sit
in block interiors (at least ~250 m from any road) so that ordinary routes never cross them
and every fence event in the ground truth is one a rep really caused.

Fences (ids are fixed, positions seeded): `office-north`, `office-south` (kind office, active
mon-fri 07:00-19:00), `workshop` (kind workshop, active mon-fri 08:00-18:00, assigned "*"),
`forbidden-depot` (competitor depot, polygon), `forbidden-casino` (circle, 80 m),
`forbidden-arcade` (polygon), `territory-west` / `territory-east` (the city split at
x = -500 m, mid-block, so no road runs along the boundary).

`build_city` knobs: `seed` (7) picks every position and name; `n_customers` (300);
`center` ((52.52, 13.405), Berlin) the frame origin; `tz` ("Europe/Berlin") for fence and work
schedules; `org_id` ("demo"). Customers get grades A/B/C with probabilities 20/30/50 % and a
visit radius of 60-120 m (5 m steps).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from pipeline.geo import M_PER_DEG_LAT, LocalFrame
from pipeline.reference.models import Customer, Fence, Schedule

CITY_SIZE_M = 12_000.0
ROAD_SPACING_M = 1_000.0
N_LINES = int(CITY_SIZE_M // ROAD_SPACING_M) + 1  # 13 grid lines each way
HALF_M = CITY_SIZE_M / 2
FAST_LINES = frozenset({2, 6, 10})  # x or y = -4, 0, +4 km
STREET_SPEED_MPS = 50 / 3.6
ARTERIAL_SPEED_MPS = 70 / 3.6
# (axis, fixed line index, first node index, last node index) along the varying axis.
TUNNELS = (("v", 6, 2, 4), ("h", 6, 8, 10))
MIN_CUSTOMER_SPACING_M = 250.0
TERRITORY_SPLIT_X_M = -500.0

_NAME_A = (
    "Alpen",
    "Berg",
    "Brunnen",
    "Feld",
    "Garten",
    "Hafen",
    "Hof",
    "Kiefer",
    "Linden",
    "Markt",
    "Mühlen",
    "Nord",
    "Ost",
    "Park",
    "Rosen",
    "See",
    "Sonnen",
    "Spree",
    "Stadt",
    "Wald",
)
_NAME_B = (
    "Apotheke",
    "Bäckerei",
    "Baumarkt",
    "Buchhandlung",
    "Drogerie",
    "Elektro",
    "Getränke",
    "Kiosk",
    "Klinik",
    "Optik",
    "Praxis",
    "Reisebüro",
    "Sanitär",
    "Supermarkt",
    "Werkstatt",
)
_NAME_C = ("GmbH", "KG", "OHG", "e.K.", "AG", "& Co.")


def node_xy(node: int) -> tuple[float, float]:
    i, j = divmod(node, N_LINES)
    return (-HALF_M + i * ROAD_SPACING_M, -HALF_M + j * ROAD_SPACING_M)


@dataclass(slots=True)
class RoadGraph:
    """The grid's intersections and road segments, with all-pairs fastest paths.

    Node `i * 13 + j` is at x = -6 km + i km, y = -6 km + j km. Edges are stored once
    (u < v); `edge_of[(u, v)]` works in both directions.
    """

    edge_u: np.ndarray
    edge_v: np.ndarray
    edge_speed: np.ndarray  # m/s
    edge_tunnel: np.ndarray  # bool
    edge_of: dict[tuple[int, int], int]
    travel_s: np.ndarray  # (n, n) fastest time between nodes at the speed limit
    next_hop: np.ndarray  # (n, n) first node after i on the fastest path to j

    @classmethod
    def grid(cls) -> RoadGraph:
        us: list[int] = []
        vs: list[int] = []
        speeds: list[float] = []
        tunnels: list[bool] = []
        for i in range(N_LINES):
            for j in range(N_LINES):
                node = i * N_LINES + j
                if i + 1 < N_LINES:  # east along the line y = j
                    us.append(node)
                    vs.append(node + N_LINES)
                    speeds.append(ARTERIAL_SPEED_MPS if j in FAST_LINES else STREET_SPEED_MPS)
                    tunnels.append(
                        any(a == "h" and k == j and lo <= i < hi for a, k, lo, hi in TUNNELS)
                    )
                if j + 1 < N_LINES:  # north along the line x = i
                    us.append(node)
                    vs.append(node + 1)
                    speeds.append(ARTERIAL_SPEED_MPS if i in FAST_LINES else STREET_SPEED_MPS)
                    tunnels.append(
                        any(a == "v" and k == i and lo <= j < hi for a, k, lo, hi in TUNNELS)
                    )
        n = N_LINES * N_LINES
        edge_u = np.array(us, dtype=np.int64)
        edge_v = np.array(vs, dtype=np.int64)
        edge_speed = np.array(speeds)
        times = np.full((n, n), np.inf)
        np.fill_diagonal(times, 0.0)
        times[edge_u, edge_v] = ROAD_SPACING_M / edge_speed
        times[edge_v, edge_u] = ROAD_SPACING_M / edge_speed
        nxt = np.full((n, n), -1, dtype=np.int64)
        finite = np.isfinite(times)
        nxt[finite] = np.broadcast_to(np.arange(n), (n, n))[finite]
        for k in range(n):  # Floyd-Warshall: 169 nodes, a few ms with numpy
            via = times[:, k, None] + times[None, k, :]
            better = via < times - 1e-9
            times = np.where(better, via, times)
            nxt = np.where(better, nxt[:, k, None], nxt)
        edge_of: dict[tuple[int, int], int] = {}
        for idx, (u, v) in enumerate(zip(us, vs, strict=True)):
            edge_of[(u, v)] = idx
            edge_of[(v, u)] = idx
        return cls(edge_u, edge_v, edge_speed, np.array(tunnels), edge_of, times, nxt)

    def node_path(self, a: int, b: int) -> list[int]:
        path = [a]
        while a != b:
            a = int(self.next_hop[a, b])
            path.append(a)
        return path


@dataclass(frozen=True, slots=True)
class Place:
    """A destination and the road point it is reached from (x, y in the city frame, metres)."""

    x: float
    y: float
    road_x: float
    road_y: float
    edge: int  # road segment the driveway leaves from
    frac: float  # position of the road point along the edge, 0 at edge_u, 1 at edge_v


@dataclass(slots=True)
class FenceShape:
    """A fence in the city frame, for exact ground-truth membership tests."""

    fence: Fence
    polygon_xy: Polygon | None  # None for circles
    circle_xy: tuple[float, float, float] | None  # (x, y, radius_m)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.circle_xy is not None:
            cx, cy, r = self.circle_xy
            return np.asarray((x - cx) ** 2 + (y - cy) ** 2 <= r * r)
        assert self.polygon_xy is not None
        return np.asarray(shapely.contains_xy(self.polygon_xy, x, y))


@dataclass(slots=True)
class City:
    seed: int
    org_id: str
    tz: str
    center: tuple[float, float]
    frame: LocalFrame
    roads: RoadGraph
    customers: list[Customer]
    customer_places: dict[str, Place]
    fences: list[Fence]
    fence_shapes: dict[str, FenceShape]
    fence_places: dict[str, Place]  # where a rep parks to go into the fence
    fence_features: list[dict[str, Any]]  # GeoJSON features, as written to fences.geojson
    customer_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    # ------------------------------------------------------------------ geometry helpers
    def to_latlon(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised city frame -> (lat, lon)."""
        return self.frame.lat0 + y / M_PER_DEG_LAT, self.frame.lon0 + x / self.frame.m_per_deg_lon

    def roadside_place(
        self,
        rng: np.random.Generator,
        near: tuple[float, float] | None = None,
        within_m: float = HALF_M * 3,
    ) -> Place:
        """A random point 15-40 m off a road (homes, lunch spots, errands), optionally near."""
        for _ in range(200):
            place = _roadside(self.roads, rng)
            if near is None or math.hypot(place.x - near[0], place.y - near[1]) <= within_m:
                return place
        return place

    # ------------------------------------------------------------------ exports
    def customers_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["customer_id", "name", "lat", "lon", "radius_m", "grade"])
        for c in self.customers:
            writer.writerow(
                [c.customer_id, c.name, f"{c.lat:.7f}", f"{c.lon:.7f}", f"{c.radius_m:g}", c.grade]
            )
        return buf.getvalue()

    def fences_geojson(self) -> str:
        # One feature per line: readable diffs without a coordinate per line.
        lines = ",\n".join(json.dumps(f, ensure_ascii=False) for f in self.fence_features)
        return '{"type": "FeatureCollection", "features": [\n' + lines + "\n]}\n"


def _edge_geometry(roads: RoadGraph, edge: int) -> tuple[float, float, float, float]:
    ux, uy = node_xy(int(roads.edge_u[edge]))
    vx, vy = node_xy(int(roads.edge_v[edge]))
    return ux, uy, vx, vy


def _roadside(roads: RoadGraph, rng: np.random.Generator) -> Place:
    edge = int(rng.integers(len(roads.edge_u)))
    while roads.edge_tunnel[edge]:  # nobody lives in a tunnel
        edge = int(rng.integers(len(roads.edge_u)))
    frac = float(rng.uniform(0.08, 0.92))  # keep clear of intersections
    offset = float(rng.uniform(15.0, 40.0)) * (1 if rng.random() < 0.5 else -1)
    ux, uy, vx, vy = _edge_geometry(roads, edge)
    rx, ry = ux + frac * (vx - ux), uy + frac * (vy - uy)
    if uy == vy:  # east-west road: the driveway goes north or south
        return Place(rx, ry + offset, rx, ry, edge, frac)
    return Place(rx + offset, ry, rx, ry, edge, frac)


def _interior_place(roads: RoadGraph, x: float, y: float) -> Place:
    """A block-interior destination reached from the nearest road (straight driveway)."""
    i = round((x + HALF_M) / ROAD_SPACING_M)
    j = round((y + HALF_M) / ROAD_SPACING_M)
    line_x = -HALF_M + i * ROAD_SPACING_M
    line_y = -HALF_M + j * ROAD_SPACING_M
    if abs(x - line_x) <= abs(y - line_y):  # nearest road is the north-south line x = line_x
        j0 = int(min(N_LINES - 2, max(0, math.floor((y + HALF_M) / ROAD_SPACING_M))))
        u = i * N_LINES + j0
        edge = roads.edge_of[(u, u + 1)]
        frac = (y - (-HALF_M + j0 * ROAD_SPACING_M)) / ROAD_SPACING_M
        return Place(x, y, line_x, y, edge, frac)
    i0 = int(min(N_LINES - 2, max(0, math.floor((x + HALF_M) / ROAD_SPACING_M))))
    u = i0 * N_LINES + j
    edge = roads.edge_of[(u, u + N_LINES)]
    frac = (x - (-HALF_M + i0 * ROAD_SPACING_M)) / ROAD_SPACING_M
    return Place(x, y, x, line_y, edge, frac)


def _company_name(rng: np.random.Generator, number: int) -> str:
    a = _NAME_A[int(rng.integers(len(_NAME_A)))]
    b = _NAME_B[int(rng.integers(len(_NAME_B)))]
    c = _NAME_C[int(rng.integers(len(_NAME_C)))]
    return f"{a}-{b} {number:03d} {c}"


# (fence id, name, kind, shape, half width/length or radius, schedule, assigned)
_FENCE_SPECS: tuple[tuple[str, str, str, str, float, str | None, str | None], ...] = (
    ("office-north", "Office North", "office", "rect", 70.0, "mon-fri 07:00-19:00", None),
    ("office-south", "Office South", "office", "rect", 70.0, "mon-fri 07:00-19:00", None),
    ("workshop", "Central Workshop", "workshop", "rect", 90.0, "mon-fri 08:00-18:00", "*"),
    ("forbidden-depot", "Competitor depot", "forbidden", "rect", 80.0, None, None),
    ("forbidden-casino", "Casino Royal", "forbidden", "circle", 80.0, None, None),
    ("forbidden-arcade", "Gaming arcade", "forbidden", "rect", 50.0, None, None),
)
# Which city block (i, j: 0..11 from the south-west) holds each fence.
_FENCE_BLOCKS = {
    "office-north": (6, 8),
    "office-south": (7, 3),
    "workshop": (3, 6),
    "forbidden-depot": (9, 9),
    "forbidden-casino": (7, 5),
    "forbidden-arcade": (2, 2),
}


def build_city(
    seed: int = 7,
    n_customers: int = 300,
    center: tuple[float, float] = (52.52, 13.405),
    tz: str = "Europe/Berlin",
    org_id: str = "demo",
) -> City:
    """The seeded demo city (see the module docstring for the model)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC17]))
    frame = LocalFrame(center[0], center[1])
    roads = RoadGraph.grid()

    def ll(x: float, y: float) -> tuple[float, float]:
        lat, lon = frame.to_latlon(x, y)
        return round(lat, 7), round(lon, 7)

    fences: list[Fence] = []
    shapes: dict[str, FenceShape] = {}
    fence_places: dict[str, Place] = {}
    features: list[dict[str, Any]] = []
    for fence_id, name, kind, shape, size, sched, assigned in _FENCE_SPECS:
        bi, bj = _FENCE_BLOCKS[fence_id]
        cx = -HALF_M + (bi + 0.5) * ROAD_SPACING_M + float(rng.uniform(-120, 120))
        cy = -HALF_M + (bj + 0.5) * ROAD_SPACING_M + float(rng.uniform(-120, 120))
        schedule_text = f"{sched} {tz}" if sched else None
        props: dict[str, Any] = {"id": fence_id, "name": name, "kind": kind}
        if schedule_text:
            props["schedule"] = schedule_text
        if assigned:
            props["assigned"] = assigned
        if shape == "circle":
            lat, lon = ll(cx, cy)
            angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
            ring = [ll(cx + size * math.cos(a), cy + size * math.sin(a)) for a in angles]
            geometry = Polygon([(lo, la) for la, lo in ring])
            circle = (lat, lon, size)
            props["radius_m"] = size
            features.append(
                {
                    "type": "Feature",
                    "properties": props,
                    "geometry": {"type": "Point", "coordinates": [lon, lat]},
                }
            )
            shape_xy = FenceShape(
                Fence(
                    fence_id,
                    org_id,
                    name,
                    kind,
                    geometry,
                    Schedule.parse(schedule_text) if schedule_text else None,
                    circle,
                ),
                None,
                (cx, cy, size),
            )
        else:
            half_w = size * float(rng.uniform(0.8, 1.2))
            half_h = size * float(rng.uniform(0.6, 0.9))
            corners = [
                (cx - half_w, cy - half_h),
                (cx + half_w, cy - half_h),
                (cx + half_w, cy + half_h),
                (cx - half_w, cy + half_h),
            ]
            ring_ll = [ll(x, y) for x, y in corners]
            coords = [[lo, la] for la, lo in ring_ll]
            coords.append(coords[0])
            geometry = Polygon(coords)
            features.append(
                {
                    "type": "Feature",
                    "properties": props,
                    "geometry": {"type": "Polygon", "coordinates": [coords]},
                }
            )
            # Membership truth uses the polygon as written (rounded lon/lat) mapped back.
            xy = [frame.to_xy(la, lo) for lo, la in coords]
            shape_xy = FenceShape(
                Fence(
                    fence_id,
                    org_id,
                    name,
                    kind,
                    geometry,
                    Schedule.parse(schedule_text) if schedule_text else None,
                ),
                Polygon(xy),
                None,
            )
        fences.append(shape_xy.fence)
        shapes[fence_id] = shape_xy
        # Park in the middle of the fence (well inside: at least 40 m from its boundary).
        fence_places[fence_id] = _interior_place(roads, cx, cy)

    big = HALF_M + 500.0
    for fence_id, name, x0, x1 in (
        ("territory-west", "Territory West", -big, TERRITORY_SPLIT_X_M),
        ("territory-east", "Territory East", TERRITORY_SPLIT_X_M, big),
    ):
        corners = [(x0, -big), (x1, -big), (x1, big), (x0, big)]
        coords = [[ll(x, y)[1], ll(x, y)[0]] for x, y in corners]
        coords.append(coords[0])
        props = {"id": fence_id, "name": name, "kind": "territory"}
        features.append(
            {
                "type": "Feature",
                "properties": props,
                "geometry": {"type": "Polygon", "coordinates": [coords]},
            }
        )
        fence = Fence(fence_id, org_id, name, "territory", Polygon(coords))
        fences.append(fence)
        shapes[fence_id] = FenceShape(fence, box(x0, -big, x1, big), None)

    # Customers: off-road points, spaced apart, outside every non-territory fence.
    customers: list[Customer] = []
    places: dict[str, Place] = {}
    taken = np.zeros((0, 2))
    number = 0
    while len(customers) < n_customers:
        place = _roadside(roads, rng)
        if len(taken) and np.min(np.hypot(taken[:, 0] - place.x, taken[:, 1] - place.y)) < (
            MIN_CUSTOMER_SPACING_M if n_customers <= 1000 else 60.0
        ):
            continue
        number += 1
        grade = str(rng.choice(["A", "B", "C"], p=[0.2, 0.3, 0.5]))
        radius = float(5 * round(rng.uniform(60, 120) / 5))
        customer_id = f"C{number:04d}"
        lat, lon = ll(place.x, place.y)
        customers.append(
            Customer(customer_id, org_id, _company_name(rng, number), lat, lon, radius, grade)
        )
        # The true parking spot is the customer point as written (rounded), for exact truth.
        x, y = frame.to_xy(lat, lon)
        places[customer_id] = Place(x, y, place.road_x, place.road_y, place.edge, place.frac)
        taken = np.vstack([taken, [[x, y]]])

    return City(
        seed=seed,
        org_id=org_id,
        tz=tz,
        center=center,
        frame=frame,
        roads=roads,
        customers=customers,
        customer_places=places,
        fences=fences,
        fence_shapes=shapes,
        fence_places=fence_places,
        fence_features=features,
        customer_xy=taken,
    )
