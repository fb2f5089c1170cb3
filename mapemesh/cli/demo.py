"""`make run`: the demo (`mapemesh.demo`) with what the CLI layer wires in: the vAccelPlugin knob's choices
(`mapemesh.runtimes.vaccel_hook`), as `mapemesh up` has them."""

from __future__ import annotations


def main() -> None:
    from mapemesh.demo import serve
    from mapemesh.runtimes.vaccel_hook import VaccelEnv
    from mapemesh.settings import Settings

    serve(VaccelEnv.in_data(Settings.load().data))


if __name__ == "__main__":
    main()
