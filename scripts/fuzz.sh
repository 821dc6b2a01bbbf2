#!/usr/bin/env bash
# Run the cargo-fuzz (libFuzzer) targets for a bounded time each: scripts/fuzz.sh [SECONDS].
# SECONDS defaults to $PDIFF_FUZZ_SECONDS, else 45 (what `make test` runs; `make fuzz` passes 600).
# The committed corpus under fuzz/corpus/<target> seeds each run; new inputs go to a scratch
# directory, crashes to fuzz/artifacts/<target>/ (and the run fails).
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-${PDIFF_FUZZ_SECONDS:-45}}
TARGETS=(checkpoint manifest onnx_graph bundle_dir)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
export RUSTC_BOOTSTRAP=1
# The targets use the serve-only engine (no libtorch); onnx_graph and bundle_dir need ONNX Runtime.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)
export PDIFF_ORT_LIB=$ORT_LIB
# ONNX Runtime's own allocations at exit are not ours: leaks are checked by valgrind on the C
# API instead.
export ASAN_OPTIONS=detect_leaks=0
(cd fuzz && cargo fuzz build -O)
BIN=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
for target in "${TARGETS[@]}"; do
  [ -x "$BIN/$target" ] || { echo "[fuzz] $BIN/$target was not built" >&2; exit 1; }
done

# Before fuzzing, the targets must be able to find bugs at all (each binary run on given files,
# outcomes printed by PDIFF_FUZZ_VERBOSE=1):
# - without ONNX Runtime, the targets that need it refuse to start (else every input would be
#   "an error" and the run would be green while testing nothing);
for target in onnx_graph bundle_dir; do
  if out=$(PDIFF_ORT_LIB=/nonexistent/libonnxruntime.so "$BIN/$target" fuzz/corpus/$target/* 2>&1); then
    echo "[fuzz] $target ran without ONNX Runtime: it would test nothing" >&2; exit 1
  fi
  grep -q "ONNX Runtime is not loaded" <<<"$out" || { echo "[fuzz] $target failed without naming ONNX Runtime:" >&2; echo "$out" | tail -n 20 >&2; exit 1; }
done
# - the committed seeds reach what they are meant to: the fixture's graph loads, the valid
#   bundle seeds open and sample (DDIM, DDPM, and an empty edit script of the fixture's
#   manifest), the others stop where they should (a graph with external data is refused: no data
#   file is given to the bare graph loader); regress-* are the fuzzer's past finds.
expect_outcome() {  # TARGET SEED EXPECTED-LINE-FRAGMENT
  local out
  out=$(PDIFF_FUZZ_VERBOSE=1 "$BIN/$1" "fuzz/corpus/$1/$2" 2>&1) || { echo "$out" | tail -n 20 >&2; exit 1; }
  grep "^$1: " <<<"$out" | grep -qF "$3" || { echo "[fuzz] $1 on seed $2: expected '$3', got:" >&2; grep "^$1: " <<<"$out" >&2; exit 1; }
}
expect_outcome onnx_graph decoder.onnx "onnx_graph: loaded"
expect_outcome onnx_graph external-data-decoder.onnx "keeps its data in external file 'decoder.onnx.data', which is not given"
expect_outcome bundle_dir fixture-ddim-fixhashes "bundle_dir: sampled [2, 144] with Ddim { steps: 10 }"
expect_outcome bundle_dir fixture-ddpm-files "bundle_dir: sampled [1, 144] with Ddpm"
expect_outcome bundle_dir fixture-stale-hash "decoder.onnx: sha256 mismatch"
expect_outcome bundle_dir edit-none "bundle_dir: sampled [4, 144] with Ddim { steps: 16 }"
expect_outcome bundle_dir edit-latent-dim "latent_dim 17 differs from the autoencoder's (16)"
expect_outcome bundle_dir regress-huge-timesteps "schedule.timesteps"
echo "[fuzz] seeds reach their paths; the ONNX Runtime targets refuse to run without it"

for target in "${TARGETS[@]}"; do
  scratch=$(mktemp -d)
  echo "[fuzz] $target for ${SECONDS_EACH}s"
  (cd fuzz && cargo fuzz run -O "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1 2>&1 | tail -n 12)
  rm -rf "$scratch"
done
echo "[fuzz] no crash"
