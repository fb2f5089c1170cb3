"""Who may post to the broker: Knative's OIDC authentication and EventPolicy authorization at the ingress
(`mapemesh.eventing.authz`, after knative/eventing `pkg/auth/verifier.go` and `event_policy.go`), and the tokens of
the mesh's identities (`mapemesh.identity.tokens`).

| rule                                                               | test                                         |
|--------------------------------------------------------------------|----------------------------------------------|
| a token verifies only for its audience, signer, issuer and time    | test_a_token_verifies_only_as_issued         |
| EventPolicy: to (all, ref, selector), from (sub, `*`), filters     | test_which_policies_apply_and_whom_they_admit|
| no policy applies: default-authorization-mode                      | test_the_default_authorization_modes         |
| policies with from.ref or a bad sub are not ready                  | test_a_policy_that_cannot_be_ready_is_left_out|
| the ingress: 401 without a valid token, 403 for a sender no policy | test_the_ingress_refuses_unknown_and_        |
| admits, 202 for one it does; nothing refused is stored             | unadmitted_senders                           |
| off without `authentication-oidc` (Knative's stock)                | same test, first part                        |
| every mesh component presents its token: the demo runs with        | test_the_demo_runs_with_authentication_on    |
| authentication on and the shipped EventPolicies                    |                                              |
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from mapemesh import events as catalogue
from mapemesh import manifests
from mapemesh.eventing.authz import Authorizer, policies_from
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.log import read_all
from mapemesh.identity import Authority, TrustStore
from mapemesh.identity.tokens import TokenError, audience_of, mint, verify

from .conftest import REPO, copy_knative, jsonl, wait_for

BROKER = "eventing.knative.dev/broker/default/default"
SA = "system:serviceaccount:default:"


def _event(type_: str = "io.mapemesh.knob.apply.v1", **ext: str) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": "e1", "source": "/test", "type": type_, **ext}, None)


def test_a_token_verifies_only_as_issued(tmp_path):
    authority = Authority(tmp_path / "identity")
    operator = authority.issue("operator")
    trust = TrustStore(tmp_path / "identity")
    token = mint(operator, BROKER, now=1_000_000)
    assert verify(token, BROKER, trust, now=1_000_100)["sub"] == SA + "operator"
    assert audience_of("http://127.0.0.1:8080/default/default") == BROKER
    for bad, now, why in ((token, 1_000_100 + 3600 + 61, "expired"),
                          (mint(operator, "eventing.knative.dev/broker/default/other", now=1_000_000), 1_000_100,
                           "not 'eventing.knative.dev/broker/default/default'"),
                          (token[:-4] + "AAAA", 1_000_100, "signature"),
                          ("x.y", 1_000_100, "three"),
                          (_none_alg(operator.subject), 1_000_100, "ES256")):
        with pytest.raises(TokenError, match=why):
            verify(bad, BROKER, trust, now=now)
    stranger = Authority(tmp_path / "elsewhere").issue("operator")  # same name, another authority
    with pytest.raises(TokenError, match="signature"):
        verify(mint(stranger, BROKER, now=1_000_001), BROKER, trust, now=1_000_100)
    with pytest.raises(TokenError, match="no certificate was issued"):
        verify(mint(Authority(tmp_path / "elsewhere").issue("intruder"), BROKER), BROKER, trust)
    # re-issued with a new key (a certificate near its end is): the verifier reads the certificate again
    verify(mint(operator, BROKER), BROKER, trust)  # its key now cached
    for old in (tmp_path / "identity" / "certs" / "operator.pem", tmp_path / "identity" / "keys" / "operator.key"):
        old.unlink()
    renewed = authority.issue("operator")
    assert renewed.cert.serial_number != operator.cert.serial_number
    assert verify(mint(renewed, BROKER), BROKER, trust)["sub"] == SA + "operator"


def _none_alg(subject: str) -> str:
    def b64(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none'})}.{b64({'sub': subject, 'aud': BROKER, 'exp': 2_000_000_000})}."


POLICIES = [
    {"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
     "metadata": {"name": "commands", "namespace": "default"},
     "spec": {"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}],
              "from": [{"sub": SA + "execute"}, {"sub": SA + "operator"}],
              "filters": [{"exact": {"type": "io.mapemesh.knob.apply.v1"}}]}},
    {"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
     "metadata": {"name": "agents", "namespace": "default"},
     "spec": {"to": [{"selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                                   "matchLabels": {"tier": "mesh"}}}],
              "from": [{"sub": SA + "node-shim-*"}],
              "filters": [{"prefix": {"type": "io.mapemesh.knob."}}]}},
]


def _found(*docs: dict) -> manifests.ManifestSet:
    found = manifests.ManifestSet()
    for doc in docs:
        meta = doc["metadata"]
        found.objects.append(manifests.Manifest(doc["apiVersion"], doc["kind"], meta["name"],
                                                meta.get("namespace", "default"), doc, "test"))
    return found


def _broker(name: str = "default", **labels: str) -> dict:
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": name, "namespace": "default", "labels": labels}}


def _features(**data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config-features",
                                                                  "namespace": "knative-eventing"}, "data": data}


def test_which_policies_apply_and_whom_they_admit(tmp_path):
    authz = Authorizer(tmp_path)
    authz.refresh(_found(_broker(tier="mesh"), _broker("other"), *POLICIES,
                         _features(**{"authentication-oidc": "enabled"})))
    assert authz.on and authz.errors == []
    apply, applied = _event(), _event("io.mapemesh.knob.applied.v1")
    assert authz.authorize("default/default", SA + "execute", [apply]) is None
    assert authz.authorize("default/default", SA + "node-shim-n1", [applied]) is None  # the selector's, `*`
    assert authz.authorize("default/default", SA + "node-shim-n1", [apply]) is None  # prefix io.mapemesh.knob.
    status, why = authz.authorize("default/default", SA + "execute", [applied])  # type: ignore[misc]
    assert status == 403 and "commands, agents" in why
    assert authz.authorize("default/default", SA + "intruder", [apply])[0] == 403  # type: ignore[index]
    # `other` has no label and no policy names it: the stock allow-same-namespace decides
    assert authz.authorize("default/other", SA + "intruder", [applied]) is None


def test_the_default_authorization_modes(tmp_path):
    authz = Authorizer(tmp_path)
    for mode, same, foreign in (("allow-all", None, None), ("allow-same-namespace", None, 403),
                                ("deny-all", 403, 403)):
        authz.refresh(_found(_broker(), _features(**{"authentication-oidc": "enabled",
                                                     "default-authorization-mode": mode})))
        got = [authz.authorize("default/default", sub, [_event()])
               for sub in (SA + "operator", "system:serviceaccount:elsewhere:operator")]
        assert [g and g[0] for g in got] == [same, foreign], mode
    authz.refresh(_found(_broker(), _features(**{"default-authorization-mode": "sometimes"})))
    assert authz.features.errors and authz.features.authorization_mode == "allow-same-namespace"


def test_a_policy_that_cannot_be_ready_is_left_out():
    refs = {**POLICIES[0], "metadata": {"name": "refs", "namespace": "default"},
            "spec": {"from": [{"ref": {"apiVersion": "sources.knative.dev/v1", "kind": "PingSource",
                                       "name": "p", "namespace": "default"}}]}}
    star = {**POLICIES[0], "metadata": {"name": "star", "namespace": "default"},
            "spec": {"from": [{"sub": "system:*:default"}]}}
    specs = ({"from": [{"ref": "x"}]}, {"to": [{"selector": {"matchLabels": [1]}}]}, {"to": "all"}, "not a mapping",
             {"filters": [{"exact": {"a": "1", "b": "2"}}]})
    broken = [{**POLICIES[0], "metadata": {"name": f"broken-{i}", "namespace": "default"}, "spec": spec}
              for i, spec in enumerate(specs)]
    oidc = _features(**{"authentication-oidc": "enabled"})
    ready, errors = policies_from(_found(refs, star, *broken, POLICIES[0], oidc))
    assert [p.name for p in ready] == ["commands"]
    assert any("refs" in e and "cannot be resolved" in e for e in errors)
    assert any("star" in e and "only allowed at the end" in e for e in errors)
    assert all(any(f"broken-{i}" in e for e in errors) for i in range(len(broken)))
    authz = Authorizer(Path("unused"))  # a malformed policy never takes the ingress down
    authz.refresh(_found(_broker(), *broken, POLICIES[0], _features(**{"authentication-oidc": "enabled"})))
    assert authz.authorize("default/default", SA + "operator", [_event()]) is None


def test_an_event_policy_is_refused_while_authentication_is_off():
    # Knative's webhook: "oidc-authentication feature not enabled" (eventpolicy_validation.go)
    ready, errors = policies_from(_found(_broker(), POLICIES[0], _features()))
    assert ready == [] and errors == ["test: EventPolicy default/commands: oidc-authentication feature not enabled"]


def _post(url: str, event: CloudEvent, token: str | None = None) -> httpx.Response:
    headers, body = to_binary(event)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url, headers=headers, content=body, timeout=10)


def test_the_ingress_refuses_unknown_and_unadmitted_senders(tmp_path):
    data = tmp_path / "data"
    authority = Authority(data / "identity")
    manifests_dir = tmp_path / "knative"
    manifests_dir.mkdir()
    shutil.copy(REPO / "knative" / "base" / "broker.yaml", manifests_dir / "broker.yaml")
    features = yaml.safe_load((REPO / "knative" / "base" / "config-features-eventing.yaml").read_text())
    (manifests_dir / "features.yaml").write_text(yaml.safe_dump(features))
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "broker", "serve",
                             "--data", str(data), "--manifests", str(manifests_dir), "--port", "0"])
    try:
        url = wait_for(lambda: json.loads((data / "endpoints.json").read_text()).get("broker")
                       if (data / "endpoints.json").exists() else None, what="the broker") + "/default/default"
        forged = catalogue.make_event(catalogue.KnobApply(node="n1", knob="CPUFrequency", command={"frequency": "max"},
                                                          requested_by="x"), "/forged")
        assert _post(url, forged).status_code == 202  # Knative's stock: authentication-oidc disabled
        features["data"]["authentication-oidc"] = "enabled"
        (manifests_dir / "features.yaml").write_text(yaml.safe_dump(features))
        (manifests_dir / "policies.yaml").write_text(yaml.safe_dump_all(POLICIES))
        wait_for(lambda: _post(url, forged).status_code == 401, what="authentication on")
        operator, intruder = authority.issue("operator"), authority.issue("intruder")
        stranger = Authority(tmp_path / "other-ca").issue("operator")
        for token, status, why in ((None, 401, "no JWT token"), (mint(stranger, BROKER), 401, "signature"),
                                   (mint(intruder, BROKER), 403, "no applying event policy"),
                                   (mint(operator, "eventing.knative.dev/broker/default/x"), 401, "not")):
            answer = _post(url, forged, token)
            assert (answer.status_code, why in answer.json()["error"]) == (status, True), answer.text
        allowed = catalogue.make_event(catalogue.KnobApply(node="n1", knob="CPUFrequency",
                                                           command={"frequency": "min"}, requested_by="operator"),
                                       "/operator")
        assert _post(url, allowed, mint(operator, BROKER)).status_code == 202
        stored = [e.event for e in read_all(data / "eventlog.db")]
        ids = [e.id for e in stored]  # the forgery only while authentication was off (posted until it was on)
        assert set(ids) == {forged.id, allowed.id} and ids[-1] == allowed.id and ids.count(allowed.id) == 1

        def send(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(data), "events", "send",
                                   "--broker", url, "--type", "io.mapemesh.knob.apply.v1", "--source", "/cli",
                                   *args], capture_output=True, text=True, timeout=60)

        assert send().returncode == 0  # as the operator, by default
        refused = send("--as", "nobody")  # no such identity here: no token
        assert refused.returncode == 1 and "401" in refused.stdout + refused.stderr
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_demo_runs_with_authentication_on(tmp_path):
    """`make run`'s demo with `authentication-oidc` on and the shipped EventPolicies: the API, the functions, the
    node shim and the demo's load each present their token (the broker refuses none of them), and the policy's knob
    change happens; a sender without a token is refused."""
    copy_knative(tmp_path)
    shutil.copytree(REPO / "functions", tmp_path / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    enable_authentication(tmp_path / "knative" / "base")
    sysfs = tmp_path / "sysfs"
    subprocess.run([sys.executable, "-m", "mapemesh", "node-shim", "simulate", "--profile", "intel_pstate",
                    str(sysfs)], check=True, capture_output=True)
    data = tmp_path / "data"
    env = {**os.environ, "MAPEMESH_DATA": str(data), "MAPEMESH_BROKER_PORT": "0", "MAPEMESH_SERVING_PORT": "0",
           "MAPEMESH_NODE_SHIM_PORT": "0", "MAPEMESH_API_PORT": "0", "MAPEMESH_SYSFS_ROOT": str(sysfs),
           "MAPEMESH_NODE": "demo-node", "MAPEMESH_DEMO_PERIOD_S": "3",
           "MAPEMESH_MANIFESTS": str(tmp_path / "knative"), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh.cli.demo"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        journal = data / "node-shim" / "demo-node" / "journal.jsonl"

        def to_max() -> list[dict]:
            assert proc.poll() is None, "".join(lines)[-4000:]
            applied = jsonl(journal)
            return [a for a in applied if a["requested_by"] == "policy/cpu-frequency"
                    and a["command"].get("frequency") == "max" and not a.get("error")]

        wait_for(to_max, timeout=90, what="the policy's knob change with every sender authenticated")
        broker = json.loads((data / "endpoints.json").read_text())["broker"]
        health = httpx.get(broker + "/healthz", timeout=10).json()
        assert health["authentication_oidc"] is True and health["unauthorized"] == 0, "".join(lines)[-4000:]
        answer = _post(broker + "/default/default", catalogue.make_event(catalogue.TelemetryReported(
            asset="demo-node", asset_kind="node", metrics=[catalogue.Metric(name="x", value=1.0)]), "/anonymous"))
        assert answer.status_code == 401
        assert httpx.get(broker + "/healthz", timeout=10).json()["unauthorized"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reader.join(5)


def enable_authentication(base: Path) -> None:
    """What the README says to do in a bundle's base/: `authentication-oidc` on, `../authentication` listed."""
    features = base / "config-features-eventing.yaml"
    doc = yaml.safe_load(features.read_text())
    doc["data"]["authentication-oidc"] = "enabled"
    features.write_text(yaml.safe_dump(doc))
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    kustomization["resources"].append("../authentication")
    (base / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))


def test_the_shipped_policies_are_ready_with_authentication_on(tmp_path):
    assert policies_from(manifests.load(REPO / "knative"))[0] == []  # the bundle as shipped: none (stock: off)
    enable_authentication(copy_knative(tmp_path) / "base")
    found = manifests.load(tmp_path / "knative")
    ready, errors = policies_from(found)
    assert errors == [] and ready, "knative/ ships EventPolicies for the default broker"
    assert {p.name for p in ready} >= {"mapemesh-components", "mapemesh-node-agents"}
    authz = Authorizer(Path("unused"))
    authz.refresh(found)
    failed = _event("io.mapemesh.knob.failed.v1")
    # a forged knob failure (it would lower the node's trust credit) only from what applies knobs
    assert authz.authorize("default/default", SA + "operator", [failed])[0] == 403  # type: ignore[index]
    assert authz.authorize("default/default", SA + "node-shim-n1", [failed]) is None
    assert authz.authorize("default/default", SA + "operator", [_event()]) is None
    assert authz.authorize("default/default", "system:serviceaccount:other:x", [_event()])[0] == 403  # type: ignore
