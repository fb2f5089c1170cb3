"""Far-edge radio power policy, in the MLSysOps policy format (seed 6.3.1.2: the TX_PWR knob of an embServe device).

A far-edge device's radio is its largest energy cost, and the signal its gateway receives follows the power it
transmits with. When that signal (RSSI) is strong (above STRONG_DBM), the device steps its TX power down one level
(HIGH -> MEDIUM -> LOW); when it is weak (below WEAK_DBM), up one level; in between it stays. A step is judged
only on a reading taken after the last step was applied (SETTLE_S later), so a reading from before cannot make a
second step. It watches `radio_signal_strength_dbm`, which the MQTT bridge reports for every announced device
(Connectivity Monitoring, object 4), and plans the device's `FarEdgeRadio` knob.
"""

STRONG_DBM = -60.0
WEAK_DBM = -72.0
LEVELS = ["LOW", "MEDIUM", "HIGH"]
SETTLE_S = 1.0


def initialize():
    return {
        "telemetry": {"metrics": ["radio_signal_strength_dbm"], "system_scraper_interval": "5s"},
        "mechanisms": ["FarEdgeRadio"],
        "packages": [],
        "configuration": {"analyze_interval": "1s"},
        "scope": "global",
        "core": False,
        "machine_learning_usage": False,
    }


def _wanted(context, mechanisms, telemetry):
    samples = ((telemetry or {}).get("window") or {}).get("radio_signal_strength_dbm") or []
    if not samples:
        return None
    at, rssi = float(samples[-1][0]), float(samples[-1][1])
    if at < float(context.get("planned_at") or 0) + SETTLE_S:
        return None  # read before the last step had settled
    state = (((mechanisms or {}).get("FarEdgeRadio") or {}).get("state") or {}).get("tx_power")
    current = state if state in LEVELS else context.get("planned_power") or "HIGH"
    level = LEVELS.index(current)
    if rssi > STRONG_DBM and level > 0:
        return LEVELS[level - 1]
    if rssi < WEAK_DBM and level < len(LEVELS) - 1:
        return LEVELS[level + 1]
    return None


def analyze(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    return _wanted(context, mechanisms, telemetry) is not None, context


def plan(context, application_description, system_description, mechanisms, telemetry, ml_connector):
    import time

    wanted = _wanted(context, mechanisms, telemetry)
    context["planned_power"] = wanted
    context["planned_at"] = time.time()
    return {"FarEdgeRadio": {"command": "set", "tx_power": wanted}}, context
