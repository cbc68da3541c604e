"""nnU-Net trainers of nnunet_liver, found by nnU-Net through ``nnUNet_extTrainer``::

    export nnUNet_extTrainer=$(python -c "import nnunet_liver; print(nnunet_liver.TRAINERS_DIR)")
    nnUNetv2_train DATASET 3d_fullres FOLD -tr LiverIFMTrainer

- ``LiverWholeTrainer`` (liver_trainers): 13-class whole-CT model, lesion-centred foreground oversampling.
- ``LiverIFMTrainer`` (liver_trainers): the same with the Iterative Fusion Module as first layer, per-sample
  missing-phase detection and random phase dropout; ``LiverIFMTrainer_classBalanced`` centres its lesion patches
  on a lesion type drawn first (uniform over the types), then a case holding it.
- ``LesionShufflePatchTrainer`` (liver_patch_trainer): UNet-patch on lesion-shuffle patches;
  ``LesionShufflePatchTrainer_classBalanced`` draws a lesion type first, then a case and a lesion of that type;
  ``LesionShufflePatchTrainer_presentDice`` averages the Dice term over the classes present in each batch
  (liver_losses). With hard cases prepared in ``nnUNet_preprocessed`` (``nnunet-liver-convert patches
  --hard-cases``, then ``python -m nnunet_liver.training.hard_cases``) a quarter of the patches are cut around
  UNet-whole's false negatives and false positives.
- ``LesionShufflePatchTrainer_LIDIA`` (liver_lidia_trainers): UNet-patch with a lesion-level head (liver_lesion_head)
  trained with focal loss and the asymmetric contrastive loss over a memory bank (liver_lidia_losses);
  ``_LIDIAfocal``, ``_LIDIAacl``, ``_LIDIAce`` for the ablation, ``_LIDIA_SAM`` with sharpness-aware minimisation
  (liver_sam), as Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via
  Iterative Fusion and Asymmetric Contrastive Learning", train their lesion classification.
- ``*_tiny`` (liver_tiny_trainers): tiny networks and a few iterations, for CPU tests.
- ``*_demo*`` (liver_demo_trainers): the bundled demo models' recipe; each setting a class constant of a variant.

A trainer that trains another patch size or network than nnU-Net planned (``training_configuration``) writes that
configuration into its plans under the configuration's own name, so the model folder's ``plans.json`` describes the
trained network and ``nnUNetv2_predict`` runs it as trained. Every trainer writes its settings and its start to
``fold_X/training_settings.json`` (:mod:`nnunet_liver.training.settings`); the training-stage helpers (lesion
shuffle, hard cases, warm starts) live in :mod:`nnunet_liver.training`.

nnU-Net imports every module of this folder as a top-level module, so the modules use absolute imports and
distinct names. This file is not imported by nnU-Net's finder; it imports nothing, so ``import nnunet_liver``
stays light.
"""
