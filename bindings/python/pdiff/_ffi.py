"""Low-level layer: cffi (ABI mode) over include/pdiff.h, generated at import time.

The declarations are never copied by hand: the header's text is turned into something
``ffi.cdef`` accepts (comments removed, preprocessor conditionals evaluated with
``__cplusplus`` undefined and ``PDIFF_FEATURE_TRAIN`` defined, ``#include`` / guard lines
dropped, integer ``#define``s kept), so the binding follows the header and cannot drift from it.

The training API is always declared, whatever the library: in ABI mode cffi resolves a function
only when it is first used, so declaring functions that a serve-only libpdiff lacks is harmless.
What the loaded library can do is ``CAPABILITIES`` (``pdiff_capabilities()``); ``HAS_TRAINING``
is its ``PDIFF_CAPABILITY_TRAIN`` bit.

Where things are found (first match wins):

- libpdiff.so: ``$PDIFF_LIB``; else the one inside the package (``pdiff/lib/``, a wheel built by
  ``make wheel``: ONNX Runtime then comes from the onnxruntime wheel, ``$PDIFF_ORT_LIB`` unless
  set); else ``<sys.prefix>/lib/libpdiff.so`` (``make install
  PREFIX=$VIRTUAL_ENV``); else, only when this package is imported from a source checkout, the
  checkout's ``target/release/libpdiff.so``; else the system loader
  (``ctypes.util.find_library("pdiff")``, then ``libpdiff.so`` through ld.so's search path).
- pdiff.h: ``$PDIFF_HEADER``; else the copy inside the installed package (``pdiff/include/``,
  written by ``pip install``); else ``<libdir>/../include/pdiff.h`` next to the library found
  (an installed prefix); else the checkout's ``include/pdiff.h`` (source checkout only); else
  /usr/local/include, /usr/include.
"""
from __future__ import annotations

import ctypes.util
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Optional

import cffi

__all__ = [
    "ffi", "lib", "HEADER_PATH", "LIBRARY_PATH", "HEADER_ABI_VERSION", "CAPABILITIES", "HAS_TRAINING",
    "header_to_cdef",
]

_PACKAGE_DIR = Path(__file__).resolve().parent
# The headers `pip install` copied into the package (bindings/python/setup.py).
_PACKAGED_INCLUDE = _PACKAGE_DIR / "include"


def _source_checkout() -> Optional[Path]:
    """The repository root when this package is bindings/python/pdiff of a libpdiff checkout
    (not an installed copy); None otherwise. An installed package must never pick up a build
    tree that merely happens to sit three directories above it."""
    root = _PACKAGE_DIR.parent.parent.parent
    if (_PACKAGE_DIR.parent.name, _PACKAGE_DIR.parent.parent.name) != ("python", "bindings"):
        return None
    if (root / "Cargo.toml").is_file() and (root / "include" / "pdiff.h").is_file():
        return root
    return None


_CHECKOUT = _source_checkout()

# Defined while parsing the header: the training declarations are wanted whatever the
# library (see the module docstring), and pdiff_features.h itself is not read.
PREDEFINED = ("PDIFF_FEATURE_TRAIN",)

# Strings, block comments and line comments in one pass, so that "//" inside a string literal
# (or a quote inside a comment) is not misread.
_TOKENS = re.compile(r'"(?:\\.|[^"\\\n])*"|/\*.*?\*/|//[^\n]*', re.S)
_DIRECTIVE = re.compile(r"^\s*#\s*(\w+)\s*(.*?)\s*$")
_INT_LITERAL = re.compile(r"^\(?\s*(?:0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*\)?$")
_EXTERN_C = re.compile(r'extern\s+"C"\s*\{')


def _strip_comments(text: str) -> str:
    def repl(m: re.Match) -> str:
        s = m.group(0)
        if s.startswith('"'):
            return s
        return "\n" * s.count("\n") if s.startswith("/*") else ""

    return _TOKENS.sub(repl, text)


def _eval_condition(expr: str, defined: set[str]) -> bool:
    """The few ``#if`` expressions a generated header uses; anything else is an error (loud
    rather than silently wrong)."""
    e = expr.strip()
    m = re.fullmatch(r"(!?)\s*defined\s*\(?\s*(\w+)\s*\)?", e)
    if m:
        return (m.group(2) in defined) != bool(m.group(1))
    if re.fullmatch(r"\d+", e):
        return int(e) != 0
    raise ImportError(f"pdiff.h: cannot evaluate '#if {expr}' for cffi")


def header_to_cdef(text: str, defines: Iterable[str] = ()) -> str:
    """Turn the text of pdiff.h into declarations ``ffi.cdef`` can parse, with the macros
    ``defines`` defined beforehand (as ``-D`` would)."""
    text = text.replace("\\\r\n", "").replace("\\\n", "")  # line continuations
    text = _strip_comments(text)
    defined: set[str] = set(defines)  # __cplusplus is never defined: this is C
    stack: list[tuple[bool, bool]] = []  # (this branch active, some branch taken)
    out: list[str] = []

    def active() -> bool:
        return all(a for a, _ in stack)

    for line in text.splitlines():
        m = _DIRECTIVE.match(line)
        if not m:
            if active():
                out.append(line)
            continue
        kw, rest = m.group(1), m.group(2)
        if kw in ("ifdef", "ifndef"):
            name = rest.split()[0] if rest else ""
            cond = (name in defined) == (kw == "ifdef")
            stack.append((cond, cond))
        elif kw == "if":
            cond = _eval_condition(rest, defined)
            stack.append((cond, cond))
        elif kw == "elif":
            if not stack:
                raise ImportError("pdiff.h: #elif without #if")
            _, taken = stack[-1]
            cond = not taken and _eval_condition(rest, defined)
            stack[-1] = (cond, taken or cond)
        elif kw == "else":
            if not stack:
                raise ImportError("pdiff.h: #else without #if")
            _, taken = stack[-1]
            stack[-1] = (not taken, True)
        elif kw == "endif":
            if not stack:
                raise ImportError("pdiff.h: #endif without #if")
            stack.pop()
        elif not active():
            continue
        elif kw == "define":
            parts = rest.split(None, 1)
            if not parts or "(" in parts[0]:
                continue  # function-like macros are not part of the ABI
            name = parts[0]
            defined.add(name)
            value = parts[1].strip() if len(parts) > 1 else ""
            if _INT_LITERAL.match(value):
                number = re.sub(r"[uUlL]+", "", value.strip("() "))
                out.append(f"#define {name} {int(number, 0)}")
        elif kw == "undef":
            defined.discard(rest.strip())
        # include, pragma, error, ...: nothing for cdef
    if stack:
        raise ImportError("pdiff.h: unterminated #if")
    cdef = "\n".join(line.rstrip() for line in out if line.strip())
    # Belt and braces: an extern "C" block that was not behind #ifdef __cplusplus.
    while True:
        m = _EXTERN_C.search(cdef)
        if not m:
            break
        depth, i = 1, m.end()
        while i < len(cdef) and depth:
            depth += {"{": 1, "}": -1}.get(cdef[i], 0)
            i += 1
        cdef = cdef[: m.start()] + cdef[m.end() : i - 1] + cdef[i:]
    return cdef


# The serve-only libpdiff.so a wheel built by `make wheel` carries (bindings/python/setup.py).
_BUNDLED_LIBRARY = _PACKAGE_DIR / "lib" / "libpdiff.so"


def _find_library() -> str:
    env = os.environ.get("PDIFF_LIB")
    if env:
        return env
    candidates = [_BUNDLED_LIBRARY, Path(sys.prefix) / "lib" / "libpdiff.so"]
    if _CHECKOUT is not None:
        candidates.append(_CHECKOUT / "target" / "release" / "libpdiff.so")
    for c in candidates:
        if c.is_file():
            return str(c)
    return ctypes.util.find_library("pdiff") or "libpdiff.so"


def _find_header(library: str) -> Path:
    candidates = []
    env = os.environ.get("PDIFF_HEADER")
    if env:
        candidates.append(Path(env))
    candidates.append(_PACKAGED_INCLUDE / "pdiff.h")
    if os.sep in library:
        candidates.append(Path(library).resolve().parent.parent / "include" / "pdiff.h")
    if _CHECKOUT is not None:
        candidates.append(_CHECKOUT / "include" / "pdiff.h")
    candidates += [Path("/usr/local/include/pdiff.h"), Path("/usr/include/pdiff.h")]
    for c in candidates:
        if c.is_file():
            return c
    raise ImportError("pdiff.h not found (set $PDIFF_HEADER); looked at: " + ", ".join(map(str, candidates)))


def _onnxruntime_library() -> Optional[str]:
    """libonnxruntime.so inside the installed onnxruntime wheel (found without importing it)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        found = sorted((Path(directory) / "capi").glob("libonnxruntime.so*"))
        if found:
            return str(found[0])
    return None


LIBRARY_PATH = _find_library()
# The bundled library has no other way to find ONNX Runtime: the wheel depends on onnxruntime,
# whose library the engine is told about (unless the user chose one).
if LIBRARY_PATH == str(_BUNDLED_LIBRARY) and not os.environ.get("PDIFF_ORT_LIB") and not os.environ.get("ORT_DYLIB_PATH"):
    _ort = _onnxruntime_library()
    if _ort is not None:
        os.environ["PDIFF_ORT_LIB"] = _ort
HEADER_PATH = _find_header(LIBRARY_PATH)
CDEF = header_to_cdef(HEADER_PATH.read_text(encoding="utf-8"), PREDEFINED)



def _dlopen(path):
    """Load libpdiff with ``OMP_WAIT_POLICY=passive`` in the environment while it loads, unless
    the user set it or ``GOMP_SPINCOUNT``. A full build loads libtorch and its OpenMP runtime
    (libgomp), which reads the variable once, when it is loaded: with the default policy its
    threads spin at every barrier, and a training next to another busy process crawls
    (docs/api.md, "Threads"). The environment is restored afterwards. It has no effect when
    libgomp was already loaded (``import torch`` before ``import pdiff``)."""
    lend = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if lend:
        os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
        return ffi.dlopen(path)
    finally:
        if lend:
            os.environ.pop("OMP_WAIT_POLICY", None)


ffi = cffi.FFI()
ffi.cdef(CDEF)
try:
    lib = _dlopen(LIBRARY_PATH)
except OSError as e:
    raise ImportError(f"cannot load libpdiff ({LIBRARY_PATH}): {e}; set $PDIFF_LIB") from e

HEADER_ABI_VERSION: int = lib.PDIFF_ABI_VERSION
if lib.pdiff_abi_version() != HEADER_ABI_VERSION:
    raise ImportError(
        f"{LIBRARY_PATH} implements ABI {lib.pdiff_abi_version()}, "
        f"{HEADER_PATH} declares {HEADER_ABI_VERSION}"
    )

try:
    CAPABILITIES: int = int(lib.pdiff_capabilities())
except AttributeError as e:  # cffi: the symbol is missing from the library
    raise ImportError(f"{LIBRARY_PATH} has no pdiff_capabilities(): older than {HEADER_PATH}") from e
HAS_TRAINING: bool = bool(CAPABILITIES & lib.PDIFF_CAPABILITY_TRAIN)
