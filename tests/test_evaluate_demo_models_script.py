"""scripts/evaluate_demo_models.py: the acceptance checks and the model card's markdown, on painted cases."""
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_liver.evaluation import metrics as M
from nnunet_liver.labels import CYST, HCC, META
from nnunet_liver.postprocessing import match, seg2det

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate_demo_models as E  # noqa: E402

SP = (10.0, 10.0, 10.0)  # 1 voxel = 1 cm3


def _case():
    """Reference: two neighbouring lesions (META, HCC) and a cyst; the predictions per run."""
    ref = np.zeros((4, 12, 12), np.uint8)
    ref[1, 1:3, 1:4] = META
    ref[1, 1:3, 5:7] = HCC
    ref[1, 8:10, 8:10] = CYST
    base = np.zeros_like(ref)
    base[1, 1:3, 1:4] = META  # META found, HCC and the cyst missed
    base[2, 6:9, 0:3] = CYST  # a false positive
    high = np.zeros_like(ref)
    high[1, 1:3, 1:7] = META  # one detection over both neighbours: HCC merged
    high[1, 8:10, 8:10] = CYST
    return [seg2det(a, SP) for a in (ref, base, high)]


def _fig(base_fp=True):
    ref, base, high = _case()
    if not base_fp:
        base = [l for l in base if l.type != "Cyst"]
    m = {"Base": match(ref, base), "Base+ReCls": match(ref, [l for l in base if l.type != "Cyst"]),
         "High+ReCls": match(ref, high)}
    lesion = {k: E.table_dict(M.lesion_table([v])) for k, v in m.items()}
    patient = {k: M.patient_table([("HCC", "Meta")]).to_dict() for k in m}
    patient["Base+ReCls & High+ReCls"] = M.patient_table([("HCC", "Meta"), ("Cyst", "Cyst"),
                                                          ("HCC", "uncertain")]).to_dict()
    return {"lesion": lesion, "patient": patient, "consensus_lesion": lesion["High+ReCls"],
            "reference_counts": M.reference_counts_table([ref]), "cases": 3, "consensus_cases": 2,
            "high": "High+ReCls", "consensus": "Base+ReCls & High+ReCls"}


def test_checks_follow_the_counts():
    fig = _fig()
    les = fig["lesion"]
    assert (les["Base"]["All"]["FN"], les["Base"]["All"]["FP"]) == (2, 1)
    assert (les["High+ReCls"]["All"]["FN"], les["High+ReCls"]["All"]["FN_merged"]) == (1, 1)
    c = E.checks(fig)
    assert c == {"High+ReCls has fewer FN than Base (All)": True, "Base+ReCls has fewer FP than Base (All)": True,
                 "consensus malignancy sensitivity >= 0.9": True, "consensus malignancy specificity >= 0.9": True}
    c = E.checks(_fig(base_fp=False))  # Base+ReCls removes nothing: not fewer FP
    assert c["Base+ReCls has fewer FP than Base (All)"] is False


def test_markdown_has_the_tables_and_the_merged_false_negatives():
    text = E.markdown(_fig(), {"Base": 60.0})
    for title in ("Table I layout", "Table II layout", "Table IV layout", "Table V layout", "Acceptance checks"):
        assert title in text
    assert "(FN_merged: two neighbours detected as one; part of FN): Base 0 of 2, Base+ReCls 0 of 2, " \
           "High+ReCls 1 of 1." in text
    assert "| Base+ReCls & High+ReCls | 100.0% (1/1) | 100.0% (1/1) | 2 | 1 |" in text
    assert "Base 1.0 min (20.0 s/case)" in text


def _lesions(*paint):
    """seg2det lesions of a (4, 12, 12) map painted with (slices, label) pairs; 1 voxel = 0.125 cm3."""
    a = np.zeros((4, 12, 12), np.uint8)
    for sl, label in paint:
        a[sl] = label
    return seg2det(a, (5.0, 5.0, 5.0))


def test_uncertain_causes_and_consensus_options():
    hem, hcc, cyst = 4, HCC, CYST
    big = (np.s_[1:3, 1:3, 1:4], hem)  # 1.5 cm3
    # f = 4 adds a small HCC nobody else sees: the floor option drops it, so does shared-lesions-first
    f1, f4 = _lesions(big), _lesions(big, (np.s_[2, 8, 8], hcc))
    assert E.uncertain_cause(f1, f4, "Hem", "HCC") == "a lesion only f = 4 finds (< 1 cm3, no reference lesion)"
    assert E.uncertain_cause(f1, f4, "Hem", "HCC", _lesions((np.s_[2, 8, 8:10], hcc))).endswith("a real lesion)")
    assert E.patient_options(f1, f4) == {"paper": "uncertain", "floor": "Hem", "same-first": "Hem"}
    # a lesion both find, typed differently
    f4 = _lesions((np.s_[1:3, 1:3, 1:4], hcc))
    assert E.uncertain_cause(f1, f4, "Hem", "HCC") == "a lesion both find is HCC at f = 4, Hem at f = 1"
    assert E.uncertain_cause(f4, f1, "HCC", "Hem") == "a lesion both find is HCC at f = 1, Hem at f = 4"
    assert E.patient_options(f1, f4)["same-first"] == "uncertain"
    # f = 1's deciding lesion merged into a neighbour, or dropped
    f1 = _lesions((np.s_[1, 1:3, 1:4], cyst), (np.s_[1, 1:3, 5:7], hcc))
    f4 = _lesions((np.s_[1, 1:3, 1:7], cyst))
    assert E.uncertain_cause(f1, f4, "HCC", "Cyst") == "f = 1's HCC lesion merged into a neighbour at f = 4"
    assert E.uncertain_cause(f1, _lesions(big), "HCC", "Hem") == \
        "f = 1's HCC lesion dropped at f = 4 (reclassification)"
    # nothing shared: shared-lesions-first is the paper's rule; floors apply to both factors
    assert E.patient_options(_lesions(), _lesions((np.s_[2, 8, 8], hcc))) == \
        {"paper": "uncertain", "floor": "normal", "same-first": "uncertain"}


def test_extra_rows_need_name_and_folder(tmp_path, capsys):
    """``--run NAME=DIR`` adds a row to the split section's table; a value without '=' is a usage error."""
    args = ["-ref", str(tmp_path), "--base-recls", "a", "--high-recls", "b", "--high-recls-split", "c"]
    with pytest.raises(SystemExit) as e:
        E.main(args + ["--run", "no-folder"])
    assert e.value.code == 2 and "expected NAME=DIR" in capsys.readouterr().err
