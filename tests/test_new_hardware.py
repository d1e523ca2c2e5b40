"""Blackwell (B200, B300, GB200 NVL72, GB300 NVL72) and CDNA 3/4 (MI325X, MI355X) profiles: their
datasheet numbers (each profile's header names the documents), NCCL's Blackwell row, and an NVL72
rack as one 72-GPU NVLink domain in simtrain's placement."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from simtrain.layout.placement import Groups, Placement
from simtrain.layout.step import resolve
from simtrain.spec.hardware import GB, MIB, load_hardware
from simtrain.spec.scenario import parse_scenario

T = 1e12


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12)


# --------------------------------------------------------------------------- datasheet numbers


@pytest.mark.parametrize(
    ("name", "bf16", "fp8", "fp4", "tf32", "mem_gb", "nic_gbit"),
    [
        # HGX B200: 36 PF BF16, 72 PF FP8, 144 PF FP4, 18 PF TF32 (8 GPUs, sparse) / 8 / 2
        ("b200_180gb", 2250, 4500, 9000, 1125, 180, 400),
        # GB200 NVL72: 360 PF BF16, 720 PF FP8, 1,440 PF FP4, 180 PF TF32 (72 GPUs, sparse) / 72 / 2
        ("gb200_nvl72", 2500, 5000, 10000, 1250, 186, 400),
        # HGX B300: FP4 108 PF dense / 8; the rest as B200
        ("b300_288gb", 2250, 4500, 13500, 1125, 288, 800),
        # GB300 NVL72: FP4 1,080 PF dense / 72; the rest as GB200
        ("gb300_nvl72", 2500, 5000, 15000, 1250, 288, 800),
    ],
)  # fmt: skip
def test_blackwell_datasheet_numbers(name: str, bf16: float, fp8: float, fp4: float, tf32: float,
                                     mem_gb: int, nic_gbit: int) -> None:  # fmt: skip
    hw = load_hardware(name)
    assert hw.peak("bf16") == approx(bf16 * T) and hw.peak("fp16") == approx(bf16 * T)
    assert hw.peak("fp8") == approx(fp8 * T)
    assert hw.peak("mxfp8") == hw.peak("fp8")  # MXFP8 at the FP8 rate
    assert hw.peak("nvfp4") == approx(fp4 * T) and hw.peak("mxfp4") == hw.peak("nvfp4")
    assert hw.peak("tf32") == approx(tf32 * T)
    assert hw.peak("fp8") == 2 * hw.peak("bf16")
    assert hw.hbm_bandwidth_bytes_per_s == approx(8000 * GB)
    # NVLink 5: 1.8 TB/s bidirectional per GPU
    assert hw.intra_node_kind == "nvswitch"
    assert hw.intra_node_bandwidth_bytes_per_s == approx(900 * GB)
    assert hw.nic_bandwidth_bytes_per_s == approx(nic_gbit * 1e9 / 8)
    # Marketed GB, CUDA-visible GiB: within 1 % below the datasheet figure read as GiB.
    assert 0.98 * mem_gb * 2**30 <= hw.memory_bytes <= mem_gb * 2**30
    assert (hw.gpu_arch, hw.nvls) == ("blackwell", True)


def test_b200_memory_is_the_cuda_visible_figure() -> None:
    assert load_hardware("b200_180gb").memory_bytes == 182642 * MIB


def test_nvl72_is_one_72_gpu_nvlink_domain() -> None:
    for name in ("gb200_nvl72", "gb300_nvl72"):
        hw = load_hardware(name)
        assert hw.gpus_per_node == 72
        # 9 NVLink Switch trays x 14.4 TB/s = 129.6 TB/s ~ 72 x 1.8 TB/s ("130 TB/s")
        assert 72 * 2 * hw.intra_node_bandwidth_bytes_per_s == approx(9 * 14.4e12)
    for name in ("b200_180gb", "b300_288gb"):
        assert load_hardware(name).gpus_per_node == 8


@pytest.mark.parametrize(
    ("name", "bf16", "fp8", "mem_gb", "hbm_tb", "link_gb"),
    [
        ("mi325x_256gb", 1307.4, 2614.9, 256, 6.0, 448),  # MI300X compute, 256 GB HBM3E
        ("mi355x_288gb", 2516.6, 5033.2, 288, 8.0, 537.6),  # CDNA 4: 7 x 76.8 GB/s
    ],
)  # fmt: skip
def test_amd_datasheet_numbers(name: str, bf16: float, fp8: float, mem_gb: int, hbm_tb: float,
                               link_gb: float) -> None:  # fmt: skip
    hw = load_hardware(name)
    assert hw.peak("bf16") == approx(bf16 * T)
    assert hw.peak("fp8") == approx(fp8 * T)
    assert hw.hbm_bandwidth_bytes_per_s == approx(hbm_tb * 1000 * GB)
    assert hw.intra_node_kind == "xgmi"
    assert hw.intra_node_bandwidth_bytes_per_s == approx(link_gb * GB)
    assert abs(hw.memory_bytes - mem_gb * 2**30) < 0.001 * mem_gb * 2**30
    assert hw.peak("nvfp4") == 0
    assert not hw.nvls


def test_mi355x_block_scaled_rates() -> None:
    hw = load_hardware("mi355x_288gb")
    assert hw.peak("mxfp8") == hw.peak("fp8")
    assert hw.peak("mxfp4") == approx(10066.3 * T)
    assert hw.peak("tf32") == 0  # not in the datasheet: a tf32 step falls back to fp32's rate
    assert hw.compute_peak("tf32") == hw.peak("fp32")


def test_older_profiles_have_no_block_scaled_rates() -> None:
    for name in ("h100_sxm5_80gb", "h200_141gb", "a100_sxm4_80gb", "mi300x_192gb"):
        hw = load_hardware(name)
        assert hw.peak("mxfp8") == hw.peak("nvfp4") == hw.peak("mxfp4") == 0


# --------------------------------------------------------------------------- placement


def test_72_gpu_groups_stay_in_an_nvl72_rack() -> None:
    """Megatron order (layout.placement): TP consecutive, DP strided by tp, PP by dp·tp."""
    rack = Placement(Groups(dp=1, tp=72, pp=2), gpus_per_node=72)
    assert not rack.tp_crosses_nodes
    assert rack.group_gpus_per_node(72, 1) == 72
    assert rack.hop_crosses_nodes(0)  # the next stage is the next rack
    dp = Placement(Groups(dp=72, tp=1, pp=1), gpus_per_node=72)
    assert not dp.dp_crosses_nodes
    mixed = Placement(Groups(dp=9, tp=8, pp=2), gpus_per_node=72)
    assert not mixed.tp_crosses_nodes and not mixed.dp_crosses_nodes
    # On 8-GPU HGX nodes the same DP group of 9 spans 9 nodes.
    assert Placement(Groups(dp=9, tp=8, pp=2), gpus_per_node=8).dp_crosses_nodes


def _rack_scenario(hardware: str, nodes: int, gpn: int, **par: Any) -> Any:
    data = {
        "name": "nvl72",
        "model": {
            "layers": 4,
            "hidden": 72 * 128,
            "heads": 72,
            "kv_heads": 72,
            "ffn_hidden": 4 * 72 * 128,
            "vocab": 72 * 1000,
            "max_positions": 4096,
            "mlp": "swiglu",
            "norm": "rmsnorm",
            "positions": "rotary",
            "flash_attention": True,
        },  # fmt: skip
        "hardware": hardware,
        "cluster": {"nodes": nodes, "gpus_per_node": gpn},
        "training": {
            "seq_len": 4096,
            "global_batch": 4 * par.get("dp", 1),
            "micro_batch": 1,
            "precision": "bf16",
            "optimizer": "adamw",
        },  # fmt: skip
        "parallelism": {"dp": 1, "tp": 1, "pp": 1, **par},
    }
    return parse_scenario(copy.deepcopy(data), "nvl72.yaml")


def test_tp72_scenario_on_gb200_nvl72_is_intra_node() -> None:
    step = resolve(_rack_scenario("gb200_nvl72", 1, 72, tp=72))
    assert step.placement.gpus_per_node == 72
    assert not step.placement.tp_crosses_nodes
    step = resolve(_rack_scenario("gb200_nvl72", 2, 72, tp=8, dp=9, pp=2))
    assert not step.placement.tp_crosses_nodes and not step.placement.dp_crosses_nodes
    assert step.placement.hop_crosses_nodes(0)


def test_72_gpus_per_node_needs_an_nvl72_profile() -> None:
    from simtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="cluster.gpus_per_node"):
        _rack_scenario("b200_180gb", 1, 72, tp=72)


def test_h800_is_an_h100_with_a_narrower_nvlink() -> None:
    """H800 SXM5 (DeepSeek-V3's cluster): the H100 SXM5's compute and memory, NVLink 400 GB/s
    bidirectional (200 per direction; DeepSeek-AI arXiv 2505.09343) instead of 900, one 400 Gb/s
    InfiniBand NIC per GPU ("IB (50 GB/s)", DeepSeek-V3 report §3.2.2)."""
    h800, h100 = load_hardware("h800_sxm5_80gb"), load_hardware("h100_sxm5_80gb")
    for dtype in ("bf16", "fp16", "fp8", "tf32", "fp32"):
        assert h800.peak(dtype) == h100.peak(dtype)
    assert h800.memory_bytes == h100.memory_bytes
    assert h800.intra_node_bandwidth_bytes_per_s == approx(200 * GB)
    assert h100.intra_node_bandwidth_bytes_per_s == approx(450 * GB)
    assert h800.nic_bandwidth_bytes_per_s == approx(50 * GB)


@pytest.mark.parametrize(
    ("op", "simumax_efficiency"),
    [("all_gather", 0.6735), ("reduce_scatter", 0.6731), ("all_reduce", 0.7424)],
)
def test_b200_collectives_meet_simumax_nccl_tests_fit(op: str, simumax_efficiency: float) -> None:
    """SimuMax fitted nccl-tests on its DGX B200 (configs/system/b200_bf16_ceperm.json
    networks.high_intra_node: bus bandwidth = efficient_factor x 900 GB/s at large messages).
    The profile's ``collective`` (0.673) is the all-gather / reduce-scatter figure; the
    all-reduce, which NCCL runs as NVLS on 8 GPUs here, is the independent check: modelled bus
    bandwidth at 1 GiB within 4 % of it (README: +3.5 %); the other two are the round trip of
    the value they set (within 5 %)."""
    from simtrain.costs.collectives import nccl_bus_bandwidth, nccl_time_s, node_links

    hw = load_hardware("b200_180gb")
    intra, inter = node_links(hw)
    size = 1 << 30
    c = nccl_time_s(op, size, 8, intra=intra, inter=inter, gpus_per_node=8, nvls=hw.nvls,
                    arch=hw.gpu_arch)  # fmt: skip
    busbw = nccl_bus_bandwidth(op, size, 8, c.time_s)
    rel = 0.04 if op == "all_reduce" else 0.05
    assert busbw == pytest.approx(simumax_efficiency * 900e9, rel=rel)
