"""The store on the real embedded ClickHouse engine (chDB)."""

from __future__ import annotations

import time

import pytest

from pipeline.config import StoreSettings
from pipeline.events import (
    Alert,
    DeadLetter,
    DeviceState,
    Dwell,
    FenceEvent,
    Ping,
    TrackFlag,
    TrackPoint,
    Visit,
)
from pipeline.store.client import Store
from pipeline.store.rows import TABLES
from pipeline.store.schema import render_ddl, table_names

# recent: raw tables have a retention TTL, and older rows are dropped on arrival
T0 = (int(time.time()) - 86_400) * 1000


def sample_rows() -> dict[str, list[object]]:
    return {
        "raw_pings": [
            Ping("o", "d1", 1, T0, 52.5, 13.4, 8.0, 3.5, 90.0, None, "gps", False, 77.0, T0 + 40),
            Ping("o", "d1", 2, T0 + 5000, 52.5001, 13.4001, 9.0),
        ],
        "device_states": [DeviceState("o", "d1", T0, "gps_off", None, T0 + 10)],
        "track_points": [
            TrackPoint("o", "d1", 1, T0, 52.5, 13.4, 52.50001, 13.40001, 8.0, 3.4, 91.0, True,
                       17.0, int(TrackFlag.MOCK | TrackFlag.LATE)),
        ],
        "dwells": [Dwell("dw1", "o", "d1", T0, T0 + 600_000, 52.5, 13.4, 25.0, 100, "closed",
                         "moved", "c1", 2)],
        "visits": [Visit("v1", "o", "d1", "c1", "dw1", T0, T0 + 600_000, 10.0, 12.5, "A")],
        "fence_events": [FenceEvent("f1", "o", "d1", "office", "office", "enter", T0, 52.5,
                                    13.4, 8.0)],
        "alerts": [Alert("a1", "o", "d1", T0, "spoof_mock_flag", "critical", "mock",
                         {"count": "3"})],
        "dead_letters": [DeadLetter("x1", "o", "d1", T0, "gateway", "lat out of range",
                                    b'{"lat": 200}')],
    }  # fmt: skip


def test_every_table_in_the_ddl_has_a_row_mapping() -> None:
    derived = set(TABLES)
    reference = {"customers", "fences", "devices"}
    assert set(table_names()) == derived | reference


def test_schema_applies_twice_and_rows_round_trip(store: Store) -> None:
    store.apply_schema()  # idempotent
    for table, rows in sample_rows().items():
        spec = TABLES[table]
        store.insert(table, spec.to_columns(rows), spec.columns)
    db = store.database
    flags = store.query(f"SELECT flags, step_m FROM {db}.track_points").rows
    assert flags == [(["late", "mock"], 17.0)]
    ts = store.query(f"SELECT toUnixTimestamp64Milli(ts) FROM {db}.raw_pings ORDER BY seq").rows
    assert ts == [(T0,), (T0 + 5000,)]
    nulls = store.query(f"SELECT speed_mps, battery_pct FROM {db}.raw_pings ORDER BY seq").rows
    assert nulls[1] == (None, None)
    evidence = store.query(f"SELECT evidence['count'] FROM {db}.alerts").rows
    assert evidence == [("3",)]
    payload = store.query(f"SELECT payload FROM {db}.dead_letters").rows
    assert payload == [('{"lat": 200}',)]


def test_replayed_inserts_keep_one_copy(store: Store) -> None:
    db = store.database
    for _ in range(3):
        for table, rows in sample_rows().items():
            spec = TABLES[table]
            store.insert(table, spec.to_columns(rows), spec.columns)
    for table, rows in sample_rows().items():
        (count,) = store.query(f"SELECT count() FROM {db}.{table} FINAL").rows[0]
        assert count == len(rows), table
        (raw,) = store.query(f"SELECT count() FROM {db}.{table}").rows[0]
        assert raw == 3 * len(rows)  # duplicates exist until merged: FINAL is what dedups


def test_closed_dwell_replaces_open_one(store: Store) -> None:
    spec = TABLES["dwells"]
    opened = Dwell("dw", "o", "d", T0, T0 + 300_000, 52.5, 13.4, 20.0, 60, "open", "", "c", 1)
    closed = Dwell("dw", "o", "d", T0, T0 + 900_000, 52.5, 13.4, 22.0, 180, "closed", "moved",
                   "c", 2)  # fmt: skip
    store.insert("dwells", spec.to_columns([closed]), spec.columns)
    store.insert("dwells", spec.to_columns([opened]), spec.columns)  # arrives after: older
    rows = store.query(f"SELECT status, n_points FROM {store.database}.dwells FINAL").rows
    assert rows == [("closed", 180)]


def test_readonly_query_refuses_writes(store: Store) -> None:
    with pytest.raises(Exception, match=r"(?i)readonly"):
        store.query(f"INSERT INTO {store.database}.visits (id) VALUES ('x')", readonly=True)


def test_cluster_ddl_uses_replicated_engines() -> None:
    ddl = render_ddl(StoreSettings(cluster="main", database="ft"))
    assert ddl[0] == "CREATE DATABASE IF NOT EXISTS ft ON CLUSTER main"
    assert all("ON CLUSTER main" in s for s in ddl)
    dwells = next(s for s in ddl if "ft.dwells" in s)
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ft/dwells', '{replica}', version)"
        in dwells
    )
    single = render_ddl(StoreSettings(database="ft"))
    assert not any("Replicated" in s or "${" in s for s in single)
