"""Deterministic simulator of a field-sales fleet, with exact ground truth.

`build_city()` makes the seeded road grid, customers and fences (`pipeline.sim.city`);
`simulate(city, ...)` drives a fleet of phones through one work day and returns the upload
stream exactly as phones would send it plus the ground truth (`pipeline.sim.fleet`);
`write_simulation()` writes both to files (`pipeline.sim.output`). Same seed, same bytes.
"""

from pipeline.sim.city import City, Place, build_city
from pipeline.sim.fleet import (
    DEFAULT_ROSTER,
    PROFILES,
    SimDevice,
    Simulation,
    Upload,
    default_sim_day,
    simulate,
)
from pipeline.sim.output import write_reference, write_simulation

DEMO_DIR = "data/demo"

__all__ = [
    "DEFAULT_ROSTER",
    "DEMO_DIR",
    "PROFILES",
    "City",
    "Place",
    "SimDevice",
    "Simulation",
    "Upload",
    "build_city",
    "default_sim_day",
    "simulate",
    "write_reference",
    "write_simulation",
]
