"""Reading customers and fences from the files people have: CSV and GeoJSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pipeline.reference.models import Customer

CUSTOMER_ID_KEYS = ("customer_id", "id", "code")


class ReferenceFileError(ValueError):
    """A customer or fence file could not be used; the message says where and why."""


def _float(row: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = row.get(key)
    if value in (None, ""):
        if default is None:
            raise ReferenceFileError(f"{where}: missing {key!r}")
        return default
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ReferenceFileError(f"{where}: {key} must be a number, got {value!r}") from exc


def _customer(row: dict[str, Any], org_id: str, where: str, lat: float, lon: float) -> Customer:
    cid = next((str(row[k]) for k in CUSTOMER_ID_KEYS if row.get(k) not in (None, "")), None)
    if cid is None:
        raise ReferenceFileError(f"{where}: missing customer_id")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ReferenceFileError(f"{where}: coordinates out of range ({lat}, {lon})")
    grade = str(row.get("grade") or "B").upper()
    if grade not in ("A", "B", "C"):
        raise ReferenceFileError(f"{where}: grade must be A, B or C, got {grade!r}")
    return Customer(
        customer_id=cid,
        org_id=org_id,
        name=str(row.get("name") or cid),
        lat=lat,
        lon=lon,
        radius_m=_float(row, "radius_m", where, 100.0),
        grade=grade,
    )


def customers_from_csv(text: str, org_id: str) -> list[Customer]:
    """Columns: customer_id (or id), name, lat, lon, optional radius_m (100), grade (B)."""
    out = []
    for n, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        where = f"line {n}"
        out.append(
            _customer(row, org_id, where, _float(row, "lat", where), _float(row, "lon", where))
        )
    return out


def customers_from_geojson(data: dict[str, Any], org_id: str) -> list[Customer]:
    """Point features; properties: id/customer_id, name, radius_m, grade."""
    out = []
    for n, feature in enumerate(features_of(data)):
        geom = feature.get("geometry") or {}
        if geom.get("type") != "Point":
            raise ReferenceFileError(f"feature {n}: customers must be Points")
        lon, lat = (float(c) for c in geom["coordinates"][:2])
        out.append(_customer(feature.get("properties") or {}, org_id, f"feature {n}", lat, lon))
    return out


def features_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    if data.get("type") == "FeatureCollection":
        return list(data.get("features") or [])
    if data.get("type") == "Feature":
        return [data]
    raise ReferenceFileError("expected a GeoJSON FeatureCollection or Feature")


def load_customers_file(path: str | Path, org_id: str) -> list[Customer]:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".json", ".geojson"):
        return customers_from_geojson(json.loads(text), org_id)
    return customers_from_csv(text, org_id)


def load_fence_features(path: str | Path) -> list[dict[str, Any]]:
    return features_of(json.loads(Path(path).read_text(encoding="utf-8")))
