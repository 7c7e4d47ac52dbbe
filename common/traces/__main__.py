"""``python -m flexgc.common.traces``: convert measured step times into a trace file, or describe a trace.

    python -m flexgc.common.traces convert STEP_TIMES.csv OUT.csv [--note TEXT]
    python -m flexgc.common.traces describe NAME_OR_PATH

docs/traces.md describes both formats. Exit status 2 on a bad file or argument.
"""

from __future__ import annotations

import argparse
import sys

from flexgc.common.errors import ConfigError
from flexgc.common.traces import SHIPPED, convert_step_times, describe, load_factors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flexgc.common.traces", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="step times (long: step,worker,seconds; or a steps x workers "
                             "matrix) -> factor CSV (divided by the matrix median)")
    convert.add_argument("source", help="CSV of measured step times")
    convert.add_argument("dest", help="factor CSV to write (replay it with --delay trace:file=DEST)")
    convert.add_argument("--note", default="", help="first comment line, e.g. where the times come from")
    show = sub.add_parser("describe", help="shape and straggler figures of a trace")
    show.add_argument("trace", help=f"shipped name ({', '.join(SHIPPED)}) or path")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            F = convert_step_times(args.source, args.dest, args.note)
            print(f"wrote {args.dest}: {F.shape[0]} steps x {F.shape[1]} workers")
        F = load_factors(args.dest if args.command == "convert" else args.trace)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    figures = describe(F)
    print(f"{figures['steps']:.0f} steps x {figures['workers']:.0f} workers; worker / step median: "
          f"p90 {figures['p90']:.3f}, p99 {figures['p99']:.3f}, max {figures['max']:.3f}; slowest worker / "
          f"step median: {figures['slowest_median_step']:.3f} (median step), "
          f"{figures['slowest_p90_step']:.3f} (p90 step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
