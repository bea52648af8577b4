"""Real service processes for the integration tests: uvicorn gateway and Celery worker on Redis.

Both run as child processes of the test session against Redis database 15 on
127.0.0.1:6379, with a temporary data folder and short heartbeat and sweep intervals so
that lost workers are noticed within seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import SERVICE_REDIS_URL, TEST_API_KEY

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    """A child process with its output in a log file, stopped at teardown."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group (for a Celery worker: the main process and its pool)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Service:
    """The gateway and workers of one test module."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "SATS_REDIS_URL": SERVICE_REDIS_URL,
            "SATS_DATA_DIR": str(data_dir),
            "SATS_WORKER_HEARTBEAT_S": "1",
            "SATS_REAPER_INTERVAL_S": "1",
            "SATS_DEVICE": "cpu",
            "PYTHONUNBUFFERED": "1",
        }
        self.gateway: ServiceProcess | None = None
        self.workers: list[ServiceProcess] = []
        self.http = httpx.Client(base_url=self.url, headers=AUTH, timeout=60)

    def start_gateway(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.gateway = ServiceProcess("gateway", command, self.env, self.log_dir).start()
        self.wait_for(lambda: self._get("/healthz") == 200, 30, "gateway /healthz")

    def start_worker(self, name: str) -> ServiceProcess:
        command = [sys.executable, "-m", "celery", "-A", "worker.celery_app:celery_app", "worker"]
        command += ["--queues", "sats", "--concurrency", "1", "--prefetch-multiplier", "1"]
        command += ["--loglevel", "INFO", "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip"]
        worker = ServiceProcess(name, command, self.env, self.log_dir).start()
        self.workers.append(worker)
        return worker

    def _get(self, path: str) -> int:
        try:
            return self.http.get(path).status_code
        except httpx.HTTPError:
            return 0

    def wait_for(self, condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {p.name} ---\n{p.log()[-3000:]}" for p in [self.gateway, *self.workers] if p)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs}")

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait_for_state(self, job_id: str, states: set[str], timeout_s: float = 240) -> dict:
        self.wait_for(lambda: self.job(job_id)["state"] in states, timeout_s, f"job {job_id} to reach {states}")
        return self.job(job_id)

    def stop(self) -> None:
        for process in [*self.workers, self.gateway]:
            if process is not None:
                process.stop()
        self.http.close()


@contextlib.contextmanager
def running_service(root: Path, env: dict[str, str] | None = None) -> Iterator[Service]:
    """Run a gateway and one worker (with ``env`` added) on the test Redis database, emptied around it."""
    client = redis.Redis.from_url(SERVICE_REDIS_URL)
    client.flushdb()
    running = Service(root / "data", root)
    running.env.update(env or {})
    try:
        running.start_gateway()
        running.start_worker("w1")
        running.wait_for(lambda: running._get("/readyz") == 200, 60, "a live worker (/readyz)")
        yield running
    finally:
        running.stop()
        client.flushdb()


def worker_pid(job_id: str) -> int:
    """Return the process id that the job store records for the job's current attempt."""
    client = redis.Redis.from_url(SERVICE_REDIS_URL, decode_responses=True)
    worker = client.hget(f"sats:job:{job_id}", "worker")
    return int(worker.rsplit(" pid ", 1)[1])


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    with running_service(tmp_path_factory.mktemp("service")) as running:
        yield running
