"""The CloudEvent catalogue of mapemesh (import name `mapemesh.events`).

`CATALOGUE` maps each CloudEvent type to the pydantic model of its data; `make_event` builds a
CloudEvent from a model and `parse_data` validates an event's data against its type's model.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from mapemesh.eventing.cloudevent import Attr, CloudEvent
from mapemesh.events.catalogue import *  # noqa: F403 - the models are this package's public API
from mapemesh.events.catalogue import CATALOGUE, EventData


class UnknownEventType(KeyError):
    """The event's type is not in the catalogue."""


def make_event(data: EventData, source: str, *, subject: str | None = None, id: str | None = None,
               extensions: dict[str, Attr] | None = None) -> CloudEvent:
    """A CloudEvent 1.0 carrying `data`, with its catalogue type and dataschema."""
    attributes: dict[str, Attr] = {
        "specversion": "1.0",
        "id": id or str(uuid.uuid4()),
        "source": source,
        "type": data.event_type,
        "time": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "dataschema": data.dataschema(),
    }
    if subject is not None:
        attributes["subject"] = subject
    attributes.update(extensions or {})
    return CloudEvent(attributes, data.model_dump_json(exclude_none=True).encode("utf-8"))


def parse_data(event: CloudEvent) -> EventData:
    """The event's data as its catalogue model; UnknownEventType or pydantic.ValidationError otherwise."""
    model = CATALOGUE.get(event.type)
    if model is None:
        raise UnknownEventType(event.type)
    return model.model_validate(json.loads(event.data or b"null"))
