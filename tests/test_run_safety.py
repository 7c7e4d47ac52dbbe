"""Run safety through the real command line: a run directory is never lost or mixed, everyday mistakes end
in one line and the documented exit code (2: configuration, 1: runtime, 74: storage, 130/143: signals),
and a master shows its progress."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import job_config, master_args, one_line_error, read_records, run_cli, run_job, wait_for

pytestmark = pytest.mark.slow


_one_line_error = one_line_error


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes], list[str]]:
    out = tmp_path_factory.mktemp("finished")
    cfg = job_config(out, workers=2, code="crc:s=1", iterations=3, checkpoint_every=1)
    run_job(cfg)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    return out, files, master_args(cfg)


def test_a_run_of_another_job_is_refused_naming_each_difference(
        finished_run: tuple[Path, dict[str, bytes], list[str]]) -> None:
    out, files, args = finished_run
    changed = [a for a in args if a not in ("--features", "6")] + ["--features", "5", "--lr", "0.1"]

    run = run_cli("master", *changed, "--join-timeout-s", "0.1")

    line = _one_line_error(run, 2, f"out='{out}' holds a run of another job", "features: 6 -> 5", "lr: 0.5 -> 0.1",
                           "d: 6 -> 5", "--new-run")
    assert "code:" not in line and "workers:" not in line  # only the fields that differ
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files  # nothing touched


def test_resuming_a_static_run_with_an_adapting_master_is_refused_not_trained_on_other_data(
        finished_run: tuple[Path, dict[str, bytes], list[str]]) -> None:
    # an adapting job runs on k = 4n partitions and synthetic data is drawn per partition: another dataset
    out, files, args = finished_run
    changed = [a for a in args if a not in ("--adapt", "off")]  # the default, auto: adapting crc:s=1

    run = run_cli("master", *changed, "--join-timeout-s", "0.1")

    _one_line_error(run, 2, f"out='{out}' holds a run of another job", "code: 'crc:s=1' -> 'crc:s=1,split=4'")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files  # nothing touched


def test_new_run_moves_the_old_run_aside_and_deletes_nothing(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, workers=2, code="uncoded", iterations=2)
    run_job(cfg)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    run = run_cli("master", *master_args(cfg), "--features", "5", "--new-run", "--join-timeout-s", "0.1",
                  "--deadline-s", "0.2", "--iterations", "1")

    assert run.returncode == 1, run.stderr            # its one iteration has no worker: FAILED at the deadline
    (aside,) = tmp_path.glob("previous-*")
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == files
    assert json.loads((tmp_path / "job.json").read_text())["features"] == 5
    assert "the previous run's files in" in run.stderr


def test_without_out_the_master_says_once_that_nothing_is_saved(tmp_path: Path) -> None:
    run = run_cli("master", "--workers", "2", "--code", "uncoded", "--iterations", "1", "--port", "0",
                  "--join-timeout-s", "0.1", "--deadline-s", "0.1", cwd=tmp_path)

    assert run.stderr.count("no --out: nothing of this job will be saved") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", ["port", "metrics-port"])
def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, which: str) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        args = ["--port", port] if which == "port" else ["--port", "0", "--metrics-port", port]

        run = run_cli("master", "--workers", "2", "--code", "uncoded", "--out", str(tmp_path / "run"), *args)

    _one_line_error(run, 2, which.replace("-", "_"), port)
    assert not (tmp_path / "run").exists()            # the ports are bound before the run directory is made


@pytest.mark.parametrize("command", [["master", "--workers", "2", "--code", "uncoded"], ["demo"], ["bench"]])
def test_out_naming_a_file_is_one_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")

    run = run_cli(*command, "--out", str(afile))

    _one_line_error(run, 2, str(afile), "is a file")
    assert afile.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
                    reason="needs root and setpriv to run the command as an unprivileged user")
def test_out_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    tmp_path.chmod(0o755)
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                          "flexgc", "master", "--workers", "2", "--code", "uncoded", "--out", str(locked / "run")],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/tmp"})

    _one_line_error(run, 2, str(locked / "run"), "cannot create it")


def _has_records(out: Path, count: int) -> bool:
    return len(read_records(out)) >= count


def test_sigint_and_sigterm_exit_130_and_143_and_the_progress_shows(tmp_path: Path) -> None:
    for sig, rc in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / sig.name
        proc = subprocess.Popen([sys.executable, "-m", "flexgc", "master", "--log-level", "INFO", "--workers", "2",
                                 "--code", "uncoded", "--port", "0", "--out", str(out), "--iterations", "100000",
                                 "--samples", "40", "--features", "3", "--checkpoint-every", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            assert proc.stdout is not None
            port = json.loads(proc.stdout.readline())["port"]
            workers = [subprocess.Popen([sys.executable, "-m", "flexgc", "worker", "--master", f"127.0.0.1:{port}",
                                         "--worker-id", f"w{i}", "--log-level", "WARNING"]) for i in range(2)]
            wait_for(functools.partial(_has_records, out, 3), 60, "3 iterations")
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
        finally:
            children: list[subprocess.Popen[Any]] = [proc, *workers]
            for child in children:
                if child.poll() is None:
                    child.kill()
                child.wait(10)
        assert proc.returncode == rc, err
        assert "progress iteration=0 done=1/100000 loss=" in err and "stragglers=" in err
        assert f"interrupted by {sig.name}:" in err
        assert json.loads((out / "summary.json").read_text())["interrupted_by"] == sig.name


def test_log_level_is_accepted_after_the_subcommand() -> None:
    run = run_cli("master", "--log-level", "DEBUG", "--port", "70000")

    _one_line_error(run, 2, "port=70000; must be <= 65535")


def test_a_worker_names_the_address_it_cannot_reach_and_gives_up_after_its_join_timeout() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]            # bound, never listening: connection refused

        run = run_cli("worker", "--master", f"127.0.0.1:{port}", "--worker-id", "w0", "--join-timeout-s", "1")

    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    warnings = [line for line in run.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, run.stderr        # the same reason again is INFO, not another warning
    assert f"cannot join master=127.0.0.1:{port}: connection refused by 127.0.0.1:{port}" in warnings[0]
    assert "giving up: no join with master" in run.stderr and "--join-timeout-s=1" in run.stderr
    waited = re.search(r"giving up: no join with master=\S+ for (\d+\.\d) s", run.stderr)
    assert waited is not None and float(waited.group(1)) >= 1.0, run.stderr  # not before the timeout it names


@pytest.mark.parametrize(("name", "content", "needles"), [
    ("text.csv", "1,2,0\n3,x,1\n", ["column 2 holds text ('x' on line 2)"]),
    ("named.csv", "a,b,label\n1,2,0\n3,oops,1\n", ["column 2 ('b') holds text ('oops' on line 3)"]),
    ("uneven.csv", "1,2,0\n3,1\n", ["line 2 has 2 columns, the file 3"]),
    ("nan.csv", "1,2,0\n3,nan,1\n", ["nan in sample 2, feature column 2 (1-based)"]),
    ("fake.npz", "not a zip", ["is not a readable .npz archive", "numpy.savez"]),
])
def test_bad_data_files_are_one_line_naming_the_place(tmp_path: Path, name: str, content: str,
                                                      needles: list[str]) -> None:
    (tmp_path / name).write_text(content)

    run = run_cli("master", "--workers", "2", "--code", "uncoded", "--data", str(tmp_path / name), "--port", "0")

    _one_line_error(run, 2, f"data='{tmp_path / name}'", *needles)


def test_a_csv_header_row_is_skipped_and_said(tmp_path: Path) -> None:
    from flexgc.common.models import load_dataset

    (tmp_path / "h.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")

    X, y = load_dataset(str(tmp_path / "h.csv"), "logistic")

    assert X.tolist() == [[1.0, 2.0], [3.0, 4.0]] and y.tolist() == [0.0, 1.0]


@pytest.mark.parametrize(("plot", "needle"), [("missing-dir/x.png", "the folder"), ("x.gif", "unknown format .gif")])
def test_analyze_plot_errors_come_before_the_computation(tmp_path: Path, plot: str, needle: str) -> None:
    # 10^8 trials would take many minutes: the error must come first
    run = run_cli("analyze", "--trials", "100000000", "--plot", str(tmp_path / plot), timeout_s=30)

    _one_line_error(run, 2, f"plot='{tmp_path / plot}'", needle)


def test_help_shows_the_defaults_of_demo_health_soak_and_codes_check() -> None:
    texts = {cmd: " ".join(run_cli(*cmd.split(), "--help").stdout.split())
             for cmd in ("demo", "health", "soak", "codes check")}

    assert "--iterations ITERATIONS iterations of the job (default: 30)" in texts["demo"]
    assert "(default: 127.0.0.1:50051)" in texts["health"]
    assert "--fault-every FAULT_EVERY iterations between faults (default: 5)" in texts["soak"]
    assert "--seed SEED (default: 0)" in texts["codes check"]


def test_ctrl_c_on_a_working_worker_exits_0_without_a_traceback(tmp_path: Path) -> None:
    master = subprocess.Popen([sys.executable, "-m", "flexgc", "master", "--workers", "1", "--code", "uncoded",
                               "--port", "0", "--iterations", "100000", "--samples", "20", "--features", "3",
                               "--out", str(tmp_path / "run"), "--log-level", "WARNING"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    worker: subprocess.Popen[str] | None = None
    try:
        assert master.stdout is not None
        port = json.loads(master.stdout.readline())["port"]
        worker = subprocess.Popen([sys.executable, "-m", "flexgc", "worker", "--master", f"127.0.0.1:{port}",
                                   "--worker-id", "w0", "--log-level", "INFO"], stderr=subprocess.PIPE, text=True)
        assert worker.stderr is not None
        for line in worker.stderr:                        # wait for the join (bounded by the test timeout)
            if "joined slot=0" in line:
                break
        wait_for(functools.partial(_has_records, tmp_path / "run", 2), 60, "2 iterations")  # it is working

        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=30)
    finally:
        for child in (master, worker):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(10)

    assert worker.returncode == 0, err
    assert "Traceback" not in err and "Bad file descriptor" not in err, err


def test_the_demo_draws_its_bar_on_stderr_and_says_when_it_is_interrupted(tmp_path: Path) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "flexgc", "demo", "--workers", "3", "--code", "crc:s=1",
                             "--iterations", "100000", "--out", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(functools.partial(_has_records, tmp_path / "demo", 3), 90, "3 iterations")
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)

    assert demo.returncode == 130, err
    assert "demo interrupted (SIGINT) after" in err and "of 100000 iterations" in err
    assert "%|" not in out and "%|" in err  # the progress bar is on stderr only
    assert "Traceback" not in err
