"""nnunet-liver-convert patches: liver crop, masking and patch labels of the UNet-patch dataset."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.patches import add_arguments, convert_patch_dataset, patch_case, run
from nnunet_liver.utils.io import InputError


def painted():
    label = np.zeros((10, 20, 20), np.uint8)
    label[2:6, 5:15, 4:12] = L.LIVER
    label[3:5, 6:8, 6:8] = L.HCC
    label[4, 12:14, 10:12] = L.HEPATIC_VESSELS
    label[7:9, 2:5, 15:19] = L.SPLEEN
    images = [np.full(label.shape, 40.0, np.float32) + i for i in range(2)]
    images.append(np.full(label.shape, L.MISSING_PHASE_VALUE, np.float32))  # missing phase
    return images, label


def test_patch_case_crops_masks_and_relabels():
    images, label = painted()
    out, patch, bbox = patch_case(images, label, spacing=(5.0, 1.0, 1.0), margin_mm=2.0)
    # margin: 2 mm -> 1 slice in z, 2 voxels in y and x, clipped to the image
    assert bbox == ((1, 7), (3, 17), (2, 14))
    assert patch.shape == (6, 14, 12) and all(o.shape == patch.shape for o in out)
    assert set(np.unique(patch)) == {0, L.HCC, L.PATCH_LIVER}  # vessels -> liver, spleen -> masked
    assert (patch == L.HCC).sum() == (label == L.HCC).sum()
    region = patch > 0
    for o, src in zip(out, images):
        assert np.all(o[~region] == L.MISSING_PHASE_VALUE)
        assert np.all(o[region] == src[1:7, 3:17, 2:14][region])
    assert len(np.unique(out[2])) == 1  # a missing phase stays constant
    assert patch_case(images, np.zeros_like(label), (1, 1, 1)) is None


def _write_dataset(root, labels=None):
    import SimpleITK as sitk

    images, label = painted()
    ds = root / "Dataset600_Whole"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for case, lab in (("c0", label), ("c1", np.zeros_like(label))):
        for c, im in enumerate(images):
            o = sitk.GetImageFromArray(im)
            o.SetSpacing((1.0, 1.0, 5.0))
            o.SetOrigin((10.0, 20.0, 30.0))
            sitk.WriteImage(o, str(ds / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
        o = sitk.GetImageFromArray(lab)
        o.SetSpacing((1.0, 1.0, 5.0))
        o.SetOrigin((10.0, 20.0, 30.0))
        sitk.WriteImage(o, str(ds / "labelsTr" / f"{case}.nii.gz"))
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "NC", "1": "A", "2": "V"}, "labels": labels or L.dataset_json_labels(),
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return ds


def test_convert_patch_dataset(tmp_path, capsys):
    import SimpleITK as sitk

    src = _write_dataset(tmp_path)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = run(parser.parse_args(["-i", str(src), "-o", str(tmp_path / "Dataset601_Patch"), "--margin-mm", "2"]))
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == L.patch_dataset_json_labels() and ds["numTraining"] == 1
    assert ds["channel_names"] == {"0": "NC", "1": "A", "2": "V"}
    assert "c1" in capsys.readouterr().out  # the liver-free case is skipped and reported
    lab = sitk.ReadImage(str(out / "labelsTr" / "c0.nii.gz"))
    assert sitk.GetArrayFromImage(lab).shape == (6, 14, 12)
    # physical geometry kept: the crop's origin moved by the bbox start (x 2, y 3, z 1 voxels)
    np.testing.assert_allclose(lab.GetOrigin(), (12.0, 23.0, 35.0))
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"c0_000{c}.nii.gz" for c in range(3)]
    with pytest.raises(InputError, match="already exists"):
        convert_patch_dataset(src, out, progress=False)
    with pytest.raises(InputError, match="DatasetXXX_Name"):
        convert_patch_dataset(src, tmp_path / "patches", progress=False)


def test_convert_rejects_foreign_labels(tmp_path):
    src = _write_dataset(tmp_path, labels={"background": 0, "liver": 1, "tumor": 2})
    with pytest.raises(InputError, match="13-class"):
        convert_patch_dataset(src, tmp_path / "Dataset602_Patch", progress=False)
    assert not (tmp_path / "Dataset602_Patch").exists()


def _check_trained_configuration_recorded(model, which, monkeypatch):
    """nnU-Net's planned patch size (nnUNet_preprocessed's plans) differs from the one the trainer trained with (as
    nnU-Net recorded it in fold_0/debug.json); the model folder's plans.json and the checkpoint hold the trained
    configuration under the configuration's own name, so nnU-Net's own initialiser and ``load_model`` apply the
    network with it."""
    import ast
    import contextlib
    import io

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    import nnunet_liver
    from nnunet_liver.inference.model import load_model

    folder = Path(model.model_folder)
    debug = json.loads((folder / "fold_0" / "debug.json").read_text())
    trained = ast.literal_eval(debug["configuration_manager"])
    planned = json.loads((Path(model.env["nnUNet_preprocessed"]) / folder.parent.name / "nnUNetPlans.json")
                         .read_text())["configurations"]["3d_fullres"]
    assert trained["patch_size"] != planned["patch_size"]  # otherwise this test could not tell the two apart
    recorded = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert recorded["patch_size"] == trained["patch_size"] and recorded["architecture"] == trained["architecture"]
    assert recorded["data_identifier"] == planned["data_identifier"]
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["init_args"]["configuration"] == "3d_fullres"
    assert ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["patch_size"] == trained["patch_size"]
    loaded = load_model(str(folder), folds=(0,), which=which)
    assert loaded.configuration_recorded
    assert list(loaded.configuration_manager.patch_size) == list(trained["patch_size"])
    monkeypatch.setenv("nnUNet_extTrainer", nnunet_liver.TRAINERS_DIR)
    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    assert predictor.configuration_manager.configuration == loaded.configuration_manager.configuration
    return list(planned["patch_size"]), list(trained["patch_size"]), list(predictor.configuration_manager.patch_size)


@pytest.mark.slow
def test_reclassification_applies_unet_patch_on_its_training_patch_size(tiny_patch_model, monkeypatch):
    planned, trained, applied = _check_trained_configuration_recorded(tiny_patch_model, "patch", monkeypatch)
    assert applied == trained != planned


@pytest.mark.slow
def test_detection_applies_unet_whole_on_its_training_patch_size(tiny_whole_model, monkeypatch):
    """Same for UNet-whole: a variant that trains on its own patch size (``_tiny``, ``_demo``) is applied with it."""
    planned, trained, applied = _check_trained_configuration_recorded(tiny_whole_model, "whole", monkeypatch)
    assert applied == trained != planned
