"""Typed handlers: the framework parses, injects, replies and maps errors; each stage's Trigger sends exactly the
types its handlers take."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import yaml

import mapemesh
from mapemesh import events as catalogue
from mapemesh import manifests
from mapemesh.eventing.log import read_all
from mapemesh.eventing.triggers import SERVING_V1, load_triggers
from mapemesh.serving.function import load
from mapemesh.serving.handlers import Reply, Stage, _pending, on, stage

from .conftest import REPO
from .test_serving import mesh_factory, service  # noqa: F401 (the fixture)


def disagreements(root) -> list[str]:
    """Where a stage's Trigger and its handlers disagree on the event types, for the manifests at `root`."""
    found = manifests.load(root)
    triggers, _ = load_triggers(found)
    out = []
    for m in found.of(SERVING_V1, "Service"):
        env = {e["name"]: e["value"] for e in m.body["spec"]["template"]["spec"]["containers"][0]["env"]}
        fn = load(env["FUNCTION_SOURCE"], env["FUNCTION_TARGET"], REPO)
        if not isinstance(fn, Stage):
            continue
        sent: set[str] = set()
        for t in triggers:
            if t.subscriber is not None and (t.subscriber.ref or {}).get("name") == m.name:
                sent |= set(t.filter.types) if t.filter is not None and t.filter.types is not None else {"(any)"}
        if sent != set(fn.types):
            out.append(f"{m.key}: its Trigger sends {sorted(sent - fn.types)} it has no handler for, and never "
                       f"sends {sorted(fn.types - sent)} it has handlers for")
    return out


def test_every_stage_trigger_sends_exactly_what_its_handlers_take():
    assert disagreements(REPO / "knative") == []
    stages = [m.name for m in manifests.load(REPO / "knative").of(SERVING_V1, "Service")]
    assert {"monitor", "analyze", "plan", "schedule", "execute", "deploy", "accel-digits"} <= set(stages)


def test_the_agreement_check_fails_on_a_planted_mismatch(tmp_path):
    shutil.copytree(REPO / "knative" / "base", tmp_path / "knative",
                    ignore=shutil.ignore_patterns("kustomization.yaml"))  # a plain folder: every file is read
    path = tmp_path / "knative" / "monitor.yaml"
    service_doc, trigger = yaml.safe_load_all(path.read_text())
    kept = [f for f in trigger["spec"]["filters"][0]["any"] if f["exact"]["type"] != catalogue.KnobFailed.event_type]
    trigger["spec"]["filters"][0]["any"] = [*kept, {"exact": {"type": "io.mapemesh.unheard.v1"}}]
    path.write_text(yaml.safe_dump_all([service_doc, trigger]))
    [problem] = disagreements(tmp_path / "knative")
    assert "io.mapemesh.unheard.v1" in problem and catalogue.KnobFailed.event_type in problem


# -- the framework --------------------------------------------------------------------------------------------

@pytest.fixture
def handlers_module():
    name = "tests.fake_stage"
    yield name
    _pending.pop(name, None)


def _declare(module: str, fn):
    fn.__module__ = module
    return on(catalogue.AppRemoved)(fn)


def test_a_handler_gets_parsed_data_and_only_what_it_names(handlers_module):
    seen = {}

    def removed(data, *, event):
        seen.update(data=data, event=event)
        return Reply(catalogue.AppRemoved(app_id=data.app_id + "-again"), subject="s1", extensions={"x": "1"})

    _declare(handlers_module, removed)
    st = stage(handlers_module, source="/fake")
    event = catalogue.make_event(catalogue.AppRemoved(app_id="a"), "/test")
    reply = asyncio.run(st(event))
    assert seen["data"] == catalogue.AppRemoved(app_id="a") and seen["event"] is event
    assert (reply.type, reply.get("source"), reply.get("subject"), reply.get("x")) == (
        catalogue.AppRemoved.event_type, "/fake", "s1", "1")


def test_bad_data_and_other_types_are_permanent_errors(handlers_module):
    _declare(handlers_module, lambda data: None)
    st = stage(handlers_module, source="/fake")
    bad = catalogue.make_event(catalogue.AppRemoved(app_id="a"), "/test")
    bad.data = b'{"app_id": ""}'
    with pytest.raises(mapemesh.PermanentError, match="invalid data"):
        asyncio.run(st(bad))
    with pytest.raises(mapemesh.PermanentError, match=r"takes io\.mapemesh\.app\.removed\.v1"):
        asyncio.run(st(catalogue.make_event(catalogue.AppSubmitted(app_id="a", description={}), "/test")))


def test_a_handler_must_take_the_data_then_keywords_it_may_be_given():
    with pytest.raises(TypeError, match="keyword-only"):
        on(catalogue.AppRemoved)(lambda data, store: None)
    with pytest.raises(TypeError, match="keyword-only"):
        on(catalogue.AppRemoved)(lambda data, *, clock: None)
    with pytest.raises(TypeError, match="catalogue event classes"):
        on(dict)  # type: ignore[arg-type]


def test_several_events_the_first_replies_the_others_go_one_per_request(handlers_module, broker, monkeypatch):
    monkeypatch.setenv("K_SINK", broker.ingress)

    async def removed(data):
        return [catalogue.AppRemoved(app_id=f"{data.app_id}-{i}") for i in range(3)]

    _declare(handlers_module, removed)
    st = stage(handlers_module, source="/fake")
    reply = asyncio.run(st(catalogue.make_event(catalogue.AppRemoved(app_id="a"), "/test")))
    assert reply.json_data() == {"app_id": "a-0"}
    stored = sorted(e.event.json_data()["app_id"] for e in read_all(broker.log_file))
    assert stored == ["a-1", "a-2"]


def test_a_temporary_error_is_a_503_with_retry_after_from_the_local_host(mesh_factory):  # noqa: F811
    mesh = mesh_factory(service("echo"))
    r = mesh.post("echo", type_="busy")
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"  # TemporaryError(delay=2.5), rounded up
    assert mesh.post("echo", type_="boom").status_code == 500


def test_a_temporary_error_needs_a_sane_delay():
    with pytest.raises(ValueError, match="non-negative"):
        mapemesh.TemporaryError("x", delay=float("nan"))
