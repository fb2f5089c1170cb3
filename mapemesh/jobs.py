"""The datacenter job model (seed 5.2, NVIDIA's use case): GPU nodes behind packet switches with OCS uplinks, a
batch of training jobs, and the scheduler that serves the batch in a given order.

| piece                      | what                                                                                 |
|----------------------------|--------------------------------------------------------------------------------------|
| `Job`                      | GPUs, approximate duration, network pattern (`all-reduce`, `all-to-all`, `none`)     |
| `Cluster`                  | packet switches (GPUs and OCS uplinks each) and what occupies them now               |
| `Occupancy.place(job)`     | the scheduler's placement: the fullest switch the job fits in (best fit, no uplink); |
|                            | else spread over the switches with most free GPUs, each spanned switch giving        |
|                            | `uplinks_for(pattern, spanned)` OCS uplinks; None when it does not fit now           |
| `simulate(cluster, jobs,   | the scheduler serving `order` strictly in turn (a job that does not fit waits, and   |
| order)`                    | the ones behind it with it): start times, makespan and GPU utilisation               |
| `batch(seed, ...)`         | a reproducible batch and cluster for tests, the simulated scheduler and the bench    |

The order is the only thing the scheduler is told (its configuration, seed 5.2): placement is its own and fixed.
Utilisation is the GPU-seconds busy over the GPU-seconds offered from now until the last job ends.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PATTERNS = ("all-reduce", "all-to-all", "none")
_tie = itertools.count()  # orders ends at the same time (freed together; never compares their dicts)


@dataclass(frozen=True)
class Job:
    id: str
    gpus: int
    duration_s: float
    pattern: str = "all-reduce"

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "gpus": self.gpus, "duration_s": self.duration_s, "pattern": self.pattern}

    @classmethod
    def read(cls, doc: Mapping[str, Any]) -> Job:
        pattern = str(doc.get("pattern") or "all-reduce")
        if pattern not in PATTERNS:
            raise ValueError(f"job {doc.get('id')}: pattern {pattern!r} is none of {', '.join(PATTERNS)}")
        return cls(str(doc["id"]), int(doc["gpus"]), float(doc["duration_s"]), pattern)


@dataclass(frozen=True)
class Switch:
    name: str
    gpus: int
    uplinks: int


@dataclass(frozen=True)
class Busy:
    """GPUs and uplinks of one switch held by a running job until `remaining_s` from now."""

    job: str
    switch: str
    gpus: int
    uplinks: int
    remaining_s: float


@dataclass(frozen=True)
class Cluster:
    switches: tuple[Switch, ...]
    busy: tuple[Busy, ...] = ()

    @property
    def gpus(self) -> int:
        return sum(s.gpus for s in self.switches)

    def describe(self) -> dict[str, Any]:
        return {"switches": [{"name": s.name, "gpus": s.gpus, "uplinks": s.uplinks} for s in self.switches],
                "busy": [{"job": b.job, "switch": b.switch, "gpus": b.gpus, "uplinks": b.uplinks,
                          "remaining_s": b.remaining_s} for b in self.busy]}

    @classmethod
    def read(cls, doc: Mapping[str, Any]) -> Cluster:
        return cls(tuple(Switch(str(s["name"]), int(s["gpus"]), int(s["uplinks"])) for s in doc.get("switches") or []),
                   tuple(Busy(str(b["job"]), str(b["switch"]), int(b["gpus"]), int(b.get("uplinks", 0)),
                              float(b["remaining_s"])) for b in doc.get("busy") or []))


def uplinks_for(pattern: str, spanned: int) -> int:
    """OCS uplinks each spanned switch gives a job: a ring (all-reduce) one, a full mesh (all-to-all) one per other
    switch, none without traffic or within one switch."""
    if spanned <= 1 or pattern == "none":
        return 0
    return 1 if pattern == "all-reduce" else spanned - 1


@dataclass
class Occupancy:
    """The cluster as time goes: free GPUs and uplinks per switch, and when each running job ends."""

    cluster: Cluster
    now: float = 0.0
    free_gpus: dict[str, int] = field(default_factory=dict)
    free_uplinks: dict[str, int] = field(default_factory=dict)
    ends: list[tuple[float, int, dict[str, tuple[int, int]]]] = field(default_factory=list)
    busy_gpu_s: float = 0.0

    def __post_init__(self) -> None:
        self.free_gpus = {s.name: s.gpus for s in self.cluster.switches}
        self.free_uplinks = {s.name: s.uplinks for s in self.cluster.switches}
        for b in self.cluster.busy:
            self._hold(b.remaining_s, {b.switch: (b.gpus, b.uplinks)})

    def copy(self) -> Occupancy:
        other = Occupancy.__new__(Occupancy)
        other.cluster, other.now, other.busy_gpu_s = self.cluster, self.now, self.busy_gpu_s
        other.free_gpus, other.free_uplinks, other.ends = dict(self.free_gpus), dict(self.free_uplinks), list(self.ends)
        return other

    def _hold(self, duration_s: float, where: dict[str, tuple[int, int]]) -> None:
        for name, (gpus, uplinks) in where.items():
            self.free_gpus[name] -= gpus
            self.free_uplinks[name] -= uplinks
            self.busy_gpu_s += gpus * duration_s
        heapq.heappush(self.ends, (self.now + duration_s, next(_tie), where))

    def place(self, job: Job) -> dict[str, tuple[int, int]] | None:
        """Where the scheduler puts `job` now ({switch: (GPUs, uplinks)}), or None when it does not fit now."""
        fits = [n for n, free in self.free_gpus.items() if free >= job.gpus]
        if fits:
            best = min(fits, key=lambda n: (self.free_gpus[n], n))
            return {best: (job.gpus, 0)}
        ranked = sorted(self.free_gpus, key=lambda n: (-self.free_gpus[n], n))
        for spanned in range(2, len(ranked) + 1):
            need = uplinks_for(job.pattern, spanned)
            usable = [n for n in ranked if self.free_gpus[n] > 0 and self.free_uplinks[n] >= need][:spanned]
            if len(usable) < spanned or sum(self.free_gpus[n] for n in usable) < job.gpus:
                continue
            left, where = job.gpus, {}
            for n in usable:
                take = min(left, self.free_gpus[n])
                where[n], left = (take, need), left - take
            return where
        return None

    def start(self, job: Job, where: dict[str, tuple[int, int]]) -> None:
        self._hold(job.duration_s, where)

    def advance(self) -> bool:
        """Move to the next time a running job ends and free what it held; False when none runs."""
        if not self.ends:
            return False
        at = self.ends[0][0]
        while self.ends and self.ends[0][0] <= at:
            _, _, where = heapq.heappop(self.ends)
            for name, (gpus, uplinks) in where.items():
                self.free_gpus[name] += gpus
                self.free_uplinks[name] += uplinks
        self.now = max(self.now, at)
        return True

    @property
    def last_end(self) -> float:
        return max((end for end, _, _ in self.ends), default=self.now)


@dataclass(frozen=True)
class Outcome:
    order: tuple[str, ...]
    starts: dict[str, float]
    makespan_s: float
    utilisation: float


class Unplaceable(ValueError):
    """A job larger than the whole cluster can ever give it."""


def start_in_turn(occupancy: Occupancy, job: Job) -> float:
    """Start `job` at the earliest time it fits from `occupancy.now` (advancing it); the start time."""
    while (where := occupancy.place(job)) is None:
        if not occupancy.advance():
            raise Unplaceable(f"job {job.id} ({job.gpus} GPUs, {job.pattern}) never fits the cluster")
    occupancy.start(job, where)
    return occupancy.now


def simulate(cluster: Cluster, jobs: Iterable[Job], order: Iterable[str]) -> Outcome:
    """The scheduler serving `order` (job ids, every job once) strictly in turn on `cluster`."""
    by_id = {j.id: j for j in jobs}
    order = tuple(order)
    if sorted(order) != sorted(by_id):
        raise ValueError("the order must name every job of the batch once")
    occupancy = Occupancy(cluster)
    starts = {job_id: start_in_turn(occupancy, by_id[job_id]) for job_id in order}
    makespan = occupancy.last_end
    offered = cluster.gpus * makespan
    return Outcome(order, starts, makespan, occupancy.busy_gpu_s / offered if offered else 0.0)


def batch(seed: int, jobs: int = 24, switches: int = 4, gpus_per_switch: int = 32,
          uplinks_per_switch: int = 4) -> tuple[Cluster, list[Job]]:
    """A reproducible cluster (a quarter of it busy) and arriving batch: DLRM-like all-to-all and LLM-like
    all-reduce jobs of 1 to 64 GPUs, 1 to 12 hours each."""
    rng = random.Random(seed)
    names = [f"ps-{i}" for i in range(switches)]
    busy = tuple(Busy(f"running-{i}", name, rng.choice((4, 8, 16)), 0, rng.uniform(1, 6) * 3600)
                 for i, name in enumerate(names))
    cluster = Cluster(tuple(Switch(n, gpus_per_switch, uplinks_per_switch) for n in names), busy)
    sizes, weights = (1, 2, 4, 8, 16, 24, 32, 48, 64), (2, 3, 4, 5, 5, 3, 3, 2, 1)
    out = [Job(f"job-{i:02d}", rng.choices(sizes, weights)[0], round(rng.uniform(1, 12) * 3600),
               rng.choice(("all-reduce", "all-reduce", "all-to-all", "none"))) for i in range(jobs)]
    return cluster, out
