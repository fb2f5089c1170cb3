"""vaccel/vaccel.py: bootstrap and cleanup (libvaccel's; the stand-in's constructor already ran at import)."""

import atexit
import os

from . import _libvaccel


def bootstrap(config=None):
    """Load the plugins of `config` (or VACCEL_PLUGINS), as vaccel_bootstrap does, exiting as it does on a failure."""
    if config is not None:
        os.environ["VACCEL_PLUGINS"] = config.plugins
    _libvaccel.PLUGINS.clear()
    _libvaccel._bootstrap()


@atexit.register
def cleanup():
    _libvaccel.PLUGINS.clear()
