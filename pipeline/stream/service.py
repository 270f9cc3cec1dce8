"""The Kafka-side processes: the gateway (publishes to Kafka), and `run --kafka`, which runs
gateway, Faust worker and sink in one process for a single machine. Each also runs alone
(`fieldtrack gateway | worker | sink`) for scaling out."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from aiohttp import web

from pipeline.clock import Clock, WallClock
from pipeline.config import Settings
from pipeline.devices import DeviceInfo, hash_token, new_token
from pipeline.gateway.app import AdminHooks, Gateway
from pipeline.ingest import Screener
from pipeline.metrics import Metrics
from pipeline.processors.validate import Validator
from pipeline.reference.models import Schedule
from pipeline.store.client import Store
from pipeline.stream.ingest import KafkaIngest
from pipeline.stream.reference import ReferenceFeed, publish_reference
from pipeline.stream.sink import KafkaSink
from pipeline.stream.worker import Worker

log = logging.getLogger(__name__)


class KafkaGateway:
    """The HTTP gateway in front of Kafka; devices come from the reference topic."""

    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or WallClock()
        self.metrics = Metrics()
        self.feed = ReferenceFeed(settings.kafka)
        self.ingest = KafkaIngest(settings.kafka)
        self.store = store
        self.admin_token = secrets.token_urlsafe(24)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        await self.feed.start()
        await self.ingest.start()
        screener = Screener(
            Validator(self.settings.processors.validate),
            privacy=self.settings.processors.privacy.enabled,
        )
        admin = AdminHooks(self.admin_token, self._query, self.add_device)
        gateway = Gateway(
            self.settings.gateway, self.feed.registry, screener, self.ingest, self.clock,
            self.metrics, admin,
        )  # fmt: skip
        self._runner = web.AppRunner(gateway.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.gateway.host, self.settings.gateway.port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # in-flight requests finish: every 202 was acked
        await self.ingest.stop()
        await self.feed.stop()

    async def add_device(
        self, org_id: str, device_id: str, name: str = "", schedule: Schedule | None = None
    ) -> str:
        """Registers a device on the reference topic; returns its token (shown once)."""
        token = new_token()
        device = DeviceInfo(org_id, device_id, name or device_id, schedule)
        await publish_reference(self.settings.kafka, devices=[(hash_token(token), device)])
        self.feed.registry.add(hash_token(token), device)  # usable before the feed echoes it
        return token

    async def _query(self, sql: str) -> dict[str, Any]:
        if self.store is None:
            raise ValueError("this gateway has no store; query ClickHouse directly")
        store = self.store
        result = await asyncio.to_thread(store.query, sql, readonly=True)
        return {"columns": result.column_names, "rows": [list(r) for r in result.rows]}


async def run_all(settings: Settings, stop: asyncio.Event) -> None:
    """Gateway, Faust worker and sink in this one process, until `stop` is set."""
    store = Store(settings.store)
    store.apply_schema()
    gateway = KafkaGateway(settings, store=store)
    await gateway.start()
    sink_stop = asyncio.Event()
    sink_task = asyncio.create_task(KafkaSink(settings, store).run(sink_stop))
    worker = Worker(settings)
    # The Faust app as a service of this loop (no faust.Worker: it would own signals and loop).
    await worker.app.start()
    log.info("gateway on %s, worker and sink running", gateway.url)
    try:
        await stop.wait()
    finally:
        await gateway.stop()  # in-flight requests finish; every 202 was acknowledged
        await worker.app.stop()  # the agent finishes its event and commits
        sink_stop.set()
        await asyncio.gather(sink_task, return_exceptions=True)
        store.close()
