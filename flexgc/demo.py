"""`flexgc demo`: a master in this process and n worker processes on loopback, a short job with a nested
code and injected delays, a live progress bar, and a comparison with what CRC(s_max) and the uncoded
scheme would have taken on exactly the same delay realization (docs/design.md §3.1: same seeds, same
delays)."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from pathlib import Path

import numpy as np

from flexgc.common.codes import parse_code
from flexgc.common.config import master_config, resolve_adapt
from flexgc.common.delays import parse_delay
from flexgc.common.models import parse_model
from flexgc.master.hooks import IterationInfo
from flexgc.master.rundir import RunDir, job_identity


def _fmt(values: np.ndarray) -> tuple[str, str, str]:
    finite = values[np.isfinite(values)]
    stalled = values.size - finite.size
    mean = f"{finite.mean():8.1f}" if finite.size else "     n/a"
    med = f"{np.median(values):8.1f}" if np.isfinite(np.median(values)) else "     inf"
    return mean, med, f"{stalled:d}" if stalled else "-"


def default_out(model: str) -> str:
    """The demo's run directory unless --out says otherwise: one per model (a run directory holds one job)."""
    return "runs/demo" if model == "logistic" else "runs/demo-" + "".join(
        c if c.isalnum() or c in "-_." else "-" for c in model)


def run_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from flexgc.api import Job

    if args.log_level == "INFO":  # the default: keep the demo's screen to the progress bar and the table
        logging.getLogger("flexgc").setLevel(logging.WARNING)
    n = args.workers
    code = parse_code(args.code, n)
    delay = parse_delay(args.delay)
    delay.check_slots(n)
    model = getattr(args, "model", None) or "logistic"
    out = Path(args.out or default_out(model))
    jax = parse_model(model).needs_jax  # a JAX network trains on digits with Adam unless told otherwise
    data = getattr(args, "data", None) or ("sklearn:digits" if jax else "synthetic")
    optimizer = getattr(args, "optimizer", None) or ("adam:lr=3e-3" if jax else "gd")
    adapt = resolve_adapt(getattr(args, "adapt", None) or "auto", code.family, n)
    cfg = master_config(host="127.0.0.1", port=0, workers=n, code=code.spec, iterations=args.iterations,
                        delay=delay.spec, delay_seed=args.delay_seed, out=str(out), samples=20_000,
                        features=100, deadline_s=10.0 if not jax else 60.0, on_deadline="approximate",
                        checkpoint_every=0, model=model, data=data, optimizer=optimizer, adapt=adapt)
    what = "logistic regression 20000x100" if (model, data) == ("logistic", "synthetic") else f"{model} on {data}"
    adapting = "" if adapt == "off" else f"; adapting: {adapt}"
    print(f"flexgc demo: n={n} workers, code {code.spec} (tolerates {code.s_max} stragglers{adapting}), "
          f"delay {delay.spec}, {args.iterations} iterations, {what}")
    RunDir(out).clear_own_run(job_identity(cfg))  # a demo starts fresh, but never over another job's run
    bar = tqdm(total=args.iterations, unit="it", disable=args.no_progress, file=sys.stderr,
               bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} [{elapsed}] {postfix}")

    def progress(info: IterationInfo) -> None:
        bar.update(1)
        bar.set_postfix_str(f"loss={info.loss if info.loss is None else round(info.loss, 4)} "
                            f"latency={info.latency_ms:.0f}ms level={info.level} stragglers={len(info.stragglers)}")

    try:  # the master here, a worker process per slot (the API's local cluster)
        run = Job.from_config(cfg, callbacks=[progress]).run_local(processes=True)
    finally:
        bar.close()
    summary, records = run.summary, run.records
    if summary.get("interrupted"):
        by = summary.get("interrupted_by") or "SIGINT"
        print(f"demo interrupted ({by}) after {len(records)} of {args.iterations} iterations; what ran is in {out}",
              file=sys.stderr)
        return 128 + int(signal.Signals[by])
    from flexgc.report.data import crc_comparison, measured_compute_ms, model_comparison, saving_sentence

    iters = [r["iteration"] for r in records]
    measured = np.array([r["latency_ms"] if r["outcome"] != "FAILED" else math.inf for r in records])
    smax = code.s_max
    compute_ms = measured_compute_ms(records)  # the models take the compute the live run measured: like with like
    models = model_comparison(code, delay, args.delay_seed, iters, compute_ms)
    rows = [(f"{code.spec} (measured, live)", measured), *models]
    print()
    width = max(48, *(len(name) for name, _ in rows))
    print(f"{'scheme':{width}s} {'mean ms':>8s} {'median':>8s} {'stalls':>8s}")
    for name, values in rows:
        mean, med, stalled = _fmt(values)
        print(f"{name:{width}s} {mean} {med} {stalled:>8s}")
    print("(stalls: iterations the scheme could never decode, because a worker it cannot do without was "
          "unresponsive;\n the mean is over the other iterations)")
    if compute_ms > 0:
        print(f"(model rows: the run's injected delays plus its measured compute, {compute_ms:.3g} ms a partition; "
              f"communication excluded)")
    lat = summary["latency_ms"]
    crc_values = crc_comparison(code, models)  # none when the run's code is CRC(s_max) itself
    crc = crc_values[np.isfinite(crc_values)] if crc_values is not None else None
    print()
    print(f"iterations: {summary['exact_iterations']} exact, {summary['approximate_iterations']} approximate, "
          f"{summary['failed_iterations']} failed; final loss {summary['final_loss']:.5f}; "
          f"mean load per worker {summary['mean_load']:.3f} (CRC(s={smax}) always {(smax + 1) / n:.3f}); "
          f"levels used {summary['level_use']}")
    if summary.get("adapt"):
        print(f"adaptive placement: {summary['adapt']['switches']} plan switches in {summary['adapt']['checks']} "
              f"checks, last plan {summary['adapt']['code']}")
    if lat["mean"] is not None and crc is not None and crc.size:
        print(saving_sentence(lat["mean"], smax, float(crc.mean()), compute_ms))
    print(f"run log: {out / 'run.jsonl'}  summary: {out / 'summary.json'}")
    from flexgc.report import write_report_if_available

    report = write_report_if_available([out], out / "report.html")
    print(f"report: {report} (open it in a browser)" if report else
          f"report: pip install 'flexgc[report]', then flexgc report {out}")
    return 0 if summary["failed_iterations"] == 0 else 1
