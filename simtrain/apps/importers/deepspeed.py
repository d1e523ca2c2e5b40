"""DeepSpeed: a ``ds_config.json`` plus the model (``--model``: a Hugging Face config.json or a
simtrain preset; the DeepSpeed config names none) -> a scenario.

Keys and defaults as DeepSpeed defines them (deepspeedai/DeepSpeed
edaa7221267243c7be7fb49c5d5f5c4fb97b4641, ``deepspeed/runtime/zero/config.py`` unless said):

- ``train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x GPUs``
  (runtime/config.py ``_batch_assertion``): any two and the GPU count give the third;
- ``zero_optimization.reduce_bucket_size``: 5e8 elements (l.113), a bucket of that many
  gradient elements; ``overlap_comm`` defaults to true for stage 3 only (l.138, l.382-386);
  ``stage3_max_live_parameters``: 1e9 (l.238); ``reduce_scatter``: true (ZeRO-1/2 reduce by
  reduce-scatter; false: all-reduce);
- ``offload_optimizer.device: cpu``: optimizer states and fp32 master weights in host memory
  (ZeRO-Offload), simtrain's ``training.offload.optimizer``; ``offload_param.device: cpu``
  with stage 3: the parameter partition in host memory (ZeRO-Infinity),
  ``training.offload.parameters``;
- ``bf16.bf16_master_weights_and_grads`` with ``bf16.bf16_optimizer_states``: no fp32 copy at
  all, simtrain's ``bf16_pure``; ``data_types.grad_accum_dtype: fp32`` with bf16 below ZeRO-2:
  the BF16 optimizer's fp32 gradient accumulation buffer (``bf16_fp32_grads``).

Hugging Face Trainer templates write ``"auto"`` where the Trainer fills a value in
(transformers integrations/deepspeed.py ``HfTrainerDeepSpeedConfig``): from the model's hidden
size h, ``reduce_bucket_size`` = h·h and, with ZeRO-3, ``stage3_prefetch_bucket_size`` =
int(0.9·h·h) and ``stage3_param_persistence_threshold`` = 10·h, resolved here the same way (an
assumption); from the Trainer's own arguments, ``fp16`` / ``bf16.enabled`` and the batch sizes,
which the file cannot give: a need naming the key, met by ``--set`` (or a value in the file).
A switch is a JSON boolean or the string "true" / "false"; anything else is an error.

The sequence length is not in a DeepSpeed config: give it with ``--set training.seq_len=N``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from simtrain.apps.importers.common import (
    Imported,
    Reading,
    as_bool,
    clean_number,
    grad_bucket_mb,
    parallel_section,
    whole_number,
    world_and_dp,
)
from simtrain.errors import ConfigError
from simtrain.spec.limits import INT_RANGES, MAX_GPUS, as_float
from simtrain.spec.model import PRESETS, find_preset, from_hf_config, preset
from simtrain.spec.runtime import load_runtime
from simtrain.spec.yamlfile import is_file, read_text_file

#: Keys that make a JSON object a DeepSpeed config (at least one).
DS_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
           "zero_optimization", "fp16", "bf16", "optimizer")  # fmt: skip
#: reduce_bucket_size's default, in gradient elements: the deepspeed runtime profile's
#: (runtimes/deepspeed.yaml reduce_bucket_elements, zero/config.py l.113).
REDUCE_BUCKET_ELEMENTS = load_runtime("deepspeed").reduce_bucket_elements
#: stage3_max_live_parameters's default (zero/config.py l.238).
MAX_LIVE_PARAMETERS = 10**9
#: Top-level keys without effect on one simulated step.
NO_EFFECT = frozenset({
    "steps_per_print", "wall_clock_breakdown", "dump_state", "scheduler", "gradient_clipping",
    "tensorboard", "wandb", "csv_monitor", "comet", "comms_logger", "flops_profiler",
    "zero_allow_untested_optimizer", "checkpoint", "memory_breakdown", "prescale_gradients",
    "gradient_predivide_factor", "zero_force_ds_cpu_optimizer", "aio", "monitor_config",
    "elasticity", "autotuning", "seed",
})  # fmt: skip
#: ZeRO keys that tune buffers and prefetching simtrain does not model (read, listed).
ZERO_TUNING = frozenset({
    "contiguous_gradients", "allgather_partitions", "allgather_bucket_size", "round_robin_gradients",
    "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
    "stage3_model_persistence_threshold", "stage3_max_reuse_distance", "sub_group_size",
    "stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save",
    "elastic_checkpoint", "load_from_fp32_weights", "ignore_unused_parameters", "legacy_stage1",
    "memory_efficient_linear", "use_multi_rank_bucket_allreduce",
    "stage3_module_granularity_threshold", "stage3_use_all_reduce_for_fetch_params",
    "stage3_allgather_sequential", "cpu_offload_use_pin_memory",
})  # fmt: skip
#: The ZERO_TUNING keys that are sizes (elements, bytes, a distance): a number >= 0 or the
#: Hugging Face Trainer's "auto"; the others are switches (deepspeed/runtime/zero/config.py).
ZERO_TUNING_SIZES = frozenset({
    "allgather_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
    "stage3_model_persistence_threshold", "stage3_max_reuse_distance", "sub_group_size",
    "stage3_module_granularity_threshold",
})  # fmt: skip
OPTIMIZERS = {"adam": "adam", "adamw": "adamw", "fusedadam": "adamw", "cpuadam": "adamw",
              "deepspeedcpuadam": "adamw", "sgd": "sgd"}  # fmt: skip


def _section(cfg: dict[str, Any], key: str, file: str) -> dict[str, Any]:
    v = cfg.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):  # ([], 0, false and "" were read as no section: a fuzz campaign)
        raise ConfigError(file, key, "must be a JSON object", v)
    return v


def _model(model: str, r: Reading) -> dict[str, Any]:
    if is_file(model):
        r.assume(f"model: {model} (Hugging Face config.json)")
        return {"hf_config": str(Path(model).resolve())}
    if find_preset(model) is not None:
        r.assume(f"model: simtrain preset {model}")
        return {"preset": model.lower()}
    raise ConfigError(None, "--model", "neither a config.json file nor a simtrain preset", model,
                      ", ".join(PRESETS))  # fmt: skip


#: The largest value of each batch count (spec.limits: the global batch's range bounds all
#: three, the micro-batch its own).
COUNT_LIMITS = {"train_batch_size": INT_RANGES["training.global_batch"][1],
                "train_micro_batch_size_per_gpu": INT_RANGES["training.micro_batch"][1],
                "gradient_accumulation_steps": INT_RANGES["training.global_batch"][1]}  # fmt: skip
#: What the Hugging Face Trainer writes over ``"auto"`` from the model's hidden size h
#: (transformers integrations/deepspeed.py HfTrainerDeepSpeedConfig.trainer_config_finalize):
#: reduce_bucket_size h·h; with ZeRO-3 stage3_prefetch_bucket_size int(0.9·h·h) and
#: stage3_param_persistence_threshold 10·h.
HF_AUTO_FROM_HIDDEN = {
    "reduce_bucket_size": ("hidden_size²", lambda h: h * h),
    "stage3_prefetch_bucket_size": ("int(0.9 x hidden_size²)", lambda h: int(0.9 * h * h)),
    "stage3_param_persistence_threshold": ("10 x hidden_size", lambda h: 10 * h),
}
#: The names DeepSpeed's DtypeEnum takes for each member (deepspeedai/DeepSpeed edaa72212
#: deepspeed/runtime/config.py l.101-106), read for torch_autocast.dtype
#: (``get_torch_autocast_dtype`` -> ``DtypeEnum(value)``) and data_types.grad_accum_dtype.
DTYPE_NAMES = {
    "fp16": ("torch.float16", "fp16", "float16", "half"),
    "fp32": ("torch.float32", "fp32", "float32", "float"),
    "bf16": ("torch.bfloat16", "bf16", "bfloat16"),
}
#: torch_autocast.dtype's 16-bit members -> simtrain's autocast precisions.
AUTOCAST_DTYPES = {
    **dict.fromkeys(DTYPE_NAMES["fp16"], "amp_fp16"),
    **dict.fromkeys(DTYPE_NAMES["bf16"], "amp_bf16"),
}


def _count(v: Any, file: str, key: str) -> int | None:
    """A batch count: an integer >= 1, None when absent or "auto" (set by the HF Trainer)."""
    if v is None or v == "auto":
        return None
    return whole_number(v, file, key, 1, COUNT_LIMITS[key])


def _hidden_size(mdoc: dict[str, Any]) -> int | None:
    """The model's hidden size, as the Hugging Face Trainer reads it from the model's config
    (``hidden_size``; GPT-2's ``n_embd``): from the model section's ``hidden``, its preset or its
    config.json; None when the section gives none."""
    h = mdoc.get("hidden")
    if isinstance(h, int) and not isinstance(h, bool):
        return h
    if isinstance(mdoc.get("preset"), str):
        return preset(mdoc["preset"]).hidden
    if isinstance(mdoc.get("hf_config"), str):
        return from_hf_config(mdoc["hf_config"]).hidden
    return None


def _enabled(sec: dict[str, Any], name: str, file: str) -> bool | None:
    """``NAME.enabled`` (default false); None for ``"auto"`` (the Hugging Face Trainer fills it
    from its own arguments)."""
    v = sec.get("enabled", False)
    if isinstance(v, str) and v == "auto":
        return None
    return as_bool(v, file, f"{name}.enabled")


def relaxed_json(text: str) -> str:
    """``text`` with what hjson accepts and JSON does not taken out, outside strings: a leading
    BOM, ``//`` and ``#`` comments to the end of their line, ``/* */`` comments, and a comma
    before a closing ``}`` or ``]`` (DeepSpeed loads its config with ``hjson.load``,
    deepspeed/runtime/config.py, so a ds_config may carry them). hjson's other forms (quoteless
    keys and strings, multi-line strings) stay errors."""
    out: list[str] = []
    i, n = (1 if text.startswith("\ufeff") else 0), len(text)
    comma = -1  # index in ``out`` of a comma not yet followed by a value
    while i < n:
        c = text[i]
        if c == '"':  # a string, escapes and all
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            comma, i = -1, j + 1
        elif c == "#" or text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            if c in "}]" and comma >= 0:
                out[comma] = ""  # a trailing comma
            if c == ",":
                comma = len(out)
            elif not c.isspace():
                comma = -1
            out.append(c)
            i += 1
    return "".join(out)


def import_deepspeed(path: str | Path, model: str | None, gpus: int | None = None) -> Imported:
    """A DeepSpeed config (JSON) and a model as a scenario document."""
    file = str(path)
    text = read_text_file(path)
    try:
        cfg = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        try:  # DeepSpeed reads its config with hjson: comments, trailing commas, a BOM
            cfg = json.loads(relaxed_json(text))
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise ConfigError(file, "<file>", f"not a DeepSpeed config: not JSON, even with "
                              "comments, trailing commas and a BOM taken out (DeepSpeed reads "
                              "hjson; simtrain reads JSON with those) "
                              f"({str(exc).splitlines()[0][:80]})") from None  # fmt: skip
    if model is None:
        raise ConfigError(file, "--model", "a DeepSpeed config names no model: give --model "
                          "CONFIG.json (Hugging Face) or a simtrain preset")  # fmt: skip
    r = Reading("deepspeed", file)
    return import_deepspeed_config(cfg, _model(model, r), gpus, file, model, r)


def import_deepspeed_config(cfg: Any, mdoc: dict[str, Any], gpus: int | None = None,
                            file: str = "<ds_config>", model: str = "a model",
                            r: Reading | None = None) -> Imported:  # fmt: skip
    """A parsed DeepSpeed config (the JSON object) and the scenario's ``model`` section as a
    scenario document: the one reading of DeepSpeed's keys, for ``simtrain import deepspeed``
    and for ``simtrain validate``'s DeepSpeed records (apps.validate.native)."""
    if not isinstance(cfg, dict) or not any(k in cfg for k in DS_KEYS):
        raise ConfigError(file, "<file>", "not a DeepSpeed config: none of "
                          + ", ".join(DS_KEYS))  # fmt: skip
    r = r or Reading("deepspeed", file)
    seen = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"}

    # ---- precision
    fp16 = _section(cfg, "fp16", file)
    bf16 = _section(cfg, "bf16", file)
    amp = _section(cfg, "amp", file)
    autocast = _section(cfg, "torch_autocast", file)
    dtypes = _section(cfg, "data_types", file)
    seen |= {"fp16", "bf16", "amp", "torch_autocast", "data_types", "communication_data_type"}
    on16, onbf, auto_precision = _precision_switches(fp16, bf16, file, r)
    if on16 and onbf:
        raise ConfigError(file, "fp16.enabled", "contradicts bf16.enabled: enable one of them")
    if isinstance(cfg.get("zero_optimization"), bool):
        # DeepSpeed's deprecated switch (runtime/zero/config.py read_zero_config_deprecated:
        # stage 1 if true, 0 if false)
        on = cfg["zero_optimization"]
        zero = {"stage": 1 if on else 0}
        r.assume(f"zero_optimization {str(on).lower()}: DeepSpeed's deprecated switch, stage "
                 f"{zero['stage']}")  # fmt: skip
    else:
        zero = _section(cfg, "zero_optimization", file)
    stage = zero.get("stage", 0)
    if isinstance(stage, str):
        # DeepSpeed validates the section with pydantic (runtime/zero/config.py:
        # DeepSpeedZeroConfig.stage is ZeroStageEnum(int, Enum)), whose lax mode takes the
        # string "3" as stage 3 (pydantic 2.14 checked); int() reads what is an integer and
        # leaves the rest ("three", "3³") to the error below
        with contextlib.suppress(ValueError):
            stage = int(stage)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise ConfigError(file, "zero_optimization.stage", "unknown value", stage, "0 | 1 | 2 | 3")
    stage = int(stage)  # (3.0 equals 3: written as the integer, not zero_stage: 3.0)
    amp_on = _enabled(amp, "amp", file)
    if amp_on is None:
        amp_on = False
        if not (on16 or onbf):
            r.assume("amp.enabled 'auto': false (the Hugging Face Trainer enables apex amp only "
                     "with --half_precision_backend apex)")  # fmt: skip
    autocast_on = as_bool(autocast.get("enabled", False), file, "torch_autocast.enabled")
    if auto_precision:
        precision = ""  # a need: --set training.precision
        r.assume("gradients taken as 16-bit for the bucket sizes (fp16 / bf16 'auto': a mixed "
                 "precision run); with --set training.precision=fp32 set parallelism.bucket_mb "
                 "too")  # fmt: skip
    elif onbf:
        precision = "bf16"
        pure = tuple(as_bool(bf16.get(k, False), file, f"bf16.{k}")
                     for k in ("bf16_master_weights_and_grads", "bf16_optimizer_states"))  # fmt: skip
        if all(pure):
            precision = "bf16_pure"
            r.assume("bf16 master weights, gradients and optimizer states: bf16_pure")
        elif any(pure):
            r.unsupported_("bf16.bf16_master_weights_and_grads / bf16_optimizer_states",
                           "only one of the two in bf16: simulated as bf16 with fp32 master "
                           "and states")  # fmt: skip
        elif str(dtypes.get("grad_accum_dtype")) in DTYPE_NAMES["fp32"] and stage < 2:
            precision = "bf16_fp32_grads"
            r.assume("bf16 with data_types.grad_accum_dtype fp32 below ZeRO-2: the BF16 "
                     "optimizer's fp32 gradient buffer (bf16_fp32_grads)")  # fmt: skip
    elif on16:
        precision = "fp16"
    elif amp_on:
        precision = "amp_fp16"
        r.assume("amp (apex): fp32 weights, fp16 compute (amp_fp16)")
    elif autocast_on:
        dt = autocast.get("dtype", "torch.bfloat16")
        if not isinstance(dt, str) or dt not in AUTOCAST_DTYPES:
            raise ConfigError(file, "torch_autocast.dtype", "unknown value", dt,
                              " | ".join(AUTOCAST_DTYPES))  # fmt: skip
        precision = AUTOCAST_DTYPES[dt]
        r.assume(f"torch_autocast {dt}: {precision}")
    else:
        precision = "fp32"
        r.assume("neither fp16 nor bf16 enabled: fp32")
    for sec, name in ((fp16, "fp16"), (bf16, "bf16"), (amp, "amp"), (autocast, "torch_autocast")):
        for k in sec:
            if k not in ("enabled", "bf16_master_weights_and_grads", "bf16_optimizer_states"):
                r.ignore(f"{name}.{k}")
    grad_bytes = 4 if precision in ("fp32", "amp_bf16", "amp_fp16") else 2
    runtime: dict[str, Any] = {"name": "deepspeed"}
    comm = cfg.get("communication_data_type")
    if comm is not None:
        if str(comm).lower() in ("fp32", "float32"):
            runtime["grad_reduce_dtype"] = "fp32"
        elif str(comm).lower() not in ("fp16", "bf16", "float16", "bfloat16"):
            raise ConfigError(file, "communication_data_type", "unknown value", comm,
                              "fp32 | fp16 | bf16")  # fmt: skip

    # ---- ZeRO
    par: dict[str, Any] = {"tp": 1, "pp": 1, "zero_stage": stage}
    r.origin("parallelism.zero_stage", "zero_optimization.stage")
    training: dict[str, Any] = {}
    live_auto = False
    hidden: list[int | None] = []  # the model's hidden size, looked up for an "auto"
    mics = 0  # MiCS's shard group (zero_optimization.mics_shard_size), ZeRO-3 only
    for k, v in zero.items():
        key = f"zero_optimization.{k}"
        if k == "stage":
            continue
        if isinstance(v, str) and v == "auto" and k in HF_AUTO_FROM_HIDDEN:
            if not hidden:
                hidden.append(_hidden_size(mdoc))
            v = _hf_auto(k, hidden[0], stage, r)
            if v is None:
                continue
        if k == "offload_optimizer":
            dev = _offload_device(v, file, key)
            if dev in ("cpu", "nvme"):
                training.setdefault("offload", {})["optimizer"] = True
                r.assume(f"{key}.device {dev}: optimizer states and fp32 master weights in host "
                         "memory (ZeRO-Offload)")  # fmt: skip
                if dev == "nvme":
                    r.unsupported_(f"{key}.device nvme", "NVMe offload simulated as CPU memory")
                for sub in (v or {}) if isinstance(v, dict) else {}:
                    if sub not in ("device", "pin_memory"):
                        r.unsupported_(f"{key}.{sub}", "not simulated")
        elif k == "offload_param":
            dev = _offload_device(v, file, key)
            if dev in ("cpu", "nvme") and stage == 3:
                training.setdefault("offload", {})["parameters"] = True
                r.assume(f"{key}.device {dev}: each GPU's parameter partition in host memory, "
                         "fetched layer by layer (ZeRO-Infinity)")  # fmt: skip
                if dev == "nvme":
                    r.unsupported_(f"{key}.device nvme", "NVMe offload simulated as CPU memory")
                for sub in v if isinstance(v, dict) else {}:
                    if sub not in ("device", "pin_memory"):
                        r.unsupported_(f"{key}.{sub}", "not simulated")
            elif dev != "none":
                r.unsupported_(f"{key}.device {dev}", f"parameter offload is a ZeRO-3 option "
                               f"(zero_optimization.stage is {stage})")  # fmt: skip
        elif k == "reduce_bucket_size":  # ('auto' was resolved above)
            par["bucket_mb"] = clean_number(grad_bucket_mb(as_float(v, file, key), grad_bytes))
            r.origin("parallelism.bucket_mb", key)
        elif k == "overlap_comm":
            runtime["overlap_grad_reduce"] = as_bool(v, file, key)
        elif k == "stage3_max_live_parameters":
            if isinstance(v, str) and v == "auto" and stage != 3:
                r.ignore(f"{key} 'auto' (a ZeRO-3 setting; stage {stage})")
                continue
            if isinstance(v, str) and v == "auto":
                # the Hugging Face Trainer fills no "auto" here (DeepSpeed refuses it)
                r.need("parallelism.zero3_max_live_params", key, "'auto' is not filled in by the "
                       "Hugging Face Trainer: give a number of parameters (DeepSpeed's default "
                       "1e9), or --set parallelism.zero3_max_live_params=N")  # fmt: skip
                live_auto = True
                continue
            live = whole_number(v, file, key, 0, INT_RANGES["parallelism.zero3_max_live_params"][1])
            if stage == 3:
                par["zero3_max_live_params"] = live
        elif k == "reduce_scatter":
            if not as_bool(v, file, key) and stage in (1, 2):
                runtime["zero_grad_reduction"] = "all_reduce"
        elif k == "mics_shard_size":
            # MiCS (runtime/zero/mics.py): ZeRO-3 within groups of mics_shard_size GPUs,
            # replicated across; gradients reduce-scattered in the group, then all-reduced
            # across the replicas (MiCS_Optimizer.allreduce_mics_shard_grads): simtrain's
            # parallelism.zero_replicas, set once dp is known
            shard = whole_number(v, file, key, -1, MAX_GPUS)
            if shard > 0 and stage == 3:
                mics = shard
            elif shard > 0:
                r.ignore(f"{key} {shard} (a ZeRO-3 setting; stage {stage})")
        elif k == "mics_hierarchical_params_gather":
            if as_bool(v, file, key):
                r.unsupported_(key, "the two-level (intra-node, then inter-node) parameter "
                               "gather: simulated as one all-gather over the group")  # fmt: skip
        elif k in ZERO_TUNING:
            # typed as DeepSpeed's config model types it (a number of elements or bytes, or a
            # switch): -1, NaN and "x" were listed as read (a fuzz campaign)
            if k in ZERO_TUNING_SIZES and not (isinstance(v, str) and v == "auto"):
                if as_float(v, file, key) < 0:
                    raise ConfigError(file, key, "must be >= 0", v)
            elif k not in ZERO_TUNING_SIZES:
                as_bool(v, file, key)
            r.ignore(f"{key} (a tuning simtrain does not model)")
        else:
            r.unsupported_(key, "not a key this importer knows")
    if "reduce_bucket_size" not in zero and stage in (1, 2, 3):
        par["bucket_mb"] = clean_number(grad_bucket_mb(REDUCE_BUCKET_ELEMENTS, grad_bytes))
        r.assume(f"reduce_bucket_size absent: 5e8 elements x {grad_bytes} B = {par['bucket_mb']} "
                 "MB (DeepSpeed's default)")  # fmt: skip
    if "overlap_comm" not in zero:
        runtime["overlap_grad_reduce"] = stage == 3
        r.assume(f"overlap_comm absent: {str(stage == 3).lower()} (DeepSpeed's default: true for "
                 "stage 3 only)")  # fmt: skip
    if stage == 3 and "zero3_max_live_params" not in par and not live_auto:
        par["zero3_max_live_params"] = MAX_LIVE_PARAMETERS
        r.assume("stage3_max_live_parameters absent: 1e9 (DeepSpeed's default)")

    # ---- tensor parallel (AutoTP) and the batch
    tpc = _section(cfg, "tensor_parallel", file)
    seen |= {"tensor_parallel", "zero_optimization"}
    # AutoTP's size: 0 (DeepSpeed's default) or 1 is no tensor parallelism
    tp = whole_number(tpc.get("autotp_size", 0), file, "tensor_parallel.autotp_size", 0,
                      MAX_GPUS) or 1  # fmt: skip
    par["tp"] = tp
    if tp > 1:
        r.origin("parallelism.tp", "tensor_parallel.autotp_size")
    tbs = _count(cfg.get("train_batch_size"), file, "train_batch_size")
    mbs = _count(cfg.get("train_micro_batch_size_per_gpu"), file, "train_micro_batch_size_per_gpu")
    gas = _count(cfg.get("gradient_accumulation_steps"), file, "gradient_accumulation_steps")
    world = None
    if tbs and mbs and gas:
        if tbs % (mbs * gas):
            raise ConfigError(file, "train_batch_size", f"must be train_micro_batch_size_per_gpu "
                              f"x gradient_accumulation_steps x GPUs ({mbs} x {gas} x N)", tbs)  # fmt: skip
        world = tbs // (mbs * gas) * tp
    if gpus is not None and world is not None and gpus != world:
        raise ConfigError(file, "train_batch_size", f"{tbs} = {mbs} x {gas} x {tbs // (mbs * gas)} "
                          f"data-parallel GPUs, but --gpus {gpus}")  # fmt: skip
    dp = world_and_dp(r, world, "train_batch_size / (micro-batch x accumulation)", gpus, tp,
                      "tensor_parallel.autotp_size")  # fmt: skip
    if mbs is None and tbs is not None:
        gas = gas or 1
        if tbs % (gas * dp):
            raise ConfigError(file, "train_batch_size", f"must be a multiple of "
                              f"gradient_accumulation_steps x dp = {gas} x {dp}", tbs)  # fmt: skip
        mbs = tbs // (gas * dp)
    batch: dict[str, Any] = {}
    if mbs is None and cfg.get("train_micro_batch_size_per_gpu") == "auto":
        # a Hugging Face Trainer template: the Trainer fills both from its arguments
        r.need("training.micro_batch", "train_micro_batch_size_per_gpu", "'auto' cannot be "
               "resolved from the file (the Hugging Face Trainer fills it from "
               "--per_device_train_batch_size): give --set training.micro_batch=N, or a "
               "number in the file")  # fmt: skip
        r.need("training.global_batch", "train_batch_size", "'auto' cannot be resolved from the "
               "file (the Hugging Face Trainer fills it: per-device batch x "
               "gradient_accumulation_steps x data-parallel GPUs): give --set "
               "training.global_batch=N, or a number in the file")  # fmt: skip
    elif mbs is None:
        raise ConfigError(file, "train_micro_batch_size_per_gpu", "missing: give it or "
                          "train_batch_size")  # fmt: skip
    elif tbs is None:
        gas = gas or 1
        tbs = mbs * gas * dp
    elif gas is None:
        if tbs % (mbs * dp):
            raise ConfigError(file, "train_batch_size", f"must be a multiple of "
                              f"train_micro_batch_size_per_gpu x dp = {mbs} x {dp}", tbs)  # fmt: skip
    r.origin("training.global_batch", "train_batch_size")
    r.origin("training.micro_batch", "train_micro_batch_size_per_gpu")
    par["dp"] = dp
    off = training.get("offload") or {}
    if mics >= dp:
        r.assume(f"zero_optimization.mics_shard_size {mics} >= the {dp} data-parallel GPUs: one "
                 "group, ZeRO-3 over all of them")  # fmt: skip
    elif mics and (off.get("optimizer") or off.get("parameters")):
        r.unsupported_(f"zero_optimization.mics_shard_size {mics}", "MiCS with offload is not "
                       "modelled: simulated as ZeRO-3 over all the data-parallel GPUs")  # fmt: skip
    elif mics:
        if dp % mics:
            divisors = " | ".join(str(d) for d in range(1, dp) if dp % d == 0)
            raise ConfigError(file, "zero_optimization.mics_shard_size", f"must divide the "
                              f"data-parallel GPUs ({dp})", mics, divisors)  # fmt: skip
        par["zero_replicas"] = dp // mics
        r.origin("parallelism.zero_replicas", "zero_optimization.mics_shard_size")
        r.assume(f"zero_optimization.mics_shard_size {mics}: MiCS, ZeRO-3 within groups of "
                 f"{mics} GPUs, {dp // mics} replicas (parallelism.zero_replicas)")  # fmt: skip
    if mbs is not None:
        batch = {"micro_batch": mbs, "global_batch": tbs}
        for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                  "gradient_accumulation_steps"):  # fmt: skip
            if cfg.get(k) == "auto":
                r.assume(f"{k} 'auto' (the Hugging Face Trainer sets it): derived here")
    # fp16 / bf16 'auto' leaves no precision: the need's --set gives it
    training = {**batch, **({"precision": precision} if precision else {}), **training}
    r.need("training.seq_len", "<sequence length>", "a DeepSpeed config has no sequence length: "
           "give --set training.seq_len=N")  # fmt: skip
    training["optimizer"], torch_optimizer = _optimizer(cfg, r)
    seen.add("optimizer")
    if torch_optimizer:
        # the client's (or torch's) optimizer, not DeepSpeed's FusedAdam (engine.py
        # _configure_basic_optimizer): torch's Adam step keeps its per-tensor temporaries
        runtime["fused_optimizer"] = False
        r.assume("the optimizer is torch's, not DeepSpeed's FusedAdam: runtime fused_optimizer "
                 "false")  # fmt: skip
    _recompute(cfg, r, training)
    seen.add("activation_checkpointing")
    for k in cfg:
        if k in seen:
            continue
        if k in NO_EFFECT:
            r.ignore(k)
        else:
            r.unsupported_(k, "not a key this importer knows")
    par = parallel_section(par)
    return r.scenario(
        f"Imported from a DeepSpeed config ({Path(file).name}) and {model}",
        "a DeepSpeed config names no GPU",
        mdoc,
        runtime,
        training,
        par,
    )


def _offload_device(v: Any, file: str, key: str) -> str:
    """The device of an ``offload_optimizer`` / ``offload_param`` section (DeepSpeed's
    OffloadDeviceEnum: none | cpu | nvme)."""
    dev = v.get("device", "none") if isinstance(v, dict) else v
    if dev is None:
        dev = "none"
    if not isinstance(dev, str) or dev not in ("none", "cpu", "nvme"):
        raise ConfigError(file, f"{key}.device" if isinstance(v, dict) else key, "unknown offload "
                          "device", dev, "none | cpu | nvme")  # fmt: skip
    return dev


def _precision_switches(fp16: dict[str, Any], bf16: dict[str, Any], file: str,
                        r: Reading) -> tuple[bool, bool, bool]:  # fmt: skip
    """(fp16.enabled, bf16.enabled, whether the precision is left to the Hugging Face Trainer).
    An ``"auto"`` (a Trainer template: the Trainer fills it from its --fp16 / --bf16 arguments)
    is resolved only where the other switch is true (DeepSpeed refuses both on); otherwise the
    file does not say the precision: a need naming the switch, met by --set training.precision
    (or true / false written in the file)."""
    on16, onbf = _enabled(fp16, "fp16", file), _enabled(bf16, "bf16", file)
    if on16 is not None and onbf is not None:
        return on16, onbf, False
    if on16 is True or onbf is True:
        auto = "bf16" if onbf is None else "fp16"
        r.assume(f"{auto}.enabled 'auto': false ({'fp16' if auto == 'bf16' else 'bf16'}.enabled "
                 "is true, and DeepSpeed refuses both)")  # fmt: skip
        return bool(on16), bool(onbf), False
    autos = " and ".join(f"{n}.enabled" for n, v in (("fp16", on16), ("bf16", onbf)) if v is None)
    r.need("training.precision", autos, "'auto' cannot be resolved from the file (the Hugging "
           "Face Trainer fills it from its --fp16 / --bf16 arguments): give --set "
           "training.precision=bf16 (or fp16, fp32), or write true or false in the file "
           '(e.g. "bf16": {"enabled": true})')  # fmt: skip
    return False, False, True


def _hf_auto(k: str, hidden: int | None, stage: int, r: Reading) -> int | None:
    """A ZeRO key set to ``"auto"`` that the Hugging Face Trainer fills from the model's hidden
    size (:data:`HF_AUTO_FROM_HIDDEN`), recorded as an assumption: reduce_bucket_size's value
    (None without a hidden size: a need, met by --set); None for the stage-3 tunings, which
    simtrain does not model (below ZeRO-3 the Trainer leaves them alone)."""
    key = f"zero_optimization.{k}"
    if k != "reduce_bucket_size" and (stage != 3 or hidden is None):
        r.ignore(f"{key} 'auto' (a tuning simtrain does not model)")
        return None
    if hidden is None:
        r.need("parallelism.bucket_mb", key, "'auto' is the Hugging Face Trainer's hidden_size² "
               "elements, and the model gives no hidden size: give a number of gradient "
               "elements, or --set parallelism.bucket_mb=MB")  # fmt: skip
        return None
    formula, fill = HF_AUTO_FROM_HIDDEN[k]
    value = fill(hidden)
    r.assume(f"{key} 'auto': {formula} = {value:,} for hidden_size {hidden} (the Hugging Face "
             "Trainer's fill, integrations/deepspeed.py trainer_config_finalize)"
             + ("" if k == "reduce_bucket_size" else "; a tuning simtrain does not model"))  # fmt: skip
    return value if k == "reduce_bucket_size" else None


def _optimizer(cfg: dict[str, Any], r: Reading) -> tuple[str, bool]:
    """(simtrain's optimizer, whether torch's runs it rather than DeepSpeed's FusedAdam: no
    optimizer section, the training script builds one; or ``params.torch_adam``)."""
    opt = _section(cfg, "optimizer", r.file)
    if not opt:
        r.assume("no optimizer section (the training script builds one): AdamW")
        return "adamw", True
    typ = str(opt.get("type", "")).lower()
    params = opt.get("params") or {}
    torch_adam = isinstance(params, dict) and as_bool(params.get("torch_adam", False), r.file,
                                                      "optimizer.params.torch_adam")  # fmt: skip
    if typ == "sgd":
        return ("sgd_momentum" if isinstance(params, dict) and params.get("momentum")
                else "sgd"), torch_adam  # fmt: skip
    if typ in OPTIMIZERS:
        return OPTIMIZERS[typ], torch_adam
    r.unsupported_(f"optimizer.type {opt.get('type')}", "simulated as AdamW")
    return "adamw", torch_adam


def _recompute(cfg: dict[str, Any], r: Reading, training: dict[str, Any]) -> None:
    ac = _section(cfg, "activation_checkpointing", r.file)
    training["recompute"] = "none"
    cpu = as_bool(ac.get("cpu_checkpointing", False), r.file,
                  "activation_checkpointing.cpu_checkpointing")  # fmt: skip
    if not cpu:
        r.assume("recompute none: a DeepSpeed config does not turn activation checkpointing on "
                 "(the model code calls deepspeed.checkpointing); --set training.recompute=full "
                 "if it does")  # fmt: skip
    for k, v in ac.items():
        if k == "cpu_checkpointing" and cpu:
            # checkpoints on the host imply checkpointing (deepspeed.checkpointing.configure)
            training["recompute"] = "full"
            training.setdefault("offload", {})["activations"] = True
            r.assume("activation_checkpointing.cpu_checkpointing: every block checkpointed "
                     "(recompute full), its checkpoints copied to host memory and back")  # fmt: skip
        elif k == "partition_activations" and as_bool(v, r.file, f"activation_checkpointing.{k}"):
            r.unsupported_(f"activation_checkpointing.{k}", "not simulated")
        else:
            r.ignore(f"activation_checkpointing.{k}")
