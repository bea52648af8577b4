"""Throughput of the whole service: N studies through the real gateway and K Celery workers.

:func:`run_service_benchmark` starts the gateway (uvicorn) and K Celery workers as child
processes on 127.0.0.1 and writes N small synthetic CT series. It sends them all at once
over STOW-RS and follows the jobs until they finish. The result contains throughput, queue
wait, lost jobs and the median seconds of each pipeline stage. Run it from the repository
root::

    python -m worker.benchmarks.service --studies 10 --workers 2

The last output line is the result as one JSON object.

Thread budget: each worker is its own process, and torch, OpenMP and ITK start one
thread per core by default, so K workers on C cores would run K x C compute threads.
Each worker therefore gets ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` set to ``max(1, C // K)``, where C is the number
of cores this process may run on. The gateway keeps the defaults because it does no
compute.

The Redis database named in ``redis_url`` is flushed before and after the run, so it
must be a dedicated database. Inherited ``SATS_*`` variables are not passed on, so a
configured result destination never receives the benchmark's results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from redis.connection import parse_url

from app.dicomweb import multipart_related_body
from app.settings import key_digest
from app.store import FINAL_STATES
from model.errors import SATsError
from worker.synthetic_dicom import HeadNeck, SeriesGeometry, render_phantom, write_ct_series

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Limits on the arguments, so that a typo cannot start hundreds of processes.
MAX_STUDIES = 500
MAX_WORKERS = 32

#: Seconds allowed for the gateway and every worker to report ready (workers load torch
#: and the model before their first heartbeat counts).
STARTUP_TIMEOUT_S = 180.0
#: Log line of worker.tasks when a worker process has loaded its model.
# NOTE: this couples the benchmark to that message's wording. If the wording changes, the
# wait ends after STARTUP_TIMEOUT_S with a warning instead of failing.
MODEL_LOADED = re.compile(r"model \S+ loaded on ")
#: Seconds between SIGTERM and SIGKILL when stopping the child processes.
STOP_GRACE_S = 15.0
#: Seconds between two polls of the unfinished jobs.
POLL_INTERVAL_S = 0.5
#: Seconds allowed for one STOW-RS request.
UPLOAD_TIMEOUT_S = 120.0

#: Grid of each benchmark series, chosen so that one job takes a few seconds on one CPU
#: core: 24 axial slices of 128 x 128 pixels at 1.5 x 1.5 mm, 3 mm apart.
SERIES_SLICES = 24
SERIES_PIXELS = 128
SERIES_PIXEL_SPACING_MM = 1.5
SERIES_SLICE_SPACING_MM = 3.0
#: Centre of every series in the patient frame (LPS, mm).
SERIES_CENTRE_LPS_MM = (0.0, 20.0, -120.0)


class ServiceBenchmarkError(SATsError):
    """The service could not be started or stopped responding during the benchmark."""

    code = "bench.service_failed"


@dataclass
class ChildProcess:
    """A service process started in its own session, with stdout and stderr in a log file."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:  # a rerun in the same work_dir starts a new log
            self.popen = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        logger.info("started %s (pid %d), log %s", self.name, self.popen.pid, self.log_path)

    def exit_code(self) -> int | None:
        """Return the exit status, or None while the process runs or before it starts."""
        return None if self.popen is None else self.popen.poll()

    def signal_group(self, signal_number: int) -> None:
        """Send ``signal_number`` to the process group (for a worker: the main process and its pool)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        # The group can vanish between poll() and killpg().
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal_number)


@dataclass
class Upload:
    """Outcome of one STOW-RS request."""

    index: int
    started_at: float
    job_id: str | None = None
    error: str | None = None


@dataclass
class JobRecord:
    """Polling record of one job, with ``view`` the last job JSON that the gateway returned."""

    job_id: str
    view: dict[str, Any] = field(default_factory=dict)
    first_started_at: float | None = None

    @property
    def state(self) -> str:
        return str(self.view.get("state", "missing"))


def run_service_benchmark(
    studies: int = 10,
    workers: int = 2,
    work_dir: Path | None = None,
    redis_url: str = "redis://127.0.0.1:6379/14",
    timeout_s: float = 900,
) -> dict[str, Any]:
    """Run ``studies`` synthetic CT series through the gateway and ``workers`` Celery workers.

    Parameters
    ----------
    studies
        Number of series sent, each in its own concurrent STOW-RS request (1 to 500).
    workers
        Number of Celery worker processes, each with concurrency 1 (1 to 32).
    work_dir
        Folder for the series, the service data and the process logs (``gateway.log``,
        ``b1.log``, ...). Default: a new temporary folder, deleted after a successful run
        and kept after an error.
    redis_url
        Redis URL with an explicit database other than 0. Everything in that database is
        deleted before and after the run.
    timeout_s
        Seconds from the first upload after which unfinished jobs count as lost.

    Returns
    -------
    dict
        JSON-serialisable result with these keys:

        - ``studies``, ``workers`` and ``threads_per_worker`` (the OpenMP threads of each worker).
        - ``wall_s``: seconds from the first upload's start to the last job's completion.
        - ``studies_per_hour``: completed studies per hour of ``wall_s``.
        - ``p95_queue_wait_s`` and ``median_queue_wait_s``: ``started_at - created_at`` of
          each job's first attempt, or None when no job started.
        - ``lost``: studies not completed, which are upload errors, failed and timed-out jobs.
        - ``failed``, ``upload_errors``, ``timed_out`` and ``retried`` (jobs started more than once).
        - ``stage_median_s``: median seconds of each pipeline stage over the completed jobs.
        - ``failures``: job id or upload number of each lost study, with its state and error.
        - ``work_dir``: only when the caller passed ``work_dir``.

    Raises
    ------
    ValueError
        If an argument is out of range or ``redis_url`` names no database or database 0.
    ServiceBenchmarkError
        If the service does not become ready or the gateway exits during the run. The
        message names the process logs.
    """
    database = _check_arguments(studies, workers, redis_url, timeout_s)
    owns_work_dir = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="sats-service-bench-")) if work_dir is None else Path(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    client = redis.Redis.from_url(redis_url)
    logger.info("flushing Redis database %d at %s before the run", database, redis_url)
    client.flushdb()

    api_key = secrets.token_urlsafe(24)
    threads = max(1, _available_cores() // workers)
    processes: list[ChildProcess] = []
    try:
        bodies = _write_studies(root / "series", studies)
        env = _service_env(redis_url, root / "data", key_digest(api_key))
        base_url = _start_service(processes, root, env, workers, threads)
        headers = {"Authorization": f"Bearer {api_key}"}
        _wait_until_ready(base_url, processes, workers)
        _wait_for_models(processes[1:])

        uploads = _upload_all(base_url, headers, bodies)
        job_ids = [upload.job_id for upload in uploads if upload.job_id is not None]
        deadline = min(upload.started_at for upload in uploads) + timeout_s
        records = _follow_jobs(base_url, headers, job_ids, deadline, processes)
        poll_end = time.time()
    finally:
        _stop(processes)
        logger.info("flushing Redis database %d after the run", database)
        client.flushdb()
        client.close()

    result = _summarise(uploads, records, workers, threads, poll_end)
    if owns_work_dir:
        shutil.rmtree(root, ignore_errors=True)
    else:
        result["work_dir"] = str(root)
    return result


def _check_arguments(studies: int, workers: int, redis_url: str, timeout_s: float) -> int:
    """Validate the arguments and return the Redis database number."""
    if not 1 <= studies <= MAX_STUDIES:
        raise ValueError(f"studies must be between 1 and {MAX_STUDIES}, got {studies!r}")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be between 1 and {MAX_WORKERS}, got {workers!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    database = parse_url(redis_url).get("db")
    if database is None or int(database) == 0:
        raise ValueError(
            f"redis_url {redis_url!r} must name a dedicated database other than 0, for example "
            "redis://127.0.0.1:6379/14, because the benchmark deletes everything in it"
        )
    return int(database)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _write_studies(folder: Path, count: int) -> list[tuple[bytes, str]]:
    """Write ``count`` distinct phantom series and return each one's STOW-RS body and Content-Type.

    Each series has its own random Study and Series Instance UIDs, noise seed, head
    position and lesion side, so the gateway creates one new job per series.
    """
    geometry = SeriesGeometry.axial(
        "HFS",
        rows=SERIES_PIXELS,
        columns=SERIES_PIXELS,
        slices=SERIES_SLICES,
        pixel_spacing_mm=(SERIES_PIXEL_SPACING_MM, SERIES_PIXEL_SPACING_MM),
        slice_spacing_mm=SERIES_SLICE_SPACING_MM,
        centre_lps_mm=SERIES_CENTRE_LPS_MM,
    )
    x, y, z = SERIES_CENTRE_LPS_MM
    bodies = []
    for index in range(count):
        anatomy = HeadNeck(
            centre_lps_mm=(x + (index % 5) - 2.0, y, z),
            yaw_deg=float(index % 7) - 3.0,
            lesion_side="left" if index % 2 == 0 else "right",
        )
        volume = render_phantom(geometry, [anatomy], noise_sd_hu=10.0, seed=index)
        paths = write_ct_series(volume, geometry, folder / f"study-{index:03d}", overwrite=True)
        chunks, content_type = multipart_related_body(paths)
        bodies.append((b"".join(chunks), content_type))
    logger.info("wrote %d series of %d slices to %s", count, SERIES_SLICES, folder)
    return bodies


def _service_env(redis_url: str, data_dir: Path, api_key_digest: str) -> dict[str, str]:
    """Return the environment of the service processes, without inherited ``SATS_*`` variables."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SATS_")}
    env.update(
        SATS_REDIS_URL=redis_url,
        SATS_DATA_DIR=str(data_dir),
        SATS_API_KEY_SHA256=api_key_digest,
        # The benchmark polls every unfinished job, so one client makes far more requests
        # than the default limit allows; it measures throughput, not the limit.
        SATS_RATE_LIMIT_PER_MINUTE="0",
        SATS_DEVICE="cpu",
        SATS_WORKER_HEARTBEAT_S="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_service(processes: list[ChildProcess], root: Path, env: dict[str, str], workers: int, threads: int) -> str:
    """Start the gateway and the workers, and return the gateway's base URL.

    Each process is appended to ``processes`` before it starts, so that the caller can
    stop the ones already running when a later start fails.
    """
    port = _free_port()
    gateway_command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    gateway_command += ["--host", "127.0.0.1", "--port", str(port)]
    processes.append(ChildProcess("gateway", gateway_command, env, root / "gateway.log"))

    worker_env = dict(env)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        worker_env[name] = str(threads)
    for number in range(1, workers + 1):
        command = [sys.executable, "-m", "celery", "-A", "worker.celery_app:celery_app", "worker"]
        command += ["--queues", "sats", "--concurrency", "1", "--prefetch-multiplier", "1"]
        command += ["--loglevel", "INFO", "--hostname", f"b{number}@%h", "--without-mingle", "--without-gossip"]
        processes.append(ChildProcess(f"b{number}", command, worker_env, root / f"b{number}.log"))

    for process in processes:
        process.start()
    return f"http://127.0.0.1:{port}"


def _log_names(processes: Sequence[ChildProcess]) -> str:
    return ", ".join(str(process.log_path) for process in processes)


def _check_running(processes: Sequence[ChildProcess], phase: str) -> None:
    """Raise ServiceBenchmarkError if any of ``processes`` has exited. ``phase`` completes the message."""
    for process in processes:
        code = process.exit_code()
        if code is not None:
            raise ServiceBenchmarkError(
                f"{process.name} exited with status {code} {phase}. See its log {process.log_path} "
                f"(all logs: {_log_names(processes)})"
            )


def _wait_until_ready(base_url: str, processes: Sequence[ChildProcess], workers: int) -> None:
    """Wait until ``/readyz`` lists ``workers`` live workers."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    reason = "no response"
    with httpx.Client(base_url=base_url, timeout=5) as http:
        while time.monotonic() < deadline:
            _check_running(processes, "while the service was starting")
            try:
                response = http.get("/readyz")
                live = response.json().get("workers", [])
                if response.status_code == 200 and len(live) >= workers:
                    logger.info("service ready at %s with workers %s", base_url, ", ".join(live))
                    return
                reason = f"/readyz returned {response.status_code} with {len(live)} of {workers} workers"
            except (httpx.HTTPError, ValueError) as error:
                reason = f"/readyz failed: {error}"
            time.sleep(0.5)
    raise ServiceBenchmarkError(
        f"the service was not ready after {STARTUP_TIMEOUT_S:.0f} s ({reason}). See the logs {_log_names(processes)}"
    )


def _wait_for_models(workers: Sequence[ChildProcess]) -> None:
    """Wait until every worker's log reports its model loaded, so that no queue wait includes the load.

    A Celery worker sends its first heartbeat (and so counts in ``/readyz``) before its pool
    process has loaded the model, which takes a few seconds more on a CPU.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    waiting = list(workers)
    while waiting and time.monotonic() < deadline:
        _check_running(workers, "while loading the model")
        waiting = [worker for worker in waiting if not MODEL_LOADED.search(worker.log_path.read_text(errors="replace"))]
        time.sleep(0.2)
    if waiting:
        logger.warning(
            "no 'model ... loaded' line in the logs of %s after %.0f s; the first jobs' queue wait may include "
            "model loading",
            ", ".join(worker.name for worker in waiting),
            STARTUP_TIMEOUT_S,
        )


def _upload_one(base_url: str, headers: dict[str, str], index: int, body: bytes, content_type: str) -> Upload:
    """Send one series over STOW-RS and return the id of the job it created."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=UPLOAD_TIMEOUT_S) as http:
        upload = Upload(index=index, started_at=time.time())
        try:
            response = http.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        except httpx.HTTPError as error:
            upload.error = f"STOW-RS request failed: {error!r}"
            return upload
    if response.status_code != 200:
        upload.error = f"STOW-RS returned {response.status_code}: {response.text[:300]}"
        return upload
    jobs = response.json().get("jobs", [])
    if len(jobs) != 1:
        upload.error = f"STOW-RS returned {len(jobs)} jobs for one series, expected 1"
        return upload
    upload.job_id = str(jobs[0]["id"])
    return upload


def _upload_all(base_url: str, headers: dict[str, str], bodies: Sequence[tuple[bytes, str]]) -> list[Upload]:
    """Send every body at once, one client thread per body."""
    with ThreadPoolExecutor(max_workers=len(bodies), thread_name_prefix="stow") as pool:
        futures = [
            pool.submit(_upload_one, base_url, headers, index, body, content_type)
            for index, (body, content_type) in enumerate(bodies)
        ]
        uploads = [future.result() for future in futures]
    for upload in uploads:
        if upload.error is not None:
            logger.error("upload %d: %s", upload.index, upload.error)
    logger.info("sent %d series; %d jobs created", len(uploads), sum(u.job_id is not None for u in uploads))
    return uploads


def _follow_jobs(
    base_url: str,
    headers: dict[str, str],
    job_ids: Sequence[str],
    deadline: float,
    processes: Sequence[ChildProcess],
) -> dict[str, JobRecord]:
    """Poll the unfinished jobs until all are completed or failed or ``deadline`` (Unix time) passes.

    The job JSON contains only the start of the last attempt, so the first attempt's
    start is the earliest ``started_at`` seen while polling.
    """
    records = {job_id: JobRecord(job_id) for job_id in job_ids}
    exited: set[str] = set()
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
        while time.time() < deadline:
            _check_running(processes[:1], "during the run")
            _warn_exited_workers(processes[1:], exited)
            pending = [record for record in records.values() if record.state not in FINAL_STATES]
            if not pending:
                break
            for record in pending:
                _poll_job(http, record)
            time.sleep(POLL_INTERVAL_S)
    return records


def _poll_job(http: httpx.Client, record: JobRecord) -> None:
    try:
        response = http.get(f"/v1/jobs/{record.job_id}")
        response.raise_for_status()
        view = response.json()
    except (httpx.HTTPError, ValueError) as error:
        logger.warning("polling job %s failed: %r", record.job_id, error)
        return
    record.view = view
    started_at = view.get("started_at")
    if started_at is not None and (record.first_started_at is None or started_at < record.first_started_at):
        record.first_started_at = float(started_at)


def _warn_exited_workers(workers: Sequence[ChildProcess], exited: set[str]) -> None:
    for process in workers:
        code = process.exit_code()
        if code is not None and process.name not in exited:
            exited.add(process.name)
            logger.warning(
                "worker %s exited with status %d during the run; see %s", process.name, code, process.log_path
            )


def _stop(processes: Sequence[ChildProcess]) -> None:
    """Send SIGTERM to every process group, then SIGKILL to those still running after the grace period."""
    for process in processes:
        process.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        if process.popen is None:
            continue
        try:
            process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s of SIGTERM; sending SIGKILL", process.name, STOP_GRACE_S)
            process.signal_group(signal.SIGKILL)
            process.popen.wait(timeout=10)
        logger.info("stopped %s (status %s)", process.name, process.popen.returncode)


def _summarise(
    uploads: Sequence[Upload], records: dict[str, JobRecord], workers: int, threads: int, poll_end: float
) -> dict[str, Any]:
    """Compute the result dictionary described in :func:`run_service_benchmark`."""
    completed = [record for record in records.values() if record.state == "completed"]
    failed = [record for record in records.values() if record.state == "failed"]
    unfinished = [record for record in records.values() if record.state not in FINAL_STATES]
    upload_errors = [upload for upload in uploads if upload.job_id is None]

    first_upload = min(upload.started_at for upload in uploads)
    finished = [float(record.view["finished_at"]) for record in completed if record.view.get("finished_at")]
    wall_s = (max(finished) if finished else poll_end) - first_upload

    waits = [
        record.first_started_at - float(record.view["created_at"])
        for record in records.values()
        if record.first_started_at is not None and "created_at" in record.view
    ]
    stages: dict[str, list[float]] = {}
    for record in completed:
        for stage, seconds in (record.view.get("timings_s") or {}).items():
            stages.setdefault(stage, []).append(float(seconds))

    failures: list[dict[str, Any]] = [{"upload": upload.index, "error": upload.error} for upload in upload_errors]
    for record in [*failed, *unfinished]:
        error = record.view.get("error") or {}
        failures.append({"job": record.job_id, "state": record.state, "error": error.get("code", "timed out")})

    return {
        "studies": len(uploads),
        "workers": workers,
        "threads_per_worker": threads,
        "wall_s": round(wall_s, 3),
        "studies_per_hour": round(len(completed) / wall_s * 3600, 1) if wall_s > 0 else 0.0,
        "p95_queue_wait_s": round(float(np.percentile(waits, 95)), 3) if waits else None,
        "median_queue_wait_s": round(statistics.median(waits), 3) if waits else None,
        "lost": len(uploads) - len(completed),
        "failed": len(failed),
        "upload_errors": len(upload_errors),
        "timed_out": len(unfinished),
        "retried": sum(int(record.view.get("attempts", 0)) > 1 for record in records.values()),
        "stage_median_s": {stage: round(statistics.median(values), 3) for stage, values in stages.items()},
        "failures": failures,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line and write the result as the last output line (JSON).

    Returns 0 when every study completed, 1 when some were lost and 2 when the service
    failed to run.
    """
    parser = argparse.ArgumentParser(description="Studies per hour through the SATs gateway and Celery workers.")
    parser.add_argument("--studies", type=int, default=10, help="number of series sent at once (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="number of Celery worker processes (default 2)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="folder for series, service data and logs (default: temporary)"
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="Redis URL with a dedicated database, flushed before and after (default redis://127.0.0.1:6379/14)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds after the first upload before jobs count as lost"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per poll otherwise

    try:
        result = run_service_benchmark(args.studies, args.workers, args.work_dir, args.redis_url, args.timeout)
    except (ValueError, ServiceBenchmarkError, redis.RedisError) as error:
        logger.error("service benchmark failed: %s", error)
        sys.stderr.flush()
        sys.stdout.write(json.dumps({"error": str(error)}) + "\n")
        return 2
    sys.stderr.flush()
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
