"""Gantt chart and memory plot of a simulated step (PNG files, matplotlib Agg canvas).

Both read only the ``Timeline``. Figures are built on a ``matplotlib.figure.Figure`` with an Agg
canvas, never through ``pyplot``: no window, no global figure registry, no backend switch in the
caller's process. Colours, row order and legend order are fixed, so identical timelines give
identical images.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
from matplotlib import cbook, rcParams
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import TICKDOWN, Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator
from matplotlib.transforms import ScaledTranslation

from simtrain.report.mpl import plain_text
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
    "ACC": ("#2E7D46", None),  # 16-bit gradients added into the fp32 buffer: dark green
    "CPY": ("#8D9440", None),  # FSDP2's copy-out of gathered parameters: olive
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
    # torch.nn.DataParallel (sim.lowering.passes.data_parallel_pass)
    "BCAST": ("#7B3F9E", None),
    "GATHER": ("#B07AA1", None),
    "SCATTER": ("#E377C2", None),
    "REDUCE": ("#C0392B", None),
    "LOSS": ("#EDC948", None),  # the loss on GPU 0: yellow
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
    "stashed_weights": "#9ECAE9",
    "master_weights": "#7F6BB3",
    "gradients": "#3FA45B",
    "optimizer_states": "#C44E52",
    "activations": "#F28E2B",
    "cuda_context": "#937860",
    "buffers": "#A0A0A0",
}

# Above this many boxes the Gantt's boxes have no edges and are painted into one image of the
# axes' pixels (:func:`_paint_bars`) instead of one vector rectangle each (:func:`_draw_bars`):
# the same pixels, at a cost that no longer grows with the number of spans.
_RASTER_ABOVE = 3000
# Boxes get thin white edges up to this many boxes (more would be a white blur).
_EDGES_UP_TO = 3000
# matplotlib's hatch density (``GraphicsContextBase.get_hatch_path(density=6.0)``): lines per
# hatch character per inch-wide hatch tile.
_HATCH_DENSITY = 6.0
# zlib level of the PNGs written at DPI: 1 encodes a 1760 x 2037 Gantt chart in 0.07 s instead of
# 0.11 s at PIL's default 6, for a file ~45 % larger (~220 kB; benchmarks/bench_outputs.py).
_PNG_COMPRESS_LEVEL = 1
_YTICK_PAD_PT = 3.5  # matplotlib's rcParams["ytick.major.pad"] default
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
    if stream in ("collective", "tp") or any(w in key for w in ("REDUCE", "GATHER", "SCATTER")):
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
    (byte-identical files from identical figures); creates the folder.

    A figure made at :data:`DPI` whose pixels are all opaque (a white figure background) is
    written as RGB rather than RGBA (the same pixels, a quarter less to compress) at zlib level
    :data:`_PNG_COMPRESS_LEVEL`: the encoder was the largest single cost of a large Gantt chart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = FigureCanvasAgg(fig)
    plain_text(fig)  # names are never mathtext (report.mpl)
    # a name with characters the font lacks (an emoji) is drawn as boxes, not warned about on
    # stderr with this file's path (a review, 2026-12-07)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Glyph .* missing from font", category=UserWarning
        )
        if fig.get_dpi() != DPI:
            fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
            return path
        canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    opaque = bool((rgba[..., 3] == 255).all())
    image = PIL.Image.fromarray(np.ascontiguousarray(rgba[..., :3]) if opaque else rgba)
    image.save(path, format="png", dpi=(DPI, DPI), compress_level=_PNG_COMPRESS_LEVEL)
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
    Up to 3,000 boxes are drawn as vectors, one ``broken_barh`` per (row, kind), with thin white
    edges; above that (no edges) they are painted into one image of the axes' pixels that holds
    exactly the pixels those rectangles would fill (:func:`_paint_bars`), so a 20,000-span
    timeline draws as fast as a small one.
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
    x_max = makespan / per_unit if makespan > 0 else 1.0
    n_boxes = sum(len(v) for v in bars.values())
    if n_boxes > _RASTER_ABOVE and n_boxes > _EDGES_UP_TO:  # the raster has no edges
        ax.set_xlim(0, x_max * 1.005)
        ax.set_ylim(layout.total_h + 0.05, -0.05)  # first GPU on top
        _paint_bars(ax, fig, bars, layout.row_y, tids)
    else:
        _draw_bars(ax, bars, layout.row_y, tids)
    ax.set_xlim(0, x_max * 1.005)
    ax.set_ylim(layout.total_h + 0.05, -0.05)  # first GPU on top

    _label_microbatches(ax, fig, timeline.spans, shown, layout.row_y, per_unit, x_max)
    _style_gantt_axes(ax, layout, unit)
    ax.set_title(  # y given: matplotlib's automatic placement (it lands at 1.0 here) is slow
        _gantt_title(title, bubble_ratio, len(gpus), len(all_gpus)), fontsize=12, loc="left", y=1.0
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
    for _, rank, stream, kind, _, start, end, *_ in spans:  # Span fields, unpacked: 21k spans
        if rank in shown:
            bars[(rank, stream, kind)].append((start / per_unit, (end - start) / per_unit))
            if kind not in kinds_stream:
                kinds_stream[kind] = stream
    return bars, kinds_stream


def _draw_bars(
    ax: Axes,
    bars: dict[tuple[int, str, str], list[tuple[float, float]]],
    row_y: dict[tuple[int, str], tuple[float, float]],
    tids: dict[str, int],
) -> None:
    """One ``broken_barh`` per (row, kind), in (gpu, stream, kind) order; thin white edges
    unless there are more than :data:`_EDGES_UP_TO` boxes, hatched kinds with no edge."""
    n_spans = sum(len(v) for v in bars.values())
    edge_w = 0.4 if n_spans <= _EDGES_UP_TO else 0.0
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


def _paint_bars(
    ax: Axes,
    fig: Figure,
    bars: dict[tuple[int, str, str], list[tuple[float, float]]],
    row_y: dict[tuple[int, str], tuple[float, float]],
    tids: dict[str, int],
) -> None:
    """The boxes of :func:`_draw_bars` without edges, painted into an RGBA image of the axes'
    pixels.

    Agg fills an axis-aligned rectangle snapped to the pixel grid (``PathSnapper`` in
    matplotlib's ``src/path_converters.h``: each corner rounded to ``floor(v + 0.5)`` for an
    unstroked path): it covers pixel columns ``[round(x0), round(x1))`` and rows ``[round(y0),
    round(y1))``, and a box thinner than a pixel covers one column or none. This paints the same
    columns and rows, kind after kind in the order the boxes would be drawn (a later kind over an
    earlier one), so the picture is the vector one, pixel for pixel (tested); hatched kinds get
    matplotlib's hatch lines (:func:`_hatch_pixels`, within a few levels of Agg's). The image is
    drawn unresampled at its pixel position (:class:`_Pixels`)."""
    fig_w_px, fig_h_px = int(fig.bbox.width), int(fig.bbox.height)  # Agg's canvas (truncated)
    bb = ax.bbox
    c0, c1 = max(math.floor(bb.x0), 0), min(math.ceil(bb.x1), fig_w_px)
    r0, r1 = max(math.floor(fig_h_px - bb.y1), 0), min(math.ceil(fig_h_px - bb.y0), fig_h_px)
    width, height = c1 - c0, r1 - r0
    if width <= 0 or height <= 0:
        return
    image = np.zeros((height, width, 4), np.uint8)
    to_px = ax.transData.transform
    for key in sorted(bars, key=lambda k: (k[0], tids[k[1]], k[2])):
        gpu, stream, kind = key
        bottom, h = row_y[(gpu, stream)]
        y_px = to_px(np.array([[0.0, bottom], [0.0, bottom + h]]))[:, 1]
        rows = np.floor(fig_h_px - y_px + 0.5).astype(np.int64)
        ra, rb = int(max(rows.min(), r0)), int(min(rows.max(), r1))
        if rb <= ra:
            continue
        xw = np.array(bars[key], dtype=np.float64)
        x0 = to_px(np.column_stack([xw[:, 0], np.zeros(len(xw))]))[:, 0]
        x1 = to_px(np.column_stack([xw[:, 0] + xw[:, 1], np.zeros(len(xw))]))[:, 0]
        ca = np.clip(np.floor(x0 + 0.5).astype(np.int64) - c0, 0, width)
        cb = np.clip(np.floor(x1 + 0.5).astype(np.int64) - c0, 0, width)
        keep = cb > ca
        if not keep.any():
            continue
        edges = np.bincount(ca[keep], minlength=width + 1)[: width + 1]
        edges -= np.bincount(cb[keep], minlength=width + 1)[: width + 1]
        cols = np.cumsum(edges[:width]) > 0
        face, hatch = kind_style(kind, stream)
        block = image[ra - r0 : rb - r0]
        if hatch is None:
            block[:, cols] = _rgba(face)
        else:
            pattern = _hatch_pixels(face, "#3B5FA0", hatch, ra, rb, c0, c1)
            block[:, cols] = pattern[:, cols]
    ax.add_artist(_Pixels(image, c0, fig_h_px - r1))


class _Pixels(Artist):
    """An RGBA image drawn as it is, its bottom left at display pixel (x, y): no resampling
    (``FigureImage`` would resample it at scale 1, a third of the Gantt's time). Zorder 1, the
    boxes' (collections') zorder, so it sits over the grid and under the labels and spines."""

    zorder = 1

    def __init__(self, image: np.ndarray, x: int, y: int) -> None:
        super().__init__()
        self._rows_up = np.ascontiguousarray(image[::-1])  # draw_image puts row 0 at the bottom
        self._x, self._y = x, y

    def draw(self, renderer: Any) -> None:
        if not self.get_visible():
            return
        gc = renderer.new_gc()
        renderer.draw_image(gc, self._x, self._y, self._rows_up)
        gc.restore()
        self.stale = False


def _rgba(colour: str) -> np.ndarray:
    return np.array([round(255 * c) for c in to_rgb(colour)] + [255], np.uint8)


def _hatch_pixels(
    face: str, line: str, hatch: str, ra: int, rb: int, c0: int, c1: int
) -> np.ndarray:
    """RGBA pixels of rows [ra, rb) and columns [c0, c1) (from the figure's top left) of a box
    of colour ``face`` hatched with ``/`` lines of colour ``line``, as Agg draws matplotlib's
    hatch (``matplotlib.hatch.NorthEastHatch``: per inch-wide tile, tiled from the canvas' top
    left, ``count('/') * 6`` lines spaced 2/n inch along a row, each
    ``rcParams["hatch.linewidth"]`` points wide): a pixel takes the line colour in proportion
    to how much of it the line covers (box filter). Other hatch characters are not drawn."""
    n = hatch.count("/") * _HATCH_DENSITY
    face_rgb = np.array(to_rgb(face))
    if n <= 0:
        out = np.empty((rb - ra, c1 - c0, 4), np.uint8)
        out[:] = _rgba(face)
        return out
    period = 2 * DPI / n  # px between lines along a row
    half_w = float(rcParams["hatch.linewidth"]) * DPI / 72 / 2
    xs = np.arange(c0, c1) + 0.5
    ys = np.arange(ra, rb) + 0.5
    u = np.mod(xs[None, :] + ys[:, None], period)
    dist = np.minimum(u, period - u) / math.sqrt(2)  # perpendicular distance to a line
    cover = np.clip(half_w + 0.5 - dist, 0.0, 1.0)[..., None]
    rgb = face_rgb * (1 - cover) + np.array(to_rgb(line)) * cover
    out = np.empty((rb - ra, c1 - c0, 4), np.uint8)
    out[..., :3] = np.round(rgb * 255).astype(np.uint8)
    out[..., 3] = 255
    return out


def _style_gantt_axes(ax: Axes, layout: _GanttLayout, unit: str) -> None:
    """GPU separators, row labels (GPU rows large, stream sub-rows small and grey), x label,
    vertical grid and no top/right spines."""
    for sep in layout.separators[:-1]:
        ax.axhline(sep, color="#D0D0D0", linewidth=0.6, zorder=0)
    # Row labels where y tick labels of length-0 ticks would be (right-aligned, "center_baseline",
    # ytick.major.pad = 3.5 pt left of the axes: matplotlib's Axes.get_yaxis_text1_transform),
    # as plain texts: a tick per row costs ~4 ms to build and draw, 0.3 s for 64 GPUs.
    ax.set_yticks([])
    to_label = ax.get_yaxis_transform() + ScaledTranslation(
        -_YTICK_PAD_PT / 72, 0, ax.get_figure().dpi_scale_trans
    )
    for y, text, is_gpu in layout.ticks:
        ax.text(0, y, text, transform=to_label, ha="right", va="center_baseline",
                fontsize=9 if is_gpu else 6.5, color="black" if is_gpu else "#555555",
                clip_on=False)  # fmt: skip
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
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]  # one time axis: see _shared_time_ticks
    for ax in axes:
        ax.set_autoscale_on(False)  # the limits are set below; autoscaling each area is slow

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
        ax.set_title(gpu_label(timeline, gpu), fontsize=9, loc="left", y=1.0)  # as _gantt
        ax.set_ylabel("GiB")
        ax.grid(axis="y", color="#E8E8E8", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if not panels:
        axes[0].text(0.5, 0.5, "no memory samples", transform=axes[0].transAxes, ha="center")
    for ax in axes:
        ax.set_xlim(0, max(end_ns / per_unit, 1e-9))
    _shared_time_ticks(axes)
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


def _shared_time_ticks(axes: Sequence[Axes]) -> None:
    """The panels above the last as ``subplots(sharex=True)`` draws them, their time ticks as
    marks without labels, at the last panel's tick positions: one ``Line2D`` of tick markers per
    panel (``TICKDOWN``, rcParams' xtick size, width and colour, where an ``XTick``'s tick1line
    puts them) instead of a tick object per mark, which costs ~1.3 ms each to build and draw."""
    lo, hi = axes[-1].get_xlim()
    tol = (hi - lo) * 1e-9
    marks = [x for x in axes[-1].xaxis.get_majorticklocs() if lo - tol <= x <= hi + tol]
    for ax in axes[:-1]:
        ax.xaxis.set_major_locator(NullLocator())
        ax.add_line(
            Line2D(marks, [0.0] * len(marks), transform=ax.get_xaxis_transform(which="tick1"),
                   linestyle="none", marker=TICKDOWN, markersize=rcParams["xtick.major.size"],
                   markeredgewidth=rcParams["xtick.major.width"], color=rcParams["xtick.color"],
                   markeredgecolor=rcParams["xtick.color"], zorder=1.5, clip_on=False)
        )  # fmt: skip


def _category_colour(category: str) -> str:
    return CATEGORY_COLOURS.get(category) or _crc_pick(category, _FALLBACK)


def _stack_areas(
    ax: Axes, xs: list[float], rows: list[list[int]], categories: tuple[str, ...]
) -> None:
    """The stacked step areas (categories bottom to top, in GiB) as one ``PolyCollection``: the
    polygons ``fill_between(xs, base, upper, step="post")`` makes for each category that is
    ever non-zero (``FillBetweenPolyCollection._make_verts_for_region``: start, along the top,
    end, back along the bottom), with its face colour and no edge, drawn in the same order."""
    x = np.asarray(xs, dtype=np.float64)
    gib = np.asarray(rows, dtype=np.float64) / GIB  # (times, categories)
    tops = np.cumsum(gib, axis=1)
    verts, colours = [], []
    base = np.zeros(len(x))
    for j, cat in enumerate(categories):
        upper = tops[:, j]
        if gib[:, j].any():
            t, f1, f2 = cbook.pts_to_poststep(x, upper, base)
            n = len(t)
            pts = np.empty((2 * n + 2, 2))
            pts[0] = t[0], f2[0]
            pts[1 : n + 1, 0], pts[1 : n + 1, 1] = t, f1
            pts[n + 1] = t[-1], f2[-1]
            pts[n + 2 :, 0], pts[n + 2 :, 1] = t[::-1], f2[::-1]
            verts.append(pts)
            colours.append(_category_colour(cat))
        base = upper
    if verts:
        ax.add_collection(
            PolyCollection(verts, facecolors=colours, edgecolors="none", linewidths=0),
            autolim=False,
        )


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
        _stack_areas(ax, xs, rows, categories)
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


def _cpus_busy() -> bool:
    """No CPU to spare: one usable CPU, or a 1-minute load average that leaves less than one of
    them idle (then forked children would only take turns with this process, and pay for the
    fork)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    usable = usable or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return usable < 2 or load > usable - 1


def run_concurrently(jobs: Sequence[Callable[[], object]]) -> None:
    """Run ``jobs`` (each writes its own file; return values are dropped), at the same time
    where that is safe and pays: on a platform with ``os.fork``, with a CPU to spare
    (:func:`_cpus_busy`) and no other thread in this process (a fork copies only the calling thread, so a lock another
    thread holds would stay held in the child), every job but the last runs in a forked child
    process and the last here; otherwise one after the other, here, every job even after one
    fails (the first error is raised once all have run).

    A child whose job fails exits non-zero and its job is run again here, so its error surfaces
    exactly as if it had run here (the files are deterministic, so a rerun writes the same
    bytes). Children are always waited for, even when the job here raises."""
    jobs = list(jobs)
    if len(jobs) < 2 or not hasattr(os, "fork") or threading.active_count() > 1 or _cpus_busy():
        errors: list[Exception] = []
        for job in jobs:  # every job, as when they run at once; then the first error
            try:
                job()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return
    children: list[tuple[int, Callable[[], object]]] = []
    try:
        for job in jobs[:-1]:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                code = 1
                try:
                    job()
                    code = 0
                finally:
                    os._exit(code)
            children.append((pid, job))
        jobs[-1]()
    finally:
        failed = [job for pid, job in children if os.waitpid(pid, 0)[1] != 0]
    for job in failed:
        job()
