"""UNet-patch for reclassification: its grid, its intensity normalisation, one batched call per fold; with the lesion
head of Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative Fusion
and Asymmetric Contrastive Learning" (``LesionShufflePatchTrainer_LIDIA*``), the lesion's per-type probabilities
from the same calls."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.inference.model import LoadedModel, load_model
from nnunet_liver.inference.predict import preprocess_like_training
from nnunet_liver.labels import LIVER_REGION_IDS
from nnunet_liver.nnunet_mirror import resample_seg_like

__all__ = ["PatchModel", "PreparedImage", "LesionMasks", "reclassify_on_case", "prepare_factor_masks"]


@dataclass
class PreparedImage:
    """A case's image on UNet-patch's grid, as nnU-Net's preprocessor gives it (:meth:`PatchModel.prepare_image`).

    Arrays and spacing are in the network's axis order (the plans' ``transpose_forward`` applied, as UNet-patch's
    patch size is; (z, y, x) for the usual identity transpose).
    """
    #: (C, z, y, x) float32, normalised as UNet-patch's training data
    image: np.ndarray
    #: nnU-Net's preprocessing properties of the case (spacing, cropping box, shapes): map the whole-CT grid onto it
    properties: dict
    #: (z, y, x) mm of UNet-patch's grid
    spacing: Tuple[float, ...]


@dataclass
class LesionMasks:
    """One sensitivity factor's lesions and predicted liver on UNet-patch's grid (:meth:`PatchModel.prepare_masks`),
    with the prepared image the reclassification patches are cut from."""
    prepared: PreparedImage
    #: (z, y, x) int32 lesion ids (0: no lesion)
    instances: np.ndarray
    #: (z, y, x) bool, the predicted liver (labels 1..8) and the lesions
    liver: np.ndarray


class PatchModel:
    """A trained UNet-patch (labels 0 masked, 1..6 lesion types, 7 liver), ready to segment batches of patches.

    Parameters
    ----------
    model_dir : the patch model's nnU-Net training output folder (or ``"demo"``).
    folds : folds to ensemble (``None``: all folds holding ``checkpoint``); their logits are averaged (nnU-Net's rule).
    device : torch device string.
    """

    def __init__(self, model_dir: str, folds: Optional[Sequence] = None, checkpoint: str = "checkpoint_final.pth",
                 device: str = "cpu"):
        import torch

        self.model: LoadedModel = load_model(model_dir, folds, checkpoint, which="patch")
        self.device = torch.device(device)
        self.network = self.model.network.to(self.device).eval()
        self.patch_size: Tuple[int, ...] = tuple(int(p) for p in self.model.configuration_manager.patch_size)
        self.spacing: Tuple[float, ...] = tuple(float(s) for s in self.model.configuration_manager.spacing)
        from nnunet_liver.trainers.liver_lesion_head import lesion_head_of

        #: LIDIA's lesion head of the network (None for a UNet-patch without one)
        self.lesion_head = lesion_head_of(self.network)

    @property
    def has_lesion_head(self) -> bool:
        return self.lesion_head is not None

    def describe(self) -> dict:
        out = self.model.describe()
        if self.has_lesion_head:  # a model without the head keeps its record as it was
            out["lesion_head"] = True
        return out

    def prepare_image(self, data: np.ndarray, spacing: Sequence[float],
                      preprocessed: Optional[Tuple[np.ndarray, dict]] = None) -> PreparedImage:
        """Preprocess a case's image for UNet-patch once (nnU-Net's preprocessor: crop, normalise, resample).

        Parameters
        ----------
        data : (C, Z, Y, X) HU on the whole-CT grid. spacing : (z, y, x) mm.
        preprocessed : UNet-whole's preprocessed image and properties (``CaseMaps.preprocessed``), used as they are
            when the two models preprocess alike (:func:`~nnunet_liver.nnunet_mirror.same_preprocessing`: the
            same arrays nnU-Net's preprocessor would give here); ``None``: preprocess ``data``.

        Returns
        -------
        the image (C, z, y, x) normalised on UNet-patch's grid, for :meth:`prepare_masks`.
        """
        if preprocessed is not None:
            image, properties = preprocessed
        else:
            image, _, properties = preprocess_like_training(self.model, data, spacing)
        return PreparedImage(np.ascontiguousarray(image, dtype=np.float32), properties, self.spacing)

    def prepare_masks(self, prepared: PreparedImage, instance_map: np.ndarray, liver_mask: np.ndarray
                      ) -> LesionMasks:
        """Resample the lesion ids and the liver mask ((Z, Y, X) on the whole-CT grid) onto UNet-patch's grid the
        way the image was (nearest neighbour), in the network's axis order."""
        return self.prepare_masks_many(prepared, [(instance_map, liver_mask)])[0]

    def prepare_masks_many(self, prepared: PreparedImage, pairs: Sequence[Tuple[np.ndarray, np.ndarray]]
                           ) -> List[LesionMasks]:
        """:meth:`prepare_masks` for several ``(instance_map, liver_mask)`` pairs (one per sensitivity factor) in ONE
        nearest-neighbour pass over the whole-CT grid: the same results as one call per pair.

        Each pair becomes one label map (lesion ids 1..n, liver without lesion n + 1); the maps are packed into one
        integer code (``sum_k map_k * base**k``) that is resampled once. Nearest neighbour copies each output voxel
        from one input voxel chosen by the coordinates alone, so unpacking gives every map's own result; codes stay
        below 2**53, where nnU-Net's float64 resampling holds integers exactly (otherwise one pass per pair).
        """
        liver_ids = [int(ids.max()) + 1 if ids.size else 1 for ids, _ in pairs]  # liver without lesion: n + 1
        base = max(liver_ids, default=0) + 1
        packed = len(pairs) > 1 and base ** len(pairs) < 2 ** 53
        dtype = np.int32 if base ** (len(pairs) if packed else 1) < 2 ** 31 else np.int64

        def combined(k):  # one label map: lesion ids 1..n, liver (without lesion) n + 1
            ids, liver_mask = pairs[k]
            c = ids.astype(dtype)
            c[(c == 0) & liver_mask] = liver_ids[k]
            return c

        def resample(label_map):  # nearest neighbour: one pass for any number of ids (per-label costs one per id)
            return resample_seg_like(label_map[None], prepared.properties, prepared.image.shape[1:],
                                     self.model.plans_manager, self.model.configuration_manager,
                                     order=0)[0].astype(np.int64)

        if packed:  # built in place, one factor's map at a time (memory: two int32 volumes)
            code = combined(0)
            for k in range(1, len(pairs)):
                code += combined(k) * dtype(base ** k)
            code = resample(code)
            segs = []
            for _ in pairs:
                code, seg = np.divmod(code, base)
                segs.append(seg)
        else:
            segs = [resample(combined(k)) for k in range(len(pairs))]
        out = []
        for seg, liver_id in zip(segs, liver_ids):
            # in the network's axis order (plans' transpose_forward), like its patch size and spacing
            seg = seg.astype(np.int32)
            seg[seg < 0] = 0
            out.append(LesionMasks(prepared, np.where(seg == liver_id, 0, seg), seg > 0))
        return out

    def predict_patches(self, patches: np.ndarray, lesion_masks: Optional[np.ndarray] = None):
        """Labels (N, pz, py, px) for a batch (N, C, pz, py, px): one forward pass per fold, the folds' logits
        averaged and the label their argmax, as nnU-Net ensembles folds (``predict_logits_from_preprocessed_data``:
        the sum of the folds' logits divided by their number; ``convert_logits_to_segmentation``: the argmax of the
        logits, which is the probabilities' for a softmax model).

        ``lesion_masks`` (N, pz, py, px) bool, the lesion's mask in each patch (a model with the lesion head only):
        returns ``(labels, probabilities (6,))``, the head's softmax over the lesion types for the lesion pooled in
        each patch, averaged over the patches and then over the folds (None when no patch holds a lesion voxel).
        """
        import torch

        from nnunet_liver.trainers.liver_lesion_head import capture_features, pool_lesion_features

        if lesion_masks is not None and self.lesion_head is None:
            raise ValueError("lesion masks given to a UNet-patch without a lesion head")
        x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)).to(self.device)
        logits, probabilities = None, None
        if lesion_masks is not None:
            masks = np.asarray(lesion_masks, dtype=bool)
            holding = np.flatnonzero(masks.reshape(len(masks), -1).any(1))
            ids = masks.astype(np.int64) * (np.arange(len(masks)) + 1).reshape((-1,) + (1,) * (masks.ndim - 1))
            instances = torch.from_numpy(ids)
        autocast = torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()  # as nnU-Net
        capture = capture_features(self.lesion_head) if lesion_masks is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast, capture:
            for params in self.model.parameters:
                self.network.load_state_dict(params)
                out = self.network(x)
                out = (out[0] if isinstance(out, (list, tuple)) else out).float()
                logits = out if logits is None else logits + out
                if lesion_masks is not None and len(holding):
                    pooled = pool_lesion_features(self.lesion_head.features, instances, len(masks))[holding]
                    p = torch.softmax(self.lesion_head(pooled)[0].float(), dim=1).mean(0)
                    probabilities = p if probabilities is None else probabilities + p
            if len(self.model.parameters) > 1:
                logits /= len(self.model.parameters)
                if probabilities is not None:
                    probabilities /= len(self.model.parameters)
        if logits.device.type == "cpu":  # numpy's argmax is several times faster there; same first-index rule
            labels = logits.numpy().argmax(1)
        else:
            labels = logits.argmax(1).cpu().numpy()
        if lesion_masks is None:
            return labels
        return labels, None if probabilities is None else probabilities.cpu().numpy().astype(np.float64)


def reclassify_on_case(patch_model: PatchModel, masks: Optional[LesionMasks], lesions: List,
                       rng: np.random.Generator, n: int = 10, max_volume_cm3: float = 64.0,
                       min_score_cm3: float = 0.5) -> Tuple[List, Dict[int, object]]:
    """Reclassify one factor's lesions on a case; see ``reclassify``.

    ``masks``: the factor's lesion ids and liver on UNet-patch's grid, a :meth:`PatchModel.prepare_masks` result
    (:func:`prepare_factor_masks` computes every factor's in one pass); ``None`` only when there are no lesions.
    """
    from nnunet_liver.postprocessing.reclassify import reclassify

    if not lesions:
        return [], {}
    return reclassify(lesions, masks.instances, masks.liver, masks.prepared.image, masks.prepared.spacing,
                      patch_model.predict_patches, n=n, patch_size=patch_model.patch_size,
                      max_volume_cm3=max_volume_cm3, min_score_cm3=min_score_cm3, rng=rng,
                      lesion_head=patch_model.has_lesion_head)


def prepare_factor_masks(patch_model: PatchModel, prepared: PreparedImage, instance_maps: Dict[float, np.ndarray],
                         label_maps: Dict[float, np.ndarray]) -> Dict[float, LesionMasks]:
    """Every factor's lesion ids and liver (labels 1..8 of its map) on UNet-patch's grid in one resampling pass:
    ``{factor: prepare_masks result}`` for :func:`reclassify_on_case`."""
    factors = list(instance_maps)
    pairs = [(instance_maps[f], np.isin(label_maps[f], LIVER_REGION_IDS)) for f in factors]
    return dict(zip(factors, patch_model.prepare_masks_many(prepared, pairs)))
