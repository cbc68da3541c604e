"""``scripts/train_demo_models.py`` refuses bad options before it creates a work folder or starts nnU-Net."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_demo_models  # noqa: E402


def test_unknown_trainer_variant_is_refused_in_one_line(tmp_path, capsys):
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as exc:
        train_demo_models.main(["-w", str(work), "--stages", "export", "--whole-trainer", "LiverIFMTrainer_demo_7"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--whole-trainer: invalid choice: 'LiverIFMTrainer_demo_7'" in err
    assert not work.exists()


def test_trainer_choices_are_the_demo_variants():
    from nnunet_liver.trainers import liver_demo_trainers

    names = train_demo_models.WHOLE_TRAINERS + train_demo_models.PATCH_TRAINERS
    assert sorted(names) == sorted(n for n in liver_demo_trainers.__all__ if "Trainer_demo" in n)
    assert train_demo_models.WHOLE_TRAINER in names and train_demo_models.PATCH_TRAINER in names


def test_training_commands_carry_the_variant_and_the_start_and_set_no_variable(tmp_path, monkeypatch):
    """The trainer variant and the warm start are command-line inputs (nnU-Net's -tr, the warm-start command's
    -init); the environment the script passes holds nnU-Net's folders and threads only."""
    calls = []
    monkeypatch.setattr(train_demo_models, "run", lambda cmd, env, log: calls.append(([str(c) for c in cmd], env))
                        or 0.0)
    work = tmp_path / "work"
    ckpt = tmp_path / "start.pth"
    ckpt.write_bytes(b"x")
    train_demo_models.main(["-w", str(work), "--stages", "train-whole", "train-patch", "--warm-start", str(ckpt),
                            "--whole-trainer", "LiverIFMTrainer_demoUnweighted_400epochs",
                            "--patch-trainer", "LesionShufflePatchTrainer_demo_220epochs"])
    (whole, env), (patch, _) = calls
    assert whole[1:3] == ["-m", "nnunet_liver.training.warm_start"] and whole[whole.index("-init") + 1] == str(ckpt)
    assert whole[whole.index("-tr") + 1] == "LiverIFMTrainer_demoUnweighted_400epochs"
    start = str(train_demo_models.final_checkpoint(train_demo_models.model_folder(
        work.resolve(), train_demo_models.WHOLE_NAME, "LiverIFMTrainer_demoUnweighted_400epochs")))
    assert patch[patch.index("-init") + 1] == start  # UNet-patch starts from this run's UNet-whole
    assert patch[patch.index("-tr") + 1] == "LesionShufflePatchTrainer_demo_220epochs"
    assert not [k for k in env if k.startswith("nnUNet_liver")]
    calls.clear()
    train_demo_models.main(["-w", str(work), "--stages", "train-whole", "train-patch", "--continue-training"])
    assert [c[0][0] for c in calls] == ["nnUNetv2_train"] * 2 and all(c[0][-1] == "--c" for c in calls)


def test_patch_init_checkpoint_file_is_used_as_is_and_a_missing_one_named(tmp_path):
    ckpt = tmp_path / "patch.pth"
    ckpt.write_bytes(b"x")
    assert train_demo_models.warm_start(ckpt) == ckpt.resolve()
    with pytest.raises(SystemExit, match="no such warm-start checkpoint"):
        train_demo_models.warm_start(tmp_path / "missing.pth")
    with pytest.raises(SystemExit, match=r"whole/fold_0/checkpoint_final\.pth: no such warm-start checkpoint"):
        train_demo_models.warm_start(tmp_path)


def test_hard_cases_stage_is_opt_in_and_feeds_the_patch_conversion(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_demo_models, "run", lambda cmd, env, log: calls.append([str(c) for c in cmd]) or 0.0)
    monkeypatch.setattr(train_demo_models, "plan", lambda work, env, dataset_id: calls.append(["plan", dataset_id]))
    work = tmp_path / "work"
    train_demo_models.main(["-w", str(work), "--stages", "patches"])
    assert "--hard-cases" not in calls[0] and calls[1:] == [["plan", train_demo_models.PATCH_ID]]
    assert "hard-cases" in train_demo_models.STAGES and "hard-cases" not in train_demo_models.DEFAULT_STAGES
    calls.clear()
    (work / "hard_cases").mkdir()
    train_demo_models.main(["-w", str(work), "--stages", "patches", "hard-cases", "--models", str(tmp_path / "m")])
    detect, convert = calls[0], calls[1]  # stages run in pipeline order, whatever the order given
    assert detect[0] == "nnunet-liver-detect" and detect[detect.index("-m") + 1] == str(tmp_path / "m" / "whole")
    assert detect[detect.index("--factors") + 1] == "4" and detect[detect.index("--patch-model") + 1] == "none"
    assert convert[convert.index("--hard-cases") + 1] == str(work.resolve() / "hard_cases")
    # after planning, the hard cases are put on the preprocessed grid once, where the trainer reads them
    assert calls[2] == ["plan", train_demo_models.PATCH_ID]
    assert calls[3][1:] == ["-m", "nnunet_liver.training.hard_cases", "-d", str(train_demo_models.PATCH_ID)]
