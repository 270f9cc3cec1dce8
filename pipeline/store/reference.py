"""Reference data and devices in the store: the single source every gateway and worker
loads from (so several processes, or a cluster, share one registry)."""

from __future__ import annotations

import json
import time
from typing import Any

from pipeline.devices import DeviceInfo, DeviceRegistry
from pipeline.reference import CustomerIndex, FenceIndex, ReferenceData
from pipeline.reference.fences import fence_from_geojson
from pipeline.reference.models import Customer, Schedule
from pipeline.store.client import Store


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def save_customers(store: Store, customers: list[Customer]) -> None:
    now = _now_ms()
    store.insert(
        "customers",
        [
            [c.org_id for c in customers],
            [c.customer_id for c in customers],
            [c.name for c in customers],
            [c.lat for c in customers],
            [c.lon for c in customers],
            [c.radius_m for c in customers],
            [c.grade for c in customers],
            [now] * len(customers),
        ],
        ("org_id", "customer_id", "name", "lat", "lon", "radius_m", "grade", "updated"),
    )


def save_fences(store: Store, features: list[dict[str, Any]], org_id: str) -> int:
    """Validates every feature (builds the Fence) before storing any; returns the count."""
    fences = [fence_from_geojson(f, org_id) for f in features]
    now = _now_ms()
    store.insert(
        "fences",
        [
            [org_id] * len(fences),
            [f.fence_id for f in fences],
            [f.name for f in fences],
            [f.kind for f in fences],
            [json.dumps(feat, separators=(",", ":")) for feat in features],
            [now] * len(fences),
        ],
        ("org_id", "fence_id", "name", "kind", "geojson", "updated"),
    )
    return len(fences)


def save_device(store: Store, token_hash: str, device: DeviceInfo) -> None:
    save_devices(store, [(token_hash, device)])


def save_devices(store: Store, devices: list[tuple[str, DeviceInfo]]) -> None:
    """(token hash, device) pairs in one insert: an insert costs chDB ~15 ms however small,
    and a fleet registered at once (2,000 devices) took the Kafka sink 30 s one by one."""
    if not devices:
        return
    now = _now_ms()
    store.insert(
        "devices",
        [
            [d.org_id for _, d in devices],
            [d.device_id for _, d in devices],
            [d.name for _, d in devices],
            [h for h, _ in devices],
            [json.dumps(d.schedule.to_spec()) if d.schedule else "" for _, d in devices],
            [d.active for _, d in devices],
            [now] * len(devices),
        ],
        ("org_id", "device_id", "name", "token_hash", "schedule", "active", "updated"),
    )


def load_devices(store: Store) -> dict[str, DeviceInfo]:
    rows = store.query(
        f"SELECT org_id, device_id, name, token_hash, schedule, active "
        f"FROM {store.database}.devices FINAL"
    ).rows
    return {
        token_hash: DeviceInfo(
            org_id=org,
            device_id=dev,
            name=name,
            schedule=Schedule.parse(json.loads(schedule)) if schedule else None,
            active=bool(active),
        )
        for org, dev, name, token_hash, schedule, active in rows
    }


def load_customers(store: Store) -> list[Customer]:
    rows = store.query(
        f"SELECT customer_id, org_id, name, lat, lon, radius_m, grade "
        f"FROM {store.database}.customers FINAL"
    ).rows
    return [Customer(*row) for row in rows]


def load_fences(store: Store) -> FenceIndex:
    """The fence index, with each fence's `assigned` devices (who has it as their post)."""
    rows = store.query(f"SELECT org_id, geojson FROM {store.database}.fences FINAL").rows
    return FenceIndex.from_features((org, json.loads(geojson)) for org, geojson in rows)


def load_reference(store: Store, registry: DeviceRegistry | None = None) -> ReferenceData:
    registry = registry or DeviceRegistry(load_devices(store))
    return ReferenceData(
        customers=CustomerIndex(load_customers(store)),
        fences=load_fences(store),
        schedules=registry.schedules(),
    )
