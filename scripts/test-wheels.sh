#!/usr/bin/env bash
# make test-wheels: the training wheel (scripts/wheel.sh train) in a FRESH venv. pip installs it
# with its dependencies from PyPI, torch among them (about 4.8 GB, minutes when not cached: hence
# not in make test, which checks the serve-only wheel the same way), and the binding's tests
# (test_torch.py included, PDIFF_TEST_TORCH=1) run there with no $PDIFF_LIB, $PDIFF_ORT_LIB or
# LD_LIBRARY_PATH: libtorch comes through the library's RUNPATH into the installed torch.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash scripts/wheel.sh train "$tmp/wheels"
wheel=$(ls "$tmp"/wheels/pdiff-*.whl)
"$PY" -m venv "$tmp/venv"
start=$(date +%s)
"$tmp/venv/bin/pip" install -q "$wheel"
echo "training wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB, installed with its dependencies in $(($(date +%s) - start)) s, venv $(du -sh "$tmp/venv" | cut -f1)"
"$tmp/venv/bin/pip" install -q pytest "mypy>=1.10" safetensors  # the tests' own needs
# The C reference (the C test's bundle and samples, as in make test), through the wheel's library.
SITE=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for prog in test_pdiff sample_dump; do
  gcc -Wall -Werror -Iinclude "tests/c/$prog.c" -L"$SITE/pdiff/lib" -lpdiff -Wl,-rpath,"$SITE/pdiff/lib" \
      -Wl,-rpath-link,"$SITE/torch/lib" -pthread -lm -o "$tmp/$prog"
done
ORT=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)
env -u LD_LIBRARY_PATH PDIFF_ORT_LIB="$ORT" "$tmp/test_pdiff" --export "$tmp/bundle" >/dev/null
env -u LD_LIBRARY_PATH PDIFF_ORT_LIB="$ORT" "$tmp/sample_dump" "$tmp/bundle" "$tmp/c_samples.f32" >/dev/null
(cd "$tmp" && env -u LD_LIBRARY_PATH -u PDIFF_ORT_LIB -u PDIFF_LIB PDIFF_TEST_INSTALLED=1 PDIFF_TEST_TRAINING=1 \
    PDIFF_TEST_WHEEL=train PDIFF_TEST_TORCH=1 PDIFF_TEST_STUBTEST=1 \
    PDIFF_TEST_C_BUNDLE="$tmp/bundle" PDIFF_TEST_C_SAMPLES="$tmp/c_samples.f32" \
    "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/bindings/python/tests")
