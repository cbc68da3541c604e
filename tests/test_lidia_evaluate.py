"""The evaluation of the lesion head: LIDIA's per-type one-vs-rest AUC of its probabilities over the matched lesions
(golden values, scikit-learn's roc_auc_score as the independent reference), beside LiverMax's AUC in summary.json."""
import json
import sys
from pathlib import Path

import pytest

from nnunet_liver.evaluation.cli import main
from nnunet_liver.evaluation.metrics import lesion_type_auc_table
from nnunet_liver.labels import LESION_NAMES

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluate_cli import _cases, _write, folders  # noqa: E402,F401


def _p(**kw):
    return {n: kw.get(n, 0.0) for n in LESION_NAMES}


LESIONS = [(_p(HCC=0.8, Cyst=0.1, Meta=0.05), "HCC"), (_p(HCC=0.4, Cyst=0.3, Meta=0.2), "HCC"),
           (_p(HCC=0.5, Cyst=0.6, Meta=0.2), "Cyst"), (_p(HCC=0.1, Cyst=0.2, Meta=0.5), "Meta")]


def test_lesion_type_auc_golden_and_against_sklearn():
    t = lesion_type_auc_table(LESIONS)
    # HCC: positives 0.8, 0.4 against negatives 0.5, 0.1 -> 3 of 4 pairs ordered
    assert t.per_type["HCC"].auc == pytest.approx(0.75)
    assert t.per_type["Cyst"].auc == 1.0 and t.per_type["Meta"].auc == 1.0
    assert t.per_type["ICC"].auc is None and t.per_type["Hem"].positives == 0
    assert t.mean == pytest.approx((0.75 + 1 + 1) / 3) and t.types == 3 and t.cases == 4
    from sklearn.metrics import roc_auc_score

    for name in ("HCC", "Cyst", "Meta"):
        y = [ref == name for _, ref in LESIONS]
        s = [p[name] for p, _ in LESIONS]
        assert t.per_type[name].auc == pytest.approx(roc_auc_score(y, s))
    empty = lesion_type_auc_table([])
    assert empty.mean is None and empty.cases == 0


def _detector_outputs(det, with_head):
    from nnunet_liver.postprocessing import instance_map, seg2det

    det.mkdir()
    for cid, (_, pred) in _cases().items():
        les = [l for l in seg2det(pred, (2.0, 1.0, 1.0)) if l.num_voxels > 1]
        for i, l in enumerate(les, start=1):
            l.id = i
        _write(instance_map(les, pred.shape), det / f"{cid}_lesions.nii.gz")
        entries = []
        for l in les:
            e = {"id": l.id, "type": l.type, "label": l.label, "volume_cm3": l.volume_cm3, "score": 0.5}
            if with_head:  # the predicted type most probable; Cyst second, higher for the Meta (a Cyst in the reference)
                e["type_probabilities"] = _p(**{"Cyst": 0.3 if l.type == "Meta" else 0.1, l.type: 0.7})
            entries.append(e)
        js = {"schema_version": "1.0", "case": cid, "lesions": entries,
              "patient": {"class": "normal", "livermax": _p(HCC=0.5)}}
        (det / f"{cid}.json").write_text(json.dumps(js))


def test_summary_has_the_lesion_head_auc_beside_livermax(folders, tmp_path):
    ref_dir, _ = folders
    _detector_outputs(tmp_path / "det", with_head=True)
    out = tmp_path / "out"
    assert main(["-ref", str(ref_dir), "-pred", str(tmp_path / "det"), "-o", str(out), "--min-volume", "0.01",
                 "-q"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["auc"] is not None  # LiverMax's, as before
    head = s["lesion_head_auc"]
    # matched lesions: case_a's HCC (TP: p_HCC 0.7, p_Cyst 0.1) and Cyst predicted Meta (FL: p_HCC 0, p_Cyst 0.3)
    assert head["cases"] == 2 and head["HCC"]["auc"] == 1.0 and head["Cyst"]["auc"] == 1.0
    assert head["HCC"]["positives"] == 1 and head["Meta"]["auc"] is None and head["mean"]["types"] == 2
    assert (out / "lesion_head_auc.csv").exists()
    out2 = tmp_path / "out2"
    _detector_outputs(tmp_path / "det2", with_head=False)
    assert main(["-ref", str(ref_dir), "-pred", str(tmp_path / "det2"), "-o", str(out2), "--min-volume", "0.01",
                 "-q"]) == 0
    assert "lesion_head_auc" not in json.loads((out2 / "summary.json").read_text())
    assert not (out2 / "lesion_head_auc.csv").exists()


def test_malformed_type_probabilities_is_a_one_line_error(folders, tmp_path, capsys):
    ref_dir, _ = folders
    det = tmp_path / "det"
    _detector_outputs(det, with_head=True)
    js = json.loads((det / "case_a.json").read_text())
    js["lesions"][0]["type_probabilities"] = ["HCC"]
    (det / "case_a.json").write_text(json.dumps(js))
    assert main(["-ref", str(ref_dir), "-pred", str(det), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "type_probabilities must map type names to numbers" in capsys.readouterr().err
