"""Regenerate data/demo/customers.csv and data/demo/fences.geojson from the default city.

.venv/bin/python scripts/make_demo_data.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.sim import build_city, write_reference

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "demo"
    write_reference(build_city(), out)
    print(f"wrote {out / 'customers.csv'} and {out / 'fences.geojson'}")


if __name__ == "__main__":
    main()
