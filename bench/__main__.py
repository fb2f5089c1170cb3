"""`make bench`: run every benchmark, print a table each, write JSON under bench/results/."""

from __future__ import annotations

import argparse
import sys

from bench import accel, coldstart, identity, ingress, jobs, mape, mqtt, routing, storage

BENCHMARKS = {"ingress": ingress.main, "routing": routing.main, "coldstart": coldstart.main, "mape": mape.main,
              "accel": accel.main, "mqtt": mqtt.main, "storage": storage.main,
              "identity": identity.main, "jobs": jobs.main}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter rounds (for a smoke run)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = 0
    for name in args.names or list(BENCHMARKS):
        failed += 0 if BENCHMARKS[name](quick=args.quick) else 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
