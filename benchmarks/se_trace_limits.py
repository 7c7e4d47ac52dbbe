"""BENCHMARKS.md §10: what the ByteDance SE replay's 0.85x goal needs, and why placement chosen before a step cannot.

    .venv/bin/python benchmarks/se_trace_limits.py

All on the shipped SE matrix itself (steps x ranks factors, no communication counted):

1. what can be learned: the per-rank step-to-step autocorrelation, and shares sized on the previous step's
   factors (re-planned every step) against uncoded;
2. whether placement limits: with each block held by its owner and its ring successor (two replicas), the
   speed-proportional share of every step is reachable when the prefix sums of (share - 1) around the ring
   span at most one block (the successor takes the owner's surplus, and passes its own on);
3. the best static order tried: each slot computes its own block in M pieces and then its ring predecessor's
   pieces in reverse order, one uncoded message per piece (owner and backup meet in the middle of a slow
   block), decoded by `analysis.decode_times`;
4. what reaches the goal: the same two-replica (or three-replica) ring with the pieces assigned online, during
   the step (`online_cover`): a slot that is about to be idle gets the next unstarted piece of the block it
   holds with the most unstarted pieces (owners from the front, backups from the back), decided one piece
   ahead so that a master round trip is hidden behind the piece in progress. This is the work-stealing
   schedule that flexgc's static per-slot orders cannot express: a proposal, not a shipped scheme.
"""

from __future__ import annotations

import heapq

import numpy as np

from flexgc.common.analysis import decode_times
from flexgc.common.codes import Code, _finish
from flexgc.common.traces import load_factors


def meet_in_the_middle(n: int, pieces: int) -> Code:
    """Slot i: its own pieces forward, then slot i-1's pieces backward; one indicator row per piece."""
    order = [tuple([i * pieces + t for t in range(pieces)] + [((i - 1) % n) * pieces + t
                                                              for t in reversed(range(pieces))]) for i in range(n)]
    levels = 2 * pieces
    B = np.zeros((levels, n, n * pieces))
    prefix = np.zeros((levels, n), dtype=np.int64)
    for i in range(n):
        for level in range(levels):
            B[level, i, order[i][level]] = 1.0
            prefix[level, i] = level + 1
    return _finish("multimessage", n, tuple(range(levels)), order, prefix, B, ("identity",) * levels,
                   (1.0,) * levels)


def online_cover(factors: np.ndarray, pieces: int, replicas: int, ahead: int = 1) -> float:
    """Time until every piece is computed once, with pieces handed out during the step.

    Block b (1/n of the data, in ``pieces`` pieces) is held by slots b, b+1, ..., b+replicas-1; slot i computes a
    piece in ``factors[i] / pieces`` (inf: never). Whenever slot i starts a piece, the master picks the piece it
    computes after that one (``ahead`` = 1; 0: picked when it is needed): the next unstarted piece of the held
    block with the most unstarted pieces (its own on a tie; only its own for the step's first pieces), from the
    front for the owner and from the back for a backup. A slot with no unstarted piece left takes a copy of a
    piece that another slot holds and has not delivered (the least-copied one), so that a dead holder delays its
    block but never loses it. Exact: the gradient is the sum of one copy of every piece.
    """
    n = len(factors)
    lo, hi = np.zeros(n, dtype=np.int64), np.full(n, pieces)
    covered = np.zeros((n, pieces), dtype=bool)
    copies = np.zeros((n, pieces), dtype=np.int64)
    left = n * pieces
    queue: list[list[tuple[int, int]]] = [[] for _ in range(n)]

    def pick(i: int, start: bool = False) -> tuple[int, int] | None:
        held = [(i - d) % n for d in range(replicas)]
        if start:  # the step's first pieces: every slot its own block's front
            held = held[:1]
        open_blocks = [blk for blk in held if hi[blk] > lo[blk]]
        if open_blocks:
            b = max(open_blocks, key=lambda blk: (hi[blk] - lo[blk], -((i - blk) % n)))
            if b == i:
                lo[b] += 1
                return b, int(lo[b] - 1)
            hi[b] -= 1
            return b, int(hi[b])
        if queue[i]:  # copies only when idle
            return None
        spare = [(copies[blk, j], -(i - blk) % n, blk, j) for blk in held for j in range(pieces)
                 if not covered[blk, j] and copies[blk, j] > 0]
        return min(spare)[2:] if spare else None

    def refill(i: int, start: bool = False) -> None:
        while len(queue[i]) < ahead + 1:
            piece = pick(i, start)
            if piece is None:
                return
            copies[piece] += 1
            queue[i].append(piece)

    events: list[tuple[float, int]] = []
    for i in range(n):
        refill(i, start=True)
    for i in range(n):
        if queue[i]:
            heapq.heappush(events, (factors[i] / pieces, i))
    idle: set[int] = set()
    while events:
        now, i = heapq.heappop(events)
        if not np.isfinite(now):
            break
        piece = queue[i].pop(0)
        if not covered[piece]:
            covered[piece] = True
            left -= 1
            if left == 0:
                return now
        queue[i] = [q for q in queue[i] if not covered[q]]  # the master withdraws what another slot delivered
        for j in [i, *sorted(idle)]:  # a delivered piece can leave idle holders something to copy
            refill(j)
            if queue[j] and (j == i or j in idle):
                idle.discard(j)
                heapq.heappush(events, (now + factors[j] / pieces, j))
            elif not queue[j]:
                idle.add(j)
    return float("inf")


def main() -> None:
    F = load_factors("bytedance-se")
    steps, n = F.shape
    uncoded = F.max(axis=1)
    ideal = n / np.sum(1 / F, axis=1)  # every slot busy until the same instant, load in proportion to speed
    print(f"SE matrix: {steps} steps x {n} ranks; speed-proportional ideal {ideal.mean() / uncoded.mean():.3f}, "
          f"mean/max {np.mean(F.mean(axis=1)) / uncoded.mean():.3f} x uncoded")

    lag1 = [np.corrcoef(F[:-1, i], F[1:, i])[0, 1] for i in range(n)]
    print(f"1. per-rank step-to-step autocorrelation: median {np.median(lag1):.3f}")
    shares = [np.max((1 / F[t - 1]) / np.sum(1 / F[t - 1]) * n * F[t]) for t in range(1, steps)]
    print(f"   shares sized on the previous step, re-planned every step / uncoded: "
          f"{np.mean(shares) / uncoded[1:].mean():.3f}")

    share = (1 / F) / np.sum(1 / F, axis=1, keepdims=True) * n
    prefix = np.cumsum(share - 1, axis=1)
    span = prefix.max(axis=1) - prefix.min(axis=1)
    print(f"2. two replicas on a ring reach the speed-proportional share in {np.sum(span <= 1)} of {steps} steps "
          f"(prefix-sum span median {np.median(span):.2f}, max {span.max():.2f} blocks)")

    for pieces in (2, 4, 8, 16, 32):
        code = meet_in_the_middle(n, pieces)
        times = decode_times(code, np.repeat((F / pieces)[:, :, None], 2 * pieces, axis=2))
        print(f"3. static meet-in-the-middle code, M={pieces:2d} pieces: "
              f"{times.latency.mean() / uncoded.mean():.3f} x uncoded")

    for replicas in (2, 3):
        for pieces in (8, 16, 32):
            t = [online_cover(F[s], pieces, replicas) for s in range(steps)]
            t0 = [online_cover(F[s], pieces, replicas, ahead=0) for s in range(steps)]
            print(f"4. online pieces, {replicas} replicas, M={pieces:2d}: {np.mean(t) / uncoded.mean():.3f} x uncoded "
                  f"(picked when needed: {np.mean(t0) / uncoded.mean():.3f}); "
                  f"each slot holds {replicas * pieces} pieces and sends about {pieces} messages a step")


if __name__ == "__main__":
    main()
