"""The master's counters: rejections by kind, in Prometheus and in the summary."""

from __future__ import annotations

from tests.master.jobs import (
    Job,
    run,
)


def test_reject_counts_by_kind() -> None:
    async def scenario() -> None:
        job = Job()

        job.metrics.reject("WireError")
        job.metrics.reject("WireError")
        job.metrics.reject("no_hello")

        assert job.metrics.rejected_by_kind == {"WireError": 2, "no_hello": 1}
        assert job.metrics.registry.get_sample_value("flexgc_rejected_messages_total", {"kind": "WireError"}) == 2

    run(scenario)
