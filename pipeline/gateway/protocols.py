"""Free tracker apps, out of the box: their native payloads -> the gateway's canonical pings.

- **Traccar Client / OsmAnd protocol** (`/osmand`): query or form parameters
  (`id, timestamp, lat, lon, speed, bearing, altitude, accuracy, batt`; speed in knots, as
  Traccar Client sends it) or, from Traccar Client 9, a JSON body
  `{"location": {"timestamp", "coords": {...}, "battery": {"level": 0..1}, ...}, "device_id"}`
  (speed in m/s). The device identifier configured in the app is the fieldtrack device token.
- **OwnTracks HTTP mode** (`/owntracks`): a JSON `{"_type": "location", "lat", "lon", "tst",
  "acc", "alt", "vel" (km/h), "cog", "batt"}` with HTTP Basic auth whose password is the
  device token. Messages other than locations are acknowledged and ignored.

Each adapter is a pure function returning canonical records (the gateway's JSON keys), so
the same decoder, screening and storage apply as for `POST /v1/pings`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

KNOTS_TO_MPS = 0.514444
KMH_TO_MPS = 1 / 3.6


class ProtocolError(ValueError):
    """The payload is not what the protocol defines; the message says what is missing."""


def _number(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"not a number: {value!r}") from exc


def _put(record: dict[str, Any], key: str, value: float | None) -> None:
    if value is not None:
        record[key] = value


def osmand_identity(params: Mapping[str, Any], body: Mapping[str, Any] | None) -> str | None:
    """The device identifier (our token) from the query/form or the JSON body."""
    if body and body.get("device_id"):
        return str(body["device_id"])
    for key in ("id", "deviceid"):
        if params.get(key):
            return str(params[key])
    return None


def osmand_records(params: Mapping[str, Any], body: Mapping[str, Any] | None) -> list[dict]:
    """One canonical ping from an OsmAnd request (query/form parameters or Traccar JSON)."""
    if body and isinstance(body.get("location"), Mapping):
        return [_traccar_json(body["location"])]
    if params.get("lat") in (None, "") or params.get("lon") in (None, ""):
        raise ProtocolError("lat and lon are required")
    record: dict[str, Any] = {
        "lat": _number(params["lat"]),
        "lon": _number(params["lon"]),
        "accuracy_m": _number(params.get("accuracy")) or _number(params.get("hdop")) or 0.0,
    }
    timestamp = params.get("timestamp")
    if timestamp in (None, ""):
        raise ProtocolError("timestamp is required")
    record["ts"] = _number(timestamp) if str(timestamp).lstrip("-").isdigit() else timestamp
    speed = _number(params.get("speed"))
    _put(record, "speed_mps", None if speed is None else speed * KNOTS_TO_MPS)
    _put(record, "bearing_deg", _number(params.get("bearing") or params.get("heading")))
    _put(record, "altitude_m", _number(params.get("altitude")))
    _put(record, "battery_pct", _number(params.get("batt")))
    if str(params.get("mock", "")).lower() in ("1", "true"):
        record["is_mock"] = True
    return [record]


def _traccar_json(location: Mapping[str, Any]) -> dict[str, Any]:
    coords = location.get("coords")
    if not isinstance(coords, Mapping):
        raise ProtocolError("location.coords is required")
    if coords.get("latitude") is None or coords.get("longitude") is None:
        raise ProtocolError("location.coords.latitude and longitude are required")
    if not location.get("timestamp"):
        raise ProtocolError("location.timestamp is required")
    record: dict[str, Any] = {
        "ts": location["timestamp"],
        "lat": _number(coords["latitude"]),
        "lon": _number(coords["longitude"]),
        "accuracy_m": _number(coords.get("accuracy")) or 0.0,
    }
    speed = _number(coords.get("speed"))
    _put(record, "speed_mps", speed if speed is not None and speed >= 0 else None)
    heading = _number(coords.get("heading"))
    _put(record, "bearing_deg", heading if heading is not None and heading >= 0 else None)
    _put(record, "altitude_m", _number(coords.get("altitude")))
    battery = location.get("battery")
    if isinstance(battery, Mapping):
        level = _number(battery.get("level"))
        _put(record, "battery_pct", None if level is None or level < 0 else level * 100)
    if location.get("mock") is True:
        record["is_mock"] = True
    return record


def basic_password(authorization: str) -> str | None:
    """The password of an HTTP Basic Authorization header (OwnTracks sends the token there)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


def owntracks_records(body: Any) -> list[dict[str, Any]]:
    """Canonical pings from an OwnTracks message; [] for messages that carry no location."""
    if not isinstance(body, Mapping):
        raise ProtocolError("expected a JSON object")
    if body.get("_type") != "location":
        return []
    if body.get("lat") is None or body.get("lon") is None or body.get("tst") is None:
        raise ProtocolError("a location needs lat, lon and tst")
    record: dict[str, Any] = {
        "ts": _number(body["tst"]),
        "lat": _number(body["lat"]),
        "lon": _number(body["lon"]),
        "accuracy_m": _number(body.get("acc")) or 0.0,
    }
    velocity = _number(body.get("vel"))
    _put(record, "speed_mps", None if velocity is None else velocity * KMH_TO_MPS)
    _put(record, "bearing_deg", _number(body.get("cog")))
    _put(record, "altitude_m", _number(body.get("alt")))
    _put(record, "battery_pct", _number(body.get("batt")))
    return [record]
