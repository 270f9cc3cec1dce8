"""The load generator of benchmarks 4 and 5: a separate process that posts device batches to a
gateway on loopback, as phones do, and records every request.

    python -m pipeline.bench.loadgen --url http://127.0.0.1:PORT --tokens tokens.json
        --seconds 20 --concurrency 32 [--rate REQ_PER_S] [--probes N] --out result.json

Bodies are the JSON arrays the app sends (`pipeline.sim`'s ping records: device id, seq, ts,
lat/lon, accuracy, speed, bearing, altitude, provider, mock flag, battery), 50 pings a
request by default, one per second of device time with consecutive seq numbers, as a phone
that records every second and uploads in batches. Requests go round robin over the devices;
each device walks from its own start point. A device's first batch is fresh (ends within a
minute of now: the validator releases a new device's pings at once only when they are live)
and each batch advances its clock by 50 s, faster than real time when the load is high, which
the validator accepts up to 5 minutes ahead. `--wrap` (servers that keep no device state)
sends a device's clock back to now instead. `--state FILE` carries the devices' clocks, seq
numbers and positions from one run to the next against the same server.

The HTTP client is a minimal keep-alive HTTP/1.1 one on asyncio streams (one request at a
time per connection): aiohttp's client costs several times more CPU per request, and this
process must not be what limits the gateway. `--rate 0` is a closed loop (each connection
posts again as soon as it has its answer: the ceiling); a rate spaces request starts evenly
(requests that find every connection busy start late, and that delay is counted).

Probes (benchmark 5): `--probes N` devices named `probe-*` each post once, at evenly spaced
times of the run, a batch whose last ping is marked mock: the spoof rule raises an alert for
it, and the send time recorded here is where the ping->alert latency starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ORG = "bench"
CENTER = (52.52, 13.405)  # Berlin: the simulator's city
PINGS_PER_BATCH = 50


def device_ids(n: int, prefix: str = "dev") -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(n)]


@dataclass(slots=True)
class _Device:
    device_id: str
    token: str
    lat: float
    lon: float
    heading: float
    ts_ms: int  # of the next ping
    seq: int  # of the next ping
    templates: list[str] = field(default_factory=list)


def _templates(device_id: str, rng: random.Random, n: int, mock_last: bool = False) -> list[str]:
    """Per-ping JSON with everything but seq, ts, lat and lon filled in (formatted per request:
    building 50 dicts and json.dumps-ing them would cost this process more than the gateway's
    decode does)."""
    out = []
    for i in range(n):
        mock = "true" if mock_last and i == n - 1 else "false"
        fixed = (
            f'"accuracy_m":{rng.uniform(4, 18):.1f},"speed_mps":{rng.uniform(0.8, 1.6):.2f},'
            f'"bearing_deg":{rng.uniform(0, 359):.1f},"altitude_m":{rng.uniform(30, 45):.1f},'
            f'"provider":"gps","is_mock":{mock},"battery_pct":{rng.uniform(20, 95):.0f}}}'
        )
        out.append(
            '{"device_id":"' + device_id + '","seq":%d,"ts_ms":%d,"lat":%.6f,"lon":%.6f,' + fixed
        )
    return out


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Fleet:
    """Devices and their walks; `body(k)` is request k (round robin over the devices)."""

    def __init__(
        self,
        tokens: dict[str, str],
        seed: int,
        batch: int = PINGS_PER_BATCH,
        state: dict[str, list[Any]] | None = None,
        wrap: bool = False,
    ) -> None:
        rng = random.Random(seed)
        now = _now_ms()
        state = state or {}
        self.batch = batch
        self.wrap = wrap
        self.devices: list[_Device] = []
        for device_id, token in sorted(tokens.items()):
            if device_id.startswith("probe-"):
                continue
            r, a = 8000 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            fresh = [
                CENTER[0] + r * math.cos(a) / 111_320,
                CENTER[1] + r * math.sin(a) / 67_800,
                rng.uniform(0, 2 * math.pi),
                now - (batch + 5) * 1000 - rng.randrange(0, 30_000),
                1,
            ]
            lat, lon, heading, ts, seq = state.get(device_id, fresh)
            self.devices.append(
                _Device(
                    device_id, token, lat, lon, heading, ts, seq, _templates(device_id, rng, batch)
                )
            )
        self.probes = sorted((d, t) for d, t in tokens.items() if d.startswith("probe-"))
        self.rng = rng

    def state(self) -> dict[str, list[Any]]:
        return {d.device_id: [d.lat, d.lon, d.heading, d.ts_ms, d.seq] for d in self.devices}

    def body(self, k: int) -> tuple[int, _Device, bytes, int]:
        """Request k's device index, device, body and last seq."""
        index = k % len(self.devices)
        d = self.devices[index]
        if self.wrap and d.ts_ms + self.batch * 1000 > _now_ms() + 240_000:
            d.ts_ms = _now_ms() - self.batch * 1000  # no state on the server: no harm
        parts = []
        lat, lon, ts, seq = d.lat, d.lon, d.ts_ms, d.seq
        step_lat = 1.2 * math.cos(d.heading) / 111_320  # walking: 1.2 m/s
        step_lon = 1.2 * math.sin(d.heading) / 67_800
        for i, tmpl in enumerate(d.templates):
            lat += step_lat
            lon += step_lon
            parts.append(tmpl % (seq + i, ts + i * 1000, lat, lon))
        d.lat, d.lon = lat, lon
        d.ts_ms += self.batch * 1000
        d.seq += self.batch
        if self.rng.random() < 0.1:  # turn now and then
            d.heading += self.rng.uniform(-1.0, 1.0)
        return index, d, ("[" + ",".join(parts) + "]").encode(), d.seq - 1

    def probe_body(self, i: int) -> bytes:
        """Probe i's one batch: fresh pings, the last one marked mock."""
        device_id, _ = self.probes[i]
        rng = random.Random(i)
        now = _now_ms()
        lat = CENTER[0] + rng.uniform(-0.05, 0.05)
        lon = CENTER[1] + rng.uniform(-0.05, 0.05)
        tmpls = _templates(device_id, rng, self.batch, mock_last=True)
        n = len(tmpls)
        parts = [
            t % (1 + j, now - (n - j) * 1000, lat + j * 1e-5, lon) for j, t in enumerate(tmpls)
        ]
        return ("[" + ",".join(parts) + "]").encode()


class Connection:
    """One keep-alive HTTP/1.1 connection; `post` returns (status, response body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, token: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    tokens: dict[str, str] = json.loads(Path(args.tokens).read_text())
    state_file = Path(args.state) if args.state else None
    state = json.loads(state_file.read_text()) if state_file and state_file.exists() else None
    fleet = Fleet(tokens, args.seed, args.batch, state, args.wrap)
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    # per request: start (epoch s), end, status, accepted pings, last seq, device index
    log: list[tuple[float, float, int, int, int, int]] = []
    probes: list[dict[str, Any]] = []
    late = 0
    counter = 0
    started = time.time()
    deadline = started + args.seconds
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    n_probes = len(fleet.probes) if args.probes else 0

    async def worker() -> None:
        nonlocal counter, late
        conn = Connection(host, port)
        try:
            while True:
                k = counter
                counter += 1
                if interval:
                    due = started + k * interval
                    wait = due - time.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    elif wait < -0.005:
                        late += 1
                if time.time() >= deadline:
                    return
                index, device, body, last_seq = fleet.body(k)
                t0 = time.time()
                status, payload = await conn.post("/v1/pings", device.token, body)
                accepted = json.loads(payload).get("accepted", 0) if status == 202 else 0
                log.append((t0, time.time(), status, accepted, last_seq, index))
        finally:
            await conn.close()

    async def prober() -> None:
        conn = Connection(host, port)
        try:
            for i in range(n_probes):
                due = started + (i + 0.5) * args.seconds / n_probes
                await asyncio.sleep(max(0.0, due - time.time()))
                device_id, token = fleet.probes[i]
                body = fleet.probe_body(i)
                t0 = time.time()
                status, _ = await conn.post("/v1/pings", token, body)
                probes.append(
                    {"device_id": device_id, "sent_s": t0, "done_s": time.time(), "status": status}
                )
        finally:
            await conn.close()

    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    if n_probes:
        tasks.append(asyncio.create_task(prober()))
    await asyncio.gather(*tasks)
    ended = time.time()
    if state_file is not None:
        state_file.write_text(json.dumps(fleet.state()))
    ok = [r for r in log if r[2] == 202]
    return {
        "started_s": started,
        "ended_s": ended,
        "requests": len(log),
        "ok_requests": len(ok),
        "statuses": _count(r[2] for r in log),
        "accepted_pings": sum(r[3] for r in log),
        "late_starts": late,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "batch": args.batch,
        "devices": [d.device_id for d in fleet.devices],
        "log": log,
        "probes": probes,
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--tokens", required=True, help="JSON file: device id -> token")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=float, default=0.0, help="requests/s; 0: closed loop")
    p.add_argument("--batch", type=int, default=PINGS_PER_BATCH)
    p.add_argument("--state", default="", help="devices' clocks and positions, in and out")
    p.add_argument("--wrap", action="store_true", help="for servers without device state")
    p.add_argument("--probes", action="store_true", help="post the probe devices' mock batches")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = asyncio.run(run_load(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
