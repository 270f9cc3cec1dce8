"""The Grafana dashboards: the committed JSON is what `fieldtrack dashboards` generates and is
valid dashboard JSON, and every panel's SQL runs on a simulated day in chDB and shows what the
day guarantees (the spoofer's alerts, the forbidden rep's zone time, mileage...)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pipeline.cli import main
from pipeline.config import Settings, StoreSettings
from pipeline.replay import replay_file
from pipeline.sim import build_city, simulate, write_simulation
from pipeline.store import dashboards as dash
from pipeline.store.client import Store
from pipeline.store.reference import save_customers, save_fences

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DAY = dt.date(2026, 11, 20)  # a Friday: work hours 08:00-18:00 Europe/Berlin
PROFILES = {"rep-001": "honest", "rep-002": "spoofer_mock", "rep-003": "forbidden",
            "rep-004": "phone_off"}  # fmt: skip
ORG = "demo"
UTC = dt.UTC


# -- the committed files ----------------------------------------------------------------------


def test_committed_dashboards_are_the_generated_ones() -> None:
    files = dash.dashboard_files()
    on_disk = {p.name for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == set(files), "run `fieldtrack dashboards`"
    for name, text in files.items():
        committed = (GRAFANA / "dashboards" / name).read_text(encoding="utf-8")
        assert committed == text, f"{name} is stale: run `fieldtrack dashboards`"


def _provisioned_uid() -> str:
    text = (GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
    assert "type: grafana-clickhouse-datasource" in text
    uids = re.findall(r"^\s*uid:\s*(\S+)\s*$", text, re.M)
    assert len(uids) == 1
    return uids[0]


def test_dashboard_json_is_valid_grafana() -> None:
    uid = _provisioned_uid()
    assert uid == dash.DATASOURCE_UID
    builtin = {"__all"}
    n_panels = 0
    for name in dash.dashboard_files():
        d = json.loads((GRAFANA / "dashboards" / name).read_text(encoding="utf-8"))
        assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
        assert d["uid"] + ".json" == name and d["title"] and d["time"]["from"]
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert {"db", "org"} <= set(variables)
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"]["uid"] == uid and v["query"]
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        cells: set[tuple[int, int]] = set()
        for p in d["panels"]:
            n_panels += 1
            assert p["type"] in dash.VIZ_TYPES and p["title"] and p["description"]
            g = p["gridPos"]
            assert {"x", "y", "w", "h"} <= set(g) and g["w"] > 0 and g["x"] + g["w"] <= 24
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}  # fmt: skip
            assert not cells & mine, f"{p['title']} overlaps another panel"
            cells |= mine
            assert p["datasource"]["uid"] == uid
            (target,) = p["targets"]
            assert target["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": uid}
            assert target["editorType"] == "sql" and target["rawSql"].strip()
            assert target["format"] == (0 if p["type"] == "timeseries" else 1)
            used = set(re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(?!__)(\w+)", target["rawSql"]))
            for name_a, name_b in used:
                assert (name_a or name_b) in set(variables) | builtin, (p["title"], used)
            if p["type"] == "geomap":
                layer = p["options"]["layers"][0]
                (sql_cols,) = [q.columns for q in dash.all_panels() if q.title == p["title"]]
                assert layer["location"]["latitude"] in sql_cols
                assert layer["location"]["longitude"] in sql_cols
    assert len(dash.DASHBOARDS) == 2 and 10 <= n_panels <= 16


def test_provisioning_points_at_the_dashboards() -> None:
    provider = (GRAFANA / "provisioning" / "dashboards" / "fieldtrack.yaml").read_text()
    compose = (ROOT / "deploy" / "docker-compose.yml").read_text()
    path = re.search(r"^\s*path:\s*(\S+)\s*$", provider, re.M)
    assert path, provider
    # the provider reads where compose mounts the generated JSON
    assert f"./grafana/dashboards:{path.group(1)}" in compose
    assert "./grafana/provisioning:/etc/grafana/provisioning" in compose
    assert "GF_INSTALL_PLUGINS: grafana-clickhouse-datasource" in compose
    for setting in re.findall(r"^\s+(FIELDTRACK_\w+):", compose, re.M):
        if setting not in ("FIELDTRACK_CLICKHOUSE_URL", "FIELDTRACK_DATA_DIR"):  # aliases
            section, _, name = setting.removeprefix("FIELDTRACK_").lower().partition("__")
            assert name in Settings().as_dict()[section], setting  # a real setting name
    for command in ("gateway", "worker", "sink", "topics create"):
        assert command in compose


def test_deploy_yaml_parses() -> None:
    import yaml  # the [dev] extra

    for path_ in [*GRAFANA.rglob("*.yaml"), ROOT / "deploy" / "docker-compose.yml"]:
        assert yaml.safe_load(path_.read_text()), path_


def test_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dashboards"
    assert main(["dashboards", "--check", "--out", str(out)]) == 1
    assert main(["dashboards", "--out", str(out)]) == 0
    assert main(["dashboards", "--check", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["dashboards", "--sql", "mileage", "--day", "2026-11-20"]) == 0
    printed = capsys.readouterr().out
    assert "fieldtrack.track_points FINAL" in printed and "$__" not in printed


# -- substitution -----------------------------------------------------------------------------


def test_render_sql_expands_macros_and_variables() -> None:
    start = dt.datetime(2026, 11, 20, 7, tzinfo=UTC)
    end = dt.datetime(2026, 11, 20, 17, tzinfo=UTC)
    sql = (
        "SELECT $__timeInterval(ts) AS t FROM ${db}.x WHERE $__timeFilter(ts) "
        "AND org_id = '${org}' AND $__conditionalAll(device_id IN (${device:singlequote}), "
        "$device) AND ts < $__toTime AND ts > $__fromTime AND ms > $__fromTime_ms "
        "AND $__timeFilter_ms(ts) AND n = $__interval_s"
    )
    all_ = dash.render_sql(sql, start, end, "o'rg", database="db1", interval_s=30)
    s, e = int(start.timestamp()), int(end.timestamp())
    assert f"ts >= toDateTime({s}) AND ts <= toDateTime({e})" in all_
    assert "toStartOfInterval(toDateTime(ts), INTERVAL 30 second)" in all_
    assert "FROM db1.x" in all_ and "org_id = 'o\\'rg'" in all_ and "AND 1=1 AND" in all_
    assert f"ms > fromUnixTimestamp64Milli({s * 1000})" in all_ and "n = 30" in all_
    some = dash.render_sql(sql, start, end, "o", ["a", "b"])
    assert "device_id IN ('a','b')" in some and "$" not in some
    with pytest.raises(ValueError, match="unknown macro"):
        dash.render_sql("SELECT $__unknown(x)", start, end, "o")
    with pytest.raises(ValueError, match="unknown macro"):
        dash.render_sql("SELECT ${other}", start, end, "o")
    with pytest.raises(ValueError, match="timezone-aware"):
        dash.render_sql("SELECT 1", start.replace(tzinfo=None), end, "o")
    thirty = dash.render_panel_sql(dash.panel("spoof_30d"), start, end, "o")
    assert f"toDateTime({e - 30 * 86400})" in thirty


# -- every panel on a simulated day -----------------------------------------------------------


class Day:
    """A simulated day replayed through the real pipeline into a chDB database of its own."""

    def __init__(self, store: Store, database: str) -> None:
        self.store = store
        self.database = database

    def run(
        self,
        key: str,
        start: dt.datetime,
        end: dt.datetime,
        devices: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        p = dash.panel(key)
        sql = dash.render_panel_sql(p, start, end, ORG, devices, self.database)
        # DESCRIBE: the columns even when a window has no rows (chDB returns no names then)
        described = self.store.query(f"DESCRIBE TABLE ({sql})", readonly=True).rows
        assert [r[0] for r in described] == list(p.columns), key
        result = self.store.query(sql, readonly=True)  # Grafana's user should be read-only
        return [dict(zip(p.columns, row, strict=True)) for row in result.rows]

    def scalar(self, sql: str) -> Any:
        return self.store.query(sql.replace("DB.", f"{self.database}.")).rows[0][0]


@pytest.fixture(scope="module")
def day(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    settings = Settings()
    settings.store = StoreSettings(data_dir=str(chdb_dir), database="tdashboards")
    store = Store(settings.store)
    store.command("DROP DATABASE IF EXISTS tdashboards")
    store.apply_schema()
    out = tmp_path_factory.mktemp("dash-sim")
    city = build_city()
    assert city.org_id == ORG
    write_simulation(simulate(city, reps=4, day=DAY, profiles=PROFILES), city, out)
    save_customers(store, city.customers)
    save_fences(store, city.fence_features, city.org_id)
    # Two records the validator rejects, so the dead-letter panels have rows: inserted where
    # their upload time belongs (the replay clock follows the file and only moves forward).
    noon = int(dt.datetime.combine(DAY, dt.time(12), UTC).timestamp() * 1000)
    events = out / "events.jsonl"
    lines = events.read_text(encoding="utf-8").splitlines(keepends=True)
    at_noon = next(i for i, line in enumerate(lines) if json.loads(line)["send_ms"] > noon)
    bad = [json.dumps({"endpoint": "pings", "send_ms": noon, "device_id": "rep-001", "seq": seq,
                       "ts_ms": noon - 1000, "lat": lat, "lon": 13.4, "accuracy_m": 5.0}) + "\n"
           for seq, lat in ((900001, 123.0), (900002, -95.5))]  # fmt: skip
    events.write_text("".join(lines[:at_noon] + bad + lines[at_noon:]), encoding="utf-8")
    quiet = Console(file=io.StringIO())
    asyncio.run(replay_file(settings, store, out / "events.jsonl", ORG, quiet))
    try:
        yield Day(store, "tdashboards")
    finally:
        store.command("DROP DATABASE IF EXISTS tdashboards")
        store.close()


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(hour, minute), UTC)


def test_every_panel_runs_and_shows_the_day(day: Day) -> None:
    start, end = at(0), at(17, 15)  # "now" = 17:15 UTC, just after work hours (18:00 Berlin)
    seen = {}
    for p in dash.all_panels():
        seen[p.key] = day.run(p.key, start, end)
        subset = day.run(p.key, start, end, ["rep-001"])
        if "device_id" in p.columns and "$device" in p.sql:
            assert {r["device_id"] for r in subset} <= {"rep-001"}, p.key
    assert set(seen) == {p.key for p in dash.all_panels()}

    (fleet,) = seen["fleet_now"]
    assert fleet["reporting"] >= 1 and fleet["critical_alerts"] >= 2
    assert fleet["dead_letters"] == 2 and fleet["upload_delay_p95_s"] > 0

    live = {r["device_id"]: r for r in seen["live_map"]}
    assert set(live) == set(PROFILES)
    for r in live.values():
        assert 52.3 < r["latitude"] < 52.7 and 13.1 < r["longitude"] < 13.8
        assert r["status"] in ("moving", "stopped", "silent") and r["minutes_ago"] >= 0

    alerts = seen["open_alerts"]
    assert [a["ts"] for a in alerts] == sorted((a["ts"] for a in alerts), reverse=True)
    kinds = {(a["device_id"], a["type"]) for a in alerts}
    assert ("rep-002", "spoof_mock_flag") in kinds and ("rep-003", "forbidden_zone") in kinds
    assert all(a["type"] != "contact_restored" and a["details"] for a in alerts)
    assert {a["severity"] for a in alerts} <= {"critical", "warning", "info"}

    rates = {r["series"] for r in seen["ingest_rate"] if r["per_minute"] > 0}
    assert {"pings", "device states", "dead letters"} <= rates
    assert sum(r["records"] for r in seen["dead_letters"]) == 2
    assert max(r["mock_pct"] for r in seen["track_quality"]) > 0

    per_rep = {r["device_id"]: r for r in seen["visits_per_rep"]}
    assert per_rep["rep-001"]["verified_visits"] >= 3 and per_rep["rep-001"]["customers"] >= 3
    assert per_rep["rep-002"]["verified_visits"] == 0
    assert per_rep["rep-002"]["unverified_visits"] > 0
    assert "spoof_mock_flag" in per_rep["rep-002"]["unverified_reasons"]
    unverified = seen["unverified_visits"]
    assert unverified and {r["device_id"] for r in unverified} == {"rep-002"}
    assert all(r["reasons"] and r["customer"] for r in unverified)
    minutes = {r["device_id"]: r["grade_A"] + r["grade_B"] + r["grade_C"]
               for r in seen["time_at_customers"]}  # fmt: skip
    assert minutes["rep-001"] > 60 and "rep-002" not in minutes  # no verified visit

    due = seen["customers_due"]
    verified = f"SELECT DISTINCT customer_id FROM {day.database}.visits FINAL WHERE verified"
    visited = {r[0] for r in day.store.query(verified).rows}
    assert due and {r["grade"] for r in due} <= {"A", "B", "C"}
    assert visited and not visited & {r["customer_id"] for r in due}  # visited today: not due
    n_customers = day.scalar("SELECT count() FROM DB.customers FINAL")
    assert len(due) == min(500, n_customers - len(visited))

    km = {r["device_id"]: r for r in seen["mileage"]}
    assert km["rep-001"]["km"] > 5 and km["rep-003"]["km"] > 5
    assert all(r["raw_km"] >= r["km"] for r in km.values())  # raw jitter only adds distance

    spoof = seen["spoof_30d"]
    assert {r["device_id"] for r in spoof} == {"rep-002"}
    assert sum(r["alerts"] for r in spoof) >= 1

    fences = seen["fence_events"]
    assert any(r["device_id"] == "rep-003" and r["kind"] == "forbidden" for r in fences)
    assert all(r["fence"] for r in fences)  # every fence event names its fence
    (stay,) = seen["forbidden_time"]
    assert stay["device_id"] == "rep-003" and stay["left_at"] is not None
    assert 10 <= stay["minutes"] <= 40  # the profile spends 15-35 min in the zone

    track = day.run("trajectory", at(6), end, ["rep-001"])
    assert len(track) > 100 and {r["device_id"] for r in track} == {"rep-001"}


def test_lost_contact_now_follows_the_window_end(day: Day) -> None:
    """The phone_off rep is listed while its silence is open and not once contact returns."""
    lost_ms, restored_ms = day.store.query(
        f"SELECT toUnixTimestamp64Milli(minIf(ts, type = 'lost_contact')), "
        f"toUnixTimestamp64Milli(minIf(ts, type = 'contact_restored')) "
        f"FROM {day.database}.alerts FINAL WHERE device_id = 'rep-004'"
    ).rows[0]
    assert 0 < lost_ms < restored_ms
    during = dt.datetime.fromtimestamp((lost_ms + restored_ms) / 2000, UTC)
    after = dt.datetime.fromtimestamp(restored_ms / 1000 + 120, UTC)
    rows = day.run("lost_contact", at(0), during)
    (rep4,) = [r for r in rows if r["device_id"] == "rep-004"]
    assert rep4["minutes_silent"] >= 10 and rep4["likely_reason"]
    assert 52.3 < rep4["last_lat"] < 52.7
    assert "rep-004" not in {r["device_id"] for r in day.run("lost_contact", at(0), after)}
    (fleet,) = day.run("fleet_now", at(0), during)
    assert fleet["lost_contact"] >= 1


def test_variables_list_the_org_and_its_reps(day: Day) -> None:
    start, end = at(0), at(23, 59)
    org = dash.render_sql(dash.ORG_VAR.query, start, end, ORG, database=day.database)
    assert day.store.query(org, readonly=True).rows == [(ORG,)]
    reps = dash.render_sql(dash.DEVICE_VAR.query, start, end, ORG, database=day.database)
    assert [r[0] for r in day.store.query(reps, readonly=True).rows] == sorted(PROFILES)
