"""vaccel/config.py: Config, what `bootstrap` loads libvaccel with."""


class Config:
    def __init__(self, plugins: str = "libvaccel-noop.so", log_level: int = 1, log_file: str | None = None, *,
                 profiling_enabled: bool = False, version_ignore: bool = False):
        self.plugins, self.log_level, self.log_file = plugins, log_level, log_file
        self.profiling_enabled, self.version_ignore = profiling_enabled, version_ignore
