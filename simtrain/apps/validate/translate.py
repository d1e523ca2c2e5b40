"""Records -> scenarios. Every record is read here (hardware profile, model shape, layout degrees,
batch, precision and recompute texts, with the source convention's defaults where it is silent;
what simtrain cannot express is a :class:`~simtrain.apps.validate.records.SkipReason`). A record
of a family with an importer (``native.IMPORTER_OF``) is then written as its framework's own
configuration and read by that importer, the code ``simtrain import`` runs (``native.py``); the
other families (llm-foundry FSDP, Transformers, BLOOM's Megatron-DeepSpeed and the papers'
tables: listed in ``native.py``) are mapped to the scenario here. A record that carries its
run's own arguments (``Record.native``) is read from them: its sections only name the GPU
count and must agree with the arguments. Defaults and readings
are listed as assumptions."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from simtrain.apps.importers.common import ONE_BUCKET_MB, grad_bucket_mb
from simtrain.apps.importers.deepspeed import REDUCE_BUCKET_ELEMENTS
from simtrain.apps.importers.megatron import OVERLAP_FLAGS
from simtrain.apps.validate.conventions import (
    FLOP_CONVENTIONS,
    SourceConvention,
    convention_for,
    runtime_for,
)
from simtrain.apps.validate.errata import ErratumMismatch, apply_errata
from simtrain.apps.validate.job_network import job_hardware, read_job_network
from simtrain.apps.validate.native import NativeConfig, importer_of, through_importer
from simtrain.apps.validate.records import (
    FRACTION_METRICS,
    NUMERIC_MEASURED_KEYS,
    Record,
    SkipReason,
    record_int,
    skip,
)
from simtrain.apps.validate.splits import ends_one_fewer, pipeline_split
from simtrain.errors import ConfigError, SimtrainError
from simtrain.layout.step import resolve
from simtrain.schedules.generators import torch_group_override
from simtrain.schedules.registry import runs_groups
from simtrain.spec.hardware import load_hardware
from simtrain.spec.model import PRESETS, ModelSpec, find_preset, find_preset_by_size
from simtrain.spec.moe_layout import MOE_ONLY_FIELDS
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.scenario import (
    LORA_TARGETS,
    PRESET_SHAPE_KEYS,
    RECOMPUTE,
    Scenario,
    parse_scenario,
)
from simtrain.units import MIB


@dataclass(frozen=True, slots=True)
class Translation:
    """A record as a scenario, with the defaults and readings it needed."""

    record: Record
    scenario: Scenario
    assumptions: tuple[str, ...]
    capacity_known: bool = True  # the record names the GPU's memory size (fit verdict usable)
    # the framework configuration the scenario was imported from (native.IMPORTER_OF families)
    native: NativeConfig | None = None


def gpu_profile(gpu: str) -> tuple[str, bool, str] | None:
    """(profile name, memory size known, note) for a GPU name such as ``A100-SXM4-80GB``,
    ``H100 80GB`` or ``V100 32GB (DGX-2)``; None when no profile covers it. The memory size is
    known where the name states the profile's (or the profile's part has one size). The A100 and
    H100 PCIe cards and the H100 NVL have profiles of their own, which the A800 and H800 PCIe
    cards (the same chips) take with a note; another PCIe or NVL part (H200 NVL) on the profile
    of its SXM board only adds a note."""
    g = gpu.upper()
    # the name itself, before any parenthesised remark ("H100 80GB (cluster h800-prod)")
    head = g.split("(", 1)[0]
    for word, profile in (("GB300", "gb300_nvl72"), ("GB200", "gb200_nvl72"),
                          ("B300", "b300_288gb"), ("B200", "b200_180gb"),
                          ("MI325X", "mi325x_256gb"), ("MI355X", "mi355x_288gb")):  # fmt: skip
        if word in head:  # GB200 before B200: the name contains it
            return profile, True, ""
    # the H100 NVL is itself a PCIe card: "H100 NVL PCIe" is the NVL
    form = "NVL" if re.search(r"NVL(?![0-9A-Z])", head) else "PCIe" if "PCIE" in head else ""

    def part(profile: str, gpu: str = "") -> str:
        """The note of a PCIe or NVL part on a profile of the SXM board, after the GPU's name
        when given ('' on a PCIe one, or for an SXM part)."""
        if not form or load_hardware(profile).intra_node_kind == "pcie":
            return ""
        return (f"{gpu} " if gpu else "") + (
            f"{form} part: the SXM profile (its clocks, memory bandwidth and links are not "
            "modelled: predicted too fast)")  # fmt: skip

    size = re.search(r"(\d+)\s*GB", head)

    def on(profile: str, size_needed: bool, note: str = "") -> tuple[str, bool, str]:
        """``profile`` for this name: its memory size known where the name states the
        profile's (or, ``size_needed`` False, the part comes in one size); the notes."""
        nominal = profile.rsplit("_", 1)[1][:-2]  # the profile's memory: "..._80gb" -> "80"
        known = size.group(1) == nominal if size else not size_needed
        what = f"{size.group(1)} GB" if size else "memory size not stated"
        size_note = "" if known else f"{what}: the {nominal} GB profile; fit verdict not compared"
        return profile, known, "; ".join(x for x in (size_note, part(profile), note) if x)

    def by_name(entries: tuple[tuple[str, str, bool], ...]) -> tuple[str, bool, str] | None:
        """The first (pattern, profile, size needed) whose pattern the name matches."""
        return next((on(p, need) for word, p, need in entries if re.search(word, head)), None)

    # the export parts' PCIe cards are the A100 / H100 PCIe cards (their NVLink bridges, slower
    # than the originals', are not modelled on either); the A800 PCIe came in 40 and 80 GB
    if form == "PCIe":
        for word, chip in (("H800", "H100"), ("A800", "A100")):
            if re.search(rf"\b{word}\b", head):
                big = "40" if chip == "A100" and size and size.group(1) == "40" else "80"
                return on(
                    f"{chip.lower()}_pcie_{big}gb",
                    chip == "A100",
                    f"{word} PCIe: the {chip} PCIe card's profile (same chip)",
                )
    named = by_name(((r"\bH800\b", "h800_sxm5_80gb", True),
                     (r"\bA800\b", "a800_sxm4_80gb", True),
                     (r"\bMI300X\b", "mi300x_192gb", False),
                     (r"\bL40S\b", "l40s_48gb", False)))  # fmt: skip
    if named:
        return named
    if "GH200" in head:  # Grace Hopper: an H100/H200-class GPU on a 4-GPU node
        return "h200_141gb", False, (
            "GH200: the H200 profile (its GPU; the memory size and bandwidth of its 96 GB "
            "HBM3 part, the host link and the 4-GPU nodes of Grace Hopper are not modelled); fit "
            "verdict not compared"
        )  # fmt: skip
    if "H200" in head:
        return "h200_141gb", True, part("h200_141gb", "H200")
    if "H100" in head:
        if form:  # the PCIe card (80 GB) or the NVL (94 GB), each of one memory size
            return by_name((("H100", "h100_pcie_80gb" if form == "PCIe" else "h100_nvl_94gb",
                             False),))  # fmt: skip
        if size and size.group(1) == "96" and "HBM2E" in head:
            return "h100_sxm5_96gb_hbm2e", True, ""  # Meta's Grand Teton part (torchtitan's)
        if size and size.group(1) != "80":
            return "h100_sxm5_80gb", False, (
                f"H100 {size.group(1)} GB: the 80 GB SXM5 profile (same chip; its HBM size, "
                "bandwidth and power limit are not modelled); fit verdict not compared"
            )  # fmt: skip
        return "h100_sxm5_80gb", "80" in head, ""
    if "A100" in head:
        board = "pcie" if form == "PCIe" else "sxm4"
        profile = f"a100_{board}_{'40' if size and size.group(1) == '40' else '80'}gb"
        if size is None or size.group(1) not in ("40", "80"):
            what = f"A100 {size.group(1)} GB" if size else "A100 memory size not stated"
            return profile, False, f"{what}: the 80 GB profile; fit verdict not compared"
        return profile, True, part(profile, "A100")
    if "V100" in g:
        other = size is not None and size.group(1) != "32"
        notes = (f"V100 {size.group(1)} GB: same chip as the 32 GB profile; fit verdict not "
                 "compared" if other and size else "",
                 "DGX-2 V100 (NVSwitch) on the DGX-1 profile" if "DGX-2" in g else "",
                 part("v100_sxm2_32gb", "V100"))  # fmt: skip
        return "v100_sxm2_32gb", size is not None and not other, "; ".join(x for x in notes if x)
    # the RTX 6000 Ada Generation (AD102), also written "RTX A6000 Ada" (no such card): not the
    # RTX A6000 (GA102) nor the Quadro RTX 6000 (Turing)
    if re.search(r"(?<![0-9])A?6000[\s-]*ADA\b", head):
        note = "A6000 Ada: the RTX 6000 Ada Generation's profile" if "A6000" in head else ""
        return on("rtx_6000_ada_48gb", False, note)
    # CDNA 2: one profile per GCD (each a ROCm device of 64 GB); ROCm names both parts
    # "AMD Instinct MI250X/MI250", read as the MI250X
    for word, prof in (("MI250X", "mi250x_gcd_64gb"), ("MI250", "mi250_gcd_64gb")):
        if re.search(rf"\b{word}\b", head):
            gcd = (
                f"{word}: one GCD per device (64 GB, half the package's rates); a GPU count "
                "in packages is twice as many devices"
            )
            if size and size.group(1) == "128":  # the package's memory: two 64 GB GCDs
                return prof, True, gcd
            got = on(prof, False)
            return got[0], got[1], "; ".join(x for x in (got[2], gcd) if x)
    # the smaller GPUs, after the datacenter names ("H100 80GB T4-cluster" is an H100); \b after
    # the digits: "L40" is not "L40S", "H20" not "H200", "A10" not "A100" or "A10G", "A40" not "A400"
    return by_name(((r"\bH20\b", "h20_96gb", True),  # 96 GB HBM3, and a later 141 GB HBM3e part
                    (r"\bL40\b", "l40_48gb", False),
                    (r"\bA10G\b", "a10g_24gb", False),
                    (r"\bA10\b", "a10_24gb", False),
                    (r"\bA40\b", "a40_48gb", False),
                    (r"(?<!\d)4090(?!\d)", "rtx4090_24gb", False),
                    (r"(?<!\d)3090(?!\d)(?![\s-]*TI)", "rtx3090_24gb", False),
                    (r"\bA6000\b(?![\s-]*ADA)", "rtx_a6000_48gb", False),
                    (r"\bL4\b", "l4_24gb", False),
                    (r"\bT4\b", "t4_16gb", False)))  # fmt: skip


# Boards of fewer GPUs than the GPU profile's node, without its NVSwitch, which have a profile of
# their own: (GPU profile, GPUs a node, board profile, why).
BOARD_PROFILES = (
    ("h200_141gb", 4, "h200_141gb_hgx4",
     "4 GPUs a node: h200_141gb_hgx4, the HGX H200 4-GPU board (NVSwitch is on the 8-GPU "
     "boards only): its GPUs linked directly, 150 GB/s a pair, no NVLink SHARP"),
)  # fmt: skip


def board_profile(profile: str, gpus_per_node: int | None, notes: list[str]) -> str:
    """The profile of the record's board (:data:`BOARD_PROFILES`) where its
    ``hardware.gpus_per_node`` names one, else ``profile``."""
    for gpu, per_node, board, why in BOARD_PROFILES:
        if profile == gpu and gpus_per_node == per_node:
            notes.append(why)
            return board
    return profile


# Clusters whose inter-node network differs from the GPU profile's default (DGX-style InfiniBand)
# and has its own profile, fitted to that cluster's published collective benchmarks: (GPU profile,
# word in hardware.inter_node, network profile, why).
NETWORK_PROFILES = (
    ("h100_sxm5_80gb", "EFA", "h100_sxm5_80gb_efa",
     "inter_node EFA: h100_sxm5_80gb_efa, whose NIC rate and per-step latency are fitted to the "
     "Ultra-Scale Playbook's all-gather/reduce-scatter bus bandwidths on its EFA cluster (2-64 "
     "nodes, 1 GiB) instead of the DGX InfiniBand figures"),
    *(("a100_sxm4_80gb", word, "a100_sxm4_80gb_opa",
       "inter_node Omni-Path (Jean Zay): a100_sxm4_80gb_opa, whose NIC rate is fitted to "
       "BigScience's all-reduce benchmark on those nodes (experiments/bandwidth/"
       "all_reduce_bench-a100-n4.txt: 4 nodes, 4e9 B, busbw 5.07 GB/s) instead of the DGX "
       "InfiniBand figures") for word in ("OPA", "OMNI")),
)  # fmt: skip


def network_profile(profile: str, inter_node: Any) -> tuple[str, str]:
    """(profile, note): the cluster-specific profile when ``hardware.inter_node`` names a network
    that has one (``EFA`` on H100: ``h100_sxm5_80gb_efa``; ``OPA`` on A100 80GB:
    ``a100_sxm4_80gb_opa``), else ``profile`` and no note."""
    words = set(re.findall(r"[A-Za-z0-9]+", str(inter_node or "").upper()))
    for gpu_profile_name, word, net_profile, why in NETWORK_PROFILES:
        if profile == gpu_profile_name and word in words:
            return net_profile, why
    return profile, ""


# Number formats simtrain has no training precision for: (pattern in the record's precision
# text, what it is): 4-bit storage (QLoRA's NF4, MXFP4 training); NVFP4 training is the
# nvfp4 precision (Transformer Engine's NVFP4BlockScaling).
UNEXPRESSIBLE_FORMATS = ((re.compile(r"nf4|4-bit|\bint4\b|mxfp4"), "4-bit weights"),)
NVFP4_TEXT = re.compile(r"nvfp4")
FP8_TEXT = re.compile(r"fp8|float8|e4m3|e5m2")
# FP8 texts and the recipe each names (spec/precision.py; costs/fp8.py cites the code):
# Transformer Engine's current scaling ("FP8-CS", Megatron-Bridge), MXFP8, torchao's rowwise and
# tensorwise float8 (torchtitan's "Float8 linears" default is dynamic tensorwise), and
# Transformer Engine's delayed scaling for the rest (Composer's amp_fp8, NeMo's "FP8").
FP8_RECIPES = (
    (re.compile(r"fp8-cs|current.scaling"), "fp8_current"),
    (re.compile(r"mxfp8|fp8[- _]?mx\b"), "mxfp8"),  # (Megatron-Bridge's tables: "FP8-MX")
    (re.compile(r"float8.*rowwise|rowwise.*float8"), "fp8_rowwise"),
    (re.compile(r"float8"), "fp8_tensorwise"),
    (FP8_TEXT, "fp8_delayed"),
)
# A bf16 record whose gradients accumulate in fp32 ("FP32 grad accumulation", "fp32 grads",
# "grads accumulated in fp32", nanotron's accumulate_grad_in_fp32).
_FP32_GRADS = re.compile(r"fp32 grad|grad\w* (?:accumulat\w* )?in fp32|accumulate_grad_in_fp32",
                         re.I)  # fmt: skip
# "fp16", "bf16", "fp32", "16-bit": the number format words the mapping knows.
_FORMAT_WORD = re.compile(r"\b(?:fp16|bf16|fp32|16-bit)\b|^amp_(?:bf16|fp16)")
UNSTATED = "16-bit format not stated"


def read_precision(text: str | None) -> tuple[str | None, str]:
    """(simtrain precision, "") for a record's precision text, or (None, why not). Every text
    maps to a precision or to a reason: an unknown format is never read as bf16.

    ``fp16 mixed precision`` -> fp16, ``amp_bf16 (...)`` -> amp_bf16, ``fp16 AMP`` / ``bf16 AMP``
    -> amp_fp16 / amp_bf16 (torch.autocast over fp32 weights), ``full bf16 (no AMP)`` ->
    bf16_pure (weights and optimizer states in bf16, no fp32 master), ``bf16 (...)`` -> bf16
    (16-bit weights, fp32 master), ``fp32``. The reason starts with :data:`UNSTATED` when the
    text names no format (``mixed precision``, ``not stated (bf16/fp16 mixed)``), and names the
    format when simtrain has none for it (FP8, 4-bit)."""
    if text is None:
        return None, "precision not reported"
    t = re.sub(r"\bbfloat16\b", "bf16", re.sub(r"\bfloat16\b", "fp16", str(text).lower()))
    t = re.sub(r"\bfloat32\b", "fp32", t)
    for pattern, what in UNEXPRESSIBLE_FORMATS:
        if pattern.search(t):
            return None, f"{what}: not a simtrain precision"
    if t.strip() in PRECISIONS:
        return t.strip(), ""
    if NVFP4_TEXT.search(t):
        return "nvfp4", ""
    if re.search(r"\bfp4\b", t):
        return None, "4-bit weights: not a simtrain precision (a 4-bit format other than NVFP4)"
    if FP8_TEXT.search(t):
        return next(name for pattern, name in FP8_RECIPES if pattern.search(t)), ""
    if "not stated" in t or not _FORMAT_WORD.search(t):
        return None, f"{UNSTATED}: no fp32, fp16, bf16 or 16-bit in the text"
    amp = re.search(r"\bamp\b", t) is not None and "no amp" not in t
    if t.startswith("amp_bf16") or ("bf16" in t and amp):
        return "amp_bf16", ""
    if t.startswith("amp_fp16") or ("fp16" in t and amp):
        return "amp_fp16", ""
    if "bf16" in t:
        return ("bf16_pure" if re.match(r"(?:full|pure) bf16", t) else "bf16"), ""
    if "fp16" in t or "16-bit" in t:
        return "fp16", ""
    if t.startswith("fp32"):
        return "fp32", ""
    return None, "not a simtrain precision"


def map_precision(text: str | None) -> str | None:
    """The simtrain precision of a record's precision text, None when there is none
    (:func:`read_precision` says why)."""
    return read_precision(text)[0]


# A record's words for a setting its source does not give ("not stated", "unknown"): read as
# silent, the source convention's default applies (as for a key the record leaves out).
_NOT_STATED = re.compile(r"^\s*(?:not (?:stated|reported|given)|unknown|unreported)\b", re.I)


def map_recompute(text: str | bool | None) -> str | None:
    """A record's recompute setting: selective (per-op: selective_op), full, none; a YAML
    ``false`` / ``no`` or "off", "not used", "disabled" none; "gradient checkpointing" and
    "activation checkpointing" (HF's and PyTorch's words for it) full; None for other words."""
    if text is None:
        return None
    if isinstance(text, bool):
        return "full" if text else "none"
    t = str(text).lower().strip()
    if _FALSE_WORDS.match(t):  # false, no, off, disabled, none, not used
        return "none"
    if re.match(r"(?:gradient|activation) checkpointing", t) and "selective" not in t:
        return "full"
    if t.startswith("selective") and ("per-op" in t or "op-level" in t):
        return "selective_op"
    if t.startswith("selective"):
        return "selective"
    if t.startswith(("full", "re-materialization", "rematerialization")):
        return "full"
    return None


def map_optimizer(text: str | None) -> str:
    t = str(text or "adam").lower()
    if "8bit" in t or "8-bit" in t:
        return "adam8bit"
    if "adafactor" in t:
        return "adafactor"
    if "muon" in t:
        return "muon"
    if "adamw" in t:
        return "adamw"
    if "sgd" in t:
        return "sgd_momentum" if "momentum" in t else "sgd"
    return "adam"


#: A record's pipeline schedule text (lower case, spaces, "-" and "_" removed) -> simtrain's
#: schedule: the first entry whose words it contains (the V-shaped and DualPipe names before
#: their prefixes). PipeDream-Flush is 1F1B (Narayanan et al. 2021 §2.2); AFAB (nanotron's
#: all-forward-all-backward) is GPipe's order.
SCHEDULE_WORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("dualpipev",), "dualpipe_v"),
    (("dualpipe",), "dualpipe"),
    (("zbv", "zerobubblev", "vshape"), "zb_v"),
    (("zbh2",), "zb_h1"),  # (not one simtrain has: its stand-in, SCHEDULE_STAND_INS)
    (("zb", "zerobubble"), "zb_h1"),
    (("combined1f1b",), "combined_1f1b"),
    (("pipedreamflush",), "1f1b"),
    (("2bw",), "pipedream_2bw"),
    (("pipedream",), "pipedream"),
    (("gpipe", "afab", "allforwardallbackward"), "gpipe"),
    (("naive",), "naive"),
    (("interleaved",), "interleaved"),
    (("1f1b", "onefoneb"), "1f1b"),
)


#: Schedule words simtrain has no schedule of, with the note that says what stands in.
SCHEDULE_STAND_INS = {"zbh2": "ZB-H2 is not simulated, ZB-H1 (its one-extra-micro-batch memory "
                              "variant) is"}  # fmt: skip


def map_schedule(text: str | None, pp: int, v: int, notes: list[str] | None = None) -> str:
    """simtrain's schedule for a record's ``schedule`` text (:data:`SCHEDULE_WORDS`): 1F1B where
    it says none, or where it names no schedule simtrain has (said in ``notes``); with
    ``virtual_stages`` > 1, interleaved 1F1B where it names 1F1B (or PipeDream-Flush, the same
    order) or nothing (Megatron interleaves whenever vp > 1); a stand-in's note
    (:data:`SCHEDULE_STAND_INS`) in ``notes``."""
    t = re.sub(r"[\s_\-]", "", str(text or "").lower())
    if pp == 1:
        return "1f1b"
    word, found = next(((w, name) for words, name in SCHEDULE_WORDS for w in words if w in t),
                       ("", None))  # fmt: skip
    if word in SCHEDULE_STAND_INS and notes is not None:
        notes.append(f"pipeline schedule {text!r}: {SCHEDULE_STAND_INS[word]}")
    if found is not None and found not in ("interleaved", "1f1b"):
        return found
    out = "interleaved" if v > 1 else "1f1b"
    if found is None and t and notes is not None:
        shown = "interleaved 1F1B" if out == "interleaved" else "1F1B"
        notes.append(f"pipeline schedule {text!r} is not one simtrain simulates: {shown}")
    return out


def _without_file(exc: SimtrainError) -> str:
    """An error about a record without its file (the record names it): ``KEY: message``; one
    about the whole configuration (key ``<file>``), the message alone (a fuzz campaign found a
    bare ``<file>`` printed)."""
    if not isinstance(exc, ConfigError):
        return str(exc)
    text = str(exc.blaming(None))
    return text[len("<file>: ") :] if exc.key == "<file>" else text


#: The record ``model`` keys laid over the source's architecture as given: every ModelSpec field
#: but the name and the shape :func:`_model` reads itself (so a record says what a scenario
#: says: experts, multi-latent attention, parallel blocks, head size, ...; validate_model
#: checks them as a scenario's).
SHAPE_PASSTHROUGH = tuple(f.name for f in fields(ModelSpec)
                          if f.name not in ("name", "layers", "hidden", "heads",
                                            "vocab"))  # fmt: skip
#: Record ``model`` keys of a mixture of experts that the model reads (ModelSpec's names).
_MOE_KEYS = frozenset(MOE_ONLY_FIELDS) | {"num_experts"}
UNEXPRESSIBLE_KINDS = {
    "training_run_relative": "relative throughput (normalised to another run of its table), "
    "not an absolute measurement",
    "memory_capacity": "largest-trainable-model measurement: needs a family of model shapes "
    "to search over, not one scenario",
    "collective_benchmark": "collective bandwidth benchmark, not a training step",
}


# Blackwell GPUs without a hardware profile (B200, B300, GB200 and GB300 have one).
_BLACKWELL = re.compile(r"\bB100\b")


def not_yet_expressible(rec: Record) -> list[str]:
    """What of a record simtrain cannot express yet, each named: a mixture of experts described
    by keys the model does not read (ModelSpec's are ``num_experts``, ``experts_per_token``,
    ``moe_ffn_hidden``, ...: those are read as a scenario's, laid over an importer family's
    configuration as its other model keys are; a record with its run's arguments, ``native``,
    is read with its MoE flags), or expert parallelism without experts; a Blackwell GPU
    without a profile (B100). Listed together so a record's skip reason names all of them."""
    out = []
    ep = record_int(rec.parallelism.get("ep"))
    moe = [str(k) for k in rec.model if "expert" in str(k).lower() or "moe" in str(k).lower()]
    unread = [k for k in moe if k not in _MOE_KEYS]
    # (a record with its own arguments is read by its framework's importer, MoE flags and all)
    if (moe or (ep is not None and ep > 1)) and not rec.native:
        if unread:
            out.append(
                f"mixture of experts described by keys simtrain does not read "
                f"({', '.join(unread)}; it reads {', '.join(sorted(_MOE_KEYS))})"
            )
        elif "num_experts" not in rec.model and not _names_moe_preset(rec.model):
            what = ", ".join(moe) if moe else f"expert parallelism (ep {ep})"
            out.append(f"{what} without model.num_experts{_unknown_model(rec.model)}")
    gpu = str(rec.hardware.get("gpu") or "")
    if _BLACKWELL.search(gpu.upper()):
        out.append(f"Blackwell GPU {gpu!r}")
    return out


def _names_moe_preset(m: Mapping[str, Any]) -> bool:
    """Whether the record's model is a mixture-of-experts preset by its name
    (:func:`named_preset`: "DeepSeekV3", "Qwen3_30B_a3B", "GPT OSS 120B"), whose experts the
    preset gives."""
    found = named_preset(m)
    return found is not None and found[1].num_experts > 0


class _NotExpressible(Exception):
    """Raised by the parts of :func:`translate`: the message is the record's skip reason."""


#: Largest measured figure compared (step times, rates, bytes): far above any real run, small
#: enough that errors and plots stay finite.
MAX_MEASURED = 1e30
#: Smallest non-zero one: below it 100·(predicted − measured)/measured overflows to infinity
#: (a subnormal 5e-324 tokens/s did).
MIN_MEASURED = 1e-30


#: Record keys read as whole numbers (``records.record_int``), by section: a value of another
#: type (``num_gpus: "6"``, ``micro_batch: "4"``) was read as absent and the layout or batch
#: derived without a word (a fuzz campaign).
INTEGER_KEYS = {
    "hardware": ("num_gpus", "gpus_per_node"),
    "training": ("micro_batch", "global_batch", "local_batch", "grad_accum", "global_batch_tokens"),
    "model": ("layers", "hidden", "heads", "vocab", "seq_len", "max_positions"),
}  # (parallelism's degrees: _layout's own check, "not an integer")


def _non_integer_counts(rec: Record) -> str:
    """The first of :data:`INTEGER_KEYS` the record gives as something else than a whole
    number, or ""."""
    for section, keys in INTEGER_KEYS.items():
        values = getattr(rec, section)
        for key in keys:
            v = values.get(key)
            if v is not None and record_int(v) is None:
                return f"{section}.{key}: must be a whole number, not {v!r}"
    return ""


def _unusable_measurements(rec: Record) -> str:
    """Why the record's measurements cannot be compared, or "": the first numeric measured
    value that is not finite and 0 or in [MIN_MEASURED, MAX_MEASURED], or the first key the
    comparison reads as a number that holds something else (``records.NUMERIC_MEASURED_KEYS``: a
    quoted "14.76" was dropped unsaid). A source rounds a tiny MFU or rate to 0; such a value is
    left to the comparison."""
    span = f"[{MIN_MEASURED:g}, {MAX_MEASURED:g}]"
    for key, v in rec.measured.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            if key in NUMERIC_MEASURED_KEYS and v is not None:
                return f"measured.{key}: must be a number, not {v!r}"
            continue
        try:
            x = float(v)
        except OverflowError:
            x = math.inf
        if not (math.isfinite(x) and (x == 0 or MIN_MEASURED <= x <= MAX_MEASURED)):
            return f"measured.{key}: not 0 or a finite number in {span}"
        if key in FRACTION_METRICS and x > 1:  # (40 was compared as 40x the peak: a fuzz campaign)
            return f"measured.{key}: a fraction of the peak, at most 1 (got {v:g}: a percentage?)"
    return ""


def translate(rec: Record) -> Translation | SkipReason:
    """The scenario of a record with the assumptions made, or why it cannot be expressed; a
    skip names the record's unread keys too (``Record.unread``: a typo there may be why)."""
    out = _translate(rec)
    if isinstance(out, SkipReason) and rec.unread:
        return replace(out, reason=f"{out.reason} (not read: {'; '.join(rec.unread)})")
    return out


def _translate(rec: Record) -> Translation | SkipReason:
    if rec.kind in UNEXPRESSIBLE_KINDS:
        return skip(rec, f"kind {rec.kind}: {UNEXPRESSIBLE_KINDS[rec.kind]}")
    if rec.kind not in ("training_run", "layer_microbenchmark"):
        return skip(rec, f"unknown kind {rec.kind!r}")
    layer_notes: list[str] = []
    if rec.kind == "layer_microbenchmark":
        mb = record_int(rec.training.get("micro_batch"))
        if not mb or mb < 1:
            return skip(rec, "layer timing without an integer training.micro_batch (what was "
                        "timed)")  # fmt: skip
        if "global_batch" not in rec.training:
            # a per-layer timer times one micro-batch, whatever the step's count: one
            # micro-batch per replica, or with pp > 1 2·pp of them (every pipeline schedule's
            # smallest legal count: the interleaved one needs a multiple of pp)
            try:
                _, pp, dp, _ = _layout(rec.parallelism, rec.hardware, [])
            except _NotExpressible as exc:
                return skip(rec, str(exc))
            n = mb * dp * (2 * pp if pp > 1 else 1)
            rec = replace(rec, training={**rec.training, "global_batch": n})
            layer_notes.append(f"layer timing: a step of global batch {n} (the layer's times "
                               "are per micro-batch)")  # fmt: skip
    if rec.invalid:
        return skip(rec, f"not readable: {rec.invalid}")
    later = not_yet_expressible(rec)
    if later:
        return skip(rec, f"not expressible: {'; '.join(later)}")
    if bad := _unusable_measurements(rec) or _non_integer_counts(rec):
        return skip(rec, bad)
    notes: list[str] = layer_notes + [f"not read: {u}" for u in rec.unread]
    try:  # a printed cell its run's own code contradicts (errata.ERRATA)
        rec = apply_errata(rec, notes)
    except ErratumMismatch as exc:
        return skip(rec, f"erratum does not match the record: {exc}")
    try:
        data, capacity_known, native = _scenario_data(rec, convention_for(rec), notes)
    except _NotExpressible as exc:
        return skip(rec, str(exc))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # a value of a type no reader expects (a list, a mapping, a text where a number
        # goes): the record's own error, a skip naming it, not a traceback that ends the run
        return skip(rec, f"not readable: {type(exc).__name__}: {exc} (a value of a type the "
                    "schema does not allow; on a well-formed record, a simtrain bug)")  # fmt: skip
    try:
        sc = parse_scenario(data, rec.id)
        resolve(sc)  # a layer split simtrain does not model (layout.partition) is an error
    except SimtrainError as exc:
        return skip(rec, f"layout not expressible: {_without_file(exc)}")
    try:  # the job's own bandwidth tests (job_network): its links
        net = read_job_network(rec.hardware, record_int(rec.hardware.get("num_gpus")))
        if net is not None:
            links = job_hardware(sc.hardware, sc.runtime.collective_algorithm, net,
                                 issue_applies=sc.runtime.host_dispatches)  # fmt: skip
            sc = links.on(sc)
            notes.extend(links.notes)
    except ValueError as exc:
        return skip(rec, str(exc))
    conv = convention_for(rec)
    if conv.cuda_context_mib is not None:  # the source measured its stack's context
        hw = replace(sc.hardware, cuda_context_bytes=int(conv.cuda_context_mib * MIB))
        sc = replace(sc, hardware=hw)
        notes.append(conv.cuda_context_note)
    pb = rec.model.get("params_b")
    if isinstance(pb, int | float) and pb > 0:
        ours = sc.model.total_params() / 1e9
        if abs(ours / pb - 1) > 0.03:
            notes.append(f"simtrain's parameter count differs from params_b by > 3 % (= {ours:.3g} "
                         f"vs {pb})")  # fmt: skip
    return Translation(rec, sc, tuple(notes), capacity_known, native)


#: GPU generations on which every training framework's attention is a flash-class kernel, for a
#: record whose source convention and model leave the attention unsaid (a new source): Hopper
#: and Blackwell shipped after FlashAttention-2 (2023-07), and every framework with a runtime
#: profile runs one there (runtimes/*.yaml attention_kernel: Transformer Engine's cuDNN fused
#: attention, flash-attn 2, PyTorch SDPA's flash backend), as do Hugging Face Transformers since
#: v4.36 (2023-12: attn_implementation "sdpa" by default). Before Hopper (A100, V100) a
#: framework's era decides, and an unknown source keeps the materialised s x s scores. AMD's
#: Instinct MI300 series (CDNA 3, from 2023-12, and its successors) is of the same era: ROCm's
#: flash-attention port (Composable Kernel) and PyTorch SDPA's AOTriton flash kernel; the AMD
#: profiles' ``gpu_arch`` is the NCCL tuning row RCCL follows, not the generation, so they are
#: named (the MI250, CDNA 2 of 2021, is not).
FLASH_ERA_ARCHS = ("hopper", "blackwell")
FLASH_ERA_PROFILES = ("mi300x_192gb", "mi325x_256gb", "mi355x_288gb")
FLASH_ERA_NOTE = ("attention not reported: flash (on Hopper, Blackwell and MI300-series GPUs "
                  "every framework's attention is a flash-class kernel: cuDNN fused attention, "
                  "flash-attn 2, PyTorch SDPA)")  # fmt: skip


def _scenario_data(
    rec: Record, conv: SourceConvention, notes: list[str]
) -> tuple[dict[str, Any], bool, NativeConfig | None]:
    """The scenario document of a record (for :func:`parse_scenario`), whether the GPU's
    memory size is known, and the native configuration it was imported from (records of a
    family with an importer, ``native.IMPORTER_OF``; None on this module's own path). The parts run in this order, so a record missing several settings is
    skipped for the first, and ``notes`` (the assumptions) keep the order they are printed in."""
    fc = rec.measured.get("flops_convention")
    if fc is not None and fc not in FLOP_CONVENTIONS:
        raise _NotExpressible(f"measured.flops_convention {fc!r}: not one of "
                              f"{', '.join(FLOP_CONVENTIONS)}")  # fmt: skip
    profile, capacity_known = _hardware(rec.hardware, notes)
    # A record with its run's own arguments is read from them: the defaults its sections would
    # need are not assumptions of the run (``native._agree`` checks layout and batch)
    said = [] if rec.native else notes
    model, seq = _model(rec.model, conv, said)
    tp, pp, dp, cp = _layout(rec.parallelism, rec.hardware, said)
    B, b = _batch(rec.training, seq, pp, dp, said, conv)
    training = _training(rec.training, conv, said)
    if cp > 1 and not model.get("flash_attention"):
        model["flash_attention"] = True
        said.append(f"cp {cp}: flash attention (Transformer Engine's and PyTorch's "
                    "context-parallel attention run the flash / fused kernels)")  # fmt: skip
    if "flash_attention" not in model and (load_hardware(profile).gpu_arch in FLASH_ERA_ARCHS
                                           or profile in FLASH_ERA_PROFILES):  # fmt: skip
        model["flash_attention"] = True
        said.append(FLASH_ERA_NOTE)
    finetune = rec.training.get("finetune") is not None
    sft = finetune and "peft" not in training  # every weight trained
    par = _implied_parallelism(_read_parallelism(rec.parallelism, said), conv, said,
                               finetune=finetune, tp=tp, sft=sft)  # fmt: skip
    par = _implied_interleaving(par, conv, pp, record_int(model.get("layers")), said,
                                2 if ends_one_fewer(rec) else 0, sft=sft)  # fmt: skip
    training = {"seq_len": seq, "global_batch": B, "micro_batch": b, **training}
    gpus = tp * pp * dp * cp
    profile_node = load_hardware(profile).gpus_per_node
    node = _node_gpus(rec, profile_node, gpus)
    replicas = _hybrid_replicas(rec, (tp, pp, dp, cp), node, said)
    if replicas > 1:
        if importer_of(rec) not in (None, "torchtitan"):
            raise _NotExpressible(f"parallelism.fsdp_sharding {rec.parallelism['fsdp_sharding']}: "
                                  f"the {importer_of(rec)} configuration validate writes has no "
                                  "hybrid sharding")  # fmt: skip
        par = {**par, "zero_replicas": replicas}  # torchtitan: data_parallel_replicate_degree
    if importer_of(rec) is not None:
        try:
            data, native = through_importer(rec, conv, profile, model, training,
                                            (tp, pp, dp, cp), (B, b), par, notes)  # fmt: skip
        except SimtrainError as exc:
            raise _NotExpressible(f"layout not expressible: {_without_file(exc)}") from None
        return data, capacity_known, native
    data = {
        "name": rec.id,
        "model": model,
        "hardware": profile,
        "training": training,
        "parallelism": _parallelism(par, conv, tp, pp, dp, notes),
    }
    if cp > 1:
        data["parallelism"]["cp"] = cp
    if replicas > 1:
        data["parallelism"]["zero_replicas"] = replicas
    layers = record_int(model.get("layers")) or record_int(rec.model.get("layers"))
    data["parallelism"].update(pipeline_split(rec, data["parallelism"], layers, notes))
    data["runtime"] = _runtime(rec, data["parallelism"], notes)
    _torch_rounds(data, record_int(rec.training.get("local_batch")), notes)
    _deepspeed_buckets(data, notes)
    cluster = _record_cluster(node, profile_node, gpus, notes)
    if cluster:
        data["cluster"] = cluster
    return data, capacity_known, None


#: Runtimes whose interleaved schedule is torch's ScheduleInterleaved1F1B
#: (schedules.generators.torch_group_override; the torchtitan importer reads it alike)
TORCH_PIPELINING_RUNTIMES = ("torchtitan",)


def _torch_rounds(data: dict[str, Any], local_batch: int | None, notes: list[str]) -> None:
    """A torch-pipelining record's interleaved schedule whose micro-batches pp does not divide:
    torch's rounds of each pass's micro-batches (``local_batch`` // micro-batch where the record
    gives its local batch, as the torchtitan importer reads ``local_batch_size``; else the
    step's) as simtrain's micro-batch group; Megatron's own records say their group or are
    refused (it is the user's setting there)."""
    par, t = data["parallelism"], data["training"]
    pp = par.get("pp", 1)
    if (data["runtime"].get("name") not in TORCH_PIPELINING_RUNTIMES
            or par.get("schedule") != "interleaved"
            or not runs_groups("interleaved", pp, par.get("virtual_stages", 1))):  # fmt: skip
        return
    m = (local_batch or t["global_batch"] // par.get("dp", 1)) // t["micro_batch"]
    group = torch_group_override(pp, m)
    if group:  # (torch refusing m, None, leaves the schedule's own check to say so)
        par["microbatch_group_size"] = group
        notes.append(f"{m} micro-batches over pp {pp}: torch's Interleaved1F1B runs them in "
                     f"rounds of {group} (parallelism.microbatch_group_size)")  # fmt: skip


def _node_gpus(rec: Record, profile_node: int, gpus: int) -> int:
    """The GPUs of one simulated node: the record's ``hardware.gpus_per_node`` where it is fewer
    than the profile's ``profile_node`` and the job is whole nodes of it (KempnerForge's 4-GPU
    H200 nodes on the 8-GPU profile), else the profile's (a record saying nothing, or more than
    the profile holds: the DGX-2 rows' 16)."""
    per_node = record_int(rec.hardware.get("gpus_per_node"))
    if not per_node or per_node >= profile_node or gpus % per_node:
        return profile_node
    return per_node


def _record_cluster(per_node: int, profile_node: int, gpus: int,
                    notes: list[str]) -> dict[str, int] | None:  # fmt: skip
    """The record's nodes of ``per_node`` GPUs (:func:`_node_gpus`) where they are smaller than
    the profile's ``profile_node``: which groups cross nodes, and so which collectives go
    through the NICs, follows them (the NIC bandwidth is the profile's per GPU); None where the
    profile's nodes stand, or the job fits in one node."""
    if per_node == profile_node or gpus <= per_node:
        return None
    notes.append(f"cluster: {per_node} GPUs a node (the record's hardware.gpus_per_node; the "
                 f"profile's NIC bandwidth per GPU)")  # fmt: skip
    return {"nodes": gpus // per_node, "gpus_per_node": per_node}


def _deepspeed_buckets(data: dict[str, Any], notes: list[str]) -> None:
    """DeepSpeed's ZeRO-1/2 optimizer reduces the 16-bit gradients in buckets of
    reduce_bucket_size elements (default 5e8: zero/constants.py l.68 at 2151c787a, the DeepSpeed
    importer's assumption too), one flat copy each (costs.memory.reduce_copy_bytes): no record
    states the size, so this replaces the convention's bucket (one buffer, 'local'); its BF16
    optimizer (fp32-accumulating precision) reduces its fp32 buffer at once."""
    par, prec = data["parallelism"], PRECISIONS.get(str(data["training"].get("precision")))
    if (data["runtime"]["name"] != "deepspeed" or par.get("zero_stage", 0) not in (1, 2)
            or prec is None or prec.grad_accum or not prec.master):  # fmt: skip
        return
    par["bucket_mb"] = grad_bucket_mb(REDUCE_BUCKET_ELEMENTS, prec.grad)
    notes.append(f"ZeRO-{par['zero_stage']} gradient buckets: DeepSpeed's reduce_bucket_size "
                 f"default, 5e8 elements x {prec.grad} B = {par['bucket_mb']:g} MB")  # fmt: skip


def _runtime(rec: Record, par: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """The runtime the record ran (``conventions.runtime_for``), with the overlap flags the
    record says were used, where the layout has something for them to overlap."""
    name, why = runtime_for(rec)
    if why:
        notes.append(why)
    out: dict[str, Any] = {"name": name}
    text = f"{rec.notes} {rec.training} {rec.parallelism}"
    applies = {
        "tp_comm_overlap": par.get("tp", 1) > 1,
        "overlap_grad_reduce": True,
        "overlap_param_gather": par.get("zero_stage", 0) in (1, 2),
    }
    for flag, key in OVERLAP_FLAGS.items():
        if flag in text and applies[key]:
            out[key] = True
            notes.append(f"runtime {name}: {flag} (the record's notes)")
    conv = convention_for(rec)
    if rec.training.get("compile") is True and not rec.native:
        # torch.compile: inductor fuses the element-wise chains (runtime eager_elementwise)
        out["eager_elementwise"] = False
        notes.append(f"runtime {name}: torch.compile (the record's training.compile): the "
                     "element-wise ops fused (eager_elementwise false)")  # fmt: skip
    if conv.runtime_overrides:
        out.update(conv.runtime_overrides)
        keys = ", ".join(f"{k} {v}" for k, v in conv.runtime_overrides)
        notes.append(f"runtime {name}: {conv.runtime_overrides_note} ({keys})")
    if rec.training.get("compile") is True and out.get("tp_input_redistribution") == "per_linear":
        # AOT autograd's CSE merges the forward's identical all-gathers (spec.runtime)
        out["tp_input_redistribution"] = "per_linear_compiled"
        notes.append(f"runtime {name}: torch.compile merges the linears' identical forward "
                     "all-gathers (AOT autograd's fx_graph_cse), not their backward reductions "
                     "(tp_input_redistribution per_linear_compiled)")  # fmt: skip
    if conv.memory_includes_context:
        # a device-level figure (nvidia-smi, NVML): NCCL's buffers count (costs.nccl_memory)
        out["memory_reported"] = "nvidia_smi"
    return out


def _hardware(hw: Mapping[str, Any], notes: list[str]) -> tuple[str, bool]:
    """(hardware profile, memory size known) from ``hardware.gpu`` and ``hardware.inter_node``."""
    gpu = hw.get("gpu")
    prof = gpu_profile(str(gpu)) if gpu else None
    if prof is None:
        raise _NotExpressible(f"hardware {gpu!r}: no simtrain hardware profile")
    profile, capacity_known, hw_note = prof
    if hw_note:
        notes.append(hw_note)
    else:  # an SXM part: its node's board
        profile = board_profile(profile, record_int(hw.get("gpus_per_node")), notes)
    profile, net_note = network_profile(profile, hw.get("inter_node"))
    if net_note:
        notes.append(net_note)
    return profile, capacity_known


#: The keys of a named preset a record without its shape takes (the architecture; dropout,
#: flash attention and the positions' table size are the run's): spec.scenario's
#: PRESET_SHAPE_KEYS, in ModelSpec's order.
_PRESET_KEYS = tuple(f.name for f in fields(ModelSpec) if f.name in PRESET_SHAPE_KEYS)
#: A size in a model name ("175B", "1.3b", "125M"): a name without one ("GPT-2", "BLOOM")
#: names a family, and matches a preset only with a params_b that agrees.
_SIZE = re.compile(r"\d(?:\.\d+)?\s*[bm]\b", re.IGNORECASE)


def _unknown_model(m: Mapping[str, Any]) -> str:
    """Why an MoE record's model is not known, for its skip reason ("" where its name finds
    a preset or it gives its shape)."""
    if named_preset(m) is not None or record_int(m.get("layers")):
        return ""
    text = str(m.get("name") or "")
    if found := find_preset(text, loose=True) or find_preset_by_size(text):
        return f" (model {text!r} names preset {found}, but no size or params_b agrees)"
    return f" (model {text!r}: no simtrain preset by that name, and no shape)"


#: Presets whose name, without a size, is one released model (no family of sizes under it):
#: "Kimi K2", "DeepSeek-V3" or "Phi-2" name that model, where "GPT-2" or "BLOOM" do not.
_ONE_MODEL_PRESETS = frozenset({"deepseek-v3", "kimi-k2", "phi-1.5", "phi-2", "phi-3-mini"})


def named_preset(m: Mapping[str, Any]) -> tuple[str, ModelSpec] | None:
    """The preset (``spec.model.PRESETS``, ALIASES included) whose name is the record's
    ``model.name``, letters and digits compared ("GPT3-175B" is gpt3-175b, "OPT-175B" opt-175b,
    "Nemotron-340B" nemotron-4-340b), where it agrees with every shape number the record gives
    and with its ``params_b`` within 5 % (a name without a size, "GPT-2" or "BLOOM", needs
    that params_b, but one that is a single model, :data:`_ONE_MODEL_PRESETS`); None
    otherwise."""
    text = str(m.get("name") or "")
    name = find_preset(text, loose=True) or find_preset_by_size(text)
    if name is None:
        return None
    spec = PRESETS[name]
    for field in ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab"):
        given = record_int(m.get(field))
        if given is not None and given != getattr(spec, field):
            return None
    pb = m.get("params_b")
    known = isinstance(pb, int | float) and not isinstance(pb, bool) and pb > 0
    if known and abs(spec.total_params() / 1e9 / pb - 1) > 0.05:
        return None
    if not known and not _SIZE.search(str(m.get("name"))) and name not in _ONE_MODEL_PRESETS:
        return None
    return name, spec


def _model(
    m: Mapping[str, Any], conv: SourceConvention, notes: list[str]
) -> tuple[dict[str, Any], int]:
    """(the scenario's ``model`` section, seq_len): the source's architecture, the record's
    shape over it. A record that names a known model (:func:`named_preset`) but leaves out
    its shape or vocabulary takes them from the preset, with the preset's architecture."""
    shape = ("layers", "hidden", "heads")
    vocab = record_int(m.get("vocab"))
    absent = [k for k in shape if record_int(m.get(k)) is None]
    named = named_preset(m) if absent or (vocab is None and conv.vocab_default is None) else None
    arch: dict[str, Any] = {}
    if named is not None:
        name, spec = named
        arch = {k: getattr(spec, k) for k in _PRESET_KEYS}
        filled = [k for k in (*shape, "vocab") if record_int(m.get(k)) is None]
        m = {**m, **{k: getattr(spec, k) for k in filled}}
        vocab = spec.vocab
        notes.append(f"model {m.get('name')!r}: preset {name} ({', '.join(filled)} not reported; "
                     f"{spec.layers} layers, hidden {spec.hidden}, {spec.heads} heads, "
                     f"{spec.kv_heads} KV heads, ffn {spec.ffn_hidden}, vocab {spec.vocab}, "
                     f"{spec.mlp} MLP, {spec.positions} positions, before a framework's vocabulary "
                     "padding: spec/model.py's sources)")  # fmt: skip
    missing = [k for k in (*shape, "seq_len") if record_int(m.get(k)) is None]
    if missing:
        raise _NotExpressible(f"model shape not reported: {', '.join(missing)}")
    if vocab is None:
        if conv.vocab_default is None:
            raise _NotExpressible("model shape not reported: vocab")
        vocab = conv.vocab_default
        notes.append(f"vocab not reported: {vocab} (the source's tokenizer, padded)")
    seq = int(m["seq_len"])
    model: dict[str, Any] = {**conv.architecture, **arch}
    if conv.architecture_note:  # (its dropout and attention kernel hold under a preset too)
        notes.append(conv.architecture_note)
    model.update({"layers": int(m["layers"]), "hidden": int(m["hidden"]),
                  "heads": int(m["heads"]), "vocab": vocab})  # fmt: skip
    for k in SHAPE_PASSTHROUGH:
        if k in m and m[k] is not None:
            model[k] = m[k]
    model["max_positions"] = max(seq, record_int(model.get("max_positions")) or 0)
    if "ffn_hidden" not in m and not arch:
        notes.append("ffn_hidden not reported: 4·hidden")
    return model, seq


def _layout(p: Mapping[str, Any], hw: Mapping[str, Any],
            notes: list[str]) -> tuple[int, int, int, int]:  # fmt: skip
    """(tp, pp, dp, cp); dp from ``hardware.num_gpus`` when the record does not give it. A
    degree the record gives must be an integer >= 1 (not read as 1)."""
    for key in ("tp", "pp", "cp", "dp", "virtual_stages", "ep"):
        if p.get(key) is not None and (record_int(p[key]) or 0) < 1:
            raise _NotExpressible(f"parallelism.{key}: {p[key]!r} is not an integer >= 1")
    tp = record_int(p.get("tp")) or 1
    pp = record_int(p.get("pp")) or 1
    cp = record_int(p.get("cp")) or 1
    n = record_int(hw.get("num_gpus"))
    dp = record_int(p.get("dp"))
    names, degrees = ("tp x pp", tp * pp) if cp == 1 else ("tp x pp x cp", tp * pp * cp)
    if dp is None:
        if n is None:
            raise _NotExpressible("neither parallelism.dp nor hardware.num_gpus reported")
        if n % degrees:
            raise _NotExpressible(f"num_gpus {n} is not a multiple of {names} = {degrees}")
        dp = n // degrees
        notes.append(f"dp = num_gpus / ({names.replace(' x ', '·')}) = {dp}")
    if n is not None and n != degrees * dp:
        shown = f"{tp} x {pp}" + (f" x {cp}" if cp > 1 else "") + f" x {dp}"
        raise _NotExpressible(f"num_gpus {n} != {names} x dp = {shown}")
    return tp, pp, dp, cp


def _batch(t: Mapping[str, Any], seq: int, pp: int, dp: int, notes: list[str],
           conv: SourceConvention) -> tuple[int, int]:  # fmt: skip
    """(global batch, micro-batch) in sequences; a pipeline's micro-batch where the record
    names none as the source's convention says (``pp_micro_batch``)."""
    B = record_int(t.get("global_batch"))
    if B is None and record_int(t.get("global_batch_tokens")) is not None:
        tokens = int(t["global_batch_tokens"])
        binary = tokens // 10**6 * 2**20
        if tokens % seq == 0:
            B = tokens // seq
            notes.append(f"global batch = {tokens:,} tokens / seq_len = {B}")
        elif tokens % 10**6 == 0 and binary % seq == 0:
            B = binary // seq
            notes.append(f"global batch: {tokens // 10**6}M tokens is no whole number of "
                         f"{seq}-token sequences; read as {tokens // 10**6} x 2^20 = "
                         f"{binary:,} tokens = {B} sequences (papers' '2M', '4M', '16M' "
                         "batches: OPT's 1024 x 2048, LLaMA's 2048 x 2048, Llama 3's batch "
                         "per DP x DP x seq in every row of its Table 4)")  # fmt: skip
    ga = record_int(t.get("grad_accum"))
    b = record_int(t.get("micro_batch"))
    if B is None and b is not None and ga is not None:
        B = b * ga * dp
        notes.append(f"global batch = micro_batch x grad_accum x dp = {B}")
    if B is None:
        raise _NotExpressible("global batch not reported")
    if b is None and ga is not None and ga >= 1 and B % (dp * ga) == 0:
        b = B // (dp * ga)
        notes.append(f"micro-batch = global_batch / (dp x grad_accum) = {b}")
    if b is None:
        if pp == 1:
            b = B // dp
            notes.append(f"micro-batch not reported: global_batch / dp = {b} (one micro-batch "
                         "per replica, no gradient accumulation)")  # fmt: skip
        elif conv.pp_micro_batch == "local_over_pp" and (B // dp) % pp == 0:
            b = B // dp // pp
            notes.append(f"{conv.pp_micro_batch_note} = {b}")
        else:
            b = 1
            notes.append("micro-batch not reported: 1 (pipeline parallel)")
    if B < 1 or b < 1:  # (a record's 0, or fewer sequences than replicas)
        raise _NotExpressible(f"global batch {B} / micro-batch {b}: each must be >= 1 "
                              "(training.global_batch, training.micro_batch)")  # fmt: skip
    if ga is not None and b * dp * ga != B:
        notes.append(f"grad_accum x micro_batch x dp != global_batch (= {ga} x {b} x {dp} vs {B})")
    return B, b


def _training(t: Mapping[str, Any], conv: SourceConvention, notes: list[str]) -> dict[str, Any]:
    """The scenario's ``training`` settings other than the shape of the batch: precision,
    optimizer, recompute and the loss kernel."""
    precision, why_not = read_precision(t.get("precision"))
    unstated = t.get("precision") is None or why_not.startswith(UNSTATED)
    if precision is None and unstated and conv.precision_unstated is not None:
        precision, why = conv.precision_unstated
        notes.append(why)
    elif precision is None:
        if t.get("precision") is None:
            raise _NotExpressible("precision not reported")
        raise _NotExpressible(f"precision {t.get('precision')!r}: not a simtrain precision "
                              f"({', '.join(PRECISIONS)})")  # fmt: skip
    if precision in conv.precision_map:
        precision, why = conv.precision_map[precision]
        notes.append(why)
    if _FP32_GRADS.search(str(t.get("precision", ""))) and precision == "bf16":
        precision = "bf16_fp32_grads"
        notes.append("the record says fp32 gradient accumulation: bf16_fp32_grads (an fp32 "
                     "gradient buffer next to the bf16 gradients, 4 B/param more)")  # fmt: skip
    recompute = map_recompute(t.get("recompute"))
    if recompute is None:
        if t.get("recompute") is not None and not _NOT_STATED.search(str(t["recompute"])):
            raise _NotExpressible(f"recompute {t.get('recompute')!r}: not "
                                  f"{' | '.join(RECOMPUTE)}")  # fmt: skip
        recompute = conv.recompute_default
        notes.append(f"recompute not reported: {conv.recompute_note or recompute}")
    if recompute in conv.recompute_unexpressible:
        raise _NotExpressible(f"recompute {t.get('recompute')!r}: "
                              f"{conv.recompute_unexpressible[recompute]}")  # fmt: skip
    if str(t.get("recompute", "")).lower().startswith("none (assumed"):
        notes.append("recompute none assumed by the record")
    optimizer = map_optimizer(t.get("optimizer"))
    if t.get("optimizer") is None and conv.optimizer is not None:
        optimizer, why = conv.optimizer
        notes.append(why)
    elif t.get("optimizer") is None:
        notes.append("optimizer not reported: Adam")
    if conv.cross_entropy_note:
        notes.append(conv.cross_entropy_note)
    if _flag("training.activation_cpu_offload", t.get("activation_cpu_offload")):
        raise _NotExpressible("activation CPU offload is not modelled")
    out = {"precision": precision, "optimizer": optimizer, "recompute": recompute,
           "cross_entropy": conv.cross_entropy}  # fmt: skip
    if not conv.loss_upcast:
        out["loss_upcast"] = False
    if "packed_sample_len" in t:  # SFT's packed rows: attention within each sample
        n = record_int(t["packed_sample_len"])
        if n is None:
            raise _NotExpressible(f"training.packed_sample_len {t['packed_sample_len']!r}: "
                                  "not an integer number of tokens")  # fmt: skip
        out["packed_sample_len"] = n
        notes.append(f"packed sequences: samples of {n} tokens in each row, attention within "
                     "each (the record's packed_sample_len)")  # fmt: skip
    elif t.get("finetune") is not None and conv.finetune_packed_sample_len is not None:
        out["packed_sample_len"], why = conv.finetune_packed_sample_len
        notes.append(why)
    peft = read_finetune(t.get("finetune"), conv, notes)
    if peft is not None:
        out["peft"] = peft
    lora = peft is not None and peft.get("method") in ("lora", "qlora")
    if conv.optimizer_storage is not None and not lora:
        out["optimizer_state_dtype"], out["master_weights"], why = conv.optimizer_storage
        notes.append(why)
    return out


# A LoRA record's own rank ("r=4", "rank 16") and alpha ("alpha=32", "lora_alpha 16").
_LORA_RANK = re.compile(r"\b(?:r|rank)\s*[=:]?\s*(\d+)", re.IGNORECASE)
_LORA_ALPHA = re.compile(r"\b(?:lora_)?alpha\s*[=:]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
# Where a record names its targets: "on W_q, W_v", "targets q_proj k_proj", "target=W_qkv".
_LORA_ON = re.compile(r"\b(?:on|targets?|target_modules)\b\s*[=:]?", re.IGNORECASE)
# Target names -> simtrain's LoRA targets (spec.scenario.LORA_TARGETS): the paper's W_q..., HF
# PEFT's *_proj, Megatron / NeMo's fused names; "all linear" every one of them.
_LORA_NAMES: dict[str, tuple[str, ...]] = {
    **{w: (x,) for x in "qkvo" for w in (f"w_{x}", f"{x}_proj", x)},
    "query": ("q",),
    "key": ("k",),
    "value": ("v",),
    "out_proj": ("o",),
    **{
        w: ("q", "k", "v")
        for w in ("w_qkv", "qkv", "attention_qkv", "linear_qkv", "query_key_value")
    },
    **{w: (x,) for x in ("gate", "up", "down") for w in (x, f"{x}_proj")},
    "all": LORA_TARGETS,
}
# Words of a target clause that name no module: "on all linear layers, r=16, alpha 32".
_LORA_FILLER = {"and", "the", "of", "in", "every", "linear", "layers", "layer", "modules",
                "module", "projections", "projection", "weights", "lora", "r", "rank", "alpha",
                "lora_alpha", "with", "dropout"}  # fmt: skip


def _lora_targets(s: str) -> tuple[str, ...] | None:
    """The LoRA targets a record's text names after "on" / "target(s)" (None: it names none);
    a word there that names no module and no filler makes the record not expressible."""
    m = _LORA_ON.search(s)
    if m is None:  # no clause: module names that cannot be plain words ("W_q", "v_proj")
        named = [w for w in re.split(r"[^a-z0-9_]+", s.lower()) if "_" in w and w in _LORA_NAMES]
        return tuple(dict.fromkeys(x for w in named for x in _LORA_NAMES[w])) or None
    out: dict[str, None] = {}
    for word in re.split(r"[^a-z0-9_]+", s[m.end() :].lower()):
        if not word or word.replace(".", "").isdigit() or word in _LORA_FILLER:
            continue
        if word not in _LORA_NAMES:
            raise _NotExpressible(f"training.finetune {s!r}: LoRA target {word!r} is not one "
                                  f"of {', '.join(sorted(_LORA_NAMES))}")  # fmt: skip
        out.update(dict.fromkeys(_LORA_NAMES[word]))
    return tuple(out) or None


def read_finetune(text: Any, conv: SourceConvention, notes: list[str]) -> dict[str, Any] | None:
    """``training.finetune`` of a record as simtrain's ``training.peft`` (None: every weight
    trained): ``full`` / ``SFT`` train every weight; ``LoRA`` trains rank-r adapters on the named
    linears (Hu et al. 2021), its rank, alpha and targets read from the text ("LoRA r=4 on W_q,
    W_v"; target names: :data:`_LORA_NAMES`) and, where the text names none of the rank or the
    targets, from the source's recipe (``SourceConvention.lora_default``, said in ``notes``).
    Anything else is not expressible, never silently a full fine-tune."""
    if text is None:
        return None
    s = str(text).strip()
    low = s.lower()
    if low in ("full", "sft") or low.startswith(("full ", "sft ")):
        return None
    if not low.startswith("lora"):
        raise _NotExpressible(f"training.finetune {s!r}: not full | SFT | LoRA")
    r = _LORA_RANK.search(s)
    rank = int(r.group(1)) if r else None
    if rank == 0:
        raise _NotExpressible(f"training.finetune {s!r}: LoRA rank 0")
    targets = _lora_targets(s)
    a = _LORA_ALPHA.search(s)
    alpha = float(a.group(1)) if a else None
    if rank is None or targets is None:
        if conv.lora_default is None:
            raise _NotExpressible(f"training.finetune {s!r}: LoRA rank or target modules not "
                                  "reported")  # fmt: skip
        d_rank, d_alpha, d_targets, why = conv.lora_default
        taken = [w for w, v in (("rank", rank), ("target modules", targets)) if v is None]
        notes.append(f"LoRA {' and '.join(taken)} not reported: {why}")
        rank, targets, alpha = rank or d_rank, targets or d_targets, alpha or d_alpha
    out = {"method": "lora", "rank": rank, "target_modules": list(targets)}
    return out if alpha is None else {**out, "alpha": alpha}


def _implied_parallelism(p: Mapping[str, Any], conv: SourceConvention, notes: list[str],
                         finetune: bool = False, tp: int = 1,
                         sft: bool = False) -> Mapping[str, Any]:  # fmt: skip
    """The record's ``parallelism`` with the keys its source's runs imply where it is silent
    (``conv.parallel_defaults``, or ``finetune_parallel_defaults`` for a fine-tuning record
    when the source has them, ``sft_parallel_defaults`` for one that trains every weight;
    sequence parallelism only with tp > 1, where it splits something); an offload is not
    expressible."""
    defaults, why = conv.parallel_defaults, conv.parallel_note
    if finetune and conv.finetune_parallel_defaults is not None:
        defaults, why = conv.finetune_parallel_defaults, conv.finetune_parallel_note
    if sft and conv.sft_parallel_defaults is not None:
        defaults, why = conv.sft_parallel_defaults, conv.sft_parallel_note
    implied = {k: v for k, v in defaults.items() if p.get(k) is None
               and (k != "sequence_parallel" or tp > 1)}  # fmt: skip
    if implied:
        p = {**p, **implied}
        notes.append(f"{', '.join(f'{k} {v}' for k, v in implied.items())} not reported: "
                     f"{why}")  # fmt: skip
    if p.get("offload"):
        raise _NotExpressible(f"offload {p.get('offload')!r} is not modelled for this layout")
    return p


#: A schedule text that names the interleaved schedule ("interleaved 1F1B", "Interleaved1F1B"):
#: a mention of it not negated just before ("non-interleaved", "not interleaved", "without
#: interleaving") nor just after ("interleaved: no"), and not another schedule that interleaves
#: ("InterleavedZeroBubble"). Each mention is read on its own: "Interleaved 1F1B (vs. a
#: non-interleaved baseline)" names it.
_INTERLEAVING = re.compile(r"(?<![a-z])interleav", re.IGNORECASE)
_NEGATED_BEFORE_INTERLEAVING = re.compile(
    r"\b(?:non|not|no|without)[\s\-\u2010-\u2015]*$", re.IGNORECASE
)
_NOT_1F1B_AFTER = re.compile(
    r"interleav\w*\s*(?:[:=]\s*(?:no|false|off|none)\b|zero|zb)", re.IGNORECASE
)


def _names_interleaved(text: str) -> bool:
    """Whether a schedule text names the interleaved 1F1B schedule (see :data:`_INTERLEAVING`)."""
    for m in _INTERLEAVING.finditer(text):
        if _NEGATED_BEFORE_INTERLEAVING.search(text[: m.start()]):  # (anchored at its end)
            continue
        if _NOT_1F1B_AFTER.match(text, m.start()):
            continue
        return True
    return False


def _implied_interleaving(p: Mapping[str, Any], conv: SourceConvention, pp: int,
                          layers: int | None, notes: list[str],
                          ends: int = 0, sft: bool = False) -> Mapping[str, Any]:  # fmt: skip
    """``conv.pp_interleaved`` (``sft_pp_interleaved`` for a record that fine-tunes every
    weight, where the source has it): a pipeline-parallel record that names no virtual stages,
    and no schedule or the interleaved one, ran the interleaved schedule with k layers per
    virtual stage (v = (layers + ends) / (pp·k), ``ends`` 2 where its first and last stages
    hold one layer fewer: ``splits.ends_one_fewer``), when that splits evenly into v >= 2."""
    sched = p.get("schedule")
    said = p.get("virtual_stages") is not None or (
        sched is not None and not _names_interleaved(str(sched))
    )
    rule = conv.sft_pp_interleaved if sft and conv.sft_pp_interleaved else conv.pp_interleaved
    if rule is None or pp <= 1 or said:
        return p
    k, why = rule
    if not layers or (layers + ends) % (pp * k):
        return p
    v = (layers + ends) // (pp * k)
    if v < 2:
        return p
    notes.append(f"virtual stages not reported: {v} ({why})")
    return {**p, "virtual_stages": v}


# A record's sharding in words -> the ZeRO stage whose memory and traffic it has. Parameters
# sharded at rest but "not resharded after forward" (Llama 3, Dubey et al. 2024 §3.3.2: no
# second all-gather in the backward) are whole on the GPU from the forward's all-gather to the
# end of the backward, and each parameter is gathered once: ZeRO-2's peak and traffic.
_ZERO_WORDS = (
    (
        re.compile(
            r"zero[- ]?0\b|stage[- ]?0\b|\b(?:not|no|without) (?:fsdp|zero|sharding)\b"
            r"|^\s*(?:none|no sharding|no zero|ddp|plain ddp|off|disabled)\b",
            re.I,
        ),  # fmt: skip
        0,
        "no sharding",
    ),
    (
        re.compile(r"not resharded|no reshard|shard.grad.op|zero[- ]?2\b|stage[- ]?2\b", re.I),
        2,
        "parameters whole from the forward's all-gather to the end of the backward, gradients "
        "and optimizer states sharded: ZeRO-2's peak and traffic",
    ),
    (
        re.compile(
            r"full.shard|fully.shard|hybrid.shard|zero[- ]?3\b|stage[- ]?3\b"
            r"|parameters[^;,]*sharded|\bfsdp\b",
            re.I,
        ),  # fmt: skip
        3,
        "parameters, gradients and optimizer states sharded: ZeRO-3",
    ),
    (
        re.compile(r"grad\w*[^;,]*sharded", re.I),
        2,
        "gradients and optimizer states sharded: ZeRO-2",
    ),
    (
        re.compile(
            r"zero[- ]?1\b|stage[- ]?1\b|optimizer states? sharded|distributed optimizer", re.I
        ),  # fmt: skip
        1,
        "optimizer states sharded: ZeRO-1",
    ),
)
#: An explicit stage ("ZeRO-1", "stage 3"), which wins over the words above where the text also
#: negates another scheme ("ZeRO-1, no FSDP"); not where it is itself negated ("no ZeRO-3").
_EXPLICIT_STAGE = re.compile(r"\b(?:zero|stage)[- ]?([0-3])\b", re.I)
_NEGATED_BEFORE = re.compile(r"\b(?:no|not|without)\s+$", re.I)
# FSDP's sharding strategies (torch.distributed.fsdp.ShardingStrategy) as ZeRO stages.
_FSDP_SHARDING = {"FULL_SHARD": 3, "HYBRID_SHARD": 3, "SHARD_GRAD_OP": 2,
                  "_HYBRID_SHARD_ZERO2": 2, "NO_SHARD": 0}  # fmt: skip


def _zero_stage(value: Any, notes: list[str]) -> int | None:
    """The ZeRO stage of a record's ``parallelism.zero_stage``: a number (or a number written
    as text) as it is, a text by the first of :data:`_ZERO_WORDS` it matches (in that order:
    "sharded but not resharded" before "sharded"), None where it is silent (absent, "not
    stated"); a text that names no sharding is not expressible, never a silent 0."""
    if value is None or isinstance(value, str) and _NOT_STATED.search(value):
        return None
    n = record_int(value)
    if n is None and isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    if n is not None:
        return n
    text = str(value)
    for m in _EXPLICIT_STAGE.finditer(text):
        if not _NEGATED_BEFORE.search(text[: m.start()]):
            notes.append(f"zero_stage {text!r}: {m.group(1)} (named)")
            return int(m.group(1))
    for pattern, stage, why in _ZERO_WORDS:
        if pattern.search(str(value)):
            notes.append(f"zero_stage {str(value)!r}: {stage} ({why})")
            return stage
    raise _NotExpressible(
        f"parallelism.zero_stage {value!r}: not a ZeRO stage (0-3) and names "
        "no sharding simtrain knows (ZeRO-1/2/3, FULL_SHARD, SHARD_GRAD_OP)"
    )


_TRUE_WORDS = re.compile(r"^\s*(?:true|yes|on|enabled?|used)\b", re.I)
_FALSE_WORDS = re.compile(r"^\s*(?:false|no|off|disabled?|none|not used)\b", re.I)


def _flag(key: str, value: Any) -> bool | None:
    """A record's yes/no setting: a bool as it is, "true" / "yes" / "on" / "enabled" and
    "false" / "no" / "off" / "none" in words, None where it is silent (absent, "not stated");
    other words are not expressible (never read as true because they are a non-empty text)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    text = str(value)
    if _NOT_STATED.search(text):
        return None
    if _FALSE_WORDS.search(text):
        return False
    if _TRUE_WORDS.search(text):
        return True
    raise _NotExpressible(f"{key} {value!r}: not a yes/no setting (true, false, not stated)")


#: FSDP's hybrid strategies: shard within a node, replicate across nodes (torch
#: distributed/fsdp/api.py ShardingStrategy HYBRID_SHARD and _HYBRID_SHARD_ZERO2;
#: _init_utils.py _init_intra_and_inter_node_groups: the intra-node group is the node's
#: local GPUs).
_FSDP_HYBRID = ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")


def _hybrid_replicas(rec: Record, layout: tuple[int, int, int, int], node: int,
                     notes: list[str]) -> int:  # fmt: skip
    """The ZeRO replicas (``parallelism.zero_replicas``) of a record whose FSDP strategy is
    hybrid: one per ``node`` (:func:`_node_gpus`) of its data-parallel GPUs; 1 for any other
    record. ``layout`` (tp, pp, dp, cp): a hybrid record with tensor, pipeline or context
    parallelism (a device mesh the record does not give) is not expressible."""
    sharding = _fsdp_strategy(rec.parallelism)
    if sharding not in _FSDP_HYBRID:
        return 1
    tp, pp, dp, cp = layout
    if (tp, pp, cp) != (1, 1, 1) or dp % node:
        raise _NotExpressible(f"parallelism.fsdp_sharding {sharding}: its groups of {node} GPUs "
                              f"(one node) over dp {dp}, tp {tp}, pp {pp}, cp {cp}: a mesh the "
                              "record does not give")  # fmt: skip
    if dp == node:
        return 1
    notes.append(f"FSDP {sharding}: shards within each node's {node} GPUs, {dp // node} "
                 "replicas across the nodes (parallelism.zero_replicas)")  # fmt: skip
    return dp // node


def _fsdp_strategy(p: Mapping[str, Any]) -> str:
    """A record's ``fsdp_sharding`` as PyTorch spells the strategy ("hybrid shard" ->
    HYBRID_SHARD; "" where it says none)."""
    return str(p.get("fsdp_sharding") or "").upper().replace(" ", "_")


def _read_parallelism(p: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """A record's ``parallelism`` with its words read once, for both paths (this module's and
    the importers'): ``zero_stage`` a number (:func:`_zero_stage`; an FSDP sharding strategy,
    ``fsdp_sharding``, or ``fsdp: true`` / a degree where it says none), ``sequence_parallel``
    a bool, an ``offload`` of "none" / "no" no offload; a silent key is left out (the source's
    defaults apply)."""
    out = dict(p)
    zero = _zero_stage(p.get("zero_stage"), notes)
    sharding = _fsdp_strategy(p)
    if sharding in _FSDP_SHARDING:
        zero = _FSDP_SHARDING[sharding]
        if sharding != "FULL_SHARD":  # (the name says ZeRO-3)
            notes.append(f"FSDP {sharding} = ZeRO-{zero}")
    elif sharding:
        raise _NotExpressible(f"parallelism.fsdp_sharding {p.get('fsdp_sharding')!r}: not one "
                              f"of {', '.join(_FSDP_SHARDING)}")  # fmt: skip
    fsdp = p.get("fsdp")
    if zero is None and fsdp is not None and not isinstance(fsdp, str):
        if fsdp is True or (record_int(fsdp) or 0) > 1:
            zero = 3
            notes.append(f"fsdp {fsdp}: parameters, gradients and optimizer states sharded "
                         "(ZeRO-3)")  # fmt: skip
    out.pop("zero_stage", None)
    if zero is not None:
        out["zero_stage"] = zero
    for key in ("sequence_parallel", "async_tp"):
        flag = _flag(f"parallelism.{key}", p.get(key))
        out.pop(key, None)
        if flag is not None:
            out[key] = flag
    offload = p.get("offload")
    if offload is not None and (offload is False or _NOT_STATED.search(str(offload))
                                or _FALSE_WORDS.search(str(offload))):  # fmt: skip
        out.pop("offload")
    return out


def _parallelism(
    p: Mapping[str, Any], conv: SourceConvention, tp: int, pp: int, dp: int, notes: list[str]
) -> dict[str, Any]:
    """The scenario's ``parallelism`` section: the layout, ZeRO or FSDP sharding, the pipeline
    schedule and the data-parallel gradient reduction."""
    zero = int(p.get("zero_stage") or 0)  # (read by _read_parallelism)
    v = record_int(p.get("virtual_stages")) or 1
    schedule = map_schedule(p.get("schedule"), pp, v, notes)
    if pp > 1 and p.get("schedule") is None:
        notes.append("pipeline schedule not reported: 1F1B")
    if "interleaved" in str(p.get("schedule", "")).lower() and v == 1 and pp > 1:
        notes.append("interleaving degree not reported or 1: plain 1F1B")
    if schedule != "interleaved":
        v = 1
    sp = bool(p.get("sequence_parallel")) and tp > 1
    ddp = str(p.get("ddp_impl") or conv.ddp_default)
    if ddp == "local" and not p.get("ddp_impl"):
        notes.append(conv.ddp_note or "DDP implementation not reported: Megatron's default "
                     "'local' (one all-reduce of the contiguous gradient buffer after the "
                     "backward)")  # fmt: skip
    out: dict[str, Any] = {
        "dp": dp, "tp": tp, "pp": pp, "schedule": schedule, "virtual_stages": v,
        "zero_stage": zero, "sequence_parallel": sp,
        "layer_split": conv.layer_split if v == 1 else "uniform",
    }  # fmt: skip
    if ddp == "local":  # one bucket: the whole gradient buffer, reduced after the backward
        out["bucket_mb"] = ONE_BUCKET_MB
    ep = record_int(p.get("ep"))
    if ep is not None and ep > 1:  # expert parallelism (ParallelSpec.ep: experts over dp·cp)
        out["ep"] = ep
    return out


def record_to_scenario(rec: Record) -> Scenario | SkipReason:
    """The :class:`Scenario` of a record, or a :class:`SkipReason` saying why it cannot be
    expressed (:func:`translate` also returns the assumptions made)."""
    tr = translate(rec)
    return tr if isinstance(tr, SkipReason) else tr.scenario
