"""Test support shipped with the package (as ``numpy.testing`` is): models whose outputs are known by construction,
and DICOM studies written from volumes.

- :mod:`.rule_model`: real nnU-Net model folders whose outputs are known (the predictor and the whole cascade with
  exactly controlled probabilities).
- :mod:`.dicom_writer`: a volume as a CT Image Storage series as a scanner writes it (compression, padding,
  signed/unsigned storage, scouts, dose reports).
- :mod:`.dicom_study`: phantoms as multi-phase DICOM studies.

Nothing here is used by detection on real data.
"""
