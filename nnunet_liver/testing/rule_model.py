"""A rule network with known outputs, packaged as a complete nnU-Net model folder (tests, benchmarks, demos).

:class:`IntensityRuleNetwork` is a real ``torch.nn.Module`` that nnU-Net builds from plans like any architecture
(``network_class_name`` in plans.json): per voxel, the logit of class k is ``-((x - center_k) / width_k)^2`` where x
is the mean of the present (non-constant) input channels, or one chosen channel. Painting a phantom with a class's
centre HU makes that class win; a value between two centres gives a controlled, soft probability, which is what the
sensitivity factors act on. :func:`write_rule_model` writes dataset.json, plans.json and ``fold_X/checkpoint_*.pth``
for nnU-Net's plain ``nnUNetTrainer``, so ``nnUNetv2_predict`` and the detector load the same model.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

import torch
from torch import nn

__all__ = ["IntensityRuleNetwork", "write_rule_model"]


class IntensityRuleNetwork(nn.Module):
    """Class logits from intensity bands: ``logit_k = -((x - centers[k]) / widths[k]) ** 2`` per voxel.

    Parameters
    ----------
    input_channels, num_classes : as nnU-Net passes them.
    centers, widths : one per class (HU when the plans use ``NoNormalization``).
    channel : use this input channel only; ``None``: mean over channels that are not constant in the input.
    """

    def __init__(self, input_channels: int, num_classes: int, centers: Sequence[float] = (),
                 widths: Sequence[float] = (), channel: Optional[int] = None, deep_supervision: bool = False,
                 **unused):
        super().__init__()
        if len(centers) != num_classes or len(widths) != num_classes:
            raise ValueError(f"need one centre and one width per class ({num_classes}), got {len(centers)} and "
                             f"{len(widths)}")
        self.input_channels, self.num_classes, self.channel = input_channels, num_classes, channel
        self.centers = nn.Parameter(torch.tensor(centers, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.widths = nn.Parameter(torch.tensor(widths, dtype=torch.float32).view(1, -1, 1, 1, 1))
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            v = x[:, self.channel:self.channel + 1]
        else:
            flat = x.flatten(2)
            varying = (flat.amax(2) > flat.amin(2)).to(x.dtype)[..., None, None, None]  # (B, C, 1, 1, 1)
            varying = torch.where(varying.sum(1, keepdim=True) > 0, varying, torch.ones_like(varying))
            v = (x * varying).sum(1, keepdim=True) / varying.sum(1, keepdim=True)
        logits = -((v.float() - self.centers) / self.widths) ** 2
        return [logits] if self.deep_supervision else logits


def write_rule_model(folder: str, labels: Dict[str, int], centers: Sequence[float], widths: Sequence[float],
                     channel_names: Sequence[str] = ("NC", "A", "V", "D"), spacing=(2.0, 2.0, 2.0),
                     patch_size=(16, 32, 32), folds=(0,), checkpoint: str = "checkpoint_final.pth",
                     channel: Optional[int] = None, trainer_name: str = "nnUNetTrainer",
                     median_shape=(32, 64, 64), transpose_forward=(0, 1, 2)) -> str:
    """Write an nnU-Net training output folder whose network is an :class:`IntensityRuleNetwork`.

    Intensities are not normalised (``NoNormalization``), so ``centers`` are in HU. ``spacing`` and
    ``patch_size`` are (z, y, x) and are transposed into the plans' axis order by ``transpose_forward`` (nnU-Net
    transposes anisotropic data so that the low-resolution axis comes first). Each fold's checkpoint holds the
    same weights (fold ``k`` adds ``k * 1e-3`` HU to the centres, so folds differ measurably). Returns ``folder``.
    """
    os.makedirs(folder, exist_ok=True)
    n_ch = len(channel_names)
    tf = [int(a) for a in transpose_forward]
    tb = [tf.index(i) for i in range(3)]
    spacing = [float(spacing[a]) for a in tf]
    patch_size = [int(patch_size[a]) for a in tf]
    median_shape = [int(median_shape[a]) for a in tf]
    dataset_json = {"channel_names": {str(i): n for i, n in enumerate(channel_names)}, "labels": dict(labels),
                    "numTraining": 1, "file_ending": ".nii.gz"}
    arch = {"network_class_name": "nnunet_liver.testing.rule_model.IntensityRuleNetwork",
            "arch_kwargs": {"centers": list(map(float, centers)), "widths": list(map(float, widths)),
                            "channel": channel}, "_kw_requires_import": []}
    plans = {
        "dataset_name": "Dataset999_Rule", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(map(float, spacing)),
        "original_median_shape_after_transp": list(map(int, median_shape)),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": tf, "transpose_backward": tb,
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(map(int, patch_size)), "median_image_size_in_voxels":
                list(map(int, median_shape)), "spacing": list(map(float, spacing)),
            "normalization_schemes": ["NoNormalization"] * n_ch, "use_mask_for_norm": [False] * n_ch,
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": arch, "batch_dice": False}},
        "experiment_planner_used": "write_rule_model", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(i): {"max": 3000.0, "mean": 0.0, "median": 0.0, "min": -1024.0, "percentile_00_5": -1024.0,
                     "percentile_99_5": 3000.0, "std": 1.0} for i in range(n_ch)},
    }
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump(dataset_json, f, indent=2)
    with open(os.path.join(folder, "plans.json"), "w", encoding="utf-8") as f:
        json.dump(plans, f, indent=2)
    for k, fold in enumerate(folds):
        net = IntensityRuleNetwork(n_ch, len(labels), [c + 1e-3 * k for c in centers], widths, channel)
        os.makedirs(os.path.join(folder, f"fold_{fold}"), exist_ok=True)
        torch.save({"network_weights": net.state_dict(), "trainer_name": trainer_name,
                    "init_args": {"configuration": "3d_fullres", "fold": fold},
                    "inference_allowed_mirroring_axes": (0, 1, 2)},
                   os.path.join(folder, f"fold_{fold}", checkpoint))
    return folder
