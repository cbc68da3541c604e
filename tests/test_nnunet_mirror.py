"""Model loading against nnU-Net's own initialiser, old model folders, and UNet-patch's fold ensemble.

``load_model`` must give what ``nnUNetPredictor.initialize_from_trained_model_folder`` gives on the same folder (plans,
configuration, network, weights, mirroring axes), with ``nnUNet_extTrainer`` set for nnU-Net's trainer finder as for
training. A folder trained before the trainers recorded their configuration in the plans (the planned patch size in
plans.json) loads with the trained one, and ``record_trained_configuration`` makes nnU-Net itself read it.
"""
import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import nnunet_liver
from nnunet_liver.inference.model import DEMO_MODELS_DIR, load_model, record_trained_configuration
from nnunet_liver.labels import dataset_json_labels, patch_dataset_json_labels
from nnunet_liver.testing.rule_model import IntensityRuleNetwork, write_rule_model

PATCH_CENTERS = [-500.0, 0.0, 40.0, 80.0, 120.0, 160.0, 200.0, 60.0]


def _nnunet_initialised(model_dir, folds, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    monkeypatch.setenv("nnUNet_extTrainer", nnunet_liver.TRAINERS_DIR)
    with contextlib.redirect_stdout(io.StringIO()):  # the finder prints the modules it inspects
        predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), folds, "checkpoint_final.pth")
    return predictor


@pytest.fixture(scope="module")
def rule_whole(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rule") / "whole"
    return write_rule_model(str(folder), dataset_json_labels(), list(range(14)), [40.0] * 14, folds=(0, 1),
                            transpose_forward=(1, 0, 2))


@pytest.mark.parametrize("which", ["whole", "patch", "rule"])
def test_load_model_is_nnunets_initialiser(which, rule_whole, monkeypatch):
    model_dir = rule_whole if which == "rule" else os.path.join(DEMO_MODELS_DIR, which)
    folds = (0, 1) if which == "rule" else (0,)
    ours = load_model(model_dir, folds, which=which if which != "rule" else "whole")
    theirs = _nnunet_initialised(model_dir, folds, monkeypatch)
    assert ours.configuration_recorded
    assert ours.plans_manager.plans == theirs.plans_manager.plans
    assert ours.configuration_manager.configuration == theirs.configuration_manager.configuration
    assert ours.dataset_json == theirs.dataset_json
    assert ours.trainer_name == theirs.trainer_name
    assert ours.allowed_mirroring_axes == theirs.allowed_mirroring_axes
    assert len(ours.parameters) == len(theirs.list_of_parameters) == len(folds)
    for a, b in zip(ours.parameters, theirs.list_of_parameters):
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    # the same network (nnU-Net imports our trainer module under another name: compare by class name and output)
    assert type(ours.network).__name__ == type(theirs.network).__name__
    sa, sb = ours.network.state_dict(), theirs.network.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(1, 4, *ours.configuration_manager.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs.network.eval()
        torch.testing.assert_close(ours.network(x), theirs.network(x), rtol=0, atol=0)


@pytest.mark.parametrize("which,trained", [("whole", [16, 48, 48]), ("patch", [16, 64, 64])])
def test_bundled_folders_describe_the_trained_network(which, trained, monkeypatch):
    """nnU-Net's own initialiser reads the patch size, network and batch size the bundled models were trained with
    (fold_0/training_settings.json records them)."""
    folder = os.path.join(DEMO_MODELS_DIR, which)
    with open(os.path.join(folder, "fold_0", "training_settings.json"), encoding="utf-8") as f:
        settings = json.load(f)
    assert settings["patch_size"] == trained
    cm = _nnunet_initialised(folder, (0,), monkeypatch).configuration_manager
    assert list(cm.patch_size) == trained
    assert cm.network_arch_init_kwargs["features_per_stage"] == settings["features_per_stage"]
    assert cm.batch_size == settings["batch_size"]


def _old_style_copy(tmp_path):
    """A copy of the bundled UNet-whole as trained before the trainers recorded their configuration: plans.json
    with the planned patch and batch size (24 x 96 x 96, 6), the checkpoint unchanged."""
    folder = tmp_path / "old"
    shutil.copytree(os.path.join(DEMO_MODELS_DIR, "whole"), folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"].update(patch_size=[24, 96, 96], batch_size=6)
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    return folder


def test_an_old_folder_loads_with_its_trained_configuration_and_can_be_recorded(tmp_path, monkeypatch):
    folder = _old_style_copy(tmp_path)
    checkpoint = (folder / "fold_0" / "checkpoint_final.pth").read_bytes()
    assert list(_nnunet_initialised(folder, (0,), monkeypatch).configuration_manager.patch_size) == [24, 96, 96]
    old = load_model(str(folder))
    assert not old.configuration_recorded
    assert list(old.configuration_manager.patch_size) == [16, 48, 48] and old.configuration_manager.batch_size == 4
    assert record_trained_configuration(str(folder))  # plans.json rewritten: nnU-Net itself now reads 16 x 48 x 48
    assert (folder / "fold_0" / "checkpoint_final.pth").read_bytes() == checkpoint
    theirs = _nnunet_initialised(folder, (0,), monkeypatch)
    assert theirs.configuration_manager.configuration == old.configuration_manager.configuration
    new = load_model(str(folder))
    assert new.configuration_recorded
    assert new.configuration_manager.configuration == old.configuration_manager.configuration
    for a, b in zip(new.network.state_dict().values(), old.network.state_dict().values()):
        assert torch.equal(a, b)
    assert not record_trained_configuration(str(folder))  # nothing left to record
    bundled = json.loads(Path(DEMO_MODELS_DIR, "whole", "plans.json").read_text(encoding="utf-8"))
    assert json.loads((folder / "plans.json").read_text()) == bundled


def test_the_ct_window_comes_from_the_plans(tmp_path):
    from nnunet_liver.labels import CT_WINDOW_HU
    from nnunet_liver.planning import apply_ct_window

    assert load_model("demo").ct_window == CT_WINDOW_HU  # planned with nnunet-liver-plan's default window
    folder = tmp_path / "w"
    shutil.copytree(os.path.join(DEMO_MODELS_DIR, "whole"), folder)
    plans = json.loads((folder / "plans.json").read_text())
    (folder / "plans.json").write_text(json.dumps(apply_ct_window(plans, (-100.0, 200.0))))
    assert load_model(str(folder)).ct_window == (-100.0, 200.0)
    plans["foreground_intensity_properties_per_channel"]["0"]["percentile_99_5"] = 3000.0  # nnU-Net's own
    (folder / "plans.json").write_text(json.dumps(plans))
    assert load_model(str(folder)).ct_window == CT_WINDOW_HU


def _two_fold_patch_model(folder):
    """A UNet-patch rule model (8 classes) whose two folds disagree: fold 1 has other centres and widths."""
    write_rule_model(str(folder), patch_dataset_json_labels(), PATCH_CENTERS, [20.0] * 8, folds=(0, 1),
                     patch_size=(4, 8, 8), channel=0)
    other = IntensityRuleNetwork(4, 8, [-500, 10, 50, 90, 130, 170, 210, 60], [20, 5, 60, 20, 20, 20, 20, 40],
                                 channel=0)
    path = folder / "fold_1" / "checkpoint_final.pth"
    ckpt = torch.load(path, weights_only=False)
    ckpt["network_weights"] = other.state_dict()
    torch.save(ckpt, path)
    return str(folder)


def test_unet_patch_averages_the_folds_logits_as_nnunet(tmp_path):
    """``predict_patches``: the argmax of the folds' mean logits (nnU-Net's ensemble and its label manager's
    ``convert_logits_to_segmentation``), which differs from averaging the folds' softmax on this input."""
    from nnunet_liver.inference.patch_model import PatchModel

    pm = PatchModel(_two_fold_patch_model(tmp_path / "p"))
    rng = np.random.default_rng(0)
    patches = rng.uniform(-100, 300, size=(3, 4, 4, 8, 8)).astype(np.float32)
    got = pm.predict_patches(patches)
    x = torch.from_numpy(patches)
    logits = []
    with torch.no_grad():
        for params in pm.model.parameters:
            pm.network.load_state_dict(params)
            logits.append(pm.network(x).float())
    mean = (logits[0] + logits[1]) / 2
    label_manager = pm.model.plans_manager.get_label_manager(pm.model.dataset_json)
    want = np.stack([np.asarray(label_manager.convert_logits_to_segmentation(m.numpy())) for m in mean])
    np.testing.assert_array_equal(got, want)
    softmax_mean = (torch.softmax(logits[0], 1) + torch.softmax(logits[1], 1)).argmax(1).numpy()
    assert (softmax_mean != want).sum() > 10  # the two rules differ here: the test tells them apart
    single = PatchModel(str(tmp_path / "p"), folds=(0,))
    np.testing.assert_array_equal(single.predict_patches(patches), logits[0].argmax(1).numpy())
