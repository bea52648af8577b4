"""The gateway's sweep against the real Redis (database 15): lost jobs, unsent jobs, retention."""

from __future__ import annotations

import os
import time

import pytest

from app.reaper import ORPHAN_GRACE_S, UNSENT_GRACE_S, sweep
from app.settings import Settings
from app.store import Job, JobStore, new_job_id


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, retention_hours=1.0, worker_heartbeat_s=1.0)


def _queue_length(store: JobStore) -> int:
    return int(store.redis.llen("sats"))


def test_unsent_job_sent_once(store, settings):
    job, _ = store.create(Job(id=new_job_id()))
    assert sweep(store, settings).resent == 0  # still within the grace period
    later = time.time() + UNSENT_GRACE_S + 1
    assert sweep(store, settings, now=later).resent == 1
    assert sweep(store, settings, now=later).resent == 0
    assert _queue_length(store) == 1


def test_running_job_of_dead_worker_requeued(store, settings):
    job, _ = store.create(Job(id=new_job_id()))
    store.mark_enqueued(job.id)
    store.mark_running(job.id, worker="w9@host pid 4242")
    result = sweep(store, settings, now=time.time() + 10)
    assert result.requeued == 1
    assert store.get(job.id).state == "queued"
    assert "stopped sending heartbeats" in store.get(job.id).error_message
    assert _queue_length(store) == 1


def test_running_job_of_live_worker_kept(store, settings):
    job, _ = store.create(Job(id=new_job_id()))
    store.mark_enqueued(job.id)
    store.mark_running(job.id, worker="w1@host pid 1")
    store.heartbeat("w1@host", 1.0)
    assert sweep(store, settings, now=time.time() + 2).requeued == 0
    assert store.get(job.id).state == "running"


def test_retention_deletes_job_and_files(store, settings):
    job, _ = store.create(Job(id=new_job_id()))
    store.mark_running(job.id, worker="w1@host pid 1")
    outputs = {"rtstruct": {"file": "rtstruct.dcm", "series_instance_uid": "1.2.3", "sop_instance_uid": "1.2.3.4"}}
    assert store.mark_completed(job.id, {"timings_s": {}}, outputs, f"{job.id}/attempt-1")
    for folder in (
        settings.inputs_dir / job.id,
        settings.results_dir / job.id / "attempt-1",
        settings.dicom_late_dir / job.id,
    ):
        folder.mkdir(parents=True)
        (folder / "file").write_bytes(b"x")

    assert sweep(store, settings).expired == 0
    result = sweep(store, settings, now=time.time() + 3601 + ORPHAN_GRACE_S)
    assert result.expired == 1
    assert store.get(job.id) is None
    assert store.find_instance("1.2.3.4") is None
    assert not (settings.inputs_dir / job.id).exists()
    assert not (settings.results_dir / job.id).exists()
    assert not (settings.dicom_late_dir / job.id).exists()


def test_orphan_input_folder_deleted(store, settings):
    orphan = settings.inputs_dir / ("0" * 32)
    orphan.mkdir(parents=True)
    old = time.time() - ORPHAN_GRACE_S - 10
    os.utime(orphan, (old, old))
    assert sweep(store, settings).orphans == 1
    assert not orphan.exists()


def test_completion_only_once(store):
    job, _ = store.create(Job(id=new_job_id()))
    store.mark_running(job.id, worker="a pid 1")
    store.mark_running(job.id, worker="b pid 2")
    assert store.mark_completed(job.id, {}, {}, "x/attempt-1") is True
    assert store.mark_completed(job.id, {}, {}, "x/attempt-2") is False
    assert store.get(job.id).result_dir == "x/attempt-1"
    assert store.get(job.id).attempts == 2
