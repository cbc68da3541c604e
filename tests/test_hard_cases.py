"""Hard cases for UNet-patch (Wang et al., Sec. III-B): UNet-whole's FN and FP, from mining to the training patches."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.patches import HARD_CASES_DIR, convert_patch_dataset, main as patches_main
from nnunet_liver.postprocessing import seg2det
from nnunet_liver.training.hard_cases import hard_cases, prepare_hard_cases, prepared_folder, read_prepared_hard_cases
from nnunet_liver.training.shuffle import sample_hard_case_patch
from nnunet_liver.trainers.liver_dataloading import LesionShuffleDataLoader
from nnunet_liver.utils.io import InputError

sys.path.insert(0, str(Path(__file__).parent))
from test_trainers import FakeDataset, plans, whole_json  # noqa: E402

SPACING = (2.0, 1.0, 1.0)  # 2 mm3 voxels: 0.5 cm3 = 250 voxels


def _reference():
    lab = np.zeros((12, 40, 40), np.uint8)
    lab[1:11, 2:38, 2:30] = L.LIVER
    lab[2:6, 4:14, 4:14] = L.HCC       # 400 voxels: found
    lab[6:10, 20:30, 4:14] = L.META    # 400 voxels: missed -> FN
    lab[2:4, 30:34, 20:24] = L.CYST    # 32 voxels (0.064 cm3): too small to count, not a hard case
    return lab


def _prediction():
    pred = np.zeros((12, 40, 40), np.uint8)
    pred[1:11, 2:38, 2:30] = L.LIVER
    pred[2:6, 5:14, 4:13] = L.HCC      # matches the HCC
    pred[2:6, 4:14, 18:34] = L.HEM     # 640 voxels, no reference lesion -> FP; x 30..33 lies outside the liver
    pred[8:10, 2:4, 20:22] = L.ICC     # 8 voxels: below the floor, ignored
    return pred


def test_hard_cases_are_the_fn_and_fp_of_match():
    ref, pred = _reference(), _prediction()
    region = np.isin(ref, L.LIVER_REGION_IDS)
    hmap, found = hard_cases(seg2det(ref, SPACING), seg2det(pred, SPACING), ref.shape, SPACING, region=region)
    assert [(h.id, h.kind, h.type) for h in found] == [(1, "FN", "Meta"), (2, "FP", "Hem")]
    expect = np.zeros(ref.shape, np.uint16)
    expect[6:10, 20:30, 4:14] = 1
    expect[2:6, 4:14, 18:30] = 2  # the FP's part inside the liver region
    np.testing.assert_array_equal(hmap, expect)
    assert found[0].volume_cm3 == pytest.approx(400 * 0.002) and found[1].volume_cm3 == pytest.approx(480 * 0.002)
    # without a region the whole FP counts
    hmap2, found2 = hard_cases(seg2det(ref, SPACING), seg2det(pred, SPACING), ref.shape, SPACING)
    assert (hmap2 == 2).sum() == 640 and found2[1].volume_cm3 == pytest.approx(1.28)


def test_hard_cases_empty_cases():
    ref = _reference()
    les = seg2det(ref, SPACING)
    hmap, found = hard_cases(les, les, ref.shape, SPACING)  # a perfect prediction: nothing is hard
    assert found == [] and not hmap.any()
    hmap, found = hard_cases([], [], ref.shape, SPACING)
    assert found == [] and hmap.shape == ref.shape and not hmap.any()
    # an FP entirely outside the region is left out
    pred = np.zeros_like(ref)
    pred[2:6, 4:10, 32:38] = L.HCC
    hmap, found = hard_cases([], seg2det(pred, SPACING), ref.shape, SPACING, region=np.isin(ref, L.LIVER_REGION_IDS))
    assert found == [] and not hmap.any()
    with pytest.raises(ValueError, match="region shape"):
        hard_cases([], [], ref.shape, SPACING, region=np.ones((2, 2, 2), bool))


def _patch_case():
    label = np.zeros((10, 40, 40), np.int16)
    label[1:9, 3:37, 3:37] = L.PATCH_LIVER
    label[3:6, 6:10, 6:10] = L.ICC
    image = np.random.default_rng(3).normal(size=(2,) + label.shape).astype(np.float32)
    return image, label


def test_hard_case_patch_original_and_shuffled():
    image, label = _patch_case()
    box = (slice(4, 7), slice(20, 26), slice(25, 30))  # an FP region: liver texture, labelled liver
    mask = np.zeros((3, 6, 5), bool)
    mask[:, 1:5, 1:4] = True
    rng = np.random.default_rng(0)
    for _ in range(5):
        img, lab = sample_hard_case_patch(image, label, (4, 16, 16), rng, box, mask, shuffled=False,
                                          masked_value=-9.0)
        assert img.shape == (2, 4, 16, 16) and lab.shape == (4, 16, 16) and lab.dtype == np.int16
        # the FP's voxels are in the patch: a window of the case equal to the box's image values
        hits = [(z, y, x) for z in range(2) for y in range(11) for x in range(12)
                if np.array_equal(img[:, z:z + 3, y:y + 6, x:x + 5][:, mask], image[(slice(None),) + box][:, mask])]
        assert hits
        assert np.all(img[:, lab == 0] == -9.0)
        img, lab = sample_hard_case_patch(image, label, (4, 16, 16), rng, box, mask, shuffled=True, masked_value=-9.0)
        assert set(np.unique(lab)) <= {0, L.PATCH_LIVER}  # a negative crop, and the FP region stays liver
        src = image[(slice(None),) + box][:, mask]
        found = [(z, y, x) for z in range(2) for y in range(11) for x in range(12)
                 if np.array_equal(img[:, z:z + 3, y:y + 6, x:x + 5][:, mask], src)]
        assert found, "the FP region's voxels were not transplanted"
    # an FN lesion keeps its type when shuffled
    fn_box = (slice(3, 6), slice(6, 10), slice(6, 10))
    img, lab = sample_hard_case_patch(image, label, (4, 16, 16), rng, fn_box, np.ones((3, 4, 4), bool), True)
    assert (lab == L.ICC).sum() == 48


class _Dataset(FakeDataset):
    """FakeDataset with the properties hard cases need (nnU-Net cropped nothing and did not resample)."""

    def load_case(self, key):
        data, seg, prev, props = super().load_case(key)
        props.update(shape_before_cropping=seg.shape[1:], bbox_used_for_cropping=[[0, n] for n in seg.shape[1:]])
        return data, seg, prev, props


def test_shuffle_loader_cuts_patches_around_hard_cases():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    image, label = _patch_case()
    hmap = np.zeros(label.shape, np.uint16)
    hmap[3:6, 6:10, 6:10] = 1      # the ICC, missed by UNet-whole
    hmap[4:7, 20:26, 25:30] = 2    # an FP region in the liver
    entries = [{"id": 1, "kind": "FN"}, {"id": 2, "kind": "FP"}]
    lm = LabelManager(L.patch_dataset_json_labels(), None)
    ds = _Dataset({"a": (image, label[None]), "b": (image, label[None])})
    np.random.seed(0)
    dl = LesionShuffleDataLoader(ds, 4, (4, 16, 16), (4, 16, 16), lm, hard_cases={"a": (hmap, entries),
                                 "gone": (hmap, entries)}, hard_case_rate=1.0)
    assert [(k, kind) for k, kind, _, _ in dl.hard_index] == [("a", "FN"), ("a", "FP")]
    for _ in range(10):
        batch = dl.generate_train_batch()
        assert batch["keys"] == ["a"] * 4 and batch["data"].shape == (4, 2, 4, 16, 16)
    assert set(dl.scheme_counts) == {"hard_FN_original", "hard_FN_shuffled", "hard_FP_original", "hard_FP_shuffled"}
    # rate 0.5: about half the patches are hard cases
    np.random.seed(1)
    dl = LesionShuffleDataLoader(ds, 4, (4, 16, 16), (4, 16, 16), lm, hard_cases={"a": (hmap, entries)},
                                 hard_case_rate=0.5)
    for _ in range(50):
        dl.generate_train_batch()
    hard = sum(v for k, v in dl.scheme_counts.items() if k.startswith("hard_"))
    assert abs(hard / 200 - 0.5) < 4 * np.sqrt(0.25 / 200)
    # no hard case in the loader's cases: the rate is off and training is the plain lesion shuffle
    dl = LesionShuffleDataLoader(ds, 2, (4, 16, 16), (4, 16, 16), lm, hard_cases={"a": (hmap, [])}, hard_case_rate=1.0)
    assert dl.hard_index == [] and dl.hard_case_rate == 0.0
    dl.generate_train_batch()
    assert not any(k.startswith("hard_") for k in dl.scheme_counts)
    with pytest.raises(ValueError, match="hard_case_rate"):
        LesionShuffleDataLoader(ds, 2, (4, 16, 16), (4, 16, 16), lm, hard_case_rate=1.5)


def _write_whole_dataset(root):
    import SimpleITK as sitk

    ds = root / "Dataset600_Whole"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    preds = root / "preds"
    preds.mkdir()
    ref = _reference()
    ref[0, 0, 0] = L.SPLEEN
    for case, lab, pred in (("c0", ref, _prediction()), ("c1", ref, ref), ("c2", np.zeros_like(ref), None),
                            ("c3", ref, None)):
        for name, arr, folder in (((f"{case}_0000"), np.full(lab.shape, 40.0, np.float32), ds / "imagesTr"),
                                  (case, lab, ds / "labelsTr"), (case, pred, preds)):
            if arr is None:
                continue
            o = sitk.GetImageFromArray(arr)
            o.SetSpacing(SPACING[::-1])
            o.SetOrigin((5.0, 6.0, 7.0))
            sitk.WriteImage(o, str(folder / f"{name}.nii.gz"))
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "V"}, "labels": L.dataset_json_labels(),
                                                 "numTraining": 4, "file_ending": ".nii.gz"}))
    return ds, preds


def test_convert_patches_writes_hard_case_maps(tmp_path, capsys):
    import SimpleITK as sitk

    ds, preds = _write_whole_dataset(tmp_path)
    before = {p: p.read_bytes() for p in sorted(ds.rglob("*.nii.gz")) + sorted(preds.glob("*"))}
    out = tmp_path / "raw" / "Dataset601_Patch"
    assert patches_main(["-i", str(ds), "-o", str(out), "--hard-cases", str(preds), "--margin-mm", "0"]) == 0
    printed = capsys.readouterr().out
    assert "hard cases 1 FN and 1 FP in 1 of 3 cases" in printed and "no prediction (no hard cases) for 1: c3" in printed
    info = json.loads((out / "patch_dataset.json").read_text())
    by_case = {c["case"]: c for c in info["cases"]}
    assert [(h["id"], h["kind"], h["type"]) for h in by_case["c0"]["hard_cases"]] == [(1, "FN", "Meta"), (2, "FP", "Hem")]
    assert by_case["c1"]["hard_cases"] == [] and "hard_cases" not in by_case["c3"]
    assert info["hard_cases_no_prediction"] == ["c3"] and info["skipped_no_liver"] == ["c2"]
    assert sorted(p.name for p in (out / HARD_CASES_DIR).iterdir()) == ["c0.nii.gz", "c1.nii.gz"]
    hard = sitk.ReadImage(str(out / HARD_CASES_DIR / "c0.nii.gz"))
    lab = sitk.ReadImage(str(out / "labelsTr" / "c0.nii.gz"))
    assert hard.GetSize() == lab.GetSize() and hard.GetOrigin() == lab.GetOrigin()
    h = sitk.GetArrayFromImage(hard)
    (z0, z1), (y0, y1), (x0, x1) = by_case["c0"]["bbox_zyx"]
    expect = np.zeros(_reference().shape, np.uint16)
    expect[6:10, 20:30, 4:14] = 1
    expect[2:6, 4:14, 18:30] = 2
    np.testing.assert_array_equal(h, expect[z0:z1, y0:y1, x0:x1])
    assert {p: p.read_bytes() for p in before} == before  # inputs untouched


def test_convert_patches_hard_cases_errors(tmp_path, capsys):
    ds, preds = _write_whole_dataset(tmp_path)
    out = tmp_path / "Dataset601_Patch"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no prediction for any case"):
        convert_patch_dataset(ds, out, hard_cases_dir=empty, progress=False)
    with pytest.raises(InputError, match="hard-case prediction folder not found"):
        convert_patch_dataset(ds, out, hard_cases_dir=tmp_path / "nope", progress=False)
    with pytest.raises(InputError, match="volume floor"):
        convert_patch_dataset(ds, out, hard_cases_dir=preds, hard_min_volume_cm3=-1, progress=False)
    import SimpleITK as sitk
    bad = sitk.GetImageFromArray(np.zeros((3, 3, 3), np.uint8))
    sitk.WriteImage(bad, str(preds / "c1.nii.gz"))
    with pytest.raises(InputError, match=r"c1\.nii\.gz: geometry does not match"):
        convert_patch_dataset(ds, out, hard_cases_dir=preds, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".Dataset601*"))  # nothing half-written
    assert patches_main(["-i", str(ds), "-o", str(out), "--hard-cases", str(empty)]) == 2  # bad input
    assert "no prediction for any case" in capsys.readouterr().err


def _preprocessed_like_nnunet(tmp_path, monkeypatch, name="Dataset999_X"):
    """The raw UNet-patch dataset with hard cases, and a preprocessed folder as nnU-Net writes it (plans with the
    axes transposed (1, 0, 2), cases cropped and resampled to half the x spacing), its cases saved by nnU-Net's own
    dataset class. Returns (raw dataset, preprocessed dataset folder, {case: raw hard-case map})."""
    import SimpleITK as sitk
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

    ds, preds = _write_whole_dataset(tmp_path)
    raw = convert_patch_dataset(ds, tmp_path / "raw" / name, hard_cases_dir=preds, progress=False)
    pre = tmp_path / "pre" / name
    p = plans()
    cfg = p["configurations"]["3d_fullres"]
    cfg.update(spacing=[1.0, 2.0, 0.5], resampling_fn_seg="resample_data_or_seg_to_shape",
               resampling_fn_seg_kwargs={"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None})
    (pre / cfg["data_identifier"]).mkdir(parents=True)
    (pre / "nnUNetPlans.json").write_text(json.dumps(p))
    maps = {}
    for case in ("c0", "c1"):
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
        if (raw / HARD_CASES_DIR / f"{case}.nii.gz").is_file():
            maps[case] = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / HARD_CASES_DIR / f"{case}.nii.gz")))
        t = lab.transpose(1, 0, 2)
        bbox = [[1, t.shape[0] - 1], [0, t.shape[1]], [2, t.shape[2]]]
        shape = (t.shape[0] - 2, t.shape[1], 2 * (t.shape[2] - 2))
        props = {"spacing": list(SPACING), "shape_before_cropping": t.shape, "bbox_used_for_cropping": bbox,
                 "class_locations": {}}
        nnUNetDatasetNumpy.save_case(np.zeros((1,) + shape, np.float32), np.zeros((1,) + shape, np.int16), props,
                                     str(pre / cfg["data_identifier"] / case))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return raw, pre, maps


def test_prepare_hard_cases_puts_them_on_the_preprocessed_grid_once(tmp_path, monkeypatch, capsys):
    """The prepared map is the raw map transposed, cropped and resampled (nearest neighbour) as nnU-Net did its
    case; the patch trainer reads it from nnUNet_preprocessed, never from the raw dataset."""
    from nnunet_liver.trainers.liver_patch_trainer import LesionShufflePatchTrainer

    raw, pre, maps = _preprocessed_like_nnunet(tmp_path, monkeypatch)
    out = prepare_hard_cases("Dataset999_X")
    assert out == prepared_folder(str(pre), "nnUNetPlans_3d_fullres") and "1 FN and 1 FP of 1 cases" in \
        capsys.readouterr().out
    prepared = read_prepared_hard_cases(out)
    assert sorted(prepared) == ["c0"] and [e["kind"] for e in prepared["c0"][1]] == ["FN", "FP"]
    t = maps["c0"].transpose(1, 0, 2)[1:-1, :, 2:]
    np.testing.assert_array_equal(prepared["c0"][0], np.repeat(t, 2, axis=2))
    # the trainer reads them from nnUNet_preprocessed, with the raw dataset gone
    import shutil
    shutil.rmtree(raw)
    p = plans()
    p["continue_training"] = False
    trainer = LesionShufflePatchTrainer(p, "3d_fullres", 0, whole_json(labels=L.patch_dataset_json_labels()),
                                        torch.device("cpu"))
    hard = trainer.load_hard_cases()
    assert sorted(hard) == ["c0"]
    np.testing.assert_array_equal(hard["c0"][0], prepared["c0"][0])
    shutil.rmtree(out)
    assert trainer.load_hard_cases() == {}


def test_prepare_hard_cases_errors_name_the_file(tmp_path, monkeypatch, capsys):
    from nnunet_liver.training.hard_cases import main as prepare_main

    raw, pre, _ = _preprocessed_like_nnunet(tmp_path, monkeypatch)
    hmap = raw / HARD_CASES_DIR / "c0.nii.gz"
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 3, 3), np.uint16)), str(hmap))
    assert prepare_main(["-d", "Dataset999_X"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c0.nii.gz" in err and "differs from the preprocessed case" in err
    assert not (pre / "nnUNetPlans_3d_fullres_hardCases").exists() and \
        not list(pre.glob(".tmp_*"))  # nothing half-written
    (pre / "nnUNetPlans.json").unlink()
    with pytest.raises(InputError, match=r"nnUNetPlans\.json: not found \(plan and preprocess"):
        prepare_hard_cases("Dataset999_X")
    info = json.loads((raw / "patch_dataset.json").read_text())
    del info["hard_cases_from"]
    (raw / "patch_dataset.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="converted without --hard-cases"):
        prepare_hard_cases("Dataset999_X")
