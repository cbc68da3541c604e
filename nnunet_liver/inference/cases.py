"""Find the cases of an input folder, validate their files and load them as the model's input channels.

Cases follow nnU-Net's naming: ``CASE_0000.nii.gz`` ... one file per channel, in the channel order of the model's
dataset.json (for our models NC, A, V, D). A case may lack a phase file only when the model is an IFM model; the
phase is then filled with the constant :data:`nnunet_liver.labels.MISSING_PHASE_VALUE`. All present phases must share
the reference phase's grid (venous if present, else the first present phase) unless registration is asked for, in
which case every other phase is registered onto the reference grid with SimpleITK.

DICOM studies under the input folder (any depth, one case per StudyInstanceUID) are cases too: their phases are
identified and read by :mod:`nnunet_liver.dicom` (see its docs), which also registers them onto the reference phase.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import MISSING_PHASE_VALUE
from nnunet_liver.utils.io import InputError, read_image

__all__ = ["CaseFiles", "LoadedCase", "discover_cases", "validate_case_id", "load_case", "shard", "holds_int16",
           "store_phase"]

_CASE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
#: tolerances when comparing the geometry of two phases
_SPACING_TOL_MM, _ORIGIN_TOL_MM, _DIRECTION_TOL = 1e-3, 1e-2, 1e-4


@dataclass
class CaseFiles:
    """One case: its id and one file path per model channel (``None`` for a missing phase)."""
    case_id: str
    files: List[Optional[str]]
    error: Optional[str] = None  # a problem found during discovery, reported when the case is loaded
    dicom: Optional[object] = None  # a nnunet_liver.dicom.DicomStudy: the case is read from DICOM


@dataclass
class LoadedCase:
    """A case on the reference grid. ``data`` is (C, Z, Y, X) HU in the model's channel order: int16 when every phase
    holds whole HU values within int16 (most CT, see :func:`store_phase`), else float32."""
    case_id: str
    data: np.ndarray
    spacing: Tuple[float, float, float]
    reference: object  # SimpleITK image whose geometry every output takes
    reference_channel: int
    phases_present: List[str]
    phases_missing: List[str]
    inputs: Dict[str, Optional[str]]
    registration: Dict[str, dict] = field(default_factory=dict)

    def images_by_phase(self) -> Dict[str, np.ndarray]:
        """Present phases as {name: (Z, Y, X) HU array} (views, not copies)."""
        names = list(self.inputs)
        return {names[c]: self.data[c] for c in range(self.data.shape[0]) if names[c] in self.phases_present}


def validate_case_id(case_id: str) -> str:
    """Return ``case_id`` if it is a plain name (letters, digits, ``_ . -``; no path parts), else raise InputError."""
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id) or ".." in case_id:
        raise InputError(f"case id {case_id!r}: not a plain file name (use letters, digits, '_', '.', '-'; no "
                         f"path separators, no '..', no leading '.' or '-')")
    return case_id


def discover_cases(input_dir: str, num_channels: int, file_ending: str = ".nii.gz",
                   phase_map: Optional[Dict[str, str]] = None, exclude: Optional[str] = None) -> List[CaseFiles]:
    """Cases of ``input_dir`` named ``CASE_XXXX<file_ending>``, sorted by id; absent channels are ``None``; then the
    DICOM studies found under ``input_dir`` but not under ``exclude`` (the output folder) (``phase_map``:
    ``--phase-map``, series number or UID -> phase).

    Case ids are not validated here (:func:`load_case` does it, so a bad id fails that case only); nor are files
    whose channel index is beyond ``num_channels`` (the case carries an ``error`` that load_case raises).
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
    from nnunet_liver.dicom.index import has_dicom, index_studies

    if has_dicom(input_dir, exclude=exclude):
        for study in index_studies(input_dir, exclude)[0]:
            study.phase_map = dict(phase_map or {})
            clash = f"{study.folder}: DICOM study {study.case_id} has the id of a NIfTI case of {input_dir}"
            cases.append(CaseFiles(study.case_id, [None] * num_channels,
                                   clash if study.case_id in by_case else None, dicom=study))
    return cases


def shard(items: Sequence, num_parts: int = 1, part_id: int = 0) -> list:
    """The ``part_id``-th of ``num_parts`` interleaved shards (``items[part_id::num_parts]``, as nnUNetv2_predict)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InputError(f"--part-id {part_id} / --num-parts {num_parts}: need num_parts >= 1 and "
                         f"0 <= part_id < num_parts")
    return list(items)[part_id::num_parts]


def _same_geometry(a, b) -> Optional[str]:
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    if np.max(np.abs(np.subtract(a.GetSpacing(), b.GetSpacing()))) > _SPACING_TOL_MM:
        return f"spacing {a.GetSpacing()} vs {b.GetSpacing()}"
    if np.max(np.abs(np.subtract(a.GetOrigin(), b.GetOrigin()))) > _ORIGIN_TOL_MM:
        return f"origin {a.GetOrigin()} vs {b.GetOrigin()}"
    if np.max(np.abs(np.subtract(a.GetDirection(), b.GetDirection()))) > _DIRECTION_TOL:
        return "direction differs"
    return None


def _json_ready(report: dict) -> dict:
    """The registration report's scalar, string and number-list entries, as plain JSON values."""
    out = {}
    for k, v in dict(report).items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out[k] = float(v)
        elif isinstance(v, str):
            out[k] = v
        elif isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, (int, float, np.number)) for x in v):
            out[k] = [float(x) for x in v]
    return out


_INT16 = np.iinfo(np.int16)


def holds_int16(array: np.ndarray) -> bool:
    """Whether every value of ``array`` is a whole number within int16, so that int16 holds it exactly.

    CT is stored as int16 (DICOM, most NIfTI), sometimes as float32 holding whole HU; int16 halves the memory of the
    case the detector keeps (1.25 GB instead of 2.5 GB for four phases of 600 x 512 x 512) and changes no value:
    nnU-Net's preprocessing converts its input to float32 first (``run_case_npy``), the features take medians and
    means in float64.
    """
    if array.dtype in (np.int16, np.int8, np.uint8, np.bool_):
        return True
    if array.size == 0:
        return True
    lo, hi = array.min(), array.max()
    if not (_INT16.min <= lo and hi <= _INT16.max):
        return False
    if array.dtype.kind in "iu":
        return True
    if array.dtype.kind != "f":
        return False
    flat = array.reshape(-1)
    step = 1 << 22  # a few MB at a time: no whole-volume temporaries
    return not any(np.any(flat[i:i + step] != np.rint(flat[i:i + step])) for i in range(0, flat.size, step))


def store_phase(data: Optional[np.ndarray], c: int, array: np.ndarray, shape_czyx) -> np.ndarray:
    """Put phase ``array`` (Z, Y, X) into channel ``c`` of the case array and return the array.

    ``data=None`` allocates the (C, Z, Y, X) case: int16 when ``array`` fits it (:func:`holds_int16`), else float32.
    A later phase that does not fit int16 (a float image, a registered phase) turns the case into float32 once.
    """
    fits = holds_int16(array)
    if data is None:
        data = np.empty(tuple(shape_czyx), dtype=np.int16 if fits else np.float32)
    elif data.dtype != np.float32 and not fits:
        data = data.astype(np.float32)
    data[c] = array
    return data


def load_case(case: CaseFiles, channel_names: Sequence[str], allow_missing: bool, register: bool = False,
              registration_transform: str = "rigid") -> LoadedCase:
    """Read, check and align one case; fill missing phases when ``allow_missing``.

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
        from nnunet_liver.dicom.study import load_dicom_case

        return load_dicom_case(case.dicom, channel_names, allow_missing, registration_transform)
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
        problem = _same_geometry(image, ref)
        if problem is not None:
            if not register:
                raise InputError(f"{files[c]}: phase {names[c]} is on a different grid than phase {names[ref_c]} "
                                 f"({problem}); resample it or pass --register")
            from nnunet_liver.registration import register_to_reference

            moved, report = register_to_reference(sitk.Cast(image, sitk.sitkFloat32),
                                                  sitk.Cast(ref, sitk.sitkFloat32), transform=registration_transform)
            array = sitk.GetArrayViewFromImage(moved)
            registration[names[c]] = _json_ready(report)
        data = store_phase(data, c, array, shape)
        del array, image
    for c in missing:
        data[c] = MISSING_PHASE_VALUE
    spacing = tuple(float(s) for s in reversed(ref.GetSpacing()))
    return LoadedCase(case_id=case.case_id, data=data, spacing=spacing, reference=ref, reference_channel=ref_c,
                      phases_present=[names[c] for c in present], phases_missing=[names[c] for c in missing],
                      inputs={names[c]: (os.path.abspath(files[c]) if files[c] else None) for c in range(len(names))},
                      registration=registration)
