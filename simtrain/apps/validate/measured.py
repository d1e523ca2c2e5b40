"""Measured against predicted: the metrics a record measured, in simtrain's units, and one
:class:`Comparison` per metric with the prediction converted into the source's convention."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from simtrain.apps.validate.conventions import NO_PEFT_FLOP_RULE, record_convention, source_flops
from simtrain.apps.validate.predict import Predictor
from simtrain.apps.validate.records import (
    FRACTION_METRICS,
    MEMORY_KEY_ALIASES,
    MEMORY_KEY_PREFIXES,
    MEMORY_KEY_UNITS,
    NUMERIC_MEASURED_KEYS,
    Record,
)
from simtrain.apps.validate.translate import Translation
from simtrain.spec.scenario import Scenario
from simtrain.units import GIB, MIB

# Metrics in table / JSON order. "fits" compares booleans: the fit verdict where the source
# tells out-of-memory from other failures; "crash_or_oom" the verdict on runs a source records
# as failed without saying why (issue 13: such a run is no evidence that the model does not fit,
# so it is not counted as a fit verdict; the share predicted not to fit is reported apart).
METRICS = (
    "step_time_s",
    "tokens_per_s",
    "tflops_per_gpu",
    "mfu",
    "hfu",
    "layer_forward_s",
    "layer_backward_s",
    "peak_memory_bytes",
    "step_memory_bytes",
    "fits",
    "crash_or_oom",
)
#: Boolean metrics: error 0 (right) or 100 (wrong).
VERDICT_METRICS = ("fits", "crash_or_oom")
TIME_METRICS = ("step_time_s", "tokens_per_s", "tflops_per_gpu", "mfu", "hfu", "layer_forward_s",
                "layer_backward_s")  # fmt: skip
#: One transformer block's forward / backward (a per-layer timer, kind layer_microbenchmark:
#: ``costs.chunk_time.block_times_ns``), from the record's milliseconds.
LAYER_METRICS = {"layer_forward_s": "layer_forward_ms", "layer_backward_s": "layer_backward_ms"}
#: Memory metrics, in bytes: the peak, and the allocated peak from the end of the last backward
#: to the end of the optimizer step (a peak counter reset after the forward / backward:
#: nanotron's sweep logs 'Mem Alloc (GB)' so), record key ``step_peak_mem_gb`` / ``_gib``.
MEMORY_METRICS = ("peak_memory_bytes", "step_memory_bytes")
STEP_METRICS = tuple(m for m in TIME_METRICS if m not in LAYER_METRICS)
#: :func:`read_outcome`'s readings: out of memory, a failed run whose source does not say
#: whether it ran out of memory, and a run that fit.
OOM, CRASHED_OR_OOM, FIT = "oom", "crashed_or_oom", "fit"


_CRASH = re.compile(r"crash|fail|\bhang|\berror")
# "no OOM", "without OOM errors", "not out of memory": said not to have happened
_NEGATED = re.compile(r"\b(?:no|without|not)\s+(?:oom|out of memory|crash\w*|errors?|"
                      r"failures?|hangs?)(?:\s+errors?)?\b")  # fmt: skip
_OOM = re.compile(r"\boom\b|out of memory")
_EITHER = re.compile(r"(?:crash|fail)\w*\s*(?:or|/)\s*oom|oom\s*(?:or|/)\s*(?:crash|fail)")


def read_outcome(value: object) -> str:
    """A record's ``measured.outcome`` as :data:`OOM`, :data:`CRASHED_OR_OOM` or :data:`FIT`:
    "OOM", "out of memory", "CUDA error: out of memory" -> OOM; a crash or failure that may
    have been either ("crashed or OOM", "crashed/oom") or is not said to be memory ("crashed",
    "NCCL error") -> CRASHED_OR_OOM; anything else (absent, "ok", "completed", what it says did
    not happen: "no OOM") -> FIT."""
    text = re.sub(r"[_-]+", " ", str(value or "").strip().lower())
    text = _NEGATED.sub(" ", text)
    if _OOM.search(text):
        return CRASHED_OR_OOM if _EITHER.search(text) else OOM
    return CRASHED_OR_OOM if _CRASH.search(text) else FIT


@dataclass(frozen=True, slots=True)
class Comparison:
    id: str
    source: str
    metric: str
    measured: float | bool
    predicted: float | bool
    error_pct: float  # 100·(predicted − measured)/measured; fits: 0 (right) or 100 (wrong)


def measured_values(rec: Record, sc: Scenario,
                    zeros: list[str] | None = None) -> dict[str, float | bool]:  # fmt: skip
    """The metrics of a record simtrain can predict, in its units (memory in bytes). Each
    metric reads the first of its keys with a positive value; ``zeros`` (when given) gets the
    keys read as 0 of a metric that found none (:func:`zero_notes`)."""
    x = rec.measured
    n = sc.parallelism.gpus
    seq = sc.training.seq_len
    out: dict[str, float | bool] = {}

    def num(key: str) -> float | None:
        # (translate refuses a non-number under these keys: the list must name every one read)
        assert key in NUMERIC_MEASURED_KEYS, key
        v = x.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        return float(v)

    def first(*keys: str) -> tuple[str, float] | None:
        """(key, value) of the first of ``keys`` with a positive value, else None."""
        nil = []
        for key in keys:
            v = num(key)
            if v is not None and v > 0:
                return key, v
            if v == 0:
                nil.append(key)
        if zeros is not None:
            zeros.extend(nil)
        return None

    if rec.kind == "layer_microbenchmark":  # one block's times; no step, no fit verdict
        for metric, key in LAYER_METRICS.items():
            if got := first(key):
                out[metric] = got[1] / 1e3
        return out
    if got := first("step_time_s"):
        out["step_time_s"] = got[1]
    if got := first("tokens_per_s", "tokens_per_s_per_gpu", "samples_per_s"):
        key, v = got
        out["tokens_per_s"] = v * {"tokens_per_s": 1, "tokens_per_s_per_gpu": n}.get(key, seq)
    conv = record_convention(rec)
    # a PEFT row's TFLOP/s and MFU where the source's FLOP count has no rule for frozen weights
    unstated = sc.training.peft.method != "none" and conv.flops in NO_PEFT_FLOP_RULE
    if not unstated:
        if got := first("tflops_per_gpu", "model_tflops_per_gpu"):
            out["tflops_per_gpu"] = got[1]
        for k in FRACTION_METRICS:
            if got := first(k):
                out[k] = got[1]
    gb = conv.memory_gb_unit
    for metric, prefix in zip(MEMORY_METRICS, MEMORY_KEY_PREFIXES, strict=True):
        units = {a + suffix: unit for a in (prefix, *MEMORY_KEY_ALIASES[prefix])
                 for suffix, unit in zip(MEMORY_KEY_UNITS, (gb, GIB, MIB), strict=True)}  # fmt: skip
        if got := first(*units):
            out[metric] = got[1] * units[got[0]]
    outcome = read_outcome(x.get("outcome"))
    if outcome == CRASHED_OR_OOM:
        # measured: the run failed; predicted: simtrain says it does not fit (the cause it can
        # name); a "no" is no error of a fit verdict, only a failure simtrain does not explain
        out["crash_or_oom"] = True
    else:
        out["fits"] = outcome == FIT
    return out


def zero_notes(rec: Record, sc: Scenario) -> tuple[str, ...]:
    """A note for each measured value of 0 the comparison read and found nothing else for its
    metric: no error can be taken against 0 (a source rounds a tiny value to 0, a sweep's MFU
    of 0.0004 printed as 0.000), so that metric is not compared."""
    zeros: list[str] = []
    measured_values(rec, sc, zeros)
    return tuple(f"measured.{k} is 0: not compared (no error can be taken against 0)"
                 for k in zeros)  # fmt: skip


def _error_pct(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas


def compare_record(tr: Translation, predictor: Predictor | None = None) -> list[Comparison]:
    """Predict every metric the record measured and compare."""
    pr = predictor or Predictor()
    rec, sc = tr.record, tr.scenario
    conv = record_convention(rec)
    meas = measured_values(rec, sc)
    if not tr.capacity_known:
        meas.pop("fits", None)
        meas.pop("crash_or_oom", None)
    out: list[Comparison] = []
    mem = (pr.memory_report(sc)
           if any(k in meas for k in (*MEMORY_METRICS, *VERDICT_METRICS)) else None)  # fmt: skip
    T = pr.step_time(sc) if any(k in meas for k in STEP_METRICS) else None
    blocks = pr.block_times(sc) if any(k in meas for k in LAYER_METRICS) else None
    n = sc.parallelism.gpus
    hw = sc.hardware
    peak = hw.compute_peak(sc.training.precision_spec.compute_dtype)
    if sc.training.precision.startswith(("fp8", "mxfp8")) and conv.fp8_mfu_peak == "fp8":
        peak = hw.peak("fp8") or peak
    for metric in METRICS:
        if metric not in meas:
            continue
        x = meas[metric]
        pred: float | bool
        if metric in VERDICT_METRICS:
            assert mem is not None
            pred = mem.fits if metric == "fits" else not mem.fits
            out.append(Comparison(rec.id, rec.source_key, metric, bool(x), pred,
                                  0.0 if pred == x else 100.0))  # fmt: skip
            continue
        if metric in MEMORY_METRICS:
            assert mem is not None
            # the source's stage, else every distinct GPU's largest
            gpus = ((mem.stages[conv.memory_stage],)
                    if conv.memory_stage is not None and conv.memory_stage < len(mem.stages)
                    else mem.gpus)  # fmt: skip
            if metric == "peak_memory_bytes":
                pred = float(max(g.peak_memory_bytes for g in gpus))
                if not conv.memory_includes_context:
                    pred -= sc.hardware.cuda_context_bytes
            else:  # torch's allocated counter (StageMemory.step_memory_bytes)
                pred = float(max(g.step_memory_bytes for g in gpus))
        elif metric in LAYER_METRICS:
            assert blocks is not None
            pred = blocks[0] if metric == "layer_forward_s" else blocks[1]
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
