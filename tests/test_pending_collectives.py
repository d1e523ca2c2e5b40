"""Row-parallel outputs held back behind their pending NCCL reduce-scatter in a reserved memory
figure (runtime ``nccl_record_streams``; ``costs.memory.pending_reduce_scatter_bytes``;
runtimes/nanotron.yaml [rstr]): c10d's recordStream keeps a freed collective input out of the
caching allocator until the collective has run, so while the host runs ahead of the GPU each
forward's attention out-projection and MLP down-projection outputs (full b x s x h each) stay
reserved. Checked against the closed form: with a host that costs nothing every row output of
the forward is pending, 2 x layers x b·s·h x 2 B."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from reference_pairs import PLAYBOOK_1B

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.chunk_time import (
    accumulation_times,
    chunk_durations,
    host_lead_ns,
    pending_fraction,
)
from simtrain.costs.memory import estimate_memory
from simtrain.layout.step import resolve
from simtrain.spec.runtime import load_runtime
from simtrain.spec.scenario import parse_scenario

ROW_OUTPUT = 1 * 4096 * 2048 * 2  # b x s x h in bf16: 16,777,216 B


def _scenario(tp: int = 8, pp: int = 1, sp: bool = True, micro: int = 8, mb: int = 1,
              **runtime):  # fmt: skip
    # (the allocator replay off: these tests isolate the pending outputs)
    rt = {"name": "nanotron", "host_us_per_op": 0.0, "nccl_record_streams": True,
          "allocator_replay": False, **runtime}  # fmt: skip
    return parse_scenario({
        "name": "rs", "model": PLAYBOOK_1B, "hardware": "h100_sxm5_80gb", "runtime": rt,
        "cluster": {"nodes": 1, "gpus_per_node": tp * pp},
        "training": {"seq_len": 4096, "global_batch": micro * mb, "micro_batch": mb,
                     "precision": "bf16_fp32_grads", "optimizer": "adamw",
                     "cross_entropy": "sharded"},
        "parallelism": {"tp": tp, "pp": pp, "dp": 1, "sequence_parallel": sp},
    }, "rs.yaml")  # fmt: skip


def test_fraction_closed_forms() -> None:
    """1 - max(0, h - lag) / g: a GPU twice the host's time leaves half the forward pending;
    a lag as long as the host's forward, all of it; a free host, all; no GPU time, none."""
    assert pending_fraction(10, 5, 0) == 0.5
    assert pending_fraction(10, 5, 5) == 1.0
    assert pending_fraction(10, 5, 2) == 0.7
    assert pending_fraction(10, 0, 0) == 1.0
    assert pending_fraction(0, 5, 0) == 0.0
    assert pending_fraction(4, 10, 0) == 0.0  # the host behind: nothing pending


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9),
       st.integers(0, 10**9))  # fmt: skip
def test_fraction_is_a_share_monotone_in_the_lag(g: int, h: int, lag: int, more: int) -> None:
    f = pending_fraction(g, h, lag)
    assert 0.0 <= f <= 1.0
    assert pending_fraction(g, h, lag + more) >= f  # a longer lag, more pending
    assert pending_fraction(g, h + more, lag) <= f  # a slower host, less


def test_a_free_host_leaves_every_row_output_pending() -> None:
    """Host cost 0: all 16 layers' two row outputs, 2 x 16 x 16,777,216 = 536,870,912 B, on
    top of the allocated figure's peak, under buffers; the other categories are unchanged."""
    res = estimate_memory(_scenario()).stages[0]
    alloc = estimate_memory(_scenario(memory_reported="allocated")).stages[0]
    assert res.pending_collective_bytes == 2 * 16 * ROW_OUTPUT == 536_870_912
    assert alloc.pending_collective_bytes == 0
    assert res.peak_memory_bytes - alloc.peak_memory_bytes == 536_870_912
    cr, ca = dict(res.memory_bytes), dict(alloc.memory_bytes)
    assert cr["buffers"] - ca["buffers"] == 536_870_912
    assert {k: v for k, v in cr.items() if k != "buffers"} == {
        k: v for k, v in ca.items() if k != "buffers"}  # fmt: skip


def test_no_pending_inputs_without_the_mechanism() -> None:
    """tp 1 (no collective), no sequence parallelism (an in-place all-reduce: the output lives
    on), the key off (TORCH_NCCL_AVOID_RECORD_STREAMS=1, the nanotron profile's default: an
    environment's setting, which validate turns on for the sweep's PyTorch 2.1) or an allocated
    figure: nothing."""
    assert not load_runtime("nanotron").nccl_record_streams
    assert load_runtime("nanotron_bench").nccl_record_streams
    for sc in (_scenario(tp=1, sp=False), _scenario(sp=False), _scenario(nccl_record_streams=False),
               _scenario(memory_reported="allocated")):  # fmt: skip
        assert estimate_memory(sc).stages[0].pending_collective_bytes == 0


def test_a_host_slower_than_the_gpu_holds_nothing() -> None:
    """10 ms an op: the host issues every micro-batch slower than the GPU runs it, never ahead."""
    sc = _scenario(host_us_per_op=10_000.0)
    assert estimate_memory(sc).stages[0].pending_collective_bytes == 0


def test_a_blocking_pipeline_pends_only_within_a_forward() -> None:
    """nanotron's p2p is blocking: the host waits for the GPU at every transfer, so no lag builds
    over the micro-batches; with a host that costs nothing each stage's forward leaves all its
    row outputs pending (8 layers a stage at pp 2), with eager PyTorch's 26 us an op a share
    strictly between none and all (micro-batch 8): 1 - h / g of the forward's host and GPU
    times (costs.chunk_time), the same with 8 micro-batches or 64."""
    free = estimate_memory(_scenario(tp=4, pp=2)).stages
    assert [s.pending_collective_bytes for s in free] == [2 * 8 * ROW_OUTPUT] * 2
    sc = _scenario(tp=4, pp=2, mb=8, host_us_per_op=26.0)  # micro-batch 8: g 34 ms, h 15 ms
    step = resolve(sc)
    d = chunk_durations(sc, step)[0]
    g, h = d.forward_ns + d.tp_forward_ns, d.host_forward_ns
    assert 0 < h < g
    got = estimate_memory(sc).stages[0].pending_collective_bytes
    assert got == int(2 * 8 * 8 * ROW_OUTPUT * (1 - h / g))
    assert 0 < got < 2 * 8 * 8 * ROW_OUTPUT
    more = _scenario(tp=4, pp=2, mb=8, host_us_per_op=26.0, micro=64)
    assert estimate_memory(more).stages[0].pending_collective_bytes == got


def test_the_lag_grows_with_the_micro_batches() -> None:
    """Without a pipeline the host's lead grows by the micro-batch's surplus of GPU time each
    micro-batch: a single micro-batch pends 1 - h / g of its forward (the lag 0), two with a
    lag of (GPU - host) per micro-batch more, and enough of them all of it; never less with
    more micro-batches."""
    full = 2 * 16 * 8 * ROW_OUTPUT  # micro-batch 8: g 59 ms, h 30 ms a forward
    got = [estimate_memory(_scenario(tp=8, mb=8, micro=m, host_us_per_op=26.0)).stages[0]
           .pending_collective_bytes for m in (1, 2, 4, 8, 32)]  # fmt: skip
    assert got == sorted(got)
    sc = _scenario(tp=8, mb=8, micro=1, host_us_per_op=26.0)
    d = chunk_durations(sc, resolve(sc))[0]
    g, h = d.forward_ns + d.tp_forward_ns, d.host_forward_ns
    assert 0 < h < g and got[0] == int(full * (1 - h / g))
    assert got[-1] == full > got[0]


def test_host_lead_closed_forms() -> None:
    """(m - 1) x max(0, g - h): two micro-batches whose GPU time is 10 and host time 4 leave the
    GPU 6 behind when the second starts, three 12; one micro-batch, a host slower than the
    GPU or a blocking pipeline p2p (the host waits at every transfer), none."""
    assert host_lead_ns(2, 10, 4, blocking=False) == 6
    assert host_lead_ns(3, 10, 4, blocking=False) == 12
    assert host_lead_ns(1, 10, 4, blocking=False) == 0
    assert host_lead_ns(2, 4, 10, blocking=False) == 0
    assert host_lead_ns(2, 10, 4, blocking=True) == 0


def test_two_micro_batches_by_hand() -> None:
    """m = 2, no pipeline, micro-batch 4, 20 us an op: the second micro-batch's forward starts
    with the GPU behind by one micro-batch's surplus, lag = (F + B GPU time) - (F + B host
    time) of the chunk, with the fp32 gradient adds after its backward (nanotron frees the
    16-bit gradients after each: their GPU and host time count), and pends 1 - (h_F - lag) / g_F of its row outputs (all of them where
    the lag covers the host's forward), written out here from the chunk's durations."""
    sc = _scenario(tp=8, mb=4, micro=2, host_us_per_op=20.0)  # g_F 31 ms, h_F 23, lag 15
    step = resolve(sc)
    d = chunk_durations(sc, step)[0]
    stage = estimate_memory(sc).stages[0]
    assert stage.freed_gradient_bytes > 0
    add_g, add_h = accumulation_times(sc, step, 0, stage.trainable)
    g_f = d.forward_ns + d.tp_forward_ns  # no pooled overlap and no EP in this scenario
    g_b = d.recompute_ns + d.input_grad_ns + d.weight_grad_ns + d.tp_backward_ns + d.tp_recompute_ns
    h_f, h_b = d.host_forward_ns, d.host_ns("B")
    lag = g_f + g_b + add_g - h_f - h_b - add_h
    assert 0 < lag < h_f < g_f  # a share strictly between the one-micro-batch one and all
    full = 2 * 16 * 4 * ROW_OUTPUT
    got = stage.pending_collective_bytes
    assert got == int(full * (1 - (h_f - lag) / g_f))
    one = estimate_memory(_scenario(tp=8, mb=4, micro=1, host_us_per_op=20.0)).stages[0]
    assert one.pending_collective_bytes < got < full


def test_the_fit_verdict_is_the_allocated_ones() -> None:
    """The allocator waits for the pending events and frees its cache before it fails: the
    reported peak stops at the GPU's memory, the verdict does not change. tp 4, micro-batch 24:
    67.2 GiB allocated, 2 x 16 layers x 24 b·s·h = 12 GiB pending, of which
    79.19 - 67.2 fit; micro-batch 32 does not fit either way (87.4 GiB allocated)."""
    res = estimate_memory(_scenario(tp=4, mb=24)).stages[0]
    alloc = estimate_memory(_scenario(tp=4, mb=24, memory_reported="allocated")).stages[0]
    assert alloc.fits and res.fits
    assert res.peak_memory_bytes == res.capacity_bytes
    assert res.pending_collective_bytes == res.capacity_bytes - alloc.peak_memory_bytes
    assert 0 < res.pending_collective_bytes < 2 * 16 * 24 * ROW_OUTPUT
    over = estimate_memory(_scenario(tp=4, mb=32)).stages[0]
    assert not over.fits and over.pending_collective_bytes == 0


def test_explain_names_the_pending_outputs() -> None:
    from simtrain.report.explain import explain_memory

    sc = _scenario()
    text = "\n".join(explain_memory(sc, estimate_memory(sc)))
    assert "pending their NCCL reduce-scatter" in text and "0.54 GB" in text


def test_the_timeline_holds_the_pending_outputs() -> None:
    """The simulated trace keeps the pending blocks for the step, under buffers, as the
    reserved figure's cache does: its peak is the allocated figure's trace peak plus the
    pending bytes (a free host: 2 x 16 x b·s·h x 2 B)."""
    res, alloc = _scenario(), _scenario(memory_reported="allocated")
    tr, ta = simulate_scenario(res).timeline, simulate_scenario(alloc).timeline
    assert tr.peak_memory_bytes(0) - ta.peak_memory_bytes(0) == 2 * 16 * ROW_OUTPUT


def test_an_moe_block_pends_what_its_ffn_reduce_scatters() -> None:
    """An MoE block's attention output projection, plus its FFN's sequence-parallel
    reduce-scatters as costs.comm prices them: none with whole experts (expert-TP 1, the
    dispatcher's all-to-alls instead: EP 8), k·load b·s·h where the experts are split over the TP
    group (expert-TP = tp: Megatron-Core's dispatcher reduce-scatters its output). Mixtral's
    shape, 4 layers, top-2, balanced load, free host: 4 x (1 or 1 + 2) b·s·h x 2 B."""

    def pending(ep: int, etp: int) -> int:
        sc = parse_scenario({
            "name": "moe", "model": {"preset": "mixtral-8x7b", "layers": 4},
            "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 1, "gpus_per_node": 8},
            "runtime": {"name": "nanotron", "host_us_per_op": 0.0, "nccl_record_streams": True},
            "training": {"seq_len": 4096, "global_batch": 8, "micro_batch": 1,
                         "precision": "bf16_fp32_grads", "optimizer": "adamw"},
            "parallelism": {"tp": 8, "dp": 1, "ep": ep, "expert_tp": etp,
                            "sequence_parallel": True},
        }, "moe.yaml")  # fmt: skip
        return estimate_memory(sc).stages[0].pending_collective_bytes

    row = 4096 * 4096 * 2  # b x s x h in bf16, Mixtral's h 4096
    assert pending(8, 1) == 4 * row  # whole experts over EP 8 (folded over the TP group)
    assert pending(1, 8) == 4 * (1 + 2) * row  # experts split over the 8 TP ranks
