"""What every stage function does first: read the event's data as its catalogue model."""

from __future__ import annotations

from pydantic import ValidationError

from mapemesh import events as catalogue
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.serving.function import PermanentError


def data_of(event: CloudEvent) -> catalogue.EventData | None:
    """The event's data as its model; None for a type outside the catalogue; PermanentError for bad data."""
    try:
        return catalogue.parse_data(event)
    except catalogue.UnknownEventType:
        return None
    except (ValidationError, ValueError) as exc:
        raise PermanentError(f"{event.type} {event.id}: invalid data: {exc}") from None
