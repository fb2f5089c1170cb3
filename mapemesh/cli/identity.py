"""`mapemesh identity`: the mesh's identities (`mapemesh.identity`): issue one, list them."""

from __future__ import annotations

from pathlib import Path

import click

from mapemesh.cli._common import settings


@click.group("identity")
def identity() -> None:
    """Identities on the event path: a certificate per component, signed by the mesh's authority."""


@identity.command("issue")
@click.argument("name")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the mesh [default: the global --data].")
@click.pass_context
def issue(ctx: click.Context, name: str, data: Path | None) -> None:
    """Issue NAME an identity (made once; the authority too, on first use) and print where its files are.

    `operator` is allowed to send knob commands by the default command policy. On a cluster, put
    keys/NAME.key in a Secret for that component and ca/ and certs/ in a ConfigMap for those that verify.
    Exit status: 0 issued, 2 a bad name.
    """
    from mapemesh.identity.guard import identity_dir
    from mapemesh.identity.pki import Authority, IdentityError

    root = identity_dir(settings(ctx, data=data).data)
    try:
        made = Authority(root).issue(name)
    except IdentityError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{made.subject}\n  key:  {root / 'keys' / (name + '.key')}\n  cert: {root / 'certs' / (name + '.pem')}"
               f"\n  trust anchor: {root / 'ca' / 'ca.pem'}")


@identity.command("list")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory of the mesh [default: the global --data].")
@click.pass_context
def list_identities(ctx: click.Context, data: Path | None) -> None:
    """The identities issued in DATA_DIR/identity, with their certificates' expiry."""
    from cryptography import x509

    from mapemesh.identity.guard import identity_dir
    from mapemesh.identity.pki import subject_of

    root = identity_dir(settings(ctx, data=data).data)
    found = sorted((root / "certs").glob("*.pem")) if (root / "certs").is_dir() else []
    if not found:
        click.echo(f"no identities in {root} (mapemesh up makes them, or mapemesh identity issue NAME)")
        return
    for path in found:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        click.echo(f"{subject_of(path.stem):60} until {cert.not_valid_after_utc:%Y-%m-%d}")


SIGNERS = ("execute", "deploy", "trust", "upf", "jobs")
"""The functions that sign what they send (the default command policy's senders, and the mechanism adapters' knob
results): each gets its key in a Secret."""


@identity.command("export")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory holding the authority [default: the global --data].")
@click.option("--namespace", default="default", show_default=True)
@click.option("--signer", "signers", multiple=True, default=SIGNERS, show_default=True,
              help="A component that sends commands (its key goes in Secret mapemesh-identity-NAME).")
@click.pass_context
def export(ctx: click.Context, data: Path | None, namespace: str, signers: tuple[str, ...]) -> None:
    """Print the Secrets a cluster mounts (knative/platform/identity.yaml): `mapemesh-identity-ca` (the authority's
    certificate), `mapemesh-identity-certs` (every component's certificate) and `mapemesh-identity-NAME` (a
    signer's key, mounted into that Service only). Issues what is missing. Apply with `kubectl apply -f -`.
    """
    import base64

    import yaml

    from mapemesh.identity.guard import identity_dir
    from mapemesh.identity.pki import Authority

    root = identity_dir(settings(ctx, data=data).data)
    authority = Authority(root)
    for name in (*signers, "node-shim", "api", "bridge", "operator"):
        authority.issue(name)

    def secret(name: str, files: dict[str, bytes]) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "mapemesh"}},
                "data": {key: base64.b64encode(value).decode() for key, value in sorted(files.items())}}

    docs = [secret("mapemesh-identity-ca", {"ca.pem": (root / "ca" / "ca.pem").read_bytes()}),
            secret("mapemesh-identity-certs", {p.name: p.read_bytes() for p in (root / "certs").glob("*.pem")})]
    docs += [secret(f"mapemesh-identity-{name}", {f"{name}.key": (root / "keys" / f"{name}.key").read_bytes()})
             for name in signers]
    click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
