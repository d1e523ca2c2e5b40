"""Fitted constants on the families they were not fitted on (``measured/fitted_constants.yaml``).

Issue 13: "a leave-one-family-out mode reports every fitted constant on families it was not
fitted on". Each constant names its scope (the comparisons whose scenario uses it: a hardware
profile, a runtime, any runtime with host time, a ZeRO stage) and the families it was fitted
on; the report gives, per constant, the timing errors of the families in its fit and of every
other family in its scope (held out). The constants are not refitted here: the held-out rows
are the out-of-sample check of the values the profiles ship.
"""

from __future__ import annotations

import fnmatch
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simtrain.apps.validate.measured import (
    LAYER_METRICS,
    TIME_METRICS,
    Comparison,
    compare_record,
)
from simtrain.apps.validate.predict import Predictor
from simtrain.apps.validate.records import load_record_files, resolve_paths
from simtrain.apps.validate.translate import Translation, translate
from simtrain.errors import ConfigError
from simtrain.spec.scenario import Scenario
from simtrain.spec.yamlfile import load_yaml

FITTED_PATH = Path(__file__).resolve().parents[3] / "measured" / "fitted_constants.yaml"
SCOPE_KEYS = ("hardware", "runtime", "host", "zero_stage")


@dataclass(frozen=True, slots=True)
class FittedConstant:
    constant: str
    file: str  # the profile that holds it, from the repository root
    scope: tuple[tuple[str, Any], ...]
    fitted_on: tuple[str, ...]
    note: str = ""  # a remark on the file (``note:``), printed beside it

    @property
    def path(self) -> Path:
        """The file that holds the constant."""
        return FITTED_PATH.parents[1] / self.file

    @property
    def where(self) -> str:
        """The file, and the note on it in parentheses where there is one."""
        return f"{self.file} ({self.note})" if self.note else self.file

    @property
    def same_gpu(self) -> str:
        """The profile whose fitted value this one carries ("... (same GPU as NAME)"), or ""."""
        _, sep, rest = self.constant.partition("same GPU as ")
        return rest.rstrip(")") if sep else ""

    def applies(self, sc: Scenario) -> bool:
        for key, value in self.scope:
            if key == "hardware" and sc.hardware.name != value:
                return False
            if key == "runtime" and sc.runtime.name != value:
                return False
            if key == "host" and (sc.runtime.host_s_per_op > 0) != bool(value):
                return False
            if key == "zero_stage" and sc.parallelism.zero_stage != value:
                return False
        return True


@dataclass(frozen=True, slots=True)
class FamilyErrors:
    """One family's timing comparisons under a constant: n, MAPE %, signed median %."""

    family: str
    metric: str
    fitted: bool  # the constant was fitted on this family (in-sample)
    n: int
    mape_pct: float
    median_error_pct: float


@dataclass(frozen=True, slots=True)
class ConstantReport:
    constant: FittedConstant
    rows: tuple[FamilyErrors, ...]


def load_fitted_constants(path: Path = FITTED_PATH) -> tuple[FittedConstant, ...]:
    data = load_yaml(path)
    file = str(path)
    if not isinstance(data, list):
        raise ConfigError(file, "<root>", "must be a list of constants")
    out = []
    for i, d in enumerate(data):
        if not isinstance(d, dict) or not {"constant", "file", "scope", "fitted_on"} <= set(d):
            raise ConfigError(file, f"[{i}]", "needs constant, file, scope and fitted_on")
        scope = d["scope"]
        if not isinstance(scope, dict) or any(k not in SCOPE_KEYS for k in scope):
            raise ConfigError(file, f"[{i}].scope", "unknown scope key", scope,
                              " | ".join(SCOPE_KEYS))  # fmt: skip
        if any(c.isspace() for c in str(d["file"])):
            raise ConfigError(file, f"[{i}].file", "a path, without a remark (the remark goes in "
                              "note:)", d["file"])  # fmt: skip
        out.append(FittedConstant(str(d["constant"]), str(d["file"]),
                                  tuple(sorted(scope.items())), tuple(d["fitted_on"]),
                                  str(d.get("note", ""))))  # fmt: skip
    return tuple(out)


# The metric a record is fitted on: the first of these it measured (one comparison per record):
# step time, else tokens/s, else TFLOP/s (the profiles' comments name which). A per-layer timing
# record (Korthikanti et al. 2022 Table 4) measured none of them: its forward and its backward
# time, two comparisons.
FIT_METRICS = ("step_time_s", "tokens_per_s", "tflops_per_gpu")


def fit_records(profile: str, patterns: Sequence[str]) -> list[Translation]:
    """The records of ``measured/`` whose id matches one of ``patterns`` (fnmatch) and which
    ``simtrain validate`` simulates on hardware profile ``profile``, translated."""
    out = []
    for rec in load_record_files(resolve_paths(None)):
        if any(fnmatch.fnmatchcase(rec.id, p) for p in patterns):
            tr = translate(rec)
            if isinstance(tr, Translation) and tr.scenario.hardware.name == profile:
                out.append(tr)
    return out


def matmul_fit_mape(trs: Sequence[Translation], matmul: float,
                    metrics: Sequence[str] = FIT_METRICS, memory_bound: float | None = None,
                    *, predictor: Predictor | None = None) -> tuple[float, float]:  # fmt: skip
    """(MAPE %, signed median %) of ``trs`` simulated with ``efficiency.matmul = matmul`` and,
    if given, ``efficiency.memory_bound = memory_bound`` (the rest of each record's hardware
    profile as it is), one comparison per record: the first of ``metrics`` it measured (a
    per-layer timing: its forward and backward, ``measured.LAYER_METRICS``). How the
    profiles' [val] ``efficiency.matmul`` values were set (``benchmarks/fit_matmul.py`` prints
    it over a grid; with ``--memory-bound`` the element-wise rate too, how the A100 80GB's
    ``efficiency.memory_bound`` was set with its matmul held at its GEMM table's rate).
    ``predictor``: simulate in its worker processes (``Predictor.precompute``) and keep what
    it simulated (a scenario already simulated is not simulated again)."""
    errs: list[float] = []
    fitted = []
    for tr in trs:
        hw = tr.scenario.hardware
        eff = replace(hw.efficiency, matmul=matmul)
        if memory_bound is not None:
            eff = replace(eff, memory_bound=memory_bound)
        fitted.append(
            replace(tr, scenario=replace(tr.scenario, hardware=replace(hw, efficiency=eff)))
        )
    pr = predictor or Predictor()
    pr.precompute(fitted, None)
    for tr in fitted:
        got = {c.metric: c.error_pct for c in compare_record(tr, pr)}
        metric = next((m for m in metrics if m in got), None)
        if metric is not None:
            errs.append(got[metric])
        elif all(m in got for m in LAYER_METRICS):
            errs.extend(got[m] for m in LAYER_METRICS)
        else:
            raise ConfigError(tr.record.id, "measured", "no throughput metric to fit on", None,
                              " | ".join((*metrics, *LAYER_METRICS)))  # fmt: skip
    return statistics.mean(abs(e) for e in errs), statistics.median(errs)


def constant_reports(comparisons: Sequence[Comparison], scenarios: Mapping[str, Scenario],
                     constants: Sequence[FittedConstant]) -> tuple[ConstantReport, ...]:  # fmt: skip
    """Per constant, per family in its scope and timing metric: the errors, marked fitted
    (in-sample) or held out."""
    out = []
    for k in constants:
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        for c in comparisons:
            sc = scenarios.get(c.id)
            if c.metric in TIME_METRICS and sc is not None and k.applies(sc):
                groups[(c.source, c.metric)].append(c.error_pct)
        rows = tuple(
            FamilyErrors(fam, metric, fam in k.fitted_on, len(e), sum(map(abs, e)) / len(e),
                         statistics.median(e))  # fmt: skip
            for (fam, metric), e in sorted(groups.items(), key=lambda kv: (
                kv[0][0] not in k.fitted_on, kv[0][0], TIME_METRICS.index(kv[0][1])))
        )  # fmt: skip
        out.append(ConstantReport(k, rows))
    return tuple(out)


def format_constant_reports(reports: Sequence[ConstantReport]) -> str:
    lines = ["fitted constants on the families they were fitted on and held out "
             "(measured/fitted_constants.yaml)"]  # fmt: skip
    for r in reports:
        k = r.constant
        lines.append(f"  {k.constant}  [{k.where}; fitted on {', '.join(k.fitted_on)}]")
        if not r.rows:
            lines.append("    (no comparison in its scope)")
        for row in r.rows:
            tag = "fitted  " if row.fitted else "held out"
            lines.append(f"    {tag}  {row.family:<22}{row.metric:<16}n {row.n:>4}  "
                         f"MAPE {row.mape_pct:7.1f} %  median {row.median_error_pct:+7.1f} %")  # fmt: skip
    return "\n".join(lines)
