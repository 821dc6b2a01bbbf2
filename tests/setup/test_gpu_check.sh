#!/usr/bin/env bash
# scripts/gpu-check.sh and scripts/gpu_report.py on a CPU machine.
#   default: the quick checks (about 10 s; scripts/test.sh runs them):
#     - bad command lines; the stages' input checks on a machine without a GPU build;
#     - the onnxruntime-gpu wheel carried in parts (real `ort` stage): a part at a time, joined
#       and verified, a corrupt part refused;
#     - the cheap stages of the rehearsal (ort env tests report --dry-run) and the page it makes;
#     - the page generator: "not yet run", dry-run results kept out of docs/gpu.md, mixed
#       results refused.
#   --full: also the whole rehearsal (`--dry-run all`: tiny demo, paper preset, sampling sweeps,
#     training steps; several minutes on 2 cores), every figure of its page checked against the
#     result files.
# Needs the build (target/release/pdiff, the cuda test binary) and the venv of scripts/setup.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
FULL=0
[ "${1:-}" = --full ] && FULL=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; failures=$((failures + 1)); }
# check NAME COMMAND...: pass when COMMAND succeeds.
check() {
  local name=$1; shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}
has() { grep -qF -- "$2" "$1"; }
json() { "$ROOT/.venv/bin/python" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'d': d}))" "$@"; }

GC=$ROOT/scripts/gpu-check.sh
REPORT=$ROOT/scripts/gpu_report.py
doc_before=$(sha256sum "$ROOT/docs/gpu.md")

echo "--- command line"
set +e
bash "$GC" --dry-run bogus > "$tmp/o" 2>&1; rc=$?
set -e
check "unknown stage: exit 2, named" test "$rc" = 2 -a -n "$(grep "unknown stage or option 'bogus'" "$tmp/o")"
set +e
bash "$GC" > "$tmp/o" 2>&1; rc=$?
set -e
check "no stage: exit 2 with the usage" test "$rc" = 2 -a -n "$(grep "Stages (several may be given" "$tmp/o")"

echo "--- input checks of the real stages (a scratch checkout without .gpu/)"
repo=$tmp/repo
mkdir -p "$repo/scripts/lib" "$repo/docs"
cp "$ROOT/scripts/gpu-check.sh" "$ROOT/scripts/gpu_report.py" "$repo/scripts/"
cp "$ROOT/scripts/lib/gpu.sh" "$repo/scripts/lib/"
# python3 is the venv's here: it has torch's and onnxruntime's files, like the GPU machine's.
pybin=$tmp/pybin
mkdir -p "$pybin"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$ROOT/.venv/bin/python" > "$pybin/python3"
chmod +x "$pybin/python3"
real() { env PATH="$pybin:$PATH" OUT= bash "$repo/scripts/gpu-check.sh" --out "$tmp/real-out" --work "$tmp/real-work" "$@"; }
set +e
real env > "$tmp/o" 2>&1; rc=$?
set -e
check "env without .gpu/pdiff: exit 1, says what is missing and how to get it" \
  test "$rc" = 1 -a -n "$(grep -F "$repo/.gpu/pdiff is missing: run 'scripts/gpu-check.sh pack' on the build machine and carry .gpu/ with this run" "$tmp/o")"
check "  and the stage's record says it failed, with the error" \
  test "$(json "$tmp/real-out/env.json" "d['status'] + ' ' + str('pdiff is missing' in d['error'])")" = "failed True"
mkdir -p "$repo/.gpu"
cp "$ROOT/target/release/pdiff" "$repo/.gpu/pdiff"
set +e
real demo > "$tmp/o" 2>&1; rc=$?
set -e
check "a pdiff built without PDIFF_TORCH_CUDA=1: refused, naming the fix" \
  test "$rc" = 1 -a -n "$(grep -F "is not linked with libtorch_cuda.so: build it with PDIFF_TORCH_CUDA=1" "$tmp/o")"
set +e
bash "$GC" --dry-run --out "$tmp/early-out" --work "$tmp/early-work" sample > "$tmp/o" 2>&1; rc=$?
set -e
check "sample before the wheel is assembled: refused, naming the ort stage" \
  test "$rc" = 1 -a -n "$(grep -F "the onnxruntime-gpu wheel is not assembled in $tmp/early-work/ort-gpu: run the 'ort' stage" "$tmp/o")"
set +e
real ort > "$tmp/o" 2>&1; rc=$?
set -e
check "ort without the wheel's checksum: refused, naming pack-ort" \
  test "$rc" = 1 -a -n "$(grep -F "ort-gpu.sha256 or ort-gpu.parts is missing: run 'scripts/gpu-check.sh pack-ort'" "$tmp/o")"

echo "--- the wheel in parts (real ort stage, one run per part)"
# A stand-in wheel of ~1 MiB in 3 parts, laid out as pack-ort lays out the real one.
"$ROOT/.venv/bin/python" - "$tmp/onnxruntime_gpu-9.9.9-cp312-none-any.whl" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("onnxruntime/capi/libonnxruntime.so.9.9.9", os.urandom(1 << 20))
    z.writestr("onnxruntime_gpu-9.9.9.dist-info/METADATA", "Name: onnxruntime-gpu\nVersion: 9.9.9\n")
PY
(cd "$tmp" && sha256sum onnxruntime_gpu-9.9.9-cp312-none-any.whl) > "$repo/.gpu/ort-gpu.sha256"
split -d -a 2 -n 3 "$tmp/onnxruntime_gpu-9.9.9-cp312-none-any.whl" "$tmp/part."
printf 'part.00\npart.01\npart.02\n' > "$repo/.gpu/ort-gpu.parts"
carry() {  # carry PART...: .gpu-parts holds these parts only, as in one run
  rm -rf "$repo/.gpu-parts"
  local n
  for n in "$@"; do mkdir -p "$repo/.gpu-parts/$n"; cp "$tmp/part.$n" "$repo/.gpu-parts/$n/"; done
}
carry 00
real ort > "$tmp/o" 2>&1
check "part 1 of 3: kept, the missing ones named" has "$tmp/o" "1 of 3 parts here; still to carry: part.01 part.02"
check "  record: ok, not complete" test "$(json "$tmp/real-out/ort.json" "d['status'] + ' ' + str(d['complete'])")" = "ok False"
carry 02
real ort > "$tmp/o" 2>&1
check "part 3 (out of order)" has "$tmp/o" "2 of 3 parts here; still to carry: part.01"
carry 01
real ort > "$tmp/o" 2>&1
lib=$tmp/real-work/ort-gpu/wheel/onnxruntime/capi/libonnxruntime.so.9.9.9
check "last part: joined, checked, extracted" has "$tmp/o" "onnxruntime-gpu wheel assembled: $lib"
check "  the library is the wheel's, byte for byte" cmp -s "$lib" <("$ROOT/.venv/bin/python" -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('onnxruntime/capi/libonnxruntime.so.9.9.9'))" "$tmp/onnxruntime_gpu-9.9.9-cp312-none-any.whl")
check "  record: complete, library named" test "$(json "$tmp/real-out/ort.json" "str(d['complete']) + ' ' + d['library']")" = "True $lib"
check "  version read from the wheel" test "$("$ROOT/.venv/bin/python" "$REPORT" wheel-version "$tmp/real-work/ort-gpu/wheel")" = "9.9.9 (onnxruntime-gpu)"
carry
real ort > "$tmp/o" 2>&1
check "a later run without parts keeps the assembled wheel" has "$tmp/o" "already assembled: $lib"
# A corrupt part, in a fresh work dir.
printf 'X' | dd of="$tmp/part.01" bs=1 seek=100 conv=notrunc status=none
carry 00 01 02
set +e
env PATH="$pybin:$PATH" OUT= bash "$repo/scripts/gpu-check.sh" --out "$tmp/real-out2" --work "$tmp/real-work2" ort > "$tmp/o" 2>&1; rc=$?
set -e
check "a corrupt part: refused by sha256, parts removed to be carried again" \
  test "$rc" = 1 -a -n "$(grep -F "the joined wheel's sha256 is" "$tmp/o" | grep -F "the parts were removed, carry them again")"
check "  nothing assembled, nothing left half-joined" test ! -e "$tmp/real-work2/ort-gpu/wheel" -a ! -e "$tmp/real-work2/ort-gpu/parts"
check "  record: failed" test "$(json "$tmp/real-out2/ort.json" "d['status']")" = failed

echo "--- the rehearsal's cheap stages (--dry-run ort env tests report)"
out=$tmp/dry-out
bash "$GC" --dry-run --out "$out" --work "$tmp/dry-work" ort env tests report > "$tmp/o" 2>&1 || { cat "$tmp/o" >&2; fail "dry run of ort env tests report"; }
for s in ort env tests; do
  check "$s: ok, marked dry run" test "$(json "$out/$s.json" "d['status'] + ' ' + str(d['dry_run'])")" = "ok True"
done
check "ort: the stand-in wheel went through 3 parts" test "$(grep -c 'parts here; still to carry\|wheel assembled' "$out/ort.log")" = 3
venv_ort=$("$ROOT/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('onnxruntime'))")
venv_torch=$("$ROOT/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))")
check "env: torch and ONNX Runtime versions from the venv" \
  test "$(json "$out/env.json" "d['torch'] + ' ' + d['ort_cpu'] + ' ' + d['ort_gpu']")" = "$venv_torch $venv_ort $venv_ort (onnxruntime-gpu; dry-run stand-in: the CPU library)"
check "env: the detection's reason recorded" has "$out/env.json" '"detection": "dry run on the CPU machine: no NVIDIA GPU'
cuda_tests=$(grep -c '^#\[ignore' "$ROOT/crates/train/tests/cuda.rs")
check "tests: the CUDA tests listed (not run without a GPU)" test "$(json "$out/tests.json" "str(d['ran']) + ' ' + str(d['listed'])")" = "False $cuda_tests"
check "report: DRY RUN page" has "$out/gpu.md" "**DRY RUN on a CPU machine**"
check "report: the stages not run say so" has "$out/gpu.md" '_Stage `demo`: not run._'
check "report: versions on the page" has "$out/gpu.md" "| torch (its libtorch ran the training) | $venv_torch"

echo "--- the page generator"
"$ROOT/.venv/bin/python" "$REPORT" report --none --preview "$tmp/none.md" > /dev/null
check "no results: 'not yet run' page with the procedure" \
  test -n "$(grep -F "**Status: not yet run: no GPU was available.**" "$tmp/none.md")" -a -n "$(grep -F "## How to reproduce" "$tmp/none.md")"
check "  and no figure section" test -z "$(grep -E '^## (Machine|Sampling|Training speed)' "$tmp/none.md")"
set +e
"$ROOT/.venv/bin/python" "$REPORT" report "$out" --doc "$tmp/doc.md" > "$tmp/o" 2>&1; rc=$?
set -e
check "dry-run results never go into the doc" test "$rc" = 1 -a ! -e "$tmp/doc.md" -a -n "$(grep -F "never go into $tmp/doc.md" "$tmp/o")"
mkdir -p "$tmp/mixed"
cp "$out"/*.json "$tmp/mixed/"
"$ROOT/.venv/bin/python" -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['dry_run']=False; json.dump(d, open(p,'w'))" "$tmp/mixed/env.json"
set +e
"$ROOT/.venv/bin/python" "$REPORT" report "$tmp/mixed" --preview "$tmp/mixed.md" > "$tmp/o" 2>&1; rc=$?
set -e
check "dry-run and real results mixed: refused" test "$rc" = 1 -a -n "$(grep -F "mixed" "$tmp/o")"

if [ "$FULL" = 1 ]; then
  echo "--- the whole rehearsal (--dry-run all)"
  out=$tmp/full-out
  t0=$(date +%s)
  if bash "$GC" --dry-run --out "$out" --work "$tmp/full-work" all > "$tmp/full.log" 2>&1; then
    pass "--dry-run all: every stage ok ($(( $(date +%s) - t0 )) s)"
  else
    cat "$tmp/full.log" >&2
    fail "--dry-run all"
  fi
  for f in demo-results demo-bundle paper-results paper-bundle sample-demo-gpu sample-demo-cpu sample-paper-gpu sample-paper-cpu \
           train-steps-compact train-steps-paper; do
    check "result file $f.json" test -s "$out/$f.json"
  done
  # Figures on the page = figures in the files, formatted as the generator formats them.
  row=$(json "$out/demo-results.json" "'| generated (N = %d) | %.4f | %.4f | %.4f | %.4f |' % (d['n_generated'], d['generated']['best'], d['generated']['mean'], d['generated']['median'], d['generated']['min'])")
  check "page: the demo's generated accuracies from demo-results.json" has "$out/gpu.md" "$row"
  row=$(json "$out/paper-results.json" "'| originals (K = %d) | %.4f | %.4f | %.4f | %.4f |' % (d['k'], d['originals']['best'], d['originals']['mean'], d['originals']['median'], d['originals']['min'])")
  check "page: the paper run's originals from paper-results.json" has "$out/gpu.md" "$row"
  rate=$(json "$out/sample-demo-cpu.json" "'%.1f' % d['rows'][0]['models_per_second']")
  check "page: sampling rate from sample-demo-cpu.json ($rate models/s)" has "$out/gpu.md" "| $rate |"
  step=$(json "$out/train-steps-paper.json" "'%.2f' % d['ae_ms_per_step']")
  check "page: paper ms/step from train-steps-paper.json ($step)" has "$out/gpu.md" "| $step |"
  check "page: demo trained on the rehearsal's device" has "$out/gpu.md" "trained on cpu"
fi

check "docs/gpu.md untouched by all of this" test "$(sha256sum "$ROOT/docs/gpu.md")" = "$doc_before"

if [ "$failures" -ne 0 ]; then
  echo "tests/setup/test_gpu_check.sh: $failures failure(s)" >&2
  exit 1
fi
echo "tests/setup/test_gpu_check.sh: all passed"
