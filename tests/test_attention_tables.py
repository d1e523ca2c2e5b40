"""The FlashAttention kernel class: its fit on measured attention tables, the profile that ships
it, and its cost (``costs.attention_shape``, ``costs.compute.flash_core``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.gemm_tables import load_attention_tables
from simtrain.costs.attention_shape import causal_rows, fit_flash_rows_edge
from simtrain.costs.compute import FLASH_BACKWARD_FLOPS, block_flops, chunk_costs
from simtrain.errors import ConfigError
from simtrain.spec.hardware import load_hardware, parse_hardware
from simtrain.spec.scenario import parse_scenario


def test_fit_recovers_a_generated_rows_edge_exactly():
    """Efficiencies generated as e∞ / (1 + R / rows) give back R and e∞, error 0."""
    table = tuple((r, 0.55 / (1 + 40960 / r)) for r in (4096, 16384, 65536, 262144, 1 << 20))
    fit = fit_flash_rows_edge(table)
    assert fit.edge == 40960
    assert fit.efficiency == pytest.approx(0.55, rel=1e-12)
    assert fit.mape_pct == pytest.approx(0.0, abs=1e-9)
    assert fit.constant_mape_pct > 20


def test_fit_needs_two_shapes():
    with pytest.raises(ValueError, match="two"):
        fit_flash_rows_edge(((4096.0, 0.5),))


@pytest.mark.parametrize("table", [t for t in load_attention_tables() if t.profiles],
                         ids=lambda t: t.id)  # fmt: skip
def test_profiles_ship_the_fit_of_their_measured_table(table):
    """Each profile a table names carries the table's fitted R (grid of 1,024 rows) and e∞ (to
    the 4 decimals it is written with), for the table's direction."""
    fit = fit_flash_rows_edge(causal_rows(table.shapes))
    for name in table.profiles:
        hw = load_hardware(name)
        assert hw.compute_peak("bf16") == table.peak_tflops * 1e12, name  # the table's peak
        eff = hw.efficiency
        rate = getattr(eff, f"flash_{table.direction}")
        edge = getattr(eff, f"flash_{table.direction}_rows_edge")
        assert (edge, round(fit.efficiency, 4)) == (fit.edge, rate), name


def test_b200_tables_as_transcribed():
    """SimuMax's B200 sweep: 19 shapes per direction; the rows term halves the forward's
    kernel-time MAPE (26.0 -> 12.3 %) and cuts the backward's (14.2 -> 11.2 %)."""
    fits = {t.id: (len(t.shapes), fit_flash_rows_edge(causal_rows(t.shapes)))
            for t in load_attention_tables()}  # fmt: skip
    n, fwd = fits["simumax_b200_forward"]
    assert (n, fwd.edge, round(fwd.mape_pct, 1), round(fwd.constant_mape_pct, 1)) == (
        19, 55296, 12.3, 26.0)  # fmt: skip
    n, bwd = fits["simumax_b200_backward"]
    assert (n, bwd.edge, round(bwd.mape_pct, 1), round(bwd.constant_mape_pct, 1)) == (
        19, 9216, 11.2, 14.2)  # fmt: skip
    # a causal kernel does half the full count, so the table's 0.8715 (64 heads, s 4,096) is 0.43575
    table = next(t for t in load_attention_tables() if t.id == "simumax_b200_forward")
    assert table.shapes[0] == (1, 4096, 64, 8, 128, 128, 0.8715)
    assert causal_rows(table.shapes)[0] == (64 * 4096, 0.8715 / 2)


def _scenario(hardware: str = "b200_180gb", flash: bool = True, **training):
    return parse_scenario(
        {"name": "x", "hardware": hardware, "runtime": "megatron_core",
         "model": {"layers": 2, "hidden": 1024, "heads": 8, "ffn_hidden": 4096, "vocab": 1024,
                   "max_positions": 4096, "mlp": "swiglu", "bias": False,
                   "flash_attention": flash},
         "training": {"seq_len": 4096, "global_batch": 2, "micro_batch": 1, "precision": "bf16",
                      **training},
         "parallelism": {"dp": 1}}, "t.yaml")  # fmt: skip


def _without_flash(sc):
    hw = sc.hardware
    eff = replace(hw.efficiency, flash_forward=None, flash_backward=None)
    return replace(sc, hardware=replace(hw, efficiency=eff))


def _flash_ns(sc, direction: str) -> float:
    """One block's core worked by hand: causal FLOPs 4·b·s²·h / 2 (x 2.5 backward) at e∞,
    times 1 + R / (b·H·s)."""
    eff, peak = sc.hardware.efficiency, sc.hardware.compute_peak("bf16")
    causal = 4 * 1 * 4096 * 4096 * 1024 / 2
    rows = 1 * 8 * 4096
    if direction == "forward":
        return 1e9 * causal / (peak * eff.flash_forward) * (1 + eff.flash_forward_rows_edge / rows)
    return (1e9 * FLASH_BACKWARD_FLOPS * causal / (peak * eff.flash_backward)
            * (1 + eff.flash_backward_rows_edge / rows))  # fmt: skip


def _gemm_ns(sc, flops: float) -> float:
    return 1e9 * flops / (sc.hardware.compute_peak("bf16") * sc.hardware.efficiency.matmul)


def test_flash_core_replaces_the_cores_gemm_time_by_the_kernel_class():
    """Forward: the core's full count leaves the GEMM class for its FlashAttention time; input
    gradient: its 2 x core for the backward kernel's (2.5 x the forward's causal FLOPs); the
    weight gradient has no core and does not move."""
    sc = _scenario()
    core = block_flops(sc.model, sc.training).attention_core
    assert core == 4 * 4096 * 4096 * 1024
    with_fa, without = chunk_costs(sc, 1, False, False), chunk_costs(_without_flash(sc), 1, False,
                                                                     False)  # fmt: skip
    d_fwd = with_fa.forward_ns - without.forward_ns
    d_bwd = with_fa.input_grad_ns - without.input_grad_ns
    assert d_fwd == pytest.approx(_flash_ns(sc, "forward") - _gemm_ns(sc, core), abs=2)
    assert d_bwd == pytest.approx(_flash_ns(sc, "backward") - _gemm_ns(sc, 2 * core), abs=2)
    assert with_fa.weight_grad_ns == without.weight_grad_ns
    # the FLOP counts (MFU, HFU) are the model's, not the kernel's recompute
    assert (with_fa.forward_flops, with_fa.backward_flops) == (
        without.forward_flops, without.backward_flops)  # fmt: skip


def _causal_rate(heads: int, tp: int) -> float:
    """The forward's achieved causal FLOP/s over the B200's bf16 peak, through ``flash_core``,
    for Llama-3-70B-shaped attention (head dim 128, s 4,096, b 1) with ``heads`` / ``tp`` heads
    on the GPU."""
    from simtrain.costs.compute import flash_core, flash_kernel_flops

    sc = parse_scenario(
        {"name": "r", "hardware": "b200_180gb", "runtime": "megatron_core",
         "model": {"layers": 1, "hidden": 128 * heads, "heads": heads, "kv_heads": 8,
                   "ffn_hidden": 256 * heads, "vocab": 1024, "max_positions": 4096,
                   "flash_attention": True},
         "cluster": {"nodes": 1, "gpus_per_node": tp},
         "training": {"seq_len": 4096, "global_batch": 1, "micro_batch": 1, "precision": "bf16"},
         "parallelism": {"tp": tp}}, "r.yaml")  # fmt: skip
    t = sc.training
    bf = block_flops(sc.model, t, tp)
    fa = flash_core(sc, t, bf, "bf16", True)
    return flash_kernel_flops(bf.attention_core, t)[0] / (fa.forward_ns * 1e-9) / 2.25e15


def test_few_query_rows_underfill_the_gpu():
    """70B's 64 heads at s 4,096: 8 per GPU at tp 8 (32,768 query rows) run the flash forward at
    0.20 of peak, 32 at tp 2 at 0.37 (the figures README states), against e∞ 0.528 of an
    unboundedly parallel call: 0.5278 / (1 + 55,296 / rows)."""
    tp8, tp2 = _causal_rate(64, 8), _causal_rate(64, 2)
    assert (round(tp8, 2), round(tp2, 2)) == (0.20, 0.37)
    assert tp8 == pytest.approx(0.5278 / (1 + 55296 / 32768))
    assert tp2 == pytest.approx(0.5278 / (1 + 55296 / 131072))


def test_no_kernel_class_where_it_does_not_apply():
    """No flash attention in the model or an fp32 core: the core stays GEMM FLOPs and the costs
    are those of the profile without the class, to the nanosecond; a profile without a
    measured table has no class."""
    for sc in (_scenario(flash=False), _scenario(precision="fp32")):
        assert sc.hardware.efficiency.flash_forward
        assert chunk_costs(sc, 2, True, True) == chunk_costs(_without_flash(sc), 2, True, True)
    for name in ("h100_sxm5_80gb", "a100_sxm4_80gb", "h200_141gb"):
        assert load_hardware(name).efficiency.flash_forward is None, name


def _deltas(sc, layers: int = 1):
    a, b = chunk_costs(sc, layers, False, False), chunk_costs(_without_flash(sc), layers, False,
                                                              False)  # fmt: skip
    return (a.forward_ns - b.forward_ns, a.input_grad_ns - b.input_grad_ns,
            a.recompute_ns - b.recompute_ns)  # fmt: skip


def test_the_class_moves_every_path_alike():
    """Full recompute replays the forward's flash kernel (its delta = the forward's); FP8 keeps
    the core in bf16 (the same deltas as bf16); a linear probe, whose blocks pass no gradient,
    runs no flash backward; chunks of several layers move by that many times one's."""
    f, i, r = _deltas(_scenario())
    assert r == 0 and f != 0 and i != 0
    f_full, i_full, r_full = _deltas(_scenario(recompute="full"))
    assert (f_full, i_full) == (f, i) and r_full == pytest.approx(f, abs=2)
    assert _deltas(_scenario(precision="fp8_current"))[:2] == pytest.approx((f, i), abs=2)
    probe = _scenario(peft={"method": "linear_probe", "phase": "probe"})
    assert _deltas(probe)[1] == 0
    assert _deltas(_scenario(), layers=2)[:2] == pytest.approx((2 * f, 2 * i), abs=4)


def test_prefix_keys_are_seen_in_full():
    """Prefix tuning's p keys are seen by every query: causal FLOPs 4·b·s·H·d·(p + s/2) of the
    full count's 4·b·s·H·d·(s + p) (a causal kernel skips half of s, none of p)."""
    sc = _scenario(peft={"method": "prefix", "prefix_length": 1024})
    t = sc.training
    assert t.kv_len == 4096 + 1024
    from simtrain.costs.compute import flash_core

    bf = block_flops(sc.model, t)
    fa = flash_core(sc, t, bf, "bf16", True)
    eff, peak = sc.hardware.efficiency, sc.hardware.compute_peak("bf16")
    causal = 4 * 4096 * 1024 * (1024 + 4096 / 2)
    rows_f = 1 + eff.flash_forward_rows_edge / (8 * 4096)
    assert bf.attention_core == 4 * 4096 * 1024 * (4096 + 1024)
    assert fa.forward_ns == pytest.approx(1e9 * causal / (peak * eff.flash_forward) * rows_f)


def test_context_parallel_ring_hides_behind_the_flash_kernels():
    """CP across two nodes: the ring's messages hide behind the flash forward and, in backward,
    behind the flash backward kernel's own time (2.5 x the causal FLOPs at e_b), not twice the
    forward's as under the GEMM class."""
    from simtrain.costs import compute
    from simtrain.costs.cp import ring_layer

    sc = parse_scenario(
        {"name": "cp", "hardware": "b200_180gb", "runtime": "megatron_core",
         "model": {"preset": "llama3-8b", "layers": 1, "flash_attention": True},
         "cluster": {"nodes": 2, "gpus_per_node": 4},
         "training": {"seq_len": 65536, "global_batch": 1, "micro_batch": 1,
                      "precision": "bf16"},
         "parallelism": {"cp": 8}}, "cp.yaml")  # fmt: skip
    t = compute.cp_rank_training(sc.training, 8)
    bf = compute.chunk_block_flops(sc, 1, 0)
    fa = compute.flash_core(sc, t, bf, "bf16", True)
    assert abs(fa.backward_ns / fa.forward_ns - 2) > 0.1  # the two conventions differ here
    r = ring_layer(sc, fa.forward_ns, fa.backward_ns)
    # and so does what the ring leaves exposed in backward: the test tells them apart
    assert r.backward_exposed_ns != ring_layer(sc, fa.forward_ns).backward_exposed_ns
    ew_b = compute.memory_bound_ns(r.backward_elementwise_bytes, sc.hardware)
    ew_f = compute.memory_bound_ns(r.forward_elementwise_bytes, sc.hardware)
    got = compute._ring(sc, bf, 1, "bf16", fa)
    assert got[:2] == (r.forward_exposed_ns + ew_f, r.backward_exposed_ns + ew_b)
    assert ring_layer(sc, fa.forward_ns) == ring_layer(sc, fa.forward_ns, 2 * fa.forward_ns)


def test_selective_recompute_replays_the_flash_forward():
    sc = _scenario(recompute="selective")
    with_fa, without = chunk_costs(sc, 1, False, False), chunk_costs(_without_flash(sc), 1, False,
                                                                     False)  # fmt: skip
    core = block_flops(sc.model, sc.training).attention_core
    d_rec = with_fa.recompute_ns - without.recompute_ns
    assert d_rec == pytest.approx(_flash_ns(sc, "forward") - _gemm_ns(sc, core), abs=2)


@pytest.mark.parametrize(
    ("data", "key"),
    [({"flash_forward": 0.5}, "efficiency.flash_backward"),
     ({"flash_backward": 0.5}, "efficiency.flash_forward"),
     ({"flash_forward_rows_edge": 1024}, "efficiency.flash_forward_rows_edge"),
     ({"flash_forward": 2.5, "flash_backward": 0.5}, "efficiency.flash_forward")],
)  # fmt: skip
def test_bad_flash_keys_name_the_key(data, key):
    base = load_hardware("b200_180gb")
    raw = {"name": "g", "memory_gib": 80, "peak_tflops": {"fp32": 60, "bf16": 900},
           "hbm_bandwidth_gb_per_s": 3000, "gpus_per_node": 8,
           "intra_node": {"kind": "nvswitch", "bandwidth_gb_per_s": 450},
           "efficiency": {"matmul": 0.6, **data}}  # fmt: skip
    assert base.efficiency.flash_forward  # the shipped profile has the class
    with pytest.raises(ConfigError) as err:
        parse_hardware(raw, "g.yaml")
    assert key in str(err.value)
