#!/usr/bin/env python
"""Why a UNet-patch run can collapse: nnU-Net's loss on the same training batches for several checkpoints.

For each checkpoint, on the same ``--batches`` training batches of a UNet-patch dataset (the trainer's own loader,
hard cases included when the dataset has them and ``--hard-case-rate`` > 0), it prints nnU-Net's training loss
(Dice + CE with deep supervision, as the trainer builds it), the plain cross-entropy at full resolution, and the
soft Dice of each class (batch Dice, nnU-Net's smooth of 1e-5) split by whether the class is present in the batch::

    python scripts/patch_loss_probe.py -w /work/demo_build8 A.pth B.pth

In nnU-Net's batch Dice a class absent from the batch scores about 1 only when the network gives it (almost) zero
probability everywhere, and about 0 as soon as a few voxels' worth of probability spill into it. A network that
never predicts a lesion therefore collects Dice 1 on every absent lesion class; with two patches per batch and six
lesion types, four or more are absent in every batch, so that network can have a *lower* loss than one that finds
the lesions (the demo models' HISTORY.md, "Why UNet-patch collapses").
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

SMOOTH = 1e-5  # nnU-Net's default for its soft Dice


def dice_present_absent(probabilities: np.ndarray, target: np.ndarray, num_classes: int):
    """Soft batch Dice per class, and whether each class is present in ``target``.

    probabilities : (B, C, ...) softmax; target : (B, ...) int labels. Returns ``(dice (C,), present (C,) bool)``.
    """
    onehot = np.stack([target == c for c in range(num_classes)], axis=1).astype(np.float64)
    p = probabilities.astype(np.float64)
    axes = (0,) + tuple(range(2, p.ndim))
    inter, sum_p, sum_gt = (p * onehot).sum(axes), p.sum(axes), onehot.sum(axes)
    return (2 * inter + SMOOTH) / np.clip(sum_p + sum_gt + SMOOTH, 1e-8, None), sum_gt > 0


def summarise(dices: np.ndarray, present: np.ndarray):
    """Mean Dice per class over the batches where it is present and over those where it is absent (nan: never)."""
    def mean(mask, c):
        return float(dices[mask[:, c], c].mean()) if mask[:, c].any() else float("nan")
    return ([mean(present, c) for c in range(dices.shape[1])], [mean(~present, c) for c in range(dices.shape[1])])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-w", "--work", required=True, type=Path, help="work folder of scripts/train_demo_models.py")
    p.add_argument("checkpoints", nargs="+", type=Path, help="UNet-patch checkpoints (.pth) to compare")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--hard-case-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for c in args.checkpoints:
        if not c.is_file():
            p.error(f"{c}: no such checkpoint")
    os.environ.update(nnUNet_n_proc_DA="0", nnUNet_preprocessed=str(args.work / "nnUNet_preprocessed"),
                      nnUNet_results=str(args.work / "probe_results"))
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_demo_models import PATCH_NAME, PATCH_TRAINER
    from nnunet_liver.trainers import liver_demo_trainers

    pre = args.work / "nnUNet_preprocessed" / PATCH_NAME
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = getattr(liver_demo_trainers, PATCH_TRAINER)(plans, "3d_fullres", 0, load_json(str(pre / "dataset.json")),
                                                          torch.device("cpu"))
    trainer.hard_case_rate = args.hard_case_rate
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    batches = [next(loader) for _ in range(args.batches)]
    n = trainer.label_manager.num_segmentation_heads
    for ckpt in args.checkpoints:
        trainer.network.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["network_weights"])
        trainer.network.eval()
        losses, ces, dices, present = [], [], [], []
        with torch.no_grad():
            for b in batches:
                out = trainer.network(b["data"])
                y = b["target"][0] if isinstance(b["target"], list) else b["target"]
                o = out[0] if isinstance(out, (list, tuple)) else out
                losses.append(float(trainer.loss(out, b["target"])))
                ces.append(float(torch.nn.functional.cross_entropy(o, y[:, 0].long())))
                d, pr = dice_present_absent(torch.softmax(o, 1).numpy(), y[:, 0].numpy(), n)
                dices.append(d)
                present.append(pr)
        when_present, when_absent = summarise(np.array(dices), np.array(present))
        print(f"{ckpt}\n  nnU-Net loss {np.mean(losses):.3f}   CE {np.mean(ces):.3f}")
        print("  Dice where present, classes 1..%d: %s" % (n - 1, np.round(when_present[1:], 2)))
        print("  Dice where absent,  classes 1..%d: %s" % (n - 1, np.round(when_absent[1:], 2)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
