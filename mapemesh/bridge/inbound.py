"""MQTT messages into the mesh: each CloudEvent a message carries is posted to the broker, and the message is
acknowledged to MQTT only then.

| a message that...                   | becomes                                              | its PUBACK (QoS 1) |
|-------------------------------------|------------------------------------------------------|--------------------|
| carries a CloudEvent (binary or     | that event, posted to the broker in binary mode      | after the broker's |
| structured)                         |                                                      | 202                |
| carries none, or a broken one       | `io.mapemesh.mqtt.refused.v1` (a dead letter: the    | after its 202      |
|                                     | topic, the reason, the payload), and a log line      |                    |

While the broker does not take an event (no answer, 429, 5xx), the bridge tries again (`Poster`), and does not
acknowledge: MQTT's flow control (the Receive Maximum) then holds further messages at the
MQTT broker, and a bridge that stops keeps its session, so every unacknowledged message comes again. A 4xx other
than 429 is the event's fault: it is dead-lettered.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import paho.mqtt.client as mqtt

from mapemesh import events as catalogue
from mapemesh.bridge.binding import from_mqtt
from mapemesh.bridge.client import MqttClient, properties_of
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent
from mapemesh.eventing.poster import Poster

log = logging.getLogger(__name__)
SOURCE = "/mapemesh/bridge/mqtt"
DEAD_LETTER_BYTES = 64 * 1024


def dead_letter(message: mqtt.MQTTMessage, reason: str) -> CloudEvent:
    """The `mqtt.refused` event for a message that carries no valid CloudEvent."""
    content_type, properties = properties_of(message)
    payload = bytes(message.payload or b"")
    data = catalogue.MqttRefused(
        topic=message.topic or "?", reason=reason, content_type=content_type, user_properties=properties,
        payload_base64=base64.b64encode(payload[:DEAD_LETTER_BYTES]).decode(),
        truncated=len(payload) > DEAD_LETTER_BYTES)
    return catalogue.make_event(data, SOURCE, subject=message.topic or None)


class Inbound:
    """Subscribes to CloudEvents topics; every message goes to the broker before it is acknowledged."""

    def __init__(self, client: MqttClient, poster: Poster, topics: list[str],
                 stopping: asyncio.Event | None = None):
        self.client, self.poster, self.topics = client, poster, topics
        self.stopping = stopping or asyncio.Event()
        self.refused = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for topic in self.topics:
            await self.client.subscribe(topic, no_local=True)

    def owns(self, topic: str) -> bool:
        return any(mqtt.topic_matches_sub(pattern, topic) for pattern in self.topics)

    def take(self, message: mqtt.MQTTMessage) -> None:
        """Handle a message in the background (messages are handled side by side)."""
        task = asyncio.create_task(self.handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, message: mqtt.MQTTMessage) -> None:
        content_type, properties = properties_of(message)
        try:
            event = from_mqtt(bytes(message.payload or b""), content_type, properties)
        except MalformedEvent as exc:
            self.refused += 1
            log.warning("MQTT message on %s is not a CloudEvent (%s): dead-lettered", message.topic, exc)
            event = dead_letter(message, str(exc))
        status = await self.poster.post(event, stopping=self.stopping)
        if 400 <= status < 500 and event.type != catalogue.MqttRefused.event_type:
            status = await self.poster.post(dead_letter(message, f"the broker refused it: {status}"),
                                            stopping=self.stopping)
        if 200 <= status < 300 or 400 <= status < 500:
            self.client.ack(message)  # taken, or dead-lettered: either way it is not lost and not retried

    async def drain(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)


__all__ = ["Inbound", "Poster", "dead_letter"]
