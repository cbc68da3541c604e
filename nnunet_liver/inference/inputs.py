"""The cases of a detection input folder and the loader of each: NIfTI files or DICOM studies.

A folder holds cases of two kinds, read by two loaders that build the same :class:`nnunet_liver.case.LoadedCase`:

- NIfTI files named as nnU-Net names them (``CASE_0000.nii.gz`` ...): :mod:`nnunet_liver.inference.cases`;
- DICOM studies at any depth, one case per StudyInstanceUID: :mod:`nnunet_liver.dicom` (phases identified, read,
  registered onto the reference phase).

:func:`discover_inputs` lists both as :class:`~nnunet_liver.inference.cases.CaseFiles` (a study rides in its
``dicom`` field); :func:`load_input` picks the loader. The runner discovers, the detector loads.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from nnunet_liver.case import LoadedCase, validate_case_id
from nnunet_liver.inference.cases import CaseFiles, discover_cases, load_case
from nnunet_liver.utils.io import InputError

__all__ = ["discover_inputs", "load_input"]


def discover_inputs(input_dir: str, num_channels: int, file_ending: str = ".nii.gz",
                    phase_map: Optional[Dict[str, str]] = None, exclude: Optional[str] = None) -> List[CaseFiles]:
    """The NIfTI cases of ``input_dir`` (:func:`~nnunet_liver.inference.cases.discover_cases`, sorted by id), then
    the DICOM studies found under ``input_dir`` but not under ``exclude`` (the output folder), sorted by id.

    ``phase_map`` (``--phase-map``: series number or UID -> phase) goes with every study. A study whose id is a NIfTI
    case's too carries an ``error`` (raised when it is loaded, so that only that case fails).
    """
    from nnunet_liver.dicom.index import has_dicom, index_studies

    cases = discover_cases(input_dir, num_channels, file_ending)
    nifti_ids = {c.case_id for c in cases}
    if has_dicom(input_dir, exclude=exclude):
        for study in index_studies(input_dir, exclude)[0]:
            study.phase_map = dict(phase_map or {})
            clash = f"{study.folder}: DICOM study {study.case_id} has the id of a NIfTI case of {input_dir}"
            cases.append(CaseFiles(study.case_id, [None] * num_channels,
                                   clash if study.case_id in nifti_ids else None, dicom=study))
    return cases


def load_input(case: CaseFiles, channel_names: Sequence[str], allow_missing: bool, register: bool = False,
               registration_transform: str = "rigid") -> LoadedCase:
    """Load a discovered case with its loader: :func:`nnunet_liver.dicom.study.load_dicom_case` for a DICOM study
    (always registered: a study's phases rarely share a grid), else
    :func:`nnunet_liver.inference.cases.load_case` (``register``: phases on another grid are registered instead of
    refused).

    Raises InputError for bad input (see the two loaders).
    """
    if case.dicom is None:
        return load_case(case, channel_names, allow_missing, register, registration_transform)
    from nnunet_liver.dicom.study import load_dicom_case

    validate_case_id(case.case_id)
    if case.error:
        raise InputError(case.error)
    return load_dicom_case(case.dicom, channel_names, allow_missing, registration_transform)
