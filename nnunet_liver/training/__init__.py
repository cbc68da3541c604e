"""Training-stage helpers: what UNet-patch's training data is made of, outside the nnU-Net trainers.

- :mod:`~nnunet_liver.training.shuffle`: lesion shuffle, the four schemes that cut UNet-patch's training patches
  (and hard-case patches) from a liver-cropped case, on the primitives that reclassification at inference cuts its
  patches of a lesion proposal with (:mod:`nnunet_liver.postprocessing.lesion_shuffle`), so that UNet-patch is
  applied on patches made the way it was trained on.
- :mod:`~nnunet_liver.training.hard_cases`: UNet-whole's false negatives and false positives on its training cases
  (Wang et al., the cascade's hard cases), found once when the UNet-patch dataset is converted
  (``nnunet-liver-convert patches --hard-cases``) and put on nnU-Net's preprocessed grid once after planning
  (``python -m nnunet_liver.training.hard_cases -d DATASET``, :func:`nnunet_liver.nnunet_mirror.resample_seg_like`), where
  ``LesionShufflePatchTrainer`` reads them.
- :mod:`~nnunet_liver.training.warm_start`: ``python -m nnunet_liver.training.warm_start``, nnU-Net's training of
  one fold started from every weight of a checkpoint, segmentation heads included.
- :mod:`~nnunet_liver.training.settings`: the settings a trainer trained with, written beside its checkpoint
  (``fold_X/training_settings.json``) and read back from a model folder.

The nnU-Net trainer classes themselves live in ``nnunet_liver/trainers`` (the folder nnU-Net imports through
``nnUNet_extTrainer``). Training builds on the detector's output path (``nnunet_liver/postprocessing``: the lesion
rule of seg2det, the lesion-shuffle primitives, match), never the other way round.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
