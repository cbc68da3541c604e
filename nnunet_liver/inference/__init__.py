"""Inference: the detection cascade on nnU-Net's predictor (``nnunet-liver-detect``).

``LiverDetector`` runs one case in memory; ``run_folder`` runs a folder with sharding and writes the outputs.
The steps and their modules: ARCHITECTURE.md ("Data flow"); the command's reference: DETECT.md beside this file.
"""
from __future__ import annotations

__all__ = ["LiverDetector", "CaseResult", "run_folder", "RunResult", "load_model", "SCHEMA_VERSION",
           "schema_path"]


def schema_path() -> str:
    """Path of the JSON schema of ``CASE.json`` (``case_schema.json``, shipped with the package)."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "case_schema.json")


def __getattr__(name):  # lazy: importing the package must not import torch / nnU-Net
    if name in ("LiverDetector", "CaseResult", "SCHEMA_VERSION"):
        from nnunet_liver.inference import detector

        return getattr(detector, name)
    if name in ("run_folder", "RunResult"):
        from nnunet_liver.inference import runner

        return getattr(runner, name)
    if name == "load_model":
        from nnunet_liver.inference.model import load_model

        return load_model
    raise AttributeError(name)
