"""Which series of a study are axial CT volumes, their slice order and geometry, and their pixels as HU.

Selection (:func:`candidate_series`): CT Image Storage only (Enhanced CT, secondary captures, dose reports, SR and
other SOP classes are left out), no ``LOCALIZER`` image type (scouts), axial only (slice normal within 10 degrees of
the patient's z axis; sagittal and coronal reformats are left out), at least :data:`MIN_SLICES` slices. Every left-out
series is listed with its reason in CASE.json.

Geometry (:func:`series_geometry`): slices are ordered by the projection of ``ImagePositionPatient`` on the slice
normal (the cross product of the ``ImageOrientationPatient`` rows), never by file name or ``InstanceNumber``. A series
is refused, with one line naming it, when its slices have mixed orientations or sizes, duplicated positions, a gap
(a step more than 10 % off the median step), or a gantry tilt (positions not along the normal); resampling a tilted
or gapped series would invent anatomy the model then reads as real.

Pixels (:func:`read_series`): ``pydicom``'s ``pixel_array`` (compressed transfer syntaxes through its plugins:
``pylibjpeg-openjpeg`` for JPEG 2000, ``pylibjpeg-libjpeg`` for JPEG lossless/baseline and JPEG-LS, pydicom's own RLE
decoder), then pixel padding (``PixelPaddingValue`` and ``PixelPaddingRangeLimit``, compared with the stored values)
set to -1024 HU, then ``RescaleSlope``/``RescaleIntercept``; HU below -1024 (outside the field of view on some
scanners) become -1024. The result is a float32 SimpleITK image in LPS with the series' origin, spacing and direction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.dicom.index import CT_IMAGE_STORAGE, SeriesHeaders
from nnunet_liver.utils.io import InputError

__all__ = ["MIN_SLICES", "SeriesGeometry", "candidate_series", "series_geometry", "read_series"]

MIN_SLICES = 8
_AXIAL_COS = np.cos(np.deg2rad(10.0))
_GAP_TOL = 0.10
_TILT_TOL_DEG = 0.5
_AIR_HU = -1024.0


@dataclass
class SeriesGeometry:
    """A series' slices in position order and its SimpleITK geometry (x, y, z), in mm and LPS."""
    files: List[str]
    headers: list
    origin: Tuple[float, float, float]
    spacing: Tuple[float, float, float]
    direction: Tuple[float, ...]
    slice_thickness_mm: Optional[float]

    @property
    def size(self) -> Tuple[int, int, int]:
        return int(self.headers[0].Columns), int(self.headers[0].Rows), len(self.files)


def _orientation(ds) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float).reshape(2, 3)


def excluded_reason(series: SeriesHeaders) -> Optional[str]:
    """Why a series is not an axial CT volume (None when it is one)."""
    ds = series.first
    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop != CT_IMAGE_STORAGE:
        name = getattr(getattr(ds, "SOPClassUID", None), "name", sop)
        return f"not CT Image Storage ({name})"
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    if "LOCALIZER" in image_type:
        return "localizer (scout)"
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        return "no image position/orientation"
    row, col = _orientation(ds)
    normal = np.cross(row, col)
    if abs(normal[2]) / max(np.linalg.norm(normal), 1e-9) < _AXIAL_COS:
        return "not axial (a reformat)"
    if len(series.files) < MIN_SLICES:
        return f"{len(series.files)} slice(s), fewer than {MIN_SLICES}"
    return None


def candidate_series(series: Sequence[SeriesHeaders]) -> Tuple[List[SeriesHeaders], List[dict]]:
    """The axial CT image series of a study, and the others with their reasons (``{"series_uid", ...}``)."""
    keep, left_out = [], []
    for s in series:
        reason = excluded_reason(s)
        if reason is None:
            keep.append(s)
        else:
            left_out.append({"series_uid": s.uid, "series_number": s.number,
                             "description": str(s.get("SeriesDescription", "")), "reason": reason})
    return keep, left_out


def series_geometry(series: SeriesHeaders) -> SeriesGeometry:
    """Sort the slices of an axial series along its normal and check them (see the module docstring).

    Raises
    ------
    InputError
        mixed orientations or slice sizes, duplicated positions, a gap, or a gantry tilt; the message names the series.
    """
    what = series.describe()
    ori = [_orientation(h) for h in series.headers]
    if any(np.max(np.abs(o - ori[0])) > 1e-4 for o in ori):
        raise InputError(f"{what}: mixed slice orientations (ImageOrientationPatient differs between slices)")
    sizes = {(int(h.Rows), int(h.Columns)) for h in series.headers}
    spacings = {tuple(round(float(v), 5) for v in h.PixelSpacing) for h in series.headers}
    if len(sizes) > 1 or len(spacings) > 1:
        raise InputError(f"{what}: slices of different sizes or pixel spacings {sorted(sizes)} {sorted(spacings)}")
    row, col = ori[0]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in series.headers])
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    proj, positions = proj[order], positions[order]
    steps = np.diff(proj)
    if np.any(steps < 1e-3):
        k = int(np.argmin(steps))
        raise InputError(f"{what}: duplicated slice position {proj[k]:.2f} mm along the slice normal "
                         f"({series.files[order[k]]} and {series.files[order[k + 1]]})")
    step = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - step) > _GAP_TOL * step)
    if bad.size:
        k = int(bad[0])
        raise InputError(f"{what}: non-uniform slice spacing, a step of {steps[k]:.2f} mm after "
                         f"{proj[k]:.2f} mm where the series steps {step:.2f} mm (a missing slice?)")
    axis = positions[-1] - positions[0]
    cos = abs(float(axis @ normal)) / max(float(np.linalg.norm(axis)), 1e-9)
    tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    if tilt > _TILT_TOL_DEG:
        raise InputError(f"{what}: gantry tilt of {tilt:.1f} degrees (slice positions do not follow the slice "
                         f"normal); resample it to an untilted volume first")
    first = series.headers[order[0]]
    ps = [float(v) for v in first.PixelSpacing]  # (row spacing = along a column (y), column spacing (x))
    direction = np.stack([row, col, normal], axis=1)  # columns: image x, y, z axes in LPS
    thickness = getattr(first, "SliceThickness", None)
    return SeriesGeometry([series.files[i] for i in order], [series.headers[i] for i in order],
                          tuple(float(v) for v in positions[0]), (ps[1], ps[0], step),
                          tuple(float(v) for v in direction.ravel()),
                          float(thickness) if thickness not in (None, "") else None)


def _slice_hu(ds, path: str) -> np.ndarray:
    """One slice in HU (float32): stored values -> padding -> rescale."""
    try:
        stored = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise many types; all mean "cannot decode this file"
        ts = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        name = getattr(ts, "name", str(ts))
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise InputError(f"{path}: cannot decode the pixel data (transfer syntax {name}: {first}); install the "
                         f"pydicom plugins (pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg) or decompress it "
                         f"(e.g. gdcmconv --raw)") from None
    if stored.ndim != 2:
        raise InputError(f"{path}: a multi-frame or colour image ({stored.shape}); one grey slice per file expected")
    pad = getattr(ds, "PixelPaddingValue", None)
    padding = None
    if pad is not None:
        limit = getattr(ds, "PixelPaddingRangeLimit", None)
        lo, hi = (pad, pad) if limit is None else (min(pad, limit), max(pad, limit))
        padding = (stored >= lo) & (stored <= hi)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if padding is not None:
        hu[padding] = _AIR_HU
    np.maximum(hu, _AIR_HU, out=hu)
    return hu


def read_series(geometry: SeriesGeometry, slices: Optional[Sequence[int]] = None):
    """The series (or the slices ``slices`` of it, indices in position order) as a float32 SimpleITK image in HU.

    Raises
    ------
    InputError
        a file that cannot be read or decoded (corrupt, truncated, unsupported transfer syntax), naming it.
    """
    import pydicom
    import SimpleITK as sitk

    index = list(range(len(geometry.files))) if slices is None else list(slices)
    cols, rows = geometry.size[:2]
    volume = np.empty((len(index), rows, cols), np.float32)
    for k, i in enumerate(index):
        path = geometry.files[i]
        try:
            ds = pydicom.dcmread(path)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: cannot read the DICOM file ({type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:160]})") from None
        hu = _slice_hu(ds, path)
        if hu.shape != (rows, cols):
            raise InputError(f"{path}: slice of {hu.shape} pixels in a series of {(rows, cols)}")
        volume[k] = hu
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    origin = np.asarray(geometry.origin)
    if index and index[0] != 0:
        origin = origin + index[0] * geometry.spacing[2] * np.asarray(geometry.direction).reshape(3, 3)[:, 2]
    image.SetOrigin(tuple(float(v) for v in origin))
    if slices is not None and len(index) > 1:  # a subsample: spacing along z as sampled
        step = (index[1] - index[0]) * geometry.spacing[2]
        image.SetSpacing((geometry.spacing[0], geometry.spacing[1], step))
    return image
