"""vaccel/resource.py: ResourceType and Resource(paths, type_), registered per session."""

import errno
import itertools
from enum import IntEnum
from pathlib import Path

from .error import FFIError

ResourceType = IntEnum("ResourceType", {"LIB": 0, "DATA": 1, "MODEL": 2, "MAX": 3})
_ids = itertools.count(1)


class Resource:
    def __init__(self, paths, type_):
        self._paths = [str(p) for p in paths] if isinstance(paths, list | tuple) else [str(paths)]
        self._type = type_
        if not all(Path(p).exists() for p in self._paths):  # libvaccel parse_uri: "Invalid path"
            raise FFIError(errno.EINVAL, "Could not initialize resource")
        self._id = next(_ids)
        self.__sessions = []

    @property
    def id(self):
        return self._id

    @property
    def remote_id(self):
        return 0

    def register(self, session):
        if session in self.__sessions:
            raise FFIError(errno.EEXIST, f"Could not register resource {self.id} with session {session.id}")
        self.__sessions.append(session)
        session._registered.append(self)

    def unregister(self, session):
        if session not in self.__sessions:
            raise FFIError(errno.EINVAL, f"Could not unregister resource {self.id} from session {session.id}")
        self.__sessions.remove(session)
        session._registered.remove(self)

    def is_registered(self, session) -> bool:
        return session in self.__sessions

    def __repr__(self):
        return f"<Resource id={self.id} remote_id=0 paths={self._paths} type={ResourceType(self._type).name}>"
