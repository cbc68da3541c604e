"""Post-processing of the whole-CT model's output: multi-sensitivity label maps, seg2det, match, patient rules.

Public API (importing the package does not import torch, scipy or cc3d)::

    lesion_sensitivity_masks(probabilities, factors=(1.0, 4.0)) -> {factor: label_map}
    seg2det(label_map, spacing, images=None, liver_mask=None, probabilities=None) -> list[Lesion]
    lesions_from_instance_map(instance_map, spacing, types) -> list[Lesion]
    split_lesions(high_label_map, low_lesions, spacing, **seg2det_kwargs) -> list[Lesion]  (instance-preserving)
    instance_map(lesions, shape) -> uint16 (Z, Y, X)
    match(reference, prediction, min_ref_volume_cm3=0.5, min_pred_volume_cm3=0.5, overlap="any") -> MatchResult
    classify_patient(lesions) -> str ; consensus(a, b) -> str ; liver_max(probabilities, label_map) -> dict
    lesion_features(...) -> {"APHE", "NPW", "EC"}
"""
# These modules import only numpy and the label scheme at import time (scipy, cc3d and torch are imported inside
# the functions that need them). The functions are bound eagerly on purpose: ``seg2det`` and ``match`` are both a
# module and a function, and the function must win as the package attribute.
from nnunet_liver.postprocessing.sensitivity import lesion_sensitivity_masks
from nnunet_liver.postprocessing.seg2det import Lesion, instance_map, lesion_mask, lesions_from_instance_map, seg2det
from nnunet_liver.postprocessing.split import split_lesions
from nnunet_liver.postprocessing.features import lesion_features, parenchyma_mask
from nnunet_liver.postprocessing.match import MatchResult, match, parse_overlap
from nnunet_liver.postprocessing.patient import classify_patient, consensus, is_malignant_class, liver_max

__all__ = ["lesion_sensitivity_masks", "Lesion", "seg2det", "instance_map", "lesion_mask",
           "lesions_from_instance_map", "split_lesions", "lesion_features", "parenchyma_mask", "MatchResult", "match",
           "parse_overlap", "classify_patient", "consensus", "is_malignant_class", "liver_max"]
