"""nnunet-liver-detect end to end with rule models (real nnU-Net model folders whose outputs we know).

UNet-whole maps HU bands to classes (liver 60 HU, HCC 150 HU, ...); a lesion painted at 100 HU sits between liver
and HCC, so only the high sensitivity (f = 4) finds it. UNet-patch calls 150 HU "Meta" and 100 HU "liver", so
reclassification retypes the HCC and drops the weak lesion.
"""
import csv
import hashlib
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.inference import schema_path
from nnunet_liver.inference.cli import main
from nnunet_liver.testing.rule_model import write_rule_model
from nnunet_liver.labels import dataset_json_labels, patch_dataset_json_labels
from nnunet_liver.utils.io import InputError

pytestmark = pytest.mark.slow  # runs nnU-Net's predictor (on a rule network: about a second per case)

WHOLE_CENTERS = [-1000, 150, 400, 500, 600, 700, 800, 60, 900, 1000, 1100, 1200, 1300, 1400]
PATCH_CENTERS = [0, 400, 500, 150, 600, 700, 800, 60]  # 150 HU -> Meta (3); 100 HU -> liver (7)
SPACING_XYZ = (2.0, 2.0, 2.5)
ORIGIN = (10.0, -20.0, 30.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    whole = write_rule_model(str(root / "whole"), dataset_json_labels(), WHOLE_CENTERS, [40.0] * 14, folds=(0, 1),
                             spacing=(2.5, 2.0, 2.0))  # the cases' grid: goldens without resampling blur
    patch = write_rule_model(str(root / "patch"), patch_dataset_json_labels(), PATCH_CENTERS, [20.0] * 8,
                             folds=(0,), patch_size=(8, 24, 24), spacing=(2.0, 2.0, 2.0))  # resampled
    return {"whole": whole, "patch": patch}


def paint_case(seed=0, weak=True):
    """(20, 48, 40) HU: air, liver 60 HU, HCC (4x8x8 voxels at 150 HU), optional weak lesion (2x4x4 at 100 HU)."""
    rng = np.random.default_rng(seed)
    img = np.full((20, 48, 40), -1000, np.float32)
    img[3:17, 8:40, 6:34] = 60
    z, y = int(rng.integers(4, 7)), int(rng.integers(10, 14))
    img[z:z + 4, y:y + 8, 10:18] = 150
    if weak:
        img[12:14, 28:32, 22:26] = 100
    return img


def write_case(folder, case_id, img, phases=(0, 1, 2, 3), spacing=SPACING_XYZ, origin=ORIGIN, per_phase=None):
    os.makedirs(folder, exist_ok=True)
    for c in phases:
        arr = img if per_phase is None or c not in per_phase else per_phase[c]
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(spacing)
        im.SetOrigin(origin)
        sitk.WriteImage(im, os.path.join(folder, f"{case_id}_{c:04d}.nii.gz"))


def read_outputs(out, case_id):
    with open(os.path.join(out, f"{case_id}.json"), encoding="utf-8") as f:
        rec = json.load(f)
    return rec, sitk.ReadImage(os.path.join(out, f"{case_id}_lesions.nii.gz"))


def validate(rec):
    import jsonschema

    with open(schema_path(), encoding="utf-8") as f:
        jsonschema.validate(rec, json.load(f))


def digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()


def test_patch_model_none_skips_reclassification(models, tmp_path):
    """``--patch-model none`` runs UNet-whole alone (Wang et al.'s Base model, also with ``-m demo``, whose default is
    the bundled UNet-patch)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "case_a", paint_case(0))
    assert main(["-i", str(inp), "-o", str(out), "-m", models["whole"], "--patch-model", "none",
                 "--factors", "1"]) == 0
    rec, _ = read_outputs(out, "case_a")
    assert rec["settings"]["reclassification"]["enabled"] is False
    assert rec["model"].get("patch") is None
    assert [l["type"] for l in rec["lesions"]] == ["HCC"] and rec["lesions"][0]["reclassification"] is None


def test_end_to_end_without_patch_model(models, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "case_a", paint_case(0))
    before = digest(inp)
    assert main(["-i", str(inp), "-o", str(out), "-m", models["whole"], "-f", "0", "1"]) == 0
    assert digest(inp) == before  # inputs never modified
    rec, lesions_img = read_outputs(out, "case_a")
    validate(rec)
    # geometry of the lesion map = the input's
    ref = sitk.ReadImage(str(inp / "case_a_0002.nii.gz"))
    assert lesions_img.GetSize() == ref.GetSize() and lesions_img.GetSpacing() == ref.GetSpacing()
    assert lesions_img.GetOrigin() == ref.GetOrigin() and lesions_img.GetDirection() == ref.GetDirection()
    assert lesions_img.GetPixelID() == sitk.sitkUInt16
    arr = sitk.GetArrayFromImage(lesions_img)
    # ids of the JSON are the ids of the NIfTI, with matching voxel counts
    ids, counts = np.unique(arr[arr > 0], return_counts=True)
    assert sorted(l["id"] for l in rec["lesions"]) == ids.tolist()
    assert {l["id"]: l["num_voxels"] for l in rec["lesions"]} == dict(zip(ids.tolist(), counts.tolist()))
    # golden: the HCC (4x8x8 voxels of 10 mm3) found by both factors; the weak lesion by f = 4 only
    by_sens = {l["sensitivity"]: l for l in rec["lesions"]}
    assert len(rec["lesions"]) == 2
    assert by_sens["same"]["type"] == "HCC" and by_sens["same"]["volume_cm3"] == pytest.approx(2.56)
    assert by_sens["diff"]["volume_cm3"] == pytest.approx(32 * 0.01)
    assert rec["patient"] == {**rec["patient"], "class": "HCC", "malignant": True,
                              "class_by_factor": {"1": "HCC", "4": "HCC"}}
    assert rec["patient"]["livermax"]["HCC"] > 0.9
    assert rec["settings"]["reclassification"]["enabled"] is False
    assert "patch" in rec["settings"]["reclassification"]["skipped_reason"]
    assert all(l["reclassification"] is None for l in rec["lesions"])
    assert rec["model"]["whole"]["folds"] == ["0", "1"] and rec["geometry"]["reference_phase"] == "V"
    assert rec["geometry"]["origin_xyz_mm"] == list(ORIGIN)
    # summary + report
    rows = list(csv.DictReader((out / "summary.csv").read_text(encoding="utf-8").splitlines()))
    assert [(r["case"], r["status"], r["num_lesions"], r["num_diff"]) for r in rows] == [("case_a", "done", "2", "1")]
    report = (out / "report.html").read_text()
    assert report.count("<img") == 1 + 2 * 4 and "case_a" in report  # overview + each lesion in 4 phases
    assert not [p for p in os.listdir(out) if p.startswith(".tmp_")]


def test_f4_finds_every_lesion_f1_finds(models, tmp_path):
    from nnunet_liver.inference import LiverDetector
    from nnunet_liver.postprocessing.seg2det import seg2det

    write_case(tmp_path, "c", paint_case(3))
    det = LiverDetector(models["whole"], folds=[0], factors=(1, 2, 4))
    res = det.detect({n: str(tmp_path / f"c_{i:04d}.nii.gz") for i, n in enumerate(det.channel_names)}, "c")
    fg = {f: np.isin(m, range(1, 7)) for f, m in res.label_maps.items()}
    assert fg[1.0].sum() < fg[2.0].sum() <= fg[4.0].sum()
    assert not (fg[1.0] & ~fg[4.0]).any()
    f1 = seg2det(res.label_maps[1.0], res.case.spacing)
    f4 = seg2det(res.label_maps[4.0], res.case.spacing)
    assert len(f1) == 1 and len(f4) == 2
    for les in f1:
        assert any((les.global_mask(fg[1.0].shape) & l.global_mask(fg[1.0].shape)).any() for l in f4)
    assert res.record["patient"]["class_by_factor"] == {"1": "HCC", "2": "HCC", "4": "HCC"}


@pytest.mark.parametrize("transposed", [False, True])
def test_reclassification_drops_and_retypes(models, tmp_path, transposed):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "case_r", paint_case(1))
    whole, patch = models["whole"], models["patch"]
    if transposed:  # plans whose network axes are (x, z, y) / (y, x, z): outputs must not change
        whole = write_rule_model(str(tmp_path / "w"), dataset_json_labels(), WHOLE_CENTERS, [40.0] * 14,
                                 spacing=(2.5, 2.0, 2.0), transpose_forward=(2, 0, 1))
        patch = write_rule_model(str(tmp_path / "p"), patch_dataset_json_labels(), PATCH_CENTERS, [20.0] * 8,
                                 patch_size=(8, 24, 24), spacing=(2.0, 2.0, 2.0), transpose_forward=(1, 2, 0))
    assert main(["-i", str(inp), "-o", str(out), "-m", whole, "--patch-model", patch]) == 0
    rec, img = read_outputs(out, "case_r")
    validate(rec)
    assert rec["settings"]["reclassification"]["enabled"] is True
    assert rec["detections_by_factor"]["4"]["before_reclassification"] == 2
    assert rec["detections_by_factor"]["4"]["after_reclassification"] == 1
    assert len(rec["detections_by_factor"]["4"]["dropped_detection_ids"]) == 1
    (gone,) = rec["detections_by_factor"]["4"]["dropped"]  # what was removed, and why, for a human to check
    assert gone["detection_id"] == rec["detections_by_factor"]["4"]["dropped_detection_ids"][0]
    assert gone["reclassification"]["kept"] is False and gone["volume_cm3"] > 0 and len(gone["centroid_mm"]) == 3
    # the weak lesion is too small to reach 0.5 cm3 on UNet-patch's grid: dropped without a network call, and says so
    assert gone["reclassification"]["score_cm3"] is None and "< 0.5 cm3" in gone["reclassification"]["skipped"]
    (les,) = rec["lesions"]
    assert les["id"] == 1 and les["type"] == "Meta" and les["label"] == 3 and les["sensitivity"] == "same"
    assert les["reclassification"]["type_before"] == "HCC" and les["reclassification"]["kept"]
    assert les["reclassification"]["num_patches"] == 10
    assert les["reclassification"]["score_cm3"] == pytest.approx(2.56, rel=0.05)
    assert rec["patient"]["class"] == "Meta" and rec["patient"]["malignant"] is True
    assert np.unique(sitk.GetArrayFromImage(img)).tolist() == [0, 1]


def test_skip_finished_and_overwrite(models, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "c1", paint_case(0))
    assert main(["-i", str(inp), "-o", str(out), "-m", models["whole"]]) == 0
    stamp = os.stat(out / "c1.json").st_mtime_ns
    from nnunet_liver.inference import LiverDetector, run_folder

    det = LiverDetector(models["whole"])
    res = run_folder(det, str(inp), str(out), progress=False)
    assert res.skipped == ["c1"] and res.done == [] and os.stat(out / "c1.json").st_mtime_ns == stamp
    res = run_folder(det, str(inp), str(out), overwrite=True, progress=False, report=False)
    assert res.done == ["c1"] and os.stat(out / "c1.json").st_mtime_ns != stamp


def test_the_report_draws_in_the_ct_window_of_the_models_plans(models, tmp_path):
    """The runner hands UNet-whole's CT window (the one nnunet-liver-plan writes into the plans) to the report: a
    rule model (no intensity normalisation, so its predictions stay the same) whose plans carry a 0..100 HU window."""
    import shutil

    from nnunet_liver.inference import LiverDetector, run_folder
    from nnunet_liver.planning import apply_ct_window

    whole = tmp_path / "whole"
    shutil.copytree(models["whole"], whole)
    with open(whole / "plans.json", encoding="utf-8") as f:
        plans = json.load(f)
    plans["foreground_intensity_properties_per_channel"] = \
        apply_ct_window(plans, (0.0, 100.0))["foreground_intensity_properties_per_channel"]
    (whole / "plans.json").write_text(json.dumps(plans))
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "c1", paint_case(0))
    det = LiverDetector(str(whole))
    assert det.model.ct_window == (0.0, 100.0)
    assert run_folder(det, str(inp), str(out), progress=False).done == ["c1"]
    assert "window 0 to 100 HU" in (out / "report.html").read_text(encoding="utf-8")


def test_sharding_covers_every_case_once(models, tmp_path):
    from nnunet_liver.inference import LiverDetector, run_folder

    inp, out = tmp_path / "in", tmp_path / "out"
    ids = [f"s{i}" for i in range(5)]
    for i, c in enumerate(ids):
        write_case(inp, c, paint_case(i, weak=False), phases=(0, 1, 2, 3))
    det = LiverDetector(models["whole"], folds=[0])
    done = []
    for part in range(3):
        res = run_folder(det, str(inp), str(out), num_parts=3, part_id=part, progress=False, report=False)
        assert res.ok and not res.skipped
        done += res.done
        rows = list(csv.DictReader((out / "summary.csv").read_text(encoding="utf-8").splitlines()))
        assert [r["case"] for r in rows] == ids  # every case listed, not-yet-run ones as pending
    assert sorted(done) == ids and len(done) == len(set(done))
    rows = csv.DictReader((out / "summary.csv").read_text(encoding="utf-8").splitlines())
    assert {r["status"] for r in rows} == {"done"}
    assert main(["-i", str(inp), "-o", str(out), "-m", models["whole"], "--num-parts", "2", "--part-id", "2"]) == 2


def test_bad_inputs_fail_their_case_only(models, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    good = paint_case(0)
    write_case(inp, "good", good)
    write_case(inp, "missing", good, phases=(0, 1, 2))                      # D absent, model is not IFM
    write_case(inp, "garbage", good)
    (inp / "garbage_0001.nii.gz").write_bytes(b"not a nifti file")          # unreadable
    nan = good.copy()
    nan[5, 5, 5] = np.nan
    write_case(inp, "nan", good, per_phase={2: nan})                        # NaN voxel in V
    write_case(inp, "flat", good, phases=(0, 1, 3))
    sitk.WriteImage(sitk.GetImageFromArray(good[0]), str(inp / "flat_0002.nii.gz"))  # a 2D image
    write_case(inp, "grid", good, phases=(0, 2, 3))
    write_case(inp, "grid", good, phases=(1,), spacing=(1.0, 1.0, 2.5))     # A on another grid
    write_case(inp, "..evil", good)                                         # path-like id
    code = main(["-i", str(inp), "-o", str(out), "-m", models["whole"], "--no-report"])
    assert code == 2  # bad input, as everywhere; the good case still ran
    rows = {r["case"]: r for r in csv.DictReader((out / "summary.csv").read_text(encoding="utf-8").splitlines())}
    assert rows["good"]["status"] == "done"
    expected = {"missing": "missing", "garbage": "cannot read", "nan": "NaN", "flat": "3D",
                "grid": "different grid", "..evil": "not a plain file name"}
    for case, words in expected.items():
        assert rows[case]["status"] == "failed", case
        assert words in rows[case]["error"] and "\n" not in rows[case]["error"], (case, rows[case]["error"])
        assert not (out / f"{case}.json").exists()
    err = capsys.readouterr().err
    assert sum(l.startswith("nnunet-liver-detect: error:") for l in err.splitlines()) == len(expected)
    assert "Traceback" not in err
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "evil_error.txt").exists()
    # the same geometry mismatch runs with --register (phases registered onto the venous grid)
    pytest.importorskip("nnunet_liver.registration")
    for f in os.listdir(inp):
        if not f.startswith("grid_"):
            os.remove(inp / f)
    assert main(["-i", str(inp), "-o", str(tmp_path / "out2"), "-m", models["whole"], "--register"]) == 0
    rec, _ = read_outputs(tmp_path / "out2", "grid")
    validate(rec)
    assert rec["settings"]["register"] and "A" in rec["geometry"]["registration"]


def test_bad_model_folders_fail_at_start(models, tmp_path, capsys):
    inp = tmp_path / "in"
    write_case(inp, "c", paint_case(0))
    argv = ["-i", str(inp), "-o", str(tmp_path / "o"), "-m", models["whole"]]
    assert main(argv + ["-f", "3"]) == 2
    assert main(argv + ["-chk", "checkpoint_best.pth"]) == 2
    assert main(["-i", str(inp), "-o", str(tmp_path / "o"), "-m", str(tmp_path)]) == 2
    assert main(argv + ["--patch-model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(l.startswith("nnunet-liver-detect: error:") for l in err)
    assert "fold_3" in err[0] and "checkpoint_best.pth" in err[1] and "dataset.json" in err[2]
    assert not (tmp_path / "o").exists()
    from nnunet_liver.inference.model import DEMO_MODELS_DIR, load_model
    if not os.path.isdir(DEMO_MODELS_DIR):
        with pytest.raises(InputError, match="demo"):
            load_model("demo")


def test_missing_phase_fill_and_case_ids(tmp_path):
    from nnunet_liver.case import validate_case_id
    from nnunet_liver.inference.cases import CaseFiles, discover_cases, load_case
    from nnunet_liver.labels import MISSING_PHASE_VALUE

    write_case(tmp_path, "p", paint_case(0), phases=(0, 1, 2))
    (case,) = discover_cases(str(tmp_path), 4)
    assert case.files[3] is None
    loaded = load_case(case, ("NC", "A", "V", "D"), allow_missing=True)
    assert loaded.phases_present == ["NC", "A", "V"] and loaded.phases_missing == ["D"]
    assert (loaded.data[3] == MISSING_PHASE_VALUE).all() and loaded.data[2].max() == 150
    assert set(loaded.images_by_phase()) == {"NC", "A", "V"}
    with pytest.raises(InputError, match="not an IFM model"):
        load_case(case, ("NC", "A", "V", "D"), allow_missing=False)
    for bad in ("../x", "a/b", "..", ".hidden", "-rf", "", "a b"):
        with pytest.raises(InputError):
            validate_case_id(bad)
        with pytest.raises(InputError):
            load_case(CaseFiles(bad, case.files), ("NC", "A", "V", "D"), allow_missing=True)
    assert validate_case_id("liver_001.v2-b") == "liver_001.v2-b"


def test_interrupted_run_leaves_no_half_output(models, tmp_path, monkeypatch):
    import nnunet_liver.inference.runner as runner
    import nnunet_liver.utils.io as io

    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "c", paint_case(0))
    det = runner.LiverDetector(models["whole"], folds=[0])

    def interrupted_dump(obj, f, **kwargs):
        f.write('{"schema_version": "1.0", "case": ')  # half a JSON, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(io.json, "dump", interrupted_dump)
    with pytest.raises(KeyboardInterrupt):
        runner.run_folder(det, str(inp), str(out), progress=False)
    monkeypatch.undo()
    assert not (out / "c.json").exists()                       # the case is not "done"
    assert not [p for p in os.listdir(out) if p.startswith(".tmp_")]
    res = runner.run_folder(det, str(inp), str(out), progress=False)  # the rerun redoes it
    assert res.done == ["c"] and not res.skipped
    validate(json.loads((out / "c.json").read_text(encoding="utf-8")))


def test_patch_model_reuses_the_whole_models_preprocessing(models, tmp_path):
    """A UNet-patch whose nnU-Net preprocessing equals UNet-whole's takes UNet-whole's preprocessed image: the
    results are those of preprocessing the case a second time; a UNet-patch on another grid preprocesses its own."""
    from nnunet_liver.inference import LiverDetector
    from nnunet_liver.inference.cases import discover_cases

    img = paint_case(3)
    write_case(tmp_path / "in", "c", img)
    (case,) = discover_cases(str(tmp_path / "in"), 4)
    twin = write_rule_model(str(tmp_path / "patch"), patch_dataset_json_labels(), PATCH_CENTERS, [20.0] * 8,
                            folds=(0,), patch_size=(8, 24, 24), spacing=(2.5, 2.0, 2.0))  # UNet-whole's grid
    det = LiverDetector(models["whole"], folds=[0, 1], patch_model_dir=twin, factors=(1, 4))
    assert det.share_preprocessing
    assert not LiverDetector(models["whole"], patch_model_dir=models["patch"]).share_preprocessing  # 2 mm grid
    loaded, predicted = det.predict_case(case)
    assert predicted.preprocessed is not None
    shared = det.detect_case(case, prediction=(loaded, predicted))
    det.share_preprocessing = False
    own = det.detect_case(case)
    recls = [les["reclassification"] for les in shared.record["lesions"]]
    assert len(recls) >= 1 and all(r["num_patches"] == 10 for r in recls)
    for key in ("lesions", "patient", "detections_by_factor"):
        assert shared.record[key] == own.record[key]
    np.testing.assert_array_equal(shared.instance_map, own.instance_map)


def test_the_demo_pair_preprocesses_alike():
    from nnunet_liver.inference.model import load_model
    from nnunet_liver.nnunet_mirror import same_preprocessing

    whole, patch = load_model("demo", which="whole"), load_model("demo", which="patch")
    assert same_preprocessing(whole, patch) and same_preprocessing(patch, whole)
    patch.configuration_manager.configuration["spacing"] = [5.0, 4.0, 4.0]
    assert not same_preprocessing(whole, patch)


@pytest.mark.parametrize("transposed", [False, True])
def test_masks_of_all_factors_in_one_pass_equal_one_pass_each(models, tmp_path, transposed):
    """``prepare_masks_many`` packs every factor's lesion ids and liver into one code resampled once: the same
    arrays as one ``prepare_masks`` call per factor (nearest neighbour, resampled 2.5 -> 2 mm, a cropping box,
    a transposed plan); too many ids for an exact float64 code fall back to one pass each; empty maps."""
    from nnunet_liver.inference.patch_model import PatchModel

    patch = models["patch"] if not transposed else write_rule_model(
        str(tmp_path / "p"), patch_dataset_json_labels(), PATCH_CENTERS, [20.0] * 8, patch_size=(8, 24, 24),
        spacing=(2.0, 2.0, 2.0), transpose_forward=(1, 2, 0))
    pm = PatchModel(patch)
    data = np.stack([paint_case(1)] * 4)
    data[:, :, :2] = 0  # a zero border: nnU-Net crops it away
    prepared = pm.prepare_image(data, (2.5, 2.0, 2.0))
    assert sorted(b[0] for b in prepared.properties["bbox_used_for_cropping"]) == [0, 0, 2]  # y cropped
    rng = np.random.default_rng(7)
    shape = data.shape[1:]
    pairs = []
    for n_ids in (3, 60, 0):  # f = 1, f = 4 with many ids, an empty factor
        ids = rng.integers(0, n_ids + 1, shape) * (rng.random(shape) < 0.3) if n_ids else np.zeros(shape, int)
        pairs.append((ids.astype(np.uint16), rng.random(shape) < 0.5))
    together = pm.prepare_masks_many(prepared, pairs)
    for (ids, liver), got in zip(pairs, together):
        want = pm.prepare_masks(prepared, ids, liver)
        assert got.prepared is want.prepared is prepared
        assert np.array_equal(got.instances, want.instances) and np.array_equal(got.liver, want.liver)
        assert got.instances.dtype == np.int32 and got.liver.dtype == bool
        assert got.instances.shape == got.liver.shape == prepared.image.shape[1:]
    assert together[2].instances.max() == 0 and together[0].instances.max() == 3
    # more ids than an exact float64 code holds for 4 maps: one pass each, same results
    big = [(np.where(ids > 0, ids.astype(np.int64) * 20000, 0), liver) for ids, liver in pairs[:2]] * 2
    for (ids, liver), got in zip(big, pm.prepare_masks_many(prepared, big)):
        assert np.array_equal(got.instances, pm.prepare_masks(prepared, ids, liver).instances)
