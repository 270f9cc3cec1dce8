"""Synthetic reference data at benchmark sizes, generated deterministically around the
simulator's city.

The simulator's city (`pipeline.sim.build_city`) is a 12 km square with 300 customers and 8
fences; the benchmarks need 5,000 customers and 500 to 100,000 fences. The extra ones are drawn
from a seeded generator (same seed, same reference data) uniformly over a square around the
city centre, so the simulated reps drive through them at a uniform density:

- customers: radius 60-120 m (5 m steps), grades A/B/C at 20/30/50 % (as the city's own);
- fences, a mix of realistic shapes and sizes: 45 % rotated rectangles (half sides 25-200 m,
  log-uniform: shops, yards, depots), 30 % circles (radius 40-300 m), 24 % irregular
  12-gons (radius 60-500 m: sites, campuses) and 1 % territories (rectangles 1-5 km half
  side). Kinds: mostly "customer", 5 % forbidden, 5 % office/workshop; 20 % carry a
  mon-fri 08:00-18:00 schedule, so the tracker's schedule checks are exercised.

All in the city's org, so the simulated devices see every fence and customer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely

from pipeline.geo import M_PER_DEG_LAT
from pipeline.reference import CustomerIndex, FenceIndex, ReferenceData
from pipeline.reference.fences import assigned_from_geojson, fence_from_geojson
from pipeline.reference.models import Customer, Fence, Schedule
from pipeline.sim import City, Simulation

CIRCLE_SEGMENTS = 64  # as `circle_fence` approximates circles
POLY_VERTICES = 12


def _to_lonlat(
    center: tuple[float, float], x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lat0, lon0 = center
    m_per_deg_lon = M_PER_DEG_LAT * math.cos(math.radians(lat0))
    return lon0 + x / m_per_deg_lon, lat0 + y / M_PER_DEG_LAT


def extra_customers(
    n: int, *, org_id: str, center: tuple[float, float], half_m: float, seed: int
) -> list[Customer]:
    """`n` customers uniformly over the square of half side `half_m` around `center`."""
    if n <= 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC05]))
    x = rng.uniform(-half_m, half_m, n)
    y = rng.uniform(-half_m, half_m, n)
    lon, lat = _to_lonlat(center, x, y)
    radius = 60.0 + 5.0 * rng.integers(0, 13, n)
    grade = rng.choice(np.array(["A", "B", "C"]), n, p=[0.2, 0.3, 0.5])
    return [
        Customer(f"bench-c{i:06d}", org_id, f"Bench customer {i}", la, lo, r, g)
        for i, (la, lo, r, g) in enumerate(
            zip(lat.tolist(), lon.tolist(), radius.tolist(), grade.tolist(), strict=True)
        )
    ]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def synthetic_fences(
    n: int,
    *,
    org_id: str,
    center: tuple[float, float],
    half_m: float,
    seed: int,
    prefix: str = "bench-f",
    tz: str = "Europe/Berlin",
) -> list[Fence]:
    """`n` fences (the mix in the module docstring), centres uniform over the square of half
    side `half_m` around `center`. Geometry is built vectorised: 100,000 take about a second."""
    if n <= 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFE2, n]))
    cx = rng.uniform(-half_m, half_m, n)
    cy = rng.uniform(-half_m, half_m, n)
    shape = rng.choice(4, n, p=[0.45, 0.30, 0.24, 0.01])  # rect, circle, polygon, territory
    kind_draw = rng.random(n)
    scheduled = rng.random(n) < 0.2
    schedule = Schedule.parse(f"mon-fri 08:00-18:00 {tz}")
    geoms = np.empty(n, dtype=object)
    circles: dict[int, tuple[float, float, float]] = {}

    for code, (lo, hi) in ((0, (25.0, 200.0)), (3, (1000.0, 5000.0))):  # rotated rectangles
        idx = np.flatnonzero(shape == code)
        if not idx.size:
            continue
        hw = _log_uniform(rng, lo, hi, idx.size)
        hh = hw * rng.uniform(0.5, 1.0, idx.size)
        angle = rng.uniform(0, math.pi, idx.size)
        corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)], dtype=float)
        px = corners[None, :, 0] * hw[:, None]
        py = corners[None, :, 1] * hh[:, None]
        cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
        x = cx[idx, None] + px * cos - py * sin
        y = cy[idx, None] + px * sin + py * cos
        geoms[idx] = _polygons(center, x, y)

    idx = np.flatnonzero(shape == 1)  # circles: exact membership, a 64-gon for the index
    if idx.size:
        radius = _log_uniform(rng, 40.0, 300.0, idx.size)
        a = np.linspace(0, 2 * math.pi, CIRCLE_SEGMENTS + 1)
        a[-1] = 0.0
        x = cx[idx, None] + radius[:, None] * np.cos(a)[None, :]
        y = cy[idx, None] + radius[:, None] * np.sin(a)[None, :]
        geoms[idx] = _polygons(center, x, y)
        lon, lat = _to_lonlat(center, cx[idx], cy[idx])
        for i, la, lo, r in zip(idx.tolist(), lat.tolist(), lon.tolist(), radius.tolist(),
                                strict=True):  # fmt: skip
            circles[i] = (la, lo, r)

    idx = np.flatnonzero(shape == 2)  # irregular star-shaped polygons (always valid)
    if idx.size:
        radius = _log_uniform(rng, 60.0, 500.0, idx.size)
        a = np.sort(rng.uniform(0, 2 * math.pi, (idx.size, POLY_VERTICES)), axis=1)
        r = radius[:, None] * rng.uniform(0.55, 1.0, (idx.size, POLY_VERTICES))
        x = cx[idx, None] + r * np.cos(a)
        y = cy[idx, None] + r * np.sin(a)
        x = np.concatenate([x, x[:, :1]], axis=1)
        y = np.concatenate([y, y[:, :1]], axis=1)
        geoms[idx] = _polygons(center, x, y)

    fences = []
    for i in range(n):
        code = int(shape[i])
        if code == 3:
            kind = "territory"
        elif kind_draw[i] < 0.05:
            kind = "forbidden"
        elif kind_draw[i] < 0.10:
            kind = "office" if kind_draw[i] < 0.08 else "workshop"
        else:
            kind = "customer"
        fences.append(
            Fence(
                fence_id=f"{prefix}{i:06d}",
                org_id=org_id,
                name=f"Bench fence {i}",
                kind=kind,
                geometry=geoms[i],
                schedule=schedule if scheduled[i] else None,
                circle=circles.get(i),
            )
        )
    return fences


def _polygons(center: tuple[float, float], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    lon, lat = _to_lonlat(center, x, y)
    return shapely.polygons(np.stack([lon, lat], axis=-1))


def city_fences(city: City) -> tuple[list[Fence], dict[tuple[str, str], frozenset[str]]]:
    """The city's own fences and post assignments, as `FenceIndex.from_features` reads them."""
    fences, assigned = [], {}
    for feature in city.fence_features:
        fence = fence_from_geojson(feature, city.org_id)
        fences.append(fence)
        devices = assigned_from_geojson(feature)
        if devices:
            assigned[(city.org_id, fence.fence_id)] = devices
    return fences, assigned


def reference(
    city: City,
    sim: Simulation | None,
    *,
    customers: int,
    fences: int,
    half_m: float,
    seed: int,
    more_fences: Sequence[Fence] = (),
) -> ReferenceData:
    """The city's reference data topped up to `customers` and `fences` with generated ones
    (plus `more_fences`), and the simulated devices' work schedules."""
    own_fences, assigned = city_fences(city)
    extra = synthetic_fences(
        fences - len(own_fences), org_id=city.org_id, center=city.center, half_m=half_m, seed=seed
    )
    more = extra_customers(
        customers - len(city.customers),
        org_id=city.org_id,
        center=city.center,
        half_m=half_m,
        seed=seed,
    )
    schedules = {(d.org_id, d.device_id): d.schedule for d in sim.devices} if sim else {}
    return ReferenceData(
        customers=CustomerIndex([*city.customers, *more]),
        fences=FenceIndex([*own_fences, *extra, *more_fences], assigned),
        schedules=schedules,
    )
