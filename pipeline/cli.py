"""`fieldtrack` — the command line.

fieldtrack run [--simulate]          gateway + topology + embedded store (Ctrl-C stops cleanly)
fieldtrack simulate --out DIR        write a simulated fleet's events and ground truth
fieldtrack replay FILE               push a recorded file (JSONL or CSV) through the topology
fieldtrack query "SELECT ..."        SQL on the store, printed as a table
fieldtrack devices add|list          register devices (prints the token once)
fieldtrack customers import FILE     customers from CSV or GeoJSON
fieldtrack fences import FILE        fences from GeoJSON
fieldtrack schema                    print the ClickHouse DDL
fieldtrack docs                      write docs/processors.md (every processor setting)
fieldtrack dashboards [--check|--sql] Grafana dashboards JSON from pipeline/store/dashboards.py
fieldtrack bench [--quick]           benchmarks, recorded in bench/results/
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from pipeline.config import Settings, load_settings
from pipeline.reference.models import Schedule
from pipeline.service import instance_file
from pipeline.store.client import Store, StoreLocked

# Tables are wide: when output is not a terminal (CI logs, pipes), do not squeeze them to 80.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

EXAMPLE_QUERIES = [
    (
        "visits today",
        "SELECT device_id, customer_id, arrive, leave, round(minutes, 1) AS minutes "
        "FROM fieldtrack.visits FINAL ORDER BY arrive LIMIT 20",
    ),
    (
        "mileage per rep",
        "SELECT device_id, round(sum(step_m) / 1000, 2) AS km "
        "FROM fieldtrack.track_points FINAL GROUP BY device_id ORDER BY device_id",
    ),
    (
        "alerts with evidence",
        "SELECT ts, device_id, type, message FROM fieldtrack.alerts FINAL ORDER BY ts",
    ),
]


# -- store access: directly, or through the running instance that owns it ---------------------


class InstanceClient:
    """Talks to a running `fieldtrack run` that owns the embedded store."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {self.token}"}
            timeout = aiohttp.ClientTimeout(total=120)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(self.url + path, json=body, headers=headers) as resp,
            ):
                payload = await resp.json()
                if resp.status >= 400:
                    raise SystemExit(f"error: {payload.get('error', resp.status)}")
                return payload  # type: ignore[no-any-return]

        return asyncio.run(go())


def _running_instance(settings: Settings) -> InstanceClient | None:
    """The `fieldtrack run` that owns the embedded store, if one is alive."""
    path = instance_file(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)  # signal 0: is that process alive?
    except (OSError, ValueError, KeyError):
        return None
    return InstanceClient(info["url"], info["admin_token"])


def open_store(settings: Settings) -> Store | InstanceClient:
    if not settings.store.url:
        instance = _running_instance(settings)
        if instance is not None:
            return instance
    try:
        store = Store(settings.store)
    except StoreLocked as exc:
        instance = _running_instance(settings)
        if instance is None:
            path = instance_file(settings)
            raise SystemExit(f"error: {exc}, and no running instance was found at {path}") from exc
        return instance
    store.apply_schema()
    return store


def store_only(settings: Settings, what: str) -> Store:
    target = open_store(settings)
    if isinstance(target, InstanceClient):
        raise SystemExit(
            f"error: the store is owned by a running `fieldtrack run` ({target.url}); "
            f"stop it first to {what}."
        )
    return target


# -- output -----------------------------------------------------------------------------------


def print_rows(columns: list[str], rows: list[Any], fmt: str = "table") -> None:
    if fmt == "json":
        for row in rows:
            console.print_json(json.dumps(dict(zip(columns, row, strict=False)), default=str))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    table = Table(*columns, show_lines=False, header_style="bold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    console.print(f"[dim]{len(rows)} row(s)[/dim]")


# -- commands ---------------------------------------------------------------------------------


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    target = open_store(settings)
    if isinstance(target, InstanceClient):
        payload = target.post("/v1/admin/query", {"sql": args.sql})
        print_rows(payload["columns"], payload["rows"], args.format)
        return 0
    try:
        result = target.query(args.sql, readonly=True)
    except Exception as exc:
        err.print(f"[red]error:[/red] {str(exc).splitlines()[0]}")
        return 2
    finally:
        target.close()
    print_rows(result.column_names, result.rows, args.format)
    return 0


def cmd_devices(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.devices import DeviceInfo, hash_token, new_token
    from pipeline.store.reference import load_devices, save_device

    org = args.org or settings.gateway.default_org
    if settings.kafka.bootstrap and args.action == "add":
        from pipeline.stream.reference import publish_reference

        schedule = Schedule.parse(args.schedule) if args.schedule else None
        token = new_token()
        info = DeviceInfo(org, args.device_id, args.name or args.device_id, schedule)
        asyncio.run(publish_reference(settings.kafka, devices=[(hash_token(token), info)]))
        console.print(f"device [bold]{org}/{args.device_id}[/bold] published to Kafka. "
                      "Its token (shown once):")  # fmt: skip
        print(token)
        return 0
    target = open_store(settings)
    if args.action == "add":
        schedule = Schedule.parse(args.schedule) if args.schedule else None
        if isinstance(target, InstanceClient):
            spec = {"org_id": org, "device_id": args.device_id, "name": args.name or ""}
            if schedule:
                spec["schedule"] = schedule.to_spec()
            token = target.post("/v1/admin/devices", spec)["token"]
        else:
            token = new_token()
            info = DeviceInfo(org, args.device_id, args.name or args.device_id, schedule)
            save_device(target, hash_token(token), info)
            target.close()
        console.print(f"device [bold]{org}/{args.device_id}[/bold] added. Its token (shown once):")
        print(token)
        return 0
    if isinstance(target, InstanceClient):
        payload = target.post(
            "/v1/admin/query",
            {
                "sql": "SELECT org_id, device_id, name, schedule, active "
                "FROM fieldtrack.devices FINAL ORDER BY org_id, device_id"
            },
        )
        print_rows(payload["columns"], payload["rows"])
        return 0
    devices = sorted(load_devices(target).values(), key=lambda d: (d.org_id, d.device_id))
    target.close()
    rows = [
        [
            d.org_id,
            d.device_id,
            d.name,
            json.dumps(d.schedule.to_spec()) if d.schedule else "",
            d.active,
        ]
        for d in devices
    ]
    print_rows(["org_id", "device_id", "name", "schedule", "active"], rows)
    return 0


def cmd_customers(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.reference.loader import ReferenceFileError, load_customers_file
    from pipeline.store.reference import save_customers

    org = args.org or settings.gateway.default_org
    try:
        customers = load_customers_file(args.file, org)
    except (ReferenceFileError, OSError) as exc:
        raise SystemExit(f"error: {args.file}: {exc}") from exc
    if settings.kafka.bootstrap:
        from pipeline.stream.reference import publish_reference

        asyncio.run(publish_reference(settings.kafka, customers=customers))
        console.print(f"published {len(customers)} customers for org {org} to Kafka")
        return 0
    store = store_only(settings, "import customers")
    save_customers(store, customers)
    store.close()
    console.print(f"imported {len(customers)} customers for org {org}")
    return 0


def cmd_fences(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.reference.loader import ReferenceFileError, load_fence_features
    from pipeline.store.reference import save_fences

    org = args.org or settings.gateway.default_org
    try:
        features = load_fence_features(args.file)
        if settings.kafka.bootstrap:
            from pipeline.reference.fences import fence_from_geojson
            from pipeline.stream.reference import publish_reference

            for feature in features:
                fence_from_geojson(feature, org)  # validate all before publishing any
            fences = [(org, f) for f in features]
            n = asyncio.run(publish_reference(settings.kafka, fences=fences))
            console.print(f"published {n} fences for org {org} to Kafka")
            return 0
        store = store_only(settings, "import fences")
        n = save_fences(store, features, org)
    except (ReferenceFileError, OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"error: {args.file}: {exc}") from exc
    store.close()
    console.print(f"imported {n} fences for org {org}")
    return 0


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.store.schema import render_ddl

    for statement in render_ddl(settings.store):
        print(statement + ";\n")
    return 0


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from pipeline.sim import build_city, default_sim_day, simulate, write_simulation

    day = dt.date.fromisoformat(args.day) if args.day else default_sim_day(dt.date.today())
    city = build_city(seed=args.seed)
    sim = simulate(city, reps=args.reps, day=day, seed=args.seed)
    write_simulation(sim, city, Path(args.out))
    n = sum(len(u.records) for u in sim.uploads)
    console.print(
        f"wrote {len(sim.uploads)} uploads ({n} records) and {len(sim.truth)} truth records "
        f"for {args.reps} reps on {day} to {args.out}"
    )
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.replay import replay_file

    store = store_only(settings, "replay into it")
    try:
        summary = asyncio.run(replay_file(settings, store, Path(args.file), args.org, console))
    finally:
        store.close()
    print_rows(list(summary.keys()), [list(summary.values())])
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if args.simulate:
        return asyncio.run(_run_simulated(settings))
    if settings.kafka.bootstrap:
        from pipeline.stream.service import run_all

        console.print(
            f"fieldtrack on Kafka {settings.kafka.bootstrap}: gateway on "
            f"{settings.gateway.host}:{settings.gateway.port}, worker and sink in "
            "this process. Ctrl-C stops cleanly."
        )
        return _until_signal(lambda stop: run_all(settings, stop))
    return asyncio.run(_run_forever(settings))


def _until_signal(main: Any) -> int:
    """Runs `main(stop_event)` until SIGINT/SIGTERM set the event."""

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)
        return 0

    return asyncio.run(go())


def _need_kafka(settings: Settings) -> None:
    if not settings.kafka.bootstrap:
        raise SystemExit(
            "error: no broker: pass --kafka HOST:PORT or set "
            "FIELDTRACK_KAFKA__BOOTSTRAP (make kafka-up starts one on "
            "127.0.0.1:19092)"
        )


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.stream.topics import Topics, create_topics

    _need_kafka(settings)
    if args.partitions:
        settings.kafka.partitions = args.partitions
    created = asyncio.run(create_topics(settings.kafka))
    topics = Topics(settings.kafka.topic_prefix)
    rows = [[name, "created" if name in created else "exists"]
            for name in [*topics.all(), topics.reference]]  # fmt: skip
    print_rows(["topic", "status"], rows)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.stream.worker import run_worker

    _need_kafka(settings)
    run_worker(settings, loglevel="info" if args.verbose else "warn", web_port=args.web_port)
    return 0


def cmd_sink(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.stream.sink import run_sink

    _need_kafka(settings)
    return _until_signal(lambda stop: run_sink(settings, stop))


def cmd_gateway(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.stream.service import KafkaGateway

    _need_kafka(settings)

    async def serve(stop: asyncio.Event) -> None:
        gateway = KafkaGateway(settings)
        await gateway.start()
        console.print(f"gateway on {gateway.url} publishing to {settings.kafka.bootstrap}")
        await stop.wait()
        await gateway.stop()

    return _until_signal(serve)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.evaluate.report import print_report, run_suite, write_json
    from pipeline.evaluate.runner import HELD_OUT_SEEDS, TUNING_SEEDS

    if args.sweep:
        from pipeline.evaluate.report import sweep

        setting, values = args.sweep
        chosen = HELD_OUT_SEEDS if args.seeds_given == "held-out" else TUNING_SEEDS
        try:
            result = sweep(setting, values.split(","), seeds=chosen, only=args.scenario,
                           settings=settings.processors, console=console)  # fmt: skip
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from exc
        path = Path(args.json or f"results/sweeps/{setting}.json")
        write_json(result, path)
        console.print(f"[dim]written to {path}[/dim]")
        return 0
    seeds = TUNING_SEEDS if args.seeds_given == "tuning" else HELD_OUT_SEEDS
    try:
        result = run_suite(seeds=seeds, quick=args.quick, settings=settings.processors,
                           console=console, only=args.scenario,
                           with_peers=not args.no_peers)  # fmt: skip
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print_report(result, console)
    partial = bool(args.scenario or args.quick or args.no_peers)
    json_path = args.json or (None if partial else "results/evaluation.json")
    if json_path:
        write_json(result, Path(json_path))
        console.print(f"[dim]written to {json_path}[/dim]")
    return 0


def cmd_docs(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.config import processor_reference

    text = processor_reference()
    if args.output == "-":
        print(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
        console.print(f"[dim]written to {args.output}[/dim]")
    return 0


def cmd_dashboards(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt

    from pipeline.store import dashboards

    if args.sql is not None:  # print panels' SQL for one day, ready for `fieldtrack query`
        day = dt.date.fromisoformat(args.day) if args.day else dt.date.today()
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1) - dt.timedelta(seconds=1)
        org = args.org or settings.gateway.default_org
        try:
            chosen = [dashboards.panel(args.sql)] if args.sql else dashboards.all_panels()
        except KeyError as exc:
            raise SystemExit(f"error: {exc.args[0]}") from exc
        for p in chosen:
            sql = dashboards.render_panel_sql(p, start, end, org, database=settings.store.database)
            print(f"-- {p.key}: {p.title}\n{sql};\n")
        return 0
    if args.check:
        stale = dashboards.stale_dashboards(args.out)
        if stale:
            names = ", ".join(stale)
            err.print(f"[red]stale:[/red] {names} in {args.out}; run `fieldtrack dashboards`")
            return 1
        console.print(f"[dim]{args.out} is current[/dim]")
        return 0
    for path in dashboards.write_dashboards(args.out):
        console.print(f"[dim]written {path}[/dim]")
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.bench import BENCHMARKS, run_all

    unknown = [name for name in args.only or [] if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
    run_all(args.only, quick=args.quick, console=console, results_dir=Path(args.results))
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.stream.alerts import tail_alerts

    _need_kafka(settings)
    return _until_signal(lambda stop: tail_alerts(settings, stop, console, args.from_beginning))


async def _run_forever(settings: Settings) -> int:
    from pipeline.service import EmbeddedService

    service = EmbeddedService(settings)
    try:
        await service.start()
    except (StoreLocked, OSError) as exc:
        await service.stop()
        raise SystemExit(f"error: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    customers, fences = service.reference_sizes()
    console.print(
        f"fieldtrack serving devices on [bold]{service.url}[/bold] "
        f"({len(service.registry)} devices, {customers} customers, {fences} fences). "
        "Ctrl-C stops cleanly."
    )
    await stop.wait()
    console.print("stopping: finishing requests, draining the topology, flushing the store ...")
    await service.stop()
    console.print("stopped cleanly.")
    return 0


async def _run_simulated(settings: Settings) -> int:
    from pipeline.simrun import run_simulation, run_simulation_on_kafka
    from pipeline.store.queries import rep_summaries

    where = (
        f"Kafka {settings.kafka.bootstrap} (gateway, Faust worker and sink in this process)"
        if settings.kafka.bootstrap
        else f"the embedded store under {settings.store.data_dir}/"
    )
    console.print(
        f"[bold]fieldtrack[/bold]: simulating {settings.sim.reps} reps (seed {settings.sim.seed}) "
        f"through the gateway on {settings.gateway.host}:{settings.gateway.port} into {where}"
    )
    try:
        if settings.kafka.bootstrap:
            run, simulation, stats = await run_simulation_on_kafka(settings, console)
            store, metrics, stop = run.store, run.metrics, run.stop
        else:
            service, simulation, stats = await run_simulation(settings, console)
            assert service.store is not None
            store, metrics, stop = service.store, service.metrics, service.stop
    except (StoreLocked, OSError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    try:
        summaries = rep_summaries(store, stats.org_id, stats.day_start_ms, stats.day_end_ms)
        _print_summary(summaries, simulation)
        _print_pipeline_figures(metrics, stats)
    finally:
        await stop()
    console.print("\nQuery the store (it is kept under ./data between runs):")
    for title, sql in EXAMPLE_QUERIES:
        console.print(f'  [dim]# {title}[/dim]\n  fieldtrack query "{sql}"')
    return 0


def _print_summary(summaries: list[Any], simulation: Any) -> None:
    profiles = {d.device_id: d.profile for d in simulation.devices}
    table = Table(
        title="Per rep — visits are verified; unverified = overlapping an anti-cheat episode",
        header_style="bold",
        show_footer=True,
    )
    lost_total = sum(len(s.lost_contact) for s in summaries)
    columns = [
        ("rep", "TOTAL", "left"),
        ("profile", "", "left"),
        ("km", f"{sum(s.km for s in summaries):,.1f}", "right"),
        ("visits", str(sum(s.visits for s in summaries)), "right"),
        ("cust.", str(sum(s.customers for s in summaries)), "right"),
        ("min@cust", f"{sum(s.minutes_at_customers for s in summaries):,.0f}", "right"),
        ("unverified", str(sum(s.unverified_visits for s in summaries)), "right"),
        ("fence in/out", f"{sum(s.fence_entries for s in summaries)}/"
                         f"{sum(s.fence_exits for s in summaries)}", "right"),
        ("spoof", str(sum(s.spoof_alerts for s in summaries)), "right"),
        ("post/zone", str(sum(s.other_alerts for s in summaries)), "right"),
        ("lost contact", str(lost_total), "left"),
    ]  # fmt: skip
    for name, footer, justify in columns:
        table.add_column(name, footer=footer, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for s in summaries:
        table.add_row(
            s.device_id,
            profiles.get(s.device_id, ""),
            f"{s.km:.1f}",
            str(s.visits),
            str(s.customers),
            f"{s.minutes_at_customers:.0f}",
            str(s.unverified_visits),
            f"{s.fence_entries}/{s.fence_exits}",
            str(s.spoof_alerts),
            str(s.other_alerts),
            ", ".join(s.lost_contact) or "-",
        )
    console.print(table)


def _print_pipeline_figures(metrics: Any, stats: Any) -> None:

    def counter(metric: Any, *labels: str) -> int:
        return int(metric.labels(*labels)._value.get())

    accepted = counter(metrics.records, "ping", "accepted")
    rejected = counter(metrics.records, "ping", "rejected")
    outside = counter(metrics.records, "ping", "outside_hours")
    states = counter(metrics.records, "device_state", "accepted")
    p50 = metrics.latency_sample.quantile(0.50)
    p99 = metrics.latency_sample.quantile(0.99)
    table = Table(title="Pipeline", header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("HTTP uploads posted", f"{stats.uploads:,}"),
        ("pings accepted", f"{accepted:,}"),
        ("pings rejected (dead-lettered)", f"{rejected:,}"),
        ("pings dropped outside work hours", f"{outside:,}"),
        ("device-state events accepted", f"{states:,}"),
        ("duplicates dropped", f"{counter(metrics.topology_counters, 'duplicate'):,}"),
        ("late pings (stored, flagged)", f"{counter(metrics.topology_counters, 'late'):,}"),
        ("outliers gated", f"{counter(metrics.topology_counters, 'outlier'):,}"),
        ("wall time", f"{stats.wall_s:.1f} s"),
        ("pings/s (accepted, end to end)", f"{accepted / max(stats.wall_s, 1e-9):,.0f}"),
        ("gateway->store latency p50", _ms(p50)),
        ("gateway->store latency p99", _ms(p99)),
        ("HTTP errors", f"{stats.http_errors}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


# -- argument parsing -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fieldtrack",
        description="Real-time location telemetry for field-force management. "
        "Phones post GPS pings to the gateway; the pipeline derives visits, mileage, fence "
        "events and alerts into ClickHouse (embedded chDB by default).",
        epilog="Configuration: --config FILE (TOML) and FIELDTRACK_<SECTION>__<FIELD> "
        "environment variables; see README.md.",
    )
    p.add_argument("--config", help="TOML file with settings (default: $FIELDTRACK_CONFIG)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve devices: gateway + topology + store")
    run.add_argument(
        "--simulate",
        action="store_true",
        help="post a simulated fleet's day through the gateway, then print a summary",
    )
    run.add_argument("--reps", type=int, help="simulated reps (default 20)")
    run.add_argument("--seed", type=int, help="simulation seed (default 7)")
    run.add_argument("--day", help="simulated day YYYY-MM-DD (default: the last weekday)")
    run.add_argument("--host", help="gateway address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="gateway port (default 8080)")
    run.add_argument(
        "--kafka",
        metavar="HOST:PORT",
        help="run on Apache Kafka: gateway, Faust worker and sink in this process",
    )
    run.set_defaults(func=cmd_run)

    def kafka_command(name: str, text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "--kafka",
            metavar="HOST:PORT",
            help="bootstrap broker (default: $FIELDTRACK_KAFKA__BOOTSTRAP)",
        )
        return cmd

    top = kafka_command("topics", "Kafka topics")
    top.add_argument("action", choices=("create",))
    top.add_argument("--partitions", type=int, help="partitions per topic (default 8)")
    top.set_defaults(func=cmd_topics)
    wrk = kafka_command("worker", "a Faust worker running the topology (scale out: run more)")
    wrk.add_argument("--web-port", type=int, default=0, help="Faust web/metrics port (0: off)")
    wrk.set_defaults(func=cmd_worker)
    kafka_command("sink", "consume Kafka topics into ClickHouse").set_defaults(func=cmd_sink)
    kafka_command("gateway", "the HTTP gateway publishing to Kafka").set_defaults(func=cmd_gateway)
    alr = kafka_command("alerts", "watch the alerts topic")
    alr.add_argument("action", choices=("tail",))
    alr.add_argument("--from-beginning", action="store_true", help="replay all retained alerts")
    alr.set_defaults(func=cmd_alerts)

    simp = sub.add_parser("simulate", help="write a simulated fleet's events and ground truth")
    simp.add_argument("--out", required=True, help="output directory")
    simp.add_argument("--reps", type=int, default=20)
    simp.add_argument("--seed", type=int, default=7)
    simp.add_argument("--day", help="YYYY-MM-DD (default: the last weekday)")
    simp.set_defaults(func=cmd_simulate)

    rep = sub.add_parser("replay", help="push a recorded JSONL or CSV file through the topology")
    rep.add_argument(
        "file",
        help="JSONL in the gateway's JSON format, or CSV with a header "
        "naming at least device_id, ts, lat, lon",
    )
    rep.add_argument("--org", help="org of the devices in the file (default: gateway.default_org)")
    rep.set_defaults(func=cmd_replay)

    q = sub.add_parser("query", help="run SQL on the store and print a table")
    q.add_argument("sql")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=cmd_query)

    dev = sub.add_parser("devices", help="register and list devices")
    dev_sub = dev.add_subparsers(dest="action", required=True)
    add = dev_sub.add_parser("add", help="register a device and print its token (once)")
    add.add_argument("device_id")
    add.add_argument("--org")
    add.add_argument("--kafka", metavar="HOST:PORT", help="register on Kafka's reference topic")
    add.add_argument("--name")
    add.add_argument(
        "--schedule",
        help='work hours, e.g. "mon-fri 08:00-18:00 Europe/Berlin"; '
        "positions outside them are never stored (default: all hours)",
    )
    dev_sub.add_parser("list", help="list registered devices")
    dev.set_defaults(func=cmd_devices)

    cust = sub.add_parser("customers", help="customer reference data")
    cust_sub = cust.add_subparsers(dest="action", required=True)
    ci = cust_sub.add_parser("import", help="import customers from CSV or GeoJSON")
    ci.add_argument("file")
    ci.add_argument("--org")
    ci.add_argument("--kafka", metavar="HOST:PORT", help="publish to Kafka's reference topic")
    cust.set_defaults(func=cmd_customers)

    fen = sub.add_parser("fences", help="fence reference data")
    fen_sub = fen.add_subparsers(dest="action", required=True)
    fi = fen_sub.add_parser("import", help="import fences from GeoJSON")
    fi.add_argument("file")
    fi.add_argument("--org")
    fi.add_argument("--kafka", metavar="HOST:PORT", help="publish to Kafka's reference topic")
    fen.set_defaults(func=cmd_fences)

    ev = sub.add_parser(
        "evaluate", help="score every detector on simulated scenarios against ground truth"
    )
    ev.add_argument(
        "--seeds",
        choices=("held-out", "tuning"),
        default=None,
        dest="seeds_given",
        help="report on the held-out seeds (default; a --sweep defaults to the tuning seeds)",
    )
    ev.add_argument("--quick", action="store_true", help="one scenario of each family")
    ev.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="only this scenario (repeatable); the result is then not written unless --json is",
    )
    ev.add_argument("--no-peers", action="store_true", help="skip the peer libraries")
    ev.add_argument(
        "--sweep",
        nargs=2,
        metavar=("SECTION.FIELD", "V1,V2,..."),
        help="score each value of one processor setting (tuning seeds by default) and write "
        "the table to results/sweeps/SECTION.FIELD.json",
    )
    ev.add_argument(
        "--json",
        default=None,
        help="where to write the result (default results/evaluation.json for a full run)",
    )
    ev.set_defaults(func=cmd_evaluate)

    bench = sub.add_parser(
        "bench", help="benchmarks: processor core, fences, state, store, gateway, kafka"
    )
    bench.add_argument("--quick", action="store_true", help="smaller sizes (about 2 minutes)")
    bench.add_argument(
        "--only", action="extend", nargs="+", metavar="NAME",
        help="only these benchmarks (core, fences, state, store, gateway, kafka)",
    )  # fmt: skip
    bench.add_argument("--results", default="bench/results", help="directory of the JSONL records")
    bench.set_defaults(func=cmd_bench)

    docs = sub.add_parser("docs", help="write docs/processors.md: every processor setting")
    docs.add_argument("--output", default="docs/processors.md", help="where ('-': stdout)")
    docs.set_defaults(func=cmd_docs)

    sch = sub.add_parser("schema", help="print the ClickHouse DDL")
    sch.set_defaults(func=cmd_schema)

    dash = sub.add_parser(
        "dashboards", help="write the Grafana dashboards JSON (deploy/grafana/dashboards/)"
    )
    dash.add_argument("--out", default="deploy/grafana/dashboards", help="output directory")
    dash.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    dash.add_argument(
        "--sql", nargs="?", const="", metavar="PANEL",
        help="print every panel's (or one panel's) SQL with macros filled in for --day, --org",
    )  # fmt: skip
    dash.add_argument("--day", help="YYYY-MM-DD (UTC) for --sql (default: today)")
    dash.add_argument("--org", help="org for --sql (default: gateway.default_org)")
    dash.set_defaults(func=cmd_dashboards)
    return p


def _apply_cli_overrides(args: argparse.Namespace, settings: Settings) -> None:
    if getattr(args, "kafka", None):
        settings.kafka.bootstrap = args.kafka
    for attr, section, key in (
        ("host", settings.gateway, "host"),
        ("port", settings.gateway, "port"),
        ("reps", settings.sim, "reps"),
        ("seed", settings.sim, "seed"),
        ("day", settings.sim, "day"),
    ):
        value = getattr(args, attr, None)
        if value is not None and args.command == "run":
            setattr(section, key, value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(args.config)
    except (ValueError, OSError) as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        return 2
    _apply_cli_overrides(args, settings)
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.func(args, settings))
    return 130


if __name__ == "__main__":
    sys.exit(main())
