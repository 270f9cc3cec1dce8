"""The ingest gateway (aiohttp): a thin edge in front of an `IngestSink`.

Routes
  POST /v1/pings           JSON array (or {"pings": [...]}) or an Avro PingBatch
  POST /v1/device-states   JSON array (or {"states": [...]}) or an Avro DeviceStateBatch
  GET|POST /osmand         Traccar Client / OsmAnd protocol (identifier = device token)
  POST /owntracks          OwnTracks HTTP mode (Basic auth, password = device token)
  GET  /healthz            liveness + what the instance serves
  GET  /metrics            Prometheus
  POST /v1/admin/query     read-only SQL for `fieldtrack query` (admin token)
  POST /v1/admin/devices   register a device, returns its token once (admin token)

Devices authenticate with `Authorization: Bearer <token>`. The answer is 202 only once the
accepted records are durable; bad records are listed with their reason (good records in the
same request are still accepted) and kept as dead letters. When the durable layer is down the
gateway answers 503 with Retry-After and claims nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline import codec
from pipeline.clock import Clock
from pipeline.config import GatewaySettings
from pipeline.devices import DeviceInfo, DeviceRegistry
from pipeline.gateway import protocols
from pipeline.ingest import IngestSink, IngestUnavailable, Screener, dead_letter
from pipeline.metrics import Metrics
from pipeline.reference.models import Schedule
from pipeline.topology import DeviceBatch

log = logging.getLogger(__name__)

AVRO_TYPES = frozenset({"application/avro", "avro/binary", "application/vnd.fieldtrack.avro"})
RETRY_AFTER_S = "5"


@dataclass(slots=True)
class AdminHooks:
    """What the admin routes may do; supplied by the process that owns the store."""

    token: str
    query: Callable[[str], Awaitable[dict[str, Any]]]
    # (org_id, device_id, name, schedule) -> the new device's token
    add_device: Callable[[str, str, str, Schedule | None], Awaitable[str]]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        registry: DeviceRegistry,
        screener: Screener,
        sink: IngestSink,
        clock: Clock,
        metrics: Metrics,
        admin: AdminHooks | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.screener = screener
        self.sink = sink
        self.clock = clock
        self.metrics = metrics
        self.admin = admin

    def app(self) -> web.Application:
        # client_max_size makes aiohttp answer 413 itself for oversized bodies.
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.add_routes(
            [
                web.post("/v1/pings", self.post_pings),
                web.post("/v1/device-states", self.post_states),
                web.get("/osmand", self.osmand),
                web.post("/osmand", self.osmand),
                web.post("/owntracks", self.owntracks),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics_route),
                web.post("/v1/admin/query", self.admin_query),
                web.post("/v1/admin/devices", self.admin_devices),
            ]
        )
        return app

    # -- device routes --------------------------------------------------------------------

    async def post_pings(self, request: web.Request) -> web.Response:
        return await self._ingest(request, "pings")

    async def post_states(self, request: web.Request) -> web.Response:
        return await self._ingest(request, "device-states")

    async def _ingest(self, request: web.Request, kind: str) -> web.Response:
        started = time.monotonic()
        return self._count(kind, started, await self._ingest_inner(request, kind, started))

    async def _ingest_inner(self, request: web.Request, kind: str, started: float) -> web.Response:
        token = _bearer(request)
        if token is None:
            return web.json_response(
                {"error": "missing bearer token (Authorization: Bearer <device token>)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="fieldtrack"'},
            )
        device = self.registry.authenticate(token)
        if device is None:
            return web.json_response(
                {"error": "unknown or revoked device token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="fieldtrack", error="invalid_token"'},
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body larger than {self.settings.max_body_bytes} bytes")
        received_ms = self.clock.now_ms()
        try:
            pings, states, errors = self._decode(
                request.content_type, body, kind, device, received_ms
            )
        except codec.BodyError as exc:
            await self._dead_letter_body(device, received_ms, str(exc), body)
            return _error(400, str(exc))
        status, payload, headers = await self._accept(
            device, kind, received_ms, pings, states, errors, started
        )
        return web.json_response(payload, status=status, headers=headers)

    async def _accept(
        self,
        device: DeviceInfo,
        kind: str,
        received_ms: int,
        pings: list[Any],
        states: list[Any],
        errors: list[codec.RecordError],
        started: float,
    ) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        """Screen decoded records and hand them over; the answer every protocol shares."""
        total = len(pings) + len(states) + len(errors)
        if total == 0:
            return 400, {"error": "empty batch: send at least one record"}, None
        if total > self.settings.max_batch_records:
            limit = self.settings.max_batch_records
            return 413, {"error": f"{total} records in one request; the limit is {limit}"}, None
        screened = self.screener.screen(device, received_ms, pings, states, errors)
        accepted = len(screened.batch.pings) + len(screened.batch.states)
        try:
            await asyncio.wait_for(
                self.sink.ingest(screened.batch, screened.dead_letters, started),
                timeout=self.settings.durable_timeout_s,
            )
        except (IngestUnavailable, TimeoutError) as exc:
            log.warning("ingest unavailable: %s", exc)
            error = "storage temporarily unavailable; nothing was accepted, retry later"
            return 503, {"error": error}, {"Retry-After": RETRY_AFTER_S}
        record_kind = "ping" if kind == "pings" else "device_state"
        self.metrics.records.labels(record_kind, "accepted").inc(accepted)
        self.metrics.records.labels(record_kind, "rejected").inc(len(screened.rejected))
        self.metrics.records.labels(record_kind, "outside_hours").inc(screened.outside_hours)
        payload = {
            "accepted": accepted,
            "rejected": [{"index": r.index, "reason": r.reason} for r in screened.rejected],
            "dropped_outside_work_hours": screened.outside_hours,
        }
        if accepted == 0 and screened.rejected:
            return 422, {"error": "no valid records", **payload}, None
        return 202, payload, None

    def _decode(
        self, content_type: str, body: bytes, kind: str, device: DeviceInfo, received_ms: int
    ) -> tuple[list[Any], list[Any], list[codec.RecordError]]:
        ids = {"org_id": device.org_id, "device_id": device.device_id, "received_ms": received_ms}
        avro = content_type in AVRO_TYPES
        if kind == "pings":
            decode = codec.decode_pings_avro if avro else codec.decode_pings_json
            pings, errors = decode(body, **ids)
            return pings, [], errors
        decode_states = codec.decode_states_avro if avro else codec.decode_states_json
        states, errors = decode_states(body, **ids)
        return [], states, errors

    async def _dead_letter_body(
        self, device: DeviceInfo, received_ms: int, reason: str, body: bytes
    ) -> None:
        letter = dead_letter(device, received_ms, "gateway", reason, body[:65536])
        try:
            await self.sink.ingest(
                DeviceBatch(device.org_id, device.device_id, received_ms=received_ms),
                [letter],
                time.monotonic(),
            )
        except IngestUnavailable:
            log.warning("could not keep a dead letter for a malformed body: %s", reason)

    # -- tracker apps ---------------------------------------------------------------------

    async def osmand(self, request: web.Request) -> web.Response:
        """Traccar Client / OsmAnd: the app's device identifier is the device token."""
        started = time.monotonic()
        try:
            params: dict[str, Any] = dict(request.query)
            body: dict[str, Any] | None = None
            if request.method == "POST" and request.content_type == "application/json":
                body = await request.json()
            elif request.method == "POST":
                params.update(await request.post())
            token = protocols.osmand_identity(params, body)
            records = protocols.osmand_records(params, body)
        except (ValueError, web.HTTPException) as exc:
            return self._count("osmand", started, web.Response(status=400, text=f"{exc}\n"))
        device = self.registry.authenticate(token) if token else None
        if device is None:
            response = web.Response(status=401, text="unknown device identifier\n")
            return self._count("osmand", started, response)
        status, payload, headers = await self._accept_records(device, records, started)
        # Traccar Client retries anything but 200; a rejected fix must not be retried forever.
        ok = status in (202, 422)
        text = "OK\n" if ok else f"{payload.get('error', status)}\n"
        return self._count(
            "osmand",
            started,
            web.Response(status=200 if ok else status, text=text, headers=headers),
        )

    async def owntracks(self, request: web.Request) -> web.Response:
        """OwnTracks HTTP mode: Basic auth, password = device token; answers a JSON array."""
        started = time.monotonic()
        token = protocols.basic_password(request.headers.get("Authorization", ""))
        device = self.registry.authenticate(token) if token else None
        if device is None:
            response = web.json_response(
                {"error": "unknown device: use the device token as the password"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="fieldtrack"'},
            )
            return self._count("owntracks", started, response)
        try:
            records = protocols.owntracks_records(await request.json())
        except (ValueError, web.HTTPException) as exc:
            return self._count("owntracks", started, _error(400, str(exc)))
        if records:
            status, payload, headers = await self._accept_records(device, records, started)
            if status not in (202, 422):
                return self._count(
                    "owntracks", started, web.json_response(payload, status=status, headers=headers)
                )
        return self._count("owntracks", started, web.json_response([]))

    async def _accept_records(
        self, device: DeviceInfo, records: list[dict[str, Any]], started: float
    ) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        received_ms = self.clock.now_ms()
        pings, errors = codec.decode_pings_json(
            json.dumps(records).encode(),
            org_id=device.org_id,
            device_id=device.device_id,
            received_ms=received_ms,
        )
        return await self._accept(device, "pings", received_ms, pings, [], errors, started)

    def _count(self, route: str, started: float, response: web.Response) -> web.Response:
        self.metrics.requests.labels(route, str(response.status)).inc()
        self.metrics.request_seconds.labels(route).observe(time.monotonic() - started)
        return response

    # -- operations -----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "devices": len(self.registry)})

    async def metrics_route(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    def _admin_ok(self, request: web.Request) -> bool:
        return self.admin is not None and _bearer(request) == self.admin.token

    async def admin_query(self, request: web.Request) -> web.Response:
        if not self._admin_ok(request):
            return _error(401, "admin token required")
        assert self.admin is not None
        try:
            sql = (await request.json())["sql"]
        except (ValueError, KeyError, TypeError):
            return _error(400, 'body must be {"sql": "..."}')
        try:
            return web.json_response(await self.admin.query(str(sql)), dumps=_dumps)
        except Exception as exc:  # the SQL's own error, returned to the operator
            return _error(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    async def admin_devices(self, request: web.Request) -> web.Response:
        if not self._admin_ok(request):
            return _error(401, "admin token required")
        assert self.admin is not None
        try:
            spec = await request.json()
            if not isinstance(spec, dict) or not spec.get("device_id"):
                raise ValueError("device_id is required")
            schedule = Schedule.parse(spec["schedule"]) if spec.get("schedule") else None
            org_id = str(spec.get("org_id") or self.settings.default_org)
            device_id = str(spec["device_id"])
            token = await self.admin.add_device(org_id, device_id, spec.get("name", ""), schedule)
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, str(exc))
        return web.json_response(
            {"org_id": org_id, "device_id": device_id, "token": token}, status=201
        )


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
