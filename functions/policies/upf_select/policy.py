"""5G user-plane policy, in the MLSysOps policy format (seed 5.2: dynamic UPF switching, R7.4).

A cluster's 5G core serves each UE's PDU session through one of several UPFs (in datacentres at different
distances from the gNodeB). The core registers them as the options of its `UPFSelect` mechanism
(`{"upfs": [{name, address, max_bandwidth_mbps}], "ues": [...]}`; the state is `{UE: UPF}`), and its telemetry
source reports, per UPF, `upf_latency_ms:UPF` (gNodeB-UPF), `upf_cpu_percent:UPF`, `upf_memory_percent:UPF`,
`upf_bandwidth_percent:UPF` and `upf_traffic_mbps:UPF`, and per UE `ue_traffic_mbps:UE`.

The expected latency of a UE on a UPF is the latency measured there now, or, for a UPF it is not on, that latency
grown by the load the UE would add (a queue: latency ~ 1 / (1 - utilisation)). A UE moves to the UPF with the
lowest expected latency only when it beats the current one by HYSTERESIS (a fraction) and by MIN_GAIN_MS, and only
on a reading taken SETTLE_S after the last move was planned: a load rise moves it away, and it comes back when the
load is calm, without flapping in between. One UE per plan. A UE whose UPF the core does not offer (or has no
reading of) is passed over, and a core that offers no UPF gets no plan.
"""

HYSTERESIS = 0.2
MIN_GAIN_MS = 2.0
SETTLE_S = 1.0
SATURATED = 0.05
"""The least headroom counted (1 - utilisation): a UPF at or past its capacity is very slow, not infinitely."""


def initialize():
    return {
        "telemetry": {"metrics": ["upf_latency_ms:*", "upf_bandwidth_percent:*", "ue_traffic_mbps:*"],
                      "system_scraper_interval": "5s"},
        "mechanisms": ["UPFSelect"],
        "packages": [],
        "configuration": {"analyze_interval": "1s"},
        "scope": "global",
        "core": False,
        "machine_learning_usage": False,
    }


def _latest(telemetry, prefix):
    """{name: (time, value)} of the newest sample of each `prefix:NAME` metric."""
    window = (telemetry or {}).get("window") or {}
    return {metric[len(prefix) + 1:]: (float(samples[-1][0]), float(samples[-1][1]))
            for metric, samples in window.items() if metric.startswith(prefix + ":") and samples}


def expected_latency(upf, current, latency, utilisation, ue_mbps, capacity_mbps):
    """The latency a UE should see on `upf` (it is on `current`)."""
    if upf == current or not capacity_mbps:
        return latency
    headroom = 1.0 - utilisation
    return latency * max(SATURATED, headroom) / max(SATURATED, headroom - ue_mbps / capacity_mbps)


def _wanted(context, mechanisms, telemetry):
    """(UE, the UPF it should move to) for the first UE that should move; None when none should."""
    knob = (mechanisms or {}).get("UPFSelect") or {}
    options, state = knob.get("options") or {}, knob.get("state") or {}
    capacity = {u["name"]: float(u.get("max_bandwidth_mbps") or 0)
                for u in options.get("upfs") or [] if isinstance(u, dict) and u.get("name")}
    latency = _latest(telemetry, "upf_latency_ms")
    utilisation = {name: value / 100.0 for name, (_, value) in _latest(telemetry, "upf_bandwidth_percent").items()}
    traffic = _latest(telemetry, "ue_traffic_mbps")
    settled = float(context.get("planned_at") or 0) + SETTLE_S
    for ue, current in sorted(state.items()):
        if current not in capacity or current not in latency or latency[current][0] < settled:
            continue  # a UPF not offered, or no reading of it since the last move settled
        ue_mbps = traffic.get(ue, (0.0, 0.0))[1]
        expected = {upf: expected_latency(upf, current, latency[upf][1], utilisation.get(upf, 0.0), ue_mbps, cap)
                    for upf, cap in capacity.items() if upf in latency}
        best = min(expected, key=lambda u: (expected[u], u))
        now = expected[current]
        if best != current and expected[best] <= now * (1 - HYSTERESIS) and now - expected[best] >= MIN_GAIN_MS:
            return ue, best
    return None


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    return _wanted(context, mechanisms, telemetry) is not None, context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    import time

    wanted = _wanted(context, mechanisms, telemetry)
    if wanted is None:  # changed since the analysis
        return {}, context
    ue, upf = wanted
    context["planned_at"] = time.time()
    return {"UPFSelect": {"command": "set", "ue": ue, "upf": upf}}, context
