"""LIDIA's lesion-level training on UNet-patch: the lesion head with focal loss, the asymmetric contrastive loss over a
memory bank, and sharpness-aware minimisation.

``LesionShufflePatchTrainer_LIDIA`` is ``LesionShufflePatchTrainer`` (lesion-shuffle patches, IFM first layer) whose
network carries a lesion head (:mod:`liver_lesion_head`): per reference lesion of each training patch (the project's
lesion connectivity rule), the decoder's full-resolution features averaged over the lesion give an embedding; its
classifier is trained with focal loss over the six lesion types, its projection with LIDIA's asymmetric contrastive
loss (ACL) against the batch and a memory bank of earlier batches. The loss is LIDIA's

    L = lambda_1 L_seg + lambda_2 L_focal + lambda_3 L_acl,   lambda_1 = 5, lambda_2 = 5, lambda_3 = 0.01

divided by lambda_1, so that nnU-Net's SGD schedule sees its own segmentation loss (nnU-Net's CE + Dice with deep
supervision, on the lesion-centred sampling of the lesion shuffle) at its own scale; the paper's relative weights
are kept. Temperature 0.1, memory bank 1024 (LIDIA's implementation details).

Why UNet-patch: detection already cuts lesion-centred patches around every detected lesion and runs UNet-patch on
them (reclassification, ``nnunet_liver.inference.patch_model``); with the head the same forward passes give each
lesion's type probabilities, averaged over its patches and the folds, without another network run. UNet-whole's
tiles are not lesion-centred, and heading it would need a second pass on lesion crops.

Variants (one change each, recorded in ``training_settings.json``):

- ``_LIDIA``: focal loss (gamma 2) + ACL with the paper's weights.
- ``_LIDIAfocal``: focal loss alone (no ACL).
- ``_LIDIAacl``: ACL alone; the classifier is trained with plain cross-entropy (focal's gamma = 0), so detection
  still has a trained classifier.
- ``_LIDIAce``: cross-entropy alone (the head's baseline, Table 3's first row).
- ``_LIDIA_SAM``: ``_LIDIA`` optimised with SAM (:mod:`liver_sam`): LIDIA as the paper trains it.
- ``_LIDIA_SAM_demo_1epoch``: ``_LIDIA_SAM`` on the demo's UNet-patch recipe for one epoch: the CUDA check's short
  real training of the variant (``benchmarks/cuda_check.py``).

The memory bank (the projections of the last 1024 lesions with their types, detached) is saved in each checkpoint
under ``lesion_memory_bank`` and restored with it (``nnUNetv2_train --c``). Each DDP process keeps its own bank; rank
0's is saved. torch.compile is off for these trainers (the head reads the decoder through a forward hook).

Where ours differs from LIDIA: no Mask2Former queries or pixel decoder (the lesions are the reference lesions of the
patch, their embeddings pooled from nnU-Net's own decoder), nnU-Net's SGD schedule instead of the paper's learning
rate of 1e-5, UNet-patch's six lesion types instead of the paper's eight classes (our "Other" is the heterogeneous
class of Eq. (5)).

Papers: Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative Fusion
and Asymmetric Contrastive Learning"; Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection
and False Positive Removal in Liver CT Scans".
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import autocast

from nnunetv2.utilities.helpers import dummy_context

from nnunet_liver.labels import LESION_NAMES
from nnunet_liver.trainers.liver_demo_trainers import (LesionShufflePatchTrainer_demo,
                                                       LesionShufflePatchTrainer_demo_1epoch)
from nnunet_liver.trainers.liver_lesion_head import (PROJECTION_DIM, attach_lesion_head, capture_features,
                                                     lesion_head_of, lesion_instances, pool_lesion_features)
from nnunet_liver.trainers.liver_lidia_losses import MemoryBank, asymmetric_contrastive_loss, focal_loss
from nnunet_liver.trainers.liver_patch_trainer import LesionShufflePatchTrainer
from nnunet_liver.trainers.liver_sam import SAM, SAM_RHO, sam_train_step

__all__ = ["LesionShufflePatchTrainer_LIDIA", "LesionShufflePatchTrainer_LIDIAfocal",
           "LesionShufflePatchTrainer_LIDIAacl", "LesionShufflePatchTrainer_LIDIAce",
           "LesionShufflePatchTrainer_LIDIA_SAM", "LesionShufflePatchTrainer_LIDIA_SAM_demo_1epoch", "MEMORY_BANK_KEY"]

#: the checkpoint's entry holding the memory bank
MEMORY_BANK_KEY = "lesion_memory_bank"
#: nnU-Net's gradient clipping norm (its train_step)
CLIP_NORM = 12.0


class LesionShufflePatchTrainer_LIDIA(LesionShufflePatchTrainer):
    """UNet-patch with LIDIA's lesion head: focal loss + asymmetric contrastive loss (see the module docstring)."""

    #: LIDIA's loss weights: segmentation (nnU-Net's CE + Dice), focal, ACL; the total is divided by lambda_seg
    lambda_seg: float = 5.0
    lambda_focal: float = 5.0
    lambda_acl: float = 0.01
    #: focal loss's gamma (0: cross-entropy)
    focal_gamma: float = 2.0
    temperature: float = 0.1
    memory_bank_size: int = 1024
    #: LIDIA's heterogeneous "others" class: only pushed away from the common classes (Eq. 5)
    heterogeneous_types: Tuple[str, ...] = ("Other",)
    #: reference lesions smaller than this (voxels in the training patch) get no embedding
    min_lesion_voxels: int = 8
    use_sam: bool = False
    sam_rho: float = SAM_RHO
    recorded_settings = LesionShufflePatchTrainer.recorded_settings + (
        "lambda_seg", "lambda_focal", "lambda_acl", "focal_gamma", "temperature", "memory_bank_size",
        "heterogeneous_types", "min_lesion_voxels", "use_sam", "sam_rho")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.memory_bank = MemoryBank(self.memory_bank_size, PROJECTION_DIM)
        self.sam: Optional[SAM] = None
        self._head_log: List[Dict[str, float]] = []

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        return attach_lesion_head(LesionShufflePatchTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision))

    def _do_i_compile(self):
        return False  # the lesion head reads the decoder's last stage through a forward hook

    def initialize(self):
        super().initialize()
        self.prepare_lesion_training()

    def prepare_lesion_training(self) -> None:
        """Put the memory bank on the device and set up SAM around the optimiser (after the network exists)."""
        self.memory_bank.to(self.device)
        if self.use_sam:
            self.sam = SAM(self.network.parameters(), rho=self.sam_rho)

    # ------------------------------------------------------------------------------------------- the lesion loss

    def lesion_targets(self, target) -> Tuple[torch.Tensor, torch.Tensor]:
        """The reference lesion instances of a batch's full-resolution target and their type indices (0..5)."""
        full = target[0] if isinstance(target, (list, tuple)) else target
        labels = full[:, 0].detach().cpu().numpy().astype(np.int16)
        instances, types = lesion_instances(labels, self.min_lesion_voxels)
        return torch.from_numpy(instances), torch.tensor([t - 1 for t in types], dtype=torch.long)

    def lesion_loss(self, instances: torch.Tensor, types: torch.Tensor):
        """(lambda_focal L_focal + lambda_acl L_acl, the projections (N, D) detached, {part: value}) from the features
        the head kept in the last forward pass."""
        head = lesion_head_of(self.network)
        n = int(types.numel())
        if n == 0:  # every head parameter stays in the graph (nnU-Net's DDP runs without find_unused_parameters)
            zero = sum(p.sum() for p in head.parameters()) * 0.0
            return zero, None, {}
        pooled = pool_lesion_features(head.features, instances, n)
        logits, z = head(pooled)
        types = types.to(logits.device)
        focal = focal_loss(logits, types, gamma=self.focal_gamma)
        het = tuple(LESION_NAMES.index(t) for t in self.heterogeneous_types)
        bank_z, bank_labels = self.memory_bank.get()
        acl = asymmetric_contrastive_loss(z, types, bank_z, bank_labels, temperature=self.temperature,
                                          heterogeneous=het)
        loss = self.lambda_focal * focal + self.lambda_acl * acl
        if self.lambda_focal == 0:
            loss = loss + 0.0 * logits.sum()
        if self.lambda_acl == 0:
            loss = loss + 0.0 * z.sum()
        parts = {"focal": float(focal.detach()), "acl": float(acl.detach()), "lesions": n}
        return loss, z.detach(), parts

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's train_step with the lesion loss added (and SAM's two passes with ``use_sam``)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        instances, types = self.lesion_targets(target)
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        head = lesion_head_of(self.network)
        first: dict = {}

        def compute_loss():
            with capture_features(head):
                output = self.network(data)
                seg = self.loss(output, target)
                lesion, z, parts = self.lesion_loss(instances, types)
            if not first:  # the first pass (at the weights w) feeds the memory bank and the log
                first.update(z=z, parts=parts, seg=float(seg.detach()))
            return seg + lesion / self.lambda_seg

        def amp():
            return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

        if self.use_sam:
            loss = sam_train_step(self.sam, self.optimizer, compute_loss, grad_scaler=self.grad_scaler,
                                  clip_norm=CLIP_NORM, parameters=self.network.parameters(), autocast=amp)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            with amp():
                loss = compute_loss()
            if self.grad_scaler is not None:
                self.grad_scaler.scale(loss).backward()
                self.grad_scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), CLIP_NORM)
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), CLIP_NORM)
                self.optimizer.step()
        if first.get("z") is not None:
            self.memory_bank.enqueue(first["z"], types)
        self._head_log.append({"seg": first["seg"], **first["parts"]})
        return {"loss": loss.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        logged = [p for p in self._head_log if p.get("lesions")]
        if logged:
            self.print_to_log_file(
                f"lesion head: {sum(p['lesions'] for p in logged)} lesions, focal "
                f"{np.mean([p['focal'] for p in logged]):.4f}, ACL {np.mean([p['acl'] for p in logged]):.4f}, "
                f"memory bank {len(self.memory_bank)}/{self.memory_bank.size}")
        self._head_log = []
        super().on_train_epoch_end(train_outputs)

    # ------------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint with the memory bank added (``MEMORY_BANK_KEY``), written atomically."""
        super().save_checkpoint(filename)
        if self.local_rank == 0 and not self.disable_checkpointing and os.path.isfile(filename):
            checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
            checkpoint[MEMORY_BANK_KEY] = {k: v.cpu() for k, v in self.memory_bank.state_dict().items()}
            tmp = filename + ".tmp"
            torch.save(checkpoint, tmp)
            os.replace(tmp, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's load, then the memory bank (an empty bank when the checkpoint has none)."""
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        state = checkpoint.get(MEMORY_BANK_KEY)
        if state is None:
            self.print_to_log_file("checkpoint has no lesion memory bank; starting with an empty one")
            return
        self.memory_bank.load_state_dict(state)
        self.memory_bank.to(self.device)
        self.print_to_log_file(f"lesion memory bank restored: {len(self.memory_bank)} entries")


class LesionShufflePatchTrainer_LIDIAfocal(LesionShufflePatchTrainer_LIDIA):
    """Ablation: the lesion head with focal loss alone (no contrastive loss)."""

    lambda_acl = 0.0


class LesionShufflePatchTrainer_LIDIAacl(LesionShufflePatchTrainer_LIDIA):
    """Ablation: the asymmetric contrastive loss alone; the classifier learns with plain cross-entropy (gamma 0)."""

    focal_gamma = 0.0


class LesionShufflePatchTrainer_LIDIAce(LesionShufflePatchTrainer_LIDIA):
    """Ablation baseline: the lesion head's classifier with plain cross-entropy, no contrastive loss."""

    focal_gamma = 0.0
    lambda_acl = 0.0


class LesionShufflePatchTrainer_LIDIA_SAM(LesionShufflePatchTrainer_LIDIA):
    """LIDIA as the paper trains it: focal + ACL, optimised with sharpness-aware minimisation."""

    use_sam = True


class LesionShufflePatchTrainer_LIDIA_SAM_demo_1epoch(LesionShufflePatchTrainer_LIDIA_SAM,
                                                     LesionShufflePatchTrainer_demo_1epoch):
    """``LesionShufflePatchTrainer_LIDIA_SAM`` with the demo's UNet-patch recipe (network, patches, sampling, loss)
    for one epoch of 50 iterations: the CUDA check's real training of the LIDIA variant."""

    recorded_settings = LesionShufflePatchTrainer_LIDIA.recorded_settings + ("lesion_ce_weight",)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        return attach_lesion_head(LesionShufflePatchTrainer_demo.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision))
