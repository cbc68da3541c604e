"""Where the lesions to characterize come from: reference lesions of a dataset, or the detector's final lesions.

Either way a case becomes a :class:`CaseLesions`: the present phases on one grid, the lesions (seg2det's
:class:`~nnunet_liver.postprocessing.seg2det.Lesion`, each with its mask on its bounding box) and the liver
parenchyma. A dataset is an nnU-Net raw dataset (``dataset.json`` naming the channels NC, A, V, D, images
``imagesTr/CASE_XXXX.nii.gz`` and reference label maps ``labelsTr/CASE.nii.gz`` in our label ids); its lesions are
the reference label map's lesions by seg2det's slice-overlap rule, their type the reference type. Phases must be
registered (``nnunet-liver-convert multiphase`` registers them); a constant channel is a missing phase.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import LIVER_REGION_IDS, PHASES
from nnunet_liver.utils.io import InputError, read_image

__all__ = ["CaseLesions", "dataset_channels", "dataset_cases", "load_dataset_case", "case_from_label_map",
           "case_from_detection", "iter_dataset", "phantom_truth", "match_truth"]


@dataclass
class CaseLesions:
    """One case's lesions with what their features need.

    ``images``: {phase: (Z, Y, X) HU} of the present phases only; ``spacing`` (z, y, x) mm; ``lesions``: seg2det
    ``Lesion`` objects; ``parenchyma``: bool (Z, Y, X), the liver without lesions; ``phases_missing``: the
    channels that are absent or constant.
    """
    case_id: str
    images: Dict[str, np.ndarray]
    spacing: Tuple[float, float, float]
    lesions: list
    parenchyma: np.ndarray
    phases_missing: List[str] = field(default_factory=list)


def _present(images: Dict[str, Optional[np.ndarray]]) -> Tuple[Dict[str, np.ndarray], List[str]]:
    from nnunet_liver.postprocessing.features import present_phases

    present = set(present_phases(images))
    return ({p: a for p, a in images.items() if p in present},
            [p for p in images if p not in present])


def case_from_label_map(case_id: str, images: Dict[str, Optional[np.ndarray]], label_map: np.ndarray,
                        spacing: Sequence[float]) -> CaseLesions:
    """The reference lesions of ``label_map`` (Z, Y, X, our ids) with the phases ``images`` on its grid."""
    from nnunet_liver.postprocessing.seg2det import lesion_foreground, seg2det

    present, missing = _present(images)
    lm = np.asarray(label_map)
    parenchyma = np.isin(lm, LIVER_REGION_IDS) & ~lesion_foreground(lm)
    return CaseLesions(case_id, present, tuple(float(s) for s in spacing), seg2det(lm, spacing), parenchyma,
                       missing)


def case_from_detection(result) -> CaseLesions:
    """The detector's final lesions of one case (a ``CaseResult``): the present phases on the reference grid, the
    lesions of ``result.lesions``, the parenchyma = the highest factor's liver (labels 1..8) minus every lesion
    voxel of that map and of the final lesions."""
    from nnunet_liver.postprocessing.seg2det import lesion_foreground

    case = result.case
    images, missing = _present(dict(case.images_by_phase()))
    missing += [p for p in case.phases_missing if p not in missing]
    parenchyma = np.zeros(result.instance_map.shape, dtype=bool)
    if result.label_maps:
        lm = result.label_maps[max(result.label_maps)]
        lm = lm.cpu().numpy() if hasattr(lm, "cpu") else np.asarray(lm)  # torch on any device
        parenchyma = np.isin(lm, LIVER_REGION_IDS) & ~lesion_foreground(lm)
    parenchyma &= result.instance_map == 0
    return CaseLesions(case.case_id, images, tuple(float(s) for s in case.spacing), list(result.lesions),
                       parenchyma, missing)


def dataset_channels(dataset_dir: str) -> Dict[int, str]:
    """{channel index: phase name} from an nnU-Net raw dataset's ``dataset.json``; every name must be a phase."""
    path = os.path.join(dataset_dir, "dataset.json")
    if not os.path.isfile(path):
        raise InputError(f"{dataset_dir}: no dataset.json (an nnU-Net raw dataset with imagesTr/ and labelsTr/)")
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f)["channel_names"]
        channels = {int(k): str(v) for k, v in names.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: no valid channel_names ({e})") from None
    bad = [n for n in channels.values() if n not in PHASES]
    if bad:
        raise InputError(f"{path}: channel names {bad} are not phases {list(PHASES)}")
    return channels


def dataset_cases(dataset_dir: str, subset: str = "Tr") -> List[str]:
    """Case ids of ``labels{subset}/`` (sorted) that have at least one image in ``images{subset}/``."""
    labels_dir = os.path.join(dataset_dir, f"labels{subset}")
    if not os.path.isdir(labels_dir):
        raise InputError(f"{dataset_dir}: no labels{subset}/ folder (reference label maps name the lesions)")
    images = set(os.listdir(os.path.join(dataset_dir, f"images{subset}"))) \
        if os.path.isdir(os.path.join(dataset_dir, f"images{subset}")) else set()
    cases = sorted(n[:-7] for n in os.listdir(labels_dir) if n.endswith(".nii.gz"))
    cases = [c for c in cases if any(n.startswith(c + "_") for n in images)]
    if not cases:
        raise InputError(f"{dataset_dir}: no case with both labels{subset}/CASE.nii.gz and "
                         f"images{subset}/CASE_XXXX.nii.gz")
    return cases


def load_dataset_case(dataset_dir: str, case_id: str, subset: str = "Tr",
                      channels: Optional[Dict[int, str]] = None) -> CaseLesions:
    """Read one case of an nnU-Net raw dataset: its phases and reference lesions (see the module docstring)."""
    channels = dataset_channels(dataset_dir) if channels is None else channels
    label_path = os.path.join(dataset_dir, f"labels{subset}", f"{case_id}.nii.gz")
    label, spacing, label_img = read_image(label_path, "label map")
    images: Dict[str, Optional[np.ndarray]] = {}
    for c, phase in sorted(channels.items()):
        path = os.path.join(dataset_dir, f"images{subset}", f"{case_id}_{c:04d}.nii.gz")
        if not os.path.isfile(path):
            images[phase] = None
            continue
        array, _, img = read_image(path, f"{phase} image")
        if img.GetSize() != label_img.GetSize() or np.abs(np.subtract(img.GetSpacing(),
                                                                      label_img.GetSpacing())).max() > 1e-3:
            raise InputError(f"{path}: grid {img.GetSize()} at {img.GetSpacing()} mm differs from the label map's "
                             f"{label_img.GetSize()} at {label_img.GetSpacing()} (register the phases first)")
        images[phase] = array.astype(np.float32, copy=False)
    if not any(v is not None for v in images.values()):
        raise InputError(f"{dataset_dir}: case {case_id} has no image in images{subset}/")
    return case_from_label_map(case_id, images, label, spacing)


def iter_dataset(dataset_dir: str, subset: str = "Tr", cases: Optional[Sequence[str]] = None
                 ) -> Iterator[CaseLesions]:
    """Every case of the dataset (or ``cases``) as :class:`CaseLesions`, one at a time."""
    channels = dataset_channels(dataset_dir)
    for case_id in (dataset_cases(dataset_dir, subset) if cases is None else cases):
        yield load_dataset_case(dataset_dir, case_id, subset, channels)


def phantom_truth(dataset_dir: str) -> Dict[str, List[dict]]:
    """The phantom generator's lesions per case (``truth.json`` beside ``dataset.json``; empty without one)."""
    path = os.path.join(dataset_dir, "truth.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        truth = json.load(f)
    return {case: list(entry.get("lesions", [])) for case, entry in truth.get("cases", {}).items()}


def match_truth(lesion, truth_lesions: Sequence[dict]) -> Optional[dict]:
    """The truth entry of a seg2det lesion of a phantom: seg2det finds each phantom lesion as one component with
    the truth's voxel count and centroid (to its 0.01-voxel rounding)."""
    for t in truth_lesions:
        if int(t["num_voxels"]) == lesion.num_voxels and \
                np.abs(np.subtract(t["center_voxel"], lesion.centroid_voxel)).max() < 0.02:
            return t
    return None
