"""UNet-whole on one case: nnU-Net preprocessing, the folds ensembled, label maps and lesion statistics."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.inference.model import LoadedModel
from nnunet_liver.nnunet_mirror import channelwise_exact, preprocess_by_channel, resample_seg_like

__all__ = ["predict_probabilities", "predict_logits", "predict_maps", "maps_from_logits", "CaseMaps",
           "preprocess_like_training"]


def preprocess_like_training(model: LoadedModel, data: np.ndarray, spacing, seg: np.ndarray = None):
    """Run the model's own nnU-Net preprocessor on an in-memory case.

    Parameters
    ----------
    data : (C, Z, Y, X) float32 raw intensities (HU), in the model's channel order.
    spacing : (z, y, x) mm.
    seg : optional (1, Z, Y, X) integer map resampled alongside (the plans' label resampling, as nnU-Net's).

    Returns
    -------
    (data (C, z', y', x') normalised float32 on the model's grid, seg (1, z', y', x') or None, properties) where
    properties are nnU-Net's (``bbox_used_for_cropping``, shapes) needed to map predictions back.
    """
    pm, cm = model.plans_manager, model.configuration_manager
    preprocessor = cm.preprocessor_class(verbose=False)
    properties = {"spacing": [float(s) for s in spacing]}
    if channelwise_exact(preprocessor, cm):  # nnU-Net's values, one channel at a time (a fraction of the memory)
        out, properties = preprocess_by_channel(preprocessor, data, properties, pm, cm)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            out, _, properties = preprocessor.run_case_npy(data, None, properties, pm, cm, model.dataset_json)
    if seg is None:
        return out, None, properties
    return out, resample_seg_like(seg, properties, out.shape[1:], pm, cm), properties


def predict_logits(predictor, model: LoadedModel, data: np.ndarray, spacing, keep_preprocessed: bool = False):
    """The folds' ensembled logits on the network's grid, and nnU-Net's preprocessing properties of the case.

    The fold loop is nnU-Net's own (``predictor.predict_logits_from_preprocessed_data``: every fold's sliding
    window, summed and divided by the number of folds); the result is returned as float32 (C, z', y', x').
    ``keep_preprocessed``: also return the preprocessed image (C, z', y', x') as a third element (for a UNet-patch
    with the same preprocessing, :func:`nnunet_liver.nnunet_mirror.same_preprocessing`).
    """
    import torch

    pre, _, properties = preprocess_like_training(model, data, spacing)
    tensor = torch.from_numpy(pre)
    if not keep_preprocessed:
        del pre
    predictor.list_of_parameters = model.parameters
    with contextlib.redirect_stdout(io.StringIO()):
        logits = predictor.predict_logits_from_preprocessed_data(tensor)
    if keep_preprocessed:
        return logits.float(), properties, pre
    return logits.float(), properties


def predict_probabilities(predictor, model: LoadedModel, data: np.ndarray, spacing) -> np.ndarray:
    """Softmax probabilities of the folds' ensemble, resampled back to the input grid (the full-volume reference).

    Resampling back to the input grid is nnU-Net's own (``convert_predicted_logits_to_segmentation_with_correct_
    shape``), which returns numpy. This holds the whole (K, Z, Y, X) float32 volume (5 GB for a 14-class model on a
    357 x 512 x 512 CT, with copies at the peak): the detector uses :func:`predict_maps` instead, which gives the
    same label maps and lesion statistics; this function stays as the reference of the tests and benchmarks.

    Parameters
    ----------
    predictor : an ``nnUNetPredictor`` from :func:`nnunet_liver.inference.model.make_predictor`.
    data : (C, Z, Y, X) float32 HU in the model's channel order (missing phases already filled).
    spacing : (z, y, x) mm.

    Returns
    -------
    (K, Z, Y, X) float32 probabilities; K = number of classes of the model (background first).
    """
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    logits, properties = predict_logits(predictor, model, data, spacing)
    with contextlib.redirect_stdout(io.StringIO()):
        _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, model.plans_manager, model.configuration_manager, predictor.label_manager, properties,
            return_probabilities=True)
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.cpu().numpy()
    return np.ascontiguousarray(probabilities, dtype=np.float32)


@dataclass
class CaseMaps:
    """What the cascade needs from UNet-whole's output, without the full-resolution probabilities.

    ``maps``: {factor: (Z, Y, X) uint8 label map} on the input grid; ``lesion_probabilities``: the lesion channels'
    probabilities at every voxel the highest factor labels as lesion (what seg2det's score and mean probability per
    type read); ``liver_max``: LiverMax, per lesion type the highest probability inside the predicted liver (labels
    1..8 of the f = 1 map; 0.0 when that is empty); ``slab_mode``: which exact slab rule resampled the logits
    (see :class:`nnunet_liver.nnunet_mirror.SlabResampler`); ``preprocessed``: UNet-whole's preprocessed image and
    nnU-Net's properties ``(image (C, z', y', x'), properties)`` when asked for (``keep_preprocessed``), else None.
    """
    maps: Dict[float, np.ndarray]
    lesion_probabilities: object
    liver_max: Dict[str, float]
    slab_mode: str = ""
    preprocessed: Optional[Tuple[np.ndarray, dict]] = None


def predict_maps(predictor, model: LoadedModel, data: np.ndarray, spacing, factors: Sequence[float],
                 keep_preprocessed: bool = False) -> CaseMaps:
    """UNet-whole on one case: the label map of every sensitivity factor (and 1.0) plus the lesion statistics.

    Equals :func:`predict_probabilities` followed by ``lesion_sensitivity_masks``, seg2det's probability statistics
    and ``liver_max``, without holding the (14, Z, Y, X) probabilities: see :func:`maps_from_logits`.
    ``keep_preprocessed``: keep the preprocessed image in ``CaseMaps.preprocessed`` (a copy of nnU-Net's properties
    beside it).
    """
    import copy

    if keep_preprocessed:
        logits, properties, pre = predict_logits(predictor, model, data, spacing, keep_preprocessed=True)
        kept = (pre, copy.deepcopy(properties))
    else:
        logits, properties = predict_logits(predictor, model, data, spacing)
        kept = None
    resampler = getattr(model.configuration_manager.resampling_fn_probabilities, "func", None)
    if "torch" in getattr(resampler, "__name__", "") and predictor.device.type != "cpu":
        logits = logits.to(predictor.device)  # nnU-Net's torch resamplers return their input's device
    result = maps_from_logits(logits, model.plans_manager, model.configuration_manager, predictor.label_manager,
                              properties, factors)
    result.preprocessed = kept
    return result


def maps_from_logits(logits, plans_manager, configuration_manager, label_manager, properties,
                     factors: Sequence[float], numpy_on_host: bool = True) -> CaseMaps:
    """The sensitivity label maps, LiverMax and lesion probabilities from the network-grid logits, slab by slab.

    The logits are resampled to the input grid one slab of output rows at a time, exactly as nnU-Net's export does
    for the whole volume (:class:`~nnunet_liver.nnunet_mirror.SlabResampler`); each slab gets the label
    manager's softmax, the scaled argmax of every factor (``lesion_sensitivity_masks``), LiverMax's running maximum
    and the lesion channels at the highest factor's lesion voxels; then it is dropped. Outside the cropping box
    nnU-Net's probabilities are background (1, 0, ...), so every map is 0 there. The maps are built in the network's
    axis order and transposed back with ``transpose_backward``, as nnU-Net does.

    On a CUDA predictor with a torch resampler the slabs stay on the device and only the uint8 maps and the few
    lesion values come back; nnU-Net's default resampler is numpy/scipy, so its slabs are resampled on the host
    (as nnU-Net's own export does) and only one slab at a time exists there. ``numpy_on_host``: slabs on the CPU
    go through numpy (faster there); ``False`` keeps them torch tensors, the code path of a CUDA device (tests).
    """
    import torch
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

    from nnunet_liver.labels import LESION_IDS, LIVER_REGION_IDS, name_of
    from nnunet_liver.nnunet_mirror import SlabResampler
    from nnunet_liver.postprocessing.sensitivity import LesionProbabilities, lesion_sensitivity_masks

    factors = tuple(sorted({float(f) for f in factors} | {1.0}))
    f_hi = factors[-1]
    shape_t = tuple(int(s) for s in properties["shape_before_cropping"])  # network axis order
    back = list(plans_manager.transpose_backward)
    shape = tuple(shape_t[i] for i in back)  # input axis order
    crop = bounding_box_to_slice(properties["bbox_used_for_cropping"])
    offset = [sl.start for sl in crop]
    maps_t = {f: np.zeros(shape_t, dtype=np.uint8) for f in factors}
    l0, l1 = LESION_IDS[0], LESION_IDS[-1] + 1
    v0, v1 = LIVER_REGION_IDS[0], LIVER_REGION_IDS[-1]
    livermax = None
    kept_index, kept_values = [], []
    resampler = SlabResampler(logits, plans_manager, configuration_manager, properties)
    del logits
    with torch.no_grad():
        for k0, k1 in resampler.slabs():
            slab = resampler.resample(k0, k1)
            probs = label_manager.apply_inference_nonlin(slab)  # nnU-Net's softmax, on the slab's device
            del slab
            if probs.device.type == "cpu" and numpy_on_host:
                probs = probs.numpy()  # the same memory; numpy's scaled argmax is the faster one on the host
            masks = lesion_sensitivity_masks(probs, factors)
            lm1 = masks[1.0]
            liver = (lm1 >= v0) & (lm1 <= v1)
            if bool(liver.any()):
                inside = probs[l0:l1][:, liver]
                m = _to_host(inside.max(axis=1) if isinstance(inside, np.ndarray) else torch.amax(inside, dim=1))
                livermax = m if livermax is None else np.maximum(livermax, m)
                del inside
            lesion = (masks[f_hi] >= l0) & (masks[f_hi] < l1)
            if bool(lesion.any()):
                kept_values.append(_to_host(probs[l0:l1][:, lesion]))
                where = np.nonzero(_to_host(lesion))  # raster order of the slab
                coords_t = [where[0] + k0 + offset[0], where[1] + offset[1], where[2] + offset[2]]
                kept_index.append(np.ravel_multi_index(tuple(coords_t[i] for i in back), shape))
            del probs, liver, lesion
            for f in factors:
                maps_t[f][crop][k0:k1] = _to_host(masks[f])
            del masks
    maps = {f: np.ascontiguousarray(m.transpose(back)) for f, m in maps_t.items()}
    del maps_t
    if kept_index:
        index = np.concatenate(kept_index)
        values = np.concatenate(kept_values, axis=1)
        if index.size > 1 and not bool(np.all(np.diff(index) > 0)):  # a transposed plan: back to raster order
            order = np.argsort(index, kind="stable")
            index, values = index[order], values[:, order]
    else:
        index, values = np.zeros(0, dtype=np.int64), np.zeros((l1 - l0, 0), dtype=np.float32)
    lmax = [0.0] * (l1 - l0) if livermax is None else [float(v) for v in livermax]
    return CaseMaps(maps=maps, lesion_probabilities=LesionProbabilities(shape, index, values),
                    liver_max={name_of(i): v for i, v in zip(LESION_IDS, lmax)}, slab_mode=resampler.mode)


def _to_host(x) -> np.ndarray:
    """A numpy array of ``x`` (a torch tensor on any device, or numpy already)."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
