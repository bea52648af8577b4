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

from celery import Celery

from app.settings import Settings, get_settings

SEGMENT_TASK = "sats.segment"


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
