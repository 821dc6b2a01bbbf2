#!/usr/bin/env bash
# The Python binding's PyTorch side (make test-torch): bindings/python/tests/test_torch.py with a
# torch that imports. The lean .venv's torch is libtorch for the Rust build only (its Python
# module needs CUDA libraries that venv leaves out), so `make test` runs those tests' numpy side
# and skips the torch side; here a venv of its own gets torch from PyPI (about 4.8 GB, a few
# minutes the first time; kept in target/torch-venv, complete or rebuilt) and the package is
# installed into it as pip installs it. PDIFF_TEST_TORCH=1: a torch test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION=//p' scripts/setup.sh)
ORT_VERSION=$(sed -n 's/^ORT_VERSION=//p' scripts/setup.sh)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=target/torch-venv
STAMP="$VENV/.pdiff-complete-$TORCH_VERSION"
if [ ! -f "$STAMP" ]; then
  echo "[test-torch] creating $VENV: torch==$TORCH_VERSION from PyPI"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "onnxruntime==$ORT_VERSION" numpy cffi pytest "mypy>=1.10" "setuptools>=77"
  touch "$STAMP"
fi
cargo build --release -p pdiff --lib
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/pip" install -q --target "$tmp/pysite" --no-deps --no-build-isolation bindings/python
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
(cd "$tmp" && env PYTHONPATH="$tmp/pysite" PDIFF_TEST_INSTALLED=1 PDIFF_TEST_TRAINING=1 PDIFF_TEST_TORCH=1 \
    PDIFF_TEST_STUBTEST=1 PDIFF_LIB="$ROOT/target/release/libpdiff.so" LD_LIBRARY_PATH="$SITE/torch/lib" \
    PDIFF_ORT_LIB="$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)" \
    "$ROOT/$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/bindings/python/tests/test_torch.py")
