"""The DICOM test harness on its own: Orthanc, storescp and the DCMTK and dicom3tools wrappers.

No SATs process runs here. These tests show that the peers in tests/integration/pacs.py
start, listen only on 127.0.0.1, and store, list and reject what the service tests rely on.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RTStructureSetStorage,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.association import Association

from tests.conftest import shared_path
from tests.integration.conftest import free_port
from tests.integration.pacs import (
    DicomToolError,
    Orthanc,
    OrthancError,
    PlainStoreSCP,
    RestrictedStoreSCP,
    dciodvfy_errors,
    dicom_files,
    echoscu,
    findscu_series,
    is_loopback_only,
    listening_addresses,
    require_tool,
    run_tool,
    storescu,
)
from worker.rtstruct import AlgorithmInfo, RoiSpec, build_rtstruct
from worker.seg import SegmentSpec, build_seg
from worker.synthetic_dicom.geometry import SeriesGeometry
from worker.synthetic_dicom.writer import write_ct_series

#: Number of pyCERR CT slices sent to Orthanc.
CT_SLICES = 4

#: Result of a rejected presentation context: abstract syntax not supported (PS3.8 table 9-18).
ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory) -> Path:
    """A folder with the first pyCERR CT slices and a text file that is not DICOM."""
    source = sorted(shared_path("hn-ct-pycerr").glob("IMG_*.dcm"))[:CT_SLICES]
    folder = tmp_path_factory.mktemp("ct")
    for path in source:
        shutil.copy(path, folder / path.name)
    (folder / "SOURCE.md").write_text("not DICOM\n")
    return folder


@pytest.fixture(scope="module")
def plain_scp(tmp_path_factory) -> Iterator[PlainStoreSCP]:
    with PlainStoreSCP(tmp_path_factory.mktemp("plain-scp"), ae_title="PLAINSCP") as scp:
        yield scp


@pytest.fixture(scope="module")
def restricted_scp(tmp_path_factory) -> Iterator[RestrictedStoreSCP]:
    with RestrictedStoreSCP(tmp_path_factory.mktemp("restricted-scp"), ae_title="RESTRICTED") as scp:
        yield scp


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, plain_scp, restricted_scp) -> Iterator[Orthanc]:
    """Orthanc with the storescp servers as modalities "scp" and "restricted", and itself as DICOMweb server "self"."""
    http_port = free_port()
    servers = {"self": {"Url": f"http://127.0.0.1:{http_port}/dicom-web/"}}
    modalities = {
        "scp": [plain_scp.ae_title, "127.0.0.1", plain_scp.port],
        "restricted": [restricted_scp.ae_title, "127.0.0.1", restricted_scp.port],
    }
    with Orthanc(
        tmp_path_factory.mktemp("orthanc"), modalities=modalities, dicomweb_servers=servers, http_port=http_port
    ) as server:
        yield server


@pytest.fixture(scope="module")
def stored_ct(orthanc, ct_folder) -> dict:
    """Orthanc's series object of the CT slices that storescu sent to Orthanc."""
    storescu(ct_folder, "STORESCU", orthanc.ae_title, orthanc.dicom_port)
    series = orthanc.find_series("CT")
    assert len(series) == 1, orthanc.log()[-3000:]
    return series[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """An RTSTRUCT and a SEG of a cube on a small synthetic CT, written by the worker's writers."""
    folder = tmp_path_factory.mktemp("results")
    geometry = SeriesGeometry.axial(
        "HFS", rows=16, columns=16, slices=4, pixel_spacing_mm=(1.0, 1.0), slice_spacing_mm=2.0
    )
    ct_paths = write_ct_series(np.zeros(geometry.shape), geometry, folder / "ct")
    ct_datasets = [pydicom.dcmread(path) for path in ct_paths]
    mask = np.zeros(geometry.shape, dtype=bool)
    mask[1:3, 4:10, 4:10] = True

    rtstruct = build_rtstruct(ct_datasets, mask, RoiSpec(), AlgorithmInfo(name="harness", version="1"))
    rtstruct_path = folder / "rtstruct.dcm"
    rtstruct.save_as(rtstruct_path, enforce_file_format=True)

    segment = SegmentSpec(label="GTV", color_rgb=(255, 0, 0), algorithm_name="harness", algorithm_version="1")
    seg_path = folder / "seg.dcm"
    build_seg(ct_datasets, mask.astype(np.uint8), segment, software_version="1").save_as(seg_path)
    return {"ct": ct_paths[0], "rtstruct": rtstruct_path, "seg": seg_path}


def _associate(port: int, called_ae: str, sop_classes: list[str]) -> Association:
    """Propose one presentation context per SOP class with pynetdicom and return the association."""
    ae = AE(ae_title="PROBE")
    ae.acse_timeout = 10
    ae.network_timeout = 10
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title=called_ae)


# --- Orthanc -----------------------------------------------------------------------------------


def test_dcmtk_tools_skip_pynetdicom_commands(monkeypatch):
    # An activated virtual environment puts pynetdicom's storescu before DCMTK's on PATH.
    scripts = sysconfig.get_path("scripts")
    monkeypatch.setenv("PATH", os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    path = require_tool("storescu", "dcmtk")
    assert Path(path).parent.resolve() != Path(scripts).resolve()
    assert "dcmtk" in run_tool([path, "--version"], timeout_s=30)


def test_servers_listen_on_loopback_only(orthanc, plain_scp, restricted_scp):
    for port in (orthanc.http_port, orthanc.dicom_port, plain_scp.port, restricted_scp.port):
        addresses = listening_addresses(port)
        assert addresses, f"nothing listens on port {port}"
        assert is_loopback_only(addresses), f"port {port} listens on {addresses}"


@pytest.mark.shared_data
def test_storescu_stores_ct_folder_in_orthanc(orthanc, stored_ct, ct_folder):
    sent = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in dicom_files(ct_folder)}
    stored = {orthanc.rest_get(f"/instances/{id}")["MainDicomTags"]["SOPInstanceUID"] for id in stored_ct["Instances"]}

    assert len(sent) == CT_SLICES
    assert stored == sent


@pytest.mark.shared_data
def test_findscu_lists_ct_series(orthanc, stored_ct):
    study_uid = orthanc.rest_get(f"/studies/{stored_ct['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]

    series = findscu_series(orthanc.dicom_port, orthanc.ae_title, "FINDSCU", study_uid)

    assert series == [
        {
            "SeriesInstanceUID": stored_ct["MainDicomTags"]["SeriesInstanceUID"],
            "Modality": "CT",
            "NumberOfSeriesRelatedInstances": CT_SLICES,
        }
    ]


def test_echoscu_reaches_orthanc(orthanc):
    echoscu(orthanc.dicom_port, orthanc.ae_title)


def test_echoscu_raises_on_closed_port():
    with pytest.raises(DicomToolError, match="echoscu"):
        echoscu(free_port(), "NOBODY")


@pytest.mark.shared_data
def test_instance_file_returns_stored_file(orthanc, stored_ct):
    orthanc_id = stored_ct["Instances"][0]
    uid = orthanc.rest_get(f"/instances/{orthanc_id}")["MainDicomTags"]["SOPInstanceUID"]

    dataset = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(orthanc_id)))

    assert dataset.SOPInstanceUID == uid
    assert dataset.Modality == "CT"


@pytest.mark.shared_data
def test_orthanc_sends_study_to_modality(orthanc, stored_ct, plain_scp):
    answer = orthanc.send_study_to_modality(stored_ct["ParentStudy"], "scp")

    assert answer["InstancesCount"] == CT_SLICES
    assert answer["FailedInstancesCount"] == 0
    received = {str(ds.SOPInstanceUID) for ds in plain_scp.received_datasets() if ds.SOPClassUID == CTImageStorage}
    stored = {orthanc.rest_get(f"/instances/{id}")["MainDicomTags"]["SOPInstanceUID"] for id in stored_ct["Instances"]}
    assert received == stored


@pytest.mark.shared_data
def test_send_study_to_modality_raises_when_rejected(orthanc, stored_ct):
    # The restricted storescp accepts no CT Image Storage context.
    with pytest.raises(OrthancError, match="/modalities/restricted/store"):
        orthanc.send_study_to_modality(stored_ct["ParentStudy"], "restricted")


@pytest.mark.shared_data
def test_orthanc_serves_dicomweb(orthanc, stored_ct):
    study_uid = orthanc.rest_get(f"/studies/{stored_ct['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]

    qido = orthanc.http.get(f"/dicom-web/studies/{study_uid}/series", headers={"Accept": "application/dicom+json"})
    stow = orthanc.send_study_to_dicomweb_server(stored_ct["ParentStudy"], "self")

    assert qido.status_code == 200
    assert [item["0020000E"]["Value"][0] for item in qido.json()] == [stored_ct["MainDicomTags"]["SeriesInstanceUID"]]
    assert stow["InstancesCount"] == str(CT_SLICES)


def test_upload_files_stores_rtstruct(orthanc, results):
    answers = orthanc.upload_files([results["rtstruct"]])

    assert [answer["Status"] for answer in answers] == ["Success"]
    series_ids = [series["ID"] for series in orthanc.find_series("RTSTRUCT")]
    assert answers[0]["ParentSeries"] in series_ids


# --- storescp ----------------------------------------------------------------------------------


def test_restricted_scp_accepts_rtstruct(restricted_scp, results):
    storescu(results["rtstruct"], "SATS", restricted_scp.ae_title, restricted_scp.port)

    uid = pydicom.dcmread(results["rtstruct"]).SOPInstanceUID
    received = [dataset.SOPInstanceUID for dataset in restricted_scp.received_datasets()]
    assert uid in received


def test_restricted_scp_rejects_seg_context(restricted_scp):
    association = _associate(restricted_scp.port, restricted_scp.ae_title, [SegmentationStorage, RTStructureSetStorage])
    try:
        assert association.is_established
        accepted = [context.abstract_syntax for context in association.accepted_contexts]
        rejected = {context.abstract_syntax: context.result for context in association.rejected_contexts}
    finally:
        association.release()

    assert accepted == [RTStructureSetStorage]
    assert rejected == {SegmentationStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}


def test_restricted_scp_accepts_no_context_for_seg_only(restricted_scp):
    association = _associate(restricted_scp.port, restricted_scp.ae_title, [SegmentationStorage])
    if association.is_established:
        association.release()

    # storescp sends A-ASSOCIATE-AC with every context rejected, and pynetdicom then aborts.
    assert not association.is_established
    assert association.accepted_contexts == []
    rejected = {context.abstract_syntax: context.result for context in association.rejected_contexts}
    assert rejected == {SegmentationStorage: ABSTRACT_SYNTAX_NOT_SUPPORTED}


def test_storescu_raises_for_rejected_seg(restricted_scp, results):
    with pytest.raises(DicomToolError, match="No Acceptable Presentation Contexts"):
        storescu(results["seg"], "SATS", restricted_scp.ae_title, restricted_scp.port)


def test_plain_scp_accepts_seg(plain_scp, results):
    storescu(results["seg"], "SATS", plain_scp.ae_title, plain_scp.port)

    received = {dataset.SOPClassUID for dataset in plain_scp.received_datasets()}
    assert SegmentationStorage in received


# --- dciodvfy ----------------------------------------------------------------------------------


def test_dciodvfy_errors_empty_for_valid_objects(results):
    for kind in ("ct", "rtstruct", "seg"):
        assert dciodvfy_errors(results[kind]) == [], kind


def test_dciodvfy_errors_lists_missing_attributes(tmp_path):
    dataset = Dataset()
    dataset.SOPClassUID = RTStructureSetStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "RTSTRUCT"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "incomplete.dcm"
    dataset.save_as(path, enforce_file_format=True)

    errors = dciodvfy_errors(path)

    assert errors
    assert all(line.startswith("Error") for line in errors)
    assert any("StructureSetLabel" in line for line in errors), errors
