"""Every console command behaves the same: one error line ``PROG: error: <file or case>: <problem>`` and exit code 2
on bad input (``utils.io.run_cli``, argparse's own code for a malformed command line), and outputs that others can
read (the atomic writes give the permissions of a plain ``open()``: 0666 / 0777 minus the umask)."""
import os
import stat
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.utils.io import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, InputError, atomic_dir, atomic_path,
                                   console_script, run_cli, write_image_like, write_json_atomic)

# (command, argv with {tmp} for the test's folder, words the error line names: the file and the problem)
BAD_INPUT = [
    ("nnunet-liver-phantom", ["-o", "{tmp}/Dataset900_P", "-n", "0"], ["Dataset900_P", "number of cases"]),
    ("nnunet-liver-phantom", ["-o", "{tmp}/Dataset900_P", "-n", "1", "--phases", "V,X"], ["phases", "'X'"]),
    ("nnunet-liver-convert", ["msd", "-i", "{tmp}/nope", "-o", "{tmp}/raw"], ["nope", "not found"]),
    ("nnunet-liver-convert", ["patches", "-i", "{tmp}/nope", "-o", "{tmp}/out"], ["dataset.json", "not found"]),
    ("nnunet-liver-convert", ["dicom", "-i", "{tmp}", "-o", "{tmp}/raw", "--label-map", "Liver=kidney"],
     ["--label-map Liver=kidney", "unknown class"]),
    ("nnunet-liver-convert", ["hcc-tace-seg", "-i", "{tmp}", "-o", "{tmp}/raw"], ["no TCIA metadata.csv"]),
    ("nnunet-liver-evaluate", ["-ref", "{tmp}", "-pred", "{tmp}/nope"], ["nope", "not found"]),
    ("nnunet-liver-detect", ["-i", "{tmp}", "-o", "{tmp}/out", "-m", "{tmp}/no_model"], ["no_model", "not found"]),
    ("nnunet-liver-demo", ["-o", "{tmp}/a_file"], ["a_file", "not a folder"]),
    ("nnunet-liver-plan", ["-d", "601", "--window", "250", "-150"], ["--window", "upper must exceed lower"]),
]
COMMANDS = sorted({c for c, _, _ in BAD_INPUT})


def _script(command):
    path = console_script(command)
    if not os.path.isfile(path):
        pytest.skip(f"{command} is not installed next to this interpreter (pip install -e .)")
    return path


@pytest.mark.parametrize("command,argv,words", BAD_INPUT, ids=[f"{c}-{a[0]}" for c, a, _ in BAD_INPUT])
def test_bad_input_exits_2_with_one_error_line(tmp_path, command, argv, words):
    (tmp_path / "a_file").write_text("not a folder", encoding="utf-8")
    before = sorted(os.listdir(tmp_path))
    proc = subprocess.run([_script(command), *[a.format(tmp=tmp_path) for a in argv]], capture_output=True,
                          text=True, encoding="utf-8")
    assert proc.returncode == EXIT_BAD_INPUT == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert all(w in lines[0] for w in words), lines[0]
    assert sorted(os.listdir(tmp_path)) == before  # nothing half-written, inputs untouched


@pytest.mark.parametrize("command", COMMANDS)
def test_malformed_command_line_exits_2_like_argparse(command):
    proc = subprocess.run([_script(command), "--no-such-option"], capture_output=True, text=True, encoding="utf-8")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"{command}: error: ")


def test_mains_return_0_whatever_their_work_returns(monkeypatch, tmp_path):
    """A command's work may return a result (the plans file, the written folder); main still exits 0."""
    from nnunet_liver import planning

    monkeypatch.setattr(planning, "plan_with_ct_window", lambda *a, **k: str(tmp_path / "nnUNetPlans.json"))
    assert planning.main(["-d", "601"]) == EXIT_OK
    with pytest.raises(TypeError, match="expects an exit code"):
        run_cli("nnunet-liver-x", lambda: "a/path")


def test_run_cli_codes_and_lines(capsys):
    assert run_cli("nnunet-liver-x", lambda: None) == EXIT_OK == 0
    assert run_cli("nnunet-liver-x", lambda: EXIT_FAILED) == 1

    def bad():
        raise InputError("case_7: phase V missing")

    def failed():
        raise RuntimeError("nnUNetv2_preprocess -d 5 failed with exit code 3")

    def unwritable():
        raise PermissionError(13, "Permission denied", "/results/summary.csv")

    assert run_cli("nnunet-liver-x", bad) == 2
    assert run_cli("nnunet-liver-x", failed) == 1
    assert run_cli("nnunet-liver-x", unwritable) == 1
    assert capsys.readouterr().err.splitlines() == [
        "nnunet-liver-x: error: case_7: phase V missing",
        "nnunet-liver-x: error: nnUNetv2_preprocess -d 5 failed with exit code 3",
        "nnunet-liver-x: error: /results/summary.csv: Permission denied"]


@pytest.fixture
def umask():
    """Set the process umask for a test, restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask):
        os.umask(mask)

    yield set_
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _tree_modes(folder):
    """{relative path: mode bits} of every file and folder under ``folder`` (the folder itself included)."""
    out = {".": _mode(folder)}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = _mode(path)
    return out


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    os.mkdir(tmp_path / "plain_dir")
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    assert _mode(plain) == file_mode and _mode(tmp_path / "plain_dir") == dir_mode  # what "ordinary" means
    with atomic_path(str(tmp_path / "a.txt")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("x")
    write_json_atomic({"a": 1}, str(tmp_path / "b.json"))
    ref = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    write_image_like(np.ones((3, 4, 5), np.uint8), ref, str(tmp_path / "c.nii.gz"))
    with atomic_dir(str(tmp_path / "d")) as tmp:
        with open(os.path.join(tmp, "e.txt"), "w", encoding="utf-8") as f:
            f.write("x")
    for name in ("a.txt", "b.json", "c.nii.gz", "d/e.txt"):
        assert _mode(tmp_path / name) == file_mode, (name, oct(_mode(tmp_path / name)))
    assert _mode(tmp_path / "d") == dir_mode


def test_command_outputs_are_readable_by_others(tmp_path, umask):
    """phantom, convert patches and evaluate end to end: every file 0644 and folder 0755 under umask 022."""
    from nnunet_liver.dataset_conversion.cli import main as convert_main
    from nnunet_liver.evaluation.cli import main as evaluate_main
    from nnunet_liver.phantom.cli import main as phantom_main

    umask(0o022)
    phantoms = tmp_path / "Dataset900_P"
    assert phantom_main(["-o", str(phantoms), "-n", "2", "--seed", "3", "--shape", "12", "48", "48", "--spacing",
                         "5", "4", "4", "--min-lesion-volume", "2"]) == 0
    patches = tmp_path / "Dataset901_Patch"
    assert convert_main(["patches", "-i", str(phantoms), "-o", str(patches)]) == 0
    evaluation = tmp_path / "evaluation"
    assert evaluate_main(["-ref", str(phantoms / "labelsTr"), "-pred", str(phantoms / "labelsTr"), "-o",
                          str(evaluation), "-q"]) == 0
    for folder in (phantoms, patches, evaluation):
        modes = _tree_modes(folder)
        assert len(modes) > 3
        wrong = {p: oct(m) for p, m in modes.items()
                 if m != (0o755 if os.path.isdir(os.path.join(folder, p)) else 0o644)}
        assert not wrong, (folder.name, wrong)


def test_every_command_main_ends_in_run_cli():
    """Every ``main`` of the package (console scripts and ``python -m`` commands) returns ``run_cli(...)``, or
    another command's ``main`` (``nnunet_liver.dataset_conversion.patches``), so all fail with the same codes. The
    test helpers of ``nnunet_liver/testing/`` are no user commands (``testing.netns`` replaces itself by ``exec``)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    mains = {}
    for folder in ("nnunet_liver", "dataset_conversion"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.relative_to(root).parts[:2] == ("nnunet_liver", "testing"):
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.FunctionDef) and node.name == "main":
                    last = node.body[-1]
                    call = last.value if isinstance(last, ast.Return) else None
                    name = getattr(getattr(call, "func", None), "id", "")
                    mains[path.relative_to(root).as_posix()] = name == "run_cli" or name.endswith("main")
    assert len(mains) >= 8 and "nnunet_liver/training/warm_start.py" in mains
    assert all(mains.values()), [p for p, ok in mains.items() if not ok]
