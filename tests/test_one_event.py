"""Knative's one-event contract: no mapemesh code path sends a batch, and extra events go one per request.

Knative's broker ingress (knative/eventing `pkg/broker/ingress/ingress_handler.go`) turns each request into one
event with the CloudEvents SDK's `binding.ToEvent` and answers 400 when that fails, which it does for
`application/cloudevents-batch+json`. The embedded broker refuses batches the same way unless `--accept-batch`
is given, and the suite runs with it off; this module also checks the sources, so a batch sent on a path the
live tests do not take is caught too.
"""

from __future__ import annotations

import ast
import asyncio
import uuid

import httpx
import pytest

from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.eventing.log import read_all
from mapemesh.eventing.poster import Poster
from mapemesh.serving import sink

from .conftest import REPO

SOURCES = ("mapemesh", "functions", "runtimes", "node-shim", "events", "bench")
ALLOWED = {"mapemesh/eventing/binding.py", "mapemesh/eventing/ingress.py", "mapemesh/bridge/binding.py"}
"""The decoder of the extension, the ingress that refuses it unless asked, and the MQTT binding that refuses it
(MQTT carries one event per message): the only places that may name it."""


def _is_batch_use(node: ast.AST) -> bool:
    """A value that could become the Content-Type of a batch: the media type as a string of its own (not a word in
    a help text), or binding's BATCH constant."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.strip().lower().startswith("application/cloudevents-batch")
    return (isinstance(node, ast.Name) and node.id == "BATCH") or (isinstance(node, ast.Attribute)
                                                                     and node.attr == "BATCH")


def batch_uses(root=REPO) -> list[str]:
    """`path:line` of every use of the batch content type outside the decoder and the ingress."""
    found = []
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in ALLOWED:
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if _is_batch_use(node) or (isinstance(node, ast.alias) and node.name == "BATCH"):
                    found.append(f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_no_mapemesh_code_names_the_batch_content_type():
    assert batch_uses() == [], "a mapemesh component must post one event per request (Knative's broker contract)"


def test_the_source_check_catches_a_planted_batch_post(tmp_path):
    for folder in SOURCES:
        (tmp_path / folder).mkdir()
    (tmp_path / "functions" / "bad.py").write_text(
        'HEADERS = {"content-type": "application/cloudevents-batch+json"}\n')
    assert batch_uses(tmp_path) == ['functions/bad.py:1: HEADERS = {"content-type": '
                                    '"application/cloudevents-batch+json"}']


def _event(i: int) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/test", "type": "com.example.extra",
                       "subject": f"s{i}", "datacontenttype": "application/json"}, f'{{"i": {i}}}'.encode())


def test_extra_events_are_posted_one_per_request_to_a_knative_strict_broker(broker):
    events = [_event(i) for i in range(5)]
    asyncio.run(sink.publish(events, url=broker.ingress))
    stored = {e.event.id: e.event for e in read_all(broker.log_file)}
    for event in events:
        got = stored[event.id]
        assert (got.get("subject"), got.data) == (event.get("subject"), event.data)
    health = httpx.get(broker.url + "/healthz").json()
    assert health["accept_batch"] is False and health["batches_refused"] == 0


def test_an_event_without_a_content_type_arrives_without_one_from_the_sink_and_the_poster(broker):
    """Binary mode carries datacontenttype as Content-Type: the HTTP client must not add one of its own (aiohttp
    would say application/octet-stream)."""
    plain = [CloudEvent({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/test", "type": "com.example.raw"},
                        data) for data in (b"raw bytes", None)]
    asyncio.run(sink.publish(plain, url=broker.ingress))
    posted = CloudEvent({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/test", "type": "com.example.raw"},
                        b"more bytes")

    async def post() -> int:
        poster = Poster(broker.ingress)
        try:
            return await poster.post(posted)
        finally:
            await poster.close()

    assert asyncio.run(post()) == 202
    stored = {e.event.id: e.event for e in read_all(broker.log_file)}
    for event in [*plain, posted]:
        got = stored[event.id]
        assert "datacontenttype" not in got.attributes and got.data == event.data


async def _publish_against(handler, events: list[CloudEvent]) -> list[str]:
    """Publish `events` through the sink to an aiohttp server answering with `handler`; the requests it saw."""
    from aiohttp import web

    seen: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        return await handler(request, len(seen))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await sink.publish(events, url=f"http://127.0.0.1:{runner.addresses[0][1]}/ns/broker")
    finally:
        await runner.cleanup()
    return seen


def test_a_redirect_is_not_an_acceptance():
    from aiohttp import web

    paths: list[str] = []

    async def handler(request, n):  # a redirect to a page that would answer 200 to a GET
        paths.append(request.path)
        if request.path == "/elsewhere":
            return web.Response(status=200, text="a page")
        raise web.HTTPFound("/elsewhere")

    with pytest.raises(sink.SinkError, match="302"):
        asyncio.run(_publish_against(handler, [_event(1)]))
    assert paths == ["/ns/broker"]  # not followed, and not tried again (a 3xx is the event's answer)


def test_a_5xx_whose_body_is_not_text_is_retried():
    from aiohttp import web

    async def handler(request, n):  # the first answer a 503 whose body is not UTF-8, then accepted
        return web.Response(status=503, body=b"\xff\xfe busy") if n == 1 else web.Response(status=202)

    assert asyncio.run(_publish_against(handler, [_event(1)])) == ["POST /ns/broker", "POST /ns/broker"]


def test_k_sink_is_where_extra_events_go(monkeypatch):
    monkeypatch.setenv("K_SINK", "http://sink.example/ns/b")
    monkeypatch.setenv("MAPEMESH_BROKER_URL", "http://broker.example")
    assert sink.sink_url() == "http://sink.example/ns/b"
    monkeypatch.delenv("K_SINK")
    assert sink.sink_url() == "http://broker.example/default/default"
    monkeypatch.delenv("MAPEMESH_BROKER_URL")
    with pytest.raises(sink.SinkError, match="K_SINK"):
        sink.sink_url()


def test_a_refused_event_fails_the_publish_and_names_it(broker):
    bad = _event(0)
    bad.attributes["knativebrokerttl"] = 0  # the ingress refuses an exhausted TTL with 400: not retried
    with pytest.raises(sink.SinkError, match=bad.id):
        asyncio.run(sink.publish([_event(1), bad], url=broker.ingress))
