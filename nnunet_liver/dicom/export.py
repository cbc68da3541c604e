"""DICOM back to PACS: the final lesions as a DICOM Segmentation and their measurements as a TID 1500 SR (highdicom).

``CASE_seg.dcm`` is a binary ``Segmentation`` on the reference phase's series (the grid of ``CASE_lesions.nii.gz``),
one segment per final lesion, labelled ``lesion N TYPE``, category *Morphologically abnormal structure* (SCT 49755003),
type coded per lesion type with SNOMED CT (:data:`LESION_CODES`), anatomic region *Liver* (SCT 10200004), tracking id
``lesion N`` and a tracking UID shared with the SR. It references every source image of the reference series.
A case without lesions has no SEG (a Segmentation needs at least one segment); its SR says so.

``CASE_sr.dcm`` is a ``Comprehensive3DSR`` holding a TID 1500 ``MeasurementReport``: per lesion a TID 1411
volumetric group referencing its segment (finding type as in the SEG, finding site liver) with volume (cm3), largest
diameter (mm), detection score, the LI-RADS features APHE and NPW (HU) and EC (HU^2) as measurements, and the
sensitivity (``same``/``diff``) as a qualitative evaluation; one more group (no segment) carries the patient result
(class, malignancy). Concepts without a standard code use the local coding scheme ``99NNUNETLIVER``.

Privacy: both objects take the Patient and Study modules from the source images (the IODs require them and PACS files
the objects by the patient's name and ID and the study's UID, date and accession number) with the patient's birth date
and sex emptied (type 2: present, empty; nothing needs them to find the source), and nothing else from the source but
the references (UIDs, frame of reference, image positions). No private attributes.
"""
from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from nnunet_liver.utils.io import atomic_path

__all__ = ["LESION_CODES", "LOCAL_SCHEME", "write_dicom_outputs", "segmentation", "measurement_report"]

LOCAL_SCHEME = "99NNUNETLIVER"


def _code(value: str, scheme: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, scheme, meaning)


#: SNOMED CT (morphologic abnormality) per lesion type
LESION_CODES: Dict[str, tuple] = {
    "HCC": ("25370001", "SCT", "Hepatocellular carcinoma"),
    "ICC": ("70179006", "SCT", "Cholangiocarcinoma"),
    "Meta": ("14799000", "SCT", "Neoplasm, metastatic"),
    "Hem": ("400210000", "SCT", "Hemangioma"),
    "Other": ("52988006", "SCT", "Lesion"),
    "Cyst": ("367643001", "SCT", "Cyst"),
}


def _lesion_code(lesion_type: str):
    return _code(*LESION_CODES.get(lesion_type, LESION_CODES["Other"]))


def _version() -> str:
    from nnunet_liver import __version__

    return str(__version__)


def segmentation(instance_map: np.ndarray, lesions: List[dict], source_headers: list, tracking_uids: Dict[int, str]):
    """A highdicom ``Segmentation`` of the final lesions; ``instance_map`` (Z, Y, X) is on the source series' grid
    with Z in the order of ``source_headers`` (slice order along the normal)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

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
        source_images=source_headers, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnunet_liver",
        manufacturer_model_name="nnunet-liver-detect", software_versions=_version(), device_serial_number="0",
        series_description="nnunet_liver lesions", omit_empty_frames=True)


def measurement_report(record: dict, lesions: List[dict], source_headers: list, seg, tracking_uids: Dict[int, str]):
    """A highdicom ``Comprehensive3DSR`` with a TID 1500 measurement report of the case (see the module docstring)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    local = lambda value, meaning: _code(value, LOCAL_SCHEME, meaning)  # noqa: E731
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="nnunet-liver-detect", manufacturer_name="nnunet_liver", model_name=_version()))
    context = hd.sr.ObservationContext(observer_person_context=None, observer_device_context=observer)
    algorithm = hd.sr.AlgorithmIdentification(name="nnunet_liver", version=_version())
    liver_site = hd.sr.FindingSite(anatomic_location=codes.SCT.Liver)
    units = {"cm3": _code("cm3", "UCUM", "cubic centimeter"), "mm": codes.UCUM.Millimeter,
             "1": _code("1", "UCUM", "no units"), "HU": _code("[hnsf'U]", "UCUM", "Hounsfield unit"),
             "HU2": _code("[hnsf'U]2", "UCUM", "Hounsfield unit squared")}
    groups = []
    for number, les in enumerate(lesions, start=1):
        values = [(codes.SCT.Volume, les.get("volume_cm3"), "cm3"), (codes.SCT.Diameter, les.get("diameter_mm"), "mm"),
                  (local("score", "Lesion detection score"), les.get("score"), "1")]
        feats = les.get("features") or {}
        for key, meaning, unit in (("APHE", "Arterial phase hyperenhancement (lesion - liver, A)", "HU"),
                                   ("NPW", "Non-peripheral washout (lesion - liver, V or D)", "HU"),
                                   ("EC", "Enhancing capsule (inner - rim energy, A)", "HU2")):
            values.append((local(key, meaning), feats.get(key), unit))
        measurements = [hd.sr.Measurement(name=name, value=float(v), unit=units[u], algorithm_id=algorithm)
                        for name, v, u in values if v is not None and np.isfinite(float(v))]
        sensitivity = str(les.get("sensitivity"))
        evaluations = [hd.sr.QualitativeEvaluation(
            name=local("sensitivity", "Lesion sensitivity"),
            value=local(sensitivity, "found at every sensitivity factor" if sensitivity == "same"
                        else "found at the highest sensitivity factor only"))]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uids[les["id"]],
                                                         identifier=f"lesion {les['id']}"),
            referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, number),
            finding_type=_lesion_code(les["type"]), algorithm_id=algorithm, finding_sites=[liver_site],
            measurements=measurements, qualitative_evaluations=evaluations))
    patient = record.get("patient", {})
    malignant = patient.get("malignant")
    patient_evals = [hd.sr.QualitativeEvaluation(
        name=local("patient-class", "Patient class"),
        value=local(str(patient.get("class")), f"patient class {patient.get('class')}")),
        hd.sr.QualitativeEvaluation(
            name=local("malignant", "Malignant lesion present"),
            value=local(str(malignant).lower(), {True: "yes", False: "no"}.get(malignant, "uncertain")))]
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="patient result"),
        finding_type=codes.SCT.Liver, algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=local("num-lesions", "Number of lesions"), value=float(len(lesions)),
                                        unit=units["1"], algorithm_id=algorithm)],
        qualitative_evaluations=patient_evals))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    evidence = list(source_headers) + ([seg] if seg is not None else [])
    return hd.sr.Comprehensive3DSR(evidence=evidence, content=report, series_instance_uid=hd.UID(),
                                   series_number=9902, sop_instance_uid=hd.UID(), instance_number=1,
                                   manufacturer="nnunet_liver", is_complete=True, is_final=False, is_verified=False,
                                   series_description="nnunet_liver lesion measurements")


def write_dicom_outputs(result, output_dir: str) -> Dict[str, str]:
    """Write ``CASE_seg.dcm`` (when there are lesions) and ``CASE_sr.dcm`` for a case read from DICOM.

    ``result`` is the detector's :class:`~nnunet_liver.inference.detector.CaseResult` whose ``case`` came from
    :func:`nnunet_liver.dicom.study.load_dicom_case`. Returns ``{"seg": file name or None, "sr": file name}``.
    """
    import highdicom as hd

    case_id = result.case.case_id
    headers = result.case.reference_headers
    lesions = result.record.get("lesions", [])
    tracking = {les["id"]: hd.UID() for les in lesions}
    names = {"seg": None, "sr": f"{case_id}_sr.dcm"}
    seg = None
    if lesions:
        seg = segmentation(result.instance_map, lesions, headers, tracking)
        names["seg"] = f"{case_id}_seg.dcm"
    sr = measurement_report(result.record, lesions, headers, seg, tracking)
    for key, ds in (("seg", seg), ("sr", sr)):
        if ds is None:
            continue
        ds.PatientBirthDate, ds.PatientSex = "", ""
        with atomic_path(os.path.join(output_dir, names[key])) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    stale = os.path.join(output_dir, f"{case_id}_seg.dcm")
    if seg is None and os.path.exists(stale):  # a rerun that no longer finds lesions
        os.remove(stale)
    return names
