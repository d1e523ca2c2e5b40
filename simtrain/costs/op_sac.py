"""torchtitan's per-op selective activation checkpointing (``training.recompute: selective_op``).

The policy (pytorch/torchtitan ``torchtitan/parallelisms/parallelize_llama.py``
``_apply_ac_to_transformer_block`` and ``_save_list`` at 9dec370a, Dec 2024; the same list
without ``aten.abs`` in ``torchtitan/models/llama3/infra/parallelize.py`` at 6f6a8972, Jun 2025;
``selective_ac_option = 'op'`` with ``mode = 'selective'`` is ``train_configs/llama3_8b.toml``'s
default at 9dec370a): every transformer block is wrapped in ``torch.utils.checkpoint``
(non-reentrant, ``ptd_checkpoint_wrapper``) with ``create_selective_checkpoint_contexts``; the
policy marks ``MUST_SAVE`` the outputs of the ops of ``_save_list`` —
``aten.mm``, ``aten._scaled_dot_product_{flash,efficient}_attention``,
``_c10d_functional.reduce_scatter_tensor``, ``aten.max`` (and ``aten.abs`` at 9dec370a) —
except every second ``aten.mm``, and ``PREFER_RECOMPUTE`` everything else. The ``mm`` counter
lives in a ``defaultdict`` created by the ``context_fn`` on every checkpointed call, so it
restarts at 0 for each block and each micro-batch, and it counts forward and recompute calls
separately; the ``n``-th mm of a block's forward is saved when ``n`` is odd. (torchtitan at
b5bcd76c, Aug 2026, ``torchtitan/distributed/activation_checkpoint.py`` ``SelectiveAC``, keeps
the same counter over ``aten.mm`` and ``aten.linear`` and a wider save list.)

An ``nn.Linear`` on a 3-D input dispatches ``aten.mm`` once (``linear`` -> ``matmul`` -> view,
``mm``, ``_unsafe_view``), so a Llama block's mm calls in forward order are q, k, v, o, gate
(w1), up (w3), down (w2) (torchtitan ``models/llama/model.py``: ``self.wq(x), self.wk(x),
self.wv(x)`` ... ``self.wo``; ``self.w2(F.silu(self.w1(x)) * self.w3(x))``): q, v, gate and down
are saved, k, o and up recomputed. A GeLU MLP (q, k, v, o, up, down) saves q, v, up; a fused QKV
projection (``qkv_layout: fused_kv_copy``) makes the sequence qkv, o, gate, up, down. A linear
with a bias runs ``aten.addmm`` (not in the list, not counted): recomputed.

What a block keeps per micro-batch (b = micro-batch, s = sequence, h = hidden, kv = key/value
width, f = MLP width, a = heads, t = tp; e = bytes of a matmul output, e_n of the residual):

* the checkpointed block input, e_n·sbh (/t with sequence parallelism);
* each saved mm output: e·sb·out/t for a column-parallel projection (q, k, v, gate, up; their
  input is all-gathered to the whole sequence under sequence parallelism), e·sbh for a
  row-parallel one (o, down: each TP rank's product is a partial sum over the whole hidden width
  before its reduce-scatter or all-reduce);
* flash attention (SDPA's flash/efficient kernels): the output e·sbh/t and the fp32 log-sum-exp
  4·bas/t (without flash attention the math path's ``bmm``/``softmax`` are not in ``_save_list``:
  recomputed, nothing kept);
* under sequence parallelism (t > 1) the two reduce-scatter outputs, e·sbh/t each (an
  all-reduce, without sequence parallelism, is not in the list: recomputed).

Llama (SwiGLU, separate q/k/v, flash), t = 1: ``e_n·sbh + e·sb(3h + kv + f) + 4·bas``; in
bf16 ``sb(8h + 2kv + 2f) + 4bas`` bytes (Llama 3 8B: 63,616 B per token and layer with a = 32). The ``max``/``abs`` outputs of float8 scaling are 4-byte scalars, not
counted.

Backward adds, per block: the recomputed mms (k, o, up for Llama: 2·sb·in·out/t each), the
attention core when it is not flash, and every element-wise pass of the forward (norms, rotary,
SiLU, residual adds: the block's forward element-wise bytes), all replayed before the block's
backward. Under sequence parallelism the recompute re-runs the two all-gathers (not in the list),
not the reduce-scatters (saved).

Approximations: torchao's float8 linears call ``torch.mm`` on float8 tensor subclasses inside
their autograd.Function, so the policy's mode sees (and counts, and keeps the 16-bit output of)
an ``aten.mm`` before the subclass runs ``_scaled_mm``; the float8 casts of a recomputed
projection's input are counted as that projection's share of the block's casts. Under
``torch.compile`` the partitioner drops a recomputed op no backward needs: with sequence
parallelism the o projection feeds only its (kept) reduce-scatter, so a compiled run skips its
2·sbh²/t, which the eager count here keeps. torchtitan's ``repeat_kv`` copies of GQA keys and
values change what the recomputed forward holds for SDPA's backward, not what the block keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import TrainingSpec

#: The source read, for messages and docstrings.
SOURCE = (
    "torchtitan parallelisms/parallelize_llama.py _apply_ac_to_transformer_block and _save_list "
    "at 9dec370a"
)


@dataclass(frozen=True, slots=True)
class BlockMatmul:
    """One ``aten.mm`` of a block's forward, in the order the policy's counter sees it."""

    name: str
    in_features: int
    out_features: int
    row_parallel: bool  # the TP rank's output is a partial sum over the whole width
    bias: bool = False  # dispatched as aten.addmm: not in _save_list, not counted

    def out_per_rank(self, tp: int) -> int:
        return self.out_features if self.row_parallel else self.out_features // tp

    def flops(self, tokens: int, tp: int) -> float:
        """2·tokens·in·out/t: the mm on one TP rank."""
        return 2.0 * tokens * self.in_features * self.out_features / tp


def block_matmuls(m: ModelSpec) -> tuple[BlockMatmul, ...]:
    """The block's projections in forward order (see the module docstring). A linear with a
    bias dispatches ``aten.addmm`` (measured, torch 2.13), which the policy neither counts nor
    saves: with ``bias`` every projection is recomputed, with ``qkv_bias`` q, k, v are, with
    ``mlp_bias`` the MLP's. Q and
    the attention output are ``q_dim`` wide (= h unless ``head_size`` sets heads x head_dim,
    Qwen3's 32 x 128 on h = 2,560)."""
    h, kv, f, q = m.hidden, m.kv_dim, m.ffn_hidden, m.q_dim
    qb = m.linear_has_bias("q")
    if m.qkv_layout == "separate":
        attn = [BlockMatmul("q", h, q, False, qb), BlockMatmul("k", h, kv, False, qb),
                BlockMatmul("v", h, kv, False, qb)]  # fmt: skip
    else:
        attn = [BlockMatmul("qkv", h, q + 2 * kv, False, qb)]
    attn.append(BlockMatmul("o", q, h, True, m.linear_has_bias("o")))
    mb = m.linear_has_bias("up")
    if m.mlp == "swiglu":
        mlp = [BlockMatmul("gate", h, f, False, mb), BlockMatmul("up", h, f, False, mb)]
    else:
        mlp = [BlockMatmul("up", h, f, False, mb)]
    mlp.append(BlockMatmul("down", f, h, True, mb))
    return tuple(attn + mlp)


def saved_matmuls(m: ModelSpec) -> tuple[BlockMatmul, ...]:
    """The projections whose outputs the policy keeps: the 1st, 3rd, 5th, ... ``aten.mm``."""
    return tuple(mm for mm in block_matmuls(m) if not mm.bias)[0::2]


def recomputed_matmuls(m: ModelSpec) -> tuple[BlockMatmul, ...]:
    """The projections the policy recomputes in the backward: the 2nd, 4th, ... ``aten.mm``
    and every ``aten.addmm``."""
    saved = saved_matmuls(m)
    return tuple(mm for mm in block_matmuls(m) if mm not in saved)


def saved_tensors(
    m: ModelSpec, t: TrainingSpec, tp: int = 1, sp: bool = False
) -> list[tuple[str, int, str]]:
    """(name, bytes, formula) of what one block keeps per micro-batch under the policy."""
    prec = t.precision_spec
    e, en = prec.act_mm, prec.act_norm
    b, s = t.micro_batch, t.seq_len_effective
    sb, h = s * b, m.hidden
    div = tp if sp else 1
    out = [("block input (checkpoint)", en * sb * h // div, f"{en}·sbh" + ("/t" if sp else ""))]
    for mm in saved_matmuls(m):
        width = mm.out_per_rank(tp)
        form = f"{e}·sb·{mm.name}_out" + ("" if mm.row_parallel else "/t")
        out.append((f"{mm.name} output (mm, saved)", e * sb * width, form))
    if m.flash_attention:
        out.append(("attention output + logsumexp (SDPA, saved)",
                    (e * sb * m.q_dim + 4 * b * m.heads * s) // tp, f"{e}·sb·q_dim/t + 4·bas/t"))  # fmt: skip
    if sp and tp > 1:
        out.append(("reduce-scatter outputs (attention, MLP)", 2 * e * sb * h // tp,
                    f"2·{e}·sbh/t"))  # fmt: skip
    return out


def held_by_recompute(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> int:
    """Bytes of the tensors autograd saves in a block's recomputed forward that *are* kept
    storages (so the recompute does not allocate them again): the SDPA output and log-sum-exp,
    v's mm output when v is saved (SDPA saves a view of it), and the MLP activation's input when
    its mm (gate, or up for GeLU) is saved. The block input is the caller's."""
    if not m.flash_attention:
        return 0
    prec = t.precision_spec
    e = prec.act_mm
    b, s = t.micro_batch, t.seq_len_effective
    sb = s * b
    names = {mm.name for mm in saved_matmuls(m)}
    held = (e * sb * m.q_dim + 4 * b * m.heads * s) // tp
    if "v" in names:
        held += e * sb * m.kv_dim // tp
    # (ReLU and squared ReLU save ReLU's output, which the recompute allocates again)
    act_in = {"swiglu": "gate", "gelu": "up"}.get(m.mlp, "")
    if act_in in names:
        held += e * sb * m.ffn_hidden // tp
    return held


def recompute_matmul_flops(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> float:
    """FLOPs of the recomputed mms of one block per micro-batch on one TP rank."""
    tokens = t.micro_batch * t.seq_len_effective
    return sum(mm.flops(tokens, tp) for mm in recomputed_matmuls(m))


__all__ = [
    "SOURCE", "BlockMatmul", "block_matmuls", "held_by_recompute", "recompute_matmul_flops",
    "recomputed_matmuls", "saved_matmuls", "saved_tensors",
]  # fmt: skip
