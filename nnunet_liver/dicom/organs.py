"""The organs whose enhancement tells the contrast phase, found around the spine without a model: liver, kidneys,
spleen.

All work on :class:`nnunet_liver.dicom.anatomy.Slices` (y towards the patient's back, x towards the patient's left)
with the body and the spine already found.

- **Liver** (:func:`find_liver`): soft tissue (-30 to 250 HU) right of the spine, more than 15 mm inside the skin,
  the paraspinal muscles left out. On each slice the region within 30 HU of that slice's commonest value; the
  slice where this region is largest is the liver's (nothing else on the right is as large and homogeneous); from
  it, the run of neighbouring slices whose region within 35 HU of its median covers at least 20 cm2. Its median is
  the liver's HU. The liver's parenchyma, three quarters of whose blood comes through the portal vein, stands for
  the portal-venous enhancement: the portal vein itself is not sought (its branches are too thin on a few 2 mm
  slices to be read apart from the parenchyma and hypervascular lesions).
- **Kidneys** (:func:`find_kidneys`): enhanced parenchyma (above the larger of 110 HU and the liver + 30 HU, below
  400 HU) in windows 25 to 110 mm left and right of the spine, from 40 mm in front of the vertebral body's front
  edge to 70 mm behind it; regions of at least 3 cm2, at most 90 mm across, solid (at least 45 % of their convex
  hull) and at least 15 mm thick (ribs and the pelvic bone are thin arcs). Corticomedullary differentiation (arterial
  phase) is the share of the hulls at medulla values (20 HU to the enhancement threshold less 30 HU) outside the
  enhanced cortex; a homogeneous nephrogram (portal-venous, delayed) leaves little. Excreted contrast (delayed or
  excretory phase) is the area (cm2, summed over the slices) of dense contrast inside the hulls (above 400 HU and
  150 HU above the cortex).
- **Spleen** (:func:`find_spleen`): on the upper 60 % of the liver's slices, the largest region of the liver's
  HU - 40 to 300 HU more than 45 mm left of the spine, behind the vertebral body's front edge less 60 mm and
  reaching within 20 mm of the skin (the spleen lies against the ribs), then the region within 100 HU of its median
  (oral contrast in the stomach beside it left out); at least 10 cm2 per slice. Its heterogeneity is the spread
  (10th to 90th percentile) of its interior against the liver's: the arterial spleen is striped (arciform), later
  phases homogeneous.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from scipy import ndimage

from nnunet_liver.dicom.anatomy import (AortaTrack, Slices, Spine, body_masks, depth_mm, find_aorta, find_spine,
                                         to_slices)

__all__ = ["Liver", "Kidneys", "Spleen", "Findings", "find_liver", "find_kidneys", "find_spleen",
           "measure_enhancement"]

_NAN = float("nan")
_DENSE_HU = 350.0


def _r(v, nd=1):
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def _spine_x(spine: Spine, body: np.ndarray, z: int) -> float:
    if np.isfinite(spine.x[z]):
        return float(spine.x[z])
    return float(np.nonzero(body[z])[1].mean())


def _spine_front(spine: Spine, body: np.ndarray, z: int) -> float:
    if np.isfinite(spine.y_front[z]):
        return float(spine.y_front[z])
    yy = np.nonzero(body[z])[0]
    return float(yy.mean() + 0.33 * (yy.max() - yy.mean()))


def _columns(shape, x0: float, px: float):
    """Signed distance (mm) of each column from ``x0``, positive to the patient's left."""
    return (np.arange(shape[1]) - x0) * px


def _rows(shape, y0: float, py: float):
    """Signed distance (mm) of each row from ``y0``, positive towards the back."""
    return (np.arange(shape[0]) - y0) * py


def _mode(values: np.ndarray, lo: float, hi: float, width: float = 4.0) -> float:
    hist, edges = np.histogram(values, bins=np.arange(lo, hi + width, width))
    hist = np.convolve(hist, np.ones(3) / 3, mode="same")
    return float(edges[int(np.argmax(hist))] + width / 2)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, range(1, n + 1))
    return lab == 1 + int(np.argmax(sizes))


@dataclass
class Liver:
    """The liver's parenchymal HU and the slices (masks) it was read on."""
    hu: float = _NAN
    slices: int = 0
    mask: Optional[np.ndarray] = None  # (z, y, x) bool

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.hu))

    def to_dict(self) -> dict:
        return {"hu": _r(self.hu), "slices": self.slices}


def find_liver(s: Slices, body: np.ndarray, spine: Spine, depth: np.ndarray) -> Liver:
    """The liver (see the module docstring)."""
    py, px = s.pixel_mm
    nz = s.hu.shape[0]
    regions = np.zeros(s.hu.shape, bool)
    for z in range(nz):
        if not body[z].any():
            continue
        dx = _columns(s.hu.shape[1:], _spine_x(spine, body, z), px)[None, :]
        dy = _rows(s.hu.shape[1:], _spine_front(spine, body, z), py)[:, None]
        paraspinal = (dx > -70.0) & (dy > 0.0)
        regions[z] = (body[z] & (dx < -10.0) & ~paraspinal & (depth[z] > 15.0) & (s.hu[z] > -30.0)
                      & (s.hu[z] < 250.0))
    boxes = {z: ndimage.find_objects(regions[z].astype(np.uint8))[0] for z in range(nz) if regions[z].any()}
    opening = np.ones((3, 3), bool)

    def part(z, centre, tol):
        box = boxes[z]
        out = np.zeros(s.hu.shape[1:], bool)
        out[box] = _largest(ndimage.binary_opening(regions[z][box] & (np.abs(s.hu[z][box] - centre) < tol),
                                                   opening))
        return out

    # the slice where the right side holds the largest homogeneous region: the liver, nothing else is as large
    seeds = [(part(z, _mode(s.hu[z][regions[z]], -30.0, 250.0), 30.0), z) for z in boxes
             if regions[z].sum() * s.pixel_area_mm2 >= 1000.0]
    if not seeds:
        return Liver()
    seed, z0 = max(seeds, key=lambda t: t[0].sum())
    if seed.sum() * s.pixel_area_mm2 < 3000.0:
        return Liver()
    centre = float(np.median(s.hu[z0][seed]))
    mask = np.zeros_like(regions)
    mask[z0] = seed
    for step in (-1, 1):  # one organ: the run of slices on both sides of the seed slice
        z = z0 + step
        while z in boxes:
            p = part(z, centre, 35.0)
            if p.sum() * s.pixel_area_mm2 < 2000.0:
                break
            mask[z] = p
            z += step
    return Liver(hu=float(np.median(s.hu[mask])), slices=int(mask.any(axis=(1, 2)).sum()), mask=mask)


@dataclass
class Kidneys:
    """Enhanced renal parenchyma: its HU (cortex), corticomedullary share, excreted contrast share; ``found`` False
    when no enhanced kidney was seen (before contrast, or outside the scanned range)."""
    cortex_hu: float = _NAN
    medulla_share: float = _NAN
    excreted_cm2: float = _NAN
    area_cm2: float = 0.0

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.cortex_hu))

    def to_dict(self) -> dict:
        return {"cortex_hu": _r(self.cortex_hu), "medulla_share": _r(self.medulla_share, 3),
                "excreted_contrast_cm2": _r(self.excreted_cm2, 2), "area_cm2": _r(self.area_cm2)}


def find_kidneys(s: Slices, body: np.ndarray, spine: Spine, liver_hu: float) -> Kidneys:
    """Enhanced kidneys and their pattern (see the module docstring)."""
    from skimage.measure import regionprops

    py, px = s.pixel_mm
    threshold = max(110.0, (liver_hu if np.isfinite(liver_hu) else 60.0) + 30.0)
    hulls, cortex, dense_cm2 = [], [], 0.0
    for z in range(s.hu.shape[0]):
        if not body[z].any():
            continue
        dx = np.abs(_columns(s.hu.shape[1:], _spine_x(spine, body, z), px))[None, :]
        dy = _rows(s.hu.shape[1:], _spine_front(spine, body, z), py)[:, None]
        window = body[z] & (dx > 25.0) & (dx < 110.0) & (dy > -40.0) & (dy < 70.0)
        if not window.any():
            continue
        box = ndimage.find_objects(window.astype(np.uint8))[0]
        hu = s.hu[z][box]
        lab = ndimage.label(ndimage.binary_opening(window[box] & (hu > threshold) & (hu < 400.0)))[0]
        for region in regionprops(lab):
            if (region.area * s.pixel_area_mm2 < 300.0 or max(region.image.shape) * max(py, px) > 90.0
                    or region.solidity < 0.45 or region.axis_minor_length * min(py, px) < 15.0):
                continue  # small, or a thin arc (ribs, pelvic bone)
            sl, hull = region.slice, region.image_convex
            values = hu[sl][hull]
            hulls.append((values, region.image[hull]))
            cortex.append(hu[sl][region.image])
            dense_cm2 += float((values > max(400.0, np.median(cortex[-1]) + 150.0)).sum()) * s.pixel_area_mm2 / 100
    if not hulls:
        return Kidneys()
    values = np.concatenate([h for h, _ in hulls])
    is_part = np.concatenate([p for _, p in hulls])
    cortex_hu = float(np.median(np.concatenate(cortex)))
    medulla = (values >= 20.0) & (values < threshold - 30.0) & ~is_part
    return Kidneys(cortex_hu, float(medulla.mean()), dense_cm2, values.size * s.pixel_area_mm2 / 100.0)


@dataclass
class Spleen:
    """The spleen's median HU and its heterogeneity (10th-90th percentile spread, HU) against the liver's."""
    hu: float = _NAN
    spread_hu: float = _NAN
    liver_spread_hu: float = _NAN
    area_cm2: float = 0.0

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.hu))

    def to_dict(self) -> dict:
        return {"hu": _r(self.hu), "spread_hu": _r(self.spread_hu), "liver_spread_hu": _r(self.liver_spread_hu),
                "area_cm2": _r(self.area_cm2)}


def _spread(values: np.ndarray) -> float:
    return float(np.percentile(values, 90) - np.percentile(values, 10)) if values.size >= 30 else _NAN


def find_spleen(s: Slices, body: np.ndarray, spine: Spine, depth: np.ndarray, liver: Liver) -> Spleen:
    """The spleen on the liver's upper slices (see the module docstring)."""
    if not liver.found:
        return Spleen()
    py, px = s.pixel_mm
    zs = np.flatnonzero(liver.mask.any(axis=(1, 2)))
    top = s.z_mm[zs].max()
    zs = zs[s.z_mm[zs] >= top - 0.6 * np.ptp(s.z_mm[zs])]  # the spleen lies level with the liver's upper part
    parts, liver_parts = [], []
    for z in zs:
        dx = _columns(s.hu.shape[1:], _spine_x(spine, body, z), px)[None, :]
        dy = _rows(s.hu.shape[1:], _spine_front(spine, body, z), py)[:, None]
        region = body[z] & (dx > 45.0) & (dy > -60.0) & (depth[z] > 5.0) & (s.hu[z] < 300.0)
        part = _largest(ndimage.binary_opening(region & (s.hu[z] > liver.hu - 40.0), iterations=2))
        if not part.any() or depth[z][part].min() > 20.0:  # the spleen lies against the ribs
            continue
        centre = float(np.median(s.hu[z][part]))
        part = _largest(ndimage.binary_opening(region & (np.abs(s.hu[z] - centre) < 100.0), iterations=2))
        if part.sum() * s.pixel_area_mm2 >= 1000.0 and depth[z][part].min() <= 20.0:
            parts.append(s.hu[z][ndimage.binary_erosion(part)])
            liver_parts.append(s.hu[z][ndimage.binary_erosion(liver.mask[z])])
    values = np.concatenate(parts) if parts else np.zeros(0)
    if values.size < 30:
        return Spleen()
    return Spleen(float(np.median(values)), _spread(values), _spread(np.concatenate(liver_parts)),
                  sum(p.size for p in parts) * s.pixel_area_mm2 / 100.0)


@dataclass
class Findings:
    """Everything :func:`measure_enhancement` found on one series' sampled slices."""
    aorta: AortaTrack
    liver: Liver
    kidneys: Kidneys
    spleen: Spleen
    slices: int
    body_slices: int

    @property
    def liver_hu(self) -> float:
        return self.liver.hu

    @property
    def aorta_hu(self) -> float:
        return self.aorta.hu

    def notes(self) -> List[str]:
        """What was not found, as reasons."""
        out = []
        if not self.aorta.found:
            out.append(f"aorta: not found on {self.aorta.searched} slice(s) with a body (no round lumen of 10-37 mm "
                       "in front of the spine, continuous over the slices)")
        else:
            out.append(f"aorta: a lumen of about {self.aorta.diameter_mm:.0f} mm on {self.aorta.slices} of "
                       f"{self.aorta.searched} slices" + ("" if self.aorta.spine_found else
                                                          " (no spine found: searched near the body's midline)"))
        if not self.liver.found:
            out.append("liver: not found (no large homogeneous soft-tissue region right of the spine)")
        return out

    def to_dict(self) -> dict:
        return {"aorta": self.aorta.to_dict(), "liver": self.liver.to_dict(), "kidneys": self.kidneys.to_dict(),
                "spleen": self.spleen.to_dict(), "slices_read": self.slices, "slices_with_body": self.body_slices}


def measure_enhancement(image) -> Findings:
    """Aorta, liver, kidneys and spleen on an axial CT image (SimpleITK, LPS; the slices to read,
    typically a subsample of a series)."""
    s = to_slices(image)
    body = body_masks(s)
    spine = find_spine(s, body)
    aorta = find_aorta(s, body, spine)
    depth = depth_mm(s, body)
    liver = find_liver(s, body, spine, depth)
    kidneys = find_kidneys(s, body, spine, liver.hu)
    spleen = find_spleen(s, body, spine, depth, liver)
    return Findings(aorta, liver, kidneys, spleen, int(s.hu.shape[0]), int(body.any(axis=(1, 2)).sum()))
