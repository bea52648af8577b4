"""Job records in Redis, shared by the gateway (writer of new jobs) and the workers.

Keys (all under the ``sats:`` prefix):

``sats:job:{id}``
    Hash with the job's fields (see :class:`Job`).
``sats:jobs``
    Sorted set of job ids scored by creation time, for listing newest first.
``sats:jobs:{state}``
    Set of job ids per state, for metrics and the reaper.
``sats:dedup:{key}``
    Job id for one exact set of received instances (see :func:`series_key`).
``sats:instance:{sop_instance_uid}``
    ``{job_id} {kind}`` for every result instance, for WADO-RS retrieval.
``sats:result-series:{series_instance_uid}``
    Job id that produced a result series.
``sats:worker:{name}``
    Heartbeat of a live worker, expiring after three missed beats.
``sats:stage-seconds``
    Hash of histogram counters of stage durations, for Prometheus.

State machine: ``queued`` -> ``running`` -> ``completed`` or ``failed``; ``running`` ->
``queued`` when a job is retried or requeued after its worker was lost. Transitions use
Redis transactions (WATCH), so a job completes at most once even if two workers ran it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "completed", "failed")
FINAL_STATES = ("completed", "failed")

#: Upper bounds (seconds) of the stage-duration histogram buckets.
STAGE_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)

_PREFIX = "sats:"


def _now() -> float:
    return time.time()


@dataclass
class Job:
    """One segmentation job: a CT series in, results out.

    Attributes
    ----------
    id
        Job id (32 hex digits).
    state
        ``queued``, ``running``, ``completed`` or ``failed``.
    stage
        Current or last pipeline stage (``load``, ``symmetrize``, ``preprocess``, ``infer``,
        ``postprocess``, ``write``), empty before the first.
    progress
        Fraction of the pipeline done, 0 to 1.
    study_instance_uid, series_instance_uid
        UIDs of the input CT series.
    instances
        Number of DICOM instances received for the series.
    source
        How the series arrived: ``stow-rs``, ``upload`` or ``dicom``.
    created_at, enqueued_at, updated_at, started_at, finished_at
        Unix times in seconds (0 when not yet reached).
    attempts
        How many times a worker started the job.
    error_code, error_message
        Stable error code and message of a failed job.
    worker
        Worker name and process id of the last attempt.
    calling_aet
        Calling AE title of the sender, for a series received over DICOM.
    late_instances
        Instances of the series that arrived over DICOM after the job started; they are
        kept apart and not used.
    report
        The job report of a completed job (see docs/dicom.md).
    outputs
        Result files by kind (``rtstruct``, ``seg``, ``qa_png``, ``report``): file name,
        Series and SOP Instance UIDs.
    result_dir
        Folder of the results, relative to the results root.
    """

    id: str
    state: str = "queued"
    stage: str = ""
    progress: float = 0.0
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    instances: int = 0
    source: str = ""
    created_at: float = 0.0
    enqueued_at: float = 0.0
    updated_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    attempts: int = 0
    error_code: str = ""
    error_message: str = ""
    worker: str = ""
    calling_aet: str = ""
    late_instances: int = 0
    report: dict[str, Any] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    result_dir: str = ""

    def to_redis(self) -> dict[str, str]:
        values = asdict(self)
        values["report"] = json.dumps(self.report) if self.report is not None else ""
        values["outputs"] = json.dumps(self.outputs)
        return {key: str(value) for key, value in values.items()}

    @classmethod
    def from_redis(cls, values: dict[str, str]) -> Job:
        job = cls(id=values["id"])
        for name, current in asdict(job).items():
            if name not in values or name == "id":
                continue
            raw = values[name]
            if name == "report":
                setattr(job, name, json.loads(raw) if raw else None)
            elif name == "outputs":
                setattr(job, name, json.loads(raw) if raw else {})
            elif isinstance(current, bool):
                setattr(job, name, raw == "True")
            elif isinstance(current, int):
                setattr(job, name, int(raw))
            elif isinstance(current, float):
                setattr(job, name, float(raw))
            else:
                setattr(job, name, raw)
        return job


def series_key(series_instance_uid: str, sop_instance_uids: Iterable[str]) -> str:
    """Return the de-duplication key of a received series: its UID and exact set of instances."""
    digest = hashlib.sha256()
    digest.update(series_instance_uid.encode())
    for uid in sorted(sop_instance_uids):
        digest.update(b"\0" + uid.encode())
    return digest.hexdigest()


class JobStore:
    """Redis-backed job records (see the module docstring for the keys)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, health_check_interval=30))

    # Keys -------------------------------------------------------------------------------
    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"{_PREFIX}job:{job_id}"

    # Creation and lookup ----------------------------------------------------------------
    def create(self, job: Job, dedup_key: str | None = None) -> tuple[Job, bool]:
        """Store a new queued job, or return the existing job with the same ``dedup_key``.

        Returns the job and whether it was created.
        """
        now = _now()
        job.created_at = job.updated_at = now
        job.state = "queued"
        if dedup_key is not None:
            claimed = self.redis.set(f"{_PREFIX}dedup:{dedup_key}", job.id, nx=True)
            if not claimed:
                existing_id = self.redis.get(f"{_PREFIX}dedup:{dedup_key}")
                existing = self.get(str(existing_id)) if existing_id else None
                if existing is not None:
                    return existing, False
                self.redis.set(f"{_PREFIX}dedup:{dedup_key}", job.id)  # the old job was deleted
        with self.redis.pipeline() as pipe:
            pipe.hset(self._job_key(job.id), mapping=job.to_redis())
            pipe.zadd(f"{_PREFIX}jobs", {job.id: now})
            pipe.sadd(f"{_PREFIX}jobs:queued", job.id)
            if dedup_key is not None:
                pipe.hset(self._job_key(job.id), "dedup_key", dedup_key)
            pipe.execute()
        return job, True

    def get(self, job_id: str) -> Job | None:
        values = self.redis.hgetall(self._job_key(job_id))
        return Job.from_redis(values) if values else None  # type: ignore[arg-type]

    def list_jobs(self, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
        """Return jobs newest first, and the total number of jobs."""
        ids = self.redis.zrevrange(f"{_PREFIX}jobs", offset, offset + limit - 1)
        total = int(self.redis.zcard(f"{_PREFIX}jobs"))  # type: ignore[arg-type]
        jobs = [job for job in (self.get(job_id) for job_id in ids) if job is not None]  # type: ignore[union-attr]
        return jobs, total

    def count_by_state(self) -> dict[str, int]:
        return {state: int(self.redis.scard(f"{_PREFIX}jobs:{state}")) for state in STATES}  # type: ignore[arg-type]

    def ids_in_state(self, state: str) -> list[str]:
        return sorted(self.redis.smembers(f"{_PREFIX}jobs:{state}"))  # type: ignore[arg-type]

    # Transitions ------------------------------------------------------------------------
    def _transition(self, job_id: str, allowed_from: Sequence[str], new_state: str, **fields: Any) -> Job | None:
        """Move a job to ``new_state`` if it is in one of ``allowed_from``; return it or None."""
        key = self._job_key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = pipe.hget(key, "state")
                    if current is None or current not in allowed_from:
                        pipe.unwatch()
                        return None
                    values = {name: _encode(value) for name, value in fields.items()}
                    values["state"] = new_state
                    values["updated_at"] = str(_now())
                    pipe.multi()
                    pipe.hset(key, mapping=values)
                    pipe.srem(f"{_PREFIX}jobs:{current}", job_id)
                    pipe.sadd(f"{_PREFIX}jobs:{new_state}", job_id)
                    pipe.execute()
                    return self.get(job_id)
                except redis.WatchError:
                    continue

    def mark_running(self, job_id: str, worker: str) -> Job | None:
        """Start an attempt; returns None if the job is gone or already final."""
        job = self._transition(
            job_id, ("queued", "running"), "running", worker=worker, started_at=_now(), stage="", progress=0.0
        )
        if job is not None:
            self.redis.hincrby(self._job_key(job_id), "attempts", 1)
            job.attempts += 1
        return job

    def mark_enqueued(self, job_id: str) -> None:
        """Record that the job's task message was sent to the queue."""
        self.redis.hset(self._job_key(job_id), "enqueued_at", str(_now()))

    def update_stage(self, job_id: str, stage: str, progress: float) -> None:
        self.redis.hset(
            self._job_key(job_id), mapping={"stage": stage, "progress": str(progress), "updated_at": str(_now())}
        )

    def mark_completed(self, job_id: str, report: dict[str, Any], outputs: dict[str, Any], result_dir: str) -> bool:
        """Complete a running job once; returns False if it was already final or is gone."""
        job = self._transition(
            job_id,
            ("running",),
            "completed",
            report=report,
            outputs=outputs,
            result_dir=result_dir,
            finished_at=_now(),
            progress=1.0,
            error_code="",
            error_message="",
        )
        if job is None:
            return False
        for kind, output in outputs.items():
            if isinstance(output, dict) and "sop_instance_uid" in output:
                self.redis.set(f"{_PREFIX}instance:{output['sop_instance_uid']}", f"{job_id} {kind}")
                self.redis.set(f"{_PREFIX}result-series:{output['series_instance_uid']}", job_id)
        return True

    def mark_failed(self, job_id: str, code: str, message: str) -> bool:
        job = self._transition(
            job_id, ("queued", "running"), "failed", error_code=code, error_message=message, finished_at=_now()
        )
        return job is not None

    def requeue(self, job_id: str, reason: str) -> bool:
        """Put a running job back to queued (before a retry); returns False if it was not running."""
        job = self._transition(job_id, ("running",), "queued", error_message=reason)
        return job is not None

    def requeue_for_rerun(self, job_id: str) -> Job | None:
        """Reset a final job to queued for a requested re-run."""
        return self._transition(
            job_id,
            FINAL_STATES,
            "queued",
            error_code="",
            error_message="",
            stage="",
            progress=0.0,
            finished_at=0.0,
            enqueued_at=0.0,  # until the re-run is sent; the reaper resends it otherwise
        )

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        dedup = self.redis.hget(self._job_key(job_id), "dedup_key")
        with self.redis.pipeline() as pipe:
            pipe.delete(self._job_key(job_id))
            pipe.delete(f"{_PREFIX}job-delivery:{job_id}", f"{_PREFIX}job-late:{job_id}")
            pipe.delete(f"{_PREFIX}job-instances:{job_id}")
            pipe.zrem(f"{_PREFIX}jobs", job_id)
            for state in STATES:
                pipe.srem(f"{_PREFIX}jobs:{state}", job_id)
            if dedup:
                pipe.delete(f"{_PREFIX}dedup:{dedup}")
            if job is not None:
                for output in job.outputs.values():
                    if isinstance(output, dict) and "sop_instance_uid" in output:
                        pipe.delete(f"{_PREFIX}instance:{output['sop_instance_uid']}")
                        pipe.delete(f"{_PREFIX}result-series:{output['series_instance_uid']}")
            pipe.execute()

    # DICOM listener ---------------------------------------------------------------------
    def remember_dicom_series(self, job_id: str, series_instance_uid: str, sop_instance_uids: list[str]) -> None:
        """Record which job a series received over DICOM went to, and its instances."""
        ttl = 30 * 24 * 3600  # a month, longer than any job stays queued or running
        with self.redis.pipeline() as pipe:
            pipe.set(f"{_PREFIX}dicom-series:{series_instance_uid}", job_id, ex=ttl)
            if sop_instance_uids:
                pipe.sadd(f"{_PREFIX}job-instances:{job_id}", *sop_instance_uids)
                pipe.expire(f"{_PREFIX}job-instances:{job_id}", ttl)
            pipe.execute()

    def record_late_instance(self, job_id: str, sop_instance_uid: str) -> None:
        """Count an instance that arrived after the job started (it is not used by the job)."""
        with self.redis.pipeline() as pipe:
            pipe.hincrby(self._job_key(job_id), "late_instances", 1)
            pipe.rpush(f"{_PREFIX}job-late:{job_id}", sop_instance_uid)
            pipe.execute()

    def late_instances(self, job_id: str) -> list[str]:
        return [str(uid) for uid in self.redis.lrange(f"{_PREFIX}job-late:{job_id}", 0, -1)]  # type: ignore[union-attr]

    # Delivery ---------------------------------------------------------------------------
    def record_delivery(self, job_id: str, outcomes: list[dict[str, Any]]) -> None:
        """Store delivery outcomes, one per destination and SOP class (a later outcome replaces an earlier one)."""
        if not outcomes:
            return
        now = _now()
        values = {f"{item['destination']}|{item['sop_class']}": json.dumps({**item, "at": now}) for item in outcomes}
        self.redis.hset(f"{_PREFIX}job-delivery:{job_id}", mapping=values)

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        values = self.redis.hgetall(f"{_PREFIX}job-delivery:{job_id}")
        return [json.loads(value) for _, value in sorted(values.items())]  # type: ignore[union-attr]

    # Results ----------------------------------------------------------------------------
    def find_instance(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """Return ``(job_id, kind)`` of a result instance."""
        value = self.redis.get(f"{_PREFIX}instance:{sop_instance_uid}")
        if not value:
            return None
        job_id, kind = str(value).split(" ", 1)
        return job_id, kind

    def find_result_series(self, series_instance_uid: str) -> str | None:
        value = self.redis.get(f"{_PREFIX}result-series:{series_instance_uid}")
        return str(value) if value else None

    # Workers and metrics ----------------------------------------------------------------
    def heartbeat(self, worker: str, interval_s: float) -> None:
        self.redis.set(f"{_PREFIX}worker:{worker}", str(_now()), ex=max(1, int(3 * interval_s + 0.999)))

    def live_workers(self) -> list[str]:
        return sorted(key.split(":", 2)[2] for key in self.redis.scan_iter(f"{_PREFIX}worker:*"))

    def record_stage_seconds(self, timings: dict[str, float]) -> None:
        with self.redis.pipeline() as pipe:
            for stage, seconds in timings.items():
                for bound in STAGE_BUCKETS:
                    if seconds <= bound:
                        pipe.hincrby(f"{_PREFIX}stage-seconds", f"{stage}|{bound}", 1)
                pipe.hincrby(f"{_PREFIX}stage-seconds", f"{stage}|count", 1)
                pipe.hincrbyfloat(f"{_PREFIX}stage-seconds", f"{stage}|sum", seconds)
            pipe.execute()

    def stage_seconds(self) -> dict[str, dict[str, float]]:
        """Return ``{stage: {bound or 'count' or 'sum': value}}`` of the stage histogram."""
        found: dict[str, dict[str, float]] = {}
        for name, value in self.redis.hgetall(f"{_PREFIX}stage-seconds").items():  # type: ignore[union-attr]
            stage, bound = str(name).split("|", 1)
            found.setdefault(stage, {})[bound] = float(value)
        return found

    def ping(self) -> bool:
        return bool(self.redis.ping())


def new_job_id() -> str:
    return uuid.uuid4().hex


def _encode(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
