"""The node's folders: received instances per study, results per study and run, and the free-space check.

``SPOOL/`` (the ``spool`` setting) holds

- ``queue.sqlite3``: the study queue (:mod:`nnunet_liver.node.queue`);
- ``incoming/CASE/SOPInstanceUID.dcm``: every instance of a study, flat in one folder per study (``CASE`` is the
  node's case id, never anything of the patient's). An instance is written to a temporary name, flushed to disk
  (``fsync``), then hard-linked to its final name, which fails when the instance is already there: a re-sent
  instance is never stored twice, and two associations sending the same instance at once store it once. The folder
  is synced too before the C-STORE is answered, so an instance answered "success" survives a power cut;
- ``results/CASE.GENERATION/``: a run's outputs (``CASE.json``, ``CASE_seg.dcm``, ``CASE_sr.dcm`` ...), written to a
  temporary folder and renamed; the generation counts the times the study was re-opened by late instances, so a
  late run never mixes with an earlier one.
"""
from __future__ import annotations

import os
import secrets
import shutil
from typing import List, Optional, Tuple

from nnunet_liver.dicom.index import is_uid

__all__ = ["Spool"]



def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The node's folders under ``root`` (see the module docstring)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.incoming = os.path.join(self.root, "incoming")
        self.results = os.path.join(self.root, "results")
        for d in (self.root, self.incoming, self.results):
            os.makedirs(d, exist_ok=True)

    @property
    def database(self) -> str:
        return os.path.join(self.root, "queue.sqlite3")

    def study_dir(self, case_id: str) -> str:
        return os.path.join(self.incoming, case_id)

    def result_dir(self, case_id: str, generation: int) -> str:
        return os.path.join(self.results, f"{case_id}.{generation}")

    def free_mb(self) -> float:
        """Free space (MB, for unprivileged writers) in the spool's file system."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize / 2 ** 20

    def has(self, case_id: str, sop_uid: str) -> bool:
        """Whether study ``case_id`` already holds the instance ``sop_uid``."""
        return is_uid(sop_uid) and os.path.exists(os.path.join(self.study_dir(case_id), f"{sop_uid}.dcm"))

    def store(self, case_id: str, sop_uid: str, data: bytes) -> bool:
        """Write one instance (``data``: a DICOM file with its meta header) of study ``case_id``; ``True`` when it
        was new, ``False`` when the study already holds an instance of that SOPInstanceUID (left as it is).

        The file and its folder are on disk when this returns. Raises ``OSError`` (e.g. a full disk) with nothing
        left behind, ``ValueError`` for a ``sop_uid`` that is not a UID.
        """
        if not is_uid(sop_uid):
            raise ValueError(f"not a DICOM UID: {sop_uid!r}")
        folder = self.study_dir(case_id)
        os.makedirs(folder, exist_ok=True)
        final = os.path.join(folder, f"{sop_uid}.dcm")
        if os.path.exists(final):
            return False
        tmp = os.path.join(folder, f".tmp_{secrets.token_hex(6)}")
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)  # atomic, and never replaces an instance already there
                new = True
            except FileExistsError:
                new = False
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        _fsync_dir(folder)
        return new

    def count(self, case_id: str) -> int:
        folder = self.study_dir(case_id)
        if not os.path.isdir(folder):
            return 0
        return sum(1 for n in os.listdir(folder) if n.endswith(".dcm") and not n.startswith("."))

    def result_files(self, case_id: str, generation: int) -> List[str]:
        """The DICOM objects of a finished run (SEG when there were lesions, and SR), in sending order."""
        folder = self.result_dir(case_id, generation)
        return [os.path.join(folder, n) for n in (f"{case_id}_seg.dcm", f"{case_id}_sr.dcm")
                if os.path.isfile(os.path.join(folder, n))]

    def new_run_dir(self, case_id: str, generation: int) -> str:
        """A fresh temporary folder for a run (renamed by :meth:`keep_run`)."""
        path = os.path.join(self.results, f".tmp_{case_id}.{generation}_{secrets.token_hex(4)}")
        os.makedirs(path)
        return path

    def keep_run(self, tmp: str, case_id: str, generation: int) -> str:
        """Rename a finished run's folder to its final name (replacing a folder of the same run) and remove the
        results of the study's earlier generations."""
        final = self.result_dir(case_id, generation)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.results)
        for name in os.listdir(self.results):
            stem, _, gen = name.rpartition(".")
            if stem == case_id and gen.isdigit() and int(gen) < generation:
                shutil.rmtree(os.path.join(self.results, name), ignore_errors=True)
        return final

    def remove_study(self, case_id: str) -> None:
        """Delete a study's instances and results (retention)."""
        shutil.rmtree(self.study_dir(case_id), ignore_errors=True)
        for name in os.listdir(self.results):
            if name.rpartition(".")[0] == case_id:
                shutil.rmtree(os.path.join(self.results, name), ignore_errors=True)

    def clean_temporary(self) -> Tuple[int, int]:
        """Remove what a killed node left half-written: temporary instance files and run folders. Returns their
        counts (instances, runs)."""
        files = runs = 0
        for case in os.listdir(self.incoming):
            folder = os.path.join(self.incoming, case)
            if os.path.isdir(folder):
                for name in os.listdir(folder):
                    if name.startswith(".tmp_"):
                        os.remove(os.path.join(folder, name))
                        files += 1
        for name in os.listdir(self.results):
            if name.startswith(".tmp_"):
                shutil.rmtree(os.path.join(self.results, name), ignore_errors=True)
                runs += 1
        return files, runs
