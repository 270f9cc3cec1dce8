"""The HTTP gateway in front of the embedded pipeline: real server on loopback, real chDB."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.reference.models import Schedule
from pipeline.service import EmbeddedService
from pipeline.store.client import Store


def _recent_wednesday_10am() -> int:
    """Inside work hours, and recent enough for the raw tables' retention TTL."""
    berlin = ZoneInfo("Europe/Berlin")
    day = dt.date.today() - dt.timedelta(days=7)
    while day.weekday() != 2:
        day += dt.timedelta(days=1)
    return int(dt.datetime.combine(day, dt.time(10), berlin).timestamp() * 1000)


NOW = _recent_wednesday_10am()
WORK = Schedule.parse("mon-fri 08:00-18:00 Europe/Berlin")


@pytest.fixture
async def service(settings: Settings, store: Store) -> AsyncIterator[EmbeddedService]:
    svc = EmbeddedService(settings, clock=ManualClock(NOW), auto_tick=False,
                          restore_state=False, store=store)  # fmt: skip
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def http(service: EmbeddedService) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(service.url) as session:
        yield session


def ping(seq: int, **over: object) -> dict[str, object]:
    base = {"seq": seq, "ts_ms": NOW - 60_000 + seq * 5000, "lat": 52.52 + seq * 1e-4,
            "lon": 13.405, "accuracy_m": 8.0}  # fmt: skip
    return {**base, **over}


async def count(service: EmbeddedService, sql: str) -> int:
    assert service.store is not None
    return int(service.store.query(sql).rows[0][0])


async def test_auth_is_required(service: EmbeddedService, http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/pings", json=[ping(1)]) as r:
        assert r.status == 401
        assert "Bearer" in r.headers["WWW-Authenticate"]
    async with http.post("/v1/pings", json=[ping(1)],
                         headers={"Authorization": "Bearer ft_wrong"}) as r:  # fmt: skip
        assert r.status == 401
        assert "unknown" in (await r.json())["error"]


async def test_good_and_bad_records_in_one_batch(
    service: EmbeddedService, http: aiohttp.ClientSession
) -> None:
    token = await service.add_device("acme", "rep-1", schedule=WORK)
    body = [
        ping(1),
        ping(2, lat=float("nan")),  # NaN literal: Python's JSON writes it
        ping(3, lat=91.0),
        ping(4, lat="north"),
        ping(5, ts_ms=NOW + 3_600_000),
        ping(6, lat=0.0, lon=0.0),
        ping(7),
    ]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post("/v1/pings", data=json.dumps(body), headers=headers) as r:
        assert r.status == 202
        payload = await r.json()
    assert payload["accepted"] == 2
    assert [e["index"] for e in payload["rejected"]] == [1, 2, 3, 4, 5]
    assert all(e["reason"] for e in payload["rejected"])
    db = service.settings.store.database
    # 202 means durable: the accepted pings are in the raw table already
    assert await count(service, f"SELECT count() FROM {db}.raw_pings FINAL") == 2
    assert await count(service, f"SELECT count() FROM {db}.dead_letters FINAL") == 5
    assert (
        await count(service, f"SELECT count() FROM {db}.dead_letters WHERE device_id = 'rep-1'")
        == 5
    )


async def test_malformed_body_is_400_and_dead_lettered(
    service: EmbeddedService, http: aiohttp.ClientSession
) -> None:
    token = await service.add_device("acme", "rep-2")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post("/v1/pings", data=b"{not json", headers=headers) as r:
        assert r.status == 400
        assert (await r.json())["error"]
    async with http.post("/v1/pings", data=b"[]", headers=headers) as r:
        assert r.status == 400
    db = service.settings.store.database
    rows = service.store.query(f"SELECT payload FROM {db}.dead_letters FINAL").rows  # type: ignore[union-attr]
    assert rows == [("{not json",)]


async def test_all_bad_is_422(service: EmbeddedService, http: aiohttp.ClientSession) -> None:
    token = await service.add_device("acme", "rep-3")
    async with http.post("/v1/pings", json=[ping(1, accuracy_m=-3)],
                         headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
        assert r.status == 422
        assert "accuracy" in (await r.json())["rejected"][0]["reason"]


async def test_size_limits(service: EmbeddedService, http: aiohttp.ClientSession) -> None:
    token = await service.add_device("acme", "rep-4")
    headers = {"Authorization": f"Bearer {token}"}
    limit = service.settings.gateway.max_batch_records
    async with http.post("/v1/pings", json=[ping(i) for i in range(limit + 1)],
                         headers=headers) as r:  # fmt: skip
        assert r.status == 413
    huge = b"[" + b" " * (service.settings.gateway.max_body_bytes + 10) + b"]"
    async with http.post("/v1/pings", data=huge, headers=headers) as r:
        assert r.status == 413


async def test_privacy_drops_outside_work_hours(
    service: EmbeddedService, http: aiohttp.ClientSession
) -> None:
    token = await service.add_device("acme", "rep-5", schedule=WORK)
    night = NOW - 12 * 3_600_000  # 22:00 the evening before
    async with http.post("/v1/pings", json=[ping(1), ping(2, ts_ms=night)],
                         headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
        assert r.status == 202
        payload = await r.json()
    assert payload["accepted"] == 1
    assert payload["dropped_outside_work_hours"] == 1
    db = service.settings.store.database
    assert await count(service, f"SELECT count() FROM {db}.raw_pings WHERE seq = 2") == 0


async def test_device_states_and_processing(
    service: EmbeddedService, http: aiohttp.ClientSession
) -> None:
    token = await service.add_device("acme", "rep-6")
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post("/v1/device-states", json=[{"ts_ms": NOW - 1000, "kind": "gps_off"},
                                                    {"ts_ms": NOW, "kind": "warp_drive"}],
                         headers=headers) as r:  # fmt: skip
        assert r.status == 202
        assert (await r.json())["rejected"][0]["index"] == 1
    async with http.post("/v1/pings", json=[ping(i) for i in range(1, 11)],
                         headers=headers) as r:  # fmt: skip
        assert r.status == 202
    assert service.pipeline is not None
    await service.pipeline.drain()
    service.pipeline.tick_all(final=True)
    await service.pipeline.sink.flush()
    db = service.settings.store.database
    assert await count(service, f"SELECT count() FROM {db}.device_states FINAL") == 1
    assert await count(service, f"SELECT count() FROM {db}.track_points FINAL") == 10


async def test_health_metrics_and_admin(
    service: EmbeddedService, http: aiohttp.ClientSession
) -> None:
    async with http.get("/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"
    token = await service.add_device("acme", "rep-7")
    async with http.post("/v1/pings", json=[ping(1)],
                         headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
        assert r.status == 202
    async with http.get("/metrics") as r:
        text = await r.text()
    assert 'fieldtrack_records_total{kind="ping",outcome="accepted"} 1.0' in text
    db = service.settings.store.database
    admin = {"Authorization": f"Bearer {service.admin_token}"}
    async with http.post("/v1/admin/query", json={"sql": f"SELECT count() FROM {db}.raw_pings"},
                         headers=admin) as r:  # fmt: skip
        assert r.status == 200
        assert (await r.json())["rows"] == [[1]]
    async with http.post("/v1/admin/query", json={"sql": f"DROP TABLE {db}.raw_pings"},
                         headers=admin) as r:  # fmt: skip
        assert r.status == 400  # read-only
    async with http.post("/v1/admin/query", json={"sql": "SELECT 1"}) as r:
        assert r.status == 401
    assert await count(service, f"SELECT count() FROM {db}.raw_pings") == 1


async def test_store_failure_answers_503_and_claims_nothing(
    service: EmbeddedService, http: aiohttp.ClientSession
) -> None:
    token = await service.add_device("acme", "rep-8")
    assert service.store is not None
    db = service.settings.store.database
    service.store.command(f"RENAME TABLE {db}.raw_pings TO {db}.raw_pings_away")
    try:
        started = time.monotonic()
        async with http.post("/v1/pings", json=[ping(1)],
                             headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
            assert r.status == 503
            assert r.headers["Retry-After"]
        assert time.monotonic() - started < 5
    finally:
        service.store.command(f"RENAME TABLE {db}.raw_pings_away TO {db}.raw_pings")
    assert await count(service, f"SELECT count() FROM {db}.raw_pings") == 0
    async with http.post("/v1/pings", json=[ping(1)],
                         headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
        assert r.status == 202  # the phone's retry succeeds once the store is back


async def test_avro_batch_body(service: EmbeddedService, http: aiohttp.ClientSession) -> None:
    from pipeline import codec
    from pipeline.events import Ping

    token = await service.add_device("acme", "rep-20")
    pings = [Ping("acme", "rep-20", i, NOW - 60_000 + i * 5000, 52.52, 13.405, 6.0)
             for i in range(1, 6)]  # fmt: skip
    body = codec.encode_ping_batch("acme", "rep-20", 0, pings)
    headers = {"Authorization": f"Bearer {token}",
               "Content-Type": "application/vnd.fieldtrack.avro"}  # fmt: skip
    async with http.post("/v1/pings", data=body, headers=headers) as r:
        assert r.status == 202, await r.text()
        assert (await r.json())["accepted"] == 5
    async with http.post("/v1/pings", data=b"\x00\x00\x00\x00\x09junk", headers=headers) as r:
        assert r.status == 400


async def test_traccar_client_osmand_protocol(
    service: EmbeddedService, http: aiohttp.ClientSession
) -> None:
    token = await service.add_device("acme", "phone-osmand")
    params = {"id": token, "timestamp": str(NOW // 1000 - 30), "lat": "52.52", "lon": "13.405",
              "speed": "10", "bearing": "90", "accuracy": "7", "batt": "81"}  # fmt: skip
    async with http.get("/osmand", params=params) as r:
        assert r.status == 200, await r.text()
    traccar9 = {
        "device_id": token,
        "location": {
            "timestamp": dt.datetime.fromtimestamp(NOW / 1000 - 20, dt.UTC).isoformat(),
            "coords": {"latitude": 52.5201, "longitude": 13.405, "accuracy": 5, "speed": 3.0,
                       "heading": 180, "altitude": 40},
            "battery": {"level": 0.8, "is_charging": False},
        },
    }  # fmt: skip
    async with http.post("/osmand", json=traccar9) as r:
        assert r.status == 200, await r.text()
    async with http.get("/osmand", params={**params, "id": "nobody"}) as r:
        assert r.status == 401
    async with http.get("/osmand", params={"id": token, "lat": "52.5"}) as r:
        assert r.status == 400
    db = service.settings.store.database
    rows = service.store.query(  # type: ignore[union-attr]
        f"SELECT round(toFloat64(speed_mps), 2), battery_pct FROM {db}.raw_pings FINAL "
        f"WHERE device_id = 'phone-osmand' ORDER BY ts"
    ).rows
    assert rows == [(5.14, 81.0), (3.0, 80.0)]  # knots from the query form, m/s from JSON


async def test_owntracks_http_mode(service: EmbeddedService, http: aiohttp.ClientSession) -> None:
    token = await service.add_device("acme", "phone-ot")
    auth = {"Authorization": aiohttp.encode_basic_auth("jane", token)}
    location = {"_type": "location", "lat": 52.52, "lon": 13.405, "tst": NOW // 1000 - 10,
                "acc": 12, "vel": 36, "batt": 55, "tid": "JJ"}  # fmt: skip
    async with http.post("/owntracks", json=location, headers=auth) as r:
        assert r.status == 200
        assert await r.json() == []
    async with http.post("/owntracks", json={"_type": "lwt", "tst": 1}, headers=auth) as r:
        assert r.status == 200
    async with http.post(
        "/owntracks",
        json=location,
        headers={"Authorization": aiohttp.encode_basic_auth("jane", "x")},
    ) as r:
        assert r.status == 401
    db = service.settings.store.database
    rows = service.store.query(  # type: ignore[union-attr]
        f"SELECT speed_mps, accuracy_m FROM {db}.raw_pings FINAL WHERE device_id = 'phone-ot'"
    ).rows
    assert rows == [(10.0, 12.0)]  # 36 km/h
