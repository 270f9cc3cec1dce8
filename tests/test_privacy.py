"""Work-hours privacy filter (pipeline.processors.privacy)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from pipeline.events import Ping
from pipeline.processors.base import Ctx, Result
from pipeline.processors.privacy import PrivacyFilter, PrivacyParams, inside_work_hours
from pipeline.reference import ReferenceData
from pipeline.reference.models import Schedule

ORG, DEV = "acme", "rep-1"
BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = Schedule.parse("mon-fri 08:00-18:00 Europe/Berlin")
NIGHT = Schedule.parse("mon-fri 22:00-06:00 Europe/Berlin")


def berlin_ms(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    local = dt.datetime(year, month, day, hour, minute, tzinfo=BERLIN)
    return int(local.timestamp() * 1000)


def utc_ms(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp() * 1000)


def ping(ts: int, seq: int = 1) -> Ping:
    return Ping(ORG, DEV, seq, ts, 52.52, 13.40, 8.0)


def test_office_hours_follow_berlin_across_the_spring_dst_change() -> None:
    # Friday 2024-03-29 is CET (UTC+1); DST starts Sunday 2024-03-31; Monday is CEST (UTC+2).
    assert not inside_work_hours(utc_ms(2024, 3, 29, 6, 59), OFFICE)  # 07:59 local
    assert inside_work_hours(utc_ms(2024, 3, 29, 7, 0), OFFICE)  # 08:00 local
    assert inside_work_hours(utc_ms(2024, 3, 29, 16, 59), OFFICE)  # 17:59 local
    assert not inside_work_hours(utc_ms(2024, 3, 29, 17, 0), OFFICE)  # 18:00 local
    assert not inside_work_hours(utc_ms(2024, 4, 1, 5, 59), OFFICE)  # 07:59 CEST
    assert inside_work_hours(utc_ms(2024, 4, 1, 6, 0), OFFICE)  # 08:00 CEST
    assert inside_work_hours(utc_ms(2024, 4, 1, 15, 59), OFFICE)  # 17:59 CEST
    assert not inside_work_hours(utc_ms(2024, 4, 1, 16, 0), OFFICE)  # 18:00 CEST


def test_office_hours_across_the_autumn_dst_change() -> None:
    # DST ends Sunday 2024-10-27; Friday before is CEST, Monday after is CET.
    assert inside_work_hours(utc_ms(2024, 10, 25, 6, 0), OFFICE)  # 08:00 CEST
    assert not inside_work_hours(utc_ms(2024, 10, 28, 6, 30), OFFICE)  # 07:30 CET
    assert inside_work_hours(utc_ms(2024, 10, 28, 7, 0), OFFICE)  # 08:00 CET


def test_weekend_is_outside_office_hours() -> None:
    assert not inside_work_hours(berlin_ms(2024, 3, 30, 10), OFFICE)  # Saturday
    assert not inside_work_hours(berlin_ms(2024, 3, 31, 12), OFFICE)  # Sunday (DST day)


def test_no_schedule_means_all_hours() -> None:
    assert inside_work_hours(berlin_ms(2024, 3, 31, 3), None)


def test_overnight_shift_belongs_to_the_day_it_starts() -> None:
    assert inside_work_hours(berlin_ms(2024, 3, 29, 23), NIGHT)  # Friday night
    assert inside_work_hours(berlin_ms(2024, 3, 30, 3), NIGHT)  # Saturday 03:00: Friday's shift
    assert not inside_work_hours(berlin_ms(2024, 3, 30, 6), NIGHT)  # shift ended at 06:00
    assert not inside_work_hours(berlin_ms(2024, 3, 30, 23), NIGHT)  # no Saturday shift
    assert not inside_work_hours(berlin_ms(2024, 4, 1, 3), NIGHT)  # Monday 03:00: Sunday's
    assert not inside_work_hours(berlin_ms(2024, 4, 1, 21, 59), NIGHT)
    assert inside_work_hours(berlin_ms(2024, 4, 1, 22), NIGHT)  # Monday's shift starts
    # Sunday night across the spring DST jump: 02:00 local does not exist, still no shift.
    assert not inside_work_hours(utc_ms(2024, 3, 31, 1, 30), NIGHT)


def test_filter_drops_and_counts_pings_outside_hours() -> None:
    times = [
        berlin_ms(2024, 3, 29, 7, 59),  # Friday before work
        berlin_ms(2024, 3, 29, 8, 0),
        berlin_ms(2024, 3, 29, 17, 59),
        berlin_ms(2024, 3, 29, 18, 0),  # after work
        berlin_ms(2024, 3, 30, 12),  # Saturday
        berlin_ms(2024, 4, 1, 8, 30),  # Monday, now CEST
    ]
    pings = [ping(ts, seq) for seq, ts in enumerate(times)]
    out = Result()
    ctx = Ctx(ORG, DEV, times[-1], ReferenceData(), OFFICE)
    kept = PrivacyFilter().process(pings, ctx, out)
    assert [p.seq for p in kept] == [1, 2, 5]
    assert out.counters == {"outside_hours": 3}


def test_filter_matches_the_schedule_for_every_ping_of_a_dense_track() -> None:
    """The once-per-minute shortcut must agree with a per-ping decision, seconds apart."""
    start = berlin_ms(2024, 3, 29, 17, 50)
    pings = [ping(start + i * 7_321, i) for i in range(0, 200)]  # 17:50 to ~18:14
    out = Result()
    kept = PrivacyFilter().process(pings, Ctx(ORG, DEV, start, ReferenceData(), OFFICE), out)
    expected = [p.seq for p in pings if OFFICE.is_active(p.ts_ms)]
    assert [p.seq for p in kept] == expected
    assert 0 < len(expected) < len(pings)
    assert out.counters["outside_hours"] == len(pings) - len(expected)


def test_no_schedule_or_disabled_keeps_everything() -> None:
    pings = [ping(berlin_ms(2024, 3, 30, 12))]  # Saturday
    out = Result()
    assert PrivacyFilter().process(pings, Ctx(ORG, DEV, 0, ReferenceData(), None), out) == pings
    disabled = PrivacyFilter(PrivacyParams(enabled=False))
    assert disabled.process(pings, Ctx(ORG, DEV, 0, ReferenceData(), OFFICE), out) == pings
    assert out.counters == {}


def test_memoised_schedule_answers_like_a_fresh_one_across_dst_and_odd_offsets() -> None:
    """`is_active` remembers answers per UTC minute; every answer must equal an unmemoised
    one: across both Berlin DST changes (minute by minute), in a half-hour zone, and in 1890
    Amsterdam (+00:19:32 local mean time: a UTC minute spans two local minutes, not memoised)."""
    cases = [
        ("Europe/Berlin", dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC), 180),
        ("Europe/Berlin", dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC), 180),
        ("Asia/Kolkata", dt.datetime(2026, 11, 23, 2, 0, tzinfo=dt.UTC), 120),
        ("Europe/Amsterdam", dt.datetime(1890, 6, 2, 7, 30, tzinfo=dt.UTC), 60),
    ]
    for tz, start, minutes in cases:
        local_start = start.astimezone(ZoneInfo(tz))
        begin = (local_start.hour * 60 + local_start.minute + 10) % 1440
        spec = {"tz": tz, "days": "mon-sun", "start": f"{begin // 60:02d}:{begin % 60:02d}"}
        memoised = Schedule.parse({**spec, "end": "23:59"})
        base = int(start.timestamp() * 1000)
        changes = 0
        for second in range(0, minutes * 60, 7):  # every 7 s: many per minute, both edges
            ts = base + second * 1000
            fresh = Schedule.parse({**spec, "end": "23:59"}).is_active(ts)
            assert memoised.is_active(ts) == fresh, (tz, ts)
            changes += fresh
        assert 0 < changes < minutes * 60 // 7  # the window holds a start of the hours
    lmt = Schedule.parse({"tz": "Europe/Amsterdam", "days": "mon-sun", "start": "08:00"})
    lmt.is_active(int(dt.datetime(1890, 6, 2, 7, 40, tzinfo=dt.UTC).timestamp() * 1000))
    assert not lmt._memo  # a UTC minute is not one local minute there
