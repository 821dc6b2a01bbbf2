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
# The same header from the whole crate: a new public constant of the Rust API must not leak in
# (add it to [export] exclude in cbindgen.toml).
cbindgen --quiet --config cbindgen.toml --crate pdiff --output "$header_tmp" 2>/dev/null
if ! diff -u include/pdiff.h "$header_tmp"; then
  rm -f "$header_tmp"
  echo "cbindgen --crate pdiff gives a different header: exclude the new item in cbindgen.toml" >&2
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
# 3b. No leak across create/sample/free cycles: 1,000 cycles natively (resident memory must stop
#     growing: under 8 MiB over the last 500; a leaked session would be ~5 MB per cycle), then a few under memcheck (nothing definitely lost).
gcc -Wall -Werror -Iinclude tests/c/leak_cycles.c -Ltarget/release -lpdiff \
    -Wl,-rpath,"$PWD/target/release" -o target/leak_cycles
target/leak_cycles "$c_tmp/bundle" 1000 8192
valgrind --quiet --error-exitcode=1 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --suppressions=tests/c/valgrind.supp target/leak_cycles "$c_tmp/bundle" 3

# Bindings (bindings/cpp, bindings/python) on the bundle the C test exported above.
# 4. Reference values from C: n = 3, seed 42, DDIM 10 steps, CPU, as raw little-endian f32.
gcc -Wall -Werror -Iinclude tests/c/sample_dump.c -Ltarget/release -lpdiff \
    -Wl,-rpath,"$PWD/target/release" -o target/sample_dump
target/sample_dump "$c_tmp/bundle" "$c_tmp/c_samples.f32"
# 5. C++ (header-only RAII wrapper): its own checks, then the same samples bit for bit (and a
#    generator trained in C++ with the C test's data and options reproduces them too).
g++ -std=c++17 -Wall -Werror -Iinclude -Ibindings/cpp bindings/cpp/test_pdiff.cpp -Ltarget/release -lpdiff \
    -Wl,-rpath,"$PWD/target/release" -pthread -o target/test_pdiff_cpp
target/test_pdiff_cpp --bundle "$c_tmp/bundle" --expect "$c_tmp/c_samples.f32" --out "$c_tmp/cpp_samples.f32"
# 6. Python (cffi, ABI mode, declarations generated from include/pdiff.h): equal to C and C++.
PDIFF_LIB="$PWD/target/release/libpdiff.so" PDIFF_TEST_C_BUNDLE="$c_tmp/bundle" \
    PDIFF_TEST_C_SAMPLES="$c_tmp/c_samples.f32" PDIFF_TEST_CPP_SAMPLES="$c_tmp/cpp_samples.f32" \
    .venv/bin/python -m pytest -q -p no:cacheprovider bindings/python/tests
# 7. make install into a temporary prefix, then C and C++ hosts built with pkg-config only.
prefix="$c_tmp/prefix"
make --no-print-directory install PREFIX="$prefix" >/dev/null
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
test "$(pkg-config --modversion pdiff)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
cat > "$c_tmp/host.c" <<'C'
#include <pdiff.h>
#include <stdio.h>
int main(void) {
    if (pdiff_abi_version() != PDIFF_ABI_VERSION) {
        fprintf(stderr, "ABI %u, header %u\n", pdiff_abi_version(), PDIFF_ABI_VERSION);
        return 1;
    }
    printf("libpdiff %s (ABI %u)\n", pdiff_version(), pdiff_abi_version());
    return 0;
}
C
cat > "$c_tmp/host.cpp" <<'CPP'
#include <pdiff.hpp>
#include <iostream>
int main() {
    pdiff::check_abi();
    try { pdiff::Sampler s("/nonexistent/bundle"); } catch (const pdiff::Error& e) {
        std::cout << "C++: " << pdiff::status_name(e.status()) << "\n";
        return e.status() == PDIFF_ERR_BUNDLE ? 0 : 1;
    }
    return 1;
}
CPP
# shellcheck disable=SC2046  # word splitting of pkg-config's flags is intended
gcc -Wall -Werror "$c_tmp/host.c" $(pkg-config --cflags --libs pdiff) -o "$c_tmp/host"
# shellcheck disable=SC2046
g++ -std=c++17 -Wall -Werror "$c_tmp/host.cpp" $(pkg-config --cflags --libs pdiff) -o "$c_tmp/host_cpp"
# (grep without -q: it reads all of ldd's output, so pipefail never sees a SIGPIPE)
ldd "$c_tmp/host" | grep -F "$prefix/lib/libpdiff.so" >/dev/null || { echo "host does not use the installed libpdiff" >&2; exit 1; }
"$c_tmp/host"
"$c_tmp/host_cpp"
unset PKG_CONFIG_PATH
