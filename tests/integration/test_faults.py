"""Faults injected into real processes.

- Redis restarted mid-queue.
- The gateway killed in the middle of an upload.
- The results disk full while a job writes (a small tmpfs; needs root to mount).
- A destination that is down, slow, or refuses the association.

Each job completes exactly once or fails with a reason, no accepted study is lost, and no
object reaches a destination twice under different UIDs. test_kill_stages.py kills the
worker in each stage of a job.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import redis

from app.dicomweb import multipart_related_body
from tests.conftest import SERVICE_REDIS_URL
from tests.integration.conftest import Service, free_port
from tests.integration.pacs import PlainStoreSCP
from worker.synthetic_dicom import HeadNeck, SeriesGeometry, render_phantom, write_ct_series

pytestmark = pytest.mark.slow


def _series(folder: Path, seed: int) -> list[Path]:
    """A small synthetic head CT (16 slices of 96 x 96), distinct per seed.

    The head is turned by ``seed % 10`` degrees. Planning CTs are set up close to
    straight, and atlas symmetrization rejects a turn that its mirror refinement would
    have to correct by more than 15 degrees.
    """
    geometry = SeriesGeometry.axial(
        "HFS", rows=96, columns=96, slices=16, pixel_spacing_mm=(2.0, 2.0), slice_spacing_mm=4.0
    )
    volume = render_phantom(geometry, [HeadNeck(yaw_deg=float(seed % 10))], noise_sd_hu=10.0, seed=seed)
    return write_ct_series(volume, geometry, folder)


def _stow(service: Service, files: list[Path]) -> str:
    body, content_type = multipart_related_body(files)
    response = service.http.post("/dicomweb/studies", content=b"".join(body), headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    return str(response.json()["jobs"][0]["id"])


class OwnRedis:
    """A redis-server with append-only persistence on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found; install the Debian package redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes"]
        command += ["--appendfsync", "always", "--save", "", "--dir", str(self.folder)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def test_redis_restart_mid_queue_loses_nothing(tmp_path):
    own = OwnRedis(tmp_path / "redis")
    own.start()
    service = Service(tmp_path / "data", tmp_path)
    service.env["SATS_REDIS_URL"] = own.url
    try:
        service.start_gateway()
        studies = [_series(tmp_path / f"s{seed}", seed) for seed in range(3)]
        job_ids = [_stow(service, files) for files in studies]  # queued before any worker runs

        own.stop()  # Redis goes away with three jobs queued...
        own.start()  # ...and comes back from its append-only file
        service.start_worker("w1")
        for job_id in job_ids:
            job = service.wait_for_state(job_id, {"completed", "failed"}, timeout_s=180)
            assert job["state"] == "completed", job
            assert job["attempts"] == 1
        assert service.http.get("/v1/jobs").json()["total"] == 3
    finally:
        service.stop()
        own.stop()


def test_destination_down_then_up_delivers(tmp_path):
    client = redis.Redis.from_url(SERVICE_REDIS_URL)
    client.flushdb()
    scp = PlainStoreSCP(tmp_path / "scp", ae_title="LATEPACS")
    destination = {"name": "late", "kind": "dicom", "ae_title": "LATEPACS", "host": "127.0.0.1", "port": scp.port}
    service = Service(tmp_path / "data", tmp_path)
    service.env["SATS_DESTINATIONS"] = json.dumps([destination])
    try:
        service.start_gateway()
        service.start_worker("w1")
        job_id = _stow(service, _series(tmp_path / "s", 7))
        service.wait_for_state(job_id, {"completed"}, timeout_s=120)

        def outcome() -> str:
            deliveries = service.job(job_id)["delivery"]
            return deliveries[0]["status"] if deliveries else ""

        service.wait_for(lambda: outcome() == "retrying", 60, "a failed first delivery")
        scp.work_dir.mkdir(parents=True, exist_ok=True)
        scp.start()  # the destination comes up before the first retry (10 s)
        service.wait_for(
            lambda: {d["status"] for d in service.job(job_id)["delivery"]} == {"delivered"}, 60, "the retry"
        )
        received = scp.wait_for_files(2, 30)
        assert sorted(d.Modality for d in (scp.received_datasets())) == ["RTSTRUCT", "SEG"]
        assert len(received) == 2
    finally:
        service.stop()
        scp.stop()
        client.flushdb()


# ---------------------------------------------------------------------------------------------
# Gateway killed mid-upload
# ---------------------------------------------------------------------------------------------


def test_gateway_killed_mid_upload_then_resent(tmp_path):
    client = redis.Redis.from_url(SERVICE_REDIS_URL)
    client.flushdb()
    service = Service(tmp_path / "data", tmp_path)
    try:
        service.start_gateway()
        service.start_worker("w1")
        files = _series(tmp_path / "s", 60)
        body, content_type = multipart_related_body(files)
        parts = list(body)

        def dying_gateway() -> Iterator[bytes]:
            for index, part in enumerate(parts):
                if index == len(parts) // 2:
                    assert service.gateway is not None
                    service.gateway.kill()  # SIGKILL with half of the body received
                yield part

        with pytest.raises(httpx.HTTPError):
            service.http.post("/dicomweb/studies", content=dying_gateway(), headers={"Content-Type": content_type})
        service.start_gateway()
        assert service.http.get("/v1/jobs").json()["total"] == 0  # nothing half-received became a job

        job_id = _stow(service, files)  # the sender sends the study again
        job = service.wait_for_state(job_id, {"completed", "failed"}, timeout_s=120)
        assert job["state"] == "completed", job
        assert job["instances"] == len(files)
        assert service.http.get("/v1/jobs").json()["total"] == 1
        assert [p.name for p in (tmp_path / "data" / "inputs").iterdir()] == [job_id]
    finally:
        service.stop()
        client.flushdb()


# ---------------------------------------------------------------------------------------------
# Disk full
# ---------------------------------------------------------------------------------------------


def test_results_disk_full_then_freed_completes(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the results disk needs root (CI runs as root)")
    client = redis.Redis.from_url(SERVICE_REDIS_URL)
    client.flushdb()
    results = tmp_path / "data" / "results"
    results.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(results)], check=True)
    service = Service(tmp_path / "data", tmp_path)
    try:
        filler = results / "filler"
        with filler.open("wb", buffering=0) as sink:  # fill the disk...
            try:
                while True:
                    sink.write(b"\0" * 4096)
            except OSError:
                pass
        os.truncate(filler, filler.stat().st_size - 4096)  # ...but one page, less than a job writes
        service.start_gateway()
        service.start_worker("w1")
        job_id = _stow(service, _series(tmp_path / "s", 30))

        worker = service.workers[0]
        service.wait_for(lambda: "No space left on device" in worker.log(), 120, "the write to fail")
        job = service.job(job_id)
        assert job["state"] in {"queued", "running"}, job  # waiting for its retry, not failed
        filler.unlink()  # space comes back before the retry (10 s)

        job = service.wait_for_state(job_id, {"completed", "failed"}, timeout_s=120)
        assert job["state"] == "completed", job
        assert job["attempts"] == 2
        assert sorted(p.name for p in (results / job_id).iterdir()) == ["attempt-2"]
        rtstruct = service.http.get(job["links"]["rtstruct"])
        assert rtstruct.status_code == 200
        assert pydicom.dcmread(io.BytesIO(rtstruct.content)).Modality == "RTSTRUCT"
    finally:
        service.stop()
        subprocess.run(["umount", str(results)], check=False)
        client.flushdb()


# ---------------------------------------------------------------------------------------------
# Slow and refusing destinations
# ---------------------------------------------------------------------------------------------


def _delivery_statuses(service: Service, job_id: str) -> set[str]:
    return {d["status"] for d in service.job(job_id)["delivery"]}


def _job_sop_uids(service: Service, job: dict) -> set[str]:
    uids = set()
    for kind in ("rtstruct", "seg"):
        response = service.http.get(job["links"][kind])
        uids.add(str(pydicom.dcmread(io.BytesIO(response.content)).SOPInstanceUID))
    return uids


def _service_with_destination(tmp_path: Path, port: int, timeout_s: float) -> Service:
    destination = {
        "name": "pacs",
        "kind": "dicom",
        "ae_title": "FAULTPACS",
        "host": "127.0.0.1",
        "port": port,
        "timeout_s": timeout_s,
    }
    service = Service(tmp_path / "data", tmp_path)
    service.env["SATS_DESTINATIONS"] = json.dumps([destination])
    return service


def test_slow_destination_times_out_then_delivers_once(tmp_path):
    client = redis.Redis.from_url(SERVICE_REDIS_URL)
    client.flushdb()
    slow = PlainStoreSCP(tmp_path / "scp", ae_title="FAULTPACS", behaviour=["--sleep-during", "6"]).start()
    service = _service_with_destination(tmp_path, slow.port, timeout_s=2)
    fast = PlainStoreSCP(tmp_path / "scp", ae_title="FAULTPACS", port=slow.port)
    try:
        service.start_gateway()
        service.start_worker("w1")
        job_id = _stow(service, _series(tmp_path / "s", 40))
        job = service.wait_for_state(job_id, {"completed"}, timeout_s=120)
        service.wait_for(lambda: _delivery_statuses(service, job_id) == {"retrying"}, 60, "a timed-out delivery")
        assert "no C-STORE response" in service.job(job_id)["delivery"][0]["message"]
        slow.stop()
        fast.start()  # the destination responds in time before the retry (10 s)
        service.wait_for(lambda: _delivery_statuses(service, job_id) == {"delivered"}, 60, "the retry")

        received = fast.received_datasets()
        assert sorted(d.Modality for d in received) == ["RTSTRUCT", "SEG"]
        assert {str(d.SOPInstanceUID) for d in received} == _job_sop_uids(service, job)
    finally:
        service.stop()
        slow.stop()
        fast.stop()
        client.flushdb()


def test_refusing_destination_fails_with_reason_then_redelivers(tmp_path):
    client = redis.Redis.from_url(SERVICE_REDIS_URL)
    client.flushdb()
    refusing = PlainStoreSCP(tmp_path / "scp", ae_title="FAULTPACS", behaviour=["--refuse"]).start()
    service = _service_with_destination(tmp_path, refusing.port, timeout_s=10)
    accepting = PlainStoreSCP(tmp_path / "scp", ae_title="FAULTPACS", port=refusing.port)
    try:
        service.start_gateway()
        service.start_worker("w1")
        job_id = _stow(service, _series(tmp_path / "s", 50))
        job = service.wait_for_state(job_id, {"completed"}, timeout_s=120)
        service.wait_for(lambda: _delivery_statuses(service, job_id) == {"failed"}, 60, "the refused delivery")
        deliveries = service.job(job_id)["delivery"]
        assert len(deliveries) == 2  # one outcome per instance, no retry
        assert all("rejected the association permanently" in d["message"] for d in deliveries), deliveries
        assert refusing.received_files() == []

        refusing.stop()
        accepting.start()  # the PACS administrator fixed its configuration
        response = service.http.post(f"/v1/jobs/{job_id}/deliver")
        assert response.status_code == 202, response.text
        service.wait_for(lambda: _delivery_statuses(service, job_id) == {"delivered"}, 60, "the re-delivery")
        received = accepting.received_datasets()
        assert sorted(d.Modality for d in received) == ["RTSTRUCT", "SEG"]
        assert {str(d.SOPInstanceUID) for d in received} == _job_sop_uids(service, job)
        assert service.job(job_id)["state"] == "completed"
    finally:
        service.stop()
        refusing.stop()
        accepting.stop()
        client.flushdb()
