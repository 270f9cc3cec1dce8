"""Spatial index of fences (shapely STRtree + prepared metric geometry) and GeoJSON loading.

Every polygon fence is kept projected into its own local metric frame (`LocalFrame` around its
centroid; equirectangular, so near the border it is well under a metre off for fences up to
tens of kilometres across) and prepared, so a query tests containment and the distance to the
border in metres. Circles are tested exactly: haversine distance to the centre minus radius.

A query first finds candidates on bounding boxes (one STRtree over the fences' lon/lat bounds,
widened for circles so the index never misses a circle whose approximating polygon is
slightly inside it), then runs the exact tests on those few candidates only, vectorised over
every point of a batch (`near_many`). Cost per query therefore grows with the tree depth, not
with the number of fences. `lookup` serves the fence tracker: one pass per batch of a device
(one tree query with the batch's envelope), the anchor data for reusing an answer at later
fixes, and the distances of given (fence, point) pairs, all with `near_many`'s arithmetic.

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
# Reuse of a `neighbourhoods` answer at a later point (see there): the margin counts this much
# more, which keeps the later point's query box inside the reused one wherever degrees of
# longitude change by less than 5 % over the reuse radius (anywhere below ~89.9° for a 1 km
# radius); no reuse beyond REUSE_MAX_ABS_LAT.
# `lookup` queries the tree once with the envelope of a batch's points unless it spans more
# than this (degrees of lon + lat, ~ 2 km): then once per point.
_BATCH_ENVELOPE_DEG = 0.02
REUSE_MARGIN_FACTOR = 1.05
REUSE_MAX_ABS_LAT = 85.0

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
        self._frame = np.column_stack((self._lon0, self._lat0, self._mlon))
        self._tree = shapely.STRtree(shapely.box(*bounds.T) if n else geoms)
        self._bounds = bounds  # (n, 4): xmin, ymin, xmax, ymax of each fence's index box

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
        found = self._batch_candidates(lats, lons, margins_m, org_id) if n_points else None
        if found is None:
            return result
        lat, lon, margin, qi, fi, _ = found  # sorted below either way
        signed = self._signed(fi, lat[qi], lon[qi])
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

    def lookup(
        self,
        lats: Sequence[float],
        lons: Sequence[float],
        margins_m: Sequence[float],
        org_id: str,
        pair_positions: Sequence[int] = (),
        pair_lats: Sequence[float] = (),
        pair_lons: Sequence[float] = (),
    ) -> tuple[list[list[tuple[Fence, float, int]]], float, list[float]]:
        """Everything a batch of one device needs, in one vectorised pass:

        - per point, `near_many`'s answer (one org) as (fence, signed distance, position)
          triples, the position being what `pair_positions` takes;
        - for the last point (the anchor), `kx`: a bound on the metres per degree of longitude
          of every metric the fences within its margin are measured in (see below);
        - the signed distance of each given (fence position, point) pair.

        All distances are computed with `near_many`'s arithmetic: the same values to the bit.

        Reuse for a later point: with `kx`, the answer at p (margin R) serves a point q and a
        margin m: every fence's signed distance moves by at most `move = hypot((lon_q - lon_p)
        * kx, (lat_q - lat_p) * M_PER_DEG_LAT)` (it is 1-Lipschitz in each fence's frame, and
        in haversine metres for circles), so while `move + REUSE_MARGIN_FACTOR * m <= R` no
        fence missing from the answer can be within m of q (not even by the bounding-box test:
        the query box at q lies inside the one at p), and each listed fence's signed distance
        at q lies within `move` of the listed one. Polygon fences' frames are among the
        bounding-box candidates; circles measure haversine metres, which are at most those of
        a frame at the latitude nearest the equator within R. (As for `near_many` itself,
        this assumes every fence within a margin meets the query box, which `_LON_BOX_SLACK`
        provides.)
        """
        n_points = len(lats)
        hoods: list[list[tuple[Fence, float, int]]] = [[] for _ in range(n_points)]
        kx = 0.0
        if n_points:
            # Circles (and the box argument) need the widest degree of longitude in reach.
            last = n_points - 1
            kx = M_PER_DEG_LAT * math.cos(
                math.radians(max(0.0, abs(lats[last]) - margins_m[last] / M_PER_DEG_LAT))
            )
        found = self._batch_candidates(lats, lons, margins_m, org_id) if n_points else None
        n_pairs = len(pair_positions)
        if found is None and not n_pairs:
            return hoods, kx, []
        if n_pairs:
            pair_fi = np.asarray(pair_positions, dtype=np.intp)
            pair_lat = np.asarray(pair_lats, dtype=np.float64)
            pair_lon = np.asarray(pair_lons, dtype=np.float64)
            if found is None:
                return hoods, kx, self._signed(pair_fi, pair_lat, pair_lon).tolist()
        lat, lon, margin, qi, fi, ordered = found  # type: ignore[misc]
        n_cands = qi.size
        if n_pairs:
            signed_all = self._signed(
                np.concatenate((fi, pair_fi)),
                np.concatenate((lat[qi], pair_lat)),
                np.concatenate((lon[qi], pair_lon)),
            )
            signed = signed_all[:n_cands]
            pair_signed = signed_all[n_cands:].tolist()
        else:
            signed = self._signed(fi, lat[qi], lon[qi])
            pair_signed = []
        keep = signed <= margin[qi]
        q_kept = qi[keep]
        f_kept = fi[keep]
        d_kept = signed[keep]
        if not ordered:
            order = np.lexsort((f_kept, q_kept))
            q_kept, f_kept, d_kept = q_kept[order], f_kept[order], d_kept[order]
        fences = self.fences
        for q, f, d in zip(q_kept.tolist(), f_kept.tolist(), d_kept.tolist(), strict=True):
            hoods[q].append((fences[f], d, f))
        last_fences = fi[(qi == n_points - 1) & ~self._is_circle[fi]]
        if last_fences.size:
            kx = max(kx, float(self._mlon[last_fences].max()))
        return hoods, kx, pair_signed

    def _batch_candidates(
        self,
        lats: Sequence[float],
        lons: Sequence[float],
        margins_m: Sequence[float],
        org_id: str | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool] | None:
        """(lat, lon, margin) as arrays and the bounding-box candidates of each point (point
        index, fence position); None when there are none. Points that lie close together (one
        device's batch) take one tree query with their common envelope, then each point's own
        box test on the few fences found (the same pairs, for a fraction of the cost of one
        query per point). The last item says whether the pairs are sorted by (point, fence)."""
        if not self.fences:
            return None
        if org_id is not None and org_id not in self._org_code:
            return None
        lat = np.asarray(lats, dtype=np.float64)
        lon = np.asarray(lons, dtype=np.float64)
        margin = np.asarray(margins_m, dtype=np.float64)
        dlat = margin / M_PER_DEG_LAT
        dlon = margin * _LON_BOX_SLACK / (M_PER_DEG_LAT * np.maximum(1e-6, np.cos(np.radians(lat))))
        xmin = lon - dlon
        ymin = lat - dlat
        xmax = lon + dlon
        ymax = lat + dlat
        x0, y0, x1, y1 = float(xmin.min()), float(ymin.min()), float(xmax.max()), float(ymax.max())
        if (x1 - x0) + (y1 - y0) > _BATCH_ENVELOPE_DEG:  # spread out: a query per point
            pairs = self._tree.query(shapely.box(xmin, ymin, xmax, ymax))
            qi, fi = pairs[0], pairs[1]
            ordered = False
        else:
            found = self._tree.query(shapely.box(x0, y0, x1, y1))
            n_found = found.size
            if not n_found:
                return None
            found.sort()
            b = self._bounds[found]
            # The tree's test: envelopes intersect (touching counts), as a (point, found
            # fence) table; its row-major nonzero pairs come sorted by (point, fence).
            meets = (
                (b[:, 0] <= xmax[:, None]) & (b[:, 2] >= xmin[:, None])
                & (b[:, 1] <= ymax[:, None]) & (b[:, 3] >= ymin[:, None])
            )  # fmt: skip
            qi, found_at = np.nonzero(meets)
            fi = found[found_at]
            ordered = True
        if org_id is not None and len(self._org_code) > 1:
            keep = self._fence_org[fi] == self._org_code[org_id]
            qi, fi = qi[keep], fi[keep]
        if not qi.size:
            return None
        return lat, lon, margin, qi, fi, ordered

    def _signed(self, fi: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Signed distances of fences `fi` to the points (lat, lon), pair by pair (every
        pair's arithmetic is the same whatever else is in the arrays)."""
        circ = self._is_circle[fi]
        n_circ = int(np.count_nonzero(circ))
        if n_circ == fi.size:
            return _haversine(lat, lon, self._clat[fi], self._clon[fi]) - self._crad[fi]
        if not n_circ:
            return self._signed_polygons(fi, lat, lon)
        signed = np.empty(fi.size)
        c = fi[circ]
        signed[circ] = (
            _haversine(lat[circ], lon[circ], self._clat[c], self._clon[c]) - self._crad[c]
        )
        poly = ~circ
        signed[poly] = self._signed_polygons(fi[poly], lat[poly], lon[poly])
        return signed

    def _signed_polygons(self, fi: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Polygon fences: distance to the border in the fence's frame, negative inside."""
        frame = self._frame[fi]  # lon0, lat0, metres per degree of longitude
        xy = np.empty((fi.size, 2))
        xy[:, 0] = (lon - frame[:, 0]) * frame[:, 2]
        xy[:, 1] = (lat - frame[:, 1]) * M_PER_DEG_LAT
        dist = shapely.distance(self._boundary[fi], shapely.points(xy))
        inside = shapely.contains_xy(self._projected[fi], xy[:, 0], xy[:, 1])
        return np.negative(dist, out=dist, where=inside)


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
