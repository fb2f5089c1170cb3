"""Settings: defaults on loopback, MAPEMESH_* variables, flags on top; endpoints.json bookkeeping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mapemesh import endpoints, settings
from mapemesh.settings import Settings

from .conftest import REPO


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
    ({"MAPEMESH_PLAN_TIMEOUT_S": "soon"}, "MAPEMESH_PLAN_TIMEOUT_S='soon' is not a valid float"),
    ({"MAPEMESH_PLAN_TIMEOUT_S": "0"}, "plan_timeout_s must be > 0"),
    ({"MAPEMESH_KARMADA": "perhaps"}, "MAPEMESH_KARMADA='perhaps' is not a boolean"),
    ({"MAPEMESH_IDENTITIES": "sometimes"}, "MAPEMESH_IDENTITIES"),
    ({"MAPEMESH_LOG_LEVEL": "loud"}, "log_level"),
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


def test_knative_variables_keep_their_names_and_give_the_sink():
    s = Settings.load(environ={"K_SINK": "http://sink/ns/b", "K_SERVICE": "monitor",
                               "MAPEMESH_BROKER_URL": "http://broker/"})
    assert (s.sink, s.k_service) == ("http://sink/ns/b", "monitor")
    assert Settings.load(environ={"MAPEMESH_BROKER_URL": "http://broker/"}).sink == "http://broker/default/default"
    assert Settings.load(environ={}).sink == ""


def test_given_names_what_the_environment_and_flags_set():
    s = Settings.load(environ={"MAPEMESH_STATE": "sqlite:", "MAPEMESH_NODE": ""}, host="0.0.0.0")
    assert s.given == {"state", "host"}  # an empty variable is unset
    assert Settings.load(environ={}).given == frozenset()


def test_one_default_data_directory():
    s = Settings.load(environ={})
    assert s.data == settings.DEFAULT_DATA == Path(".mapemesh")
    assert s.identity_folder == Path(".mapemesh/identity") and s.event_log_file == Path(".mapemesh/eventlog.db")
    assert Settings.load(environ={"MAPEMESH_IDENTITY_DIR": "/ids"}).identity_folder == Path("/ids")


def test_the_process_reads_its_environment_once_until_reset(monkeypatch):
    monkeypatch.setenv("MAPEMESH_PLAN_TIMEOUT_S", "7")
    first = settings.current()
    assert first.plan_timeout_s == 7.0 and settings.current() is first
    os.environ["MAPEMESH_PLAN_TIMEOUT_S"] = "8"  # a bare change is not seen: the object is the process's
    try:
        assert settings.current() is first
        settings.reset()
        assert settings.current().plan_timeout_s == 8.0
    finally:
        monkeypatch.delenv("MAPEMESH_PLAN_TIMEOUT_S")
    assert settings.current().plan_timeout_s == 60.0


def test_every_setting_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Settings"):readme.index("## Event catalogue")]
    assert [v for v in settings.VARIABLES.values() if f"`{v}`" not in table] == []
