"""Detection quality as regression floors: the quick scenario set on one tuning seed, and the
real tracks. Floors sit at or just under what the detectors reach today (targets in
pipeline/evaluate/scorers.py TARGETS; `fieldtrack evaluate` reports both)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pipeline.config import ProcessorSettings
from pipeline.evaluate.realtracks import REAL_TRACKS, replay_all
from pipeline.evaluate.report import pooled
from pipeline.evaluate.runner import TUNING_SEEDS, run_scenario, scenario_suite


@cache
def quick_scores() -> dict[str, Any]:
    settings = ProcessorSettings()
    outcomes = [run_scenario(s, TUNING_SEEDS[0], settings) for s in scenario_suite(quick=True)]
    return pooled(outcomes, settings)


def test_visits_floor() -> None:
    visits = quick_scores()["visits"]
    assert visits["f1"] >= 0.92  # 0.937 on this seed, 0.972 held out; target 0.97
    assert visits["arrive_err_median_s"] <= 60 and visits["leave_err_median_s"] <= 60


def test_spoofing_floor() -> None:
    spoof = quick_scores()["spoofing"]
    assert spoof["precision"] >= 0.98
    assert spoof["false_alarms_per_100_days"] <= 1
    assert spoof["recall"] >= 0.5  # below the 0.95 target: see the issue 6 note


def test_contact_floor() -> None:
    contact = quick_scores()["contact"]
    assert contact["recall"] >= 0.99
    assert contact["reason_accuracy"] >= 0.95


def test_fences_and_mileage_floor() -> None:
    scores = quick_scores()
    assert scores["fences"]["recall"] >= 0.95
    smoothing = scores["smoothing"]
    assert smoothing["mileage_mape_ours_pct"] <= 12
    assert smoothing["mileage_mape_raw_pct"] >= 5 * smoothing["mileage_mape_ours_pct"]
    assert smoothing["rmse_reduction_pct"] > 0


def test_real_tracks_raise_no_spoof_alert_and_are_all_accepted() -> None:
    assert REAL_TRACKS.is_dir(), (
        f"real tracks not found at {REAL_TRACKS} (../shared beside the clone)"
    )
    reports = replay_all()
    assert len(reports) == 8
    for report in reports:
        assert report.spoof_alerts == [], report.name  # honest tracks: any alert is false
        assert report.accepted + sum(report.rejected.values()) + report.late >= report.fixes - 5
    gpsies = next(r for r in reports if r.name == "gpsies")  # a clean 1 Hz bike route
    assert abs(gpsies.smoothed_km - gpsies.raw_km) / gpsies.raw_km < 0.05


def test_sweep_scores_each_value_of_a_setting() -> None:
    import io

    from rich.console import Console

    from pipeline.evaluate.report import sweep

    quiet = Console(file=io.StringIO())
    result = sweep("dwell.tracking_edge_s", ["0", "120"], seeds=(1,), only=["honest day"],
                   console=quiet)  # fmt: skip
    edges_off, edges_on = (result["values"][v]["overall"]["visits"] for v in ("0", "120"))
    # Seed 1's rep-002 lives next to a customer: without the edge rule its home counts.
    assert edges_off["fp"] > edges_on["fp"] and edges_off["tp"] == edges_on["tp"]
    try:
        sweep("nosuch.field", ["1"], seeds=(1,), only=["honest day"], console=quiet)
    except ValueError as exc:
        assert "section.field" in str(exc)
    else:
        raise AssertionError("an unknown section must be refused")
