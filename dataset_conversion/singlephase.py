"""Single-phase sources (MSD, LiTS): one CT + one label per case, remapped into our ids, placed as one phase.

Public single-phase liver data are portal-venous, so the CT goes into the ``V`` channel of the chosen layout
(``--phases``; default ``V``) and every other phase of the layout is the constant missing channel.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from nnunet_liver.dataset_conversion.common import (check_same_geometry, read_label, remap, write_channels,
                                                    write_label)
from nnunet_liver.utils.io import InputError, read_image

__all__ = ["SOURCE_PHASE", "convert_single_phase_case", "check_layout"]

#: the phase a single-phase source is placed as
SOURCE_PHASE = "V"


def check_layout(phases) -> None:
    if SOURCE_PHASE not in phases:
        raise InputError(f"--phases {','.join(phases)}: single-phase sources are placed as {SOURCE_PHASE}, so the "
                         f"layout must include {SOURCE_PHASE}")


def convert_single_phase_case(job) -> dict:
    """Convert one case. ``job = (out_folder, phases, case, spec)`` with spec = {"image": path, "label": path|None,
    "mapping": {source value: our id}, "tumor_values": [source values that are tumours], "tumor_id": int|None}.
    """
    out, phases, case, spec = job
    what = f"case {case}"
    if not os.path.isfile(spec["image"]):
        raise InputError(f"{what}: image file {spec['image']} not found")
    _, _, image = read_image(spec["image"], "image")
    if spec.get("label") is None:
        os.makedirs(os.path.join(out, "imagesTs"), exist_ok=True)
        missing = write_channels({SOURCE_PHASE: image}, phases, image, os.path.join(out, "imagesTs"), case)
        return {"image": spec["image"], "label": None, "missing_phases": missing, "split": "test"}
    if not os.path.isfile(spec["label"]):
        raise InputError(f"{what}: label file {spec['label']} not found")
    array, label = read_label(spec["label"], what)
    check_same_geometry(image, label, what)
    mapping: Dict[int, Optional[int]] = dict(spec["mapping"])
    present = set(int(v) for v in np.unique(array))
    tumours = sorted(present & set(spec.get("tumor_values", ())))
    if tumours:
        if spec.get("tumor_id") is None:
            raise InputError(f"{what}: label holds tumour values {tumours} but their type is unknown; pass "
                             f"--tumor-type NAME (e.g. HCC, Meta)")
        for v in tumours:
            mapping[v] = int(spec["tumor_id"])
    for v in spec.get("tumor_values", ()):
        mapping.setdefault(v, 0)  # declared but absent: any id works, nothing to map
    ours = remap(array, mapping, what)
    missing = write_channels({SOURCE_PHASE: image}, phases, image, os.path.join(out, "imagesTr"), case)
    write_label(ours, image, os.path.join(out, "labelsTr", f"{case}.nii.gz"))
    return {"image": spec["image"], "label": spec["label"], "missing_phases": missing, "split": "train",
            "label_values_source": sorted(present), "label_values": sorted(int(v) for v in np.unique(ours))}
