"""A far-edge device as NextGenGW presents it over MQTT: the gateway side of the far-edge contract.

Requests are MQTT 5 PUBLISHes to `NAME/...` with a JSON payload `{"operation": OP[, "data": DATA]}` and a Response
Topic; the answer goes to that topic once (QoS 1, Content Type `application/json`, the Correlation Data echoed) as
`{"response_code": CODE, ...body}`. Error answers carry a `message` saying what was wrong.

| topic (after `NAME/`)                      | operation         | answer                                            |
|--------------------------------------------|-------------------|---------------------------------------------------|
| `LWM2M_Software_Management`                | POST `{label: L}` | 65; 128 no label or L exists; 160 `fail="create"` |
| `LWM2M_Software_Management/L`              | GET               | 69 `{"sdfObject": {LWM2M_Software_Management:     |
|                                            |                   | [{label, sdfProperty: PkgName, Update_State,      |
|                                            |                   | Update_Result, Activation_State}]}}` (strings)    |
|                                            | DELETE            | 66                                                |
| `.../L/Property/Package`                   | POST package      | 68, Update_State 3; 128 not `{name: str, service: |
|                                            |                   | str, ...}` (state kept); 133 once installed (4);  |
|                                            |                   | 160 `fail="package"` (state kept)                 |
| `.../L/Action/Install`                     | POST              | 68, Update_State 4; 133 unless 3; 160             |
| `.../L/Action/Activate`                    | POST              | 68, Activation_State 1; 133 unless 4; 160         |
| `Software_Package_Monitoring`              | GET               | 69, `Device/0` and one entry per active instance  |
| `Connectivity_Monitoring/0`                | START_OBSERVE,    | 69 with the radio signal, under `sdfObject` and   |
|                                            | STOP_OBSERVE, GET | under `{NAME: {sdfObject}}` as notifications; GET |
|                                            |                   | adds `IP_Addresses`                               |
| `BinaryAppDataContainer/0/Property/Data/0` | POST "command"    | 68 (the shell's reply kept); 128 not a string     |
| `BinaryAppDataContainer/0/Property/Data/1` | GET               | 69 `{"sdfObject": {BinaryAppDataContainer: [...   |
|                                            |                   | {Data: reply}]}}`                                 |
| `L...` with no such instance               | any               | 132                                               |
| any other topic                            | any               | 132                                               |

A known topic answers 133 to other operations; a payload that is not such a JSON object, 128; a message without a
Response Topic is ignored. While observed, `{NAME: {"sdfObject": {"Connectivity_Monitoring": [{"label": "0",
"sdfProperty": {"Radio_Signal_Strength": "-55"}}]}}}` goes to `NAME/Connectivity_Monitoring/0` every
`observe_period_s`; the signal follows TX_PWR (HIGH -55 dBm, MEDIUM -65, LOW -75, +-2 of noise). The device
announces itself on `announce` at every (re)connection and every `announce_every_s`, publishes its name on
`unregister` when stopped, and leaves the same message as its MQTT Will.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mapemesh.bridge.client import parse_url

log = logging.getLogger(__name__)

CREATED, DELETED, CHANGED, CONTENT = 65, 66, 68, 69
BAD_REQUEST, NOT_FOUND, METHOD_NOT_ALLOWED, INTERNAL_ERROR = 128, 132, 133, 160
STEPS = ("create", "package", "install", "activate")
"""The deploy steps `fail=` can make answer 160."""
DELIVERED, INSTALLED = 3, 4
RESULT_INSTALLED, RESULT_DELIVERED = 2, 3
"""OMA object 9 Update_Result: software installed; downloaded and integrity verified."""
SOFTWARE = "LWM2M_Software_Management"
RADIO = "Connectivity_Monitoring"
SHELL = "BinaryAppDataContainer"
KNOBS = {"TX_PWR": ("LOW", "MEDIUM", "HIGH")}
RSSI_DBM = {"HIGH": -55, "MEDIUM": -65, "LOW": -75}
IP_ADDRESS = "10.10.12.1"
KEEPALIVE_S = 15
"""How soon the broker notices a vanished device and publishes its Will (1.5 times this)."""


class RequestError(Exception):
    """A request the device refuses: its CoAP code and why."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Instance:
    """One LWM2M Software Management instance (a workload slot)."""

    label: str
    package: dict[str, Any] | None = None
    update_state: int = 0
    update_result: int = 0
    activation: int = 0
    activated_at: float | None = None
    errors: int = 0

    def sdf(self) -> dict[str, Any]:
        """The instance as a GET or the announcement shows it."""
        return {"label": self.label, "sdfProperty": {
            "PkgName": str((self.package or {}).get("name", "")), "Update_State": str(self.update_state),
            "Update_Result": str(self.update_result), "Activation_State": str(self.activation)}}


def tcp_no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """paho `on_socket_open` callback: Nagle off, so a request/response takes ~1 ms, not ~40-90 ms (mosquitto needs
    `set_tcp_nodelay true` as well)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Device:
    """A simulated far-edge device behind NextGenGW, on an MQTT broker; thread-safe."""

    def __init__(self, name: str, mqtt_url: str, *, memory_kib: int = 256, caps: tuple[str, ...] = ("tinymml",),
                 fail: str | None = None, observe_period_s: float = 1.0, announce_every_s: float = 30.0):
        if not name or any(c in name for c in "/+#"):
            raise ValueError(f"device name {name!r}: must be non-empty, without '/', '+' or '#'")
        if fail is not None and fail not in STEPS:
            raise ValueError(f"fail={fail!r}: must be one of {', '.join(STEPS)}")
        if memory_kib <= 0 or observe_period_s <= 0 or announce_every_s <= 0:
            raise ValueError("memory_kib, observe_period_s and announce_every_s must be positive")
        self.host, self.port = parse_url(mqtt_url)
        self.name, self.mqtt_url, self.memory_kib, self.caps, self.fail = name, mqtt_url, memory_kib, tuple(caps), fail
        self.observe_period_s, self.announce_every_s = observe_period_s, announce_every_s
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._knobs = {knob: "HIGH" for knob in KNOBS}
        self._reply = ""
        self._observed = False
        self._errors = 0
        self._random = random.Random(zlib.crc32(name.encode()))
        self._started_at = time.monotonic()
        self._client: mqtt.Client | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connack = threading.Event()
        self._subscribed = threading.Event()
        self._refusal: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect, subscribe to `NAME/#` (NoLocal) and announce; ConnectionError when the broker is not there."""
        if self._client is not None:
            raise RuntimeError(f"device {self.name} is started already")
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"nextgengw-{self.name}",
                             protocol=mqtt.MQTTv5)
        client.on_socket_open = tcp_no_delay
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.will_set("unregister", self.name.encode(), qos=1)
        client.reconnect_delay_set(1, 10)
        self._connack.clear()
        self._subscribed.clear()
        self._stopping.clear()
        self._refusal = None
        self._started_at = time.monotonic()
        try:
            client.connect(self.host, self.port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            raise ConnectionError(f"device {self.name}: cannot reach the MQTT broker at {self.mqtt_url}: {exc}") \
                from None
        client.loop_start()
        # started: connected and subscribed (the broker has taken the subscription, so a request sent from
        # any connection from now on reaches this device)
        if not self._connack.wait(timeout_s) or self._refusal is not None or not self._subscribed.wait(timeout_s):
            client.disconnect()
            client.loop_stop()
            raise ConnectionError(f"device {self.name}: the MQTT broker at {self.mqtt_url} "
                                  + (f"refused the connection: {self._refusal}" if self._refusal
                                     else f"did not accept the connection within {timeout_s:g}s"))
        self._client = client
        self._ticker = threading.Thread(target=self._tick, args=(client,), name=f"faredge-{self.name}", daemon=True)
        self._ticker.start()
        log.info("far-edge device %s on %s (%s KiB, caps %s)", self.name, self.mqtt_url, self.memory_kib,
                 ";".join(self.caps))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop observing and announcing, publish `unregister`, disconnect (so the Will is not sent)."""
        client, ticker, self._client, self._ticker = self._client, self._ticker, None, None
        if client is None:
            return
        self._stopping.set()
        if ticker is not None:
            ticker.join()
        with self._lock:
            self._observed = False
        info = client.publish("unregister", self.name.encode(), qos=1)
        try:
            info.wait_for_publish(timeout_s)
            problem = None if info.is_published() else f"no PUBACK within {timeout_s:g}s"
        except (RuntimeError, ValueError) as exc:
            problem = str(exc)
        if problem is not None:
            log.warning("device %s: unregister not sent (%s); the broker sends its Will instead", self.name, problem)
        client.disconnect()
        client.loop_stop()
        log.info("far-edge device %s stopped", self.name)

    def __enter__(self) -> Device:
        self.start()
        return self

    def __exit__(self, _type: type[BaseException] | None, _exc: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.stop()

    # -- state, for tests and logs ------------------------------------------------------------------------------------

    def instances(self) -> dict[str, Instance]:
        """A copy of the Software Management instances by label."""
        with self._lock:
            return copy.deepcopy(self._instances)

    def knobs(self) -> dict[str, str]:
        """The knob table (knob ID -> value)."""
        with self._lock:
            return dict(self._knobs)

    @property
    def observed(self) -> bool:
        """Whether the radio signal is being notified."""
        with self._lock:
            return self._observed

    def announcement(self) -> dict[str, Any]:
        """The payload published on `announce`."""
        with self._lock:
            return {self.name: {"sdfObject": {
                "Device": [{"label": "0", "sdfProperty": {"Memory_Total": str(self.memory_kib),
                                                          "Manufacturer": "mapemesh-simulator",
                                                          "Model_Number": "nrf52840-sim"}}],
                "DevCapMgmt": [{"label": "0", "sdfProperty": {"Group": "0", "Property": ";".join(self.caps)}}],
                RADIO: [{"label": "0", "sdfProperty": {"IP_Addresses": IP_ADDRESS,
                                                       "Radio_Signal_Strength": str(self._rssi())}}],
                SOFTWARE: [instance.sdf() for instance in self._instances.values()]}}}

    # -- requests -----------------------------------------------------------------------------------------------------

    def answer(self, path: str, operation: str, data: Any = None) -> tuple[int, dict[str, Any]]:
        """(response code, body) for a request to `NAME/path`; the state changes as the request says."""
        try:
            with self._lock:
                return self._route(path.split("/"), operation, data)
        except RequestError as exc:
            return exc.code, {"message": exc.message}

    def _route(self, parts: list[str], op: str, data: Any) -> tuple[int, dict[str, Any]]:
        match parts:
            case ["LWM2M_Software_Management"]:
                _allow(op, "POST")
                return self._create(data)
            case ["LWM2M_Software_Management", label]:
                instance = self._instance(label)
                if _allow(op, "GET", "DELETE") == "GET":
                    return CONTENT, {"sdfObject": {SOFTWARE: [instance.sdf()]}}
                del self._instances[label]
                return DELETED, {}
            case ["LWM2M_Software_Management", label, "Property", "Package"]:
                return self._package(self._instance(label), op, data)
            case ["LWM2M_Software_Management", label, "Action", "Install" | "Activate" as action]:
                return self._act(self._instance(label), op, action)
            case ["Software_Package_Monitoring"]:
                _allow(op, "GET")
                return CONTENT, {"sdfObject": {"Software_Package_Monitoring": self._metrics()}}
            case ["Connectivity_Monitoring", "0"]:
                if _allow(op, "GET", "START_OBSERVE", "STOP_OBSERVE") != "GET":
                    self._observed = op == "START_OBSERVE"
                radio = self._radio(with_address=op == "GET")
                return CONTENT, {**radio, self.name: radio}
            case ["BinaryAppDataContainer", "0", "Property", "Data", "0"]:
                _allow(op, "POST")
                if not isinstance(data, str):
                    raise RequestError(BAD_REQUEST, 'the shell takes a command as a JSON string, e.g. '
                                                    '"mlsysops knobs list"')
                self._reply = self._shell(data)
                return CHANGED, {}
            case ["BinaryAppDataContainer", "0", "Property", "Data", "1"]:
                _allow(op, "GET")
                return CONTENT, {"sdfObject": {SHELL: [{"label": "0", "sdfProperty": {"Data": self._reply}}]}}
        raise RequestError(NOT_FOUND, f"{self.name} has no topic {'/'.join(parts)!r}")

    def _instance(self, label: str) -> Instance:
        if label not in self._instances:
            raise RequestError(NOT_FOUND, f"{self.name} has no {SOFTWARE} instance {label!r}")
        return self._instances[label]

    def _inject(self, step: str, instance: Instance | None = None) -> None:
        if self.fail == step:
            self._errors += 1
            if instance is not None:
                instance.errors += 1
            raise RequestError(INTERNAL_ERROR, f"step {step} failed (failure injected with fail={step!r})")

    def _create(self, data: Any) -> tuple[int, dict[str, Any]]:
        label = data.get("label") if isinstance(data, dict) else None
        if not isinstance(label, str) or not label or any(c in label for c in "/+#"):
            raise RequestError(BAD_REQUEST, 'create takes data {"label": "<instance>"} (a string without /, +, #)')
        if label in self._instances:
            raise RequestError(BAD_REQUEST, f"{SOFTWARE} instance {label!r} exists already")
        self._inject("create")
        self._instances[label] = Instance(label)
        return CREATED, {}

    def _package(self, instance: Instance, op: str, data: Any) -> tuple[int, dict[str, Any]]:
        _allow(op, "POST")
        if instance.update_state == INSTALLED:
            raise RequestError(METHOD_NOT_ALLOWED, f"instance {instance.label!r} is installed: delete it first")
        if not (isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("service"), str)):
            raise RequestError(BAD_REQUEST, 'a package is a JSON object with at least "name" and "service" (strings)')
        self._inject("package", instance)
        instance.package, instance.update_state, instance.update_result = dict(data), DELIVERED, RESULT_DELIVERED
        return CHANGED, {}

    def _act(self, instance: Instance, op: str, action: str) -> tuple[int, dict[str, Any]]:
        _allow(op, "POST")
        needed = DELIVERED if action == "Install" else INSTALLED
        if instance.update_state != needed:
            raise RequestError(METHOD_NOT_ALLOWED, f"{action} needs Update_State {needed}; instance "
                                                   f"{instance.label!r} is at {instance.update_state}")
        self._inject(action.lower(), instance)
        if action == "Install":
            instance.update_state, instance.update_result = INSTALLED, RESULT_INSTALLED
        elif not instance.activation:
            instance.activation, instance.activated_at = 1, time.monotonic()
        return CHANGED, {}

    def _metrics(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = []
        for instance in self._instances.values():
            if instance.activation and instance.activated_at is not None:
                cpu = 2 + zlib.crc32(instance.label.encode()) % 15 + self._random.uniform(-0.5, 0.5)
                memory = 4096 + len(str((instance.package or {}).get("service", ""))) * 3 // 4
                rows.append((f"LWM2M Software Management/{instance.label}", cpu, memory,
                             now - instance.activated_at, instance.errors))
        device = ("Device/0", min(100.0, 1.5 + sum(r[1] for r in rows)), 16384 + sum(r[2] for r in rows),
                  now - self._started_at, self._errors)
        return [{"label": str(i), "sdfProperty": {"Software_Package": package, "CPU_Usage": f"{cpu:.1f}",
                                                  "Memory_Usage": str(memory), "Uptime": str(int(uptime * 1000)),
                                                  "Error": str(errors)}}
                for i, (package, cpu, memory, uptime, errors) in enumerate([device, *rows])]

    def _rssi(self) -> int:
        return RSSI_DBM[self._knobs["TX_PWR"]] + self._random.randint(-2, 2)

    def _radio(self, with_address: bool = False) -> dict[str, Any]:
        props = {"IP_Addresses": IP_ADDRESS} if with_address else {}
        return {"sdfObject": {RADIO: [{"label": "0", "sdfProperty": {**props,
                                                                      "Radio_Signal_Strength": str(self._rssi())}}]}}

    def _shell(self, command: str) -> str:
        """The reply text of a knob shell command (seed 6.3.1.2)."""
        match command.split():
            case ["mlsysops", "knobs", "list"]:
                return _table(self._knobs)
            case ["mlsysops", "knobs", "get", knob]:
                return _table({knob: self._knobs[knob]}) if knob in KNOBS else _unknown(knob)
            case ["mlsysops", "knobs", "set", knob, value]:
                if knob not in KNOBS:
                    return _unknown(knob)
                if value not in KNOBS[knob]:
                    return f"error: {knob} takes {', '.join(KNOBS[knob])}, not {value}"
                self._knobs[knob] = value
                log.info("device %s: %s set to %s", self.name, knob, value)
                return f"{knob} | {value}"
        return (f"error: unknown command {command!r}; use `mlsysops knobs list`, `mlsysops knobs get KNOB` or "
                f"`mlsysops knobs set KNOB VALUE`")

    # -- MQTT (paho's thread and the ticker) --------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
            log.warning("device %s: the broker refused the connection: %s", self.name, reason)
        else:
            # Subscribed before announcing: whoever hears the announcement can send requests at once.
            client.subscribe(f"{self.name}/#", options=SubscribeOptions(qos=1, noLocal=True))
            self._publish(client, "announce", self.announcement())
        self._connack.set()

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, _reasons: Any, _props: Any) -> None:
        self._subscribed.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not self._stopping.is_set():
            log.warning("device %s: disconnected from %s (%s); reconnecting", self.name, self.mqtt_url, reason)

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None)
        if not response_topic:
            log.info("device %s: ignored a message on %s without a Response Topic", self.name, message.topic)
            return
        try:
            request = json.loads(message.payload)
        except ValueError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("operation"), str):
            code, body = BAD_REQUEST, {"message": 'a request is a JSON object {"operation": OP[, "data": DATA]}'}
        else:
            code, body = self.answer(message.topic.partition("/")[2], request["operation"], request.get("data"))
        log.debug("device %s: %s %s -> %s", self.name, message.topic, (request or {}).get("operation"), code)
        self._publish(client, response_topic, {"response_code": code, **body},
                      getattr(props, "CorrelationData", None))

    def _publish(self, client: mqtt.Client, topic: str, doc: dict[str, Any], correlation: bytes | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        if correlation is not None:
            props.CorrelationData = correlation
        client.publish(topic, json.dumps(doc), qos=1, properties=props)

    def _tick(self, client: mqtt.Client) -> None:
        """Radio notifications every observe_period_s while observed, the announcement every announce_every_s."""
        now = time.monotonic()
        next_notify, next_announce = now + self.observe_period_s, now + self.announce_every_s
        while not self._stopping.wait(max(0.0, min(next_notify, next_announce) - time.monotonic())):
            now = time.monotonic()
            if now >= next_notify:
                next_notify = now + self.observe_period_s
                with self._lock:
                    # Published under the lock: no notification can follow the answer to STOP_OBSERVE.
                    if self._observed and client.is_connected():
                        self._publish(client, f"{self.name}/{RADIO}/0", {self.name: self._radio()})
            if now >= next_announce:
                next_announce = now + self.announce_every_s
                if client.is_connected():
                    self._publish(client, "announce", self.announcement())


def _allow(op: str, *allowed: str) -> str:
    if op not in allowed:
        raise RequestError(METHOD_NOT_ALLOWED, f"operation {op!r} not allowed here (only {', '.join(allowed)})")
    return op


def _table(knobs: dict[str, str]) -> str:
    return "Knob ID | Value\n-----\n" + "\n".join(f"{knob} | {value}" for knob, value in knobs.items())


def _unknown(knob: str) -> str:
    return f"error: unknown knob {knob}; known: {', '.join(KNOBS)}"
