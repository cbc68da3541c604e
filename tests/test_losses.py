"""PresentClassSoftDiceLoss: nnU-Net's soft Dice over the classes present in the batch (cross-checked against
nnU-Net's own MemoryEfficientSoftDiceLoss), and why UNet-patch needs it (the collapse's lower loss)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_liver.labels import patch_dataset_json_labels
from nnunet_liver.trainers.liver_losses import PresentClassSoftDiceLoss, use_present_class_dice

sys.path.insert(0, str(Path(__file__).parent))
from test_trainers import plans, whole_json  # noqa: E402


def _softmax(t):
    return torch.softmax(t, 1)


def _nnunet_dice():
    return MemoryEfficientSoftDiceLoss(apply_nonlin=_softmax, batch_dice=True, do_bg=False, smooth=1e-5, ddp=False)


def test_equals_nnunets_dice_when_every_class_is_present():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 6, 6)
    y = torch.randint(0, 4, (2, 1, 3, 6, 6))
    y[0, 0, 0, 0, :4] = torch.arange(4)
    ours = PresentClassSoftDiceLoss(apply_nonlin=_softmax)
    assert float(ours(x, y)) == pytest.approx(float(_nnunet_dice()(x, y)), rel=1e-6)


def test_brute_force_mean_over_present_classes_and_empty_batch():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 2, 4, 4)
    y = torch.zeros(2, 1, 2, 4, 4, dtype=torch.long)
    y[0, 0, 0, :2, :2] = 2
    y[1, 0, 1, 1:, 1:] = 4  # classes 1 and 3 absent
    p = torch.softmax(x, 1).numpy().astype(np.float64)
    dice = []
    for c in (2, 4):
        g = (y[:, 0].numpy() == c)
        inter = (p[:, c] * g).sum()
        dice.append((2 * inter + 1e-5) / (p[:, c].sum() + g.sum() + 1e-5))
    assert float(PresentClassSoftDiceLoss(apply_nonlin=_softmax)(x, y)) == pytest.approx(-np.mean(dice), rel=1e-5)
    # nothing but background: no Dice signal, and still a graph for backward
    x.requires_grad_(True)
    loss = PresentClassSoftDiceLoss(apply_nonlin=_softmax)(x, torch.zeros_like(y))
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad is not None
    with pytest.raises(ValueError, match="batch Dice"):
        PresentClassSoftDiceLoss(batch_dice=False)


def test_collapse_has_the_lower_nnunet_dice_but_not_the_lower_present_class_dice():
    # patch labels: 0 masked, 1..6 lesion types, 7 liver; one HCC (1) lesion in a liver patch, two patches
    y = torch.full((2, 1, 4, 8, 8), 7, dtype=torch.long)
    y[0, 0, 1:3, 2:5, 2:5] = 1
    onehot = torch.zeros(2, 8, 4, 8, 8).scatter_(1, y, 1)
    working = 0.8 * onehot + 0.2 / 8  # finds the lesion, spills a little probability into every class
    collapsed = torch.zeros_like(onehot)
    collapsed[:, 7] = 1.0  # liver everywhere, exactly zero for every lesion type
    identity = dict(apply_nonlin=None, batch_dice=True, do_bg=False, smooth=1e-5)
    nnunet = MemoryEfficientSoftDiceLoss(**identity, ddp=False)
    ours = PresentClassSoftDiceLoss(**identity)
    assert float(nnunet(collapsed, y)) < float(nnunet(working, y))  # nnU-Net's Dice prefers the collapse
    assert float(ours(working, y)) < float(ours(collapsed, y))      # ours prefers finding the lesion


def test_swapped_into_nnunets_loss_and_the_trainers(tmp_path, monkeypatch):
    loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                 {}, dice_class=MemoryEfficientSoftDiceLoss), [0.6, 0.4])
    assert use_present_class_dice(loss) is loss
    dc = loss.loss.dc
    assert isinstance(dc, PresentClassSoftDiceLoss) and dc.smooth == 1e-5 and dc.do_bg is False
    from nnunet_liver.trainers.liver_demo_trainers import (LesionShufflePatchTrainer_demo,
                                                           LesionShufflePatchTrainer_demoPresentDice)
    from nnunet_liver.trainers.liver_patch_trainer import (LesionShufflePatchTrainer,
                                                           LesionShufflePatchTrainer_presentDice)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    for cls, present in ((LesionShufflePatchTrainer, False), (LesionShufflePatchTrainer_presentDice, True),
                         (LesionShufflePatchTrainer_demo, False), (LesionShufflePatchTrainer_demoPresentDice, True)):
        p = plans()
        p["continue_training"] = False
        p["configurations"]["3d_fullres"]["batch_dice"] = True
        trainer = cls(p, "3d_fullres", 0, whole_json(labels=patch_dataset_json_labels()), torch.device("cpu"))
        trainer.enable_deep_supervision = False
        built = trainer._build_loss()
        assert isinstance(getattr(built, "loss", built).dc, PresentClassSoftDiceLoss) is present, cls.__name__


def test_ddp_batch_dice_gathers_the_sums_of_every_process(tmp_path):
    """With a process group (here one gloo process) the sums are gathered before the Dice: same value as alone."""
    import torch.distributed as dist

    torch.manual_seed(2)
    x = torch.randn(2, 4, 2, 4, 4, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 2, 4, 4))
    alone = float(PresentClassSoftDiceLoss(apply_nonlin=_softmax)(x, y).detach())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loss = PresentClassSoftDiceLoss(apply_nonlin=_softmax, ddp=True)(x, y)
        loss.backward()
    finally:
        dist.destroy_process_group()
    assert float(loss.detach()) == pytest.approx(alone, rel=1e-6) and x.grad is not None
