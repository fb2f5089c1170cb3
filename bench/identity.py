"""The cost of identities on the event path (`mapemesh.identity`): the MAPE reaction with commands signed by the
execute stage and checked at the node shim (identities on), against the same mesh with them off, in the same run.

Two `mapemesh up` in turn, the project's own manifests, the bench node shims of `bench.mape` (here they check
each command as the real shim does: `Guard.check`, the signature verified against the mesh's authority, before
answering). REACTIONS reactions each, no background load (it would measure the machine, not the check). Also
the two operations alone, in process: signing a knob command and verifying it.

The broker's ingress authorizes nothing itself (Knative's OIDC sender identities and EventPolicies are not
implemented by the embedded broker yet): its cost is 0 by construction, and the table says so.

Aim: the reaction's p50 with identities on within 1.2x of off.
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
from pathlib import Path

import httpx

from bench import mape
from bench.coldstart import pct, wait
from mapemesh import events as catalogue
from mapemesh.identity import Authority, Guard, TrustStore, sign, verify

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
REACTIONS = 100
TARGET_RATIO = 1.2


class CheckingShim(mape.Shim):
    """The bench shims, checking every command as a node shim does (when given a guard)."""

    guard: Guard | None = None
    refused = 0

    def accepts(self, event: object) -> bool:
        if self.guard is None:
            return True
        allowed = self.guard.check(event).allowed  # type: ignore[arg-type]
        self.refused += not allowed
        return allowed


def _reactions(identities: bool, count: int) -> tuple[list[float], list[float], int]:
    shim = CheckingShim()
    with tempfile.TemporaryDirectory(prefix="mapemesh-identity-") as tmp:
        root = Path(tmp)
        manifests = mape.project(root, shim.url.removesuffix("/replies"))
        data = root / "data"
        env = {**os.environ, "PYTHONPATH": str(REPO), "MAPEMESH_IDENTITIES": "on" if identities else "off"}
        proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "up", "--manifests",
                                 str(manifests), "--data", str(data), "--port", "0", "--serving-port", "0",
                                 "--node-shim-port", "-1", "--api-port", "-1"], cwd=root, env=env)
        try:
            found = wait(lambda: mape._endpoints(data), what="mapemesh up")
            broker = found["broker"]  # type: ignore[index]
            if identities:
                shim.guard = Guard(TrustStore(data / "identity"))
            with httpx.Client(timeout=30) as http:
                from mapemesh.state import open_store

                store = open_store("sqlite:", data=data)
                wait(lambda: "cpu-frequency" in store.list("policies"), what="the CPU frequency policy registered")
                store.close()
                mape.post(http, broker, catalogue.AppSubmitted(app_id="bench", description=mape.APP))
                for i in range(mape.BENCH_NODES):
                    mape.post(http, broker, mape.telemetry(f"bench-{i}", 5.0))
                wait(lambda: sum(1 for k in shim.arrived if ":" in k) >= mape.BENCH_NODES, what="the warm-up plans")
                reactions, hops, _ = mape.measure(http, broker, shim, data, count)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return reactions, hops, shim.refused


def _alone(rounds: int = 2000) -> tuple[float, float]:
    """(sign µs, verify µs) of one knob command, medians of batches."""
    with tempfile.TemporaryDirectory() as tmp:
        operator = Authority(Path(tmp)).issue("execute")
        trust = TrustStore(Path(tmp))
        event = catalogue.make_event(catalogue.KnobApply(node="n1", knob="CPUFrequency", command={
            "command": "set", "frequency": "max"}, requested_by="bench"), "/bench", extensions={"node": "n1"})
        signed = sign(event, operator)
        verify(signed, trust)
        signs, checks = [], []
        for _ in range(rounds // 100):
            started = time.perf_counter()
            for _ in range(100):
                sign(event, operator)
            signs.append((time.perf_counter() - started) * 1e4)
            started = time.perf_counter()
            for _ in range(100):
                verify(signed, trust)
            checks.append((time.perf_counter() - started) * 1e4)
    return statistics.median(signs), statistics.median(checks)


def main(quick: bool = False) -> bool:
    """Print the table, write bench/results/identity.json; True when the aim is met."""
    count = 30 if quick else REACTIONS
    off, off_hops, _ = _reactions(False, count)
    on, on_hops, refused = _reactions(True, count)
    sign_us, verify_us = _alone()
    ratio = statistics.median(on) / statistics.median(off)
    ok = ratio <= TARGET_RATIO and refused == 0
    print(f"\nIdentities: MAPE reaction ({count} reactions, no background load), commands signed by execute and "
          "checked at the shim (on) against off, same run")
    print(f"{'path':40} {'p50':>8} {'p99':>8}")
    for label, values in (("reaction, identities off", off), ("reaction, identities on", on),
                          ("one broker hop (off run)", off_hops), ("one broker hop (on run)", on_hops)):
        print(f"{label:40} {statistics.median(values):6.2f}ms {pct(values, 99):6.2f}ms")
    print(f"sign one knob command: {sign_us:.0f} µs; verify it (certificate cached): {verify_us:.0f} µs")
    print("broker ingress authorization: none (the embedded broker does not check OIDC sender identities): 0")
    print(f"on / off (p50): {ratio:.2f} (aim <= {TARGET_RATIO}); commands refused: {refused} "
          f"{'OK' if ok else 'MISSED'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "identity.json").write_text(json.dumps({
        "benchmark": "identity", "reactions": count,
        "reaction_ms": {"off": {"p50": statistics.median(off), "p99": pct(off, 99)},
                        "on": {"p50": statistics.median(on), "p99": pct(on, 99)}},
        "one_hop_ms": {"off": statistics.median(off_hops), "on": statistics.median(on_hops)},
        "sign_us": sign_us, "verify_us": verify_us, "ingress_authorization_ms": 0.0,
        "ratio_p50": ratio, "target_ratio": TARGET_RATIO, "refused": refused, "on_target": ok}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'identity.json'}")
    return ok
