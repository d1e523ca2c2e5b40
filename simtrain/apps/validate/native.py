"""Records -> the native configuration of the framework that ran them, read by that framework's
importer (``apps.importers``): one reading of each framework's settings for ``simtrain import``
and ``simtrain validate`` alike.

A record of a family with an importer is written as the configuration its framework would have
been launched with (for Megatron: the ``pretrain_gpt.py`` flags), from what the record says and
the source convention's defaults for what it leaves unsaid; the importer turns that into the
scenario document (``apps.importers.megatron.import_megatron_flags``: the runtime of a 2021
script, Megatron's "local" DDP, interleaving whenever there are virtual stages, sequence
parallelism only with tp > 1, the distributed optimizer as ZeRO-1, the vocabulary padding, FP8
recipes, uneven pipeline flags, recompute flags). Then only what such a configuration does not
say is laid over it (:func:`overlay`): the record id, the hardware profile of the record's GPU
and network, the runtime of a source that ran the flags in another framework (Megatron-DeepSpeed
under ``deepspeed``), and the source's conventions that have no flag (its layer split, loss kernel,
a precision the flags cannot name).

Families (``records.source_key``) through an importer (:data:`IMPORTER_OF`), with the records
of measured/*.yaml that translate:

- megatron (``pretrain_gpt.py`` flags, :func:`megatron_flags`): Megatron-LM SC'21
  (``megatron_sc21``, 16), Korthikanti et al. 2022 (``korthikanti2022``, 8), the Megatron-LM
  README (``megatron_readme``, 13; ``megatron_v1_blog``, its 4 records report no model shape),
  MT-NLG 530B (``mtnlg``, 1: Megatron-DeepSpeed flags, run under the ``deepspeed`` runtime);
- nanotron (a config mapping, :func:`nanotron_config`): the Ultra-Scale Playbook's sweep
  (``nanotron``, 417);
- torchtitan (a job config's tables, :func:`torchtitan_config`): the torchtitan benchmarks
  (``torchtitan``, 11); the layer split of the torchtitan commit a record ran (9dec370a's
  split points, ``splits.pipeline_split``) is laid over the importer's (4a950ea's);
- deepspeed (a ds_config object with the record's model section, :func:`deepspeed_config`): the
  DeepSpeed ZeRO-3 rows of SC'21 Table 2 (``megatron_sc21_zero3``, 6); their sequence length and
  recompute are ``--set`` (a ds_config holds neither).

Megatron-Core r0.8.0 (``megatron_core``, 3), NeMo 24.07 (``nemo``, 4) and Megatron-Bridge
(``megatron_bridge``, 4) go through the Megatron importer too, with Megatron-Core's readings
(fp32 gradient reduction and buffer under --bf16, the default DDP bucket with
--overlap-grad-reduce, the vocabulary padded to a multiple of 128 x tp; Megatron-Bridge's 405B
recipe's --account-for-embedding/loss-in-pipeline-split from ``splits.pipeline_split``).

A record may carry its run's own arguments (``Record.native``: SimuMax's B200 runs,
``measured/simumax_b200.yaml``, 43): they go to their importer as launched, whatever the
family, with only the record id and the hardware laid over; the record's sections must agree
with them on layout and batch (:func:`_agree`).

On ``translate.py``'s own path: BLOOM (``bloom``, ``bloom_chronicles``:
Megatron-DeepSpeed's BF16 optimizer is not Megatron's --bf16 rule, and DeepSpeed's partition
method is no Megatron flag, and a ds_config holds no pipeline layout); and the sources with no
importer: MosaicML llm-foundry
(``mosaicml``), HF Transformers (``hf_transformers``), simtrain's own H200 runs
(``simtrain_h200``) and the papers' tables of other frameworks (ZeRO, GPipe, OPT, PaLM, LLaMA,
Llama 3, LoRA / QLoRA, torchao: all skipped today).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from simtrain.apps.importers.common import Imported, with_overrides
from simtrain.apps.importers.deepspeed import import_deepspeed_config
from simtrain.apps.importers.megatron import OVERLAP_FLAGS, import_megatron_flags, layout_string
from simtrain.apps.importers.nanotron import import_nanotron_config
from simtrain.apps.importers.torchtitan import LLAMA3_FLAVORS, import_torchtitan_config
from simtrain.apps.validate.conventions import SourceConvention, runtime_for
from simtrain.apps.validate.records import Record, record_int
from simtrain.apps.validate.splits import pipeline_split
from simtrain.errors import ConfigError
from simtrain.spec.hardware import load_hardware
from simtrain.spec.precision import FP8_PARAM_PRECISIONS, STORAGE_DEFAULTS

#: The importer each family's records go through (source key -> importer kind).
IMPORTER_OF: dict[str, str] = {
    "megatron_sc21": "megatron",
    "korthikanti2022": "megatron",
    "megatron_readme": "megatron",
    "megatron_v1_blog": "megatron",
    "mtnlg": "megatron",
    "megatron_core": "megatron",  # Megatron-Core r0.8.0, NeMo, Megatron-Bridge: Megatron-Core
    "nemo": "megatron",
    "megatron_bridge": "megatron",
    "nanotron": "nanotron",
    "torchtitan": "torchtitan",
    "megatron_sc21_zero3": "deepspeed",
}

#: Megatron's flag of each 16-bit format (FP8 recipes run on --bf16: spec/precision.py).
_PRECISION_FLAGS = {"fp16": ["--fp16"], "bf16": ["--bf16"], "fp32": [],
                    "fp8_delayed": ["--bf16", "--fp8-format", "hybrid", "--fp8-recipe", "delayed"],
                    "fp8_current": ["--bf16", "--fp8-format", "hybrid", "--fp8-recipe",
                                    "tensorwise"],
                    "mxfp8": ["--bf16", "--fp8-format", "e4m3", "--fp8-recipe", "mxfp8"]}  # fmt: skip
#: Megatron FSDP's sharding strategy of each ZeRO stage (arguments.py
#: --data-parallel-sharding-strategy; the importer's reading in reverse).
_FSDP_STRATEGY = {2: "optim_grads", 3: "optim_grads_params"}


def importer_of(rec: Record) -> str | None:
    """The importer kind a record goes through (the kind of its own arguments when it carries
    them, ``Record.native``), None for translate.py's own path."""
    if rec.native:
        return str(rec.native["kind"])
    return IMPORTER_OF.get(rec.source_key)


def megatron_flags(rec: Record, conv: SourceConvention, model: Mapping[str, Any],
                   training: Mapping[str, Any], layout: tuple[int, int, int, int],
                   batch: tuple[int, int], par: Mapping[str, Any]) -> list[str]:  # fmt: skip
    """The ``pretrain_gpt.py`` flags of a Megatron record: ``model`` and ``training`` as the
    record and its source convention give them (translate._model, translate._training),
    ``layout`` = (tp, pp, dp, cp), ``batch`` = (global, micro), ``par`` the record's
    ``parallelism`` with the convention's implied keys. A run on Megatron-LM 2021 or 2022 (the
    ``megatron_lm_2021`` / ``_2022`` runtimes) is written with that era's flags (``--DDP-impl``,
    ``--checkpoint-activations``), which is how the importer tells the two apart."""
    tp, pp, dp, cp = layout
    B, b = batch
    era = runtime_for(rec)[0]  # the record's runtime, else its source's
    legacy = era in ("megatron_lm_2021", "megatron_lm_2022")
    w: list[str] = ["--num-layers", model["layers"], "--hidden-size", model["hidden"],
                    "--num-attention-heads", model["heads"], "--seq-length", training["seq_len"],
                    "--max-position-embeddings", model["max_positions"],
                    "--vocab-size", model["vocab"], "--micro-batch-size", b,
                    "--global-batch-size", B, "--tensor-model-parallel-size", tp,
                    "--pipeline-model-parallel-size", pp]  # fmt: skip
    if cp > 1:
        w += ["--context-parallel-size", cp]
    if "kv_heads" in model:
        w += ["--group-query-attention", "--num-query-groups", model["kv_heads"]]
    if "ffn_hidden" in model:
        w += ["--ffn-hidden-size", model["ffn_hidden"]]
    else:  # the record gives no width: 4h, which Megatron's default is without --swiglu
        w += ["--ffn-hidden-size", 4 * int(model["hidden"])]
    w += _architecture_flags(model, legacy)
    w += _PRECISION_FLAGS.get(training["precision"], ["--bf16"])
    if training["optimizer"] == "muon":
        w += ["--optimizer", "muon"]
    if training["optimizer"] in ("sgd", "sgd_momentum"):
        w += ["--optimizer", "sgd", "--sgd-momentum",
              "0.9" if training["optimizer"] == "sgd_momentum" else "0"]  # fmt: skip
    # Megatron-LM 2022 replaced --checkpoint-activations by --recompute-granularity (arguments.py
    # l.107-118 at d898a8991d), which is how the importer tells 2022 from 2021
    # (the config table's recompute where the record states none of its own)
    recompute = mbridge_recompute_flags(rec) if rec.training.get("recompute") is None else []
    w += recompute or _recompute_flags(training["recompute"], era == "megatron_lm_2021")
    v = int(par.get("virtual_stages") or 1)
    split = pipeline_split(rec, dict(par), int(model["layers"]), [])  # splits.py's rules
    layout = isinstance(split.get("layer_split"), list)  # (which gives the virtual stages)
    if pp > 1 and v > 1 and "gpipe" not in str(par.get("schedule", "")).lower() and not layout:
        w += ["--num-virtual-stages-per-pipeline-rank", v]
    for key, flag in (("account_for_embedding", "--account-for-embedding-in-pipeline-split"),
                      ("account_for_loss", "--account-for-loss-in-pipeline-split")):  # fmt: skip
        if split.get(key):
            w.append(flag)
    if layout:  # a recipe's layout (Megatron's string)
        w += ["--pipeline-model-parallel-layout", layout_string(split["layer_split"])]
    if par.get("sequence_parallel"):
        w.append("--sequence-parallel")
    zero = int(par.get("zero_stage") or 0)
    if zero == 1:
        w.append("--use-distributed-optimizer")
    elif zero in _FSDP_STRATEGY:
        w += ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", _FSDP_STRATEGY[zero]]
        if rec.source_key == "megatron_bridge":
            # Megatron-Bridge turns gradient-accumulation fusion off under Megatron FSDP
            # (training/config.py l.1316-1318 at 00b7660b): no TE dummy wgrads
            w.append("--no-gradient-accumulation-fusion")
    ddp = str(par.get("ddp_impl") or conv.ddp_default)
    if legacy or ddp == "local":
        w += ["--DDP-impl", ddp]
    offloaded = mbridge_offload_layers(rec, zero, pp)
    if offloaded:
        w += ["--cpu-offloading-num-layers", offloaded]
    w += mbridge_cuda_graph_flags(rec) + mbridge_recipe_flags(rec)
    fp8_weights = rec.source_key == "megatron_bridge" or (
        bool(conv.finetune_fp8_params) and rec.training.get("finetune") is not None
    )
    if fp8_weights and zero != 3 and training["precision"] in FP8_PARAM_PRECISIONS:
        w.append("--fp8-param-gather")
    text = _record_text(rec)
    for flag in OVERLAP_FLAGS:
        if flag in text and (flag != "--overlap-param-gather" or zero):
            w.append(flag)
    w += [f for f in launch_flags(conv, tp, bool(par.get("sequence_parallel")), zero,
                                  training) if f not in w]  # fmt: skip
    return [str(x) for x in w]


def _record_text(rec: Record) -> str:
    """Where a record names the flags its run was launched with (notes, training, parallelism)."""
    return f"{rec.notes} {rec.training} {rec.parallelism}"


def _is_lora(training: Mapping[str, Any]) -> bool:
    return str(training.get("peft", {}).get("method", "")) in ("lora", "qlora")


def launch_flags(conv: SourceConvention, tp: int, sp: bool, zero: int,
                 training: Mapping[str, Any]) -> list[str]:  # fmt: skip
    """The source launcher's flags (``conv.launch_flags``; ``lora_launch_flags`` for a LoRA
    ``training``) that apply to a layout: TP comm overlap needs tp > 1 with sequence
    parallelism, the parameter all-gather's overlap a sharded optimizer (the distributed
    optimizer or Megatron FSDP), a bf16 gradient reduction a run on --bf16 (Megatron's
    arguments.py checks of each)."""
    flags = conv.launch_flags
    if _is_lora(training) and conv.lora_launch_flags is not None:
        flags = conv.lora_launch_flags
    bf16 = "--bf16" in _PRECISION_FLAGS.get(str(training.get("precision")), ["--bf16"])
    applies = {"--tp-comm-overlap": tp > 1 and sp, "--overlap-param-gather": zero >= 1,
               "--grad-reduce-in-bf16": bf16}  # fmt: skip
    return [f for f in flags if applies.get(f, True)]


def _architecture_flags(model: Mapping[str, Any], legacy: bool) -> list[str]:
    """The flags of the model's architecture where it is not Megatron's GPT default (GeLU 4h,
    learned positions, biases, LayerNorm, tied embeddings, dropout 0.1)."""
    w: list[str] = []
    if model.get("mlp") == "swiglu":
        w.append("--swiglu")
    elif model.get("mlp") == "relu2":
        w.append("--squared-relu")
    if model.get("positions") == "rotary":
        w += ["--position-embedding-type", "rope"]
        if model.get("rotary_fraction", 1.0) != 1.0:
            w += ["--rotary-percent", str(model["rotary_fraction"])]
    elif model.get("positions") in ("alibi", "none"):  # Megatron-DeepSpeed's alibi type
        w += ["--position-embedding-type", model["positions"]]
    if model.get("bias") is False:
        w.append("--disable-bias-linear")
    if model.get("qkv_bias"):
        w.append("--add-qkv-bias")
    if model.get("norm") == "rmsnorm":
        w += ["--normalization", "RMSNorm"]
    if model.get("tied_embeddings") is False:
        w.append("--untie-embeddings-and-output-weights")
    if "dropout" in model:
        attention = model["dropout"] if model.get("attention_dropout", True) else 0.0
        w += ["--hidden-dropout", str(model["dropout"]), "--attention-dropout", str(attention)]
    if model.get("flash_attention"):  # Megatron-Core: Transformer Engine's, its default
        w += ["--use-flash-attn"] if legacy else []
    elif not legacy:
        w += ["--transformer-impl", "local"]
    return w


def _recompute_flags(recompute: str, legacy: bool) -> list[str]:
    """Megatron's recompute flags: 2021's ``--checkpoint-activations`` (full) and
    ``--recompute-activations`` (selective, 2022), or ``--recompute-granularity``."""
    if recompute == "full":
        return ["--checkpoint-activations"] if legacy else [
            "--recompute-granularity", "full", "--recompute-method", "uniform"]  # fmt: skip
    if recompute == "selective":
        return ["--recompute-activations"] if legacy else ["--recompute-granularity", "selective"]
    return []


#: nanotron's ``model.dtype`` and ``optimizer.accumulate_grad_in_fp32`` of each simtrain
#: precision (the importer's reading in reverse).
_NANOTRON_DTYPE = {"bf16": ("bfloat16", False), "bf16_fp32_grads": ("bfloat16", True),
                   "fp16": ("float16", False), "fp32": ("float32", False)}  # fmt: skip
_NANOTRON_OPTIMIZER = {"adamw": "adamW", "adam": "adam", "sgd": "sgd"}


_UNFUSED = re.compile(r"\bunfused\b|\bnot fused\b|fused\s*=\s*false", re.I)


def nanotron_config(rec: Record, model: Mapping[str, Any], training: Mapping[str, Any],
                    layout: tuple[int, int, int, int], batch: tuple[int, int],
                    par: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The nanotron config (huggingface/nanotron ``config/``; the Ultra-Scale Playbook's bench
    configs) of a nanotron record: ``model.model_config`` in Hugging Face Llama names, the
    layout, ``tokens`` (batch_accumulation_per_replica = global / (micro x dp)) and the optimizer.
    ``tp_mode: REDUCE_SCATTER`` is sequence parallelism; ``pp_engine afab`` GPipe's order."""
    tp, pp, dp, _cp = layout
    B, b = batch
    dtype, fp32_grads = _NANOTRON_DTYPE.get(training["precision"], ("bfloat16", False))
    mc = {"num_hidden_layers": model["layers"], "hidden_size": model["hidden"],
          "num_attention_heads": model["heads"],
          "num_key_value_heads": model.get("kv_heads", model["heads"]),
          "intermediate_size": model.get("ffn_hidden", 4 * int(model["hidden"])),
          "vocab_size": model["vocab"], "max_position_embeddings": model["max_positions"],
          "tie_word_embeddings": bool(model.get("tied_embeddings", True))}  # fmt: skip
    text = str(par.get("schedule", "")).lower()
    return {
        "model": {"dtype": dtype, "make_vocab_size_divisible_by": 1, "model_config": mc},
        "parallelism": {
            "dp": dp,
            "tp": tp,
            "pp": pp,
            "pp_engine": "afab" if "afab" in text or "gpipe" in text else "1f1b",
            "tp_mode": "REDUCE_SCATTER" if par.get("sequence_parallel") else "ALL_REDUCE",
            # the Playbook sweep: async TP exactly with REDUCE_SCATTER
            # (scripts/scaling_benchmarks.py l.87-88 at 2411b022)
            "tp_linear_async_communication": bool(par.get("sequence_parallel")),
            "recompute_layer": training["recompute"] == "full",
        },  # fmt: skip
        "tokens": {
            "sequence_length": training["seq_len"],
            "micro_batch_size": b,
            "batch_accumulation_per_replica": B // (b * dp),
        },  # fmt: skip
        "optimizer": {
            "zero_stage": int(par.get("zero_stage") or 0),
            "accumulate_grad_in_fp32": fp32_grads,
            # the sweep's base config sets torch_adam_is_fused: true for every job (nouamane/
            # bench2 examples/config_tiny_llama_bench.yaml l.70 at 67c5ebb6), whether or not a
            # record says "(fused)"; one that says it was not is not
            "optimizer_factory": {
                "name": _NANOTRON_OPTIMIZER.get(training["optimizer"], "adamW"),
                "torch_adam_is_fused": not _UNFUSED.search(str(rec.training.get("optimizer", ""))),
            },
        },  # fmt: skip
    }


#: torchtitan's pipeline_parallel_schedule of a record's schedule text (first match).
_TORCHTITAN_SCHEDULES = (("interleaved", "Interleaved1F1B"), ("gpipe", "GPipe"), ("", "1F1B"))
#: torchtitan [float8] recipe of each simtrain FP8 precision (the importer's reading in reverse).
_TORCHTITAN_FLOAT8 = {"fp8_tensorwise": "tensorwise", "fp8_rowwise": "rowwise"}
_SHAPE_KEYS = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab")


def torchtitan_flavor(model: Mapping[str, Any]) -> str:
    """The llama3 flavor (``importers.torchtitan.LLAMA3_FLAVORS``) of the record's shape: the one
    with its layers and dim, else the 8B (and the shape laid over it, :func:`torchtitan_config`)."""
    for name, fl in LLAMA3_FLAVORS.items():
        if (fl.n_layers, fl.dim) == (model["layers"], model["hidden"]):
            return name
    return "8B"


def torchtitan_config(rec: Record, conv: SourceConvention, model: Mapping[str, Any],
                      training: Mapping[str, Any], layout: tuple[int, int, int, int],
                      batch: tuple[int, int], par: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The torchtitan job config (the TOML's tables; importers/torchtitan.py cites the keys) of a
    torchtitan record: the llama3 flavor, FSDP2 over the data-parallel GPUs, tp / pp / cp
    degrees, async TP with torch.compile, the pipeline schedule and micro-batch, activation
    checkpointing (torchtitan's selective is per op) and the float8 converter with its recipe.

    A record's "FSDP" (``zero_stage: 3``) is fully_shard with torchtitan's own reshard policy,
    ``fsdp_reshard_after_forward = "default"``: reshard after forward unless pipeline parallel
    (9dec370a parallelisms/parallelize_llama.py apply_fsdp l.324-339, "For PP, do not reshard
    after forward to avoid per-microbatch all-gathers"; e7c0cae and 4a950ea keep it as the
    "default" policy); ``zero_stage: 2`` is "never".

    The 2024-12 benchmarks' loss was not compiled (9dec370a train.py l.136-138: ``loss_fn =
    torch.compile(loss_fn)`` commented out): ``compile.components = ["model"]``; later commits
    compile it with the model (components/loss.py build_cross_entropy_loss)."""
    tp, pp, dp, cp = layout
    B, b = batch
    zero = int(par.get("zero_stage") or 0)
    rep = int(par.get("zero_replicas") or 1) if zero else 1  # HSDP (translate._hybrid_replicas)
    p: dict[str, Any] = {"data_parallel_replicate_degree": rep if zero or dp == 1 else dp,
                         "data_parallel_shard_degree": dp // rep if zero or dp == 1 else 1,
                         "tensor_parallel_degree": tp, "pipeline_parallel_degree": pp,
                         "context_parallel_degree": cp}  # fmt: skip
    if zero:
        p["fsdp_reshard_after_forward"] = "default" if zero == 3 else "never"
    # async TP: the record's parallelism flag, or its techniques naming it (the 2024-12 tables'
    # captions: "2D + AsyncTP + torch.compile + Float8")
    techniques = str(rec.training.get("techniques") or "").lower().replace(" ", "")
    async_tp = (bool(par.get("async_tp")) or "asynctp" in techniques) and tp > 1
    if async_tp:
        p["enable_async_tensor_parallel"] = True
    if pp > 1:
        text = str(par.get("schedule") or "").lower()
        p["pipeline_parallel_schedule"] = next(v for k, v in _TORCHTITAN_SCHEDULES if k in text)
        p["pipeline_parallel_microbatch_size"] = b
    t: dict[str, Any] = {"seq_len": training["seq_len"], "global_batch_size": B,
                         "local_batch_size": b if pp == 1 else B // dp}  # fmt: skip
    precision = training["precision"]
    if precision == "bf16_pure":
        t["dtype"] = "bfloat16"
    elif precision == "fp32":
        t["mixed_precision_param"] = "float32"
    mode = {"none": "none", "full": "full"}.get(training["recompute"], "selective")
    cfg: dict[str, Any] = {
        "model": {"name": "llama3", "flavor": torchtitan_flavor(model)},
        "training": t,
        "parallelism": p,
        "activation_checkpoint": {"mode": mode}
        | ({"selective_ac_option": "op"} if mode == "selective" else {}),  # fmt: skip
    }
    if rec.training.get("optimizer") is not None:
        cfg["optimizer"] = {"name": "Adam" if training["optimizer"] == "adam" else "AdamW"}
    compiled = "torch.compile" in f"{rec.notes} {rec.training}"
    if compiled or async_tp:
        cfg["compile"] = {"enable": True} | (
            {} if conv.compiled_loss else {"components": ["model"]}
        )
    if precision in _TORCHTITAN_FLOAT8:
        cfg["model"]["converters"] = ["quantize.linear.float8"]
        cfg["quantize"] = {"linear": {"float8": {"recipe_name": _TORCHTITAN_FLOAT8[precision]}}}
    return cfg


def _toml_tables(cfg: Mapping[str, Any], prefix: str) -> list[str]:
    """TOML lines of nested tables of booleans, integers, strings and lists of strings (a job
    config as :func:`torchtitan_config` builds it; JSON's string and list syntax is TOML's)."""
    lines: list[str] = []
    scalars = {k: v for k, v in cfg.items() if not isinstance(v, Mapping)}
    if scalars and prefix:
        lines.append(f"[{prefix}]")
    for k, v in scalars.items():
        lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else json.dumps(v)}")
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            lines += _toml_tables(v, f"{prefix}.{k}" if prefix else k)
    return lines


#: DeepSpeed's precision sections of each simtrain precision (the importer's reading in reverse).
_DS_PRECISION: dict[str, dict[str, Any]] = {
    "fp16": {"fp16": {"enabled": True}}, "bf16": {"bf16": {"enabled": True}},
    "bf16_fp32_grads": {"bf16": {"enabled": True}, "data_types": {"grad_accum_dtype": "fp32"}},
    "fp32": {},
}  # fmt: skip


def deepspeed_config(rec: Record, training: Mapping[str, Any],
                     layout: tuple[int, int, int, int], batch: tuple[int, int],
                     par: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The ``ds_config`` of a DeepSpeed record (deepspeed/runtime/config.py keys; the model is
    the scenario's model section, as ``simtrain import deepspeed --model`` takes it): the batch
    (train_batch_size = micro x accumulation x dp), the precision section, the ZeRO stage and
    AutoTP's tensor-parallel size. A layout a ds_config cannot hold (pipeline or context
    parallel) is an error (the record is skipped)."""
    tp, pp, dp, cp = layout
    if pp > 1 or cp > 1:
        raise ConfigError(rec.id, "parallelism", "a ds_config holds no pipeline or context "
                          "parallel layout (DeepSpeed's pipeline engine is the model code's)")  # fmt: skip
    B, b = batch
    cfg: dict[str, Any] = {"train_batch_size": B, "train_micro_batch_size_per_gpu": b,
                           "gradient_accumulation_steps": B // (b * dp),
                           **_DS_PRECISION.get(training["precision"], {}),
                           "zero_optimization": {"stage": int(par.get("zero_stage") or 0)}}  # fmt: skip
    if tp > 1:
        cfg["tensor_parallel"] = {"autotp_size": tp}
    if rec.training.get("optimizer") is not None:
        cfg["optimizer"] = {"type": "Adam" if training["optimizer"] == "adam" else "AdamW"}
    return cfg


@dataclass(frozen=True, slots=True)
class NativeConfig:
    """A record as its framework's configuration: what ``simtrain import KIND FILE --gpus N
    --set ...`` reads to give the record's scenario. ``config``: Megatron's flags (a tuple of
    words) or nanotron's config (a mapping); ``sets``: the ``--set`` overrides for what the
    configuration does not say."""

    kind: str
    config: Any
    gpus: int
    sets: tuple[str, ...]
    # deepspeed: the scenario's model section (a ds_config names no model; ``simtrain import
    # deepspeed`` takes it as --model, a config.json or preset, which a record's shape is not)
    model: dict[str, Any] | None = None

    def file_text(self) -> str:
        """The configuration as its framework's file: a line of flags (megatron), a YAML config
        (nanotron), a TOML job config (torchtitan)."""
        if isinstance(self.config, tuple):
            return " ".join(self.config) + "\n"
        if self.kind == "torchtitan":
            return "\n".join(_toml_tables(self.config, ""))
        if self.kind == "deepspeed":
            return json.dumps(self.config, indent=2)
        return yaml.safe_dump(self.config, sort_keys=False)

    def import_args(self, path: str) -> list[str]:
        """The ``simtrain`` arguments that import ``path`` (holding :meth:`file_text`) as the
        record's scenario."""
        return ["import", self.kind, path, "--gpus", str(self.gpus),
                *(w for s in self.sets for w in ("--set", s))]  # fmt: skip


def overlay(rec: Record, imp: Imported, profile: str, conv: SourceConvention,
            model: Mapping[str, Any], training: Mapping[str, Any],
            notes: list[str]) -> list[str]:  # fmt: skip
    """The ``--set`` overrides of what the framework's configuration does not say: the record
    id as the name, the hardware profile, the runtime of the framework the source ran (when not
    the importer's), the model keys and the precision no flag gives, and the source's loss kernel
    and layer split. The importer's readings and what it did not simulate go to ``notes``."""
    sets = _base_sets(rec, profile)
    have = imp.data["model"]
    sets += [f"model.{k}={json.dumps(v)}" for k, v in model.items() if k not in have]
    # a key the configuration already sets keeps the configuration's value (the framework's
    # model is what ran): a record that says otherwise is noted, not followed in silence (the
    # vocabulary a framework pads the importer notes itself)
    notes.extend(f"model.{k}: the record's {v!r} is not what the {imp.kind} configuration "
                 f"written for it builds ({have[k]!r}); simulated as the configuration's"
                 for k, v in model.items()
                 if k in have and have[k] != v and k not in ("name", "vocab"))  # fmt: skip
    if model.get("mlp") == "relu" and have.get("mlp") != "relu":  # no Megatron flag for it
        sets.append('model.mlp="relu"')
    t = imp.data["training"]
    # a ds_config holds no sequence length and never turns recompute on (the model code calls
    # deepspeed.checkpointing): the importer asks for both with --set
    said = ("seq_len", "recompute") if imp.kind == "deepspeed" else ()
    # a torchtitan job config says its loss (compile.components, loss parallel under TP)
    loss = () if imp.kind == "torchtitan" else ("cross_entropy",)
    for key in (*said, "precision", *loss):
        if t.get(key, "standard" if key == "cross_entropy" else None) != training[key]:
            sets.append(f"training.{key}={training[key]}")
    # no framework flag of ours says these: packed rows, the PEFT method
    if "packed_sample_len" in training:
        sets.append(f"training.packed_sample_len={training['packed_sample_len']}")
    for key, value in training.get("peft", {}).items():
        sets.append(f"training.peft.{key}={json.dumps(value)}")
    for key, default in STORAGE_DEFAULTS.items():  # (the convention's, over the importer's)
        if training.get(key, default) != t.get(key, default):
            sets.append(f"training.{key}={training[key]}")
    if conv.layer_split != "uniform" and imp.data["parallelism"].get("virtual_stages", 1) == 1:
        sets.append(f"parallelism.layer_split={json.dumps(conv.layer_split)}")
    name, why = runtime_for(rec)
    if why:
        notes.append(why)
    if imp.data["runtime"]["name"] != name:
        notes.append(f"runtime {name}: the framework the source ran "
                     f"({imp.data['runtime']['name']} flags)")  # fmt: skip
        sets.append(f"runtime.name={name}")
    if conv.runtime_overrides:  # as translate._runtime applies them off the importers' path
        sets += [f"runtime.{k}={json.dumps(v)}" for k, v in conv.runtime_overrides]
        keys = ", ".join(f"{k} {v}" for k, v in conv.runtime_overrides)
        notes.append(f"runtime {name}: {conv.runtime_overrides_note} ({keys})")
    _importer_notes(imp, notes)
    return sets


def _base_sets(rec: Record, profile: str) -> list[str]:
    """What no framework configuration says of a record: its id as the name, and its GPU's
    hardware profile."""
    return [f"name={json.dumps(rec.id)}", f"hardware={profile}"]


#: Megatron-Bridge's launcher for 4-GPU trays (GB200 / GB300) asks Slurm for segments of
#: ``segment`` nodes, each within one NVLink domain: all the nodes up to 18, else the largest
#: divisor of the node count up to 18 (NVIDIA-NeMo/Megatron-Bridge 00b7660b
#: scripts/performance/utils/executors.py l.113-121, "add --segment flag to sbatch if job uses
#: GB200"; ntasks_per_node = GPUs per node, 4 on these trays).
MBRIDGE_TRAY_GPUS = 4
MBRIDGE_MAX_SEGMENT = 18
#: GPUs of one HGX / DGX server (NVIDIA DGX H100 / B200 datasheets: 8 GPUs, hardware/
#: h100_sxm5_80gb.yaml and b200_180gb.yaml [dgx]); the profiles with more per node are NVLink
#: racks.
SERVER_GPUS = 8


#: Megatron-Bridge's performance configs that offload activations to the host
#: (NVIDIA-NeMo/Megatron-Bridge 00b7660b, the NeMo 25.11 records' commit:
#: scripts/performance/configs/llama/llama3_workload_base_configs.py l.35-112 and
#: llama31_workload_base_configs.py l.27-87, ``cpu_offloading_num_layers``; utils/overrides.py
#: _set_recompute_overrides turns on cpu_offloading, activations only): (model, system,
#: precision) -> layers, for the configs' own layout, Megatron FSDP without pipelining.
MBRIDGE_CPU_OFFLOAD_LAYERS: dict[tuple[str, str, str], int] = {
    ("LLAMA3_70B", "GB300", "BF16"): 30,
    ("LLAMA3_70B", "GB300", "FP8-CS"): 20,
    ("LLAMA3_70B", "GB200", "BF16"): 20,
    ("LLAMA3_70B", "GB200", "FP8-CS"): 40,
    ("LLAMA3_70B", "B200", "FP8-CS"): 5,
    ("LLAMA3.1_405B", "GB300", "BF16"): 40,
    ("LLAMA3.1_405B", "GB300", "FP8-CS"): 10,
    ("LLAMA3.1_405B", "GB200", "FP8-CS"): 92,
}


#: Megatron-Bridge's FP8 precision configs keep the weights in FP8 (src/megatron/bridge/
#: training/mixed_precision.py at 00b7660b: bf16_with_fp8_delayed_scaling_mixed l.218,
#: bf16_with_mxfp8_mixed l.251 and bf16_with_fp8_current_scaling_mixed l.289,
#: ``fp8_param_gather = True``; the performance scripts take them,
#: scripts/performance/utils/precision.py): spec.precision.FP8_PARAM_PRECISIONS, simulated where
#: the run is not FSDP (training.fp8_params has no ZeRO-3 model).


#: Megatron-Bridge performance configs that run the flex dispatcher with DeepEP, by (model,
#: system, pp, vp, ep): the B200 DeepSeek-V3 MXFP8 / NVFP4 configs at pp 8 x vp 2 with EP 32
#: over four nodes (src/megatron/bridge/perf_recipes/deepseek/b200/deepseek_v3.py l.124-188 at
#: 067f987d: moe_flex_dispatcher_backend = "deepep"), the 26.x rows' layout.
MBRIDGE_DEEPEP_LAYOUTS = {("DEEPSEEKV3", "B200", 8, 2, 32)}


_ROUTER = ("moe_router", "moe_preprocess")
_ATTN_ROUTER = ("attn", "moe_router", "moe_preprocess")
_WHOLE_STEP = ("full_iteration",)
_MBRIDGE_PRECISIONS = ("BF16", "FP8-CS", "FP8-MX", "NVFP4")

#: Megatron-Bridge's performance configs that capture CUDA graphs, by (model, system,
#: precision): Transformer Engine's per-layer graphs of the named scopes, or the local
#: implementation's whole iteration (``full_iteration``: the runtime's dispatch cuda_graphs).
#: NVIDIA-NeMo/Megatron-Bridge 00b7660b scripts/performance/configs/*/
#: *_workload_base_configs.py ``cuda_graph_impl`` / ``cuda_graph_scope``: qwen3 l.42-229,
#: deepseek l.27-57, gpt_oss l.33-38, llama3 l.57-211, llama31 l.57-110 (the configs of
#: every other row capture nothing; the 26.x releases are read with these, as their other
#: knobs; no B300 config at 00b7660b).
MBRIDGE_CUDA_GRAPHS: dict[tuple[str, str, str], tuple[str, ...]] = {
    **{("QWEN3_235B_A22B", "GB300", x): _ROUTER for x in _MBRIDGE_PRECISIONS[:3]},
    **{("QWEN3_235B_A22B", "GB200", x): _ATTN_ROUTER for x in _MBRIDGE_PRECISIONS[:3]},
    **{("QWEN3_30B_A3B", "GB300", x): _ROUTER for x in _MBRIDGE_PRECISIONS[:3]},
    ("QWEN3_30B_A3B", "GB200", "BF16"): _ATTN_ROUTER,
    ("QWEN3_30B_A3B", "GB200", "FP8-CS"): _ATTN_ROUTER,
    ("QWEN3_30B_A3B", "GB200", "FP8-MX"): _ROUTER,
    **{("QWEN3_30B_A3B", "B200", x): _ROUTER for x in _MBRIDGE_PRECISIONS[:3]},
    ("QWEN3_30B_A3B", "H100", "BF16"): _ROUTER,
    **{("DEEPSEEKV3", "GB300", x): _ATTN_ROUTER for x in _MBRIDGE_PRECISIONS},
    **{("DEEPSEEKV3", "GB200", x): _ROUTER for x in _MBRIDGE_PRECISIONS[:3]},
    ("GPT OSS 120B", "GB300", "BF16"): _ATTN_ROUTER,
    **{("LLAMA3_8B", s, x): _WHOLE_STEP for s in ("GB300", "GB200") for x in _MBRIDGE_PRECISIONS},
    **{("LLAMA3_8B", "B200", x): _WHOLE_STEP for x in _MBRIDGE_PRECISIONS[:3]},
    ("LLAMA3_70B", "GB300", "NVFP4"): _WHOLE_STEP,
    ("LLAMA3_70B", "GB200", "NVFP4"): _WHOLE_STEP,
    ("LLAMA3_70B", "B200", "BF16"): _WHOLE_STEP,
    ("LLAMA3.1_405B", "GB300", "NVFP4"): _WHOLE_STEP,
    ("LLAMA3.1_405B", "GB200", "NVFP4"): _WHOLE_STEP,
}  # fmt: skip


#: The first NeMo container whose Megatron-Bridge runs took their knobs from the per-GPU
#: performance recipes (src/megatron/bridge/perf_recipes, first at aad7d9ce2, 2026-06-25; read
#: at 067f987d, whose docs/performance-summary.md is the 26.08 table), not from
#: scripts/performance/configs (00b7660b), which validate reads for the releases before.
MBRIDGE_RECIPE_RELEASE = (26, 6)
#: The first NeMo container with Megatron-Bridge 0.3 (26.02; 0.3.1 26.02.01, 0.4.0 26.04:
#: docs/versions1.json at v0.4.2), whose configs validate reads for recompute modules
#: (:data:`MBRIDGE_RECOMPUTE_MODULES`), 26.04.01 included.
MBRIDGE_R03_RELEASE = (26, 2)

#: Megatron-Bridge's per-GPU recipes that pretrain an MoE model in MXFP8 with full-iteration
#: CUDA graphs and Megatron-Core's expert-parallel all-to-all overlap, by (model, system), from
#: :data:`MBRIDGE_RECIPE_RELEASE` on: perf_recipes/deepseek/common.py
#: _enable_deepseek_full_iteration_mxfp8 (l.49-77: cuda_graph_impl "full_iteration", scope [],
#: overlap_moe_expert_parallel_comm, delay_wgrad_compute), called by deepseek/gb300/
#: deepseek_v3.py l.157 and gb200/deepseek_v3.py l.160; qwen/common.py
#: _enable_hybridep_full_iteration_mxfp8 (l.22-46, the same knobs), called by qwen/{gb300,gb200,
#: b300}/qwen3_moe.py's 30B-A3B 8-GPU and 235B-A22B 256-GPU MXFP8 recipes; gpt_oss/common.py
#: _apply_gpt_oss_120b_full_iter_fp8mx_configs, called by gpt_oss/{gb300,gb200}/gpt_oss.py (all
#: at 067f987d; the B300 DeepSeek-V3 and GPT-OSS recipes keep Transformer Engine's per-layer
#: graphs; the recipes' HybridEP dispatcher, paged stash, FP8 attention and fused grouped MLP
#: are not simulated).
MBRIDGE_FULL_ITERATION_MOE = {
    ("DEEPSEEKV3", "GB300"), ("DEEPSEEKV3", "GB200"),
    ("QWEN3_30B_A3B", "GB300"), ("QWEN3_30B_A3B", "GB200"), ("QWEN3_30B_A3B", "B300"),
    ("QWEN3_235B_A22B", "GB300"), ("QWEN3_235B_A22B", "GB200"),
    ("GPT OSS 120B", "GB300"), ("GPT OSS 120B", "GB200"),
}  # fmt: skip


#: The per-layer CUDA graphs of the other per-GPU recipes (:data:`MBRIDGE_RECIPE_RELEASE` on) by
#: (model, system, precision): Transformer Engine's attn, moe_router and moe_preprocess scopes
#: in gpt_oss/b300/gpt_oss.py l.288-289 at 067f987d and in deepseek/b300/deepseek_v3.py before
#: ecfcd8460 (2026-07-23; l.153 _enable_deepseek_transformer_engine_graph: the version whose
#: micro-batch 2 and no virtual stages the 26.06 row ran). Every other recipe of these rows
#: captures nothing: Kimi K2 and Llama 3.1 405B keep cuda_graph_impl "none" (the NVFP4 ones'
#: full_iteration scope cleared by _benchmark_common, perf_recipes/_common.py l.83-84), and
#: Qwen3 30B on the H100 had none before b6f644609 (2026-08-06), after the 26.06 row it ran.
MBRIDGE_RECIPE_GRAPHS: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("DEEPSEEKV3", "B300", "FP8-MX"): _ATTN_ROUTER,
    ("GPT OSS 120B", "B300", "FP8-MX"): _ATTN_ROUTER,
}


#: Megatron-Bridge's DeepSeek-V3 and GPT-OSS runs recompute these modules selectively, by
#: (model, system, precision) in each era of its configs: ``"configs"`` 25.11,
#: scripts/performance/configs/*/*_workload_base_configs.py at 00b7660b (DeepSeek-V3 l.38, 55,
#: 70, 86, every precision of a system alike, deepseek_llm_pretrain.py l.48 setting the selective
#: granularity; GPT-OSS's name layernorm and moe_act but leave the granularity None there, so
#: Megatron recomputes nothing); ``"r0.3"`` from 26.02, the configs of Bridge 0.3.0 (26.02) and
#: 0.3.1 (26.02.01; docs/versions1.json at v0.4.2), read at v0.3.0 (d4ef39dfb) with the
#: launcher's default config variant V2 (argument_parser.py l.694-700): DeepSeek-V3's GB300
#: MXFP8 mla_up_proj (the pp 2 vp 8 ep 32 layout those rows ran), GPT-OSS's GB200, B200 and H100
#: BF16 layernorm and moe_act (utils/overrides.py l.143 now sets the selective granularity with
#: them). The 26.04 and 26.04.01 rows (Bridge 0.4.x, not read) take these too: their
#: DeepSeek-V3 GB300 layout is v0.3's. ``"recipes"`` from :data:`MBRIDGE_RECIPE_RELEASE`,
#: perf_recipes at 067f987d (deepseek/gb300/deepseek_v3.py l.148 [] for MXFP8, gb200 l.149 and
#: b300 before ecfcd8460 ["mla_up_proj"]; the GPT-OSS MXFP8 rows' none). "mlp" (H100) is not
#: simulated: the importer lists it.
_DSV3, _OSS = "DEEPSEEKV3", "GPT OSS 120B"
_OSS_MODULES = {(_OSS, s, "BF16"): ("layernorm", "moe_act") for s in ("GB200", "B200", "H100")}
MBRIDGE_RECOMPUTE_MODULES: dict[str, dict[tuple[str, str, str], tuple[str, ...]]] = {
    "configs": {
        **{(_DSV3, "GB300", x): ("moe_act",) for x in _MBRIDGE_PRECISIONS},
        **{(_DSV3, s, x): ("mla_up_proj",) for s in ("GB200", "B200") for x in _MBRIDGE_PRECISIONS},
        **{(_DSV3, "H100", x): ("mla_up_proj", "mlp") for x in _MBRIDGE_PRECISIONS},
    },
    "r0.3": {
        (_DSV3, "GB300", "BF16"): ("moe_act",),
        **{(_DSV3, "GB300", x): ("mla_up_proj",) for x in _MBRIDGE_PRECISIONS[1:]},
        **{(_DSV3, s, x): ("mla_up_proj",) for s in ("GB200", "B300", "B200") for x in _MBRIDGE_PRECISIONS},
        **{(_DSV3, "H100", x): ("mla_up_proj", "mlp") for x in _MBRIDGE_PRECISIONS},
        **_OSS_MODULES,
    },
    "recipes": {(_DSV3, "GB300", "FP8-MX"): (), (_DSV3, "GB200", "FP8-MX"): ("mla_up_proj",),
                (_DSV3, "B300", "FP8-MX"): ("mla_up_proj",)},
}  # fmt: skip


def mbridge_recompute_flags(rec: Record) -> list[str]:
    """Megatron's selective recompute flags of a Megatron-Bridge row's config or recipe
    (:data:`MBRIDGE_RECOMPUTE_MODULES`, by its release's era); [] for any other row (and for
    one that recomputes nothing)."""
    if rec.source_key != "megatron_bridge":
        return []
    prec = _mbridge_precision(rec)
    mods = MBRIDGE_RECOMPUTE_MODULES[mbridge_era(rec)].get((*_mbridge_row(rec), prec))
    if not mods:
        return []
    return ["--recompute-granularity", "selective", "--recompute-modules", *mods]


def mbridge_release(rec: Record) -> tuple[int, ...] | None:
    """The NeMo container a Megatron-Bridge row ran ("NeMo 26.06.01 container" in its source:
    (26, 6, 1)), None where the source names none."""
    m = re.search(r"NeMo (\d+(?:\.\d+)+) container", rec.source)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def mbridge_era(rec: Record) -> str:
    """The configs a Megatron-Bridge row ran, by its container: "recipes" from
    :data:`MBRIDGE_RECIPE_RELEASE`, "r0.3" from :data:`MBRIDGE_R03_RELEASE`, else "configs"
    (00b7660b's, 25.11; a row naming no container too)."""
    release = mbridge_release(rec) or ()
    if release >= MBRIDGE_RECIPE_RELEASE:
        return "recipes"
    return "r0.3" if release >= MBRIDGE_R03_RELEASE else "configs"


def _recipe_era(rec: Record) -> bool:
    """Whether a Megatron-Bridge row ran from the per-GPU recipes (:data:`MBRIDGE_RECIPE_RELEASE`)."""
    return mbridge_era(rec) == "recipes"


def mbridge_recipe_flags(rec: Record) -> list[str]:
    """Megatron flags of a Megatron-Bridge row's per-GPU recipe beyond its CUDA graphs: the
    expert-parallel all-to-all overlap of :data:`MBRIDGE_FULL_ITERATION_MOE` (Megatron-Core's
    combined 1F1B), [] for any other row."""
    if rec.source_key != "megatron_bridge" or not _recipe_era(rec):
        return []
    prec = _mbridge_precision(rec)
    if prec == "FP8-MX" and _mbridge_row(rec) in MBRIDGE_FULL_ITERATION_MOE:
        return ["--overlap-moe-expert-parallel-comm"]
    return []


def mbridge_cuda_graph_flags(rec: Record) -> list[str]:
    """Megatron's CUDA graph flags of a Megatron-Bridge row's performance config
    (:data:`MBRIDGE_CUDA_GRAPHS`; from :data:`MBRIDGE_RECIPE_RELEASE` on the per-GPU recipes:
    :data:`MBRIDGE_FULL_ITERATION_MOE`'s whole iteration, and nothing for the others, whose
    Llama 3.1 405B NVFP4 recipes set cuda_graph_impl "none", which _benchmark_common
    (perf_recipes/_common.py l.83-84 at 067f987d) makes clear the scope), which the importer
    reads (``runtime.cuda_graph_scope``, or ``dispatch: cuda_graphs`` for the whole iteration);
    [] for a config without."""
    if rec.source_key != "megatron_bridge":
        return []
    prec = _mbridge_precision(rec)
    if _recipe_era(rec):
        full = prec == "FP8-MX" and _mbridge_row(rec) in MBRIDGE_FULL_ITERATION_MOE
        scopes = _WHOLE_STEP if full else MBRIDGE_RECIPE_GRAPHS.get((*_mbridge_row(rec), prec))
    else:
        scopes = MBRIDGE_CUDA_GRAPHS.get((*_mbridge_row(rec), prec))
    if not scopes:
        return []
    impl = "local" if scopes == _WHOLE_STEP else "transformer_engine"
    return ["--cuda-graph-impl", impl, "--cuda-graph-scope", *scopes]


def _mbridge_row(rec: Record) -> tuple[str, str]:
    """(model, system) of a Megatron-Bridge row as its tables print them, upper case: the
    keys of the performance-config tables above."""
    return str(rec.model.get("name", "")).upper(), str(rec.hardware.get("gpu", "")).upper()


def _mbridge_precision(rec: Record) -> str:
    """A Megatron-Bridge row's precision as its tables print it ("FP8-MX (MXFP8)": "FP8-MX"),
    the third key of the tables above."""
    return str(rec.training.get("precision") or "").split(" ")[0].upper()


def mbridge_dispatcher_sets(rec: Record, pp: int, v: int, ep: int,
                            notes: list[str]) -> list[str]:  # fmt: skip
    """The runtime override of a Megatron-Bridge row whose performance config runs DeepEP
    (:data:`MBRIDGE_DEEPEP_LAYOUTS`, simtrain's ``moe_dispatcher: deepep``), else []."""
    if (rec.source_key != "megatron_bridge"
            or (*_mbridge_row(rec), pp, v, ep) not in MBRIDGE_DEEPEP_LAYOUTS):  # fmt: skip
        return []
    notes.append("moe_flex_dispatcher_backend deepep: Megatron-Bridge's B200 DeepSeek-V3 config "
                 "at pp 8 vp 2 ep 32 (perf_recipes/deepseek/b200/deepseek_v3.py l.124-188 at "
                 "067f987d)")  # fmt: skip
    return ["runtime.moe_dispatcher=deepep"]


def mbridge_offload_layers(rec: Record, zero: int, pp: int) -> int:
    """The layers a Megatron-Bridge record's performance config offloads
    (:data:`MBRIDGE_CPU_OFFLOAD_LAYERS`), 0 where it names none or the record's layout is not
    that config's (FSDP, pp 1)."""
    if rec.source_key != "megatron_bridge" or zero != 3 or pp != 1:
        return 0
    prec = _mbridge_precision(rec)
    return MBRIDGE_CPU_OFFLOAD_LAYERS.get((*_mbridge_row(rec), prec), 0)


def mbridge_nvlink_domain(gpus: int) -> int:
    """The GPUs of one NVLink domain a Megatron-Bridge job of ``gpus`` GPUs on 4-GPU trays
    runs in: 4 x its Slurm segment (256 GPUs: 64 nodes, segments of 16, domains of 64)."""
    nodes = -(-gpus // MBRIDGE_TRAY_GPUS)
    if nodes <= MBRIDGE_MAX_SEGMENT:
        return nodes * MBRIDGE_TRAY_GPUS
    segment = next(c for c in range(MBRIDGE_MAX_SEGMENT, 0, -1) if nodes % c == 0)
    return segment * MBRIDGE_TRAY_GPUS


def _cluster_sets(rec: Record, profile: str, gpus: int, notes: list[str]) -> list[str]:
    """A Megatron-Bridge record on a rack-scale NVLink profile (more GPUs per node than a tray
    holds: gb200_nvl72, gb300_nvl72) runs in NVLink domains of its Slurm segment
    (:func:`mbridge_nvlink_domain`), not of the profile's 72 GPUs; [] otherwise."""
    if rec.source_key != "megatron_bridge":
        return []
    per_node = load_hardware(profile).gpus_per_node
    domain = mbridge_nvlink_domain(gpus)
    rack = per_node > SERVER_GPUS  # an NVLink rack of trays (72), not one server's 8 GPUs
    if not rack or gpus <= domain or domain >= per_node or gpus % domain:
        return []
    notes.append(f"cluster: {gpus // domain} NVLink domains of {domain} GPUs, Megatron-Bridge's "
                 f"Slurm segments of {domain // MBRIDGE_TRAY_GPUS} four-GPU trays "
                 "(scripts/performance/utils/executors.py l.113-121 at 00b7660b)")  # fmt: skip
    return [f"cluster.nodes={gpus // domain}", f"cluster.gpus_per_node={domain}"]


def _importer_notes(imp: Imported, notes: list[str]) -> None:
    """The importer's readings and what it did not simulate, as the record's assumptions (a
    reading the source's convention already stated in the same words once)."""
    notes.extend(f"{imp.kind}: {a}" for a in imp.assumptions
                 if not a.startswith("hardware ") and a not in notes)  # fmt: skip
    notes.extend(f"{imp.kind}, not simulated: {u}" for u in imp.unsupported)


def _agree(rec: Record, imp: Imported, layout: tuple[int, int, int, int],
           batch: tuple[int, int]) -> None:  # fmt: skip
    """A record's own arguments are what ran; its sections only describe them: a layout or batch
    that differs is an error naming both (the GPU count is taken from the sections)."""
    par, t = imp.data["parallelism"], imp.data["training"]
    got = (par["tp"], par["pp"], par["dp"], par.get("cp", 1), t["global_batch"], t["micro_batch"])
    want = (*layout, *batch)
    if got != want:
        raise ConfigError(rec.id, "native.args", "its tp, pp, dp, cp, global and micro batch "
                          f"{got} differ from the record's sections {want}")  # fmt: skip


def _torchtitan_sets(rec: Record, imp: Imported, model: Mapping[str, Any],
                     notes: list[str]) -> list[str]:  # fmt: skip
    """What a torchtitan job config cannot say of a record: a model shape other than its llama3
    flavor's, the layer split of the torchtitan commit the record ran (splits.pipeline_split:
    9dec370a's generate_split_points for the 2024-12 benchmarks; the importer knows 4a950ea's),
    and that commit's K/V repeat before SDPA (runtime attention_repeat_kv)."""
    sets = [f"model.{k}={model[k]}" for k in _SHAPE_KEYS
            if k in model and imp.data["model"].get(k) != model[k]]  # fmt: skip
    par = imp.data["parallelism"]
    split = pipeline_split(rec, dict(par), int(model["layers"]), notes)
    if "layer_split" in split:
        sets.append(f"parallelism.layer_split={json.dumps(split['layer_split'])}")
    elif par.get("layer_split") not in (None, "uniform") and int(par["pp"]) > 1:
        sets.append("parallelism.layer_split=uniform")
    # Every benchmark record ran torchtitan before ff0829c1 ("GQA without kv repeats",
    # 2026-01-27), whose llama3 repeats K and V to every query head before SDPA (9dec370a
    # models/llama/model.py l.201-202; 820504e models/llama3/model.py l.250-251).
    sets.append("runtime.attention_repeat_kv=true")
    notes.append("torchtitan before ff0829c1: K and V repeated to every query head before SDPA "
                 "(llama3 repeat_kv)")  # fmt: skip
    # ... and before 25413d22 (2025-08-29), whose full checkpointing passes early_stop=False:
    # ptd_checkpoint_wrapper(module, preserve_rng_state=False) ran PyTorch's default early stop
    # (9dec370a parallelisms/parallelize_llama.py _apply_ac_to_transformer_block)
    if imp.data["training"].get("recompute") == "full":
        sets.append("runtime.recompute_early_stop=true")
        notes.append("torchtitan before 25413d22: its full checkpointing stops the recompute "
                     "early (PyTorch's default): the MLP's last linear is not replayed")  # fmt: skip
    return sets


def through_importer(rec: Record, conv: SourceConvention, profile: str, model: dict[str, Any],
                     training: dict[str, Any], layout: tuple[int, int, int, int],
                     batch: tuple[int, int], par: Mapping[str, Any],
                     notes: list[str]) -> tuple[dict[str, Any], NativeConfig]:  # fmt: skip
    """The scenario document of a record of an importer family and its native configuration:
    the configuration (:func:`megatron_flags`, :func:`nanotron_config`) through the importer
    ``simtrain import`` runs, with the overrides of :func:`overlay` applied as its ``--set``
    applies them."""
    kind = importer_of(rec)
    assert kind is not None
    tp, pp, dp, cp = layout
    gpus = tp * pp * dp * cp
    config: Any
    if rec.native:  # the run's own arguments: read as launched; only name and GPU laid over
        config = tuple(shlex.split(rec.native["args"]))
        imp = import_megatron_flags(list(config), gpus=gpus, file=rec.id)
        _agree(rec, imp, layout, batch)
        _importer_notes(imp, notes)
        sets = _base_sets(rec, profile)
        return with_overrides(imp, sets), NativeConfig(kind, config, gpus, tuple(sets))
    if kind == "megatron":
        config = tuple(megatron_flags(rec, conv, model, training, layout, batch, par))
        imp = import_megatron_flags(list(config), gpus=gpus, file=rec.id)
        # the launcher's flags megatron_flags wrote; those the record names are its own
        said = _record_text(rec)
        own = conv.lora_launch_flags if _is_lora(training) else None
        ours = conv.launch_flags if own is None else own
        launched = [f for f in config if f in ours and f not in said]
        if launched:
            notes.append(f"{' '.join(launched)}: {conv.launch_note}")
        elif _is_lora(training) and conv.lora_launch_flags is not None and conv.launch_flags:
            notes.append(conv.lora_launch_note)
        if ("--fp8-param-gather" in config and rec.source_key != "megatron_bridge"
                and conv.finetune_fp8_params):  # fmt: skip
            notes.append(f"--fp8-param-gather: {conv.finetune_fp8_params}")
        elif "--fp8-param-gather" in config:
            notes.append("--fp8-param-gather: Megatron-Bridge's FP8 precision configs keep the "
                         "weights in FP8 (training/mixed_precision.py fp8_param_gather = True, "
                         "l.251 / l.289 at 00b7660b)")  # fmt: skip
        if "--cpu-offloading-num-layers" in config:
            n = config[config.index("--cpu-offloading-num-layers") + 1]
            notes.append(f"--cpu-offloading-num-layers {n}: Megatron-Bridge's performance config "
                         "for this model, system and precision offloads that many layers' "
                         "activations (scripts/performance/configs/llama/*_workload_base_"
                         "configs.py cpu_offloading_num_layers at 00b7660b)")  # fmt: skip
        graphs = mbridge_cuda_graph_flags(rec)
        if graphs and _recipe_era(rec):
            notes.append(f"{' '.join(graphs)}: Megatron-Bridge's per-GPU performance recipe "
                         "for this model, system and precision captures CUDA graphs "
                         "(src/megatron/bridge/perf_recipes at 067f987d)")  # fmt: skip
        elif graphs:
            notes.append(f"{' '.join(graphs)}: Megatron-Bridge's performance config for this "
                         "model, system and precision captures CUDA graphs (scripts/performance/"
                         "configs/*/*_workload_base_configs.py cuda_graph_impl / "
                         "cuda_graph_scope at 00b7660b)")  # fmt: skip
        if mbridge_recipe_flags(rec):
            notes.append("--overlap-moe-expert-parallel-comm: the recipe's full-iteration "
                         "helper overlaps the expert all-to-alls (perf_recipes/{deepseek,qwen,"
                         "gpt_oss}/common.py overlap_moe_expert_parallel_comm at 067f987d; its "
                         "HybridEP dispatcher, paged stash, delayed wgrad, FP8 attention and "
                         "fused grouped MLP not simulated)")  # fmt: skip
        elif graphs == [] and _recipe_era(rec):
            notes.append(
                "no CUDA graphs: Megatron-Bridge's per-GPU recipe for this model, "
                "system and precision captures none (perf_recipes at 067f987d)"
            )
    elif kind == "nanotron":
        config = nanotron_config(rec, model, training, layout, batch, par)
        imp = import_nanotron_config(config, gpus=gpus, file=rec.id)
    elif kind == "torchtitan":
        config = torchtitan_config(rec, conv, model, training, layout, batch, par)
        imp = import_torchtitan_config(config, gpus=gpus, file=rec.id)
    else:
        config = deepspeed_config(rec, training, layout, batch, par)
        imp = import_deepspeed_config(config, dict(model), gpus=gpus, file=rec.id)
    sets = overlay(rec, imp, profile, conv, model, training, notes)
    sets += _cluster_sets(rec, profile, gpus, notes)
    ep = record_int(par.get("ep")) or 1  # (experts laid over by overlay; their grid here;
    # translate._layout checked it is an integer >= 1)
    if ep > 1 and int(imp.data["parallelism"].get("ep") or 1) != ep:
        sets.append(f"parallelism.ep={ep}")
    v = record_int(par.get("virtual_stages")) or 1
    sets += mbridge_dispatcher_sets(rec, pp, v, ep, notes)
    if ep > 1 and tp > 1 and rec.source_key == "megatron_bridge":
        # every MoE performance config sets expert_tensor_parallel_size=1 (scripts/performance/
        # configs/{deepseek,gpt_oss,qwen}/*_workload_base_configs.py at 00b7660b)
        sets.append("parallelism.expert_tp=1")
        notes.append("expert_tensor_parallel_size 1: Megatron-Bridge's MoE performance configs "
                     "(scripts/performance/configs/*/*_workload_base_configs.py at 00b7660b): "
                     "whole experts, the EP group folded over tp x dp")  # fmt: skip
    if kind == "torchtitan":
        sets += _torchtitan_sets(rec, imp, model, notes)
    native = NativeConfig(kind, config, gpus, tuple(sets),
                          dict(model) if kind == "deepspeed" else None)  # fmt: skip
    return with_overrides(imp, sets), native
