"""Device states held compactly at rest: what a driver keeps per active device.

A mid-day `PipelineState` is about 5.7 KB of live Python objects (benchmark 3) for about
1.9 KB of compact JSON: every float is a 24-byte object behind an 8-byte pointer, every
short list 56 bytes before its items. At 100,000 devices that is most of a driver's memory,
and the `to_dict()` form a Faust table holds is not much smaller (about 4.5 KB).

So a state at rest is *encoded* (`encode_state`): its `to_dict()` as compact JSON, raw
deflate, behind one format byte: about 1 KB, and bytes, which a Faust table with the raw value
serializer holds as they are. JSON rather than pickle or marshal: it is the documented state
form (`SerialisableState`), safe to read from a changelog, deterministic (equal states, equal
bytes) and readable with any tool after `zlib.decompress(data[1:], -15)`; pickling the same
dict saves ~15 % of a cache miss's cost and no bytes once deflated. Deflate because without
it a device costs over 2 KB. Most of a miss's cost is `to_dict` / `from_dict` and
building the objects, whatever the encoding.

`DeviceStates` is the container a driver keeps: every device's state encoded, except the
`capacity` most recently used, which stay live (a write-back LRU cache: a state is decoded
when a batch or a due timer needs it and encoded again only when it falls out of the cache),
and the states whose timers run at the next tick (an open lost-contact episode, a device away
from its post: ticked every pass; decoding and encoding them every pass would cost far more
than the memory). It also keeps each device's due time (`Topology.next_tick_ms`), so a tick
pass touches only the devices with a timer due.

A fleet no larger than the cache never runs the codec; beyond it each batch of a device at
rest pays one decode and, later, one encode (see benchmark 3 for the microseconds). The facts
are the same either way: the encoded form is exactly the JSON round trip that snapshots and
Faust tables have always done (tests/test_state_store.py).
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from pipeline.topology import PipelineState, Topology

__all__ = ["STATE_FORMAT", "DeviceStates", "decode_state", "encode_state"]

# The first byte of an encoded state: how the rest is encoded. 1 = raw deflate (no zlib
# header or checksum: 6 bytes a device) of the compact JSON of `PipelineState.to_dict()`.
STATE_FORMAT = 1
_HEADER = bytes([STATE_FORMAT])
_DEFLATE_LEVEL = 1  # level 6 saves 4 % of the bytes for 20 % more encode time
_RAW_DEFLATE = -15
# One encoder for every call: `json.dumps` with options builds a new one each time.
_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)

K = TypeVar("K", bound=Hashable)


def encode_state(state: PipelineState) -> bytes:
    """The compact, self-describing bytes of a state (a Faust table value, a snapshot entry)."""
    text = _JSON.encode(state.to_dict()).encode()
    return _HEADER + zlib.compress(text, _DEFLATE_LEVEL, _RAW_DEFLATE)


def decode_state(data: bytes) -> PipelineState:
    """The live state `encode_state` encoded (a fresh object: nothing is shared with others)."""
    if not data or data[0] != STATE_FORMAT:
        raise ValueError(f"not an encoded device state (format byte {data[:1]!r})")
    return PipelineState.from_dict(json.loads(zlib.decompress(memoryview(data)[1:], _RAW_DEFLATE)))


class DeviceStates(Generic[K]):
    """Every device's state, encoded at rest, the recently used and the soon-due ones live.

    `get(key)` hands out the live state, which the caller mutates in place (through the
    topology) and then reports with `schedule(key)`. The object is the device's state until
    the next `get` of another device (which may encode it): drivers process one device at a
    time, synchronously, so they never hold one across that.
    """

    def __init__(
        self, topology: Topology, capacity: int, keep_due_within_ms: int | None = None
    ) -> None:
        self.topology = topology
        self.capacity = max(1, capacity)  # the state being processed is always live
        # A state whose timer is due by the latest tick pass plus this stays live beyond the
        # capacity (the driver passes its tick interval: due again at the next pass); None:
        # only the capacity counts.
        self.keep_due_within_ms = keep_due_within_ms
        self._live: OrderedDict[K, PipelineState] = OrderedDict()  # least recently used first
        self._pinned: dict[K, PipelineState] = {}  # evicted from `_live` but due soon
        self._encoded: dict[K, bytes] = {}
        # Every device, in first-seen order -> `Topology.next_tick_ms` of its state.
        self._due: dict[K, int] = {}
        self._keep_until = -1  # latest tick pass + keep_due_within_ms (due times are >= 0)
        self.decodes = 0  # how often a state at rest was needed (cache misses)
        self.encodes = 0  # how often a live state was put to rest

    # -- what a driver calls -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._due)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._due))  # a copy: getting states reorders the live ones

    def get(self, key: K) -> PipelineState:
        """The device's live state: cached, decoded, or new (initial) for a new device."""
        state = self._live.get(key)
        if state is not None:
            self._live.move_to_end(key)
            return state
        state = self._pinned.get(key)
        if state is not None:
            return state
        data = self._encoded.pop(key, None)
        if data is not None:
            state = decode_state(data)
            self.decodes += 1
        else:
            state = self.topology.initial_state()
            self._due[key] = 0  # a new device's first tick says when next
        self._live[key] = state
        self._evict()
        return state

    def put(self, key: K, state: PipelineState) -> None:
        """Sets the device's state to a live one built elsewhere, as the most recently used."""
        self._encoded.pop(key, None)
        self._pinned.pop(key, None)
        self._live[key] = state
        self._live.move_to_end(key)
        self._due[key] = self.topology.next_tick_ms(state)
        self._evict()

    def schedule(self, key: K) -> int:
        """After the topology changed the device's (live) state: when its timers next run."""
        state = self._live.get(key) or self._pinned[key]
        due = self._due[key] = self.topology.next_tick_ms(state)
        if due > self._keep_until and key in self._pinned:
            # No longer due at the next pass: back among the recently used, to be put to rest.
            self._live[key] = self._pinned.pop(key)
            self._evict()
        return due

    def due(self, now_ms: int) -> list[K]:
        """The devices with a timer due at `now_ms` (a tick pass at that time)."""
        if self.keep_due_within_ms is not None:
            self._keep_until = now_ms + self.keep_due_within_ms
        return [key for key, due in self._due.items() if due <= now_ms]

    # -- snapshots ------------------------------------------------------------------------

    def encoded_items(self) -> list[tuple[K, bytes]]:
        """Every device's encoded state in first-seen order (live ones encoded, not evicted):
        immutable bytes, so a snapshot can be written from them in another thread."""
        out = []
        for key in self._due:
            data = self._encoded.get(key)
            if data is None:
                state = self._live.get(key) or self._pinned[key]
                data = encode_state(state)
            out.append((key, data))
        return out

    def put_encoded(self, key: K, data: bytes) -> None:
        """Sets the device's state from its encoded form (a restored snapshot). It is decoded
        once here: that checks it, and its due time is computed from it (ticking every
        restored device at the next pass would decode all of them in one go)."""
        due = self.topology.next_tick_ms(decode_state(data))
        self._live.pop(key, None)
        self._pinned.pop(key, None)
        self._encoded[key] = data
        self._due[key] = due

    # -- figures --------------------------------------------------------------------------

    @property
    def live_count(self) -> int:
        """States held as live objects (the cache plus the ones kept for their timers)."""
        return len(self._live) + len(self._pinned)

    @property
    def pinned_count(self) -> int:
        return len(self._pinned)

    def _evict(self) -> None:
        live = self._live
        while len(live) > self.capacity:
            key, state = live.popitem(last=False)
            if self._due[key] <= self._keep_until:
                self._pinned[key] = state
            else:
                self._encoded[key] = encode_state(state)
                self.encodes += 1
