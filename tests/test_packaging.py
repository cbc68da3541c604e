"""Packaging tells the truth: what the package imports is declared in setup.py and what is declared is used, one
version source, every package_data pattern matches a file, text files opened as UTF-8."""
import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nnunet_liver

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = (ROOT / "nnunet_liver", ROOT / "dataset_conversion")
#: declared but not imported by our code, and why
DECLARED_NOT_IMPORTED = {
    "dynamic-network-architectures": "the bundled demo models' plans name its PlainConvUNet; nnU-Net builds it by name",
    "pylibjpeg": "pydicom's pixel-data plugin framework, found by pydicom through entry points (compressed DICOM)",
    "pylibjpeg-libjpeg": "pydicom decodes JPEG / JPEG-LS / lossless JPEG through it (entry point, never imported)",
    "pylibjpeg-openjpeg": "pydicom decodes JPEG 2000 through it (entry point, never imported)",
}
#: in the test extra for the executables they install, which the tests run (never imported)
TEST_TOOLS_NOT_IMPORTED = {
    "dcmqi": "segimage2itkimage and tid1500reader read our DICOM SEG and SR back (nnunet_liver.testing.dicom_check)",
}


def _setup_kwargs() -> dict:
    """The literal keyword arguments of setup.py's ``setup(...)`` call (parsed, setup.py is not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:  # computed values (version, long_description)
            pass
    return out


def _dist(requirement: str) -> str:
    """Normalised distribution name of a requirement string (``"SimpleITK>=2.2"`` -> ``"simpleitk"``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def _python_files(*folders):
    return [p for f in folders for p in f.rglob("*.py")]


def _imported_modules(files) -> dict:
    """{top-level module: first file importing it} for absolute imports outside the standard library."""
    own = ({"nnunet_liver", "tests", "conftest"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
           | {p.stem for p in (ROOT / "scripts").glob("*.py")} | {p.stem for p in (ROOT / "benchmarks").glob("*.py")})
    found = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in own and top != "__future__":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _providers(module: str) -> set:
    return {_dist(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def test_every_import_is_declared_and_every_declaration_used():
    kwargs = _setup_kwargs()
    required = {_dist(r) for r in kwargs["install_requires"]}
    test_extra = {_dist(r) for r in kwargs["extras_require"]["test"]}
    # an optional extra (e.g. "characterize": radiomics) may provide a package import; its code says how to get it
    optional = {_dist(r) for name, reqs in kwargs["extras_require"].items() if name != "test" for r in reqs}
    package_imports = _imported_modules(_python_files(*PACKAGE_DIRS))
    undeclared = {m: f for m, f in package_imports.items() if not _providers(m) & (required | optional)}
    assert not undeclared, f"imported by the package, not in install_requires or an optional extra: {undeclared}"
    test_imports = _imported_modules(_python_files(ROOT / "tests"))
    undeclared = {m: f for m, f in test_imports.items() if not _providers(m) & (required | test_extra)}
    assert not undeclared, f"imported by the tests, not in install_requires or the test extra: {undeclared}"
    used = set().union(*(_providers(m) for m in package_imports))
    unused = required - used - set(DECLARED_NOT_IMPORTED)
    assert not unused, f"declared in install_requires, imported nowhere in the package: {sorted(unused)}"
    used_by_tests = set().union(*(_providers(m) for m in test_imports))
    assert test_extra - used_by_tests - {"pytest"} - set(TEST_TOOLS_NOT_IMPORTED) == set()
    for dist in TEST_TOOLS_NOT_IMPORTED:
        assert dist in test_extra, f"{dist}: listed as a test tool, not in the test extra"


def test_bundled_plans_name_the_declared_network_package():
    plans = [p.read_text(encoding="utf-8") for p in (ROOT / "nnunet_liver" / "demo_models").rglob("plans.json")]
    if not plans:
        pytest.skip("no bundled demo models in this checkout")
    assert any("dynamic_network_architectures." in p for p in plans)


def test_one_version_source():
    """setup.py reads nnunet_liver.__version__; the installed metadata agrees."""
    proc = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                          encoding="utf-8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == nnunet_liver.__version__
    assert importlib.metadata.version("nnunet_liver") == nnunet_liver.__version__
    assert "version=VERSION" in (ROOT / "setup.py").read_text(encoding="utf-8")


def test_package_data_patterns_match_files():
    for package, patterns in _setup_kwargs()["package_data"].items():
        folder = ROOT / package.replace(".", "/")
        for pattern in patterns:
            assert any(p.is_file() for p in folder.glob(pattern)), f"package_data {package}: {pattern} matches no file"


def _text_opens_without_encoding(path: Path):
    """Line numbers of ``open()`` / ``Path.read_text`` / ``Path.write_text`` calls in text mode without an encoding."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        kwargs = {k.arg for k in node.keywords}
        if isinstance(node.func, ast.Name) and node.func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"),
                                                                   None)
            binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
            if not binary and "encoding" not in kwargs:
                yield node.lineno
        elif isinstance(node.func, ast.Attribute) and node.func.attr in ("read_text", "write_text"):
            if "encoding" not in kwargs:
                yield node.lineno


def test_text_files_are_opened_as_utf8():
    """In the installed code (not the tests): the platform's default encoding is not UTF-8 everywhere."""
    bad = [f"{p.relative_to(ROOT)}:{line}" for p in _python_files(*PACKAGE_DIRS) + [ROOT / "setup.py"]
           for line in _text_opens_without_encoding(p)]
    assert not bad, f"open()/read_text()/write_text() of text without encoding='utf-8': {bad}"


def _unclosed_opens(path: Path):
    """Line numbers of ``open()`` calls whose file is never bound to a name or a ``with``: an argument of another call
    (``json.load(open(p))``) or the object of a method call (``open(p).read()``); the handle is left to the garbage
    collector."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for parent in ast.walk(tree):
        children = []
        if isinstance(parent, ast.Call):
            children = list(parent.args) + [k.value for k in parent.keywords]
        elif isinstance(parent, ast.Attribute):
            children = [parent.value]
        for child in children:
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "open":
                yield child.lineno


def test_no_file_handle_is_left_open(tmp_path):
    """``with open(...)``, ``Path.read_text`` or a handle kept and closed: never ``json.load(open(...))`` (the package,
    the conversion scripts, the scripts, the benchmarks and the tests)."""
    probe = tmp_path / "probe.py"
    probe.write_text('x = json.load(open("a"))\ny = open("b").read()\nwith open("c") as f:\n    pass\n'
                     'z = open("d")\nz.close()\n', encoding="utf-8")
    assert list(_unclosed_opens(probe)) == [1, 2]
    files = _python_files(*PACKAGE_DIRS, ROOT / "scripts", ROOT / "benchmarks", ROOT / "tests")
    assert len(files) > 50
    bad = [f"{p.relative_to(ROOT)}:{line}" for p in files for line in _unclosed_opens(p)]
    assert not bad, f"open() whose file is never closed: {bad}"
