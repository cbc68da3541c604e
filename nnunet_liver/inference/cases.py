"""The NIfTI loader: find a folder's cases, validate their files and load them as the model's input channels.

Cases follow nnU-Net's naming: ``CASE_0000.nii.gz`` ... one file per channel, in the channel order of the model's
dataset.json (for our models NC, A, V, D). A case may lack a phase file only when the model is an IFM model; the
phase is then filled with the constant :data:`nnunet_liver.labels.MISSING_PHASE_VALUE`; a phase file holding nothing but
that constant (a converted case's missing channel) is a missing phase too (``phases_missing``, not shown in the report).
All present phases must share
the reference phase's grid (venous if present, else the first present phase) unless registration is asked for, in
which case every other phase is registered onto the reference grid with SimpleITK.

The loaded case is :class:`nnunet_liver.case.LoadedCase`, the type the DICOM loader (:mod:`nnunet_liver.dicom.study`)
builds too; :mod:`nnunet_liver.inference.inputs` finds both kinds of case in a folder and picks the loader of each.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from nnunet_liver.case import (LoadedCase, is_missing_channel, registration_record, same_geometry, store_phase,
                               validate_case_id)
from nnunet_liver.labels import MISSING_PHASE_VALUE
from nnunet_liver.utils.io import InputError, read_image

__all__ = ["CaseFiles", "discover_cases", "load_case", "shard"]


@dataclass
class CaseFiles:
    """One case: its id and one file path per model channel (``None`` for a missing phase)."""
    case_id: str
    files: List[Optional[str]]
    error: Optional[str] = None  # a problem found during discovery, reported when the case is loaded
    dicom: Optional[object] = None  # a nnunet_liver.dicom.index.DicomStudy: the case is read by the DICOM loader


def discover_cases(input_dir: str, num_channels: int, file_ending: str = ".nii.gz") -> List[CaseFiles]:
    """Cases of ``input_dir`` named ``CASE_XXXX<file_ending>``, sorted by id; absent channels are ``None``.

    Case ids are not validated here (:func:`load_case` does it, so a bad id fails that case only); nor are files
    whose channel index is beyond ``num_channels`` (the case carries an ``error`` that load_case raises). DICOM
    studies: :func:`nnunet_liver.inference.inputs.discover_inputs`.
    """
    if not os.path.isdir(input_dir):
        raise InputError(f"{input_dir}: input folder not found")
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(file_ending))
    by_case: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(input_dir)):
        m = pattern.fullmatch(name)
        if m:
            by_case.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(input_dir, name)
    cases = []
    for case_id in sorted(by_case):
        channels = by_case[case_id]
        files: List[Optional[str]] = [channels.get(c) for c in range(num_channels)]
        extra = sorted(c for c in channels if c >= num_channels)
        error = (f"{channels[extra[0]]}: channel {extra[0]:04d} is beyond the model's {num_channels} channels"
                 if extra else None)
        cases.append(CaseFiles(case_id, files, error))
    return cases


def shard(items: Sequence, num_parts: int = 1, part_id: int = 0) -> list:
    """The ``part_id``-th of ``num_parts`` interleaved shards (``items[part_id::num_parts]``, as nnUNetv2_predict)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError(f"--part-id {part_id} / --num-parts {num_parts}: need num_parts >= 1 and "
                         f"0 <= part_id < num_parts")
    return list(items)[part_id::num_parts]


def load_case(case: CaseFiles, channel_names: Sequence[str], allow_missing: bool, register: bool = False,
              registration_transform: str = "rigid") -> LoadedCase:
    """Read, check and align one NIfTI case; fill missing phases when ``allow_missing``.

    Raises
    ------
    InputError
        bad case id, extra channel file, missing phase (non-IFM model), no phase at all, unreadable file, NaN
        voxels, a non-3D image, or phases on different grids without ``register``.
    """
    import SimpleITK as sitk

    validate_case_id(case.case_id)
    files = list(case.files)
    if case.error:
        raise InputError(case.error)
    if case.dicom is not None:
        raise ValueError(f"case {case.case_id}: a DICOM study; load it with nnunet_liver.inference.inputs.load_input")
    if len(files) != len(channel_names):
        raise InputError(f"case {case.case_id}: {len(files)} files given for the model's {len(channel_names)} "
                         f"channels ({', '.join(channel_names)})")
    names = list(channel_names)
    present = [c for c, f in enumerate(files) if f is not None]
    missing = [c for c, f in enumerate(files) if f is None]
    if not present:
        raise InputError(f"case {case.case_id}: no image file (expected {case.case_id}_0000 ...)")
    if missing and not allow_missing:
        first = missing[0]
        raise InputError(f"case {case.case_id}: phase {names[first]} file {case.case_id}_{first:04d} is missing and "
                         f"the model is not an IFM model (only IFM models accept missing phases)")
    ref_c = names.index("V") if "V" in names and files[names.index("V")] is not None else present[0]
    # the reference phase first: its grid sizes the (C, Z, Y, X) array (int16 when the phases fit it), which every
    # phase fills as soon as it is read (each file read once; no second copy of the case)
    array, _, ref = read_image(files[ref_c], what=f"phase {names[ref_c]} image")
    shape = (len(names),) + tuple(array.shape)
    data = store_phase(None, ref_c, array, shape)
    del array
    registration = {}
    for c in present:
        if c == ref_c:
            continue
        array, _, image = read_image(files[c], what=f"phase {names[c]} image")
        problem = same_geometry(image, ref)
        if problem is not None:
            if not register:
                raise InputError(f"{files[c]}: phase {names[c]} is on a different grid than phase {names[ref_c]} "
                                 f"({problem}); resample it or pass --register")
            from nnunet_liver.registration import register_to_reference

            moved, report = register_to_reference(sitk.Cast(image, sitk.sitkFloat32),
                                                  sitk.Cast(ref, sitk.sitkFloat32), transform=registration_transform)
            array = sitk.GetArrayViewFromImage(moved)
            registration[names[c]] = registration_record(report)
        data = store_phase(data, c, array, shape)
        del array, image
    for c in missing:
        data[c] = MISSING_PHASE_VALUE
    constant = [c for c in present if is_missing_channel(data[c])]  # a file holding the missing-phase constant
    if len(constant) == len(present):
        raise InputError(f"case {case.case_id}: every phase image is the constant {MISSING_PHASE_VALUE:g} HU of a "
                         f"missing phase (no image)")
    if constant:
        present = [c for c in present if c not in constant]
        missing = sorted(missing + constant)
        ref_c = ref_c if ref_c in present else present[0]  # the grid stays the files' one; the report shows this
    spacing = tuple(float(s) for s in reversed(ref.GetSpacing()))
    return LoadedCase(case_id=case.case_id, data=data, spacing=spacing, reference=ref, reference_channel=ref_c,
                      phases_present=[names[c] for c in present], phases_missing=[names[c] for c in missing],
                      inputs={names[c]: (os.path.abspath(files[c]) if files[c] else None) for c in range(len(names))},
                      registration=registration)
