"""``simtrain memory --explain``: the memory model's arithmetic written out, stage by stage.

Reads only the figures ``costs.memory`` recorded in each stage's :class:`StageBreakdown`; it
computes nothing of its own but the text.
"""

from __future__ import annotations

from simtrain.costs import op_sac
from simtrain.costs.activations import rematerialises
from simtrain.costs.cp import buffer_formula, cp_ring_buffer_bytes
from simtrain.costs.data_parallel import gathered_logits_bytes, gpu0_loss_bytes
from simtrain.costs.memory import (
    MemoryReport,
    StageBreakdown,
    StageMemory,
    buffer_grad_bytes,
    flat_step_buffers,
    fp8_weight_storage,
    reduce_copy_bytes,
    wire_grad_bytes,
)
from simtrain.costs.muon import rank_muon_elements
from simtrain.costs.params import adam_temporaries, keeps_master_gradients
from simtrain.layout.step import resolve
from simtrain.schedules.generators import COMBINED_1F1B_EXTRA_FORWARDS, rank_warmup
from simtrain.schedules.registry import runs_groups
from simtrain.spec.precision import STATES_PER_PARAM
from simtrain.spec.scenario import Scenario
from simtrain.units import GB, GIB


def _gb(n: float) -> str:
    return f"{n / GB:,.2f} GB ({n / GIB:,.2f} GiB)"


def explain_memory(sc: Scenario, rep: MemoryReport) -> list[str]:
    """Every stage's lines, in stage order."""
    lines: list[str] = []
    for sm in rep.gpus:
        assert sm.breakdown is not None
        lines += _model_states(sc, sm, sm.breakdown)
        lines += _activations(sc, sm, sm.breakdown)
        lines += _data_parallel(sc, sm)
        lines += _buffers_and_peak(sc, sm, sm.breakdown)
    return lines


def _data_parallel(sc: Scenario, sm: StageMemory) -> list[str]:
    """torch.nn.DataParallel (``costs.data_parallel``): what GPU 0 holds beyond a replica, and
    what a replica does not hold."""
    n = sc.parallelism.dp
    if sm.role == "replica":
        return [
            f"  DataParallel replica (GPUs 1-{n - 1}): the parameters arrive by broadcast every "
            "forward and have no .grad: no master weights, no optimizer states (their lines "
            "above are GPU 0's); its gradients = "
            f"{_gb(sm.reduce_gradient_bytes)} exist from its backward until they are reduced "
            "onto GPU 0; no loss (computed on GPU 0)",
        ]
    if sm.role != "gpu0":
        return []
    step = resolve(sc)
    logits = gathered_logits_bytes(sc, step)
    loss = gpu0_loss_bytes(sc, step) - logits
    t = sc.training
    return [
        f"  DataParallel GPU 0: + its own replica's gradients while they are reduced onto it = "
        f"{_gb(sm.reduce_gradient_bytes)} (gradients above: the module's .grad + these)",
        f"  DataParallel GPU 0 loss memory: gathered logits {n} x {t.micro_batch} x "
        f"{step.seq_len_effective} x {sc.model.vocab} x {step.precision.act_mm} B = {_gb(logits)}"
        f", their gradient {_gb(logits)}, the loss over {n * t.micro_batch} sequences "
        f"{_gb(loss)} (in buffers)",
    ]


def _label(sm: StageMemory) -> str:
    return {"gpu0": "GPU 0 (DataParallel)", "replica": "replica (DataParallel)"}.get(
        sm.role, f"stage {sm.stage}"
    )


#: The state tensors of the optimizers that keep one element per parameter in each
#: (spec.precision.STATES_PER_PARAM), by name.
_STATE_NAMES = {"adam": "m and v", "adamw": "m and v", "sgd_momentum": "momentum"}


def _per_param_states(optimizer: str, state_bytes: int, trainable: int, z: int, dp: int) -> str:
    """ " x 8 B (m and v, 4 B each)": the bytes per parameter the model counted for an optimizer
    with one element per parameter in each state (spec.precision.STATES_PER_PARAM), unsharded;
    "" for the others (8-bit Adam, Adafactor: counted by shape) and under ZeRO sharding (the
    ZeRO line divides)."""
    n = STATES_PER_PARAM.get(optimizer, 0)
    if not n or not trainable or (z >= 1 and dp > 1) or state_bytes % trainable:
        return ""
    per = state_bytes // trainable
    return f" x {per} B ({_STATE_NAMES[optimizer]}, {per // n} B each)"


def _model_states(sc: Scenario, sm: StageMemory, b: StageBreakdown) -> list[str]:
    t, p = sc.training, sc.parallelism
    prec = t.precision_spec
    ms, tp, dp, z = b.states, p.tp, p.zero_shards, p.zero_stage
    dp_name = f"dp x cp {p.dp} x {p.cp} = {dp}" if p.cp > 1 else f"dp {dp}"
    if p.zero_replicas > 1:
        whole = f"dp x cp = {p.dp_cp}" if p.cp > 1 else f"dp {p.dp_cp}"
        dp_name = (f"its hybrid-sharding group of {dp} GPUs ({whole} in {p.zero_replicas} "
                   f"replicas)")  # fmt: skip
    head = ", head (its loss on a later stage)" if b.loss_apart else ", head" if b.last else ""
    tail = "".join(f", the {part}" for part in b.loss_tail)  # nanotron's cast / loss stage
    ends = f"{', embeddings' if b.first else ''}{head}{tail}"
    # (ZeRO-3 shards them further, said below: the count is each GPU's before it)
    before = " before ZeRO-3 shards them" if z >= 3 and dp > 1 else ""
    lines = [
        f"{_label(sm)}: {ms.params:,} parameters on each GPU{before} ({b.n_layers} layers{ends}"
        f"{f', TP {tp}' if tp > 1 else ''}), {ms.trainable:,} trainable",
        (
            f"  parameters       = {ms.params:,}: the base weights in NF4 (4 bits + block "
            f"constants), the adapters and norms {prec.param} B = {_gb(ms.parameters)}"
            if t.peft.method == "qlora"
            else f"  parameters       = {ms.params:,} x {prec.param} B = {_gb(ms.parameters)}"
        ),
    ]
    if t.fp8_params:
        elems, stored = fp8_weight_storage(sc, resolve(sc), sm.stage)
        lines.append(f"    of which the linears' {elems:,} weights are FP8 primary weights "
                     f"(--fp8-param-gather): {_gb(stored)} as TE keeps them, in place of "
                     f"{_gb(elems * prec.param)} in {prec.param} B (the parameters category "
                     f"holds the FP8 bytes)")  # fmt: skip
    if ms.master_weights:
        kind = ("the low 16 bits of each fp32 master weight, beside the 16-bit one"
                if prec.master_remainder else "fp32 copy")  # fmt: skip
        lines.append(f"  master weights   = {ms.trainable:,} trainable x {prec.master} B ({kind}) "
                     f"= {_gb(ms.master_weights)}")  # fmt: skip
    # (a runtime that keeps the gradients in its reduction buffer: that buffer's dtype)
    buffer = buffer_grad_bytes(sc, resolve(sc))
    lines.append(
        f"  gradients        = {ms.trainable:,} trainable x "
        + (f"{buffer} B (the reduction buffer's dtype)" if buffer is not None else
           f"{prec.grad} B" + (f" + {prec.grad_accum} B (fp32 accumulation buffer)"
                               if prec.grad_accum else ""))
        + f" = {_gb(ms.gradients)}"
    )  # fmt: skip
    lines.append(f"  optimizer states = {t.optimizer} on {ms.trainable:,} trainable"
                 + _per_param_states(t.optimizer, ms.optimizer_states, ms.trainable, z, dp)
                 + f" = {_gb(ms.optimizer_states)}")  # fmt: skip
    if t.optimizer == "muon":
        mats, rest = rank_muon_elements(sc, resolve(sc), sm.stage)
        lines.append(f"    Muon: a momentum on the {mats:,} elements of the matrices it "
                     f"orthogonalises, Adam's m and v on the other {rest:,} (word embedding, head, "
                     f"vectors), {prec.state} B each")  # fmt: skip
    if z >= 1 and dp > 1 and sc.parallelism.ep > 1:
        lines.append(
            f"  routed experts ({sc.parallelism.ep}-way expert parallel): their ZeRO "
            f"shards / expert-dp {sc.parallelism.expert_dp}, the rest / dp {dp}"
        )
    if z >= 1 and dp > 1:
        lines.append(f"  ZeRO-{z}: optimizer states and master weights / {dp_name}")
    if z >= 2 and dp > 1:
        lines.append(f"  ZeRO-{z}: gradients / {dp_name}")
    if z >= 3 and dp > 1:
        lines.append(f"  ZeRO-3: parameters / {dp_name}")
    if t.offload.optimizer or t.offload.parameters or t.offload.activations:
        what = [
            w
            for w, on in (
                ("optimizer states and master weights", t.offload.optimizer),
                ("parameters", t.offload.parameters),
                ("checkpointed activations", t.offload.activations),
            )
            if on
        ]
        lines.append(f"  offload: {', '.join(what)} ({_gb(b.host_bytes)} with DeepSpeed's "
                     "buffers) live in host memory")  # fmt: skip
    if t.offload.activation_layers:
        n = t.offload.activation_layers
        lines.append(f"  offload: the saved activations of blocks 0 .. {n - 1} "
                     f"({_gb(b.host_bytes)} in pinned host memory) leave the GPU during the forward and "
                     f"come back during the backward (Megatron-Core cpu_offloading_num_layers "
                     f"{n}): the GPU holds {sc.model.layers - n} blocks'")  # fmt: skip
    return lines


def _activations(sc: Scenario, sm: StageMemory, b: StageBreakdown) -> list[str]:
    m, t, p = sc.model, sc.training, sc.parallelism
    lines = []
    full = rematerialises(t) and b.saved
    if b.saved:
        full_layer = sum(x.bytes for x in b.saved)
        lines.append(
            f"  activations per layer per micro-batch (b={t.micro_batch}, "
            f"s={t.seq_len_effective // p.cp}, h={m.hidden}): {b.per_layer_bytes:,} B"
            + (
                f" (recompute {t.recompute}"
                + (f" of {', '.join(t.selective_modules)}" if t.recompute == "selective" else "")
                + f": of {full_layer:,} B saved without it)"
                if t.recompute != "none"
                else ""
            )  # fmt: skip
        )
        for x in b.saved:
            lines.append(f"      {x.name:<42} {x.formula:<14} {x.bytes:>14,} B")
        if t.recompute == "selective_op":
            lines.append(f"    kept under selective_op ({op_sac.SOURCE}):")
            for name, n, formula in op_sac.saved_tensors(m, t, p.tp, p.sequence_parallel):
                lines.append(f"      {name:<42} {formula:<14} {n:>14,} B")
        if p.cp > 1:
            lines.append(f"      context parallelism: s = {t.seq_len} / cp {p.cp} tokens per GPU")
    else:
        lines.append("  activations: no gradient flows through the blocks: nothing is saved")
    sched_name = p.schedule if p.pp > 1 else "gradient accumulation"
    if runs_groups(p.schedule, p.pp, p.virtual_stages):
        # the stage's warm-up as the schedule's generator runs it (combined 1F1B's extra
        # forwards: generators.rank_warmup; at most v·m)
        n = p.microbatch_group_size or p.pp
        warmup = rank_warmup(p.schedule, sm.stage, p.pp, resolve(sc).microbatches,
                             p.virtual_stages, n)  # fmt: skip
        extra = f" + {COMBINED_1F1B_EXTRA_FORWARDS}" if p.schedule == "combined_1f1b" else ""
        sched_name += (f", groups of {n} micro-batches per chunk: {warmup} warm-up forwards "
                       f"(2(pp - r - 1) + (v - 1)·{n}{extra}, at most v·m)")  # fmt: skip
    sizes = sorted({n for _, n in sm.chunk_activation_bytes})
    per_mb = (f"{b.activation_bytes_per_microbatch:,} B per micro-batch x {b.in_flight:g} in "
              "flight at the peak"
              if len(sizes) <= 1 else
              f"the schedule's peak over chunks of {' / '.join(f'{n:,}' for n in sizes)} B per "
              f"micro-batch ({b.in_flight:g} micro-batches in flight, in whole-stage units)")  # fmt: skip
    head_note = (" and, on the stage holding the head, plus that input less what the head "
                 "saved, freed before the first block's backward" if b.last else "")  # fmt: skip
    parts = []  # what the backward holds beside the saved tensors (memory's working set)
    if full:
        parts.append("re-materialising one block: its saved tensors less its checkpointed input"
                     + (" and the outputs the policy keeps" if t.recompute == "selective_op"
                        else "") + head_note)  # fmt: skip
    if b.backward_part == "core" and b.recompute_working_set_bytes:
        parts.append("a non-flash attention core's backward: the scores' gradient beside the "
                     "saved probabilities" + (", and the re-run probabilities and dropout mask"
                                              if "core_attn" in t.selective_modules
                                              else ""))  # fmt: skip
    elif b.backward_part == "mlp" and b.recompute_working_set_bytes:
        parts.append("the MLP backward's gradients of b·s·f/t values beside the saved ones"
                     + ("" if full or not b.last else ", the head's saved tensors freed by then"))  # fmt: skip
    lines.append(
        f"  activations      = {per_mb} ({sched_name}, stage {sm.stage})"
        + (
            f" + backward working set {b.recompute_working_set_bytes:,} B ({'; '.join(parts)})"
            if parts and b.recompute_working_set_bytes
            else ""
        )  # fmt: skip
        + f" = {_gb(b.activations)}"
    )
    if b.weight_versions > 1:
        lines.append(f"  weight stashing ({sc.parallelism.schedule}): {b.weight_versions} weight "
                     f"versions on stage {sm.stage}: stashed_weights = {b.weight_versions - 1} x "
                     f"parameters = {_gb(b.stashed_weight_bytes)}")  # fmt: skip
    return lines


def _buffers_and_peak(sc: Scenario, sm: StageMemory, b: StageBreakdown) -> list[str]:
    t, p, hw = sc.training, sc.parallelism, sc.hardware
    prec = t.precision_spec
    lines = []
    if b.optimizer_working_bytes:
        step = resolve(sc)
        flat = flat_step_buffers(sc, step)
        fused = not adam_temporaries(t, sc.runtime.fused_optimizer)
        # torch's unfused Adam: two temporaries of the largest tensor it steps, on DeepSpeed's
        # flat buffers the whole fp32 partition (costs.memory.flat_step_allocations)
        over = " / dp x cp" if p.cp > 1 else " / dp"  # the ZeRO shard (optimizer_shard)
        if p.zero_replicas > 1:  # hybrid sharding: its group's GPUs
            over = f" / the {p.zero_shards}-GPU hybrid-sharding group"
        if sc.model.is_moe and p.ep > 1 and not flat:  # routed experts over the expert-dp group
            over = f"{over} (routed experts' / (dp{' x cp' if p.cp > 1 else ''} / ep))"
        what = "" if fused else (f"2 x {prec.state} B x trainable{over} of Adam temporaries"
                                 if flat else "2 temporaries of the largest tensor")  # fmt: skip
        # (the cost model's rule: costs.params.keeps_master_gradients; DeepSpeed's flat step
        # always casts its 16-bit gradient partition)
        fp32_buffer = buffer_grad_bytes(sc, step) == 4
        if (
            (prec.master and not prec.grad_accum)
            if flat
            else keeps_master_gradients(prec, fp32_buffer)
        ):
            grads = ("a flat 16-bit copy of the gradient partition and its fp32 cast, "
                     f"{prec.grad} + {prec.master} B" if flat else f"fp32 master gradients, "
                     f"{prec.master} B")  # fmt: skip
            what = (
                f"{grads} x trainable"
                + (over if p.zero_stage else "")
                + (" + " + what if what else "")
            )
        reduce = reduce_copy_bytes(sc, step, sm.trainable)
        if reduce and reduce >= b.optimizer_working_bytes:
            what = (f"the reduction's flat {wire_grad_bytes(sc, step)}-byte gradient copy, "
                    + ("one bucket" if flat else "all of the rank's gradients")
                    + ", larger than the step's own")  # fmt: skip
        lines.append(f"  optimizer step working memory = {_gb(b.optimizer_working_bytes)} "
                     f"({what}; activations are gone by then)")  # fmt: skip
    if sm.allocator_cached_bytes:
        act = sm.allocator_cached_activation_bytes
        lines.append(f"  allocator cache at the optimizer step (a {sc.runtime.memory_reported} "
                     f"figure) = {_gb(sm.allocator_cached_bytes)}: the freed activations' blocks "
                     f"stay reserved ({_gb(act)}, under activations) while the flat reduction "
                     "and step buffers take new segments; the rest, "
                     f"{_gb(sm.allocator_cached_bytes - act)}, under buffers")  # fmt: skip
    if sm.gather_pool_bytes:
        lines.append(f"  FSDP2 all-gather pool (a {sc.runtime.memory_reported} figure) = "
                     f"{_gb(sm.gather_pool_bytes)} of buffers: two groups' gathered parameters"
                     + (" and a cast shard" if prec.param < 4 else "")
                     + " (at most what the capacity leaves), cached on the copy-in stream, "
                     "which the compute stream cannot reuse")  # fmt: skip
    if sm.pending_collective_bytes:
        lines.append(f"  row-parallel outputs pending their NCCL reduce-scatter at a forward's end (a "
                     f"{sc.runtime.memory_reported} figure) = {_gb(sm.pending_collective_bytes)} "
                     "of buffers: freed by the host ahead of the GPU, held by the allocator until "
                     "the collective has run (c10d recordStream), then kept in its cache")  # fmt: skip
    if sm.fragmentation_bytes:
        lines.append(f"  caching allocator fragmentation (a {sc.runtime.memory_reported} figure) = "
                     f"{_gb(sm.fragmentation_bytes)} of buffers: what the allocator reserves "
                     "beyond the allocated peak when the rank's allocations of two steps are "
                     "replayed through its rules (costs.fragmentation)")  # fmt: skip
    if b.naive_dp_gather_bytes:
        lines.append(f"  naive DP: GPU 0 receives {p.dp - 1} gradient copies: + "
                     f"{_gb(b.naive_dp_gather_bytes)} of buffers")  # fmt: skip
    if b.ddp_bucket_bytes:
        lines.append(f"  torch DDP bucket gradients: {prec.param} B x trainable = "
                     f"{_gb(b.ddp_bucket_bytes)} of buffers (kept beside .grad)")  # fmt: skip
    if b.tp_gather_bytes:
        lines.append(f"  cached TP all-gather buffers: {sc.runtime.tp_gather_buffers} x b·s·h = "
                     f"{_gb(b.tp_gather_bytes)} of buffers (not divided by tp)")  # fmt: skip
    if b.nccl_bytes:
        lines.append(f"  NCCL connection buffers ({', '.join(sc.runtime.nccl_communicators)}; "
                     f"device-level memory) = {_gb(b.nccl_bytes)} of buffers")  # fmt: skip
    if b.te_dummy_wgrad_bytes:
        lines.append(f"  Transformer Engine's cached dummy weight gradients (one per distinct linear "
                     f"shape, kept; runtime te_dummy_wgrad) = {_gb(b.te_dummy_wgrad_bytes)} of "
                     "buffers")  # fmt: skip
    ring = cp_ring_buffer_bytes(sc) if b.n_layers else 0
    cp_text = f"; {buffer_formula(sc)} = {_gb(ring)}" if ring else ""
    lines.append(f"  buffers          = {_gb(b.buffers)} (loss working memory, casts, "
                 "communication" + cp_text + ")")  # fmt: skip
    lines.append(f"  CUDA context     = {_gb(hw.cuda_context_bytes)} ({hw.display_name} profile)")
    if b.loss_before_recompute:
        lines.append("  the loss working memory is freed before recompute re-materialises a "
                     "block: the peak counts the larger of the two")  # fmt: skip
    if b.gradients_freed_after_backward:
        lines.append("  16-bit gradients: added into the fp32 buffer and freed after every "
                     "micro-batch's backward: the peak holds them only at the end of a backward "
                     f"({_gb(dict(sm.peak_memory_bytes_by_category).get('gradients', 0))} "
                     "of gradients at the peak)")  # fmt: skip
    if b.gradients_transient:
        lines.append("  gradients appear as backward frees activations (one micro-batch, no "
                     "DP/PP): the peak is the fullest of the forward's end, the optimizer step "
                     "(every gradient) and a block's backward, first or last (the gradients "
                     "written before it beside the blocks' saved tensors"
                     + (f": {_gb(sm.backward_moment_bytes)} more than the walk's chunk)"
                        if sm.backward_moment_bytes else ")"))  # fmt: skip
    if sm.pageable_bytes:
        lines.append(
            f"  paged optimizer: {_gb(sm.pageable_bytes)} of states in unified memory (tensors of "
            f">= 1e5 elements); at the activation peak min(that, max(0, "
            f"{sm.peak_memory_bytes_unpaged:,} - {hw.memory_bytes:,})) = {_gb(sm.paged_bytes)} "
            "paged out to host memory, prefetched back for the optimizer step"
        )
    lines.append(f"  peak             = {_gb(sm.peak_memory_bytes)}; capacity "
                 f"{_gb(hw.memory_bytes)}")  # fmt: skip
    return lines
