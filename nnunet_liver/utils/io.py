"""Small I/O helpers shared by every command: clear input errors, atomic writes, image reading.

Arrays are (z, y, x) and spacings (z, y, x) in mm everywhere, as SimpleITK's ``GetArrayFromImage`` gives them.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterator, Tuple

import numpy as np

__all__ = ["InputError", "atomic_path", "atomic_dir", "write_json_atomic", "read_image", "spacing_zyx",
           "write_image_like", "run_cli", "console_script"]


class InputError(ValueError):
    """Bad user input. The message names the file or case and the problem, on one line."""


@contextlib.contextmanager
def atomic_path(final_path: str) -> Iterator[str]:
    """Yield a temporary path in the target folder; rename it to ``final_path`` only if the block succeeds.

    The temporary name keeps the final name's extensions (``.nii.gz`` ...) so writers that infer the format from
    the name work unchanged.
    """
    folder = os.path.dirname(os.path.abspath(final_path)) or "."
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(final_path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix="_" + base, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(final_dir: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside ``final_dir``; rename it to ``final_dir`` only if the block succeeds.

    A failure removes the temporary folder, so no partial output is ever left behind.
    """
    final_dir = os.path.abspath(final_dir)
    if os.path.exists(final_dir) and not overwrite:
        raise InputError(f"{final_dir}: already exists (remove it or choose another output)")
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_" + os.path.basename(final_dir) + "_", dir=parent)
    try:
        yield tmp
        if os.path.exists(final_dir):
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(obj, path: str, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=False, default=_json_default)
            f.write("\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def spacing_zyx(image) -> Tuple[float, float, float]:
    """Spacing of a 3D SimpleITK image as (z, y, x) in mm."""
    return tuple(float(s) for s in reversed(image.GetSpacing()))


def read_image(path: str, what: str = "image"):
    """Read a 3D image with SimpleITK; return ``(array (z, y, x), spacing (z, y, x) mm, sitk.Image)``.

    Raises
    ------
    InputError
        if the file is missing, unreadable, not 3D or holds NaN/inf voxels; the message names the file.
    """
    import SimpleITK as sitk

    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} file not found")
    try:
        image = sitk.ReadImage(path)
    except Exception as e:  # SimpleITK raises RuntimeError with a multi-line message
        first = str(e).strip().splitlines()
        reason = next((l.strip() for l in first if "rror" in l or "nable" in l), first[0] if first else "")
        raise InputError(f"{path}: cannot read {what} ({reason[:200]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {what} must be a 3D single-channel image, got {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    array = sitk.GetArrayFromImage(image)
    if min(array.shape) < 2 and what != "label":
        raise InputError(f"{path}: {what} has shape {array.shape} (z, y, x); a 3D volume needs at least 2 voxels "
                         f"along every axis")
    bad = int(np.count_nonzero(~np.isfinite(array))) if np.issubdtype(array.dtype, np.floating) else 0
    bad = bad or _count_nifti_nonfinite(path)
    if bad:
        raise InputError(f"{path}: {what} holds {bad} NaN or infinite voxels")
    return array, spacing_zyx(image), image


def _count_nifti_nonfinite(path: str) -> int:
    """Number of NaN/inf voxels stored in a floating-point NIfTI file (0 for other files).

    ITK's NIfTI reader (SimpleITK 2.x) silently turns NaN into 0, so the array it returns cannot show them; nibabel
    reads the stored values. Integer files (most CT) cannot hold NaN and are not read twice.
    """
    if not path.endswith((".nii", ".nii.gz")):
        return 0
    import nibabel

    image = nibabel.load(path)
    if not np.issubdtype(image.header.get_data_dtype(), np.floating):
        return 0
    return int(np.count_nonzero(~np.isfinite(np.asanyarray(image.dataobj))))


def write_image_like(array: np.ndarray, reference, path: str) -> None:
    """Write ``array`` (z, y, x) with the geometry of the SimpleITK image ``reference``, atomically."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(array)
    out.CopyInformation(reference)
    with atomic_path(path) as tmp:
        sitk.WriteImage(out, tmp, useCompression=True)


def run_cli(prog: str, work: Callable[[], None]) -> int:
    """Run a command's ``work``; bad input (:class:`InputError`) -> one line ``PROG: error: ...`` and exit code 2, a
    failed step (``RuntimeError``) -> one line and exit code 1, success -> 0."""
    try:
        work()
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def console_script(name: str) -> str:
    """A console script (nnU-Net's or ours) next to the running interpreter, i.e. in its venv, else ``name`` for PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name
