"""The anatomy phase identification rests on, on painted volumes: spine, aorta (never oral contrast, lipiodol,
calcified plaque, a stent or bone), liver, kidneys, spleen; golden values, and the empty and odd cases."""
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.dicom.anatomy import body_masks, find_aorta, find_spine, to_slices
from nnunet_liver.dicom.organs import measure_enhancement

PX = 2.0  # mm, in-plane
N = 180  # pixels: a 360 mm field of view
SPINE_FRONT_Y = 37.0  # mm (y grows towards the back; 0 = the body's centre)
AORTA = (12.0, 23.0, 11.0)  # centre x (patient's left +), y, radius (mm): in front of the vertebral body, left


def _grid():
    c = (np.arange(N) - (N - 1) / 2) * PX
    return c[:, None], c[None, :]  # y, x (mm)


def _disk(cx, cy, r):
    y, x = _grid()
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _ellipse(cx, cy, rx, ry):
    y, x = _grid()
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def abdomen(nz=12, aorta_hu=250.0, liver_hu=60.0, seed=0, aorta=True, spine=True):
    """(z, y, x) HU of a painted abdomen: fat, a muscle wall, a liver on the right, a vertebra with its canal and
    arch, and the aorta left-anterior of the vertebral body; 10 HU of noise."""
    s = np.full((N, N), -1000.0, np.float32)
    s[_ellipse(0, 0, 160, 115)] = 45.0
    s[_ellipse(0, 0, 150, 105)] = -100.0
    s[_ellipse(-75, -5, 55, 60)] = liver_hu
    if spine:
        s[_disk(0, 55, 18)] = 600.0  # vertebral body: cortex ...
        s[_disk(0, 55, 16)] = 230.0  # ... and cancellous bone
        s[_ellipse(0, 92, 16, 14)] = 700.0  # posterior arch
        s[_disk(0, 84, 8)] = 20.0  # spinal canal
        s[_ellipse(0, 102, 4, 8)] = 700.0  # spinous process
    if aorta:
        s[_disk(*AORTA)] = aorta_hu
    vol = np.repeat(s[None], nz, axis=0)
    vol += np.random.default_rng(seed).normal(0.0, 10.0, vol.shape).astype(np.float32)
    return vol


def image(vol, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(vol.astype(np.float32))
    img.SetSpacing((PX, PX, 10.0))
    img.SetDirection(direction)
    img.SetOrigin((-(N - 1) / 2 * PX, -(N - 1) / 2 * PX, 0.0))
    return img


def aorta_of(vol, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    s = to_slices(image(vol, direction))
    body = body_masks(s)
    spine = find_spine(s, body)
    return find_aorta(s, body, spine), spine, s


def _row(y_mm):
    return y_mm / PX + (N - 1) / 2


def test_spine_and_aorta_golden_values():
    track, spine, s = aorta_of(abdomen(aorta_hu=250.0))
    assert s.pixel_mm == (PX, PX) and spine.found == spine.measured == 12
    assert np.allclose(spine.x, _row(0.0), atol=1.0)
    assert np.allclose(spine.y_front, _row(SPINE_FRONT_Y), atol=1.5)
    assert track.found and track.slices == 12
    assert track.hu == pytest.approx(250.0, abs=6.0)
    assert 16.0 <= track.diameter_mm <= 28.0
    ys, xs = zip(*[(y, x) for _, y, x in track.track])
    assert np.allclose(xs, _row(AORTA[0]), atol=1.5) and np.allclose(ys, _row(AORTA[1]), atol=1.5)


@pytest.mark.parametrize("aorta_hu", [40.0, 130.0, 420.0])
def test_aorta_hu_from_non_contrast_to_arterial(aorta_hu):
    track, _, _ = aorta_of(abdomen(aorta_hu=aorta_hu))
    assert track.found and track.hu == pytest.approx(aorta_hu, abs=8.0)


def test_a_stomach_full_of_contrast_beside_the_aorta_is_not_the_aorta():
    vol = abdomen(aorta_hu=40.0)  # non-contrast: the brightest thing in front of the spine is the stomach
    vol[:, _ellipse(60, -10, 35, 28)] = 480.0 + np.random.default_rng(1).normal(0, 10, vol.shape[0])[:, None]
    track, _, _ = aorta_of(vol)
    assert track.found and track.hu == pytest.approx(40.0, abs=8.0)


def test_a_round_bowel_loop_with_oral_contrast_on_two_slices_is_left_out():
    vol = abdomen(aorta_hu=170.0)
    vol[5:7, _disk(30, -20, 12)] = 380.0  # round, near the aorta, but not continuous over the slices
    track, _, _ = aorta_of(vol)
    assert track.hu == pytest.approx(170.0, abs=8.0)
    assert all(abs(x - _row(AORTA[0])) < 2 for _, _, x in track.track)


def test_lipiodol_and_bone_are_never_the_aorta():
    vol = abdomen(aorta_hu=40.0)
    vol[:, _disk(25, -5, 10)] = 1400.0  # a dense lipiodol-like blob in the window
    track, _, _ = aorta_of(vol)
    assert track.hu == pytest.approx(40.0, abs=8.0)
    no_aorta, spine, _ = aorta_of(abdomen(aorta=False))
    assert spine.measured == 12 and not no_aorta.found  # the vertebral body is not taken for the aorta
    assert no_aorta.to_dict()["hu"] is None


def test_calcified_plaque_and_a_stent_do_not_raise_the_lumen():
    vol = abdomen(aorta_hu=180.0)
    cx, cy, r = AORTA
    wall = _disk(cx, cy, r + 2.0) & ~_disk(cx, cy, r - 0.5)
    y, x = _grid()
    vol[:, wall & (x > cx)] = 900.0  # calcified plaque on the left half of the wall
    plaque, _, _ = aorta_of(vol)
    assert plaque.found and plaque.hu == pytest.approx(180.0, abs=10.0)
    vol = abdomen(aorta_hu=180.0)
    vol[:, wall] = 2500.0  # a stent all around
    stent, _, _ = aorta_of(vol)
    assert stent.found and stent.hu == pytest.approx(180.0, abs=10.0)


def test_flipped_in_plane_axes_give_the_same_aorta():
    vol = abdomen(aorta_hu=220.0)
    flipped = vol[:, ::-1, ::-1]  # rows right-to-left, columns posterior-to-anterior
    track, _, _ = aorta_of(flipped, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert track.found and track.hu == pytest.approx(220.0, abs=6.0)


def test_no_spine_searches_the_midline():
    track, spine, _ = aorta_of(abdomen(aorta_hu=200.0, spine=False))
    assert spine.found == 0 and not track.spine_found
    assert track.found and track.hu == pytest.approx(200.0, abs=8.0)


def test_empty_and_odd_images():
    air = np.full((6, N, N), -1000.0, np.float32)
    found = measure_enhancement(image(air))
    assert not found.aorta.found and not found.liver.found and found.body_slices == 0
    assert any("aorta: not found" in n for n in found.notes())
    one = measure_enhancement(image(abdomen(nz=1, aorta_hu=260.0)))
    assert one.aorta.found and one.aorta.slices == 1 and one.aorta.hu == pytest.approx(260.0, abs=8.0)
    tiny = np.full((3, 8, 8), 50.0, np.float32)  # smaller than a body: nothing, and no crash
    assert not measure_enhancement(image(tiny)).liver.found


def test_liver_kidneys_and_spleen():
    vol = abdomen(aorta_hu=300.0, liver_hu=70.0)
    y, x = _grid()
    for side in (-1, 1):  # kidneys: an enhanced cortex around a darker medulla (arterial phase)
        vol[:, _ellipse(side * 75, 60, 28, 22)] = 200.0
        vol[:, _ellipse(side * 75, 60, 18, 12)] = 70.0
    bands = (np.sin(x / 6.0) > 0)  # an arciform spleen, left and back
    spleen = _ellipse(105, 40, 35, 45)
    vol[:, spleen & bands] = 175.0
    vol[:, spleen & ~bands] = 85.0
    found = measure_enhancement(image(vol))
    assert found.liver.hu == pytest.approx(70.0, abs=6.0)
    assert found.kidneys.cortex_hu == pytest.approx(200.0, abs=15.0) and found.kidneys.medulla_share > 0.15
    assert found.kidneys.excreted_cm2 == 0.0
    assert found.spleen.spread_hu - found.spleen.liver_spread_hu > 60
    # the delayed phase: a homogeneous nephrogram and contrast in the collecting systems
    for side in (-1, 1):
        vol[:, _ellipse(side * 75, 60, 28, 22)] = 150.0
        vol[:, _ellipse(side * 70, 60, 8, 6)] = 900.0
    vol[:, spleen] = 110.0
    late = measure_enhancement(image(vol))
    assert late.kidneys.medulla_share < 0.05 and late.kidneys.excreted_cm2 > 2.0
    assert late.spleen.spread_hu - late.spleen.liver_spread_hu < 15
