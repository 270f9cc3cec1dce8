"""The one place that holds configuration.

Defaults live in the dataclasses below (processor parameters in each processor's `Params`).
An optional TOML file overrides them (`--config FILE` or `FIELDTRACK_CONFIG`), and
environment variables override the file:

    FIELDTRACK_<SECTION>__<FIELD>=value      e.g. FIELDTRACK_DWELL__MIN_DURATION_S=240
                                                  FIELDTRACK_GATEWAY__PORT=9090

TOML uses the same names: a `[dwell]` table with `min_duration_s = 240`. Sections: gateway,
store, runner, kafka, sim and one per processor (validate, privacy, smooth, dwell, fences, spoof,
contact). Two short aliases are kept for the commonest settings: FIELDTRACK_CLICKHOUSE_URL
(store.url) and FIELDTRACK_DATA_DIR (store.data_dir).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.processors.contact import ContactParams
from pipeline.processors.dwell import DwellParams
from pipeline.processors.fences import FenceParams
from pipeline.processors.privacy import PrivacyParams
from pipeline.processors.smooth import SmoothParams
from pipeline.processors.spoof import SpoofParams
from pipeline.processors.validate import ValidateParams

ENV_PREFIX = "FIELDTRACK_"
ENV_ALIASES = {
    "FIELDTRACK_CLICKHOUSE_URL": ("store", "url"),
    "FIELDTRACK_DATA_DIR": ("store", "data_dir"),
}


@dataclass(slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024  # a request larger than this gets 413
    max_batch_records: int = 5000  # more records than this in one request gets 413
    default_org: str = "demo"  # org of devices added without --org
    # Seconds a request may wait for the store or broker before the gateway answers 503.
    durable_timeout_s: float = 10.0


@dataclass(slots=True)
class StoreSettings:
    url: str = ""  # empty: embedded chDB under data_dir; else http(s)://user:pass@host:8123
    data_dir: str = "data"
    database: str = "fieldtrack"
    batch_rows: int = 20000  # flush a table's buffer at this many rows ...
    flush_interval_ms: int = 250  # ... or when its oldest row is this old
    durable_flush_ms: int = 5  # group-commit window for raw input the gateway waits on
    raw_ttl_days: int = 90  # raw pings are deleted after this many days (ClickHouse TTL)
    cluster: str = ""  # ClickHouse cluster name: DDL gets ON CLUSTER and Replicated engines


@dataclass(slots=True)
class RunnerSettings:
    queue_batches: int = 2000  # bounded queue: when full, the gateway waits (back-pressure)
    tick_interval_ms: int = 500  # how often timers (lost contact, reorder release) run
    # How often device states are checkpointed while running (0: only at a clean stop); after
    # a crash, what was received since the last checkpoint is reprocessed from the raw tables.
    snapshot_interval_s: float = 60.0
    # Device states kept as live objects (the most recently used; ~6 KB each mid-day); the
    # others are held encoded (~1 KB) and decoded when a batch or timer needs them, which
    # costs ~0.2 ms of CPU per upload of a device at rest (benchmark 3). States with a timer
    # due at the next tick stay live besides. 2,048 (~12 MB): a fleet this small never runs
    # the codec; a larger one tends to ~1 KB a device. Raise it to trade memory for CPU.
    live_states: int = 2048


@dataclass(slots=True)
class KafkaSettings:
    bootstrap: str = ""  # host:port; empty = embedded (no broker)
    partitions: int = 8
    replication: int = 1
    topic_prefix: str = "fieldtrack.v1."
    # How often a worker writes a Tick into each pings partition it owns (lost contact and other
    # timers); 0 = never (a driver that owns the clock, e.g. a test, writes the ticks).
    tick_interval_ms: int = 1000
    # A driver that owns the clock (simulation, tests) waits for each tick to be processed
    # before posting the next step; workers then acknowledge ticks on `<prefix>tick-acks`.
    tick_acks: bool = False
    # The worker takes up to this many records (or what arrived within `worker_batch_ms`) per
    # round: their outputs are acknowledged together before their states are written, one
    # broker round trip per round instead of one per record.
    worker_batch_records: int = 500
    worker_batch_ms: int = 20
    session_timeout_s: float = 10.0  # a killed worker's partitions move after this long
    # An owned partition with records waiting and no progress this long is resumed, and after
    # as long again the worker exits (code 75) for its supervisor to restart; 0 disables.
    stall_timeout_s: float = 30.0
    producer_timeout_s: float = 5.0  # the gateway answers 503 when the broker takes longer


@dataclass(slots=True)
class SimSettings:
    reps: int = 20
    seed: int = 7
    day: str = ""  # YYYY-MM-DD; empty = yesterday
    ping_interval_s: float = 5.0
    upload_interval_s: float = 60.0


@dataclass(slots=True)
class ProcessorSettings:
    validate: ValidateParams = field(default_factory=ValidateParams)
    privacy: PrivacyParams = field(default_factory=PrivacyParams)
    smooth: SmoothParams = field(default_factory=SmoothParams)
    dwell: DwellParams = field(default_factory=DwellParams)
    fences: FenceParams = field(default_factory=FenceParams)
    spoof: SpoofParams = field(default_factory=SpoofParams)
    contact: ContactParams = field(default_factory=ContactParams)


@dataclass(slots=True)
class Settings:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    sim: SimSettings = field(default_factory=SimSettings)
    processors: ProcessorSettings = field(default_factory=ProcessorSettings)

    def sections(self) -> dict[str, Any]:
        """Every section by its config name (processor sections are top-level names)."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "processors"
        }
        for f in dataclasses.fields(self.processors):
            out[f.name] = getattr(self.processors, f.name)
        return out

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(section) for name, section in self.sections().items()}


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Coerce a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        hint = args[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected a boolean, got {value!r}")
    if hint in (int, float, str):
        try:
            return hint(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}") from exc
    return value


def _set(section: Any, key: str, value: Any, where: str) -> None:
    hints = typing.get_type_hints(type(section))
    if key not in hints:
        known = ", ".join(sorted(hints))
        raise ValueError(f"{where}: unknown setting {key!r} (known: {known})")
    setattr(section, key, _convert(value, hints[key], where))


def load_settings(
    path: str | Path | None = None, env: typing.Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then the TOML file (if any), then FIELDTRACK_* environment variables."""
    env = os.environ if env is None else env
    settings = Settings()
    sections = settings.sections()
    path = path or env.get("FIELDTRACK_CONFIG")
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        for name, values in data.items():
            if name not in sections or not isinstance(values, dict):
                raise ValueError(f"{path}: unknown section [{name}]")
            for key, value in values.items():
                _set(sections[name], key, value, f"{path} [{name}]")
    for var, value in env.items():
        if var in ENV_ALIASES:
            name, key = ENV_ALIASES[var]
            _set(sections[name], key, value, var)
        elif var.startswith(ENV_PREFIX) and "__" in var:
            name, _, key = var[len(ENV_PREFIX) :].partition("__")
            name = name.lower()
            if name not in sections:
                raise ValueError(f"{var}: unknown section {name!r}")
            _set(sections[name], key.lower(), value, var)
    return settings


def processor_reference() -> str:
    """docs/processors.md: every processor setting with its default, then the processor's own
    documentation (its module docstring, where each default is explained with the evidence
    behind it). Generated, so it cannot drift: `fieldtrack docs` writes it; a test checks the
    file is current and that every setting is documented in its module."""
    import sys

    lines = [
        "# Processor settings and why they are what they are",
        "",
        "Generated from the code by `fieldtrack docs` (do not edit by hand). Every",
        "setting is `[section] field` in TOML or `FIELDTRACK_<SECTION>__<FIELD>` in the",
        "environment. Defaults were chosen on the evaluation's tuning seeds",
        "(`fieldtrack evaluate --seeds tuning`, `--sweep section.field v1,v2`); the held-out",
        "result is in `results/evaluation.json`.",
        "",
    ]
    for f in dataclasses.fields(ProcessorSettings):
        params_type = type(getattr(ProcessorSettings(), f.name))
        module = sys.modules[params_type.__module__]
        lines += [f"## `[{f.name}]` ({params_type.__module__})", "", "| setting | default |",
                  "|---|---|"]  # fmt: skip
        for p in dataclasses.fields(params_type):
            default = getattr(params_type(), p.name)
            lines.append(f"| `{f.name}.{p.name}` | `{default!r}` |")
        lines += ["", (module.__doc__ or "").strip(), ""]
    return "\n".join(lines)


def undocumented_settings() -> list[str]:
    """Processor settings whose name does not appear in their module's docstring."""
    import sys

    missing = []
    for f in dataclasses.fields(ProcessorSettings):
        params_type = type(getattr(ProcessorSettings(), f.name))
        doc = sys.modules[params_type.__module__].__doc__ or ""
        missing += [f"{f.name}.{p.name}" for p in dataclasses.fields(params_type)
                    if f"`{p.name}`" not in doc]  # fmt: skip
    return missing
