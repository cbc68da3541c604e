"""Vectorised geometry for the phantoms: ellipsoids and tubes painted on their bounding boxes, smooth noise.

Every painter works on 1D coordinate arrays per axis (``coords = (cz, cy, cx)``, mm, any origin) and returns the
bounding box as a tuple of slices plus a boolean mask of the box's shape, so a caller never touches the full volume
for one object. Arrays are (z, y, x).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["axis_box", "ellipsoid", "tube", "smooth_noise", "upsample_linear"]

Box = Tuple[slice, slice, slice]


def axis_box(coord: np.ndarray, lo: float, hi: float) -> slice:
    """Index slice of the sorted 1D ``coord`` whose values lie in [lo, hi] (possibly empty)."""
    i0 = int(np.searchsorted(coord, lo, side="left"))
    i1 = int(np.searchsorted(coord, hi, side="right"))
    return slice(i0, max(i0, i1))


def _box(coords, lo, hi) -> Optional[Box]:
    box = tuple(axis_box(c, l, h) for c, l, h in zip(coords, lo, hi))
    if any(s.stop <= s.start for s in box):
        return None
    return box


def upsample_linear(grid: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation of a small 3D ``grid`` to ``shape`` (corners aligned), float32."""
    out = grid.astype(np.float32)
    for axis, n in enumerate(shape):
        g = out.shape[axis]
        if g == 1:
            out = np.repeat(out, n, axis=axis)
            continue
        pos = np.linspace(0.0, g - 1.0, n) if n > 1 else np.zeros(1)
        i0 = np.clip(np.floor(pos).astype(int), 0, g - 2)
        w = (pos - i0).astype(np.float32)
        shape_w = [1] * out.ndim
        shape_w[axis] = n
        w = w.reshape(shape_w)
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i0 + 1, axis=axis) * w
    return out.astype(np.float32, copy=False)


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int] = (3, 4, 4)) -> np.ndarray:
    """Low-frequency noise of ``shape`` in roughly [-1, 1]: a ``cells``+1 random grid, linearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=tuple(int(c) + 1 for c in cells))
    return upsample_linear(grid, shape)


def ellipsoid(coords, center, radii, rng: Optional[np.random.Generator] = None, roughness: float = 0.0,
              cells: Sequence[int] = (2, 3, 3)):
    """Ellipsoid (optionally with a lumpy surface) on its bounding box.

    Parameters
    ----------
    coords : (cz, cy, cx) 1D arrays in mm (sorted ascending)
    center, radii : (z, y, x) in mm
    rng, roughness : when ``roughness > 0`` the surface radius varies by up to ``roughness`` (fraction) with a
        smooth random field drawn from ``rng``.

    Returns
    -------
    (box, mask, rho) or None when the ellipsoid misses the grid. ``rho`` is the normalised radius (0 at the
    centre, 1 on the surface) on the box, float32; ``mask = rho <= 1``.
    """
    center = np.asarray(center, float)
    radii = np.asarray(radii, float)
    reach = radii * (1.0 + abs(roughness))
    box = _box(coords, center - reach, center + reach)
    if box is None:
        return None
    d = [((c[s] - m) / r).astype(np.float32) for c, s, m, r in zip(coords, box, center, radii)]
    rho2 = d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2
    rho = np.sqrt(rho2)
    if roughness and rng is not None:
        rho = rho / (1.0 + roughness * smooth_noise(rng, rho.shape, cells))
    return box, rho <= 1.0, rho


def tube(coords, p0, p1, radius0: float, radius1: Optional[float] = None):
    """Capsule (segment ``p0 -> p1`` swept by a radius tapering from ``radius0`` to ``radius1``) on its box.

    Returns ``(box, mask)`` or None when it misses the grid. Points and radii in mm, (z, y, x).
    """
    radius1 = radius0 if radius1 is None else radius1
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    r = max(radius0, radius1)
    box = _box(coords, np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
    if box is None:
        return None
    seg = p1 - p0
    length2 = float(seg @ seg) or 1e-9
    d = [(c[s] - a).astype(np.float32) for c, s, a in zip(coords, box, p0)]
    dz, dy, dx = d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]
    t = np.clip((dz * seg[0] + dy * seg[1] + dx * seg[2]) / length2, 0.0, 1.0)
    dist2 = (dz - t * seg[0]) ** 2 + (dy - t * seg[1]) ** 2 + (dx - t * seg[2]) ** 2
    rad = radius0 + (radius1 - radius0) * t
    return box, dist2 <= rad ** 2
