"""The DICOM node under test: a rule model with few, known lesions, phantom studies for it, a settings file and the
node as a separate process (tests and benchmarks).

:func:`write_node_model` is an :class:`~nnunet_liver.testing.rule_model.IntensityRuleNetwork` model whose only lesion
class is HCC at 1500 +- 50 HU: it finds exactly the blocks :func:`write_node_study` paints into a phantom's liver
(two by default: a DICOM Segmentation with one segment trips highdicom's SR reference reader), a few bone specks on
real CT, and nothing on a phantom without blocks. Detection then takes seconds on a CPU.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from typing import Dict, Optional, Sequence

import numpy as np

from nnunet_liver.utils.io import console_script

__all__ = ["LESION_HU", "write_node_model", "write_node_study", "node_settings", "NodeProcess", "echo", "store_scu"]

LESION_HU = 1500.0


def write_node_model(folder: str, channel_names: Sequence[str] = ("NC", "A", "V", "D")) -> str:
    """A rule model: background (-1000 HU, wide), HCC at :data:`LESION_HU` (+- 50), liver at 80 HU, every other
    class far away (5000 HU, wide: the logits stay small enough for nnU-Net's half-precision sums)."""
    from nnunet_liver.labels import dataset_json_labels
    from nnunet_liver.testing.rule_model import write_rule_model

    centers = [-1000.0, LESION_HU] + [5000.0] * 5 + [80.0] + [5000.0] * 6
    widths = [400.0, 50.0] + [1000.0] * 5 + [60.0] + [1000.0] * 6
    return write_rule_model(folder, dataset_json_labels(), centers, widths, folds=(0,), spacing=(5.0, 4.0, 4.0),
                            channel_names=tuple(channel_names))


def write_node_study(root: str, seed: int = 0, study_uid: Optional[str] = None, lesions: int = 2,
                     phases: Sequence[str] = ("NC", "A", "V", "D"), shape=(24, 96, 96), extras: bool = True) -> dict:
    """A phantom study (:func:`nnunet_liver.testing.dicom_study.write_study`: compressed series, scrambled names,
    a scout and a dose report) with ``lesions`` blocks of :data:`LESION_HU` painted into its liver in every phase.
    Returns ``{"study_uid", "series": {phase: series UID}, "case"}``."""
    from nnunet_liver.testing.dicom_writer import new_uid
    from nnunet_liver.testing.dicom_study import phantom, write_study

    case = phantom(seed, shape=shape)
    z, y, x = np.argwhere(case.label == 7).mean(0).astype(int)
    for k in range(lesions):
        x0 = x - 8 + 10 * k
        for p in case.images:
            case.images[p][z - 2:z + 2, y - 4:y + 4, x0:x0 + 6] = LESION_HU
    case.images = {p: v for p, v in case.images.items() if p in phases}
    study_uid = study_uid or new_uid()
    series = write_study(root, case, study_uid=study_uid, extras=extras)
    return {"study_uid": study_uid, "series": series, "case": case}


def node_settings(folder: str, model: str, port: int, destination: dict, peers: Sequence[dict],
                  **overrides) -> str:
    """Write ``folder/node.json`` for a test node (CPU, no test-time mirroring, 1 s stable age, fast retries);
    returns its path."""
    os.makedirs(folder, exist_ok=True)
    settings = {"ae_title": "NNLIVER", "bind": "127.0.0.1", "port": port, "allowed_peers": list(peers),
                "destination": destination, "spool": os.path.join(folder, "spool"), "model": model,
                "patch_model": "none", "device": "cpu", "disable_tta": True, "stable_age": 1.0,
                "retry_initial_s": 0.5, "retry_max_s": 2.0, "min_free_mb": 1.0, "network_timeout_s": 30.0}
    settings.update(overrides)
    path = os.path.join(folder, "node.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)
    return path


def echo(port: int, ae_title: str = "NNLIVER", calling: str = "ORTHANC", host: str = "127.0.0.1",
         bind: Optional[str] = None) -> Optional[int]:
    """C-ECHO the node; its status (0 = up), or ``None`` when no association was made (down or rejected)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # "connection refused" while a node starts
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    kwargs = {"bind_address": (bind, 0)} if bind else {}
    assoc = ae.associate(host, port, ae_title=ae_title, **kwargs)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def store_scu(port: int, paths, calling: str = "ORTHANC", ae_title: str = "NNLIVER", host: str = "127.0.0.1"):
    """C-STORE ``paths`` to a node on one association (as a modality would); returns the status of each."""
    import pydicom
    from pynetdicom import AE, evt

    from nnunet_liver.node.sender import no_delay

    ae = AE(ae_title=calling)
    for sop, syntax in dict.fromkeys((str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID))
                                     for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)):
        ae.add_requested_context(sop, syntax)
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
    if not assoc.is_established:
        raise RuntimeError(f"{ae_title}@{host}:{port} did not accept the association")
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()


class NodeProcess:
    """``nnunet-liver-node run -c SETTINGS`` as a subprocess, its output in ``log``."""

    def __init__(self, settings: str, log: str):
        self.settings, self.log = settings, log
        with open(settings, encoding="utf-8") as f:
            self.port = int(json.load(f)["port"])
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 600.0, ready: str = "echo") -> "NodeProcess":
        """Start it and wait until it answers C-ECHO (``ready="echo"``) or logs that it is ready (``"log"``: for a
        node that refuses associations); ``timeout`` is a liveness bound, not a measurement."""
        offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        with open(self.log, "a", encoding="utf-8") as f:
            self.proc = subprocess.Popen([console_script("nnunet-liver-node"), "run", "-c", self.settings],
                                         stdout=f, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                   "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with code {self.proc.returncode}: {self.tail()}")
            if (echo(self.port) == 0) if ready == "echo" else (" ready: " in self.tail(10 ** 7)[offset:]):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the node did not answer C-ECHO within {timeout:.0f} s: {self.tail()}")

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def status(self) -> Dict[str, dict]:
        """``nnunet-liver-node status --json``: {case id: record}."""
        out = subprocess.run([console_script("nnunet-liver-node"), "status", "-c", self.settings, "--json"],
                             capture_output=True, text=True, check=True).stdout
        return {r["case_id"]: r for r in json.loads(out)["studies"]}

    def records(self) -> Dict[str, dict]:
        """The queue read directly (faster than :meth:`status`): {case id: record}; empty before the first start."""
        from nnunet_liver.node.queue import StudyQueue

        if not os.path.exists(self._db()):
            return {}
        queue = StudyQueue(self._db())
        try:
            return {r.case_id: r.to_dict() for r in queue.records()}
        finally:
            queue.close()

    def wait_for(self, predicate, what: str, timeout: float = 600.0, poll: float = 0.05) -> Dict[str, dict]:
        """Poll :meth:`records` until ``predicate(records)``; ``timeout`` bounds a hang, it measures nothing."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with code {self.proc.returncode} waiting for {what}: "
                                   f"{self.tail()}")
            st = self.records()
            if predicate(st):
                return st
            time.sleep(poll)
        raise RuntimeError(f"no {what} within {timeout:.0f} s; queue {self.records()}; log: {self.tail()}")

    def _db(self) -> str:
        with open(self.settings, encoding="utf-8") as f:
            spool = json.load(f)["spool"]
        return os.path.join(os.path.dirname(os.path.abspath(self.settings)), spool, "queue.sqlite3")

