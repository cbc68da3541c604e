"""Run the detector over a folder of cases: sharding, skip/overwrite, atomic outputs, summary.csv, report.html.

Per case ``OUT/CASE_lesions.nii.gz`` is written first and ``OUT/CASE.json`` last, each to a temporary name and
renamed, so a case counts as finished exactly when its JSON exists. A failed case leaves ``OUT/CASE_error.txt``
(one line; removed once the case succeeds) so that ``summary.csv`` can list it whichever shard ran it.
``summary.csv`` and ``report.html`` are rebuilt at the end of every run from the output folder: one row per case of
the input folder ("done", "failed" or "pending" for cases another shard has not finished yet).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from tqdm import tqdm

from nnunet_liver.case import validate_case_id
from nnunet_liver.inference.cases import CaseFiles, shard
from nnunet_liver.inference.detector import LiverDetector
from nnunet_liver.inference.inputs import discover_inputs
from nnunet_liver.labels import LESION_IDS, name_of
from nnunet_liver.utils.io import InputError, atomic_path, write_image_like, write_json_atomic

__all__ = ["RunResult", "run_folder", "output_paths", "write_summary", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = (["case", "status", "error", "phases_present", "num_lesions", "num_same", "num_diff", "class"]
                   + ["class_f{}", "malignant"] + [f"livermax_{name_of(i)}" for i in LESION_IDS] + ["seconds"])


@dataclass
class RunResult:
    """Which cases this run finished, skipped (already done) and failed (case id -> one-line error); ``bad_input``
    lists the failed cases whose files were bad (unreadable, missing a phase, ...), not a failed step."""
    done: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    bad_input: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        return f"{len(self.done)} done, {len(self.skipped)} skipped (already done), {len(self.failed)} failed"


def output_paths(output_dir: str, case_id: str) -> Dict[str, str]:
    return {"json": os.path.join(output_dir, f"{case_id}.json"),
            "lesions": os.path.join(output_dir, f"{case_id}_lesions.nii.gz"),
            "error": os.path.join(output_dir, f"{case_id}_error.txt")}


def _is_done(output_dir: str, case_id: str) -> bool:
    p = output_paths(output_dir, case_id)
    return os.path.isfile(p["json"]) and os.path.isfile(p["lesions"])


def run_folder(detector: LiverDetector, input_dir: str, output_dir: str, num_parts: int = 1, part_id: int = 0,
               overwrite: bool = False, report: bool = True, progress: bool = True,
               phase_map: Optional[Dict[str, str]] = None) -> RunResult:
    """Detect every case of ``input_dir`` in this shard and write the outputs to ``output_dir``.

    DICOM studies under ``input_dir`` are cases too (``phase_map``: series number or UID -> phase, for studies whose
    phases cannot be identified); they also get ``CASE_seg.dcm`` and ``CASE_sr.dcm``.

    Inputs are never modified. Bad cases are recorded (``RunResult.failed``, ``CASE_error.txt``, summary.csv) and
    the other cases still run.
    """
    if os.path.abspath(input_dir) == os.path.abspath(output_dir):
        raise InputError(f"{output_dir}: the output folder must differ from the input folder")
    all_cases = discover_inputs(input_dir, len(detector.channel_names), detector.file_ending, phase_map, output_dir)
    if not all_cases:
        raise InputError(f"{input_dir}: no DICOM study and no case files named CASE_XXXX{detector.file_ending} "
                         f"(channels: {', '.join(f'{i:04d}={n}' for i, n in enumerate(detector.channel_names))})")
    mine = shard(all_cases, num_parts, part_id)
    os.makedirs(output_dir, exist_ok=True)
    result = RunResult()
    for case in tqdm(mine, desc="nnunet-liver-detect", unit="case", disable=not progress):
        try:
            validate_case_id(case.case_id)
        except InputError as e:
            result.failed[case.case_id] = str(e)
            result.bad_input.append(case.case_id)
            continue
        paths = output_paths(output_dir, case.case_id)
        if not overwrite and _is_done(output_dir, case.case_id):
            result.skipped.append(case.case_id)
            continue
        try:
            res = detector.detect_case(case)
            if os.path.exists(paths["json"]):  # the case is "done" again only once its new JSON lands
                os.remove(paths["json"])
            write_image_like(res.instance_map, res.case.reference, paths["lesions"])
            res = _write_extras(res, output_dir, report, detector.model.ct_window)
            res = with_relative_inputs(res, input_dir)
            write_json_atomic(res.record, paths["json"])
            if os.path.exists(paths["error"]):
                os.remove(paths["error"])
            result.done.append(case.case_id)
        except Exception as e:  # noqa: BLE001 - a failing case must not stop the others
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, InputError):
                result.bad_input.append(case.case_id)
            else:
                message = f"case {case.case_id}: {type(e).__name__}: {message}"
            result.failed[case.case_id] = message
            with atomic_path(paths["error"]) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(message + "\n")
    write_summary(all_cases, output_dir, result)
    if report:
        from nnunet_liver.inference.report import write_report

        write_report(output_dir, [c.case_id for c in all_cases if _safe_id(c.case_id)
                                  and _is_done(output_dir, c.case_id)], window=detector.model.ct_window)
    return result


def _write_extras(res, output_dir: str, report: bool, window):
    """The report's figures (rendered now, while the images are in memory, in the model's CT ``window``) and, for a
    DICOM study, its SEG and SR; returns ``res``, its record holding the DICOM outputs and any output error.

    Neither may lose a finished detection: a failure is recorded in CASE.json (``output_errors.figures``,
    ``dicom.outputs.not_written``), warned about on stderr, and the case's JSON and NIfTI are still written.
    """
    if report:
        from nnunet_liver.inference.report import save_case_figures

        try:
            save_case_figures(res, output_dir, window)
        except Exception as e:  # noqa: BLE001
            message = f"report figures not written ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]})"
            res = dataclasses.replace(res, case_record=res.case_record.with_output_error("figures", message))
            _warn(res.case.case_id, message)
    if res.case_record.dicom is not None:
        from nnunet_liver.dicom.export import write_dicom_outputs

        outputs = write_dicom_outputs(res, output_dir)  # never raises: the reason lands in outputs["not_written"]
        res = dataclasses.replace(res, case_record=res.case_record.with_dicom_outputs(outputs))
        if outputs.get("not_written"):
            _warn(res.case.case_id, outputs["not_written"])
    return res


def _warn(case_id: str, message: str) -> None:
    tqdm.write(f"nnunet-liver-detect: warning: case {case_id}: {message}", file=sys.stderr)


def with_relative_inputs(res, input_dir: str):
    """The result with CASE.json's input paths relative to the input folder (``-i``): folder names above it often
    carry patient names, and the outputs travel without them."""
    root = os.path.abspath(input_dir)
    out = {}
    for phase, path in res.case_record.inputs.items():
        if path is not None and os.path.isabs(path) and os.path.commonpath([root, path]) == root:
            path = os.path.relpath(path, root)
        out[phase] = path
    return dataclasses.replace(res, case_record=res.case_record.with_inputs(out))


def _safe_id(case_id: str) -> bool:
    try:
        validate_case_id(case_id)
        return True
    except InputError:
        return False


def _row_from_record(record: dict) -> dict:
    lesions = record.get("lesions", [])
    patient = record.get("patient", {})
    row = {"case": record["case"], "status": "done", "error": "",
           "phases_present": " ".join(record.get("phases_present", [])), "num_lesions": len(lesions),
           "num_same": sum(1 for l in lesions if l.get("sensitivity") == "same"),
           "num_diff": sum(1 for l in lesions if l.get("sensitivity") == "diff"),
           "class": patient.get("class"), "malignant": patient.get("malignant"),
           "seconds": record.get("timing_s", {}).get("total")}
    for k, v in patient.get("class_by_factor", {}).items():
        row[f"class_f{k}"] = v
    for k, v in patient.get("livermax", {}).items():
        row[f"livermax_{k}"] = round(float(v), 6)
    return row


def write_summary(all_cases: List[CaseFiles], output_dir: str, result: Optional[RunResult] = None) -> str:
    """Write ``summary.csv``: one row per input case, from the output folder's JSON and error files."""
    result = result or RunResult()
    rows, factor_cols = [], []
    for case in all_cases:
        cid = case.case_id
        if not _safe_id(cid):  # never used as a file name
            try:
                validate_case_id(cid)
            except InputError as e:
                rows.append({"case": cid, "status": "failed", "error": str(e)})
            continue
        if cid in result.failed:
            rows.append({"case": cid, "status": "failed", "error": result.failed[cid]})
            continue
        paths = output_paths(output_dir, cid)
        if _is_done(output_dir, cid):
            with open(paths["json"], encoding="utf-8") as f:
                row = _row_from_record(json.load(f))
            factor_cols += [k for k in row if k.startswith("class_f") and k not in factor_cols]
            rows.append(row)
        elif os.path.isfile(paths["error"]):
            with open(paths["error"], encoding="utf-8") as f:
                rows.append({"case": cid, "status": "failed", "error": f.read().strip()})
        else:
            rows.append({"case": cid, "status": "pending", "error": ""})
    columns = []
    for c in SUMMARY_COLUMNS:
        columns += sorted(factor_cols, key=lambda k: float(k[7:])) if c == "class_f{}" else [c]
    path = os.path.join(output_dir, "summary.csv")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return path
