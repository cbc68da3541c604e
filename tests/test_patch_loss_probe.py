"""``scripts/patch_loss_probe.py``: its per-class batch Dice is nnU-Net's soft Dice (cross-checked against nnU-Net's
own ``MemoryEfficientSoftDiceLoss``), and an absent class scores 1 only without any probability mass."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import patch_loss_probe as probe  # noqa: E402


def test_dice_matches_nnunets_soft_dice():
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 3, 8, 8)).astype(np.float32)
    target = rng.integers(0, 3, size=(2, 3, 8, 8))  # class 3 absent
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    dice, present = probe.dice_present_absent(probs, target, 4)
    assert present.tolist() == [True, True, True, False]
    ref = MemoryEfficientSoftDiceLoss(apply_nonlin=None, batch_dice=True, do_bg=True, smooth=probe.SMOOTH,
                                      ddp=False)
    nnunet = -float(ref(torch.from_numpy(probs), torch.from_numpy(target[:, None])))
    assert dice.mean() == pytest.approx(nnunet, rel=1e-5)


def test_absent_class_dice_is_one_only_without_probability_mass():
    target = np.zeros((1, 2, 4, 4), int)
    target[0, 0, :2, :2] = 1
    probs = np.zeros((1, 3, 2, 4, 4))
    probs[:, 0] = target == 0
    probs[:, 1] = target == 1
    dice, present = probe.dice_present_absent(probs, target, 3)
    assert dice[2] == pytest.approx(1.0) and not present[2] and dice[1] == pytest.approx(1.0)
    probs[:, 2] = 0.001  # a thousandth everywhere: 0.032 voxels' worth of probability
    probs[:, 0] -= 0.001 * (target == 0)
    probs[:, 1] -= 0.001 * (target == 1)
    dice, _ = probe.dice_present_absent(probs, target, 3)
    assert dice[2] < 1e-3
    when_present, when_absent = probe.summarise(np.array([[0.5, 0.2, 1.0], [0.7, 0.4, 0.0]]),
                                                np.array([[True, True, False], [True, False, True]]))
    assert when_present == pytest.approx([0.6, 0.2, 0.0]) and np.isnan(when_absent[0])
    assert when_absent[1:] == pytest.approx([0.4, 1.0])


def test_missing_checkpoint_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        probe.main(["-w", str(tmp_path), str(tmp_path / "nope.pth")])
    assert "nope.pth: no such checkpoint" in capsys.readouterr().err
