"""Lesion reclassification with UNet-patch (Wang et al., Sec. III-B; ARCHITECTURE.md, "reclassify").

For each lesion of at most ``max_volume_cm3`` (64 cm3): ``n`` (10) patches that contain the lesion, half at its own
place with a random offset and half transplanted into a lesion-free part of the same liver
(:func:`~nnunet_liver.postprocessing.lesion_shuffle.make_reclassification_patches`), outside-liver voxels masked.
UNet-patch segments all ``n`` patches in one batch. The lesion's score is the mean over patches of the volume (cm3)
where UNet-patch's lesion labels (1..6) overlap the lesion's (transplanted) mask; a lesion scoring below
``min_score_cm3`` (0.5 cm3) is dropped as a false positive. A kept lesion's new type is the volume vote of
UNet-patch's lesion labels inside its mask over all patches (ties: the higher-priority type). Larger lesions keep
their type and skip the step. With a UNet-patch that carries LIDIA's lesion head (``lesion_head=True``), the same
network calls also give the lesion's per-type probabilities (the head's softmax averaged over the ``n`` patches and the
folds), and a kept lesion's type is the most probable one (ties: the higher-priority type); the voxel vote is kept
beside it as ``type_vote``. A lesion whose own volume (on UNet-patch's grid) is below ``min_score_cm3`` cannot score
enough (the overlap in a patch is at most the lesion's volume), so it is dropped without a network call.

The arrays given here are already on UNet-patch's grid (its plans' spacing, its intensity normalisation);
:class:`nnunet_liver.inference.patch_model.PatchModel` prepares them with nnU-Net's preprocessor.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans"; Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative
Fusion and Asymmetric Contrastive Learning" (the lesion head).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import LESION_IDS, majority_type, name_of
from nnunet_liver.postprocessing.lesion_shuffle import make_reclassification_patches

__all__ = ["ReclassificationResult", "reclassify", "overlap_scores", "head_type"]


@dataclass
class ReclassificationResult:
    """What reclassification decided for one lesion (volumes in cm3 on UNet-patch's grid)."""
    lesion_id: int
    kept: bool
    type_before: str
    type_after: Optional[str]
    score_cm3: Optional[float] = None
    votes_cm3: Dict[str, float] = field(default_factory=dict)
    num_patches: int = 0
    skipped: Optional[str] = None  # why the step was skipped for this lesion, else None
    #: the patch model has LIDIA's lesion head: ``type_vote`` and ``type_probabilities`` are recorded
    lesion_head: bool = False
    #: the voxel vote's type (``type_after`` without the lesion head), None when the step was skipped or dropped it
    type_vote: Optional[str] = None
    #: the lesion head's probability per lesion type (mean over patches and folds), None when it did not run
    type_probabilities: Optional[Dict[str, float]] = None

    def to_dict(self) -> dict:
        out = {"kept": self.kept, "score_cm3": self.score_cm3, "type_before": self.type_before,
               "type_after": self.type_after, "votes_cm3": dict(self.votes_cm3), "num_patches": self.num_patches,
               "skipped": self.skipped}
        if self.lesion_head:  # models without the head keep their record as it was
            out["type_vote"] = self.type_vote
            out["type_probabilities"] = None if self.type_probabilities is None else dict(self.type_probabilities)
        return out


def overlap_scores(predicted: np.ndarray, lesion_masks: np.ndarray, voxel_volume_cm3: float
                   ) -> Tuple[float, Dict[int, float]]:
    """Score and type votes from UNet-patch's label maps.

    Parameters
    ----------
    predicted : (N, pz, py, px) int, UNet-patch labels (0 masked, 1..6 lesion types, 7 liver).
    lesion_masks : (N, pz, py, px) bool, the lesion's mask in each patch.
    voxel_volume_cm3 : volume of one patch voxel.

    Returns
    -------
    (mean over patches of the overlap volume in cm3, {lesion label id: voted volume in cm3 over all patches})
    """
    predicted = np.asarray(predicted)
    lesion_masks = np.asarray(lesion_masks, dtype=bool)
    if predicted.shape != lesion_masks.shape or predicted.ndim != 4:
        raise ValueError(f"predicted {predicted.shape} and lesion_masks {lesion_masks.shape} must both be "
                         f"(N, pz, py, px)")
    inside = predicted[lesion_masks]
    counts = np.bincount(inside.astype(np.int64).ravel(), minlength=max(LESION_IDS) + 1)
    votes = {int(l): float(counts[l]) * voxel_volume_cm3 for l in LESION_IDS if counts[l] > 0}
    overlap_per_patch = (np.isin(predicted, LESION_IDS) & lesion_masks).reshape(len(predicted), -1).sum(1)
    return float(overlap_per_patch.mean() * voxel_volume_cm3), votes


def head_type(probabilities: Sequence[float]) -> int:
    """The lesion type (label id) of the lesion head's probabilities over ``LESION_IDS``: the most probable one,
    ties to the higher-priority type (the final-type rule with a lesion head)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(LESION_IDS),):
        raise ValueError(f"expected {len(LESION_IDS)} lesion type probabilities, got shape {probabilities.shape}")
    return int(majority_type({l: float(p) for l, p in zip(LESION_IDS, probabilities)}))


def reclassify(lesions: Sequence, instance_map: np.ndarray, liver_mask: np.ndarray, image: np.ndarray,
               spacing: Sequence[float], predict_patches: Callable[[np.ndarray], np.ndarray], *, n: int = 10,
               patch_size: Sequence[int] = (16, 128, 128), max_volume_cm3: float = 64.0,
               min_score_cm3: float = 0.5, rng: Optional[np.random.Generator] = None, masked_value: float = 0.0,
               lesion_head: bool = False) -> Tuple[List, Dict[int, ReclassificationResult]]:
    """Reclassify lesions with UNet-patch; return the kept lesions (retyped copies) and a result per lesion id.

    Parameters
    ----------
    lesions : ``Lesion`` objects (``id``, ``label``, ``volume_cm3``) of the whole-CT grid; not modified.
    instance_map : (Z, Y, X) int, the lesions' ids on UNet-patch's grid (0 elsewhere).
    liver_mask : (Z, Y, X) bool on UNet-patch's grid (predicted liver incl. lesions and hepatic vessels).
    image : (C, Z, Y, X) float32, normalised as UNet-patch's training data, on its grid.
    spacing : (z, y, x) mm of UNet-patch's grid.
    predict_patches : maps a batch (N, C, pz, py, px) float32 to UNet-patch labels (N, pz, py, px) int, in ONE
        network call per fold (see ``PatchModel.predict_patches``).
    n : patches per lesion. patch_size : (pz, py, px) voxels. max_volume_cm3 : larger lesions skip the step
        (volume on the whole-CT grid). min_score_cm3 : lesions scoring lower are dropped.
    rng : numpy Generator for the patch positions (default: seeded 0, so results are reproducible).
    lesion_head : ``predict_patches(patches, lesion_masks)`` returns ``(labels, type probabilities (6,) or None)``:
        the kept lesion's type is the head's most probable type (:func:`head_type`), the voxel vote is recorded.

    Returns
    -------
    (kept lesions in input order with ``label`` set to the voted type, {lesion id: ReclassificationResult})
    """
    rng = np.random.default_rng(0) if rng is None else rng
    if image.ndim != 4 or image.shape[1:] != instance_map.shape or liver_mask.shape != instance_map.shape:
        raise ValueError(f"image {image.shape} must be (C, Z, Y, X) with instance_map {instance_map.shape} and "
                         f"liver_mask {liver_mask.shape} on the same (Z, Y, X) grid")
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    liver_mask = np.asarray(liver_mask, dtype=bool)
    ids = np.asarray(instance_map).astype(np.int64, copy=False)
    voxels_on_grid = np.bincount(ids.ravel(), minlength=max([l.id for l in lesions], default=0) + 1)
    kept, results = [], {}
    for lesion in lesions:
        before = name_of(lesion.label)
        if lesion.volume_cm3 > max_volume_cm3:
            results[lesion.id] = ReclassificationResult(lesion.id, True, before, before,
                                                        skipped=f"volume > {max_volume_cm3:g} cm3",
                                                        lesion_head=lesion_head)
            kept.append(lesion)
            continue
        if voxels_on_grid[lesion.id] == 0:  # vanished when resampled to UNet-patch's grid: nothing to score
            results[lesion.id] = ReclassificationResult(lesion.id, False, before, None, score_cm3=0.0,
                                                        skipped="no voxel on UNet-patch's grid",
                                                        lesion_head=lesion_head)
            continue
        if voxels_on_grid[lesion.id] * voxel_cm3 < min_score_cm3:
            # the overlap in a patch is at most the lesion's own volume, so the score cannot reach the threshold:
            # dropped without running UNet-patch (same decision, no network call)
            results[lesion.id] = ReclassificationResult(
                lesion.id, False, before, None, score_cm3=None,
                skipped=f"volume on UNet-patch's grid < {min_score_cm3:g} cm3 (cannot reach the score threshold)",
                lesion_head=lesion_head)
            continue
        lesion_mask = ids == lesion.id
        patches, masks = make_reclassification_patches(image, liver_mask | lesion_mask, lesion_mask, n=n,
                                                       patch_size=tuple(patch_size), rng=rng,
                                                       masked_value=masked_value)
        probabilities = None
        if lesion_head:
            predicted, probabilities = predict_patches(patches, masks)
        else:
            predicted = predict_patches(patches)
        score, votes = overlap_scores(np.asarray(predicted), masks, voxel_cm3)
        keep = score >= min_score_cm3
        vote = majority_type(votes, lesion.label) if keep else None
        after = head_type(probabilities) if keep and probabilities is not None else vote
        results[lesion.id] = ReclassificationResult(
            lesion.id, bool(keep), before, name_of(after) if keep else None, score_cm3=score,
            votes_cm3={name_of(l): v for l, v in sorted(votes.items())}, num_patches=int(len(patches)),
            lesion_head=lesion_head, type_vote=name_of(vote) if keep else None,
            type_probabilities=None if probabilities is None else
            {name_of(l): float(p) for l, p in zip(LESION_IDS, probabilities)})
        if keep:
            kept.append(lesion if after == lesion.label else
                        dataclasses.replace(lesion, label=int(after)))
    return kept, results
