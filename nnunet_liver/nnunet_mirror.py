"""What nnunet_liver computes the way nnU-Net's own code does: every piece that mirrors nnU-Net internals, in one place.

The package uses nnU-Net's public components (planner, preprocessor class, resampling functions, label manager,
``nnUNetPredictor``). A few steps must give nnU-Net's values while doing what nnU-Net's code does not offer; each is
here, and each is checked bit for bit against nnU-Net's own function on every test run (``tests/test_nnunet_mirror.py``,
``tests/test_preprocess_by_channel.py``, ``tests/test_slab_maps.py``), so an nnU-Net or scipy upgrade that changes
the behaviour mirrored here fails a test instead of silently changing results:

- :func:`preprocess_by_channel`: ``DefaultPreprocessor.run_case_npy`` one channel at a time (a fraction of the memory);
- :func:`resample_seg_like`: a label map transposed, cropped and resampled as ``run_case_npy`` does the image;
- :func:`same_preprocessing`: the plan fields ``run_case_npy``'s image depends on;
- :class:`SlabResampler`: nnU-Net's resampling of logits back to the input grid, one output slab at a time;
- :func:`read_model_folder` and :func:`build_network`: ``nnUNetPredictor.initialize_from_trained_model_folder``
  with the trainer class looked up by the caller (detection does not need ``nnUNet_extTrainer``).

Arrays are in nnU-Net's axis order (the plans' ``transpose_forward`` applied) unless a docstring says otherwise.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["network_spacings", "channelwise_exact", "preprocess_by_channel", "resample_seg_like", "same_preprocessing",
           "SlabResampler", "CheckpointContents", "read_model_folder", "build_network"]


# ---- preprocessing ------------------------------------------------------------------------------------------------
def network_spacings(plans_manager, configuration_manager, spacing) -> Tuple[list, list]:
    """(the case's spacing, the network's spacing), both in the plans' axis order, as ``run_case_npy`` computes them
    from the case's (z, y, x) ``spacing`` in mm: a 2D configuration's spacing keeps the case's own first axis."""
    original = [spacing[i] for i in plans_manager.transpose_forward]
    target = list(configuration_manager.spacing)
    if len(target) < len(original):
        target = [original[0]] + target
    return original, target


#: nnU-Net's image resampling functions that resample every channel on its own (a channel's output depends on that
#: channel only), so that resampling channel by channel gives nnU-Net's values
_CHANNELWISE_RESAMPLING = ("resample_data_or_seg_to_shape",)


def channelwise_exact(preprocessor, configuration_manager) -> bool:
    """Whether :func:`preprocess_by_channel` gives ``run_case_npy``'s image exactly: nnU-Net's own
    ``DefaultPreprocessor`` (not a subclass, which may change any step) and a channel-independent resampling."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    return (type(preprocessor) is DefaultPreprocessor
            and configuration_manager.configuration.get("resampling_fn_data") in _CHANNELWISE_RESAMPLING)


def preprocess_by_channel(preprocessor, data: np.ndarray, properties: dict, plans_manager, configuration_manager):
    """``DefaultPreprocessor.run_case_npy`` for an image without segmentation, one channel at a time.

    nnU-Net's ``run_case_npy`` first copies the whole case to float32, and its resampling then converts the whole
    copy to float64: for a four-phase 600 x 512 x 512 CT that is 2.5 + 5 GB on top of the case, plus the spline
    filter's copy of a channel. The steps are per channel except the cropping box (the nonzero mask of all
    channels), so this runs nnU-Net's own functions in the same order: ``crop_to_nonzero`` on the whole case (it
    only compares voxels with 0, whatever their dtype), then, channel by channel, the float32 copy, the channel's
    normaliser (as ``_normalize`` picks it) and ``resampling_fn_data`` on that channel alone. Only one channel's
    copies exist at a time. Use it only where :func:`channelwise_exact` holds.

    Parameters
    ----------
    data : (C, Z, Y, X) raw intensities in the input's axis order (not modified).
    properties : ``{"spacing": (z, y, x) mm}``; nnU-Net's cropping properties are added to it.

    Returns
    -------
    (C, z', y', x') float32 on the network's grid, in nnU-Net's axis order; and ``properties``.
    """
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    data = data.transpose([0, *[i + 1 for i in plans_manager.transpose_forward]])
    original_spacing, target_spacing = network_spacings(plans_manager, configuration_manager, properties["spacing"])
    properties["shape_before_cropping"] = data.shape[1:]
    data, seg, bbox = crop_to_nonzero(data, None)  # views of the case, and the nonzero mask as nnU-Net's seg
    properties["bbox_used_for_cropping"] = bbox
    properties["shape_after_cropping_and_before_resampling"] = data.shape[1:]
    new_shape = compute_new_shape(data.shape[1:], original_spacing, target_spacing)
    out = None
    intensity = plans_manager.foreground_intensity_properties_per_channel
    for c in range(data.shape[0]):
        channel = data[c:c + 1].astype(np.float32)  # run_case_npy's copy, one channel
        # _normalize picks channel c's normaliser by its index: hand it a configuration whose channel 0 has the
        # scheme, mask use and statistics of channel c
        config = dict(configuration_manager.configuration)
        config["normalization_schemes"] = [configuration_manager.normalization_schemes[c]]
        config["use_mask_for_norm"] = [configuration_manager.use_mask_for_norm[c]]
        channel = preprocessor._normalize(channel, seg, ConfigurationManager(config), {"0": intensity[str(c)]})
        resampled = configuration_manager.resampling_fn_data(channel, new_shape, original_spacing, target_spacing)
        del channel
        if out is None:
            out = np.empty((data.shape[0],) + tuple(resampled.shape[1:]), dtype=resampled.dtype)
        out[c] = resampled[0]
        del resampled
    return out, properties


def resample_seg_like(seg: np.ndarray, properties: dict, new_shape, plans_manager, configuration_manager,
                      order: Optional[int] = None) -> np.ndarray:
    """Transpose, crop and resample a (1, Z, Y, X) label map (input axis order) exactly as ``run_case_npy`` did the
    image whose nnU-Net ``properties`` (spacing, cropping box) are given; returns (1, z', y', x') of ``new_shape``.

    ``order=None`` uses the plans' label resampling (``resampling_fn_seg``: for nnU-Net's default, per-label
    interpolation, one pass per label value), nnU-Net's own label map; ``order=0`` resamples all labels in one
    nearest-neighbour pass on the same coordinate mapping (instance maps with many ids).
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

    seg = seg.transpose([0, *[i + 1 for i in plans_manager.transpose_forward]])
    seg = seg[(slice(None),) + bounding_box_to_slice(properties["bbox_used_for_cropping"])]
    original_spacing, target_spacing = network_spacings(plans_manager, configuration_manager, properties["spacing"])
    kwargs = {} if order is None else {"order": order, "order_z": order}
    return np.asarray(configuration_manager.resampling_fn_seg(seg, tuple(new_shape), original_spacing,
                                                              target_spacing, **kwargs))


def same_preprocessing(a, b) -> bool:
    """Whether nnU-Net's ``run_case_npy`` gives the same image for models ``a`` and ``b`` (objects with
    ``plans_manager``, ``configuration_manager`` and ``dataset_json``) on any case: the same preprocessor class,
    axis transpose, target spacing, normalisation per channel (scheme, mask use, the dataset's intensity statistics)
    and image resampling function, on the same channels."""
    pa, pb, ca, cb = a.plans_manager, b.plans_manager, a.configuration_manager, b.configuration_manager

    def channels(m):
        names = m.dataset_json.get("channel_names", m.dataset_json.get("modality", {}))
        return [names[k] for k in sorted(names, key=int)]

    return (ca.preprocessor_class is cb.preprocessor_class
            and list(pa.transpose_forward) == list(pb.transpose_forward)
            and [float(s) for s in ca.spacing] == [float(s) for s in cb.spacing]
            and list(ca.normalization_schemes) == list(cb.normalization_schemes)
            and list(ca.use_mask_for_norm) == list(cb.use_mask_for_norm)
            and pa.foreground_intensity_properties_per_channel == pb.foreground_intensity_properties_per_channel
            and ca.configuration.get("resampling_fn_data") == cb.configuration.get("resampling_fn_data")
            and ca.configuration.get("resampling_fn_data_kwargs") == cb.configuration.get("resampling_fn_data_kwargs")
            and channels(a) == channels(b))


# ---- the logits back on the input grid, slab by slab ---------------------------------------------------------------
_SLAB_VOXELS_CPU = 1 << 21  # output voxels per channel and slab on the CPU (~117 MB of 14-class float32)
_SLAB_VOXELS_GPU = 1 << 24


class SlabResampler:
    """nnU-Net's resampling of a case's logits back to its cropped input grid, rows ``k0:k1`` of the first axis at a
    time, bit for bit, for nnU-Net's default resampler (``resample_data_or_seg_to_shape``).

    nnU-Net's export (``convert_predicted_logits_to_segmentation_with_correct_shape``) resamples the logits in one
    call: for a 14-class model on a clinical CT several GB of float32 (plus float64 temporaries). Here:

    * no resampling needed (same shape): the logits' own rows, as nnU-Net returns them unchanged;
    * separate-z (anisotropic spacing, out-of-plane axis first): nnU-Net resizes every input slice in-plane
      (scikit-image ``resize``, float64), then maps the stack along z with ``scipy.ndimage.map_coordinates``
      (``order_z``, mode ``nearest``). Each slab resizes only the input slices its rows read and calls
      ``map_coordinates`` with the same z coordinates minus the slab's first input slice: subtracting an integer is
      exact in floating point, so every weight, and every output value, is the whole-volume one;
    * 3D (isotropic): scikit-image ``resize`` is ``scipy.ndimage.zoom`` (``grid_mode=True``, mode ``nearest``, spline
      prefilter for order > 1) followed by clipping to the input's range. zoom's C routine (``zoom_shift``, private to
      scipy) takes an output offset: called on the whole (small) prefiltered input with the slab's first row as
      offset, it computes exactly the whole-volume call's coordinates and weights for those rows. The private call is
      checked once per process against the public ``scipy.ndimage.zoom`` (:func:`_scipy_zoom_rows`); should a scipy
      release change it, the whole-volume fallback below is used.

    Anything else (torch resamplers, a separate axis that is not the first, other resampling functions) falls back to
    nnU-Net's own whole-volume call, once, whose rows are then handed out slab by slab (memory as nnU-Net's export).

    Parameters
    ----------
    logits : (C, z', y', x') numpy array or torch tensor on the network's grid.
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
        kwargs = dict(cfg.get("resampling_fn_probabilities_kwargs") or {})
        in_shape = tuple(int(s) for s in logits.shape[1:])
        self.mode = "whole"
        if cfg.get("resampling_fn_probabilities") == "resample_data_or_seg_to_shape" and not kwargs.get("is_seg"):
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
                elif not sep and _scipy_zoom_rows() is not None:
                    self.mode = "zoom"
        self._resampled = None
        if self.mode != "whole":
            self._prepare(in_shape)

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
            zoom_rows = _scipy_zoom_rows()
            self._zoom = np.ascontiguousarray(np.divide(np.array(in_shape), np.array(self.out_shape),
                                                        out=np.ones(3, dtype=np.float64),
                                                        where=np.array(self.out_shape) != 0))
            # zoom's spline prefilter runs on the whole input, as in the whole-volume call
            self._filtered = [zoom_rows.prefilter(self._data64[c], self.order) for c in range(data.shape[0])]
            self._clip = []
            for c in range(data.shape[0]):
                lo = np.min(self._data64[c])
                lo, hi = (np.nanmin(self._data64[c]), np.nanmax(self._data64[c])) if np.isnan(lo) else \
                    (lo, np.max(self._data64[c]))
                self._clip.append((np.asarray(lo), np.asarray(hi)))
        else:  # separate_z, axis 0
            self._row_scale = float(in_shape[0]) / self.out_shape[0]
            self._resized = {}

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
            zoom_rows = _scipy_zoom_rows()
            out = np.empty((len(self._filtered), k1 - k0) + self.out_shape[1:], dtype=self.out_dtype)
            tmp = np.empty((k1 - k0,) + self.out_shape[1:], dtype=np.float64)
            for c, filtered in enumerate(self._filtered):
                zoom_rows.rows(filtered, self._zoom, k0, self.order, tmp)
                np.clip(tmp, *self._clip[c], out=tmp)  # scikit-image's resize clips to the input's range
                out[c] = tmp
            return out
        return self._separate_z_rows(k0, k1)

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
            out[c] = here if same_z else map_coordinates(here, coord_map, order=self.order_z, mode="nearest")
        return out


class _ZoomRows:
    """Rows of ``scipy.ndimage.zoom(x, ..., mode="nearest", grid_mode=True)`` through scipy's private routines:
    the spline prefilter of the whole input once (:meth:`prefilter`), then ``zoom_shift`` with the first row as
    output offset (:meth:`rows`)."""

    def __init__(self):
        from scipy.ndimage import _nd_image, _ni_support
        from scipy.ndimage._interpolation import _prepad_for_spline_filter

        self._zoom_shift = _nd_image.zoom_shift
        self._prepad = _prepad_for_spline_filter
        self._mode = _ni_support._extend_mode_to_code("nearest")

    def prefilter(self, x: np.ndarray, order: int) -> Tuple[np.ndarray, int]:
        """(the input as ``zoom`` interpolates it: padded and spline-filtered for order > 1, its padding)."""
        from scipy import ndimage

        if order <= 1:
            return np.ascontiguousarray(x), 0
        padded, npad = self._prepad(x, "nearest", 0.0)
        return np.ascontiguousarray(ndimage.spline_filter(padded, order, output=np.float64, mode="nearest")), npad

    def rows(self, filtered: Tuple[np.ndarray, int], zoom: np.ndarray, k0: int, order: int, out: np.ndarray) -> None:
        """Write rows ``k0 : k0 + len(out)`` of the zoomed volume into ``out`` (float64)."""
        x, npad = filtered
        self._zoom_shift(x, zoom, np.array([float(k0), 0.0, 0.0]), out, order, self._mode, 0.0, npad, True)


@functools.lru_cache(maxsize=None)
def _scipy_zoom_rows() -> Optional[_ZoomRows]:
    """:class:`_ZoomRows` when scipy's private routines give the public ``scipy.ndimage.zoom``'s values bit for bit
    (checked once on a small volume, orders 1 and 3, two slabs); None when they are missing, take other arguments
    or compute something else (then :class:`SlabResampler` uses nnU-Net's whole-volume call)."""
    from scipy import ndimage

    try:
        zoom_rows = _ZoomRows()
        x = np.random.default_rng(0).normal(size=(5, 4, 6))
        out_shape = (9, 7, 5)
        zoom = np.divide(np.array(x.shape), np.array(out_shape), dtype=np.float64)
        for order in (1, 3):
            want = ndimage.zoom(x, np.array(out_shape) / np.array(x.shape), order=order, mode="nearest",
                                grid_mode=True)
            filtered = zoom_rows.prefilter(x, order)
            got = np.empty(out_shape, dtype=np.float64)
            for k0, k1 in ((0, 4), (4, 9)):
                zoom_rows.rows(filtered, zoom, k0, order, got[k0:k1])
            if want.shape != got.shape or not np.array_equal(want, got):
                return None
        return zoom_rows
    except Exception:  # noqa: BLE001 - any change of the private API: use the public whole-volume path
        return None


# ---- a trained model folder, as nnUNetPredictor.initialize_from_trained_model_folder reads it ------------------------
@dataclass
class CheckpointContents:
    """What ``initialize_from_trained_model_folder`` takes from a model folder: the plans and dataset.json, one
    state dict per fold, and from the first fold's checkpoint the trainer's name, the configuration (its
    ``init_args``) and the mirroring axes."""
    plans_manager: object
    dataset_json: dict
    parameters: List[dict]
    trainer_name: str
    configuration: str
    allowed_mirroring_axes: Optional[Tuple[int, ...]]


def read_model_folder(model_dir: str, folds: Sequence[Union[int, str]],
                      checkpoint_name: str = "checkpoint_final.pth") -> CheckpointContents:
    """Read ``model_dir``'s plans.json, dataset.json and ``fold_F/checkpoint_name`` of every fold (CPU tensors) as
    nnU-Net's initialiser does, with one clear error per unreadable checkpoint or mixed trainers.

    Raises
    ------
    InputError
        a checkpoint that cannot be loaded, is not nnU-Net's, or names another trainer than the first fold's.
    """
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_liver.utils.io import InputError

    dataset_json = load_json(os.path.join(model_dir, "dataset.json"))
    plans_manager = PlansManager(load_json(os.path.join(model_dir, "plans.json")))
    parameters, first = [], None
    for f in folds:
        path = os.path.join(model_dir, f"fold_{f}", checkpoint_name)
        try:
            ckpt = torch.load(path, map_location=torch.device("cpu"), weights_only=False)
        except Exception as e:
            raise InputError(f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:150]})") \
                from None
        if not isinstance(ckpt, dict) or "network_weights" not in ckpt or "trainer_name" not in ckpt:
            raise InputError(f"{path}: not an nnU-Net checkpoint (no network_weights/trainer_name)")
        if first is None:
            first = ckpt
        elif ckpt["trainer_name"] != first["trainer_name"]:
            raise InputError(f"{path}: trainer {ckpt['trainer_name']} differs from fold {folds[0]}'s "
                             f"{first['trainer_name']}")
        parameters.append(ckpt["network_weights"])
    return CheckpointContents(plans_manager=plans_manager, dataset_json=dataset_json, parameters=parameters,
                              trainer_name=first["trainer_name"], configuration=first["init_args"]["configuration"],
                              allowed_mirroring_axes=first.get("inference_allowed_mirroring_axes"))


def build_network(trainer_class: type, plans_manager, configuration_manager, dataset_json: dict, state_dict: dict):
    """The trainer's network as nnU-Net's initialiser builds it (``build_network_architecture`` with the plans'
    input channels and segmentation heads, no deep supervision), the first fold's weights loaded; eval mode."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer_class.build_network_architecture(plans_manager, configuration_manager, num_inputs, num_outputs,
                                                       enable_deep_supervision=False)
    network.load_state_dict(state_dict)
    return network.eval()
