"""nnU-Net's own planner accepts a phantom dataset (verify_dataset_integrity)."""
import json
import os
import subprocess

import pytest

from nnunet_liver.phantom import write_phantom_dataset


def nnunet_env(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", nnUNet_compile="f")
    env.pop("nnUNet_n_proc_DA", None)  # 0 would make the planner call torch.set_num_threads(0)
    for key, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        (tmp_path / sub).mkdir()
        env[key] = str(tmp_path / sub)
    return env


def run_planner(env, dataset_id):
    proc = subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres",
                           "--verify_dataset_integrity", "-np", "1"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])


@pytest.mark.slow
def test_plan_and_preprocess_accepts_phantom_dataset(tmp_path):
    env = nnunet_env(tmp_path)
    write_phantom_dataset(tmp_path / "raw" / "Dataset711_LiverPhantom", 3, seed=0, shape=(16, 64, 64),
                          spacing=(5.0, 3.0, 3.0), missing_delayed=0.5, misalign_mm=3.0, progress=False)
    run_planner(env, "711")
    preprocessed = tmp_path / "preprocessed" / "Dataset711_LiverPhantom"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["spacing"] == [5.0, 3.0, 3.0]
    fingerprint = json.loads((preprocessed / "dataset_fingerprint.json").read_text(encoding="utf-8"))
    assert len(fingerprint["foreground_intensity_properties_per_channel"]) == 4
