"""UNet-whole on one case: nnU-Net preprocessing, the folds ensembled, probabilities in the input geometry."""
from __future__ import annotations

import contextlib
import io

import numpy as np

from nnunet_liver.inference.model import LoadedModel

__all__ = ["predict_probabilities", "preprocess_like_training", "resample_seg_like"]


def preprocess_like_training(model: LoadedModel, data: np.ndarray, spacing, seg: np.ndarray = None):
    """Run the model's own nnU-Net preprocessor on an in-memory case.

    Parameters
    ----------
    data : (C, Z, Y, X) float32 raw intensities (HU), in the model's channel order.
    spacing : (z, y, x) mm.
    seg : optional (1, Z, Y, X) integer map resampled alongside (nearest-label, as nnU-Net resamples labels).

    Returns
    -------
    (data (C, z', y', x') normalised float32 on the model's grid, seg (1, z', y', x') or None, properties) where
    properties are nnU-Net's (``bbox_used_for_cropping``, shapes) needed to map predictions back.
    """
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    properties = {"spacing": [float(s) for s in spacing]}
    with contextlib.redirect_stdout(io.StringIO()):
        out, _, properties = preprocessor.run_case_npy(data, None, properties, model.plans_manager,
                                                       model.configuration_manager, model.dataset_json)
    if seg is None:
        return out, None, properties
    return out, resample_seg_like(model, seg, properties, out.shape[1:]), properties


def resample_seg_like(model: LoadedModel, seg: np.ndarray, properties: dict, new_shape, order=None) -> np.ndarray:
    """Transpose, crop and resample a (1, Z, Y, X) label map exactly as ``run_case_npy`` did the image.

    ``order=None`` uses the plans' label resampling (per-label interpolation: one pass per label value);
    ``order=0`` resamples all labels in one nearest-neighbour pass on the same coordinate mapping (used for
    instance maps with many ids).
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

    pm, cm = model.plans_manager, model.configuration_manager
    seg = seg.transpose([0, *[i + 1 for i in pm.transpose_forward]])
    seg = seg[(slice(None),) + bounding_box_to_slice(properties["bbox_used_for_cropping"])]
    original_spacing = [properties["spacing"][i] for i in pm.transpose_forward]
    target_spacing = list(cm.spacing)
    if len(target_spacing) < 3:
        target_spacing = [original_spacing[0]] + target_spacing
    kwargs = {} if order is None else {"order": order, "order_z": order}
    return np.asarray(cm.resampling_fn_seg(seg, tuple(new_shape), original_spacing, target_spacing, **kwargs))


def predict_probabilities(predictor, model: LoadedModel, data: np.ndarray, spacing) -> np.ndarray:
    """Softmax probabilities of the folds' ensemble, resampled back to the input grid.

    The folds' logits are summed on the predictor's device (the input tensor and every fold's logits stay there
    when nnU-Net's ``perform_everything_on_device`` holds); resampling back to the input grid is nnU-Net's own
    (``convert_predicted_logits_to_segmentation_with_correct_shape``), which returns numpy.

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

    pre, _, properties = preprocess_like_training(model, data, spacing)
    tensor = torch.from_numpy(pre)
    logits = None
    with contextlib.redirect_stdout(io.StringIO()):
        for params in model.parameters:
            predictor.network.load_state_dict(params)
            fold_logits = predictor.predict_sliding_window_return_logits(tensor).float()
            logits = fold_logits if logits is None else logits.add_(fold_logits)
            del fold_logits
        logits /= len(model.parameters)
        resampler = getattr(model.configuration_manager.resampling_fn_probabilities, "__name__", "")
        if "torch" not in resampler:
            logits = logits.cpu()
        _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, model.plans_manager, model.configuration_manager, predictor.label_manager, properties,
            return_probabilities=True)
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.cpu().numpy()
    return np.ascontiguousarray(probabilities, dtype=np.float32)
