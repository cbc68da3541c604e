"""Radiomics per lesion with pyradiomics (as Nolte's baseline radiomic model), settings in ``radiomics.yaml``.

The library is ``pyradiomics-bhklab`` (the maintained build of pyradiomics that installs on Python 3.11 with
numpy 2; import name ``radiomics``), an optional dependency: ``pip install "nnunet_liver[characterize]"``. Shape
features come from the lesion mask once (``rad_shape_<feature>``); first-order and texture features from every
present phase (``rad_<PHASE>_<class>_<feature>``). Every lesion is cropped to its bounding box plus a margin before
extraction (pyradiomics reads only the mask's neighbourhood anyway), on the case's grid; pyradiomics then resamples
the crop as the settings file says.

Papers: Nolte, "Detecting HCC in NAFLD patients using deep learning based radiomics".
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["SETTINGS_FILE", "PREFIX", "radiomics_missing", "library", "RadiomicsExtractor"]

#: the one settings file (pyradiomics parameter file, documented inline)
SETTINGS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "radiomics.yaml")
#: every radiomics column starts with this
PREFIX = "rad_"
#: the crop margin around a lesion's bounding box (voxels z, y, x): room for the resampling's interpolation
_MARGIN = (2, 4, 4)


def radiomics_missing() -> Optional[str]:
    """None when pyradiomics can be imported, else why not (one line)."""
    try:
        import radiomics  # noqa: F401
        from radiomics import featureextractor  # noqa: F401
    except ImportError as e:
        return (f"pyradiomics is not installed ({e}); install it with: pip install \"nnunet_liver[characterize]\" "
                f"(or pip install pyradiomics-bhklab)")
    return None


def library() -> dict:
    """The radiomics library and settings a table was made with (recorded beside it)."""
    import importlib.metadata

    import radiomics

    try:
        dist = importlib.metadata.version("pyradiomics-bhklab")
        name = "pyradiomics-bhklab"
    except importlib.metadata.PackageNotFoundError:
        dist, name = importlib.metadata.version("pyradiomics"), "pyradiomics"
    with open(SETTINGS_FILE, encoding="utf-8") as f:
        settings = f.read()
    return {"name": name, "version": dist, "radiomics_version": str(radiomics.__version__),
            "settings_file": os.path.basename(SETTINGS_FILE), "settings": settings}


class RadiomicsExtractor:
    """pyradiomics' ``RadiomicsFeatureExtractor`` built from ``settings_file``, split into a shape extractor (once per
    lesion) and an intensity extractor (once per phase)."""

    def __init__(self, settings_file: str = SETTINGS_FILE):
        missing = radiomics_missing()
        if missing:
            from nnunet_liver.utils.io import InputError

            raise InputError(missing)
        from radiomics import featureextractor

        logging.getLogger("radiomics").setLevel(logging.ERROR)
        self.settings_file = settings_file
        self.shape = featureextractor.RadiomicsFeatureExtractor(settings_file)
        self.intensity = featureextractor.RadiomicsFeatureExtractor(settings_file)
        classes = dict(self.shape.enabledFeatures)
        self.shape.disableAllFeatures()
        if "shape" in classes:
            self.shape.enableFeaturesByName(shape=classes["shape"] or [])
        self.intensity.enabledFeatures.pop("shape", None)
        self.has_shape = "shape" in classes

    def lesion(self, mask: np.ndarray, box: Sequence[slice], images: Mapping[str, np.ndarray],
               spacing: Sequence[float], phases: Sequence[str]) -> Dict[str, float]:
        """Radiomics of one lesion: {column: value}; phases of ``phases`` absent from ``images`` get no columns.

        ``mask`` is bool (z, y, x) on ``box`` (slices into the (Z, Y, X) arrays of ``images``); spacing (z, y, x) mm.
        """
        shape = next(iter(images.values())).shape
        crop, inner = _crop(box, shape)
        full_mask = np.zeros(tuple(s.stop - s.start for s in crop), dtype=np.uint8)
        full_mask[inner] = mask
        out: Dict[str, float] = {}
        mask_img = _sitk(full_mask, spacing)
        jobs = ([("shape", None, self.shape)] if self.has_shape else []) + \
            [(phase, phase, self.intensity) for phase in phases if phase in images]
        for name, phase, extractor in jobs:
            arr = np.asarray(images[phase])[crop] if phase else np.zeros(full_mask.shape, np.float32)
            result = extractor.execute(_sitk(arr.astype(np.float32), spacing), mask_img)
            for key, value in result.items():
                if key.startswith("diagnostics_"):
                    continue
                _, cls, feature = key.split("_", 2)  # original_firstorder_Median
                column = f"{PREFIX}shape_{feature}" if cls == "shape" else f"{PREFIX}{phase}_{cls}_{feature}"
                out[column] = float(value)
        return out


def _crop(box: Sequence[slice], shape: Sequence[int]) -> Tuple[tuple, tuple]:
    """The crop (bbox + margin, clipped) and the bbox's place inside it."""
    crop = tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, _MARGIN, shape))
    inner = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(box, crop))
    return crop, inner


def _sitk(array: np.ndarray, spacing: Sequence[float]):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing))))
    return img
