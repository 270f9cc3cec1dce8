"""Reference data the topology reads on every fix: customers, fences, work schedules.

They change rarely and are read constantly, so they live in in-memory spatial indexes built
once and swapped whole on change (copy-on-write: a running batch never sees half an update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.reference.customers import CustomerIndex
from pipeline.reference.fences import FenceIndex
from pipeline.reference.models import Customer, Fence, Schedule, schedule_active

__all__ = [
    "Customer",
    "CustomerIndex",
    "Fence",
    "FenceIndex",
    "ReferenceData",
    "Schedule",
    "schedule_active",
]


@dataclass(slots=True)
class ReferenceData:
    customers: CustomerIndex = field(default_factory=lambda: CustomerIndex([]))
    fences: FenceIndex = field(default_factory=lambda: FenceIndex([]))
    # Work schedule per (org_id, device_id); a device without one is tracked at all hours.
    schedules: dict[tuple[str, str], Schedule] = field(default_factory=dict)

    def schedule_for(self, org_id: str, device_id: str) -> Schedule | None:
        return self.schedules.get((org_id, device_id))
