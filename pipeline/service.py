"""Assembles one embedded instance: store + topology + gateway (what `fieldtrack run` starts).

While it runs it owns the chDB directory, so it writes `<data_dir>/instance.json` (mode 0600)
with its URL and a per-run admin token; `fieldtrack query` and `fieldtrack devices add` use it
to go through this process instead of opening the locked store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline.clock import Clock, WallClock
from pipeline.config import Settings
from pipeline.devices import DeviceInfo, DeviceRegistry, hash_token, new_token
from pipeline.embedded import EmbeddedPipeline
from pipeline.gateway.app import AdminHooks, Gateway
from pipeline.ingest import Screener
from pipeline.metrics import Metrics
from pipeline.processors.validate import Validator
from pipeline.reference import CustomerIndex, FenceIndex
from pipeline.reference.models import Customer, Schedule
from pipeline.store.client import Store
from pipeline.store.reference import (
    load_devices,
    load_reference,
    save_customers,
    save_device,
    save_fences,
)

log = logging.getLogger(__name__)


def instance_file(settings: Settings) -> Path:
    return Path(settings.store.data_dir) / "instance.json"


class EmbeddedService:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        auto_tick: bool = True,
        restore_state: bool = True,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or WallClock()
        self.auto_tick = auto_tick
        self.restore_state = restore_state
        self.metrics = Metrics()
        self.store = store
        self._owns_store = store is None
        self.registry = DeviceRegistry()
        self.pipeline: EmbeddedPipeline | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.admin_token = secrets.token_urlsafe(24)
        self._wrote_instance_file = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.store is None:
            self.store = await loop.run_in_executor(None, Store, self.settings.store)
        store = self.store
        await loop.run_in_executor(None, store.apply_schema)
        self.registry.replace_all(await loop.run_in_executor(None, load_devices, store))
        reference = await loop.run_in_executor(None, load_reference, store, self.registry)
        self.pipeline = EmbeddedPipeline(
            self.settings, store, reference, self.clock, self.metrics, auto_tick=self.auto_tick
        )
        await self.pipeline.start(restore=self.restore_state)
        screener = Screener(
            Validator(self.settings.processors.validate),
            privacy=self.settings.processors.privacy.enabled,
        )
        admin = AdminHooks(self.admin_token, self._admin_query, self.add_device)
        gateway = Gateway(
            self.settings.gateway,
            self.registry,
            screener,
            self.pipeline,
            self.clock,
            self.metrics,
            admin,
        )
        self._runner = web.AppRunner(gateway.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.gateway.host, self.settings.gateway.port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"
        if self.store.embedded:
            self._write_instance_file()
        log.info("gateway listening on %s", self.url)

    async def stop(self) -> None:
        """Stop taking requests, finish in-flight ones, drain, flush, snapshot, close."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self.pipeline is not None:
            await self.pipeline.stop(snapshot=self.restore_state)
        if self._wrote_instance_file:
            instance_file(self.settings).unlink(missing_ok=True)
        if self.store is not None and self._owns_store:
            self.store.close()

    # -- reference data and devices -------------------------------------------------------

    def _require(self) -> tuple[Store, EmbeddedPipeline]:
        if self.store is None or self.pipeline is None:
            raise RuntimeError("service not started")
        return self.store, self.pipeline

    async def add_device(
        self, org_id: str, device_id: str, name: str = "", schedule: Schedule | None = None
    ) -> str:
        """Registers a device and returns its token (shown once; only the hash is stored)."""
        store, pipeline = self._require()
        token = new_token()
        device = DeviceInfo(org_id, device_id, name or device_id, schedule)
        await pipeline.sink.call(save_device, store, hash_token(token), device)
        self.registry.add(hash_token(token), device)
        pipeline.reference.schedules = self.registry.schedules()
        return token

    async def set_reference(
        self, customers: list[Customer], fence_features: list[dict[str, Any]], org_id: str
    ) -> None:
        """Stores customers and fences and swaps the live indexes."""
        store, pipeline = self._require()
        if customers:
            await pipeline.sink.call(save_customers, store, customers)
        if fence_features:
            await pipeline.sink.call(save_fences, store, fence_features, org_id)
        fresh = await pipeline.sink.call(load_reference, store, self.registry)
        pipeline.reference.customers = fresh.customers
        pipeline.reference.fences = fresh.fences

    def reference_sizes(self) -> tuple[int, int]:
        _, pipeline = self._require()
        customers: CustomerIndex = pipeline.reference.customers
        fences: FenceIndex = pipeline.reference.fences
        return len(customers), len(fences)

    # -- admin hooks ----------------------------------------------------------------------

    async def _admin_query(self, sql: str) -> dict[str, Any]:
        store, pipeline = self._require()
        result = await pipeline.sink.call(lambda: store.query(sql, readonly=True))
        return {"columns": result.column_names, "rows": [list(r) for r in result.rows]}

    def _write_instance_file(self) -> None:
        path = instance_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "url": self.url, "admin_token": self.admin_token}, fh)
        self._wrote_instance_file = True
