#!/usr/bin/env bash
# Run the cargo-fuzz (libFuzzer) targets for a bounded time each: scripts/fuzz.sh [SECONDS].
# SECONDS defaults to $PDIFF_FUZZ_SECONDS, else 45 (what `make test` runs; `make fuzz` passes 600).
# The committed corpus under fuzz/corpus/<target> seeds each run; new inputs go to a scratch
# directory, crashes to fuzz/artifacts/<target>/ (and the run fails).
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-${PDIFF_FUZZ_SECONDS:-45}}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
export RUSTC_BOOTSTRAP=1
# The targets use the serve-only engine (no libtorch); the ONNX graph target needs ONNX Runtime.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export PDIFF_ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)
# ONNX Runtime's own allocations at exit are not ours: leaks are checked by valgrind on the C
# API instead.
export ASAN_OPTIONS=detect_leaks=0
(cd fuzz && cargo fuzz build -O)
for target in checkpoint manifest onnx_graph; do
  scratch=$(mktemp -d)
  echo "[fuzz] $target for ${SECONDS_EACH}s"
  (cd fuzz && cargo fuzz run -O "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1 2>&1 | tail -n 12)
  rm -rf "$scratch"
done
echo "[fuzz] no crash"
