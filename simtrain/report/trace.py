"""Chrome / Perfetto trace of a simulated step.

Format: the Trace Event Format (Google, "Trace Event Format" document, the JSON Object Format),
which ui.perfetto.dev and chrome://tracing both load:

- one process per simulated GPU (``pid`` = rank), named by ``M`` ``process_name`` events with
  ``timeline.rank_labels[rank]`` (else ``"GPU {rank}"``) and ordered by ``process_sort_index``;
- one thread per stream (``tid``: compute 0, p2p 1, collective 2, any other stream after them in
  name order), named by ``thread_name`` and ordered by ``thread_sort_index``;
- one ``X`` (complete) event per span: ``name`` = span name, ``cat`` = span kind, ``ts``/``dur`` in
  microseconds, ``args`` = {microbatch, stage, task_id};
- one ``C`` (counter) event ``"memory (GiB)"`` per GPU and sample time, whose args carry every
  category's current value in GiB (samples at the same time are merged), and, when a capacity is
  given, a ``"memory headroom (GiB)"`` counter (capacity minus total; negative means out of memory).

Times are integer nanoseconds in the timeline; the trace writes ``ns / 1000`` rounded to 3
decimals, which is exact to the nanosecond. Events are sorted and the file is written with sorted
keys and fixed separators, so identical timelines give byte-identical files.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from simtrain.sim.timeline import MEMORY_CATEGORIES, STREAMS, Timeline
from simtrain.units import GIB

MEMORY_COUNTER = "memory (GiB)"
HEADROOM_COUNTER = "memory headroom (GiB)"

# Sort key of one event: (group, time_ns, pid, tid, phase order, -duration_ns, name, task id).
_Key = tuple[int, int, int, int, int, int, str, int]
# An event with its sort key.
_Keyed = tuple[_Key, dict[str, Any]]


def ns_to_us(ns: int) -> float:
    """Integer nanoseconds to microseconds, exact to the nanosecond (3 decimals)."""
    return round(ns / 1000, 3)


def stream_tids(streams: set[str] | list[str] | tuple[str, ...]) -> dict[str, int]:
    """Thread id per stream: the standard ``STREAMS`` first in their order, then others by name."""
    tids = {s: i for i, s in enumerate(STREAMS)}
    for s in sorted(set(streams) - set(STREAMS)):
        tids[s] = len(tids)
    return tids


def timeline_gpus(timeline: Timeline) -> list[int]:
    """Every rank named by the timeline: its ``gpus`` plus any rank with spans or samples."""
    gpus = set(timeline.ranks)
    gpus.update(s.rank for s in timeline.spans)
    gpus.update(m.rank for m in timeline.memory)
    return sorted(gpus)


def gpu_label(timeline: Timeline, gpu: int) -> str:
    return timeline.rank_labels.get(gpu, f"GPU {gpu}")


def memory_categories(timeline: Timeline) -> tuple[str, ...]:
    """Categories present in the samples: ``MEMORY_CATEGORIES`` order, then unknown ones by name."""
    present = {m.category for m in timeline.memory}
    known = tuple(c for c in MEMORY_CATEGORIES if c in present)
    return known + tuple(sorted(present - set(MEMORY_CATEGORIES)))


def memory_steps(
    timeline: Timeline, gpu: int, categories: tuple[str, ...]
) -> tuple[list[int], list[list[int]]]:
    """Bytes per category of ``gpu`` at each distinct sample time.

    Returns ``(times_ns, rows)``: ``rows[i][j]`` is the bytes of ``categories[j]`` held from
    ``times_ns[i]`` until ``times_ns[i + 1]``. A category not sampled yet holds 0 bytes; of several
    samples of one category at one time, the last in ``timeline.memory`` wins (as in
    ``Timeline.peak_memory_bytes``).
    """
    index = {c: j for j, c in enumerate(categories)}
    samples = sorted((m for m in timeline.memory if m.rank == gpu), key=lambda m: m.time_ns)
    current = [0] * len(categories)
    times: list[int] = []
    rows: list[list[int]] = []
    i = 0
    while i < len(samples):
        t = samples[i].time_ns
        while i < len(samples) and samples[i].time_ns == t:
            current[index[samples[i].category]] = samples[i].bytes
            i += 1
        times.append(t)
        rows.append(list(current))
    return times, rows


def chrome_trace(
    timeline: Timeline,
    *,
    capacity_bytes: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The trace as a JSON-ready dict: ``{"traceEvents", "displayTimeUnit", "otherData"}``.

    ``otherData`` is a copy of ``metadata`` (``{}`` when None); with ``capacity_bytes`` it also gets
    ``memory_capacity_gib``.
    """
    gpus = timeline_gpus(timeline)
    tids = stream_tids({s.stream for s in timeline.spans})
    keyed = [
        *_metadata_events(timeline, gpus, tids),
        *_span_events(timeline, tids),
        *_memory_events(timeline, gpus, capacity_bytes),
    ]
    keyed.sort(key=lambda ke: ke[0])
    other = dict(metadata) if metadata is not None else {}
    if capacity_bytes is not None:
        other["memory_capacity_gib"] = capacity_bytes / GIB
    return {
        "traceEvents": [e for _, e in keyed],
        "displayTimeUnit": "ms",
        "otherData": other,
    }


def _metadata_events(timeline: Timeline, gpus: list[int], tids: dict[str, int]) -> list[_Keyed]:
    """``M`` events naming and ordering the processes (GPUs) and their threads (streams)."""
    streams_of: dict[int, set[str]] = defaultdict(set)
    for s in timeline.spans:
        streams_of[s.rank].add(s.stream)
    keyed: list[_Keyed] = []
    for gpu in gpus:
        for meta, args in (
            ("process_name", {"name": gpu_label(timeline, gpu)}),
            ("process_sort_index", {"sort_index": gpu}),
        ):
            keyed.append(
                (
                    (0, 0, gpu, 0, 0, 0, meta, 0),
                    {"ph": "M", "name": meta, "pid": gpu, "tid": 0, "args": args},
                )
            )
        for stream in streams_of.get(gpu, ()):
            tid = tids[stream]
            for meta, args in (
                ("thread_name", {"name": stream}),
                ("thread_sort_index", {"sort_index": tid}),
            ):
                keyed.append(
                    (
                        (0, 0, gpu, tid, 1, 0, meta, 0),
                        {"ph": "M", "name": meta, "pid": gpu, "tid": tid, "args": args},
                    )
                )
    return keyed


def _span_events(timeline: Timeline, tids: dict[str, int]) -> list[_Keyed]:
    """One ``X`` (complete) event per span."""
    keyed: list[_Keyed] = []
    for s in timeline.spans:
        tid = tids[s.stream]
        keyed.append(
            (
                (1, s.start_ns, s.rank, tid, 1, -s.duration_ns, s.name, s.task_id),
                {
                    "ph": "X",
                    "name": s.name,
                    "cat": s.kind,
                    "ts": ns_to_us(s.start_ns),
                    "dur": ns_to_us(s.duration_ns),
                    "pid": s.rank,
                    "tid": tid,
                    "args": {"microbatch": s.microbatch, "stage": s.stage, "task_id": s.task_id},
                },
            )
        )
    return keyed


def _memory_events(timeline: Timeline, gpus: list[int], capacity_bytes: int | None) -> list[_Keyed]:
    """Per GPU and sample time a ``C`` counter event with every category's current value (GiB),
    and with ``capacity_bytes`` a headroom counter (capacity minus total)."""
    categories = memory_categories(timeline)
    keyed: list[_Keyed] = []
    for gpu in gpus:
        times, rows = memory_steps(timeline, gpu, categories)
        for t, row in zip(times, rows, strict=True):
            values = {c: b / GIB for c, b in zip(categories, row, strict=True)}
            keyed.append(_memory_counter(t, gpu, MEMORY_COUNTER, values))
            if capacity_bytes is not None:
                headroom = {"headroom": (capacity_bytes - sum(row)) / GIB}
                keyed.append(_memory_counter(t, gpu, HEADROOM_COUNTER, headroom))
    return keyed


def _memory_counter(t: int, gpu: int, name: str, args: dict[str, float]) -> _Keyed:
    """A keyed ``C`` (counter) event ``name`` of ``gpu`` at ``t`` ns with ``args``."""
    return (
        (1, t, gpu, 0, 0, 0, name, 0),
        {
            "ph": "C",
            "name": name,
            "cat": "memory",
            "ts": ns_to_us(t),
            "pid": gpu,
            "tid": 0,
            "args": args,
        },
    )


def dumps_chrome_trace(trace: dict[str, Any]) -> str:
    """Canonical JSON text of a trace: sorted keys, no spaces, a final newline."""
    return json.dumps(trace, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


def write_chrome_trace(timeline: Timeline, path: str | Path, **kw: Any) -> Path:
    """Write ``chrome_trace(timeline, **kw)`` to ``path`` (parent folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_chrome_trace(chrome_trace(timeline, **kw)), encoding="utf-8")
    return path
