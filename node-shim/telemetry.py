"""What the node shim reports: CPU utilisation and load, memory, CPU frequencies, RAPL power, GPU figures, board power.

Board power is what the INA2xx monitors under /sys/class/hwmon read (the ZCU102's rails: the FPGA fabric reports
nothing else, seed 3.5), per rail and in total.

`Collector.collect()` reads them (from `/proc`, and from the same sysfs root and NVML handle the knobs use,
so a simulated tree reports its own frequencies). `Reporter` sends them to the broker as
`io.mapemesh.telemetry.reported.v1` events every `TelemetryInterval` (a knob), keeps samples it could not
send (the newest `BACKLOG`) and sends them when the broker is back, and exposes the latest values as
OpenTelemetry gauges. On start it registers the node (an MLSysOps node description) with an
`io.mapemesh.infra.registered.v1` event, retried until the broker takes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mapemesh import events as catalogue
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.identity.guard import sign_as
from mapemesh.identity.tokens import auth_headers
from mapemesh.names import dns_name
from mapemesh.node_shim.knobs.base import KnobError, Sysfs
from mapemesh.node_shim.knobs.interval import TelemetryInterval

log = logging.getLogger(__name__)
BACKLOG = 120
"""Samples kept while the broker cannot be reached (older ones are dropped, and counted)."""
REREGISTER_S = 600.0
"""The node registers again this often."""
CPU_ROOT = "sys/devices/system/cpu"


def _metric_name(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class Collector:
    """Reads the node's figures; knobs with telemetry (RAPL energy, NVML) are asked too."""

    def __init__(self, sysfs: Sysfs, knobs: dict[str, Any], proc: Path = Path("/proc")):
        self.sysfs = sysfs
        self.knobs = knobs
        self.proc = proc
        self._cpu: tuple[float, float] | None = None
        self._energy: dict[str, tuple[float, int]] = {}

    def collect(self) -> list[catalogue.Metric]:
        """One sample of every figure there is (a figure that cannot be read is left out, not faked).

        Each sample carries the time it was taken, so one sent late (the broker was away) is not taken for new.
        """
        out: list[catalogue.Metric] = []
        for part in (self._cpu_utilization, self._load, self._memory, self._frequencies, self._rapl, self._gpus,
                     self._board_power):
            try:
                out += part()
            except (OSError, ValueError, KnobError) as exc:
                log.debug("telemetry %s: %s", part.__name__, exc)
        now = datetime.now(UTC)
        return [m.model_copy(update={"time": now}) for m in out]

    def _cpu_utilization(self) -> list[catalogue.Metric]:
        fields = [float(x) for x in (self.proc / "stat").read_text().splitlines()[0].split()[1:]]
        idle, total = fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields[:8])
        previous, self._cpu = self._cpu, (idle, total)
        if previous is None or total <= previous[1]:
            return []
        busy = 1.0 - (idle - previous[0]) / (total - previous[1])
        return [catalogue.Metric(name="node_cpu_utilization", value=round(max(0.0, min(1.0, busy)), 4), unit="1")]

    def _load(self) -> list[catalogue.Metric]:
        loads = (self.proc / "loadavg").read_text().split()[:3]
        return [catalogue.Metric(name=f"node_load{n}", value=float(v)) for n, v in zip((1, 5, 15), loads,
                                                                                        strict=True)]

    def _memory(self) -> list[catalogue.Metric]:
        info = {}
        for line in (self.proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                info[key] = int(rest.split()[0]) * 1024
        total, available = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
        return [catalogue.Metric(name="node_memory_total_bytes", value=total, unit="By"),
                catalogue.Metric(name="node_memory_available_bytes", value=available, unit="By"),
                catalogue.Metric(name="node_memory_used_ratio", value=round(1 - available / total, 4), unit="1")]

    def _frequencies(self) -> list[catalogue.Metric]:
        root = self.sysfs.path(CPU_ROOT)
        out = []
        for cpufreq in sorted(root.glob("cpu[0-9]*/cpufreq"), key=lambda p: int(p.parent.name[3:])):
            try:  # an offline cpu answers EBUSY: the others are still reported
                khz = int((cpufreq / "scaling_cur_freq").read_text().strip())
            except (OSError, ValueError):
                continue
            out.append(catalogue.Metric(name="node_cpu_core_frequency_hz", value=khz * 1000, unit="Hz",
                                        labels={"cpu": cpufreq.parent.name[3:]}))
        if out:  # the per-core samples carry labels; the mean is what policies compare against
            mean = sum(m.value for m in out) / len(out)
            out.insert(0, catalogue.Metric(name="node_cpu_frequency_hz", value=round(mean), unit="Hz"))
        return out

    def _rapl(self) -> list[catalogue.Metric]:
        knob = self.knobs.get("RAPLPowerCap")
        if knob is None:
            return []
        now = time.monotonic()
        ranges = {zone: (spec or {}).get("max_energy_range_uj") for zone, spec in
                  (knob.get_options().get("domains") or {}).items()}
        out = []
        for zone, uj in knob.energy().items():
            name = _metric_name(zone)
            out.append(catalogue.Metric(name=f"node_rapl_{name}_energy_joules", value=uj / 1e6, unit="J"))
            previous, self._energy[zone] = self._energy.get(zone), (now, uj)
            if previous is not None and now > previous[0]:
                delta = uj - previous[1]
                if delta < 0 and ranges.get(zone):
                    delta += int(ranges[zone])  # the counter wrapped around
                if delta >= 0:
                    out.append(catalogue.Metric(name=f"node_rapl_{name}_power_watts",
                                                value=round(delta / 1e6 / (now - previous[0]), 3), unit="W"))
        return out

    def _gpus(self) -> list[catalogue.Metric]:
        knob = self.knobs.get("NVIDIAGPUFrequency")
        if knob is None:
            return []
        return [catalogue.Metric(name=name, value=float(value)) for name, value in knob.telemetry().items()]


    def _board_power(self) -> list[catalogue.Metric]:
        from mapemesh.node_shim.knobs.fpga import board_power

        rails = board_power(self.sysfs)
        out = [catalogue.Metric(name="node_board_power_watts", value=round(watts, 3), unit="W", labels={"rail": rail})
               for rail, watts in rails.items()]
        if rails:
            out.insert(0, catalogue.Metric(name="node_board_power_total_watts", value=round(sum(rails.values()), 3),
                                           unit="W"))
        return out


def node_description(node: str, sysfs: Sysfs, knobs: dict[str, Any], proc: Path = Path("/proc")) -> dict[str, Any]:
    """The node as an MLSysOps node description (what registration sends)."""
    cpu: dict[str, Any] = {"cores": os.cpu_count() or 1, "architecture": _architecture()}
    freq = knobs.get("CPUFrequency")
    if freq is not None:
        options = freq.get_options()
        listed = options.get("frequencies_hz") or [options.get("min_hz"), options.get("max_hz")]
        cpu["frequency"] = [int(f) for f in listed if f]
    hardware: dict[str, Any] = {"cpu": cpu}
    try:
        total = next(int(line.split()[1]) for line in (proc / "meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
        hardware["memory"] = round(total / 2**20, 1)  # GiB, as MLSysOps node descriptions give it
    except (OSError, StopIteration, ValueError):
        pass
    gpu = knobs.get("NVIDIAGPUFrequency")
    if gpu is not None:
        gpus = gpu.get_options().get("gpus") or gpu.get_options()
        first = next(iter(gpus.values()), {}) if isinstance(gpus, dict) else {}
        hardware["gpu"] = {"model": first.get("name"), "count": len(gpus) if isinstance(gpus, dict) else 1}
    fpga = knobs.get("FPGABitstream")
    if fpga is not None:
        hardware["fpga"] = {"managers": _json_safe(fpga.managers)}
    actions = {"CPUFrequency": "cpu_frequency", "NVIDIAGPUFrequency": "gpu_frequency", "RAPLPowerCap": "power_cap",
               "FPGABitstream": "fpga_bitstream", "RadioConfig": "radio_config"}
    extra: dict[str, Any] = {}
    from mapemesh.node_shim.knobs.radio import position

    location = position(sysfs)
    if location is not None:  # the MLSysOps node schema has no place for it (only `mobility`): an added field
        extra["location"] = location
    return {"MLSysOpsNode": {
        "name": node, "hardware": hardware, **extra,
        "environment": {"os": platform.system().lower(), "node_type": "native"},
        "permitted_actions": sorted(actions[k] for k in knobs if k in actions),
        "mechanisms": sorted(knobs),
        "mechanism_options": {name: _json_safe(knob.get_options) for name, knob in sorted(knobs.items())},
        "mechanism_states": {name: _json_safe(knob.get_state) for name, knob in sorted(knobs.items())},
    }}


def _json_safe(read: Any) -> Any:
    """What a knob says of itself, as JSON (None when it cannot say: a driver error, say)."""
    import json

    try:
        return json.loads(json.dumps(read(), default=str))
    except Exception as exc:  # a description must still go out
        log.warning("a knob's options or state could not be read for the node description: %s", exc)
        return None


def _architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class Reporter:
    """Sends telemetry every interval; registers the node first; buffers while the broker is away."""

    def __init__(self, node: str, collector: Collector, interval: TelemetryInterval, broker: str | None,
                 description: dict[str, Any] | Callable[[], dict[str, Any]]):
        self.node = node
        self.collector = collector
        self.interval = interval
        self.broker = broker
        self.description = description
        """The node description, or how to make it (then made afresh at each registration)."""
        self.backlog: deque[CloudEvent] = deque(maxlen=BACKLOG)
        """Events made once (one id each), so one resent after a lost answer is a duplicate the log can tell."""
        self.registered_at = 0.0
        self.sent = self.dropped = 0
        self.registered = False
        self.stale = False
        """Set by `reregister`: what the description says has changed (an accelerated function came, say)."""
        self.latest: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.provider = MeterProvider(metric_readers=[reader := InMemoryMetricReader()])
        self.reader = reader
        self._meter = self.provider.get_meter("mapemesh.node_shim")
        self._gauges: set[str] = set()

    def _observe(self, name: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            for (metric, labels), value in list(self.latest.items()):
                if metric == name:
                    yield Observation(value, {"node": self.node, **dict(labels)})
        return callback

    def remember(self, metrics: list[catalogue.Metric]) -> None:
        """Keep the latest values for the OpenTelemetry gauges (one gauge per metric name)."""
        for m in metrics:
            self.latest[(m.name, tuple(sorted(m.labels.items())))] = m.value
            if m.name not in self._gauges:
                self._gauges.add(m.name)
                self._meter.create_observable_gauge(f"mapemesh.node.{m.name}", [self._observe(m.name)],
                                                    unit=m.unit or "")

    def gauges(self) -> dict[str, list[dict[str, Any]]]:
        """The gauges as an OpenTelemetry reader sees them: name -> [{attributes, value}]."""
        out: dict[str, list[dict[str, Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out[metric.name] = [{"attributes": dict(p.attributes), "value": p.value}
                                        for p in metric.data.data_points]
        return out

    def _event(self, data: catalogue.EventData) -> CloudEvent:
        event = catalogue.make_event(data, f"/mapemesh/node-shim/{self.node}", subject=self.node)
        if isinstance(data, catalogue.KnobApplied | catalogue.KnobFailed):  # a knob result: signed by its reporter
            return sign_as(event, dns_name("node-shim", self.node))
        return event

    def reregister(self) -> None:
        """Register the node again at the next round (its knobs' options changed)."""
        self.stale = True

    async def announce(self, data: catalogue.EventData) -> None:
        """Send one event now (a knob applied through the shim's own API, say), or with the next telemetry when
        the broker is away."""
        event = self._event(data)
        if self.broker is None:
            return
        async with aiohttp.ClientSession() as http:
            if await self._post(http, event) == "away":
                self.backlog.append(event)

    async def _post(self, http: aiohttp.ClientSession, event: CloudEvent) -> str:
        """'ok', 'refused' (a 4xx: it will not get better) or 'away' (try again later)."""
        assert self.broker is not None
        headers, body = to_binary(event)
        headers.update(auth_headers(self.broker, dns_name("node-shim", self.node)))  # its identity's token
        try:
            async with http.post(self.broker, data=body, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=5)) as response:
                if 200 <= response.status < 300:  # a broker answers 202; another K_SINK may answer 200
                    return "ok"
                log.warning("broker refused %s: %d %s", event.type, response.status, (await response.text())[:200])
                return "refused" if response.status < 500 and response.status != 429 else "away"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("broker %s unreachable: %s", self.broker, exc)
            return "away"

    async def tick(self, http: aiohttp.ClientSession | None) -> None:
        """One round: sample, then (with a broker) register if needed and send what is waiting."""
        metrics = self.collector.collect()
        if metrics:
            self.remember(metrics)
            if len(self.backlog) == self.backlog.maxlen:
                self.dropped += 1
            self.backlog.append(self._event(catalogue.TelemetryReported(asset=self.node, asset_kind="node",
                                                                        metrics=metrics)))
        if http is None or self.broker is None:
            return
        if not self.registered or self.stale or time.monotonic() - self.registered_at > REREGISTER_S:
            # Again now and then: a mesh that lost its state (a new Redis, say) learns the node back.
            self.stale = False
            description = self.description() if callable(self.description) else self.description
            outcome = await self._post(http, self._event(catalogue.InfraRegistered(
                infra_id=self.node, kind="node", description=description)))
            if outcome != "ok":
                if outcome == "refused":
                    log.error("the broker refused node %s's registration; telemetry waits until it takes it",
                              self.node)
                if not self.registered:
                    return
            else:
                self.registered, self.registered_at = True, time.monotonic()
        while self.backlog:
            outcome = await self._post(http, self.backlog[0])
            if outcome == "away":
                return  # keep the samples, try again next round
            self.backlog.popleft()
            self.sent += outcome == "ok"

    async def run(self) -> None:
        """Report until cancelled, every `interval` seconds (read each round: it is a knob)."""
        async with aiohttp.ClientSession() as http:
            while True:
                started = time.monotonic()
                try:
                    await self.tick(http if self.broker else None)
                except Exception:  # never let one bad round stop the reporting
                    log.exception("telemetry round failed")
                # In slices, reading the knob each time: a shorter interval takes effect at once.
                # (The knob is applied in a worker thread, so polling it beats an asyncio.Event here.)
                while time.monotonic() - started < self.interval.seconds:  # noqa: ASYNC110
                    await asyncio.sleep(min(0.5, max(0.0, self.interval.seconds - (time.monotonic() - started))))
