"""Benchmark of the Monte Carlo latency analysis (not a test).

    .venv/bin/python benchmarks/bench_analysis.py [--trials 200000] [--repeats 5]

Times `simulate` (sampling + decode instants + summary) of nested n=10, s_max=4 under model A with
a=1, mu=1, per decoding policy, and prints the median of several repeats. Each repeat builds a fresh
`Code` (so the any-span decoder cache starts cold) and uses its own seed. Target (issue 2): 200,000
trials of the per-level nested code in under 2 s on the 2-vCPU development machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from flexgc.common.analysis import simulate
from flexgc.common.codes import parse_code
from flexgc.common.delays import parse_delay

CASES = ("nested:smax=4,decoder=per-level", "nested:smax=4", "nested:levels=0,2,4", "crc:s=3",
         "multimessage:smax=4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    model = parse_delay("shifted-exp:a=1,mu=1")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, trials={args.trials}, "
          f"repeats={args.repeats}, n={args.workers}, delay={model.spec}")
    for spec in CASES:
        parse_code(spec, args.workers)  # warm the construction cache; not part of the timing
        seconds, mean = [], 0.0
        for repeat in range(args.repeats):
            code = parse_code(spec, args.workers)
            started = time.perf_counter()
            mean = simulate(code, model, args.trials, seed=repeat).mean
            seconds.append(time.perf_counter() - started)
        print(f"{spec:34s} median {statistics.median(seconds):6.3f} s  (min {min(seconds):.3f}, "
              f"max {max(seconds):.3f})  mean latency {mean:.4f}")


if __name__ == "__main__":
    main()
