"""ONNX Runtime's own reader on the adapters `pdiff sample --format onnx-adapter` writes: every
file is read by `onnxruntime.AdapterFormat.read_adapter` (and loaded by `LoraAdapter`), and its
tensors are bit for bit those of the safetensors files of the same seed. Runs on the committed
fixture bundle (seconds)."""
import hashlib
import json
import pathlib
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
from safetensors import safe_open

ROOT = pathlib.Path(__file__).resolve().parents[2]
PDIFF = ROOT / "target" / "release" / "pdiff"
BUNDLE = ROOT / "tests" / "fixtures" / "tiny-bundle"
N = 5


def sample(out, *extra):
    r = subprocess.run([PDIFF, "sample", "--bundle", BUNDLE, "-n", str(N), "--seed", "11", "--steps", "10", "--provider", "cpu",
                        "--out", out, *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    return sample(tmp / "st"), sample(tmp / "ad", "--format", "onnx-adapter")


def test_onnxruntime_reads_every_adapter_bit_for_bit(outputs):
    st, ad = outputs
    layout = [t["name"] for t in json.loads((BUNDLE / "pdiff.json").read_text())["layout"]]
    for i in range(N):
        fmt = ort.AdapterFormat.read_adapter(str(ad / f"gen_{i:04d}.onnx_adapter"))
        assert fmt.get_format_version() == 1
        assert fmt.get_adapter_version() == i  # the model index
        params = {k: v.numpy() for k, v in fmt.get_parameters().items()}
        assert sorted(params) == sorted(layout)
        with safe_open(str(st / f"gen_{i:04d}.safetensors"), "np") as f:
            for name in layout:
                want = f.get_tensor(name)
                got = params[name]
                assert got.dtype == np.float32 and got.shape == want.shape, name
                assert got.tobytes() == want.tobytes(), f"model {i}, tensor {name}"
        # The run-time loader (memory-mapped) accepts it too.
        ort.LoraAdapter().Load(str(ad / f"gen_{i:04d}.onnx_adapter"))


def test_provenance_in_safetensors_metadata_and_beside_adapters(outputs):
    st, ad = outputs
    sha = hashlib.sha256((BUNDLE / "pdiff.json").read_bytes()).hexdigest()
    with safe_open(str(st / "gen_0003.safetensors"), "np") as f:
        meta = f.metadata()
    assert meta == {"pdiff.bundle_sha256": sha, "pdiff.seed": "11", "pdiff.model_index": "3", "pdiff.sampler": "ddim", "pdiff.steps": "10"}
    doc = json.loads((ad / "provenance.json").read_text())
    assert doc["bundle_sha256"] == sha and doc["seed"] == 11 and doc["sampler"] == "ddim" and doc["steps"] == 10
    assert doc["models"] == {f"gen_{i:04d}.onnx_adapter": {"model_index": i} for i in range(N)}


def test_adapter_names_follow_the_mapping(tmp_path):
    layout = [t["name"] for t in json.loads((BUNDLE / "pdiff.json").read_text())["layout"]]
    out = sample(tmp_path / "mapped", "--format", "onnx-adapter", "--adapter-name", f"{layout[0]}=host_input_0")
    params = ort.AdapterFormat.read_adapter(str(out / "gen_0000.onnx_adapter")).get_parameters()
    assert sorted(params) == sorted(["host_input_0", *layout[1:]])
    r = subprocess.run([PDIFF, "sample", "--bundle", BUNDLE, "-n", "1", "--format", "onnx-adapter", "--adapter-name", "no.such=x",
                        "--out", tmp_path / "bad"], capture_output=True, text=True)
    assert r.returncode != 0 and "no tensor 'no.such'" in r.stderr
    assert not (tmp_path / "bad").exists()
