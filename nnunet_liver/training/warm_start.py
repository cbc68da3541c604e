"""Warm starts: nnU-Net's training of one fold, started from every weight of a checkpoint, heads included.

``nnUNetv2_train ... -pretrained_weights CKPT`` copies every weight but the segmentation heads (``.seg_layers.``),
which it re-initialises; a short CPU training then spends tens of epochs finding its classes again. This command
is nnU-Net's single-process training (``get_trainer_from_args``, ``run_training``, ``perform_actual_validation``)
with one change, the start::

    python -m nnunet_liver.training.warm_start DATASET CONFIGURATION FOLD -tr TRAINER -init CKPT [-device cpu]

copies every weight of ``CKPT``, the heads included (:func:`load_weights_with_heads`; ``--no-heads`` re-initialises
them as ``-pretrained_weights`` does). A UNet-patch (labels 0..7) can start from a UNet-whole, whose classes 0..7
are the patch scheme's. The trainer records the start (checkpoint, heads, and the settings recorded beside that
checkpoint) in its ``training_settings.json`` (:mod:`nnunet_liver.training.settings`). Torch's thread count is left
to the environment (``OMP_NUM_THREADS``), where ``nnUNetv2_train -device cpu`` takes every core.

Errors end as every command's do (:func:`nnunet_liver.utils.io.run_cli`): a missing checkpoint, an unknown dataset,
configuration or trainer, or a checkpoint of another network is bad input (exit 2); a failure while training is a
failed step (exit 1).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from torch import nn

from nnunet_liver.labels import LIVER, PATCH_LABELS, PATCH_LIVER, PATCH_MASKED
from nnunet_liver.utils.io import InputError, run_cli

__all__ = ["load_weights_with_heads", "warm_start_record", "train_from", "main", "PROG"]

PROG = "python -m nnunet_liver.training.warm_start"

# the patch scheme's ids 0..7 are the whole scheme's first eight classes: 0 (outside the liver, masked / background),
# the six lesion types 1..6 with the same ids, 7 liver; so a whole-CT head's first eight channels are a patch head
assert PATCH_MASKED == 0 and PATCH_LIVER == LIVER and sorted(PATCH_LABELS.values()) == list(range(LIVER + 1))

_SEG_LAYERS = ".seg_layers."


def load_weights_with_heads(network: nn.Module, checkpoint: str) -> int:
    """Start ``network`` from every weight of an nnU-Net ``checkpoint``, the segmentation heads included.

    All of a head's output channels are copied when the schemes agree (UNet-whole from UNet-whole), or the first C
    when the network has C fewer classes than the checkpoint (UNet-patch, labels 0..7, from UNet-whole). Every
    other weight must match by name and shape (ValueError naming the checkpoint otherwise). Returns the number of
    tensors copied.
    """
    import torch
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


def warm_start_record(checkpoint: str, heads: bool, tensors: int) -> dict:
    """What a training started from, for its ``training_settings.json``: the checkpoint, whether the heads were
    copied, how many tensors, and the settings recorded beside the checkpoint (None when it has none)."""
    from nnunet_liver.training.settings import settings_beside

    return {"checkpoint": os.path.abspath(checkpoint), "heads": bool(heads), "tensors": int(tensors),
            "settings": settings_beside(checkpoint)}


def train_from(dataset: str, configuration: str, fold, trainer_name: str, checkpoint: str, plans: str = "nnUNetPlans",
               device: str = "cuda", heads: bool = True, npz: bool = False, validate: bool = True):
    """nnU-Net's single-process training of one fold, started from ``checkpoint`` (module docstring).

    Raises
    ------
    InputError
        a missing checkpoint, a fold that is not a number or "all", an unknown dataset, plans or trainer, a trainer
        that is not ours, or a checkpoint of another network.
    """
    import torch
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args

    if not os.path.isfile(checkpoint):
        raise InputError(f"{checkpoint}: no such checkpoint")
    if fold != "all" and not str(fold).isdigit():
        raise InputError(f"fold {fold!r}: a fold number or 'all'")
    fold = fold if fold == "all" else int(fold)
    try:
        trainer = get_trainer_from_args(str(dataset), configuration, fold, trainer_name, plans, False,
                                        device=torch.device(device))
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # nnU-Net's lookups of the dataset, plans, trainer
        raise InputError(f"dataset {dataset}, configuration {configuration}, trainer {trainer_name}: "
                         f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    if not hasattr(trainer, "initial_weights"):
        raise InputError(f"{trainer_name}: not an nnunet_liver trainer, it cannot record the warm start")
    trainer.initialize()
    try:
        if heads:
            n = load_weights_with_heads(trainer.network, checkpoint)
        else:
            load_pretrained_weights(trainer.network, checkpoint, verbose=False)
            n = sum(1 for k in trainer.network.state_dict() if _SEG_LAYERS not in k)
    except ValueError as e:
        raise InputError(str(e)) from None
    trainer.initial_weights = warm_start_record(checkpoint, heads, n)
    trainer.print_to_log_file(f"started from {n} weight tensors of {checkpoint} (segmentation heads "
                              f"{'copied' if heads else 're-initialised'})")
    trainer.run_training()
    if validate:
        trainer.perform_actual_validation(npz)
    return trainer


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG,
                                description="nnUNetv2_train of one fold started from every weight of a checkpoint, "
                                            "segmentation heads included")
    p.add_argument("dataset_name_or_id")
    p.add_argument("configuration")
    p.add_argument("fold")
    p.add_argument("-tr", required=True, help="trainer class (found through nnUNet_extTrainer)")
    p.add_argument("-init", required=True, metavar="CKPT", help="nnU-Net checkpoint to start from")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    p.add_argument("-device", default="cuda", choices=("cpu", "cuda", "mps"))
    p.add_argument("--no-heads", action="store_true", help="re-initialise the segmentation heads "
                                                           "(what nnUNetv2_train -pretrained_weights does)")
    p.add_argument("--npz", action="store_true", help="nnUNetv2_train's --npz for the final validation")
    p.add_argument("--no-validation", action="store_true", help="skip nnU-Net's final validation of the fold")
    args = p.parse_args(argv)

    def work() -> None:
        train_from(args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.init, args.p, args.device,
                   heads=not args.no_heads, npz=args.npz, validate=not args.no_validation)

    return run_cli(p.prog, work)


if __name__ == "__main__":
    raise SystemExit(main())
