"""A simulated datacenter job scheduler (seed 5.2, NVIDIA's use case): GPU nodes behind packet switches with OCS
uplinks, batches of training jobs arriving, and the configuration endpoint the `JobOrder` adapter sends the order to.
The cluster and the scheduler are `mapemesh.jobs`'s model; a batch is made from a seed, so a run is reproducible.

| API                                   | what                                                                      |
|---------------------------------------|---------------------------------------------------------------------------|
| `GET /order`                          | `{"batch": ID, "order": [JOB, ...]}` the order the scheduler serves by     |
| `PUT /order` `{"batch", "order"}`     | the order of the current batch; 409 another batch, 422 not a permutation   |
| `GET /status`                         | the batch, the cluster, the order, and the simulated utilisation of that   |
|                                       | order and of first come, first served                                     |
| `POST /batches` `{"seed"}`            | a new batch arrives (made from the seed; the demo's and a test's lever)   |

Until an order comes the scheduler serves first come, first served. Into the mesh: the scheduler as node NAME of
cluster CLUSTER offering `JobOrder` (options: the arriving batch's jobs and the cluster's occupancy; state: the
batch and order it serves by; `environment.node_type` `job-scheduler`, so placement puts no component on it),
registered again when a batch arrives; every interval `gpu_occupancy:SWITCH` and
`ocs_uplink_occupancy:SWITCH` (fractions busy) and `job_batch_size`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mapemesh import events as catalogue
from mapemesh import jobs
from mapemesh.sim import Simulator

KNOB = "JobOrder"


@dataclass
class SimulatedScheduler(Simulator):
    seed: int = 0
    jobs_per_batch: int = 24
    batch_id: str = ""
    cluster_model: jobs.Cluster = field(default_factory=lambda: jobs.Cluster(()))
    batch: list[jobs.Job] = field(default_factory=list)
    order: list[str] = field(default_factory=list)

    source = "/mapemesh/sim/datacenter"

    def __post_init__(self) -> None:
        self.arrive(self.seed)

    def arrive(self, seed: int) -> None:
        """A new batch (and the cluster's occupancy then) from `seed`; served first come, first served until told."""
        self.cluster_model, self.batch = jobs.batch(seed, self.jobs_per_batch)
        self.batch_id, self.order = f"batch-{seed}", [j.id for j in self.batch]

    def fcfs(self) -> list[str]:
        return [j.id for j in self.batch]

    def state(self) -> dict[str, Any]:
        return {"batch": self.batch_id, "order": list(self.order)}

    def description(self) -> dict[str, Any]:
        return {"MLSysOpsNode": {
            "name": self.name, "cluster_id": self.cluster, "continuum_layer": "cloud",
            "environment": {"node_type": "job-scheduler"}, "mechanisms": [KNOB],
            "mechanism_options": {KNOB: {"batch": self.batch_id, "jobs": [j.describe() for j in self.batch],
                                         "cluster": self.cluster_model.describe()}},
            "mechanism_states": {KNOB: {"batch": None, "order": []}}}}  # nothing ordered by the loop yet

    def metrics(self) -> list[catalogue.Metric]:
        gpus: dict[str, int] = {}
        uplinks: dict[str, int] = {}
        for b in self.cluster_model.busy:
            gpus[b.switch] = gpus.get(b.switch, 0) + b.gpus
            uplinks[b.switch] = uplinks.get(b.switch, 0) + b.uplinks
        out = []
        for s in self.cluster_model.switches:
            out += [catalogue.Metric(name=f"gpu_occupancy:{s.name}", value=round(gpus.get(s.name, 0) / s.gpus, 4)),
                    catalogue.Metric(name=f"ocs_uplink_occupancy:{s.name}",
                                     value=round(uplinks.get(s.name, 0) / s.uplinks, 4) if s.uplinks else 0.0)]
        return [*out, catalogue.Metric(name="job_batch_size", value=float(len(self.batch)))]

    def status(self) -> dict[str, Any]:
        served = jobs.simulate(self.cluster_model, self.batch, self.order)
        fcfs = jobs.simulate(self.cluster_model, self.batch, self.fcfs())
        return {**self.state(), "seed": self.seed, "jobs": [j.describe() for j in self.batch],
                "cluster": self.cluster_model.describe(), "utilisation": round(served.utilisation, 4),
                "makespan_s": served.makespan_s, "fcfs_utilisation": round(fcfs.utilisation, 4),
                "fcfs_makespan_s": fcfs.makespan_s}

    # -- the API ---------------------------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/order", self._get_order)
        app.router.add_put("/order", self._put_order)
        app.router.add_get("/status", self._status)
        app.router.add_post("/batches", self._arrive)

    async def _get_order(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _put_order(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            batch, order = str(doc["batch"]), [str(j) for j in doc["order"]]
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text='the body is {"batch": ID, "order": [JOB, ...]}')
        if batch != self.batch_id:
            return web.Response(status=409, text=f"the batch now is {self.batch_id}, not {batch}")
        if sorted(order) != sorted(self.fcfs()):
            return web.Response(status=422, text="the order must name every job of the batch once")
        self.order = order
        return web.json_response(self.state())

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _arrive(self, request: web.Request) -> web.Response:
        try:
            self.seed = int((await request.json())["seed"])
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text='the body is {"seed": INTEGER}')
        self.arrive(self.seed)
        self._tasks.append(asyncio.create_task(self.register()))  # answered now, registered when the broker takes it
        return web.json_response(self.state())
