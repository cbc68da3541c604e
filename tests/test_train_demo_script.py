"""``scripts/train_demo_models.py`` refuses bad options before it creates a work folder or starts nnU-Net."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_demo_models  # noqa: E402


@pytest.mark.parametrize("weights", [["0", "1"], ["1", "-2"]])
def test_non_positive_lesion_ce_is_refused_in_one_line(tmp_path, capsys, weights):
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as exc:
        train_demo_models.main(["-w", str(work), "--stages", "export", "--lesion-ce", *weights])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --lesion-ce: expected two positive weights" in err
    assert not work.exists()


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
    assert "--hard-cases" not in calls[0] and calls[1] == ["plan", train_demo_models.PATCH_ID]
    assert "hard-cases" in train_demo_models.STAGES and "hard-cases" not in train_demo_models.DEFAULT_STAGES
    calls.clear()
    (work / "hard_cases").mkdir()
    train_demo_models.main(["-w", str(work), "--stages", "patches", "hard-cases", "--models", str(tmp_path / "m")])
    detect, convert = calls[0], calls[1]  # stages run in pipeline order, whatever the order given
    assert detect[0] == "nnunet-liver-detect" and detect[detect.index("-m") + 1] == str(tmp_path / "m" / "whole")
    assert detect[detect.index("--factors") + 1] == "4" and detect[detect.index("--patch-model") + 1] == "none"
    assert convert[convert.index("--hard-cases") + 1] == str(work.resolve() / "hard_cases")
