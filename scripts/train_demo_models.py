#!/usr/bin/env python
"""Train the demo models (``nnunet_liver/demo_models``) with nnU-Net's own commands and evaluate them.

Everything runs on the CPU (``--device cuda`` on a GPU), in a work folder outside the repository::

    python scripts/train_demo_models.py -w /work/demo_build                  # every stage, in order
    python scripts/train_demo_models.py -w /work/demo_build --stages data evaluate     # the held-out tables only

The trainers are the ``_demo`` variants of ``nnunet_liver/trainers/liver_demo_trainers.py``: every setting is a
class constant of a named variant (``--whole-trainer``, ``--patch-trainer``), and each model records the settings
it trained with in ``fold_0/training_settings.json``. The shipped models were made by a chain of warm-started runs
of these trainers (``nnunet_liver/demo_models/HISTORY.md`` lists each run with its command).

Stages:

1. ``data``        ``nnunet-liver-phantom``: TRAIN_CASES phantoms (seed TRAIN_SEED, 24 x 96 x 96 voxels at
                   6 x 4 x 4 mm, a quarter without the delayed phase,
                   lesions of MIN_LESION_CM3 = 3 cm3 and more) as ``Dataset601_DemoLiverPhantom``.
2. ``plan-whole``  ``nnunet-liver-plan -d 601``: nnU-Net's nnUNetv2_extract_fingerprint, nnUNetv2_plan_experiment,
                   the CT window (-150..250 HU) written into the plans, nnUNetv2_preprocess.
3. ``train-whole`` ``nnUNetv2_train 601 3d_fullres 0 -tr WHOLE_TRAINER -device cpu``; with ``--warm-start DIR``
                   ``python -m nnunet_liver.training.warm_start ... -init DIR/whole/fold_0/checkpoint_final.pth``
                   (every weight, segmentation heads included).
3b. ``hard-cases`` (opt-in, not among the default stages) ``nnunet-liver-detect --factors 4 --patch-model none``
                   of UNet-whole (the work folder's, or ``--models DIR``'s) on the training cases
                   -> ``WORK/hard_cases``.
4. ``patches``     ``nnunet-liver-convert patches`` -> ``Dataset602_DemoLiverPatch`` (``--hard-cases WORK/hard_cases``
                   when that folder exists: UNet-whole's FN and FP as UNet-patch's hard cases),
                   ``nnunet-liver-plan -d 602``, and with hard cases ``python -m nnunet_liver.training.hard_cases
                   -d 602`` (the maps put on the preprocessed grid, where the trainer reads them).
5. ``train-patch`` ``python -m nnunet_liver.training.warm_start 602 3d_fullres 0 -tr PATCH_TRAINER -init CKPT``
                   from UNet-whole's final weights, or those of ``--patch-init DIR`` or ``--patch-init FILE.pth`` (a
                   UNet-whole or UNet-patch checkpoint), segmentation heads included (the whole scheme's classes
                   0..7 are the patch scheme's); ``nnUNetv2_train`` from scratch with ``--patch-init scratch``.
6. ``export``      copy ``dataset.json``, ``plans.json``, ``fold_0/checkpoint_final.pth`` (optimizer state and
                   logging stripped) and ``fold_0/training_settings.json`` of both models into
                   ``nnunet_liver/demo_models/{whole,patch}``.
7. ``evaluate``    TEST_CASES phantoms with TEST_SEED (never used for training),
                   ``nnunet-liver-detect -m demo`` (test-time mirroring on, the detector's default) as
                   Base (f = 1), Base+ReCls (f = 1, UNet-patch) and High+ReCls (f = 1 and 4, UNet-patch),
                   ``nnunet-liver-evaluate`` on each; writes the cascade paper's tables
                   (lesion level per type + All + Malign, patient-level malignancy, the consensus), in
                   ``WORK/test/test_results.md`` (and ``.json``).

``--continue-training`` resumes an interrupted training of the same trainer (``nnUNetv2_train --c``). nnU-Net's
folders are ``WORK/nnUNet_raw``, ``WORK/nnUNet_preprocessed`` and ``WORK/nnUNet_results``; logs go to
``WORK/logs``. Threads: ``OMP_NUM_THREADS`` (default 2), no augmentation worker processes unless
``nnUNet_n_proc_DA`` is set, no ``torch.compile``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnunet_liver.demo import DEMO_MIN_LESION_CM3 as MIN_LESION_CM3
from nnunet_liver.demo import DEMO_SHAPE as SHAPE
from nnunet_liver.demo import DEMO_SPACING as SPACING

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "nnunet_liver" / "demo_models"

TRAIN_SEED, TRAIN_CASES = 601, 120
TEST_SEED, TEST_CASES = 20261, 30
MISSING_DELAYED = 0.25
WHOLE_ID, WHOLE_NAME, WHOLE_TRAINER = 601, "Dataset601_DemoLiverPhantom", "LiverIFMTrainer_demo"
PATCH_ID, PATCH_NAME, PATCH_TRAINER = 602, "Dataset602_DemoLiverPatch", "LesionShufflePatchTrainer_demo"
#: the trainer variants the script can train (liver_demo_trainers)
WHOLE_TRAINERS = ("LiverIFMTrainer_demo", "LiverIFMTrainer_demoUnweighted", "LiverIFMTrainer_demoUnweighted_400epochs")
PATCH_TRAINERS = ("LesionShufflePatchTrainer_demo", "LesionShufflePatchTrainer_demo_220epochs",
                  "LesionShufflePatchTrainer_demoPresentDice")
STAGES = ("data", "plan-whole", "train-whole", "hard-cases", "patches", "train-patch", "export", "evaluate")
#: the stages run without --stages (hard-cases is opt-in: the bundled UNet-patch was trained without them)
DEFAULT_STAGES = tuple(s for s in STAGES if s != "hard-cases")
#: the three models of the cascade paper's Tables II and IV: name -> nnunet-liver-detect flags
MODELS = {"Base": ["--factors", "1", "--patch-model", "none"],
          "Base+ReCls": ["--factors", "1", "--patch-model", "{patch}"],
          "High+ReCls": ["--factors", "1", "4", "--patch-model", "{patch}"]}
#: the runs when there is no UNet-patch to evaluate (``--no-patch``): Base and High (f = 1 and 4) without ReCls
MODELS_NO_PATCH = {"Base": MODELS["Base"], "High": ["--factors", "1", "4", "--patch-model", "none"]}


def environment(work: Path) -> dict:
    import nnunet_liver

    env = dict(os.environ)
    threads = env.get("OMP_NUM_THREADS", "2")
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_extTrainer=nnunet_liver.TRAINERS_DIR,
               nnUNet_compile="f", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.setdefault("nnUNet_n_proc_DA", "0")
    return env


def run(cmd, env, log: Path) -> float:
    """Run a command, its output to ``log``; raise with the log's tail on failure. Returns seconds."""
    cmd = [str(c) for c in cmd]
    print("$ " + " ".join(cmd), flush=True)
    from nnunet_liver.utils.io import console_script

    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run([console_script(cmd[0]), *cmd[1:]], env=env, stdout=f, stderr=subprocess.STDOUT)
    dt = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}), see {log}:\n{log.read_text()[-3000:]}")
    print(f"  done in {dt / 60:.1f} min (log: {log})", flush=True)
    return dt


def model_folder(work: Path, name: str, trainer: str) -> Path:
    return work / "nnUNet_results" / name / f"{trainer}__nnUNetPlans__3d_fullres"


def final_checkpoint(model: Path, fold: int = 0) -> Path:
    """An nnU-Net model folder's (or a bundled demo model's) ``fold_X/checkpoint_final.pth``."""
    return model / f"fold_{fold}" / "checkpoint_final.pth"


def export_model(src: Path, dst: Path, fold: int = 0) -> None:
    """Copy an nnU-Net model folder's dataset.json, plans.json, fold checkpoint_final.pth (without optimizer state,
    grad scaler and logging: inference needs network_weights, trainer_name, init_args and
    inference_allowed_mirroring_axes) and the fold's training_settings.json."""
    import torch

    from nnunet_liver.training.settings import SETTINGS_FILE

    ckpt = torch.load(final_checkpoint(src, fold), map_location="cpu", weights_only=False)
    keep = {k: ckpt[k] for k in ("network_weights", "trainer_name", "init_args", "inference_allowed_mirroring_axes",
                                 "current_epoch") if k in ckpt}
    keep["network_weights"] = {k: v.clone() for k, v in keep["network_weights"].items()}
    if dst.exists():
        shutil.rmtree(dst)
    (dst / f"fold_{fold}").mkdir(parents=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copy2(src / name, dst / name)
    torch.save(keep, final_checkpoint(dst, fold))
    settings = src / f"fold_{fold}" / SETTINGS_FILE
    if settings.is_file():
        shutil.copy2(settings, dst / f"fold_{fold}" / SETTINGS_FILE)


def stage_data(work, env):
    run(["nnunet-liver-phantom", "-o", work / "nnUNet_raw" / WHOLE_NAME, "-n", TRAIN_CASES, "--seed", TRAIN_SEED,
         "--shape", *SHAPE, "--spacing", *SPACING, "--missing-delayed", MISSING_DELAYED,
         "--min-lesion-volume", MIN_LESION_CM3, "-np", 2], env, work / "logs" / "data.log")


def plan(work, env, dataset_id):
    """nnU-Net's fingerprint, planning and preprocessing with the CT window (``nnunet-liver-plan``)."""
    run(["nnunet-liver-plan", "-d", dataset_id, "-np", "2", "--verify_dataset_integrity"],
        {**env, "nnUNet_n_proc_DA": "1"}, work / "logs" / f"plan_{dataset_id}.log")


def stage_hard_cases(work, env, whole: Path) -> Path:
    """UNet-whole's f = 4 proposals on its own training cases (no reclassification, no mirroring), the source of
    UNet-patch's hard cases (Wang et al., Sec. III-B): ``WORK/hard_cases``."""
    out = work / "hard_cases"
    run(["nnunet-liver-detect", "-i", work / "nnUNet_raw" / WHOLE_NAME / "imagesTr", "-o", out, "-m", whole,
         "--patch-model", "none", "--factors", "4", "--disable-tta", "--no-report", "--overwrite"], env,
        work / "logs" / "hard_cases_detect.log")
    return out


def stage_patches(work, env):
    """The UNet-patch dataset, with hard cases (put on the preprocessed grid after planning) when
    ``WORK/hard_cases`` holds UNet-whole's proposals."""
    hard = work / "hard_cases"
    run(["nnunet-liver-convert", "patches", "-i", work / "nnUNet_raw" / WHOLE_NAME,
         "-o", work / "nnUNet_raw" / PATCH_NAME, *(["--hard-cases", hard] if hard.is_dir() else [])], env,
        work / "logs" / "patches.log")
    plan(work, env, PATCH_ID)
    if hard.is_dir():
        run([sys.executable, "-m", "nnunet_liver.training.hard_cases", "-d", PATCH_ID], env,
            work / "logs" / "hard_cases_prepare.log")


def train(work, env, dataset_id, trainer, device="cpu", init=None, resume=False):
    """Fold 0 of a ``_demo`` trainer: ``nnUNetv2_train`` (``resume``: ``--c``, the run's own checkpoint), or from
    every weight of the checkpoint ``init``, heads included (``python -m nnunet_liver.training.warm_start``)."""
    if init is not None:
        cmd = [sys.executable, "-m", "nnunet_liver.training.warm_start", dataset_id, "3d_fullres", "0", "-tr", trainer,
               "-init", init, "-device", device]
    else:
        cmd = ["nnUNetv2_train", dataset_id, "3d_fullres", "0", "-tr", trainer, "-device", device,
               *(["--c"] if resume else [])]
    dt = run(cmd, env, work / "logs" / f"train_{trainer}.log")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "logs" / f"train_{trainer}.seconds").write_text(f"{dt:.0f}\n")


def warm_start(folder):
    """The UNet-whole checkpoint of a folder laid out like ``nnunet_liver/demo_models``
    (``whole/fold_0/checkpoint_final.pth``), an nnU-Net checkpoint file (``.pth``) itself, or None."""
    if folder is None:
        return None
    path = Path(folder).resolve()
    if path.suffix != ".pth":
        path = final_checkpoint(path / "whole")
    if not path.is_file():
        raise SystemExit(f"{path}: no such warm-start checkpoint")
    return path


def stage_export(work, env, with_patch=True, whole_trainer=WHOLE_TRAINER, patch_trainer=PATCH_TRAINER):
    """Copy the trained models into the package; without the patch model, a bundled ``patch/`` is removed so that
    the bundle never pairs models of different runs. A work folder without a UNet-whole of its own (a UNet-patch
    trained with ``--patch-init DIR`` only) keeps the bundled UNet-whole, which is then the one DIR must have held."""
    whole = model_folder(work, WHOLE_NAME, whole_trainer)
    if final_checkpoint(whole).is_file():
        export_model(whole, DEMO_DIR / "whole")
    elif not final_checkpoint(DEMO_DIR / "whole").is_file():
        raise SystemExit(f"{final_checkpoint(whole)}: no UNet-whole to export, and none is bundled")
    else:
        print(f"  {whole}: no UNet-whole trained here; the bundled one stays", flush=True)
    if with_patch:
        export_model(model_folder(work, PATCH_NAME, patch_trainer), DEMO_DIR / "patch")
    elif (DEMO_DIR / "patch").exists():
        shutil.rmtree(DEMO_DIR / "patch")


def stage_evaluate(work, env, whole="demo", patch="demo", num_cases=TEST_CASES, out_name="test"):
    """Test-set phantoms, the three detector runs and their evaluation; ``whole``/``patch`` are model folders
    (default: the bundled ones, ``-m demo``); ``patch=None``: Base and High only (:data:`MODELS_NO_PATCH`)."""
    from evaluate_demo_models import write_results  # scripts/evaluate_demo_models.py

    base = work / out_name
    test = base / "Dataset699_DemoLiverTest"
    if not test.exists():
        run(["nnunet-liver-phantom", "-o", test, "-n", num_cases, "--seed", TEST_SEED, "--shape", *SHAPE,
             "--spacing", *SPACING, "--missing-delayed", MISSING_DELAYED, "--min-lesion-volume", MIN_LESION_CM3],
            env, work / "logs" / "test_data.log")
    timings, dets = {}, {}
    for name, flags in (MODELS if patch else MODELS_NO_PATCH).items():
        tag = name.replace("+", "_")
        dets[name] = out = base / f"det_{tag}"
        flags = [f.format(patch=patch) for f in flags]
        # the detector's defaults otherwise, test-time mirroring included (as in the demo; MODEL_CARD.md)
        timings[name] = run(["nnunet-liver-detect", "-i", test / "imagesTr", "-o", out, "-m", whole, *flags,
                             "--overwrite"], env, work / "logs" / f"{out_name}_detect_{tag}.log")
        run(["nnunet-liver-evaluate", "-ref", test / "labelsTr", "-pred", out, "-o", out / "evaluation"], env,
            work / "logs" / f"{out_name}_evaluate_{tag}.log")
    write_results(test, dets, timings, base / "test_results.md")
    print((base / "test_results.md").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-w", "--work", default="/work/demo_build", help="work folder (outside the repository)")
    p.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=STAGES,
                   help="stages to run, in order (default: all but hard-cases)")
    p.add_argument("--device", default="cpu", help="nnUNetv2_train -device (cpu, cuda)")
    p.add_argument("--whole-trainer", default=WHOLE_TRAINER, choices=WHOLE_TRAINERS,
                   help="UNet-whole's trainer variant (liver_demo_trainers; default: %(default)s)")
    p.add_argument("--patch-trainer", default=PATCH_TRAINER, choices=PATCH_TRAINERS,
                   help="UNet-patch's trainer variant (liver_demo_trainers; default: %(default)s)")
    p.add_argument("--warm-start", type=Path, default=None, metavar="{DIR,FILE.pth}",
                   help="start UNet-whole from every weight of DIR/whole/fold_0/checkpoint_final.pth (a folder laid "
                        "out like nnunet_liver/demo_models) or of an nnU-Net checkpoint FILE.pth, segmentation heads "
                        "included (python -m nnunet_liver.training.warm_start; nnU-Net's -pretrained_weights would "
                        "re-initialise the heads)")
    p.add_argument("--continue-training", action="store_true",
                   help="resume interrupted trainings of the same trainers from their checkpoints "
                        "(nnUNetv2_train --c: weights, optimizer state and epoch counter)")
    p.add_argument("--models", type=Path, default=None, metavar="DIR",
                   help="evaluate the models in DIR (laid out like nnunet_liver/demo_models: whole/, patch/) instead "
                        "of the bundled ones; results in WORK/test_<DIR name>; the hard-cases stage takes "
                        "DIR/whole as UNet-whole (default: the work folder's)")
    p.add_argument("--no-patch", action="store_true",
                   help="export and evaluate UNet-whole alone (no UNet-patch bundled; evaluation runs Base and High "
                        "without reclassification)")
    p.add_argument("--patch-init", default="whole", metavar="{whole,scratch,DIR,FILE.pth}",
                   help="UNet-patch starts from UNet-whole's final weights in the work folder (whole), from "
                        "DIR/whole/fold_0/checkpoint_final.pth (a folder laid out like nnunet_liver/demo_models) or "
                        "from an nnU-Net checkpoint FILE.pth of a UNet-whole or a UNet-patch (e.g. the bundled "
                        "patch/fold_0/checkpoint_final.pth, to continue it with a fresh optimizer), heads included "
                        "(a UNet-whole's first eight classes are the patch scheme's), or from scratch "
                        "(default: %(default)s)")
    args = p.parse_args(argv)
    if args.continue_training and args.warm_start:
        p.error("--continue-training and --warm-start exclude each other (nnUNetv2_train --c / a fresh start)")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = environment(work)
    for stage in STAGES:
        if stage not in args.stages:
            continue
        print(f"== {stage}", flush=True)
        if stage == "data":
            stage_data(work, env)
        elif stage == "plan-whole":
            plan(work, env, WHOLE_ID)
        elif stage == "train-whole":
            train(work, env, WHOLE_ID, args.whole_trainer, args.device, warm_start(args.warm_start),
                  args.continue_training)
        elif stage == "hard-cases":
            stage_hard_cases(work, env, args.models / "whole" if args.models else
                             model_folder(work, WHOLE_NAME, args.whole_trainer))
        elif stage == "patches":
            stage_patches(work, env)
        elif stage == "train-patch":
            if args.continue_training or args.patch_init == "scratch":
                init = None
            elif args.patch_init == "whole":
                init = final_checkpoint(model_folder(work, WHOLE_NAME, args.whole_trainer))
            else:
                init = warm_start(args.patch_init)
            train(work, env, PATCH_ID, args.patch_trainer, args.device, init, args.continue_training)
        elif stage == "export":
            stage_export(work, env, with_patch=not args.no_patch, whole_trainer=args.whole_trainer,
                         patch_trainer=args.patch_trainer)
        elif stage == "evaluate":
            if args.models is None:
                stage_evaluate(work, env, patch=None if args.no_patch else "demo")
            else:
                models = args.models.resolve()
                stage_evaluate(work, env, whole=models / "whole",
                               patch=None if args.no_patch else models / "patch", out_name=f"test_{models.name}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
