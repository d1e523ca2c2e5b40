"""torch.nn.DataParallel (``dp_mode: data_parallel``, ``costs.data_parallel``): GPU 0's extra
memory against closed forms, the order of its transfers in the simulated step, the comparison
with DDP on the same layout, and the keys that do not apply to it."""

from __future__ import annotations

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.data_parallel import gathered_logits_bytes
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.layout.step import resolve
from simtrain.spec.scenario import load_scenario

SCN = "scenarios/data_parallel_4gpu.yaml"
N, B, S, V = 4, 8, 1024, 50257  # dp, micro_batch, seq_len, gpt2-large vocab
PARAMS = 774_030_080  # gpt2-large (tied head), simtrain's count (tests/test_model.py)


@pytest.fixture(scope="module")
def dp_run():
    return simulate_scenario(load_scenario(SCN))


@pytest.fixture(scope="module")
def ddp_run():
    return simulate_scenario(load_scenario(SCN, ["parallelism.dp_mode=ddp"]))


def test_gathered_logits_are_the_whole_batch_in_bf16() -> None:
    sc = load_scenario(SCN)
    assert gathered_logits_bytes(sc, resolve(sc)) == N * B * S * V * 2


def test_only_gpu0_holds_optimizer_state_and_master_weights() -> None:
    mem = estimate_memory(load_scenario(SCN))
    gpu0, rep = mem.stages[0], mem.replica
    assert mem.params == PARAMS
    # AdamW: exp_avg and exp_avg_sq in fp32, and an fp32 master copy (bf16 mixed precision)
    assert gpu0.category("optimizer_states") == PARAMS * 2 * 4
    assert gpu0.category("master_weights") == PARAMS * 4
    assert rep.category("optimizer_states") == rep.category("master_weights") == 0
    # both hold the bf16 parameters: the module on GPU 0, the broadcast copy on a replica
    assert gpu0.category("parameters") == rep.category("parameters") == PARAMS * 2
    # GPU 0: the module's .grad and its own replica's gradients while they are reduced
    assert gpu0.category("gradients") == 2 * PARAMS * 2
    assert rep.category("gradients") == PARAMS * 2
    assert (gpu0.gpus, rep.gpus) == (1, N - 1)


def test_gpu0_buffers_are_the_gathered_logits_their_gradient_and_the_whole_batch_loss() -> None:
    mem = estimate_memory(load_scenario(SCN))
    gpu0, rep = mem.stages[0], mem.replica
    logits = N * B * S * V * 2  # gathered, and their gradient before the scatter
    # standard cross-entropy over all N·B sequences: the fp32 log-softmax it saves and two fp32
    # b·s·V working tensors
    loss = 4 * (N * B) * S * V + 2 * 4 * (N * B) * S * V
    assert dict(gpu0.loss_bytes) == {0: 2 * logits + loss}
    assert dict(rep.loss_bytes) == {0: 0}
    extra = gpu0.category("buffers") - gpu0.optimizer_working_bytes - rep.category("buffers")
    assert extra == 2 * logits + loss
    assert rep.optimizer_working_bytes == 0


def test_no_gpu_saves_the_loss_of_its_own_rows() -> None:
    """The replicas return logits; cross-entropy runs on GPU 0 over the gathered batch, so a
    replica's activations are a DDP rank's less the fp32 log-softmax of its b·s·V logits."""
    dp = estimate_memory(load_scenario(SCN))
    ddp = estimate_memory(load_scenario(SCN, ["parallelism.dp_mode=ddp"]))
    ddp_act = ddp.stages[0].category("activations")
    assert dp.replica.category("activations") == ddp_act - 4 * B * S * V
    assert dp.stages[0].category("activations") == ddp_act - 4 * B * S * V


def test_memory_report_gives_both_peaks_and_fits_on_the_worst() -> None:
    mem = estimate_memory(load_scenario(SCN))
    gpu0, rep = mem.stages[0], mem.replica
    assert gpu0.peak_memory_bytes > rep.peak_memory_bytes
    assert mem.peak_memory_bytes == gpu0.peak_memory_bytes
    doc = mem.to_json()
    assert doc["data_parallel_replica"]["peak_memory_bytes"] == rep.peak_memory_bytes
    assert doc["stages"][0]["peak_memory_bytes"] == gpu0.peak_memory_bytes
    # a replica's peak: parameters, context and its activations walk (its gradients come
    # only once the activations are freed, and are smaller here)
    at = dict(rep.peak_memory_bytes_by_category)
    assert at["gradients"] == 0 and at["activations"] == rep.category("activations")
    assert rep.peak_memory_bytes == PARAMS * 2 + rep.category("cuda_context") + at["activations"]
    # too little memory for GPU 0 alone: the scenario does not fit
    small = load_scenario(SCN, ["training.micro_batch=16", "training.global_batch=64"])
    m2 = estimate_memory(small)
    assert not m2.fits and m2.replica.fits


def test_the_engine_reaches_the_estimated_peak_on_each_row(dp_run) -> None:
    tl, mem = dp_run.timeline, dp_run.memory
    assert tl.peak_memory_bytes(0) == mem.stages[0].peak_memory_bytes
    assert tl.peak_memory_bytes(1) == mem.replica.peak_memory_bytes


def _one(spans, kind, mb=0):
    (s,) = [x for x in spans if x.kind == kind and x.microbatch == mb]
    return s


def test_order_broadcast_forward_gather_loss_scatter_backward_reduce_optimizer(dp_run) -> None:
    tl = dp_run.timeline
    g0, rep = tl.spans_of(0), tl.spans_of(1)
    bcast, f0, f1 = _one(g0, "BCAST"), _one(g0, "F"), _one(rep, "F")
    assert bcast.end_ns <= f0.start_ns and bcast.end_ns <= f1.start_ns
    gather, loss = _one(g0, "GATHER"), _one(g0, "LOSS")
    scatters = sorted((x for x in g0 if x.kind == "SCATTER"), key=lambda x: x.start_ns)
    assert scatters[0].end_ns <= bcast.start_ns  # the inputs first (scatter_kwargs)
    grad = scatters[1]
    assert gather.start_ns >= max(f0.end_ns, f1.end_ns)
    assert gather.end_ns <= loss.start_ns and loss.end_ns <= grad.start_ns
    b0, b1 = _one(g0, "B"), _one(rep, "B")
    assert grad.end_ns <= min(b0.start_ns, b1.start_ns)
    reduce = _one(g0, "REDUCE")
    assert reduce.start_ns >= max(b0.end_ns, b1.end_ns)
    (opt,) = [x for x in g0 if x.kind == "OPT"]
    assert opt.start_ns >= reduce.end_ns
    assert not [x for x in rep if x.kind == "OPT"]  # replicas hold no optimizer
    assert tl.rank_labels == {0: "GPU 0: module, loss, optimizer", 1: "GPUs 1-3: replicas"}


def test_every_microbatch_broadcasts_and_reduces() -> None:
    sc = load_scenario(SCN, ["training.global_batch=96"])  # 3 micro-batches of 8 per GPU
    tl = simulate_scenario(sc).timeline
    g0 = tl.spans_of(0)
    for kind in ("BCAST", "GATHER", "LOSS", "REDUCE"):
        assert sorted(x.microbatch for x in g0 if x.kind == kind) == [0, 1, 2]
    bcasts = sorted((x for x in g0 if x.kind == "BCAST"), key=lambda x: x.start_ns)
    reduces = sorted((x for x in g0 if x.kind == "REDUCE"), key=lambda x: x.start_ns)
    for r, nxt in zip(reduces, bcasts[1:], strict=False):
        assert r.end_ns <= nxt.start_ns  # the next forward's broadcast after the reduction


def test_one_host_issues_every_replicas_forward(dp_run) -> None:
    """pytorch_eager: 26 µs per op, GPT-2's block 77 forward ops (costs.host), 36 blocks; the
    GIL serialises parallel_apply's four threads."""
    host = [x for x in dp_run.timeline.spans_of(0, "host") if x.name.startswith("issue F")]
    assert host[0].duration_ns == round(1e9 * 26e-6 * 77 * 36) * N


def test_slower_than_ddp_and_gpu0_heavier(dp_run, ddp_run) -> None:
    assert dp_run.metrics.step_time_s > ddp_run.metrics.step_time_s
    assert dp_run.memory.peak_memory_bytes > ddp_run.memory.peak_memory_bytes
    # a replica needs less than a DDP rank (no optimizer state, no gradient buckets kept)
    assert dp_run.memory.replica.peak_memory_bytes < ddp_run.memory.peak_memory_bytes


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (["parallelism.pp=2", "parallelism.dp=2"], ["parallelism.pp = 2"]),
        (["parallelism.tp=2", "parallelism.dp=2"], ["parallelism.tp = 2"]),
        (["parallelism.zero_stage=1"], ["parallelism.zero_stage = 1"]),
        (["parallelism.pp=2", "parallelism.tp=2", "parallelism.dp=1", "parallelism.zero_stage=2"],
         ["parallelism.pp = 2", "parallelism.tp = 2", "parallelism.zero_stage = 2"]),
        (["cluster.nodes=2", "parallelism.dp=8", "training.global_batch=64"], ["cluster.nodes = 2"]),
    ],
)  # fmt: skip
def test_keys_that_do_not_apply_are_named_in_one_line(sets: list[str], named: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_scenario(SCN, sets)
    msg = str(e.value)
    assert e.value.key == "parallelism.dp_mode" and "\n" not in msg
    assert all(k in msg for k in named) and "data_parallel" in msg


def test_transfers_and_loss_against_closed_forms() -> None:
    """Ring collectives over the node's 4 GPUs (runtime collective_algorithm: ring): broadcast
    and reduce S/B + (n−1)·α, scatter and gather (n−1)/n·S/B + (n−1)·α, B the NVLink bandwidth
    times the profile's collective efficiency; the loss of the other n−1 replicas' rows on
    GPU 0, memory-bound: standard cross-entropy 16 B per logit forward, x 1.25 backward
    (costs.compute's measured fp32 element-wise backward factor)."""
    sc = load_scenario(SCN, ["runtime={name: pytorch_eager, collective_algorithm: ring}"])
    hw = sc.hardware
    bw = hw.intra_node_bandwidth_bytes_per_s * hw.efficiency.collective
    alpha = (N - 1) * hw.intra_node_latency_s
    tl = simulate_scenario(sc).timeline
    g0 = tl.spans_of(0)

    def ns(seconds: float) -> int:
        return round(1e9 * seconds)

    assert _one(g0, "BCAST").duration_ns == ns(PARAMS * 2 / bw + alpha)
    assert _one(g0, "GATHER").duration_ns == ns((N - 1) / N * N * B * S * V * 2 / bw + alpha)
    assert _one(g0, "REDUCE").duration_ns == ns(PARAMS * 2 / bw + alpha)
    inputs = [x for x in g0 if x.kind == "SCATTER" and x.name.startswith("scatter inputs")]
    assert inputs[0].duration_ns == ns((N - 1) / N * N * B * S * 8 / bw + alpha)
    ce = 16 * B * S * V * (1 + 1.25)
    hbm = hw.hbm_bandwidth_bytes_per_s * hw.efficiency.memory_bound
    assert _one(g0, "LOSS").duration_ns == round((N - 1) * 1e9 * ce / hbm)


@pytest.mark.parametrize(
    "sets",
    [
        ["training.global_batch=96"],  # 3 micro-batches: a broadcast and reduction each
        ["training.recompute=full"],
        ["training.cross_entropy=fused"],
        ["parallelism.dp=2", "cluster.gpus_per_node=2", "training.global_batch=16"],
        ["runtime=megatron_lm_2021"],  # no host time modelled
        # short sequences: a replica peaks while its gradients are reduced, not in backward
        ["training.seq_len=128", "training.micro_batch=1", "training.global_batch=4"],
        # ... with an fp32 accumulation buffer, and with a runtime that reduces in fp32: the
        # transfers' memory is the memory model's (the plan took a wire size before)
        [
            "training.seq_len=128",
            "training.micro_batch=1",
            "training.global_batch=4",
            "training.precision=bf16_fp32_grads",
        ],
        [
            "training.seq_len=128",
            "training.micro_batch=1",
            "training.global_batch=4",
            "runtime=nanotron",
        ],
    ],
)
def test_engine_peaks_match_the_memory_model_on_both_rows(sets: list[str]) -> None:
    res = simulate_scenario(load_scenario(SCN, sets))
    mem, tl = res.memory, res.timeline
    assert tl.peak_memory_bytes(0) == mem.stages[0].peak_memory_bytes
    assert tl.peak_memory_bytes(1) == mem.replica.peak_memory_bytes
    assert [s for s in tl.spans_of(0) if s.kind == "OPT"]
    assert not [s for s in tl.spans_of(1) if s.kind == "OPT"]


def test_a_replica_with_little_activation_peaks_during_the_reduction() -> None:
    sc = load_scenario(SCN, ["training.seq_len=128", "training.micro_batch=1",
                             "training.global_batch=4"])  # fmt: skip
    rep = estimate_memory(sc).replica
    at = dict(rep.peak_memory_bytes_by_category)
    assert at["gradients"] == PARAMS * 2 and at["activations"] == 0
    assert rep.peak_memory_bytes == 2 * PARAMS * 2 + rep.category("cuda_context")


def test_step_averages_weigh_gpu0_as_one_gpu_of_four() -> None:
    """GPU 0 is one GPU, the replica row stands for dp − 1 = 3: the bubble ratio is
    (1 x GPU 0's + 3 x the replica's) / 4, and the per-GPU breakdown still sums to the step."""
    m = simulate_scenario(load_scenario(SCN)).metrics
    g0, rep = m.stages
    assert m.bubble_ratio == pytest.approx((g0.bubble_ratio + 3 * rep.bubble_ratio) / 4)
    assert g0.bubble_ratio != rep.bubble_ratio  # else the weighting could not show
    assert sum(v for _, v in m.time_breakdown_s) - dict(m.time_breakdown_s)[
        "communication_total"
    ] == pytest.approx(m.step_time_s, rel=1e-6)


def test_zero3_gathers_no_parameters_for_a_weightless_recompute() -> None:
    """ZeRO-3 gathers a layer's parameters before each of its compute slices, a recompute
    slice's too (DeepSpeed re-fetches), except where the recompute uses no weights: Megatron's
    selective recompute replays the attention core only (review: it gathered them, 17-44 %
    slower than the planner's closed form, which counts two gathers per layer unless the
    recompute is full). zero3_64gpu: as many gathers with selective recompute as without
    recompute; full recompute adds one per layer and micro-batch."""
    from simtrain.apps.simulate import build_lowering_input
    from simtrain.sim.lowering import lower

    def gathers(recompute: str) -> int:
        sc = load_scenario("scenarios/zero3_64gpu.yaml", [f"training.recompute={recompute}"])
        tasks = lower(build_lowering_input(sc, estimate_memory(sc)))
        return sum(t.kind == "AG" and t.stream == "gather" for t in tasks)

    none, selective, full = gathers("none"), gathers("selective"), gathers("full")
    assert selective == none < full


def test_gpu0_head_backward_frees_only_what_its_chunk_holds() -> None:
    """GPU 0's chunk does not hold its rows' loss saved tensors (the whole batch's loss is in
    its buffers), so the head's backward frees that much less of it: with flash attention its
    backward working set is the MLP backward's temporaries plus a block input (the head's input
    gradient) less the head's saved tensors but the loss's; its DDP twin's stays at 0, the head
    freeing more than the MLP holds (a review of 2026-12-07: GPU 0's was 0 too)."""
    flash = ["model.flash_attention=true"]
    sc = load_scenario(SCN, flash)
    ws = dict(estimate_memory(sc).gpus[0].recompute_working_set_bytes)[0]
    twin = estimate_memory(load_scenario(SCN, [*flash, "parallelism.dp_mode=ddp"]))
    # by hand, GPT-2 large (h 1280, f 5120), b 8, s 1024, bf16, LayerNorm: GeLU's backward
    # gradient (1 x b·s·f x 2 B) + the head's input gradient (b·s·h x 2 B) - what the head
    # frees but its loss (the final norm's input and the LM head's input, 2 x b·s·h x 2 B, and
    # the norm's fp32 mean and rstd, 2 x b·s x 4 B)
    bs = 8 * 1024
    expected = bs * 5120 * 2 + bs * 1280 * 2 - (2 * bs * 1280 * 2 + 2 * bs * 4)
    assert ws == expected == 62_849_024
    assert dict(twin.stages[0].recompute_working_set_bytes)[0] == 0
