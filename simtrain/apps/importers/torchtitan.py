"""torchtitan: a job config TOML (``torchtitan/models/llama3/train_configs/*.toml``) -> a scenario.

Keys, defaults and model flavors as torchtitan defines them at
pytorch/torchtitan 4a950eaabff274567873322c206ddb481dae3567 (the last commit with TOML configs;
later ones moved to Python config registries): ``torchtitan/config/job_config.py`` (defaults),
``torchtitan/models/llama3/__init__.py`` (flavors), ``models/llama3/model/model.py`` FeedForward
(hidden = 4·dim, then int(2/3·hidden), int(ffn_dim_multiplier·hidden), rounded up to
multiple_of), ``models/llama3/infra/parallelize.py`` l.319-327 (``fsdp_reshard_after_forward``
"default": reshard unless pipeline parallel), ``distributed/pipeline_parallel.py`` l.59-115
(looped schedules: 2 stages per rank unless ``pipeline_parallel_layers_per_stage``), and
``run_train.sh`` (``NGPU`` defaults to 8).

Mixed precision under FSDP2 (``mixed_precision_param = "bfloat16"``, the default): fp32 sharded
parameters, bf16 compute, fp32 gradient reduction: simtrain's ``bf16`` (16 bytes of model state
per parameter with AdamW, as 4 + 4 + 8) under the torchtitan runtime (``grad_reduce_dtype: fp32``).
``training.dtype = "bfloat16"`` keeps everything in bf16: ``bf16_pure``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simtrain.apps.importers.common import (
    Imported,
    Reading,
    as_bool,
    whole_number,
    world_and_dp,
)
from simtrain.errors import ConfigError
from simtrain.layout.partition import torchtitan_split
from simtrain.schedules.generators import torch_group_override
from simtrain.spec.limits import INT_RANGES, MAX_GPUS
from simtrain.spec.yamlfile import read_text_file


def _stage_split(r: Reading, par: dict[str, Any], layers: int, stages: int, first: int,
                 last: int) -> None:  # fmt: skip
    """torchtitan's layers per stage (``layout.partition.torchtitan_split``) as an explicit
    ``layer_split`` where it is not the even split; a stage left without a decoder layer (the
    embedding or the output alone) is not expressible."""
    counts = torchtitan_split(layers, stages, first, last)
    if counts == [layers // stages] * stages:
        return
    if min(counts) < 1:
        r.unsupported_("pipeline_parallel_first/last_stage_less_layers", f"({first}, {last}) "
                       f"leave a stage without a decoder layer: simulated as an even split")  # fmt: skip
        return
    par["layer_split"] = counts
    r.assume(f"pipeline stages: torchtitan's split, the embedding weighing {first} and the output "
             f"{last} layer(s) (generate_llm_fqn_per_model_part): {counts}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Flavor:
    """torchtitan TransformerModelArgs (models/llama3/model/args.py defaults: n_kv_heads None =
    n_heads, vocab_size 128256, multiple_of 256, ffn_dim_multiplier None)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    vocab_size: int = 128256
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None

    def ffn_hidden(self) -> int:
        """models/llama3/model/model.py FeedForward.__init__ (hidden_dim = 4·dim)."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


#: models/llama3/__init__.py llama3_args at 4a950ea (the _flex / _varlen flavors have the same
#: shape with another attention kernel).
LLAMA3_FLAVORS = {
    "debugmodel": Flavor(256, 6, 16, vocab_size=2048),
    "8B": Flavor(4096, 32, 32, 8, ffn_dim_multiplier=1.3, multiple_of=1024),
    "70B": Flavor(8192, 80, 64, 8, ffn_dim_multiplier=1.3, multiple_of=4096),
    "405B": Flavor(16384, 126, 128, 8, ffn_dim_multiplier=1.2, multiple_of=4096),
}
#: run_train.sh: NGPU=${NGPU:-"8"}.
DEFAULT_NGPU = 8
#: Sections without effect on one simulated step.
NO_EFFECT_SECTIONS = ("job", "profiling", "metrics", "lr_scheduler", "checkpoint", "comm",
                      "validation", "memory_estimation", "fault_tolerance", "experimental",
                      "debug")  # fmt: skip
SCHEDULES = {"1F1B": "1f1b", "GPipe": "gpipe", "Interleaved1F1B": "interleaved",
             "ZBVZeroBubble": "zb_v", "DualPipeV": "dualpipe_v"}  # fmt: skip
#: V-shaped schedules: two stages per rank, the second coming back (torchtitan asserts it)
V_SCHEDULES = ("ZBVZeroBubble", "DualPipeV")
LOOPED = ("Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")
KNOWN = {
    "model": ("name", "flavor", "hf_assets_path", "tokenizer_path", "converters",
              "print_after_conversion"),
    "optimizer": ("name", "lr", "eps", "weight_decay", "implementation", "early_step_in_backward",
                  "beta1", "beta2"),
    "training": ("local_batch_size", "batch_size", "global_batch_size", "seq_len", "dtype",
                 "mixed_precision_param", "mixed_precision_reduce", "enable_cpu_offload", "steps",
                 "max_norm", "dataset", "dataset_path", "gc_freq", "gc_debug", "dataloader",
                 "warmup_steps", "deterministic", "seed"),
    "parallelism": ("data_parallel_replicate_degree", "data_parallel_shard_degree",
                    "fsdp_reshard_after_forward", "tensor_parallel_degree",
                    "disable_loss_parallel", "enable_async_tensor_parallel",
                    "pipeline_parallel_degree", "pipeline_parallel_schedule",
                    "pipeline_parallel_microbatch_size", "pipeline_parallel_layers_per_stage",
                    "pipeline_parallel_first_stage_less_layers",
                    "pipeline_parallel_last_stage_less_layers", "context_parallel_degree",
                    "expert_parallel_degree", "expert_tensor_parallel_degree"),
    "activation_checkpoint": ("mode", "selective_ac_option", "preserve_rng_state",
                              "determinism_check", "debug", "early_stop", "memory_budget",
                              "per_op_sac_force_recompute_mm_shapes_by_fqns"),
    "compile": ("enable", "components", "backend"),
}  # fmt: skip
NO_EFFECT_KEYS = {
    "model": ("hf_assets_path", "tokenizer_path", "print_after_conversion"),
    "optimizer": ("lr", "eps", "weight_decay", "implementation", "beta1", "beta2"),
    "training": ("steps", "max_norm", "dataset", "dataset_path", "gc_freq", "gc_debug",
                 "dataloader", "warmup_steps", "deterministic", "seed", "mixed_precision_reduce"),
    "activation_checkpoint": ("preserve_rng_state", "determinism_check", "debug"),
    "compile": ("backend",),
}  # fmt: skip


#: The largest value of an integer key (the scenario's ranges, spec.limits): the parallel
#: degrees at most the GPU limit, sizes at most the training ranges, layer counts the layers'.
INT_LIMIT = MAX_GPUS
LAYER_LIMIT = INT_RANGES["model.layers"][1]


def _int(sec: dict[str, Any], key: str, default: int, file: str, where: str,
         lo: int | None = None, hi: int = INT_LIMIT) -> int:  # fmt: skip
    """An integer key (``lo``: its least value, where it has one; common.whole_number): a
    string, a fraction or a number past its range is an error naming the key."""
    return whole_number(sec.get(key, default), file, f"{where}.{key}",
                        -hi if lo is None else lo, hi)  # fmt: skip


def _str(sec: dict[str, Any], key: str, default: str, file: str, where: str) -> str:
    """A string key (a name or a policy): a number, a list or a table is an error naming it."""
    v = sec.get(key, default)
    if not isinstance(v, str):
        raise ConfigError(file, f"{where}.{key}", "must be a string", v)
    return v


def _flag(sec: dict[str, Any], key: str, file: str, where: str) -> bool:
    """A boolean key (default false)."""
    return as_bool(sec.get(key, False), file, f"{where}.{key}")


def import_torchtitan(path: str | Path, gpus: int | None = None) -> Imported:
    """A torchtitan job config (TOML) as a scenario document."""
    file = str(path)
    text = read_text_file(path)
    try:
        cfg = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
        # (tomllib recurses into nested arrays and inline tables, and int() refuses a number
        # of more than 4,300 digits: neither is a TOMLDecodeError)
        what = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise ConfigError(
            file, "<file>", f"not a torchtitan job config: not TOML ({what})"
        ) from None
    return import_torchtitan_config(cfg, gpus, file)


def import_torchtitan_config(cfg: Any, gpus: int | None = None,
                             file: str = "<config>") -> Imported:  # fmt: skip
    """A parsed torchtitan job config (the TOML's tables) as a scenario document: the one
    reading of torchtitan's keys, for ``simtrain import torchtitan`` and for ``simtrain
    validate``'s torchtitan records (apps.validate.native)."""
    if not isinstance(cfg, dict) or not any(k in cfg for k in ("model", "training",
                                                               "parallelism")):  # fmt: skip
        raise ConfigError(file, "<file>", "not a torchtitan job config: no [model], [training] "
                          "or [parallelism] table")  # fmt: skip
    r = Reading("torchtitan", file)
    sec: dict[str, dict[str, Any]] = {}
    for k, v in cfg.items():
        if k in KNOWN:
            if not isinstance(v, dict):
                raise ConfigError(file, k, "must be a table", v)
            sec[k] = v
            for key in v:
                if key not in KNOWN[k]:
                    r.unsupported_(f"{k}.{key}", "not a key this importer knows")
                elif key in NO_EFFECT_KEYS.get(k, ()):
                    r.ignore(f"{k}.{key}")
        elif k in NO_EFFECT_SECTIONS:
            r.ignore(f"[{k}]")
        elif k in ("float8", "quantize", "mx"):
            pass  # read with model.converters below
        else:
            r.unsupported_(f"[{k}]", "not a table this importer knows")
    m, t, p = sec.get("model", {}), sec.get("training", {}), sec.get("parallelism", {})
    ac, cmp, opt = (
        sec.get("activation_checkpoint", {}),
        sec.get("compile", {}),
        sec.get("optimizer", {}),
    )

    # ---- model
    name, flavor = m.get("name", "llama3"), str(m.get("flavor", "debugmodel"))
    if name != "llama3":
        raise ConfigError(file, "model.name", "not a model this importer knows (torchtitan's "
                          "dense Llama 3)", name, "llama3")  # fmt: skip
    base = flavor.removesuffix("_flex").removesuffix("_varlen")
    if base not in LLAMA3_FLAVORS:
        raise ConfigError(file, "model.flavor", "unknown llama3 flavor", flavor,
                          ", ".join(LLAMA3_FLAVORS))  # fmt: skip
    fl = LLAMA3_FLAVORS[base]
    seq = _int(t, "seq_len", 2048, file, "training", 1, INT_RANGES["training.seq_len"][1])
    r.origin("training.seq_len", "training.seq_len")
    model = {
        "name": f"torchtitan llama3 {flavor}", "layers": fl.n_layers, "hidden": fl.dim,
        "heads": fl.n_heads, "kv_heads": fl.n_kv_heads or fl.n_heads, "ffn_hidden": fl.ffn_hidden(),
        "vocab": fl.vocab_size, "max_positions": seq, "mlp": "swiglu", "positions": "rotary",
        "bias": False, "norm": "rmsnorm", "tied_embeddings": False, "dropout": 0.0,
        "flash_attention": True,
    }  # fmt: skip
    r.assume(f"model: torchtitan llama3 {flavor} (models/llama3/__init__.py): {fl.n_layers} "
             f"layers, dim {fl.dim}, FFN {fl.ffn_hidden()}, vocab {fl.vocab_size:,}; SDPA "
             "(flash) attention")  # fmt: skip
    converters = m.get("converters", [])
    if not isinstance(converters, list) or not all(isinstance(c, str) for c in converters):
        raise ConfigError(file, "model.converters", "must be a list of strings", converters,
                          '[] | ["quantize.linear.float8"] | ["float8"]')  # fmt: skip
    low = [c for c in converters if "float8" in c or "mx" in c]
    float8 = _float8(cfg, low, r)
    for k in ("float8", "quantize", "mx"):
        if k in cfg:
            r.ignore(f"[{k}]" + ("" if low else " (no converter enables it)"))
    other = [c for c in converters if c not in low]
    if other:
        r.unsupported_(f"model.converters {other}", "not simulated")

    # ---- layout
    rep = _int(p, "data_parallel_replicate_degree", 1, file, "parallelism")
    shard = _int(p, "data_parallel_shard_degree", -1, file, "parallelism")
    tp = _int(p, "tensor_parallel_degree", 1, file, "parallelism")
    pp = _int(p, "pipeline_parallel_degree", 1, file, "parallelism")
    cp = _int(p, "context_parallel_degree", 1, file, "parallelism")
    for k, v in (("data_parallel_replicate_degree", rep), ("tensor_parallel_degree", tp),
                 ("pipeline_parallel_degree", pp), ("context_parallel_degree", cp)):  # fmt: skip
        if v < 1:
            raise ConfigError(file, f"parallelism.{k}", "must be positive", v)
    if shard == 0 or shard < -1:
        raise ConfigError(file, "parallelism.data_parallel_shard_degree", "must be -1 or positive",
                          shard)  # fmt: skip
    r.origin("parallelism.tp", "parallelism.tensor_parallel_degree")
    r.origin("parallelism.pp", "parallelism.pipeline_parallel_degree")
    if cp > 1:
        r.origin("parallelism.cp", "parallelism.context_parallel_degree")
    for k in ("expert_parallel_degree", "expert_tensor_parallel_degree"):
        if p.get(k, 1) != 1:
            r.ignore(f"parallelism.{k} (no effect on a dense model)")
        elif k in p:
            r.ignore(f"parallelism.{k}")
    if gpus is None:
        if shard == -1:
            gpus = DEFAULT_NGPU
            r.assume(f"GPUs: {DEFAULT_NGPU} (run_train.sh's NGPU default); change with --gpus")
        else:
            gpus = rep * shard * tp * pp * cp
            r.assume(f"GPUs: {gpus} = the product of the parallel degrees")
    dp = world_and_dp(r, gpus, "--gpus", gpus, tp * pp * cp,
                      "tensor x pipeline x context parallel degrees")  # fmt: skip
    if shard == -1:
        if dp % rep:
            raise ConfigError(file, "parallelism.data_parallel_replicate_degree", f"must divide "
                              f"the data-parallel GPUs ({dp})", rep)  # fmt: skip
        shard = dp // rep
    elif rep * shard != dp:
        raise ConfigError(file, "parallelism.data_parallel_shard_degree", f"replicate x shard = "
                          f"{rep} x {shard} but the GPUs leave {dp} for data parallel", shard)  # fmt: skip
    zero = 0
    # FSDP2 wraps the model whenever dp_shard or cp > 1, over the dp_shard x cp mesh
    # (parallelize.py: "apply FSDP or HSDP, potentially with Context Parallel", dp_shard_cp)
    if shard > 1 or cp > 1:
        policy = p.get("fsdp_reshard_after_forward", "default")
        reshard = {"always": True, "never": False, "default": pp == 1}.get(policy) if isinstance(
            policy, str) else None  # fmt: skip
        if reshard is None:
            raise ConfigError(file, "parallelism.fsdp_reshard_after_forward", "unknown value",
                              policy, "default | always | never")  # fmt: skip
        zero = 3 if reshard else 2
        r.assume(f"FSDP2 over dp_shard x cp = {shard * cp} GPUs, reshard after forward "
                 f"{str(reshard).lower()} (fsdp_reshard_after_forward {policy}): ZeRO-{zero}")  # fmt: skip
    par: dict[str, Any] = {"dp": dp, "tp": tp, "pp": pp, "schedule": "1f1b", "virtual_stages": 1,
                           "zero_stage": zero, "sequence_parallel": tp > 1}  # fmt: skip
    if rep > 1 and zero:
        # HSDP: FSDP2 over the (dp_replicate, dp_shard_cp) mesh shards within each replica
        # (parallelize.py apply_fsdp's dp_mesh; fully_shard with a 2-D mesh: HYBRID_SHARD)
        par["zero_replicas"] = rep
        r.origin("parallelism.zero_replicas", "parallelism.data_parallel_replicate_degree")
        r.assume(f"HSDP: FSDP2 shards within groups of dp_shard x cp = {shard * cp} GPUs, "
                 f"{rep} replicas (gradients reduce-scattered within a group, all-reduced "
                 "across)")  # fmt: skip
    elif rep > 1:
        r.assume(f"data_parallel_replicate_degree {rep} with nothing sharded: DDP over {dp}")
    if cp > 1:  # PyTorch context_parallel: ring attention; FSDP shards over dp_shard x cp
        par["cp"] = cp
    if tp > 1:
        r.assume("tensor parallel: sequence parallel on (torchtitan's parallelize_llama applies "
                 "SequenceParallel to the norms)")  # fmt: skip
    runtime: dict[str, Any] = {"name": "torchtitan"}
    compile_on = _flag(cmp, "enable", file, "compile")
    if _flag(p, "enable_async_tensor_parallel", file, "parallelism"):
        if tp > 1 and compile_on:
            runtime["tp_comm_overlap"] = True
        else:
            r.ignore("parallelism.enable_async_tensor_parallel (needs compile and tp > 1)")
    # compile.components (4a950ea config/job_config.py Compile: default ["model", "loss"]): a
    # compiled loss (components/loss.py build_cross_entropy_loss) is inductor's fused
    # cross-entropy: the bf16 logits and a log-sum-exp per row saved, the fp32 upcast and
    # log-softmax never materialised (simtrain's cross_entropy fused)
    components = cmp.get("components", ["model", "loss"])
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise ConfigError(file, "compile.components", "must be a list of strings", components,
                          '["model", "loss"]')  # fmt: skip
    compiled_loss = compile_on and "loss" in components
    if compile_on and "model" in components:
        # inductor fuses the blocks' element-wise chains (runtimes/torchtitan.yaml [eag])
        runtime["eager_elementwise"] = False
    if compile_on:
        r.unsupported_("compile.enable", "torch.compile's other fusions and graph effects are "
                       "not simulated" + ("; its blocks' element-wise ops fused (runtime "
                       "eager_elementwise false)" if "model" in components else "")
                       + ("; its compiled loss is (cross_entropy fused)" if compiled_loss else ""))  # fmt: skip
    elif "enable" in cmp:
        r.ignore("compile.enable false")
    if "components" in cmp and not compile_on:
        r.ignore("compile.components (compile off)")

    # ---- batch and pipeline
    batch_limit = INT_RANGES["training.global_batch"][1]
    local = _int(t, "local_batch_size", _int(t, "batch_size", 8, file, "training", 1,
                                             batch_limit), file, "training", 1, batch_limit)  # fmt: skip
    gb = _int(t, "global_batch_size", -1, file, "training", -1, batch_limit)
    if gb == 0 or gb < -1:
        raise ConfigError(file, "training.global_batch_size", "must be -1 (local_batch_size x "
                          "data-parallel degree) or positive", gb)  # fmt: skip
    gb = local * dp if gb == -1 else gb
    r.origin("training.global_batch", "training.global_batch_size")
    micro = local
    r.origin("training.micro_batch", "training.local_batch_size")
    if pp > 1:
        micro = _int(p, "pipeline_parallel_microbatch_size", 1, file, "parallelism", 1,
                     INT_RANGES["training.micro_batch"][1])  # fmt: skip
        r.origins["training.micro_batch"] = "parallelism.pipeline_parallel_microbatch_size"
        sched = _str(p, "pipeline_parallel_schedule", "1F1B", file, "parallelism")
        if sched in SCHEDULES:
            par["schedule"] = SCHEDULES[sched]
        else:
            r.unsupported_(f"parallelism.pipeline_parallel_schedule {sched}", "simulated as 1F1B")
        if sched in LOOPED and sched in SCHEDULES:
            first, last = _less_layers(p, file)
            stages = _pipeline_stages(p, file, fl.n_layers, first, last, pp, 2)
            if sched in V_SCHEDULES and stages != 2 * pp:
                raise ConfigError(file, "parallelism.pipeline_parallel_layers_per_stage",
                                  f"{sched} runs exactly 2 stages per rank (a V): "
                                  f"{stages} stages over pp {pp}")  # fmt: skip
            par["virtual_stages"] = stages // pp
            _stage_split(r, par, fl.n_layers, stages, first, last)
            if sched == "Interleaved1F1B" and stages > pp:
                _torch_rounds(r, par, file, local // micro, pp)
        else:
            first, last = _less_layers(p, file)
            if sched not in LOOPED:
                _pipeline_stages(p, file, fl.n_layers, first, last, pp, 1)
            if (first, last) == (1, 1):
                par["layer_split"] = "embedding_as_layer"
                r.assume("pipeline stages: the first and last hold one layer less "
                         "(pipeline_parallel_first/last_stage_less_layers 1): embedding_as_layer")  # fmt: skip
            else:
                _stage_split(r, par, fl.n_layers, pp, first, last)
    else:
        for k in ("pipeline_parallel_schedule", "pipeline_parallel_microbatch_size",
                  "pipeline_parallel_layers_per_stage", "pipeline_parallel_first_stage_less_layers",
                  "pipeline_parallel_last_stage_less_layers"):  # fmt: skip
            if k in p:
                r.ignore(f"parallelism.{k} (pp 1)")

    # ---- precision, optimizer, recompute
    dtype = t.get("dtype", "float32")
    mp = t.get("mixed_precision_param", "bfloat16")
    if dtype == "bfloat16":
        precision = "bf16_pure"
        r.assume("training.dtype bfloat16: parameters, gradients and optimizer states in bf16")
    elif dtype != "float32":
        raise ConfigError(file, "training.dtype", "unknown value", dtype, "float32 | bfloat16")
    elif mp == "float32":
        precision = "fp32"
    elif mp == "bfloat16" and not zero and (tp > 1 or pp > 1):
        # distributed/utils.py maybe_enable_amp (4a950ea l.243-256): without FSDP (dp_shard and
        # cp 1) "Mixed precision training with TP or PP is only supported when FSDP/HSDP/CP is
        # enabled" -- "Mixed precision training is disabled": the step runs in fp32
        precision = "fp32"
        r.assume("mixed_precision_param bfloat16 with TP or PP and no FSDP: torchtitan disables "
                 "mixed precision (distributed/utils.py maybe_enable_amp): fp32")  # fmt: skip
    elif mp == "bfloat16":
        precision = "bf16" if zero else "amp_bf16"
        r.assume("mixed_precision_param bfloat16: " + ("FSDP2 mixed precision over fp32 sharded "
                 "parameters (bf16)" if zero else "torch.autocast under DDP (amp_bf16)"))  # fmt: skip
    else:
        raise ConfigError(file, "training.mixed_precision_param", "unknown value", mp,
                          "bfloat16 | float32")  # fmt: skip
    if float8 and precision in ("bf16", "amp_bf16", "bf16_pure"):
        precision = float8
    elif float8:
        r.unsupported_("model.converters float8", f"float8 linears on {precision} are not a "
                       f"simtrain precision: simulated in {precision}")  # fmt: skip
    cpu_offload = _flag(t, "enable_cpu_offload", file, "training")
    if cpu_offload:
        r.unsupported_("training.enable_cpu_offload", "FSDP2 CPU offload of parameters, "
                       "gradients and optimizer states: simulated as optimizer offload")  # fmt: skip
    optname = _str(opt, "name", "AdamW", file, "optimizer")
    optimizer = {"AdamW": "adamw", "Adam": "adam"}.get(optname)
    if optimizer is None:
        optimizer = "adamw"
        r.unsupported_(f"optimizer.name {optname}", "simulated as AdamW")
    if _flag(opt, "early_step_in_backward", file, "optimizer"):
        r.unsupported_("optimizer.early_step_in_backward", "not simulated")
    training: dict[str, Any] = {"seq_len": seq, "global_batch": gb, "micro_batch": micro,
                                "precision": precision, "optimizer": optimizer,
                                "recompute": _recompute(ac, r)}  # fmt: skip
    # activation_checkpoint.early_stop (25413d22 .. 9810191b's TOML, default false; earlier
    # torchtitan ran PyTorch's default, true): the full recompute stops at the block's last
    # saved tensor; so does a compiled model's, whose partitioner recomputes only what the
    # backward reads (costs.compute.recompute_stops_early)
    early_stop = _flag(ac, "early_stop", file, "activation_checkpoint")
    if training["recompute"] == "full" and (early_stop or (compile_on and "model" in components)):
        runtime["recompute_early_stop"] = True
        r.origin("runtime.recompute_early_stop", "activation_checkpoint.early_stop" if early_stop
                 else "compile.enable")  # fmt: skip
    elif "early_stop" in ac and training["recompute"] != "full":  # (full: it decided false)
        r.ignore(f"activation_checkpoint.early_stop (recompute {training['recompute']})")
    if compiled_loss:
        training["cross_entropy"] = "fused"
    elif tp > 1 and not _flag(p, "disable_loss_parallel", file, "parallelism"):
        # train.py's train_context enables loss_parallel over the vocabulary-sharded output
        # (parallelize.py: the output ColwiseParallel with Shard(-1) under loss parallel)
        training["cross_entropy"] = "loss_parallel"
        r.assume("tensor parallel: loss parallel (parallelism.disable_loss_parallel false): "
                 "PyTorch's loss_parallel cross-entropy over the vocabulary shard")  # fmt: skip
    elif tp > 1:
        # parallelize.py: without loss parallel the output layer's ColwiseParallel returns
        # Replicate(): every TP rank holds the whole vocabulary's logits and their loss
        training["cross_entropy"] = "gathered"
        r.assume("tensor parallel without loss parallel: the logits gathered to the whole "
                 "vocabulary on every TP rank (the output layer's Replicate output)")  # fmt: skip
    if cpu_offload:
        training["offload"] = {"optimizer": True}
    return r.scenario(
        f"Imported from a torchtitan job config ({Path(file).name})",
        "a torchtitan config names no GPU",
        model,
        runtime,
        training,
        par,
    )


#: torchtitan's [float8] recipe_name (config/job_config.py Float8: tensorwise | rowwise |
#: rowwise_with_gw_hp, None = tensorwise dynamic scaling) -> simtrain precision (torchao
#: float8 linears on bf16: spec/precision.py).
FLOAT8_RECIPES = {"tensorwise": "fp8_tensorwise", "rowwise": "fp8_rowwise"}


#: The float8 converter's name: ``quantize.linear.float8`` at 4a950ea, ``float8`` before (its
#: table ``[float8]``, as at 9dec370a).
FLOAT8_CONVERTERS = ("quantize.linear.float8", "float8")


def _float8(cfg: dict[str, Any], low: list[str], r: Reading) -> str:
    """The FP8 precision of ``model.converters = ["quantize.linear.float8"]`` (or ``["float8"]``)
    with that table's ``recipe_name`` ("" when no float8 converter); MX converters and the
    rowwise_with_gw_hp recipe are listed as not simulated."""
    if not low:
        return ""
    if [c for c in low if c not in FLOAT8_CONVERTERS]:
        r.unsupported_(f"model.converters {low}", "MX linears are not simulated: simulated in "
                       "16 bits")  # fmt: skip
        return ""
    sec: Any = cfg
    for k in ("quantize", "linear", "float8") if low[0] == FLOAT8_CONVERTERS[0] else ("float8",):
        sec = sec.get(k) if isinstance(sec, dict) else None
    recipe = sec.get("recipe_name") if isinstance(sec, dict) else None
    name = FLOAT8_RECIPES.get(str(recipe or "tensorwise"))
    if name is None:
        r.unsupported_(f"float8.recipe_name {recipe}", f"not simulated (float8 recipes: "
                       f"{' | '.join(FLOAT8_RECIPES)}): simulated in 16 bits")  # fmt: skip
        return ""
    r.origin("training.precision", "model.converters")
    r.assume(f"model.converters float8, recipe {recipe or 'tensorwise (the default)'}: {name} "
             "(torchao float8 linears on bf16)")  # fmt: skip
    if isinstance(sec, dict) and sec.get("enable_fsdp_float8_all_gather") is True:
        # torchao: FSDP2 all-gathers the float8 weights (half of bf16's bytes)
        r.unsupported_("float8.enable_fsdp_float8_all_gather", "FSDP's all-gathers of float8 "
                       "weights (half the bytes): simulated in bf16")  # fmt: skip
    return name


def _torch_rounds(r: Reading, par: dict[str, Any], file: str, m: int, pp: int) -> None:
    """torch's ScheduleInterleaved1F1B runs the m = local_batch_size //
    pipeline_parallel_microbatch_size micro-batches of each pipeline pass (torchtitan's
    ``n_microbatches``, once per gradient-accumulation step) in its rounds
    (``schedules.generators.torch_group_override``): simtrain's micro-batch group N
    (parallelism.microbatch_group_size); a whole number of such passes keeps every group
    whole."""
    if m < 1:
        return
    group = torch_group_override(pp, m)
    rounds = max(1, m // pp)
    if group is None:
        near = [k for k in range(max(1, m - pp), m + pp + 1)
                if torch_group_override(pp, k) is not None]  # fmt: skip
        raise ConfigError(
            file, "training.local_batch_size", f"torch's Interleaved1F1B needs the micro-batches "
            f"of a pass, local_batch_size // pipeline_parallel_microbatch_size = {m}, to be a "
            f"multiple of its rounds, max(1, m // pp) = {rounds}; micro-batch counts near {m} "
            f"that work: {', '.join(map(str, near))}",
        )  # fmt: skip
    if group:
        par["microbatch_group_size"] = group
        r.assume(
            f"Interleaved1F1B with {m} micro-batches over pp {pp}: torch's {rounds} "
            f"round(s) of {group} micro-batches per stage (microbatch_group_size {group})"
        )


def _less_layers(p: dict[str, Any], file: str) -> tuple[int, int]:
    """pipeline_parallel_first/last_stage_less_layers: the layers' worth the embedding and the
    output weigh in torchtitan's split (default 1 each; >= 0)."""
    return tuple(_int(p, f"pipeline_parallel_{k}_stage_less_layers", 1, file, "parallelism", 0,
                      LAYER_LIMIT) for k in ("first", "last"))  # type: ignore[return-value]  # fmt: skip


def _pipeline_stages(p: dict[str, Any], file: str, layers: int, first: int, last: int, pp: int,
                     per_rank: int) -> int:  # fmt: skip
    """The pipeline stages of a schedule with ``per_rank`` stages per rank (2: a looped one, at
    least 2 per rank; 1: a single-stage one, exactly 1): ``pp x per_rank`` unless
    pipeline_parallel_layers_per_stage gives ceil((layers + first + last) / it), which must be a
    multiple of pp with as many stages per rank (distributed/pipeline_parallel.py
    pipeline_llm)."""
    key = "pipeline_parallel_layers_per_stage"
    if p.get(key) is None:
        return pp * per_rank
    lps = _int(p, key, 1, file, "parallelism", 1, LAYER_LIMIT)
    stages = -(-(layers + first + last) // lps)
    if stages % pp or (stages // pp < 2 if per_rank == 2 else stages != pp):
        need = "at least 2 stages per rank" if per_rank == 2 else "1 stage per rank"
        raise ConfigError(file, f"parallelism.{key}", f"gives ceil((layers {layers} + "
                          f"first/last_stage_less_layers {first} + {last}) / {lps}) = {stages} "
                          f"stages: torchtitan needs a multiple of pipeline_parallel_degree {pp}, "
                          f"{need} for this schedule", lps)  # fmt: skip
    return stages


def _recompute(ac: dict[str, Any], r: Reading) -> str:
    mode = _str(ac, "mode", "selective", r.file, "activation_checkpoint")
    if mode == "none":
        return "none"
    if mode == "full":
        return "full"
    if mode == "selective":
        opt = ac.get("selective_ac_option", "2")
        if isinstance(opt, bool) or not isinstance(opt, str | int):
            raise r.error("activation_checkpoint.selective_ac_option", "unknown value", opt,
                          "op | a positive integer")  # fmt: skip
        opt = str(opt)
        if opt == "op":
            # torchtitan's per-op policy (_apply_ac_to_transformer_block, _save_list at
            # 9dec370a): simtrain's selective_op (costs.op_sac).
            return "selective_op"
        if re.fullmatch(r"[0-9]{1,9}", opt) and int(opt) >= 1:  # (isdigit takes "²")
            if int(opt) == 1:
                return "full"
            r.unsupported_(f"activation_checkpoint.selective_ac_option {opt}", f"checkpoints "
                           f"every {opt}th layer whole: simulated as every layer (full)")  # fmt: skip
            return "full"
        raise r.error("activation_checkpoint.selective_ac_option", "unknown value", opt,
                      "op | a positive integer")  # fmt: skip
    r.unsupported_(f"activation_checkpoint.mode {mode}", "simulated as full")
    return "full"
