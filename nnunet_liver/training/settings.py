"""The settings a model was trained with, written beside its checkpoint and read back from its folder.

nnU-Net records the trainer's name and its init arguments (plans, configuration, fold, dataset.json) in each
checkpoint; what a trainer variant sets as class constants (epochs, loss weights, sampling rates) follows from the
name only while the code does not change. Our trainers therefore also write every such setting, with the weights
the training started from, into ``fold_X/training_settings.json`` when training starts
(``LiverWholeTrainer.on_train_start``); a resumed training (``nnUNetv2_train --c``) adds the epoch it resumed at.
:func:`read_training_settings` reads it back from a model folder (an nnU-Net results folder or a bundled one).
"""
from __future__ import annotations

import json
import os
from typing import Optional

__all__ = ["SETTINGS_FILE", "settings_path", "settings_beside", "read_training_settings", "write_training_settings"]

SETTINGS_FILE = "training_settings.json"


def settings_path(model_folder: str, fold: int = 0) -> str:
    """``MODEL/fold_FOLD/training_settings.json``."""
    return os.path.join(str(model_folder), f"fold_{fold}", SETTINGS_FILE)


def read_training_settings(model_folder: str, fold: int = 0) -> dict:
    """The settings recorded for ``fold`` of a model folder; FileNotFoundError naming the file when there are none."""
    path = settings_path(model_folder, fold)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no training settings recorded (trained by a trainer that does not record "
                                "them, or exported without them)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def settings_beside(checkpoint: str) -> Optional[dict]:
    """The settings recorded beside an nnU-Net checkpoint file, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_training_settings(fold_folder: str, settings: dict, resumed_at_epoch: Optional[int] = None) -> str:
    """Write ``settings`` to ``fold_folder/training_settings.json``. ``resumed_at_epoch``: a resumed training; the
    file written when the training started is kept and the epoch appended to its ``resumed_at_epochs``."""
    from nnunet_liver.utils.io import write_json_atomic

    path = os.path.join(fold_folder, SETTINGS_FILE)
    if resumed_at_epoch is not None and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
        settings["resumed_at_epochs"] = settings.get("resumed_at_epochs", []) + [int(resumed_at_epoch)]
    write_json_atomic(settings, path)
    return path
