"""A validation run: every record translated, predicted and compared, and the errors
summarised per source and metric."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simtrain.apps.validate.measured import METRICS, Comparison, compare_record
from simtrain.apps.validate.predict import Predictor
from simtrain.apps.validate.records import SkipReason, load_records, resolve_path, skip
from simtrain.apps.validate.translate import Translation, translate
from simtrain.errors import ConfigError

SCHEMA_VERSION = 1


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
    pr = Predictor()
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
            skipped.append(skip(rec, "no measured value simtrain predicts"))
            continue
        comparisons.extend(rows)
        assumptions[rec.id] = tr.assumptions
    return ValidationResult(str(p), tuple(comparisons), tuple(skipped), summarize(comparisons),
                            assumptions, time.perf_counter() - t0)  # fmt: skip
