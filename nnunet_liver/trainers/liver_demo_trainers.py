"""``_demo`` variants of the liver trainers: the bundled demo models (``nnunet_liver/demo_models``), CPU-trainable.

Bigger than ``_tiny`` and trained for longer, still small enough to train on two CPU cores
(``scripts/train_demo_models.py`` runs the recipe with nnU-Net's commands):

- a 4-stage U-Net with 8/16/32/64 features (the plan's first four stages' kernels and strides),
- UNet-whole: batches of 4 patches of 16 x 48 x 48 voxels (96 x 192 x 192 mm at 6 x 4 x 4 mm),
- UNet-patch: lesion-shuffle patches of 16 x 64 x 64 voxels (256 mm across at 4 mm, the whole demo liver),
- ``demo_num_epochs`` epochs of 50 training and 5 validation iterations, a checkpoint every 10 epochs,
- a short-training sampling recipe: each patch forced onto foreground with probability 0.8 (nnU-Net: the last
  third of the batch), 90 % of those centred on a lesion, drawn class-balanced (a lesion type first, then a case
  holding it); IFM phase dropout with probability ``DEMO_PHASE_DROPOUT_P`` (0.2, not 0.5: in a few thousand
  iterations the network must first learn the lesion types from all phases); UNet-patch with 70 % positive
  lesion-shuffle patches, drawn class-balanced too (a lesion type first, then a case and a lesion of that type:
  the phantoms' ICC and metastases are a fifth of the lesions, and a uniform draw of cases barely teaches them);
- nnU-Net's Dice + CE loss with the lesion classes weighted ``lesion_ce_weight`` in the CE term (4 for
  UNet-whole, 2 for UNet-patch; 1 is nnU-Net's own loss).

Every setting is a class constant, and each variant is a class, as nnU-Net's ``nnUNetTrainer_Xepochs``:

================================================ ====== ========= ===============================================
trainer                                          epochs lesion CE
================================================ ====== ========= ===============================================
``LiverIFMTrainer_demo``                         90     4         the recipe's UNet-whole
``LiverIFMTrainer_demoUnweighted``               90     1         nnU-Net's loss, so that the sensitivity factors
                                                                  f = 1 and 4 mean what they mean in the paper
``LiverIFMTrainer_demoUnweighted_400epochs``     400    1         the settings of the shipped UNet-whole's last runs
``LesionShufflePatchTrainer_demo``               40     2         the recipe's UNet-patch
``LesionShufflePatchTrainer_demo_220epochs``     220    2         the shipped UNet-patch's settings
``LesionShufflePatchTrainer_demoPresentDice``    40     2         Dice over the classes present in each batch
================================================ ====== ========= ===============================================

Another number of epochs or weight is one more subclass. A warm start (every weight of a checkpoint, heads
included) is ``python -m nnunet_liver.training.warm_start`` (a command-line input, recorded in the model's
``training_settings.json`` with everything above).

``build_network_architecture`` derives the network from the saved plans (as the ``_tiny`` variants do), so the
predictor rebuilds exactly the trained network from the model folder alone; it depends on nothing a variant
changes, so every variant's model is applied like ``LiverIFMTrainer_demo``'s.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_liver.labels import LESION_IDS
from nnunet_liver.trainers.liver_networks import tiny_configuration
from nnunet_liver.trainers.liver_patch_trainer import LesionShufflePatchTrainer
from nnunet_liver.trainers.liver_trainers import LiverIFMTrainer

__all__ = ["LiverIFMTrainer_demo", "LiverIFMTrainer_demoUnweighted", "LiverIFMTrainer_demoUnweighted_400epochs",
           "LesionShufflePatchTrainer_demo", "LesionShufflePatchTrainer_demo_220epochs",
           "LesionShufflePatchTrainer_demoPresentDice", "DEMO_FEATURES", "demo_configuration"]

DEMO_FEATURES: Tuple[int, ...] = (8, 16, 32, 64)
DEMO_WHOLE_PATCH_SIZE: Tuple[int, int, int] = (16, 48, 48)
DEMO_PATCH_PATCH_SIZE: Tuple[int, int, int] = (16, 64, 64)
DEMO_PHASE_DROPOUT_P = 0.2
DEMO_OVERSAMPLE_FOREGROUND = 0.8
DEMO_LESION_FRACTION = 0.9
DEMO_WHOLE_BATCH_SIZE = 4
DEMO_PATCH_BATCH_SIZE = 2
#: the recipe's cross-entropy weight of the lesion classes (1..6 in both label schemes); every other class 1
DEMO_LESION_CE_WEIGHT: Dict[str, float] = {"whole": 4.0, "patch": 2.0}


def demo_configuration(configuration_manager, patch_size, transpose_forward=None, batch_size=None):
    """The demo network's configuration: :func:`tiny_configuration` with :data:`DEMO_FEATURES` (pure, idempotent)."""
    return tiny_configuration(configuration_manager, features=DEMO_FEATURES, patch_size=patch_size,
                              transpose_forward=transpose_forward, batch_size=batch_size)


def _make_demo(trainer) -> None:
    # the demo network, patch size and batch size are the trainer's training_configuration (LiverWholeTrainer)
    trainer.batch_size = trainer.configuration_manager.batch_size
    trainer.num_epochs = trainer.demo_num_epochs
    trainer.num_iterations_per_epoch = 50
    trainer.num_val_iterations_per_epoch = 5
    trainer.save_every = 10
    trainer.oversample_foreground_percent = DEMO_OVERSAMPLE_FOREGROUND
    trainer.probabilistic_oversampling = True  # per sample, not nnU-Net's "last X % of the batch"
    trainer.lesion_fraction = DEMO_LESION_FRACTION


def _lesion_weighted_loss(trainer):
    """nnU-Net's own loss (Dice + CE, deep supervision) with the lesion classes weighted ``lesion_ce_weight`` in the
    CE term: in a few thousand iterations the rare, small lesion voxels otherwise never win against liver. The
    weight also raises every lesion probability (a weighted CE is minimised by probabilities in proportion to the
    weight times the true ones), which is what the sensitivity factor f does at inference."""
    lesion_weight = float(trainer.lesion_ce_weight)
    trainer.print_to_log_file(f"lesion classes weighted {lesion_weight:g} in the CE term")
    loss = nnUNetTrainer._build_loss(trainer)
    dc_ce = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
    weight = torch.ones(trainer.label_manager.num_segmentation_heads, dtype=torch.float32)
    weight[list(LESION_IDS)] = lesion_weight
    dc_ce.ce.weight = weight.to(trainer.device)
    return loss


class LiverIFMTrainer_demo(LiverIFMTrainer):
    """UNet-whole of the demo: the IFM network, demo-sized (see the module docstring)."""

    demo_num_epochs: int = 90
    lesion_ce_weight: float = DEMO_LESION_CE_WEIGHT["whole"]
    phase_dropout_p = DEMO_PHASE_DROPOUT_P
    class_balanced = True
    recorded_settings = LiverIFMTrainer.recorded_settings + ("lesion_ce_weight",)

    def _build_loss(self):
        return _lesion_weighted_loss(self)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_demo(self)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return LiverIFMTrainer.build_network_architecture(
            plans_manager, demo_configuration(configuration_manager, DEMO_WHOLE_PATCH_SIZE), num_input_channels,
            num_output_channels, enable_deep_supervision)

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager):
        return demo_configuration(configuration_manager, DEMO_WHOLE_PATCH_SIZE,
                                  transpose_forward=plans_manager.transpose_forward, batch_size=DEMO_WHOLE_BATCH_SIZE)


class LiverIFMTrainer_demoUnweighted(LiverIFMTrainer_demo):
    """The demo's UNet-whole with nnU-Net's unweighted loss (lesion CE weight 1): the weight-4 recipe's f = 1
    already acts like f = 4, so the sensitivity factors need a model trained without the weight."""

    lesion_ce_weight = 1.0


class LiverIFMTrainer_demoUnweighted_400epochs(LiverIFMTrainer_demoUnweighted):
    """``LiverIFMTrainer_demoUnweighted`` for 400 epochs: the settings of the shipped UNet-whole's last runs."""

    demo_num_epochs = 400


class LiverIFMTrainer_demo_1epoch(LiverIFMTrainer_demo):
    """``LiverIFMTrainer_demo`` for one epoch (50 iterations): the CUDA check's short real training run."""

    demo_num_epochs = 1


class LesionShufflePatchTrainer_demo(LesionShufflePatchTrainer):
    """UNet-patch of the demo: lesion-shuffle patches of 16 x 64 x 64 voxels, demo-sized network."""

    patch_size = DEMO_PATCH_PATCH_SIZE
    demo_num_epochs: int = 40
    lesion_ce_weight: float = DEMO_LESION_CE_WEIGHT["patch"]
    phase_dropout_p = DEMO_PHASE_DROPOUT_P
    scheme_rates = {"original_positive": 0.35, "original_negative": 0.15,
                    "shuffled_positive": 0.35, "shuffled_negative": 0.15}
    class_balanced = True
    recorded_settings = LesionShufflePatchTrainer.recorded_settings + ("lesion_ce_weight",)

    def _build_loss(self):
        return self.adapt_loss(_lesion_weighted_loss(self))

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_demo(self)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return LesionShufflePatchTrainer.build_network_architecture(
            plans_manager, demo_configuration(configuration_manager, DEMO_PATCH_PATCH_SIZE), num_input_channels,
            num_output_channels, enable_deep_supervision)

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager):
        return demo_configuration(super().training_configuration(plans_manager, configuration_manager),
                                  DEMO_PATCH_PATCH_SIZE, transpose_forward=plans_manager.transpose_forward,
                                  batch_size=DEMO_PATCH_BATCH_SIZE)


class LesionShufflePatchTrainer_demo_220epochs(LesionShufflePatchTrainer_demo):
    """``LesionShufflePatchTrainer_demo`` for 220 epochs: the shipped UNet-patch's settings."""

    demo_num_epochs = 220


class LesionShufflePatchTrainer_demo_1epoch(LesionShufflePatchTrainer_demo):
    """``LesionShufflePatchTrainer_demo`` for one epoch (50 iterations): the CUDA check's short real training run."""

    demo_num_epochs = 1


class LesionShufflePatchTrainer_demoPresentDice(LesionShufflePatchTrainer_demo):
    """The demo's UNet-patch with the Dice term averaged over the classes present in each batch
    (``LesionShufflePatchTrainer_presentDice``)."""

    present_class_dice = True
