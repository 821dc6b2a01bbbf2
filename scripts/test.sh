#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests, then the Python cross-checks of exported
# ONNX graphs (run from the project venv, no part of this library involved).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -- --test-threads=2
# Fuzzing (cargo-fuzz / libFuzzer) of the checkpoint loader, the manifest parser and the ONNX
# loading path, bounded in time, seeded by fuzz/corpus; any crash fails the suite.
bash scripts/fuzz.sh "${PDIFF_FUZZ_SECONDS:-45}"
# A host with nothing of libpdiff: the exported bundle through onnx + onnxruntime (project venv).
cargo build --release --bin pdiff
.venv/bin/python -m pytest -q tests/python

# C ABI (include/pdiff.h, libpdiff.so).
# 1. The committed header is exactly what cbindgen generates from src/ffi/ now.
CBINDGEN_VERSION=0.29.4
if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
  echo "cbindgen $CBINDGEN_VERSION is needed (have: $(cbindgen --version 2>/dev/null || echo none)); run scripts/setup.sh" >&2
  exit 1
fi
header_tmp=$(mktemp --suffix=.h)
cbindgen --quiet --config cbindgen.toml --output "$header_tmp" src/ffi/mod.rs
if ! diff -u include/pdiff.h "$header_tmp"; then
  rm -f "$header_tmp"
  echo "include/pdiff.h is stale: cbindgen --config cbindgen.toml --output include/pdiff.h src/ffi/mod.rs" >&2
  exit 1
fi
rm -f "$header_tmp"
# 2. A C host: compile with -Wall -Werror against the header, run everything (training included).
cargo build --release --lib
gcc -Wall -Werror -Iinclude tests/c/test_pdiff.c -Ltarget/release -lpdiff \
    -Wl,-rpath,"$PWD/target/release" -pthread -o target/test_pdiff
c_tmp=$(mktemp -d)
trap 'rm -rf "$c_tmp"' EXIT
target/test_pdiff --export "$c_tmp/bundle"
# 3. Memcheck: everything but the (slow under valgrind) training, on the bundle trained above.
#    tests/c/valgrind.supp only covers third-party libraries, never libpdiff frames.
valgrind --quiet --error-exitcode=1 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --suppressions=tests/c/valgrind.supp target/test_pdiff --bundle "$c_tmp/bundle"
