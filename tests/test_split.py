"""Instance-preserving high sensitivity (postprocessing.split): painted label maps, a brute-force nearest-marker
reference, and the detector with and without ``--no-split`` on rule models."""
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_liver.postprocessing.seg2det import instance_map, seg2det, slice_overlap_components
from nnunet_liver.postprocessing.split import split_instances, split_lesions

HCC, HEM, CYST = 1, 4, 6
SPACING = (5.0, 1.5, 1.5)


def lesion_dicts(lesions):
    return [l.to_dict() for l in lesions]


def joined_pair():
    """f = 1: an HCC and a hemangioma 3 voxels apart in x; f = 4: the same two grown and joined by a bridge."""
    lo = np.zeros((6, 16, 24), np.uint8)
    lo[1:5, 4:10, 2:8] = HCC
    lo[1:5, 4:10, 11:17] = HEM
    hi = lo.copy()
    hi[1:5, 5:9, 8:11] = HEM  # the bridge f = 4 adds
    hi[1:5, 3, 2:17] = HEM  # and a rim
    return lo, hi


def nearest_marker_reference(mask, markers, spacing):
    """Brute force: for every voxel of ``mask``, the marker ids at the smallest Euclidean distance (in mm)."""
    pts = np.argwhere(markers > 0)
    ids = markers[tuple(pts.T)]
    sp = np.asarray(spacing, float)
    out = {}
    for v in np.argwhere(mask):
        d = np.sqrt((((pts - v) * sp) ** 2).sum(axis=1))
        out[tuple(v)] = set(ids[np.isclose(d, d.min())].tolist())
    return out


def test_two_lesions_joined_at_f4_stay_two():
    lo, hi = joined_pair()
    low = seg2det(lo, SPACING)
    assert len(low) == 2 and len(seg2det(hi, SPACING)) == 1  # the paper's cascade merges them
    pieces = split_lesions(hi, low, SPACING)
    assert len(pieces) == 2
    union = sum(p.global_mask(hi.shape).astype(int) for p in pieces)
    assert union.max() == 1 and np.array_equal(union > 0, hi > 0)  # a partition of the f = 4 region
    for p, l in zip(pieces, low):  # ids by raster order: piece k holds low-factor lesion k
        assert (p.global_mask(hi.shape) >= l.global_mask(hi.shape)).all()
    # types voted per piece: the HCC piece is HCC although the joined region holds more hemangioma voxels
    assert [p.type for p in pieces] == ["HCC", "Hem"]
    assert seg2det(hi, SPACING)[0].type == "Hem"
    # every voxel with one nearest marker went to it (ties, the voxels halfway, to either)
    markers = instance_map(low, hi.shape)
    ref = nearest_marker_reference(hi > 0, markers, SPACING)
    split = split_instances(hi, markers, SPACING)
    assert split.count == 2 and split.regions_split == 1
    for v, near in ref.items():
        assert len(near) > 1 or split.instances[v] == next(iter(near)), v
    # each piece is one lesion by seg2det's slice-overlap rule
    for k in (1, 2):
        assert slice_overlap_components(split.instances == k)[1] == 1


def test_anisotropic_spacing_moves_the_cut():
    """Two markers at opposite corners of a (z, x) plane: the cut is the nearest-marker boundary in mm, so it
    turns with the spacing."""
    hi = np.full((7, 1, 9), HCC, np.uint8)
    markers = np.zeros(hi.shape, np.int32)
    markers[0, 0, 0], markers[6, 0, 8] = 1, 2
    cuts = []
    for spacing in [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0), (1.0, 1.0, 3.0), SPACING]:
        inst = split_instances(hi, markers, spacing).instances
        for v, near in nearest_marker_reference(hi > 0, markers, spacing).items():
            assert len(near) > 1 or inst[v] == next(iter(near)), (spacing, v)
        cuts.append(inst.tobytes())
    assert len(set(cuts[:3])) == 3  # the spacing matters


def test_lesion_only_f4_finds_stays_one():
    lo, hi = joined_pair()
    hi[1:3, 13:15, 20:23] = CYST  # a lesion f = 1 does not see
    low = seg2det(lo, SPACING)
    pieces = split_lesions(hi, low, SPACING)
    assert len(pieces) == 3
    cyst = [p for p in pieces if p.type == "Cyst"]
    assert len(cyst) == 1 and cyst[0].num_voxels == 12
    (ref,) = [l for l in seg2det(hi, SPACING) if l.type == "Cyst"]
    assert {**cyst[0].to_dict(), "id": 0} == {**ref.to_dict(), "id": 0}


def test_one_lesion_grown_at_f4_is_unchanged():
    rng = np.random.default_rng(0)
    lo = np.zeros((6, 16, 16), np.uint8)
    lo[2:4, 5:9, 5:9] = HCC
    hi = lo.copy()
    hi[1:5, 3:12, 3:12] = np.where(rng.random((4, 9, 9)) < 0.5, HEM, CYST)
    hi[2:4, 5:9, 5:9] = HCC
    hi[0, 0, 0] = CYST  # a second region without a marker
    probs = rng.random((14,) + hi.shape).astype(np.float32)
    images = {ph: rng.normal(60, 10, hi.shape).astype(np.float32) for ph in ("NC", "A", "V")}
    kw = dict(probabilities=probs, images=images, origin=(1.0, 2.0, 3.0), direction=None)
    plain = seg2det(hi, SPACING, **kw)
    split = split_lesions(hi, seg2det(lo, SPACING), SPACING, **kw)
    assert lesion_dicts(split) == lesion_dicts(plain)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(split, plain))
    markers = instance_map(seg2det(lo, SPACING), hi.shape)
    assert split_instances(hi, markers, SPACING).regions_split == 0


def test_region_touching_three_markers_gives_three_pieces():
    lo = np.zeros((3, 20, 20), np.uint8)
    lo[1, 2:5, 2:5] = HCC
    lo[1, 2:5, 14:17] = HEM
    lo[1, 14:17, 8:11] = CYST
    hi = lo.copy()
    hi[1, 3, 5:14] = CYST  # bridges: a T joining all three
    hi[1, 4:14, 9] = CYST
    low = seg2det(lo, SPACING)
    pieces = split_lesions(hi, low, SPACING)
    assert len(pieces) == 3 and sorted(p.type for p in pieces) == ["Cyst", "HCC", "Hem"]
    assert sum(p.num_voxels for p in pieces) == int((hi > 0).sum())
    split = split_instances(hi, instance_map(low, hi.shape), SPACING)
    assert (split.count, split.regions_split) == (3, 1)


def test_ties_are_deterministic():
    lo = np.zeros((1, 5, 11), np.uint8)
    lo[0, 2, 0] = HCC
    lo[0, 2, 10] = HCC
    hi = np.zeros_like(lo)
    hi[0, 2, :] = HCC  # voxel x = 5 is halfway
    markers = instance_map(seg2det(lo, SPACING), lo.shape)
    a = split_instances(hi, markers, SPACING).instances
    for _ in range(3):
        assert np.array_equal(split_instances(hi.copy(), markers.copy(), SPACING).instances, a)
    assert a[0, 2, :5].tolist() == [1] * 5 and a[0, 2, 6:].tolist() == [2] * 5 and a[0, 2, 5] in (1, 2)


def test_empty_maps():
    empty = np.zeros((4, 8, 8), np.uint8)
    some = empty.copy()
    some[1:3, 2:5, 2:5] = HCC
    assert split_lesions(empty, [], SPACING) == []
    assert split_lesions(empty, seg2det(some, SPACING), SPACING) == []  # markers but no high-factor lesion
    assert lesion_dicts(split_lesions(some, [], SPACING)) == lesion_dicts(seg2det(some, SPACING))
    r = split_instances(empty, np.zeros(empty.shape, np.uint16), SPACING)
    assert (r.count, r.regions_split, int(r.instances.max())) == (0, 0, 0)
    assert split_instances(np.zeros((0, 4, 4), np.uint8), np.zeros((0, 4, 4), np.uint16), SPACING).count == 0


def test_markers_partly_outside_the_high_map():
    """Markers are clipped to the region; a marker outside every region counts for none."""
    lo, hi = joined_pair()
    markers = instance_map(seg2det(lo, SPACING), lo.shape).astype(np.int32)
    markers[0, 0, 0] = 7  # outside the f = 4 region
    hi2 = hi.copy()
    hi2[1:5, 4:10, 2:4] = 0  # half of marker 1 is not in the high map
    split = split_instances(hi2, markers, SPACING)
    assert split.count == 2 and np.array_equal(split.instances > 0, hi2 > 0)


def test_bad_inputs():
    lo, hi = joined_pair()
    with pytest.raises(ValueError, match="shape"):
        split_instances(hi, np.zeros((2, 2, 2), np.int32), SPACING)
    with pytest.raises(ValueError, match="integer"):
        split_instances(hi, np.zeros(hi.shape, np.float32), SPACING)
    with pytest.raises(ValueError, match=">= 0"):
        split_instances(hi, -np.ones(hi.shape, np.int32), SPACING)
    with pytest.raises(ValueError, match="spacing"):
        split_instances(hi, np.zeros(hi.shape, np.int32), (1.0, 0.0, 1.0))
    # seg2det's instances must lie on lesion voxels
    bad = np.zeros(hi.shape, np.int32)
    bad[0, 0, 0] = 1
    with pytest.raises(ValueError, match="not lesion voxels"):
        seg2det(hi, SPACING, instances=bad)


def test_seg2det_instances_against_separate_lesions():
    """An instance map cutting a region gives the lesions seg2det measures when the pieces stand apart."""
    lo, hi = joined_pair()
    inst = split_instances(hi, instance_map(seg2det(lo, SPACING), lo.shape), SPACING).instances
    apart = np.zeros((hi.shape[0], hi.shape[1], hi.shape[2] + 4), hi.dtype)  # piece 2 shifted 4 voxels in x
    apart[..., :-4][inst == 1] = hi[inst == 1]
    apart[..., 4:][inst == 2] = hi[inst == 2]
    ref = seg2det(apart, SPACING)
    got = seg2det(hi, SPACING, instances=inst)
    for g, r in zip(got, ref):
        assert (g.type, g.num_voxels, g.volumes_cm3_by_type, g.diameter_mm) == \
            (r.type, r.num_voxels, r.volumes_cm3_by_type, r.diameter_mm)


# --- the detector on rule models (nnU-Net's predictor): with and without --no-split

sys.path.insert(0, str(Path(__file__).parent))
from test_detect import WHOLE_CENTERS, models, read_outputs, validate, write_case  # noqa: E402,F401


def paint_pair(bridge_hu: float = 100.0):
    """Liver 60 HU, two HCC blocks (150 HU) 2 voxels apart joined by a bridge (100 HU: only f = 4 calls it lesion),
    and a lone 100 HU lesion only f = 4 finds."""
    img = np.full((20, 48, 40), -1000, np.float32)
    img[3:17, 6:42, 4:36] = 60
    img[6:10, 10:18, 8:14] = 150
    img[6:10, 10:18, 16:22] = 150
    img[6:10, 12:16, 14:16] = bridge_hu
    img[12:14, 30:34, 24:28] = 100
    return img


@pytest.mark.slow
def test_detector_split_and_no_split(models, tmp_path):
    from nnunet_liver.inference.cli import main

    inp = tmp_path / "in"
    write_case(inp, "pair", paint_pair())
    out = {}
    for name, extra in (("split", []), ("paper", ["--no-split"])):
        out[name] = tmp_path / name
        assert main(["-i", str(inp), "-o", str(out[name]), "-m", models["whole"], "--patch-model", "none",
                     "--no-report", *extra]) == 0
    rec, img = read_outputs(out["split"], "pair")
    validate(rec)
    assert rec["settings"]["split"] is True
    arr = sitk_array(img)
    assert [l["sensitivity"] for l in rec["lesions"]] == ["same", "same", "diff"]
    assert [l["type"] for l in rec["lesions"]] == ["HCC", "HCC", "HCC"]
    paper, paper_img = read_outputs(out["paper"], "pair")
    validate(paper)
    assert paper["settings"]["split"] is False
    assert [l["sensitivity"] for l in paper["lesions"]] == ["same", "diff"]  # the pair merged: one lesion lost
    # the two split lesions are the paper's merged one, cut in two
    merged = sitk_array(paper_img) == 1
    assert np.array_equal((arr == 1) | (arr == 2), merged) and np.array_equal(arr == 3, sitk_array(paper_img) == 2)
    assert rec["lesions"][0]["volume_cm3"] + rec["lesions"][1]["volume_cm3"] == \
        pytest.approx(paper["lesions"][0]["volume_cm3"])


@pytest.mark.slow
def test_no_split_is_the_papers_cascade(models, tmp_path):
    """``split=False``: the final lesions are plain seg2det of the f = 4 map; with nothing to split, the default
    gives the same record (but the setting)."""
    from nnunet_liver.inference import LiverDetector
    from test_detect import paint_case

    files = {}
    for case, img in (("pair", paint_pair()), ("plain", paint_case(0))):
        write_case(tmp_path, case, img)
    res = {}
    for split in (False, True):
        det = LiverDetector(models["whole"], folds=[0], split=split)
        files = {n: str(tmp_path / f"{{}}_{i:04d}.nii.gz") for i, n in enumerate(det.channel_names)}
        res[split] = {c: det.detect({n: p.format(c) for n, p in files.items()}, c) for c in ("pair", "plain")}
    paper = res[False]["pair"]
    ref = seg2det(paper.label_maps[4.0], paper.case.spacing, images=paper.case.images_by_phase())
    keys = ("type", "num_voxels", "volumes_cm3_by_type", "bbox", "diameter_mm", "features", "hu_median")
    assert [{k: l.to_dict()[k] for k in keys} for l in paper.lesions] == [{k: l.to_dict()[k] for k in keys}
                                                                          for l in ref]
    assert len(res[True]["pair"].lesions) == len(paper.lesions) + 1

    def strip(rec):
        return {k: v for k, v in rec.items() if k not in ("timing_s", "settings")}
    assert strip(res[True]["plain"].record) == strip(res[False]["plain"].record)
    assert {**res[True]["plain"].record["settings"], "split": False, "marker_factor": None,
            "min_marker_cm3": None} == \
        res[False]["plain"].record["settings"]
    assert np.array_equal(res[True]["plain"].instance_map, res[False]["plain"].instance_map)
    # one prediction post-processed by both detectors = two full runs (evaluate_demo_models.detect_runs)
    from nnunet_liver.inference.cases import discover_cases

    (case,) = [c for c in discover_cases(str(tmp_path), 4) if c.case_id == "pair"]
    prediction = det.predict_case(case)
    for split in (False, True):
        again = LiverDetector(models["whole"], folds=[0], split=split).detect_case(case, prediction=prediction)
        assert strip(again.record) == strip(res[split]["pair"].record)
        assert np.array_equal(again.instance_map, res[split]["pair"].instance_map)


def sitk_array(img):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img)


@pytest.mark.slow
def test_detect_runs_equals_separate_detector_runs(models, tmp_path):
    """scripts/evaluate_demo_models.py's detect_runs (one prediction, several settings) writes what
    nnunet-liver-detect writes for each setting."""
    import json

    from nnunet_liver.inference.cli import main

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import evaluate_demo_models as E

    inp = tmp_path / "in"
    write_case(inp, "pair", paint_pair())
    runs = {"paper": dict(factors=(1, 4), split=False, patch_model_dir=None),
            "split": dict(factors=(1, 4), patch_model_dir=None)}
    folders = E.detect_runs(inp, tmp_path / "runs", runs, model=models["whole"], patch=None, progress=False)
    for name, extra in (("paper", ["--no-split"]), ("split", [])):
        out = tmp_path / f"cli_{name}"
        assert main(["-i", str(inp), "-o", str(out), "-m", models["whole"], "--patch-model", "none", "--no-report",
                     *extra]) == 0
        a, a_img = read_outputs(folders[name], "pair")
        b, b_img = read_outputs(out, "pair")
        for rec in (a, b):
            rec.pop("timing_s")
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
        assert np.array_equal(sitk_array(a_img), sitk_array(b_img))


def paint_joined_at_f1():
    """``paint_pair`` with a 110 HU bridge. With the rule model (HCC centre 150, liver 60, width 40) a voxel is lesion
    at factor f when its HU exceeds 105 - 8.89 ln f: f = 1 and 4 call the bridge lesion (105, 92.7 HU), f = 0.25
    does not (117.3 HU)."""
    return paint_pair(bridge_hu=110.0)


@pytest.mark.slow
def test_marker_factor_keeps_apart_what_f1_joins(models, tmp_path):
    """The lowest factor's region holding two of the marker factor's (0.25) lesions is split among them, and the
    f = 4 region follows; marker_factor=None (or 0 on the command line) gives the previous split; the marker factor
    must lie below the lowest factor; one prediction serves all settings."""
    from nnunet_liver.inference import LiverDetector
    from nnunet_liver.inference.cases import discover_cases
    from nnunet_liver.inference.cli import main
    from nnunet_liver.utils.io import InputError

    write_case(tmp_path / "in", "joined", paint_joined_at_f1())
    (case,) = discover_cases(str(tmp_path / "in"), 4)
    default = LiverDetector(models["whole"], folds=[0])
    assert default.marker_factor == 0.25 and default.map_factors == (0.25, 1.0, 4.0)
    prediction = default.predict_case(case)
    maps = prediction[1].maps
    spacing = prediction[0].spacing
    assert [len(seg2det(maps[f], spacing)) for f in (0.25, 1.0, 4.0)] == [2, 1, 2]  # f = 1 joins the pair
    res = default.detect_case(case, prediction=prediction)
    validate(res.record)
    assert res.record["settings"]["marker_factor"] == 0.25
    assert [(l["type"], l["sensitivity"]) for l in res.record["lesions"]] == [("HCC", "same")] * 2 + [("HCC", "diff")]
    # the two pieces are f = 1's (and f = 4's) joined region, cut in two, each holding one marker lesion
    joined = seg2det(maps[4.0], spacing)[0].global_mask(maps[4.0].shape)
    assert np.array_equal((res.instance_map == 1) | (res.instance_map == 2), joined)
    for lesion in seg2det(maps[0.25], spacing):
        assert len(np.unique(res.instance_map[lesion.global_mask(maps[0.25].shape)])) == 1
    assert res.record["patient"]["class_by_factor"] == {"1": "HCC", "4": "HCC"}
    # each marker-factor lesion is 4 x 8 x 6 voxels of 10 mm3 = 1.92 cm3: a floor above that leaves no marker
    assert res.record["settings"]["min_marker_cm3"] == 0.5
    floor = LiverDetector(models["whole"], folds=[0], min_marker_cm3=2.0).detect_case(case, prediction=prediction)
    assert [l["sensitivity"] for l in floor.record["lesions"]] == ["same", "diff"]
    with pytest.raises(InputError, match="min_marker_cm3"):
        LiverDetector(models["whole"], folds=[0], min_marker_cm3=-1)
    # without markers: f = 1 keeps the pair as one lesion, so f = 4 (split among f = 1's lesions) does too
    plain = LiverDetector(models["whole"], folds=[0], marker_factor=None).detect_case(case, prediction=prediction)
    assert plain.record["settings"]["marker_factor"] is None and plain.record["settings"]["min_marker_cm3"] is None
    assert [l["sensitivity"] for l in plain.record["lesions"]] == ["same", "diff"]
    assert np.array_equal(plain.instance_map == 1, joined)
    # Base (f = 1 alone) splits too; --no-split ignores the marker factor (the paper exactly)
    base = LiverDetector(models["whole"], folds=[0], factors=(1,)).detect_case(case, prediction=prediction)
    assert len(base.lesions) == 2 and np.array_equal(base.instance_map > 0, seg2det(maps[1.0], spacing)[0]
                                                     .global_mask(maps[1.0].shape))
    paper = LiverDetector(models["whole"], folds=[0], split=False, marker_factor=0.5)
    assert paper.marker_factor is None and paper.settings()["marker_factor"] is None
    for bad in (1.0, 2.0, -0.5, float("nan")):
        with pytest.raises(InputError, match="--marker-factor"):
            LiverDetector(models["whole"], folds=[0], marker_factor=bad)
    # the command line: --marker-factor 0 turns it off
    out = tmp_path / "off"
    assert main(["-i", str(tmp_path / "in"), "-o", str(out), "-m", models["whole"], "--patch-model", "none",
                 "--no-report", "--marker-factor", "0"]) == 0
    rec, _ = read_outputs(out, "joined")
    assert rec["settings"]["marker_factor"] is None and len(rec["lesions"]) == 2
