"""``_demo`` variants of the liver trainers: the bundled demo models (``nnunet_liver/demo_models``), CPU-trainable.

Bigger than ``_tiny`` and trained for longer, still small enough to train on two CPU cores in about an hour
(see ``scripts/train_demo_models.py``, which reproduces the bundled models):

- a 4-stage U-Net with 8/16/32/64 features (the plan's first four stages' kernels and strides),
- UNet-whole: batches of 4 patches of 16 x 48 x 48 voxels (96 x 192 x 192 mm at 6 x 4 x 4 mm),
- UNet-patch: lesion-shuffle patches of 16 x 64 x 64 voxels (256 mm across at 4 mm, the whole demo liver),
- ``num_epochs`` epochs of 50 training and 5 validation iterations, a checkpoint every 10 epochs,
- a short-training sampling recipe: each patch forced onto foreground with probability 0.8 (nnU-Net: the last
  third of the batch), 90 % of those centred on a lesion, drawn class-balanced (a lesion type first, then a case
  holding it; since run 7); IFM phase dropout with probability ``DEMO_PHASE_DROPOUT_P`` (0.2, not 0.5: in a few
  thousand iterations the network must first learn the lesion types from all phases); UNet-patch with 70 %
  positive lesion-shuffle patches, drawn class-balanced too (a lesion type first, then a case and a lesion of that
  type: the phantoms' ICC and metastases are a fifth of the lesions, and a uniform draw of cases barely taught
  them); nnU-Net's Dice + CE loss with the lesion classes
  weighted 4 (UNet-whole) and 2 (UNet-patch) in the CE term (``DEMO_LESION_CE_WEIGHT``), which
  ``nnUNet_liver_demo_lesion_ce`` overrides (the shipped UNet-whole's last run used 1, nnU-Net's own loss, so
  that the sensitivity factors f = 1 and 4 mean what they mean in the paper: see ``demo_models/MODEL_CARD.md``).

``build_network_architecture`` derives the network from the saved plans (as the ``_tiny`` variants do), so the
predictor rebuilds exactly the trained network from the model folder alone.
"""
from __future__ import annotations

import os
from typing import Tuple

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_liver.labels import LESION_IDS, LIVER, PATCH_LABELS, PATCH_LIVER, PATCH_MASKED
from nnunet_liver.trainers.liver_networks import tiny_configuration
from nnunet_liver.trainers.liver_patch_trainer import LesionShufflePatchTrainer
from nnunet_liver.trainers.liver_trainers import LiverIFMTrainer, wrap_phase_transforms

__all__ = ["LiverIFMTrainer_demo", "LesionShufflePatchTrainer_demo", "LesionShufflePatchTrainer_demoPresentDice",
           "DEMO_FEATURES", "demo_configuration",
           "demo_num_epochs", "demo_lesion_ce_weight", "DEMO_EPOCHS_ENV", "DEMO_INIT_ENV", "DEMO_LESION_CE_ENV",
           "load_weights_with_heads"]

DEMO_FEATURES: Tuple[int, ...] = (8, 16, 32, 64)
DEMO_WHOLE_PATCH_SIZE: Tuple[int, int, int] = (16, 48, 48)
DEMO_PATCH_PATCH_SIZE: Tuple[int, int, int] = (16, 64, 64)
DEMO_PHASE_DROPOUT_P = 0.2
DEMO_OVERSAMPLE_FOREGROUND = 0.8
DEMO_LESION_FRACTION = 0.9
DEMO_WHOLE_BATCH_SIZE = 4
#: environment variable overriding the number of epochs (see :func:`demo_num_epochs`)
DEMO_EPOCHS_ENV = "nnUNet_liver_demo_epochs"
#: environment variable: an nnU-Net checkpoint whose weights, segmentation heads included, start a ``_demo`` training
#: (see :func:`load_weights_with_heads`)
DEMO_INIT_ENV = "nnUNet_liver_demo_init"
#: cross-entropy weight of the lesion classes (1..6 in both label schemes); every other class 1
DEMO_LESION_CE_WEIGHT = {"whole": 4.0, "patch": 2.0}
#: environment variable overriding that weight (see :func:`demo_lesion_ce_weight`)
DEMO_LESION_CE_ENV = "nnUNet_liver_demo_lesion_ce"


def demo_configuration(configuration_manager, patch_size, transpose_forward=None):
    """The demo network's configuration: :func:`tiny_configuration` with :data:`DEMO_FEATURES` (pure, idempotent)."""
    return tiny_configuration(configuration_manager, features=DEMO_FEATURES, patch_size=patch_size,
                              transpose_forward=transpose_forward)


def _positive_from_env(name: str, default, cast, what: str):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = cast(value)
    except ValueError:
        number = 0
    if not number > 0:
        raise ValueError(f"{name}={value!r}: expected a positive {what}")
    return number


def demo_num_epochs(default: int) -> int:
    """Epochs of a ``_demo`` training: ``default``, or the environment's ``nnUNet_liver_demo_epochs`` (total, so that
    ``nnUNetv2_train --c`` continues a finished run up to that epoch with nnU-Net's own checkpoint and optimizer)."""
    return _positive_from_env(DEMO_EPOCHS_ENV, default, int, "number of epochs")


def demo_lesion_ce_weight(default: float) -> float:
    """Cross-entropy weight of the lesion classes: ``default`` (:data:`DEMO_LESION_CE_WEIGHT`), or the environment's
    ``nnUNet_liver_demo_lesion_ce`` (1 = nnU-Net's unweighted loss, which a run started from weighted weights uses
    to give back the calibration that the sensitivity factors f = 1 and 4 assume)."""
    return _positive_from_env(DEMO_LESION_CE_ENV, float(default), float, "weight")


def _make_demo(trainer, num_epochs: int, batch_size: int = 2) -> None:
    # the configuration detection applies the network with (training_configuration) is the one it trains with
    trainer.configuration_manager = trainer.training_configuration(trainer.plans_manager,
                                                                   trainer.configuration_manager)
    trainer.configuration_manager.configuration["batch_size"] = batch_size
    trainer.batch_size = batch_size
    trainer.num_epochs = demo_num_epochs(num_epochs)
    trainer.num_iterations_per_epoch = 50
    trainer.num_val_iterations_per_epoch = 5
    trainer.save_every = 10
    trainer.oversample_foreground_percent = DEMO_OVERSAMPLE_FOREGROUND
    trainer.probabilistic_oversampling = True  # per sample, not nnU-Net's "last X % of the batch"
    trainer.lesion_fraction = DEMO_LESION_FRACTION


def _lesion_weighted_loss(trainer, lesion_weight: float):
    """nnU-Net's own loss (Dice + CE, deep supervision) with the lesion classes weighted ``lesion_weight`` in the CE
    term: in a few thousand iterations the rare, small lesion voxels otherwise never win against liver. The weight
    also raises every lesion probability (a weighted CE is minimised by probabilities in proportion to
    ``lesion_weight`` times the true ones), which is what the sensitivity factor f does at inference."""
    lesion_weight = demo_lesion_ce_weight(lesion_weight)
    trainer.print_to_log_file(f"lesion classes weighted {lesion_weight:g} in the CE term")
    loss = nnUNetTrainer._build_loss(trainer)
    dc_ce = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
    weight = torch.ones(trainer.label_manager.num_segmentation_heads, dtype=torch.float32)
    weight[list(LESION_IDS)] = lesion_weight
    dc_ce.ce.weight = weight.to(trainer.device)
    return loss


# the patch scheme's ids 0..7 are the whole scheme's first eight classes: 0 (outside the liver, masked / background),
# the six lesion types 1..6 with the same ids, 7 liver; so a whole-CT head's first eight channels are a patch head
assert PATCH_MASKED == 0 and PATCH_LIVER == LIVER and sorted(PATCH_LABELS.values()) == list(range(LIVER + 1))

_SEG_LAYERS = ".seg_layers."


def load_weights_with_heads(network: nn.Module, checkpoint: str) -> int:
    """Start ``network`` from every weight of an nnU-Net ``checkpoint``, the segmentation heads included.

    nnUNetv2_train's ``-pretrained_weights`` re-initialises the heads (``.seg_layers.``), which costs a short
    CPU training tens of epochs just to find its classes again. Here the heads are copied too: all of a head's
    output channels when the schemes agree (UNet-whole from UNet-whole), or the first C when the network has C
    fewer classes than the checkpoint (UNet-patch, labels 0..7, from UNet-whole, whose 0..7 are the same classes).
    Every other weight must match by name and shape. Returns the number of tensors copied.
    """
    from torch._dynamo import OptimizedModule

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    mod = network._orig_mod if isinstance(network, OptimizedModule) else network
    own = mod.state_dict()
    new = {}
    for key, value in own.items():
        if key not in saved:
            raise ValueError(f"{checkpoint}: no weights for {key}; the checkpoint's network is not this one")
        src = saved[key]
        if src.shape != value.shape and _SEG_LAYERS in key and src.shape[1:] == value.shape[1:] \
                and src.shape[0] > value.shape[0]:
            src = src[:value.shape[0]]
        if src.shape != value.shape:
            raise ValueError(f"{checkpoint}: {key} has shape {tuple(src.shape)}, this network "
                             f"{tuple(value.shape)}; the checkpoint's network is not this one")
        new[key] = src.to(value.device, value.dtype)
    mod.load_state_dict(new)
    return len(new)


class _InitWithHeads:
    """Mixin: after nnU-Net builds the network, start it from ``$nnUNet_liver_demo_init`` when that is set."""

    def initialize(self):
        was_initialized = self.was_initialized
        super().initialize()
        path = os.environ.get(DEMO_INIT_ENV)
        if path and not was_initialized:
            n = load_weights_with_heads(self.network, path)
            self.print_to_log_file(f"{DEMO_INIT_ENV}: {n} weight tensors (segmentation heads included) from {path}")


def _demo_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                              do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                              foreground_labels=None, regions=None, ignore_label=None):
    base = nnUNetTrainer.get_training_transforms(
        patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
        use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label)
    return wrap_phase_transforms(base, DEMO_PHASE_DROPOUT_P)


class LiverIFMTrainer_demo(_InitWithHeads, LiverIFMTrainer):
    """UNet-whole of the demo: the IFM network, demo-sized (see the module docstring)."""

    demo_num_epochs: int = 90
    get_training_transforms = staticmethod(_demo_training_transforms)
    class_balanced = True  # since run 7 (runs 3, 4 and 6 drew a case first, then one of its lesion types)

    def _build_loss(self):
        return _lesion_weighted_loss(self, DEMO_LESION_CE_WEIGHT["whole"])

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_demo(self, self.demo_num_epochs, DEMO_WHOLE_BATCH_SIZE)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return LiverIFMTrainer.build_network_architecture(
            plans_manager, demo_configuration(configuration_manager, DEMO_WHOLE_PATCH_SIZE), num_input_channels,
            num_output_channels, enable_deep_supervision)

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager):
        return demo_configuration(configuration_manager, DEMO_WHOLE_PATCH_SIZE,
                                  transpose_forward=plans_manager.transpose_forward)


class LesionShufflePatchTrainer_demo(_InitWithHeads, LesionShufflePatchTrainer):
    """UNet-patch of the demo: lesion-shuffle patches of 16 x 64 x 64 voxels, demo-sized network."""

    patch_size = DEMO_PATCH_PATCH_SIZE
    demo_num_epochs: int = 40
    get_training_transforms = staticmethod(_demo_training_transforms)
    scheme_rates = {"original_positive": 0.35, "original_negative": 0.15,
                    "shuffled_positive": 0.35, "shuffled_negative": 0.15}
    class_balanced = True

    def _build_loss(self):
        return self.adapt_loss(_lesion_weighted_loss(self, DEMO_LESION_CE_WEIGHT["patch"]))

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_demo(self, self.demo_num_epochs)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return LesionShufflePatchTrainer.build_network_architecture(
            plans_manager, demo_configuration(configuration_manager, DEMO_PATCH_PATCH_SIZE), num_input_channels,
            num_output_channels, enable_deep_supervision)

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager):
        return demo_configuration(super().training_configuration(plans_manager, configuration_manager),
                                  DEMO_PATCH_PATCH_SIZE, transpose_forward=plans_manager.transpose_forward)


class LesionShufflePatchTrainer_demoPresentDice(LesionShufflePatchTrainer_demo):
    """The demo's UNet-patch with the Dice term averaged over the classes present in each batch
    (``LesionShufflePatchTrainer_presentDice``)."""

    present_class_dice = True
