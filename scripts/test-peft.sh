#!/usr/bin/env bash
# make test-peft: Hugging Face PEFT, the real client, on the PEFT adapter directories that
# `pdiff sample --format peft` writes (tests/python/test_peft.py). PEFT needs an importable
# torch, which the lean venv of setup.sh does not have (it carries libtorch for linking, without
# the CUDA libraries torch's Python module loads), so this test gets its own venv, .venv-peft,
# with the pinned torch, transformers and peft from PyPI (about 4.8 GB, minutes to install the
# first time). Not part of make test: CI's time budget has no room for that install.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=.venv-peft
PINS=(torch==2.11.0 transformers==5.25.0 peft==0.22.0 safetensors pytest numpy)
if [ ! -f "$VENV/.pdiff-pins" ] || [ "$(cat "$VENV/.pdiff-pins")" != "${PINS[*]}" ]; then
  echo "[test-peft] creating $VENV (${PINS[*]})"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PINS[@]}"
  echo "${PINS[*]}" > "$VENV/.pdiff-pins"
fi
cargo build --release -p pdiff-tools
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python/test_peft.py
