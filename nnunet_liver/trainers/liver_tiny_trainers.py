"""``_tiny`` variants of the liver trainers for CPU tests and the demo.

A tiny U-Net (3 stages, 4/8/16 features, see :func:`~nnunet_liver.trainers.liver_networks.tiny_configuration`),
patches of at most 16 x 32 x 32 voxels, 2 epochs of 5 training and 2 validation iterations, no intermediate
checkpoints. ``build_network_architecture`` derives the tiny network from the saved plans, so the predictor
rebuilds exactly the trained network.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_liver.trainers.liver_lesion_head import attach_lesion_head
from nnunet_liver.trainers.liver_lidia_trainers import LesionShufflePatchTrainer_LIDIA
from nnunet_liver.trainers.liver_networks import tiny_configuration
from nnunet_liver.trainers.liver_patch_trainer import LesionShufflePatchTrainer
from nnunet_liver.trainers.liver_trainers import LiverIFMTrainer, LiverWholeTrainer

__all__ = ["LiverWholeTrainer_tiny", "LiverIFMTrainer_tiny", "LesionShufflePatchTrainer_tiny",
           "LesionShufflePatchTrainer_LIDIA_tiny", "LesionShufflePatchTrainer_LIDIA_SAM_tiny"]


def _make_tiny(trainer) -> None:
    # the tiny network and patch size are the trainer's training_configuration (LiverWholeTrainer.__init__)
    trainer.num_epochs = 2
    trainer.num_iterations_per_epoch = 5
    trainer.num_val_iterations_per_epoch = 2
    trainer.save_every = 10 ** 6


class LiverWholeTrainer_tiny(LiverWholeTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_tiny(self)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return LiverWholeTrainer.build_network_architecture(plans_manager, tiny_configuration(configuration_manager),
                                                            num_input_channels, num_output_channels,
                                                            enable_deep_supervision)

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager):
        return tiny_configuration(configuration_manager, transpose_forward=plans_manager.transpose_forward)


class LiverIFMTrainer_tiny(LiverIFMTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_tiny(self)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return LiverIFMTrainer.build_network_architecture(plans_manager, tiny_configuration(configuration_manager),
                                                          num_input_channels, num_output_channels,
                                                          enable_deep_supervision)

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager):
        return tiny_configuration(configuration_manager, transpose_forward=plans_manager.transpose_forward)


class LesionShufflePatchTrainer_tiny(LesionShufflePatchTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_tiny(self)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return LesionShufflePatchTrainer.build_network_architecture(
            plans_manager, tiny_configuration(configuration_manager), num_input_channels, num_output_channels,
            enable_deep_supervision)

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager):
        return tiny_configuration(super().training_configuration(plans_manager, configuration_manager),
                                  transpose_forward=plans_manager.transpose_forward)


class LesionShufflePatchTrainer_LIDIA_tiny(LesionShufflePatchTrainer_LIDIA):
    """``LesionShufflePatchTrainer_LIDIA`` (lesion head, focal + ACL, memory bank) on the tiny network."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _make_tiny(self)
        # the head's losses and the memory bank need lesions in the batches: with the hard-case patches (no lesion)
        # five iterations of two patches can miss every lesion, twenty practically never (each costs ~0.2 s)
        self.num_iterations_per_epoch = 20

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return attach_lesion_head(LesionShufflePatchTrainer_tiny.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision))

    @classmethod
    def training_configuration(cls, plans_manager, configuration_manager):
        return tiny_configuration(super().training_configuration(plans_manager, configuration_manager),
                                  transpose_forward=plans_manager.transpose_forward)


class LesionShufflePatchTrainer_LIDIA_SAM_tiny(LesionShufflePatchTrainer_LIDIA_tiny):
    """``LesionShufflePatchTrainer_LIDIA_SAM`` (SAM's two passes per step) on the tiny network."""

    use_sam = True
