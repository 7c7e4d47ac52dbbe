"""The soak in its short CI form: random faults every few iterations, every gradient verified."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexgc.soak import run_soak

pytestmark = pytest.mark.slow


def test_short_soak_with_an_adversary_has_no_wrong_gradient_and_bounded_master_resources(tmp_path: Path) -> None:
    result = run_soak(iterations=150, n=8, code="nested:levels=0,1,2,3", out=tmp_path, fault_every=4, seed=3,
                      timeout_s=240, progress=False, adversary=True)

    assert result["exit_code"] == 0
    assert result["iterations"] == 150
    assert result["verified"] == 150 and result["wrong_gradients"] == 0
    assert sum(result["faults"].values()) >= 10
    assert result["outcomes"]["FAILED"] == 0
    start, end = result["master_start"], result["master_end"]
    assert end["threads"] <= start["threads"] + 4
    assert end["fds"] <= start["fds"] + 16
    assert end["rss_kb"] <= start["rss_kb"] + 64 * 1024

    # the adversary ran all along and every hostile call was refused with a status
    hostile = result["adversary"]
    assert hostile["error"] is None
    statuses = hostile["statuses"]
    assert sum(statuses.values()) >= 20
    assert not any(key.endswith(":OK") for key in statuses), statuses
    assert set(statuses) <= {"unauthenticated:UNAUTHENTICATED", "squat:RESOURCE_EXHAUSTED",
                             "malformed:INVALID_ARGUMENT", "malformed:FAILED_PRECONDITION", "malformed:NOT_FOUND"}
