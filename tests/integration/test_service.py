"""The service end to end: real uvicorn gateway, real Celery worker, real Redis, real CT.

Each job segments the 90-slice pyCERR head-and-neck CT with the shipped model (about
10 s per job on 2 cores).
"""

from __future__ import annotations

import io
import os
import signal
import zipfile

import pydicom
import pytest

from app.dicomweb import multipart_related_body
from tests.conftest import TEST_API_KEY, shared_path
from tests.integration.conftest import worker_pid

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def _pycerr_files():
    return sorted(shared_path("hn-ct-pycerr").glob("IMG_*.dcm"))


def _stow(service, files, **params):
    body, content_type = multipart_related_body(files)
    return service.http.post(
        "/dicomweb/studies", content=b"".join(body), headers={"Content-Type": content_type}, params=params
    )


def _check_rtstruct(service, job):
    response = service.http.get(job["links"]["rtstruct"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    rtstruct = pydicom.dcmread(io.BytesIO(response.content))
    ct = pydicom.dcmread(_pycerr_files()[0], stop_before_pixels=True)
    assert rtstruct.Modality == "RTSTRUCT"
    assert rtstruct.StudyInstanceUID == ct.StudyInstanceUID
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct.FrameOfReferenceUID
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.SeriesInstanceUID
    assert len(series.ContourImageSequence) == 90
    return rtstruct


def _attempt_dirs(service, job_id):
    return sorted(p.name for p in (service.data_dir / "results" / job_id).iterdir())


def test_stow_rs_job_completes(service):
    response = _stow(service, _pycerr_files())
    assert response.status_code == 200
    [job] = response.json()["jobs"]
    job = service.wait_for_state(job["id"], {"completed", "failed"})
    assert job["state"] == "completed", job
    assert job["attempts"] == 1
    assert set(job["timings_s"]) >= {"load", "symmetrize", "infer", "write"}
    rtstruct = _check_rtstruct(service, job)

    wado = service.http.get(f"/dicomweb/studies/{rtstruct.StudyInstanceUID}/series/{rtstruct.SeriesInstanceUID}")
    assert wado.status_code == 200
    assert wado.headers["content-type"].startswith("multipart/related")
    assert rtstruct.SOPInstanceUID.encode() in wado.content
    assert service.http.get(job["links"]["qa_png"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    report = service.http.get(job["links"]["report"]).json()
    assert report["input"]["slice_count"] == 90

    metrics = service.http.get("/metrics").text
    assert 'sats_jobs{state="completed"} 1.0' in metrics
    assert 'sats_stage_duration_seconds_count{stage="infer"} 1.0' in metrics


def test_zip_upload_rerun_completes(service):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in _pycerr_files():
            bundle.write(path, f"CT/{path.name}")
    response = service.http.post("/v1/studies", files={"archive": ("ct.zip", buffer.getvalue(), "application/zip")})
    assert response.status_code == 200  # the same instances arrived by STOW-RS before
    [entry] = response.json()["jobs"]
    assert entry["created"] is False

    response = service.http.post(
        "/v1/studies", params={"rerun": "true"}, files={"archive": ("ct.zip", buffer.getvalue(), "application/zip")}
    )
    [entry] = response.json()["jobs"]
    job = service.wait_for_state(entry["job"]["id"], {"completed", "failed"})
    assert job["state"] == "completed", job
    assert job["attempts"] == 2
    _check_rtstruct(service, job)


def test_worker_child_killed_during_inference(service):
    response = _stow(service, _pycerr_files()[:60])
    job_id = response.json()["jobs"][0]["id"]
    service.wait_for(lambda: service.job(job_id)["stage"] == "infer", 120, "the infer stage")
    assert service.job(job_id)["state"] == "running"
    os.kill(worker_pid(job_id), signal.SIGKILL)  # the pool process running the job

    job = service.wait_for_state(job_id, {"completed", "failed"})
    assert job["state"] == "completed", job
    assert job["attempts"] == 2
    assert _attempt_dirs(service, job_id) == ["attempt-2"]


def test_whole_worker_killed_then_replaced(service):
    response = _stow(service, _pycerr_files()[:70])
    job_id = response.json()["jobs"][0]["id"]
    service.wait_for(lambda: service.job(job_id)["stage"] == "infer", 120, "the infer stage")
    for worker in service.workers:
        worker.kill()
    service.start_worker("w2")

    job = service.wait_for_state(job_id, {"completed", "failed"})
    assert job["state"] == "completed", job
    assert job["attempts"] == 2
    assert _attempt_dirs(service, job_id) == ["attempt-2"]


def test_gateway_restart_loses_nothing(service):
    response = _stow(service, _pycerr_files()[:50])
    job_id = response.json()["jobs"][0]["id"]
    service.gateway.kill()
    service.start_gateway()
    job = service.wait_for_state(job_id, {"completed", "failed"})
    assert job["state"] == "completed", job
    listed = service.http.get("/v1/jobs", params={"limit": 100}).json()
    assert job_id in {item["id"] for item in listed["jobs"]}
    assert all(item["state"] == "completed" for item in listed["jobs"])


def test_bad_series_fails_without_retry(service):
    files = _pycerr_files()[:30]
    del files[15]  # a gap in the middle of the series
    job_id = _stow(service, files).json()["jobs"][0]["id"]
    job = service.wait_for_state(job_id, {"completed", "failed"})
    assert job["state"] == "failed"
    assert job["error"]["code"] == "series.missing_slices"
    assert "1 slice(s) missing" in job["error"]["message"]
    assert job["attempts"] == 1
    assert service.http.get(f"/v1/jobs/{job_id}/rtstruct").status_code == 409


def test_logs_hold_no_patient_data(service):
    ct = pydicom.dcmread(_pycerr_files()[0], stop_before_pixels=True)
    gateway_log = service.gateway.log()
    assert "queued for series" in gateway_log  # the gateway's own records reach its log
    assert "sats.audit: client=tests method=POST path=/dicomweb/studies status=200" in gateway_log
    logs = "\n".join(process.log() for process in [service.gateway, *service.workers])
    assert str(ct.PatientName) not in logs
    assert str(ct.PatientID) not in logs


def _browser():
    """Start headless Chromium (Debian packages chromium and chromium-driver) through Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # No sandbox as root; no background traffic, because only loopback is reachable.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,900",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=DriverService("/usr/bin/chromedriver"))


def test_status_page_in_headless_chromium(service):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    jobs = service.http.get("/v1/jobs").json()["jobs"]
    if not any(job["state"] == "completed" for job in jobs):
        job_id = _stow(service, _pycerr_files()[:40]).json()["jobs"][0]["id"]
        service.wait_for_state(job_id, {"completed"})

    browser = _browser()
    try:
        browser.get(f"{service.url}/status")
        assert browser.find_element(By.ID, "jobs").get_attribute("hidden") is not None  # nothing shown before a key
        browser.find_element(By.ID, "key").send_keys(TEST_API_KEY)
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#jobs tbody tr"))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "img.qa"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
        assert len(rows) == service.http.get("/v1/jobs").json()["total"]
        states = {row.find_elements(By.TAG_NAME, "td")[1].text for row in rows}
        assert "completed" in states
        image = browser.find_element(By.CSS_SELECTOR, "img.qa")
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
        browser.save_screenshot(str(service.log_dir / "status.png"))
    finally:
        browser.quit()


def test_status_page_rejects_wrong_key(service):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        browser.get(f"{service.url}/status")
        browser.find_element(By.ID, "key").send_keys("wrong-key")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        WebDriverWait(browser, 20).until(lambda b: "invalid API key" in b.find_element(By.ID, "message").text)
        assert browser.find_element(By.ID, "jobs").get_attribute("hidden") is not None
    finally:
        browser.quit()
