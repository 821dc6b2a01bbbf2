#!/usr/bin/env bash
# make test-peft: Hugging Face PEFT, the real client, on the PEFT adapter directories that
# `pdiff sample --format peft` writes (tests/python/test_peft.py). PEFT needs an importable
# torch, which the lean venv of setup.sh does not have (it carries libtorch for linking, without
# the CUDA libraries torch's Python module loads), so this test runs in target/torch-venv (scripts/lib/torch-venv.sh,
# shared with make test-torch: torch from PyPI, about 4.8 GB, minutes the first time) with the
# pinned transformers and peft added. Not part of make test: CI's time budget has no room for that install.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck source=scripts/lib/torch-venv.sh
source scripts/lib/torch-venv.sh
pdiff_torch_venv transformers==5.25.0 peft==0.22.0 safetensors
cargo build --release -p pdiff-tools
"$TORCH_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python/test_peft.py
