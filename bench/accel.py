"""Invocation latency of the example accelerated function through the broker, next to calling its model
directly in the same run: the overhead mapemesh adds.

`mapemesh up` runs a broker and the local function host with the example function (`accel-digits`, kept warm:
`min-scale: 1`) on the CPU plugin, and a Trigger that brings its replies to a receiver here. Per request:
posted to the broker -> Trigger -> function (vAccel's torch operation on mapemesh's local backend) -> reply ->
broker -> Trigger -> receiver, one at a time, measured on this process's clock from the post to the reply's
arrival. The baseline, in the same run: the same TorchScript model through `vaccel.Session.torch_model_run`
in this process, and the bare `torch.jit` call. No target: the table shows what the mesh costs.
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
from aiohttp import web

from bench.coldstart import Receiver, _endpoints, pct, wait
from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


class Replies(Receiver):
    """Replies by the request they answer: `by_request[id]` is when the reply to request `id` arrived."""

    def __init__(self) -> None:
        self.by_request: dict[str, float] = {}
        super().__init__()

    async def _handle(self, request: web.Request) -> web.Response:
        from mapemesh.eventing.binding import from_http

        now = time.time()
        (event,) = from_http(request.headers, await request.read())
        self.by_request[json.loads(event.data or b"{}").get("request", "")] = now
        return web.Response(status=202)


def manifests(root: Path, receiver: str) -> Path:
    kn = root / "knative"
    kn.mkdir()
    for path in (REPO / "knative" / "base" / "broker.yaml",  # and the Knative settings its objects need:
                 REPO / "knative" / "base" / "config-features-eventing.yaml",  # retryAfterMax,
                 REPO / "knative" / "base" / "config-autoscaler.yaml",  # initial-scale 0,
                 REPO / "runtimes" / "knative-serving-features.yaml"):  # runtimeClassName
        shutil.copy(path, kn / path.name)
    service, trigger = yaml.safe_load_all((REPO / "knative" / "base" / "accel-digits.yaml").read_text())
    service["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] = "1"
    replies = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "bench-replies", "namespace": "default"},
               "spec": {"broker": "default", "filters": [{"exact": {"type": catalogue.AccelReplied.event_type}}],
                        "subscriber": {"uri": receiver}}}
    (kn / "accel.yaml").write_text(yaml.safe_dump_all([service, trigger, replies]))
    shutil.copytree(REPO / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    return kn


def through_broker(broker: str, receiver: Replies, n: int) -> list[float]:
    from mapemesh.functions.accel.digits import model

    out = []
    with httpx.Client() as http:
        for i in range(n):
            event = catalogue.make_event(catalogue.AccelRequested(input={"image": model.render(str(i % 10), 0.2, i)}),
                                         "/bench", extensions={"function": "digits"})
            headers, body = to_binary(event)
            started = time.time()
            assert http.post(broker + "/default/default", headers=headers, content=body).status_code == 202
            at = wait(lambda rid=event.id: receiver.by_request.get(rid), what="the reply")
            out.append((at - started) * 1000)  # type: ignore[operator]
    return out


def directly(n: int, data: Path) -> tuple[list[float], list[float]]:
    """The same model in this process: through the vAccel client, and the bare TorchScript call."""
    import torch

    from mapemesh.functions.accel.digits import model
    from mapemesh.runtimes import vaccel

    path = model.ensure(data / "models")
    session = vaccel.Session(vaccel.PluginType.TORCH)
    resource = vaccel.Resource(path, vaccel.ResourceType.MODEL)
    resource.register(session)
    scripted = torch.jit.load(str(path))
    client, bare = [], []
    for i in range(n):
        flat = [v for row in model.render(str(i % 10), 0.2, i) for v in row]
        started = time.perf_counter()
        session.torch_model_run(resource, [vaccel.Tensor([1, 64], vaccel.TensorType.FLOAT, flat)])
        client.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        with torch.inference_mode():
            scripted(torch.tensor(flat).reshape(1, 64))
        bare.append((time.perf_counter() - started) * 1000)
    return client, bare


def main(quick: bool = False) -> bool:
    n = 50 if quick else 200
    receiver = Replies()
    with tempfile.TemporaryDirectory(prefix="mapemesh-accel-") as tmp:
        root = Path(tmp)
        kn = manifests(root, receiver.url)
        data = root / "data"
        proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "up", "--manifests",
                                 str(kn), "--data", str(data), "--port", "0", "--serving-port", "0",
                                 "--node-shim-port", "-1", "--api-port", "-1"], cwd=root,
                                env={**os.environ, "MAPEMESH_VACCEL": "local", "MAPEMESH_VACCEL_PLUGIN": "cpu"})
        try:
            found = wait(lambda: _endpoints(data), what="mapemesh up")
            broker = found["broker"]  # type: ignore[index]
            through_broker(broker, receiver, 20)  # warm: the process, the model, TorchScript's profiling runs
            mesh = through_broker(broker, receiver, n)
            client, bare = directly(n, data)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    rows = {"through the broker (mapemesh)": mesh, "vAccel client in-process": client, "bare TorchScript call": bare}
    summary = {name: {"p50": statistics.median(v), "p99": pct(v, 99)} for name, v in rows.items()}
    overhead = summary["through the broker (mapemesh)"]["p50"] - summary["vAccel client in-process"]["p50"]
    print(f"\naccelerated function (digits, CPU plugin, warm): {n} requests one at a time")
    print(f"{'path':32} {'p50':>9} {'p99':>9}")
    for name, s in summary.items():
        print(f"{name:32} {s['p50']:7.2f}ms {s['p99']:7.2f}ms")
    print(f"mapemesh adds {overhead:.2f} ms at p50 (broker, Trigger, function process, reply, Trigger) over the "
          f"model called in-process")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accel.json").write_text(json.dumps({
        "benchmark": "accel", "requests": n, "results_ms": summary, "overhead_p50_ms": overhead}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'accel.json'}")
    return True
