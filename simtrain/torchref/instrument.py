"""Instrumentation of a training step (needs torch): live storage bytes op by op, the torch
function being called, and a record of every tensor saved for backward with the module that
saved it. The reference model's custom autograd Functions name what they save with
:func:`_label_next_saved`."""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from simtrain.torchref.op_sac import CACHE_LISTENERS

_PENDING_LABELS: list[str] = []  # names of the tensors an autograd.Function is about to save


def _label_next_saved(op: str, *names: str) -> None:
    """Describe, for the saved-tensor report, what a custom Function saves (packed in order
    right after its forward returns)."""
    _PENDING_LABELS[:] = [f"{op} {n}" for n in names]


def _storage(t: torch.Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


class _StorageTracker(TorchDispatchMode):
    """Live tensor-storage bytes, op by op. Every output storage of every ATen op is registered
    once with a weakref whose callback fires when the storage is freed (storages keep their
    Python object alive as long as the C++ storage lives). Each storage is tagged:
    ``param`` (parameters, persistent buffers), ``buffer`` (constant buffers), ``state``
    (optimizer state, master weights), ``act`` (anything computed from the batch), ``wcopy``
    (computed from parameters only, e.g. autocast casts of weights), ``const`` (computed from
    buffers or from nothing, e.g. ``arange``). Allocations inside a kernel (workspaces) are not
    seen."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._info: dict[int, tuple[weakref.ref, int, str]] = {}

    def add(self, t: torch.Tensor, tag: str, retag: bool = False) -> None:
        st = t.untyped_storage()
        ptr, n = st.data_ptr(), st.nbytes()
        if ptr == 0 or n == 0:
            return
        info = self._info.get(ptr)
        if info is not None and info[0]() is st:
            if n != info[1] or retag:
                self.live += n - info[1]
                self._info[ptr] = (info[0], n, tag if retag else info[2])
                self.peak = max(self.peak, self.live)
            return
        if info is not None:  # a dead storage whose address was reused
            self.live -= info[1]
        ref = weakref.ref(st, functools.partial(self._freed, ptr))
        self._info[ptr] = (ref, n, tag)
        self.live += n
        self.peak = max(self.peak, self.live)

    def _freed(self, ptr: int, ref: weakref.ref) -> None:
        info = self._info.get(ptr)
        if info is not None and info[0] is ref:
            del self._info[ptr]
            self.live -= info[1]

    def tag(self, t: torch.Tensor) -> str:
        info = self._info.get(t.untyped_storage().data_ptr())
        return info[2] if info is not None else "act"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor)]
        if outs:
            tags = {self.tag(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
            if "act" in tags:
                new = "act"
            elif tags & {"param", "wcopy"}:
                new = "wcopy"
            elif tags & {"state"}:
                new = "state"
            else:
                new = "const"
            for o in outs:
                self.add(o, new)
        return out


class _FunctionNames(TorchFunctionMode):
    """Remembers the torch-level function being called (``linear``, ``softmax``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, tuple[Any, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", None) or str(func)
        self.stack.append((name, tuple(args) + tuple(kwargs.values())))
        try:
            return func(*args, **kwargs)
        finally:
            self.stack.pop()


@dataclass
class _Saved:
    path: str  # module that saved it (e.g. "blocks.0.attn.q")
    op: str  # torch function / role, e.g. "linear input0"
    shape: tuple[int, ...]
    dtype: str
    ptr: int
    nbytes: int
    tag: str
    charged: int = 0  # storage bytes counted here (0 for a repeat or a parameter)
    note: str = ""


class _SavedRecorder:
    """saved_tensors_hooks pack hook + module-path stack; stores metadata only (no tensor
    references, so recording does not extend any lifetime)."""

    def __init__(self, model: nn.Module, tracker: _StorageTracker, names: _FunctionNames) -> None:
        self.tracker, self.names = tracker, names
        self.path: list[str] = []
        self.records: list[_Saved] = []
        self.handles = []
        for name, mod in model.named_modules():
            self.handles.append(mod.register_forward_pre_hook(functools.partial(self._push, name)))
            self.handles.append(mod.register_forward_hook(self._pop, always_call=True))
        CACHE_LISTENERS.append(self.cached)

    def _push(self, name: str, *_: Any) -> None:
        self.path.append(name or "model")

    def _pop(self, *_: Any) -> None:
        self.path.pop()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        if self.cached in CACHE_LISTENERS:
            CACHE_LISTENERS.remove(self.cached)

    def cached(self, t: torch.Tensor) -> None:
        """An op output a selective checkpointing policy keeps (torchref.op_sac): held for the
        backward like a saved tensor, but not packed through saved_tensors_hooks."""
        ptr, n = _storage(t)
        self.records.append(
            _Saved(self.path[-1] if self.path else "model", "selective checkpoint cache",
                   tuple(t.shape), str(t.dtype).replace("torch.", ""), ptr, n,
                   self.tracker.tag(t))
        )  # fmt: skip

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr, n = _storage(t)
        if self.names.stack:
            _PENDING_LABELS.clear()
            fname, args = self.names.stack[-1]
            op = f"{fname} output/internal"
            tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
            for i, a in tensors:
                if a.untyped_storage().data_ptr() == ptr:
                    same = a is t or (a.shape == t.shape and a.stride() == t.stride())
                    op = f"{fname} input{i}" + ("" if same else " (view)")
                    break
            else:
                if fname == "native_dropout" and t.dtype == torch.bool:
                    op = "native_dropout mask"
                elif t.is_floating_point():
                    # a cast made by autocast (of a weight if the saved storage is a "wcopy")
                    weight = self.tracker.tag(t) == "wcopy"
                    hits = [
                        i
                        for i, a in tensors
                        if a.is_floating_point()
                        and a.dtype != t.dtype
                        and a.numel() == t.numel()
                        and (self.tracker.tag(a) in ("param", "wcopy")) == weight
                    ]
                    if hits:
                        op = f"{fname} input{hits[0]} (autocast copy)"
        elif _PENDING_LABELS:
            op = _PENDING_LABELS.pop(0)
        else:
            op = "checkpoint input"  # torch.utils.checkpoint's _NoopSaveInputs
        tag = self.tracker.tag(t)
        self.records.append(
            _Saved(self.path[-1] if self.path else "model", op, tuple(t.shape),
                   str(t.dtype).replace("torch.", ""), ptr, n, tag)
        )  # fmt: skip
        return t.detach()


def _tensor_bytes(tensors: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        ptr, n = _storage(t)
        if ptr not in seen:
            seen.add(ptr)
            total += n
    return total
