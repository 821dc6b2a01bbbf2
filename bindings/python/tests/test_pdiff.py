"""Tests of the Python binding (bindings/python/pdiff) over libpdiff's C ABI.

    .venv/bin/python -m pytest -q bindings/python/tests

Cross-language reproducibility: with $PDIFF_TEST_C_BUNDLE (a bundle exported by
tests/c/test_pdiff.c) and $PDIFF_TEST_C_SAMPLES (the raw little-endian f32 values that
tests/c/sample_dump.c sampled from it: n = 3, seed 42, DDIM 10 steps, CPU), as scripts/test.sh
sets them, Python must reproduce those values bit for bit (and $PDIFF_TEST_CPP_SAMPLES, those of
the C++ test, when given). Without them, both C programs are compiled and run here with gcc.
"""
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import pdiff
from pdiff import _ffi

ROOT = pathlib.Path(__file__).resolve().parents[3]
K, ROWS, COLS = 6, 4, 8
D = ROWS * COLS + ROWS
LAYOUT = [("w", (ROWS, COLS)), ("b", (ROWS,))]
# The C test's training options (tests/c/test_pdiff.c).
C_TEST_OPTIONS = dict(ae_steps=20, diffusion_steps=20, batch_size=4, seed=3, device="cpu")


def c_test_data() -> np.ndarray:
    """tests/c/test_pdiff.c's fill_dataset, bit for bit (uint32 LCG, float32 arithmetic)."""
    state = 12345

    def lcg():
        nonlocal state
        state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
        return np.float32((state >> 8) & 0xFFFF) / np.float32(32768.0) - np.float32(1.0)

    base = [np.float32(0.5) * lcg() for _ in range(D)]
    pert = [lcg() for _ in range(D)]
    data = np.empty((K, D), dtype=np.float32)
    for i in range(K):
        for j in range(D):
            data[i, j] = base[j] + np.float32(0.02) * np.float32(i + 1) * pert[j]
    return data


@pytest.fixture(scope="module")
def data():
    return c_test_data()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, data):
    ds = pdiff.Dataset.from_memory(LAYOUT, data)
    gen = pdiff.Generator.train(ds, **C_TEST_OPTIONS)
    path = tmp_path_factory.mktemp("py") / "bundle"
    gen.export(path)
    gen.close()
    return path


@pytest.fixture(scope="module")
def sampler(bundle):
    with pdiff.Sampler(bundle, provider="cpu") as s:
        yield s


@pytest.fixture(scope="module")
def c_reference(tmp_path_factory):
    """(C-trained bundle, its reference samples as float32 [3, D], C++ samples or None)."""
    env_bundle, env_samples = os.environ.get("PDIFF_TEST_C_BUNDLE"), os.environ.get("PDIFF_TEST_C_SAMPLES")
    cpp = os.environ.get("PDIFF_TEST_CPP_SAMPLES")
    if env_bundle and env_samples:
        bundle_dir, samples = pathlib.Path(env_bundle), pathlib.Path(env_samples)
    else:
        gcc = shutil.which("gcc")
        if gcc is None:
            pytest.skip("no $PDIFF_TEST_C_BUNDLE / $PDIFF_TEST_C_SAMPLES and no gcc to make them")
        tmp = tmp_path_factory.mktemp("c")
        libdir = pathlib.Path(_ffi.LIBRARY_PATH).resolve().parent
        for prog in ("test_pdiff", "sample_dump"):
            subprocess.run(
                [gcc, "-Wall", "-Werror", f"-I{ROOT / 'include'}", str(ROOT / "tests" / "c" / f"{prog}.c"),
                 f"-L{libdir}", "-lpdiff", f"-Wl,-rpath,{libdir}", "-pthread", "-o", str(tmp / prog)],
                check=True)
        bundle_dir, samples = tmp / "bundle", tmp / "c.f32"
        subprocess.run([tmp / "test_pdiff", "--export", bundle_dir, "--no-threads"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([tmp / "sample_dump", bundle_dir, samples], check=True, stdout=subprocess.DEVNULL)
    expect = np.fromfile(samples, dtype="<f4")
    return bundle_dir, expect, (np.fromfile(cpp, dtype="<f4") if cpp else None)


# ---- the generated low-level layer ----

def test_versions():
    assert pdiff.abi_version() == pdiff.ABI_VERSION == _ffi.lib.PDIFF_ABI_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", pdiff.version())
    assert pdiff.__version__ == pdiff.version()


def test_cdef_follows_the_header():
    header = _ffi.HEADER_PATH.read_text()
    cdef = _ffi.CDEF
    assert "/*" not in cdef and "//" not in cdef and "extern" not in cdef and "__cplusplus" not in cdef
    assert all(line.startswith("#define ") for line in cdef.splitlines() if line.lstrip().startswith("#"))
    # every function and enum constant of the header is reachable
    functions = set(re.findall(r"\b(pdiff_\w+)\s*\(", header)) - {"pdiff_progress_fn", "pdiff_score_fn"}
    assert len(functions) >= 25
    for f in functions:
        assert callable(getattr(_ffi.lib, f)), f
    for name, value in re.findall(r"\b(PDIFF_\w+) = (\d+),", header):
        assert getattr(_ffi.lib, name) == int(value)
    # option structs have the size the library expects
    for t in ("pdiff_train_options", "pdiff_sampler_options", "pdiff_sample_options"):
        o = _ffi.ffi.new(t + " *")
        assert getattr(_ffi.lib, t + "_default")(o) == 0
        assert o.struct_size == _ffi.ffi.sizeof(t)


def test_header_to_cdef_handles_guards_and_comments():
    text = '''
    /* a "quoted" comment */
    #ifndef X_H
    #define X_H
    #include <stdint.h>
    #define X_VERSION 0x2u
    #ifdef __cplusplus
    extern "C" {
    #endif // __cplusplus
    int x_f(const char *s); // trailing
    #if defined(__cplusplus)
    }
    #else
    int x_g(void);
    #endif
    extern "C" { int x_h(void); }
    #endif
    '''
    cdef = _ffi.header_to_cdef(text)
    assert "extern" not in cdef and "}" not in cdef and "#include" not in cdef
    assert "#define X_VERSION 2" in cdef and "int x_f(const char *s);" in cdef
    assert "int x_g(void);" in cdef and "int x_h(void);" in cdef
    with pytest.raises(ImportError):
        _ffi.header_to_cdef("#if FOO > 2\n#endif\n")


def test_status_and_errors():
    assert pdiff.Status.OK == 0 and pdiff.Status.BUNDLE == _ffi.lib.PDIFF_ERR_BUNDLE
    assert len(pdiff.Status) == len(_ffi.ffi.typeof("pdiff_status").relements)
    for status in pdiff.Status:
        if status != pdiff.Status.OK:
            e = pdiff._error(status, "m")
            assert isinstance(e, pdiff.Error) and e.status == status and e.message == "m"
            assert type(e) is not pdiff.Error, f"no subclass for {status.name}"


# ---- datasets ----

def test_dataset_from_memory(data):
    with pdiff.Dataset.from_memory(LAYOUT, data) as ds:
        assert (ds.k, ds.param_count, ds.warnings) == (K, D, [])
    assert ds.closed
    with pytest.raises(pdiff.NullPointerError) as e:
        ds.k
    assert e.value.status == pdiff.Status.NULL_POINTER
    ds.close()  # idempotent
    # a dict layout and float64 input
    ds = pdiff.Dataset.from_memory(dict(LAYOUT), data.astype(np.float64))
    assert ds.param_count == D and "k=6" in repr(ds)


@pytest.mark.parametrize(
    "layout, array_fn, error, status",
    [
        (LAYOUT, lambda d: d[:1], pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),  # K = 1
        (LAYOUT, lambda d: d[:, :-1], pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),  # D != layout
        ([], lambda d: d, pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),
        ([("w", (ROWS, COLS)), ("w", (ROWS,))], lambda d: d, pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),
        (LAYOUT, lambda d: np.where(np.arange(d.size).reshape(d.shape) == 3 * D + 5, np.nan, d),
         pdiff.CheckpointError, "CHECKPOINT"),
    ],
)
def test_dataset_errors(data, layout, array_fn, error, status):
    with pytest.raises(error) as e:
        pdiff.Dataset.from_memory(layout, array_fn(data))
    assert e.value.status == pdiff.Status[status] and e.value.message


def test_load_dir_errors_and_round_trip(sampler, tmp_path):
    with pytest.raises(pdiff.IoError) as e:
        pdiff.Dataset.load_dir("/nonexistent/pdiff-ckpts")
    assert e.value.status == pdiff.Status.IO and "/nonexistent/pdiff-ckpts" in str(e.value)
    # generated safetensors files load back as a dataset, with a selection
    sampler.sample_to_dir(3, tmp_path / "gen", seed=1, steps=5)
    ds = pdiff.Dataset.load_dir(tmp_path / "gen")
    assert (ds.k, ds.param_count) == (3, D)
    assert pdiff.Dataset.load_dir(tmp_path / "gen", "w").param_count == ROWS * COLS
    assert pdiff.Dataset.load_dir(str(tmp_path / "gen"), ["b"]).param_count == ROWS
    with pytest.raises(pdiff.CheckpointError):
        pdiff.Dataset.load_dir(tmp_path / "gen", ["nothing*"])


# ---- training ----

def test_train_progress_and_export(data, tmp_path):
    ds = pdiff.Dataset.from_memory(LAYOUT, data)
    calls = []
    options = {**C_TEST_OPTIONS, "ae_steps": 5, "diffusion_steps": 4}
    gen = pdiff.Generator.train(ds, progress=lambda *a: calls.append(a), **options)  # None: go on
    ds.close()  # the generator does not depend on it
    assert [c[0] for c in calls] == ["autoencoder"] * 5 + ["diffusion"] * 4
    assert [c[1:3] for c in calls] == [(i, 5) for i in range(1, 6)] + [(i, 4) for i in range(1, 5)]
    assert all(math.isfinite(c[3]) for c in calls)
    assert gen.param_count == D
    gen.export(tmp_path / "b")
    assert (tmp_path / "b" / "pdiff.json").is_file()
    gen.close()
    with pytest.raises(pdiff.NullPointerError):
        gen.export(tmp_path / "c")


def test_train_cancel_and_callback_errors(data):
    ds = pdiff.Dataset.from_memory(LAYOUT, data)
    steps = []
    with pytest.raises(pdiff.CancelledError) as e:
        pdiff.Generator.train(ds, progress=lambda stage, step, total, loss: steps.append(step) or len(steps) < 3,
                              **C_TEST_OPTIONS)
    assert e.value.status == pdiff.Status.CANCELLED and steps == [1, 2, 3]

    def boom(stage, step, total, loss):
        if step == 2:
            raise KeyError("from the callback")
        return True

    with pytest.raises(KeyError, match="from the callback"):
        pdiff.Generator.train(ds, progress=boom, **C_TEST_OPTIONS)


@pytest.mark.parametrize(
    "options, error",
    [
        (dict(preset="huge"), pdiff.InvalidArgumentError),
        (dict(preset=7), pdiff.InvalidArgumentError),
        (dict(device="tpu"), pdiff.InvalidArgumentError),
        (dict(ae_steps=-1), pdiff.InvalidArgumentError),
        (dict(ae_lr=-1.0), pdiff.InvalidArgumentError),
        (dict(epochs=3), TypeError),
    ],
)
def test_train_bad_options(data, options, error):
    ds = pdiff.Dataset.from_memory(LAYOUT, data)
    with pytest.raises(error):
        pdiff.Generator.train(ds, **{**C_TEST_OPTIONS, **options})


# ---- sampling ----

def test_sampler_properties(sampler):
    assert sampler.backend == "onnxruntime-cpu"
    assert sampler.param_count == D
    assert sampler.layout == [pdiff.TensorInfo("w", (ROWS, COLS), 0), pdiff.TensorInfo("b", (ROWS,), ROWS * COLS)]
    assert "onnxruntime-cpu" in repr(sampler)


def test_open_errors(bundle, tmp_path):
    with pytest.raises(pdiff.BundleError) as e:
        pdiff.Sampler(tmp_path / "no-such-bundle", provider="cpu")
    assert e.value.status == pdiff.Status.BUNDLE and "no-such-bundle" in e.value.message
    with pytest.raises(pdiff.InvalidArgumentError):
        pdiff.Sampler(bundle, provider="tpu")
    with pytest.raises(pdiff.InvalidArgumentError):
        pdiff.Sampler(bundle, provider=42)


def test_sample(sampler):
    a = sampler.sample(3, seed=7, sampler="ddim", steps=10)
    assert a.shape == (3, D) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, sampler.sample(3, seed=7, steps=10))
    assert not np.array_equal(a, sampler.sample(3, seed=8, steps=10))
    assert not np.array_equal(a[0], a[1])
    assert sampler.sample(1).shape == (1, D)  # defaults: seed 0, DDIM 50
    d = sampler.sample(1, seed=5, sampler="ddpm")
    assert d.shape == (1, D) and np.isfinite(d).all()
    # into a caller buffer
    out = np.full(3 * D, -1.0, dtype=np.float32)
    r = sampler.sample(3, seed=7, steps=10, out=out)
    assert r.shape == (3, D) and np.shares_memory(r, out) and np.array_equal(r, a)
    big = np.full(3 * D + 4, -1.0, dtype=np.float32)
    assert sampler.sample(3, seed=7, steps=10, out=big) is big
    assert np.array_equal(big[: 3 * D].reshape(3, D), a) and (big[3 * D:] == -1).all()


@pytest.mark.parametrize(
    "kwargs, error, status",
    [
        (dict(n=3, steps=0), pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),
        (dict(n=0), pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),
        (dict(n=3, sampler="euler"), pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),
        (dict(n=3, sampler=-1), pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),
        (dict(n=3, out=np.zeros(3 * D - 1, dtype=np.float32)), pdiff.BufferTooSmallError, "BUFFER_TOO_SMALL"),
        (dict(n=3, out=np.zeros(3 * D, dtype=np.float64)), pdiff.InvalidArgumentError, "INVALID_ARGUMENT"),
    ],
)
def test_sample_errors(sampler, kwargs, error, status):
    with pytest.raises(error) as e:
        sampler.sample(**kwargs)
    assert e.value.status == pdiff.Status[status] and e.value.message


def test_sample_named(sampler):
    flat = sampler.sample(2, seed=9, steps=10)
    named = sampler.sample_named(2, seed=9, steps=10)
    assert len(named) == 2
    for row, model in zip(flat, named):
        assert list(model) == ["w", "b"]
        assert model["w"].shape == (ROWS, COLS) and model["b"].shape == (ROWS,)
        assert np.array_equal(model["w"].ravel(), row[: ROWS * COLS]) and np.array_equal(model["b"], row[ROWS * COLS:])


def test_best_of_n(sampler):
    seen = []

    def score(p):
        seen.append(p)
        return -float(np.dot(p.astype(np.float64), p.astype(np.float64)))

    best, index, value = sampler.best_of_n(5, score, seed=11, steps=10)
    all_ = sampler.sample(5, seed=11, steps=10)
    scores = [-float(np.dot(r.astype(np.float64), r.astype(np.float64))) for r in all_]
    assert len(seen) == 5 and all(s.shape == (D,) and s.dtype == np.float32 for s in seen)
    assert index == int(np.argmax(scores)) and value == max(scores)
    assert np.array_equal(best, all_[index])
    # the arrays given to score_fn are copies that stay valid
    assert np.array_equal(seen[index], all_[index])

    with pytest.raises(pdiff.InvalidArgumentError):
        sampler.best_of_n(3, lambda p: math.nan, seed=1, steps=5)
    calls = []

    def failing(p):
        calls.append(1)
        raise ZeroDivisionError("score")

    with pytest.raises(ZeroDivisionError):
        sampler.best_of_n(4, failing, seed=1, steps=5)
    assert len(calls) == 1


def test_sample_to_dir(sampler, tmp_path):
    sampler.sample_to_dir(2, tmp_path / "gen", seed=3, steps=5)
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["gen_0000.safetensors", "gen_0001.safetensors"]


def test_threads_share_a_sampler(sampler):
    expect = [sampler.sample(2, seed=1000 + i, steps=10) for i in range(4)]
    got = [None] * 4

    def work(i):
        got[i] = sampler.sample(2, seed=1000 + i, steps=10)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(g, e) for g, e in zip(got, expect))


def test_closed_sampler(bundle):
    s = pdiff.Sampler(bundle, provider="cpu", intra_threads=1)
    assert s.sample(1, seed=2, steps=3).shape == (1, D)
    s.close()
    with pytest.raises(pdiff.NullPointerError):
        s.sample(1)
    assert repr(s) == "Sampler(closed)"


# ---- cross-language reproducibility ----

def test_reproduces_the_c_program(c_reference):
    c_bundle, expect, cpp = c_reference
    with pdiff.Sampler(c_bundle, provider="cpu") as s:
        got = s.sample(3, seed=42, sampler="ddim", steps=10)
    assert expect.size == 3 * D
    assert got.tobytes() == expect.astype("<f4").tobytes(), "Python differs from the C program's samples"
    if cpp is not None:
        assert got.tobytes() == cpp.astype("<f4").tobytes(), "Python differs from the C++ test's samples"


def test_training_reproduces_the_c_program(c_reference, sampler):
    """Training is deterministic on the CPU: the generator trained here from the C test's data
    and options samples exactly what the C-trained bundle samples."""
    _, expect, _ = c_reference
    got = sampler.sample(3, seed=42, sampler="ddim", steps=10)
    assert got.tobytes() == expect.astype("<f4").tobytes()
