"""Load a trained nnU-Net model folder for detection: validate it, resolve its trainer, build its network.

Loading is nnU-Net's ``nnUNetPredictor.initialize_from_trained_model_folder``
(:func:`nnunet_liver.nnunet_mirror.read_model_folder` and :func:`~nnunet_liver.nnunet_mirror.build_network`, pinned
against it by the tests) plus two things of ours:

- the trainer class named in the checkpoint is resolved by this package itself, first among our own trainers
  (``nnunet_liver.trainers``), then with nnU-Net's finder among nnU-Net's, so detection never depends on
  ``nnUNet_extTrainer`` being set;
- a folder trained before our trainers recorded the configuration they train with in the plans they save (see
  ``LiverWholeTrainer.training_configuration``) gets it from the trainer's hook (:func:`trained_configuration`);
  :func:`record_trained_configuration` writes it into such a folder, so that nnU-Net's own predictor runs it too.

The model is handed to :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor` through
``manual_initialization`` (:func:`make_predictor`).
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

from nnunet_liver.nnunet_mirror import build_network, read_model_folder
from nnunet_liver.utils.io import InputError

__all__ = ["LoadedModel", "load_model", "resolve_trainer_class", "resolve_model_dir", "is_ifm_trainer",
           "available_folds", "trained_configuration", "record_trained_configuration", "make_predictor",
           "DEMO_MODELS_DIR", "bundled_demo_model"]

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
    #: False for a folder trained before the trainer recorded its configuration in the plans
    #: (:func:`trained_configuration`)
    configuration_recorded: bool = True

    @property
    def ct_window(self) -> Tuple[float, float]:
        """The CT window (HU) ``nnunet-liver-plan`` wrote into the model's plans (its normalisation of every phase);
        :data:`nnunet_liver.labels.CT_WINDOW_HU` for plans with nnU-Net's own normalisation."""
        from nnunet_liver.labels import CT_WINDOW_HU
        from nnunet_liver.planning import ct_window_of

        return ct_window_of(self.plans_manager.plans) or CT_WINDOW_HU

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


def trained_configuration(trainer_class: type, plans_manager, configuration_manager):
    """The configuration the network of a model folder was trained with, from the configuration its checkpoint
    names in its plans: the same, unless the folder was trained before the trainer recorded its configuration in the
    plans (then the plans keep nnU-Net's planned patch size and network, and the trainer's
    ``training_configuration`` hook gives the trained ones). Returns ``(configuration manager, recorded)``,
    ``recorded`` False for such an old folder."""
    hook = getattr(trainer_class, "training_configuration", None)
    if hook is None:
        return configuration_manager, True
    trained = hook(plans_manager, configuration_manager)
    if trained.configuration == configuration_manager.configuration:
        return configuration_manager, True
    return trained, False


def load_model(model_dir: str, folds: Optional[Sequence] = None, checkpoint: str = "checkpoint_final.pth",
               which: str = "whole") -> LoadedModel:
    """Validate ``model_dir`` and load the requested folds' weights (CPU); build the network (eval mode).

    What ``nnUNetPredictor.initialize_from_trained_model_folder`` loads (plans, configuration, network, weights,
    mirroring axes), with the trainer resolved by :func:`resolve_trainer_class` and the configuration of an old
    folder from :func:`trained_configuration`.

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
    model_dir = resolve_model_dir(model_dir, which)
    folds = _validate_model_dir(model_dir, folds, checkpoint)
    read = read_model_folder(model_dir, folds, checkpoint)
    trainer_class = resolve_trainer_class(read.trainer_name)
    pm = read.plans_manager
    configuration_manager, recorded = trained_configuration(trainer_class, pm, pm.get_configuration(read.configuration))
    network = build_network(trainer_class, pm, configuration_manager, read.dataset_json, read.parameters[0])
    channels = read.dataset_json.get("channel_names", read.dataset_json.get("modality", {}))
    channel_names = tuple(str(channels[k]) for k in sorted(channels, key=int))
    return LoadedModel(model_dir=model_dir, folds=tuple(folds), checkpoint=checkpoint, trainer_name=read.trainer_name,
                       trainer_class=trainer_class, configuration=read.configuration, plans_manager=pm,
                       configuration_manager=configuration_manager, dataset_json=read.dataset_json, network=network,
                       parameters=read.parameters, allowed_mirroring_axes=read.allowed_mirroring_axes,
                       is_ifm=is_ifm_trainer(trainer_class), channel_names=channel_names,
                       configuration_recorded=recorded)


def record_trained_configuration(model_dir: str, checkpoint: str = "checkpoint_final.pth") -> bool:
    """Write the trained configuration of an old model folder (:func:`trained_configuration`) into its plans.json,
    so that nnU-Net's own predictor (``nnUNetv2_predict``, ``nnUNetv2_predict_from_modelfolder``) applies it with
    the patch size it was trained with. The weights and checkpoints are not touched. Returns whether plans.json
    changed (False: the folder already describes itself)."""
    from nnunet_liver.trainers.liver_trainers import record_trained_configuration as record
    from nnunet_liver.utils.io import write_json_atomic

    model = load_model(model_dir, checkpoint=checkpoint)
    if model.configuration_recorded:
        return False
    plans = model.plans_manager.plans
    record(plans, model.configuration, model.configuration_manager)
    write_json_atomic(plans, os.path.join(model.model_dir, "plans.json"), indent=4)  # as nnU-Net writes it
    return True


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
