"""The resolved step: every fact of a layout, computed once from a validated scenario.

Memory, costs, lowering, metrics, the planner's closed form and validate read these facts here
and never re-derive them: micro-batches per step (m = global_batch / (micro_batch · dp),
Narayanan et al. 2021 §3.1), the schedule that runs with its traits (``schedules.registry``),
the layer split per virtual stage, stage → rank → GPU placement and which hops cross nodes,
process-group spans, the effective sequence length and the bytes of one boundary activation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from simtrain.errors import ConfigError
from simtrain.layout.partition import StageBlocks, split_layers
from simtrain.layout.placement import Groups, Placement
from simtrain.schedules import (
    Schedule,
    ScheduleTraits,
    build_schedule,
    interleaved_all_warmup,
    pipeline_of,
    rank_stages,
    runs_groups,
    stage_to_rank,
    traits,
)
from simtrain.schedules.registry import all_warmup_order
from simtrain.spec.model import ModelSpec
from simtrain.spec.precision import Precision
from simtrain.spec.scenario import (
    ParallelSpec,
    Scenario,
    TrainingSpec,
    microbatches,
    trained_mtp_modules,
)


@dataclass(frozen=True, slots=True)
class ResolvedStep:
    microbatches: int  # m per step and pipeline
    micro_batch: int  # b, samples per micro-batch
    global_batch: int
    schedule_name: str  # what runs: parallelism.schedule, or 1F1B accumulation when pp = 1
    traits: ScheduleTraits
    schedule: Schedule  # rank -> compute actions (shared, read-only)
    v: int  # virtual stages (model chunks) per rank
    chunks: tuple[StageBlocks, ...]  # by virtual stage 0 .. pp·v−1
    placement: Placement
    precision: Precision
    seq_len: int  # tokens of data per sample
    seq_len_effective: int  # positions the blocks process: + soft-prompt tokens (prompt tuning)
    kv_len: int  # keys each query attends to: + prefix tokens (prefix tuning)
    # One b·s·h activation in the matmul dtype (p2p sends, TP all-reduces), s/cp tokens of it
    # per context-parallel rank.
    boundary_bytes: int
    gradients_transient: bool
    # One micro-batch's logits b·(s/cp)·V in the activation dtype: what an LM head sends a
    # later chunk holding the loss (StageBlocks.loss_apart; 4 B each after the fp32 cast)
    logits_bytes: int = 0
    # the interleaved schedule as Megatron-LM 2021-2024 ran it at m = pp (runtime
    # interleaved_all_warmup_at_pp): every forward first (schedules.interleaved_all_warmup)
    all_warmup_at_pp: bool = False
    # the interleaved schedules' micro-batches per chunk group, N (parallelism.
    # microbatch_group_size; 0: pp, Megatron's default; schedules.generators.check_group)
    microbatch_group: int = 0

    @property
    def groups(self) -> Groups:
        return self.placement.groups

    @property
    def pp(self) -> int:
        return self.groups.pp

    @property
    def gpus(self) -> int:
        return self.groups.gpus

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def last_stage(self) -> int:
        return self.pp * self.v - 1

    def pipeline(self, stage: int) -> range:
        """The stages a micro-batch through ``stage`` visits in order: all of them, or
        DualPipe's half (:func:`~simtrain.schedules.actions.pipeline_of`)."""
        return pipeline_of(stage, self.pp * self.v, self.traits.placement)

    @property
    def stage_copies(self) -> int:
        """Chunks holding each model stage's layers: DualPipe's two (each micro-batch runs
        through one of them, half each way), else one."""
        return 2 if self.traits.bidirectional else 1

    def chunk_rank(self, stage: int) -> int:
        """Rank holding virtual stage ``stage`` (stage % pp, Narayanan et al. 2021 §2.2.2; or
        the V of ZB-V, or DualPipe's "dual": the schedule's ``placement``)."""
        return stage_to_rank(stage, self.pp, self.v, self.traits.placement)

    def rank_chunk_ids(self, rank: int) -> list[int]:
        """Virtual stages on ``rank``, in model order."""
        return rank_stages(rank, self.pp, self.v, self.traits.placement)

    def rank_chunks(self, rank: int) -> list[StageBlocks]:
        return [self.chunks[s] for s in self.rank_chunk_ids(rank)]

    @property
    def fp32_logits_bytes(self) -> int:
        """:attr:`logits_bytes` at 4 B a logit (nanotron's ``cast_to_fp32`` output)."""
        return self.logits_bytes // self.precision.act_mm * 4

    def hop_kind(self, stage: int, to_stage: int) -> str:
        """What one micro-batch's p2p transfer between chunk ``stage`` and its neighbour
        ``to_stage`` carries: forward the lower chunk's output, backward its gradient
        (:meth:`StageBlocks.output_kind`)."""
        return self.chunks[min(stage, to_stage)].output_kind

    def hop_bytes(self, stage: int, to_stage: int) -> int:
        """Bytes of that transfer (:meth:`hop_kind`), all TP ranks together: a b·s·h
        activation (:attr:`boundary_bytes`), the LM head's logits (:attr:`logits_bytes`) or
        their fp32 cast (:attr:`fp32_logits_bytes`, its gradient fp32 too)."""
        kind = self.hop_kind(stage, to_stage)
        if kind == "logits":
            return self.logits_bytes
        if kind == "fp32_logits":
            return self.fp32_logits_bytes
        return self.boundary_bytes

    def rank_layers(self, rank: int) -> int:
        """Decoder layers held by ``rank``, all its chunks together."""
        return sum(c.layers for c in self.rank_chunks(rank))


def resolve(sc: Scenario) -> ResolvedStep:
    """The resolved step of ``sc`` (cached: the planner resolves thousands of layouts)."""
    return _resolve(sc.model, sc.training, sc.parallelism, sc.cluster.gpus_per_node,
                    sc.runtime.interleaved_all_warmup_at_pp)  # fmt: skip


@lru_cache(maxsize=4096)
def _resolve(m: ModelSpec, t: TrainingSpec, p: ParallelSpec, gpus_per_node: int,
             all_warmup_at_pp: bool = False) -> ResolvedStep:  # fmt: skip
    mb = microbatches(t, p)
    # One stage: plain gradient accumulation, unless the order is its own there (combined 1F1B)
    name = p.schedule if p.pp > 1 or traits(p.schedule).one_stage_order else "1f1b"
    tr = traits(name)
    if tr.chunks(p.virtual_stages) != p.virtual_stages:
        p = replace(p, virtual_stages=tr.chunks(p.virtual_stages))  # ZB-V, DualPipeV: 2
    if tr.bidirectional:
        # DualPipe: pp stages of the model, each held twice: virtual stage pp+s is stage s's
        # copy on rank pp-1-s (example_dualpipe.py l.138), the upward pipeline's stage s
        one = split_layers(m, replace(p, virtual_stages=1))
        split = {k: one[k % p.pp] for k in range(2 * p.pp)}
    else:
        split = split_layers(m, p)
    if mtp := trained_mtp_modules(m, t):
        # Megatron-Core puts every MTP module on the last pipeline stage, with the output layer
        # and the loss ("By default, all MTP layers sit on the last pipeline stage":
        # docs/user-guide/features/multi_token_prediction.md at d98e8a64): each module's
        # transformer block is block m.layers + k of the head's chunk
        split = {k: replace(c, hi=c.hi + mtp) if c.head else c for k, c in split.items()}
    prec = t.precision_spec
    idle = [k for k, c in split.items() if c.tail == ("fp32 cast",)] if prec.act_mm >= 4 else []
    if idle:  # x.float() returns an fp32 tensor itself: the stage would have no work
        raise ConfigError(None, "parallelism.layer_split",
                          f"nanotron's split leaves stage {idle[0]} of parallelism.pp = {p.pp} "
                          f"with only the fp32 cast, which does nothing in {t.precision} "
                          "training: use fewer stages or layer_split: uniform",
                          p.layer_split)  # fmt: skip
    all_warmup = all_warmup_order(all_warmup_at_pp, name, p.virtual_stages) and mb == p.pp
    # the group the order runs, 0 for Megatron's default pp (the same order, one cache entry)
    group = (p.microbatch_group_size if runs_groups(name, p.pp, p.virtual_stages)
             and p.microbatch_group_size != p.pp else 0)  # fmt: skip
    return ResolvedStep(
        microbatches=mb,
        micro_batch=t.micro_batch,
        global_batch=t.global_batch,
        schedule_name=name,
        traits=tr,
        schedule=_schedule(name, p.pp, mb, p.virtual_stages, all_warmup, group),
        v=p.virtual_stages,
        chunks=tuple(split[k] for k in range(len(split))),
        placement=Placement(Groups(p.dp, p.tp, p.pp, p.cp), gpus_per_node),
        precision=prec,
        seq_len=t.seq_len,
        seq_len_effective=t.seq_len_effective,
        kv_len=t.kv_len,
        boundary_bytes=prec.act_mm * t.micro_batch * t.seq_len_effective // p.cp * m.hidden,
        logits_bytes=prec.act_mm * t.micro_batch * t.seq_len_effective // p.cp * m.vocab,
        gradients_transient=p.pp == 1 and p.dp_cp == 1 and mb == 1,
        all_warmup_at_pp=all_warmup,
        microbatch_group=group,
    )


@lru_cache(maxsize=64)
def _schedule(name: str, pp: int, m: int, v: int, all_warmup: bool = False, group: int = 0
              ) -> Schedule:  # fmt: skip
    """Schedules are pure functions of (name, pp, m, v, group): build each once (callers never
    mutate). ``all_warmup``: the interleaved order's Megatron-LM 2021-2024 variant at m = pp
    (:func:`~simtrain.schedules.generators.interleaved_all_warmup`); ``group``: the grouped
    schedules' micro-batches per chunk (0: pp)."""
    if all_warmup:
        return interleaved_all_warmup(pp, m, v)
    return build_schedule(name, pp, m, v, group)


def rank_schedule(name: str, pp: int, m: int, v: int, rank: int, all_warmup: bool = False,
                  group: int = 0) -> list:  # fmt: skip
    """One rank's compute actions of schedule ``name`` (the memory walk's input)."""
    return _schedule(name, pp, m, v, all_warmup, group)[rank]
