"""Device identities: bearer tokens (kept only as hashes) and work schedules."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from pipeline.reference.models import Schedule

TOKEN_PREFIX = "ft_"


def new_token() -> str:
    """A random device token; shown once when the device is added, never stored in clear."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are 256-bit random values, so a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    org_id: str
    device_id: str
    name: str = ""
    schedule: Schedule | None = None  # work hours; None = tracked at all hours
    active: bool = True


class DeviceRegistry:
    """Token hash -> device. Swapped whole on refresh (readers never see half an update)."""

    def __init__(self, devices: dict[str, DeviceInfo] | None = None) -> None:
        self._by_hash: dict[str, DeviceInfo] = dict(devices or {})

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, token: str) -> DeviceInfo | None:
        # Looking up the hash (not the token) means timing reveals nothing about stored tokens.
        device = self._by_hash.get(hash_token(token))
        return device if device is not None and device.active else None

    def add(self, token_hash: str, device: DeviceInfo) -> None:
        self._by_hash = {**self._by_hash, token_hash: device}

    def replace_all(self, devices: dict[str, DeviceInfo]) -> None:
        self._by_hash = dict(devices)

    def schedules(self) -> dict[tuple[str, str], Schedule]:
        return {
            (d.org_id, d.device_id): d.schedule
            for d in self._by_hash.values()
            if d.schedule is not None
        }

    def devices(self) -> list[DeviceInfo]:
        return list(self._by_hash.values())
