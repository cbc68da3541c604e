"""Cartoon abdominal anatomy of the phantoms, with plausible HU per contrast phase.

The body is laid out in a *standard* frame: a 384 x 384 mm axial field of view, 320 mm along z, centred on the
field of view, axes (z, y, x) = (superior, posterior, patient-left), the LPS directions of an image written with
the identity direction (so the liver, on the patient's right, sits at small x: the image's left in the usual
radiological display). The standard frame is scaled per axis onto the requested field of view, so any shape and
spacing holds the whole anatomy (small test shapes hold a squashed one).

Two maps come out: ``label`` in our 13-class ids and ``tissue`` (``TISSUES`` below, finer than the labels: fat,
muscle, bone, aorta ...), from which each phase's image is a table look-up (:func:`tissue_hu`).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from nnunet_liver import labels as L
from nnunet_liver.phantom.shapes import ellipsoid, smooth_noise, tube

__all__ = ["STANDARD_FOV_MM", "TISSUES", "TISSUE_HU", "BLOOD_POOL_HU", "LIVER_HU", "standard_coords",
           "build_anatomy", "tissue_hu"]

#: field of view of the standard frame, (z, y, x) in mm
STANDARD_FOV_MM = (320.0, 384.0, 384.0)

#: tissue name -> HU in (NC, A, V, D); the enhancement above NC is scaled per case by a contrast-timing factor
TISSUES: Dict[str, Tuple[float, float, float, float]] = {
    "air": (-1000, -1000, -1000, -1000),
    "fat": (-100, -100, -100, -100),
    "visceral_fat": (-95, -95, -95, -95),
    "muscle": (50, 58, 66, 62),
    "bone": (450, 455, 460, 458),
    "csf": (12, 12, 12, 12),
    "aorta": (40, 300, 160, 120),
    "ivc": (40, 70, 150, 120),
    "kidney": (35, 170, 165, 130),
    "bowel": (30, 60, 80, 70),
    "liver": (55, 70, 110, 90),
    "hepatic_vessel": (40, 120, 175, 125),
    "portal_vein": (40, 130, 180, 130),
    "gallbladder_bile": (8, 8, 9, 9),
    "gallbladder_wall": (40, 75, 85, 80),
    "spleen": (45, 120, 120, 100),
    "pancreas": (40, 115, 95, 75),
    "stomach_wall": (40, 90, 110, 85),
    "stomach_fluid": (10, 10, 10, 10),
    "stomach_air": (-950, -950, -950, -950),
    "lung": (-850, -850, -850, -850),
    "heart": (40, 230, 150, 115),
    # used only with organ detail (:mod:`.extras`); appended so that the default phantoms keep their tissue ids
    "kidney_cortex": (35, 200, 175, 140),
    "kidney_medulla": (35, 65, 150, 150),
    "renal_pelvis": (10, 10, 12, 520),  # contrast excreted into the collecting system in the delayed phase
    "spleen_red": (45, 175, 122, 100),  # the arterial spleen's arciform bands: bright ...
    "spleen_white": (45, 75, 118, 100),  # ... and dark; homogeneous from the portal-venous phase on
}
TISSUE_IDS = {name: i for i, name in enumerate(TISSUES)}
TISSUE_HU = np.array(list(TISSUES.values()), dtype=np.float32)  # (n_tissues, 4)
#: blood pool (aorta) and liver parenchyma HU in (NC, A, V, D): lesion patterns are defined against them
BLOOD_POOL_HU = np.array(TISSUES["aorta"], dtype=np.float32)
LIVER_HU = np.array(TISSUES["liver"], dtype=np.float32)


def tissue_hu(tissue: np.ndarray, phase_index: int, enhancement: float = 1.0) -> np.ndarray:
    """Image (float32 HU) of a tissue map in one phase; ``enhancement`` scales every tissue's rise above NC."""
    table = TISSUE_HU[:, 0] + enhancement * (TISSUE_HU[:, phase_index] - TISSUE_HU[:, 0])
    return table.astype(np.float32)[tissue]


def standard_coords(shape: Sequence[int], spacing: Sequence[float]):
    """Per-axis 1D coordinates (mm, standard frame) of voxel centres, and the per-axis scale real/standard."""
    scale = tuple(n * s / f for n, s, f in zip(shape, spacing, STANDARD_FOV_MM))
    coords = tuple(((np.arange(n) - (n - 1) / 2.0) * s / k).astype(np.float32)
                   for n, s, k in zip(shape, spacing, scale))
    return coords, scale


def _paint(label, tissue, hit, label_id=None, tissue_name=None, where=None):
    """Paint a (box, mask) hit, optionally only where ``where(label_box, tissue_box)`` is True."""
    if hit is None:
        return
    box, mask = hit[0], hit[1]
    if where is not None:
        mask = mask & where(label[box], tissue[box])
    if label_id is not None:
        label[box][mask] = label_id
    if tissue_name is not None:
        tissue[box][mask] = TISSUE_IDS[tissue_name]


def build_anatomy(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]):
    """Draw one body: returns ``(label uint8 (Z,Y,X), tissue uint8 (Z,Y,X))`` for a case's random anatomy.

    The structures are drawn in a fixed order (each step draws from ``rng``), later ones painted only where the
    earlier ones leave room: body wall, spine, ribs and great vessels; bowel and kidneys; stomach, spleen and
    pancreas; liver; lung bases and heart; gallbladder; portal and splenic vein; hepatic vessels.
    """
    coords, _ = standard_coords(shape, spacing)
    tissue = _body_wall(rng, coords, shape)
    label = np.zeros(tuple(shape), np.uint8)
    _bowel_and_kidneys(rng, coords, label, tissue)
    pancreas = _stomach_spleen_pancreas(rng, coords, label, tissue)
    lc, lr = _liver(rng, coords, label, tissue)
    _chest(rng, coords, label, tissue, lc, lr)
    _gallbladder(rng, coords, label, tissue, lc, lr)
    hilum = _portal_vein(rng, coords, label, tissue, lc, lr, pancreas)
    _hepatic_vessels(rng, coords, label, tissue, lc, lr, hilum)
    return label, tissue


def _jitter(rng: np.random.Generator):
    """``j(s)``: a uniform jitter in [-s, s] (mm, or a relative size)."""
    return lambda s: float(rng.uniform(-s, s))


def _free_cavity(lab, tis):
    """Where an abdominal organ may be painted: unlabelled visceral fat or bowel."""
    return (lab == 0) & ((tis == TISSUE_IDS["visceral_fat"]) | (tis == TISSUE_IDS["bowel"]))


def _body_wall(rng, coords, shape) -> np.ndarray:
    """The tissue map of the body wall, spine, aorta (axial 2D, the same on every slice), ribs and IVC."""
    cz, cy, cx = coords
    T = TISSUE_IDS
    j = _jitter(rng)
    Y, X = cy[:, None], cx[None, :]
    bx, by, bcy = 170 * (1 + j(0.06)), 125 * (1 + j(0.08)), 10 + j(4)
    fat_mm, muscle_mm = rng.uniform(12, 30), rng.uniform(8, 13)

    def inside(ax, ay, c=(0.0, 0.0)):
        return ((X - c[0]) / ax) ** 2 + ((Y - c[1]) / ay) ** 2 <= 1.0

    t2 = np.full((shape[1], shape[2]), T["air"], np.uint8)
    t2[inside(bx, by, (0, bcy))] = T["fat"]
    t2[inside(bx - fat_mm, by - fat_mm, (0, bcy))] = T["muscle"]
    cavity = inside(bx - fat_mm - muscle_mm, by - fat_mm - muscle_mm, (0, bcy))
    t2[cavity] = T["visceral_fat"]
    for side in (-1, 1):
        t2[inside(28, 22, (side * 38, 112))] = T["muscle"]  # paraspinal muscles
    t2[inside(21, 19, (0, 78))] = T["bone"]  # vertebral body
    t2[inside(11, 15, (0, 110))] = T["bone"]  # posterior elements
    t2[inside(6, 6, (0, 104))] = T["csf"]  # spinal canal
    t2[inside(11, 11, (14, 50))] = T["aorta"]
    tissue = np.broadcast_to(t2, tuple(shape)).copy()
    # ribs: oblique bony arcs in the body wall of the upper abdomen (not in front, not beside the spine)
    theta = np.arctan2(Y - bcy, X)  # 0 = patient's left, pi/2 = posterior
    wall = inside(bx - fat_mm - 0.15 * muscle_mm, by - fat_mm - 0.15 * muscle_mm, (0, bcy)) & ~inside(
        bx - fat_mm - 0.75 * muscle_mm, by - fat_mm - 0.75 * muscle_mm, (0, bcy))
    wall &= (np.abs(theta + np.pi / 2) > 0.6) & (np.abs(theta - np.pi / 2) > 0.8) & (Y > -by * 0.6)
    pitch = rng.uniform(22.0, 28.0)
    band = np.mod(cz[:, None, None] / pitch + np.abs(theta)[None] / np.pi * 1.3, 1.0) < 0.32
    ribs = band & wall[None] & (cz[:, None, None] > -40.0)
    tissue[ribs] = T["bone"]
    ivc = tube(coords, (-160, 44, -24), (125, 44, -24), 11)
    _paint(None, tissue, ivc, tissue_name="ivc")
    return tissue


def _bowel_and_kidneys(rng, coords, label, tissue) -> None:
    """Bowel loops (lower abdomen) and kidneys, in visceral fat; background class."""
    j = _jitter(rng)
    in_fat = lambda lab, tis: tis == TISSUE_IDS["visceral_fat"]  # noqa: E731
    for _ in range(int(rng.integers(4, 8))):
        c = (rng.uniform(-150, -40), rng.uniform(-80, 20), rng.uniform(-110, 110))
        _paint(label, tissue, ellipsoid(coords, c, (rng.uniform(20, 35), 18, 18), rng, 0.2), None, "bowel", in_fat)
    for side, zc in ((-1, -55), (1, -40)):
        hit = ellipsoid(coords, (zc + j(8), 80 + j(5), side * 72 + j(5)), (52, 24, 26), rng, 0.08)
        _paint(label, tissue, hit, None, "kidney", in_fat)


def _stomach_spleen_pancreas(rng, coords, label, tissue) -> list:
    """Stomach (wall, fluid, air cap), spleen and pancreas; returns the pancreas' centre line (4 points, mm)."""
    _, cy, _ = coords
    T = TISSUE_IDS
    j = _jitter(rng)
    sc = np.array((50 + j(10), -12 + j(8), 80 + j(8)))
    sr = np.array((55, 38, 40)) * (1 + j(0.1))
    _paint(label, tissue, ellipsoid(coords, sc, sr, rng, 0.1), L.STOMACH, "stomach_wall", _free_cavity)
    lumen = ellipsoid(coords, sc, sr - 5, rng, 0.05)
    if lumen is not None:
        box, mask, _ = lumen
        mask = mask & (label[box] == L.STOMACH)
        tissue[box][mask] = T["stomach_fluid"]
        air = mask & (cy[box[1]][None, :, None] < sc[1] - 0.45 * sr[1])
        tissue[box][air] = T["stomach_air"]
    _paint(label, tissue, ellipsoid(coords, (55 + j(10), 58 + j(6), 110 + j(6)), np.array((50, 45, 26)) *
                                    (1 + j(0.15)), rng, 0.1), L.SPLEEN, "spleen", _free_cavity)
    pancreas = [(-15, 20, -28), (-2, 24, 0), (12, 34, 40), (28, 46, 86)]
    pancreas = [np.add(p, (j(5), j(4), j(4))) for p in pancreas]
    for a, b, r0, r1 in zip(pancreas[:-1], pancreas[1:], (13, 10, 10), (10, 10, 8)):
        _paint(label, tissue, tube(coords, a, b, r0, r1), L.PANCREAS, "pancreas", _free_cavity)
    return pancreas


def _liver(rng, coords, label, tissue):
    """Right lobe (a wedge) and left lobe; returns the right lobe's centre and radii (mm)."""
    cz, cy, cx = coords
    j = _jitter(rng)
    lc = np.array((50 + j(10), 5 + j(6), -70 + j(6)))
    lr = np.array((80, 84, 86)) * (1 + j(0.1))
    left = np.array((68 + j(8), -52 + j(5), 15 + j(8)))
    right = ellipsoid(coords, lc, lr, rng, 0.06)
    if right is not None:  # wedge: the inferior surface rises towards the midline (cut by an oblique plane)
        box, mask, _ = right
        zr = (cz[box[0]][:, None, None] - lc[0]) / lr[0]
        xr = (cx[box[2]][None, None, :] - lc[2]) / lr[2]
        yr = (cy[box[1]][None, :, None] - lc[1]) / lr[1]
        cut = -0.75 + 0.8 * (xr + 0.3) - 0.25 * yr + 0.12 * smooth_noise(rng, mask.shape, (2, 3, 3))
        _paint(label, tissue, (box, mask & (zr > cut)), L.LIVER, "liver", _free_cavity)
    _paint(label, tissue, ellipsoid(coords, left, np.array((40, 40, 68)) * (1 + j(0.15)), rng, 0.08), L.LIVER,
           "liver", _free_cavity)
    return lc, lr


def _chest(rng, coords, label, tissue, lc, lr) -> None:
    """Lung bases and heart above and around the liver dome."""
    j = _jitter(rng)
    dome = lc[0] + lr[0]
    for side in (-1, 1):
        _paint(label, tissue, ellipsoid(coords, (dome + 45 + j(8), 45, side * 85), (90, 75, 72), rng, 0.05), None,
               "lung", _free_cavity)
    _paint(label, tissue, ellipsoid(coords, (dome + 40 + j(8), -25, 20 + j(6)), (50, 55, 62), rng, 0.05), None,
           "heart", _free_cavity)


def _gallbladder(rng, coords, label, tissue, lc, lr) -> None:
    """Gallbladder under the right lobe, bile inside a thin wall."""
    j = _jitter(rng)
    gc, gr = (lc[0] - 0.62 * lr[0] + j(5), -60 + j(5), -50 + j(6)), np.array((36, 15, 16)) * (1 + j(0.15))
    gb_where = lambda lab, tis: (lab == 0) | (lab == L.LIVER)  # noqa: E731
    _paint(label, tissue, ellipsoid(coords, gc, gr), L.GALLBLADDER, "gallbladder_wall", gb_where)
    inner = ellipsoid(coords, gc, gr - 2.5)
    if inner is not None:
        box, mask, _ = inner
        tissue[box][mask & (label[box] == L.GALLBLADDER)] = TISSUE_IDS["gallbladder_bile"]


def _portal_vein(rng, coords, label, tissue, lc, lr, pancreas) -> np.ndarray:
    """Portal vein (confluence -> hilum), splenic vein behind the pancreas, SMV down; returns the hilum (mm)."""
    T = TISSUE_IDS
    j = _jitter(rng)
    hilum = np.array((lc[0] - 0.15 * lr[0], 8 + j(4), -38 + j(4)))
    conf = np.array((-6 + j(4), 36 + j(3), -6 + j(4)))
    pv_where = lambda lab, tis: ((lab == 0) | (lab == L.LIVER) | (lab == L.PANCREAS)) & (  # noqa: E731
        (tis != T["bone"]) & (tis != T["aorta"]) & (tis != T["ivc"]))
    for a, b, r in ((conf, hilum, 8), (conf, pancreas[2] + (0, 12, 0), 5.5),
                    (pancreas[2] + (0, 12, 0), pancreas[3] + (4, 10, 0), 5), (conf, conf + (-70, -6, 2), 6)):
        _paint(label, tissue, tube(coords, a, b, r), L.PORTAL_SPLENIC_VEIN, "portal_vein", pv_where)
    return hilum


def _hepatic_vessels(rng, coords, label, tissue, lc, lr, hilum) -> None:
    """Hepatic vessels inside the liver: portal branches from the hilum, hepatic veins into the IVC."""
    j = _jitter(rng)
    only_liver = lambda lab, tis: lab == L.LIVER  # noqa: E731
    top = np.array((lc[0] + 0.75 * lr[0], 44, -24))  # hepatic vein confluence
    branches = [(hilum, hilum + (12, -40, -50), 5.5, 3.5), (hilum, hilum + (8, 35, -70), 5.5, 3.5),
                (hilum, hilum + (25, -50, 55), 5, 3), (top, top + (-25, -35, -95), 5.5, 3),
                (top, top + (-30, -90, -30), 5, 3), (top, top + (-15, -80, 45), 5, 3)]
    for a, b, r0, r1 in branches:
        b = np.asarray(b) + (j(6), j(6), j(6))
        _paint(label, tissue, tube(coords, a, b, r0, r1), L.HEPATIC_VESSELS, "hepatic_vessel", only_liver)
        mid = a + 0.6 * (b - a)  # one side branch each
        tip = mid + (j(25), j(30), j(30))
        _paint(label, tissue, tube(coords, mid, tip, r1, 2.5), L.HEPATIC_VESSELS, "hepatic_vessel", only_liver)
