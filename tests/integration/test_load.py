"""Bounded load on loopback: 50 small studies through STOW-RS and C-STORE at once, 2 workers.

All complete exactly once, none is lost or duplicated, and the gateway's resident memory
stays flat.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
import redis

from app.dicomweb import multipart_related_body
from tests.conftest import SERVICE_REDIS_URL
from tests.integration.conftest import Service, ServiceProcess, free_port
from tests.integration.pacs import storescu
from worker.synthetic_dicom import HeadNeck, SeriesGeometry, render_phantom, write_ct_series

pytestmark = pytest.mark.slow

STUDIES_PER_ROUTE = 25

#: Allowed growth of the gateway's resident memory over the run (MiB). The first uploads
#: warm up caches and allocator pools; a leak of one upload's size per study would exceed it.
MAX_GATEWAY_GROWTH_MIB = 60


def _series(folder: Path, seed: int) -> list[Path]:
    geometry = SeriesGeometry.axial(
        "HFS", rows=64, columns=64, slices=12, pixel_spacing_mm=(3.0, 3.0), slice_spacing_mm=5.0
    )
    volume = render_phantom(geometry, [HeadNeck(yaw_deg=float(seed % 7))], noise_sd_hu=10.0, seed=seed)
    return write_ct_series(volume, geometry, folder)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_fifty_studies_two_routes(tmp_path):
    client = redis.Redis.from_url(SERVICE_REDIS_URL)
    client.flushdb()
    service = Service(tmp_path / "data", tmp_path)
    listener_port = free_port()
    service.env.update(
        {
            "SATS_DICOM_PORT": str(listener_port),
            "SATS_DICOM_BIND_ADDRESS": "127.0.0.1",
            "SATS_DICOM_ALLOWED_AETS": "STORESCU",
            "SATS_DICOM_QUIET_PERIOD_S": "2",
        }
    )
    studies = [_series(tmp_path / f"study{index}", index) for index in range(2 * STUDIES_PER_ROUTE)]
    series_uids = {pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID for files in studies}
    listener = ServiceProcess("listener", [sys.executable, "-m", "app.dicom_node"], service.env, tmp_path)
    try:
        service.start_gateway()
        listener.start()
        service.wait_for(lambda: "DICOM listener SATS" in listener.log(), 30, "the DICOM listener")
        service.start_worker("w1")
        service.start_worker("w2")
        assert service.gateway is not None and service.gateway.process is not None
        gateway_pid = service.gateway.process.pid

        def stow(files: list[Path]) -> int:
            body, content_type = multipart_related_body(files)
            response = service.http.post(
                "/dicomweb/studies", content=b"".join(body), headers={"Content-Type": content_type}
            )
            return response.status_code

        # Warm up the gateway with one study before the memory baseline.
        assert stow(studies[0]) == 200
        baseline = _rss_mib(gateway_pid)
        with ThreadPoolExecutor(max_workers=8) as pool:
            stored = pool.map(stow, studies[1:STUDIES_PER_ROUTE])
            sent = pool.map(
                lambda files: storescu(files, "STORESCU", "SATS", listener_port),
                studies[STUDIES_PER_ROUTE:],
            )
            assert set(stored) == {200}
            list(sent)  # storescu raises DicomToolError if any C-STORE fails

        def finished() -> list[dict]:
            jobs = service.http.get("/v1/jobs", params={"limit": 500}).json()["jobs"]
            return [job for job in jobs if job["state"] in {"completed", "failed"}]

        service.wait_for(lambda: len(finished()) >= 2 * STUDIES_PER_ROUTE, 600, "all 50 jobs")
        jobs = service.http.get("/v1/jobs", params={"limit": 500}).json()["jobs"]
        assert len(jobs) == 2 * STUDIES_PER_ROUTE  # none duplicated
        assert {job["series_instance_uid"] for job in jobs} == series_uids  # none lost
        assert {job["state"] for job in jobs} == {"completed"}
        assert {job["source"] for job in jobs} == {"stow-rs", "dicom"}
        assert all(job["attempts"] == 1 for job in jobs)
        growth = _rss_mib(gateway_pid) - baseline
        assert growth < MAX_GATEWAY_GROWTH_MIB, f"gateway memory grew by {growth:.0f} MiB"
    finally:
        listener.stop()
        service.stop()
        client.flushdb()
