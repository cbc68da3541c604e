"""``LesionShufflePatchTrainer``: UNet-patch of the reclassification step, trained on lesion-shuffle patches.

The dataset is a patch-model dataset (``nnunet-liver-convert patches``): liver-cropped cases, outside-liver voxels
masked, labels 0 (masked) / 1..6 (lesion types) / 7 (liver), the whole-CT dataset's phase channels. Each training
patch (16 x 128 x 128 voxels, z y x) is made on the fly by one of the four lesion-shuffle schemes, outside-liver
voxels are set to ``masked_value`` (normalised intensity, the same value reclassification uses), then nnU-Net's
augmentations run. The network is the IFM network of ``LiverIFMTrainer``, so one UNet-patch serves any phase subset.

Hard cases (Wang et al., the cascade, Sec. III-B): when the dataset's maps of UNet-whole's false negatives and
false positives were prepared on the preprocessed grid (``nnunet-liver-convert patches --hard-cases``, then
``python -m nnunet_liver.training.hard_cases -d DATASET`` after planning), they are read from
``$nnUNet_preprocessed/DATASET/<data identifier>_hardCases/`` at the start of training and ``hard_case_rate``
(default 0.25) of the training patches are cut around them, original or shuffled; without them (or with
``hard_case_rate = 0``) training is unchanged. Training reads nothing from ``nnUNet_raw``.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

import copy
import os
from typing import Dict, Optional, Tuple

import torch

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_liver.labels import patch_dataset_json_labels
from nnunet_liver.trainers.liver_dataloading import LesionShuffleDataLoader
from nnunet_liver.trainers.liver_losses import use_present_class_dice
from nnunet_liver.trainers.liver_trainers import LiverIFMTrainer, check_labels

__all__ = ["LesionShufflePatchTrainer", "LesionShufflePatchTrainer_classBalanced",
           "LesionShufflePatchTrainer_presentDice", "PATCH_SIZE", "with_patch_size"]

#: UNet-patch's patch (z, y, x voxels), Wang et al. Sec. IV-B
PATCH_SIZE: Tuple[int, int, int] = (16, 128, 128)


def with_patch_size(configuration_manager: ConfigurationManager, patch_size,
                    transpose_forward=None) -> Optional[ConfigurationManager]:
    """A copy of the configuration with ``patch_size`` ((z, y, x), put in nnU-Net's axis order by the plans'
    ``transpose_forward``), or None if the network's strides do not divide it."""
    if transpose_forward is not None:
        patch_size = [patch_size[i] for i in transpose_forward]
    cfg = copy.deepcopy(configuration_manager.configuration)
    strides = cfg["architecture"]["arch_kwargs"]["strides"]
    total = [1] * len(patch_size)
    for s in strides:
        total = [t * int(si) for t, si in zip(total, s)]
    if len(patch_size) != len(total) or any(p % t for p, t in zip(patch_size, total)):
        return None
    cfg["patch_size"] = [int(p) for p in patch_size]
    return ConfigurationManager(cfg)


class LesionShufflePatchTrainer(LiverIFMTrainer):
    """UNet-patch on lesion-shuffle patches (labels 0 masked, 1..6 lesion types, 7 liver)."""

    patch_size: Tuple[int, ...] = PATCH_SIZE
    #: relative rates of original_positive, original_negative, shuffled_positive, shuffled_negative
    scheme_rates: Dict[str, float] = {"original_positive": 0.25, "original_negative": 0.25,
                                      "shuffled_positive": 0.25, "shuffled_negative": 0.25}
    #: normalised image value outside the liver (make_reclassification_patches' default)
    masked_value: float = 0.0
    #: draw a lesion type first, then a case and a lesion of that type (LesionShuffleDataLoader); off: nnU-Net's
    #: uniform draw of cases, as in Wang et al.
    class_balanced: bool = False
    #: share of the training patches cut around a hard case, when the dataset has them (the paper gives no rate)
    hard_case_rate: float = 0.25
    #: average the Dice term over the classes present in the batch only (liver_losses.PresentClassSoftDiceLoss);
    #: off: nnU-Net's loss
    present_class_dice: bool = False
    recorded_settings = LiverIFMTrainer.recorded_settings + (
        "scheme_rates", "masked_value", "hard_case_rate", "present_class_dice")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        planned = self.planned_configuration
        if with_patch_size(planned, self.patch_size, self.plans_manager.transpose_forward) is None:
            self.print_to_log_file(
                f"LesionShufflePatchTrainer: the planned network's strides do not divide the patch size "
                f"{self.patch_size}; training on the planned patch size {planned.patch_size}")

    def training_settings(self) -> dict:
        """:meth:`LiverWholeTrainer.training_settings` and the hard cases of the training split (FN, FP counts)."""
        return {**super().training_settings(), "hard_cases": getattr(self, "hard_case_counts", None)}

    def _build_loss(self):
        return self.adapt_loss(super()._build_loss())

    def adapt_loss(self, loss):
        """nnU-Net's loss, its Dice term averaged over the classes present when ``present_class_dice``."""
        if self.present_class_dice:
            self.print_to_log_file("Dice term averaged over the classes present in each batch")
            return use_present_class_dice(loss)
        return loss

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager) -> ConfigurationManager:
        """The configuration this trainer trains with, from the plans' one (pure).

        UNet-patch is trained (and applied) on ``cls.patch_size`` patches, not nnU-Net's planned patch size; the
        trainer writes this configuration into the plans saved with the model (``record_trained_configuration``).
        """
        cm = with_patch_size(configuration_manager, cls.patch_size, plans_manager.transpose_forward)
        return configuration_manager if cm is None else cm

    @staticmethod
    def check_dataset(dataset_json: dict) -> None:
        check_labels(dataset_json, patch_dataset_json_labels(), "patch-model (0 masked, 1..6 lesions, 7 liver)")

    def make_dataloader(self, dataset, patch_size, final_patch_size, transforms, train: bool):
        hard = self.load_hard_cases() if train and self.hard_case_rate > 0 else {}
        dl = LesionShuffleDataLoader(
            dataset, self.batch_size, patch_size, final_patch_size, self.label_manager,
            oversample_foreground_percent=self.oversample_foreground_percent, sampling_probabilities=None,
            pad_sides=None, transforms=transforms, probabilistic_oversampling=self.probabilistic_oversampling,
            scheme_rates=self.scheme_rates, masked_value=self.masked_value, class_balanced=self.class_balanced,
            hard_cases=hard, hard_case_rate=self.hard_case_rate)
        if train:
            self.hard_case_counts = {"FN": sum(h[1] == "FN" for h in dl.hard_index),
                                     "FP": sum(h[1] == "FP" for h in dl.hard_index)}
        if hard:
            kinds = [h[1] for h in dl.hard_index]
            self.print_to_log_file(f"LesionShufflePatchTrainer: {kinds.count('FN')} FN and {kinds.count('FP')} FP "
                                   f"hard cases in the training cases, {dl.hard_case_rate:.0%} of the patches")
        return dl

    def hard_cases_folder(self) -> Optional[str]:
        """The prepared hard cases of this configuration in ``nnUNet_preprocessed``, or None when there are none."""
        from nnunet_liver.training.hard_cases import PREPARED_INDEX, prepared_folder

        if self.preprocessed_dataset_folder_base is None:
            return None
        folder = prepared_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier)
        return folder if os.path.isfile(os.path.join(folder, PREPARED_INDEX)) else None

    def load_hard_cases(self) -> Dict[str, tuple]:
        """{case: (hard-case map on the preprocessed grid, entries)} (empty when the dataset has none prepared)."""
        from nnunet_liver.training.hard_cases import read_prepared_hard_cases

        folder = self.hard_cases_folder()
        return {} if folder is None else read_prepared_hard_cases(folder)


class LesionShufflePatchTrainer_presentDice(LesionShufflePatchTrainer):
    """UNet-patch whose Dice term is averaged over the classes present in each batch: with two patches per batch
    and one lesion type per patch, nnU-Net's Dice rewards a network that predicts no lesion at all (Dice 1 on every
    absent lesion class), the collapse seen when the demo's UNet-patch was trained further (liver_losses)."""

    present_class_dice = True


class LesionShufflePatchTrainer_classBalanced(LesionShufflePatchTrainer):
    """UNet-patch with class-balanced lesion sampling: each patch draws a lesion type first (uniform over the types
    of the training cases), then a case and one of its lesions of that type. For datasets where some types are
    rare (cysts and hemangiomas outnumber metastases and ICC in most cohorts); the demo's UNet-patch uses it."""

    class_balanced = True
