"""Gantt and memory plots: PNGs written, edge cases survive, thousands of spans render."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from simtrain.report import plot
from simtrain.report.plot import gantt, kind_style, memory_plot, time_scale
from simtrain.report.trace import GIB
from simtrain.sim.timeline import MemorySample, Span, Timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def one_f_one_b(
    pp: int = 4,
    m: int = 8,
    f_ns: int = 1_000_000,
    b_ns: int = 2_000_000,
    p2p_ns: int = 150_000,
    collective: bool = True,
) -> Timeline:
    """A hand-built 1F1B timeline (no engine): compute, p2p sends and a final all-reduce."""
    spans: list[Span] = []
    memory: list[MemorySample] = []
    tid = 0
    free = [0] * pp  # compute stream free at
    f_done: dict[tuple[int, int], int] = {}
    b_done: dict[tuple[int, int], int] = {}
    for g in range(pp):
        memory.append(MemorySample(0, g, "parameters", 3 * GIB))
        memory.append(MemorySample(0, g, "optimizer_states", 12 * GIB))
        memory.append(MemorySample(0, g, "cuda_context", GIB // 2))

    def add(g: int, stream: str, kind: str, mb: int | None, start: int, dur: int) -> int:
        nonlocal tid
        name = f"{kind} mb{mb}" if mb is not None else kind
        spans.append(Span(tid, g, stream, kind, name, start, start + dur, mb, g))
        tid += 1
        return start + dur

    orders = []
    for g in range(pp):
        warm = min(pp - g - 1, m)
        order = [("F", i) for i in range(warm)]
        f, b = warm, 0
        while b < m:
            if f < m:
                order.append(("F", f))
                f += 1
            order.append(("B", b))
            b += 1
        orders.append(order)
    pos = [0] * pp
    live = [0] * pp
    while any(pos[g] < len(orders[g]) for g in range(pp)):
        for g in range(pp):
            while pos[g] < len(orders[g]):
                kind, mb = orders[g][pos[g]]
                if kind == "F":
                    dep = 0 if g == 0 else f_done.get((g - 1, mb))
                    hop = g > 0
                else:
                    dep = f_done.get((g, mb)) if g == pp - 1 else b_done.get((g + 1, mb))
                    hop = g < pp - 1
                if dep is None:
                    break
                start = max(free[g], dep + (p2p_ns if hop else 0))
                if hop:
                    recv = "RECV_F" if kind == "F" else "RECV_B"
                    add(g, "p2p", recv, mb, dep, p2p_ns)
                end = add(g, "compute", kind, mb, start, f_ns if kind == "F" else b_ns)
                if kind == "F":
                    f_done[(g, mb)] = end
                    live[g] += 1
                    if g < pp - 1:
                        add(g, "p2p", "SEND_F", mb, end, p2p_ns)
                else:
                    b_done[(g, mb)] = end
                    live[g] -= 1
                    if g > 0:
                        add(g, "p2p", "SEND_B", mb, end, p2p_ns)
                memory.append(MemorySample(end, g, "activations", live[g] * GIB))
                free[g] = end
                pos[g] += 1
    end = max(free)
    for g in range(pp):
        t = free[g]
        if collective:
            t = add(g, "collective", "ALLREDUCE", None, t, 3 * f_ns)
            memory.append(MemorySample(free[g], g, "gradients", 3 * GIB))
        add(g, "compute", "OPT", None, max(t, end), f_ns // 2)
    return Timeline(
        spans=spans,
        memory=memory,
        ranks=list(range(pp)),
        rank_labels={g: f"stage {g} (tp 8 x dp 4)" for g in range(pp)},
    )


def assert_png(path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes


def test_gantt_writes_png(tmp_path) -> None:
    tl = one_f_one_b()
    out = gantt(tl, tmp_path / "gantt.png", title="1F1B pp=4 m=8", bubble_ratio=0.2727)
    assert out == tmp_path / "gantt.png"
    assert_png(out)


def test_gantt_deterministic(tmp_path) -> None:
    a = gantt(one_f_one_b(), tmp_path / "a.png", title="t")
    b = gantt(one_f_one_b(), tmp_path / "b.png", title="t")
    assert a.read_bytes() == b.read_bytes()


def test_gantt_compute_only_and_empty(tmp_path) -> None:
    tl = one_f_one_b(collective=False)
    compute_only = Timeline(spans=[s for s in tl.spans if s.stream == "compute"], ranks=tl.ranks)
    assert_png(gantt(compute_only, tmp_path / "c.png", title="compute only"))
    assert_png(gantt(Timeline(ranks=[0, 1]), tmp_path / "e.png", title="empty"), min_bytes=1000)
    assert_png(gantt(Timeline(), tmp_path / "none.png", title="none"), min_bytes=1000)


def test_gantt_unknown_kinds_and_streams(tmp_path) -> None:
    spans = [
        Span(0, 0, "compute", "F", "F", 0, 10_000, 0, 0),
        Span(1, 0, "compute", "MYSTERY", "?", 10_000, 20_000),
        Span(2, 0, "offload", "H2D", "h2d", 0, 15_000),
        Span(3, 0, "collective", "all_gather", "ag", 0, 5_000),
    ]
    assert_png(gantt(Timeline(spans=spans), tmp_path / "u.png", title="unknown"), 5000)


def test_gantt_thins_gpus(tmp_path) -> None:
    tl = one_f_one_b(pp=12, m=12)
    assert_png(gantt(tl, tmp_path / "thin.png", title="thin", max_gpus=5))


def test_gantt_many_spans(tmp_path) -> None:
    # Rendering speed is measured in benchmarks/, never asserted here (busy CI machines).
    tl = one_f_one_b(pp=16, m=96)  # about 16 * (2 * 96 compute + p2p) > 5,000 spans
    assert len(tl.spans) > 5000
    assert_png(gantt(tl, tmp_path / "big.png", title="big", bubble_ratio=0.135))


def test_memory_plot_writes_png(tmp_path) -> None:
    tl = one_f_one_b()
    out = memory_plot(tl, tmp_path / "mem.png", capacity_bytes=80 * GIB, title="memory")
    assert out == tmp_path / "mem.png"
    assert_png(out)


def test_memory_plot_variants(tmp_path) -> None:
    tl = one_f_one_b(pp=12, m=12)
    assert_png(memory_plot(tl, tmp_path / "m12.png", capacity_bytes=None, title="twelve"))
    assert_png(
        memory_plot(tl, tmp_path / "sel.png", capacity_bytes=20 * GIB, title="oom", gpus=[0, 11])
    )
    odd = Timeline(memory=[MemorySample(5, 0, "weird", GIB), MemorySample(9, 0, "buffers", 1)])
    assert_png(memory_plot(odd, tmp_path / "odd.png", capacity_bytes=GIB, title="odd"), 5000)
    assert_png(
        memory_plot(Timeline(), tmp_path / "none.png", capacity_bytes=None, title="none"), 1000
    )


def test_memory_plot_many_samples(tmp_path) -> None:
    tl = one_f_one_b(pp=16, m=96)
    assert len(tl.memory) > 3000
    assert_png(memory_plot(tl, tmp_path / "m.png", capacity_bytes=80 * GIB, title="m"))


def test_memory_plot_deterministic(tmp_path) -> None:
    a = memory_plot(one_f_one_b(), tmp_path / "a.png", capacity_bytes=GIB * 40, title="t")
    b = memory_plot(one_f_one_b(), tmp_path / "b.png", capacity_bytes=GIB * 40, title="t")
    assert a.read_bytes() == b.read_bytes()


def test_styles_fixed() -> None:
    assert kind_style("F") != kind_style("B")
    assert kind_style("SEND_F")[0] == kind_style("send_f")[0]
    assert kind_style("R")[1] is not None  # recompute hatched
    # Unknown kinds get a colour that depends on the name only (a CRC, not hash(), which
    # changes from one process to the next), so the same trace always draws the same PNG:
    # pinned here, a switch to hash() or a palette change shows up.
    assert kind_style("FOO") == ("#9467BD", None)
    assert kind_style("MYSTERY") == ("#EDC948", None)
    assert kind_style("H2D") == ("#9C755F", None)
    assert kind_style("H2D", "collective") == ("#C0392B", None)  # communication palette
    assert kind_style("all_reduce") == kind_style("ALLREDUCE")


@pytest.mark.parametrize(("ns", "unit"), [(0, "ms"), (9_999_999_999, "ms"), (10**10, "s")])
def test_time_scale(ns: int, unit: str) -> None:
    assert time_scale(ns)[1] == unit


# ------------------------------------------------------- raster Gantt = vector Gantt, faster


def pixels(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB")).astype(np.int16)


def test_raster_gantt_has_the_vector_gantts_pixels(tmp_path, monkeypatch) -> None:
    """Above 3,000 boxes the Gantt paints its boxes into one image; every pixel equals the one
    matplotlib draws with a rectangle per box (snapped to the pixel grid), boxes thinner than a
    pixel included (p2p sends here are ~0.5 px wide)."""
    tl = one_f_one_b(pp=16, m=96)
    assert len(tl.spans) > plot._RASTER_ABOVE
    raster = gantt(tl, tmp_path / "raster.png", title="big", bubble_ratio=0.1)
    monkeypatch.setattr(plot, "_RASTER_ABOVE", 10**9)  # the vector path, same (no) edges
    vector = gantt(tl, tmp_path / "vector.png", title="big", bubble_ratio=0.1)
    assert np.array_equal(pixels(raster), pixels(vector))


def test_raster_hatch_looks_like_matplotlibs(tmp_path, monkeypatch) -> None:
    """Hatched (recompute) boxes: the painted hatch lines within a few levels of Agg's."""
    spans = [Span(i, 0, "collective", "TP", "tp", i * 1000, i * 1000 + 300) for i in range(3100)]
    spans += [Span(9000 + 4 * g + k, g, "compute", "R", "R", k * 800_000 + 10_000,
                   k * 800_000 + 700_000, k, g) for g in range(3) for k in range(4)]  # fmt: skip
    tl = Timeline(spans=spans, ranks=[0, 1, 2])
    a = pixels(gantt(tl, tmp_path / "raster.png", title="hatch"))
    monkeypatch.setattr(plot, "_RASTER_ABOVE", 10**9)
    b = pixels(gantt(tl, tmp_path / "vector.png", title="hatch"))
    diff = np.abs(a - b).max(axis=2)
    hatched = (np.abs(b - np.array([0x3B, 0x5F, 0xA0])).max(axis=2) < 4).sum()
    assert hatched > 1000  # the vector picture does have hatch lines
    assert diff.max() <= 32  # a line's antialiased edge a little lighter or darker
    assert diff.mean() < 1.0


def test_stacked_areas_are_fill_betweens(tmp_path, monkeypatch) -> None:
    """The memory plot's one PolyCollection per panel draws what a fill_between per category
    drew (the reference below, the code before issue 16)."""

    def fill_betweens(ax, xs, rows, categories) -> None:
        base = [0.0] * len(xs)
        for j, cat in enumerate(categories):
            upper = [b + r[j] / GIB for b, r in zip(base, rows, strict=True)]
            if any(r[j] for r in rows):
                ax.fill_between(xs, base, upper, step="post", facecolor=plot._category_colour(cat),
                                edgecolor="none", linewidth=0)  # fmt: skip
            base = upper

    tl = one_f_one_b(pp=6, m=24)
    a = pixels(memory_plot(tl, tmp_path / "new.png", capacity_bytes=40 * GIB, title="m"))
    monkeypatch.setattr(plot, "_stack_areas", fill_betweens)
    b = pixels(memory_plot(tl, tmp_path / "old.png", capacity_bytes=40 * GIB, title="m"))
    assert np.abs(a - b).max() <= 2  # float rounding of an antialiased edge at most


def _write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture(autouse=True)
def _spare_cpu(monkeypatch) -> None:
    """run_concurrently forks only with a CPU to spare; tests run on busy machines."""
    monkeypatch.setattr(plot, "_cpus_busy", lambda: False)


def test_run_concurrently_runs_every_job(tmp_path) -> None:
    jobs = [lambda i=i: _write(tmp_path / f"{i}.txt", str(i)) for i in range(3)]
    plot.run_concurrently(jobs)
    assert [(tmp_path / f"{i}.txt").read_text() for i in range(3)] == ["0", "1", "2"]


@pytest.mark.parametrize("at_once", [True, False])
def test_run_concurrently_raises_a_childs_error_here(tmp_path, monkeypatch, at_once) -> None:
    """Every job runs even when one fails, whether at once or one after the other (another
    thread in the process forces the latter), and the error is raised here."""

    def bad() -> None:
        raise ValueError("no such file")

    if not at_once:
        monkeypatch.setattr(plot.threading, "active_count", lambda: 2)
    with pytest.raises(ValueError, match="no such file"):
        plot.run_concurrently([bad, lambda: _write(tmp_path / "ok.txt", "ok")])
    assert (tmp_path / "ok.txt").read_text() == "ok"
    with pytest.raises(ValueError, match="no such file"):
        plot.run_concurrently([lambda: _write(tmp_path / "ok2.txt", "ok"), bad])
    assert (tmp_path / "ok2.txt").read_text() == "ok"
