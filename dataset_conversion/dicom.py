"""DICOM studies -> nnU-Net raw dataset: one case per study, phases identified, registered onto the reference phase.

Input: a folder holding DICOM studies at any depth (one case per StudyInstanceUID, named by its folder; see
:mod:`nnunet_liver.dicom`). Series selection, the choice of one reconstruction per phase and the phase identification
are those of ``nnunet-liver-detect`` (CASE.json's ``dicom`` record is written to ``dicom/CASE.json`` in the dataset).
Each phase of the layout (``--phases``, default NC,A,V,D) is put on the reference phase's grid (V when present, else
the first present phase of the layout): phases on another grid are registered to it with SimpleITK (Mattes mutual
information, rigid by default, ``--transform affine``) as ``multiphase`` does; phases the study lacks become the
constant missing channel. HU are written as int16.

Annotations: a study holding DICOM SEG or RTSTRUCT instances (any depth, like its images) is a labelled case
(``imagesTr`` + ``labelsTr``); the others go to ``imagesTs``. The series the annotations are drawn on becomes the
reference phase (whatever the reconstruction rule would have chosen), the other phases are put on it as above, and
the segments / ROIs become one label map in our ids (:mod:`nnunet_liver.dicom.annotations`: SEG frames placed by
position, RTSTRUCT contours filled by the even-odd rule, the mapping of names and SNOMED codes onto our classes,
overlaps by the more specific structure). Tumours take ``--tumor-type`` or the case's row of ``--tumor-types CSV``;
``--label-map NAME=CLASS`` maps the rest; structures mapping to nothing are reported and left out.

A study without annotations that cannot be read, whose phases cannot be identified or whose registration fails is
skipped with one line on stderr (listed in ``conversion.json``); the other studies are converted. A **labelled** study
that fails (its images or its annotations) stops the conversion with one line naming the file, and nothing is
written: a training set must not lose its labelled cases silently.

Example::

    nnunet-liver-convert dicom -i /data/pacs_export -o $nnUNet_raw -d 524
    nnunet-liver-convert dicom -i /data/pacs_export --phase-map 4=A 7=V   # phases named by series number
    nnunet-liver-convert dicom -i /data/annotated --tumor-type HCC --label-map "Aorta=ignore" "GTV=tumor"
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Dict, Optional, Sequence

import numpy as np

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.common import (build_dataset, dataset_folder, parse_phases, resolve_tumor_type,
                                                    write_channels, write_label)
from nnunet_liver.utils.io import InputError, write_json_atomic

__all__ = ["DEFAULT_DATASET_ID", "convert_dicom_study", "convert_dicom", "read_tumor_types", "add_arguments", "run"]

DEFAULT_DATASET_ID = 524
REPORT_FOLDER = "dicom"


def convert_dicom_study(job) -> dict:
    """Convert one study: ``job = (out_folder, phases, case, (study, transform, labels))`` with ``labels`` = {
    "mapping": user label map, "tumor_id": the case's tumour type id or None}; returns its record (or the one-line
    ``error`` of an unlabelled study that was skipped, having written nothing). A labelled study's error is raised."""
    import SimpleITK as sitk

    from nnunet_liver.dicom.annotations import LabelMapping, annotated_series, find_annotations, label_map, structures
    from nnunet_liver.dicom.study import load_dicom_case
    from nnunet_liver.registration import RegistrationError

    out, phases, case, (study, transform, labels) = job
    annotations = find_annotations(study)
    reference = annotated_series(study, annotations) if annotations else None
    try:
        loaded = load_dicom_case(study, phases, allow_missing=True, registration_transform=transform,
                                 reference_series=reference)
    except (InputError, RegistrationError) as e:  # an unlabelled study is skipped, the others are converted
        if annotations:  # a failed registration stays a failed step (exit 1), bad images bad input (exit 2)
            raise type(e)(f"labelled study {case} ({study.relative(annotations[0].path)}): {e}") from None
        return {"error": str(e)}
    label, label_record = None, None
    if annotations:
        found = [s for a in annotations for s in structures(a)]
        label, label_record = label_map(found, LabelMapping(labels.get("mapping")), labels.get("tumor_id"),
                                        loaded.reference_headers, f"series {reference}", case)
        if label.shape != loaded.data.shape[1:]:  # the reference grid is the annotated series' slices
            raise InputError(f"{annotations[0].path}: label grid {label.shape} differs from the case's "
                             f"{loaded.data.shape[1:]}")
        for entry in label_record["structures"]:
            entry["file"] = study.relative(entry["file"])
    channels = {}
    for c, phase in enumerate(phases):
        if phase in loaded.phases_present:
            image = sitk.GetImageFromArray(np.clip(np.rint(loaded.data[c]), -32768, 32767).astype(np.int16))
            image.CopyInformation(loaded.reference)
            channels[phase] = image
    folder = os.path.join(out, "imagesTr" if label is not None else "imagesTs")
    os.makedirs(folder, exist_ok=True)
    missing = write_channels(channels, phases, loaded.reference, folder, case)
    if label is not None:
        write_label(label, loaded.reference, os.path.join(out, "labelsTr", f"{case}.nii.gz"))
    write_json_atomic(dict(loaded.dicom, registration=loaded.registration, annotations=label_record),
                      os.path.join(out, REPORT_FOLDER, f"{case}.json"))
    entry = {"folder": study.relative(study.folder), "study_uid": loaded.dicom["study_uid"],
             "split": "train" if label is not None else "test",
             "reference_phase": loaded.dicom["reference_phase"], "missing_phases": missing,
             "series": {a["phase"]: a["series_uid"] for a in loaded.dicom["acquisitions"]},
             "confidence": {a["phase"]: a["confidence"] for a in loaded.dicom["acquisitions"]}}
    if label_record is not None:
        entry["annotations"] = sorted({e["file"] for e in label_record["structures"]})
        entry["labels"] = {L.name_of(int(v)): int(n) for v, n in zip(*np.unique(label, return_counts=True)) if v}
        entry["left_out"] = sorted({e["name"] for e in label_record["structures"] if e["class"] is None})
        entry["overlaps"] = label_record["overlaps"]
    return entry


def read_tumor_types(path: Optional[str]) -> Dict[str, int]:
    """``--tumor-types CSV``: rows ``case,tumor_type`` (a header row naming these columns is allowed), the case as
    its case id, PatientID or StudyInstanceUID -> our label id; InputError naming the file and row otherwise."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise InputError(f"{path}: --tumor-types file not found")
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not any(row) or (n == 1 and [c.lower() for c in row[:2]] == ["case", "tumor_type"]):
                continue
            if len(row) < 2 or not row[0] or not row[1]:
                raise InputError(f"{path}: row {n}: use case,tumor_type")
            try:
                out[row[0]] = L.id_of(row[1])
            except ValueError as e:
                raise InputError(f"{path}: row {n}: {e}") from None
    return out


def _case_tumor_id(study, tumor_types: Dict[str, int], default: Optional[int]) -> Optional[int]:
    first = next(iter(study.series.values())).first
    for key in (study.case_id, str(getattr(first, "PatientID", "") or ""), study.study_uid, *study.study_uids):
        if key and key in tumor_types:
            return tumor_types[key]
    return default


def phase_summary(cases: Dict[str, dict]) -> dict:
    """How often each phase was found, was the annotated (reference) phase, and what the labels hold."""
    done = [r for r in cases.values() if "error" not in r]
    out = {"studies": len(cases), "converted": len(done), "labelled": sum(r.get("split") == "train" for r in done),
           "phases_found": {p: sum(p in r.get("series", {}) for r in done) for p in L.PHASES},
           "annotated_phase": {}, "label_cases": {}, "left_out": {}}
    for r in done:
        if r.get("split") == "train":
            p = r["reference_phase"]
            out["annotated_phase"][p] = out["annotated_phase"].get(p, 0) + 1
            for name in r.get("labels", {}):
                out["label_cases"][name] = out["label_cases"].get(name, 0) + 1
            for name in r.get("left_out", []):
                out["left_out"][name] = out["left_out"].get(name, 0) + 1
    combos: Dict[str, int] = {}
    for r in done:
        key = ",".join(p for p in L.PHASES if p in r.get("series", {}))
        combos[key] = combos.get(key, 0) + 1
    out["phase_combinations"] = combos
    return out


def convert_dicom(inputs: Sequence[str], dataset_id: int = DEFAULT_DATASET_ID, name: Optional[str] = None,
                  phases: Sequence[str] = L.PHASES, transform: str = "rigid", output: Optional[str] = None,
                  num_processes: int = 1, append: bool = False, overwrite: bool = False,
                  phase_map: Optional[Dict[str, str]] = None, label_map: Optional[Sequence[str]] = None,
                  tumor_type: Optional[str] = None, tumor_types: Optional[str] = None, studies=None,
                  kind: str = "dicom", extra_source: Optional[dict] = None) -> str:
    """Convert the DICOM studies under ``inputs`` into ``<raw root>/DatasetXXX_NAME`` (default name ``DicomStudies``).

    Parameters as :func:`nnunet_liver.dataset_conversion.multiphase.convert_multiphase`; ``phase_map``: series
    number or SeriesInstanceUID -> phase, for studies whose phases cannot be identified; ``label_map``:
    ``NAME=CLASS`` items; ``tumor_type``: the lesion type of tumour segments; ``tumor_types``: a CSV of
    ``case,tumor_type`` rows (per case, before ``tumor_type``); ``studies``: already indexed studies (presets).
    """
    from nnunet_liver.dicom.annotations import parse_label_map
    from nnunet_liver.dicom.index import index_studies

    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    phases = parse_phases(phases)
    if transform not in ("rigid", "affine"):
        raise InputError(f"--transform {transform}: use rigid or affine")
    mapping = parse_label_map(label_map)
    tumor_id = resolve_tumor_type(tumor_type)
    per_case = read_tumor_types(tumor_types)
    if studies is None:
        studies = []
        for folder in inputs:
            if not os.path.isdir(folder):
                raise InputError(f"{folder}: input folder not found")
            studies += index_studies(folder)[0]
    cases = []
    for study in studies:
        study.phase_map = dict(phase_map or {})
        labels = {"mapping": mapping, "tumor_id": _case_tumor_id(study, per_case, tumor_id)}
        cases.append((study.case_id, (study, transform, labels)))
    if not cases:
        raise InputError(f"{', '.join(inputs)}: no DICOM study found")
    out = dataset_folder(dataset_id, name or "DicomStudies", output, append)
    source = {"kind": kind, "inputs": [os.path.abspath(t) for t in inputs], "transform": transform,
              "phase_map": dict(phase_map or {}), "label_map": list(label_map or []), "tumor_type": tumor_type,
              "tumor_types": os.path.abspath(tumor_types) if tumor_types else None, **(extra_source or {})}
    folder = build_dataset(out, phases, cases, convert_dicom_study, num_processes, source, append, overwrite)
    record_path = os.path.join(folder, "conversion.json")
    with open(record_path, encoding="utf-8") as f:
        record = json.load(f)
    names = [c for c, _ in cases]
    failed = {c: r["error"] for c, r in record["cases"].items() if "error" in r and c in names}
    by_message: Dict[str, list] = {}
    for case, message in failed.items():  # one line per problem (a folder of two patients fails both studies)
        by_message.setdefault(message, []).append(case)
    for message, skipped in by_message.items():
        print(f"nnunet-liver-convert: skipped {'study' if len(skipped) == 1 else 'studies'} {', '.join(skipped)}: "
              f"{message}", file=sys.stderr)
    if len(failed) == len(cases):
        if not append:  # nothing converted: leave no empty dataset behind
            import shutil

            shutil.rmtree(folder)
        raise InputError(f"no study could be converted ({len(failed)} skipped)")
    summary = phase_summary({c: record["cases"][c] for c in names})
    record.setdefault("summaries", []).append(summary)
    write_json_atomic(record, record_path)
    _print_summary(summary)
    return folder


def _print_summary(summary: dict) -> None:
    found = ", ".join(f"{p} {n}" for p, n in summary["phases_found"].items())
    print(f"nnunet-liver-convert: {summary['converted']} of {summary['studies']} studies converted, "
          f"{summary['labelled']} labelled; phases found: {found}", file=sys.stderr)
    if summary["labelled"]:
        annotated = ", ".join(f"{p} {n}" for p, n in sorted(summary["annotated_phase"].items()))
        held = ", ".join(f"{k} {n}" for k, n in sorted(summary["label_cases"].items()))
        print(f"nnunet-liver-convert: annotated phase: {annotated}; labels (cases): {held}", file=sys.stderr)
    for name, n in sorted(summary["left_out"].items()):
        print(f"nnunet-liver-convert: left out {name!r} (no class of ours; --label-map NAME=CLASS maps it) in "
              f"{n} {'study' if n == 1 else 'studies'}", file=sys.stderr)


def add_arguments(parser) -> None:
    parser.add_argument("--transform", default="rigid", choices=("rigid", "affine"),
                        help="registration transform (Mattes mutual information, multi-resolution)")
    parser.add_argument("--phase-map", nargs="+", default=None, metavar="SERIES=PHASE",
                        help="the phase of a series (series number or SeriesInstanceUID = NC, A, V, D, or skip), for "
                             "studies whose phases cannot be identified from the images and tags")
    add_label_arguments(parser)


def add_label_arguments(parser, tumor_default: Optional[str] = None) -> None:
    parser.add_argument("--label-map", nargs="+", default=None, metavar="NAME=CLASS",
                        help="a segment label / ROI name (or SCT:CODE) -> one of our classes (liver, HCC, ..., "
                             "tumor for the case's tumour type, ignore to leave it out); before the defaults")
    parser.add_argument("--tumor-type", default=tumor_default, metavar="NAME",
                        help="our lesion type for untyped tumour segments (Tumor, Mass, Neoplasm, Lesion ...)"
                             + (f" (default: {tumor_default})" if tumor_default else
                                "; required when a labelled study holds one and --tumor-types does not type it"))
    parser.add_argument("--tumor-types", default=None, metavar="CSV",
                        help="per-case tumour types: rows case,tumor_type (case id, PatientID or "
                             "StudyInstanceUID), before --tumor-type")


def run(args) -> str:
    from nnunet_liver.dicom.phase import parse_phase_map

    return convert_dicom(args.input, args.dataset_id or DEFAULT_DATASET_ID, args.name, args.phases, args.transform,
                         args.output, args.num_processes, args.append, args.overwrite,
                         parse_phase_map(args.phase_map), args.label_map, args.tumor_type, args.tumor_types)
