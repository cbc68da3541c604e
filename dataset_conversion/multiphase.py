"""Multi-phase case folders -> nnU-Net raw dataset, every phase registered onto the reference phase's grid.

Input: a folder of case folders, or one case folder itself. A case folder holds any subset of ``NC``, ``A``,
``V``, ``D`` (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``) and optionally ``label`` in our ids (0..13), drawn on the
reference phase::

    cases/patient01/{NC,A,V,D}.nii.gz  label.nii.gz
    cases/patient02/{A,D}.nii.gz       label.nii.gz      (needs --reference-phase D or A)

Each phase of the layout (``--phases``, default NC,A,V,D) is registered to the reference phase (``V`` unless
``--reference-phase``) with SimpleITK (Mattes mutual information, rigid by default, ``--transform affine``),
resampled onto the reference grid (linear, -1024 HU outside its field of view); phases the case lacks become the
constant missing channel. When the case has a label, the metric is computed in its liver region (labels 1..8)
dilated by 10 mm, because the liver moves with breathing while the spine does not. The label is copied
voxel for voxel (it already lives on the reference grid). A report per case (metric before/after, transform) is
written to ``registration/CASE.json`` in the dataset. Cases without a label go to ``imagesTs``.

Example::

    nnunet-liver-convert multiphase -i cases/ -d 522 --phases NC,A,V,D
    nnunet-liver-convert multiphase -i ../shared/realdata/hcc_tace_1720 -d 523 --reference-phase D
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.common import (IMAGE_SUFFIXES, build_dataset, case_name, check_same_geometry,
                                                    dataset_folder, find_image, parse_phases, read_label,
                                                    write_channels, write_label)
from nnunet_liver.utils.io import InputError, read_image, write_json_atomic

__all__ = ["DEFAULT_DATASET_ID", "LIVER_MARGIN_MM", "multiphase_cases", "convert_multiphase_case",
           "convert_multiphase", "add_arguments", "run"]

DEFAULT_DATASET_ID = 522
#: margin (mm) of the registration region around the labelled liver
LIVER_MARGIN_MM = 10.0
REPORT_FOLDER = "registration"


def _phase_files(folder: str) -> dict:
    return {p: f for p in L.PHASES if (f := find_image(folder, p)) is not None}


def multiphase_cases(folder: str) -> List[Tuple[str, dict]]:
    """(case name, {"folder", "phases": {phase: path}, "label": path|None}) for a folder of cases or one case."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: input folder not found")
    own = _phase_files(folder)
    if own:
        folders = [folder]
    else:
        folders = [os.path.join(folder, d) for d in sorted(os.listdir(folder))
                   if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))]
        if not folders:
            raise InputError(f"{folder}: empty folder (expected case folders with {', '.join(L.PHASES)} images)")
    cases = []
    for f in folders:
        name = case_name(os.path.basename(os.path.normpath(f)))
        phases = _phase_files(f)
        if not phases:
            raise InputError(f"case {name}: {f} holds no phase image ({'/'.join(L.PHASES)} with "
                             f"{'/'.join(IMAGE_SUFFIXES)})")
        cases.append((name, {"folder": os.path.abspath(f), "phases": phases, "label": find_image(f, "label")}))
    return cases


def _liver_region_mask(label: np.ndarray, spacing) -> Optional[np.ndarray]:
    """The liver region (labels 1..8) dilated by :data:`LIVER_MARGIN_MM` (Euclidean, in mm), bool (z, y, x);
    None when the label has no liver region. Computed on the region's bounding box only."""
    from scipy import ndimage

    region = np.isin(label, L.LIVER_REGION_IDS)
    if not region.any():
        return None
    box = []
    for axis, sp in enumerate(spacing):
        idx = np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))
        pad = int(np.ceil(LIVER_MARGIN_MM / sp)) + 1
        box.append(slice(max(0, idx[0] - pad), min(label.shape[axis], idx[-1] + pad + 1)))
    box = tuple(box)
    mask = np.zeros(label.shape, bool)
    mask[box] = ndimage.distance_transform_edt(~region[box], sampling=spacing) <= LIVER_MARGIN_MM
    return mask


def convert_multiphase_case(job) -> dict:
    """Convert one case folder: ``job = (out_folder, phases, case, spec)``; spec from :func:`multiphase_cases`
    plus "reference_phase" and "transform". Returns the case's record (with the registration reports)."""
    from nnunet_liver.registration import register_to_reference

    out, phases, case, spec = job
    what = f"case {case}"
    ref = spec["reference_phase"]
    if ref not in spec["phases"]:
        raise InputError(f"{what}: reference phase {ref} missing (present: {', '.join(spec['phases'])}); "
                         f"choose one with --reference-phase")
    _, ref_spacing, fixed = read_image(spec["phases"][ref], f"{ref} image")
    label_array, mask = None, None
    if spec.get("label"):
        label_array, label_image = read_label(spec["label"], what)
        check_same_geometry(fixed, label_image, what)
        try:
            L.validate_label_values(np.unique(label_array), what=f"{what}: label {spec['label']}")
        except ValueError as e:
            raise InputError(str(e)) from None
        mask = _liver_region_mask(label_array, ref_spacing)
    channels, reports = {ref: fixed}, {}
    for phase, path in spec["phases"].items():
        if phase == ref or phase not in phases:
            continue
        _, _, moving = read_image(path, f"{phase} image")
        try:
            channels[phase], reports[phase] = register_to_reference(moving, fixed, spec["transform"], fixed_mask=mask)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            raise InputError(f"{what}: registration of {phase} to {ref} failed ({reason})") from None
    split = "imagesTr" if label_array is not None else "imagesTs"
    os.makedirs(os.path.join(out, split), exist_ok=True)
    missing = write_channels(channels, phases, fixed, os.path.join(out, split), case)
    if label_array is not None:
        write_label(label_array.astype(np.uint8), fixed, os.path.join(out, "labelsTr", f"{case}.nii.gz"))
    report = {"schema_version": "1.0", "case": case, "reference_phase": ref, "transform": spec["transform"],
              "metric_region": f"liver region + {LIVER_MARGIN_MM:g} mm" if mask is not None else "whole image",
              "phases": reports,
              "sources": {p: spec["phases"][p] for p in spec["phases"]}}
    write_json_atomic(report, os.path.join(out, REPORT_FOLDER, f"{case}.json"))
    ignored = sorted(set(spec["phases"]) - set(phases))
    return {"folder": spec["folder"], "label": spec.get("label"), "reference_phase": ref, "split":
            "train" if label_array is not None else "test", "missing_phases": missing, "ignored_phases": ignored,
            "registration": {p: {k: r[k] for k in ("metric_before", "metric_after", "improved")}
                             for p, r in reports.items()}}


def convert_multiphase(inputs: Sequence[str], dataset_id: int = DEFAULT_DATASET_ID, name: Optional[str] = None,
                       phases: Sequence[str] = L.PHASES, reference_phase: str = "V", transform: str = "rigid",
                       output: Optional[str] = None, num_processes: int = 1, append: bool = False,
                       overwrite: bool = False) -> str:
    """Convert folders of multi-phase cases into ``<raw root>/DatasetXXX_NAME`` (default name ``MultiPhase``).

    Parameters
    ----------
    inputs : folders of case folders, or case folders (several are merged).
    phases : channel layout written (default NC,A,V,D); reference_phase : the grid every phase is resampled to
        (and the label's phase); transform : "rigid" or "affine".
    Other parameters as :func:`nnunet_liver.dataset_conversion.msd.convert_msd`.
    """
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    phases = parse_phases(phases)
    if reference_phase not in L.PHASES:
        raise InputError(f"--reference-phase {reference_phase}: use one of {', '.join(L.PHASES)}")
    if transform not in ("rigid", "affine"):
        raise InputError(f"--transform {transform}: use rigid or affine")
    cases = [(c, dict(spec, reference_phase=reference_phase, transform=transform))
             for folder in inputs for c, spec in multiphase_cases(folder)]
    folder = dataset_folder(dataset_id, name or "MultiPhase", output, append)
    source = {"kind": "multiphase", "inputs": [os.path.abspath(t) for t in inputs],
              "reference_phase": reference_phase, "transform": transform}
    return build_dataset(folder, phases, cases, convert_multiphase_case, num_processes, source, append, overwrite)


def add_arguments(parser) -> None:
    parser.add_argument("--reference-phase", default="V", choices=L.PHASES,
                        help="phase every other phase is registered to and resampled onto; the label is drawn on it")
    parser.add_argument("--transform", default="rigid", choices=("rigid", "affine"),
                        help="registration transform (Mattes mutual information, multi-resolution)")


def run(args) -> str:
    return convert_multiphase(args.input, args.dataset_id or DEFAULT_DATASET_ID, args.name, args.phases,
                              args.reference_phase, args.transform, args.output, args.num_processes, args.append,
                              args.overwrite)
