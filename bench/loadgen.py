"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight on each.

Written on raw asyncio protocols so that it costs far less CPU per request than the servers it measures;
both the baseline and mapemesh are measured with this same generator in the same run.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """What one load run observed."""

    seconds: float
    ok: int
    errors: int
    statuses: dict[int, int]
    latencies_ns: list[int] = field(repr=False)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds

    def percentile(self, p: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[k] / 1e6


class _Conn(asyncio.Protocol):
    def __init__(self, run: _Run):
        self.run = run
        self.buf = b""
        self.t0 = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        self.t0 = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(self.run.make_request())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            status = int(head[9:12])
            self.buf = self.buf[total:]
            self.run.record(status, time.perf_counter_ns() - self.t0)
            if self.run.running:
                self._send()
            else:
                assert self.transport is not None
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.run.running and not self.run.closed.done():
            self.run.closed.set_result(None)


class _Run:
    def __init__(self, make_request: Callable[[], bytes]):
        self.make_request = make_request
        self.running = True
        self.measuring = False
        self.ok = 0
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.latencies: list[int] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def record(self, status: int, latency: int) -> None:
        if not self.measuring:
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.ok += 1
            self.latencies.append(latency)
        else:
            self.errors += 1


async def load(url: str, make_request: Callable[[], bytes], connections: int, warmup: float,
               duration: float) -> LoadResult:
    """Drive `connections` keep-alive connections for warmup + duration seconds; measure the latter."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    run = _Run(make_request)
    conns = [await loop.create_connection(lambda: _Conn(run), parts.hostname, parts.port)
             for _ in range(connections)]
    await asyncio.sleep(warmup)
    run.measuring = True
    start = time.perf_counter()
    done, _ = await asyncio.wait([run.closed], timeout=duration)
    elapsed = time.perf_counter() - start
    run.measuring = False
    run.running = False
    await asyncio.sleep(0.2)
    for transport, _ in conns:
        transport.close()
    if done:
        raise RuntimeError(f"the server at {url} closed a connection during the run")
    return LoadResult(elapsed, run.ok, run.errors, run.statuses, run.latencies)


def median(values: list[float]) -> float:
    """The median (of rounds)."""
    return statistics.median(values)
