"""Lesion shuffle: transplants copy the source exactly, masking leaves nothing outside the liver, negatives are
lesion-free, schemes appear at their configured rates; reclassification patches."""
import numpy as np
import pytest

from nnunet_liver.labels import PATCH_LIVER, PATCH_MASKED
from nnunet_liver.postprocessing.lesion_shuffle import crop, make_reclassification_patches, transplant_lesion
from nnunet_liver.training.shuffle import SCHEMES, case_lesions, component_type, erase_lesions, sample_training_patch

PATCH = (4, 12, 12)


def painted_case(seed=0):
    """A 2-channel (8, 32, 32) liver-cropped case: liver box, an HCC cube, a cyst cube; outside liver = 0 label."""
    rng = np.random.default_rng(seed)
    label = np.zeros((8, 32, 32), np.int16)
    label[1:7, 2:30, 2:30] = PATCH_LIVER
    label[2:5, 4:8, 4:8] = 1  # HCC
    label[3:5, 20:23, 22:25] = 6  # cyst
    image = rng.normal(0, 1, (2,) + label.shape).astype(np.float32)
    image[:, label == 1] += 5.0
    image[:, label == 6] -= 5.0
    return image, label


def test_crop_pads_outside():
    a = np.arange(24).reshape(2, 3, 4)
    c = crop(a, (-1, 1, 2), (2, 2, 3), pad_value=-7)
    assert c.shape == (2, 2, 3)
    assert np.all(c[0] == -7)
    np.testing.assert_array_equal(c[1, :, :2], a[0, 1:3, 2:4])
    assert np.all(c[1, :, 2] == -7)


def test_case_lesions_two_lesions():
    _, label = painted_case()
    comps = case_lesions(label)
    assert len(comps) == 2
    assert sorted(int(m.sum()) for _, m in comps) == [18, 48]


def test_case_lesions_are_seg2ds_lesions():
    """Training cuts patches around the lesions detection sees: two lesions meeting only diagonally across slices
    are two (26-connectivity would join them), as seg2det finds them on the same map."""
    from nnunet_liver.postprocessing import seg2det

    label = np.full((4, 8, 8), 7, np.int16)
    label[1, 2:4, 2:4] = 1
    label[2, 4:6, 4:6] = 6  # touches the HCC only through a corner, one slice up
    comps = case_lesions(label)
    assert len(comps) == 2 == len(seg2det(label, (1.0, 1.0, 1.0)))
    assert [component_type(label, b, m) for b, m in comps] == [1, 6]
    label[2, 3, 3] = 1  # now they share a pixel position in neighbouring slices: one lesion, still by both rules
    assert len(case_lesions(label)) == 1 == len(seg2det(label, (1.0, 1.0, 1.0)))
    assert case_lesions(np.full((2, 3, 3), 7, np.int16)) == []


def test_transplanted_lesion_voxels_and_labels_equal_source():
    image, label = painted_case()
    rng = np.random.default_rng(1)
    tgt_img = np.full((2,) + PATCH, 0.25, np.float32)
    tgt_lab = np.full(PATCH, PATCH_LIVER, np.int16)
    (box, mask), = [c for c in case_lesions(label) if label[c[0]][c[1]][0] == 1]
    src_img, src_lab = image[(slice(None),) + box], label[box]
    out_img, out_lab, where = transplant_lesion(tgt_img, tgt_lab, src_img, src_lab, mask, rng)
    assert where.sum() == mask.sum()
    np.testing.assert_array_equal(out_img[:, where], src_img[:, mask])
    np.testing.assert_array_equal(out_lab[where], src_lab[mask])
    # everything else is the target, untouched; inputs not modified
    assert np.all(out_img[:, ~where] == 0.25) and np.all(out_lab[~where] == PATCH_LIVER)
    assert np.all(tgt_img == 0.25) and np.all(tgt_lab == PATCH_LIVER)


def test_transplant_lands_on_target_when_possible():
    rng = np.random.default_rng(2)
    lab = np.zeros(PATCH, np.int16)
    lab[:, 6:, 6:] = PATCH_LIVER
    img = np.zeros((1,) + PATCH, np.float32)
    src_mask = np.ones((2, 3, 3), bool)
    _, _, where = transplant_lesion(img, lab, np.ones((1, 2, 3, 3), np.float32), np.full((2, 3, 3), 4, np.int16),
                                    src_mask, rng)
    assert np.all(lab[where] == PATCH_LIVER)


def test_erase_lesions_leaves_no_lesion_and_uses_liver_texture():
    image, label = painted_case()
    rng = np.random.default_rng(3)
    img, lab = erase_lesions(image, label, (1, 0, 0), (6, 16, 16), rng)
    assert not np.isin(lab, range(1, 7)).any()
    les = crop(label, (1, 0, 0), (6, 16, 16)) == 1
    assert les.sum() == 48
    # texture values come from liver voxels of the case (no +5 lesion intensities)
    liver_vals = set(np.round(image[0, label == PATCH_LIVER], 5))
    assert set(np.round(img[0, les], 5)) <= liver_vals


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_masks_outside_liver_and_has_the_right_content(scheme):
    image, label = painted_case()
    rng = np.random.default_rng(4)
    for _ in range(20):
        img, lab, used = sample_training_patch(image, label, PATCH, rng, rates={scheme: 1.0}, masked_value=-9.0)
        assert used == scheme
        assert img.shape == (2,) + PATCH and lab.shape == PATCH and img.dtype == np.float32
        assert np.all(img[:, lab == PATCH_MASKED] == -9.0)  # nothing outside the liver survives masking
        assert set(np.unique(lab)) <= {0, 1, 6, PATCH_LIVER}
        has_lesion = np.isin(lab, range(1, 7)).any()
        if scheme in ("original_positive", "shuffled_positive"):
            assert has_lesion
        else:
            assert not has_lesion  # negatives, original and shuffled, hold no lesion label


def test_shuffled_positive_lesion_equals_a_source_lesion():
    image, label = painted_case()
    rng = np.random.default_rng(5)
    sources = [(image[(slice(None),) + b][:, m], label[b][m]) for b, m in case_lesions(label)]
    for _ in range(10):
        img, lab, _ = sample_training_patch(image, label, PATCH, rng, rates={"shuffled_positive": 1.0})
        les = np.isin(lab, range(1, 7))
        vals = img[:, les]
        # the patch's lesion voxels are (a crop of) a source lesion: every value appears in that source
        assert any(set(np.round(vals[0], 5)) <= set(np.round(s[0], 5)) and set(lab[les]) == set(sl)
                   for s, sl in sources)


def test_schemes_appear_at_configured_rates():
    image, label = painted_case()
    rng = np.random.default_rng(6)
    rates = {"original_positive": 0.4, "original_negative": 0.1, "shuffled_positive": 0.3, "shuffled_negative": 0.2}
    n = 2000
    counts = dict.fromkeys(SCHEMES, 0)
    for _ in range(n):
        counts[sample_training_patch(image, label, PATCH, rng, rates=rates)[2]] += 1
    for s in SCHEMES:
        p = rates[s]
        assert abs(counts[s] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (s, counts)


def test_component_type_is_the_majority_lesion_label():
    _, label = painted_case()
    assert sorted(component_type(label, b, m) for b, m in case_lesions(label)) == [1, 6]
    mixed = label.copy()
    mixed[2, 4:8, 4:6] = 4  # 8 of the HCC's 48 voxels relabelled: still an HCC
    mixed[3:5, 20:23, 22:24] = 4  # 12 of the cyst's 18 voxels: now a hemangioma
    assert sorted(component_type(mixed, b, m) for b, m in case_lesions(mixed)) == [1, 4]
    tie = np.zeros((1, 1, 2), np.int16)
    tie[0, 0] = (5, 2)
    assert component_type(tie, *case_lesions(tie)[0]) == 2


@pytest.mark.parametrize("scheme", ["original_positive", "shuffled_positive"])
def test_lesion_class_picks_a_lesion_of_that_type(scheme):
    image, label = painted_case()
    rng = np.random.default_rng(8)
    for lesion_class, other in ((1, 6), (6, 1)):
        for _ in range(15):
            img, lab, used = sample_training_patch(image, label, PATCH, rng, rates={scheme: 1.0},
                                                   lesion_class=lesion_class)
            assert used == scheme
            assert (lab == lesion_class).any() and not (lab == other).any()
    # a type the case does not hold: any of its lesions, as without lesion_class
    seen = set()
    for _ in range(40):
        _, lab, _ = sample_training_patch(image, label, PATCH, rng, rates={"original_positive": 1.0}, lesion_class=3)
        seen |= set(np.unique(lab)) & {1, 6}
    assert seen == {1, 6}


def test_lesion_free_case_falls_back_to_negatives_and_bad_rates_raise():
    image, label = painted_case()
    label = np.where(np.isin(label, range(1, 7)), PATCH_LIVER, label).astype(np.int16)
    rng = np.random.default_rng(7)
    for _ in range(10):
        _, lab, used = sample_training_patch(image, label, PATCH, rng)
        assert used == "original_negative" and not np.isin(lab, range(1, 7)).any()
    with pytest.raises(ValueError, match="unknown"):
        sample_training_patch(image, label, PATCH, rng, rates={"flip": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        sample_training_patch(image, label, PATCH, rng, rates={"original_positive": 0.0})


def test_reclassification_patches():
    image, label = painted_case()
    liver = label > 0
    lesion = label == 1
    patches, masks = make_reclassification_patches(image, liver, lesion, n=6, patch_size=PATCH, rng=0,
                                                   masked_value=-3.0)
    assert patches.shape == (6, 2) + PATCH and masks.shape == (6,) + PATCH and patches.dtype == np.float32
    src = np.sort(image[:, lesion], axis=1)
    for i in range(6):
        assert masks[i].sum() == lesion.sum()  # the whole lesion, in every patch
        np.testing.assert_array_equal(np.sort(patches[i][:, masks[i]], axis=1), src)
    # deterministic for a seed
    p2, m2 = make_reclassification_patches(image, liver, lesion, n=6, patch_size=PATCH, rng=0, masked_value=-3.0)
    np.testing.assert_array_equal(p2, patches)
    np.testing.assert_array_equal(m2, masks)
    # inputs untouched
    assert lesion.sum() == 48
    with pytest.raises(ValueError, match="empty"):
        make_reclassification_patches(image, liver, np.zeros_like(lesion), patch_size=PATCH)
    with pytest.raises(ValueError, match="same grid"):
        make_reclassification_patches(image[0], liver, lesion, patch_size=PATCH)


def test_reclassification_patches_mask_outside_liver():
    image, label = painted_case()
    liver, lesion = label > 0, label == 6
    patches, masks = make_reclassification_patches(image, liver, lesion, n=4, patch_size=PATCH, rng=1,
                                                   masked_value=-3.0)
    # original positives: voxels outside the liver are masked, liver voxels are the image
    for i in range(2):
        les_idx = np.argwhere(masks[i])[0]
        z, y, x = np.argwhere(lesion)[0]
        start = np.array([z, y, x]) - les_idx
        liv = crop(liver, start, PATCH, False)
        assert np.all(patches[i][:, ~liv] == -3.0)
        np.testing.assert_array_equal(patches[i][:, liv], crop(image, start, PATCH)[:, liv])
    # shuffled positives: the lesion on lesion-free liver, in a crop that avoids the original lesion
    lesion_vals = set(np.round(image[0, lesion], 5))
    for i in range(2, 4):
        assert masks[i].sum() == lesion.sum()
        rest = patches[i][0][~masks[i] & (patches[i][0] != -3.0)]
        assert rest.size > 0 and not (set(np.round(rest, 5)) & lesion_vals)
