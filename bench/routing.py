"""Routing cost per event with 10 and with 10,000 Triggers (exact-type filters, one matching).

Triggers that pin an exact `type` are indexed by (broker, type), so an event's routing cost should not grow
with the number of triggers that cannot match it. Measured in one process on the same events, rounds of the
trigger sets interleaved, medians of rounds, with the garbage collector paused during a round (as timeit does:
a collection's cost depends on everything alive in the process, not on routing). A non-indexable variant
(prefix filters) is shown for scale. Target: 10,000 / 10 cost ratio <= 1.5.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path

from mapemesh import manifests
from mapemesh.eventing.brokers import brokers_from
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.triggers import TriggerSet, parse_trigger

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.5
BROKER = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
          "metadata": {"name": "default", "namespace": "default"}}


def trigger_set(n: int, dialect: str) -> TriggerSet:
    brokers, _ = brokers_from(manifests.ManifestSet([manifests.Manifest(
        "eventing.knative.dev/v1", "Broker", "default", "default", BROKER, "bench")]))
    triggers = []
    for i in range(n):
        doc = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": f"t{i}", "namespace": "default"},
               "spec": {"broker": "default", "subscriber": {"uri": f"http://127.0.0.1:9/{i}"},
                        "filters": [{dialect: {"type": f"io.mapemesh.bench.type{i}.v1"}}]}}
        triggers.append(parse_trigger(manifests.Manifest(
            "eventing.knative.dev/v1", "Trigger", f"t{i}", "default", doc, "bench"), brokers))
    assert all(t.ready for t in triggers)
    return TriggerSet.build(triggers)


def one_round(ts: TriggerSet, events: list[CloudEvent]) -> float:
    """Nanoseconds per event to route `events` once."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for ev in events:
            matched = ts.match("default/default", ev)
            assert len(matched) == 1
        return (time.perf_counter_ns() - start) / len(events)
    finally:
        gc.enable()


def main(quick: bool = False) -> bool:
    """Print the table, write bench/results/routing.json; True when the ratio is on target."""
    n_events, rounds = (2000, 3) if quick else (20000, 7)
    # Every event matches exactly one trigger: type0 (present in both sets).
    events = [CloudEvent({"specversion": "1.0", "id": str(i), "source": "/bench",
                          "type": "io.mapemesh.bench.type0.v1"}) for i in range(n_events)]
    short = events[: max(200, n_events // 20)]  # the unindexed 1,000 set is slow: fewer events
    sets = {"10 triggers, exact type": (trigger_set(10, "exact"), events),
            "10,000 triggers, exact type": (trigger_set(10_000, "exact"), events),
            "10 triggers, prefix (not indexed)": (trigger_set(10, "prefix"), events),
            "1,000 triggers, prefix (not indexed)": (trigger_set(1_000, "prefix"), short)}
    samples: dict[str, list[float]] = {label: [] for label in sets}
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits every set alike
        for label, (ts, sample) in sets.items():
            samples[label].append(one_round(ts, sample))
    results = {label: statistics.median(values) for label, values in samples.items()}
    ratio = results["10,000 triggers, exact type"] / results["10 triggers, exact type"]
    ok = ratio <= TARGET
    print(f"\nrouting: per-event matching cost, {n_events} events, median of {rounds} rounds")
    print(f"{'trigger set':38} {'ns/event':>10}")
    for label, ns in results.items():
        print(f"{label:38} {ns:10.0f}")
    print(f"ratio 10,000/10 exact-type triggers: {ratio:.2f} (target <= {TARGET}) {'OK' if ok else 'MISSED'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "routing.json").write_text(json.dumps({
        "benchmark": "routing", "events": n_events, "rounds": rounds, "ns_per_event": results,
        "ratio": ratio, "target_ratio": TARGET, "on_target": ok}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'routing.json'}")
    return ok
