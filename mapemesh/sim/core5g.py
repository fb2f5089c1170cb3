"""A simulated 5G core (seed 5.2): a gNodeB, UPFs at different distances whose latency grows with their load, and
the UEs whose PDU sessions go through one of them; the slice configuration API the `UPFSelect` adapter calls.

| API                                   | what                                                                      |
|---------------------------------------|---------------------------------------------------------------------------|
| `GET /slices`                         | `{UE: {"upf": NAME, "upf_address": ADDRESS}}`                              |
| `POST /slices/{UE}` `{"upf_address"}` | the UE's user plane moved to the UPF at that address (SMF configuration);  |
|                                       | 404 an unknown UE, 422 no UPF at the address                               |
| `GET /upfs`                           | `{UPF: {"address", "max_bandwidth_mbps", "latency_ms", "traffic_mbps",     |
|                                       | "bandwidth_percent"}}`: each UPF's address (the adapter's only source of   |
|                                       | one) and telemetry now                                                    |
| `PUT /upfs/{UPF}/load` `{"mbps"}`     | the UPF's other traffic (a test's or demo's lever: peak and calm hours)    |

A UPF's utilisation is its traffic (the other traffic plus its UEs') over its bandwidth to the gNodeB, and its
latency base / max(0.05, 1 - utilisation): a queue that slows as it fills. CPU and memory follow the utilisation.
Into the mesh: the core as node NAME of cluster CLUSTER offering `UPFSelect` (options: the UPFs by name with their
bandwidth, and the UEs; state: each UE's UPF; `environment.node_type` `5g-core`, so placement puts no component on
it), and every interval `upf_latency_ms:UPF`,
`upf_cpu_percent:UPF`, `upf_memory_percent:UPF`, `upf_bandwidth_percent:UPF`, `upf_traffic_mbps:UPF` and
`ue_traffic_mbps:UE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mapemesh import events as catalogue
from mapemesh.sim import Simulator

KNOB = "UPFSelect"
SATURATED = 0.05


@dataclass
class Upf:
    name: str
    address: str
    base_latency_ms: float
    max_bandwidth_mbps: float
    load_mbps: float = 0.0


@dataclass
class SimulatedCore(Simulator):
    upfs: list[Upf] = field(default_factory=list)
    ues: dict[str, float] = field(default_factory=dict)
    """UE -> its traffic in Mbps."""
    slices: dict[str, str] = field(default_factory=dict)
    """UE -> the UPF its user plane goes through."""
    moves: list[tuple[str, str]] = field(default_factory=list)
    """(UE, UPF) for each move the API was asked for, in turn."""

    source = "/mapemesh/sim/core5g"

    def __post_init__(self) -> None:
        for ue in self.ues:
            self.slices.setdefault(ue, self.upfs[0].name)

    def upf(self, name: str) -> Upf:
        return next(u for u in self.upfs if u.name == name)

    def traffic_mbps(self, upf: Upf) -> float:
        return upf.load_mbps + sum(mbps for ue, mbps in self.ues.items() if self.slices.get(ue) == upf.name)

    def latency_ms(self, upf: Upf) -> float:
        return upf.base_latency_ms / max(SATURATED, 1.0 - self.traffic_mbps(upf) / upf.max_bandwidth_mbps)

    def state(self) -> dict[str, str]:
        return dict(sorted(self.slices.items()))

    def description(self) -> dict[str, Any]:
        return {"MLSysOpsNode": {
            "name": self.name, "cluster_id": self.cluster, "continuum_layer": "edge",
            "environment": {"node_type": "5g-core"}, "mechanisms": [KNOB],
            "mechanism_options": {KNOB: {"upfs": [{"name": u.name, "max_bandwidth_mbps": u.max_bandwidth_mbps}
                                                  for u in self.upfs],
                                         "ues": sorted(self.ues)}},
            "mechanism_states": {KNOB: self.state()}}}

    def metrics(self) -> list[catalogue.Metric]:
        out = []
        for u in self.upfs:
            use = min(1.0, self.traffic_mbps(u) / u.max_bandwidth_mbps)
            out += [catalogue.Metric(name=f"upf_latency_ms:{u.name}", value=round(self.latency_ms(u), 3), unit="ms"),
                    catalogue.Metric(name=f"upf_cpu_percent:{u.name}", value=round(10 + 85 * use, 2), unit="%"),
                    catalogue.Metric(name=f"upf_memory_percent:{u.name}", value=round(30 + 40 * use, 2), unit="%"),
                    catalogue.Metric(name=f"upf_bandwidth_percent:{u.name}", value=round(100 * use, 2), unit="%"),
                    catalogue.Metric(name=f"upf_traffic_mbps:{u.name}", value=round(self.traffic_mbps(u), 3))]
        ues = [catalogue.Metric(name=f"ue_traffic_mbps:{ue}", value=mbps) for ue, mbps in sorted(self.ues.items())]
        return out + ues

    # -- the API ---------------------------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/slices", self._slices)
        app.router.add_post("/slices/{ue}", self._steer)
        app.router.add_get("/upfs", self._upfs)
        app.router.add_put("/upfs/{upf}/load", self._load)

    async def _slices(self, request: web.Request) -> web.Response:
        return web.json_response({ue: {"upf": upf, "upf_address": self.upf(upf).address}
                                  for ue, upf in self.state().items()})

    async def _steer(self, request: web.Request) -> web.Response:
        ue = request.match_info["ue"]
        if ue not in self.ues:
            return web.Response(status=404, text=f"no UE {ue}")
        try:
            address = str((await request.json())["upf_address"])
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text='the body is {"upf_address": ADDRESS}')
        found = [u for u in self.upfs if u.address == address]
        if not found:
            return web.Response(status=422, text=f"no UPF at {address}")
        self.slices[ue] = found[0].name
        self.moves.append((ue, found[0].name))
        return web.json_response({"ue": ue, "upf": found[0].name, "upf_address": address})

    async def _upfs(self, request: web.Request) -> web.Response:
        return web.json_response({u.name: {
            "address": u.address, "max_bandwidth_mbps": u.max_bandwidth_mbps,
            "latency_ms": round(self.latency_ms(u), 3), "traffic_mbps": round(self.traffic_mbps(u), 3),
            "bandwidth_percent": round(100 * min(1.0, self.traffic_mbps(u) / u.max_bandwidth_mbps), 2)}
            for u in self.upfs})

    async def _load(self, request: web.Request) -> web.Response:
        name = request.match_info["upf"]
        if name not in {u.name for u in self.upfs}:
            return web.Response(status=404, text=f"no UPF {name}")
        try:
            self.upf(name).load_mbps = float((await request.json())["mbps"])
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text='the body is {"mbps": NUMBER}')
        return web.json_response({"upf": name, "load_mbps": self.upf(name).load_mbps})


def example(name: str, cluster: str, broker: str | None, **kwargs: Any) -> SimulatedCore:
    """Seed 5.2's set-up: a gNodeB and three UPFs in three cities (near, middle, far), one UE on the near one."""
    return SimulatedCore(name=name, cluster=cluster, broker=broker, upfs=[
        Upf("upf-near", "10.45.0.1", 4.0, 1000.0), Upf("upf-mid", "10.45.1.1", 9.0, 1000.0),
        Upf("upf-far", "10.45.2.1", 16.0, 1000.0)], ues={"ue-1": 50.0}, **kwargs)
