"""The schedules behind BENCHMARKS.md §10's SE-trace figures (benchmarks/se_trace_limits.py) compute what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "se_trace_limits.py"


@pytest.fixture(scope="module")
def limits():
    spec = importlib.util.spec_from_file_location("se_trace_limits", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("ahead", [0, 1])
def test_online_cover_equal_speeds_is_one_block(limits, replicas, ahead):
    # Nobody is slow: every slot computes exactly its own block, nothing twice, nothing waits.
    assert limits.online_cover(np.full(8, 2.0), 16, replicas, ahead) == pytest.approx(2.0)


def test_online_cover_shares_a_slow_block_along_the_ring(limits):
    # Slot 3 is 3x slower: its successor takes pieces of block 3 from the back, and the successor's own block is
    # taken in part by the next slot (the chain that static orders cannot express).
    factors = np.ones(8)
    factors[3] = 3.0
    t = limits.online_cover(factors, 32, 2, ahead=1)
    ideal = 8 / np.sum(1 / factors)
    assert ideal <= t < 1.2 * ideal < 3.0
    # The static code on the same placement: slot 4 starts on block 3 only after its own block.
    code = limits.meet_in_the_middle(8, 32)
    from flexgc.common.analysis import decode_times
    durations = np.repeat((factors / 32)[:, None], 64, axis=1)
    static = float(decode_times(code, durations).latency[0])
    assert t < static < 3.0


@pytest.mark.parametrize("ahead", [0, 1])
def test_online_cover_a_dead_holder_delays_its_block_but_never_loses_it(limits, ahead):
    factors = np.ones(6)
    factors[2] = np.inf
    assert limits.online_cover(factors, 4, 1, ahead) == float("inf")   # one replica: block 2 is lost
    assert 1.0 < limits.online_cover(factors, 4, 2, ahead) <= 2.0       # slot 3 computes blocks 3 and 2


def test_on_the_se_matrix_online_pieces_reach_what_static_orders_miss(limits):
    from flexgc.common.analysis import decode_times
    from flexgc.common.traces import load_factors

    F = load_factors("bytedance-se")
    uncoded = F.max(axis=1).mean()
    online = np.mean([limits.online_cover(row, 32, 2) for row in F]) / uncoded
    code = limits.meet_in_the_middle(F.shape[1], 32)
    static = decode_times(code, np.repeat((F / 32)[:, :, None], 64, axis=2)).latency.mean() / uncoded
    ideal = np.mean(F.shape[1] / np.sum(1 / F, axis=1)) / uncoded
    assert ideal < online < 0.85 < static < 1.0
