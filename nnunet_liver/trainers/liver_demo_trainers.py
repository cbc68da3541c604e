"""``_demo`` variants of the liver trainers: the bundled demo models (``nnunet_liver/demo_models``), CPU-trainable.

Bigger than ``_tiny`` and trained for longer, still small enough to train on two CPU cores in well under an hour
(see ``scripts/train_demo_models.py``, which reproduces the bundled models):

- a 4-stage U-Net with 8/16/32/64 features (the plan's first four stages' kernels and strides),
- UNet-whole: patches of 16 x 64 x 64 voxels (96 x 256 x 256 mm at 6 x 4 x 4 mm: most of the demo liver),
- UNet-patch: lesion-shuffle patches of 16 x 64 x 64 voxels (256 mm across at 4 mm, the whole demo liver),
- ``num_epochs`` epochs of 50 training and 5 validation iterations, a checkpoint every 10 epochs.

``build_network_architecture`` derives the network from the saved plans (as the ``_tiny`` variants do), so the
predictor rebuilds exactly the trained network from the model folder alone.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from nnunet_liver.trainers.liver_networks import tiny_configuration
from nnunet_liver.trainers.liver_patch_trainer import LesionShufflePatchTrainer
from nnunet_liver.trainers.liver_trainers import LiverIFMTrainer

__all__ = ["LiverIFMTrainer_demo", "LesionShufflePatchTrainer_demo", "LesionShufflePatchTrainer_demoFT", "DEMO_FEATURES", "demo_configuration"]

DEMO_FEATURES: Tuple[int, ...] = (8, 16, 32, 64)
DEMO_WHOLE_PATCH_SIZE: Tuple[int, int, int] = (16, 64, 64)
DEMO_PATCH_PATCH_SIZE: Tuple[int, int, int] = (16, 64, 64)


def demo_configuration(configuration_manager, patch_size, transpose_forward=None):
    """The demo network's configuration: :func:`tiny_configuration` with :data:`DEMO_FEATURES` (pure, idempotent)."""
    return tiny_configuration(configuration_manager, features=DEMO_FEATURES, patch_size=patch_size,
                              transpose_forward=transpose_forward)


def _make_demo(trainer, patch_size, num_epochs: int) -> None:
    trainer.configuration_manager = demo_configuration(
        trainer.configuration_manager, patch_size, transpose_forward=trainer.plans_manager.transpose_forward)
    trainer.batch_size = trainer.configuration_manager.batch_size
    trainer.num_epochs = num_epochs
    trainer.num_iterations_per_epoch = 50
    trainer.num_val_iterations_per_epoch = 5
    trainer.save_every = 10


class LiverIFMTrainer_demo(LiverIFMTrainer):
    """UNet-whole of the demo: the IFM network, demo-sized (see the module docstring)."""

    demo_num_epochs: int = 20

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_demo(self, DEMO_WHOLE_PATCH_SIZE, self.demo_num_epochs)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return LiverIFMTrainer.build_network_architecture(
            plans_manager, demo_configuration(configuration_manager, DEMO_WHOLE_PATCH_SIZE), num_input_channels,
            num_output_channels, enable_deep_supervision)


class LesionShufflePatchTrainer_demo(LesionShufflePatchTrainer):
    """UNet-patch of the demo: lesion-shuffle patches of 16 x 64 x 64 voxels, demo-sized network."""

    patch_size = DEMO_PATCH_PATCH_SIZE
    demo_num_epochs: int = 12

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_demo(self, DEMO_PATCH_PATCH_SIZE, self.demo_num_epochs)

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


class LesionShufflePatchTrainer_demoFT(LesionShufflePatchTrainer_demo):
    """Second stage of the demo UNet-patch: fine-tunes ``LesionShufflePatchTrainer_demo``'s weights
    (``nnUNetv2_train ... -pretrained_weights``) for 6 more epochs with more positive patches (the first stage
    learns the liver but, in 600 iterations, not yet the small lesions)."""

    demo_num_epochs: int = 6
    scheme_rates = {"original_positive": 0.35, "original_negative": 0.15,
                    "shuffled_positive": 0.35, "shuffled_negative": 0.15}
