"""Identities on the event path (seed 7.1.4): the certificates, signed commands as the CloudEvents verifiability
extension defines them, the command policy, and a forged knob command refused where it would be applied."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import subprocess
import sys

import httpx
import pytest

from mapemesh import events as catalogue
from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.log import read_all
from mapemesh.identity import Authority, Guard, IdentityError, TrustStore, Unverified, sign, verify
from mapemesh.identity.dsse import PAYLOAD_TYPE

from .conftest import copy_knative, signed, wait_for
from .test_serving import start_mesh

CPU0 = "sys/devices/system/cpu/cpu0/cpufreq"


def _apply(node: str = "n1", frequency: str = "min") -> CloudEvent:
    return catalogue.make_event(catalogue.KnobApply(node=node, knob="CPUFrequency", command={
        "command": "set", "cpu": "all", "frequency": frequency}, requested_by="test"), "/test",
        extensions={"node": node})


def test_a_signature_follows_the_verifiability_extension_to_the_letter(tmp_path):
    operator = Authority(tmp_path).issue("operator")
    event = sign(_apply(), operator)
    assert event.get("signedextattrs") == "node"
    envelope = json.loads(base64.b64decode(str(event.get("dssematerial"))))
    assert envelope["payloadType"] == PAYLOAD_TYPE == "https://cloudevents.io/verifiability/dsse/v0.1"
    assert envelope["signatures"][0]["keyid"] == "system:serviceaccount:default:operator"

    def sha(value: str | bytes) -> bytes:
        return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()

    # The verification material, built here from the extension's text (step 4): core attributes, then the
    # time in UTC with Z, the data, then each signed extension's name and value.
    when = datetime.datetime.fromisoformat(str(event.get("time"))).astimezone(datetime.UTC)
    parts = [sha(str(event.get(n) or "")) for n in ("id", "source", "specversion", "type", "datacontenttype",
                                                      "dataschema", "subject")]
    parts += [sha(when.isoformat().replace("+00:00", "Z")), sha(event.data or b""), sha("node"), sha("n1")]
    assert base64.b64decode(envelope["payload"]) == hashlib.sha256(b"".join(parts)).digest()
    # DSSE v1.0.2: the signature is over PAE(type, body) with the signer's key.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    body = base64.b64decode(envelope["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(body), body)
    operator.cert.public_key().verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae,
                                      ec.ECDSA(hashes.SHA256()))


def test_what_a_signature_covers_cannot_change_and_strangers_are_not_trusted(tmp_path):
    authority = Authority(tmp_path / "mesh")
    trust = TrustStore(tmp_path / "mesh")
    event = sign(_apply(), authority.issue("operator"))
    headers, body = to_binary(event)
    (delivered,) = from_http(headers, body)  # as the broker delivers it
    assert verify(delivered, trust) == "system:serviceaccount:default:operator"
    for attribute, value in (("node", "n2"), ("type", "io.mapemesh.other.v1"), ("subject", "x"), ("id", "other")):
        changed = CloudEvent({**event.attributes, attribute: value}, event.data)
        with pytest.raises(Unverified, match="not as"):
            verify(changed, trust)
    with pytest.raises(Unverified, match="not as"):
        verify(CloudEvent(event.attributes, event.data.replace(b"min", b"max")), trust)
    with pytest.raises(Unverified, match="not signed"):
        verify(_apply(), trust)
    with pytest.raises(Unverified, match="not a DSSE envelope"):
        verify(CloudEvent({**event.attributes, "dssematerial": "bm90IGpzb24="}, event.data), trust)
    # Someone with an authority of their own, using a name of this mesh: not signed by this mesh's authority.
    stranger = Authority(tmp_path / "elsewhere").issue("operator")
    (tmp_path / "mesh" / "certs" / "operator.pem").write_bytes(
        (tmp_path / "elsewhere" / "certs" / "operator.pem").read_bytes())
    with pytest.raises(Unverified, match="not signed by this mesh's authority"):
        verify(sign(_apply(), stranger), TrustStore(tmp_path / "mesh"))
    with pytest.raises(IdentityError, match="an identity name"):
        authority.issue("Not A Name")


def test_the_command_policy_decides_who_may_send_what(tmp_path, monkeypatch):
    authority = Authority(tmp_path)
    guard = Guard(TrustStore(tmp_path))
    assert guard.check(sign(_apply(), authority.issue("execute"))).allowed
    assert guard.check(sign(_apply(), authority.issue("operator"))).allowed
    denied = guard.check(sign(_apply(), authority.issue("bridge")))
    assert (denied.allowed, denied.rule) == (False, "not-allowed")
    assert denied.sender == "system:serviceaccount:default:bridge"
    assert guard.check(_apply()).rule == "unsigned"
    telemetry = catalogue.make_event(catalogue.TelemetryReported(asset="n1", asset_kind="node", metrics=[
        catalogue.Metric(name="cpu", value=1.0)]), "/t")
    assert guard.check(telemetry).allowed  # not a command: anyone may report
    deploy = catalogue.make_event(catalogue.DeployRequested(app_id="a", placement={}), "/t")
    assert guard.check(sign(deploy, authority.issue("operator"))).rule == "not-allowed"  # execute only
    assert Guard(None, root=tmp_path / "none").check(sign(_apply(), authority.issue("operator"))).rule == \
        "no-trust-anchor"
    (tmp_path / "policy.yaml").write_text("io.mapemesh.knob.apply.v1: [bridge]\n")
    monkeypatch.setenv("MAPEMESH_COMMAND_POLICY", str(tmp_path / "policy.yaml"))
    assert guard.check(sign(_apply(), authority.issue("bridge"))).allowed
    assert guard.check(sign(_apply(), authority.issue("operator"))).rule == "not-allowed"
    monkeypatch.setenv("MAPEMESH_IDENTITIES", "off")
    assert Guard.from_environment(tmp_path).check(_apply()).allowed  # a development mesh that trusts everyone


def test_a_forged_knob_command_changes_nothing_and_is_audited(tmp_path):
    sysfs = tmp_path / "sysfs"
    subprocess.run([sys.executable, "-m", "mapemesh", "node-shim", "simulate", "--profile", "acpi-cpufreq",
                    str(sysfs)], check=True, capture_output=True)
    project = tmp_path / "project"
    copy_knative(project, drop="policy-*.yaml")
    mesh = start_mesh(project, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}},
                      shim=["--node", "node-1", "--sysfs-root", str(sysfs)])
    try:
        wait_for(lambda: (project / "data" / "manifests" / "node-shim-node-1.yaml").exists() or None, timeout=30,
                 what="the node shim's Trigger")
        before = (sysfs / CPU0 / "scaling_max_freq").read_text()

        def post(event: CloudEvent) -> None:
            headers, body = to_binary(event)
            assert httpx.post(mesh.broker + "/default/default", headers=headers, content=body).status_code == 202

        # An unknown sender posts a knob command straight to the broker (the broker takes any event) ...
        forged = _apply("node-1")
        post(forged)
        # ... and one signed by an identity of another authority, claiming to be execute.
        stranger = Authority(tmp_path / "elsewhere").issue("execute")
        impostor = sign(_apply("node-1"), stranger)
        post(impostor)

        def refusals() -> list[dict]:
            return [json.loads(e.event.data) for e in read_all(mesh.data / "eventlog.db")
                    if e.event.type == catalogue.AuthRefused.event_type]

        found = wait_for(lambda: r if len(r := refusals()) >= 2 else None, timeout=30, what="both refusals")
        by_id = {r["command_id"]: r for r in found}
        assert by_id[forged.id]["rule"] == "unsigned" and by_id[forged.id]["sender"] == "/test"
        assert by_id[impostor.id]["rule"] == "unverified" and "does not verify" in by_id[impostor.id]["reason"]
        assert all(r["receiver"] == "node-shim-node-1" for r in found)
        assert (sysfs / CPU0 / "scaling_max_freq").read_text() == before  # no knob changed
        assert not [e for e in read_all(mesh.data / "eventlog.db")
                    if e.event.type in (catalogue.KnobApplied.event_type, catalogue.KnobFailed.event_type)]
        # The operator's identity (issued by this mesh) may: the same command, signed, is applied.
        post(signed(_apply("node-1"), mesh.data))
        wait_for(lambda: (sysfs / CPU0 / "scaling_max_freq").read_text() != before or None, timeout=30,
                 what="the operator's command applied")
    finally:
        mesh.proc.terminate()
        mesh.proc.wait(30)
