"""The characterization stage: Eq. (1) on painted volumes, patches, the LI-RADS table cell by cell, model fitting,
save/load and the mismatch refusals, the evaluation's AUC and bootstrap."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from nnunet_liver.characterize.features import SARFATI_SPACING_ZYX, energy, sarfati_features
from nnunet_liver.characterize.lirads import lirads_category
from nnunet_liver.characterize.lesions import case_from_label_map
from nnunet_liver.characterize.table import FeatureSettings, lesion_rows, merge_labels
from nnunet_liver.utils.io import InputError

SP = SARFATI_SPACING_ZYX  # (2, 0.76, 0.76): the energy needs no rescaling


def painted(spacing=SP):
    """(8, 16, 16): liver (label 7) with one 4 x 8 x 8 HCC (label 1) whose 3-pixel inner border (2 mm at 0.76 mm)
    leaves a 2 x 2 core per slice. A: liver 70, lesion border 150, core 100; V: liver 110, lesion 80; D: liver 90,
    lesion 60."""
    label = np.zeros((8, 16, 16), np.uint8)
    label[1:7, 2:14, 2:14] = 7
    label[2:6, 4:12, 4:12] = 1
    a = np.where(label == 7, 70.0, -100.0).astype(np.float32)
    a[2:6, 4:12, 4:12] = 150.0
    a[2:6, 7:9, 7:9] = 100.0  # the core inside the 3-pixel border
    v = np.where(label == 7, 110.0, -100.0).astype(np.float32)
    v[label == 1] = 80.0
    d = np.where(label == 7, 90.0, -100.0).astype(np.float32)
    d[label == 1] = 60.0
    return label, {"A": a, "V": v, "D": d}, spacing


def test_eq1_features_against_hand_computed_values():
    label, images, sp = painted()
    case = case_from_label_map("c", images, label, sp)
    (les,) = case.lesions
    f = sarfati_features(les.mask, les.slices, case.images, case.parenchyma, sp, les.diameter_mm)
    # median(L_A) = 150 (240 border voxels, 16 core), median(P_A) = 70
    assert f["f_APHE"] == pytest.approx(80.0)
    assert f["f_NPW"] == pytest.approx(80.0 - 110.0)
    # energy(L_A) - energy(B_A) = (16 * 100^2 + 240 * 150^2) - 240 * 150^2 = 16 * 100^2 (the grid is the paper's)
    assert f["f_EC"] == pytest.approx(16 * 100.0 ** 2)
    assert f["s"] == pytest.approx(les.diameter_mm) and les.diameter_mm == pytest.approx(np.hypot(8, 8) * 0.76)


def test_energy_is_a_sum_expressed_on_the_papers_grid():
    assert energy(np.array([3.0, 4.0])) == 25.0 and energy(np.array([])) is None
    label, images, _ = painted()
    sp = (4.0, 0.76, 0.76)  # voxels twice the paper's volume: the sum counts double
    case = case_from_label_map("c", images, label, sp)
    (les,) = case.lesions
    f = sarfati_features(les.mask, les.slices, case.images, case.parenchyma, sp, les.diameter_mm)
    assert f["f_EC"] == pytest.approx(2 * 16 * 100.0 ** 2)


def test_washout_phase_and_missing_phases():
    label, images, sp = painted()
    no_v = {k: v for k, v in images.items() if k != "V"}
    case = case_from_label_map("c", {**no_v, "V": np.full(label.shape, -1024, np.float32)}, label, sp)
    assert "V" not in case.images and case.phases_missing == ["V"]  # the constant channel is a missing phase
    (les,) = case.lesions
    f = sarfati_features(les.mask, les.slices, case.images, case.parenchyma, sp, les.diameter_mm)
    assert f["f_NPW"] is None  # Eq. (1): the portal venous phase, no fallback
    f = sarfati_features(les.mask, les.slices, case.images, case.parenchyma, sp, les.diameter_mm,
                         washout_phase="D")
    assert f["f_NPW"] == pytest.approx(60.0 - 90.0)
    case = case_from_label_map("c", {"V": images["V"]}, label, sp)
    f = sarfati_features(les.mask, les.slices, case.images, case.parenchyma, sp, les.diameter_mm)
    assert f["f_APHE"] is None and f["f_EC"] is None


def test_the_detectors_features_differ_as_documented():
    """CASE.json's EC is the mean-energy contrast of the core and the border; Eq. (1)'s is a difference of sums."""
    from nnunet_liver.postprocessing.seg2det import seg2det

    label, images, sp = painted()
    (det,) = seg2det(label, sp, images=images)
    assert det.features["APHE"] == pytest.approx(80.0)
    assert det.features["EC"] == pytest.approx(100.0 ** 2 - 150.0 ** 2)


def test_energy_matches_pyradiomics():
    """Cross-check with an independent implementation: pyradiomics' first-order Energy of the lesion."""
    pytest.importorskip("radiomics", reason="pyradiomics (the characterize extra) is not installed")
    import SimpleITK as sitk
    from radiomics import firstorder

    label, images, sp = painted()
    img = sitk.GetImageFromArray(images["A"])
    img.SetSpacing(tuple(reversed(sp)))
    msk = sitk.GetImageFromArray((label == 1).astype(np.uint8))
    msk.CopyInformation(img)
    fo = firstorder.RadiomicsFirstOrder(img, msk, voxelArrayShift=0, binWidth=25)
    fo.disableAllFeatures()
    fo.enableFeatureByName("Energy")
    assert float(fo.execute()["Energy"]) == pytest.approx(energy(images["A"][label == 1]))


def test_table_rows_with_radiomics_and_labels(tmp_path):
    pytest.importorskip("radiomics", reason="pyradiomics (the characterize extra) is not installed")
    from nnunet_liver.characterize.radiomics import RadiomicsExtractor, library

    label, images, sp = painted()
    case = case_from_label_map("c", images, label, sp)
    (row,) = lesion_rows(case, FeatureSettings(), RadiomicsExtractor())
    assert row["hcc"] == 1 and row["phases"] == "A V D" and row["APHE"] is None
    # the crop around the lesion gives what pyradiomics gives on the whole volume with the same settings file
    import SimpleITK as sitk
    from radiomics import featureextractor

    from nnunet_liver.characterize.radiomics import SETTINGS_FILE

    img = sitk.GetImageFromArray(images["A"])
    img.SetSpacing(tuple(reversed(sp)))
    msk = sitk.GetImageFromArray((label == 1).astype(np.uint8))
    msk.CopyInformation(img)
    whole = featureextractor.RadiomicsFeatureExtractor(SETTINGS_FILE).execute(img, msk)
    for key in ("firstorder_Median", "firstorder_Energy", "glcm_Contrast", "glrlm_RunEntropy"):
        assert row[f"rad_A_{key}"] == pytest.approx(float(whole[f"original_{key}"]), rel=1e-5)
    assert row["rad_shape_Sphericity"] == pytest.approx(float(whole["original_shape_Sphericity"]))
    assert "rad_shape_Sphericity" in row and not any(k.startswith("rad_NC_") for k in row)
    assert library()["name"] == "pyradiomics-bhklab" and "binWidth: 25" in library()["settings"]
    table = pd.DataFrame([row])
    csv = tmp_path / "labels.csv"
    csv.write_text("case,lesion_id,hcc,APHE\nc,1,0,1\n", encoding="utf-8")
    merged = merge_labels(table, str(csv))
    assert merged.loc[0, "hcc"] == 0 and merged.loc[0, "APHE"] == 1
    csv.write_text("case,lesion_id,hcc\nc,2,1\n", encoding="utf-8")
    with pytest.raises(InputError, match="lesion 2 is not in the features table"):
        merge_labels(table, str(csv))


def test_no_lesion_no_row():
    label, images, sp = painted()
    label[label == 1] = 7
    assert lesion_rows(case_from_label_map("c", images, label, sp), FeatureSettings(radiomics=False)) == []


def test_phantom_truth_records_the_painted_major_features():
    from nnunet_liver.phantom import generate_case

    case = generate_case(4, shape=(32, 128, 128), lesion_types=["HCC", "Other", "Cyst", "Meta"],
                         lesion_volumes_cm3=[30.0, 8.0, 4.0, 6.0], noise=False)
    lesions = case_from_label_map("p", case.images, case.label, case.spacing).lesions
    truth = {t["type"]: t for t in case.lesions}
    assert {k: truth["HCC"][k] for k in ("aphe", "washout", "capsule")} == {"aphe": True, "washout": True,
                                                                         "capsule": truth["HCC"]["radius_mm"] > 10}
    assert (truth["Other"]["aphe"], truth["Other"]["washout"]) == (True, False)
    assert not any(truth[t][k] for t in ("Cyst", "Meta") for k in ("aphe", "washout", "capsule"))
    from nnunet_liver.characterize.lesions import match_truth

    case_l = case_from_label_map("p", case.images, case.label, case.spacing)
    by_type = {}
    for les in lesions:
        t = match_truth(les, case.lesions)
        assert t is not None and t["type"] == les.type
        by_type[les.type] = sarfati_features(les.mask, les.slices, case_l.images, case_l.parenchyma, case.spacing,
                                             les.diameter_mm)
    assert by_type["HCC"]["f_APHE"] > 20 and by_type["HCC"]["f_NPW"] < -10  # hyper in A, washed out in V
    assert by_type["Other"]["f_APHE"] > 20 and by_type["Other"]["f_NPW"] > -10  # hyper in A, no washout
    assert by_type["Cyst"]["f_APHE"] < -20


# ---------------------------------------------------------------------------------------------- LI-RADS
#: the ACR LI-RADS v2018 CT/MRI diagnostic table written out: (APHE, size column, additional features) -> category
LIRADS_V2018 = {
    (False, "<20", 0): "LR-3", (False, "<20", 1): "LR-3", (False, "<20", 2): "LR-4",
    (False, ">=20", 0): "LR-3", (False, ">=20", 1): "LR-4", (False, ">=20", 2): "LR-4",
    (True, "<10", 0): "LR-3", (True, "<10", 1): "LR-4", (True, "<10", 2): "LR-4",
    (True, "10-19", 0): "LR-3", (True, "10-19", 2): "LR-5",
    (True, ">=20", 0): "LR-4", (True, ">=20", 1): "LR-5", (True, ">=20", 2): "LR-5",
}


@pytest.mark.parametrize("size", [5.0, 9.9, 10.0, 15.0, 19.9, 20.0, 35.0])
@pytest.mark.parametrize("aphe", [False, True])
@pytest.mark.parametrize("washout,capsule,growth", [(w, c, g) for w in (0, 1) for c in (0, 1) for g in (0, 1)])
def test_lirads_table_cell_by_cell(size, aphe, washout, capsule, growth):
    r = lirads_category(size, aphe, bool(washout), bool(capsule), bool(growth))
    n = washout + capsule + growth
    if aphe:
        column = "<10" if size < 10 else ("10-19" if size < 20 else ">=20")
    else:
        column = "<20" if size < 20 else ">=20"
    if aphe and column == "10-19" and n == 1:
        expected = "LR-4" if capsule else "LR-5"  # capsule alone: LR-4; washout or threshold growth: LR-5
    else:
        expected = LIRADS_V2018[(aphe, column, min(n, 2))]
    assert r.category == expected
    assert r.features == {"APHE": aphe, "washout": bool(washout), "capsule": bool(capsule),
                          "threshold_growth": bool(growth)}


def test_lirads_unknown_growth_reports_what_growth_would_change():
    r = lirads_category(15.0, True, False, False)  # 10-19 mm APHE alone: LR-3, with growth LR-5
    assert (r.category, r.category_if_growth) == ("LR-3", "LR-5") and r.features["threshold_growth"] is None
    r = lirads_category(25.0, True, True, True)
    assert (r.category, r.category_if_growth) == ("LR-5", None)
    assert "at high risk" in r.to_dict()["note"] and str(r).startswith("LR-5")
    with pytest.raises(ValueError):
        lirads_category(float("nan"), True, True, True)


# ---------------------------------------------------------------------------------------------- models
def synthetic_table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    t = pd.DataFrame({"case": [f"c{i // 2:02d}" for i in range(n)], "lesion_id": np.arange(n) % 2 + 1,
                      "type": np.where(y == 1, "HCC", "Meta"), "hcc": y, "phases": "A V D",
                      "f_APHE": rng.normal(40 * y, 12), "f_EC": rng.normal(1e6, 3e5, n),
                      "f_NPW": rng.normal(-25 * y, 12), "s": rng.uniform(8, 40, n)})
    t["APHE"] = (t["f_APHE"] > 20).astype(int)
    t["NPW"] = (t["f_NPW"] < -12).astype(int)
    t["EC"] = rng.integers(0, 2, n)
    for c in ("hcc", "APHE", "NPW", "EC"):
        t[c] = t[c].astype("Int64")
    return t


def test_fit_save_load_and_sklearn_cross_check(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from nnunet_liver.characterize.models import FittedModel, fit_model

    t = synthetic_table()
    m = fit_model("HF", t, ["f_APHE", "f_EC", "f_NPW", "s"])
    X = t[["f_APHE", "f_EC", "f_NPW", "s"]].to_numpy(float).copy()
    p = m.predict_proba(X)
    # independent: scikit-learn's own LogisticRegression at the chosen C on the standardised features
    ref = LogisticRegression(C=m.C, max_iter=10000).fit(StandardScaler().fit_transform(X), t["hcc"].astype(int))
    assert np.allclose(p, ref.predict_proba(StandardScaler().fit_transform(X))[:, 1], atol=2e-3)
    assert np.allclose(m.pipeline().predict_proba(X)[:, 1], p)
    path = tmp_path / "HF.json"
    path.write_text(json.dumps(m.to_dict()), encoding="utf-8")
    again = FittedModel.from_dict(json.loads(path.read_text(encoding="utf-8")))
    assert np.array_equal(again.predict_proba(X), p)
    X[0, 2] = np.nan
    assert np.isnan(m.predict_proba(X)[0]) and np.isfinite(m.predict_proba(X)[1:]).all()
    assert m.training["lesions"] == 60 and m.cv["folds"] == 5 and m.cv["grouped_by"] == "case"


def test_cv_folds_keep_cases_together_and_refuse_one_class():
    from nnunet_liver.characterize.models import cv_splits

    t = synthetic_table()
    for tr, te in cv_splits(t["hcc"].astype(int), t["case"].tolist()):
        assert not set(t["case"].iloc[tr]) & set(t["case"].iloc[te])
    with pytest.raises(ValueError, match="at least two positive"):
        cv_splits(np.array([1, 0, 0, 0]), ["a", "b", "c", "d"])


def test_characterizer_save_load_and_mismatch_refusals(tmp_path):
    from nnunet_liver.characterize.characterizer import Characterizer
    from nnunet_liver.characterize.pipeline import AtRisk, characterize, train_characterizer

    t = synthetic_table()
    ch, training = train_characterizer(t, {}, FeatureSettings(radiomics=False))
    assert ch.primary == "HF" and ch.criteria_source == "handcrafted" and ch.phases == ["A", "V"]
    assert sorted(ch.models) == ["HF", "crit_APHE", "crit_EC", "crit_NPW"] and "fold" in training.columns
    folder = str(tmp_path / "char")
    ch.save(folder, training)
    loaded = Characterizer.load(folder)
    out = characterize(loaded, t, at_risk=AtRisk(cases={"c00": True}))
    assert np.allclose(out["hcc_probability"], characterize(ch, t)["hcc_probability"])
    assert out.loc[out["case"] == "c00", "lirads_category"].notna().all()
    assert out.loc[out["case"] != "c00", "lirads_category"].isna().all()  # not at risk: no LI-RADS
    with pytest.raises(InputError, match="has no column 'f_NPW' that characterizer model HF needs"):
        characterize(loaded, t.drop(columns=["f_NPW"]))
    with pytest.raises(InputError, match=r"needs A, V \(missing V\)"):
        loaded.check_phases(["A", "D"], "dataset x")
    manifest = json.loads((tmp_path / "char" / "characterizer.json").read_text(encoding="utf-8"))
    manifest["models"]["HF"]["features"] = ["f_APHE", "f_EC", "f_NPW", "diameter"]
    (tmp_path / "char" / "characterizer.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(InputError, match="features do not match") as e:
        Characterizer.load(folder)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="not a characterizer folder"):
        Characterizer.load(str(tmp_path))


def test_at_risk_csv(tmp_path):
    from nnunet_liver.characterize.pipeline import AtRisk

    p = tmp_path / "risk.csv"
    p.write_text("case,at_risk\na,yes\nb,0\n", encoding="utf-8")
    r = AtRisk.from_option(str(p))
    assert r("a") and not r("b") and not r("c") and AtRisk.from_option("all")("c") and not AtRisk()("a")
    p.write_text("case,at_risk\na,maybe\n", encoding="utf-8")
    with pytest.raises(InputError, match="maybe"):
        AtRisk.from_option(str(p))


# ---------------------------------------------------------------------------------------------- patches, AUC
def test_patch_is_centred_on_the_lesion_and_a_missing_phase_is_constant():
    from nnunet_liver.characterize.patches import center_crop, extract_patch, normalize

    label, images, _ = painted()
    sp = (2.0, 0.76, 0.76)
    case = case_from_label_map("c", images, label, sp)
    (les,) = case.lesions
    p = extract_patch(case.images, les.mask, les.slices, sp, ("A", "V", "NC"), (8, 16, 16), sp)
    assert p.shape == (4, 8, 16, 16)
    assert p[-1].sum() == les.num_voxels  # same grid: the mask is copied whole
    assert np.array_equal(p[-1].astype(bool), label[0:8, 0:16, 0:16] == 1)
    assert (p[2] == -1024).all()
    n = normalize(p)
    assert (n[2] == 0).all() and n[0].max() == pytest.approx((150 - 50) / 100) and set(np.unique(n[-1])) == {0, 1}
    assert center_crop(n, (4, 8, 8)).shape == (4, 4, 8, 8)


def test_auc_and_bootstrap_against_sklearn():
    from sklearn.metrics import roc_auc_score

    from nnunet_liver.characterize.evaluate import auc_with_ci, binary_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = rng.normal(y, 1.0)
    r = auc_with_ci(s, y, n_boot=200)
    assert r["auc"] == pytest.approx(roc_auc_score(y, s))
    assert r["ci95"][0] < r["auc"] < r["ci95"][1]
    m = binary_metrics(1 / (1 + np.exp(-s)), y, n_boot=50)
    assert m["accuracy"] == pytest.approx(np.mean((s >= 0) == (y == 1)))
    assert auc_with_ci(s, np.ones_like(y))["auc"] is None


def test_the_bundled_demo_characterizer_loads_and_separates_textbook_lesions():
    from nnunet_liver.characterize.characterizer import Characterizer
    from nnunet_liver.characterize.cli import demo_characterizer_dir
    from nnunet_liver.characterize.pipeline import AtRisk, characterize

    ch = Characterizer.load(demo_characterizer_dir())
    assert ch.primary == "HF" and ch.criteria_source == "handcrafted" and ch.phases == ["A", "V"]
    assert ch.training["summary"]["lesions"] > 100 and ch.feature_settings.radiomics is False
    t = pd.DataFrame({"case": ["a", "a"], "lesion_id": [1, 2], "phases": "NC A V D", "f_APHE": [40.0, -30.0],
                      "f_EC": [5e7, 5e6], "f_NPW": [-25.0, -40.0], "s": [25.0, 15.0]})
    out = characterize(ch, t, at_risk=AtRisk(everyone=True))
    hcc, cyst = out.iloc[0], out.iloc[1]  # phantom HCC: hyper in A, washed out in V; a cyst: dark throughout
    assert hcc["hcc_probability"] > 0.5 > cyst["hcc_probability"]
    assert hcc["prob_APHE"] > 0.5 > cyst["prob_APHE"] and hcc["prob_NPW"] > 0.5 > cyst["prob_NPW"]
    assert hcc["lirads_category"] == "LR-5" and cyst["lirads_category"] == "LR-3"


def test_bootstrap_of_an_undefined_metric_gives_no_interval():
    from nnunet_liver.characterize.evaluate import binary_metrics

    m = binary_metrics(np.full(10, 0.2), np.array([0, 1] * 5), n_boot=50)  # never a positive call
    assert m["precision"] is None and m["precision_ci95"] is None and m["recall"] == 0.0
