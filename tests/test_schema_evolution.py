"""The Avro schemas as a published contract: ids, docs, dataclass mirroring, and evolution.

For every record with more than one version, data written with vN-1 must be readable with vN
as the reader schema (backward compatibility, what a consumer upgraded before its producers
needs), for generated samples that cover null and non-null optionals and every enum symbol.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import json
import random
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.read import SchemaResolutionError
from fastavro.utils import generate_many

from pipeline import codec
from pipeline.codec import RECORD_TYPES, SchemaSet, SchemaVersion, schema_set

SCHEMAS = schema_set()
SCHEMA_DIR = codec.SCHEMA_DIR

# Wire-shape fingerprints (CRC-64-AVRO of the parsing canonical form) of published versions.
# A published version must never change: data written with it lives on in Kafka and files.
# Change a schema by adding a new version file (and its id in registry.json), then pin it here.
PUBLISHED = {
    ("io.fieldtrack.Alert", 1): "658cadca6e0cbd49",
    ("io.fieldtrack.DeadLetter", 1): "b3939f85829870c9",
    ("io.fieldtrack.DeviceState", 1): "84a20af88af3fe6f",
    ("io.fieldtrack.DeviceStateBatch", 1): "633ef980c68c57ae",
    ("io.fieldtrack.Dwell", 1): "2b191b7441377095",
    ("io.fieldtrack.FenceEvent", 1): "ee8cfff194dabc9e",
    ("io.fieldtrack.Ping", 1): "0751f51eb129f28d",
    ("io.fieldtrack.Ping", 2): "bff0733861f870fc",
    ("io.fieldtrack.PingBatch", 1): "890eeb9a34e17c1b",
    ("io.fieldtrack.PingBatch", 2): "7dffd4b0ab2895eb",
    ("io.fieldtrack.PingBatch", 3): "a9d9b05c0ab24870",
    ("io.fieldtrack.TrackPoint", 1): "8936500794ebd589",
    ("io.fieldtrack.TrackPointBatch", 1): "4bd7758acf4480d6",
    ("io.fieldtrack.Tick", 1): "6f0b88d8bf2b4bb3",
    ("io.fieldtrack.Visit", 1): "955bdeb1ef81f0be",
    ("io.fieldtrack.Visit", 2): "9fd7b650a90579dd",
}

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


# ---------------------------------------------------------------------------------------------
# sample data and the expected result of schema resolution


def _named_types(schema: Any, out: dict[str, Any] | None = None, ns: str = "") -> dict[str, Any]:
    """Every named type (record, enum, fixed) defined in a schema, by full name."""
    out = {} if out is None else out
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, out, ns)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            ns = schema.get("namespace", ns)
            name = schema["name"] if "." in schema["name"] else f"{ns}.{schema['name']}"
            out[name] = schema
        for field in schema.get("fields", ()):
            _named_types(field["type"], out, ns)
        for slot in ("items", "values"):
            if slot in schema:
                _named_types(schema[slot], out, ns)
        if isinstance(kind, dict | list):
            _named_types(kind, out, ns)
    return out


def _sample(schema: Any, names: dict[str, Any], fill: bool, k: int, label: str) -> Any:
    """A value of `schema`: `fill` picks the non-null branch of optionals, `k` the enum symbol."""
    if isinstance(schema, str):
        if schema in names:
            return _sample(names[schema], names, fill, k, label)
        return {
            "null": None,
            "boolean": k % 2 == 0,
            "int": 40 + k,
            "long": 1_700_000_000_000 + k,
            "float": 0.5 + k,
            "double": 1.25 + k,
            "bytes": bytes([k % 256, 1, 2]),
            "string": f"{label}-{k}",
        }[schema]
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if not fill and "null" in schema:
            return None
        return _sample(branches[k % len(branches)], names, fill, k, label)
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: _sample(f["type"], names, fill, k, f["name"]) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][k % len(schema["symbols"])]
    if kind == "array":
        # Both kinds of item in every array, so nested optionals are covered either way.
        return [_sample(schema["items"], names, f, k + i, label) for i, f in enumerate((1, 0))]
    if kind == "map":
        return {"a": _sample(schema["values"], names, fill, k, label)}
    if kind == "fixed":
        return bytes(schema["size"])
    return _sample(kind, names, fill, k, label)  # {"type": "long"} and the like


def samples(schema: dict[str, Any]) -> list[Any]:
    """Deterministic samples covering null/non-null optionals and every enum symbol, plus
    fastavro's random ones."""
    names = _named_types(schema)
    widest = max([len(t["symbols"]) for t in names.values() if t["type"] == "enum"] + [2])
    out = [_sample(schema, names, fill, k, "s") for k in range(widest) for fill in (True, False)]
    random.seed(1234)
    out.extend(generate_many(schema, 10))
    return out


def expected_after_resolution(value: Any, reader: Any, names: dict[str, Any]) -> Any:
    """What reading `value` through `reader` must give: reader-only fields take their default."""
    if isinstance(reader, str):
        if reader in names:
            return expected_after_resolution(value, names[reader], names)
        return value
    if isinstance(reader, list):
        if value is None:
            return None
        branches = [b for b in reader if b != "null"]
        return expected_after_resolution(value, branches[0], names) if len(branches) == 1 else value
    kind = reader["type"]
    if kind == "record":
        return {
            f["name"]: (
                expected_after_resolution(value[f["name"]], f["type"], names)
                if f["name"] in value
                else f["default"]
            )
            for f in reader["fields"]
        }
    if kind == "array":
        return [expected_after_resolution(v, reader["items"], names) for v in value]
    if kind == "map":
        return {k: expected_after_resolution(v, reader["values"], names) for k, v in value.items()}
    if isinstance(kind, dict | list | str) and kind not in ("enum", "fixed"):
        return expected_after_resolution(value, kind, names)
    return value


def check_backward_compatible(writer: dict[str, Any], reader: dict[str, Any]) -> list[str]:
    """Problems found reading `writer`-written samples with `reader` (empty list: compatible)."""
    writer_parsed = fastavro.parse_schema(copy.deepcopy(writer))
    reader_parsed = fastavro.parse_schema(copy.deepcopy(reader))
    reader_names = _named_types(reader)
    problems: list[str] = []
    for i, sample in enumerate(samples(writer)):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, writer_parsed, sample)
        try:
            got = fastavro.schemaless_reader(
                io.BytesIO(buf.getvalue()), writer_parsed, reader_parsed
            )
        except (SchemaResolutionError, ValueError, KeyError, IndexError, EOFError) as exc:
            problems.append(f"sample {i}: {type(exc).__name__}: {exc}")
            continue
        want = expected_after_resolution(sample, reader, reader_names)
        if got != want:
            problems.append(f"sample {i}: read {got!r}, expected {want!r}")
    return problems


def _evolving() -> Iterator[tuple[SchemaVersion, SchemaVersion]]:
    for name in sorted(SCHEMAS.latest):
        history = SCHEMAS.history(name)
        yield from itertools.pairwise(history)


PAIRS = list(_evolving())


# ---------------------------------------------------------------------------------------------
# registry and files


def test_registry_ids_unique_and_every_file_listed() -> None:
    registry = json.loads((SCHEMA_DIR / "registry.json").read_text())
    ids = [schema_id for versions in registry.values() for schema_id in versions.values()]
    assert len(ids) == len(set(ids)), "schema ids must be unique, never reused"
    assert all(isinstance(i, int) and 0 < i < 2**31 for i in ids)
    listed = {(name, int(v)) for name, versions in registry.items() for v in versions}
    files = {}
    for path in SCHEMA_DIR.glob("*.avsc"):
        schema = json.loads(path.read_text())
        files[(f"{schema['namespace']}.{schema['name']}", int(path.name.split(".v")[1][:-5]))] = (
            path.name
        )
    assert set(files) == listed, f"files vs registry.json: {set(files) ^ listed}"
    for (name, version), file in files.items():
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name.rsplit(".", 1)[1]).lower()
        assert file == f"{snake}.v{version}.avsc"


def test_versions_are_contiguous_and_pinned() -> None:
    for name in SCHEMAS.latest:
        versions = [sv.version for sv in SCHEMAS.history(name)]
        assert versions == list(range(1, len(versions) + 1)), name
    for key, sv in SCHEMAS.versions.items():
        assert key in PUBLISHED, f"{sv.file} is new: pin its fingerprint {sv.fingerprint!r}"
        assert sv.fingerprint == PUBLISHED[key], (
            f"{sv.file} changed after publication: add a new version instead of editing it"
        )


def test_schema_set_rejects_an_unlisted_or_duplicate_file(tmp_path: Path) -> None:
    for path in SCHEMA_DIR.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "ping.v3.avsc").write_text((SCHEMA_DIR / "ping.v2.avsc").read_text())
    with pytest.raises(codec.CodecError, match=r"not listed in registry\.json"):
        SchemaSet(tmp_path)
    registry = json.loads((SCHEMA_DIR / "registry.json").read_text())
    registry["io.fieldtrack.Ping"]["3"] = registry["io.fieldtrack.Alert"]["1"]
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    with pytest.raises(codec.CodecError, match="used twice"):
        SchemaSet(tmp_path)


def test_every_field_and_type_has_a_doc_and_every_record_its_device() -> None:
    for sv in SCHEMAS.versions.values():
        source = json.loads((SCHEMA_DIR / sv.file).read_text())
        assert source.get("doc"), sv.file
        assert source["namespace"] == "io.fieldtrack"
        field_names = [f["name"] for f in source["fields"]]
        assert {"org_id", "device_id"} <= set(field_names), sv.file
        for named in _named_types(sv.schema).values():
            assert named.get("doc"), f"{sv.file}: {named['name']} has no doc"
            for field in named.get("fields", ()):
                assert field.get("doc"), f"{sv.file}: field {field['name']} has no doc"


# ---------------------------------------------------------------------------------------------
# the schemas mirror the dataclasses


def _avro_type_for(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return ["null", _avro_type_for(inner)]
    if origin is dict:
        return {"type": "map", "values": "string"}
    return {str: "string", int: ("long", "int"), float: "double", bool: "boolean", bytes: "bytes"}[
        hint
    ]


def _matches(avro_type: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):
        return avro_type in expected
    if isinstance(expected, list):
        return isinstance(avro_type, list) and all(
            _matches(a, e) for a, e in zip(avro_type, expected, strict=True)
        )
    if isinstance(avro_type, dict) and avro_type.get("type") == "enum":
        return expected == "string"  # str fields holding an Enum's value
    if isinstance(expected, dict):
        return isinstance(avro_type, dict) and all(
            avro_type.get(k) == v for k, v in expected.items()
        )
    return bool(avro_type == expected)


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
def test_newest_schema_mirrors_the_dataclass(name: str) -> None:
    cls = RECORD_TYPES[name]
    hints = typing.get_type_hints(cls)
    dataclass_fields = [f.name for f in dataclasses.fields(cls)]
    for sv in SCHEMAS.history(name):
        fields = {f["name"]: f for f in sv.schema["fields"]}
        names = list(fields)
        # Same names in the same order. A later schema version may append fields (with
        # defaults); an older one may lack fields the dataclass gained later (with defaults,
        # so its data still decodes into the dataclass).
        common = min(len(names), len(dataclass_fields))
        assert names[:common] == dataclass_fields[:common], sv.file
        for extra in names[len(dataclass_fields) :]:
            assert "default" in fields[extra], f"{sv.file}: added field {extra} needs a default"
        for newer in dataclasses.fields(cls)[len(names) :]:
            assert newer.default is not dataclasses.MISSING, (
                f"{sv.file} lacks {newer.name}: the dataclass needs a default for old data"
            )
        assert sv is not SCHEMAS.history(name)[-1] or len(names) >= len(dataclass_fields), (
            f"{sv.file} is the newest version but lacks dataclass fields"
        )
        for field_name in dataclass_fields[:common]:
            assert _matches(fields[field_name]["type"], _avro_type_for(hints[field_name])), (
                f"{sv.file}: {field_name} is {fields[field_name]['type']!r}, "
                f"dataclass says {hints[field_name]}"
            )
            dc_field = next(f for f in dataclasses.fields(cls) if f.name == field_name)
            if dc_field.default is not dataclasses.MISSING:
                assert fields[field_name].get("default", "<none>") == (
                    "" if dc_field.default == b"" else dc_field.default
                ), f"{sv.file}: default of {field_name}"
    assert SCHEMAS.history("Ping")[0].schema["fields"][-1]["name"] == "received_ms"


def test_enums_carry_the_python_vocabularies() -> None:
    from pipeline.events import DEVICE_STATE_KINDS, PROVIDERS

    ping = {f["name"]: f for f in SCHEMAS.by_name("Ping").schema["fields"]}
    state = {f["name"]: f for f in SCHEMAS.by_name("DeviceState").schema["fields"]}
    assert set(ping["provider"]["type"]["symbols"]) == PROVIDERS
    assert set(state["kind"]["type"]["symbols"]) == DEVICE_STATE_KINDS


# ---------------------------------------------------------------------------------------------
# evolution


def test_there_is_something_to_evolve() -> None:
    evolved = {new.name for _, new in PAIRS}
    assert {"io.fieldtrack.Ping", "io.fieldtrack.PingBatch"} <= evolved
    assert codec.schema_set().by_name("Ping").version == 2  # the codec writes the newest


@pytest.mark.parametrize("old,new", PAIRS, ids=[f"{n.name}-v{n.version}" for _, n in PAIRS])
def test_each_version_reads_its_predecessor(old: SchemaVersion, new: SchemaVersion) -> None:
    for field in new.schema["fields"]:
        if field["name"] not in {f["name"] for f in old.schema["fields"]}:
            assert "default" in field, f"{new.file}: new field {field['name']} has no default"
    assert check_backward_compatible(old.schema, new.schema) == []


@pytest.mark.parametrize("old,new", PAIRS, ids=[f"{n.name}-v{n.version}" for _, n in PAIRS])
def test_old_versions_decode_through_the_codec(old: SchemaVersion, new: SchemaVersion) -> None:
    newest = SCHEMAS.history(new.name)[-1]  # the codec always reads through the newest
    names = _named_types(newest.schema)
    for sample in samples(old.schema)[:4]:
        buf = io.BytesIO()
        buf.write(old.header)
        fastavro.schemaless_writer(buf, old.parsed, sample)
        name, record = codec.decode_avro(buf.getvalue())
        assert name == newest.name
        assert record == expected_after_resolution(sample, newest.schema, names)


def _with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    variant = copy.deepcopy(schema)
    variant["fields"].append(field)
    return variant


@pytest.mark.parametrize("old,new", PAIRS, ids=[f"{n.name}-v{n.version}" for _, n in PAIRS])
def test_incompatible_variants_are_caught(old: SchemaVersion, new: SchemaVersion) -> None:
    # A new field without a default: old data has nothing to fill it with.
    no_default = _with_field(new.schema, {"name": "must_have", "type": "string", "doc": "x"})
    assert check_backward_compatible(old.schema, no_default)
    # A field changing to an incompatible type.
    retyped = copy.deepcopy(new.schema)
    retyped["fields"][0]["type"] = "long"  # org_id: string -> long
    assert check_backward_compatible(old.schema, retyped)


def test_dropping_an_enum_symbol_is_caught() -> None:
    old, new = SCHEMAS.history("Ping")[:2]
    narrowed = copy.deepcopy(new.schema)
    provider = next(f for f in narrowed["fields"] if f["name"] == "provider")
    provider["type"]["symbols"] = ["gps", "network"]  # samples cover "fused" too
    problems = check_backward_compatible(old.schema, narrowed)
    assert problems and any("fused" in p for p in problems)
