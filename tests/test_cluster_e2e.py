"""The demo loop on a real cluster with Knative Serving and Eventing: runs only when MAPEMESH_E2E_KUBECONFIG names one.

Before: the images built and reachable by the cluster (`make images`, or `kind load docker-image ...`) and the
Secrets of README "Run on a cluster" made. MAPEMESH_E2E_OVERLAY picks the overlay (default `local`, for a kind /
k3d / minikube cluster); MAPEMESH_E2E_BROKER_SERVICE the broker ingress Service in knative-eventing (default
`broker-ingress`, the channel-based broker's; `kafka-broker-ingress` for the Kafka broker). The test applies the
overlay, waits for the API and the node shims, registers the demo infrastructure and application through the API,
reports a missed latency on a node, and waits for the cpu-frequency policy's knob change to be applied there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary

from .conftest import REPO, wait_for

KUBECONFIG = os.environ.get("MAPEMESH_E2E_KUBECONFIG")
OVERLAY = os.environ.get("MAPEMESH_E2E_OVERLAY", "local")
BROKER_SERVICE = os.environ.get("MAPEMESH_E2E_BROKER_SERVICE", "broker-ingress")
pytestmark = [
    pytest.mark.skipif(not KUBECONFIG, reason="MAPEMESH_E2E_KUBECONFIG names no cluster with Knative to run the "
                                              "demo loop on"),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed"),
]


def kubectl(*args: str, timeout: float = 300) -> str:
    r = subprocess.run(["kubectl", "--kubeconfig", str(KUBECONFIG), *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


@contextlib.contextmanager
def port_forward(target: str, port: int, namespace: str = "default") -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    proc = subprocess.Popen(["kubectl", "--kubeconfig", str(KUBECONFIG), "-n", namespace, "port-forward", target,
                             f"{local}:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _connects(local), timeout=30, what=f"port-forward to {target}")
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(10)


def _connects(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_demo_loop_changes_a_nodes_cpu_frequency_on_the_cluster():
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "knative" / "overlays" / OVERLAY))
    kubectl("rollout", "status", "daemonset/mapemesh-node-shim", "--timeout=300s", timeout=330)
    kubectl("rollout", "status", "deployment/mapemesh-api", "--timeout=300s", timeout=330)
    kubectl("wait", "--for=condition=Ready", "broker/default", "--timeout=300s", timeout=330)
    node = kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").strip()
    token = subprocess.run(["sh", "-c", f"kubectl --kubeconfig {KUBECONFIG} get secret mapemesh-api-token -o "
                            "jsonpath='{.data.token}' | base64 -d"], capture_output=True, text=True).stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    samples = REPO / "mapemesh" / "samples"
    with port_forward("svc/mapemesh-api", 80) as api, \
            port_forward(f"svc/{BROKER_SERVICE}", 80, namespace="knative-eventing") as broker:
        for name in ("demo-cluster", "demo-continuum"):
            r = httpx.post(api + "/infra/register", headers=auth, json={"yaml": (samples / f"{name}.yaml").read_text()})
            assert r.status_code < 300, r.text
        assert httpx.post(api + "/apps/deploy", headers=auth,
                          json={"yaml": (samples / "demo-app.yaml").read_text()}).status_code < 300
        # The node's shim registered it; a missed latency there makes the cpu-frequency policy plan max frequency.
        wait_for(lambda: node in httpx.get(api + "/infra/list/", headers=auth).text, timeout=120,
                 what=f"node {node} registered by its shim")
        event = catalogue.make_event(catalogue.TelemetryReported(asset=node, asset_kind="node", metrics=[
            catalogue.Metric(name="latency_ms", value=35.0, unit="ms")]), "/e2e", subject=node)
        headers, body = to_binary(event)
        assert httpx.post(broker + "/default/default", headers=headers, content=body).status_code == 202

        def applied() -> bool:
            with httpx.stream("GET", api + "/events/stream", params={"after": 0, "type": catalogue.KnobApplied
                                                                      .event_type, "timeout_s": 5},
                              headers=auth, timeout=30) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        data = json.loads(line[6:]).get("data") or {}
                        if data.get("node") == node and data.get("knob") == "CPUFrequency":
                            return True
            return False

        deadline = time.monotonic() + 300
        while not applied():
            assert time.monotonic() < deadline, "no CPUFrequency change applied on the node within 5 minutes"
