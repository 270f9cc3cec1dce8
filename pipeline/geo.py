"""Distances and local metric frames.

Field work happens within tens of kilometres, so a local equirectangular frame around a
reference point is accurate to well under a metre there and far cheaper than a projection
library per fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG_LAT = math.pi * EARTH_RADIUS_M / 180.0


_RADIANS = math.pi / 180.0  # what math.radians multiplies by (the same double)
_sin, _cos, _asin, _sqrt = math.sin, math.cos, math.asin, math.sqrt
_TWO_R = 2 * EARTH_RADIUS_M


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres.

    Called per fix in hot loops, so written for the interpreter: the same arithmetic as the
    textbook form with math.radians (bit for bit, see tests/test_fence_index.py), without its
    lookups.
    """
    p1 = lat1 * _RADIANS
    p2 = lat2 * _RADIANS
    a = _sin((p2 - p1) / 2) ** 2 + _cos(p1) * _cos(p2) * _sin((lon2 - lon1) * _RADIANS / 2) ** 2
    return _TWO_R * _asin(min(1.0, _sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


@dataclass(frozen=True, slots=True)
class LocalFrame:
    """East/north metres around an origin (equirectangular)."""

    lat0: float
    lon0: float

    @property
    def m_per_deg_lon(self) -> float:
        return M_PER_DEG_LAT * math.cos(math.radians(self.lat0))

    def to_xy(self, lat: float, lon: float) -> tuple[float, float]:
        return ((lon - self.lon0) * self.m_per_deg_lon, (lat - self.lat0) * M_PER_DEG_LAT)

    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        return (self.lat0 + y / M_PER_DEG_LAT, self.lon0 + x / self.m_per_deg_lon)


def metres_to_deg_lat(m: float) -> float:
    return m / M_PER_DEG_LAT


def metres_to_deg_lon(m: float, lat: float) -> float:
    return m / (M_PER_DEG_LAT * max(1e-6, math.cos(math.radians(lat))))
