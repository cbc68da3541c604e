"""Load a trained nnU-Net model folder for detection: validate it, resolve its trainer, build its network.

The trainer class named in the checkpoint is resolved by this package itself: first among our own trainers
(``nnunet_liver.trainers``), then with nnU-Net's finder for nnU-Net's own trainers. Detection therefore never depends
on ``nnUNet_extTrainer`` being set. The network is built with the trainer's static ``build_network_architecture``
and handed to :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor` through ``manual_initialization``.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import pkgutil
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from nnunet_liver.utils.io import InputError

__all__ = ["LoadedModel", "load_model", "resolve_trainer_class", "resolve_model_dir", "is_ifm_trainer",
           "available_folds", "DEMO_MODELS_DIR", "bundled_demo_model"]

#: the bundled demo models (``-m demo``): ``whole`` (UNet-whole) and ``patch`` (UNet-patch)
DEMO_MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_models")


@dataclass
class LoadedModel:
    """A trained model ready for prediction. ``parameters`` holds one state dict per fold (CPU tensors)."""
    model_dir: str
    folds: Tuple[Union[int, str], ...]
    checkpoint: str
    trainer_name: str
    trainer_class: type
    configuration: str
    plans_manager: object
    configuration_manager: object
    dataset_json: dict
    network: object
    parameters: List[dict]
    allowed_mirroring_axes: Optional[Tuple[int, ...]]
    is_ifm: bool
    channel_names: Tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return self.plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads

    def describe(self) -> dict:
        """Provenance for the output JSON (folder, folds, checkpoint, trainer, plans, configuration, channels)."""
        return {"dir": os.path.abspath(self.model_dir), "folds": [str(f) for f in self.folds],
                "checkpoint": self.checkpoint, "trainer": self.trainer_name, "plans": self.plans_manager.plans_name,
                "configuration": self.configuration, "channels": list(self.channel_names), "ifm": self.is_ifm,
                "patch_size": [int(p) for p in self.configuration_manager.patch_size],
                "spacing": [float(s) for s in self.configuration_manager.spacing]}


def bundled_demo_model(which: str) -> bool:
    """Whether this installation bundles the demo model ``which`` ("whole" or "patch")."""
    return os.path.isdir(os.path.join(DEMO_MODELS_DIR, which))


def resolve_model_dir(model_dir: str, which: str = "whole") -> str:
    """Map ``"demo"`` to the bundled demo model (``demo_models/<which>``); check that the folder exists."""
    if model_dir == "demo":
        candidate = os.path.join(DEMO_MODELS_DIR, which)
        if not bundled_demo_model(which):
            raise InputError(f"{candidate}: no bundled demo model in this installation (a source checkout without "
                             f"the demo_models folder?); pass a trained model folder with -m")
        return candidate
    if not os.path.isdir(model_dir):
        raise InputError(f"{model_dir}: model folder not found")
    return model_dir


def available_folds(model_dir: str, checkpoint: str) -> List[Union[int, str]]:
    """Folds (``fold_X`` sub-folders) of ``model_dir`` that hold ``checkpoint``, sorted; ``"all"`` last."""
    found = []
    for name in sorted(os.listdir(model_dir)):
        m = re.fullmatch(r"fold_(\d+|all)", name)
        if m and os.path.isfile(os.path.join(model_dir, name, checkpoint)):
            found.append(int(m.group(1)) if m.group(1) != "all" else "all")
    return sorted([f for f in found if f != "all"]) + [f for f in found if f == "all"]


def _validate_model_dir(model_dir: str, folds: Optional[Sequence], checkpoint: str) -> List[Union[int, str]]:
    for name in ("dataset.json", "plans.json"):
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise InputError(f"{model_dir}: not an nnU-Net model folder ({name} missing); pass the folder that "
                             f"holds dataset.json, plans.json and fold_X/")
    if folds is None or len(folds) == 0:
        folds = available_folds(model_dir, checkpoint)
        if not folds:
            raise InputError(f"{model_dir}: no fold_X/{checkpoint} found (train the model first or choose "
                             f"another checkpoint with -chk)")
        return folds
    out = []
    for f in folds:
        f = "all" if str(f) == "all" else f
        try:
            f = f if f == "all" else int(f)
        except ValueError:
            raise InputError(f"fold {f!r}: folds are integers or 'all'") from None
        path = os.path.join(model_dir, f"fold_{f}", checkpoint)
        if not os.path.isfile(path):
            have = available_folds(model_dir, checkpoint)
            raise InputError(f"{path}: checkpoint not found (folds with {checkpoint}: "
                             f"{', '.join(map(str, have)) or 'none'})")
        out.append(f)
    return out


def resolve_trainer_class(trainer_name: str) -> type:
    """The trainer class called ``trainer_name``: ours (``nnunet_liver.trainers``) first, then nnU-Net's own.

    Raises
    ------
    InputError
        if neither holds a class of that name.
    """
    import nnunet_liver.trainers as ours

    if isinstance(getattr(ours, trainer_name, None), type):
        return getattr(ours, trainer_name)
    for info in pkgutil.walk_packages(ours.__path__, prefix=ours.__name__ + "."):
        module = importlib.import_module(info.name)
        candidate = getattr(module, trainer_name, None)
        if isinstance(candidate, type):
            return candidate
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    import nnunetv2

    candidate = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
                                            trainer_name, "nnunetv2.training.nnUNetTrainer")
    if candidate is None:
        raise InputError(f"trainer {trainer_name!r} (named in the checkpoint) is neither an nnunet_liver trainer nor "
                         f"one of nnU-Net's; install the package that defines it")
    return candidate


def is_ifm_trainer(trainer_class: type) -> bool:
    """Whether models of this trainer accept missing phases (iterative fusion module): the trainer's class attribute
    ``supports_missing_phases`` (``LiverIFMTrainer`` and its subclasses)."""
    return bool(getattr(trainer_class, "supports_missing_phases", False))


def load_model(model_dir: str, folds: Optional[Sequence] = None, checkpoint: str = "checkpoint_final.pth",
               which: str = "whole") -> LoadedModel:
    """Validate ``model_dir`` and load the requested folds' weights (CPU); build the network (eval mode).

    Parameters
    ----------
    model_dir : nnU-Net training output folder (``.../Dataset501_X/Trainer__Plans__3d_fullres``) or ``"demo"``.
    folds : folds to ensemble (``None``: every fold that holds ``checkpoint``).
    checkpoint : checkpoint file name inside each ``fold_X``.

    Raises
    ------
    InputError
        at once when the folder, a requested fold or the checkpoint is missing.
    """
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_dir = resolve_model_dir(model_dir, which)
    folds = _validate_model_dir(model_dir, folds, checkpoint)
    dataset_json = load_json(os.path.join(model_dir, "dataset.json"))
    plans_manager = PlansManager(load_json(os.path.join(model_dir, "plans.json")))
    parameters, trainer_name, configuration, mirror_axes = [], None, None, None
    for i, f in enumerate(folds):
        path = os.path.join(model_dir, f"fold_{f}", checkpoint)
        try:
            ckpt = torch.load(path, map_location=torch.device("cpu"), weights_only=False)
        except Exception as e:
            raise InputError(f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:150]})") \
                from None
        if not isinstance(ckpt, dict) or "network_weights" not in ckpt or "trainer_name" not in ckpt:
            raise InputError(f"{path}: not an nnU-Net checkpoint (no network_weights/trainer_name)")
        if i == 0:
            trainer_name = ckpt["trainer_name"]
            configuration = ckpt["init_args"]["configuration"]
            mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
        elif ckpt["trainer_name"] != trainer_name:
            raise InputError(f"{path}: trainer {ckpt['trainer_name']} differs from fold {folds[0]}'s {trainer_name}")
        parameters.append(ckpt["network_weights"])
    configuration_manager = plans_manager.get_configuration(configuration)
    trainer_class = resolve_trainer_class(trainer_name)
    if hasattr(trainer_class, "training_configuration"):
        # our trainers' networks are applied on the patches they were trained on (UNet-patch: 16 x 128 x 128; the
        # _tiny and _demo variants: their own), not necessarily the planned size
        configuration_manager = trainer_class.training_configuration(plans_manager, configuration_manager)
    num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer_class.build_network_architecture(plans_manager, configuration_manager, num_inputs, num_outputs,
                                                       enable_deep_supervision=False)
    network.load_state_dict(parameters[0])
    network.eval()
    channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
    channel_names = tuple(str(channels[k]) for k in sorted(channels, key=int))
    return LoadedModel(model_dir=model_dir, folds=tuple(folds), checkpoint=checkpoint, trainer_name=trainer_name,
                       trainer_class=trainer_class, configuration=configuration, plans_manager=plans_manager,
                       configuration_manager=configuration_manager, dataset_json=dataset_json, network=network,
                       parameters=parameters, allowed_mirroring_axes=mirror_axes,
                       is_ifm=is_ifm_trainer(trainer_class), channel_names=channel_names)


def make_predictor(model: LoadedModel, device: str = "cpu", use_mirroring: bool = True, tile_step_size: float = 0.5):
    """An ``nnUNetPredictor`` initialised with ``model`` through ``manual_initialization`` (no tqdm per case)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    dev = torch.device(device)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a notice on CPU
        predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(model.network, model.plans_manager, model.configuration_manager,
                                    model.parameters, model.dataset_json, model.trainer_name,
                                    model.allowed_mirroring_axes)
    return predictor
