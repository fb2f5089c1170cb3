"""An async function in the style of Knative's Python event samples (hello-world: it answers every event with
its own "hi from Knative")."""
import asyncio

from cloudevents.http import CloudEvent


async def main(event):
    await asyncio.sleep(0)
    attributes = {"type": "dev.knative.samples.hifromknative", "source": "knative/eventing/samples/hello-world"}
    return CloudEvent(attributes, {"msg": "Hi from Knative!", "received": event.data})
