"""The CloudEvent catalogue: types, dataschemas, exported JSON Schemas."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from mapemesh import events
from mapemesh.eventing.cloudevent import validate
from mapemesh.events import export

LOOP_TYPES = {
    "telemetry.reported", "state.changed", "policy.analyze.requested", "policy.analyze.replied",
    "policy.plan.requested", "policy.plan.replied", "plan.proposed", "plan.scheduled", "plan.discarded",
    "knob.apply", "knob.applied", "knob.failed", "deploy.requested", "deploy.status", "app.submitted",
    "app.removed", "infra.registered", "infra.unregistered", "mode.changed", "accel.requested", "accel.replied",
    "mqtt.refused", "faredge.deploy.requested", "faredge.step", "faredge.deployed", "storage.accessed",
    "storage.migration", "trust.updated", "auth.refused", "node.isolated",
}


def test_every_loop_event_has_a_reverse_dns_type():
    names = {t.removeprefix("io.mapemesh.").removesuffix(".v1") for t in events.CATALOGUE}
    assert names == LOOP_TYPES
    for t in events.CATALOGUE:
        assert re.fullmatch(r"io\.mapemesh(\.[a-z]+)+\.v\d+", t)


def test_exported_schemas_are_current():
    assert export.stale() == [], "events/schemas is stale: run `make schemas`"


def test_stale_check_notices_a_change(tmp_path):
    assert export.main(["--dir", str(tmp_path)]) == 0
    assert export.stale(tmp_path) == []
    some = next(tmp_path.glob("io.mapemesh.knob.apply.v1.json"))
    some.write_text(some.read_text().replace("MLSysOps mechanism", "a mechanism"))
    (tmp_path / "io.mapemesh.gone.v1.json").write_text("{}")
    assert export.stale(tmp_path) == ["io.mapemesh.gone.v1.json", "io.mapemesh.knob.apply.v1.json"]
    assert export.main(["--check", "--dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("model", list(events.CATALOGUE.values()), ids=list(events.CATALOGUE))
def test_schema_id_is_the_dataschema(model):
    doc = json.loads((export.SCHEMAS_DIR / f"{model.event_type}.json").read_text())
    assert doc["$id"] == model.dataschema()
    assert doc["title"] == model.event_type


def test_make_event_round_trip():
    data = events.KnobApply(node="node-1", knob="CPUFrequency", requested_by="policy-cpu",
                            command={"command": "set", "cpu": "all", "frequency": "max"})
    ce = events.make_event(data, source="/execute", extensions={"node": "node-1"})
    validate(ce.attributes)
    assert ce.type == "io.mapemesh.knob.apply.v1"
    assert ce.get("dataschema") == events.KnobApply.dataschema()
    assert events.parse_data(ce) == data


def test_parse_data_rejects_bad_payloads():
    ce = events.make_event(events.AppRemoved(app_id="a"), source="/api")
    ce.data = b'{"app_id": ""}'
    with pytest.raises(ValidationError):
        events.parse_data(ce)
    ce.data = b'{"app_id": "a", "surprise": 1}'
    with pytest.raises(ValidationError):
        events.parse_data(ce)
    ce.attributes["type"] = "com.example.other"
    with pytest.raises(events.UnknownEventType):
        events.parse_data(ce)
