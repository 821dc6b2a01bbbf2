#!/usr/bin/env bash
# The whole test suite (make test). Runs after scripts/setup.sh. Every step fails the suite.
#   0. Gates: rustfmt, and clippy with warnings as errors on every target of both builds.
#   1. Rust: every crate of the workspace (pdiff-core's tests build and run without libtorch),
#      the C ABI crate serve-only (no libtorch), the tools (every bad input through the CLI);
#      the CUDA tests where a usable GPU is visible (SKIPPED, with the reason, elsewhere); the
#      set-up scripts' GPU detection and the GPU check's quick tests (tests/setup/).
#   2. Fuzzing of the loaders, bounded in time.
#   3. A Python host that samples a bundle with onnx + onnxruntime alone.
#   4. The C ABI: header freshness, exported symbols, no build-tree path, the C test (training
#      included), memcheck, create/free cycles, the thread test under ThreadSanitizer.
#   5. Bindings: C++ and Python (the installed package, against both builds) reproduce the C
#      samples bit for bit; the serve-only library gives the same bits as the full one; the
#      wheel (make wheel) in a fresh venv, with nothing else installed, too.
#   6. Installs: the serve-only build into a prefix, a pkg-config C host and a CMake C++ host run
#      with an empty environment; the full build into another prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TORCH_LIB="$SITE/torch/lib"
ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)
SERVE_TARGET=target/serve
step() { echo; echo "=== $* ==="; }

step "0. Gates: cargo fmt, cargo clippy (full and serve-only builds)"
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo clippy --release -p pdiff --no-default-features --all-targets --target-dir "$SERVE_TARGET" -- -D warnings

step "1. Rust tests: pdiff-core, pdiff-train, the C ABI (full and serve-only), tools"
cargo test --release --workspace -- --test-threads=2
# The C ABI crate serve-only, in its own target directory (target/release keeps the full build).
cargo test --release -p pdiff --no-default-features --target-dir "$SERVE_TARGET" -- --test-threads=2
# The CUDA tests (crates/train/tests/cuda.rs, #[ignore]d for a plain cargo test) run where scripts/lib/gpu.sh
# finds a usable GPU, on a build linked with libtorch_cuda; elsewhere a SKIPPED line says why.
# shellcheck source=scripts/lib/gpu.sh
source scripts/lib/gpu.sh
pdiff_detect_gpu
torch_cuda=$(sed -n 's/^PDIFF_TORCH_CUDA = "\(.*\)"/\1/p' .cargo/config.toml)
if [ "$PDIFF_GPU_USABLE" != 1 ]; then
  echo "SKIPPED: CUDA tests ($PDIFF_GPU_REASON)"
elif [ "${PDIFF_LEAN:-0}" = 1 ]; then
  echo "SKIPPED: CUDA tests (PDIFF_LEAN=1: the lean CPU build, although $PDIFF_GPU_REASON)"
elif [ "$torch_cuda" != 1 ]; then
  echo "a usable GPU is visible ($PDIFF_GPU_REASON) but .cargo/config.toml has PDIFF_TORCH_CUDA=\"$torch_cuda\": run scripts/setup.sh, which switches to the CUDA venv" >&2
  exit 1
else
  cargo test --release -p pdiff-train --test cuda -- --ignored --test-threads=1
fi
bash tests/setup/test_detect.sh
bash tests/setup/test_gpu_check.sh

step "2. Fuzzing"
bash scripts/fuzz.sh   # 45 s per target, or $PDIFF_FUZZ_SECONDS

step "3. A Python host with nothing of libpdiff"
cargo build --release --workspace
.venv/bin/python -m pytest -q -p no:cacheprovider tests/python

step "4. C ABI"
# 4a. The committed header is exactly what cbindgen generates from the C ABI crate.
CBINDGEN_VERSION=0.29.4
if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
  echo "cbindgen $CBINDGEN_VERSION is needed (have: $(cbindgen --version 2>/dev/null || echo none)); run scripts/setup.sh" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cbindgen --quiet --config cbindgen.toml --crate pdiff --output "$tmp/pdiff.h"
if ! diff -u include/pdiff.h "$tmp/pdiff.h"; then
  echo "include/pdiff.h is stale: cbindgen --config cbindgen.toml --crate pdiff --output include/pdiff.h" >&2
  exit 1
fi
# 4b. Both libraries export pdiff_* and nothing else, hold no path of this checkout, and the
#     serve-only one needs no libtorch, OpenMP or CUDA library.
cargo build --release -p pdiff --no-default-features --lib --target-dir "$SERVE_TARGET"
FULL_LIB=target/release/libpdiff.so
SERVE_LIB=$SERVE_TARGET/release/libpdiff.so
for lib in "$FULL_LIB" "$SERVE_LIB"; do
  foreign=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TtWwDdBbRrVv]$/ && $3 !~ /^pdiff_/ {print $3}')
  [ -z "$foreign" ] || { echo "$lib exports symbols that are not pdiff_*: $foreign" >&2; exit 1; }
  if strings "$lib" | grep -F "$ROOT" >/dev/null; then
    echo "$lib holds paths of the build tree ($ROOT):" >&2; strings "$lib" | grep -F "$ROOT" | head -n 5 >&2; exit 1
  fi
done
if ldd "$SERVE_LIB" | grep -Ei 'torch|c10|gomp|cuda|cudnn|cublas' >/dev/null; then
  echo "the serve-only library needs libtorch/OpenMP/CUDA:" >&2; ldd "$SERVE_LIB" >&2; exit 1
fi
echo "exports and paths ok: $(du -h "$FULL_LIB" | cut -f1) full, $(du -h "$SERVE_LIB" | cut -f1) serve-only"
# 4c. A C host: -Wall -Werror against the header, everything (training included). The full
#     library finds libtorch through the loader: here the venv's, by LD_LIBRARY_PATH.
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PDIFF_ORT_LIB="$ORT_LIB"
cc_host() { gcc -Wall -Werror -Iinclude "$1" -L"$2" -lpdiff -Wl,-rpath,"$ROOT/$2" -pthread -lm -o "$3"; }
cc_host tests/c/test_pdiff.c target/release target/test_pdiff
target/test_pdiff --export "$tmp/bundle"
# 4d. Memcheck: everything but the (slow under valgrind) training, on the bundle trained above.
#     tests/c/valgrind.supp only covers third-party libraries, never libpdiff frames.
valgrind --quiet --error-exitcode=1 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --suppressions=tests/c/valgrind.supp target/test_pdiff --bundle "$tmp/bundle"
# 4e. No leak across open/sample/free cycles: 1,000 natively (resident memory must stop growing:
#     under 8 MiB over the last 500; a leaked session would be ~5 MB per cycle), a few under memcheck.
cc_host tests/c/leak_cycles.c target/release target/leak_cycles
target/leak_cycles "$tmp/bundle" 1000 8192
valgrind --quiet --error-exitcode=1 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --suppressions=tests/c/valgrind.supp target/leak_cycles "$tmp/bundle" 3
# 4f. Best-of-N memory is bounded: 400,000 candidates of the fixture bundle (D = 144: 220 MiB if
#     held at once) within 64 MiB of peak growth (they are sampled and scored in chunks).
cc_host tests/c/best_of_n_memory.c target/release target/best_of_n_memory
target/best_of_n_memory tests/fixtures/tiny-bundle 400000 64
# 4f'. Streaming into host tensors holds no n x D copy: one tensor of 400,000 models into the
#      host's own buffer (touched before), peak growth within 64 MiB (n x D would be 220 MiB).
cc_host tests/c/stream_memory.c target/release target/stream_memory
target/stream_memory tests/fixtures/tiny-bundle 400000 64
# 4f''. Hostile files through a C host (tests/c/make_hostile.py): crafted manifests, links
#      out of the bundle, FIFOs, devices, and 4 GiB tensors, under a 4 GiB address-space limit so
#      that an allocation not sized by what a file holds fails: each case must give its status and
#      a message, the host must live on. Full and serve-only libraries.
target/release/pdiff export --generator tests/fixtures/tiny-bundle --out "$tmp/external-bundle" --inline-graph-limit 0 >/dev/null
.venv/bin/python tests/c/make_hostile.py tests/fixtures/tiny-bundle "$tmp/external-bundle" "$tmp/hostile"
cc_host tests/c/hostile.c target/release target/hostile
(ulimit -v $((4 << 20)); timeout 600 target/hostile "$tmp/hostile")
mkdir "$tmp/serve-include"
cp include/pdiff.h "$tmp/serve-include/"
sed -e 's|^#define PDIFF_FEATURE_TRAIN 1$|/* serve-only build */|' include/pdiff_features.h > "$tmp/serve-include/pdiff_features.h"
gcc -Wall -Werror -I"$tmp/serve-include" tests/c/hostile.c -L"$SERVE_TARGET/release" -lpdiff -Wl,-rpath,"$ROOT/$SERVE_TARGET/release" \
    -pthread -lm -o target/hostile_serve
(ulimit -v $((4 << 20)); timeout 600 target/hostile_serve "$tmp/hostile")
# 4g. Data races: the C thread test alone (8 threads sharing one sampler, ONNX Runtime with one
#     intra-op thread) under ThreadSanitizer, against a serve-only libpdiff whose Rust code (the
#     engine and every dependency) is instrumented with -Zsanitizer=thread on the stable toolchain
#     (RUSTC_BOOTSTRAP=1, as cargo-fuzz does for ASan; --target keeps build scripts and proc
#     macros uninstrumented). The standard library is not rebuilt (-Zbuild-std needs the rust-src
#     component, which cannot be installed here, hence -Cunsafe-allow-abi-mismatch): its generic
#     and inline code (Arc, Mutex, atomics) is compiled into our crates and checked; its
#     out-of-line code and ONNX Runtime are not, though their pthread calls are intercepted. No
#     suppressions: any report fails the suite. The C host links the TSan runtime that rustc
#     ships (gcc 12's libtsan lacks __tsan_memcpy, which rustc's instrumentation calls) and
#     exports it to libpdiff.so (-rdynamic). About 3 minutes to build the first time, 1 s to run.
HOST_TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
TSAN_TARGET=target/tsan
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer" \
    cargo build --release -p pdiff --no-default-features --lib --target "$HOST_TRIPLE" --target-dir "$TSAN_TARGET"
TSAN_LIBDIR=$TSAN_TARGET/$HOST_TRIPLE/release
case "$(nm -D --undefined-only "$TSAN_LIBDIR/libpdiff.so")" in
  *" __tsan_func_entry"*) ;;
  *) echo "$TSAN_LIBDIR/libpdiff.so is not instrumented by ThreadSanitizer" >&2; exit 1 ;;
esac
TSAN_RUNTIME=$(ls "$(rustc --print target-libdir)"/librustc-*_rt.tsan.a | head -n1)
# The serve-only header (4f''): the C test then leaves training out.
gcc -Wall -Werror -g -O1 -fsanitize=thread -I"$tmp/serve-include" -c tests/c/test_pdiff.c -o "$tmp/test_pdiff_tsan.o"
gcc -rdynamic "$tmp/test_pdiff_tsan.o" -Wl,--whole-archive "$TSAN_RUNTIME" -Wl,--no-whole-archive \
    -L"$TSAN_LIBDIR" -lpdiff -Wl,-rpath,"$ROOT/$TSAN_LIBDIR" -pthread -ldl -lm -lrt -o target/test_pdiff_tsan
TSAN_OPTIONS="halt_on_error=0 exitcode=66 second_deadlock_stack=1" \
    timeout 300 target/test_pdiff_tsan --bundle "$tmp/bundle" --threads-only

step "5. Bindings and the serve-only library against the C reference samples"
# Reference: n = 3, seed 42, DDIM 10 steps, CPU, as raw little-endian f32, from the full build.
cc_host tests/c/sample_dump.c target/release target/sample_dump
target/sample_dump "$tmp/bundle" "$tmp/c_samples.f32"
# The serve-only library: the same bits.
cc_host tests/c/sample_dump.c "$SERVE_TARGET/release" target/sample_dump_serve
target/sample_dump_serve "$tmp/bundle" "$tmp/serve_samples.f32"
cmp "$tmp/c_samples.f32" "$tmp/serve_samples.f32"
echo "serve-only build: samples equal to the full build's, bit for bit"
# C++ (header-only RAII wrapper): its own checks, then the same samples bit for bit (and a
# generator trained in C++ with the C test's data and options reproduces them too).
g++ -std=c++17 -Wall -Werror -Iinclude -Ibindings/cpp bindings/cpp/test_pdiff.cpp -Ltarget/release -lpdiff \
    -Wl,-rpath,"$ROOT/target/release" -pthread -o target/test_pdiff_cpp
target/test_pdiff_cpp --bundle "$tmp/bundle" --expect "$tmp/c_samples.f32" --out "$tmp/cpp_samples.f32"
# Python (cffi over pdiff.h): the package as pip installs it, tested from outside the checkout,
# against the full and the serve-only library.
.venv/bin/pip install -q --target "$tmp/pysite" --no-deps --no-build-isolation --check-build-dependencies bindings/python
py_test() {  # LIBRARY EXPECT_TRAINING(1|0) [VAR=VALUE...]
  local library=$1 training=$2; shift 2
  (cd "$tmp" && env PYTHONPATH="$tmp/pysite" PDIFF_TEST_INSTALLED=1 PDIFF_TEST_TRAINING="$training" \
      PDIFF_TEST_STUBTEST=1 \
      PDIFF_LIB="$library" PDIFF_TEST_C_BUNDLE="$tmp/bundle" PDIFF_TEST_C_SAMPLES="$tmp/c_samples.f32" \
      PDIFF_TEST_CPP_SAMPLES="$tmp/cpp_samples.f32" "$@" \
      "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/bindings/python/tests")
}
py_test "$ROOT/$FULL_LIB" 1
py_test "$ROOT/$SERVE_LIB" 0
# The wheel (make wheel: the serve-only library inside, scripts/wheel.sh) in a FRESH venv: pip
# installs it and its dependencies from PyPI (onnxruntime, numpy, cffi), and the binding's tests
# run there with no $PDIFF_LIB / $PDIFF_ORT_LIB and no LD_LIBRARY_PATH.
bash scripts/wheel.sh serve "$tmp/wheels"
wheel=$(ls "$tmp"/wheels/pdiff-*.whl)
"${PYTHON:-python3.11}" -m venv "$tmp/wheel-venv"
start=$(date +%s)
"$tmp/wheel-venv/bin/pip" install -q "$wheel"
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB, installed with its dependencies in $(($(date +%s) - start)) s"
"$tmp/wheel-venv/bin/pip" install -q pytest "mypy>=1.10" safetensors  # the tests' own needs
(cd "$tmp" && env -u LD_LIBRARY_PATH -u PDIFF_ORT_LIB PDIFF_TEST_INSTALLED=1 PDIFF_TEST_TRAINING=0 PDIFF_TEST_WHEEL=serve \
    PDIFF_TEST_STUBTEST=1 PDIFF_TEST_C_BUNDLE="$tmp/bundle" PDIFF_TEST_C_SAMPLES="$tmp/c_samples.f32" \
    PDIFF_TEST_CPP_SAMPLES="$tmp/cpp_samples.f32" \
    "$tmp/wheel-venv/bin/python" -m pytest -q -p no:cacheprovider "$ROOT/bindings/python/tests")

step "6. Installs"
# 6a. Serve-only into a prefix; a C host built with pkg-config and a C++ host built with CMake
#     find_package(pdiff) run with an EMPTY environment (no venv, no LD_LIBRARY_PATH): ONNX
#     Runtime given only through PDIFF_ORT_LIB. Their samples equal the full build's bit for bit.
prefix="$tmp/serve-prefix"
make --no-print-directory install-serve PREFIX="$prefix" >/dev/null
test "$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --modversion pdiff)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
# shellcheck disable=SC2046  # word splitting of pkg-config's flags is intended
gcc -Wall -Werror tests/c/sample_dump.c $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs pdiff) -o "$tmp/host_c"
cmake -S tests/install -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$tmp/cmake-build" >/dev/null
for host in "$tmp/host_c" "$tmp/cmake-build/sample_dump_cpp"; do
  ldd "$host" | grep -F "$prefix/lib/libpdiff.so" >/dev/null || { echo "$host does not use the installed libpdiff" >&2; exit 1; }
  env -i PDIFF_ORT_LIB="$ORT_LIB" "$host" "$tmp/bundle" "$tmp/installed.f32"
  cmp "$tmp/c_samples.f32" "$tmp/installed.f32"
done
# The serve-only header hides training: a host that uses it does not compile.
printf '#include <pdiff.h>\nint main(void) { pdiff_train_options o; return (int)pdiff_train_options_default(&o); }\n' > "$tmp/train_host.c"
if gcc -Werror -I"$prefix/include" -c "$tmp/train_host.c" -o "$tmp/train_host.o" 2>/dev/null; then
  echo "the serve-only pdiff.h still declares the training API" >&2; exit 1
fi
echo "serve-only install: pkg-config C host and CMake C++ host, empty environment, samples equal"
# 6b. Full build into another prefix: it links with pdiff.pc (which passes libtorch's directory
#     to the linker) and runs with libtorch on the loader path.
prefix="$tmp/full-prefix"
make --no-print-directory install PREFIX="$prefix" >/dev/null
# shellcheck disable=SC2046
gcc -Wall -Werror "$tmp/train_host.c" $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs pdiff) -o "$tmp/train_host"
env -i LD_LIBRARY_PATH="$TORCH_LIB" "$tmp/train_host"
echo "full install: a training host links with pkg-config and runs"
