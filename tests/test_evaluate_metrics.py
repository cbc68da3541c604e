"""Metric formulas: golden values from Wang et al.'s Table V, AUC and AP against scikit-learn, Dice against nnU-Net."""
import numpy as np
import pytest

from nnunet_liver.evaluation import (auc_mann_whitney, auc_table, average_precision, froc, lesion_row,
                                     lesion_table, patient_table, size_bin)
from nnunet_liver.evaluation.metrics import confusion_counts, dice_from_counts
from nnunet_liver.labels import CYST, HCC, META
from nnunet_liver.postprocessing import match, seg2det


@pytest.mark.parametrize("counts, expected", [
    # Wang et al. Table V (High+ReCls): TP, FL, FP, FN, FL_pred -> precision, recall, recall-rough
    ((223, 13, 6, 11, 33), (0.851, 0.903, 0.955)),   # HCC
    ((8, 5, 1, 0, 4), (0.615, 0.615, 1.0)),          # ICC
    ((25, 24, 6, 8, 7), (0.658, 0.439, 0.860)),      # Other
    ((448, 64, 26, 38, None), (0.833, 0.815, 0.931)),  # All
    ((385, 9, 15, 24, 0), (0.963, 0.921, 0.943)),    # Malign
])
def test_lesion_row_reproduces_table_v(counts, expected):
    tp, fl, fp, fn, flp = counts
    r = lesion_row(tp, fl, fp, fn, flp)
    assert (r.precision, r.recall, r.recall_rough) == pytest.approx(expected, abs=5e-4)
    assert (r.tp, r.fl, r.fp, r.fn) == (tp, fl, fp, fn)
    assert list(r.to_dict()) == ["FN", "FP", "FL", "TP", "FL_pred", "FN_merged", "precision", "recall",
                                 "recall_rough"]
    assert (r.to_dict()["TP"], r.to_dict()["FL_pred"]) == (tp, fl if flp is None else flp)


def test_lesion_row_empty_is_undefined():
    r = lesion_row(0, 0, 0, 0)
    assert r.precision is None and r.recall is None and r.recall_rough is None


def test_lesion_table_malign_group_and_fl_pred():
    ref, pred = np.zeros((8, 16, 16), np.uint8), np.zeros((8, 16, 16), np.uint8)
    ref[0:2, 0:4, 0:4] = HCC
    pred[0:2, 0:4, 0:4] = META   # FL for HCC, but a Malign TP
    ref[4:6, 0:4, 0:4] = CYST
    pred[4:6, 0:4, 0:4] = HCC    # FL for Cyst, FL_pred for HCC and Malign
    ref[0:2, 8:12, 8:12] = META  # FN
    m = match(seg2det(ref, (1, 1, 1)), seg2det(pred, (1, 1, 1)), 0, 0)
    t = lesion_table([m])
    assert (t["HCC"].fl, t["HCC"].fl_pred, t["HCC"].tp) == (1, 1, 0)
    assert t["Malign"].tp == 1 and t["Malign"].fl == 0 and t["Malign"].fl_pred == 1
    assert t["Malign"].fn == 1
    assert t["Malign"].recall == pytest.approx(0.5) and t["Malign"].precision == pytest.approx(0.5)
    assert (t["All"].tp, t["All"].fl, t["All"].fn, t["All"].fp) == (0, 2, 1, 0)


def test_size_bins_of_table_i():
    assert [size_bin(v) for v in (0.2, 0.5, 1.99, 2, 7.9, 8, 16, 63.9, 64, 500)] == \
        ["<0.5", "0.5-2", "0.5-2", "2-4", "4-8", "8-16", "16-64", "16-64", ">64", ">64"]


def test_patient_table_golden():
    pairs = [("HCC", "HCC"), ("HCC", "Cyst"), ("Meta", "uncertain"), ("normal", "normal"),
             ("Cyst", "ICC"), ("Hem", "Hem"), ("normal", "Cyst")]
    t = patient_table(pairs)
    assert (t.cases, t.uncertain, t.certain, t.correct_class) == (7, 1, 6, 3)
    assert (t.malignant_tp, t.malignant_fn, t.malignant_tn, t.malignant_fp) == (1, 1, 3, 1)
    assert t.malignancy_sensitivity == pytest.approx(0.5)
    assert t.malignancy_specificity == pytest.approx(0.75)
    assert t.class_accuracy == pytest.approx(0.5)
    assert t.to_dict()["uncertain"] == 1 and list(t.to_dict())[:4] == ["cases", "uncertain", "certain",
                                                                       "correct_class"]
    empty = patient_table([])
    assert (empty.cases, empty.malignancy_sensitivity, empty.class_accuracy) == (0, None, None)


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_sklearn(seed):
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(seed)
    y = rng.random(40) < 0.4
    s = np.round(rng.random(40) + 0.3 * y, 1)  # rounded: many ties
    assert auc_mann_whitney(s, y) == pytest.approx(roc_auc_score(y, s))


def test_auc_undefined_and_table():
    assert auc_mann_whitney([0.1, 0.2], [True, True]) is None
    t = auc_table([({"HCC": 0.9, "Cyst": 0.1}, {"HCC"}), ({"HCC": 0.2, "Cyst": 0.8}, {"Cyst"}),
                   ({"HCC": 0.6}, set())])
    assert t.per_type["HCC"].auc == 1.0 and t.per_type["Cyst"].auc == 1.0 and t.per_type["ICC"].auc is None
    assert (t.mean, t.types, t.cases) == (1.0, 2, 3)
    d = t.to_dict()
    assert d["mean"] == {"auc": 1.0, "types": 2} and d["cases"] == 3
    assert d["HCC"] == {"auc": 1.0, "positives": 1, "negatives": 2}


@pytest.mark.parametrize("seed", range(3))
def test_average_precision_matches_sklearn(seed):
    from sklearn.metrics import average_precision_score
    rng = np.random.default_rng(seed)
    hits = rng.random(30) < 0.5
    s = np.round(rng.random(30) + 0.4 * hits, 2)
    n_hits = int(hits.sum())
    assert average_precision(s, hits, n_hits) == pytest.approx(average_precision_score(hits, s))
    # missed reference lesions cap recall: AP scales by the reachable recall
    assert average_precision(s, hits, 2 * n_hits) == pytest.approx(average_precision_score(hits, s) / 2)


def test_froc_golden():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    hits = [True, False, True, False, False, True]
    f = froc(scores, hits, num_references=4, num_cases=2)
    # thresholds: FP/case 0, .5, .5, 1, 1.5, 1.5 ; sensitivity .25, .25, .5, .5, .5, .75
    assert f.sensitivity_at == {"0.125": 0.25, "0.25": 0.25, "0.5": 0.5, "1": 0.5, "2": 0.75, "4": 0.75, "8": 0.75}
    assert f.to_dict()["curve"]["fp_per_case"] == f.fp_per_case == [0.0, 0.5, 0.5, 1.0, 1.5, 1.5]
    assert froc([], [], 3, 2).sensitivity_at["8"] == 0.0


def test_dice_matches_nnunet():
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
    rng = np.random.default_rng(0)
    for _ in range(5):
        r, p = rng.random((8, 16, 16)) < 0.3, rng.random((8, 16, 16)) < 0.3
        tp, fp, fn, tn = compute_tp_fp_fn_tn(r, p)
        assert confusion_counts(r, p) == (tp, fp, fn, tn)
        assert dice_from_counts(*confusion_counts(r, p)[:3]) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    z = np.zeros((2, 2, 2), bool)
    assert dice_from_counts(*confusion_counts(z, z)[:3]) is None


def test_dice_summary_mean_over_defined_cases_and_pooled():
    from nnunet_liver.evaluation.metrics import dice_summary

    s = dice_summary([(2, 1, 1), (0, 0, 0), (1, 0, 3)])  # per case 4/6, undefined, 2/5
    assert (s.mean, s.cases) == (pytest.approx((4 / 6 + 2 / 5) / 2), 2)
    assert s.pooled == pytest.approx(6 / 11)  # tp 3, fp 1, fn 4
    assert list(s.to_dict()) == ["mean", "cases", "global"]
    none = dice_summary([(0, 0, 0)])
    assert (none.mean, none.cases, none.pooled) == (None, 0, None)
