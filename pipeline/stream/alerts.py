"""`fieldtrack alerts tail`: what an ops team watches.

The alerts topic (`<prefix>alerts`, keyed by `org/device`) carries one Avro `Alert` per record
in the Confluent wire format: `id` (deterministic: a redelivered alert has the same id — dedupe
on it), `org_id`, `device_id`, `ts_ms` (event time the rule fired), `type` (spoof_*, left_post,
forbidden_zone, lost_contact, contact_restored), `severity` (info, warning, critical),
`message` (for people) and `evidence` (map: the points, the rule, the thresholds).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from aiokafka import AIOKafkaConsumer
from rich.console import Console

from pipeline import codec
from pipeline.config import Settings
from pipeline.stream.topics import Topics

COLOURS = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def format_alert(alert: dict[str, object]) -> str:
    stamp = dt.datetime.fromtimestamp(int(alert["ts_ms"]) / 1000, dt.UTC)  # type: ignore[arg-type]
    colour = COLOURS.get(str(alert["severity"]), "")
    evidence = ", ".join(f"{k}={v}" for k, v in dict(alert["evidence"]).items())  # type: ignore[call-overload]
    return (
        f"{stamp:%Y-%m-%d %H:%M:%S} [{colour}]{alert['severity']:<8}[/{colour}] "
        f"{alert['org_id']}/{alert['device_id']} [bold]{alert['type']}[/bold]: "
        f"{alert['message']} [dim]({evidence})[/dim]"
    )


async def tail_alerts(
    settings: Settings, stop: asyncio.Event, console: Console, from_beginning: bool = False
) -> None:
    consumer = AIOKafkaConsumer(
        Topics(settings.kafka.topic_prefix).name("alerts"),
        bootstrap_servers=settings.kafka.bootstrap,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    console.print(f"[dim]watching {Topics(settings.kafka.topic_prefix).name('alerts')} "
                  "(Ctrl-C stops)[/dim]")  # fmt: skip
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for msg in messages:
                    try:
                        _, alert = codec.decode_avro(msg.value)
                    except codec.CodecError as exc:
                        console.print(f"[red]undecodable alert record: {exc}[/red]")
                        continue
                    console.print(format_alert(alert))
    finally:
        await consumer.stop()
