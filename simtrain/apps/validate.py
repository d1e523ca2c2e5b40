"""Validation against measured training runs: ``simtrain validate``.

Reads records in the schema of ``measured/published_runs.yaml`` (see ``measured/README.md``),
turns each one the simulator can express into a :class:`~simtrain.spec.scenario.Scenario`, predicts it,
and compares per metric with the measurement:

``step_time_s``, ``tokens_per_s``, ``tflops_per_gpu``, ``mfu``, ``hfu``, ``peak_memory_bytes``
and ``fits`` (booleans: a measured run fitted unless its ``outcome`` says it crashed or ran out
of memory).

**Like with like.** Each source counts FLOPs its own way (``shared/measured/formulas.md`` §1, §6);
the prediction is converted into the source's convention before comparing, with the FLOP count
computed from the record's own shape, never from simtrain's:

=================  ==========================================================================
convention         FLOPs per step (B sequences of s tokens, l layers, hidden h, vocab V)
=================  ==========================================================================
``megatron_eq3``   Narayanan et al. 2021 Eq. 3, recompute included:
                   ``96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))``; TFLOP/s = F / (T · n GPUs)
``korthikanti``    MFU: Eq. 7 ``72·B·l·s·h²·(1 + s/(6h) + V/(12·h·l))``; HFU: Eq. 8 (selective,
                   ``s/(3h)``), Eq. 3 (full recompute) or Eq. 7 (none), over n · 312 TFLOP/s
``mosaicml``       llm-foundry: MFU ``(6·N·s + 12·l·h·s²)·B``, HFU ``(8·N·s + 16·l·h·s²)·B``
                   with activation checkpointing; model TFLOP/s = MFU numerator / (T · n)
``nanotron``       nanotron ``llama.get_flops``: 3 × (forward matmuls incl. full s² attention
                   and the LM head); MFU over the dense bf16 peak
``simtrain``       records of unknown sources: simtrain's own model FLOPs (MFU) and executed
                   FLOPs (TFLOP/s, HFU) from ``simtrain.report.metrics``
=================  ==========================================================================

The peak in MFU/HFU is the dense peak of the compute dtype in the hardware profile (A100: 312,
H100: 989.4 TFLOP/s; the sources use the same figures).

**Networks.** ``hardware.gpu`` picks the profile; ``hardware.inter_node`` can swap it for one of
the same node on another network (:data:`NETWORK_PROFILES`): H100 records on EFA, the
Ultra-Scale Playbook's cluster, run on ``h100_sxm5_80gb_efa``, whose NIC rate and per-step
latency are fitted to that cluster's published collective bandwidths (the profile's comments).

**Speed.** Fit verdicts and peak memory need :func:`~simtrain.costs.memory.estimate_memory` only;
timing metrics run the engine. Step time is affine in the number of micro-batches m once
m ≥ 1 for 1F1B, GPipe and gradient accumulation, and once m ≥ pp for the interleaved schedule
(:func:`predicted_step_time`), so each step is simulated with one and two micro-batches (pp and
2·pp when interleaved) and extrapolated: exact to the nanosecond in the engine, tested in
``tests/test_validate.py``. Identical scenarios are simulated once.

Records the simulator cannot express come back as :class:`SkipReason` with the reason; nothing
is dropped silently. Defaults used where a source omits a setting are listed per record
(:attr:`Translation.assumptions`) and printed with the table.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.compute import eq3_flops, eq7_flops, eq8_flops, mosaicml_flops, nanotron_flops
from simtrain.costs.memory import PRECISIONS, MemoryReport, estimate_memory
from simtrain.errors import ConfigError, SimtrainError
from simtrain.spec.hardware import GIB, HARDWARE_DIR, MIB
from simtrain.spec.scenario import Scenario, parse_scenario
from simtrain.spec.yamlfile import load_yaml

SCHEMA_VERSION = 1
DEFAULT_PATH = Path("measured") / "published_runs.yaml"
PACKAGED_PATH = HARDWARE_DIR.parent / "measured" / "published_runs.yaml"

# Metrics in table / JSON order. "fits" compares booleans.
METRICS = (
    "step_time_s",
    "tokens_per_s",
    "tflops_per_gpu",
    "mfu",
    "hfu",
    "peak_memory_bytes",
    "fits",
)
TIME_METRICS = ("step_time_s", "tokens_per_s", "tflops_per_gpu", "mfu", "hfu")

# Schedules whose step time is affine in the number of micro-batches (predicted_step_time).
AFFINE_SCHEDULES = ("1f1b", "gpipe", "interleaved")

RECORD_KEYS = (
    "id", "kind", "source", "source_key", "model", "training", "parallelism", "hardware",
    "measured", "notes",
)  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class Record:
    """One measured run, as written in the YAML file (sections kept as plain mappings)."""

    id: str
    kind: str
    source: str
    source_key: str
    model: Mapping[str, Any]
    training: Mapping[str, Any]
    parallelism: Mapping[str, Any]
    hardware: Mapping[str, Any]
    measured: Mapping[str, Any]
    notes: str = ""


@dataclass(frozen=True, slots=True)
class SkipReason:
    """A record the simulator cannot express (or has nothing to compare for), with why."""

    id: str
    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class Translation:
    """A record as a scenario, with the defaults and readings it needed."""

    record: Record
    scenario: Scenario
    assumptions: tuple[str, ...]
    capacity_known: bool = True  # the record names the GPU's memory size (fit verdict usable)


@dataclass(frozen=True, slots=True)
class Comparison:
    id: str
    source: str
    metric: str
    measured: float | bool
    predicted: float | bool
    error_pct: float  # 100·(predicted − measured)/measured; fits: 0 (right) or 100 (wrong)


@dataclass(frozen=True, slots=True)
class Summary:
    source: str
    metric: str
    n: int
    mape_pct: float  # fits: share wrong, in %
    max_error_pct: float  # fits: 100 if any verdict is wrong

    @property
    def share_correct(self) -> float:
        """For ``fits``: the share of right verdicts (1 − mape/100)."""
        return 1.0 - self.mape_pct / 100.0


@dataclass(frozen=True)
class ValidationResult:
    path: str
    comparisons: tuple[Comparison, ...]
    skipped: tuple[SkipReason, ...]
    summary: tuple[Summary, ...]
    assumptions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document (schema_version 1; keys exactly as documented)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "records": [
                {
                    "id": c.id,
                    "source": c.source,
                    "metric": c.metric,
                    "measured": c.measured,
                    "predicted": c.predicted,
                    "error_pct": c.error_pct,
                }
                for c in self.comparisons
            ],  # fmt: skip
            "skipped": [{"id": s.id, "reason": s.reason} for s in self.skipped],
            "summary": [
                {
                    "source": s.source,
                    "metric": s.metric,
                    "n": s.n,
                    "mape_pct": s.mape_pct,
                    "max_error_pct": s.max_error_pct,
                }
                for s in self.summary
            ],  # fmt: skip
        }

    def summary_for(self, source: str, metric: str) -> Summary | None:
        for s in self.summary:
            if s.source == source and s.metric == metric:
                return s
        return None


# Short source keys from record ids (first match wins); a record may set ``source_key``.
SOURCE_PREFIXES = (
    ("megatron_sc21_t2_zero3", "megatron_sc21_zero3"),  # DeepSpeed ZeRO-3 runs in Table 2
    ("megatron_sc21", "megatron_sc21"),
    ("megatron_readme", "megatron_readme"),
    ("megatron_v1", "megatron_v1_blog"),
    ("korthikanti22", "korthikanti2022"),
    ("bloom", "bloom"),
    ("mpt_", "mosaicml"),
    ("usp_", "nanotron"),
    ("hf_single_gpu", "hf_transformers"),
    ("gpipe_", "gpipe"),
    ("zero", "zero"),
    ("ddp_baseline", "zero"),
    ("qlora", "qlora"),
    ("lora_", "lora"),
    ("opt", "opt"),
    ("llama", "llama"),
    ("palm", "palm"),
)


def source_key(record_id: str, explicit: str | None = None) -> str:
    """Short source key of a record: ``source_key`` if given, else from the id's prefix
    (``megatron_sc21_t1_1.7B`` -> ``megatron_sc21``), else the id's leading letters."""
    if explicit:
        return str(explicit)
    for prefix, key in SOURCE_PREFIXES:
        if record_id.startswith(prefix):
            return key
    m = re.match(r"[A-Za-z]+", record_id)
    return m.group(0).lower() if m else "other"


def _section(raw: dict[str, Any], key: str, file: str, where: str) -> Mapping[str, Any]:
    v = raw.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(file, f"{where}.{key}", "must be a mapping", v)
    return v


def load_records(path: str | Path) -> list[Record]:
    """Read a YAML list of records (schema: ``measured/README.md``). Every record needs an
    ``id``; sections may be absent. Errors name the file, the record and the key."""
    p = Path(path)
    data = load_yaml(p)
    file = str(p)
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(file, "<root>", "must be a list of records", type(data).__name__)
    out: list[Record] = []
    seen: set[str] = set()
    for i, raw in enumerate(data):
        where = f"[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(file, where, "a record must be a mapping", raw)
        rid = raw.get("id")
        if not isinstance(rid, str) or not rid:
            raise ConfigError(file, f"{where}.id", "missing or not a string", rid)
        where = f"{rid}"
        unknown = [k for k in raw if k not in RECORD_KEYS]
        if unknown:
            raise ConfigError(file, f"{where}.{unknown[0]}", "unknown key", None,
                              ", ".join(RECORD_KEYS))  # fmt: skip
        if rid in seen:
            raise ConfigError(file, f"{where}.id", "duplicate id", rid)
        seen.add(rid)
        out.append(
            Record(
                id=rid,
                kind=str(raw.get("kind", "training_run")),
                source=str(raw.get("source", "")),
                source_key=source_key(rid, raw.get("source_key")),
                model=_section(raw, "model", file, where),
                training=_section(raw, "training", file, where),
                parallelism=_section(raw, "parallelism", file, where),
                hardware=_section(raw, "hardware", file, where),
                measured=_section(raw, "measured", file, where),
                notes=str(raw.get("notes", "") or ""),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Source conventions


@dataclass(frozen=True, slots=True)
class SourceConvention:
    """How a source's runs are built and how it counts what it reports."""

    flops: str  # megatron_eq3 | korthikanti | mosaicml | nanotron | simtrain
    architecture: Mapping[str, Any]  # ModelSpec keys the source's code implies
    recompute_default: str = "none"  # when the record does not say
    recompute_note: str = ""
    vocab_default: int | None = None
    memory_includes_context: bool = False  # the measured peak includes the CUDA context
    memory_note: str = ""
    ddp_default: str = "torch"  # torch: 25 MB buckets overlapped with the backward | local
    precision_map: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # (to, why)
    memory_gb_unit: float = 1e9  # bytes in the source's "GB" (nanotron divides by 1024**3)
    memory_stage: int | None = None  # the pipeline stage whose peak the source reports (None: max)
    layer_split: str = "uniform"  # how the source's code splits layers over pipeline stages
    cross_entropy: str = "standard"  # the loss kernel (config.CROSS_ENTROPY)
    cross_entropy_note: str = ""
    zero3_max_live_params: int = 0  # ParallelSpec.zero3_max_live_params
    zero3_note: str = ""


# Megatron-LM GPT (2019-2022): GeLU 4h MLP, biases, LayerNorm, learned positions, tied
# embeddings, hidden and attention dropout 0.1 (arguments.py defaults), no flash attention
# (fused scale-mask-softmax over the s x s scores).
MEGATRON_GPT = {"mlp": "gelu", "positions": "learned", "bias": True, "norm": "layernorm",
                "tied_embeddings": True, "dropout": 0.1, "flash_attention": False}  # fmt: skip
# MosaicML MPT (llm-foundry benchmark configs): no biases (no_bias), LayerNorm, learned positions
# (llm-foundry's default learned_pos_emb: the records' params_b grows by (65536 - 2048) x 2560 =
# 0.16 B from the 2k to the 64k-token 3B run), tied embeddings, no dropout, flash attention.
MPT = {"mlp": "gelu", "positions": "learned", "bias": False, "norm": "layernorm",
       "tied_embeddings": True, "dropout": 0.0, "flash_attention": True}  # fmt: skip
# nanotron Llama (Ultra-Scale Playbook sweep): SwiGLU, RMSNorm, rotary, no bias, flash-attn.
# qkv_layout: nanotron models/llama.py CausalSelfAttention keeps the fused QKV tensor and a rotated
# K/V copy alive for flash attention's backward (memory.layer_saved_tensors).
NANOTRON_LLAMA = {"mlp": "swiglu", "positions": "rotary", "bias": False, "norm": "rmsnorm",
                  "dropout": 0.0, "flash_attention": True,
                  "qkv_layout": "fused_kv_copy"}  # fmt: skip
# HF BERT-large in the Transformers docs (eager attention, dropout 0.1, biases, learned positions).
HF_BERT = {"mlp": "gelu", "positions": "learned", "bias": True, "norm": "layernorm",
           "tied_embeddings": True, "dropout": 0.1, "flash_attention": False}  # fmt: skip

_EQ3_RECOMPUTE = ("full (the source's TFLOP/s follow Narayanan Eq. 3, which counts the "
                  "recompute forward)")  # fmt: skip

# Megatron-LM's own runs: Eq. 3 TFLOP/s, full recompute, vocabulary padded to 51,200, "local" DDP.
_MEGATRON_LM = SourceConvention(
    "megatron_eq3", MEGATRON_GPT, "full", _EQ3_RECOMPUTE, 51200, ddp_default="local"
)

SOURCES: dict[str, SourceConvention] = {
    "megatron_sc21": _MEGATRON_LM,
    "megatron_sc21_zero3": SourceConvention(
        "megatron_eq3",
        MEGATRON_GPT,
        "full",
        _EQ3_RECOMPUTE,
        51200,
        zero3_max_live_params=10**9,
        zero3_note="DeepSpeed ZeRO-3 config not reported: its default "
        "stage3_max_live_parameters, a billion gathered parameters live at most "
        "(deepspeed/runtime/zero/config.py)",
    ),  # fmt: skip
    "megatron_readme": _MEGATRON_LM,
    "megatron_v1_blog": _MEGATRON_LM,
    "korthikanti2022": SourceConvention(
        "korthikanti", MEGATRON_GPT, "full", "", 51200, ddp_default="local"
    ),
    "bloom": SourceConvention(
        "megatron_eq3",
        {**MEGATRON_GPT, "positions": "rotary", "dropout": 0.0},
        "full",
        _EQ3_RECOMPUTE,
        250880,
        # Megatron-DeepSpeed --partition-method type:transformer|embedding (the records' notes:
        # embedding + 5 layers on the first and last stage, 6 elsewhere)
        layer_split="embedding_as_layer",
    ),  # fmt: skip
    "mosaicml": SourceConvention(
        "mosaicml",
        MPT,
        cross_entropy="fused",
        cross_entropy_note="loss not reported: llm-foundry's default, loss_fn "
        "'fused_crossentropy' (models/mpt/modeling_mpt.py ComposerMPTCausalLM: "
        "flash_attn.losses.cross_entropy): 16-bit logits saved, no fp32 copy",
        precision_map={
            "amp_bf16": (
                "bf16",
                "Composer amp_bf16 with FSDP mixed_precision "
                "DEFAULT: FSDP gathers bf16 parameters over an fp32 sharded "
                "master and LPLayerNorm keeps activations in bf16 "
                "(simtrain bf16, not autocast over fp32 weights)",
            )
        },
    ),  # fmt: skip
    "nanotron": SourceConvention(
        "nanotron",
        NANOTRON_LLAMA,
        memory_note="nanotron 'GPU memory' = helpers.log_throughput's 'Mem Alloc (GB)', "
        "torch.cuda.max_memory_allocated() / 1024**3 on world rank 0 (GiB, first pipeline "
        "stage), compared with stage 0's peak without the CUDA context",
        memory_gb_unit=GIB,
        memory_stage=0,
        layer_split="compute_balanced",
        precision_map={
            "bf16": (
                "bf16_fp32_grads",
                "nanotron bf16 with accumulate_grad_in_fp32 (scripts/scaling_benchmarks.py "
                "ACCUMULATE_GRAD_IN_FP32 = True): fp32 gradient buffer for every parameter "
                "next to bf16 weights and grads, fp32 master and Adam states, 20 B/param "
                "(Ultra-Scale Playbook, 'Memory usage in Transformers' note on Nanotron)",
            )
        },
    ),  # fmt: skip
    "hf_transformers": SourceConvention(
        "simtrain",
        HF_BERT,
        memory_includes_context=True,
        memory_note="NVML device memory: compared with the CUDA context included",
    ),  # fmt: skip
}
GENERIC = SourceConvention("simtrain", {})


FLOP_CONVENTIONS = ("megatron_eq3", "korthikanti", "mosaicml", "nanotron", "simtrain")


def convention(key: str) -> SourceConvention:
    return SOURCES.get(key, GENERIC)


def record_convention(rec: Record) -> SourceConvention:
    """The source's convention, with the record's own ``measured.flops_convention`` and
    ``measured.memory_includes_context`` taking precedence (for users' runs)."""
    conv = convention(rec.source_key)
    fc = rec.measured.get("flops_convention")
    if isinstance(fc, str) and fc in FLOP_CONVENTIONS:
        conv = replace(conv, flops=fc)
    mc = rec.measured.get("memory_includes_context")
    if isinstance(mc, bool):
        conv = replace(conv, memory_includes_context=mc)
    return conv


# ---------------------------------------------------------------------------------------------
# Mapping record fields to scenario values


def gpu_profile(gpu: str) -> tuple[str, bool, str] | None:
    """(profile name, memory size known, note) for a GPU name such as ``A100-SXM4-80GB``,
    ``H100 80GB`` or ``V100 32GB (DGX-2)``; None when no profile covers it."""
    g = gpu.upper()
    if "H200" in g:
        return "h200_141gb", True, ""
    if "H100" in g:
        return "h100_sxm5_80gb", "80" in g, ""
    if "A100" in g:
        if "40GB" in g.replace(" ", ""):
            return "a100_sxm4_40gb", True, ""
        if "80GB" in g.replace(" ", ""):
            return "a100_sxm4_80gb", True, ""
        return "a100_sxm4_80gb", False, "A100 memory size not stated: the 80 GB profile"
    if "V100" in g:
        size = re.search(r"(\d+)\s*GB", g)
        if size and size.group(1) != "32":
            return "v100_sxm2_32gb", False, (
                f"V100 {size.group(1)} GB: same chip as the 32 GB profile; fit verdict not "
                "compared"
            )  # fmt: skip
        note = "DGX-2 V100 (NVSwitch) on the DGX-1 profile" if "DGX-2" in g else ""
        return "v100_sxm2_32gb", size is not None, note
    return None


# Clusters whose inter-node network differs from the GPU profile's default (DGX-style InfiniBand)
# and has its own profile, fitted to that cluster's published collective benchmarks: (GPU profile,
# word in hardware.inter_node, network profile, why).
NETWORK_PROFILES = (
    ("h100_sxm5_80gb", "EFA", "h100_sxm5_80gb_efa",
     "inter_node EFA: h100_sxm5_80gb_efa, whose NIC rate and per-step latency are fitted to the "
     "Ultra-Scale Playbook's all-gather/reduce-scatter bus bandwidths on its EFA cluster (2-64 "
     "nodes, 256 MB) instead of the DGX InfiniBand figures"),
)  # fmt: skip


def network_profile(profile: str, inter_node: Any) -> tuple[str, str]:
    """(profile, note): the cluster-specific profile when ``hardware.inter_node`` names a network
    that has one (``EFA`` on H100: ``h100_sxm5_80gb_efa``), else ``profile`` and no note."""
    words = set(re.findall(r"[A-Za-z0-9]+", str(inter_node or "").upper()))
    for gpu_profile_name, word, net_profile, why in NETWORK_PROFILES:
        if profile == gpu_profile_name and word in words:
            return net_profile, why
    return profile, ""


def map_precision(text: str | None) -> str | None:
    """``fp16 mixed precision`` -> fp16, ``amp_bf16 (...)`` -> amp_bf16, ``fp16 AMP`` ->
    amp_fp16, ``bf16 (FSDP mixed_precision=PURE)`` -> bf16 (16-bit weights, fp32 sharded
    master), ``fp32``; None when simtrain has no such precision (fp8, NF4 storage)."""
    if text is None:
        return None
    t = str(text).lower()
    if "fp8" in t or "nf4" in t or "4-bit" in t or "not stated" in t:
        return None
    if t.startswith("amp_bf16"):
        return "amp_bf16"
    if t.startswith("amp_fp16") or ("fp16" in t and "amp" in t):
        return "amp_fp16"
    if "bf16" in t:
        return "bf16"
    if "fp16" in t or "16-bit" in t:
        return "fp16"
    if t.startswith("fp32"):
        return "fp32"
    return None


def map_recompute(text: str | None) -> str | None:
    if text is None:
        return None
    t = str(text).lower()
    if t.startswith("selective"):
        return "selective"
    if t.startswith(("full", "re-materialization", "rematerialization")):
        return "full"
    if t.startswith("none"):
        return "none"
    return None


def map_optimizer(text: str | None) -> str:
    t = str(text or "adam").lower()
    if "8bit" in t or "8-bit" in t:
        return "adam8bit"
    if "adafactor" in t:
        return "adafactor"
    if "adamw" in t:
        return "adamw"
    if "sgd" in t:
        return "sgd_momentum" if "momentum" in t else "sgd"
    return "adam"


def map_schedule(text: str | None, pp: int, v: int) -> str:
    t = str(text or "").lower()
    if pp == 1:
        return "1f1b"
    if "interleaved" in t and v > 1:
        return "interleaved"
    if "gpipe" in t:
        return "gpipe"
    if "zb" in t or "zero bubble" in t:
        return "zb_h1"
    return "1f1b"


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


SHAPE_PASSTHROUGH = ("kv_heads", "ffn_hidden", "tied_embeddings", "mlp", "positions", "bias",
                     "qkv_bias", "norm", "dropout", "flash_attention", "max_positions")  # fmt: skip
UNEXPRESSIBLE_KINDS = {
    "training_run_relative": "relative throughput (normalised to another run of its table), "
    "not an absolute measurement",
    "memory_capacity": "largest-trainable-model measurement: needs a family of model shapes "
    "to search over, not one scenario",
    "layer_microbenchmark": "per-layer kernel timing, not a training step",
    "collective_benchmark": "collective bandwidth benchmark, not a training step",
}
# Megatron-LM's "local" DDP all-reduces one contiguous gradient buffer after the backward
# (arguments.py --DDP-impl local, the default until 2022): a bucket larger than any gradient.
ONE_BUCKET_MB = 1e9
OOM_OUTCOMES = ("crashed_or_oom", "oom", "out_of_memory", "crashed")


def _skip(rec: Record, reason: str) -> SkipReason:
    return SkipReason(rec.id, rec.source_key, reason)


def translate(rec: Record) -> Translation | SkipReason:
    """The scenario of a record with the assumptions made, or why it cannot be expressed."""
    if rec.kind in UNEXPRESSIBLE_KINDS:
        return _skip(rec, f"kind {rec.kind}: {UNEXPRESSIBLE_KINDS[rec.kind]}")
    if rec.kind != "training_run":
        return _skip(rec, f"unknown kind {rec.kind!r}")
    conv = convention(rec.source_key)
    notes: list[str] = []
    fc = rec.measured.get("flops_convention")
    if fc is not None and fc not in FLOP_CONVENTIONS:
        return _skip(rec, f"measured.flops_convention {fc!r}: not one of "
                          f"{', '.join(FLOP_CONVENTIONS)}")  # fmt: skip
    m, t, p, hw = rec.model, rec.training, rec.parallelism, rec.hardware

    gpu = hw.get("gpu")
    prof = gpu_profile(str(gpu)) if gpu else None
    if prof is None:
        return _skip(rec, f"hardware {gpu!r}: no simtrain hardware profile")
    profile, capacity_known, hw_note = prof
    if hw_note:
        notes.append(hw_note)
    profile, net_note = network_profile(profile, hw.get("inter_node"))
    if net_note:
        notes.append(net_note)

    missing = [k for k in ("layers", "hidden", "heads", "seq_len") if _int(m.get(k)) is None]
    if missing:
        return _skip(rec, f"model shape not reported: {', '.join(missing)}")
    vocab = _int(m.get("vocab"))
    if vocab is None:
        if conv.vocab_default is None:
            return _skip(rec, "model shape not reported: vocab")
        vocab = conv.vocab_default
        notes.append(f"vocab not reported: {vocab} (the source's tokenizer, padded)")
    seq = int(m["seq_len"])
    model: dict[str, Any] = {**conv.architecture}
    model.update({"layers": int(m["layers"]), "hidden": int(m["hidden"]),
                  "heads": int(m["heads"]), "vocab": vocab})  # fmt: skip
    for k in SHAPE_PASSTHROUGH:
        if k in m and m[k] is not None:
            model[k] = m[k]
    model["max_positions"] = max(seq, _int(model.get("max_positions")) or 0)
    if "ffn_hidden" not in m:
        notes.append("ffn_hidden not reported: 4·hidden")

    # Layout.
    tp = _int(p.get("tp")) or 1
    pp = _int(p.get("pp")) or 1
    n = _int(hw.get("num_gpus"))
    dp = _int(p.get("dp"))
    if dp is None:
        if n is None:
            return _skip(rec, "neither parallelism.dp nor hardware.num_gpus reported")
        if n % (tp * pp):
            return _skip(rec, f"num_gpus {n} is not a multiple of tp x pp = {tp * pp}")
        dp = n // (tp * pp)
        notes.append(f"dp = num_gpus / (tp·pp) = {dp}")
    if n is not None and n != tp * pp * dp:
        return _skip(rec, f"num_gpus {n} != tp x pp x dp = {tp} x {pp} x {dp}")
    n = tp * pp * dp

    # Batch.
    B = _int(t.get("global_batch"))
    if B is None and _int(t.get("global_batch_tokens")) is not None:
        tokens = int(t["global_batch_tokens"])
        if tokens % seq == 0:
            B = tokens // seq
            notes.append(f"global batch = {tokens:,} tokens / seq_len = {B}")
    if B is None:
        return _skip(rec, "global batch not reported")
    b = _int(t.get("micro_batch"))
    if b is None:
        if pp == 1:
            b = B // dp
            notes.append(f"micro-batch not reported: global_batch / dp = {b} (one micro-batch "
                         "per replica, no gradient accumulation)")  # fmt: skip
        else:
            b = 1
            notes.append("micro-batch not reported: 1 (pipeline parallel)")
    ga = _int(t.get("grad_accum"))
    if ga is not None and b * dp * ga != B:
        notes.append(f"grad_accum x micro_batch x dp != global_batch (= {ga} x {b} x {dp} vs {B})")

    precision = map_precision(t.get("precision"))
    if precision is None:
        if t.get("precision") is None:
            return _skip(rec, "precision not reported")
        return _skip(rec, f"precision {t.get('precision')!r}: not a simtrain precision "
                          f"({', '.join(PRECISIONS)})")  # fmt: skip
    if precision in conv.precision_map:
        precision, why = conv.precision_map[precision]
        notes.append(why)
    if "fp32 grad accum" in str(t.get("precision", "")).lower() and precision == "bf16":
        precision = "bf16_fp32_grads"
        notes.append("the record says fp32 gradient accumulation: bf16_fp32_grads (an fp32 "
                     "gradient buffer next to the bf16 gradients, 4 B/param more)")  # fmt: skip
    recompute = map_recompute(t.get("recompute"))
    if recompute is None:
        if t.get("recompute") is not None:
            return _skip(rec, f"recompute {t.get('recompute')!r}: not none | selective | full")
        recompute = conv.recompute_default
        notes.append(f"recompute not reported: {conv.recompute_note or recompute}")
    if str(t.get("recompute", "")).lower().startswith("none (assumed"):
        notes.append("recompute none assumed by the record")
    optimizer = map_optimizer(t.get("optimizer"))
    if t.get("optimizer") is None:
        notes.append("optimizer not reported: Adam")
    if conv.cross_entropy_note:
        notes.append(conv.cross_entropy_note)
    if t.get("activation_cpu_offload"):
        return _skip(rec, "activation CPU offload is not modelled")

    zero = _int(p.get("zero_stage")) or 0
    sharding = str(p.get("fsdp_sharding", "")).upper()
    if sharding == "SHARD_GRAD_OP":
        zero = 2
        notes.append("FSDP SHARD_GRAD_OP = ZeRO-2")
    elif sharding == "FULL_SHARD":
        zero = 3
    if p.get("offload"):
        return _skip(rec, f"offload {p.get('offload')!r} is not modelled for this layout")
    v = _int(p.get("virtual_stages")) or 1
    schedule = map_schedule(p.get("schedule"), pp, v)
    if pp > 1 and p.get("schedule") is None:
        notes.append("pipeline schedule not reported: 1F1B")
    if "interleaved" in str(p.get("schedule", "")).lower() and v == 1 and pp > 1:
        notes.append("interleaving degree not reported or 1: plain 1F1B")
    if schedule != "interleaved":
        v = 1
    sp = bool(p.get("sequence_parallel")) and tp > 1
    ddp = str(p.get("ddp_impl") or conv.ddp_default)
    if ddp == "local" and not p.get("ddp_impl"):
        notes.append("DDP implementation not reported: Megatron's default 'local' (one "
                     "all-reduce of the contiguous gradient buffer after the backward)")  # fmt: skip

    data = {
        "name": rec.id,
        "model": model,
        "hardware": profile,
        "training": {"seq_len": seq, "global_batch": B, "micro_batch": b,
                     "precision": precision, "optimizer": optimizer, "recompute": recompute,
                     "cross_entropy": conv.cross_entropy},
        "parallelism": {"dp": dp, "tp": tp, "pp": pp, "schedule": schedule,
                        "virtual_stages": v, "zero_stage": zero, "sequence_parallel": sp,
                        "layer_split": conv.layer_split if v == 1 else "uniform"},
    }  # fmt: skip
    if ddp == "local":  # one bucket: the whole gradient buffer, reduced after the backward
        data["parallelism"]["bucket_mb"] = ONE_BUCKET_MB
    if conv.zero3_max_live_params and zero >= 3:
        data["parallelism"]["zero3_max_live_params"] = conv.zero3_max_live_params
        notes.append(conv.zero3_note)
    try:
        sc = parse_scenario(data, rec.id)
    except SimtrainError as exc:
        return _skip(rec, f"layout not expressible: {str(exc).split(': ', 1)[-1]}")
    pb = m.get("params_b")
    if isinstance(pb, int | float) and pb > 0:
        ours = sc.model.total_params() / 1e9
        if abs(ours / pb - 1) > 0.03:
            notes.append(f"simtrain's parameter count differs from params_b by > 3 % (= {ours:.3g} "
                         f"vs {pb})")  # fmt: skip
    return Translation(rec, sc, tuple(notes), capacity_known)


def record_to_scenario(rec: Record) -> Scenario | SkipReason:
    """The :class:`Scenario` of a record, or a :class:`SkipReason` saying why it cannot be
    expressed (:func:`translate` also returns the assumptions made)."""
    tr = translate(rec)
    return tr if isinstance(tr, SkipReason) else tr.scenario


# ---------------------------------------------------------------------------------------------
# Measured values


def measured_values(rec: Record, sc: Scenario) -> dict[str, float | bool]:
    """The metrics of a record simtrain can predict, in its units (memory in bytes)."""
    x = rec.measured
    n = sc.parallelism.gpus
    seq = sc.training.seq_len
    out: dict[str, float | bool] = {}

    def num(key: str) -> float | None:
        v = x.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v)

    if (v := num("step_time_s")) is not None and v > 0:
        out["step_time_s"] = v
    if (v := num("tokens_per_s")) is not None and v > 0:
        out["tokens_per_s"] = v
    elif (v := num("tokens_per_s_per_gpu")) is not None and v > 0:
        out["tokens_per_s"] = v * n
    elif (v := num("samples_per_s")) is not None and v > 0:
        out["tokens_per_s"] = v * seq
    if (v := num("tflops_per_gpu")) is not None and v > 0:
        out["tflops_per_gpu"] = v
    elif (v := num("model_tflops_per_gpu")) is not None and v > 0:
        out["tflops_per_gpu"] = v
    for k in ("mfu", "hfu"):
        if (v := num(k)) is not None and v > 0:
            out[k] = v
    gb = record_convention(rec).memory_gb_unit
    for key, unit in (("peak_mem_gb", gb), ("peak_mem_gib", GIB), ("peak_mem_mib", MIB)):
        if (v := num(key)) is not None and v > 0:
            out["peak_memory_bytes"] = v * unit
            break
    outcome = str(x.get("outcome", "")).lower()
    out["fits"] = outcome not in OOM_OUTCOMES
    return out


# ---------------------------------------------------------------------------------------------
# FLOP conventions (formulas.md §1)


def source_flops(sc: Scenario, conv: SourceConvention, kind: str) -> float:
    """FLOPs per step in a source's convention. ``kind``: ``tflops`` (what its TFLOP/s count),
    ``model`` (MFU numerator) or ``hardware`` (HFU numerator)."""
    m, t = sc.model, sc.training
    args = (t.global_batch, t.seq_len, m.layers, m.hidden, m.vocab)
    f = conv.flops
    if f == "megatron_eq3":
        return eq3_flops(*args) if kind in ("tflops", "hardware") else eq7_flops(*args)
    if f == "korthikanti":
        if kind == "model":
            return eq7_flops(*args)
        return {"full": eq3_flops, "selective": eq8_flops}.get(t.recompute, eq7_flops)(*args)
    if f == "mosaicml":
        return mosaicml_flops(sc, hardware=kind == "hardware")
    if f == "nanotron":
        return nanotron_flops(sc)
    from simtrain.costs.compute import model_flops_per_step
    from simtrain.report.metrics import hardware_flops_per_step

    return model_flops_per_step(sc) if kind == "model" else hardware_flops_per_step(sc)


# ---------------------------------------------------------------------------------------------
# Predictions


def _cache_key(sc: Scenario) -> Scenario:
    return replace(sc, name="", source="")


class _Predictor:
    """Memory reports and step times, each computed once per distinct scenario."""

    def __init__(self) -> None:
        self.memory: dict[Scenario, MemoryReport] = {}
        self.times: dict[Scenario, float] = {}

    def memory_report(self, sc: Scenario) -> MemoryReport:
        key = _cache_key(sc)
        if key not in self.memory:
            self.memory[key] = estimate_memory(key)
        return self.memory[key]

    def step_time(self, sc: Scenario) -> float:
        key = _cache_key(sc)
        if key not in self.times:
            self.times[key] = predicted_step_time(key)
        return self.times[key]

    def precompute_times(self, translations: list[Translation], workers: int | None) -> None:
        """Simulate the distinct scenarios whose records measured a timing metric, in parallel
        worker processes (results are identical to serial runs: the engine is deterministic)."""
        keys: list[Scenario] = []
        for tr in translations:
            if any(k in tr.record.measured for k in TIMING_KEYS):
                key = _cache_key(tr.scenario)
                if key not in self.times and key not in keys:
                    keys.append(key)
        n = workers if workers is not None else _default_workers()
        if n <= 1 or len(keys) < 8:
            return  # computed lazily, serially
        keys.sort(key=_simulation_cost, reverse=True)  # longest first: better load balance
        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:  # pragma: no cover - platforms without fork
            return
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as ex:
            for key, t in zip(keys, ex.map(predicted_step_time, keys), strict=True):
                self.times[key] = t


# measured keys that need a simulated step time
TIMING_KEYS = ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "samples_per_s",
               "tflops_per_gpu", "model_tflops_per_gpu", "mfu", "hfu")  # fmt: skip


def _default_workers() -> int:
    env = os.environ.get("SIMTRAIN_WORKERS")
    if env and env.isdigit():
        return int(env)
    return min(4, os.cpu_count() or 1)


def _simulation_cost(sc: Scenario) -> int:
    p = sc.parallelism
    m = p.pp if p.schedule == "interleaved" else 1
    return p.pp * p.virtual_stages * m * (1 + sc.model.layers // p.pp)


def _with_microbatches(sc: Scenario, m: int) -> Scenario:
    t, p = sc.training, sc.parallelism
    return replace(sc, training=replace(t, global_batch=m * t.micro_batch * p.dp))


def predicted_step_time(sc: Scenario) -> float:
    """Simulated step time in seconds. The step time of the 1F1B, GPipe and interleaved
    schedules (and of plain gradient accumulation, pp = 1) is affine in the number of
    micro-batches m: T(m) = T(m₁) + (m − m₁)·(T(m₂) − T(m₁))/(m₂ − m₁), from m = 1 on (from
    m = pp for the interleaved schedule, which needs m to be a multiple of pp). Long steps are
    therefore simulated at m₁ = 1, m₂ = 2 (interleaved: pp, 2·pp) and extrapolated; the result
    equals the full simulation to the nanosecond (``tests/test_validate.py``)."""
    p = sc.parallelism
    m = sc.num_microbatches
    m1 = p.pp if p.schedule == "interleaved" and p.pp > 1 else 1
    m2 = 2 * m1
    if m <= m2 or (p.pp > 1 and p.schedule not in AFFINE_SCHEDULES):
        return simulate_scenario(sc).metrics.step_time_s
    t1 = simulate_scenario(_with_microbatches(sc, m1)).metrics.step_time_s
    t2 = simulate_scenario(_with_microbatches(sc, m2)).metrics.step_time_s
    return t1 + (m - m1) * (t2 - t1) / (m2 - m1)


def _error_pct(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas


def compare_record(tr: Translation, predictor: _Predictor | None = None) -> list[Comparison]:
    """Predict every metric the record measured and compare."""
    pr = predictor or _Predictor()
    rec, sc = tr.record, tr.scenario
    conv = record_convention(rec)
    meas = measured_values(rec, sc)
    if not tr.capacity_known:
        meas.pop("fits", None)
    out: list[Comparison] = []
    mem = pr.memory_report(sc) if ("peak_memory_bytes" in meas or "fits" in meas) else None
    T = pr.step_time(sc) if any(k in meas for k in TIME_METRICS) else None
    n = sc.parallelism.gpus
    hw = sc.hardware
    peak = hw.compute_peak(PRECISIONS[sc.training.precision].compute_dtype)
    for metric in METRICS:
        if metric not in meas:
            continue
        x = meas[metric]
        pred: float | bool
        if metric == "fits":
            assert mem is not None
            pred = mem.fits
            out.append(Comparison(rec.id, rec.source_key, metric, bool(x), pred,
                                  0.0 if pred == x else 100.0))  # fmt: skip
            continue
        if metric == "peak_memory_bytes":
            assert mem is not None
            if conv.memory_stage is not None and conv.memory_stage < len(mem.stages):
                pred = float(mem.stages[conv.memory_stage].peak_memory_bytes)
            else:
                pred = float(mem.peak_memory_bytes)
            if not conv.memory_includes_context:
                pred -= sc.hardware.cuda_context_bytes
        else:
            assert T is not None
            if metric == "step_time_s":
                pred = T
            elif metric == "tokens_per_s":
                pred = sc.tokens_per_step / T
            elif metric == "tflops_per_gpu":
                kind = "model" if "model_tflops_per_gpu" in rec.measured else "tflops"
                if "tflops_per_gpu" in rec.measured:
                    kind = "tflops"
                pred = source_flops(sc, conv, kind) / (T * n) / 1e12
            elif metric == "mfu":
                pred = source_flops(sc, conv, "model") / (T * n * peak)
            else:  # hfu
                pred = source_flops(sc, conv, "hardware") / (T * n * peak)
        out.append(Comparison(rec.id, rec.source_key, metric, float(x), float(pred),
                              _error_pct(float(pred), float(x))))  # fmt: skip
    return out


def summarize(comparisons: list[Comparison] | tuple[Comparison, ...]) -> tuple[Summary, ...]:
    """Per (source, metric): n, MAPE % and max |error| %; for ``fits`` the share wrong (%)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in comparisons:
        groups[(c.source, c.metric)].append(abs(c.error_pct))
    order = {m: i for i, m in enumerate(METRICS)}
    out = []
    for (src, metric), errs in sorted(groups.items(), key=lambda kv: (kv[0][0],
                                                                       order[kv[0][1]])):  # fmt: skip
        out.append(Summary(src, metric, len(errs), sum(errs) / len(errs), max(errs)))
    return tuple(out)


def validate(
    path: str | Path | None = None, only_source: str | None = None, workers: int | None = None
) -> ValidationResult:
    """Validate every record of ``path`` (default ``measured/published_runs.yaml``);
    ``only_source`` keeps the records of one source key. Step times are simulated in
    ``workers`` processes (default: ``SIMTRAIN_WORKERS`` or the CPU count, at most 4)."""
    t0 = time.perf_counter()
    p = resolve_path(path)
    records = load_records(p)
    if only_source is not None:
        keys = sorted({r.source_key for r in records})
        records = [r for r in records if r.source_key == only_source]
        if not records:
            raise ConfigError("--only", "source", "no record of this source", only_source,
                              ", ".join(keys))  # fmt: skip
    pr = _Predictor()
    translated = [translate(rec) for rec in records]
    pr.precompute_times([tr for tr in translated if isinstance(tr, Translation)], workers)
    comparisons: list[Comparison] = []
    skipped: list[SkipReason] = []
    assumptions: dict[str, tuple[str, ...]] = {}
    for rec, tr in zip(records, translated, strict=True):
        if isinstance(tr, SkipReason):
            skipped.append(tr)
            continue
        rows = compare_record(tr, pr)
        if not rows:
            skipped.append(_skip(rec, "no measured value simtrain predicts"))
            continue
        comparisons.extend(rows)
        assumptions[rec.id] = tr.assumptions
    return ValidationResult(str(p), tuple(comparisons), tuple(skipped), summarize(comparisons),
                            assumptions, time.perf_counter() - t0)  # fmt: skip


def resolve_path(path: str | Path | None) -> Path:
    if path is not None:
        return Path(path)
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else PACKAGED_PATH


# ---------------------------------------------------------------------------------------------
# Output: table, CSV, scatter plot, command


def _fmt(metric: str, v: float | bool) -> str:
    if isinstance(v, bool):
        return "fits" if v else "OOM"
    if metric == "peak_memory_bytes":
        return f"{v / GIB:,.2f} GiB"
    if metric in ("mfu", "hfu"):
        return f"{100 * v:.1f} %"
    if metric == "step_time_s":
        return f"{v:,.3f} s"
    if metric == "tokens_per_s":
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def format_table(res: ValidationResult) -> str:
    """Per-record rows (run, metric, measured, predicted, error %), the skipped records with
    their reasons, the assumptions per source, and the summary per source and metric."""
    w = max([len(c.id) for c in res.comparisons] + [24])
    lines = [f"validation of {res.path}: {len(res.comparisons)} comparisons, "
             f"{len(res.skipped)} records skipped"]  # fmt: skip
    lines.append(f"{'run':<{w}}  {'metric':<18}{'measured':>16}{'predicted':>16}{'error %':>10}")
    for c in res.comparisons:
        err = (
            ("ok" if c.error_pct == 0 else "WRONG") if c.metric == "fits" else f"{c.error_pct:+.1f}"
        )
        lines.append(f"{c.id:<{w}}  {c.metric:<18}{_fmt(c.metric, c.measured):>16}"
                     f"{_fmt(c.metric, c.predicted):>16}{err:>10}")  # fmt: skip
    if res.skipped:
        lines.append("")
        lines.append("skipped (not expressible):")
        for s in res.skipped:
            lines.append(f"  {s.id}: {s.reason}")
    notes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    src = {c.id: c.source for c in res.comparisons}
    for rid, ass in res.assumptions.items():
        for a in ass:
            notes[src.get(rid, "?")][re.sub(r"= \d(?:[\d,. xvs]*\d)?", "= #", a)] += 1
    if notes:
        lines.append("")
        lines.append("assumptions (defaults where a record is silent; # = per-record value):")
        for s in sorted(notes):
            for a, k in sorted(notes[s].items()):
                lines.append(f"  {s} ({k} records): {a}")
    for key, conv in sorted(SOURCES.items()):
        if conv.memory_note and any(c.source == key and c.metric == "peak_memory_bytes"
                                    for c in res.comparisons):  # fmt: skip
            lines.append(f"  {key}: {conv.memory_note}")
    lines.append("")
    lines.append(summary_table(res))
    return "\n".join(lines)


def summary_table(res: ValidationResult) -> str:
    """Per source and metric: n, MAPE, max |error| and the median signed error (bias); for
    ``fits`` the share of right verdicts."""
    med: dict[tuple[str, str], float] = {}
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in res.comparisons:
        groups[(c.source, c.metric)].append(c.error_pct)
    for k, v in groups.items():
        med[k] = statistics.median(v)
    lines = [f"{'source':<22}{'metric':<19}{'n':>5}{'MAPE %':>9}{'max %':>9}{'median %':>10}"]
    for s in res.summary:
        if s.metric == "fits":
            lines.append(f"{s.source:<22}{s.metric:<19}{s.n:>5}"
                         f"{'':>28}  {100 * s.share_correct:.1f} % correct")  # fmt: skip
        else:
            lines.append(f"{s.source:<22}{s.metric:<19}{s.n:>5}{s.mape_pct:>9.1f}"
                         f"{s.max_error_pct:>9.1f}{med[(s.source, s.metric)]:>+10.1f}")  # fmt: skip
    return "\n".join(lines)


def write_csv(res: ValidationResult, path: str | Path) -> Path:
    """One row per comparison, then one per skipped record (metric ``skipped``, reason in
    ``note``); assumptions of a record in ``note``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "source", "metric", "measured", "predicted", "error_pct", "note"])
        for c in res.comparisons:
            w.writerow([c.id, c.source, c.metric, c.measured, c.predicted,
                        f"{c.error_pct:.4f}", "; ".join(res.assumptions.get(c.id, ()))])  # fmt: skip
        for s in res.skipped:
            w.writerow([s.id, s.source, "skipped", "", "", "", s.reason])
    return p


SOURCE_COLOURS = ("#4C78C8", "#F28E2B", "#3FA45B", "#C0392B", "#8E44AD", "#8C564B",
                  "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF")  # fmt: skip
METRIC_LABELS = {
    "step_time_s": "step time (s)",
    "tokens_per_s": "tokens/s",
    "tflops_per_gpu": "TFLOP/s per GPU (source's convention)",
    "mfu": "MFU",
    "hfu": "HFU",
    "peak_memory_bytes": "peak memory (GiB)",
}


def scatter_plot(res: ValidationResult, path: str | Path) -> Path:
    """Predicted vs measured, one log-log panel per numeric metric, y = x dashed, colour by
    source (matplotlib Agg canvas; no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from simtrain.report.plot import save_png

    metrics = [m for m in METRICS if m != "fits" and any(c.metric == m for c in res.comparisons)]
    sources = sorted({c.source for c in res.comparisons if c.metric in metrics})
    colour = {s: SOURCE_COLOURS[i % len(SOURCE_COLOURS)] for i, s in enumerate(sources)}
    cols = min(3, max(1, len(metrics)))
    rows = max(1, -(-len(metrics) // cols))
    fig = Figure(figsize=(4.2 * cols, 4.0 * rows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        scale = 1 / GIB if metric == "peak_memory_bytes" else 1.0
        pts = [c for c in res.comparisons if c.metric == metric]
        lo = min(min(c.measured, c.predicted) for c in pts) * scale  # type: ignore[type-var]
        hi = max(max(c.measured, c.predicted) for c in pts) * scale  # type: ignore[type-var]
        for s in sources:
            xs = [float(c.measured) * scale for c in pts if c.source == s]
            ys = [float(c.predicted) * scale for c in pts if c.source == s]
            if xs:
                ax.scatter(xs, ys, s=14, color=colour[s], label=s, alpha=0.8, linewidths=0)
        ax.plot([lo / 1.3, hi * 1.3], [lo / 1.3, hi * 1.3], "--", color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(lo / 1.3, hi * 1.3)
        ax.set_ylim(lo / 1.3, hi * 1.3)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10)
        ax.set_xlabel("measured", fontsize=9)
        ax.set_ylabel("predicted", fontsize=9)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    if metrics:
        handles = [fig.axes[0].scatter([], [], color=colour[s], s=14, label=s) for s in sources]
        fig.legend(handles, sources, loc="lower center", ncol=min(len(sources), 6), fontsize=9)
    fig.suptitle("simtrain: predicted vs measured (y = x dashed)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return save_png(fig, path)


def validate_command(path: str | None, as_json: bool, only: str | None, out_dir: str) -> str:
    """What ``simtrain validate [PATH] [--json] [--only SOURCE] [--out DIR]`` prints; writes
    ``validate.csv`` and ``validate_scatter.png`` into ``out_dir``."""
    from simtrain.report.tables import dumps

    res = validate(path, only)
    out = Path(out_dir)
    csv_path = write_csv(res, out / "validate.csv")
    png = scatter_plot(res, out / "validate_scatter.png")
    if as_json:
        return dumps(res.to_json())
    return format_table(res) + f"\n\nwrote {csv_path}, {png} ({res.elapsed_s:.1f} s)\n"


__all__ = [
    "Comparison", "Record", "SkipReason", "Summary", "Translation", "ValidationResult",
    "compare_record", "format_table", "load_records", "record_to_scenario", "scatter_plot",
    "source_key", "summarize", "translate", "validate", "validate_command", "write_csv",
]  # fmt: skip
