"""Deploying to a real Karmada control plane or cluster: runs only when MAPEMESH_E2E_KUBECONFIG names one.

Set MAPEMESH_E2E_KUBECONFIG (and MAPEMESH_E2E_CONTEXT, MAPEMESH_E2E_CLUSTER for the member cluster to place on,
MAPEMESH_E2E_KARMADA=false for a plain cluster). The test applies a one-component application (nginx), waits
until it runs, and removes it.
"""

from __future__ import annotations

import os
import time

import pytest

from mapemesh.functions.deploy.apply import KubernetesTarget, api_client
from mapemesh.functions.deploy.render import render_app

KUBECONFIG = os.environ.get("MAPEMESH_E2E_KUBECONFIG")
pytestmark = pytest.mark.skipif(not KUBECONFIG, reason="MAPEMESH_E2E_KUBECONFIG names no Karmada or cluster to use")


def test_deploy_runs_and_is_removed():
    karmada = os.environ.get("MAPEMESH_E2E_KARMADA", "true").lower() != "false"
    cluster = os.environ.get("MAPEMESH_E2E_CLUSTER", "member1")
    app = {"MLSysOpsApp": {"name": "mapemesh-e2e", "components": [
        {"metadata": {"name": "web"}, "containers": [{"image": "nginx:1.27",
                                                      "ports": [{"container_port": 80, "protocol": "TCP"}]}]}]}}
    rendering = render_app(app, {"web": [cluster]}, karmada=karmada)
    target = KubernetesTarget(api_client(KUBECONFIG, os.environ.get("MAPEMESH_E2E_CONTEXT")), karmada=karmada)
    target.apply(rendering.objects)
    try:
        deadline = time.monotonic() + 300
        status: dict = {}
        while time.monotonic() < deadline:
            status = target.status(rendering.objects)
            if status.get("deployed"):
                break
            time.sleep(5)
        assert status.get("deployed"), status
    finally:
        target.delete(rendering.objects)
