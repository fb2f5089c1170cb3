"""`mapemesh bridge`: the far-edge bridge over MQTT, and simulated NextGenGW devices to try it with."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from mapemesh.aio import run, stop_signals, until_stopped
from mapemesh.cli._common import broker_target, settings

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


@click.group("bridge")
def bridge() -> None:
    """The far-edge bridge: CloudEvents over MQTT and NextGenGW's devices."""


@bridge.command("mqtt")
@click.option("--mqtt", "mqtt_url", default=None, metavar="URL",
              help=f"The MQTT broker, mqtt://HOST[:PORT] [env MAPEMESH_MQTT_URL; default {DEFAULT_MQTT_URL}].")
@click.option("--broker", default=None, metavar="URL",
              help="The broker ingress events go to [default: K_SINK, else the mesh recorded in DATA_DIR, "
                   "at /default/default].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the mesh [default: the global --data].")
@click.option("--subscribe", "topics", multiple=True, metavar="TOPIC",
              help="An MQTT topic (filter) whose messages come in as CloudEvents; repeatable "
                   "[env MAPEMESH_MQTT_TOPICS, comma-separated].")
@click.option("--publish-trigger", "rules", multiple=True, metavar="TYPE_PREFIX=TOPIC_TEMPLATE",
              help="Publish events whose type starts with TYPE_PREFIX to MQTT topic TOPIC_TEMPLATE ({type}, "
                   "{subject}, {source}, {id} or an extension's name filled in); the bridge writes the Trigger "
                   "that brings them. Repeatable.")
@click.option("--mqtt-v311", is_flag=True, help="Speak MQTT 3.1.1 (structured mode only) instead of MQTT 5.")
@click.option("--host", default=None, help="Address of the bridge's HTTP face [env MAPEMESH_HOST].")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port of the bridge's HTTP face (Triggers deliver there; 0 picks a free one).")
@click.option("--telemetry-every", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="SECONDS", help="How often far-edge devices' workload metrics are read.")
@click.pass_context
def mqtt(ctx: click.Context, mqtt_url: str | None, broker: str | None, data: Path | None, topics: tuple[str, ...],
         rules: tuple[str, ...], mqtt_v311: bool, host: str | None, port: int, telemetry_every: float) -> None:
    """Bridge MQTT and the mesh, until Ctrl-C or SIGTERM: CloudEvents in and out over MQTT (the CloudEvents MQTT
    binding, both modes), and NextGenGW's far-edge devices as nodes, with their deploys and knobs.

    Exit status: 0 stopped, 1 no MQTT broker answers, 2 bad arguments or no broker.
    """
    from mapemesh import endpoints
    from mapemesh.bridge.client import parse_url
    from mapemesh.bridge.daemon import Bridge, PublishRule, client_id_for, serve

    s = settings(ctx, data=data, host=host)
    url = mqtt_url or s.mqtt_url or DEFAULT_MQTT_URL
    try:
        parse_url(url)
        publish = [PublishRule.parse(rule) for rule in rules]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    found = endpoints.read(s.data)
    target = broker_target(s, broker)
    if not target:
        raise click.UsageError("no broker: give --broker URL, set K_SINK, or start a mesh in DATA_DIR")
    subscribe = list(topics) or [t.strip() for t in s.mqtt_topics.split(",") if t.strip()]
    manifests = s.deployed_manifests if "broker" in found else None
    running = Bridge(url, target, data=s.data, manifests=manifests, subscribe=subscribe, publish=publish,
                     host=s.host, port=port, client_id=client_id_for(s.data), telemetry_every_s=telemetry_every,
                     v5=not mqtt_v311)
    try:
        run(serve(running))
    except ConnectionError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(1)


@bridge.command("simulate-device")
@click.argument("name")
@click.option("--mqtt", "mqtt_url", default=None, metavar="URL",
              help=f"The MQTT broker NextGenGW uses, mqtt://HOST[:PORT] [env MAPEMESH_MQTT_URL; "
                   f"default {DEFAULT_MQTT_URL}].")
@click.option("--memory-kib", type=click.IntRange(min=1), default=256, show_default=True,
              help="Memory the device reports (Memory_Total, KiB).")
@click.option("--caps", default="tinymml", show_default=True,
              help="Capabilities, ';'-separated (DevCapMgmt), e.g. 'tinymml;temperature_sensor'.")
@click.option("--fail", type=click.Choice(["create", "package", "install", "activate"]), default=None,
              help="Answer this deploy step with 160 (Internal Server Error), to try failure handling.")
@click.option("--observe-period", "observe_period_s", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, metavar="SECONDS", help="Period of the radio signal notifications while observed.")
@click.option("--announce-every", "announce_every_s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, metavar="SECONDS", help="Period of the device's announcements.")
@click.pass_context
def simulate_device(ctx: click.Context, name: str, mqtt_url: str | None, memory_kib: int, caps: str,
                    fail: str | None, observe_period_s: float, announce_every_s: float) -> None:
    """Present a far-edge device NAME on an MQTT broker as NextGenGW would, until Ctrl-C or SIGTERM.

    It announces itself, answers the Software Management, monitoring, radio and knob-shell requests of the
    far-edge contract, and publishes its NAME on `unregister` when it stops (its MQTT Will says the same if it is
    killed). Exit status: 0 stopped, 1 the broker cannot be reached, 2 bad arguments.
    """
    from mapemesh.bridge.simulator import Device

    url = mqtt_url or settings(ctx).mqtt_url or DEFAULT_MQTT_URL
    try:
        device = Device(name, url, memory_kib=memory_kib, caps=tuple(c.strip() for c in caps.split(";") if c.strip()),
                        fail=fail, observe_period_s=observe_period_s, announce_every_s=announce_every_s)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    async def main() -> None:
        stop = stop_signals()
        try:
            await asyncio.to_thread(device.start)
        except ConnectionError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"far-edge device {name} on {url} ({memory_kib} KiB, caps {';'.join(device.caps) or '-'}"
                   + (f", failing at {fail}" if fail else "") + "); Ctrl-C to unregister and stop", err=True)
        try:
            await until_stopped(stop)
        finally:
            await asyncio.to_thread(device.stop)

    run(main())
