"""The storage gateway as its users run it (`mapemesh storage serve`), against real S3 endpoints (moto servers, one
per location) and with boto3: byte-exact objects from 0 bytes to 64 MiB, lost locations, and a Storage Policy
change under load with no failed request and no orphan fragment."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest
import yaml

from mapemesh import events as catalogue
from mapemesh.eventing.binding import from_http, to_binary
from mapemesh.state import open_store

from .conftest import s3_locations, signed, wait_for

SPECS = [("loc-ie", "IE", "eu", 0.010), ("loc-de", "DE", "eu", 0.011), ("loc-fr", "FR", "eu", 0.012),
         ("loc-us", "US", "us", 0.013), ("loc-jp", "JP", "ap", 0.020), ("loc-br", "BR", "sa", 0.021)]


def _serve(root, locations, data, **extra) -> tuple[subprocess.Popen[bytes], dict]:
    """`mapemesh storage serve` over `locations` (a locations file in `root`, with `extra` fields), and its
    endpoints once it has recorded them."""
    (root / "locations.yaml").write_text(yaml.safe_dump({
        "locations": [loc.as_location() for loc in locations], "default_policy": {"k": 3, "m": 1},
        "countries": {"127.0.0.0/8": "IE", "203.0.113.0/24": "JP"}, **extra}))
    (data / "endpoints.json").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--data", str(data), "storage", "serve", "--locations",
                             str(root / "locations.yaml"), "--port", "0"], env={**os.environ, "MAPEMESH_DATA": ""})

    def up():
        assert proc.poll() is None, f"storage serve exited with {proc.returncode}"
        found = json.loads((data / "endpoints.json").read_text()) if (data / "endpoints.json").exists() else {}
        return found if "storage-control" in found else None

    return proc, wait_for(up, timeout=60, what="the gateway")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    locations = s3_locations(SPECS)
    data = root / "data"
    data.mkdir()
    proc, found = _serve(root, locations, data)
    try:
        yield {"url": found["storage"], "control": found["storage-control"], "locations": locations, "data": data}
    finally:
        _stop(proc)
        for loc in locations:
            loc.stop()


def _s3(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                        aws_secret_access_key="y",
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def _raw(location):
    return _s3(location.endpoint)


def test_objects_round_trip_byte_exact_from_0_bytes_to_64_mib(gateway):
    s3 = _s3(gateway["url"])
    s3.create_bucket(Bucket="exact")
    for size in (0, 1, 1 << 20, 64 << 20):
        body = os.urandom(size)
        key = f"dir/obj-{size} ü"
        s3.put_object(Bucket="exact", Key=key, Body=body, Metadata={"origin": "test"}, ContentType="app/x")
        got = s3.get_object(Bucket="exact", Key=key)
        assert got["Body"].read() == body and got["Metadata"] == {"origin": "test"}
        assert got["ContentType"] == "app/x"
        if size > 10:
            assert s3.get_object(Bucket="exact", Key=key, Range="bytes=3-9")["Body"].read() == body[3:10]
            assert s3.get_object(Bucket="exact", Key=key, Range="bytes=-5")["Body"].read() == body[-5:]
    listed = s3.list_objects_v2(Bucket="exact", Prefix="dir/")["Contents"]
    assert sorted(o["Size"] for o in listed) == [0, 1, 1 << 20, 64 << 20]
    # Multipart (what the transfer manager does for large files), then delete.
    big = os.urandom(23 << 20)
    s3.upload_fileobj(io.BytesIO(big), "exact", "multi",
                      Config=boto3.s3.transfer.TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20))
    assert s3.head_object(Bucket="exact", Key="multi")["ETag"].endswith('-3"')
    assert s3.get_object(Bucket="exact", Key="multi")["Body"].read() == big
    s3.delete_object(Bucket="exact", Key="multi")
    with pytest.raises(botocore.exceptions.ClientError, match="NoSuchKey"):
        s3.get_object(Bucket="exact", Key="multi")
    # Each fragment went to another location: 3+1 on the four cheapest.
    held = {loc.name: len(_raw(loc).list_objects_v2(Bucket="mapemesh-fragments", Prefix="exact/").get("Contents", []))
            for loc in gateway["locations"]}
    assert held == {"loc-ie": 4, "loc-de": 4, "loc-fr": 4, "loc-us": 4, "loc-jp": 0, "loc-br": 0}


def test_a_get_survives_m_lost_locations_and_says_clearly_when_more_are_lost(gateway):
    s3 = _s3(gateway["url"])
    s3.create_bucket(Bucket="tolerant")
    body = os.urandom(300_000)
    s3.put_object(Bucket="tolerant", Key="k", Body=body)
    by_name = {loc.name: loc for loc in gateway["locations"]}
    by_name["loc-de"].stop()
    try:
        assert s3.get_object(Bucket="tolerant", Key="k")["Body"].read() == body  # m = 1 location lost
        by_name["loc-fr"].stop()
        with pytest.raises(botocore.exceptions.ClientError) as lost:
            s3.get_object(Bucket="tolerant", Key="k")
        error = lost.value.response["Error"]
        assert lost.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert error["Code"] == "ServiceUnavailable" and "2 of the 3 fragments" in error["Message"]
    finally:
        for name in ("loc-de", "loc-fr"):
            by_name[name].stop()
            by_name[name].start()  # moto keeps nothing: these locations come back empty


def _set_policy(control: str, bucket: str, k: int, m: int, locations: list[str], data) -> dict:
    """An operator's StoragePolicy command (signed by the `operator` identity of the gateway's data directory)."""
    apply = catalogue.make_event(catalogue.KnobApply(node="storage-gateway", knob="StoragePolicy", command={
        "command": "set", "bucket": bucket, "k": k, "m": m, "locations": locations}, requested_by="test"), "/test")
    headers, body = to_binary(signed(apply, data))
    answer = httpx.post(control + "/", headers=headers, content=body, timeout=30)
    (event,) = from_http(answer.headers, answer.content)
    return {"type": event.type, **json.loads(event.data)}


def test_a_policy_change_under_load_fails_no_request_and_leaves_no_orphan(gateway):
    s3 = _s3(gateway["url"])
    s3.create_bucket(Bucket="moving")
    bodies = {f"obj-{i:03d}": os.urandom(2000 + 37 * i) for i in range(200)}
    for key, body in bodies.items():
        s3.put_object(Bucket="moving", Key=key, Body=body)
    refused = _set_policy(gateway["control"], "moving", 4, 2, ["loc-ie", "loc-de"], gateway["data"])
    assert refused["type"] == catalogue.KnobFailed.event_type and "different locations" in refused["error"]
    errors: list[str] = []
    written: dict[str, bytes] = {}
    stop = threading.Event()

    def client(n: int) -> None:
        mine = _s3(gateway["url"])
        i = 0
        while not stop.is_set():
            key = f"obj-{(n * 37 + i) % 200:03d}"
            try:
                got = mine.get_object(Bucket="moving", Key=key)["Body"].read()
                if got != written.get(key, bodies[key]) and got != bodies[key]:
                    errors.append(f"{key}: wrong bytes")
                if i % 10 == 0:
                    new = os.urandom(1500)
                    mine.put_object(Bucket="moving", Key=f"new-{n}-{i}", Body=new)
                    written[f"new-{n}-{i}"] = new
            except Exception as exc:  # every failed request is a failure of the test
                errors.append(f"{key}: {exc}")
            i += 1

    workers = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for w in workers:
        w.start()
    applied = _set_policy(gateway["control"], "moving", 4, 2,
                          ["loc-ie", "loc-de", "loc-fr", "loc-us", "loc-jp", "loc-br"], gateway["data"])
    assert applied["type"] == catalogue.KnobApplied.event_type, applied
    status = wait_for(lambda: d if (d := httpx.get(gateway["control"] + "/status").json()["moving"])["migration"]
                      and d["migration"]["finished"] else None, timeout=120, what="the migration to finish")
    stop.set()
    for w in workers:
        w.join(30)
    assert errors == [], errors[:5]
    assert status["migration"]["done"] == status["migration"]["total"] and status["migration"]["failed"] == 0
    store = open_store("sqlite:", data=gateway["data"])
    try:
        docs = {k: v.value for k, v in store.list("objects").items() if k.startswith("moving/")}
    finally:
        store.close()
    assert len(docs) == 200 + len(written)
    for doc in docs.values():
        assert doc["k"] == 4 and [p["location"] for p in doc["fragments"]] == [
            "loc-ie", "loc-de", "loc-fr", "loc-us", "loc-jp", "loc-br"]
    for key, body in {**bodies, **written}.items():
        assert s3.get_object(Bucket="moving", Key=key)["Body"].read() == body, key
    # No orphan fragment: what the locations hold is exactly what the metadata names.
    named = {(p["location"], p["key"]) for doc in docs.values() for p in doc["fragments"]}
    held = {(loc.name, o["Key"]) for loc in gateway["locations"]
            for page in _raw(loc).get_paginator("list_objects_v2").paginate(Bucket="mapemesh-fragments",
                                                                           Prefix="moving/")
            for o in page.get("Contents", [])}
    assert held == named
    # What an operator sees.
    shown = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(gateway["data"]), "storage", "status",
                            "moving"], capture_output=True, text=True, check=True).stdout
    assert "moving: 4+2 on loc-ie, loc-de, loc-fr, loc-us, loc-jp, loc-br" in shown and "#" * 30 in shown, shown
    assert "done" in shown and "failed" not in shown
    missing = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(gateway["data"]), "storage", "status",
                              "nothing-here"], capture_output=True, text=True)
    assert missing.returncode == 4 and "no bucket nothing-here" in missing.stderr


def test_sealed_objects_leave_no_plain_byte_in_any_location(gateway, tmp_path):
    (tmp_path / "storage.key").write_bytes(os.urandom(32))
    data = tmp_path / "data"
    data.mkdir()
    proc, found = _serve(tmp_path, gateway["locations"], data, encryption={"key_file": "storage.key"})
    try:
        s3 = _s3(found["storage"])
        s3.create_bucket(Bucket="sealed")
        body = b"a very recognisable secret " * 40_000
        s3.put_object(Bucket="sealed", Key="secret", Body=body)
        assert s3.get_object(Bucket="sealed", Key="secret")["Body"].read() == body
        assert s3.get_object(Bucket="sealed", Key="secret", Range="bytes=27-52")["Body"].read() == body[27:53]
        assert s3.head_object(Bucket="sealed", Key="secret")["ContentLength"] == len(body)
        held = [_raw(loc).get_object(Bucket="mapemesh-fragments", Key=o["Key"])["Body"].read()
                for loc in gateway["locations"]
                for o in _raw(loc).list_objects_v2(Bucket="mapemesh-fragments", Prefix="sealed/").get("Contents", [])]
        assert len(held) == 4 and not any(b"recognisable" in fragment for fragment in held)
        # A sealed bucket migrates without its key being needed, and stays readable.
        assert _set_policy(found["storage-control"], "sealed", 2, 1, ["loc-us", "loc-jp", "loc-br"],
                           data)["type"] == catalogue.KnobApplied.event_type
        wait_for(lambda: httpx.get(found["storage-control"] + "/status").json()["sealed"]["migration"]["finished"],
                 timeout=60, what="the sealed bucket's migration")
        assert s3.get_object(Bucket="sealed", Key="secret")["Body"].read() == body
    finally:
        _stop(proc)
    # The same data under another key: refused, saying why (nothing is returned that is not the object).
    (tmp_path / "storage.key").write_bytes(os.urandom(32))
    proc, found = _serve(tmp_path, gateway["locations"], data, encryption={"key_file": "storage.key"})
    try:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            _s3(found["storage"]).get_object(Bucket="sealed", Key="secret")
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert "cannot be decrypted" in refused.value.response["Error"]["Message"]
    finally:
        _stop(proc)
    # A key file that is no key: the gateway does not start, and says why.
    (tmp_path / "storage.key").write_text("not a key")
    bad = subprocess.run([sys.executable, "-m", "mapemesh", "--data", str(data), "storage", "serve", "--locations",
                          str(tmp_path / "locations.yaml"), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "encryption.key_file" in bad.stderr and "32 bytes" in bad.stderr
