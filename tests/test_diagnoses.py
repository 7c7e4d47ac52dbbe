"""Everyday mistakes end in one line that names the right cause (no traceback, no wrong diagnosis), through the
command line: a busy or foreign address, a bad run log or report path, a PEM file given for the wrong option,
data files numpy or a spreadsheet wrote, a missing extra, a value from the environment; and what the master
says at its start and end."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import trustme

from flexgc.v1 import coordinator_pb2_grpc as pb_grpc
from tests.helpers import job_config, one_line_error, run_cli, run_job

pytestmark = pytest.mark.slow


_one_line = one_line_error


def test_view_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])

        run = run_cli("view", str(tmp_path), "--port", port)

    _one_line(run, 2, f"cannot listen on 127.0.0.1:{port}", "another process has the port")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    run_job(job_config(out, workers=2, code="crc:s=1", iterations=3))
    return out


def test_report_names_a_run_log_line_that_is_not_json(finished: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = (finished / "run.jsonl").read_text().splitlines()
    lines.insert(2, '{"schema": "flexgc.run.v1", "iteration": 1, "outc')  # a line cut short
    (run_dir / "run.jsonl").write_text("\n".join(lines) + "\n")

    run = run_cli("report", str(run_dir), timeout_s=120)

    _one_line(run, 1, "run.jsonl: line 3 is not a JSON record")


def test_report_out_naming_a_directory_is_one_line_and_leaves_nothing(finished: Path, tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()

    run = run_cli("report", str(finished), "--out", str(folder), timeout_s=120)

    _one_line(run, 2, f"out='{folder}' is a directory", "report.html")
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob("*.tmp"))


def test_pre_hello_streams_at_the_end_of_a_job_leave_no_traceback(tmp_path: Path) -> None:
    # Prepare: a job of one worker, and three Work streams that never say hello while it runs
    master = subprocess.Popen([sys.executable, "-m", "flexgc", "master", "--workers", "1", "--code", "uncoded",
                               "--port", "0", "--iterations", "30", "--samples", "40", "--features", "3",
                               "--out", str(tmp_path / "run"), "--delay", "shifted-exp:a=1,mu=1000,unit_s=0.05"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    channel = None
    release = threading.Event()
    try:
        assert master.stdout is not None
        port = json.loads(master.stdout.readline())["port"]
        worker = subprocess.Popen([sys.executable, "-m", "flexgc", "worker", "--master", f"127.0.0.1:{port}",
                                   "--worker-id", "w0", "--log-level", "WARNING"])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.CoordinatorStub(channel)
        calls = [stub.Work(_never(release)) for _ in range(3)]

        # Execute: the job ends (30 iterations of ~50 ms) while the streams wait for their hello
        _, err = master.communicate(timeout=90)
    finally:
        release.set()
        for child in (master, worker):
            if child is not None and child.poll() is None:
                child.kill()
            if child is not None:
                child.wait(10)
        if channel is not None:
            channel.close()

    # Assert: gRPC had no handler to cancel when the server stopped
    assert master.returncode == 0, err
    assert "Traceback" not in err and "Exception not handled" not in err and "CancelledError" not in err, err
    del calls


def _never(release: threading.Event) -> Iterator[object]:
    """A request stream that sends nothing until `release`."""
    release.wait(90)
    yield from ()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    return {k: str(v) for k, v in paths.items()}


def test_a_private_key_given_as_the_ca_is_named_as_such(pki: dict[str, str]) -> None:
    run = run_cli("worker", "--master", "127.0.0.1:9", "--tls-ca", pki["key"], "--join-timeout-s", "3")

    _one_line(run, 2, f"tls_ca='{pki['key']}' holds a private key, not a certificate")


def test_a_certificate_given_as_the_masters_key_is_named_as_such(pki: dict[str, str]) -> None:
    run = run_cli("master", "--tls-cert", pki["cert"], "--tls-key", pki["cert"], "--port", "0")

    _one_line(run, 2, f"tls_key='{pki['cert']}' holds a certificate, not a private key")


def test_a_host_that_is_not_this_machines_is_named_as_such() -> None:
    run = run_cli("master", "--host", "192.0.2.77", "--port", "0")  # TEST-NET-1: no machine has it

    _one_line(run, 2, "192.0.2.77 is not an address of this machine")


def test_an_npz_without_y_says_which_arrays_it_has(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, X=np.zeros((10, 3)))

    run = run_cli("master", "--data", str(path), "--port", "0")

    _one_line(run, 2, "the .npz needs arrays 'X' and 'y' (it has X)")


def test_a_semicolon_csv_is_read_with_its_first_row_as_data(tmp_path: Path) -> None:
    # Prepare: what a spreadsheet with decimal commas exports: semicolons between the fields, no header
    path = tmp_path / "data.csv"
    rng = np.random.default_rng(0)
    rows = [f"{a:.3f};{b:.3f};{int(a + b > 0)}" for a, b in rng.standard_normal((40, 2))]
    path.write_text("\n".join(rows) + "\n")

    run = run_cli("master", "--data", str(path), "--port", "0", "--workers", "2", "--code", "uncoded",
                  "--join-timeout-s", "0.2", "--out", str(tmp_path / "run"), "--log-level", "INFO")

    # Assert: the data loaded (40 rows of 2 features, no header): the job then ends for want of workers
    _one_line(run, 1, "only 0 of 2 workers joined")
    assert "header" not in run.stderr
    job = json.loads((tmp_path / "run" / "job.json").read_text())
    assert job["d"] == 2 and job["data_fingerprint"], job  # logistic: one weight per feature


def test_a_decimal_comma_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,5;2,5;1\n0,5;1,0;0\n")

    run = run_cli("master", "--data", str(path), "--port", "0")

    _one_line(run, 2, "write decimals with a point (1.5, not 1,5)")


def test_the_cnn_demo_without_jax_names_the_jax_extra(tmp_path: Path) -> None:
    # Prepare: an interpreter where neither JAX nor scikit-learn can be imported (a plain `./dev.sh demo` venv)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nfor name in ('jax', 'sklearn'):\n"
                                           "    sys.modules[name] = None\n")

    run = run_cli("demo", "--model", "jax-cnn", "--iterations", "2", "--out", str(tmp_path / "demo"),
                  env={"PYTHONPATH": str(hide)})

    line = _one_line(run, 2, "needs JAX: pip install 'flexgc[jax]'")
    assert "flexgc[sklearn]" not in line


@pytest.mark.parametrize(("env", "needle"), [
    ({"FLEXGC_CODE": "crc:s=9"}, "code (from FLEXGC_CODE)='crc:s=9'"),
    ({"FLEXGC_DELAY": "bogus"}, "delay (from FLEXGC_DELAY)='bogus'"),
])
def test_a_value_from_the_environment_is_named_with_its_variable(env: dict[str, str], needle: str) -> None:
    run = run_cli("master", "--workers", "4", "--port", "0", env=env)

    _one_line(run, 2, needle)


def test_an_approximate_decode_reports_the_loss_of_the_rows_it_holds(tmp_path: Path) -> None:
    # Prepare: crc:s=1 on 4 slots, slots 0 and 1 joined but dead: the two left cover 3 of the 4 partitions, and
    # the deadline takes the least-squares approximation. At zero parameters every row's logistic loss is ln 2
    cfg = job_config(tmp_path, workers=4, code="crc:s=1", iterations=1, deadline_s=2.0, on_deadline="approximate",
                     lr=0.0, momentum=0.0)

    summary, records, _ = run_job(cfg, dead=(0, 1))

    # Assert: the mean loss of the rows decoded, not their sum divided by every row (0.52 here before)
    assert records[0]["outcome"] == "APPROXIMATE"
    assert summary["final_loss"] == pytest.approx(math.log(2), rel=1e-9)


def test_the_start_line_says_tls_and_token_and_warns_once_on_every_interface(tmp_path: Path) -> None:
    started = time.monotonic()
    open_run = run_cli("master", "--workers", "1", "--port", "0", "--join-timeout-s", "0.1", "--log-level", "INFO")
    local = run_cli("master", "--workers", "1", "--port", "0", "--join-timeout-s", "0.1", "--host", "127.0.0.1",
                    "--token", "t0k3n", "--log-level", "INFO")

    assert time.monotonic() - started < 60
    assert "tls=off token=off" in open_run.stderr and "tls=off token=on" in local.stderr
    assert open_run.stderr.count("serving on every interface (host=0.0.0.0) with neither --token nor TLS") == 1
    assert "serving on every interface" not in local.stderr
    assert "t0k3n" not in local.stderr
