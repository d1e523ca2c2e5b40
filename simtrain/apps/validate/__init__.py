"""Validation against measured training runs: ``simtrain validate``.

Reads records in the schema of ``measured/published_runs.yaml`` (see ``measured/README.md``),
turns each one the simulator can express into a :class:`~simtrain.spec.scenario.Scenario`, predicts it,
and compares per metric with the measurement:

``step_time_s``, ``tokens_per_s``, ``tflops_per_gpu``, ``mfu``, ``hfu``, ``layer_forward_s`` and
``layer_backward_s`` (records of kind ``layer_microbenchmark``: one transformer block's times,
``costs.chunk_time.block_times_ns``), ``peak_memory_bytes``,
``fits`` (booleans: a measured run fitted unless its ``outcome`` says it ran out of memory) and
``crash_or_oom`` (a run whose source says only that it failed, ``crashed_or_oom`` / ``crashed``:
no fit verdict; true when simtrain predicts it does not fit, the one cause it can name).

**Like with like.** Each source counts FLOPs its own way (``shared/measured/formulas.md`` §1, §6);
the prediction is converted into the source's convention before comparing, with the FLOP count
computed from the record's own shape, never from simtrain's:

======================  ======================================================================
convention              FLOPs per step (B sequences of s tokens, l layers, hidden h, vocab V)
======================  ======================================================================
``megatron_eq3``        Narayanan et al. 2021 Eq. 3, recompute included:
                        ``96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))``; TFLOP/s = F / (T · n GPUs)
``korthikanti``         MFU: Eq. 7 ``72·B·l·s·h²·(1 + s/(6h) + V/(12·h·l))``; HFU: Eq. 8
                        (selective, ``s/(3h)``), Eq. 3 (full recompute) or Eq. 7 (none), over
                        n · 312 TFLOP/s
``mosaicml``            llm-foundry: MFU ``(6·N·s + 12·l·h·s²)·B``, HFU
                        ``(8·N·s + 16·l·h·s²)·B`` with activation checkpointing; model TFLOP/s =
                        MFU numerator / (T · n)
``nanotron``            nanotron ``llama.get_flops``: 3 × (forward matmuls incl. full s²
                        attention and the LM head); MFU over the dense bf16 peak
``megatron_core``       Megatron-Core ``num_floating_point_operations`` (Megatron-Core, NeMo):
                        ``12·B·s·l·h²·((1 + g/a + s/h) + (f/h)·(3/2 SwiGLU) + V/(2lh))``,
                        model FLOPs; ``megatron_core_causal`` (Megatron-Bridge) counts s/(2h)
``torchtitan``          ``get_num_flop_per_token``: ``6·N_non-embedding + 12·l·a·d·s`` per token
``megatron_ds_2021``    Megatron-DeepSpeed before 2022-02-21: ``(4 with checkpointing, else 3)
                        · 2·N_non-embedding·s·B`` (BLOOM chronicles up to 02-20)
``simtrain``            records of unknown sources: simtrain's own model FLOPs (MFU) and
                        executed FLOPs (TFLOP/s, HFU) from ``simtrain.report.metrics``
======================  ======================================================================

The peak in MFU/HFU is the dense peak of the compute dtype in the hardware profile (A100: 312,
H100: 989.4 TFLOP/s; the sources use the same figures).

**Networks.** ``hardware.gpu`` picks the profile; ``hardware.inter_node`` can swap it for one of
the same node on another network (:data:`NETWORK_PROFILES`): H100 records on EFA, the
Ultra-Scale Playbook's cluster, run on ``h100_sxm5_80gb_efa``, whose NIC rate and per-step
latency are fitted to that cluster's published collective bandwidths (the profile's comments).

**Speed.** Fit verdicts and peak memory need :func:`~simtrain.costs.memory.estimate_memory` only;
timing metrics run the engine. Most steps' time is affine in the number of micro-batches m
from a small m₁ on (1; pp interleaved or over blocking p2p; :func:`predicted_step_time`), so
a step of more than 6·m₁ micro-batches is simulated with m₁, 2·m₁ and 3·m₁ and, where the
third time lies on the line through the first two to the nanosecond, extrapolated; a step off
the line, or no longer than the three together, is simulated whole. The prediction is the
full simulation's, tested in ``tests/test_validate.py``. Identical scenarios are simulated
once.

Records the simulator cannot express come back as :class:`SkipReason` with the reason; nothing
is dropped silently. A precision text maps to a simtrain precision or to a reason, never to a
silent bf16 (:func:`read_precision`); what simtrain cannot express yet (a mixture of experts
in keys the model does not read, a Blackwell GPU without a profile) is named together in one
reason (:func:`not_yet_expressible`).

**Families and noise.** ``--by family`` (and the JSON's ``by_family``) gives per source key and
metric n, MAPE, median |error|, median signed error and the share within ±10 % and ±25 %, with
all records and with the records of noisy pairs left out: two records of the same layout
(:func:`~simtrain.apps.validate.run.layout_key`) whose measurements of one metric are more than
2x apart (``noisy_pairs``, listed in the table and the JSON).

**Runtimes.** :func:`runtime_of` names the training runtime (framework) a source's runs ran on,
one of :data:`RUNTIME_PROFILES` (``measured/README.md`` lists each source's); a record's own
``runtime`` key (any profile of runtimes/) overrides it for a run on another code version (the
Playbook's pipeline runs after its "pp fix": ``nanotron``); a record of a source without an
entry runs under the framework its own text names (``conventions.runtime_for``), else
``pytorch_eager``. Defaults used where a source omits a setting are listed per record
(:attr:`Translation.assumptions`) and printed with the table.

**Modules.** ``records`` (the YAML schema), ``conventions`` (each source's defaults and its way
of counting FLOPs and memory), ``translate`` (record -> scenario), ``predict`` (memory reports
and step times), ``measured`` (measured vs predicted, per metric), ``run`` (:func:`validate`,
:func:`summarize`) and ``output`` (table, CSV, scatter plot, the command).
"""

from simtrain.apps.validate.conventions import RUNTIME_PROFILES, runtime_of
from simtrain.apps.validate.measured import METRICS, Comparison, compare_record, measured_values
from simtrain.apps.validate.output import format_table, scatter_plot, validate_command, write_csv
from simtrain.apps.validate.predict import predicted_step_time
from simtrain.apps.validate.records import (
    PACKAGED_PATH,
    Record,
    SkipReason,
    load_records,
    source_key,
)
from simtrain.apps.validate.run import (
    ErrorStats,
    FamilySummary,
    NoisyPair,
    Summary,
    ValidationResult,
    layout_key,
    summarize,
    validate,
)
from simtrain.apps.validate.translate import (
    ONE_BUCKET_MB,
    Translation,
    gpu_profile,
    map_precision,
    map_recompute,
    network_profile,
    not_yet_expressible,
    read_precision,
    record_to_scenario,
    translate,
)

# What other modules import from simtrain.apps.validate (the command, tests, the plan's tests).
__all__ = [
    "METRICS", "ONE_BUCKET_MB", "PACKAGED_PATH", "RUNTIME_PROFILES", "Comparison", "ErrorStats",
    "FamilySummary", "NoisyPair", "Record", "SkipReason", "Summary", "Translation",
    "ValidationResult", "compare_record", "format_table", "gpu_profile", "layout_key",
    "load_records", "map_precision", "map_recompute", "measured_values", "network_profile",
    "not_yet_expressible", "predicted_step_time", "read_precision", "record_to_scenario",
    "runtime_of", "scatter_plot", "source_key", "summarize", "translate", "validate",
    "validate_command", "write_csv",
]  # fmt: skip
