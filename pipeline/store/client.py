"""One client code path for both stores: clickhouse-connect, whose `chdb` interface drives the
embedded engine (default, data under `<data_dir>/store`) and whose HTTP interface drives a real
ClickHouse server (`store.url`, e.g. http://default:@localhost:8123).

chDB allows one engine per process, bound to one directory, and a second process cannot open a
directory in use: `StoreLocked` says so clearly instead of a cryptic engine error, and callers
(`fieldtrack query`, `fieldtrack devices`) then go through the running instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from pipeline.config import StoreSettings
from pipeline.store.schema import render_ddl

log = logging.getLogger(__name__)


class StoreLocked(RuntimeError):
    """The embedded store's directory is owned by another running process."""


@dataclass(slots=True)
class QueryResult:
    column_names: list[str]
    rows: list[tuple[Any, ...]]


class Store:
    """A thread-safe wrapper; every call blocks, so async code runs it in an executor."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.database = settings.database
        self._lock = threading.Lock()
        self._client: Client = self._connect()
        self._readonly: Client | None = None

    @property
    def embedded(self) -> bool:
        return not self.settings.url

    @property
    def store_path(self) -> Path:
        return Path(self.settings.data_dir) / "store"

    def _connect(self, settings: dict[str, Any] | None = None) -> Client:
        if self.settings.url:
            return clickhouse_connect.get_client(dsn=self.settings.url, settings=settings)
        self.store_path.mkdir(parents=True, exist_ok=True)
        try:
            return clickhouse_connect.get_client(
                interface="chdb", path=str(self.store_path), settings=settings
            )
        except Exception as exc:
            if "lock" in str(exc).lower() or "EmbeddedServer" in str(exc):
                raise StoreLocked(
                    f"the embedded store {self.store_path} is in use by another fieldtrack "
                    "process (chDB allows one process per data directory)"
                ) from exc
            raise

    def apply_schema(self) -> None:
        with self._lock:
            for statement in render_ddl(self.settings):
                self._client.command(statement)

    def insert(self, table: str, columns: Sequence[Sequence[Any]], names: Sequence[str]) -> None:
        """Column-oriented insert (one list per column)."""
        if not columns or not len(columns[0]):
            return
        with self._lock:
            self._client.insert(
                f"{self.database}.{table}",
                list(columns),
                column_names=list(names),
                column_oriented=True,
            )

    def query(
        self, sql: str, parameters: dict[str, Any] | None = None, *, readonly: bool = False
    ) -> QueryResult:
        with self._lock:
            client = self._client
            if readonly:
                # A client of its own: chDB keeps per-query settings on the session, so a
                # read-only query on the main client would make every later insert fail.
                if self._readonly is None:
                    self._readonly = self._connect({"readonly": 1})
                client = self._readonly
            result = client.query(sql, parameters=parameters)
        return QueryResult(list(result.column_names), list(result.result_rows))

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self._client.command(sql, parameters=parameters)

    def close(self) -> None:
        with self._lock:
            for client in (self._readonly, self._client):
                try:
                    if client is not None:
                        client.close()
                except Exception:  # closing must never mask the real error
                    log.exception("closing the store failed")
