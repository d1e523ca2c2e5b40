"""nanotron: a training config YAML (``examples/config_tiny_llama.yaml``) -> a scenario.

Keys and defaults as nanotron defines them (huggingface/nanotron
2411b022a75fb7f7561a1bb4166706da5e1b76de, ``src/nanotron/config/``): ``parallelism`` (dp, tp,
pp, ``pp_engine`` 1f1b | afab, ``tp_mode`` ALL_REDUCE | REDUCE_SCATTER,
``tp_linear_async_communication`` default False, parallelism_config.py l.34-48), ``tokens``
(global batch = micro_batch_size x batch_accumulation_per_replica x dp), ``optimizer``
(``zero_stage`` 0 | 1, ``accumulate_grad_in_fp32``), ``model`` (``dtype``,
``ddp_bucket_cap_mb``, ``make_vocab_size_divisible_by``: the vocabulary is padded to a multiple
of it x tp, helpers.py ``_vocab_size_with_padding`` called from trainer.py l.991) and the Llama
``model_config`` (Hugging Face field names).

The architecture is nanotron's Llama (models/llama.py: SwiGLU, RMSNorm, rotary, no biases,
flash attention; CausalSelfAttention keeps the fused QKV tensor and a rotated K/V copy alive for
flash attention's backward: ``qkv_layout: fused_kv_copy``, memory.layer_saved_tensors) and layers
are split over pipeline stages by compute cost (``layer_split: compute_balanced``).
``simtrain validate`` reads the Ultra-Scale Playbook's nanotron runs through
:func:`import_nanotron_config` (apps/validate/native.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simtrain.apps.importers.common import (
    Imported,
    Reading,
    as_bool,
    clean_number,
    whole_number,
)
from simtrain.errors import ConfigError
from simtrain.spec.limits import INT_RANGES, MAX_GPUS, as_float
from simtrain.spec.yamlfile import parse_yaml, read_text_file
from simtrain.units import MIB

NO_EFFECT_SECTIONS = ("checkpoints", "data_stages", "general", "lighteval", "logging", "profiler",
                      "tokenizer", "s3_upload", "metrics_logging", "kill_switch_path")  # fmt: skip
MODEL_CONFIG_NO_EFFECT = (
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "rms_norm_eps",
    "rope_scaling", "rope_theta", "rope_interleaved", "use_cache", "is_llama_config",
    "pretraining_tp", "hidden_act", "attention_bias", "_attn_implementation", "_fused_rms_norm",
    "_fused_rotary_emb", "_use_qkv_packed", "_use_doc_masking",
)  # fmt: skip
PARALLELISM_KEYS = ("dp", "tp", "pp", "pp_engine", "tp_mode", "tp_linear_async_communication",
                    "expert_parallel_size", "recompute_layer", "tp_recompute_allgather",
                    "context_parallel_size")  # fmt: skip
TOKENS_NO_EFFECT = ("train_steps", "val_check_interval", "limit_val_batches",
                    "limit_test_batches")  # fmt: skip
OPTIMIZER_NO_EFFECT = ("clip_grad", "learning_rate_scheduler", "weight_decay",
                       "weight_decay_exclude_named_params")  # fmt: skip


#: What the importer (and validate's nanotron convention, in the same words) says of the loss.
LOSS_NOTE = ("loss: nanotron's cast_to_fp32 block, then sharded_cross_entropy (training."
             "cross_entropy sharded: Megatron's kernel on the fp32 copy, the max subtracted out "
             "of place; models/llama.py Loss, tensor_parallel/functional.py _ShardedCrossEntropy "
             "at 2411b022)")  # fmt: skip


def _sec(cfg: dict[str, Any], key: str, file: str, where: str = "") -> dict[str, Any]:
    """The mapping ``key`` of ``cfg`` (``where``: the path of ``cfg``, for the error)."""
    v = cfg.get(key) or {}
    if not isinstance(v, dict):
        raise ConfigError(file, f"{where}.{key}" if where else key, "must be a mapping", v)
    return v


#: The largest value of a positive integer key: its scenario key's range (spec.limits), else
#: the GPU limit (the parallel degrees; make_vocab_size_divisible_by).
LIMITS = {
    "num_hidden_layers": INT_RANGES["model.layers"][1],
    "hidden_size": INT_RANGES["model.hidden"][1],
    "num_attention_heads": INT_RANGES["model.heads"][1],
    "num_key_value_heads": INT_RANGES["model.kv_heads"][1],
    "intermediate_size": INT_RANGES["model.ffn_hidden"][1],
    "vocab_size": INT_RANGES["model.vocab"][1],
    "max_position_embeddings": INT_RANGES["model.max_positions"][1],
    "sequence_length": INT_RANGES["training.seq_len"][1],
    "micro_batch_size": INT_RANGES["training.micro_batch"][1],
    "batch_accumulation_per_replica": INT_RANGES["training.global_batch"][1],
}


def _pos(sec: dict[str, Any], key: str, file: str, where: str, default: int | None = None) -> int:
    """A positive integer key, up to its limit (common.whole_number)."""
    v = sec.get(key, default)
    if v is None:
        raise ConfigError(file, f"{where}.{key}", "missing")
    return whole_number(v, file, f"{where}.{key}", 1, LIMITS.get(key, MAX_GPUS))


def _flag(sec: dict[str, Any], key: str, file: str, where: str, default: bool = False) -> bool:
    """A boolean key: true / false (or the strings "true" / "false"), never a string's
    truthiness."""
    return as_bool(sec.get(key, default), file, f"{where}.{key}")


def import_nanotron(path: str | Path, gpus: int | None = None) -> Imported:
    """A nanotron config as a scenario document."""
    file = str(path)
    try:
        cfg = parse_yaml(read_text_file(path), file)
    except ConfigError as exc:
        if "invalid YAML" not in exc.message:
            raise
        raise ConfigError(file, exc.key, f"not a nanotron config: {exc.message}") from None
    return import_nanotron_config(cfg, gpus, file)


def import_nanotron_config(cfg: Any, gpus: int | None = None, file: str = "<config>") -> Imported:
    """A parsed nanotron config (the YAML's mapping) as a scenario document: the one reading of
    nanotron's keys, for ``simtrain import nanotron`` and for ``simtrain validate``'s nanotron
    records (apps.validate.native)."""
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("model", "parallelism", "tokens")):
        raise ConfigError(file, "<file>", "not a nanotron config: needs model, parallelism and "
                          "tokens sections")  # fmt: skip
    r = Reading("nanotron", file)
    par_raw, tok, opt = (
        _sec(cfg, "parallelism", file),
        _sec(cfg, "tokens", file),
        _sec(cfg, "optimizer", file),
    )
    mod = _sec(cfg, "model", file)
    mc = _sec(mod, "model_config", file, "model")
    for k in cfg:
        if k in NO_EFFECT_SECTIONS:
            r.ignore(k)
        elif k not in ("model", "parallelism", "tokens", "optimizer"):
            r.unsupported_(k, "not a section this importer knows")

    # ---- layout
    dp = _pos(par_raw, "dp", file, "parallelism")
    tp = _pos(par_raw, "tp", file, "parallelism")
    pp = _pos(par_raw, "pp", file, "parallelism")
    for k in ("dp", "tp", "pp"):
        r.origin(f"parallelism.{k}", f"parallelism.{k}")
    if gpus is not None and gpus != dp * tp * pp:
        raise ConfigError(file, "parallelism", f"dp x tp x pp = {dp} x {tp} x {pp} = "
                          f"{dp * tp * pp} GPUs, but --gpus {gpus} (change dp with "
                          "--set parallelism.dp=N)")  # fmt: skip
    for k in par_raw:
        if k not in PARALLELISM_KEYS:
            r.unsupported_(f"parallelism.{k}", "not a key this importer knows")
    # config/parallelism_config.py __post_init__ (2411b022 l.43-45): no pp_engine is
    # AllForwardAllBackwardPipelineEngine; cast_str_to_pipeline_engine takes "1f1b" / "afab"
    engine = str(par_raw.get("pp_engine") or "afab")  # (null too: __post_init__'s None)
    schedules = {"1f1b": "1f1b", "afab": "gpipe"}
    if engine not in schedules:
        raise ConfigError(file, "parallelism.pp_engine", "unknown value", engine, "1f1b | afab")
    if engine == "afab" and pp > 1:
        r.assume("pp_engine " + ("afab" if "pp_engine" in par_raw else "not set: nanotron's "
                 "default afab") + " (all forward, all backward): the gpipe schedule")  # fmt: skip
    tp_mode = str(par_raw.get("tp_mode", "ALL_REDUCE")).upper()
    if tp_mode not in ("ALL_REDUCE", "REDUCE_SCATTER"):
        raise ConfigError(file, "parallelism.tp_mode", "unknown value", tp_mode,
                          "ALL_REDUCE | REDUCE_SCATTER")  # fmt: skip
    runtime: dict[str, Any] = {"name": "nanotron"}
    async_tp = _flag(par_raw, "tp_linear_async_communication", file, "parallelism")
    if async_tp and tp > 1:
        # _ColumnLinearAsyncCommunication.backward (tensor_parallel/functional.py l.385-460 at
        # 2411b022): the input re-gather beside the input-gradient GEMM, the input gradient's
        # reduce-scatter / all-reduce beside the weight-gradient GEMM. Its forward all-gather and
        # the row-parallel backward's gather overlap only the local shard's GEMM (1/tp of it):
        # left exposed.
        runtime["tp_backward_overlap"] = True
        r.assume("tp_linear_async_communication: each column-parallel linear's backward "
                 "collectives overlapped with its GEMMs (runtime tp_backward_overlap); the "
                 "forward's all-gathers stay exposed (they overlap 1/tp of a GEMM)")  # fmt: skip
    for k in ("expert_parallel_size", "context_parallel_size"):
        if par_raw.get(k, 1) not in (1, None):
            r.unsupported_(f"parallelism.{k} {par_raw[k]}", "not simulated")
    # nanotron's cached all-gather buffers (MemoryBuffer, parallel/utils.py) with REDUCE_SCATTER:
    # 'allgather' when the column-parallel linears re-gather their input for backward
    # (tp_recompute_allgather, default True), 'allgather2' in the async row-parallel linear's
    # backward (tensor_parallel/functional.py); written whatever the profile's default.
    recompute_allgather = _flag(par_raw, "tp_recompute_allgather", file, "parallelism", True)
    if tp_mode == "REDUCE_SCATTER" and tp > 1 and not recompute_allgather:
        # the column-parallel linears save their all-gathered input instead of re-gathering it
        # (functional.py l.333-334 / l.499-500 at 2411b022)
        runtime["tp_regather_backward"] = False
        runtime["tp_saves_gathered_input"] = True
    if tp_mode == "REDUCE_SCATTER" and tp > 1:
        runtime["tp_gather_buffers"] = int(recompute_allgather) + int(async_tp)
        r.origin("runtime.tp_gather_buffers",
                 "parallelism.tp_linear_async_communication, tp_recompute_allgather")  # fmt: skip
        if not recompute_allgather:
            r.assume("tp_recompute_allgather: false: the column-parallel linears keep their "
                     "all-gathered input for backward (runtime tp_saves_gathered_input) and do "
                     "not gather it again (tp_regather_backward false)")  # fmt: skip
    elif "tp_recompute_allgather" in par_raw:
        r.ignore("parallelism.tp_recompute_allgather")
    zero = opt.get("zero_stage", 0)
    if zero not in (0, 1) or isinstance(zero, bool):
        raise ConfigError(file, "optimizer.zero_stage", "unknown value", zero, "0 | 1")
    par: dict[str, Any] = {
        "dp": dp, "tp": tp, "pp": pp, "schedule": schedules[engine] if pp > 1 else "1f1b",
        "zero_stage": zero, "sequence_parallel": tp_mode == "REDUCE_SCATTER" and tp > 1,
    }  # fmt: skip
    if pp > 1:
        par["layer_split"] = "compute_balanced"
        r.assume("pipeline stages split by compute cost (nanotron's layer_split)")
    if "ddp_bucket_cap_mb" in mod:  # torch DDP's bucket_cap_mb, in MiB: simtrain's MB are 10^6 B
        cap = as_float(mod["ddp_bucket_cap_mb"], file, "model.ddp_bucket_cap_mb")
        par["bucket_mb"] = clean_number(cap * MIB / 1e6)
        r.origin("parallelism.bucket_mb", "model.ddp_bucket_cap_mb (MiB)")

    # ---- model
    model = _model(mc, mod, r, tp, file)
    seq = _pos(tok, "sequence_length", file, "tokens")
    micro = _pos(tok, "micro_batch_size", file, "tokens")
    acc = _pos(tok, "batch_accumulation_per_replica", file, "tokens", 1)
    for k in tok:
        if k in TOKENS_NO_EFFECT:
            r.ignore(f"tokens.{k}")
        elif k not in ("sequence_length", "micro_batch_size", "batch_accumulation_per_replica"):
            r.unsupported_(f"tokens.{k}", "not a key this importer knows")
    r.origin("training.seq_len", "tokens.sequence_length")
    r.origin("training.micro_batch", "tokens.micro_batch_size")
    r.origin("model.max_positions", "model.model_config.max_position_embeddings")

    # ---- precision, optimizer, recompute
    dtype = str(mod.get("dtype", "bfloat16"))
    precisions = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    if dtype not in precisions:
        raise ConfigError(file, "model.dtype", "unknown value", dtype, " | ".join(precisions))
    precision = precisions[dtype]
    if _flag(opt, "accumulate_grad_in_fp32", file, "optimizer") and precision != "fp32":
        precision = "bf16_fp32_grads" if precision == "bf16" else precision
        r.assume("accumulate_grad_in_fp32: an fp32 gradient buffer for every parameter next to "
                 "the 16-bit gradients (bf16_fp32_grads)")  # fmt: skip
        if precision == "fp16":
            r.unsupported_("optimizer.accumulate_grad_in_fp32 with float16", "simulated as fp16")
    factory = _sec(opt, "optimizer_factory", file, "optimizer")
    name = factory.get("name", "adamW")
    if not isinstance(name, str):
        raise ConfigError(file, "optimizer.optimizer_factory.name", "must be a string", name,
                          "adamW | adam | sgd")  # fmt: skip
    name = name.lower()
    optimizer = {"adamw": "adamw", "adam": "adam", "sgd": "sgd"}.get(name)
    if optimizer is None:
        optimizer = "adamw"
        r.unsupported_(
            f"optimizer.optimizer_factory.name {factory.get('name')}", "simulated as AdamW"
        )
    for k in opt:
        if k in OPTIMIZER_NO_EFFECT or k == "optimizer_factory":
            if k != "optimizer_factory":
                r.ignore(f"optimizer.{k}")
        elif k not in ("zero_stage", "accumulate_grad_in_fp32"):
            r.unsupported_(f"optimizer.{k}", "not a key this importer knows")
    # helpers.py basic_optimizer_builder: torch.optim.AdamW(..., fused=torch_adam_is_fused)
    # (l.325-339 at 67c5ebb6): the fused kernel updates every tensor in place, no per-tensor
    # temporaries (costs.params.optimizer_working_bytes); SGD does not read the key
    if factory.get("torch_adam_is_fused") is not None:
        fused = _flag(factory, "torch_adam_is_fused", file, "optimizer.optimizer_factory")
        if optimizer in ("adam", "adamw"):
            runtime["fused_optimizer"] = fused
            r.origin("runtime.fused_optimizer", "optimizer.optimizer_factory.torch_adam_is_fused")
        else:
            r.ignore("optimizer.optimizer_factory.torch_adam_is_fused")
    elif optimizer in ("adam", "adamw"):
        r.assume("optimizer.optimizer_factory.torch_adam_is_fused not set (nanotron requires it): "
                 "the profile's fused AdamW, as nanotron's examples set it")  # fmt: skip
    for k in factory:
        if k not in ("name", "torch_adam_is_fused"):
            r.ignore(f"optimizer.optimizer_factory.{k}")
    training = {
        "seq_len": seq,
        "global_batch": micro * acc * dp,
        "micro_batch": micro,
        "precision": precision,
        "optimizer": optimizer,
        "recompute": "full" if _flag(par_raw, "recompute_layer", file, "parallelism") else "none",
        "cross_entropy": "sharded",  # nanotron's own loss: LOSS_NOTE
    }
    r.assume(LOSS_NOTE)
    r.assume(f"global batch = micro_batch_size x batch_accumulation_per_replica x dp = {micro} x "
             f"{acc} x {dp} = {training['global_batch']}")  # fmt: skip
    return r.scenario(
        f"Imported from a nanotron config ({Path(file).name})",
        "a nanotron config names no GPU",
        model,
        runtime,
        training,
        par,
    )


def _model(mc: dict[str, Any], mod: dict[str, Any], r: Reading, tp: int,
           file: str) -> dict[str, Any]:  # fmt: skip
    where = "model.model_config"
    layers = _pos(mc, "num_hidden_layers", file, where)
    hidden = _pos(mc, "hidden_size", file, where)
    heads = _pos(mc, "num_attention_heads", file, where)
    kv = _pos(mc, "num_key_value_heads", file, where, heads)
    ffn = _pos(mc, "intermediate_size", file, where)
    vocab = _pos(mc, "vocab_size", file, where)
    maxpos = _pos(mc, "max_position_embeddings", file, where, 2048)
    div = _pos(mod, "make_vocab_size_divisible_by", file, "model", 1)
    padded = -(-vocab // (div * tp)) * div * tp  # integers: no float to overflow
    if padded != vocab:
        r.assume(f"vocabulary {vocab:,} padded to {padded:,} (make_vocab_size_divisible_by "
                 f"{div} x tp {tp})")  # fmt: skip
    act = str(mc.get("hidden_act", "silu"))
    if act != "silu":
        r.unsupported_(f"{where}.hidden_act {act}", "simulated as SwiGLU (silu)")
    for k in mc:
        if k in MODEL_CONFIG_NO_EFFECT:
            r.ignore(f"{where}.{k}")
        elif k not in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                       "num_key_value_heads", "intermediate_size", "vocab_size",
                       "max_position_embeddings", "tie_word_embeddings"):  # fmt: skip
            r.unsupported_(f"{where}.{k}", "not a key this importer knows")
    for k in mod:
        if k in ("init_method",):
            r.ignore(f"model.{k}")
        elif k not in (
            "model_config",
            "dtype",
            "ddp_bucket_cap_mb",
            "make_vocab_size_divisible_by",
        ):
            r.unsupported_(f"model.{k}", "not a key this importer knows")
    for k, flag in (("layers", "num_hidden_layers"), ("hidden", "hidden_size"),
                    ("heads", "num_attention_heads"), ("kv_heads", "num_key_value_heads"),
                    ("ffn_hidden", "intermediate_size"), ("vocab", "vocab_size")):  # fmt: skip
        r.origin(f"model.{k}", f"{where}.{flag}")
    r.assume("architecture: nanotron's Llama (SwiGLU, RMSNorm, rotary, no biases, flash "
             "attention, fused QKV kept for backward: qkv_layout fused_kv_copy)")  # fmt: skip
    return {
        "name": f"nanotron Llama {layers}x{hidden}",
        "layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv, "ffn_hidden": ffn,
        "vocab": padded, "max_positions": maxpos, "mlp": "swiglu", "positions": "rotary",
        "bias": False, "norm": "rmsnorm",
        "tied_embeddings": _flag(mc, "tie_word_embeddings", file, where),
        "dropout": 0.0, "flash_attention": True, "qkv_layout": "fused_kv_copy",
    }  # fmt: skip
