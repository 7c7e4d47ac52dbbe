"""The decoder's shortcut for rows that are indicators of disjoint blocks: the same decoding as the SVD."""

from __future__ import annotations

import random

import numpy as np
import pytest

from flexgc.common.codes import parse_code
from flexgc.common.decoder import Decoder

CODES = [("uncoded", 6), ("frc:s=1", 6), ("frc:s=2", 9), ("frc:s=2", 8), ("ignore:s=1", 5),
         ("multimessage:smax=2", 5), ("nested:levels=0,1", 5), ("nested-frc:groups=1,2", 4)]


@pytest.mark.parametrize(("spec", "n"), CODES)
def test_block_weights_equal_the_svd_solution_on_every_mask(spec: str, n: int) -> None:
    # Prepare: the decoder as shipped, and one forced to take the SVD everywhere
    code = parse_code(spec, n)
    fast, svd = Decoder(code, "any-span"), Decoder(code, "any-span")
    svd._blocks = None
    rng = random.Random(7)
    masks = range(1, 1 << code.n_messages) if code.n_messages <= 12 else \
        [rng.getrandbits(code.n_messages) for _ in range(3000)]

    for mask in masks:
        # Execute
        a, b = fast.solve(mask), svd.solve(mask)

        # Assert
        assert (a is None) == (b is None), mask
        if a is None or b is None:
            continue
        assert a.messages == b.messages and a.level == b.level and a.exact == b.exact
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-12, atol=1e-12)
        assert a.residual == pytest.approx(b.residual, abs=1e-12)
        assert a.cond == pytest.approx(b.cond, rel=1e-9)


def test_which_codes_take_the_shortcut() -> None:
    assert Decoder(parse_code("frc:s=3", 16))._blocks is not None
    assert Decoder(parse_code("uncoded", 16))._blocks is not None
    assert Decoder(parse_code("nested-frc:groups=1,2,4", 16))._blocks is None  # nested blocks couple
    assert Decoder(parse_code("crc:s=1", 16))._blocks is None


def test_frc_at_n_1024_decodes_without_an_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: an SVD (about half a second for 896 x 1024 rows here) would fail the test
    code = parse_code("frc:s=7", 1024)
    decoder = Decoder(code)
    alive = [i for i in range(1024) if i % 8 != 3]       # one straggler in every group of 8
    monkeypatch.setattr(np.linalg, "svd", lambda *a, **k: pytest.fail("SVD called"))

    # Execute
    decoding = decoder.solve(sum(1 << i for i in alive))

    # Assert
    assert decoding is not None and decoding.exact and decoding.residual == 0.0
    assert np.allclose(decoding.weights, 1 / 7)
