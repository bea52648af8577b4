"""Gateway routes against the real Redis (database 15), without a worker.

Jobs are queued but not run here; tests/integration runs them with a real Celery worker.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pydicom
import pytest
import redis
from fastapi.testclient import TestClient

from app.dicomweb import multipart_related_body
from app.main import create_app
from app.settings import Settings, key_digest
from tests.conftest import SERVICE_REDIS_URL, TEST_API_KEY
from worker.synthetic_dicom import Ball, SeriesGeometry, render_phantom, write_ct_series

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


@pytest.fixture
def redis_db():
    client = redis.Redis.from_url(SERVICE_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_upload_bytes=2 * 1024 * 1024, max_upload_files=40)


@pytest.fixture
def client(settings, redis_db):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    """A small synthetic CT series (8 slices of 32 x 32)."""
    geometry = SeriesGeometry.axial(
        "HFS", rows=32, columns=32, slices=8, pixel_spacing_mm=(2.0, 2.0), slice_spacing_mm=3.0
    )
    volume = render_phantom(geometry, [Ball((0.0, 0.0, 0.0), 10.0, 200.0)], background_hu=0.0)
    return write_ct_series(volume, geometry, tmp_path_factory.mktemp("series"))


def _stow(client: TestClient, paths: list[Path], **params: str):
    body, content_type = multipart_related_body(paths)
    return client.post(
        "/dicomweb/studies", content=b"".join(body), headers={**AUTH, "Content-Type": content_type}, params=params
    )


def _queued_messages(redis_db: redis.Redis) -> int:
    return int(redis_db.llen("sats"))


def test_health_needs_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_ready_without_worker_is_503(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reason"] == "no worker alive"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
@pytest.mark.parametrize("path", ["/v1/jobs", "/metrics", "/v1/jobs/abc", "/dicomweb/studies/1/series/2"])
def test_routes_need_valid_key(client, headers, path):
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"].startswith("auth.")


def _wait_for_fresh_window(seconds_needed: float = 10.0) -> None:
    """Sleep into the next one-minute rate window if this one ends within ``seconds_needed``."""
    left = 60 - time.time() % 60
    if left < seconds_needed:
        time.sleep(left + 0.1)


def test_rate_limit_per_client_429_with_retry_after(tmp_path, redis_db):
    other_key = "second-client-key-0123456789"
    keys = [f"tps:{key_digest(TEST_API_KEY)}", f"physics:{key_digest(other_key)}"]
    settings = Settings(data_dir=tmp_path / "data", api_key_sha256=keys, rate_limit_per_minute=3)
    _wait_for_fresh_window()
    with TestClient(create_app(settings)) as client:
        statuses = [client.get("/v1/jobs", headers=AUTH).status_code for _ in range(4)]
        limited = client.get("/v1/jobs", headers=AUTH)
        other = client.get("/v1/jobs", headers={"Authorization": f"Bearer {other_key}"})
        health = client.get("/healthz")
    assert statuses == [200, 200, 200, 429]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    assert limited.json()["error"]["code"] == "auth.rate_limited"
    assert "client tps" in limited.json()["error"]["message"]
    assert other.status_code == 200  # each client has its own window
    assert health.status_code == 200


def test_invalid_keys_lock_out_address(tmp_path, redis_db, caplog):
    settings = Settings(
        data_dir=tmp_path / "data", api_key_sha256=[key_digest(TEST_API_KEY)], auth_failures_per_minute=3
    )
    wrong = {"Authorization": "Bearer wrong-key"}
    app = create_app(settings)
    _wait_for_fresh_window()
    with caplog.at_level("INFO", logger="app.auth"), TestClient(app, client=("192.0.2.7", 40000)) as client:
        failures = [client.get("/v1/jobs", headers=wrong).status_code for _ in range(3)]
        locked_valid = client.get("/v1/jobs", headers=AUTH)
        locked_wrong = client.get("/v1/jobs", headers=wrong)
        without_key = client.get("/v1/jobs")
        health = client.get("/healthz")
    with TestClient(app, client=("192.0.2.8", 40000)) as other_address:
        other = other_address.get("/v1/jobs", headers=AUTH)

    assert failures == [401, 401, 401]
    assert locked_valid.status_code == 429
    assert locked_valid.json()["error"]["code"] == "auth.too_many_failures"
    assert "address 192.0.2.7" in locked_valid.json()["error"]["message"]
    assert 1 <= int(locked_valid.headers["retry-after"]) <= 61
    assert locked_wrong.status_code == 429
    assert without_key.status_code == 401
    assert without_key.json()["error"]["code"] == "auth.missing_key"
    assert health.status_code == 200
    assert other.status_code == 200
    assert redis_db.get(f"sats:authfail:192.0.2.7:{int(time.time() // 60)}") == "3"
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.auth" and r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "address 192.0.2.7 sent 3 invalid API keys" in warnings[0]


def test_invalid_key_limit_off(tmp_path, redis_db):
    settings = Settings(
        data_dir=tmp_path / "data", api_key_sha256=[key_digest(TEST_API_KEY)], auth_failures_per_minute=0
    )
    with TestClient(create_app(settings)) as client:
        failures = [client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code for _ in range(5)]
        valid = client.get("/v1/jobs", headers=AUTH)
    assert failures == [401] * 5
    assert valid.status_code == 200
    assert redis_db.keys("sats:authfail:*") == []


def test_audit_log_names_client_and_route(tmp_path, redis_db, series, caplog):
    settings = Settings(data_dir=tmp_path / "data", api_key_sha256=[f"eclipse-tps:{key_digest(TEST_API_KEY)}"])
    with caplog.at_level("INFO", logger="sats.audit"), TestClient(create_app(settings)) as client:
        job_id = _stow(client, series).json()["jobs"][0]["id"]
        client.get(f"/v1/jobs/{job_id}", headers=AUTH)
        client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"})
    audit = [record.getMessage() for record in caplog.records if record.name == "sats.audit"]
    assert audit == [
        "client=eclipse-tps method=POST path=/dicomweb/studies status=200",
        f"client=eclipse-tps method=GET path=/v1/jobs/{job_id} status=200",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("tps:" + "0" * 63, "64-digit SHA-256"),
        ("bad name:" + "0" * 64, "client name"),
    ],
)
def test_bad_key_entries_rejected(entry, message):
    with pytest.raises(ValueError, match=message):
        Settings(api_key_sha256=entry)


def test_gateway_refuses_start_without_key(tmp_path):
    with pytest.raises(RuntimeError, match="SATS_API_KEY_SHA256"):
        create_app(Settings(data_dir=tmp_path, api_key_sha256=[]))


def test_stow_creates_one_job(client, series, redis_db):
    response = _stow(client, series)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    referenced = body["00081199"]["Value"]
    assert len(referenced) == len(series)
    uids = {item["00081155"]["Value"][0] for item in referenced}
    assert uids == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series}
    assert "/instances/" in referenced[0]["00081190"]["Value"][0]
    [job] = body["jobs"]
    assert job["created"] is True
    assert _queued_messages(redis_db) == 1
    state = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
    assert state["state"] == "queued"
    assert state["instances"] == len(series)


def test_stow_same_series_is_idempotent(client, series, redis_db):
    first = _stow(client, series).json()["jobs"][0]
    again = _stow(client, series).json()["jobs"][0]
    assert again == {**first, "created": False}
    assert _queued_messages(redis_db) == 1
    jobs = client.get("/v1/jobs", headers=AUTH).json()
    assert jobs["total"] == 1


def test_stow_subset_is_a_new_job(client, series):
    first = _stow(client, series).json()["jobs"][0]
    second = _stow(client, series[:-1]).json()["jobs"][0]
    assert second["created"] is True
    assert second["id"] != first["id"]


def test_stow_rerun_of_queued_job_not_duplicated(client, series, redis_db):
    _stow(client, series)
    again = _stow(client, series, rerun="true").json()["jobs"][0]
    assert again["created"] is False
    assert _queued_messages(redis_db) == 1  # still queued: nothing to re-run yet


def test_stow_non_dicom_part_fails_409(client, tmp_path, redis_db):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file at all" * 10)
    response = _stow(client, [junk])
    assert response.status_code == 409
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert _queued_messages(redis_db) == 0


def test_stow_mixed_parts_is_202(client, series, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"x" * 100)
    response = _stow(client, [*series, junk])
    assert response.status_code == 202
    assert len(response.json()["00081199"]["Value"]) == len(series)


def test_stow_wrong_media_type_415(client, series):
    response = client.post(
        "/dicomweb/studies",
        content=b"abc",
        headers={**AUTH, "Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=xyz'},
    )
    assert response.status_code == 415


def test_stow_too_large_413_nothing_left(client, series, settings, redis_db):
    response = _stow(client, series * 60)  # 480 parts, over both limits
    assert response.status_code == 413
    assert response.json()["error"]["code"] in {"upload.too_large", "upload.too_many_files"}
    assert _queued_messages(redis_db) == 0
    assert list(settings.incoming_dir.iterdir()) == []
    assert list(settings.inputs_dir.iterdir()) == []


def test_upload_files_creates_job(client, series, redis_db):
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in series]
    response = client.post("/v1/studies", files=files, headers=AUTH)
    assert response.status_code == 201
    body = response.json()
    assert body["stored"] == len(series)
    assert body["jobs"][0]["created"] is True
    assert body["jobs"][0]["job"]["source"] == "upload"
    assert _queued_messages(redis_db) == 1


def test_upload_zip_creates_job(client, series, redis_db):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in series:
            bundle.write(path, f"ct/{path.name}")
    response = client.post(
        "/v1/studies", files={"archive": ("ct.zip", buffer.getvalue(), "application/zip")}, headers=AUTH
    )
    assert response.status_code == 201
    assert response.json()["stored"] == len(series)


def test_upload_zip_with_dotdot_rejected(client, settings, redis_db):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("../evil.dcm", b"x")
    response = client.post(
        "/v1/studies", content=buffer.getvalue(), headers={**AUTH, "Content-Type": "application/zip"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "input.zip_unsafe"
    assert _queued_messages(redis_db) == 0
    assert list(settings.incoming_dir.iterdir()) == []


def test_upload_non_dicom_rejected(client, redis_db):
    response = client.post("/v1/studies", files={"f": ("a.txt", b"hello", "text/plain")}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upload.no_ct_series"
    assert _queued_messages(redis_db) == 0


def test_upload_empty_rejected(client, redis_db):
    response = client.post("/v1/studies", files={"f": ("a.dcm", b"", "application/dicom")}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upload.empty"


def test_upload_oversized_413(client, redis_db):
    response = client.post(
        "/v1/studies", content=b"0" * (3 * 1024 * 1024), headers={**AUTH, "Content-Type": "application/zip"}
    )
    assert response.status_code == 413
    assert _queued_messages(redis_db) == 0


def test_job_pages_newest_first(client, series):
    ids = [_stow(client, series[: 8 - k]).json()["jobs"][0]["id"] for k in range(3)]
    first = client.get("/v1/jobs", params={"limit": 2}, headers=AUTH).json()
    second = client.get("/v1/jobs", params={"limit": 2, "offset": 2}, headers=AUTH).json()
    assert first["total"] == 3
    assert [job["id"] for job in first["jobs"] + second["jobs"]] == ids[::-1]


def test_unknown_job_404(client):
    response = client.get("/v1/jobs/0123456789abcdef", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job.not_found"


def test_results_of_queued_job_409(client, series):
    job_id = _stow(client, series).json()["jobs"][0]["id"]
    response = client.get(f"/v1/jobs/{job_id}/rtstruct", headers=AUTH)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "result.not_ready"


def test_metrics_count_jobs(client, series):
    _stow(client, series)
    text = client.get("/metrics", headers=AUTH).text
    assert 'sats_jobs{state="queued"} 1.0' in text
    assert "sats_queue_depth 1.0" in text
    assert "sats_workers_alive 0.0" in text


def test_openapi_documents_routes(client):
    schema = client.get("/openapi.json").json()
    for path in ("/dicomweb/studies", "/v1/studies", "/v1/jobs", "/v1/jobs/{job_id}", "/readyz", "/metrics"):
        assert path in schema["paths"]
    assert "examples" in schema["components"]["schemas"]["JobView"]
    assert "bearer" in str(schema["components"]["securitySchemes"]).lower()
    for path, method in [("/v1/jobs", "get"), ("/dicomweb/studies", "post"), ("/metrics", "get")]:
        assert "429" in schema["paths"][path][method]["responses"], f"{method} {path} lacks 429"
    assert "429" not in schema["paths"]["/healthz"]["get"]["responses"]


def test_status_page_served(client):
    page = client.get("/status")
    assert page.status_code == 200
    assert "SATs jobs" in page.text


def test_gateway_never_imports_torch():
    code = "import sys, app.main, app.ingest, app.reaper; print('torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "False"
