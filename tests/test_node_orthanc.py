"""The DICOM node and the DICOMweb path against a real Orthanc (orthanc_scenarios.py beside this file).

Orthanc 1.10 listens on every interface, so the scenarios run in a private network namespace: one pytest session
(``unshare -n``, loopback up) runs them all, and each scenario is reported here by name. Without a namespace, or
without the Orthanc that .ci/run unpacks, every scenario is skipped with the reason.
"""
import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nnunet_liver.testing.netns import netns_argv, netns_problem
from nnunet_liver.testing.orthanc import orthanc_problem

INNER = Path(__file__).with_name("orthanc_scenarios.py")
ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = [n.name for n in ast.parse(INNER.read_text(encoding="utf-8")).body
             if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]

pytestmark = pytest.mark.slow  # nodes with nnU-Net's predictor, about four minutes in all


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    problem = netns_problem() or orthanc_problem()
    if problem:
        pytest.skip(problem)
    xml = tmp_path_factory.mktemp("inner") / "junit.xml"
    proc = subprocess.run(netns_argv([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(INNER),
                                      f"--junitxml={xml}"]), cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = (proc.stdout + proc.stderr)[-6000:]
    if not xml.is_file():
        pytest.fail(f"the scenarios did not run (exit code {proc.returncode}):\n{output}")
    found = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        result = next(iter(case), None)
        kind = "passed" if result is None or result.tag in ("system-out", "system-err") else result.tag
        text = "" if result is None else (result.get("message", "") + "\n" + (result.text or ""))
        found[case.get("name")] = (kind, text)
    return found, output


@pytest.mark.parametrize("name", SCENARIOS)
def test_orthanc_scenario(outcomes, name):
    found, output = outcomes
    if name not in found:
        pytest.fail(f"{name} did not run:\n{output}")
    kind, text = found[name]
    if kind == "skipped":
        pytest.skip(text.strip().splitlines()[0] if text.strip() else "skipped")
    assert kind == "passed", f"{name} {kind}:\n{text[-6000:]}"
