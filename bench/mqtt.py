"""MQTT ingress through the bridge: CloudEvents published on MQTT (QoS 1, MQTT 5 binary mode) into the broker's
durable log, against mosquitto's own publish rate in the same run.

- baseline: a publisher and a plain subscriber on the same mosquitto (QoS 1 both ways): messages/s the subscriber
  receives;
- bridge: the same publisher, the bridge (`mapemesh bridge mqtt`) taking the messages into a broker (`broker serve`,
  durable): events/s appended to its log;
- latency: one message at a time, from the publish to the broker's acceptance (the `knativearrivaltime` the broker
  stamps, read where a Trigger delivers it; one clock, one machine), p50 and p99.

Aim: the bridge at >= 0.5 of mosquitto's own rate. Needs `mosquitto` (Debian package); says so when missing.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.coldstart import Receiver, endpoint, free_port, pct, wait
from mapemesh.bridge.binding import to_mqtt
from mapemesh.eventing.cloudevent import CloudEvent

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MESSAGES, LATENCY_SAMPLES = 5000, 200
TARGET_RATIO = 0.5


def _client(port: int, on_message=None) -> mqtt.Client:  # type: ignore[no-untyped-def]
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:12],
                         protocol=mqtt.MQTTv5)
    client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.max_inflight_messages_set(100)
    if on_message is not None:
        client.on_message = on_message
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(10)
    return client


def _event(n: int) -> tuple[bytes, Properties]:
    event = CloudEvent({"specversion": "1.0", "id": f"m-{n}-{uuid.uuid4().hex[:8]}", "source": "/bench/mqtt",
                        "type": "io.mapemesh.bench.mqtt", "datacontenttype": "application/json"},
                       json.dumps({"n": n, "sent": time.time()}).encode())
    payload, content_type, user = to_mqtt(event)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ContentType = content_type
    properties.UserProperty = user
    return payload, properties


def _publish(client: mqtt.Client, topic: str, count: int) -> float:
    started = time.perf_counter()
    infos = []
    for n in range(count):
        payload, properties = _event(n)
        infos.append(client.publish(topic, payload, qos=1, properties=properties))
    for info in infos:
        info.wait_for_publish(30)
    return time.perf_counter() - started


def _baseline(port: int) -> float:
    got = [0]
    done = threading.Event()

    def heard(_c, _u, _m) -> None:  # type: ignore[no-untyped-def]
        got[0] += 1
        if got[0] >= MESSAGES:
            done.set()

    sub = _client(port, heard)
    sub.subscribe("baseline/#", qos=1)
    time.sleep(0.3)
    pub = _client(port)
    started = time.perf_counter()
    _publish(pub, "baseline/x", MESSAGES)
    done.wait(120)
    elapsed = time.perf_counter() - started
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return got[0] / elapsed


def main(quick: bool = False) -> bool:
    """Print the table, write bench/results/mqtt.json; True when the bridge reaches the aimed ratio."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        print("\nmqtt: skipped, mosquitto is not installed (apt-get install mosquitto)")
        return True
    global MESSAGES
    MESSAGES = 1000 if quick else MESSAGES
    receiver = Receiver()
    with tempfile.TemporaryDirectory(prefix="mapemesh-mqtt-") as tmp:
        root = Path(tmp)
        port = free_port()
        conf = root / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                        "max_inflight_messages 100\nmax_queued_messages 100000\n")
        mosquitto = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        manifests = root / "knative"
        manifests.mkdir()
        for name in ("broker.yaml", "config-features-eventing.yaml"):
            shutil.copy(REPO / "knative" / "base" / name, manifests / name)
        (manifests / "bench.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
             "metadata": {"name": "latency", "namespace": "default"},
             "spec": {"broker": "default", "filters": [{"exact": {"type": "io.mapemesh.bench.mqtt.one"}}],
                      "subscriber": {"uri": receiver.url}}}))
        data = root / "data"
        broker = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "broker", "serve",
                                   "--data", str(data), "--manifests", str(manifests), "--port", "0"], cwd=REPO)
        bridge = None
        try:
            url = wait(lambda: endpoint(data, "broker"), what="the broker")
            bridge = subprocess.Popen([sys.executable, "-m", "mapemesh", "--log-level", "warning", "--data", str(data),
                                       "bridge", "mqtt", "--mqtt", f"mqtt://127.0.0.1:{port}", "--broker",
                                       f"{url}/default/default", "--subscribe", "bench/#"], cwd=REPO)
            wait(lambda: endpoint(data, "bridge"), what="the bridge")
            baseline = _baseline(port)
            pub = _client(port)
            before = _appended(url)
            started = time.perf_counter()
            _publish(pub, "bench/x", MESSAGES)
            wait(lambda: _appended(url) - before >= MESSAGES, timeout=300, what="every message in the log")
            bridged = MESSAGES / (time.perf_counter() - started)
            latencies = []
            for n in range(50 if quick else LATENCY_SAMPLES):
                event = CloudEvent({"specversion": "1.0", "id": f"one-{n}-{uuid.uuid4().hex[:6]}",
                                    "source": "/bench/mqtt", "type": "io.mapemesh.bench.mqtt.one"}, b"{}")
                payload, _, user = to_mqtt(event)
                properties = Properties(PacketTypes.PUBLISH)
                properties.UserProperty = user
                sent = time.time()
                pub.publish("bench/one", payload, qos=1, properties=properties).wait_for_publish(10)
                _, attrs = wait(lambda i=event.id: receiver.arrived.get(i), what="the message at the Trigger")
                accepted = datetime.fromisoformat(str(attrs["knativearrivaltime"]).replace("Z", "+00:00"))
                latencies.append((accepted.timestamp() - sent) * 1000)
            pub.disconnect()
            pub.loop_stop()
        finally:
            for proc in (bridge, broker, mosquitto):
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    ratio = bridged / baseline
    ok = ratio >= TARGET_RATIO
    print(f"\nMQTT ingress: {MESSAGES} CloudEvents (MQTT 5 binary mode, QoS 1) published as fast as acknowledged")
    print(f"{'path':44} {'messages/s':>10}")
    print(f"{'mosquitto alone (publisher -> subscriber)':44} {baseline:10.0f}")
    print(f"{'through the bridge into the durable log':44} {bridged:10.0f}")
    print(f"bridge / mosquitto: {ratio:.2f} (aim >= {TARGET_RATIO}) {'OK' if ok else 'MISSED'}")
    print(f"MQTT publish -> broker's 202 (one at a time): p50 {statistics.median(latencies):.2f} ms, "
          f"p99 {pct(latencies, 99):.2f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mqtt.json").write_text(json.dumps({
        "benchmark": "mqtt", "messages": MESSAGES, "mosquitto_per_s": baseline, "bridge_per_s": bridged,
        "ratio": ratio, "target_ratio": TARGET_RATIO, "on_target": ok,
        "publish_to_accepted_ms": {"p50": statistics.median(latencies), "p99": pct(latencies, 99)}}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'mqtt.json'}")
    return ok



def _appended(url: str) -> int:
    return int(httpx.get(url + "/healthz", timeout=10).json()["log"]["appended"])
