"""What would make a scenario fit: the cheapest changes that bring every GPU under its memory,
found with the memory model (issue 15, item 5). ``simtrain memory`` and ``simtrain run`` print
them under the "does not fit" verdict.

**The changes.** Each keeps what is trained -- the model, the global batch, the precision and the
optimizer -- and changes only how the step is executed. Each is a list of ``--set`` overrides,
applied after the user's own (:func:`simtrain.spec.scenario.load_scenario`, the ``--set`` path:
every layout check runs, and a change the scenario rejects is skipped), then checked with
:func:`simtrain.costs.memory.estimate_memory`. By family, in the order that breaks ties:

- ``micro_batch``: a smaller micro-batch (each divisor of it), more micro-batches per step;
- ``microbatch_group``: an interleaved micro-batch group above pp down to the smallest the
  micro-batches allow (fewer warm-up forwards in flight, the same bubble);
- ``zero``: ZeRO stage 1, 2 or 3 above the current one, when dp > 1 (and ``dp_mode: ddp``);
- ``master_remainder``: the fp32 master weights kept as their low 16 bits beside the bf16
  weights (``training.master_weights: remainder``, Megatron-Core's precision-aware optimizer,
  Apex DistributedFusedAdam), when the precision keeps an fp32 master of bf16 weights: lossless
  (the bf16 weight and the remainder are the fp32 value), 2 B a parameter of the shard less;
- ``recompute``: selective (the attention core), then full activation checkpointing;
- ``sequence_parallel``: Megatron sequence parallelism, when tp > 1;
- ``offload``: optimizer states and master weights in CPU memory (CPU Adam), when the node's
  host memory holds them (``host_memory_gib`` of the profile over the node's GPUs);
- ``pp`` / ``tp``: 2x or 4x the pipeline stages / tensor-parallel degree on the same GPUs,
  taken from data parallelism (dp divisible; tp within a node; layers and heads must divide);
- ``cp``: 2x, 4x or 8x the context-parallel degree on the same GPUs, taken from data
  parallelism, where the sequence leaves each GPU ``costs.cp.MIN_CP_TOKENS`` tokens or more;
- ``pp_gpus`` / ``tp_gpus``: 2x or 4x the pipeline stages / tensor-parallel degree on 2x or 4x
  the GPUs (whole nodes of the profile's ``gpus_per_node``; tp within a node).

When no single change fits, two changes of different families are tried together (the second
chosen on the scenario the first gives), with at most :data:`MAX_GPU_FACTOR` x the GPUs.

**Cheapest.** The cost of a change is the step's GPU time, estimated step time x GPUs, over the
scenario's own: with the global batch kept, that is the cost per token (x1.00: free; x1.30: 30 %
more GPU-hours per token, whether from a slower step or from more GPUs). The step time is the
planner's closed form (:func:`simtrain.apps.plan.estimate.closed_form_step_s`: the library's own
per-chunk costs, pipeline bubble, exposed data-parallel communication and the optimizer step,
offload's PCIe and CPU Adam included; within a few % of the simulated step on the shipped
scenarios, and instant, where a simulation per candidate can take seconds). A smaller
micro-batch at pp = 1 does the same FLOPs in smaller GEMMs: x1.00 on a profile without a GEMM
shape term (``efficiency.gemm_edge_elements``), a little more with one. Ties go to the family order
above, then to the smaller change. Per family only the cheapest change that fits is listed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from simtrain.apps.plan.estimate import closed_form_step_s
from simtrain.costs.cp import MIN_CP_TOKENS
from simtrain.costs.memory import MemoryReport, estimate_memory
from simtrain.errors import SimtrainError
from simtrain.schedules.generators import rank_warmup, smallest_group
from simtrain.schedules.registry import runs_groups
from simtrain.spec.scenario import Scenario, load_scenario, microbatches, runtime_off_overrides
from simtrain.units import GIB

MAX_GPU_FACTOR = 4  # a suggestion uses at most this many times the scenario's GPUs
MAX_LISTED = 6  # fixes printed; the rest are counted


@dataclass(frozen=True, slots=True)
class Change:
    """One candidate change: its family, a sentence for people and its ``--set`` overrides."""

    family: str
    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Fix:
    """A change (or two) evaluated: the memory model's peak on the worst GPU and the cost."""

    changes: tuple[Change, ...]
    peak_memory_bytes: int
    capacity_bytes: int  # of the stage with the peak
    shortfall_bytes: int  # max over stages of peak - capacity (<= 0: fits)
    gpus: int
    step_s: float  # closed-form estimate
    cost: float  # step_s x gpus over the scenario's own

    @property
    def fits(self) -> bool:
        return self.shortfall_bytes <= 0

    @property
    def label(self) -> str:
        return " + ".join(c.label for c in self.changes)

    @property
    def overrides(self) -> tuple[str, ...]:
        return tuple(o for c in self.changes for o in c.overrides)


@dataclass(frozen=True, slots=True)
class FitAdvice:
    """``fixes``: what fits, cheapest first (empty when the scenario fits or nothing does);
    ``closest``: when nothing fits, the evaluated change with the smallest shortfall."""

    fits: bool
    shortfall_bytes: int
    fixes: tuple[Fix, ...] = ()
    closest: Fix | None = None
    pairs: bool = False  # the fixes combine two changes (no single change fits)


# --------------------------------------------------------------------------- candidates


MAX_MICRO_BATCH_OPTIONS = 12  # more divisors than this are thinned to a geometric ladder


def _divisors_below(n: int) -> list[int]:
    """The divisors of ``n`` below it, largest first; beyond :data:`MAX_MICRO_BATCH_OPTIONS`,
    only those at least 1.5x apart (and 1)."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    divs = sorted({*small, *(n // d for d in small)} - {n}, reverse=True)
    if len(divs) <= MAX_MICRO_BATCH_OPTIONS:
        return divs
    kept = [divs[0]]
    for d in divs[1:]:
        if 1.5 * d <= kept[-1] or d == 1:
            kept.append(d)
    return kept


def _micro_batch(sc: Scenario) -> list[Change]:
    t, p = sc.training, sc.parallelism
    out = []
    for mb in _divisors_below(t.micro_batch):
        m = t.global_batch // (mb * p.dp)
        out.append(Change("micro_batch", f"micro-batch {t.micro_batch} -> {mb} ({m} micro-batches "
                          f"per step, global batch {t.global_batch} kept)",
                          (f"training.micro_batch={mb}",)))  # fmt: skip
    return out


def _zero(sc: Scenario) -> list[Change]:
    p = sc.parallelism
    if p.dp == 1:
        return []
    mode = ("parallelism.dp_mode=ddp",) if p.dp_mode != "ddp" else ()
    # (with the runtime options ZeRO-s has nothing for turned off: ZeRO-3 has no post-step
    # parameter all-gather to overlap)
    return [Change("zero", f"ZeRO-{s} over dp {p.dp}", (f"parallelism.zero_stage={s}", *mode,
                   *runtime_off_overrides(sc, p.tp, s, p.ep))) for s in range(p.zero_stage + 1, 4)]  # fmt: skip


def _master_remainder(sc: Scenario) -> list[Change]:
    # (where the scenario refuses it, an fp16 or no-master precision, DeepSpeed, ZeRO-3, the
    # evaluation skips it)
    if sc.training.master_weights != "precision":
        return []
    return [Change("master_remainder", "fp32 master weights kept as 16-bit remainders beside the "
                   "bf16 weights (lossless; Megatron-Core's precision-aware optimizer)",
                   ("training.master_weights=remainder",))]  # fmt: skip


def _recompute(sc: Scenario) -> list[Change]:
    labels = {"selective": "recompute selective (the attention core)",
              "full": "recompute full (activation checkpointing)"}  # fmt: skip
    order = ("none", "selective", "full")
    # selective_op keeps more than selective and less than full: full is the next step.
    rc = "selective" if sc.training.recompute == "selective_op" else sc.training.recompute
    now = order.index(rc) if rc in order else len(order)
    # a module list belongs to selective: the other recomputes drop it (null: the default)
    clear = ("training.recompute_modules=null",) if sc.training.recompute_modules else ()
    return [Change("recompute", labels[r], (f"training.recompute={r}", *clear))
            for r in order[now + 1 :]]  # fmt: skip


def _sequence_parallel(sc: Scenario) -> list[Change]:
    p = sc.parallelism
    if p.tp == 1 or p.sequence_parallel:
        return []
    return [Change("sequence_parallel", f"sequence parallelism over tp {p.tp}",
                   ("parallelism.sequence_parallel=true",))]  # fmt: skip


def _offload(sc: Scenario) -> list[Change]:
    if sc.training.offload.optimizer:
        return []
    # (a precision without an fp32 master, fp32 itself, offloads the states alone)
    what = ("optimizer states and master weights" if sc.training.precision_spec.master
            else "optimizer states")  # fmt: skip
    return [Change("offload", f"{what} offloaded to CPU (CPU Adam)",
                   ("training.offload.optimizer=true",))]  # fmt: skip


def _microbatch_group(sc: Scenario) -> list[Change]:
    """An interleaved micro-batch group above pp (``parallelism.microbatch_group_size``) down to
    the smallest that still takes the scenario's micro-batches (Megatron-Core's rule,
    ``schedules.generators.check_group``): each rank's warm-up, 2(p − r − 1) + (v − 1)·N
    forwards (one more under combined 1F1B) at most v·m (``generators.rank_warmup``), holds up
    to (v − 1)·(N − N') fewer chunk micro-batches (the label gives rank 0's); the bubble is the
    same."""
    p = sc.parallelism
    n, m = p.microbatch_group_size, sc.num_microbatches
    k = smallest_group(p.pp, m) or p.pp
    if not n or k >= n:
        return []
    fewer = (rank_warmup(p.schedule, 0, p.pp, m, p.virtual_stages, n)
             - rank_warmup(p.schedule, 0, p.pp, m, p.virtual_stages, k))  # fmt: skip
    return [Change("microbatch_group", f"micro-batch group {n} -> {k} ({fewer} fewer chunk "
                   "micro-batches in rank 0's warm-up)",
                   (f"parallelism.microbatch_group_size={k}",))]  # fmt: skip


def _group_reset(sc: Scenario, pp: int, dp: int) -> tuple[str, ...]:
    """The micro-batch group of the scenario's interleaved schedule at a new pp and dp: the
    smallest Megatron-Core takes for the new micro-batch count (``schedules.generators.
    smallest_group``, as the planner's ``layout_group`` picks it); 0 (the default, pp) where
    the new pp divides it and the scenario had set a group; nothing where the default works
    and none was set, or the schedule runs no groups (``registry.runs_groups``)."""
    p = sc.parallelism
    if not runs_groups(p.schedule, pp, p.virtual_stages):
        return ()
    k = smallest_group(pp, microbatches(sc.training, replace(p, dp=dp)))
    if not k and not p.microbatch_group_size:
        return ()
    return (f"parallelism.microbatch_group_size={k}",)


def _from_dp(kind: str) -> Callable[[Scenario], list[Change]]:
    """pp or tp x2, x4 on the same GPUs, dp divided by as much."""

    def fn(sc: Scenario) -> list[Change]:
        p = sc.parallelism
        now = getattr(p, kind)
        out = []
        for k in (2, 4):
            if p.dp % k or (kind == "tp" and now * k > sc.cluster.gpus_per_node):
                continue
            reset = _group_reset(sc, now * k, p.dp // k) if kind == "pp" else ()
            out.append(Change(kind, f"{kind} {now} -> {now * k}, dp {p.dp} -> {p.dp // k} (same "
                              f"{p.gpus} GPUs)", (f"parallelism.{kind}={now * k}",
                                                  f"parallelism.dp={p.dp // k}", *reset)))  # fmt: skip
        return out

    return fn


def _cp_from_dp(sc: Scenario) -> list[Change]:
    """Context parallelism x2, x4 on the same GPUs, dp divided by as much, where the sequence
    splits into 2·cp chunks of at least ``costs.cp.MIN_CP_TOKENS`` tokens per GPU and the
    attention can run it (flash, no prefix or prompt tokens)."""
    p, t = sc.parallelism, sc.training
    if not sc.model.flash_attention or t.peft.method in ("prefix", "prompt"):
        return []
    if p.dp_mode != "ddp":
        return []
    out = []
    for k in (2, 4, 8):
        cp = p.cp * k
        if p.dp % k or t.seq_len % (2 * cp) or t.seq_len // cp < MIN_CP_TOKENS:
            continue
        out.append(Change("cp", f"cp {p.cp} -> {cp}, dp {p.dp} -> {p.dp // k} (same {p.gpus} "
                          f"GPUs)", (f"parallelism.cp={cp}", f"parallelism.dp={p.dp // k}")))  # fmt: skip
    return out


def _cluster(sc: Scenario, gpus: int) -> tuple[str, ...] | None:
    """``cluster`` overrides for ``gpus`` GPUs in whole nodes (None: they do not pack)."""
    per_node = sc.hardware.gpus_per_node
    if gpus <= per_node:
        return ("cluster.nodes=1", f"cluster.gpus_per_node={gpus}")
    for gpn in (per_node, sc.cluster.gpus_per_node):
        if gpus % gpn == 0:
            return (f"cluster.nodes={gpus // gpn}", f"cluster.gpus_per_node={gpn}")
    return None


def _more_gpus(kind: str) -> Callable[[Scenario], list[Change]]:
    """pp or tp x2, x4 on x2, x4 the GPUs, dp kept."""

    def fn(sc: Scenario) -> list[Change]:
        p = sc.parallelism
        now = getattr(p, kind)
        out = []
        for k in (2, 4):
            gpus = p.gpus * k
            cluster = _cluster(sc, gpus)
            if cluster is None or (kind == "tp" and now * k > sc.hardware.gpus_per_node):
                continue
            label = f"{kind} {now} -> {now * k} on {gpus} GPUs (+{gpus - p.gpus})"
            reset = _group_reset(sc, now * k, p.dp) if kind == "pp" else ()
            out.append(Change(f"{kind}_gpus", label,
                              (f"parallelism.{kind}={now * k}", *cluster, *reset)))  # fmt: skip
        return out

    return fn


#: The families in the order that breaks cost ties (module docstring).
FAMILIES: dict[str, Callable[[Scenario], list[Change]]] = {
    "micro_batch": _micro_batch,
    "microbatch_group": _microbatch_group,
    "zero": _zero,
    "master_remainder": _master_remainder,
    "recompute": _recompute,
    "sequence_parallel": _sequence_parallel,
    "offload": _offload,
    "pp": _from_dp("pp"),
    "tp": _from_dp("tp"),
    "cp": _cp_from_dp,
    "pp_gpus": _more_gpus("pp"),
    "tp_gpus": _more_gpus("tp"),
}


# --------------------------------------------------------------------------- evaluation


def _shortfall(rep: MemoryReport) -> int:
    return max(s.peak_memory_bytes - s.capacity_bytes for s in rep.stages)


def _host_fits(sc: Scenario, rep: MemoryReport) -> bool:
    """Offloaded states of every GPU of a node fit the node's host memory."""
    host = max(s.host_memory_bytes for s in rep.stages)
    return host * sc.cluster.gpus_per_node <= sc.hardware.host_memory_bytes


class _Evaluator:
    """Loads a change through the ``--set`` path and measures it; remembers the closest miss."""

    def __init__(self, path: str | Path, overrides: Sequence[str], base: Scenario) -> None:
        self.path, self.overrides = path, tuple(overrides)
        self.base_gpus = base.parallelism.gpus
        try:
            self.base_cost = closed_form_step_s(base, estimate_memory(base).stages) * self.base_gpus
        except SimtrainError:  # no estimate for this layout: every cost reads x1.00
            self.base_cost = 0.0
        self.closest: Fix | None = None

    def load(self, changes: Sequence[Change]) -> Scenario | None:
        extra = tuple(o for c in changes for o in c.overrides)
        try:
            return load_scenario(self.path, self.overrides + extra)
        except SimtrainError:  # the scenario rejects the change (layers do not divide, ...)
            return None

    def evaluate(self, changes: tuple[Change, ...]) -> tuple[Scenario, Fix] | None:
        sc = self.load(changes)
        if sc is None or sc.parallelism.gpus > MAX_GPU_FACTOR * self.base_gpus:
            return None
        try:
            rep = estimate_memory(sc)
            short = _shortfall(rep)
            if short <= 0 and not _host_fits(sc, rep):
                return None
            step_s = closed_form_step_s(sc, rep.stages) if short <= 0 else 0.0
        except SimtrainError:
            return None
        worst = max(rep.stages, key=lambda s: (s.peak_memory_bytes, -s.stage))
        gpus = sc.parallelism.gpus
        cost = step_s * gpus / self.base_cost if self.base_cost > 0 else 1.0
        fix = Fix(changes, rep.peak_memory_bytes, worst.capacity_bytes, short, gpus, step_s, cost)
        if short > 0 and (self.closest is None or short < self.closest.shortfall_bytes):
            self.closest = fix
        return sc, fix


def _sort_key(fix: Fix, order: dict[tuple[str, ...], int]) -> tuple[float, int]:
    return (round(fix.cost, 3), order[tuple(c.family for c in fix.changes)])


def fit_changes(path: str | Path, overrides: Sequence[str] = ()) -> FitAdvice:
    """The cheapest changes that make the scenario at ``path`` (with ``overrides``) fit, one
    per family, or per pair of families when no single change fits (module docstring); none
    when it fits."""
    base = load_scenario(path, tuple(overrides))
    rep = estimate_memory(base)
    if rep.fits:
        return FitAdvice(True, _shortfall(rep))
    ev = _Evaluator(path, overrides, base)
    names = list(FAMILIES)
    order = {(f,): i for i, f in enumerate(names)}
    singles: dict[str, Fix] = {}
    for family in names:
        for change in FAMILIES[family](base):  # smaller change first: a tie keeps it
            got = ev.evaluate((change,))
            if got and got[1].fits and (family not in singles or _cheaper(got[1], singles[family])):
                singles[family] = got[1]
    if singles:
        fixes = sorted(singles.values(), key=lambda f: _sort_key(f, order))
        return FitAdvice(False, _shortfall(rep), tuple(fixes))
    fixes = _pairs(ev, base, names, order)
    return FitAdvice(False, _shortfall(rep), fixes, None if fixes else ev.closest,
                     pairs=bool(fixes))  # fmt: skip


def _cheaper(a: Fix, b: Fix) -> bool:
    return round(a.cost, 3) < round(b.cost, 3)


def _largest(ev: _Evaluator, before: tuple[Change, ...], family: str,
             sc: Scenario) -> tuple[Scenario, Fix] | None:  # fmt: skip
    """The largest change of ``family`` (its last that the scenario accepts) after ``before``."""
    for c in reversed(FAMILIES[family](sc)):
        got = ev.evaluate((*before, c))
        if got is not None:
            return got
    return None


def _pairs(ev: _Evaluator, base: Scenario, names: list[str],
           order: dict[tuple[str, ...], int]) -> tuple[Fix, ...]:  # fmt: skip
    """Two changes of different families. A pair of families is searched only if the largest
    change of each (a family lists its changes from the smallest to the largest) fits together;
    then every pair of their changes is tried and the cheapest that fits kept."""
    best: dict[tuple[str, str], Fix] = {}
    for i, fa in enumerate(names):
        first = _largest(ev, (), fa, base)
        if first is None:
            continue
        for j, fb in enumerate(names[i + 1 :], start=i + 1):
            both = _largest(ev, first[1].changes, fb, first[0])
            if both is None or not both[1].fits:
                continue
            order[(fa, fb)] = len(names) * (i + 1) + j
            for a in FAMILIES[fa](base):
                got_a = ev.evaluate((a,))
                for b in FAMILIES[fb](got_a[0]) if got_a else ():
                    got = ev.evaluate((a, b))
                    if got and got[1].fits and ((fa, fb) not in best
                                                or _cheaper(got[1], best[(fa, fb)])):  # fmt: skip
                        best[(fa, fb)] = got[1]
    return tuple(sorted(best.values(), key=lambda f: _sort_key(f, order)))


# --------------------------------------------------------------------------- text


def _gib(n: float) -> str:
    return f"{n / GIB:,.2f}"


def advice_text(advice: FitAdvice) -> str:
    """The lines printed under the "does not fit" verdict ("" when it fits)."""
    if advice.fits:
        return ""
    if not advice.fixes:
        text = ("no change makes it fit, alone or two together (smaller micro-batch, ZeRO, "
                "recompute, sequence parallelism, optimizer offload, pp or tp x2/x4 on the same "
                f"or up to {MAX_GPU_FACTOR}x the GPUs)")  # fmt: skip
        c = advice.closest
        if c is not None:
            text += (f"; the closest, {c.label}, is still short by {_gib(c.shortfall_bytes)} GiB "
                     f"(peak {_gib(c.peak_memory_bytes)} GiB): --set "
                     + " --set ".join(c.overrides))  # fmt: skip
        return text
    what = "two changes together" if advice.pairs else "changes"
    lines = [f"{what} that make it fit, cheapest first (same model, global batch, precision and "
             "optimizer;",
             "cost = estimated step time x GPUs, against this scenario's):"]  # fmt: skip
    for i, f in enumerate(advice.fixes[:MAX_LISTED], start=1):
        lines.append(f"  {i}. {f.label}")
        lines.append(f"     peak {_gib(f.peak_memory_bytes)} GiB of {_gib(f.capacity_bytes)}, "
                     f"cost x{f.cost:.2f}: --set " + " --set ".join(f.overrides))  # fmt: skip
    if len(advice.fixes) > MAX_LISTED:
        lines.append(f"  ... and {len(advice.fixes) - MAX_LISTED} costlier")
    return "\n".join(lines)


__all__ = [
    "FAMILIES",
    "MAX_GPU_FACTOR",
    "MAX_LISTED",
    "Change",
    "Fix",
    "FitAdvice",
    "advice_text",
    "fit_changes",
]
