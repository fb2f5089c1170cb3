"""Each local Service's identity: issued by the mesh's authority when its processes start, named after it."""

from __future__ import annotations

from mapemesh.identity.pki import Authority
from mapemesh.serving.envhook import EnvHook
from mapemesh.serving.spec import ServiceSpec


class IdentityEnv:
    """An `EnvHook`: MAPEMESH_IDENTITY=<the Service's name> for its processes, with that identity issued; over the
    env another hook (`then`) gives."""

    def __init__(self, authority: Authority, then: EnvHook | None = None):
        self.authority, self.then = authority, then

    def env_for(self, spec: ServiceSpec) -> dict[str, str]:
        self.authority.issue(spec.name)
        return {**(self.then.env_for(spec) if self.then is not None else {}), "MAPEMESH_IDENTITY": spec.name}

    def changed(self) -> bool:
        return self.then.changed() if self.then is not None else False
