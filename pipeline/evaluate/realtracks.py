"""Real tracks from real devices (`../shared/data/real-tracks/`) through the topology.

There is no ground truth for these, but there is a hard rule: they are honest tracks, so every
spoof alert on them is a false alarm. The report also shows what the pipeline rejected and
why, the dwells it found, and raw vs smoothed mileage.

Each file is replayed as a phone would upload it: in file order, in uploads of `UPLOAD_FIXES`
fixes received at the newest fix's time (the replay clock follows the recording), with timers
run between uploads. A device without a schedule is tracked at all hours.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ProcessorSettings
from pipeline.events import SPOOF_ALERT_TYPES, Ping, TrackFlag
from pipeline.geo import haversine_m
from pipeline.processors.base import Result
from pipeline.processors.validate import Validator
from pipeline.reference import ReferenceData
from pipeline.topology import DeviceBatch, Topology

# The shared data sits beside the project's clone; FIELDTRACK_REAL_TRACKS points elsewhere.
REAL_TRACKS = Path(
    os.environ.get(
        "FIELDTRACK_REAL_TRACKS",
        Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-tracks",
    )
)
UPLOAD_FIXES = 12
ORG = "real"


def _utc_ms(text: str) -> int:
    text = text.strip().replace("Z", "+00:00")
    if " " in text and "T" not in text:
        text = text.replace(" ", "T")
    if "." in text:  # Python parses at most microseconds
        head, _, frac = text.partition(".")
        digits = "".join(c for c in frac if c.isdigit())[:6]
        zone = frac[len("".join(c for c in frac if c.isdigit())) :]
        text = f"{head}.{digits}{zone}"
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp() * 1000)


def load_plt(path: Path, device_id: str) -> list[Ping]:
    """GeoLife PLT: 6 header lines, then lat,lon,0,altitude_ft,days,date,time (UTC)."""
    pings = []
    for n, line in enumerate(path.read_text().splitlines()[6:], start=1):
        lat, lon, _, alt_ft, _, date, clock = line.split(",")[:7]
        altitude = float(alt_ft) * 0.3048 if float(alt_ft) != -777 else None
        pings.append(Ping(ORG, device_id, n, _utc_ms(f"{date}T{clock}"), float(lat), float(lon),
                          0.0, altitude_m=altitude))  # fmt: skip
    return pings


def load_csv(path: Path, device_id: str) -> list[Ping]:
    """trackintel-style `;`-separated CSV with tracked_at, latitude, longitude, accuracy."""
    pings = []
    with path.open(newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh, delimiter=";"), start=1):
            pings.append(
                Ping(
                    ORG,
                    device_id,
                    n,
                    _utc_ms(row["tracked_at"]),
                    float(row["latitude"]),
                    float(row["longitude"]),
                    float(row.get("accuracy") or 0.0),
                )
            )
    return pings


def real_tracks(root: Path = REAL_TRACKS) -> dict[str, list[Ping]]:
    tracks: dict[str, list[Ping]] = {}
    for path in sorted(root.glob("geolife/*/Trajectory/*.plt")):
        name = f"geolife-{path.parts[-3]}-{path.stem}"
        tracks[name] = load_plt(path, name)
    for path in sorted(root.glob("*_trajectory.csv")):
        name = path.stem.replace("_trajectory", "")
        tracks[name] = load_csv(path, name)
    return tracks


@dataclass
class TrackReport:
    name: str
    fixes: int
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    late: int = 0
    outliers: int = 0
    dwells: list[tuple[int, int]] = field(default_factory=list)
    raw_km: float = 0.0
    smoothed_km: float = 0.0
    spoof_alerts: list[str] = field(default_factory=list)
    other_alerts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fixes": self.fixes,
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "late": self.late,
            "outliers": self.outliers,
            "dwells": len(self.dwells),
            "raw_km": round(self.raw_km, 3),
            "smoothed_km": round(self.smoothed_km, 3),
            "spoof_alerts": self.spoof_alerts,
            "other_alerts": self.other_alerts,
        }


def replay_track(
    name: str, pings: list[Ping], settings: ProcessorSettings | None = None
) -> TrackReport:
    settings = settings or ProcessorSettings()
    topology = Topology(settings)
    validator = Validator(settings.validate)
    ref = ReferenceData()
    state = topology.initial_state()
    out = Result()
    report = TrackReport(name, len(pings))
    for i in range(0, len(pings), UPLOAD_FIXES):
        chunk = pings[i : i + UPLOAD_FIXES]
        now = max(p.ts_ms for p in chunk)
        good = []
        for p in chunk:
            reason = validator.check(p, now)
            if reason:
                report.rejected[reason.split(" (")[0]] += 1
            else:
                p.received_ms = now
                good.append(p)
        batch = DeviceBatch(ORG, name, good, received_ms=now)
        ctx = topology.context(ref, ORG, name, now)
        out.extend(topology.process(state, batch, ctx))
        out.extend(topology.tick(state, ctx))
    end = max((p.ts_ms for p in pings), default=0) + 3_600_000
    out.extend(topology.tick(state, topology.context(ref, ORG, name, end), final=True))
    report.accepted = out.counters["accepted"]
    report.late = out.counters["late"]
    report.outliers = out.counters["outlier"]
    report.dwells = [(d.start_ms, d.end_ms) for d in out.dwells if d.status == "closed"]
    report.smoothed_km = sum(t.step_m for t in out.track_points) / 1000
    ordered = sorted(
        (t for t in out.track_points if not t.flags & TrackFlag.LATE), key=lambda t: t.ts_ms
    )
    report.raw_km = (
        sum(
            haversine_m(a.raw_lat, a.raw_lon, b.raw_lat, b.raw_lon)
            for a, b in itertools.pairwise(ordered)
        )
        / 1000
    )
    report.spoof_alerts = [a.type for a in out.alerts if a.type in SPOOF_ALERT_TYPES]
    report.other_alerts = [a.type for a in out.alerts if a.type not in SPOOF_ALERT_TYPES]
    return report


def replay_all(settings: ProcessorSettings | None = None) -> list[TrackReport]:
    return [replay_track(name, pings, settings) for name, pings in real_tracks().items()]
