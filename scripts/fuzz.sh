#!/usr/bin/env bash
# Run the cargo-fuzz (libFuzzer) targets for a bounded time each: scripts/fuzz.sh [SECONDS].
# SECONDS defaults to $PDIFF_FUZZ_SECONDS, else 45 (what `make test` runs; `make fuzz` passes 600).
# The committed corpus under fuzz/corpus/<target> seeds each run; new inputs go to a scratch
# directory, crashes to fuzz/artifacts/<target>/ (and the run fails).
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
#
# An allocation whose size an input chooses, made without a check, must be a finding, not a pass:
# the library's large allocations are fallible (an error, PDIFF_ERR_OUT_OF_MEMORY), an unchecked
# one aborts the host when memory runs out. Two runs, so that such an abort happens here:
# 1. Every target built with AddressSanitizer (memory errors), SECONDS each. ASan reserves
#    terabytes of shadow memory, so the process cannot run under an address-space limit; instead
#    ASan's allocator fails any single allocation above 512 MiB (max_allocation_size_mb, with
#    allocator_may_return_null=1: it returns NULL as an exhausted address space would). A checked
#    allocation then becomes the library's error, an unchecked one Rust's abort ("memory
#    allocation of N bytes failed"), a crash. 512 MiB is generous: inputs are at most 64 KiB and
#    every size must be bounded by what the input holds. (libFuzzer's -malloc_limit_mb is not
#    used: it reports every allocation above the limit, the fallible ones the library handles
#    too; its default, -rss_limit_mb's 4096, let a 3 GiB unchecked allocation pass.)
# 2. The targets that read files (checkpoint, manifest, conditions, bundle_dir) built without
#    sanitizer (cargo fuzz build -s none, in fuzz/target/nosan), SECONDS/3 each (at least 10 s),
#    started from the corpus the first run reached, each process limited to 2 GiB of address
#    space (PDIFF_FUZZ_ADDRESS_SPACE_MB: setrlimit(RLIMIT_AS) when the target starts,
#    fuzz/src/lib.rs) as `ulimit -v` would limit a host: allocations fail by the process's total,
#    not only one at a time, and ONNX Runtime's own allocations fail as they would in that host.
#    bundle_dir peaks at about 450 MiB of address space (ONNX Runtime included). The second
#    build costs about a minute the first time (as the ASan one, on 2 cores), seconds after.
# Checked locally (not committed) with a target allocating vec![0u8; 3 << 30]: a crash under both
# runs' settings ("memory allocation of 3221225472 bytes failed", libFuzzer: deadly signal,
# the input written as a crash artifact), none under the old ones; try_reserve of the same size
# returns an error under both, no crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-${PDIFF_FUZZ_SECONDS:-45}}
TARGETS=(checkpoint manifest conditions onnx_graph bundle_dir)
LIMITED_TARGETS=(checkpoint manifest conditions bundle_dir)
LIMITED_SECONDS=$((SECONDS_EACH / 3 > 10 ? SECONDS_EACH / 3 : 10))
ADDRESS_SPACE_MB=2048
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
export RUSTC_BOOTSTRAP=1
# The targets use the serve-only engine and C ABI (no libtorch); onnx_graph and bundle_dir need
# ONNX Runtime.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)
export PDIFF_ORT_LIB=$ORT_LIB
# ONNX Runtime's own allocations at exit are not ours: leaks are checked by valgrind on the C
# API instead. The allocation limit: run 1 above.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=512
NOSAN_DIR=target/nosan   # relative to fuzz/
(cd fuzz && cargo fuzz build -O && cargo fuzz build -O -s none --target-dir "$NOSAN_DIR")
echo "[fuzz] built in ${SECONDS}s"
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN=fuzz/target/$HOST/release
NOSAN_BIN=fuzz/$NOSAN_DIR/$HOST/release
for target in "${TARGETS[@]}"; do
  [ -x "$BIN/$target" ] || { echo "[fuzz] $BIN/$target was not built" >&2; exit 1; }
  [ -x "$NOSAN_BIN/$target" ] || { echo "[fuzz] $NOSAN_BIN/$target was not built" >&2; exit 1; }
done

# Before fuzzing, the targets must be able to find bugs at all (each binary run on given files,
# outcomes printed by PDIFF_FUZZ_VERBOSE=1):
# - without ONNX Runtime, the targets that need it refuse to start (else every input would be
#   "an error" and the run would be green while testing nothing);
for bin in "$BIN" "$NOSAN_BIN"; do
  for target in onnx_graph bundle_dir; do
    if out=$(PDIFF_ORT_LIB=/nonexistent/libonnxruntime.so "$bin/$target" fuzz/corpus/$target/* 2>&1); then
      echo "[fuzz] $bin/$target ran without ONNX Runtime: it would test nothing" >&2; exit 1
    fi
    grep -q "ONNX Runtime is not loaded" <<<"$out" || { echo "[fuzz] $bin/$target failed without naming ONNX Runtime:" >&2; echo "$out" | tail -n 20 >&2; exit 1; }
  done
done
# - the committed seeds reach what they are meant to: the fixture's graph loads, the valid
#   bundle seeds open and sample through the C ABI (DDIM, DDPM with the samples written as files,
#   and an empty edit script of the fixture's manifest), the others stop where they should (a
#   graph with external data is refused: no data file is given to the bare graph loader); the
#   valid conditions files are read, the others refused for what they hold (a key twice, a file
#   name two checkpoints share, a checkpoint given twice); regress-* are the fuzzer's past finds;
# - the limited build limits its address space, and the seeds still reach sampling under it (a
#   limit every allocation hits would make every input "an error").
expect_outcome() {  # TARGET SEED EXPECTED-LINE-FRAGMENT [BIN]
  local out
  out=$(PDIFF_FUZZ_VERBOSE=1 "${4:-$BIN}/$1" "fuzz/corpus/$1/$2" 2>&1) || { echo "$out" | tail -n 20 >&2; exit 1; }
  grep "^$1: " <<<"$out" | grep -qF "$3" || { echo "[fuzz] $1 on seed $2: expected '$3', got:" >&2; grep "^$1: " <<<"$out" >&2; exit 1; }
}
expect_outcome onnx_graph decoder.onnx "onnx_graph: loaded"
expect_outcome onnx_graph external-data-decoder.onnx "keeps its data in external file 'decoder.onnx.data', which is not given"
expect_outcome bundle_dir fixture-ddim-fixhashes "bundle_dir: sampled [2, 144] with Ddim { steps: 10 }"
expect_outcome bundle_dir fixture-ddpm-files "bundle_dir: sampled [1, 144] with Ddpm"
expect_outcome bundle_dir fixture-stale-hash "PDIFF_ERR_BUNDLE: pdiff_sampler_open: bundle "
expect_outcome bundle_dir fixture-stale-hash "decoder.onnx: sha256 mismatch"
expect_outcome bundle_dir edit-none "bundle_dir: sampled [4, 144] with Ddim { steps: 16 }"
expect_outcome bundle_dir edit-latent-dim "latent_dim 17 differs from the autoencoder's (16)"
expect_outcome bundle_dir regress-huge-timesteps "schedule.timesteps"
expect_outcome conditions json-named "conditions: conditions.json: 5 vectors of 3, named"
expect_outcome conditions csv-header "conditions: conditions.csv: 5 vectors of 3, named"
expect_outcome conditions csv-plain "conditions: conditions.csv: 5 vectors of 1"
expect_outcome conditions json-duplicate-key "key 'c01.safetensors' appears twice"
expect_outcome conditions json-ambiguous-name "'c00.safetensors' names two checkpoints"
expect_outcome conditions csv-path-and-name "checkpoint 'ckpt/c01.safetensors' is given twice"
export PDIFF_FUZZ_ADDRESS_SPACE_MB=$ADDRESS_SPACE_MB
out=$(PDIFF_FUZZ_VERBOSE=1 "$NOSAN_BIN/checkpoint" fuzz/corpus/checkpoint/* 2>&1) || { echo "$out" | tail -n 20 >&2; exit 1; }
grep -qF "address space limited to $ADDRESS_SPACE_MB MiB" <<<"$out" || { echo "[fuzz] $NOSAN_BIN/checkpoint did not limit its address space:" >&2; echo "$out" | tail -n 20 >&2; exit 1; }
expect_outcome bundle_dir fixture-ddpm-files "bundle_dir: sampled [1, 144] with Ddpm" "$NOSAN_BIN"
expect_outcome bundle_dir edit-none "bundle_dir: sampled [4, 144] with Ddim { steps: 16 }" "$NOSAN_BIN"
expect_outcome conditions json-named "conditions: conditions.json: 5 vectors of 3, named" "$NOSAN_BIN"
unset PDIFF_FUZZ_ADDRESS_SPACE_MB
echo "[fuzz] seeds reach their paths (also under the address-space limit); the ONNX Runtime targets refuse to run without it"

# Each run prints its final coverage line (cov: edges, ft: features, corp: corpus) and counts;
# a crash prints the end of its log, and its input is in fuzz/artifacts/<target>/.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fuzz_run() {  # TARGET SECONDS [cargo fuzz run options...]
  local target=$1 seconds=$2 log=$scratch/$1.log
  shift 2
  mkdir -p "$scratch/$target"
  if ! (cd fuzz && cargo fuzz run -O "$@" "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[fuzz] $target failed: the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log"
}
for target in "${TARGETS[@]}"; do
  echo "[fuzz] $target for ${SECONDS_EACH}s (AddressSanitizer, allocations above 512 MiB fail)"
  fuzz_run "$target" "$SECONDS_EACH"
done
for target in "${LIMITED_TARGETS[@]}"; do
  echo "[fuzz] $target for ${LIMITED_SECONDS}s (no sanitizer, address space limited to $ADDRESS_SPACE_MB MiB)"
  PDIFF_FUZZ_ADDRESS_SPACE_MB=$ADDRESS_SPACE_MB fuzz_run "$target" "$LIMITED_SECONDS" -s none --target-dir "$NOSAN_DIR"
done
echo "[fuzz] no crash (${SECONDS}s in all)"
