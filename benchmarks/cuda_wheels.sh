#!/usr/bin/env bash
# Prepare .whl/ (git-ignored) for benchmarks/cuda_check.py on a GPU machine without network access that has Python
# 3.12, torch (with triton) and the common scientific packages, but not nnU-Net and the rest of this package's
# requirements. Run it here, in the repository root's environment (the versions installed here are pinned), then
# carry .whl along and install from it there (README.md, "The CUDA check").
#
# SimpleITK's wheel alone (53 MB) would overflow the 64 MiB a command may carry, so its files are repacked as
# .whl/simpleitk.tar.xz (about 28 MB), to be unpacked into the same --target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
rm -rf .whl
mkdir .whl
# binary (or universal) wheels for CPython 3.12 on x86-64
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d .whl \
  "nnunetv2==$(ver nnunetv2)" "SimpleITK==$(ver SimpleITK)" "connected-components-3d==$(ver connected-components-3d)" \
  "nibabel==$(ver nibabel)" "blosc2==$(ver blosc2)" "ndindex==$(ver ndindex)" "numexpr==$(ver numexpr)"
# pure-Python packages, some published as source only: built here into py3-none-any wheels
"$PY" -m pip wheel -q --no-deps -w .whl "acvl-utils==$(ver acvl-utils)" "batchgenerators==$(ver batchgenerators)" \
  "batchgeneratorsv2==$(ver batchgeneratorsv2)" "dynamic-network-architectures==$(ver dynamic-network-architectures)" \
  "yacs==$(ver yacs)" "graphviz==$(ver graphviz)"
sitk=$(ls .whl/simpleitk-*.whl)
tmp=$(mktemp -d)
"$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$sitk" "$tmp"
tar -C "$tmp" -cf - . | xz -T0 -6 > .whl/simpleitk.tar.xz
rm -rf "$tmp" "$sitk"
ls -l .whl
du -ch .whl | tail -1
