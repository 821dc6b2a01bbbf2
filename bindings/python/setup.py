"""Build step of the pdiff package (metadata: pyproject.toml).

The installed package must carry the C declarations it parses at import time, so building it
copies the repository's include/pdiff.h and include/pdiff_features.h (pdiff.h includes it) into
pdiff/include/. With $PDIFF_WHEEL_LIBRARY (a serve-only libpdiff.so: `make wheel`), the library
is copied into pdiff/lib/ as well, the wheel is a platform wheel (py3-none-<platform>, for
auditwheel to give its manylinux tag) and it depends on onnxruntime, whose libonnxruntime the
package hands to the library at import (pdiff/_ffi.py). They are read from the checkout at build time, never kept as a second copy
here; an sdist carries them in pdiff/include/ for a wheel built from it later.
"""
import os
import shutil
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import SetupError

HERE = Path(__file__).resolve().parent
HEADERS = ("pdiff.h", "pdiff_features.h")
PACKAGE_INCLUDE = Path("pdiff") / "include"


def header_dir() -> Path:
    """Where the headers come from: an unpacked sdist's own copy (it has PKG-INFO at its top),
    else the checkout's include/ two levels up. Missing headers fail the build."""
    if (HERE / "PKG-INFO").is_file():
        source = HERE / PACKAGE_INCLUDE
    else:
        source = HERE.parent.parent / "include"
    missing = [str(source / h) for h in HEADERS if not (source / h).is_file()]
    if missing:
        raise SetupError(
            "the pdiff package needs libpdiff's C headers, missing: " + ", ".join(missing)
            + " (build it from bindings/python of a libpdiff checkout)"
        )
    return source


# The library to bundle; None for the pure-Python package that finds an installed libpdiff.
BUNDLED = os.environ.get("PDIFF_WHEEL_LIBRARY") or None
# The training wheel's library links the torch wheel's libtorch (RUNPATH into site-packages/torch/lib,
# scripts/wheel.sh): it depends on exactly the torch it was built against.
TORCH = os.environ.get("PDIFF_WHEEL_TORCH") or None
if BUNDLED is not None and not Path(BUNDLED).is_file():
    raise SetupError(f"$PDIFF_WHEEL_LIBRARY={BUNDLED} is not a file (build it: make lib-serve)")


def copy_headers(dest: Path) -> None:
    source = header_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for h in HEADERS:
        shutil.copyfile(source / h, dest / h)


class BuildPyWithHeaders(build_py):
    def _copies_headers(self) -> bool:
        # An editable install imports bindings/python/pdiff itself, which finds the checkout's
        # include/ (pdiff/_ffi.py): nothing to copy.
        return not getattr(self, "editable_mode", False)

    def run(self):
        super().run()
        if self._copies_headers():
            copy_headers(Path(self.build_lib) / PACKAGE_INCLUDE)
            if BUNDLED is not None:
                (Path(self.build_lib) / "pdiff" / "lib").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(BUNDLED, Path(self.build_lib) / "pdiff" / "lib" / "libpdiff.so")

    def get_outputs(self, include_bytecode=True):
        extra = [str(Path(self.build_lib) / PACKAGE_INCLUDE / h) for h in HEADERS] if self._copies_headers() else []
        if self._copies_headers() and BUNDLED is not None:
            extra.append(str(Path(self.build_lib) / "pdiff" / "lib" / "libpdiff.so"))
        return super().get_outputs(include_bytecode) + extra


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        # A bundled libpdiff.so makes the wheel platform-specific (not a Python extension: cffi
        # loads it in ABI mode, so any Python 3 takes it).
        return BUNDLED is not None


class BdistWheel(bdist_wheel):
    def get_tag(self):
        python, abi, platform = super().get_tag()
        return ("py3", "none", platform) if BUNDLED is not None else (python, abi, platform)


class SdistWithHeaders(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        copy_headers(Path(base_dir) / PACKAGE_INCLUDE)


setup(
    cmdclass={"build_py": BuildPyWithHeaders, "sdist": SdistWithHeaders, "bdist_wheel": BdistWheel},
    distclass=BinaryDistribution,
    install_requires=["numpy", "cffi"] + (["onnxruntime>=1.30"] if BUNDLED is not None else [])
    + ([f"torch=={TORCH}"] if TORCH else []),
)
