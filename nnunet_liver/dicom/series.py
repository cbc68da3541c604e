"""Which series of a study are axial CT volumes, their slice order and geometry, and their pixels as HU.

Selection (:func:`candidate_series`), judged image by image (never by a series' first file): an image counts when it
is CT Image Storage (Enhanced CT, secondary captures, dose reports, SR and other SOP classes are left out), not a
``LOCALIZER`` image type (scout), has a position and orientation, and is axial (slice normal within 10 degrees of the
patient's z axis). Images that do not count (GE's thick ``Ax 5.00mm`` reformats carry one coronal reference image in
the axial series) and a stray image far beyond either end of an otherwise regular stack (more than
:data:`STRAY_STEPS` slice steps from its neighbour) are left out, each with its reason in CASE.json, and the axial
stack is used; a series keeps at least :data:`MIN_SLICES` slices or is left out with its reason.

Geometry (:func:`series_geometry`): slices are ordered by the projection of ``ImagePositionPatient`` on the slice
normal (the cross product of the ``ImageOrientationPatient`` rows), never by file name or ``InstanceNumber``. A series
is refused, with one line naming it, when its slices have mixed axial orientations or sizes, duplicated positions, a
gap inside the stack (a step more than 10 % off the median step), or a gantry tilt (positions not along the normal);
resampling a tilted or gapped series would invent anatomy the model then reads as real.

Pixels (:func:`read_series`): ``pydicom``'s ``pixel_array`` (compressed transfer syntaxes through its plugins:
``pylibjpeg-openjpeg`` for JPEG 2000, ``pylibjpeg-libjpeg`` for JPEG lossless/baseline and JPEG-LS, pydicom's own RLE
decoder; a file without preamble and file meta takes the transfer syntax its header was read with), then pixel padding
(``PixelPaddingValue`` and ``PixelPaddingRangeLimit``, compared with the stored values) set to -1024 HU, then the
modality LUT (``pydicom.pixels.apply_modality_lut``: ``RescaleSlope``/``RescaleIntercept`` or a Modality LUT
Sequence); HU below -1024 (outside the field of view on some scanners) become -1024. The result is a float32
SimpleITK image in LPS with the series' origin, spacing and direction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.dicom.index import CT_IMAGE_STORAGE, SeriesHeaders
from nnunet_liver.utils.io import InputError

__all__ = ["MIN_SLICES", "STRAY_STEPS", "SeriesGeometry", "candidate_series", "axial_stack", "excluded_reason",
           "series_geometry", "read_series"]

MIN_SLICES = 8
#: an image at an end of the stack more than this many slice steps from its neighbour is a stray, not a gap
STRAY_STEPS = 3.0
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


def _plane(ds) -> str:
    """The anatomical plane of an image from its slice normal: axial, coronal, sagittal or oblique."""
    row, col = _orientation(ds)
    normal = np.abs(np.cross(row, col))
    normal /= max(float(np.linalg.norm(normal)), 1e-9)
    axis = int(np.argmax(normal))
    if normal[axis] < _AXIAL_COS:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _image_reason(ds) -> Optional[str]:
    """Why one image is not a slice of an axial CT volume (None when it is one)."""
    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop != CT_IMAGE_STORAGE:
        name = getattr(getattr(ds, "SOPClassUID", None), "name", sop)
        return f"not CT Image Storage ({name})"
    image_type = [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]
    if "LOCALIZER" in image_type:
        return "localizer (scout)"
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        return "no image position/orientation"
    plane = _plane(ds)
    if plane != "axial":
        return f"not axial (a {plane} reformat)"
    return None


def _strays(headers: list) -> List[int]:
    """Indices of images lying alone beyond either end of the stack, more than STRAY_STEPS slice steps from their
    neighbour, as long as MIN_SLICES slices remain."""
    if len(headers) <= MIN_SLICES:
        return []
    row, col = _orientation(headers[0])
    normal = np.cross(row, col)
    normal /= max(float(np.linalg.norm(normal)), 1e-9)
    proj = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers]) @ normal
    order = np.argsort(proj, kind="stable")
    p = proj[order]
    step = float(np.median(np.diff(p)))
    if step < 1e-3:
        return []
    lo, hi, out = 0, len(p) - 1, []
    while hi - lo + 1 > MIN_SLICES and p[lo + 1] - p[lo] > STRAY_STEPS * step:
        out.append(int(order[lo]))
        lo += 1
    while hi - lo + 1 > MIN_SLICES and p[hi] - p[hi - 1] > STRAY_STEPS * step:
        out.append(int(order[hi]))
        hi -= 1
    return out


def axial_stack(series: SeriesHeaders) -> Tuple[Optional[SeriesHeaders], Optional[str], List[Tuple[str, str]]]:
    """The series' axial CT stack judged by all its images: ``(stack, None, left_out)`` or ``(None, reason,
    left_out)`` when no usable stack remains; ``left_out``: (file, reason) of every image left out."""
    keep, left = [], []
    for f, h in zip(series.files, series.headers):
        reason = _image_reason(h)
        if reason is None:
            keep.append((f, h))
        else:
            left.append((f, reason))
    for i in sorted(_strays([h for _, h in keep]), reverse=True):
        f, h = keep.pop(i)
        left.append((f, f"stray image: more than {STRAY_STEPS:g} slice steps beyond the end of the axial stack"))
    if not keep:
        reasons = sorted({r for _, r in left})
        return None, (reasons[0] if len(reasons) == 1 else
                      "no axial CT image (" + "; ".join(f"{sum(r == x for _, r in left)} {x}" for x in reasons)
                      + ")"), left
    if len(keep) < MIN_SLICES:
        extra = f" ({len(left)} other image(s) left out)" if left else ""
        return None, f"{len(keep)} slice(s), fewer than {MIN_SLICES}{extra}", left
    stack = SeriesHeaders(series.uid, [f for f, _ in keep], [h for _, h in keep])
    return stack, None, left


def excluded_reason(series: SeriesHeaders) -> Optional[str]:
    """Why a series holds no axial CT volume (None when it does), judged by all its images."""
    return axial_stack(series)[1]


def candidate_series(series: Sequence[SeriesHeaders]) -> Tuple[List[SeriesHeaders], List[dict]]:
    """The axial CT stacks of a study's series (without the images left out), and what was left out with the
    reasons: ``{"series_uid", "series_number", "description", "reason"}`` per series left out, and per series used
    with some images left out the same plus ``"files"`` and ``"reasons"`` (one per file)."""
    keep, left_out = [], []
    for s in series:
        stack, reason, images = axial_stack(s)
        entry = {"series_uid": s.uid, "series_number": s.number, "description": str(s.get("SeriesDescription", ""))}
        if stack is None:
            left_out.append(dict(entry, reason=reason))
            continue
        keep.append(stack)
        if images:
            kinds = sorted({r for _, r in images})
            left_out.append(dict(entry, reason=f"{len(images)} image(s) left out, the axial stack of "
                                               f"{len(stack.files)} used: " + "; ".join(kinds),
                                 files=[f for f, _ in images], reasons=[r for _, r in images]))
    return keep, left_out


def series_geometry(series: SeriesHeaders) -> SeriesGeometry:
    """Sort the slices of an axial series along its normal and check them (see the module docstring).

    Raises
    ------
    InputError
        mixed orientations or slice sizes, duplicated positions, a gap, or a gantry tilt; the message names the series.
    """
    what = f"{os.path.dirname(series.files[0])}: {series.describe()}" if series.files else series.describe()
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


#: words of pydicom's errors that mean "no decoder for this transfer syntax" (the plugins would help)
_NO_DECODER = ("not supported", "no pixel data decoders", "missing required dependencies", "plugin")


def _short(e: Exception, limit: int = 240) -> str:
    """The first line of an exception's message, cut at a word boundary when longer than ``limit``."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _transfer_syntax(ds):
    """The dataset's transfer syntax UID; for a file read without file meta, the encoding its header was read in."""
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return None
    return ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _slice_hu(ds, path: str) -> np.ndarray:
    """One slice in HU (float32): stored values -> padding -> modality LUT (rescale)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import apply_modality_lut

    ts = _transfer_syntax(ds)
    if ts is not None and not (getattr(ds, "file_meta", None) or {}).get("TransferSyntaxUID"):
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts  # a file without file meta: the syntax its header was read in
    try:
        stored = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise many types; all mean "cannot decode this file"
        name = getattr(ts, "name", str(ts))
        detail = _short(e)
        if ts is not None and ts.is_compressed and any(w in detail.lower() for w in _NO_DECODER):
            raise InputError(f"{path}: cannot decode the pixel data (transfer syntax {name}: {detail}); install the "
                             f"pydicom plugins (pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg) or decompress it "
                             f"(e.g. gdcmconv --raw)") from None
        kind = "compressed " if ts is not None and ts.is_compressed else ""
        raise InputError(f"{path}: truncated or corrupt {kind}pixel data (transfer syntax {name}: {detail})") from None
    if stored.ndim != 2:
        raise InputError(f"{path}: a multi-frame or colour image ({stored.shape}); one grey slice per file expected")
    pad = getattr(ds, "PixelPaddingValue", None)
    padding = None
    if pad is not None:
        limit = getattr(ds, "PixelPaddingRangeLimit", None)
        lo, hi = (pad, pad) if limit is None else (min(pad, limit), max(pad, limit))
        padding = (stored >= lo) & (stored <= hi)
    hu = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
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
            ds = pydicom.dcmread(path, force=True)  # indexing checked it is DICOM, with or without preamble
        except Exception as e:  # noqa: BLE001
            raise InputError(f"{path}: cannot read the DICOM file ({type(e).__name__}: {_short(e)})") from None
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
