"""DICOM listener on loopback with pynetdicom as the sending peer, and the real Redis (database 15)."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import MPEG2MPML, JPEGLSLossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from app.dicom_node import DicomNode, decodable_transfer_syntaxes
from app.settings import Settings
from app.store import JobStore
from tests.integration.conftest import free_port
from worker.synthetic_dicom import Ball, SeriesGeometry, render_phantom, write_ct_series


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        dicom_port=free_port(),
        dicom_bind_address="127.0.0.1",
        dicom_allowed_aets=["SENDER"],
        dicom_quiet_period_s=0.5,
    )


@pytest.fixture
def node(settings, store):
    running = DicomNode(settings, store)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    geometry = SeriesGeometry.axial(
        "HFS", rows=32, columns=32, slices=6, pixel_spacing_mm=(2.0, 2.0), slice_spacing_mm=3.0
    )
    volume = render_phantom(geometry, [Ball((0.0, 0.0, 0.0), 8.0, 200.0)], background_hu=0.0)
    return write_ct_series(volume, geometry, tmp_path_factory.mktemp("series"))


def _send(settings: Settings, paths: list[Path], calling: str = "SENDER", called: str = "SATS") -> list[int]:
    """Send ``paths`` in one association; return the C-STORE statuses (empty if not associated)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    association = ae.associate("127.0.0.1", settings.dicom_port, ae_title=called)
    if not association.is_established:
        return []
    try:
        return [int(association.send_c_store(pydicom.dcmread(path)).Status) for path in paths]
    finally:
        association.release()


def _wait_for_jobs(store: JobStore, count: int, timeout_s: float = 10.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs, total = store.list_jobs()
        if total >= count:
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"expected {count} job(s) within {timeout_s} s, found {store.list_jobs()[1]}")


def test_echo_from_allowed_title(node, settings):
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", settings.dicom_port, ae_title="SATS")
    assert association.is_established
    assert int(association.send_c_echo().Status) == 0
    association.release()


def test_unknown_calling_title_rejected(node, settings, series):
    assert _send(settings, series, calling="STRANGER") == []


def test_wrong_called_title_rejected(node, settings, series):
    assert _send(settings, series, called="OTHER") == []


def test_undecodable_syntax_rejected_at_association(node, settings):
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage, [MPEG2MPML])
    ae.add_requested_context(Verification)  # keeps the association up to inspect the contexts
    association = ae.associate("127.0.0.1", settings.dicom_port, ae_title="SATS")
    assert association.is_established
    assert [str(c.abstract_syntax) for c in association.accepted_contexts] == [Verification]
    [rejected] = association.rejected_contexts
    assert rejected.abstract_syntax == CTImageStorage
    association.release()


def test_offered_syntaxes_are_decodable():
    offered = decodable_transfer_syntaxes()
    assert "1.2.840.10008.1.2.1" in offered
    assert "1.2.840.10008.1.2.4.90" in offered  # JPEG 2000 lossless, pylibjpeg-openjpeg
    assert MPEG2MPML not in offered
    assert (JPEGLSLossless in offered) == _has_jpeg_ls()


def _has_jpeg_ls() -> bool:
    from pydicom.pixels import get_decoder

    return bool(get_decoder(JPEGLSLossless).is_available)


def test_series_over_two_associations_is_one_job(node, settings, store, series):
    assert _send(settings, series[:3]) == [0, 0, 0]
    assert _send(settings, series[3:]) == [0, 0, 0]
    [job] = _wait_for_jobs(store, 1)
    time.sleep(1.0)  # a second sweep must not queue the series again
    assert store.list_jobs()[1] == 1
    assert job.instances == len(series)
    assert job.source == "dicom"
    assert job.calling_aet == "SENDER"
    assert len(list((settings.inputs_dir / job.id).iterdir())) == len(series)
    assert not any(settings.dicom_pending_dir.iterdir())
    assert int(store.redis.llen("sats")) == 1


def test_late_instance_kept_apart(node, settings, store, series):
    _send(settings, series[:-1])
    [job] = _wait_for_jobs(store, 1)
    assert _send(settings, series[-1:]) == [0]
    late = pydicom.dcmread(series[-1], stop_before_pixels=True).SOPInstanceUID
    assert store.get(job.id).late_instances == 1
    assert store.late_instances(job.id) == [late]
    assert (settings.dicom_late_dir / job.id / f"{late}.dcm").is_file()
    time.sleep(1.0)
    assert store.list_jobs()[1] == 1  # not merged, and no new job for the late instance


def test_copy_of_known_instance_ignored(node, settings, store, series):
    _send(settings, series)
    [job] = _wait_for_jobs(store, 1)
    assert _send(settings, series[:1]) == [0]
    assert store.get(job.id).late_instances == 0


def test_restart_seals_pending_series(settings, store, series):
    first = DicomNode(settings, store)
    first.start()
    try:
        _send(settings, series)
    finally:
        first.stop()  # stops before the quiet period ends: the series is still pending
    assert store.list_jobs()[1] == 0
    assert len(list(next(settings.dicom_pending_dir.iterdir()).glob("*.dcm"))) == len(series)
    second = DicomNode(settings, store)
    second.start()
    try:
        [job] = _wait_for_jobs(store, 1)
        assert job.instances == len(series)
    finally:
        second.stop()


def test_listener_needs_allowed_titles(settings, store):
    with pytest.raises(RuntimeError, match="SATS_DICOM_ALLOWED_AETS"):
        DicomNode(settings.model_copy(update={"dicom_allowed_aets": []}), store)
