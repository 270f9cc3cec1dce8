"""Detector scorers: the pipeline's facts against the simulator's ground truth.

Pure functions (no I/O, no clock): each takes what the topology emitted and the truth records
the simulator wrote (dicts with a "type": visit, stop, fence_crossing, spoof_episode,
contact_loss, left_post, forbidden_visit, mileage, path) and returns a small dataclass whose
`to_dict()` is JSON-ready with floats rounded to 3 decimals.

Conventions shared by every scorer:

- `precision` = true positives / detections, `recall` = true positives / true facts,
  `f1` = 2·tp / (2·tp + fp + fn) (the harmonic mean of the two when both exist).
  A ratio with nothing to divide by is `None` ("undefined"), never 0 or 1: a detector that
  emits nothing has precision `None` and recall 0.0; a scenario without truth has recall
  `None`. `f1` is `None` only when there is neither a detection nor a truth.
- Matching is one-to-one and greedy: every admissible (detection, truth) pair is ranked by
  its cost (best overlap or nearest time first, ties broken by time then input order) and
  taken when neither side is taken yet. A second detection of one truth is therefore a
  false positive.
- Medians and percentiles (`p90`, linear interpolation) are over matched pairs and are
  `None` when nothing matched. Times are reported in seconds.

Metrics and parameters, per scorer:

`score_visits(detected, truth)` -> `VisitScore`
  Detections are `Visit`s with `verified=True` (an unverified visit is one a manager must not
  count). Truth is the `visit` records; those with `observed=False` (the phone recorded no
  fixes) are left out of recall, and a detection matching one is ignored (neither tp nor fp).
  A detection matches a true visit of the same device and customer whose closed interval
  [arrive, leave] intersects its own, largest overlap first. Errors are absolute differences
  of matched pairs: `arrive_err_*_s`, `leave_err_*_s` (seconds) and `minutes_err_median`;
  `arrive_bias_s`/`leave_bias_s` are the medians of the signed errors (detected - true;
  positive = late).

`score_fences(detected, truth, hours_observed, tolerance_s=120.0)` -> `FenceScore`
  A `FenceEvent` matches a `fence_crossing` of the same device, fence and transition whose
  time lies within `tolerance_s` (default 120 s), nearest first. `timing_err_*_s` are absolute
  errors of matched pairs, `timing_bias_s` the median signed error (detected - true).
  Flaps: for every (device, fence), the detected events beyond the true count, counted in
  enter/exit pairs: `max(0, n_detected - n_true) // 2`. Boundary jitter (enter, exit, enter
  where one enter is true) is one flap; a lone spurious event shows up as a false positive,
  not a flap; a missed true pair can hide a flap (it shows up as lost recall instead).
  `flaps_per_hour` = all flaps / `hours_observed` (device-hours; `None` when 0). Target 0.

`score_spoofing(alerts, truth, honest_device_days, pre_s=60.0, post_s=600.0)` -> `SpoofScore`
  Spoof alerts are the `Alert`s whose type is in `SPOOF_ALERT_TYPES`; other alerts are
  ignored. An episode's window is [start - `pre_s`, end + `post_s`] (defaults 60 s, 600 s).
  An episode is detected when any spoof alert of its device falls in its window (any spoof
  type counts: detectors legitimately overlap, e.g. a mock app also produces a static track).
  The alert credited with the detection is the earliest in-window alert of a type in the
  episode's `alerts` list (the "fair" types), or, when none, the earliest in-window spoof
  alert of any type; `recall_fair` counts only episodes detected by a fair type.
  `ttd_median_s` = median of (credited alert ts - episode start), which may be negative by up
  to `pre_s`. `precision` = spoof alerts inside some window of their device's episodes / all
  spoof alerts (an alert may support several episodes: this is not one-to-one).
  `false_alarms_per_100_days` = spoof alerts on devices that have no spoof episode at all /
  `honest_device_days` * 100 (`None` when `honest_device_days` is 0). `by_kind` gives per
  episode kind {episodes, detected, recall}; `by_alert_type` gives per alert type
  {alerts, in_episode}.

`score_contact(alerts, truth, limit_s, grace_s=120.0)` -> `ContactScore`
  A `contact_loss` is detected by a `LOST_CONTACT` alert of its device whose ts lies in
  [start, end + `grace_s`] (default 120 s), one-to-one, shortest delay first. `precision` =
  matched lost alerts / all lost alerts; `false_alerts` = lost alerts matching no loss.
  The predicted reason is the refined `reason` of the `CONTACT_RESTORED` alert whose
  evidence `lost_contact_id` is the lost alert's id, else the lost alert's own evidence
  `reason` ("unknown" when absent). `reason_accuracy` = detected losses with the right
  predicted reason / detected losses; `alert_reason_accuracy` is the same with the reason
  known when the alert fired (no refinement). `confusion` = {true reason: {predicted:
  count}} over detected losses; `recall_by_reason` = {true reason: recall}.
  Time to alert = alert ts - loss start (what the phone did: the product promises an alert
  within N minutes of losing contact): `tta_median_s`, `tta_max_s`, and `within_limit` =
  fraction of detected losses alerted within `limit_s` + 60 s. A loss may also carry
  `last_received_ms`, the receive time of the last data before the silence as the server saw
  it (the evaluation runner adds it); from it `tta_rx_median_s`, `tta_rx_max_s` and
  `within_limit_rx` measure the detector's own delay (`None` when no matched loss has it). A
  phone that dies between uploads went quiet on the server up to one upload interval before
  the loss start (tta < tta_rx); one whose GPS goes off uploads its last fix up to an upload
  interval after it (tta > tta_rx for a detector that waits from the receive time).

`score_smoothing(points, truth, min_truth_km=0.5)` -> `SmoothScore`
  Track points join the `path` truth on (device_id, seq, ts_ms), or on (device_id, seq) when
  flagged CLOCK_CORRECTED (their ts_ms is no longer the phone's). Points flagged LATE or
  OUTLIER and truth flagged `spoofed` are excluded from the error. `rmse_raw_m` /
  `rmse_smoothed_m` = root mean square haversine distance of the raw / smoothed position to
  the true position; `rmse_reduction_pct` = (raw - smoothed) / raw * 100.
  Mileage per device with a `mileage` record and at least one track point: ours =
  sum(step_m) / 1000; raw = sum of haversine distances between consecutive raw fixes in
  event-time order (all points not flagged LATE, outliers and spoofed fixes included, as a
  naive odometer would); truth = the record's km. Absolute % error = |x - truth| / truth *
  100, left `None` for devices whose true km is below `min_truth_km` (default 0.5 km; a
  percentage of almost nothing is noise). `mileage_mape_ours_pct` / `mileage_mape_raw_pct`
  are the means over devices with a defined error; `mileage_total_err_*_pct` compare the
  fleet totals (signed).

`summarise(scores)` turns {"visits": VisitScore or its dict, ...} into (metric, value, target)
rows for a table; `TARGETS` holds the targets shown there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.events import (
    SPOOF_ALERT_TYPES,
    Alert,
    AlertType,
    ContactReason,
    FenceEvent,
    TrackFlag,
    TrackPoint,
    Visit,
)
from pipeline.geo import EARTH_RADIUS_M

_DIGITS = 3
_EXCLUDED_FLAGS = int(TrackFlag.LATE | TrackFlag.OUTLIER)
_LOST = AlertType.LOST_CONTACT.value
_RESTORED = AlertType.CONTACT_RESTORED.value
_UNKNOWN_REASON = ContactReason.UNKNOWN.value


# ------------------------------------------------------------------------------- helpers
def _rounded(value: Any) -> Any:
    """JSON-ready copy: floats rounded, tuples as lists, dict keys as strings."""
    if isinstance(value, float):
        return round(value, _DIGITS)
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


class _Score:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return _rounded(asdict(self))  # type: ignore[call-overload]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _f1(tp: int, fp: int, fn: int) -> float | None:
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _greedy(pairs: list[tuple[Any, int, int]]) -> list[tuple[int, int]]:
    """One-to-one matching: pairs (cost, detection index, truth index), lowest cost first."""
    pairs.sort()
    used_det: set[int] = set()
    used_truth: set[int] = set()
    out: list[tuple[int, int]] = []
    for _, d, t in pairs:
        if d in used_det or t in used_truth:
            continue
        used_det.add(d)
        used_truth.add(t)
        out.append((d, t))
    return out


def _of_type(truth: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [t for t in truth if t.get("type") == kind]


def _haversine_np(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))


# -------------------------------------------------------------------------------- visits
@dataclass(slots=True)
class VisitScore(_Score):
    tp: int
    fp: int
    fn: int
    ignored: int  # verified detections matching an unobserved true visit
    unverified: int  # detected visits left out because verified=False
    precision: float | None
    recall: float | None
    f1: float | None
    arrive_err_median_s: float | None
    arrive_err_p90_s: float | None
    leave_err_median_s: float | None
    leave_err_p90_s: float | None
    minutes_err_median: float | None
    arrive_bias_s: float | None
    leave_bias_s: float | None


def score_visits(detected: list[Visit], truth: list[dict[str, Any]]) -> VisitScore:
    """Verified visits against true customer stays (see the module docstring)."""
    verified = [v for v in detected if v.verified]
    true_visits = _of_type(truth, "visit")
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, t in enumerate(true_visits):
        by_key[(t["device_id"], t["customer_id"])].append(i)
    pairs: list[tuple[Any, int, int]] = []
    for d, v in enumerate(verified):
        for t in by_key.get((v.device_id, v.customer_id), ()):
            tv = true_visits[t]
            overlap = min(v.leave_ms, tv["leave_ms"]) - max(v.arrive_ms, tv["arrive_ms"])
            if overlap >= 0:
                pairs.append(((-overlap, abs(v.arrive_ms - tv["arrive_ms"])), d, t))
    matched = _greedy(pairs)
    observed = [bool(t.get("observed", True)) for t in true_visits]
    arrive: list[float] = []
    leave: list[float] = []
    minutes: list[float] = []
    ignored = 0
    for d, t in matched:
        if not observed[t]:
            ignored += 1
            continue
        v, tv = verified[d], true_visits[t]
        arrive.append((v.arrive_ms - tv["arrive_ms"]) / 1000.0)
        leave.append((v.leave_ms - tv["leave_ms"]) / 1000.0)
        minutes.append(abs(v.minutes - tv["minutes"]))
    tp = len(arrive)
    fp = len(verified) - len(matched)
    fn = sum(observed) - tp
    abs_arrive = [abs(x) for x in arrive]
    abs_leave = [abs(x) for x in leave]
    return VisitScore(
        tp=tp,
        fp=fp,
        fn=fn,
        ignored=ignored,
        unverified=len(detected) - len(verified),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_f1(tp, fp, fn),
        arrive_err_median_s=_median(abs_arrive),
        arrive_err_p90_s=_percentile(abs_arrive, 90),
        leave_err_median_s=_median(abs_leave),
        leave_err_p90_s=_percentile(abs_leave, 90),
        minutes_err_median=_median(minutes),
        arrive_bias_s=_median(arrive),
        leave_bias_s=_median(leave),
    )


# -------------------------------------------------------------------------------- fences
@dataclass(slots=True)
class FenceScore(_Score):
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    timing_err_median_s: float | None
    timing_err_p90_s: float | None
    timing_bias_s: float | None
    flaps: int
    flaps_per_hour: float | None
    tolerance_s: float


def score_fences(
    detected: list[FenceEvent],
    truth: list[dict[str, Any]],
    hours_observed: float,
    tolerance_s: float = 120.0,
) -> FenceScore:
    """Fence enter/exit events against exact true crossings (see the module docstring)."""
    crossings = _of_type(truth, "fence_crossing")
    tol_ms = tolerance_s * 1000.0
    by_key: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    true_count: dict[tuple[str, str], int] = defaultdict(int)
    for i, c in enumerate(crossings):
        by_key[(c["device_id"], c["fence_id"], c["transition"])].append(i)
        true_count[(c["device_id"], c["fence_id"])] += 1
    pairs: list[tuple[Any, int, int]] = []
    det_count: dict[tuple[str, str], int] = defaultdict(int)
    for d, e in enumerate(detected):
        det_count[(e.device_id, e.fence_id)] += 1
        for t in by_key.get((e.device_id, e.fence_id, e.transition), ()):
            gap = abs(e.ts_ms - crossings[t]["ts_ms"])
            if gap <= tol_ms:
                pairs.append(((gap, crossings[t]["ts_ms"]), d, t))
    matched = _greedy(pairs)
    errors = [(detected[d].ts_ms - crossings[t]["ts_ms"]) / 1000.0 for d, t in matched]
    abs_errors = [abs(x) for x in errors]
    tp = len(matched)
    fp = len(detected) - tp
    fn = len(crossings) - tp
    flaps = sum(max(0, n - true_count.get(key, 0)) // 2 for key, n in det_count.items())
    return FenceScore(
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_f1(tp, fp, fn),
        timing_err_median_s=_median(abs_errors),
        timing_err_p90_s=_percentile(abs_errors, 90),
        timing_bias_s=_median(errors),
        flaps=flaps,
        flaps_per_hour=_ratio(flaps, hours_observed) if hours_observed > 0 else None,
        tolerance_s=float(tolerance_s),
    )


# ------------------------------------------------------------------------------ spoofing
@dataclass(slots=True)
class SpoofScore(_Score):
    episodes: int
    detected: int
    detected_fair: int
    recall: float | None
    recall_fair: float | None
    alerts: int
    alerts_in_episode: int
    precision: float | None
    ttd_median_s: float | None
    ttd_p90_s: float | None
    false_alarms: int  # spoof alerts on devices without any spoof episode
    false_alarm_devices: int
    false_alarms_per_100_days: float | None
    by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_alert_type: dict[str, dict[str, int]] = field(default_factory=dict)


def score_spoofing(
    alerts: list[Alert],
    truth: list[dict[str, Any]],
    honest_device_days: float,
    pre_s: float = 60.0,
    post_s: float = 600.0,
) -> SpoofScore:
    """Spoof alerts against true spoofing episodes (see the module docstring)."""
    spoof = sorted((a for a in alerts if a.type in SPOOF_ALERT_TYPES), key=lambda a: a.ts_ms)
    episodes = _of_type(truth, "spoof_episode")
    pre_ms, post_ms = pre_s * 1000.0, post_s * 1000.0
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for ep in episodes:
        windows[ep["device_id"]].append((ep["start_ms"] - pre_ms, ep["end_ms"] + post_ms))
    by_device: dict[str, list[Alert]] = defaultdict(list)
    for a in spoof:
        by_device[a.device_id].append(a)

    by_type: dict[str, dict[str, int]] = {}
    in_episode = false_alarms = 0
    alarmed_devices: set[str] = set()
    for a in spoof:
        row = by_type.setdefault(a.type, {"alerts": 0, "in_episode": 0})
        row["alerts"] += 1
        device_windows = windows.get(a.device_id)
        if device_windows is None:
            false_alarms += 1
            alarmed_devices.add(a.device_id)
        elif any(lo <= a.ts_ms <= hi for lo, hi in device_windows):
            in_episode += 1
            row["in_episode"] += 1

    kinds: dict[str, dict[str, Any]] = {}
    ttd: list[float] = []
    detected = detected_fair = 0
    for ep in episodes:
        lo, hi = ep["start_ms"] - pre_ms, ep["end_ms"] + post_ms
        fair = set(ep.get("alerts") or ())
        hits = [a for a in by_device.get(ep["device_id"], ()) if lo <= a.ts_ms <= hi]
        kind = kinds.setdefault(ep["kind"], {"episodes": 0, "detected": 0, "recall": None})
        kind["episodes"] += 1
        if not hits:
            continue
        fair_hits = [a for a in hits if a.type in fair]
        credited = (fair_hits or hits)[0]  # alerts are time-sorted
        detected += 1
        detected_fair += bool(fair_hits)
        kind["detected"] += 1
        ttd.append((credited.ts_ms - ep["start_ms"]) / 1000.0)
    for kind in kinds.values():
        kind["recall"] = _ratio(kind["detected"], kind["episodes"])

    return SpoofScore(
        episodes=len(episodes),
        detected=detected,
        detected_fair=detected_fair,
        recall=_ratio(detected, len(episodes)),
        recall_fair=_ratio(detected_fair, len(episodes)),
        alerts=len(spoof),
        alerts_in_episode=in_episode,
        precision=_ratio(in_episode, len(spoof)),
        ttd_median_s=_median(ttd),
        ttd_p90_s=_percentile(ttd, 90),
        false_alarms=false_alarms,
        false_alarm_devices=len(alarmed_devices),
        false_alarms_per_100_days=(
            false_alarms / honest_device_days * 100.0 if honest_device_days > 0 else None
        ),
        by_kind=dict(sorted(kinds.items())),
        by_alert_type=dict(sorted(by_type.items())),
    )


# ------------------------------------------------------------------------------- contact
@dataclass(slots=True)
class ContactScore(_Score):
    losses: int
    detected: int
    lost_alerts: int
    false_alerts: int
    recall: float | None
    precision: float | None
    reason_accuracy: float | None
    alert_reason_accuracy: float | None
    tta_median_s: float | None
    tta_max_s: float | None
    within_limit: float | None
    limit_s: float
    tta_rx_median_s: float | None = None  # from the last data received (see the docstring)
    tta_rx_max_s: float | None = None
    within_limit_rx: float | None = None
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    recall_by_reason: dict[str, float | None] = field(default_factory=dict)


def score_contact(
    alerts: list[Alert],
    truth: list[dict[str, Any]],
    limit_s: float,
    grace_s: float = 120.0,
) -> ContactScore:
    """Lost-contact alerts and their reasons against true silences (see the module docstring)."""
    lost = [a for a in alerts if a.type == _LOST]
    refined = {
        a.evidence["lost_contact_id"]: a.evidence.get("reason", _UNKNOWN_REASON)
        for a in alerts
        if a.type == _RESTORED and "lost_contact_id" in a.evidence
    }
    losses = _of_type(truth, "contact_loss")
    grace_ms = grace_s * 1000.0
    by_device: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(lost):
        by_device[a.device_id].append(i)
    pairs: list[tuple[Any, int, int]] = []
    for t, loss in enumerate(losses):
        start, end = loss["start_ms"], loss["end_ms"] + grace_ms
        for d in by_device.get(loss["device_id"], ()):
            ts = lost[d].ts_ms
            if start <= ts <= end:
                pairs.append(((ts - start, start), d, t))
    matched = _greedy(pairs)

    confusion: dict[str, dict[str, int]] = {}
    per_reason_total: dict[str, int] = defaultdict(int)
    per_reason_hit: dict[str, int] = defaultdict(int)
    for loss in losses:
        per_reason_total[loss["reason"]] += 1
    tta: list[float] = []
    tta_rx: list[float] = []
    right = right_at_alert = 0
    for d, t in matched:
        alert, loss = lost[d], losses[t]
        at_alert = alert.evidence.get("reason", _UNKNOWN_REASON)
        predicted = refined.get(alert.id, at_alert)
        true_reason = loss["reason"]
        row = confusion.setdefault(true_reason, {})
        row[predicted] = row.get(predicted, 0) + 1
        right += predicted == true_reason
        right_at_alert += at_alert == true_reason
        per_reason_hit[true_reason] += 1
        tta.append((alert.ts_ms - loss["start_ms"]) / 1000.0)
        if loss.get("last_received_ms") is not None:
            tta_rx.append((alert.ts_ms - loss["last_received_ms"]) / 1000.0)
    n = len(matched)
    allowed = limit_s + 60.0
    return ContactScore(
        losses=len(losses),
        detected=n,
        lost_alerts=len(lost),
        false_alerts=len(lost) - n,
        recall=_ratio(n, len(losses)),
        precision=_ratio(n, len(lost)),
        reason_accuracy=_ratio(right, n),
        alert_reason_accuracy=_ratio(right_at_alert, n),
        tta_median_s=_median(tta),
        tta_max_s=max(tta) if tta else None,
        within_limit=_ratio(sum(1 for x in tta if x <= allowed), n),
        limit_s=float(limit_s),
        tta_rx_median_s=_median(tta_rx),
        tta_rx_max_s=max(tta_rx) if tta_rx else None,
        within_limit_rx=_ratio(sum(1 for x in tta_rx if x <= allowed), len(tta_rx)),
        confusion={k: dict(sorted(v.items())) for k, v in sorted(confusion.items())},
        recall_by_reason={
            r: _ratio(per_reason_hit[r], total) for r, total in sorted(per_reason_total.items())
        },
    )


# ----------------------------------------------------------------------------- smoothing
@dataclass(slots=True)
class SmoothScore(_Score):
    points: int  # track points given
    joined: int  # points used for the RMSE (joined, not late/outlier, truth not spoofed)
    unjoined: int  # points without a path truth record
    rmse_raw_m: float | None
    rmse_smoothed_m: float | None
    rmse_reduction_pct: float | None
    mileage_devices: int  # devices with a defined mileage error
    mileage_mape_ours_pct: float | None
    mileage_mape_raw_pct: float | None
    mileage_total_err_ours_pct: float | None
    mileage_total_err_raw_pct: float | None
    devices_without_points: int  # devices with a mileage record but no track point
    mileage: dict[str, dict[str, float | None]] = field(default_factory=dict)


def score_smoothing(
    points: list[TrackPoint], truth: list[dict[str, Any]], min_truth_km: float = 0.5
) -> SmoothScore:
    """Position error of raw and smoothed track points, and mileage (see the module docstring)."""
    truth_at: dict[tuple[str, int, int], tuple[float, float, bool]] = {}
    by_seq: dict[tuple[str, int], tuple[float, float, bool]] = {}  # for clock-corrected points
    true_km: dict[str, float] = {}
    for t in truth:
        kind = t.get("type")
        if kind == "path":
            truth_at[(t["device_id"], t["seq"], t["ts_ms"])] = by_seq[
                (t["device_id"], t["seq"])
            ] = (
                t["lat"],
                t["lon"],
                bool(t["spoofed"]),
            )
        elif kind == "mileage":
            true_km[t["device_id"]] = float(t["km"])

    # position error: gather the joined rows, then one vectorised haversine
    rows: list[tuple[float, float, float, float, float, float]] = []
    unjoined = 0
    for p in points:
        found = truth_at.get((p.device_id, p.seq, p.ts_ms))
        if found is None and p.flags & TrackFlag.CLOCK_CORRECTED:
            found = by_seq.get((p.device_id, p.seq))
        if found is None:
            unjoined += 1
            continue
        if p.flags & _EXCLUDED_FLAGS or found[2]:
            continue
        rows.append((p.raw_lat, p.raw_lon, p.lat, p.lon, found[0], found[1]))
    rmse_raw = rmse_smooth = reduction = None
    if rows:
        a = np.asarray(rows, dtype=float)
        raw_err = _haversine_np(a[:, 0], a[:, 1], a[:, 4], a[:, 5])
        smooth_err = _haversine_np(a[:, 2], a[:, 3], a[:, 4], a[:, 5])
        rmse_raw = float(np.sqrt(np.mean(raw_err**2)))
        rmse_smooth = float(np.sqrt(np.mean(smooth_err**2)))
        reduction = _ratio((rmse_raw - rmse_smooth) * 100.0, rmse_raw)

    # mileage
    ours_m: dict[str, float] = defaultdict(float)
    raw_fixes: dict[str, list[tuple[int, int, float, float]]] = defaultdict(list)
    for p in points:
        ours_m[p.device_id] += p.step_m
        if not p.flags & TrackFlag.LATE:
            raw_fixes[p.device_id].append((p.ts_ms, p.seq, p.raw_lat, p.raw_lon))
    per_device: dict[str, dict[str, float | None]] = {}
    ours_errors: list[float] = []
    raw_errors: list[float] = []
    total_truth = total_ours = total_raw = 0.0
    without_points = 0
    for device_id, km in sorted(true_km.items()):
        if device_id not in ours_m:
            without_points += 1
            continue
        fixes = sorted(raw_fixes.get(device_id, ()))
        raw_km = 0.0
        if len(fixes) > 1:
            f = np.asarray([(la, lo) for _, _, la, lo in fixes], dtype=float)
            raw_km = float(_haversine_np(f[:-1, 0], f[:-1, 1], f[1:, 0], f[1:, 1]).sum()) / 1000
        ours_km = ours_m[device_id] / 1000.0
        ours_err = raw_err_pct = None
        if km >= min_truth_km:
            ours_err = abs(ours_km - km) / km * 100.0
            raw_err_pct = abs(raw_km - km) / km * 100.0
            ours_errors.append(ours_err)
            raw_errors.append(raw_err_pct)
        total_truth += km
        total_ours += ours_km
        total_raw += raw_km
        per_device[device_id] = {
            "truth_km": km,
            "ours_km": ours_km,
            "raw_km": raw_km,
            "ours_err_pct": ours_err,
            "raw_err_pct": raw_err_pct,
        }
    return SmoothScore(
        points=len(points),
        joined=len(rows),
        unjoined=unjoined,
        rmse_raw_m=rmse_raw,
        rmse_smoothed_m=rmse_smooth,
        rmse_reduction_pct=reduction,
        mileage_devices=len(ours_errors),
        mileage_mape_ours_pct=float(np.mean(ours_errors)) if ours_errors else None,
        mileage_mape_raw_pct=float(np.mean(raw_errors)) if raw_errors else None,
        mileage_total_err_ours_pct=_ratio((total_ours - total_truth) * 100.0, total_truth),
        mileage_total_err_raw_pct=_ratio((total_raw - total_truth) * 100.0, total_truth),
        devices_without_points=without_points,
        mileage=per_device,
    )


# ------------------------------------------------------------------------------- summary
# (scorer, metric) -> target shown next to the value; suggestions the lead may tune.
# The targets issue 6 sets (held-out seeds); "" = shown for comparison, no target.
TARGETS: dict[tuple[str, str], str] = {
    ("visits", "precision"): "",
    ("visits", "recall"): "",
    ("visits", "f1"): ">= 0.97",
    ("visits", "arrive_err_median_s"): "<= 60",
    ("visits", "leave_err_median_s"): "<= 60",
    ("visits", "minutes_err_median"): "",
    ("fences", "precision"): "",
    ("fences", "recall"): "",
    ("fences", "f1"): ">= 0.99",
    ("fences", "flaps_per_hour"): "0 (at 30 m noise)",
    ("fences", "timing_err_median_s"): "",
    ("spoofing", "precision"): ">= 0.98",
    ("spoofing", "recall"): ">= 0.95",
    ("spoofing", "ttd_median_s"): "",
    ("spoofing", "false_alarms_per_100_days"): "<= 1",
    ("contact", "recall"): ">= 0.99",
    ("contact", "reason_accuracy"): ">= 0.95",
    ("contact", "within_limit"): "1.0 (limit + 60 s)",
    ("contact", "tta_median_s"): "",
    ("contact", "tta_max_s"): "",
    ("contact", "tta_rx_median_s"): "",  # from the last data received, not the true start
    ("smoothing", "rmse_raw_m"): "",
    ("smoothing", "rmse_smoothed_m"): "",
    ("smoothing", "rmse_reduction_pct"): ">= 40 (at 20 m noise)",
    ("smoothing", "mileage_mape_ours_pct"): "<= 3",
    ("smoothing", "mileage_mape_raw_pct"): "",
}


def _text(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def summarise(scores: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value, target) rows for the metrics that have a target, in `TARGETS` order.

    `scores` maps scorer names ("visits", "fences", "spoofing", "contact", "smoothing") to a
    score dataclass or its `to_dict()`; missing scorers are skipped.
    """
    rows: list[tuple[str, str, str]] = []
    for (name, metric), target in TARGETS.items():
        score = scores.get(name)
        if score is None:
            continue
        values = score if isinstance(score, Mapping) else score.to_dict()
        if metric in values:
            rows.append((f"{name}.{metric}", _text(values[metric]), target))
    return rows
