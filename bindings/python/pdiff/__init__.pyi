# Type stubs of the pdiff package (checked against the module by mypy's stubtest:
# bindings/python/tests/test_torch.py). Documentation lives in __init__.py's docstrings.
import enum
import os
from typing import (Any, Callable, Iterable, List, Literal, Mapping, NamedTuple, Optional, Sequence, Tuple,
                    Type, TypeVar, Union, overload)

import numpy as np
import numpy.typing as npt

from . import _state_dicts as _state_dicts

__all__ = [
    "ABI_VERSION", "Status", "Error", "InvalidArgumentError", "NullPointerError",
    "BufferTooSmallError", "IoError", "CheckpointError", "BundleError", "OnnxRuntimeError",
    "DeviceUnavailableError", "DivergedError", "CancelledError", "TorchError", "PanicError",
    "StructSizeError", "OutputExistsError", "OutOfMemoryError", "TrainingUnavailableError", "TensorInfo", "ClipCount", "Dataset",
    "Generator", "Sampler", "version", "abi_version", "has_training", "status_name",
]

ABI_VERSION: int
__version__: str

# Built at import time from the header's pdiff_status enum.
class Status(enum.IntEnum):
    OK = 0
    INVALID_ARGUMENT = 1
    NULL_POINTER = 2
    BUFFER_TOO_SMALL = 3
    IO = 4
    CHECKPOINT = 5
    BUNDLE = 6
    RUNTIME = 7
    DEVICE_UNAVAILABLE = 8
    DIVERGED = 9
    CANCELLED = 10
    TORCH = 11
    PANIC = 12
    STRUCT_SIZE = 13
    OUTPUT_EXISTS = 14
    OUT_OF_MEMORY = 15

# ---- errors ----

class Error(Exception):
    # None for TrainingUnavailableError (raised before any C call); an int for a status newer
    # than this module.
    status: Union[Status, int, None]
    message: str
    def __init__(self, status: Union[Status, int, None], message: str) -> None: ...

class InvalidArgumentError(Error, ValueError): ...
class NullPointerError(Error): ...
class BufferTooSmallError(Error, ValueError): ...
class IoError(Error): ...
class CheckpointError(Error): ...
class BundleError(Error): ...
class OnnxRuntimeError(Error): ...
class DeviceUnavailableError(Error): ...
class DivergedError(Error): ...
class CancelledError(Error): ...
class TorchError(Error): ...
class PanicError(Error): ...
class StructSizeError(Error): ...
class OutputExistsError(Error): ...
class OutOfMemoryError(Error, MemoryError): ...
class TrainingUnavailableError(Error, NotImplementedError): ...

# ---- versions ----

def version() -> str: ...
def status_name(status: Union[Status, int]) -> str: ...
def abi_version() -> int: ...
def has_training() -> bool: ...

# ---- shared types ----

SampleProgressFn = Callable[[int, int], Optional[bool]]
ProgressFn = Callable[[str, int, int, float], Optional[bool]]
LayoutSpec = Union[Mapping[str, Sequence[int]], Iterable[Any]]
# A float array, or anything numpy reads as real numbers (lists, CPU torch tensors).
_ArrayLike = Any
# A state dict: tensor names to torch tensors or numpy arrays.
_StateDict = Mapping[str, Any]

class TensorInfo(NamedTuple):
    name: str
    shape: Tuple[int, ...]
    offset: int

class ClipCount(NamedTuple):
    latents: int
    values: int

_H = TypeVar("_H", bound=_Handle)

class _Handle:
    def __init__(self, ptr: Any = ...) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __enter__(self: _H) -> _H: ...
    def __exit__(self, *exc: object) -> None: ...

# ---- Dataset ----

class Dataset(_Handle):
    @classmethod
    def from_memory(cls, layout: LayoutSpec, array: _ArrayLike, conditions: Optional[_ArrayLike] = None) -> Dataset: ...
    @classmethod
    def from_state_dicts(cls, state_dicts: Union[Sequence[_StateDict], Mapping[Any, _StateDict]],
                         select: Union[None, str, Sequence[str]] = None,
                         conditions: Optional[_ArrayLike] = None) -> Dataset: ...
    @classmethod
    def load_dir(cls, path: Union[str, bytes, "os.PathLike[str]"], patterns: Union[None, str, Sequence[str]] = None,
                 conditions_file: Union[None, str, bytes, "os.PathLike[str]"] = None) -> Dataset: ...
    @property
    def condition_dim(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def param_count(self) -> int: ...
    @property
    def warnings(self) -> List[str]: ...

# ---- Generator ----

class Generator(_Handle):
    @classmethod
    def train(cls, dataset: Dataset, *, progress: Optional[ProgressFn] = None, **options: Any) -> Generator: ...
    def export(self, bundle_dir: Union[str, bytes, "os.PathLike[str]"], force: bool = False) -> None: ...
    @property
    def param_count(self) -> int: ...
    @property
    def warnings(self) -> List[str]: ...

# ---- Sampler ----

_Path = Union[str, bytes, "os.PathLike[str]"]
_F32 = npt.NDArray[np.float32]

class Sampler(_Handle):
    def __init__(self, bundle_dir: _Path, provider: str = "auto", device_index: int = 0, intra_threads: int = 0,
                 runtime_library: Optional[_Path] = None, *, device_id: Optional[int] = None) -> None: ...
    @property
    def backend(self) -> str: ...
    @property
    def param_count(self) -> int: ...
    @property
    def condition_dim(self) -> int: ...
    @property
    def condition_names(self) -> Optional[List[str]]: ...
    @property
    def layout(self) -> List[TensorInfo]: ...
    @overload
    def sample(self, n: int, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = 50,
               out: Optional[_F32] = None, condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
               progress: Optional[SampleProgressFn] = None, return_clipped: Literal[False] = False) -> _F32: ...
    @overload
    def sample(self, n: int, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = 50,
               out: Optional[_F32] = None, condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
               progress: Optional[SampleProgressFn] = None, *,
               return_clipped: Literal[True]) -> Tuple[_F32, ClipCount]: ...
    def sample_adapter(self, model_index: int = 0, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = 50,
                       condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                       progress: Optional[SampleProgressFn] = None) -> bytes: ...
    def sample_into(self, tensors: dict[Union[str, int], _F32], n: int = 1, seed: int = 0, sampler: str = "ddim",
                    steps: Optional[int] = 50, condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                    progress: Optional[SampleProgressFn] = None) -> ClipCount: ...
    @overload
    def sample_named(self, n: int, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = 50,
                     condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                     progress: Optional[SampleProgressFn] = None,
                     return_clipped: Literal[False] = False) -> List[dict[str, _F32]]: ...
    @overload
    def sample_named(self, n: int, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = 50,
                     condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                     progress: Optional[SampleProgressFn] = None, *,
                     return_clipped: Literal[True]) -> Tuple[List[dict[str, _F32]], ClipCount]: ...
    # Values are torch.Tensor (float32) or numpy arrays (as_torch=False, or torch absent).
    @overload
    def sample_state_dicts(self, n: int, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = 50,
                           condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                           progress: Optional[SampleProgressFn] = None, return_clipped: Literal[False] = False,
                           as_torch: Optional[bool] = None) -> List[dict[str, Any]]: ...
    @overload
    def sample_state_dicts(self, n: int, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = 50,
                           condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                           progress: Optional[SampleProgressFn] = None, *, return_clipped: Literal[True],
                           as_torch: Optional[bool] = None) -> Tuple[List[dict[str, Any]], ClipCount]: ...
    def sample_into_module(self, model: Any, seed: int = 0, sampler: str = "ddim", steps: Optional[int] = 50,
                           condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                           progress: Optional[SampleProgressFn] = None) -> ClipCount: ...
    @overload
    def best_of_n(self, n: int, score_fn: Callable[[_F32], float], seed: int = 0, sampler: str = "ddim",
                  steps: Optional[int] = 50, condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                  progress: Optional[SampleProgressFn] = None,
                  return_clipped: Literal[False] = False) -> Tuple[_F32, int, float]: ...
    @overload
    def best_of_n(self, n: int, score_fn: Callable[[_F32], float], seed: int = 0, sampler: str = "ddim",
                  steps: Optional[int] = 50, condition: Optional[_ArrayLike] = None, guidance: float = 1.0,
                  progress: Optional[SampleProgressFn] = None, *,
                  return_clipped: Literal[True]) -> Tuple[_F32, int, float, ClipCount]: ...
    def sample_to_dir(self, n: int, directory: _Path, seed: int = 0, sampler: str = "ddim",
                      steps: Optional[int] = 50, force: bool = False, condition: Optional[_ArrayLike] = None,
                      guidance: float = 1.0, progress: Optional[SampleProgressFn] = None) -> ClipCount: ...
