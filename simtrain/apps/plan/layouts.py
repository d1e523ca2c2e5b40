"""The candidate layouts: what the planner searches (:func:`enumerate_layouts`) and the
scenario mapping of each (:func:`scenario_data`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from simtrain.apps.plan.file import NODE_REPLICAS, Plan
from simtrain.costs.cp import MIN_CP_TOKENS
from simtrain.errors import ConfigError
from simtrain.schedules.generators import smallest_group
from simtrain.schedules.registry import runs_groups
from simtrain.spec.scenario import (
    TrainingSpec,
    inapplicable_runtime_options,
    parse_scenario,
    unused_runtime_options,
    unused_settings,
)

#: Micro-batches searched when ``fixed.micro_batch`` is not given: each of 1-8 that divides the
#: replica's share of the global batch (3 and 6 too: a batch of 12 per replica fits at 6).
DEFAULT_MICRO_BATCHES = (1, 2, 3, 4, 5, 6, 7, 8)
DEFAULT_ZERO_STAGES = (0, 1, 2, 3)
DEFAULT_RECOMPUTE = ("none", "selective", "full")
DEFAULT_SCHEDULES = ("1f1b", "interleaved", "zb_h1", "gpipe")
#: A model with experts also tries the schedules that hide the expert all-to-alls behind
#: another micro-batch's compute (Megatron-Core's combined 1F1B, DualPipeV, DualPipe; ScheduleTraits
#: overlapped_fb); layouts they cannot run are rejected with check_layout's reason.
MOE_SCHEDULES = ("combined_1f1b", "dualpipe_v", "dualpipe")
#: Schedules whose virtual_stages the planner searches.
VIRTUAL_STAGE_SCHEDULES = ("interleaved", "combined_1f1b")
DEFAULT_VIRTUAL_STAGES = 2
#: Context-parallel degrees searched when ``fixed.cp`` is not given: those that split the
#: sequence into 2·cp chunks (causal load balancing) and leave each GPU at least
#: ``costs.cp.MIN_CP_TOKENS`` tokens of it.
DEFAULT_CP = (1, 2, 4, 8, 16)
#: Candidate layouts of one plan: 500,000, 2.9x plans/gpt3_175b.yaml (172,200), the largest
#: shipped plan; screening takes ~0.1 ms a layout rejected by a layout check, ~1 ms one that
#: is estimated (a minute or so for the largest, on the 2-core dev machine).
MAX_LAYOUTS = 500_000
#: (global batch, GPU count, tp, pp) combinations examined: 4,194,304 (2^22, a few seconds);
#: plans/gpt3_175b.yaml examines ~9,300.
MAX_COMBINATIONS = 2**22


class Layout(NamedTuple):
    """One candidate, in sort order (rankings break ties on this tuple)."""

    hardware: str
    gpus: int
    tp: int
    pp: int
    dp: int
    zero_stage: int
    micro_batch: int
    recompute: str
    schedule: str
    virtual_stages: int
    global_batch: int
    sequence_parallel: bool = False
    cp: int = 1
    ep: int = 1  # expert parallelism (models with experts): a divisor of dp (with whole
    # experts, of tp x dp x cp) and of the experts
    precision: str = ""  # fixed.precision's choice; "": the plan's training.precision
    # hybrid sharding (parallelism.zero_replicas): ZeRO-3 within one node's share of the
    # dp x cp group, a copy per node (FSDP's HYBRID_SHARD); 1: sharded over all of it
    zero_replicas: int = 1


def scenario_data(plan: Plan, layout: Layout, name: str | None = None) -> dict[str, Any]:
    """The scenario mapping of a layout, exactly what a scenario file would hold."""
    gpn = min(_gpus_per_node(plan, layout.hardware), layout.gpus)
    par: dict[str, Any] = {
        **plan.parallelism,
        "dp": layout.dp, "tp": layout.tp, "pp": layout.pp, "schedule": layout.schedule,
        "virtual_stages": layout.virtual_stages, "zero_stage": layout.zero_stage,
    }  # fmt: skip
    if layout.sequence_parallel:
        par["sequence_parallel"] = True
    if layout.cp > 1:
        par["cp"] = layout.cp
    if layout.ep > 1:
        par["ep"] = layout.ep
    if layout.zero_replicas > 1:
        par["zero_replicas"] = layout.zero_replicas
    group = layout_group(layout)
    if group:
        par["microbatch_group_size"] = group
    data: dict[str, Any] = {
        "name": name or plan.name,
        "model": dict(plan.model),
        "hardware": layout.hardware,
        "cluster": {"nodes": -(-layout.gpus // gpn), "gpus_per_node": gpn},
        "training": {
            **plan.training,
            "global_batch": layout.global_batch,
            "micro_batch": layout.micro_batch,
            "recompute": layout.recompute,
            **({"precision": layout.precision} if layout.precision else {}),
        },
        "parallelism": par,
    }
    if layout.recompute != "selective":
        # the plan's recompute_modules are its selective layouts' (Megatron's
        # --recompute-modules with --recompute-granularity selective)
        data["training"].pop("recompute_modules", None)
    if plan.runtime is not None:
        precision = data["training"].get("precision", TrainingSpec().precision)
        data["runtime"] = _layout_runtime(plan.runtime, layout, precision)
        data["runtime"] = _without_unused(plan, data)
    return data


def _without_unused(plan: Plan, data: dict[str, Any]) -> Any:
    """``data``'s runtime without the options its scenario has nothing for
    (``spec.scenario.unused_runtime_options``: a scenario file setting them is an error, so a
    plan's best.yaml must not; the planner had written cp_attention a2a into a cp-1 layout's,
    which ``simtrain run`` then refused: a review). A layout that does not parse keeps it (its
    caller meets the same error)."""
    rt = data["runtime"]
    if not isinstance(rt, dict):
        return rt
    try:
        sc = parse_scenario(data, plan.file, Path(plan.base_dir))
    except ConfigError:
        return rt
    drop = unused_settings(unused_runtime_options(sc), rt, sc.runtime)
    return {k: v for k, v in rt.items() if k not in drop}


def layout_group(layout: Layout) -> int:
    """The micro-batch group of an interleaved layout whose micro-batches its pp does not
    divide: the smallest Megatron-Core takes (``schedules.generators.smallest_group``), as a
    user would pass --microbatch-group-size-per-virtual-pipeline-stage; 0 otherwise (the
    default, pp)."""
    if not runs_groups(layout.schedule, layout.pp, layout.virtual_stages):
        return 0
    per_replica = layout.global_batch // layout.dp
    if per_replica % layout.micro_batch:
        return 0
    return smallest_group(layout.pp, per_replica // layout.micro_batch)


def _layout_runtime(runtime: Any, layout: Layout, precision: str) -> Any:
    """The plan's ``runtime:`` without the options this layout has nothing for (a scenario file
    setting them is an error: ``spec.scenario.inapplicable_runtime_options``), and without
    per-layer CUDA graphs under full recompute, which Megatron captures only in a
    whole-iteration graph (``spec.scenario`` checks a scenario file's)."""
    if not isinstance(runtime, dict):
        return runtime
    drop = set(inapplicable_runtime_options(layout.tp, layout.zero_stage, layout.ep, precision))
    if layout.recompute == "full":
        drop.add("cuda_graph_scope")
    return {k: v for k, v in runtime.items() if k not in drop}


def _gpus_per_node(plan: Plan, hardware: str) -> int:
    for h in plan.hardware:
        if h.name == hardware:
            return h.gpus_per_node
    raise KeyError(hardware)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def gpu_counts(plan: Plan, gpus_per_node: int) -> list[int]:
    """GPU counts to try: the explicit list, or every count in [min, max] (and at most
    ``constraints.max_gpus``) that is whole nodes, or fits in one node."""
    hi = plan.gpus_max
    if plan.constraints.max_gpus is not None:
        hi = min(hi, plan.constraints.max_gpus)
    if plan.gpu_counts is not None:
        return [g for g in plan.gpu_counts if g <= hi]
    return [g for g in range(plan.gpus_min, hi + 1) if g <= gpus_per_node or g % gpus_per_node == 0]


def cp_degrees(plan: Plan) -> tuple[int, ...]:
    """``fixed.cp``, or the :data:`DEFAULT_CP` degrees the plan's sequence length allows."""
    if "cp" in plan.fixed:
        return tuple(plan.fixed["cp"])
    seq = int(plan.training.get("seq_len", 1024))
    return tuple(c for c in DEFAULT_CP
                 if c == 1 or (seq % (2 * c) == 0 and seq // c >= MIN_CP_TOKENS))  # fmt: skip


def enumerate_layouts(plan: Plan, model_layers: int, heads: int,
                      experts: int = 0) -> list[Layout]:  # fmt: skip
    """Every candidate layout (module docstring). A (hardware, GPUs, tp, pp) whose dp does not
    divide the global batch gives one layout, for check_layout to reject with its reason;
    otherwise micro-batches not dividing the per-replica batch are skipped (unless fixed). A
    model with ``experts`` also searches ep over the divisors of both dp and the experts
    (Megatron-Core's rule, spec.moe_layout), with sequence parallelism where tp > 1."""
    fx = plan.fixed
    out: list[Layout] = []
    sp_opts = fx.get("sequence_parallel", (False,))
    grids: list[Any] = []
    for hw in plan.hardware:
        gpn = hw.gpus_per_node
        tps = fx.get("tp") or tuple(d for d in _divisors(heads) if d <= gpn)
        pps = fx.get("pp") or tuple(_divisors(model_layers))
        grids.append((hw, gpu_counts(plan, gpn), tps, pps))
    combinations = sum(len(plan.global_batches) * len(c) * len(t) * len(p) for _, c, t, p in grids)
    if combinations > MAX_COMBINATIONS:
        raise _too_large(plan, f"{combinations:,} (global batch, GPUs, tp, pp) combinations: at "
                         f"most {MAX_COMBINATIONS:,}")  # fmt: skip
    groups = list(_groups(plan, grids))
    total = sum(_group_size(plan, gb, pp, dp, sp_opts, experts, tp, cp,
                            _gpus_per_node(plan, hw_name))
                for hw_name, gb, _, tp, pp, dp, cp in groups)  # fmt: skip
    if total > MAX_LAYOUTS:  # counted first: building a million tuples alone takes seconds
        raise _too_large(plan, f"{total:,} candidate layouts: at most {MAX_LAYOUTS:,}")
    for hw_name, gb, g, tp, pp, dp, cp in groups:
        out.extend(_group_layouts(plan, hw_name, gb, g, tp, pp, dp, sp_opts, cp, experts))
    return out


def _groups(plan: Plan, grids: list[Any]) -> Iterator[tuple[str, int, int, int, int, int, int]]:
    """(hardware, global batch, GPUs, tp, pp, dp, cp) of each group of layouts, in sort order."""
    fx = plan.fixed
    cps = cp_degrees(plan)
    for hw, counts, tps, pps in grids:
        for gb in plan.global_batches:
            for g in counts:
                for tp in tps:
                    for pp in pps:
                        for cp in cps:
                            if g % (tp * pp * cp):
                                continue
                            dp = g // (tp * pp * cp)
                            if "dp" in fx and dp not in fx["dp"]:
                                continue
                            yield hw.name, gb, g, tp, pp, dp, cp


def _too_large(plan: Plan, what: str) -> ConfigError:
    return ConfigError(plan.file, "gpus", f"the search has {what}: narrow gpus or "
                       "training.global_batch, or fix choices under fixed:")  # fmt: skip


def _group_options(plan: Plan, gb: int, pp: int, dp: int,
                   experts: int = 0) -> tuple[tuple[Any, ...], ...] | None:  # fmt: skip
    """(schedules, virtual stages, micro-batches, ZeRO stages, recompute, precisions) of a
    group, or None when dp does not divide the global batch (then one layout carries
    check_layout's reason). A model with ``experts`` adds :data:`MOE_SCHEDULES` to the
    default schedules."""
    fx = plan.fixed
    rcs = fx.get("recompute", DEFAULT_RECOMPUTE)
    mbs_all = fx.get("micro_batch", DEFAULT_MICRO_BATCHES)
    if gb % dp:
        return None
    per_replica = gb // dp
    mbs = mbs_all if "micro_batch" in fx else tuple(b for b in mbs_all if per_replica % b == 0)
    zeros = fx.get("zero_stage", DEFAULT_ZERO_STAGES if dp > 1 else (0,))
    if dp == 1 and "zero_stage" not in fx:
        zeros = (0,)
    # With pp = 1 every schedule is plain gradient accumulation (the resolved step's schedule_name).
    default = DEFAULT_SCHEDULES + (MOE_SCHEDULES if experts else ())
    scheds = fx.get("schedule", default) if pp > 1 else ("1f1b",)
    vs = fx.get("virtual_stages", (DEFAULT_VIRTUAL_STAGES,))
    precs = fx.get("precision", ("",))
    return scheds, vs, mbs, zeros, rcs, precs


def _ep_sp_options(plan: Plan, tp: int, dp: int, sp_opts: tuple[Any, ...],
                   experts: int, cp: int = 1) -> list[tuple[int, bool]]:  # fmt: skip
    """(ep, sequence_parallel) pairs of a group: ep 1 with every sp option; with experts, each
    ep > 1 dividing dp and the experts (or the fixed ones), with sequence parallelism when
    tp > 1 (Megatron-Core needs it: spec.moe_layout). With whole experts
    (``parallelism.expert_tp: 1``) the EP group is folded over tp x dp x cp: each divisor of
    that and of the experts, and no ep 1 at tp > 1 (whole experts replicated over TP are not
    modelled)."""
    whole = plan.parallelism.get("expert_tp") == 1
    fold = tp * dp * cp if whole else dp
    eps = plan.fixed.get("ep") or tuple(d for d in _divisors(fold) if experts and not experts % d
                                        and not (whole and tp > 1 and d == 1))  # fmt: skip
    out = []
    for ep in eps or (1,):
        for sp in sp_opts:
            if ep > 1 and tp > 1 and not sp and "ep" not in plan.fixed:
                continue
            out.append((ep, sp))
        if ep > 1 and tp > 1 and True not in sp_opts and "ep" not in plan.fixed:
            out.append((ep, True))
    return out


def zero_options(plan: Plan, zeros: tuple[int, ...], tp: int, dp: int, cp: int, gpn: int,
                 experts: int = 0) -> list[tuple[int, int]]:  # fmt: skip
    """(ZeRO stage, replicas) of a group: every stage unsharded into replicas, and ZeRO-3 also
    hybrid (FSDP's HYBRID_SHARD: a group per node, the node's gpn / tp GPUs of the dp x cp
    group, one copy per node) where that group spans more than one node. ``fixed.
    zero_replicas`` lists the copies instead: a number at any ZeRO stage, "node" ZeRO-3's per
    node (the default is (1, "node")). By default not for models with experts or with the
    states offloaded (spec.scenario.check_zero_replicas); a fixed number is kept for them, so
    that the layout check rejects it with its reason."""
    fixed = "zero_replicas" in plan.fixed
    asked = plan.fixed.get("zero_replicas", (1, NODE_REPLICAS))
    group = dp * cp
    per_node = gpn // tp if gpn % tp == 0 else 0
    node = group // per_node if per_node >= 2 and group % per_node == 0 else 1
    off = plan.training.get("offload") or {}
    hybrid_ok = not experts and not (off.get("optimizer") or off.get("parameters"))
    out = []
    for z in zeros:
        for r in asked:
            if r == 1 or (r == NODE_REPLICAS and (z != 3 or node == 1)):
                out.append((z, 1))
            elif r == NODE_REPLICAS and (hybrid_ok or fixed):
                out.append((z, node))
            elif r != NODE_REPLICAS and z and (hybrid_ok or fixed):
                out.append((z, r))
    return list(dict.fromkeys(out))


def _group_size(plan: Plan, gb: int, pp: int, dp: int, sp_opts: tuple[Any, ...],
                experts: int, tp: int, cp: int, gpn: int) -> int:  # fmt: skip
    opts = _group_options(plan, gb, pp, dp, experts)
    if opts is None:
        return 1
    scheds, vs, mbs, zeros, rcs, precs = opts
    per_sched = (len(mbs) * len(zero_options(plan, zeros, tp, dp, cp, gpn, experts))
                 * len(rcs) * len(precs)
                 * len(_ep_sp_options(plan, tp, dp, sp_opts, experts, cp)))  # fmt: skip
    return sum(per_sched * (len(vs) if sched in VIRTUAL_STAGE_SCHEDULES else 1)
               for sched in scheds)  # fmt: skip


def _group_layouts(plan: Plan, hw: str, gb: int, g: int, tp: int, pp: int, dp: int,
                   sp_opts: tuple[Any, ...], cp: int = 1,
                   experts: int = 0) -> list[Layout]:  # fmt: skip
    opts = _group_options(plan, gb, pp, dp, experts)
    if opts is None:  # no micro-batch can work: one layout carries check_layout's reason
        fx = plan.fixed
        mb0 = fx.get("micro_batch", DEFAULT_MICRO_BATCHES)[0]
        rc0 = fx.get("recompute", DEFAULT_RECOMPUTE)[0]
        return [Layout(hw, g, tp, pp, dp, 0, mb0, rc0, "1f1b", 1, gb, sp_opts[0], cp)]
    scheds, vs, mbs, zeros, rcs, precs = opts
    ep_sp = _ep_sp_options(plan, tp, dp, sp_opts, experts, cp)
    zs = zero_options(plan, zeros, tp, dp, cp, _gpus_per_node(plan, hw), experts)
    out = []
    for sched in scheds:
        for v in vs if sched in VIRTUAL_STAGE_SCHEDULES else (1,):
            for mb in mbs:
                for z, r in zs:
                    for rc in rcs:
                        for ep, sp in ep_sp:
                            for prec in precs:
                                out.append(Layout(hw, g, tp, pp, dp, z, mb, rc, sched, v, gb,
                                                  sp, cp, ep, prec, r))  # fmt: skip
    return out
