"""Routing and delivery through a real broker process to real subscribers on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from aiohttp import web

from mapemesh import endpoints
from mapemesh.eventing.log import read_all

from .conftest import BrokerProcess, add_resources, wait_for
from .subscriber import Subscriber


@pytest.fixture
def sub():
    s = Subscriber()
    yield s
    s.close()


def trigger(name: str, uri: str, *, filters=None, filter_=None, delivery=None, annotations=None,
            ref=None, broker: str = "default") -> dict:
    spec: dict = {"broker": broker, "subscriber": {"ref": ref} if ref else {"uri": uri}}
    if ref and uri:
        spec["subscriber"]["uri"] = uri
    if filters is not None:
        spec["filters"] = filters
    if filter_ is not None:
        spec["filter"] = filter_
    if delivery is not None:
        spec["delivery"] = delivery
    meta: dict = {"name": name, "namespace": "default"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": meta, "spec": spec}


def write(manifests: Path, name: str, *docs: dict) -> None:
    (manifests / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    add_resources(manifests, f"{name}.yaml")


def post(broker: BrokerProcess, type_: str = "com.example.t", **ext: str) -> str:
    event_id = ext.pop("id", None) or str(uuid.uuid4())
    headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/test", "ce-type": type_,
               "content-type": "application/json", **{f"ce-{k}": v for k, v in ext.items()}}
    r = httpx.post(broker.ingress, headers=headers, content=b'{"n": 1}')
    assert r.status_code == 202, r.text
    return event_id


def stats(broker: BrokerProcess) -> dict:
    return httpx.get(broker.url + "/stats").json()["triggers"]


def test_each_matching_trigger_gets_the_event_once(broker_factory, manifests_dir, sub):
    write(manifests_dir, "triggers",
          trigger("by-type", sub.url + "/a", filters=[{"exact": {"type": "com.example.t"}}]),
          trigger("by-prefix", sub.url + "/b", filter_={"attributes": {"source": "/test"}}),
          trigger("other-type", sub.url + "/c", filters=[{"exact": {"type": "com.example.other"}}]))
    broker = broker_factory()
    first = post(broker)
    second = post(broker, "com.example.other")
    wait_for(lambda: len(sub.received) >= 4, what="deliveries")
    assert sub.ids("/a") == [first]
    assert sorted(sub.ids("/b")) == sorted([first, second])
    assert sub.ids("/c") == [second]
    rec = sub.at("/a")[0]
    assert rec.headers.get("Prefer") == "reply"
    assert "knativebrokerttl" not in rec.event.attributes  # stripped before delivery, as Knative does
    assert rec.event.attributes["knativearrivaltime"]
    wait_for(lambda: stats(broker)["default/by-type"]["delivered"] == 1, what="stats")
    s = stats(broker)
    assert s["default/by-type"]["accepted"] == 1 and s["default/by-prefix"]["delivered"] == 2
    assert s["default/by-type"]["latency"]["count"] == 1


def test_retries_with_backoff_then_success(broker_factory, manifests_dir, sub):
    answers = iter([503, 429, 200])
    sub.handlers["/flaky"] = lambda rec: web.Response(status=next(answers))
    write(manifests_dir, "t", trigger("flaky", sub.url + "/flaky",
                                      delivery={"retry": 3, "backoffDelay": "PT0.05S"}))
    broker = broker_factory()
    post(broker)
    wait_for(lambda: stats(broker)["default/flaky"]["delivered"] == 1, what="delivery after retries")
    times = [r.at for r in sub.at("/flaky")]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.05 * 0.9 and times[2] - times[1] >= 0.1 * 0.9  # 0.05 * 2^(n-1)
    assert stats(broker)["default/flaky"]["retried"] == 2


def test_non_retryable_answer_goes_to_dead_letter_sink_with_error_extensions(broker_factory, manifests_dir, sub):
    body = b"E" * 2000
    sub.handlers["/bad"] = lambda rec: web.Response(status=400, body=body)
    write(manifests_dir, "t", trigger("bad", sub.url + "/bad", delivery={
        "retry": 5, "backoffDelay": "PT0.01S", "deadLetterSink": {"uri": sub.url + "/dls"}}))
    broker = broker_factory()
    event_id = post(broker)
    wait_for(lambda: sub.at("/dls"), what="the dead letter")
    assert len(sub.at("/bad")) == 1  # 400 is not retried
    letter = sub.at("/dls")[0].event
    assert letter.id == event_id and letter.data == b'{"n": 1}'
    assert letter.attributes["knativeerrordest"] == sub.url + "/bad"
    assert letter.attributes["knativeerrorcode"] == "400"
    data = letter.attributes["knativeerrordata"]
    assert len(data) <= 1024 and base64.b64decode(data) == body[:768]
    wait_for(lambda: stats(broker)["default/bad"]["dead_lettered"] == 1, what="stats")


def test_transport_errors_are_retried_and_reported_as_500(broker_factory, manifests_dir, sub):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/gone"
    write(manifests_dir, "t", trigger("gone", closed, delivery={
        "retry": 2, "backoffDelay": "PT0.01S", "deadLetterSink": {"uri": sub.url + "/dls"}}))
    broker = broker_factory()
    post(broker)
    wait_for(lambda: sub.at("/dls"), what="the dead letter")
    letter = sub.at("/dls")[0].event
    assert letter.attributes["knativeerrorcode"] == "500"
    assert "knativeerrordata" not in letter.attributes
    wait_for(lambda: stats(broker)["default/gone"]["retried"] == 2, what="stats")


def test_without_dead_letter_sink_the_event_is_dropped_and_counted(broker_factory, manifests_dir, sub):
    sub.handlers["/bad"] = lambda rec: web.Response(status=500)
    write(manifests_dir, "t", trigger("bad", sub.url + "/bad", delivery={"retry": 1}))
    broker = broker_factory()
    post(broker)
    wait_for(lambda: stats(broker)["default/bad"]["dropped"] == 1, what="the drop to be counted")
    assert len(sub.at("/bad")) == 2


def test_non_cloudevent_2xx_body_is_a_failed_delivery(broker_factory, manifests_dir, sub):
    sub.handlers["/ok"] = lambda rec: web.Response(status=200, text="OK")  # functions-framework's answer
    write(manifests_dir, "t", trigger("ok", sub.url + "/ok", delivery={"deadLetterSink": {"uri": sub.url + "/dls"}}))
    broker = broker_factory()
    post(broker)
    wait_for(lambda: sub.at("/dls"), what="the dead letter")
    assert sub.at("/dls")[0].event.attributes["knativeerrorcode"] == "200"
    assert stats(broker)["default/ok"]["delivered"] == 0


def reply_with(type_: str):
    def handler(rec):
        headers = {"ce-specversion": "1.0", "ce-id": "re-" + rec.event.id, "ce-source": "/subscriber",
                   "ce-type": type_, "Content-Type": "application/json"}
        return web.Response(status=200, headers=headers, body=b'{"reply": true}')
    return handler


def test_reply_is_published_back_with_ttl_decremented(broker_factory, manifests_dir, sub):
    sub.handlers["/first"] = reply_with("com.example.reply")
    write(manifests_dir, "t",
          trigger("first", sub.url + "/first", filters=[{"exact": {"type": "com.example.t"}}]),
          trigger("second", sub.url + "/second", filters=[{"exact": {"type": "com.example.reply"}}]))
    broker = broker_factory()
    event_id = post(broker, knativebrokerttl="10")
    wait_for(lambda: sub.at("/second"), what="the reply to reach the second trigger")
    assert sub.ids("/second") == ["re-" + event_id]
    (stored,) = [e for e in read_all(broker.log_file) if e.event.id == "re-" + event_id]
    assert stored.event.attributes["knativebrokerttl"] == 9


def test_structured_reply_is_published_too(broker_factory, manifests_dir, sub):
    def structured(rec):
        doc = {"specversion": "1.0", "id": "s-" + rec.event.id, "source": "/s", "type": "com.example.reply",
               "data": {"ok": 1}}
        return web.Response(status=200, body=json.dumps(doc), content_type="application/cloudevents+json")
    sub.handlers["/first"] = structured
    write(manifests_dir, "t",
          trigger("first", sub.url + "/first", filters=[{"exact": {"type": "com.example.t"}}]),
          trigger("second", sub.url + "/second", filters=[{"exact": {"type": "com.example.reply"}}]))
    broker = broker_factory()
    event_id = post(broker)
    wait_for(lambda: sub.at("/second"), what="the structured reply")
    assert sub.at("/second")[0].event.id == "s-" + event_id


def test_reply_loops_stop_when_the_ttl_runs_out(broker_factory, manifests_dir, sub):
    sub.handlers["/loop"] = reply_with("com.example.t")  # answers every event with another of the same type
    write(manifests_dir, "t", trigger("loop", sub.url + "/loop", filters=[{"exact": {"type": "com.example.t"}}]))
    broker = broker_factory()
    post(broker, knativebrokerttl="3")
    wait_for(lambda: len(sub.at("/loop")) >= 3, what="three deliveries")
    wait_for(lambda: stats(broker)["default/loop"]["delivered"] == 3, what="the third delivery to finish")
    assert len(sub.at("/loop")) == 3  # ttl 3 -> 2 -> 1 -> the reply at 0 is dropped


def test_ordered_delivery_per_partition_key(broker_factory, manifests_dir, sub):
    in_flight: dict[str, int] = {}
    overlaps: list[str] = []
    lock = threading.Lock()
    answers: dict[str, int] = {}

    async def slow(rec):
        key = rec.event.attributes["partitionkey"]
        with lock:
            in_flight[key] = in_flight.get(key, 0) + 1
            if in_flight[key] > 1:
                overlaps.append(key)
            answers[rec.event.id] = answers.get(rec.event.id, 0) + 1
            fail = answers[rec.event.id] == 1 and rec.event.id.endswith("-2")  # the 3rd of each key fails once
        await asyncio.sleep(0.02)  # stay in flight a while, so that an overlapping delivery of the key is seen
        with lock:
            in_flight[key] -= 1
        return web.Response(status=503 if fail else 202)

    sub.handlers["/ordered"] = slow
    write(manifests_dir, "t", trigger("ordered", sub.url + "/ordered",
                                      annotations={"mapemesh.io/delivery-order": "ordered"},
                                      delivery={"retry": 2, "backoffDelay": "PT0.02S"}))
    broker = broker_factory()
    sent = {key: [post(broker, id=f"{key}-{i}", partitionkey=key) for i in range(6)] for key in ("a", "b")}
    wait_for(lambda: stats(broker)["default/ordered"]["delivered"] == 12, what="all ordered deliveries")
    assert not overlaps
    for key, ids in sent.items():
        got = [i for i in sub.ids("/ordered") if i.startswith(key + "-")]
        deduped = [i for n, i in enumerate(got) if i not in got[:n]]
        assert deduped == ids  # arrival order, even across the retry of the third event


def test_trigger_reload_and_not_ready_triggers(broker_factory, manifests_dir, sub):
    broker = broker_factory()
    post(broker)
    write(manifests_dir, "late", trigger("late", sub.url + "/late"))
    wait_for(lambda: "default/late" in stats(broker), what="the new trigger")
    event_id = post(broker)
    wait_for(lambda: sub.ids("/late") == [event_id], what="delivery through the new trigger")
    write(manifests_dir, "broken", trigger("broken", sub.url + "/x", filters=[{"cesql": "type = "}]),
          trigger("nobroker", sub.url + "/x", broker="missing"),
          trigger("baddelivery", sub.url + "/x", delivery="PT1S"),
          trigger("nosvc", "", ref={"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "ghost"}))
    wait_for(lambda: "default/nosvc" in stats(broker), what="the broken triggers to show")
    s = stats(broker)
    assert not s["default/broken"]["ready"] and "cesql" in s["default/broken"]["reason"]
    assert not s["default/nobroker"]["ready"] and "not declared" in s["default/nobroker"]["reason"]
    assert not s["default/baddelivery"]["ready"] and "mapping" in s["default/baddelivery"]["reason"]
    assert not s["default/nosvc"]["ready"] and "Service default/ghost" in s["default/nosvc"]["reason"]
    assert s["default/late"]["ready"]
    other = post(broker)
    wait_for(lambda: other in sub.ids("/late"), what="delivery to go on")
    assert not sub.at("/x")


def test_ref_subscriber_resolves_to_the_function_host(broker_factory, manifests_dir, sub):
    write(manifests_dir, "svc", {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                 "metadata": {"name": "probe", "namespace": "default"}, "spec": {}},
          trigger("to-svc", "", ref={"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "probe"},
                  delivery={"retry": 20, "backoffDelay": "PT0.05S", "backoffPolicy": "linear"}))
    broker = broker_factory()
    event_id = post(broker)  # no function host yet: retried until one appears
    endpoints.register(broker.data, "serving", sub.url)
    wait_for(lambda: sub.ids("/default/probe") == [event_id], what="delivery to the Service")


def test_events_survive_a_broker_crash_and_reach_the_subscriber(broker_factory, manifests_dir, sub):
    write(manifests_dir, "t", trigger("all", sub.url + "/all", delivery={"retry": 10, "backoffDelay": "PT0.05S"}))
    broker = broker_factory()
    accepted: list[str] = []
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                event_id = str(uuid.uuid4())
                headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/crash", "ce-type": "t"}
                try:
                    if http.post(broker.ingress, headers=headers, content=b"{}").status_code == 202:
                        accepted.append(event_id)
                except httpx.HTTPError:
                    return

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(accepted) >= 200, what="200 accepted events")
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    broker_factory()  # restart on the same data directory
    wait_for(lambda: set(accepted) <= set(sub.ids("/all")), timeout=60,
             what="every accepted event to reach the subscriber")


def test_broker_stats_command(broker_factory, manifests_dir, sub):
    from .test_cli import mapemesh

    write(manifests_dir, "t", trigger("good", sub.url + "/good"),
          trigger("bad", sub.url + "/bad", filter_={"attributes": {"Bad-Key": "x"}}))
    broker = broker_factory()
    post(broker)
    wait_for(lambda: stats(broker)["default/good"]["delivered"] == 1, what="the delivery")
    r = mapemesh("broker", "stats", data=broker.data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["TRIGGER", "READY", "ACCEPTED", "DELIVERED"]
    good = next(line for line in lines if line.startswith("default/good"))
    assert good.split()[1:4] == ["yes", "1", "1"]
    assert any(line.startswith("default/bad not ready:") and "must match" in line for line in lines)
    r = mapemesh("broker", "stats", "-o", "json", data=broker.data)
    doc = json.loads(r.stdout)
    assert doc["triggers"]["default/good"]["latency"]["count"] == 1


def test_removed_trigger_drops_its_pending_events(broker_factory, manifests_dir, sub):
    sub.handlers["/down"] = lambda rec: web.Response(status=503)
    write(manifests_dir, "t", trigger("down", sub.url + "/down", delivery={"retry": 1000, "backoffDelay": "PT0.1S",
                                                                           "backoffPolicy": "linear"}))
    broker = broker_factory()
    post(broker)
    wait_for(lambda: len(sub.at("/down")) >= 2, what="retries")
    (manifests_dir / "t.yaml").unlink()
    wait_for(lambda: "default/down" not in stats(broker), what="the trigger to go")
    pending = wait_for(lambda: not [d for d in _deliveries(broker) if d[2] == "pending"] and _deliveries(broker),
                       what="the delivery to be given up")
    assert pending[0][2] == "dead" and "trigger removed" in pending[0][3]


def _deliveries(broker: BrokerProcess):
    import sqlite3
    db = sqlite3.connect(f"file:{broker.log_file}?mode=ro", uri=True)
    try:
        return db.execute("SELECT subscription, seq, state, last_error FROM deliveries").fetchall()
    finally:
        db.close()


def test_a_reply_written_in_pieces_is_read_whole(broker_factory, manifests_dir, sub):
    async def slow_reply(rec):
        resp = web.StreamResponse(status=200, headers={
            "ce-specversion": "1.0", "ce-id": "piece-" + rec.event.id, "ce-source": "/s",
            "ce-type": "com.example.reply", "Content-Type": "application/octet-stream"})
        await resp.prepare(rec.request)
        await resp.write(b"a" * 1000)
        await asyncio.sleep(0.05)  # the reply reaches the broker in two pieces
        await resp.write(b"b" * 1000)
        await resp.write_eof()
        return resp

    sub.handlers["/first"] = slow_reply
    write(manifests_dir, "t",
          trigger("first", sub.url + "/first", filters=[{"exact": {"type": "com.example.t"}}]),
          trigger("second", sub.url + "/second", filters=[{"exact": {"type": "com.example.reply"}}]))
    broker = broker_factory()
    post(broker)
    wait_for(lambda: sub.at("/second"), what="the reply")
    assert sub.at("/second")[0].event.data == b"a" * 1000 + b"b" * 1000


def test_dead_letter_after_a_restart_keeps_the_error_details(broker_factory, manifests_dir, sub):
    sink_up = threading.Event()
    sub.handlers["/bad"] = lambda rec: web.Response(status=400, text="no such node")
    sub.handlers["/dls"] = lambda rec: web.Response(status=202 if sink_up.is_set() else 503)
    write(manifests_dir, "t", trigger("bad", sub.url + "/bad", delivery={
        "retry": 1000, "backoffDelay": "PT0.05S", "backoffPolicy": "linear",
        "deadLetterSink": {"uri": sub.url + "/dls"}}))
    broker = broker_factory()
    post(broker)
    wait_for(lambda: len(sub.at("/dls")) >= 2, what="the sink to refuse twice")
    broker.stop(signal.SIGKILL)
    sink_up.set()
    broker_factory()
    wait_for(lambda: [r for r in sub.at("/dls") if r.event.attributes.get("knativeerrorcode") == "400"
                      and r.received_ok], what="the dead letter after the restart")
    letters = [r.event for r in sub.at("/dls")]
    assert all(e.attributes["knativeerrordest"] == sub.url + "/bad" for e in letters)
    assert base64.b64decode(letters[-1].attributes["knativeerrordata"]) == b"no such node"
    assert len(sub.at("/bad")) == 1  # the subscriber is not asked again after the restart
