"""A DICOM node for the hospital: studies arrive from PACS, SEG + SR go back (``nnunet-liver-node``).

- :mod:`.config`: the node's settings file.
- :mod:`.spool`: received instances per study (atomic, deduplicated, synced) and results per run.
- :mod:`.queue`: the persistent study queue (SQLite): received, queued, running, done, failed, sent.
- :mod:`.scp`: the Storage SCP (pynetdicom): allowed peers, full-disk refusal.
- :mod:`.sender`: SEG + SR delivery by C-STORE SCU or STOW-RS, with back-off.
- :mod:`.service`: the running node (scheduler, workers, sender, restart and SIGTERM behaviour).

DICOMweb (QIDO-RS / WADO-RS / STOW-RS with dicomweb-client, credentials from a file or the environment) is
:mod:`nnunet_liver.dicom.web`, shared with ``nnunet-liver-detect --dicomweb`` (:mod:`nnunet_liver.inference.dicomweb`).
- :mod:`.cli`: ``nnunet-liver-node run | status | requeue | example-config``.

Deployment (Orthanc as the router, any PACS, systemd, what the radiologist sees): DEPLOY.md beside this file.
"""
