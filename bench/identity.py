"""The cost of identities on the event path (`mapemesh.identity`): the MAPE reaction with commands signed by the
execute stage and checked at the node shim (identities on), against the same mesh with them off, in the same run.

Two `mapemesh up` in turn, the project's own manifests, the bench node shims of `bench.mape` (here they check
each command as the real shim does: `Guard.check`, the signature verified against the mesh's authority, before
answering). REACTIONS reactions each, no background load (it would measure the machine, not the check). Also
the two operations alone, in process: signing a knob command and verifying it.

In the "on" run the broker also checks every request as Knative's ingress does with `authentication-oidc` enabled
(a bearer token of a mesh identity, the shipped EventPolicies; `mapemesh.eventing.authz`): the bench's sender
presents the operator's token. The ingress alone is measured too: `mapemesh broker serve` with authentication on
and off, REQUESTS sequential posts each, same run; and a token's verification alone (the first request of a sender;
the ingress keeps a verified token until it expires).

Aim: the reaction's p50 with identities on within 1.2x of off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench import mape
from bench.coldstart import pct, wait
from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.identity import Authority, Guard, TrustStore, sign, verify
from mapemesh.identity.tokens import BROKER_AUDIENCE, mint
from mapemesh.identity.tokens import verify as verify_token

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
REACTIONS = 100
REQUESTS = 1000
TARGET_RATIO = 1.2
BROKER = BROKER_AUDIENCE.format(namespace="default", name="default")


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
        if identities:
            _oidc(manifests / "base")
        proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "up", "--manifests",
                                 str(manifests), "--data", str(data), "--port", "0", "--serving-port", "0",
                                 "--node-shim-port", "-1", "--api-port", "-1"], cwd=root, env=env)
        try:
            found = wait(lambda: mape._endpoints(data), what="mapemesh up")
            broker = found["broker"]  # type: ignore[index]
            if identities:
                shim.guard = Guard(TrustStore(data / "identity"))
                mape.AUTH = {"Authorization": f"Bearer {mint(Authority(data / 'identity').issue('operator'), BROKER)}"}
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
            if identities:
                refused = httpx.get(broker + "/healthz", timeout=10).json()["unauthorized"]
                assert refused == 0, f"the broker refused {refused} request(s) of the mesh's own senders"
        finally:
            mape.AUTH = {}
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return reactions, hops, shim.refused


def _oidc(base: Path, policies: bool = True) -> None:
    """Turn Knative's `authentication-oidc` on in a copy of the bundle's base/ (config-features of knative-eventing)
    and add the shipped EventPolicies (`../authentication`, as the README says)."""
    features = base / "config-features-eventing.yaml"
    doc = yaml.safe_load(features.read_text())
    doc["data"]["authentication-oidc"] = "enabled"
    features.write_text(yaml.safe_dump(doc))
    if policies:
        kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
        kustomization["resources"].append("../authentication")
        (base / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))


def _ingress(authenticated: bool, count: int) -> list[float]:
    """Milliseconds per accepted request at `mapemesh broker serve`, one sender posting in turn."""
    with tempfile.TemporaryDirectory(prefix="mapemesh-authz-") as tmp:
        root = Path(tmp)
        manifests = root / "knative"
        manifests.mkdir()
        for name in ("broker.yaml", "config-features-eventing.yaml"):  # a plain folder: every file is read
            shutil.copy(REPO / "knative" / "base" / name, manifests / name)
        if authenticated:
            _oidc(manifests, policies=False)
            shutil.copy(REPO / "knative" / "authentication" / "event-policies.yaml", manifests / "event-policies.yaml")
        data = root / "data"
        headers = {}
        if authenticated:
            token = mint(Authority(data / "identity").issue("operator"), BROKER)
            headers = {"Authorization": f"Bearer {token}"}
        proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "broker", "serve",
                                 "--data", str(data), "--manifests", str(manifests), "--port", "0",
                                 "--durability", "os"], cwd=root, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            url = str(wait(lambda: json.loads((data / "endpoints.json").read_text()).get("broker")
                           if (data / "endpoints.json").exists() else None, what="the broker")) + "/default/default"
            out = []
            with httpx.Client(timeout=30) as http:
                for i in range(count + 50):  # the first 50: warm-up
                    event = catalogue.make_event(mape.telemetry("n1", float(i)), "/bench")
                    body_headers, body = to_binary(event)
                    started = time.perf_counter()
                    response = http.post(url, headers={**body_headers, **headers}, content=body)
                    elapsed = (time.perf_counter() - started) * 1000
                    assert response.status_code == 202, response.text
                    if i >= 50:
                        out.append(elapsed)
            return out
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _verify_alone(rounds: int = 500) -> float:
    """µs to verify one token (a new sender's first request; later ones hit the ingress's cache)."""
    with tempfile.TemporaryDirectory() as tmp:
        operator = Authority(Path(tmp)).issue("operator")
        trust = TrustStore(Path(tmp))
        token = mint(operator, BROKER)
        verify_token(token, BROKER, trust)
        started = time.perf_counter()
        for _ in range(rounds):
            verify_token(token, BROKER, trust)
        return (time.perf_counter() - started) / rounds * 1e6


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
    requests = 200 if quick else REQUESTS
    plain, checked = _ingress(False, requests), _ingress(True, requests)
    token_us = _verify_alone()
    ingress_ms = statistics.median(checked) - statistics.median(plain)
    ratio = statistics.median(on) / statistics.median(off)
    ok = ratio <= TARGET_RATIO and refused == 0
    print(f"\nIdentities: MAPE reaction ({count} reactions, no background load), commands signed by execute and "
          "checked at the shim (on) against off, same run")
    print(f"{'path':40} {'p50':>8} {'p99':>8}")
    for label, values in (("reaction, identities off", off), ("reaction, identities on", on),
                          ("one broker hop (off run)", off_hops), ("one broker hop (on run)", on_hops)):
        print(f"{label:40} {statistics.median(values):6.2f}ms {pct(values, 99):6.2f}ms")
    print(f"sign one knob command: {sign_us:.0f} µs; verify it (certificate cached): {verify_us:.0f} µs")
    print(f"\nBroker ingress, {requests} sequential posts each, same run (Knative's authentication-oidc off / on "
          "with the shipped EventPolicies)")
    for label, values in (("ingress, authentication off", plain), ("ingress, authentication on", checked)):
        print(f"{label:40} {statistics.median(values):6.3f}ms {pct(values, 99):6.3f}ms")
    print(f"authorization at the ingress (p50 on - off): {ingress_ms:.3f} ms per request; a token's first "
          f"verification: {token_us:.0f} µs")
    print(f"on / off (p50): {ratio:.2f} (aim <= {TARGET_RATIO}); commands refused: {refused} "
          f"{'OK' if ok else 'MISSED'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "identity.json").write_text(json.dumps({
        "benchmark": "identity", "reactions": count,
        "reaction_ms": {"off": {"p50": statistics.median(off), "p99": pct(off, 99)},
                        "on": {"p50": statistics.median(on), "p99": pct(on, 99)}},
        "one_hop_ms": {"off": statistics.median(off_hops), "on": statistics.median(on_hops)},
        "sign_us": sign_us, "verify_us": verify_us, "ingress_authorization_ms": ingress_ms,
        "ingress_ms": {"off": {"p50": statistics.median(plain), "p99": pct(plain, 99)},
                       "on": {"p50": statistics.median(checked), "p99": pct(checked, 99)}},
        "token_verify_us": token_us,
        "ratio_p50": ratio, "target_ratio": TARGET_RATIO, "refused": refused, "on_target": ok}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'identity.json'}")
    return ok
