"""Measured-run records: the YAML schema of ``measured/published_runs.yaml``
(``measured/README.md``), read into :class:`Record`, and :class:`SkipReason` for a record the
simulator cannot express."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from simtrain.errors import ConfigError
from simtrain.spec.hardware import HARDWARE_DIR
from simtrain.spec.model import ModelSpec
from simtrain.spec.runtime import available_runtimes
from simtrain.spec.yamlfile import load_yaml


def record_int(v: Any) -> int | None:
    """An integer (or an integral float) of a record's section, None otherwise (a bool, a
    string, a fraction, absent)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v if isinstance(v, int) else None


DEFAULT_PATH = Path("measured") / "published_runs.yaml"
PACKAGED_PATH = HARDWARE_DIR.parent / "measured" / "published_runs.yaml"
# The record files ``simtrain validate`` reads when given no PATH: every file of measured/ in this
# schema that holds published runs. simtrain's own measurements (simtrain_h200.yaml) are kept
# apart: they validate the cost model on one GPU (``simtrain validate measured/simtrain_h200.yaml``)
# and are not published runs.
DEFAULT_FILES = ("published_runs.yaml", "more_runs_2026-12.yaml", "simumax_b200.yaml",
                 "torchao_float8.yaml", "torchtitan_2412.yaml",
                 "torchtitan_2506_asynctp.yaml", "llama3_table4.yaml",
                 "mbridge_2511.yaml", "mbridge_26x.yaml", "fms_fsdp.yaml",
                 "kempnerforge.yaml", "nemo_automodel.yaml", "nemo2407_rest.yaml")  # fmt: skip

#: A measured memory key is a prefix (the peak's reading: the whole step's; the optimizer step's
#: allocated, ``measured.MEMORY_METRICS`` in this order) and a unit suffix (GB as the source's
#: convention says, GiB, MiB).
MEMORY_KEY_PREFIXES = ("peak_mem", "step_peak_mem")
MEMORY_KEY_UNITS = ("_gb", "_gib", "_mib")
#: Other spellings of a prefix a record may use, read the same (``peak_memory_gib`` is
#: ``peak_mem_gib``): a memory figure under them is compared, not left unread.
MEMORY_KEY_ALIASES = {"peak_mem": ("peak_memory",), "step_peak_mem": ("step_peak_memory",)}
#: The measured keys that are a fraction of the GPU's peak (MFU, HFU): at most 1.
FRACTION_METRICS = ("mfu", "hfu")
#: The measured keys validate reads as numbers (``measured.measured_values``; a record's other
#: measured keys are free): a value of another type there is a skip with the key, not dropped.
NUMERIC_MEASURED_KEYS = frozenset({
    "step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "samples_per_s", "tflops_per_gpu",
    "model_tflops_per_gpu", "mfu", "hfu", "layer_forward_ms", "layer_backward_ms",
    *(f"{a}{u}" for p in MEMORY_KEY_PREFIXES for a in (p, *MEMORY_KEY_ALIASES[p])
      for u in MEMORY_KEY_UNITS),
})  # fmt: skip

RECORD_KEYS = (
    "id", "kind", "source", "source_key", "runtime", "model", "training", "parallelism",
    "hardware", "measured", "notes", "native",
)  # fmt: skip
#: The keys of the sections validate reads (``measured/README.md``): a model section's are the
#: record's own (name, params_b, seq_len) and every ``ModelSpec`` field, passed through to the
#: scenario. Another key there is listed as not read (:func:`section_problems`): a typo such as
#: ``zero_stag: 3`` had run as ZeRO-0 without a word (a review, 2026-12-07).
SECTION_KEYS = {
    "model": ("params_b", "seq_len", *(f.name for f in fields(ModelSpec))),
    "training": ("global_batch", "global_batch_tokens", "micro_batch", "micro_batches",
                 "max_micro_batch", "local_batch", "grad_accum", "precision", "recompute",
                 "optimizer", "finetune", "offload", "activation_cpu_offload", "compile",
                 "techniques", "packed_sample_len"),
    "parallelism": ("tp", "pp", "dp", "cp", "ep", "virtual_stages", "schedule", "zero_stage",
                    "sequence_parallel", "fsdp", "fsdp_sharding", "ddp_impl", "offload",
                    "async_tp"),
    "hardware": ("gpu", "num_gpus", "gpus_per_node", "intra_node", "inter_node",
                 "network_measured"),
}  # fmt: skip
#: A record's sections, each a mapping (absent: empty).
SECTIONS = ("model", "training", "parallelism", "hardware", "measured")
#: Section keys whose value is text (a number or a list there is a mistake, not a setting).
TEXT_KEYS = {"hardware": ("gpu", "intra_node", "inter_node"),
             "training": ("precision", "recompute", "optimizer"),
             "parallelism": ("schedule",), "model": ("name",)}  # fmt: skip


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
    # The run's own configuration where the source gives it (``{kind: megatron, args: "..."}``:
    # the Megatron-LM arguments it was launched with), read by that framework's importer as is
    native: Mapping[str, Any] = field(default_factory=dict)
    # The runtime profile (runtimes/*.yaml) this run ran where it is not its source's
    # (conventions.runtime_for): one sweep run on two code versions, told apart by the run's own
    # provenance (the Ultra-Scale Playbook's pipeline runs before and after its "pp fix")
    runtime: str = ""
    # Keys of its sections validate does not read (a typo, or a key of a later schema): each
    # "section.key (why)", listed with the record's assumptions; the run is still compared
    unread: tuple[str, ...] = ()
    # A value of a type validate cannot read (a list where text goes): the record's skip reason
    invalid: str = ""


@dataclass(frozen=True, slots=True)
class SkipReason:
    """A record the simulator cannot express (or has nothing to compare for), with why."""

    id: str
    source: str
    reason: str


def skip(rec: Record, reason: str) -> SkipReason:
    return SkipReason(rec.id, rec.source_key, reason)


# Short source keys from record ids (first match wins); a record may set ``source_key``.
SOURCE_PREFIXES = (
    ("megatron_sc21_t2_zero3", "megatron_sc21_zero3"),  # DeepSpeed ZeRO-3 runs in Table 2
    ("bloom_prequel", "bloom_chronicles"),  # tr11-176B-ml/chronicles-prequel.md (Feb 2022)
    ("llama3_", "llama3"),  # Llama 3 Herd of Models, Table 4
    ("mbridge", "megatron_bridge"),  # Megatron-Bridge docs/performance-summary.md
    ("mcore_", "megatron_core"),  # Megatron-LM README (Megatron-Core r0.8.0)
    ("mtnlg", "mtnlg"),  # Smith et al. 2022, MT-NLG 530B
    ("nemo_automodel", "automodel"),  # NeMo AutoModel's performance summary, not NeMo 24.07's
    ("nemo", "nemo"),  # NeMo docs/source/performance/performance_summary.md
    ("torchao_", "torchao"),
    ("fms_fsdp_", "fms_fsdp"),  # IBM foundation-model-stack/fms-fsdp README
    ("kempner_", "kempnerforge"),  # KempnerInstitute/KempnerForge benchmark reports
    ("torchtitan_", "torchtitan"),
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


def _native(raw: dict[str, Any], file: str, where: str) -> Mapping[str, Any]:
    """``native``: ``{kind: megatron, args: "<pretrain_gpt.py arguments>"}`` (the one kind a
    record carries today), checked here so that a bad one is one line naming the key."""
    nat = _section(raw, "native", file, where)
    if nat and (nat.get("kind") != "megatron" or not isinstance(nat.get("args"), str)):
        raise ConfigError(file, f"{where}.native", "must be {kind: megatron, args: STRING}",
                          dict(nat))  # fmt: skip
    return nat


def _runtime_name(raw: dict[str, Any], file: str, where: str) -> str:
    """``runtime``: a runtime profile's name (runtimes/*.yaml), or absent."""
    v = raw.get("runtime")
    if v is None:
        return ""
    names = available_runtimes()
    if v not in names:
        raise ConfigError(file, f"{where}.runtime", "unknown runtime profile", v, ", ".join(names))
    return str(v)


def _section(raw: dict[str, Any], key: str, file: str, where: str) -> Mapping[str, Any]:
    v = raw.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(file, f"{where}.{key}", "must be a mapping", v)
    return v


def section_problems(rec_sections: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, ...], str]:
    """(unread keys, invalid value) of a record's sections: a key of a section validate reads
    (:data:`SECTION_KEYS`) that is none of its keys,
    named with the nearest (a typo: ``zero_stag: 3`` had run as ZeRO-0 without a word), or a
    measured key that reads like a compared one without being it (``step_time_ms``: not
    compared); and the first text key holding another type (:data:`TEXT_KEYS`), "" for none.
    Neither ends a run over a file: a record's unread keys are listed with its assumptions
    (and it is compared), an invalid value is its skip reason (a later schema's records may
    carry keys this one does not know)."""
    unread: list[str] = []
    invalid = ""
    for key, v in rec_sections.items():
        if key in SECTION_KEYS:
            allowed = SECTION_KEYS[key]
            for k in v:
                if k not in allowed:
                    near = difflib.get_close_matches(str(k), allowed, n=1)
                    hint = f"; did you mean {near[0]!r}?" if near else ""
                    unread.append(f"{key}.{k} (not a key validate reads{hint})")
            for k in TEXT_KEYS.get(key, ()):
                if v.get(k) is not None and not isinstance(v[k], str) and not invalid:
                    invalid = f"{key}.{k} must be text (got {v[k]!r})"
        elif key == "measured":
            numeric = sorted(NUMERIC_MEASURED_KEYS)
            for k in v:
                if k in NUMERIC_MEASURED_KEYS or not isinstance(k, str):
                    continue
                near = difflib.get_close_matches(k, numeric, n=1, cutoff=NEAR_MEASURED_KEY)
                if near:
                    unread.append(f"measured.{k} (not compared; did you mean {near[0]!r}?)")
    return tuple(unread), invalid


#: How near a measured key must read to a compared one to be listed as its typo (difflib's
#: ratio): step_time_ms, tokens_per_sec and peak_mem_gbs reach 0.92-0.96; the shipped records'
#: other measured keys at most 0.875 (tflops_per_gpu_max / _min against tflops_per_gpu).
NEAR_MEASURED_KEY = 0.9


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
        sections = {k: _section(raw, k, file, where) for k in SECTIONS}
        unread, invalid = section_problems(sections)
        out.append(
            Record(
                id=rid,
                kind=str(raw.get("kind", "training_run")),
                source=str(raw.get("source", "")),
                source_key=source_key(rid, raw.get("source_key")),
                **sections,
                notes=str(raw.get("notes", "") or ""),
                native=_native(raw, file, where),
                runtime=_runtime_name(raw, file, where),
                unread=unread,
                invalid=invalid,
            )
        )
    return out


def resolve_path(path: str | Path | None) -> Path:
    if path is not None:
        return Path(path)
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else PACKAGED_PATH


def resolve_paths(path: str | Path | None) -> list[Path]:
    """``[path]``, or with no path the :data:`DEFAULT_FILES` of ``measured/`` (the working
    directory's when it has one, else the installed package's)."""
    if path is not None:
        return [Path(path)]
    folder = DEFAULT_PATH.parent if DEFAULT_PATH.is_file() else PACKAGED_PATH.parent
    return [folder / name for name in DEFAULT_FILES if (folder / name).is_file()]


def load_record_files(paths: list[Path]) -> list[Record]:
    """The records of every file, in order; an id in two files is an error (ids are unique)."""
    out: list[Record] = []
    where: dict[str, Path] = {}
    for p in paths:
        for rec in load_records(p):
            if rec.id in where:
                raise ConfigError(str(p), f"{rec.id}.id", f"duplicate id (also in {where[rec.id]})",
                                  rec.id)  # fmt: skip
            where[rec.id] = p
            out.append(rec)
    return out
