"""The range of every number an input file gives: part of the schema, checked at load.

Every integer has a range and every float must be finite (NaN and infinity are refused) and
within its range, so that anything the parsers accept simulates in bounded time and memory and
no arithmetic overflows a float (an ``int`` above ~1.8e308 cannot become one). The bounds are
far above every shipped scenario, profile and plan, and every published run in
``measured/published_runs.yaml``: each comment says what the largest real value is.

The cost of one simulated step grows with micro-batches x pipeline stages (the schedule's
actions) and micro-batches x layers (per-layer slices), which :data:`MAX_MICROBATCH_LAYERS`
bounds across fields (``spec.scenario.check_size``), as
:data:`MAX_PARAMS` and :data:`MAX_ACTIVATION_BYTES` bound the sizes; the fields alone bound the
arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

from simtrain.errors import ConfigError

#: GPUs of one job (tp x pp x dp, cluster nodes x gpus_per_node, a plan's gpus): 262,144
#: (2^18); the largest published runs use 16,384 (Llama 3 405B) and announced clusters ~10^5.
MAX_GPUS = 2**18
#: Micro-batches per step x decoder layers: 262,144 (2^18). The engine runs every micro-batch
#: through every layer slice (per-layer ZeRO-3 gathers and TP collectives) and every pipeline
#: action with its sends; pp x virtual stages <= layers (check_layout), so this bounds the
#: schedule's actions (micro-batches x pp x virtual stages) too. The largest published run has
#: 117,600 (Megatron-LM 2021, 529B on 560 GPUs: 1,120 micro-batches x 105 layers, 35 stages;
#: simulated in 22 s) and the shipped plans/gpt3_175b.yaml screens layouts with 147,456
#: (1,536 x 96), whose results must not change. Simulated on the loaded 2-core dev machine:
#: pp 1 ZeRO-3 x 1,024 x 256 layers 3.5 s, pp 64 x 1,024 16 s, pp 96 x 1,536 31 s, pp 64 x 4
#: virtual x 1,024 68 s, pp 1,024 x 256 (the worst corner: the cost of an action grows with
#: pp) 263 s.
MAX_MICROBATCH_LAYERS = 2**18
#: DDP / ZeRO gradient buckets per step (parameters x 4 bytes / bucket_mb): 4,194,304 (2^22);
#: a 1T-parameter model in 25 MB buckets has 160,000.
MAX_DDP_BUCKETS = 2**22

#: Parameters of a model: 2^50 (~1.1e15), 1,000x the largest dense models trained (~1e12).
#: Model-state bytes (~20 per parameter) then stay far below 2^63.
MAX_PARAMS = 2**50
#: Bound on the activation bytes of one step on one GPU, generously over-estimated
#: (``spec.scenario.check_size``): 2^62 (4.6 EB). The schedule walk sums them as numpy int64
#: (costs.activations.activation_peak_of_states), which would wrap silently past 2^63; no real
#: layout comes near (GPT-3 175B on one GPU, 1,536 micro-batches: ~6e15 by this bound).
MAX_ACTIVATION_BYTES = 2**62

#: Integer ranges, inclusive, by key path (scenario and plan files share them).
INT_RANGES: dict[str, tuple[int, int]] = {
    # Model shape. Largest real ones: Llama 3 405B (126 layers, hidden 16,384, FFN 53,248,
    # 128 heads), Megatron 1T (128 layers, hidden 25,600, 160 heads); vocab 256,000 (Gemma);
    # context 131,072 (Llama 3.1).
    "model.layers": (1, 1024),
    "model.hidden": (1, 2**20),
    "model.heads": (1, 2**16),
    "model.kv_heads": (1, 2**16),
    "model.ffn_hidden": (1, 2**22),
    "model.vocab": (1, 2**24),
    "model.max_positions": (1, 2**24),
    # Attention variants and MoE (0 = off). Largest real ones: 384 experts (Kimi K2), top-8
    # (DeepSeek-V3, Qwen3-MoE), expert FFN 2,048 (DeepSeek-V3), head_dim 256 (Gemma).
    "model.head_size": (0, 2**16),
    "model.num_experts": (0, 2**16),
    "model.experts_per_token": (0, 2**16),
    "model.moe_ffn_hidden": (0, 2**22),
    "model.shared_experts": (0, 2**10),
    "model.shared_expert_ffn_hidden": (0, 2**22),
    "model.first_dense_layers": (0, 1024),
    "model.router_groups": (0, 2**16),  # and divides num_experts
    "model.router_group_topk": (0, 2**16),  # and <= router_groups
    # MLA (DeepSeek-V3: q_lora_rank 1536, kv_lora_rank 512, head dims 128 / 64 / 128; 1 MTP).
    "model.q_lora_rank": (0, 2**20),
    "model.kv_lora_rank": (0, 2**20),
    "model.qk_nope_head_dim": (0, 2**16),
    "model.qk_rope_head_dim": (0, 2**16),
    "model.v_head_dim": (0, 2**16),
    "model.mtp_layers": (0, 64),
    # Sliding-window attention (GPT-OSS 128 keys, Gemma-3 1,024, Mistral 4,096; 0 = off) and
    # the period of its full-attention layers (Gemma-2 and GPT-OSS 2, Gemma-3 6; 0 = none).
    "model.sliding_window": (0, 2**24),
    "model.full_attention_every": (0, 1024),
    # Training: sequences of up to 16M tokens, batches of up to 16M sequences (Llama 3: 2,048
    # x 8,192 tokens), micro-batches up to 65,536 sequences.
    "training.seq_len": (1, 2**24),
    "training.global_batch": (1, 2**24),
    "training.micro_batch": (1, 2**16),
    # PEFT sizes (LoRA ranks are <= 256 in practice; prefixes and prompts <= a few hundred).
    "training.peft.rank": (1, 2**16),
    "training.peft.adapter_size": (1, 2**20),
    "training.peft.prefix_length": (1, 2**20),
    "training.peft.prompt_length": (1, 2**20),
    "training.peft.quant_block_size": (1, 2**20),
    # LP-FT phase lengths (steps; they only multiply a simulated step's cost).
    "training.peft.probe_steps": (1, 2**40),
    "training.peft.finetune_steps": (1, 2**40),
    # Layout: each degree at most the GPU limit (their product is checked too); virtual
    # stages at most the layer limit; ZeRO-3's live-parameter cap up to 2^50 (~10^15).
    "parallelism.dp": (1, MAX_GPUS),
    "parallelism.tp": (1, MAX_GPUS),
    "parallelism.pp": (1, MAX_GPUS),
    "parallelism.cp": (1, MAX_GPUS),
    "parallelism.ep": (1, MAX_GPUS),
    "parallelism.virtual_stages": (1, 1024),
    # micro-batches per model chunk in a row (interleaved schedules; 0 = pp): at most m
    "parallelism.microbatch_group_size": (0, 2**24),
    "parallelism.first_stage_layers": (0, 1024),  # at most model.layers; 0 = unset
    "parallelism.last_stage_layers": (0, 1024),
    "parallelism.zero3_max_live_params": (0, 2**50),
    "parallelism.zero_replicas": (1, MAX_GPUS),
    "cluster.nodes": (1, MAX_GPUS),
    "cluster.gpus_per_node": (1, 1024),
}

#: Float ranges, inclusive, by key path; NaN and infinity are always refused.
FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "model.dropout": (0.0, 1.0),  # and < 1 (validate_model)
    "model.rotary_fraction": (0.0, 1.0),  # and > 0 (validate_model)
    "model.capacity_factor": (0.0, 2**16),  # and <= experts / top-k (spec.model._validate_moe)
    "model.moe_load_imbalance": (1.0, 2**16),  # and <= experts / top-k
    "model.glu_clamp": (0.0, 1e6),  # GPT-OSS 7.0; 0 = none
    # DDP bucket: 1e-6 MB is one byte (costs.comm.ddp_buckets: int(bucket_mb * 1e6) >= 1);
    # 1e12 MB covers validate's one-bucket 1e9 (apps.importers.common.ONE_BUCKET_MB).
    "parallelism.bucket_mb": (1e-6, 1e12),
    "training.peft.alpha": (-1e6, 1e6),  # LoRA scaling alpha / r (Hu et al. 2021 use 1 .. 64)
}


def _fmt(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def as_float(value: Any, file: str | None, key: str) -> float:
    """A YAML number as a finite float: an int too large for a float, NaN and infinity are
    refused (one-line :class:`ConfigError`s, never an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(file, key, "must be a number", value)
    try:
        f = float(value)
    except OverflowError:
        raise ConfigError(file, key, "must be a finite number (too large)", value) from None
    if not math.isfinite(f):
        raise ConfigError(file, key, "must be a finite number", value)
    return f


def check_range(value: float, file: str | None, key: str, lo: float, hi: float,
                lo_open: bool = False) -> None:  # fmt: skip
    """``lo <= value <= hi`` (``lo < value`` when ``lo_open``), else a :class:`ConfigError`
    saying which bound."""
    if (value <= lo) if lo_open else (value < lo):
        raise ConfigError(file, key, f"must be {'>' if lo_open else '>='} {_fmt(lo)}", value)
    if value > hi:
        raise ConfigError(file, key, f"must be <= {_fmt(hi)}", value)


def check_known_range(value: Any, file: str | None, key: str) -> None:
    """The range of ``key`` from :data:`INT_RANGES` / :data:`FLOAT_RANGES` (a key path such as
    ``training.seq_len``); finite for floats. Keys without a range pass."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and key in INT_RANGES:
        lo, hi = INT_RANGES[key]
        if lo == 1 and value < 1:
            raise ConfigError(file, key, "must be positive", value)
        check_range(value, file, key, lo, hi)
    elif isinstance(value, float):
        as_float(value, file, key)
        if key in FLOAT_RANGES:
            check_range(value, file, key, *FLOAT_RANGES[key])
