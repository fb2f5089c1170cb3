"""Putting a node shim together: the knobs this machine has, the API server, the telemetry reporter.

Used by `mapemesh node-shim serve` and by `mapemesh up` (which runs one for the local machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import platform
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from mapemesh import endpoints
from mapemesh.events.catalogue import KnobApply
from mapemesh.identity.guard import Guard
from mapemesh.node_shim.knobs.base import Knob, KnobError, Sysfs
from mapemesh.node_shim.knobs.fpga import Drainer, DrainFailed
from mapemesh.node_shim.knobs.interval import TelemetryInterval
from mapemesh.node_shim.server import ShimServer, token
from mapemesh.node_shim.shim import Baselines, Journal, NodeShim
from mapemesh.node_shim.telemetry import Collector, Reporter, node_description

log = logging.getLogger(__name__)
CPUFREQ = "sys/devices/system/cpu/cpu0/cpufreq"
DELIVERY_TIMEOUT = "PT60S"
"""How long the broker waits for the shim to answer a knob command (the Trigger's `delivery.timeout`): Knative's
default, 30 s, is shorter than an FPGA reconfiguration may take (its drain, `fpga.DRAIN_TIMEOUT_S`, then the load)."""
POWERCAP = "sys/class/powercap"


def build_knobs(sysfs: Sysfs, interval: TelemetryInterval, nvml: Any = None) -> dict[str, Knob]:
    """Every knob this machine (or simulated tree) has; a missing kind of hardware is left out, and logged."""
    from mapemesh.node_shim.knobs.cpufreq import CPUFrequency
    from mapemesh.node_shim.knobs.nvml import NVIDIAGPUFrequency
    from mapemesh.node_shim.knobs.radio import RADIO_FILE, FileRadio, RadioConfig
    from mapemesh.node_shim.knobs.rapl import RAPLPowerCap

    knobs: dict[str, Knob] = {interval.name: interval}
    for name, present, make in (("CPUFrequency", sysfs.exists(CPUFREQ), lambda: CPUFrequency(sysfs)),
                                ("RAPLPowerCap", any(sysfs.path(POWERCAP).glob("intel-rapl:*")),
                                 lambda: RAPLPowerCap(sysfs)),
                                ("NVIDIAGPUFrequency", True, lambda: NVIDIAGPUFrequency(nvml)),
                                ("RadioConfig", sysfs.exists(RADIO_FILE), lambda: RadioConfig(FileRadio(sysfs)))):
        if not present:
            log.info("no %s knob: %s has no such hardware", name, sysfs.root)
            continue
        try:
            knobs[name] = make()
        except KnobError as exc:
            log.info("no %s knob: %s", name, exc)
    return knobs


def default_node() -> str:
    """This machine's node name: its short hostname."""
    return socket.gethostname().split(".")[0] or "localhost"


def simulated_root(data: Path, profile: str | None = None) -> Path:
    """A simulated tree under DATA_DIR (made once, then reused), for a machine whose /sys has no cpufreq or whose
    own knobs must not be touched; `profile` defaults to this machine's kind."""
    from mapemesh.node_shim import simulate

    root = data / "simulated-sysfs"
    if simulate.profile_of(root) is None:
        profile = profile or ("arm" if platform.machine().lower() in ("aarch64", "arm64") else "acpi-cpufreq")
        simulate.create(root, profile)
    return root


def trigger_name(node: str) -> str:
    """`node-shim-NODE` as a Kubernetes name (DNS-1123 label): lower case, other characters as '-', and a hash of
    the node's name in place of what does not fit in 63 characters (two long names never collide)."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"node-shim-{node}".lower()).strip("-")
    if len(name) > 63 or name != f"node-shim-{node}":
        digest = hashlib.sha256(node.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def trigger(node: str, url: str, namespace: str = "default", broker: str = "default") -> dict[str, Any]:
    """The Trigger that brings this node's knob commands to its shim (the node's name, which may be longer than a
    label value can be, in an annotation), waiting for the knob's answer up to DELIVERY_TIMEOUT."""
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": trigger_name(node), "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "mapemesh",
                                    "app.kubernetes.io/component": "node-shim"},
                         "annotations": {"mapemesh.dev/node": node}},
            "spec": {"broker": broker,
                     "filters": [{"exact": {"type": KnobApply.event_type}}, {"exact": {"node": node}}],
                     "subscriber": {"uri": url.rstrip("/") + "/"},
                     "delivery": {"timeout": DELIVERY_TIMEOUT}}}


class HostDrainer:
    """The FPGABitstream knob's `Drainer` on one machine: the local host's `drain` and `release`, called from the
    knob's worker thread on the host's event loop."""

    def __init__(self, host: Any, loop: asyncio.AbstractEventLoop):
        self.host = host
        self.loop = loop

    def drain(self, services: list[str], timeout_s: float) -> None:
        future = asyncio.run_coroutine_threadsafe(self.host.drain(services, timeout_s), self.loop)
        try:
            future.result(timeout_s + 5)
        except TimeoutError as exc:  # the host released them again, or is told to stop trying (its drain then
            future.cancel()          # releases them as it is cancelled; the knob releases them once more)
            raise DrainFailed(f"{', '.join(services)} still ran requests after {timeout_s:g}s") from exc

    def release(self, services: list[str]) -> None:
        asyncio.run_coroutine_threadsafe(self.host.release(services), self.loop).result(30)


@dataclass
class RunningShim:
    """A started node shim."""

    shim: NodeShim
    reporter: Reporter
    runner: web.AppRunner
    task: asyncio.Task[None]
    url: str
    data: Path
    sysfs: Sysfs

    async def stop(self) -> None:
        """Stop reporting and serving; forget the endpoint."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.runner.cleanup()
        endpoints.unregister(self.data, "node-shim", self.url)
        for knob in self.shim.knobs.values():
            close = getattr(knob, "close", None)  # NVML: nvmlShutdown
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        self.reporter.provider.shutdown()


async def start_node_shim(node: str, data: Path, *, sysfs_root: Path | None = None, broker: str | None = None,
                          host: str = "127.0.0.1", port: int = 0, interval_s: float = 5.0,
                          nvml: Any = None, services: Any = None, on_vaccel_change: Any = None,
                          drainer: Drainer | None = None) -> RunningShim:
    """Start a node shim: knobs on `sysfs_root` (default `/`), API on host:port, telemetry to `broker`.

    `services` (a callable: namespace/name -> ServiceSpec, the local function host's `services`) gives the
    vAccelPlugin knob the accelerated functions this node runs, and `on_vaccel_change` tells their host at once
    when a plugin choice changes (without it the host finds the change in DATA_DIR/vaccel-plugins.json within a
    second). On a node with an FPGA manager, `drainer` (the host's `drain` and `release`, see `HostDrainer`) holds
    the functions that use the FPGA while the FPGABitstream knob reconfigures it.
    """
    from mapemesh.node_shim.knobs.fpga import MANAGERS, FPGABitstream
    from mapemesh.node_shim.knobs.vaccel import VAccelPlugin
    from mapemesh.runtimes.vaccel import CHOICES_FILE
    from mapemesh.runtimes.vaccel_hook import accel_functions, fpga_functions

    sysfs = Sysfs(sysfs_root or "/")
    interval = TelemetryInterval(interval_s)
    knobs = build_knobs(sysfs, interval, nvml)
    functions = (lambda: accel_functions(services())) if services is not None else None
    knobs["vAccelPlugin"] = VAccelPlugin(data / CHOICES_FILE, functions=functions, on_change=on_vaccel_change,
                                         gpu_present=lambda: "NVIDIAGPUFrequency" in knobs)
    if any(sysfs.path(MANAGERS).glob("fpga*")):
        try:
            knobs["FPGABitstream"] = FPGABitstream(
                sysfs, data / "node-shim" / node / "fpga.json", drainer=drainer,
                functions=(lambda: fpga_functions(services())) if services is not None else None)
        except KnobError as exc:
            log.info("no FPGABitstream knob: %s", exc)
    Baselines(data / "node-shim" / node / "baseline.json").apply(knobs)
    shim = NodeShim(node, knobs, Journal(data / "node-shim" / node / "journal.jsonl"))
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("the node shim listens on %s: its CloudEvent endpoint takes knob commands without a token, "
                    "as a Knative subscriber does; let only the broker reach it (a NetworkPolicy, a firewall)", host)
    proc = sysfs.path("proc") if sysfs.exists("proc/stat") else Path("/proc")
    reporter = Reporter(node, Collector(sysfs, knobs, proc), interval, broker,
                        lambda: node_description(node, sysfs, knobs, proc))
    runner = web.AppRunner(ShimServer(shim, token(data), reporter, Guard.from_environment(data)).app(), access_log=None,
                           handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    url = f"http://{'127.0.0.1' if bound_host in ('0.0.0.0', '::') else bound_host}:{bound_port}"
    endpoints.register(data, "node-shim", url)
    task = asyncio.get_running_loop().create_task(reporter.run())
    log.info("node shim for %s on %s: knobs %s, sysfs %s, telemetry every %gs to %s", node, url,
             ", ".join(sorted(knobs)), sysfs.root, interval.seconds, broker or "(no broker)")
    return RunningShim(shim, reporter, runner, task, url, data, sysfs)


@dataclass(frozen=True, slots=True)
class Pod:
    """The shim's own pod, from the downward API (env POD_NAME, POD_NAMESPACE, POD_UID, POD_IP)."""

    name: str
    namespace: str
    uid: str
    ip: str

    @classmethod
    def from_environment(cls, environ: dict[str, str]) -> Pod:
        """The pod the environment describes; ValueError naming what is missing."""
        missing = [k for k in ("POD_NAME", "POD_NAMESPACE", "POD_UID", "POD_IP") if not environ.get(k)]
        if missing:
            raise ValueError(f"{', '.join(missing)} not set: a pod passes them with the downward API (fieldRef "
                             "metadata.name, metadata.namespace, metadata.uid, status.podIP)")
        return cls(environ["POD_NAME"], environ["POD_NAMESPACE"], environ["POD_UID"], environ["POD_IP"])


def pod_trigger(node: str, pod: Pod, port: int) -> dict[str, Any]:
    """The shim's Trigger on a cluster: its node's knob commands to this pod's address, owned by the pod, so
    Kubernetes removes it with the pod and a new pod on the node applies its own."""
    host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
    doc = trigger(node, f"http://{host}:{port}/", namespace=pod.namespace)
    doc["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid}]
    return doc


async def register_on_cluster(node: str, port: int, environ: dict[str, str], kubeconfig: str) -> Any:
    """Apply the shim's Trigger to the cluster (server-side apply); returns a coroutine function that deletes it."""
    from mapemesh import kube

    doc = pod_trigger(node, Pod.from_environment(environ), port)
    client = kube.KubeClient(await asyncio.to_thread(kube.api_client, kubeconfig), field_manager="mapemesh-node-shim")
    await asyncio.to_thread(client.apply, [doc])
    log.info("knob commands for %s reach this pod through Trigger %s/%s", node, doc["metadata"]["namespace"],
             doc["metadata"]["name"])

    async def unregister() -> None:
        try:
            await asyncio.to_thread(client.delete, [doc])
        except kube.ApplyError as exc:  # the pod's deletion removes it anyway (owner reference)
            log.warning("could not delete Trigger %s: %s", doc["metadata"]["name"], exc)

    return unregister


def write_trigger(manifests: Path, node: str, url: str) -> Path:
    """Write the shim's Trigger where the mesh reads added manifests (DATA_DIR/manifests)."""
    from mapemesh.files import write_atomically

    path = manifests / f"{trigger_name(node)}.yaml"
    write_atomically(path, "# The node shim of node " + node + ": its knob commands.\n"
                     + yaml.safe_dump(trigger(node, url), sort_keys=False))
    return path
