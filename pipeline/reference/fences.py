"""Spatial index of fences (shapely STRtree + prepared metric geometry) and GeoJSON loading.

Every polygon fence is kept projected into its own local metric frame (`LocalFrame` around its
centroid; equirectangular, so near the border it is well under a metre off for fences up to
tens of kilometres across) and prepared, so a query tests containment and the distance to the
border in metres. Circles are tested exactly: haversine distance to the centre minus radius.

A query first finds candidates on bounding boxes (one STRtree over the fences' lon/lat bounds,
widened for circles so the index never misses a circle whose approximating polygon is
slightly inside it), then runs the exact tests on those few candidates only, vectorised over
every point of a batch (`near_many`). Cost per query therefore grows with the tree depth, not
with the number of fences.

GeoJSON features (`fence_from_geojson`, `FenceIndex.from_geojson`) use these properties:

- `id` (or the feature's own `id`): the fence id, unique within the org.
- `name`: shown to people; defaults to the id.
- `kind`: one of office, workshop, territory, forbidden, customer.
- `schedule` (optional): when the fence is active, {"tz", "days", "start", "end"} or the
  compact string "mon-fri 08:00-18:00 Europe/Berlin"; absent = always active.
- `radius_m` (optional, with a Point geometry): a circle of that radius around the point.
- `assigned` (optional): the devices this fence is the post of (office/workshop fences: who
  gets a "left post" alert), a list of device ids or "*" for every device of the org. Absent =
  nobody. Kept in the index (`FenceIndex.assigned`), not in the `Fence` record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape

from pipeline.geo import EARTH_RADIUS_M, M_PER_DEG_LAT, LocalFrame
from pipeline.reference.models import FENCE_KINDS, Fence, Schedule

ALL_DEVICES = "*"  # in an `assigned` set: the fence is the post of every device of its org
EMPTY: frozenset[str] = frozenset()
# Widening of the query box in longitude: a fence far north/south of the point measures metres
# with a slightly different cos(lat) than the box conversion does; 10 % covers ±5° of latitude.
_LON_BOX_SLACK = 1.1
_CIRCLE_SEGMENTS = 64

# Post assignment: fence id (every org) or (org_id, fence_id) -> device ids or "*".
Assignment = Mapping[str, Iterable[str]] | Mapping[tuple[str, str], Iterable[str]]


class FenceIndex:
    """Fences by location.

    `near(lat, lon, margin_m)` returns every fence whose border is within `margin_m` of the
    point or that contains it, as (fence, signed_distance_m) pairs: negative inside, positive
    outside, the magnitude being the distance to the border in metres. Pairs come in the order
    the fences were given to the index.

    `assigned` maps a fence id (any org) or an (org_id, fence_id) pair to the device ids whose
    post the fence is ("*" = every device of the org).
    """

    def __init__(
        self,
        fences: Iterable[Fence],
        assigned: Assignment | None = None,
    ) -> None:
        self.fences: list[Fence] = list(fences)
        n = len(self.fences)
        self._pos: dict[tuple[str, str], int] = {}
        for i, f in enumerate(self.fences):
            key = (f.org_id, f.fence_id)
            if key in self._pos:
                raise ValueError(f"duplicate fence id {f.fence_id!r} in org {f.org_id!r}")
            self._pos[key] = i
        self._assigned: dict[tuple[str, str], frozenset[str]] = {}
        for k, devices in (assigned or {}).items():
            keys = [k] if isinstance(k, tuple) else [key for key in self._pos if key[1] == k]
            for key in keys:
                self._assigned[key] = frozenset(devices)
        self._org_code: dict[str, int] = {}
        self._fence_org = np.array(
            [self._org_code.setdefault(f.org_id, len(self._org_code)) for f in self.fences],
            dtype=np.int64,
        )
        self._build(n)

    def _build(self, n: int) -> None:
        circle = np.array([f.circle is not None for f in self.fences], dtype=bool)
        geoms = np.array([f.geometry for f in self.fences], dtype=object)
        if n == 0:
            geoms = np.empty(0, dtype=object)
        bounds = shapely.bounds(geoms).reshape(n, 4)
        centroids = shapely.get_coordinates(shapely.centroid(geoms)).reshape(n, 2)
        lat0 = centroids[:, 1].copy()
        lon0 = centroids[:, 0].copy()
        # Circle data (lat, lon, radius); the index box covers the exact circle too.
        self._clat = np.zeros(n)
        self._clon = np.zeros(n)
        self._crad = np.zeros(n)
        for i in np.flatnonzero(circle):
            clat, clon, radius = self.fences[i].circle  # type: ignore[misc]
            self._clat[i], self._clon[i], self._crad[i] = clat, clon, radius
            lat0[i], lon0[i] = clat, clon
            dlat = radius / M_PER_DEG_LAT
            dlon = radius / (M_PER_DEG_LAT * max(1e-6, math.cos(math.radians(clat))))
            b = bounds[i]
            bounds[i] = (
                min(b[0], clon - dlon),
                min(b[1], clat - dlat),
                max(b[2], clon + dlon),
                max(b[3], clat + dlat),
            )
        self._is_circle = circle
        self._lat0 = lat0
        self._lon0 = lon0
        self._mlon = M_PER_DEG_LAT * np.cos(np.radians(lat0))
        self._tree = shapely.STRtree(shapely.box(*bounds.T) if n else geoms)

        # Polygons projected into their own metric frame, prepared for containment tests.
        projected = np.empty(n, dtype=object)
        poly_idx = np.flatnonzero(~circle)
        if poly_idx.size:
            _, owner = shapely.get_coordinates(geoms[poly_idx], return_index=True)
            fence_of_coord = poly_idx[owner]
            ox = self._lon0[fence_of_coord]
            oy = self._lat0[fence_of_coord]
            sx = self._mlon[fence_of_coord]

            def to_metres(xy: np.ndarray) -> np.ndarray:
                return np.column_stack(((xy[:, 0] - ox) * sx, (xy[:, 1] - oy) * M_PER_DEG_LAT))

            projected[poly_idx] = shapely.transform(geoms[poly_idx], to_metres)
            shapely.prepare(projected[poly_idx])
        self._projected = projected
        self._boundary = np.empty(n, dtype=object)
        if poly_idx.size:
            self._boundary[poly_idx] = shapely.boundary(projected[poly_idx])
        # Inner depths are computed on first use (costly; few fences are ever entered).
        self._depth: dict[int, float] = {}

    @classmethod
    def from_geojson(
        cls, data: Mapping[str, Any] | Iterable[Mapping[str, Any]], org_id: str
    ) -> FenceIndex:
        """From a FeatureCollection (or a list of Features) of one org, with assignments."""
        features = data["features"] if isinstance(data, Mapping) else data
        return cls.from_features((org_id, feature) for feature in features)

    @classmethod
    def from_features(cls, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> FenceIndex:
        """From (org_id, GeoJSON Feature) pairs of any orgs, keeping the `assigned` property
        (which `FenceIndex(fences)` cannot see: it is not part of the Fence record)."""
        fences: list[Fence] = []
        assigned: dict[tuple[str, str], frozenset[str]] = {}
        for org_id, feature in rows:
            fence = fence_from_geojson(feature, org_id)
            fences.append(fence)
            devices = assigned_from_geojson(feature)
            if devices:
                assigned[(org_id, fence.fence_id)] = devices
        return cls(fences, assigned)

    def __len__(self) -> int:
        return len(self.fences)

    def get(self, fence_id: str, org_id: str) -> Fence | None:
        i = self._pos.get((org_id, fence_id))
        return None if i is None else self.fences[i]

    def assigned(self, fence_id: str, org_id: str | None = None) -> frozenset[str]:
        """Device ids whose post this fence is ("*" = all devices of its org)."""
        if org_id is not None:
            return self._assigned.get((org_id, fence_id), EMPTY)
        for (_, fid), devices in self._assigned.items():
            if fid == fence_id:
                return devices
        return EMPTY

    def is_post_of(self, fence: Fence, device_id: str) -> bool:
        devices = self._assigned.get((fence.org_id, fence.fence_id), EMPTY)
        return device_id in devices or ALL_DEVICES in devices

    def inner_depth_m(self, fence: Fence) -> float:
        """Radius of the largest circle inside the fence (0 for an unknown fence)."""
        i = self._pos.get((fence.org_id, fence.fence_id))
        if i is None:
            return 0.0
        depth = self._depth.get(i)
        if depth is None:
            if self._is_circle[i]:
                depth = float(self._crad[i])
            else:
                # Radius of the largest inscribed circle, to 1 % of the fence's extent.
                geom = self._projected[i]
                xmin, ymin, xmax, ymax = geom.bounds
                tolerance = max(xmax - xmin, ymax - ymin) / 100
                depth = float(shapely.maximum_inscribed_circle(geom, tolerance).length)
            self._depth[i] = depth  # a memo: the index stays logically read-only
        return depth

    def near(self, lat: float, lon: float, margin_m: float = 0.0) -> list[tuple[Fence, float]]:
        return self.near_many([lat], [lon], [margin_m])[0]

    def near_many(
        self,
        lats: Sequence[float],
        lons: Sequence[float],
        margins_m: Sequence[float],
        org_id: str | None = None,
    ) -> list[list[tuple[Fence, float]]]:
        """`near` for a batch of points in one vectorised pass; optionally one org's fences."""
        n_points = len(lats)
        result: list[list[tuple[Fence, float]]] = [[] for _ in range(n_points)]
        if not self.fences or not n_points:
            return result
        if org_id is not None and org_id not in self._org_code:
            return result
        lat = np.asarray(lats, dtype=np.float64)
        lon = np.asarray(lons, dtype=np.float64)
        margin = np.asarray(margins_m, dtype=np.float64)
        dlat = margin / M_PER_DEG_LAT
        dlon = margin * _LON_BOX_SLACK / (M_PER_DEG_LAT * np.maximum(1e-6, np.cos(np.radians(lat))))
        pairs = self._tree.query(shapely.box(lon - dlon, lat - dlat, lon + dlon, lat + dlat))
        if not pairs.shape[1]:
            return result
        qi, fi = pairs[0], pairs[1]
        if org_id is not None and len(self._org_code) > 1:
            keep = self._fence_org[fi] == self._org_code[org_id]
            qi, fi = qi[keep], fi[keep]
            if not qi.size:
                return result
        signed = np.empty(qi.size)
        circ = self._is_circle[fi]
        if circ.any():
            c = fi[circ]
            q = qi[circ]
            signed[circ] = _haversine(lat[q], lon[q], self._clat[c], self._clon[c]) - self._crad[c]
        poly = ~circ
        if poly.any():
            p = fi[poly]
            q = qi[poly]
            x = (lon[q] - self._lon0[p]) * self._mlon[p]
            y = (lat[q] - self._lat0[p]) * M_PER_DEG_LAT
            dist = shapely.distance(self._boundary[p], shapely.points(x, y))
            inside = shapely.contains_xy(self._projected[p], x, y)
            signed[poly] = np.where(inside, -dist, dist)
        keep = signed <= margin[qi]
        order = np.lexsort((fi[keep], qi[keep]))
        fences = self.fences
        for q, f, d in zip(
            qi[keep][order].tolist(),
            fi[keep][order].tolist(),
            signed[keep][order].tolist(),
            strict=True,
        ):
            result[q].append((fences[f], d))
        return result


def _haversine(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    a = (
        np.sin((p2 - p1) / 2) ** 2
        + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))


def circle_fence(
    fence_id: str,
    org_id: str,
    name: str,
    kind: str,
    lat: float,
    lon: float,
    radius_m: float,
    schedule: Schedule | None = None,
) -> Fence:
    """A circle fence; its geometry is a 64-gon on the circle (membership is exact)."""
    _check_kind(kind)
    if not radius_m > 0:
        raise ValueError(f"fence {fence_id!r}: radius_m must be positive, got {radius_m!r}")
    frame = LocalFrame(lat, lon)
    ring = []
    for k in range(_CIRCLE_SEGMENTS):
        angle = 2 * math.pi * k / _CIRCLE_SEGMENTS
        plat, plon = frame.to_latlon(radius_m * math.cos(angle), radius_m * math.sin(angle))
        ring.append((plon, plat))
    return Fence(
        fence_id=fence_id,
        org_id=org_id,
        name=name,
        kind=kind,
        geometry=Polygon(ring),
        schedule=schedule,
        circle=(lat, lon, float(radius_m)),
    )


def fence_from_geojson(feature: Mapping[str, Any], org_id: str) -> Fence:
    """A `Fence` from a GeoJSON Feature dict (properties in the module docstring).

    Raises ValueError with the reason on anything unusable.
    """
    props = feature.get("properties") or {}
    fence_id = props.get("id", feature.get("id"))
    if fence_id is None or str(fence_id) == "":
        raise ValueError("fence feature without an id (properties.id or feature id)")
    fence_id = str(fence_id)
    kind = str(props.get("kind", ""))
    _check_kind(kind, fence_id)
    name = str(props.get("name") or fence_id)
    raw_schedule = props.get("schedule")
    try:
        schedule = Schedule.parse(raw_schedule) if raw_schedule else None
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"fence {fence_id!r}: bad schedule {raw_schedule!r}: {exc}") from exc
    geometry_spec = feature.get("geometry")
    if not geometry_spec:
        raise ValueError(f"fence {fence_id!r}: no geometry")
    try:
        geometry = shape(geometry_spec)
    except Exception as exc:  # shapely raises several types for malformed GeoJSON
        raise ValueError(f"fence {fence_id!r}: bad geometry: {exc}") from exc
    if geometry.geom_type == "Point":
        radius = props.get("radius_m")
        if radius is None:
            raise ValueError(f"fence {fence_id!r}: a Point fence needs properties.radius_m")
        return circle_fence(
            fence_id, org_id, name, kind, geometry.y, geometry.x, float(radius), schedule
        )
    if not isinstance(geometry, Polygon | MultiPolygon):
        raise ValueError(f"fence {fence_id!r}: geometry must be a Polygon, MultiPolygon or Point")
    if not geometry.is_valid:
        # Self-intersecting rings are common in hand-drawn fences: keep the polygonal part.
        geometry = shapely.make_valid(geometry)
        parts = [
            g
            for g in getattr(geometry, "geoms", [geometry])
            if isinstance(g, Polygon | MultiPolygon)
        ]
        geometry = shapely.union_all(parts) if parts else Polygon()
    if geometry.is_empty or geometry.area == 0:
        raise ValueError(f"fence {fence_id!r}: empty geometry")
    return Fence(
        fence_id=fence_id, org_id=org_id, name=name, kind=kind, geometry=geometry, schedule=schedule
    )


def assigned_from_geojson(feature: Mapping[str, Any]) -> frozenset[str]:
    """The `assigned` property: a list of device ids, a comma list, or "*" (all devices)."""
    value = (feature.get("properties") or {}).get("assigned")
    if value is None:
        return EMPTY
    if isinstance(value, str):
        return frozenset(v.strip() for v in value.split(",") if v.strip())
    return frozenset(str(v) for v in value)


def _check_kind(kind: str, fence_id: str = "") -> None:
    if kind not in FENCE_KINDS:
        known = ", ".join(sorted(FENCE_KINDS))
        raise ValueError(f"fence {fence_id!r}: kind must be one of {known}, got {kind!r}")
