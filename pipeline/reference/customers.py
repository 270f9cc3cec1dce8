"""Spatial index of customers (rtree), built once and read on every dwell.

Each customer is indexed by the bounding box (in degrees) of its visit circle, so a query for
"which customers' circles contain this point" is a point query against the tree followed by an
exact haversine test on the few candidates. Building uses rtree's bulk stream loading, which
keeps 100,000 customers well under a second. Longitudes are not wrapped at the antimeridian.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from rtree import index

from pipeline.geo import M_PER_DEG_LAT, haversine_m
from pipeline.reference.models import Customer

# Boxes are padded so the equirectangular degree box never clips a circle that haversine says
# reaches the point (the two distance measures differ by well under this over a few km).
_BOX_PAD_FRAC = 0.01
_BOX_PAD_M = 1.0


def _half_box_deg(lat: float, metres: float) -> tuple[float, float]:
    """Half-width in degrees (lat, lon) of a box that surely holds a circle of `metres`."""
    padded = metres * (1.0 + _BOX_PAD_FRAC) + _BOX_PAD_M
    dlat = padded / M_PER_DEG_LAT
    # Use the latitude of the box edge nearest the pole: degrees of longitude are shortest there.
    edge_lat = min(89.9, abs(lat) + dlat)
    dlon = padded / (M_PER_DEG_LAT * math.cos(math.radians(edge_lat)))
    return dlat, dlon


class CustomerIndex:
    """Customers by location.

    `within(lat, lon, extra_m)` returns the customers whose visit radius (plus `extra_m`)
    contains the point, nearest first, as (customer, distance_m) pairs.
    """

    def __init__(self, customers: Iterable[Customer]) -> None:
        self.customers: list[Customer] = list(customers)
        self._tree: index.Index | None = None
        if self.customers:
            self._tree = index.Index(self._boxes())

    def _boxes(self) -> Iterator[tuple[int, tuple[float, float, float, float], None]]:
        for i, c in enumerate(self.customers):
            dlat, dlon = _half_box_deg(c.lat, max(0.0, c.radius_m))
            yield i, (c.lon - dlon, c.lat - dlat, c.lon + dlon, c.lat + dlat), None

    def __len__(self) -> int:
        return len(self.customers)

    def _candidates(self, lat: float, lon: float, reach_m: float) -> Iterator[int]:
        """Ids of customers whose box meets the box of radius `reach_m` around the point."""
        if self._tree is None:
            return iter(())
        dlat, dlon = _half_box_deg(lat, reach_m)
        hits: Iterator[int] = self._tree.intersection(
            (lon - dlon, lat - dlat, lon + dlon, lat + dlat)
        )
        return hits

    def within(
        self, lat: float, lon: float, extra_m: float = 0.0, org_id: str | None = None
    ) -> list[tuple[Customer, float]]:
        """Customers whose `radius_m + extra_m` contains the point, nearest first.

        `org_id` keeps only that org's customers (None = every org).
        """
        extra_m = max(0.0, extra_m)
        found: list[tuple[Customer, float]] = []
        customers = self.customers
        for i in self._candidates(lat, lon, extra_m):
            c = customers[i]
            if org_id is not None and c.org_id != org_id:
                continue
            d = haversine_m(lat, lon, c.lat, c.lon)
            if d <= c.radius_m + extra_m:
                found.append((c, d))
        # Ties broken by id so the order (and the customer a dwell picks) is deterministic.
        found.sort(key=lambda cd: (cd[1], cd[0].customer_id))
        return found

    def nearest(
        self, lat: float, lon: float, max_m: float, org_id: str | None = None
    ) -> tuple[Customer, float] | None:
        """The customer whose location is nearest the point, if within `max_m` (radius ignored)."""
        best: tuple[Customer, float] | None = None
        customers = self.customers
        # Customer boxes include their radius, so this box query is a superset of the answer.
        for i in self._candidates(lat, lon, max(0.0, max_m)):
            c = customers[i]
            if org_id is not None and c.org_id != org_id:
                continue
            d = haversine_m(lat, lon, c.lat, c.lon)
            if d > max_m:
                continue
            if best is None or (d, c.customer_id) < (best[1], best[0].customer_id):
                best = (c, d)
        return best
