"""Durable ingress throughput and latency against a raw aiohttp endpoint that stores nothing.

Both servers run as separate processes on loopback and are driven by the same load generator: 32
keep-alive connections posting 1 KiB JSON CloudEvents in binary mode. Rounds alternate between the two
servers, and the medians of the rounds are reported. Target: mapemesh >= 0.5x the raw throughput. A third
server is the same broker with tracing on (OTEL_EXPORTER_OTLP_ENDPOINT set: a span per event, exported over
OTLP/HTTP to a sink): the hot path's cost of tracing, on against off.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.loadgen import LoadResult, load, median
from mapemesh.aio import run

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CONNECTIONS = 32
EVENT_BYTES = 1024
TARGET_RATIO = 0.5
TRACED = "mapemesh ingress, tracing on"


def request_factory(host: str, path: str):
    """Requests with unique ids and a 1 KiB JSON body."""
    filler = "x" * (EVENT_BYTES - len('{"metric":"cpu","value":0.5,"pad":""}'))
    body = json.dumps({"metric": "cpu", "value": 0.5, "pad": filler}, separators=(",", ":")).encode()
    assert len(body) == EVENT_BYTES
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nce-specversion: 1.0\r\nce-source: /bench\r\n"
            f"ce-type: io.mapemesh.telemetry.reported.v1\r\ncontent-type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nce-id: ").encode()
    counter = itertools.count()
    return lambda: b"%sb-%d\r\n\r\n%s" % (head, next(counter), body)


def start_raw() -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.raw_server", "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    if not url:
        raise RuntimeError("the raw baseline server did not start")
    return proc, url


def start_mapemesh(data: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    # The broker alone: the project's Triggers would route the benchmark's telemetry to functions.
    manifests = data / "knative"
    manifests.mkdir(parents=True)
    for name in ("broker.yaml", "config-features-eventing.yaml"):  # the Broker's retryAfterMax needs the flag
        shutil.copy(REPO / "knative" / "base" / name, manifests / name)
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "broker", "serve",
                             "--data", str(data), "--manifests", str(manifests), "--port", "0"],
                            cwd=REPO, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            url = json.loads((data / "endpoints.json").read_text())["broker"]
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the mapemesh broker did not start")


def main(quick: bool = False) -> bool:
    """Run the benchmark; print the table, write bench/results/ingress.json; return True if on target."""
    rounds, warmup, duration = (1, 0.5, 2.0) if quick else (3, 1.0, 5.0)
    results: dict[str, list[LoadResult]] = {"raw aiohttp (202, no storage)": [], "mapemesh ingress (durable)": [],
                                            TRACED: []}
    with tempfile.TemporaryDirectory(prefix="mapemesh-bench-") as tmp:
        data = Path(tmp)
        raw_proc, raw_url = start_raw()
        otlp_proc, otlp_url = start_raw()  # takes the spans (202) and keeps none
        mm_proc, mm_url = start_mapemesh(data / "off")
        # The same broker with tracing on: every event's ingress span exported over OTLP/HTTP.
        traced_proc, traced_url = start_mapemesh(data / "on", {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
                                                               "OTEL_SERVICE_NAME": "mapemesh-bench"})
        try:
            for _ in range(rounds):
                for label, url in zip(results, (raw_url, mm_url, traced_url), strict=True):
                    host = url.split("//", 1)[1]
                    make = request_factory(host, "/default/default")
                    results[label].append(run(load(url, make, CONNECTIONS, warmup, duration)))
            stored = httpx.get(mm_url + "/healthz", timeout=10).json()["log"]["appended"]
        finally:
            for proc in (raw_proc, otlp_proc, mm_proc, traced_proc):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)

    raw, mm, _traced = results.values()
    accepted_total = sum(r.statuses.get(202, 0) for r in mm)
    summary = {}
    for label, runs in results.items():
        summary[label] = {
            "throughput_eps": median([r.throughput for r in runs]),
            "p50_ms": median([r.percentile(50) for r in runs]),
            "p99_ms": median([r.percentile(99) for r in runs]),
            "errors": sum(r.errors for r in runs),
            "rounds": [round(r.throughput, 1) for r in runs],
        }
    ratio = summary["mapemesh ingress (durable)"]["throughput_eps"] / summary[
        "raw aiohttp (202, no storage)"]["throughput_eps"]
    on_target = ratio >= TARGET_RATIO and stored >= accepted_total and not sum(r.errors for r in raw + mm)
    tracing_cost = summary[TRACED]["throughput_eps"] / summary["mapemesh ingress (durable)"]["throughput_eps"]

    print(f"\ningress: {CONNECTIONS} keep-alive connections, {EVENT_BYTES} B JSON events (binary mode), "
          f"{rounds} x {duration:.0f}s rounds, medians")
    print(f"{'server':32} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, s in summary.items():
        print(f"{label:32} {s['throughput_eps']:10.0f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['errors']:7d}")
    print(f"ratio mapemesh/raw throughput: {ratio:.2f} (target >= {TARGET_RATIO}) "
          f"{'OK' if on_target else 'MISSED'}; {stored} events appended to the log, "
          f"{accepted_total} answered 202 while measured")
    print(f"tracing on / off (throughput): {tracing_cost:.2f}; p50 {summary[TRACED]['p50_ms']:.2f} ms on vs "
          f"{summary['mapemesh ingress (durable)']['p50_ms']:.2f} ms off")

    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "ingress", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "connections": CONNECTIONS, "event_bytes": EVENT_BYTES, "rounds": rounds, "round_seconds": duration,
           "results": summary, "ratio": ratio, "tracing_on_off_ratio": tracing_cost,
           "target_ratio": TARGET_RATIO, "events_appended": stored,
           "on_target": on_target}
    (RESULTS / "ingress.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS / 'ingress.json'}")
    return on_target


if __name__ == "__main__":
    sys.exit(0 if main(quick="--quick" in sys.argv) else 1)
