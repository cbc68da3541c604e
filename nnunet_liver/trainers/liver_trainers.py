"""Whole-CT trainers: ``LiverWholeTrainer`` (13 classes, lesion-centred oversampling) and ``LiverIFMTrainer`` (its
network's first layer is the Iterative Fusion Module; missing phases detected per sample; random phase dropout).

nnU-Net imports this file as a top-level module through ``nnUNet_extTrainer``: imports are absolute.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_liver.labels import PHASES, dataset_json_labels
from nnunet_liver.trainers.liver_dataloading import LesionOversamplingDataLoader
from nnunet_liver.trainers.liver_networks import insert_ifm
from nnunet_liver.trainers.liver_transforms import (DetectPhasePresenceTransform, ImposeAbsentPhasesTransform,
                                                    PhaseDropoutTransform)

__all__ = ["LiverWholeTrainer", "LiverIFMTrainer", "LiverIFMTrainer_classBalanced", "check_labels", "phase_order",
           "PHASE_DROPOUT_P", "wrap_phase_transforms", "record_trained_configuration"]

#: probability that a training sample has a random subset of its phases dropped (LiverIFMTrainer)
PHASE_DROPOUT_P = 0.5


def record_trained_configuration(plans: dict, configuration: str,
                                 trained: ConfigurationManager) -> ConfigurationManager:
    """Write ``trained`` into ``plans`` (in place) as configuration ``configuration``, and return nnU-Net's
    configuration manager of it.

    Only the entries that differ from the plans' (resolved) configuration are written into its entry (patch size,
    network, batch size), so the data identifier, normalisation and resampling, and an ``inherits_from``, stay.
    Then the checkpoint's ``init_args["configuration"]`` (the name nnU-Net trains under) names the trained network
    in the plans that nnU-Net saves with the model, and ``nnUNetPredictor.initialize_from_trained_model_folder``
    applies it as trained. A no-op when ``trained`` is the plans' configuration.
    """
    planned = PlansManager(plans).get_configuration(configuration).configuration
    entry = plans["configurations"][configuration]
    for key, value in trained.configuration.items():
        if planned.get(key) != value:
            entry[key] = copy.deepcopy(value)
    recorded = PlansManager(plans).get_configuration(configuration)
    if recorded.configuration != trained.configuration:
        raise ValueError(f"configuration {configuration!r}: the trained configuration drops plan entries "
                         f"{sorted(set(planned) - set(trained.configuration))}; it cannot be written into the plans")
    return recorded


def check_labels(dataset_json: dict, expected: Dict[str, int], what: str) -> None:
    """Raise ValueError unless dataset.json's labels are exactly ``expected`` (names and ids)."""
    labels = {str(k): (int(v) if not isinstance(v, (list, tuple)) else tuple(v))
              for k, v in dataset_json.get("labels", {}).items()}
    if labels != expected:
        missing = sorted(set(expected.items()) - set(labels.items()), key=lambda kv: kv[1])
        extra = sorted(set(labels.items()) - set(expected.items()), key=lambda kv: str(kv[1]))
        raise ValueError(
            f"dataset.json labels are not the {what} scheme of nnunet_liver: missing or different {missing}, "
            f"unexpected {extra}. Convert the dataset with nnunet-liver-convert (or write the labels from "
            f"nnunet_liver.labels) before training with this trainer.")


def phase_order(dataset_json: dict) -> Tuple[str, ...]:
    """The phases of dataset.json's channels; they must be distinct names from NC, A, V, D in time order."""
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not names:
        raise ValueError("dataset.json has no channel_names; the IFM needs channels named NC, A, V and/or D")
    ordered = [str(names[k]).strip().upper() for k in sorted(names, key=int)]
    unknown = [n for n in ordered if n not in PHASES]
    if unknown or len(set(ordered)) != len(ordered) or not 1 <= len(ordered) <= len(PHASES):
        raise ValueError(f"dataset.json channel_names {dict(names)}: the IFM needs 1 to 4 distinct channels named "
                         f"from {PHASES}; unknown or repeated: {unknown or ordered}")
    if ordered != sorted(ordered, key=PHASES.index):
        raise ValueError(f"dataset.json channel_names {dict(names)} are not in time order {PHASES}: the IFM fuses "
                         "channels in order, so write the channels as e.g. 0=NC, 1=A, 2=V, 3=D")
    return tuple(ordered)


class LiverWholeTrainer(nnUNetTrainer):
    """nnU-Net's default trainer on the 13-class liver scheme, with lesion-centred foreground oversampling.

    Of the foreground-forced patches (nnU-Net's 33 %), ``lesion_fraction`` are centred on a lesion class present in
    the case (uniform over the present lesion types), so small and rare lesions are seen often.
    """

    lesion_fraction: float = 0.5
    #: draw the lesion type of lesion-centred patches first, then a case holding it (see LesionOversamplingDataLoader)
    class_balanced: bool = False
    #: the trainer attributes written to ``fold_X/training_settings.json`` (subclasses add theirs)
    recorded_settings: Tuple[str, ...] = (
        "num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "batch_size", "initial_lr",
        "weight_decay", "oversample_foreground_percent", "probabilistic_oversampling", "enable_deep_supervision",
        "lesion_fraction", "class_balanced")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.check_dataset(dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        #: nnU-Net's planned configuration, before :meth:`training_configuration`
        self.planned_configuration: ConfigurationManager = self.configuration_manager
        # train with training_configuration, written into the plans under the configuration's own name: the model
        # folder's plans.json (nnU-Net saves these plans at the start of training) then holds the configuration the
        # network was trained with, which nnU-Net's own predictor reads (patch size included)
        self.configuration_manager = record_trained_configuration(
            self.plans_manager.plans, configuration,
            self.training_configuration(self.plans_manager, self.configuration_manager))
        self.plans_manager = PlansManager(self.plans_manager.plans)  # the old one caches the planned configuration
        #: what the network started from (set by nnunet_liver.training.warm_start); None: nnU-Net's initialisation
        self.initial_weights: Optional[dict] = None

    def training_settings(self) -> dict:
        """Every setting this training runs with: the trainer, its configuration as trained (patch size, network
        features), the :attr:`recorded_settings` and the start (:attr:`initial_weights`)."""
        arch = self.configuration_manager.network_arch_init_kwargs
        out = {"trainer": type(self).__name__, "plans": self.plans_manager.plans_name,
               "configuration": self.configuration_name, "fold": self.fold,
               "patch_size": [int(v) for v in self.configuration_manager.patch_size],
               "features_per_stage": list(arch.get("features_per_stage", []))}
        for name in self.recorded_settings:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, dict) else value
        out["initial_weights"] = self.initial_weights
        return out

    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:
            from nnunet_liver.training.settings import write_training_settings

            write_training_settings(self.output_folder, self.training_settings(),
                                    resumed_at_epoch=self.current_epoch if self.current_epoch > 0 else None)

    @staticmethod
    def check_dataset(dataset_json: dict) -> None:
        check_labels(dataset_json, dataset_json_labels(), "13-class whole-CT")

    @classmethod
    def training_configuration(cls, plans_manager: PlansManager,
                               configuration_manager: ConfigurationManager) -> ConfigurationManager:
        """The configuration this trainer trains with, from the plans' one (pure, idempotent): the plans' own here.

        A variant that trains on another patch size or network (``_tiny``, ``_demo``, UNet-patch) returns it here;
        the trainer writes it into its plans (:func:`record_trained_configuration`), so the model folder's
        plans.json describes the trained network and nnU-Net's predictor applies it on the patches it was trained on.
        """
        return configuration_manager

    def make_dataloader(self, dataset, patch_size, final_patch_size, transforms, train: bool):
        """The data loader of one split (hook for subclasses)."""
        return LesionOversamplingDataLoader(
            dataset, self.batch_size, patch_size, final_patch_size, self.label_manager,
            oversample_foreground_percent=self.oversample_foreground_percent, sampling_probabilities=None,
            pad_sides=None, transforms=transforms, probabilistic_oversampling=self.probabilistic_oversampling,
            lesion_fraction=self.lesion_fraction, class_balanced=self.class_balanced)

    def get_dataloaders(self):
        # nnU-Net's get_dataloaders (2.8), the one change: the loaders come from make_dataloader, because nnU-Net
        # names nnUNetDataLoader inside the function. tests/test_trainers.py::test_get_dataloaders_mirrors_nnunets
        # fails when nnU-Net's version builds something else; follow it here then.
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        regions = lm.foreground_regions if lm.has_regions else None
        tr_transforms = self.get_training_transforms(
            patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=lm.foreground_labels, regions=regions, ignore_label=lm.ignore_label)
        val_transforms = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded,
                                                        foreground_labels=lm.foreground_labels, regions=regions,
                                                        ignore_label=lm.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        dl_tr = self.make_dataloader(dataset_tr, initial_patch_size, patch_size, tr_transforms, train=True)
        dl_val = self.make_dataloader(dataset_val, patch_size, patch_size, val_transforms, train=False)
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            gen_tr, gen_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            pin = self.device.type == "cuda"
            gen_tr = NonDetMultiThreadedAugmenter(dl_tr, None, n_proc, max(6, n_proc // 2), None, pin, 0.002)
            gen_val = NonDetMultiThreadedAugmenter(dl_val, None, max(1, n_proc // 2), max(3, n_proc // 4), None,
                                                   pin, 0.002)
        _ = next(gen_tr)
        _ = next(gen_val)
        return gen_tr, gen_val


class LiverIFMTrainer(LiverWholeTrainer):
    """``LiverWholeTrainer`` whose network's first layer is the Iterative Fusion Module.

    The dataset's channels are phases named from NC, A, V, D in time order (1 to 4 of them). Missing phases are
    constant channels; their presence is detected per sample before augmentation and re-imposed after it (see
    ``liver_transforms``); a random subset of the present phases is dropped with probability ``phase_dropout_p``
    (``PHASE_DROPOUT_P``; a variant sets its own).
    """

    #: detection may fill a missing phase file with the constant channel for models of this trainer
    supports_missing_phases = True
    #: the phase dropout probability: get_training_transforms (a classmethod, so that a variant's value reaches
    #: nnU-Net's pipeline) reads it, training_settings.json records it
    phase_dropout_p: float = PHASE_DROPOUT_P
    recorded_settings = LiverWholeTrainer.recorded_settings + ("phases", "phase_dropout_p")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.phases = phase_order(dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager,
                                                           num_input_channels, num_output_channels,
                                                           enable_deep_supervision)
        return insert_ifm(network, num_input_channels)

    @classmethod
    def get_training_transforms(cls, patch_size: Union[np.ndarray, Tuple[int]], rotation_for_DA: dict,
                                deep_supervision_scales: Union[List, Tuple, None], mirror_axes: Tuple[int, ...],
                                do_dummy_2d_data_aug: bool, use_mask_for_norm: List[bool] = None,
                                is_cascaded: bool = False, foreground_labels: Union[Tuple[int, ...], List[int]] = None,
                                regions: List[Union[List[int], Tuple[int, ...], int]] = None,
                                ignore_label: int = None) -> BasicTransform:
        """nnU-Net's training transforms wrapped for variable phase sets, dropping phases with probability
        ``cls.phase_dropout_p``. (nnU-Net's is a staticmethod that ``get_dataloaders`` calls on the trainer; a
        classmethod is called the same way and reads the variant's class constant.)"""
        base = nnUNetTrainer.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label)
        return wrap_phase_transforms(base, cls.phase_dropout_p)


class LiverIFMTrainer_classBalanced(LiverIFMTrainer):
    """``LiverIFMTrainer`` whose lesion-centred patches draw a lesion type first (uniform over the types of the
    training cases), then a case holding it: rare types (metastases, ICC) are centred as often as cysts (the demo's
    UNet-whole samples this way)."""

    class_balanced = True


def wrap_phase_transforms(base: ComposeTransforms, dropout_p: float) -> ComposeTransforms:
    """nnU-Net's training transforms ``base`` wrapped for variable phase sets: presence detection and phase dropout
    (probability ``dropout_p``) before them, re-imposition of the absent phases after them."""
    return ComposeTransforms([DetectPhasePresenceTransform(), PhaseDropoutTransform(dropout_p),
                              *base.transforms, ImposeAbsentPhasesTransform()])
