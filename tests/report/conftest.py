"""Fixtures for the report tests: one short real job (module-wide) and a headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import job_config, run_job
from tests.report import browser

# 4 workers, a nested code tolerating 2 stragglers and delays with unresponsive workers (p), so the run log
# holds cancelled partitions, unresponsive slots, several levels and stale results
REAL_JOB = dict(workers=4, code="nested:levels=0,1,2", iterations=8, delay="shifted-exp:a=1,mu=1,p=0.15,unit_s=0.06",
                delay_seed=3)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a real job (master + 4 worker processes on loopback)."""
    out = tmp_path_factory.mktemp("real-run")
    run_job(job_config(out, **REAL_JOB))
    return out


@pytest.fixture(scope="session")
def real_crc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same delays under CRC(2): a second run for the side-by-side report."""
    out = tmp_path_factory.mktemp("real-crc-run")
    run_job(job_config(out, **{**REAL_JOB, "code": "crc:s=2"}))
    return out


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = browser.missing()
    if reason:
        pytest.skip(reason)
    driver = browser.start(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()
