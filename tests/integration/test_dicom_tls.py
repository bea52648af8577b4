"""DICOM over TLS with DCMTK as the real peer: storescu sends to the listener, storescp receives deliveries.

The certificates come from a test CA made with the openssl command; the server certificate
names 127.0.0.1. Mutual TLS is required on both sides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.dicom_node import DicomNode
from app.settings import Destination, Settings
from model.errors import InputError
from tests.integration.conftest import free_port
from tests.integration.pacs import DicomToolError, PlainStoreSCP, require_tool, run_tool, storescu
from worker.delivery import TransientDeliveryError, deliver_dicom
from worker.synthetic_dicom import Ball, SeriesGeometry, render_phantom, write_ct_series

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Pki:
    """A CA, a certificate for 127.0.0.1 and a client certificate, all signed by the CA, and a stranger."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # self-signed, so no CA above trusts it
    stranger_key: Path


def _openssl(*arguments: str) -> None:
    run_tool([require_tool("openssl", "openssl"), *arguments], timeout_s=60)


def _signed(folder: Path, name: str, subject: str, extensions: str, ca: Path, ca_key: Path) -> tuple[Path, Path]:
    key, request, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request), "-subj", subject)
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(folder / f"{name}.ext"),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
             "-days", "2", "-subj", "/CN=SATs test CA")  # fmt: skip
    usage = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    server = _signed(
        folder,
        "server",
        "/CN=127.0.0.1",
        usage + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        ca,
        ca_key,
    )
    client = _signed(folder, "client", "/CN=SATs test client", usage + "extendedKeyUsage=clientAuth\n", ca, ca_key)
    stranger_cert, stranger_key = folder / "stranger.crt", folder / "stranger.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(stranger_key), "-out",
             str(stranger_cert), "-days", "2", "-subj", "/CN=stranger")  # fmt: skip
    return Pki(ca, *server, *client, stranger_cert, stranger_key)


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    geometry = SeriesGeometry.axial(
        "HFS", rows=32, columns=32, slices=6, pixel_spacing_mm=(2.0, 2.0), slice_spacing_mm=3.0
    )
    volume = render_phantom(geometry, [Ball((0.0, 0.0, 0.0), 8.0, 200.0)], background_hu=0.0)
    return write_ct_series(volume, geometry, tmp_path_factory.mktemp("series"))


@pytest.fixture
def tls_node(tmp_path, pki, store):
    settings = Settings(
        data_dir=tmp_path / "data",
        dicom_port=free_port(),
        dicom_bind_address="127.0.0.1",
        dicom_allowed_aets=["STORESCU"],
        dicom_quiet_period_s=0.5,
        dicom_tls_cert=pki.server_cert,
        dicom_tls_key=pki.server_key,
        dicom_tls_ca=pki.ca,
    )
    node = DicomNode(settings, store)
    node.start()
    yield node
    node.stop()


def _tls_options(cert: Path, key: Path, ca: Path) -> list[str]:
    # +tls key cert: our identity; +cf: the CA that must sign the peer's certificate.
    return ["+tls", str(key), str(cert), "+cf", str(ca)]


def _wait_for_jobs(store, count: int, timeout_s: float = 15.0) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store.list_jobs()[1] >= count:
            break
        time.sleep(0.1)
    return int(store.list_jobs()[1])


def test_listener_accepts_storescu_with_client_certificate(tls_node, pki, series, store):
    options = _tls_options(pki.client_cert, pki.client_key, pki.ca)
    storescu(series, "STORESCU", "SATS", tls_node.settings.dicom_port, options=options)
    assert _wait_for_jobs(store, 1) == 1
    [job] = store.list_jobs()[0]
    assert job.calling_aet == "STORESCU"


@pytest.mark.parametrize("client", ["plain", "stranger"])
def test_listener_refuses_without_trusted_certificate(tls_node, pki, series, store, client):
    options = [] if client == "plain" else _tls_options(pki.stranger_cert, pki.stranger_key, pki.ca)
    with pytest.raises(DicomToolError):
        storescu(series[:1], "STORESCU", "SATS", tls_node.settings.dicom_port, options=options, timeout_s=60)
    assert _wait_for_jobs(store, 1, timeout_s=2.0) == 0


@pytest.fixture
def tls_storescp(tmp_path, pki):
    # -rc: storescp requires a client certificate; +cf: the CA that must sign it.
    behaviour = ["+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca), "-rc"]
    with PlainStoreSCP(tmp_path / "scp", ae_title="TLSPACS", behaviour=behaviour) as scp:
        yield scp


def _destination(scp: PlainStoreSCP, pki: Pki, **changes: object) -> Destination:
    fields = {
        "name": "tls-pacs",
        "kind": "dicom",
        "ae_title": "TLSPACS",
        "host": "127.0.0.1",
        "port": scp.port,
        "tls": True,
        "tls_ca": pki.ca,
        "tls_cert": pki.client_cert,
        "tls_key": pki.client_key,
        "timeout_s": 10,
        **changes,
    }
    return Destination.model_validate(fields)


def test_delivery_over_mutual_tls(tls_storescp, pki, series):
    outcomes = deliver_dicom(_destination(tls_storescp, pki), series[:2], "SATS")
    assert [outcome.status for outcome in outcomes] == ["delivered", "delivered"]
    assert len(tls_storescp.wait_for_files(2, 10)) == 2


def test_delivery_refuses_untrusted_destination(tls_storescp, pki, series):
    # The destination's certificate is not signed by the CA we trust: no association, nothing sent.
    destination = _destination(tls_storescp, pki, tls_ca=pki.stranger_cert)
    with pytest.raises(TransientDeliveryError):
        deliver_dicom(destination, series[:1], "SATS")
    assert tls_storescp.received_files() == []


def test_tls_settings_need_certificate_and_key_together(pki, tmp_path):
    with pytest.raises(ValueError, match="given together"):
        Settings(data_dir=tmp_path, dicom_tls_cert=pki.server_cert)


def test_listener_refuses_to_start_without_its_tls_files(pki, tmp_path, store):
    # Other processes read the same settings without the files, so the listener checks them itself.
    settings = Settings(
        data_dir=tmp_path / "data",
        dicom_port=free_port(),
        dicom_allowed_aets=["STORESCU"],
        dicom_tls_cert=tmp_path / "missing.crt",
        dicom_tls_key=pki.server_key,
    )
    node = DicomNode(settings, store)
    with pytest.raises(InputError, match="missing.crt does not exist") as raised:
        node.start()
    assert raised.value.code == "config.tls_file_missing"
