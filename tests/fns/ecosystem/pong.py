"""The function from issue 16, as a new user writes it for functions-framework (unmodified)."""
from cloudevents.http import CloudEvent


def handle(event):
    return CloudEvent({"type": "com.example.pong", "source": "/echo", "subject": event["id"]}, {"echo": event.data})
