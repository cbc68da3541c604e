"""Index DICOM studies under a folder: headers only, grouped by StudyInstanceUID and SeriesInstanceUID.

Every file under the folder (any depth) that is not of an obvious other format (NIfTI, PNG, JSON ...:
:data:`OTHER_SUFFIXES`) is opened with ``pydicom.dcmread(stop_before_pixels=True)``: with the 128-byte preamble and
``DICM``, or without them (older exports, research archives) when its first bytes are a DICOM tag of group 0002 or 0008
and the header parses (``force=True``). A file counts as DICOM when it names its SOP instance, study and series;
every other file is listed as unreadable with the reason (:func:`read_header`), never dropped silently.

One study is one case; a study's id is the name of the deepest folder holding all its files (the input folder's own
name when the study lies directly in it), made a plain file name; for a study of a single series in a folder of its
own, the folder above it when that holds no other study (``study/series31/`` -> ``study``). Studies sharing a folder
get ``_2``, ``_3`` ... in UID order.

One exam exported as several studies (some archives give every acquisition its own StudyInstanceUID) is one case:
studies of the same patient (PatientID and PatientName), the same StudyDate and a shared FrameOfReferenceUID (the
patient lay on the table once) are grouped (:func:`group_exams`); the case keeps every StudyInstanceUID
(``DicomStudy.study_uids``). Studies that share no frame of reference stay separate cases.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from pydicom.uid import CTImageStorage

__all__ = ["SeriesHeaders", "DicomStudy", "index_studies", "has_dicom", "read_header", "group_exams",
           "CT_IMAGE_STORAGE", "OTHER_SUFFIXES", "is_uid"]

CT_IMAGE_STORAGE = CTImageStorage
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


_UID_SYNTAX = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(value) -> bool:
    """Whether ``value`` is a syntactically valid DICOM UID (digits and dots, no leading zeros, at most 64 chars).

    Such a UID is safe as a file name: the node's spool names instances by it, so no instance can write outside its
    study's folder."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_SYNTAX.fullmatch(value) is not None


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
    root: str = ""  # the folder searched (``-i``): CASE.json names paths relative to it
    study_uids: List[str] = field(default_factory=list)  # every StudyInstanceUID of the case (one exam, see above)
    unreadable_reasons: Dict[str, str] = field(default_factory=dict)  # unreadable file -> why

    def relative(self, path: str) -> str:
        """``path`` relative to the searched folder (folder names above it often carry patient names)."""
        if not self.root:
            return path
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        return path if rel.startswith("..") else rel


#: files never opened while looking for DICOM (images, tables, documents and archives of other formats)
OTHER_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp",
                  ".gif", ".json", ".csv", ".tsv", ".txt", ".md", ".html", ".pdf", ".pth", ".npz", ".npy", ".pkl",
                  ".xml", ".yaml", ".yml", ".zip", ".gz", ".tar", ".7z", ".py")
#: the first tag of a DICOM file without preamble: group 0002 (file meta) or 0008 (the data set), little endian
_BARE_GROUPS = (b"\x02\x00", b"\x08\x00")
_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _has_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_header(path: str):
    """``(dataset, None)`` for a DICOM file (header only), else ``(None, reason)``.

    With the preamble the header must parse; without it the file must start with a tag of group 0002 or 0008 and
    parse with ``force=True``; either way it must carry SOP Instance, Study and Series Instance UIDs.
    """
    import pydicom

    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        return None, f"cannot be opened ({e.strerror or e})"
    preamble = _has_preamble(head)
    if not preamble and head[:2] not in _BARE_GROUPS:
        return None, "not a DICOM file"
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not preamble)
    except Exception as e:  # noqa: BLE001 - any parse failure: the file is unreadable, the others go on
        if not preamble:
            return None, "not a DICOM file (no preamble, and the header does not parse)"
        return None, f"DICOM header cannot be parsed ({type(e).__name__}: {_first_line(e)})"
    missing = [k for k in _UIDS if not str(ds.get(k, "") or "").strip()]
    if missing:
        return None, (f"{'DICOM file' if preamble else 'not a DICOM file (no preamble)'} without "
                      f"{', '.join(missing)}")
    return ds, None


def _first_line(e: Exception, limit: int = 200) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _walk(folder: str, exclude: Optional[str] = None):
    """(folder, file name) under ``folder``, sorted, skipping hidden entries, ``exclude`` and other formats."""
    exclude = os.path.abspath(exclude) if exclude else None
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.abspath(os.path.join(root, d)) != exclude)
        for name in sorted(files):
            if not name.startswith(".") and not name.lower().endswith(OTHER_SUFFIXES) and name.upper() != "DICOMDIR":
                yield root, name


def has_dicom(folder: str, max_files: int = 10000, exclude: Optional[str] = None) -> bool:
    """Whether any file under ``folder`` (any depth; not under ``exclude``) is DICOM (:func:`read_header`); gives
    up after ``max_files`` files."""
    seen = 0
    for root, name in _walk(folder, exclude):
        if read_header(os.path.join(root, name))[0] is not None:
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
    """The DICOM studies under ``root`` (sorted by case id; one exam exported as several studies is one, see
    :func:`group_exams`) and the files that could not be read as DICOM; ``exclude``: a folder not to look into (the
    output folder, when it lies inside ``root``).

    An unreadable file (not DICOM, or a DICOM header that cannot be parsed) is attached to the studies whose folder
    holds it (their ``unreadable`` and ``unreadable_reasons``), so that CASE.json lists it and a missing slice it
    causes is explained.
    """
    by_study: Dict[str, dict] = {}
    unreadable: Dict[str, str] = {}
    for folder, name in _walk(root, exclude):
        path = os.path.join(folder, name)
        ds, reason = read_header(path)
        if ds is None:
            unreadable[path] = reason
            continue
        study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        entry = by_study.setdefault(study_uid, {"series": {}, "files": []})
        entry["files"].append(path)
        series = entry["series"].setdefault(series_uid, SeriesHeaders(series_uid))
        series.files.append(path)
        series.headers.append(ds)
    exams = group_exams({uid: e["series"] for uid, e in by_study.items()})
    merged = {}
    for uids in exams:
        merged[uids[0]] = {"uids": uids, "files": [p for u in uids for p in by_study[u]["files"]],
                           "series": {k: v for u in uids for k, v in by_study[u]["series"].items()}}
    studies = []
    folders = {uid: os.path.commonpath([os.path.dirname(p) for p in e["files"]]) for uid, e in merged.items()}
    for study_uid, entry in merged.items():
        folder = folders[study_uid]
        parent = os.path.dirname(folder)
        if (len(entry["series"]) == 1 and os.path.abspath(folder) != os.path.abspath(root)
                and os.path.commonpath([os.path.abspath(root), os.path.abspath(parent)]) == os.path.abspath(root)
                and os.path.abspath(parent) != os.path.abspath(root)
                and not any(os.path.commonpath([parent, f]) == parent for u, f in folders.items() if u != study_uid)):
            folder = parent  # a single series in its own folder: name the study by the folder above
        studies.append(DicomStudy(_case_id(root, folder), study_uid, folder, entry["series"], root=root,
                                  study_uids=list(entry["uids"])))
    for s in studies:
        s.unreadable_reasons = {p: r for p, r in unreadable.items() if os.path.commonpath([s.folder, p]) == s.folder}
        s.unreadable = list(s.unreadable_reasons)
    studies.sort(key=lambda s: (s.case_id, s.study_uid))
    seen: Dict[str, int] = {}
    for s in studies:
        seen[s.case_id] = seen.get(s.case_id, 0) + 1
        if seen[s.case_id] > 1:
            s.case_id = f"{s.case_id}_{seen[s.case_id]}"
    _check_patients(studies)
    return studies, list(unreadable)


def group_exams(studies: Dict[str, Dict[str, SeriesHeaders]]) -> List[List[str]]:
    """StudyInstanceUIDs grouped into exams: studies of one patient (PatientID and PatientName), one StudyDate and
    a shared FrameOfReferenceUID are one exam. ``studies``: study UID -> its series. Each group is sorted, the groups
    by their first UID."""
    keys, frames = {}, {}
    for uid, series in studies.items():
        first = next(iter(series.values())).first
        keys[uid] = (_patient_key(first), str(getattr(first, "StudyDate", "") or ""))
        frames[uid] = {str(h.FrameOfReferenceUID) for s in series.values() for h in s.headers
                       if str(getattr(h, "FrameOfReferenceUID", "") or "")}
    parent = {uid: uid for uid in studies}

    def find(u):
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    uids = sorted(studies)
    for i, a in enumerate(uids):
        for b in uids[i + 1:]:
            if keys[a] == keys[b] and frames[a] & frames[b]:
                parent[find(b)] = find(a)
    groups: Dict[str, List[str]] = {}
    for uid in uids:
        groups.setdefault(find(uid), []).append(uid)
    return sorted(groups.values())


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
                s.error = s.error or (f"{folder}: holds studies of {len(keys)} different patients (cases "
                                      f"{', '.join(sorted(t.case_id for t in group))}); give each patient's study "
                                      f"its own folder")
