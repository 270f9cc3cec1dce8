"""The one place that wires the processors.

Both drivers call only `Topology.process` (a device's batch arrived) and `Topology.tick`
(processing time passed): the embedded runner with states in a dict, the Faust agents with
states in a changelog-backed table. Per device the order is

    validate/order -> privacy -> contact (sees late pings too) -> spoof -> smooth
                   -> dwell/visit -> fences

and nothing here performs I/O or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.config import ProcessorSettings
from pipeline.events import DeviceState, Ping, TrackFlag
from pipeline.processors.base import Ctx, Result
from pipeline.processors.contact import ContactMonitor, ContactState
from pipeline.processors.dwell import DwellDetector, DwellState
from pipeline.processors.fences import FenceState, FenceTracker
from pipeline.processors.privacy import PrivacyFilter
from pipeline.processors.smooth import Smoother, SmoothState
from pipeline.processors.spoof import SpoofDetector, SpoofState
from pipeline.processors.validate import ValidateState, Validator
from pipeline.reference import ReferenceData

STATE_VERSION = 2  # 2: compact field names, defaults left out (version 1 still loads)
# Plain ints: IntFlag arithmetic per point costs ~0.8 us, a third of a processor's budget.
_OUTLIER = int(TrackFlag.OUTLIER)
_CLOCK_CORRECTED = int(TrackFlag.CLOCK_CORRECTED)


def _ping_ts(p: Ping) -> Any:
    return p.ts_ms


def _state_ts(e: DeviceState) -> Any:
    return e.ts_ms


@dataclass(slots=True)
class DeviceBatch:
    """What one upload of one device carries (a Kafka record carries exactly this)."""

    org_id: str
    device_id: str
    pings: list[Ping] = field(default_factory=list)
    states: list[DeviceState] = field(default_factory=list)
    received_ms: int = 0
    # Pings the edge rejected as stamped in the future (stored as dead letters): the evidence
    # of a phone clock running ahead (spoof detection's clock-skew rule), and recovered by the
    # validator once it knows the clock's offset.
    future_pings: list[Ping] = field(default_factory=list)


@dataclass(slots=True)
class PipelineState:
    """All per-device processor state; serialises to a plain dict for tables and snapshots."""

    validate: ValidateState
    spoof: SpoofState
    smooth: SmoothState
    dwell: DwellState
    fences: FenceState
    contact: ContactState

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "validate": self.validate.to_dict(),
            "spoof": self.spoof.to_dict(),
            "smooth": self.smooth.to_dict(),
            "dwell": self.dwell.to_dict(),
            "fences": self.fences.to_dict(),
            "contact": self.contact.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineState:
        return cls(
            validate=ValidateState.from_dict(data["validate"]),
            spoof=SpoofState.from_dict(data["spoof"]),
            smooth=SmoothState.from_dict(data["smooth"]),
            dwell=DwellState.from_dict(data["dwell"]),
            fences=FenceState.from_dict(data["fences"]),
            contact=ContactState.from_dict(data["contact"]),
        )


class Topology:
    def __init__(self, settings: ProcessorSettings | None = None) -> None:
        s = settings or ProcessorSettings()
        self.settings = s
        self.validator = Validator(s.validate)
        self.privacy = PrivacyFilter(s.privacy)
        self.contact = ContactMonitor(s.contact)
        self.spoof = SpoofDetector(s.spoof)
        self.smoother = Smoother(s.smooth)
        self.dwell = DwellDetector(s.dwell)
        self.fences = FenceTracker(s.fences)

    def initial_state(self) -> PipelineState:
        return PipelineState(
            validate=self.validator.initial_state(),
            spoof=self.spoof.initial_state(),
            smooth=self.smoother.initial_state(),
            dwell=self.dwell.initial_state(),
            fences=self.fences.initial_state(),
            contact=self.contact.initial_state(),
        )

    def context(self, ref: ReferenceData, org_id: str, device_id: str, now_ms: int) -> Ctx:
        return Ctx(org_id, device_id, now_ms, ref, ref.schedule_for(org_id, device_id))

    def process(self, state: PipelineState, batch: DeviceBatch, ctx: Ctx) -> Result:
        out = Result()
        clock_offset = state.validate.clock_offset_ms  # the phone's clock error, when known
        for ev in sorted(batch.states, key=_state_ts) if batch.states else ():
            if clock_offset and type(ev.ts_ms) is int:
                ev = replace(ev, ts_ms=ev.ts_ms - clock_offset)
            reason = self.validator.check_state(ev, ctx.now_ms)
            if reason:
                out.counters["state_rejected"] += 1
                continue
            self.spoof.on_device_state(state.spoof, ev, ctx, out)
            self.contact.on_device_state(state.contact, ev, ctx, out)
        for ping in batch.future_pings:
            self.spoof.observe_clock(state.spoof, ping, ctx, out)
        if batch.pings or batch.future_pings:
            in_order, late = self.validator.process(
                state.validate, batch.pings, ctx, out, batch.future_pings
            )
            if state.validate.clock_offset_ms and batch.pings:
                # Downstream sees corrected times; the clock warning needs the phone's own.
                freshest = max(batch.pings, key=_ping_ts)
                if type(freshest.ts_ms) is int and freshest.received_ms:
                    self.spoof.observe_clock(state.spoof, freshest, ctx, out)
            self._downstream(state, in_order, late, ctx, out)
        return out

    def next_tick_ms(self, state: PipelineState) -> int:
        """The earliest processing time at which `tick` can change anything for the device
        (`NO_TIMER`: nothing until its next upload). Drivers skip the device's ticks before
        it (not a final tick): with every device ticked every second, tick cost grew with
        the fleet, idle devices included (5,000 devices took a fifth of a Kafka worker)."""
        return min(
            self.validator.next_tick_ms(state.validate),
            self.contact.next_tick_ms(state.contact),
            self.fences.next_tick_ms(state.fences),
            self.dwell.next_tick_ms(state.dwell),
        )

    def tick(self, state: PipelineState, ctx: Ctx, *, final: bool = False) -> Result:
        """Processing time moved on: release held pings, run timers.

        `final` releases everything still held and closes what is open (end of a replay).
        """
        out = Result()
        released = self.validator.release(state.validate, ctx, force=final)
        if released:
            self._downstream(state, released, [], ctx, out)
        self.contact.tick(state.contact, ctx, out)
        self.fences.tick(state.fences, ctx, out)
        visits_before = len(out.visits)
        self.dwell.tick(state.dwell, ctx, out, final=final)
        if len(out.visits) > visits_before:
            self._verify_visits(state, out, visits_before)
        return out

    def _downstream(
        self, state: PipelineState, in_order: list[Ping], late: list[Ping], ctx: Ctx, out: Result
    ) -> None:
        in_order = self.privacy.process(in_order, ctx, out)
        if late:
            late = self.privacy.process(late, ctx, out)
        if not in_order and not late:
            return
        self.contact.observe(state.contact, in_order, late, ctx, out)
        for p in late:
            out.track_points.append(self.smoother.late_point(p))
        if not in_order:
            return
        self.spoof.process(state.spoof, in_order, ctx, out)
        points = self.smoother.process(state.smooth, in_order, ctx, out)
        if state.validate.clock_offset_ms:  # the phone's time is ts + the offset
            for point in points:
                point.flags |= _CLOCK_CORRECTED
        out.track_points.extend(points)
        good = [p for p in points if not p.flags & _OUTLIER]
        if good:
            visits_before = len(out.visits)
            self.dwell.process(state.dwell, good, ctx, out)
            if len(out.visits) > visits_before:
                self._verify_visits(state, out, visits_before)
            if not self.spoof.replaying(state.spoof):  # a replayed day crosses no real fence
                self.fences.process(state.fences, good, ctx, out)

    def _verify_visits(self, state: PipelineState, out: Result, first: int) -> None:
        """A visit overlapping an anti-cheat episode is stored, but not as verified."""
        for visit in out.visits[first:]:
            suspect = self.spoof.suspect_alerts(state.spoof, visit.arrive_ms, visit.leave_ms)
            if suspect:
                visit.verified = False
                visit.suspect_alerts = ",".join(filter(None, (visit.suspect_alerts, *suspect)))
