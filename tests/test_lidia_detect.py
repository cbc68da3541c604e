"""Detection with LIDIA's lesion head: reclassification records the head's per-type probabilities beside the voxel
vote and types a kept lesion by them (the final-type rule); UNet-patch averages the head over patches and folds;
models without the head give exactly today's records."""
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_liver.inference.patch_model import PatchModel
from nnunet_liver.labels import CYST, HEM, LESION_NAMES, META, patch_dataset_json_labels
from nnunet_liver.postprocessing.reclassify import head_type, reclassify
from nnunet_liver.postprocessing.seg2det import instance_map
from nnunet_liver.trainers.liver_lesion_head import capture_features, lesion_head_of, pool_lesion_features
from nnunet_liver.trainers.liver_tiny_trainers import LesionShufflePatchTrainer_LIDIA_tiny

sys.path.insert(0, str(Path(__file__).parent))
from test_reclassify import PATCH, SPACING, StubPatchNet, _case, _predictor  # noqa: E402
from test_trainers import plans, whole_json  # noqa: E402

OLD_KEYS = {"kept", "score_cm3", "type_before", "type_after", "votes_cm3", "num_patches", "skipped"}


def test_head_type_is_the_most_probable_type_ties_to_priority():
    assert head_type([0.1, 0.1, 0.5, 0.1, 0.1, 0.1]) == META
    assert head_type([0.0, 0.0, 0.0, 0.5, 0.0, 0.5]) == HEM  # Hem outranks Cyst
    with pytest.raises(ValueError, match="6 lesion type probabilities"):
        head_type([0.5, 0.5])


def _head_predictor(net, probabilities):
    calls = []

    def predict(patches, masks):
        calls.append(masks.shape)
        return _predictor(net)(patches), np.asarray(probabilities)
    return predict, calls


def test_reclassify_with_the_lesion_head_types_by_the_head_and_records_the_vote():
    label, image, lesions = _case()
    by_type = {l.type: l for l in lesions}
    inst = instance_map(lesions, label.shape)
    liver = np.isin(label, range(1, 9))
    net = StubPatchNet([(4.5, 5.5, META)])  # the voxel vote: Meta for A; B unseen (dropped); C too large
    cyst_first = [0.05, 0.05, 0.3, 0.05, 0.05, 0.5]
    predict, calls = _head_predictor(net, cyst_first)
    kept, results = reclassify(lesions, inst, liver, image, SPACING, predict, n=10, patch_size=PATCH,
                               rng=np.random.default_rng(0), lesion_head=True)
    a, b, c = by_type["HCC"], by_type["Cyst"], by_type["Hem"]
    ra, rb, rc = results[a.id], results[b.id], results[c.id]
    assert calls == [(10,) + PATCH, (10,) + PATCH]  # the masks of the same one batch per lesion
    # A: kept by the segmentation score as before; its type is the head's (Cyst), the voxel vote (Meta) beside it
    assert ra.kept and ra.type_vote == "Meta" and ra.type_after == "Cyst"
    assert ra.type_probabilities == dict(zip(LESION_NAMES, cyst_first))
    assert next(l for l in kept if l.id == a.id).label == CYST
    # B: dropped by the score as without the head (the head does not rescue a false positive)
    assert not rb.kept and rb.type_after is None and rb.type_vote is None
    # C: skipped, no head run, keeps its type
    assert rc.kept and rc.type_after == "Hem" and rc.type_probabilities is None
    d = ra.to_dict()
    assert set(d) == OLD_KEYS | {"type_vote", "type_probabilities"} and d["type_after"] == "Cyst"
    assert rc.to_dict()["type_probabilities"] is None and "type_vote" in rc.to_dict()


def test_reclassify_without_the_head_is_unchanged():
    label, image, lesions = _case()
    inst = instance_map(lesions, label.shape)
    liver = np.isin(label, range(1, 9))
    net = StubPatchNet([(4.5, 5.5, META)])
    kept, results = reclassify(lesions, inst, liver, image, SPACING, _predictor(net), n=10, patch_size=PATCH,
                               rng=np.random.default_rng(0))
    for r in results.values():
        assert set(r.to_dict()) == OLD_KEYS and not r.lesion_head
    assert sorted(l.type for l in kept) == ["Hem", "Meta"]


def test_patch_model_averages_the_head_over_patches_and_folds(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    p = plans()
    p["continue_training"] = False
    t = LesionShufflePatchTrainer_LIDIA_tiny(p, "3d_fullres", 0, whole_json(labels=patch_dataset_json_labels()),
                                             torch.device("cpu"))
    folds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folds.append(t.build_network_architecture(t.plans_manager, t.configuration_manager, 4, 8, False).state_dict())
    network = t.build_network_architecture(t.plans_manager, t.configuration_manager, 4, 8, False)
    pm = PatchModel.__new__(PatchModel)  # the loaded model's parts, without a model folder
    pm.model = types.SimpleNamespace(parameters=folds)
    pm.device, pm.network, pm.lesion_head = torch.device("cpu"), network.eval(), lesion_head_of(network)
    ps = [int(v) for v in t.configuration_manager.patch_size]
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(3, 4, *ps)).astype(np.float32)
    masks = np.zeros((3, *ps), bool)
    masks[0, 2:5, 3:7, 3:7] = True
    masks[1, 10:12, 1:4, 5:9] = True  # patch 2 holds no lesion voxel: left out of the mean
    labels, probs = pm.predict_patches(patches, masks)
    assert np.array_equal(labels, pm.predict_patches(patches))  # the same segmentation as without masks
    expected = []
    for state in folds:  # by hand: each fold's softmax per patch, mean over patches 0 and 1, then over folds
        network.load_state_dict(state)
        per_patch = []
        with torch.no_grad(), capture_features(pm.lesion_head):
            network(torch.from_numpy(patches))
            for k in (0, 1):
                inst = torch.zeros((3, *ps), dtype=torch.long)
                inst[k][torch.from_numpy(masks[k])] = 1
                pooled = pool_lesion_features(pm.lesion_head.features, inst, 1)
                per_patch.append(torch.softmax(pm.lesion_head(pooled)[0], 1)[0].numpy())
        expected.append(np.mean(per_patch, 0))
    assert probs.shape == (6,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(probs, np.mean(expected, 0), atol=1e-5)
    _, none = pm.predict_patches(patches, np.zeros((3, *ps), bool))
    assert none is None
    pm.lesion_head = None
    with pytest.raises(ValueError, match="without a lesion head"):
        pm.predict_patches(patches, masks)


def test_head_fields_follow_the_case_schema():
    import json

    import jsonschema

    from nnunet_liver.inference import schema_path
    from nnunet_liver.postprocessing.reclassify import ReclassificationResult

    schema = json.loads(Path(schema_path()).read_text(encoding="utf-8"))
    lesion = schema["properties"]["lesions"]["items"]["properties"]
    probs = dict(zip(LESION_NAMES, [0.1, 0.1, 0.5, 0.1, 0.1, 0.1]))
    r = ReclassificationResult(3, True, "HCC", "Meta", score_cm3=1.2, votes_cm3={"HCC": 9.0}, num_patches=10,
                               lesion_head=True, type_vote="HCC", type_probabilities=probs)
    jsonschema.validate(r.to_dict(), lesion["reclassification"])
    jsonschema.validate(probs, lesion["type_probabilities"])
    jsonschema.validate(None, lesion["type_probabilities"])
    for bad in ({"Tumour": 0.5}, {"HCC": 1.5}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, lesion["type_probabilities"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(r.to_dict(), type_vote="Tumour"), lesion["reclassification"])
    rules = schema["properties"]["settings"]["properties"]["reclassification"]["properties"]
    jsonschema.validate("lesion head", rules["type_rule"])
