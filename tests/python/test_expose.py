"""`pdiff onnx expose` on a host model that uses the fixture bundle's tensors: the exposed model
runs like the original without an adapter, and with each adapter `pdiff sample --format
onnx-adapter` wrote, ONNX Runtime's output is the host computed with that model's tensors (the
safetensors file of the same seed), all in one session. Bad hosts are refused naming the tensor,
with nothing written. Seconds."""
import pathlib
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
PDIFF = ROOT / "target" / "release" / "pdiff"
BUNDLE = ROOT / "tests" / "fixtures" / "tiny-bundle"
N = 4


def host_model(path, w_name="net.w", w_shape=(6, 20), w_type=np.float32, head="head.w"):
    """y = relu(x net.w^T + net.b) head.w^T: the layout's three tensors as initializers."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(w_type), w_name),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "net.b"),
             numpy_helper.from_array(rng.standard_normal((3, 6)).astype(np.float32), head)]
    nodes = [helper.make_node("Gemm", ["x", w_name, "net.b"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", head], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "host", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def run(*args):
    return subprocess.run([PDIFF, *map(str, args)], capture_output=True, text=True)


def reference(x, t):
    return np.maximum(x @ t["net.w"].T + t["net.b"], 0) @ t["head.w"].T


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("expose")
    host = host_model(tmp / "host.onnx")
    r = run("onnx", "expose", "--model", host, "--bundle", BUNDLE, "--out", tmp / "adaptable.onnx")
    assert r.returncode == 0, r.stderr
    assert "3 initializers exposed" in r.stdout
    for fmt, out in [("safetensors", "st"), ("onnx-adapter", "ad")]:
        r = run("sample", "--bundle", BUNDLE, "-n", N, "--seed", 4, "--steps", 10, "--provider", "cpu", "--format", fmt, "--out", tmp / out)
        assert r.returncode == 0, r.stderr
    return tmp


def test_exposed_model_keeps_everything_else_and_runs_without_an_adapter(exposed):
    before, after = onnx.load(str(exposed / "host.onnx")), onnx.load(str(exposed / "adaptable.onnx"))
    onnx.checker.check_model(after, full_check=True)
    assert [i.name for i in after.graph.input] == ["x", "net.w", "net.b", "head.w"]
    assert after.graph.node == before.graph.node and after.graph.initializer == before.graph.initializer
    x = np.random.default_rng(1).standard_normal((5, 20)).astype(np.float32)
    plain = ort.InferenceSession(str(exposed / "host.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = ort.InferenceSession(str(exposed / "adaptable.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], plain)


def test_every_adapter_in_one_session_gives_its_model(exposed):
    x = np.random.default_rng(2).standard_normal((5, 20)).astype(np.float32)
    sess = ort.InferenceSession(str(exposed / "adaptable.onnx"), providers=["CPUExecutionProvider"])
    outputs = []
    for i in range(N):
        adapter = ort.LoraAdapter()
        adapter.Load(str(exposed / "ad" / f"gen_{i:04d}.onnx_adapter"))
        opts = ort.RunOptions()
        opts.add_active_adapter(adapter)
        got = sess.run(None, {"x": x}, opts)[0]
        # The same model fed as plain inputs: the adapter is exactly those tensors.
        t = load_file(str(exposed / "st" / f"gen_{i:04d}.safetensors"))
        np.testing.assert_array_equal(got, sess.run(None, {"x": x, **t})[0])
        np.testing.assert_allclose(got, reference(x, t), rtol=1e-5, atol=1e-5)
        outputs.append(got)
    assert not np.array_equal(outputs[0], outputs[1]), "two models, two outputs"


@pytest.mark.parametrize("host_args, words", [
    ({"w_name": "fc.w"}, ["has no initializer 'net.w'"]),
    ({"w_shape": (6, 21)}, ["initializer 'net.w' has shape [6, 21]", "[6, 20]"]),
    ({"w_type": np.float64}, ["initializer 'net.w' is DOUBLE", "FLOAT"]),
])
def test_bad_hosts_are_refused_naming_the_tensor(tmp_path, host_args, words):
    host = host_model(tmp_path / "bad.onnx", **host_args)  # (the check comes before any run)
    r = run("onnx", "expose", "--model", host, "--bundle", BUNDLE, "--out", tmp_path / "out.onnx")
    assert r.returncode == 1
    for w in words:
        assert w in r.stderr, r.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_names_mapped_and_outputs_kept(tmp_path):
    host = host_model(tmp_path / "host.onnx", head="classifier")
    r = run("onnx", "expose", "--model", host, "--bundle", BUNDLE, "--out", tmp_path / "a.onnx", "--adapter-name", "head.w=classifier")
    assert r.returncode == 0, r.stderr
    assert [i.name for i in onnx.load(str(tmp_path / "a.onnx")).graph.input] == ["x", "net.w", "net.b", "classifier"]
    # A second run replaces the file it wrote; a file it did not write is refused without --force.
    assert run("onnx", "expose", "--model", host, "--bundle", BUNDLE, "--out", tmp_path / "a.onnx", "--adapter-name", "head.w=classifier").returncode == 0
    r = run("onnx", "expose", "--model", host, "--bundle", BUNDLE, "--out", host, "--adapter-name", "head.w=classifier")
    assert r.returncode == 1 and "--force" in r.stderr
    r = run("onnx", "expose", "--model", host, "--bundle", BUNDLE, "--out", tmp_path / "b.onnx")
    assert r.returncode == 1 and "has no initializer 'head.w'" in r.stderr and "--adapter-name" in r.stderr
    assert not (tmp_path / "b.onnx").exists()


def test_exposed_batchnorm_is_not_folded_into_its_conv(tmp_path):
    """What docs/api.md says exposing costs, as ONNX Runtime's optimized graph shows it: Conv +
    BatchNormalization + Relu become one Conv in the plain model; with the BatchNorm's weight and
    bias exposed, the BatchNorm and the Relu stay separate nodes."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "conv.w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "conv.b"),
             numpy_helper.from_array(np.ones(8, np.float32), "bn.weight"), numpy_helper.from_array(np.zeros(8, np.float32), "bn.bias"),
             numpy_helper.from_array(np.zeros(8, np.float32), "bn.mean"), numpy_helper.from_array(np.ones(8, np.float32), "bn.var")]
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.weight", "bn.bias", "bn.mean", "bn.var"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 28, 28])], inits)
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(plain)
    exposed.graph.input.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, [8]) for n in ["bn.weight", "bn.bias"]])
    ops = []
    for name, m in [("plain", plain), ("exposed", exposed)]:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        so.log_severity_level = 3  # the warnings on saving an optimized graph and on exposed initializers
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops.append([n.op_type for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node])
    assert "BatchNormalization" not in ops[0] and "Relu" not in ops[0], ops[0]
    assert "BatchNormalization" in ops[1] and "Relu" in ops[1], ops[1]
