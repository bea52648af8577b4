"""Periodic sweep of the gateway: lost jobs back to the queue, expired data deleted.

Several gateway replicas may sweep at once: each change is a job-store transition, which
only one of them wins.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass

from app.settings import Settings
from app.store import FINAL_STATES, JobStore
from worker.celery_app import send_job

logger = logging.getLogger(__name__)

#: A queued job whose message was never sent is sent again after this many seconds.
UNSENT_GRACE_S = 60.0

#: Input or result folders without a job record are deleted after this many seconds.
ORPHAN_GRACE_S = 3600.0


@dataclass
class SweepResult:
    """Counts of the changes made by one sweep."""

    resent: int = 0
    requeued: int = 0
    expired: int = 0
    orphans: int = 0


def _worker_alive(store: JobStore, worker: str) -> bool:
    name = worker.split(" pid ", 1)[0]
    return bool(name) and name in store.live_workers()


def sweep(store: JobStore, settings: Settings, now: float | None = None) -> SweepResult:
    """Run one sweep (see the module docstring); return the counts of what changed."""
    now = time.time() if now is None else now
    result = SweepResult()
    lost_after = 3 * settings.worker_heartbeat_s

    for job_id in store.ids_in_state("queued"):
        job = store.get(job_id)
        if job is not None and not job.enqueued_at and now - job.created_at > UNSENT_GRACE_S:
            send_job(store, job_id, attempt=job.attempts)
            result.resent += 1
            logger.warning("job %s was queued but never sent; sent now", job_id)

    for job_id in store.ids_in_state("running"):
        job = store.get(job_id)
        if job is None or now - job.updated_at < lost_after or _worker_alive(store, job.worker):
            continue
        if store.requeue(job_id, f"worker {job.worker} stopped sending heartbeats; the job runs again"):
            send_job(store, job_id, attempt=job.attempts)
            result.requeued += 1
            logger.warning("job %s lost its worker %s; queued again", job_id, job.worker)

    if settings.retention_hours > 0:
        limit = settings.retention_hours * 3600.0
        for state in FINAL_STATES:
            for job_id in store.ids_in_state(state):
                job = store.get(job_id)
                if job is not None and job.finished_at and now - job.finished_at > limit:
                    shutil.rmtree(settings.inputs_dir / job_id, ignore_errors=True)
                    shutil.rmtree(settings.results_dir / job_id, ignore_errors=True)
                    shutil.rmtree(settings.dicom_late_dir / job_id, ignore_errors=True)
                    store.delete(job_id)
                    result.expired += 1
                    logger.info("job %s and its data deleted after the retention period", job_id)

    # Series still pending in the DICOM listener are not swept: they are accepted data that
    # the listener seals once it runs.
    for root in (settings.inputs_dir, settings.results_dir, settings.dicom_late_dir, settings.incoming_dir):
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            if now - folder.stat().st_mtime < ORPHAN_GRACE_S:
                continue
            if root != settings.incoming_dir and store.get(folder.name) is not None:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            result.orphans += 1
            logger.info("deleted %s/%s, which belongs to no job", root.name, folder.name)
    return result
