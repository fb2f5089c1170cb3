"""The Knative broker ingress contract, over real HTTP against a broker process."""

from __future__ import annotations

import json
import signal
import socket
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from mapemesh.eventing.log import read_all

from .conftest import copy_knative, start_broker


def binary_headers(**attrs: str) -> dict[str, str]:
    base = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/test", "type": "com.example.test"}
    base.update(attrs)
    return {f"ce-{k}": v for k, v in base.items() if v is not None} | {"content-type": "application/json"}


def structured(**attrs: object) -> dict[str, object]:
    doc: dict[str, object] = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/test",
                              "type": "com.example.test"}
    doc.update(attrs)
    return {k: v for k, v in doc.items() if v is not ...}


def stored(broker, event_id: str):
    return [e for e in read_all(broker.log_file) if e.event.id == event_id]


def post_structured(url: str, doc: object, batch: bool = False) -> httpx.Response:
    ctype = "application/cloudevents-batch+json" if batch else "application/cloudevents+json; charset=utf-8"
    return httpx.post(url, content=json.dumps(doc), headers={"content-type": ctype})


def test_binary_event_is_accepted_and_stored(shared_broker):
    h = binary_headers(subject="node-1", myext="v%20x")
    r = httpx.post(shared_broker.ingress, headers=h, content=b'{"cpu": 0.5}')
    assert r.status_code == 202
    (e,) = stored(shared_broker, h["ce-id"])
    assert e.broker == "default/default"
    assert e.event.type == "com.example.test"
    assert e.event.get("subject") == "node-1"
    assert e.event.get("myext") == "v x"  # percent-decoded
    assert e.event.datacontenttype == "application/json"
    assert e.event.data == b'{"cpu": 0.5}'


def test_structured_event_is_accepted_and_stored(shared_broker):
    doc = structured(data={"cpu": 0.5}, subject="n1", count=3, flag=True)
    r = post_structured(shared_broker.ingress, doc)
    assert r.status_code == 202
    (e,) = stored(shared_broker, doc["id"])
    assert e.event.json_data() == {"cpu": 0.5}
    assert e.event.get("count") == 3 and e.event.get("flag") is True


def test_structured_data_base64_and_text(shared_broker):
    doc = structured(data_base64="AAEC", datacontenttype="application/octet-stream")
    assert post_structured(shared_broker.ingress, doc).status_code == 202
    assert stored(shared_broker, doc["id"])[0].event.data == b"\x00\x01\x02"
    doc = structured(data="hello", datacontenttype="text/plain")
    assert post_structured(shared_broker.ingress, doc).status_code == 202
    assert stored(shared_broker, doc["id"])[0].event.data == b"hello"


def test_specversion_03_is_accepted(shared_broker):
    doc = structured(specversion="0.3", datacontentencoding="base64", data="aGk=", schemaurl="/s")
    assert post_structured(shared_broker.ingress, doc).status_code == 202
    (e,) = stored(shared_broker, doc["id"])
    assert e.event.specversion == "0.3" and e.event.data == b"hi"
    h = binary_headers(specversion="0.3")
    assert httpx.post(shared_broker.ingress, headers=h, content=b"{}").status_code == 202


def test_arrival_time_and_default_ttl_are_set(shared_broker):
    h = binary_headers()
    assert httpx.post(shared_broker.ingress, headers=h, content=b"{}").status_code == 202
    (e,) = stored(shared_broker, h["ce-id"])
    assert e.event.get("knativebrokerttl") == 255
    arrival = str(e.event.get("knativearrivaltime"))
    assert arrival.endswith("Z") and arrival[:4].isdigit()


def test_given_ttl_is_kept(shared_broker):
    h = binary_headers(knativebrokerttl="7")
    assert httpx.post(shared_broker.ingress, headers=h, content=b"{}").status_code == 202
    assert stored(shared_broker, h["ce-id"])[0].event.get("knativebrokerttl") == 7


@pytest.mark.parametrize("ttl", ["0", "-3", "abc", "1_0", "+5", "99999999999999999999999", "4294967296"])
def test_exhausted_or_bad_ttl_is_rejected(shared_broker, ttl):
    h = binary_headers(knativebrokerttl=ttl)
    r = httpx.post(shared_broker.ingress, headers=h, content=b"{}")
    assert r.status_code == 400
    assert r.json()["attribute"] == "knativebrokerttl"
    assert not stored(shared_broker, h["ce-id"])


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_binary_missing_required_attribute(shared_broker, missing):
    h = binary_headers(**{missing: None})
    r = httpx.post(shared_broker.ingress, headers=h, content=b"{}")
    assert r.status_code == 400
    assert r.json()["attribute"] == missing


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_structured_missing_required_attribute(shared_broker, missing):
    doc = structured(**{missing: ...})
    r = post_structured(shared_broker.ingress, doc)
    assert r.status_code == 400
    assert r.json()["attribute"] == missing


@pytest.mark.parametrize(("attrs", "attribute"), [
    ({"specversion": "2.0"}, "specversion"),
    ({"id": ""}, "id"),
    ({"time": "yesterday"}, "time"),
    ({"dataschema": "relative/path"}, "dataschema"),
])
def test_bad_attribute_values(shared_broker, attrs, attribute):
    r = httpx.post(shared_broker.ingress, headers=binary_headers(**attrs), content=b"{}")
    assert r.status_code == 400
    body = r.json()
    assert body["attribute"] == attribute and body["reason"]


def test_binary_attribute_name_outside_charset(shared_broker):
    h = binary_headers()
    h["ce-my_ext"] = "x"
    r = httpx.post(shared_broker.ingress, headers=h, content=b"{}")
    assert r.status_code == 400 and r.json()["attribute"] == "my_ext"


@pytest.mark.parametrize("name", ["myExt", "my-ext", "my_ext"])
def test_structured_attribute_name_outside_charset(shared_broker, name):
    r = post_structured(shared_broker.ingress, structured(**{name: "x"}))
    assert r.status_code == 400 and r.json()["attribute"] == name


def test_structured_fractional_extension_rejected(shared_broker):
    r = post_structured(shared_broker.ingress, structured(ratio=0.5))
    assert r.status_code == 400 and r.json()["attribute"] == "ratio"


def test_both_data_and_data_base64(shared_broker):
    r = post_structured(shared_broker.ingress, structured(data={"a": 1}, data_base64="AA=="))
    assert r.status_code == 400 and r.json()["attribute"] == "data_base64"


@pytest.mark.parametrize(("raw", "why"), [("bad%zzvalue", "percent"), ("trunc%4", "percent"),
                                          ("%ff%fe", "UTF-8")])
def test_binary_header_percent_decoding_failures(shared_broker, raw, why):
    h = binary_headers()
    h["ce-myext"] = raw
    r = httpx.post(shared_broker.ingress, headers=h, content=b"{}")
    assert r.status_code == 400
    assert r.json()["attribute"] == "myext" and why in r.json()["reason"]


def _raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                  + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_binary_header_raw_bytes_not_utf8(shared_broker):
    head = (b"POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: 1\r\n"
            b"ce-source: /s\r\nce-type: t\r\nce-myext: \xff\xfe\r\nContent-Type: application/json\r\n")
    status, body = _raw_request(shared_broker.url, head, b"{}")
    assert status == 400
    assert json.loads(body)["attribute"] == "myext"


def test_not_a_cloudevent(shared_broker):
    r = httpx.post(shared_broker.ingress, content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["attribute"] == "specversion"
    r = httpx.post(shared_broker.ingress, content=b"{not json",
                   headers={"content-type": "application/cloudevents+json"})
    assert r.status_code == 400 and "JSON" in r.json()["reason"]


def test_unknown_broker_is_404(shared_broker):
    h = binary_headers()
    for path in ("/default/nope", "/other/default", "/", "/default", "/default/default/extra"):
        r = httpx.post(shared_broker.url + path, headers=h, content=b"{}")
        assert r.status_code == 404, path
    assert not stored(shared_broker, h["ce-id"])


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(shared_broker, method):
    r = httpx.request(method, shared_broker.ingress)
    assert r.status_code == 405
    assert "POST" in r.headers["allow"]


def test_options_is_200(shared_broker):
    r = httpx.options(shared_broker.ingress, headers={"WebHook-Request-Origin": "example.com"})
    assert r.status_code == 200
    assert "POST" in r.headers["allow"]
    assert r.headers["webhook-allowed-origin"] == "example.com"


@pytest.fixture(scope="module")
def batch_broker(tmp_path_factory):
    """A broker with mapemesh's batch extension switched on (`--accept-batch`)."""
    root = tmp_path_factory.mktemp("batch-broker")
    copy_knative(root)
    b = start_broker(root / "data", root / "knative", "--accept-batch")
    yield b
    b.stop(signal.SIGKILL)


def test_a_batch_is_refused_by_default_as_knative_refuses_it(shared_broker):
    # knative/eventing pkg/broker/ingress/ingress_handler.go: binding.ToEvent fails on a batch message -> 400.
    docs = [structured(data={"i": i}) for i in range(2)]
    r = post_structured(shared_broker.ingress, docs, batch=True)
    assert r.status_code == 400 and "one event per request" in r.json()["reason"]
    assert not any(stored(shared_broker, d["id"]) for d in docs)
    assert httpx.get(shared_broker.url + "/healthz").json()["batches_refused"] >= 1


def test_a_batch_is_accepted_with_the_extension_on(batch_broker):
    docs = [structured(data={"i": i}) for i in range(2)]
    assert post_structured(batch_broker.ingress, docs, batch=True).status_code == 202
    assert all(len(stored(batch_broker, d["id"])) == 1 for d in docs)
    health = httpx.get(batch_broker.url + "/healthz").json()
    assert health["accept_batch"] is True and health["batches_refused"] == 0


def test_batch_is_all_or_nothing(batch_broker):
    good = [structured(data={"i": i}) for i in range(3)]
    r = post_structured(batch_broker.ingress, good, batch=True)
    assert r.status_code == 202
    for doc in good:
        assert len(stored(batch_broker, doc["id"])) == 1
    seqs = [stored(batch_broker, d["id"])[0].seq for d in good]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] == 2

    mixed = [structured(data={"i": 0}), structured(type=...), structured(data={"i": 2})]
    r = post_structured(batch_broker.ingress, mixed, batch=True)
    assert r.status_code == 400
    assert r.json()["index"] == 1 and r.json()["attribute"] == "type"
    for doc in mixed:
        assert not stored(batch_broker, doc["id"])


def test_batch_must_be_an_array(batch_broker):
    r = post_structured(batch_broker.ingress, structured(), batch=True)
    assert r.status_code == 400 and "array" in r.json()["reason"]
