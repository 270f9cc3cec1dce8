"""Why a Kafka record carries a device's whole upload: the Faust worker's cost per record.

Pushes the same pings through the real worker (topology + Faust table + outputs) twice — one
ping per record, then 50 pings per record (a phone's upload) — and prints pings/s for each.
Needs the local broker (`make kafka-up`, or it is started here).

    .venv/bin/python scripts/bench_kafka_batching.py [--pings 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid

from rich.console import Console
from rich.table import Table

from pipeline.broker import LocalKafka
from pipeline.config import Settings
from pipeline.events import Ping
from pipeline.stream import records
from pipeline.stream.topics import create_topics, device_key
from pipeline.topology import DeviceBatch

DEVICES = 200


async def run_mode(pings_per_record: int, total: int) -> tuple[int, float]:
    from aiokafka import AIOKafkaProducer

    from pipeline.stream.worker import Worker

    settings = Settings()
    settings.kafka.bootstrap = LocalKafka().bootstrap
    settings.kafka.topic_prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings.kafka.tick_interval_ms = 0
    settings.store.data_dir = "/tmp/fieldtrack-bench"
    await create_topics(settings.kafka)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, linger_ms=5)
    await producer.start()
    now = int(time.time() * 1000) - 3_600_000
    per_device = total // DEVICES
    values = []
    for d in range(DEVICES):
        device = f"dev-{d:04d}"
        pings = [
            Ping(
                "bench",
                device,
                i + 1,
                now + i * 5000,
                52.5 + d * 1e-3 + i * 1e-5,
                13.4,
                8.0,
                received_ms=now + i * 5000,
            )
            for i in range(per_device)
        ]
        for i in range(0, per_device, pings_per_record):
            chunk = pings[i : i + pings_per_record]
            batch = DeviceBatch("bench", device, chunk, received_ms=chunk[-1].ts_ms)
            values.append((device_key("bench", device), records.encode_pings(batch)))
    for key, value in values:
        await producer.send(f"{settings.kafka.topic_prefix}pings", value, key=key)
    await producer.flush()
    await producer.stop()
    worker = Worker(settings)
    await worker.app.start()
    started = None
    while worker.processed < len(values):
        await asyncio.sleep(0.01)
        if started is None and worker.processed > 0:
            started = time.monotonic()
    elapsed = time.monotonic() - (started or time.monotonic())
    await worker.app.stop()
    return len(values), elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pings", type=int, default=20_000)
    parser.add_argument("--mode", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        n, seconds = asyncio.run(run_mode(args.mode, args.pings))
        print(f"{n} {seconds}")
        return
    LocalKafka().start()
    table = Table("pings per record", "records", "pings", "seconds", "records/s", "pings/s",
                  title="Faust worker, whole topology, one process")  # fmt: skip
    for per_record in (1, 50):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", str(per_record), "--pings", str(args.pings)],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        n, seconds = int(out[-2]), float(out[-1])
        pings = n * per_record
        table.add_row(str(per_record), f"{n:,}", f"{pings:,}", f"{seconds:.1f}",
                      f"{n / seconds:,.0f}", f"{pings / seconds:,.0f}")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
