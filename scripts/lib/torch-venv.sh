# shellcheck shell=bash
# The venv with a torch that imports (torch from PyPI, about 4.8 GB), shared by make test-torch,
# make test-peft (and what else needs torch's Python module): the lean .venv's torch is libtorch
# for the Rust build only. Kept in target/torch-venv, complete (a stamp per torch version) or
# rebuilt. Usage: source this file, then `pdiff_torch_venv [extra pip requirements...]`; sets
# TORCH_VENV. Extra requirements are installed once per distinct list (a stamp of their own).
pdiff_torch_venv() {
  local torch_version ort_version py stamp extras_stamp
  torch_version=$(sed -n 's/^TORCH_VERSION=//p' scripts/setup.sh)
  ort_version=$(sed -n 's/^ORT_VERSION=//p' scripts/setup.sh)
  py=${PYTHON:-python3.11}
  command -v "$py" >/dev/null || py=python3
  TORCH_VENV=target/torch-venv
  stamp="$TORCH_VENV/.pdiff-complete-$torch_version"
  if [ ! -f "$stamp" ]; then
    echo "[torch-venv] creating $TORCH_VENV: torch==$torch_version from PyPI"
    rm -rf "$TORCH_VENV"
    "$py" -m venv "$TORCH_VENV"
    "$TORCH_VENV/bin/pip" install -q --upgrade pip
    "$TORCH_VENV/bin/pip" install -q "torch==$torch_version" "onnxruntime==$ort_version" numpy cffi pytest "mypy>=1.10" "setuptools>=77"
    touch "$stamp"
  fi
  if [ $# -gt 0 ]; then
    extras_stamp="$TORCH_VENV/.pdiff-extras-$(echo "$*" | sha256sum | cut -c1-16)"
    if [ ! -f "$extras_stamp" ]; then
      echo "[torch-venv] installing $*"
      "$TORCH_VENV/bin/pip" install -q "$@"
      touch "$extras_stamp"
    fi
  fi
}
