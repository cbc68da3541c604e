"""``benchmarks/cuda_check.py``: its comparison of two detector outputs catches every kind of difference, its parsers
read the benchmarks' output, and its CPU dry run (the whole check on tiny sizes) passes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cuda_check  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_check.py"


def _record():
    return {"case": "c1", "timing_s": {"total": 1.0}, "settings": {"device": "cpu", "factors": [1.0, 4.0]},
            "lesions": [{"id": 1, "type": "HCC", "label": 1, "volume_cm3": 2.5, "score": 0.91,
                         "mean_probability": {"HCC": 0.8, "Cyst": 0.1}, "bbox": [[1, 3], [2, 5], [2, 6]]}],
            "patient": {"class": "HCC", "livermax": {"HCC": 0.97, "Cyst": 0.2}}}


def _write_outputs(folder: Path, record: dict, lesion_map: np.ndarray, spacing=(0.8, 0.8, 2.5)):
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    (folder / f"{record['case']}.json").write_text(json.dumps(record), encoding="utf-8")
    im = sitk.GetImageFromArray(lesion_map)
    im.SetSpacing(spacing)
    sitk.WriteImage(im, str(folder / f"{record['case']}_lesions.nii.gz"))


def _lesion_map():
    m = np.zeros((6, 8, 8), np.uint16)
    m[1:3, 2:5, 2:6] = 1
    return m


def test_identical_outputs_compare_equal_timings_and_device_ignored(tmp_path):
    a, b = _record(), _record()
    b["timing_s"]["total"] = 9.0
    b["settings"]["device"] = "cuda"
    b["lesions"][0]["score"] += 1e-4  # within the probability tolerance
    _write_outputs(tmp_path / "a", a, _lesion_map())
    _write_outputs(tmp_path / "b", b, _lesion_map())
    res = cuda_check.compare_detect_outputs(tmp_path / "a", tmp_path / "b", prob_tol=5e-3)
    assert res["ok"], res["mismatches"]
    assert res["cases"] == 1 and res["lesions"] == 1 and res["differing_voxels"] == 0
    assert res["max_prob_diff"] == pytest.approx(1e-4, abs=1e-9)


@pytest.mark.parametrize("change, expect", [
    (lambda r, m: m.__setitem__((4, 0, 0), 2), "1 of 384 voxels differ"),
    (lambda r, m: r["lesions"][0].__setitem__("type", "Cyst"), "lesions[0].type"),
    (lambda r, m: r["lesions"][0].__setitem__("volume_cm3", 2.6), "lesions[0].volume_cm3"),
    (lambda r, m: r["lesions"][0]["mean_probability"].__setitem__("HCC", 0.81), "mean_probability.HCC"),
    (lambda r, m: r["patient"]["livermax"].__setitem__("HCC", 0.9), "livermax.HCC"),
    (lambda r, m: r["lesions"].append(dict(r["lesions"][0], id=2)), "lesions: 1 vs 2 entries"),
    (lambda r, m: r["patient"].pop("class"), "patient.class: only in the first"),
])
def test_every_kind_of_difference_is_reported(tmp_path, change, expect):
    a, b = _record(), _record()
    ma, mb = _lesion_map(), _lesion_map()
    change(b, mb)
    _write_outputs(tmp_path / "a", a, ma)
    _write_outputs(tmp_path / "b", b, mb)
    res = cuda_check.compare_detect_outputs(tmp_path / "a", tmp_path / "b", prob_tol=5e-3)
    assert not res["ok"]
    assert any(expect in m for m in res["mismatches"]), res["mismatches"]


def test_geometry_and_missing_cases_are_reported(tmp_path):
    _write_outputs(tmp_path / "a", _record(), _lesion_map())
    _write_outputs(tmp_path / "b", _record(), _lesion_map(), spacing=(0.8, 0.8, 5.0))
    res = cuda_check.compare_detect_outputs(tmp_path / "a", tmp_path / "b", prob_tol=5e-3)
    assert any("spacing differs" in m for m in res["mismatches"])
    (tmp_path / "c").mkdir()
    res = cuda_check.compare_detect_outputs(tmp_path / "a", tmp_path / "c", prob_tol=5e-3)
    assert not res["ok"] and res["cases"] == 0 and "cases differ" in res["mismatches"][0]


def test_compare_json_tolerances():
    assert cuda_check.compare_json({"v": 1.0}, {"v": 1.0 + 1e-9}, 0.0)["mismatches"] == []
    assert cuda_check.compare_json({"v": 1.0}, {"v": 1.001}, 0.0)["mismatches"] == ["v: 1.0 vs 1.001"]
    assert cuda_check.compare_json({"score": 0.5}, {"score": 0.504}, 5e-3)["mismatches"] == []
    assert cuda_check.compare_json({"score": 0.5}, {"score": 0.51}, 5e-3)["mismatches"]
    assert cuda_check.compare_json({"a": True}, {"a": 1}, 0.0)["mismatches"]  # a bool is not a number
    assert cuda_check.compare_json([float("nan")], [float("nan")], 0.0)["mismatches"] == []


def test_benchmark_output_parsers():
    text = ("device=cuda arch=PlainConvUNet patch=(64, 160, 160) batch=2 phases=4 stages=6 threads=8 ...\n"
            "parameters: plain 31,195,830  ifm 31,201,910  (+6,080)\n"
            "train step (min of 3 x 3): plain 0.120 s  ifm 0.131 s  ratio 1.092 (target <= 1.3); medians "
            "0.121 s / 0.133 s\n"
            "peak GPU memory: plain 7.10 GiB  ifm 7.42 GiB  ratio 1.045\n")
    f = cuda_check.parse_bench_ifm(text)
    assert f == {"plain_step_s": 0.12, "ifm_step_s": 0.131, "ratio": 1.092, "plain_peak_gib": 7.1,
                 "ifm_peak_gib": 7.42, "memory_ratio": 1.045, "plain_parameters": 31195830,
                 "ifm_parameters": 31201910}
    out = 'log line {not json}\n{\n  "device": "cuda",\n  "ratio": 1.1,\n  "nested": {"a": 1}\n}\ntail'
    objs = cuda_check.parse_json_objects(out)
    assert objs == [{"device": "cuda", "ratio": 1.1, "nested": {"a": 1}}]
    assert cuda_check.ratio_of(objs[0]) == 1.1
    assert cuda_check.ratio_of({"target_ratio": 1.5, "cascade_over_plain_ratio": 1.3}) == 1.3
    assert cuda_check.ratio_of({"device": "cpu"}) is None
    source = 'p.add_argument("--cases", type=int)\np.add_argument("--shape", nargs=3)'
    args = ["--cases", "2", "--shape", "64", "256", "256", "--threads", "8", "--verbose"]
    assert cuda_check._known_options(source, args) == ["--cases", "2", "--shape", "64", "256", "256"]


def test_markdown_summary_lists_every_check(tmp_path):
    checks = [cuda_check.CheckResult("a", "first", status="passed", figures={"x": 1.23456}).to_dict(),
              cuda_check.CheckResult("b", "second", status="failed", error="Boom").to_dict(),
              cuda_check.CheckResult("c", "third", reason="needs two GPUs").to_dict()]
    report = {"device": "cuda", "dry_run": False, "started_utc": "now", "seconds": 12.0, "time_limit_s": 480,
              "summary": {"passed": 1, "failed": 1, "skipped": 1}, "checks": checks}
    cuda_check.write_markdown(report, tmp_path / "s.md")
    text = (tmp_path / "s.md").read_text(encoding="utf-8")
    assert "| a | **passed** |" in text and "| b | **failed** |" in text and "| c | **skipped** |" in text
    assert "Boom" in text and "Skipped: needs two GPUs" in text and "- x: 1.235" in text


def _tensor_ctx(device):
    from types import SimpleNamespace

    return SimpleNamespace(device=device, p=SimpleNamespace(tensor_shape=(8, 48, 48)))


def test_tensor_check_passes_on_cpu_tensors_and_catches_a_different_mask(monkeypatch):
    import nnunet_liver.postprocessing.sensitivity as sensitivity

    r = cuda_check.CheckResult("tensors", "t")
    cuda_check.check_tensors(_tensor_ctx("cpu"), r)
    assert r.figures["seg2det_lesions"] > 0 and r.figures["differing_voxels_f4"] == 0

    original = sensitivity.lesion_sensitivity_masks

    def one_voxel_off(probabilities, factors=(1.0, 4.0)):
        masks = original(probabilities, factors)
        if hasattr(probabilities, "detach"):  # the torch path only
            masks[4.0][0, 0, 0] = 1 - masks[4.0][0, 0, 0].clamp(max=1)
        return masks

    monkeypatch.setattr(sensitivity, "lesion_sensitivity_masks", one_voxel_off)
    r = cuda_check.CheckResult("tensors", "t")
    with pytest.raises(cuda_check.CheckFailed, match="factor 4.0: 1 voxels differ from numpy"):
        cuda_check.check_tensors(_tensor_ctx("cpu"), r)


@pytest.mark.gpu
def test_tensor_check_on_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    r = cuda_check.CheckResult("tensors", "t")
    cuda_check.check_tensors(_tensor_ctx("cuda"), r)
    assert r.figures["livermax_equal"] and r.figures["seg2det_mismatches"] == 0


@pytest.mark.slow
def test_cpu_dry_run(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out),
                           "--work", str(tmp_path / "work")], env=env, capture_output=True, text=True)
    report = json.loads((out / "cuda_check.json").read_text(encoding="utf-8"))
    checks = {c["name"]: c for c in report["checks"]}
    failed = {k: c["error"] for k, c in checks.items() if c["status"] == "failed"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:])
    assert list(checks) == [name for name, _, _ in cuda_check.CHECKS]
    assert report["dry_run"] and report["summary"] == {"passed": 6, "failed": 0, "skipped": 1}
    assert "two CUDA GPUs" in checks["ddp"]["reason"]
    tensors = checks["tensors"]["figures"]
    assert tensors["seg2det_lesions"] > 0 and tensors["livermax_equal"]
    assert all(tensors[f"differing_voxels_f{f:g}"] == 0 for f in tensors["factors"])
    training = checks["trainers"]["figures"]["training"]
    assert all(t["losses_finite"] and t["epochs"] >= 1 for t in training.values())
    assert checks["trainers"]["figures"]["whole_is_ifm"]
    lidia = checks["trainers"]["figures"]["lidia"]  # one epoch of LIDIA's lesion-head variant with SAM
    assert "lidia_fold0" in training and lidia["memory_bank_entries"] > 0 and lidia["use_sam"]
    assert abs(sum(lidia["head_probabilities"]) - 1) < 1e-3
    assert checks["trainers"]["figures"]["cases_without_delayed_phase"] >= 1
    detect = checks["detect"]["figures"]
    assert detect["differing_voxels"] == 0 and detect["mismatches"] == [] and detect["folds"] == 5
    assert detect["cpu_run"]["peak_rss_mb"] > 0 and detect["device_run"]["peak_rss_mb"] > 0
    for name in ("bench_ifm", "bench_detect"):
        assert checks[name]["figures"]["ratio"] > 0
    text = (out / "cuda_check.md").read_text(encoding="utf-8")
    assert all(f"| {name} | **" in text for name in checks)
    assert (out / "cuda_check.log").read_text(encoding="utf-8").count("[cuda_check]") >= 2 * len(checks)
