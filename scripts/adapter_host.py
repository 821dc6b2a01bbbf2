#!/usr/bin/env python3
"""The reference host of ONNX Runtime adapters in Python (onnxruntime alone, nothing of
libpdiff): repeats `pdiff bench adapters` with ONNX Runtime's Python API on what it wrote with
--artifacts: ONE InferenceSession over the exposed mnist-cnn-bn model, each generated model's
adapter loaded with `onnxruntime.LoraAdapter` and activated with `RunOptions.add_active_adapter`,
the test split classified; every accuracy must equal the tools' evaluation in the bench report.

    python scripts/adapter_host.py ARTIFACTS_DIR REPORT.json [--out SUMMARY.json]
"""
import argparse
import json
import pathlib
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifacts", type=pathlib.Path)
    p.add_argument("report", type=pathlib.Path)
    p.add_argument("--out", type=pathlib.Path)
    a = p.parse_args()
    report = json.loads(a.report.read_text())
    images = np.fromfile(a.artifacts / "test_images.f32", dtype="<f4").reshape(-1, 784)
    labels = np.fromfile(a.artifacts / "test_labels.i64", dtype="<i8")
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ONNX Runtime warns once per exposed initializer; expected here
    sess = ort.InferenceSession(str(a.artifacts / "mnist-cnn-bn-adaptable.onnx"), so, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    accuracies = []
    for i in range(report["models"]):
        adapter = ort.LoraAdapter()
        adapter.Load(str(a.artifacts / f"gen_{i:04d}.onnx_adapter"))
        opts = ort.RunOptions()
        opts.add_active_adapter(adapter)
        logits = sess.run(["logits"], {"images": images}, opts)[0]
        accuracies.append(float(np.mean(np.argmax(logits, axis=1) == labels)))
    seconds = time.perf_counter() - t0
    equal = sum(h == t for h, t in zip(accuracies, report["tools_accuracies"]))
    summary = {"host": f"onnxruntime {ort.__version__} (Python)", "models": len(accuracies), "test_images": int(len(labels)),
               "equal_to_tools": equal, "equal_to_rust_host": sum(h == r for h, r in zip(accuracies, report["host_accuracies"])),
               "accuracies": accuracies, "seconds": seconds}
    print(f"{summary['host']}: {equal} of {len(accuracies)} accuracies equal the tools' evaluation "
          f"({summary['equal_to_rust_host']} equal the Rust host's), one session, {seconds:.1f} s")
    if a.out:
        a.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if equal == len(accuracies) else 1


if __name__ == "__main__":
    sys.exit(main())
