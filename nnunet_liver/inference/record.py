"""CASE.json: the detector's record of one case, one dataclass and its one builder (:meth:`CaseRecord.to_dict`).

The layout is ``case_schema.json`` beside this file (:func:`nnunet_liver.inference.schema_path`); DETECT.md
describes every field. The detector fills a :class:`CaseRecord`; the runner adds the DICOM outputs of a study once
they are written (:meth:`CaseRecord.with_dicom_outputs`) and writes :meth:`CaseRecord.to_dict`.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from nnunet_liver.case import LoadedCase

__all__ = ["SCHEMA_VERSION", "CaseRecord", "geometry_record"]

#: CASE.json's schema version
SCHEMA_VERSION = "1.0"


def geometry_record(loaded: LoadedCase, reference_phase: str) -> dict:
    """CASE.json's ``geometry``: the reference grid (shape and spacing (z, y, x), SimpleITK's origin and direction
    (x, y, z)), the reference phase and the registration of every phase registered onto it (None when none was)."""
    ref = loaded.reference
    return {"shape_zyx": [int(s) for s in loaded.data.shape[1:]],
            "spacing_zyx_mm": [float(s) for s in loaded.spacing],
            "origin_xyz_mm": [float(v) for v in ref.GetOrigin()],
            "direction_xyz": [float(v) for v in ref.GetDirection()],
            "reference_phase": reference_phase,
            "registration": loaded.registration or None}


@dataclass(frozen=True)
class CaseRecord:
    """What CASE.json holds for one case (see DETECT.md for each field).

    ``lesions`` are the final lesions' entries; ``detections_by_factor`` the counts and dropped detections per
    sensitivity factor (keys :func:`~nnunet_liver.inference.detector.factor_key`); ``patient`` the classes per
    factor, their consensus, its malignancy and LiverMax; ``timing_s`` the seconds of loading and prediction and of
    the whole case. ``dicom`` is the DICOM study's record when the case was read from DICOM (series, phases,
    reference series), ``dicom_outputs`` the SEG and SR file names written for it (or why they were not written),
    ``characterization`` the second stage's summary (with ``--characterizer``), ``output_errors`` the other outputs that could not be written (``{"figures": reason}``).
    """
    case: str
    phases_present: List[str]
    phases_missing: List[str]
    inputs: Dict[str, Optional[str]]
    geometry: dict
    model: dict
    settings: dict
    detections_by_factor: Dict[str, dict]
    lesions: List[dict]
    patient: dict
    timing_s: Dict[str, float] = field(default_factory=dict)
    characterization: Optional[dict] = None
    dicom: Optional[dict] = None
    dicom_outputs: Optional[dict] = None
    output_errors: Optional[Dict[str, str]] = None
    schema_version: str = SCHEMA_VERSION

    def with_dicom_outputs(self, outputs: dict) -> "CaseRecord":
        """This record with the DICOM outputs written for its study (``{"seg": ..., "sr": ...}``)."""
        return dataclasses.replace(self, dicom_outputs=dict(outputs))

    def with_characterization(self, lesion_entries: Dict[int, dict], summary: dict) -> "CaseRecord":
        """This record with the second stage's keys added to each lesion's entry (``lesion_entries``: lesion id ->
        keys) and its ``characterization`` summary (``nnunet_liver.characterize``)."""
        lesions = [dict(entry, **lesion_entries.get(int(entry["id"]), {})) for entry in self.lesions]
        return dataclasses.replace(self, lesions=lesions, characterization=dict(summary))

    def with_inputs(self, inputs: Dict[str, Optional[str]]) -> "CaseRecord":
        """This record with other input paths (the runner's, relative to the input folder)."""
        return dataclasses.replace(self, inputs=dict(inputs))

    def with_output_error(self, output: str, message: str) -> "CaseRecord":
        """This record noting that ``output`` (e.g. ``"figures"``) could not be written, and why."""
        return dataclasses.replace(self, output_errors={**(self.output_errors or {}), output: message})

    def to_dict(self) -> dict:
        """CASE.json's content, in the schema's key order (a deep copy: editing it does not change the record)."""
        out = {"schema_version": self.schema_version, "case": self.case,
               "phases_present": list(self.phases_present), "phases_missing": list(self.phases_missing),
               "inputs": dict(self.inputs), "geometry": self.geometry, "model": self.model, "settings": self.settings,
               "detections_by_factor": self.detections_by_factor, "lesions": self.lesions, "patient": self.patient,
               "timing_s": dict(self.timing_s)}
        if self.characterization is not None:
            out["characterization"] = self.characterization
        if self.dicom is not None:
            out["dicom"] = dict(self.dicom, outputs=self.dicom_outputs)
        if self.output_errors:
            out["output_errors"] = dict(self.output_errors)
        return copy.deepcopy(out)
