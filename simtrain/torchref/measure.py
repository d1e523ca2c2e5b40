"""Measure one real training step of a reference PyTorch decoder (needs the optional ``torch``).

:func:`build_reference_model` turns a :class:`~simtrain.spec.model.ModelSpec` and a
:class:`~simtrain.spec.scenario.TrainingSpec` into a small, readable nanoGPT-style decoder;
:func:`measure_step` trains it for a few steps on random tokens and returns a
:class:`MeasuredStep` with exact byte counts (parameters, gradients, master weights, optimizer
state, tensors saved for backward, peak) so the analytical memory model can be checked against
what PyTorch really keeps.

Nothing else in :mod:`simtrain` imports this module at import time; torch stays optional.

The reference model and what it saves for backward are in
:mod:`simtrain.torchref.reference_model` (its conventions), :mod:`~simtrain.torchref.layers`,
:mod:`~simtrain.torchref.peft` and :mod:`~simtrain.torchref.losses`; the precision recipes in
:mod:`~simtrain.torchref.precision`; the training step in :mod:`~simtrain.torchref.trainer`; the
storage tracker and saved-tensor recorder in :mod:`~simtrain.torchref.instrument`.

Cross-checked on CPU: the storage-tracked peak agrees with the CPU allocator's own alloc/free
events (torch.profiler ``profile_memory``) to within 0.5 % (the rest: kernel workspaces).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from simtrain.errors import ConfigError
from simtrain.spec.model import ModelSpec
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.scenario import TrainingSpec
from simtrain.torchref.instrument import (
    _FunctionNames,
    _Saved,
    _SavedRecorder,
    _StorageTracker,
    _tensor_bytes,
)
from simtrain.torchref.peft import NF4Linear
from simtrain.torchref.reference_model import build_reference_model
from simtrain.torchref.trainer import _Trainer, _warm_trainer, make_optimizer


@dataclass(frozen=True)
class MeasuredStep:
    """Exact bytes of one measured training step (one micro-batch, forward + backward + step).

    parameter_bytes: every parameter (trainable and frozen, each storage once -- a tied head is
        counted once) plus persistent buffers (QLoRA's packed codes and absmax).
    trainable_params / frozen_params: element counts (frozen includes 4-bit weights).
    master_weight_bytes: fp32 master copies (``bf16``/``fp16`` precision only).
    gradient_bytes: ``.grad`` of the trainable parameters right after backward (param dtype).
    optimizer_state_bytes: optimizer state tensors after a step, *without* the scalar ``step``
        counters, which are ``optimizer_step_counter_bytes`` (Adam: 4 bytes per tensor).
    activation_bytes: storage saved for backward at the end of the forward pass (loss
        included), each storage counted once at its first saver, excluding parameters,
        storages computed from parameters only (``weight_copy_bytes``: autocast casts of
        weights) and constants (``constant_saved_bytes``: causal mask, rotary tables, position
        ids, masks derived from them).
    block_activation_bytes: activation bytes saved by each block; ``activation_bytes_per_layer``
        is the last block's (block 0 can be smaller under PEFT: its input needs no grad).
    buffer_bytes: non-persistent buffers (rotary tables, causal mask, position ids).
    saved_tensors: (description, shape, dtype, bytes counted) for the first and the last block
        and the ops outside blocks. Description = "module path: torch function + role [tag]";
        bytes is 0 for parameters and for a storage already counted (noted in the text).
    peak_bytes: peak live tensor bytes during the instrumented step (parameters, gradients,
        optimizer state, master weights, activations, temporaries). CPU: storage tracker
        (``tracked_peak_bytes``); CUDA: ``torch.cuda.max_memory_allocated``.
    step_time_s: median wall time of the timed (uninstrumented) steps; ``step_times_s`` all of
        them (their spread says how noisy the machine was), ``threads`` torch's intra-op
        threads while they ran.
    timed_peak_allocated_bytes / timed_peak_reserved_bytes: CUDA only (0 on the CPU):
        ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over the timed steps,
        uninstrumented and in steady state (the caching allocator's segments kept from the
        earlier steps), the two figures training frameworks log ('Mem Alloc' / 'Mem Res')."""

    parameter_bytes: int
    trainable_params: int
    frozen_params: int
    master_weight_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    optimizer_step_counter_bytes: int
    activation_bytes: int
    activation_bytes_per_layer: int
    block_activation_bytes: tuple[int, ...]
    weight_copy_bytes: int
    constant_saved_bytes: int
    buffer_bytes: int
    saved_tensors: tuple[tuple[str, tuple[int, ...], str, int], ...]
    peak_bytes: int
    tracked_peak_bytes: int
    step_time_s: float
    loss: float
    micro_batch: int
    seq_len: int
    device: str
    torch_version: str
    step_times_s: tuple[float, ...] = ()
    threads: int = 0
    timed_peak_allocated_bytes: int = 0
    timed_peak_reserved_bytes: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(
    spec: ModelSpec,
    training: TrainingSpec,
    *,
    batch: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    steps: int = 2,
    warmup: int = 1,
    threads: int | None = None,
    file: str | None = None,
) -> MeasuredStep:
    """Train the reference model on random tokens and measure one step exactly (``file``: the
    scenario's, named by an error about one of its keys).

    Runs ``warmup`` (at least one) warm-up steps (the first creates the optimizer state), one
    instrumented step (saved tensors, gradients, storage-level peak; CUDA:
    ``max_memory_allocated``) and ``steps`` timed, uninstrumented steps (``step_time_s`` is
    their median). ``batch`` overrides ``training.micro_batch``; ``threads`` fixes
    ``torch.set_num_threads`` for the call (restored after; use the value the hardware profile
    was calibrated with, ``simtrain.torchref.calibrate.calibrate(threads=...)``)."""
    if PRECISIONS[training.precision].fp8_recipe:
        # The reference model has no FP8 kernels (Transformer Engine / torchao): measuring it
        # would run a 16-bit step and report it under an FP8 name.
        raise ConfigError(file, "training.precision", "simtrain measure has no FP8 kernels: "
                          "measure a 16-bit or fp32 precision", training.precision)  # fmt: skip
    if training.recompute_modules not in ((), ("core_attn",)):
        # The reference model's selective recompute is the attention core's (Korthikanti).
        raise ConfigError(file, "training.recompute_modules", "simtrain measure's reference "
                          "model recomputes the attention core only: measure recompute_modules "
                          "[core_attn]", ", ".join(training.recompute_modules))  # fmt: skip
    for key, value in training.changed_storage()[:1]:
        # The reference trainer keeps torch's fp32 states and the precision's master copy.
        raise ConfigError(file, f"training.{key}", "simtrain measure's trainer keeps fp32 "
                          "optimizer states and the precision's master copy: measure "
                          "optimizer_state_dtype fp32, master_weights precision", value)  # fmt: skip
    unbuilt = reference_lacks(spec)
    if unbuilt is not None:
        key, what, instead = unbuilt
        raise ConfigError(file, key, f"simtrain measure's reference model has no {what}: "
                          f"measure {instead}", getattr(spec, key.removeprefix("model.")))  # fmt: skip
    check_device(device)
    _check_optimizer(training, file)
    if spec.positions == "rotary" and spec.rotary_dims % 2:
        # rotate_half pairs the rotated channels: an odd width has one left over
        raise ConfigError(file, "model.head_size", "simtrain measure's rotary embedding rotates "
                          "channel pairs: the rotated width (head size x rotary_fraction) must "
                          "be even", spec.rotary_dims)  # fmt: skip
    # (one micro-batch of ``batch`` for the estimate: its peak, whatever the global batch)
    one = training if batch is None else replace(training, micro_batch=batch, global_batch=batch)
    _check_room(spec, one, device, file)
    with torch_threads(threads):
        try:
            return _measure_step(spec, training, batch, device, seed, steps, warmup)
        except ConfigError as exc:  # (the reference model's: name the scenario's file)
            raise exc.blaming(file) from None
        except (_TORCH_OOM, MemoryError) as exc:
            raise _no_room(file, device, str(exc).split("\n", 1)[0]) from None
        except RuntimeError as exc:  # the CPU allocator's: "DefaultCPUAllocator: can't allocate"
            if "allocate" not in str(exc):
                raise
            raise _no_room(file, device, str(exc).split("\n", 1)[0]) from None


#: torch's out-of-memory error: torch.OutOfMemoryError from torch 2.5, torch.cuda's before
_TORCH_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def free_memory_bytes(device: str) -> int:
    """What ``device`` has free for a measurement: a CUDA device's free memory
    (``torch.cuda.mem_get_info``); the host's MemAvailable (``/proc/meminfo``; the physical
    memory where that file is absent), at most what this process's cgroup still allows."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    if free is None:  # pragma: no cover - not Linux
        import os

        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(free, cgroup_room_bytes())


def cgroup_room_bytes(root: str = "/sys/fs/cgroup") -> int:
    """What this process's cgroup v2 still allows (memory.max less memory.current: a
    container's limit, which MemAvailable does not see); 2^62 without a limit or a v2 cgroup."""
    unlimited = 1 << 62
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((ln.strip().split("::", 1)[1] for ln in f if ln.startswith("0::")), None)
        if rel is None:
            return unlimited
        base = root + rel.rstrip("/")
        with open(base + "/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return unlimited
        with open(base + "/memory.current") as f:
            return max(0, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        return unlimited


def _check_room(spec: ModelSpec, training: TrainingSpec, device: str, file: str | None) -> None:
    """Refuse, before a model is built, a step that simtrain's own estimate of it on one
    device (:func:`simtrain.costs.memory.one_device_stage`, its peak less the CUDA context)
    puts beyond the device's free memory (:func:`free_memory_bytes`): a CPU measurement of
    GPT-2 XL ran the host out of memory, a traceback, or the kernel's OOM killer without
    one (a fuzz campaign)."""
    from simtrain.costs.memory import one_device_stage

    st = one_device_stage(spec, training)
    need = st.peak_memory_bytes - dict(st.memory_bytes).get("cuda_context", 0)
    free = free_memory_bytes(device)
    if need > free:
        raise ConfigError(file, "model", f"the step needs about {need / 2**30:.1f} GiB "
                          f"(simtrain's estimate of it on one device), {free / 2**30:.1f} GiB "
                          f"are free on {device}: measure a smaller model or micro-batch",
                          spec.name)  # fmt: skip


def _no_room(file: str | None, device: str, what: str) -> ConfigError:
    return ConfigError(file, "model", f"the step ran out of memory on {device} ({what}): "
                       "measure a smaller model or micro-batch")  # fmt: skip


#: The devices ``simtrain measure`` runs on.
DEVICES = ("cpu", "cuda")


def check_device(device: str) -> None:
    """``device`` is cpu or cuda (cuda:N) and available here: a ConfigError naming
    ``--device`` otherwise, before anything is built (a fuzz campaign: each was a torch
    traceback). ``simtrain measure`` and ``simtrain calibrate`` both check with it."""
    kind = device.split(":", 1)[0]
    index = device.split(":", 1)[1] if ":" in device else "0"
    if kind not in DEVICES or not index.isascii() or not index.isdigit():
        raise ConfigError(None, "--device", "unknown device", device, "cpu | cuda | cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(None, "--device", "no CUDA device here (torch.cuda.is_available() is "
                          "False)", device, "cpu")  # fmt: skip
    if kind == "cuda" and int(index) >= torch.cuda.device_count():
        raise ConfigError(None, "--device", f"no such CUDA device (this machine has "
                          f"{torch.cuda.device_count()})", device,
                          f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")  # fmt: skip


def _check_optimizer(training: TrainingSpec, file: str | None = None) -> None:
    """The reference trainer builds the optimizer (torchref.trainer.make_optimizer): a
    ConfigError naming ``training.optimizer`` for one it has no path for, on any device."""
    if training.optimizer == "adam8bit":
        raise ConfigError(file, "training.optimizer", "simtrain measure's trainer has no "
                          "bitsandbytes optimizer: measure another optimizer", "adam8bit")  # fmt: skip


def reference_lacks(spec: ModelSpec) -> tuple[str, str, str] | None:
    """The first model key whose mechanism the reference decoder does not build, as (key, what
    it lacks, what to measure instead); None when it builds the whole model. Measuring without
    this check would time and weigh a different model under the scenario's name (a dense MLP
    for a mixture of experts, say)."""
    if spec.positions == "alibi":
        # PyTorch's SDPA takes ALiBi only as a float mask, which leaves the flash kernel and
        # holds an a x s x s bias the frameworks' kernels (flash-attn's alibi_slopes,
        # Megatron-DeepSpeed's baddbmm input) do not: the measurement would not be theirs.
        return ("model.positions", "ALiBi kernel",
                "positions: none (the same parameters and saved tensors)")  # fmt: skip
    if spec.sliding_window and spec.flash_attention:  # (its flash path: SDPA's causal kernel)
        return ("model.sliding_window", "sliding-window flash kernel",
                "flash_attention: false or sliding_window: 0 (the same saved tensors)")  # fmt: skip
    if spec.attention_softcap and spec.flash_attention:
        # SDPA has no soft-capping (flash-attn's softcap does it in the kernel)
        return ("model.attention_softcap", "soft-capping flash kernel", "flash_attention: "
                "false (the math attention caps the scores) or attention_softcap: false")  # fmt: skip
    if spec.is_moe:
        return ("model.num_experts", "mixture of experts (router, experts, token dispatch)",
                "num_experts: 0, a dense block of ffn_hidden")  # fmt: skip
    if spec.is_mla:
        return ("model.kv_lora_rank", "multi-latent attention",
                "kv_lora_rank: 0 (multi-head attention)")  # fmt: skip
    if spec.attention_sinks:
        return ("model.attention_sinks", "attention sinks (a learned logit per head)",
                "attention_sinks: false")  # fmt: skip
    if spec.embedding_norm:
        return ("model.embedding_norm", "embedding norm", "embedding_norm: false")
    if spec.qkv_layout != "separate":
        return ("model.qkv_layout", f"{spec.qkv_layout!r} Q/K/V layout (it keeps q, k and v "
                "as three tensors)", "qkv_layout: separate")  # fmt: skip
    return None


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (None: leave it), restored after."""
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _measure_step(spec: ModelSpec, training: TrainingSpec, batch: int | None, device: str,
                  seed: int, steps: int, warmup: int) -> MeasuredStep:  # fmt: skip
    dev = torch.device(device)
    model, trainer, idx, targets = _warm_trainer(spec, training, dev, batch, seed, warmup)
    persistent = {n for n, _ in model.named_buffers() if _is_persistent(model, n)}
    step = _instrumented_step(model, trainer, idx, targets, persistent)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = _timed_steps(trainer, idx, targets, steps)
    peaks = ((torch.cuda.max_memory_allocated(dev), torch.cuda.max_memory_reserved(dev))
             if dev.type == "cuda" else (0, 0))  # fmt: skip
    return replace(_measured(spec, model, trainer, idx, persistent, step, times),
                   timed_peak_allocated_bytes=int(peaks[0]),
                   timed_peak_reserved_bytes=int(peaks[1]))  # fmt: skip


@dataclass(frozen=True)
class _Instrumented:
    """What the instrumented step leaves: metadata and numbers, no tensor."""

    records: list[_Saved]
    gradient_bytes: int
    peak_bytes: int
    tracked_peak_bytes: int
    loss: float


def _instrumented_step(model: nn.Module, trainer: _Trainer, idx: torch.Tensor,
                       targets: torch.Tensor, persistent: set[str]) -> _Instrumented:  # fmt: skip
    """One step with every live storage tracked (tagged parameter, buffer, state or batch) and
    every tensor saved for backward recorded; the peak is the tracker's (CUDA: the
    allocator's ``max_memory_allocated``)."""
    dev = trainer.device
    trainer.zero_grad()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tracker = _StorageTracker()
    for p in model.parameters():
        tracker.add(p, "param")
    for n, buf in model.named_buffers():
        tracker.add(buf, "param" if n in persistent else "buffer")
    states, counters = trainer.state_tensors()
    for t in trainer.masters + states + counters:
        tracker.add(t, "state")
    for t in trainer.accum:
        tracker.add(t, "state")
    for t in (idx, targets):
        tracker.add(t, "act")
    names = _FunctionNames()
    recorder = _SavedRecorder(model, tracker, names)
    with tracker:
        try:
            with names, torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t):
                loss = trainer.forward(idx, targets)
        finally:
            recorder.remove()
        trainer.backward(loss)
        grads = [p.grad for p in trainer.params if p.grad is not None]
        gradient_bytes = _tensor_bytes(grads) + _tensor_bytes(trainer.accum)
        del grads
        trainer.optimizer_step()
    _sync(dev)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else tracker.peak
    return _Instrumented(recorder.records, gradient_bytes, int(peak), tracker.peak,
                         float(loss.detach()))  # fmt: skip


def _timed_steps(trainer: _Trainer, idx: torch.Tensor, targets: torch.Tensor,
                 steps: int) -> list[float]:  # fmt: skip
    """Wall seconds of each of ``steps`` (at least one) uninstrumented steps."""
    times = []
    for _ in range(max(1, steps)):
        _sync(trainer.device)
        t0 = time.perf_counter()
        trainer.step(idx, targets)
        _sync(trainer.device)
        times.append(time.perf_counter() - t0)
    return times


def _saved_per_block(saved: list[_Saved], layers: int) -> tuple[list[int], tuple[Any, ...]]:
    """(activation bytes charged to each block, the listed saved tensors: those of the first
    and the last block and of the ops outside blocks)."""
    per_block = [0] * layers
    for r in saved:
        blk = _block_index(r.path)
        if blk is not None and r.tag == "act":
            per_block[blk] += r.charged
    listed = tuple(
        (f"{r.path}: {r.op} [{r.tag}]{r.note}", r.shape, r.dtype, r.charged)
        for r in saved
        if _block_index(r.path) in (None, 0, layers - 1)
    )
    return per_block, listed


def _measured(
    spec: ModelSpec,
    model: nn.Module,
    trainer: _Trainer,
    idx: torch.Tensor,
    persistent: set[str],
    step: _Instrumented,
    times: list[float],
) -> MeasuredStep:
    """The :class:`MeasuredStep` of an instrumented and timed step: bytes of what the model,
    the trainer and the optimizer hold now, and of what the instrumented step saved."""
    saved = _charge(step.records)
    per_block, listed = _saved_per_block(saved, spec.layers)
    states, counters = trainer.state_tensors()
    params = list(model.parameters())
    quantized = sum(
        m.out_features * m.in_features for m in model.modules() if isinstance(m, NF4Linear)
    )
    return MeasuredStep(
        parameter_bytes=_tensor_bytes(params)
        + _tensor_bytes([buf for n, buf in model.named_buffers() if n in persistent]),
        trainable_params=sum(p.numel() for p in trainer.params),
        frozen_params=sum(p.numel() for p in params if not p.requires_grad) + quantized,
        master_weight_bytes=_tensor_bytes(trainer.masters),
        gradient_bytes=step.gradient_bytes,
        optimizer_state_bytes=_tensor_bytes(states),
        optimizer_step_counter_bytes=_tensor_bytes(counters),
        activation_bytes=sum(r.charged for r in saved if r.tag == "act"),
        activation_bytes_per_layer=per_block[-1],
        block_activation_bytes=tuple(per_block),
        weight_copy_bytes=sum(r.charged for r in saved if r.tag == "wcopy"),
        constant_saved_bytes=sum(r.charged for r in saved if r.tag in ("buffer", "const")),
        buffer_bytes=_tensor_bytes(
            [buf for n, buf in model.named_buffers() if n not in persistent]
        ),
        saved_tensors=listed,
        peak_bytes=step.peak_bytes,
        tracked_peak_bytes=step.tracked_peak_bytes,
        step_time_s=statistics.median(times),
        loss=step.loss,
        micro_batch=idx.shape[0],
        seq_len=idx.shape[1],
        device=str(trainer.device),
        torch_version=torch.__version__,
        step_times_s=tuple(times),
        threads=torch.get_num_threads(),
    )


def _is_persistent(model: nn.Module, name: str) -> bool:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return leaf not in mod._non_persistent_buffers_set


def _block_index(path: str) -> int | None:
    parts = path.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def _charge(records: list[_Saved]) -> list[_Saved]:
    """Count each saved storage once (at its first saver); parameters are never counted."""
    first: dict[int, _Saved] = {}
    for r in records:
        if r.ptr in first:
            r.note = f" (same storage as {first[r.ptr].path}: {first[r.ptr].op})"
            continue
        first[r.ptr] = r
        r.charged = 0 if r.tag in ("param", "state") else r.nbytes
    return records


__all__ = ["MeasuredStep", "build_reference_model", "measure_step", "make_optimizer"]
