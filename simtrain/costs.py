"""Compute costs: FLOPs and bytes per transformer block and micro-batch, and their durations.

FLOPs count multiply-adds as 2 (Narayanan et al. 2021 §5.1, Eq. 3 derivation). A block's forward
matmuls are 2·b·s·h·(h + 2·kv + h + n_mlp·f) for the projections plus 4·b·s²·h for QKᵀ and
attention·V; for a 4h GeLU MLP with MHA this is 24·b·s·h² + 4·b·s²·h (formulas.md §1.2). The LM
head is 2·b·s·h·V. Backward is twice the forward (input gradient + weight gradient, each one
forward's worth for the projections; the attention core has no weights, so both its backward
matmuls are input gradients). Recompute replays the forward (full) or the attention core
(selective; Korthikanti et al. 2022 §4.3).

Durations: matmul FLOPs / (dtype peak · efficiency.matmul) + element-wise bytes /
(HBM bandwidth · efficiency.memory_bound). Both efficiencies live in the hardware profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.config import Scenario, TrainingSpec
from simtrain.hardware import HardwareProfile
from simtrain.memory import PRECISIONS, base_trainable, grad_flows_through_blocks
from simtrain.model import ModelSpec


@dataclass(frozen=True, slots=True)
class BlockFlops:
    """FLOPs of one transformer block for one micro-batch on one TP rank."""

    forward: float  # all matmuls of the forward
    attention_core: float  # the QKᵀ and attention·V part of ``forward``
    input_grad: float  # backward matmuls producing activation gradients (I)
    weight_grad: float  # backward matmuls producing weight gradients (W)
    elementwise_bytes_fwd: float  # memory-bound traffic of the forward (norms, GeLU, adds, ...)


def _mlp_mats(m: ModelSpec) -> int:
    return 3 if m.mlp == "swiglu" else 2


def block_flops(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> BlockFlops:
    """FLOPs of one block per micro-batch (see module docstring); frozen weights skip their
    weight-gradient matmuls, LoRA adds its two thin matmuls per target (Hu et al. 2021 §4.1)."""
    b = t.micro_batch
    s = t.seq_len + (t.peft.prompt_length if t.peft.method == "prompt" else 0)
    s_kv = s + (t.peft.prefix_length if t.peft.method == "prefix" else 0)
    h, kv, f = m.hidden, m.kv_dim, m.ffn_hidden
    proj = 2 * b * s * (h * (h + 2 * kv) + h * h + _mlp_mats(m) * h * f) / tp
    core = 4 * b * s * s_kv * h / tp
    full = base_trainable(t.peft.method, t.peft.phase)
    lora = 0.0
    lora_w = 0.0
    if t.peft.method in ("lora", "qlora"):
        shapes = m.linear_weight_shapes()
        for mod in t.peft.target_modules:
            if mod in shapes:
                fi, fo = shapes[mod]
                lora += 2 * b * s * t.peft.rank * (fi + fo)
        lora_w = lora
    adapter = 0.0
    if t.peft.method == "adapter":
        adapter = 2 * 2 * b * s * 2 * h * t.peft.adapter_size
    fwd = proj + core + lora + adapter
    if not grad_flows_through_blocks(t):
        input_grad = weight_grad = 0.0
    else:
        input_grad = proj + 2 * core + lora + adapter
        weight_grad = (proj if full else 0.0) + lora_w + adapter
    e = PRECISIONS[t.precision].act_mm
    mlp_width = f * (1.5 if m.mlp == "swiglu" else 1.0)
    # Memory-bound traffic per token, counted from the ops (an estimate, not a published
    # figure): two norms (read + write h), two residual adds (2 reads + 1 write of h), the
    # GeLU/SiLU (read + write f), rotary on q and k, dropout (read, write, 1-byte mask).
    # Backward is charged 2x this (chunk_costs). Checked against Korthikanti et al. 2022
    # Table 4 (22B, tp 8) by `simtrain validate`: step times within 3.0 % MAPE, but the
    # backward share looks overstated there (11.9 ms measured vs 14.7 ms simulated).
    per_token = 2 * 2 * h + 2 * 3 * h + 2 * mlp_width / tp
    if m.positions == "rotary":
        per_token += 2 * (h + kv) / tp
    if m.dropout > 0:
        per_token += 2 * 2.5 * h
    ew = e * b * s * per_token
    if t.peft.method == "qlora":
        # QLoRA dequantises every NF4 weight to 16 bits for each matmul (Dettmers et al. 2023
        # §3): read 0.5 B and write 2 B per weight, in the forward and again in the backward.
        linear = sum(fi * fo for fi, fo in m.linear_weight_shapes().values()) / tp
        ew += 2.5 * linear
    if not m.flash_attention:  # scale, mask, softmax (and dropout) over the s x s scores
        ew += e * b * m.heads * s * s_kv * (4 + (2.5 if m.dropout > 0 else 0)) / tp
    return BlockFlops(fwd, core, input_grad, weight_grad, ew)


def head_flops(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> tuple[float, float, float]:
    """(forward, input-grad, weight-grad) FLOPs of the LM head: 2·b·s·h·V/t each."""
    s = t.seq_len + (t.peft.prompt_length if t.peft.method == "prompt" else 0)
    f = 2 * t.micro_batch * s * m.hidden * m.vocab / tp
    full = base_trainable(t.peft.method, t.peft.phase)
    probe = not grad_flows_through_blocks(t)
    return f, (f if grad_flows_through_blocks(t) else 0.0), (f if full or probe else 0.0)


# Published FLOP conventions (formulas.md §1), for comparing with each source like with like.
# ``model_flops_per_step`` equals Eq. 7 and ``metrics.hardware_flops_per_step`` with full
# recompute equals Eq. 3 for a GPT shape (4h MLP, MHA): tests/test_costs.py checks both exactly.


def eq3_flops(B: int, s: int, L: int, h: int, V: int) -> float:
    """Narayanan et al. 2021 Eq. 3 (recompute included); L layers."""
    return 96 * B * s * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))


def eq7_flops(B: int, s: int, L: int, h: int, V: int) -> float:
    """Korthikanti et al. 2022 Eq. 7: model FLOPs, no recompute."""
    return 72 * B * L * s * h * h * (1 + s / (6 * h) + V / (12 * h * L))


def eq8_flops(B: int, s: int, L: int, h: int, V: int) -> float:
    """Korthikanti et al. 2022 Eq. 8: hardware FLOPs with selective recompute."""
    return 72 * B * L * s * h * h * (1 + s / (3 * h) + V / (12 * h * L))


def model_flops_per_step(sc: Scenario) -> float:
    """Model FLOPs of one optimizer step, no recompute (MFU numerator; Korthikanti 2022 App. A
    Eq. 7 for GPT; PaLM App. B): forward + backward of every block and the head, all micro-batches
    and data-parallel replicas. For full training with a 4h MLP this is
    72·B·L·s·h²·(1 + s/(6h) + V/(12·h·L))."""
    t = sc.training
    bf = block_flops(sc.model, t)
    hf, hi, hw = head_flops(sc.model, t)
    per_mb = sc.model.layers * (bf.forward + bf.input_grad + bf.weight_grad) + hf + hi + hw
    return per_mb * t.global_batch / t.micro_batch


@dataclass(frozen=True, slots=True)
class StageCosts:
    """Durations (ns) of one pipeline chunk's work for one micro-batch on one GPU."""

    forward_ns: int
    input_grad_ns: int  # I: backward to the inputs (B = I + W)
    weight_grad_ns: int  # W: backward to the weights
    recompute_ns: int
    forward_flops: float
    backward_flops: float
    recompute_flops: float


def _matmul_ns(flops: float, hw: HardwareProfile, dtype: str) -> float:
    peak = hw.peak(dtype) or hw.peak("fp32")
    return 1e9 * flops / (peak * hw.efficiency.matmul)


def _mem_ns(n_bytes: float, hw: HardwareProfile) -> float:
    return 1e9 * n_bytes / (hw.hbm_bandwidth_bytes_per_s * hw.efficiency.memory_bound)


def chunk_costs(sc: Scenario, layers: int, first: bool, last: bool) -> StageCosts:
    """Costs of ``layers`` blocks (plus embeddings / head when the chunk holds them)."""
    m, t, hw = sc.model, sc.training, sc.hardware
    tp = sc.parallelism.tp
    dtype = PRECISIONS[t.precision].compute_dtype
    bf = block_flops(m, t, tp)
    fwd_f = layers * bf.forward
    i_f = layers * bf.input_grad
    w_f = layers * bf.weight_grad
    ew = layers * bf.elementwise_bytes_fwd
    e = PRECISIONS[t.precision].act_mm
    s = t.seq_len
    if first:  # embedding lookup: write b·s·h (+ positions read/add)
        ew += e * t.micro_batch * s * m.hidden * 3
    if last:
        hf, hi, hwf = head_flops(m, t, tp)
        fwd_f, i_f, w_f = fwd_f + hf, i_f + hi, w_f + hwf
        ew += 4 * 4 * t.micro_batch * s * m.vocab / tp  # fp32 cast, log-softmax, loss
    grad = grad_flows_through_blocks(t)
    fwd_ns = _matmul_ns(fwd_f, hw, dtype) + _mem_ns(ew, hw)
    i_ns = _matmul_ns(i_f, hw, dtype) + (_mem_ns(2 * ew, hw) if grad else 0.0)
    w_ns = _matmul_ns(w_f, hw, dtype)
    rec_f = 0.0
    rec_ns = 0.0
    if grad and t.recompute == "full":
        rec_f = layers * bf.forward
        rec_ns = _matmul_ns(rec_f, hw, dtype) + _mem_ns(layers * bf.elementwise_bytes_fwd, hw)
    elif grad and t.recompute == "selective":
        rec_f = layers * bf.attention_core
        rec_ns = _matmul_ns(rec_f, hw, dtype)
    return StageCosts(
        forward_ns=round(fwd_ns),
        input_grad_ns=round(i_ns),
        weight_grad_ns=round(w_ns),
        recompute_ns=round(rec_ns),
        forward_flops=fwd_f,
        backward_flops=i_f + w_f,
        recompute_flops=rec_f,
    )


def optimizer_step_ns(trainable_params_per_gpu: int, t: TrainingSpec, hw: HardwareProfile) -> int:
    """Optimizer step: memory-bound over the GPU's trainable parameters. Adam reads the 16-bit
    gradient, master weight and two states and writes master, states and the 16-bit weight
    (about 2·(4+4+4) + 2·2 bytes per parameter in mixed precision). Offloaded: DeepSpeed
    CPU-Adam at ``cpu_adam_params_per_s`` plus gradients down and weights up over PCIe
    (Ren et al. 2021, ZeRO-Offload §4)."""
    prec = PRECISIONS[t.precision]
    n = trainable_params_per_gpu
    states = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2, "adam8bit": 2, "adafactor": 1}
    per_param = prec.grad + 2 * (prec.master or prec.param) + 2 * states[t.optimizer] * prec.state
    per_param += prec.param if prec.master else 0
    if t.offload.optimizer:
        cpu = n / hw.cpu_adam_params_per_s
        pcie = n * (prec.grad + prec.param) / hw.pcie_bandwidth_bytes_per_s
        return round(1e9 * (cpu + pcie))
    return round(_mem_ns(n * per_param, hw))
