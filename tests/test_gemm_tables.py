"""The GEMM shape term: its fit on measured GEMM tables, the profiles that ship it, its cost."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.validate.gemm_tables import (
    EDGE_GRID,
    fit_gemm_edge,
    load_gemm_tables,
    shape_factor,
)
from simtrain.costs.compute import chunk_costs, dense_linear_gemms, gemm_edge
from simtrain.errors import ConfigError
from simtrain.spec.hardware import load_hardware, parse_hardware
from simtrain.spec.model import preset
from simtrain.spec.scenario import parse_scenario


def test_fit_recovers_a_generated_shape_term_exactly():
    """Efficiencies generated as e∞ / (1 + L/M + L/N + L/K) give back L and e∞, error 0."""
    shapes = [(m, n, k) for m in (512, 4096) for n in (256, 2048, 16384) for k in (128, 1024, 8192)]
    table = tuple((m, n, k, 0.8 / shape_factor(170, m, n, k)) for m, n, k in shapes)
    fit = fit_gemm_edge(table)
    assert fit.edge_elements == 170
    assert fit.efficiency == pytest.approx(0.8, rel=1e-12)
    assert fit.mape_pct == pytest.approx(0.0, abs=1e-9)
    assert fit.constant_mape_pct > 10  # one efficiency for all cannot meet a 4x spread


def test_fit_of_constant_efficiencies_is_no_term():
    table = tuple((m, 1024, 1024, 0.6) for m in (256, 1024, 4096))
    fit = fit_gemm_edge(table)
    assert (fit.edge_elements, fit.efficiency, fit.mape_pct) == (0.0, pytest.approx(0.6), 0.0)


def test_fit_needs_two_shapes():
    with pytest.raises(ValueError, match="two"):
        fit_gemm_edge(((1024, 1024, 1024, 0.7),))


def test_constant_efficiency_is_the_weighted_median_minimiser():
    """For L = 0 the fitted e∞ minimises the mean |e_i/e∞ − 1| (checked by a fine scan)."""
    table = tuple((1024, 1024, 1024, e) for e in (0.5, 0.6, 0.62, 0.7, 0.75))
    fit = fit_gemm_edge(table, grid=(0,))

    def mape(c: float) -> float:
        return 100 * sum(abs(e / c - 1) for *_, e in table) / len(table)

    assert fit.mape_pct == pytest.approx(mape(fit.efficiency))
    assert all(mape(fit.efficiency) <= mape(c / 1000) + 1e-12 for c in range(400, 900))


@pytest.mark.parametrize("table", load_gemm_tables(), ids=lambda t: t.id)
def test_profiles_ship_the_fit_of_their_measured_table(table):
    """Each profile a table names carries the table's fitted L (grid 10 elements), and the term
    fits the table at least as well as one efficiency for every shape."""
    fit = fit_gemm_edge(table.shapes)
    assert fit.mape_pct <= fit.constant_mape_pct
    assert fit.edge_elements in EDGE_GRID
    for name in table.profiles:
        assert load_hardware(name).efficiency.gemm_edge_elements == fit.edge_elements, name


def test_measured_tables_as_transcribed():
    """The A100 table (SimuMax a100_pcie.json) fits L = 140 at MAPE 4.68 % vs 5.76 % for a
    constant; the B200 table L = 40 at 10.42 % vs 10.52 % (whose e∞ the B200 profile ships)."""
    fits = {t.id: (len(t.shapes), fit_gemm_edge(t.shapes)) for t in load_gemm_tables()}
    n, a100 = fits["simumax_a100"]
    assert (n, a100.edge_elements) == (183, 140)
    assert (round(a100.mape_pct, 2), round(a100.constant_mape_pct, 2)) == (4.68, 5.76)
    n, b200 = fits["simumax_b200"]
    assert (n, b200.edge_elements) == (514, 40)
    assert round(b200.efficiency, 3) == load_hardware("b200_180gb").efficiency.matmul


def test_gemm_edge_closed_form_and_symmetry():
    assert gemm_edge(100, 200, 400) == pytest.approx(
        2 * 100 * 200 * 400 * (1 / 100 + 1 / 200 + 1 / 400)
    )
    # forward (T x in) @ (in x out), input grad (T x out) @ (out x in), weight grad (in x T) @ (T x out)
    assert gemm_edge(4096, 1536, 512) == gemm_edge(4096, 512, 1536) == gemm_edge(512, 1536, 4096)
    assert gemm_edge(0, 1536, 512) == gemm_edge(4096, 0, 512) == 0.0  # a width TP split to nothing


def test_dense_linear_gemms_fuse_qkv_and_gate_up_and_split_by_tp():
    m = preset("llama3-8b")
    h, kv, f = m.hidden, m.kv_dim, m.ffn_hidden
    assert (h, kv, f) == (4096, 1024, 14336)
    # (N, K) per GEMM on one of 4 TP ranks: fused QKV and gate/up column-parallel, O and down row
    assert dense_linear_gemms(m, 4) == ((1536, 4096), (4096, 1024), (7168, 4096), (4096, 3584))


def _scenario(hardware):
    return parse_scenario(
        {"name": "x", "hardware": hardware,
         "model": {"layers": 2, "hidden": 512, "heads": 8, "ffn_hidden": 2048, "vocab": 1024,
                   "max_positions": 512},
         "training": {"seq_len": 512, "global_batch": 2, "micro_batch": 1},
         "parallelism": {"dp": 1}}, "t.yaml")  # fmt: skip


def test_shape_term_adds_l_times_edge_to_the_gemm_time():
    """Forward time with L minus without = L x Σ gemm_edge of the block's linears (and the
    head's) / (peak x matmul): the closed form of 2·M·N·K·(L/M + L/N + L/K) per GEMM."""
    base = _scenario("a100_sxm4_80gb")
    hw = base.hardware
    flat = replace(
        base, hardware=replace(hw, efficiency=replace(hw.efficiency, gemm_edge_elements=0.0))
    )
    with_l = chunk_costs(base, 2, True, True)
    without = chunk_costs(flat, 2, True, True)
    t = 512
    edge = 2 * sum(gemm_edge(t, n, k) for n, k in dense_linear_gemms(base.model, 1))
    edge += gemm_edge(t, 1024, 512)  # the LM head: N = V, K = h
    rate = hw.compute_peak("bf16") * hw.efficiency.matmul
    extra_ns = 1e9 * hw.efficiency.gemm_edge_elements * edge / rate
    assert with_l.forward_ns - without.forward_ns == pytest.approx(extra_ns, abs=2)
    assert with_l.weight_grad_ns - without.weight_grad_ns == pytest.approx(extra_ns, abs=2)
    assert with_l.forward_flops == without.forward_flops  # FLOPs (MFU) keep the model's count


def test_gemm_edge_key_is_validated():
    data = {"name": "g", "display_name": "G", "memory_gib": 80, "peak_tflops": {"fp32": 20},
            "hbm_bandwidth_gb_per_s": 2000, "gpus_per_node": 8,
            "intra_node": {"kind": "nvswitch", "bandwidth_gb_per_s": 300, "latency_us": 2},
            "pcie_bandwidth_gb_per_s": 32, "nic_bandwidth_gbit_per_s": 200,
            "inter_node_latency_us": 5, "cuda_context_mib": 500, "host_memory_gib": 1000,
            "cpu_adam_params_per_s": 1e9,
            "efficiency": {"matmul": 0.7, "gemm_edge_elements": -1}}  # fmt: skip
    with pytest.raises(ConfigError, match="gemm_edge_elements"):
        parse_hardware(data, "g.yaml")
    data["efficiency"]["gemm_edge_elements"] = 128
    assert parse_hardware(data, "g.yaml").efficiency.gemm_edge_elements == 128
