"""Activations: the tensors one block, the embedding and the head save for backward, and the
walk of a rank's schedule that finds their peak.

Counted tensor by tensor from what a PyTorch implementation saves (:func:`layer_saved_tensors`);
for 16-bit training without flash attention this reproduces Korthikanti et al. 2022 §4.1 Eq. 1,
``s·b·h·(34 + 5·a·s/h)`` bytes per layer, exactly, and the reference implementation in
``simtrain.torchref`` checks it on real PyTorch steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from simtrain.costs import op_sac
from simtrain.costs.fp8 import copy_formula, fp8_copy_bytes, is_te, torchao_tp_float8
from simtrain.costs.moe import moe_saved_tensors
from simtrain.costs.params import base_trainable
from simtrain.layout.partition import StageBlocks
from simtrain.layout.step import ResolvedStep, rank_schedule
from simtrain.schedules import Action
from simtrain.schedules.generators import rank_warmup
from simtrain.spec.model import ModelSpec
from simtrain.spec.precision import PRECISIONS, Precision
from simtrain.spec.scenario import (
    MEGATRON_KERNEL_LOSSES,
    Scenario,
    TrainingSpec,
    cp_rank_training,
    loss_vocab_shards,
    trained_mtp_modules,
)

# ---------------------------------------------------------------------------------------------
# Activations: the tensors saved for backward


@dataclass(frozen=True, slots=True)
class SavedTensor:
    """A tensor saved for backward in one layer for one micro-batch, and which part of the block
    saved it (``part``: "attention", "mlp" or "adapter"; :func:`layer_saved_tensors`)."""

    name: str
    bytes: int
    formula: str
    part: str = "attention"


def rematerialises(t: TrainingSpec) -> bool:
    """Does the backward re-run each block's forward (full recompute, or torchtitan's per-op
    selective recompute, which checkpoints every block with a policy)? Megatron's selective
    recompute re-runs only the attention core and is not one."""
    return t.recompute in ("full", "selective_op")


def grad_flows_through_blocks(t: TrainingSpec) -> bool:
    """Does the gradient flow back through the transformer blocks? Not for linear probing, where
    only the head is trained (autograd saves nothing for frozen inputs)."""
    return not (
        t.peft.method == "linear_probe" or (t.peft.method == "lp_ft" and t.peft.phase == "probe")
    )


def norm_stats_per_token(m: ModelSpec) -> int:
    """Bytes a norm saves beside its input per token: fp32 mean and rstd (LayerNorm) or rstd
    (RMSNorm), 4 B each."""
    return 4 * (2 if m.norm == "layernorm" else 1)


def norm_saved_bytes(m: ModelSpec, t: TrainingSpec, tokens: int, div: int = 1) -> int:
    """What one norm outside the blocks saves over ``tokens`` (b·s): its input, h values each in
    the norm's activation dtype, and its statistics (:func:`norm_stats_per_token`), split over
    ``div`` ranks (sequence parallelism's tp, else 1)."""
    return (t.precision_spec.act_norm * tokens * m.hidden + norm_stats_per_token(m) * tokens) // div


def layer_saved_tensors(
    m: ModelSpec,
    t: TrainingSpec,
    micro_batch: int | None = None,
    tp: int = 1,
    sequence_parallel: bool = False,
    moe: bool | None = None,
    load: float = 1.0,
    gathered_input: int = 0,
    repeat_kv: bool = False,
    cp_a2a: bool = False,
    etp: int = 0,
    fused_swiglu: bool = False,
    gathered_per_linear: bool = False,
) -> list[SavedTensor]:
    """Tensors one transformer block saves for backward, for one micro-batch (no recompute).

    ``gathered_input`` (bytes per value; 0: Megatron's rule, the input kept sharded over the
    sequence and all-gathered again in backward): under sequence parallelism the column-parallel
    linears save the all-gathered input, b·s·h on every TP rank (:func:`tp_gathered_input_bytes`).
    ``repeat_kv`` (runtime ``attention_repeat_kv``, torchtitan's llama3 ``repeat_kv``): K and V
    are expanded to every query head before SDPA, which saves them at the query's width.
    ``cp_a2a`` (runtime ``cp_attention: a2a`` with cp > 1): the flash kernel's output and the
    out-projection's input are different storages, either side of the all-to-all (costs.cp).
    ``fused_swiglu`` (runtime ``fused_swiglu``, Megatron-Core's ``bias_swiglu_impl``): a SwiGLU
    MLP's activation saves only its input, the fc1 output (gate and up), not silu's output.
    ``gathered_per_linear`` (runtime ``tp_input_redistribution: per_linear``, eager DTensor):
    each column-parallel linear all-gathers the input itself and saves its own whole copy (q,
    k, v three; gate and up two), not one shared.

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

    An MoE block (``moe``: default, every block of a model with experts) saves the router's,
    the experts' and the shared experts' tensors in place of the MLP's
    (:func:`costs.moe.moe_saved_tensors`, the busiest EP rank's ``load``).
    """
    return list(
        _layer_saved_tensors(
            m,
            t,
            micro_batch,
            tp,
            sequence_parallel,
            moe,
            load,
            gathered_input,
            repeat_kv,
            cp_a2a,
            etp,
            fused_swiglu,
            gathered_per_linear,
        )
    )


@lru_cache(maxsize=4096)
def _layer_saved_tensors(m: ModelSpec, t: TrainingSpec, micro_batch: int | None, tp: int,
                         sequence_parallel: bool, moe: bool | None, load: float,
                         gathered_input: int, repeat_kv: bool, cp_a2a: bool, etp: int,
                         fused_swiglu: bool,
                         gathered_per_linear: bool = False) -> tuple[SavedTensor, ...]:  # fmt: skip
    """:func:`layer_saved_tensors`, cached: the planner sizes the same block for every layout
    that shares its model, micro-batch, TP and runtime flags (pure: the specs are frozen)."""
    if not grad_flows_through_blocks(t):
        return ()
    prec = t.precision_spec
    lora = t.peft.method in ("lora", "qlora")
    c = _Block(
        m=m, t=t, tp=tp, b=micro_batch if micro_batch is not None else t.micro_batch,
        seq_div=tp if sequence_parallel else 1, full=base_trainable(t.peft.method, t.peft.phase),
        lora=lora, targets=frozenset(t.peft.target_modules) if lora else frozenset(),
        e=prec.act_mm, en=prec.act_norm, esm=prec.act_softmax, amp=prec.weight_copy > 0,
        out=[], te_fp8=is_te(prec), quant=prec,
        gathered=gathered_input if sequence_parallel and tp > 1 else 0, repeat_kv=repeat_kv,
        cp_a2a=cp_a2a, fused_swiglu=fused_swiglu, gathered_per_linear=gathered_per_linear,
    )  # fmt: skip
    mlp_start: int | None = None  # the second norm's first entry, where the MLP half starts
    for i, (lin_in, mods) in enumerate(
        (
            ("attention input", ("q", "k", "v")),
            ("mlp input", ("gate", "up") if m.mlp == "swiglu" else ("up",)),
        )
    ):
        before = len(c.out)
        _norm_and_input(c, i, lin_in, mods, moe=i == 1 and m.is_moe and moe is not False)
        if i == 1 and len(c.out) > before:
            # The MLP half starts with the second norm's entries (or the MLP input's without
            # pre-norms). A block whose MLP reads the first norm's saved output (shared_norm)
            # adds none here: its MLP tensors stay with the attention half, where
            # mlp_half_saved_bytes does not take them off. Measured (simtrain.torchref, the tiny
            # GPT-J, non-flash fp32, full recompute): peak -2.6 % so; -9.1 % with them taken off.
            mlp_start = before
        if i == 0:
            _attention(c)
            _post_norm(c, 1)
        elif m.is_moe and moe is not False:
            quant = c.quant if c.te_fp8 else None
            for name, n_bytes, formula in moe_saved_tensors(m, c.sb, c.e, tp, load, quant=quant,
                                                            etp=etp):  # fmt: skip
                c.add(name, n_bytes, formula)
            if m.dropout > 0:
                c.add("mlp dropout mask", c.sb * m.hidden / c.seq_div, c.seq("1·sbh"))
        else:
            _mlp(c)
        if i == 1:
            _post_norm(c, 2)
    adapter_start = len(c.out)
    if mlp_start is None:  # (no MLP half entries: an empty range)
        mlp_start = adapter_start
    if t.peft.method == "adapter":
        a_w, e, sb, h = t.peft.adapter_size, c.e, c.sb, m.hidden
        for where in ("attn", "mlp"):
            c.add(f"adapter {where}: input, GeLU in/out", e * sb * (h + 2 * a_w),
                  f"{e}·sb(h+2m)")  # fmt: skip
    return tuple(replace(x, part="mlp" if mlp_start <= k < adapter_start else
                         "adapter" if k >= adapter_start else "attention")
                 for k, x in enumerate(c.out))  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Block:
    """What :func:`layer_saved_tensors` needs to count one block, and the list it fills."""

    m: ModelSpec
    t: TrainingSpec
    tp: int
    b: int
    seq_div: int  # tensors outside the TP region (sequence parallelism divides them)
    full: bool  # base weights trainable
    lora: bool
    targets: frozenset
    e: int  # bytes per element around matmuls, norms, softmax
    en: int
    esm: int
    amp: bool  # autocast keeps 16-bit weight copies and casts
    out: list
    # Transformer Engine FP8 (costs.fp8): linears save their input as one column-wise FP8 copy
    # (1 B per value, plus an fp32 scale_inv per tensor or one E8M0 byte per MX block), and
    # LayerNormMLP saves fc1's 16-bit output and the FP8 activation output.
    te_fp8: bool = False
    quant: Precision | None = None  # the precision whose quantized copies TE saves
    # bytes per value of the all-gathered input the column-parallel linears save (0: sharded)
    gathered: int = 0
    repeat_kv: bool = False  # K and V expanded to every query head before SDPA
    cp_a2a: bool = False  # context parallelism's all-to-all around the attention call
    fused_swiglu: bool = False  # SwiGLU as one function saving its input (runtime fused_swiglu)
    gathered_per_linear: bool = False  # each linear saves its own all-gathered copy

    def fp8(self, n: float) -> int:
        """Bytes of the FP8 (FP4) copy TE saves of a linear input of ``n`` values
        (:func:`costs.fp8.fp8_copy_bytes`) with its fp32 ``scale_inv`` where the recipe scales
        per tensor."""
        assert self.quant is not None
        return fp8_copy_bytes(int(n), self.quant) + (0 if self.quant.mx_block else 4)

    def lin_formula(self, what: str) -> str:
        assert self.quant is not None
        return copy_formula(what, self.quant)

    @property
    def sb(self) -> int:
        return self.t.seq_len_effective * self.b

    def add(self, name: str, n_bytes: float, formula: str) -> None:
        self.out.append(SavedTensor(name, int(n_bytes), formula))

    def seq(self, formula: str) -> str:
        """``formula`` of a tensor outside the TP region: "/t" under sequence parallelism."""
        return formula + "/t" if self.seq_div > 1 else formula

    def saves_input(self, module: str) -> bool:
        return self.full or module in self.targets


def _norm_and_input(c: _Block, i: int, lin_in: str, mods: tuple[str, ...],
                    moe: bool = False) -> None:  # fmt: skip
    """A norm's input and statistics, and its output as the input the next linears save. With
    a ``shared_norm`` the MLP's linears take the first norm's output: no second norm, and the
    output is saved once (a 16-bit tensor is the same storage for both branches; autocast casts
    an fp32 one once per linear, FP8 and all-gathered copies are per linear as before).
    An MoE block's (``moe``) under TE FP8: the router keeps its 16-bit input (Megatron-Core
    ``RouterGatingLinearFunction.forward``: ``ctx.save_for_backward(inp, weight, bias)``,
    moe/moe_utils.py l.1382 at d98e8a64), the shared experts' fc1 its FP8 copy."""
    sb, h, e = c.sb, c.m.hidden, c.e
    stats = norm_stats_per_token(c.m)
    users = [mod for mod in mods if c.saves_input(mod)]
    if i == 1 and c.m.shared_norm:  # the MLP's linears take norm1's output
        plain = not (c.te_fp8 or c.gathered or c.amp)
        if plain and any(c.saves_input(mod) for mod in ("q", "k", "v")):
            return  # the tensor the attention's linears keep already
    elif c.m.pre_norms:  # (without them, OLMo 2: the linears take the residual stream)
        if i == 0 or not c.m.parallel_residual:  # (parallel: norm2's input is the block's)
            c.add(f"norm{i + 1} input", c.en * sb * h / c.seq_div, c.seq(f"{c.en}·sbh"))
        c.add(f"norm{i + 1} statistics", stats * sb / c.seq_div, c.seq(f"{stats}·sb"))
    if users and c.te_fp8 and moe:
        c.add(f"{lin_in} (router)", e * sb * h / c.seq_div, c.seq(f"{e}·sbh"))
        if c.m.shared_experts:
            c.add(f"{lin_in} (shared experts), FP8", c.fp8(sb * h / c.seq_div),
                  c.lin_formula(c.seq("sbh")))  # fmt: skip
    elif users and c.te_fp8:
        c.add(f"{lin_in} ({', '.join(users)}), FP8", c.fp8(sb * h / c.seq_div),
              c.lin_formula(c.seq("sbh")))  # fmt: skip
    elif users and c.gathered:
        # DTensor TP (tp_gathered_input_bytes): the Replicate input the linears share, whole;
        # under per-linear redistribution each linear's own gathered copy
        copies = len(users) if c.gathered_per_linear else 1
        c.add(f"{lin_in} ({', '.join(users)}), all-gathered", copies * c.gathered * sb * h,
              f"{copies * c.gathered}·sbh")  # fmt: skip
    elif users:
        # autocast casts the fp32 norm output once per linear that uses it.
        copies = len(users) if c.amp else 1
        c.add(f"{lin_in} ({', '.join(users)})", copies * e * sb * h / c.seq_div,
              c.seq(f"{copies * e}·sbh"))  # fmt: skip


def _post_norm(c: _Block, i: int) -> None:
    """Gemma-2's sandwich norm on branch ``i``'s output (``post_norms``): its input, the
    branch's output in the norms' dtype (an fp32 copy under autocast; after the TP
    reduction, s/t tokens under sequence parallelism), and its statistics (measured with
    simtrain.torchref: a pre-norm's tensors)."""
    if not c.m.post_norms:
        return
    sb, h = c.sb, c.m.hidden
    stats = norm_stats_per_token(c.m)
    c.add(f"post-norm{i} input", c.en * sb * h / c.seq_div, c.seq(f"{c.en}·sbh"))
    c.add(f"post-norm{i} statistics", stats * sb / c.seq_div, c.seq(f"{stats}·sb"))


def _qk_norms(c: _Block) -> None:
    """The q and k norms (``qk_norm``): each keeps its input, the projection's output in the
    norms' dtype (an fp32 copy under autocast), and an fp32 rstd per row it normalises: per
    token and head (``qk_norm_width`` "head") or per token ("full")."""
    m = c.m
    if not m.qk_norm:  # (none on MLA: spec.model refuses them)
        return
    parts = qk_norm_bytes(m, c.en, c.sb, c.tp).values()
    c.add("q / k norm inputs", sum(x for x, _ in parts), f"{c.en}·sb(q+kv)/t")
    full = m.qk_norm_width == "full"
    c.add("q / k norm statistics", sum(st for _, st in parts),
          "4·sb·2" if full else "4·sb(a+a_kv)/t")  # fmt: skip


def qk_norm_bytes(m: ModelSpec, en: int, sb: int, tp: int) -> dict[str, tuple[float, float]]:
    """What each q / k norm keeps, {"q": (input, statistics), "k": ...}: its input, the
    projection's output in the norms' dtype ``en`` (q_dim or kv_dim wide, /tp), and an fp32
    rstd per row it normalises: per token and head (``qk_norm_width`` "head", heads/tp rows)
    or per token ("full")."""
    full = m.qk_norm_width == "full"
    return {name: (en * sb * width / tp, 4 * sb if full else 4 * sb * heads / tp)
            for name, width, heads in (("q", m.q_dim, m.heads), ("k", m.kv_dim, m.kv_heads))}  # fmt: skip


def _attention(c: _Block) -> None:
    """The attention core (flash or not), the out-projection input, LoRA and dropout."""
    _qk_norms(c)
    m, t, tp, e, b = c.m, c.t, c.tp, c.e, c.b
    s, s_kv, sb, h, a, kv = t.seq_len_effective, t.kv_len, c.sb, m.hidden, m.heads, m.kv_dim
    # Q, K and V widths: h, kv, kv unless head_size or MLA (DeepSeek-V2 §2.1) set them.
    variant = m.is_mla or bool(m.head_size)
    q, vw = (m.q_dim, m.v_dim) if variant else (h, h)
    kv_v = m.kv_heads * m.v_head_dim if m.is_mla else kv
    if c.repeat_kv and not m.is_mla:  # SDPA is given (and saves) K and V at every head
        kv = kv_v = m.heads * m.head_dim
    if m.is_mla:
        # The latents (HF DeepseekV3Attention): q_a / kv_a outputs as their RMSNorms' inputs
        # (+ fp32 rstd) and the normed latents as q_b / kv_b inputs; replicated over TP.
        lat = 2 * (m.q_lora_rank + m.kv_lora_rank)
        stats = 4 * sb * (2 if m.q_lora_rank else 1)
        c.add("MLA latents (norm inputs, q_b / kv_b inputs)", e * sb * lat + stats,
              f"{e}·sb·2(q_lora + kv_lora) + 4·sb·2")  # fmt: skip
    if m.flash_attention:
        # K and V with the prefix's keys (prefix tuning: s + p; the kernel saves what it is
        # given; measured, a review of 2026-12-05). Context parallelism's other shards are not
        # saved here (ring attention sends them again in the backward)
        kv_s = (s + t.prefix_len) / s
        c.add("q, k, v (flash attention)", e * sb * (q + (kv + kv_v) * kv_s) / tp,
              f"{e}·sb(h+2h)/t" if c.repeat_kv else f"{e}·sb(h+2kv)/t")  # fmt: skip
        if m.qkv_layout == "fused_kv_copy" and m.kv_heads == m.heads:
            c.add("fused qkv storage behind the saved q", e * sb * 2 * kv / tp, f"{e}·sb·2kv/t")
        # The kernel saves its output for its own backward; the out-projection's input is the
        # same storage. Selective recompute re-runs the kernel: its logsumexp goes, the output
        # stays where the out-projection keeps it for its weight gradient (measured:
        # simtrain.torchref.measure_step, 4,198,400 B a layer with and without flash).
        kept = c.saves_input("o") and not c.te_fp8
        c.add("out-projection input (the flash attention output)" if kept
              else "attention output (flash)", e * sb * vw / tp, f"{e}·sbh/t")  # fmt: skip
        if kept and c.cp_a2a:  # TE's out_part, saved before the output's all-to-all (costs.cp)
            c.add("attention output before the CP all-to-all (flash)", e * sb * vw / tp,
                  f"{e}·sbh/t")  # fmt: skip
        c.add("attention logsumexp (flash)", 4 * b * a * s / tp, "4·bas/t")
    else:
        # q and k^T saved by QK^T, v by att@v; GQA expands k and v to all heads.
        kv_s = s_kv / s
        if variant:
            c.add("q, k, v", e * sb * (q + (q + vw) * kv_s) / tp, f"{e}·sb(q+k+v)/t")
        else:
            c.add("q, k, v", e * sb * h * (1 + 2 * kv_s) / tp, f"{e}·sbh·3/t")
        if m.attention_softcap:  # c·tanh(x/c) of the scores: the tanh keeps its output
            c.add("soft-capped scores", e * b * a * s * s_kv / tp, f"{e}·as²b/t")
        c.add("softmax output", c.esm * b * a * s * s_kv / tp, f"{c.esm}·as²b/t")
        if m.drops_attention:
            c.add("attention dropout mask", b * a * s * s_kv / tp, "1·as²b/t")
            c.add("attention dropout output", e * b * a * s * s_kv / tp, f"{e}·as²b/t")
        elif c.amp:
            c.add("attention probabilities, 16-bit copy", e * b * a * s * s_kv / tp,
                  f"{e}·as²b/t")  # fmt: skip
    if c.saves_input("o") and c.te_fp8:
        # TE's proj Linear keeps its own FP8 copy of the attention output (which the fused
        # attention saves too, in 16 bits, above).
        c.add("out-projection input, FP8", c.fp8(sb * vw / tp), c.lin_formula("sbh/t"))
    elif c.saves_input("o") and not m.flash_attention:
        # With SDPA the (b, s, a, d) output is already laid out as the out-projection's
        # input: one storage, counted above (measured: simtrain.torchref.measure).
        c.add("out-projection input", e * sb * vw / tp, f"{e}·sbh/t")
    if c.lora:
        for mod in sorted(c.targets & {"q", "k", "v", "o"}):
            c.add(f"lora {mod}: x·A", e * sb * t.peft.rank, f"{e}·sbr")
    if m.dropout > 0:
        c.add("attention residual dropout mask", sb * h / c.seq_div, c.seq("1·sbh"))


def _mlp(c: _Block) -> None:
    """The MLP's activation inputs and outputs, the down-projection input, LoRA, dropout."""
    m, tp, e, sb, f = c.m, c.tp, c.e, c.sb, c.m.ffn_hidden
    if c.te_fp8:
        # TE LayerNormMLP: fc1_out in 16 bits (gate and up for SwiGLU), act_out in FP8.
        n_fc1 = 2 if m.mlp == "swiglu" else 1
        c.add("fc1 output (activation input)", n_fc1 * e * sb * f / tp, f"{n_fc1 * e}·sbf/t")
        if c.saves_input("down"):
            c.add("down-projection input, FP8", c.fp8(sb * f / tp), c.lin_formula("sbf/t"))
    elif m.mlp == "swiglu" and c.fused_swiglu:
        # Megatron-Core's SwiGLUFunction saves its input, the fc1 output (gate and up in one
        # tensor), and recomputes silu in the backward (core/fusions/fused_bias_swiglu.py)
        c.add("fc1 output (SwiGLU input: gate, up)", 2 * e * sb * f / tp, f"{2 * e}·sbf/t")
    elif m.mlp == "swiglu":
        c.add("gate output (SiLU input)", e * sb * f / tp, f"{e}·sbf/t")
        c.add("SiLU output and up output", 2 * e * sb * f / tp, f"{2 * e}·sbf/t")
    elif m.mlp == "gelu":
        c.add("up output (GeLU input)", e * sb * f / tp, f"{e}·sbf/t")
    else:
        # ReLU's backward reads its output (aten threshold_backward(grad, result, 0)), and so
        # does squared ReLU's square (its input is ReLU's output): one tensor, which under
        # plain ReLU is the down-projection's input too (one storage, counted once).
        c.add("ReLU output", e * sb * f / tp, f"{e}·sbf/t")
    if c.saves_input("down") and not c.te_fp8 and m.mlp != "relu":
        c.add("down-projection input", e * sb * f / tp, f"{e}·sbf/t")
    if c.lora:
        # (a GeLU MLP has no gate: no adapter there, as the parameter count has none)
        present = {"gate", "up", "down"} if m.mlp == "swiglu" else {"up", "down"}
        for mod in sorted(c.targets & present):
            c.add(f"lora {mod}: x·A", e * sb * c.t.peft.rank, f"{e}·sbr")
    if m.dropout > 0:
        c.add("mlp dropout mask", sb * m.hidden / c.seq_div, c.seq("1·sbh"))


@lru_cache(maxsize=4096)
def layer_activation_bytes(
    m: ModelSpec,
    t: TrainingSpec,
    tp: int = 1,
    sequence_parallel: bool = False,
    moe: bool | None = None,
    load: float = 1.0,
    gathered_input: int = 0,
    repeat_kv: bool = False,
    cp_a2a: bool = False,
    etp: int = 0,
    fused_swiglu: bool = False,
    gathered_per_linear: bool = False,
) -> int:
    """Bytes one block keeps for backward per micro-batch, with recompute applied: the sum of
    :func:`layer_saved_tensors` (with the runtime's ``gathered_input``, ``repeat_kv``,
    ``cp_a2a`` and ``fused_swiglu``) that the recompute keeps.

    full: only the block input is kept (Chen et al. 2016; Korthikanti 2022 §4.3: 2sbh in 16 bit);
    selective: the attention core is recomputed, so its s² tensors are dropped (Korthikanti §4.3);
    selective_op: torchtitan's per-op policy keeps its input and the outputs of every other
    matmul, SDPA and reduce-scatter (:mod:`costs.op_sac`).
    """
    saved = layer_saved_tensors(m, t, tp=tp, sequence_parallel=sequence_parallel, moe=moe,
                                load=load, gathered_input=gathered_input,
                                repeat_kv=repeat_kv, cp_a2a=cp_a2a, etp=etp,
                                fused_swiglu=fused_swiglu,
                                gathered_per_linear=gathered_per_linear)  # fmt: skip
    if not saved:
        return 0
    if t.recompute == "full":
        return layer_input_bytes(m, t, tp, sequence_parallel)
    if t.recompute == "selective_op":
        return sum(n for _, n, _ in op_sac.saved_tensors(m, t, tp, sequence_parallel))
    if t.recompute == "selective":
        drop = selective_dropped(m, t, moe)
        saved = [x for x in saved if not x.name.startswith(drop)]
        qk = selective_qk_fp32_bytes(m, t, tp) if "core_attn" in t.selective_modules else 0
        return sum(x.bytes for x in saved) + qk
    return sum(x.bytes for x in saved)


#: The saved tensors (by name prefix, :func:`layer_saved_tensors`) each module of Megatron's
#: selective recompute drops: core_attn the attention core's (Korthikanti et al. 2022 §4.3);
#: moe_act the experts' activation output, fc2's input (experts.py: the activation under
#: CheckpointWithoutOutput, its output discarded once fc2 has run); mla_up_proj the up-projected
#: and rotated q, k, v (multi_latent_attention.py, the up projections and RoPE); layernorm the
#: outputs of the norms that are modules of their own, which the following linears saved (an MoE
#: block's pre-MLP norm, MLA's input norm; the others are fused into TE's LayerNormLinear and
#: stay: transformer_layer.py recompute_input_layernorm / recompute_pre_mlp_layernorm only where
#: the norm is no IdentityOp, gpt_layer_specs.py at d98e8a64). Not modelled: mla_up_proj also
#: drops the normed latents where Megatron fuses the latent norms into the up-projections
#: (DeepSeek-V3's spec: ~3-12 % of what it drops, kept here), and Megatron keeps the MoE
#: pre-MLP norm's output where the router is in a per-layer CUDA graph without the preprocess.
_SELECTIVE_DROPS = {
    "core_attn": ("softmax output", "attention dropout", "attention probabilities",
                  "attention output", "attention logsumexp"),
    "moe_act": ("expert fc2 input",),
    "mla_up_proj": ("q, k, v",),
}  # fmt: skip


def selective_dropped(m: ModelSpec, t: TrainingSpec, moe: bool | None = None) -> tuple[str, ...]:
    """Name prefixes of the saved tensors selective recompute drops from one block
    (``moe``: as :func:`layer_saved_tensors`), :data:`_SELECTIVE_DROPS` by
    ``TrainingSpec.selective_modules``. Not counted: the recomputed outputs of the one block
    whose backward runs (at most its dropped bytes, beside the walk's backward state)."""
    mods = t.selective_modules
    out: tuple[str, ...] = ()
    for mod in mods:
        out += _SELECTIVE_DROPS.get(mod, ())
    if "layernorm" in mods:
        if m.is_mla:
            out += ("attention input",)
        if m.is_moe and moe is not False:
            out += ("mlp input",)
    return out


def selective_qk_fp32_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """What selective recompute keeps more with q / k norms under autocast: a norm's output is
    fp32 there (its fp32 weight times the normalised 16-bit input: transformers' Qwen3 / OLMo 2
    / Gemma 3 RMSNorm, the reference's), rotary keeps it, and the checkpointed core keeps its
    inputs as given, q and k in fp32, where without recompute the kernel saves its own 16-bit
    casts: (act_norm − act_mm)·sb(q + kv)/t. Measured with simtrain.torchref (a review of
    2026-12-05: 2·sb(q + kv) B a block short under amp_bf16)."""
    prec = t.precision_spec
    if not m.qk_norm or prec.act_norm <= prec.act_mm:
        return 0
    sb = t.seq_len_effective * t.micro_batch
    return (prec.act_norm - prec.act_mm) * sb * (m.q_dim + m.kv_dim) // tp


def attention_backward_working_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """What a block's backward holds for a non-flash attention core beside the tensors the
    block saved: the softmax's backward writes the scores' gradient (b·a·s·s_kv at the
    softmax's element size) while the saved probabilities are alive; under selective
    recompute also the re-run core's probabilities and dropout mask (the forward did not keep
    them). Measured with simtrain.torchref.measure_step: the step's
    peak is inside ``aten._softmax_backward_data`` (a review, 2026-12-05: peaks 8-26 % short at
    seq 256-512 without this). 0 with flash attention (its backward keeps no s² tensor) and
    where no gradient flows through the blocks."""
    if m.flash_attention or not grad_flows_through_blocks(t):
        return 0
    prec = t.precision_spec
    bas = t.micro_batch * m.heads * t.seq_len_effective * t.kv_len // tp
    held = prec.act_softmax * bas  # the scores' gradient beside the saved probabilities
    if "core_attn" in t.selective_modules:  # the re-run core's probabilities and dropout mask
        held += prec.act_softmax * bas + (bas if m.drops_attention else 0)
    return held


#: Tensors of b·s·f/t values a dense MLP's backward holds beyond what its block saved, at its
#: fullest (the activation function's backward), by ``ModelSpec.mlp``. Counted from PyTorch
#: autograd's rules, each saved tensor freed when the last node that saved it has run:
#: GeLU: the down-projection's backward writes the gradient of its input and frees that input
#: (only it saved GeLU's output), then GeLU's backward writes the gradient of its input while
#: that gradient is alive: 1. SwiGLU: the down-projection frees the product silu(g)·u, whose
#: gradient stays alive while the product's backward writes the gradients of silu(g) and of u:
#: 2 (Megatron's fused SwiGLU writes the two as one 2f-wide tensor: 2 as well). ReLU: its output
#: is also the down-projection's saved input, so nothing is freed before ReLU's backward writes
#: the gradient of its input beside the output's: 2. Squared ReLU: the square's backward
#: (aten pow_backward: grad · 2 · x, two intermediates) writes beside the down-projection
#: input's gradient: 3 at its fullest. One more where the down-projection saves no input (its
#: weight frozen and not adapted: LoRA elsewhere), so that nothing is freed before the
#: activation's backward (but under ReLU, whose output ReLU keeps itself). Measured with
#: simtrain.torchref (tests/test_memory_vs_measure.py, full recompute: the step's peak is
#: inside a re-materialised block's MLP backward).
MLP_BACKWARD_TEMPORARIES = {"gelu": 1, "swiglu": 2, "relu": 2, "relu2": 3}


def mlp_backward_working_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """What a dense block's MLP backward holds beside the block's saved tensors: the
    :data:`MLP_BACKWARD_TEMPORARIES` gradients of b·s·f/t values in the activations' dtype,
    at the activation function's backward. 0 where no gradient flows through the blocks and
    for a model with routed experts (their grouped backward is not modelled here: its
    temporaries are those of the routed tokens, not b·s·f)."""
    if m.is_moe or not grad_flows_through_blocks(t):
        return 0
    k = MLP_BACKWARD_TEMPORARIES[m.mlp]
    adapted = t.peft.target_modules if t.peft.method in ("lora", "qlora") else ()
    if m.mlp != "relu" and not (base_trainable(t.peft.method, t.peft.phase) or "down" in adapted):
        k += 1  # the down-projection saved no input: nothing freed before the activation's
    return k * t.precision_spec.act_mm * t.micro_batch * t.seq_len_effective * m.ffn_hidden // tp


def mlp_half_saved_bytes(saved: tuple[SavedTensor, ...] | list[SavedTensor]) -> int:
    """The MLP half of a block's saved tensors (:func:`layer_saved_tensors` lists the attention
    half first, then from the second norm's entry, or the MLP input's without pre-norms, the
    MLP's; adapters apart): what the MLP's and the second norm's backwards have freed when the
    attention core's backward runs. 0 where the list has no such entry (a parallel block with
    one shared norm, whose MLP input is the attention's: the core's moment is then taken beside
    everything saved, an over-count)."""
    return sum(x.bytes for x in saved if x.part == "mlp")


def frozen_input_savings(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False) -> int:
    """With frozen embeddings (LoRA, QLoRA, adapters, prefix tuning) the first block's input needs
    no gradient, so its first norm (frozen too) saves nothing: its input and statistics are not
    kept (autograd saves only what a gradient needs; measured with simtrain.torchref.measure).
    Under full (or per-op selective) recompute the block keeps its checkpointed input, so
    nothing is saved."""
    if rematerialises(t):
        return 0
    return _frozen_first_norm_bytes(m, t, tp, sp) + _frozen_first_qk_norm_bytes(m, t, tp)


def _frozen_first_qk_norm_bytes(m: ModelSpec, t: TrainingSpec, tp: int) -> int:
    """The first block's q / k norms (``qk_norm``, frozen) save nothing when their input needs no
    gradient: the q (k) projection's output on frozen embeddings, unless LoRA adapts that
    projection (its adapter's output needs one). Each dropped norm's input (q_dim or kv_dim
    wide, /tp) and statistics (a row per token and head, or per token with ``qk_norm_width``
    full), as :func:`_qk_norms` counts them. Measured with simtrain.torchref (a review,
    2026-12-05: 34,816 B too many on the tiny Llama with per-head norms and LoRA on q and v, fp32)."""
    if not m.qk_norm or not embeddings_frozen(t):
        return 0
    adapted = t.peft.target_modules if t.peft.method in ("lora", "qlora") else ()
    sb = t.seq_len_effective * t.micro_batch
    parts = qk_norm_bytes(m, t.precision_spec.act_norm, sb, tp)
    return int(sum(x + st for name, (x, st) in parts.items() if name not in adapted))


def embeddings_frozen(t: TrainingSpec) -> bool:
    """Does the first block's input need no gradient? Under LoRA, QLoRA, adapters and prefix
    tuning the embeddings are frozen (prompt tuning's soft tokens train, linear probing has
    no gradient through the blocks at all)."""
    return t.peft.method in ("lora", "qlora", "adapter", "prefix")


def _frozen_first_norm_bytes(m: ModelSpec, t: TrainingSpec, tp: int, sp: bool) -> int:
    """The first norm's input and statistics, which the first block does not save when its
    input needs no gradient (:func:`frozen_input_savings`), 0 when it does."""
    if not embeddings_frozen(t) or not m.pre_norms:
        return 0  # (no first norm without pre-norms: OLMo 2's block saves none to drop)
    return norm_saved_bytes(m, t, t.seq_len_effective * t.micro_batch, tp if sp else 1)


def tp_gathered_input_bytes(precision: str, tp_saves_gathered_input: bool) -> int:
    """Bytes per value of the all-gathered input a column-parallel linear saves under sequence
    parallelism (0: none, Megatron's rule). PyTorch DTensor TP (runtime
    ``tp_saves_gathered_input``; torchtitan 9dec370a ``parallelize_llama.py`` l.172-192):
    ``PrepareModuleInput`` redistributes the norm's Shard(1) output to Replicate before
    ``attention`` and ``feed_forward``, and the ``ColwiseParallel`` wq/wk/wv (w1/w3) linears run
    on, and autograd saves, that whole b·s·h tensor. With torchao float8 tensorwise
    (``PrepareFloat8ModuleInput``, ``Float8ColwiseParallel``: 9dec370a l.147-160; 820504e
    ``enable_float8_tensorwise_tp`` only for tensorwise) the input is cast before the
    all-gather and the float8 tensor is what is saved: 1 B (``costs.fp8.torchao_tp_float8``);
    other precisions the activation dtype."""
    if not tp_saves_gathered_input:
        return 0
    return 1 if torchao_tp_float8(precision, True) else PRECISIONS[precision].act_mm


def layer_input_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False) -> int:
    """The checkpoint a fully recomputed block keeps: its input, b·s·h in the residual dtype."""
    prec = t.precision_spec
    s = t.seq_len_effective
    return prec.act_norm * t.micro_batch * s * m.hidden // (tp if sp else 1)


def recompute_working_set_bytes(m: ModelSpec, t: TrainingSpec, layers: int, embedding: bool,
                                head: bool, tp: int = 1, sp: bool = False,
                                load: float = 1.0, gathered_input: int = 0,
                                repeat_kv: bool = False, cp_a2a: bool = False,
                                etp: int = 0, fused_swiglu: bool = False,
                                gathered_per_linear: bool = False,
                                loss_apart: bool = False,
                                loss_in_chunk: bool = True) -> int:  # fmt: skip
    """What full recompute adds, during a chunk's backward, to the activations its chunk holds
    (0: no recompute, or no decoder layer to re-materialise). Measured on the reference model
    (simtrain.torchref, ``torch.utils.checkpoint`` non-reentrant): one block at a time is
    re-materialised, so the most is one block's saved tensors (:func:`layer_saved_tensors`)
    but for its first norm's input, which *is* the checkpointed block input the chunk already
    holds (the same storage: counting it again made full recompute raise a one-block stage's
    activations above recompute none). On the first chunk of a frozen-embedding PEFT run the
    first block's norm saves neither input nor statistics, so a one-block chunk
    re-materialises less. On the chunk holding the head, the gradient of the last block's
    output (shaped like a block input) is alive too, and the head's saved tensors
    (:func:`head_saved_bytes`; without the loss's where it runs on a later chunk,
    ``loss_apart``) were freed by the head's backward before the first block is
    re-materialised; on any other chunk that gradient is the p2p receive buffer, counted under
    buffers (``costs.memory._buffers``). Negative where the head's freed tensors outweigh the
    re-materialised block (the walk's floor at 0 is the caller's, after it adds the backward's
    temporaries: ``costs.memory._stage_activations``). ``loss_in_chunk``: see
    :func:`head_backward_delta`.
    Per-op selective (:mod:`costs.op_sac`): the same, less what autograd saves in the recomputed
    forward that is a kept storage (:func:`costs.op_sac.held_by_recompute`)."""
    if not rematerialises(t) or not layers:
        return 0
    saved = layer_saved_tensors(m, t, tp=tp, sequence_parallel=sp, load=load,
                                gathered_input=gathered_input, repeat_kv=repeat_kv,
                                cp_a2a=cp_a2a, etp=etp, fused_swiglu=fused_swiglu,
                                gathered_per_linear=gathered_per_linear)  # fmt: skip
    if not saved:
        return 0
    block_input = layer_input_bytes(m, t, tp, sp)
    not_held = block_input if _first_saved_is_block_input(m, t) else 0
    if t.recompute == "selective_op":
        not_held += op_sac.held_by_recompute(m, t, tp)
    if embedding and layers == 1:
        not_held = max(not_held, _frozen_first_norm_bytes(m, t, tp, sp))
    ws = sum(x.bytes for x in saved) - not_held
    if head:
        ws += head_backward_delta(m, t, tp, sp, gathered_input, loss_apart, loss_in_chunk)
    return ws


def head_backward_delta(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False,
                        gathered_input: int = 0, loss_apart: bool = False,
                        loss_in_chunk: bool = True) -> int:  # fmt: skip
    """The change in what the head's chunk holds from the end of its forward to after the
    head's backward (usually negative): the head's saved tensors (:func:`head_saved_bytes`)
    are freed, but the loss's where the chunk does not hold them (it runs on a later chunk,
    ``loss_apart``: its cross-entropy's; or DataParallel's GPU 0 keeps the whole batch's loss
    apart, ``loss_in_chunk`` false: :func:`loss_saved_bytes`), and the gradient of the last
    block's output (shaped like a block input) is alive."""
    freed = head_saved_bytes(m, t, tp, sp, gathered_input)
    if not loss_in_chunk:
        freed -= loss_saved_bytes(m, t, tp)
    elif loss_apart:
        freed -= cross_entropy_saved_bytes(m, t, tp)
    return layer_input_bytes(m, t, tp, sp) - freed


def _first_saved_is_block_input(m: ModelSpec, t: TrainingSpec) -> bool:
    """Is the block's first saved tensor its input's own storage, which the checkpoint holds
    already? The first norm's input is (the norm runs in the residual's dtype); without
    pre-norms (OLMo 2) the q / k / v linears save their input, the block input itself only
    when they run in its dtype: autocast (and FP8) saves a cast copy, a storage of its own
    (measured with simtrain.torchref: amp_bf16's re-materialised OLMo 2 block keeps 4·sbh
    more than its pre-norm twin's accounting gave)."""
    if m.pre_norms:
        return True
    prec = t.precision_spec
    return prec.act_mm == prec.act_norm and not prec.gemm_dtype


#: Bytes per token of the per-row tensors Megatron's vocab-parallel cross-entropy saves beside
#: the softmax: ``target_mask`` (bool) and ``masked_target_1d`` (int64)
#: (core/tensor_parallel/cross_entropy.py calculate_predicted_logits and
#: _VocabParallelCrossEntropy.forward's save_for_backward, d98e8a64).
VOCAB_PARALLEL_ROW_SAVED_BYTES = 1 + 8
#: Bytes per token of Transformer Engine's parallel_cross_entropy row tensors
#: (transformer_engine/pytorch/triton/cross_entropy.py cross_entropy_forward): ``loss_1d``
#: (fp32) and ``m_d_X_y``, the row's max, sum of exponentials and target logit in fp32, which
#: a TP group all-gathers (``m_d_X_y_gathered``, x tp; costs.comm prices that gather).
TE_LOSS_ROW_BYTES = 4
TE_LOSS_ROW_STATS_BYTES = 3 * 4


def loss_saved_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """What the loss saves for backward, per micro-batch (:func:`head_saved_bytes`): the
    cross-entropy's (:func:`cross_entropy_saved_bytes`) and, with ``logit_softcap``, Gemma-2's
    final soft-capping c·tanh(logits/c), whose tanh keeps its output (:func:`softcap_saved_bytes`;
    measured with simtrain.torchref)."""
    return softcap_saved_bytes(m, t, tp) + cross_entropy_saved_bytes(m, t, tp)


def cross_entropy_saved_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """What cross-entropy itself saves for backward, per micro-batch: standard 4·sbV/t (the
    log-softmax on the fp32 copy; without ``loss_upcast`` in the logits' dtype:
    :func:`loss_value_bytes`), fused act_mm·sbV/t + 4·sb; vocab_parallel (Megatron) the fp32
    softmax 4·sbV/t and 9·sb of row tensors; te (Transformer Engine through 2.17) the 16-bit
    logits the kernel overwrote with their gradient, act_mm·sbV/t; sharded (nanotron) as
    vocab_parallel, its shifted copy of the fp32 input. Where the loss runs on a
    later chunk than the LM head (nanotron's split), this moves with it; the soft-capping stays
    with the head."""
    sb = t.seq_len_effective * t.micro_batch
    act = t.precision_spec.act_mm
    if t.cross_entropy == "fused":
        return act * sb * m.vocab // tp + 4 * sb
    if t.cross_entropy == "te":
        # TransformerEngine transformer_engine/pytorch/cross_entropy.py CrossEntropyFunction:
        # ``ctx.save_for_backward(inp)`` after triton/cross_entropy.py cross_entropy_forward
        # wrote the gradient into ``_input`` (``return loss, _input``; TE 36f2dfd28, through
        # v2.17). From v2.18 (01bbe3eea, 2026-07-09) the gradient is a new fp32 tensor, whose
        # memory is vocab_parallel's.
        return act * sb * m.vocab // tp
    if t.cross_entropy in MEGATRON_KERNEL_LOSSES:
        # ``ctx.save_for_backward(exp_logits, target_mask, masked_target_1d)``: exp_logits is
        # the fp32 copy (Megatron: ``vocab_parallel_logits.float()``; nanotron:
        # ``sharded_logits - logits_max``), exp'd and divided in place
        return 4 * sb * m.vocab // tp + VOCAB_PARALLEL_ROW_SAVED_BYTES * sb
    return loss_value_bytes(t) * sb * m.vocab // loss_vocab_shards(t.cross_entropy, tp)


def softcap_saved_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """The tanh output Gemma-2's final soft-capping keeps for its backward, per micro-batch
    (:func:`loss_saved_bytes` counts it with the loss; 0 without ``logit_softcap``): the logits'
    dtype, split like them. With the LM head (which runs the capping) on its own stage it stays
    there (:func:`loss_apart_bytes`)."""
    if not m.logit_softcap:
        return 0
    sb = t.seq_len_effective * t.micro_batch
    return t.precision_spec.act_mm * sb * m.vocab // loss_vocab_shards(t.cross_entropy, tp)


def head_saved_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False,
                     gathered_input: int = 0) -> int:  # fmt: skip
    """Last stage, per micro-batch: final-norm input, head input, and what cross-entropy saves:
    standard, the fp32 log-softmax output (4·sbV/t; Korthikanti 2022 §4.2 counts fp32 logits
    4sbv/t); fused (flash-attn ``losses/cross_entropy.py``: ``ctx.save_for_backward(logits,
    lse, labels)``), the logits in the matmul dtype plus one fp32 log-sum-exp per row.
    ``gathered_input`` (DTensor TP, :func:`tp_gathered_input_bytes`): the head is a
    ``ColwiseParallel(input_layouts=Shard(1))`` linear (torchtitan 9dec370a
    ``parallelize_llama.py`` l.136-140) that saves its all-gathered input whole, in the
    activation dtype (torchtitan's float8 converter skips ``output``)."""
    prec = t.precision_spec
    s = t.seq_len_effective
    sb = s * t.micro_batch
    div = tp if sp else 1
    total = loss_saved_bytes(m, t, tp)
    if grad_flows_through_blocks(t):
        total += norm_saved_bytes(m, t, sb, div)
    probe = t.peft.method == "linear_probe" or (
        t.peft.method == "lp_ft" and t.peft.phase == "probe"
    )
    if base_trainable(t.peft.method, t.peft.phase) or probe:
        total += prec.act_mm * sb * m.hidden // (1 if gathered_input and tp > 1 else div)
    return total


def mtp_saved_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False,
                    gathered_input: int = 0) -> int:  # fmt: skip
    """What the multi-token-prediction modules the step trains save per micro-batch beside their
    transformer blocks (counted as blocks of the head's chunk): per module, what the main
    model's final norm, output layer and loss save (:func:`head_saved_bytes`: its final norm,
    the shared output layer on its tokens, its loss), eh_proj's 2h-wide input and the enorm and
    hnorm inputs with their statistics (Megatron-Core ``MultiTokenPredictionLayer``)."""
    n = trained_mtp_modules(m, t)  # full training only: gradients flow through every block
    if not n:
        return 0
    prec = t.precision_spec
    sb = t.seq_len_effective * t.micro_batch
    div = tp if sp else 1
    own = (prec.act_mm * sb * 2 * m.hidden + 2 * norm_saved_bytes(m, t, sb)) // div
    return n * (head_saved_bytes(m, t, tp, sp, gathered_input) + own)


def loss_transient_bytes(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """Working memory of the loss on the last stage beyond what is saved. Standard: the 16-bit
    logits and their fp32 copy in forward (fp32 training: the logits themselves), then the
    gradient of the log-softmax output and of the logits in backward: about 2 fp32 b·s·V/t
    tensors at once; PyTorch's loss_parallel three. Fused: the forward keeps only the saved
    logits; the backward writes one logit gradient in the matmul dtype (flash-attn ``xentropy``
    backward, not in place). vocab_parallel (Megatron): the 16-bit logits beside the saved fp32
    copy, act_mm·sbV/t (0 in fp32). sharded (nanotron): its fp32 input, 4·sbV/t, beside the
    shifted copy it saves (``sharded_logits - logits_max`` out of place; the 16-bit logits are
    gone by then: the cast block's output is the loss block's input, models/llama.py
    LlamaModel.forward_with_hidden_states returns it alone; in the backward the gradient, the
    saved copy, is cast to act_mm beside it, which is less). te: row tensors only (the gradient
    is written in place)."""
    s = t.seq_len_effective
    act = t.precision_spec.act_mm
    if t.cross_entropy == "fused":
        return act * t.micro_batch * s * m.vocab // tp
    if t.cross_entropy == "vocab_parallel":
        # Megatron: the caller's 16-bit logits beside their fp32 copy through the forward (the
        # copy is the saved softmax), then in the backward the gradient (the softmax, in place)
        # cast back to the logits' dtype by autograd; fp32 logits: ``.float()`` is the tensor
        # itself, nothing beside it
        return 0 if act == 4 else act * t.micro_batch * s * m.vocab // tp
    if t.cross_entropy == "sharded":
        return 4 * t.micro_batch * s * m.vocab // tp
    if t.cross_entropy == "te":
        # loss_1d, m_d_X_y and, over a TP group, its all-gathered copy (x tp); the gradient is
        # written in place
        rows = t.micro_batch * s
        stats = TE_LOSS_ROW_STATS_BYTES * rows
        return TE_LOSS_ROW_BYTES * rows + stats + (stats * tp if tp > 1 else 0)
    lb = loss_value_bytes(t)
    if t.cross_entropy == "loss_parallel":
        # PyTorch loss_parallel (torch/distributed/tensor/parallel/loss.py
        # _nll_loss_and_log_softmax_backward, the fused backward of nll_loss and log_softmax):
        # ``grad_input = torch.zeros_like(x)``, then ``(grad_input + torch.exp(x)) *
        # grad_output``: zeros, exp(x) and their sum, then the sum and the product, three fp32
        # b·s·V/t tensors beside the saved log-softmax x (ATen's backward holds two)
        return 3 * lb * t.micro_batch * s * m.vocab // tp
    return 2 * lb * t.micro_batch * s * m.vocab // loss_vocab_shards(t.cross_entropy, tp)


def loss_apart_bytes(sc: Scenario, step: ResolvedStep, ch: StageBlocks,
                      saved: int) -> tuple[int, int]:  # fmt: skip
    """(saved bytes per micro-batch, the loss's working bytes) of a chunk whose split puts the
    loss's parts apart from the LM head (nanotron, ``StageBlocks.loss_apart`` / ``tail``),
    from ``saved`` as the head's rule counted it. The head's chunk: what the cross-entropy
    saves (:func:`cross_entropy_saved_bytes`; a soft-capping's saved tensors stay with the head
    that runs it) and the loss's working memory leave, the logits (e B each) take their place as
    working memory (held until sent; in the backward their gradient arrives the same size);
    they are kept for the backward where the runtime keeps stage outputs
    (``pipeline_keeps_stage_outputs``; nanotron does not: its pipeline state keeps a CPU dummy
    for the backward and drops the sent tensor, parallel/pipeline_parallel/functional.py
    send_to_pipeline_state_buffer at 2411b022). A tail chunk: the fp32 cast saves nothing
    (``x.float()``'s backward needs no tensor) and its fp32 output is kept likewise when the
    loss is on the next chunk; the loss saves what the head's chunk gave up and works as it
    would there (:func:`cross_entropy_saved_bytes`, :func:`loss_transient_bytes`). The received
    logits are not kept (the cast is their only reader). Per TP rank: b·(s/cp)·V/t logits."""
    m, p = sc.model, sc.parallelism
    t = cp_rank_training(sc.training, p.cp)
    keeps = step.pp > 1 and sc.runtime.pipeline_keeps_stage_outputs
    logits = step.logits_bytes // p.tp
    # the cross-entropy's own saved tensors (the soft-capping's, where the model caps, stay with
    # the LM head that runs it)
    loss_saved = cross_entropy_saved_bytes(m, t, p.tp)
    if ch.loss_apart:  # working: the logits until sent, their received gradient after
        return saved - loss_saved + (logits if keeps else 0), logits
    if "loss" in ch.tail:
        return saved + loss_saved, loss_transient_bytes(m, t, p.tp)
    fp32 = step.fp32_logits_bytes // p.tp  # the cast's output, to the loss's chunk
    return saved + (fp32 if keeps else 0), logits + fp32


def loss_value_bytes(t: TrainingSpec) -> int:
    """Bytes of one logit as PyTorch's cross-entropy holds it (its log-softmax output, the
    gradients of the backward): 4 on the caller's fp32 copy (``loss_upcast``), else the
    logits' own dtype (act_mm)."""
    return 4 if t.loss_upcast else t.precision_spec.act_mm


def embedding_saved_bytes(m: ModelSpec, t: TrainingSpec, sp_div: int = 1) -> int:
    """First stage: token ids (int64) for the embedding backward, the embedding norm's input
    and statistics (``embedding_norm``: as the final norm's, :func:`head_saved_bytes`; outside
    any checkpoint, DeepSpeed's PipelineModule._is_checkpointable checkpoints only the
    transformer layers of a GPTModelPipe) and the embedding dropout mask."""
    s = t.seq_len_effective
    sb = s * t.micro_batch
    total = 8 * t.micro_batch * t.seq_len
    if grad_flows_through_blocks(t):
        if m.embedding_norm:
            total += norm_saved_bytes(m, t, sb, sp_div)
        if m.dropout > 0:
            total += sb * m.hidden // sp_div
    return total


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
    before a backward (B or I); ``optimizer_held`` at each optimizer step (all zeros after a
    flush; PipeDream steps after every backward, with other micro-batches still stashed)."""

    chunks: tuple[int, ...]
    forward_held: np.ndarray  # (states, chunks) int64
    forward_chunk: np.ndarray  # (states,) column index
    backward_held: np.ndarray
    backward_chunk: np.ndarray
    optimizer_held: np.ndarray  # (states, chunks)


def _frozen(rows: list, width: int) -> np.ndarray:
    a = np.array(rows, dtype=np.int64).reshape(len(rows), width)
    a.flags.writeable = False
    return a


def merged_pairs_backward_first(actions: list, warmup: int) -> list:
    """Combined 1F1B runs each steady-state forward merged with another micro-batch's backward
    layer by layer: forward layer i of its model chunk beside backward layer L − 1 − i of the
    other's, whose saved tensors are released before the next pair (Megatron-Core
    models/common/model_chunk_schedule_plan.py ``run``: "Phase 1: forward_layer[0] +
    backward_layer[3]", ``b_layer.release_state()`` after each, at d98e8a64; with or without
    pipelining), so a merged pair adds one layer to what was held, not a chunk. The walk
    (whole chunks) takes each such backward before its forward: exact but for that one layer
    (the warm-up forwards, alone, count whole). ``actions``: one rank's compute actions in
    schedule order, ``warmup`` forwards (``schedules.generators.rank_warmup``) and then
    the steady-state pairs, each an F directly before its B."""
    out = list(actions)
    i = warmup
    while i + 1 < len(out) and out[i].kind == "F" and out[i + 1].kind == "B":
        out[i], out[i + 1] = out[i + 1], out[i]
        i += 2
    return out


@lru_cache(maxsize=1024)
def rank_activation_states(name: str, pp: int, m: int, v: int, rank: int,
                           all_warmup: bool = False, group: int = 0) -> ActivationStates:  # fmt: skip
    """One rank's walk reduced to its distinct states (cached per schedule and rank).
    :func:`activation_peak_of_states` on them gives exactly what :func:`activation_peak` gives
    on the whole action list: a repeated state adds nothing to a maximum, and the first
    occurrence of the largest forward state is where the walk's strict "greater than" last
    fires (tested with hypothesis for every schedule and any bytes). Combined 1F1B's list is
    walked with each merged pair's backward first (:func:`merged_pairs_backward_first`)."""
    actions = rank_schedule(name, pp, m, v, rank, all_warmup, group)
    if name == "combined_1f1b":
        actions = merged_pairs_backward_first(actions, rank_warmup(name, rank, pp, m, v, group))
    chunks = tuple(sorted({a.stage for a in actions}))
    index = {c: i for i, c in enumerate(chunks)}
    held = [0] * len(chunks)
    fwd: dict[tuple, None] = {}
    bwd: dict[tuple, None] = {}
    opt: dict[tuple, None] = {}
    for a in actions:
        if a.kind == "OPT":
            opt.setdefault(tuple(held))
            continue
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
        _frozen(list(opt), n),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class WalkPeak:
    """The peak of one rank's activation walk and what makes it up: ``peak = saved + loss +
    working_set`` at the first point where the walk reaches it (a forward of the head chunk
    adds the loss working memory, a backward the recompute working set, never both)."""

    peak: int  # activations + transients at the walk's peak
    saved: int  # saved activations at that point
    loss: int  # loss working memory at that point
    working_set: int  # recompute working set at that point
    saved_peak: int  # the most saved activations at any point
    in_flight: float  # micro-batches in flight at ``saved_peak``, in whole-stage units
    optimizer_saved: int = 0  # the most saved activations at an optimizer step
    # The most activations at any point, saved plus a recompute working set (the category):
    # ``saved_peak`` or more, never ``saved_peak`` plus a working set that comes later.
    activations: int = 0
    # The most saved activations just after a backward (B) ends: its micro-batch's chunk freed.
    after_backward_saved: int = 0
    # (virtual stage, micro-batches it holds) at ``saved_peak``
    held_at_saved_peak: tuple[tuple[int, int], ...] = ()


def walk_peak_of_states(
    states: ActivationStates,
    chunk_bytes: dict[int, int],
    working_set: dict[int, int],
    loss_bytes: dict[int, int] | None = None,
) -> WalkPeak:
    """:func:`activation_peak` over :func:`rank_activation_states` (the same peak), as two
    integer matrix-vector products, with the parts of the peak. Ties go to the first forward
    state, then to the first backward state."""
    loss = loss_bytes or {}
    ch = states.chunks
    per = np.array([chunk_bytes[c] for c in ch], dtype=np.int64)
    fwd = (0, 0, 0, 0)  # (total, saved, loss, working set)
    peak_saved = 0
    peak_count = 0.0
    held_at: tuple[tuple[int, int], ...] = ()
    if len(states.forward_chunk):
        held = states.forward_held @ per
        extra = np.array([loss.get(c, 0) for c in ch], dtype=np.int64)[states.forward_chunk]
        j = int((held + extra).argmax())
        fwd = (int(held[j] + extra[j]), int(held[j]), int(extra[j]), 0)
        i = int(held.argmax())  # the first state with the most saved bytes
        if held[i] > 0:
            peak_saved = int(held[i])
            peak_count = int(states.forward_held[i].sum()) / max(len(chunk_bytes), 1)
            held_at = tuple(zip(ch, (int(x) for x in states.forward_held[i]), strict=True))
    best = fwd
    most = peak_saved
    after_b = 0
    if len(states.backward_chunk):
        held = states.backward_held @ per
        after_b = max(0, int((held - per[states.backward_chunk]).max()))
        ws = np.array([working_set[c] for c in ch], dtype=np.int64)[states.backward_chunk]
        j = int((held + ws).argmax())
        most = max(most, int(held[j] + ws[j]))
        if int(held[j] + ws[j]) > best[0]:
            best = (int(held[j] + ws[j]), int(held[j]), 0, int(ws[j]))
    at_opt = int((states.optimizer_held @ per).max()) if len(states.optimizer_held) else 0
    return WalkPeak(*best, saved_peak=peak_saved, in_flight=peak_count, optimizer_saved=at_opt,
                    activations=most, after_backward_saved=after_b,
                    held_at_saved_peak=held_at)  # fmt: skip


def activation_peak_of_states(
    states: ActivationStates,
    chunk_bytes: dict[int, int],
    working_set: dict[int, int],
    loss_bytes: dict[int, int] | None = None,
) -> tuple[int, int, float]:
    """:func:`activation_peak` over :func:`rank_activation_states` (the same result):
    (peak, saved peak, micro-batches in flight) of :func:`walk_peak_of_states`."""
    w = walk_peak_of_states(states, chunk_bytes, working_set, loss_bytes)
    return w.peak, w.saved_peak, w.in_flight
