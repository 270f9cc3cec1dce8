"""The codec: Avro wire format, batches, phone JSON and Avro bodies, JSON output."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import fastavro
import pytest

from pipeline import codec
from pipeline.codec import BodyError, CodecError, RecordError
from pipeline.events import (
    Alert,
    DeadLetter,
    DeviceState,
    Dwell,
    FenceEvent,
    Ping,
    TrackPoint,
    Visit,
)

ORG, DEV, RECEIVED = "acme", "phone-1", 1_700_000_100_000
IDS = {"org_id": ORG, "device_id": DEV, "received_ms": RECEIVED}
T0 = 1_700_000_000_000

FULL_PING = Ping(ORG, DEV, 7, T0, 52.1, 4.3, 6.5, 1.2, 90.0, 3.0, "fused", True, 77.0, RECEIVED)
BARE_PING = Ping(ORG, DEV, 8, T0 + 5000, -33.9, 151.2, 20.0, received_ms=RECEIVED)
EVENTS: list[Any] = [
    FULL_PING,
    BARE_PING,
    DeviceState(ORG, DEV, T0, "gps_off", "user toggled", RECEIVED),
    DeviceState(ORG, DEV, T0, "boot"),
    TrackPoint(ORG, DEV, 7, T0, 52.1, 4.3, 52.10001, 4.30001, 6.5, 1.1, 88.0, True, 5.5, 4 | 32),
    Dwell("d1", ORG, DEV, T0, T0 + 600_000, 52.1, 4.3, 25.0, 120, "open"),
    Dwell("d1", ORG, DEV, T0, T0 + 900_000, 52.1, 4.3, 25.0, 180, "closed", "moved", "c9", 2),
    Visit("v1", ORG, DEV, "c9", "d1", T0, T0 + 900_000, 15.0, 12.5, "A"),
    Visit("v2", ORG, DEV, "c9", "d1", T0, T0 + 900_000, 15.0, 12.5),
    FenceEvent("f1", ORG, DEV, "office", "office", "enter", T0, 52.1, 4.3, 8.0),
    Alert("a1", ORG, DEV, T0, "spoof_teleport", "critical", "jumped 40 km", {"km": "40"}),
    Alert("a2", ORG, DEV, T0, "lost_contact", "warning", "silent"),
    DeadLetter("x1", ORG, DEV, RECEIVED, "gateway", "not JSON", b"\x00\xffgarbage"),
    DeadLetter("x2", ORG, DEV, RECEIVED, "validate", "lat out of range"),
]
EVENT_IDS = [f"{type(e).__name__}-{i}" for i, e in enumerate(EVENTS)]


def pings_json(body: Any) -> tuple[list[Ping], list[RecordError]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return codec.decode_pings_json(raw, **IDS)


def states_json(body: Any) -> tuple[list[DeviceState], list[RecordError]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return codec.decode_states_json(raw, **IDS)


def one_ping(**fields: Any) -> Ping:
    pings, errors = pings_json([fields])
    assert errors == []
    return pings[0]


def one_error(record: Any) -> str:
    pings, errors = pings_json([record])
    assert pings == []
    assert [e.index for e in errors] == [0]
    return errors[0].reason


BASE = {"seq": 1, "ts_ms": T0, "lat": 52.1, "lon": 4.3, "accuracy_m": 5.0}


# ---------------------------------------------------------------------------------------------
# Avro


@pytest.mark.parametrize("event", EVENTS, ids=EVENT_IDS)
def test_avro_round_trip_every_record_type(event: Any) -> None:
    data = codec.encode_avro(codec.record_name(event), event)
    name, record = codec.decode_avro(data)
    assert name == codec.record_name(event)
    assert codec.from_record(name, record) == event


def test_wire_header_is_magic_zero_and_big_endian_newest_schema_id() -> None:
    registry = json.loads((codec.SCHEMA_DIR / "registry.json").read_text())
    newest_ping_id = registry["io.fieldtrack.Ping"][
        str(max(map(int, registry["io.fieldtrack.Ping"])))
    ]
    data = codec.encode_avro("Ping", FULL_PING)
    assert data[:5] == bytes([0]) + newest_ping_id.to_bytes(4, "big")
    assert data[:5] == b"\x00\x00\x00\x00\x0b"  # Ping v2 is id 11
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body, codec.schema_set().by_name("Ping").parsed, codec.to_record(FULL_PING)
    )
    assert data[5:] == body.getvalue()
    # Short and full names, dataclass and dict all encode alike.
    assert codec.encode_avro("io.fieldtrack.Ping", codec.to_record(FULL_PING)) == data


def test_decode_errors_are_clear() -> None:
    good = codec.encode_avro("Ping", FULL_PING)
    with pytest.raises(CodecError, match=r"magic byte is 0x01, expected 0x00"):
        codec.decode_avro(b"\x01" + good[1:])
    with pytest.raises(CodecError, match=r"unknown schema id 999 \(known: 1, 2, "):
        codec.decode_avro(b"\x00" + (999).to_bytes(4, "big") + good[5:])
    with pytest.raises(CodecError, match="shorter than the 5-byte header"):
        codec.decode_avro(b"\x00\x00")
    with pytest.raises(CodecError, match=r"corrupt Avro body for io\.fieldtrack\.Ping v2"):
        codec.decode_avro(good[:-6])
    with pytest.raises(CodecError, match="3 trailing bytes"):
        codec.decode_avro(good + b"abc")
    with pytest.raises(CodecError, match="no schema for record 'Nope'"):
        codec.encode_avro("Nope", {})
    with pytest.raises(CodecError, match=r"cannot encode io\.fieldtrack\.Ping"):
        codec.encode_avro("Ping", {"org_id": ORG})


def test_old_ping_version_is_read_through_the_newest_reader() -> None:
    v1 = codec.schema_set().history("Ping")[0]
    assert v1.version == 1 and v1.schema_id == 1
    buf = io.BytesIO()
    buf.write(b"\x00\x00\x00\x00\x01")
    fastavro.schemaless_writer(buf, v1.parsed, codec.to_record(FULL_PING))
    name, record = codec.decode_avro(buf.getvalue())
    assert name == "io.fieldtrack.Ping"
    assert record["satellites"] is None and record["activity"] is None
    assert codec.from_record(name, record) == FULL_PING


def test_old_ping_batch_version_decodes_to_pings() -> None:
    v1 = codec.schema_set().history("PingBatch")[0]
    batch = {
        "org_id": ORG,
        "device_id": DEV,
        "received_ms": RECEIVED,
        "pings": [codec.to_record(FULL_PING), codec.to_record(BARE_PING)],
    }
    buf = io.BytesIO()
    buf.write(v1.header)
    fastavro.schemaless_writer(buf, v1.parsed, batch)
    assert codec.decode_ping_batch(buf.getvalue()) == (ORG, DEV, RECEIVED, [FULL_PING, BARE_PING])


def test_v2_fields_survive_on_the_wire_and_drop_into_the_dataclass() -> None:
    record = {**codec.to_record(FULL_PING), "satellites": 9, "activity": "in_vehicle"}
    name, back = codec.decode_avro(codec.encode_avro("Ping", record))
    assert (back["satellites"], back["activity"]) == (9, "in_vehicle")
    assert codec.from_record(name, back) == FULL_PING


def test_batch_helpers_round_trip() -> None:
    data = codec.encode_ping_batch(ORG, DEV, RECEIVED, [FULL_PING, BARE_PING])
    assert data[:5] == b"\x00\x00\x00\x00\x0e"  # PingBatch v3 is id 14
    assert codec.decode_ping_batch(data) == (ORG, DEV, RECEIVED, [FULL_PING, BARE_PING])
    assert codec.decode_ping_batch(codec.encode_ping_batch(ORG, DEV, 0, [])) == (ORG, DEV, 0, [])
    states = [DeviceState(ORG, DEV, T0, "app_killed"), DeviceState(ORG, DEV, T0 + 1, "boot", "x")]
    data = codec.encode_device_state_batch(ORG, DEV, RECEIVED, states)
    assert codec.decode_device_state_batch(data) == (ORG, DEV, RECEIVED, states)
    with pytest.raises(CodecError, match=r"expected a io\.fieldtrack\.PingBatch"):
        codec.decode_ping_batch(data)
    with pytest.raises(CodecError, match=r"expected a io\.fieldtrack\.DeviceStateBatch"):
        codec.decode_device_state_batch(codec.encode_avro("Ping", FULL_PING))


# ---------------------------------------------------------------------------------------------
# JSON output


@pytest.mark.parametrize("event", EVENTS, ids=EVENT_IDS)
def test_json_round_trip_every_record_type(event: Any) -> None:
    text = json.dumps(codec.to_json(event), allow_nan=False)
    assert codec.from_json(codec.record_name(event), json.loads(text)) == event


def test_to_json_details() -> None:
    letter = codec.to_json(EVENTS[-2])
    assert letter["payload"] == base64.b64encode(b"\x00\xffgarbage").decode()
    point = EVENTS[4]
    assert codec.to_json(point)["id"] == point.id
    assert codec.to_json(EVENTS[10])["evidence"] == {"km": "40"}
    with pytest.raises(TypeError):
        codec.to_json(object())


@pytest.mark.parametrize("ping", [FULL_PING, BARE_PING], ids=["full", "bare"])
def test_ping_to_json_is_accepted_as_phone_input(ping: Ping) -> None:
    assert pings_json([codec.to_json(ping)]) == ([ping], [])


def test_state_to_json_is_accepted_as_phone_input() -> None:
    state = DeviceState(ORG, DEV, T0, "permission_revoked", "ACCESS_FINE_LOCATION", RECEIVED)
    assert states_json({"states": [codec.to_json(state)]}) == ([state], [])


# ---------------------------------------------------------------------------------------------
# JSON from phones: body shapes


def test_body_shapes_array_single_object_and_wrapper() -> None:
    expected = Ping(ORG, DEV, 1, T0, 52.1, 4.3, 5.0, received_ms=RECEIVED)
    assert pings_json([BASE]) == ([expected], [])
    assert pings_json(BASE) == ([expected], [])
    assert pings_json({"pings": [BASE], "device_id": DEV}) == ([expected], [])
    assert pings_json([]) == ([], [])
    assert codec.decode_pings_json(json.dumps([BASE]), **IDS) == ([expected], [])  # str body
    assert pings_json(b"\xef\xbb\xbf" + json.dumps([BASE]).encode()) == ([expected], [])  # BOM


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"", "body is not valid JSON"),
        (b"[{]", "body is not valid JSON"),
        (b"\xff\xfe[]", "body is not UTF-8"),
        (b'"hello"', "body must be a JSON array or object, got string"),
        (b"42", "body must be a JSON array or object, got number"),
        (b"null", "body must be a JSON array or object, got null"),
        (b'{"pings": {"lat": 1}}', "'pings' must be an array, got object"),
        (b"[" * 100_000, "body is not valid JSON"),
        (
            b'{"device_id": "other", "pings": []}',
            "device_id 'other' does not match the authenticated device 'phone-1'",
        ),
    ],
)
def test_malformed_bodies_raise_body_error(body: bytes, reason: str) -> None:
    with pytest.raises(BodyError) as info:
        codec.decode_pings_json(body, **IDS)
    assert info.value.reason.startswith(reason)


def test_bad_records_are_reported_and_good_ones_kept() -> None:
    body = [BASE, {**BASE, "lat": "52.1"}, "not a record", {**BASE, "seq": 3}, {"lat": 1}]
    raw = json.dumps(body).encode()
    pings, errors = codec.decode_pings_json(raw, **IDS)
    assert [p.seq for p in pings] == [1, 3]
    assert errors == [
        RecordError(
            1,
            "lat must be a number, got string",
            json.dumps(body[1], separators=(",", ":")).encode(),
        ),
        RecordError(2, "record must be a JSON object, got string", b'"not a record"'),
        RecordError(4, "missing field 'ts_ms' (or ts, timestamp, time)", b'{"lat":1}'),
    ]


# ---------------------------------------------------------------------------------------------
# JSON from phones: fields


def test_aliases() -> None:
    ping = one_ping(
        seq=1,
        ts=T0,
        latitude=52.1,
        lng=4.3,
        acc=5,
        speed=1.5,
        heading=270,
        alt=12,
        batt=55,
        mock=True,
    )
    assert ping == Ping(
        ORG, DEV, 1, T0, 52.1, 4.3, 5.0, 1.5, 270.0, 12.0, "gps", True, 55.0, RECEIVED
    )
    assert isinstance(ping.accuracy_m, float) and isinstance(ping.bearing_deg, float)
    other = one_ping(timestamp=T0, lat=1, longitude=2, accuracy=3, bearing=4, altitude=5, battery=6)
    assert (other.lon, other.accuracy_m, other.bearing_deg, other.altitude_m) == (
        2.0,
        3.0,
        4.0,
        5.0,
    )
    assert other.battery_pct == 6.0
    assert one_ping(time=T0, lat=1, lon=2, accuracy_m=3).ts_ms == T0
    assert one_error({**BASE, "ts": T0}) == "field 'ts_ms' given twice (as 'ts_ms' and 'ts')"


@pytest.mark.parametrize(
    "value,expected_ms",
    [
        (T0, T0),
        (1_700_000_000, T0),  # epoch seconds
        (1_700_000_000.25, T0 + 250),  # fractional seconds
        (1.7e12, T0),  # float milliseconds
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T22:13:20.123Z", T0 + 123),
        ("2023-11-15T00:13:20.5+02:00", T0 + 500),
        ("2023-11-14T22:13:20.123999+00:00", T0 + 123),  # sub-ms truncated
    ],
)
def test_timestamps(value: Any, expected_ms: int) -> None:
    assert one_ping(ts=value, lat=1, lon=2, acc=3).ts_ms == expected_ms


@pytest.mark.parametrize(
    "value,reason",
    [
        ("2023-11-14T22:13:20", "ts_ms ISO-8601 time has no zone: '2023-11-14T22:13:20'"),
        ("yesterday", "ts_ms string is not an ISO-8601 time: 'yesterday'"),
        (
            True,
            "ts_ms must be epoch milliseconds, epoch seconds or an ISO-8601 string, got boolean",
        ),
        (None, "ts_ms must be epoch milliseconds, epoch seconds or an ISO-8601 string, got null"),
        (10**30, "ts_ms 1000000000000000000000000000000 does not fit a 64-bit integer"),
    ],
)
def test_bad_timestamps(value: Any, reason: str) -> None:
    assert one_error({**BASE, "ts_ms": value}).startswith(reason)


def test_booleans_and_strings_are_not_numbers() -> None:
    assert one_error({**BASE, "lat": True}) == "lat must be a number, got boolean"
    assert one_error({**BASE, "accuracy_m": False}) == "accuracy_m must be a number, got boolean"
    assert (
        one_error({**BASE, "speed_mps": True}) == "speed_mps must be a number or null, got boolean"
    )
    assert one_error({**BASE, "lon": "4.3"}) == "lon must be a number, got string"
    assert one_error({**BASE, "lon": None}) == "lon must be a number, got null"
    assert (
        one_error({**BASE, "battery_pct": [1]}) == "battery_pct must be a number or null, got array"
    )
    assert one_error({**BASE, "seq": True}) == "seq must be an integer, got boolean"
    assert one_error({**BASE, "is_mock": 1}) == "is_mock must be a boolean, got number"


def test_non_finite_numbers_are_rejected_per_record() -> None:
    body = (
        b'[{"ts_ms": 1700000000000, "lat": NaN, "lon": 1, "accuracy_m": 1},'
        b' {"ts_ms": 1700000000000, "lat": 1, "lon": -Infinity, "accuracy_m": 1},'
        b' {"ts_ms": 1700000000000, "lat": 1, "lon": 1, "accuracy_m": 1e999},'
        b' {"ts_ms": 1700000000000, "lat": 1, "lon": 1, "accuracy_m": 1, "speed_mps": Infinity},'
        b' {"ts_ms": 1e999, "lat": 1, "lon": 1, "accuracy_m": 1},'
        b' {"ts_ms": 1700000000000, "lat": 1, "lon": 1, "accuracy_m": 1}]'
    )
    pings, errors = pings_json(body)
    assert len(pings) == 1
    assert [e.reason for e in errors] == [
        "lat must be a finite number, got nan",
        "lon must be a finite number, got -inf",
        "accuracy_m must be a finite number, got inf",
        "speed_mps must be a finite number, got inf",
        "ts_ms must be a finite number, got inf",
    ]
    assert errors[0].raw.startswith(b'{"ts_ms":1700000000000,"lat":NaN')
    huge = {**BASE, "lat": 10**400}
    assert one_error(huge) == "lat must be a finite number, got an integer too large for a double"


def test_seq_missing_is_zero_and_must_be_integral() -> None:
    first = one_ping(ts=1_700_000_000, lat=1, lon=2, acc=3)
    assert first.seq == 0 and first.ts_ms == T0
    assert one_ping(ts=1_700_000_000, lat=1, lon=2, acc=3) == first  # a retry: same seq
    assert one_ping(**{**BASE, "seq": None}).seq == 0
    assert one_ping(**{**BASE, "seq": 12.0}).seq == 12
    assert one_error({**BASE, "seq": 1.5}) == "seq must be an integer, got 1.5"
    assert one_error({**BASE, "seq": 2**63}) == f"seq {2**63} does not fit a 64-bit integer"


def test_defaults_nulls_provider_and_unknown_fields() -> None:
    ping = one_ping(**BASE, provider=None, is_mock=None, speed_mps=None, received_ms=5)
    assert (ping.provider, ping.is_mock, ping.speed_mps, ping.received_ms) == (
        "gps",
        False,
        None,
        RECEIVED,
    )
    assert one_ping(**BASE, provider="NETWORK").provider == "network"
    assert one_error({**BASE, "provider": "passive"}) == (
        "provider must be one of fused, gps, network, got 'passive'"
    )
    assert one_error({**BASE, "provider": 1}) == "provider must be a string, got number"
    # Unknown keys (a newer app, a v2 field) are tolerated and ignored.
    assert one_ping(**BASE, satellites=9, activity="still", foo={"x": 1}) == one_ping(**BASE)


def test_device_and_org_must_match_the_token() -> None:
    assert one_ping(**BASE, device_id=DEV, org_id=ORG).device_id == DEV
    assert one_ping(**BASE, device_id="", org_id=None).device_id == DEV
    assert one_error({**BASE, "device_id": "x"}) == (
        "device_id 'x' does not match the authenticated device 'phone-1'"
    )
    assert one_error({**BASE, "org_id": "evil"}) == (
        "org_id 'evil' does not match the authenticated org 'acme'"
    )
    assert one_error({**BASE, "device_id": 5}) == "device_id must be a string, got number"


def test_states_json() -> None:
    states, errors = states_json(
        {
            "states": [
                {"ts_ms": T0, "kind": "gps_off"},
                {"ts": 1_700_000_000, "type": "APP_KILLED", "detail": "swiped away"},
                {"timestamp": "2023-11-14T22:13:20Z", "event": "boot", "device_id": DEV},
                {"ts_ms": T0, "kind": "teleported"},
                {"ts_ms": T0, "kind": "boot", "detail": 5},
                {"ts_ms": T0},
                {"ts_ms": T0, "kind": "boot", "device_id": "y"},
                {"ts_ms": T0, "kind": 3},
            ]
        }
    )
    assert states == [
        DeviceState(ORG, DEV, T0, "gps_off", None, RECEIVED),
        DeviceState(ORG, DEV, T0, "app_killed", "swiped away", RECEIVED),
        DeviceState(ORG, DEV, T0, "boot", None, RECEIVED),
    ]
    assert [(e.index, e.reason) for e in errors] == [
        (3, "kind must be one of airplane_off, airplane_on, app_killed, app_start, battery_low, "
            "boot, developer_mode_on, emulator, gps_off, gps_on, mock_app_detected, network_off, "
            "network_on, permission_granted, permission_revoked, rooted, shutdown, "
            "got 'teleported'"),
        (4, "detail must be a string or null, got number"),
        (5, "missing field 'kind' (or type, event)"),
        (6, "device_id 'y' does not match the authenticated device 'phone-1'"),
        (7, "kind must be a string, got number"),
    ]  # fmt: skip
    with pytest.raises(BodyError, match="'states' must be an array"):
        states_json({"states": None})


# ---------------------------------------------------------------------------------------------
# Avro request bodies


def test_avro_ping_bodies() -> None:
    anonymous = Ping("", "", 3, T0, 1.0, 2.0, 3.0, provider="network")
    batch = codec.encode_ping_batch(ORG, DEV, 0, [FULL_PING, anonymous])
    pings, errors = codec.decode_pings_avro(batch, **IDS)
    assert errors == []
    assert pings == [
        FULL_PING,
        Ping(ORG, DEV, 3, T0, 1.0, 2.0, 3.0, provider="network", received_ms=RECEIVED),
    ]
    single = codec.encode_avro("Ping", BARE_PING)
    assert codec.decode_pings_avro(single, **IDS) == ([BARE_PING], [])


def test_avro_ping_body_record_errors() -> None:
    stranger = Ping(ORG, "phone-2", 1, T0, 1.0, 2.0, 3.0)
    broken = Ping(ORG, DEV, 2, T0, float("nan"), 2.0, 3.0)
    body = codec.encode_ping_batch(ORG, DEV, 0, [stranger, BARE_PING, broken])
    pings, errors = codec.decode_pings_avro(body, **IDS)
    assert pings == [BARE_PING]
    assert [(e.index, e.reason) for e in errors] == [
        (0, "device_id 'phone-2' does not match the authenticated device 'phone-1'"),
        (2, "lat must be a finite number, got nan"),
    ]
    assert json.loads(errors[0].raw)["device_id"] == "phone-2"


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"", "Avro message of 0 bytes is shorter than the 5-byte header"),
        (b'[{"lat": 1}]', "not Confluent wire format: magic byte is 0x5b"),
        (b"\x00\x00\x00\x03\xe7abc", "unknown schema id 999"),
        (codec.encode_ping_batch(ORG, DEV, 0, [FULL_PING])[:-3], "corrupt Avro body"),
        (codec.encode_avro("TrackPoint", EVENTS[4]), "expected a io.fieldtrack.PingBatch or"),
        (
            codec.encode_ping_batch(ORG, "phone-9", 0, []),
            "device_id 'phone-9' does not match the authenticated device 'phone-1'",
        ),
    ],
)
def test_malformed_avro_ping_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(BodyError) as info:
        codec.decode_pings_avro(body, **IDS)
    assert info.value.reason.startswith(reason)


def test_avro_state_bodies() -> None:
    states = [DeviceState("", "", T0, "gps_on"), DeviceState(ORG, "nope", T0, "boot")]
    body = codec.encode_device_state_batch(ORG, DEV, 0, states)
    got, errors = codec.decode_states_avro(body, **IDS)
    assert got == [DeviceState(ORG, DEV, T0, "gps_on", None, RECEIVED)]
    assert [(e.index, e.reason) for e in errors] == [
        (1, "device_id 'nope' does not match the authenticated device 'phone-1'")
    ]
    single = codec.encode_avro("DeviceState", DeviceState(ORG, DEV, T0, "rooted", "magisk"))
    assert codec.decode_states_avro(single, **IDS) == (
        [DeviceState(ORG, DEV, T0, "rooted", "magisk", RECEIVED)],
        [],
    )
    with pytest.raises(BodyError, match=r"expected a io\.fieldtrack\.DeviceStateBatch"):
        codec.decode_states_avro(codec.encode_avro("Ping", FULL_PING), **IDS)


# ---------------------------------------------------------------------------------------------
# speed


def test_a_50_ping_json_batch_decodes_well_under_a_millisecond() -> None:
    records = [
        {**BASE, "seq": i, "ts_ms": T0 + i * 5000, "speed_mps": 1.0, "bearing_deg": 90.0,
         "altitude_m": 3.0, "battery_pct": 80.0, "provider": "fused", "is_mock": False}
        for i in range(50)
    ]  # fmt: skip
    body = json.dumps(records).encode()
    best = float("inf")
    for _ in range(30):
        started = time.perf_counter()
        pings, errors = codec.decode_pings_json(body, **IDS)
        best = min(best, time.perf_counter() - started)
    assert len(pings) == 50 and errors == []
    assert best < 0.002  # ~0.2 ms measured; generous for slow CI machines
