"""The persistent per-node daemon: knob drivers, telemetry reporters, its API."""
