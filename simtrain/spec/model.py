"""Decoder-only transformer shapes and exact parameter counts.

A :class:`ModelSpec` is the shape of a GPT-2 / GPT-3 / Llama-style decoder: token embedding,
optional learned positions, ``layers`` pre-norm blocks (attention with grouped-query heads,
then a GeLU or SwiGLU MLP), a final norm and an LM head (tied to the embedding or not).

Parameter counts are exact integers and are tested against the published counts
(GPT-2 small 124,439,808 -- HF ``gpt2``; Llama-2-7B 6,738,415,616 -- HF ``meta-llama/Llama-2-7b-hf``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simtrain.errors import ConfigError
from simtrain.spec.limits import INT_RANGES, MAX_PARAMS, check_range
from simtrain.spec.yamlfile import read_text_file

MLP_KINDS = ("gelu", "swiglu")
POSITION_KINDS = ("learned", "rotary")
NORM_KINDS = ("layernorm", "rmsnorm")
QKV_LAYOUTS = ("separate", "fused_kv_copy")
#: The allowed values of each string field (validate_model checks them, apps.schema publishes them).
MODEL_CHOICES: dict[str, tuple[str, ...]] = {
    "mlp": MLP_KINDS, "positions": POSITION_KINDS, "norm": NORM_KINDS, "qkv_layout": QKV_LAYOUTS,
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
    mlp: str = "gelu"  # gelu (2 matrices) | swiglu (3 matrices: gate, up, down)
    tied_embeddings: bool = True
    positions: str = "learned"  # learned (a max_positions x hidden table) | rotary (no parameters)
    bias: bool = True  # biases on every linear layer (GPT-2 style)
    qkv_bias: bool = False  # biases on Q, K, V only (Qwen2 style); implied by bias
    norm: str = "layernorm"  # layernorm (weight + bias) | rmsnorm (weight only)
    dropout: float = 0.0
    flash_attention: bool = False
    # How the attention keeps Q, K, V for backward: "separate" (three tensors, 2·sb(h+2kv) bytes
    # in 16 bit) | "fused_kv_copy" (nanotron LlamaModel, MHA: one permuted (3, b, s, a, d) QKV
    # tensor whose Q view flash attention saves, so all of it stays alive, plus the separate
    # rotated K/V copy it saves too: memory.layer_saved_tensors).
    qkv_layout: str = "separate"

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): kv_heads * head_dim (GQA, Ainslie et al. 2023)."""
        return self.kv_heads * self.head_dim

    @property
    def norm_params(self) -> int:
        """One norm: LayerNorm has a weight and a bias of size h; RMSNorm only a weight."""
        return 2 * self.hidden if self.norm == "layernorm" else self.hidden

    # ---- parameter counts (exact) --------------------------------------------------------
    def attention_params(self) -> int:
        """W_q (h x h), W_k and W_v (h x kv_dim), W_o (h x h), plus biases when present."""
        h, kv = self.hidden, self.kv_dim
        weights = 2 * h * h + 2 * h * kv
        biases = 0
        if self.bias:
            biases = h + 2 * kv + h
        elif self.qkv_bias:
            biases = h + 2 * kv
        return weights + biases

    def mlp_params(self) -> int:
        """GeLU MLP: 2·h·f (+ f + h biases); SwiGLU: 3·h·f (+ 2f + h biases)."""
        h, f = self.hidden, self.ffn_hidden
        if self.mlp == "swiglu":
            return 3 * h * f + ((2 * f + h) if self.bias else 0)
        return 2 * h * f + ((f + h) if self.bias else 0)

    def layer_params(self) -> int:
        """One transformer block: attention + MLP + two norms."""
        return self.attention_params() + self.mlp_params() + 2 * self.norm_params

    def embedding_params(self) -> int:
        """Token embedding V·h plus learned positions max_positions·h (rotary has none)."""
        pos = self.max_positions * self.hidden if self.positions == "learned" else 0
        return self.vocab * self.hidden + pos

    def head_params(self) -> int:
        """Final norm plus the LM head (V·h unless tied to the token embedding)."""
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.norm_params + head

    def total_params(self) -> int:
        """N = embeddings + layers · block + final norm + untied head."""
        return self.embedding_params() + self.layers * self.layer_params() + self.head_params()

    def linear_weight_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of a block, named as PEFT target modules."""
        h, kv, f = self.hidden, self.kv_dim, self.ffn_hidden
        shapes = {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h)}
        if self.mlp == "swiglu":
            shapes.update({"gate": (h, f), "up": (h, f), "down": (f, h)})
        else:
            shapes.update({"up": (h, f), "down": (f, h)})
        return shapes


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
    # Llama 2: Touvron et al. 2023, Table 1 + HF config.json (meta-llama/Llama-2-*-hf).
    "llama2-7b": _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    "llama2-13b": _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
    "llama2-70b": _llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
    # Llama 3 / 3.1: Llama Team 2024, Table 3 + HF config.json (meta-llama/Meta-Llama-3*-*).
    "llama3-8b": _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
    "llama3-70b": _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
    "llama3-405b": _llama("llama3-405b", 126, 16384, 128, 8, 53248, 128256, 131072),
}
ALIASES = {"gpt2-small": "gpt2", "gpt2-124m": "gpt2", "gpt2-1.5b": "gpt2-xl", "gpt3": "gpt3-175b"}


def preset(name: str, file: str | None = None, key: str = "model.preset") -> ModelSpec:
    """Look up a preset by name (case-insensitive)."""
    canonical = ALIASES.get(name.lower(), name.lower())
    if canonical not in PRESETS:
        raise ConfigError(file, key, "unknown model preset", name, ", ".join(PRESETS))
    return PRESETS[canonical]


_REQUIRED_INT_FIELDS = {
    "n_layer", "n_embd", "n_head", "vocab_size", "num_hidden_layers", "hidden_size",
    "num_attention_heads", "intermediate_size",
}  # fmt: skip
_INT_FIELDS = _REQUIRED_INT_FIELDS | {
    "n_inner",
    "n_positions",
    "num_key_value_heads",
    "max_position_embeddings",
}


def from_hf_config(
    path: str | Path, file: str | None = None, key: str = "model.hf_config"
) -> ModelSpec:
    """Import a Hugging Face ``config.json`` (GPT-2, Llama, Mistral, Qwen2 field names)."""
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
    name = str(cfg.get("_name_or_path") or p.parent.name or kind)
    try:
        if kind == "gpt2" or "n_embd" in cfg:
            h = int(cfg["n_embd"])
            heads = int(cfg["n_head"])
            act = str(cfg.get("activation_function", "gelu_new"))
            spec = ModelSpec(
                name=name, layers=int(cfg["n_layer"]), hidden=h, heads=heads, kv_heads=heads,
                ffn_hidden=int(cfg.get("n_inner") or 4 * h), vocab=int(cfg["vocab_size"]),
                max_positions=int(cfg.get("n_positions", 1024)),
                mlp="swiglu" if "glu" in act else "gelu",
                tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                dropout=float(cfg.get("resid_pdrop", 0.1)),
            )  # fmt: skip
            return validate_model(spec, str(path))  # spec.limits ranges too
        if kind in ("llama", "mistral", "qwen2", "qwen3") or (not kind and "hidden_size" in cfg):
            heads = int(cfg["num_attention_heads"])
            spec = ModelSpec(
                name=name, layers=int(cfg["num_hidden_layers"]), hidden=int(cfg["hidden_size"]),
                heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                ffn_hidden=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
                max_positions=int(cfg.get("max_position_embeddings", 4096)),
                mlp="swiglu", tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                positions="rotary", bias=False,
                qkv_bias=kind == "qwen2" or bool(cfg.get("attention_bias", False)),
                norm="rmsnorm", dropout=float(cfg.get("attention_dropout", 0.0) or 0.0),
            )  # fmt: skip
            return validate_model(spec, str(path))  # spec.limits ranges too
    except KeyError as exc:
        raise ConfigError(str(path), exc.args[0], "missing field in config.json") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(str(path), "<field>", f"invalid value in config.json ({exc})") from None
    raise ConfigError(
        str(path), "model_type", "unsupported model_type", kind, "gpt2, llama, mistral, qwen2"
    )


def validate_model(spec: ModelSpec, file: str | None = None, prefix: str = "model") -> ModelSpec:
    """Check a shape's invariants; return it unchanged."""
    for field in ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "max_positions"):
        v = getattr(spec, field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(file, f"{prefix}.{field}", "must be a positive integer", v)
        check_range(v, file, f"{prefix}.{field}", *INT_RANGES[f"model.{field}"])  # spec.limits
    if spec.hidden % spec.heads:
        raise ConfigError(file, f"{prefix}.heads", f"must divide hidden={spec.hidden}", spec.heads)
    if spec.heads % spec.kv_heads:
        raise ConfigError(
            file, f"{prefix}.kv_heads", f"must divide heads={spec.heads}", spec.kv_heads
        )
    for field, allowed in MODEL_CHOICES.items():
        if getattr(spec, field) not in allowed:
            raise ConfigError(
                file,
                f"{prefix}.{field}",
                "unknown value",
                getattr(spec, field),
                " | ".join(allowed),
            )
    if spec.total_params() > MAX_PARAMS:
        raise ConfigError(file, prefix, f"has {spec.total_params():,} parameters: at most "
                          f"{MAX_PARAMS:,} (2^50)")  # fmt: skip
    if not isinstance(spec.name, str):
        raise ConfigError(file, f"{prefix}.name", "must be a string", spec.name)
    if not 0.0 <= spec.dropout < 1.0:
        raise ConfigError(file, f"{prefix}.dropout", "must be in [0, 1)", spec.dropout)
    return spec


__all__ = ["ModelSpec", "PRESETS", "preset", "from_hf_config", "validate_model", "replace"]
