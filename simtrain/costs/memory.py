"""Where GPU memory goes during training: bytes per GPU by category, per pipeline stage.

Categories (``simtrain.sim.timeline.MEMORY_CATEGORIES``): ``parameters``, ``master_weights``,
``gradients``, ``optimizer_states``, ``activations``, ``cuda_context``, ``buffers``; plus host
bytes when optimizer states are offloaded.

Model states follow Rajbhandari et al. 2020 (ZeRO, §3 and §5): with mixed precision and Adam a
parameter costs 2 (16-bit weight) + 2 (16-bit gradient) + K = 12 (fp32 master, momentum, variance)
bytes, and ZeRO stage 1/2/3 divides the optimizer states / + gradients / + parameters by N_d.

Activations are counted tensor by tensor from what a PyTorch implementation saves for backward
(:func:`layer_saved_tensors`); for 16-bit training without flash attention this reproduces
Korthikanti et al. 2022 §4.1 Eq. 1, ``s·b·h·(34 + 5·a·s/h)`` bytes per layer, exactly, and the
reference implementation in ``simtrain.torchref.measure`` checks it on real PyTorch steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import ceil

import numpy as np

from simtrain.schedules import Action, Schedule, build_schedule, pipedream_weight_versions
from simtrain.sim.timeline import MEMORY_CATEGORIES
from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import Scenario, TrainingSpec

# ---------------------------------------------------------------------------------------------
# Precision: bytes per element of each kind of tensor


@dataclass(frozen=True, slots=True)
class Precision:
    """Bytes per element. ``act_mm`` = tensors saved around matmuls, ``act_norm`` = the residual
    stream saved by norms, ``act_softmax`` = attention probabilities; ``weight_copy`` = the
    16-bit copy of each matmul weight that torch.autocast makes and keeps until backward;
    ``grad_accum`` = a separate fp32 gradient-accumulation buffer per trainable parameter, kept
    next to the 16-bit gradients (counted under gradients; ZeRO-1 does not shard it, ZeRO-2
    does)."""

    name: str
    param: int
    grad: int
    master: int
    state: int  # bytes per optimizer-state element
    act_mm: int
    act_norm: int
    act_softmax: int
    weight_copy: int = 0
    compute_dtype: str = "fp32"
    grad_accum: int = 0


PRECISIONS: dict[str, Precision] = {
    # fp32: everything 4 bytes (the lecture's first slide).
    "fp32": Precision("fp32", 4, 4, 0, 4, 4, 4, 4, compute_dtype="fp32"),
    # Mixed precision with fp32 master weights (Micikevicius et al. 2018; Megatron, DeepSpeed):
    # 16-bit weights and gradients, fp32 master copy and optimizer states, 16-bit activations.
    "fp16": Precision("fp16", 2, 2, 4, 4, 2, 2, 2, compute_dtype="fp16"),
    "bf16": Precision("bf16", 2, 2, 4, 4, 2, 2, 2, compute_dtype="bf16"),
    # bf16 with fp32 gradient accumulation (nanotron ``accumulate_grad_in_fp32``): the mixed
    # precision above plus an fp32 gradient buffer, 2 + 2 + 4 + 4 + 8 = 20 bytes/param with Adam.
    # Ultra-Scale Playbook, "Memory usage in Transformers": m_params = 2N, m_grad = 2N,
    # m_params_fp32 = 4N, m_opt = 8N, and "Some libraries store grads in FP32, which would
    # require an additional 4N memory. This is done, for example, in Nanotron". nanotron
    # optim/gradient_accumulator.py (FP32GradientAccumulator.build_grad_buffers) keeps the fp32
    # buffer for every parameter "even when Zero 1 is used"; its fp32 master copy is sharded.
    "bf16_fp32_grads": Precision(
        "bf16_fp32_grads", 2, 2, 4, 4, 2, 2, 2, compute_dtype="bf16", grad_accum=4
    ),  # fmt: skip
    # Pure bf16: weights, gradients and optimizer states all bf16, no master copy.
    "bf16_pure": Precision("bf16_pure", 2, 2, 0, 2, 2, 2, 2, compute_dtype="bf16"),
    # torch.autocast (HF Trainer bf16=True): fp32 weights and gradients; matmuls see 16-bit casts;
    # norms and softmax run in fp32 (PyTorch autocast op lists), so the residual stream and the
    # attention probabilities are saved in fp32. HF "model training anatomy": 18 bytes/param
    # with AdamW = 4 + 2 (copy) + 4 (grad) + 8.
    "amp_bf16": Precision("amp_bf16", 4, 4, 0, 4, 2, 4, 4, weight_copy=2, compute_dtype="bf16"),
    "amp_fp16": Precision("amp_fp16", 4, 4, 0, 4, 2, 4, 4, weight_copy=2, compute_dtype="fp16"),
}

# Optimizer state elements per trainable parameter (Adafactor handled by shape, below).
STATES_PER_PARAM = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}
# bitsandbytes 8-bit Adam (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"
# §2): two 1-byte states plus one fp32 absmax per block of 2048 values per state.
ADAM8BIT_BLOCK = 2048
# QLoRA (Dettmers et al. 2023 §3): NF4 weights, 4 bits each; absmax per 64-value block quantised
# to 8 bits, with one fp32 constant per 256 blocks: 8/64 + 32/(64·256) = 0.127 bits/param.
NF4_BITS = 4


def nf4_bytes(n: int, block: int = 64) -> int:
    """Bytes of an NF4 tensor of ``n`` values with double-quantised constants (QLoRA §3)."""
    blocks = ceil(n / block)
    return ceil(n * NF4_BITS / 8) + blocks + 4 * ceil(blocks / 256)


# ---------------------------------------------------------------------------------------------
# Parameter inventory


@dataclass(frozen=True, slots=True)
class ParamTensor:
    """One parameter tensor per GPU (after TP sharding): ``rows x cols`` (cols = 1 for vectors)."""

    name: str
    rows: int
    cols: int
    trainable: bool
    nf4: bool = False  # stored 4-bit (QLoRA base weights)
    matmul: bool = False  # a matmul weight (autocast makes a 16-bit copy)

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def base_trainable(peft: str, phase: str) -> bool:
    return peft == "none" or (peft == "lp_ft" and phase == "finetune")


def layer_param_tensors(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> list[ParamTensor]:
    """Parameter tensors of one transformer block on one TP rank.

    Megatron TP (Shoeybi et al. 2019 §3): Q, K, V, gate, up are column-parallel (weights and
    biases split by t), O and down are row-parallel (weights split, biases replicated), norms
    replicated. PEFT adds LoRA A/B (Hu et al. 2021 §4.1), adapters (Houlsby et al. 2019 §2.1),
    prefixes (Li & Liang 2021 §4.2).
    """
    peft = t.peft
    full = base_trainable(peft.method, peft.phase)
    qlora = peft.method == "qlora"
    bias_trainable = full or peft.method == "bitfit"
    out: list[ParamTensor] = []
    shapes = m.linear_weight_shapes()
    column = ("q", "k", "v", "gate", "up")
    for name, (fan_in, fan_out) in shapes.items():
        is_col = name in column
        rows, cols = (fan_in, fan_out // tp) if is_col else (fan_in // tp, fan_out)
        out.append(ParamTensor(f"{name}.weight", rows, cols, full, nf4=qlora, matmul=True))
        has_bias = m.bias or (m.qkv_bias and name in ("q", "k", "v"))
        if has_bias:
            out.append(ParamTensor(f"{name}.bias", fan_out // tp if is_col else fan_out, 1,
                                   bias_trainable))  # fmt: skip
        if peft.method in ("lora", "qlora") and name in peft.target_modules:
            r = peft.rank
            # LoRA A is split like the base input, B like the base output.
            a_rows = fan_in if is_col else fan_in // tp
            b_cols = fan_out // tp if is_col else fan_out
            out.append(ParamTensor(f"{name}.lora_A", a_rows, r, True, matmul=True))
            out.append(ParamTensor(f"{name}.lora_B", r, b_cols, True, matmul=True))
    norm_cols = 2 if m.norm == "layernorm" else 1
    for norm in ("norm1", "norm2"):
        out.append(ParamTensor(f"{norm}.weight", m.hidden, 1, full))
        if norm_cols == 2:
            out.append(ParamTensor(f"{norm}.bias", m.hidden, 1, bias_trainable))
    if peft.method == "adapter":
        a = peft.adapter_size
        for where in ("attn", "mlp"):
            out += [
                ParamTensor(f"adapter_{where}.down", m.hidden, a, True, matmul=True),
                ParamTensor(f"adapter_{where}.down_bias", a, 1, True),
                ParamTensor(f"adapter_{where}.up", a, m.hidden, True, matmul=True),
                ParamTensor(f"adapter_{where}.up_bias", m.hidden, 1, True),
            ]
    if peft.method == "prefix":
        out.append(ParamTensor("prefix_kv", 2 * peft.prefix_length, m.kv_dim // tp, True))
    return out


def embedding_param_tensors(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> list[ParamTensor]:
    """Token embedding (vocab-parallel, V/t rows per rank), learned positions (replicated),
    prompt-tuning soft tokens."""
    full = base_trainable(t.peft.method, t.peft.phase)
    out = [ParamTensor("wte", m.vocab // tp, m.hidden, full)]
    if m.positions == "learned":
        out.append(ParamTensor("wpe", m.max_positions, m.hidden, full))
    if t.peft.method == "prompt":
        out.append(ParamTensor("prompt", t.peft.prompt_length, m.hidden, True))
    return out


def head_param_tensors(
    m: ModelSpec, t: TrainingSpec, tp: int = 1, pp: int = 1
) -> list[ParamTensor]:
    """Final norm plus the LM head. Tied embeddings share the token embedding on one GPU; with
    pipeline parallelism the last stage keeps its own copy (Megatron: word embeddings on the
    first and last stage, gradients all-reduced between them). Linear probing trains a fresh
    untied head (Kumar et al. 2022, "LP-FT", §2)."""
    full = base_trainable(t.peft.method, t.peft.phase)
    probe = t.peft.method == "linear_probe" or (
        t.peft.method == "lp_ft" and t.peft.phase == "probe"
    )
    out = [ParamTensor("norm_f.weight", m.hidden, 1, full)]
    if m.norm == "layernorm":
        out.append(ParamTensor("norm_f.bias", m.hidden, 1, full or t.peft.method == "bitfit"))
    if not m.tied_embeddings or probe:
        out.append(ParamTensor("lm_head", m.hidden, m.vocab // tp, full or probe, matmul=True))
    elif pp > 1:
        out.append(ParamTensor("lm_head(tied copy)", m.hidden, m.vocab // tp, full, matmul=True))
    return out


def full_model_param_tensors(m: ModelSpec, t: TrainingSpec) -> list[ParamTensor]:
    """All parameters of the model on one GPU (no parallelism)."""
    return (
        embedding_param_tensors(m, t)
        + layer_param_tensors(m, t) * m.layers
        + head_param_tensors(m, t)
    )


def trainable_params(m: ModelSpec, t: TrainingSpec) -> int:
    return sum(p.numel for p in full_model_param_tensors(m, t) if p.trainable)


def total_params(m: ModelSpec, t: TrainingSpec) -> int:
    """Parameters including PEFT additions (base N + adapters)."""
    return sum(p.numel for p in full_model_param_tensors(m, t))


# ---------------------------------------------------------------------------------------------
# Model-state bytes


@dataclass(frozen=True, slots=True)
class ModelStateBytes:
    parameters: int
    master_weights: int
    gradients: int
    optimizer_states: int
    weight_copies: int  # autocast 16-bit copies of matmul weights (held until backward)
    params: int
    trainable: int


def model_state_bytes(tensors: list[ParamTensor], t: TrainingSpec) -> ModelStateBytes:
    """Bytes of parameters, fp32 master copies, gradients and optimizer states.

    Frozen parameters get no gradient, master copy or optimizer state. QLoRA base weights are
    NF4 (:func:`nf4_bytes`); its LoRA weights stay 16-bit with no master copy (Dettmers et al.
    2023 §3: "BFloat16 computation data type", paged fp32 optimizer states).
    """
    prec = PRECISIONS[t.precision]
    qlora = t.peft.method == "qlora"
    params = grads = master = states = copies = 0
    n = n_train = 0
    for p in tensors:
        n += p.numel
        if p.nf4:
            params += nf4_bytes(p.numel, t.peft.quant_block_size)
        else:
            params += p.numel * prec.param
            if p.matmul:
                copies += p.numel * prec.weight_copy
        if not p.trainable:
            continue
        n_train += p.numel
        grads += p.numel * (prec.grad + prec.grad_accum)
        if not qlora:
            master += p.numel * prec.master
        state_bytes = 4 if qlora else prec.state
        states += optimizer_state_elements(p, t.optimizer) * state_bytes
        if t.optimizer == "adam8bit":
            states += 2 * p.numel + 2 * 4 * ceil(p.numel / ADAM8BIT_BLOCK)
    return ModelStateBytes(params, master, grads, states, copies, n, n_train)


def _scale_states(ms: ModelStateBytes, k: int) -> ModelStateBytes:
    return ModelStateBytes(*(getattr(ms, f) * k for f in ModelStateBytes.__slots__))


def _add_states(a: ModelStateBytes, b: ModelStateBytes) -> ModelStateBytes:
    return ModelStateBytes(*(getattr(a, f) + getattr(b, f) for f in ModelStateBytes.__slots__))


def optimizer_working_bytes(tensors: list[ParamTensor], t: TrainingSpec, shards: int, *,
                            trainable: int) -> int:  # fmt: skip
    """Temporaries of PyTorch's single-tensor Adam/AdamW step (``foreach=False``):
    ``denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`` holds two state-sized
    tensors of the parameter being updated, so the step needs 2 x the largest trainable tensor
    (torch/optim/adam.py ``_single_tensor_adam``; measured with simtrain.torchref.measure). SGD updates
    in place. With fp32 master weights, plus the fp32 master gradients of all ``trainable``
    parameters (below). With ZeRO the optimizer sees 1/``shards`` of each tensor."""
    if t.offload.optimizer:
        return 0
    prec = PRECISIONS[t.precision]
    master_grads = 0
    if prec.master and not prec.grad_accum:
        # Mixed precision with fp32 master weights: before the update every 16-bit gradient is
        # cast to an fp32 master gradient, all of them at once (Megatron
        # Float16OptimizerWithFloat16Params._copy_model_grads_to_main_grads; apex amp O2),
        # 4 B per trainable parameter (of the shard with ZeRO). Measured on an H200: GPT-2 XL
        # bf16 + full recompute peaks at the step, 30.22 GiB (benchmarks/measure_cuda.py).
        master_grads = prec.master * ceil(trainable / shards)
    if t.optimizer not in ("adam", "adamw"):
        return master_grads
    largest = max((p.numel for p in tensors if p.trainable), default=0)
    state = 4 if t.peft.method == "qlora" else prec.state
    return master_grads + 2 * state * ceil(largest / shards)


def optimizer_state_elements(p: ParamTensor, optimizer: str) -> int:
    """State elements of one tensor. SGD 0; momentum 1·n; Adam/AdamW 2·n (Kingma & Ba 2015);
    Adafactor (Shazeer & Stern 2018 §3, no first moment as in its default beta1=None): factored
    second moment rows + cols for matrices, n for vectors; 8-bit Adam counted in bytes apart."""
    if optimizer in STATES_PER_PARAM:
        return STATES_PER_PARAM[optimizer] * p.numel
    if optimizer == "adafactor":
        return p.rows + p.cols if p.cols > 1 and p.rows > 1 else p.numel
    return 0  # adam8bit: bytes added by the caller


# ---------------------------------------------------------------------------------------------
# Activations: the tensors saved for backward


@dataclass(frozen=True, slots=True)
class SavedTensor:
    """A tensor saved for backward in one layer for one micro-batch."""

    name: str
    bytes: int
    formula: str


def grad_flows_through_blocks(t: TrainingSpec) -> bool:
    """Does the gradient flow back through the transformer blocks? Not for linear probing, where
    only the head is trained (autograd saves nothing for frozen inputs)."""
    return not (
        t.peft.method == "linear_probe" or (t.peft.method == "lp_ft" and t.peft.phase == "probe")
    )


def layer_saved_tensors(
    m: ModelSpec,
    t: TrainingSpec,
    micro_batch: int | None = None,
    tp: int = 1,
    sequence_parallel: bool = False,
) -> list[SavedTensor]:
    """Tensors one transformer block saves for backward, for one micro-batch (no recompute).

    Rules (PyTorch autograd): a linear saves its input only if its weight is trainable; norms,
    GeLU/SiLU and attention save their inputs (or outputs) whenever gradients flow through them;
    dropout saves a 1-byte mask. With a 4h GeLU MLP, MHA, 16-bit activations, dropout on and no
    flash attention this sums to Korthikanti et al. 2022 Eq. 1, ``sbh(34 + 5as/h)``; with tensor
    (and sequence) parallelism the split follows their Eq. 2 (and Eq. 4).

    ``qkv_layout = "fused_kv_copy"`` is nanotron's ``CausalSelfAttention`` (models/llama.py,
    training path, MHA): the fused QKV projection output is permuted into one contiguous
    ``(3, b, s, a/t, d)`` tensor and unpacked into q, k, v views; k and v are then copied by
    ``torch.cat`` + ``permute().contiguous()`` into a separate ``(b, s, 2, a/t, d)`` tensor for
    flash-attn's in-place rotary (``RotaryEmbedding(q, kv=...)``), and
    ``flash_attn_varlen_func`` saves q (a view of the fused tensor, which keeps all of it alive)
    and k, v (views of the copy): ``2·sb(3h + 2kv)/t`` bytes instead of ``2·sb(h + 2kv)/t``. With
    GQA nanotron makes q, k, v contiguous copies, so nothing extra is kept.
    """
    if not grad_flows_through_blocks(t):
        return []
    prec = PRECISIONS[t.precision]
    b = micro_batch if micro_batch is not None else t.micro_batch
    s = t.seq_len + (t.peft.prompt_length if t.peft.method == "prompt" else 0)
    s_kv = s + (t.peft.prefix_length if t.peft.method == "prefix" else 0)
    h, f, a = m.hidden, m.ffn_hidden, m.heads
    kv = m.kv_dim
    sb = s * b
    seq_div = tp if sequence_parallel else 1  # tensors outside the TP region
    full = base_trainable(t.peft.method, t.peft.phase)
    lora = t.peft.method in ("lora", "qlora")
    targets = set(t.peft.target_modules) if lora else set()
    e, en, esm = prec.act_mm, prec.act_norm, prec.act_softmax
    amp = prec.weight_copy > 0
    drop = m.dropout > 0
    out: list[SavedTensor] = []

    def add(name: str, n_bytes: float, formula: str) -> None:
        out.append(SavedTensor(name, int(n_bytes), formula))

    def saves_input(module: str) -> bool:
        return full or module in targets

    norm_stats = 2 if m.norm == "layernorm" else 1  # mean and rstd, or rstd (fp32)
    for i, (lin_in, mods) in enumerate(
        (
            ("attention input", ("q", "k", "v")),
            ("mlp input", ("gate", "up") if m.mlp == "swiglu" else ("up",)),
        )
    ):
        add(f"norm{i + 1} input", en * sb * h / seq_div, f"{en}·sbh")
        add(f"norm{i + 1} statistics", 4 * norm_stats * sb / seq_div, f"{4 * norm_stats}·sb")
        users = [mod for mod in mods if saves_input(mod)]
        if users:
            # autocast casts the fp32 norm output once per linear that uses it.
            copies = len(users) if amp else 1
            add(f"{lin_in} ({', '.join(users)})", copies * e * sb * h / seq_div,
                f"{copies * e}·sbh")  # fmt: skip
        if i == 0:
            # Attention core.
            if m.flash_attention:
                add("q, k, v (flash attention)", e * sb * (h + 2 * kv) / tp, f"{e}·sb(h+2kv)/t")
                if m.qkv_layout == "fused_kv_copy" and m.kv_heads == m.heads:
                    add("fused qkv storage behind the saved q", e * sb * 2 * kv / tp,
                        f"{e}·sb·2kv/t")  # fmt: skip
                add("attention output + logsumexp", (e * sb * h + 4 * b * a * s) / tp,
                    f"{e}·sbh + 4·bas")  # fmt: skip
            else:
                # q and k^T saved by QK^T, v by att@v; GQA expands k and v to all heads.
                kv_s = s_kv / s
                add("q, k, v", e * sb * h * (1 + 2 * kv_s) / tp, f"{e}·sbh·3")
                add("softmax output", esm * b * a * s * s_kv / tp, f"{esm}·as²b")
                if drop:
                    add("attention dropout mask", b * a * s * s_kv / tp, "1·as²b")
                    add("attention dropout output", e * b * a * s * s_kv / tp, f"{e}·as²b")
                elif amp:
                    add("attention probabilities, 16-bit copy", e * b * a * s * s_kv / tp,
                        f"{e}·as²b")  # fmt: skip
            if saves_input("o") and not m.flash_attention:
                # With SDPA the (b, s, a, d) output is already laid out as the out-projection's
                # input: one storage, counted above (measured: simtrain.torchref.measure).
                add("out-projection input", e * sb * h / tp, f"{e}·sbh/t")
            if lora:
                for mod in sorted(targets & {"q", "k", "v", "o"}):
                    add(f"lora {mod}: x·A", e * sb * t.peft.rank, f"{e}·sbr")
            if drop:
                add("attention residual dropout mask", sb * h / seq_div, "1·sbh")
        else:
            if m.mlp == "swiglu":
                add("gate output (SiLU input)", e * sb * f / tp, f"{e}·sbf/t")
                add("SiLU output and up output", 2 * e * sb * f / tp, f"{2 * e}·sbf/t")
            else:
                add("up output (GeLU input)", e * sb * f / tp, f"{e}·sbf/t")
            if saves_input("down"):
                add("down-projection input", e * sb * f / tp, f"{e}·sbf/t")
            if lora:
                for mod in sorted(targets & {"gate", "up", "down"}):
                    add(f"lora {mod}: x·A", e * sb * t.peft.rank, f"{e}·sbr")
            if drop:
                add("mlp dropout mask", sb * h / seq_div, "1·sbh")
    if t.peft.method == "adapter":
        a_w = t.peft.adapter_size
        for where in ("attn", "mlp"):
            add(f"adapter {where}: input, GeLU in/out", e * sb * (h + 2 * a_w), f"{e}·sb(h+2m)")
    return out


def layer_activation_bytes(
    m: ModelSpec, t: TrainingSpec, tp: int = 1, sequence_parallel: bool = False
) -> int:
    """Bytes one block keeps for backward per micro-batch, with recompute applied.

    full: only the block input is kept (Chen et al. 2016; Korthikanti 2022 §4.3: 2sbh in 16 bit);
    selective: the attention core is recomputed, so its s² tensors are dropped (Korthikanti §4.3).
    """
    saved = layer_saved_tensors(m, t, tp=tp, sequence_parallel=sequence_parallel)
    if not saved:
        return 0
    if t.recompute == "full":
        return layer_input_bytes(m, t, tp, sequence_parallel)
    if t.recompute == "selective":
        core = ("softmax output", "attention dropout", "attention probabilities",
                "attention output + logsumexp")  # fmt: skip
        saved = [x for x in saved if not x.name.startswith(core)]
    return sum(x.bytes for x in saved)


def frozen_input_savings(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False) -> int:
    """With frozen embeddings (LoRA, QLoRA, adapters, prefix tuning) the first block's input needs
    no gradient, so its first norm (frozen too) saves nothing: its input and statistics are not
    kept (autograd saves only what a gradient needs; measured with simtrain.torchref.measure)."""
    if t.peft.method not in ("lora", "qlora", "adapter", "prefix") or t.recompute == "full":
        return 0
    prec = PRECISIONS[t.precision]
    sb = t.seq_len * t.micro_batch
    stats = 4 * (2 if m.norm == "layernorm" else 1) * sb
    return (prec.act_norm * sb * m.hidden + stats) // (tp if sp else 1)


def layer_input_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False) -> int:
    """The checkpoint a fully recomputed block keeps: its input, b·s·h in the residual dtype."""
    prec = PRECISIONS[t.precision]
    s = t.seq_len + (t.peft.prompt_length if t.peft.method == "prompt" else 0)
    return prec.act_norm * t.micro_batch * s * m.hidden // (tp if sp else 1)


def head_saved_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False) -> int:
    """Last stage, per micro-batch: final-norm input, head input, and what cross-entropy saves:
    standard, the fp32 log-softmax output (4·sbV/t; Korthikanti 2022 §4.2 counts fp32 logits
    4sbv/t); fused (flash-attn ``losses/cross_entropy.py``: ``ctx.save_for_backward(logits,
    lse, labels)``), the logits in the matmul dtype plus one fp32 log-sum-exp per row."""
    prec = PRECISIONS[t.precision]
    s = t.seq_len + (t.peft.prompt_length if t.peft.method == "prompt" else 0)
    sb = s * t.micro_batch
    div = tp if sp else 1
    if t.cross_entropy == "fused":
        total = prec.act_mm * sb * m.vocab // tp + 4 * sb
    else:
        total = 4 * sb * m.vocab // tp
    if grad_flows_through_blocks(t):
        total += (
            prec.act_norm * sb * m.hidden + 4 * (2 if m.norm == "layernorm" else 1) * sb
        ) // div
    probe = t.peft.method == "linear_probe" or (
        t.peft.method == "lp_ft" and t.peft.phase == "probe"
    )
    if base_trainable(t.peft.method, t.peft.phase) or probe:
        total += prec.act_mm * sb * m.hidden // div
    return total


def loss_transient_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """Working memory of the loss on the last stage beyond what is saved. Standard: the 16-bit
    logits and their fp32 copy in forward (fp32 training: the logits themselves), then the
    gradient of the log-softmax output and of the logits in backward: about 2 fp32 b·s·V/t
    tensors at once. Fused: the forward keeps only the saved logits; the backward writes one
    logit gradient in the matmul dtype (flash-attn ``xentropy`` backward, not in place)."""
    s = t.seq_len + (t.peft.prompt_length if t.peft.method == "prompt" else 0)
    if t.cross_entropy == "fused":
        return PRECISIONS[t.precision].act_mm * t.micro_batch * s * m.vocab // tp
    return 2 * 4 * t.micro_batch * s * m.vocab // tp


def embedding_saved_bytes(m: ModelSpec, t: TrainingSpec, sp_div: int = 1) -> int:
    """First stage: token ids (int64) for the embedding backward, and the embedding dropout mask."""
    s = t.seq_len + (t.peft.prompt_length if t.peft.method == "prompt" else 0)
    sb = s * t.micro_batch
    total = 8 * t.micro_batch * t.seq_len
    if m.dropout > 0 and grad_flows_through_blocks(t):
        total += sb * m.hidden // sp_div
    return total


# ---------------------------------------------------------------------------------------------
# Pipeline: layers and micro-batches in flight per stage


def chunk_layers(layers: int, pp: int, v: int = 1) -> dict[int, tuple[int, int]]:
    """Virtual stage -> layers [start, end): stage k holds layers k·L/(p·v) up to (k+1)·L/(p·v);
    it lives on rank k % p (Megatron interleaved layout, Narayanan et al. 2021 §2.2.2)."""
    per = layers // (pp * v)
    return {k: (k * per, (k + 1) * per) for k in range(pp * v)}


@dataclass(frozen=True, slots=True)
class StageBlocks:
    """What one chunk (virtual stage) holds: decoder layers [lo, hi) (possibly none under a
    compute-balanced split), and whether it holds the embedding and the final norm + LM head +
    loss."""

    lo: int
    hi: int
    embedding: bool
    head: bool

    @property
    def layers(self) -> int:
        return self.hi - self.lo


def compute_balanced_stages(m: ModelSpec, pp: int) -> list[StageBlocks]:
    """nanotron's pipeline split (models/base.py ``build_model``; costs from
    ``LlamaModel.get_block_compute_costs``): blocks in model order [embedding, L decoder layers,
    final norm, LM head, fp32 cast, loss] with costs 0, ``4·h² + 3·f·h`` each (attention
    projections + MLP), 0, ``V·h``, 0, 0. Thresholds ``T_r = C·(r+1)/pp`` over the total cost C;
    walking the cumulative cost c, a block goes to the current rank r and r advances by one when
    c > T_r. The embedding stays on rank 0. So the LM head counts as ``V·h / (4h² + 3fh)``
    layers and the last rank gets that many fewer: the 1B sweep model (h 2048, f 8192,
    V 131072) on pp = 2 puts 11 of 16 layers on rank 0."""
    layer_cost = 4 * m.hidden * m.hidden + 3 * m.ffn_hidden * m.hidden
    costs = [0] + [layer_cost] * m.layers + [0, m.vocab * m.hidden, 0, 0]
    total = sum(costs)
    rank_of: list[int] = []
    r, c = 0, 0
    for cost in costs:
        c += cost
        rank_of.append(r)
        if c * pp > total * (r + 1) and r < pp - 1:  # c > total·(r+1)/pp, in integers
            r += 1
    out = []
    for k in range(pp):
        layers = [i for i in range(m.layers) if rank_of[1 + i] == k]
        lo = layers[0] if layers else 0
        hi = layers[-1] + 1 if layers else 0
        out.append(StageBlocks(lo, hi, k == 0, rank_of[m.layers + 2] == k))
    return out


def embedding_as_layer_stages(m: ModelSpec, pp: int) -> list[StageBlocks]:
    """DeepSpeed's pipeline partition ``type:transformer|embedding`` (Megatron-DeepSpeed, BLOOM):
    the items [embedding, L decoder layers, tied embedding / LM head] each weigh 1 and are split
    into ``pp`` contiguous parts as evenly as possible, the first ``(L + 2) mod pp`` parts one
    item larger (deepspeed/runtime/utils.py ``partition_uniform``). BLOOM-176B (70 layers, pp 12):
    embedding + 5 layers, 10 x 6 layers, 5 layers + head (bigscience tr11-176B-ml README)."""
    items = m.layers + 2
    size, extra = divmod(items, pp)
    out, start = [], 0
    for k in range(pp):
        end = start + size + (1 if k < extra else 0)
        lo, hi = max(start - 1, 0), min(end - 1, m.layers)  # item i >= 1 is layer i - 1
        out.append(StageBlocks(lo, max(hi, lo), start == 0, end == items))
        start = end
    return out


def scenario_chunks(sc: Scenario) -> dict[int, StageBlocks]:
    """Virtual stage -> what it holds, by ``parallelism.layer_split``: the one place that splits
    the model over pipeline stages for memory, costs and timing. ``uniform``: Megatron's
    :func:`chunk_layers` (the first chunk holds the embedding, the last the head);
    ``compute_balanced``: nanotron's :func:`compute_balanced_stages` (one chunk per rank);
    ``embedding_as_layer``: DeepSpeed's :func:`embedding_as_layer_stages` (one chunk per rank)."""
    m, p = sc.model, sc.parallelism
    if p.layer_split == "compute_balanced" and p.virtual_stages == 1:
        return dict(enumerate(compute_balanced_stages(m, p.pp)))
    if p.layer_split == "embedding_as_layer" and p.virtual_stages == 1:
        return dict(enumerate(embedding_as_layer_stages(m, p.pp)))
    return {
        k: StageBlocks(lo, hi, lo == 0, hi == m.layers)
        for k, (lo, hi) in chunk_layers(m.layers, p.pp, p.virtual_stages).items()
    }


def microbatches_in_flight(schedule: str, pp: int, m: int, stage: int, v: int = 1) -> float:
    """Closed forms of the micro-batches a stage holds at its peak (for documentation and tests;
    :func:`rank_activation_states` walks the real schedule). GPipe holds all m (Huang et al. 2019
    §2.3); 1F1B and PipeDream hold min(m, p − s) (Narayanan et al. 2021 §2.2.1); ZB-H1 defers
    weight gradients, so every stage keeps up to min(m, p) until its W, 1F1B's stage-0 peak
    (Qi et al. 2024, ICLR, arXiv 2401.10241 §2.1); naive model parallelism and pp = 1 hold one."""
    if pp == 1 or schedule == "naive":
        return 1.0
    if schedule == "gpipe":
        return float(m)
    if schedule == "zb_h1":
        return float(min(m, pp))
    return float(min(m, pp - stage))


def pipeline_schedule(sc: Scenario) -> Schedule:
    """The compute schedule of a scenario. With pp = 1 every schedule is plain gradient
    accumulation: forward and backward of one micro-batch after another."""
    p = sc.parallelism
    return _cached_schedule(schedule_name(sc), p.pp, sc.num_microbatches, p.virtual_stages)


def schedule_name(sc: Scenario) -> str:
    """The schedule that runs: ``parallelism.schedule``, or 1F1B (gradient accumulation) when
    pp = 1."""
    return sc.parallelism.schedule if sc.parallelism.pp > 1 else "1f1b"


@lru_cache(maxsize=64)
def _cached_schedule(name: str, pp: int, m: int, v: int) -> Schedule:
    """Schedules are pure functions of (name, pp, m, v): build each once (callers never mutate)."""
    return build_schedule(name, pp, m, v)


def activation_peak(
    actions: list[Action],
    chunk_bytes: dict[int, int],
    working_set: dict[int, int],
    loss_bytes: dict[int, int] | None = None,
) -> tuple[int, int, float]:
    """The reference walk (tests check :func:`activation_peak_of_states` against it, which
    :func:`stage_memory` uses). Walk one rank's actions in order: F allocates its chunk's bytes (and, on the last chunk,
    the loss working memory until the forward ends), recompute before B or I adds the chunk's
    working set, B (or W after a split backward) frees both.

    Returns (peak of activations + transients, peak of saved activations alone, micro-batches
    in flight at that peak in whole-stage units). The loss working memory and a recompute working
    set never coexist: the first is gone before the first block is re-materialised (measured
    with simtrain.torchref.measure)."""
    loss = loss_bytes or {}
    held = 0
    peak = peak_saved = 0
    count = 0
    peak_count = 0.0
    v = max(len(chunk_bytes), 1)
    for a in actions:
        if a.kind == "F":
            held += chunk_bytes[a.stage]
            count += 1
            peak = max(peak, held + loss.get(a.stage, 0))
            if held > peak_saved:
                peak_saved, peak_count = held, count / v
        elif a.kind in ("B", "I"):
            peak = max(peak, held + working_set[a.stage])
            if a.kind == "B":
                held -= chunk_bytes[a.stage]
                count -= 1
        elif a.kind == "W":
            held -= chunk_bytes[a.stage]
            count -= 1
    return peak, peak_saved, peak_count


@dataclass(frozen=True, slots=True)
class ActivationStates:
    """The distinct points of one rank's activation walk (:func:`activation_peak`), in order of
    first occurrence, as read-only integer matrices: row i of ``forward_held`` counts the
    micro-batches alive per virtual stage (columns: ``chunks``) just after a forward of virtual
    stage ``chunks[forward_chunk[i]]``; ``backward_held`` / ``backward_chunk`` likewise just
    before a backward (B or I)."""

    chunks: tuple[int, ...]
    forward_held: np.ndarray  # (states, chunks) int64
    forward_chunk: np.ndarray  # (states,) column index
    backward_held: np.ndarray
    backward_chunk: np.ndarray


def _frozen(rows: list, width: int) -> np.ndarray:
    a = np.array(rows, dtype=np.int64).reshape(len(rows), width)
    a.flags.writeable = False
    return a


@lru_cache(maxsize=1024)
def rank_activation_states(name: str, pp: int, m: int, v: int, rank: int) -> ActivationStates:
    """One rank's walk reduced to its distinct states (cached per schedule and rank).
    :func:`activation_peak_of_states` on them gives exactly what :func:`activation_peak` gives
    on the whole action list: a repeated state adds nothing to a maximum, and the first
    occurrence of the largest forward state is where the walk's strict "greater than" last
    fires (tested with hypothesis for every schedule and any bytes)."""
    actions = _cached_schedule(name, pp, m, v)[rank]
    chunks = tuple(sorted({a.stage for a in actions}))
    index = {c: i for i, c in enumerate(chunks)}
    held = [0] * len(chunks)
    fwd: dict[tuple, None] = {}
    bwd: dict[tuple, None] = {}
    for a in actions:
        i = index[a.stage]
        if a.kind == "F":
            held[i] += 1
            fwd.setdefault((i, *held))
        elif a.kind in ("B", "I"):
            bwd.setdefault((i, *held))
            if a.kind == "B":
                held[i] -= 1
        elif a.kind == "W":
            held[i] -= 1
    n = len(chunks)
    f, b = list(fwd), list(bwd)
    return ActivationStates(
        chunks,
        _frozen([r[1:] for r in f], n), _frozen([r[0] for r in f], 1).ravel(),
        _frozen([r[1:] for r in b], n), _frozen([r[0] for r in b], 1).ravel(),
    )  # fmt: skip


def activation_peak_of_states(
    states: ActivationStates,
    chunk_bytes: dict[int, int],
    working_set: dict[int, int],
    loss_bytes: dict[int, int] | None = None,
) -> tuple[int, int, float]:
    """:func:`activation_peak` over :func:`rank_activation_states` (the same result), as two
    integer matrix-vector products."""
    loss = loss_bytes or {}
    ch = states.chunks
    per = np.array([chunk_bytes[c] for c in ch], dtype=np.int64)
    peak = peak_saved = 0
    peak_count = 0.0
    if len(states.forward_chunk):
        held = states.forward_held @ per
        extra = np.array([loss.get(c, 0) for c in ch], dtype=np.int64)[states.forward_chunk]
        peak = int((held + extra).max())
        i = int(held.argmax())  # the first state with the most saved bytes
        if held[i] > 0:
            peak_saved = int(held[i])
            peak_count = int(states.forward_held[i].sum()) / max(len(chunk_bytes), 1)
    if len(states.backward_chunk):
        held = states.backward_held @ per
        ws = np.array([working_set[c] for c in ch], dtype=np.int64)[states.backward_chunk]
        peak = max(peak, int((held + ws).max()))
    return peak, peak_saved, peak_count


# ---------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True, slots=True)
class StageMemory:
    stage: int
    gpus: int
    layers: tuple[tuple[int, int], ...]
    memory_bytes: tuple[tuple[str, int], ...]  # category -> bytes, in MEMORY_CATEGORIES order
    host_memory_bytes: int
    peak_memory_bytes: int
    capacity_bytes: int
    activation_bytes_per_microbatch: int
    microbatches_in_flight: float
    params: int  # parameters held by one GPU of this stage (after TP, before ZeRO-3 sharding)
    trainable: int = 0
    loss_bytes: tuple[tuple[int, int], ...] = ()  # virtual stage -> loss working memory
    optimizer_working_bytes: int = 0  # temporaries of the optimizer step
    chunk_activation_bytes: tuple[tuple[int, int], ...] = ()  # virtual stage -> bytes per mb
    recompute_working_set_bytes: tuple[tuple[int, int], ...] = ()

    @property
    def fits(self) -> bool:
        return self.peak_memory_bytes <= self.capacity_bytes

    def category(self, name: str) -> int:
        return dict(self.memory_bytes)[name]


@dataclass(frozen=True, slots=True)
class MemoryReport:
    scenario: str
    params: int
    trainable_params: int
    stages: tuple[StageMemory, ...]
    explain: tuple[str, ...]

    @property
    def peak_memory_bytes(self) -> int:
        return max(s.peak_memory_bytes for s in self.stages)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)

    def to_json(self) -> dict:
        return {
            "schema_version": 1,
            "scenario": self.scenario,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "stages": [
                {
                    "stage": s.stage,
                    "gpus": s.gpus,
                    "memory_bytes": dict(s.memory_bytes),
                    "host_memory_bytes": s.host_memory_bytes,
                    "peak_memory_bytes": s.peak_memory_bytes,
                    "capacity_bytes": s.capacity_bytes,
                    "fits": s.fits,
                }
                for s in self.stages
            ],
            "peak_memory_bytes": self.peak_memory_bytes,
            "fits": self.fits,
        }


@dataclass(frozen=True, slots=True)
class StageWorkload:
    """What the engine needs about a stage's memory: static bytes by category and the bytes one
    micro-batch's forward allocates (freed by its backward)."""

    static_bytes: tuple[tuple[str, int], ...]
    activation_bytes_per_microbatch: int
    transient_bytes: int  # buffers: loss working memory, weight copies, communication buffers


def stage_memory(sc: Scenario, stage: int) -> tuple[StageMemory, list[str]]:
    """Memory of one GPU of pipeline stage ``stage`` (all its TP and DP peers are identical)."""
    m, t, p, hw = sc.model, sc.training, sc.parallelism, sc.hardware
    prec = PRECISIONS[t.precision]
    tp, pp, dp, v = p.tp, p.pp, p.dp, p.virtual_stages
    sp = p.sequence_parallel
    all_chunks = scenario_chunks(sc)
    mine = [all_chunks[c * pp + stage] for c in range(v)]
    ranges = [(c.lo, c.hi) for c in mine]
    chunk_ends = [(c.embedding, c.head) for c in mine]
    first = any(c.embedding for c in mine)
    last = any(c.head for c in mine)
    n_layers = sum(e - s for s, e in ranges)
    lines: list[str] = []

    # Every block is identical: count one and multiply (the planner calls this thousands of
    # times); embeddings and head are counted as they are.
    layer = layer_param_tensors(m, t, tp)
    tensors = list(layer)
    ends: list[ParamTensor] = []
    if first:
        ends += embedding_param_tensors(m, t, tp)
    if last:
        ends += head_param_tensors(m, t, tp, pp)
    tensors += ends
    ms = _add_states(_scale_states(model_state_bytes(layer, t), n_layers),
                     model_state_bytes(ends, t))  # fmt: skip
    params_b, master_b, grads_b, states_b = (
        ms.parameters, ms.master_weights, ms.gradients, ms.optimizer_states,
    )  # fmt: skip
    lines.append(
        f"stage {stage}: {ms.params:,} parameters on each GPU ({n_layers} layers"
        f"{', embeddings' if first else ''}{', head' if last else ''}{f', TP {tp}' if tp > 1 else ''}),"
        f" {ms.trainable:,} trainable"
    )
    lines.append(f"  parameters       = {ms.params:,} x {prec.param} B = {_gb(params_b)}"
                 + (" (base weights NF4: 4 bits + block constants)" if t.peft.method == "qlora" else ""))  # fmt: skip
    if master_b:
        lines.append(
            f"  master weights   = {ms.trainable:,} trainable x {prec.master} B (fp32 copy) = {_gb(master_b)}"
        )
    lines.append(
        f"  gradients        = {ms.trainable:,} trainable x {prec.grad} B"
        + (f" + {prec.grad_accum} B (fp32 accumulation buffer)" if prec.grad_accum else "")
        + f" = {_gb(grads_b)}"
    )
    lines.append(
        f"  optimizer states = {t.optimizer} on {ms.trainable:,} trainable = {_gb(states_b)}"
    )

    # ZeRO over the data-parallel group (Rajbhandari et al. 2020 §5.1-5.3).
    z = p.zero_stage
    if z >= 1 and dp > 1:
        states_b, master_b = ceil(states_b / dp), ceil(master_b / dp)
        lines.append(f"  ZeRO-{z}: optimizer states and master weights / dp {dp}")
    if z >= 2 and dp > 1:
        grads_b = ceil(grads_b / dp)
        lines.append(f"  ZeRO-{z}: gradients / dp {dp}")
    if z >= 3 and dp > 1:
        params_b = ceil(params_b / dp)
        lines.append(f"  ZeRO-3: parameters / dp {dp}")

    host = 0
    if t.offload.optimizer:
        host = states_b + master_b
        lines.append(
            f"  offload: optimizer states and master weights ({_gb(host)}) live in host memory"
        )
        states_b = master_b = 0

    # Activations: bytes per chunk and micro-batch, walked through the rank's schedule.
    per_layer = layer_activation_bytes(m, t, tp, sp)
    saved = layer_saved_tensors(m, t, tp=tp, sequence_parallel=sp)
    full_layer = sum(x.bytes for x in saved)
    chunk_bytes: dict[int, int] = {}
    working_set: dict[int, int] = {}
    recompute_ws = 0
    if t.recompute == "full" and saved:
        recompute_ws = full_layer + layer_input_bytes(m, t, tp, sp)
    for k, ((lo, hi), (has_emb, has_head)) in enumerate(zip(ranges, chunk_ends, strict=True)):
        c = per_layer * (hi - lo)
        if has_emb:
            c += embedding_saved_bytes(m, t, tp if sp else 1)
            c -= frozen_input_savings(m, t, tp, sp)
        if has_head:
            c += head_saved_bytes(m, t, tp, sp)
        chunk_bytes[stage + k * pp] = c
        # Full recompute re-materialises one block at a time during backward, while the
        # gradient of that block's output (shaped like its input) is alive.
        working_set[stage + k * pp] = recompute_ws
    act_mb = sum(chunk_bytes.values())
    loss_bytes = {
        stage + k * pp: loss_transient_bytes(m, t, tp)
        for k, (_, has_head) in enumerate(chunk_ends)
        if has_head
    }
    states = rank_activation_states(
        schedule_name(sc), p.pp, sc.num_microbatches, p.virtual_stages, stage
    )
    walk_peak, saved_peak, in_flight = activation_peak_of_states(
        states, chunk_bytes, working_set, loss_bytes
    )
    loss_b = sum(loss_bytes.values())
    # The category shows saved activations plus the recompute working set; the loss working
    # memory is listed under buffers. The peak uses the walk, where the two never coexist.
    activations = saved_peak + recompute_ws
    if saved:
        lines.append(
            f"  activations per layer per micro-batch (b={t.micro_batch}, s={t.seq_len}, "
            f"h={m.hidden}): {per_layer:,} B"
            + (
                f" (recompute {t.recompute}: of {full_layer:,} B saved without it)"
                if t.recompute != "none"
                else ""
            )  # fmt: skip
        )
        for x in saved:
            lines.append(f"      {x.name:<42} {x.formula:<14} {x.bytes:>14,} B")
    else:
        lines.append("  activations: no gradient flows through the blocks: nothing is saved")
    sched_name = p.schedule if pp > 1 else "gradient accumulation"
    lines.append(
        f"  activations      = {act_mb:,} B per micro-batch x {in_flight:g} in flight at the "
        f"peak ({sched_name}, stage {stage})"
        + (
            f" + recompute working set {recompute_ws:,} B (one block + its output gradient)"
            if t.recompute == "full" and saved
            else ""
        )
        + f" = {_gb(activations)}"
    )
    if p.schedule == "pipedream" and pp > 1:
        extra = (pipedream_weight_versions(pp, stage) - 1) * params_b
        lines.append(f"  PipeDream weight stashing: {pipedream_weight_versions(pp, stage)} weight "
                     f"versions on stage {stage}: + {_gb(extra)} of parameters")  # fmt: skip
        params_b += extra

    # Buffers: transient working memory.
    buffers = 0
    buffers += loss_b
    opt_ws = optimizer_working_bytes(tensors, t, dp if z >= 1 else 1, trainable=ms.trainable)
    if opt_ws:
        what = "2 temporaries of the largest tensor" if t.optimizer in ("adam", "adamw") else ""
        if prec.master and not prec.grad_accum:
            what = "fp32 master gradients, 4 B x trainable" + (" + " + what if what else "")
        lines.append(f"  optimizer step working memory = {_gb(opt_ws)} ({what}; activations are "
                     "gone by then)")  # fmt: skip
    buffers += opt_ws
    if prec.weight_copy:
        buffers += ms.weight_copies
    if t.peft.method == "qlora":  # one dequantised 16-bit weight at a time
        buffers += 2 * max((x.numel for x in tensors if x.nf4), default=0)
    if z >= 3 and dp > 1:  # gathered 16-bit parameters of the current and prefetched layer
        live = 2 * (ms.params // max(n_layers, 1))
        if p.zero3_max_live_params:  # DeepSpeed releases parameters beyond its live cap
            live = min(live, p.zero3_max_live_params)
        buffers += prec.param * live
    if p.dp_mode == "naive" and dp > 1:
        # The lecture's data parallelism: GPU 0 gathers the other replicas' gradients.
        gather = (dp - 1) * grads_b
        lines.append(
            f"  naive DP: GPU 0 receives {dp - 1} gradient copies: + {_gb(gather)} of buffers"
        )
        buffers += gather
    if pp > 1:  # p2p send/receive buffers: b·s·h activations and gradients
        buffers += 2 * prec.act_mm * t.micro_batch * t.seq_len * m.hidden // (tp if sp else 1)
    lines.append(f"  buffers          = {_gb(buffers)} (loss working memory, casts, communication)")
    context = hw.cuda_context_bytes
    lines.append(f"  CUDA context     = {_gb(context)} ({hw.display_name} profile)")

    cats = {
        "parameters": params_b,
        "master_weights": master_b,
        "gradients": grads_b,
        "optimizer_states": states_b,
        "activations": activations,
        "cuda_context": context,
        "buffers": buffers,
    }
    static = sum(cats.values()) - activations - loss_b - opt_ws
    peak = static + max(walk_peak, opt_ws)
    if loss_b and walk_peak < activations + loss_b:
        lines.append("  the loss working memory is freed before recompute re-materialises a "
                     "block: the peak counts the larger of the two")  # fmt: skip
    if gradients_transient(sc):
        # One micro-batch, no DP, no PP: gradients are created during backward as the
        # activations are freed (PyTorch zero_grad(set_to_none=True)), so the two never peak
        # together: peak = rest + max(activations, gradients) (measured: simtrain.torchref.measure).
        # An fp32 accumulation buffer (bf16_fp32_grads) is persistent: only the 16-bit gradients
        # come and go.
        transient_b = grads_b - persistent_gradient_bytes(sc, ms.trainable)
        peak = static - transient_b + max(walk_peak, transient_b + opt_ws)
        lines.append("  gradients appear as backward frees activations (one micro-batch, no "
                     "DP/PP): peak counts the larger of the two")  # fmt: skip
    lines.append(f"  peak             = {_gb(peak)}; capacity {_gb(hw.memory_bytes)}")
    sm = StageMemory(
        stage=stage,
        gpus=tp * dp,
        layers=tuple(ranges),
        memory_bytes=tuple((c, cats[c]) for c in MEMORY_CATEGORIES),
        host_memory_bytes=host,
        peak_memory_bytes=peak,
        capacity_bytes=hw.memory_bytes,
        activation_bytes_per_microbatch=act_mb,
        microbatches_in_flight=in_flight,
        params=ms.params,
        trainable=ms.trainable,
        loss_bytes=tuple(sorted(loss_bytes.items())),
        optimizer_working_bytes=opt_ws,
        chunk_activation_bytes=tuple(sorted(chunk_bytes.items())),
        recompute_working_set_bytes=tuple(sorted(working_set.items())),
    )
    return sm, lines


def persistent_gradient_bytes(sc: Scenario, trainable: int) -> int:
    """The part of a stage's gradients that exists for the whole step even when the 16-bit
    gradients are transient: an fp32 accumulation buffer (``bf16_fp32_grads``)."""
    return trainable * PRECISIONS[sc.training.precision].grad_accum


def gradients_transient(sc: Scenario) -> bool:
    """Gradients live only from backward to the optimizer step when nothing accumulates or
    reduces them across micro-batches: pp = 1, dp = 1 and a single micro-batch."""
    p = sc.parallelism
    return p.pp == 1 and p.dp == 1 and sc.num_microbatches == 1


def estimate_memory(sc: Scenario) -> MemoryReport:
    """Memory per GPU of every pipeline stage of a scenario."""
    stages, lines = [], []
    for s in range(sc.parallelism.pp):
        sm, ln = stage_memory(sc, s)
        stages.append(sm)
        lines += ln
    return MemoryReport(
        scenario=sc.name,
        params=total_params(sc.model, sc.training),
        trainable_params=trainable_params(sc.model, sc.training),
        stages=tuple(stages),
        explain=tuple(lines),
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB ({n / 2**30:,.2f} GiB)"
