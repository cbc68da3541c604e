"""Index DICOM studies under a folder: headers only, grouped by StudyInstanceUID and SeriesInstanceUID.

Every file under the folder (any depth) is opened with ``pydicom.dcmread(stop_before_pixels=True)``; files that are
without the ``DICM`` preamble are skipped (a ``.dcm`` file without it, or a DICOM file whose header cannot be
parsed, is listed as unreadable). One study is one
case. Its id is the name of the deepest folder holding all its files (the input folder's own name when the study
lies directly in it), made a plain file name; for a study of a single series in a folder of its own, the folder
above it when that holds no other study (``study/series31/`` -> ``study``). Studies sharing a folder get ``_2``,
``_3`` ... in UID order.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = ["SeriesHeaders", "DicomStudy", "index_studies", "has_dicom", "CT_IMAGE_STORAGE"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class SeriesHeaders:
    """One series: its UID and the header of every file (pydicom Datasets without pixel data), unsorted."""
    uid: str
    files: List[str] = field(default_factory=list)
    headers: list = field(default_factory=list)

    @property
    def first(self):
        return self.headers[0]

    def get(self, keyword: str, default=None):
        """A header attribute of the series' first file (``default`` when absent or empty)."""
        value = getattr(self.first, keyword, None)
        return default if value in (None, "") else value

    @property
    def number(self) -> Optional[int]:
        n = self.get("SeriesNumber")
        return None if n is None else int(n)

    def describe(self) -> str:
        return f"series {self.number} ({self.get('SeriesDescription', 'no description')!s})"


@dataclass
class DicomStudy:
    """One study found under the input folder: a case for the detector."""
    case_id: str
    study_uid: str
    folder: str
    series: Dict[str, SeriesHeaders] = field(default_factory=dict)
    unreadable: List[str] = field(default_factory=list)  # files in the study's folder that are not DICOM
    error: Optional[str] = None  # a problem found while indexing (two patients ...), reported when loaded
    phase_map: Dict[str, str] = field(default_factory=dict)  # series UID or number -> phase, from --phase-map


def _is_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


#: files never opened while looking for DICOM (images, tables and documents of other formats)
_OTHER_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png", ".jpg", ".json", ".csv", ".txt", ".md",
                   ".html", ".pth", ".npz", ".npy", ".pkl", ".xml")


def _walk(folder: str, exclude: Optional[str] = None):
    """(folder, file name) under ``folder``, sorted, skipping hidden entries, ``exclude`` and other formats."""
    exclude = os.path.abspath(exclude) if exclude else None
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.abspath(os.path.join(root, d)) != exclude)
        for name in sorted(files):
            if not name.startswith(".") and not name.lower().endswith(_OTHER_SUFFIXES) and name.upper() != "DICOMDIR":
                yield root, name


def has_dicom(folder: str, max_files: int = 10000, exclude: Optional[str] = None) -> bool:
    """Whether any file under ``folder`` (any depth; not under ``exclude``) starts with the DICOM preamble (``DICM``
    at byte 128); gives up after ``max_files`` files."""
    seen = 0
    for root, name in _walk(folder, exclude):
        if _is_dicom(os.path.join(root, name)):
            return True
        seen += 1
        if seen >= max_files:
            return False
    return False


def _case_id(root: str, folder: str) -> str:
    name = os.path.basename(os.path.normpath(folder)) or "study"
    name = _UNSAFE.sub("_", name).strip("._-") or "study"
    return name


def index_studies(root: str, exclude: Optional[str] = None) -> Tuple[List[DicomStudy], List[str]]:
    """The DICOM studies under ``root`` (sorted by case id) and the files that could not be read as DICOM;
    ``exclude``: a folder not to look into (the output folder, when it lies inside ``root``).

    A DICOM file whose header cannot be parsed counts as unreadable; it is attached to the studies whose folder
    holds it (their ``unreadable``), so that a missing slice it causes is explained.
    """
    import pydicom

    by_study: Dict[str, dict] = {}
    unreadable: List[str] = []
    for folder, name in _walk(root, exclude):
        path = os.path.join(folder, name)
        if not _is_dicom(path):
            if name.lower().endswith(".dcm"):  # named as DICOM but without its preamble: corrupt
                unreadable.append(path)
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception:  # noqa: BLE001 - any parse failure: the file is unreadable, the others go on
            unreadable.append(path)
            continue
        entry = by_study.setdefault(study_uid, {"series": {}, "files": []})
        entry["files"].append(path)
        series = entry["series"].setdefault(series_uid, SeriesHeaders(series_uid))
        series.files.append(path)
        series.headers.append(ds)
    studies = []
    folders = {uid: os.path.commonpath([os.path.dirname(p) for p in e["files"]]) for uid, e in by_study.items()}
    for study_uid, entry in by_study.items():
        folder = folders[study_uid]
        parent = os.path.dirname(folder)
        if (len(entry["series"]) == 1 and os.path.abspath(folder) != os.path.abspath(root)
                and os.path.commonpath([os.path.abspath(root), os.path.abspath(parent)]) == os.path.abspath(root)
                and os.path.abspath(parent) != os.path.abspath(root)
                and not any(os.path.commonpath([parent, f]) == parent for u, f in folders.items() if u != study_uid)):
            folder = parent  # a single series in its own folder: name the study by the folder above
        studies.append(DicomStudy(_case_id(root, folder), study_uid, folder, entry["series"]))
    _check_patients(studies)
    for s in studies:
        s.unreadable = [p for p in unreadable if os.path.commonpath([s.folder, p]) == s.folder]
    studies.sort(key=lambda s: (s.case_id, s.study_uid))
    seen: Dict[str, int] = {}
    for s in studies:
        seen[s.case_id] = seen.get(s.case_id, 0) + 1
        if seen[s.case_id] > 1:
            s.case_id = f"{s.case_id}_{seen[s.case_id]}"
    return studies, unreadable


def _patient_key(ds) -> Tuple[str, str]:
    return str(getattr(ds, "PatientID", "") or ""), str(getattr(ds, "PatientName", "") or "")


def _check_patients(studies: List[DicomStudy]) -> None:
    """Mark a study whose files name two patients, and studies of different patients sharing one folder."""
    for s in studies:
        keys = {_patient_key(h) for ser in s.series.values() for h in ser.headers}
        if len(keys) > 1:
            s.error = (f"{s.folder}: study {s.study_uid} holds files of {len(keys)} different patients "
                       f"(PatientID/PatientName differ); split the folder by patient")
    by_folder: Dict[str, List[DicomStudy]] = {}
    for s in studies:
        by_folder.setdefault(s.folder, []).append(s)
    for folder, group in by_folder.items():
        keys = {_patient_key(next(iter(s.series.values())).first) for s in group}
        if len(keys) > 1:
            for s in group:
                s.error = s.error or (f"{folder}: holds studies of {len(keys)} different patients; "
                                      f"give each patient's study its own folder")
