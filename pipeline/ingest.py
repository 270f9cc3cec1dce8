"""The ingest edge shared by the HTTP gateway and `fieldtrack replay`: screen decoded records
(static validation, privacy) into a device batch plus dead letters, then hand them to an
`IngestSink` that makes them durable (embedded: the store's raw tables; Kafka: the broker).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pipeline import codec
from pipeline.codec import RecordError
from pipeline.devices import DeviceInfo
from pipeline.events import DeadLetter, DeviceState, Ping, make_id
from pipeline.processors.privacy import inside_work_hours
from pipeline.processors.validate import Validator, ping_payload
from pipeline.topology import DeviceBatch


class IngestUnavailable(RuntimeError):
    """The durable layer (store or broker) did not take the records: answer 503, retry later."""


class IngestSink(Protocol):
    async def ingest(
        self, batch: DeviceBatch, dead_letters: list[DeadLetter], accepted_at: float
    ) -> None:
        """Return only once every record is durable; raise IngestUnavailable otherwise."""
        ...


@dataclass(slots=True)
class Rejection:
    index: int
    reason: str


@dataclass(slots=True)
class Screened:
    batch: DeviceBatch
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    outside_hours: int = 0


def dead_letter(
    device: DeviceInfo, received_ms: int, source: str, reason: str, payload: bytes, index: int = 0
) -> DeadLetter:
    return DeadLetter(
        id=make_id(device.org_id, device.device_id, "dead", received_ms, index, reason, payload),
        org_id=device.org_id,
        device_id=device.device_id,
        received_ms=received_ms,
        source=source,
        reason=reason,
        payload=payload,
    )


class Screener:
    """Per-record checks at the edge, so a phone learns at once which records were bad."""

    def __init__(self, validator: Validator, *, privacy: bool = True) -> None:
        self.validator = validator
        self.privacy = privacy

    def screen(
        self,
        device: DeviceInfo,
        received_ms: int,
        pings: list[Ping],
        states: list[DeviceState],
        decode_errors: list[RecordError],
        source: str = "gateway",
    ) -> Screened:
        """Decoded records in request order (a request holds pings or states) plus the decode
        errors; a rejection names the record's index in the request."""
        bad = {e.index for e in decode_errors}
        good = [i for i in range(len(pings) + len(states) + len(bad)) if i not in bad]
        indexed_pings = list(zip(good, pings, strict=False))
        indexed_states = list(zip(good, states, strict=False))
        out = Screened(DeviceBatch(device.org_id, device.device_id, received_ms=received_ms))
        for err in decode_errors:
            out.rejected.append(Rejection(err.index, err.reason))
            out.dead_letters.append(
                dead_letter(device, received_ms, source, err.reason, err.raw, err.index)
            )
        future_ms = received_ms + int(self.validator.params.max_future_s * 1000)
        for index, ping in indexed_pings:
            reason = self.validator.check(ping, received_ms)
            if reason:
                if ping.ts_ms > future_ms:
                    out.batch.future_pings.append(ping)
                out.rejected.append(Rejection(index, reason))
                out.dead_letters.append(
                    dead_letter(device, received_ms, source, reason, ping_payload(ping), index)
                )
            elif self.privacy and not inside_work_hours(ping.ts_ms, device.schedule):
                out.outside_hours += 1  # privacy: never stored, only counted
            else:
                out.batch.pings.append(ping)
        for index, state in indexed_states:
            reason = self.validator.check_state(state, received_ms)
            if reason:
                payload = json.dumps(asdict(state), separators=(",", ":")).encode()
                out.rejected.append(Rejection(index, reason))
                out.dead_letters.append(
                    dead_letter(device, received_ms, source, reason, payload, index)
                )
            else:
                out.batch.states.append(state)
        out.rejected.sort(key=lambda r: r.index)
        return out

    def screen_json(
        self,
        device: DeviceInfo,
        received_ms: int,
        endpoint: str,
        records: list[dict[str, Any]],
        source: str,
    ) -> Screened:
        """Records in the gateway's JSON format, as `POST /v1/<endpoint>` would get them (for
        drivers that read files or simulations instead of HTTP)."""
        body = json.dumps(records).encode()
        ids = {"org_id": device.org_id, "device_id": device.device_id, "received_ms": received_ms}
        if endpoint == "pings":
            pings, errors = codec.decode_pings_json(body, **ids)
            return self.screen(device, received_ms, pings, [], errors, source)
        states, errors = codec.decode_states_json(body, **ids)
        return self.screen(device, received_ms, [], states, errors, source)
