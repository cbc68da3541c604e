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
