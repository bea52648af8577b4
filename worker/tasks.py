"""Celery tasks of the workers: one ``sats.segment`` task per job.

The model is loaded once per worker process, in the process that runs the tasks: with
the default prefork pool that is the pool's child, so CUDA is first touched after the
fork. Each attempt writes into its own folder (``results/{job}/attempt-{n}``), and the
job store lets only one attempt complete the job, so a job that two workers ran after a
lost worker still completes exactly once.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import redis
from celery import Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.settings import Settings, get_settings
from app.store import FINAL_STATES, JobStore
from model.errors import SATsError
from worker.celery_app import DELIVER_TASK, SEGMENT_TASK, celery_app, queue_deliveries

logger = logging.getLogger(__name__)

_predictor: Any = None
_store: JobStore | None = None
_heartbeat_stop = threading.Event()


def get_store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.from_url(get_settings().redis_url)
    return _store


def _make_predictor(settings: Settings) -> Any:
    import torch

    from model.predict import Predictor
    from worker.cli_model import default_atlas, default_model
    from worker.pipeline import freeze_startup_objects, warm_up

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            logger.warning("no CUDA device available; this worker runs on the CPU, which is much slower")
    predictor = Predictor(
        settings.model_path or default_model(),
        atlas=settings.atlas_path or default_atlas(),
        device=torch.device(device),
        step_fraction=settings.step_fraction,
        mirror=settings.mirror_tta,
    )
    logger.info("model %s loaded on %s (pid %d)", predictor.info.name, device, os.getpid())
    try:
        warm_up()
    except Exception:  # the first job then pays the first-use cost itself
        logger.warning(
            "warm-up of the output writers failed in pid %d, so its first job will be slower",
            os.getpid(),
            exc_info=True,
        )
    freeze_startup_objects()
    return predictor


def get_predictor() -> Any:
    """Return this process's model, loading it on first use."""
    global _predictor
    if _predictor is None:
        _predictor = _make_predictor(get_settings())
    return _predictor


@worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    global _store
    _store = None  # a Redis connection must not be shared across fork
    get_predictor()


def _beat(name: str, interval_s: float) -> None:
    store = JobStore.from_url(get_settings().redis_url)
    while not _heartbeat_stop.is_set():
        try:
            store.heartbeat(name, interval_s)
        except redis.RedisError as error:
            logger.warning("heartbeat of %s failed: %s", name, error)
        _heartbeat_stop.wait(interval_s)


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    name = str(getattr(sender, "hostname", "worker"))
    thread = threading.Thread(target=_beat, args=(name, get_settings().worker_heartbeat_s), daemon=True)
    thread.start()
    logger.info("worker %s ready; heartbeat every %.1f s", name, get_settings().worker_heartbeat_s)


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    _heartbeat_stop.set()


#: Maximum hold time at a fault-test point (seconds), so that a forgotten hold file cannot stall a worker.
FAULT_HOLD_LIMIT_S = 300.0


def _hold_for_fault_test(stage: str) -> None:
    """Hold the job at the start of ``stage`` while a fault test requests it; no effect otherwise.

    The fault tests set ``SATS_FAULT_HOLD_DIR`` (never set it in a deployment). The job
    then waits here while the file ``<dir>/<stage>`` exists, at most
    :data:`FAULT_HOLD_LIMIT_S`, so that a test can kill the worker in a chosen stage.
    """
    folder = os.environ.get("SATS_FAULT_HOLD_DIR")
    if not folder:
        return
    hold = Path(folder) / stage
    deadline = time.monotonic() + FAULT_HOLD_LIMIT_S
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _outputs_with_report(report: dict[str, Any]) -> dict[str, Any]:
    outputs = dict(report.get("outputs", {}))
    outputs["report"] = "report.json"
    return outputs


@celery_app.task(name=SEGMENT_TASK, bind=True)
def segment_job(self: Task, job_id: str) -> str:
    """Run the segmentation job ``job_id`` and record its outcome in the job store.

    Outcomes:

    - ``completed``.
    - ``failed`` without retry for input, model and output errors, because a rerun would
      fail the same way.
    - A retry with back-off after a transient storage or Redis fault, up to
      ``SATS_MAX_RETRIES`` times.
    - ``failed`` with ``internal.error`` for any other exception.

    Returns the final state.
    """
    from worker.pipeline import STAGE_PROGRESS, SegmentOptions, segment_series

    settings = get_settings()
    store = get_store()
    job = store.get(job_id)
    if job is None:
        logger.warning("job %s not found; it was deleted before it ran", job_id)
        return "missing"
    if job.state in FINAL_STATES:
        logger.info("job %s is already %s; duplicate delivery ignored", job_id, job.state)
        return job.state
    worker_name = f"{self.request.hostname} pid {os.getpid()}"
    job = store.mark_running(job_id, worker=worker_name)
    if job is None:
        return "skipped"
    if job.attempts > settings.max_retries + 1:
        message = (
            f"the job was started {job.attempts} times without finishing; its worker may run out of memory "
            "or be killed (see the worker logs)"
        )
        store.mark_failed(job_id, "job.too_many_attempts", message)
        logger.error("job %s failed: %s", job_id, message)
        return "failed"

    logger.info(
        "job %s attempt %d started on %s (series %s)", job_id, job.attempts, worker_name, job.series_instance_uid
    )
    attempt_dir = settings.results_dir / job_id / f"attempt-{job.attempts}"

    def on_stage(stage: str) -> None:
        store.update_stage(job_id, stage, STAGE_PROGRESS[stage])
        _hold_for_fault_test(stage)

    try:
        report = segment_series(settings.inputs_dir / job_id, attempt_dir, get_predictor(), SegmentOptions(), on_stage)
    except SATsError as error:
        store.mark_failed(job_id, error.code, str(error))
        logger.warning("job %s failed: %s [%s]", job_id, error, error.code)
        shutil.rmtree(attempt_dir, ignore_errors=True)
        return "failed"
    except (OSError, redis.RedisError) as error:
        shutil.rmtree(attempt_dir, ignore_errors=True)
        if self.request.retries < settings.max_retries:
            countdown = 10 * 2**self.request.retries
            logger.warning("job %s hit a transient fault (%s); retry in %d s", job_id, error, countdown)
            store.requeue(job_id, f"retrying after a transient fault: {error}")
            raise self.retry(exc=error, countdown=countdown) from error
        store.mark_failed(job_id, "job.transient_failure", f"failed after {settings.max_retries} retries: {error}")
        logger.error("job %s failed after %d retries: %s", job_id, settings.max_retries, error)
        return "failed"
    except Exception as error:
        logger.exception("job %s failed with an unexpected error", job_id)
        store.mark_failed(job_id, "internal.error", f"{type(error).__name__}: {error}")
        shutil.rmtree(attempt_dir, ignore_errors=True)
        return "failed"

    result_dir = str(attempt_dir.relative_to(settings.results_dir))
    if not store.mark_completed(job_id, report, _outputs_with_report(report), result_dir):
        logger.info("job %s was completed by another attempt; attempt %d discarded", job_id, job.attempts)
        shutil.rmtree(attempt_dir, ignore_errors=True)
        return "duplicate"
    timings = {stage: seconds for stage, seconds in report["timings_s"].items() if stage != "total"}
    store.record_stage_seconds(timings)
    logger.info("job %s completed in %.1f s", job_id, report["timings_s"]["total"])
    queue_deliveries(job_id, job.calling_aet)
    return "completed"


@celery_app.task(name=DELIVER_TASK, bind=True)
def deliver_job(self: Task, job_id: str, destination_name: str) -> str:
    """Send a completed job's RTSTRUCT and SEG to one destination and record the outcome.

    Transient faults are retried with back-off (10 s, 20 s, 40 s ...) up to
    ``SATS_DELIVERY_RETRIES`` times; then the outcome is ``failed`` with the last error.
    """
    from worker.delivery import TransientDeliveryError, deliver

    settings = get_settings()
    store = get_store()
    job = store.get(job_id)
    if job is None or job.state != "completed":
        logger.warning("delivery of job %s skipped: the job is %s", job_id, "missing" if job is None else job.state)
        return "skipped"
    destination = next((d for d in settings.destinations if d.name == destination_name), None)
    files = [settings.results_dir / job.result_dir / name for name in ("rtstruct.dcm", "seg.dcm")]
    files = [path for path in files if path.is_file()]
    if destination is None:
        message = f"destination {destination_name!r} is not configured (SATS_DESTINATIONS)"
        store.record_delivery(job_id, [_outcome(destination_name, "all", "failed", message)])
        logger.error("delivery of job %s failed: %s", job_id, message)
        return "failed"
    try:
        outcomes = deliver(destination, files, settings.dicom_ae_title)
    except (TransientDeliveryError, OSError) as error:
        retries = self.request.retries
        if retries < settings.delivery_retries:
            countdown = 10 * 2**retries
            store.record_delivery(
                job_id,
                [_outcome(destination.name, "all", "retrying", f"{error}; retry {retries + 1} in {countdown} s")],
            )
            logger.warning(
                "delivery of job %s to %s failed (%s); retry in %d s", job_id, destination.name, error, countdown
            )
            raise self.retry(exc=error, countdown=countdown) from error
        message = f"gave up after {retries} retries: {error}"
        store.record_delivery(job_id, [_outcome(destination.name, "all", "failed", message)])
        logger.error("delivery of job %s to %s failed: %s", job_id, destination.name, message)
        return "failed"
    except SATsError as error:  # a configuration fault, such as a TLS file missing here: retrying cannot help
        store.record_delivery(job_id, [_outcome(destination.name, "all", "failed", str(error))])
        logger.error("delivery of job %s to %s failed: %s [%s]", job_id, destination.name, error, error.code)
        return "failed"
    store.record_delivery(job_id, [{**outcome.to_dict(), "sop_class": outcome.sop_class} for outcome in outcomes])
    # An earlier "retrying" or "failed" entry for all SOP classes is replaced by the real outcomes.
    store.redis.hdel(f"sats:job-delivery:{job_id}", f"{destination.name}|all")
    for outcome in outcomes:
        logger.info(
            "job %s: %s %s to %s (%s)",
            job_id,
            outcome.sop_class,
            outcome.status,
            destination.name,
            outcome.message,
        )
    return "delivered" if all(o.status == "delivered" for o in outcomes) else "partial"


def _outcome(destination: str, sop_class: str, status: str, message: str) -> dict[str, Any]:
    return {
        "destination": destination,
        "sop_class": sop_class,
        "sop_instance_uid": "",
        "status": status,
        "message": message,
    }
