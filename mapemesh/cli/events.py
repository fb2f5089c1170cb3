"""`mapemesh events`: post CloudEvents to a broker."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import click
import httpx

from mapemesh import endpoints
from mapemesh.cli._common import data_dir
from mapemesh.eventing.binding import to_binary, to_structured
from mapemesh.eventing.cloudevent import CloudEvent, MalformedEvent, is_json_media_type, validate
from mapemesh.identity.tokens import auth_headers

DEFAULT_BROKER_PATH = "/default/default"

EXIT_REJECTED = 1
EXIT_UNREACHABLE = 3


@click.group()
def events() -> None:
    """Send CloudEvents into the mesh."""


def broker_base(ctx: click.Context, given: str | None) -> str:
    """The broker's base URL: as given, else the one recorded in DATA_DIR/endpoints.json."""
    if given is not None:
        return given.rstrip("/")
    data = data_dir(ctx)
    try:
        base = endpoints.read(data).get("broker")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if base is None:
        raise click.UsageError(f"no --broker given and no running broker recorded in "
                               f"{data / endpoints.FILE} (start one with `mapemesh broker serve`)")
    return base


def broker_url(ctx: click.Context, given: str | None) -> str:
    """The ingress URL: --broker as given (a bare base URL gets /default/default), else endpoints.json."""
    given = given if given is not None else broker_base(ctx, None)
    parts = urlsplit(given)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.UsageError(f"--broker {given!r} is not an http(s) URL")
    if parts.path in ("", "/"):
        given = given.rstrip("/") + DEFAULT_BROKER_PATH
    return given


@events.command()
@click.option("--broker", "broker", default=None, metavar="URL",
              help="Broker ingress URL (http://HOST:PORT/NAMESPACE/BROKER); a base URL means "
                   "/default/default. Default: the broker in DATA_DIR/endpoints.json.")
@click.option("--type", "type_", required=True, help="The event's type attribute.")
@click.option("--source", required=True, help="The event's source attribute (a URI-reference).")
@click.option("--id", "id_", default=None, help="The event's id [default: a new UUID].")
@click.option("--subject", default=None, help="The event's subject attribute.")
@click.option("--data", "data", default=None, metavar="JSON", help="The event's data, inline.")
@click.option("--data-file", type=click.Path(exists=True, dir_okay=False, path_type=Path, allow_dash=True),
              default=None,
              help="Read the event's data from a file ('-' for standard input).")
@click.option("--content-type", default="application/json", show_default=True,
              help="The data's media type (datacontenttype).")
@click.option("--ext", "exts", multiple=True, metavar="NAME=VALUE",
              help="An extension attribute (repeatable).")
@click.option("--structured", is_flag=True, help="Send in structured mode instead of binary mode.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the broker.")
@click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.pass_context
@click.option("--as", "sender", default="operator", show_default=True, metavar="IDENTITY",
              help="The mesh identity whose token goes with the event (DATA_DIR/identity; none there: no token).")
def send(ctx: click.Context, broker: str | None, type_: str, source: str, id_: str | None,
         subject: str | None, data: str | None, data_file: Path | None, content_type: str,
         exts: tuple[str, ...], structured: bool, timeout: float, output: str, sender: str) -> None:
    """Post one CloudEvent and print the broker's answer.

    Exit status: 0 accepted, 1 rejected by the broker, 2 bad usage, 3 broker unreachable.
    """
    if data is not None and data_file is not None:
        raise click.UsageError("give --data or --data-file, not both")
    payload: bytes | None = None
    if data is not None:
        payload = data.encode("utf-8")
    elif data_file is not None:
        payload = sys.stdin.buffer.read() if str(data_file) == "-" else data_file.read_bytes()
    if payload is not None and is_json_media_type(content_type):
        try:
            json.loads(payload)
        except ValueError as exc:
            raise click.UsageError(f"the data is not valid JSON ({exc}); pass --content-type for other "
                                   f"media types") from None
    attributes: dict[str, str | int | bool] = {
        "specversion": "1.0", "id": id_ or str(uuid.uuid4()), "source": source, "type": type_}
    if subject is not None:
        attributes["subject"] = subject
    if payload is not None:
        attributes["datacontenttype"] = content_type
    for ext in exts:
        name, sep, value = ext.partition("=")
        if not sep:
            raise click.UsageError(f"--ext {ext!r} must be NAME=VALUE")
        attributes[name] = value
    try:
        validate(attributes)
    except MalformedEvent as exc:
        raise click.UsageError(f"invalid event: {exc}") from None
    event = CloudEvent(attributes, payload)
    url = broker_url(ctx, broker)
    headers, body = to_structured(event) if structured else to_binary(event)
    headers.update(auth_headers(url, sender, data_dir(ctx)))  # a broker with authentication-oidc asks for it
    try:
        response = httpx.post(url, headers=headers, content=body, timeout=timeout)
    except httpx.HTTPError as exc:
        _emit(output, {"url": url, "id": event.id, "status": None, "error": str(exc)},
              f"error: cannot reach the broker at {url}: {exc}", err=True)
        ctx.exit(EXIT_UNREACHABLE)
    answer = response.text
    doc = {"url": url, "id": event.id, "status": response.status_code, "body": _maybe_json(answer)}
    line = f"{response.status_code} {response.reason_phrase}  id={event.id}"
    if answer:
        line += f"\n{answer}"
    ok = response.is_success
    _emit(output, doc, line, err=not ok)
    ctx.exit(0 if ok else EXIT_REJECTED)


def _maybe_json(text: str) -> object:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _emit(output: str, doc: dict[str, object], human: str, err: bool = False) -> None:
    if output == "json":
        click.echo(json.dumps(doc))
    else:
        click.echo(human, err=err)
