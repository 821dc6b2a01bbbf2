#!/usr/bin/env bash
# make wheel: the pdiff wheel with the serve-only libpdiff.so inside, into target/wheels/.
# Its dependencies (numpy, cffi, onnxruntime) come from PyPI; pdiff/_ffi.py hands the
# onnxruntime wheel's libonnxruntime to the library, so nothing else is needed (no $PDIFF_LIB).
# auditwheel (installed by scripts/setup.sh) checks the library needs nothing outside the
# manylinux policy and gives the wheel its manylinux tag. Built from a copy of bindings/python
# and include/, so no build/ directory of an earlier build can leak into it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-target/wheels}
cargo build --release -p pdiff --no-default-features --lib --target-dir target/serve
LIB=$ROOT/target/serve/release/libpdiff.so
if strings "$LIB" | grep -F "$ROOT" >/dev/null; then
  echo "$LIB holds paths of the build tree ($ROOT)" >&2; exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/bindings" "$tmp/dist" "$OUT"
cp -r include "$tmp/src/include"
cp -r bindings/python "$tmp/src/bindings/python"
rm -rf "$tmp/src/bindings/python/build" "$tmp/src/bindings/python"/*.egg-info
PDIFF_WHEEL_LIBRARY="$LIB" .venv/bin/pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" "$tmp/src/bindings/python"
rm -f "$OUT"/pdiff-*.whl
PATH="$ROOT/.venv/bin:$PATH" .venv/bin/python -m auditwheel repair -w "$OUT" "$tmp"/dist/pdiff-*.whl
ls -l "$OUT"/pdiff-*.whl
