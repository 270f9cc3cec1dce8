"""What a Kafka record carries: Avro in the Confluent wire format (pipeline.codec).

Input records carry a device's whole upload (PingBatch, DeviceStateBatch): the per-record cost
of Kafka and Faust is paid once per batch. Track points go out as one TrackPointBatch per input
batch; the other facts (dwells, visits, fence events, alerts, dead letters) one record each,
since ops teams subscribe to them fact by fact. A Tick is a timer record in the pings topic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline import codec
from pipeline.events import Alert, DeadLetter, Dwell, FenceEvent, Visit
from pipeline.processors.base import Result
from pipeline.stream.topics import device_key
from pipeline.topology import DeviceBatch

PING_BATCH = "io.fieldtrack.PingBatch"
DEVICE_STATE_BATCH = "io.fieldtrack.DeviceStateBatch"
TRACK_POINT_BATCH = "io.fieldtrack.TrackPointBatch"
TICK = "io.fieldtrack.Tick"

# fact type -> (output topic short name, store table)
FACTS: dict[type, tuple[str, str]] = {
    Dwell: ("dwells", "dwells"),
    Visit: ("visits", "visits"),
    FenceEvent: ("fence-events", "fence_events"),
    Alert: ("alerts", "alerts"),
    DeadLetter: ("dead-letters", "dead_letters"),
}
TABLE_OF_RECORD = {name: FACTS[cls][1] for name, cls in codec.RECORD_TYPES.items() if cls in FACTS}


@dataclass(frozen=True, slots=True)
class Tick:
    now_ms: int
    final: bool = False


def encode_pings(batch: DeviceBatch) -> bytes:
    return codec.encode_avro(
        PING_BATCH,
        {
            "org_id": batch.org_id,
            "device_id": batch.device_id,
            "received_ms": batch.received_ms,
            "pings": [codec.to_record(p) for p in batch.pings],
            "future_pings": [codec.to_record(p) for p in batch.future_pings],
        },
    )


def encode_states(batch: DeviceBatch) -> bytes:
    return codec.encode_device_state_batch(
        batch.org_id, batch.device_id, batch.received_ms, batch.states
    )


def encode_tick(now_ms: int, final: bool = False) -> bytes:
    return codec.encode_avro(
        TICK, {"org_id": "", "device_id": "", "now_ms": now_ms, "final": final}
    )


def decode_input(value: bytes) -> DeviceBatch | Tick:
    name, record = codec.decode_avro(value)
    if name == TICK:
        return Tick(record["now_ms"], record["final"])
    batch = DeviceBatch(record["org_id"], record["device_id"], received_ms=record["received_ms"])
    if name == PING_BATCH:
        batch.pings = [codec.from_record("Ping", p) for p in record["pings"]]
        batch.future_pings = [codec.from_record("Ping", p) for p in record["future_pings"]]
    elif name == DEVICE_STATE_BATCH:
        batch.states = [codec.from_record("DeviceState", s) for s in record["states"]]
    else:
        raise codec.CodecError(f"not an input record: {name}")
    return batch


def encode_outputs(result: Result) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic short name, key, value) for every output of one topology call."""
    if result.track_points:
        first = result.track_points[0]
        yield (
            "track-points",
            device_key(first.org_id, first.device_id),
            codec.encode_avro(
                TRACK_POINT_BATCH,
                {
                    "org_id": first.org_id,
                    "device_id": first.device_id,
                    "points": [codec.to_record(t) for t in result.track_points],
                },
            ),
        )
    facts: list[Any] = [
        *result.dwells, *result.visits, *result.fence_events, *result.alerts,
        *result.dead_letters,
    ]  # fmt: skip
    for fact in facts:
        topic, _ = FACTS[type(fact)]
        yield (
            topic,
            device_key(fact.org_id, fact.device_id),
            codec.encode_avro(codec.record_name(fact), fact),
        )


def decode_for_store(value: bytes) -> list[tuple[str, list[Any]]]:
    """(store table, rows) from any record of an input or output topic; ticks give nothing."""
    name, record = codec.decode_avro(value)
    if name == PING_BATCH:
        return [("raw_pings", [codec.from_record("Ping", p) for p in record["pings"]])]
    if name == DEVICE_STATE_BATCH:
        states = [codec.from_record("DeviceState", s) for s in record["states"]]
        return [("device_states", states)]
    if name == TRACK_POINT_BATCH:
        return [("track_points", [codec.from_record("TrackPoint", t) for t in record["points"]])]
    if name == TICK:
        return []
    table = TABLE_OF_RECORD.get(name)
    if table is None:
        raise codec.CodecError(f"no store table for {name}")
    return [(table, [codec.from_record(name, record)])]
