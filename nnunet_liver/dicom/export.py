"""DICOM back to PACS: the final lesions as a DICOM Segmentation and their measurements as a TID 1500 SR (highdicom).

``CASE_seg.dcm`` is a binary ``Segmentation`` on the reference phase's series (the grid of ``CASE_lesions.nii.gz``),
one segment per final lesion (segment number = lesion id), labelled ``lesion N TYPE``, category *Morphologically
abnormal structure* (SCT 49755003), type coded per lesion type with SNOMED CT (:data:`LESION_CODES`), anatomic region
*Liver* (SCT 10200004), tracking id ``lesion N`` and a tracking UID shared with the SR. It references every source
image of the reference series. A case without lesions has no SEG (a Segmentation needs at least one segment); its SR
says so.

``CASE_sr.dcm`` is a ``Comprehensive3DSR`` holding a TID 1500 ``MeasurementReport``: per lesion a TID 1411
volumetric group referencing its segment and the source images the lesion lies on (finding type as in the SEG,
finding site liver) with volume (cm3), largest diameter (mm), detection score, the LI-RADS features APHE and NPW (HU)
and EC (HU^2) as measurements, and the sensitivity (``same``/``diff``) as a qualitative evaluation; one more group
(no segment) carries the patient result (class, malignancy). Concepts without a standard code use the local coding
scheme ``99NNUNETLIVER``, declared in the SR's ``CodingSchemeIdentificationSequence``. The observer is the device
(``nnunet-liver-detect``) with a UID derived from the model's identity (:func:`device_uid`): every SR of one
installed model names the same device.

Privacy: both objects take the Patient and Study modules from the source images (the IODs require them and PACS files
the objects by the patient's name and ID and the study's UID, date and accession number) with the patient's birth date
and sex emptied (type 2: present, empty; nothing needs them to find the source), and nothing else from the source but
the references (UIDs, frame of reference, image positions). No private attributes. A type 2 attribute the source
lacks (some anonymisers remove them) is written empty.

:func:`write_dicom_outputs` never raises: a case whose SEG/SR cannot be written (a source series without
``FrameOfReferenceUID``, which a Segmentation must share with its source images; anything highdicom refuses) keeps its
CASE.json, NIfTI and report, and the reason is returned for CASE.json.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Dict, List, Optional

import numpy as np

from nnunet_liver.labels import UNCERTAIN
from nnunet_liver.utils.io import atomic_path

__all__ = ["LESION_CODES", "LOCAL_SCHEME", "write_dicom_outputs", "segmentation", "measurement_report",
           "device_uid", "missing_frame_of_reference"]

LOCAL_SCHEME = "99NNUNETLIVER"
#: type 2 attributes of the Patient and General Study modules that highdicom copies from the first source image
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                 "AccessionNumber", "ReferringPhysicianName")
#: highdicom's warning on a one-component person name quotes the name: it must not reach a log
_PERSON_NAME_WARNING = r'The string ".*" is unlikely to represent the intended person name'


def _code(value: str, scheme: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, scheme, meaning)


def _lesion_codes() -> Dict[str, object]:
    """SNOMED CT morphologic abnormality per lesion type: pydicom's code dictionary, literals where it has none."""
    from pydicom.sr.codedict import codes

    return {"HCC": _code("25370001", "SCT", "Hepatocellular carcinoma"),
            "ICC": _code("70179006", "SCT", "Cholangiocarcinoma"),
            "Meta": codes.SCT.NeoplasmMetastatic, "Hem": codes.SCT.Hemangioma, "Other": codes.SCT.Lesion,
            "Cyst": codes.SCT.Cyst}


#: (code value, scheme, meaning) per lesion type (the SEG's segmented property type and the SR's finding type)
LESION_CODES: Dict[str, tuple] = {k: (c.value, c.scheme_designator, c.meaning) for k, c in _lesion_codes().items()}


def _lesion_code(lesion_type: str):
    codes_ = _lesion_codes()
    return codes_.get(lesion_type, codes_["Other"])


def _version() -> str:
    from nnunet_liver import __version__

    return str(__version__)


def device_uid(model: Optional[dict]) -> str:
    """The SR's device observer UID: derived from the model's identity (CASE.json's ``model``: folders, folds,
    checkpoint, trainer, plans, package version), so one installed model is one device in every SR it writes."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["nnunet-liver-detect", json.dumps(model or {}, sort_keys=True, default=str)])


def missing_frame_of_reference(headers: list) -> Optional[str]:
    """Why a SEG cannot be written on ``headers`` for lack of a frame of reference (None when every image has one)."""
    if headers and all(str(getattr(h, "FrameOfReferenceUID", "") or "") for h in headers):
        return None
    first = headers[0] if headers else None
    series = getattr(first, "SeriesInstanceUID", "?")
    return (f"the reference series {series} has no FrameOfReferenceUID (type 1 in CT images), which a DICOM "
            f"Segmentation must share with its source images: no SEG/SR written (the lesions are in "
            f"CASE_lesions.nii.gz)")


def _invalid_code_sequences(ds) -> List[str]:
    """Top-level code sequences of ``ds`` with an item that is not a valid code (a value without its coding scheme
    designator, as some anonymisers leave ``ProcedureCodeSequence``)."""
    bad = []
    for element in ds:
        if element.VR == "SQ" and element.keyword.endswith("CodeSequence"):
            for item in element.value:
                has_value = any(k in item for k in ("CodeValue", "LongCodeValue", "URNCodeValue"))
                if not has_value or ("CodeValue" in item and not str(item.get("CodingSchemeDesignator", ""))):
                    bad.append(element.keyword)
                    break
    return bad


def _study_source(headers: list) -> list:
    """``headers`` with the first image (the one highdicom copies the Patient and Study modules from) on a copy made
    valid where the source is not: absent type 2 attributes added empty, code sequences with invalid items (type 3
    in those modules) left out, so that a SEG/SR does not inherit an export's flaws."""
    first = headers[0]
    absent = [k for k in _TYPE2_COPIED if k not in first]
    invalid = _invalid_code_sequences(first)
    if not absent and not invalid:
        return list(headers)
    first = copy.deepcopy(first)
    for keyword in absent:
        setattr(first, keyword, "")
    for keyword in invalid:
        delattr(first, keyword)
    return [first] + list(headers[1:])


def segmentation(instance_map: np.ndarray, lesions: List[dict], source_headers: list, tracking_uids: Dict[int, str]):
    """A highdicom ``Segmentation`` of the final lesions; ``instance_map`` (Z, Y, X) is on the source series' grid
    with Z in the order of ``source_headers`` (slice order along the normal)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if instance_map.shape != (len(source_headers), int(source_headers[0].Rows), int(source_headers[0].Columns)):
        raise ValueError(f"lesion map {instance_map.shape} does not match the source series "
                         f"({len(source_headers)} x {source_headers[0].Rows} x {source_headers[0].Columns})")
    algorithm = hd.AlgorithmIdentificationSequence(name="nnunet_liver", version=_version(),
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions, ids = [], []
    for number, les in enumerate(lesions, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"lesion {les['id']} {les['type']}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=_lesion_code(les["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=tracking_uids[les["id"]], tracking_id=f"lesion {les['id']}",
            anatomic_regions=[codes.SCT.Liver]))
        ids.append(int(les["id"]))
    labels = np.zeros(instance_map.shape, np.uint16)
    for number, lesion_id in enumerate(ids, start=1):
        labels[instance_map == lesion_id] = number
    return hd.seg.Segmentation(
        source_images=_study_source(source_headers), pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=9901, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="nnunet_liver", manufacturer_model_name="nnunet-liver-detect", software_versions=_version(),
        device_serial_number="0", series_description="nnunet_liver lesions", omit_empty_frames=True)


def _referenced_segment(seg, number: int, slices, source_headers: list):
    """TID 1411's segment reference built from the SEG's UIDs, the segment number and the source images the lesion
    lies on (``slices``: indices into ``source_headers``); highdicom's ``ReferencedSegment.from_segmentation`` reads
    the per-frame segment identification, which a one-segment SEG keeps in the shared functional groups."""
    import highdicom as hd

    sources = [hd.sr.SourceImageForSegmentation(source_headers[z].SOPClassUID, source_headers[z].SOPInstanceUID)
               for z in slices]
    return hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                                   segment_number=number, source_images=sources)


def _lesion_slices(instance_map: np.ndarray, lesion_ids: List[int]) -> Dict[int, np.ndarray]:
    """{lesion id: the z indices holding it}, from one bounding-box pass over the map."""
    from scipy.ndimage import find_objects

    boxes = find_objects(instance_map.astype(np.int64, copy=False), max_label=max(lesion_ids, default=0))
    out = {}
    for lesion_id in lesion_ids:
        box = boxes[lesion_id - 1] if lesion_id - 1 < len(boxes) else None
        if box is None:
            out[lesion_id] = np.zeros(0, int)
            continue
        present = (instance_map[box] == lesion_id).any(axis=(1, 2))
        out[lesion_id] = box[0].start + np.flatnonzero(present)
    return out


def _units() -> dict:
    from pydicom.sr.codedict import codes

    return {"cm3": codes.UCUM.CubicCentimeter, "mm": codes.UCUM.Millimeter, "1": codes.UCUM.NoUnits,
            "HU": codes.UCUM.HounsfieldUnit, "HU2": _code("[hnsf'U]2", "UCUM", "Hounsfield unit squared")}


def measurement_report(record: dict, lesions: List[dict], source_headers: list, seg, tracking_uids: Dict[int, str],
                       lesion_slices: Optional[Dict[int, np.ndarray]] = None):
    """A highdicom ``Comprehensive3DSR`` with a TID 1500 measurement report of the case (see the module docstring).

    ``lesion_slices``: {lesion id: z indices into ``source_headers``} of the source images each lesion lies on
    (default: every source image).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from nnunet_liver.characterize.hook import sr_evaluations, sr_measurements

    local = lambda value, meaning: _code(value, LOCAL_SCHEME, meaning)  # noqa: E731
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(record.get("model")), name="nnunet-liver-detect", manufacturer_name="nnunet_liver",
            model_name=_version()))
    context = hd.sr.ObservationContext(observer_person_context=None, observer_device_context=observer)
    algorithm = hd.sr.AlgorithmIdentification(name="nnunet_liver", version=_version())
    liver_site = hd.sr.FindingSite(anatomic_location=codes.SCT.Liver)
    units = _units()
    groups = []
    for number, les in enumerate(lesions, start=1):
        values = [(codes.SCT.Volume, les.get("volume_cm3"), "cm3"), (codes.SCT.Diameter, les.get("diameter_mm"), "mm"),
                  (local("score", "Lesion detection score"), les.get("score"), "1")]
        feats = les.get("features") or {}
        for key, meaning, unit in (("APHE", "Arterial phase hyperenhancement (lesion - liver, A)", "HU"),
                                   ("NPW", "Non-peripheral washout (lesion - liver, V or D)", "HU"),
                                   ("EC", "Enhancing capsule (inner - rim energy, A)", "HU2")):
            values.append((local(key, meaning), feats.get(key), unit))
        values += [(local(k, m), v, u) for k, m, v, u in sr_measurements(les)]  # second stage, if characterized
        measurements = [hd.sr.Measurement(name=name, value=float(v), unit=units[u], algorithm_id=algorithm)
                        for name, v, u in values if v is not None and np.isfinite(float(v))]
        sensitivity = str(les.get("sensitivity"))
        evaluations = [hd.sr.QualitativeEvaluation(
            name=local("sensitivity", "Lesion sensitivity"),
            value=local(sensitivity, "found at every sensitivity factor" if sensitivity == "same"
                        else "found at the highest sensitivity factor only"))]
        evaluations += [hd.sr.QualitativeEvaluation(name=local(k, m), value=local(v, vm))
                        for k, m, v, vm in sr_evaluations(les)]  # LI-RADS suggestion, patients at risk only
        slices = range(len(source_headers)) if lesion_slices is None else lesion_slices[les["id"]]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uids[les["id"]],
                                                         identifier=f"lesion {les['id']}"),
            referenced_segment=_referenced_segment(seg, number, slices, source_headers),
            finding_type=_lesion_code(les["type"]), algorithm_id=algorithm, finding_sites=[liver_site],
            measurements=measurements, qualitative_evaluations=evaluations))
    patient = record.get("patient", {})
    malignant = patient.get("malignant")
    patient_evals = [hd.sr.QualitativeEvaluation(
        name=local("patient-class", "Patient class"),
        value=local(str(patient.get("class")), f"patient class {patient.get('class')}")),
        hd.sr.QualitativeEvaluation(
            name=local("malignant", "Malignant lesion present"),
            value=local(str(malignant).lower(), {True: "yes", False: "no"}.get(malignant, UNCERTAIN)))]
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="patient result"),
        finding_type=codes.SCT.Liver, algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=codes.SCT.NumberOfLesions, value=float(len(lesions)),
                                        unit=units["1"], algorithm_id=algorithm)],
        qualitative_evaluations=patient_evals))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    evidence = _study_source(source_headers) + ([seg] if seg is not None else [])
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    scheme = CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME, name="nnunet_liver local codes", version=_version(),
        responsible_organization="nnunet_liver")
    return hd.sr.Comprehensive3DSR(evidence=evidence, content=report, series_instance_uid=generate_uid(),
                                   series_number=9902, sop_instance_uid=generate_uid(), instance_number=1,
                                   manufacturer="nnunet_liver", is_complete=True, is_final=False, is_verified=False,
                                   series_description="nnunet_liver lesion measurements", coding_schemes=[scheme])


def write_dicom_outputs(result, output_dir: str) -> Dict[str, Optional[str]]:
    """Write ``CASE_seg.dcm`` (when there are lesions) and ``CASE_sr.dcm`` for a case read from DICOM.

    ``result`` is the detector's :class:`~nnunet_liver.inference.detector.CaseResult` whose ``case`` came from
    :func:`nnunet_liver.dicom.study.load_dicom_case`. Returns ``{"seg": file name or None, "sr": file name or None}``
    and, when they could not be written, ``"not_written"``: the one-line reason (never raises for that: the case's
    other outputs are kept). Files of an earlier run that this run does not write again are removed.
    """
    from pydicom.uid import generate_uid

    case_id = result.case.case_id
    headers = result.case.reference_headers
    lesions = result.record.get("lesions", [])
    names: Dict[str, Optional[str]] = {"seg": None, "sr": None}
    try:
        reason = missing_frame_of_reference(headers)
        if reason is not None:
            raise _NotWritten(reason)
        tracking = {les["id"]: generate_uid() for les in lesions}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING)
            seg = segmentation(result.instance_map, lesions, headers, tracking) if lesions else None
            slices = _lesion_slices(result.instance_map, [les["id"] for les in lesions])
            sr = measurement_report(result.record, lesions, headers, seg, tracking, slices)
        for key, ds in (("seg", seg), ("sr", sr)):
            if ds is None:
                continue
            ds.PatientBirthDate, ds.PatientSex = "", ""
            name = f"{case_id}_{key}.dcm"
            with atomic_path(os.path.join(output_dir, name)) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            names[key] = name
    except Exception as e:  # noqa: BLE001 - no failure to write SEG/SR may lose a finished detection
        text = (str(e).strip().splitlines() or [""])[0]
        names["not_written"] = text if isinstance(e, _NotWritten) else (
            f"DICOM SEG/SR not written ({type(e).__name__}: {text})")
    for key in ("seg", "sr"):  # a rerun that no longer writes one: no stale file of an earlier run
        stale = os.path.join(output_dir, f"{case_id}_{key}.dcm")
        if names[key] is None and os.path.exists(stale):
            os.remove(stale)
    return names


class _NotWritten(Exception):
    """The SEG/SR cannot be written for a known reason (its message is the reason)."""
