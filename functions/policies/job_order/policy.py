"""Datacenter job-order policy, in the MLSysOps policy format (seed 5.2: the NVIDIA scheduler's `JobOrder`).

The datacenter scheduler serves an arriving batch of training jobs strictly in the order it is given (first come,
first served by default), placing each with its own best-fit rule; a job that does not fit waits, and the jobs
behind it with it. It registers the batch and the cluster's occupancy as the options of its `JobOrder` mechanism
(`{"batch": ID, "jobs": [{id, gpus, duration_s, pattern}], "cluster": {"switches": [...], "busy": [...]}}`) and
reports `gpu_occupancy:SWITCH`, `ocs_uplink_occupancy:SWITCH` and `job_batch_size` as telemetry.

When a batch has not been ordered yet (the mechanism's state names another batch), the plan orders it by a
best-fit list schedule: replaying the scheduler on the cluster as it is now, the next job is the one that can start
soonest; among those the longest, then the one that fills most GPUs. Big jobs that fit go first, a job that would
block the queue waits until the capacity it needs comes free while smaller ones fill the gaps, and long jobs do not
end late. The list schedule is greedy, so the plan is the best, replayed, of it and three simple orders (longest
first, smallest first, the arrival order): never worse than first come, first served. A job larger than the whole
cluster (it would never start, and would hold up every job behind it) goes at the end, and the plan says why
(`unplaceable`, which the adapter passes over).

One plan per batch, unless it did not take: when the plan failed or was discarded (`current_plan` no longer holds
it) the batch is planned again RETRY_S after the last plan, and when the scheduler's state still does not show the
batch ordered REPLAN_S after it (a plan that timed out, or was dropped under a manual override), likewise.
"""

import time

from mapemesh.jobs import Cluster, Job, Occupancy, Unplaceable, simulate, start_in_turn

REPLAN_S = 30.0
"""How long a plan may take to show in the scheduler's state before the batch is planned again."""
RETRY_S = 5.0
"""How long after a plan that failed or was discarded the batch is planned again (not on every analysis)."""


def initialize():
    return {
        "telemetry": {"metrics": ["job_batch_size", "gpu_occupancy:*", "ocs_uplink_occupancy:*"],
                      "system_scraper_interval": "5s"},
        "mechanisms": ["JobOrder"],
        "packages": [],
        "configuration": {"analyze_interval": "1s"},
        "scope": "global",
        "core": False,
        "machine_learning_usage": False,
    }


def best_fit_order(cluster, jobs):
    """The job ids in best-fit list-schedule order: replaying the scheduler, the next job is the one that can start
    soonest; among those the longest (a long job started late ends late), then the one that fills most GPUs."""
    occupancy, left, order = Occupancy(cluster), list(jobs), []
    while left:
        best = None
        for job in left:
            trial = occupancy.copy()
            key = (start_in_turn(trial, job), -job.duration_s, -job.gpus, job.id)
            if best is None or key < best[0]:
                best = (key, job, trial)
        _, job, occupancy = best
        left.remove(job)
        order.append(job.id)
    return order


def candidate_orders(cluster, jobs):
    """{name: job ids} of the orders the policy chooses among: the best-fit list schedule and three simple ones."""
    return {"best-fit": best_fit_order(cluster, jobs),
            "longest-first": [j.id for j in sorted(jobs, key=lambda j: (-j.duration_s, j.id))],
            "smallest-first": [j.id for j in sorted(jobs, key=lambda j: (j.gpus, -j.duration_s, j.id))],
            "arrival": [j.id for j in jobs]}


def unplaceable(cluster, jobs):
    """{job id: why} of the jobs the cluster can never start, even with every running job ended."""
    why = {}
    for job in jobs:
        try:
            start_in_turn(Occupancy(cluster), job)
        except Unplaceable as exc:
            why[job.id] = str(exc)
    return why


def chosen_order(cluster, jobs):
    """The best, replayed on the cluster, of `candidate_orders` (so never worse than first come, first served); the
    earlier one on a tie. Jobs the cluster can never start go last, in arrival order."""
    never = unplaceable(cluster, jobs)
    fit = [j for j in jobs if j.id not in never]
    if not fit:
        return [j.id for j in jobs]
    best = max(candidate_orders(cluster, fit).values(), key=lambda order: simulate(cluster, fit, order).utilisation)
    return best + [j.id for j in jobs if j.id in never]


def _unordered(context, mechanisms, current_plan, now):
    """The JobOrder options when their batch is to be planned (not ordered, and not planned lately), else None."""
    knob = (mechanisms or {}).get("JobOrder") or {}
    options, state = knob.get("options") or {}, knob.get("state") or {}
    batch = options.get("batch")
    if not batch or not options.get("jobs") or batch == state.get("batch"):
        return None
    if batch == context.get("planned_batch"):
        ours = ((current_plan or {}).get("JobOrder") or {}).get("batch") == batch
        if now - float(context.get("planned_at") or 0) < (REPLAN_S if ours else RETRY_S):
            return None  # planned, and (still in hand, or failed only just now): not again yet
    return options


def analyze(context, application_description, system_description, current_plan, mechanisms, telemetry,
            ml_connector):
    return _unordered(context, mechanisms, current_plan, time.time()) is not None, context


def plan(context, application_description, system_description, current_plan, mechanisms, telemetry, ml_connector):
    options = _unordered(context, mechanisms, current_plan, time.time())
    if options is None:
        return {}, context
    cluster, jobs = Cluster.read(options.get("cluster") or {}), [Job.read(j) for j in options["jobs"]]
    command = {"command": "set", "batch": options["batch"], "order": chosen_order(cluster, jobs)}
    never = unplaceable(cluster, jobs)
    if never:
        command["unplaceable"] = never  # last in the order, and why
    context["planned_batch"], context["planned_at"] = options["batch"], time.time()
    return {"JobOrder": command}, context
