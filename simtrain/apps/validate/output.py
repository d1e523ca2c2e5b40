"""Output of ``simtrain validate``: the table, the CSV, the scatter plot and the command."""

from __future__ import annotations

import csv
import re
import statistics
from collections import defaultdict
from pathlib import Path

from simtrain.apps.validate.conventions import SOURCES
from simtrain.apps.validate.fitted import format_constant_reports
from simtrain.apps.validate.measured import MEMORY_METRICS, METRICS, VERDICT_METRICS
from simtrain.apps.validate.predict import Predictor
from simtrain.apps.validate.records import FRACTION_METRICS
from simtrain.apps.validate.run import NOISY_RATIO, ErrorStats, ValidationResult, validate
from simtrain.errors import ConfigError
from simtrain.units import GIB

#: What a verdict metric's share counts: right fit verdicts; failed runs predicted not to fit
#: ("crash_or_oom": the source does not say why they failed).
_VERDICT_WORD = {"fits": "correct", "crash_or_oom": "pred. OOM"}


def _fmt(metric: str, v: float | bool) -> str:
    if isinstance(v, bool):
        return "fits" if v else "OOM"
    if metric in MEMORY_METRICS:
        return f"{v / GIB:,.2f} GiB"
    if metric in FRACTION_METRICS:
        return f"{100 * v:.1f} %"
    if metric == "step_time_s":
        return f"{v:,.3f} s"
    if metric.startswith("layer_"):
        return f"{1e3 * v:,.2f} ms"
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
            ("ok" if c.error_pct == 0 else "WRONG")
            if c.metric in VERDICT_METRICS
            else f"{c.error_pct:+.1f}"
        )
        measured, predicted = _fmt(c.metric, c.measured), _fmt(c.metric, c.predicted)
        if c.metric == "crash_or_oom":  # no fit verdict either way: "no OOM", not "WRONG"
            err = "ok" if c.error_pct == 0 else "no OOM"
            measured, predicted = "crashed", ("OOM" if c.predicted else "fits")
        lines.append(f"{c.id:<{w}}  {c.metric:<18}{measured:>16}{predicted:>16}{err:>10}")
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
    if res.noisy:
        lines.append("")
        lines.append(noisy_table(res))
    lines.append("")
    lines.append(summary_table(res))
    return "\n".join(lines)


BY = ("record", "family")


def noisy_table(res: ValidationResult) -> str:
    """The noisy pairs: records of the same layout whose measurements of one metric are more
    than NOISY_RATIO apart."""
    lines = [f"noisy pairs (same layout, measurements more than {NOISY_RATIO:g}x apart): "
             f"{len(res.noisy)}"]  # fmt: skip
    for p in res.noisy:
        lines.append(f"  {p.metric:<18}{p.id_a} {_fmt(p.metric, p.measured_a)}  vs  {p.id_b} "
                     f"{_fmt(p.metric, p.measured_b)}  ({p.ratio:.2f}x)")  # fmt: skip
    return "\n".join(lines)


def _stats_cells(metric: str, st: ErrorStats | None) -> str:
    if st is None:
        return f"{0:>5}{'':>41}"
    if metric in VERDICT_METRICS:
        return f"{st.n:>5}  {100 * st.within_10pct:5.1f} % {_VERDICT_WORD[metric]}{'':>22}"
    return (f"{st.n:>5}{st.mape_pct:>8.1f}{st.median_abs_error_pct:>9.1f}"
            f"{st.median_error_pct:>+9.1f}{100 * st.within_10pct:>7.0f}"
            f"{100 * st.within_25pct:>8.0f}")  # fmt: skip


def family_table(res: ValidationResult) -> str:
    """Per family (source key): records compared and skipped; per family and metric n, MAPE,
    median |error|, median signed error and the % within +-10 % and +-25 %, with all records
    and with the records of noisy pairs left out (how many)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rid in dict.fromkeys(c.id for c in res.comparisons):
        counts[next(c.source for c in res.comparisons if c.id == rid)][0] += 1
    for sk in res.skipped:
        counts[sk.source][1] += 1
    lines = ["records per family: compared / skipped (reasons: simtrain validate --by record)"]
    for fam in sorted(counts):
        lines.append(f"  {fam:<22}{counts[fam][0]:>5} / {counts[fam][1]}")
    lines.append("")
    head = f"{'n':>5}{'MAPE %':>8}{'med|e| %':>9}{'med e %':>9}{'<=10%':>7}{'<=25%':>8}"
    lines.append(f"{'':<41}{'all records':^46}  {'noisy pairs left out':^56}")
    lines.append(f"{'family':<22}{'metric':<19}{head}  {'left out':>10}{head}")
    for f in res.by_family:
        lines.append(f"{f.family:<22}{f.metric:<19}{_stats_cells(f.metric, f.all)}  "
                     f"{f.noisy_left_out:>10}{_stats_cells(f.metric, f.without_noisy)}")  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def format_by_family(res: ValidationResult) -> str:
    """``--by family``: the records per family, the noisy pairs and the family table."""
    lines = [f"validation of {res.path}: {len(res.comparisons)} comparisons, "
             f"{len(res.skipped)} records skipped", ""]  # fmt: skip
    lines.append(noisy_table(res))
    lines.append("")
    lines.append(family_table(res))
    if res.constants:
        lines.append("")
        lines.append(format_constant_reports(res.constants))
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
        if s.metric in VERDICT_METRICS:
            lines.append(f"{s.source:<22}{s.metric:<19}{s.n:>5}{'':>28}  "
                         f"{100 * s.share_correct:.1f} % {_VERDICT_WORD[s.metric]}")  # fmt: skip
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
    "layer_forward_s": "one layer's forward (s)",
    "layer_backward_s": "one layer's backward (s)",
    "peak_memory_bytes": "peak memory (GiB)",
    "step_memory_bytes": "allocated at the optimizer step (GiB)",
}


def scatter_plot(res: ValidationResult, path: str | Path) -> Path:
    """Predicted vs measured, one log-log panel per numeric metric, y = x dashed, colour by
    source (matplotlib Agg canvas; no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from simtrain.report.plot import save_png

    metrics = [m for m in METRICS
               if m not in VERDICT_METRICS and any(c.metric == m for c in res.comparisons)]  # fmt: skip
    sources = sorted({c.source for c in res.comparisons if c.metric in metrics})
    colour = {s: SOURCE_COLOURS[i % len(SOURCE_COLOURS)] for i, s in enumerate(sources)}
    cols = min(3, max(1, len(metrics)))
    rows = max(1, -(-len(metrics) // cols))
    fig = Figure(figsize=(4.2 * cols, 4.0 * rows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        scale = 1 / GIB if metric in MEMORY_METRICS else 1.0
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


def validate_command(
    path: str | None, as_json: bool, only: str | None, out_dir: str, by: str = "record",
    *, predictor: Predictor | None = None,
) -> str:  # fmt: skip
    """What ``simtrain validate [PATH] [--json] [--only SOURCE] [--by record|family] [--out
    DIR]`` prints; writes ``validate.csv`` and ``validate_scatter.png`` into ``out_dir``. The
    JSON document holds both views. ``predictor``: :func:`validate`'s (earlier predictions to
    reuse)."""
    from simtrain.report.tables import dumps

    if by not in BY:
        raise ConfigError("--by", "by", "unknown view", by, ", ".join(BY))
    from simtrain.apps.validate.run import validate_later
    from simtrain.report.progress import ProgressBar

    bar = ProgressBar(later=validate_later())  # on stderr, after 2 s
    res = validate(path, only, progress=bar, predictor=predictor)
    bar.close()
    out = Path(out_dir)
    csv_path = write_csv(res, out / "validate.csv")
    png = scatter_plot(res, out / "validate_scatter.png")
    if as_json:
        return dumps(res.to_json())
    text = format_by_family(res) if by == "family" else format_table(res)
    return text + f"\n\nwrote {csv_path}, {png} ({res.elapsed_s:.1f} s)\n"
