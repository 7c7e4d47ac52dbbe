"""Shared cases for the code and decoder tests: every family at every n <= 10 (docs/design.md §2).

Tests ask for a fixture name and `pytest_generate_tests` parametrizes them:

* ``code_case``: ``(n, spec)`` for every family and every valid parameter at n <= 10: every s, every
  level set for n <= 8 (a seeded sample of level sets beyond), every divisor chain of n.
* ``cyclic_case``: the `code_case` entries of the cyclic families (``crc``, ``nested``).
* ``decoder_case``: ``(n, spec)`` with an explicit ``decoder=any-span|per-level`` option, for every
  family whose exact decode tolerates s_max dead slots (not ``ignore``, which is approximate by design;
  not ``per-level`` with ``multimessage``, which the spec refuses).
"""

from __future__ import annotations

import itertools
import random

import pytest

SMALL_N = range(1, 11)
EVERY_LEVEL_SET_UP_TO_N = 8
SAMPLED_LEVEL_SETS = 8
POLICIES = ("any-span", "per-level")


def divisor_chains(n: int) -> list[tuple[int, ...]]:
    """Every chain 1 <= m_0 < m_1 < ... with m_i | m_{i+1} and m_last | n."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    chains = []
    for size in range(1, len(divisors) + 1):
        for chain in itertools.combinations(divisors, size):
            if all(b % a == 0 for a, b in zip(chain, chain[1:])):
                chains.append(chain)
    return chains


def level_sets(n: int) -> list[tuple[int, ...]]:
    """Every strictly increasing level set below n for n <= 8; beyond, a seeded sample of multi-level sets."""
    if n <= EVERY_LEVEL_SET_UP_TO_N:
        return [lv for size in range(1, n + 1) for lv in itertools.combinations(range(n), size)]
    rng = random.Random(n)
    sample: set[tuple[int, ...]] = set()
    while len(sample) < SAMPLED_LEVEL_SETS:
        sample.add(tuple(sorted(rng.sample(range(n), rng.randint(2, n)))))
    return sorted(sample)


def small_specs(n: int) -> list[str]:
    """Canonical-form specs of every family for n slots."""
    specs = ["uncoded"]
    for s in range(n):
        specs += [f"ignore:s={s}", f"frc:s={s}", f"crc:s={s}", f"nested:smax={s}", f"multimessage:smax={s}"]
    specs += ["nested:levels=" + ",".join(map(str, lv)) for lv in level_sets(n)]
    specs += ["nested-frc:groups=" + ",".join(map(str, ch)) for ch in divisor_chains(n)]
    return specs


def _code_cases() -> list[tuple[int, str]]:
    return [(n, spec) for n in SMALL_N for spec in small_specs(n)]


def _cyclic_cases() -> list[tuple[int, str]]:
    return [(n, spec) for n, spec in _code_cases() if spec.startswith(("crc:", "nested:"))]


def _decoder_cases() -> list[tuple[int, str]]:
    cases = []
    for n, spec in _code_cases():
        if spec.startswith("ignore:"):
            continue
        for policy in POLICIES:
            if policy == "per-level" and spec.startswith("multimessage:"):
                continue
            cases.append((n, f"{spec}{',' if ':' in spec else ':'}decoder={policy}"))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, cases in (("code_case", _code_cases), ("cyclic_case", _cyclic_cases),
                        ("decoder_case", _decoder_cases)):
        if name in metafunc.fixturenames:
            values = cases()
            metafunc.parametrize(name, values, ids=[f"n{n}-{spec}" for n, spec in values])
