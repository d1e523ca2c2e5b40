"""Cells a source printed that the code of its own run contradicts, and the values that ran.

A record keeps every cell as its source printed it (``measured/``). Where the source's code at
the release the row names sets a different layout, and the row's measurement agrees with that
code's layout (the same figure as the neighbouring rows printed with it), validate reads the
row with the code's values and lists the erratum among the record's assumptions. Each entry
names the printed value, the value that ran, the file and lines that set it and the evidence
that the measurement is of that layout. A printed value that no longer matches the record is
an error (:func:`apply_errata`): an erratum never applies to a cell it was not written for.
Nothing here is fitted: no measured figure is read to choose a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from simtrain.apps.validate.records import Record


@dataclass(frozen=True, slots=True)
class Erratum:
    """One cell of one record: ``section.key`` printed as ``printed``, run as ``as_run`` (None:
    the cell absent, as the tables' "n/a")."""

    record_id: str
    section: str  # "training" or "parallelism"
    key: str
    printed: Any
    as_run: Any
    source: str  # the code that set ``as_run``
    evidence: str  # why the measurement is of ``as_run``


#: Megatron-Bridge v0.3.1 is the NeMo 26.02.01 container's (docs/versions1.json at v0.4.2);
#: its launcher's default config variant V2 (scripts/performance/argument_parser.py l.694-700
#: at v0.3.0) sets the GB300 Llama 3 70B MXFP8 and NVFP4 runs to pp 4, vp 5 and the default
#: micro-batch 1 (WorkloadBaseConfig.micro_batch_size = 1, utils/utils.py).
_MBRIDGE_0_3_1_GB300_70B = (
    "Megatron-Bridge v0.3.1 (the NeMo 26.02.01 container's) scripts/performance/configs/llama/"
    "llama3_workload_base_configs.py l.219-231 LLAMA3_70B_PRETRAIN_CONFIG_GB300_{FP8_MX,NVFP4}_V2: "
    "pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=5, micro_batch_size "
    "the default 1 (scripts/performance/utils/utils.py WorkloadBaseConfig)"
)
_MBRIDGE_0_3_1_EVIDENCE = (
    "the archive's 26.02.01 GB300 Llama 3 70B MXFP8 and NVFP4 rows print the FP8 (current "
    "scaling) row's MBS 2 and VP n/a above them (the NVFP4 row its PP 1 too: 70B of weights, "
    "gradients and Adam states unsharded on every GPU, which no GB300 holds); their 4,798 and "
    "7,002 tokens/s/GPU are within 6 % of the 26.02 (4,596 / 6,798) and 26.04 (4,742 / 7,397) "
    "rows that print pp 4, vp 5, MBS 1, the same config"
)
#: ... and its Qwen3-30B-A3B H100 FP8-CS preset, which v0.3.1 changed from v0.3.0's pp 2, vp 12,
#: ep 8 (the 26.02 row's) to pp 1, ep 16 (the 26.04 rows').
_MBRIDGE_0_3_1_H100_QWEN3_30B = (
    "Megatron-Bridge v0.3.1 (the NeMo 26.02.01 container's) scripts/performance/configs/qwen/"
    "qwen3_workload_base_configs.py l.408-414 QWEN3_30B_A3B_PRETRAIN_CONFIG_H100_FP8_CS_V1: "
    "expert_model_parallel_size=16, pipeline and virtual pipeline sizes the defaults (1, None: "
    "scripts/performance/utils/utils.py WorkloadBaseConfig); v0.3.0's preset was pp 2, vp 12, "
    "ep 8, the cells printed"
)
_MBRIDGE_0_3_1_QWEN3_EVIDENCE = (
    "the row prints the 26.02 row's layout (v0.3.0's preset) but measures 9,058 tokens/s/GPU "
    "against that row's 5,113 (1.77x) and the 26.04 / 26.04.01 rows' 8,901 / 8,960, which "
    "print pp 1, ep 16, v0.3.1's preset"
)


def _errata(record_id: str, source: str, evidence: str,
            cells: tuple[tuple[str, str, Any, Any], ...]) -> tuple[Erratum, ...]:  # fmt: skip
    """One record's errata: ``cells`` of (section, key, printed, as run)."""
    return tuple(Erratum(record_id, section, key, printed, as_run, source, evidence)
                 for section, key, printed, as_run in cells)  # fmt: skip


ERRATA: tuple[Erratum, ...] = (
    *_errata(
        "mbridge260201_GB300_LLAMA3_70B_FP8MX_64gpu",
        _MBRIDGE_0_3_1_GB300_70B,
        _MBRIDGE_0_3_1_EVIDENCE,
        (("training", "micro_batch", 2, 1), ("parallelism", "virtual_stages", None, 5)),
    ),
    *_errata(
        "mbridge260201_GB300_LLAMA3_70B_NVFP4_64gpu",
        _MBRIDGE_0_3_1_GB300_70B,
        _MBRIDGE_0_3_1_EVIDENCE,
        (
            ("training", "micro_batch", 2, 1),
            ("parallelism", "pp", 1, 4),
            ("parallelism", "dp", 64, 16),
            ("parallelism", "virtual_stages", None, 5),
        ),
    ),
    *_errata(
        "mbridge260201_H100_Qwen3_30B_a3B_FP8CS_16gpu",
        _MBRIDGE_0_3_1_H100_QWEN3_30B,
        _MBRIDGE_0_3_1_QWEN3_EVIDENCE,
        (
            ("parallelism", "pp", 2, 1),
            ("parallelism", "dp", 8, 16),
            ("parallelism", "virtual_stages", 12, None),
            ("parallelism", "ep", 8, 16),
        ),
    ),
)


class ErratumMismatch(ValueError):
    """An erratum whose printed value is not the record's: the record changed under it."""


def errata_for(record_id: str) -> tuple[Erratum, ...]:
    """The errata written for one record (empty for almost every record)."""
    return tuple(e for e in ERRATA if e.record_id == record_id)


def apply_errata(rec: Record, notes: list[str]) -> Record:
    """``rec`` with its errata's values (:data:`ERRATA`), each listed in ``notes``; ``rec``
    itself where it has none. Raises :class:`ErratumMismatch` where a cell is not the value the
    erratum says was printed."""
    found = errata_for(rec.id)
    if not found:
        return rec
    sections: dict[str, dict[str, Any]] = {
        "training": dict(rec.training), "parallelism": dict(rec.parallelism)}  # fmt: skip
    for e in found:
        cell: Mapping[str, Any] = sections[e.section]
        if cell.get(e.key) != e.printed:
            raise ErratumMismatch(
                f"{rec.id}: erratum for {e.section}.{e.key} expects the printed value "
                f"{e.printed!r}, the record has {cell.get(e.key)!r}"
            )
        if e.as_run is None:  # a cell the run did not have (VP n/a)
            sections[e.section].pop(e.key)
        else:
            sections[e.section][e.key] = e.as_run
    changed = ", ".join(f"{e.section}.{e.key} {_shown(e.printed)} -> {_shown(e.as_run)}"
                        for e in found)  # fmt: skip
    notes.append(f"erratum: {changed}: {found[0].source}; {found[0].evidence}")
    return replace(rec, training=sections["training"], parallelism=sections["parallelism"])


def _shown(value: Any) -> str:
    return "n/a" if value is None else str(value)
