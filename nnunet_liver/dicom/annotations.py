"""Annotations that sit with a DICOM study: DICOM SEG and RTSTRUCT -> a label map in our ids on the annotated series.

Finding them (:func:`find_annotations`): every instance of the study whose SOP class is Segmentation Storage or RT
Structure Set Storage, at any depth (the index reads them with the images). Each names the series it was drawn on: a
SEG by its ``ReferencedSeriesSequence`` (else by the source images of its frames), an RTSTRUCT by the
``RTReferencedSeriesSequence`` of its frame of reference (else by its contour images). That series must be in the study;
it becomes the case's reference phase.

Reading (:func:`read_structures`), always onto the referenced series' slices in position order (the ``headers`` of
:func:`nnunet_liver.dicom.series.series_geometry`):

- **SEG** (highdicom ``segread``; pixels through pydicom's decoders, so every transfer syntax pydicom decodes:
  uncompressed, deflated, RLE, JPEG 2000, JPEG-LS, and 1-bit frames that are not byte-aligned). Each frame is placed
  by its ``ImagePositionPatient`` (per-frame Plane Position), never by its frame number: it must lie on a slice of
  the series (within 5 % of the slice step along the normal and 5 % of a pixel in-plane), with the series'
  orientation, rows, columns and pixel spacing. Slices no frame covers are background (most SEGs hold only the slices
  with the organ). A **fractional** SEG's voxel is in the segment when its value is at least half of
  ``MaximumFractionalValue``.
- **RTSTRUCT** (pydicom): each ``CLOSED_PLANAR`` contour is put on the slice its points lie on (within 5 % of the slice
  step; a contour between two slices is refused with the ROI named) and filled with ``skimage.draw.polygon`` on pixel
  centres; the contours of one ROI on one slice are combined by the **even-odd rule** (a contour inside another
  cuts a hole, one inside the hole fills again). ``POINT`` and ``OPEN_PLANAR`` contours enclose nothing and are left
  out; an ROI with no closed contour is refused.

Mapping (:class:`LabelMapping`): each segment or ROI gets one of our classes by, in this order, the user's
``--label-map NAME=CLASS`` entries (NAME matched without regard to case, spaces, ``_`` or ``-``, against the segment
label or ROI name, or ``SCT:CODE`` against the segmented property type code), the default names
(:data:`DEFAULT_NAMES`) and the default SNOMED CT codes (:data:`DEFAULT_CODES`). A tumour (Tumor, Tumour, Mass,
Neoplasm, Lesion ...) has no type in the annotation: it becomes the lesion type given for the case (``--tumor-type``,
or per case from a CSV). Structures that map to nothing (e.g. the aorta: our scheme has no class for it) are reported
and left out, and are not read. Overlaps are resolved by :data:`OVERLAP_ORDER`: the more specific structure wins (a
lesion over the vessels over the other organs over the liver; between lesion types the higher patient priority, HCC >
ICC > Meta > Hem > Other > Cyst).

Errors are :class:`~nnunet_liver.utils.io.InputError` lines naming the file: a referenced series not in the study,
a frame that matches no slice, an empty segment or ROI, a segment on another frame of reference, an ROI without
contour, a mapping naming an unknown class.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver import labels as L
from nnunet_liver.utils.io import InputError

__all__ = ["SEG_STORAGE", "RTSTRUCT_STORAGE", "TUMOR", "IGNORE", "DEFAULT_NAMES", "DEFAULT_CODES", "OVERLAP_ORDER",
           "AnnotationFile", "Structure", "LabelMapping", "read_annotation", "find_annotations", "annotated_series",
           "structures", "read_structures", "label_map", "parse_label_map"]

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: mapping targets besides our class names: the case's tumour type, and "leave out"
TUMOR, IGNORE = "tumor", "ignore"
_TOL = 0.05  # fraction of a slice step (along the normal) or of a pixel (in-plane)

#: default names (normalised: lower case, single spaces) -> our class name, TUMOR or IGNORE
DEFAULT_NAMES: Dict[str, str] = {
    "liver": "liver", "liver parenchyma": "liver", "hepatic parenchyma": "liver",
    "portal vein": "portal_splenic_vein", "portal vein and splenic vein": "portal_splenic_vein",
    "portal and splenic vein": "portal_splenic_vein", "portal splenic vein": "portal_splenic_vein",
    "splenic vein": "portal_splenic_vein",
    "hepatic vessels": "hepatic_vessels", "hepatic vessel": "hepatic_vessels", "hepatic vein": "hepatic_vessels",
    "hepatic veins": "hepatic_vessels",
    "gallbladder": "gallbladder", "gall bladder": "gallbladder", "spleen": "spleen", "pancreas": "pancreas",
    "stomach": "stomach",
    "tumor": TUMOR, "tumour": TUMOR, "tumors": TUMOR, "tumours": TUMOR, "mass": TUMOR, "neoplasm": TUMOR,
    "lesion": TUMOR, "lesions": TUMOR, "liver tumor": TUMOR, "liver tumour": TUMOR, "liver lesion": TUMOR,
    "liver mass": TUMOR, "hepatic tumor": TUMOR, "hepatic lesion": TUMOR,
    **{n.lower(): n for n in L.LESION_NAMES},
}
#: default SNOMED CT codes of the segmented property type -> our class name or TUMOR
DEFAULT_CODES: Dict[str, str] = {
    "10200004": "liver", "32764006": "portal_splenic_vein", "35819009": "portal_splenic_vein",
    "28231008": "gallbladder", "78961009": "spleen", "15776009": "pancreas", "69695003": "stomach",
    "108369006": TUMOR, "4147007": TUMOR, "25370001": "HCC",
    "T-62000": "liver",  # SNOMED RT's Liver, as older tools (dcmqi's examples) write it
}
_SNOMED = ("SCT", "SRT", "SNM3", "99SDM")
#: overlaps: a voxel claimed by several structures takes the class that comes first here
OVERLAP_ORDER: Tuple[int, ...] = L.LESION_PRIORITY + (L.HEPATIC_VESSELS, L.PORTAL_SPLENIC_VEIN, L.GALLBLADDER,
                                                      L.SPLEEN, L.PANCREAS, L.STOMACH, L.LIVER)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


@dataclass
class AnnotationFile:
    """One SEG or RTSTRUCT instance of a study."""
    path: str
    kind: str  # "SEG" | "RTSTRUCT"
    header: object  # pydicom Dataset without pixel data
    referenced_series: List[str] = field(default_factory=list)  # series UIDs it names
    referenced_instances: List[str] = field(default_factory=list)  # SOP instance UIDs it names

    @property
    def frame_of_reference(self) -> str:
        return str(getattr(self.header, "FrameOfReferenceUID", "") or "")


@dataclass
class Structure:
    """One segment (SEG) or ROI (RTSTRUCT)."""
    name: str
    number: int
    codes: List[Tuple[str, str, str]]  # (scheme, value, meaning) of the segmented property type
    file: AnnotationFile
    mask: Optional[np.ndarray] = None  # bool (z, y, x) on the referenced series, once read

    def describe(self) -> str:
        what = "segment" if self.file.kind == "SEG" else "ROI"
        return f"{self.file.path}: {what} {self.number} {self.name!r}"


def _seq(ds, keyword) -> list:
    return list(getattr(ds, keyword, None) or [])


def _annotation_file(path: str, ds) -> AnnotationFile:
    kind = "SEG" if str(ds.SOPClassUID) == SEG_STORAGE else "RTSTRUCT"
    series, instances = [], []
    if kind == "SEG":
        series = [str(s.SeriesInstanceUID) for s in _seq(ds, "ReferencedSeriesSequence")]
        for s in _seq(ds, "ReferencedSeriesSequence"):
            instances += [str(i.ReferencedSOPInstanceUID) for i in _seq(s, "ReferencedInstanceSequence")]
        groups = _seq(ds, "SharedFunctionalGroupsSequence") + _seq(ds, "PerFrameFunctionalGroupsSequence")
        for g in groups:
            for d in _seq(g, "DerivationImageSequence"):
                instances += [str(i.ReferencedSOPInstanceUID) for i in _seq(d, "SourceImageSequence")]
    else:
        for f in _seq(ds, "ReferencedFrameOfReferenceSequence"):
            for st in _seq(f, "RTReferencedStudySequence"):
                for se in _seq(st, "RTReferencedSeriesSequence"):
                    series.append(str(se.SeriesInstanceUID))
                    instances += [str(i.ReferencedSOPInstanceUID) for i in _seq(se, "ContourImageSequence")]
        for roi in _seq(ds, "ROIContourSequence"):
            for c in _seq(roi, "ContourSequence"):
                instances += [str(i.ReferencedSOPInstanceUID) for i in _seq(c, "ContourImageSequence")]
    return AnnotationFile(path, kind, ds, list(dict.fromkeys(series)), list(dict.fromkeys(instances)))


def read_annotation(path: str) -> AnnotationFile:
    """One SEG or RTSTRUCT file (header only); InputError when it is neither."""
    from nnunet_liver.dicom.index import read_header

    ds, reason = read_header(path)
    if ds is None or str(getattr(ds, "SOPClassUID", "")) not in (SEG_STORAGE, RTSTRUCT_STORAGE):
        raise InputError(f"{path}: not a DICOM SEG or RTSTRUCT ({reason or 'another SOP class'})")
    return _annotation_file(path, ds)


def find_annotations(study) -> List[AnnotationFile]:
    """The SEG and RTSTRUCT instances of a :class:`~nnunet_liver.dicom.index.DicomStudy`, in file order."""
    out = []
    for s in study.series.values():
        for path, ds in zip(s.files, s.headers):
            if str(getattr(ds, "SOPClassUID", "")) in (SEG_STORAGE, RTSTRUCT_STORAGE):
                out.append(_annotation_file(path, ds))
    return sorted(out, key=lambda a: a.path)


def annotated_series(study, annotations: Sequence[AnnotationFile]) -> str:
    """The one image series of ``study`` the annotations are drawn on (InputError naming the file otherwise)."""
    images = {uid for uid, s in study.series.items()
              if not any(str(getattr(h, "SOPClassUID", "")) in (SEG_STORAGE, RTSTRUCT_STORAGE) for h in s.headers)}
    by_instance = {str(h.SOPInstanceUID): uid for uid in images for h in study.series[uid].headers}
    found = {}
    for a in annotations:
        named = [u for u in a.referenced_series if u in images]
        if not named:
            named = sorted({by_instance[i] for i in a.referenced_instances if i in by_instance})
        if not named:
            what = (f"series {', '.join(a.referenced_series)}" if a.referenced_series else
                    "no series (and none of its referenced images)")
            raise InputError(f"{a.path}: {a.kind} references {what}, which is not in the study "
                             f"(study folder {study.folder})")
        if len(named) > 1:
            raise InputError(f"{a.path}: {a.kind} references {len(named)} image series of the study; one series "
                             f"per annotation is supported")
        found[a.path] = named[0]
    uids = sorted(set(found.values()))
    if len(uids) > 1:
        raise InputError(f"{annotations[0].path}: the study's annotations are drawn on {len(uids)} different series "
                         f"({', '.join(os.path.basename(p) + ' -> ' + u for p, u in found.items())}); keep the "
                         f"annotations of one series per study")
    return uids[0]


def _codes(item) -> List[Tuple[str, str, str]]:
    out = []
    for c in _seq(item, "SegmentedPropertyTypeCodeSequence") + _seq(item, "RTROIIdentificationCodeSequence"):
        out.append((str(getattr(c, "CodingSchemeDesignator", "")), str(getattr(c, "CodeValue", "")),
                    str(getattr(c, "CodeMeaning", ""))))
    return out


def structures(annotation: AnnotationFile) -> List[Structure]:
    """The segments / ROIs an annotation declares (not yet read)."""
    ds = annotation.header
    if annotation.kind == "SEG":
        return [Structure(str(getattr(s, "SegmentLabel", "") or f"segment {s.SegmentNumber}"), int(s.SegmentNumber),
                          _codes(s), annotation) for s in _seq(ds, "SegmentSequence")]
    observations = {int(o.ReferencedROINumber): o for o in _seq(ds, "RTROIObservationsSequence")
                    if "ReferencedROINumber" in o}
    return [Structure(str(getattr(r, "ROIName", "") or f"ROI {r.ROINumber}"), int(r.ROINumber),
                      _codes(observations.get(int(r.ROINumber))) if int(r.ROINumber) in observations else [],
                      annotation) for r in _seq(ds, "StructureSetROISequence")]


class _Grid:
    """The referenced series' slices in position order: positions, axes, spacing."""

    def __init__(self, headers: Sequence, what: str):
        h = headers[0]
        o = np.asarray([float(v) for v in h.ImageOrientationPatient], float).reshape(2, 3)
        self.row, self.col = o[0], o[1]
        self.normal = np.cross(self.row, self.col)
        self.positions = np.asarray([[float(v) for v in x.ImagePositionPatient] for x in headers], float)
        self.along = self.positions @ self.normal
        self.step = float(np.median(np.abs(np.diff(self.along)))) if len(headers) > 1 else float(
            getattr(h, "SliceThickness", 1.0) or 1.0)
        self.pixel = tuple(float(v) for v in h.PixelSpacing)  # (row spacing = along col, column spacing = along row)
        self.shape = (len(headers), int(h.Rows), int(h.Columns))
        self.frame = str(getattr(h, "FrameOfReferenceUID", "") or "")
        self.what = what

    def slice_of(self, position: np.ndarray) -> Optional[Tuple[int, int, int]]:
        """``(slice, row, column)`` of the pixel of the series at ``position`` (a frame's top left corner: the frame
        may cover part of the slice), within the tolerances; None when it lies on no slice or between pixels."""
        k = int(np.argmin(np.abs(self.along - position @ self.normal)))
        if abs(self.along[k] - position @ self.normal) > _TOL * self.step:
            return None
        d = position - self.positions[k]
        c, r = d @ self.row / self.pixel[1], d @ self.col / self.pixel[0]
        if abs(c - round(c)) > _TOL or abs(r - round(r)) > _TOL:
            return None
        return k, int(round(r)), int(round(c))

    def plane_of(self, points: np.ndarray) -> Optional[int]:
        """The slice whose plane holds all ``points`` (n, 3), else None."""
        d = points @ self.normal
        k = int(np.argmin(np.abs(self.along - d.mean())))
        return k if np.all(np.abs(self.along[k] - d) <= _TOL * self.step) else None


def _frame_value(groups, keyword, attribute):
    for g in groups:
        for item in _seq(g, keyword):
            if attribute in item:
                return item.data_element(attribute).value
    return None


DEFLATED_FRAMES = "1.2.840.10008.1.2.8.1"  # Deflated Image Frame Compression
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def _packbits(data: bytes) -> bytearray:
    """One RLE segment (PS3.5 Annex G: PackBits) decoded."""
    out, i, n = bytearray(), 0, len(data)
    while i < n:
        h = data[i]
        i += 1
        if h < 128:
            out += data[i:i + h + 1]
            i += h + 1
        elif h > 128:
            out += data[i:i + 1] * (257 - h)
            i += 1
    return out


def _own_decode(ds, raw: bytes, e: Exception) -> np.ndarray:
    """A frame in one of the two encodings pydicom 3.0 does not decode: 1-bit RLE Lossless and Deflated Image
    Frame Compression (both byte-padded per frame, bits little-endian as in native 1-bit Pixel Data)."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    if ts == DEFLATED_FRAMES:
        import zlib

        data = zlib.decompress(raw, -15)
    elif ts == RLE_LOSSLESS and bits == 1:
        segments = int(np.frombuffer(raw[:4], "<u4")[0])
        if segments != 1:
            raise ValueError(f"{segments} RLE segments for 1-bit pixels")
        start = int(np.frombuffer(raw[4:8], "<u4")[0])
        data = bytes(_packbits(raw[start:]))
    else:
        raise e
    if bits == 1:
        return np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:rows * columns].reshape(rows, columns)
    return np.frombuffer(data, np.uint8 if bits == 8 else "<u2")[:rows * columns].reshape(rows, columns)


class _Frames:
    """A SEG's frames of stored values: highdicom (pydicom's decoders), else :func:`_own_decode`."""

    def __init__(self, ds, path: str):
        import highdicom as hd

        self.ds, self.path, self.seg, self.raw = ds, path, None, None
        try:
            self.seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        except Exception as e:  # noqa: BLE001 - e.g. a transfer syntax pydicom does not know
            if str(ds.file_meta.TransferSyntaxUID) != DEFLATED_FRAMES:
                raise InputError(f"{path}: DICOM SEG cannot be read ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None

    def get(self, i: int) -> np.ndarray:
        try:
            if self.seg is None:
                raise NotImplementedError("transfer syntax not supported by pydicom")
            return self.seg.get_stored_frame(i + 1)
        except Exception as e:  # noqa: BLE001 - try our own decoders, else name the file
            try:
                if self.raw is None:
                    from pydicom.encaps import generate_frames

                    self.raw = list(generate_frames(self.ds.PixelData,
                                                    number_of_frames=int(self.ds.get("NumberOfFrames", 1) or 1)))
                return _own_decode(self.ds, self.raw[i], e)
            except Exception as e2:  # noqa: BLE001
                raise InputError(f"{self.path}: frame {i + 1} cannot be decoded ({type(e2).__name__}: "
                                 f"{str(e2).splitlines()[0][:200] if str(e2) else ''})") from None


def _read_seg(annotation: AnnotationFile, wanted: Sequence[Structure], grid: _Grid) -> None:
    import pydicom

    path = annotation.path
    try:
        seg = pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is this file's problem
        raise InputError(f"{path}: DICOM SEG cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    frames = _Frames(seg, path)
    shared = _seq(seg, "SharedFunctionalGroupsSequence")
    per_frame = _seq(seg, "PerFrameFunctionalGroupsSequence")
    n = int(getattr(seg, "NumberOfFrames", 1) or 1)
    rows, columns = int(seg.Rows), int(seg.Columns)
    fractional = str(getattr(seg, "SegmentationType", "BINARY")) == "FRACTIONAL"
    max_value = float(getattr(seg, "MaximumFractionalValue", 255) or 255)
    numbers = {s.number for s in wanted}
    masks = {s.number: np.zeros(grid.shape, bool) for s in wanted}
    for i in range(n):
        groups = ([per_frame[i]] if i < len(per_frame) else []) + shared
        number = _frame_value(groups, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if number is None:
            raise InputError(f"{path}: frame {i + 1} names no segment (SegmentIdentificationSequence)")
        if int(number) not in numbers:
            continue
        position = _frame_value(groups, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _frame_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _frame_value(groups, "PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None:
            raise InputError(f"{path}: frame {i + 1} has no plane position or orientation; it cannot be placed on "
                             f"the series")
        o = np.asarray([float(v) for v in orientation], float).reshape(2, 3)
        if not (np.allclose(o[0], grid.row, atol=1e-3) and np.allclose(o[1], grid.col, atol=1e-3)):
            raise InputError(f"{path}: frame {i + 1} has orientation {list(np.round(o.ravel(), 4))}, the referenced "
                             f"series {list(np.round(np.r_[grid.row, grid.col], 4))} ({grid.what})")
        if spacing is not None and not np.allclose([float(v) for v in spacing], grid.pixel, rtol=1e-3, atol=1e-4):
            raise InputError(f"{path}: frame {i + 1} has pixel spacing {[float(v) for v in spacing]}, the referenced "
                             f"series {list(grid.pixel)} ({grid.what})")
        p = np.asarray([float(v) for v in position], float)
        at = grid.slice_of(p)
        if at is None or not (0 <= at[1] and at[1] + rows <= grid.shape[1] and 0 <= at[2]
                              and at[2] + columns <= grid.shape[2]):
            raise InputError(f"{path}: frame {i + 1} (segment {int(number)}, {rows} x {columns}) at "
                             f"{[round(float(v), 2) for v in p]} mm matches no slice of the referenced series "
                             f"({grid.what})")
        k, r0, c0 = at
        frame = frames.get(i)
        on = frame >= 0.5 * max_value if fractional else frame > 0
        masks[int(number)][k, r0:r0 + rows, c0:c0 + columns] |= on
    for s in wanted:
        s.mask = masks[s.number]


def _read_rtstruct(annotation: AnnotationFile, wanted: Sequence[Structure], grid: _Grid) -> None:
    import pydicom
    from skimage.draw import polygon

    path = annotation.path
    ds = pydicom.dcmread(path)
    contours = {int(r.ReferencedROINumber): r for r in _seq(ds, "ROIContourSequence") if "ReferencedROINumber" in r}
    frames = {int(r.ROINumber): str(getattr(r, "ReferencedFrameOfReferenceUID", "") or "")
              for r in _seq(ds, "StructureSetROISequence")}
    for s in wanted:
        frame = frames.get(s.number) or annotation.frame_of_reference
        if frame and grid.frame and frame != grid.frame:
            raise InputError(f"{s.describe()} is on frame of reference {frame}, the referenced series on "
                             f"{grid.frame} ({grid.what})")
        items = [c for c in _seq(contours.get(s.number), "ContourSequence")
                 if str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")).upper() == "CLOSED_PLANAR"
                 and len(getattr(c, "ContourData", None) or []) >= 9]
        if not items:
            raise InputError(f"{s.describe()} has no closed contour")
        mask = np.zeros(grid.shape, bool)
        for c in items:
            pts = np.asarray([float(v) for v in c.ContourData], float).reshape(-1, 3)
            k = grid.plane_of(pts)
            if k is None:
                z = float(np.mean(pts @ grid.normal))
                raise InputError(f"{s.describe()}: a contour lies at {z:.2f} mm along the slice normal, between the "
                                 f"slices of the referenced series ({grid.what}); contours must lie on its slices")
            d = pts - grid.positions[k]
            cols = d @ grid.row / grid.pixel[1]
            rows = d @ grid.col / grid.pixel[0]
            rr, cc = polygon(rows, cols, shape=grid.shape[1:])
            fill = np.zeros(grid.shape[1:], bool)
            fill[rr, cc] = True
            mask[k] ^= fill  # even-odd rule: a contour inside another cuts a hole
        s.mask = mask


def read_structures(wanted: Sequence[Structure], headers: Sequence, what: str) -> None:
    """Read the masks of ``wanted`` (structures of one or more annotation files) onto the series whose sorted
    slice ``headers`` are given (``what`` names the series in errors); sets each structure's ``mask``."""
    grid = _Grid(headers, what)
    by_file: Dict[str, List[Structure]] = {}
    for s in wanted:
        by_file.setdefault(s.file.path, []).append(s)
    for path, items in by_file.items():
        a = items[0].file
        if a.kind == "SEG":
            if a.frame_of_reference and grid.frame and a.frame_of_reference != grid.frame:
                raise InputError(f"{path}: SEG is on frame of reference {a.frame_of_reference}, the referenced "
                                 f"series on {grid.frame} ({what})")
            _read_seg(a, items, grid)
        else:
            _read_rtstruct(a, items, grid)
        for s in items:
            if not s.mask.any():
                raise InputError(f"{s.describe()} is empty")


def parse_label_map(items: Optional[Iterable[str]]) -> Dict[str, str]:
    """``["NAME=CLASS", ...]`` -> {normalised NAME: CLASS}; CLASS is one of our label names, ``tumor`` (the case's
    tumour type) or ``ignore``; InputError for anything else."""
    out = {}
    for item in items or []:
        name, sep, target = str(item).rpartition("=")
        if not sep or not name.strip() or not target.strip():
            raise InputError(f"--label-map {item}: use NAME=CLASS")
        out[_norm(name)] = _target(target.strip(), f"--label-map {item}")
    return out


def _target(name: str, what: str) -> str:
    if name.lower() in (TUMOR, "tumour", IGNORE):
        return TUMOR if name.lower() != IGNORE else IGNORE
    try:
        return L.name_of(L.id_of(name))
    except ValueError:
        raise InputError(f"{what}: unknown class {name!r} (use one of {', '.join(l.name for l in L.LABELS[1:])}, "
                         f"{TUMOR} or {IGNORE})") from None


class LabelMapping:
    """Segment labels / SNOMED codes / ROI names -> our classes (see the module docstring for the order)."""

    def __init__(self, user: Optional[Dict[str, str]] = None, defaults: bool = True):
        self.user = dict(user or {})
        self.defaults = defaults

    def target(self, s: Structure) -> Tuple[Optional[str], str]:
        """(our class name, ``tumor`` or None for left out; the rule that decided)."""
        name = _norm(s.name)
        codes = [v for scheme, v, _ in s.codes if scheme.upper() in _SNOMED]
        if name in self.user:
            return _kept(self.user[name]), f"--label-map {s.name}"
        for v in codes:
            if f"sct:{v}" in self.user:
                return _kept(self.user[f"sct:{v}"]), f"--label-map SCT:{v}"
        if self.defaults:
            if name in DEFAULT_NAMES:
                return DEFAULT_NAMES[name], "default name"
            for v in codes:
                if v in DEFAULT_CODES:
                    return DEFAULT_CODES[v], f"default code SCT {v}"
        return None, "unknown structure"


def _kept(target: str) -> Optional[str]:
    return None if target == IGNORE else target


def label_map(structures_: Sequence[Structure], mapping: LabelMapping, tumor_id: Optional[int],
              headers: Sequence, what: str, case: str = "") -> Tuple[np.ndarray, dict]:
    """Read the mapped structures onto the series of ``headers`` and paint one uint8 label map in our ids.

    Returns ``(label (z, y, x), report)``; the report lists every structure with its class (or why it was left
    out), its voxel count and the overlaps resolved by :data:`OVERLAP_ORDER`. A tumour without a tumour type for
    the case is an InputError.
    """
    chosen, report = [], {"structures": [], "overlaps": {}}
    for s in structures_:
        target, rule = mapping.target(s)
        entry = {"file": s.file.path, "kind": s.file.kind, "number": s.number, "name": s.name,
                 "codes": [":".join(c[:2]) + f" ({c[2]})" for c in s.codes], "rule": rule}
        if target is None:
            entry["class"] = None
            report["structures"].append(entry)
            continue
        if target == TUMOR:
            if tumor_id is None:
                raise InputError(f"{s.describe()} is a tumour without a type: give --tumor-type NAME (or the case "
                                 f"{case or '?'} in --tumor-types CSV)")
            label = int(tumor_id)
        else:
            label = L.id_of(target)
        entry["class"] = L.name_of(label)
        chosen.append((s, label, entry))
        report["structures"].append(entry)
    read_structures([s for s, _, _ in chosen], headers, what)
    shape = _Grid(headers, what).shape
    out = np.zeros(shape, np.uint8)
    claimed = np.zeros(shape, np.uint8)
    rank = {c: i for i, c in enumerate(OVERLAP_ORDER)}
    for s, label, entry in sorted(chosen, key=lambda t: -rank.get(t[1], len(rank))):  # lowest priority first
        entry["voxels"] = int(s.mask.sum())
        over = s.mask & (claimed > 0) & (out != label)
        if over.any():
            for other in np.unique(out[over]):
                key = f"{L.name_of(label)} over {L.name_of(int(other))}"
                report["overlaps"][key] = report["overlaps"].get(key, 0) + int((out[over] == other).sum())
        out[s.mask] = label
        claimed[s.mask] = 1
        s.mask = None  # release
    return out, report
