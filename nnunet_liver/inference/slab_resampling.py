"""nnU-Net's resampling of logits back to the input grid, one output slab at a time, bit for bit.

nnU-Net's export (``convert_predicted_logits_to_segmentation_with_correct_shape``) resamples the network's logits
(C, z', y', x') to the cropped input grid (C, Z, Y, X) in one call. For a 14-class model on a clinical CT that output
is several GB of float32 (plus float64 temporaries). :class:`SlabResampler` returns the same values for output rows
``k0:k1`` of the first (slowest) axis only, for nnU-Net's default resampler
(``resample_data_or_seg_to_shape``):

* no resampling needed (same shape): the logits' own rows, as nnU-Net returns them unchanged;
* separate-z (anisotropic spacing, out-of-plane axis first): nnU-Net resizes every input slice in-plane
  (scikit-image ``resize``, float64) and then maps the stack along z with ``scipy.ndimage.map_coordinates``
  (``order_z``, mode ``nearest``). Each slab resizes only the input slices its rows read (their nearest slice, or
  the two around them for linear z) and calls ``map_coordinates`` with the same z coordinates minus the slab's first
  input slice: subtracting an integer from those coordinates is exact in floating point, so every weight, and
  every output value, is the whole-volume one;
* 3D (isotropic): scikit-image ``resize`` is ``scipy.ndimage.zoom`` (``grid_mode=True``, mode ``nearest``, spline
  prefilter for order > 1) followed by clipping to the input's range. zoom's C routine (``zoom_shift``) takes an
  output offset: called on the whole (small) prefiltered input with the slab's first row as offset, it computes
  exactly the coordinates and weights of the whole-volume call for those rows.

Anything else (torch resamplers, a separate axis that is not the first, other resampling functions) falls back to
nnU-Net's own whole-volume call, once, whose rows are then handed out slab by slab (memory as nnU-Net's export).
"""
from __future__ import annotations

import math
from typing import Iterator, Tuple

import numpy as np

__all__ = ["SlabResampler"]

_SLAB_VOXELS_CPU = 1 << 21  # output voxels per channel and slab on the CPU (~117 MB of 14-class float32)
_SLAB_VOXELS_GPU = 1 << 24


class SlabResampler:
    """Resample a case's logits back to its cropped input grid, rows ``k0:k1`` of the first axis at a time.

    Parameters
    ----------
    logits : (C, z', y', x') numpy array or torch tensor on the network's grid (after ``transpose_forward``).
    plans_manager, configuration_manager : the model's nnU-Net managers.
    properties : the case's nnU-Net preprocessing properties (``spacing``,
        ``shape_after_cropping_and_before_resampling``).

    ``out_shape`` is the (Z, Y, X) output shape (the cropped input, transposed); ``mode`` says which exact slab rule
    applies ("identity", "separate_z", "zoom") or "whole" for the fallback.
    """

    def __init__(self, logits, plans_manager, configuration_manager, properties):
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

        self.out_shape = tuple(int(s) for s in properties["shape_after_cropping_and_before_resampling"])
        spacing_t = [properties["spacing"][i] for i in plans_manager.transpose_forward]
        cm_spacing = list(configuration_manager.spacing)
        current = cm_spacing if len(cm_spacing) == len(self.out_shape) else [spacing_t[0], *cm_spacing]
        self._whole_args = (self.out_shape, current, spacing_t)
        self._fn = configuration_manager.resampling_fn_probabilities
        self.device = getattr(logits, "device", None)
        self.logits = logits
        cfg = configuration_manager.configuration
        name = cfg.get("resampling_fn_probabilities")
        kwargs = dict(cfg.get("resampling_fn_probabilities_kwargs") or {})
        in_shape = tuple(int(s) for s in logits.shape[1:])
        self.mode = "whole"
        if name == "resample_data_or_seg_to_shape" and not kwargs.get("is_seg", False) and _zoom_shift() is not None:
            if in_shape == self.out_shape:
                self.mode = "identity"
            else:
                extra = {"separate_z_anisotropy_threshold": kwargs["separate_z_anisotropy_threshold"]} \
                    if "separate_z_anisotropy_threshold" in kwargs else {}
                sep, axis = determine_do_sep_z_and_axis(kwargs.get("force_separate_z", False), current, spacing_t,
                                                        **extra)
                self.order, self.order_z = int(kwargs.get("order", 3)), int(kwargs.get("order_z", 0))
                if sep and axis == 0:
                    self.mode = "separate_z"
                elif not sep:
                    self.mode = "zoom"
        if self.mode == "whole":
            self._resampled = None
        else:
            self._prepare(in_shape)

    # ---- set-up ---------------------------------------------------------------------------------------------
    def _prepare(self, in_shape) -> None:
        data = self.logits
        if hasattr(data, "detach"):
            data = data.detach().cpu().numpy()
        self.out_dtype = data.dtype  # nnU-Net's output dtype is its input's
        if self.mode == "identity":
            self._data = data
            return
        self._data64 = data.astype(float, copy=False)  # nnU-Net resamples in float64 (the network grid: small)
        self._in_shape = in_shape
        if self.mode == "zoom":
            from scipy import ndimage
            from scipy.ndimage import _ni_support
            from scipy.ndimage._interpolation import _prepad_for_spline_filter

            self._zoom = np.ascontiguousarray(np.divide(np.array(in_shape), np.array(self.out_shape),
                                                        out=np.ones(3, dtype=np.float64),
                                                        where=np.array(self.out_shape) != 0))
            self._mode_code = _ni_support._extend_mode_to_code("nearest")
            self._filtered, self._npad, self._clip = [], 0, []
            for c in range(data.shape[0]):
                x = self._data64[c]
                if self.order > 1:  # zoom's spline prefilter runs on the whole input, as in the whole-volume call
                    padded, self._npad = _prepad_for_spline_filter(x, "nearest", 0.0)
                    x = ndimage.spline_filter(padded, self.order, output=np.float64, mode="nearest")
                self._filtered.append(np.ascontiguousarray(x))
                lo = np.min(self._data64[c])
                lo, hi = (np.nanmin(self._data64[c]), np.nanmax(self._data64[c])) if np.isnan(lo) else \
                    (lo, np.max(self._data64[c]))
                self._clip.append((np.asarray(lo), np.asarray(hi)))
        else:  # separate_z, axis 0
            self._row_scale = float(in_shape[0]) / self.out_shape[0]
            self._resized = {}

    # ---- slabs ----------------------------------------------------------------------------------------------
    def slabs(self, voxels: int = None) -> Iterator[Tuple[int, int]]:
        """(k0, k1) row ranges covering the output's first axis, each about ``voxels`` output voxels per channel."""
        if voxels is None:
            on_gpu = self.device is not None and getattr(self.device, "type", "cpu") != "cpu"
            voxels = _SLAB_VOXELS_GPU if on_gpu and self.mode == "whole" else _SLAB_VOXELS_CPU
        per_row = max(1, self.out_shape[1] * self.out_shape[2])
        step = max(1, voxels // per_row)
        for k0 in range(0, self.out_shape[0], step):
            yield k0, min(self.out_shape[0], k0 + step)

    def resample(self, k0: int, k1: int):
        """Rows ``k0:k1`` of nnU-Net's resampled logits: (C, k1 - k0, Y, X), numpy (or the fallback's type)."""
        if self.mode == "whole":
            if self._resampled is None:
                self._resampled = self._fn(self.logits, *self._whole_args)
                self.logits = None
            return self._resampled[:, k0:k1]
        if self.mode == "identity":
            return self._data[:, k0:k1]
        if self.mode == "zoom":
            return self._zoom_rows(k0, k1)
        return self._separate_z_rows(k0, k1)

    def _zoom_rows(self, k0, k1):
        zoom_shift = _zoom_shift()
        out = np.empty((len(self._filtered), k1 - k0) + self.out_shape[1:], dtype=self.out_dtype)
        tmp = np.empty((k1 - k0,) + self.out_shape[1:], dtype=np.float64)
        shift = np.array([float(k0), 0.0, 0.0])
        for c, x in enumerate(self._filtered):
            zoom_shift(x, self._zoom, shift, tmp, self.order, self._mode_code, 0.0, self._npad, True)
            np.clip(tmp, *self._clip[c], out=tmp)  # scikit-image's resize clips to the input's range
            out[c] = tmp
        return out

    def _separate_z_rows(self, k0, k1):
        from scipy.ndimage import map_coordinates
        from skimage.transform import resize

        Zi = self._in_shape[0]
        Z, Y, X = self.out_shape
        rows = np.arange(k0, k1)
        same_z = Zi == Z
        if same_z:
            z_lo, z_hi = k0, k1
        else:
            coords = self._row_scale * (rows + 0.5) - 0.5  # nnU-Net's expression, elementwise: the same doubles
            z_lo = max(0, int(math.floor(coords.min())) - 1)
            z_hi = min(Zi, int(math.floor(coords.max())) + 3)
        out = np.empty((self._data64.shape[0], k1 - k0, Y, X), dtype=self.out_dtype)
        # input slices resized in-plane, (C, Y, X) float64 each; those the next slab reads again are kept
        cache = {s: v for s, v in self._resized.items() if z_lo <= s < z_hi}
        for s in range(z_lo, z_hi):
            if s not in cache:
                cache[s] = np.stack([resize(self._data64[c, s], np.array([Y, X]), self.order, mode="edge",
                                            anti_aliasing=False) for c in range(self._data64.shape[0])])
        self._resized = cache
        here = np.empty((z_hi - z_lo, Y, X), dtype=np.float64)
        if not same_z:
            map_rows = np.broadcast_to(coords[:, None, None] - z_lo, (k1 - k0, Y, X))
            map_cols = np.broadcast_to((1.0 * (np.arange(Y) + 0.5) - 0.5)[None, :, None], (k1 - k0, Y, X))
            map_dims = np.broadcast_to((1.0 * (np.arange(X) + 0.5) - 0.5)[None, None, :], (k1 - k0, Y, X))
            coord_map = np.array([map_rows, map_cols, map_dims])
        for c in range(self._data64.shape[0]):
            for s in range(z_lo, z_hi):
                here[s - z_lo] = cache[s][c]
            if same_z:
                out[c] = here
            else:
                out[c] = map_coordinates(here, coord_map, order=self.order_z, mode="nearest")
        return out


def _zoom_shift():
    """scipy.ndimage's zoom routine with an output offset (``None`` if this scipy does not have it)."""
    try:
        from scipy.ndimage import _nd_image

        return getattr(_nd_image, "zoom_shift", None)
    except ImportError:  # pragma: no cover - scipy layout changed: the whole-volume fallback is used
        return None
