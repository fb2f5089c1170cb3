"""Run the example accelerated function's model on a GPU (CUDA, the gpu plugin) and on the CPU (the cpu plugin)
and print both latencies; CI never runs this (pytest does not collect it).

Run it on a machine with an NVIDIA GPU and a CUDA build of torch (`pip install mapemesh[accel]` takes one from
PyPI there):

    python tests/device/accel_check.py [--requests 500] [--batch 1]

It prints one JSON object per line: the device found, then per plugin (cpu, gpu) the device that served the
calls, p50 and p99 latency over the requests (after a warm-up), and whether the labels agree with the CPU's.
The calls go through `mapemesh.runtimes.vaccel.Session.torch_model_run`, as the function's do (mapemesh's
local torch backend; with the real vaccel package installed, vAccel's).

Exit status: 0 both ran and agree, 1 a check failed, 2 no CUDA device (or no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OK, FAILED, NO_GPU = 0, 1, 2


def emit(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def run(plugin: str, path: Path, requests: int, batch: int) -> dict[str, Any]:
    from mapemesh import settings
    from mapemesh.functions.accel.digits import model
    from mapemesh.runtimes import vaccel

    os.environ[vaccel.PLUGIN_ENV] = plugin
    settings.reset()
    session = vaccel.Session(vaccel.PluginType.TORCH | (vaccel.PluginType.GPU if plugin == "gpu" else
                                                        vaccel.PluginType.CPU))
    resource = vaccel.Resource(path, vaccel.ResourceType.MODEL)
    resource.register(session)
    inputs = [[v for i in range(batch) for row in model.render(str((n + i) % 10), 0.3, n + i) for v in row]
              for n in range(requests)]
    for flat in inputs[:20]:  # warm-up: the model's load, CUDA's context, TorchScript's profiling runs
        session.torch_model_run(resource, [vaccel.Tensor([batch, 64], vaccel.TensorType.FLOAT, flat)])
    times, labels = [], []
    for flat in inputs:
        started = time.perf_counter()
        [out] = session.torch_model_run(resource, [vaccel.Tensor([batch, 64], vaccel.TensorType.FLOAT, flat)])
        times.append((time.perf_counter() - started) * 1000)
        labels.append([max(range(10), key=out.data[r * 10:(r + 1) * 10].__getitem__) for r in range(batch)])
    times.sort()
    return {"device": session.last["device"], "backend": session.last["backend"],
            "p50_ms": round(statistics.median(times), 4), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 4),
            "labels": labels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    try:
        import torch
    except ImportError as exc:
        emit("torch", ok=False, error=str(exc))
        return NO_GPU
    if not torch.cuda.is_available():
        emit("cuda", ok=False, error="no CUDA device (torch.cuda.is_available() is False)",
             torch=torch.__version__)
        return NO_GPU
    emit("cuda", ok=True, device=torch.cuda.get_device_name(0), torch=torch.__version__)
    from mapemesh.functions.accel.digits import model

    path = model.build(Path(tempfile.mkdtemp(prefix="mapemesh-accel-")) / "digits.pt")
    results = {plugin: run(plugin, path, args.requests, args.batch) for plugin in ("cpu", "gpu")}
    agree = results["cpu"]["labels"] == results["gpu"]["labels"]
    for plugin, r in results.items():
        emit(plugin, ok=r["device"] == ("cuda" if plugin == "gpu" else "cpu"), device=r["device"],
             backend=r["backend"], p50_ms=r["p50_ms"], p99_ms=r["p99_ms"], requests=args.requests,
             batch=args.batch)
    emit("labels", ok=agree)
    good = agree and results["gpu"]["device"] == "cuda" and results["cpu"]["device"] == "cpu"
    return OK if good else FAILED


if __name__ == "__main__":
    sys.exit(main())
