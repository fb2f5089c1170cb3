"""Adaptive storage in the loop, on `mapemesh up` with a locations file (MAPEMESH_STORAGE_LOCATIONS) and real S3
endpoints (moto servers): accesses from a new country become access events and telemetry; the storage-placement
policy plans a location there; the gateway applies it as a knob and migrates the bucket's objects."""

from __future__ import annotations

import json
import os
import shutil

import boto3
import botocore.config
import httpx
import yaml

from mapemesh import events as catalogue
from mapemesh.eventing.log import read_all
from mapemesh.state import open_store

from .conftest import REPO, copy_knative, s3_locations, wait_for
from .test_serving import start_mesh

SPECS = [("loc-ie", "IE", "eu", 0.010), ("loc-de", "DE", "eu", 0.011), ("loc-fr", "FR", "eu", 0.012),
         ("loc-jp", "JP", "ap", 0.020)]


def test_accesses_from_a_new_country_move_a_location_there(tmp_path):
    locations = s3_locations(SPECS)
    layout = tmp_path / "locations.yaml"
    layout.write_text(yaml.safe_dump({
        "locations": [loc.as_location() for loc in locations], "default_policy": {"k": 2, "m": 1},
        "countries": {"127.0.0.0/8": "IE", "203.0.113.0/24": "JP"}}))
    project = tmp_path / "project"
    copy_knative(project, drop=("policy-cluster-placement.yaml", "policy-telemetry-interval.yaml"))
    shutil.copytree(REPO / "functions", project / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    mesh = start_mesh(project, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unused"}},
                      env={"MAPEMESH_STORAGE_LOCATIONS": str(layout), "MAPEMESH_STORAGE_PORT": "0",
                           "MAPEMESH_TELEMETRY_INTERVAL_S": "1"})
    store = open_store("sqlite:", data=mesh.data)

    def logged(kind: type[catalogue.EventData]) -> list[dict]:
        return [json.loads(e.event.data) for e in read_all(mesh.data / "eventlog.db")
                if e.event.type == kind.event_type]

    try:
        found = wait_for(lambda: e if "storage" in (e := json.loads((mesh.data / "endpoints.json").read_text()))
                         else None, timeout=60, what="the storage gateway")
        s3 = boto3.client("s3", endpoint_url=found["storage"], region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="y", config=botocore.config.Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket="photos")
        bodies = {f"p{i}": os.urandom(50_000 + i) for i in range(10)}
        for key, body in bodies.items():
            s3.put_object(Bucket="photos", Key=key, Body=body)
        # The bucket's policy is in the loop's record of the mechanism (the gateway said so when it was made).
        wait_for(lambda: (store.get("mechanisms", "storage-gateway/StoragePolicy") or None) and
                 "photos" in store.get("mechanisms", "storage-gateway/StoragePolicy").value["state"], timeout=30,
                 what="the new bucket's policy in the mechanism's state")
        assert store.get("buckets", "photos").value["policy"]["locations"] == ["loc-ie", "loc-de", "loc-fr"]

        # Readers in Japan (their address in X-Forwarded-For, as a load balancer sets it), more than in Ireland.
        def read_from(address: str, times: int) -> None:
            for i in range(times):
                answer = httpx.get(f"{found['storage']}/photos/p{i % 10}", headers={"X-Forwarded-For": address})
                assert answer.status_code == 200 and answer.content == bodies[f"p{i % 10}"]

        applied = None
        for _ in range(30):  # about 30 s of demand at most
            read_from("203.0.113.7", 20)
            read_from("127.0.0.1", 5)
            applied = [a for a in logged(catalogue.KnobApplied) if a["knob"] == "StoragePolicy" and a.get("plan_id")]
            if applied:
                break
        assert applied, "no StoragePolicy plan was applied"
        accessed = logged(catalogue.StorageAccessed)
        assert {a["country"] for a in accessed} >= {"JP", "IE"} and all("203.0.113.7" not in json.dumps(a)
                                                                        for a in accessed)
        plan = store.get("plans", applied[0]["plan_id"]).value
        assert plan["policy"] == "storage-placement"
        after = applied[0]["after"]["photos"]
        assert after["k"] == 2 and after["m"] == 1 and "loc-jp" in after["locations"]
        assert len(set(after["locations"]) & {"loc-ie", "loc-de", "loc-fr"}) == 2  # one replaced, in place
        # The gateway migrates every object there, and says so.
        done = wait_for(lambda: [m for m in logged(catalogue.StorageMigration) if m["bucket"] == "photos"
                                 and m["finished"]] or None, timeout=60, what="the migration's end")
        assert done[-1]["done"] == done[-1]["total"] == 10 and done[-1]["failed"] == 0
        for key, body in bodies.items():
            doc = store.get("objects", f"photos/{key}").value
            assert [p["location"] for p in doc["fragments"]] == after["locations"]
            assert s3.get_object(Bucket="photos", Key=key)["Body"].read() == body
        jp = next(loc for loc in locations if loc.name == "loc-jp")
        held = boto3.client("s3", endpoint_url=jp.endpoint, region_name="us-east-1", aws_access_key_id="x",
                            aws_secret_access_key="y").list_objects_v2(Bucket="mapemesh-fragments", Prefix="photos/")
        assert held["KeyCount"] == 10
        # Location probes arrive as the gateway's telemetry.
        latest = store.latest("storage-gateway")
        assert all(f"location_latency_ms:{loc.name}" in latest for loc in locations)
    finally:
        store.close()
        mesh.proc.terminate()
        mesh.proc.wait(30)
        for loc in locations:
            loc.stop()
