"""Chrome / Perfetto trace of a simulated step.

Format: the Trace Event Format (Google, "Trace Event Format" document, the JSON Object Format,
https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU), which
ui.perfetto.dev and chrome://tracing both load:

- one process per simulated GPU (``pid`` = rank), named by ``M`` ``process_name`` events with
  ``timeline.rank_labels[rank]`` (else ``"GPU {rank}"``) and ordered by ``process_sort_index``;
- one thread per stream (``tid``: compute 0, p2p 1, collective 2, any other stream after them in
  name order), named by ``thread_name`` and ordered by ``thread_sort_index``;
- one ``X`` (complete) event per span: ``name`` = span name, ``cat`` = span kind, ``ts``/``dur`` in
  microseconds, ``args`` = {microbatch, stage, task_id};
- one ``C`` (counter) event ``"memory (GiB)"`` per GPU and sample time, whose args carry every
  category's current value in GiB (samples at the same time are merged), and, when a capacity is
  given, a ``"memory headroom (GiB)"`` counter (capacity minus total; negative means out of memory);
- flow events (the document's "Flow Events" section: ``ph`` ``s`` starts a flow, ``f`` ends it;
  the two share ``cat``, ``name`` and ``id``), drawn by Perfetto as arrows between slices
  (:func:`flows`): one from each pipeline send (``SEND_F``/``SEND_B``) to the compute task that
  receives it on the next/previous stage, and, for a collective drawn on several GPUs (spans of
  the same stream, kind, name, start and end on different ranks), one from its lowest rank to
  each other participant. A flow start binds to the slice that encloses it, a flow end with
  ``"bp": "e"`` (binding point "enclosing slice") too, so each is placed at the middle of its
  slice (strictly inside it when the slice is 2 ns or longer): the binding never depends on how
  a viewer orders events that share a timestamp. Perfetto's JSON importer reads ``s``/``f`` this
  way (``json_trace_parser_impl.cc``: ``FlowTracker::Begin`` on the open slice, ``End`` with
  ``bind_enclosing_slice`` from ``bp``).

Times are integer nanoseconds in the timeline; the trace writes ``ns / 1000`` rounded to 3
decimals, which is exact to the nanosecond. Events are sorted and the file is written with sorted
keys and fixed separators, so identical timelines give byte-identical files.
:func:`write_chrome_trace` streams the file event by event (no dict of the whole trace, no
single giant string); its bytes equal ``dumps_chrome_trace(chrome_trace(...))`` (tested).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii  # json.dumps' own string encoder (ASCII)
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from simtrain.sim.timeline import MEMORY_CATEGORIES, STREAMS, Span, Timeline
from simtrain.units import GIB

MEMORY_COUNTER = "memory (GiB)"
HEADROOM_COUNTER = "memory headroom (GiB)"

FLOW_P2P = "p2p"  # cat of a send's flow
FLOW_COLLECTIVE = "collective"  # cat of a collective's flows

# Sort key of one event: (group, time_ns, pid, tid, phase order, -duration_ns, name, task id).
_Key = tuple[int, int, int, int, int, int, str, int]
# An event: ("M", dict) | ("X", Span, tid) | ("C", name, t_ns, gpu, args) | ("s" or "f", Flow).
_Event = tuple[Any, ...]
_Keyed = tuple[_Key, _Event]
# Events per write() of the streaming writer.
_CHUNK = 4096


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


class Flow(NamedTuple):
    """One arrow: from slice ``source`` to slice ``dest`` (spans of the timeline)."""

    id: int  # unique in the trace, from 1
    cat: str  # FLOW_P2P or FLOW_COLLECTIVE
    source: Span
    dest: Span


def _receivers(spans: list[Span]) -> dict[tuple[str, int, int], Span]:
    """The compute span that receives each pipeline message: ``("F", stage, mb)`` the forward of
    that (virtual) stage and micro-batch, ``("B", stage, mb)`` its backward (``B``, or ``I`` in
    the zero-bubble schedules, which split off the weight gradient). When the engine cut an
    action into pieces, the first piece (earliest start, then lowest task id)."""
    out: dict[tuple[str, int, int], Span] = {}
    for s in spans:
        if s.stream != STREAMS[0] or s.stage is None or s.microbatch is None:
            continue
        role = "F" if s.kind == "F" else "B" if s.kind in ("B", "I") else None
        if role is None:
            continue
        key = (role, s.stage, s.microbatch)
        cur = out.get(key)
        if cur is None or (s.start_ns, s.task_id) < (cur.start_ns, cur.task_id):
            out[key] = s
    return out


def flows(timeline: Timeline) -> list[Flow]:
    """Flow arrows of the trace, ids 1, 2, ... in order of their source slice (start, rank,
    task id, then destination rank).

    - A pipeline send ``SEND_F`` of (virtual) stage s, micro-batch j goes to the forward ``F`` of
      stage s + 1, micro-batch j; ``SEND_B`` of stage s to the backward (``B`` or ``I``) of stage
      s − 1 (``simtrain.schedules.deps``: RECV_F(s, j) needs SEND_F(s−1, j), RECV_B(s, j) needs
      SEND_B(s+1, j)). A send whose receiver is not in the timeline gets no flow.
    - A collective whose participants are drawn as spans of the same stream, kind, name, start
      and end on several ranks (outside the compute and p2p streams) gets one flow from its
      lowest rank to each other rank.
    """
    spans = timeline.spans
    receivers = _receivers(spans)
    pairs: list[tuple[str, Span, Span]] = []
    groups: dict[tuple[str, str, str, int, int], list[Span]] = defaultdict(list)
    for s in spans:
        if s.kind in ("SEND_F", "SEND_B"):
            if s.stage is None or s.microbatch is None:
                continue
            key = ("F", s.stage + 1, s.microbatch) if s.kind == "SEND_F" else (
                "B", s.stage - 1, s.microbatch)  # fmt: skip
            dest = receivers.get(key)
            if dest is not None:
                pairs.append((FLOW_P2P, s, dest))
        elif s.stream not in STREAMS[:2]:
            groups[(s.stream, s.kind, s.name, s.start_ns, s.end_ns)].append(s)
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda m: (m.rank, m.task_id))
        root = members[0]
        seen = {root.rank}
        for m in members[1:]:
            if m.rank not in seen:
                seen.add(m.rank)
                pairs.append((FLOW_COLLECTIVE, root, m))
    pairs.sort(key=lambda p: (p[1].start_ns, p[1].rank, p[1].task_id, p[2].rank, p[2].task_id))
    return [Flow(i, cat, src, dst) for i, (cat, src, dst) in enumerate(pairs, start=1)]


def _binding_ns(s: Span) -> int:
    """Where a flow event binds to span ``s``: its middle (inside it when it lasts >= 2 ns)."""
    return s.start_ns + s.duration_ns // 2


def _sorted_events(timeline: Timeline, capacity_bytes: int | None) -> list[_Keyed]:
    """Every event of the trace with its sort key, sorted."""
    gpus = timeline_gpus(timeline)
    tids = stream_tids({s.stream for s in timeline.spans})
    keyed = _metadata_events(timeline, gpus, tids)
    for s in timeline.spans:
        keyed.append(((1, s.start_ns, s.rank, tids[s.stream], 1, -s.duration_ns, s.name,
                       s.task_id), ("X", s, tids[s.stream])))  # fmt: skip
    keyed += _memory_events(timeline, gpus, capacity_bytes)
    for fl in flows(timeline):
        for ph, s in (("s", fl.source), ("f", fl.dest)):
            t, tid = _binding_ns(s), tids[s.stream]
            keyed.append(((1, t, s.rank, tid, 2, 0, fl.source.name, 2 * fl.id + (ph == "f")),
                          (ph, fl, s, tid)))  # fmt: skip
    keyed.sort(key=lambda ke: ke[0])
    return keyed


def _other_data(metadata: dict[str, Any] | None, capacity_bytes: int | None) -> dict[str, Any]:
    other = dict(metadata) if metadata is not None else {}
    if capacity_bytes is not None:
        other["memory_capacity_gib"] = capacity_bytes / GIB
    return other


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
    return {
        "traceEvents": [_event_dict(ev) for _, ev in _sorted_events(timeline, capacity_bytes)],
        "displayTimeUnit": "ms",
        "otherData": _other_data(metadata, capacity_bytes),
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
                    ("M", {"ph": "M", "name": meta, "pid": gpu, "tid": 0, "args": args}),
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
                        ("M", {"ph": "M", "name": meta, "pid": gpu, "tid": tid, "args": args}),
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
            values = tuple((c, b / GIB) for c, b in zip(categories, row, strict=True))
            keyed.append(((1, t, gpu, 0, 0, 0, MEMORY_COUNTER, 0),
                          ("C", MEMORY_COUNTER, t, gpu, values)))  # fmt: skip
            if capacity_bytes is not None:
                headroom = (("headroom", (capacity_bytes - sum(row)) / GIB),)
                keyed.append(((1, t, gpu, 0, 0, 0, HEADROOM_COUNTER, 0),
                              ("C", HEADROOM_COUNTER, t, gpu, headroom)))  # fmt: skip
    return keyed


# ------------------------------------------------------------------------- one event, two forms


def _event_dict(ev: _Event) -> dict[str, Any]:
    """An event as a JSON-ready dict."""
    tag = ev[0]
    if tag == "X":
        s, tid = ev[1], ev[2]
        return {
            "ph": "X",
            "name": s.name,
            "cat": s.kind,
            "ts": ns_to_us(s.start_ns),
            "dur": ns_to_us(s.duration_ns),
            "pid": s.rank,
            "tid": tid,
            "args": {"microbatch": s.microbatch, "stage": s.stage, "task_id": s.task_id},
        }
    if tag == "C":
        _, name, t, gpu, values = ev
        return {"ph": "C", "name": name, "cat": "memory", "ts": ns_to_us(t), "pid": gpu,
                "tid": 0, "args": dict(values)}  # fmt: skip
    if tag in ("s", "f"):
        _, fl, s, tid = ev
        out = {"ph": tag, "name": fl.source.name, "cat": fl.cat, "id": fl.id,
               "ts": ns_to_us(_binding_ns(s)), "pid": s.rank, "tid": tid}  # fmt: skip
        if tag == "f":
            out["bp"] = "e"
        return out
    return ev[1]


def _json(value: Any) -> str:
    """``value`` as ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    allow_nan=False)`` writes it; the common scalars without the encoder's set-up cost."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    cls = type(value)
    if cls is int:
        return int.__repr__(value)
    if cls is float:
        if not math.isfinite(value):
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        return float.__repr__(value)
    if cls is str:
        return encode_basestring_ascii(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _int_json(value: Any) -> str:
    """An int as JSON (``None`` as ``null``; anything else through :func:`_json`)."""
    return int.__repr__(value) if value.__class__ is int else _json(value)


def _float_json(value: Any) -> str:
    """A float as JSON (its repr; not NaN or infinite: these raise, as ``allow_nan=False``)."""
    if value.__class__ is float and value - value == 0.0:
        return float.__repr__(value)
    return _json(value)


def _us_json(ns: int) -> str:
    """``ns`` as ``ns_to_us(ns)`` written in JSON."""
    return _float_json(round(ns / 1000, 3))


def _event_text(ev: _Event, counter_keys: dict[tuple[str, ...], list[tuple[int, str]]]) -> str:
    """An event as ``json.dumps(_event_dict(ev), sort_keys=True, separators=(",", ":"))``
    writes it, formatted directly (the keys in sorted order). ``counter_keys`` caches, per
    tuple of counter names, their sorted order with each name JSON-encoded."""
    tag = ev[0]
    if tag == "X":
        s, tid = ev[1], ev[2]
        mb, stage = s.microbatch, s.stage
        return (
            f'{{"args":{{"microbatch":{"null" if mb is None else _int_json(mb)},'
            f'"stage":{"null" if stage is None else _int_json(stage)},'
            f'"task_id":{_int_json(s.task_id)}}},"cat":{_json(s.kind)},'
            f'"dur":{_us_json(s.end_ns - s.start_ns)},"name":{_json(s.name)},"ph":"X",'
            f'"pid":{_int_json(s.rank)},"tid":{tid},"ts":{_us_json(s.start_ns)}}}'
        )
    if tag == "C":
        _, name, t, gpu, values = ev
        names = tuple(c for c, _ in values)
        keys = counter_keys.get(names)
        if keys is None:
            order = sorted(range(len(names)), key=names.__getitem__)
            keys = counter_keys[names] = [(i, _json(names[i])) for i in order]
        args = ",".join([f"{k}:{_float_json(values[i][1])}" for i, k in keys])
        return (f'{{"args":{{{args}}},"cat":"memory","name":{_json(name)},"ph":"C",'
                f'"pid":{_int_json(gpu)},"tid":0,"ts":{_us_json(t)}}}')  # fmt: skip
    if tag in ("s", "f"):
        _, fl, s, tid = ev
        bp = '"bp":"e",' if tag == "f" else ""
        return (f'{{{bp}"cat":{_json(fl.cat)},"id":{fl.id},"name":{_json(fl.source.name)},'
                f'"ph":"{tag}","pid":{_int_json(s.rank)},"tid":{tid},'
                f'"ts":{_us_json(_binding_ns(s))}}}')  # fmt: skip
    return json.dumps(ev[1], sort_keys=True, separators=(",", ":"), allow_nan=False)


def dumps_chrome_trace(trace: dict[str, Any]) -> str:
    """Canonical JSON text of a trace: sorted keys, no spaces, a final newline."""
    return json.dumps(trace, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


def _stream_chrome_trace(
    out: TextIO,
    timeline: Timeline,
    capacity_bytes: int | None = None,
    metadata: dict[str, Any] | None = None,
    progress: Callable[[str, float, float], None] | None = None,
) -> None:
    """Write the trace's canonical JSON text to ``out``, a chunk of events at a time (after
    each, ``progress("writing", chunks written, chunks)``; before them ``progress("sorting",
    1, 1)`` once the events are sorted, so that the writing phase's rate does not count the
    sort: a 16k-GPU trace's ETA had read 45 min for a write of seconds)."""
    other = _other_data(metadata, capacity_bytes)
    out.write('{"displayTimeUnit":"ms","otherData":')
    out.write(json.dumps(other, sort_keys=True, separators=(",", ":"), allow_nan=False))
    out.write(',"traceEvents":[')
    counter_keys: dict[tuple[str, ...], list[tuple[int, str]]] = {}
    events = _sorted_events(timeline, capacity_bytes)
    if progress is not None:
        progress("sorting", 1, 1)
    n_chunks = -(-len(events) // _CHUNK)
    for i, chunk in enumerate(_chunks(events)):
        if i:
            out.write(",")
        out.write(",".join([_event_text(ev, counter_keys) for _, ev in chunk]))
        if progress is not None:
            progress("writing", i + 1, n_chunks)
    out.write("]}\n")


def _chunks(keyed: list[_Keyed]) -> Iterator[list[_Keyed]]:
    for i in range(0, len(keyed), _CHUNK):
        yield keyed[i : i + _CHUNK]


def write_chrome_trace(timeline: Timeline, path: str | Path, **kw: Any) -> Path:
    """Write ``chrome_trace(timeline, **kw)`` to ``path`` (parent folders made), streamed: the
    same bytes as ``dumps_chrome_trace(chrome_trace(timeline, **kw))``; returns the path. A
    ``progress`` keyword hears of each chunk written (:func:`_stream_chrome_trace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        _stream_chrome_trace(out, timeline, **kw)
    return path
