"""Small I/O helpers shared by every command: clear input errors, atomic writes, image reading, the command-line
wrapper with the package's exit codes (:func:`run_cli`).

Arrays are (z, y, x) and spacings (z, y, x) in mm everywhere, as SimpleITK's ``GetArrayFromImage`` gives them.
Atomic writes create their temporary file or folder with the permissions a plain ``open()`` or ``os.mkdir`` would
give (0666 / 0777 minus the process umask), so outputs in a shared folder are as readable as any other file.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

__all__ = ["InputError", "atomic_path", "atomic_dir", "write_json_atomic", "read_image", "spacing_zyx",
           "write_image_like", "run_cli", "console_script", "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT"]

#: exit codes of every ``nnunet-liver-*`` command: success; a step failed on valid input (an nnU-Net command, a
#: case that failed in detection, a file that could not be written); bad input (a missing or unreadable file, an
#: invalid option value: argparse's own code for a malformed command line)
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


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
    tmp = _create_unique(folder, ".tmp_", "_" + os.path.basename(final_path), _create_file)
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
    tmp = _create_unique(parent, ".tmp_" + os.path.basename(final_dir) + "_", "", lambda p: os.mkdir(p, 0o777))
    try:
        yield tmp
        if os.path.exists(final_dir):
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _create_file(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _create_unique(folder: str, prefix: str, suffix: str, create: Callable[[str], None]) -> str:
    """Create a new file or folder ``folder/prefix<random>suffix`` with ``create`` and return its path.

    Unlike ``tempfile.mkstemp``/``mkdtemp`` (mode 0600/0700), ``create`` passes the ordinary mode (0666 for files,
    0777 for folders) and the kernel applies the umask, so the renamed output has the permissions of a plain write.
    """
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name with prefix {prefix!r}")


def write_json_atomic(obj, path: str, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
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


def run_cli(prog: str, work: Callable[[], Optional[int]]) -> int:
    """Run a command's ``work`` and return the command's exit code; every ``nnunet-liver-*`` command's ``main`` ends
    here, so they all fail the same way.

    - bad input (:class:`InputError`): one line ``PROG: error: <file or case>: <problem>`` on stderr,
      :data:`EXIT_BAD_INPUT` (2, as argparse exits on a malformed command line);
    - a failed step (``RuntimeError``, or an ``OSError`` such as a full disk or a folder without write permission):
      one line, :data:`EXIT_FAILED` (1);
    - otherwise ``work``'s return value when it returns an exit code (e.g. :data:`EXIT_FAILED` when some cases
      failed and were reported), else :data:`EXIT_OK` (0).
    """
    try:
        code = work()
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    if code is None:
        return EXIT_OK
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"{prog}: the command's work returned {code!r}; run_cli expects an exit code or None")
    return code


def console_script(name: str) -> str:
    """A console script (nnU-Net's or ours) next to the running interpreter, i.e. in its venv, else ``name``
    (looked up on PATH)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name
