"""Who straggles, by worker id and host, through the command line: every iteration records which worker and
machine held each slot, the master's progress line and summary name the slowest worker with its scores, the
metrics carry them; and the slots of one machine are placed so that losing it stays within the tolerance
(failure domains), with a warning naming the machine where that cannot be."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import read_records, wait_for
from tests.master.test_service_fuzz import free_port

pytestmark = pytest.mark.slow


def _master(out: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "flexgc", "master", "--port", "0", "--out", str(out),
                             "--checkpoint-every", "0", "--samples", "400", "--features", "5", "--log-level", "INFO",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["port"]


def _worker(port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "flexgc", "worker", "--master", f"127.0.0.1:{port}",
                             "--log-level", "WARNING", "--join-timeout-s", "60", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(*children: subprocess.Popen[str] | None) -> None:
    for child in children:
        if child is not None and child.poll() is None:
            child.kill()
        if child is not None:
            child.wait(10)


def test_the_slowest_worker_is_named_by_id_and_host_in_the_log_summary_and_metrics(tmp_path: Path) -> None:
    # Prepare: 4 workers on "machines" m0..m3; w2's own delay makes it slow in every iteration
    metrics_port = free_port()
    master, port = _master(tmp_path, "--workers", "4", "--code", "crc:s=1", "--iterations", "24",
                           "--metrics-port", str(metrics_port), "--linger")
    workers = [_worker(port, "--worker-id", f"w{i}", "--node", f"m{i}", "--slot", str(i),
                       *(["--delay", "shifted-exp:a=1,mu=1000,unit_s=0.06"] if i == 2 else [])) for i in range(4)]
    try:
        # Execute: the job runs to its end and lingers, metrics still served
        wait_for(lambda: (tmp_path / "summary.json").exists(), 120, "the job's end")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        master.send_signal(signal.SIGTERM)
        _, err = master.communicate(timeout=60)
    finally:
        _stop(master, *workers)

    # Assert: every record says who held each slot
    records = read_records(tmp_path)
    assert len(records) == 24
    held = [(w["slot"], w["worker_id"], w["host"]) for r in records for w in r["workers"] if w["task_sent_ms"]
            is not None]
    assert len(held) >= 3 * 24 and all((wid, host) == (f"w{slot}", f"m{slot}") for slot, wid, host in held), held
    # the progress line names the slowest worker and how much slower it is than the median one
    slowest = re.findall(r"slowest=(\S+) slowest_vs_median=([\d.]+) window=(\d+)", err)
    assert slowest, err
    who, factor, _window = slowest[-1]
    assert who == "w2@m2" and float(factor) > 2.0, slowest[-1]
    # the summary scores every worker
    by_worker = {w["worker_id"]: w for w in json.loads((tmp_path / "summary.json").read_text())["by_worker"]}
    assert set(by_worker) == {"w0", "w1", "w2", "w3"}
    assert by_worker["w2"]["relative"] > 2.0 and by_worker["w2"]["host"] == "m2"
    assert max(by_worker, key=lambda w: by_worker[w]["relative"]) == "w2"
    assert by_worker["w2"]["straggles"] >= 12  # the decode did without it in most iterations
    # the metrics label slots and scores with the worker and its host
    assert 'flexgc_worker_info{host="m2",slot="2",worker_id="w2"} 1.0' in metrics, metrics
    score = re.search(r'flexgc_worker_straggler_score\{host="m2",score="relative",worker_id="w2"\} ([\d.]+)',
                      metrics)
    assert score and float(score.group(1)) > 2.0
    assert re.search(r'flexgc_worker_straggles_total\{host="m2",worker_id="w2"\} [1-9]', metrics)


def _slots_by_host(out: Path) -> dict[str, set[int]]:
    hosts: dict[str, set[int]] = {}
    for w in read_records(out)[0]["workers"]:
        hosts.setdefault(w["host"], set()).add(w["slot"])
    return hosts


def test_slots_of_one_machine_are_placed_so_that_losing_it_is_tolerated(tmp_path: Path) -> None:
    # Prepare: FRC(s=1) on 8 slots: pairs {0,1}, {2,3}, ... hold the same partitions. Two machines of 4 slots:
    # one whose slots make whole pairs loses data with it; one slot of each pair per machine loses none
    master, port = _master(tmp_path, "--workers", "8", "--code", "frc:s=1", "--iterations", "2")
    first = _worker(port, "--slots", "4", "--worker-id", "a", "--node", "nodeA")
    second = None
    try:
        wait_for(lambda: "host=nodeA" in _joined(master), 60, "nodeA's first join")  # nodeA comes first
        second = _worker(port, "--slots", "4", "--worker-id", "b", "--node", "nodeB")
        _, err = master.communicate(timeout=120)
    finally:
        _stop(master, first, second)

    # Assert: neither machine holds a whole pair, and nothing was warned
    assert master.returncode == 0, err
    hosts = _slots_by_host(tmp_path)
    assert set(hosts) == {"nodeA", "nodeB"}
    for host, slots in hosts.items():
        assert len(slots) == 4 and not any({2 * g, 2 * g + 1} <= slots for g in range(4)), (host, slots)
    assert "failure domain" not in err


_JOINED: list[str] = []


def _joined(master: subprocess.Popen[str]) -> str:
    """The master's join log lines so far (read line by line from its stderr)."""
    assert master.stderr is not None
    os.set_blocking(master.stderr.fileno(), False)
    line = master.stderr.readline()
    while line:
        _JOINED.append(line)
        line = master.stderr.readline()
    return "".join(_JOINED)


def test_a_machine_that_holds_more_than_the_tolerance_is_named_once(tmp_path: Path) -> None:
    # Prepare: CRC(s=1) on 3 slots: any 2 lost leave one slot, which holds 2 of the 3 partitions. hostA runs 2
    # slots (it can never be lost), hostB one
    master, port = _master(tmp_path, "--workers", "3", "--code", "crc:s=1", "--iterations", "2")
    workers = [_worker(port, "--slots", str(count), "--worker-id", name, "--node", name)
               for name, count in (("hostA", 2), ("hostB", 1))]
    try:
        _, err = master.communicate(timeout=120)
    finally:
        _stop(master, *workers)

    # Assert: hostA is named once, at WARNING, with its slots; hostB is not
    assert master.returncode == 0, err
    warnings = [line for line in err.splitlines() if "failure domain host=" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0] and "failure domain host=hostA:" in warnings[0], err
    assert len(_slots_by_host(tmp_path)["hostA"]) == 2
