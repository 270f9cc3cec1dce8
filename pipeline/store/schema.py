"""Applies the ClickHouse DDL in `schemas/clickhouse/` to chDB or a server (or a cluster)."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import StoreSettings

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"
_REPLACING_V = re.compile(r"\$\{REPLACING_V\((\w+)\)\}")


def table_names() -> list[str]:
    """Table names in apply order, read from the DDL files."""
    names = []
    for path in sorted(SCHEMA_DIR.glob("*.sql")):
        m = re.search(r"CREATE TABLE IF NOT EXISTS \$\{DB\}\.(\w+)", path.read_text())
        if m:
            names.append(m.group(1))
    return names


def render_ddl(settings: StoreSettings) -> list[str]:
    """The CREATE statements for this store: placeholders filled, one statement per table."""
    db = settings.database
    statements = [f"CREATE DATABASE IF NOT EXISTS {db}" + _on_cluster(settings)]
    for path in sorted(SCHEMA_DIR.glob("*.sql")):
        sql = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        table = re.search(r"\$\{DB\}\.(\w+)", sql)
        name = table.group(1) if table else path.stem
        sql = _REPLACING_V.sub(lambda m, n=name: _engine(settings, db, n, m.group(1)), sql)
        sql = sql.replace("${REPLACING}", _engine(settings, db, name, ""))
        sql = sql.replace("${ON_CLUSTER}", _on_cluster(settings))
        sql = sql.replace("${RAW_TTL_DAYS}", str(int(settings.raw_ttl_days)))
        sql = sql.replace("${DB}", db)
        statements.append(sql.strip().rstrip(";"))
    return statements


def _on_cluster(settings: StoreSettings) -> str:
    return f" ON CLUSTER {settings.cluster}" if settings.cluster else ""


def _engine(settings: StoreSettings, db: str, table: str, version: str) -> str:
    if not settings.cluster:
        return f"ReplacingMergeTree({version})"
    args = f"'/clickhouse/tables/{{shard}}/{db}/{table}', '{{replica}}'"
    if version:
        args += f", {version}"
    return f"ReplicatedReplacingMergeTree({args})"
