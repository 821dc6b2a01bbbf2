#!/usr/bin/env bash
# The Python binding's PyTorch side (make test-torch): bindings/python/tests/test_torch.py with a
# torch that imports. The lean .venv's torch is libtorch for the Rust build only (its Python
# module needs CUDA libraries that venv leaves out), so `make test` runs those tests' numpy side
# and skips the torch side; here a venv of its own gets torch from PyPI (about 4.8 GB, a few
# minutes the first time; target/torch-venv, shared with make test-peft: scripts/lib/torch-venv.sh) and the package is
# installed into it as pip installs it. PDIFF_TEST_TORCH=1: a torch test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/torch-venv.sh
source scripts/lib/torch-venv.sh
pdiff_torch_venv
VENV=$TORCH_VENV
cargo build --release -p pdiff --lib
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/pip" install -q --target "$tmp/pysite" --no-deps --no-build-isolation bindings/python
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
(cd "$tmp" && env PYTHONPATH="$tmp/pysite" PDIFF_TEST_INSTALLED=1 PDIFF_TEST_TRAINING=1 PDIFF_TEST_TORCH=1 \
    PDIFF_TEST_STUBTEST=1 PDIFF_LIB="$ROOT/target/release/libpdiff.so" LD_LIBRARY_PATH="$SITE/torch/lib" \
    PDIFF_ORT_LIB="$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)" \
    "$ROOT/$VENV/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/bindings/python/tests/test_torch.py")
