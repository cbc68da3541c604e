"""A model's training settings are read back from its folder: the bundled demo models and a model trained here,
warm starts included (``python -m nnunet_liver.training.warm_start``)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from nnunet_liver.inference.model import DEMO_MODELS_DIR
from nnunet_liver.training.settings import read_training_settings, settings_path, write_training_settings
from nnunet_liver.training.warm_start import main as warm_start_main

needs_models = pytest.mark.skipif(not os.path.isdir(os.path.join(DEMO_MODELS_DIR, "whole")),
                                  reason="bundled demo models not present")


@needs_models
@pytest.mark.parametrize("which, trainer, epochs, lesion_ce", [("whole", "LiverIFMTrainer_demo", 400, 1.0),
                                                               ("patch", "LesionShufflePatchTrainer_demo", 220, 2.0)])
def test_bundled_models_settings_read_back(which, trainer, epochs, lesion_ce):
    """The bundled models' settings: the trainer their checkpoint names, the epochs their checkpoint reached, the
    network their weights fit, and the chain of runs that made them."""
    folder = os.path.join(DEMO_MODELS_DIR, which)
    s = read_training_settings(folder)
    ckpt = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert s["trainer"] == ckpt["trainer_name"] == trainer
    assert s["num_epochs"] == ckpt["current_epoch"] == epochs and s["lesion_ce_weight"] == lesion_ce
    assert s["configuration"] == ckpt["init_args"]["configuration"] and s["fold"] == ckpt["init_args"]["fold"]
    heads = [v for k, v in ckpt["network_weights"].items() if ".seg_layers." in k and k.endswith("weight")]
    assert s["features_per_stage"][0] == min(h.shape[1] for h in heads)  # the full-resolution head's input
    assert s["initial_weights"]["heads"] is True and s["runs"][-1]["num_epochs"] == epochs


def test_missing_settings_are_named_and_a_resumed_training_keeps_its_start(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fold_0/training_settings\.json: no training settings"):
        read_training_settings(tmp_path)
    fold = tmp_path / "fold_0"
    fold.mkdir()
    write_training_settings(str(fold), {"num_epochs": 10, "initial_weights": {"checkpoint": "a.pth"}})
    write_training_settings(str(fold), {"num_epochs": 10, "initial_weights": None}, resumed_at_epoch=4)
    write_training_settings(str(fold), {"num_epochs": 10, "initial_weights": None}, resumed_at_epoch=8)
    assert read_training_settings(tmp_path) == {"num_epochs": 10, "initial_weights": {"checkpoint": "a.pth"},
                                                "resumed_at_epochs": [4, 8]}
    assert settings_path(tmp_path, 3) == str(tmp_path / "fold_3" / "training_settings.json")


def test_warm_start_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    missing = tmp_path / "none.pth"
    assert warm_start_main(["601", "3d_fullres", "0", "-tr", "LiverIFMTrainer_demo", "-init", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{missing}: no such checkpoint" in err


def test_warm_start_exits_as_every_command(tmp_path, capsys, monkeypatch):
    """run_cli's codes: an unknown trainer or a bad fold is bad input (2, one line); a failure while training is a
    failed step (1)."""
    from nnunet_liver.training import warm_start

    ckpt = tmp_path / "a.pth"
    ckpt.write_bytes(b"")
    args = ["601", "3d_fullres", "0", "-tr", "NoSuchTrainer", "-init", str(ckpt), "-device", "cpu"]
    assert warm_start_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{warm_start.PROG}: error: ") and "NoSuchTrainer" in err[0]
    assert warm_start_main(["601", "3d_fullres", "x"] + args[3:]) == 2
    assert "fold 'x'" in capsys.readouterr().err

    def fails(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(warm_start, "train_from", fails)
    assert warm_start_main(args) == 1
    assert capsys.readouterr().err.strip() == f"{warm_start.PROG}: error: CUDA error: an illegal memory access was " \
                                              f"encountered"


@pytest.mark.slow
def test_trained_model_settings_and_a_warm_start_read_back(tiny_whole_model, tmp_path):
    """nnUNetv2_train of a tiny trainer wrote its settings beside its checkpoint; a warm start of the same trainer
    from that checkpoint (into another results folder) records the checkpoint, the heads and the settings it had."""
    s = read_training_settings(tiny_whole_model.model_folder)
    assert s["trainer"] == "LiverIFMTrainer_tiny" and s["num_epochs"] == 2 and s["initial_weights"] is None
    assert s["phases"] == ["NC", "A", "V", "D"] and s["patch_size"] and s["class_balanced"] is False
    ckpt = tiny_whole_model.model_folder / "fold_0" / "checkpoint_final.pth"
    results = tmp_path / "results"
    env = {**tiny_whole_model.env, "nnUNet_results": str(results), "nnUNet_n_proc_DA": "0"}
    cmd = [sys.executable, "-m", "nnunet_liver.training.warm_start", str(tiny_whole_model.dataset_id), "3d_fullres",
           "0", "-tr", "LiverIFMTrainer_tiny", "-init", str(ckpt), "-device", "cpu", "--no-validation"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = next(results.glob("*/LiverIFMTrainer_tiny__nnUNetPlans__3d_fullres"))
    warm = read_training_settings(folder)
    assert warm["initial_weights"]["checkpoint"] == str(ckpt) and warm["initial_weights"]["heads"] is True
    assert warm["initial_weights"]["settings"] == s
    assert warm["initial_weights"]["tensors"] == len(torch.load(ckpt, map_location="cpu",
                                                                weights_only=False)["network_weights"])
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    assert json.loads((folder / "fold_0" / "training_settings.json").read_text()) == warm


def test_no_trainer_reads_the_environment():
    """What a trainer trains is its class and nnU-Net's command line: no trainer module (nor the training helpers)
    reads an environment variable of its own (nnU-Net's folders are read by nnU-Net)."""
    from pathlib import Path

    import nnunet_liver

    files = sorted(Path(nnunet_liver.TRAINERS_DIR).glob("*.py"))
    files += sorted((Path(nnunet_liver.__file__).parent / "training").glob("*.py"))
    assert len(files) >= 10
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert "os.environ" not in text and "getenv" not in text, f
