"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb`` packages, unpacked, not installed) for tests and
benchmarks.

``.ci/run`` downloads the packages and the libraries they need that are not installed
(``apt-get install --download-only``) and unpacks them with ``dpkg -x`` into ``$XDG_CACHE_HOME/nnunet_liver/orthanc``
(``~/.cache/...``; or the folder named by ``NNUNET_LIVER_ORTHANC``). :func:`find_orthanc` finds that tree and
:class:`Orthanc` runs the server from it with ``LD_LIBRARY_PATH`` (and ``DCMDICTPATH``) pointing into it. Orthanc
listens on every interface: run it inside a private network namespace (:mod:`nnunet_liver.testing.netns`).
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import requests

__all__ = ["ENV_ORTHANC", "OrthancInstall", "find_orthanc", "orthanc_problem", "Orthanc"]

ENV_ORTHANC = "NNUNET_LIVER_ORTHANC"


def default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nnunet_liver", "orthanc")


@dataclass
class OrthancInstall:
    """An unpacked Orthanc: the server binary, the DICOMweb plugin and the environment that runs them."""
    root: str
    binary: str
    dicomweb_plugin: str
    env: Dict[str, str]


def find_orthanc(root: Optional[str] = None) -> Optional[OrthancInstall]:
    """The Orthanc unpacked under ``root`` (default: ``NNUNET_LIVER_ORTHANC``, else :func:`default_cache`), or
    ``None``."""
    root = root or os.environ.get(ENV_ORTHANC) or default_cache()
    binary = os.path.join(root, "usr", "sbin", "Orthanc")
    plugins = sorted(glob.glob(os.path.join(root, "usr", "lib", "orthanc", "libOrthancDicomWeb.so*")))
    if not (os.path.isfile(binary) and plugins):
        return None
    libs = [d for d in sorted(glob.glob(os.path.join(root, "usr", "lib", "*-linux-gnu"))) if os.path.isdir(d)]
    libs += [d for d in (os.path.join(root, "lib"), os.path.join(root, "usr", "lib")) if os.path.isdir(d)]
    # TCP_NODELAY=1: DCMTK (Orthanc's DICOM network layer) then sends each PDU at once instead of waiting for the
    # peer's delayed acknowledgement, about 40 ms per instance sent (DEPLOY.md recommends it for production too)
    env = {"LD_LIBRARY_PATH": os.pathsep.join(libs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p]),
           "TCP_NODELAY": "1"}
    dictionary = sorted(glob.glob(os.path.join(root, "usr", "share", "libdcmtk*", "dicom.dic"))
                        or glob.glob("/usr/share/libdcmtk*/dicom.dic"))
    if dictionary:
        env["DCMDICTPATH"] = dictionary[-1]
    return OrthancInstall(root, binary, plugins[-1], env)


def orthanc_problem(install: Optional[OrthancInstall] = None) -> Optional[str]:
    """Why Orthanc cannot run here (``None`` when it can): not unpacked, or the binary does not start."""
    install = install or find_orthanc()
    if install is None:
        return (f"no Orthanc unpacked in {os.environ.get(ENV_ORTHANC) or default_cache()} (.ci/run fetches Debian's "
                f"orthanc and orthanc-dicomweb there)")
    proc = subprocess.run([install.binary, "--version"], env={**os.environ, **install.env}, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return f"{install.binary} does not start: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


class Orthanc:
    """One Orthanc server with its own storage in ``folder``.

    Parameters
    ----------
    modalities : {name: (AE title, host, port)}, Orthanc's ``DicomModalities``.
    users : {user: password}; when given, HTTP basic authentication is required.
    lua_scripts : paths of Lua scripts Orthanc runs (``LuaScripts``), e.g. an auto-routing ``OnStableStudy``.
    stable_age : Orthanc's ``StableAge`` (s).
    """

    def __init__(self, install: OrthancInstall, folder: str, http_port: int = 8042, dicom_port: int = 4242,
                 ae_title: str = "ORTHANC", modalities: Optional[Dict[str, tuple]] = None,
                 users: Optional[Dict[str, str]] = None, lua_scripts: Iterable[str] = (), stable_age: int = 1):
        self.install, self.folder = install, os.path.abspath(folder)
        self.http_port, self.dicom_port, self.ae_title = http_port, dicom_port, ae_title
        self.modalities, self.users = dict(modalities or {}), users
        self.lua_scripts, self.stable_age = [os.path.abspath(p) for p in lua_scripts], stable_age
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(self.folder, "orthanc.log")
        self.session = requests.Session()
        if users:
            self.session.auth = next(iter(users.items()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        storage = os.path.join(self.folder, "db")
        return {"Name": "nnunet-liver-test", "StorageDirectory": storage, "IndexDirectory": storage,
                "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": self.ae_title,
                "RemoteAccessAllowed": True, "AuthenticationEnabled": bool(self.users),
                "RegisteredUsers": dict(self.users or {}), "Plugins": [self.install.dicomweb_plugin],
                "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.http_port}"},
                "StableAge": self.stable_age, "LuaScripts": self.lua_scripts, "HttpTimeout": 60,
                "DicomScuTimeout": 30, "ConcurrentJobs": 4}

    def start(self, timeout: float = 60.0) -> "Orthanc":
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, "orthanc.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.config(), f, indent=2)
        log = open(self.log_path, "a", encoding="utf-8")
        self.proc = subprocess.Popen([self.install.binary, path], env={**os.environ, **self.install.env},
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.proc.returncode}; log: {self._log_tail()}")
            try:
                if self.session.get(f"{self.url}/system", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s; log: {self._log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- REST helpers -------------------------------------------------------------------------------------------
    def upload(self, paths: Iterable[str]) -> int:
        """Store DICOM files through the REST API; returns how many."""
        n = 0
        for p in paths:
            with open(p, "rb") as f:
                r = self.session.post(f"{self.url}/instances", data=f.read(), timeout=60)
            r.raise_for_status()
            n += 1
        return n

    def upload_folder(self, folder: str) -> int:
        files = sorted(os.path.join(r, n) for r, _, names in os.walk(folder) for n in names)
        return self.upload(files)

    def study_id(self, study_uid: str) -> Optional[str]:
        """Orthanc's id of a study, from its StudyInstanceUID."""
        r = self.session.post(f"{self.url}/tools/lookup", data=study_uid, timeout=30)
        r.raise_for_status()
        ids = [x["ID"] for x in r.json() if x.get("Type") == "Study"]
        return ids[0] if ids else None

    def send_to_modality(self, modality: str, resources: List[str], synchronous: bool = True) -> dict:
        """``POST /modalities/MODALITY/store`` (Orthanc's C-STORE SCU) of Orthanc ids; raises on failure."""
        r = self.session.post(f"{self.url}/modalities/{modality}/store",
                              json={"Resources": list(resources), "Synchronous": synchronous}, timeout=600)
        r.raise_for_status()
        return r.json()

    def send_study(self, modality: str, study_uid: str, synchronous: bool = True) -> dict:
        study = self.study_id(study_uid)
        if study is None:
            raise KeyError(f"Orthanc holds no study {study_uid}")
        return self.send_to_modality(modality, [study], synchronous)

    def series(self, study_uid: str, modality: Optional[str] = None) -> List[dict]:
        """QIDO-RS: the study's series (DICOM JSON), optionally of one modality."""
        filters = {"Modality": modality} if modality else {}
        r = self.session.get(f"{self.dicomweb_url}/studies/{study_uid}/series", params=filters, timeout=30)
        if r.status_code == 204 or not r.content:
            return []
        r.raise_for_status()
        return r.json()

    def instances(self, study_uid: str, modality: Optional[str] = None) -> List[dict]:
        """QIDO-RS: the study's instances, optionally of the series of one modality."""
        out = []
        for s in self.series(study_uid, modality):
            series_uid = s["0020000E"]["Value"][0]
            r = self.session.get(f"{self.dicomweb_url}/studies/{study_uid}/series/{series_uid}/instances",
                                 timeout=30)
            r.raise_for_status()
            out += r.json()
        return out

    def instance_file(self, sop_uid: str) -> bytes:
        r = self.session.post(f"{self.url}/tools/lookup", data=sop_uid, timeout=30)
        r.raise_for_status()
        (inst,) = [x["ID"] for x in r.json() if x.get("Type") == "Instance"]
        r = self.session.get(f"{self.url}/instances/{inst}/file", timeout=60)
        r.raise_for_status()
        return r.content
