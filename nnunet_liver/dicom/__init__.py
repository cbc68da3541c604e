"""DICOM studies in and DICOM SEG / SR out.

- :mod:`.index`: find the studies under a folder (headers only, one case per StudyInstanceUID).
- :mod:`.series`: which series are axial CT volumes, their slice order and geometry, their pixels in HU.
- :mod:`.anatomy`, :mod:`.organs`: spine, aorta, liver, kidneys and spleen found on a few slices, and their enhancement.
- :mod:`.tags`: what the headers say about the contrast phase (times, route, agent, bolus delay, descriptions).
- :mod:`.phase`: which acquisition is which contrast phase (NC, A, V, D), with a confidence and the reasons.
- :mod:`.study`: a study -> the model's input channels (reconstruction choice, phases, the phases read one at a time).
- :mod:`.align`: a phase on the reference grid: scanner coordinates first, registration kept when it improves.
- :mod:`.export`: the final lesions as a DICOM Segmentation and a TID 1500 Structured Report (highdicom).

Writing a volume as a CT series (tests, examples) lives in :mod:`nnunet_liver.testing.dicom_writer`.
"""
