"""Lesion-centred patches for the deep sub-models, and the augmentations nnU-Net's trainer builds for them.

A patch is the lesion's neighbourhood resampled (linear interpolation, the mask by nearest neighbour) onto a grid
of ``spacing`` (Sarfati et al.: 0.76 x 0.76 x 2 mm) around the lesion's centroid, with one channel per phase of the
sub-model and the lesion mask as the last channel: (C, Z, Y, X). A missing phase is the constant
``MISSING_PHASE_VALUE`` (-1024 HU) channel, as everywhere in the package; outside the scan is -1024 HU too.

Network input (:func:`normalize`): each phase through the pipeline's CT window (``labels.CT_WINDOW_HU``, mapped
onto [-2, 2] as nnU-Net's ``CTNormalization`` does with our plans), a constant channel (a missing phase) as 0, the
mask as 0/1.

Augmentation (:func:`training_transforms`): ``nnUNetTrainer.get_training_transforms`` itself, with the rotation,
dummy-2D and mirroring choices of ``nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size`` for
this patch size, and the mask handled as nnU-Net's cascade handles the previous stage's segmentation
(``is_cascaded``: the mask moves into the image as a one-hot channel after the spatial transform, then nnU-Net's
random dilation/erosion and component removal simulate an imperfect lesion mask). Patches for training are cut at
nnU-Net's larger initial patch size so the spatial transform has context to rotate and scale; absent phases are set
back to 0 after the intensity augmentations (which would make them vary), as the IFM trainers do.

Papers: Sarfati et al., "Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and handcrafted
radiological features".
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import CT_WINDOW_HU, MISSING_PHASE_VALUE

__all__ = ["augmentation_params", "extract_patch", "normalize", "center_crop", "training_transforms",
           "augment_batch"]


def augmentation_params(patch_size: Sequence[int]) -> Tuple[tuple, bool, Tuple[int, ...], tuple]:
    """(rotation range, dummy 2D, initial patch size, mirror axes) as nnU-Net's trainer derives them for a 3D
    ``patch_size`` (z, y, x) (``configure_rotation_dummyDA_mirroring_and_inital_patch_size``)."""
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    patch_size = tuple(int(p) for p in patch_size)
    dummy_2d = (max(patch_size) / patch_size[0]) > ANISO_THRESHOLD
    angle = np.pi if dummy_2d else 30.0 / 360 * 2.0 * np.pi
    rotation = (-angle, angle)
    initial = [int(v) for v in get_patch_size(patch_size, rotation, rotation, rotation, (0.85, 1.25))]
    if dummy_2d:
        initial[0] = patch_size[0]
    return rotation, dummy_2d, tuple(initial), (0, 1, 2)


def extract_patch(images: Mapping[str, np.ndarray], mask: np.ndarray, box: Sequence[slice],
                  spacing: Sequence[float], phases: Sequence[str], size: Sequence[int],
                  target_spacing: Sequence[float]) -> np.ndarray:
    """float32 (len(phases) + 1, *size): the phases (HU) and the lesion mask around the lesion's centroid.

    Parameters
    ----------
    images : {phase: (Z, Y, X) HU} of the present phases; a phase of ``phases`` absent here is the constant channel
    mask, box : the lesion's bool mask on its bounding box (three slices into the (Z, Y, X) arrays)
    spacing, target_spacing : (z, y, x) mm of the case and of the patch; size : (z, y, x) voxels of the patch
    """
    from scipy import ndimage

    idx = np.argwhere(mask).mean(axis=0) + [s.start for s in box]  # centroid (voxels)
    step = np.asarray(target_spacing, float) / np.asarray(spacing, float)  # case voxels per patch voxel
    start = idx - step * (np.asarray(size, float) - 1) / 2.0
    out = np.empty((len(phases) + 1,) + tuple(int(s) for s in size), np.float32)
    for c, phase in enumerate(phases):
        if phase not in images:
            out[c] = MISSING_PHASE_VALUE
            continue
        ndimage.affine_transform(np.asarray(images[phase]), step, offset=start, output_shape=out.shape[1:],
                                 output=out[c], order=1, mode="constant", cval=MISSING_PHASE_VALUE)
    box_start = np.asarray([sl.start for sl in box], float)
    padded = np.pad(np.asarray(mask, np.float32), 1)  # zero around the box: the mask is empty outside it
    ndimage.affine_transform(padded, step, offset=start - box_start + 1, output_shape=out.shape[1:], output=out[-1],
                             order=0, mode="constant", cval=0.0)
    return out


def normalize(patch: np.ndarray) -> np.ndarray:
    """Network input from an :func:`extract_patch` patch (C, Z, Y, X): phases through the CT window onto [-2, 2],
    a constant phase channel (missing) 0, the mask (last channel) 0/1."""
    lo, hi = CT_WINDOW_HU
    out = np.empty_like(patch, dtype=np.float32)
    for c in range(patch.shape[0] - 1):
        ch = patch[c]
        out[c] = 0.0 if ch.min() == ch.max() else (np.clip(ch, lo, hi) - (lo + hi) / 2.0) / ((hi - lo) / 4.0)
    out[-1] = patch[-1] > 0.5
    return out


def center_crop(patch: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The centred (C, *size) part of a (C, Z, Y, X) patch (size <= its spatial shape)."""
    lo = [(s - t) // 2 for s, t in zip(patch.shape[1:], size)]
    return patch[(slice(None),) + tuple(slice(a, a + int(t)) for a, t in zip(lo, size))]


def training_transforms(patch_size: Sequence[int]):
    """nnU-Net's training transforms for a cascade-style input (see the module docstring)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    rotation, dummy_2d, _, mirror = augmentation_params(patch_size)
    return nnUNetTrainer.get_training_transforms(tuple(int(p) for p in patch_size), rotation, None, mirror, dummy_2d,
                                                 is_cascaded=True, foreground_labels=[1])


def augment_batch(transforms, patches: np.ndarray) -> np.ndarray:
    """Augment normalised initial-size patches (B, C, Z, Y, X), mask last, into (B, C, *patch_size) float32."""
    import torch

    out = []
    for p in patches:
        present = [bool(p[c].min() != p[c].max()) for c in range(p.shape[0] - 1)]
        mask = torch.from_numpy(np.ascontiguousarray(p[-1:] > 0.5)).to(torch.int16)
        sample = transforms(**{"image": torch.from_numpy(np.ascontiguousarray(p[:-1])),
                               "segmentation": torch.cat([mask, mask])})
        image = sample["image"]  # phases, then the mask moved in as one-hot (nnU-Net's cascade input)
        for c, ok in enumerate(present):
            if not ok:
                image[c] = 0
        out.append(image.float().numpy())
    return np.stack(out)
