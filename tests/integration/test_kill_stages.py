"""The worker's pool process SIGKILLed in each stage of a job: the job completes once, on attempt 2.

Jobs are held at the start of a stage by the fault-test point of :mod:`worker.tasks`
(``SATS_FAULT_HOLD_DIR``) while the test kills the process that runs them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Service, running_service, worker_pid
from tests.integration.test_faults import _series, _stow
from worker.pipeline import STAGE_PROGRESS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def held_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A gateway and one worker whose jobs stop at a stage while its hold file exists."""
    root = tmp_path_factory.mktemp("held")
    (root / "hold").mkdir()
    with running_service(root, {"SATS_FAULT_HOLD_DIR": str(root / "hold")}) as service:
        yield service


@pytest.mark.parametrize("stage", list(STAGE_PROGRESS))
def test_pool_process_killed_in_stage(held_service, tmp_path, stage):
    service = held_service
    hold = Path(service.env["SATS_FAULT_HOLD_DIR"]) / stage
    hold.touch()
    try:
        job_id = _stow(service, _series(tmp_path / "s", 20 + list(STAGE_PROGRESS).index(stage)))
        service.wait_for(lambda: service.job(job_id)["stage"] == stage, 120, f"the {stage} stage")
        assert service.job(job_id)["state"] == "running"
        os.kill(worker_pid(job_id), signal.SIGKILL)
    finally:
        hold.unlink()

    job = service.wait_for_state(job_id, {"completed", "failed"}, timeout_s=180)
    assert job["state"] == "completed", job
    assert job["attempts"] == 2
    results = service.data_dir / "results" / job_id
    assert sorted(p.name for p in results.iterdir()) == ["attempt-2"]
    assert service.http.get(job["links"]["rtstruct"]).status_code == 200
    listed = service.http.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert [j["id"] for j in listed].count(job_id) == 1
