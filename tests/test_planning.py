"""``nnunet-liver-plan``: the CT window written into nnU-Net's plans, checked against nnU-Net's own CTNormalization
and on the preprocessed data of the suite's tiny model (planned with the command for real)."""
from __future__ import annotations

import copy
import json
import subprocess

import numpy as np
import pytest

from nnunet_liver.planning import DEFAULT_CT_WINDOW, apply_ct_window, ct_window_of, main


def _plans(num_channels=4):
    props = {str(c): {"max": 300.0, "mean": 20.0 + c, "median": 40.0, "min": -1000.0, "percentile_00_5": -750.0,
                      "percentile_99_5": 150.0, "std": 100.0 + c} for c in range(num_channels)}
    return {"dataset_name": "Dataset999_X", "foreground_intensity_properties_per_channel": props,
            "configurations": {
                "3d_fullres": {"normalization_schemes": ["ZScoreNormalization"] * num_channels,
                               "use_mask_for_norm": [True] * num_channels, "patch_size": [16, 64, 64]},
                "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}}


def test_apply_ct_window_edits_a_copy():
    plans = _plans()
    before = copy.deepcopy(plans)
    out = apply_ct_window(plans, (-100, 300))
    assert plans == before  # input untouched
    cfg = out["configurations"]["3d_fullres"]
    assert cfg["normalization_schemes"] == ["CTNormalization"] * 4 and cfg["use_mask_for_norm"] == [False] * 4
    assert "normalization_schemes" not in out["configurations"]["3d_cascade_fullres"]  # inherits, stays so
    for p in out["foreground_intensity_properties_per_channel"].values():
        assert (p["percentile_00_5"], p["percentile_99_5"], p["mean"], p["std"]) == (-100, 300, 100, 100)
    assert ct_window_of(out) == (-100.0, 300.0)
    assert ct_window_of(before) is None
    assert apply_ct_window(out, (-100, 300)) == out  # idempotent


@pytest.mark.parametrize("window", [(10, 10), (250, -150)])
def test_apply_ct_window_rejects_empty_window(window):
    with pytest.raises(ValueError):
        apply_ct_window(_plans(), window)


def test_window_matches_nnunets_ct_normalization():
    """nnU-Net's own CTNormalization with the edited properties maps the window onto [-2, 2] and a missing phase
    (constant -1024 HU) onto the constant -2."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    lo, hi = DEFAULT_CT_WINDOW
    props = apply_ct_window(_plans(1))["foreground_intensity_properties_per_channel"]["0"]
    norm = CTNormalization(use_mask_for_norm=False, intensityproperties=props)
    hu = np.array([-1024.0, lo, (lo + hi) / 2, hi, 1500.0, 0.0, 60.0], dtype=np.float32)
    out = norm.run(hu.copy().reshape(1, 1, -1)).ravel()
    expected = (np.clip(hu, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 4)  # brute force
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(out[:5], [-2, -2, 0, 2, 2], atol=1e-6)
    missing = norm.run(np.full((1, 4, 4), -1024.0, np.float32))
    assert np.all(missing == missing.flat[0])


def test_cli_bad_window(capsys):
    assert main(["-d", "601", "--window", "250", "-150"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-liver-plan: error:") and "--window" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_unknown_dataset_fails_with_one_line(nnunet_dirs):
    env = {**nnunet_dirs.env, "nnUNet_n_proc_DA": "1"}
    proc = subprocess.run(["nnunet-liver-plan", "-d", "987"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("nnunet-liver-plan: error: dataset 987")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_tiny_model_was_planned_with_the_window(tiny_whole_model, nnunet_dirs):
    """The suite's tiny model went through ``nnunet-liver-plan``: its plans carry the window and nnU-Net's
    preprocessed arrays lie in [-2, 2], with the missing delayed phases constant."""
    import blosc2

    pre = nnunet_dirs.preprocessed / tiny_whole_model.model_folder.parent.name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert ct_window_of(plans) == DEFAULT_CT_WINDOW
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["CTNormalization"] * 4
    saved = json.loads((tiny_whole_model.model_folder / "plans.json").read_text())
    assert ct_window_of(saved) == DEFAULT_CT_WINDOW  # what the predictor will apply
    files = sorted((pre / "nnUNetPlans_3d_fullres").glob("*.b2nd"))
    images = [f for f in files if not f.name.endswith("_seg.b2nd")]
    assert images
    constant = 0
    for f in images:
        a = blosc2.open(str(f))[:]
        assert a.min() >= -2.0 - 1e-5 and a.max() <= 2.0 + 1e-5
        constant += int(np.ptp(a[3]) == 0)
    assert constant >= 1  # every fourth phantom has no delayed phase
