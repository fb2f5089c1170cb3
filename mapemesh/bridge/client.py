"""An MQTT client for asyncio code: paho-mqtt's network loop in its thread, messages handed to the event loop.

| call                                   | does                                                                  |
|----------------------------------------|-----------------------------------------------------------------------|
| `MqttClient(url, client_id, ...)`      | `mqtt://host[:port]` (1883); MQTT 5 (or 3.1.1 with `v5=False`); a     |
|                                        | persistent session (`clean_start` off, 1 h expiry), so QoS 1 messages  |
|                                        | not acknowledged come again after a reconnect; TCP_NODELAY            |
| `await start()` / `await stop()`       | connect (waits for CONNACK) / disconnect                              |
| `await subscribe(topic, no_local=)`    | QoS 1 (again after every reconnect)                                   |
| `await publish(topic, payload, ...)`   | QoS 1, waits for PUBACK; Content Type, User Properties, Response Topic |
|                                        | and Correlation Data (MQTT 5)                                         |
| `await request(topic, doc)`            | a JSON request with a Response Topic of this client's own and a       |
|                                        | Correlation Data; the JSON answer, or `TimeoutError`                  |
| `ack(message)`                         | with `manual_ack=True`: the PUBACK for a QoS 1 message, sent only     |
|                                        | when the caller has done what receiving it means                      |

`on_message(message)` is called on the event loop (never in paho's thread).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)
SESSION_EXPIRY_S = 3600
Handler = Callable[[mqtt.MQTTMessage], "Awaitable[None] | None"]


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of `mqtt://host[:port]`; ValueError for anything else."""
    parsed = urlparse(url)
    if parsed.scheme != "mqtt" or not parsed.hostname:
        raise ValueError(f"MQTT URL {url!r}: use mqtt://HOST[:PORT]")
    return parsed.hostname, parsed.port or 1883


class MqttClient:
    """One MQTT connection, usable from asyncio."""

    def __init__(self, url: str, client_id: str, *, v5: bool = True, manual_ack: bool = False,
                 on_message: Handler | None = None, will: tuple[str, bytes] | None = None):
        self.host, self.port = parse_url(url)
        self.url, self.client_id, self.v5 = url, client_id, v5
        self.on_message = on_message
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, manual_ack=manual_ack,
                                  **({} if v5 else {"clean_session": False}))
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.on_disconnect = self._disconnected
        self.reply_topic = f"mapemesh/replies/{client_id}"
        self._subscriptions: dict[str, bool] = {}
        self._waiting: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._handling: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected_once = threading.Event()
        self.connected = False

    # -- paho's thread ---------------------------------------------------------------------------------------------

    def _connected(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT %s refused the connection: %s", self.url, reason)
            return
        self.connected = True
        for topic, no_local in list(self._subscriptions.items()):
            self._subscribe_now(topic, no_local)
        self._connected_once.set()

    def _disconnected(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        self.connected = False
        if self._loop is not None and not self._loop.is_closed():
            log.info("MQTT %s: disconnected (%s); reconnecting", self.url, reason)

    def _message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._dispatch, message)

    # -- the event loop -------------------------------------------------------------------------------------------

    def _dispatch(self, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.reply_topic:
            correlation = getattr(message.properties, "CorrelationData", None) if message.properties else None
            waiting = self._waiting.pop(bytes(correlation or b""), None)
            if waiting is not None and not waiting.done():
                try:
                    waiting.set_result(json.loads(message.payload or b"null"))
                except ValueError as exc:
                    waiting.set_exception(exc)
            self.ack(message)
            return
        if self.on_message is None:
            self.ack(message)
            return
        result = self.on_message(message)
        if asyncio.iscoroutine(result):
            task = asyncio.ensure_future(result)
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)

    async def start(self, timeout_s: float = 10.0) -> None:
        """Connect (and keep reconnecting in paho's thread); return once connected."""
        self._loop = asyncio.get_running_loop()
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        kwargs: dict[str, Any] = {"clean_start": False, "properties": properties} if self.v5 else {}
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.connect_async(self.host, self.port, keepalive=30, **kwargs)
        self.client.loop_start()
        if self.v5:
            await self.subscribe(self.reply_topic, no_local=True)
        if not await asyncio.to_thread(self._connected_once.wait, timeout_s):
            await self.stop()
            raise ConnectionError(f"no MQTT broker answers at {self.url}")

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def _subscribe_now(self, topic: str, no_local: bool) -> None:
        if self.v5:
            self.client.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=no_local))
        else:
            self.client.subscribe(topic, qos=1)

    async def subscribe(self, topic: str, *, no_local: bool = False) -> None:
        self._subscriptions[topic] = no_local
        if self.connected:
            self._subscribe_now(topic, no_local)

    async def publish(self, topic: str, payload: bytes, *, content_type: str | None = None,
                      user_properties: list[tuple[str, str]] | None = None, response_topic: str | None = None,
                      correlation: bytes | None = None, timeout_s: float = 10.0) -> None:
        """Publish with QoS 1 and wait for the broker's PUBACK (TimeoutError otherwise)."""
        properties = None
        if self.v5 and (content_type or user_properties or response_topic or correlation):
            properties = Properties(PacketTypes.PUBLISH)
            if content_type:
                properties.ContentType = content_type
            if user_properties:
                properties.UserProperty = user_properties
            if response_topic:
                properties.ResponseTopic = response_topic
            if correlation:
                properties.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        await asyncio.to_thread(info.wait_for_publish, timeout_s)
        if not info.is_published():
            raise TimeoutError(f"MQTT {self.url}: no PUBACK for {topic} within {timeout_s:g}s")

    async def request(self, topic: str, doc: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """Send a JSON request with this client's Response Topic; its JSON answer."""
        correlation = uuid.uuid4().bytes
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        try:
            await self.publish(topic, json.dumps(doc).encode(), content_type="application/json",
                               response_topic=self.reply_topic, correlation=correlation)
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._waiting.pop(correlation, None)

    def ack(self, message: mqtt.MQTTMessage) -> None:
        """The PUBACK for a QoS 1 message (with manual acknowledgement); nothing for QoS 0."""
        if message.qos > 0 and self.client._manual_ack:
            self.client.ack(message.mid, message.qos)


def properties_of(message: mqtt.MQTTMessage) -> tuple[str | None, list[tuple[str, str]]]:
    """(Content Type, User Properties) of a message (none for MQTT 3.1.1)."""
    props = message.properties
    if props is None:
        return None, []
    return getattr(props, "ContentType", None), list(getattr(props, "UserProperty", []) or [])
