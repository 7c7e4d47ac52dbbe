"""The numerical quality of a code: decode every straggler pattern it claims to tolerate (`flexgc codes
check`), with random partial gradients in float64 and float32."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from flexgc.common.codes import Code
from flexgc.common.crc import validation_patterns

RESIDUAL_MAX = 1e-9


REL_ERR_MAX = {"float64": 1e-10, "float32": 1e-5}


def straggler_patterns(n: int, s: int, max_exhaustive: int, samples: int,
                       seed: int) -> tuple[list[tuple[int, ...]], bool, int]:
    """Every set of at most s straggler slots when there are at most `max_exhaustive` of them, else a
    seeded sample of sets of exactly s (contiguous, spread and random). Returns (patterns, exhaustive,
    number of sets of at most s)."""
    total = sum(math.comb(n, r) for r in range(s + 1))
    if total <= max_exhaustive:
        patterns = [p for r in range(s + 1) for p in itertools.combinations(range(n), r)]
        return patterns, True, total
    return validation_patterns(n, s, samples, seed), False, total


def check_code(code: Code, max_exhaustive: int = 20_000, samples: int = 2000, dim: int = 64,
               seed: int = 0) -> dict[str, Any]:
    """Decode every claimed straggler pattern of `code` (all alive slots send every level) with random
    partial gradients of length `dim`, in float64 and float32: worst residual, cond and relative error, and
    every pattern that fails. `flexgc codes check` prints it."""
    from flexgc.common.decoder import Decoder  # the decoder is built on this module

    n, k = code.n, code.k
    # An empty slot (`grow=`, an elastic plan) holds no data: it is never a straggler of the code, so the
    # sets are drawn from the slots that hold data.
    holding = [i for i in range(n) if code.order[i]]
    found, exhaustive, total = straggler_patterns(len(holding), code.s_max, max_exhaustive, samples, seed)
    patterns = [tuple(holding[j] for j in p) for p in found]
    decoder = Decoder(code)
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((k, dim))
    rows = code.B.reshape(code.n_messages, k)
    coded: dict[str, np.ndarray] = {"float64": rows @ G, "float32": rows.astype(np.float32) @ G.astype(np.float32)}
    truth = {"float64": G.sum(axis=0), "float32": G.astype(np.float32).astype(np.float64).sum(axis=0)}
    worst = {"residual": 0.0, "cond": 1.0, "float64": 0.0, "float32": 0.0}
    failures: list[dict[str, Any]] = []
    approximate = 0
    for stragglers in patterns:
        alive = [i for i in range(n) if i not in stragglers]
        mask = sum(1 << code.message_id(level, i) for level in range(code.n_levels) for i in alive)
        decoding = decoder.solve(mask)
        if decoding is None:
            failures.append({"stragglers": list(stragglers), "kind": "not decodable", "value": None})
            continue
        if not decoding.exact:  # ignore-s rescales by design; nothing exact to compare with
            approximate += 1
            continue
        worst["residual"] = max(worst["residual"], decoding.residual)
        worst["cond"] = max(worst["cond"], decoding.cond)
        ids = list(decoding.messages)
        for dtype, V in coded.items():
            g = Decoder.combine(decoding, V[ids]).astype(np.float64)
            err = float(np.linalg.norm(g - truth[dtype])) / float(np.linalg.norm(truth[dtype]))
            worst[dtype] = max(float(worst[dtype]), err)
            if err > REL_ERR_MAX[dtype]:
                failures.append({"stragglers": list(stragglers), "kind": f"{dtype} relative error",
                                 "value": err})
        if decoding.residual > RESIDUAL_MAX:
            failures.append({"stragglers": list(stragglers), "kind": "residual", "value": decoding.residual})
    return {"code": code.spec, "workers": n, "empty_slots": n - len(holding), "s_max": code.s_max,
            "decoder": decoder.policy,
            "exhaustive": exhaustive, "patterns_checked": len(patterns), "patterns_claimed": total,
            "approximate_decodes": approximate, "worst_residual": worst["residual"],
            "worst_cond": worst["cond"], "worst_rel_err_float64": worst["float64"],
            "worst_rel_err_float32": worst["float32"],
            "failed_sets": len({tuple(f["stragglers"]) for f in failures}), "failures": failures,
            "ok": not failures}
