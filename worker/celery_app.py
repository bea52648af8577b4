"""The Celery application shared by the gateway (to queue jobs) and the workers.

This module imports no torch, so the gateway can queue jobs by task name. The
reliability settings, each chosen for long GPU jobs:

``task_acks_late`` with ``task_reject_on_worker_lost``
    A job's message is acknowledged only when the task returns. If the process running it
    dies (SIGKILL, out of memory), Celery puts the message back on the queue and another
    process runs the job again.
``broker_transport_options.visibility_timeout``
    If the whole worker dies, Redis hands the unacknowledged message to another worker
    after this many seconds. It must exceed the job time limit, or a running job would be
    handed out twice; the settings enforce that.
``worker_prefetch_multiplier = 1``
    A worker reserves one job at a time, so jobs wait in the shared queue for the first
    free GPU instead of in one busy worker's buffer.
``task_time_limit``
    A job past the limit has its worker process replaced; the job is marked failed.
"""

from __future__ import annotations

import logging

from celery import Celery

from app.settings import Destination, Settings, get_settings
from app.store import JobStore

logger = logging.getLogger(__name__)

SEGMENT_TASK = "sats.segment"
DELIVER_TASK = "sats.deliver"


def make_celery(settings: Settings | None = None) -> Celery:
    """Create the Celery application for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    application = Celery("sats", broker=settings.redis_url, include=["worker.tasks"])
    application.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_time_limit=settings.job_time_limit_s,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # Task events let Flower show the queue.
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return application


celery_app = make_celery()


def enqueue_job(job_id: str, attempt: int = 0) -> None:
    """Queue the segmentation task of ``job_id``."""
    celery_app.send_task(SEGMENT_TASK, args=[job_id], task_id=f"{job_id}-{attempt}")


def send_job(store: JobStore, job_id: str, attempt: int = 0) -> None:
    """Queue the job's segmentation task and record when it was sent.

    The reaper sends again a queued job that was never recorded as sent, so a job whose
    send failed (Redis briefly unreachable) is not stranded.
    """
    enqueue_job(job_id, attempt)
    store.mark_enqueued(job_id)


def enqueue_delivery(job_id: str, destination: str) -> None:
    """Queue the delivery of ``job_id``'s results to the configured destination named ``destination``."""
    celery_app.send_task(DELIVER_TASK, args=[job_id, destination])


def destinations_for(settings: Settings, calling_aet: str) -> list[Destination]:
    """Return the destinations of a job: those marked ``always``, and its sender's when routing back is on.

    The sender's destination is the configured DICOM destination whose AE title is the
    calling AE title; it is not added twice.
    """
    chosen = [d for d in settings.destinations if d.always]
    if settings.route_to_sender and calling_aet:
        sender = [d for d in settings.destinations if d.kind == "dicom" and d.ae_title == calling_aet]
        if not sender:
            logger.info("sender %s is not a configured destination; results are not routed back", calling_aet)
        chosen += [d for d in sender if d.name not in {c.name for c in chosen}]
    return chosen


def queue_deliveries(job_id: str, calling_aet: str) -> list[str]:
    """Queue one delivery task per destination of the job; return the destination names."""
    names = [destination.name for destination in destinations_for(get_settings(), calling_aet)]
    for name in names:
        enqueue_delivery(job_id, name)
    return names
