"""Write a volume as a CT Image Storage series (one file per slice), as a scanner would: for tests and examples.

:func:`write_ct_series` stores HU as integers through ``RescaleSlope``/``RescaleIntercept`` (signed or unsigned),
optionally with a pixel padding value outside a field-of-view disk and a compressed transfer syntax (pydicom's
encoders: RLE Lossless natively, JPEG 2000 / JPEG-LS through the installed plugins). :func:`write_localizer` and
:func:`write_dose_report` add the other things a PACS export holds (a scout, a dose SR) so that selection is tested.
"""
from __future__ import annotations

import datetime
import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["write_ct_series", "write_localizer", "write_dose_report", "new_uid"]


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def _base(study_uid: str, patient: dict, sop_class: str, modality: str = "CT"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A123", ""
    ds.StudyDescription = "CT ABDOMEN LIVER"
    ds.PatientName = patient.get("name", "Doe^Jane")
    ds.PatientID = patient.get("id", "P0001")
    ds.PatientBirthDate = patient.get("birth_date", "19600101")
    ds.PatientSex = patient.get("sex", "F")
    ds.Manufacturer = "PhantomScanner"
    ds.InstitutionName = "General Hospital"
    return ds


def write_ct_series(folder: str, volume_hu: np.ndarray, spacing_zyx: Sequence[float], origin_xyz: Sequence[float],
                    study_uid: str, series_number: int, description: str = "", direction: Optional[Sequence[float]]
                    = None, acquisition_time: Optional[str] = None, contrast_agent: Optional[str] = None,
                    patient: Optional[dict] = None, frame_of_reference_uid: Optional[str] = None,
                    signed: bool = True, padding_value: Optional[int] = None, transfer_syntax: Optional[str] = None,
                    series_uid: Optional[str] = None, scramble_names: bool = False, slice_thickness: Optional[float]
                    = None, rng_seed: int = 0, attributes: Optional[dict] = None) -> str:
    """Write ``volume_hu`` (z, y, x; HU rounded to integers) as one file per slice in ``folder``; return the series UID.

    ``direction`` is SimpleITK's (x, y, z axis columns, row-major; default identity). ``signed=False`` stores
    ``HU + 1024`` unsigned with intercept -1024; ``padding_value`` (stored value) replaces voxels outside a disk
    filling the slice; ``transfer_syntax`` compresses (e.g. ``pydicom.uid.RLELossless``); ``attributes``
    ({keyword: value}) are set on every slice last (``None`` deletes one), e.g. ``ContrastBolusRoute`` or
    ``TimezoneOffsetFromUTC``.
    """
    from pydicom.uid import CTImageStorage

    patient = patient or {}
    os.makedirs(folder, exist_ok=True)
    series_uid = series_uid or new_uid()
    for_uid = frame_of_reference_uid or new_uid()
    d = np.asarray(direction if direction is not None else np.eye(3).ravel(), float).reshape(3, 3)
    sz, sy, sx = (float(v) for v in spacing_zyx)
    nz, ny, nx = volume_hu.shape
    rng = np.random.default_rng(rng_seed)
    names = rng.permutation(nz) if scramble_names else np.arange(nz)
    yy, xx = np.mgrid[0:ny, 0:nx]
    outside = ((yy - (ny - 1) / 2) / (ny / 2)) ** 2 + ((xx - (nx - 1) / 2) / (nx / 2)) ** 2 > 1.0
    for z in range(nz):
        ds = _base(study_uid, patient, CTImageStorage)
        ds.SOPInstanceUID = new_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, int(series_number)
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = for_uid, ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(nz - z)  # scanners often count from the top: never trusted for order
        ds.AcquisitionNumber = 1
        if acquisition_time is not None:
            ds.AcquisitionDate = ds.ContentDate = ds.SeriesDate = "20240102"
            ds.AcquisitionTime = ds.ContentTime = ds.SeriesTime = acquisition_time
        if contrast_agent is not None:
            ds.ContrastBolusAgent = contrast_agent
        ds.PatientPosition = "FFS"
        ds.KVP = "120"
        ds.SliceThickness = f"{slice_thickness if slice_thickness is not None else sz:g}"
        ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]
        pos = np.asarray(origin_xyz, float) + d[:, 2] * sz * z
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in list(d[:, 0]) + list(d[:, 1])]
        ds.SliceLocation = f"{pos[2]:.4f}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        hu = np.rint(volume_hu[z]).astype(np.int32)
        if signed:
            ds.PixelRepresentation, ds.RescaleIntercept = 1, "0"
            stored = np.clip(hu, -32768, 32767).astype(np.int16)
        else:
            ds.PixelRepresentation, ds.RescaleIntercept = 0, "-1024"
            stored = np.clip(hu + 1024, 0, 65535).astype(np.uint16)
        ds.RescaleSlope, ds.RescaleType = "1", "HU"
        if padding_value is not None:
            ds.PixelPaddingValue = int(padding_value)
            stored = stored.copy()
            stored[outside] = padding_value
        ds.WindowCenter, ds.WindowWidth = "50", "400"
        for keyword, value in (attributes or {}).items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.PixelData = stored.tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax, stored)
        ds.save_as(os.path.join(folder, f"IM{int(names[z]) + 1:05d}" + ("" if scramble_names else ".dcm")),
                   enforce_file_format=True)
    return series_uid


def write_localizer(folder: str, study_uid: str, series_number: int = 1, patient: Optional[dict] = None) -> str:
    """A two-image scout (ImageType LOCALIZER, coronal) of the study."""
    from pydicom.uid import CTImageStorage

    uid = new_uid()
    os.makedirs(folder, exist_ok=True)
    for k in range(2):
        ds = _base(study_uid, patient or {}, CTImageStorage)
        ds.SOPInstanceUID = new_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, series_number, "Topogram"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ["-250", "0", f"{-100 * k}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        ds.PixelSpacing = ["1", "1"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 32
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = np.full((32, 32), 1000, np.uint16).tobytes()
        ds.save_as(os.path.join(folder, f"scout{k}.dcm"), enforce_file_format=True)
    return uid


def write_dose_report(folder: str, study_uid: str, series_number: int = 999, patient: Optional[dict] = None) -> str:
    """A minimal X-Ray Radiation Dose SR object of the study (no pixel data)."""
    uid = new_uid()
    os.makedirs(folder, exist_ok=True)
    ds = _base(study_uid, patient or {}, "1.2.840.10008.5.1.4.1.1.88.67", modality="SR")
    ds.SOPInstanceUID = new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, series_number, "Dose Report"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20240102", datetime.time(10, 30).strftime("%H%M%S")
    ds.save_as(os.path.join(folder, "dose.dcm"), enforce_file_format=True)
    return uid
