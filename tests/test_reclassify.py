"""reclassify: drop / retype / skip semantics pinned with a stub UNet-patch whose output we construct."""
import dataclasses

import numpy as np
import pytest
import torch

from nnunet_liver.labels import CYST, HCC, HEM, META, PATCH_LIVER, PATCH_MASKED
from nnunet_liver.postprocessing.reclassify import overlap_scores, reclassify
from nnunet_liver.postprocessing.seg2det import instance_map, seg2det

SPACING = (2.0, 2.0, 2.0)  # voxel = 0.008 cm3
PATCH = (8, 24, 24)


class StubPatchNet(torch.nn.Module):
    """A real torch module: voxels with channel 0 in [lo, hi) -> ``label``; other in-liver voxels -> liver."""

    def __init__(self, rules):
        super().__init__()
        self.rules = rules  # [(lo, hi, label)]
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        v = x[:, 0]
        labels = torch.where(v != 0, torch.full_like(v, PATCH_LIVER), torch.full_like(v, PATCH_MASKED)).long()
        for lo, hi, label in self.rules:
            labels = torch.where((v >= lo) & (v < hi), torch.full_like(labels, label), labels)
        return torch.nn.functional.one_hot(labels, 8).permute(0, 4, 1, 2, 3).float() * 10.0


def _predictor(net):
    def predict(patches):
        with torch.no_grad():
            return net(torch.from_numpy(patches)).argmax(1).numpy()
    return predict


def _case():
    """Liver (value 1.0) with three lesions painted by slicing: A (value 5), B (value 3), C large (value 5)."""
    shape = (20, 64, 64)
    label = np.zeros(shape, np.uint8)
    image = np.zeros((1,) + shape, np.float32)
    label[1:19, 4:60, 4:60] = 7
    image[0][label == 7] = 1.0
    label[4:8, 8:14, 8:14] = HCC      # A: 144 voxels = 1.152 cm3, will be retyped HCC -> Meta
    image[0, 4:8, 8:14, 8:14] = 5.0
    label[4:8, 30:34, 30:34] = CYST   # B: 64 voxels = 0.512 cm3, UNet-patch sees liver -> dropped
    image[0, 4:8, 30:34, 30:34] = 3.0
    label[2:18, 40:58, 6:40] = HEM    # C: 9792 voxels = 78.3 cm3 > 64: skipped, keeps its type
    image[0, 2:18, 40:58, 6:40] = 5.0
    lesions = seg2det(label, SPACING)
    return label, image, lesions


def test_drop_retype_and_skip():
    label, image, lesions = _case()
    assert sorted(l.type for l in lesions) == ["Cyst", "HCC", "Hem"]
    by_type = {l.type: l for l in lesions}
    net = StubPatchNet([(4.5, 5.5, META)])  # value 5 -> Meta; value 3 -> liver
    inst = instance_map(lesions, label.shape)
    liver = np.isin(label, range(1, 9))
    kept, results = reclassify(lesions, inst, liver, image, SPACING, _predictor(net), n=10, patch_size=PATCH,
                               rng=np.random.default_rng(0))
    a, b, c = by_type["HCC"], by_type["Cyst"], by_type["Hem"]
    ra, rb, rc = results[a.id], results[b.id], results[c.id]
    # A: kept, retyped; every patch sees all of A's voxels as Meta -> score = A's volume
    assert ra.kept and ra.type_before == "HCC" and ra.type_after == "Meta"
    assert ra.score_cm3 == pytest.approx(144 * 0.008)
    assert ra.votes_cm3 == {"Meta": pytest.approx(10 * 144 * 0.008)}
    # B: UNet-patch finds no lesion -> score 0 < 0.5 cm3 -> dropped
    assert not rb.kept and rb.score_cm3 == 0.0 and rb.type_after is None
    # C: larger than 64 cm3 -> skipped, kept with its type, no patches
    assert rc.kept and rc.skipped and rc.type_after == "Hem" and rc.num_patches == 0
    kept_ids = {l.id: l for l in kept}
    assert set(kept_ids) == {a.id, c.id}
    assert kept_ids[a.id].type == "Meta" and kept_ids[a.id].label == META
    assert kept_ids[c.id].type == "Hem"
    # inputs untouched
    assert a.type == "HCC" and a.label == HCC
    # one batch of N patches per reclassified lesion (A and B), never per patch
    assert net.calls == [(10, 1) + PATCH, (10, 1) + PATCH]


def test_score_threshold_is_inclusive_and_configurable():
    label, image, lesions = _case()
    net = StubPatchNet([(2.5, 3.5, CYST), (4.5, 5.5, HCC)])
    inst = instance_map(lesions, label.shape)
    liver = np.isin(label, range(1, 9))
    b = next(l for l in lesions if l.type == "Cyst")
    kept, res = reclassify([b], inst, liver, image, SPACING, _predictor(net), n=4, patch_size=PATCH,
                           min_score_cm3=0.512)  # B's full volume: kept exactly at the threshold
    assert res[b.id].kept and res[b.id].score_cm3 == pytest.approx(0.512) and kept[0].type == "Cyst"
    kept, res = reclassify([b], inst, liver, image, SPACING, _predictor(net), n=4, patch_size=PATCH,
                           min_score_cm3=0.513)
    assert not res[b.id].kept and kept == []


def test_overlap_scores_golden_and_vote_tie_priority():
    pred = np.zeros((2, 2, 4, 4), np.int64)
    masks = np.zeros((2, 2, 4, 4), bool)
    masks[:, 0, :2, :2] = True                    # 4 voxels per patch
    pred[0, 0, 0, :2] = HEM                       # patch 0: 2 Hem voxels in the mask
    pred[1, 0, 1, :2] = HCC                       # patch 1: 2 HCC voxels in the mask
    pred[1, 1, :, :] = META                       # outside the mask: not counted
    score, votes = overlap_scores(pred, masks, voxel_volume_cm3=0.5)
    assert score == pytest.approx((2 + 2) / 2 * 0.5)
    assert votes == {HCC: 1.0, HEM: 1.0}
    from nnunet_liver.labels import majority_type  # the rule reclassify applies to these votes
    assert majority_type(votes, fallback=CYST) == HCC    # tie -> higher priority (HCC > Hem)
    assert majority_type({}, fallback=CYST) == CYST


def test_lesion_below_threshold_dropped_without_network_call():
    label, image, lesions = _case()
    small = np.zeros_like(label)
    small[label == 7] = 7
    small[10:12, 20:26, 20:26] = HCC          # 72 voxels = 0.576 cm3 on this grid
    small[14:16, 20:25, 20:25] = META         # 50 voxels = 0.4 cm3 < 0.5: can never score 0.5 cm3
    les = seg2det(small, SPACING)
    net = StubPatchNet([(0.5, 1.5, HCC)])
    kept, res = reclassify(les, instance_map(les, small.shape), small > 0, image, SPACING, _predictor(net), n=4,
                           patch_size=PATCH)
    by_type = {l.type: l for l in les}
    assert not res[by_type["Meta"].id].kept
    assert res[by_type["Meta"].id].skipped and res[by_type["Meta"].id].num_patches == 0
    assert res[by_type["HCC"].id].num_patches == 4 and len(net.calls) == 1


def test_empty_and_shape_errors():
    label, image, lesions = _case()
    inst = instance_map(lesions, label.shape)
    kept, res = reclassify([], inst, label > 0, image, SPACING, lambda p: None)
    assert kept == [] and res == {}
    with pytest.raises(ValueError):
        reclassify(lesions, inst[:-1], label > 0, image, SPACING, lambda p: None)
    with pytest.raises(ValueError):
        overlap_scores(np.zeros((2, 3, 3)), np.zeros((2, 3, 3), bool), 1.0)


def test_lesion_missing_on_patch_grid_is_dropped():
    label, image, lesions = _case()
    a = next(l for l in lesions if l.type == "HCC")
    inst = np.zeros(label.shape, np.int32)  # A vanished when resampled
    kept, res = reclassify([a], inst, label > 0, image, SPACING, lambda p: None)
    assert kept == [] and not res[a.id].kept and res[a.id].skipped


def test_deterministic_with_seed():
    label, image, lesions = _case()
    net = StubPatchNet([(0.5, 1.5, HCC)])  # liver texture looks like HCC: overlap depends on placement only
    inst = instance_map(lesions, label.shape)
    liver = np.isin(label, range(1, 9))
    runs = [reclassify(lesions[:1], inst, liver, image, SPACING, _predictor(net), n=6, patch_size=PATCH,
                       rng=np.random.default_rng(7))[1] for _ in range(2)]
    assert dataclasses.asdict(runs[0][lesions[0].id]) == dataclasses.asdict(runs[1][lesions[0].id])
