"""The records that flow through fieldtrack.

Inputs come from devices (`Ping`, `DeviceState`); outputs are facts the topology derives
(`TrackPoint`, `Dwell`, `Visit`, `FenceEvent`, `Alert`) and `DeadLetter`s for input that could
not be used. Every record carries `org_id` and `device_id`; times are epoch milliseconds (UTC).

Every output carries a deterministic id (`make_id`) built from what identifies the fact, so a
replay or a retry produces the same id and the store keeps one copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from typing import Any


def make_id(*parts: object) -> str:
    """A stable 16-hex-digit id from the parts that identify a fact (org, device, kind, time...)."""
    key = "\x1f".join(str(p) for p in parts).encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


class Provider(StrEnum):
    GPS = "gps"
    NETWORK = "network"
    FUSED = "fused"


class DeviceStateKind(StrEnum):
    BOOT = "boot"
    SHUTDOWN = "shutdown"
    APP_START = "app_start"
    APP_KILLED = "app_killed"
    GPS_ON = "gps_on"
    GPS_OFF = "gps_off"
    PERMISSION_GRANTED = "permission_granted"
    PERMISSION_REVOKED = "permission_revoked"
    NETWORK_ON = "network_on"
    NETWORK_OFF = "network_off"
    AIRPLANE_ON = "airplane_on"
    AIRPLANE_OFF = "airplane_off"
    BATTERY_LOW = "battery_low"
    MOCK_APP_DETECTED = "mock_app_detected"
    DEVELOPER_MODE_ON = "developer_mode_on"
    ROOTED = "rooted"
    EMULATOR = "emulator"


DEVICE_STATE_KINDS = frozenset(k.value for k in DeviceStateKind)
PROVIDERS = frozenset(p.value for p in Provider)


@dataclass(slots=True)
class Ping:
    """One location fix as the phone recorded it."""

    org_id: str
    device_id: str
    seq: int
    ts_ms: int
    lat: float
    lon: float
    accuracy_m: float
    speed_mps: float | None = None
    bearing_deg: float | None = None
    altitude_m: float | None = None
    provider: str = "gps"
    is_mock: bool = False
    battery_pct: float | None = None
    # Processing-clock time the gateway received it (0 = unknown, e.g. replayed from a file).
    received_ms: int = 0


@dataclass(slots=True)
class DeviceState:
    """A change of the phone's state: power, app, GPS, permissions, network, integrity."""

    org_id: str
    device_id: str
    ts_ms: int
    kind: str  # one of DeviceStateKind values
    detail: str | None = None
    received_ms: int = 0


class TrackFlag(IntFlag):
    """Why a track point is special. Stored as names in ClickHouse (`flags` array)."""

    NONE = 0
    OUTLIER = 1  # rejected by the smoothing gate; smoothed position = filter estimate
    LATE = 2  # arrived after the reorder window; stored, did not touch state
    MOCK = 4  # the phone itself flagged the fix as mock
    SPIKE = 8  # A->B->A spike
    LOW_ACCURACY = 16  # accuracy above the gate's limit
    GAP_BEFORE = 32  # first point after a gap (filter restarted)
    CLOCK_CORRECTED = 64  # ts_ms shifted by the phone's estimated clock error (validate)


def flag_names(flags: int) -> list[str]:
    return [f.name.lower() for f in TrackFlag if f.value and flags & f.value]  # type: ignore[union-attr]


@dataclass(slots=True)
class TrackPoint:
    """A cleaned point of the trajectory: raw and smoothed position."""

    org_id: str
    device_id: str
    seq: int
    ts_ms: int
    raw_lat: float
    raw_lon: float
    lat: float
    lon: float
    accuracy_m: float
    speed_mps: float
    heading_deg: float
    moving: bool
    step_m: float  # distance this point adds to mileage (0 when stationary, outlier or late)
    flags: int = 0  # TrackFlag bits

    @property
    def id(self) -> str:
        return make_id(self.org_id, self.device_id, "tp", self.seq, self.ts_ms)


class DwellStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True)
class Dwell:
    """A stay: the device remained within a radius for at least the minimum time.

    Emitted once when the stay is confirmed (status open) and again when it ends (closed); both
    share the id and `version` orders them (the store keeps the highest).
    """

    id: str
    org_id: str
    device_id: str
    start_ms: int
    end_ms: int  # last fix inside the stay so far
    lat: float
    lon: float
    radius_m: float
    n_points: int
    status: str  # DwellStatus value
    end_reason: str = ""  # "" while open; "moved", "gap" or "flush" once closed
    customer_id: str | None = None
    version: int = 0


class VisitDoubt(StrEnum):
    """Why a visit is not verified, besides anti-cheat alert types."""

    ARRIVAL_NOT_OBSERVED = "arrival_not_observed"
    DEPARTURE_NOT_OBSERVED = "departure_not_observed"


@dataclass(slots=True)
class Visit:
    """A dwell at a customer: the verified visit a manager sees."""

    id: str
    org_id: str
    device_id: str
    customer_id: str
    dwell_id: str
    arrive_ms: int
    leave_ms: int
    minutes: float
    distance_m: float  # dwell centre to customer location
    customer_grade: str = ""
    # False when an anti-cheat episode overlaps the visit, or its arrival or departure was not
    # observed (tracking started or stopped there): a manager must not count it as proven.
    verified: bool = True
    suspect_alerts: str = ""  # comma-separated alert types / VisitDoubt values behind it


@dataclass(slots=True)
class FenceEvent:
    id: str
    org_id: str
    device_id: str
    fence_id: str
    fence_kind: str
    transition: str  # "enter" | "exit"
    ts_ms: int
    lat: float
    lon: float
    accuracy_m: float


class AlertType(StrEnum):
    SPOOF_MOCK_FLAG = "spoof_mock_flag"
    SPOOF_DEVICE_INTEGRITY = "spoof_device_integrity"  # mock app / dev mode / root / emulator
    SPOOF_TELEPORT = "spoof_teleport"
    SPOOF_STATIC = "spoof_static"  # zero-jitter static position
    SPOOF_CONSTANT_ACCURACY = "spoof_constant_accuracy"
    SPOOF_CLOCK_SKEW = "spoof_clock_skew"
    SPOOF_JUMP_BACK = "spoof_jump_back"  # jump to a customer and back
    SPOOF_REPLAY = "spoof_replay"  # an earlier day's track replayed with shifted times
    LEFT_POST = "left_post"
    FORBIDDEN_ZONE = "forbidden_zone"
    LOST_CONTACT = "lost_contact"
    CONTACT_RESTORED = "contact_restored"


SPOOF_ALERT_TYPES = frozenset(a.value for a in AlertType if a.value.startswith("spoof_"))


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(slots=True)
class Alert:
    """Something an ops team should act on, with the evidence that made the rule fire."""

    id: str
    org_id: str
    device_id: str
    ts_ms: int
    type: str  # AlertType value
    severity: str  # Severity value
    message: str
    evidence: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class DeadLetter:
    """Input that could not be used, kept with the reason."""

    id: str
    org_id: str
    device_id: str
    received_ms: int
    source: str  # "gateway", "validate", "replay", ...
    reason: str
    payload: bytes = b""


def evidence(**values: Any) -> dict[str, str]:
    """An alert evidence map; floats are rounded so ids and messages stay stable."""
    out: dict[str, str] = {}
    for k, v in values.items():
        if isinstance(v, float):
            out[k] = f"{v:.6g}"
        else:
            out[k] = str(v)
    return out


class ContactReason(StrEnum):
    """Why a phone went silent, inferred from its last device states and what came after."""

    POWERED_OFF = "powered_off"
    APP_KILLED = "app_killed"
    LOCATION_OFF = "location_off"
    PERMISSION_REVOKED = "permission_revoked"
    NO_NETWORK = "no_network"  # also airplane mode; buffered pings arriving later confirm it
    BATTERY_DIED = "battery_died"
    UNKNOWN = "unknown"
