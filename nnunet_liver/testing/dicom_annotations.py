"""Annotations written over a CT series as other tools write them (tests and examples): DICOM SEG with highdicom,
RTSTRUCT with pydicom, from masks or polygons whose voxels are known."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.testing.dicom_writer import new_uid

__all__ = ["sorted_headers", "write_seg", "write_rtstruct", "mask_contours", "box_contour", "SCT"]

#: SNOMED CT codes tests use for segments: name -> (value, meaning)
SCT = {"liver": ("10200004", "Liver"), "mass": ("4147007", "Mass"), "portal vein": ("32764006", "Portal vein"),
       "aorta": ("15825003", "Aorta"), "spleen": ("78961009", "Spleen"), "neoplasm": ("108369006", "Neoplasm")}


def sorted_headers(folder: str) -> list:
    """The headers of the CT images in ``folder`` (any depth; other files skipped), in position order along the
    slice normal."""
    from nnunet_liver.dicom.index import read_header

    headers = []
    for root, _, files in os.walk(folder):
        for name in files:
            ds = read_header(os.path.join(root, name))[0]
            if ds is not None and str(ds.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.2":
                headers.append(ds)
    o = np.asarray([float(v) for v in headers[0].ImageOrientationPatient]).reshape(2, 3)
    n = np.cross(o[0], o[1])
    return sorted(headers, key=lambda h: float(np.asarray([float(v) for v in h.ImagePositionPatient]) @ n))


def write_seg(path: str, headers: Sequence, segments: Sequence[Tuple[str, np.ndarray, Optional[str]]],
              fractional: bool = False, transfer_syntax: Optional[str] = None, series_number: int = 300,
              omit_empty_frames: bool = True) -> str:
    """A DICOM SEG over the series of ``headers`` (position order); ``segments``: (label, mask (z, y, x) bool or
    fraction in [0, 1] when ``fractional``, SNOMED name of :data:`SCT` or None for a generic tissue code).
    ``transfer_syntax``: highdicom's (RLE, JPEG 2000, JPEG-LS) or the deflated data set (written by pydicom)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    descriptions, arrays = [], []
    for number, (label, mask, code) in enumerate(segments, start=1):
        value, meaning = SCT.get(code or "", ("85756007", "Tissue"))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=hd.sr.CodedConcept(value, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL))
        arrays.append(np.asarray(mask, np.float32 if fractional else bool))
    pixels = np.stack(arrays, axis=-1)
    kwargs = {}
    deflate = transfer_syntax == "1.2.840.10008.1.2.1.99"  # the whole data set deflated: pydicom writes it
    if transfer_syntax is not None and not deflate:
        kwargs["transfer_syntax_uid"] = transfer_syntax
    seg = hd.seg.Segmentation(
        source_images=list(headers), pixel_array=pixels,
        segmentation_type=(hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else
                           hd.seg.SegmentationTypeValues.BINARY),
        segment_descriptions=descriptions, series_instance_uid=new_uid(), series_number=series_number,
        sop_instance_uid=new_uid(), instance_number=1, manufacturer="Annotator", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1", series_description="Segmentation",
        omit_empty_frames=omit_empty_frames, **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if deflate:
        seg.file_meta.TransferSyntaxUID = transfer_syntax
    seg.save_as(path, enforce_file_format=True)
    return str(seg.SeriesInstanceUID)


def box_contour(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """The pixel-edge outline (rows, cols) of the pixels r0..r1 x c0..c1 (inclusive): its fill is exactly them."""
    return np.asarray([(r0 - 0.5, c0 - 0.5), (r0 - 0.5, c1 + 0.5), (r1 + 0.5, c1 + 0.5), (r1 + 0.5, c0 - 0.5)], float)


def mask_contours(mask: np.ndarray) -> List[Tuple[int, np.ndarray]]:
    """(slice, polygon (n, 2) in (row, col) pixel coordinates) of every iso-contour at 0.5 of a 3D bool mask."""
    from skimage.measure import find_contours

    out = []
    for k in range(mask.shape[0]):
        if not mask[k].any():
            continue
        padded = np.pad(mask[k].astype(float), 1)
        for c in find_contours(padded, 0.5):
            if len(c) >= 3:
                out.append((k, c - 1.0))
    return out


def write_rtstruct(path: str, headers: Sequence, rois: Dict[str, List[Tuple[int, np.ndarray]]],
                   frame_of_reference: Optional[str] = None, slice_offsets_mm: Optional[Dict[str, float]] = None,
                   referenced_series: Optional[str] = None) -> str:
    """An RT Structure Set over the series of ``headers`` (position order): ``rois`` maps each ROI name to its
    contours (slice index, polygon in (row, col) pixel coordinates). ``slice_offsets_mm`` moves an ROI's contours
    along the slice normal (a contour between slices); ``frame_of_reference`` / ``referenced_series`` override."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import ExplicitVRLittleEndian

    first = headers[0]
    o = np.asarray([float(v) for v in first.ImageOrientationPatient]).reshape(2, 3)
    normal = np.cross(o[0], o[1])
    sy, sx = (float(v) for v in first.PixelSpacing)
    frame = frame_of_reference or str(first.FrameOfReferenceUID)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, k, getattr(first, k, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", new_uid(), 400
    ds.SeriesDescription, ds.InstanceNumber = "RTSTRUCT", 1
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "Annotations", "20240102", "120000"
    ds.FrameOfReferenceUID = frame
    images = [Dataset() for _ in headers]
    for item, h in zip(images, headers):
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = h.SOPClassUID, h.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = referenced_series or str(first.SeriesInstanceUID)
    series.ContourImageSequence = Seq(images)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study.RTReferencedSeriesSequence = Seq([series])
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame
    ref_frame.RTReferencedStudySequence = Seq([study])
    ds.ReferencedFrameOfReferenceSequence = Seq([ref_frame])
    rois_, contours_, observations = [], [], []
    for number, (name, items) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois_.append(roi)
        contour_items = []
        shift = (slice_offsets_mm or {}).get(name, 0.0)
        for k, poly in items:
            origin = np.asarray([float(v) for v in headers[k].ImagePositionPatient])
            pts = origin + np.outer(poly[:, 1] * sx, o[0]) + np.outer(poly[:, 0] * sy, o[1]) + shift * normal
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.4f}" for v in pts.ravel()]
            img = Dataset()
            img.ReferencedSOPClassUID, img.ReferencedSOPInstanceUID = headers[k].SOPClassUID, headers[k].SOPInstanceUID
            c.ContourImageSequence = Seq([img])
            contour_items.append(c)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor = number, [255, 0, 0]
        if contour_items:
            rc.ContourSequence = Seq(contour_items)
        contours_.append(rc)
        ob = Dataset()
        ob.ObservationNumber, ob.ReferencedROINumber, ob.RTROIInterpretedType, ob.ROIInterpreter = \
            number, number, "ORGAN", ""
        observations.append(ob)
    ds.StructureSetROISequence = Seq(rois_)
    ds.ROIContourSequence = Seq(contours_)
    ds.RTROIObservationsSequence = Seq(observations)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return str(ds.SeriesInstanceUID)
