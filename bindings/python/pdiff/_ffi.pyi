# Type stubs of pdiff._ffi (checked by mypy's stubtest with the package's). ffi and lib are
# cffi objects generated from pdiff.h at import time: their members follow the header.
from pathlib import Path
from typing import Any, Iterable, Optional

__all__ = [
    "ffi", "lib", "HEADER_PATH", "LIBRARY_PATH", "HEADER_ABI_VERSION", "CAPABILITIES", "HAS_TRAINING",
    "header_to_cdef",
]

PREDEFINED: tuple[str, ...]
CDEF: str
LIBRARY_PATH: str
HEADER_PATH: Path
HEADER_ABI_VERSION: int
CAPABILITIES: int
HAS_TRAINING: bool
ffi: Any
lib: Any

def header_to_cdef(text: str, defines: Iterable[str] = ()) -> str: ...
def _find_library() -> str: ...
def _onnxruntime_library() -> Optional[str]: ...
_BUNDLED_LIBRARY: Path
def _find_header(library: str) -> Path: ...
def _source_checkout() -> Optional[Path]: ...
