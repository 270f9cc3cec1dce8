"""Writing a simulation to disk (the replay format) and the demo reference files.

`write_simulation(sim, city, out_dir)` writes:
- `events.jsonl`: one line per record in send order, the record's gateway JSON plus
  "endpoint" ("pings" | "device-states") and "send_ms" (true time the phone sent it);
  records of one upload are consecutive and share endpoint and send_ms.
- `truth.jsonl`: one ground-truth record per line (see `pipeline.sim.fleet`).
- `customers.csv`, `fences.geojson`: the city's reference data.
- `devices.json`: the devices with name, profile and work schedule.
Output is byte-identical for the same city, seed and arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.sim.city import City
from pipeline.sim.fleet import Simulation


def _line(record: dict[str, object]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


def write_reference(city: City, out_dir: str | Path) -> None:
    """customers.csv and fences.geojson for `city` (what `make_demo_data.py` commits)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "customers.csv").write_text(city.customers_csv(), encoding="utf-8")
    (out / "fences.geojson").write_text(city.fences_geojson(), encoding="utf-8")


def write_simulation(sim: Simulation, city: City, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "events.jsonl", "w", encoding="utf-8") as fh:
        for upload in sim.iter_uploads():
            head = {"endpoint": upload.endpoint, "send_ms": upload.send_ms}
            fh.writelines(_line({**head, **record}) for record in upload.records)
    with open(out / "truth.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(_line(record) for record in sim.iter_truth())
    write_reference(city, out)
    devices = [d.to_dict() for d in sim.devices]
    (out / "devices.json").write_text(
        json.dumps(devices, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return out
