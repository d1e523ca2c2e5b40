"""Pictures of a comparison: the ladder (a waterfall of the peak memory per GPU) and the
trade-off (peak memory against step time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.textpath import TextPath
from matplotlib.ticker import FuncFormatter

from simtrain.apps.compare.run import VariantComparison, VariantRow
from simtrain.apps.compare.tables import biggest_change
from simtrain.report.plot import CATEGORY_COLOURS, DPI, save_png
from simtrain.sim.timeline import MEMORY_CATEGORIES
from simtrain.units import GIB


def _label(comp: VariantComparison, i: int) -> str:
    r = comp.rows[i]
    if i == 0:
        s = dict(r.setup)
        text = f"baseline\n{s['precision']}, b={s['micro_batch']}"
    else:
        text = ("+ " if comp.ladder else "") + r.name
    if r.gpus != comp.rows[0].gpus:
        text += f"\n({r.gpus} GPUs)"
    return text


def _pretty(cat: str) -> str:
    return cat.replace("_", " ")


_BAR_WIDTH = 0.62


def ladder_plot(comp: VariantComparison, path: str | Path) -> Path:
    """Waterfall of the peak memory per GPU (GiB): one stacked bar per rung (categories held at
    the moment of the peak), the memory each step removes as a hatched ghost, the step's change
    and the category it shrinks most written above, and the GPU's capacity as a red line."""
    rows = comp.rows
    n = len(rows)
    cap = rows[0].capacity_bytes / GIB
    many = n > 8  # narrower bars: smaller text, labels on three lines, slanted names
    fig = Figure(figsize=(min(17.0, max(9.0, 1.25 * n + 3.5)), 6.8), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = max(max(r.peak_memory_bytes for r in rows) / GIB, cap)
    for i, r in enumerate(rows):
        _ladder_bar(ax, i, r, top)
        if i:
            _ladder_step(ax, comp, i, top, many)
    _ladder_axes(ax, comp, cap, top, many)
    _ladder_legend(ax, comp, cap)
    against = "the previous bar" if comp.ladder else "the baseline"
    fig.text(0.01, 0.01, "Bars: what one GPU holds at the moment of its peak, by category. Green "
             "number: fits on the GPU; red: does not fit.\nAbove each bar: change of the peak "
             f"against {against} and the category that changes most (GiB).",
             fontsize=8, color="#555555", va="bottom")  # fmt: skip
    fig.subplots_adjust(left=0.07, right=0.82, top=0.92, bottom=0.17)
    return save_png(fig, path)


def _ladder_bar(ax: Any, i: int, r: VariantRow, top: float) -> None:
    """Row ``i``'s bar: the categories held at the peak, stacked, and the peak written above
    (green when it fits, red when not)."""
    base = 0.0
    for cat, b in r.at_peak_bytes:
        if b:
            ax.bar(i, b / GIB, _BAR_WIDTH, bottom=base, color=CATEGORY_COLOURS[cat],
                   edgecolor="white", linewidth=0.5)  # fmt: skip
        base += b / GIB
    peak = r.peak_memory_bytes / GIB
    colour = "#1B7F3B" if r.fits else "#B00020"
    ax.text(i, peak + 0.012 * top, f"{peak:.1f} GiB" + ("" if r.fits else "\ndoes not fit"),
            ha="center", va="bottom", fontsize=10, fontweight="bold", color=colour,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0}, zorder=4)  # fmt: skip


def _ladder_step(ax: Any, comp: VariantComparison, i: int, top: float, many: bool) -> None:
    """What row ``i`` changes against its reference: the waterfall connector (ladder), the memory
    removed as a hatched ghost bar, and the change of the peak and of the category that moves
    most, written above."""
    r, ref = comp.rows[i], comp.reference(i)
    peak = r.peak_memory_bytes / GIB
    prev = ref.peak_memory_bytes / GIB
    if comp.ladder:  # waterfall connector from the previous bar's top
        ax.plot([i - 1 + _BAR_WIDTH / 2, i - _BAR_WIDTH / 2], [prev, prev], color="#555555",
                linestyle=":", linewidth=1.0)  # fmt: skip
    if prev > peak:  # the memory this step removed, as a ghost bar
        ax.bar(i, prev - peak, _BAR_WIDTH, bottom=peak, facecolor="none", edgecolor="#777777",
               hatch="///", linewidth=0.8, linestyle="--")  # fmt: skip
    cat, d = biggest_change(ref, r)
    delta = peak - prev
    text = f"{delta:+.1f} GiB" if many else f"peak {delta:+.1f} GiB"
    if d:
        text += f"\n{_pretty(cat)}" + ("\n" if many else " ") + f"{d / GIB:+.1f}"
    lift = (0.075 if r.fits else 0.12) + (0.1 if many and i % 2 == 0 else 0.0)
    ax.text(i, max(prev, peak) + lift * top, text.replace("-", "−"),
            ha="center", va="bottom", fontsize=7.5 if many else 8.5, color="#333333",
            linespacing=1.15)  # fmt: skip


def _ladder_axes(ax: Any, comp: VariantComparison, cap: float, top: float, many: bool) -> None:
    """The capacity line, the rung labels (slanted when there are many), limits, grid, title."""
    n = len(comp.rows)
    ax.axhline(cap, color="#B00020", linestyle="--", linewidth=1.4)
    ax.set_xticks(range(n), [_label(comp, i) for i in range(n)], fontsize=8.5 if many else 9)
    if many:
        for tick in ax.get_xticklabels():
            tick.set_rotation(30)
            tick.set_ha("right")
            tick.set_rotation_mode("anchor")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, top * (1.42 if many else 1.32))
    ax.set_ylabel("peak memory per GPU (GiB)", fontsize=11)
    ax.grid(axis="y", color="#E8E8E8", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    how = ("each technique added on top of the previous ones" if comp.ladder
           else "each technique alone, against the baseline")  # fmt: skip
    ax.set_title(f"Peak GPU memory of {comp.model} on {comp.hardware}: {how}", fontsize=12,
                 loc="left")  # fmt: skip


def _ladder_legend(ax: Any, comp: VariantComparison, cap: float) -> None:
    """Legend right of the plot: the categories present (top of the stack first), the ghost
    bar, the capacity line."""
    rows = comp.rows
    present = [c for c in MEMORY_CATEGORIES if any(dict(r.at_peak_bytes)[c] for r in rows)]
    legend = {"buffers": "buffers (loss, casts)"}
    handles = [Patch(facecolor=CATEGORY_COLOURS[c], label=legend.get(c, _pretty(c)))
               for c in present[::-1]]  # fmt: skip
    handles.append(
        Patch(
            facecolor="none",
            edgecolor="#777777",
            hatch="///",
            label="removed" if comp.ladder else "removed vs baseline",
        )
    )
    handles.append(
        Line2D([], [], color="#B00020", linestyle="--", label=f"GPU memory {cap:.1f} GiB")
    )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9,
              frameon=False, title="memory at the peak", title_fontsize=9)  # fmt: skip


def _place_labels(
    ax: Any, points: list[tuple[float, float]], texts: list[str], fontsize: float = 9
) -> None:
    """Label each point to its right. Going from the lowest point up, a label that would overlap
    one already placed (or another point's marker) moves up just above it, so labels keep the
    points' vertical order; a moved label gets a thin leader line to its point."""
    tr = ax.transData
    h = fontsize * 1.5 * DPI / 72
    pix = [tuple(tr.transform(p)) for p in points]
    markers = [(px - 7, py - 7, px + 7, py + 7) for px, py in pix]
    placed: list[tuple[float, float, float, float]] = []
    for i in sorted(range(len(points)), key=lambda k: (pix[k][1], pix[k][0])):
        px, py = pix[i]
        # (a name's "$" escaped: TextPath would read "$$" as a formula; report.mpl)
        plain = texts[i].replace("$", r"\$")
        w = TextPath((0, 0), plain, size=fontsize).get_extents().width * DPI / 72 + 2
        others = placed + [m for j, m in enumerate(markers) if j != i]

        def free(x: float, y: float, w: float = w, others: list = others) -> bool:
            return not any(x < b[2] and b[0] < x + w and y < b[3] and b[1] < y + h for b in others)

        x0, y0 = px + 9, py - h / 2
        if not free(x0, y0) and free(px - 9 - w, y0):
            x0 = px - 9 - w  # the left side is free
        for _ in range(4 * len(points) + 4):
            hits = [
                b for b in others if x0 < b[2] and b[0] < x0 + w and y0 < b[3] and b[1] < y0 + h
            ]
            if not hits:
                break
            y0 = max(b[3] for b in hits) + 1
        placed.append((x0, y0, x0 + w, y0 + h))
        dy = y0 + h / 2 - py
        ax.annotate(
            texts[i], points[i], xytext=(x0 - px, dy), textcoords="offset pixels",
            fontsize=fontsize, va="center", ha="left",
            arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6,
                        "shrinkA": 0, "shrinkB": 5} if abs(dy) > 1 else None,
        )  # fmt: skip


def tradeoff_plot(comp: VariantComparison, path: str | Path) -> Path:
    """Peak memory per GPU (GiB) against step time (s): one labelled point per variant, the
    ladder's path as arrows, the GPU's capacity as a red line. Lower is smaller, left is faster."""
    rows = comp.rows
    cap = rows[0].capacity_bytes / GIB
    fig = Figure(figsize=(10.0, 6.8), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.92, bottom=0.12)
    xs = [r.step_time_s for r in rows]
    ys = [r.peak_memory_bytes / GIB for r in rows]
    lo, hi = min(xs), max(xs)
    log = lo > 0 and hi / lo > 6
    if log:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.4, hi * 3.0)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else "")
        )
    else:
        ax.set_xlim(0, hi * 1.35 if hi else 1)
    ax.set_ylim(0, max(max(ys), cap) * 1.12)
    if comp.ladder:
        for i in range(1, len(rows)):
            ax.annotate("", (xs[i], ys[i]), (xs[i - 1], ys[i - 1]),
                        arrowprops={"arrowstyle": "->", "color": "#999999", "lw": 1.0,
                                    "shrinkA": 5, "shrinkB": 5})  # fmt: skip
    for i, r in enumerate(rows):
        colour = "#1B7F3B" if r.fits else "#B00020"
        ax.scatter([xs[i]], [ys[i]], s=60 if i else 90, color=colour, zorder=3,
                   marker="o" if i else "s", edgecolor="black", linewidth=0.6)  # fmt: skip
    labels = [_label(comp, i).replace("\n", " ") for i in range(len(rows))]
    _place_labels(ax, list(zip(xs, ys, strict=True)), labels)
    ax.axhline(cap, color="#B00020", linestyle="--", linewidth=1.4)
    ax.text(0.01, cap, f"GPU memory {cap:.1f} GiB", transform=ax.get_yaxis_transform(),
            ha="left", va="bottom", fontsize=9, color="#B00020")  # fmt: skip
    ax.set_xlabel("step time (s)" + (", log scale" if log else "") + "  — left is faster",
                  fontsize=11)  # fmt: skip
    ax.set_ylabel("peak memory per GPU (GiB)  — lower is smaller", fontsize=11)
    ax.grid(color="#E8E8E8", linewidth=0.6)
    ax.grid(which="minor", axis="x", color="#F2F2F2", linewidth=0.5)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    how = "technique by technique" if comp.ladder else "each technique alone"
    ax.set_title(f"Memory vs speed of one training step: {comp.model} on {comp.hardware}, {how}",
                 fontsize=12, loc="left")  # fmt: skip
    fig.text(0.01, 0.01, "square: baseline; green: fits on the GPU, red: does not fit"
             + ("; arrows: the ladder's order" if comp.ladder else "")
             + ". Step time of one optimizer step (simulated).", fontsize=8, color="#555555")  # fmt: skip
    return save_png(fig, path)
