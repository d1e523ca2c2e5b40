"""More training GPUs (A10, A10G, A40, H20, L40, RTX 6000 Ada, MI250X and MI250 per GCD): their datasheet
numbers as each profile's header cites them, and their names through the validation mapping
(apps.validate.translate.gpu_profile) without taking a neighbour's name (A10 / A100 / A10G, L40 / L40S,
H20 / H200, RTX 6000 Ada / RTX A6000 / Quadro RTX 6000)."""

from __future__ import annotations

import pytest

from simtrain.apps.validate.translate import gpu_profile
from simtrain.spec.hardware import GB, MIB, load_hardware

T = 1e12

#: profile -> (memory visible to CUDA/ROCm in MiB, dense bf16 TFLOP/s, memory GB/s, fp8 TFLOP/s, SMs), each
#: with its source:
DATASHEET = {
    # A10 datasheet: BF16 125 | 250* TF, 600 GB/s; deviceQuery (driver 12.8): 22599 MiB, 72 SMs
    "a10_24gb": (22599, 125, 600, 0, 72),
    # no datasheet: 80 SMs at the GeForce-style half FP32-accumulate rate, 70 TF (torch.matmul 69.47 TF,
    # zzc0721/torch-performance-test-data #126); 600 GB/s (Baseten, A10 vs A10G); torch: 22587 MiB, 80 SMs
    "a10g_24gb": (22587, 70, 600, 0, 80),
    # A40 datasheet: BF16 with FP32 accumulate 149.7 | 299.4* TF, 696 GB/s; torch: 45416 MiB, 84 SMs
    "a40_48gb": (45416, 149.7, 696, 0, 84),
    # H20 product brief (secondary): BF16 148 TF dense, FP8 296, 4.0 TB/s; torch: 97285 MiB, 78 SMs
    "h20_96gb": (97285, 148, 4000, 296, 78),
    # L40/L40S datasheet, L40 column: BF16 181.05 | 362.1*, FP8 362 | 724*, 864 GB/s; memory: the L40S's
    # 45589 MiB (same nvidia-smi 46068 MiB); 568 tensor cores / 4 = 142 SMs
    "l40_48gb": (45589, 181.05, 864, 362, 142),
    # Ada whitepaper appendix (secondary): BF16 364.2 | 728.5*, FP8 728.5 | 1457*; datasheet 960 GB/s;
    # torch: 48622 MiB (ECC off), 142 SMs
    "rtx_6000_ada_48gb": (48622, 364.2, 960, 728.5, 142),
    # per GCD: MI250X BF16 383.0 TF / 2; ROCm MI250 doc: 1.6 TB/s per GCD; torch: 65520 MiB, 110 CUs
    "mi250x_gcd_64gb": (65520, 191.5, 1600, 0, 110),
    # per GCD: ROCm MI250 doc: Matrix BF16 362.1 / 2, 1.6 TB/s per GCD, 104 CUs; memory as the MI250X GCD
    "mi250_gcd_64gb": (65520, 181.05, 1600, 0, 104),
}

#: profile -> (NCCL tuning row, link kind, link GB/s per direction, host link GB/s per direction)
NODE = {
    "a10_24gb": ("ampere", "pcie", 32, 32),  # PCIe Gen4 x16, sm86
    "a10g_24gb": ("ampere", "pcie", 32, 32),
    "a40_48gb": ("ampere", "pcie", 32, 32),  # NVLink bridge (2 GPUs) not modelled
    "h20_96gb": ("hopper", "nvswitch", 450, 64),  # NVLink 900 GB/s bidirectional; PCIe Gen5
    "l40_48gb": ("ampere", "pcie", 32, 32),  # sm89 tunes on NCCL's AMPERE row
    "rtx_6000_ada_48gb": ("ampere", "pcie", 32, 32),
    "mi250x_gcd_64gb": ("ampere", "xgmi", 100, 36),  # RCCL stand-in; Frontier CPU-GCD 36+36 GB/s
    "mi250_gcd_64gb": ("ampere", "xgmi", 100, 32),  # PCIe Gen4 x16 per GCD
}


@pytest.mark.parametrize("name", DATASHEET)
def test_datasheet_numbers(name: str) -> None:
    hw = load_hardware(name)
    mib, bf16, gb_per_s, fp8, sms = DATASHEET[name]
    assert hw.name == name
    assert hw.memory_bytes == mib * MIB
    assert hw.peak("bf16") == pytest.approx(bf16 * T, rel=1e-12)
    assert hw.peak("fp16") == hw.peak("bf16")
    assert hw.hbm_bandwidth_bytes_per_s == pytest.approx(gb_per_s * GB, rel=1e-12)
    assert hw.peak("fp8") == pytest.approx(fp8 * T, rel=1e-12)
    assert hw.sm_count == sms
    # a marketed size in GB read as GiB is above what the runtime exposes, by at most 12 %
    nominal = int(name.rsplit("_", 1)[1][:-2])
    assert 0.88 * nominal * 2**30 < hw.memory_bytes < nominal * 2**30


@pytest.mark.parametrize("name", NODE)
def test_node_links_and_nccl_row(name: str) -> None:
    hw = load_hardware(name)
    arch, kind, link, host = NODE[name]
    assert (hw.gpu_arch, hw.intra_node_kind) == (arch, kind)
    assert hw.intra_node_bandwidth_bytes_per_s == pytest.approx(link * GB, rel=1e-12)
    assert hw.pcie_bandwidth_bytes_per_s == pytest.approx(host * GB, rel=1e-12)
    assert hw.gpus_per_node == 8
    assert hw.nvls == (kind == "nvswitch")


def test_fp8_only_on_ada_and_hopper() -> None:
    """FP8 tensor cores came with Ada (sm89) and Hopper (sm90); Ampere and CDNA 2 have none, so an
    FP8 recipe on them runs at no FP8 rate."""
    for name in ("a10_24gb", "a10g_24gb", "a40_48gb", "mi250x_gcd_64gb", "mi250_gcd_64gb"):
        assert load_hardware(name).peak("fp8") == 0, name
    for name in ("l40_48gb", "rtx_6000_ada_48gb", "h20_96gb"):
        hw = load_hardware(name)
        assert hw.peak("fp8") == pytest.approx(2 * hw.peak("bf16"), rel=1e-3), (
            name
        )  # L40: 362 vs 2 x 181.05


def test_a10g_is_not_the_a10() -> None:
    """Same 24 GB GDDR6 at 600 GB/s; the A10G's FP32-accumulate tensor rate (70) is near half the
    A10's (125), and above the torch.matmul bf16 rate measured on it (69.47 TF at 10240), which is
    itself above half the A10's peak: a half-rate 125 could not have produced it."""
    a10, a10g = load_hardware("a10_24gb"), load_hardware("a10g_24gb")
    assert a10.hbm_bandwidth_bytes_per_s == a10g.hbm_bandwidth_bytes_per_s
    assert a10g.peak("bf16") < a10.peak("bf16")
    assert 69.47e12 <= a10g.peak("bf16") and 69.47e12 > a10.peak("bf16") / 2
    assert a10g.peak("fp32") > a10.peak("fp32")  # more CUDA-core throughput (80 vs 72 SMs)


def test_l40_is_the_l40s_board_at_half_the_tensor_rate() -> None:
    l40, l40s = load_hardware("l40_48gb"), load_hardware("l40s_48gb")
    assert l40.memory_bytes == l40s.memory_bytes
    assert l40.hbm_bandwidth_bytes_per_s == l40s.hbm_bandwidth_bytes_per_s
    assert l40.peak("bf16") == pytest.approx(l40s.peak("bf16") / 2, rel=1e-3)


def test_mi250x_is_modelled_per_gcd() -> None:
    """One GCD (a ROCm device of 64 GB) is one simtrain GPU: half the package's 383 TF and 3.2 TB/s,
    8 per Frontier/LUMI node (4 MI250X)."""
    gcd = load_hardware("mi250x_gcd_64gb")
    assert 2 * gcd.peak("bf16") == pytest.approx(383.0 * T, rel=1e-12)
    assert 2 * gcd.hbm_bandwidth_bytes_per_s == pytest.approx(3200 * GB, rel=1e-12)
    assert gcd.peak("tf32") == 0 and gcd.compute_peak("tf32") == gcd.peak(
        "fp32"
    )  # no TF32 on CDNA 2


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("gpu", "profile"), [
    ("NVIDIA A10", "a10_24gb"), ("A10 24GB", "a10_24gb"), ("A10 PCIe", "a10_24gb"),
    ("NVIDIA A10G", "a10g_24gb"), ("A10G", "a10g_24gb"), ("A10G 24GB (AWS g5.48xlarge)", "a10g_24gb"),
    ("NVIDIA A40", "a40_48gb"), ("A40 48GB", "a40_48gb"),
    ("H20 96GB", "h20_96gb"),
    ("NVIDIA L40", "l40_48gb"), ("L40 48GB", "l40_48gb"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx_6000_ada_48gb"), ("RTX 6000 Ada", "rtx_6000_ada_48gb"),
    ("RTX 6000 Ada 48GB", "rtx_6000_ada_48gb"),
])  # fmt: skip
def test_new_gpu_names_map_to_their_profiles(gpu: str, profile: str) -> None:
    assert gpu_profile(gpu) == (profile, True, "")


def test_h20_without_a_size_is_not_fit_compared() -> None:
    """The H20 came as 96 GB HBM3 and later 141 GB HBM3e: a name without its size is the 96 GB
    profile with the size unknown, as 'A100' without 40/80."""
    got = gpu_profile("NVIDIA H20")
    assert got is not None and got[:2] == ("h20_96gb", False) and "96 GB profile" in got[2]
    got = gpu_profile("H20 141GB")
    assert got is not None and got[:2] == ("h20_96gb", False) and "141 GB" in got[2]


def test_a6000_ada_is_read_as_the_rtx_6000_ada() -> None:
    """ "RTX A6000 Ada" names no card: it is the RTX 6000 Ada Generation (a note says so), not the RTX
    A6000 (GA102). Replaces test_validate.py's expectation that these names map to None."""
    for gpu in ("RTX A6000 Ada", "A6000 Ada", "RTX A6000-Ada"):
        got = gpu_profile(gpu)
        assert got is not None and got[:2] == ("rtx_6000_ada_48gb", True), gpu
        assert "RTX 6000 Ada" in got[2], gpu


@pytest.mark.parametrize(("gpu", "profile"), [
    ("AMD Instinct MI250X", "mi250x_gcd_64gb"), ("MI250X", "mi250x_gcd_64gb"),
    ("MI250X 128GB", "mi250x_gcd_64gb"),  # the package's memory: two 64 GB GCDs
    ("AMD Instinct MI250X/MI250", "mi250x_gcd_64gb"),  # ROCm's name for both parts
    ("AMD Instinct MI250", "mi250_gcd_64gb"), ("MI250", "mi250_gcd_64gb"),
])  # fmt: skip
def test_cdna2_names_map_to_the_per_gcd_profiles(gpu: str, profile: str) -> None:
    got = gpu_profile(gpu)
    assert got is not None and got[:2] == (profile, True)
    assert (
        "GCD" in got[2]
    )  # the per-GCD modelling is said: a count of packages is twice the devices


@pytest.mark.parametrize(("gpu", "profile"), [
    ("A100-SXM4-80GB", "a100_sxm4_80gb"), ("A100 40GB", "a100_sxm4_40gb"),  # A10 is not A100
    ("L40S 48GB", "l40s_48gb"), ("NVIDIA L40S", "l40s_48gb"),  # L40 is not L40S
    ("H200", "h200_141gb"),  # H20 is not H200
    ("NVIDIA RTX A6000", "rtx_a6000_48gb"),  # RTX A6000 is not RTX 6000 Ada
    ("NVIDIA L4", "l4_24gb"), ("AMD Instinct MI300X", "mi300x_192gb"),
    ("H100 80GB A10-cluster", "h100_sxm5_80gb"),  # the datacenter name first, as "T4-cluster"
])  # fmt: skip
def test_neighbours_keep_their_profiles(gpu: str, profile: str) -> None:
    got = gpu_profile(gpu)
    assert got is not None and got[0] == profile, gpu


@pytest.mark.parametrize("gpu", ["Quadro RTX 6000", "RTX 6000", "NVIDIA A30", "NVIDIA A2", "RTX A4000",
                                 "RTX 4000 Ada", "L40G", "RTX A400"])  # fmt: skip
def test_other_chips_have_no_profile(gpu: str) -> None:
    """The Turing Quadro RTX 6000 (24 GB) and a bare "RTX 6000" are not the Ada card; A30 (GA100),
    A2, RTX A4000, RTX 4000 Ada and RTX A400 are other chips with other rates."""
    assert gpu_profile(gpu) is None
