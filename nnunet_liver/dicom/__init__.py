"""DICOM studies in and DICOM SEG / SR out.

- :mod:`.index`: find the studies under a folder (headers only, one case per StudyInstanceUID).
- :mod:`.series`: which series are axial CT volumes, their slice order and geometry, their pixels in HU.
- :mod:`.phase`: which acquisition is which contrast phase (NC, A, V, D), with a confidence and the reasons.
- :mod:`.study`: a study -> the model's input channels (reconstruction choice, phases, registration).
- :mod:`.export`: the final lesions as a DICOM Segmentation and a TID 1500 Structured Report (highdicom).
- :mod:`.writer`: write a volume as a CT series (tests, examples).
"""
