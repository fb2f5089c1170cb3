"""CloudEvents over MQTT through the bridge, against a real mosquitto and a real broker: both content modes in and
out (MQTT 5 binary and structured, MQTT 3.1.1 structured), attributes, extensions and binary data intact; QoS 1
messages published while the broker is down arrive once it is back; malformed messages are dead-lettered."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mapemesh import events as catalogue
from mapemesh.bridge.binding import STRUCTURED, from_mqtt, to_mqtt
from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.eventing.log import read_all

from .conftest import copy_knative, start_broker, wait_for


def _event(**extra) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/sensors/7", "type": "io.example.temp",
                       "subject": "room-1", "time": "2026-12-06T21:00:00Z", "sensorgroup": "north", "priority": "3",
                       **extra}, b"\x00\x01binary\xff")


# -- the binding, without servers ---------------------------------------------------------------------------------

def test_binary_mode_maps_attributes_to_user_properties_and_the_content_type():
    event = _event(datacontenttype="application/octet-stream")
    payload, content_type, properties = to_mqtt(event)
    assert payload == event.data and content_type == "application/octet-stream"
    assert ("specversion", "1.0") in properties and ("sensorgroup", "north") in properties
    assert from_mqtt(payload, content_type, properties) == event
    # An application's own User Properties are no attributes (names are [a-z0-9]+): left out.
    assert from_mqtt(payload, content_type, [*properties, ("X-Trace", "1")]) == event


def test_structured_mode_carries_the_json_format_and_mqtt_311_has_only_that():
    event = _event(datacontenttype="application/octet-stream")
    payload, content_type, properties = to_mqtt(event, binary=False)
    assert content_type == STRUCTURED and properties == [] and json.loads(payload)["data_base64"]
    assert from_mqtt(payload, content_type) == event
    assert from_mqtt(payload) == event  # MQTT 3.1.1: no properties at all, the payload is the event


@pytest.mark.parametrize(("payload", "content_type", "properties", "why"), [
    (b"not json", None, [], "JSON CloudEvent"),
    (b"{}", STRUCTURED, [], "specversion"),
    (b"hi", "text/plain", [("type", "t")], "specversion"),
    (b"[]", "application/cloudevents-batch+json", [], "batch"),
])
def test_a_message_that_is_no_cloudevent_is_refused_with_the_reason(payload, content_type, properties, why):
    with pytest.raises(MalformedEvent, match=why):
        from_mqtt(payload, content_type, properties)


# -- through the bridge --------------------------------------------------------------------------------------------

class Publisher:
    """A test-side MQTT client (5 or 3.1.1) that publishes with QoS 1 and keeps what it hears."""

    def __init__(self, url: str, v5: bool = True):
        host, port = url.removeprefix("mqtt://").split(":")
        self.v5 = v5
        self.heard: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        self.client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.on_message = lambda _c, _u, msg: self.heard.append(msg)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert connected.wait(10)

    def publish(self, topic: str, event: CloudEvent | None = None, *, binary: bool = True, raw: bytes = b"",
                content_type: str | None = None) -> None:
        properties = None
        if event is not None:
            raw, content_type, user = to_mqtt(event, binary=binary and self.v5)
        else:
            user = []
        if self.v5 and (content_type or user):
            properties = Properties(PacketTypes.PUBLISH)
            if content_type:
                properties.ContentType = content_type
            if user:
                properties.UserProperty = user
        self.client.publish(topic, raw, qos=1, properties=properties).wait_for_publish(10)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _bridge(mosquitto_url: str, data: Path, broker: str, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh", "--data", str(data), "bridge", "mqtt", "--mqtt",
                             mosquitto_url, "--broker", broker, *extra],
                            env={**os.environ, "MAPEMESH_LOG_LEVEL": "info"})

    def up() -> bool:
        assert proc.poll() is None, f"the bridge exited with {proc.returncode}"
        return "bridge" in json.loads((data / "endpoints.json").read_text() or "{}") \
            if (data / "endpoints.json").exists() else False

    wait_for(up, timeout=30, what="the bridge to start")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _sent_part(got: CloudEvent, sent: CloudEvent) -> dict:
    return {k: v for k, v in got.attributes.items() if k in sent.attributes}


def _logged(broker) -> dict[str, CloudEvent]:
    return {logged.event.id: logged.event for logged in read_all(broker.log_file)}


def test_events_come_in_by_both_modes_and_go_out_by_a_publish_trigger(mosquitto_url, tmp_path):
    copy_knative(tmp_path / "project")
    broker = start_broker(tmp_path / "data", tmp_path / "project" / "knative")
    bridge = _bridge(mosquitto_url, tmp_path / "data", broker.url + "/default/default", "--subscribe", "in/#",
                     "--publish-trigger", "io.example.cmd.=devices/{subject}/{sensorgroup}")
    v5, v311 = Publisher(mosquitto_url), Publisher(mosquitto_url, v5=False)
    try:
        sent = {"binary": _event(datacontenttype="application/octet-stream"),
                "structured": _event(datacontenttype="application/octet-stream"),
                "mqtt311": _event(datacontenttype="application/octet-stream")}
        v5.publish("in/a", sent["binary"])
        v5.publish("in/b", sent["structured"], binary=False)
        v311.publish("in/c", sent["mqtt311"])
        logged = wait_for(lambda: got if all(e.id in (got := _logged(broker)) for e in sent.values()) else None,
                          timeout=30, what="the three events in the broker's log")
        for mode, event in sent.items():  # what the broker adds (arrival time, TTL, traceparent) aside
            assert _sent_part(logged[event.id], event) == event.attributes, mode
            assert logged[event.id].data == event.data, mode
        # Out: the bridge's Trigger publishes matching events on MQTT, binary mode on MQTT 5.
        v5.subscribe("devices/#")
        wait_for(lambda: (tmp_path / "data" / "manifests" / "mapemesh-bridge-publish-0.yaml").exists(),
                 what="the bridge's publish Trigger")
        commands: dict[str, CloudEvent] = {}

        def post_and_listen() -> list | None:
            # The broker reads DATA_DIR/manifests every second: a command posted before it has the Trigger goes
            # nowhere, so one is posted per try until one is heard.
            command = CloudEvent({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/ops",
                                  "subject": "room-1", "type": "io.example.cmd.heat", "sensorgroup": "north",
                                  "datacontenttype": "application/json"}, b'{"to": 21}')
            commands[command.id] = command
            headers, body = to_binary(command)
            assert httpx.post(broker.ingress, headers=headers, content=body).status_code == 202
            return [m for m in v5.heard if m.topic == "devices/room-1/north"] or None

        heard = wait_for(post_and_listen, timeout=30, interval=0.25, what="a command on MQTT")
        message = heard[0]
        back = from_mqtt(message.payload, message.properties.ContentType, message.properties.UserProperty)
        command = commands[back.id]
        assert _sent_part(back, command) == command.attributes and back.data == command.data
        assert back.get("knativearrivaltime")  # the broker's own attributes travel on too
    finally:
        v5.close()
        v311.close()
        _stop(bridge)
        broker.stop(signal.SIGTERM)


def test_qos1_messages_published_while_the_broker_is_down_arrive_when_it_is_back(mosquitto_url, tmp_path):
    copy_knative(tmp_path / "project")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "data"
    data.mkdir()
    bridge = _bridge(mosquitto_url, data, f"http://127.0.0.1:{port}/default/default", "--subscribe", "down/#")
    publisher = Publisher(mosquitto_url)
    broker = None
    try:
        sent = [_event() for _ in range(25)]
        for event in sent:
            publisher.publish("down/x", event)
        time.sleep(1.0)  # the bridge keeps trying a broker that is not there (and acknowledges nothing)
        broker = start_broker(data, tmp_path / "project" / "knative", "--port", str(port))
        wait_for(lambda: all(e.id in _logged(broker) for e in sent), timeout=60,
                 what="every message published while the broker was down")
        # The dead letter: not a CloudEvent, logged and kept, never a crash.
        publisher.publish("down/y", raw=b"\x00not an event", content_type="application/octet-stream")
        refused = wait_for(lambda: [e for e in _logged(broker).values()
                                    if e.type == catalogue.MqttRefused.event_type] or None, timeout=30,
                           what="the dead letter")
        doc = json.loads(refused[0].data)
        assert doc["topic"] == "down/y" and "specversion" in doc["reason"]
        assert bridge.poll() is None
    finally:
        publisher.close()
        _stop(bridge)
        if broker is not None:
            broker.stop(signal.SIGTERM)


def test_an_mqtt_311_bridge_publishes_structured_mode(mosquitto_url, tmp_path):
    """MQTT 3.1.1 has no properties: out goes the JSON event format, binary data as data_base64, intact."""
    copy_knative(tmp_path / "project")
    broker = start_broker(tmp_path / "data", tmp_path / "project" / "knative")
    bridge = _bridge(mosquitto_url, tmp_path / "data", broker.url + "/default/default", "--mqtt-v311",
                     "--publish-trigger", "io.example.out.=out/{subject}")
    listener = Publisher(mosquitto_url, v5=False)
    try:
        listener.subscribe("out/#")
        wait_for(lambda: (tmp_path / "data" / "manifests" / "mapemesh-bridge-publish-0.yaml").exists(),
                 what="the bridge's publish Trigger")
        events: dict[str, CloudEvent] = {}

        def post_and_listen() -> list | None:
            # One event per try until the broker has read the Trigger (it reads DATA_DIR/manifests every second).
            event = _event(type="io.example.out.reading", datacontenttype="application/octet-stream")
            events[event.id] = event
            headers, body = to_binary(event)
            assert httpx.post(broker.ingress, headers=headers, content=body).status_code == 202
            return [m for m in listener.heard if m.topic == "out/room-1"] or None

        message = wait_for(post_and_listen, timeout=30, interval=0.25, what="an event on MQTT 3.1.1")[0]
        assert json.loads(message.payload)["data_base64"]  # structured: the payload is the JSON event
        back = from_mqtt(message.payload)
        event = events[back.id]
        assert _sent_part(back, event) == event.attributes and back.data == event.data
    finally:
        listener.close()
        _stop(bridge)
        broker.stop(signal.SIGTERM)
