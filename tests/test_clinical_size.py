"""The detector's slab path end to end (rule models through nnU-Net's predictor), and a case that does not fit."""
import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_liver.inference import LiverDetector, run_folder
from nnunet_liver.inference.cases import discover_cases, load_case
from nnunet_liver.labels import dataset_json_labels
from nnunet_liver.testing.rule_model import write_rule_model

sys.path.insert(0, str(Path(__file__).parent))
from test_detect import WHOLE_CENTERS, paint_case, write_case  # noqa: E402

pytestmark = pytest.mark.slow  # nnU-Net's predictor on a rule network


@pytest.fixture(scope="module")
def coarse_model(tmp_path_factory):
    """A rule UNet-whole on a coarser grid than the cases (5 x 4 x 4 mm vs 2.5 x 2 x 2): nnU-Net resamples back."""
    root = tmp_path_factory.mktemp("coarse")
    return write_rule_model(str(root / "whole"), dataset_json_labels(), WHOLE_CENTERS, [40.0] * 14, folds=(0, 1),
                            spacing=(5.0, 4.0, 4.0))


def test_detector_equals_full_probability_path(coarse_model, tmp_path):
    from nnunet_liver.inference.predict import predict_probabilities
    from nnunet_liver.postprocessing.patient import liver_max
    from nnunet_liver.postprocessing.seg2det import seg2det
    from nnunet_liver.postprocessing.sensitivity import lesion_sensitivity_masks

    img = paint_case(1)
    img[5:9, 30:36, 20:28] = 110  # a soft lesion: probabilities between liver and HCC
    write_case(tmp_path, "c", img)
    det = LiverDetector(coarse_model, folds=[0, 1], factors=(1, 4))
    case = discover_cases(str(tmp_path), 4)[0]
    res = det.detect_case(case)
    loaded = load_case(case, det.channel_names, allow_missing=False)
    probs = predict_probabilities(det.predictor, det.model, loaded.data, loaded.spacing)
    ref_maps = lesion_sensitivity_masks(probs, (1.0, 4.0))
    for f in (1.0, 4.0):
        np.testing.assert_array_equal(res.label_maps[f], ref_maps[f])
    dense = seg2det(ref_maps[4.0], loaded.spacing, images=loaded.images_by_phase(), probabilities=probs)
    assert len(dense) == len(res.record["lesions"]) >= 2
    for a, b in zip(dense, res.record["lesions"]):
        assert b["score"] == pytest.approx(a.score, rel=1e-6)
        assert b["mean_probability"] == pytest.approx(a.mean_probability, rel=1e-6)
        assert b["num_voxels"] == a.num_voxels and b["bbox"] == [list(x) for x in a.bbox]
        assert b["hu_median"] == a.hu_median and b["features"] == a.features
    assert res.record["patient"]["livermax"] == pytest.approx(liver_max(probs, ref_maps[1.0]), rel=1e-6)


@pytest.mark.parametrize("error", [MemoryError, torch.OutOfMemoryError])
def test_case_that_does_not_fit_fails_alone(coarse_model, tmp_path, monkeypatch, error):
    """A study too large for the machine (MemoryError, torch out of memory) fails with one line; the next goes on."""
    from nnunet_liver.inference import predict

    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a_big", np.pad(paint_case(0), ((0, 4), (0, 0), (0, 0)), constant_values=-1000))
    write_case(inp, "b_ok", paint_case(2))
    real = predict.predict_maps

    def predict_maps(predictor, model, data, spacing, factors, **kwargs):
        if data.shape[1] > 20:  # the "big" case
            raise error("CUDA out of memory. Tried to allocate 5.20 GiB\nmore details" if error is not MemoryError
                        else "Unable to allocate 5.20 GiB for an array with shape (14, 357, 512, 512)")
        return real(predictor, model, data, spacing, factors, **kwargs)

    monkeypatch.setattr(predict, "predict_maps", predict_maps)
    det = LiverDetector(coarse_model, folds=[0])
    result = run_folder(det, str(inp), str(out), progress=False, report=False)
    assert result.done == ["b_ok"] and list(result.failed) == ["a_big"]
    rows = {r["case"]: r for r in csv.DictReader((out / "summary.csv").read_text(encoding="utf-8").splitlines())}
    assert rows["b_ok"]["status"] == "done"
    assert rows["a_big"]["status"] == "failed"
    msg = rows["a_big"]["error"]
    assert "\n" not in msg and msg.startswith("case a_big: ") and error.__name__ in msg
    assert os.path.isfile(out / "a_big_error.txt") and not os.path.exists(out / "a_big.json")


def test_int16_case_gives_the_float32_results(coarse_model, tmp_path, monkeypatch):
    """Holding the case as int16 changes nothing: every output equals that of the same case held as float32."""
    import nnunet_liver.case as cases

    img = paint_case(2)
    img[5:9, 30:36, 20:28] = 110
    write_case(tmp_path, "c", img)
    det = LiverDetector(coarse_model, folds=[0], factors=(1, 4))
    case = discover_cases(str(tmp_path), 4)[0]
    small = det.detect_case(case)
    monkeypatch.setattr(cases, "holds_int16", lambda array: False)
    wide = det.detect_case(case)
    assert small.case.data.dtype == np.int16 and wide.case.data.dtype == np.float32
    np.testing.assert_array_equal(small.case.data, wide.case.data)
    for key in ("lesions", "patient", "detections_by_factor"):
        assert small.record[key] == wide.record[key]
    assert len(small.record["lesions"]) >= 1
    np.testing.assert_array_equal(small.instance_map, wide.instance_map)
    for f in (1.0, 4.0):
        np.testing.assert_array_equal(small.label_maps[f], wide.label_maps[f])
