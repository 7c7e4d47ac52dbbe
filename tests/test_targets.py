"""flexgc.targets: time to a target loss on hand-written run logs (exact, approximate, failed, resumed)."""

from __future__ import annotations

from typing import Any

import pytest

from flexgc.targets import default_target, loss_points, rank_key, time_to_target


def rec(iteration: int, outcome: str, loss: float | None, started_ms: float | None,
        latency_ms: float) -> dict[str, Any]:
    """What flexgc.targets reads of a run-log record."""
    return {"iteration": iteration, "outcome": outcome, "loss": loss, "started_ms": started_ms,
            "latency_ms": latency_ms}


def exact_run(losses: list[float], step_ms: float = 100.0, latency_ms: float = 90.0) -> list[dict[str, Any]]:
    """Iterations every step_ms, each decoding after latency_ms, every gradient exact."""
    return [rec(t, "EXACT", loss, t * step_ms, latency_ms) for t, loss in enumerate(losses)]


LOSSES = [0.70, 0.60, 0.50, 0.45, 0.42]


def test_an_exact_run_reaches_the_target_when_the_parameters_that_meet_it_exist() -> None:
    records = exact_run(LOSSES)

    result = time_to_target(records, 0.5)

    # theta_2 (loss 0.50) exists once iteration 1 has decoded: it started at 100 ms and took 90 ms
    assert result.seconds == pytest.approx(0.19) and result.steps == 2
    assert result.run_s == pytest.approx(0.49) and result.best == 0.42 and result.cell() == "0.19"
    assert time_to_target(records, 0.70).seconds == 0.0  # the initial parameters already meet it


def test_an_approximate_run_never_reaches_a_target_on_its_estimates_alone() -> None:
    # every iteration approximate, its loss an estimate from the partitions it decoded, well below the target
    records = [rec(t, "APPROXIMATE", loss, t * 50.0, 40.0) for t, loss in enumerate([0.7, 0.4, 0.3, 0.2])]

    result = time_to_target(records, 0.5)

    assert result.seconds is None and result.cell() == "never" and result.best is None
    assert "no full-batch loss" in result.note
    assert [p.source for p in loss_points(records)] == ["estimate"] * 4


def test_evaluated_snapshots_charge_an_approximate_run_for_where_its_steps_went() -> None:
    records = [rec(t, "APPROXIMATE", loss, t * 50.0, 40.0) for t, loss in enumerate([0.7, 0.4, 0.3, 0.2])]
    # the true full-batch losses of its parameters theta_1..theta_4 (after 1..4 approximate steps)
    evaluated = {1: 0.66, 2: 0.58, 3: 0.52, 4: 0.49}

    result = time_to_target(records, 0.5, evaluated)

    # theta_4 exists when the last iteration (started 150 ms, 40 ms) decoded
    assert result.seconds == pytest.approx(0.19) and result.steps == 4 and result.best == 0.49
    assert time_to_target(records, 0.45, evaluated).seconds is None  # never: its best is 0.49
    assert "lowest full-batch loss was 0.49" in time_to_target(records, 0.45, evaluated).note


def test_failed_iterations_count_their_wall_time_and_take_no_step() -> None:
    # iteration 1 fails at a 1 s deadline: no gradient, no loss, theta_2 = theta_1
    records = [rec(0, "EXACT", 0.70, 0.0, 90.0), rec(1, "FAILED", None, 100.0, 1000.0),
               rec(2, "EXACT", 0.60, 1110.0, 90.0), rec(3, "EXACT", 0.50, 1210.0, 90.0)]

    result = time_to_target(records, 0.55)

    # theta_3 exists once iteration 2 decoded: 1110 + 90 ms, the failed second included
    assert result.seconds == pytest.approx(1.2) and result.steps == 3
    assert time_to_target(exact_run([0.70, 0.60, 0.50]), 0.55).seconds == pytest.approx(0.19)  # without it


def test_a_mix_counts_exact_iterations_only() -> None:
    # --on-deadline approximate: iteration 2's loss is an estimate below the target; iteration 3's is exact
    records = [rec(0, "EXACT", 0.70, 0.0, 90.0), rec(1, "EXACT", 0.60, 100.0, 90.0),
               rec(2, "APPROXIMATE", 0.49, 200.0, 90.0), rec(3, "EXACT", 0.48, 300.0, 90.0)]

    result = time_to_target(records, 0.5)

    assert result.steps == 3 and result.seconds == pytest.approx(0.29)


def test_mini_batch_losses_are_estimates() -> None:
    result = time_to_target(exact_run(LOSSES), 0.5, full_batch=False)
    assert result.seconds is None  # a batch's loss is not the full-batch loss


def test_a_resumed_masters_clock_chains_on_and_old_logs_sum_latencies() -> None:
    # a resumed master starts started_ms at 0 again: its first record starts where the last one ended
    records = [rec(0, "EXACT", 0.7, 0.0, 90.0), rec(1, "EXACT", 0.6, 100.0, 90.0),
               rec(2, "EXACT", 0.5, 0.0, 90.0), rec(3, "EXACT", 0.4, 100.0, 90.0)]
    assert time_to_target(records, 0.4).seconds == pytest.approx(0.19 + 0.09)

    old = [{k: v for k, v in r.items() if k != "started_ms"} for r in exact_run(LOSSES)]
    result = time_to_target(old, 0.5)
    assert result.seconds == pytest.approx(0.18) and "sum of the latencies" in result.note


def test_default_target_is_most_of_the_way_to_what_exact_runs_reach() -> None:
    exact = loss_points(exact_run([0.7, 0.5, 0.4, 0.3]))
    lagging = loss_points(exact_run([0.7, 0.7, 0.5, 0.4]))  # a failed iteration held it back
    approx = loss_points([rec(t, "APPROXIMATE", x, t * 50.0, 40.0) for t, x in enumerate([0.7, 0.2])],
                         evaluated={1: 0.1})

    target = default_target([(exact, False), (lagging, False), (approx, True)])

    assert target == pytest.approx(0.7 - 0.9 * (0.7 - 0.3))  # the approximate run's lower loss does not set it
    assert default_target([(approx, True)]) == pytest.approx(0.7 - 0.9 * 0.6)  # only approximate runs: theirs
    assert default_target([(loss_points([rec(0, "FAILED", None, 0.0, 1.0)]), False)]) is None


def test_exact_schemes_rank_first_then_by_time_to_target() -> None:
    rows = {"ignore (fast, approximate)": rank_key(True, 0.1, 10.0), "nested": rank_key(False, 0.5, 30.0),
            "crc (never)": rank_key(False, None, 20.0), "uncoded": rank_key(False, 0.4, 40.0)}
    assert sorted(rows, key=rows.__getitem__) == ["uncoded", "nested", "crc (never)", "ignore (fast, approximate)"]
