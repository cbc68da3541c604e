"""Slow: LIDIA's lesion-head variant (focal + ACL + SAM, ``_tiny``) trains through ``nnUNetv2_train`` on the phantom
patch dataset of tests/conftest.py, resumes from an interrupted checkpoint with its memory bank restored, and runs in
``nnunet-liver-detect`` with the lesion head's per-type probabilities in CASE.json."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import PATCH_ID, PATCH_NAME, run_nnunet  # noqa: E402
from test_detect import models, paint_case, write_case  # noqa: E402,F401
from test_detect_ifm import _check_outputs  # noqa: E402

pytestmark = pytest.mark.slow

TRAINER = "LesionShufflePatchTrainer_LIDIA_SAM_tiny"


def _train(dirs, extra=()):
    log = dirs.results.parent / f"train_{TRAINER}{'_c' if extra else ''}.log"
    run_nnunet(["nnUNetv2_train", PATCH_ID, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu", *extra],
               {**dirs.env, "nnUNet_n_proc_DA": "0"}, log)
    return log


def test_lidia_variant_trains_resumes_with_its_memory_bank_and_detects(nnunet_dirs, tiny_patch_model, models,
                                                                       tmp_path):
    from nnunet_liver.inference.cli import main
    from nnunet_liver.labels import LESION_NAMES
    from nnunet_liver.trainers.liver_lidia_trainers import MEMORY_BANK_KEY

    _train(nnunet_dirs)
    folder = nnunet_dirs.results / PATCH_NAME / f"{TRAINER}__nnUNetPlans__3d_fullres"
    fold = folder / "fold_0"
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    bank = final[MEMORY_BANK_KEY]
    n_old = int(bank["count"])
    assert final["trainer_name"] == TRAINER and final["current_epoch"] == 2 and n_old > 0
    assert any(k.startswith("lesion_head.") for k in final["network_weights"])
    settings = json.loads((fold / "training_settings.json").read_text(encoding="utf-8"))
    assert settings["use_sam"] is True and settings["lambda_acl"] == 0.01 and settings["focal_gamma"] == 2.0

    # an interrupted training: the epoch-1 state as checkpoint_latest.pth, no final checkpoint; --c resumes it
    final["current_epoch"] = 1
    torch.save(final, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    _train(nnunet_dirs, extra=("--c",))
    logs = sorted(fold.glob("training_log_*.txt"))
    assert any(f"lesion memory bank restored: {n_old} entries" in p.read_text(encoding="utf-8") for p in logs)
    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    new_bank = resumed[MEMORY_BANK_KEY]
    assert resumed["current_epoch"] == 2 and int(new_bank["count"]) > n_old
    # FIFO: the restored entries are the oldest, followed by the resumed epoch's (the bank is not full yet)
    assert torch.equal(new_bank["embeddings"][:n_old], bank["embeddings"][:n_old])
    assert torch.equal(new_bank["labels"][:n_old], bank["labels"][:n_old])
    assert json.loads((fold / "training_settings.json").read_text(encoding="utf-8"))["resumed_at_epochs"] == [1]

    # detection with the lesion head: UNet-whole is a rule model (test_detect.py) whose lesions are known (an HCC of
    # 2.6 cm3 and a weak lesion), so UNet-patch's network, and with it the head, sees at least the HCC
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "full", paint_case())
    assert main(["-i", str(inp), "-o", str(out), "-m", models["whole"], "--patch-model", str(folder),
                 "--factors", "1", "4"]) == 0
    rec, _ = _check_outputs(str(out), "full")
    assert rec["model"]["patch"]["lesion_head"] is True
    # every lesion the network saw has the head's probabilities, whether reclassification kept it or dropped it
    seen = [l["reclassification"] for l in rec["lesions"]] + [
        d["reclassification"] for f in rec["detections_by_factor"].values() for d in f["dropped"]]
    seen = [r for r in seen if r["num_patches"] > 0]
    assert seen
    for r in seen:
        probs = r["type_probabilities"]
        assert list(probs) == list(LESION_NAMES) and abs(sum(probs.values()) - 1) < 1e-4
    for les in rec["lesions"]:
        r = les["reclassification"]
        if r["num_patches"] == 0:
            assert les.get("type_probabilities") is None
            continue
        probs = les["type_probabilities"]
        assert r["type_probabilities"] == probs and r["type_vote"] in LESION_NAMES
        # the final-type rule: the head's most probable type
        assert les["type"] == r["type_after"] == max(LESION_NAMES, key=lambda n: (probs[n], -LESION_NAMES.index(n)))
    assert (out / "report.html").is_file()
    # the report's lesion-head table lists the final lesions (reclassification may drop all of them with this
    # untrained UNet-patch; tests/test_report.py checks the table itself)
    if any(les.get("type_probabilities") is not None for les in rec["lesions"]):
        assert "Lesion head" in (out / "report.html").read_text(encoding="utf-8")
