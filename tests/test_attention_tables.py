"""The FlashAttention kernel class: its fit on measured attention tables, the profile that ships
it, and its cost (``costs.attention_shape``, ``costs.compute.flash_core``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.gemm_tables import (
    ATTENTION_TABLES_PATH,
    load_attention_tables,
)
from simtrain.costs.attention_shape import EDGE_GRIDS, fit_flash_edge, fit_head_dim_edge
from simtrain.costs.compute import (
    FLASH_BACKWARD_FLOPS,
    block_flops,
    chunk_costs,
    flash_core,
    head_dim_factor,
)
from simtrain.errors import ConfigError
from simtrain.spec.hardware import load_hardware, parse_hardware
from simtrain.spec.scenario import parse_scenario


def test_fit_recovers_a_generated_rows_edge_exactly():
    """Efficiencies generated as e∞ / (1 + R / rows) give back R and e∞, error 0."""
    table = tuple((r, 0.55 / (1 + 40960 / r)) for r in (4096, 16384, 65536, 262144, 1 << 20))
    fit = fit_flash_edge(table)
    assert fit.edge == 40960
    assert fit.efficiency == pytest.approx(0.55, rel=1e-12)
    assert fit.mape_pct == pytest.approx(0.0, abs=1e-9)
    assert fit.constant_mape_pct > 20


def test_fit_needs_two_shapes():
    with pytest.raises(ValueError, match="two"):
        fit_flash_edge(((4096.0, 0.5),))


def test_fit_recovers_a_generated_seq_edge_exactly():
    """Rates generated as e∞ / (1 + S / s) over the lengths of the FlashAttention-3 paper's
    sweep give back S (grid of 8 tokens) and e∞."""
    table = tuple((float(s), 0.35 / (1 + 376 / s)) for s in (512, 1024, 2048, 4096, 8192, 16384))
    fit = fit_flash_edge(table, EDGE_GRIDS["seq"])
    assert (fit.edge, fit.mape_pct) == (376, pytest.approx(0.0, abs=1e-9))
    assert fit.efficiency == pytest.approx(0.35, rel=1e-12)


#: Profiles of the measured GPU at a lower power limit: the same chip at a lower sustained clock,
#: whose kernels keep their fraction of its own (lower) peak (the profile's [pwr] source).
#: Its bf16 peak: the midpoint of the NVL's 835.5 and the SXM5's 989.4 dense TFLOP/s.
OWN_PEAK = {"h100_sxm5_96gb_hbm2e": (835.5 + 989.4) / 2 * 1e12,
            "h100_pcie_80gb": 1513 / 2 * 1e12,  # the H100 datasheet's PCIe column, sparse / 2
            "h100_nvl_94gb": 1671 / 2 * 1e12}  # its NVL column  # fmt: skip


def test_a_power_limited_part_keeps_the_fractions_of_its_own_peak():
    for name, peak in OWN_PEAK.items():
        hw = load_hardware(name)
        assert hw.compute_peak("bf16") == peak
        assert hw.flash_class("fa2") == load_hardware("h100_sxm5_80gb").flash_class("fa2")


TABLES = {t.id: t for t in load_attention_tables()}


def _fit_all(tables):
    """Every table's AttentionTable.fit by id, a head-dim table against its reference."""
    by_id = {t.id: t for t in tables}
    return {t.id: t.fit(by_id.get(t.reference)) for t in tables}


@pytest.mark.parametrize("table", [t for t in TABLES.values() if t.profiles], ids=lambda t: t.id)
def test_profiles_ship_the_fit_of_their_measured_table(table):
    """Each profile a table names carries, in its class of the table's kernel, the table's
    fitted edge (on the grid of the variable the table sweeps) and e∞ (to the 4 decimals it is
    written with) for the table's direction, and 0 for the length-or-rows edge the table does
    not sweep (a head-dim table: its reference's e∞, and D)."""
    fit = table.fit(TABLES.get(table.reference))
    other = {"rows": "seq", "seq": "rows", "head_dim": "rows"}[table.edge]
    for name in table.profiles:
        hw = load_hardware(name)
        if name not in OWN_PEAK:
            assert hw.compute_peak("bf16") == table.peak_tflops * 1e12, name  # the table's peak
        cls = hw.flash_class(table.kernel)
        d = table.direction
        assert (getattr(cls, f"{d}_{table.edge}_edge"), getattr(cls, d)) == (
            fit.edge, round(fit.efficiency, 4)), name  # fmt: skip
        assert getattr(cls, f"{d}_{other}_edge") == 0, name


def test_a_class_without_a_head_dim_table_prices_every_head_dim_alike():
    """D is fitted where a head-dim table names the profile (FlashAttention-2 on the H100s);
    every other class keeps D = 0."""
    fitted = {(p, t.kernel, t.direction) for t in TABLES.values() if t.edge == "head_dim"
              for p in t.profiles}  # fmt: skip
    assert {k for _, k, _ in fitted} == {"fa2"}
    for name in ("b200_180gb", "h100_sxm5_80gb", "h800_sxm5_80gb"):
        hw = load_hardware(name)
        for cls in hw.attention_kernels:
            for d in ("forward", "backward"):
                if (name, cls.kernel, d) not in fitted:
                    assert getattr(cls, f"{d}_head_dim_edge") == 0, (name, cls.kernel, d)


def test_b200_tables_as_transcribed():
    """SimuMax's B200 sweep: 19 shapes per direction; the rows term halves the forward's
    kernel-time MAPE (26.0 -> 12.3 %) and cuts the backward's (14.2 -> 11.2 %)."""
    fitted = _fit_all(list(TABLES.values()))
    fits = {k: (len(TABLES[k].shapes), f) for k, f in fitted.items()}
    n, fwd = fits["simumax_b200_forward"]
    assert (n, fwd.edge, round(fwd.mape_pct, 1), round(fwd.constant_mape_pct, 1)) == (
        19, 55296, 12.3, 26.0)  # fmt: skip
    n, bwd = fits["simumax_b200_backward"]
    assert (n, bwd.edge, round(bwd.mape_pct, 1), round(bwd.constant_mape_pct, 1)) == (
        19, 9216, 11.2, 14.2)  # fmt: skip
    # a causal kernel does half the full count, so the table's 0.8715 (64 heads, s 4,096) is 0.43575
    table = next(t for t in load_attention_tables() if t.id == "simumax_b200_forward")
    assert table.shapes[0] == (1, 4096, 64, 8, 128, 128, 0.8715)
    assert table.rates()[0] == (64 * 4096, 0.8715 / 2)


def test_h100_tables_as_transcribed():
    """The FlashAttention-3 paper's H100 bars: the short-sequence edge S explains the length
    sweep within 2.1 % of kernel time for each kernel and direction, against 9.9-16.1 % for one
    rate; at 16k FlashAttention-2's causal forward runs at 335 / 989.4 = 0.34 of peak,
    cuDNN's at 0.54, FlashAttention-3's at 0.62."""
    tables = TABLES
    fits = _fit_all(list(tables.values()))
    for k in ("fa2", "cudnn", "fa3"):
        for d in ("forward", "backward"):
            f = fits[f"fa3paper_h100_{k}_{d}"]
            assert f.mape_pct < 2.1 and 9.9 < f.constant_mape_pct < 16.2, (k, d)
    fwd = tables["fa3paper_h100_fa2_forward"]
    assert fwd.rates()[-1] == (16384.0, 335 / 989.4)
    assert (fits["fa3paper_h100_fa2_forward"].edge, fits["fa3paper_h100_fa2_backward"].edge) == (
        376, 272)  # fmt: skip
    assert not tables["fa3paper_h100_fa2_backward"].causal  # the paper's backward is unmasked


#: The H100 SXM5's matmul and special-function (exponential) rates, FlashAttention-3 §3.1: "989
#: TFLOPS of FP16 matmul but only 3.9 TFLOPS of special functions". A score costs the forward
#: 4·d matmul FLOPs and one exponential (the backward 2.5 x those FLOPs for one again):
#: unhidden, the exponentials add (989 / 3.9) / (4·d) of the matmul time, D = 989 / (4 x 3.9)
#: = 63.4 head-dim elements forward, 25.4 backward.
H100_UNHIDDEN_EXP_EDGE = {"forward": 989 / (4 * 3.9),
                          "backward": 989 / (4 * FLASH_BACKWARD_FLOPS * 3.9)}  # fmt: skip


def test_head_dim_64_charts_set_the_head_dim_edge():
    """The head-dim-64 FlashAttention-2 charts: the head-dim-128 class prices them 8-14 % too
    fast (one ratio per bar: 0.87-0.93 of its rate), with the fitted D within 1 % of kernel time
    (MAPE 0.59 % forward, 0.46 % backward); D (18, 13) between 0 and the bound of exponentials
    the matmuls do not hide at all (63 forward, 25 backward)."""
    cls = load_hardware("h100_sxm5_80gb").flash_class("fa2")
    for d, rate in (("forward", cls.forward), ("backward", cls.backward)):
        t = TABLES[f"fa3paper_h100_fa2_{d}_d64"]
        seq_edge, dim_edge = getattr(cls, f"{d}_seq_edge"), getattr(cls, f"{d}_head_dim_edge")
        ratios = [r / (rate / (1 + seq_edge / s)) for s, r in t.rates()]
        assert all(0.87 < x < 0.93 for x in ratios), (d, ratios)
        priced = [rate / ((1 + seq_edge / s) * head_dim_factor(dim_edge, 64)) for s, _ in t.rates()]
        mape = (
            100
            * sum(abs(r / p - 1) for (_, r), p in zip(t.rates(), priced, strict=True))
            / len(priced)
        )
        assert mape < 1.0, (d, mape)
        assert 0 < dim_edge < H100_UNHIDDEN_EXP_EDGE[d], d
    assert (cls.forward_head_dim_edge, cls.backward_head_dim_edge) == (18, 13)


def test_head_dim_factor_by_hand():
    """(1 + D/d) / (1 + D/128): D 18 at d 64 is 1.28125 / 1.140625; 1 at and above 128 (not
    measured there), and with D = 0."""
    assert head_dim_factor(18, 64) == pytest.approx(1.28125 / 1.140625, rel=1e-15)
    assert head_dim_factor(18, 128) == head_dim_factor(18, 256) == head_dim_factor(0, 64) == 1.0
    assert head_dim_factor(18, 32) > head_dim_factor(18, 64) > head_dim_factor(18, 96) > 1


def test_head_dim_fit_recovers_a_generated_edge_exactly():
    """Rates generated at head dim 64 as e∞ / ((1 + S / s) · factor(D = 21)) give back D = 21
    with e∞ and S held, error 0; D = 0 (the reference class unchanged) misses them."""
    e, seq_edge = 0.35, 376
    pairs = tuple((float(s), e / ((1 + seq_edge / s) * head_dim_factor(21, 64)))
                  for s in (512, 2048, 16384))  # fmt: skip
    fit = fit_head_dim_edge(tuple((1 + seq_edge / s, r) for s, r in pairs), 64, e)
    assert (fit.edge, fit.efficiency) == (21, e)
    assert fit.mape_pct == pytest.approx(0.0, abs=1e-9) and fit.constant_mape_pct > 5
    with pytest.raises(ValueError, match="not below"):
        fit_head_dim_edge(pairs, 128, e)
    with pytest.raises(ValueError, match="reference table"):
        TABLES["fa3paper_h100_fa2_forward_d64"].fit()


@pytest.mark.parametrize(("old", "new", "key"), [
    # another kernel's table, a missing one: the key and the tables it may name
    ("reference: fa3paper_h100_fa2_forward\n", "reference: fa3paper_h100_fa3_forward\n",
     "fa3paper_h100_fa2_forward_d64.reference"),
    ("reference: fa3paper_h100_fa2_forward\n", "reference: nope\n",
     "fa3paper_h100_fa2_forward_d64.reference"),
    # a head-dim table at the reference head dim
    ("- [32, 512, 32, 32, 64, 64, 180]", "- [32, 512, 32, 32, 128, 128, 180]",
     "fa3paper_h100_fa2_forward_d64.shapes"),
    # the reference not at head dim 128
    ("- [32, 512, 16, 16, 128, 128, 191]", "- [32, 512, 16, 16, 96, 96, 191]",
     "fa3paper_h100_fa2_forward.shapes"),
    # a reference on a table that does not fit D
    ("  kernel: fa2\n  edge: seq\n", "  kernel: fa2\n  edge: seq\n  reference: x\n",
     "fa3paper_h100_fa2_forward.reference"),
])  # fmt: skip
def test_a_head_dim_table_must_name_its_reference(tmp_path, old, new, key):
    text = ATTENTION_TABLES_PATH.read_text()
    assert old in text
    bad = tmp_path / "attention_tables.yaml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_attention_tables(bad)
    if key.endswith("reference") and "edge: seq" not in new:
        assert "fa3paper_h100_fa2_forward" in str(err.value)  # the allowed table is listed


def test_flash_core_prices_a_64_wide_head_by_the_head_dim_edge():
    """A Llama-3.2-1B-shaped head (64 wide) on the H100 under FlashAttention-2: each direction's
    kernel time is the 128-wide head's (same FLOPs: twice the heads) x factor(D, 64); under
    cuDNN (D = 0) the two are equal."""

    def core(heads: int, runtime: str):
        sc = _scenario("h100_sxm5_80gb", runtime=runtime)
        sc = replace(sc, model=replace(sc.model, heads=heads))
        return flash_core(sc, sc.training, block_flops(sc.model, sc.training), "bf16", True)

    cls = load_hardware("h100_sxm5_80gb").flash_class("fa2")
    narrow, wide = core(16, "pytorch_eager"), core(8, "pytorch_eager")
    assert narrow.forward_flops == wide.forward_flops
    assert narrow.forward_ns == pytest.approx(
        wide.forward_ns * head_dim_factor(cls.forward_head_dim_edge, 64), rel=1e-12)  # fmt: skip
    assert narrow.backward_ns == pytest.approx(
        wide.backward_ns * head_dim_factor(cls.backward_head_dim_edge, 64), rel=1e-12)  # fmt: skip
    assert core(16, "megatron_core").forward_ns == core(8, "megatron_core").forward_ns


def _scenario(hardware: str = "b200_180gb", flash: bool = True, runtime="megatron_core",
              **training):  # fmt: skip
    return parse_scenario(
        {"name": "x", "hardware": hardware, "runtime": runtime,
         "model": {"layers": 2, "hidden": 1024, "heads": 8, "ffn_hidden": 4096, "vocab": 1024,
                   "max_positions": 4096, "mlp": "swiglu", "bias": False,
                   "flash_attention": flash},
         "training": {"seq_len": 4096, "global_batch": 2, "micro_batch": 1, "precision": "bf16",
                      **training},
         "parallelism": {"dp": 1}}, "t.yaml")  # fmt: skip


def _without_flash(sc):
    return replace(sc, hardware=replace(sc.hardware, attention_kernels=()))


def _flash_ns(sc, direction: str) -> float:
    """One block's core worked by hand: causal FLOPs 4·b·s²·h / 2 (x 2.5 backward) at e∞,
    times (1 + R / (b·H·s)) (1 + S / s), in the class of the kernel the runtime calls."""
    cls = sc.hardware.flash_class(sc.runtime.attention_kernel)
    peak = sc.hardware.compute_peak("bf16")
    causal = 4 * 1 * 4096 * 4096 * 1024 / 2
    rows, s = 1 * 8 * 4096, 4096
    if direction == "forward":
        return (1e9 * causal / (peak * cls.forward) * (1 + cls.forward_rows_edge / rows)
                * (1 + cls.forward_seq_edge / s))  # fmt: skip
    return (1e9 * FLASH_BACKWARD_FLOPS * causal / (peak * cls.backward)
            * (1 + cls.backward_rows_edge / rows) * (1 + cls.backward_seq_edge / s))  # fmt: skip


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
        assert sc.hardware.attention_kernels
        assert chunk_costs(sc, 2, True, True) == chunk_costs(_without_flash(sc), 2, True, True)
    for name in ("a100_sxm4_80gb", "gb200_nvl72", "mi300x_192gb"):
        assert load_hardware(name).attention_kernels == (), name


def test_the_h200s_carry_the_h100s_classes():
    """The H200 is the H100 SXM5's GH100 die at the same 700 W: both H200 profiles carry the
    H100 SXM5's classes (hardware/h200_141gb.yaml [fa3]) unchanged."""
    h100 = load_hardware("h100_sxm5_80gb").attention_kernels
    assert {c.kernel for c in h100} == {"fa2", "cudnn", "fa3"}
    for name in ("h200_141gb", "h200_141gb_hgx4"):
        assert load_hardware(name).attention_kernels == h100, name


def test_the_runtime_picks_the_kernel_class():
    """The same H100 step under each kernel: the core's time follows the kernel's class
    (FlashAttention-2 slowest, FlashAttention-3 fastest, as the paper's bars); a kernel the
    profile has no class for (fa2 on the B200: no FlashAttention-2 sweep measured there) is
    priced as GEMM FLOPs, to the nanosecond."""
    fwd = {}
    for k in ("fa2", "cudnn", "fa3"):
        sc = _scenario("h100_sxm5_80gb", runtime={"name": "megatron_core", "attention_kernel": k})
        assert sc.runtime.attention_kernel == k
        fwd[k] = chunk_costs(sc, 1, False, False).forward_ns
        d_fwd = fwd[k] - chunk_costs(_without_flash(sc), 1, False, False).forward_ns
        core = block_flops(sc.model, sc.training).attention_core
        assert d_fwd == pytest.approx(_flash_ns(sc, "forward") - _gemm_ns(sc, core), abs=2)
    assert fwd["fa2"] > fwd["cudnn"] > fwd["fa3"]
    b200 = _scenario(runtime={"name": "megatron_core", "attention_kernel": "fa2"})
    assert b200.hardware.flash_class("fa2") is None
    assert chunk_costs(b200, 2, True, True) == chunk_costs(_without_flash(b200), 2, True, True)


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
    cls, peak = sc.hardware.flash_class("cudnn"), sc.hardware.compute_peak("bf16")
    causal = 4 * 4096 * 1024 * (1024 + 4096 / 2)
    rows_f = 1 + cls.forward_rows_edge / (8 * 4096)
    assert bf.attention_core == 4 * 4096 * 1024 * (4096 + 1024)
    assert fa.forward_ns == pytest.approx(1e9 * causal / (peak * cls.forward) * rows_f)


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
    [({"attention_kernels": {"fa2": {"forward": 0.5}}}, "attention_kernels.fa2.backward"),
     ({"attention_kernels": {"fa2": {"backward": 0.5}}}, "attention_kernels.fa2.forward"),
     ({"attention_kernels": {"fa4": {"forward": 0.5, "backward": 0.5}}}, "attention_kernels.fa4"),
     ({"attention_kernels": {"fa2": {"forward": 2.5, "backward": 0.5}}},
      "attention_kernels.fa2.forward"),
     ({"attention_kernels": {"fa2": {"forward": 0.5, "backward": 0.5, "seq_edge": 1}}},
      "attention_kernels.fa2.seq_edge"),
     ({"attention_kernels": {"fa2": {"forward": 0.5, "backward": 0.5,
                                     "forward_seq_edge": -1}}},
      "attention_kernels.fa2.forward_seq_edge"),
     ({"attention_kernels": ["fa2"]}, "attention_kernels"),
     ({"efficiency": {"matmul": 0.6, "flash_forward": 0.5}}, "efficiency.flash_forward")],
)  # fmt: skip
def test_bad_flash_keys_name_the_key(data, key):
    from simtrain.spec.hardware import HARDWARE_DIR
    from simtrain.spec.yamlfile import load_yaml

    base = load_yaml(HARDWARE_DIR / "b200_180gb.yaml")
    assert parse_hardware(base, "g.yaml").attention_kernels  # loads as shipped
    with pytest.raises(ConfigError) as err:
        parse_hardware({**base, **data}, "g.yaml")
    assert key in str(err.value)


def test_unknown_attention_kernel_lists_the_kernels():
    with pytest.raises(ConfigError) as err:
        _scenario(runtime={"name": "torchtitan", "attention_kernel": "flash"})
    assert "runtime.attention_kernel" in str(err.value) and "fa2 | fa3 | cudnn" in str(err.value)


def test_short_sequence_edge_counts_a_prefix_twice():
    """The H100's FlashAttention-2 class (S > 0) under prefix tuning: a causal call over s
    queries and a P-key prefix does FLOPs ∝ s·(s/2 + P) and fixed work ∝ s·S/2 per call, so
    its factor is 1 + S / (s + 2P), worked here for s 512, P 256 against the kernel-time
    formula written out."""
    from simtrain.costs.compute import flash_core

    sc = parse_scenario(
        {"name": "p", "hardware": "h100_sxm5_80gb", "runtime": "torchtitan",
         "model": {"layers": 1, "hidden": 1024, "heads": 8, "ffn_hidden": 4096, "vocab": 1024,
                   "max_positions": 1024, "flash_attention": True},
         "training": {"seq_len": 512, "global_batch": 1, "micro_batch": 1,
                      "precision": "bf16", "peft": {"method": "prefix", "prefix_length": 256}},
         "parallelism": {"dp": 1}}, "p.yaml")  # fmt: skip
    t = sc.training
    cls, peak = sc.hardware.flash_class("fa2"), sc.hardware.compute_peak("bf16")
    assert cls.forward_seq_edge > 0 and cls.forward_rows_edge == 0
    fa = flash_core(sc, t, block_flops(sc.model, t), "bf16", True)
    causal = 4 * 512 * 1024 * (256 + 512 / 2)  # b·s·H·d·(P + s/2) x 4
    want = 1e9 * causal / (peak * cls.forward) * (1 + cls.forward_seq_edge / (512 + 2 * 256))
    assert fa.forward_ns == pytest.approx(want, rel=1e-12)


def test_run_table_says_how_the_attention_core_is_priced():
    """`simtrain run` names the kernel class that priced a flash model's attention, or says
    it was priced as GEMM FLOPs where the GPU has no class of the runtime's kernel."""
    from simtrain.report.tables import attention_line

    h100 = _scenario("h100_sxm5_80gb")
    assert attention_line(h100) == "attention        cudnn kernel class of h100_sxm5_80gb"
    narrow = _scenario("h100_sxm5_80gb", runtime="pytorch_eager")
    narrow = replace(narrow, model=replace(narrow.model, heads=16))  # head dim 64, fa2 (D > 0)
    assert attention_line(narrow) == (
        "attention        fa2 kernel class of h100_sxm5_80gb (head dim 64: x1.123 forward, "
        "x1.092 backward of its 128-wide rate)")  # fmt: skip
    wide = replace(narrow, model=replace(narrow.model, heads=4))  # head dim 256
    assert attention_line(wide).endswith("(head dim 256 priced as 128: not measured above it)")
    a100 = _scenario("a100_sxm4_80gb", runtime="torchtitan")
    assert attention_line(a100).startswith("attention        fa2: no class in a100_sxm4_80gb")
    fp32 = _scenario("h100_sxm5_80gb", precision="fp32")
    assert attention_line(fp32).startswith("attention        fp32: FlashAttention runs in 16-bit")
    # the line and the cost model take one decision: no class priced the fp32 core
    from simtrain.costs.compute import flash_core

    t = fp32.training
    assert flash_core(fp32, t, block_flops(fp32.model, t), "fp32", True) is None
    assert flash_core(h100, h100.training, block_flops(h100.model, h100.training), "bf16", True)


def test_short_sequence_edge_is_per_ring_step_under_context_parallelism():
    """cp 4 on an H100 (FlashAttention-2 class, S > 0): each ring step is its own kernel call
    over the rank's s/cp = 2,048 queries and as many keys, so the forward's factor is
    1 + S / 2,048 on the rank's causal FLOPs (a quarter of the sequence's queries seeing half
    of its 8,192 keys on average: 4·(s/cp)·H·d·(s/2)), worked here by hand."""
    from simtrain.costs.compute import cp_rank_training, flash_core

    sc = parse_scenario(
        {"name": "c", "hardware": "h100_sxm5_80gb", "runtime": "torchtitan",
         "model": {"layers": 1, "hidden": 1024, "heads": 8, "ffn_hidden": 4096, "vocab": 1024,
                   "max_positions": 8192, "flash_attention": True},
         "cluster": {"nodes": 1, "gpus_per_node": 4},
         "training": {"seq_len": 8192, "global_batch": 1, "micro_batch": 1,
                      "precision": "bf16"},
         "parallelism": {"cp": 4}}, "c.yaml")  # fmt: skip
    t = cp_rank_training(sc.training, 4)
    cls, peak = sc.hardware.flash_class("fa2"), sc.hardware.compute_peak("bf16")
    fa = flash_core(sc, t, block_flops(sc.model, t), "bf16", True)
    causal = 4 * 2048 * 1024 * 8192 / 2
    want = 1e9 * causal / (peak * cls.forward) * (1 + cls.forward_seq_edge / 2048)
    assert fa.forward_ns == pytest.approx(want, rel=1e-12)
