"""LiverDetector: the whole cascade of Wang et al. on one case, in memory (ARCHITECTURE.md, "Data flow").

load + validate + align + fill -> UNet-whole (nnUNetPredictor, folds ensembled) -> sensitivity maps for every
factor from one pass -> seg2det -> reclassify with UNet-patch -> same/diff split -> patient class per factor,
consensus, malignancy, LiverMax. :mod:`nnunet_liver.inference.runner` adds folders, outputs and sharding.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Union

import numpy as np

from nnunet_liver.case import LoadedCase
from nnunet_liver.inference.cases import CaseFiles
from nnunet_liver.inference.inputs import load_input
from nnunet_liver.inference.model import LoadedModel, load_model, make_predictor
from nnunet_liver.inference.record import SCHEMA_VERSION, CaseRecord, geometry_record
from nnunet_liver.utils.io import InputError

__all__ = ["LiverDetector", "CaseResult", "SCHEMA_VERSION", "factor_key"]

#: the lowest reported factor's regions are split among this factor's lesions (``LiverDetector(marker_factor=)``)
DEFAULT_MARKER_FACTOR = 0.25
#: ... and only among those of at least this volume (cm3)
DEFAULT_MIN_MARKER_CM3 = 0.5


def factor_key(f: float) -> str:
    """JSON key of a sensitivity factor: ``1.0 -> "1"``, ``2.5 -> "2.5"``."""
    return f"{float(f):g}"


@dataclass
class CaseResult:
    """The detector's result for one case.

    ``case_record`` is what CASE.json holds (:class:`~nnunet_liver.inference.record.CaseRecord`; :attr:`record` is
    its JSON content); ``instance_map`` (Z, Y, X) uint16 holds the final lesions' ids on the reference grid whose
    SimpleITK image is ``case.reference``; ``lesions`` are the final ``Lesion`` objects.
    """
    case_record: CaseRecord
    instance_map: np.ndarray
    lesions: list
    case: LoadedCase
    label_maps: Dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def record(self) -> dict:
        """CASE.json's content (:meth:`CaseRecord.to_dict`, a new dict at every call)."""
        return self.case_record.to_dict()


class LiverDetector:
    """Detect, reclassify and classify liver lesions with a trained UNet-whole (and optionally UNet-patch).

    Parameters
    ----------
    model_dir : UNet-whole's nnU-Net training output folder, or ``"demo"`` for the bundled demo model.
    folds : folds to ensemble (``None``: every fold holding ``checkpoint``).
    checkpoint : checkpoint file name in each ``fold_X``.
    patch_model_dir : UNet-patch's folder (``None``: reclassification is skipped, and the JSON says so).
    factors : lesion sensitivity factors; the lowest and the highest give the same/diff split, the final lesions
        are the highest factor's.
    device : ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.
    register : register phases on other grids onto the reference (venous) phase instead of failing.
    num_patches, max_reclassify_volume_cm3, min_score_cm3 : reclassification settings (10, 64 cm3, 0.5 cm3).
    seed : seeds the reclassification patches per case (results are reproducible).
    use_mirroring : nnU-Net's test-time mirroring for UNet-whole.
    split : split every higher factor's lesion region that holds two or more of the lowest factor's lesions among
        them (:mod:`nnunet_liver.postprocessing.split`; on by default, a departure from Wang et al.); ``False``
        reproduces the paper's cascade exactly.
    marker_factor : with ``split``, the lowest factor's own regions are split the same way among the lesions of
        this lower factor (default 0.25 = 1 / 4, the paper's high factor mirrored: lesions only the most confident
        voxels form, which keep apart neighbours that f = 1 already joins); its lesions serve as markers only and
        are never reported. ``None`` (or 0): the lowest factor's regions are not split.
    min_marker_cm3 : the marker factor's lesions smaller than this are not markers (default 0.5 cm3, the smallest
        lesion the paper counts): at a low factor a lesion whose type is uncertain breaks into small cores, which
        are not separate lesions.
    characterizer : the second stage, a :class:`nnunet_liver.characterize.hook.DetectionCharacterizer` (or None):
        adds each lesion's HCC and LI-RADS criteria probabilities (and LI-RADS for patients at risk) to CASE.json.

    Raises
    ------
    InputError
        at construction when a model folder, a requested fold or the checkpoint is missing.
    """

    def __init__(self, model_dir: str, folds: Optional[Sequence] = None, checkpoint: str = "checkpoint_final.pth",
                 patch_model_dir: Optional[str] = None, factors: Sequence[float] = (1.0, 4.0), device: str = "cpu",
                 register: bool = False, num_patches: int = 10, max_reclassify_volume_cm3: float = 64.0,
                 min_score_cm3: float = 0.5, seed: int = 0, use_mirroring: bool = True,
                 patch_folds: Optional[Sequence] = None, split: bool = True,
                 marker_factor: Optional[float] = DEFAULT_MARKER_FACTOR,
                 min_marker_cm3: float = DEFAULT_MIN_MARKER_CM3, characterizer=None):
        factors = tuple(sorted({float(f) for f in factors}))
        if not factors or any(not np.isfinite(f) or f <= 0 for f in factors):
            raise InputError(f"--factors {list(factors)}: sensitivity factors must be finite and > 0")
        marker_factor = None if not split or marker_factor is None or float(marker_factor) == 0 else \
            float(marker_factor)
        if marker_factor is not None and not (np.isfinite(marker_factor) and 0 < marker_factor < factors[0]):
            raise InputError(f"--marker-factor {marker_factor:g}: must be > 0 and below the lowest sensitivity "
                             f"factor {factors[0]:g} (0 turns the lowest factor's split off)")
        self.device = _check_device(device)
        self.model: LoadedModel = load_model(model_dir, folds, checkpoint, which="whole")
        if self.model.num_classes != 14:
            raise InputError(f"{model_dir}: UNet-whole must predict 14 classes (background + 13), this model "
                             f"predicts {self.model.num_classes}")
        self.patch_model = None
        if patch_model_dir is not None:
            from nnunet_liver.inference.patch_model import PatchModel

            self.patch_model = PatchModel(patch_model_dir, patch_folds, checkpoint, device=self.device)
        self.predictor = make_predictor(self.model, self.device, use_mirroring=use_mirroring)
        from nnunet_liver.nnunet_mirror import same_preprocessing

        #: UNet-patch takes UNet-whole's preprocessed image when the two preprocess alike (the bundled pair does)
        self.share_preprocessing = self.patch_model is not None and same_preprocessing(self.model,
                                                                                       self.patch_model.model)
        self.factors = factors
        self.register = bool(register)
        self.num_patches, self.seed = int(num_patches), int(seed)
        self.max_reclassify_volume_cm3, self.min_score_cm3 = float(max_reclassify_volume_cm3), float(min_score_cm3)
        self.use_mirroring = bool(use_mirroring)
        self.split = bool(split)
        self.marker_factor = marker_factor
        self.min_marker_cm3 = float(min_marker_cm3)
        self.characterizer = characterizer
        if not (np.isfinite(self.min_marker_cm3) and self.min_marker_cm3 >= 0):
            raise InputError(f"min_marker_cm3 {min_marker_cm3}: must be a finite volume >= 0 (cm3)")

    @property
    def map_factors(self) -> tuple:
        """The factors whose label maps the cascade reads: the reported ones and the marker factor."""
        return tuple(sorted(set(self.factors) | ({self.marker_factor} if self.marker_factor is not None else set())))

    @property
    def channel_names(self) -> tuple:
        return self.model.channel_names

    @property
    def file_ending(self) -> str:
        return self.model.dataset_json.get("file_ending", ".nii.gz")

    def settings(self) -> dict:
        """The settings recorded in every CASE.json."""
        recls = {"enabled": self.patch_model is not None, "num_patches": self.num_patches,
                 "max_volume_cm3": self.max_reclassify_volume_cm3, "min_score_cm3": self.min_score_cm3,
                 "seed": self.seed}
        if self.patch_model is None:
            recls["skipped_reason"] = "no patch model given (--patch-model); lesions are not reclassified"
        else:
            recls["patch_size"] = list(self.patch_model.patch_size)
            if self.patch_model.has_lesion_head:
                recls["type_rule"] = "lesion head"  # the kept lesion's type: the head's most probable type
        return {"factors": [float(f) for f in self.factors], "device": str(self.device), "register": self.register,
                "mirroring": self.use_mirroring, "split": self.split, "marker_factor": self.marker_factor,
                "min_marker_cm3": self.min_marker_cm3 if self.marker_factor is not None else None,
                "reclassification": recls}

    def models(self) -> dict:
        out = {"whole": self.model.describe(), "patch": None}
        if self.patch_model is not None:
            out["patch"] = self.patch_model.describe()
        from nnunet_liver import __version__

        out["nnunet_liver_version"] = __version__
        return out

    def detect(self, files: Union[Sequence[Optional[str]], Dict[str, Optional[str]]], case_id: str = "case"
               ) -> CaseResult:
        """Run the cascade on one case given as file paths, one per model channel (or {channel name: path}).

        A ``None`` (or absent) entry is a missing phase, allowed for IFM models only.
        """
        if isinstance(files, dict):
            unknown = set(files) - set(self.channel_names)
            if unknown:
                raise InputError(f"case {case_id}: unknown phase(s) {sorted(unknown)}; the model's channels are "
                                 f"{list(self.channel_names)}")
            files = [files.get(n) for n in self.channel_names]
        return self.detect_case(CaseFiles(case_id, list(files)))

    def predict_case(self, case: CaseFiles, factors: Optional[Sequence[float]] = None):
        """Load ``case`` and run UNet-whole: ``(LoadedCase, CaseMaps)``, the first step of :meth:`detect_case`.

        ``CaseMaps`` holds the label map of every factor of ``factors`` (default: this detector's) and 1.0, LiverMax
        and the lesion voxels' probabilities, never the full-resolution probabilities (see ``predict_maps``).
        """
        from nnunet_liver.inference.predict import predict_maps

        loaded = load_input(case, self.channel_names, allow_missing=self.model.is_ifm, register=self.register)
        factors = self.map_factors if factors is None else tuple(sorted({float(f) for f in factors}))
        return loaded, predict_maps(self.predictor, self.model, loaded.data, loaded.spacing, factors,
                                    keep_preprocessed=self.share_preprocessing)

    def detect_case(self, case: CaseFiles, prediction=None) -> CaseResult:
        """The cascade on one discovered case (see :func:`nnunet_liver.inference.inputs.discover_inputs`).

        ``prediction``: :meth:`predict_case`'s result for this case from a detector with the same UNet-whole and
        registration, computed for (at least) this detector's factors, to post-process one prediction under several
        settings (it is not modified).
        """
        from nnunet_liver.postprocessing.seg2det import instance_map, seg2det
        from nnunet_liver.postprocessing.split import split_lesions

        t0 = time.perf_counter()
        loaded, predicted = self.predict_case(case) if prediction is None else prediction
        t_predict = time.perf_counter() - t0
        maps, probabilities = predicted.maps, predicted.lesion_probabilities
        missing = [f for f in self.map_factors if f not in maps]
        if missing:
            raise ValueError(f"the prediction passed to detect_case has no label map for factors {missing}; "
                             f"compute it with predict_case(case, factors) covering {list(self.map_factors)}")
        ref = loaded.reference
        images = loaded.images_by_phase()
        shape = loaded.data.shape[1:]
        detections, reclassified, recls_results = {}, {}, {}
        rng = np.random.default_rng([self.seed, _stable_hash(loaded.case_id)])
        # markers of the lowest factor's split: the marker factor's lesions (geometry only, never reported)
        markers = None
        if self.marker_factor is not None:
            markers = [m for m in seg2det(maps[self.marker_factor], loaded.spacing)
                       if m.volume_cm3 >= self.min_marker_cm3]
        for f in self.factors:
            kw = dict(images=images, probabilities=probabilities, origin=ref.GetOrigin(), direction=ref.GetDirection())
            if self.split and f != self.factors[0]:  # keep the lowest factor's lesions apart (postprocessing.split)
                detections[f] = split_lesions(maps[f], detections[self.factors[0]], loaded.spacing, **kw)
            elif markers is not None:  # the lowest factor keeps apart what the marker factor separates
                detections[f] = split_lesions(maps[f], markers, loaded.spacing, **kw)
            else:
                detections[f] = seg2det(maps[f], loaded.spacing, **kw)
        masks = {}
        with_lesions = [f for f in self.factors if detections[f]]
        if self.patch_model is not None and with_lesions:
            from nnunet_liver.inference.patch_model import prepare_factor_masks

            shared = predicted.preprocessed if self.share_preprocessing else None
            # the case on UNet-patch's grid once, and every factor's lesion ids and liver in one resampling pass
            prepared = self.patch_model.prepare_image(loaded.data, loaded.spacing, preprocessed=shared)
            masks = prepare_factor_masks(self.patch_model, prepared,
                                         {f: instance_map(detections[f], shape) for f in with_lesions},
                                         {f: maps[f] for f in with_lesions})
        for f in self.factors:  # in factor order: the patch positions draw from rng as one factor after another
            if self.patch_model is None:
                reclassified[f], recls_results[f] = detections[f], {}
            else:
                from nnunet_liver.inference.patch_model import reclassify_on_case

                reclassified[f], recls_results[f] = reclassify_on_case(
                    self.patch_model, masks.get(f), detections[f], rng, n=self.num_patches,
                    max_volume_cm3=self.max_reclassify_volume_cm3, min_score_cm3=self.min_score_cm3)
        final, record = self._record(loaded, predicted.liver_max, detections, reclassified, recls_results,
                                     timing_s={"load_and_predict": round(t_predict, 3),
                                               "total": round(time.perf_counter() - t0, 3)})
        result = CaseResult(case_record=record, instance_map=instance_map(final, shape), lesions=final, case=loaded,
                            label_maps=maps)
        if self.characterizer is not None:  # the second stage (nnunet_liver/characterize/CHARACTERIZE.md)
            result = self.characterizer.annotate(result)
        return result

    def _record(self, loaded, livermax, detections, reclassified, recls_results, timing_s):
        """The final lesions (renumbered 1..n) and the case's :class:`CaseRecord` from the per-factor results."""
        same_ids = self._same_ids(reclassified)
        final, lesions_json = _final_lesions(reclassified[self.factors[-1]], recls_results[self.factors[-1]],
                                             same_ids)
        dropped = {factor_key(f): _dropped_lesions(detections[f], recls_results[f]) for f in self.factors}
        by_factor = {factor_key(f): {"before_reclassification": len(detections[f]),
                                     "after_reclassification": len(reclassified[f]),
                                     "dropped_detection_ids": [d["detection_id"] for d in dropped[factor_key(f)]],
                                     "dropped": dropped[factor_key(f)]}
                     for f in self.factors}
        record = CaseRecord(case=loaded.case_id, phases_present=list(loaded.phases_present),
                            phases_missing=list(loaded.phases_missing), inputs=dict(loaded.inputs),
                            geometry=geometry_record(loaded, self.channel_names[loaded.reference_channel]),
                            model=self.models(), settings=self.settings(), detections_by_factor=by_factor,
                            lesions=lesions_json, patient=self._patient(reclassified, livermax), timing_s=timing_s,
                            dicom=getattr(loaded, "dicom", None) or None)
        return final, record

    def _same_ids(self, reclassified) -> set:
        """Ids of the highest factor's lesions that the lowest factor found too ("same"); the rest are "diff"."""
        from nnunet_liver.postprocessing.match import match

        f_lo, f_hi = self.factors[0], self.factors[-1]
        if f_lo == f_hi:
            return {l.id for l in reclassified[f_hi]}
        result = match(reclassified[f_lo], reclassified[f_hi], min_ref_volume_cm3=0, min_pred_volume_cm3=0)
        return {int(p) for _, p in result.pairs}

    def _patient(self, reclassified, livermax) -> dict:
        """The patient class per factor, their consensus, its malignancy and LiverMax (computed by ``predict_maps``
        on the f = 1 label map)."""
        from nnunet_liver.postprocessing.patient import classify_patient, consensus, is_malignant_class

        class_by_factor = {factor_key(f): classify_patient(reclassified[f]) for f in self.factors}
        classes = list(class_by_factor.values())
        patient_class = classes[0]
        for c in classes[1:]:
            patient_class = consensus(patient_class, c)
        livermax = {k: float(v) for k, v in livermax.items()}
        return {"class_by_factor": class_by_factor, "class": patient_class,
                "malignant": is_malignant_class(patient_class), "livermax": livermax}


def _final_lesions(lesions, recls_results, same_ids):
    """The final lesions renumbered 1..n in order, and their CASE.json entries (``detection_id`` keeps the old id)."""
    final, lesions_json = [], []
    for new_id, les in enumerate(lesions, start=1):
        entry = les.to_dict()
        recls = recls_results.get(les.id)
        entry.update(id=new_id, detection_id=int(les.id), sensitivity="same" if les.id in same_ids else "diff",
                     reclassification=recls.to_dict() if recls is not None else None)
        if recls is not None and recls.lesion_head:  # LIDIA's lesion head: its probabilities beside the vote
            entry["type_probabilities"] = None if recls.type_probabilities is None else dict(recls.type_probabilities)
        lesions_json.append(entry)
        final.append(dataclasses.replace(les, id=new_id))
    return final, lesions_json


def _dropped_lesions(detections, recls_results) -> list:
    """What reclassification removed, for a human to look at: each dropped detection's id, type, volume, centroid,
    whole-CT score and its reclassification result (score in cm3 or why no network call was made), by id."""
    out = []
    for les in detections:
        r = recls_results.get(les.id)
        if r is None or r.kept:
            continue
        out.append({"detection_id": int(les.id), "type": les.type, "volume_cm3": float(les.volume_cm3),
                    "centroid_mm": [float(v) for v in les.centroid_mm],
                    "score": None if les.score is None else float(les.score), "reclassification": r.to_dict()})
    return out


def _stable_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode("utf-8"))


def _check_device(device: str) -> str:
    import torch

    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise InputError(f"--device {device}: use cpu, cuda or cuda:K")
    return device
