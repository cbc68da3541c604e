"""TCIA's HCC-TACE-Seg collection, as TCIA downloads it -> a four-phase nnU-Net dataset with labels on the annotated
phase.

The collection (Moawad et al., *Multimodality annotated HCC cases with and without advanced imaging segmentation*,
The Cancer Imaging Archive 2021, doi:10.7937/TCIA.5FNA-0924, CC BY 4.0) holds multi-phase liver CT of 105 patients
with hepatocellular carcinoma treated by TACE; for many studies a DICOM SEG of the liver, the tumour ("Mass"), the
portal vein and the abdominal aorta. The NBIA Data Retriever writes one folder per patient
(``HCC-TACE-Seg/HCC_001/<study>/<series>/*.dcm``) and a ``metadata.csv`` beside them, one row per series.

What the preset does on top of ``nnunet-liver-convert dicom`` (whose rules apply to every study):

- reads ``metadata.csv`` (found at most two folders deep; TCIA's file writes the file size with a comma in it, so the
  columns are read by position from both ends) and checks the download: a series listed there whose folder is
  missing or holds fewer files than listed is reported (stderr and ``conversion.json``), not fatal;
- names each case ``<Subject ID>_<study date>`` (``HCC_009_19980215``), the collection's patients having several
  studies;
- types the tumour segments as **HCC** (every patient of the collection has HCC; ``--tumor-type`` or
  ``--tumor-types`` override it); Liver -> liver, Portal vein -> portal_splenic_vein; the abdominal aorta has no
  class in our scheme and is reported and left out;
- writes NC, A, V, D with the phases each study has (a missing one as the constant channel) and the label on the
  annotated series, which is the reference phase; studies without a SEG go to ``imagesTs``;
- reports what it found: per phase how many studies have it, which phase was annotated how often, how many labelled
  cases hold each label (stderr and ``summaries`` in ``conversion.json``). The counts describe the download given,
  not the whole collection.

Example::

    nnunet-liver-convert hcc-tace-seg -i ~/Downloads/manifest-1643035385102 -o $nnUNet_raw
"""
from __future__ import annotations

import csv
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.common import case_name
from nnunet_liver.dataset_conversion.dicom import add_label_arguments, convert_dicom
from nnunet_liver.utils.io import InputError

__all__ = ["DEFAULT_DATASET_ID", "COLLECTION", "find_metadata", "read_metadata", "convert_hcc_tace_seg",
           "add_arguments", "run"]

DEFAULT_DATASET_ID = 525
COLLECTION = "HCC-TACE-Seg"
_HEADER = ("Series UID", "Collection")


def find_metadata(folder: str) -> str:
    """TCIA's ``metadata.csv`` (or another CSV with its columns) at most two folders below ``folder``."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: input folder not found")
    candidates = []
    for root, dirs, files in os.walk(folder):
        depth = os.path.relpath(root, folder).count(os.sep) + (root != folder)
        if depth >= 2:
            dirs[:] = []
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(".csv"):
                path = os.path.join(root, name)
                with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
                    head = next(csv.reader(f), [])
                if tuple(h.strip() for h in head[:2]) == _HEADER and "File Location" in [h.strip() for h in head]:
                    candidates.append(path)
    if not candidates:
        raise InputError(f"{folder}: no TCIA metadata.csv found (the preset reads the collection as TCIA's NBIA Data "
                         f"Retriever writes it: metadata.csv beside the patient folders)")
    return sorted(candidates, key=lambda p: (os.path.basename(p) != "metadata.csv", p))[0]


def read_metadata(path: str) -> List[dict]:
    """The rows of a TCIA metadata.csv: series UID, collection, subject, study UID and date, modality, number of
    images, file location (made a path of this system, relative to the CSV's folder)."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        idx = {h: i for i, h in enumerate(header)}
        need = ("Series UID", "Collection", "Subject ID", "Study UID", "Study Date", "Modality", "Number of Images",
                "File Location")
        missing = [k for k in need if k not in idx]
        if missing:
            raise InputError(f"{path}: not a TCIA metadata.csv (no column {', '.join(missing)})")
        for n, row in enumerate(reader, 2):
            if not any(c.strip() for c in row):
                continue
            extra = len(row) - len(header)  # "10,54 MB": the file size column split in two
            if extra < 0:
                raise InputError(f"{path}: row {n} has {len(row)} columns, the header {len(header)}")

            def col(key, row=row, extra=extra):
                i = idx[key]
                return row[i + extra if "File Size" in idx and i > idx["File Size"] else i].strip()
            location = col("File Location").replace("\\", "/")
            rows.append({"series_uid": col("Series UID"), "collection": col("Collection"),
                         "subject": col("Subject ID"), "study_uid": col("Study UID"), "study_date": col("Study Date"),
                         "description": col("Series Description") if "Series Description" in idx else "",
                         "modality": col("Modality"), "images": _int(col("Number of Images")),
                         "location": location, "row": n})
    return rows


def _int(text: str) -> Optional[int]:
    try:
        return int(str(text).replace(",", ""))
    except ValueError:
        return None


def _series_folder(base: str, location: str) -> Optional[str]:
    """The folder a File Location names, relative to the CSV's folder; leading parts (``./HCC-TACE-Seg``) may be
    absent when the patient folders were moved up."""
    parts = [p for p in location.split("/") if p not in ("", ".")]
    for start in range(len(parts)):
        path = os.path.join(base, *parts[start:])
        if os.path.isdir(path):
            return path
    return None


def _date(text: str) -> str:
    m = re.fullmatch(r"(\d{2})-(\d{2})-(\d{4})", text.strip())
    return f"{m.group(3)}{m.group(1)}{m.group(2)}" if m else re.sub(r"\D", "", text)


def check_download(metadata: str, rows: List[dict]) -> List[str]:
    """Problems of the download: series listed in metadata.csv whose folder is missing or short of files."""
    base = os.path.dirname(os.path.abspath(metadata))
    problems = []
    for r in rows:
        folder = _series_folder(base, r["location"])
        if folder is None:
            problems.append(f"{metadata}: row {r['row']}: series {r['series_uid']} ({r['subject']}, "
                            f"{r['description'] or r['modality']}) not found at {r['location']}")
            continue
        count = len([n for n in os.listdir(folder) if not n.startswith(".")])
        if r["images"] is not None and count < r["images"]:
            problems.append(f"{metadata}: row {r['row']}: series {r['series_uid']} ({r['subject']}) has {count} of "
                            f"{r['images']} files in {folder}")
    return problems


def convert_hcc_tace_seg(inputs: Sequence[str], dataset_id: int = DEFAULT_DATASET_ID, name: Optional[str] = None,
                         phases: Sequence[str] = L.PHASES, transform: str = "rigid", output: Optional[str] = None,
                         num_processes: int = 1, append: bool = False, overwrite: bool = False,
                         phase_map: Optional[Dict[str, str]] = None, label_map: Optional[Sequence[str]] = None,
                         tumor_type: Optional[str] = "HCC", tumor_types: Optional[str] = None) -> str:
    """Convert one or more HCC-TACE-Seg downloads (see the module docstring); returns the dataset folder."""
    from nnunet_liver.dicom.index import index_studies

    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    studies, problems, metadata_files = [], [], []
    for folder in inputs:
        metadata = find_metadata(folder)
        rows = read_metadata(metadata)
        ours = [r for r in rows if r["collection"] == COLLECTION]
        if not ours:
            found = sorted({r["collection"] for r in rows})
            raise InputError(f"{metadata}: lists no series of {COLLECTION} (collections: {', '.join(found) or 'none'})")
        problems += check_download(metadata, ours)
        metadata_files.append(os.path.abspath(metadata))
        by_study = {r["study_uid"]: r for r in ours}
        found, _ = index_studies(folder)
        for s in found:
            first = next(iter(s.series.values())).first
            r = next((by_study[u] for u in s.study_uids if u in by_study), None)
            subject = r["subject"] if r else str(getattr(first, "PatientID", "") or s.case_id)
            date = _date(r["study_date"]) if r else str(getattr(first, "StudyDate", "") or "")
            s.case_id = case_name(f"{subject}_{date}" if date else subject)
        studies += found
    seen: Dict[str, int] = {}
    for s in sorted(studies, key=lambda s: (s.case_id, s.study_uid)):
        seen[s.case_id] = seen.get(s.case_id, 0) + 1
        if seen[s.case_id] > 1:
            s.case_id = f"{s.case_id}_{seen[s.case_id]}"
    for p in problems:
        print(f"nnunet-liver-convert: incomplete download: {p}", file=sys.stderr)
    return convert_dicom(inputs, dataset_id, name or "HCC_TACE_Seg", phases, transform, output, num_processes,
                         append, overwrite, phase_map, label_map, tumor_type, tumor_types, studies=studies,
                         kind="hcc-tace-seg", extra_source={"collection": COLLECTION, "metadata": metadata_files,
                                                            "download_problems": problems})


def add_arguments(parser) -> None:
    parser.add_argument("--transform", default="rigid", choices=("rigid", "affine"),
                        help="registration transform (Mattes mutual information, multi-resolution)")
    parser.add_argument("--phase-map", nargs="+", default=None, metavar="SERIES=PHASE",
                        help="the phase of a series (series number or SeriesInstanceUID = NC, A, V, D, or skip)")
    add_label_arguments(parser, tumor_default="HCC")


def run(args) -> str:
    from nnunet_liver.dicom.phase import parse_phase_map

    return convert_hcc_tace_seg(args.input, args.dataset_id or DEFAULT_DATASET_ID, args.name, args.phases,
                                args.transform, args.output, args.num_processes, args.append, args.overwrite,
                                parse_phase_map(args.phase_map), args.label_map, args.tumor_type, args.tumor_types)
