"""Shared session fixtures: temporary nnU-Net folders and tiny models trained for real with nnU-Net's commands.

- ``nnunet_dirs``: tmp ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` and the environment (``env``) to run
  nnU-Net's commands as subprocesses (nnU-Net reads these variables at import time), with our trainers on
  ``nnUNet_extTrainer``, no augmentation workers, no torch.compile, one thread.
- ``train_dataset``: plan and train a dataset a test wrote (the steps below).
- ``tiny_whole_model``: 8 phantom cases (16 x 64 x 64, every fourth one without its delayed phase) ->
  ``nnunet-liver-plan`` (nnU-Net's planning with the CT window) ->
  ``nnUNetv2_train ... -tr LiverIFMTrainer_tiny -device cpu``; returns a :class:`TrainedModel` (model folder,
  dataset id/folder, env).
- ``tiny_patch_model``: ``nnUNetv2_predict`` of the tiny whole model on its own training images (the hard cases'
  source), ``nnunet-liver-convert patches --hard-cases`` of that dataset -> plan -> hard cases onto the
  preprocessed grid (``python -m nnunet_liver.training.hard_cases``) -> train
  ``LesionShufflePatchTrainer_tiny`` (a quarter of its patches around the hard cases); returns a
  :class:`TrainedModel`.

Tests using the model fixtures must be marked ``@pytest.mark.slow``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnunet_liver.utils.io import console_script

WHOLE_ID, WHOLE_NAME = 501, "Dataset501_LiverPhantom"
PATCH_ID, PATCH_NAME = 502, "Dataset502_LiverPatch"
PHANTOM_SHAPE = (16, 64, 64)
NUM_CASES = 8


@dataclass
class NnUNetDirs:
    raw: Path
    preprocessed: Path
    results: Path
    env: dict


@dataclass
class TrainedModel:
    model_folder: Path  # .../DatasetXXX/Trainer__nnUNetPlans__3d_fullres, for initialize_from_trained_model_folder
    dataset_id: int
    raw_dataset: Path
    trainer: str
    env: dict


def run_nnunet(args, env, log: Path) -> None:
    """Run an nnU-Net command; on failure raise with the tail of its output."""
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run([console_script(args[0]), *map(str, args[1:])], env=env, stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8")[-4000:]
        raise RuntimeError(f"{' '.join(map(str, args))} failed with exit code {proc.returncode}:\n{tail}")


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory) -> NnUNetDirs:
    import nnunet_liver

    base = tmp_path_factory.mktemp("nnunet")
    raw, pre, res = base / "raw", base / "preprocessed", base / "results"
    for d in (raw, pre, res):
        d.mkdir()
    env = dict(os.environ)
    env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
               nnUNet_extTrainer=nnunet_liver.TRAINERS_DIR, nnUNet_compile="f", nnUNet_def_n_proc="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return NnUNetDirs(raw, pre, res, env)


def plan_and_train(dirs: NnUNetDirs, dataset_id: int, dataset_name: str, trainer: str,
                   after_planning=()) -> TrainedModel:
    """``nnunet-liver-plan`` (nnU-Net's fingerprint, planning and preprocessing with the CT window in between), the
    commands ``after_planning``, then ``nnUNetv2_train ID 3d_fullres 0 -tr TRAINER -device cpu``."""
    logs = dirs.results.parent
    # planning needs nnUNet_n_proc_DA >= 1 (it sets torch's thread count from it); training runs without workers
    run_nnunet(["nnunet-liver-plan", "-d", dataset_id, "-np", "1", "--verify_dataset_integrity"],
               {**dirs.env, "nnUNet_n_proc_DA": "1"}, logs / f"plan_{dataset_id}.log")
    for i, cmd in enumerate(after_planning):
        run_nnunet(cmd, dirs.env, logs / f"after_planning_{dataset_id}_{i}.log")
    run_nnunet(["nnUNetv2_train", dataset_id, "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
               {**dirs.env, "nnUNet_n_proc_DA": "0"}, logs / f"train_{dataset_id}_{trainer}.log")
    folder = dirs.results / dataset_name / f"{trainer}__nnUNetPlans__3d_fullres"
    if not (folder / "fold_0" / "checkpoint_final.pth").is_file():
        raise RuntimeError(f"{trainer} wrote no checkpoint_final.pth in {folder}")
    return TrainedModel(folder, dataset_id, dirs.raw / dataset_name, trainer, dirs.env)


@pytest.fixture(scope="session")
def train_dataset(nnunet_dirs):
    """``train_dataset(dataset_id, dataset_name, trainer)``: :func:`plan_and_train` on a dataset a test wrote into
    ``nnunet_dirs.raw``."""
    return lambda dataset_id, dataset_name, trainer: plan_and_train(nnunet_dirs, dataset_id, dataset_name, trainer)


@pytest.fixture(scope="session")
def tiny_whole_model(nnunet_dirs) -> TrainedModel:
    from nnunet_liver.phantom import write_phantom_dataset

    write_phantom_dataset(nnunet_dirs.raw / WHOLE_NAME, NUM_CASES, seed=0, shape=PHANTOM_SHAPE,
                          missing_delayed=0.25, progress=False)
    return plan_and_train(nnunet_dirs, WHOLE_ID, WHOLE_NAME, "LiverIFMTrainer_tiny")


@pytest.fixture(scope="session")
def tiny_patch_model(nnunet_dirs, tiny_whole_model) -> TrainedModel:
    from nnunet_liver.dataset_conversion.patches import convert_patch_dataset

    whole_pred = nnunet_dirs.results.parent / "whole_train_predictions"
    run_nnunet(["nnUNetv2_predict", "-i", tiny_whole_model.raw_dataset / "imagesTr", "-o", whole_pred, "-d", WHOLE_ID,
                "-c", "3d_fullres", "-f", "0", "-tr", tiny_whole_model.trainer, "-device", "cpu", "--disable_tta",
                "-npp", "1", "-nps", "1"], {**nnunet_dirs.env, "nnUNet_n_proc_DA": "0"},
               nnunet_dirs.results.parent / "predict_whole_train.log")
    convert_patch_dataset(tiny_whole_model.raw_dataset, nnunet_dirs.raw / PATCH_NAME, progress=False,
                          hard_cases_dir=whole_pred)
    prepare = [sys.executable, "-m", "nnunet_liver.training.hard_cases", "-d", PATCH_ID]
    return plan_and_train(nnunet_dirs, PATCH_ID, PATCH_NAME, "LesionShufflePatchTrainer_tiny", after_planning=[prepare])
