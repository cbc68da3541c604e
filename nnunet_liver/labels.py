"""The 13-class label scheme of the whole-CT model, and the patch model's labels.

This module is the single source of truth for label ids, names and kinds. Dataset conversion writes
dataset.json from it, outputs name types with it, and evaluation groups lesions with it. The table:
ARCHITECTURE.md, "Label scheme".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

__all__ = [
    "LabelInfo", "LABELS", "BACKGROUND", "HCC", "ICC", "META", "HEM", "OTHER", "CYST", "LIVER",
    "HEPATIC_VESSELS", "PORTAL_SPLENIC_VEIN", "GALLBLADDER", "SPLEEN", "PANCREAS", "STOMACH",
    "NUM_CLASSES", "LESION_IDS", "ORGAN_IDS", "MALIGNANT_IDS", "BENIGN_IDS", "LESION_PRIORITY",
    "LIVER_REGION_IDS", "LESION_NAMES", "NORMAL", "UNCERTAIN", "PATCH_MASKED", "PATCH_LIVER", "PATCH_LABELS",
    "PHASES", "MISSING_PHASE_VALUE", "CT_WINDOW_HU", "name_of", "id_of", "is_lesion", "is_malignant",
    "priority_rank", "majority_type", "dataset_json_labels", "patch_dataset_json_labels", "validate_label_values",
]


@dataclass(frozen=True)
class LabelInfo:
    """One class of the whole-CT model."""
    id: int
    name: str
    kind: str  # "background", "lesion" or "organ"
    malignant: bool = False
    description: str = ""


BACKGROUND, HCC, ICC, META, HEM, OTHER, CYST = 0, 1, 2, 3, 4, 5, 6
LIVER, HEPATIC_VESSELS, PORTAL_SPLENIC_VEIN, GALLBLADDER, SPLEEN, PANCREAS, STOMACH = 7, 8, 9, 10, 11, 12, 13

LABELS: Tuple[LabelInfo, ...] = (
    LabelInfo(BACKGROUND, "background", "background"),
    LabelInfo(HCC, "HCC", "lesion", True, "hepatocellular carcinoma"),
    LabelInfo(ICC, "ICC", "lesion", True, "intrahepatic cholangiocarcinoma"),
    LabelInfo(META, "Meta", "lesion", True, "metastasis"),
    LabelInfo(HEM, "Hem", "lesion", False, "hemangioma"),
    LabelInfo(OTHER, "Other", "lesion", False, "other lesions (FNH, implants, others)"),
    LabelInfo(CYST, "Cyst", "lesion", False, "cyst"),
    LabelInfo(LIVER, "liver", "organ", False, "liver parenchyma"),
    LabelInfo(HEPATIC_VESSELS, "hepatic_vessels", "organ", False, "hepatic vessels"),
    LabelInfo(PORTAL_SPLENIC_VEIN, "portal_splenic_vein", "organ", False, "portal and splenic vein"),
    LabelInfo(GALLBLADDER, "gallbladder", "organ", False, "gallbladder"),
    LabelInfo(SPLEEN, "spleen", "organ", False, "spleen"),
    LabelInfo(PANCREAS, "pancreas", "organ", False, "pancreas"),
    LabelInfo(STOMACH, "stomach", "organ", False, "stomach"),
)

#: number of classes including background (channels of the whole-CT model's probabilities)
NUM_CLASSES: int = len(LABELS)
LESION_IDS: Tuple[int, ...] = tuple(l.id for l in LABELS if l.kind == "lesion")
ORGAN_IDS: Tuple[int, ...] = tuple(l.id for l in LABELS if l.kind == "organ")
MALIGNANT_IDS: Tuple[int, ...] = tuple(l.id for l in LABELS if l.malignant)
BENIGN_IDS: Tuple[int, ...] = tuple(i for i in LESION_IDS if i not in MALIGNANT_IDS)
#: patient priority, highest first: HCC > ICC > Meta > Hem > Other > Cyst
LESION_PRIORITY: Tuple[int, ...] = (HCC, ICC, META, HEM, OTHER, CYST)
#: lesion type names in id order: ("HCC", "ICC", "Meta", "Hem", "Other", "Cyst")
LESION_NAMES: Tuple[str, ...] = tuple(l.name for l in LABELS if l.kind == "lesion")
#: patient class of a case without lesions, and of a case whose sensitivity factors disagree
NORMAL, UNCERTAIN = "normal", "uncertain"
#: labels that make up the predicted liver for LiverMax (lesions, parenchyma and hepatic vessels)
LIVER_REGION_IDS: Tuple[int, ...] = LESION_IDS + (LIVER, HEPATIC_VESSELS)

#: the patch model (UNet-patch): 0 = outside the liver (masked), 1..6 = lesion types, 7 = liver
PATCH_MASKED, PATCH_LIVER = 0, 7
PATCH_LABELS: Dict[str, int] = {"masked": PATCH_MASKED, **{l.name: l.id for l in LABELS if l.kind == "lesion"},
                                "liver": PATCH_LIVER}

#: CT phases in time order, as channel names
PHASES: Tuple[str, ...] = ("NC", "A", "V", "D")
#: a missing phase is written as a constant image of this value (HU); no real CT is constant at -1024 everywhere
MISSING_PHASE_VALUE: float = -1024.0

#: the CT window (HU) of the whole pipeline: nnU-Net's CTNormalization clipping in the plans and the report's images
CT_WINDOW_HU: Tuple[float, float] = (-150.0, 250.0)

_BY_NAME = {l.name.lower(): l for l in LABELS}


def name_of(label_id: int) -> str:
    """Name of a label id (``1 -> "HCC"``)."""
    if not 0 <= int(label_id) < NUM_CLASSES:
        raise ValueError(f"label id {label_id} is not in the scheme (0..{NUM_CLASSES - 1})")
    return LABELS[int(label_id)].name


def id_of(name: str) -> int:
    """Id of a label name, case-insensitive (``"hcc" -> 1``)."""
    try:
        return _BY_NAME[str(name).lower()].id
    except KeyError:
        raise ValueError(f"unknown label name {name!r}; known: {', '.join(l.name for l in LABELS)}") from None


def is_lesion(label_id: int) -> bool:
    return int(label_id) in LESION_IDS


def is_malignant(label: Union[int, str]) -> Optional[bool]:
    """The package's one malignancy accessor, for a label id, a label name or a patient class.

    True for HCC, ICC and Meta (``MALIGNANT_IDS``); False for the benign lesion types, the organs, background and
    :data:`NORMAL`; None for :data:`UNCERTAIN` (the sensitivity factors disagree: no decision). Names are
    case-insensitive; an unknown name raises ValueError.
    """
    if isinstance(label, str):
        if label == UNCERTAIN:
            return None
        if label == NORMAL:
            return False
        return id_of(label) in MALIGNANT_IDS
    return int(label) in MALIGNANT_IDS


def priority_rank(label_id: int) -> int:
    """0 for the highest-priority lesion type (HCC) ... 5 for Cyst; ``len(LESION_PRIORITY)`` for non-lesions."""
    try:
        return LESION_PRIORITY.index(int(label_id))
    except ValueError:
        return len(LESION_PRIORITY)


def majority_type(votes: Mapping[int, float], fallback: Optional[int] = None) -> Optional[int]:
    """The lesion type with the largest vote (voxel count, overlap, ...); a tie goes to the higher-priority type
    (HCC > ICC > Meta > Hem > Other > Cyst). ``fallback`` when there is no vote at all.

    The one majority rule of the package: a detection's type from its voxels (seg2det), a training patch's type
    (lesion shuffle) and a reclassified type from the patch votes (reclassify) all use it.
    """
    if not votes:
        return fallback
    best = max(votes.values())
    return min((int(l) for l, v in votes.items() if v == best), key=priority_rank)


def dataset_json_labels() -> Dict[str, int]:
    """The ``labels`` entry of an nnU-Net dataset.json for the whole-CT model."""
    return {l.name: l.id for l in LABELS}


def patch_dataset_json_labels() -> Dict[str, int]:
    """The ``labels`` entry of an nnU-Net dataset.json for the patch model (UNet-patch)."""
    return {("background" if k == "masked" else k): v for k, v in PATCH_LABELS.items()}


def validate_label_values(values: Iterable[int], allowed: Iterable[int] = None, what: str = "label map") -> None:
    """Raise ValueError naming the values of ``values`` that are not in ``allowed`` (default: the 13-class scheme)."""
    allowed = set(range(NUM_CLASSES)) if allowed is None else {int(a) for a in allowed}
    bad = sorted({int(v) for v in values} - allowed)
    if bad:
        raise ValueError(f"{what}: label values {bad} are outside the allowed set {sorted(allowed)}")
