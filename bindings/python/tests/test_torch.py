"""PyTorch in and out: ``Dataset.from_state_dicts``, ``Sampler.sample_state_dicts``,
``Sampler.sample_into_module``, and the package's type stubs (mypy's stubtest).

The numpy side runs everywhere. The torch side needs a torch that imports: not the lean venv's
(its CUDA torch wheel is installed without the CUDA libraries its Python module loads, enough for
libtorch alone), but the fresh venv of ``make test-wheels``, which installs torch from PyPI;
without one those tests are skipped, unless PDIFF_TEST_TORCH=1 makes that a failure.
PDIFF_TEST_STUBTEST=1 likewise makes a missing mypy a failure instead of a skip.
"""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import pdiff
from pdiff import _ffi

# The fixtures of the main test module: the bundle trained there (or the C test's), its sampler.
from test_pdiff import C_TEST_OPTIONS, COLS, LAYOUT, ROWS, bundle, c_reference, data, sampler  # noqa: F401

try:
    import torch
except ImportError as e:
    if os.environ.get("PDIFF_TEST_TORCH") == "1":
        raise
    torch, TORCH_MISSING = None, f"torch cannot be imported ({e})"
else:
    TORCH_MISSING = ""

needs_torch = pytest.mark.skipif(torch is None, reason=TORCH_MISSING)
needs_training = pytest.mark.skipif(
    not pdiff.has_training(), reason=f"{_ffi.LIBRARY_PATH} is a serve-only libpdiff: no training")


def numpy_state_dicts(data):
    """The fixture data as state dicts of numpy arrays, float64 (so conversion is exercised)."""
    return [{"w": row[:ROWS * COLS].reshape(ROWS, COLS).astype(np.float64), "b": row[ROWS * COLS:].copy(),
             "steps": np.int64(5)} for row in data]


def wb_module(rows=ROWS, cols=COLS, dtype=None):
    """A module whose tensors are named as the bundle's layout ("w", "b"), plus others the
    bundle does not generate."""
    m = torch.nn.Module()
    m.w = torch.nn.Parameter(torch.zeros(rows, cols, dtype=dtype or torch.float32))
    m.b = torch.nn.Parameter(torch.zeros(rows, dtype=dtype or torch.float32))
    m.other = torch.nn.Parameter(torch.full((3,), 7.0))
    m.register_buffer("steps", torch.tensor(5, dtype=torch.int64))
    return m


def state_dicts_of(data):
    """The fixture data as torch state dicts (float64 weights)."""
    out = []
    for row in data:
        m = wb_module(dtype=torch.float64)
        with torch.no_grad():
            m.w.copy_(torch.from_numpy(row[:ROWS * COLS].reshape(ROWS, COLS).astype(np.float64)))
            m.b.copy_(torch.from_numpy(row[ROWS * COLS:].astype(np.float64)))
        out.append(m.state_dict())
    return out


# ---- in: Dataset.from_state_dicts ----

@needs_training
@pytest.mark.parametrize("source", ["numpy", pytest.param("torch", marks=needs_torch)])
def test_from_state_dicts_trains_what_from_memory_trains(data, tmp_path, source):
    sds = numpy_state_dicts(data) if source == "numpy" else state_dicts_of(data)
    with pdiff.Dataset.from_state_dicts(sds, select=["w", "b"]) as ds:
        assert (ds.k, ds.param_count) == data.shape
        gen = pdiff.Generator.train(ds, **C_TEST_OPTIONS)
    gen.export(tmp_path / "sd")
    ref = pdiff.Generator.train(pdiff.Dataset.from_memory(LAYOUT, data), **C_TEST_OPTIONS)
    ref.export(tmp_path / "mem")
    with pdiff.Sampler(tmp_path / "sd", provider="cpu") as a, pdiff.Sampler(tmp_path / "mem", provider="cpu") as b:
        assert [(t.name, t.shape) for t in a.layout] == LAYOUT  # names kept, first state dict's order
        assert np.array_equal(a.sample(3, seed=1, steps=5), b.sample(3, seed=1, steps=5))


@needs_training
def test_from_state_dicts_numpy_selection_and_dtypes(data):
    sds = numpy_state_dicts(data)
    # select=None: every floating-point array, the int64 "steps" left out
    with pdiff.Dataset.from_state_dicts(sds) as ds:
        assert (ds.k, ds.param_count) == data.shape
    # globs, float16 / float32 / float64, a mapping of named checkpoints, extra keys not selected
    named = {f"ckpt_{i}.npz": {"w": sd["w"].astype([np.float16, np.float32, np.float64][i % 3]), "b": sd["b"],
                               "note": "not a tensor"} for i, sd in enumerate(sds)}
    with pdiff.Dataset.from_state_dicts(named, select="[wb]") as ds:
        assert (ds.k, ds.param_count) == data.shape


@needs_training
@needs_torch
def test_from_state_dicts_torch_dtypes(data):
    sds = state_dicts_of(data)
    # select=None: every floating-point tensor ("other" too), the int64 buffer left out
    with pdiff.Dataset.from_state_dicts(sds) as ds:
        assert ds.param_count == ROWS * COLS + ROWS + 3
    # half, bfloat16, float32 tensors and numpy arrays mixed
    mixed = []
    for i, sd in enumerate(sds):
        dtype = [torch.float16, torch.bfloat16, torch.float32][i % 3]
        mixed.append({"w": sd["w"].to(dtype), "b": sd["b"].numpy() if i % 2 else sd["b"]})
    with pdiff.Dataset.from_state_dicts(mixed) as ds:
        assert (ds.k, ds.param_count) == data.shape


@needs_training
@pytest.mark.parametrize("edit, message", [
    (lambda sds: sds[3].pop("b"), "checkpoint state_dicts[3] has no tensor 'b'"),
    (lambda sds: sds[2].__setitem__("w", np.zeros((ROWS, COLS + 1))),
     f"checkpoint state_dicts[2]: tensor 'w' has shape ({ROWS}, {COLS + 1}), checkpoint state_dicts[0] has ({ROWS}, {COLS})"),
    (lambda sds: sds[1].__setitem__("b", np.zeros(ROWS, dtype=np.int32)),
     "checkpoint state_dicts[1]: tensor 'b' is int32, not floating-point"),
    (lambda sds: sds[4].__setitem__("extra", np.zeros(2)),
     "checkpoint state_dicts[4] has tensor 'extra', which checkpoint state_dicts[0] does not have"),
    (lambda sds: sds.__setitem__(5, np.zeros(3)), "checkpoint state_dicts[5] is a ndarray, not a state dict"),
    (lambda sds: sds.clear(), "state_dicts holds no state dict"),
])
def test_from_state_dicts_disagreements_name_checkpoint_and_tensor(data, edit, message):
    sds = numpy_state_dicts(data)
    edit(sds)
    with pytest.raises(pdiff.InvalidArgumentError) as e:
        pdiff.Dataset.from_state_dicts(sds)
    assert message in str(e.value)
    assert e.value.status == pdiff.Status.INVALID_ARGUMENT


@needs_training
def test_from_state_dicts_selection_errors(data):
    sds = {f"run{i}.pt": sd for i, sd in enumerate(numpy_state_dicts(data))}
    cases = [
        (["steps"], "checkpoint 'run0.pt': tensor 'steps' is int64, not floating-point"),
        (["w", "missing*"], "select entry 'missing*' matches no tensor of checkpoint 'run0.pt'"),
        ([], "select is empty"),
    ]
    for select, message in cases:
        with pytest.raises(pdiff.InvalidArgumentError) as e:
            pdiff.Dataset.from_state_dicts(sds, select=select)
        assert message in str(e.value), (select, str(e.value))
    with pytest.raises(pdiff.InvalidArgumentError, match="is a ndarray, not a state dict"):
        pdiff.Dataset.from_state_dicts(sds["run0.pt"])  # one state dict instead of several
    with pytest.raises(pdiff.InvalidArgumentError, match="'b' is a str, not a tensor or array"):
        pdiff.Dataset.from_state_dicts([{"w": np.zeros(2), "b": "x"}] * 2, select=["w", "b"])
    # non-finite values, and float64 values beyond float32's range
    for value in (float("nan"), 1e300):
        bad = dict(sds)
        bad["run2.pt"] = {**bad["run2.pt"], "b": np.full(ROWS, value)}
        with pytest.raises(pdiff.InvalidArgumentError) as e:
            pdiff.Dataset.from_state_dicts(bad)
        assert "checkpoint 'run2.pt': tensor 'b' has a non-finite value (as float32) at flat index 0" in str(e.value)


@needs_training
@needs_torch
def test_from_state_dicts_torch_errors(data):
    sds = state_dicts_of(data)
    sds[2] = {**sds[2], "b": torch.zeros(ROWS, dtype=torch.int32)}
    with pytest.raises(pdiff.InvalidArgumentError, match=r"checkpoint state_dicts\[2\]: tensor 'b' is int32"):
        pdiff.Dataset.from_state_dicts(sds)
    with pytest.raises(pdiff.InvalidArgumentError, match="checkpoint state_dicts\\[0\\]: tensor 'steps' is int64"):
        pdiff.Dataset.from_state_dicts(sds, select=["w", "steps"])
    sds = state_dicts_of(data)
    sds[4] = {**sds[4], "b": torch.full((ROWS,), float("inf"), dtype=torch.bfloat16)}
    with pytest.raises(pdiff.InvalidArgumentError, match="state_dicts.4.: tensor 'b' has a non-finite value"):
        pdiff.Dataset.from_state_dicts(sds, select=["w", "b"])


@pytest.mark.skipif(pdiff.has_training(), reason="the library has training")
def test_from_state_dicts_needs_training(data):
    with pytest.raises(pdiff.TrainingUnavailableError, match="Dataset.from_state_dicts"):
        pdiff.Dataset.from_state_dicts(numpy_state_dicts(data))


# ---- out: sample_state_dicts, sample_into_module ----

def test_sample_state_dicts_numpy(sampler):
    named = sampler.sample_named(4, seed=9, steps=5)
    arrays, clipped = sampler.sample_state_dicts(4, seed=9, steps=5, as_torch=False, return_clipped=True)
    assert isinstance(clipped, pdiff.ClipCount) and len(arrays) == 4
    for sd, ref in zip(arrays, named):
        assert list(sd) == ["w", "b"]
        assert all(type(v) is np.ndarray and v.dtype == np.float32 for v in sd.values())
        assert all(np.array_equal(sd[k], ref[k]) for k in ref)


@needs_torch
def test_sample_state_dicts_torch(sampler):
    named = sampler.sample_named(4, seed=9, steps=5)
    sds = sampler.sample_state_dicts(4, seed=9, steps=5)
    for sd, ref in zip(sds, named):
        assert list(sd) == ["w", "b"]
        for name, t in sd.items():
            assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
            assert np.array_equal(t.numpy(), ref[name])
    # ready for load_state_dict: the module's other tensors stay as they were
    m = wb_module()
    missing, unexpected = m.load_state_dict(sds[1], strict=False)
    assert sorted(missing) == ["other", "steps"] and unexpected == []
    assert torch.equal(m.w.detach(), sds[1]["w"]) and torch.equal(m.other.detach(), torch.full((3,), 7.0))


def test_sample_state_dicts_without_torch(bundle):
    """Where torch cannot be imported: numpy arrays, and as_torch=True says why it cannot."""
    script = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
        "import numpy as np, pdiff\n"
        f"s = pdiff.Sampler({str(bundle)!r}, provider='cpu')\n"
        "sds = s.sample_state_dicts(2, seed=9, steps=5)\n"
        "assert all(type(v) is np.ndarray for sd in sds for v in sd.values()), sds\n"
        "try:\n    s.sample_state_dicts(1, as_torch=True)\nexcept ImportError:\n    print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy())
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_sample_into_module(sampler, dtype):
    dtype = getattr(torch, dtype)
    m = wb_module(dtype=dtype)
    clipped = sampler.sample_into_module(m, seed=4, steps=5)
    assert isinstance(clipped, pdiff.ClipCount)
    ref = sampler.sample_named(1, seed=4, steps=5)[0]
    assert m.w.dtype == dtype and m.w.requires_grad
    assert torch.equal(m.w.detach(), torch.from_numpy(ref["w"]).to(dtype))
    assert torch.equal(m.b.detach(), torch.from_numpy(ref["b"]).to(dtype))
    assert torch.equal(m.other.detach(), torch.full((3,), 7.0)) and int(m.steps) == 5


@needs_torch
def test_sample_into_module_checks_before_writing(sampler):
    def module(w_shape=(ROWS, COLS), b=None):
        m = torch.nn.Module()
        m.w = torch.nn.Parameter(torch.ones(w_shape))
        if b is not None:
            m.register_buffer("b", b)
        return m

    # a buffer is a target as a parameter is
    m = module(b=torch.ones(ROWS))
    sampler.sample_into_module(m, seed=1, steps=5)
    assert not torch.equal(m.b, torch.ones(ROWS)) and not torch.equal(m.w.detach(), torch.ones(ROWS, COLS))
    cases = [
        (module(w_shape=(COLS, ROWS), b=torch.ones(ROWS)),
         f"the module's tensor 'w' has shape ({COLS}, {ROWS}), the bundle's layout has ({ROWS}, {COLS})"),
        (module(), f"the module has no tensor 'b' (the bundle's layout has it, shape ({ROWS},))"),
        (module(b=torch.ones(ROWS, dtype=torch.int64)), "the module's tensor 'b' is torch.int64, not floating-point"),
    ]
    for m, message in cases:
        with pytest.raises(pdiff.InvalidArgumentError) as e:
            sampler.sample_into_module(m, seed=1, steps=5)
        assert message in str(e.value)
        assert torch.equal(m.w.detach(), torch.ones_like(m.w))  # nothing written
    with pytest.raises(pdiff.InvalidArgumentError, match="must be a torch.nn.Module"):
        sampler.sample_into_module({"w": torch.zeros(ROWS, COLS)})


# ---- the type stubs ----

def test_stubs_match_the_package(tmp_path):
    """mypy's stubtest: every name of pdiff/*.pyi exists at run time with a compatible signature,
    and every public name of the package is in the stubs."""
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("PDIFF_TEST_STUBTEST") == "1":
            raise
        pytest.skip("mypy is not installed (PDIFF_TEST_STUBTEST=1 makes this a failure)")
    package = pathlib.Path(pdiff.__file__).parent
    for module in ("__init__", "_ffi", "_state_dicts"):
        assert (package / f"{module}.pyi").is_file(), f"{package} has no {module}.pyi"
    assert (package / "py.typed").is_file()
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\ncache_dir = " + str(tmp_path / "cache") + "\n")  # no user's config, no cache left
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(config), "pdiff"],  # and its submodules
        capture_output=True, text=True, env=os.environ.copy(), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    checked = re.search(r"no issues found in (\d+) modules", r.stdout)
    assert checked and int(checked.group(1)) >= 3, r.stdout  # pdiff, pdiff._ffi, pdiff._state_dicts
