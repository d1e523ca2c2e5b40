"""Gantt chart and memory plot of a simulated step (PNG files, matplotlib Agg canvas).

Both read only the ``Timeline``. Figures are built on a ``matplotlib.figure.Figure`` with an Agg
canvas, never through ``pyplot``: no window, no global figure registry, no backend switch in the
caller's process. Colours, row order and legend order are fixed, so identical timelines give
identical images.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from simtrain.report.trace import (
    GIB,
    gpu_label,
    memory_categories,
    memory_steps,
    stream_tids,
    timeline_gpus,
)
from simtrain.sim.timeline import STREAMS, Span, Timeline

DPI = 110

# Span kinds in legend order, with face colour and hatch. Unknown kinds get a colour from
# _FALLBACK chosen by a CRC of the name (stable across runs, unlike hash()).
KIND_STYLES: dict[str, tuple[str, str | None]] = {
    "F": ("#4C78C8", None),  # forward: blue
    "B": ("#3FA45B", None),  # backward (input + weight grads): green
    "I": ("#9BD47A", None),  # input-grad only (zero-bubble): light green
    "W": ("#18A5A7", None),  # weight-grad only (zero-bubble): teal
    "R": ("#A9C4F0", "////"),  # recompute: light blue, hatched
    "OPT": ("#8C8C8C", None),  # optimizer step: grey
    "SEND_F": ("#F28E2B", None),  # p2p: oranges
    "RECV_F": ("#FFBE7D", None),
    "SEND_B": ("#D9711C", None),
    "RECV_B": ("#FFD7A8", None),
    "ALLREDUCE": ("#8E44AD", None),  # collectives: purples and reds
    "REDUCE_GRAD": ("#8E44AD", None),
    "REDUCE_SCATTER": ("#C0392B", None),
    "ALLGATHER": ("#B07AA1", None),
    "UNSHARD": ("#B07AA1", None),
    "RESHARD": ("#E377C2", None),
    "ALLTOALL": ("#D35480", None),
    "BROADCAST": ("#7B3F9E", None),
}
_ALIASES = {
    "ALL_REDUCE": "ALLREDUCE",
    "ALL_GATHER": "ALLGATHER",
    "ALL_TO_ALL": "ALLTOALL",
    "REDUCESCATTER": "REDUCE_SCATTER",
}
_FALLBACK = ("#9467BD", "#E15759", "#76B7B2", "#EDC948", "#FF9DA7", "#9C755F", "#BAB0AC")
_FALLBACK_COMM = ("#A05195", "#D45087", "#C0392B", "#7B3F9E")

CATEGORY_COLOURS: dict[str, str] = {
    "parameters": "#4C78C8",
    "master_weights": "#7F6BB3",
    "gradients": "#3FA45B",
    "optimizer_states": "#C44E52",
    "activations": "#F28E2B",
    "cuda_context": "#937860",
    "buffers": "#A0A0A0",
}

_MAX_LABELS = 2000  # micro-batch numbers drawn at most; above this none are (they'd be unreadable)
_MAX_MEMORY_PANELS = 8


def _crc_pick(name: str, palette: Sequence[str]) -> str:
    return palette[zlib.crc32(name.encode()) % len(palette)]


def kind_style(kind: str, stream: str = "compute") -> tuple[str, str | None]:
    """(face colour, hatch) of a span kind; fixed for known kinds, stable for unknown ones."""
    key = _ALIASES.get(kind.upper(), kind.upper())
    if key in KIND_STYLES:
        return KIND_STYLES[key]
    if key.startswith("SEND"):
        return KIND_STYLES["SEND_F"]
    if key.startswith("RECV"):
        return KIND_STYLES["RECV_F"]
    if stream == "collective" or any(w in key for w in ("REDUCE", "GATHER", "SCATTER")):
        return _crc_pick(key, _FALLBACK_COMM), None
    return _crc_pick(key, _FALLBACK), None


def time_scale(makespan_ns: int) -> tuple[float, str]:
    """(nanoseconds per axis unit, unit name): ms below 10 s, s from there."""
    return (1e9, "s") if makespan_ns >= 10_000_000_000 else (1e6, "ms")


def _pick_evenly(items: Sequence[int], n: int) -> list[int]:
    """At most ``n`` items, evenly spaced, always the first and the last."""
    if len(items) <= n:
        return list(items)
    if n <= 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _text_colour(face: str) -> str:
    r, g, b = to_rgb(face)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.6 else "white"


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` without the matplotlib version in its metadata
    (byte-identical files from identical figures); creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def gantt(
    timeline: Timeline,
    path: str | Path,
    *,
    title: str,
    bubble_ratio: float | None = None,
    max_gpus: int = 64,
) -> Path:
    """Gantt chart of ``timeline`` written as a PNG to ``path``; returns the path.

    A row per GPU (its compute stream, labelled from ``rank_labels``) and under it a thinner
    sub-row per other stream that has spans anywhere (p2p, collective, ...), so overlap of
    communication with compute is visible. Idle time stays white: the pipeline bubble is the white
    space. Micro-batch numbers are written in boxes wide enough to hold them. With more than
    ``max_gpus`` GPUs, ``max_gpus`` evenly spaced ones are drawn (first and last included).
    Boxes are drawn with one ``broken_barh`` per (row, kind), so thousands of spans are cheap.
    """
    all_gpus = timeline_gpus(timeline)
    gpus = _pick_evenly(all_gpus, max(1, max_gpus))
    shown = set(gpus)
    present = {s.stream for s in timeline.spans}
    tids = stream_tids(present)
    sub_streams = [s for s in sorted(present, key=tids.__getitem__) if s != STREAMS[0]]
    layout = _gantt_layout(timeline, gpus, sub_streams)

    makespan = timeline.makespan_ns
    per_unit, unit = time_scale(makespan)
    fig, ax = _gantt_figure(len(gpus), len(sub_streams))
    bars, kinds_stream = _group_bars(timeline.spans, shown, per_unit)
    _draw_bars(ax, bars, layout.row_y, tids)

    x_max = makespan / per_unit if makespan > 0 else 1.0
    ax.set_xlim(0, x_max * 1.005)
    ax.set_ylim(layout.total_h + 0.05, -0.05)  # first GPU on top

    _label_microbatches(ax, fig, timeline.spans, shown, layout.row_y, per_unit, x_max)
    _style_gantt_axes(ax, layout, unit)
    ax.set_title(
        _gantt_title(title, bubble_ratio, len(gpus), len(all_gpus)), fontsize=12, loc="left"
    )
    if makespan == 0:
        ax.text(0.5, 0.5, "no spans", transform=ax.transAxes, ha="center", va="center")
    _kind_legend(ax, kinds_stream)
    return save_png(fig, path)


class _GanttLayout(NamedTuple):
    """Vertical layout of a Gantt chart (y grows downwards, in axis units)."""

    row_y: dict[tuple[int, str], tuple[float, float]]  # (gpu, stream) -> (bottom, height)
    ticks: list[tuple[float, str, bool]]  # (centre, label, is_gpu_row)
    separators: list[float]  # y of the line under each GPU's block
    total_h: float


def _gantt_layout(timeline: Timeline, gpus: list[int], sub_streams: list[str]) -> _GanttLayout:
    """Rows top to bottom: per GPU a compute row, then a thin sub-row per other stream."""
    main_h, sub_h, gap = 0.8, 0.38, 0.35
    row_y: dict[tuple[int, str], tuple[float, float]] = {}
    ticks: list[tuple[float, str, bool]] = []
    separators: list[float] = []
    y = 0.0
    for gpu in gpus:
        row_y[(gpu, STREAMS[0])] = (y, main_h)
        ticks.append((y + main_h / 2, gpu_label(timeline, gpu), True))
        y += main_h + 0.06
        for stream in sub_streams:
            row_y[(gpu, stream)] = (y, sub_h)
            ticks.append((y + sub_h / 2, stream, False))
            y += sub_h + 0.06
        separators.append(y + gap / 2 - 0.03)
        y += gap
    return _GanttLayout(row_y, ticks, separators, max(y - gap, 1.0))


def _gantt_figure(n_gpus: int, n_sub_streams: int) -> tuple[Figure, Axes]:
    """The figure (height grows with the rows, capped) and its single axes."""
    fig_w = 16.0
    fig_h = min(2.2 + 0.42 * n_gpus + 0.2 * n_gpus * n_sub_streams, 60.0)
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.16, 0.75 / fig_h, 0.72, 1 - 1.35 / fig_h))
    return fig, ax


def _group_bars(
    spans: list[Span], shown: set[int], per_unit: float
) -> tuple[dict[tuple[int, str, str], list[tuple[float, float]]], dict[str, str]]:
    """Spans of the shown GPUs as (start, duration) bars per (gpu, stream, kind), and the first
    stream each kind was seen on (for its legend style)."""
    bars: dict[tuple[int, str, str], list[tuple[float, float]]] = defaultdict(list)
    kinds_stream: dict[str, str] = {}
    for s in spans:
        if s.rank not in shown:
            continue
        bars[(s.rank, s.stream, s.kind)].append((s.start_ns / per_unit, s.duration_ns / per_unit))
        kinds_stream.setdefault(s.kind, s.stream)
    return bars, kinds_stream


def _draw_bars(
    ax: Axes,
    bars: dict[tuple[int, str, str], list[tuple[float, float]]],
    row_y: dict[tuple[int, str], tuple[float, float]],
    tids: dict[str, int],
) -> None:
    """One ``broken_barh`` per (row, kind), in (gpu, stream, kind) order; thin white edges
    unless there are more than 3000 boxes, hatched kinds with no edge."""
    n_spans = sum(len(v) for v in bars.values())
    edge_w = 0.4 if n_spans <= 3000 else 0.0
    for gpu, stream, kind in sorted(bars, key=lambda k: (k[0], tids[k[1]], k[2])):
        bottom, height = row_y[(gpu, stream)]
        face, hatch = kind_style(kind, stream)
        ax.broken_barh(
            bars[(gpu, stream, kind)],
            (bottom, height),
            facecolors=face,
            edgecolors="white" if hatch is None else "#3B5FA0",
            linewidth=edge_w if hatch is None else 0.0,
            hatch=hatch,
        )


def _style_gantt_axes(ax: Axes, layout: _GanttLayout, unit: str) -> None:
    """GPU separators, row labels (GPU rows large, stream sub-rows small and grey), x label,
    vertical grid and no top/right spines."""
    for sep in layout.separators[:-1]:
        ax.axhline(sep, color="#D0D0D0", linewidth=0.6, zorder=0)
    ax.set_yticks([t[0] for t in layout.ticks])
    ax.set_yticklabels([t[1] for t in layout.ticks])
    for label, (_, _, is_gpu) in zip(ax.get_yticklabels(), layout.ticks, strict=True):
        label.set_fontsize(9 if is_gpu else 6.5)
        if not is_gpu:
            label.set_color("#555555")
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(f"time ({unit})")
    ax.grid(axis="x", color="#E8E8E8", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _gantt_title(title: str, bubble_ratio: float | None, n_shown: int, n_all: int) -> str:
    """``title`` with the bubble ratio and, when GPUs were thinned, how many are shown."""
    full_title = title
    if bubble_ratio is not None:
        full_title += f"  —  bubble {bubble_ratio:.1%}"
    if n_shown < n_all:
        full_title += f"  ({n_shown} of {n_all} GPUs shown)"
    return full_title


def _kind_legend(ax: Axes, kinds_stream: dict[str, str]) -> None:
    """Legend right of the axes: the kinds drawn, in ``KIND_STYLES`` order (unknown ones after,
    by name), then the white "idle (bubble)" box."""
    order = {k: i for i, k in enumerate(KIND_STYLES)}
    legend_kinds = sorted(
        kinds_stream,
        key=lambda k: (order.get(_ALIASES.get(k.upper(), k.upper()), len(order)), k),
    )
    handles = []
    for kind in legend_kinds:
        face, hatch = kind_style(kind, kinds_stream[kind])
        handles.append(
            Patch(facecolor=face, hatch=hatch, edgecolor="#3B5FA0" if hatch else face, label=kind)
        )
    handles.append(Patch(facecolor="white", edgecolor="#999999", label="idle (bubble)"))
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        title="kind",
        title_fontsize=9,
    )


def _label_microbatches(
    ax,
    fig: Figure,
    spans: list[Span],
    shown: set[int],
    row_y: dict[tuple[int, str], tuple[float, float]],
    per_unit: float,
    x_max: float,
) -> None:
    """Write the micro-batch number inside each compute box wide enough to hold it."""
    ax_px = ax.get_position().width * fig.get_figwidth() * fig.dpi
    px_per_unit = ax_px / (x_max * 1.005)
    fontsize = 7.0
    char_px = fontsize * 0.62 * fig.dpi / 72
    labels: list[tuple[float, float, str, str]] = []
    for s in spans:
        if s.rank not in shown or s.stream != STREAMS[0] or s.microbatch is None:
            continue
        text = str(s.microbatch)
        width_px = s.duration_ns / per_unit * px_per_unit
        if width_px < char_px * len(text) + 4:
            continue
        bottom, height = row_y[(s.rank, s.stream)]
        face, _ = kind_style(s.kind, s.stream)
        x = (s.start_ns + s.end_ns) / 2 / per_unit
        labels.append((x, bottom + height / 2, text, _text_colour(face)))
        if len(labels) > _MAX_LABELS:
            return
    for x, yc, text, colour in labels:
        ax.text(x, yc, text, ha="center", va="center", fontsize=fontsize, color=colour, zorder=3)


def memory_plot(
    timeline: Timeline,
    path: str | Path,
    *,
    capacity_bytes: int | None,
    title: str,
    gpus: list[int] | None = None,
) -> Path:
    """Memory over time, one panel per GPU, written as a PNG to ``path``; returns the path.

    Each panel stacks the categories (``MEMORY_CATEGORIES`` order, unknown ones after by name) as
    step areas in GiB, draws the capacity as a dashed line labelled "capacity X GiB" and marks the
    peak. ``gpus`` picks the panels (default: every GPU with samples); more than 8 are thinned to 8
    evenly spaced ones, first and last included.
    """
    with_samples = sorted({m.rank for m in timeline.memory})
    chosen = list(gpus) if gpus is not None else (with_samples or timeline_gpus(timeline))
    panels = _pick_evenly(chosen, _MAX_MEMORY_PANELS) if chosen else []
    categories = memory_categories(timeline)

    last_sample = max((m.time_ns for m in timeline.memory), default=0)
    end_ns = max(timeline.makespan_ns, last_sample)
    per_unit, unit = time_scale(end_ns)
    cap_gib = capacity_bytes / GIB if capacity_bytes is not None else None

    n = max(len(panels), 1)
    fig = Figure(figsize=(12.0, 1.2 + 2.3 * n), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]

    series = {gpu: memory_steps(timeline, gpu, categories) for gpu in panels}
    top = max(
        (sum(row) for times, rows in series.values() for row in rows),
        default=0,
    )
    y_max = max(top / GIB, cap_gib or 0.0, 1e-9) * 1.15

    for ax, gpu in zip(axes, panels, strict=False):
        times, rows = series[gpu]
        _memory_panel(ax, times, rows, categories, end_ns, per_unit, cap_gib)
        ax.set_ylim(0, y_max)
        ax.set_title(gpu_label(timeline, gpu), fontsize=9, loc="left")
        ax.set_ylabel("GiB")
        ax.grid(axis="y", color="#E8E8E8", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if not panels:
        axes[0].text(0.5, 0.5, "no memory samples", transform=axes[0].transAxes, ha="center")
    axes[-1].set_xlim(0, max(end_ns / per_unit, 1e-9))
    axes[-1].set_xlabel(f"time ({unit})")

    handles = [
        Patch(facecolor=_category_colour(c), edgecolor="none", label=c.replace("_", " "))
        for c in categories
    ]
    if handles:
        fig.legend(
            handles=handles[::-1],  # top of the stack first
            loc="upper left",
            bbox_to_anchor=(0.86, 0.98),
            fontsize=8,
            frameon=False,
            title="category",
            title_fontsize=9,
        )
    shown_note = (
        f"  ({len(panels)} of {len(chosen)} GPUs shown)" if len(panels) < len(chosen) else ""
    )
    fig_h = fig.get_figheight()
    fig.suptitle(title + shown_note, x=0.06, y=1 - 0.2 / fig_h, ha="left", va="top", fontsize=12)
    fig.subplots_adjust(
        left=0.07, right=0.85, top=1 - 0.85 / fig_h, bottom=0.6 / fig_h, hspace=0.45
    )
    return save_png(fig, path)


def _category_colour(category: str) -> str:
    return CATEGORY_COLOURS.get(category) or _crc_pick(category, _FALLBACK)


def _memory_panel(
    ax,
    times: list[int],
    rows: list[list[int]],
    categories: tuple[str, ...],
    end_ns: int,
    per_unit: float,
    cap_gib: float | None,
) -> None:
    """Stacked step areas of one GPU, its capacity line and its peak."""
    if times:
        xs = [t / per_unit for t in times]
        if end_ns > times[-1]:
            xs.append(end_ns / per_unit)
            rows = [*rows, rows[-1]]
        base = [0.0] * len(xs)
        for j, cat in enumerate(categories):
            upper = [b + r[j] / GIB for b, r in zip(base, rows, strict=True)]
            if any(r[j] for r in rows):
                ax.fill_between(
                    xs,
                    base,
                    upper,
                    step="post",
                    facecolor=_category_colour(cat),
                    edgecolor="none",
                    linewidth=0,
                )
            base = upper
        totals = [sum(r) for r in rows]
        i_peak = max(range(len(totals)), key=totals.__getitem__)  # first time at the peak
        peak_gib = totals[i_peak] / GIB
        over = cap_gib is not None and peak_gib > cap_gib
        ax.plot([xs[i_peak]], [peak_gib], marker="v", color="black", markersize=5)
        ax.annotate(
            f"peak {peak_gib:.2f} GiB" + ("  (out of memory)" if over else ""),
            (xs[i_peak], peak_gib),
            xytext=(6, 4),
            textcoords="offset points",
            fontsize=8,
            color="#B00020" if over else "black",
        )
    if cap_gib is not None:
        ax.axhline(cap_gib, color="#B00020", linestyle="--", linewidth=1.0)
        ax.text(
            0.995,
            cap_gib,
            f"capacity {cap_gib:.0f} GiB" if cap_gib >= 10 else f"capacity {cap_gib:.2f} GiB",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="bottom",
            fontsize=8,
            color="#B00020",
        )
