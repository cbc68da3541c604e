"""nnunet-liver-characterize end to end on tiny phantoms (a deep sub-model trained for a few iterations), and the
detector's second stage (nnunet-liver-detect --characterizer) with the rule models of test_detect."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nnunet_liver.characterize.cli import main

pytestmark = pytest.mark.slow  # trains the deep sub-models (seconds) / runs nnU-Net's predictor

TINY_DEEP = {"patch_size": [8, 16, 16], "spacing": [5.0, 3.0, 3.0], "features_per_stage": [4, 8],
             "strides": [[1, 1, 1], [2, 2, 2]], "hidden": 8, "iterations": 2, "batch_size": 4}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from nnunet_liver.characterize.phantoms import write_lesion_phantoms

    root = tmp_path_factory.mktemp("characterize")
    train = write_lesion_phantoms(str(root / "train"), 8, seed=3, shape=(24, 96, 96), hcc_fraction=0.5,
                                  progress=False)
    test = write_lesion_phantoms(str(root / "test"), 4, seed=4, shape=(24, 96, 96), hcc_fraction=0.5,
                                 progress=False)
    return root, train, test


def test_train_predict_evaluate_with_deep_submodels(phantoms, capsys):
    pytest.importorskip("radiomics", reason="pyradiomics (the characterize extra) is not installed")
    root, train, test = phantoms
    settings = root / "deep.json"
    settings.write_text(json.dumps(TINY_DEEP), encoding="utf-8")
    model = str(root / "char")
    assert main(["train", "-i", train, "-o", model, "--deep", "--deep-settings", str(settings), "--folds", "2"]) == 0
    manifest = json.loads(Path(model, "characterizer.json").read_text(encoding="utf-8"))
    assert manifest["primary"] == "DLF+HF" and manifest["criteria_source"] == "deep"
    assert set(manifest["models"]) >= {"HF", "DLF", "DLF+HF", "RAD", "RAD+DLF"}
    assert manifest["deep"]["submodels"]["APHE"]["channels"] == ["A", "V", "mask"]
    assert len(manifest["deep"]["submodels"]["HCC"]["files"]) == 2
    assert manifest["training"]["summary"]["lesions"] > 0 and "scikit-learn" in manifest["versions"]
    training = pd.read_csv(os.path.join(model, "training_table.csv"))
    assert set(training["fold"]) == {0, 1} and training["p_HCC"].between(0, 1).all()  # out-of-fold
    out = str(root / "pred.csv")
    assert main(["predict", "-i", test, "-m", model, "-o", out, "--at-risk"]) == 0
    pred = pd.read_csv(out)
    assert pred["hcc_probability"].between(0, 1).all() and pred["prob_EC"].between(0, 1).all()
    assert pred["lirads_category"].isin(["LR-3", "LR-4", "LR-5"]).all()
    assert json.loads(Path(out[:-4] + ".json").read_text(encoding="utf-8"))["at_risk"].startswith("--at-risk")
    assert main(["predict", "-i", test, "-m", model, "-o", out, "--model", "HF"]) == 0
    pred_hf = pd.read_csv(out)
    assert np.allclose(pred_hf["hcc_probability"], pred["hcc_probability_HF"]) and pred_hf["lirads_category"].isna().all()
    ev = str(root / "eval")
    assert main(["evaluate", "-m", model, "-i", test, "-o", ev, "--bootstrap", "20"]) == 0
    result = json.loads(Path(ev, "characterize_eval.json").read_text(encoding="utf-8"))
    assert set(result["table2"]) >= {"DL baseline", "HF", "DLF", "DLF+HF", "RAD"}
    assert len(result["table2"]["HF"]["per_fold"]) == 2 and "final" in result["table3"]["DLF+HF"]
    assert set(result["nolte"]) >= {"RAD", "DLF", "RAD+DLF"}
    assert "Table 2 layout" in Path(ev, "characterize_eval.md").read_text(encoding="utf-8")
    # a table cannot feed deep sub-models; a dataset without V cannot feed HF (f_NPW on V): one line, exit 2
    capsys.readouterr()
    assert main(["predict", "-t", out, "-m", model, "-o", str(root / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "images" in err[0]


def test_hf_characterizer_refuses_a_dataset_without_its_phases(phantoms, capsys, tmp_path):
    root, train, _ = phantoms
    model = str(tmp_path / "hf")
    assert main(["train", "-i", train, "-o", model, "--no-radiomics", "--folds", "2"]) == 0
    ds = tmp_path / "av"  # the same phantoms with only A and D: Eq. (1)'s NPW has no V
    os.makedirs(ds / "imagesTr")
    os.symlink(os.path.join(train, "labelsTr"), ds / "labelsTr")
    for name in os.listdir(os.path.join(train, "imagesTr")):  # A (_0001) -> channel 0, D (_0003) -> channel 1
        for src, dst in (("_0001.nii.gz", "_0000.nii.gz"), ("_0003.nii.gz", "_0001.nii.gz")):
            if name.endswith(src):
                os.symlink(os.path.join(train, "imagesTr", name), ds / "imagesTr" / (name[:-len(src)] + dst))
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "A", "1": "D"}, "labels": {},
                                                 "file_ending": ".nii.gz"}), encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", "-i", str(ds), "-m", model, "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs A, V (missing V)" in err[0]
    assert not os.path.exists(tmp_path / "p.csv")
    # trained with the washout read on D, the same characterizer works on A + D
    model_d = str(tmp_path / "hf_d")
    assert main(["train", "-i", train, "-o", model_d, "--no-radiomics", "--folds", "2", "--washout-phase", "D"]) == 0
    assert main(["predict", "-i", str(ds), "-m", model_d, "-o", str(tmp_path / "p.csv")]) == 0
    assert pd.read_csv(tmp_path / "p.csv")["hcc_probability"].between(0, 1).all()


# ------------------------------------------------------------------------------ nnunet-liver-detect --characterizer
sys.path.insert(0, str(Path(__file__).parent))
from test_detect import models, paint_case, read_outputs, validate, write_case  # noqa: E402,F401


def _table_characterizer(folder):
    """An HF characterizer fitted on a synthetic table (no images): HCC = bright in A and dark in V."""
    from test_characterize import synthetic_table

    from nnunet_liver.characterize.pipeline import train_characterizer
    from nnunet_liver.characterize.table import FeatureSettings

    ch, training = train_characterizer(synthetic_table(), {}, FeatureSettings(radiomics=False))
    ch.save(folder, training)
    return folder


def test_detect_with_characterizer_adds_probabilities_and_lirads(models, tmp_path, capsys):
    from nnunet_liver.inference.cli import main as detect

    char = _table_characterizer(str(tmp_path / "char"))
    inp = tmp_path / "in"
    img = paint_case(0)  # liver 60 HU, an HCC at 150 HU (labelled by UNet-whole's rule) and a weak lesion
    write_case(inp, "case_a", img)
    risk = tmp_path / "risk.csv"
    risk.write_text("case,at_risk\ncase_a,1\n", encoding="utf-8")
    out = tmp_path / "out"
    assert detect(["-i", str(inp), "-o", str(out), "-m", models["whole"], "--patch-model", "none",
                   "--characterizer", char, "--at-risk", str(risk)]) == 0
    rec, _ = read_outputs(out, "case_a")
    validate(rec)
    assert rec["characterization"]["at_risk"] is True and rec["characterization"]["characterizer"]["primary"] == "HF"
    for les in rec["lesions"]:
        assert 0 <= les["hcc_probability"] <= 1
        assert set(les["criteria_probabilities"]) == {"APHE", "NPW", "EC"}
        assert les["lirads"]["category"] in ("LR-3", "LR-4", "LR-5")
        assert les["characterization"]["features"]["s"] == pytest.approx(les["diameter_mm"])
    hcc = max(rec["lesions"], key=lambda l: l["volume_cm3"])
    # f_APHE of the bright HCC against the 60 HU liver: Eq. (1) on the detected mask
    assert hcc["characterization"]["features"]["f_APHE"] == pytest.approx(150 - 60)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Characterization" in report and "LI-RADS applies only to patients at high risk" in report
    # not at risk: probabilities, no LI-RADS; a characterizer needing a phase the model lacks: one line, exit 2
    out2 = tmp_path / "out2"
    assert detect(["-i", str(inp), "-o", str(out2), "-m", models["whole"], "--patch-model", "none",
                   "--characterizer", char]) == 0
    rec2, _ = read_outputs(out2, "case_a")
    validate(rec2)
    assert all(l["lirads"] is None and "not flagged at risk" in l["characterization"]["reason"]
               for l in rec2["lesions"])
    assert [l["hcc_probability"] for l in rec2["lesions"]] == [l["hcc_probability"] for l in rec["lesions"]]
    capsys.readouterr()
    assert detect(["-i", str(inp), "-o", str(tmp_path / "out3"), "-m", models["whole"], "--at-risk"]) == 2
    assert "--at-risk needs --characterizer" in capsys.readouterr().err


REAL_HCC = Path(__file__).parents[1].parent / "shared" / "realdata" / "hcc_tace_1720"


@pytest.mark.skipif(not (REAL_HCC / "D.nii.gz").is_file(), reason="real data not available (../shared/realdata)")
def test_real_hccs_show_the_textbook_signs_in_eq1(tmp_path):
    """The real two-phase HCC case (A and D, registered onto D by the converter): both HCCs are brighter than the liver
    in A and darker in D (f_NPW read on D), and a characterizer reading washout on D gives them probabilities."""
    from nnunet_liver.dataset_conversion.cli import main as convert_main

    raw = tmp_path / "raw"
    assert convert_main(["multiphase", "-i", str(REAL_HCC), "-d", "652", "-o", str(raw), "--phases", "A,D",
                         "--reference-phase", "D"]) == 0
    ds = str(raw / "Dataset652_MultiPhase")
    out = str(tmp_path / "real.csv")
    assert main(["features", "-i", ds, "-o", out, "--no-radiomics", "--washout-phase", "D"]) == 0
    t = pd.read_csv(out)
    assert list(t["type"]) == ["HCC", "HCC"] and t["volume_cm3"].round(0).tolist() == [57.0, 31.0]
    assert (t["f_APHE"] > 5).all() and (t["f_NPW"] < -5).all() and (t["f_EC"] > 0).all()
    table = pd.DataFrame({"case": [f"c{i}" for i in range(12)], "lesion_id": 1, "phases": "A D",
                          "hcc": [1, 0] * 6, "f_APHE": [30, -5] * 6, "f_EC": [1e8, 2e7] * 6,
                          "f_NPW": [-15, 5] * 6, "s": [30, 20] * 6, "APHE": [1, 0] * 6, "NPW": [1, 0] * 6,
                          "EC": [1, 0, 0, 0] * 3})
    table.loc[0, "f_APHE"], table.loc[1, "f_APHE"] = 8.0, 12.0  # not separable: a finite C
    table.loc[0, "f_NPW"], table.loc[1, "f_NPW"] = 2.0, -3.0
    for c in ("hcc", "APHE", "NPW", "EC"):
        table[c] = table[c].astype("Int64")
    from nnunet_liver.characterize.pipeline import train_characterizer
    from nnunet_liver.characterize.table import FeatureSettings

    ch, training = train_characterizer(table, {}, FeatureSettings(washout_phase="D", radiomics=False))
    ch.save(str(tmp_path / "char"), training)
    assert ch.phases == ["A", "D"]
    assert main(["predict", "-i", ds, "-m", str(tmp_path / "char"), "-o", out, "--at-risk"]) == 0
    pred = pd.read_csv(out)
    assert pred["hcc_probability"].between(0, 1).all() and pred["lirads_category"].notna().all()


def test_sr_carries_the_characterization(tmp_path):
    """A DICOM study through nnunet-liver-detect --characterizer --at-risk: the TID 1500 SR holds each lesion's HCC
    and criteria probabilities as measurements and the LI-RADS suggestion as a qualitative evaluation (and, where
    dicom3tools is installed, dciodvfy finds no error)."""
    import shutil
    import subprocess

    hd = pytest.importorskip("highdicom")
    from test_dicom_detect import CENTERS

    from nnunet_liver.inference.cli import main as detect
    from nnunet_liver.labels import dataset_json_labels
    from nnunet_liver.testing.dicom_study import phantom, write_study
    from nnunet_liver.testing.rule_model import write_rule_model

    model = write_rule_model(str(tmp_path / "whole"), dataset_json_labels(), CENTERS, [40.0] * 14, folds=(0,),
                             spacing=(5.0, 4.0, 4.0))
    char = _table_characterizer(str(tmp_path / "char"))
    inp, out = tmp_path / "in", tmp_path / "out"
    write_study(str(inp / "patient1"), phantom(0), times=False)
    assert detect(["-i", str(inp), "-o", str(out), "-m", model, "--device", "cpu", "--disable-tta",
                   "--characterizer", char, "--at-risk"]) == 0
    rec = json.loads((out / "patient1.json").read_text(encoding="utf-8"))
    assert rec["lesions"]
    sr = hd.sr.srread(str(out / "patient1_sr.dcm"))
    for group, les in zip(sr.content.get_volumetric_roi_measurement_groups(), rec["lesions"]):
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values["hcc-probability"] == pytest.approx(les["hcc_probability"])
        assert values["NPW-probability"] == pytest.approx(les["criteria_probabilities"]["NPW"])
        evals = {q.name.value: q.value.value for q in group.get_qualitative_evaluations()}
        assert evals["lirads"] == les["lirads"]["category"]
    if shutil.which("dciodvfy"):
        proc = subprocess.run(["dciodvfy", str(out / "patient1_sr.dcm")], capture_output=True, text=True)
        assert not [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("Error")]


def test_same_lesion_comparison_reads_the_detectors_outputs(phantoms, tmp_path):
    """Detector outputs written by hand from the test phantoms' reference (every lesion found, typed right, UNet-patch
    voting HCC for the HCCs only): the same-lesion table matches every lesion and scores the cascade's type 100 %."""
    import SimpleITK as sitk

    from nnunet_liver.characterize.lesions import dataset_cases
    from nnunet_liver.characterize.report import same_lesion_table
    from nnunet_liver.postprocessing.seg2det import instance_map, seg2det
    from nnunet_liver.utils.io import read_image

    _, _, test = phantoms
    dets = tmp_path / "dets"
    dets.mkdir()
    keys, probs = [], []
    for case in dataset_cases(test):
        label, spacing, img = read_image(os.path.join(test, "labelsTr", f"{case}.nii.gz"))
        lesions = seg2det(label, spacing)
        inst = sitk.GetImageFromArray(instance_map(lesions, label.shape))
        inst.CopyInformation(img)
        sitk.WriteImage(inst, str(dets / f"{case}_lesions.nii.gz"))
        entries = [{"id": l.id, "label": l.label, "type": l.type, "hcc_probability": 0.5,
                    "reclassification": {"votes_cm3": {"HCC": 1.0 if l.type == "HCC" else 0.0, "Meta": 1.0}},
                    "mean_probability": {"HCC": 0.9 if l.type == "HCC" else 0.1}} for l in lesions]
        (dets / f"{case}.json").write_text(json.dumps({"lesions": entries, "patient": {"livermax": {"HCC": 0.7}}}),
                                           encoding="utf-8")
        for l in lesions:
            keys.append((case, l.id))
            probs.append(1.0 if l.type == "HCC" else 0.0)
    out = pd.DataFrame({"case": [k[0] for k in keys], "lesion_id": [k[1] for k in keys], "hcc_probability": probs})
    r = same_lesion_table(test, "Tr", str(dets), out, n_boot=20)
    assert r["matched"] == r["reference_lesions"] == len(keys)
    for name in ("cascade type is HCC", "UNet-patch HCC vote share", "UNet-whole mean HCC probability",
                 "characterizer (reference mask)"):
        assert r["scores"][name]["auc"] == 1.0
    assert r["scores"]["characterizer (detected mask)"]["auc"] == 0.5  # a constant score
    assert r["scores"]["LiverMax HCC (patient)"]["auc"] == 0.5
