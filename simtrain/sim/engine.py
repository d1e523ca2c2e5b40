"""Discrete-event engine: runs a task graph on (GPU, stream) queues with SimPy.

The engine knows nothing about models, hardware or YAML. A task is a duration on one stream of
one simulated GPU, with dependency ids, memory deltas and an optional shared link.

Semantics (see ``simulate``):

- Each (gpu, stream) pair is a FIFO queue served by ONE long-lived SimPy process: its tasks run
  one at a time in the order they appear in the input, each once all its dependencies ended.
  A task starts at ``max(end of its stream predecessor, end of its dependencies)`` and, without a
  link, ends ``duration_ns`` later. Without links and SM holds (below) this is a max-plus
  system, so makespan is monotone in every duration and scales exactly with them.
- Dependencies are SimPy events, created lazily (one per task at most, only when some stream
  actually has to wait for that task) and succeeded at the task's end. A dependency that is
  already finished is never waited on.
- Time is integer nanoseconds (``env.now`` stays an ``int``).
- Memory is plain accounting: ``alloc`` is applied at task start, ``free`` at task end; a sample
  is recorded at every change, coalesced to one sample per (time, gpu, category) carrying the
  final value at that time. A negative total raises ``ValueError``.
- Links: a task with ``link`` whose bandwidth is given first spends ``duration_ns`` (fixed
  latency, the link is not used), then moves ``link_bytes`` over the link. Transfers that are
  active on one link at the same time share its bandwidth equally (processor sharing / fluid
  model). Time is exact rational arithmetic; each completion is rounded UP to the next integer
  ns. A task whose link has no bandwidth entry, or with ``link_bytes == 0``, takes ``duration_ns``.
- Polling: a task with ``poll_ns > 0`` then checks every ``poll_ns`` whether the tasks in
  ``polled`` have ended, the first check ``poll_ns`` after its own duration (a host thread that
  issues a message and sleeps before looking: ``while not work.is_completed():
  time.sleep(interval)``); it ends at the first check that finds them all ended. Its end is
  quantised to its start, so polling tasks are outside the max-plus property above.
- SMs: a task with ``sm_hold > 0`` takes that many of its GPU's SMs (``rank_sms``) while it
  runs (an NCCL kernel's thread blocks, one per channel, each on an SM of its own). Meanwhile
  the GPU's "compute" stream progresses at (S − H) / S of its rate, S the GPU's SMs and H the
  SMs held (at most S − 1): a compute task of duration d needs d · S SM-ns of service, served
  at S − H per ns; each completion is rounded UP to the next integer ns. Where no task holds
  SMs, or ``rank_sms`` does not name the GPU, compute takes its duration.
- After the run, any unfinished task is a deadlock: ``DeadlockError`` names each blocked stream's
  head task and its unfinished dependencies. A dependency cycle is such a deadlock.

Reference: the SimPy scheduling core (simpy 4.1, ``simpy/core.py``); the one-process-per-stream
layout follows ../shared/DESIGN.md ("one long-lived SimPy process per (GPU, stream)").
"""

from __future__ import annotations

import gc
import operator
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from fractions import Fraction
from heapq import heappop, heappush
from math import isfinite, lcm
from typing import NamedTuple

import simpy
from simpy.core import EmptySchedule
from simpy.events import Event, Timeout

from simtrain.errors import DeadlockError
from simtrain.sim.timeline import STREAMS, MemorySample, Span, Timeline

__all__ = ["Task", "gc_paused", "simulate"]

_NS_PER_S = 1_000_000_000


class Task(NamedTuple):
    """One operation on one stream of one simulated GPU (a named tuple: immutable, and cheap to
    build by the thousand; change a field with ``task._replace(...)``).

    ``deps`` are ids of tasks that must END before this one STARTS. ``alloc`` bytes are added
    at start and ``free`` bytes removed at end, per memory category. ``link``/``link_bytes``
    name a shared resource whose bandwidth is split between overlapping transfers.
    """

    id: int  # unique
    rank: int  # simulated rank
    stream: str  # "compute" | "p2p" | "collective" (any string allowed)
    kind: str  # "F", "B", "I", "W", "R", "OPT", "SEND_F", "ALLREDUCE", ...
    name: str  # label, e.g. "F mb3 L0-5"
    duration_ns: int  # >= 0; with a link: the fixed latency before the bytes move
    deps: tuple[int, ...] = ()
    alloc: tuple[tuple[str, int], ...] = ()
    free: tuple[tuple[str, int], ...] = ()
    microbatch: int | None = None
    stage: int | None = None
    link: str | None = None
    link_bytes: int = 0
    poll_ns: int = 0  # > 0: after its duration, check every poll_ns until ``polled`` ended
    polled: tuple[int, ...] = ()  # ids of tasks the poll waits for (not needed to start)
    sm_hold: int = 0  # SMs of its GPU it takes from the "compute" stream while it runs


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a burst of allocations, then restore it.
    Lowering and the engine allocate tens of thousands of tuples that live until the step ends;
    each allocation-triggered collection re-walks all of them. Paused around lowering, engine
    and metrics, the planner's simulation of GPT-3 on 1,024 GPUs (tp 8 pp 16 dp 8, interleaved,
    then 30,384 tasks) took 0.66 s instead of 1.09 s (best of 6, one core, 2026-11-28; a later
    noisy check: 0.85 vs 1.15 s at 24,736 tasks). Reference counting still frees everything
    acyclic; cycles wait for the next collection."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Link:
    """Processor-sharing link: active transfers each progress at ``bandwidth / n``.

    Uses the virtual-service trick: ``served`` is the number of bytes every active transfer has
    received since the link was created (it grows at ``bandwidth / n`` per second while
    ``n > 0``). A transfer of ``b`` bytes joining when ``served == s`` completes when ``served``
    reaches ``s + b``, so joins and completions only need a heap of thresholds; the next
    completion time is recomputed (a new timer, older timers become stale) whenever the set of
    active transfers changes. ``served`` is kept in units of bytes * 1e9 (bytes x ns / s) as an
    exact rational number.

    The arithmetic is done in integers: with the bandwidth ``num / den`` bytes/s (the float's
    exact ratio) and at most ``N`` transfers active at once (the number of streams that use the
    link: each stream runs one task at a time), ``served`` is stored multiplied by
    ``k · den`` with ``k = lcm(1, ..., N)``, so that every increment ``dt · bw / n`` becomes the
    integer ``dt · num · (k / n)``. The result is the same as with fractions, only faster.
    """

    __slots__ = ("env", "num", "den", "k", "served", "last_ns", "heap", "seq", "gen", "timer_at")

    def __init__(self, env: simpy.Environment, bandwidth_bytes_per_s: float) -> None:
        self.env = env
        self.num, self.den = Fraction(bandwidth_bytes_per_s).as_integer_ratio()
        self.k = 1  # lcm(1..N), set by ``max_sharing`` before the run
        self.served = 0  # bytes * 1e9 * k * den served to each active transfer
        self.last_ns = 0
        self.heap: list[tuple[int, int, Event]] = []
        self.seq = 0  # tie-break: earlier joins complete first
        self.gen = 0  # timer generation; a timer whose generation is old is ignored
        self.timer_at = -1  # time of the live timer, -1 if none

    def max_sharing(self, n: int) -> None:
        """At most ``n`` transfers are ever active at once on this link."""
        self.k = lcm(*range(1, max(n, 1) + 1))

    def _advance(self) -> None:
        now = self.env.now
        if now != self.last_ns:
            n = len(self.heap)
            if n:
                self.served += (now - self.last_ns) * self.num * (self.k // n)
            self.last_ns = now

    def join(self, nbytes: int) -> Event:
        """Start a transfer of ``nbytes`` now; the returned event succeeds when it completes."""
        self._advance()
        done = Event(self.env)
        heappush(self.heap, (self.served + nbytes * _NS_PER_S * self.k * self.den, self.seq, done))
        self.seq += 1
        if self.k % len(self.heap):
            raise AssertionError("more transfers share a link than streams use it (engine bug)")
        self._reschedule()
        return done

    def _reschedule(self) -> None:
        heap = self.heap
        if not heap:
            self.gen += 1
            self.timer_at = -1
            return
        # ns until the head transfer's threshold at rate bw / n: ceil(need · n / (k · num)).
        need = heap[0][0] - self.served
        delay = max(0, -(-(need * len(heap)) // (self.k * self.num)))
        at = self.env.now + delay
        if at == self.timer_at:
            return  # the live timer already fires then
        self.gen += 1
        self.timer_at = at
        gen = self.gen
        timer = Timeout(self.env, delay)
        timer.callbacks.append(lambda _ev: self._fire(gen))  # type: ignore[union-attr]

    def _fire(self, gen: int) -> None:
        if gen != self.gen:
            return  # superseded by a later join or completion
        self._advance()
        self.timer_at = -1
        heap = self.heap
        served = self.served
        while heap and heap[0][0] <= served:
            heappop(heap)[2].succeed()
        self._reschedule()


class _Throttle:
    """One GPU's "compute" stream slowed by the SMs other streams' kernels hold: its task of
    duration d needs ``d · sms`` SM-ns of service, served at ``sms − held`` per ns (``held`` at
    most ``sms − 1``). One compute task runs at a time (the stream is FIFO), so one job; a
    change of ``held`` re-times it (a new timer, older timers become stale). Integer SM-ns:
    the end is rounded up to whole ns."""

    __slots__ = ("env", "sms", "held", "left", "rate", "last_ns", "done", "gen")

    def __init__(self, env: simpy.Environment, sms: int) -> None:
        self.env = env
        self.sms = sms
        self.held = 0
        self.left = 0  # SM-ns the running job still needs
        self.rate = sms  # SM-ns served per ns since ``last_ns``
        self.last_ns = 0
        self.done: Event | None = None
        self.gen = 0

    def run(self, duration_ns: int) -> Event:
        """Start a compute task of ``duration_ns`` (at full rate) now; its end event."""
        self.left = duration_ns * self.sms
        self.last_ns = self.env.now
        self.done = Event(self.env)
        self._time()
        return self.done

    def hold(self, sms: int) -> None:
        """``sms`` more (or, negative, fewer) SMs held by other streams from now."""
        if self.done is not None:
            now = self.env.now
            self.left -= (now - self.last_ns) * self.rate
            self.last_ns = now
        self.held += sms
        if self.done is not None:
            self._time()

    def _time(self) -> None:
        self.rate = self.sms - min(self.held, self.sms - 1)
        self.gen += 1
        gen = self.gen
        timer = Timeout(self.env, max(0, -(-self.left // self.rate)))
        timer.callbacks.append(lambda _ev: self._fire(gen))  # type: ignore[union-attr]

    def _fire(self, gen: int) -> None:
        if gen != self.gen or self.done is None:
            return  # superseded by a later change of the SMs held
        done, self.done = self.done, None
        done.succeed()


class _Look(Timeout):
    """A poll's next look: a timeout scheduled behind every event of its time (SimPy orders
    its queue by time, then priority, URGENT 0 and NORMAL 1, then insertion: ``simpy/core.py``
    ``Environment.schedule``), so that tasks ending at that time have ended when it fires."""

    def __init__(self, env: simpy.Environment, delay: int) -> None:
        self.env = env
        self.callbacks = []
        self._value = None
        self._delay = delay
        self._ok = True
        env.schedule(self, _LAST, delay)


_LAST = 2  # after simpy.events.URGENT (0) and NORMAL (1)


def _nonneg_int(value: object, unit: str, where: str) -> int:
    """``value`` as an int >= 0 (numpy integers accepted), else ValueError naming ``where``.

    Callers test ``type(value) is int and value >= 0`` inline first, so that the message is only
    built off the fast path."""
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{where} must be an integer number of {unit}, got {value!r}") from None
    if n < 0:
        raise ValueError(f"{where} must be >= 0 {unit}, got {n}")
    return n


def _task_ref(task: Task) -> str:
    return f"{task.name!r} (id {task.id}, gpu {task.rank} {task.stream})"


class _Run:
    """State of one simulation: flat per-task arrays indexed by input position."""

    __slots__ = (
        "env",
        "tasks",
        "deps",
        "dur",
        "alloc",
        "free",
        "link",
        "link_bytes",
        "poll",
        "polled",
        "sm_hold",
        "throttles",
        "sleeping",
        "done",
        "events",
        "start",
        "end",
        "slot_rank",
        "slot_cat",
        "mem_bytes",
        "mem_last_t",
        "mem_last_i",
        "s_time",
        "s_key",
        "s_bytes",
        "mem_slot",
        "resolved",
    )

    def __init__(self, env: simpy.Environment, tasks: Sequence[Task]) -> None:
        n = len(tasks)
        self.env = env
        self.tasks = tasks
        self.done = [False] * n
        self.events: list[Event | None] = [None] * n
        self.start = [0] * n
        self.end = [0] * n
        self.deps: list[tuple[int, ...]] = []
        self.dur: list[int] = []
        self.alloc: list[tuple[tuple[int, int], ...]] = []
        self.free: list[tuple[tuple[int, int], ...]] = []
        self.link: list[_Link | None] = []
        self.link_bytes: list[int] = []
        self.poll: list[int] = []
        self.polled: list[tuple[int, ...]] = []
        self.sm_hold: list[int] = []
        self.throttles: dict[int, _Throttle] = {}  # rank -> its compute stream's SM share
        self.sleeping: set[int] = set()  # polling tasks between two looks
        # Memory: one slot per (rank, category); samples as parallel lists.
        self.slot_rank: list[int] = []
        self.slot_cat: list[str] = []
        self.mem_bytes: list[int] = []
        self.mem_last_t: list[int] = []  # time of the slot's last sample, -1 if none
        self.mem_last_i: list[int] = []  # index of the slot's last sample
        self.s_time: list[int] = []
        self.s_key: list[int] = []
        self.s_bytes: list[int] = []
        self.mem_slot: dict[tuple[int, str], int] = {}
        # (rank, pairs) -> resolved ((slot, bytes), ...); tasks often share identical alloc tuples.
        self.resolved: dict[
            tuple[int, tuple[tuple[str, int], ...]], tuple[tuple[int, int], ...]
        ] = {}

    def slot_of(self, rank: int, category: str) -> int:
        """The memory slot of (rank, category), made on first use."""
        key = (rank, category)
        s = self.mem_slot.get(key)
        if s is None:
            s = self.mem_slot[key] = len(self.slot_rank)
            self.slot_rank.append(rank)
            self.slot_cat.append(category)
            self.mem_bytes.append(0)
            self.mem_last_t.append(-1)
            self.mem_last_i.append(-1)
        return s

    def resolve_pairs(self, t: Task, field_name: str,
                      pairs: tuple[tuple[str, int], ...]) -> tuple[tuple[int, int], ...]:  # fmt: skip
        """A task's (category, bytes) pairs as (slot, bytes), zero-byte pairs dropped."""
        key = (t.rank, pairs)
        r = self.resolved.get(key)
        if r is None:
            out = []
            for category, nbytes in pairs:
                b = nbytes
                if type(b) is not int or b < 0:
                    b = _nonneg_int(b, "bytes", f"task {_task_ref(t)}: {field_name}")
                if b:
                    out.append((self.slot_of(t.rank, category), b))
            r = self.resolved[key] = tuple(out)
        return r

    def add_initial_memory(self, initial_memory: Mapping[int, Mapping[str, int]]) -> set[int]:
        """Static memory held from t = 0, sampled first; the ranks it names."""
        ranks: set[int] = set()
        for rank in sorted(initial_memory):
            ranks.add(rank)
            for category, nbytes in initial_memory[rank].items():
                b = _nonneg_int(nbytes, "bytes", f"initial_memory[{rank}][{category!r}]")
                s = self.slot_of(rank, category)
                self.mem_bytes[s] = b
                self.mem_last_t[s] = 0
                self.mem_last_i[s] = len(self.s_time)
                self.s_time.append(0)
                self.s_key.append(s)
                self.s_bytes.append(b)
        return ranks

    def change(self, deltas: tuple[tuple[int, int], ...], sign: int, task: int) -> None:
        now = self.env.now
        mem_bytes = self.mem_bytes
        for slot, nbytes in deltas:
            total = mem_bytes[slot] + sign * nbytes
            if total < 0:
                raise ValueError(
                    f"memory of gpu {self.slot_rank[slot]} category {self.slot_cat[slot]!r} would"
                    f" become negative ({total} bytes) at t={now} ns when task"
                    f" {_task_ref(self.tasks[task])} frees {nbytes} bytes"
                )
            mem_bytes[slot] = total
            if self.mem_last_t[slot] == now:
                self.s_bytes[self.mem_last_i[slot]] = total  # coalesce same-time changes
            else:
                self.mem_last_t[slot] = now
                self.mem_last_i[slot] = len(self.s_time)
                self.s_time.append(now)
                self.s_key.append(slot)
                self.s_bytes.append(total)

    def stream(self, order: list[int], throttle: _Throttle | None = None,
               holds: _Throttle | None = None) -> Generator[Event, object, None]:  # fmt: skip
        """The long-lived process of one (gpu, stream): runs ``order`` (task indices) FIFO;
        on a compute stream slowed by held SMs, each duration through ``throttle``; on a
        stream whose tasks hold SMs, their holds on ``holds``."""
        env = self.env
        sm_hold = self.sm_hold
        done = self.done
        events = self.events
        deps = self.deps
        dur = self.dur
        alloc = self.alloc
        free = self.free
        link = self.link
        start = self.start
        end = self.end
        poll = self.poll
        for i in order:
            for d in deps[i]:
                if not done[d]:
                    ev = events[d]
                    if ev is None:
                        ev = events[d] = Event(env)
                    yield ev
            start[i] = env.now
            held = sm_hold[i] if holds is not None else 0
            if held:
                holds.hold(held)  # type: ignore[union-attr]
            if alloc[i]:
                self.change(alloc[i], 1, i)
            if dur[i]:
                yield Timeout(env, dur[i]) if throttle is None else throttle.run(dur[i])
            lk = link[i]
            if lk is not None:
                yield lk.join(self.link_bytes[i])
            if poll[i] and not (yield from self.polling(i)):
                return  # its polled tasks can never end: reported as a deadlock
            end[i] = env.now
            if held:
                holds.hold(-held)  # type: ignore[union-attr]
            if free[i]:
                self.change(free[i], -1, i)
            done[i] = True
            ev = events[i]
            if ev is not None:
                ev.succeed()

    def polling(self, i: int) -> Generator[Event, object, bool]:
        """Task ``i``'s poll loop: sleep ``poll_ns``, look, until every polled task has ended.
        A look at time t comes after every other event at t (``_Look``), so it sees the tasks
        that end at t whatever order SimPy took them in (but another poll ending at t only if
        that poll looked first). False when nothing but other polls' sleeps is left in SimPy's
        queue and none of them will find its tasks ended: no task can end any more, so this
        poll would loop forever."""
        env, interval, polled, done = self.env, self.poll[i], self.polled[i], self.done
        sleeping = self.sleeping
        while True:
            sleeping.add(i)
            yield _Look(env, interval)
            sleeping.discard(i)
            if all(done[d] for d in polled):
                return True
            if len(env._queue) <= len(sleeping) and not any(  # SimPy's queue (simpy/core.py)
                all(done[d] for d in self.polled[j]) for j in sleeping
            ):
                return False


def simulate(
    tasks: Sequence[Task],
    initial_memory: Mapping[int, Mapping[str, int]] | None = None,
    link_bandwidth_bytes_per_s: Mapping[str, float] | None = None,
    rank_labels: Mapping[int, str] | None = None,
    rank_sms: Mapping[int, int] | None = None,
) -> Timeline:
    """Run ``tasks`` and return their timeline.

    ``initial_memory[gpu][category]`` is static memory held from t=0 (sampled at t=0).
    ``link_bandwidth_bytes_per_s[link]`` enables bandwidth sharing on that link.
    ``rank_labels`` is copied into the timeline.
    ``rank_sms[gpu]`` is the GPU's SM count, which tasks with ``sm_hold`` take from its compute
    stream (module docstring); a GPU it does not name is not slowed.

    Output: spans sorted by (start_ns, gpu, stream order, task id), where stream order is the
    order of ``timeline.STREAMS`` followed by other streams in order of first appearance;
    memory samples in time order (initial samples first, by gpu); ``gpus`` sorted (every GPU
    with a task or initial memory). ``events_processed`` counts SimPy ``env.step()`` calls,
    i.e. every event popped from SimPy's queue: process initialisations, task timeouts,
    dependency events that somebody waited on, and link timers (stale ones included).

    Raises ``ValueError`` for a duplicate task id, an unknown dependency or polled id, polling
    with ``poll_ns`` 0, a negative or
    non-integer duration or byte count, a non-positive or infinite link bandwidth, or memory going
    negative; ``DeadlockError`` if some task never ran (e.g. a dependency cycle).
    """
    # Over 80 lines with its docstring: the per-task flattening loop below stays inline, with
    # the run's lists bound to locals, because it runs once per task (30,000+ on the planner's
    # largest steps) and attribute lookups there cost measurable time.
    env = simpy.Environment()  # initial time int 0: env.now stays int
    run = _Run(env, tasks)
    bandwidths = link_bandwidth_bytes_per_s or {}
    for name, bw in bandwidths.items():
        if not (bw > 0 and isfinite(bw)):
            raise ValueError(f"link {name!r}: bandwidth must be finite and > 0 bytes/s, got {bw!r}")

    # --- validate and flatten ----------------------------------------------------------------
    index: dict[int, int] = {}
    for i, t in enumerate(tasks):
        if t.id in index:
            first = tasks[index[t.id]]
            raise ValueError(f"duplicate task id {t.id}: {first.name!r} and {t.name!r}")
        index[t.id] = i

    # Initial memory first, so that its samples come first and at t=0.
    gpus = run.add_initial_memory(initial_memory) if initial_memory else set()

    links: dict[str, _Link] = {}
    queues: dict[tuple[int, str], list[int]] = {}
    stream_rank: dict[str, int] = {name: r for r, name in enumerate(STREAMS)}
    deps_out = run.deps
    dur_out = run.dur
    alloc_out = run.alloc
    free_out = run.free
    link_out = run.link
    link_bytes_out = run.link_bytes
    resolve = run.resolve_pairs

    for i, t in enumerate(tasks):
        d = t.duration_ns
        if type(d) is not int or d < 0:
            d = _nonneg_int(d, "ns", f"task {_task_ref(t)}: duration_ns")
        dur_out.append(d)
        try:
            deps_out.append(tuple([index[x] for x in t.deps]))
        except KeyError:
            missing = [x for x in t.deps if x not in index]
            raise ValueError(f"task {_task_ref(t)}: unknown dependency id(s) {missing}") from None
        if t.poll_ns or t.polled:
            run.poll.append(_nonneg_int(t.poll_ns, "ns", f"task {_task_ref(t)}: poll_ns"))
            try:
                run.polled.append(tuple([index[x] for x in t.polled]))
            except KeyError:
                missing = [x for x in t.polled if x not in index]
                raise ValueError(f"task {_task_ref(t)}: unknown polled id(s) {missing}") from None
            if t.polled and not t.poll_ns:
                raise ValueError(f"task {_task_ref(t)}: polls {list(t.polled)} with poll_ns 0")
        else:
            run.poll.append(0)
            run.polled.append(())
        alloc_out.append(resolve(t, "alloc", t.alloc) if t.alloc else ())
        free_out.append(resolve(t, "free", t.free) if t.free else ())
        lb = t.link_bytes
        if type(lb) is not int or lb < 0:
            lb = _nonneg_int(lb, "bytes", f"task {_task_ref(t)}: link_bytes")
        lk = None
        if t.link is not None and lb and t.link in bandwidths:
            lk = links.get(t.link)
            if lk is None:
                lk = links[t.link] = _Link(env, bandwidths[t.link])
        link_out.append(lk)
        link_bytes_out.append(lb)
        h = t.sm_hold
        if h and (type(h) is not int or h < 0):
            h = _nonneg_int(h, "SMs", f"task {_task_ref(t)}: sm_hold")
        run.sm_hold.append(h)
        if h and rank_sms and t.rank in rank_sms and t.rank not in run.throttles:
            sms = _nonneg_int(rank_sms[t.rank], "SMs", f"rank_sms[{t.rank}]")
            if sms > 1:
                run.throttles[t.rank] = _Throttle(env, sms)
        key = (t.rank, t.stream)
        q = queues.get(key)
        if q is None:
            q = queues[key] = []
            gpus.add(t.rank)
            if t.stream not in stream_rank:
                stream_rank[t.stream] = len(stream_rank)
        q.append(i)

    steps = _play(env, run, queues, links)
    if not all(run.done):
        _raise_deadlock(tasks, run, queues)
    return _timeline(tasks, run, stream_rank, gpus, rank_labels, steps)


def _play(env: simpy.Environment, run: _Run, queues: dict[tuple[int, str], list[int]],
          links: dict[str, _Link]) -> int:  # fmt: skip
    """Run every stream's process to the end; the number of SimPy events popped."""
    if links:
        streams_on: dict[int, set[tuple[int, str]]] = {}
        for (gpu, stream), order in queues.items():
            for i in order:
                lk = run.link[i]
                if lk is not None:
                    streams_on.setdefault(id(lk), set()).add((gpu, stream))
        for lk in links.values():
            lk.max_sharing(len(streams_on.get(id(lk), ())))
    throttles = run.throttles
    for (gpu, stream), order in queues.items():
        thr = throttles.get(gpu)
        if thr is None:
            env.process(run.stream(order))
        else:
            env.process(run.stream(order, thr if stream == "compute" else None, thr))
    step = env.step
    steps = 0
    with gc_paused():  # many short-lived objects, all freed by reference counting
        try:
            while True:
                step()
                steps += 1
        except EmptySchedule:
            pass
    return steps


def _timeline(tasks: Sequence[Task], run: _Run, stream_rank: dict[str, int], ranks: set[int],
              rank_labels: Mapping[int, str] | None, steps: int) -> Timeline:  # fmt: skip
    """The run's spans (sorted by start, rank, stream order, id; ids are unique, so the index
    never decides) and memory samples."""
    start, end = run.start, run.end
    keys = sorted((start[i], t.rank, stream_rank[t.stream], t.id, i) for i, t in enumerate(tasks))
    spans = [
        Span(t.id, t.rank, t.stream, t.kind, t.name, st, end[i], t.microbatch, t.stage)
        for st, _, _, _, i in keys
        for t in (tasks[i],)
    ]
    memory = [
        MemorySample(time_ns=tm, rank=run.slot_rank[s], category=run.slot_cat[s], bytes=b)
        for tm, s, b in zip(run.s_time, run.s_key, run.s_bytes, strict=True)
    ]
    labels = dict(sorted(rank_labels.items())) if rank_labels else {}
    return Timeline(spans=spans, memory=memory, ranks=sorted(ranks), rank_labels=labels,
                    events_processed=steps)  # fmt: skip


def _raise_deadlock(
    tasks: Sequence[Task], run: _Run, queues: Mapping[tuple[int, str], list[int]]
) -> None:
    done = run.done
    heads: dict[int, int] = {}  # task index -> index of the head of its (blocked) stream
    blocked: list[tuple[int, list[int]]] = []
    for order in queues.values():
        head = next((i for i in order if not done[i]), None)
        if head is None:
            continue
        for i in order:
            if not done[i]:
                heads[i] = head
        blocked.append((head, [d for d in (*run.deps[head], *run.polled[head]) if not done[d]]))
    blocked.sort(key=lambda hb: (tasks[hb[0]].rank, hb[0]))

    unfinished = sum(1 for x in done if not x)
    lines = [f"deadlock: {unfinished} of {len(tasks)} tasks never ran; blocked streams:"]
    for head, waiting in blocked:
        t = tasks[head]
        parts = []
        for d in dict.fromkeys(waiting):
            text = _task_ref(tasks[d])
            if heads.get(d, d) != d:
                text += f", queued behind {tasks[heads[d]].name!r} (id {tasks[heads[d]].id})"
            parts.append(text)
        why = "; ".join(parts) if parts else "no unfinished dependency (engine bug)"
        lines.append(f"  gpu {t.rank} {t.stream}: {t.name!r} (id {t.id}) waits for {why}")
    err = DeadlockError("\n".join(lines))
    err.blocked = tuple(  # type: ignore[attr-defined]
        (tasks[h].rank, tasks[h].stream, tasks[h].id, tuple(tasks[d].id for d in w))
        for h, w in blocked
    )
    raise err
