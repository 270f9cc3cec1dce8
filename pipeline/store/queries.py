"""Report queries on the store: what the run summary and analysts read.

Every query reads with FINAL so replayed or retried inserts count once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from pipeline.store.client import Store


@dataclass(slots=True)
class RepSummary:
    device_id: str
    km: float = 0.0
    visits: int = 0  # verified visits only
    customers: int = 0
    unverified_visits: int = 0  # visits overlapping an anti-cheat episode
    minutes_at_customers: float = 0.0
    fence_entries: int = 0
    fence_exits: int = 0
    spoof_alerts: int = 0
    other_alerts: int = 0
    lost_contact: list[str] = field(default_factory=list)  # reasons, one per period


def rep_summaries(store: Store, org_id: str, start_ms: int, end_ms: int) -> list[RepSummary]:
    """Per device between start and end (event time): the figures a manager looks at first."""
    db = store.database
    params = {"org": org_id, "start": start_ms / 1000.0, "end": end_ms / 1000.0}
    window = (
        "org_id = {org:String} AND ts >= toDateTime64({start:Float64}, 3) "
        "AND ts < toDateTime64({end:Float64}, 3)"
    )
    reps: dict[str, RepSummary] = {}

    def rep(device_id: str) -> RepSummary:
        return reps.setdefault(device_id, RepSummary(device_id))

    for device_id, km in store.query(
        f"SELECT device_id, sum(step_m) / 1000 FROM {db}.track_points FINAL "
        f"WHERE {window} GROUP BY device_id",
        params,
    ).rows:
        rep(device_id).km = float(km)
    for device_id, n, customers, minutes, unverified in store.query(
        f"SELECT device_id, countIf(verified), uniqExactIf(customer_id, verified), "
        f"sumIf(minutes, verified), countIf(NOT verified) "
        f"FROM {db}.visits FINAL WHERE {window.replace('ts', 'arrive')} GROUP BY device_id",
        params,
    ).rows:
        r = rep(device_id)
        r.visits, r.customers, r.minutes_at_customers = int(n), int(customers), float(minutes)
        r.unverified_visits = int(unverified)
    for device_id, entries, exits in store.query(
        f"SELECT device_id, countIf(transition = 'enter'), countIf(transition = 'exit') "
        f"FROM {db}.fence_events FINAL WHERE {window} GROUP BY device_id",
        params,
    ).rows:
        r = rep(device_id)
        r.fence_entries, r.fence_exits = int(entries), int(exits)
    # lost-contact alert id -> reason; the restored alert carries the refined reason (late
    # state events, buffered pings) and names the lost-contact alert it closes.
    lost: dict[str, dict[str, str]] = defaultdict(dict)
    for alert_id, device_id, alert_type, evidence in store.query(
        f"SELECT id, device_id, type, evidence FROM {db}.alerts FINAL WHERE {window} ORDER BY ts",
        params,
    ).rows:
        r = rep(device_id)
        if alert_type.startswith("spoof_"):
            r.spoof_alerts += 1
        elif alert_type == "lost_contact":
            lost[device_id][alert_id] = evidence.get("reason", "unknown")
        elif alert_type == "contact_restored":
            closed = evidence.get("lost_contact_id", "")
            if closed in lost[device_id]:
                lost[device_id][closed] = evidence.get("reason", lost[device_id][closed])
        else:
            r.other_alerts += 1
    for device_id, episodes in lost.items():
        rep(device_id).lost_contact = list(episodes.values())
    return sorted(reps.values(), key=lambda r: r.device_id)


def reason_counts(summaries: list[RepSummary]) -> Counter[str]:
    return Counter(reason for s in summaries for reason in s.lost_contact)
