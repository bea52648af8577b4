"""Delivery choices and faults that need no PACS: destinations per job, a closed port."""

from __future__ import annotations

import numpy as np
import pytest

from app.settings import Destination, Settings
from tests.integration.conftest import free_port
from worker.celery_app import destinations_for
from worker.delivery import TransientDeliveryError, deliver_dicom, deliver_dicomweb
from worker.synthetic_dicom import SeriesGeometry, write_ct_series

PACS = Destination(name="pacs", kind="dicom", ae_title="PACS", host="127.0.0.1", port=104)
TPS = Destination(name="tps", kind="dicom", ae_title="TPS", host="127.0.0.1", port=105, always=False)


def _names(settings: Settings, calling: str) -> list[str]:
    return [destination.name for destination in destinations_for(settings, calling)]


def test_always_destinations_get_every_job():
    settings = Settings(destinations=[PACS, TPS])
    assert _names(settings, "") == ["pacs"]
    assert _names(settings, "TPS") == ["pacs"]  # routing back is off


def test_sender_gets_results_when_routing_back():
    settings = Settings(destinations=[PACS, TPS], route_to_sender=True)
    assert _names(settings, "TPS") == ["pacs", "tps"]
    assert _names(settings, "PACS") == ["pacs"]  # not added twice
    assert _names(settings, "SCANNER") == ["pacs"]  # not a configured destination


def test_destination_needs_its_address():
    with pytest.raises(ValueError, match="needs ae_title, host and port"):
        Destination(name="x", kind="dicom", ae_title="X")
    with pytest.raises(ValueError, match="needs url"):
        Destination(name="x", kind="dicomweb")


def test_closed_port_is_transient(tmp_path, ct_file):
    closed = Destination(name="down", kind="dicom", ae_title="DOWN", host="127.0.0.1", port=free_port())
    with pytest.raises(TransientDeliveryError):
        deliver_dicom(closed, [ct_file], "SATS")
    web = Destination(name="down-web", kind="dicomweb", url=f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(TransientDeliveryError):
        deliver_dicomweb(web, [ct_file])


@pytest.fixture
def ct_file(tmp_path):
    """One synthetic CT slice to send."""
    geometry = SeriesGeometry.axial(
        "HFS", rows=16, columns=16, slices=1, pixel_spacing_mm=(1.0, 1.0), slice_spacing_mm=1.0
    )
    return write_ct_series(np.zeros(geometry.shape, dtype=np.int16), geometry, tmp_path)[0]
