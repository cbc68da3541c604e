"""Align one CT phase to another: :func:`register_to_reference` (SimpleITK, Mattes mutual information).

Phases of a multi-phase study are separate acquisitions: the patient breathes and moves between them. The
moving phase is registered to the reference (fixed) phase with a rigid (default) or affine transform, multi-
resolution, and resampled onto the reference grid, so every channel and the label (drawn on the reference) share
one grid.

Initialisation ("centred"): the rotation centre is the fixed image's centre, and the start translation is either
the scanner's own physical alignment (identity) or the one that overlays the two images' geometric centres,
whichever scores the better metric. Scanner coordinates are usually right to within a few cm; the centred guess
rescues studies whose coordinates disagree (different origins, exported without position).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

__all__ = ["register_to_reference", "mutual_information", "resample_to", "RegistrationError"]

_TRANSFORMS = ("rigid", "affine")


class RegistrationError(RuntimeError):
    """Registering one phase onto another failed on valid images: a failed step (exit 1), not bad input. The
    message names the case and the phases."""


def _float(image):
    import SimpleITK as sitk

    return sitk.Cast(image, sitk.sitkFloat32)


def resample_to(moving, fixed, transform=None, interpolator: str = "linear", default_value: float = -1024.0):
    """Resample ``moving`` onto ``fixed``'s grid through ``transform`` (fixed -> moving points; None = identity)."""
    import SimpleITK as sitk

    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[interpolator]
    tx = sitk.Transform(3, sitk.sitkIdentity) if transform is None else transform
    return sitk.Resample(moving, fixed, tx, interp, float(default_value), moving.GetPixelID())


def _mask_image(mask, fixed):
    """A uint8 SimpleITK mask on ``fixed``'s grid from a bool array (z, y, x) or a SimpleITK image; None stays."""
    import SimpleITK as sitk

    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        if mask.shape != tuple(reversed(fixed.GetSize())):
            raise ValueError(f"fixed_mask has shape {mask.shape}, the fixed image {tuple(reversed(fixed.GetSize()))}")
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(fixed)
    else:
        image = sitk.Cast(mask > 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(image).any():
        return None
    return image


def mutual_information(fixed, moving, transform=None, bins: int = 50, fixed_mask=None) -> float:
    """Mattes mutual information metric of ``moving`` on ``fixed`` (all fixed voxels, or those in
    ``fixed_mask``; lower = better aligned).

    SimpleITK reports the negated mutual information, so values are negative and a better alignment is more
    negative.
    """
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    mask = _mask_image(fixed_mask, fixed)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInitialTransform(sitk.Transform(3, sitk.sitkIdentity) if transform is None else transform)
    return float(reg.MetricEvaluate(_float(fixed), _float(moving)))


def _correlation(fixed, moving, transform=None, mask=None) -> float:
    """Pearson correlation between ``fixed`` and ``moving`` resampled onto it through ``transform``, over the fixed
    voxels the moving field of view covers (and inside ``mask`` when given), HU clipped to -200..400."""
    import SimpleITK as sitk

    on_fixed = resample_to(moving, fixed, transform)
    cover = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    cover.CopyInformation(moving)
    m = sitk.GetArrayFromImage(resample_to(cover, fixed, transform, "nearest", 0)).astype(bool)
    if mask is not None:
        m &= sitk.GetArrayViewFromImage(mask).astype(bool)
    a = np.clip(sitk.GetArrayViewFromImage(fixed).astype(np.float32), -200, 400)[m]
    b = np.clip(sitk.GetArrayViewFromImage(on_fixed).astype(np.float32), -200, 400)[m]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _leaf(transform, kind):
    """The optimised transform as ``kind`` (SimpleITK may hand back a composite holding it)."""
    import SimpleITK as sitk

    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        transform = composite.GetNthTransform(composite.GetNumberOfTransforms() - 1)
    return kind(transform)


def _optimise(fixed_f, moving_f, init, *, mask, bins, sampling, iterations, seed, levels, learning_rate):
    """One multi-resolution Mattes MI optimisation from ``init``: (transform, iterations, stop condition)."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(sampling), int(seed))
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=1e-3,
                                                 numberOfIterations=int(iterations), relaxationFactor=0.6,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels))
    reg.SetSmoothingSigmasPerLevel([{4: 2.0, 2: 1.0, 1: 0.0}[f] for f in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    result = reg.Execute(fixed_f, moving_f)
    return result, int(reg.GetOptimizerIteration()), reg.GetOptimizerStopConditionDescription()


def register_to_reference(moving, fixed, transform: str = "rigid", fixed_mask=None, bins: int = 50,
                          sampling: float = 0.2, iterations: int = 200, seed: int = 0) -> Tuple[object, Dict]:
    """Register ``moving`` to ``fixed`` and resample it onto ``fixed``'s grid.

    Parameters
    ----------
    moving, fixed : 3D SimpleITK images (HU). Their physical geometry (origin, spacing, direction) is used.
    transform : "rigid" (Euler3D: 3 rotations + 3 translations) or "affine" (12 parameters, optimised after a
        rigid stage).
    fixed_mask : optional region of the fixed image (bool array (z, y, x) or SimpleITK image on its grid) where
        the metric is computed, e.g. the dilated liver: organs move differently with breathing, and the spine
        (which does not) would otherwise dominate. Empty or None = the whole image.
    bins : Mattes mutual information histogram bins; sampling : fraction of fixed voxels sampled (random,
        seeded) while optimising; iterations : per resolution level (shrink factors 4, 2, 1 where the image is big
        enough, Gaussian smoothing sigmas 2, 1, 0 voxels); seed : of the metric sampling.

    Returns
    -------
    (resampled, report)
        ``resampled``: ``moving`` on the fixed grid (same pixel type; outside the moving field of view
        -1024 HU). ``report``: {"transform": name, "metric": "mattes_mutual_information (lower is better)",
        "metric_before", "metric_after" (every fixed voxel of the region, before = scanner coordinates),
        "correlation_before",
        "correlation_after" (Pearson, HU clipped to -200..400, in the region and the moving field of view),
        "metric_region",
        "initialisation": "physical"|"centred", "parameters": [...],
        "fixed_parameters": [...], "translation_mm_xyz": (x, y, z) of the fixed -> moving point
        mapping (a moving image whose content is shifted by +t mm reports +t), "iterations", "stop_condition",
        "improved"}.
    """
    import SimpleITK as sitk

    if transform not in _TRANSFORMS:
        raise ValueError(f"transform must be one of {_TRANSFORMS}, got {transform!r}")
    for what, im in (("moving", moving), ("fixed", fixed)):
        if im.GetDimension() != 3:
            raise ValueError(f"{what} image must be 3D, got {im.GetDimension()}D")
    fixed_f, moving_f = _float(fixed), _float(moving)
    mask = _mask_image(fixed_mask, fixed)
    init, init_name, metric_before = _initialise(fixed, fixed_f, moving_f, transform, mask, bins)
    levels = [f for f in (4, 2, 1) if min(fixed.GetSize()) // f >= 8] or [1]
    settings = dict(mask=mask, bins=bins, sampling=sampling, seed=seed)
    if transform == "rigid":
        final, iters, stop = _optimise(fixed_f, moving_f, init, iterations=iterations, levels=levels,
                                       learning_rate=2.0, **settings)
    else:
        final, iters, stop = _affine_after_rigid(fixed_f, moving_f, init, iterations, levels, settings)
    final = _leaf(final, sitk.Euler3DTransform if transform == "rigid" else sitk.AffineTransform)
    metric_after = mutual_information(fixed_f, moving_f, final, bins, mask)
    if metric_after > metric_before and init_name == "physical":  # never return something worse than the scanner
        final, metric_after = sitk.Transform(3, sitk.sitkIdentity), metric_before
    report = _report(fixed, moving, final, transform, mask, metric_before, metric_after, init_name, iters, stop)
    return resample_to(moving, fixed, final), report


def _initialise(fixed, fixed_f, moving_f, transform: str, mask, bins: int):
    """The start transform: the scanner's alignment ("physical", identity about the fixed image's centre) or the
    one overlaying the geometric centres ("centred"), whichever scores the better metric.
    Returns ``(transform, name, metric of the scanner's alignment)``."""
    import SimpleITK as sitk

    base = sitk.Euler3DTransform() if transform == "rigid" else sitk.AffineTransform(3)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
    physical = sitk.Euler3DTransform() if transform == "rigid" else sitk.AffineTransform(3)
    physical.SetCenter(centre)
    centred = sitk.CenteredTransformInitializer(fixed_f, moving_f, base,
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    metric_before = mutual_information(fixed_f, moving_f, None, bins, mask)
    metric_centred = mutual_information(fixed_f, moving_f, centred, bins, mask)
    if metric_before <= metric_centred:
        return physical, "physical", metric_before
    return centred, "centred", metric_before


def _affine_after_rigid(fixed_f, moving_f, init, iterations: int, levels, settings: dict):
    """A rigid stage first, then the 12 affine parameters from there on the finest level; the affine result only
    when it beats its rigid start on the full metric. Returns ``(transform, iterations, stop condition)``."""
    import SimpleITK as sitk

    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(init.GetCenter())
    rigid.SetTranslation(init.GetTranslation())
    first, iters, _ = _optimise(fixed_f, moving_f, rigid, iterations=iterations, levels=levels, learning_rate=2.0,
                                **settings)
    first = _leaf(first, sitk.Euler3DTransform)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(first.GetCenter())
    affine.SetMatrix(first.GetMatrix())
    affine.SetTranslation(first.GetTranslation())
    refined, more, stop = _optimise(fixed_f, moving_f, affine, iterations=min(iterations, 100), levels=levels[-1:],
                                    learning_rate=0.5, **settings)
    refined = _leaf(refined, sitk.AffineTransform)
    bins, mask = settings["bins"], settings["mask"]
    if mutual_information(fixed_f, moving_f, refined, bins, mask) > mutual_information(fixed_f, moving_f, first,
                                                                                      bins, mask):
        refined, stop = affine, "affine refinement did not beat the rigid stage; rigid result kept"
    return refined, iters + more, stop


def _report(fixed, moving, final, transform: str, mask, metric_before: float, metric_after: float,
            init_name: str, iterations: int, stop: str) -> Dict:
    """The registration report of :func:`register_to_reference`."""
    import SimpleITK as sitk

    params = list(final.GetParameters())
    translation = params[-3:] if params else [0.0, 0.0, 0.0]
    return {"transform": transform, "metric": "mattes_mutual_information (lower is better)",
            "metric_before": metric_before, "metric_after": metric_after,
            "metric_region": "whole image" if mask is None else
            f"fixed mask ({int(sitk.GetArrayViewFromImage(mask).sum())} voxels)",
            "correlation_before": _correlation(fixed, moving, None, mask),
            "correlation_after": _correlation(fixed, moving, final, mask),
            "improved": bool(metric_after < metric_before), "initialisation": init_name,
            "parameters": [float(p) for p in params],
            "fixed_parameters": [float(p) for p in final.GetFixedParameters()],
            "translation_mm_xyz": [float(t) for t in translation],
            "iterations": int(iterations), "stop_condition": stop}
