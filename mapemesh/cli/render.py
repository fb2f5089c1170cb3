"""`mapemesh render`: the Kubernetes and Karmada objects mapemesh would apply, as files to read."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import yaml

from mapemesh.cli._common import settings


@click.group()
def render() -> None:
    """Render applications and mapemesh itself as Kubernetes and Karmada objects (one YAML file per object)."""


def _load(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise click.UsageError(f"{what} {path}: {exc}") from None


def _infrastructure(files: tuple[Path, ...], data: Path, state: str) -> dict[str, dict[str, Any]]:
    """{"nodes": {id: description}, "clusters": {id: description}} from files, else the mesh's registry."""
    out: dict[str, dict[str, Any]] = {"nodes": {}, "clusters": {}}
    if files:
        for path in files:
            doc = _load(path, "--infra")
            if isinstance(doc, dict) and "MLSysOpsNode" in doc:
                out["nodes"][str(doc["MLSysOpsNode"].get("name") or path.stem)] = doc
            elif isinstance(doc, dict) and "MLSysOpsCluster" in doc:
                out["clusters"][str(doc["MLSysOpsCluster"].get("cluster_id") or path.stem)] = doc
            else:
                raise click.UsageError(f"--infra {path}: not an MLSysOpsNode or MLSysOpsCluster description")
        return out
    if (data / "state.db").exists() or not state.startswith("sqlite:"):
        from mapemesh.functions.deploy.clusters import candidates, from_registry
        from mapemesh.state import open_store

        store = open_store(state, data=data)
        try:
            registered = store.list("infrastructure")
        finally:
            store.close()
        for key, doc in registered.items():
            kind = doc.value.get("kind")
            if kind in ("node", "cluster"):
                out[kind + "s"][key] = doc.value.get("description", {})
        # Clusters registered as not ready or unschedulable take nothing: leave out their nodes.
        clusters = from_registry(registered)
        usable = {c.name for c in candidates(clusters)}
        excluded = {c.name for c in clusters} - usable
        out["nodes"] = {k: v for k, v in out["nodes"].items() if str(_node(v).get("cluster_id")) not in excluded}
    return out


def _node(description: Any) -> dict[str, Any]:
    return description.get("MLSysOpsNode", description) if isinstance(description, dict) else {}


def _decide(description: dict[str, Any], infra: dict[str, dict[str, Any]]) -> tuple[dict[str, list[str]],
                                                                                     dict[str, str], list[str]]:
    """Placement by the shipped cluster and node placement policies: (placement, nodes, notes)."""
    from mapemesh.functions import policies
    from mapemesh.policy import load_policy

    placement: dict[str, list[str]] = {}
    nodes: dict[str, str] = {}
    notes: list[str] = []
    for name in ("cluster_placement", "node_placement"):
        policy = load_policy(Path(policies.__file__).parent / name / "policy.py")
        declaration = asyncio.run(policy.initialize())
        inputs = {"context": dict(declaration.context), "application_description": description,
                  "system_description": infra, "telemetry": {"data": {}}, "mechanisms": {}}
        answer = asyncio.run(policy.plan(inputs))
        if not isinstance(answer, tuple):
            notes.append(f"{name} failed: {answer.error}")
            continue
        plan, context = answer
        placement.update((plan.get("ClusterPlacement") or {}).get("placement") or {})
        nodes.update((plan.get("ComponentPlacement") or {}).get("nodes") or {})
        for component, reasons in (context.get("unplaceable") or {}).items():
            notes.append(f"{name}: {component} fits nowhere: {json.dumps(reasons)}")
    return placement, nodes, notes


def _write(out: Path, files: dict[str, str]) -> None:
    """Write the files; files a render wrote there before (`<kind>-<name>.yaml` holding that object) are removed
    first, so no stale object is left for `kubectl apply -f`; other files are left alone."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        try:
            doc = yaml.safe_load(old.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        meta = doc.get("metadata") if isinstance(doc, dict) else None
        ours = isinstance(meta, dict) and old.name.startswith(f"{str(doc.get('kind')).lower()}-{meta.get('name')}")
        if ours and old.name not in files:
            old.unlink()
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")


@render.command("app")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A placement plan (YAML/JSON): {ClusterPlacement: {placement: {component: [clusters]}}, "
                   "ComponentPlacement: {nodes: {component: node}}}, or {placement: ..., nodes: ...}.")
@click.option("--infra", "infra_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Node or cluster descriptions for the placement policies (default: the mesh's registered ones).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of a mesh whose registered infrastructure to use [default: the global --data].")
@click.option("--no-karmada", is_flag=True, help="Render for a plain cluster: no Karmada policies.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Where to write.")
@click.pass_context
def app(ctx: click.Context, file: Path, plan_file: Path | None, infra_files: tuple[Path, ...], data: Path | None,
        no_karmada: bool, out: Path) -> None:
    """Render the MLSysOps application description FILE for inspection.

    Without --plan the shipped placement policies decide, against --infra or the registered infrastructure.
    Exit status: 0 written, 2 bad input (the message names the field).
    """
    from mapemesh.functions.deploy.render import RenderError, render_app, to_yaml_files

    description = _load(file, "application")
    if not isinstance(description, dict):
        raise click.UsageError(f"{file}: not an MLSysOps application description")
    notes: list[str] = []
    if plan_file is not None:
        plan = _load(plan_file, "--plan") or {}
        if not isinstance(plan, dict):
            raise click.UsageError(f"--plan {plan_file}: a mapping is expected")
        placement = (plan.get("ClusterPlacement") or {}).get("placement") or plan.get("placement") or {}
        nodes = (plan.get("ComponentPlacement") or {}).get("nodes") or plan.get("nodes") or {}
        if not isinstance(placement, dict) or not all(isinstance(v, list) for v in placement.values()):
            raise click.UsageError(f"--plan {plan_file}: placement must map each component to a list of clusters")
        if not isinstance(nodes, dict):
            raise click.UsageError(f"--plan {plan_file}: nodes must map each component to a node")
    else:
        s = settings(ctx, data=data)
        placement, nodes, notes = _decide(description, _infrastructure(infra_files, s.data, s.state))
    for note in notes:  # first: they say why a component may have no clusters
        click.echo(f"note: {note}", err=True)
    try:
        rendering = render_app(description, placement, nodes=nodes, karmada=not no_karmada)
    except RenderError as exc:
        raise click.UsageError(f"{file}: {exc}") from None
    _write(out, to_yaml_files(rendering.objects))
    click.echo(f"{len(rendering.objects)} object(s) for {rendering.app} written to {out} "
               f"(clusters: {', '.join(sorted(rendering.per_cluster)) or 'none'})")


@render.command("mesh")
@click.option("--manifests", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="mapemesh's manifests [env MAPEMESH_MANIFESTS; default knative].")
@click.option("--runtimes", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="RuntimeClass manifests to add [default: the ones mapemesh ships in runtimes/, if any].")
@click.option("--available", default=None, metavar="RUNTIME,...",
              help="The runtimes the cluster has (of runc, urunc, kata-fc, kata-qemu; runc for the core stages): "
                   "each function's Service gets the first of its preferences there (policies: urunc, kata-fc, "
                   "kata-qemu, runc) [default: all].")
@click.option("--monitor", type=click.Choice(["qemu", "firecracker"]), default="qemu", show_default=True,
              help="urunc's monitor on the cluster (the vAccel RPC address of accelerated functions).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Where to write.")
@click.pass_context
def mesh(ctx: click.Context, manifests: Path | None, runtimes: Path | None, available: str | None, monitor: str,
         out: Path) -> None:
    """Render mapemesh's own manifests for a cluster (Broker, Triggers, Services, RuntimeClasses, Knative's
    feature flags), one file per object; each Service on the runtime chosen for it, and each accelerated
    function with the vAccel plugin the vAccelPlugin knob chose (DATA_DIR/vaccel-plugins.json), if it did.

    Exit status: 0 written, 2 a manifest cannot be read or a runtime is unknown.
    """
    from mapemesh import manifests as loader
    from mapemesh.functions.deploy.render import to_yaml_files

    s = settings(ctx, manifests=manifests)
    from mapemesh import runtimes as shipped

    found = loader.load(s.manifests)
    extra = loader.load(runtimes or Path(shipped.__file__).parent)
    if found.errors or extra.errors:
        raise click.UsageError("; ".join(found.errors + extra.errors))
    from mapemesh.runtimes import choice, vaccel

    have = [r.strip() for r in available.split(",") if r.strip()] if available is not None else None
    plugins = vaccel.read_choices(s.data / vaccel.CHOICES_FILE)  # the vAccelPlugin knob's, where it ran
    objects = []
    seen: set[tuple[str, str, str, str]] = set()
    try:
        for m in (*found.objects, *extra.objects):
            if m.kind == "Kustomization" or (m.kind == "RuntimeClass" and have is not None and m.name not in have):
                continue
            key = (m.api_version, m.kind, m.namespace, m.name)
            if key in seen:  # the manifests' kustomization includes runtimes/ already
                continue
            seen.add(key)
            body = choice.for_cluster(m.body, have, monitor=monitor) if m.kind == "Service" else m.body
            accel_name = ((body.get("metadata") or {}).get("labels") or {}).get(vaccel.ACCEL_LABEL)
            if m.kind == "Service" and accel_name in plugins:
                body = choice.with_plugin(body, plugins[accel_name]["plugin"], plugins[accel_name].get("rpc_address"),
                                          monitor=monitor)
            objects.append(body)
    except (choice.RuntimeChoiceError, vaccel.VaccelError) as exc:
        raise click.UsageError(str(exc)) from None
    _write(out, to_yaml_files(objects))
    kinds = sorted({o["kind"] for o in objects})
    click.echo(f"{len(objects)} object(s) ({', '.join(kinds)}) written to {out}; apply with kubectl apply -f {out}")
