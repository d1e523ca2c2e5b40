"""Compute costs: FLOPs and bytes per transformer block and micro-batch, and their durations.

FLOPs count multiply-adds as 2 (Narayanan et al. 2021 §5.1, Eq. 3 derivation). A block's forward
matmuls are 2·b·s·h·(h + 2·kv + h + n_mlp·f) for the projections plus 4·b·s²·h for QKᵀ and
attention·V; for a 4h GeLU MLP with MHA this is 24·b·s·h² + 4·b·s²·h (formulas.md §1.2). The LM
head is 2·b·s·h·V. Backward is twice the forward (input gradient + weight gradient, each one
forward's worth for the projections; the attention core has no weights, so both its backward
matmuls are input gradients). Recompute replays the forward (full), the attention core
(selective; Korthikanti et al. 2022 §5: QKᵀ, scale-mask-softmax, attention dropout and
attention·V, Megatron-LM's checkpointed CoreAttention, megatron/model/transformer.py l.216-266
and l.366-380 at d898a8991d: its matmuls and, without flash attention, its passes over the
s x s scores), or every second projection matmul, the attention core when it is not flash, and
all the forward's element-wise passes (selective_op, torchtitan's per-op policy:
:mod:`costs.op_sac`).

Durations: matmul FLOPs / (dtype peak · efficiency.matmul), each linear layer's GEMM (M x K) @
(K x N) with its shape term 2·M·N·K·(L/M + L/N + L/K) FLOPs added (L =
``efficiency.gemm_edge_elements``, fitted per GPU on measured GEMM tables: :func:`gemm_edge`;
FLOP counts and MFU keep the model's FLOPs) + element-wise bytes /
(HBM bandwidth · efficiency.memory_bound); the optimizer step's bytes / (HBM bandwidth ·
efficiency.optimizer, which defaults to memory_bound). The efficiencies live in the hardware
profile; ``simtrain calibrate`` measures them on a device with this module's own byte counts
(:func:`block_elementwise_bytes`, :func:`head_elementwise_bytes`, :func:`optimizer_bytes_per_param`).
Element-wise backward bytes are :func:`elementwise_backward_factor` x the forward's (measured on
an H200: 1.1 in 16-bit, 1.25 in fp32).
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, replace

from simtrain.costs import op_sac
from simtrain.costs.activations import grad_flows_through_blocks, loss_value_bytes
from simtrain.costs.cp import ring_layer
from simtrain.costs.fp8 import cast_bytes, rowwise_rescale_bytes, tp_gathers_fp8
from simtrain.costs.moe import (
    megatron_expert_extra_bytes_per_token,
    moe_elementwise_bytes_per_token,
    moe_load,
    moe_mlp_flops,
    routed_expert_flops,
)
from simtrain.costs.offload import cpu_adam_ns
from simtrain.costs.params import base_trainable
from simtrain.layout.partition import LOSS_PARTS
from simtrain.layout.step import resolve
from simtrain.spec.hardware import FlashClass, HardwareProfile
from simtrain.spec.model import ModelSpec, tp_split_shape
from simtrain.spec.precision import OPTIMIZER_STATES, Precision
from simtrain.spec.scenario import (
    MEGATRON_KERNEL_LOSSES,
    PYTORCH_LOSSES,
    ParallelSpec,
    Scenario,
    TrainingSpec,
    cp_rank_training,
    loss_vocab_shards,
    microbatches,
    trained_mtp_modules,
)


@dataclass(frozen=True, slots=True)
class BlockFlops:
    """FLOPs of one transformer block for one micro-batch on one TP rank."""

    forward: float  # all matmuls of the forward
    attention_core: float  # the QKᵀ and attention·V part of ``forward``
    input_grad: float  # backward matmuls producing activation gradients (I)
    weight_grad: float  # backward matmuls producing weight gradients (W)
    elementwise_bytes_fwd: float  # memory-bound traffic of the forward (norms, GeLU, adds, ...)
    elementwise_bytes_bwd: float = 0.0  # ... and of the backward (0 when no gradient flows)
    projections: float = 0.0  # the base linear layers' part of ``forward`` (FP8 GEMMs under FP8)
    # the routed experts' grouped GEMMs in ``forward`` (and in each of input_grad and
    # weight_grad when they are computed): their own kernel class, efficiency.grouped_matmul
    grouped: float = 0.0
    # Σ FLOPs·(1/M + 1/N + 1/K) of the forward's dense linear GEMMs (:func:`gemm_edge`); the
    # same for their input- and weight-gradient GEMMs, whose (M, N, K) permute the forward's
    projections_edge: float = 0.0


def _mlp_mats(m: ModelSpec) -> int:
    return 3 if m.mlp == "swiglu" else 2


def block_flops(m: ModelSpec, t: TrainingSpec, tp: int = 1, moe: bool | None = None,
                load: float = 1.0, fused: tuple[bool, bool] = (True, True),
                sp: bool = False, eager: bool = False) -> BlockFlops:  # fmt: skip
    """FLOPs of one block per micro-batch (see module docstring); frozen weights skip their
    weight-gradient matmuls, LoRA adds its two thin matmuls per target (Hu et al. 2021 §4.1).
    An MoE block (``moe``: default, every block of a model with experts) has the router and
    k routed experts (times the busiest EP rank's ``load``) plus the shared experts in place
    of the MLP (:func:`costs.moe.moe_mlp_flops`). Q and the attention output are
    heads·head_dim wide (``ModelSpec.q_dim``, h unless ``head_size`` is set). ``fused``: the
    runtime's (``fused_qkv``, ``fused_gate_up``): which GEMMs carry the shape term
    (:func:`dense_linear_gemms`). ``sp``: sequence parallelism, whose norms, dropouts and
    residual adds run on the rank's s/t tokens (:func:`block_elementwise_bytes`)."""
    b = t.micro_batch
    s = t.seq_len_effective
    s_kv = t.kv_len
    h, kv, f = m.hidden, m.kv_dim, m.ffn_hidden
    q = m.q_dim
    attn = h * (q + 2 * kv) + q * h
    core = 4 * b * s * s_kv * q / tp
    if m.is_mla:  # DeepSeek-V2 §2.1: latent projections; Q·K over nope + rope, A·V over v
        attn = sum(fi * fo for fi, fo in m.attention_shapes().values())
        core = 2 * b * s * s_kv * (q + m.v_dim) / tp
    grouped = 0.0
    if m.is_moe and moe is not False:
        proj = 2 * b * s * attn / tp + moe_mlp_flops(m, b * s, tp, load)
        grouped = routed_expert_flops(m, b * s, tp, load)
    else:
        proj = 2 * b * s * (attn + _mlp_mats(m) * h * f) / tp
    full = base_trainable(t.peft.method, t.peft.phase)
    lora = 0.0
    lora_w = 0.0
    if t.peft.method in ("lora", "qlora"):
        shapes = m.linear_weight_shapes()
        for mod in t.peft.target_modules:
            if mod in shapes:
                # A split like the base input, B like its output (costs.params): one TP rank's
                rows, cols = tp_split_shape(mod, *shapes[mod], tp)
                lora += 2 * b * s * t.peft.rank * (rows + cols)
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
    ew, ew_bwd = block_elementwise_bytes(m, t, tp, m.is_moe and moe is not False, load, sp,
                                         eager)  # fmt: skip
    if t.peft.method == "qlora":
        # QLoRA dequantises every NF4 weight to 16 bits for each matmul (Dettmers et al. 2023
        # §3): read 0.5 B and write 2 B per weight, in the forward and again in the backward.
        linear = sum(fi * fo for fi, fo in m.linear_weight_shapes().values()) / tp
        ew += 2.5 * linear
        ew_bwd += 2.5 * linear  # the same dequantisation again: no backward kernel of its own
    if not grad_flows_through_blocks(t):
        ew_bwd = 0.0
    is_moe = m.is_moe and moe is not False
    gemms = dense_linear_gemms(m, tp, is_moe, fused).values()
    edge = sum(gemm_edge(b * s, n, k) for n, k in gemms)
    if is_moe:  # the router: replicated, on the rank's T/tp tokens (costs.moe.moe_mlp_flops)
        edge += gemm_edge(b * s // tp, m.num_experts, h)
    return BlockFlops(fwd, core, input_grad, weight_grad, ew, ew_bwd, proj, grouped, edge)


def gemm_edge(m_rows: int, n: int, k: int) -> float:
    """FLOPs·(1/M + 1/N + 1/K) of an (M x K) @ (K x N) GEMM: times ``efficiency.gemm_edge_elements``
    (L), the FLOPs its shape adds to 2·M·N·K, so that it runs at the large-GEMM rate x
    1 / (1 + L/M + L/N + L/K). Symmetric in M, N and K, so a linear layer's forward,
    input-gradient and weight-gradient GEMMs (the same three sizes permuted) add the same.
    The form is fitted on measured GEMM tables (hardware profiles name theirs). 0 for an empty
    GEMM (a width that TP splits to nothing)."""
    if m_rows <= 0 or n <= 0 or k <= 0:
        return 0.0
    return 2.0 * m_rows * n * k * (1 / m_rows + 1 / n + 1 / k)


#: FlashAttention's backward FLOPs over its forward's: it recomputes Q·Kᵀ from the saved
#: statistics (FlashAttention-2, Dao 2023, §3.1.2; SimuMax's kernel benchmark counts 5 vs 2 x
#: b·s²·H·(d_qk + d_v): simu_tools/efficency_test/test_fa_efficiency.py l.633-637 at 4dcaae5).
FLASH_BACKWARD_FLOPS = 2.5
#: The dtypes FlashAttention kernels run in (flash-attention README, "Datatype fp16 and bf16";
#: PyTorch's flash SDPA backend likewise): an fp32 core stays GEMM FLOPs.
FLASH_DTYPES = ("bf16", "fp16")


def window_keys(s: int, window: int) -> float:
    """The keys a query of an s-token causal call sees on average with a sliding window of
    ``window`` keys (0: none): s/2 without one (the causal half), w - w²/(2s) with w < s (each
    query sees min(i + 1, w) keys, w·s - w²/2 pairs in all, continuous as the causal half's
    s²/2 is); s/2 again from w >= s on. (transformers' flash-attention path passes
    window_size=(w, w), which lets a query see w + 1 keys, its eager and SDPA masks w:
    transformers issues #29623, #39408; under 1 % apart from w = 128 on.)"""
    if not window or window >= s:
        return s / 2
    return window - window * window / (2 * s)


def flash_kernel_flops(core: float, t: TrainingSpec, window: int = 0) -> tuple[float, float]:
    """(forward, backward) FLOPs causal FlashAttention kernels do for an attention core of
    ``core`` FLOPs counted in full (:func:`block_flops`: 4·b·s·s_kv·H·d over ``t``'s s queries):
    the forward skips the masked half of the whole sequence's keys (s·cp_shards of them; with
    CP each rank's query chunks see half of it on average) but none of a prefix-tuning
    prefix's (``TrainingSpec.prefix_len``, extra keys every query sees); with packed sequences
    the masked half of each sample's (``TrainingSpec.causal_len``, ``kv_len``: the sample's
    length, so the core is the samples' l x l blocks, a share l/s of the row's); a sliding ``window``
    (no prefix, CP only as the all-to-all: spec.scenario refuses the others) keeps
    :func:`window_keys` of the sequence's s·cp_shards keys;
    the backward does :data:`FLASH_BACKWARD_FLOPS` x the forward's."""
    if window:
        s = t.seq_len_effective * t.cp_shards
        fwd = core * window_keys(s, window) / s
    else:
        fwd = core * (1 - t.causal_len / 2 / t.kv_len)
    return fwd, FLASH_BACKWARD_FLOPS * fwd


#: The head dim of the shipped classes' measurements (the FlashAttention-3 paper's charts,
#: ``simtrain calibrate``'s sweep; SimuMax's B200 sweep mixes 128-wide heads with MLA's Q·K of
#: 192, whose class has D = 0): a class's rates are at this head dim. (The factor takes the Q·K
#: head dim, which is also the V head dim of every model whose head is below it.)
REFERENCE_HEAD_DIM = 128


def head_dim_factor(edge: float, head_dim: int) -> float:
    """A FlashAttention call's time at head dim d over its time at :data:`REFERENCE_HEAD_DIM`,
    per FLOP: (1 + D / d) / (1 + D / d_ref) below the reference, 1 at and above it (not
    measured there; ``costs.attention_shape``)."""
    d = min(head_dim, REFERENCE_HEAD_DIM)
    return (1 + edge / d) / (1 + edge / REFERENCE_HEAD_DIM)


def edge_factor(edge: float, x: float) -> float:
    """1 + edge / x: a FlashAttention class's time factor for one of its edges (R over the query
    rows b·H·s, S over the query length s; ``costs.attention_shape``)."""
    return 1 + edge / x


def flash_time_factor(rows_edge: float, rows: float, seq_edge: float, seq: float,
                      head_dim_edge: float = 0.0, head_dim: int = REFERENCE_HEAD_DIM) -> float:  # fmt: skip
    """A FlashAttention call's time over that of its causal FLOPs at the class's unbounded
    rate: (1 + R / (b·H·s)) · (1 + S / s') · ``head_dim_factor``(D, d), with b·H·s the query
    rows its thread blocks share out, s' the call's query length, plus twice a prefix every
    query sees, and d the Q·K head dim (``flash_core``; ``costs.attention_shape``)."""
    return (edge_factor(rows_edge, rows) * edge_factor(seq_edge, seq)
            * head_dim_factor(head_dim_edge, head_dim))  # fmt: skip


@dataclass(frozen=True, slots=True)
class FlashCore:
    """A chunk's attention core as FlashAttention kernels: the FLOPs it takes out of the GEMM
    class (the forward's core, the input gradient's 2 x core) and the kernels' times."""

    forward_flops: float
    backward_flops: float
    forward_ns: float
    backward_ns: float


#: No FlashAttention class: nothing taken out of the GEMM class, no kernel time.
NO_FLASH = FlashCore(0.0, 0.0, 0.0, 0.0)


def flash_class_for(sc: Scenario, dtype: str | None = None) -> FlashClass | str:
    """The FlashAttention class that prices a flash model's attention core in ``dtype`` (the
    scenario precision's compute dtype when not given): the hardware profile's class of the
    kernel the runtime calls; else why the core is priced as GEMM FLOPs (no flash attention, a
    dtype FlashAttention does not run in, no class of the kernel on this GPU).
    :func:`flash_core`'s decision, and ``simtrain run``'s line."""
    kernel = sc.runtime.attention_kernel
    dtype = dtype or sc.training.precision_spec.compute_dtype
    if not sc.model.flash_attention:
        return "no flash attention"
    if dtype not in FLASH_DTYPES:
        return f"{dtype}: FlashAttention runs in 16-bit"
    return sc.hardware.flash_class(kernel) or f"{kernel}: no class in {sc.hardware.name}"


def flash_core(sc: Scenario, t: TrainingSpec, bf: BlockFlops, dtype: str, grad: bool,
               sliding: float = 0.0) -> FlashCore | None:  # fmt: skip
    """The attention core of ``bf`` (one GPU's blocks of a chunk, ``t`` its s/cp tokens) priced
    as causal FlashAttention kernels where the model uses flash attention and the profile has
    the class of the kernel the runtime calls (``attention_kernels.<runtime
    attention_kernel>``), in a 16-bit dtype: each direction's :func:`flash_kernel_flops` /
    (peak · e) · :func:`flash_time_factor`, rows = b · (heads / tp) · s, d the model's Q·K
    head dim (``costs.attention_shape``); the ``sliding`` share of the chunk's layers with the
    model's sliding window. None: the GEMM class prices it."""
    m, hw = sc.model, sc.hardware
    cls = flash_class_for(sc, dtype)
    core = bf.attention_core
    if isinstance(cls, str) or not core:
        return None
    s = t.seq_len_effective
    rows = t.micro_batch * s * m.heads / sc.parallelism.tp
    if sc.cp_all_to_all:  # one call of all s queries, heads/cp (costs.cp)
        s *= t.cp_shards
    peak = hw.compute_peak(dtype)
    d = m.head_dim
    fwd = bwd = 0.0
    for share, window in ((1.0 - sliding, 0), (sliding, m.sliding_window)):
        if share <= 0:
            continue
        # The short-sequence edge is fixed work per query block over the key blocks it sees:
        # s/2 of them on average in a causal call, plus all of a prefix-tuning prefix's P, so
        # the call's factor is 1 + S / (s + 2P) (FLOPs ∝ s·(s/2 + P), fixed work ∝ s·S/2);
        # with a window, 1 + S / (2·window_keys). ``t`` is the rank's s/cp tokens under context
        # parallelism, each ring step its own call over as many keys (costs.cp): the edge is
        # of s/cp; the all-to-all's one call is of s (prefix tuning with cp > 1 is refused, a
        # window with the ring).
        seq = (2 * window_keys(s, window) if window
               else t.packed_sample_len or s + 2 * t.prefix_len)  # fmt: skip
        f_fl, b_fl = flash_kernel_flops(share * core, t, window)
        fwd += 1e9 * f_fl / (peak * cls.forward) * flash_time_factor(
            cls.forward_rows_edge, rows, cls.forward_seq_edge, seq, cls.forward_head_dim_edge,
            d)  # fmt: skip
        bwd += 1e9 * b_fl / (peak * cls.backward) * flash_time_factor(
            cls.backward_rows_edge, rows, cls.backward_seq_edge, seq,
            cls.backward_head_dim_edge, d)  # fmt: skip
    return FlashCore(core, 2 * core if grad else 0.0, fwd, bwd if grad else 0.0)


def sliding_share(m: ModelSpec, layers: int, lo: int | None) -> float:
    """The share of a chunk's ``layers`` blocks (from block ``lo``; None: the model's share)
    that attend through the sliding window (``ModelSpec.sliding_layers_in``)."""
    if not m.sliding_window or not layers:
        return 0.0
    if lo is None:
        return m.sliding_layers_in(0, m.layers) / m.layers
    return m.sliding_layers_in(lo, lo + layers) / layers


def window_core_saving(m: ModelSpec, t: TrainingSpec, sliding: float) -> float:
    """The share of a chunk's counted attention core (:func:`block_flops`' full s x s_kv) that
    its ``sliding`` share of windowed layers does not compute: sliding x (1 - window_keys /
    (s/2)), the keys a windowed query sees against a causal one's; 0 without a window."""
    if not sliding:
        return 0.0
    s = t.seq_len_effective * t.cp_shards  # the whole sequence's keys (CP: the all-to-all's)
    return sliding * (1 - window_keys(s, m.sliding_window) / (s / 2))


def fused_linear_names(fused_qkv: bool, fused_gate_up: bool) -> dict[str, str]:
    """Linear name -> the fused module it belongs to where the runtime fuses it (runtime
    ``fused_qkv``: Q, K and V as ``qkv``; ``fused_gate_up``: gate and up as ``fc1``; Megatron's
    ``linear_qkv`` / ``linear_fc1``, nanotron's ``qkv_proj`` / ``gate_up_proj``)."""
    return {**({"q": "qkv", "k": "qkv", "v": "qkv"} if fused_qkv else {}),
            **({"gate": "fc1", "up": "fc1"} if fused_gate_up else {})}  # fmt: skip


def dense_linear_gemms(m: ModelSpec, tp: int, moe: bool = False,
                       fused: tuple[bool, bool] = (True, True)) -> dict[str, tuple[int, int]]:  # fmt: skip
    """(N, K) of each dense linear GEMM of a block on one TP rank, by name ("qkv" and "fc1" for
    the fused ones; M is the micro-batch's tokens; :func:`spec.model.tp_split_shape`): Q, K, V, O and the MLP's, Q, K and V as one
    GEMM with ``fused[0]`` and gate and up as one with ``fused[1]`` (runtime ``fused_qkv``,
    ``fused_gate_up``: Megatron's ``linear_qkv`` and ``linear_fc1``). Of an MoE block (``moe``)
    the attention's and the shared experts' (the routed experts' are grouped GEMMs, their own
    kernel class; the router runs on fewer tokens: :func:`block_flops`). Not here: LoRA's and
    adapters' rank-r GEMMs, Qwen2-MoE's h x 1 shared-expert gate (a GEMV)."""
    shapes = m.attention_shapes() if moe else m.linear_weight_shapes()
    if moe and m.shared_experts:
        shapes = {**shapes, **m.mlp_shapes(m.shared_experts * m.shared_ffn)}
    groups = fused_linear_names(*fused)
    out: dict[str, tuple[int, int]] = {}
    for name, (fi, fo) in shapes.items():
        k, n = tp_split_shape(name, fi, fo, tp)
        key = groups.get(name, name)
        pn, _ = out.get(key, (0, k))
        out[key] = (pn + n, k)
    return out


# Element-wise backward time / forward time, by the activations' bytes per element. Measured
# with PyTorch's own kernels (layer_norm, tanh GeLU, masked softmax, dropout, residual adds) on
# an NVIDIA H200, torch 2.11 (benchmarks/elementwise_split.py, 2026-11-28; four layer shapes
# from GPT-2 small to GPT-3 175B at tp 8, median of 20): 1.00-1.12 in bf16, 1.22-1.32 in fp32.
# Counting the kernels op by op gives ~1.3 (backward kernels read one tensor more than their
# forward but run once). The value was 2 until this measurement; the efficiencies in hardware/
# were re-fitted with the measured factors on the records their comments name.
ELEMENTWISE_BACKWARD_FACTOR = {2: 1.1, 4: 1.25}


def elementwise_backward_factor(bytes_per_element: int) -> float:
    """:data:`ELEMENTWISE_BACKWARD_FACTOR` for 16-bit (or narrower) or 32-bit activations."""
    return ELEMENTWISE_BACKWARD_FACTOR[2 if bytes_per_element <= 2 else 4]


#: Element accesses per element that :func:`block_elementwise_bytes` counts for each op its fused
#: (one-kernel) form runs: a norm and rotary read and write (2), SwiGLU's gate reads two f-wide
#: inputs and writes one (3), in the activation dtype; x ``elementwise_backward_factor`` backward.
FUSED_OP_ACCESSES = {"rmsnorm": 2, "rotary": 2, "swiglu": 3}


def block_elementwise_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1, moe: bool = False,
                            load: float = 1.0, sp: bool = False,
                            eager: bool = False) -> tuple[float, float]:  # fmt: skip
    """(forward, backward) memory-bound bytes of one block for one micro-batch, counted from the
    ops (an estimate, not a published figure; e = activation bytes per element, per token):
    two norms (read + write h; one with ``shared_norm``), two residual adds (2 reads + 1 write of h), the GeLU (read +
    write f, as ReLU and a fused squared ReLU; SwiGLU 1.5f), rotary on the values
    ``ModelSpec.rotary_values`` gives, dropout (read, write, 1-byte mask) and without
    flash attention scale, mask and softmax over the s x s scores (4 per score, + 2.5 with
    attention dropout). Backward: :func:`elementwise_backward_factor` x forward. An MoE block
    (``moe``) has :func:`costs.moe.moe_elementwise_bytes_per_token` in place of the MLP's
    activation. The norms, residual adds and dropouts sit outside the tensor-parallel region:
    every TP rank repeats them on all s tokens, or with sequence parallelism (``sp``) on its
    own s/t (Korthikanti et al. 2022 §4.2.2: "the layer-norm and dropout ... are independent
    along the sequence dimension"; Megatron-LM d898a8991d megatron/model/transformer.py: the
    hidden states between the row- and column-parallel linears are [s/t, b, h]). ``eager``:
    plus :func:`eager_elementwise_bytes_per_token` (runtime ``eager_elementwise``)."""
    b = t.micro_batch
    s = t.seq_len_effective
    h, f = m.hidden, m.ffn_hidden
    e = t.precision_spec.act_mm
    # (a LayerNorm's accesses are an RMSNorm's; one norm with a shared_norm)
    norms = m.norms_per_block * FUSED_OP_ACCESSES["rmsnorm"] * h
    outside = norms + 2 * 3 * h + (2 * 2.5 * h if m.dropout > 0 else 0.0)
    per_token = outside / (tp if sp else 1)
    if moe:
        per_token += moe_elementwise_bytes_per_token(m, e, tp, load) / e
    else:  # the activation (GeLU, ReLU, squared ReLU fused) reads and writes f; SwiGLU's gate
        # reads two f-wide inputs and writes one
        per_token += (FUSED_OP_ACCESSES["swiglu"] if m.mlp == "swiglu" else 2) * f / tp
    per_token += FUSED_OP_ACCESSES["rotary"] * m.rotary_values(tp)  # (ModelSpec.rotary_values)
    if m.qk_norm:  # the q and k norms (none on MLA: spec.model refuses them): q and k read
        # and written once
        per_token += FUSED_OP_ACCESSES["rmsnorm"] * (m.q_dim + m.kv_dim) / tp
    fwd = e * b * s * per_token + attention_core_elementwise_bytes(m, t, tp)
    bwd = elementwise_backward_factor(e) * fwd
    if eager:
        extra_fwd, extra_bwd = eager_elementwise_bytes_per_token(m, e, tp, sp, moe)
        fwd, bwd = fwd + b * s * extra_fwd, bwd + b * s * extra_bwd
    return fwd, bwd


def eager_op_bytes(op: str, e: int) -> tuple[int, int]:
    """(forward, backward) bytes per element that one op moves as PyTorch eager kernels, as
    torchtitan 9dec370a writes it (``e``: the activation bytes; fp32 temporaries 4 B, casts to
    and from fp32 2e + 8 B, none when e = 4), every kernel reading and writing whole tensors:

    - ``rmsnorm`` (``models/norms.py`` RMSNorm: ``self._norm(x.float()).type_as(x) * self.weight``,
      ``x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)``): forward the casts, pow (8),
      mean (4), x * rsqrt (8), the weight product (2e): 2e + 20 + casts; backward, per aten
      op, the weight's two products and their sum over tokens (3e + 2e + e), then in fp32 the
      grads of x * rsqrt (12 + 8), the row sum (4), mean's division (8), pow's
      ``grad * 2 * x.pow(1)`` (8 + 8 + 12) and the sum of x's two grads (12): 6e + 72 + casts;
    - ``rotary`` (``models/llama/model.py`` apply_rotary_emb: the fp32 complex product between
      the casts): 8 + casts each way, per element of q and k;
    - ``swiglu`` (``FeedForward``: ``F.silu(self.w1(x)) * self.w3(x)``): silu and the product,
      5e forward, 9e backward (two products and ``silu_backward``), per f-element.
    tests/test_eager_elementwise.py counts these bytes op by op with TorchDispatchMode on the
    same code."""
    cast = 2 * e + 8 if e < 4 else 0
    return {
        "rmsnorm": (cast + 20 + 2 * e, cast + 72 + 6 * e),
        "rotary": (cast + 8, cast + 8),
        "swiglu": (5 * e, 9 * e),
    }[op]


def eager_elementwise_bytes_per_token(m: ModelSpec, e: int, tp: int = 1, sp: bool = False,
                                      moe: bool = False) -> tuple[float, float]:  # fmt: skip
    """(forward, backward) bytes per token that one block's element-wise ops move beyond
    :func:`block_elementwise_bytes`' fused count (:data:`FUSED_OP_ACCESSES`) when they run as
    eager kernels (:func:`eager_op_bytes`; runtime ``eager_elementwise``): two RMSNorms over h (one shared)
    (outside the TP region: /tp with sequence parallelism), q / k norms over (q_dim + kv_dim)/tp,
    rotary over ``ModelSpec.rotary_values``,
    SwiGLU over f/t (not a block's routed experts), for what the model has. Versions: torchtitan
    before 3b39d7ab0 (2025-03-19) ran this RMSNorm; after it nn.RMSNorm, whose eager
    ``F.rms_norm`` runs the same chain up to torch 2.8 and one fused CUDA kernel from 2.9."""
    k = elementwise_backward_factor(e)
    block_norms = m.norms_per_block * m.hidden / (tp if sp else 1) if m.norm == "rmsnorm" else 0
    # the q and k norms, RMSNorms whatever the block's norm (torchtitan Qwen3's q_norm, k_norm:
    # nn.RMSNorm over each head), over the rank's heads
    qk_norms = (m.q_dim + m.kv_dim) / tp if m.qk_norm else 0
    widths = {
        "rmsnorm": block_norms + qk_norms,
        "rotary": m.rotary_values(tp),
        "swiglu": m.ffn_hidden / tp if m.mlp == "swiglu" and not moe else 0,
    }
    fwd = bwd = 0.0
    for op, n in widths.items():
        eager_f, eager_b = eager_op_bytes(op, e)
        fwd += n * (eager_f - FUSED_OP_ACCESSES[op] * e)
        bwd += n * (eager_b - k * FUSED_OP_ACCESSES[op] * e)
    return fwd, bwd


def attention_core_elementwise_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> float:
    """Memory-bound bytes of one block's attention core for one micro-batch, without flash
    attention: scale, mask and softmax over the s x s scores (4 per score), the attention
    dropout (+ 2.5) and soft-capping (+ 6: x/c, tanh, x·c, each a read and a write, as
    transformers 4.46 Gemma2's eager_attention_forward runs them: counted from the code, not
    measured), in the activation dtype, over the GPU's heads/t; 0 with flash attention (which
    caps in the kernel: flash-attn's softcap)."""
    if m.flash_attention:
        return 0.0
    e = t.precision_spec.act_mm
    # (+ soft-capping's division, tanh and product, each a read and a write of the scores)
    per_score = 4 + (2.5 if m.drops_attention else 0) + (6 if m.attention_softcap else 0)
    return e * t.micro_batch * m.heads * t.seq_len_effective * t.kv_len * per_score / tp


def head_elementwise_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> tuple[float, float]:
    """(forward, backward) memory-bound bytes of the loss over the logits, per micro-batch.
    Standard: fp32 cast, log-softmax and loss, 4 x 4 B per logit (4 x the logits' bytes
    without ``loss_upcast``); backward :func:`elementwise_backward_factor` x that. Fused: one read of the logits forward,
    one read and one write of a logit backward, in the matmul dtype. Gathered: the standard
    loss over the whole vocabulary on every TP rank. vocab_parallel (Megatron's, in place):
    forward the ``.float()`` cast (e + 4; none in fp32), max (4), ``sub_`` (8), ``exp`` (8),
    sum (4) and ``div_`` (8); backward ``mul_`` (8) and autograd's cast back (4 + e; none in
    fp32) (core/tensor_parallel/cross_entropy.py, d98e8a64); sharded (nanotron's) the same
    passes, its subtraction out of place (8 B either way; tensor_parallel/functional.py
    _ShardedCrossEntropy at 2411b022), the cast in nanotron's ``cast_to_fp32`` block before
    it (:func:`loss_part_bytes` parts it from the loss). te: two reads of the logits and
    one in-place write forward (online_softmax_kernel, cross_entropy_kernel), one in-place
    scaling backward (element_mul_kernel; TransformerEngine triton/cross_entropy.py)."""
    e = t.precision_spec.act_mm
    cap, cap_bwd = softcap_bytes(m, t, tp)
    logits = t.micro_batch * t.seq_len_effective * m.vocab / tp
    if t.cross_entropy == "fused":
        fwd = e * logits
        return cap + fwd, cap_bwd + 2 * fwd
    if t.cross_entropy in MEGATRON_KERNEL_LOSSES:
        cast = logits_cast_bytes(e)
        return cap + (cast + 32) * logits, cap_bwd + (8 + cast) * logits
    if t.cross_entropy == "te":
        return cap + 3 * e * logits, cap_bwd + 2 * e * logits
    lb = loss_value_bytes(t)  # the fp32 copy's 4 B, or without loss_upcast the logits' own
    fwd = 4 * lb * t.micro_batch * t.seq_len_effective * m.vocab / loss_vocab_shards(
        t.cross_entropy, tp)  # fmt: skip
    return cap + fwd, cap_bwd + elementwise_backward_factor(lb) * fwd


def logits_cast_bytes(e: int) -> int:
    """Bytes per logit of its cast to fp32, ``x.float()`` (Megatron's vocab_parallel loss,
    nanotron's ``cast_to_fp32`` block): a read of the e-byte logit and a write of its 4-byte
    copy, e + 4; none in fp32, where ``.float()`` returns its input. Its backward casts the
    gradient back, the same bytes."""
    return 0 if e >= 4 else e + 4


def softcap_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> tuple[float, float]:
    """(forward, backward) bytes of Gemma-2's final c·tanh(logits/c) (0 without
    ``logit_softcap``): three passes (read + write) over the logits' shard
    (Gemma2ForCausalLM.forward, transformers 4.46: logits / cap, tanh, * cap; counted from the
    code, not measured); x :func:`elementwise_backward_factor` backward."""
    e = t.precision_spec.act_mm
    cap = (3 * 2 * e * t.micro_batch * t.seq_len_effective * m.vocab
           / loss_vocab_shards(t.cross_entropy, tp) if m.logit_softcap else 0)  # fmt: skip
    return cap, elementwise_backward_factor(e) * cap


def loss_part_bytes(m: ModelSpec, t: TrainingSpec, tp: int,
                    parts: tuple[str, ...]) -> tuple[float, float]:  # fmt: skip
    """(forward, backward) bytes of the loss's ``parts`` ("fp32 cast", "loss") on a chunk that
    holds them apart from the LM head (nanotron's ``cast_to_fp32`` and ``loss`` PipelineBlocks,
    models/llama.py l.899 and l.1044 at 2411b022). The cast, ``x.float()``, reads each 16-bit
    logit of the shard and writes its fp32 copy, and its backward casts the fp32 gradient
    back: e + 4 B each way (none in fp32 training, where it returns its input). The loss:
    :func:`head_elementwise_bytes` without the soft-capping, less that cast where the head's
    count holds one (a PyTorch loss that upcasts, ``loss_upcast``, and the Megatron kernel's
    ``.float()``, ``MEGATRON_KERNEL_LOSSES``), so that the two parts add up to the head's own
    count then."""
    f, b = head_elementwise_bytes(m, t, tp)
    cap_f, cap_b = softcap_bytes(m, t, tp)
    f, b = f - cap_f, b - cap_b
    e = t.precision_spec.act_mm
    logits = t.micro_batch * t.seq_len_effective * m.vocab / loss_vocab_shards(t.cross_entropy, tp)
    cast = logits_cast_bytes(e) * logits
    counted = (t.cross_entropy in PYTORCH_LOSSES and t.loss_upcast
               or t.cross_entropy in MEGATRON_KERNEL_LOSSES)  # fmt: skip
    inside = cast if counted else 0.0  # the cast the head's count already holds
    fwd = (cast if "fp32 cast" in parts else 0.0) + (f - inside if "loss" in parts else 0.0)
    bwd = (cast if "fp32 cast" in parts else 0.0) + (b - inside if "loss" in parts else 0.0)
    return fwd, bwd


def head_edge(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> float:
    """:func:`gemm_edge` of the LM head's GEMM (M = b·s tokens, N = V/t, K = h)."""
    return gemm_edge(t.micro_batch * t.seq_len_effective, max(1, m.vocab // tp), m.hidden)


#: Element-wise accesses of b·s·h values per token an embedding lookup makes: the write of its
#: output and the read and add of the positions (the first stage's, and each MTP module's of
#: its shifted tokens).
EMBEDDING_ACCESSES = 3


@dataclass(frozen=True, slots=True)
class MtpCosts:
    """One micro-batch's work of the multi-token-prediction modules on one GPU beyond their
    transformer blocks (:func:`mtp_costs`): FLOPs per pass, the GEMM shape term (the same for
    each pass) and the element-wise bytes forward and backward."""

    forward: float = 0.0
    input_grad: float = 0.0
    weight_grad: float = 0.0
    edge: float = 0.0
    elementwise_fwd: float = 0.0
    elementwise_bwd: float = 0.0


def mtp_costs(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False) -> MtpCosts:
    """What the multi-token-prediction modules the step trains (``trained_mtp_modules``: full
    training only, so every pass runs) add to the head's chunk beyond their transformer blocks
    (blocks of the chunk, ``layout.step``). Per module (DeepSeek-V3 §2.2 Eq. 21-23;
    Megatron-Core ``MultiTokenPredictionLayer`` at d98e8a64: enorm, hnorm, eh_proj a
    column-parallel 2h -> h linear, the block, its final_layernorm; the shared output layer and
    the loss on its tokens in the post-process): eh_proj's GEMMs, 2·b·s·2h·h/t each, the output
    layer's and the loss's work once more (:func:`head_flops`, :func:`head_edge`,
    :func:`head_elementwise_bytes`), the embedding lookup of the shifted tokens
    (:data:`EMBEDDING_ACCESSES`), and, on s/t tokens under sequence parallelism, three norms
    (``FUSED_OP_ACCESSES``) and the concatenation of the two normed inputs (a read and a write
    of 2h)."""
    n = trained_mtp_modules(m, t)
    if not n:
        return MtpCosts()
    tokens = t.micro_batch * t.seq_len_effective
    h = m.hidden
    eh = 2.0 * tokens * 2 * h * (h / tp)
    hf, hi, hw = head_flops(m, t, tp)
    head_fwd, head_bwd = head_elementwise_bytes(m, t, tp)
    e = t.precision_spec.act_mm
    div = tp if sp else 1
    own = e * tokens * h * (EMBEDDING_ACCESSES + (3 * FUSED_OP_ACCESSES["rmsnorm"] + 2 * 2) / div)
    edge = gemm_edge(tokens, max(1, h // tp), 2 * h) + head_edge(m, t, tp)
    return MtpCosts(n * (eh + hf), n * (eh + hi), n * (eh + hw), n * edge, n * (own + head_fwd),
                    n * (elementwise_backward_factor(e) * own + head_bwd))  # fmt: skip


def head_flops(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> tuple[float, float, float]:
    """(forward, input-grad, weight-grad) FLOPs of the LM head: 2·b·s·h·V/t each."""
    s = t.seq_len_effective
    f = 2 * t.micro_batch * s * m.hidden * m.vocab / tp
    full = base_trainable(t.peft.method, t.peft.phase)
    probe = not grad_flows_through_blocks(t)
    return f, (f if grad_flows_through_blocks(t) else 0.0), (f if full or probe else 0.0)


# Published FLOP conventions (formulas.md §1), for comparing with each source like with like.
# ``model_flops_per_step`` equals Eq. 7 and :func:`hardware_flops_per_step` with full
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


def nanotron_flops(sc: Scenario) -> float:
    """nanotron ``models/llama.py: get_flops``: 3 × forward (Q, K/V, O, SwiGLU MLP, QKᵀ and
    attention·V over the full s², LM head), per step."""
    m, t = sc.model, sc.training
    B, s, L, h, f = t.global_batch, t.seq_len, m.layers, m.hidden, m.ffn_hidden
    d = h // m.heads
    fwd = (2 * L * B * s * h * m.heads * d + 2 * L * B * s * h * 2 * m.kv_heads * d
           + 2 * L * B * m.heads * s * d * s * 2 + 2 * L * B * m.heads * s * d * h
           + 4 * L * B * s * h * f + 2 * L * B * s * f * h + 2 * B * s * h * m.vocab)  # fmt: skip
    return 3.0 * fwd


def mosaicml_flops(sc: Scenario, hardware: bool) -> float:
    """llm-foundry benchmarking README: flops_per_seq = 2·N·s, attn = l·2·2·h·s²;
    MFU uses 3×, HFU 4× when activation checkpointing is on (N = all parameters)."""
    m, t = sc.model, sc.training
    s = t.seq_len
    k = 4 if hardware and t.recompute != "none" else 3
    per_seq = 2 * m.total_params() * s + m.layers * 2 * 2 * m.hidden * s * s
    return k * per_seq * t.global_batch


def model_flops_per_step(sc: Scenario) -> float:
    """Model FLOPs of one optimizer step, no recompute (MFU numerator; Korthikanti 2022 App. A
    Eq. 7 for GPT; PaLM App. B): forward + backward of every block and the head, all micro-batches
    and data-parallel replicas. Of an MoE model, the active FLOPs: router, k routed experts at
    the mean load and the shared experts (so MFU counts active parameters' work). For full training with a 4h MLP this is
    72·B·L·s·h²·(1 + s/(6h) + V/(12·h·L)). The multi-token-prediction modules the step trains
    count too, each a block of the last block's kind plus eh_proj and the logits once more
    (Megatron-LM ``num_floating_point_operations`` at d98e8a64: ``mtp_num_layers`` more MoE or
    dense layers, ``2 x h x h`` eh_proj, the logit term x ``(mtp_num_layers + 1)``). Sliding-
    window layers count the attention their windows keep (:func:`window_core_saving`)."""
    t, m = sc.training, sc.model
    bf = block_flops(m, t)
    hf, hi, hw = head_flops(m, t)
    per_mb = m.layers * (bf.forward + bf.input_grad + bf.weight_grad) + hf + hi + hw
    if m.is_moe:  # active FLOPs: k routed experts at the mean load, dense blocks as they are
        dense = block_flops(m, t, moe=False)
        nd = m.layers - m.moe_layers
        per_mb = (m.moe_layers * (bf.forward + bf.input_grad + bf.weight_grad)
                  + nd * (dense.forward + dense.input_grad + dense.weight_grad) + hf + hi + hw)  # fmt: skip
    if m.sliding_window:  # a windowed layer does window_keys / (s/2) of a causal one's
        # attention work, whatever kernel runs it (a masked kernel's extra blocks are not the
        # model's): the forward's core, and twice it in the backward where gradients flow
        passes = 3 if grad_flows_through_blocks(t) else 1
        saving = window_core_saving(m, t, sliding_share(m, m.layers, None))
        per_mb -= m.layers * bf.attention_core * saving * passes
    if n := trained_mtp_modules(m, t):  # its block is an MoE one where the last block is
        x = mtp_costs(m, t)
        per_mb += n * (bf.forward + bf.input_grad + bf.weight_grad) + x.forward + x.input_grad
        per_mb += x.weight_grad
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
    # Context parallelism (costs.cp): the chunk's ring K/V (and dK/dV) transfers per forward
    # and per backward, on their own stream; their exposed part is in the durations above.
    ring_forward_ns: int = 0
    ring_backward_ns: int = 0


def _ring(sc: Scenario, bf: BlockFlops, layers: int, dtype: str,
          flash: FlashCore | None = None) -> tuple[float, float, int, int]:  # fmt: skip
    """(forward exposed, backward exposed, forward transfer, backward transfer) ns of the
    chunk's ``layers`` ring exchanges (``costs.cp.ring_layer``; all 0 without CP); ``bf`` the
    chunk's blocks together (:func:`chunk_block_flops`), so one layer's attention is 1/layers
    (its FlashAttention forward's where ``flash`` prices it)."""
    if sc.parallelism.cp == 1 or not layers:
        return 0.0, 0.0, 0, 0
    if flash:  # its backward kernel's own time (not twice the forward's: 2.5x at e_b)
        r = ring_layer(sc, flash.forward_ns / layers, flash.backward_ns / layers)
    else:
        r = ring_layer(sc, matmul_ns(bf.attention_core / layers, sc.hardware, dtype))
    # the exchange's exposed time and the attention call's element-wise work (PyTorch's merge)
    ew_f = memory_bound_ns(r.forward_elementwise_bytes, sc.hardware)
    ew_b = memory_bound_ns(r.backward_elementwise_bytes, sc.hardware)
    return (layers * (r.forward_exposed_ns + ew_f), layers * (r.backward_exposed_ns + ew_b),
            math.ceil(layers * r.forward_transfer_ns),
            math.ceil(layers * r.backward_transfer_ns))  # fmt: skip


def matmul_ns(flops: float, hw: HardwareProfile, dtype: str, grouped: float = 0.0,
               edge: float = 0.0) -> float:  # fmt: skip
    """GEMM time: ``flops`` at the dense GEMM efficiency, of which ``grouped`` (the routed
    experts' grouped GEMMs) at ``efficiency.grouped_matmul`` (= matmul unless the profile
    measured it), plus ``efficiency.gemm_edge_elements`` x ``edge`` (:func:`gemm_edge`) FLOPs
    for the dense GEMMs' shapes. Under FP8 (:func:`_fp8_chunk_costs`) every GEMM is priced at
    ``matmul``: no profile has an FP8 grouped-GEMM measurement."""
    peak = hw.compute_peak(dtype)
    eff = hw.efficiency
    flops += eff.gemm_edge_elements * edge
    if not grouped or eff.grouped == eff.matmul:  # one division: the same float as before
        return 1e9 * flops / (peak * eff.matmul)
    return 1e9 * ((flops - grouped) / (peak * eff.matmul) + grouped / (peak * eff.grouped))


def tp_pairs_gemms(sc: Scenario) -> bool:
    """Whether the runtime's TP communication overlap (``tp_comm_overlap``) runs each TP
    collective pipelined with the GEMM that consumes or produces it
    (``costs.comm.pipelined_exposed_ns``): with sequence parallelism, in a dense block whose
    linears are Megatron's (not MLA, no experts). Transformer Engine's userbuffers overlap
    (Megatron-Core ``--tp-comm-overlap``, which needs ``--sequence-parallel``) and PyTorch's
    async TP (torch._inductor micro_pipeline_tp: an all-gather fused with the matmuls of its
    output, a matmul with the reduce-scatter of its output, ``fused_all_gather_matmul`` /
    ``fused_matmul_reduce_scatter`` in torch/distributed/_symmetric_memory) both work GEMM by
    GEMM. (Each GEMM then runs as tp chunks of M/tp rows; their lower efficiency is not
    priced: at the GEMM shape term's L it cost Megatron-Core's H100 rows 12 points, −5 → −17 %,
    which Transformer Engine's concurrent chunk streams do not pay; README.)"""
    m, p = sc.model, sc.parallelism
    return (sc.runtime.tp_comm_overlap and p.sequence_parallel and p.tp > 1 and not m.is_mla
            and not m.is_moe)  # fmt: skip


#: The linears of a dense block by the TP collective each group shares (Megatron, with sequence
#: parallelism: the all-gather before the attention's and the MLP's column-parallel inputs, the
#: reduce-scatter after their row-parallel outputs).
TP_LINEAR_GROUPS = {"attn_in": ("q", "k", "v"), "attn_out": ("o",),
                    "mlp_in": ("gate", "up"), "mlp_out": ("down",)}  # fmt: skip


def tp_group_gemms(sc: Scenario) -> dict[str, tuple[tuple[int, int], ...]]:
    """(N, K) of each GEMM of each :data:`TP_LINEAR_GROUPS` group of a dense block on one TP
    rank, as the runtime runs them (:func:`dense_linear_gemms`): the attention input's Q, K, V
    as one GEMM with ``fused_qkv`` (else three), the MLP input's gate and up as one with
    ``fused_gate_up`` (else two; one up projection in an ungated MLP), the outputs one each."""
    rt = sc.runtime
    fused = (rt.fused_qkv, rt.fused_gate_up)
    gemms = dense_linear_gemms(sc.model, sc.parallelism.tp, fused=fused)
    names = fused_linear_names(*fused)
    return {group: tuple(gemms[x] for x in dict.fromkeys(names.get(y, y) for y in linears)
                         if x in gemms)
            for group, linears in TP_LINEAR_GROUPS.items()}  # fmt: skip


def tp_linear_group_ns(sc: Scenario) -> dict[str, float]:
    """One micro-batch's forward GEMM time on one TP rank of each :data:`TP_LINEAR_GROUPS`
    group of a dense, non-MLA block, in ns: the group's GEMMs (:func:`tp_group_gemms`), each
    with its shape term, over T = b·s tokens (s/cp per GPU). Each GEMM's input- and
    weight-gradient GEMMs have its FLOPs."""
    t = cp_rank_training(sc.training, sc.parallelism.cp)
    prec = t.precision_spec
    dtype = prec.gemm_dtype or prec.compute_dtype
    tokens = t.micro_batch * t.seq_len_effective
    return {group: sum(matmul_ns(2.0 * tokens * n * k, sc.hardware, dtype,
                                 edge=gemm_edge(tokens, n, k)) for n, k in shapes)
            for group, shapes in tp_group_gemms(sc).items()}  # fmt: skip


def symm_mem_tp(sc: Scenario) -> bool:
    """Whether the block's TP collectives run as PyTorch's async TP (runtime
    ``tp_overlap_symm_mem``) paired with their GEMMs (:func:`tp_pairs_gemms`)."""
    return sc.runtime.tp_overlap_symm_mem and tp_pairs_gemms(sc)


def unfused_column_reductions(sc: Scenario) -> tuple[bool, bool]:
    """(attention, MLP): whether a dense block's backward reduces that column-parallel group's
    input gradient as a plain collective under PyTorch's async TP (:func:`symm_mem_tp`): the group's separate linears (more than one of
    :func:`tp_group_gemms`) sum their input gradients first, so ``fuse_matmul_reduce_scatter``
    finds no producer matmul and the reduce-scatter, issued after the group's weight
    gradients, is exposed (``costs.comm.tp_backward_block``). (False, False) otherwise."""
    if not symm_mem_tp(sc):
        return False, False
    groups = tp_group_gemms(sc)
    return len(groups["attn_in"]) > 1, len(groups["mlp_in"]) > 1


def symm_mem_tp_bytes(sc: Scenario, t: TrainingSpec) -> tuple[float, float]:
    """(forward, backward) memory-bound bytes of one dense block's fused TP collectives under
    PyTorch's async TP (:func:`symm_mem_tp`), for one
    micro-batch of ``t`` (T = b·s tokens of the rank's sequence share) on one GPU, beyond their
    GEMMs and transfers (torch/distributed/_symmetric_memory/__init__.py):

    - a fused all-gather-matmul copies the rank's shard into its symmetric-memory buffer
      before its first GEMM (``_pipelined_multi_all_gather_and_consume``: ``copy_shard(dst=
      local_p2p_bufs, src=shard)``, then a barrier): a read and a write of T/tp·h·g bytes,
      g the gathered dtype's (FP8's 1 B where ``costs.fp8.tp_gathers_fp8``);
    - a fused matmul-reduce-scatter sums the tp partial products it received
      (``_fused_matmul_reduce_scatter_impl``: ``reduce_fn`` over ``stacked_partials``): a read
      of T·h·e and a write of T/tp·h·e, e the activation dtype.

    Forward: the attention's and the MLP's input all-gathers and their outputs'
    reduce-scatters; backward: the two output gradients' all-gathers and the input
    gradients' reduce-scatters that fuse (not :func:`unfused_column_reductions`'). (0, 0)
    elsewhere, and for a model with experts or MLA (their collectives are priced apart)."""
    if not symm_mem_tp(sc):
        return 0.0, 0.0
    tp, e = sc.parallelism.tp, t.precision_spec.act_mm
    rows = t.micro_batch * t.seq_len_effective * sc.model.hidden  # T·h values
    reduce = rows * e * (1 + 1 / tp)

    def gather(mlp: bool = False, grad: bool = False) -> float:
        g = 1 if tp_gathers_fp8(sc, mlp, grad) else e
        return 2 * rows / tp * g

    fwd = gather() + gather(mlp=True) + 2 * reduce
    if not grad_flows_through_blocks(t):
        return fwd, 0.0
    unfused = unfused_column_reductions(sc)
    bwd = gather(grad=True) + gather(mlp=True, grad=True) + (2 - sum(unfused)) * reduce
    return fwd, bwd


def memory_bound_ns(n_bytes: float, hw: HardwareProfile) -> float:
    """Element-wise work: ``n_bytes`` at HBM bandwidth x ``efficiency.memory_bound``, in ns."""
    return 1e9 * n_bytes / (hw.hbm_bandwidth_bytes_per_s * hw.efficiency.memory_bound)


def device_copy_ns(n_bytes: float, hw: HardwareProfile) -> float:
    """A device-to-device copy of ``n_bytes``: a read and a write at the memory-bound rate."""
    return memory_bound_ns(2 * n_bytes, hw)


def column_linears(sc: Scenario) -> tuple[int, int]:
    """(attention, MLP) column-parallel linears that reduce their own input gradient in a dense
    block's backward: one each under runtime ``tp_input_redistribution: per_block`` (Megatron's
    fused QKV and fc1, torchtitan's PrepareModuleInput) and for MLA models; per linear, q, k and
    v, and the MLP's gate and up (a gated MLP) or its up projection (KempnerForge's plan: each a
    ColwiseParallel of its own, distributed/tensor_parallel.py l.59-78 at 01b461a7). Their
    weight-gradient GEMMs share the group's time equally (GQA's k and v are smaller: not told
    apart). A model with experts or MLA keeps one each (their blocks' collectives are priced
    apart: not modelled per linear)."""
    m = sc.model
    if sc.runtime.tp_input_redistribution == "per_block" or m.is_mla or m.is_moe:
        return 1, 1
    return 3, 2 if sc.model.mlp == "swiglu" else 1


def column_gathers(sc: Scenario) -> tuple[int, int]:
    """(attention, MLP) input all-gathers of a dense block's forward under sequence
    parallelism: :func:`column_linears` under ``per_linear`` (eager DTensor: each linear
    redistributes the same Shard(1) input), one each otherwise (``per_linear_compiled``: the
    AOT autograd CSE keeps one of identical all-gathers, ``spec.runtime``)."""
    if sc.runtime.tp_input_redistribution != "per_linear":
        return 1, 1
    return column_linears(sc)


def tp_shard_copy_bytes(sc: Scenario, t: TrainingSpec) -> tuple[float, float]:
    """(forward, backward) bytes one dense block's sequence-parallel TP collectives copy under
    runtime ``tp_shard_copies`` (DTensor's functional collectives on [b, s, h] sharded on s:
    ``spec.runtime``), for one micro-batch of ``t`` on one GPU. Each copy reads and writes the
    whole b·s·h tensor in the activation dtype e (FP8's 1 B where the all-gather carries the
    quantized input, ``costs.fp8.tp_gathers_fp8``), 2·b·s·h·e bytes:

    - forward: the two row-parallel outputs' reduce-scatters copy their inputs, and each input
      all-gather (:func:`column_gathers`: one per group, or per linear) its output
      unless b = 1 (a view then: ``torch/_utils.py _maybe_view_chunk_cat``);
    - backward: each forward all-gather becomes a reduce-scatter of its gradient
      (:func:`column_linears`: one per group, or per linear), copied, and each
      forward reduce-scatter an all-gather, copied unless b = 1.

    (0, 0) without the runtime flag, at tp 1, without sequence parallelism (the all-reduces
    copy nothing), under ``tp_comm_overlap`` (async TP's fused all-gather-matmuls take the
    shards as they are) and for a model with experts or MLA (their blocks' collectives are
    priced apart). A full recompute replays the forward's (as every forward element-wise
    byte; its early stop before the last reduce-scatter is not told apart)."""
    m, p, rt = sc.model, sc.parallelism, sc.runtime
    if (not rt.tp_shard_copies or p.tp <= 1 or not p.sequence_parallel or rt.tp_comm_overlap
            or m.is_moe or m.is_mla):  # fmt: skip
        return 0.0, 0.0
    e = t.precision_spec.act_mm
    copy = 2 * t.micro_batch * t.seq_len_effective * m.hidden  # a read and a write a byte
    gathered = t.micro_batch > 1  # an all-gather's output is a view for one sequence
    # forward: the two reduce-scatters' inputs, each all-gather's output (in FP8 where it
    # carries the quantized input: torchao's Float8Tensor, not measured here)
    fwd = 2 * copy * e + gathered * sum(
        n * copy * (1 if tp_gathers_fp8(sc, mlp) else e)
        for n, mlp in zip(column_gathers(sc), (False, True), strict=True)
    )
    if not grad_flows_through_blocks(t):
        return fwd, 0.0
    # backward: each input gradient's reduce-scatter, each output gradient's all-gather
    return fwd, (sum(column_linears(sc)) + 2 * gathered) * copy * e


def _plus_elementwise(bf: BlockFlops, fwd: float, bwd: float) -> BlockFlops:
    """``bf`` with ``fwd`` / ``bwd`` more memory-bound bytes in its forward / backward."""
    if not (fwd or bwd):
        return bf
    return replace(bf, elementwise_bytes_fwd=bf.elementwise_bytes_fwd + fwd,
                   elementwise_bytes_bwd=bf.elementwise_bytes_bwd + bwd)  # fmt: skip


def chunk_block_flops(sc: Scenario, layers: int, lo: int | None = None) -> BlockFlops:
    """:class:`BlockFlops` of ``layers`` blocks together (each field x layers). Of a model with
    experts, blocks ``lo`` .. ``lo + layers − 1`` (``lo`` None: all MoE blocks) are dense or
    MoE (``ModelSpec.first_dense_layers``), the MoE ones at the busiest EP rank's load
    (:func:`costs.moe.moe_load`)."""
    m, tp = sc.model, sc.parallelism.tp
    t = cp_rank_training(sc.training, sc.parallelism.cp)  # one GPU's s/cp tokens
    fused = (sc.runtime.fused_qkv, sc.runtime.fused_gate_up)
    sp = sc.parallelism.sequence_parallel and tp > 1
    eager = sc.runtime.eager_elementwise
    bf = block_flops(m, t, tp, fused=fused, sp=sp, eager=eager)
    if not m.is_moe:
        bf = _plus_elementwise(bf, *tp_shard_copy_bytes(sc, t))  # (runtime tp_shard_copies)
        bf = _plus_elementwise(bf, *symm_mem_tp_bytes(sc, t))  # (runtime tp_overlap_symm_mem)
        return BlockFlops(*(layers * getattr(bf, f) for f in BlockFlops.__slots__))
    ep = sc.parallelism.ep
    dense = _dense_blocks(m, layers, lo)
    moe_bf = block_flops(m, t, tp, True, moe_load(m, ep), fused, sp, eager)
    if sc.runtime.moe_implementation == "megatron_core":
        # Megatron-Core's unfused GPT-OSS parts (costs.moe.megatron_expert_extra_bytes_per_token)
        fwd, bwd = megatron_expert_extra_bytes_per_token(m, t.precision_spec.act_mm, tp,
                                                         moe_load(m, ep))  # fmt: skip
        tokens = t.micro_batch * t.seq_len_effective
        bwd = bwd if grad_flows_through_blocks(t) else 0.0
        moe_bf = _plus_elementwise(moe_bf, tokens * fwd, tokens * bwd)
    dense_bf = block_flops(m, t, tp, False, fused=fused, sp=sp, eager=eager)
    return BlockFlops(*(dense * getattr(dense_bf, f) + (layers - dense) * getattr(moe_bf, f)
                        for f in BlockFlops.__slots__))  # fmt: skip


def recompute_stops_early(sc: Scenario) -> bool:
    """Does a full recompute stop before the block's last TP reduction (runtime
    ``recompute_early_stop``)? Where nothing after the MLP's last linear saves a tensor: a
    dense block (no experts) with pre-norms, no post-norms, no parallel residual and no
    dropout after it (each saves after the linear has run). Its GEMM is skipped too where
    :func:`recompute_skips_last_gemm`. Measured: PyTorch's checkpoint of a Llama block runs
    14 matmuls in its backward with early stop, 15 without; with dropout after the MLP 15
    either way (tests/test_recompute_early_stop.py)."""
    m, t = sc.model, sc.training
    return (t.recompute == "full" and sc.runtime.recompute_early_stop and not m.is_moe
            and m.pre_norms and not m.post_norms and not m.parallel_residual
            and m.dropout == 0)  # fmt: skip


def recompute_skips_last_gemm(sc: Scenario) -> bool:
    """Does an early-stopped recompute (:func:`recompute_stops_early`) skip the MLP's last GEMM
    too? Where that linear saves its input before running (autograd's own matmul): whole
    weights (PEFT's adapters save after the base GEMM) and a 16-bit GEMM (a quantizing linear
    is an autograd Function, whose saved tensors are packed after its forward has run: the
    GEMM replayed, the reduction after it not)."""
    t = sc.training
    return (recompute_stops_early(sc) and t.peft.method == "none"
            and not t.precision_spec.gemm_dtype)  # fmt: skip


def skipped_recompute_gemm(sc: Scenario, t: TrainingSpec) -> tuple[float, float]:
    """(FLOPs, :func:`gemm_edge`) of the GEMM one block's early-stopped recompute does not run
    (:func:`recompute_skips_last_gemm`): the MLP's last linear on one TP rank, 2·T·f·h/tp over
    T = b·s tokens (``t``: one GPU's, s/cp); (0, 0) where the recompute replays it."""
    if not recompute_skips_last_gemm(sc):
        return 0.0, 0.0
    fused = (sc.runtime.fused_qkv, sc.runtime.fused_gate_up)
    n, k = dense_linear_gemms(sc.model, sc.parallelism.tp, fused=fused)["down"]
    tokens = t.micro_batch * t.seq_len_effective
    return 2.0 * tokens * n * k, gemm_edge(tokens, n, k)


def chunk_costs(sc: Scenario, layers: int, first: bool, last: bool,
                lo: int | None = None, loss: tuple[str, ...] | None = None) -> StageCosts:  # fmt: skip
    """Costs of ``layers`` blocks (plus embeddings / head when the chunk holds them), on one
    GPU; ``lo``: the first block's index (which blocks of an MoE model are dense:
    :func:`chunk_block_flops`); ``loss``: the parts of the loss the chunk computes
    (``StageBlocks.loss_parts``; None: both with the head, ``last``), priced apart from the
    head by :func:`loss_part_bytes` where they are not both with it. With context parallelism
    its s/cp tokens of each sequence (every GEMM, norm and element-wise op, the head and the
    loss), their queries attending to all s keys, so the attention core is the whole
    sequence's / cp (``spec.scenario.cp_rank_training``)."""
    m, hw = sc.model, sc.hardware
    t = cp_rank_training(sc.training, sc.parallelism.cp)
    tp = sc.parallelism.tp
    dtype = t.precision_spec.compute_dtype
    bf = chunk_block_flops(sc, layers, lo)
    fwd_f = bf.forward
    i_f = bf.input_grad
    w_f = bf.weight_grad
    ew = bf.elementwise_bytes_fwd
    ew_bwd = bf.elementwise_bytes_bwd
    e = t.precision_spec.act_mm
    s = t.seq_len_effective
    grad = grad_flows_through_blocks(t)
    if first:  # embedding lookup: write b·s·h (+ positions read/add)
        emb = e * t.micro_batch * s * m.hidden * EMBEDDING_ACCESSES
        ew += emb
        ew_bwd += elementwise_backward_factor(e) * emb if grad else 0.0
    full = base_trainable(t.peft.method, t.peft.phase)
    e_f = bf.projections_edge
    e_i = e_f if grad else 0.0
    e_w = e_f if grad and full else 0.0
    if last:
        hf, hi, hwf = head_flops(m, t, tp)
        x = mtp_costs(m, t, tp, sc.parallelism.sequence_parallel and tp > 1)
        fwd_f, i_f, w_f = fwd_f + hf + x.forward, i_f + hi + x.input_grad, w_f + hwf + x.weight_grad
        he = head_edge(m, t, tp)
        e_f, e_i, e_w = (
            e_f + he + x.edge,
            e_i + (he if hi else 0.0) + x.edge,
            e_w + (he if hwf else 0.0) + x.edge,
        )
        parts = LOSS_PARTS if loss is None else loss
        head_fwd, head_bwd = (head_elementwise_bytes(m, t, tp) if parts == LOSS_PARTS
                              else softcap_bytes(m, t, tp))  # fmt: skip
        ew += head_fwd + x.elementwise_fwd
        ew_bwd += (head_bwd + x.elementwise_bwd) if grad else 0.0
    if loss and not (last and loss == LOSS_PARTS):  # the loss's parts apart from the LM head
        part_fwd, part_bwd = loss_part_bytes(m, t, tp, loss)
        ew += part_fwd
        ew_bwd += part_bwd if grad else 0.0
    # the attention core as FlashAttention kernels (its sliding-window layers' share too,
    # where the runtime's kernel skips the blocks outside the window)
    sliding = sliding_share(m, layers, lo) if sc.runtime.sliding_window_kernel else 0.0
    fa = flash_core(sc, t, bf, dtype, grad, sliding)
    # FLOPs counted as executed: the windowed layers' core is not computed whole
    skip = bf.attention_core * window_core_saving(m, t, sliding) if fa else 0.0
    if t.precision_spec.gemm_dtype:
        fp8 = _fp8_chunk_costs(sc, layers, bf, (fwd_f, i_f, w_f), (ew, ew_bwd), lo,
                               (e_f, e_i, e_w), fa)  # fmt: skip
        return _as_executed(fp8, skip, t.recompute)
    g = bf.grouped  # the routed experts' grouped GEMMs: as many FLOPs in I and in W (if trained)
    fa_f, fa_i, fa_fns, fa_ins = astuple(fa or NO_FLASH)
    fwd_ns = matmul_ns(fwd_f - fa_f, hw, dtype, g, e_f) + fa_fns + memory_bound_ns(ew, hw)
    i_ns = (matmul_ns(i_f - fa_i, hw, dtype, g if i_f else 0.0, e_i) + fa_ins
            + memory_bound_ns(ew_bwd, hw))  # fmt: skip
    g_w = g if w_f and full else 0.0
    w_ns = matmul_ns(w_f, hw, dtype, g_w, e_w)
    rec_f = 0.0
    rec_ns = 0.0
    if grad and t.recompute == "full":
        # less the MLP's last linear where the recompute skips it (recompute_skips_last_gemm)
        skip_f, skip_edge = (layers * x for x in skipped_recompute_gemm(sc, t))
        rec_f = bf.forward - skip_f
        rec_ns = (matmul_ns(rec_f - fa_f, hw, dtype, g, bf.projections_edge - skip_edge)
                  + fa_fns + memory_bound_ns(bf.elementwise_bytes_fwd, hw))  # fmt: skip
    elif grad and t.recompute == "selective":
        rec_f, rec_ns = selective_recompute(sc, t, bf, layers, lo, dtype, fa)
    elif grad and t.recompute == "selective_op":
        rec_f = layers * op_sac_recompute_flops(m, t, tp)
        rec_ns = matmul_ns(
            rec_f, hw, dtype, edge=layers * op_sac_recompute_edge(m, t, tp)
        ) + memory_bound_ns(bf.elementwise_bytes_fwd, hw)
    ring_f, ring_b, ring_ft, ring_bt = _ring(sc, bf, layers, dtype, fa)
    fwd_ns += ring_f
    i_ns += ring_b if grad else 0.0
    # recomputed attention replays the forward ring (selective_op keeps SDPA's output)
    rec_ns += ring_f if rec_f and replays_core(t) else 0.0
    # Whole nanoseconds rounded up: work never takes less than its FLOPs and bytes at the
    # achievable rates. Rounded to the nearest, sub-nanosecond work took 0 ns and a few-ns task
    # up to 0.5 ns less: hardware FLOP utilisation above 1, stages with bubble 1.0, and memory
    # allocated and freed at one instant, which the trace never saw.
    costs = StageCosts(
        forward_ns=math.ceil(fwd_ns),
        input_grad_ns=math.ceil(i_ns),
        weight_grad_ns=math.ceil(w_ns),
        recompute_ns=math.ceil(rec_ns),
        forward_flops=fwd_f,
        backward_flops=i_f + w_f,
        recompute_flops=rec_f,
        ring_forward_ns=ring_ft,
        ring_backward_ns=ring_bt if grad else 0,
    )
    return _as_executed(costs, skip, t.recompute)


def _as_executed(c: StageCosts, skip: float, recompute: str) -> StageCosts:
    """``c`` with its FLOPs as the kernels execute them: the windowed layers' core they do
    not compute (``skip``: :func:`window_core_saving` of the chunk's core) out of the forward,
    twice out of the backward (the input gradient's 2 x core) where gradients flow, and out
    of a recompute that replays the attention (selective_op keeps SDPA's output)."""
    if not skip:
        return c
    return replace(
        c,
        forward_flops=c.forward_flops - skip,
        backward_flops=c.backward_flops - (2 * skip if c.backward_flops else 0.0),
        recompute_flops=c.recompute_flops - (
            skip if c.recompute_flops and recompute != "selective_op" else 0.0),
    )  # fmt: skip


def _chunk_cast_bytes(sc: Scenario, t: TrainingSpec, prec: Precision, layers: int,
                      lo: int | None) -> tuple[float, float]:  # fmt: skip
    """(forward, backward) FP8 cast bytes of ``layers`` blocks (:func:`costs.fp8.cast_bytes`),
    the dense and the MoE ones apart (:func:`_dense_blocks`); ``t`` one GPU's s/cp tokens."""
    m, p = sc.model, sc.parallelism
    args = (m, prec, sc.hardware.gpu_arch, t.micro_batch * t.seq_len_effective, p.tp,
            microbatches(t, p))  # fmt: skip
    dense = _dense_blocks(m, layers, lo)
    df, db = cast_bytes(*args)
    if dense == layers:
        return layers * df, layers * db
    mf, mb = cast_bytes(*args, moe=True, ep=p.ep, load=moe_load(m, p.ep), etp=p.etp)
    return dense * df + (layers - dense) * mf, dense * db + (layers - dense) * mb


def replays_core(t: TrainingSpec) -> bool:
    """Whether the recompute runs the attention core again (and so its context-parallel ring;
    costs.workload's cp_recompute_ns too):
    full recompute, and selective with core_attn; not torchtitan's per-op policy (SDPA's output
    kept)."""
    return t.recompute == "full" or "core_attn" in t.selective_modules


def _dense_blocks(m: ModelSpec, layers: int, lo: int | None) -> int:
    """Dense blocks among blocks ``lo`` .. ``lo + layers − 1`` (all of a dense model's; of a
    model with experts, ``lo`` None: all MoE blocks; ``ModelSpec.first_dense_layers``)."""
    if not m.is_moe:
        return layers
    return m.dense_layers_in(lo, lo + layers) if lo is not None else 0


def selective_recompute(sc: Scenario, t: TrainingSpec, bf: BlockFlops, layers: int,
                        lo: int | None, dtype: str, fa: FlashCore | None,
                        gemm: str | None = None) -> tuple[float, float]:  # fmt: skip
    """(FLOPs, ns) of Megatron's selective recompute of ``layers`` blocks (``bf`` together,
    ``lo`` the first: :func:`_dense_blocks`), by ``TrainingSpec.selective_modules``:
    core_attn the attention core again, as its FlashAttention forward kernel where ``fa``
    prices it, else its matmuls at ``dtype``'s rate with its passes over the scores;
    mla_up_proj the q and kv up-projections' GEMMs (2·T·(q_lora·q_b_out + kv_lora·kv_b_out)/t,
    at ``gemm``'s rate, the FP8 one under FP8; the RoPE it re-applies left out); moe_act the
    experts' activation (SwiGLU: read fc1's 2·f_e outputs, write f_e; else read and write f_e:
    :data:`FUSED_OP_ACCESSES`, as :func:`block_elementwise_bytes` counts it, each expert-token
    pair of the busiest rank); layernorm the separate norms (MLA's input norm, an MoE block's
    pre-MLP norm) on the rank's tokens (read and write h values, s/t under sequence
    parallelism)."""
    m, hw, p = sc.model, sc.hardware, sc.parallelism
    mods = t.selective_modules
    flops = ns = 0.0
    if "core_attn" in mods:
        core = fa.forward_ns if fa else matmul_ns(bf.attention_core, hw, dtype)
        scores = layers * attention_core_elementwise_bytes(m, t, p.tp)
        flops += bf.attention_core
        ns += core + memory_bound_ns(scores, hw)
    tokens = t.micro_batch * t.seq_len_effective
    e = t.precision_spec.act_mm
    n_moe = layers - _dense_blocks(m, layers, lo) if m.is_moe else 0
    if "mla_up_proj" in mods and m.is_mla:
        shapes = m.attention_shapes()
        up = sum(fi * fo for name, (fi, fo) in shapes.items() if name in ("q_b", "kv_b"))
        f = layers * 2.0 * tokens * up / p.tp
        flops += f
        ns += matmul_ns(f, hw, gemm or dtype)
    if "moe_act" in mods and n_moe:
        pairs = tokens * m.experts_per_token * moe_load(m, p.ep)
        # the rank's k·T/t·load pairs of whole experts (etp < tp) or its f_e/etp columns of the
        # T pairs (etp = tp): k·T·load·f_e/t values either way (costs.moe.moe_saved_tensors)
        act = FUSED_OP_ACCESSES["swiglu"] if m.mlp == "swiglu" else 2  # block_elementwise_bytes'
        ns += memory_bound_ns(n_moe * pairs * act * e * m.expert_ffn / p.tp, hw)
    if "layernorm" in mods:
        norms = (layers if m.is_mla else 0) + n_moe
        seq = tokens / p.tp if p.sequence_parallel else tokens
        ns += memory_bound_ns(norms * seq * FUSED_OP_ACCESSES["rmsnorm"] * e * m.hidden, hw)
    return flops, ns


def _fp8_chunk_costs(sc: Scenario, layers: int, bf: BlockFlops, flops: tuple[float, float, float],
                     ew: tuple[float, float], lo: int | None, edges: tuple[float, float, float],
                     fa: FlashCore | None) -> StageCosts:  # fmt: skip
    """:func:`chunk_costs` under an FP8 precision (costs.fp8), ``bf`` the chunk's blocks
    together (:func:`chunk_block_flops`), ``fa`` its attention core's FlashAttention kernels
    (:func:`flash_core`; None: GEMM-priced): the blocks' linear-layer GEMMs
    (fprop, dgrad and, where the weights train, wgrad) at the ``gemm_dtype`` rate, the rest
    (attention core, LoRA, the LM head) at ``compute_dtype``'s; the FP8 casts
    (:func:`costs.fp8.cast_bytes`) as element-wise work, and torchao rowwise's rescale of the
    input- and weight-gradient outputs (:func:`costs.fp8.rowwise_rescale_bytes`) in the action
    whose GEMM it follows; recompute replays the same split."""
    m, hw = sc.model, sc.hardware
    t = cp_rank_training(sc.training, sc.parallelism.cp)
    prec = t.precision_spec
    dtype, gemm = prec.compute_dtype, prec.gemm_dtype
    fwd_f, i_f, w_f = flops
    grad = grad_flows_through_blocks(t)
    full = base_trainable(t.peft.method, t.peft.phase)
    lin_f = bf.projections
    lin_i = lin_f if grad else 0.0
    lin_w = lin_f if grad and full else 0.0
    cast_f, cast_b = _chunk_cast_bytes(sc, t, prec, layers, lo)
    cast_b = cast_b if grad else 0.0
    # torchao rowwise: the input- and weight-gradient GEMMs' outputs rescaled afterwards
    tokens, eager = t.micro_batch * t.seq_len_effective, sc.runtime.eager_elementwise
    res_i, res_w = rowwise_rescale_bytes(m, prec, tokens, sc.parallelism.tp, eager)
    res_i, res_w = layers * res_i if grad else 0.0, layers * res_w if grad and full else 0.0
    # the linear layers' shape term at the FP8 rate, the head's (the rest of ``edges``) at dtype's
    le = bf.projections_edge
    le_f, le_i, le_w = le, le if grad else 0.0, le if grad and full else 0.0
    fa_f, fa_i, fa_fns, fa_ins = astuple(fa or NO_FLASH)
    fwd_ns = (matmul_ns(fwd_f - lin_f - fa_f, hw, dtype, edge=edges[0] - le_f) + fa_fns
              + matmul_ns(lin_f, hw, gemm, edge=le_f)
              + memory_bound_ns(ew[0] + cast_f, hw))  # fmt: skip
    i_ns = (matmul_ns(i_f - lin_i - fa_i, hw, dtype, edge=edges[1] - le_i) + fa_ins
            + matmul_ns(lin_i, hw, gemm, edge=le_i)
            + memory_bound_ns(ew[1] + cast_b + res_i, hw))  # fmt: skip
    w_ns = (matmul_ns(w_f - lin_w, hw, dtype, edge=edges[2] - le_w)
            + matmul_ns(lin_w, hw, gemm, edge=le_w) + memory_bound_ns(res_w, hw))  # fmt: skip
    rec_f = rec_ns = 0.0
    if grad and t.recompute == "full":
        rec_f = bf.forward
        rec_ns = (matmul_ns(rec_f - lin_f - fa_f, hw, dtype) + fa_fns
                  + matmul_ns(lin_f, hw, gemm, edge=le)
                  + memory_bound_ns(bf.elementwise_bytes_fwd + cast_f, hw))  # fmt: skip
    elif grad and t.recompute == "selective":
        rec_f, rec_ns = selective_recompute(sc, t, bf, layers, lo, dtype, fa, gemm)
    elif grad and t.recompute == "selective_op":
        # The recomputed projections (and the casts of their inputs, their share of the
        # block's) at the FP8 rate; a non-flash attention core at compute_dtype's.
        rec_lin = layers * op_sac.recompute_matmul_flops(m, t, sc.parallelism.tp)
        rec_f = layers * op_sac_recompute_flops(m, t, sc.parallelism.tp)
        share = rec_lin / lin_f if lin_f else 0.0
        rec_e = layers * op_sac_recompute_edge(m, t, sc.parallelism.tp)
        rec_ns = (matmul_ns(rec_f - rec_lin, hw, dtype)
                  + matmul_ns(rec_lin, hw, gemm, edge=rec_e)
                  + memory_bound_ns(bf.elementwise_bytes_fwd + share * cast_f, hw))  # fmt: skip
    ring_f, ring_b, ring_ft, ring_bt = _ring(sc, bf, layers, dtype, fa)
    fwd_ns += ring_f
    i_ns += ring_b if grad else 0.0
    rec_ns += ring_f if rec_f and replays_core(t) else 0.0
    return StageCosts(
        forward_ns=math.ceil(fwd_ns), input_grad_ns=math.ceil(i_ns),
        weight_grad_ns=math.ceil(w_ns), recompute_ns=math.ceil(rec_ns),
        forward_flops=fwd_f, backward_flops=i_f + w_f, recompute_flops=rec_f,
        ring_forward_ns=ring_ft, ring_backward_ns=ring_bt if grad else 0,
    )  # fmt: skip


def op_sac_recompute_flops(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> float:
    """Matmul FLOPs one block recomputes per micro-batch under ``selective_op``
    (:mod:`costs.op_sac`): every second projection mm (Llama: k, o, up =
    2·b·s·h·(kv + h + f)/t) plus, without flash attention, the attention core
    4·b·s·s_kv·q_dim/t (:func:`block_flops`' core; the math path's bmm is not in torchtitan's
    ``_save_list``); LoRA adds no term (rejected with selective_op by spec.scenario)."""
    core = (
        0.0
        if m.flash_attention
        else 4 * t.micro_batch * t.seq_len_effective * t.kv_len * (m.q_dim / tp)
    )
    return op_sac.recompute_matmul_flops(m, t, tp) + core


def op_sac_recompute_edge(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> float:
    """:func:`gemm_edge` of the projections one block recomputes under ``selective_op``
    (:func:`costs.op_sac.recomputed_matmuls`, each on one TP rank:
    :func:`spec.model.tp_split_shape`)."""
    tokens = t.micro_batch * t.seq_len_effective
    shapes = (tp_split_shape(mm.name, mm.in_features, mm.out_features, tp)
              for mm in op_sac.recomputed_matmuls(m))  # fmt: skip
    return sum(gemm_edge(tokens, n, k) for k, n in shapes)


def optimizer_bytes_per_param(t: TrainingSpec) -> float:
    """Bytes an optimizer step moves per trainable parameter: read the gradient, read and write
    the (master) weight and each state, and write the 16-bit weight after a master update
    (Adam in mixed precision: 2 + 2·4 + 2·2·4 + 2 = 28 B; fp32 AdamW: 4 + 8 + 16 = 28 B). With
    an fp32 gradient-accumulation buffer (bf16_fp32_grads) the step reads that buffer (4 B)
    instead of the 16-bit gradient: 30 B. The optimizer's storage (``training.master_weights``,
    ``optimizer_state_dtype``): bf16 states 2 B each; without a master copy the step reads and
    writes the 16-bit weight (bf16 Adam, no master: 2 + 2·2 + 2·2·2 = 14 B); a 16-bit remainder
    is read and written with the 16-bit weight it completes (2 + 2·(2 + 2) + 16 = 26 B)."""
    prec = t.precision_spec
    states = 2 * OPTIMIZER_STATES[t.optimizer] * prec.state
    if prec.master_remainder:  # fp32 master = the 16-bit weight + its low 16 bits
        return prec.optimizer_grad_read + 2 * (prec.param + prec.master) + states
    per_param = prec.optimizer_grad_read + 2 * (prec.master or prec.param) + states
    return per_param + (prec.param if prec.master else 0)


def optimizer_shard(trainable: int, p: ParallelSpec) -> int:
    """Trainable parameters one GPU updates: ZeRO-1/2/3 shard the optimizer over the DP group
    (Rajbhandari et al. 2020 §5.1), dp x cp GPUs with context parallelism (Megatron-Core's
    distributed optimizer shards over ``intra_dp_cp_group``), or a hybrid-sharding group of
    ``ParallelSpec.zero_shards``."""
    return trainable // (p.zero_shards if p.zero_stage >= 1 else 1)


def optimizer_step_ns(trainable_params_per_gpu: int, t: TrainingSpec, hw: HardwareProfile,
                      host_ranks: int = 1) -> int:  # fmt: skip
    """Optimizer step: memory-bound over the GPU's trainable parameters
    (:func:`optimizer_bytes_per_param` at HBM bandwidth x ``efficiency.optimizer``). Offloaded:
    DeepSpeed CPU-Adam on the host (Ren et al. 2021, ZeRO-Offload §4), whose
    ``cpu_adam_params_per_s`` the node's ``host_ranks`` GPUs share (:func:`offload.cpu_adam_ns`);
    its PCIe copies are tasks of their own (``costs.offload``, ``passes.offload_pass``)."""
    n = trainable_params_per_gpu
    if t.offload.optimizer:
        return cpu_adam_ns(n, hw, host_ranks)
    return math.ceil(optimizer_traffic_ns(n * optimizer_bytes_per_param(t), hw))  # as chunk_costs


def optimizer_traffic_ns(n_bytes: float, hw: HardwareProfile) -> float:
    """The optimizer step's memory-bound work: ``n_bytes`` at HBM bandwidth x
    ``efficiency.optimizer`` (the profile's measured step, else ``memory_bound``), in ns."""
    eff = hw.efficiency.optimizer or hw.efficiency.memory_bound
    return 1e9 * n_bytes / (hw.hbm_bandwidth_bytes_per_s * eff)


def hardware_flops_per_step(sc: Scenario) -> float:
    """FLOPs executed in one step over all GPUs, recompute included (HFU-like; with full
    recompute equal to Narayanan et al. 2021 Eq. 3 for a GPT shape)."""
    step = resolve(sc)
    total = 0.0
    mean = sc
    if sc.model.is_moe:  # every rank at the mean expert load: the FLOPs all GPUs execute
        mean = replace(sc, model=replace(sc.model, moe_load_imbalance=1.0, capacity_factor=0.0))
    for ch in step.chunks:
        c = chunk_costs(mean, ch.layers, ch.embedding, ch.head, ch.lo, ch.loss_parts)
        total += c.forward_flops + c.backward_flops + c.recompute_flops
    # per TP rank -> whole TP group; per micro-batch -> step; DP replicas; CP ranks. DualPipe
    # holds every stage twice and runs each micro-batch through one of the copies
    g = step.groups
    return total * g.tp * step.microbatches * g.dp * g.cp / step.stage_copies
