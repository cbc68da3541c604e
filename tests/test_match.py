"""match: TP/FL/FP/FN on painted cases, one-to-one assignment, size floors, overlap criteria, empty cases."""
import numpy as np
import pytest

from nnunet_liver.labels import CYST, HCC, META
from nnunet_liver.postprocessing import match, parse_overlap, seg2det

SP = (1.0, 1.0, 1.0)  # 1 voxel = 0.001 cm3


def _det(lm):
    return seg2det(lm, SP)


def _vol():
    return np.zeros((8, 16, 16), np.uint8)


def test_tp_fl_fp_fn_golden():
    ref, pred = _vol(), _vol()
    ref[0:2, 0:4, 0:4] = HCC   # TP: same type
    pred[0:2, 1:5, 1:5] = HCC
    ref[4:6, 0:4, 0:4] = META  # FL: overlaps a Cyst
    pred[5:7, 2:4, 2:4] = CYST
    ref[0:2, 10:14, 10:14] = CYST  # FN
    pred[5:8, 10:14, 10:14] = META  # FP
    r = match(_det(ref), _det(pred), 0, 0)
    assert (r.tp, r.fl, r.fp, r.fn) == (1, 1, 1, 1)
    assert r.per_type["HCC"] == {"tp": 1, "fl": 0, "fp": 0, "fn": 0, "fl_pred": 0, "fn_merged": 0}
    assert r.per_type["Meta"] == {"tp": 0, "fl": 1, "fp": 1, "fn": 0, "fl_pred": 0, "fn_merged": 0}
    assert r.per_type["Cyst"] == {"tp": 0, "fl": 0, "fp": 0, "fn": 1, "fl_pred": 1, "fn_merged": 0}
    assert r.merged_reference == []  # the FN overlaps nothing: missed, not merged
    assert r.pair_types == [("HCC", "HCC"), ("Meta", "Cyst")]
    assert r.recall == pytest.approx(1 / 3) and r.precision == pytest.approx(1 / 3)


def test_one_to_one_when_two_predictions_overlap_one_lesion():
    ref, pred = _vol(), _vol()
    ref[2:4, 2:10, 2:10] = HCC
    pred[2:4, 2:5, 2:5] = HCC   # overlap 18
    pred[2:4, 6:10, 6:10] = HCC  # overlap 32: the Hungarian keeps this one
    r = match(_det(ref), _det(pred), 0, 0)
    assert (r.tp, r.fl, r.fp, r.fn) == (1, 0, 1, 0)
    assert r.pairs == [(1, 2)] and r.unmatched_prediction == [1]


def test_fn_merged_when_one_detection_covers_two_lesions():
    # two neighbouring lesions, one detection over both (what a high sensitivity factor makes of them), and a
    # third lesion nothing overlaps: 1 TP, 2 FN of which 1 merged
    ref, pred = _vol(), _vol()
    ref[2:4, 2:6, 2:6] = META    # 32 voxels
    ref[2:4, 2:6, 7:9] = HCC     # 16 voxels, one voxel apart
    pred[2:4, 2:6, 2:9] = META   # covers both: the Hungarian pairs it with the larger overlap (META)
    ref[6:8, 10:14, 10:14] = CYST  # missed
    r = match(_det(ref), _det(pred), 0, 0)
    assert (r.tp, r.fl, r.fp, r.fn) == (1, 0, 0, 2)
    hcc_id = [l.id for l in _det(ref) if l.type == "HCC"][0]
    assert r.merged_reference == [hcc_id]
    assert r.per_type["HCC"]["fn_merged"] == 1 and r.per_type["Cyst"]["fn_merged"] == 0
    assert r.to_dict()["merged_reference"] == [hcc_id]
    from nnunet_liver.evaluation.metrics import lesion_table
    t = lesion_table([r])
    assert (t["All"].fn, t["All"].fn_merged) == (2, 1)
    assert (t["Malign"].fn, t["Malign"].fn_merged) == (1, 1) and t["Cyst"].fn_merged == 0
    from nnunet_liver.evaluation.metrics import strata_table
    strata = strata_table([(r, {l.id: 1.0 if l.type == "HCC" else 3.0 for l in _det(ref)},
                            {l.id: 5.0 for l in _det(pred)})])
    assert (strata["0.5-2"].fn, strata["0.5-2"].fn_merged) == (1, 1)
    assert (strata["2-4"].fn, strata["2-4"].fn_merged, strata["2-4"].tp) == (1, 0, 1)
    # the size floor: a merged reference below it takes no part, so it is neither FN nor merged
    r = match(_det(ref), _det(pred), min_ref_volume_cm3=0.02, min_pred_volume_cm3=0)
    assert r.fn == 1 and r.merged_reference == []


def test_hungarian_maximises_total_overlap():
    # greedy on the largest overlap would pair ref A with pred 2 and leave ref B unmatched
    ref, pred = _vol(), _vol()
    ref[1, 0:2, 0:10] = HCC    # A: 20 voxels
    ref[1, 4:6, 6:10] = META   # B: 8 voxels
    pred[1, 0:2, 0:3] = HCC    # pred 1 overlaps A by 6
    pred[1, 0:6, 6:10] = META  # pred 2 overlaps A by 8 and B by 8
    r = match(_det(ref), _det(pred), 0, 0)
    assert sorted(r.pairs) == [(1, 1), (2, 2)]
    assert (r.tp, r.fl, r.fp, r.fn) == (2, 0, 0, 0)


def test_size_floors():
    ref, pred = _vol(), _vol()
    ref[0:2, 0:2, 0:2] = HCC            # 8 voxels = 0.008 cm3: below a 0.01 floor -> ignored
    pred[0:2, 0:2, 0:2] = HCC           # its prediction: neither TP nor FP
    pred[5:7, 10:13, 10:13] = META      # 18 voxels unmatched: FP at floor 0.01
    pred[5, 0, 0] = CYST                # 1 voxel unmatched: ignored at floor 0.01
    r = match(_det(ref), _det(pred), min_ref_volume_cm3=0.01, min_pred_volume_cm3=0.01)
    assert (r.tp, r.fl, r.fp, r.fn) == (0, 0, 1, 0)
    assert r.ignored_reference == [1] and sorted(r.ignored_prediction) == [1, 2]
    r0 = match(_det(ref), _det(pred), 0, 0)
    assert (r0.tp, r0.fp) == (1, 2)


def test_overlap_criteria():
    ref, pred = _vol(), _vol()
    ref[2, 0:10, 0:10] = HCC    # 100 voxels
    pred[2, 0:10, 0:3] = HCC    # 30 voxels, IoU 0.3, Dice 2*30/130 = 0.46
    d_r, d_p = _det(ref), _det(pred)
    assert match(d_r, d_p, 0, 0, overlap="any").tp == 1
    assert match(d_r, d_p, 0, 0, overlap="iou:0.1").tp == 1
    r = match(d_r, d_p, 0, 0, overlap="iou:0.5")
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)
    assert match(d_r, d_p, 0, 0, overlap="dice:0.4").tp == 1
    assert match(d_r, d_p, 0, 0, overlap="dice:0.5").tp == 0
    assert match(d_r, d_p, 0, 0, overlap="iou:0.1").pair_overlap == [pytest.approx(0.3)]


@pytest.mark.parametrize("bad", ["iou", "iou:1.5", "dice:x", "overlap", "iou:-0.1"])
def test_bad_overlap(bad):
    with pytest.raises(ValueError, match="overlap"):
        parse_overlap(bad)


def test_empty_cases():
    ref = _vol()
    ref[2:4, 2:6, 2:6] = CYST
    d = _det(ref)
    assert (lambda r: (r.tp, r.fl, r.fp, r.fn))(match([], [], 0, 0)) == (0, 0, 0, 0)
    r = match(d, [], 0, 0)
    assert (r.fn, r.fp, r.unmatched_reference) == (1, 0, [1])
    r = match([], d, 0, 0)
    assert (r.fn, r.fp, r.unmatched_prediction) == (0, 1, [1])
    assert np.isnan(match([], [], 0, 0).recall)


def test_same_diff_split_between_sensitivities():
    f1, f4 = _vol(), _vol()
    f1[2:4, 2:6, 2:6] = HCC
    f4[2:4, 2:7, 2:7] = HCC   # grows at f = 4: same
    f4[6, 10:12, 10:12] = META  # only at f = 4: diff
    r = match(_det(f1), _det(f4), min_ref_volume_cm3=0, min_pred_volume_cm3=0)
    assert r.pairs == [(1, 1)] and r.unmatched_prediction == [2]
    assert r.to_dict()["unmatched_prediction"] == [2]


def test_random_against_brute_force_overlaps():
    rng = np.random.default_rng(3)
    for _ in range(5):
        ref = np.where(rng.random((8, 16, 16)) < 0.08, rng.integers(1, 7, (8, 16, 16)), 0).astype(np.uint8)
        pred = np.where(rng.random((8, 16, 16)) < 0.08, rng.integers(1, 7, (8, 16, 16)), 0).astype(np.uint8)
        dr, dp = _det(ref), _det(pred)
        r = match(dr, dp, 0, 0)
        # brute force: the number of matched pairs equals the maximum bipartite matching size of overlapping pairs
        from scipy.optimize import linear_sum_assignment
        from nnunet_liver.postprocessing import instance_map
        ir, ip = instance_map(dr, ref.shape), instance_map(dp, pred.shape)
        ov = np.zeros((len(dr), len(dp)))
        both = (ir > 0) & (ip > 0)
        np.add.at(ov, (ir[both].astype(int) - 1, ip[both].astype(int) - 1), 1)
        rows, cols = linear_sum_assignment(ov, maximize=True)
        assert sum(ov[rows, cols]) == sum(r.pair_overlap)
        assert r.tp + r.fl + r.fn == len(dr) and r.tp + r.fl + r.fp == len(dp)
