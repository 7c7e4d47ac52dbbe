"""A real flexgc job across network namespaces (`flexgc.harness.cluster`), each node started with the command
and environment that Docker Compose resolves from the repository's compose.yaml.

- One worker's uplink is rate-limited (tbf, 20 Mbit/s) while its coded messages are 4 MB: the nested code
  decodes every iteration without it, and the run log shows the time its link took.
- A worker reaches the master through the userspace delay proxy (netem's stand-in): the run log shows the
  round trip it adds to that worker's results.
- A worker's link is cut mid-job and healed: the job keeps decoding without it, and after the heal its slot
  delivers results again. A brief cut keeps the TCP connection; a cut held until the master drops the
  stream makes the worker rejoin through Join with its slot.
"""

from __future__ import annotations

import signal
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from flexgc.harness.cluster import NetnsCluster
from flexgc.harness.topology import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# d = 10000 features x 100 classes = 10^6 float32: every coded message is 4 MB (+1 element: the loss)
RATE_BIT_S = 20e6
MESSAGE_BYTES = (10**6 + 1) * 4
CHUNK_BYTES = 1 << 20  # the master's default chunk (--chunk-bytes)
CHUNK_MS = CHUNK_BYTES * 8 / RATE_BIT_S * 1e3  # 419 ms for one chunk on the shaped link
MESSAGE_MS = MESSAGE_BYTES * 8 / RATE_BIT_S * 1e3  # 1600 ms for one message
SLOW = 3
# Every partition takes 0.75 s of injected delay on every worker (mu=1000: nearly constant), so the fast
# workers complete level 1 (two partitions) about 1.5 s after the task. The shaped worker's level-0
# message needs 1.6 s on the wire after its first partition (0.75 s): it cannot arrive in time, but its
# first 1 MiB chunk (0.42 s) does, and that is the part of its link time the master can record.
JOB_4MB = {
    "FLEXGC_CODE": "nested:levels=0,1,2", "FLEXGC_ITERATIONS": "3", "FLEXGC_MODEL": "softmax",
    "FLEXGC_FEATURES": "10000", "FLEXGC_SAMPLES": "2000", "FLEXGC_DTYPE": "float32",
    "FLEXGC_DELAY": "shifted-exp:a=1,mu=1000,unit_s=3", "FLEXGC_DEADLINE_S": "60",
}
# about 50 ms per partition: ~10 iterations per second; the test stops the master once it has seen enough
JOB_SMALL = {
    "FLEXGC_CODE": "nested:levels=0,1,2", "FLEXGC_ITERATIONS": "2000", "FLEXGC_SAMPLES": "4000",
    "FLEXGC_DELAY": "shifted-exp:a=1,mu=1000,unit_s=0.2", "FLEXGC_DEADLINE_S": "20",
}
CUT = 2
# about 200 ms per partition: level 0 (all four workers, one partition each) decodes well before level 1
JOB_PROXY = {
    "FLEXGC_CODE": "nested:levels=0,1,2", "FLEXGC_ITERATIONS": "12", "FLEXGC_SAMPLES": "4000",
    "FLEXGC_DELAY": "shifted-exp:a=1,mu=1000,unit_s=0.8", "FLEXGC_DEADLINE_S": "20",
}
PROXIED, PROXY_DELAY_MS = 1, 25.0


def _upload_start_ms(w: dict[str, Any]) -> float:
    """When the worker had its level-0 message ready: task sent + its first partition's delay and compute."""
    return w["task_sent_ms"] + w["delay_ms"][0] + w["compute_ms"][0]


def _delivered(rec: dict[str, Any], slot: int) -> bool:
    return any(ms is not None for ms in rec["workers"][slot]["result_arrival_ms"])


def _latest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(records, key=lambda r: r["iteration"], default=None)


def test_rate_limited_worker_is_a_network_straggler(netns_cluster: Callable[..., NetnsCluster]) -> None:
    # Prepare: the slow worker's FLEXGC_TC_RATE, as in compose.slow-link.yml, shapes its uplink (apply.sh)
    master_env = {"FLEXGC_CLASSES": "100", "FLEXGC_CHECKPOINT_EVERY": "0"}
    cluster = netns_cluster(variables=JOB_4MB, env={"master": master_env}, start=False)
    slow = cluster.worker(SLOW).name
    cluster.start_master()
    for node in cluster.workers:
        cluster.start_worker(node.name, env={"FLEXGC_TC_RATE": "20mbit"} if node.name == slow else None)

    # Execute
    rc = cluster.wait_master(timeout_s=90)
    worker_rcs = {node.name: cluster.wait(node.name, timeout_s=30) for node in cluster.workers}
    records = cluster.run_log()
    (qdisc,) = cluster.qdisc_stats(slow, "up")

    # Assert: every iteration decoded exactly, never with a row of the slow worker
    assert records, cluster.diagnosis()
    for rec in records:
        assert rec["outcome"] == "EXACT", rec
        assert SLOW in rec["stragglers"] and all(row[0] != SLOW for row in rec["rows_used"]), rec
    # the link really was shaped: tbf at 20 Mbit/s held packets back while megabytes went through
    assert qdisc["kind"] == "tbf" and qdisc["options"]["rate"] == RATE_BIT_S / 8, qdisc
    assert qdisc["overlimits"] > 0 and qdisc["bytes"] > 2 * CHUNK_BYTES, qdisc
    # its network time in the run log (iteration 0: every worker got the task at once; records are written
    # as iterations' cancel acks come in, so not necessarily in order)
    first = next(r for r in records if r["iteration"] == 0)
    w = first["workers"][SLOW]
    fast = [f for f in first["workers"] if f["slot"] != SLOW]
    assert w["first_byte_ms"] is not None, f"no chunk of slot {SLOW} before the decode: {w}"
    slow_chunk_ms = w["first_byte_ms"] - _upload_start_ms(w)
    fast_chunk_ms = [f["first_byte_ms"] - _upload_start_ms(f) for f in fast]
    # first 1 MiB chunk: ~0.42 s at 20 Mbit/s, versus milliseconds on the unshaped links (a loaded machine
    # delays every worker's first chunk alike, by a few hundred ms at a load of 8: compare with the slow one)
    assert max(fast_chunk_ms) < slow_chunk_ms - 0.5 * CHUNK_MS, (fast_chunk_ms, slow_chunk_ms)
    assert 0.7 * CHUNK_MS < slow_chunk_ms - statistics.median(fast_chunk_ms) < CHUNK_MS + 1000, (
        slow_chunk_ms, fast_chunk_ms)
    # by the decode only part of its 4 MB message was through, never faster than the shaped rate
    assert all(ms is None for ms in w["result_arrival_ms"]) and 0 < w["bytes_up"] < MESSAGE_BYTES, w
    window_s = (first["latency_ms"] - _upload_start_ms(w)) / 1e3
    assert w["bytes_up"] * 8 / window_s < 1.1 * RATE_BIT_S, (w["bytes_up"], window_s)
    # while an unshaped worker's whole message took a fraction of what it would on the shaped link
    for f in fast:
        assert f["result_arrival_ms"][0] - _upload_start_ms(f) < 0.25 * MESSAGE_MS, f
    # and the job ended cleanly although the slow worker's last cancel ack came seconds late
    assert rc == 0 and set(worker_rcs.values()) == {0}, (rc, worker_rcs, cluster.diagnosis())
    assert sorted(r["iteration"] for r in records) == list(range(int(JOB_4MB["FLEXGC_ITERATIONS"])))


@pytest.mark.parametrize("cut", ["brief", "until_disconnect"])
def test_partitioned_worker_rejoins_after_heal(netns_cluster: Callable[..., NetnsCluster], cut: str) -> None:
    # Prepare: a running job in which the slot has delivered results
    cluster = netns_cluster(variables=JOB_SMALL, env={"master": {"FLEXGC_CHECKPOINT_EVERY": "0"}})
    node = cluster.worker(CUT).name
    wait_until(lambda: (last := _latest(cluster.run_log())) and last["iteration"] >= 2
                     and _delivered(last, CUT), 60, f"slot {CUT} delivering")
    t_cut = _latest(cluster.run_log())["iteration"]  # type: ignore[index]

    # Execute: cut its link; heal it after 10 iterations without it, or once the master dropped its stream
    cluster.partition(node)

    def cut_long_enough() -> bool:
        enough = _latest(cluster.run_log())["iteration"] >= t_cut + 14  # type: ignore[index]
        return enough and (cut == "brief" or f"disconnected slot={CUT}" in cluster.log_tail("master", 10**6))

    wait_until(cut_long_enough, 40, f"job going on without slot {CUT} ({cut})", interval_s=0.1)
    t_heal = _latest(cluster.run_log())["iteration"]  # type: ignore[index]
    cluster.heal(node)
    back = wait_until(
        lambda: next((r for r in cluster.run_log() if r["iteration"] > t_heal and _delivered(r, CUT)), None), 40,
        f"slot {CUT} delivering again after the heal")
    cluster.signal(cluster.master_name, signal.SIGTERM)
    rc = cluster.wait_master(timeout_s=30)
    # an interrupted master does not tell its workers to exit (they would carry on with a restarted one)
    for n in cluster.workers:
        cluster.signal(n.name, signal.SIGTERM)
    worker_rcs = {n.name: cluster.wait(n.name, timeout_s=30) for n in cluster.workers}
    records = cluster.run_log()
    summary = cluster.summary()

    # Assert: it decoded without the slot while the link was down. A record is written once the
    # iteration's cancel acks are in or two later iterations have ended, so when the newest record was
    # t_cut the iteration under way was at most t_cut + 3: from t_cut + 4 on, every one started cut off.
    down = [r for r in records if t_cut + 4 <= r["iteration"] <= t_heal]
    assert len(down) >= 9, [r["iteration"] for r in records]
    for rec in down:
        assert rec["outcome"] == "EXACT" and CUT in rec["stragglers"] and not _delivered(rec, CUT), rec
    # ... and the slot delivered again after the heal; no iteration failed
    assert back["outcome"] == "EXACT" and back["workers"][CUT]["task_sent_ms"] is not None, back
    assert all(r["outcome"] == "EXACT" for r in records)
    assert summary["failed_iterations"] == 0 and summary["interrupted"], summary
    # the master ended by the SIGTERM above: it reports the signal (128 + 15); the workers stop on theirs
    assert rc == 128 + signal.SIGTERM and set(worker_rcs.values()) == {0}, (rc, worker_rcs, cluster.diagnosis())
    if cut == "until_disconnect":  # a new stream for the same slot: it rejoined through Join
        master_log = cluster.log_tail("master", 10**6)
        assert master_log.count(f"connected slot={CUT} worker_id={node}") >= 2, master_log


def test_worker_behind_delay_proxy_shows_the_round_trip(netns_cluster: Callable[..., NetnsCluster]) -> None:
    # Prepare: one worker's connection to the master goes through a proxy in its namespace, 25 ms each way
    cluster = netns_cluster(variables=JOB_PROXY, env={"master": {"FLEXGC_CHECKPOINT_EVERY": "0"}}, start=False)
    cluster.start_master()
    for node in cluster.workers:
        proxied = node.name == cluster.worker(PROXIED).name
        cluster.start_worker(node.name, proxy_delay_ms=PROXY_DELAY_MS if proxied else None)

    # Execute
    rc = cluster.wait_master(timeout_s=60)
    records = cluster.run_log()

    # Assert: task down + first result up took one round trip (2 x 25 ms) longer than on the other links
    def net_ms(slot: int) -> list[float]:
        return [r["workers"][slot]["first_byte_ms"] - _upload_start_ms(r["workers"][slot]) for r in records
                if r["workers"][slot]["first_byte_ms"] is not None]

    proxied_ms = statistics.median(net_ms(PROXIED))
    direct_ms = statistics.median(x for s in range(4) if s != PROXIED for x in net_ms(s))
    assert len(net_ms(PROXIED)) >= 6, records
    assert 0.9 * 2 * PROXY_DELAY_MS < proxied_ms - direct_ms < 2 * PROXY_DELAY_MS + 25, (proxied_ms, direct_ms)
    assert all(r["outcome"] == "EXACT" for r in records)
    assert rc == 0, cluster.diagnosis()
