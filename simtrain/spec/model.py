"""Decoder-only transformer shapes and exact parameter counts.

A :class:`ModelSpec` is the shape of a GPT-2 / GPT-3 / Llama-style decoder: token embedding,
optional learned positions, ``layers`` pre-norm blocks (attention with grouped-query heads,
then a GeLU or SwiGLU MLP), a final norm and an LM head (tied to the embedding or not).

Parameter counts are exact integers and are tested against the published counts
(GPT-2 small 124,439,808 -- HF ``gpt2``; Llama-2-7B 6,738,415,616 -- HF ``meta-llama/Llama-2-7b-hf``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simtrain.errors import ConfigError, unknown_value
from simtrain.spec.limits import INT_RANGES, MAX_PARAMS, check_range
from simtrain.spec.moe_layout import DEEPSEEK_KINDS, ZERO_OK_FIELDS, hf_moe_fields, validate_moe
from simtrain.spec.yamlfile import read_text_file

#: gelu: up, GeLU, down (GPT-2/3, Megatron GPT); swiglu: SiLU(gate)·up, down (Llama; also any
#: gated MLP of three matrices: Gemma's GeGLU has the same matrices, FLOPs and saved tensors);
#: relu: up, ReLU, down (OPT: transformers ``OPTDecoderLayer`` fc1/fc2 with ``ACT2FN["relu"]``);
#: relu2: squared ReLU, up, ReLU then square, down (So et al. 2021 "Primer" §3; Nemotron-4
#: 340B report §2.1; Megatron-LM ``squared_relu`` = ``torch.pow(F.relu(x), 2)``; transformers
#: ``ReLUSquaredActivation``).
MLP_KINDS = ("gelu", "swiglu", "relu", "relu2")
#: learned: a max_positions x hidden table added to the token embeddings (GPT-2/3, OPT);
#: rotary: RoPE on q and k, no parameters (Llama; on ``rotary_fraction`` of each head); alibi: a
#: per-head linear bias on the attention scores, no parameters (Press et al. 2022; BLOOM,
#: MPT), added inside the scores' GEMM or the flash kernel (Megatron-DeepSpeed and HF BLOOM:
#: ``baddbmm(alibi, q, kᵀ)``), so no element-wise pass of its own; none: no position
#: information (NoPE; Megatron --no-position-embedding).
POSITION_KINDS = ("learned", "rotary", "alibi", "none")
NORM_KINDS = ("layernorm", "rmsnorm")
QKV_LAYOUTS = ("separate", "fused_kv_copy")
#: The allowed values of each string field (validate_model checks them, apps.schema publishes them).
#: ``qk_norm_width``: per head (Qwen3, Gemma 3) or over the whole q / k (OLMo 2).
QK_NORM_WIDTHS = ("head", "full")
MODEL_CHOICES: dict[str, tuple[str, ...]] = {
    "mlp": MLP_KINDS, "positions": POSITION_KINDS, "norm": NORM_KINDS, "qkv_layout": QKV_LAYOUTS,
    "qk_norm_width": QK_NORM_WIDTHS,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of a decoder-only transformer. All sizes are element counts."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn_hidden: int
    vocab: int
    max_positions: int
    mlp: str = "gelu"  # gelu | relu | relu2 (2 matrices: up, down) | swiglu (3: gate, up, down)
    tied_embeddings: bool = True
    positions: str = "learned"  # learned (a max_positions x hidden table) | rotary | alibi | none
    bias: bool = True  # biases on every linear layer (GPT-2 style)
    qkv_bias: bool = False  # biases on Q, K, V only (Qwen2 style); implied by bias
    mlp_bias: bool = False  # biases on the MLP's linears only (GPT-J); implied by bias
    norm: str = "layernorm"  # layernorm (weight + bias) | rmsnorm (weight only)
    dropout: float = 0.0
    flash_attention: bool = False
    # How the attention keeps Q, K, V for backward: "separate" (three tensors, 2·sb(h+2kv) bytes
    # in 16 bit) | "fused_kv_copy" (nanotron LlamaModel, MHA: one permuted (3, b, s, a, d) QKV
    # tensor whose Q view flash attention saves, so all of it stays alive, plus the separate
    # rotated K/V copy it saves too: memory.layer_saved_tensors).
    qkv_layout: str = "separate"
    # Attention variants (0 / false: as above). ``head_size``: the per-head width when it is not
    # hidden / heads (HF ``head_dim``: Qwen3, GPT-OSS); ``qk_norm``: an RMSNorm of head_size on
    # q and on k (Qwen3 ``q_norm`` / ``k_norm``); ``attention_sinks``: one learned logit per
    # head (GPT-OSS ``GptOssAttention.sinks``).
    head_size: int = 0
    qk_norm: bool = False
    attention_sinks: bool = False
    # A norm (of ``norm``'s kind) on the token embeddings before the first block: Megatron-
    # DeepSpeed --embed-layernorm (mpu/layers.py VocabParallelEmbedding.norm, a LayerNorm of
    # hidden after the vocab-parallel all-reduce), BLOOM's word_embeddings_layernorm.
    embedding_norm: bool = False
    # Mixture of experts (spec.moe; 0 experts = dense). Each MoE layer replaces the MLP by a
    # router (an h x E linear) and E experts of width moe_ffn_hidden (0: ffn_hidden), of which
    # each token uses experts_per_token, plus shared_experts always-on experts of width
    # shared_expert_ffn_hidden (0: moe_ffn_hidden) with an optional sigmoid gate (Qwen2-MoE).
    # The first first_dense_layers layers keep the dense MLP of ffn_hidden (DeepSeek
    # first_k_dense_replace). router_bias: a bias of E on the router (GPT-OSS);
    # router_score_bias: DeepSeek-V3's e_score_correction_bias of E. capacity_factor: tokens an
    # expert takes, over the even share (0 = dropless); moe_load_imbalance: the busiest
    # expert's tokens over the mean (>= 1).
    num_experts: int = 0
    experts_per_token: int = 0
    moe_ffn_hidden: int = 0
    shared_experts: int = 0
    shared_expert_ffn_hidden: int = 0
    shared_expert_gate: bool = False
    first_dense_layers: int = 0
    router_bias: bool = False
    router_score_bias: bool = False
    capacity_factor: float = 0.0
    moe_load_imbalance: float = 1.0
    # GPT-OSS's clamped GLU in its experts: the gate clamped to at most glu_clamp and the
    # linear half to [-glu_clamp, glu_clamp] (HF gpt_oss config ``swiglu_limit`` 7.0,
    # modeling_gpt_oss GptOssExperts; Megatron-Core ``activation_func_clamp_value``, which
    # Megatron-Bridge's GPT-OSS provider sets to 7.0); 0: none (costs.moe).
    glu_clamp: float = 0.0
    # Group-limited routing (DeepSeek-V2 §2.1.3 device-limited, V3 §2.1.2 node-limited; HF
    # n_group / topk_group, Megatron-Core moe_router_num_groups / moe_router_group_topk,
    # transformer_config.py l.780-796 at d98e8a64): the experts form router_groups equal
    # groups and each token's experts come from router_group_topk of them (0 = unlimited).
    router_groups: int = 0
    router_group_topk: int = 0
    # Multi-head latent attention (DeepSeek-V2 §2.1, V3 §2.1.1; kv_lora_rank 0 = MHA/GQA): Q
    # from a q_lora_rank latent (0: directly from h), K and V from a kv_lora_rank latent plus a
    # shared qk_rope_head_dim rotary key; per head qk_nope_head_dim + qk_rope_head_dim for Q·K
    # and v_head_dim for V. mtp_layers: DeepSeek-V3's multi-token-prediction modules (each an
    # eh_proj 2h x h, two norms, one MoE block and a norm; embedding and head shared), counted
    # by mtp_params(), not by total_params().
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    mtp_layers: int = 0
    # Whether ``dropout`` also drops the attention probabilities (false: on the residual
    # branches and the embeddings only: OPT's attention_dropout 0.0 beside dropout 0.1,
    # Megatron --attention-dropout 0 beside --hidden-dropout). What a block saves and the
    # element-wise time depend on which dropouts run, not on their rates.
    attention_dropout: bool = True
    # Attention and MLP side by side on the block's input, x + attn(norm1(x)) + mlp(norm2(x))
    # (GPT-J; GPT-NeoX and Pythia's use_parallel_residual, transformers GPTNeoXLayer; PaLM
    # §2 "parallel layers"): the same parameters and FLOPs as the sequential block, and the
    # second norm's input is the first's, one tensor saved for both.
    parallel_residual: bool = False
    # With parallel_residual: one norm feeds both, x + attn(norm(x)) + mlp(norm(x)) (GPT-J's
    # ln_1, Falcon-7B's input_layernorm: transformers FalconDecoderLayer without
    # new_decoder_architecture; PaLM §2's formula): one norm's parameters, statistics and
    # element-wise pass a block, and its output is one tensor for both branches' linears.
    shared_norm: bool = False
    # A bias of V on the LM head (Phi-1/1.5/2's lm_head, GPT-J's): parameters only (cuBLAS adds
    # it in the GEMM's epilogue; its gradient, the logits' gradient summed, keeps no tensor).
    head_bias: bool = False
    # Sliding-window attention: a query of a sliding layer sees at most ``sliding_window`` keys
    # (itself and the ones before it; 0: every earlier key), FlashAttention kernels skip the
    # blocks outside the window (flash-attn's window_size, Transformer Engine's, flex
    # attention's block mask). ``full_attention_every`` n: every n-th layer (the (n-1)-th,
    # (2n-1)-th, ... from 0) attends to all keys (Gemma-2 and GPT-OSS 2, Gemma-3 6); 0: every
    # layer slides (Mistral-7B v0.1). Without flash attention the s x s scores are computed
    # and masked whole: nothing changes.
    sliding_window: int = 0
    full_attention_every: int = 0
    # Gemma-2/3's sandwich norms: a norm on each branch's output before its residual add
    # (post_attention_layernorm, post_feedforward_layernorm) besides the pre-norms; each keeps
    # its input (the branch output, in the norms' dtype) and statistics.
    post_norms: bool = False
    # Norms before the attention and the MLP (false: OLMo 2, whose only block norms are the
    # post_norms: the linears take the residual stream itself).
    pre_norms: bool = True
    # The q/k norms' width (``qk_norm``): "head" (an RMSNorm of head_dim on each head: Qwen3,
    # Gemma 3) or "full" (one over all of q and one over all of k: OLMo 2's q_norm / k_norm).
    qk_norm_width: str = "head"
    # tanh soft-capping, c·tanh(x/c) (Gemma-2): of the final logits (``logit_softcap``: the
    # tanh keeps its output, b·s·V/t in the activation dtype; three passes over the logits)
    # and of the attention scores (``attention_softcap``: in the kernel with flash attention,
    # flash-attn's softcap; without it three passes over the s x s scores and the tanh's
    # output kept).
    logit_softcap: bool = False
    attention_softcap: bool = False
    # The fraction of each head's dimensions RoPE rotates (positions: rotary): 1 for Llama,
    # 0.25 for GPT-NeoX / Pythia (transformers GPTNeoXConfig ``rotary_pct``), 0.5 for
    # Nemotron-4 (NemotronConfig ``partial_rotary_factor``; Megatron ``--rotary-percent``). No
    # parameters or saved tensors change: only the rotation's element-wise pass, which covers
    # that fraction of q and k (costs.compute.block_elementwise_bytes).
    rotary_fraction: float = 1.0

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def drops_attention(self) -> bool:
        """Dropout on the attention probabilities (a 1-byte mask and the dropped copy saved
        per score without flash attention)."""
        return self.dropout > 0 and self.attention_dropout

    @property
    def head_dim(self) -> int:
        """Per-head width of Q and K (MLA: qk_nope_head_dim + qk_rope_head_dim)."""
        if self.is_mla:
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_size or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        """Width of Q: heads * head_dim (= hidden unless ``head_size`` or MLA says otherwise)."""
        return self.heads * self.head_dim if self.head_size or self.is_mla else self.hidden

    @property
    def rotary_dims(self) -> int:
        """Dimensions of each head RoPE rotates: int(head_dim x rotary_fraction), as transformers'
        GPT-NeoX (rotary_ndims = int(head_size * rotary_pct)) and Phi
        (int(partial_rotary_factor * head_dim)) take them."""
        return int(self.head_dim * self.rotary_fraction)

    def rotary_values(self, tp: int = 1) -> float:
        """Values per token that RoPE rotates on one TP rank: ``rotary_fraction`` of q and k
        (their heads split by ``tp``); multi-latent attention rotates only each query head's
        ``qk_rope_head_dim`` dimensions and the one shared rotary key, k_pe, which every TP
        rank computes whole (its kv_a projection is replicated: DeepSeek-V2 §2.1.3;
        Megatron-Core ``multi_latent_attention.py``). 0 without rotary positions."""
        if self.positions != "rotary":
            return 0.0
        if self.is_mla:
            return self.heads * self.qk_rope_head_dim / tp + self.qk_rope_head_dim
        return self.rotary_dims * (self.heads + self.kv_heads) / tp

    @property
    def v_dim(self) -> int:
        """Width of V and of the attention output (MLA: heads * v_head_dim; else q_dim)."""
        return self.heads * self.v_head_dim if self.is_mla else self.q_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def expert_ffn(self) -> int:
        """Width of one routed expert's FFN."""
        return self.moe_ffn_hidden or self.ffn_hidden

    @property
    def shared_ffn(self) -> int:
        """Width of one shared expert's FFN."""
        return self.shared_expert_ffn_hidden or self.expert_ffn

    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts (all but the first dense ones)."""
        return self.layers - self.first_dense_layers if self.is_moe else 0

    def is_moe_layer(self, i: int) -> bool:
        """Whether block ``i`` (0-based) is an MoE layer."""
        return self.is_moe and i >= self.first_dense_layers

    def dense_layers_in(self, lo: int, hi: int) -> int:
        """Dense blocks among blocks lo .. hi-1 (all of them for a dense model)."""
        if not self.is_moe:
            return hi - lo
        return max(0, min(hi, self.first_dense_layers) - lo)

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): kv_heads * head_dim (GQA, Ainslie et al. 2023)."""
        return self.kv_heads * self.head_dim

    def sliding_layers_in(self, lo: int, hi: int) -> int:
        """Sliding-window layers among blocks lo .. hi-1 (``sliding_window``,
        ``full_attention_every``)."""
        if not self.sliding_window or hi <= lo:
            return 0
        n = self.full_attention_every
        if not n:
            return hi - lo
        return (hi - lo) - (hi // n - lo // n)  # minus the layers i with (i + 1) % n == 0

    def layer_signature(self, lo: int, hi: int) -> tuple[int, ...]:
        """What makes blocks lo .. hi-1 cost other than as many blocks elsewhere: their dense
        (not MoE) blocks and their sliding-window ones. Two chunks of as many layers with the
        same signature (and the same embedding / head) cost the same: the planner's cache key;
        a new kind of per-layer difference belongs here."""
        return self.dense_layers_in(lo, hi), self.sliding_layers_in(lo, hi)

    @property
    def qk_norm_widths(self) -> tuple[int, int]:
        """The q and k norms' weights (``qk_norm``; (0, 0) without): head_dim each, applied per
        head, or q_dim and kv_dim over the whole projections (``qk_norm_width`` "full")."""
        if not self.qk_norm:
            return 0, 0
        if self.qk_norm_width == "full":
            return self.q_dim, self.kv_dim
        return self.head_dim, self.head_dim

    @property
    def qk_norm_params(self) -> int:
        """The q and k norms' weights together (:attr:`qk_norm_widths`)."""
        return sum(self.qk_norm_widths)

    @property
    def block_norm_names(self) -> tuple[str, ...]:
        """A block's norms: ``norm1``, ``norm2`` before the attention and the MLP (only
        ``norm1`` with a ``shared_norm``, none without ``pre_norms``), ``post_norm1``,
        ``post_norm2`` after them with ``post_norms``."""
        pre = ("norm1",) if self.shared_norm else ("norm1", "norm2")
        return (pre if self.pre_norms else ()) + (
            ("post_norm1", "post_norm2") if self.post_norms else ())  # fmt: skip

    @property
    def norms_per_block(self) -> int:
        """Norms in a block (:attr:`block_norm_names`)."""
        return len(self.block_norm_names)

    def linear_has_bias(self, name: str) -> bool:
        """Does the dense linear ``name`` (q, k, v, o, gate, up, down) carry a bias? Every one
        with ``bias``; q, k, v with ``qkv_bias``; the MLP's with ``mlp_bias``."""
        return (self.bias or (self.qkv_bias and name in ("q", "k", "v"))
                or (self.mlp_bias and name in ("gate", "up", "down")))  # fmt: skip

    @property
    def norm_params(self) -> int:
        """One norm: LayerNorm has a weight and a bias of size h; RMSNorm only a weight."""
        return 2 * self.hidden if self.norm == "layernorm" else self.hidden

    # ---- parameter counts (exact) --------------------------------------------------------
    def attention_params(self) -> int:
        """W_q (h x q), W_k and W_v (h x kv_dim), W_o (q x h), plus biases when present
        (q = heads·head_dim = h unless ``head_size`` is set); Qwen3's q/k norms (2·head_dim)
        and GPT-OSS's sinks (one per head)."""
        if self.is_mla:
            return self._mla_params()
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        weights = 2 * h * q + 2 * h * kv
        biases = 0
        if self.bias:
            biases = q + 2 * kv + h
        elif self.qkv_bias:
            biases = q + 2 * kv
        extra = self.qk_norm_params + (self.heads if self.attention_sinks else 0)
        return weights + biases + extra

    def _mla_params(self) -> int:
        """MLA (HF ``DeepseekV3Attention``): q_a_proj h x q_lora + q_a_layernorm + q_b_proj
        q_lora x heads·(nope+rope) (or q_proj h x heads·(nope+rope)), kv_a_proj_with_mqa
        h x (kv_lora + rope), kv_a_layernorm, kv_b_proj kv_lora x heads·(nope + v), o_proj
        heads·v x h; no biases."""
        return sum(fi * fo for fi, fo in self.attention_shapes().values()) + (
            self.q_lora_rank + self.kv_lora_rank
        )

    def attention_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of the attention's linear layers: q, k, v, o; MLA: q_a, q_b (or q), kv_a,
        kv_b, o (q_a and kv_a replicated over TP, as Megatron-Core's MLA down-projections)."""
        h, kv, q = self.hidden, self.kv_dim, self.q_dim
        if not self.is_mla:
            return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h)}
        ql, kvl = self.q_lora_rank, self.kv_lora_rank
        out = {"q_a": (h, ql), "q_b": (ql, q)} if ql else {"q": (h, q)}
        out["kv_a"] = (h, kvl + self.qk_rope_head_dim)
        out["kv_b"] = (kvl, self.heads * (self.qk_nope_head_dim + self.v_head_dim))
        out["o"] = (self.v_dim, h)
        return out

    def mtp_params(self) -> int:
        """DeepSeek-V3's multi-token-prediction modules (HF checkpoint ``model.layers.61``):
        per module enorm, hnorm, eh_proj (2h x h), one MoE block and shared_head.norm; the
        embedding and the output head are shared with the main model (README_WEIGHTS.md)."""
        h = self.hidden
        return self.mtp_layers * (3 * self.norm_params + 2 * h * h + self.moe_layer_params())

    def mlp_params(self, f: int | None = None) -> int:
        """GeLU / ReLU / squared-ReLU MLP: 2·h·f (+ f + h biases); SwiGLU: 3·h·f (+ 2f + h
        biases); f defaults to ``ffn_hidden`` (one expert: ``expert_ffn``)."""
        h = self.hidden
        f = self.ffn_hidden if f is None else f
        biased = self.linear_has_bias("up")
        if self.mlp == "swiglu":
            return 3 * h * f + ((2 * f + h) if biased else 0)
        return 2 * h * f + ((f + h) if biased else 0)

    def router_params(self) -> int:
        """The router: an h x E linear (+ E bias on GPT-OSS, + E score-correction bias on
        DeepSeek-V3); Qwen2-MoE's shared-expert gate, an h x 1 linear."""
        e = self.num_experts
        n = self.hidden * e + (e if self.router_bias else 0) + (e if self.router_score_bias else 0)
        return n + (self.hidden if self.shared_expert_gate else 0)

    def moe_mlp_params(self, routed: int | None = None) -> int:
        """One MoE layer's FFN: ``routed`` experts (default all E) + the shared experts +
        the router."""
        routed = self.num_experts if routed is None else routed
        return (routed * self.mlp_params(self.expert_ffn)
                + self.shared_experts * self.mlp_params(self.shared_ffn)
                + self.router_params())  # fmt: skip

    def layer_params(self) -> int:
        """One dense transformer block: attention + MLP + its norms (two, or one shared)."""
        return self.attention_params() + self.mlp_params() + self.norms_per_block * self.norm_params

    def moe_layer_params(self, routed: int | None = None) -> int:
        """One MoE block: attention + MoE FFN (``routed`` experts, default all) + its norms."""
        return (self.attention_params() + self.moe_mlp_params(routed)
                + self.norms_per_block * self.norm_params)  # fmt: skip

    def blocks_params(self, routed: int | None = None) -> int:
        """All blocks: dense ones with their MLP, MoE ones with ``routed`` experts each."""
        dense = self.layers - self.moe_layers
        return dense * self.layer_params() + self.moe_layers * self.moe_layer_params(routed)

    def embedding_params(self) -> int:
        """Token embedding V·h plus learned positions max_positions·h (the others have none) and
        the embedding norm when there is one."""
        pos = self.max_positions * self.hidden if self.positions == "learned" else 0
        return self.vocab * self.hidden + pos + (self.norm_params if self.embedding_norm else 0)

    def head_params(self) -> int:
        """Final norm plus the LM head (V·h unless tied to the token embedding) and its bias."""
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.norm_params + head + (self.vocab if self.head_bias else 0)

    def total_params(self) -> int:
        """N = embeddings + blocks (every expert) + final norm + untied head."""
        return self.embedding_params() + self.blocks_params() + self.head_params()

    def active_params(self) -> int:
        """Parameters one token uses: the total with only ``experts_per_token`` routed experts
        per MoE layer (embeddings counted, as Mistral's 12.9B of Mixtral-8x7B; OpenAI's
        gpt-oss card leaves the input embedding out). Dense models: the total."""
        if not self.is_moe:
            return self.total_params()
        return (self.embedding_params() + self.blocks_params(self.experts_per_token)
                + self.head_params())  # fmt: skip

    def mlp_shapes(self, width: int) -> dict[str, tuple[int, int]]:
        """(in, out) of an MLP's linears of inner width ``width`` (the block's, a routed
        expert's, or the shared experts' fused S·f_s): gate (SwiGLU) and up, then down."""
        h = self.hidden
        gate = {"gate": (h, width)} if self.mlp == "swiglu" else {}
        return {**gate, "up": (h, width), "down": (width, h)}

    def linear_weight_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of a block, named as PEFT target modules."""
        return {**self.attention_shapes(), **self.mlp_shapes(self.ffn_hidden)}


#: Megatron TP (Shoeybi et al. 2019 §3): O and down are row-parallel (input split by t, output
#: whole); MLA's down-projections q_a and kv_a are replicated on every TP rank (Megatron-Core
#: ``multi_latent_attention.py``: duplicated over TP); every other linear of
#: :meth:`ModelSpec.linear_weight_shapes` (q, k, v, q_b, kv_b, gate, up) is column-parallel.
TP_ROW_PARALLEL = ("o", "down")
TP_REPLICATED = ("q_a", "kv_a")


def tp_split_shape(name: str, fan_in: int, fan_out: int, tp: int) -> tuple[int, int]:
    """(input width, output width) of linear ``name`` on one TP rank (:data:`TP_ROW_PARALLEL`,
    :data:`TP_REPLICATED`, else column-parallel)."""
    if name in TP_REPLICATED:
        return fan_in, fan_out
    if name in TP_ROW_PARALLEL:
        return fan_in // tp, fan_out
    return fan_in, fan_out // tp


def _gpt2(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    """GPT-2 (Radford et al. 2019; HF config.json of gpt2, gpt2-medium, -large, -xl)."""
    return ModelSpec(name, layers, hidden, heads, heads, 4 * hidden, 50257, 1024)


def _gpt3(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    """GPT-3 (Brown et al. 2020, Table 2.1): GPT-2 architecture, n_ctx 2048, vocab 50257."""
    return ModelSpec(name, layers, hidden, heads, heads, 4 * hidden, 50257, 2048)


def _llama(
    name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, ctx: int
) -> ModelSpec:
    """Llama (Touvron et al. 2023; Llama Team 2024): RMSNorm, SwiGLU, rotary, untied, no bias."""
    return ModelSpec(
        name, layers, hidden, heads, kv_heads, ffn, vocab, ctx,
        mlp="swiglu", tied_embeddings=False, positions="rotary", bias=False, norm="rmsnorm",
    )  # fmt: skip


PRESETS: dict[str, ModelSpec] = {
    # GPT-2: HF model cards / config.json.
    "gpt2": _gpt2("gpt2", 12, 768, 12),
    "gpt2-medium": _gpt2("gpt2-medium", 24, 1024, 16),
    "gpt2-large": _gpt2("gpt2-large", 36, 1280, 20),
    "gpt2-xl": _gpt2("gpt2-xl", 48, 1600, 25),
    # GPT-3: Brown et al. 2020, Table 2.1. The paper's 1.3B row lists 24 heads of 128 (=3072 != 2048)
    # and the 13B row d_model 5140; we use 16 heads and 5120 as Megatron/OPT replications do.
    "gpt3-125m": _gpt3("gpt3-125m", 12, 768, 12),
    "gpt3-350m": _gpt3("gpt3-350m", 24, 1024, 16),
    "gpt3-760m": _gpt3("gpt3-760m", 24, 1536, 16),
    "gpt3-1.3b": _gpt3("gpt3-1.3b", 24, 2048, 16),
    "gpt3-2.7b": _gpt3("gpt3-2.7b", 32, 2560, 32),
    "gpt3-6.7b": _gpt3("gpt3-6.7b", 32, 4096, 32),
    "gpt3-13b": _gpt3("gpt3-13b", 40, 5120, 40),
    "gpt3-175b": _gpt3("gpt3-175b", 96, 12288, 96),
    # NeMo's GPT-3 5B and 20B (NeMo-Framework-Launcher 6a76374e launcher_scripts/conf/training/
    # gpt3/5b.yaml and 20b.yaml: 24 / 44 layers, hidden 4096 / 6144, 32 / 48 heads, ffn 4h,
    # sequence 2048, the GPT-2 BPE vocabulary): the GPT-3 architecture at sizes the paper lacks
    "gpt3-5b": _gpt3("gpt3-5b", 24, 4096, 32),
    "gpt3-20b": _gpt3("gpt3-20b", 44, 6144, 48),
    # Llama 2: Touvron et al. 2023, Table 1 + HF config.json (meta-llama/Llama-2-*-hf).
    "llama2-7b": _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    "llama2-13b": _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
    "llama2-70b": _llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
    # Llama 3 / 3.1: Llama Team 2024, Table 3 + HF config.json (meta-llama/Meta-Llama-3*-*).
    "llama3-8b": _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
    "llama3-70b": _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
    "llama3-405b": _llama("llama3-405b", 126, 16384, 128, 8, 53248, 128256, 131072),
    # Llama 3.2 text models: HF meta-llama/Llama-3.2-1B and -3B config.json (head_dim 64 / 128,
    # tie_word_embeddings true, 131,072 positions).
    "llama3.2-1b": replace(_llama("llama3.2-1b", 16, 2048, 32, 8, 8192, 128256, 131072),
                           tied_embeddings=True),
    "llama3.2-3b": replace(_llama("llama3.2-3b", 28, 3072, 24, 8, 8192, 128256, 131072),
                           tied_embeddings=True),
    # Mistral 7B v0.3: HF mistralai/Mistral-7B-v0.3 config.json (vocab 32,768, no sliding
    # window; v0.1 had a 32,000 vocabulary and a 4,096-token window: take its config.json).
    "mistral-7b": _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32768, 32768),
    # Qwen2.5 base models: HF Qwen/Qwen2.5-*B config.json (qwen2: Q/K/V biases; the 0.5B, 1.5B
    # and 3B tie their embeddings and have a 151,936 vocabulary, the larger ones 152,064).
    "qwen2.5-0.5b": replace(_llama("qwen2.5-0.5b", 24, 896, 14, 2, 4864, 151936, 32768),
                            qkv_bias=True, tied_embeddings=True),
    "qwen2.5-1.5b": replace(_llama("qwen2.5-1.5b", 28, 1536, 12, 2, 8960, 151936, 32768),
                            qkv_bias=True, tied_embeddings=True),
    "qwen2.5-3b": replace(_llama("qwen2.5-3b", 36, 2048, 16, 2, 11008, 151936, 32768),
                          qkv_bias=True, tied_embeddings=True),
    "qwen2.5-7b": replace(_llama("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 131072),
                          qkv_bias=True),
    "qwen2.5-14b": replace(_llama("qwen2.5-14b", 48, 5120, 40, 8, 13824, 152064, 131072),
                           qkv_bias=True),
    "qwen2.5-32b": replace(_llama("qwen2.5-32b", 64, 5120, 40, 8, 27648, 152064, 131072),
                           qkv_bias=True),
    "qwen2.5-72b": replace(_llama("qwen2.5-72b", 80, 8192, 64, 8, 29568, 152064, 131072),
                           qkv_bias=True),
}  # fmt: skip


def _opt(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    """OPT (Zhang et al. 2022, Table 1; HF facebook/opt-* config.json): ReLU 4h MLP, biases,
    LayerNorm, learned positions of 2,048 + 2 rows (OPTLearnedPositionalEmbedding), tied, vocab
    50,272, dropout 0.1 on the residual branches, none on the attention probabilities."""
    return ModelSpec(name, layers, hidden, heads, heads, 4 * hidden, 50272, 2050, mlp="relu",
                     dropout=0.1, attention_dropout=False)  # fmt: skip


def _pythia(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    """Pythia (Biderman et al. 2023; EleutherAI/pythia-* config.json, gpt_neox): GeLU 4h MLP,
    biases, LayerNorm, rotary on a quarter of each head, parallel attention and MLP, untied,
    vocab 50,304; the model card's non-embedding counts hold exactly
    (tests/test_hf_families.py)."""
    return ModelSpec(name, layers, hidden, heads, heads, 4 * hidden, 50304, 2048,
                     tied_embeddings=False, positions="rotary", parallel_residual=True,
                     rotary_fraction=0.25)  # fmt: skip


def _gemma2(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int,
            head_dim: int) -> ModelSpec:  # fmt: skip
    """Gemma 2 (HF google/gemma-2-*, model_type gemma2): see the presets' comment."""
    return replace(_llama(name, layers, hidden, heads, kv_heads, ffn, 256000, 8192),
                   tied_embeddings=True, head_size=head_dim, post_norms=True,
                   logit_softcap=True, attention_softcap=True, sliding_window=4096,
                   full_attention_every=2)  # fmt: skip


def _gemma3(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int,
            head_dim: int, window: int, vocab: int, max_positions: int) -> ModelSpec:  # fmt: skip
    """Gemma 3's text model (HF google/gemma-3-*, model_type gemma3_text): see the presets'."""
    return replace(_llama(name, layers, hidden, heads, kv_heads, ffn, vocab, max_positions),
                   tied_embeddings=True, head_size=head_dim, post_norms=True, qk_norm=True,
                   sliding_window=window, full_attention_every=6)  # fmt: skip


def _olmo2(name: str, layers: int, hidden: int, heads: int, kv_heads: int,
           ffn: int) -> ModelSpec:  # fmt: skip
    """OLMo 2 (HF allenai/OLMo-2-*, model_type olmo2): see the presets' comment."""
    return replace(
        _llama(name, layers, hidden, heads, kv_heads, ffn, 100352, 4096),
        pre_norms=False,
        post_norms=True,
        qk_norm=True,
        qk_norm_width="full",
    )


def _phi(name: str, layers: int, hidden: int, rotary_fraction: float) -> ModelSpec:
    """Phi-1.5 / Phi-2 (HF microsoft/phi-*, model_type phi): see the presets' comment."""
    return ModelSpec(name, layers, hidden, 32, 32, 4 * hidden, 51200, 2048, positions="rotary",
                     tied_embeddings=False, parallel_residual=True, shared_norm=True,
                     head_bias=True, rotary_fraction=rotary_fraction)  # fmt: skip


def _falcon(name: str, layers: int, hidden: int, heads: int, kv_heads: int,
            shared_norm: bool = False) -> ModelSpec:  # fmt: skip
    """Falcon (HF tiiuae/falcon-*, model_type falcon): see the presets' comment."""
    return ModelSpec(name, layers, hidden, heads, kv_heads, 4 * hidden, 65024, 2048,
                     positions="rotary", bias=False, parallel_residual=True,
                     shared_norm=shared_norm)  # fmt: skip


PRESETS.update({
    "opt-125m": _opt("opt-125m", 12, 768, 12),
    "opt-1.3b": _opt("opt-1.3b", 24, 2048, 32),
    "opt-6.7b": _opt("opt-6.7b", 32, 4096, 32),
    "opt-13b": _opt("opt-13b", 40, 5120, 40),
    "opt-30b": _opt("opt-30b", 48, 7168, 56),
    "opt-66b": _opt("opt-66b", 64, 9216, 72),
    "opt-175b": _opt("opt-175b", 96, 12288, 96),
    "pythia-70m": _pythia("pythia-70m", 6, 512, 8),
    "pythia-160m": _pythia("pythia-160m", 12, 768, 12),
    "pythia-410m": _pythia("pythia-410m", 24, 1024, 16),
    "pythia-1b": _pythia("pythia-1b", 16, 2048, 8),
    "pythia-1.4b": _pythia("pythia-1.4b", 24, 2048, 16),
    "pythia-2.8b": _pythia("pythia-2.8b", 32, 2560, 32),
    # BLOOM (BigScience 2022; HF bigscience/bloom config.json): GeLU 4h, biases, LayerNorm on
    # the word embeddings too, ALiBi, tied, vocab 250,880, sequence 2,048; model card:
    # 176,247,271,424 parameters.
    "bloom-176b": ModelSpec("bloom-176b", 70, 14336, 112, 112, 4 * 14336, 250880, 2048,
                            positions="alibi", embedding_norm=True),
    # Nemotron-4 (Parmar et al. 2024, arXiv 2402.16819 §2; Nemotron-4 340B report, arXiv
    # 2406.11704 §2.1): squared ReLU 4h, no biases, LayerNorm, rotary, GQA with 8 KV heads,
    # untied, vocab 256,000, sequence 4,096; 340B: 9.4B embedding + 331.6B other parameters.
    "nemotron-4-15b": replace(
        _llama("nemotron-4-15b", 32, 6144, 48, 8, 4 * 6144, 256000, 4096), mlp="relu2",
        norm="layernorm", rotary_fraction=0.5),
    "nemotron-4-340b": replace(
        _llama("nemotron-4-340b", 96, 18432, 96, 8, 4 * 18432, 256000, 4096), mlp="relu2",
        norm="layernorm", rotary_fraction=0.5),
    # NeMo's Nemotron 8B and 22B (NeMo-Framework-Launcher 6a76374e launcher_scripts/conf/training/
    # nemotron/nemotron_8b.yaml and nemotron_22b.yaml: 32 / 40 layers, hidden 4096 / 6144, 32 / 48
    # heads without query groups, ffn 16384 / 24576, squared ReLU, layernorm1p, rope on half of
    # each head, no biases, untied, sequence 4096), the Nemotron SentencePiece vocabulary of
    # 256,000 as the Nemotron-4 presets: 8.5 B and 21.3 B parameters
    "nemotron-8b": replace(
        _llama("nemotron-8b", 32, 4096, 32, 32, 16384, 256000, 4096), mlp="relu2",
        norm="layernorm", rotary_fraction=0.5),
    "nemotron-22b": replace(
        _llama("nemotron-22b", 40, 6144, 48, 48, 24576, 256000, 4096), mlp="relu2",
        norm="layernorm", rotary_fraction=0.5),
    # Gemma (Gemma Team 2024, arXiv 2403.08295 Table 1; HF google/gemma-*): GeGLU (as SwiGLU),
    # heads of 256, RMSNorm, rotary, tied, vocab 256,000 (the checkpoints'; the paper's Table 2
    # counts 256,128), sequence 8,192.
    "gemma-2b": replace(_llama("gemma-2b", 18, 2048, 8, 1, 16384, 256000, 8192),
                        tied_embeddings=True),
    "gemma-7b": replace(_llama("gemma-7b", 28, 3072, 16, 16, 24576, 256000, 8192),
                        tied_embeddings=True, head_size=256),
    # Gemma 2 (Gemma Team 2024, arXiv 2408.00118 Table 1; HF google/gemma-2-*, gemma2): Gemma's
    # GeGLU, heads and tied 256,000 vocabulary, with sandwich norms, soft-capped scores (50)
    # and logits (30), a 4,096-key window on every other layer; 2,614,341,888 /
    # 9,241,705,984 / 27,227,128,320 parameters (transformers' Gemma2ForCausalLM).
    "gemma-2-2b": _gemma2("gemma-2-2b", 26, 2304, 8, 4, 9216, 256),
    "gemma-2-9b": _gemma2("gemma-2-9b", 42, 3584, 16, 8, 14336, 256),
    "gemma-2-27b": _gemma2("gemma-2-27b", 46, 4608, 32, 16, 36864, 128),
    # Gemma 3 (Gemma Team 2025, arXiv 2503.19786 Table 1; HF google/gemma-3-* text configs,
    # gemma3_text): Gemma 2's sandwich norms without soft-capping, q/k RMSNorms, a window of
    # 512 (1B) / 1,024 keys on five layers of six; 999,885,952 / 3,880,263,168 /
    # 11,766,034,176 / 27,009,346,304 parameters (transformers 4.57's Gemma3ForCausalLM; the
    # report's non-embedding 698M / 3,209M / 10,759M / 25,600M).
    "gemma-3-1b": _gemma3("gemma-3-1b", 26, 1152, 4, 1, 6912, 256, 512, 262144, 32768),
    "gemma-3-4b": _gemma3("gemma-3-4b", 34, 2560, 8, 4, 10240, 256, 1024, 262208, 131072),
    "gemma-3-12b": _gemma3("gemma-3-12b", 48, 3840, 16, 8, 15360, 256, 1024, 262208, 131072),
    "gemma-3-27b": _gemma3("gemma-3-27b", 62, 5376, 32, 16, 21504, 128, 1024, 262208, 131072),
    # OLMo 2 (OLMo Team 2024, arXiv 2501.00656; HF allenai/OLMo-2-*, olmo2): SwiGLU, no norm
    # before attention or MLP and an RMSNorm after each, RMSNorms over all of q and of k,
    # untied, vocab 100,352, sequence 4,096; 1,484,916,736 / 7,298,617,344 / 13,716,198,400 /
    # 32,234,279,936 parameters (transformers 4.57's Olmo2ForCausalLM).
    "olmo-2-1b": _olmo2("olmo-2-1b", 16, 2048, 16, 16, 8192),
    "olmo-2-7b": _olmo2("olmo-2-7b", 32, 4096, 32, 32, 11008),
    "olmo-2-13b": _olmo2("olmo-2-13b", 40, 5120, 40, 40, 13824),
    "olmo-2-32b": _olmo2("olmo-2-32b", 64, 5120, 40, 8, 27648),
    # Phi-3-mini (Abdin et al. 2024; HF microsoft/Phi-3-mini-4k-instruct, phi3): Llama-style,
    # vocab 32,064, untied, a 2,047-key sliding window, 3,821,079,552 parameters.
    "phi-3-mini": replace(_llama("phi-3-mini", 32, 3072, 32, 32, 8192, 32064, 4096),
                          sliding_window=2047),  # (the 4k config's window)
    # Falcon (Almazrouei et al. 2023; HF tiiuae/falcon-* config.json, transformers
    # FalconForCausalLM): GeLU 4h, no biases, LayerNorm, rotary, tied, vocab 65,024, sequence
    # 2,048, attention and MLP in parallel; 7B: one KV head and one norm shared by both
    # branches, 6,921,720,704 parameters; 40B / 180B (new_decoder_architecture): 8 KV heads,
    # a norm per branch, 41,303,293,952 / 178,557,088,768 (transformers' own count).
    # Phi-1.5 / Phi-2 (Li et al. 2023, Javaheripi et al. 2023; HF microsoft/phi-*, model_type
    # phi): GeLU 4h, biases (the LM head's too), one LayerNorm for attention and MLP in
    # parallel, rotary on half / 0.4 of each head, untied, vocab 51,200, sequence 2,048;
    # 1,418,270,720 / 2,779,683,840 parameters (transformers' PhiForCausalLM).
    "phi-1.5": _phi("phi-1.5", 24, 2048, 0.5),
    "phi-2": replace(_phi("phi-2", 32, 2560, 0.4), dropout=0.1, attention_dropout=False),
    "falcon-7b": _falcon("falcon-7b", 32, 4544, 71, 1, shared_norm=True),
    "falcon-40b": _falcon("falcon-40b", 60, 8192, 128, 8),
    "falcon-180b": _falcon("falcon-180b", 80, 14848, 232, 8),
})  # fmt: skip
PRESETS.update({
    # Mixtral-8x7B: HF mistralai/Mixtral-8x7B-v0.1 config.json (num_local_experts 8,
    # num_experts_per_tok 2, intermediate_size 14336, rope, untied); 46,702,792,704 parameters.
    "mixtral-8x7b": replace(_llama("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768),
                            num_experts=8, experts_per_token=2),
    # Mixtral-8x22B: HF mistralai/Mixtral-8x22B-v0.1 config.json (56 layers, hidden 6,144, 48
    # heads, 8 KV heads, 8 experts of 16,384, top-2, vocab 32,000, 65,536 positions, untied).
    "mixtral-8x22b": replace(_llama("mixtral-8x22b", 56, 6144, 48, 8, 16384, 32000, 65536),
                             num_experts=8, experts_per_token=2),
    # Qwen1.5-MoE-A2.7B: HF Qwen/Qwen1.5-MoE-A2.7B config.json (qwen2_moe: 60 experts of 1408,
    # top-4, one shared expert of 5632 with its sigmoid gate, QKV biases); 14.3B / 2.7B active.
    "qwen1.5-moe-a2.7b": replace(
        _llama("qwen1.5-moe-a2.7b", 24, 2048, 16, 16, 5632, 151936, 8192), qkv_bias=True,
        num_experts=60, experts_per_token=4, moe_ffn_hidden=1408, shared_experts=1,
        shared_expert_ffn_hidden=5632, shared_expert_gate=True),
    # Qwen3-30B-A3B: HF Qwen/Qwen3-30B-A3B config.json (qwen3_moe: 128 experts of 768, top-8,
    # head_dim 128 with q/k norms); model card 30.5B total, 3.3B activated.
    "qwen3-30b-a3b": replace(
        _llama("qwen3-30b-a3b", 48, 2048, 32, 4, 6144, 151936, 40960), head_size=128,
        qk_norm=True, num_experts=128, experts_per_token=8, moe_ffn_hidden=768),
    # Qwen3-235B-A22B: HF Qwen/Qwen3-235B-A22B config.json (qwen3_moe: 94 layers, hidden 4096,
    # 64 heads of 128, 4 KV heads, 128 experts of 1536, top-8, q/k norms, vocab 151,936; as
    # THUDM/slime scripts/models/qwen3-235B-A22B.sh writes it for Megatron); model card 235B
    # total, 22B activated.
    "qwen3-235b-a22b": replace(
        _llama("qwen3-235b-a22b", 94, 4096, 64, 4, 12288, 151936, 40960), head_size=128,
        qk_norm=True, num_experts=128, experts_per_token=8, moe_ffn_hidden=1536),
    # gpt-oss: HF openai/gpt-oss-20b and -120b config.json (gpt_oss: hidden 2880, 64 heads of
    # 64, 8 KV heads, experts of 2880 with biases, router bias, attention biases and sinks,
    # a 128-token sliding window on every other layer, swiglu_limit 7.0);
    # OpenAI gpt-oss model card Table 1: 20.91B / 116.83B total.
    "gpt-oss-20b": replace(
        _llama("gpt-oss-20b", 24, 2880, 64, 8, 2880, 201088, 131072), bias=True, head_size=64,
        attention_sinks=True, num_experts=32, experts_per_token=4, router_bias=True,
        sliding_window=128, full_attention_every=2, glu_clamp=7.0),
    "gpt-oss-120b": replace(
        _llama("gpt-oss-120b", 36, 2880, 64, 8, 2880, 201088, 131072), bias=True, head_size=64,
        attention_sinks=True, num_experts=128, experts_per_token=4, router_bias=True,
        sliding_window=128, full_attention_every=2, glu_clamp=7.0),
    # DeepSeek-V3: HF deepseek-ai/DeepSeek-V3 config.json (61 layers, first_k_dense_replace 3
    # with intermediate_size 18432, 256 routed experts of 2048, top-8, 1 shared expert, MLA:
    # q_lora_rank 1536, kv_lora_rank 512, qk 128 + 64, v 128; vocab 129280, untied;
    # num_nextn_predict_layers 1). README_WEIGHTS.md: 671B main model, 36.6B activated (input
    # embedding not counted), MTP module 11.5B unique.
    "deepseek-v3": replace(
        _llama("deepseek-v3", 61, 7168, 128, 128, 18432, 129280, 163840), num_experts=256,
        experts_per_token=8, moe_ffn_hidden=2048, shared_experts=1, first_dense_layers=3,
        router_score_bias=True, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, mtp_layers=1, router_groups=8,
        router_group_topk=4),
    # Kimi K2: HF moonshotai/Kimi-K2-Instruct config.json (model_type kimi_k2, DeepSeek-V3's
    # architecture: 61 layers, first_k_dense_replace 1, 384 routed experts of 2048, top-8, 1
    # shared expert, 64 heads, MLA as DeepSeek-V3's, vocab 163840, untied, n_group 1, no MTP
    # module: num_nextn_predict_layers 0). Kimi K2 report (Kimi Team 2025, arXiv 2507.20534
    # §2.3, Table 2): 1.04T total, 32.6B activated parameters.
    "kimi-k2": replace(
        _llama("kimi-k2", 61, 7168, 64, 64, 18432, 163840, 131072), num_experts=384,
        experts_per_token=8, moe_ffn_hidden=2048, shared_experts=1, first_dense_layers=1,
        router_score_bias=True, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128),
})  # fmt: skip
ALIASES = {"gpt2-small": "gpt2", "gpt2-124m": "gpt2", "gpt2-1.5b": "gpt2-xl", "gpt3": "gpt3-175b",
           "nemotron-15b": "nemotron-4-15b", "nemotron-340b": "nemotron-4-340b",
           "bloom": "bloom-176b",
           # Llama 3.1 keeps Llama 3's shapes (meta-llama/Llama-3.1-8B, -70B, -405B config.json:
           # the same layers, widths, heads and vocabulary; rope_scaling "llama3" to 131,072
           # positions, which rotary positions hold no parameters for)
           "llama3.1-8b": "llama3-8b", "llama3.1-70b": "llama3-70b",
           "llama3.1-405b": "llama3-405b",
           # Llama 3.3 70B keeps Llama 3.1 70B's config (meta-llama/Llama-3.3-70B-Instruct)
           "llama3.3-70b": "llama3-70b",
           "mistral-7b-v0.3": "mistral-7b", "mixtral-8x22b-v0.1": "mixtral-8x22b"}  # fmt: skip


def _letters_digits(name: str) -> str:
    return re.sub(r"[^0-9a-z.]", "", name.lower())


def find_preset(name: str, loose: bool = False) -> str | None:
    """The :data:`PRESETS` key a name (or one of :data:`ALIASES`) names, case-insensitive;
    ``loose``: letters, digits and dots compared, so that a paper's "GPT3-175B" or
    "Nemotron-340B" finds gpt3-175b or nemotron-4-340b. None where none does."""
    if not loose:
        canonical = ALIASES.get(name.lower(), name.lower())
        return canonical if canonical in PRESETS else None
    key = _letters_digits(name)
    return _loose_names().get(key) if key else None


def _loose_names() -> dict[str, str]:
    """Every preset name and alias, letters, digits and dots only -> its preset."""
    names = {_letters_digits(n): n for n in PRESETS}
    names.update({_letters_digits(a): n for a, n in ALIASES.items()})
    return names


#: Words of a model name that say how a run used the model, not which model it is ("Qwen3 MoE
#: 30B", "Llama3 70B 2-node", "Llama-3.3-70B-Instruct"), and a size word ("671B", "1.5b").
_NAME_FILLER = re.compile(r"(?:moe|base|instruct|chat|hf|\d+(?:node|gpu)s?)")
_NAME_SIZE = re.compile(r"(\d+(?:\.\d+)?)([mbt])")
_SIZE_UNIT = {"m": 1e6, "b": 1e9, "t": 1e12}


def find_preset_by_size(name: str) -> str | None:
    """The preset a model name gives by family and size where its letters are no preset's
    name ("DeepSeek V3 671B": deepseek-v3, "Qwen3 MoE 30B": qwen3-30b-a3b, "Llama3 70B 2-node":
    llama3-70b): its words but one size word and the run's descriptors (``_NAME_FILLER``) begin
    exactly one preset's name (an alias's included), and that preset's total parameters are
    within 5 % of the size. None where no preset or more than one does."""
    words = re.split(r"[\s_\-/()]+", re.sub(r"(\d)-(node|gpu)", r"\1\2", name.lower()))
    sizes = [m for w in words if (m := _NAME_SIZE.fullmatch(w))]
    family = _letters_digits("".join(w for w in words if not _NAME_SIZE.fullmatch(w)
                                     and not _NAME_FILLER.fullmatch(w)))  # fmt: skip
    if len(sizes) != 1 or not family:
        return None
    size = float(sizes[0].group(1)) * _SIZE_UNIT[sizes[0].group(2)]
    if size <= 0:  # ("0B": no model's size)
        return None
    found = {
        p
        for n, p in _loose_names().items()
        if n.startswith(family) and abs(PRESETS[p].total_params() / size - 1) <= 0.05
    }
    return found.pop() if len(found) == 1 else None


def preset(name: str, file: str | None = None, key: str = "model.preset") -> ModelSpec:
    """Look up a preset by name (case-insensitive)."""
    canonical = find_preset(name)
    if canonical is None:
        raise unknown_value(file, key, name, list(PRESETS), "model preset", sep=", ")
    return PRESETS[canonical]


_REQUIRED_INT_FIELDS = {
    "n_layer", "n_embd", "n_head", "vocab_size", "num_hidden_layers", "hidden_size",
    "num_attention_heads", "intermediate_size", "ffn_dim",
}  # fmt: skip
_INT_FIELDS = _REQUIRED_INT_FIELDS | {
    "n_embed",
    "n_head_kv",
    "num_kv_heads",
    "ffn_hidden_size",
    "num_ln_in_parallel_attn",
    "word_embed_proj_dim",
    "seq_length",
    "n_inner",
    "n_positions",
    "num_key_value_heads",
    "max_position_embeddings",
    "head_dim",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "decoder_sparse_step",
    "n_routed_experts",
    "n_shared_experts",
    "first_k_dense_replace",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "num_nextn_predict_layers",
    # DeepSeek's: integers in configuration_deepseek_v3.py (q_lora_rank and n_group may be
    # null); read with int() they took 1.5 as 1 and true as 1 (a fuzz campaign)
    "q_lora_rank",
    "n_group",
    "topk_group",
    # (DeepSeek's moe_layer_freq 1.5 or true read as 1; GPT-OSS's experts_per_token beside
    # num_experts_per_tok went unchecked: a fuzz campaign)
    "moe_layer_freq",
    "experts_per_token",
}
#: model_type values read as a Llama-style decoder (RMSNorm, gated MLP, rotary, no biases but
#: the Q/K/V biases some have): HF transformers' configuration_*.py field names. Phi-3 fuses
#: qkv_proj and gate_up_proj (the same parameters); Gemma's GeGLU (gelu_pytorch_tanh of the
#: gate times up) has SwiGLU's matrices, FLOPs and saved tensors, its RMSNorm scales by (1 + w)
#: (the same h parameters) and its embeddings by sqrt(h) (no parameters).
LLAMA_STYLE_KINDS = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe",
                     "gpt_oss", *DEEPSEEK_KINDS, "phi3", "gemma",
                     "gemma2", "gemma3_text", "olmo2")  # fmt: skip
#: Other decoders, each read by :func:`_hf_other` (its docstring gives their tensors).
#: Falcon's model_type, with the legacy names of its first releases' configs (RefinedWebModel:
#: Falcon-7B / Falcon-RW; RefinedWeb: Falcon-40B / 180B).
FALCON_KINDS = ("falcon", "refinedwebmodel", "refinedweb")
OTHER_HF_KINDS = ("opt", "gpt_neox", "bloom", "starcoder2", "nemotron", "phi", *FALCON_KINDS)
#: config.json fields only a model type's own reader takes (experts, latent attention): a
#: config without model_type that has one is not read as the dense Llama it would become.
_KIND_ONLY_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts",
                     "num_experts_per_tok", "moe_intermediate_size", "kv_lora_rank",
                     "q_lora_rank", "shared_expert_intermediate_size")  # fmt: skip
#: model_type values the importer reads.
HF_KINDS = ("gpt2", "gpt_bigcode", "gptj", *LLAMA_STYLE_KINDS, *OTHER_HF_KINDS)
#: tie_word_embeddings where config.json leaves it out (the configuration class's default, or
#: PretrainedConfig's True where the class sets none: transformers 008e5743
#: configuration_gemma.py / configuration_starcoder2.py, configuration_opt.py at 1f3ae2b3 and
#: configuration_bloom.py at d94ee404 set no tie key).
_HF_TIED_DEFAULT = {
    "gemma": True,
    "gemma2": True,
    "gemma3_text": True,
    "opt": True,
    "bloom": True,
    "starcoder2": True,
    **dict.fromkeys(FALCON_KINDS, True),
}  # (FalconConfig sets none either)


#: config.json fields read as numbers that may be null (transformers then uses its default);
#: a null in any other of :data:`_NUMBER_FIELDS` is an error naming it.
_NULL_OK = frozenset({
    "n_inner", "num_key_value_heads", "head_dim", "shared_expert_intermediate_size",
    "n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers", "q_lora_rank",
    "n_group", "attention_dropout", "n_head_kv", "num_kv_heads", "ffn_hidden_size",
    "num_ln_in_parallel_attn",
})  # fmt: skip
_NUMBER_FIELDS = _INT_FIELDS | {"resid_pdrop", "moe_layer_freq", "topk_group", "q_lora_rank",
                                "n_group", "attention_dropout", "experts_per_token"}  # fmt: skip
#: ModelSpec field -> the GPT-2 config.json field it comes from (errors name the file's field).
_GPT2_NAMES = {
    "layers": "n_layer", "hidden": "n_embd", "heads": "n_head", "kv_heads": "n_head",
    "ffn_hidden": "n_inner", "vocab": "vocab_size", "max_positions": "n_positions",
    "dropout": "resid_pdrop",
}  # fmt: skip


def _hf_names(kind: str, cfg: dict[str, Any]) -> dict[str, str]:
    """ModelSpec field -> the config.json field of a Llama-style ``kind`` it comes from."""
    names = {
        "layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads", "ffn_hidden": "intermediate_size",
        "vocab": "vocab_size", "max_positions": "max_position_embeddings",
        "dropout": "attention_dropout", "head_size": "head_dim",
        "num_experts": "num_local_experts", "experts_per_token": "num_experts_per_tok",
        "moe_ffn_hidden": "moe_intermediate_size",
        "shared_expert_ffn_hidden": "shared_expert_intermediate_size",
        "shared_experts": "shared_expert_intermediate_size",
        "first_dense_layers": "first_k_dense_replace", "router_groups": "n_group",
        "router_group_topk": "topk_group", "mtp_layers": "num_nextn_predict_layers",
        **{f: f for f in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                          "qk_rope_head_dim", "v_head_dim")},
    }  # fmt: skip
    if kind in ("qwen2_moe", "qwen3_moe"):
        names["num_experts"] = "num_experts"
    elif kind in DEEPSEEK_KINDS:
        names.update(num_experts="n_routed_experts", shared_experts="n_shared_experts",
                     shared_expert_ffn_hidden="n_shared_experts")  # fmt: skip
    elif kind == "gpt_oss" and "num_experts_per_tok" not in cfg and "experts_per_token" in cfg:
        names["experts_per_token"] = "experts_per_token"
    return names


def _hf_bool(cfg: dict[str, Any], field: str, default: bool, path: Path) -> bool:
    """A boolean field (``tie_word_embeddings``): true or false, not the string "false". A null
    is the default, but a null ``tie_word_embeddings`` is false (PretrainedConfig stores the
    None, which transformers' tie_weights reads as falsy: an untied head)."""
    v = cfg.get(field, default)
    if v is None:
        return False if field == "tie_word_embeddings" and field in cfg else default
    if not isinstance(v, bool):
        raise ConfigError(str(path), field, "must be true or false", v)
    return v


def _hf_head_size(cfg: dict[str, Any], path: Path, default: int | None = None) -> int:
    """``head_dim`` where it differs from hidden_size / num_attention_heads (Mistral-Nemo:
    5120 / 32 heads of 128): transformers' LlamaAttention, MistralAttention, Qwen2Attention and
    MixtralAttention take ``config.head_dim`` when given; where it is absent, ``default`` (the
    configuration class's: GemmaConfig's 256, transformers 008e5743 configuration_gemma.py),
    else 0, as where it is null or equal."""
    d = cfg.get("head_dim", default)
    if d is None:
        return 0
    if d < 1:
        raise ConfigError(str(path), "head_dim", "must be a positive integer (or left out: "
                          "hidden_size / num_attention_heads)", d)  # fmt: skip
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    return 0 if heads > 0 and h % heads == 0 and d == h // heads else int(d)


def _validate_hf(spec: ModelSpec, path: Path, names: dict[str, str]) -> ModelSpec:
    """validate_model for a shape read from config.json: errors name its fields
    (``num_key_value_heads``, not ``model.kv_heads``)."""
    try:
        return validate_model(spec, str(path), names=names)  # spec.limits ranges too
    except ConfigError as exc:
        field = exc.key.removeprefix("model.")
        if exc.file != str(path) or field == exc.key or field not in names:
            raise
        raise ConfigError(exc.file, names[field], exc.message, exc.value, exc.allowed) from None


def from_hf_config(
    path: str | Path, file: str | None = None, key: str = "model.hf_config"
) -> ModelSpec:
    """Import a Hugging Face ``config.json`` of a :data:`HF_KINDS` model_type: GPT-2's field
    names, the Llama-style ones (:data:`LLAMA_STYLE_KINDS`) and :func:`_hf_other`'s."""
    p = Path(path)
    text = read_text_file(p, (file, key), "config.json")  # a regular file of <= 10 MiB
    try:
        cfg: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(file, key, f"cannot read config.json ({exc})", str(path)) from None
    except RecursionError:
        raise ConfigError(file, key, "cannot read config.json (nested too deeply)",
                          str(path)) from None  # fmt: skip
    except ValueError as exc:  # e.g. an integer of 5,000 digits
        raise ConfigError(file, key, f"cannot read config.json ({exc})", str(path)) from None
    if not isinstance(cfg, dict):
        raise ConfigError(file, key, "config.json must be a JSON object", str(path))
    for field, value in cfg.items():  # shape fields must be integers (or null where optional)
        if (
            field in _INT_FIELDS
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, int))
        ):
            raise ConfigError(str(path), field, "must be an integer", value)
        if field in _REQUIRED_INT_FIELDS and value is None:
            raise ConfigError(str(path), field, "must be an integer", value)
    kind = str(cfg.get("model_type", "")).lower()
    if not kind and (typed := [f for f in _KIND_ONLY_FIELDS if f in cfg]):
        # (read as a dense Llama, Mixtral's 46.7B parameters became 7.2B: a fuzz campaign)
        raise ConfigError(str(path), "model_type", f"missing: {typed[0]} is read by the model "
                          "type that has it (a config without model_type is read as GPT-2 or "
                          "a dense Llama only)", None, ", ".join(HF_KINDS))  # fmt: skip
    # (a Hugging Face model folder's config.json is named by its folder; a file of another
    # name by itself: a review found sc/qwen25_7b_config.json called "sc")
    folder_named = p.name == "config.json"
    name = str(cfg.get("_name_or_path") or (p.parent.name if folder_named else p.stem) or kind)
    names: dict[str, str] = {}
    try:
        if kind == "gptj":
            return _validate_hf(_hf_gptj(cfg, path, name), path, dict(_GPT2_NAMES))
        # (GPT-2's field names; a config without model_type that has them is read as GPT-2,
        # another model_type with them, e.g. codegen, is not one of HF_KINDS)
        if kind in ("gpt2", "gpt_bigcode") or (not kind and "n_embd" in cfg):
            names = dict(_GPT2_NAMES)
            h = int(cfg["n_embd"])
            heads = int(cfg["n_head"])
            default_act = "gelu_pytorch_tanh" if kind == "gpt_bigcode" else "gelu_new"
            act = _hf_act(cfg, "activation_function", default_act, path)
            inner = cfg.get("n_inner")  # null: 4 h (GPT2MLP)
            # GPTBigCode (StarCoder 1, SantaCoder): one K/V head with multi_query (its default)
            mqa = kind == "gpt_bigcode" and _hf_bool(cfg, "multi_query", True, path)
            if mqa:
                names["kv_heads"] = "multi_query"
            spec = ModelSpec(
                name=name, layers=int(cfg["n_layer"]), hidden=h, heads=heads,
                kv_heads=1 if mqa else heads,
                ffn_hidden=4 * h if inner is None else int(inner), vocab=int(cfg["vocab_size"]),
                max_positions=int(cfg.get("n_positions", 1024)),
                mlp="swiglu" if "glu" in act else _hf_mlp(act),
                tied_embeddings=_hf_bool(cfg, "tie_word_embeddings", True, path),
                **_hf_dropouts(cfg, path, ("resid_pdrop", 0.1), ("attn_pdrop", 0.1)),
            )  # fmt: skip
            return _validate_hf(spec, path, names)
        if kind in OTHER_HF_KINDS:
            spec, names = _hf_other(kind, cfg, path, name)
            return _validate_hf(spec, path, names)
        if kind in LLAMA_STYLE_KINDS or (not kind and "hidden_size" in cfg):
            names = _hf_names(kind, cfg)
            # Every Llama-style MLP is gated, down(act(gate(x)) * up(x)), whatever its
            # activation (transformers LlamaMLP, GemmaMLP with gelu_pytorch_tanh, ...): three
            # matrices and the same saved tensors, so the name only has to be one
            for field in ("hidden_act", "hidden_activation"):
                if cfg.get(field) is not None:
                    _hf_act(cfg, field, "silu", path)
            heads = int(cfg["num_attention_heads"])
            kv = cfg.get("num_key_value_heads")  # null: heads (MHA), as transformers
            fields = hf_moe_fields(kind, cfg, str(path))
            if kind not in DEEPSEEK_KINDS:  # MLA: the *_head_dim fields
                # (GemmaConfig's head_dim defaults to 256, whatever hidden / heads is)
                fields.setdefault(
                    "head_size",
                    _hf_head_size(cfg, path, 256 if kind.startswith("gemma") else None),
                )
            if kind in ("gemma2", "gemma3_text"):
                fields.update(_hf_gemma2(kind, cfg, path))
            if kind == "olmo2":  # (transformers Olmo2DecoderLayer / Olmo2Attention)
                # no norm before attention or MLP, one after each; q_norm / k_norm over all of
                # q and of k
                fields.update(pre_norms=False, post_norms=True, qk_norm=True,
                              qk_norm_width="full")  # fmt: skip
            spec = ModelSpec(
                name=name, layers=int(cfg["num_hidden_layers"]), hidden=int(cfg["hidden_size"]),
                heads=heads, kv_heads=heads if kv is None else int(kv),
                ffn_hidden=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
                max_positions=int(cfg.get("max_position_embeddings", 4096)),
                mlp="swiglu", tied_embeddings=_hf_bool(
                    cfg, "tie_word_embeddings", _HF_TIED_DEFAULT.get(kind, False), path),
                positions="rotary",
                **_llama_biases(kind, cfg, path), **_hf_sliding(kind, cfg, path),
                norm="rmsnorm", dropout=_hf_rate(cfg, "attention_dropout", 0.0, path),
                # Phi3Config (and other Llama-style configs that carry it): 1.0 by default
                rotary_fraction=_hf_fraction(cfg, "partial_rotary_factor", 1.0, path),
                **fields,
            )  # fmt: skip
            return _validate_hf(spec, path, names)
    except KeyError as exc:
        raise ConfigError(str(path), exc.args[0], "missing field in config.json") from None
    except (TypeError, ValueError, OverflowError) as exc:
        # int(None) / float(None): name the null field (those read with a default for null
        # never get here)
        nulls = [f for f, v in cfg.items()
                 if v is None and f in _NUMBER_FIELDS and f not in _NULL_OK]  # fmt: skip
        if nulls:
            raise ConfigError(str(path), nulls[0], "must be a number, not null (leave the field "
                              "out for its default)") from None  # fmt: skip
        raise ConfigError(str(path), "<field>", f"invalid value in config.json ({exc})") from None
    if kind == "gemma3":  # (Gemma3ForConditionalGeneration: a SigLIP tower and text_config)
        raise ConfigError(str(path), "model_type", "gemma3 is the multimodal config: give its "
                          "text_config as a config.json of model_type gemma3_text (the vision "
                          "tower is not modelled)", kind)  # fmt: skip
    raise ConfigError(str(path), "model_type", "unsupported model_type", kind, ", ".join(HF_KINDS))


#: Llama-style kinds whose ``attention_bias`` puts biases on o_proj too, and those whose
#: ``mlp_bias`` is read (transformers 4.46 LlamaAttention / GemmaAttention, LlamaMLP; Qwen3's
#: in later releases); the others' o_proj and MLP have none.
_O_BIAS_KINDS = ("llama", "gemma", "gemma2", "gemma3_text", "qwen3", "qwen3_moe", "olmo2")
_MLP_BIAS_KINDS = ("llama",)
_NO_BIAS_KINDS = ("mistral", "mixtral", "phi3")


def _llama_biases(kind: str, cfg: dict[str, Any], path: Path) -> dict[str, bool]:
    """``bias`` / ``qkv_bias`` / ``mlp_bias`` of a Llama-style config: GPT-OSS's
    ``attention_bias`` (default true) on every linear, its experts' too; Qwen2's fixed Q/K/V
    biases; ``attention_bias`` on q, k, v (and on o_proj for :data:`_O_BIAS_KINDS`, which with
    the MLP's ``mlp_bias`` is every linear; without it an error: no key says o_proj alone)."""
    if kind == "gpt_oss":
        return {"bias": _hf_bool(cfg, "attention_bias", True, path)}
    # (MistralAttention, MixtralAttention and Phi3Attention build no biases whatever
    # attention_bias says: transformers 4.46)
    att = kind not in _NO_BIAS_KINDS and _hf_bool(cfg, "attention_bias", False, path)
    mlp = kind in _MLP_BIAS_KINDS and _hf_bool(cfg, "mlp_bias", False, path)
    if kind in _O_BIAS_KINDS and att:
        if not mlp:
            what = "without mlp_bias" if kind in _MLP_BIAS_KINDS else "(the MLP has no biases)"
            raise ConfigError(str(path), "attention_bias", f"true {what}: biases on q, k, v "
                              "and o_proj only are not expressible (model.bias puts them on "
                              "every linear, qkv_bias on q, k, v)", True)  # fmt: skip
        return {"bias": True}
    return {"bias": False, "qkv_bias": kind in ("qwen2", "qwen2_moe") or att, "mlp_bias": mlp}


#: Kinds whose ``sliding_window`` transformers applies (4.46 MistralAttention and the models
#: copied from it: their flash-attention path's window_size, their masks; GPT-OSS's
#: ``layer_types``); the Qwen ones apply it only with ``use_sliding_window``.
_SLIDING_KINDS = ("mistral", "mixtral", "phi3", "starcoder2", "gpt_oss")
_QWEN_KINDS = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")


def _hf_sliding(kind: str, cfg: dict[str, Any], path: Path) -> dict[str, int]:
    """``sliding_window`` / ``full_attention_every`` of a config: the window on every layer
    (:data:`_SLIDING_KINDS`; null: none) or, for GPT-OSS, on the layers ``layer_types`` names
    sliding (GptOssConfig's default: every other one, the odd ones full). A Qwen config's
    ``use_sliding_window`` (windows from ``max_window_layers`` on) and a ``layer_types`` that is
    not every n-th layer full are errors naming the field."""
    if kind in _QWEN_KINDS:
        if _hf_bool(cfg, "use_sliding_window", False, path):
            raise ConfigError(str(path), "use_sliding_window", "true (windows on the layers "
                              "from max_window_layers on) is not expressible: "
                              "model.full_attention_every puts full layers periodically",
                              True)  # fmt: skip
        return {}
    if kind not in _SLIDING_KINDS:
        return {}
    # (the configuration classes' defaults where the field is absent: MistralConfig's 4,096,
    # GptOssConfig's 128, none for the others; null: no window)
    w = _hf_window(cfg, {"mistral": 4096, "gpt_oss": 128}.get(kind), path)
    if w is None:
        return {}
    if kind != "gpt_oss":
        return {"sliding_window": w}
    types = cfg.get("layer_types")
    if types is None:
        return {"sliding_window": w, "full_attention_every": 2}
    return {
        "sliding_window": w,
        "full_attention_every": _full_every(types, int(cfg["num_hidden_layers"]), path),
    }


def _hf_gemma2(kind: str, cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """Gemma 2's and Gemma 3's fields beyond Gemma's (transformers 4.46 Gemma2DecoderLayer /
    Gemma2Attention / Gemma2ForCausalLM; 4.57 Gemma3TextConfig / Gemma3DecoderLayer /
    Gemma3Attention): the sandwich norms (post_attention_layernorm, pre_ / post_feedforward_
    layernorm), soft-capping of the scores (``attn_logit_softcapping``) and of the final
    logits (``final_logit_softcapping``; Gemma 2's default 50 / 30, Gemma 3's none; null:
    none), ``sliding_window`` (4,096 by default) on the layers that slide: ``layer_types``
    where given (transformers 4.57's Gemma2Attention reads it too), else Gemma 2's even ones
    (``is_sliding = not layer_idx % 2``) and Gemma 3's every layer but each
    ``sliding_window_pattern``-th (6); Gemma 3's q_norm / k_norm (RMSNorms of head_dim:
    ``qk_norm``). GeGLU, head_dim 256 by default and sqrt(h) embedding scaling as Gemma's;
    ``query_pre_attn_scalar`` and the local / global RoPE bases only change values.
    ``use_bidirectional_attention`` (not causal) is refused."""
    gemma3 = kind == "gemma3_text"
    out: dict[str, Any] = {"post_norms": True, **({"qk_norm": True} if gemma3 else {})}
    for field, key in (("attn_logit_softcapping", "attention_softcap"),
                       ("final_logit_softcapping", "logit_softcap")):  # fmt: skip
        v = cfg.get(field, None if gemma3 else 50.0 if field.startswith("attn") else 30.0)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0):
            raise ConfigError(str(path), field, "must be a positive number (or null: no "
                              "capping)", v)  # fmt: skip
        out[key] = v is not None
    if gemma3 and _hf_bool(cfg, "use_bidirectional_attention", False, path):
        raise ConfigError(str(path), "use_bidirectional_attention", "true (attention that is "
                          "not causal) is not expressible", True)  # fmt: skip
    w = _hf_window(cfg, 4096, path)
    if w is None:
        return out
    every = 2
    if gemma3:
        every = cfg.get("sliding_window_pattern", 6)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(str(path), "sliding_window_pattern", "must be a positive "
                              "integer", every)  # fmt: skip
    if cfg.get("layer_types") is not None:  # Gemma2Config / Gemma3TextConfig (4.57) use it
        every = _full_every(cfg["layer_types"], int(cfg["num_hidden_layers"]), path)
    return {**out, "sliding_window": w, "full_attention_every": every}


def _hf_window(cfg: dict[str, Any], default: int | None, path: Path) -> int | None:
    """``sliding_window`` of a config: a positive integer, None where it is null (no window) or
    absent with no ``default`` (the configuration class's)."""
    w = cfg.get("sliding_window", default)
    if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
        raise ConfigError(str(path), "sliding_window", "must be a positive integer (or null: "
                          "no window)", w)  # fmt: skip
    return w


def _full_every(types: Any, n_layers: int, path: Path) -> int:
    """The n of a ``layer_types`` list whose every n-th entry is "full_attention" and the others
    "sliding_attention" (0: none full); any other list is an error naming the field, one of
    another length than ``n_layers`` before a list of that many is built (a fuzz campaign:
    num_hidden_layers 1e12 held the CLI for minutes)."""
    if not isinstance(types, list) or len(types) != n_layers:
        raise ConfigError(str(path), "layer_types", f"one entry per layer (num_hidden_layers = "
                          f"{n_layers:,})", str(types)[:80])  # fmt: skip
    full = (
        [i for i, t in enumerate(types) if t == "full_attention"] if isinstance(types, list) else []
    )
    every = full[0] + 1 if full else 0
    want = ["full_attention" if every and (i + 1) % every == 0 else "sliding_attention"
            for i in range(n_layers)]  # fmt: skip
    if types != want:
        raise ConfigError(str(path), "layer_types", "only every n-th layer full (the rest "
                          "sliding_attention) is expressible", str(types)[:80])  # fmt: skip
    return every


def _hf_act(cfg: dict[str, Any], field: str, default: str, path: Path) -> str:
    """An activation's name in config.json (HF ``ACT2FN``'s keys); absent: ``default``. A
    value not a string (0, [], {}) is an error naming the field (it was read as GeLU: a fuzz
    campaign)."""
    v = cfg.get(field, default)
    if not isinstance(v, str) or not v:
        raise ConfigError(str(path), field, "must be an activation's name (transformers "
                          "ACT2FN: gelu_new, relu, silu, ...)", v)  # fmt: skip
    return v


def _hf_mlp(act: str) -> str:
    """The MLP kind of a two-matrix MLP whose activation is ``act`` (HF ``ACT2FN`` names):
    relu, relu2 (squared ReLU), and gelu for every other element-wise activation (gelu_new,
    gelu_pytorch_tanh, quick_gelu, ...: each saves its input for its backward, as GeLU)."""
    return act if act in ("relu", "relu2") else "gelu"


def _hf_rate(cfg: dict[str, Any], field: str, default: float, path: Path) -> float:
    """A dropout probability of config.json: a number in [0, 1) (null: ``default``)."""
    v = cfg.get(field, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < 1.0:
        raise ConfigError(str(path), field, "must be a number in [0, 1)", v)
    return float(v)


def _hf_fraction(cfg: dict[str, Any], field: str, default: float, path: Path) -> float:
    """A fraction of config.json in (0, 1] (absent or null: transformers' ``default``)."""
    v = cfg.get(field, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < v <= 1.0:
        raise ConfigError(str(path), field, "must be a number in (0, 1]", v)
    return float(v)


def _hf_dropouts(cfg: dict[str, Any], path: Path, residual: tuple[str, float],
                 attention: tuple[str, float]) -> dict[str, Any]:  # fmt: skip
    """``dropout`` and ``attention_dropout`` of a config with a residual (hidden) and an
    attention dropout probability, each (field, transformers' default). With attention dropout
    alone, its rate is ``dropout`` and the residual masks are counted too (one flag short)."""
    res = _hf_rate(cfg, residual[0], residual[1], path)
    att = _hf_rate(cfg, attention[0], attention[1], path)
    # (no dropout at all: the default true, which then drops nothing)
    return {"dropout": res or att, "attention_dropout": att > 0 or not res}


def _hf_other(kind: str, cfg: dict[str, Any], path: Path,
              name: str) -> tuple[ModelSpec, dict[str, str]]:  # fmt: skip
    """A config.json of :data:`OTHER_HF_KINDS` (transformers' configuration_<kind>.py names and
    defaults; modeling_<kind>.py's tensors), with the ModelSpec field -> config field map:

    - opt (OPTDecoderLayer): q, k, v, out_proj and fc1 / fc2 (``ffn_dim``, ReLU), biases on all
      (``enable_bias``), two LayerNorms a layer and a final one, learned positions of
      ``max_position_embeddings`` + 2 rows (OPTLearnedPositionalEmbedding's offset: the two
      rows count as parameters; sequences up to max_positions are accepted, 2 more than OPT
      reaches), tied; ``dropout`` on the residual branches, ``attention_dropout`` (0.0) on the
      probabilities; ``word_embed_proj_dim`` other than hidden_size (OPT-350m's project_in /
      project_out), a post-norm layout (``do_layer_norm_before`` false) and a removed final
      LayerNorm (``_remove_final_layer_norm``) are refused;
    - gpt_neox (Pythia, GPT-NeoX-20B): fused query_key_value, dense, dense_h_to_4h /
      dense_4h_to_h (GeLU), biases on all, two LayerNorms a layer, rotary (``rotary_pct`` of
      each head: no parameters), untied embed_in / embed_out, ``use_parallel_residual``
      (default true) as ``parallel_residual``; ``attention_bias`` false leaves the MLP's
      biases (``mlp_bias``);
    - bloom: fused query_key_value, dense, a 4h GeLU MLP, biases on all, LayerNorms, a
      LayerNorm on the word embeddings (``embedding_norm``), ALiBi positions, tied; the 176B
      config's ``n_embed`` (which BloomConfig takes over ``hidden_size``) and
      ``num_attention_heads``; ``seq_length`` (or 2,048, the BLOOM model card's) as
      max_positions;
    - starcoder2: q, k, v, o (GQA: 2 KV heads when the config leaves them out, as
      Starcoder2Config, transformers 008e5743 configuration_starcoder2.py) and c_fc / c_proj
      (``gelu_pytorch_tanh``), biases on all (``use_bias``), LayerNorms, rotary, tied; ``residual_dropout`` and ``attention_dropout``;
    - nemotron (Nemotron-4, Minitron): q, k, v, o (GQA, ``head_dim``), up / down with squared
      ReLU (``relu2``), LayerNorm1P (weight and bias), rotary (``partial_rotary_factor``),
      untied; ``attention_bias`` (all linears) and ``mlp_bias`` (the MLP's): attention biases without MLP biases are refused;
    - falcon (transformers 4.46 FalconConfig / FalconDecoderLayer; the legacy model_type
      RefinedWebModel (Falcon-7B/-RW) and RefinedWeb (Falcon-40B/180B) with their ``n_layer``,
      ``n_head``, ``n_head_kv``): fused query_key_value, dense, dense_h_to_4h / dense_4h_to_h
      (``ffn_hidden_size``, 4h by default; ``activation`` GeLU), ``bias`` on all or none,
      LayerNorms, rotary or ``alibi``, tied. ``new_decoder_architecture`` (40B, 180B):
      ``num_kv_heads`` groups and, with ``parallel_attn``, ln_attn and ln_mlp on the block's input
      (``parallel_residual``), or one shared norm where ``num_ln_in_parallel_attn`` is 1; the
      original layout: one KV head with ``multi_query`` (else MHA), and with ``parallel_attn``
      one input_layernorm for both branches (``shared_norm``, Falcon-7B), else a sequential
      block (Falcon-RW). ``attention_dropout`` drops the probabilities on the ALiBi path only
      (FalconAttention's rotary path runs SDPA with dropout_p 0) and, in the sequential
      block, the attention's output; ``hidden_dropout`` the MLP's. In the parallel forms
      Falcon drops the branches' sum once (``dropout_add``) where simtrain counts a mask per
      branch, and an embedding dropout mask is counted that Falcon does not have: only with
      a nonzero ``hidden_dropout`` (the released configs' is 0);
    - phi (Phi-1, Phi-1.5, Phi-2; transformers 4.46 PhiDecoderLayer): q, k, v, dense and fc1 /
      fc2 (``hidden_act`` gelu_new), biases on all and on the LM head (``head_bias``), one
      LayerNorm feeding attention and MLP side by side (``parallel_residual``,
      ``shared_norm``), rotary on ``int(head_dim x partial_rotary_factor)`` of each head's
      dimensions (0.5 by default), untied; ``resid_pdrop`` on both branches,
      ``attention_dropout``; ``qk_layernorm`` (a LayerNorm with bias on q and k, where
      simtrain's q/k norms are RMSNorms) is refused."""
    if kind in ("bloom", *FALCON_KINDS) and cfg.get("n_embed") is not None:  # n_embed wins
        h, hidden_field = int(cfg["n_embed"]), "n_embed"
    else:
        h, hidden_field = int(cfg["hidden_size"]), "hidden_size"
    if h < 1:
        raise ConfigError(str(path), hidden_field, "must be a positive integer", h)
    names = {"layers": "num_hidden_layers", "hidden": hidden_field,
             "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
             "ffn_hidden": "intermediate_size", "vocab": "vocab_size",
             "max_positions": "max_position_embeddings", "head_size": "head_dim"}  # fmt: skip
    tied = _hf_bool(cfg, "tie_word_embeddings", _HF_TIED_DEFAULT.get(kind, False), path)
    if kind == "bloom":
        layers = int(cfg["n_layer"] if "n_layer" in cfg else cfg["num_hidden_layers"])
        heads = int(cfg["n_head"] if "n_head" in cfg else cfg["num_attention_heads"])
        names.update(layers="n_layer" if "n_layer" in cfg else "num_hidden_layers",
                     heads="n_head" if "n_head" in cfg else "num_attention_heads",
                     ffn_hidden=hidden_field, max_positions="seq_length",
                     dropout="hidden_dropout")  # fmt: skip
        spec = ModelSpec(
            name=name, layers=layers, hidden=h, heads=heads, kv_heads=heads, ffn_hidden=4 * h,
            vocab=int(cfg["vocab_size"]), max_positions=int(cfg.get("seq_length") or 2048),
            mlp="gelu", tied_embeddings=tied, positions="alibi", bias=True, norm="layernorm",
            embedding_norm=True,
            **_hf_dropouts(cfg, path, ("hidden_dropout", 0.0), ("attention_dropout", 0.0)),
        )  # fmt: skip
        return spec, names
    if kind in FALCON_KINDS:
        return _hf_falcon(kind, cfg, path, name, h, names)
    if kind == "phi":
        return _hf_phi(cfg, path, name, h, names)
    layers, heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    kv = cfg.get("num_key_value_heads")
    if kv is None:  # MHA, but Starcoder2Config's default of 2 KV heads
        kv = 2 if kind == "starcoder2" else heads
    common = {"name": name, "layers": layers, "hidden": h, "heads": heads,
              "kv_heads": int(kv), "vocab": int(cfg["vocab_size"]),
              "tied_embeddings": tied, "norm": "layernorm"}  # fmt: skip
    if kind == "opt":
        names.update(ffn_hidden="ffn_dim", dropout="dropout")
        proj = cfg.get("word_embed_proj_dim")
        if proj is not None and proj != h:
            raise ConfigError(str(path), "word_embed_proj_dim", f"an embedding width other than "
                              f"hidden_size = {h} (project_in / project_out, OPT-350m) is not "
                              "expressible", proj)  # fmt: skip
        for flag, expressible in (("do_layer_norm_before", True),
                                  ("layer_norm_elementwise_affine", True),
                                  ("_remove_final_layer_norm", False)):  # fmt: skip
            if _hf_bool(cfg, flag, expressible, path) != expressible:
                raise ConfigError(str(path), flag, f"{str(not expressible).lower()} is not "
                                  "expressible (simtrain's blocks are pre-norm with affine "
                                  "norms and a final norm)", not expressible)  # fmt: skip
        spec = ModelSpec(
            **common, ffn_hidden=int(cfg["ffn_dim"]),
            max_positions=int(cfg.get("max_position_embeddings", 2048)) + 2,
            mlp=_hf_mlp(_hf_act(cfg, "activation_function", "relu", path)), positions="learned",
            bias=_hf_bool(cfg, "enable_bias", True, path),
            **_hf_dropouts(cfg, path, ("dropout", 0.1), ("attention_dropout", 0.0)),
        )  # fmt: skip
        return spec, names
    if kind == "gpt_neox":
        names["dropout"] = "hidden_dropout"
        attention_bias = _hf_bool(cfg, "attention_bias", True, path)  # (false: the MLP's)
        spec = ModelSpec(
            **common, ffn_hidden=int(cfg["intermediate_size"]),
            max_positions=int(cfg.get("max_position_embeddings", 2048)),
            mlp=_hf_mlp(_hf_act(cfg, "hidden_act", "gelu", path)), positions="rotary",
            bias=attention_bias, mlp_bias=not attention_bias,
            parallel_residual=_hf_bool(cfg, "use_parallel_residual", True, path),
            rotary_fraction=_hf_fraction(cfg, "rotary_pct", 0.25, path),
            **_hf_dropouts(cfg, path, ("hidden_dropout", 0.0), ("attention_dropout", 0.0)),
        )  # fmt: skip
        return spec, names
    if kind == "starcoder2":
        names["dropout"] = "residual_dropout"
        spec = ModelSpec(
            **common, ffn_hidden=int(cfg["intermediate_size"]),
            max_positions=int(cfg.get("max_position_embeddings", 4096)),
            mlp=_hf_mlp(_hf_act(cfg, "hidden_act", "gelu_pytorch_tanh", path)), positions="rotary",
            bias=_hf_bool(cfg, "use_bias", True, path), **_hf_sliding(kind, cfg, path),
            **_hf_dropouts(cfg, path, ("residual_dropout", 0.0), ("attention_dropout", 0.0)),
        )  # fmt: skip
        return spec, names
    # nemotron: attention dropout only (NemotronDecoderLayer has no residual dropout)
    names["dropout"] = "attention_dropout"
    bias = _hf_bool(cfg, "attention_bias", False, path)
    mlp_bias = _hf_bool(cfg, "mlp_bias", False, path)
    if bias and not mlp_bias:
        raise ConfigError(str(path), "mlp_bias", "false with attention_bias true (biases on the "
                          "attention's linears only) is not expressible: model.bias puts them "
                          "on every linear, mlp_bias on the MLP's", False)  # fmt: skip
    spec = ModelSpec(
        **common, ffn_hidden=int(cfg["intermediate_size"]),
        max_positions=int(cfg.get("max_position_embeddings", 4096)),
        mlp=_hf_mlp(_hf_act(cfg, "hidden_act", "relu2", path)), positions="rotary", bias=bias,
        mlp_bias=mlp_bias and not bias,
        dropout=_hf_rate(cfg, "attention_dropout", 0.0, path),
        head_size=_hf_head_size(cfg, path),
        rotary_fraction=_hf_fraction(cfg, "partial_rotary_factor", 0.5, path),
    )  # fmt: skip
    return spec, names


def _hf_gptj(cfg: dict[str, Any], path: Path, name: str) -> ModelSpec:
    """A GPT-J config.json (transformers 4.46 modeling_gptj.py GPTJAttention / GPTJMLP /
    GPTJBlock / GPTJForCausalLM): q, k, v, out_proj without biases, fc_in / fc_out
    (``n_inner``, 4h by default; ``activation_function`` gelu_new) with biases
    (``mlp_bias``), one LayerNorm (ln_1) feeding attention and MLP side by side
    (``parallel_residual``, ``shared_norm``), rotary on ``rotary_dim`` (64 by default; an even
    number, null only with one head) of each head's dimensions, an LM head with a bias,
    untied; ``resid_pdrop``
    on both branches, ``attn_pdrop`` on the probabilities."""
    h, heads = int(cfg["n_embd"]), int(cfg["n_head"])
    head_dim = h // heads if heads > 0 else 0
    rdim = cfg.get("rotary_dim", 64)
    # GPTJAttention builds its sin/cos tables over rotary_dim, or n_embd where it is null
    # (which fits a head only when there is one), and rotates pairs of dimensions
    if rdim is None and heads == 1:
        rdim = head_dim
    if (rdim is None or isinstance(rdim, bool) or not isinstance(rdim, int)
            or not 0 < rdim <= max(head_dim, 1) or rdim % 2):  # fmt: skip
        absent = " (absent: 64, GPTJConfig's default)" if "rotary_dim" not in cfg else ""
        raise ConfigError(str(path), "rotary_dim", f"must be an even integer in [2, head dim "
                          f"= {head_dim}]{absent}", rdim)  # fmt: skip
    inner = cfg.get("n_inner")
    return ModelSpec(
        name=name, layers=int(cfg["n_layer"]), hidden=h, heads=heads, kv_heads=heads,
        ffn_hidden=4 * h if inner is None else int(inner), vocab=int(cfg["vocab_size"]),
        max_positions=int(cfg.get("n_positions", 2048)),
        mlp=_hf_mlp(_hf_act(cfg, "activation_function", "gelu_new", path)),
        tied_embeddings=_hf_bool(cfg, "tie_word_embeddings", False, path),
        positions="rotary", rotary_fraction=rdim / head_dim,
        bias=False, mlp_bias=True, head_bias=True, norm="layernorm",
        parallel_residual=True, shared_norm=True,
        **_hf_dropouts(cfg, path, ("resid_pdrop", 0.0), ("attn_pdrop", 0.0)),
    )  # fmt: skip


def _hf_phi(cfg: dict[str, Any], path: Path, name: str, h: int,
            names: dict[str, str]) -> tuple[ModelSpec, dict[str, str]]:  # fmt: skip
    """A Phi config.json (:func:`_hf_other`'s phi entry; transformers 4.46 modeling_phi.py
    PhiAttention / PhiMLP / PhiDecoderLayer / PhiForCausalLM)."""
    if _hf_bool(cfg, "qk_layernorm", False, path):
        raise ConfigError(str(path), "qk_layernorm", "true (LayerNorms with biases on q and k) "
                          "is not expressible: model.qk_norm is an RMSNorm", True)  # fmt: skip
    names = {**names, "dropout": "resid_pdrop", "rotary_fraction": "partial_rotary_factor"}
    heads = int(cfg["num_attention_heads"])
    kv = cfg.get("num_key_value_heads")
    head_dim = h // heads if heads > 0 else 0
    f = _hf_fraction(cfg, "partial_rotary_factor", 0.5, path)
    # PhiAttention rotates int(head_dim * factor) dimensions of each head
    rotary = int(head_dim * f) / head_dim if head_dim else f
    if head_dim and int(head_dim * f) < 1:
        raise ConfigError(str(path), "partial_rotary_factor", f"rotates no dimension of a "
                          f"{head_dim}-wide head", f)  # fmt: skip
    spec = ModelSpec(
        name=name, layers=int(cfg["num_hidden_layers"]), hidden=h, heads=heads,
        kv_heads=heads if kv is None else int(kv), ffn_hidden=int(cfg["intermediate_size"]),
        vocab=int(cfg["vocab_size"]),
        max_positions=int(cfg.get("max_position_embeddings") or 2048),
        mlp=_hf_mlp(_hf_act(cfg, "hidden_act", "gelu_new", path)),
        tied_embeddings=_hf_bool(cfg, "tie_word_embeddings", False, path),
        positions="rotary", rotary_fraction=rotary, bias=True, norm="layernorm",
        parallel_residual=True, shared_norm=True, head_bias=True,
        **_hf_dropouts(cfg, path, ("resid_pdrop", 0.0), ("attention_dropout", 0.0)),
    )  # fmt: skip
    return spec, names


def _hf_falcon(kind: str, cfg: dict[str, Any], path: Path, name: str, h: int,
               names: dict[str, str]) -> tuple[ModelSpec, dict[str, str]]:  # fmt: skip
    """A Falcon config.json (:func:`_hf_other`'s falcon entry; transformers 4.46
    modeling_falcon.py FalconAttention / FalconMLP / FalconDecoderLayer)."""
    legacy = kind != "falcon"
    names = {**names, "ffn_hidden": "ffn_hidden_size", "dropout": "hidden_dropout",
             "kv_heads": "num_kv_heads"}  # fmt: skip
    if legacy:  # (the NeMo Falcon converter's mapping of the same fields)
        names.update(layers="n_layer", heads="n_head", kv_heads="n_head_kv")
        layers, heads = int(cfg["n_layer"]), int(cfg["n_head"])
        new_arch = kind == "refinedweb"
        kv_field = "n_head_kv"
    else:
        layers, heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        new_arch = _hf_bool(cfg, "new_decoder_architecture", False, path)
        kv_field = "num_kv_heads"
    kv = cfg.get(kv_field)  # (an integer or null: _INT_FIELDS)
    parallel = _hf_bool(cfg, "parallel_attn", True, path)
    if new_arch:
        if not parallel:  # (FalconDecoderLayer would build no ln_attn / ln_mlp to run)
            raise ConfigError(str(path), "parallel_attn", "false with new_decoder_architecture "
                              "is not a layout transformers runs", False)  # fmt: skip
        kv_heads = heads if kv is None else int(kv)
        lns = cfg.get("num_ln_in_parallel_attn")
        if lns not in (None, 1, 2):
            raise ConfigError(str(path), "num_ln_in_parallel_attn", "must be 1 or 2", lns, "1, 2")
        shared = lns == 1
    else:  # the query_key_value of the original layout: h + 2 head_dim (MQA) or 3h
        kv_heads = 1 if _hf_bool(cfg, "multi_query", True, path) else heads
        names["kv_heads"] = "multi_query"
        shared = parallel
        lns = cfg.get("num_ln_in_parallel_attn")
        if lns not in (None, 1) and parallel:  # (2: ln_attn / ln_mlp built, input_layernorm
            # run: transformers' forward fails)
            raise ConfigError(str(path), "num_ln_in_parallel_attn", "must be 1 or left out "
                              "without new_decoder_architecture", lns, "1")  # fmt: skip
    if _hf_bool(cfg, "apply_residual_connection_post_layernorm", False, path):
        raise ConfigError(str(path), "apply_residual_connection_post_layernorm", "true (the "
                          "residual taken after the norm) is not expressible", True)  # fmt: skip
    alibi = _hf_bool(cfg, "alibi", False, path)
    res = _hf_rate(cfg, "hidden_dropout", 0.0, path)
    att = _hf_rate(cfg, "attention_dropout", 0.0, path)
    # FalconAttention drops the probabilities on the ALiBi path only (the rotary path calls
    # SDPA with dropout_p 0.0); the sequential block (Falcon-RW) drops the attention's output
    # at attention_dropout's rate, the MLP's at hidden_dropout's
    probs = att if alibi else 0.0
    resid = res if parallel else max(res, att)
    ffn = cfg.get("ffn_hidden_size")  # (null: 4 x hidden_size, as FalconConfig computes it
    # from its hidden_size argument, which an n_embed does not set: its default, 4,544)
    ffn_default = 4 * int(cfg.get("hidden_size") or 4544)
    spec = ModelSpec(
        name=name, layers=layers, hidden=h, heads=heads, kv_heads=kv_heads,
        ffn_hidden=ffn_default if ffn is None else int(ffn), vocab=int(cfg["vocab_size"]),
        max_positions=int(cfg.get("max_position_embeddings") or 2048),
        mlp=_hf_mlp(str(cfg.get("activation", "gelu"))),
        tied_embeddings=_hf_bool(cfg, "tie_word_embeddings", True, path),
        positions="alibi" if alibi else "rotary",
        bias=_hf_bool(cfg, "bias", False, path), norm="layernorm",
        parallel_residual=parallel, shared_norm=parallel and shared,
        # (no residual dropout: the probabilities' rate, its masks counted too, as
        # _hf_dropouts)
        dropout=resid or probs, attention_dropout=probs > 0 or not resid,
    )  # fmt: skip
    return spec, names


def validate_model(spec: ModelSpec, file: str | None = None, prefix: str = "model",
                   names: dict[str, str] | None = None) -> ModelSpec:  # fmt: skip
    """Check a shape's invariants; return it unchanged. ``names``: the field names of the
    file the shape came from (config.json's ``num_attention_heads`` for ``heads``), used in
    the messages instead of ``<prefix>.<field>``."""
    names = names or {}

    def key(field: str) -> str:
        return names.get(field, f"{prefix}.{field}")

    def bare(field: str) -> str:
        return names.get(field, field)

    for field in ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "max_positions"):
        v = getattr(spec, field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(file, key(field), "must be a positive integer", v)
        check_range(v, file, key(field), *INT_RANGES[f"model.{field}"])  # spec.limits
    validate_moe(spec, file, prefix)
    if spec.hidden % spec.heads and not spec.head_size:
        raise ConfigError(file, key("heads"), f"must divide {bare('hidden')}={spec.hidden}",
                          spec.heads)  # fmt: skip
    if spec.heads % spec.kv_heads:
        raise ConfigError(
            file, key("kv_heads"), f"must divide {bare('heads')}={spec.heads}", spec.kv_heads
        )
    for field, allowed in MODEL_CHOICES.items():
        if getattr(spec, field) not in allowed:
            raise unknown_value(file, f"{prefix}.{field}", getattr(spec, field), allowed)
    if spec.total_params() > MAX_PARAMS:
        raise ConfigError(file, prefix, f"has {spec.total_params():,} parameters: at most "
                          f"{MAX_PARAMS:,} (2^50)")  # fmt: skip
    if not isinstance(spec.name, str):
        raise ConfigError(file, f"{prefix}.name", "must be a string", spec.name)
    if not 0.0 <= spec.dropout < 1.0:
        raise ConfigError(file, key("dropout"), "must be in [0, 1)", spec.dropout)
    # (each names the key that breaks the pair: a preset's pre_norms: false with an override of
    # post_norms or parallel_residual is reported at the override)
    if not spec.pre_norms and not spec.post_norms:
        raise ConfigError(file, key("post_norms"), f"false with {bare('pre_norms')}: false "
                          "leaves the block without a norm: a block without pre-norms (OLMo "
                          "2's) needs post_norms: true", spec.post_norms)  # fmt: skip
    if not spec.pre_norms and spec.parallel_residual:
        raise ConfigError(file, key("parallel_residual"), f"with {bare('pre_norms')}: false "
                          "is not a layout simtrain has (OLMo 2's block is sequential)",
                          spec.parallel_residual)  # fmt: skip
    if spec.qk_norm and spec.is_mla:  # (its q_a / kv_a latent norms are modelled: mla_*)
        raise ConfigError(file, key("qk_norm"), "q / k norms apply to q and k projections, "
                          "not multi-latent attention's latents (whose RMSNorms simtrain "
                          "counts already)", spec.qk_norm)  # fmt: skip
    if spec.post_norms and spec.parallel_residual:
        raise ConfigError(file, key("post_norms"), f"with {bare('parallel_residual')} is not a "
                          "layout simtrain has (Gemma's sandwich norms are sequential)",
                          spec.post_norms)  # fmt: skip
    if spec.full_attention_every and not spec.sliding_window:
        raise ConfigError(file, key("full_attention_every"), f"needs {bare('sliding_window')} "
                          "> 0 (the layers between the full ones slide)",
                          spec.full_attention_every)  # fmt: skip
    if spec.mlp_bias and spec.is_moe:
        raise ConfigError(file, key("mlp_bias"), "applies to a dense MLP (the experts' biases "
                          f"follow {bare('bias')})", spec.mlp_bias)  # fmt: skip
    if spec.shared_norm and not spec.parallel_residual:
        raise ConfigError(file, key("shared_norm"), f"applies to {bare('parallel_residual')}: "
                          "true only (a sequential block's MLP norm takes the attention's "
                          "output)", spec.shared_norm)  # fmt: skip
    f = spec.rotary_fraction
    if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 < f <= 1.0:
        raise ConfigError(file, key("rotary_fraction"), "must be a number in (0, 1]", f)
    if f != 1.0 and spec.positions != "rotary":
        raise ConfigError(file, key("rotary_fraction"), f"applies to {bare('positions')}: "
                          f"rotary only (positions is {spec.positions})", f)  # fmt: skip
    if f != 1.0 and spec.is_mla:
        raise ConfigError(file, key("rotary_fraction"), "multi-latent attention rotates its "
                          f"{bare('qk_rope_head_dim')} dimensions whole: must be 1", f)  # fmt: skip
    return spec


__all__ = [
    "ModelSpec",
    "PRESETS",
    "ZERO_OK_FIELDS",
    "preset",
    "from_hf_config",
    "validate_model",
    "replace",
]
