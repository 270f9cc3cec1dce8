"""Peer libraries on the same data, for `fieldtrack evaluate`.

The report compares our detectors with what a team would get from well-known open-source
libraries run on the same accepted pings. Each wrapper is a pure function of plain inputs
(pings, customers, fences) returning plain data (dicts) that the report scores with the same
scorers as our facts. The peers are optional (extras `[eval]`: trackintel, movingpandas,
filterpy) and imported lazily; `available()` says which are importable, so `fieldtrack
evaluate` works without them. `naive_fence_events` needs only shapely and numpy.

Every wrapper sorts the fixes of each device by (ts_ms, seq) and drops repeated timestamps
(the first fix of a timestamp is kept), as a user of these libraries would.

Wrappers and their parameters:

- `trackintel_visits(pings, customers, *, dist_threshold_m=60, time_threshold_min=5,
  gap_threshold_min=15, include_last=True)`: trackintel's `generate_staypoints(
  method="sliding")` (Li et al. 2008) on the raw fixes of each device.
  `dist_threshold_m` = 60: a stay ends at the first fix this far from the stay's FIRST fix.
  `time_threshold_min` = 5: shortest stay. `gap_threshold_min` = 15: a gap between fixes
  longer than this restarts the search. `include_last` = True: also keep a stay still open at
  the last fix of the day (trackintel's default drops it; our pipeline closes it). Same
  thresholds as our dwell defaults.
- `movingpandas_visits(pings, customers, *, max_diameter_m=120, min_duration_s=300)`:
  MovingPandas `TrajectoryStopDetector(traj).get_stop_points(max_diameter, min_duration)`
  per device in EPSG:4326 (geodesic distances). `max_diameter_m` = 120: the stop's fixes
  must fit a rectangle with this diagonal (twice our 60 m dwell radius).
  `min_duration_s` = 300: shortest stop.
- Both map each stay to the nearest customer of the device's org whose `radius_m` contains
  the stay's centre (haversine) and return visits {device_id, customer_id, arrive_ms,
  leave_ms}; stays near no customer are not visits.
- `filterpy_smooth(pings, *, accel_std_mps2=0.1, min_accuracy_m=3.0)`: a constant-velocity
  filterpy `KalmanFilter` per device (state x, vx, y, vy in a `LocalFrame` around the
  device's first fix). `accel_std_mps2` = 0.1: process noise, white acceleration of this
  standard deviation (the lowest position RMSE of 0.05-1.0 on tuning seed 1 "honest day";
  the filter's best fixed setting, so the comparison is not against a strawman).
  Measurement noise per fix is its accuracy squared, the accuracy floored at
  `min_accuracy_m` = 3.0. No outlier gate and no restart after gaps: that is the point of
  the comparison. Returns {(device_id, seq, ts_ms): (lat, lon)}.
- `filterpy_mileage_km(smoothed)`: km per device summed over consecutive smoothed positions.
- `naive_fence_events(pings, fences, *, respect_schedules=True)`: per fix a plain
  point-in-polygon test (shapely `contains_xy`; circles by haversine to the centre) against
  every fence of the device's org, an enter/exit event each time the side flips:
  {device_id, fence_id, transition, ts_ms}. No hysteresis, no confirmation: this shows the
  flapping ours removes. A device starts outside, so a first fix inside is an "enter" (as
  ours). With `respect_schedules` = True a fence outside its schedule does not exist (as
  ours): no events, and a device inside is dropped from it silently.
- `timed(fn, *args, **kwargs) -> (result, seconds)` and `run_peers(pings, customers, fences)`
  which runs every available peer and reports output, seconds and pings/s for each.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from pipeline.events import Ping
from pipeline.geo import EARTH_RADIUS_M, LocalFrame, haversine_m
from pipeline.reference.models import Customer, Fence, schedule_active

PEERS = ("trackintel", "movingpandas", "filterpy")
DeviceKey = tuple[str, str]  # (org_id, device_id)


def available() -> dict[str, bool]:
    """Which peer libraries are importable (without importing them)."""
    return {name: importlib.util.find_spec(name) is not None for name in PEERS}


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """fn's result and its wall time in seconds."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


# --- shared helpers -----------------------------------------------------------------------


def _by_device(pings: Iterable[Ping]) -> dict[DeviceKey, list[Ping]]:
    """Fixes per (org, device), sorted by (ts_ms, seq), one fix per timestamp."""
    groups: dict[DeviceKey, list[Ping]] = defaultdict(list)
    for p in pings:
        groups[(p.org_id, p.device_id)].append(p)
    out: dict[DeviceKey, list[Ping]] = {}
    for key in sorted(groups):
        fixes = sorted(groups[key], key=lambda p: (p.ts_ms, p.seq))
        unique = [fixes[0]]
        for p in fixes[1:]:
            if p.ts_ms != unique[-1].ts_ms:
                unique.append(p)
        out[key] = unique
    return out


def _haversine_np(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Great-circle distances in metres from one point to arrays of points."""
    p1, p2 = math.radians(lat), np.radians(lats)
    dl = np.radians(lons - lon)
    a = np.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))


class _CustomerMatcher:
    """Nearest customer of an org whose radius contains a point."""

    def __init__(self, customers: Sequence[Customer]) -> None:
        by_org: dict[str, list[Customer]] = defaultdict(list)
        for c in customers:
            by_org[c.org_id].append(c)
        self._orgs = {
            org: (
                [c.customer_id for c in cs],
                np.array([c.lat for c in cs]),
                np.array([c.lon for c in cs]),
                np.array([c.radius_m for c in cs]),
            )
            for org, cs in by_org.items()
        }

    def match(self, org_id: str, lat: float, lon: float) -> str | None:
        if org_id not in self._orgs:
            return None
        ids, lats, lons, radii = self._orgs[org_id]
        dist = _haversine_np(lat, lon, lats, lons)
        inside = dist <= radii
        if not inside.any():
            return None
        return ids[int(np.argmin(np.where(inside, dist, np.inf)))]


def _to_ms(timestamp: Any) -> int:
    """A pandas/datetime timestamp (tz-aware UTC or naive UTC) -> epoch ms."""
    if hasattr(timestamp, "value"):  # pandas Timestamp: integer ns since the epoch (UTC)
        return int(timestamp.value // 1_000_000) if timestamp.tzinfo else _naive_ms(timestamp)
    return _naive_ms(timestamp)


def _naive_ms(timestamp: Any) -> int:
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=dt.UTC)
    return round(timestamp.timestamp() * 1000)


# --- trackintel -----------------------------------------------------------------------------


def trackintel_visits(
    pings: Iterable[Ping],
    customers: Sequence[Customer],
    *,
    dist_threshold_m: float = 60.0,
    time_threshold_min: float = 5.0,
    gap_threshold_min: float = 15.0,
    include_last: bool = True,
) -> list[dict[str, Any]]:
    """Customer visits from trackintel's sliding staypoints (see the module docstring)."""
    import geopandas as gpd
    import pandas as pd
    from trackintel import Positionfixes
    from trackintel.preprocessing import generate_staypoints

    devices = _by_device(pings)
    if not devices:
        return []
    keys = list(devices)
    user_ids: list[int] = []
    ts: list[int] = []
    lats: list[float] = []
    lons: list[float] = []
    for user_id, key in enumerate(keys):
        fixes = devices[key]
        user_ids.extend([user_id] * len(fixes))
        ts.extend(p.ts_ms for p in fixes)
        lats.extend(p.lat for p in fixes)
        lons.extend(p.lon for p in fixes)
    frame = gpd.GeoDataFrame(
        {"user_id": user_ids, "tracked_at": pd.to_datetime(ts, unit="ms", utc=True)},
        geometry=gpd.points_from_xy(lons, lats),
        crs="EPSG:4326",
    )
    with warnings.catch_warnings():  # "no staypoints" and duplicate notices are expected
        warnings.simplefilter("ignore")
        _, staypoints = generate_staypoints(
            Positionfixes(frame),
            method="sliding",
            distance_metric="haversine",
            dist_threshold=dist_threshold_m,
            time_threshold=time_threshold_min,
            gap_threshold=gap_threshold_min,
            include_last=include_last,
        )
    stays = (
        (*keys[int(user_id)], started, finished, point)
        for user_id, started, finished, point in zip(
            staypoints["user_id"].tolist(),
            staypoints["started_at"].tolist(),
            staypoints["finished_at"].tolist(),
            staypoints.geometry.tolist(),
            strict=True,
        )
    )
    return _stays_to_visits(_CustomerMatcher(customers), stays)


def _stays_to_visits(
    matcher: _CustomerMatcher, stays: Iterable[tuple[str, str, Any, Any, Any]]
) -> list[dict[str, Any]]:
    """(org, device, start, end, centre point) stays -> visits at the customer whose radius
    holds the centre; stays near no customer are not visits."""
    visits: list[dict[str, Any]] = []
    for org_id, device_id, started, finished, point in stays:
        customer_id = matcher.match(org_id, point.y, point.x)
        if customer_id is not None:
            visits.append(
                {
                    "device_id": device_id,
                    "customer_id": customer_id,
                    "arrive_ms": _to_ms(started),
                    "leave_ms": _to_ms(finished),
                }
            )
    visits.sort(key=lambda v: (v["device_id"], v["arrive_ms"]))
    return visits


# --- MovingPandas ---------------------------------------------------------------------------


def movingpandas_visits(
    pings: Iterable[Ping],
    customers: Sequence[Customer],
    *,
    max_diameter_m: float = 120.0,
    min_duration_s: float = 300.0,
) -> list[dict[str, Any]]:
    """Customer visits from MovingPandas' stop detector (see the module docstring)."""
    import geopandas as gpd
    import pandas as pd

    with warnings.catch_warnings():  # it warns about its own optional deps on import
        warnings.simplefilter("ignore")
        import movingpandas as mpd

    min_duration = dt.timedelta(seconds=min_duration_s)
    stays: list[tuple[str, str, Any, Any, Any]] = []
    for (org_id, device_id), fixes in _by_device(pings).items():
        if len(fixes) < 2:  # a Trajectory needs two points
            continue
        frame = gpd.GeoDataFrame(
            {"t": pd.to_datetime([p.ts_ms for p in fixes], unit="ms")},  # naive UTC
            geometry=gpd.points_from_xy([p.lon for p in fixes], [p.lat for p in fixes]),
            crs="EPSG:4326",
        ).set_index("t")
        with warnings.catch_warnings():  # pandas deprecations inside the library
            warnings.simplefilter("ignore")
            trajectory = mpd.Trajectory(frame, traj_id=device_id)
            stops = mpd.TrajectoryStopDetector(trajectory).get_stop_points(
                max_diameter=max_diameter_m, min_duration=min_duration
            )
        if len(stops) == 0:
            continue
        stays.extend(
            (org_id, device_id, started, ended, point)
            for started, ended, point in zip(
                stops["start_time"].tolist(),
                stops["end_time"].tolist(),
                stops.geometry.tolist(),
                strict=True,
            )
        )
    return _stays_to_visits(_CustomerMatcher(customers), stays)


# --- filterpy -------------------------------------------------------------------------------


def filterpy_smooth(
    pings: Iterable[Ping], *, accel_std_mps2: float = 0.1, min_accuracy_m: float = 3.0
) -> dict[tuple[str, int, int], tuple[float, float]]:
    """Constant-velocity Kalman filter per device, no gate (see the module docstring)."""
    from filterpy.common import Q_discrete_white_noise
    from filterpy.kalman import KalmanFilter

    accel_var = accel_std_mps2**2
    smoothed: dict[tuple[str, int, int], tuple[float, float]] = {}
    for (_, device_id), fixes in _by_device(pings).items():
        frame = LocalFrame(fixes[0].lat, fixes[0].lon)
        kf = KalmanFilter(dim_x=4, dim_z=2)  # state: x, vx, y, vy (metres, m/s)
        kf.H = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
        first = fixes[0]
        acc0 = max(min_accuracy_m, first.accuracy_m)
        x0, y0 = frame.to_xy(first.lat, first.lon)
        kf.x = np.array([[x0], [0.0], [y0], [0.0]])
        kf.P = np.diag([acc0**2, 100.0, acc0**2, 100.0])  # speed unknown: 10 m/s std
        smoothed[(device_id, first.seq, first.ts_ms)] = (first.lat, first.lon)
        last_ms = first.ts_ms
        for p in fixes[1:]:
            dt_s = (p.ts_ms - last_ms) / 1000.0
            last_ms = p.ts_ms
            kf.F[0, 1] = kf.F[2, 3] = dt_s
            kf.Q = Q_discrete_white_noise(dim=2, dt=dt_s, var=accel_var, block_size=2)
            kf.predict()
            acc = max(min_accuracy_m, p.accuracy_m)
            x, y = frame.to_xy(p.lat, p.lon)
            kf.update(np.array([[x], [y]]), R=acc * acc)
            smoothed[(device_id, p.seq, p.ts_ms)] = frame.to_latlon(
                float(kf.x[0, 0]), float(kf.x[2, 0])
            )
    return smoothed


def filterpy_mileage_km(
    smoothed: dict[tuple[str, int, int], tuple[float, float]],
) -> dict[str, float]:
    """Kilometres per device over consecutive smoothed positions (ordered by ts_ms, seq)."""
    per_device: dict[str, list[tuple[int, int, float, float]]] = defaultdict(list)
    for (device_id, seq, ts_ms), (lat, lon) in smoothed.items():
        per_device[device_id].append((ts_ms, seq, lat, lon))
    mileage: dict[str, float] = {}
    for device_id, points in sorted(per_device.items()):
        points.sort()
        metres = 0.0
        for a, b in itertools.pairwise(points):
            metres += haversine_m(a[2], a[3], b[2], b[3])
        mileage[device_id] = metres / 1000.0
    return mileage


# --- naive fences ---------------------------------------------------------------------------


def _inside(fence: Fence, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Plain membership per fix: exact distance for circles, point-in-polygon otherwise."""
    if fence.circle is not None:
        lat0, lon0, radius_m = fence.circle
        return _haversine_np(float(lat0), float(lon0), lats, lons) <= float(radius_m)
    import shapely

    return np.asarray(shapely.contains_xy(fence.geometry, lons, lats), dtype=bool)


def _active(fence: Fence, ts: np.ndarray) -> np.ndarray:
    """Whether the fence's schedule is on at each fix (evaluated once per minute)."""
    if fence.schedule is None:
        return np.ones(len(ts), dtype=bool)
    minutes, where = np.unique(ts // 60_000, return_inverse=True)
    on = np.array([schedule_active(fence.schedule, int(m) * 60_000) for m in minutes])
    return on[where]


def naive_fence_events(
    pings: Iterable[Ping], fences: Sequence[Fence], *, respect_schedules: bool = True
) -> list[dict[str, Any]]:
    """Enter/exit on every flip of a plain per-fix inside test (see the module docstring)."""
    by_org: dict[str, list[Fence]] = defaultdict(list)
    for fence in fences:
        by_org[fence.org_id].append(fence)
    events: list[dict[str, Any]] = []
    for (org_id, device_id), fixes in _by_device(pings).items():
        org_fences = by_org.get(org_id)
        if not org_fences:
            continue
        ts = np.array([p.ts_ms for p in fixes], dtype=np.int64)
        lats = np.array([p.lat for p in fixes])
        lons = np.array([p.lon for p in fixes])
        for fence in org_fences:
            active = _active(fence, ts) if respect_schedules else np.ones(len(ts), dtype=bool)
            inside = _inside(fence, lats, lons) & active
            # The device starts outside; a flip emits an event only while the fence is on
            # (a schedule ending drops the device silently, as our tracker does).
            previous = np.concatenate(([False], inside[:-1]))
            for i in np.flatnonzero((inside != previous) & active).tolist():
                events.append(
                    {
                        "device_id": device_id,
                        "fence_id": fence.fence_id,
                        "transition": "enter" if inside[i] else "exit",
                        "ts_ms": int(ts[i]),
                    }
                )
    events.sort(key=lambda e: (e["device_id"], e["ts_ms"], e["fence_id"]))
    return events


# --- all peers at once ----------------------------------------------------------------------


def run_peers(
    pings: Sequence[Ping], customers: Sequence[Customer], fences: Sequence[Fence]
) -> dict[str, dict[str, Any]]:
    """Every available peer on the same pings, with default parameters.

    Returns {name: {"output": ..., "seconds": s, "pings": n, "pings_per_s": n / s}} for the
    names "trackintel_visits", "movingpandas_visits", "filterpy_smooth" (output: {"smoothed":
    ..., "mileage_km": ...}) and "naive_fence_events"; a peer that is not installed is
    reported as {"available": False} instead.
    """
    have = available()
    n = len(pings)
    runs: list[tuple[str, str | None, Callable[[], Any]]] = [
        ("trackintel_visits", "trackintel", lambda: trackintel_visits(pings, customers)),
        ("movingpandas_visits", "movingpandas", lambda: movingpandas_visits(pings, customers)),
        ("filterpy_smooth", "filterpy", lambda: _smooth_and_mileage(pings)),
        ("naive_fence_events", None, lambda: naive_fence_events(pings, fences)),
    ]
    report: dict[str, dict[str, Any]] = {}
    for name, library, run in runs:
        if library is not None and not have[library]:
            report[name] = {"available": False}
            continue
        output, seconds = timed(run)
        report[name] = {
            "available": True,
            "output": output,
            "seconds": seconds,
            "pings": n,
            "pings_per_s": n / seconds if seconds > 0 else float("inf"),
        }
    return report


def _smooth_and_mileage(pings: Sequence[Ping]) -> dict[str, Any]:
    smoothed = filterpy_smooth(pings)
    return {"smoothed": smoothed, "mileage_km": filterpy_mileage_km(smoothed)}
