"""`mapemesh up`: the broker, the local function host, this machine's node shim and the northbound API in one
process.

| piece | started by `start_mesh(settings, env_hook)` |
|---|---|
| broker | `eventing.server.start_broker`, on `settings.broker_port` |
| function host | `serving.host.LocalHost` on `settings.serving_port`, the broker delivering to it in-process; its |
| | Services get `env_hook`'s env (the CLI passes the vAccelPlugin knob's; None: their own env only) |
| node shim | `node_shim.daemon.start_node_shim` unless `settings.node_shim_port` is -1; its vAccelPlugin knob sees |
| | the host's Services and has the host apply a new choice at once |
| northbound API | `api.server.start_api` unless `settings.api_port` is -1 |
| MQTT bridge | `bridge.daemon.Bridge` when `settings.mqtt_url` is set (far-edge devices, CloudEvents over MQTT on |
| | `settings.mqtt_topics`) |
| storage gateway | `storage.service.Gateway` when `settings.storage_locations` names a locations file |
| identities | with `settings.identities`: the authority in DATA_DIR/identity, an identity per component (each |
| | Service's as it starts: MAPEMESH_IDENTITY), and this process's guards on (`mapemesh.identity`) |

Each records its URL in DATA_DIR/endpoints.json; `RunningMesh.stop` stops them in the reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from mapemesh import endpoints
from mapemesh.aio import until_stopped
from mapemesh.api.server import RunningApi, start_api
from mapemesh.bridge.daemon import Bridge, client_id_for
from mapemesh.eventing.server import RunningBroker, start_broker
from mapemesh.names import dns_name
from mapemesh.node_shim.daemon import RunningShim
from mapemesh.serving.envhook import EnvHook
from mapemesh.serving.host import LocalHost
from mapemesh.settings import Settings
from mapemesh.settings import reset as reset_settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunningMesh:
    """A started mesh: the broker, the function host and their URLs."""

    broker: RunningBroker
    host: LocalHost
    host_runner: web.AppRunner
    serving_url: str
    shim: RunningShim | None = None
    shim_trigger: Path | None = None
    api: RunningApi | None = None
    bridge: Bridge | None = None
    storage: Any = None
    """The storage gateway (`mapemesh.storage.service.Gateway`) when `settings.storage_locations` is set."""

    async def stop(self) -> None:
        """Stop the API, the MQTT bridge, the node shim, the function processes and the fork server (waiting
        requests get 503), then the servers."""
        if self.api is not None:
            await self.api.stop()
        if self.bridge is not None:
            await self.bridge.stop()
        if self.storage is not None:
            await self.storage.stop()
        if self.shim is not None:
            if self.shim_trigger is not None:
                self.shim_trigger.unlink(missing_ok=True)
            await self.shim.stop()
        self.broker.dispatcher.local.pop(self.serving_url, None)
        self.broker.dispatcher.resolver.serving_url = None
        await self.host.stop()
        await self.host_runner.cleanup()
        endpoints.unregister(self.broker.settings.data, "serving", self.serving_url)
        await self.broker.stop()


async def start_mesh(settings: Settings, env_hook: EnvHook | None = None) -> RunningMesh:
    """Start the broker, then the function host on its own port (its Services' extra env from `env_hook`), the
    node shim and the API; record each in endpoints.json."""
    identity_env = {"MAPEMESH_IDENTITIES": "on" if settings.identities else "off"}
    if settings.identities:
        env_hook = _identities(settings, env_hook)
        identity_env["MAPEMESH_IDENTITY_DIR"] = str((settings.data / "identity").resolve())
        # this process's components (API, node shim, bridge, storage gateway) find their identities there too
        os.environ.setdefault("MAPEMESH_IDENTITY_DIR", identity_env["MAPEMESH_IDENTITY_DIR"])
        reset_settings()
    broker = await start_broker(settings)
    host: LocalHost | None = None
    runner: web.AppRunner | None = None
    try:
        host = LocalHost(broker.ingress.brokers, settings.activator_queue, {
            "MAPEMESH_DATA": str(settings.data.resolve()), "MAPEMESH_STATE": settings.state,
            "MAPEMESH_BROKER_URL": broker.url, **identity_env,
            "K_SINK": f"{broker.url}/default/default"}, env_hook, min_window_s=settings.local_min_window_s)
        await host.start()
        runner = web.AppRunner(host.app(), access_log=None, handle_signals=False, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.serving_port, reuse_address=True)
        await site.start()
    except BaseException:  # a port in use, say: leave nothing behind
        if host is not None:
            await host.stop()
        if runner is not None:
            await runner.cleanup()
        await broker.stop()
        raise
    h, port = runner.addresses[0][:2]
    url = f"http://{h}:{port}"
    endpoints.register(settings.data, "serving", url)
    # The broker reaches the functions of this process directly, as the activator would, not over loopback HTTP.
    broker.dispatcher.local[url] = host.deliver
    broker.dispatcher.resolver.serving_url = url
    log.info("function host on %s (%d function(s))", url, len(host.revisions))
    mesh = RunningMesh(broker, host, runner, url)
    try:
        if settings.node_shim_port >= 0:
            await _start_shim(settings, mesh)
        if settings.api_port >= 0:
            mesh.api = await start_api(settings, f"{broker.url}/default/default", ping=lambda: _ping(mesh))
        if settings.mqtt_url:
            mesh.bridge = Bridge(settings.mqtt_url, f"{broker.url}/default/default", data=settings.data,
                                 manifests=settings.deployed_manifests, host=settings.host,
                                 subscribe=[t.strip() for t in settings.mqtt_topics.split(",") if t.strip()],
                                 client_id=client_id_for(settings.data))
            await mesh.bridge.start()
        if settings.storage_locations:
            from mapemesh.state import open_store
            from mapemesh.storage.locations import load
            from mapemesh.storage.service import Gateway

            mesh.storage = Gateway(settings.storage_name, load(Path(settings.storage_locations)),
                                   open_store(settings.state, data=settings.data), settings.data,
                                   broker=f"{broker.url}/default/default", manifests=settings.deployed_manifests,
                                   host=settings.host, port=settings.storage_port,
                                   telemetry_every_s=settings.telemetry_interval_s)
            await mesh.storage.start()
    except BaseException:
        await mesh.stop()
        raise
    return mesh


async def _ping(mesh: RunningMesh) -> dict[str, str]:
    """Whether each component of the mesh answers (for the API's /manage/ping)."""
    import httpx

    out = {}
    urls = {"broker": f"{mesh.broker.url}/healthz", "serving": f"{mesh.serving_url}/status"}
    if mesh.shim is not None:
        urls["node-shim"] = f"{mesh.shim.url}/healthz"
    if mesh.bridge is not None:
        urls["bridge"] = f"{mesh.bridge.url}/healthz"
    async with httpx.AsyncClient(timeout=5) as http:
        for name, url in urls.items():
            try:
                (await http.get(url)).raise_for_status()
                out[name] = "ok"
            except httpx.HTTPError as exc:
                out[name] = f"not answering: {exc}"
    return out


def _identities(settings: Settings, env_hook: EnvHook | None) -> EnvHook:
    """The mesh's authority (made in DATA_DIR/identity on first start) and an identity for each of its components:
    the functions as they start (the hook), the rest now, and `operator` for the people who run it."""
    from mapemesh.identity.hook import IdentityEnv
    from mapemesh.identity.pki import Authority

    authority = Authority(settings.data / "identity")
    node = settings.node
    if not node and settings.node_shim_port >= 0:
        from mapemesh.node_shim.daemon import default_node

        node = default_node()
    for name in ("broker", "host", "api", "bridge", "operator", settings.storage_name,
                 *([dns_name("node-shim", node)] if node else [])):
        authority.issue(name)
    return IdentityEnv(authority, env_hook)


async def _start_shim(settings: Settings, mesh: RunningMesh) -> None:
    """This machine's node shim, on /sys, or on a simulated tree when /sys has no cpufreq (and say so)."""
    from mapemesh.node_shim.daemon import (
        CPUFREQ,
        HostDrainer,
        default_node,
        simulated_root,
        start_node_shim,
        write_trigger,
    )

    if settings.sysfs_root:
        root = Path(settings.sysfs_root)
    elif (Path("/") / CPUFREQ).exists():
        root = Path("/")
    else:
        root = simulated_root(settings.data)
        log.warning("/sys has no cpufreq here: the node shim drives a simulated tree in %s", root)
    node = settings.node or default_node()
    loop = asyncio.get_running_loop()
    mesh.shim = await start_node_shim(node, settings.data, sysfs_root=root, broker=f"{mesh.broker.url}/default/default",
                                      host=settings.host, port=settings.node_shim_port,
                                      interval_s=settings.telemetry_interval_s,
                                      services=mesh.host.services,
                                      # The knob applies in a worker thread; the host's processes are the loop's.
                                      on_vaccel_change=lambda: loop.call_soon_threadsafe(mesh.host.apply_env),
                                      drainer=HostDrainer(mesh.host, loop))
    mesh.shim_trigger = write_trigger(settings.deployed_manifests, node, mesh.shim.url)
    shim = mesh.shim
    # New or removed accelerated functions change the vAccelPlugin knob's options: tell the loop.
    mesh.broker.ingress.brokers.on_change(lambda _: shim.reporter.reregister())
    mesh.broker.ingress.brokers.reload()  # route this node's knob commands to it now, not at the next poll


async def serve_mesh(settings: Settings, env_hook: EnvHook | None = None) -> None:
    """Run the mesh until SIGINT or SIGTERM, then stop every child process."""
    mesh = await start_mesh(settings, env_hook)
    try:
        await until_stopped()
    finally:
        log.info("mesh stopping")
        await mesh.stop()
