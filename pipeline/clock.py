"""Processing-time clocks. Only the edges (gateway, drivers) read one; processors get `now_ms`.

A simulation or a replay runs on a `ManualClock` that follows the simulated or recorded time,
so time checks (future timestamps, lost contact) behave as they would have live.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class WallClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def set(self, now_ms: int) -> None:
        self._now = max(self._now, now_ms)  # processing time never goes backwards

    def advance(self, delta_ms: int) -> None:
        self._now += delta_ms
