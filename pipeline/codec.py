"""Wire formats: Avro (Confluent framing) for Kafka and the gateway; JSON from phones and out.

Avro
----
Schemas live in `schemas/avro/<record>.v<N>.avsc` (namespace `io.fieldtrack`); their ids are
the table in `schemas/avro/registry.json` (`{"io.fieldtrack.Ping": {"1": 1, "2": 11}, ...}`:
ids are unique and never reused; a published version is never edited, a change is a new
version whose added fields have defaults). A batch schema names the version of the record it
carries in a top-level `"references": [{"name": "io.fieldtrack.Ping", "version": 2}]`
(Confluent's schema-reference idea), so every schema id stands for one complete schema.

A message is Confluent's wire format: byte 0 (magic), the schema id as 4 bytes big-endian,
then the schemaless Avro body. `encode_avro` always writes the newest version of a record;
`decode_avro` reads any known id and resolves old versions through the newest reader schema,
so readers see one shape. Times are plain `long` epoch milliseconds (no logicalType, so
fastavro hands back ints, as the dataclasses hold). `Provider` and `DeviceStateKind` are Avro
enums as asked; the vocabularies of outputs (alert type, dwell status, end reason...) are
strings, because they grow and an Avro enum makes an older reader fail on a new symbol.

Ping v2 adds `satellites` (optional int) and `activity` (optional string: still, walking,
running, on_bicycle, in_vehicle, unknown). The `Ping` dataclass does not carry them yet, so
`from_record` drops fields the dataclass lacks and `to_record` leaves them to their defaults.

JSON from phones (`decode_pings_json`, `decode_states_json`)
-----------------------------------------------------------
Body: a JSON array of record objects, a single record object, or a wrapper object
`{"pings": [...]}` / `{"states": [...]}`. A body that is not UTF-8 (a leading BOM is
skipped), not JSON, or of another top-level shape raises `BodyError`; so does a wrapper whose
`org_id`/`device_id` contradicts the authenticated device. Everything else is judged per
record: a bad record becomes a `RecordError(index, reason, raw)` and the good records of the
same body are still returned.

Per record:
- Keys are the dataclass field names. Aliases: `ts`, `timestamp`, `time` -> `ts_ms`;
  `latitude` -> `lat`; `longitude`, `lng` -> `lon`; `accuracy`, `acc` -> `accuracy_m`;
  `speed` -> `speed_mps`; `bearing`, `heading` -> `bearing_deg`; `altitude`, `alt` ->
  `altitude_m`; `battery`, `batt` -> `battery_pct`; `mock` -> `is_mock`; for states `type`,
  `event` -> `kind`. A field given twice (`ts` and `ts_ms`) is an error.
- Unknown keys are ignored (tolerated), so a newer app that sends more is not rejected.
  `received_ms` in the body is ignored too: the gateway's argument wins.
- `org_id`/`device_id` are optional (they come from the device token); present, non-empty and
  different -> "device_id 'x' does not match the authenticated device 'y'".
- Times (`ts_ms` and its aliases): a number below 1e11 in magnitude is epoch seconds (1e11 s
  is the year 5138, while 1e11 ms is 1973), otherwise epoch milliseconds; a string must be
  ISO-8601 with a zone (`Z` or `+hh:mm`); sub-millisecond parts are rounded (numbers) or
  truncated (strings).
- Numbers must be JSON numbers: strings and booleans are rejected ("lat must be a number, got
  string"). Non-finite values are rejected per record ("lat must be a finite number, got
  nan"): Python's json accepts the non-standard NaN/Infinity literals and 1e999 overflows to
  inf, and none of them may reach Avro, ClickHouse or the filters. Range checks (latitude
  bounds, future times, accuracy limits) are the Validator's job, not the codec's.
- `null` means absent: optional numbers stay None, `provider` defaults to "gps", `is_mock` to
  false. `provider` and `kind` are matched case-insensitively against their enums; `is_mock`
  must be a JSON boolean.
- `seq` missing -> `seq = 0`, the validator's "this device sends no sequence numbers": it then
  orders and de-duplicates by event time alone (ids and the raw table key include ts_ms, so
  they stay deterministic). A non-integral seq is an error. `seq` and
  times must fit a signed 64-bit Avro long.

The same guarantee holds for `decode_pings_avro` / `decode_states_avro` (gateway Avro bodies:
a wire-format batch or a single record): every returned Ping has finite numbers and the
authenticated org/device (an empty org_id/device_id in the body means "from the token").

Output (`to_json`)
------------------
A plain dict of the dataclass fields (bytes as standard base64; TrackPoint gains its `id`),
for `fieldtrack alerts tail`, dead letters and logs; `from_json` inverts it.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import functools
import io
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pipeline.events import (
    DEVICE_STATE_KINDS,
    PROVIDERS,
    Alert,
    DeadLetter,
    DeviceState,
    Dwell,
    FenceEvent,
    Ping,
    TrackPoint,
    Visit,
)

NAMESPACE = "io.fieldtrack"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "avro"
MAGIC_BYTE = 0
HEADER = struct.Struct(">BI")  # magic byte, schema id (big-endian uint32)

PING = f"{NAMESPACE}.Ping"
DEVICE_STATE = f"{NAMESPACE}.DeviceState"
PING_BATCH = f"{NAMESPACE}.PingBatch"
DEVICE_STATE_BATCH = f"{NAMESPACE}.DeviceStateBatch"

# Record name -> dataclass, for every event type with a schema.
RECORD_TYPES: dict[str, type] = {
    PING: Ping,
    DEVICE_STATE: DeviceState,
    f"{NAMESPACE}.TrackPoint": TrackPoint,
    f"{NAMESPACE}.Dwell": Dwell,
    f"{NAMESPACE}.Visit": Visit,
    f"{NAMESPACE}.FenceEvent": FenceEvent,
    f"{NAMESPACE}.Alert": Alert,
    f"{NAMESPACE}.DeadLetter": DeadLetter,
}
_NAME_OF_TYPE: dict[type, str] = {cls: name for name, cls in RECORD_TYPES.items()}
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in RECORD_TYPES.values()
}
_BYTES_FIELDS: dict[type, tuple[str, ...]] = {DeadLetter: ("payload",)}

SECONDS_LIMIT = 1e11  # |number| below this in a time field = epoch seconds, else milliseconds
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_FILE_NAME = re.compile(r"(?P<stem>[a-z0-9_]+)\.v(?P<version>[1-9][0-9]*)\.avsc")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)


class CodecError(ValueError):
    """Data or schemas the codec cannot handle (bad framing, unknown schema id, corrupt body)."""


class BodyError(CodecError):
    """A request body that cannot be read at all (the gateway answers 400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RecordError:
    """One record of a request body that was rejected; the rest of the body still counts."""

    index: int  # position of the record in the body's array (0 for a single object)
    reason: str
    raw: bytes  # the record as compact JSON, for the dead letter


# ---------------------------------------------------------------------------------------------
# Schemas and ids


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    name: str  # full name, e.g. io.fieldtrack.Ping
    version: int
    schema_id: int
    file: str
    schema: dict[str, Any]  # self-contained: referenced records are inlined
    parsed: Any  # fastavro parsed schema
    header: bytes  # the 5-byte wire header

    @property
    def fingerprint(self) -> str:
        """CRC-64-AVRO of the parsing canonical form: changes iff the schema's meaning does."""
        return str(fingerprint(to_parsing_canonical_form(self.schema), "CRC-64-AVRO"))


def full_name(name: str) -> str:
    """'Ping' -> 'io.fieldtrack.Ping'; full names pass through."""
    return name if "." in name else f"{NAMESPACE}.{name}"


class SchemaSet:
    """Every schema version in a directory, checked against its registry.json."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self.directory = directory
        registry_path = directory / "registry.json"
        try:
            registry: dict[str, dict[str, int]] = json.loads(registry_path.read_text())
        except (OSError, ValueError) as exc:
            raise CodecError(f"cannot read schema registry {registry_path}: {exc}") from exc

        raw: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}
        for path in sorted(directory.glob("*.avsc")):
            match = _FILE_NAME.fullmatch(path.name)
            if not match:
                raise CodecError(f"{path.name}: schema files are named <record>.v<N>.avsc")
            schema = json.loads(path.read_text())
            name = schema["name"]
            if "." not in name:
                if "namespace" not in schema:
                    raise CodecError(f"{path.name}: the record needs a namespace")
                name = f"{schema['namespace']}.{name}"
            raw[(name, int(match["version"]))] = (path.name, schema)

        ids: dict[int, tuple[str, int]] = {}
        for name, versions in registry.items():
            for version_text, schema_id in versions.items():
                key = (name, int(version_text))
                if key not in raw:
                    raise CodecError(f"registry.json lists {name} v{version_text}: no .avsc file")
                if schema_id in ids:
                    raise CodecError(f"schema id {schema_id} used twice: {ids[schema_id]}, {key}")
                if not 0 < schema_id < 2**31:
                    raise CodecError(f"schema id {schema_id} of {key} out of range")
                ids[schema_id] = key
        id_of = {key: schema_id for schema_id, key in ids.items()}
        for key, (file, _) in raw.items():
            if key not in id_of:
                raise CodecError(f"{file} ({key[0]} v{key[1]}) is not listed in registry.json")

        expanded: dict[tuple[str, int], dict[str, Any]] = {}
        self.versions: dict[tuple[str, int], SchemaVersion] = {}
        for key in sorted(raw):
            schema = _expand(key, raw, expanded, ())
            self.versions[key] = SchemaVersion(
                name=key[0],
                version=key[1],
                schema_id=id_of[key],
                file=raw[key][0],
                schema=schema,
                parsed=fastavro.parse_schema(schema),
                header=HEADER.pack(MAGIC_BYTE, id_of[key]),
            )
        self.latest: dict[str, SchemaVersion] = {}
        for sv in self.versions.values():
            if sv.name not in self.latest or sv.version > self.latest[sv.name].version:
                self.latest[sv.name] = sv
        # schema id -> (writer version, reader schema or None when the writer is the newest)
        self.readers: dict[int, tuple[SchemaVersion, Any]] = {}
        for sv in self.versions.values():
            newest = self.latest[sv.name]
            self.readers[sv.schema_id] = (sv, None if newest is sv else newest.parsed)

    def by_name(self, name: str) -> SchemaVersion:
        """The newest version of a record ('Ping' or 'io.fieldtrack.Ping')."""
        try:
            return self.latest[full_name(name)]
        except KeyError:
            raise CodecError(f"no schema for record {name!r}") from None

    def history(self, name: str) -> list[SchemaVersion]:
        """All versions of a record, oldest first."""
        name = full_name(name)
        return sorted((sv for sv in self.versions.values() if sv.name == name),
                      key=lambda sv: sv.version)  # fmt: skip


def _expand(
    key: tuple[str, int],
    raw: Mapping[tuple[str, int], tuple[str, dict[str, Any]]],
    done: dict[tuple[str, int], dict[str, Any]],
    stack: tuple[tuple[str, int], ...],
) -> dict[str, Any]:
    """The schema of `key` with its referenced records inlined at their first use."""
    if key in done:
        return done[key]
    if key in stack:
        raise CodecError(f"circular schema references: {[*stack, key]}")
    file, source = raw[key]
    schema = copy.deepcopy(source)
    definitions: dict[str, dict[str, Any]] = {}
    for ref in schema.pop("references", []):
        ref_key = (ref["name"], int(ref["version"]))
        if ref_key not in raw:
            raise CodecError(f"{file}: references {ref_key[0]} v{ref_key[1]}, which has no file")
        definitions[ref["name"]] = _expand(ref_key, raw, done, (*stack, key))
    used: set[str] = set()
    schema = _inline(schema, definitions, used)
    if used != definitions.keys():
        raise CodecError(
            f"{file}: references {sorted(definitions.keys() - used)} but never uses it"
        )
    done[key] = schema
    return schema


def _inline(node: Any, definitions: Mapping[str, dict[str, Any]], used: set[str]) -> Any:
    """Replace the first use of each referenced name (type positions only) by its definition."""
    if isinstance(node, str):
        if node in definitions and node not in used:
            used.add(node)
            return copy.deepcopy(definitions[node])
        return node
    if isinstance(node, list):  # a union
        return [_inline(branch, definitions, used) for branch in node]
    if isinstance(node, dict):
        for field in node.get("fields", ()):
            field["type"] = _inline(field["type"], definitions, used)
        for slot in ("items", "values"):
            if slot in node:
                node[slot] = _inline(node[slot], definitions, used)
        if isinstance(node.get("type"), dict | list):
            node["type"] = _inline(node["type"], definitions, used)
    return node


@functools.cache
def schema_set() -> SchemaSet:
    """The repository's schemas, parsed once."""
    return SchemaSet(SCHEMA_DIR)


# ---------------------------------------------------------------------------------------------
# Avro


def encode_avro(record_name: str, obj: Any) -> bytes:
    """Confluent wire format with the newest version of `record_name` (dataclass or dict)."""
    sv = schema_set().by_name(record_name)
    record = obj if isinstance(obj, dict) else to_record(obj)
    buf = io.BytesIO()
    buf.write(sv.header)
    try:
        fastavro.schemaless_writer(buf, sv.parsed, record)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        raise CodecError(f"cannot encode {sv.name}: {exc}") from exc
    return buf.getvalue()


def decode_avro(data: bytes) -> tuple[str, dict[str, Any]]:
    """(full record name, record dict in the newest version's shape) from a wire-format message."""
    if len(data) < HEADER.size:
        raise CodecError(f"Avro message of {len(data)} bytes is shorter than the 5-byte header")
    magic, schema_id = HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise CodecError(
            f"not Confluent wire format: magic byte is {magic:#04x}, expected {MAGIC_BYTE:#04x}"
        )
    schemas = schema_set()
    entry = schemas.readers.get(schema_id)
    if entry is None:
        known = ", ".join(str(i) for i in sorted(schemas.readers))
        raise CodecError(f"unknown schema id {schema_id} (known: {known})")
    writer, reader = entry
    buf = io.BytesIO(data)
    buf.seek(HEADER.size)
    try:
        record = fastavro.schemaless_reader(buf, writer.parsed, reader)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError... on bad bytes
        raise CodecError(
            f"corrupt Avro body for {writer.name} v{writer.version} (schema id {schema_id}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if buf.tell() != len(data):
        raise CodecError(
            f"{len(data) - buf.tell()} trailing bytes after the {writer.name} v{writer.version} "
            f"record (schema id {schema_id})"
        )
    return writer.name, record  # type: ignore[return-value]


def to_record(obj: Any) -> dict[str, Any]:
    """An event dataclass as an Avro/JSON-ready dict of its fields."""
    names = _FIELDS.get(type(obj))
    if names is None:
        raise TypeError(f"no schema for {type(obj).__name__}")
    return {name: getattr(obj, name) for name in names}


def from_record(name: str, record: Mapping[str, Any]) -> Any:
    """The event dataclass for a record dict; fields the dataclass lacks (newer schema) drop."""
    cls = RECORD_TYPES.get(full_name(name))
    if cls is None:
        raise CodecError(f"no event type for record {name!r}")
    return _build(cls, record)


def _build(cls: type, record: Mapping[str, Any]) -> Any:
    return cls(**{n: record[n] for n in _FIELDS[cls] if n in record})


def record_name(obj: Any) -> str:
    """The full Avro record name of an event dataclass."""
    try:
        return _NAME_OF_TYPE[type(obj)]
    except KeyError:
        raise TypeError(f"no schema for {type(obj).__name__}") from None


def encode_ping_batch(
    org_id: str, device_id: str, received_ms: int, pings: Iterable[Ping]
) -> bytes:
    """A PingBatch Kafka record value / Avro request body."""
    batch = {
        "org_id": org_id,
        "device_id": device_id,
        "received_ms": received_ms,
        "pings": [to_record(p) for p in pings],
    }
    return encode_avro(PING_BATCH, batch)


def decode_ping_batch(data: bytes) -> tuple[str, str, int, list[Ping]]:
    name, record = decode_avro(data)
    if name != PING_BATCH:
        raise CodecError(f"expected a {PING_BATCH}, got {name}")
    pings = [_build(Ping, p) for p in record["pings"]]
    return record["org_id"], record["device_id"], record["received_ms"], pings


def encode_device_state_batch(
    org_id: str, device_id: str, received_ms: int, states: Iterable[DeviceState]
) -> bytes:
    """A DeviceStateBatch Kafka record value / Avro request body."""
    batch = {
        "org_id": org_id,
        "device_id": device_id,
        "received_ms": received_ms,
        "states": [to_record(s) for s in states],
    }
    return encode_avro(DEVICE_STATE_BATCH, batch)


def decode_device_state_batch(data: bytes) -> tuple[str, str, int, list[DeviceState]]:
    name, record = decode_avro(data)
    if name != DEVICE_STATE_BATCH:
        raise CodecError(f"expected a {DEVICE_STATE_BATCH}, got {name}")
    states = [_build(DeviceState, s) for s in record["states"]]
    return record["org_id"], record["device_id"], record["received_ms"], states


# ---------------------------------------------------------------------------------------------
# JSON output


def to_json(obj: Any) -> dict[str, Any]:
    """An event as a JSON-ready dict (bytes as base64; TrackPoint with its id)."""
    out = to_record(obj)
    for name in _BYTES_FIELDS.get(type(obj), ()):
        out[name] = base64.b64encode(out[name]).decode("ascii")
    if type(obj) is TrackPoint:
        out["id"] = obj.id
    return out


def from_json(name: str, data: Mapping[str, Any]) -> Any:
    """Inverse of `to_json`."""
    cls = RECORD_TYPES.get(full_name(name))
    if cls is None:
        raise CodecError(f"no event type for record {name!r}")
    record = dict(data)
    for field_name in _BYTES_FIELDS.get(cls, ()):
        if field_name in record:
            record[field_name] = base64.b64decode(record[field_name], validate=True)
    return _build(cls, record)


# ---------------------------------------------------------------------------------------------
# JSON and Avro input from devices


class _Reject(Exception):
    """A record-level problem (internal: becomes a RecordError)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_MISSING: Any = object()
_JSON_TYPE_NAMES = {
    str: "string",
    bool: "boolean",
    type(None): "null",
    list: "array",
    dict: "object",
    int: "number",
    float: "number",
}

_PING_FIELDS = frozenset(_FIELDS[Ping]) | {"satellites", "activity"}  # v2 fields: tolerated
_PING_ALIASES = {
    "ts": "ts_ms",
    "timestamp": "ts_ms",
    "time": "ts_ms",
    "latitude": "lat",
    "longitude": "lon",
    "lng": "lon",
    "accuracy": "accuracy_m",
    "acc": "accuracy_m",
    "speed": "speed_mps",
    "bearing": "bearing_deg",
    "heading": "bearing_deg",
    "altitude": "altitude_m",
    "alt": "altitude_m",
    "battery": "battery_pct",
    "batt": "battery_pct",
    "mock": "is_mock",
}
_STATE_FIELDS = frozenset(_FIELDS[DeviceState])
_STATE_ALIASES = {
    "ts": "ts_ms",
    "timestamp": "ts_ms",
    "time": "ts_ms",
    "type": "kind",
    "event": "kind",
}


def _missing_messages(aliases: Mapping[str, str]) -> dict[str, str]:
    by_field: dict[str, list[str]] = {}
    for alias, canonical in aliases.items():
        by_field.setdefault(canonical, []).append(alias)
    return {
        canonical: f"missing field '{canonical}' (or {', '.join(names)})"
        for canonical, names in by_field.items()
    }


_PING_MISSING = _missing_messages(_PING_ALIASES)
_STATE_MISSING = _missing_messages(_STATE_ALIASES)
_PROVIDER_CHOICES = ", ".join(sorted(PROVIDERS))
_KIND_CHOICES = ", ".join(sorted(DEVICE_STATE_KINDS))


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _canonical(record: dict[str, Any], aliases: Mapping[str, str]) -> dict[str, Any]:
    """Aliases renamed to canonical keys (slow path: the record uses a non-canonical key)."""
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key, value in record.items():
        name = aliases.get(key, key)
        if name in out:
            raise _Reject(f"field '{name}' given twice (as '{source[name]}' and '{key}')")
        out[name] = value
        source[name] = key
    return out


def _check_identity(record: Mapping[str, Any], org_id: str, device_id: str) -> None:
    body_device = record.get("device_id")
    if body_device is not None and body_device != device_id and body_device != "":
        if type(body_device) is not str:
            raise _Reject(f"device_id must be a string, got {_json_type(body_device)}")
        raise _Reject(
            f"device_id {body_device!r} does not match the authenticated device {device_id!r}"
        )
    body_org = record.get("org_id")
    if body_org is not None and body_org != org_id and body_org != "":
        if type(body_org) is not str:
            raise _Reject(f"org_id must be a string, got {_json_type(body_org)}")
        raise _Reject(f"org_id {body_org!r} does not match the authenticated org {org_id!r}")


def _number(record: Mapping[str, Any], key: str, missing: Mapping[str, str]) -> float:
    value = record.get(key, _MISSING)
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # false for nan and +-inf
            return value  # type: ignore[no-any-return]
        raise _Reject(f"{key} must be a finite number, got {value!r}")
    if kind is int:
        return _int_to_float(key, value)
    if value is _MISSING:
        raise _Reject(missing.get(key) or f"missing field '{key}'")
    raise _Reject(f"{key} must be a number, got {_json_type(value)}")


def _optional_number(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    kind = type(value)
    if kind is float:
        if value - value == 0.0:
            return value  # type: ignore[no-any-return]
        raise _Reject(f"{key} must be a finite number, got {value!r}")
    if kind is int:
        return _int_to_float(key, value)
    raise _Reject(f"{key} must be a number or null, got {_json_type(value)}")


def _int_to_float(key: str, value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise _Reject(
            f"{key} must be a finite number, got an integer too large for a double"
        ) from None


def _timestamp(record: Mapping[str, Any], missing: Mapping[str, str]) -> int:
    value = record.get("ts_ms", _MISSING)
    kind = type(value)
    if kind is int:
        ms = value * 1000 if -SECONDS_LIMIT < value < SECONDS_LIMIT else value
    elif kind is float:
        if value - value != 0.0:
            raise _Reject(f"ts_ms must be a finite number, got {value!r}")
        ms = round(value * 1000.0) if -SECONDS_LIMIT < value < SECONDS_LIMIT else round(value)
    elif kind is str:
        ms = _iso_ms(value)
    elif value is _MISSING:
        raise _Reject(missing["ts_ms"])
    else:
        raise _Reject(
            "ts_ms must be epoch milliseconds, epoch seconds or an ISO-8601 string, "
            f"got {_json_type(value)}"
        )
    if not _LONG_MIN <= ms <= _LONG_MAX:
        raise _Reject(f"ts_ms {value!r} does not fit a 64-bit integer of milliseconds")
    return ms  # type: ignore[no-any-return]


def _iso_ms(text: str) -> int:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _Reject(f"ts_ms string is not an ISO-8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise _Reject(f"ts_ms ISO-8601 time has no zone: {text!r} (add Z or +hh:mm)")
    return (moment - _EPOCH) // _ONE_MS


def _sequence(value: Any) -> int:
    kind = type(value)
    if kind is not int:
        if kind is float and value.is_integer():
            value = int(value)
        elif kind is float:
            raise _Reject(f"seq must be an integer, got {value!r}")
        else:
            raise _Reject(f"seq must be an integer, got {_json_type(value)}")
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise _Reject(f"seq {value} does not fit a 64-bit integer")
    return value  # type: ignore[no-any-return]


def _provider(value: Any) -> str:
    if type(value) is str:
        lowered = value.lower()
        if lowered in PROVIDERS:
            return lowered
        raise _Reject(f"provider must be one of {_PROVIDER_CHOICES}, got {value!r}")
    raise _Reject(f"provider must be a string, got {_json_type(value)}")


def _ping_from_json(record: Any, org_id: str, device_id: str, received_ms: int) -> Ping:
    if type(record) is not dict:
        raise _Reject(f"record must be a JSON object, got {_json_type(record)}")
    if not record.keys() <= _PING_FIELDS:
        record = _canonical(record, _PING_ALIASES)
    _check_identity(record, org_id, device_id)
    ts_ms = _timestamp(record, _PING_MISSING)
    lat = _number(record, "lat", _PING_MISSING)
    lon = _number(record, "lon", _PING_MISSING)
    accuracy_m = _number(record, "accuracy_m", _PING_MISSING)
    seq = record.get("seq")
    seq = 0 if seq is None else _sequence(seq)
    provider = record.get("provider")
    if provider is None:
        provider = "gps"
    elif provider not in PROVIDERS:
        provider = _provider(provider)
    is_mock = record.get("is_mock")
    if is_mock is None:
        is_mock = False
    elif type(is_mock) is not bool:
        raise _Reject(f"is_mock must be a boolean, got {_json_type(is_mock)}")
    return Ping(
        org_id,
        device_id,
        seq,
        ts_ms,
        lat,
        lon,
        accuracy_m,
        _optional_number(record, "speed_mps"),
        _optional_number(record, "bearing_deg"),
        _optional_number(record, "altitude_m"),
        provider,
        is_mock,
        _optional_number(record, "battery_pct"),
        received_ms,
    )


def _state_from_json(record: Any, org_id: str, device_id: str, received_ms: int) -> DeviceState:
    if type(record) is not dict:
        raise _Reject(f"record must be a JSON object, got {_json_type(record)}")
    if not record.keys() <= _STATE_FIELDS:
        record = _canonical(record, _STATE_ALIASES)
    _check_identity(record, org_id, device_id)
    ts_ms = _timestamp(record, _STATE_MISSING)
    kind = record.get("kind", _MISSING)
    if kind not in DEVICE_STATE_KINDS:
        if kind is _MISSING or kind is None:
            raise _Reject(_STATE_MISSING["kind"])
        if type(kind) is not str:
            raise _Reject(f"kind must be a string, got {_json_type(kind)}")
        if kind.lower() not in DEVICE_STATE_KINDS:
            raise _Reject(f"kind must be one of {_KIND_CHOICES}, got {kind!r}")
        kind = kind.lower()
    detail = record.get("detail")
    if detail is not None and type(detail) is not str:
        raise _Reject(f"detail must be a string or null, got {_json_type(detail)}")
    return DeviceState(org_id, device_id, ts_ms, kind, detail, received_ms)


def _raw_json(record: Any) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _body_items(
    body: bytes | bytearray | memoryview | str, wrapper: str, org_id: str, device_id: str
) -> list[Any]:
    """The record list of a JSON request body, or BodyError."""
    if isinstance(body, str):
        text = body
    else:
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyError(f"body is not UTF-8: {exc}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    if type(document) is list:
        return document
    if type(document) is dict:
        if wrapper not in document:
            return [document]
        items = document[wrapper]
        if type(items) is not list:
            raise BodyError(f"'{wrapper}' must be an array, got {_json_type(items)}")
        try:
            _check_identity(document, org_id, device_id)
        except _Reject as exc:
            raise BodyError(exc.reason) from None
        return items
    raise BodyError(f"body must be a JSON array or object, got {_json_type(document)}")


def decode_pings_json(
    body: bytes | str, *, org_id: str, device_id: str, received_ms: int
) -> tuple[list[Ping], list[RecordError]]:
    """Pings of a `POST /v1/pings` JSON body, and the records that were rejected."""
    pings: list[Ping] = []
    errors: list[RecordError] = []
    append = pings.append
    for index, record in enumerate(_body_items(body, "pings", org_id, device_id)):
        try:
            append(_ping_from_json(record, org_id, device_id, received_ms))
        except _Reject as exc:
            errors.append(RecordError(index, exc.reason, _raw_json(record)))
    return pings, errors


def decode_states_json(
    body: bytes | str, *, org_id: str, device_id: str, received_ms: int
) -> tuple[list[DeviceState], list[RecordError]]:
    """Device states of a `POST /v1/device-states` JSON body, and the rejected records."""
    states: list[DeviceState] = []
    errors: list[RecordError] = []
    for index, record in enumerate(_body_items(body, "states", org_id, device_id)):
        try:
            states.append(_state_from_json(record, org_id, device_id, received_ms))
        except _Reject as exc:
            errors.append(RecordError(index, exc.reason, _raw_json(record)))
    return states, errors


def _avro_body(
    body: bytes, batch_name: str, item_name: str, items_key: str, org_id: str, device_id: str
) -> list[dict[str, Any]]:
    try:
        name, record = decode_avro(body)
    except CodecError as exc:
        raise BodyError(str(exc)) from None
    if name == item_name:
        return [record]
    if name != batch_name:
        raise BodyError(f"expected a {batch_name} or {item_name} body, got {name}")
    try:
        _check_identity(record, org_id, device_id)
    except _Reject as exc:
        raise BodyError(exc.reason) from None
    return record[items_key]  # type: ignore[no-any-return]


def decode_pings_avro(
    body: bytes, *, org_id: str, device_id: str, received_ms: int
) -> tuple[list[Ping], list[RecordError]]:
    """Pings of a wire-format PingBatch (or single Ping) request body."""
    pings: list[Ping] = []
    errors: list[RecordError] = []
    for index, record in enumerate(_avro_body(body, PING_BATCH, PING, "pings", org_id, device_id)):
        try:
            _check_identity(record, org_id, device_id)
            pings.append(
                Ping(
                    org_id,
                    device_id,
                    record["seq"],
                    record["ts_ms"],
                    _number(record, "lat", _PING_MISSING),
                    _number(record, "lon", _PING_MISSING),
                    _number(record, "accuracy_m", _PING_MISSING),
                    _optional_number(record, "speed_mps"),
                    _optional_number(record, "bearing_deg"),
                    _optional_number(record, "altitude_m"),
                    record["provider"],
                    record["is_mock"],
                    _optional_number(record, "battery_pct"),
                    received_ms,
                )
            )
        except _Reject as exc:
            errors.append(RecordError(index, exc.reason, _raw_json(record)))
    return pings, errors


def decode_states_avro(
    body: bytes, *, org_id: str, device_id: str, received_ms: int
) -> tuple[list[DeviceState], list[RecordError]]:
    """Device states of a wire-format DeviceStateBatch (or single DeviceState) request body."""
    states: list[DeviceState] = []
    errors: list[RecordError] = []
    items = _avro_body(body, DEVICE_STATE_BATCH, DEVICE_STATE, "states", org_id, device_id)
    for index, record in enumerate(items):
        try:
            _check_identity(record, org_id, device_id)
            states.append(
                DeviceState(
                    org_id,
                    device_id,
                    record["ts_ms"],
                    record["kind"],
                    record["detail"],
                    received_ms,
                )
            )
        except _Reject as exc:
            errors.append(RecordError(index, exc.reason, _raw_json(record)))
    return states, errors
