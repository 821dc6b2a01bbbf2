"""Build step of the pdiff package (metadata: pyproject.toml).

The installed package must carry the C declarations it parses at import time, so building it
copies the repository's include/pdiff.h and include/pdiff_features.h (pdiff.h includes it) into
pdiff/include/. They are read from the checkout at build time, never kept as a second copy
here; an sdist carries them in pdiff/include/ for a wheel built from it later.
"""
import shutil
from pathlib import Path

from setuptools import setup
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

    def get_outputs(self, include_bytecode=True):
        extra = [str(Path(self.build_lib) / PACKAGE_INCLUDE / h) for h in HEADERS] if self._copies_headers() else []
        return super().get_outputs(include_bytecode) + extra


class SdistWithHeaders(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        copy_headers(Path(base_dir) / PACKAGE_INCLUDE)


setup(cmdclass={"build_py": BuildPyWithHeaders, "sdist": SdistWithHeaders})
