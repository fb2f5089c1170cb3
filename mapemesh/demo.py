"""`make run`: the local mesh on this machine with a demo, and a live view of the loop until Ctrl-C.

1. `mapemesh up` in-process: broker, function host, this machine's node shim (a simulated cpufreq tree when
   /sys has none) and the northbound API.
2. Through the API, as an operator would: the demo cluster and continuum descriptions are registered (the node
   shim registers this machine's node itself), then the demo application (`web` with `latency_ms <= 20`).
3. The node shim streams telemetry. An outside system (this demo) reports the application's latency on this
   node, alternating between a missed target (35 ms) and a met one (12 ms) every `MAPEMESH_DEMO_PERIOD_S`
   seconds; the CPU-frequency policy answers with a plan for each change, and the node shim moves the node's
   CPU frequency to its maximum and back.
4. A live view (the API's `/events/stream`, as `mapemesh watch` shows it) prints events, plans and knob
   changes as they happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from importlib import resources
from typing import Any

import httpx
import orjson
import yaml

from mapemesh import events, tokens
from mapemesh.aio import run, until_stopped
from mapemesh.api.app import TOKEN_FILE
from mapemesh.cli.northbound import sse_data
from mapemesh.cli.view import LiveView
from mapemesh.identity.tokens import auth_headers
from mapemesh.serving.envhook import EnvHook
from mapemesh.settings import Settings, current, reset
from mapemesh.up import RunningMesh, start_mesh

log = logging.getLogger("mapemesh.demo")
PERIOD_S = current().demo_period_s
"""How long the demo's reported latency stays missed (then met) before it flips."""


def sample(name: str) -> dict[str, Any]:
    """A description shipped in mapemesh/samples/."""
    doc: dict[str, Any] = yaml.safe_load(resources.files("mapemesh").joinpath(f"samples/{name}.yaml").read_text())
    return doc


async def main(env_hook: EnvHook | None = None) -> None:
    """The demo on `mapemesh up`'s mesh (`env_hook`: the per-Service environment, which `mapemesh.cli.demo` gives:
    the vAccelPlugin knob's choices)."""
    settings = Settings.load()
    for port, var in ((settings.broker_port, "MAPEMESH_BROKER_PORT"), (settings.serving_port, "MAPEMESH_SERVING_PORT"),
                      (max(0, settings.node_shim_port), "MAPEMESH_NODE_SHIM_PORT"),
                      (max(0, settings.api_port), "MAPEMESH_API_PORT")):
        if port and not _port_free(settings.host, port):
            raise SystemExit(f"port {port} on {settings.host} is busy: set {var} (0 picks a free one)")
    if settings.api_port < 0:
        raise SystemExit("the demo drives the mesh through its API: MAPEMESH_API_PORT must not be -1")
    start = await asyncio.to_thread(_log_end, settings)  # the view shows this run's events, not an earlier run's
    mesh = await start_mesh(settings, env_hook)
    tasks: list[asyncio.Task[None]] = []
    try:
        assert mesh.api is not None
        token = tokens.read(settings.data, TOKEN_FILE)
        node = mesh.shim.shim.node if mesh.shim is not None else None
        ingress = f"{mesh.broker.url}/default/default"
        print(f"\nmapemesh is up: broker {ingress}\n  northbound API {mesh.api.url} (token in "
              f"{settings.data / TOKEN_FILE}; OpenAPI at {mesh.api.url}/docs)\n  function host {mesh.serving_url} "
              f"({len(mesh.host.revisions)} functions from {settings.manifests})\n"
              f"  node shim {mesh.shim.url + ' for node ' + node if mesh.shim else '(none)'}\n"
              # The token rides in the fragment, which the browser keeps to itself (mapemesh.api.page); as
              # Jupyter's link does, it carries the token, so this line is as secret as the token file.
              f"  dashboard {mesh.api.url}/ui/" + (f"#token={token}" if token else "") + "\n", flush=True)
        tasks.append(asyncio.create_task(_live_view(mesh.api.url, token or "", start)))
        await asyncio.sleep(0.3)  # the view is following before the demo acts
        async with httpx.AsyncClient(base_url=mesh.api.url, headers={"Authorization": f"Bearer {token}"},
                                     timeout=30) as api:
            await _operator(settings, api, node)
        if node is not None and "default/policy-cpu-frequency" in mesh.host.revisions:
            tasks.append(asyncio.create_task(_latency(mesh, ingress, node)))
        print("\nTry, in another terminal (the mesh's data directory is "
              f"{settings.data}):\n  .venv/bin/mapemesh apps list\n  .venv/bin/mapemesh apps details demo-app\n"
              "  .venv/bin/mapemesh apps performance demo-app\n  .venv/bin/mapemesh watch --all\n"
              "Ctrl-C stops the mesh.\n", flush=True)
        await until_stopped()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await mesh.stop()


async def _operator(settings: Settings, api: httpx.AsyncClient, node: str | None) -> None:
    """Register the demo cluster and continuum, then submit the demo application, through the API."""
    from mapemesh.state import open_store

    cluster = sample("demo-cluster")
    if node is not None:
        cluster["MLSysOpsCluster"]["nodes"] = [node]
    for doc in (cluster, sample("demo-continuum")):
        (await api.post("/infra/register", json={"yaml": doc})).raise_for_status()
    # Policies register when their functions first start: the application goes in once its placement policy
    # and the CPU-frequency policy are there.
    store = await asyncio.to_thread(open_store, settings.state, settings.data)
    try:
        for _ in range(100):
            if {"static-placement", "cpu-frequency"} <= set(await asyncio.to_thread(store.list, "policies")):
                break
            await asyncio.sleep(0.1)
    finally:
        store.close()
    answer = await api.post("/apps/deploy", json={"yaml": sample("demo-app")})
    if answer.status_code == 409:
        print("demo: demo-app is in the mesh already (from an earlier run): kept as it is", flush=True)
    else:
        answer.raise_for_status()


async def _latency(mesh: RunningMesh, ingress: str, node: str) -> None:
    """Report the demo application's latency on this node: missed (35 ms), then met (12 ms), and again."""
    from mapemesh.eventing.binding import to_binary

    values = (35.0, 12.0)
    turn = 0
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            value = values[turn % 2]
            metric = [events.Metric(name="latency_ms", value=value, unit="ms")]
            try:
                # The app's own figure (`apps performance demo-app`), and the same on the node it runs on (what
                # the node-scope CPU-frequency policy reads).
                for asset, kind in (("demo-app/web", "component"), (node, "node")):
                    event = events.make_event(events.TelemetryReported(asset=asset, asset_kind=kind, metrics=metric),
                                              source="/demo/load", subject=asset)
                    headers, body = to_binary(event)
                    headers.update(auth_headers(ingress, "operator"))  # the people who run the mesh
                    (await http.post(ingress, headers=headers, content=body)).raise_for_status()
                print(f"demo: demo-app's latency on {node} is now {value:g} ms (target <= 20 ms: "
                      f"{'missed' if value > 20 else 'met'})", flush=True)
            except httpx.HTTPError as exc:
                print(f"demo: the broker did not take the latency report: {exc}", flush=True)
            turn += 1
            await asyncio.sleep(PERIOD_S)


def _log_end(settings: Settings) -> int:
    """The newest position in the mesh's event log (0 when there is none yet)."""
    from mapemesh.eventing.log import last_seq, open_readonly

    if not settings.event_log_file.exists():
        return 0
    db = open_readonly(settings.event_log_file)
    try:
        return last_seq(db)
    finally:
        db.close()


async def _live_view(url: str, token: str, after: int) -> None:
    """Print the mesh's events as `mapemesh watch` does, from the API's event stream."""
    try:
        await _follow(url, token, after)
    except (httpx.HTTPError, OSError) as exc:
        print(f"demo: the live view stopped: {exc}", flush=True)


async def _follow(url: str, token: str, after: int) -> None:
    view = LiveView()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http, \
            http.stream("GET", f"{url}/events/stream", params={"after": after},
                        headers={"Authorization": f"Bearer {token}"}) as response:
        lines: list[str] = []
        async for raw in response.aiter_lines():
            lines.append(raw)
            if raw != "":
                continue
            for payload in sse_data(lines):
                try:
                    line = view.line(orjson.loads(payload))
                except orjson.JSONDecodeError:
                    continue  # not an event (the ingress refuses what could make one)
                if line is not None:
                    print(line, flush=True)
            lines = []


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(env_hook: EnvHook | None = None) -> None:
    """Run the demo until Ctrl-C (`python -m mapemesh.cli.demo`, what `make run` starts)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MAPEMESH_LOG_LEVEL", "warning")  # the function processes: warnings and errors only
    reset()
    logging.getLogger("mapemesh.up").setLevel(logging.INFO)
    run(main(env_hook))


if __name__ == "__main__":
    from mapemesh.cli.demo import main as cli_main  # the CLI wires the runtimes' hook in

    cli_main()
