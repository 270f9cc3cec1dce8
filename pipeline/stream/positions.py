"""Which input records the worker's table already holds the effects of, per input partition.

Faust's own offset bookkeeping can commit past a record that no agent ever saw: around a
rebalance its fetcher drops an in-flight message and its gap and head-of-queue checks then
let the commit run over it (seen here with 2-3 workers under overload: a single PingBatch
record of a partition skipped, its 50 pings never processed). Replays of records that were
already processed happen too (the fetcher delivers from the assignment's start position
before Faust seeks to the committed offset). So the worker does not trust the group's
committed offsets for what has been processed: it keeps, for every input partition, the next
offset whose effects are not yet in the table, and writes it with the states of the same round
(after their outputs were acknowledged, in the same changelog partition, after the states).

For each record of a partition the worker then asks `admit`:
- below the position: the table already holds its effects and the broker its outputs: skip;
- at the position (or no position yet: a partition's first record ever): process;
- above it: records in between never reached the table (a hole): rewind the consumer to the
  position and ignore records until the one at the position comes back.
A partition whose records in a hole were deleted by retention cannot be rewound: the worker
accepts the loss there, says so loudly, and counts it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

InputPartition = tuple[str, int]


class Verdict(enum.Enum):
    PROCESS = "process"
    SKIP_DONE = "skip_done"  # the table already holds this record's effects
    REWIND = "rewind"  # a hole before this record: seek back to `InputPositions.next`
    AWAIT_REWIND = "await_rewind"  # a rewind is under way: this record comes again later


@dataclass(slots=True)
class InputPositions:
    """The rewinds under way, keyed by input partition (forgotten at every rebalance: the new
    assignment's records and table decide afresh). The positions themselves live in the table
    (`pipeline.stream.worker._Round`), this class only decides."""

    # A rewind whose record has not come back this long seeks again, waiting twice as long
    # after each further seek. Faust's fetch loop, when in the middle of a fetched batch,
    # overwrites the read offset the seek set and then drops the re-fetched records (seen:
    # 1-3 seeks before the record comes back), so a retry is needed; but each seek also throws
    # away what was re-fetched, and under overload the records fetched before it take a while
    # to pass. 2 s held in every run; a fixed 0.5 s once left a 1-worker closed loop short of
    # track points (not understood: not used).
    retry_s: float = 2.0
    # input partition -> (position sought, time of the last seek, seeks so far)
    rewinding: dict[InputPartition, tuple[int, float, int]] = field(default_factory=dict)

    def admit(self, tp: InputPartition, offset: int, position: int | None, now: float) -> Verdict:
        """What to do with the record at `offset` of `tp`, the table's next offset being
        `position` (None: nothing of `tp` processed yet); `now` is monotonic seconds."""
        if position is None or offset == position:
            self.rewinding.pop(tp, None)
            return Verdict.PROCESS
        if offset < position:
            return Verdict.SKIP_DONE
        rewind = self.rewinding.get(tp)
        if rewind is not None and rewind[0] == position:
            _, last, seeks = rewind
            if now - last < self.retry_s * 2 ** (seeks - 1):
                return Verdict.AWAIT_REWIND  # records fetched before the seek: they come again
        return Verdict.REWIND

    def rewind_started(self, tp: InputPartition, position: int, now: float) -> bool:
        """Notes a seek back to `position`; True when it is the first for that position."""
        previous = self.rewinding.get(tp)
        first = previous is None or previous[0] != position
        self.rewinding[tp] = (position, now, 1 if first or previous is None else previous[2] + 1)
        return first

    def forget_rewind(self, tp: InputPartition) -> None:
        self.rewinding.pop(tp, None)

    def forget(self) -> None:
        self.rewinding.clear()
