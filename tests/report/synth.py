"""A synthetic run directory with the real schema, for measuring the report's size and load time on runs
too long to produce on a 2-core machine (2,000 iterations at n = 64). Each record is laid out from the
model: the same deterministic delays a live run with this code, delay and seed would inject, a fixed
compute time per partition and upload time per message, and the decode at the model's decode instant
plus that overhead. Not a substitute for a real run anywhere else."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from flexgc.common.analysis import decode_times
from flexgc.common.codes import parse_code
from flexgc.common.delays import parse_delay, realized_durations

SCHEMA = "flexgc.run.v1"


def synthesize_run(out: Path, n: int = 64, iterations: int = 2000, code_spec: str = "nested:levels=0,1,2,3",
                   delay_spec: str = "shifted-exp:a=1,mu=1,p=0.03,unit_s=0.4", seed: int = 1,
                   compute_ms: float = 0.6, upload_ms: float = 0.3) -> Path:
    code = parse_code(code_spec, n)
    model = parse_delay(delay_spec)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    latencies = []
    for start in range(0, iterations, 250):
        its = list(range(start, min(iterations, start + 250)))
        durations = realized_durations(code, model, seed, its)
        ideal_ms = decode_times(code, durations).latency * 1e3
        for t, it in enumerate(its):
            lat = ideal_ms[t] + upload_ms + compute_ms * (code.s_max + 1)
            finite = math.isfinite(lat)
            workers = []
            used = []
            for slot in range(n):
                d = durations[t, slot, :len(code.order[slot])] * 1e3
                ends = np.cumsum(d + compute_ms)
                done = int(np.sum(ends <= lat)) if finite else len(d)
                arrivals: list[float | None] = [None] * code.n_levels
                for level in range(code.n_levels):
                    m = int(code.prefix[level, slot])
                    if m <= done:
                        arrivals[level] = round(float(ends[m - 1] + upload_ms), 3)
                        used.append([slot, level, 0.5])
                workers.append({
                    "task_sent_ms": 0.1, "first_byte_ms": arrivals[0], "level_done_ms": arrivals,
                    "result_arrival_ms": arrivals, "cancel_sent_ms": round(lat, 3) if finite else None,
                    "cancel_ack_ms": round(lat + 1.5, 3) if finite else None, "task_done_ms": None,
                    "partitions_done": done, "finished": done == len(d), "compute_ms": [compute_ms] * done,
                    "delay_ms": [round(float(x), 3) for x in d[:done]], "bytes_up": 808 * done, "bytes_down": 800,
                    "load": done / code.k, "slot": slot})
            latencies.append(lat)
            used_slots = {u[0] for u in used}
            lines.append(json.dumps({
                "schema": SCHEMA, "iteration": it, "outcome": "EXACT" if finite else "FAILED",
                "latency_ms": round(lat, 3) if finite else None, "decode_ms": 0.1,
                "level": max((u[1] for u in used), default=None), "rows_used": used, "residual": 1e-15,
                "cond": 3.7, "loss": 0.69 * math.exp(-it / 2000), "stragglers": sorted(set(range(n)) - used_slots),
                "bytes_up": sum(w["bytes_up"] for w in workers), "bytes_down": 800 * n,
                "cancel_latency_ms": 1.5 if finite else None, "stale_results": 0, "duplicates": 0,
                "verify_rel_err": None, "workers": workers}))
    (out / "run.jsonl").write_text("\n".join(lines) + "\n")
    ok = [x for x in latencies if math.isfinite(x)]
    (out / "summary.json").write_text(json.dumps({
        "code": code.spec, "n": n, "iterations": iterations, "exact_iterations": len(ok),
        "approximate_iterations": 0, "failed_iterations": iterations - len(ok),
        "latency_ms": {"mean": float(np.mean(ok))}, "d": 100, "model": "logistic", "samples": 20000,
        "dtype": "float64", "delay": model.spec, "delay_seed": seed, "wall_s": None, "synthetic": True}, indent=1))
    return out
