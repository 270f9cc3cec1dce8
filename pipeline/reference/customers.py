"""Spatial index of customers (rtree). Owned by the dwell/visit work; interface fixed here."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.reference.models import Customer


class CustomerIndex:
    """Customers by location.

    `within(lat, lon, extra_m)` returns the customers whose visit radius (plus `extra_m`)
    contains the point, nearest first, as (customer, distance_m) pairs.
    """

    def __init__(self, customers: Iterable[Customer]) -> None:
        self.customers: list[Customer] = list(customers)

    def __len__(self) -> int:
        return len(self.customers)

    def within(self, lat: float, lon: float, extra_m: float = 0.0) -> list[tuple[Customer, float]]:
        raise NotImplementedError
