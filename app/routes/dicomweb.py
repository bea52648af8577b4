"""DICOMweb: STOW-RS to send CT series, WADO-RS to retrieve the result series."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.auth import AUTH_RESPONSES, require_api_key
from app.dicomweb import multipart_related_body
from app.errors import ApiError
from app.ingest import ingest_files
from app.routes.jobs import result_path
from app.schemas import ErrorBody
from app.settings import Settings
from app.store import JobStore
from app.stow_response import store_response, store_status
from app.uploads import receive_stow

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/dicomweb", tags=["dicomweb"], dependencies=[Depends(require_api_key)], responses=AUTH_RESPONSES
)

DICOM_JSON = "application/dicom+json"

_STORE_EXAMPLE = {
    "00081190": {"vr": "UR", "Value": ["https://sats.example/dicomweb/studies/1.2.3"]},
    "00081199": {
        "vr": "SQ",
        "Value": [
            {
                "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                "00081155": {"vr": "UI", "Value": ["1.2.3.4.5"]},
                "00081190": {
                    "vr": "UR",
                    "Value": ["https://sats.example/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"],
                },
            }
        ],
    },
}


def _base_url(request: Request, settings: Settings) -> str:
    return (settings.public_url or str(request.base_url)).rstrip("/")


@router.post(
    "/studies",
    summary="STOW-RS: store CT instances (multipart/related; type=application/dicom)",
    responses={
        200: {"description": "All instances stored.", "content": {DICOM_JSON: {"example": _STORE_EXAMPLE}}},
        202: {"description": "Some instances stored, others failed (Failed SOP Sequence lists them)."},
        409: {"description": "No instance stored; the Failed SOP Sequence gives each reason."},
        400: {"model": ErrorBody, "description": "Malformed, empty or truncated body."},
        413: {"model": ErrorBody, "description": "More bytes or parts than the configured limits."},
        415: {"model": ErrorBody, "description": "Not multipart/related with application/dicom parts."},
    },
)
async def store_instances(
    request: Request,
    rerun: Annotated[bool, Query(description="Run again even if these instances were processed before.")] = False,
) -> JSONResponse:
    """Receive a study's instances; one segmentation job is created per CT series in the request.

    Instances other than CT Image Storage are reported in the Failed SOP Sequence with
    reason 0x0122 (SOP class not supported); parts that are not DICOM with 0xC000.
    """
    settings: Settings = request.app.state.settings
    store: JobStore = request.app.state.store
    async with receive_stow(request, settings) as received:
        result = ingest_files(received, store, settings, source="stow-rs", rerun=rerun)
    base = _base_url(request, settings)
    studies = {item.study_instance_uid for item in result.stored}
    retrieve_url = f"{base}/dicomweb/studies/{studies.pop()}" if len(studies) == 1 else None

    def instance_url(study: str, series: str, instance: str) -> str:
        return f"{base}/dicomweb/studies/{study}/series/{series}/instances/{instance}"

    body = store_response(result.stored, result.failed, retrieve_url, instance_url)
    # Not part of the standard response: where to follow each job.
    body["jobs"] = [
        {"id": job.id, "created": created, "url": f"{base}/v1/jobs/{job.id}"} for job, created in result.jobs
    ]
    status = store_status(len(result.stored), len(result.failed))
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


def _series_files(request: Request, series_uid: str) -> tuple[str, list[Path]]:
    store: JobStore = request.app.state.store
    settings: Settings = request.app.state.settings
    job_id = store.find_result_series(series_uid)
    job = store.get(job_id) if job_id else None
    if job is None:
        raise ApiError(f"no result series {series_uid} is stored", code="result.not_found")
    files = []
    for kind in ("rtstruct", "seg"):
        output = job.outputs.get(kind)
        if isinstance(output, dict) and output.get("series_instance_uid") == series_uid:
            files.append(result_path(settings, job, kind))
    if not files:
        raise ApiError(f"no result series {series_uid} is stored", code="result.not_found")
    return job.study_instance_uid, files


def _multipart(files: list[Path]) -> StreamingResponse:
    body, content_type = multipart_related_body(files)
    return StreamingResponse(body, media_type=content_type)


@router.get(
    "/studies/{study_uid}/series/{series_uid}",
    summary="WADO-RS: retrieve a result series (RTSTRUCT or SEG) as multipart/related application/dicom",
    response_class=StreamingResponse,
    responses={404: {"model": ErrorBody, "description": "No such result series in this study."}},
)
def retrieve_series(request: Request, study_uid: str, series_uid: str) -> StreamingResponse:
    study, files = _series_files(request, series_uid)
    if study != study_uid:
        raise ApiError(f"result series {series_uid} is not in study {study_uid}", code="result.not_found")
    return _multipart(files)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}",
    summary="WADO-RS: retrieve one result instance as multipart/related application/dicom",
    response_class=StreamingResponse,
    responses={404: {"model": ErrorBody, "description": "No such result instance."}},
)
def retrieve_instance(request: Request, study_uid: str, series_uid: str, instance_uid: str) -> StreamingResponse:
    store: JobStore = request.app.state.store
    settings: Settings = request.app.state.settings
    found = store.find_instance(instance_uid)
    job = store.get(found[0]) if found else None
    if found is None or job is None:
        raise ApiError(f"no result instance {instance_uid} is stored", code="result.not_found")
    output = job.outputs.get(found[1], {})
    if job.study_instance_uid != study_uid or output.get("series_instance_uid") != series_uid:
        raise ApiError(
            f"result instance {instance_uid} is not in series {series_uid} of study {study_uid}",
            code="result.not_found",
        )
    return _multipart([result_path(settings, job, found[1])])
