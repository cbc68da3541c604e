"""seg2det: the slice-overlap rule, in-plane 8-connectivity, the type vote, volumes, measurements."""
import numpy as np
import pytest
from scipy import ndimage

from nnunet_liver.labels import CYST, HCC, HEM, ICC, LIVER, META, OTHER, SPLEEN, STOMACH
from nnunet_liver.postprocessing import instance_map, lesions_from_instance_map, seg2det
from nnunet_liver.postprocessing.seg2det import max_axial_diameter_mm, slice_overlap_components

SP = (5.0, 1.0, 1.0)


def _brute_components(fg):
    """Reference: scipy labelling with the documented structuring element."""
    st = np.zeros((3, 3, 3), bool)
    st[1] = True
    st[0, 1, 1] = st[2, 1, 1] = True
    lab, n = ndimage.label(fg, st)
    return lab, n


def _same_partition(a, b):
    fg = a > 0
    assert np.array_equal(fg, b > 0)
    pairs = set(zip(a[fg].tolist(), b[fg].tolist()))
    return len(pairs) == len(np.unique(a[fg])) == len(np.unique(b[fg]))


def test_diagonal_neighbour_slices_stay_apart():
    lm = np.zeros((8, 16, 16), np.uint8)
    lm[2, 4:6, 4:6] = HCC
    lm[3, 6:8, 6:8] = HCC  # touches slice 2 only diagonally through z: two lesions
    lm[5, 4:6, 4:6] = META
    lm[6, 5:7, 5:7] = META  # shares pixel (5, 5) with slice 5: one lesion
    les = seg2det(lm, SP)
    assert [l.num_voxels for l in les] == [4, 4, 8]
    assert [l.type for l in les] == ["HCC", "HCC", "Meta"]
    assert [l.id for l in les] == [1, 2, 3]


def test_in_plane_eight_connectivity_and_skip_slice():
    lm = np.zeros((8, 16, 16), np.uint8)
    lm[1, 2, 2] = CYST
    lm[1, 3, 3] = CYST  # diagonal in-plane: same lesion
    lm[4, 2, 2] = CYST  # same pixel but two slices away (slice 2, 3 empty): another lesion
    les = seg2det(lm, SP)
    assert [l.num_voxels for l in les] == [2, 1]


def test_type_vote_and_priority_tie():
    lm = np.zeros((8, 16, 16), np.uint8)
    lm[2, 2:5, 2:5] = OTHER  # 9 voxels
    lm[3, 2:5, 2:4] = HEM  # 6 voxels, joined through shared pixels
    lm[3, 2:5, 4] = ICC  # 3 voxels
    lm[5:7, 10:12, 10:12] = CYST  # 8 voxels
    lm[5:7, 12:14, 10:12] = HCC  # 8 voxels, tie -> HCC (higher priority)
    les = seg2det(lm, SP)
    assert [l.type for l in les] == ["Other", "HCC"]
    assert les[0].volumes_cm3_by_type["Hem"] == pytest.approx(6 * 5e-3)
    assert les[0].volumes_cm3_by_type["ICC"] == pytest.approx(3 * 5e-3)
    assert les[1].volumes_cm3_by_type["Cyst"] == les[1].volumes_cm3_by_type["HCC"] == pytest.approx(0.04)


def test_volumes_anisotropic_and_organs_ignored():
    lm = np.full((8, 16, 16), LIVER, np.uint8)
    lm[:, :, 12:] = SPLEEN
    lm[0, 0, 0] = STOMACH
    lm[1:4, 2:6, 3:8] = HCC  # 3 * 4 * 5 = 60 voxels
    sp = (2.5, 0.8, 0.6)
    (les,) = seg2det(lm, sp)
    assert les.num_voxels == 60
    assert les.volume_cm3 == pytest.approx(60 * 2.5 * 0.8 * 0.6 / 1000)
    assert les.bbox == ((1, 4), (2, 6), (3, 8))
    assert les.centroid_voxel == pytest.approx((2.0, 3.5, 5.0))
    assert les.centroid_mm == pytest.approx((5.0, 2.8, 3.0))
    # corners of the farthest pixels: (4 * 0.8, 5 * 0.6) -> sqrt(3.2^2 + 3^2)
    assert les.diameter_mm == pytest.approx(np.hypot(3.2, 3.0))
    assert les.mask.shape == (3, 4, 5) and les.mask.all()


def test_world_centroid_with_origin_and_direction():
    lm = np.zeros((4, 8, 8), np.uint8)
    lm[1, 2, 3] = HCC
    (les,) = seg2det(lm, (2.0, 1.0, 0.5), origin=(10.0, 20.0, 30.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    # x = 10 - 3*0.5, y = 20 - 2*1, z = 30 + 1*2, reported (z, y, x)
    assert les.centroid_mm == pytest.approx((32.0, 18.0, 8.5))


def test_empty_and_no_lesion():
    assert seg2det(np.zeros((8, 16, 16), np.uint8), SP) == []
    assert seg2det(np.full((8, 16, 16), LIVER, np.uint8), SP) == []


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("density", [0.25, 0.03])  # dense: one footprint; sparse: the recursive split does work
def test_components_equal_brute_force(seed, density):
    rng = np.random.default_rng(seed)
    fg = rng.random((8, 16, 16)) < density
    if density < 0.1:
        fg = ndimage.binary_dilation(fg, np.ones((1, 2, 2), bool))
    lab, n = slice_overlap_components(fg)
    ref, n_ref = _brute_components(fg)
    assert n == n_ref and _same_partition(np.asarray(lab), ref)
    lm = np.where(fg, rng.integers(1, 7, fg.shape), 0).astype(np.uint8)
    les = seg2det(lm, SP)
    assert len(les) == n_ref
    painted = instance_map(les, lm.shape)
    assert painted.dtype == np.uint16
    assert _same_partition(painted, ref)
    # ids follow the first voxel in raster order
    firsts = [np.flatnonzero(painted.ravel() == l.id)[0] for l in les]
    assert firsts == sorted(firsts)
    for l in les:  # the vote: the most frequent type, ties to higher priority
        counts = np.bincount(lm[painted == l.id], minlength=7)[1:]
        best = np.flatnonzero(counts == counts.max()) + 1
        prio = [HCC, ICC, META, HEM, OTHER, CYST]
        assert l.label == min(best, key=prio.index)


def test_input_not_mutated_and_global_mask():
    lm = np.zeros((8, 16, 16), np.uint8)
    lm[2:4, 3:7, 3:7] = META
    before = lm.copy()
    (les,) = seg2det(lm, SP)
    assert np.array_equal(lm, before)
    assert np.array_equal(les.global_mask(lm.shape), lm == META)
    d = les.to_dict()
    assert "mask" not in d and d["type"] == "Meta" and d["bbox"] == [[2, 4], [3, 7], [3, 7]]


def test_diameter_brute_force_on_random_blob():
    rng = np.random.default_rng(1)
    m = ndimage.binary_dilation(rng.random((3, 16, 16)) < 0.05, iterations=2)
    sp = (5.0, 0.7, 0.9)
    best = 0.0
    for z in range(3):
        ys, xs = np.nonzero(m[z])
        for dy in (-0.5, 0.5):
            for dx in (-0.5, 0.5):
                cy, cx = (ys + dy) * sp[1], (xs + dx) * sp[2]
                for ey in (-0.5, 0.5):
                    for ex in (-0.5, 0.5):
                        d = np.hypot(cy[:, None] - (ys[None, :] + ey) * sp[1], cx[:, None] - (xs[None, :] + ex) * sp[2])
                        best = max(best, d.max()) if d.size else best
    assert max_axial_diameter_mm(m, sp) == pytest.approx(best)


def test_probabilities_give_score_and_mean():
    lm = np.zeros((4, 8, 8), np.uint8)
    lm[1:3, 2:4, 2:4] = ICC
    p = np.zeros((14, 4, 8, 8), np.float32)
    p[ICC, 1:3, 2:4, 2:4] = 0.6
    p[ICC, 1, 2, 2] = 0.9
    p[HCC, 1:3, 2:4, 2:4] = 0.3
    p[ICC, 0, 0, 0] = 1.0  # outside the lesion: ignored
    (les,) = seg2det(lm, SP, probabilities=p)
    assert les.score == pytest.approx(0.9)
    assert les.mean_probability["ICC"] == pytest.approx((0.9 + 7 * 0.6) / 8)
    assert les.mean_probability["HCC"] == pytest.approx(0.3)
    import torch
    (lt,) = seg2det(torch.from_numpy(lm), SP, probabilities=torch.from_numpy(p))
    assert lt.score == pytest.approx(0.9)


def test_features_signs_on_painted_phases():
    lm = np.full((4, 16, 16), LIVER, np.uint8)
    lm[:, :, 14:] = 0
    lm[1:3, 4:12, 4:12] = HCC
    A = np.full(lm.shape, 60.0, np.float32)
    A[lm == HCC] = 110.0  # hyper-enhancing
    A[1:3, 4:12, 4] = A[1:3, 4:12, 11] = A[1:3, 4, 4:12] = A[1:3, 11, 4:12] = 200.0  # bright rim (capsule)
    V = np.full(lm.shape, 100.0, np.float32)
    V[lm == HCC] = 70.0  # washout
    imgs = {"NC": np.full(lm.shape, -1024.0, np.float32), "A": A, "V": V}
    (les,) = seg2det(lm, SP, images=imgs, ring_mm=1.0)  # 1 mm = one pixel at 1 mm in-plane
    assert les.features["APHE"] == pytest.approx(50.0)
    assert les.features["NPW"] == pytest.approx(-30.0)
    assert les.features["EC"] == pytest.approx(110.0 ** 2 - 200.0 ** 2)
    assert les.feature_phases == {"APHE": "A", "NPW": "V", "EC": "A"}
    assert les.hu_median == {"A": 110.0, "V": 70.0}  # NC is missing (constant): not reported
    # V missing -> NPW falls back to D
    D = V - 5.0
    (les2,) = seg2det(lm, SP, images={"A": A, "V": np.full(lm.shape, -1024.0), "D": D})
    assert les2.feature_phases["NPW"] == "D" and les2.features["NPW"] == pytest.approx(-30.0)


def test_lesions_from_instance_map():
    inst = np.zeros((4, 8, 8), np.uint16)
    inst[1, 1:3, 1:3] = 2
    inst[2, 5:7, 5:7] = 1
    les = lesions_from_instance_map(inst, SP, {1: "Cyst", 2: "HCC"}, scores={1: 0.5, 2: None})
    assert [(l.id, l.type, l.num_voxels, l.score) for l in les] == [(1, "Cyst", 4, 0.5), (2, "HCC", 4, None)]
    with pytest.raises(ValueError, match="no type"):
        lesions_from_instance_map(inst, SP, {1: "Cyst"})


def test_bad_input():
    with pytest.raises(ValueError, match="3D"):
        seg2det(np.zeros((4, 4), np.uint8), SP)
    with pytest.raises(ValueError, match="spacing"):
        seg2det(np.zeros((4, 4, 4), np.uint8), (1.0, 0.0, 1.0))


def test_type_is_derived_from_the_label():
    """A lesion has one type: its label's name, also after the label changes (reclassification re-types by label)."""
    import dataclasses

    lm = np.zeros((4, 8, 8), np.uint8)
    lm[1:3, 2:5, 2:5] = HCC
    (les,) = seg2det(lm, SP)
    assert les.type == "HCC"
    cyst = dataclasses.replace(les, label=CYST)
    assert cyst.type == "Cyst" and les.type == "HCC"
    d = cyst.to_dict()
    assert list(d)[:3] == ["id", "label", "type"] and (d["label"], d["type"]) == (CYST, "Cyst")
    with pytest.raises(TypeError):
        dataclasses.replace(les, type="Meta")  # no separate type to set
