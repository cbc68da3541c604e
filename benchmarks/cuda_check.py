"""The CUDA pipeline in one prepared check: training, detection, benchmarks and tensor paths on a GPU, with a CPU
dry run of the same code.

    python benchmarks/cuda_check.py --device cuda --out DIR     # on a GPU machine: about 5-8 minutes on one GPU
    python benchmarks/cuda_check.py --device cpu --out DIR      # dry run: tiny sizes, a few minutes on 2 cores

Writes ``DIR/cuda_check.json`` (every check: passed / failed with its error / skipped with the reason, its figures,
seconds and time budget), ``DIR/cuda_check.md`` (the same as a readable summary) and ``DIR/cuda_check.log`` (what
was printed). Exit code 1 if any check failed, 0 otherwise. Checks, in order:

1. ``environment``: torch, CUDA and GPUs, triton, nnU-Net; with ``--device cuda`` CUDA must be available.
2. ``tensors``: ``lesion_sensitivity_masks``, ``liver_max`` and ``seg2det`` on torch tensors on the device equal
   their numpy results (probabilities painted from a phantom's label map, quantised so that exact ties occur).
3. ``bench_ifm``: ``benchmarks/bench_ifm.py`` on the device: IFM step / plain nnU-Net step (target <= 1.3) and
   the GPU memory ratio.
4. ``trainers``: phantoms with the delayed phase missing in some cases (``nnunet-liver-phantom``), nnU-Net's planning
   (``nnunet-liver-plan``), the UNet-patch dataset (``nnunet-liver-convert patches``), then the real
   ``nnUNetv2_train`` of the IFM whole-CT trainer (every fold, in parallel on a GPU) and of the lesion-shuffle
   patch trainer, and one epoch of LIDIA's lesion-head variant of UNet-patch (focal + asymmetric contrastive loss
   with SAM's two passes per step, through nnU-Net's GradScaler and gradient clipping; its memory bank must be in
   the checkpoint and its head must give per-type probabilities in ``PatchModel``; Huang et al., "LIDIA: Precise
   Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative Fusion and Asymmetric Contrastive
   Learning"), with nnU-Net's mixed precision and ``torch.compile`` as nnU-Net decides them on the device (the
   ``nnUNet_compile`` variable is left unset on CUDA, so nnU-Net's default applies; on the CPU nnU-Net never
   compiles). The checkpoints then load in the predictor (``load_model`` + ``make_predictor`` on one case,
   ``PatchModel`` on a batch of patches).
5. ``detect``: ``nnunet-liver-detect`` with the five folds and the patch model on a clinical-size phantom
   (512 x 512 x 300 voxels on CUDA), once on the device and once on the CPU: the lesion maps and the lesions must be
   identical, probability figures (lesion scores, mean probabilities, LiverMax) within ``--prob-tol``; GPU peak
   memory (``torch.cuda.max_memory_allocated`` in the detecting process) and host peak RSS of each run.
6. ``bench_detect``: ``benchmarks/bench_detect.py`` on the device with the trained models: cascade /
   ``nnUNetv2_predict`` seconds per case (target <= 1.2).
7. ``ddp``: ``nnUNetv2_train -num_gpus 2`` of the IFM trainer when two GPUs are present; skipped otherwise.

A check that fails records its error and the next one runs; one whose prerequisite failed is skipped with that
reason. On CUDA every check has a time budget (printed) at which its subprocesses are stopped, and ``--time-limit``
(default 480 s) bounds the whole run: a check that would start too close to it is skipped. The dry run enforces
neither (it reports its times), and records the ratio targets without judging them. Nothing is installed and
nothing is fetched: the package's requirements must be importable.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
STATS_PREFIX = "CUDA_CHECK_STATS "
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
WHOLE_ID, WHOLE_NAME = 941, "Dataset941_CudaCheckWhole"
PATCH_ID, PATCH_NAME = 942, "Dataset942_CudaCheckPatch"
CLINICAL_NAME = "Dataset943_CudaCheckClinical"
#: the targets: IFM training step / plain step, cascade / plain nnU-Net prediction
TARGET_IFM_RATIO, TARGET_DETECT_RATIO = 1.3, 1.2
#: JSON keys (anywhere in the path) whose numbers derive from softmax probabilities
PROBABILITY_KEYS = ("score", "mean_probability", "livermax", "probabilit")


class Skip(Exception):
    """Raised by a check that cannot run here; the message is the reason."""


class CheckFailed(Exception):
    """Raised by a check whose outcome is wrong (not a crash); the message says what."""


@dataclass
class Profile:
    """Sizes and settings of one run (``cuda``: the real check; ``cpu``: the dry run)."""
    train_cases: int
    train_shape: tuple
    whole_trainer: str
    patch_trainer: str
    lidia_trainer: str  # UNet-patch with LIDIA's lesion head, focal + ACL + SAM
    folds: int
    train_folds: int  # folds trained for real; the others are copies of fold 0 (noted in the results)
    detect_shape: tuple
    detect_spacing: tuple
    tensor_shape: tuple
    bench_ifm_args: list
    bench_detect_args: list
    bench_detect_folds: int
    time_limit_s: Optional[float]
    budgets: Dict[str, float]
    enforce_budgets: bool  # stop a check's subprocesses at its budget (CUDA); the dry run only reports the times


PROFILES = {
    # the IFM and patch trainers' demo-sized variants for 1 epoch of 50 iterations
    "cuda": Profile(train_cases=10, train_shape=(32, 128, 128), whole_trainer="LiverIFMTrainer_demo_1epoch",
                    patch_trainer="LesionShufflePatchTrainer_demo_1epoch",
                    lidia_trainer="LesionShufflePatchTrainer_LIDIA_SAM_demo_1epoch", folds=5, train_folds=5,
                    detect_shape=(300, 512, 512), detect_spacing=(1.25, 0.75, 0.75), tensor_shape=(64, 256, 256),
                    bench_ifm_args=["--patch", "64", "160", "160", "--batch", "2", "--stages", "6", "--rounds", "3",
                                    "--repeats", "3"],
                    bench_detect_args=["--cases", "2", "--shape", "64", "256", "256", "--threads", "8"],
                    bench_detect_folds=5,
                    time_limit_s=480.0,
                    budgets={"environment": 10, "tensors": 60, "trainers": 270, "ddp": 150, "detect": 200,
                             "bench_ifm": 60, "bench_detect": 150}, enforce_budgets=True),
    # the _tiny variants: 2 epochs of 5 iterations; fold 0 trained, copied into the other folds
    "cpu": Profile(train_cases=6, train_shape=(16, 48, 48), whole_trainer="LiverIFMTrainer_tiny",
                   patch_trainer="LesionShufflePatchTrainer_tiny",
                   lidia_trainer="LesionShufflePatchTrainer_LIDIA_SAM_tiny", folds=5, train_folds=1,
                   detect_shape=(24, 96, 96), detect_spacing=(2.5, 3.0, 3.0), tensor_shape=(16, 64, 64),
                   bench_ifm_args=["--patch", "16", "32", "32", "--batch", "1", "--stages", "3", "--rounds", "1",
                                   "--repeats", "1"],
                   bench_detect_args=["--cases", "1", "--shape", "16", "48", "48", "--threads", "1"],
                   bench_detect_folds=1,
                   time_limit_s=None,
                   budgets={"environment": 10, "tensors": 30, "trainers": 120, "ddp": 150, "detect": 40,
                            "bench_ifm": 20, "bench_detect": 40}, enforce_budgets=False),
}


@dataclass
class CheckResult:
    name: str
    title: str
    status: str = SKIPPED
    seconds: float = 0.0
    budget_s: float = 0.0
    figures: dict = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    error: Optional[str] = None
    reason: Optional[str] = None

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "status": self.status, "seconds": round(self.seconds, 1),
                "budget_s": self.budget_s, "figures": self.figures, "notes": self.notes, "error": self.error,
                "reason": self.reason}


# ----------------------------------------------------------------------------------------------------------------
# comparison of two detector output folders


def _is_probability_path(path: str) -> bool:
    return any(k in path.lower() for k in PROBABILITY_KEYS)


def compare_json(a, b, prob_tol: float, rel_tol: float = 1e-6, path: str = "", out: Optional[dict] = None,
                 ignore: tuple = ()) -> dict:
    """Differences between two JSON-like values.

    Numbers under a probability key (:data:`PROBABILITY_KEYS`) may differ by ``prob_tol`` (absolute); other
    numbers by ``rel_tol`` (relative, at least 1e-9 absolute); everything else must be equal. Paths listed in
    ``ignore`` (dotted, e.g. ``timing_s``) are skipped.

    Returns ``{"mismatches": [str, ...], "max_prob_diff": float}``.
    """
    out = {"mismatches": [], "max_prob_diff": 0.0} if out is None else out
    if path in ignore:
        return out
    num = (int, float)
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                if p not in ignore:
                    out["mismatches"].append(f"{p}: only in {'the first' if k in a else 'the second'}")
                continue
            compare_json(a[k], b[k], prob_tol, rel_tol, p, out, ignore)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out["mismatches"].append(f"{path}: {len(a)} vs {len(b)} entries")
        for i, (x, y) in enumerate(zip(a, b)):
            compare_json(x, y, prob_tol, rel_tol, f"{path}[{i}]", out, ignore)
    elif isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return out
        d = abs(float(a) - float(b))
        if _is_probability_path(path):
            out["max_prob_diff"] = max(out["max_prob_diff"], d)
            if not d <= prob_tol:
                out["mismatches"].append(f"{path}: {a} vs {b} (probability difference {d:.3g} > {prob_tol:g})")
        elif not d <= max(1e-9, rel_tol * max(abs(float(a)), abs(float(b)))):
            out["mismatches"].append(f"{path}: {a} vs {b}")
    elif a != b or isinstance(a, bool) != isinstance(b, bool):
        out["mismatches"].append(f"{path}: {a!r} vs {b!r}")
    return out


def compare_detect_outputs(ref_dir, test_dir, prob_tol: float) -> dict:
    """Compare two ``nnunet-liver-detect`` output folders case by case.

    ``CASE_lesions.nii.gz`` (the lesion instance map) must be identical voxel for voxel and in geometry; the lesion
    types per instance come from ``CASE.json``, which must be equal too, probability figures within ``prob_tol``
    (run timings and the device setting ignored).

    Returns ``{"ok", "cases", "differing_voxels", "lesions", "max_prob_diff", "mismatches"}``.
    """
    import numpy as np
    import SimpleITK as sitk

    ref_dir, test_dir = Path(ref_dir), Path(test_dir)
    result = {"cases": 0, "differing_voxels": 0, "lesions": 0, "max_prob_diff": 0.0, "mismatches": []}
    ref_cases = sorted(p.name[:-5] for p in ref_dir.glob("*.json"))
    test_cases = sorted(p.name[:-5] for p in test_dir.glob("*.json"))
    if ref_cases != test_cases:
        result["mismatches"].append(f"cases differ: {ref_cases} vs {test_cases}")
    if not ref_cases:
        result["mismatches"].append(f"{ref_dir}: no CASE.json")
    for case in sorted(set(ref_cases) & set(test_cases)):
        result["cases"] += 1
        images = [sitk.ReadImage(str(d / f"{case}_lesions.nii.gz")) for d in (ref_dir, test_dir)]
        a, b = (sitk.GetArrayFromImage(im) for im in images)
        for what in ("GetSpacing", "GetOrigin", "GetDirection"):
            if not np.allclose(getattr(images[0], what)(), getattr(images[1], what)(), atol=1e-6):
                result["mismatches"].append(f"{case}_lesions.nii.gz: {what[3:].lower()} differs")
        if a.shape != b.shape:
            result["mismatches"].append(f"{case}_lesions.nii.gz: shape {a.shape} vs {b.shape}")
        else:
            n = int(np.count_nonzero(a != b))
            result["differing_voxels"] += n
            if n:
                result["mismatches"].append(f"{case}_lesions.nii.gz: {n} of {a.size} voxels differ")
        ja, jb = (json.loads((d / f"{case}.json").read_text(encoding="utf-8")) for d in (ref_dir, test_dir))
        result["lesions"] += len(ja.get("lesions", []))
        diff = compare_json(ja, jb, prob_tol, ignore=("timing_s", "settings.device"))
        result["max_prob_diff"] = max(result["max_prob_diff"], diff["max_prob_diff"])
        result["mismatches"] += [f"{case}.json: {m}" for m in diff["mismatches"]]
    result["ok"] = not result["mismatches"]
    return result


# ----------------------------------------------------------------------------------------------------------------
# parsing the benchmarks' output


def parse_json_objects(text: str) -> List[dict]:
    """Every top-level JSON object printed in ``text`` (one per line or indented over several lines)."""
    objs, dec, i = [], json.JSONDecoder(), 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return objs
        try:
            obj, end = dec.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        if isinstance(obj, dict):
            objs.append(obj)
        i = end


def parse_bench_ifm(text: str) -> dict:
    """Figures of ``bench_ifm.py``'s output: its JSON if it prints one, else its text lines."""
    for obj in reversed(parse_json_objects(text)):
        if "ratio" in obj or "time_ratio" in obj:
            return obj
    out = {}
    m = re.search(r"plain ([0-9.]+) s\s+ifm ([0-9.]+) s\s+ratio ([0-9.]+)", text)
    if m:
        out.update(plain_step_s=float(m.group(1)), ifm_step_s=float(m.group(2)), ratio=float(m.group(3)))
    m = re.search(r"peak GPU memory: plain ([0-9.]+) GiB\s+ifm ([0-9.]+) GiB\s+ratio ([0-9.]+)", text)
    if m:
        out.update(plain_peak_gib=float(m.group(1)), ifm_peak_gib=float(m.group(2)),
                   memory_ratio=float(m.group(3)))
    m = re.search(r"parameters: plain ([0-9,]+)\s+ifm ([0-9,]+)", text)
    if m:
        out.update(plain_parameters=int(m.group(1).replace(",", "")), ifm_parameters=int(m.group(2).replace(",", "")))
    return out


def ratio_of(summary: dict) -> Optional[float]:
    """The figure of merit of a benchmark summary: ``ratio``, else the first numeric key naming a ratio."""
    if isinstance(summary.get("ratio"), (int, float)):
        return float(summary["ratio"])
    for k, v in summary.items():
        if "ratio" in k and "target" not in k and "memory" not in k and isinstance(v, (int, float)):
            return float(v)
    return None


# ----------------------------------------------------------------------------------------------------------------
# subprocesses


class Runner:
    """Runs commands with logs under ``work/logs`` and a deadline; keeps the output tail for error messages."""

    def __init__(self, work: Path, deadline: Optional[float], enforce_budgets: bool):
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = deadline
        self.enforce_budgets = enforce_budgets

    def remaining(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def timeout(self, budget: Optional[float]) -> Optional[float]:
        if not self.enforce_budgets:
            budget = None
        r = self.remaining()
        if r is None:
            return budget
        return max(1.0, r if budget is None else min(budget, r))

    def start(self, name: str, cmd: List[str], env: dict) -> tuple:
        log = self.logs / f"{name}.log"
        f = open(log, "w", encoding="utf-8")
        proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        return proc, f, log, time.monotonic()

    def wait_all(self, started: Dict[str, tuple], budget: Optional[float]) -> Dict[str, dict]:
        """Wait for every started process until ``budget`` seconds (and the deadline); kill the rest."""
        limit = self.timeout(budget)
        t0 = time.monotonic()
        out = {}
        while len(out) < len(started):
            for name, (proc, f, log, ts) in started.items():
                if name not in out and proc.poll() is not None:
                    out[name] = {"rc": proc.returncode, "seconds": time.monotonic() - ts, "log": log}
                    f.close()
            if len(out) < len(started):
                if limit is not None and time.monotonic() - t0 > limit:
                    for name, (proc, f, log, ts) in started.items():
                        if name not in out:
                            _kill(proc)
                            f.close()
                            out[name] = {"rc": None, "seconds": time.monotonic() - ts, "log": log,
                                         "timed_out": limit}
                    break
                time.sleep(0.5)
        return out

    def run(self, name: str, cmd: List[str], env: dict, budget: Optional[float]) -> dict:
        """Run one command; raise RuntimeError with its output's tail unless it exits 0."""
        res = self.wait_all({name: self.start(name, cmd, env)}, budget)[name]
        require_ok(name, res, cmd)
        return res


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the command's own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def tail(path: Path, n: int = 3000) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def require_ok(name: str, res: dict, cmd=None) -> None:
    if res.get("timed_out") is not None:
        raise RuntimeError(f"{name}: stopped after {res['timed_out']:.0f} s (time budget); log tail:\n"
                           f"{tail(res['log'], 1500)}")
    if res["rc"] != 0:
        what = " ".join(str(c) for c in cmd) if cmd else name
        raise RuntimeError(f"{what} exited with {res['rc']}; log tail:\n{tail(res['log'])}")


def console(name: str) -> str:
    from nnunet_liver.utils.io import console_script

    return console_script(name)


# ----------------------------------------------------------------------------------------------------------------
# the checks


class Context:
    def __init__(self, args, profile: Profile, work: Path, runner: Runner):
        self.args, self.p, self.work, self.runner = args, profile, work, runner
        self.device = args.device
        self.cuda = args.device.startswith("cuda")
        self.results: Dict[str, CheckResult] = {}
        self.whole_model: Optional[Path] = None
        self.patch_model: Optional[Path] = None
        self.clinical = None  # the background job writing the clinical-size case
        import nnunet_liver

        raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
        for d in (raw, pre, res):
            d.mkdir(parents=True, exist_ok=True)
        self.raw, self.pre, self.res = raw, pre, res
        env = dict(os.environ)
        env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res),
                   nnUNet_extTrainer=nnunet_liver.TRAINERS_DIR, PYTHONUNBUFFERED="1")
        if self.cuda:
            env.pop("nnUNet_compile", None)  # nnU-Net's default (compile on CUDA)
        else:
            env["nnUNet_compile"] = "f"  # nnU-Net never compiles on the CPU; say so explicitly
        self.env = env
        self.cpus = os.cpu_count() or 1

    def threads_env(self, threads: int, **extra) -> dict:
        t = str(max(1, int(threads)))
        return {**self.env, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, **extra}


def check_environment(ctx: Context, r: CheckResult) -> None:
    import numpy
    import torch

    import nnunet_liver

    f = r.figures
    f.update(python=sys.version.split()[0], torch=torch.__version__, numpy=numpy.__version__,
             nnunet_liver=nnunet_liver.__version__, cpu_count=ctx.cpus,
             cuda_available=torch.cuda.is_available(), cuda_version=torch.version.cuda)
    try:
        from importlib.metadata import version

        f["nnunetv2"] = version("nnunetv2")
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        f["nnunetv2"] = f"unknown ({e})"
    try:
        import triton

        f["triton"] = triton.__version__
    except ImportError:
        f["triton"] = None
    if torch.cuda.is_available():
        f["gpu_count"] = torch.cuda.device_count()
        f["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        f["gpu_memory_gib"] = [round(torch.cuda.get_device_properties(i).total_memory / 2 ** 30, 1)
                               for i in range(torch.cuda.device_count())]
    else:
        f["gpu_count"] = 0
    if ctx.cuda and not torch.cuda.is_available():
        raise CheckFailed(f"--device {ctx.device}: torch {torch.__version__} sees no CUDA device")
    if ctx.cuda and f["triton"] is None:
        r.notes.append("triton is not importable: nnU-Net's torch.compile on CUDA needs it")


def _phantom_probabilities(shape, seed: int = 0):
    """(14, Z, Y, X) float32 probabilities painted from a phantom's label map, quantised to 1/64 (exact ties)."""
    import numpy as np

    from nnunet_liver.labels import NUM_CLASSES
    from nnunet_liver.phantom import generate_case

    case = generate_case(seed, shape=shape, lesion_types=("HCC", "Meta", "Cyst", "Hem"), noise=False)
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 0.7, size=(NUM_CLASSES,) + tuple(shape)).astype(np.float32)
    np.put_along_axis(logits, case.label[None].astype(np.int64), 4.0, axis=0)
    logits -= logits.max(0, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(0, keepdims=True)
    return (np.round(p * 64) / 64).astype(np.float32), case.spacing


def check_tensors(ctx: Context, r: CheckResult) -> None:
    import numpy as np
    import torch

    from nnunet_liver.postprocessing.patient import liver_max
    from nnunet_liver.postprocessing.seg2det import seg2det
    from nnunet_liver.postprocessing.sensitivity import lesion_sensitivity_masks, scaled_argmax_reference

    p, spacing = _phantom_probabilities(ctx.p.tensor_shape)
    factors = (1.0, 2.5, 4.0)  # 2.5: a factor whose scaling can create ties (recomputed path)
    dev = torch.device(ctx.device)
    r.figures.update(shape=list(p.shape), factors=list(factors), device=str(dev))
    t = time.perf_counter()
    masks_np = lesion_sensitivity_masks(p, factors)
    r.figures["numpy_masks_s"] = round(time.perf_counter() - t, 3)
    tensor = torch.from_numpy(p).to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    t = time.perf_counter()
    masks_t = lesion_sensitivity_masks(tensor, factors)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        r.figures["masks_gpu_extra_over_probabilities"] = round(
            (torch.cuda.max_memory_allocated(dev) - base) / tensor.element_size() / tensor.numel(), 3)
    r.figures["device_masks_s"] = round(time.perf_counter() - t, 3)
    problems = []
    for f in factors:
        m_t = masks_t[f]
        if not (hasattr(m_t, "device") and m_t.device.type == dev.type):
            problems.append(f"factor {f}: the mask of a {dev.type} tensor is not a {dev.type} tensor")
        d = int(np.count_nonzero(m_t.cpu().numpy() != masks_np[f]))
        ref = int(np.count_nonzero(scaled_argmax_reference(p, f) != masks_np[f]))
        r.figures[f"differing_voxels_f{f:g}"] = d
        if d or ref:
            problems.append(f"factor {f}: {d} voxels differ from numpy, numpy differs from the reference in {ref}")
    lm_np, lm_t = liver_max(p, masks_np[1.0]), liver_max(tensor, masks_t[1.0])
    r.figures["livermax_equal"] = lm_np == lm_t
    if lm_np != lm_t:
        problems.append(f"liver_max: numpy {lm_np} vs {dev.type} {lm_t}")
    det_np = [l.to_dict() for l in seg2det(masks_np[4.0], spacing, probabilities=p)]
    det_t = [l.to_dict() for l in seg2det(masks_t[4.0], spacing, probabilities=tensor)]
    diff = compare_json(det_np, det_t, prob_tol=0.0, rel_tol=0.0)
    r.figures.update(seg2det_lesions=len(det_np), seg2det_mismatches=len(diff["mismatches"]))
    if diff["mismatches"]:
        problems.append(f"seg2det: {diff['mismatches'][:3]}")
    if not det_np:
        problems.append("seg2det found no lesion in the painted probabilities (the check would be empty)")
    del tensor, masks_t
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    if problems:
        raise CheckFailed("; ".join(problems))


def _read_case(images_dir: Path, case: str, channels: int):
    import numpy as np
    import SimpleITK as sitk

    ims = [sitk.ReadImage(str(images_dir / f"{case}_{c:04d}.nii.gz")) for c in range(channels)]
    data = np.stack([sitk.GetArrayFromImage(im).astype(np.float32) for im in ims])
    return data, tuple(reversed(ims[0].GetSpacing()))


def _training_flags(fold_dir: Path) -> dict:
    """What a finished nnU-Net training recorded: mixed precision (a GradScaler state), torch.compile (its log
    line), iterations, the last training loss."""
    import torch

    ckpt = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logs = sorted(fold_dir.glob("training_log_*.txt"))
    text = logs[-1].read_text(encoding="utf-8", errors="replace") if logs else ""
    losses = [float(x) for x in ckpt.get("logging", {}).get("train_losses", [])]
    init = ckpt.get("init_args", {})
    return {"mixed_precision": ckpt.get("grad_scaler_state") is not None,
            "torch_compile": "Using torch.compile" in text,
            "epochs": int(ckpt.get("current_epoch", 0)),
            "last_train_loss": round(losses[-1], 4) if losses else None,
            "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses),
            "device": str(init.get("device", "")) or None}


def prepare_datasets(ctx: Context, r: CheckResult, budget: float) -> None:
    """Phantoms (delayed phase missing in some cases), the patch dataset, both planned with nnunet-liver-plan."""
    run, env = ctx.runner, ctx.threads_env(max(1, min(ctx.cpus // 2, 8)), nnUNet_n_proc_DA="1")
    np_ = str(1 if ctx.cpus <= 2 else min(ctx.cpus // 2, 8))  # worker processes cost more than they give on 2 cores
    t = time.monotonic()
    whole_raw = ctx.raw / WHOLE_NAME
    shape = [str(s) for s in ctx.p.train_shape]
    run.run("phantom_train", [console("nnunet-liver-phantom"), "-o", whole_raw, "-n", ctx.p.train_cases,
                              "--shape", *shape, "--missing-delayed", "0.3", "--seed", "0", "-np", np_], env, budget)
    from nnunet_liver.phantom.dataset import TRUTH_FILE

    truth = json.loads((whole_raw / TRUTH_FILE).read_text(encoding="utf-8"))
    missing = sum(1 for c in truth["cases"].values() if c.get("missing_phases"))
    if not missing:
        r.notes.append("no training phantom misses its delayed phase (random draw); phase dropout still applies")
    r.figures["training_cases"] = ctx.p.train_cases
    r.figures["training_shape_zyx"] = list(ctx.p.train_shape)
    r.figures["cases_without_delayed_phase"] = missing
    # the patch dataset derives from the raw whole-CT one: convert it first, then plan both at once
    run.run("convert_patches", [console("nnunet-liver-convert"), "patches", "-i", whole_raw, "-o",
                                ctx.raw / PATCH_NAME], env, budget - (time.monotonic() - t))
    cmds = {f"plan_{i}": [console("nnunet-liver-plan"), "-d", i, "-np", np_, "--verify_dataset_integrity"]
            for i in (WHOLE_ID, PATCH_ID)}
    started = {name: run.start(name, cmd, env) for name, cmd in cmds.items()}
    for name, res in run.wait_all(started, budget - (time.monotonic() - t)).items():
        require_ok(name, res, cmds[name])
    for name in (WHOLE_NAME, PATCH_NAME):
        write_splits(ctx.pre / name)
    r.figures["datasets_s"] = round(time.monotonic() - t, 1)


def write_splits(preprocessed: Path) -> None:
    """nnU-Net's own 5-fold split (``generate_crossval_split``, seed 12345, as ``nnUNetTrainer.do_split``), written
    before the folds train in parallel: each would otherwise write ``splits_final.json`` while others read it."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    folder = str(preprocessed / "nnUNetPlans_3d_fullres")
    identifiers = sorted(infer_dataset_class(folder).get_identifiers(folder))
    save_json(generate_crossval_split(identifiers, seed=12345, n_splits=5), str(preprocessed / "splits_final.json"))


def start_clinical_case(ctx: Context) -> None:
    """Write the clinical-size detection case in the background (``nnunet-liver-phantom``, one case)."""
    shape = [str(s) for s in ctx.p.detect_shape]
    spacing = [str(s) for s in ctx.p.detect_spacing]
    out = ctx.work / CLINICAL_NAME
    ctx.clinical = (ctx.runner.start("phantom_clinical", [
        console("nnunet-liver-phantom"), "-o", out, "-n", "1", "--shape", *shape, "--spacing", *spacing,
        "--seed", "7", "-np", "1"], ctx.threads_env(1)), out)


def check_trainers(ctx: Context, r: CheckResult) -> None:
    import numpy as np
    import torch

    budget = r.budget_s
    t0 = time.monotonic()
    start_clinical_case(ctx)
    prepare_datasets(ctx, r, budget)
    p = ctx.p
    n_jobs = p.train_folds + 2
    threads = max(1, ctx.cpus // n_jobs)
    # data-augmentation workers shared out among the parallel runs
    da = "0" if not ctx.cuda else str(max(1, min(4, (ctx.cpus - n_jobs) // n_jobs)))
    # torch.compile's worker pool too: inductor would start one worker per core in each of the parallel trainings
    env = ctx.threads_env(threads, nnUNet_n_proc_DA=da, nnUNet_def_n_proc=str(max(1, threads)),
                          TORCHINDUCTOR_COMPILE_THREADS=str(max(1, threads)))
    dev = "cuda" if ctx.cuda else "cpu"
    jobs = {f"train_whole_fold{f}": [console("nnUNetv2_train"), WHOLE_ID, "3d_fullres", f, "-tr", p.whole_trainer,
                                     "-device", dev] for f in range(p.train_folds)}
    jobs["train_patch_fold0"] = [console("nnUNetv2_train"), PATCH_ID, "3d_fullres", "0", "-tr", p.patch_trainer,
                                 "-device", dev]
    jobs["train_lidia_fold0"] = [console("nnUNetv2_train"), PATCH_ID, "3d_fullres", "0", "-tr", p.lidia_trainer,
                                 "-device", dev]
    started = {name: ctx.runner.start(name, cmd, env) for name, cmd in jobs.items()}  # in parallel
    results = ctx.runner.wait_all(started, budget - (time.monotonic() - t0))
    errors = []
    for name, res in results.items():
        r.figures[f"{name}_s"] = round(res["seconds"], 1)
        try:
            require_ok(name, res, jobs[name])
        except RuntimeError as e:
            errors.append(str(e))
    if errors:
        raise RuntimeError("\n\n".join(errors))
    r.figures["parallel_trainings"] = n_jobs
    whole = ctx.res / WHOLE_NAME / f"{p.whole_trainer}__nnUNetPlans__3d_fullres"
    patch = ctx.res / PATCH_NAME / f"{p.patch_trainer}__nnUNetPlans__3d_fullres"
    lidia = ctx.res / PATCH_NAME / f"{p.lidia_trainer}__nnUNetPlans__3d_fullres"
    flags = {"whole_fold0": _training_flags(whole / "fold_0"), "patch_fold0": _training_flags(patch / "fold_0"),
             "lidia_fold0": _training_flags(lidia / "fold_0")}
    r.figures["training"] = flags
    for k, v in flags.items():
        if not v["losses_finite"]:
            raise CheckFailed(f"{k}: training losses are not finite: last {v['last_train_loss']}")
        if ctx.cuda and not v["mixed_precision"]:
            raise CheckFailed(f"{k}: no GradScaler state in the checkpoint: nnU-Net did not train with mixed "
                              "precision on CUDA")
        if ctx.cuda and not v["torch_compile"]:
            r.notes.append(f"{k}: nnU-Net did not use torch.compile (its log has no 'Using torch.compile')")
    for f in range(p.train_folds, p.folds):  # the dry run copies fold 0 into the remaining folds
        shutil.copytree(whole / "fold_0", whole / f"fold_{f}", dirs_exist_ok=True)
    if p.folds > p.train_folds:
        r.notes.append(f"folds {p.train_folds}..{p.folds - 1} of {p.whole_trainer} are copies of fold 0 (dry run: "
                       f"only {p.train_folds} fold(s) trained)")
    r.figures["folds"] = p.folds
    r.figures["folds_trained"] = p.train_folds

    # the checkpoints in the predictor
    from nnunet_liver.inference.model import load_model, make_predictor
    from nnunet_liver.inference.patch_model import PatchModel
    from nnunet_liver.inference.predict import predict_probabilities

    t = time.perf_counter()
    model = load_model(str(whole), folds=list(range(p.folds)))
    predictor = make_predictor(model, ctx.device, use_mirroring=False)
    data, spacing = _read_case(ctx.raw / WHOLE_NAME / "imagesTr", "phantom_000", len(model.channel_names))
    probs = predict_probabilities(predictor, model, data, spacing)
    if probs.shape != (model.num_classes,) + data.shape[1:] or not np.isfinite(probs).all():
        raise CheckFailed(f"predictor: probabilities of shape {probs.shape} (finite: {np.isfinite(probs).all()}), "
                          f"expected {(model.num_classes,) + data.shape[1:]}")
    sum_err = float(np.abs(probs.sum(0) - 1).max())
    if sum_err > 1e-3:
        raise CheckFailed(f"predictor: probabilities do not sum to 1 (max error {sum_err:.3g})")
    pm = PatchModel(str(patch), [0], device=ctx.device)
    x = np.random.default_rng(0).normal(size=(2, len(pm.model.channel_names), *pm.patch_size)).astype(np.float32)
    labels = pm.predict_patches(x)
    if labels.shape != (2, *pm.patch_size):
        raise CheckFailed(f"PatchModel: labels of shape {labels.shape}, expected {(2, *pm.patch_size)}")
    r.figures["lidia"] = check_lidia_model(lidia, ctx.device)
    r.figures.update(predictor_load_and_predict_s=round(time.perf_counter() - t, 2),
                     predictor_probability_sum_error=sum_err, whole_is_ifm=model.is_ifm,
                     patch_size=list(pm.patch_size))
    del predictor, model, pm
    if ctx.cuda:
        torch.cuda.empty_cache()
    ctx.whole_model, ctx.patch_model = whole, patch


def check_lidia_model(folder: Path, device: str) -> dict:
    """The LIDIA variant's model: its memory bank in the checkpoint, SAM recorded in its settings, its lesion head's
    per-type probabilities in ``PatchModel`` (finite, summing to 1) on a batch of patches with a painted lesion."""
    import numpy as np
    import torch

    from nnunet_liver.inference.patch_model import PatchModel
    from nnunet_liver.trainers.liver_lidia_trainers import MEMORY_BANK_KEY
    from nnunet_liver.training.settings import read_training_settings

    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    bank = ckpt.get(MEMORY_BANK_KEY)
    if bank is None or int(bank["count"]) == 0:
        raise CheckFailed(f"{folder.name}: no memory bank entries in checkpoint_final.pth")
    settings = read_training_settings(str(folder), 0)
    if not settings.get("use_sam"):
        raise CheckFailed(f"{folder.name}: training_settings.json does not record SAM")
    pm = PatchModel(str(folder), [0], device=device)
    if not pm.has_lesion_head:
        raise CheckFailed(f"{folder.name}: the loaded UNet-patch has no lesion head")
    patches = np.random.default_rng(1).normal(size=(2, len(pm.model.channel_names), *pm.patch_size))
    masks = np.zeros((len(patches), *pm.patch_size), bool)
    c = [s // 2 for s in pm.patch_size]
    masks[:, c[0] - 1:c[0] + 1, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = True
    _, probs = pm.predict_patches(patches, masks)
    if probs is None or not np.isfinite(probs).all() or abs(float(probs.sum()) - 1) > 1e-3:
        raise CheckFailed(f"{folder.name}: lesion head probabilities {probs} are not a distribution")
    return {"memory_bank_entries": int(bank["count"]), "use_sam": True,
            "head_probabilities": [round(float(v), 4) for v in probs]}


def check_ddp(ctx: Context, r: CheckResult) -> None:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    r.figures["gpu_count"] = n
    if not ctx.cuda or n < 2:
        raise Skip(f"two-GPU DDP (nnUNetv2_train -num_gpus 2) needs two CUDA GPUs; this machine has {n}")
    if ctx.whole_model is None:
        raise Skip("needs the trainers check's planned dataset, which did not finish")
    env = ctx.threads_env(max(1, ctx.cpus // 2), nnUNet_n_proc_DA="2")
    cmd = [console("nnUNetv2_train"), WHOLE_ID, "3d_fullres", "all", "-tr", ctx.p.whole_trainer, "-num_gpus", "2"]
    res = ctx.runner.run("train_whole_ddp", cmd, env, r.budget_s)
    flags = _training_flags(ctx.whole_model / "fold_all")
    r.figures.update(seconds=round(res["seconds"], 1), training=flags)
    if not flags["losses_finite"]:
        raise CheckFailed(f"DDP training losses are not finite: last {flags['last_train_loss']}")


def _child_stats(log: Path) -> dict:
    for line in reversed(tail(log, 20000).splitlines()):
        if line.startswith(STATS_PREFIX):
            return json.loads(line[len(STATS_PREFIX):])
    return {}


def check_detect(ctx: Context, r: CheckResult) -> None:
    if ctx.whole_model is None or ctx.patch_model is None:
        raise Skip("needs the models of the trainers check, which did not finish")
    t0 = time.monotonic()
    if ctx.clinical is None:
        start_clinical_case(ctx)
    job, out = ctx.clinical
    t_wait = time.monotonic()
    res = ctx.runner.wait_all({"phantom_clinical": job}, r.budget_s)["phantom_clinical"]
    require_ok("phantom_clinical", res)
    images = out / "imagesTr"
    r.figures.update(case_shape_zyx=list(ctx.p.detect_shape), case_spacing_zyx_mm=list(ctx.p.detect_spacing),
                     case_wait_s=round(time.monotonic() - t_wait, 1), folds=ctx.p.folds, prob_tol=ctx.args.prob_tol,
                     test_time_mirroring=False, report_html=False)
    common = ["-i", images, "-m", ctx.whole_model, "-f", *[str(k) for k in range(ctx.p.folds)],
              "--patch-model", ctx.patch_model, "--disable-tta", "--no-report", "--overwrite"]
    runs = {"device": ctx.device, "cpu": "cpu"}
    cmds = {name: [sys.executable, str(Path(__file__).resolve()), "--child-detect", "--", *common, "-o",
                   ctx.work / f"detect_{name}", "--device", device] for name, device in runs.items()}
    env = ctx.threads_env(max(1, ctx.cpus // 2))  # both runs at once, the CPU shared out
    started = {name: ctx.runner.start(f"detect_{name}", cmd, env) for name, cmd in cmds.items()}
    results = ctx.runner.wait_all(started, r.budget_s - (time.monotonic() - t0))
    for name, res in results.items():
        require_ok(f"detect_{name}", res, cmds[name])
        stats = _child_stats(res["log"])
        r.figures[f"{name}_run"] = {"device": runs[name], "seconds": round(res["seconds"], 1), **stats}
    cmp = compare_detect_outputs(ctx.work / "detect_cpu", ctx.work / "detect_device", ctx.args.prob_tol)
    r.figures.update(differing_voxels=cmp["differing_voxels"], lesions=cmp["lesions"],
                     max_probability_difference=cmp["max_prob_diff"], mismatches=cmp["mismatches"][:20])
    if not ctx.cuda:
        r.notes.append("dry run: both runs are on the CPU, so the comparison only exercises the code")
    if not cmp["ok"]:
        raise CheckFailed(f"the {ctx.device} outputs differ from the CPU outputs: {len(cmp['mismatches'])} "
                          f"mismatches, first: {cmp['mismatches'][:3]}")


def _bench_options(script: Path) -> str:
    """The benchmark's source text: its command-line options change as the benchmarks evolve, and only the options
    it defines are passed (reading the source costs nothing, ``--help`` would import torch)."""
    return script.read_text(encoding="utf-8")


def _known_options(source: str, args: List[str]) -> List[str]:
    """``args`` (``--option value ...``) without the options that ``source`` does not define."""
    kept, i = [], 0
    while i < len(args):
        j = i + 1
        while j < len(args) and not args[j].startswith("--"):
            j += 1
        if f'"{args[i]}"' in source:
            kept += args[i:j]
        i = j
    return kept


def _judge_ratio(ctx: Context, r: CheckResult, ratio: Optional[float], target: float, what: str, log: Path) -> None:
    r.figures.update(ratio=ratio, target=target)
    if ratio is None:
        raise CheckFailed(f"no ratio in the benchmark's output: {tail(log, 800)}")
    r.figures["target_met"] = ratio <= target
    if not ctx.cuda:
        r.notes.append("dry run: the target is judged on CUDA only")
    elif ratio > target:
        raise CheckFailed(f"{what} ratio {ratio:.3f} > target {target}")


def check_bench_ifm(ctx: Context, r: CheckResult) -> None:
    script = HERE / "bench_ifm.py"
    threads = str(min(ctx.cpus, 8))
    cmd = [sys.executable, script, "--device", ctx.device,
           *_known_options(_bench_options(script), [*ctx.p.bench_ifm_args, "--threads", threads])]
    res = ctx.runner.run("bench_ifm", cmd, ctx.threads_env(min(ctx.cpus, 8)), r.budget_s)
    figures = parse_bench_ifm(tail(res["log"], 20000))
    r.figures.update(command=" ".join(str(c) for c in cmd[1:]), seconds=round(res["seconds"], 1), **figures)
    _judge_ratio(ctx, r, ratio_of(figures), TARGET_IFM_RATIO, "IFM step / plain step", res["log"])


def check_bench_detect(ctx: Context, r: CheckResult) -> None:
    if ctx.whole_model is None:
        raise Skip("needs the models of the trainers check, which did not finish")
    script = HERE / "bench_detect.py"
    source = _bench_options(script)
    json_out = ctx.work / "bench_detect.json"
    cmd = [sys.executable, script, "--device", ctx.device, *_known_options(source, ctx.p.bench_detect_args)]
    if '"--model"' in source:
        cmd += ["--model", ctx.whole_model, "-f", *[str(k) for k in range(ctx.p.bench_detect_folds)]]
    if '"--patch-model"' in source and ctx.patch_model is not None:
        cmd += ["--patch-model", ctx.patch_model]
    if '"--json"' in source:
        cmd += ["--json", json_out]
    if '"--work"' in source:
        cmd += ["--work", ctx.work / "bench_detect_work"]
    res = ctx.runner.run("bench_detect", cmd, ctx.threads_env(min(ctx.cpus, 8)), r.budget_s)
    if json_out.is_file():
        summary = json.loads(json_out.read_text(encoding="utf-8"))
    else:
        objs = [o for o in parse_json_objects(tail(res["log"], 50000)) if ratio_of(o) is not None]
        summary = objs[-1] if objs else {}
    r.figures.update(command=" ".join(str(c) for c in cmd[1:]), seconds=round(res["seconds"], 1),
                     summary=summary)
    _judge_ratio(ctx, r, ratio_of(summary), TARGET_DETECT_RATIO, "cascade / nnUNetv2_predict", res["log"])


CHECKS: List[tuple] = [
    ("environment", "torch, CUDA and nnU-Net versions; the device is usable", check_environment),
    ("tensors", "sensitivity masks, LiverMax and seg2det on device tensors equal numpy", check_tensors),
    ("bench_ifm", "bench_ifm.py: IFM step / plain step (target <= 1.3), GPU memory", check_bench_ifm),
    ("trainers", "nnUNetv2_train of the IFM and patch trainers; checkpoints load in the predictor", check_trainers),
    ("detect", "nnunet-liver-detect on a clinical-size case: device vs CPU outputs, peak memory", check_detect),
    ("bench_detect", "bench_detect.py: cascade / nnUNetv2_predict (target <= 1.2)", check_bench_detect),
    ("ddp", "two-GPU DDP training (nnUNetv2_train -num_gpus 2)", check_ddp),
]
#: a check is skipped rather than started when less than this is left of --time-limit (seconds)
MIN_START_S = {"environment": 0, "tensors": 10, "bench_ifm": 20, "trainers": 90, "detect": 60, "bench_detect": 45,
               "ddp": 60}


# ----------------------------------------------------------------------------------------------------------------
# report


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def write_markdown(report: dict, path: Path) -> None:
    lines = [f"# CUDA check ({report['device']}{', dry run' if report['dry_run'] else ''})", "",
             f"Started {report['started_utc']}, {report['seconds']:.0f} s in all"
             + (f" (time limit {report['time_limit_s']:.0f} s)" if report["time_limit_s"] else "") + ". "
             f"{report['summary']['passed']} passed, {report['summary']['failed']} failed, "
             f"{report['summary']['skipped']} skipped.", "",
             "| check | status | seconds / budget | what |", "|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['name']} | **{c['status']}** | {c['seconds']:.0f} / {c['budget_s']:.0f} | {c['title']} |")
    for c in report["checks"]:
        lines += ["", f"## {c['name']}: {c['status']}", "", c["title"] + "."]
        if c["reason"]:
            lines += ["", f"Skipped: {c['reason']}"]
        if c["error"]:
            lines += ["", "Error:", "", "```", c["error"][:6000], "```"]
        if c["figures"]:
            lines += [""] + [f"- {k}: {_fmt(v)}" for k, v in c["figures"].items()]
        if c["notes"]:
            lines += [""] + [f"- note: {n}" for n in c["notes"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)


# ----------------------------------------------------------------------------------------------------------------


def child_detect(argv: List[str]) -> int:
    """Run ``nnunet-liver-detect`` (its console entry point) in this process, then print its peak memory."""
    from nnunet_liver.inference.cli import main

    rc = main(argv)
    stats = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        stats["peak_gpu_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        stats["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2 ** 20, 1)
    print(STATS_PREFIX + json.dumps(stats), flush=True)
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the dry run with tiny sizes)")
    p.add_argument("--out", required=True, help="folder for cuda_check.json, cuda_check.md and cuda_check.log")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed at the end)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (datasets, models, logs)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for the whole run (default: 480 on CUDA, none on the CPU); 0 = none")
    p.add_argument("--prob-tol", type=float, default=5e-3,
                   help="largest allowed difference of probability figures between the device and the CPU run "
                        "(nnU-Net predicts with fp16 autocast on CUDA, fp32 on the CPU; default: %(default)s)")
    p.add_argument("--whole-trainer", default=None,
                   help="UNet-whole trainer (default: LiverIFMTrainer_demo_1epoch on CUDA, LiverIFMTrainer_tiny on "
                        "the CPU)")
    p.add_argument("--patch-trainer", default=None,
                   help="UNet-patch trainer (default: LesionShufflePatchTrainer_demo_1epoch on CUDA, _tiny on the CPU)")
    p.add_argument("--only", nargs="+", default=None, choices=[c[0] for c in CHECKS],
                   help="run only these checks (with those they need)")
    p.add_argument("--child-detect", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-detect":
        return child_detect(argv[2:] if len(argv) > 1 and argv[1] == "--" else argv[1:])
    args = build_parser().parse_args(argv)
    profile = dataclasses.replace(PROFILES["cuda" if args.device.startswith("cuda") else "cpu"])
    profile.whole_trainer = args.whole_trainer or profile.whole_trainer
    profile.patch_trainer = args.patch_trainer or profile.patch_trainer
    limit = profile.time_limit_s if args.time_limit is None else (args.time_limit or None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "cuda_check.log", "w", encoding="utf-8")
    stdout = sys.stdout
    sys.stdout = _Tee(stdout, log_file)
    t_start = time.monotonic()
    deadline = None if limit is None else t_start + limit
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cuda_check_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(min(os.cpu_count() or 1, 8)))
    report = {"tool": "benchmarks/cuda_check.py", "device": args.device, "dry_run": not args.device.startswith("cuda"),
              "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
              "time_limit_s": limit, "prob_tol": args.prob_tol, "argv": argv, "checks": []}
    ctx = None
    try:
        ctx = Context(args, profile, work, Runner(work, deadline, enforce_budgets=profile.enforce_budgets))
        wanted = set(args.only or [c[0] for c in CHECKS])
        if args.only:
            wanted |= {"environment"}
            if wanted & {"detect", "bench_detect", "ddp"}:
                wanted.add("trainers")
        for name, title, fn in CHECKS:
            r = CheckResult(name, title, budget_s=profile.budgets[name])
            ctx.results[name] = r
            remaining = ctx.runner.remaining()
            print(f"[cuda_check] {name}: {title} (budget {r.budget_s:.0f} s"
                  + (f", {remaining:.0f} s left of the time limit)" if remaining is not None else ")"), flush=True)
            t = time.monotonic()
            if name not in wanted:
                r.reason = "not selected (--only)"
            elif name != "environment" and ctx.results["environment"].status == FAILED:
                r.reason = f"the environment check failed: {ctx.results['environment'].error}"
            elif remaining is not None and remaining < max(5, MIN_START_S[name]):
                r.reason = (f"time limit: {max(0, remaining):.0f} s left of --time-limit {limit:.0f} s, the check "
                            f"needs about {MIN_START_S[name]} s at least")
            else:
                try:
                    with contextlib.redirect_stderr(sys.stdout):
                        fn(ctx, r)
                    r.status = PASSED
                except Skip as e:
                    r.status, r.reason = SKIPPED, str(e)
                except CheckFailed as e:
                    r.status, r.error = FAILED, str(e)
                except Exception as e:  # noqa: BLE001 - a failing check is recorded and the next one runs
                    r.status = FAILED
                    r.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
            r.seconds = time.monotonic() - t
            msg = r.error.splitlines()[0][:300] if r.error else (r.reason or "")
            print(f"[cuda_check] {name}: {r.status} in {r.seconds:.1f} s (budget {r.budget_s:.0f} s)"
                  + (f": {msg}" if msg else ""), flush=True)
            report["checks"].append(r.to_dict())
    finally:
        if ctx is not None and ctx.clinical is not None and ctx.clinical[0][0].poll() is None:
            _kill(ctx.clinical[0][0])
        report["seconds"] = round(time.monotonic() - t_start, 1)
        statuses = [c["status"] for c in report["checks"]]
        report["summary"] = {s: statuses.count(s) for s in (PASSED, FAILED, SKIPPED)}
        report["work"] = str(work) if (args.keep_work or args.work) else None
        (out / "cuda_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        write_markdown(report, out / "cuda_check.md")
        print(f"[cuda_check] {report['summary']} in {report['seconds']:.0f} s -> {out / 'cuda_check.json'}, "
              f"{out / 'cuda_check.md'}", flush=True)
        sys.stdout = stdout
        log_file.close()
        if not (args.keep_work or args.work):
            shutil.rmtree(work, ignore_errors=True)
    return 1 if report["summary"][FAILED] else 0


if __name__ == "__main__":
    sys.exit(main())
