#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests, then the Python cross-checks of exported
# ONNX graphs (run from the project venv, no part of this library involved).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -- --test-threads=2
# A host with nothing of libpdiff: the exported bundle through onnx + onnxruntime (project venv).
cargo build --release --bin pdiff
.venv/bin/python -m pytest -q tests/python
