"""``nnunet-liver-detect --dicomweb URL --study UID [--push]``: studies from a DICOMweb server, results back to it.

The studies (``--study``, and those a ``--query`` finds with QIDO-RS) are listed before the model loads, so a wrong
URL, credentials or UID fails at once. Each study's CT series are retrieved (WADO-RS) into a temporary folder inside
the output folder (deleted at the end), named by the StudyInstanceUID, which is also the case id of the outputs
(``UID.json``, ``UID_seg.dcm``, ``UID_sr.dcm`` ...). The DICOM path of ``nnunet-liver-detect`` runs on them; with
``--push`` every finished study's SEG + SR are stored back (STOW-RS) and the response checked: a study whose results
were not stored fails with the reason. A study already done in the output folder is skipped (not retrieved, not
pushed) unless ``--overwrite``.
"""
from __future__ import annotations

import json
import os
import tempfile
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from nnunet_liver.dicom.web import find_studies, make_client, retrieve_study, store_files
from nnunet_liver.utils.io import InputError

__all__ = ["DicomwebStudies", "parse_query"]


def parse_query(items: Optional[Sequence[str]]) -> Dict[str, str]:
    """``["ModalitiesInStudy=CT", "StudyDate=20240101-"]`` -> a QIDO-RS filter dictionary."""
    query = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--query {item!r}: expected KEY=VALUE (a DICOM keyword or tag, e.g. StudyDate=20240101-)")
        query[key.strip()] = value.strip()
    return query


class DicomwebStudies:
    """The studies of one ``--dicomweb`` run (found when constructed) and :meth:`detect` to run them."""

    def __init__(self, url: str, study_uids: Sequence[str] = (), query: Optional[Dict[str, str]] = None,
                 push: bool = False, auth_file: Optional[str] = None):
        self.url, self.push = url, push
        self.client = make_client(url, auth_file)
        self.study_uids: List[str] = find_studies(self.client, study_uids, query)

    def detect(self, detector, output_dir: str, overwrite: bool = False, report: bool = True,
               phase_map: Optional[Dict[str, str]] = None, progress: bool = True):
        """Retrieve, detect and (with ``push``) store back; returns the :class:`~nnunet_liver.inference.RunResult`
        over every study (retrieval and push failures included)."""
        from nnunet_liver.inference.runner import RunResult, output_paths, run_folder, write_summary

        os.makedirs(output_dir, exist_ok=True)
        result = RunResult()
        todo = []
        for uid in self.study_uids:
            if not overwrite and os.path.isfile(output_paths(output_dir, uid)["json"]):
                result.skipped.append(uid)
            else:
                todo.append(uid)
        retrieval_failed: Dict[str, str] = {}
        bad: List[str] = []
        if todo:
            with tempfile.TemporaryDirectory(prefix=".tmp_dicomweb_", dir=output_dir) as tmp:
                got = 0
                for uid in tqdm(todo, desc="WADO-RS", unit="study", disable=not progress):
                    try:
                        retrieve_study(self.client, uid, os.path.join(tmp, uid))
                        got += 1
                    except (InputError, RuntimeError) as e:
                        retrieval_failed[uid] = f"study {uid}: {e}"
                        if isinstance(e, InputError):
                            bad.append(uid)
                if got:
                    ran = run_folder(detector, tmp, output_dir, overwrite=True, report=report, progress=progress,
                                     phase_map=phase_map)
                    result.done, result.failed, result.bad_input = ran.done, dict(ran.failed), list(ran.bad_input)
        result.failed.update(retrieval_failed)
        result.bad_input += bad
        if self.push:
            for uid in list(result.done):
                try:
                    store_files(self.client, self._outputs(output_dir, uid))
                except RuntimeError as e:
                    result.done.remove(uid)
                    result.failed[uid] = f"study {uid}: results not stored: {e}"
        # one row per study asked for, retrieval failures included (write_summary reads each case's case_id)
        write_summary([SimpleNamespace(case_id=uid) for uid in self.study_uids], output_dir, result)
        return result

    @staticmethod
    def _outputs(output_dir: str, uid: str) -> List[str]:
        from nnunet_liver.inference.runner import output_paths

        with open(output_paths(output_dir, uid)["json"], encoding="utf-8") as f:
            names = json.load(f).get("dicom", {}).get("outputs", {})
        return [os.path.join(output_dir, names[k]) for k in ("seg", "sr") if names.get(k)]
