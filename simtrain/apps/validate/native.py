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

Families (``records.source_key``) through an importer (:data:`IMPORTER_OF`):

- megatron: Megatron-LM SC'21 (``megatron_sc21``), Korthikanti et al. 2022 (``korthikanti2022``),
  the Megatron-LM README (``megatron_readme``, ``megatron_v1_blog``).

On ``translate.py``'s own path (no importer, or not converted yet; see :data:`IMPORTER_OF`):
Megatron-Core r0.8.0, NeMo and Megatron-Bridge (Megatron flags, but Megatron-Core's DDP buckets
and fp32 gradient reduction for --bf16 would change their scenarios: not converted yet), DeepSpeed
(ZeRO-3 rows of SC'21, BLOOM, BLOOM chronicles, MT-NLG: Megatron-DeepSpeed), nanotron (Ultra-Scale
Playbook), torchtitan, MosaicML llm-foundry, HF Transformers, simtrain's own H200 runs, and the
papers' tables of other frameworks (ZeRO, GPipe, OPT, PaLM, LLaMA, Llama 3, LoRA / QLoRA, torchao).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from simtrain.apps.importers.common import Imported, with_overrides
from simtrain.apps.importers.megatron import OVERLAP_FLAGS, import_megatron_flags
from simtrain.apps.validate.conventions import SourceConvention, runtime_of
from simtrain.apps.validate.records import Record

#: The importer each family's records go through (source key -> importer kind).
IMPORTER_OF: dict[str, str] = {
    "megatron_sc21": "megatron",
    "korthikanti2022": "megatron",
    "megatron_readme": "megatron",
    "megatron_v1_blog": "megatron",
    "mtnlg": "megatron",
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
    """The importer kind a record goes through, None for translate.py's own path."""
    return IMPORTER_OF.get(rec.source_key)


def megatron_flags(rec: Record, conv: SourceConvention, model: Mapping[str, Any],
                   training: Mapping[str, Any], layout: tuple[int, int, int, int],
                   batch: tuple[int, int], par: Mapping[str, Any]) -> list[str]:  # fmt: skip
    """The ``pretrain_gpt.py`` flags of a Megatron record: ``model`` and ``training`` as the
    record and its source convention give them (translate._model, translate._training),
    ``layout`` = (tp, pp, dp, cp), ``batch`` = (global, micro), ``par`` the record's
    ``parallelism`` with the convention's implied keys. A run on Megatron-LM 2021 (the
    ``megatron_lm_2021`` runtime) is written with that era's flags (``--DDP-impl``,
    ``--checkpoint-activations``), which is how the importer tells the two apart."""
    tp, pp, dp, cp = layout
    B, b = batch
    legacy = runtime_of(rec.source_key) == "megatron_lm_2021"
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
    if training["optimizer"] in ("sgd", "sgd_momentum"):
        w += ["--optimizer", "sgd", "--sgd-momentum",
              "0.9" if training["optimizer"] == "sgd_momentum" else "0"]  # fmt: skip
    w += _recompute_flags(training["recompute"], legacy)
    v = int(par.get("virtual_stages") or 1)
    if pp > 1 and v > 1 and "gpipe" not in str(par.get("schedule", "")).lower():
        w += ["--num-virtual-stages-per-pipeline-rank", v]
    if par.get("sequence_parallel"):
        w.append("--sequence-parallel")
    zero = int(par.get("zero_stage") or 0)
    if zero == 1:
        w.append("--use-distributed-optimizer")
    elif zero in _FSDP_STRATEGY:
        w += ["--use-megatron-fsdp", "--data-parallel-sharding-strategy", _FSDP_STRATEGY[zero]]
    ddp = str(par.get("ddp_impl") or conv.ddp_default)
    if legacy or ddp == "local":
        w += ["--DDP-impl", ddp]
    text = f"{rec.notes} {rec.training} {rec.parallelism}"
    for flag in OVERLAP_FLAGS:
        if flag in text and (flag != "--overlap-param-gather" or zero):
            w.append(flag)
    return [str(x) for x in w]


def _architecture_flags(model: Mapping[str, Any], legacy: bool) -> list[str]:
    """The flags of the model's architecture where it is not Megatron's GPT default (GeLU 4h,
    learned positions, biases, LayerNorm, tied embeddings, dropout 0.1)."""
    w: list[str] = []
    if model.get("mlp") == "swiglu":
        w.append("--swiglu")
    if model.get("positions") == "rotary":
        w += ["--position-embedding-type", "rope"]
    if model.get("bias") is False:
        w.append("--disable-bias-linear")
    if model.get("qkv_bias"):
        w.append("--add-qkv-bias")
    if model.get("norm") == "rmsnorm":
        w += ["--normalization", "RMSNorm"]
    if model.get("tied_embeddings") is False:
        w.append("--untie-embeddings-and-output-weights")
    dropout = model.get("dropout", 0.0)
    w += ["--hidden-dropout", str(dropout), "--attention-dropout", str(dropout)]
    if model.get("flash_attention"):
        w.append("--use-flash-attn")
    elif not legacy:  # Transformer Engine's fused attention is Megatron-Core's default
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


@dataclass(frozen=True, slots=True)
class NativeConfig:
    """A record as its framework's configuration: what ``simtrain import KIND FILE --gpus N
    --set ...`` reads to give the record's scenario. ``words``: the file's content (Megatron's
    flags); ``sets``: the ``--set`` overrides for what the configuration does not say."""

    kind: str
    words: tuple[str, ...]
    gpus: int
    sets: tuple[str, ...]

    def import_args(self, path: str) -> list[str]:
        """The ``simtrain`` arguments that import ``path`` (holding :attr:`words`) as the
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
    sets = [f"name={json.dumps(rec.id)}", f"hardware={profile}"]
    have = imp.data["model"]
    sets += [f"model.{k}={json.dumps(v)}" for k, v in model.items() if k not in have]
    t = imp.data["training"]
    for key in ("precision", "cross_entropy"):
        if t.get(key, "standard" if key == "cross_entropy" else None) != training[key]:
            sets.append(f"training.{key}={training[key]}")
    if conv.layer_split != "uniform" and imp.data["parallelism"].get("virtual_stages", 1) == 1:
        sets.append(f"parallelism.layer_split={json.dumps(conv.layer_split)}")
    name = runtime_of(rec.source_key)
    if imp.data["runtime"]["name"] != name:
        notes.append(f"runtime {name}: the framework the source ran "
                     f"({imp.data['runtime']['name']} flags)")  # fmt: skip
        sets.append(f"runtime.name={name}")
    notes.extend(f"{imp.kind}: {a}" for a in imp.assumptions if not a.startswith("hardware "))
    notes.extend(f"{imp.kind}, not simulated: {u}" for u in imp.unsupported)
    return sets


def through_megatron(rec: Record, conv: SourceConvention, profile: str, model: dict[str, Any],
                     training: dict[str, Any], layout: tuple[int, int, int, int],
                     batch: tuple[int, int], par: Mapping[str, Any],
                     notes: list[str]) -> tuple[dict[str, Any], NativeConfig]:  # fmt: skip
    """The scenario document of a Megatron record and its native configuration: its flags
    (:func:`megatron_flags`) through ``import_megatron_flags``, with the overrides of
    :func:`overlay` applied as ``simtrain import``'s ``--set`` applies them."""
    tp, pp, dp, cp = layout
    flags = megatron_flags(rec, conv, model, training, layout, batch, par)
    gpus = tp * pp * dp * cp
    imp = import_megatron_flags(flags, gpus=gpus, file=rec.id)
    sets = overlay(rec, imp, profile, conv, model, training, notes)
    native = NativeConfig("megatron", tuple(flags), gpus, tuple(sets))
    return with_overrides(imp, sets), native
