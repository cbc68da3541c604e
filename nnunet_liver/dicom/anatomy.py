"""The landmarks phase identification rests on, found on a few axial CT slices without a model: body, spine, aorta.

All finders work on :class:`Slices`: the sampled slices block-averaged in-plane to about 2 mm and turned to one
orientation (array axes (z, y, x) with y growing towards the patient's back and x towards the patient's left, as an
LPS image with the identity direction), so that "in front of the spine" and "the patient's left" are array
directions whatever the series' ``ImageOrientationPatient``.

- **Body**: per slice, the largest connected region above -500 HU, holes filled.
- **Spine** (:func:`find_spine`): per slice, the posterior arch is the dense bone (above 350 HU) near the body's
  midline that reaches furthest back; its median column is the spine's centre. Walking forward along that column
  from the arch's back: the arch, the spinal canal (below 100 HU, at most 30 mm), the vertebral body (above 100 HU,
  12 to 45 mm); where the vertebral body ends is its front edge. Slices where the walk fails, and outliers, take
  the running median of their neighbours.
- **Aorta** (:func:`find_aorta`): a round, homogeneous lumen of 10 to 37 mm diameter, brighter than what surrounds
  it on at least six of eight sides, in front of the vertebral body or to the left of its front (a window from 20 mm
  right to 60 mm left of the spine's centre, from 75 mm in front of the vertebral body's front edge to 5 mm behind
  it; never on the vertebral body itself), continuous over the sampled slices. Candidates per slice are scored by a
  bank of disk and ring-sector means (FFT convolutions), then one track through the slices is chosen by dynamic
  programming (Viterbi) that pays for distance from the expected place, for jumps between slices, for changes of
  HU along the track, and for slices without an aorta. Lumens above 700 HU (bone, dense oral contrast, lipiodol,
  metal) are never candidates. The HU read is the median of the lumen disk (80 % of the fitted radius), so
  calcified plaque or a stent on the wall does not raise it; the ring around a candidate is read on the image
  clipped just above the lumen's HU (150, 350 or 700 HU), so that plaque or stent struts count as no brighter than
  the lumen. Oral contrast in the stomach or a bowel loop is not round (its continuation is as bright as its
  middle), not in front of the spine, or not continuous over the slices with the rest of the track. The track is
  searched on at most 12 of the sampled slices, evenly spread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["Slices", "Spine", "AortaTrack", "to_slices", "body_masks", "fill_holes", "depth_mm", "find_spine",
           "find_aorta"]

BODY_HU = -500.0
DENSE_BONE_HU = 350.0
SOFT_BONE_HU = 100.0
MAX_LUMEN_HU = 700.0
RING_CLIPS_HU = (150.0, 350.0, MAX_LUMEN_HU)
TARGET_PIXEL_MM = 2.0
AORTA_SLICES = 12  # of the sampled slices with a body, evenly spread: the track's stations
#: lumen radii tried (mm); the aorta's radius is about 1.5 mm more (the ring starts 2.5 mm outside the disk)
LUMEN_RADII_MM = (4.5, 6.5, 8.5, 10.5, 13.0, 16.0)
_RING_GAP_MM, _RING_WIDTH_MM = 2.5, 5.0
_MIN_CONTRAST_HU = 25.0  # lumen minus the third-brightest of eight ring sectors
_SATURATE_HU = 90.0  # a contrast above this counts as this: NC blood in fat is as good a lumen as iodine
_WINDOW_MM = {"right": 20.0, "left": 60.0, "front": 75.0, "back": 5.0}  # around the spine's centre / front edge
_EXPECTED_MM = (12.0, -15.0)  # the aorta's usual place: left of the spine's centre, in front of its front edge


@dataclass
class Slices:
    """Sampled axial slices in one orientation: ``hu`` (z, y, x) float32 with y posterior and x patient-left."""
    hu: np.ndarray
    pixel_mm: Tuple[float, float]  # (y, x)
    z_mm: np.ndarray  # each slice's position along the patient's z (superior +), mm

    @property
    def pixel_area_mm2(self) -> float:
        return float(self.pixel_mm[0] * self.pixel_mm[1])


def to_slices(image, target_mm: float = TARGET_PIXEL_MM) -> Slices:
    """A SimpleITK image (LPS, axial) as :class:`Slices`: in-plane axes swapped and flipped to (posterior, left),
    block means of ``k x k`` pixels with ``k = round(target_mm / pixel)`` (at least 1)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(image)  # (z, j, i)
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)  # columns: image axes i, j, k in LPS
    sx, sy, sz = image.GetSpacing()
    if abs(d[0, 0]) < abs(d[0, 1]):  # image rows run along the patient's y: swap the in-plane axes
        arr = arr.transpose(0, 2, 1)
        d = d[:, [1, 0, 2]]
        sx, sy = sy, sx
    if d[0, 0] < 0:
        arr = arr[:, :, ::-1]
    if d[1, 1] < 0:
        arr = arr[:, ::-1, :]
    ky, kx = (max(1, int(round(target_mm / s))) for s in (sy, sx))
    nz, ny, nx = arr.shape
    if ny < ky or nx < kx:
        ky = kx = 1
    my, mx = ny // ky, nx // kx
    blocks = np.zeros((nz, my, mx), np.float32)
    for i in range(ky):  # block means as k*k strided sums: much faster than a mean over reshaped axes
        for j in range(kx):
            blocks += arr[:, i:my * ky:ky, j:mx * kx:kx]
    arr = blocks / np.float32(ky * kx)
    origin = np.asarray(image.GetOrigin(), float)
    z_mm = origin[2] + np.arange(nz) * sz * np.asarray(image.GetDirection(), float).reshape(3, 3)[2, 2]
    return Slices(np.ascontiguousarray(arr, dtype=np.float32), (sy * ky, sx * kx), z_mm)


def body_masks(s: Slices, min_area_mm2: float = 100.0 * 100.0) -> np.ndarray:
    """(z, y, x) bool: the body per slice (largest region above -500 HU, holes filled); empty on slices whose body is
    smaller than ``min_area_mm2`` (1 dm2: not an abdominal slice)."""
    out = np.zeros(s.hu.shape, bool)
    for z in range(s.hu.shape[0]):
        lab, n = ndimage.label(s.hu[z] > BODY_HU)
        if n == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, range(1, n + 1))
        body = fill_holes(lab == 1 + int(np.argmax(sizes)))
        if body.sum() * s.pixel_area_mm2 >= min_area_mm2:
            out[z] = body
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """2D hole filling by labelling the background (what does not reach the border is a hole): the result of
    ``ndimage.binary_fill_holes`` without its iterated dilation."""
    lab, _ = ndimage.label(~mask)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return mask | ~np.isin(lab, border)


def depth_mm(s: Slices, body: np.ndarray) -> np.ndarray:
    """(z, y, x) float32: distance (mm) of each body pixel from the skin (0 outside the body)."""
    out = np.zeros(s.hu.shape, np.float32)
    ny, nx = s.hu.shape[1:]
    for z in np.flatnonzero(body.any(axis=(1, 2))):  # on every other pixel (enough for thresholds of 5 mm and more)
        coarse = ndimage.distance_transform_edt(np.pad(body[z, ::2, ::2], 1), sampling=(2 * s.pixel_mm[0],
                                                                                       2 * s.pixel_mm[1]))[1:-1, 1:-1]
        out[z] = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[:ny, :nx] * body[z]
    return out


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(np.ceil(radius_px)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy ** 2 + xx ** 2) <= radius_px ** 2


@dataclass
class Spine:
    """Per slice (nan where no body): the spine's centre column ``x`` and the vertebral body's front edge ``y_front``
    (pixels of :class:`Slices`); ``found`` slices where the posterior arch was seen, ``measured`` those where the
    vertebral body's front was read (the others take the running median of their neighbours)."""
    x: np.ndarray
    y_front: np.ndarray
    found: int
    measured: int


def _arch(hu: np.ndarray, body: np.ndarray, px: float, area_mm2: float):
    """The posterior arch: the dense bone (> 350 HU) near the body's midline reaching furthest back; its pixels."""
    yy, xx = np.nonzero(body)
    cx, cy, half_w = xx.mean(), yy.mean(), (np.ptp(xx) + 1) / 2.0
    lab, n = ndimage.label(ndimage.binary_closing(hu > DENSE_BONE_HU, iterations=1) & body, np.ones((3, 3)))
    best, back = None, -1
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        pyy, pxx = np.nonzero(lab[sl] == i)
        pyy, pxx = pyy + sl[0].start, pxx + sl[1].start
        if pyy.size * area_mm2 < 30.0 or abs(pxx.mean() - cx) > 0.25 * half_w or pyy.mean() < cy:
            continue
        if pyy.max() > back:
            best, back = (pyy, pxx), pyy.max()
    return best


def _vertebral_front(hu: np.ndarray, x: float, arch, py: float, px: float) -> float:
    """Front edge (row) of the vertebral body along the spine's column, walking forward from the arch's back:
    arch, spinal canal (below 100 HU, at most 30 mm), vertebral body (above 100 HU, at most 45 mm); nan when the
    walk does not find that sequence."""
    band = slice(max(0, int(x - 6.0 / px)), int(x + 6.0 / px) + 1)
    profile = hu[:, band].mean(axis=1)
    y = int(arch[0][np.abs(arch[1] - x) * px <= 6.0].max(initial=arch[0].max()))
    in_arch = np.zeros(hu.shape[0], bool)
    in_arch[np.unique(arch[0][np.abs(arch[1] - x) * px <= 6.0])] = True
    while y > 0 and (in_arch[y] or profile[y] > SOFT_BONE_HU):
        y -= 1
    arch_front = y
    canal = 0
    while y > 0 and profile[y] <= SOFT_BONE_HU and canal * py <= 30.0:
        y, canal = y - 1, canal + 1
    if canal * py > 30.0 or y <= 0:  # no vertebral body in front of a canal: the arch held it (a fused piece)
        return float(arch_front + 1) if (arch[0].max() - arch_front) * py > 45.0 else float("nan")
    start = y
    while y > 0 and (profile[y] > SOFT_BONE_HU or profile[y - 1] > SOFT_BONE_HU) and (start - y) * py < 45.0:
        y -= 1
    return float(y + 1) if (start - y) * py >= 12.0 else float("nan")


def find_spine(s: Slices, body: np.ndarray) -> Spine:
    """The spine on every slice with a body (see the module docstring); ``found == 0`` when none is seen."""
    nz = s.hu.shape[0]
    py, px = s.pixel_mm
    x = np.full(nz, np.nan)
    y = np.full(nz, np.nan)
    for z in range(nz):
        if not body[z].any():
            continue
        arch = _arch(s.hu[z], body[z], px, s.pixel_area_mm2)
        if arch is None:
            continue
        x[z] = float(np.median(arch[1]))
        y[z] = _vertebral_front(s.hu[z], x[z], arch, py, px)
    found, measured = int(np.isfinite(x).sum()), int(np.isfinite(y).sum())
    has_body = body.any(axis=(1, 2))
    for v, tol in ((x, 30.0 / px), (y, 25.0 / py)):
        ok = np.flatnonzero(np.isfinite(v))
        if not ok.size:
            continue
        # running median over up to 7 neighbouring measured slices; outliers and gaps take it
        med = np.array([np.median(v[ok[np.argsort(np.abs(ok - z))[:7]]]) for z in range(nz)])
        bad = ~np.isfinite(v) | (np.abs(v - med) > tol)
        v[bad] = med[bad]
        v[~has_body] = np.nan
    return Spine(x, y, found, measured)


@dataclass
class AortaTrack:
    """The aorta found: lumen HU (median over the track), diameter, the track (slice, y, x in pixels) and its HU per
    slice; ``hu`` is nan when no track was found."""
    hu: float = float("nan")
    diameter_mm: float = float("nan")
    slices: int = 0
    searched: int = 0
    track: List[Tuple[int, float, float]] = field(default_factory=list)
    track_hu: List[float] = field(default_factory=list)
    spine_found: bool = False

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.hu))

    def to_dict(self) -> dict:
        return {"hu": None if not self.found else round(self.hu, 1),
                "diameter_mm": None if not self.found else round(self.diameter_mm, 1),
                "slices": self.slices, "slices_searched": self.searched, "spine_found": self.spine_found}


class _LumenFilter:
    """Per lumen radius: a disk (mean and mean square) and eight ring sectors, as one stack of kernels convolved with
    a window by FFT (scipy.fft; the kernels' transforms are computed once per window size)."""

    def __init__(self, pixel_mm: Tuple[float, float]):
        py, px = pixel_mm
        outer = [max(r + _RING_GAP_MM + _RING_WIDTH_MM, r + _RING_GAP_MM + 1.5 * max(py, px)) for r in LUMEN_RADII_MM]
        self.ry, self.rx = int(np.ceil(max(outer) / py)), int(np.ceil(max(outer) / px))
        yy, xx = np.mgrid[-self.ry:self.ry + 1, -self.rx:self.rx + 1]
        dist = np.hypot(yy * py, xx * px)
        angle = np.mod(np.arctan2(yy, xx), 2 * np.pi)
        stack = []
        for r, out in zip(LUMEN_RADII_MM, outer):
            disk = dist <= max(r, 0.6 * max(py, px))
            stack.append(disk / disk.sum())
            ring = (dist > r + _RING_GAP_MM) & (dist <= out)
            for k in range(8):
                sec = ring & (np.abs(np.angle(np.exp(1j * (angle - (k + 0.5) * np.pi / 4)))) <= np.pi / 8 + 1e-9)
                if not sec.any():  # a tiny kernel at a coarse pixel size: the nearest ring pixels
                    sec = ring & (np.abs(np.angle(np.exp(1j * (angle - (k + 0.5) * np.pi / 4)))) < np.pi / 4 + 0.3)
                stack.append(sec / max(1, sec.sum()))
        self.kernels = np.stack(stack).astype(np.float32)[:, ::-1, ::-1]  # flipped: convolution = correlation
        self._cache = {}

    def __call__(self, crop: np.ndarray):
        """(mean, sd, ring sectors (8, ...)) per radius on the ``crop`` less a border of the kernel's half size."""
        from scipy import fft

        h, w = crop.shape
        shape = (fft.next_fast_len(h), fft.next_fast_len(w))
        if shape not in self._cache:
            self._cache[shape] = fft.rfft2(self.kernels, s=shape)
        kf = self._cache[shape].reshape((len(LUMEN_RADII_MM), 9) + self._cache[shape].shape[1:])
        # the ring is read on the image clipped at the first of RING_CLIPS_HU above the lumen: a stent or calcified
        # plaque on the wall counts as no brighter than the lumen, a blob's continuation (a stomach full of
        # contrast) as bright as its middle
        images = fft.rfft2(np.stack([crop, crop * crop] + [np.minimum(crop, c) for c in RING_CLIPS_HU]), s=shape)
        disks = fft.irfft2(kf[:, :1] * images[None, :2], s=shape)[..., 2 * self.ry:h, 2 * self.rx:w]
        rings = fft.irfft2(kf[:, None, 1:] * images[None, 2:, None], s=shape)[..., 2 * self.ry:h, 2 * self.rx:w]
        out = []
        for i in range(len(LUMEN_RADII_MM)):  # disks (radius, [mean, mean square]), rings (radius, clip, sector)
            mean = disks[i, 0]
            sd = np.sqrt(np.maximum(disks[i, 1] - mean * mean, 0.0))
            level = np.minimum(np.searchsorted(np.asarray(RING_CLIPS_HU), mean), len(RING_CLIPS_HU) - 1)
            ring = np.take_along_axis(rings[i], level[None, None], axis=0)[0]
            out.append((mean, sd, ring))
        return out


def _candidates(hu: np.ndarray, window: Tuple[slice, slice], lumen: _LumenFilter, pixel_mm, keep: int = 6):
    """Lumen candidates in one slice's window: [(score, y, x, radius_mm, lumen_hu, sd_hu)], best first."""
    ys, xs = window
    ry, rx = lumen.ry, lumen.rx
    padded = np.pad(np.clip(hu, -1024.0, 1500.0), ((ry, ry), (rx, rx)), constant_values=-1024.0)
    crop = padded[ys.start:ys.stop + 2 * ry, xs.start:xs.stop + 2 * rx]  # window +- the kernel's half size
    best = np.full((ys.stop - ys.start, xs.stop - xs.start), -np.inf, np.float32)
    fields = [np.zeros_like(best) for _ in range(3)]  # radius, lumen HU, sd
    for (mean, sd, ring), r in zip(lumen(crop), LUMEN_RADII_MM):
        third = np.partition(ring, 5, axis=0)[5]  # the third brightest: two sectors may touch the crus, the
        # vertebral body or the IVC
        contrast = mean - third
        score = np.minimum(contrast, _SATURATE_HU) - 1.5 * np.maximum(sd - 12.0, 0.0) + 0.8 * r
        ok = (contrast > _MIN_CONTRAST_HU) & (mean > -20.0) & (mean < MAX_LUMEN_HU) & (sd < 35.0 + 0.1 * mean)
        score = np.where(ok, score, -np.inf)
        better = score > best
        best = np.where(better, score, best)
        for f, v in zip(fields, (np.float32(r), mean, sd)):
            f[better] = (v if np.ndim(v) == 0 else v[better])
    if not np.isfinite(best).any():
        return []
    size = max(3, int(round(8.0 / pixel_mm[1])) | 1)
    peak = (best == ndimage.maximum_filter(best, size=size)) & np.isfinite(best)
    out = [(float(best[j, i]), j + ys.start, i + xs.start, float(fields[0][j, i]), float(fields[1][j, i]),
            float(fields[2][j, i])) for j, i in zip(*np.nonzero(peak))]
    return sorted(out, reverse=True)[:keep]


def _lumen_median(hu: np.ndarray, y: int, x: int, radius_mm: float, pixel_mm) -> float:
    py, px = pixel_mm
    r = 0.8 * radius_mm
    ry, rx = max(0, int(r / py)), max(0, int(r / px))
    sub = hu[max(0, y - ry):y + ry + 1, max(0, x - rx):x + rx + 1]
    yy, xx = np.mgrid[max(0, y - ry) - y:min(hu.shape[0], y + ry + 1) - y,
                      max(0, x - rx) - x:min(hu.shape[1], x + rx + 1) - x]
    inside = np.hypot(yy * py, xx * px) <= max(r, 0.5 * max(py, px))
    return float(np.median(sub[inside]))


def find_aorta(s: Slices, body: np.ndarray, spine: Spine) -> AortaTrack:
    """The aorta's track through the slices and its lumen HU (see the module docstring)."""
    py, px = s.pixel_mm
    lumen = _LumenFilter(s.pixel_mm)
    per_slice, zs = [], []
    with_body = np.flatnonzero(body.any(axis=(1, 2)))
    for z in with_body[np.unique(np.linspace(0, len(with_body) - 1, min(len(with_body), AORTA_SLICES)).round()
                                 .astype(int))] if len(with_body) else []:
        if np.isfinite(spine.x[z]) and np.isfinite(spine.y_front[z]):
            cx, front = spine.x[z], spine.y_front[z]
        else:  # no spine seen: the body's midline, a third of the way from its centre to its back
            yy, xx = np.nonzero(body[z])
            cx, front = xx.mean(), yy.mean() + 0.33 * (yy.max() - yy.mean())
        ny, nx = s.hu.shape[1:]
        window = (slice(max(0, int(front - _WINDOW_MM["front"] / py)),
                        min(ny, int(front + _WINDOW_MM["back"] / py) + 1)),
                  slice(max(0, int(cx - _WINDOW_MM["right"] / px)), min(nx, int(cx + _WINDOW_MM["left"] / px) + 1)))
        if window[0].stop <= window[0].start or window[1].stop <= window[1].start:
            continue
        cands = [c for c in _candidates(s.hu[z], window, lumen, s.pixel_mm) if body[z][c[1], c[2]]
                 and not (c[1] > front - 3.0 / py and abs(c[2] - cx) * px < 25.0)]  # not the vertebral body
        expect = (front + _EXPECTED_MM[1] / py, cx + _EXPECTED_MM[0] / px)
        per_slice.append([(c, ((c[1] - expect[0]) * py / 25.0) ** 2 + ((c[2] - expect[1]) * px / 25.0) ** 2)
                          for c in cands])
        zs.append(z)
    track = _viterbi(per_slice, [s.z_mm[z] for z in zs], s.pixel_mm)
    out = AortaTrack(searched=len(zs), spine_found=bool(spine.measured))
    chosen = [(zs[k], per_slice[k][i][0]) for k, i in enumerate(track) if i is not None]
    if not chosen or len(chosen) < min(2, len(zs)):
        return out
    hus = [_lumen_median(s.hu[z], c[1], c[2], c[3], s.pixel_mm) for z, c in chosen]
    out.hu = float(np.median(hus))
    out.diameter_mm = float(2 * (np.median([c[3] for _, c in chosen]) + 1.5))
    out.slices = len(chosen)
    out.track = [(int(z), float(c[1]), float(c[2])) for z, c in chosen]
    out.track_hu = [round(h, 1) for h in hus]
    return out


_NONE_COST = 2.5  # a slice without the aorta (chest, pelvis, or an unfound lumen)
_SWITCH_COST = 1.0  # entering or leaving the track


def _viterbi(per_slice, z_mm, pixel_mm) -> List[Optional[int]]:
    """The cheapest sequence of (candidate index or None) through the slices."""
    py, px = pixel_mm
    if not per_slice:
        return []
    state_cost = [[-c[0] / 30.0 + prior for c, prior in cands] + [_NONE_COST] for cands in per_slice]
    total = list(state_cost[0])
    back = []
    for k in range(1, len(per_slice)):
        dz = abs(z_mm[k] - z_mm[k - 1])
        step = 5.0 + 0.3 * dz  # mm of drift allowed between sampled slices without cost
        prev, cur = per_slice[k - 1], per_slice[k]
        new, arg = [], []
        for j, cost in enumerate(state_cost[k]):
            options = []
            for i, t in enumerate(total):
                if j == len(cur) or i == len(prev):
                    trans = 0.0 if (j == len(cur) and i == len(prev)) else _SWITCH_COST
                else:
                    a, b = prev[i][0], cur[j][0]
                    dist = np.hypot((a[1] - b[1]) * py, (a[2] - b[2]) * px)
                    dhu = abs(a[4] - b[4]) / (30.0 + 0.15 * max(a[4], b[4], 0.0))
                    trans = (dist / step) ** 2 + dhu ** 2
                options.append(t + trans)
            i = int(np.argmin(options))
            new.append(options[i] + cost)
            arg.append(i)
        back.append(arg)
        total = new
    j = int(np.argmin(total))
    path = [j]
    for arg in reversed(back):
        j = arg[j]
        path.append(j)
    path.reverse()
    return [None if j == len(cands) else j for j, cands in zip(path, per_slice)]
