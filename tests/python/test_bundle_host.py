"""A host that uses a bundle with nothing of libpdiff: onnx + onnxruntime + numpy, following
docs/bundle-format.md. The bundle is made by the `pdiff` CLI (collect + train) first."""
import hashlib
import json
import os
import pathlib
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PDIFF = ROOT / "target" / "release" / "pdiff"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    subprocess.run([PDIFF, "collect", "--task", "mnist-mlp3", "--k", "8", "--out", tmp / "ckpt"], check=True, capture_output=True)
    subprocess.run(
        [PDIFF, "train", "--checkpoints", tmp / "ckpt", "--out", tmp / "gen", "--ae-steps", "30", "--diffusion-steps", "30", "--device", "cpu"],
        check=True,
        capture_output=True,
    )
    return tmp / "gen"


@pytest.fixture(scope="module")
def external_bundle(bundle, tmp_path_factory):
    """The same generator re-exported with every initializer in external data files
    (docs/bundle-format.md, "External data"), as a graph over 2 GiB would be."""
    out = tmp_path_factory.mktemp("external") / "gen"
    subprocess.run([PDIFF, "export", "--generator", bundle, "--out", out, "--inline-graph-limit", "0"], check=True, capture_output=True)
    return out


def test_external_data_bundle_follows_the_format(external_bundle):
    m = json.loads((external_bundle / "pdiff.json").read_text())
    assert m["format_version"] == 2
    for role in ["decoder", "denoiser", "sampler"]:
        graph, data = m["files"][role], m["files"][role + "_data"]
        assert data == graph + ".data"
        model = onnx.load(str(external_bundle / graph), load_external_data=False)
        external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external, graph
        for t in external:
            info = {e.key: e.value for e in t.external_data}
            assert info["location"] == data and int(info["offset"]) % 4096 == 0
            assert int(info["length"]) == 4 * int(np.prod(t.dims))
        # The whole ONNX checker, given the path so that it reads the data file too.
        onnx.checker.check_model(str(external_bundle / graph), full_check=True)
    for name, digest in m["sha256"].items():  # the hashes cover the data files
        assert hashlib.sha256((external_bundle / name).read_bytes()).hexdigest() == digest, name
    assert {m["files"][r + "_data"] for r in ["decoder", "denoiser", "sampler"]} <= set(m["sha256"])


def test_host_samples_an_external_data_bundle_like_the_inline_one(bundle, external_bundle):
    m = json.loads((bundle / "pdiff.json").read_text())
    results = []
    for b in [bundle, external_bundle]:
        # From a path, ONNX Runtime reads the external data beside the graph.
        den = ort.InferenceSession(str(b / "denoiser.onnx"), providers=["CPUExecutionProvider"])
        dec = ort.InferenceSession(str(b / "decoder.onnx"), providers=["CPUExecutionProvider"])
        results.append(ddim(den, dec, m, 3, 10, np.random.default_rng(5)))
    np.testing.assert_array_equal(results[0], results[1])


def test_cli_samples_an_external_data_bundle_like_the_inline_one(bundle, external_bundle, tmp_path):
    from safetensors.numpy import load_file

    for name, b in [("inline", bundle), ("external", external_bundle)]:
        r = subprocess.run([PDIFF, "sample", "--bundle", b, "-n", "2", "--seed", "3", "--steps", "10", "--out", tmp_path / name],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    for f in ["gen_0000.safetensors", "gen_0001.safetensors"]:
        a, b = load_file(str(tmp_path / "inline" / f)), load_file(str(tmp_path / "external" / f))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # A tampered data file is refused, naming it.
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(external_bundle, bad)
    data = bad / "decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    r = subprocess.run([PDIFF, "sample", "--bundle", bad, "-n", "1", "--out", tmp_path / "o"], capture_output=True, text=True)
    assert r.returncode == 1 and "decoder.onnx.data" in r.stderr and "sha256" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_manifest_fields_and_hashes(bundle):
    m = json.loads((bundle / "pdiff.json").read_text())
    assert m["format_version"] == 1
    assert m["prediction"] == "epsilon"
    assert m["schedule"] == {"kind": "linear", "beta_start": 1e-4, "beta_end": 2e-2, "timesteps": 1000}
    assert m["files"]["decoder"] == "decoder.onnx" and m["files"]["denoiser"] == "denoiser.onnx"
    names = [t["name"] for t in m["layout"]]
    assert sorted(names) == sorted(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"])
    end = max(t["offset"] + int(np.prod(t["shape"])) for t in m["layout"])
    assert end == m["param_count"] == 13002
    for name, digest in m["sha256"].items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest, name


def test_graphs_pass_the_full_onnx_checker(bundle):
    for f in ["decoder.onnx", "denoiser.onnx"]:
        model = onnx.load(str(bundle / f))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version >= 17
        assert model.ir_version <= 10


def ddim(den, dec, m, n, steps, rng):
    """The sampler loop of docs/bundle-format.md, in numpy."""
    T = m["schedule"]["timesteps"]
    betas = np.linspace(m["schedule"]["beta_start"], m["schedule"]["beta_end"], T)
    abar = np.cumprod(1.0 - betas)
    x = rng.standard_normal((n, m["latent_dim"])).astype(np.float32)
    seq = [i * T // steps for i in range(steps)]
    for i in reversed(range(steps)):
        t = seq[i]
        ab, ab_prev = abar[t], (abar[seq[i - 1]] if i > 0 else 1.0)
        eps = den.run(["eps"], {"x": x, "t": np.full(n, t, dtype=np.int64)})[0]
        x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
        x = (np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps).astype(np.float32)
    return dec.run(["params"], {"z": x})[0]


def test_host_samples_from_the_graphs_alone(bundle):
    m = json.loads((bundle / "pdiff.json").read_text())
    den = ort.InferenceSession(str(bundle / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    for b in [1, 3, 8]:  # dynamic batch dimension
        z = np.zeros((b, m["latent_dim"]), dtype=np.float32)
        assert dec.run(None, {"z": z})[0].shape == (b, m["param_count"])
    params = ddim(den, dec, m, 4, 20, np.random.default_rng(0))
    assert params.shape == (4, m["param_count"])
    assert np.isfinite(params).all()
    # The decoder outputs host units: each tensor's values sit near the checkpoints' statistics.
    for t in m["layout"]:
        v = params[:, t["offset"] : t["offset"] + int(np.prod(t["shape"]))]
        assert abs(v.mean() - t["mean"]) < 3 * t["std"] + 1e-3, t["name"]


def test_cli_sample_writes_loadable_safetensors(bundle, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "gen"
    r = subprocess.run([PDIFF, "sample", "--bundle", bundle, "-n", "3", "--seed", "7", "--sampler", "ddim", "--steps", "10", "--out", out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime-cpu" in r.stdout
    files = sorted(out.glob("*.safetensors"))
    assert len(files) == 3
    w = load_file(str(files[0]))
    assert w["fc1.weight"].shape == (16, 784) and w["fc3.bias"].shape == (10,)
    # Same seed, same models.
    out2 = tmp_path / "gen2"
    subprocess.run([PDIFF, "sample", "--bundle", bundle, "-n", "3", "--seed", "7", "--sampler", "ddim", "--steps", "10", "--out", out2], check=True, capture_output=True)
    np.testing.assert_array_equal(load_file(str(files[0]))["fc1.weight"], load_file(str(out2 / files[0].name))["fc1.weight"])


def test_cli_reports_bad_bundles(bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    m = json.loads((bad / "pdiff.json").read_text())
    m["format_version"] = 99
    (bad / "pdiff.json").write_text(json.dumps(m))
    r = subprocess.run([PDIFF, "sample", "--bundle", bad, "-n", "1", "--out", tmp_path / "o"], capture_output=True, text=True)
    assert r.returncode == 1 and "format_version 99" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
    r = subprocess.run([PDIFF, "sample", "--bundle", bundle, "-n", "1", "--provider", "cuda", "--out", tmp_path / "o"], capture_output=True, text=True)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert r.returncode == 1 and "CUDA" in r.stderr, r.stderr
