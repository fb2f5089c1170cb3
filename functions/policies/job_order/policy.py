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
first, smallest first, the arrival order): never worse than first come, first served. One plan per batch.
"""

from mapemesh.jobs import Cluster, Job, Occupancy, simulate, start_in_turn


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


def chosen_order(cluster, jobs):
    """The best, replayed on the cluster, of the best-fit order, longest first, smallest first and the arrival
    order (so never worse than first come, first served); the earlier one on a tie."""
    candidates = [best_fit_order(cluster, jobs),
                  [j.id for j in sorted(jobs, key=lambda j: (-j.duration_s, j.id))],
                  [j.id for j in sorted(jobs, key=lambda j: (j.gpus, -j.duration_s, j.id))],
                  [j.id for j in jobs]]
    return max(candidates, key=lambda order: simulate(cluster, jobs, order).utilisation)


def _unordered(context, mechanisms):
    """The JobOrder options when their batch has not been ordered (nor planned) yet, else None."""
    knob = (mechanisms or {}).get("JobOrder") or {}
    options, state = knob.get("options") or {}, knob.get("state") or {}
    batch = options.get("batch")
    if not batch or not options.get("jobs") or batch in (state.get("batch"), context.get("planned_batch")):
        return None
    return options


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    return _unordered(context, mechanisms) is not None, context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    options = _unordered(context, mechanisms)
    if options is None:
        return {}, context
    order = chosen_order(Cluster.read(options.get("cluster") or {}), [Job.read(j) for j in options["jobs"]])
    context["planned_batch"] = options["batch"]
    return {"JobOrder": {"command": "set", "batch": options["batch"], "order": order}}, context
