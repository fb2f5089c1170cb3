"""Storage: put and get throughput through the erasure-coding gateway against boto3 straight to one S3 endpoint.

Four moto servers (`moto.server`, one process each) are the locations; the gateway (`mapemesh storage serve`)
stores each object as 3+1 fragments over them. In the same run, with the same boto3 client settings:

- baseline: put_object / get_object of the object straight to one moto endpoint;
- fragments: what the gateway must do at least, with boto3 straight to the locations: 4 puts of a third of the
  object at once (one per location), and 3 gets at once;
- gateway: put_object / get_object to the gateway (which encodes, writes the 4 fragments, reads 3 and decodes).

MB/s of object bytes, the median over the rounds, for 1 MiB and 64 MiB objects. gateway / direct is what a user
pays for erasure coding over 4 locations here; gateway / fragments is the gateway's own overhead on top of the
fragments' I/O. Aim: gateway >= 0.6 of the fragments' floor. On this kind of machine (2 cores shared by the client,
the gateway and four moto servers, which are Python and CPU-bound) the floor itself is under the direct path for
small objects: four requests cost more than one.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import botocore.config
import httpx
import yaml

from bench.coldstart import endpoint, free_port, wait

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SIZES = {"1 MiB": (1 << 20, 30), "64 MiB": (64 << 20, 4)}
TARGET_RATIO = 0.6


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def _client(url: str):  # type: ignore[no-untyped-def]
    config = botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                    request_checksum_calculation="when_required",
                                    response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench", config=config)


def _rounds(s3, bucket: str, size: int, rounds: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(put MB/s, get MB/s), medians."""
    body = os.urandom(size)
    puts, gets = [], []
    for n in range(rounds):
        started = time.perf_counter()
        s3.put_object(Bucket=bucket, Key=f"o{n}", Body=body)
        puts.append(size / 1e6 / (time.perf_counter() - started))
        started = time.perf_counter()
        got = s3.get_object(Bucket=bucket, Key=f"o{n}")["Body"].read()
        gets.append(size / 1e6 / (time.perf_counter() - started))
        assert got == body, "the object came back different"
        s3.delete_object(Bucket=bucket, Key=f"o{n}")
    return statistics.median(puts), statistics.median(gets)


def _fragments(clients: list, size: int, rounds: int) -> tuple[float, float]:  # type: ignore[type-arg]
    """(put MB/s, get MB/s) of the object's bytes, moved as the gateway moves them: 3+1 fragments, in parallel."""
    third = os.urandom(-(-size // 3))
    puts, gets = [], []
    with ThreadPoolExecutor(len(clients)) as pool:
        for n in range(rounds):
            started = time.perf_counter()
            list(pool.map(lambda c, key=f"f{n}": c.put_object(Bucket="bench-fragments", Key=key, Body=third), clients))
            puts.append(size / 1e6 / (time.perf_counter() - started))
            started = time.perf_counter()
            list(pool.map(lambda c, key=f"f{n}": c.get_object(Bucket="bench-fragments", Key=key)["Body"].read(),
                          clients[:3]))
            gets.append(size / 1e6 / (time.perf_counter() - started))
            list(pool.map(lambda c, key=f"f{n}": c.delete_object(Bucket="bench-fragments", Key=key), clients))
    return statistics.median(puts), statistics.median(gets)


def main(quick: bool = False) -> bool:
    """Print the table, write bench/results/storage.json; True when the gateway reaches the aimed ratio."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        print("\nstorage: skipped, moto's server mode is not installed (pip install 'moto[server]')")
        return True
    sizes = {label: (size, max(2, rounds // 3) if quick else rounds) for label, (size, rounds) in SIZES.items()}
    procs: list[subprocess.Popen[bytes]] = []
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mapemesh-storage-") as tmp:
        root = Path(tmp)
        try:
            endpoints = []
            for _ in range(4):
                port = free_port()
                procs.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                endpoints.append(f"http://127.0.0.1:{port}")
            for url in endpoints:
                wait(lambda u=url: _up(u), timeout=60, what=f"moto on {url}")
            (root / "locations.yaml").write_text(yaml.safe_dump({
                "locations": [{"name": f"loc-{i}", "endpoint": url, "country": "IE"}
                              for i, url in enumerate(endpoints)],
                "default_policy": {"k": 3, "m": 1}}))
            data = root / "data"
            procs.append(subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "--data",
                                           str(data), "storage", "serve", "--locations", str(root / "locations.yaml"),
                                           "--port", "0"], cwd=REPO, env={**os.environ, "MAPEMESH_DATA": ""}))
            gateway = wait(lambda: endpoint(data, "storage"), timeout=60, what="the gateway")
            direct, through = _client(endpoints[0]), _client(gateway)
            direct.create_bucket(Bucket="bench-direct")
            through.create_bucket(Bucket="bench-gateway")
            clients = [_client(url) for url in endpoints]
            for c in clients:
                c.create_bucket(Bucket="bench-fragments")
            for label, (size, rounds) in sizes.items():
                row: dict[str, float] = {"rounds": rounds}
                for path, (put, get) in (("direct", _rounds(direct, "bench-direct", size, rounds)),
                                         ("fragments", _fragments(clients, size, rounds)),
                                         ("gateway", _rounds(through, "bench-gateway", size, rounds))):
                    row[f"{path}_put_mbps"], row[f"{path}_get_mbps"] = put, get
                for op in ("put", "get"):
                    row[f"{op}_vs_direct"] = row[f"gateway_{op}_mbps"] / row[f"direct_{op}_mbps"]
                    row[f"{op}_vs_fragments"] = row[f"gateway_{op}_mbps"] / row[f"fragments_{op}_mbps"]
                rows[label] = row
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    ok = all(r[f"{op}_vs_fragments"] >= TARGET_RATIO for r in rows.values() for op in ("put", "get"))
    print("\nStorage: MB/s of object bytes (median): boto3 straight to one moto endpoint, the 3+1 fragments' I/O "
          "straight to 4 endpoints, and through the gateway")
    print(f"{'object':8} {'op':4} {'direct':>9} {'fragments':>10} {'gateway':>9} {'gw/direct':>10} {'gw/frag':>8}")
    for label, r in rows.items():
        for op in ("put", "get"):
            print(f"{label:8} {op:4} {r[f'direct_{op}_mbps']:9.1f} {r[f'fragments_{op}_mbps']:10.1f} "
                  f"{r[f'gateway_{op}_mbps']:9.1f} {r[f'{op}_vs_direct']:10.2f} {r[f'{op}_vs_fragments']:8.2f}")
    print(f"gateway / fragments: aim >= {TARGET_RATIO} for each {'OK' if ok else 'MISSED'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "storage.json").write_text(json.dumps({
        "benchmark": "storage", "code": "3+1", "locations": 4, "sizes": rows, "target_ratio": TARGET_RATIO,
        "on_target": ok}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'storage.json'}")
    return ok

