"""The far-edge device simulator against a real mosquitto: NextGenGW's side of the far-edge contract
(/work/notes/faredge_contract.md), as a bridge sees it over MQTT 5."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mapemesh.bridge.simulator import STEPS, Device, tcp_no_delay

from .conftest import REPO, wait_for

pytestmark = pytest.mark.live  # every test here but the first two talks to a mosquitto process

PACKAGE = {"name": "blinky", "version": 1, "service": "AGFzbQEAAAA=", "dependencies": {"sdk_api": 1}}
SOFTWARE = "LWM2M_Software_Management"
LIST_REPLY = "Knob ID | Value\n-----\nTX_PWR | {}"
_NO_DATA = object()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer:
    """A test-side MQTT 5 client: requests with a Response Topic (and Correlation Data), and every message heard
    on its subscriptions (`announce` and `unregister` from the start), in order of arrival."""

    def __init__(self, url: str):
        host, _, port = url.removeprefix("mqtt://").partition(":")
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"test-peer-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.on_socket_open = tcp_no_delay
        self.client.on_message = self._message
        self.client.on_subscribe = lambda _c, _u, mid, _codes, _p: self._acked.add(mid)
        self.reply_topic = f"test/replies/{uuid.uuid4().hex}"
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._acked: set[int] = set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, what="the test client to connect")
        for topic in ("announce", "unregister", self.reply_topic):
            self.subscribe(topic)

    def _message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def subscribe(self, topic: str) -> None:
        """Subscribe (QoS 1, NoLocal: our own requests are not heard back) and wait for the SUBACK."""
        _, mid = self.client.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
        wait_for(lambda: mid in self._acked, 5, what=f"the subscription to {topic}")

    def mark(self) -> int:
        """How many messages were heard so far: `wait(..., after=mark)` looks only at later ones."""
        with self._lock:
            return len(self.messages)

    def wait(self, topic: str, predicate: Callable[[mqtt.MQTTMessage], object] = bool, after: int = 0,
             timeout: float = 15.0) -> mqtt.MQTTMessage:
        """The first message on `topic` (after message number `after`) that satisfies `predicate`."""
        def found() -> mqtt.MQTTMessage | None:
            with self._lock:
                return next((m for m in self.messages[after:] if m.topic == topic and predicate(m)), None)
        return wait_for(found, timeout, what=f"a message on {topic}")  # type: ignore[return-value]

    def wait_doc(self, topic: str, predicate: Callable[[dict[str, Any]], object] = bool, after: int = 0,
                 timeout: float = 15.0) -> dict[str, Any]:
        """`wait` for a JSON message; its document."""
        return json.loads(self.wait(topic, lambda m: predicate(json.loads(m.payload)), after, timeout).payload)

    def publish_request(self, topic: str, payload: bytes, correlation: bytes | None,
                        reply_topic: str | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic or self.reply_topic
        props.ContentType = "application/json"
        if correlation is not None:
            props.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, properties=props)

    def request(self, topic: str, operation: str, data: Any = _NO_DATA, *, raw: bytes | None = None,
                correlate: bool = True) -> dict[str, Any]:
        """Send a request; its answer (which must echo our Correlation Data, or come on a reply topic of its own
        with `correlate=False`, as FhP's kubelet asks)."""
        doc = {"operation": operation} if data is _NO_DATA else {"operation": operation, "data": data}
        payload = raw if raw is not None else json.dumps(doc).encode()
        if correlate:
            correlation: bytes | None = uuid.uuid4().bytes
            reply_topic = self.reply_topic
        else:
            correlation, reply_topic = None, f"test/replies/{uuid.uuid4().hex}"
            self.subscribe(reply_topic)
        after = self.mark()
        self.publish_request(topic, payload, correlation, reply_topic)
        answer = self.wait(reply_topic, lambda m: getattr(m.properties, "CorrelationData", None) == correlation,
                           after)
        assert answer.properties.ContentType == "application/json"
        with self._lock:
            replies = [m for m in self.messages[after:] if m.topic == reply_topic]
        assert len(replies) == 1, f"one answer per request, got {[m.payload for m in replies]}"
        return json.loads(answer.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peer(mosquitto_url: str) -> Iterator[Peer]:
    client = Peer(mosquitto_url)
    yield client
    client.close()


@pytest.fixture
def devices(mosquitto_url: str) -> Iterator[Callable[..., Device]]:
    """Start a device with a fresh name (options as Device's); each is stopped at the end of the test."""
    started: list[Device] = []

    def start(**options: Any) -> Device:
        device = Device(f"dev-{uuid.uuid4().hex[:8]}", mosquitto_url, **options)
        device.start()
        started.append(device)
        return device

    yield start
    for device in started:
        device.stop()


def steps(name: str, label: str) -> list[tuple[str, str, Any, int]]:
    """The four deploy steps (step, topic, data, success code)."""
    base = f"{name}/{SOFTWARE}"
    return [("create", base, {"label": label}, 65), ("package", f"{base}/{label}/Property/Package", PACKAGE, 68),
            ("install", f"{base}/{label}/Action/Install", _NO_DATA, 68),
            ("activate", f"{base}/{label}/Action/Activate", _NO_DATA, 68)]


def deploy(peer: Peer, name: str, label: str, until: str = "activate") -> None:
    for step, topic, data, success in steps(name, label)[:STEPS.index(until) + 1]:
        assert peer.request(topic, "POST", data)["response_code"] == success, step


def states(peer: Peer, name: str, label: str) -> dict[str, str]:
    answer = peer.request(f"{name}/{SOFTWARE}/{label}", "GET")
    assert answer["response_code"] == 69
    [row] = answer["sdfObject"][SOFTWARE]
    assert row["label"] == label
    return row["sdfProperty"]


def rssi(sdf: dict[str, Any]) -> int:
    [row] = sdf["sdfObject"]["Connectivity_Monitoring"]
    assert row["label"] == "0"
    value = row["sdfProperty"]["Radio_Signal_Strength"]
    assert isinstance(value, str)
    return int(value)


def shell(peer: Peer, name: str, command: str) -> str:
    """Send a knob shell command, then read its reply text."""
    tx, rx = (f"{name}/BinaryAppDataContainer/0/Property/Data/{i}" for i in (0, 1))
    assert peer.request(tx, "POST", command) == {"response_code": 68}
    answer = peer.request(rx, "GET")
    assert answer["response_code"] == 69
    [row] = answer["sdfObject"]["BinaryAppDataContainer"]
    return row["sdfProperty"]["Data"]


# -- without a broker ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "options", "says"), [
    (("dev", "http://127.0.0.1"), {}, "mqtt://"), (("dev/1", "mqtt://127.0.0.1"), {}, "name"),
    (("dev", "mqtt://127.0.0.1"), {"fail": "reboot"}, "create, package"),
    (("dev", "mqtt://127.0.0.1"), {"observe_period_s": 0}, "positive"),
])
def test_bad_options_are_refused(args: tuple[str, str], options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Device(*args, **options)


def test_no_broker_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError, match="cannot reach the MQTT broker"):
        Device("dev", f"mqtt://127.0.0.1:{_free_port()}").start(timeout_s=2)


# -- over MQTT ------------------------------------------------------------------------------------------------------

def test_announce_describes_the_device(peer: Peer, devices: Callable[..., Device]) -> None:
    dev = devices(memory_kib=512, caps=("tinymml", "temperature_sensor"), announce_every_s=0.1)
    first = peer.wait_doc("announce", lambda doc: dev.name in doc)
    assert list(first) == [dev.name]
    sdf = first[dev.name]["sdfObject"]
    assert sdf["Device"] == [{"label": "0", "sdfProperty": {"Memory_Total": "512", "Manufacturer": "mapemesh-simulator",
                                                            "Model_Number": "nrf52840-sim"}}]
    assert sdf["DevCapMgmt"] == [{"label": "0", "sdfProperty": {"Group": "0",
                                                                "Property": "tinymml;temperature_sensor"}}]
    assert sdf["Connectivity_Monitoring"][0]["sdfProperty"]["IP_Addresses"] == "10.10.12.1"
    assert -57 <= rssi(first[dev.name]) <= -53
    assert sdf[SOFTWARE] == []

    deploy(peer, dev.name, "4", until="package")
    later = peer.wait_doc("announce", lambda doc: dev.name in doc, peer.mark())
    assert later[dev.name]["sdfObject"][SOFTWARE] == [{"label": "4", "sdfProperty": {
        "PkgName": "blinky", "Update_State": "3", "Update_Result": "3", "Activation_State": "0"}}]


def test_the_deploy_steps_change_the_instance(peer: Peer, devices: Callable[..., Device]) -> None:
    dev = devices()
    base = f"{dev.name}/{SOFTWARE}"
    assert peer.request(base, "POST", {"label": "7"}) == {"response_code": 65}
    assert states(peer, dev.name, "7") == {"PkgName": "", "Update_State": "0", "Update_Result": "0",
                                           "Activation_State": "0"}
    assert peer.request(f"{base}/7/Property/Package", "POST", PACKAGE) == {"response_code": 68}
    assert states(peer, dev.name, "7") == {"PkgName": "blinky", "Update_State": "3", "Update_Result": "3",
                                           "Activation_State": "0"}
    # FhP's kubelet sends no Correlation Data: a reply topic of its own tells the answers apart.
    assert peer.request(f"{base}/7/Action/Install", "POST", correlate=False) == {"response_code": 68}
    assert states(peer, dev.name, "7") == {"PkgName": "blinky", "Update_State": "4", "Update_Result": "2",
                                           "Activation_State": "0"}
    assert peer.request(f"{base}/7/Action/Activate", "POST") == {"response_code": 68}
    assert states(peer, dev.name, "7")["Activation_State"] == "1"
    assert dev.instances()["7"].package == PACKAGE


def test_steps_out_of_order_and_bad_requests_are_refused(peer: Peer, devices: Callable[..., Device]) -> None:
    dev = devices()
    base = f"{dev.name}/{SOFTWARE}"

    def code(topic: str, operation: str = "POST", data: Any = _NO_DATA, **kw: Any) -> int:
        answer = peer.request(topic, operation, data, **kw)
        if answer["response_code"] >= 128:
            assert answer["message"], "an error answer says what was wrong"
        return answer["response_code"]

    assert code(base, data={"label": "1"}) == 65
    assert code(f"{base}/1/Action/Install") == 133
    assert code(f"{base}/1/Action/Activate") == 133
    assert code(f"{base}/1/Property/Package", data={"name": "no-service"}) == 128
    assert code(f"{base}/1/Property/Package", data="blinky") == 128
    assert states(peer, dev.name, "1")["Update_State"] == "0"
    assert code(f"{base}/1/Property/Package", data=PACKAGE) == 68
    assert code(f"{base}/1/Action/Activate") == 133
    assert code(f"{base}/1/Action/Install") == 68
    assert code(f"{base}/1/Action/Install") == 133
    assert code(f"{base}/1/Property/Package", data=PACKAGE) == 133
    assert code(f"{base}/1/Action/Activate", "GET") == 133
    assert code(base, data={"label": "1"}) == 128  # exists
    assert code(base, data={}) == 128
    assert code(base, "GET") == 133
    assert code(f"{base}/9/Property/Package", data=PACKAGE) == 132
    assert code(f"{base}/9/Action/Install") == 132
    assert code(f"{dev.name}/Temperature/0", "GET") == 132
    assert code(f"{dev.name}/Software_Package_Monitoring", "POST") == 133
    assert code(f"{dev.name}/{SOFTWARE}", raw=b"not json") == 128
    assert code(f"{dev.name}/{SOFTWARE}", raw=b'{"data": {"label": "2"}}') == 128
    assert set(dev.instances()) == {"1"}


@pytest.mark.parametrize("failing", STEPS)
def test_a_failing_step_answers_160(peer: Peer, devices: Callable[..., Device], failing: str) -> None:
    dev = devices(fail=failing)
    codes = [peer.request(topic, "POST", data)["response_code"] for _, topic, data, _ in
             steps(dev.name, "3")[:STEPS.index(failing) + 1]]
    assert codes == [*(success for _, _, _, success in steps(dev.name, "3")[:STEPS.index(failing)]), 160]
    if failing == "create":
        assert peer.request(f"{dev.name}/{SOFTWARE}/3", "GET")["response_code"] == 132
    else:
        expected = {"package": ("0", "0"), "install": ("3", "0"), "activate": ("4", "0")}[failing]
        now = states(peer, dev.name, "3")
        assert (now["Update_State"], now["Activation_State"]) == expected
    rows = peer.request(f"{dev.name}/Software_Package_Monitoring", "GET")["sdfObject"]["Software_Package_Monitoring"]
    assert rows[0]["sdfProperty"]["Error"] == "1"


def test_delete_removes_an_instance(peer: Peer, devices: Callable[..., Device]) -> None:
    dev = devices()
    deploy(peer, dev.name, "5")
    assert peer.request(f"{dev.name}/{SOFTWARE}/5", "DELETE") == {"response_code": 66}
    assert peer.request(f"{dev.name}/{SOFTWARE}/5", "DELETE")["response_code"] == 132
    assert peer.request(f"{dev.name}/{SOFTWARE}/5", "GET")["response_code"] == 132
    assert dev.instances() == {}


def test_metrics_have_an_entry_per_active_instance(peer: Peer, devices: Callable[..., Device]) -> None:
    dev = devices()
    deploy(peer, dev.name, "1")
    deploy(peer, dev.name, "2", until="install")
    deploy(peer, dev.name, "3")

    def metrics() -> list[dict[str, Any]]:
        answer = peer.request(f"{dev.name}/Software_Package_Monitoring", "GET")
        assert answer["response_code"] == 69
        return answer["sdfObject"]["Software_Package_Monitoring"]

    rows = metrics()
    assert [(r["label"], r["sdfProperty"]["Software_Package"]) for r in rows] == [
        ("0", "Device/0"), ("1", "LWM2M Software Management/1"), ("2", "LWM2M Software Management/3")]
    for row in rows:
        props = row["sdfProperty"]
        assert all(isinstance(v, str) for v in props.values())
        assert 0 < float(props["CPU_Usage"]) <= 100
        assert 0 < int(props["Memory_Usage"]) <= 256 * 1024
        assert int(props["Uptime"]) >= 0 and props["Error"] == "0"
    device, *workloads = (r["sdfProperty"] for r in rows)
    assert int(device["Memory_Usage"]) > sum(int(w["Memory_Usage"]) for w in workloads)
    first = int(workloads[0]["Uptime"])
    wait_for(lambda: int(metrics()[1]["sdfProperty"]["Uptime"]) > first, 5, what="the workload's uptime to grow")


def test_the_radio_signal_is_observed_and_follows_tx_power(peer: Peer, devices: Callable[..., Device]) -> None:
    period = 0.05
    dev = devices(observe_period_s=period)
    topic = f"{dev.name}/Connectivity_Monitoring/0"
    peer.subscribe(topic)
    answer = peer.request(topic, "START_OBSERVE")
    assert answer["response_code"] == 69
    assert -57 <= rssi(answer) <= -53 and -57 <= rssi(answer[dev.name]) <= -53

    notification = peer.wait_doc(topic)
    assert "operation" not in notification and list(notification) == [dev.name]
    assert -57 <= rssi(notification[dev.name]) <= -53

    assert shell(peer, dev.name, "mlsysops knobs set TX_PWR LOW") == "TX_PWR | LOW"
    after = peer.mark()
    low = peer.wait_doc(topic, after=after)
    assert -77 <= rssi(low[dev.name]) <= -73

    assert peer.request(topic, "STOP_OBSERVE")["response_code"] == 69
    stopped = peer.mark()
    time.sleep(4 * period)  # that nothing comes takes a wait: 4 periods
    assert [m for m in peer.messages[stopped:] if m.topic == topic] == []
    assert not dev.observed


def test_the_knob_shell(peer: Peer, devices: Callable[..., Device]) -> None:
    dev = devices()
    assert shell(peer, dev.name, "mlsysops knobs list") == LIST_REPLY.format("HIGH")
    assert shell(peer, dev.name, "mlsysops knobs set TX_PWR LOUD").startswith("error: TX_PWR takes LOW, MEDIUM")
    assert shell(peer, dev.name, "mlsysops knobs set FAN LOW").startswith("error: unknown knob FAN")
    assert shell(peer, dev.name, "reboot").startswith("error: unknown command")
    assert shell(peer, dev.name, "mlsysops knobs get TX_PWR") == LIST_REPLY.format("HIGH")
    assert shell(peer, dev.name, "mlsysops knobs set TX_PWR MEDIUM") == "TX_PWR | MEDIUM"
    assert shell(peer, dev.name, "mlsysops knobs get TX_PWR") == LIST_REPLY.format("MEDIUM")
    assert dev.knobs() == {"TX_PWR": "MEDIUM"}
    tx = f"{dev.name}/BinaryAppDataContainer/0/Property/Data/0"
    assert peer.request(tx, "POST", ["mlsysops", "knobs", "list"])["response_code"] == 128
    assert peer.request(tx, "GET")["response_code"] == 133


def test_stop_unregisters(peer: Peer, mosquitto_url: str) -> None:
    dev = Device(f"dev-{uuid.uuid4().hex[:8]}", mosquitto_url)
    dev.start()
    peer.wait_doc("announce", lambda doc: dev.name in doc)
    dev.stop()
    assert peer.wait("unregister", lambda m: m.payload == dev.name.encode()).payload == dev.name.encode()


def test_a_dropped_connection_unregisters_by_the_will_and_reannounces(peer: Peer,
                                                                       devices: Callable[..., Device]) -> None:
    dev = devices()
    peer.wait_doc("announce", lambda doc: dev.name in doc)
    after = peer.mark()
    # The connection goes without a DISCONNECT, as a crashed gateway's would: the broker publishes the Will.
    dev._client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    peer.wait("unregister", lambda m: m.payload == dev.name.encode(), after)
    peer.wait_doc("announce", lambda doc: dev.name in doc, peer.mark(), timeout=15)
    assert peer.request(f"{dev.name}/Software_Package_Monitoring", "GET")["response_code"] == 69


def _simulate(name: str, url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mapemesh", "bridge", "simulate-device", name, "--mqtt", url,
                             *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_the_cli_runs_a_device_until_sigterm(peer: Peer, mosquitto_url: str) -> None:
    name = f"dev-{uuid.uuid4().hex[:8]}"
    proc = _simulate(name, mosquitto_url, "--memory-kib", "64", "--caps", "tinymml;temperature_sensor",
                     "--fail", "install")
    try:
        sdf = peer.wait_doc("announce", lambda doc: name in doc, timeout=30)[name]["sdfObject"]
        assert sdf["Device"][0]["sdfProperty"]["Memory_Total"] == "64"
        assert sdf["DevCapMgmt"][0]["sdfProperty"]["Property"] == "tinymml;temperature_sensor"
        codes = [peer.request(topic, "POST", data)["response_code"] for _, topic, data, _ in steps(name, "1")[:3]]
        assert codes == [65, 68, 160]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read().decode()  # type: ignore[union-attr]
        peer.wait("unregister", lambda m: m.payload == name.encode())
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_cli_device_is_unregistered_by_its_will(peer: Peer, mosquitto_url: str) -> None:
    name = f"dev-{uuid.uuid4().hex[:8]}"
    proc = _simulate(name, mosquitto_url)
    try:
        peer.wait_doc("announce", lambda doc: name in doc, timeout=30)
        after = peer.mark()
        proc.kill()
        peer.wait("unregister", lambda m: m.payload == name.encode(), after)
    finally:
        proc.kill()
        proc.wait()


def test_the_cli_says_when_the_broker_is_not_there() -> None:
    proc = subprocess.run([sys.executable, "-m", "mapemesh", "bridge", "simulate-device", "dev", "--mqtt",
                           f"mqtt://127.0.0.1:{_free_port()}"], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"cannot reach the MQTT broker" in proc.stderr
