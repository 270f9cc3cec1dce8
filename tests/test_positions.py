"""The worker's per-partition positions decide what it processes, not the group's offsets."""

from __future__ import annotations

from pipeline.stream.positions import InputPositions, Verdict

TP = ("pings", 3)


def test_first_record_of_a_partition_and_the_record_at_the_position_are_processed() -> None:
    positions = InputPositions()
    assert positions.admit(TP, 17, None, now=0.0) is Verdict.PROCESS
    assert positions.admit(TP, 18, 18, now=0.0) is Verdict.PROCESS


def test_records_below_the_position_are_skipped_as_done() -> None:
    positions = InputPositions()
    assert positions.admit(TP, 5, 18, now=0.0) is Verdict.SKIP_DONE
    assert positions.admit(TP, 17, 18, now=0.0) is Verdict.SKIP_DONE


def test_a_hole_rewinds_once_then_waits_for_the_record_to_come_back() -> None:
    positions = InputPositions(retry_s=2.0)
    assert positions.admit(TP, 21, 18, now=10.0) is Verdict.REWIND
    assert positions.rewind_started(TP, 18, now=10.0) is True
    # records fetched before the seek are ignored: they come again after the position
    for offset in (22, 23, 30):
        assert positions.admit(TP, offset, 18, now=11.0) is Verdict.AWAIT_REWIND
    assert positions.admit(TP, 18, 18, now=11.5) is Verdict.PROCESS
    assert positions.rewinding == {}
    # the next hole is a new rewind
    assert positions.admit(TP, 40, 19, now=12.0) is Verdict.REWIND
    assert positions.rewind_started(TP, 19, now=12.0) is True


def test_a_rewind_whose_record_does_not_come_back_seeks_again_waiting_twice_as_long() -> None:
    positions = InputPositions(retry_s=0.5)
    positions.rewind_started(TP, 18, now=10.0)
    assert positions.admit(TP, 25, 18, now=10.4) is Verdict.AWAIT_REWIND
    assert positions.admit(TP, 25, 18, now=10.6) is Verdict.REWIND
    assert positions.rewind_started(TP, 18, now=10.6) is False  # a retry, not a new hole
    # the second seek gets 1 s, the third 2 s: under overload the stale records take time
    assert positions.admit(TP, 26, 18, now=11.5) is Verdict.AWAIT_REWIND
    assert positions.admit(TP, 26, 18, now=11.7) is Verdict.REWIND
    positions.rewind_started(TP, 18, now=11.7)
    assert positions.admit(TP, 27, 18, now=13.6) is Verdict.AWAIT_REWIND
    assert positions.admit(TP, 27, 18, now=13.8) is Verdict.REWIND


def test_rewinds_are_per_partition_and_forgotten_at_a_rebalance() -> None:
    positions = InputPositions(retry_s=0.5)
    other = ("device-states", 3)
    positions.rewind_started(TP, 18, now=0.0)
    assert positions.admit(other, 7, 7, now=0.2) is Verdict.PROCESS
    assert positions.admit(TP, 30, 18, now=0.2) is Verdict.AWAIT_REWIND
    positions.forget()
    assert positions.admit(TP, 30, 18, now=0.3) is Verdict.REWIND
