"""The PCIe and NVL cards and the smaller GPUs (A100 and H100 PCIe, H100 NVL, L4, T4, RTX 3090,
RTX A6000): their datasheet peaks, what a card shares with the SXM part of the same die (the
fitted fractions, the measured tables) and what differs (links, memory, peaks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.memory import estimate_memory
from simtrain.spec.hardware import load_hardware
from simtrain.spec.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]

#: profile -> (bf16 tensor TFLOP/s, memory GB/s) as the datasheets print them: Ampere, Hopper and
#: Ada datasheets give the tensor rate with 2:4 sparsity (halved here); the GeForce RTX 3090's
#: FP32-accumulate rate is half its FP16-accumulate one (GA102 whitepaper, Table 9).
DATASHEET = {
    "h100_pcie_80gb": (1513 / 2, 2000),
    "h100_nvl_94gb": (1671 / 2, 3900),
    "a100_pcie_80gb": (624 / 2, 1935),
    "a100_pcie_40gb": (624 / 2, 1555),
    "l4_24gb": (242 / 2, 300),
    "rtx3090_24gb": (284 / 2 / 2, 936),
    "rtx_a6000_48gb": (309.7 / 2, 768),
}


@pytest.mark.parametrize("name", DATASHEET)
def test_dense_peaks_are_the_datasheets(name: str) -> None:
    hw = load_hardware(name)
    tflops, gb_per_s = DATASHEET[name]
    assert hw.compute_peak("bf16") == pytest.approx(tflops * 1e12, rel=1e-3)
    assert hw.compute_peak("fp16") == hw.compute_peak("bf16")
    assert hw.hbm_bandwidth_bytes_per_s == gb_per_s * 1e9


#: profile -> (compute capability, PCIe generation, nominal memory GB): NCCL tunes sm90 on its
#: HOPPER row, sm80-89 on AMPERE and anything older on VOLTA (src/graph/tuning.cc compCapIndex); a
#: PCIe x16 link carries 16 / 32 / 64 GB/s per direction at Gen3 / Gen4 / Gen5.
CARDS = {
    "h100_pcie_80gb": (90, 5, 80), "h100_nvl_94gb": (90, 5, 94), "a100_pcie_80gb": (80, 4, 80),
    "a100_pcie_40gb": (80, 4, 40), "l4_24gb": (89, 4, 24), "t4_16gb": (75, 3, 16),
    "rtx3090_24gb": (86, 4, 24), "rtx_a6000_48gb": (86, 4, 48),
}  # fmt: skip


@pytest.mark.parametrize("name", CARDS)
def test_nccl_row_pcie_link_and_visible_memory(name: str) -> None:
    hw = load_hardware(name)
    cc, gen, gb = CARDS[name]
    assert hw.gpu_arch == ("hopper" if cc >= 90 else "ampere" if cc >= 80 else "volta")
    per_direction = {3: 16e9, 4: 32e9, 5: 64e9}[gen]
    assert hw.pcie_bandwidth_bytes_per_s == per_direction
    assert hw.intra_node_kind == "pcie" and hw.intra_node_bandwidth_bytes_per_s == per_direction
    # CUDA sees less than the nominal size (GiB: memory parts come in powers of two), by at most
    # ~10 % (ECC, the driver's reserve)
    assert 0.88 * gb * 2**30 < hw.memory_bytes < gb * 2**30, name


def test_l4_matmul_is_its_measured_large_gemm_rate() -> None:
    """The L4's bf16 GEMMs measured at 8192 and 10240 (59.4 and 56.9 TFLOP/s, a public
    torch.matmul benchmark): the profile's large-GEMM rate lies between them, and above half
    the datasheet peak, which a half-rate FP32 accumulation could not reach (70.9 at 2048)."""
    l4 = load_hardware("l4_24gb")
    rate = l4.efficiency.matmul * l4.compute_peak("bf16")
    assert 56.9e12 <= rate <= 59.4e12
    assert 70.9e12 > l4.compute_peak("bf16") / 2


def test_t4_has_no_bf16_or_tf32_and_runs_them_at_the_fp32_rate() -> None:
    t4 = load_hardware("t4_16gb")
    assert t4.compute_peak("fp16") == 65e12  # mixed precision FP16/FP32, no sparsity on Turing
    assert t4.compute_peak("bf16") == t4.compute_peak("tf32") == t4.compute_peak("fp32") == 8.1e12
    sc = load_scenario(ROOT / "scenarios/colab_t4_qlora_7b.yaml")
    m16 = simulate_scenario(sc).metrics
    fp16 = m16.step_time_s
    bf16 = simulate_scenario(load_scenario(ROOT / "scenarios/colab_t4_qlora_7b.yaml",
                                           ["training.precision=bf16"])).metrics.step_time_s  # fmt: skip
    # at most 65 / 8.1 = 8.0x slower (the GEMMs; the memory-bound work, NF4 dequantisation and
    # norms, no slower), and no faster than the step's matmul FLOPs at the fp32 rate
    matmul_flops = m16.tflops_per_gpu * 1e12 * fp16
    assert matmul_flops / (8.1e12 * t4.efficiency.matmul) <= bf16 <= fp16 * 65 / 8.1


@pytest.mark.parametrize(("card", "sxm"), [("a100_pcie_80gb", "a100_sxm4_80gb"),
                                           ("a100_pcie_40gb", "a100_sxm4_40gb"),
                                           ("h100_pcie_80gb", "h100_sxm5_80gb"),
                                           ("h100_nvl_94gb", "h100_sxm5_80gb")])  # fmt: skip
def test_a_card_shares_its_dies_fitted_fractions_not_its_links(card: str, sxm: str) -> None:
    c, s = load_hardware(card), load_hardware(sxm)
    assert c.efficiency.matmul == s.efficiency.matmul
    assert c.efficiency.gemm_edge_elements == s.efficiency.gemm_edge_elements
    assert c.intra_node_kind == "pcie" and s.intra_node_kind == "nvswitch"
    assert not c.nvls


def test_the_h100_cards_keep_the_sxm5_attention_fractions_the_a100_cards_their_own() -> None:
    h100 = load_hardware("h100_sxm5_80gb")
    for card in ("h100_pcie_80gb", "h100_nvl_94gb"):
        assert load_hardware(card).attention_kernels == h100.attention_kernels
    # SimuMax measured flash-attn 2 on the A100 80GB PCIe (measured/attention_tables.yaml; its
    # values are the table's fit: test_attention_tables.py); the SXM profiles have no class (their
    # records ran llm-foundry's triton kernels), so only the PCIe cards price FA2 by it
    for card in ("a100_pcie_80gb", "a100_pcie_40gb"):
        assert load_hardware(card).flash_class("fa2") is not None
    assert load_hardware("a100_sxm4_80gb").flash_class("fa2") is None


def test_data_parallel_over_pcie_is_slower_than_over_nvswitch() -> None:
    """The same 8-GPU DDP step: the A100 PCIe server's all-reduces run over 32 GB/s PCIe links,
    the DGX's over 300 GB/s NVSwitch."""
    path = ROOT / "scenarios/ddp_8gpu.yaml"
    sxm = simulate_scenario(load_scenario(path, ["hardware=a100_sxm4_80gb"])).metrics
    pcie = simulate_scenario(load_scenario(path, ["hardware=a100_pcie_80gb"])).metrics
    assert pcie.step_time_s > sxm.step_time_s
    comm = dict(pcie.time_breakdown_s)["communication_total"]
    assert comm > 5 * dict(sxm.time_breakdown_s)["communication_total"]


def test_the_student_t4_fits_qlora_and_not_the_full_fine_tune() -> None:
    path = ROOT / "scenarios/colab_t4_qlora_7b.yaml"
    assert estimate_memory(load_scenario(path)).fits
    full = estimate_memory(load_scenario(path, ["training.peft.method=none"]))
    assert not full.fits
    largest = max(full.gpus[0].memory_bytes, key=lambda kv: kv[1])
    assert largest[0] == "optimizer_states" and largest[1] > load_hardware("t4_16gb").memory_bytes
