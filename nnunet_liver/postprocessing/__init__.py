"""Post-processing of the whole-CT model's output: multi-sensitivity label maps, seg2det, match, patient rules.

Public API (imported lazily, so ``import nnunet_liver.postprocessing`` stays light)::

    lesion_sensitivity_masks(probabilities, factors=(1.0, 4.0)) -> {factor: label_map}
    seg2det(label_map, spacing, images=None, liver_mask=None, probabilities=None) -> list[Lesion]
    lesions_from_instance_map(instance_map, spacing, types) -> list[Lesion]
    instance_map(lesions, shape) -> uint16 (Z, Y, X)
    match(reference, prediction, min_ref_volume_cm3=0.5, min_pred_volume_cm3=0.5, overlap="any") -> MatchResult
    classify_patient(lesions) -> str ; consensus(a, b) -> str ; liver_max(probabilities, label_map) -> dict
    lesion_features(...) -> {"APHE", "NPW", "EC"}
"""
from importlib import import_module

_EXPORTS = {
    "lesion_sensitivity_masks": "sensitivity",
    "Lesion": "seg2det", "seg2det": "seg2det", "instance_map": "seg2det", "lesion_mask": "seg2det",
    "lesions_from_instance_map": "seg2det",
    "lesion_features": "features", "parenchyma_mask": "features",
    "MatchResult": "match", "match": "match", "parse_overlap": "match",
    "classify_patient": "patient", "consensus": "patient", "liver_max": "patient", "is_malignant_class": "patient",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
