"""Spatial index of fences (STRtree + prepared geometry). Owned by the fence work."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.reference.models import Fence


class FenceIndex:
    """Fences by location.

    `near(lat, lon, margin_m)` returns every fence whose border is within `margin_m` of the
    point or that contains it, as (fence, signed_distance_m) pairs: negative inside, positive
    outside, the magnitude being the distance to the border in metres.
    """

    def __init__(self, fences: Iterable[Fence]) -> None:
        self.fences: list[Fence] = list(fences)

    def __len__(self) -> int:
        return len(self.fences)

    def near(self, lat: float, lon: float, margin_m: float = 0.0) -> list[tuple[Fence, float]]:
        raise NotImplementedError
