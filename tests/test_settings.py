"""Settings: defaults on loopback, MAPEMESH_* variables, flags on top; endpoints.json bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapemesh import endpoints
from mapemesh.settings import Settings


def test_defaults_are_on_loopback():
    s = Settings.load(environ={})
    assert s.host == "127.0.0.1" and s.data == Path(".mapemesh") and s.max_event_bytes == 1024 * 1024


def test_environment_then_flags():
    env = {"MAPEMESH_BROKER_PORT": "9000", "MAPEMESH_DATA": "/tmp/x", "MAPEMESH_DURABILITY": "os"}
    s = Settings.load(environ=env)
    assert (s.broker_port, s.data, s.durability) == (9000, Path("/tmp/x"), "os")
    s = Settings.load(environ=env, broker_port=9100, data=None)
    assert s.broker_port == 9100 and s.data == Path("/tmp/x")


@pytest.mark.parametrize(("env", "message"), [
    ({"MAPEMESH_BROKER_PORT": "eighty"}, "MAPEMESH_BROKER_PORT"),
    ({"MAPEMESH_DURABILITY": "maybe"}, "durability"),
    ({"MAPEMESH_MAX_EVENT_BYTES": "100"}, "64 KiB"),
])
def test_bad_settings_are_refused_clearly(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.load(environ=env)


def test_endpoints_register_and_unregister(tmp_path):
    endpoints.register(tmp_path, "broker", "http://127.0.0.1:1/")
    endpoints.register(tmp_path, "api", "http://127.0.0.1:2")
    assert endpoints.read(tmp_path) == {"broker": "http://127.0.0.1:1", "api": "http://127.0.0.1:2"}
    endpoints.unregister(tmp_path, "broker", "http://127.0.0.1:9")  # another broker's: left alone
    assert "broker" in endpoints.read(tmp_path)
    endpoints.unregister(tmp_path, "broker")
    assert endpoints.read(tmp_path) == {"api": "http://127.0.0.1:2"}
