"""The reference PyTorch decoder (needs the optional ``torch``).

:func:`build_reference_model` turns a :class:`~simtrain.spec.model.ModelSpec` and a
:class:`~simtrain.spec.scenario.TrainingSpec` into a small, readable nanoGPT-style decoder, which
:func:`simtrain.torchref.measure.measure_step` trains and measures.

Conventions (the analytical model counts what *this* implementation saves for backward):

* Pre-norm blocks ``x = x + drop(o(attn(norm1(x))))``, ``x = x + drop(mlp(norm2(x)))``;
  separate q, k, v, o linears; GeLU (tanh), ReLU, squared-ReLU or SwiGLU MLP; no ALiBi
  (``build_reference_model`` refuses it); learned positions, rotary (``rotate_half``) on q
  and k, or none; attention dropout only where ``attention_dropout``; tied or untied LM head; loss
  ``cross_entropy(logits.float().view(-1, V), targets.view(-1))``, or with ``cross_entropy:
  fused`` a block-wise kernel that saves only the logits and an fp32 log-sum-exp per row, with
  ``vocab_parallel`` Megatron's in-place kernel, with ``te`` Transformer Engine's, with
  ``sharded`` nanotron's after its fp32 cast (``torchref.losses``).
* ``flash_attention`` -> ``F.scaled_dot_product_attention(is_causal=True, enable_gqa=...)``
  with ``dropout_p=0`` (attention dropout is *not* applied on this path); otherwise the explicit
  math path (``repeat_interleave`` for GQA, masked_fill with a causal-mask buffer, softmax,
  attention dropout, ``@ v``).
* Device-independent saved tensors. The measurement is meant to predict CUDA runs, so three
  CPU kernels whose saved tensors differ from the CUDA ones are replaced by small equivalents:

  - dropout always calls ``torch.native_dropout`` (saves a 1-byte bool mask, as CUDA does; the
    CPU ``F.dropout`` saves a full-precision noise tensor);
  - on CPU, LayerNorm saves (input, fp32 mean, fp32 rstd) and RMSNorm saves (input, fp32 rstd),
    exactly like CUDA's ``native_layer_norm`` / ``_fused_rms_norm`` (the CPU kernels keep
    mean/rstd in 16 bits, and CPU ``rms_norm`` is an unfused decomposition);
  - under autocast, norms and the math-path softmax run in fp32 as CUDA's autocast policy does
    (CPU autocast runs softmax in 16 bits).

  The flash path uses whatever SDPA kernel the device has: CPU flash saves q, k, v, out and an
  fp32 logsumexp (b, heads, s) -- the same set as CUDA flash (which adds two 8-byte RNG scalars).
* Mixed precision: ``fp32``; ``bf16``/``fp16`` Megatron / apex-O2 style (16-bit model and
  gradients, fp32 master copy of the trainable parameters for the optimizer; fp16 uses a static
  loss scale of 2**10 with no overflow check); ``bf16_pure`` (bf16 model, optimizer on the bf16
  parameters); ``amp_bf16``/``amp_fp16`` (fp32 model under ``torch.autocast``; fp16 autocast on
  CPU works for every op used here in torch >= 2.4).
* PEFT: ``lora``, ``qlora`` (NF4 *emulation*: a uint8 tensor of packed 4-bit codes, in*out/2
  bytes, plus one fp32 absmax per ``quant_block_size`` block, no double quantisation; the weight
  is dequantised on the fly by an autograd.Function that saves only the packed storage),
  ``adapter`` (Houlsby), ``prefix``, ``prompt``, ``linear_probe``, ``lp_ft``, ``bitfit``.
  LoRA targets absent from the model (``gate`` on a GeLU MLP) are skipped. Prefix keys/values
  carry no position (queries keep positions 0..s-1); prompt tokens take positions 0..P-1 and
  their targets are ignored (-100). A frozen body under ``recompute: full`` still saves each
  block's input: torch's checkpoint records its inputs whenever any grad is needed downstream
  (its internal dummy requires grad).
* ``recompute``: ``full`` checkpoints every block (non-reentrant); ``selective`` checkpoints the
  attention core only (QK^T, mask, softmax, dropout, @V -- or SDPA), Korthikanti et al. 2022;
  ``selective_op`` checkpoints every block with torchtitan's per-op policy
  (:mod:`simtrain.torchref.op_sac`).
* ``training.offload`` is ignored (everything lives on ``device``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from simtrain.errors import ConfigError
from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import TrainingSpec
from simtrain.torchref.layers import (
    Dropout,
    RMSNorm,
    _autocasting,
    _fp32_region,
    apply_norm,
    apply_rope,
    make_norm,
)
from simtrain.torchref.losses import PER_TOKEN_LOSSES, _FusedCrossEntropyFn
from simtrain.torchref.op_sac import op_sac_context
from simtrain.torchref.peft import Adapter, LoRALinear, NF4Linear
from simtrain.torchref.precision import PARAM_DTYPE


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, training: TrainingSpec, method: str) -> None:
        super().__init__()
        # q_dim = heads·head_dim: hidden unless head_size says otherwise (Qwen3, Gemma)
        h, q_dim, kv = spec.hidden, spec.q_dim, spec.kv_dim
        qkv_bias = spec.bias or spec.qkv_bias
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_heads, spec.head_dim
        self.q_dim = q_dim
        self.q = nn.Linear(h, q_dim, bias=qkv_bias)
        self.k = nn.Linear(h, kv, bias=qkv_bias)
        self.v = nn.Linear(h, kv, bias=qkv_bias)
        self.o = nn.Linear(q_dim, h, bias=spec.bias)
        self.attn_drop = Dropout(spec.dropout if spec.attention_dropout else 0.0)
        self.flash = spec.flash_attention
        self.softcap = spec.attention_softcap
        # q / k norms (Qwen3 / Gemma 3: an RMSNorm of head_dim per head; OLMo 2: over all of q
        # and of k)
        self.qk_full = spec.qk_norm_width == "full"
        self.q_norm = self.k_norm = None
        if spec.qk_norm:
            qw, kw = (q_dim, kv) if self.qk_full else (self.head_dim, self.head_dim)
            self.q_norm, self.k_norm = RMSNorm(qw, eps=1e-5), RMSNorm(kw, eps=1e-5)
        self.selective = training.recompute == "selective"
        self.prefix_k: nn.Parameter | None = None
        self.prefix_v: nn.Parameter | None = None
        if method == "prefix":
            p = training.peft.prefix_length
            self.prefix_k = nn.Parameter(torch.empty(p, kv))
            self.prefix_v = nn.Parameter(torch.empty(p, kv))

    def core(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + causal mask) v, (b, heads, s, d) -> (b, heads, s, d)."""
        gqa = self.kv_heads < self.heads
        if self.flash:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=mask is None, enable_gqa=gqa
            )
        if gqa:  # like HF repeat_kv: every query head gets its own copy of K and V
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        if self.softcap:  # Gemma-2's attn_logit_softcapping: c·tanh(x/c)
            att = torch.tanh(att / SOFTCAP_ATTENTION) * SOFTCAP_ATTENTION
        assert mask is not None
        att = att.masked_fill(mask, float("-inf"))
        if _autocasting(att):
            with _fp32_region(att):
                att = torch.softmax(att.float(), dim=-1)
        else:
            att = torch.softmax(att, dim=-1)
        att = self.attn_drop(att)
        return att @ v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        b, s, _ = x.shape
        d = self.head_dim
        q, k = self.q(x), self.k(x)
        if self.q_norm is not None and self.k_norm is not None and self.qk_full:
            q, k = apply_norm(self.q_norm, q), apply_norm(self.k_norm, k)
        q = q.view(b, s, self.heads, d)
        k = k.view(b, s, self.kv_heads, d)
        if self.q_norm is not None and self.k_norm is not None and not self.qk_full:
            q, k = apply_norm(self.q_norm, q), apply_norm(self.k_norm, k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v(x).view(b, s, self.kv_heads, d).transpose(1, 2)
        if cos is not None and sin is not None:
            r = cos.shape[-1]  # rotary_dims: the first r of each head's dimensions
            if r == d:
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            else:  # partial rotary (GPT-NeoX rotary_pct, Phi partial_rotary_factor, GPT-J)
                q = torch.cat((apply_rope(q[..., :r], cos, sin), q[..., r:]), dim=-1)
                k = torch.cat((apply_rope(k[..., :r], cos, sin), k[..., r:]), dim=-1)
        if self.prefix_k is not None and self.prefix_v is not None:
            p = self.prefix_k.shape[0]
            pk = self.prefix_k.view(p, self.kv_heads, d).transpose(0, 1).to(k.dtype)
            pv = self.prefix_v.view(p, self.kv_heads, d).transpose(0, 1).to(v.dtype)
            k = torch.cat([pk.unsqueeze(0).expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.unsqueeze(0).expand(b, -1, -1, -1), v], dim=2)
        if self.selective and torch.is_grad_enabled():
            y = checkpoint(self.core, q, k, v, mask, use_reentrant=False)
        else:
            y = self.core(q, k, v, mask)
        y = y.transpose(1, 2).contiguous().view(b, s, self.q_dim)
        return self.o(y)


#: Gemma-2's caps (config.json attn_logit_softcapping 50, final_logit_softcapping 30).
SOFTCAP_ATTENTION = 50.0
SOFTCAP_LOGITS = 30.0


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, f = spec.hidden, spec.ffn_hidden
        self.kind = spec.mlp
        bias = spec.bias or spec.mlp_bias
        if self.kind == "swiglu":
            self.gate = nn.Linear(h, f, bias=bias)
        self.up = nn.Linear(h, f, bias=bias)
        self.act = nn.GELU(approximate="tanh")
        self.down = nn.Linear(f, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        if self.kind == "relu":  # OPT (transformers OPTDecoderLayer: fc2(relu(fc1(x))))
            return self.down(F.relu(self.up(x)))
        if self.kind == "relu2":  # transformers ReLUSquaredActivation; Megatron squared_relu
            return self.down(torch.square(F.relu(self.up(x))))
        return self.down(self.act(self.up(x)))


class _Bias(nn.Module):
    """One bias vector (a tied LM head's own bias)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n))


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, training: TrainingSpec, method: str) -> None:
        super().__init__()
        self.norm1 = make_norm(spec) if spec.pre_norms else None  # (OLMo 2: none before)
        self.attn = Attention(spec, training, method)
        self.drop1 = Dropout(spec.dropout)
        # (a shared norm: GPT-J's ln_1, Falcon-7B's input_layernorm feed both branches)
        self.norm2 = None if spec.shared_norm or not spec.pre_norms else make_norm(spec)
        # Gemma-2's sandwich: a norm on each branch's output before its residual add
        self.post1 = make_norm(spec) if spec.post_norms else None
        self.post2 = make_norm(spec) if spec.post_norms else None
        self.mlp = MLP(spec)
        self.drop2 = Dropout(spec.dropout)
        size = training.peft.adapter_size
        self.adapter_attn = Adapter(spec.hidden, size) if method == "adapter" else None
        self.adapter_mlp = Adapter(spec.hidden, size) if method == "adapter" else None
        self.parallel = spec.parallel_residual
        self.full_recompute = training.recompute == "full"
        self.op_sac = training.recompute == "selective_op"

    def block(self, x: torch.Tensor, cos: Any, sin: Any, mask: Any) -> torch.Tensor:
        n1 = x if self.norm1 is None else apply_norm(self.norm1, x)
        a = self.attn(n1, cos, sin, mask)
        if self.post1 is not None:
            a = apply_norm(self.post1, a)
        a = self.drop1(a)
        if self.adapter_attn is not None:
            a = self.adapter_attn(a)
        if self.parallel:  # GPT-NeoX: x + attn(norm1(x)) + mlp(norm2(x)); GPT-J: one norm
            m = self.drop2(self.mlp(n1 if self.norm2 is None else apply_norm(self.norm2, x)))
            if self.adapter_mlp is not None:
                m = self.adapter_mlp(m)
            return x + a + m
        x = x + a
        m = self.mlp(x if self.norm2 is None else apply_norm(self.norm2, x))
        if self.post2 is not None:
            m = apply_norm(self.post2, m)
        m = self.drop2(m)
        if self.adapter_mlp is not None:
            m = self.adapter_mlp(m)
        return x + m

    def forward(self, x: torch.Tensor, cos: Any, sin: Any, mask: Any) -> torch.Tensor:
        if self.full_recompute and torch.is_grad_enabled():
            return checkpoint(self.block, x, cos, sin, mask, use_reentrant=False)
        if self.op_sac and torch.is_grad_enabled():
            return checkpoint(self.block, x, cos, sin, mask, use_reentrant=False,
                              context_fn=op_sac_context)  # fmt: skip
        return self.block(x, cos, sin, mask)


class ReferenceGPT(nn.Module):
    """nanoGPT-style decoder; ``forward(idx, targets)`` returns the mean cross-entropy loss."""

    def __init__(self, spec: ModelSpec, training: TrainingSpec) -> None:
        super().__init__()
        peft = training.peft
        method = _effective_method(training)
        self.spec, self.method = spec, method
        self.cross_entropy = training.cross_entropy
        self.loss_upcast = training.loss_upcast  # (spec.scenario.TrainingSpec.loss_upcast)
        self.prompt_length = peft.prompt_length if method == "prompt" else 0
        self.prefix_length = prefix = peft.prefix_length if method == "prefix" else 0
        t = training.seq_len + self.prompt_length
        if spec.positions == "learned" and t > spec.max_positions:
            raise ValueError(
                f"seq_len + prompt_length = {t} exceeds max_positions = {spec.max_positions}"
            )
        h = spec.hidden
        self.wte = nn.Embedding(spec.vocab, h)
        self.wpe = nn.Embedding(spec.max_positions, h) if spec.positions == "learned" else None
        self.prompt = (
            nn.Parameter(torch.empty(self.prompt_length, h)) if method == "prompt" else None
        )
        self.drop = Dropout(spec.dropout)
        self.blocks = nn.ModuleList(Block(spec, training, method) for _ in range(spec.layers))
        self.norm_f = make_norm(spec)
        untied = not spec.tied_embeddings or method == "linear_probe"
        self.lm_head = nn.Linear(h, spec.vocab, bias=spec.head_bias) if untied else None
        # a tied head's own bias (named "bias", as bitfit's leaf rule reads it)
        self.head_b = _Bias(spec.vocab) if spec.head_bias and not untied else None

        self._register_constants(spec, t, prefix)
        self._init_weights(spec)

    def _register_constants(self, spec: ModelSpec, t: int, prefix: int) -> None:
        """Constant, non-persistent buffers sized for this run's sequence length ``t`` (seq_len +
        prompt_length): position ids, rotary tables, the causal or prefix mask."""
        if self.wpe is not None:
            self.register_buffer("pos_ids", torch.arange(t), persistent=False)
        if spec.positions == "rotary":
            d = spec.rotary_dims
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
            freqs = torch.outer(torch.arange(t, dtype=torch.float32), inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.register_buffer("rope_cos", emb.cos(), persistent=False)
            self.register_buffer("rope_sin", emb.sin(), persistent=False)
        masked = torch.ones(t, prefix + t, dtype=torch.bool).triu(prefix + 1)  # key j > query i
        if not spec.flash_attention:
            self.register_buffer("causal_mask", masked, persistent=False)  # True = masked out
        elif prefix:
            self.register_buffer("attn_allowed", ~masked, persistent=False)  # True = attend

    def _init_weights(self, spec: ModelSpec) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, Adapter):
                m.reset()
        for blk in self.blocks:
            for p in (blk.attn.prefix_k, blk.attn.prefix_v):
                if p is not None:
                    nn.init.normal_(p, std=0.02)
        with torch.no_grad():
            if self.prompt is not None:  # Lester et al. 2021: initialise from vocabulary rows
                rows = torch.randint(spec.vocab, (self.prompt_length,))
                self.prompt.copy_(self.wte.weight[rows])
            if self.lm_head is not None and self.method == "linear_probe" and spec.tied_embeddings:
                self.lm_head.weight.copy_(self.wte.weight)  # new untied probe head

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, s = idx.shape
        x = self.wte(idx)
        if self.prompt is not None:
            x = torch.cat([self.prompt.unsqueeze(0).expand(b, -1, -1), x], dim=1)
            ignore = targets.new_full((b, self.prompt_length), -100)
            targets = torch.cat([ignore, targets], dim=1)
        t = x.shape[1]
        if self.wpe is not None:
            x = x + self.wpe(self.pos_ids[:t])
        x = self.drop(x)
        cos = sin = None
        if self.spec.positions == "rotary":
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
            if _autocasting(x):  # cast once per forward, not in every layer
                dtype = torch.get_autocast_dtype(x.device.type)
                cos, sin = cos.to(dtype), sin.to(dtype)
        mask = None  # flash without prefix: is_causal=True
        if not self.spec.flash_attention:
            mask = self.causal_mask[:t, : self.prefix_length + t]
        elif self.prefix_length:
            mask = self.attn_allowed[:t, : self.prefix_length + t]
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        x = apply_norm(self.norm_f, x)
        if self.lm_head is not None:
            logits = self.lm_head(x)
        else:
            logits = F.linear(x, self.wte.weight, None if self.head_b is None else self.head_b.bias)
        if self.spec.logit_softcap:  # Gemma-2's final_logit_softcapping, in the logits' dtype
            logits = torch.tanh(logits / SOFTCAP_LOGITS) * SOFTCAP_LOGITS
        v = logits.shape[-1]
        if self.cross_entropy == "fused":
            return _FusedCrossEntropyFn.apply(logits.reshape(-1, v), targets.reshape(-1))
        if self.cross_entropy == "sharded":
            # nanotron's cast_to_fp32 block; its LM head's output is gone by the loss block
            # (LlamaModel.forward_with_hidden_states returns the fp32 copy alone)
            logits = logits.float()
        if self.cross_entropy in PER_TOKEN_LOSSES:
            # Megatron's (and nanotron's masked_mean's) loss mask and average over the per-token
            # losses (the -100 targets out)
            flat = targets.reshape(-1)
            per_token = PER_TOKEN_LOSSES[self.cross_entropy].apply(logits.reshape(-1, v), flat)
            mask = (flat != -100).float()
            return (per_token * mask).sum() / mask.sum().clamp(min=1)
        logits = logits.float() if self.loss_upcast else logits
        return F.cross_entropy(logits.view(-1, v), targets.reshape(-1), ignore_index=-100)


def _effective_method(training: TrainingSpec) -> str:
    method = training.peft.method
    if method == "lp_ft":
        return "linear_probe" if training.peft.phase == "probe" else "none"
    return method


def _trainable(name: str, method: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if method == "none":
        return True
    if method in ("lora", "qlora"):
        return leaf in ("lora_A", "lora_B")
    if method == "adapter":
        return ".adapter_" in name
    if method == "prefix":
        return leaf in ("prefix_k", "prefix_v")
    if method == "prompt":
        return name == "prompt"
    if method == "linear_probe":
        return name.startswith("lm_head.")
    if method == "bitfit":
        return leaf == "bias"
    raise ValueError(f"unknown PEFT method {method!r}")


def build_reference_model(spec: ModelSpec, training: TrainingSpec) -> nn.Module:
    """The reference decoder in ``training.precision``'s parameter dtype, with PEFT applied and
    ``requires_grad`` set on exactly the trainable parameters. Built on the CPU; move it with
    ``.to(device)`` (never ``.to(dtype)``: QLoRA absmax must stay fp32)."""
    if training.precision not in PARAM_DTYPE:
        raise ValueError(f"unknown precision {training.precision!r}")
    if spec.positions == "alibi":  # (measure_step says why, as a ConfigError)
        raise ValueError("the reference model has no ALiBi kernel")
    if spec.attention_softcap and spec.flash_attention:  # (likewise)
        raise ValueError("the reference model has no soft-capping flash kernel")
    method = _effective_method(training)
    model = ReferenceGPT(spec, training)
    model.to(PARAM_DTYPE[training.precision])
    peft = training.peft
    if method in ("lora", "qlora"):
        for blk in model.blocks:
            for parent, names in (
                (blk.attn, ("q", "k", "v", "o")),
                (blk.mlp, ("gate", "up", "down")),
            ):
                for name in names:
                    base = getattr(parent, name, None)
                    if base is None:
                        continue  # e.g. "gate" on a GeLU MLP: not a module of this model
                    if method == "qlora":
                        base = NF4Linear(base, peft.quant_block_size)
                    if name in peft.target_modules:
                        base = LoRALinear(base, peft.rank, peft.alpha)
                    setattr(parent, name, base)
    trainable = 0
    for name, p in model.named_parameters():
        p.requires_grad_(_trainable(name, method))
        trainable += p.numel() if p.requires_grad else 0
    if trainable == 0:
        lora = method in ("lora", "qlora")  # (else bitfit on a model without biases, ...)
        raise ConfigError(None, "training.peft.target_modules" if lora else "training.peft.method",
                          f"PEFT method {method!r} leaves no trainable parameter in this model"
                          + (": name modules it has" if lora else ""),
                          ", ".join(peft.target_modules) if lora else method)  # fmt: skip
    return model.train()
