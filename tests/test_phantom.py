"""Phantoms: reproducibility, anatomy and HU, lesion truth, textbook enhancement, missing/misaligned phases."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnunet_liver import labels as L
from nnunet_liver.labels import LESION_NAMES
from nnunet_liver.phantom import generate_case, write_phantom_dataset
from nnunet_liver.phantom.cli import main as phantom_main
from nnunet_liver.phantom.lesions import sample_volume_cm3

SMALL = dict(shape=(16, 64, 64), spacing=(5.0, 3.0, 3.0))
MEDIUM = dict(shape=(32, 128, 128), spacing=(5.0, 3.0, 3.0))


def _digest(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, folder)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def all_types_case():
    """A medium case with one lesion of each type, no noise blur on the pattern check beyond the default."""
    return generate_case(11, lesion_types=LESION_NAMES, lesion_volumes_cm3=[6, 8, 6, 10, 8, 12], **MEDIUM)


def test_same_seed_same_arrays_and_different_seed_differs():
    a, b = generate_case(3, **SMALL), generate_case(3, **SMALL)
    c = generate_case(4, **SMALL)
    assert all(np.array_equal(a.images[p], b.images[p]) for p in L.PHASES)
    assert np.array_equal(a.label, b.label) and a.lesions == b.lesions
    assert not np.array_equal(a.images["V"], c.images["V"])


def test_dataset_bytes_identical_across_runs_and_workers(tmp_path):
    kw = dict(seed=7, shape=(16, 48, 48), spacing=(5.0, 4.0, 4.0), missing_delayed=0.5, misalign_mm=3.0,
              progress=False)
    one = write_phantom_dataset(tmp_path / "a" / "Dataset900_P", 3, num_processes=1, **kw)
    two = write_phantom_dataset(tmp_path / "b" / "Dataset900_P", 3, num_processes=2, **kw)
    d1, d2 = _digest(one), _digest(two)
    assert len(d1) == 3 * 4 + 3 + 2  # images, labels, dataset.json, truth.json
    assert d1 == d2
    other = write_phantom_dataset(tmp_path / "c" / "Dataset900_P", 3, num_processes=1, **dict(kw, seed=8))
    assert _digest(other)["labelsTr/phantom_000.nii.gz"] != d1["labelsTr/phantom_000.nii.gz"]


def test_dataset_layout_truth_and_label_volumes(tmp_path):
    import SimpleITK as sitk

    out = write_phantom_dataset(tmp_path / "Dataset901_P", 4, seed=1, missing_delayed=1.0, progress=False, **SMALL)
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "NC", "1": "A", "2": "V", "3": "D"}
    assert meta["labels"] == L.dataset_json_labels() and meta["numTraining"] == 4
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    assert sorted(truth["cases"]) == [f"phantom_{i:03d}" for i in range(4)]
    for case, entry in truth["cases"].items():
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz")))
        delayed = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / f"{case}_0003.nii.gz")))
        assert entry["missing_phases"] == ["D"] and np.all(delayed == L.MISSING_PHASE_VALUE)
        voxel_cm3 = np.prod(entry["spacing"]) / 1000.0
        assert sum(np.count_nonzero(label == t) for t in L.LESION_IDS) == sum(
            les["num_voxels"] for les in entry["lesions"])
        for les in entry["lesions"]:
            z, y, x = np.round(les["center_voxel"]).astype(int)
            assert les["volume_cm3"] == pytest.approx(les["num_voxels"] * voxel_cm3, abs=1e-3)
            assert les["label"] == L.id_of(les["type"])


def test_lesions_inside_liver_separate_and_volumes_match(all_types_case):
    case = all_types_case
    assert sorted(les["type"] for les in case.lesions) == sorted(LESION_NAMES)
    lesion_fg = np.isin(case.label, L.LESION_IDS)
    components, n = ndimage.label(lesion_fg, np.ones((3, 3, 3), bool))
    assert n == len(case.lesions)  # separate (not even touching diagonally)
    liver_hull = ndimage.binary_fill_holes(np.isin(case.label, L.LIVER_REGION_IDS))
    voxel_cm3 = np.prod(case.spacing) / 1000.0
    for les in case.lesions:
        c = tuple(np.round(les["center_voxel"]).astype(int))
        comp = components == components[c] if components[c] else None
        assert comp is not None, f"lesion {les['id']} centre is not inside the lesion"
        assert np.all(case.label[comp] == les["label"])
        assert comp.sum() * voxel_cm3 == pytest.approx(les["volume_cm3"], abs=1e-3)
        # enclosed by the liver: every face neighbour of the lesion is lesion, liver or hepatic vessel
        ring = ndimage.binary_dilation(comp) & ~comp
        assert np.isin(case.label[ring], (L.LIVER, L.HEPATIC_VESSELS) + L.LESION_IDS).all() or liver_hull[comp].all()
        assert np.isin(case.label[ring], (L.LIVER, L.HEPATIC_VESSELS)).mean() > 0.8


def _median(case, phase, mask):
    return float(np.median(case.images[phase][mask]))


def _lesion_vs_liver(case, kind):
    les = next(x for x in case.lesions if x["type"] == kind)
    mask = case.label == les["label"]
    liver = ndimage.binary_erosion(case.label == L.LIVER, iterations=2)
    return {p: _median(case, p, mask) - _median(case, p, liver) for p in L.PHASES}, mask


def test_liver_and_vessel_hu_per_phase(all_types_case):
    case = all_types_case
    liver = ndimage.binary_erosion(case.label == L.LIVER, iterations=2)
    expected = {"NC": 55, "A": 70, "V": 110, "D": 90}
    for p, hu in expected.items():
        assert abs(_median(case, p, liver) - hu) < 0.2 * hu + 8, p
    for vessel in (L.HEPATIC_VESSELS, L.PORTAL_SPLENIC_VEIN):
        mask = case.label == vessel
        assert mask.sum() > 20
        for p in ("A", "V"):
            assert _median(case, p, mask) > _median(case, p, liver) + 15, (vessel, p)
        assert _median(case, "NC", mask) < _median(case, "NC", liver)
    bile = case.label == L.GALLBLADDER
    assert _median(case, "V", bile) < 40
    fat_outside = (case.label == 0) & (case.images["NC"] < -50) & (case.images["NC"] > -300)
    assert abs(np.median(case.images["NC"][fat_outside]) + 100) < 25


def test_organs_where_they_belong(all_types_case):
    lab = all_types_case.label
    centre = {k: np.argwhere(lab == k).mean(axis=0) for k in range(7, 14)}
    x = {k: c[2] for k, c in centre.items()}
    # identity direction (LPS): larger x index = patient's left; liver right, spleen and stomach left
    assert x[L.LIVER] < lab.shape[2] / 2 < x[L.SPLEEN] and x[L.STOMACH] > lab.shape[2] / 2
    assert centre[L.SPLEEN][1] > centre[L.STOMACH][1]  # spleen posterior to the stomach
    assert centre[L.GALLBLADDER][0] < centre[L.LIVER][0]  # gallbladder below the liver's centre
    assert centre[L.PANCREAS][0] < centre[L.LIVER][0]
    for k in range(1, 14):
        assert np.any(lab == k), L.name_of(k)


def test_textbook_enhancement(all_types_case):
    case = all_types_case
    hcc, _ = _lesion_vs_liver(case, "HCC")
    assert hcc["A"] > 10 and hcc["V"] < -5 and hcc["D"] < -3  # APHE and washout
    icc, mask = _lesion_vs_liver(case, "ICC")
    icc_hu = {p: _median(case, p, mask) for p in L.PHASES}
    assert icc["D"] > icc["V"] + 5 and icc["D"] > 0 and icc_hu["D"] > icc_hu["A"]  # progressive, delayed
    meta, _ = _lesion_vs_liver(case, "Meta")
    assert meta["V"] < -10
    fnh, _ = _lesion_vs_liver(case, "Other")
    assert fnh["A"] > 30 and abs(fnh["V"]) < 15 and abs(fnh["D"]) < 15  # strong arterial, iso later
    hem, _ = _lesion_vs_liver(case, "Hem")
    assert hem["V"] > 0 and hem["D"] > 0 and hem["NC"] < 0  # fills in, follows blood pool
    cyst, mask = _lesion_vs_liver(case, "Cyst")
    depth = ndimage.distance_transform_edt(mask, sampling=case.spacing)
    core = depth >= 0.5 * depth.max()  # away from the partial-volume margin
    cyst_hu = [_median(case, p, core) for p in L.PHASES]
    assert max(cyst_hu) < 25 and max(cyst_hu) - min(cyst_hu) < 15 and -5 < np.mean(cyst_hu) < 18  # water, flat


def test_hcc_capsule_and_hemangioma_centripetal_fill_in():
    case = generate_case(5, lesion_types=["HCC", "Hem"], lesion_volumes_cm3=[30, 30], noise=False,
                         shape=(48, 256, 256))
    liver = ndimage.binary_erosion(case.label == L.LIVER, iterations=2)
    for kind in ("HCC", "Hem"):
        mask = case.label == L.id_of(kind)
        depth = ndimage.distance_transform_edt(mask, sampling=case.spacing)
        outer, centre = mask & (depth <= 0.3 * depth.max()), depth >= 0.6 * depth.max()
        assert centre.sum() > 5
        mean = {p: (case.images[p][outer].mean(), case.images[p][centre].mean()) for p in L.PHASES}
        if kind == "HCC":  # enhancing capsule in D, not in A
            assert mean["D"][0] > mean["D"][1] + 5 and mean["A"][0] < mean["A"][1]
        else:  # peripheral nodules in A, centre unenhanced; filled in and above the liver by D
            assert mean["A"][0] > mean["A"][1] + 20
            assert mean["D"][1] > np.median(case.images["D"][liver])


def test_lesion_free_missing_delayed_and_phase_subset():
    case = generate_case(2, lesion_free=True, missing_delayed=True, **SMALL)
    assert case.lesions == [] and not np.isin(case.label, L.LESION_IDS).any()
    assert np.all(case.images["D"] == L.MISSING_PHASE_VALUE) and case.missing_phases == ["D"]
    assert case.images["V"].std() > 10
    only = generate_case(2, phases=("V", "A"), **SMALL)
    assert list(only.images) == ["A", "V"]
    with pytest.raises(ValueError):
        generate_case(2, phases=("X",), **SMALL)


def test_misalignment_recorded_and_applied():
    aligned = generate_case(9, noise=False, **MEDIUM)
    moved = generate_case(9, noise=False, misalign_mm=6.0, **MEDIUM)
    assert moved.shifts_mm["V"] == [0.0, 0.0, 0.0]
    assert np.array_equal(aligned.images["V"], moved.images["V"])
    for p in ("NC", "A", "D"):
        s = np.asarray(moved.shifts_mm[p])
        assert 3.0 - 1e-6 <= np.linalg.norm(s) <= 6.0 + 1e-6
        expected = ndimage.shift(aligned.images[p], s / np.asarray(moved.spacing), order=1, mode="nearest")
        assert np.allclose(moved.images[p], expected, atol=1e-3)
        assert np.abs(moved.images[p] - aligned.images[p]).mean() > 1.0


def test_sizes_span_small_to_large_with_many_small():
    rng = np.random.default_rng(0)
    v = np.array([sample_volume_cm3(rng) for _ in range(2000)])
    assert v.min() >= 0.5 and v.max() > 64
    assert np.mean(v < 5) > 0.5 and np.mean(v > 64) > 0.01
    big = generate_case(0, lesion_types=["HCC"] * 3 + ["Cyst"] * 3)  # default 64 x 256 x 256
    assert len(big.lesions) == 6


def test_min_lesion_volume_raises_the_floor_keeps_the_anatomy_and_is_recorded(tmp_path, capsys):
    rng = np.random.default_rng(0)
    v = np.array([sample_volume_cm3(rng, low=3.0) for _ in range(2000)])
    assert v.min() >= 3.0 and v.max() <= 120.0 and np.mean(v < 10) > 0.3
    # the same seed draws the same random numbers: same anatomy, same lesion types, bigger lesions
    kw = dict(shape=(24, 96, 96), spacing=(6.0, 4.0, 4.0))
    organs = [lab.id for lab in L.LABELS if lab.id not in (0, *L.LIVER_REGION_IDS)]
    assert organs == [9, 10, 11, 12, 13]
    for seed in range(3, 9):
        small, large = generate_case(seed, **kw), generate_case(seed, min_lesion_cm3=3.0, **kw)
        for t in organs:
            assert np.array_equal(small.label == t, large.label == t)
        assert small.lesion_free == large.lesion_free
        if not small.lesion_free:
            assert [les["type"] for les in small.lesions] != [] and len(large.lesions) >= 1
            # placement shrinks a lesion that does not fit by 0.7 per 8 tries; the largest always fits here
            assert max(les["volume_cm3"] for les in large.lesions) >= 0.9 * 3.0
            assert (sum(les["volume_cm3"] for les in large.lesions) / len(large.lesions)
                    > sum(les["volume_cm3"] for les in small.lesions) / len(small.lesions))
    out = tmp_path / "Dataset904_P"
    assert phantom_main(["-o", str(out), "-n", "2", "--seed", "2", "--shape", "16", "48", "48", "--spacing", "5", "4",
                         "4", "--min-lesion-volume", "2.5"]) == 0
    assert json.loads((out / "truth.json").read_text(encoding="utf-8"))["settings"]["min_lesion_cm3"] == 2.5
    capsys.readouterr()
    assert phantom_main(["-o", str(tmp_path / "Dataset905_P"), "-n", "1", "--min-lesion-volume", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "min_lesion_cm3" in err[0]
    assert not (tmp_path / "Dataset905_P").exists()


def test_cli_writes_dataset_and_rejects_bad_phases(tmp_path, capsys):
    out = tmp_path / "Dataset902_P"
    rc = phantom_main(["-o", str(out), "-n", "2", "--seed", "1", "--shape", "16", "48", "48", "--spacing", "5", "4",
                       "4", "--phases", "A,V", "--misalign-mm", "2"])
    assert rc == 0
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "A", "1": "V"}
    assert sorted(os.listdir(out / "imagesTr"))[:2] == ["phantom_000_0000.nii.gz", "phantom_000_0001.nii.gz"]
    capsys.readouterr()
    rc = phantom_main(["-o", str(tmp_path / "Dataset903_P"), "-n", "1", "--phases", "V,X"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "X" in err[0]
    assert not (tmp_path / "Dataset903_P").exists()
    rc = phantom_main(["-o", str(out), "-n", "1"])  # exists, no --overwrite
    assert rc != 0 and "already exists" in capsys.readouterr().err


def test_random_draw_gives_lesion_free_livers_and_several_types():
    cases = [generate_case(s, shape=(16, 48, 48), spacing=(5.0, 4.0, 4.0)) for s in range(30)]
    free = [c for c in cases if c.lesion_free]
    assert 2 <= len(free) <= 15 and all(not c.lesions for c in free)
    types = {les["type"] for c in cases for les in c.lesions}
    assert types == set(LESION_NAMES)
