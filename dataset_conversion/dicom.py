"""DICOM studies -> nnU-Net raw dataset: one case per study, phases identified, registered onto the reference phase.

Input: a folder holding DICOM studies at any depth (one case per StudyInstanceUID, named by its folder; see
:mod:`nnunet_liver.dicom`). Series selection, the choice of one reconstruction per phase and the phase identification
are those of ``nnunet-liver-detect`` (CASE.json's ``dicom`` record is written to ``dicom/CASE.json`` in the dataset).
Each phase of the layout (``--phases``, default NC,A,V,D) is put on the reference phase's grid (V when present, else
the first present phase of the layout): phases on another grid are registered to it with SimpleITK (Mattes mutual
information, rigid by default, ``--transform affine``) as ``multiphase`` does; phases the study lacks become the
constant missing channel. HU are written as int16. DICOM studies carry no reference label, so every case goes to
``imagesTs``. A study that cannot be read, whose phases cannot be identified or whose registration fails is skipped
with one line on stderr (listed in ``conversion.json``); the other studies are converted.

Example::

    nnunet-liver-convert dicom -i /data/pacs_export -o $nnUNet_raw -d 524
    nnunet-liver-convert dicom -i /data/pacs_export --phase-map 4=A 7=V   # phases named by series number
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional, Sequence

import numpy as np

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.common import build_dataset, dataset_folder, parse_phases, write_channels
from nnunet_liver.utils.io import InputError, write_json_atomic

__all__ = ["DEFAULT_DATASET_ID", "convert_dicom_study", "convert_dicom", "add_arguments", "run"]

DEFAULT_DATASET_ID = 524
REPORT_FOLDER = "dicom"


def convert_dicom_study(job) -> dict:
    """Convert one study: ``job = (out_folder, phases, case, (study, transform))``; returns its record (or the
    one-line ``error`` of a study that was skipped, having written nothing)."""
    import SimpleITK as sitk

    from nnunet_liver.dicom.study import load_dicom_case
    from nnunet_liver.registration import RegistrationError

    out, phases, case, (study, transform) = job
    try:
        loaded = load_dicom_case(study, phases, allow_missing=True, registration_transform=transform)
    except (InputError, RegistrationError) as e:  # this study is skipped, the others are converted
        return {"error": str(e)}
    channels = {}
    for c, phase in enumerate(phases):
        if phase in loaded.phases_present:
            image = sitk.GetImageFromArray(np.clip(np.rint(loaded.data[c]), -32768, 32767).astype(np.int16))
            image.CopyInformation(loaded.reference)
            channels[phase] = image
    folder = os.path.join(out, "imagesTs")
    os.makedirs(folder, exist_ok=True)
    missing = write_channels(channels, phases, loaded.reference, folder, case)
    write_json_atomic(dict(loaded.dicom, registration=loaded.registration),
                      os.path.join(out, REPORT_FOLDER, f"{case}.json"))
    return {"folder": study.relative(study.folder), "study_uid": loaded.dicom["study_uid"], "split": "test",
            "reference_phase": loaded.dicom["reference_phase"], "missing_phases": missing,
            "series": {a["phase"]: a["series_uid"] for a in loaded.dicom["acquisitions"]},
            "confidence": {a["phase"]: a["confidence"] for a in loaded.dicom["acquisitions"]}}


def convert_dicom(inputs: Sequence[str], dataset_id: int = DEFAULT_DATASET_ID, name: Optional[str] = None,
                  phases: Sequence[str] = L.PHASES, transform: str = "rigid", output: Optional[str] = None,
                  num_processes: int = 1, append: bool = False, overwrite: bool = False,
                  phase_map: Optional[Dict[str, str]] = None) -> str:
    """Convert the DICOM studies under ``inputs`` into ``<raw root>/DatasetXXX_NAME`` (default name ``DicomStudies``).

    Parameters as :func:`nnunet_liver.dataset_conversion.multiphase.convert_multiphase`; ``phase_map``: series
    number or SeriesInstanceUID -> phase, for studies whose phases cannot be identified.
    """
    from nnunet_liver.dicom.index import index_studies

    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    phases = parse_phases(phases)
    if transform not in ("rigid", "affine"):
        raise InputError(f"--transform {transform}: use rigid or affine")
    cases = []
    for folder in inputs:
        if not os.path.isdir(folder):
            raise InputError(f"{folder}: input folder not found")
        studies, _ = index_studies(folder)
        for study in studies:
            study.phase_map = dict(phase_map or {})
            cases.append((study.case_id, (study, transform)))
    if not cases:
        raise InputError(f"{', '.join(inputs)}: no DICOM study found")
    out = dataset_folder(dataset_id, name or "DicomStudies", output, append)
    source = {"kind": "dicom", "inputs": [os.path.abspath(t) for t in inputs], "transform": transform,
              "phase_map": dict(phase_map or {})}
    folder = build_dataset(out, phases, cases, convert_dicom_study, num_processes, source, append, overwrite)
    import json

    with open(os.path.join(folder, "conversion.json"), encoding="utf-8") as f:
        record = json.load(f)
    failed = {c: r["error"] for c, r in record["cases"].items() if "error" in r}
    by_message: Dict[str, list] = {}
    for case, message in failed.items():  # one line per problem (a folder of two patients fails both studies)
        by_message.setdefault(message, []).append(case)
    for message, names in by_message.items():
        print(f"nnunet-liver-convert: skipped {'study' if len(names) == 1 else 'studies'} {', '.join(names)}: "
              f"{message}", file=sys.stderr)
    if len(failed) == len(cases):
        if not append:  # nothing converted: leave no empty dataset behind
            import shutil

            shutil.rmtree(folder)
        raise InputError(f"no study could be converted ({len(failed)} skipped)")
    return folder


def add_arguments(parser) -> None:
    parser.add_argument("--transform", default="rigid", choices=("rigid", "affine"),
                        help="registration transform (Mattes mutual information, multi-resolution)")
    parser.add_argument("--phase-map", nargs="+", default=None, metavar="SERIES=PHASE",
                        help="the phase of a series (series number or SeriesInstanceUID = NC, A, V, D, or skip), for "
                             "studies whose phases cannot be identified from the images and tags")


def run(args) -> str:
    from nnunet_liver.dicom.phase import parse_phase_map

    return convert_dicom(args.input, args.dataset_id or DEFAULT_DATASET_ID, args.name, args.phases, args.transform,
                         args.output, args.num_processes, args.append, args.overwrite,
                         parse_phase_map(args.phase_map))
