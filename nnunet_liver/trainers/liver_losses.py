"""``PresentClassSoftDiceLoss``: nnU-Net's soft Dice averaged over the classes present in the batch only.

nnU-Net's ``MemoryEfficientSoftDiceLoss`` averages the (batch) Dice over every foreground class. A class absent from
the batch scores ``smooth / (sum of its probabilities + smooth)`` with ``smooth = 1e-5``: about 1 when the network
gives it no probability at all, about 0 as soon as a few voxels' worth of probability spill into it. UNet-patch sees
two patches per batch (nnU-Net's 3D default) with at most one lesion type each, so four or more of its six lesion
classes are absent from every batch, and a network that predicts no lesion anywhere collects Dice 1 on all of them:
measured on the demo's UNet-patch (``scripts/patch_loss_probe.py``), such a collapsed network has a lower nnU-Net
loss (-0.66) than the working one it came from (-0.40), although its cross-entropy is ten times higher. Averaging the
Dice over the classes present in the batch's reference removes that reward; false alarms of absent classes are
still penalised by the cross-entropy term.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["PresentClassSoftDiceLoss", "use_present_class_dice"]


class PresentClassSoftDiceLoss(nn.Module):
    """Soft Dice (nnU-Net's formula, batch Dice, background left out) averaged over the classes with at least one
    reference voxel in the batch; 0 when none has. Drop-in for ``DC_and_CE_loss(dice_class=...)``."""

    def __init__(self, apply_nonlin: Optional[Callable] = None, batch_dice: bool = True, do_bg: bool = False,
                 smooth: float = 1e-5, ddp: bool = False):
        super().__init__()
        if not batch_dice:
            raise ValueError("PresentClassSoftDiceLoss is a batch Dice (the classes present are the batch's)")
        self.apply_nonlin, self.do_bg, self.smooth, self.ddp = apply_nonlin, do_bg, float(smooth), ddp

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.apply_nonlin is not None:
            x = self.apply_nonlin(x)
        axes = (0,) + tuple(range(2, x.ndim))
        with torch.no_grad():
            if x.ndim != y.ndim:
                y = y.view((y.shape[0], 1, *y.shape[1:]))
            onehot = y.to(torch.float32) if x.shape == y.shape else \
                torch.zeros(x.shape, device=x.device, dtype=torch.float32).scatter_(1, y.long(), 1)
        if not self.do_bg:
            x, onehot = x[:, 1:], onehot[:, 1:]
        if loss_mask is not None:
            x, onehot = x * loss_mask, onehot * loss_mask
        sums = torch.stack([(x * onehot).sum(axes, dtype=torch.float32), x.sum(axes, dtype=torch.float32),
                            onehot.sum(axes, dtype=torch.float32)])
        if self.ddp and torch.distributed.is_available() and torch.distributed.is_initialized():
            from nnunetv2.utilities.ddp_allgather import AllGatherGrad
            sums = AllGatherGrad.apply(sums).sum(0)  # (world size, 3, C) -> the batch over every process
        intersect, sum_pred, sum_gt = sums
        dc = (2 * intersect + self.smooth) / (sum_gt + sum_pred + self.smooth).clamp_min(1e-8)
        present = sum_gt > 0
        return -(dc[present].mean() if bool(present.any()) else dc.sum() * 0)


def use_present_class_dice(loss: nn.Module) -> nn.Module:
    """Swap the Dice term of nnU-Net's ``DC_and_CE_loss`` (inside a ``DeepSupervisionWrapper`` or not) for
    :class:`PresentClassSoftDiceLoss` with the same non-linearity, smooth and background setting; returns ``loss``."""
    inner = getattr(loss, "loss", loss)
    dc = getattr(inner.dc, "_orig_mod", inner.dc)  # torch.compile's wrapper keeps the module there
    inner.dc = PresentClassSoftDiceLoss(apply_nonlin=dc.apply_nonlin, batch_dice=True, do_bg=dc.do_bg,
                                        smooth=dc.smooth, ddp=getattr(dc, "ddp", False))
    return loss
