"""PyTorch state dicts in and out of libpdiff's flat parameter vectors.

In: K state dicts (``model.state_dict()``, or dicts of numpy arrays) become the layout
[(name, shape)] and the [K, D] float32 array that ``Dataset.from_memory`` takes. Out: generated
[n, D] rows become dicts of tensors named as the layout names them, or are written into a
module's own tensors. torch is never imported to read input: a torch tensor can only reach us
from a caller that has imported it, so ``sys.modules`` is asked instead, and the numpy-only
binding keeps working where torch is not installed.
"""
from __future__ import annotations

import fnmatch
import math
import sys
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np


def _invalid(message: str) -> Exception:
    # Imported when called: the package's __init__ defines the errors and imports this module.
    from . import InvalidArgumentError, Status

    return InvalidArgumentError(Status.INVALID_ARGUMENT, message)


def _torch_tensor_type() -> Optional[type]:
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def import_torch(required: bool) -> Any:
    """The torch module; None when it cannot be imported and ``required`` is False."""
    try:
        import torch
    except ImportError:
        if required:
            raise
        return None
    return torch


class _Entry:
    """What the checks need to know about one value of a state dict."""

    __slots__ = ("value", "shape", "kind", "is_torch")

    def __init__(self, value: Any):
        tensor_type = _torch_tensor_type()
        self.value = value
        self.is_torch = tensor_type is not None and isinstance(value, tensor_type)
        if self.is_torch:
            self.shape = tuple(int(x) for x in value.shape)
            self.kind = "float" if value.is_floating_point() else str(value.dtype).replace("torch.", "")
        elif isinstance(value, (np.ndarray, np.generic)):
            self.shape = tuple(int(x) for x in np.shape(value))
            dtype = np.asarray(value).dtype
            self.kind = "float" if dtype.kind == "f" else str(dtype)
        else:
            self.shape = ()
            self.kind = type(value).__name__  # not a tensor: skipped, or refused when selected

    @property
    def is_array(self) -> bool:
        return self.is_torch or isinstance(self.value, (np.ndarray, np.generic))

    def write_f32(self, out: np.ndarray) -> None:
        """The values, row-major, converted to float32, into ``out`` (numel floats)."""
        if self.is_torch:
            import torch  # already imported: the value is one of its tensors

            array = self.value.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
        else:
            array = np.asarray(self.value)
        with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused by the caller
            out[:] = array.reshape(-1)


def _checkpoints(state_dicts: Any) -> List[Tuple[str, Mapping]]:
    """(label for messages, state dict) of each checkpoint: a mapping's keys name its
    checkpoints ('ckpt_3.pt'), a sequence's positions do (state_dicts[3])."""
    if isinstance(state_dicts, Mapping):
        items = [(repr(k), v) for k, v in state_dicts.items()]
    elif isinstance(state_dicts, (str, bytes)) or not isinstance(state_dicts, Iterable):
        raise _invalid(
            f"state_dicts must be a sequence of state dicts or a mapping {{checkpoint name: state dict}}, "
            f"not {type(state_dicts).__name__}")
    else:
        items = [(f"state_dicts[{i}]", v) for i, v in enumerate(state_dicts)]
    if not items:
        raise _invalid("state_dicts holds no state dict")
    for label, sd in items:
        if not isinstance(sd, Mapping):
            raise _invalid(f"checkpoint {label} is a {type(sd).__name__}, not a state dict "
                           "(a mapping of tensor names to tensors or arrays)")
    return items


def _selected_names(label: str, entries: Mapping[str, _Entry], select: Optional[Sequence[str]]) -> List[str]:
    """The tensors to take, in the first checkpoint's order: its floating-point tensors, or
    those ``select`` names (exact names or globs; each must match)."""
    if select is None:
        names = [name for name, e in entries.items() if e.is_array and e.kind == "float"]
        if not names:
            raise _invalid(f"checkpoint {label} has no floating-point tensor")
        return names
    if isinstance(select, str):
        select = [select]
    patterns = list(select)
    if not patterns:
        raise _invalid("select is empty: give tensor names or globs, or None for every floating-point tensor")
    names = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise _invalid(f"select entry {pattern!r} is not a str (a tensor name or glob)")
        matched = [name for name in entries if name == pattern or fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise _invalid(f"select entry {pattern!r} matches no tensor of checkpoint {label}")
        names += [m for m in matched if m not in names]
    order = {name: i for i, name in enumerate(entries)}
    return sorted(names, key=order.__getitem__)


def _check_entry(label: str, name: str, entry: Optional[_Entry]) -> None:
    if entry is None:
        raise _invalid(f"checkpoint {label} has no tensor {name!r}")
    if not entry.is_array:
        raise _invalid(f"checkpoint {label}: {name!r} is a {entry.kind}, not a tensor or array")
    if entry.kind != "float":
        raise _invalid(f"checkpoint {label}: tensor {name!r} is {entry.kind}, not floating-point "
                       "(only floating-point tensors can be generated)")


def flatten(state_dicts: Any, select: Optional[Sequence[str]]) -> Tuple[List[Tuple[str, Tuple[int, ...]]], np.ndarray]:
    """(layout, [K, D] float32) of the checkpoints; every disagreement names the checkpoint and
    the tensor. Nothing is allocated for the values before every checkpoint has been checked."""
    items = _checkpoints(state_dicts)
    first_label, first = items[0]
    first_entries = {str(k): _Entry(v) for k, v in first.items()}
    for k in first:
        if not isinstance(k, str):
            raise _invalid(f"checkpoint {first_label}: key {k!r} is not a str (a tensor name)")
    names = _selected_names(first_label, first_entries, select)
    for name in names:
        _check_entry(first_label, name, first_entries[name])
    layout = [(name, first_entries[name].shape) for name in names]
    checked = [(first_label, first_entries)]
    for label, sd in items[1:]:
        entries = {k: _Entry(v) for k, v in sd.items() if isinstance(k, str)}
        for name, shape in layout:
            entry = entries.get(name)
            _check_entry(label, name, entry)
            if entry.shape != shape:
                raise _invalid(f"checkpoint {label}: tensor {name!r} has shape {entry.shape}, "
                               f"checkpoint {first_label} has {shape}")
        if select is None:
            extra = [k for k, e in entries.items() if e.is_array and e.kind == "float" and k not in first_entries]
            if extra:
                raise _invalid(f"checkpoint {label} has tensor {extra[0]!r}, which checkpoint {first_label} "
                               "does not have (pass select=[...] to take the tensors they share)")
        checked.append((label, entries))
    sizes = [math.prod(shape) for _, shape in layout]
    data = np.empty((len(checked), sum(sizes)), dtype=np.float32)
    for row, (label, entries) in zip(data, checked):
        offset = 0
        for (name, _), size in zip(layout, sizes):
            values = row[offset:offset + size]
            entries[name].write_f32(values)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:  # also a float64 value beyond float32's range, now inf
                raise _invalid(f"checkpoint {label}: tensor {name!r} has a non-finite value (as float32) "
                               f"at flat index {int(bad[0])}")
            offset += size
    return layout, data


def rows_to_state_dicts(flat: np.ndarray, layout: Sequence[Any], torch: Any) -> list:
    """One dict per row of ``flat`` [n, D]: {name: tensor of its shape}, views of ``flat``
    (torch tensors sharing its memory when ``torch`` is given, else numpy arrays)."""
    out = []
    for row in flat:
        sd = {}
        for t in layout:
            view = row[t.offset:t.offset + math.prod(t.shape)].reshape(t.shape)
            sd[t.name] = torch.from_numpy(view) if torch is not None else view
        out.append(sd)
    return out


def module_targets(model: Any, layout: Sequence[Any]) -> dict:
    """{name: the module's tensor} for every tensor of ``layout``, each checked (present,
    floating-point, the layout's shape) before anything is written."""
    state_dict = getattr(model, "state_dict", None)
    if not callable(state_dict):
        raise _invalid(f"model must be a torch.nn.Module (something with state_dict()), not {type(model).__name__}")
    own = state_dict()  # detached tensors sharing the parameters' and buffers' storage
    targets = {}
    for t in layout:
        tensor = own.get(t.name)
        if tensor is None:
            raise _invalid(f"the module has no tensor {t.name!r} (the bundle's layout has it, shape {t.shape})")
        if not tensor.is_floating_point():
            raise _invalid(f"the module's tensor {t.name!r} is {tensor.dtype}, not floating-point")
        shape = tuple(int(x) for x in tensor.shape)
        if shape != tuple(t.shape):
            raise _invalid(f"the module's tensor {t.name!r} has shape {shape}, the bundle's layout has {tuple(t.shape)}")
        targets[t.name] = tensor
    return targets
