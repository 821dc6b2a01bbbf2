"""Tests of the Python binding (bindings/python/pdiff) over libpdiff's C ABI.

They test the ``pdiff`` package that Python imports (see conftest.py): normally the installed one,

    .venv/bin/pip install --target /tmp/pyinst --no-deps bindings/python
    cd /tmp && PYTHONPATH=/tmp/pyinst PDIFF_TEST_INSTALLED=1 PDIFF_LIB=... \
        /work/main/.venv/bin/python -m pytest -q /work/main/bindings/python/tests

or the source tree with PYTHONPATH=bindings/python. Variables:

- PDIFF_TEST_INSTALLED=1: fail unless the package imported is an installed copy (not
  bindings/python/pdiff), carrying the checkout's headers.
- PDIFF_TEST_TRAINING=1 / 0: fail unless the loaded libpdiff is a full / serve-only build (so a
  run meant for one cannot silently test the other). With a serve-only library the tests that
  train are skipped, the others sample the C test's bundle.
- PDIFF_LIB, PDIFF_ORT_LIB: which libpdiff and libonnxruntime (read by the library itself).

Cross-language reproducibility: with $PDIFF_TEST_C_BUNDLE (a bundle exported by
tests/c/test_pdiff.c) and $PDIFF_TEST_C_SAMPLES (the raw little-endian f32 values that
tests/c/sample_dump.c sampled from it: n = 3, seed 42, DDIM 10 steps, CPU), as scripts/test.sh
sets them, Python must reproduce those values bit for bit (and $PDIFF_TEST_CPP_SAMPLES, those of
the C++ test, when given). Without them, both C programs are compiled and run here with gcc
(full library only: the C test trains).
"""
import ctypes
import importlib.metadata
import importlib.util
import json
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

needs_training = pytest.mark.skipif(
    not pdiff.has_training(), reason=f"{_ffi.LIBRARY_PATH} is a serve-only libpdiff: no training")


def version_in(path: pathlib.Path) -> str:
    """The first `version = "..."` of a TOML file (no tomllib before Python 3.11)."""
    return re.search(r'^version\s*=\s*"([^"]+)"', path.read_text(), re.M).group(1)


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
def bundle(request, tmp_path_factory, data):
    """A bundle trained here with the C test's data and options; without training, the C test's
    own bundle (same layout), so that every sampling test runs with a serve-only library too."""
    if not pdiff.has_training():
        return request.getfixturevalue("c_reference")[0]
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
        if not pdiff.has_training():
            pytest.skip("no $PDIFF_TEST_C_BUNDLE / $PDIFF_TEST_C_SAMPLES, and this serve-only libpdiff "
                        "cannot run the C test (it trains) to make them")
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


def declared_functions(cdef: str) -> set:
    return set(re.findall(r"\b(pdiff_\w+)\s*\(", cdef)) - {"pdiff_progress_fn", "pdiff_score_fn"}


def test_cdef_follows_the_header():
    header = _ffi.HEADER_PATH.read_text()
    cdef = _ffi.CDEF
    assert "/*" not in cdef and "//" not in cdef and "extern" not in cdef and "__cplusplus" not in cdef
    assert all(line.startswith("#define ") for line in cdef.splitlines() if line.lstrip().startswith("#"))
    # every function of the header is declared, the training API (under PDIFF_FEATURE_TRAIN)
    # whatever the library
    functions = declared_functions(re.sub(r"(?m)^\s*#.*$", "", header))
    assert functions == declared_functions(cdef) and len(functions) >= 25
    training = functions - declared_functions(_ffi.header_to_cdef(header))
    assert {"pdiff_dataset_from_memory", "pdiff_generator_train", "pdiff_train_options_default"} <= training
    assert "pdiff_sampler_open" not in training
    # ... and reachable exactly when the library has it: a serve-only build exports no training
    for f in functions:
        if f in training and not pdiff.has_training():
            with pytest.raises(AttributeError):
                getattr(_ffi.lib, f)
        else:
            assert callable(getattr(_ffi.lib, f)), f
    for name, value in re.findall(r"\b(PDIFF_\w+) = (\d+),", header):
        assert getattr(_ffi.lib, name) == int(value)
    # option structs have the size the library expects
    structs = ["pdiff_sampler_options", "pdiff_sample_options"]
    if pdiff.has_training():
        structs.append("pdiff_train_options")
    for t in structs:
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
    # predefined macros, as -D would give them
    guarded = "#if defined(X_TRAIN)\nint x_t(void);\n#endif\nint x_s(void);\n"
    assert "x_t" not in _ffi.header_to_cdef(guarded) and "x_s" in _ffi.header_to_cdef(guarded)
    assert "int x_t(void);" in _ffi.header_to_cdef(guarded, ["X_TRAIN"])
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


def test_status_names_come_from_the_library():
    for status in pdiff.Status:
        expected = "PDIFF_OK" if status == pdiff.Status.OK else "PDIFF_ERR_" + status.name
        assert pdiff.status_name(status) == expected == pdiff.status_name(int(status))
    assert pdiff.status_name(99) == pdiff.status_name(-1) == "PDIFF_STATUS_UNKNOWN"
    assert repr(pdiff._error(pdiff.Status.BUNDLE, "gone")) == "BundleError(PDIFF_ERR_BUNDLE, 'gone')"
    assert repr(pdiff._error(99, "newer")) == "Error(PDIFF_STATUS_UNKNOWN, 'newer')"


# ---- the installed package, finding the library, capabilities ----

def test_imports_the_installed_package():
    if os.environ.get("PDIFF_TEST_INSTALLED") != "1":
        pytest.skip("PDIFF_TEST_INSTALLED=1 not set: the package may be the source tree")
    package = pathlib.Path(pdiff.__file__).resolve().parent
    source = ROOT / "bindings" / "python"
    assert source not in package.parents, f"imported the source tree ({package}), not the installed package"
    assert _ffi._CHECKOUT is None  # so the checkout's target/release is never picked up
    # the headers were copied in at build time, as they are in this checkout
    for name in ("pdiff.h", "pdiff_features.h"):
        assert (package / "include" / name).read_bytes() == (ROOT / "include" / name).read_bytes(), name
    if not os.environ.get("PDIFF_HEADER"):
        assert _ffi.HEADER_PATH == package / "include" / "pdiff.h"
    assert importlib.metadata.version("pdiff") == version_in(ROOT / "Cargo.toml")


def test_the_wheel_uses_its_own_library_and_onnxruntime():
    """A wheel of `make wheel`, installed with nothing else: its bundled serve-only libpdiff,
    and libonnxruntime from the onnxruntime wheel it depends on."""
    variant = os.environ.get("PDIFF_TEST_WHEEL")
    if variant not in ("serve", "train"):
        pytest.skip("PDIFF_TEST_WHEEL=serve|train not set: not a wheel in a fresh venv")
    package = pathlib.Path(pdiff.__file__).resolve().parent
    assert "PDIFF_LIB" not in os.environ and "LD_LIBRARY_PATH" not in os.environ
    assert _ffi.LIBRARY_PATH == str(package / "lib" / "libpdiff.so")
    assert pdiff.has_training() is (variant == "train")
    import onnxruntime

    ort_dir = pathlib.Path(onnxruntime.__file__).resolve().parent
    assert pathlib.Path(os.environ["PDIFF_ORT_LIB"]).resolve().parent == ort_dir / "capi"
    requires = ["numpy", "cffi", "onnxruntime>=1.30"]
    if variant == "train":
        requires.append("torch==" + importlib.metadata.version("torch").split("+")[0])
        # libtorch is the installed torch wheel's, found through the library's RUNPATH
        maps = pathlib.Path("/proc/self/maps").read_text()
        torch_lib = pathlib.Path(importlib.util.find_spec("torch").origin).resolve().parent / "lib"
        assert str(torch_lib / "libtorch_cpu.so") in maps
    assert importlib.metadata.requires("pdiff") == requires


def test_package_version_is_the_library_version():
    assert version_in(ROOT / "bindings" / "python" / "pyproject.toml") == version_in(ROOT / "Cargo.toml")


def test_has_training_matches_the_exported_symbols():
    # an independent look at the library: does it export the training API at all?
    exported = hasattr(ctypes.CDLL(_ffi.LIBRARY_PATH), "pdiff_generator_train")
    assert pdiff.has_training() is exported
    assert bool(_ffi.lib.pdiff_capabilities() & _ffi.lib.PDIFF_CAPABILITY_TRAIN) is exported
    expected = os.environ.get("PDIFF_TEST_TRAINING")
    if expected is not None:
        assert pdiff.has_training() is (expected == "1"), \
            f"PDIFF_TEST_TRAINING={expected} but {_ffi.LIBRARY_PATH} has_training() = {pdiff.has_training()}"


@pytest.mark.skipif(pdiff.has_training(), reason="the library has training")
def test_serve_only_training_raises_a_clear_error(data, tmp_path):
    calls = [
        lambda: pdiff.Dataset.from_memory(LAYOUT, data),
        lambda: pdiff.Dataset.load_dir(tmp_path),
        lambda: pdiff.Generator.train(None, **C_TEST_OPTIONS),
    ]
    for call in calls:
        with pytest.raises(pdiff.TrainingUnavailableError) as e:
            call()
        assert isinstance(e.value, pdiff.Error) and isinstance(e.value, NotImplementedError)
        assert e.value.status is None
        assert "serve-only" in str(e.value) and _ffi.LIBRARY_PATH in str(e.value)


def test_library_lookup_order(monkeypatch, tmp_path):
    def fake_lib(path: pathlib.Path) -> pathlib.Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    monkeypatch.setattr(_ffi.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(_ffi, "_BUNDLED_LIBRARY", tmp_path / "pkg" / "lib" / "libpdiff.so")
    checkout = tmp_path / "checkout"
    checkout_lib = fake_lib(checkout / "target" / "release" / "libpdiff.so")
    monkeypatch.setattr(_ffi, "_CHECKOUT", checkout)
    monkeypatch.setattr(_ffi.sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setenv("PDIFF_LIB", "/somewhere/libpdiff.so")
    assert _ffi._find_library() == "/somewhere/libpdiff.so"
    monkeypatch.delenv("PDIFF_LIB")
    assert _ffi._find_library() == str(checkout_lib)
    prefix_lib = fake_lib(tmp_path / "venv" / "lib" / "libpdiff.so")  # make install PREFIX=$VIRTUAL_ENV
    assert _ffi._find_library() == str(prefix_lib)
    bundled = fake_lib(tmp_path / "pkg" / "lib" / "libpdiff.so")  # a wheel's own library comes first
    assert _ffi._find_library() == str(bundled)
    bundled.unlink()
    prefix_lib.unlink()
    # an installed package never takes a checkout's build: the loader's search path decides
    monkeypatch.setattr(_ffi, "_CHECKOUT", None)
    assert _ffi._find_library() == "libpdiff.so"
    monkeypatch.setattr(_ffi.ctypes.util, "find_library", lambda name: "libpdiff.so.0" if name == "pdiff" else None)
    assert _ffi._find_library() == "libpdiff.so.0"


def test_header_lookup_order(monkeypatch, tmp_path):
    def fake_header(path: pathlib.Path) -> pathlib.Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("/* pdiff.h */")
        return path

    checkout = fake_header(tmp_path / "checkout" / "include" / "pdiff.h")
    monkeypatch.setattr(_ffi, "_CHECKOUT", tmp_path / "checkout")
    monkeypatch.setattr(_ffi, "_PACKAGED_INCLUDE", tmp_path / "pkg" / "include")
    monkeypatch.delenv("PDIFF_HEADER", raising=False)
    library = str(tmp_path / "prefix" / "lib" / "libpdiff.so")
    assert _ffi._find_header(library) == checkout
    beside = fake_header(tmp_path / "prefix" / "include" / "pdiff.h")
    assert _ffi._find_header(library) == beside
    assert _ffi._find_header("libpdiff.so") == checkout  # a bare name has no directory
    packaged = fake_header(tmp_path / "pkg" / "include" / "pdiff.h")
    assert _ffi._find_header(library) == packaged
    monkeypatch.setenv("PDIFF_HEADER", str(fake_header(tmp_path / "env" / "pdiff.h")))
    assert _ffi._find_header(library) == tmp_path / "env" / "pdiff.h"


# ---- datasets ----

@needs_training
def test_dataset_from_memory(data):
    with pdiff.Dataset.from_memory(LAYOUT, data) as ds:
        assert (ds.k, ds.param_count) == (K, D)
        # K = 6 is below the 50 checkpoints recommended: one warning
        assert len(ds.warnings) == 1 and ds.warnings[0].startswith("K = 6 checkpoints is few"), ds.warnings
    assert ds.closed
    with pytest.raises(pdiff.NullPointerError) as e:
        ds.k
    assert e.value.status == pdiff.Status.NULL_POINTER
    ds.close()  # idempotent
    # a dict layout and float64 input
    ds = pdiff.Dataset.from_memory(dict(LAYOUT), data.astype(np.float64))
    assert ds.param_count == D and "k=6" in repr(ds)


@needs_training
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


@needs_training
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

@needs_training
def test_train_progress_and_export(data, tmp_path):
    ds = pdiff.Dataset.from_memory(LAYOUT, data)
    calls = []
    options = {**C_TEST_OPTIONS, "ae_steps": 5, "diffusion_steps": 4}
    gen = pdiff.Generator.train(ds, progress=lambda *a: calls.append(a), **options)  # None: go on
    dataset_warnings = ds.warnings
    ds.close()  # the generator does not depend on it
    assert [c[0] for c in calls] == ["autoencoder"] * 5 + ["diffusion"] * 4
    assert [c[1:3] for c in calls] == [(i, 5) for i in range(1, 6)] + [(i, 4) for i in range(1, 5)]
    assert all(math.isfinite(c[3]) for c in calls)
    assert gen.param_count == D
    # 5 autoencoder steps reproduce little more than the mean checkpoint: after the dataset's
    # warning (K = 6 is few), training's
    assert len(gen.warnings) == 2, gen.warnings
    assert gen.warnings[0] == dataset_warnings[0]
    assert gen.warnings[1].startswith("the autoencoder reconstructs the checkpoints"), gen.warnings
    gen.export(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "pdiff.json").read_text())
    assert manifest["warnings"] == gen.warnings
    gen.export(tmp_path / "b")  # a bundle exported before: replaced
    # never over what libpdiff did not write: refused; forced, beside it, untouched
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("my notes")
    with pytest.raises(pdiff.OutputExistsError) as e:
        gen.export(home)
    assert e.value.status == pdiff.Status.OUTPUT_EXISTS and "notes.txt" in e.value.message
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    gen.export(home, force=True)
    assert (home / "notes.txt").read_text() == "my notes"
    pdiff.Sampler(home, provider="cpu").close()
    # another kind of output (generated models): refused even forced
    with pdiff.Sampler(tmp_path / "b", provider="cpu") as s:
        s.sample_to_dir(1, tmp_path / "gen-out", steps=2)
    before = _tree(tmp_path / "gen-out")
    with pytest.raises(pdiff.OutputExistsError, match="holds a libpdiff samples output, not bundle"):
        gen.export(tmp_path / "gen-out", force=True)
    assert _tree(tmp_path / "gen-out") == before
    gen.close()
    with pytest.raises(pdiff.NullPointerError):
        gen.warnings
    with pytest.raises(pdiff.NullPointerError):
        gen.export(tmp_path / "c")


@needs_training
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


@needs_training
def test_train_presets(data, tmp_path):
    """The default preset is chosen by D (compact here); "chunked" on request, its latent the
    principal coefficients of the token latents (at most K - 1)."""
    ds = pdiff.Dataset.from_memory(LAYOUT, data)
    for preset, expected in [(None, ("compact", True)), ("chunked", ("chunked", False))]:
        options = dict(C_TEST_OPTIONS, **({"preset": preset} if preset else {}))
        gen = pdiff.Generator.train(ds, **options)
        gen.export(tmp_path / expected[0])
        m = json.loads((tmp_path / expected[0] / "pdiff.json").read_text())
        assert (m["preset"], m["training"]["preset_auto"]) == expected
        if preset == "chunked":
            assert m["latent_dim"] == K - 1 == m["autoencoder"]["chunked"]["components"]


@needs_training
def test_train_reconstruction_options(data, tmp_path):
    """The per-tensor reconstruction loss and the latent noise reach the training config."""
    ds = pdiff.Dataset.from_memory(LAYOUT, data)
    gen = pdiff.Generator.train(ds, reconstruction_weighting="per-tensor", latent_noise=0.02, **C_TEST_OPTIONS)
    gen.export(tmp_path / "b")
    training = json.loads((tmp_path / "b" / "pdiff.json").read_text())["training"]
    assert (training["reconstruction_weighting"], training["latent_noise"]) == ("per-tensor", 0.02)
    # A 0 given is used as given: no latent noise (omitted or None: the preset's 0.1).
    pdiff.Generator.train(ds, latent_noise=0, **C_TEST_OPTIONS).export(tmp_path / "quiet")
    assert json.loads((tmp_path / "quiet" / "pdiff.json").read_text())["training"]["latent_noise"] == 0.0


@needs_training
def test_train_threads(data, tmp_path):
    """``threads`` reaches the training config (recorded in the bundle when set; 0, the default,
    is not written)."""
    ds = pdiff.Dataset.from_memory(LAYOUT, data)
    pdiff.Generator.train(ds, threads=1, **C_TEST_OPTIONS).export(tmp_path / "one")
    assert json.loads((tmp_path / "one" / "pdiff.json").read_text())["training"]["threads"] == 1
    pdiff.Generator.train(ds, **C_TEST_OPTIONS).export(tmp_path / "default")
    assert "threads" not in json.loads((tmp_path / "default" / "pdiff.json").read_text())["training"]


@needs_training
@pytest.mark.parametrize(
    "options, error",
    [
        (dict(preset="huge"), pdiff.InvalidArgumentError),
        (dict(preset=7), pdiff.InvalidArgumentError),
        (dict(reconstruction_weighting="sideways"), pdiff.InvalidArgumentError),
        (dict(reconstruction_weighting=5), pdiff.InvalidArgumentError),
        (dict(latent_noise=-0.5), pdiff.InvalidArgumentError),
        (dict(device="tpu"), pdiff.InvalidArgumentError),
        (dict(ae_steps=-1), pdiff.InvalidArgumentError),
        (dict(ae_lr=-1.0), pdiff.InvalidArgumentError),
        (dict(ae_lr=0.0), pdiff.InvalidArgumentError),  # given, so explicit: no preset's value
        (dict(ae_steps=0), pdiff.InvalidArgumentError),
        (dict(batch_size=0), pdiff.InvalidArgumentError),
        (dict(threads=-1), pdiff.InvalidArgumentError),
        (dict(threads=1025), pdiff.InvalidArgumentError),
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
    with pytest.raises(pdiff.InvalidArgumentError, match="options.device_index is 2147483648"):
        pdiff.Sampler(bundle, provider="cpu", device_index=2**31)
    with pytest.raises(pdiff.InvalidArgumentError, match="device_index"):
        pdiff.Sampler(bundle, provider="cpu", device_index=-1)


def test_device_index(bundle):
    # The CPU provider has no device to choose: any index is accepted.
    with pdiff.Sampler(bundle, provider="cpu", device_index=1) as s:
        assert s.backend == "onnxruntime-cpu"
    with pytest.warns(DeprecationWarning, match="device_index"):
        pdiff.Sampler(bundle, provider="cpu", device_id=1).close()


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


def test_hostile_arguments_are_refused_by_name(sampler, tmp_path):
    """Paths with NUL bytes (C would see them cut short), negative or non-integer counts, and
    arrays that are not real numbers are refused before any C call, naming the argument."""
    for call in (lambda: pdiff.Sampler(str(tmp_path) + "\0/../elsewhere"),
                 lambda: sampler.sample_to_dir(2, str(tmp_path / "out") + "\0x")):
        with pytest.raises(pdiff.InvalidArgumentError) as e:
            call()
        assert "NUL" in e.value.message
    assert not (tmp_path / "out").exists()
    for method in ("sample", "best_of_n", "sample_to_dir", "sample_into"):
        args = {"sample": (-2,), "best_of_n": (-2, lambda p: 0.0), "sample_to_dir": (-2, tmp_path / "neg"),
                "sample_into": ({},)}[method]
        kwargs = {"n": -2} if method == "sample_into" else {}
        with pytest.raises(pdiff.InvalidArgumentError) as e:
            getattr(sampler, method)(*args, **kwargs)
        assert "invalid n: -2 is negative" in e.value.message, method
    for bad in (2.5, True, "3"):
        with pytest.raises(pdiff.InvalidArgumentError) as e:
            sampler.sample(bad)
        assert "invalid n" in e.value.message
    if pdiff.has_training():
        rows = np.zeros((4, D), dtype=np.int64)
        for array, kind in ((rows, "int64"), (rows.astype(bool), "bool"), (rows.astype(np.complex64), "complex64"),
                            (np.array([["a"] * D] * 4), "<U1")):
            with pytest.raises(pdiff.InvalidArgumentError) as e:
                pdiff.Dataset.from_memory(LAYOUT, array)
            assert "invalid array" in e.value.message and kind in e.value.message
        with pytest.raises(pdiff.InvalidArgumentError) as e:
            pdiff.Dataset.load_dir(tmp_path, ["fc\0*"])
        assert "NUL" in e.value.message


def test_sample_progress_and_clip_count(sampler, tmp_path):
    steps = []
    a, clipped = sampler.sample(3, seed=7, steps=10, progress=lambda step, total: steps.append((step, total)),
                                return_clipped=True)
    assert steps == [(i, 10) for i in range(1, 11)]
    assert np.array_equal(a, sampler.sample(3, seed=7, steps=10))
    assert isinstance(clipped, pdiff.ClipCount) and 0 <= clipped.latents <= 3 and clipped.values >= clipped.latents
    # Every way out reports the same clip count for the same models.
    w = np.zeros((3, ROWS, COLS), dtype=np.float32)
    assert sampler.sample_into({"w": w}, n=3, seed=7, steps=10) == clipped
    assert sampler.sample_to_dir(3, tmp_path / "gen", seed=7, steps=10) == clipped
    assert sampler.best_of_n(3, lambda p: 0.0, seed=7, steps=10, return_clipped=True)[3] == clipped
    models, named = sampler.sample_named(3, seed=7, steps=10, return_clipped=True)
    assert len(models) == 3 and named == clipped
    # A false value cancels (None does not); nothing is written.
    calls = []
    with pytest.raises(pdiff.CancelledError) as e:
        sampler.sample(3, seed=7, steps=10, progress=lambda step, total: calls.append(step) or step < 4)
    assert calls == [1, 2, 3, 4] and e.value.message == "pdiff_sampler_sample: cancelled by the caller"
    with pytest.raises(pdiff.CancelledError):
        sampler.sample_to_dir(3, tmp_path / "cancelled", seed=7, steps=10, progress=lambda step, total: False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"], "no directory, no temporary left behind"
    # An exception raised by the callback cancels and is re-raised.
    def boom(step, total):
        if step == 2:
            raise KeyError("from progress")

    with pytest.raises(KeyError, match="from progress"):
        sampler.best_of_n(3, lambda p: 0.0, seed=7, steps=10, progress=boom)
    with pytest.raises(KeyError, match="from progress"):
        sampler.sample_into({"w": w}, n=3, seed=7, steps=10, progress=boom)
    with pytest.raises(pdiff.InvalidArgumentError, match="progress"):
        sampler.sample(1, progress=42)


def test_sample_named(sampler):
    flat = sampler.sample(2, seed=9, steps=10)
    named = sampler.sample_named(2, seed=9, steps=10)
    assert len(named) == 2
    for row, model in zip(flat, named):
        assert list(model) == ["w", "b"]
        assert model["w"].shape == (ROWS, COLS) and model["b"].shape == (ROWS,)
        assert np.array_equal(model["w"].ravel(), row[: ROWS * COLS]) and np.array_equal(model["b"], row[ROWS * COLS:])


def test_sample_adapter_is_read_by_onnxruntime(sampler, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    flat = sampler.sample(3, seed=9, steps=10)
    data = sampler.sample_adapter(2, seed=9, steps=10)
    assert isinstance(data, bytes) and data[4:8] == b"TORT"
    (tmp_path / "m2.onnx_adapter").write_bytes(data)
    fmt = ort.AdapterFormat.read_adapter(str(tmp_path / "m2.onnx_adapter"))
    assert fmt.get_adapter_version() == 2
    params = {k: v.numpy() for k, v in fmt.get_parameters().items()}
    assert np.array_equal(params["w"].ravel().view(np.uint32), flat[2, : ROWS * COLS].view(np.uint32))
    assert np.array_equal(params["b"].view(np.uint32), flat[2, ROWS * COLS:].view(np.uint32))
    with pytest.raises(pdiff.InvalidArgumentError, match="model_index"):
        sampler.sample_adapter(-1)


def test_sample_into_caller_arrays(sampler, tmp_path):
    from safetensors.numpy import load_file

    flat = sampler.sample(3, seed=9, steps=10)
    w = np.full((3, ROWS, COLS), np.nan, dtype=np.float32)
    b = np.full((3, ROWS), np.nan, dtype=np.float32)
    sampler.sample_into({"w": w, 1: b}, n=3, seed=9, steps=10)  # by name and by index
    assert np.array_equal(w.reshape(3, -1).view(np.uint32), flat[:, : ROWS * COLS].view(np.uint32))
    assert np.array_equal(b.view(np.uint32), flat[:, ROWS * COLS:].view(np.uint32))
    # The same values as sample_to_dir writes, bit for bit; one model into a tensor-shaped array.
    sampler.sample_to_dir(3, tmp_path / "gen", seed=9, steps=10)
    for i in range(3):
        saved = load_file(str(tmp_path / "gen" / f"gen_{i:04d}.safetensors"))
        assert np.array_equal(saved["w"].view(np.uint32), w[i].view(np.uint32))
        assert np.array_equal(saved["b"].view(np.uint32), b[i].view(np.uint32))
    one = np.zeros((ROWS, COLS), dtype=np.float32)
    sampler.sample_into({"w": one}, seed=9, steps=10)
    assert np.array_equal(one, w[0])

    with pytest.raises(pdiff.InvalidArgumentError, match="no tensor 'nope'"):
        sampler.sample_into({"nope": one}, seed=9, steps=10)
    with pytest.raises(pdiff.InvalidArgumentError, match="tensor 'w'.*len is 31 floats"):
        sampler.sample_into({"w": np.zeros(31, dtype=np.float32)}, seed=9, steps=10)
    with pytest.raises(pdiff.InvalidArgumentError, match="'w' is given twice"):
        sampler.sample_into({"w": one, 0: np.zeros_like(one)}, seed=9, steps=10)
    with pytest.raises(pdiff.InvalidArgumentError, match="float32"):
        sampler.sample_into({"w": np.zeros((ROWS, COLS))}, seed=9, steps=10)
    with pytest.raises(pdiff.InvalidArgumentError, match="float32"):
        sampler.sample_into({"w": np.zeros((COLS, ROWS), dtype=np.float32).T}, seed=9, steps=10)
    with pytest.raises(pdiff.InvalidArgumentError):
        sampler.sample_into({}, seed=9, steps=10)


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
    sampler.sample_to_dir(3, tmp_path / "gen", seed=3, steps=5)
    sampler.sample_to_dir(2, tmp_path / "gen", seed=3, steps=5)  # an earlier output: replaced
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == [
        ".pdiff-output.json", "gen_0000.safetensors", "gen_0001.safetensors"]


def _tree(path):
    """Every file under ``path`` (relative name -> bytes)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_sample_to_dir_never_destroys_what_libpdiff_did_not_write(sampler, tmp_path):
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "notes.txt").write_text("my notes")
    (home / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    theirs = _tree(home)
    with pytest.raises(pdiff.OutputExistsError) as e:
        sampler.sample_to_dir(2, home, seed=3, steps=5)
    assert e.value.status == pdiff.Status.OUTPUT_EXISTS
    assert "holds files libpdiff did not write (notes.txt, photos)" in e.value.message
    assert _tree(home) == theirs
    # forced: written beside them, which stay byte for byte
    sampler.sample_to_dir(2, home, seed=3, steps=5, force=True)
    after = _tree(home)
    assert {k: after[k] for k in theirs} == theirs
    assert "gen_0001.safetensors" in after
    # forced, but one of the names is theirs: refused, nothing changed
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "gen_0000.safetensors").write_bytes(b"their own model")
    with pytest.raises(pdiff.OutputExistsError, match="under names this output needs"):
        sampler.sample_to_dir(2, taken, seed=3, steps=5, force=True)
    assert _tree(taken) == {"gen_0000.safetensors": b"their own model"}
    # a regular file, even forced
    f = tmp_path / "a-file"
    f.write_text("a file")
    with pytest.raises(pdiff.OutputExistsError, match="is a regular file"):
        sampler.sample_to_dir(2, f, seed=3, steps=5, force=True)
    assert f.read_text() == "a file"


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


def test_close_while_another_thread_samples(bundle):
    """close(), a with block's exit, or dropping the last reference while another thread is
    inside a library call on the same Sampler: the call returns the reference samples, later
    calls raise, the handle is freed exactly once. In a child process (tests/close_race.py),
    since the bug it guards against (freeing the handle under the call) crashes the
    interpreter; glibc's MALLOC_CHECK_=3 aborts on a double free."""
    env = dict(os.environ, MALLOC_CHECK_="3", PDIFF_LIB=str(_ffi.LIBRARY_PATH),
               PYTHONPATH=os.pathsep.join(filter(None, [str(pathlib.Path(pdiff.__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name("close_race.py")), str(bundle)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.count("\nok ") + proc.stdout.startswith("ok ") == 5, proc.stdout


def test_closed_handles_raise_and_close_is_idempotent(data, bundle):
    s = pdiff.Sampler(bundle, provider="cpu", intra_threads=1)
    assert not s.closed
    s.close()
    s.close()
    assert s.closed
    for call in (lambda: s.backend, lambda: s.param_count, lambda: s.layout, lambda: s.sample(1),
                 lambda: s.sample_named(1), lambda: s.best_of_n(2, lambda p: 0.0),
                 lambda: s.sample_to_dir(1, "unused")):
        with pytest.raises(pdiff.NullPointerError, match="this sampler is closed"):
            call()
    if pdiff.has_training():
        ds = pdiff.Dataset.from_memory(LAYOUT, data)
        ds.close()
        with pytest.raises(pdiff.NullPointerError, match="this dataset is closed"):
            pdiff.Generator.train(ds, **C_TEST_OPTIONS)


# ---- cross-language reproducibility ----

def test_reproduces_the_c_program(c_reference):
    c_bundle, expect, cpp = c_reference
    with pdiff.Sampler(c_bundle, provider="cpu") as s:
        got = s.sample(3, seed=42, sampler="ddim", steps=10)
    assert expect.size == 3 * D
    assert got.tobytes() == expect.astype("<f4").tobytes(), "Python differs from the C program's samples"
    if cpp is not None:
        assert got.tobytes() == cpp.astype("<f4").tobytes(), "Python differs from the C++ test's samples"


@needs_training
def test_training_reproduces_the_c_program(c_reference, sampler):
    """Training is deterministic on the CPU: the generator trained here from the C test's data
    and options samples exactly what the C-trained bundle samples."""
    _, expect, _ = c_reference
    got = sampler.sample(3, seed=42, sampler="ddim", steps=10)
    assert got.tobytes() == expect.astype("<f4").tobytes()


# ---- conditional generation ----

def _two_tasks():
    """Two tasks whose checkpoints sit around points A and B, conditioned on (1, 0) and (0, 1)
    (the Rust test tests/conditional.rs uses the same data)."""
    d = 28
    j = np.arange(d, dtype=np.float32)
    a = np.sin(j * 0.37).astype(np.float32)
    b = a + np.where(j % 2 == 0, 0.6, -0.6).astype(np.float32)
    rows, cond = [], []
    for i in range(24):
        base, c = (a, [1.0, 0.0]) if i % 2 == 0 else (b, [0.0, 1.0])
        rows.append(base + 0.01 * np.sin((i * 5 + j * 3) * 0.71).astype(np.float32))
        cond.append(c)
    return np.array(rows, dtype=np.float32), np.array(cond, dtype=np.float32), a, b


@pytest.mark.skipif(not pdiff.has_training(), reason="training needs the full build")
def test_conditional_generation(tmp_path):
    data, cond, a, b = _two_tasks()
    layout = [("net.w", (4, 6)), ("net.b", (4,))]
    ds = pdiff.Dataset.from_memory(layout, data, conditions=cond)
    assert ds.condition_dim == 2
    with pytest.raises(pdiff.InvalidArgumentError, match="conditions"):
        pdiff.Dataset.from_memory(layout, data, conditions=cond[:5])
    gen = pdiff.Generator.train(ds, ae_steps=300, diffusion_steps=1500, batch_size=12, seed=0, device="cpu")
    gen.export(tmp_path / "bundle")
    s = pdiff.Sampler(tmp_path / "bundle", provider="cpu")
    assert s.condition_dim == 2 and s.condition_names is None

    def on_own(rows, own, other):
        return int(sum(np.sum((r - own) ** 2) < np.sum((r - other) ** 2) for r in rows))

    to_a = s.sample(32, seed=3, steps=20, condition=[1.0, 0.0])
    to_b = s.sample(32, seed=3, steps=20, condition=[0.0, 1.0])
    assert on_own(to_a, a, b) >= 28 and on_own(to_b, b, a) >= 28
    # Same arguments, same bits; one condition per row = each row's own condition.
    assert np.array_equal(to_a, s.sample(32, seed=3, steps=20, condition=np.array([1.0, 0.0])))
    per_row = np.array([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(32)], dtype=np.float32)
    mixed = s.sample(32, seed=3, steps=20, condition=per_row)
    assert np.array_equal(mixed[0::2], to_a[0::2]) and np.array_equal(mixed[1::2], to_b[1::2])
    guided = s.sample(8, seed=3, steps=20, condition=[1.0, 0.0], guidance=3.0)
    assert guided.shape == (8, 28) and not np.array_equal(guided, to_a[:8])
    # No condition: the unconditional model (both tasks).
    plain = s.sample(32, seed=3, steps=20)
    assert 4 <= on_own(plain, a, b) <= 28
    # Errors: a condition of the wrong size, guidance without a condition, a condition for an
    # unconditional bundle.
    with pytest.raises(pdiff.InvalidArgumentError, match="expected C = 2"):
        s.sample(2, condition=[1.0, 0.0, 0.0])
    with pytest.raises(pdiff.InvalidArgumentError, match="guidance"):
        s.sample(2, guidance=2.0)
    best, index, score = s.best_of_n(6, lambda p: -float(np.sum((p - a) ** 2)), seed=3, steps=20, condition=[1.0, 0.0])
    assert 0 <= index < 6 and np.sum((best - a) ** 2) < np.sum((best - b) ** 2)
    s.sample_to_dir(2, tmp_path / "out", seed=3, steps=20, condition=[0.0, 1.0])
    assert (tmp_path / "out" / "gen_0001.safetensors").exists()
