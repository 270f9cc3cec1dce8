"""How large should a store insert be? Inserts raw pings into a scratch chDB store in batches
of 10 .. 100,000 rows and prints rows/s per batch size (the sink's `store.batch_rows` default
comes from this table).

    .venv/bin/python scripts/store_batch_sizes.py
"""

from __future__ import annotations

import tempfile
import time

from rich.console import Console
from rich.table import Table

from pipeline.config import StoreSettings
from pipeline.events import Ping
from pipeline.store.client import Store
from pipeline.store.rows import TABLES

SIZES = (10, 100, 1_000, 10_000, 100_000)
ROWS_PER_SIZE = 200_000


def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        store = Store(StoreSettings(data_dir=data_dir))
        store.apply_schema()
        spec = TABLES["raw_pings"]
        now = int(time.time() * 1000)
        table = Table("rows per insert", "ms per insert", "rows/s", title="chDB raw_pings inserts")
        for size in SIZES:
            rows = [
                Ping("o", f"d{i % 50}", i, now - i * 1000, 52.5, 13.4, 8.0) for i in range(size)
            ]
            columns = spec.to_columns(rows)
            repeats = max(3, min(200, ROWS_PER_SIZE // size))
            started = time.perf_counter()
            for _ in range(repeats):
                store.insert("raw_pings", columns, spec.columns)
            per_insert = (time.perf_counter() - started) / repeats
            table.add_row(f"{size:,}", f"{per_insert * 1000:.1f}", f"{size / per_insert:,.0f}")
        store.close()
    Console().print(table)


if __name__ == "__main__":
    main()
