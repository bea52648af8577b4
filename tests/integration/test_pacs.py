"""SATs as a PACS node, with real peers: Orthanc (Debian orthanc, orthanc-dicomweb) and DCMTK.

storescu sends the real pyCERR CT to the SATs listener; the RTSTRUCT and SEG arrive in
Orthanc, which also stores the CT, and in a DCMTK storescp that rejects SEG. Orthanc's
"send to modality" of another study triggers the same job and delivery.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pydicom
import pytest
import redis

from tests.conftest import SERVICE_REDIS_URL, shared_path
from tests.integration.conftest import Service, ServiceProcess, free_port
from tests.integration.pacs import (
    Orthanc,
    RestrictedStoreSCP,
    dciodvfy_errors,
    findscu_series,
    storescu,
)
from worker.synthetic_dicom import write_demo_series

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


class Pacs:
    """Orthanc, a SEG-rejecting storescp and the SATs service with its DICOM listener."""

    def __init__(self, root: Path) -> None:
        self.listener_port = free_port()
        self.orthanc = Orthanc(root / "orthanc", modalities={"sats": ["SATS", "127.0.0.1", self.listener_port]})
        self.restricted = RestrictedStoreSCP(root / "storescp", ae_title="RTONLY")
        self.service = Service(root / "data", root)
        self.listener: ServiceProcess | None = None

    def start(self) -> None:
        self.restricted.work_dir.mkdir(parents=True, exist_ok=True)
        self.orthanc.start()
        self.restricted.start()
        destinations = [
            {
                "name": "orthanc",
                "kind": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": self.orthanc.dicom_port,
            },
            {
                "name": "rt-only",
                "kind": "dicom",
                "ae_title": "RTONLY",
                "host": "127.0.0.1",
                "port": self.restricted.port,
            },
            {"name": "orthanc-web", "kind": "dicomweb", "url": self.orthanc.dicomweb_url},
        ]
        self.service.env.update(
            {
                "SATS_DICOM_PORT": str(self.listener_port),
                "SATS_DICOM_BIND_ADDRESS": "127.0.0.1",
                "SATS_DICOM_ALLOWED_AETS": "STORESCU,ORTHANC",
                "SATS_DICOM_QUIET_PERIOD_S": "2",
                "SATS_DESTINATIONS": json.dumps(destinations),
                "SATS_DELIVERY_RETRIES": "2",
            }
        )
        self.service.start_gateway()
        self.service.start_worker("w1")
        command = [sys.executable, "-m", "app.dicom_node"]
        self.listener = ServiceProcess("listener", command, self.service.env, self.service.log_dir).start()
        self.service.wait_for(lambda: "DICOM listener SATS" in self.listener.log(), 30, "the DICOM listener")

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        self.service.stop()
        self.restricted.stop()
        self.orthanc.stop()

    def job_for_series(self, series_uid: str, timeout_s: float = 240) -> dict:
        def find() -> dict | None:
            for job in self.service.http.get("/v1/jobs", params={"limit": 100}).json()["jobs"]:
                if job["series_instance_uid"] == series_uid:
                    return job
            return None

        self.service.wait_for(lambda: find() is not None, timeout_s, f"a job for series {series_uid}")
        job = find()
        assert job is not None
        return self.service.wait_for_state(job["id"], {"completed", "failed"}, timeout_s)

    def wait_for_delivery(self, job_id: str, expected: int, timeout_s: float = 60) -> list[dict]:
        def final() -> list[dict]:
            outcomes = self.service.job(job_id)["delivery"]
            return [o for o in outcomes if o["status"] in {"delivered", "rejected_sop_class", "failed"}]

        self.service.wait_for(lambda: len(final()) >= expected, timeout_s, f"{expected} delivery outcomes")
        return self.service.job(job_id)["delivery"]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    client = redis.Redis.from_url(SERVICE_REDIS_URL)
    client.flushdb()  # jobs of earlier runs would match these series and be returned instead
    running = Pacs(tmp_path_factory.mktemp("pacs"))
    try:
        running.start()
        yield running
    finally:
        running.stop()
        client.flushdb()


def _pycerr() -> list[Path]:
    return sorted(shared_path("hn-ct-pycerr").glob("IMG_*.dcm"))


def _orthanc_series(pacs: Pacs, modality: str, study_orthanc_id: str) -> list[dict]:
    return [s for s in pacs.orthanc.find_series(modality) if s["ParentStudy"] == study_orthanc_id]


def test_storescu_to_listener_results_in_orthanc(pacs):
    ct_files = _pycerr()
    stored = pacs.orthanc.upload_files(ct_files)
    study_id = stored[0]["ParentStudy"]
    ct = pydicom.dcmread(ct_files[0], stop_before_pixels=True)

    # Two associations, as senders that split a series do.
    storescu(ct_files[:45], "STORESCU", "SATS", pacs.listener_port)
    storescu(ct_files[45:], "STORESCU", "SATS", pacs.listener_port)
    job = pacs.job_for_series(ct.SeriesInstanceUID)
    assert job["state"] == "completed", job
    assert job["source"] == "dicom"
    assert job["instances"] == 90

    outcomes = {(o["destination"], o["sop_class"]): o for o in pacs.wait_for_delivery(job["id"], 6)}
    assert outcomes[("orthanc", "RT Structure Set Storage")]["status"] == "delivered"
    assert outcomes[("orthanc", "Segmentation Storage")]["status"] == "delivered"
    assert outcomes[("orthanc-web", "RT Structure Set Storage")]["status"] == "delivered"
    assert outcomes[("orthanc-web", "Segmentation Storage")]["status"] == "delivered"
    assert outcomes[("rt-only", "RT Structure Set Storage")]["status"] == "delivered"
    rejected = outcomes[("rt-only", "Segmentation Storage")]
    assert rejected["status"] == "rejected_sop_class"
    assert "destination rejected SOP class" in rejected["message"]
    [received] = pacs.restricted.wait_for_files(1, 30)
    assert pydicom.dcmread(received).Modality == "RTSTRUCT"

    # Orthanc stores both results in the CT's study (REST and C-FIND).
    [rtstruct_series] = _orthanc_series(pacs, "RTSTRUCT", study_id)
    [seg_series] = _orthanc_series(pacs, "SEG", study_id)
    found = findscu_series(pacs.orthanc.dicom_port, "ORTHANC", "FINDSCU", ct.StudyInstanceUID)
    assert {item["Modality"] for item in found} == {"CT", "RTSTRUCT", "SEG"}

    ct_instances = {
        item["MainDicomTags"]["SOPInstanceUID"]
        for item in pacs.orthanc.rest_get(f"/series/{stored[0]['ParentSeries']}/instances")
    }
    rtstruct_bytes = pacs.orthanc.instance_file(rtstruct_series["Instances"][0])
    rtstruct = pydicom.dcmread(io.BytesIO(rtstruct_bytes))
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in rtstruct.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .ContourImageSequence
    }
    assert referenced == ct_instances
    assert rtstruct.FrameOfReferenceUID == ct.FrameOfReferenceUID

    for series, name in ((rtstruct_series, "rtstruct.dcm"), (seg_series, "seg.dcm")):
        path = pacs.service.log_dir / f"from-orthanc-{name}"
        path.write_bytes(pacs.orthanc.instance_file(series["Instances"][0]))
        assert dciodvfy_errors(path) == [], name


def test_redelivery_creates_no_duplicate(pacs):
    ct = pydicom.dcmread(_pycerr()[0], stop_before_pixels=True)
    job = pacs.job_for_series(ct.SeriesInstanceUID)
    study_id = pacs.orthanc.upload_files(_pycerr()[:1])[0]["ParentStudy"]
    before = {s["ID"]: len(s["Instances"]) for s in _orthanc_series(pacs, "RTSTRUCT", study_id)}
    started = time.time()
    response = pacs.service.http.post(f"/v1/jobs/{job['id']}/deliver")
    assert response.status_code == 202
    pacs.service.wait_for(
        lambda: all(o["at"] > started for o in pacs.service.job(job["id"])["delivery"]), 60, "the second delivery"
    )
    after = {s["ID"]: len(s["Instances"]) for s in _orthanc_series(pacs, "RTSTRUCT", study_id)}
    assert after == before == {next(iter(before)): 1}


def test_orthanc_send_to_modality_triggers_job(pacs, tmp_path):
    files = write_demo_series(tmp_path / "demo")
    stored = pacs.orthanc.upload_files(files)
    study_id = stored[0]["ParentStudy"]
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID

    response = pacs.orthanc.send_study_to_modality(study_id, "sats")
    assert int(response.get("InstancesCount", len(files))) == len(files)
    job = pacs.job_for_series(series_uid)
    assert job["state"] == "completed", job
    assert job["source"] == "dicom"
    pacs.wait_for_delivery(job["id"], 6)
    assert len(_orthanc_series(pacs, "RTSTRUCT", study_id)) == 1
    assert len(_orthanc_series(pacs, "SEG", study_id)) == 1


def test_destination_taking_neither_class_rejects_both(pacs, tmp_path):
    from app.settings import Destination
    from worker.delivery import deliver_dicom

    ct = pydicom.dcmread(_pycerr()[0], stop_before_pixels=True)
    job = pacs.job_for_series(ct.SeriesInstanceUID)
    results = pacs.service.data_dir / "results" / job["id"]
    seg = next(results.glob("attempt-*/seg.dcm"))
    destination = Destination(
        name="rt-only", kind="dicom", ae_title="RTONLY", host="127.0.0.1", port=pacs.restricted.port
    )
    [outcome] = deliver_dicom(destination, [seg], "SATS")
    assert outcome.status == "rejected_sop_class"
    assert outcome.sop_class == "Segmentation Storage"


def test_logs_hold_no_patient_data(pacs, tmp_path):
    # Runs last: by now the listener, gateway and worker have handled every series of this module.
    names_and_ids = set()
    for path in [_pycerr()[0], write_demo_series(tmp_path / "demo")[0]]:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        names_and_ids |= {str(header.PatientName), str(header.PatientID)}
    processes = [pacs.listener, pacs.service.gateway, *pacs.service.workers]
    logs = {process.name: process.log() for process in processes if process is not None}
    assert "DICOM listener SATS" in logs["listener"]
    assert "queued for series" in logs["listener"]  # the log has content to scan
    for name, text in logs.items():
        for value in names_and_ids:
            assert value not in text, f"the {name} log contains patient data"
