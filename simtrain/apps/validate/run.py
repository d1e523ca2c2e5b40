"""A validation run: every record translated, predicted and compared, and the errors
summarised per source and metric, and per family (the source key) with the records of noisy
pairs left out."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from simtrain.apps.validate.fitted import ConstantReport, constant_reports, load_fitted_constants
from simtrain.apps.validate.measured import (
    METRICS,
    TIME_METRICS,
    VERDICT_METRICS,
    Comparison,
    compare_record,
    zero_notes,
)
from simtrain.apps.validate.predict import (
    PredictionFailed,
    Predictor,
    failure_reason,
    scenario_key,
)
from simtrain.apps.validate.records import SkipReason, load_record_files, resolve_paths, skip
from simtrain.apps.validate.translate import Translation, translate
from simtrain.apps.workers import env_workers
from simtrain.errors import ConfigError
from simtrain.report.progress import Later, Progress
from simtrain.spec.scenario import Scenario

SCHEMA_VERSION = 1
# Two measurements of one metric on the same layout that differ by more than this factor are a
# noisy pair (issue 13): the simulator predicts one value for both, so at least one of them is
# off by 2x whatever it predicts.
NOISY_RATIO = 2.0
# Error bands of the per-family summary: the share of comparisons within +-10 % and +-25 %.
BANDS_PCT = (10.0, 25.0)


@dataclass(frozen=True, slots=True)
class Summary:
    source: str
    metric: str
    n: int
    mape_pct: float  # fits / crash_or_oom: share wrong (not predicted OOM), in %
    max_error_pct: float  # fits / crash_or_oom: 100 if any verdict is wrong

    @property
    def share_correct(self) -> float:
        """For ``fits``: the share of right verdicts (1 − mape/100); for ``crash_or_oom`` the
        share of failed runs predicted not to fit."""
        return 1.0 - self.mape_pct / 100.0


@dataclass(frozen=True, slots=True)
class NoisyPair:
    """Two records of the same layout (the same scenario: model shape, hardware, GPU count,
    parallel layout, batch, precision, recompute) whose measurements of one metric are more than
    :data:`NOISY_RATIO` apart."""

    metric: str
    id_a: str
    id_b: str
    measured_a: float
    measured_b: float

    @property
    def ratio(self) -> float:
        return max(self.measured_a, self.measured_b) / min(self.measured_a, self.measured_b)


@dataclass(frozen=True, slots=True)
class ErrorStats:
    """Errors of n comparisons: MAPE, median |error|, median signed error (%), and the share of
    comparisons within +-10 % and +-25 % (fractions). For ``fits`` / ``crash_or_oom`` the error is 0 (right) or 100
    (wrong), so MAPE is the share wrong and the bands the share right."""

    n: int
    mape_pct: float
    median_abs_error_pct: float
    median_error_pct: float
    within_10pct: float
    within_25pct: float

    @staticmethod
    def of(errors: Sequence[float]) -> ErrorStats:
        n = len(errors)
        a = [abs(e) for e in errors]
        return ErrorStats(n, sum(a) / n, statistics.median(a), statistics.median(errors),
                          sum(x <= BANDS_PCT[0] for x in a) / n,
                          sum(x <= BANDS_PCT[1] for x in a) / n)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mape_pct": self.mape_pct,
                "median_abs_error_pct": self.median_abs_error_pct,
                "median_error_pct": self.median_error_pct, "within_10pct": self.within_10pct,
                "within_25pct": self.within_25pct}  # fmt: skip


@dataclass(frozen=True, slots=True)
class FamilySummary:
    """One family (source key) and metric: the errors of all its comparisons, and without the
    comparisons of records in a noisy pair of that metric (``noisy_left_out`` of them; None
    when none is left)."""

    family: str
    metric: str
    all: ErrorStats
    noisy_left_out: int
    without_noisy: ErrorStats | None


@dataclass(frozen=True)
class ValidationResult:
    path: str
    comparisons: tuple[Comparison, ...]
    skipped: tuple[SkipReason, ...]
    summary: tuple[Summary, ...]
    assumptions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    noisy: tuple[NoisyPair, ...] = ()
    by_family: tuple[FamilySummary, ...] = ()
    constants: tuple[ConstantReport, ...] = ()

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
            "by_family": [
                {
                    "family": f.family,
                    "metric": f.metric,
                    **f.all.to_json(),
                    "noisy_left_out": f.noisy_left_out,
                    "without_noisy": f.without_noisy.to_json() if f.without_noisy else None,
                }
                for f in self.by_family
            ],  # fmt: skip
            "noisy_pairs": [
                {
                    "metric": p.metric,
                    "id_a": p.id_a,
                    "id_b": p.id_b,
                    "measured_a": p.measured_a,
                    "measured_b": p.measured_b,
                    "ratio": p.ratio,
                }
                for p in self.noisy
            ],  # fmt: skip
            "fitted_constants": [
                {
                    "constant": r.constant.constant,
                    "file": r.constant.file,
                    "note": r.constant.note,
                    "fitted_on": list(r.constant.fitted_on),
                    "families": [
                        {
                            "family": f.family,
                            "metric": f.metric,
                            "fitted": f.fitted,
                            "n": f.n,
                            "mape_pct": f.mape_pct,
                            "median_error_pct": f.median_error_pct,
                        }
                        for f in r.rows
                    ],  # fmt: skip
                }
                for r in self.constants
            ],  # fmt: skip
        }

    def summary_for(self, source: str, metric: str) -> Summary | None:
        for s in self.summary:
            if s.source == source and s.metric == metric:
                return s
        return None


def summarize(comparisons: list[Comparison] | tuple[Comparison, ...]) -> tuple[Summary, ...]:
    """Per (source, metric): n, MAPE % and max |error| %; for ``fits`` and ``crash_or_oom`` the
    share wrong (%)."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in comparisons:
        groups[(c.source, c.metric)].append(abs(c.error_pct))
    order = {m: i for i, m in enumerate(METRICS)}
    out = []
    for (src, metric), errs in sorted(groups.items(), key=lambda kv: (kv[0][0],
                                                                       order[kv[0][1]])):  # fmt: skip
        out.append(Summary(src, metric, len(errs), sum(errs) / len(errs), max(errs)))
    return tuple(out)


def layout_key(sc: Scenario, metric: str) -> Hashable:
    """What makes two records "the same layout" for a metric. For timing metrics (issue 13):
    model shape and architecture, the hardware as the record describes it (its profile with any
    links its own job measured, ``hardware.network_measured``), the runtime with its options
    (the framework's code the run ran, and the per-job costs validate reads off the record), GPU
    count, parallel layout (tp, pp, dp, schedule, virtual stages), batch (sequence length,
    global and micro-batch), precision and recompute. ZeRO stage, sequence parallelism, bucket
    size and optimizer are left out: none can change a step by 2x (ZeRO-1/2 and sequence
    parallelism move the bytes of the all-reduces they replace, Rajbhandari et al. 2020 §7,
    Korthikanti et al. 2022 §4.2.2; ZeRO-3 moves 1.5x DP's, Rajbhandari et al. §7.2.2). Two
    records run under different code or on links measured apart are not one layout measured
    twice: the simulator predicts each its own step (until 2026-12-08 the key held the
    hardware's name alone and no runtime, and the Playbook's four ZeRO-0/ZeRO-1 twins, run
    before and after the sweep's "pp fix" or on links their jobs measured 13 vs 168 GB/s, were
    listed as noisy though each was predicted within 23 % in tokens/s, 29 % in MFU). For peak memory the whole
    scenario: ZeRO and sequence parallelism divide memory by design."""
    if metric not in TIME_METRICS:
        return scenario_key(sc)
    p, t = sc.parallelism, sc.training
    return (replace(sc.model, name=""), sc.hardware, sc.runtime, p.gpus, p.tp, p.pp, p.dp,
            p.schedule, p.virtual_stages, t.seq_len, t.global_batch, t.micro_batch, t.precision,
            t.recompute)  # fmt: skip


def noisy_pairs(
    comparisons: Sequence[Comparison], scenarios: Mapping[str, Scenario]
) -> tuple[NoisyPair, ...]:
    """Pairs of records of the same layout (:func:`layout_key`; ``scenarios``: record id -> its
    scenario) whose measurements of one metric are more than :data:`NOISY_RATIO` apart; fit
    verdicts are not measurements and are left out. Metric by metric, in record order."""
    groups: dict[tuple[Hashable, str], list[Comparison]] = defaultdict(list)
    for c in comparisons:
        if c.metric not in VERDICT_METRICS and c.id in scenarios:
            groups[(layout_key(scenarios[c.id], c.metric), c.metric)].append(c)
    out = []
    for rows in groups.values():
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                lo, hi = sorted((float(a.measured), float(b.measured)))
                if hi > NOISY_RATIO * lo:
                    out.append(NoisyPair(a.metric, a.id, b.id, float(a.measured),
                                         float(b.measured)))  # fmt: skip
    order = {m: i for i, m in enumerate(METRICS)}
    return tuple(sorted(out, key=lambda p: order[p.metric]))


def family_summaries(
    comparisons: Sequence[Comparison], noisy: Sequence[NoisyPair]
) -> tuple[FamilySummary, ...]:
    """Per family (source key) and metric: :class:`ErrorStats` of all comparisons and of those
    whose record is in no noisy pair of that metric (the left-out count kept)."""
    in_pair = {(p.metric, i) for p in noisy for i in (p.id_a, p.id_b)}
    groups: dict[tuple[str, str], list[Comparison]] = defaultdict(list)
    for c in comparisons:
        groups[(c.source, c.metric)].append(c)
    order = {m: i for i, m in enumerate(METRICS)}
    out = []
    for (fam, metric), rows in sorted(groups.items(), key=lambda kv: (kv[0][0],
                                                                     order[kv[0][1]])):  # fmt: skip
        clean = [c.error_pct for c in rows if (metric, c.id) not in in_pair]
        out.append(FamilySummary(fam, metric, ErrorStats.of([c.error_pct for c in rows]),
                                 len(rows) - len(clean),
                                 ErrorStats.of(clean) if clean else None))  # fmt: skip
    return tuple(out)


def validate_later() -> Later:
    """``later`` for the bar of :func:`validate`: comparing the records takes about as long as
    translating them did (1.9 s and 1.7 s for the 1,796 published records on the dev machine),
    so until the comparisons start, as many records again at the translating rate."""
    records = [0.0]

    def later(phase: str, done: float, total: float) -> dict[str, float]:
        if phase == "translating":
            records[0] = total
        return {"translating": records[0]} if phase != "comparing" else {}

    return later


def validate(
    path: str | Path | None = None,
    only_source: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    predictor: Predictor | None = None,
) -> ValidationResult:
    """Validate every record of ``path`` (default: the published-run files of ``measured/``,
    :data:`~simtrain.apps.validate.records.DEFAULT_FILES`); ``only_source`` keeps the records of
    one source key. Step times and memory reports are computed in ``workers`` processes (default:
    ``SIMTRAIN_WORKERS`` or the CPU count, at most 4). ``progress(phase, done, total)`` hears of
    the phases: translating and comparing (records), simulating (:func:`validate_later`).
    ``predictor``: the predictions of an earlier call, to reuse (a scenario's prediction does
    not depend on the other records; default: a new one)."""
    t0 = time.perf_counter()
    if workers is None:
        env_workers()  # a bad SIMTRAIN_WORKERS is an error before any record is read
    paths = resolve_paths(path)
    records = load_record_files(paths)
    if not records:  # (an empty file printed an empty table and exited 0: a fuzz campaign)
        where = str(paths[0]) if len(paths) == 1 else "measured/"
        raise ConfigError(where, "<root>", "no records: nothing to validate", None,
                          "a YAML list of records (measured/README.md)")  # fmt: skip
    if only_source is not None:
        keys = sorted({r.source_key for r in records})
        records = [r for r in records if r.source_key == only_source]
        if not records:
            raise ConfigError("--only", "source", "no record of this source", only_source,
                              ", ".join(keys))  # fmt: skip
    pr = predictor if predictor is not None else Predictor()
    report = progress or (lambda phase, done, total: None)
    translated = []
    for i, rec in enumerate(records):
        try:
            translated.append(translate(rec))
        except Exception as exc:  # noqa: BLE001 - as a prediction's (PredictionFailed)
            translated.append(skip(rec, failure_reason("translating this record", exc)))
        report("translating", i + 1, len(records))
    pr.precompute([tr for tr in translated if isinstance(tr, Translation)], workers,
                  progress)  # fmt: skip
    comparisons: list[Comparison] = []
    skipped: list[SkipReason] = []
    assumptions: dict[str, tuple[str, ...]] = {}
    scenarios: dict[str, Scenario] = {}
    for i, (rec, tr) in enumerate(zip(records, translated, strict=True)):
        report("comparing", i, len(records))
        if isinstance(tr, SkipReason):
            skipped.append(tr)
            continue
        try:
            rows = compare_record(tr, pr)
        except PredictionFailed as exc:
            skipped.append(skip(rec, failure_reason("on this scenario", str(exc))))
            continue
        if not rows:
            skipped.append(skip(rec, "no measured value simtrain predicts"))
            continue
        comparisons.extend(rows)
        assumptions[rec.id] = (*tr.assumptions, *zero_notes(rec, tr.scenario))
        scenarios[rec.id] = tr.scenario
    noisy = noisy_pairs(comparisons, scenarios)
    return ValidationResult(" + ".join(str(p) for p in paths), tuple(comparisons),
                            tuple(skipped), summarize(comparisons), assumptions,
                            time.perf_counter() - t0, noisy,
                            family_summaries(comparisons, noisy),
                            constant_reports(comparisons, scenarios, load_fitted_constants()))  # fmt: skip
