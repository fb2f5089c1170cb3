"""`mapemesh apps | ml | infra | manage | watch`: the northbound API from the command line.

The running mesh is found through `--data DIR`, else `MAPEMESH_DATA`, else `.mapemesh/` in the current
directory: its `endpoints.json` names the API, its `api.token` is the bearer token.

Exit status, for scripts: 0 done; 1 the mesh refused or failed (or `--wait` ran out); 2 bad usage or input
(the API's 422 included, with the field paths); 3 no running mesh found, or it does not answer; 4 not found;
5 the id is taken.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx
import yaml

from mapemesh import endpoints, tokens
from mapemesh.cli._common import settings

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND, EXIT_CONFLICT = 1, 2, 3, 4, 5
TOKEN_FILE = "api.token"


def _fail(message: str, code: int, doc: Any = None, output: str = "human") -> NoReturn:
    if output == "json" and doc is not None:
        click.echo(json.dumps(doc, indent=2))
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class Api:
    """A client of the mesh's API: MAPEMESH_API_URL (and MAPEMESH_API_TOKEN) when set, else the API recorded in
    the data directory."""

    def __init__(self, data: Path, output: str, url: str = "", token: str = ""):
        self.output = output
        if url:
            self.url = url.rstrip("/")
            if not token:
                _fail("MAPEMESH_API_URL is set but MAPEMESH_API_TOKEN is not: give the API's bearer token",
                      EXIT_USAGE)
            self.headers = {"Authorization": f"Bearer {token}"}
            return
        try:
            found = endpoints.read(data)
        except ValueError as exc:
            _fail(str(exc), EXIT_UNREACHABLE)
        if "api" not in found:
            _fail(f"no running mesh with an API recorded in {data / endpoints.FILE} (start one with `mapemesh up`, "
                  "point --data / MAPEMESH_DATA at its data directory, or set MAPEMESH_API_URL and "
                  "MAPEMESH_API_TOKEN)", EXIT_UNREACHABLE)
        self.url = found["api"]
        found_token = token or tokens.read(data, TOKEN_FILE)
        if found_token is None:
            _fail(f"{data / TOKEN_FILE} is missing: the mesh makes it when it starts", EXIT_UNREACHABLE)
        self.headers = {"Authorization": f"Bearer {found_token}"}

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """The API's JSON answer; exits with the status's exit code (and the API's words) otherwise."""
        try:
            response = httpx.request(method, self.url + path, json=body, headers=self.headers, timeout=timeout)
        except httpx.HTTPError as exc:
            _fail(f"the mesh's API at {self.url} does not answer: {exc}", EXIT_UNREACHABLE)
        try:
            doc = response.json()
        except ValueError:
            doc = {"detail": response.text}
        if response.status_code < 400:
            return doc
        detail = doc.get("detail") if isinstance(doc, dict) else doc
        error = {"status": response.status_code, "detail": detail}
        if response.status_code == 422 and isinstance(detail, list):
            lines = [f"  {_loc(d.get('loc'))}: {d.get('msg')}" for d in detail if isinstance(d, dict)]
            _fail("the mesh refused the input:\n" + "\n".join(lines), EXIT_USAGE, error, self.output)
        message = detail if isinstance(detail, str) else json.dumps(detail)
        code = {404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT, 422: EXIT_USAGE}.get(response.status_code, EXIT_REFUSED)
        _fail(f"{message} (HTTP {response.status_code})", code, error, self.output)

    def wait(self, path: str, done: Callable[[Any], bool], timeout_s: float, *, gone_ok: bool = False) -> Any:
        """Poll `path` until `done(answer)` (or, with `gone_ok`, until it is 404); the last answer."""
        deadline = time.monotonic() + timeout_s
        doc: Any = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(self.url + path, headers=self.headers, timeout=10)
            except httpx.HTTPError as exc:
                _fail(f"the mesh's API at {self.url} does not answer: {exc}", EXIT_UNREACHABLE)
            if response.status_code == 404 and gone_ok:
                return None
            if response.status_code == 200:
                doc = response.json()
                if done(doc):
                    return doc
            time.sleep(0.25)
        _fail(f"not done within {timeout_s:g}s (last: {json.dumps(doc) if doc is not None else 'no answer'})",
              EXIT_REFUSED, {"timeout_s": timeout_s, "last": doc}, self.output)


def _loc(loc: Any) -> str:
    out = ""
    for part in loc or []:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def _source_body(source: str) -> dict[str, Any]:
    """`{"uri": URL}` for an http(s) URL, else `{"yaml": DOC}` from the file (or `-`: standard input)."""
    if source.startswith(("http://", "https://")):
        return {"uri": source}
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot read {source}: {exc.strerror or exc}", EXIT_USAGE)
    except UnicodeDecodeError as exc:
        _fail(f"{source} is not UTF-8 text: {exc}", EXIT_USAGE)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        _fail(f"{source} is not YAML: {exc}", EXIT_USAGE)
    if not isinstance(doc, dict):
        _fail(f"{source} does not hold a description (a YAML mapping)", EXIT_USAGE)
    return {"yaml": doc}


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--output", "-o", type=click.Choice(["human", "json"]), default="human", show_default=True,
                      help="Human-readable text, or the API's JSON answer.")(fn)
    fn = click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
                      help="Data directory of the running mesh [default: the global --data, MAPEMESH_DATA, "
                           ".mapemesh].")(fn)
    return click.pass_context(fn)


def _api(ctx: click.Context, data: Path | None, output: str) -> Api:
    s = settings(ctx, data=data)
    return Api(s.data, output, s.api_url, s.api_token)


def _show(output: str, doc: Any, human: Callable[[Any], str]) -> None:
    click.echo(json.dumps(doc, indent=2) if output == "json" else human(doc))


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header, *[[("-" if c is None else str(c)) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _status_line(doc: dict[str, Any], key: str = "app_id") -> str:
    dep = doc.get("deployment") or {}
    where = f" on {', '.join(dep.get('clusters') or [])} ({dep.get('target')})" if dep else ""
    why = f"\n  {doc['message']}" if doc.get("message") else ""
    return f"{doc.get(key)}: {doc.get('status')}{where}{why}"


def _wait_deployed(api: Api, path: str, key: str, timeout_s: float, output: str) -> None:
    """Follow a submission until it is deployed or failed; show it; exit 1 unless deployed."""
    doc = api.wait(path, lambda d: d.get("status") in ("deployed", "failed"), timeout_s)
    _show(output, doc, lambda d: _status_line(d, key))
    if doc.get("status") != "deployed":
        sys.exit(EXIT_REFUSED)


# -- apps -------------------------------------------------------------------------------------------------------

@click.group()
def apps() -> None:
    """Applications: deploy an MLSysOps description, follow it, remove it."""


@apps.command("deploy")
@click.argument("source")
@click.option("--wait/--no-wait", default=False, help="Wait until it is deployed (or failed).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=120, show_default=True,
              help="Seconds --wait waits.")
@_common
def apps_deploy(ctx: click.Context, source: str, wait: bool, timeout_s: float, data: Path | None,
                output: str) -> None:
    """Submit the application description in SOURCE (a YAML file, - for standard input, or an http(s) URL the
    mesh fetches)."""
    body = _source_body(source)
    api = _api(ctx, data, output)
    doc = api.call("POST", "/apps/deploy", body)
    if wait:
        _wait_deployed(api, f"/apps/status/{doc['app_id']}", "app_id", timeout_s, output)
        return
    _show(output, doc, lambda d: f"{d['app_id']}: {d['state']} (event {d['event_id']}); follow it with "
                                 f"`mapemesh apps status {d['app_id']}`")


@apps.command("list")
@_common
def apps_list(ctx: click.Context, data: Path | None, output: str) -> None:
    """Every application and its state."""
    doc = _api(ctx, data, output).call("GET", "/apps/list_all/")
    _show(output, doc, lambda d: _table([[r["app_id"], r["status"], ",".join((r.get("deployment") or {}).get(
        "clusters") or []) or None] for r in d.get("apps", [])], ["APP", "STATUS", "CLUSTERS"])
        if d.get("apps") else "no applications")


@apps.command("status")
@click.argument("app_id")
@_common
def apps_status(ctx: click.Context, app_id: str, data: Path | None, output: str) -> None:
    """APP_ID's state: queued, planned, deploying, deployed or failed."""
    doc = _api(ctx, data, output).call("GET", f"/apps/status/{app_id}")
    _show(output, doc, _status_line)


@apps.command("details")
@click.argument("app_id")
@_common
def apps_details(ctx: click.Context, app_id: str, data: Path | None, output: str) -> None:
    """APP_ID's components, where they run, and its newest plans."""
    doc = _api(ctx, data, output).call("GET", f"/apps/details/{app_id}")

    def human(d: dict[str, Any]) -> str:
        comps = _table([[c["name"], ",".join(c.get("clusters") or []) or None, c.get("node"),
                         len(c.get("objects") or [])] for c in d.get("components") or []],
                       ["COMPONENT", "CLUSTERS", "NODE", "OBJECTS"])
        plans = _table([[p.get("plan_id", "")[:8], p.get("policy"), p.get("status"), p.get("reason")]
                        for p in d.get("plans") or []], ["PLAN", "POLICY", "STATUS", "REASON"])
        return f"{_status_line(d)}\n\n{comps}\n\n{plans if d.get('plans') else 'no plans yet'}"

    _show(output, doc, human)


@apps.command("performance")
@click.argument("app_id")
@_common
def apps_performance(ctx: click.Context, app_id: str, data: Path | None, output: str) -> None:
    """APP_ID's QoS metrics from telemetry against their targets."""
    doc = _api(ctx, data, output).call("GET", f"/apps/performance/{app_id}")

    def human(d: dict[str, Any]) -> str:
        if not d.get("metrics"):
            return f"{app_id}: no QoS metrics declared and no telemetry reported"
        rows = [[m.get("component"), m["metric"], m.get("latest"), m.get("target"), m.get("relation"),
                 {True: "yes", False: "NO", None: None}[m.get("met")], m.get("samples")] for m in d["metrics"]]
        return _table(rows, ["COMPONENT", "METRIC", "LATEST", "TARGET", "RELATION", "MET", "SAMPLES"])

    _show(output, doc, human)


@apps.command("remove")
@click.argument("app_id")
@click.option("--wait/--no-wait", default=False, help="Wait until the mesh has removed it.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=60, show_default=True)
@_common
def apps_remove(ctx: click.Context, app_id: str, wait: bool, timeout_s: float, data: Path | None,
                output: str) -> None:
    """Remove APP_ID: what was deployed for it is deleted."""
    api = _api(ctx, data, output)
    doc = api.call("DELETE", f"/apps/remove/{app_id}")
    if wait:
        api.wait(f"/apps/status/{app_id}", lambda d: False, timeout_s, gone_ok=True)
        doc = {**doc, "removed": True}
    _show(output, doc, lambda d: f"{app_id}: {'removed' if d.get('removed') else 'removal requested'}")


# -- ML models --------------------------------------------------------------------------------------------------

@click.group()
def ml() -> None:
    """ML models: their serving applications, deployed like applications."""


@ml.command("deploy")
@click.argument("source")
@click.option("--model-uid", default=None, help="The model's id [default: the description's name].")
@click.option("--wait/--no-wait", default=False, help="Wait until it is deployed (or failed).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=120, show_default=True)
@_common
def ml_deploy(ctx: click.Context, source: str, model_uid: str | None, wait: bool, timeout_s: float,
              data: Path | None, output: str) -> None:
    """Deploy the ML model whose serving application (an MLSysOpsApp description) is in SOURCE."""
    body = {**_source_body(source), **({"model_uid": model_uid} if model_uid else {})}
    api = _api(ctx, data, output)
    doc = api.call("POST", "/ml/deploy_ml", body)
    if wait:
        _wait_deployed(api, f"/ml/status/{doc['model_uid']}", "model_uid", timeout_s, output)
        return
    _show(output, doc, lambda d: f"{d['model_uid']}: {d['state']} (event {d['event_id']})")


@ml.command("list")
@_common
def ml_list(ctx: click.Context, data: Path | None, output: str) -> None:
    """Every ML model and its state."""
    doc = _api(ctx, data, output).call("GET", "/ml/list_all/")
    _show(output, doc, lambda d: _table([[r["model_uid"], r["status"]] for r in d.get("models", [])],
                                        ["MODEL", "STATUS"]) if d.get("models") else "no ML models")


@ml.command("status")
@click.argument("model_uid")
@_common
def ml_status(ctx: click.Context, model_uid: str, data: Path | None, output: str) -> None:
    """MODEL_UID's deployment state."""
    doc = _api(ctx, data, output).call("GET", f"/ml/status/{model_uid}")
    _show(output, doc, lambda d: _status_line(d, "model_uid"))


@ml.command("remove")
@click.argument("model_uid")
@_common
def ml_remove(ctx: click.Context, model_uid: str, data: Path | None, output: str) -> None:
    """Remove MODEL_UID's deployment."""
    doc = _api(ctx, data, output).call("DELETE", f"/ml/remove/{model_uid}")
    _show(output, doc, lambda d: f"{model_uid}: removal requested")


# -- infrastructure ---------------------------------------------------------------------------------------------

@click.group()
def infra() -> None:
    """Infrastructure: MLSysOps node, cluster and continuum descriptions."""


@infra.command("register")
@click.argument("source")
@_common
def infra_register(ctx: click.Context, source: str, data: Path | None, output: str) -> None:
    """Register (or update) the description in SOURCE (a YAML file, - for standard input, or an http(s) URL)."""
    doc = _api(ctx, data, output).call("POST", "/infra/register", _source_body(source))
    _show(output, doc, lambda d: f"{d['kind']} {d['infra_id']} registered (event {d['event_id']})")


@infra.command("list")
@click.option("--kind", type=click.Choice(["node", "cluster", "continuum"]), default=None, help="Only this kind.")
@_common
def infra_list(ctx: click.Context, kind: str | None, data: Path | None, output: str) -> None:
    """The registered nodes, clusters and continuum."""
    doc = _api(ctx, data, output).call("GET", "/infra/list/" + (f"?kind={kind}" if kind else ""))

    def human(d: dict[str, Any]) -> str:
        rows = []
        for r in d.get("infrastructure") or []:
            desc = next(iter((r.get("description") or {}).values()), {}) or {}
            detail = desc.get("continuum_layer") or ",".join(desc.get("nodes") or desc.get("clusters") or []) or None
            rows.append([r["infra_id"], r.get("kind"), detail])
        return _table(rows, ["ID", "KIND", "LAYER / MEMBERS"]) if rows else "nothing registered"

    _show(output, doc, human)


@infra.command("trust")
@_common
def infra_trust(ctx: click.Context, data: Path | None, output: str) -> None:
    """Each node's and cluster's reputation credit, with the trust indices it is the weighted sum of."""
    doc = _api(ctx, data, output).call("GET", "/infra/trust/")

    def human(d: dict[str, Any]) -> str:
        rows = [[r["infra_id"], r.get("kind"), f"{r['credit']:.2f}" if r.get("credit") is not None else None,
                 " ".join(f"{name}={value:.2f}" for name, value in sorted((r.get("indices") or {}).items()))]
                for r in d.get("trust") or []]
        return _table(rows, ["ID", "KIND", "CREDIT", "INDICES"]) if rows else "no trust credits yet"

    _show(output, doc, human)


@infra.command("unregister")
@click.argument("infra_id")
@_common
def infra_unregister(ctx: click.Context, infra_id: str, data: Path | None, output: str) -> None:
    """Unregister a node, cluster or continuum."""
    doc = _api(ctx, data, output).call("DELETE", f"/infra/unregister/{infra_id}")
    _show(output, doc, lambda d: f"{infra_id} unregistered")


# -- management -------------------------------------------------------------------------------------------------

@click.group()
def manage() -> None:
    """The mesh as a whole: is it alive, which management mode."""


@manage.command("ping")
@_common
def manage_ping(ctx: click.Context, data: Path | None, output: str) -> None:
    """Whether the mesh's components answer."""
    doc = _api(ctx, data, output).call("GET", "/manage/ping")
    _show(output, doc, lambda d: f"{d.get('message')}: " + ", ".join(f"{k} {v}" for k, v in
                                                                      (d.get("response") or {}).items()))


@manage.command("mode")
@click.argument("mode", type=click.Choice(["0", "1", "heuristic", "ml"]), required=False)
@_common
def manage_mode(ctx: click.Context, mode: str | None, data: Path | None, output: str) -> None:
    """Show the management mode, or set it: heuristic (0) or ml (1)."""
    api = _api(ctx, data, output)
    if mode is None:
        doc = api.call("GET", "/manage/mode")
        _show(output, doc, lambda d: f"mode {d['mode']}" + (" (manual override)" if d.get("manual_override") else ""))
        return
    doc = api.call("PUT", f"/manage/mode/{mode}")
    _show(output, doc, lambda d: d.get("message", ""))


# -- the live view ----------------------------------------------------------------------------------------------

@click.command()
@click.option("--all", "everything", is_flag=True, help="Every event, the loop's plumbing and all telemetry too.")
@click.option("--type", "type_prefix", default=None, help="Only event types starting with this.")
@click.option("--after", type=click.IntRange(min=0), default=None,
              help="Start after this log position (default: now; 0 replays the log).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@_common
def watch(ctx: click.Context, everything: bool, type_prefix: str | None, after: int | None, limit: int | None,
          data: Path | None, output: str) -> None:
    """Follow the mesh's events live: telemetry, plans, knob changes, deployments (Ctrl-C stops)."""
    from mapemesh.cli.view import LiveView

    api = _api(ctx, data, output)
    params: dict[str, Any] = {k: v for k, v in (("after", after), ("type", type_prefix), ("limit", limit))
                              if v is not None}
    view = LiveView(everything=everything)
    try:
        with httpx.stream("GET", api.url + "/events/stream", params=params, headers=api.headers,
                          timeout=httpx.Timeout(10, read=None)) as response:
            if response.status_code != 200:
                response.read()
                _fail(f"the API answered {response.status_code}: {response.text}",
                      EXIT_USAGE if response.status_code == 422 else EXIT_REFUSED)
            for payload in sse_data(response.iter_lines()):
                try:
                    event = json.loads(payload)
                except ValueError:
                    click.echo(f"(an event that is not JSON, skipped: {payload[:80]!r})", err=True)
                    continue
                if output == "json":
                    click.echo(payload)
                    continue
                line = view.line(event)
                if line is not None:
                    click.echo(line)
    except httpx.HTTPError as exc:
        _fail(f"the event stream from {api.url} broke off: {exc}", EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        pass


def sse_data(lines: Any) -> Any:
    """The `data` of each server-sent event in a stream of lines."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
