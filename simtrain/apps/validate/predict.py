"""Predictions: memory reports and simulated step times, each computed once per distinct
scenario; long steps are simulated at one and two micro-batches and extrapolated."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate.translate import Translation
from simtrain.apps.workers import env_workers, local_workers
from simtrain.costs.chunk_time import block_times_ns
from simtrain.costs.memory import MemoryReport, estimate_memory
from simtrain.layout.step import ResolvedStep, resolve
from simtrain.report.progress import Progress
from simtrain.schedules.registry import all_warmup_order
from simtrain.sim.timeline import Timeline
from simtrain.spec.scenario import Scenario

_R = TypeVar("_R")


class PredictionFailed(Exception):
    """A record's scenario that simtrain could not simulate or estimate: an error of simtrain's
    own (a bug), which validate reports as that record's skip reason instead of ending a run of
    thousands of records with a traceback."""


@dataclass(frozen=True, slots=True)
class _Failure:
    """What a prediction raised, kept in the cache (and sent back from a worker process) in
    place of its result."""

    message: str


def failure_reason(what: str, exc: BaseException | str) -> str:
    """A record's skip reason where simtrain itself raised while ``what`` (translating this
    record, on this scenario): a simtrain bug, reported with the error."""
    err = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return f"simtrain failed {what} (a simtrain bug, please report it with the record): {err}"


def _attempt(fn: Callable[[Scenario], _R], key: Scenario) -> _R | _Failure:
    """``fn(key)``, or the exception it raised as a :class:`_Failure`."""
    try:
        return fn(key)
    except Exception as exc:  # noqa: BLE001 - any error of one record's prediction
        return _Failure(f"{type(exc).__name__}: {exc}")


def _result(value: _R | _Failure) -> _R:
    if isinstance(value, _Failure):
        raise PredictionFailed(value.message)
    return value


def scenario_key(sc: Scenario) -> Scenario:
    """The scenario without its name and source: records with equal keys have the same layout
    (and the same prediction)."""
    return replace(sc, name="", source="")


class Predictor:
    """Memory reports and step times, each computed once per distinct scenario."""

    def __init__(self) -> None:
        self.memory: dict[Scenario, MemoryReport | _Failure] = {}
        self.times: dict[Scenario, float | _Failure] = {}

    def memory_report(self, sc: Scenario) -> MemoryReport:
        """The scenario's memory report; :class:`PredictionFailed` where estimating it raised."""
        key = scenario_key(sc)
        if key not in self.memory:
            self.memory[key] = _attempt(estimate_memory, key)
        return _result(self.memory[key])

    def block_times(self, sc: Scenario) -> tuple[float, float]:
        """(forward, backward) seconds of one transformer block for one micro-batch
        (``costs.chunk_time.block_times_ns``): the first, or of a model with experts the first
        MoE block."""
        m = sc.model
        first = m.first_dense_layers if m.is_moe else 0
        fwd, bwd = _result(_attempt(lambda s: block_times_ns(s, resolve(s), first), sc))
        return fwd / 1e9, bwd / 1e9

    def step_time(self, sc: Scenario) -> float:
        """The scenario's step time; :class:`PredictionFailed` where simulating it raised."""
        key = scenario_key(sc)
        if key not in self.times:
            self.times[key] = _attempt(predicted_step_time, key)
        return _result(self.times[key])

    def precompute(self, translations: list[Translation], workers: int | None,
                   progress: Progress | None = None) -> None:  # fmt: skip
        """Simulate the distinct scenarios whose records measured a timing metric, and estimate
        the memory of every distinct scenario, in parallel worker processes (results are
        identical to serial runs: the engine and the allocator replay are deterministic; a
        memory report's replay is most of a validate run's time). ``progress("simulating",
        done, total)`` in units of :func:`_simulation_cost`."""
        wanted: dict[tuple[str, Scenario], None] = {}  # (an ordered set)
        for tr in translations:
            key = scenario_key(tr.scenario)
            if key not in self.memory:
                wanted[("memory", key)] = None
            if key not in self.times and any(k in tr.record.measured for k in TIMING_KEYS):
                wanted[("time", key)] = None
        n = local_workers(workers) if workers is not None else _default_workers()
        if n <= 1 or len(wanted) < 8:
            return  # computed lazily, serially
        jobs = {job: _simulation_cost(job[1]) for job in wanted}
        order = sorted(jobs, key=jobs.__getitem__, reverse=True)  # longest first: load balance
        if progress is not None:
            progress("simulating", 0.0, 1.0)
        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:  # pragma: no cover - platforms without fork
            return
        total, done = float(sum(jobs.values())), 0.0
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as ex:
            for job, result in zip(order, ex.map(_predict, order), strict=True):
                kind, key = job
                if kind == "time":
                    self.times[key] = result
                else:
                    self.memory[key] = result
                done += jobs[job]
                if progress is not None:
                    progress("simulating", done, total)


def _predict(job: tuple[str, Scenario]) -> float | MemoryReport | _Failure:
    """One worker's job of :meth:`Predictor.precompute`: a step time or a memory report (or
    what computing it raised)."""
    kind, key = job
    return _attempt(predicted_step_time if kind == "time" else estimate_memory, key)


# measured keys that need a simulated step time
TIMING_KEYS = ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "samples_per_s",
               "tflops_per_gpu", "model_tflops_per_gpu", "mfu", "hfu")  # fmt: skip


def _default_workers() -> int:
    """``SIMTRAIN_WORKERS``, else the CPU count, at most 4; never above the CPUs
    (:mod:`simtrain.apps.workers`)."""
    return local_workers(env_workers(), default_cap=4)


def _simulation_cost(sc: Scenario) -> int:
    """Relative cost of :func:`predicted_step_time` (a sort key for load balance): chunks x the
    micro-batches simulated (the whole step's, or the line's three points', 6·m₁) x the layers
    of the fullest rank."""
    step = resolve(sc)
    m1 = _line_start(sc, step)
    m = LINE_MICROBATCHES * m1 if m1 else step.microbatches
    layers = max(step.rank_layers(r) for r in range(step.pp))
    return step.pp * step.v * m * (1 + layers)


def _time_only(sc: Scenario) -> Scenario:
    """``sc`` without the caching allocator's replay (runtime ``allocator_replay``): the replay
    prices a reserved memory figure (``costs.fragmentation``), which no simulated time reads,
    and is most of a memory report's CPU; a step time's simulations need only the timeline.
    (The validate golden, tests/golden/validate.json, holds every step time either way.)"""
    if not sc.runtime.allocator_replay:
        return sc
    return replace(sc, runtime_profile=replace(sc.runtime, allocator_replay=False))


def _with_microbatches(sc: Scenario, m: int) -> Scenario:
    t, p = sc.training, sc.parallelism
    return replace(sc, training=replace(t, global_batch=m * t.micro_batch * p.dp))


#: The micro-batches the line's three simulations play together, in units of m₁:
#: m₁ + 2·m₁ + 3·m₁ (:func:`predicted_step_time`).
LINE_MICROBATCHES = 1 + 2 + 3

#: How far the third point may stray from the line through the first two: the engine's clock
#: ticks in whole nanoseconds, and each of the three times rounds to one. (A relative
#: tolerance does not bound the line's error: at 1e-4 of T(m₃) it let 22 of validate's steps
#: through, 21 within 0.03 % of the full simulation and usp_8B_n8_dp4_tp2_pp8_mbs2_ga32_z1,
#: 3.8e-6 off the line, 0.38 % off the full simulation; tried 2026-12-07, not kept.)
AFFINE_TOLERANCE_S = 3e-9


def predicted_step_time(sc: Scenario) -> float:
    """Simulated step time in seconds: the full simulation's, found with fewer micro-batches
    where it can be. The step time of the 1F1B, GPipe and interleaved schedules (and of plain
    gradient accumulation, pp = 1) is in most steps affine in the number of micro-batches m
    from some m₁ on: T(m) = T(m₁) + (m − m₁)·(T(m₂) − T(m₁))/(m₂ − m₁). A step of more than
    m₁ + m₂ + m₃ = 6·m₁ micro-batches (:func:`_line_start`; fewer: simulated whole, for no
    more work; the rule was m > 3·m₁ until 2026-12-07's second change: validate's timed steps
    took 128 s of one core, now 96 s) is simulated at m₁, m₂ = 2·m₁ and m₃ = 3·m₁; where
    T(m₃) lies on the line through the other two (to the engine's nanosecond,
    :data:`AFFINE_TOLERANCE_S`) the line gives T(m), else the step is simulated whole: a step
    whose micro-batches settle slowly (NeMo's LoRA 70B over blocking p2p adds 181, 194, 197,
    ... ms a micro-batch) is not on any line
    (``tests/test_validate.py``), and one that settles fast is on none exactly either
    (Megatron-Bridge's GB200 Llama 3.1 405B, pp 16 v 4: 112.024 ms a micro-batch from m = 16
    to 32, then 112.062, 112.071, 112.075, 112.077). Over blocking p2p every stage must keep
    the line's pace at m₃ too (:func:`_in_step`): a stage with slack turns the step onto
    another line later. m₁: 1; pp for the interleaved schedule (m must be a multiple of pp);
    with stages of unequal layer counts (an uneven split) pp, where the first micro-batches
    fill the pipeline at the speed of every stage and only later at the slowest one's, and
    with v > 1 chunks per rank (v + 1)·pp: rank 0's interleaved warm-up is
    2(p − 1) + (v − 1)·p = (v + 1)·p − 2 forwards (``schedules.generators``; three splits with
    unequal chunks are affine from 3·p at v = 2 and at v = 3, ``tests/test_uneven_stages.py``);
    with blocking p2p (runtime ``p2p: blocking``: each send waits for its receive) pp, whose
    steady state starts about m = pp − 1 (a nanotron toy at pp 4 grows 11.714 ms from m = 1 to
    2, then 11.783, then 11.789 from m = 3 on); 2·pp for a runtime whose interleaved order
    differs at m = pp (``interleaved_all_warmup_at_pp``: every forward first). An explicit
    micro-batch group (``parallelism.microbatch_group_size``) is simulated whole. Before
    2026-12-07 the line was taken from m₁ and m₂ alone, from m₁ = 1 under blocking p2p: that
    LoRA record's tokens/s 7.6 % above its full simulation's."""
    sc = _time_only(sc)
    step = resolve(sc)
    m, m1 = step.microbatches, _line_start(sc, step)
    if not m1:
        return simulate_scenario(sc).metrics.step_time_s
    m2, m3 = 2 * m1, 3 * m1
    t1, t2 = (simulate_scenario(_with_microbatches(sc, k)).metrics.step_time_s for k in (m1, m2))
    third = simulate_scenario(_with_microbatches(sc, m3))
    t3 = third.metrics.step_time_s
    paced = not _blocking_p2p(sc, step) or _in_step(third.timeline, m3, m1, t3 - t2)
    if abs((t3 - t2) - (t2 - t1)) > AFFINE_TOLERANCE_S or not paced:
        return simulate_scenario(sc).metrics.step_time_s  # not on a line: simulated whole
    return t1 + (m - m1) * (t2 - t1) / (m2 - m1)


def _line_start(sc: Scenario, step: ResolvedStep) -> int:
    """m₁ of :func:`predicted_step_time`'s line, or 0 where the step is simulated whole: a
    schedule not affine in m, an explicit micro-batch group other than pp
    (``ResolvedStep.microbatch_group``: it fixes which m are valid orders), or a step of no
    more micro-batches than the line's three simulations play, m₁ + 2·m₁ + 3·m₁ (the whole
    step is then the exact answer for no more work)."""
    m1 = step.traits.affine_from(step.pp)
    if len({step.rank_layers(r) for r in range(step.pp)}) > 1:
        m1 = max(m1, step.pp * (step.v + 1 if step.v > 1 else 1))
    if _blocking_p2p(sc, step):
        m1 = max(m1, step.pp)
    if m1 == step.pp and all_warmup_order(sc.runtime.interleaved_all_warmup_at_pp,
                                          step.schedule_name, step.v):  # fmt: skip
        m1 = 2 * step.pp
    if (step.microbatches <= LINE_MICROBATCHES * m1 or not step.traits.affine_in_m
            or step.microbatch_group):  # fmt: skip
        return 0
    return m1


def _blocking_p2p(sc: Scenario, step: ResolvedStep) -> bool:
    """Does the pipeline's p2p block (runtime ``p2p: blocking``: each send waits for its
    receive)?"""
    return step.pp > 1 and sc.runtime.p2p == "blocking"


def _in_step(tl: Timeline, m: int, lag: int, rise_s: float) -> bool:
    """Does every rank's pipeline stage start its forwards at the pace of the line by the end
    of a step of ``m`` micro-batches: forward m − 1 ``lag`` micro-batches after forward
    m − 1 − lag, by the line's rise over ``lag`` micro-batches (``rise_s``)? A stage with slack
    runs faster than the slowest one until its slack is spent: the step's time is then the
    largest of one line per stage and turns onto the slowest stage's slope later (nanotron's
    8B dp 8 tp 1 pp 2: its last stage starts a forward every 852.0 ms for 18 micro-batches,
    its first every 876.0; the line through m = 2, 4, 6 was 1.1 % short at m = 32). Checked
    under blocking p2p only, where m₁ = pp puts forward m − 1 in the steady state: 6 of
    validate's nanotron steps turned so (1.0-3.5 % short), no step over asynchronous p2p (its
    ~250 other lines within 18 ns of the full simulation; checked there too, 50 steps more
    are simulated whole, their forwards still in the warm-up at m₃, for no change: validate
    81 -> 101 s here; 2026-12-07)."""
    starts: dict[tuple[int, int | None, int], int] = {}
    for s in tl.spans:
        if s.kind == "F" and s.microbatch in (m - 1, m - 1 - lag):
            key = (s.rank, s.stage, s.microbatch)
            starts[key] = min(starts.get(key, s.start_ns), s.start_ns)
    return all(abs(t - starts[(r, st, m - 1 - lag)] - 1e9 * rise_s) <= 1e9 * AFFINE_TOLERANCE_S
               for (r, st, mb), t in starts.items()
               if mb == m - 1 and (r, st, m - 1 - lag) in starts)  # fmt: skip
