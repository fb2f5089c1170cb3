"""Storage placement policy, in the MLSysOps policy format (seed section 4: adaptive fragment distribution).

It watches the storage gateway's telemetry (`storage_accesses:BUCKET:COUNTRY`, accesses per report;
`location_latency_ms:LOCATION`, probed) and sets each bucket's Storage Policy (`StoragePolicy`: k data + m parity
fragments, fragment i on `locations[i]`). A bucket's targets come from the application descriptions that name it
(`MLSysOpsApp.storage: [{bucket, regions, min_parity, max_parity, max_latency_ms}]`), on top of the gateway's own
restrictions. The first rule that applies to a bucket makes the plan:

| rule    | when                                                      | the plan                                      |
|---------|-----------------------------------------------------------|-----------------------------------------------|
| allowed | a location outside the bucket's regions                   | it is replaced by the cheapest allowed one    |
| parity  | m below min_parity / above max_parity                     | a parity location added (cheapest) / dropped  |
| slow    | a location's latest probe above max_latency_ms            | replaced by the cheapest allowed one under it |
| closer  | a country with at least SIGNIFICANT of the accesses and   | a location there replaces the least used one  |
|         | no location of the bucket there (one is allowed)          |                                               |
| busy    | more than BUSY accesses per report                        | one parity fragment more (more redundancy)    |
| quiet   | fewer than QUIET per report, m above its floor            | the dearest parity location dropped (cheaper) |

One bucket is changed per plan (the others at the next analysis); a plan is made only when a policy would change.
A location is replaced in place, so the other fragments stay where they are (the gateway moves only what changed).
"""

SIGNIFICANT = 0.2
BUSY = 200.0
QUIET = 1.0
MIN_PARITY = 1


def initialize():
    return {
        # Only the gateway's metrics (a prefix ends in *): without them it would be asked about every node's telemetry.
        "telemetry": {"metrics": ["storage_accesses:*", "location_latency_ms:*"], "system_scraper_interval": "5s"},
        "mechanisms": ["StoragePolicy"],
        "packages": [],
        "configuration": {"analyze_interval": "2s"},
        "scope": "global",
        "core": False,
        "machine_learning_usage": False,
    }


def _window(telemetry):
    return ((telemetry or {}).get("window") or {}).items()


def _demand(telemetry):
    """{bucket: {country: accesses over the window}}, and {bucket: reports seen}."""
    demand, reports = {}, {}
    for metric, samples in _window(telemetry):
        if metric.startswith("storage_accesses:"):
            _, bucket, country = metric.split(":", 2)
            demand.setdefault(bucket, {})[country] = sum(float(v) for _, v in samples)
            reports[bucket] = max(reports.get(bucket, 0), len(samples))
    return demand, reports


def _latency(telemetry):
    """{location: its latest probed latency in ms}."""
    return {metric.split(":", 1)[1]: float(samples[-1][1]) for metric, samples in _window(telemetry)
            if metric.startswith("location_latency_ms:") and samples}


def _targets(application_description, bucket):
    """The bucket's targets from every application that names it (the strictest of each)."""
    apps = application_description if isinstance(application_description, list) else [application_description]
    found = {}
    for app in apps:
        for entry in ((app or {}).get("MLSysOpsApp") or {}).get("storage") or []:
            if entry.get("bucket") != bucket:
                continue
            if entry.get("regions") is not None:
                regions = set(entry["regions"])
                found["regions"] = regions if "regions" not in found else found["regions"] & regions
            for name, pick in (("min_parity", max), ("max_parity", min), ("max_latency_ms", min)):
                if entry.get(name) is not None:
                    found[name] = entry[name] if name not in found else pick(found[name], entry[name])
    return found


def _decide(bucket, policy, where, restricted, by_country, reports, latency, targets):
    """The bucket's new policy, or None."""
    k, m, chosen = int(policy["k"]), int(policy["m"]), list(policy["locations"])
    regions = targets.get("regions")
    allowed = [n for n, loc in where.items() if (not restricted or loc.get("region") in restricted)
               and (regions is None or loc.get("region") in regions)]
    limit = targets.get("max_latency_ms")
    fast = [n for n in allowed if limit is None or latency.get(n, 0.0) <= limit]
    cost = {n: where[n].get("cost_per_gb", 0) for n in where}
    spare = sorted((n for n in fast if n not in chosen), key=lambda n: (cost[n], n))
    floor, ceiling = max(MIN_PARITY, targets.get("min_parity", 0)), targets.get("max_parity")

    def replace(old, new):
        return {"k": k, "m": m, "locations": [new if n == old else n for n in chosen]}

    def drop_parity():
        dearest = max(chosen[k:], key=lambda n: (cost.get(n, 0), n))
        kept = list(chosen)
        kept[kept.index(dearest)] = kept[-1]  # the last parity location takes its place: one fragment moves
        return {"k": k, "m": m - 1, "locations": kept[:-1]}

    outside = [n for n in chosen if n not in allowed]
    if outside and spare:
        return replace(outside[0], spare[0])
    if m < targets.get("min_parity", 0) and spare:
        return {"k": k, "m": m + 1, "locations": [*chosen, spare[0]]}
    if ceiling is not None and m > ceiling:
        return drop_parity()
    slow = [n for n in chosen if limit is not None and latency.get(n, 0.0) > limit]
    if slow and spare:
        return replace(max(slow, key=lambda n: latency[n]), spare[0])
    total = sum(by_country.values())
    countries = {where[n]["country"] for n in chosen if n in where}
    for country, n in sorted(by_country.items(), key=lambda kv: (-kv[1], kv[0])):
        if total and n / total >= SIGNIFICANT and country not in countries:
            there = [x for x in spare if where[x]["country"] == country]
            if there:
                use = {c: by_country.get(where[c]["country"], 0) if c in where else 0 for c in chosen}
                return replace(min(chosen, key=lambda c: (use[c], -cost.get(c, 0), c)), there[0])
    per_report = total / max(1, reports)
    if per_report > BUSY and spare and (ceiling is None or m < ceiling):
        return {"k": k, "m": m + 1, "locations": [*chosen, spare[0]]}
    if reports and per_report < QUIET and m > floor:
        return drop_parity()
    return None


def _wanted(application_description, mechanisms, telemetry):
    """(bucket, its new policy) for the first bucket whose policy should change; None when none should."""
    knob = (mechanisms or {}).get("StoragePolicy") or {}
    options, policies = knob.get("options") or {}, knob.get("state") or {}
    where = {loc["name"]: loc for loc in options.get("locations") or []}
    restrictions = options.get("restrictions") or {}
    demand, reports = _demand(telemetry)
    latency = _latency(telemetry)
    for bucket, policy in sorted(policies.items()):
        if not policy:
            continue
        new = _decide(bucket, policy, where, restrictions.get(bucket), demand.get(bucket) or {},
                      reports.get(bucket, 0), latency, _targets(application_description, bucket))
        if new is not None and new != {"k": int(policy["k"]), "m": int(policy["m"]),
                                       "locations": list(policy["locations"])}:
            return bucket, new
    return None


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    return _wanted(application_description, mechanisms, telemetry) is not None, context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    wanted = _wanted(application_description, mechanisms, telemetry)
    if wanted is None:  # changed since the analysis: nothing to do now
        return {}, context
    bucket, policy = wanted
    return {"StoragePolicy": {"command": "set", "bucket": bucket, **policy}}, context
