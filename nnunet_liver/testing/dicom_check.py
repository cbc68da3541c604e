"""Independent readers of the DICOM SEG and SR that ``nnunet-liver-detect`` writes (tests).

- dcmqi (the QIICR tools, PyPI wheel ``dcmqi``): ``segimage2itkimage`` turns a SEG into an ITK label image and its
  segment metadata; ``tid1500reader`` turns a TID 1500 SR into JSON (measurements, tracking UIDs, segment references).
- dcmtk: ``dsrdump`` prints an SR's content tree.
- dicom3tools: ``dciodvfy`` checks an object against its IOD.

None of them shares code with highdicom or pydicom, so an object they read back as we meant it is not an artefact of
our writer's own reader. Each function returns ``None`` when its tool is not installed (the tests skip with a reason).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["tool", "dcmqi_label_map", "dcmqi_measurements", "dciodvfy", "dsrdump"]


def tool(name: str) -> Optional[str]:
    """The executable ``name`` beside the running interpreter (a venv's console scripts, e.g. dcmqi's), else on
    PATH, else None."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which(name)


def _run(args: List[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(args[0])} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def dcmqi_label_map(seg_path: str, reference, workdir: str) -> Optional[Tuple[np.ndarray, List[dict]]]:
    """dcmqi's reading of a SEG: ``(labels, segments)``.

    ``labels`` (Z, Y, X) is dcmqi's label image (segments merged, each voxel holding its segment's label id)
    resampled by nearest neighbour onto ``reference`` (a SimpleITK image: the grid of ``CASE_lesions.nii.gz``), so
    that it equals the lesion map voxel for voxel when the SEG's frames sit where they should; ``segments`` is dcmqi's
    metadata per segment (``labelID``, ``SegmentLabel``, codes, ``TrackingUniqueIdentifier`` ...).
    """
    import SimpleITK as sitk

    exe = tool("segimage2itkimage")
    if exe is None:
        return None
    os.makedirs(workdir, exist_ok=True)
    _run([exe, "--inputDICOM", seg_path, "--outputDirectory", workdir, "-t", "nii", "--mergeSegments"])
    with open(os.path.join(workdir, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    segments = [a for group in meta["segmentAttributes"] for a in group]
    images = sorted(n for n in os.listdir(workdir) if n.endswith(".nii.gz"))
    labels = np.zeros(tuple(reversed(reference.GetSize())), np.int32)
    for name in images:  # one file unless segments overlap
        image = sitk.Cast(sitk.ReadImage(os.path.join(workdir, name)), sitk.sitkInt32)
        on_grid = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
        array = sitk.GetArrayFromImage(on_grid)
        labels[array > 0] = array[array > 0]
    return labels, segments


def dcmqi_measurements(sr_path: str, workdir: str) -> Optional[dict]:
    """dcmqi's JSON of a TID 1500 SR (``Measurements``: one entry per measurement group, with ``TrackingIdentifier``,
    ``TrackingUniqueIdentifier``, ``ReferencedSegment``, ``Finding``, ``measurementItems`` ...)."""
    exe = tool("tid1500reader")
    if exe is None:
        return None
    os.makedirs(workdir, exist_ok=True)
    out = os.path.join(workdir, "sr.json")
    _run([exe, "--inputDICOM", sr_path, "--outputMetadata", out])
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def dciodvfy(path: str) -> Optional[Dict[str, List[str]]]:
    """dciodvfy's ``{"errors": [...], "warnings": [...]}`` lines for a DICOM file."""
    exe = tool("dciodvfy")
    if exe is None:
        return None
    proc = subprocess.run([exe, path], capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {"errors": [l for l in lines if l.startswith("Error")],
            "warnings": [l for l in lines if l.startswith("Warning")]}


def dsrdump(path: str) -> Optional[str]:
    """dcmtk's text dump of an SR's content tree."""
    exe = tool("dsrdump")
    if exe is None:
        return None
    return _run([exe, path]).stdout
