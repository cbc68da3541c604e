"""The case every loader builds: the model's input channels on one reference grid (:class:`LoadedCase`).

Two loaders read cases, both on top of this module: NIfTI files named as nnU-Net names them
(:func:`nnunet_liver.inference.cases.load_case`) and DICOM studies (:func:`nnunet_liver.dicom.study.load_dicom_case`);
detection picks the loader of each discovered case (:func:`nnunet_liver.inference.inputs.load_input`). What both
share lives here: the case type, the case-id rule, the geometry comparison of two phases, the JSON form of a
registration report and the int16-or-float32 storage of the phases.

Arrays are (C, Z, Y, X) and spacings (z, y, x) in mm; origins and directions are SimpleITK's (x, y, z).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_liver.labels import MISSING_PHASE_VALUE
from nnunet_liver.utils.io import InputError

__all__ = ["LoadedCase", "validate_case_id", "same_geometry", "registration_record", "holds_int16", "store_phase",
           "is_missing_channel",
           "SPACING_TOL_MM", "ORIGIN_TOL_MM", "DIRECTION_TOL"]

_CASE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
#: tolerances when comparing the geometry of two phases (mm, mm, direction cosines)
SPACING_TOL_MM, ORIGIN_TOL_MM, DIRECTION_TOL = 1e-3, 1e-2, 1e-4


@dataclass
class LoadedCase:
    """A case on the reference grid. ``data`` is (C, Z, Y, X) HU in the model's channel order: int16 when every phase
    holds whole HU values within int16 (most CT, see :func:`store_phase`), else float32.

    ``reference`` is the SimpleITK image whose geometry every output takes (the reference phase: V when present,
    else the first present phase); ``inputs`` maps each channel name to its file or folder (None when missing);
    ``registration`` holds the report of every phase registered onto the reference (:func:`registration_record`).
    """
    case_id: str
    data: np.ndarray
    spacing: Tuple[float, float, float]
    reference: object
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


def same_geometry(a, b) -> Optional[str]:
    """None when the SimpleITK images ``a`` and ``b`` share a grid (size, spacing, origin, direction within the
    tolerances above), else what differs, in words."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    if np.max(np.abs(np.subtract(a.GetSpacing(), b.GetSpacing()))) > SPACING_TOL_MM:
        return f"spacing {a.GetSpacing()} vs {b.GetSpacing()}"
    if np.max(np.abs(np.subtract(a.GetOrigin(), b.GetOrigin()))) > ORIGIN_TOL_MM:
        return f"origin {a.GetOrigin()} vs {b.GetOrigin()}"
    if np.max(np.abs(np.subtract(a.GetDirection(), b.GetDirection()))) > DIRECTION_TOL:
        return "direction differs"
    return None


def registration_record(report: dict) -> dict:
    """A registration report's scalar, string and number-list entries as plain JSON values (CASE.json's
    ``geometry.registration``)."""
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


def is_missing_channel(array: np.ndarray) -> bool:
    """Whether ``array`` holds nothing but :data:`nnunet_liver.labels.MISSING_PHASE_VALUE`: a missing phase, however
    it came (no file, or a converted case's constant channel). Slab by slab, stopping at the first other value."""
    flat = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    step = max(1, (1 << 22) // max(flat.shape[1], 1))
    return all(bool(np.all(flat[i:i + step] == MISSING_PHASE_VALUE)) for i in range(0, flat.shape[0], step))
