"""Real DICOM peers for the integration tests: an Orthanc PACS, DCMTK tools and storescp.

Orthanc 1.10.1 and DCMTK 3.6.7 (Debian packages orthanc, orthanc-dicomweb and dcmtk) have
no option to choose the listening address and bind to every interface. Every server started
here therefore runs with a small ``LD_PRELOAD`` library, compiled on first use with the
system C compiler, that turns a bind to the wildcard address into a bind to the loopback
address. Servers run under coreutils ``timeout``, so they stop by themselves after
``lifetime_s`` even when the test session is killed before its teardown.

Nothing here imports the SATs service. The tests use these helpers as the PACS and the
modalities around it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from tests.integration.conftest import REPO, ServiceProcess, free_port

#: Association negotiation profile of :class:`RestrictedStoreSCP` and the profile name in it.
REJECT_SEG_CONFIG = REPO / "deploy" / "dcmtk-reject-seg.cfg"
REJECT_SEG_PROFILE = "RTStructOnly"

#: Folders where Debian's orthanc-dicomweb package installs the DICOMweb plugin.
DICOMWEB_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))

#: Default lifetime of a started server in seconds, after which ``timeout`` stops it.
DEFAULT_LIFETIME_S = 1800

#: Seconds that a DCMTK client waits for the TCP connection and for ACSE messages.
CONNECT_TIMEOUT_S = 10

_LOOPBACK_BIND_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* Replace a bind to 0.0.0.0 or :: by a bind to 127.0.0.1 or ::1, and pass other binds through. */
int bind(int fd, const struct sockaddr *address, socklen_t length)
{
    static int (*next_bind)(int, const struct sockaddr *, socklen_t);
    if (next_bind == NULL)
        next_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (address != NULL && address->sa_family == AF_INET && length >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in loopback;
        memcpy(&loopback, address, sizeof loopback);
        if (loopback.sin_addr.s_addr == htonl(INADDR_ANY)) {
            loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return next_bind(fd, (const struct sockaddr *)&loopback, sizeof loopback);
        }
    }
    if (address != NULL && address->sa_family == AF_INET6 && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 loopback;
        memcpy(&loopback, address, sizeof loopback);
        if (IN6_IS_ADDR_UNSPECIFIED(&loopback.sin6_addr)) {
            loopback.sin6_addr = in6addr_loopback;
            return next_bind(fd, (const struct sockaddr *)&loopback, sizeof loopback);
        }
    }
    return next_bind(fd, address, length);
}
"""


class DicomToolError(RuntimeError):
    """A DCMTK or dicom3tools command failed. The message contains the command and its output."""

    def __init__(self, command: Sequence[str], returncode: int, output: str) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.output = output
        super().__init__(f"{' '.join(self.command)} failed with exit status {returncode}:\n{output}")


class OrthancError(RuntimeError):
    """An Orthanc REST call returned an error status. The message contains Orthanc's response body."""


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready in time. The message ends with its log."""


# --- Tools and processes -----------------------------------------------------------------------


def require_tool(name: str, package: str) -> str:
    """Return the path of a command, or fail the test with the Debian package that installs it.

    pynetdicom installs Python commands with DCMTK's names (storescu, findscu, storescp and
    others) into the environment's scripts folder, which an activated virtual environment
    puts first on PATH. DCMTK tools are therefore looked up in the other PATH folders only.
    """
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    if package == "dcmtk":
        scripts = Path(sysconfig.get_path("scripts")).resolve()
        folders = [folder for folder in folders if folder and Path(folder).resolve() != scripts]
    path = shutil.which(name, path=os.pathsep.join(folders))
    if path is None:
        pytest.fail(f"{name} not found on PATH; install the Debian package {package} (apt-get install {package})")
    return path


def run_tool(command: Sequence[str], timeout_s: float) -> str:
    """Run a command and return its standard output and error together.

    Raises
    ------
    DicomToolError
        If the command exits with a non-zero status or runs longer than ``timeout_s``.
    """
    try:
        result = subprocess.run(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        output = error.output.decode(errors="replace") if isinstance(error.output, bytes) else (error.output or "")
        raise DicomToolError(command, -1, f"timed out after {timeout_s} s\n{output}") from error
    if result.returncode != 0:
        raise DicomToolError(command, result.returncode, result.stdout)
    return result.stdout


def loopback_bind_library() -> Path:
    """Return the ``LD_PRELOAD`` library that binds listening sockets to loopback, building it once."""
    digest = hashlib.sha256(_LOOPBACK_BIND_SOURCE.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"sats-test-loopback-bind-{os.getuid()}"
    library = folder / f"loopback_bind-{digest}.so"
    if library.exists():
        return library
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail(
            "no C compiler (cc) found on PATH: install the Debian package gcc (apt-get install gcc), which "
            "builds the library that keeps Orthanc and storescp on 127.0.0.1"
        )
    folder.mkdir(mode=0o700, exist_ok=True)
    # Build from and into files private to this process, then rename, so that parallel
    # sessions never compile or load a partial file.
    source = folder / f"loopback_bind-{digest}.{os.getpid()}.c"
    source.write_text(_LOOPBACK_BIND_SOURCE, encoding="utf-8")
    partial = folder / f"loopback_bind-{digest}.{os.getpid()}.so"
    run_tool([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(source), "-ldl"], timeout_s=120)
    partial.replace(library)
    source.unlink()
    return library


def server_environment() -> dict[str, str]:
    """Return the environment of a server process: this one with the loopback bind library preloaded."""
    environment = dict(os.environ)
    preload = [str(loopback_bind_library()), *filter(None, environment.get("LD_PRELOAD", "").split(":"))]
    environment["LD_PRELOAD"] = ":".join(preload)
    return environment


def listening_addresses(port: int) -> set[str]:
    """Return the local addresses with a TCP socket listening on ``port``, read from /proc/net/tcp{,6}.

    IPv4 addresses are returned as ``"127.0.0.1"``, IPv6 addresses as 32 hex digits in kernel order
    (``"00000000000000000000000001000000"`` is ``::1``). Linux only.
    """
    listen_state = "0A"
    addresses: set[str] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, _, port_hex = fields[1].partition(":")
            if fields[3] != listen_state or int(port_hex, 16) != port:
                continue
            if len(address) == 8:
                addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
            else:
                addresses.add(address)
    return addresses


def is_loopback_only(addresses: Iterable[str]) -> bool:
    """Return True when every address from :func:`listening_addresses` is 127.0.0.1 or ::1."""
    ipv6_loopback = "00000000000000000000000001000000"
    return all(address in {"127.0.0.1", ipv6_loopback} for address in addresses)


def _start_server(name: str, command: list[str], work_dir: Path, lifetime_s: float) -> ServiceProcess:
    """Start ``command`` under ``timeout`` with loopback-only binds, logging its output to ``work_dir/NAME.log``."""
    timeout = require_tool("timeout", "coreutils")
    wrapped = [timeout, "--kill-after=10", f"{lifetime_s:g}", *command]
    return ServiceProcess(name, wrapped, server_environment(), work_dir).start()


def _wait_until(process: ServiceProcess, ready: Callable[[], bool], timeout_s: float, description: str) -> None:
    """Poll ``ready()`` until it returns True, and raise with the process log if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if process.process is not None and process.process.poll() is not None:
            status = process.process.returncode
            raise ServerStartError(
                f"{process.name} exited with status {status} before {description}:\n{process.log()[-4000:]}"
            )
        time.sleep(0.05)
    process.stop()
    raise ServerStartError(f"timed out after {timeout_s} s waiting for {description}:\n{process.log()[-4000:]}")


# --- Orthanc -----------------------------------------------------------------------------------


def dicomweb_plugin() -> Path:
    """Return the path of Orthanc's DICOMweb plugin, or fail the test with the package to install."""
    for folder in DICOMWEB_PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    searched = ", ".join(str(folder) for folder in DICOMWEB_PLUGIN_DIRS)
    pytest.fail(
        f"Orthanc's DICOMweb plugin (libOrthancDicomWeb.so) not found in {searched}; install the Debian "
        "package orthanc-dicomweb (apt-get install orthanc-dicomweb)"
    )


class Orthanc:
    """An Orthanc server of its own, on free loopback ports, with the DICOMweb plugin enabled.

    Parameters
    ----------
    work_dir
        Folder for the configuration, the storage and index, and ``orthanc.log``.
    modalities
        ``DicomModalities``: name -> ``[AE title, host, port]``, for example
        ``{"sats": ["SATS", "127.0.0.1", 11112]}``. Orthanc sends to these with C-STORE.
    dicomweb_servers
        ``DicomWeb.Servers``: name -> ``{"Url": ..., "HttpHeaders": {...}}`` or ``[url]``.
    ae_title
        Orthanc's own AE title. Orthanc accepts any called AE title (DicomCheckCalledAet false).
    http_port
        HTTP port, by default a free one. Choose it in advance when ``dicomweb_servers``
        must name this Orthanc's own URL.
    lifetime_s
        Seconds after which the server stops by itself.

    Notes
    -----
    Authentication is off and Orthanc accepts HTTP requests only from the local host
    (RemoteAccessAllowed false). C-ECHO, C-STORE and C-FIND are accepted from any calling AE
    title, because both ports are bound to 127.0.0.1. An instance that is already stored is
    not overwritten (Orthanc's default), so a second C-STORE of it reports success and
    changes nothing.
    """

    def __init__(
        self,
        work_dir: Path,
        modalities: Mapping[str, Sequence[Any]] | None = None,
        dicomweb_servers: Mapping[str, Any] | None = None,
        ae_title: str = "ORTHANC",
        http_port: int | None = None,
        lifetime_s: float = DEFAULT_LIFETIME_S,
    ) -> None:
        self.work_dir = work_dir
        self.ae_title = ae_title
        self.http_port = http_port or free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.config_path = work_dir / "orthanc.json"
        self.config = self._config(dict(modalities or {}), dict(dicomweb_servers or {}))
        self.http = httpx.Client(base_url=self.url, timeout=120)
        self.lifetime_s = lifetime_s
        self.process: ServiceProcess | None = None

    def _config(self, modalities: dict[str, Any], dicomweb_servers: dict[str, Any]) -> dict[str, Any]:
        storage = self.work_dir / "storage"
        return {
            "Name": "SATS-TEST-PACS",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            # Orthanc 1.10.1 rejects C-FIND from unknown calling AE titles by default.
            "DicomAlwaysAllowFind": True,
            "DicomModalities": modalities,
            # Close an outgoing association right after the last C-STORE. Orthanc's default
            # keeps it open 5 s, which would block a single-process storescp for that long.
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 30,
            "SaveJobs": False,
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": dicomweb_servers},
        }

    def start(self, timeout_s: float = 30) -> Self:
        """Write the configuration, start Orthanc and wait until ``GET /system`` returns 200."""
        # Debian installs Orthanc in /usr/sbin, which is not on every user's PATH.
        orthanc = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
        if orthanc is None:
            pytest.fail("Orthanc not found on PATH or in /usr/sbin; install the Debian package orthanc")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2), encoding="utf-8")
        self.process = _start_server("orthanc", [orthanc, str(self.config_path)], self.work_dir, self.lifetime_s)
        _wait_until(self.process, self._is_ready, timeout_s, f"Orthanc to return 200 for GET {self.url}/system")
        return self

    def _is_ready(self) -> bool:
        try:
            return self.http.get("/system").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 15 s) and close the HTTP client."""
        if self.process is not None:
            self.process.stop()
        self.http.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        """Return Orthanc's output so far."""
        return self.process.log() if self.process is not None else ""

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            raise OrthancError(
                f"Orthanc {response.request.method} {response.request.url.path} returned {response.status_code}: "
                f"{response.text[:2000]}"
            )
        return response

    def rest_get(self, path: str, **kwargs: Any) -> Any:
        """GET a REST path (``/studies``...) and return the decoded JSON body.

        Raises
        ------
        OrthancError
            If Orthanc returns an error status. The message contains its response body.
        """
        return self._check(self.http.get(path, **kwargs)).json()

    def rest_post(self, path: str, **kwargs: Any) -> Any:
        """POST to a REST path (``json=`` or ``content=``) and return the decoded JSON body.

        Raises
        ------
        OrthancError
            If Orthanc returns an error status. The message contains its response body.
        """
        return self._check(self.http.post(path, **kwargs)).json()

    def upload_files(self, paths: Iterable[Path]) -> list[dict[str, Any]]:
        """Store DICOM files through ``POST /instances`` and return Orthanc's response for each.

        Each response contains ``ID`` (the Orthanc instance id), ``ParentStudy``,
        ``ParentSeries`` and ``Status`` (``Success`` or ``AlreadyStored``).
        """
        return [self.rest_post("/instances", content=Path(path).read_bytes()) for path in paths]

    def find_series(self, modality: str) -> list[dict[str, Any]]:
        """Return every stored series of a modality as Orthanc's expanded series objects.

        Each object contains ``ID``, ``ParentStudy``, ``Instances`` (Orthanc ids) and
        ``MainDicomTags`` (``SeriesInstanceUID``, ``Modality``...).
        """
        query = {"Level": "Series", "Query": {"Modality": modality}, "Expand": True}
        return list(self.rest_post("/tools/find", json=query))

    def instance_file(self, orthanc_id: str) -> bytes:
        """Return the stored DICOM file of an instance, as received (Part 10)."""
        return self._check(self.http.get(f"/instances/{orthanc_id}/file")).content

    def send_study_to_modality(self, study_orthanc_id: str, modality_name: str) -> dict[str, Any]:
        """Send a study with C-STORE to a configured modality and wait until the job ends.

        Returns Orthanc's response, with ``InstancesCount`` and ``FailedInstancesCount``.

        Raises
        ------
        OrthancError
            If any C-STORE fails or the association is rejected, because Orthanc then
            returns an error status.
        """
        body = {"Resources": [study_orthanc_id], "Synchronous": True}
        return dict(self.rest_post(f"/modalities/{modality_name}/store", json=body))

    def send_study_to_dicomweb_server(self, study_orthanc_id: str, server_name: str) -> dict[str, Any]:
        """Send a study with STOW-RS to a server of ``DicomWeb.Servers`` and wait until the job ends.

        Returns the plugin's response. Version 1.7 returns ``InstancesCount`` and
        ``NetworkSizeMB``, both as strings.

        Raises
        ------
        OrthancError
            If the STOW-RS request fails. The message contains Orthanc's response body.
        """
        body = {"Resources": [study_orthanc_id], "Synchronous": True}
        return dict(self.rest_post(f"/dicom-web/servers/{server_name}/stow", json=body))


# --- DCMTK and dicom3tools clients ---------------------------------------------------------------


def _is_dicom_file(path: Path) -> bool:
    """Return True for a Part-10 file, or for a bare data set that has a SOP Class UID."""
    with path.open("rb") as file:
        header = file.read(132)
    if header[128:132] == b"DICM":
        return True
    try:
        with warnings.catch_warnings():
            # pydicom warns about the VR it guesses for bytes that are not DICOM at all.
            warnings.simplefilter("ignore", UserWarning)
            dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, EOFError):
        return False
    return "SOPClassUID" in dataset


def dicom_files(paths: Path | Iterable[Path]) -> list[Path]:
    """Expand files and folders into DICOM files.

    Files are returned as given. Folders are searched recursively, and their files that are
    not DICOM (README, SOURCE.md...) are left out, as storescu would stop at them.
    """
    items = [paths] if isinstance(paths, Path) else [Path(path) for path in paths]
    files: list[Path] = []
    for item in items:
        if item.is_dir():
            files.extend(path for path in sorted(item.rglob("*")) if path.is_file() and _is_dicom_file(path))
        else:
            files.append(item)
    return files


def storescu(
    paths: Path | Iterable[Path],
    ae_title_calling: str,
    called_ae: str,
    port: int,
    host: str = "127.0.0.1",
    options: Sequence[str] = (),
    timeout_s: float = 300,
) -> str:
    """Send DICOM files with C-STORE over one association (DCMTK storescu) and return its output.

    Parameters
    ----------
    paths
        Files and folders. Folders are searched recursively for DICOM files (see :func:`dicom_files`).
    ae_title_calling, called_ae
        Calling AE title (storescu's) and called AE title (the peer's).
    options
        More storescu options, for example ``["-xs"]`` to propose JPEG Lossless SV1 first.

    Raises
    ------
    DicomToolError
        If the association fails or a C-STORE does not succeed. storescu stops at the first
        failed C-STORE, so later files are not sent.
    ValueError
        If ``paths`` contains no DICOM file.

    Notes
    -----
    storescu runs with ``-R``, so it proposes only the SOP classes and transfer syntaxes
    of the files. Without it, storescu 3.6.7 proposes a fixed list of storage SOP classes
    that lacks Segmentation Storage, and fails to send a SEG to any SCP.
    """
    tool = require_tool("storescu", "dcmtk")
    files = dicom_files(paths)
    if not files:
        raise ValueError(f"no DICOM files found in {paths!r}")
    command = [tool, "-R", "-aet", ae_title_calling, "-aec", called_ae, "-to", str(CONNECT_TIMEOUT_S)]
    command += ["-ta", str(CONNECT_TIMEOUT_S), *options, host, str(port), *map(str, files)]
    return run_tool(command, timeout_s)


def echoscu(port: int, called_ae: str, calling_ae: str = "ECHOSCU", host: str = "127.0.0.1") -> str:
    """Send a C-ECHO (DCMTK echoscu) and return its output, or raise DicomToolError if it fails."""
    tool = require_tool("echoscu", "dcmtk")
    command = [tool, "-aet", calling_ae, "-aec", called_ae, "-to", str(CONNECT_TIMEOUT_S)]
    command += ["-ta", str(CONNECT_TIMEOUT_S), host, str(port)]
    return run_tool(command, timeout_s=60)


def findscu_series(
    port: int, called_ae: str, calling_ae: str, study_uid: str, host: str = "127.0.0.1"
) -> list[dict[str, Any]]:
    """List the series of a study with a C-FIND at SERIES level (Study Root, DCMTK findscu).

    Returns
    -------
    list of dict
        One dict per match, sorted by SeriesInstanceUID, with ``SeriesInstanceUID`` and
        ``Modality`` (str) and ``NumberOfSeriesRelatedInstances`` (int, or None when the
        SCP does not return it).

    Raises
    ------
    DicomToolError
        If the association or the C-FIND fails.
    """
    tool = require_tool("findscu", "dcmtk")
    with tempfile.TemporaryDirectory(prefix="findscu-") as folder:
        command = [tool, "-S", "-aet", calling_ae, "-aec", called_ae, "-to", str(CONNECT_TIMEOUT_S)]
        command += ["-ta", str(CONNECT_TIMEOUT_S), "-k", "QueryRetrieveLevel=SERIES"]
        command += ["-k", f"StudyInstanceUID={study_uid}", "-k", "SeriesInstanceUID", "-k", "Modality"]
        command += ["-k", "NumberOfSeriesRelatedInstances"]
        # -X writes each C-FIND response identifier to rsp0001.dcm, rsp0002.dcm... in -od.
        command += ["-X", "-od", folder, host, str(port)]
        run_tool(command, timeout_s=60)
        responses = [pydicom.dcmread(path) for path in sorted(Path(folder).glob("rsp*.dcm"))]
    series = []
    for response in responses:
        count = response.get("NumberOfSeriesRelatedInstances")
        series.append(
            {
                "SeriesInstanceUID": str(response.SeriesInstanceUID),
                "Modality": str(response.get("Modality", "")),
                "NumberOfSeriesRelatedInstances": int(count) if count not in (None, "") else None,
            }
        )
    return sorted(series, key=lambda item: item["SeriesInstanceUID"])


def dciodvfy_errors(path: Path) -> list[str]:
    """Return the lines of dciodvfy's output (dicom3tools) that report an error, not the warnings."""
    tool = require_tool("dciodvfy", "dicom3tools")
    # dciodvfy (dicom3tools 1.00~20220618) exits with status 1 even when it reports nothing, so only
    # its output counts.
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


# --- storescp ----------------------------------------------------------------------------------


class StoreSCP:
    """A DCMTK storescp on a free loopback port that writes each received instance to ``received_dir``.

    storescp runs in single-process mode: it handles one association at a time, and others
    wait for it. It writes a file before it sends the C-STORE response, so a file is complete
    once the sender has its response. Files are named by storescp, ``<modality prefix>.<SOP
    Instance UID>`` (``RS.1.2...`` for RTSTRUCT, ``SG.1.2...`` for SEG).
    """

    #: storescp options that choose the accepted SOP classes and transfer syntaxes, set by subclasses.
    negotiation_options: tuple[str, ...] = ()

    def __init__(
        self,
        work_dir: Path,
        ae_title: str = "STORESCP",
        lifetime_s: float = DEFAULT_LIFETIME_S,
        port: int | None = None,
        behaviour: Sequence[str] = (),
    ) -> None:
        """``behaviour``: more storescp options, such as ``--refuse`` or ``--sleep-during 5``."""
        self.work_dir = work_dir
        self.ae_title = ae_title
        self.port = port if port is not None else free_port()
        self.behaviour = tuple(behaviour)
        self.received_dir = work_dir / "received"
        self.lifetime_s = lifetime_s
        self.process: ServiceProcess | None = None

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def start(self, timeout_s: float = 10) -> Self:
        """Start storescp and wait until it listens."""
        tool = require_tool("storescp", "dcmtk")
        self.received_dir.mkdir(parents=True, exist_ok=True)
        # -v +v logs each association with its presentation contexts; -dhl skips reverse DNS.
        command = [tool, "-v", "+v", "-dhl", "-aet", self.ae_title, *self.negotiation_options, *self.behaviour]
        command += ["-od", str(self.received_dir), str(self.port)]
        self.process = _start_server(self.name, command, self.work_dir, self.lifetime_s)
        _wait_until(self.process, lambda: bool(listening_addresses(self.port)), timeout_s, f"storescp on {self.port}")
        return self

    def stop(self) -> None:
        """Stop storescp (SIGTERM, then SIGKILL after 15 s)."""
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        """Return storescp's output so far (associations and presentation contexts)."""
        return self.process.log() if self.process is not None else ""

    def received_files(self) -> list[Path]:
        """Return the received files, sorted by name."""
        return sorted(path for path in self.received_dir.iterdir() if path.is_file())

    def received_datasets(self) -> list[pydicom.Dataset]:
        """Read every received file with pydicom."""
        return [pydicom.dcmread(path) for path in self.received_files()]

    def wait_for_files(self, count: int, timeout_s: float) -> list[Path]:
        """Wait until at least ``count`` files have arrived and return them, or raise AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            files = self.received_files()
            if len(files) >= count:
                return files
            time.sleep(0.1)
        raise AssertionError(
            f"{self.name} received {len(self.received_files())} files in {timeout_s} s, expected {count}:\n"
            f"{self.log()[-4000:]}"
        )


class RestrictedStoreSCP(StoreSCP):
    """storescp that accepts only Verification and RT Structure Set Storage, so it rejects Segmentation Storage.

    The association negotiation profile ``RTStructOnly`` in deploy/dcmtk-reject-seg.cfg lists
    the accepted presentation contexts (Explicit and Implicit VR Little Endian). A proposed
    Segmentation Storage context is rejected with "abstract syntax not supported", so a
    sender has no presentation context for a SEG. An association that proposes only SEG is
    accepted with no presentation context, and the sender is expected to abort it.
    """

    negotiation_options = ("-xf", str(REJECT_SEG_CONFIG), REJECT_SEG_PROFILE)


class PlainStoreSCP(StoreSCP):
    """storescp that accepts any storage SOP class, also unknown ones, in any transfer syntax it supports."""

    # +xa: every transfer syntax that DCMTK supports. -pm: SOP classes outside DCMTK's storage list too.
    negotiation_options = ("+xa", "-pm")
