"""Job ordering (seed 5.2, the JobOrder mechanism): the simulated GPU utilisation of the job-order policy's order
against first come, first served, on the same batches (`mapemesh.jobs.batch` for seeds 0 to SEEDS - 1: 24 jobs on
4 packet switches of 32 GPUs with 4 OCS uplinks each, a quarter of it busy), and the policy's planning time per
batch, with each candidate order it chooses among (best fit, longest first, smallest first, arrival) replayed alone,
so the gain of the best-fit list schedule shows apart from the choice. A property of the algorithm on fixed seeds,
not of the machine: the figures are the same on every run.

Aim: the policy's order better than first come, first served on every seed but ties (it is never worse: the
arrival order is one of its candidates), and a mean gain of at least AIM_GAIN utilisation.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from pathlib import Path

from mapemesh import jobs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
POLICY = ROOT / "functions" / "policies" / "job_order" / "policy.py"
SEEDS = 100
AIM_GAIN = 0.05


def _policy():
    spec = importlib.util.spec_from_file_location("job_order_policy", POLICY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(quick: bool = False) -> bool:
    """Print the table, write bench/results/jobs.json; True when the aim is met."""
    policy, seeds = _policy(), range(20 if quick else SEEDS)
    rows, plan_ms, per_candidate = [], [], []
    for seed in seeds:
        cluster, batch = jobs.batch(seed)
        started = time.perf_counter()
        order = policy.chosen_order(cluster, batch)
        plan_ms.append((time.perf_counter() - started) * 1000)
        fcfs = jobs.simulate(cluster, batch, [j.id for j in batch]).utilisation
        rows.append((seed, fcfs, jobs.simulate(cluster, batch, order).utilisation))
        per_candidate.append({name: jobs.simulate(cluster, batch, o).utilisation
                              for name, o in policy.candidate_orders(cluster, batch).items()})
    names = list(per_candidate[0])
    gains = [ordered - fcfs for _, fcfs, ordered in rows]
    worse = sum(g < 0 for g in gains)
    ok = worse == 0 and statistics.mean(gains) >= AIM_GAIN
    print(f"\nJob ordering: simulated GPU utilisation, job-order policy (the best of its candidates) against FCFS, "
          f"seeds 0-{len(rows) - 1}")
    print(f"{'seed':>6} {'FCFS':>8} " + " ".join(f"{n:>14}" for n in names) + f" {'policy':>8} {'chosen':>14}")
    for (seed, fcfs, ordered), cands in list(zip(rows, per_candidate, strict=True))[:10]:
        chosen = next(n for n in names if cands[n] == ordered)
        print(f"{seed:>6} {fcfs:8.4f} " + " ".join(f"{cands[n]:14.4f}" for n in names)
              + f" {ordered:8.4f} {chosen:>14}")
    means = {n: statistics.mean(c[n] for c in per_candidate) for n in names}
    alone = {n: sum(c[n] > f for c, (_, f, _) in zip(per_candidate, rows, strict=True)) for n in names}
    print("mean per candidate alone: " + ", ".join(f"{n} {means[n]:.4f} (beats FCFS on {alone[n]})" for n in names))
    print(f"mean FCFS {statistics.mean(r[1] for r in rows):.4f}, policy {statistics.mean(r[2] for r in rows):.4f}; "
          f"better on {sum(g > 0 for g in gains)}, worse on {worse}; planning p50 {statistics.median(plan_ms):.1f} ms"
          f" {'OK' if ok else 'MISSED'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "jobs.json").write_text(json.dumps({
        "benchmark": "jobs", "seeds": len(rows),
        "utilisation": [{"seed": s, "fcfs": f, "policy": o, "candidates": c}
                        for (s, f, o), c in zip(rows, per_candidate, strict=True)],
        "mean_candidates": means,
        "mean_fcfs": statistics.mean(r[1] for r in rows), "mean_policy": statistics.mean(r[2] for r in rows),
        "worse": worse, "plan_ms_p50": statistics.median(plan_ms), "aim_gain": AIM_GAIN, "on_target": ok},
        indent=2) + "\n")
    print(f"wrote {RESULTS / 'jobs.json'}")
    return ok
