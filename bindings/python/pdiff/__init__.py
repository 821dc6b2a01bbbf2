"""Python binding of libpdiff (neural network parameter diffusion) over its stable C ABI.

    import numpy as np, pdiff

    ds = pdiff.Dataset.from_memory([("w", (4, 8)), ("b", (4,))], checkpoints)   # [K, D] floats
    ds = pdiff.Dataset.from_state_dicts([m.state_dict() for m in models], select=["*.norm*"])
    gen = pdiff.Generator.train(ds, ae_steps=1000, diffusion_steps=3000, seed=0,
                                progress=lambda stage, step, total, loss: True)  # False: cancel
    gen.export("bundle")
    s = pdiff.Sampler("bundle", provider="cpu")
    params = s.sample(100, seed=7, sampler="ddim", steps=50)      # ndarray [100, D] float32
    params, clipped = s.sample(100, seed=7, progress=lambda step, total: True,  # False: cancel
                               return_clipped=True)               # clipped: ClipCount(latents, values)
    models = s.sample_named(10, seed=7)                            # [{"w": (4, 8), "b": (4,)}]
    sds = s.sample_state_dicts(10, seed=7)                         # [{"w": torch.Tensor, ...}]
    s.sample_into_module(model, seed=7)                            # into model's own tensors
    best, index, score = s.best_of_n(100, lambda p: -float(p @ p), seed=7)

Every failing call raises a subclass of :class:`pdiff.Error` carrying ``status`` (a
:class:`pdiff.Status`) and ``message`` (the library's ``pdiff_last_error()``). Handles are freed
when garbage-collected, or by ``close()`` / a ``with`` block: at once, or, when another thread is
inside a call on the same object, as soon as that call returns (calls made after ``close()``
raise :class:`NullPointerError`). The low-level layer (``pdiff._ffi.ffi`` / ``pdiff._ffi.lib``)
is generated from include/pdiff.h at import time.

A serve-only libpdiff (built without libtorch) has no training: :func:`has_training` is then
False and ``Dataset.from_memory`` / ``from_state_dicts`` / ``load_dir`` / ``Generator.train`` raise
:class:`TrainingUnavailableError`; :class:`Sampler` works with either build.
"""
from __future__ import annotations

import contextlib
import enum
import math
import os
import threading
import warnings
from collections import namedtuple
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _state_dicts
from ._ffi import HAS_TRAINING, HEADER_ABI_VERSION, LIBRARY_PATH, ffi, lib

__all__ = [
    "ABI_VERSION", "Status", "Error", "InvalidArgumentError", "NullPointerError",
    "BufferTooSmallError", "IoError", "CheckpointError", "BundleError", "OnnxRuntimeError",
    "DeviceUnavailableError", "DivergedError", "CancelledError", "TorchError", "PanicError",
    "StructSizeError", "OutputExistsError", "OutOfMemoryError", "TrainingUnavailableError", "TensorInfo", "ClipCount", "Dataset",
    "Generator", "Sampler", "version", "abi_version", "has_training", "status_name",
]

ABI_VERSION = HEADER_ABI_VERSION


def _enum(typename: str, prefix: str) -> dict:
    """name (lower case, prefix removed) -> value, read from the header's enum."""
    return {k[len(prefix):].lower(): v for k, v in ffi.typeof(typename).relements.items() if k.startswith(prefix)}


# Built from the header: Status.OK, Status.INVALID_ARGUMENT, ..., Status.STRUCT_SIZE.
Status = enum.IntEnum(
    "Status",
    {("OK" if k == "PDIFF_OK" else k[len("PDIFF_ERR_"):]): v
     for k, v in sorted(ffi.typeof("pdiff_status").relements.items(), key=lambda kv: kv[1])},
)
Status.__module__ = __name__

_PRESETS = _enum("pdiff_preset", "PDIFF_PRESET_")
_DEVICES = _enum("pdiff_device", "PDIFF_DEVICE_")
_WEIGHTINGS = _enum("pdiff_reconstruction_weighting", "PDIFF_RECONSTRUCTION_")
_PROVIDERS = _enum("pdiff_provider", "PDIFF_PROVIDER_")
_SAMPLERS = _enum("pdiff_sampler_kind", "PDIFF_SAMPLER_")


# ---- errors ----

class Error(Exception):
    """A failed libpdiff call: ``status`` (Status) and ``message`` (str)."""

    status: Status = None  # set on every instance

    def __init__(self, status, message: str):
        try:
            status = Status(status)
        except ValueError:
            pass  # a status newer than this module: keep the integer
        self.status = status
        self.message = message
        super().__init__(message)

    def __repr__(self) -> str:
        name = "None" if self.status is None else status_name(self.status)
        return f"{type(self).__name__}({name}, {self.message!r})"


class InvalidArgumentError(Error, ValueError):
    """An argument or option has an invalid value (PDIFF_ERR_INVALID_ARGUMENT)."""


class NullPointerError(Error):
    """A required handle was missing, e.g. a closed object (PDIFF_ERR_NULL_POINTER)."""


class BufferTooSmallError(Error, ValueError):
    """The output buffer is smaller than the result (PDIFF_ERR_BUFFER_TOO_SMALL)."""


class IoError(Error):
    """A file could not be read or written (PDIFF_ERR_IO)."""


class CheckpointError(Error):
    """A checkpoint is unreadable, inconsistent or non-finite (PDIFF_ERR_CHECKPOINT)."""


class BundleError(Error):
    """A bundle is missing, corrupt or of an unknown version (PDIFF_ERR_BUNDLE)."""


class OnnxRuntimeError(Error):
    """ONNX Runtime is missing or one of its sessions failed (PDIFF_ERR_RUNTIME)."""


class DeviceUnavailableError(Error):
    """A required device (CUDA) is not available (PDIFF_ERR_DEVICE_UNAVAILABLE)."""


class DivergedError(Error):
    """Training produced a non-finite loss (PDIFF_ERR_DIVERGED)."""


class CancelledError(Error):
    """A progress callback asked to stop (PDIFF_ERR_CANCELLED)."""


class TorchError(Error):
    """libtorch reported an error (PDIFF_ERR_TORCH)."""


class PanicError(Error):
    """A bug in libpdiff, caught at the boundary (PDIFF_ERR_PANIC)."""


class StructSizeError(Error):
    """An options struct whose struct_size is none of this library's layouts of it
    (PDIFF_ERR_STRUCT_SIZE)."""


class OutputExistsError(Error):
    """An output path holds something libpdiff did not write: a file, a link, another kind of
    output, or a directory with other files (``force=True`` writes beside those). Nothing was
    written or removed (PDIFF_ERR_OUTPUT_EXISTS)."""


class OutOfMemoryError(Error, MemoryError):
    """The memory for what the call reads or generates could not be allocated; the call
    stopped and nothing else failed (PDIFF_ERR_OUT_OF_MEMORY)."""


class TrainingUnavailableError(Error, NotImplementedError):
    """Training was asked of a serve-only libpdiff (no ``pdiff_dataset_*`` /
    ``pdiff_generator_*``). Raised by this module before any C call, so ``status`` is None."""


_ERRORS = {
    "INVALID_ARGUMENT": InvalidArgumentError, "NULL_POINTER": NullPointerError,
    "BUFFER_TOO_SMALL": BufferTooSmallError, "IO": IoError, "CHECKPOINT": CheckpointError,
    "BUNDLE": BundleError, "RUNTIME": OnnxRuntimeError, "DEVICE_UNAVAILABLE": DeviceUnavailableError,
    "DIVERGED": DivergedError, "CANCELLED": CancelledError, "TORCH": TorchError, "PANIC": PanicError,
    "STRUCT_SIZE": StructSizeError, "OUTPUT_EXISTS": OutputExistsError, "OUT_OF_MEMORY": OutOfMemoryError,
}


def _error(status: int, message: str) -> Error:
    try:
        cls = _ERRORS.get(Status(status).name, Error)
    except ValueError:
        cls = Error
    return cls(status, message)


def _output_flags(force: bool) -> int:
    return lib.PDIFF_OUTPUT_FORCE if force else 0


def _check(status: int) -> None:
    if status != lib.PDIFF_OK:
        raise _error(status, ffi.string(lib.pdiff_last_error()).decode("utf-8", "replace"))


def _invalid(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(Status.INVALID_ARGUMENT, message)


# ---- versions ----

def version() -> str:
    """The library version, e.g. "0.1.0"."""
    return ffi.string(lib.pdiff_version()).decode()


def status_name(status) -> str:
    """The header's name of a status, e.g. "PDIFF_ERR_BUNDLE" for ``Status.BUNDLE`` (the
    library's ``pdiff_status_name()``); "PDIFF_STATUS_UNKNOWN" for a value it does not know."""
    return ffi.string(lib.pdiff_status_name(int(status))).decode()


def abi_version() -> int:
    """The ABI version of the loaded library (equal to ABI_VERSION, checked at import)."""
    return int(lib.pdiff_abi_version())


def has_training() -> bool:
    """Whether the loaded libpdiff can train (:class:`Dataset`, :class:`Generator`): its
    ``pdiff_capabilities()`` has ``PDIFF_CAPABILITY_TRAIN``. False for a serve-only build."""
    return HAS_TRAINING


def _require_training(what: str) -> None:
    # Without this, cffi would raise AttributeError ("function/symbol ... not found") from the
    # first missing pdiff_dataset_* / pdiff_generator_* function.
    if not HAS_TRAINING:
        raise TrainingUnavailableError(
            None,
            f"{what} needs training, but this libpdiff ({LIBRARY_PATH}) is a serve-only build "
            "without training (sampling only); use a full build, or set $PDIFF_LIB to one",
        )


__version__ = version()


# ---- helpers ----

def _choice(table: Mapping[str, int], value, what: str) -> int:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.lower() in table:
        return table[value.lower()]
    raise _invalid(f"invalid {what} {value!r}: expected one of {', '.join(sorted(table))}")


def _set(struct, field: str, value) -> None:
    try:
        setattr(struct, field, value)
    except (OverflowError, TypeError) as e:
        raise _invalid(f"invalid {field} {value!r}: {e}") from None


def _device(value):
    """"cuda:1" -> (cuda, 1); "cpu" -> (cpu, None)."""
    if isinstance(value, str) and ":" in value:
        name, _, index = value.partition(":")
        if not index.isdigit():
            raise _invalid(f"invalid device {value!r}")
        return name, int(index)
    return value, None


SampleProgressFn = Callable[[int, int], Optional[bool]]


class _SampleCall:
    """One generation call's ``pdiff_sample_options`` (``options``) with what must outlive the
    call: the condition's buffer, the progress callback, the clip count it receives."""

    def __init__(self, seed: int, sampler, steps: Optional[int], condition=None, guidance: float = 1.0,
                 progress: Optional[SampleProgressFn] = None):
        o = ffi.new("pdiff_sample_options *")
        _check(lib.pdiff_sample_options_default(o))
        _set(o, "sampler", _choice(_SAMPLERS, sampler, "sampler"))
        _set(o, "seed", seed)
        if steps is not None:
            _set(o, "ddim_steps", steps)
        self._condition = None
        if condition is not None:
            self._condition = _real_array(condition, "condition").reshape(-1)
            o.condition = ffi.cast("const float *", ffi.from_buffer(self._condition))
            o.condition_len = self._condition.size
        elif guidance != 1.0:
            raise _invalid("invalid guidance: a guidance scale needs a condition")
        _set(o, "guidance", float(guidance))
        self._clipped = ffi.new("pdiff_clip_count *")
        o.clipped = self._clipped
        self._raised = []
        self._callback = None
        if progress is not None:
            if not callable(progress):
                raise _invalid(f"invalid progress {progress!r}: a callable (step, total) -> bool")

            def _progress(_user, step, total):
                try:
                    r = progress(int(step), int(total))
                    return 0 if r is None or r else 1
                except BaseException as e:  # KeyboardInterrupt included: cancel, then re-raise
                    self._raised.append(e)
                    return 1

            self._callback = ffi.callback("pdiff_sample_progress_fn", _progress)
            o.progress = self._callback
        self.options = o

    def result(self, status: int, raised: Sequence[BaseException] = ()) -> "ClipCount":
        """The call's clip count; raises what a callback raised (the progress callback's first,
        then ``raised``, another callback's), else the status's error."""
        if self._raised:
            raise self._raised[0]
        if raised:
            raise raised[0]
        _check(status)
        return ClipCount(int(self._clipped.latents), int(self._clipped.values))


def _fspath(path) -> bytes:
    """A path for C: a str, bytes or os.PathLike without NUL bytes (C would see it cut short at
    the first one)."""
    raw = os.fsencode(os.fspath(path))
    if b"\0" in raw:
        raise _invalid(f"invalid path {path!r}: it contains a NUL byte")
    return raw


def _cstr(text: str, what: str) -> bytes:
    """A name for C, UTF-8, without NUL bytes."""
    if "\0" in text:
        raise _invalid(f"invalid {what} {text!r}: it contains a NUL byte")
    return text.encode("utf-8")


def _count(n, what: str = "n") -> int:
    """A count of models: a whole number >= 0 (0 is refused by the library, naming it), never a
    bool or a float that would be truncated."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise _invalid(f"invalid {what}: {n!r} is not a whole number")
    if n < 0:
        raise _invalid(f"invalid {what}: {n} is negative")
    return int(n)


def _real_array(values, what: str) -> np.ndarray:
    """``values`` as contiguous float32: a numpy array of a floating dtype, or anything numpy
    reads as real numbers (a list of ints or floats, a CPU torch tensor). Bool, complex, object
    and string arrays are refused, naming ``what``, never converted silently."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind != "f":
            raise _invalid(f"invalid {what}: an array of floats is needed, not {values.dtype}")
        array = values
    else:
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as e:
            raise _invalid(f"invalid {what}: {e}") from None
        if array.dtype.kind not in "fiu":
            raise _invalid(f"invalid {what}: real numbers are needed, not {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


class _Handle:
    """Owns one C handle, freed by ``close()``, ``with`` or the garbage collector.

    Another thread may be inside a library call on the handle (sampling releases the GIL) when
    this one closes it, so every call borrows the handle (:meth:`_borrow`), which counts the
    calls in flight. ``close()`` marks the handle closed at once: calls that start afterwards
    raise :class:`NullPointerError`. The handle is freed by whoever finishes last: ``close()``
    itself when no call is in flight, else the last call in flight as it returns. ``close()``
    never waits for those calls: it may be called from a callback running inside a call on the
    same handle (``best_of_n``'s ``score_fn``, ``Generator.train``'s ``progress``), where
    waiting would deadlock, and a ``with`` block left on an exception should not block either.

    Freeing always goes through ``ffi.release`` of the ``ffi.gc`` pointer: the library's
    ``*_free`` runs once and the garbage collector's destructor is disarmed. A handle that is
    never closed is freed by the garbage collector, which cannot happen during a call: the call
    holds a reference to this object and to the pointer.
    """

    _kind = "handle"

    def __init__(self, ptr=None):
        self._lock = threading.Lock()
        self._ptr = ptr  # the ffi.gc pointer; None before opening and once freed
        self._closed = ptr is None
        self._in_flight = 0

    def _attach(self, ptr) -> None:
        """Take ownership of a freshly opened ``ffi.gc`` pointer (constructors)."""
        with self._lock:
            self._ptr, self._closed = ptr, False

    @contextlib.contextmanager
    def _borrow(self):
        """``with self._borrow() as h:`` the C handle, valid until the block ends even if
        another thread closes this object meanwhile."""
        with self._lock:
            if self._closed:
                raise NullPointerError(Status.NULL_POINTER, f"this {self._kind} is closed")
            self._in_flight += 1
            ptr = self._ptr
        try:
            yield ptr
        finally:
            with self._lock:
                self._in_flight -= 1
                last = self._closed and self._in_flight == 0 and self._ptr is not None
                if last:
                    self._ptr = None
            if last:
                ffi.release(ptr)  # closed while this call was in flight: it was the last one

    def close(self) -> None:
        """Free the handle now, or, when calls on it are in flight (in other threads, or the call
        whose callback is closing it), as soon as the last of them returns (idempotent; never
        waits). Later calls raise :class:`NullPointerError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ptr = None
            if self._in_flight == 0:
                ptr, self._ptr = self._ptr, None
        if ptr is not None:
            ffi.release(ptr)  # runs the destructor given to ffi.gc, and disarms it

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (the handle may still be in use by calls in flight)."""
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


LayoutSpec = Union[Mapping[str, Sequence[int]], Iterable]


def _layout_decls(layout: LayoutSpec):
    """[(name, shape)] / {name: shape} / [TensorInfo] -> (decl array, keep-alive, D)."""
    items = list(layout.items()) if isinstance(layout, Mapping) else list(layout)
    if not items:
        raise _invalid("the layout declares no tensor")
    decls = ffi.new("pdiff_tensor_decl[]", len(items))
    keep = [decls]
    d = 0
    for i, item in enumerate(items):
        if hasattr(item, "name") and hasattr(item, "shape"):
            name, shape = item.name, item.shape
        else:
            try:
                name, shape = item[0], item[1]
            except (TypeError, IndexError, KeyError):
                raise _invalid(f"layout entry {item!r}: expected (name, shape)") from None
        shape = tuple(int(x) for x in shape)
        if any(x < 0 for x in shape):
            raise _invalid(f"tensor {name!r}: negative dimension in {shape}")
        cname = ffi.new("char[]", _cstr(str(name), "tensor name"))
        cshape = ffi.new("size_t[]", shape) if shape else ffi.NULL
        keep += [cname, cshape]
        decls[i].name = cname
        decls[i].ndim = len(shape)
        decls[i].shape = cshape
        d += math.prod(shape)
    return decls, keep, len(items), d


def _as_f32_buffer(array: np.ndarray):
    return ffi.cast("float *", ffi.from_buffer(array, require_writable=False))


# ---- Dataset ----

class Dataset(_Handle):
    """K checkpoints of one network and their layout (``pdiff_dataset``). Needs a full build:
    :class:`TrainingUnavailableError` otherwise."""

    _kind = "dataset"

    @classmethod
    def from_memory(cls, layout: LayoutSpec, array, conditions=None) -> "Dataset":
        """K flat parameter vectors: ``array`` is [K, D] (converted to float32), ``layout`` a list
        of (name, shape) pairs or a {name: shape} dict, whose element counts sum to D; each row is
        the tensors one after the other, row-major. The values are copied. ``conditions``
        ([K, C], optional): one condition vector per checkpoint, for a conditional generator."""
        _require_training("Dataset.from_memory")
        decls, keep, n, d = _layout_decls(layout)
        data = _real_array(array, "array")
        if data.ndim != 2 or data.shape[1] != d:
            raise _invalid(f"array of shape {data.shape}: expected [K, {d}] (D = {d} by the layout)")
        out = ffi.new("pdiff_dataset **")
        if conditions is None:
            _check(lib.pdiff_dataset_from_memory(decls, n, _as_f32_buffer(data), data.shape[0], out))
        else:
            cond = _real_array(conditions, "conditions")
            if cond.ndim != 2 or cond.shape[0] != data.shape[0] or cond.shape[1] < 1:
                raise _invalid(f"invalid conditions: shape {cond.shape}, expected [K, C] with K = {data.shape[0]}")
            _check(lib.pdiff_dataset_from_memory_conditional(decls, n, _as_f32_buffer(data), data.shape[0],
                                                             _as_f32_buffer(cond), cond.shape[1], out))
        del keep
        return cls(ffi.gc(out[0], lib.pdiff_dataset_free))

    @classmethod
    def from_state_dicts(cls, state_dicts, select: Union[None, str, Sequence[str]] = None,
                         conditions=None) -> "Dataset":
        """K checkpoints given as PyTorch state dicts (``model.state_dict()``) or dicts of numpy
        arrays: a sequence of them, or a mapping {checkpoint name: state dict} whose names the
        errors quote. ``select``: the tensors to take, exact names or globs (each must match a
        tensor); None: every floating-point tensor (integer buffers such as BatchNorm's
        ``num_batches_tracked`` are left out). Tensors keep their names, in the first state
        dict's order; any floating dtype and device, converted to float32. Every checkpoint
        must have the selected tensors with the first one's shapes (and, without ``select``,
        no other floating-point tensor): :class:`InvalidArgumentError` naming the checkpoint
        and the tensor otherwise, and for a selected tensor that is not floating-point.
        ``conditions`` as in :meth:`from_memory`."""
        _require_training("Dataset.from_state_dicts")
        layout, data = _state_dicts.flatten(state_dicts, select)
        return cls.from_memory(layout, data, conditions)

    @classmethod
    def load_dir(cls, path, patterns: Union[None, str, Sequence[str]] = None, conditions_file=None) -> "Dataset":
        """Every ``*.safetensors`` file of ``path`` (sorted by name) as one checkpoint; ``patterns``
        selects tensors (exact names or globs; None: every floating-point tensor).
        ``conditions_file``: a .json or .csv file giving each checkpoint its condition vector
        (a conditional generator; format in docs/api.md, "Conditional generation")."""
        _require_training("Dataset.load_dir")
        if isinstance(patterns, str):
            patterns = [patterns]
        patterns = list(patterns or [])
        cstrs = [ffi.new("char[]", _cstr(p, "pattern")) for p in patterns]
        arr = ffi.new("const char *[]", cstrs) if cstrs else ffi.NULL
        out = ffi.new("pdiff_dataset **")
        if conditions_file is None:
            _check(lib.pdiff_dataset_load_dir(_fspath(path), arr, len(cstrs), out))
        else:
            _check(lib.pdiff_dataset_load_dir_conditional(_fspath(path), arr, len(cstrs), _fspath(conditions_file), out))
        return cls(ffi.gc(out[0], lib.pdiff_dataset_free))

    @property
    def condition_dim(self) -> int:
        """Dimension C of the checkpoints' condition vectors; 0 without conditions."""
        with self._borrow() as h:
            return int(lib.pdiff_dataset_condition_dim(h))

    @property
    def k(self) -> int:
        """Number of checkpoints K."""
        with self._borrow() as h:
            return int(lib.pdiff_dataset_k(h))

    @property
    def param_count(self) -> int:
        """Scalars D per checkpoint."""
        with self._borrow() as h:
            return int(lib.pdiff_dataset_param_count(h))

    @property
    def warnings(self) -> list:
        """Non-fatal warnings: fewer than 50 checkpoints, permutation-misaligned checkpoints."""
        out = []
        with self._borrow() as h:
            for i in range(lib.pdiff_dataset_warning_count(h)):
                s = lib.pdiff_dataset_warning(h, i)
                out.append("" if s == ffi.NULL else ffi.string(s).decode("utf-8", "replace"))
        return out

    def __repr__(self) -> str:
        return "Dataset(closed)" if self.closed else f"Dataset(k={self.k}, d={self.param_count})"


# ---- Generator ----

ProgressFn = Callable[[str, int, int, float], Optional[bool]]

_TRAIN_FIELDS = ("seed", "device_index", "threads")
# Numeric options whose 0 the C struct reads as "the preset's" unless the field's
# PDIFF_TRAIN_EXPLICIT_* bit is set: a value passed here is always explicit.
_EXPLICIT_TRAIN_FIELDS = ("ae_steps", "diffusion_steps", "batch_size", "ae_lr", "diffusion_lr", "latent_noise")


class Generator(_Handle):
    """A trained generator (``pdiff_generator``). Needs a full build:
    :class:`TrainingUnavailableError` otherwise."""

    _kind = "generator"

    @classmethod
    def train(cls, dataset: Dataset, *, progress: Optional[ProgressFn] = None, **options) -> "Generator":
        """Train on ``dataset`` (blocks). Options (omitted or None: the preset's value):
        ``preset`` ("auto", the default: chosen by D | "compact" | "paper" | "chunked"),
        ``reconstruction_weighting`` ("uniform", the default | "per-tensor"), ``latent_noise``,
        ``ae_steps``, ``diffusion_steps``, ``batch_size``, ``ae_lr``, ``diffusion_lr``, ``seed``, ``device`` ("auto" | "cpu" | "cuda" | "cuda:N"),
        ``device_index``, ``threads`` (libtorch's threads while training on the CPU; 0, the default:
        the cores this process may run on). A number given is used as given, 0 included: ``latent_noise=0``
        trains without latent noise, while 0 steps, a batch of 0 or a learning rate of 0 raise
        :class:`InvalidArgumentError`.

        ``progress(stage, step, total, loss)`` is called after every step with stage
        "autoencoder" or "diffusion"; returning False (or any false value but None) cancels:
        :class:`CancelledError`. An exception raised by it cancels too and is re-raised here.
        """
        _require_training("Generator.train")
        o = ffi.new("pdiff_train_options *")
        _check(lib.pdiff_train_options_default(o))
        for key, value in options.items():
            if key == "preset":
                _set(o, "preset", _choice(_PRESETS, value, "preset"))
            elif key == "reconstruction_weighting":
                name = value.replace("-", "_") if isinstance(value, str) else value
                _set(o, "reconstruction_weighting", _choice(_WEIGHTINGS, name, "reconstruction_weighting"))
            elif key == "device":
                name, index = _device(value)
                _set(o, "device", _choice(_DEVICES, name, "device"))
                if index is not None:
                    _set(o, "device_index", index)
            elif key in _EXPLICIT_TRAIN_FIELDS:
                if value is not None:
                    _set(o, key, value)
                    o.explicit_fields |= getattr(lib, "PDIFF_TRAIN_EXPLICIT_" + key.upper())
            elif key in _TRAIN_FIELDS:
                _set(o, key, value)
            else:
                raise TypeError(f"Generator.train() got an unexpected option {key!r}")
        raised = []
        callback = None
        if progress is not None:
            def _progress(_user, stage, step, total, loss):
                try:
                    r = progress(ffi.string(stage).decode(), int(step), int(total), float(loss))
                    return 0 if r is None or r else 1
                except BaseException as e:  # KeyboardInterrupt included: cancel, then re-raise
                    raised.append(e)
                    return 1

            callback = ffi.callback("pdiff_progress_fn", _progress)
            o.progress = callback
        out = ffi.new("pdiff_generator **")
        with dataset._borrow() as ds:
            status = lib.pdiff_generator_train(ds, o, out)
        if status == lib.PDIFF_OK and raised:  # cannot happen (the callback cancelled); be safe
            lib.pdiff_generator_free(out[0])
        if raised:
            raise raised[0]
        _check(status)
        return cls(ffi.gc(out[0], lib.pdiff_generator_free))

    def export(self, bundle_dir, force: bool = False) -> None:
        """Write the bundle directory; open it with :class:`Sampler`. A missing directory is
        created and a bundle libpdiff exported there before is replaced, atomically. Files
        libpdiff did not write there raise :class:`OutputExistsError`, unless ``force``: the
        bundle is then written beside them and they are kept (a name they take still raises)."""
        with self._borrow() as h:
            _check(lib.pdiff_generator_export_ex(h, _fspath(bundle_dir), _output_flags(force)))

    @property
    def param_count(self) -> int:
        with self._borrow() as h:
            return int(lib.pdiff_generator_param_count(h))

    @property
    def warnings(self) -> list:
        """Health warnings: the dataset's (few or misaligned checkpoints), then training's (a
        reconstruction error large against the checkpoints' spread). The bundle records them."""
        out = []
        with self._borrow() as h:
            for i in range(lib.pdiff_generator_warning_count(h)):
                s = lib.pdiff_generator_warning(h, i)
                out.append("" if s == ffi.NULL else ffi.string(s).decode("utf-8", "replace"))
        return out

    def __repr__(self) -> str:
        return "Generator(closed)" if self.closed else f"Generator(d={self.param_count})"


# ---- Sampler ----

TensorInfo = namedtuple("TensorInfo", ["name", "shape", "offset"])
TensorInfo.__doc__ = "One tensor of a generated vector: name, shape (tuple) and offset (floats)."

ClipCount = namedtuple("ClipCount", ["latents", "values"])
ClipCount.__doc__ = """How many generated latents fell outside the range the autoencoder was trained on, over
one sampling call: ``latents`` models had at least one such value, ``values`` values in all. The
decoder clips them to the training range; many suggest an undertrained denoiser or too few
sampling steps."""


class Sampler(_Handle):
    """An exported bundle served by ONNX Runtime (``pdiff_sampler``). Thread-safe: sampling
    releases the GIL and several threads may sample from one Sampler at once; closing it while
    they do is safe too (it is freed when the last of their calls returns)."""

    _kind = "sampler"

    def __init__(self, bundle_dir, provider="auto", device_index: int = 0, intra_threads: int = 0,
                 runtime_library=None, *, device_id: Optional[int] = None):
        """Open and verify ``bundle_dir``. ``provider``: "auto" (CUDA when available, else CPU,
        the library's default), "cpu", "cuda" or "cuda:N" (required: no fallback);
        ``device_index``: the CUDA device (as in "cuda:N"; ``Generator.train`` spells it the
        same); ``intra_threads``: ONNX Runtime threads per session (0: its default);
        ``runtime_library``: path of libonnxruntime.so (None: the library's default).
        ``device_id`` is the former name of ``device_index`` (deprecated)."""
        super().__init__(None)
        if device_id is not None:
            warnings.warn("Sampler(device_id=...) is deprecated: use device_index=...", DeprecationWarning, stacklevel=2)
            device_index = device_id
        o = ffi.new("pdiff_sampler_options *")
        _check(lib.pdiff_sampler_options_default(o))
        name, index = _device(provider)
        _set(o, "provider", _choice(_PROVIDERS, name, "provider"))
        _set(o, "device_index", device_index if index is None else index)
        _set(o, "intra_threads", intra_threads)
        keep = None
        if runtime_library is not None:
            keep = ffi.new("char[]", _fspath(runtime_library))
            o.runtime_library = keep
        out = ffi.new("pdiff_sampler **")
        _check(lib.pdiff_sampler_open(_fspath(bundle_dir), o, out))
        del keep
        self._layout = None
        self._attach(ffi.gc(out[0], lib.pdiff_sampler_free))

    @property
    def backend(self) -> str:
        """"onnxruntime-cpu" or "onnxruntime-cuda"."""
        with self._borrow() as h:
            return ffi.string(lib.pdiff_sampler_backend(h)).decode()

    @property
    def param_count(self) -> int:
        """Scalars D per generated vector."""
        with self._borrow() as h:
            return int(lib.pdiff_sampler_param_count(h))

    @property
    def condition_dim(self) -> int:
        """Dimension C of a conditional generator's condition; 0 for an unconditional one."""
        with self._borrow() as h:
            return int(lib.pdiff_sampler_condition_dim(h))

    @property
    def condition_names(self) -> Optional[list]:
        """The names of the condition's dimensions, when the bundle gives them; else None."""
        with self._borrow() as h:
            c = int(lib.pdiff_sampler_condition_dim(h))
            names = [lib.pdiff_sampler_condition_name(h, i) for i in range(c)]
            if c == 0 or any(p == ffi.NULL for p in names):
                return None
            return [ffi.string(p).decode("utf-8") for p in names]

    @property
    def layout(self) -> list:
        """[TensorInfo(name, shape, offset)] of one generated vector, in order."""
        with self._borrow() as h:
            if self._layout is None:
                name, ndim = ffi.new("const char **"), ffi.new("size_t *")
                shape, offset = ffi.new("const size_t **"), ffi.new("size_t *")
                layout = []
                for i in range(lib.pdiff_sampler_tensor_count(h)):
                    _check(lib.pdiff_sampler_tensor_info(h, i, name, ndim, shape, offset))
                    dims = tuple(int(shape[0][j]) for j in range(ndim[0])) if shape[0] != ffi.NULL else ()
                    layout.append(TensorInfo(ffi.string(name[0]).decode("utf-8"), dims, int(offset[0])))
                self._layout = layout
            return list(self._layout)

    def sample(self, n: int, seed: int = 0, sampler="ddim", steps: Optional[int] = 50,
               out: Optional[np.ndarray] = None, condition=None, guidance: float = 1.0,
               progress: Optional[SampleProgressFn] = None, return_clipped: bool = False):
        """Generate ``n`` parameter vectors: float32 ndarray [n, D]. Same arguments, same bits.
        ``sampler``: "ddim" (``steps`` steps, deterministic) or "ddpm" (all T steps).
        ``out``: optional C-contiguous float32 array of at least n x D elements to write into
        (returned, reshaped to [n, D] when it has exactly n x D elements).
        ``condition`` (conditional generators, see :attr:`condition_dim`): C floats for every
        vector, or [n, C] (one per vector); None: the generator's unconditional model.
        ``guidance``: classifier-free guidance scale (1: the plain conditional model).
        ``progress(step, total)``: called as the call advances (``step`` of ``total`` denoising
        steps done); returning False (or any false value but None) cancels:
        :class:`CancelledError`, nothing written. An exception raised by it cancels too and is
        re-raised here. ``return_clipped``: return ``(array, ClipCount)``, the call's
        :class:`ClipCount`, instead of the array alone."""
        n = _count(n)
        call = _SampleCall(seed, sampler, steps, condition, guidance, progress)
        with self._borrow() as h:
            d = int(lib.pdiff_sampler_param_count(h))
            if out is None:
                result = np.empty((n, d), dtype=np.float32)
                buf = result
            else:
                if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous \
                        or not out.flags.writeable:
                    raise _invalid("out must be a writable C-contiguous float32 numpy array")
                buf = out
                result = out.reshape(n, -1) if out.size == n * d and n > 0 else out
            status = lib.pdiff_sampler_sample(h, call.options, n, ffi.cast("float *", ffi.from_buffer(buf)), buf.size)
        clipped = call.result(status)
        return (result, clipped) if return_clipped else result

    def sample_into(self, tensors: dict, n: int = 1, seed: int = 0, sampler="ddim", steps: Optional[int] = 50,
                    condition=None, guidance: float = 1.0, progress: Optional[SampleProgressFn] = None) -> ClipCount:
        """Generate ``n`` models straight into caller-provided arrays, one per tensor: the
        values :meth:`sample` gives, bit for bit, with no n x D copy in between (an engine's own
        weight arrays can be the targets). ``tensors`` maps a tensor name (or its index in
        :attr:`layout`) to a writable C-contiguous float32 array of n x numel elements (e.g.
        of shape ``(n, *shape)``, or the tensor's own shape when n = 1); tensors not given are
        dropped. A bad entry (unknown name, wrong size, a tensor twice) raises
        :class:`InvalidArgumentError` naming the tensor, before anything is written. Other
        arguments as in :meth:`sample`. Returns the call's :class:`ClipCount`."""
        n = _count(n)
        call = _SampleCall(seed, sampler, steps, condition, guidance, progress)
        if not isinstance(tensors, dict):
            raise _invalid("tensors must be a dict {tensor name or index: float32 array}")
        buffers = ffi.new("pdiff_tensor_buffer[]", max(len(tensors), 1))
        names = []  # the C strings must live through the call
        for i, (key, arr) in enumerate(tensors.items()):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or not arr.flags.c_contiguous \
                    or not arr.flags.writeable:
                raise _invalid(f"tensor {key!r}: the array must be a writable C-contiguous float32 numpy array")
            if isinstance(key, str):
                names.append(ffi.new("char[]", _cstr(key, "tensor name")))
                buffers[i].name = names[-1]
            elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) and key >= 0:
                buffers[i].name = ffi.NULL
                buffers[i].index = int(key)
            else:
                raise _invalid(f"tensor key {key!r}: a tensor name (str) or index (int >= 0)")
            buffers[i].data = ffi.cast("float *", ffi.from_buffer(arr))
            buffers[i].len = arr.size
        with self._borrow() as h:
            status = lib.pdiff_sampler_sample_tensors(h, call.options, n, buffers, len(tensors))
        del names
        return call.result(status)

    def sample_adapter(self, model_index: int = 0, seed: int = 0, sampler="ddim", steps: Optional[int] = 50,
                       condition=None, guidance: float = 1.0, progress: Optional[SampleProgressFn] = None) -> bytes:
        """Model ``model_index`` of a request (row ``model_index`` of :meth:`sample` with the
        same arguments, bit for bit) as ONNX Runtime adapter bytes (the ``.onnx_adapter``
        format; docs/api.md, "Adapters"): a FLOAT parameter per tensor of :attr:`layout`, named
        as it names them; the model index is the adapter's ``adapter_version``. Write them to a
        file for ``onnxruntime.LoraAdapter().Load`` or pass them to ONNX Runtime's
        ``CreateLoraAdapterFromArray``. ``condition``: C floats for this model. Other arguments
        as in :meth:`sample`."""
        if not isinstance(model_index, (int, np.integer)) or isinstance(model_index, bool) or model_index < 0:
            raise _invalid(f"model_index must be an int >= 0, not {model_index!r}")
        call = _SampleCall(seed, sampler, steps, condition, guidance, progress)
        size = ffi.new("size_t *")
        with self._borrow() as h:
            _check(lib.pdiff_sampler_sample_adapter(h, call.options, int(model_index), ffi.NULL, 0, size))
            buf = ffi.new("uint8_t[]", max(int(size[0]), 1))
            status = lib.pdiff_sampler_sample_adapter(h, call.options, int(model_index), buf, int(size[0]), size)
        call.result(status)
        return bytes(ffi.buffer(buf, int(size[0])))

    def sample_named(self, n: int, seed: int = 0, sampler="ddim", steps: Optional[int] = 50,
                     condition=None, guidance: float = 1.0, progress: Optional[SampleProgressFn] = None,
                     return_clipped: bool = False):
        """As :meth:`sample`, split into ``n`` dicts {tensor name: ndarray of its shape}
        (``return_clipped``: ``(dicts, ClipCount)``)."""
        flat, clipped = self.sample(n, seed=seed, sampler=sampler, steps=steps, condition=condition, guidance=guidance,
                                    progress=progress, return_clipped=True)
        layout = self.layout
        models = [
            {t.name: row[t.offset:t.offset + math.prod(t.shape)].reshape(t.shape) for t in layout}
            for row in flat
        ]
        return (models, clipped) if return_clipped else models

    def sample_state_dicts(self, n: int, seed: int = 0, sampler="ddim", steps: Optional[int] = 50,
                           condition=None, guidance: float = 1.0, progress: Optional[SampleProgressFn] = None,
                           return_clipped: bool = False, as_torch: Optional[bool] = None):
        """As :meth:`sample`, as ``n`` state dicts {tensor name: tensor of its shape}, ready for
        ``model.load_state_dict(sd, strict=False)`` (the tensors the bundle does not generate
        stay as they are). ``as_torch``: torch tensors (True), numpy arrays (False), or torch
        tensors when torch can be imported (None). The tensors of all n dicts are float32
        views of one [n, D] array. ``return_clipped``: ``(dicts, ClipCount)``."""
        torch = None if as_torch is False else _state_dicts.import_torch(required=bool(as_torch))
        flat, clipped = self.sample(n, seed=seed, sampler=sampler, steps=steps, condition=condition, guidance=guidance,
                                    progress=progress, return_clipped=True)
        models = _state_dicts.rows_to_state_dicts(flat, self.layout, torch)
        return (models, clipped) if return_clipped else models

    def sample_into_module(self, model, seed: int = 0, sampler="ddim", steps: Optional[int] = 50,
                           condition=None, guidance: float = 1.0,
                           progress: Optional[SampleProgressFn] = None) -> ClipCount:
        """Generate one model into a ``torch.nn.Module``'s own parameters and buffers, by name:
        each tensor of :attr:`layout` must be one of ``model.state_dict()``'s, floating-point
        and of the layout's shape, else :class:`InvalidArgumentError` naming it, before
        anything is written. The module's other tensors are left as they are; its dtypes and
        devices are kept (values converted from float32). The values are those
        ``sample(1, ...)`` gives. Other arguments as in :meth:`sample`; returns the call's
        :class:`ClipCount`."""
        import torch

        layout = self.layout
        targets = _state_dicts.module_targets(model, layout)
        buffers = {t.name: np.empty(t.shape, dtype=np.float32) for t in layout}
        clipped = self.sample_into(buffers, 1, seed=seed, sampler=sampler, steps=steps, condition=condition,
                                   guidance=guidance, progress=progress)
        with torch.no_grad():  # copy_ bumps the version counters autograd checks
            for name, target in targets.items():
                target.copy_(torch.from_numpy(buffers[name]))
        return clipped

    def best_of_n(self, n: int, score_fn: Callable[[np.ndarray], float], seed: int = 0, sampler="ddim",
                  steps: Optional[int] = 50, condition=None, guidance: float = 1.0,
                  progress: Optional[SampleProgressFn] = None, return_clipped: bool = False):
        """Generate ``n`` candidates (as :meth:`sample` would), score each with
        ``score_fn(params)`` (a float32 array of D values, a copy; higher is better, NaN ranks
        last), and return ``(best params [D], its index, its score)``. An exception raised by
        ``score_fn`` is re-raised here (the remaining candidates are not scored). ``condition``
        and ``guidance`` as in :meth:`sample` (one condition for every candidate, or [n, C]);
        ``progress`` too, over all n candidates. ``return_clipped``: return ``(best, index,
        score, ClipCount)``, the clip count of all n candidates."""
        n = _count(n)
        call = _SampleCall(seed, sampler, steps, condition, guidance, progress)
        raised = []

        def _score(_user, params, length):
            if raised:
                return math.nan
            try:
                v = np.frombuffer(ffi.buffer(params, length * 4), dtype=np.float32).copy()
                return float(score_fn(v))
            except BaseException as e:
                raised.append(e)
                return math.nan

        callback = ffi.callback("pdiff_score_fn", _score)
        index, score = ffi.new("size_t *"), ffi.new("double *")
        with self._borrow() as h:
            d = int(lib.pdiff_sampler_param_count(h))
            best = np.empty(d, dtype=np.float32)
            status = lib.pdiff_sampler_best_of_n(h, call.options, n, callback, ffi.NULL,
                                                 ffi.cast("float *", ffi.from_buffer(best)), d, index, score)
        clipped = call.result(status, raised)
        result = (best, int(index[0]), float(score[0]))
        return result + (clipped,) if return_clipped else result

    def sample_to_dir(self, n: int, directory, seed: int = 0, sampler="ddim", steps: Optional[int] = 50,
                      force: bool = False, condition=None, guidance: float = 1.0,
                      progress: Optional[SampleProgressFn] = None) -> ClipCount:
        """Write ``n`` vectors as ``directory/gen_0000.safetensors``, ... (original tensor names,
        f32) and a marker ``.pdiff-output.json`` listing them. A missing directory is created
        and an earlier output of this method replaced, atomically. Files libpdiff did not write
        there raise :class:`OutputExistsError`, unless ``force``: the models are then written
        beside them and they are kept (a name they take still raises). ``condition``,
        ``guidance`` and ``progress`` as in :meth:`sample` (a cancelled call writes nothing).
        Returns the call's :class:`ClipCount`."""
        n = _count(n)
        call = _SampleCall(seed, sampler, steps, condition, guidance, progress)
        with self._borrow() as h:
            status = lib.pdiff_sampler_sample_to_dir_ex(h, call.options, n, _fspath(directory), _output_flags(force))
        return call.result(status)

    def __repr__(self) -> str:
        if self.closed:
            return "Sampler(closed)"
        return f"Sampler(d={self.param_count}, tensors={len(self.layout)}, backend={self.backend!r})"
