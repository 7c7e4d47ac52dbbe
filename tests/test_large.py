"""d = 10^7 float32 through the real services (issue: "d up to 10^7 float32 must work"): 40 MB parameter
vectors and coded results, chunked at 1 MiB both ways, decoded and applied, matching centralized GD.

About 35 s and under 1 GB per process on the 2-vCPU development VM; it runs in CI like every test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers import centralized_params, job_config, run_job

D = 10_000_000


def test_ten_million_float32_parameters_train_exactly_to_float32_precision(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, code="crc:s=1", workers=3, iterations=2, model="least-squares", samples=3,
                     features=D, dtype="float32", lr=0.05, momentum=0.0)

    summary, records, params = run_job(cfg, absent=(2,), timeout_s=240)  # one straggler, decoded around

    assert summary["d"] == D and summary["exact_iterations"] == 2
    # every responsive worker's coded vector (d + 1 float32, 39 chunks of 1 MiB) arrived whole
    assert all(r["workers"][s]["bytes_up"] == (D + 1) * 4 for r in records for s in (0, 1))
    reference = centralized_params(cfg)
    # float32 on the wire: parameters and coded vectors are rounded to 24 bits each way
    assert np.linalg.norm(params - reference) <= 1e-5 * np.linalg.norm(reference)
