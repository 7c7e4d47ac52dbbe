"""The report and the live view (issue 12): size and load time of a large report, the master's cost of being
watched, and how soon the live view shows an iteration.

    .venv/bin/python benchmarks/bench_report.py [--size] [--overhead] [--update] [--repeats 3] [--json F]

--size      a synthetic 2,000-iteration n = 64 run directory (tests/report/synth.py: the real schema, the
            delays a live run with the same code, delay spec and seed would inject), its report's file
            size and generation time, and the time headless Chromium takes to open it: `readyMs` is
            performance.now() when the page has drawn its timeline and every chart (a fresh profile each
            repeat), `step_ms` the redraw after one step.
--overhead  the same real job (LocalCluster) unwatched, watched by a `flexgc view` process polled the
            way the page polls it (every 0.5 s, from this process: a browser on another machine), and
            watched by that viewer plus a headless Chromium page on this machine; the order rotates per
            repeat. Two jobs: CPU-bound (`delay=none`, n = 8, 400 iterations) and demo-like (injected
            delays). Figures: master wall time and median / mean iteration latency from the run log, and
            the CPU seconds the viewer process and Chromium used.
--update    the delay from a record reaching run.jsonl (polled every 10 ms) to the live page showing
            that iteration (polled every 20 ms through the driver), demo-like job.
--screenshots DIR   docs/report.png (the report of RUN_DIR, default runs/demo: `./dev.sh demo` makes it)
            and docs/view.png (the live view during a demo-like job) into DIR.

Needs the dev extras (plotly, selenium) and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.report.* from the checkout

from bench_limits import machine, set_malloc_env

from tests.report import browser

READY = "return document.body.dataset.ready === '1' ? Number(document.body.dataset.readyMs) : null"
SHOWN = "return document.body.dataset.iteration === undefined ? null : Number(document.body.dataset.iteration)"


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _wait(condition: Any, timeout_s: float, interval_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"no result within {timeout_s} s")


def size_and_open(repeats: int, n: int = 64, iterations: int = 2000) -> dict[str, Any]:
    from flexgc.report import write_report
    from tests.report.synth import synthesize_run

    with tempfile.TemporaryDirectory(prefix="flexgc-report-size-") as tmp:
        run = synthesize_run(Path(tmp) / "run", n=n, iterations=iterations)
        started = time.perf_counter()
        page = write_report([run], Path(tmp) / "report.html")
        generate_s = time.perf_counter() - started
        ready_ms, wall_s, step_ms = [], [], []
        for rep in range(repeats):
            driver = browser.start(Path(tmp) / f"profile-{rep}")
            try:
                started = time.perf_counter()
                driver.get(page.as_uri())
                ready_ms.append(_wait(lambda d=driver: d.execute_script(READY), 120))
                wall_s.append(time.perf_counter() - started)
                step_ms.append(driver.execute_async_script(
                    "const done = arguments[0]; const t = performance.now();"
                    "window.flexgc.step(1).then(() => done(performance.now() - t));"))
                errors = browser.console_errors(driver)
            finally:
                driver.quit()
        return {"n": n, "iterations": iterations, "run_jsonl_MB": (run / "run.jsonl").stat().st_size / 1e6,
                "report_MB": page.stat().st_size / 1e6, "generate_s": generate_s,
                "open_ready_ms": _summary(ready_ms), "open_wall_s": _summary(wall_s), "step_ms": _summary(step_ms),
                "console_errors": errors}


def _cpu_s(pids: list[int]) -> float:
    """user + system CPU seconds of these processes so far (0 for any that has gone)."""
    import os

    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (Chromium is a tree: driver, browser, zygotes, renderers, GPU)."""
    children: list[str] = []
    for task in Path(f"/proc/{pid}/task").glob("*") if Path(f"/proc/{pid}").exists() else []:
        try:
            children += (task / "children").read_text().split()
        except OSError:
            pass
    return [pid, *(d for child in children for d in _descendants(int(child)))]


class Watcher:
    """`flexgc view RUN_DIR` in its own process, and a client of it: a headless Chromium page on this
    machine (`browser=True`) or a thread that polls /api/data as the page does."""

    def __init__(self, run_dir: Path, profile: Path, use_browser: bool = True) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "flexgc", "view", str(run_dir), "--port", "0"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "flexgc view: http://127.0.0.1:PORT/ ..."
        self.url = line.split()[2]
        self.driver: Any = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if use_browser:
            self.driver = browser.start(profile)
            self.driver.get(self.url)
            _wait(lambda: self.driver.execute_script("return document.body.dataset.ready === '1'"), 60)
        else:
            self._poller = threading.Thread(target=self._poll, daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        import urllib.request

        version, have = 0, 0
        while not self._stop.wait(0.5):
            with urllib.request.urlopen(f"{self.url}api/data?v={version}&have={have}", timeout=10) as resp:
                body = json.loads(resp.read())
            if body["changed"]:
                version, have = body["version"], len(body["runs"][0]["iteration"])

    def cpu_s(self) -> dict[str, float]:
        return {"viewer_cpu_s": _cpu_s([self.proc.pid]),
                "chromium_cpu_s": _cpu_s(_descendants(self.driver.service.process.pid)) if self.driver else 0.0}

    def close(self) -> None:
        try:
            self._stop.set()
            if self._poller is not None:
                self._poller.join(10)
            if self.driver is not None:
                self.driver.quit()
        finally:
            self.proc.terminate()
            self.proc.wait(10)


def _job(out: Path, kind: str) -> Any:
    from flexgc.common.config import master_config

    common: dict[str, Any] = dict(host="127.0.0.1", port=0, workers=8, code="nested:levels=0,1,2,3", out=str(out),
                                  checkpoint_every=0, deadline_s=30.0, on_deadline="fail", join_timeout_s=120.0)
    if kind == "cpu-bound":
        return master_config(**common, iterations=400, delay="none", samples=800, features=50)
    return master_config(**common, iterations=60, delay="shifted-exp:a=1,mu=1,p=0.03,unit_s=0.2", delay_seed=1,
                         samples=20_000, features=100)


def run_watched(kind: str, mode: str, tmp: Path, tag: str, on_running: Any = None) -> dict[str, Any]:
    """One job; mode: unwatched, viewer (polled over HTTP from here) or browser (viewer + Chromium here)."""
    from flexgc.harness.local import LocalCluster
    from flexgc.master.accounting import read_run_log

    out = tmp / f"{kind}-{tag}"
    cfg = _job(out, kind)
    watcher = Watcher(out, tmp / f"profile-{tag}", use_browser=mode == "browser") if mode != "unwatched" else None
    cpu: dict[str, float] = {}
    try:
        before = watcher.cpu_s() if watcher else {}
        with LocalCluster(cfg) as cluster:
            cluster.start_master(timeout_s=120.0)
            cluster.start_workers()
            if on_running is not None:
                on_running(cluster, out, watcher)
            rc = cluster.wait_master(600)
        if watcher:
            cpu = {k: v - before[k] for k, v in watcher.cpu_s().items()}
        if rc != 0:
            raise RuntimeError(f"master exit code {rc}")
    finally:
        if watcher is not None:
            watcher.close()
    summary = json.loads((out / "summary.json").read_text())
    lat = [r["latency_ms"] for r in read_run_log(out / "run.jsonl")[5:] if r["latency_ms"] is not None]
    return {"wall_s": summary["wall_s"], "median_ms": statistics.median(lat), "mean_ms": statistics.fmean(lat),
            **cpu}


MODES = ("unwatched", "viewer", "browser")


def overhead(repeats: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flexgc-report-overhead-") as tmp:
        for kind in ("cpu-bound", "demo-like"):
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
            for rep in range(repeats):
                for mode in MODES[rep % 3:] + MODES[:rep % 3]:
                    runs[mode].append(run_watched(kind, mode, Path(tmp), f"{mode}-{rep}"))
                    print(f"  {kind} {mode} {rep}: {runs[mode][-1]}", flush=True)
            result[kind] = {mode: {key: _summary([r[key] for r in rs]) for key in rs[0]} for mode, rs in runs.items()}
            for mode in MODES[1:]:
                result[kind][f"{mode}_wall_ratio_per_repeat"] = [w["wall_s"] / u["wall_s"] for w, u in
                                                                 zip(runs[mode], runs["unwatched"])]
    return result


def update_latency() -> dict[str, Any]:
    seen_file: dict[int, float] = {}
    page: list[tuple[float, int]] = []  # (when, iteration shown)

    def look(watcher: Watcher) -> None:
        shown = watcher.driver.execute_script(SHOWN)
        if shown is not None:
            page.append((time.monotonic(), int(shown)))

    def follow(cluster: Any, out: Path, watcher: Watcher) -> None:
        stop = threading.Event()

        def tail_file() -> None:
            log = out / "run.jsonl"
            while not stop.is_set():
                if log.exists():
                    count = log.read_bytes().count(b"\n")
                    now = time.monotonic()
                    for i in range(count):
                        seen_file.setdefault(i, now)
                stop.wait(0.01)

        thread = threading.Thread(target=tail_file, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 300
            while cluster.master.is_alive() and time.monotonic() < deadline:
                look(watcher)
                time.sleep(0.02)
            end = time.monotonic() + 5
            while (not page or page[-1][1] < max(seen_file, default=-1)) and time.monotonic() < end:
                look(watcher)
                time.sleep(0.02)
        finally:
            stop.set()
            thread.join(5)

    with tempfile.TemporaryDirectory(prefix="flexgc-report-update-") as tmp:
        run_watched("demo-like", "browser", Path(tmp), "update", on_running=follow)
    # iteration i counts as shown once the page shows i or a newer one (it follows the newest)
    delays = [next(t for t, shown in page if shown >= i and t >= t_file) - t_file for i, t_file in seen_file.items()
              if any(shown >= i and t >= t_file for t, shown in page)]
    return {"iterations_written": len(seen_file), "iterations_shown": len(delays),
            "delay_s": _summary(delays) if delays else None,
            "p90_s": sorted(delays)[int(0.9 * (len(delays) - 1))] if delays else None}


def screenshots(folder: Path, run_dir: Path) -> list[Path]:
    from flexgc.report import write_report

    folder.mkdir(parents=True, exist_ok=True)
    shots = [folder / "report.png", folder / "view.png"]
    with tempfile.TemporaryDirectory(prefix="flexgc-report-shots-") as tmp:
        page = write_report([run_dir], Path(tmp) / "report.html")
        driver = browser.start(Path(tmp) / "profile")
        try:
            driver.set_window_size(1400, 1300)
            driver.get(page.as_uri())
            _wait(lambda: driver.execute_script(READY), 60)
            driver.save_screenshot(str(shots[0]))
        finally:
            driver.quit()

        def shoot(cluster: Any, out: Path, watcher: Watcher) -> None:
            watcher.driver.set_window_size(1400, 1000)
            _wait(lambda: (watcher.driver.execute_script(SHOWN) or 0) >= 20, 120)
            watcher.driver.save_screenshot(str(shots[1]))

        run_watched("demo-like", "browser", Path(tmp), "shots", on_running=shoot)
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", action="store_true")
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--update", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--screenshots", type=Path, metavar="DIR")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="the run --screenshots reports")
    args = parser.parse_args()
    if args.screenshots:
        if browser.missing():
            print(f"bench_report: {browser.missing()}", file=sys.stderr)
            return 2
        print("screenshots:", *screenshots(args.screenshots, args.run_dir))
        return 0
    if not (args.size or args.overhead or args.update):
        args.size = args.overhead = args.update = True
    reason = browser.missing()
    if reason:
        print(f"bench_report: {reason}", file=sys.stderr)
        return 2
    set_malloc_env(True)
    result: dict[str, Any] = {"machine_start": machine()}
    if args.size:
        result["size"] = size_and_open(args.repeats)
        print("size:", json.dumps(result["size"], indent=1), flush=True)
    if args.overhead:
        result["overhead"] = overhead(args.repeats)
        print("overhead:", json.dumps(result["overhead"], indent=1), flush=True)
    if args.update:
        result["update"] = update_latency()
        print("update:", json.dumps(result["update"], indent=1), flush=True)
    result["machine_end"] = machine()
    print("machine:", result["machine_start"], "->", result["machine_end"]["loadavg_1m"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
