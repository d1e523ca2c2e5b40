"""Shipped hardware profiles (hardware/*.yaml): they load, carry datasheet numbers, cite a source for
every number, and the loader rejects bad profiles with a ConfigError that names the key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from simtrain.errors import ConfigError
from simtrain.spec.hardware import (
    DTYPES,
    GB,
    HARDWARE_DIR,
    LINK_KINDS,
    MIB,
    available_profiles,
    cited_lines,
    defined_tags,
    load_hardware,
)

REQUIRED = {
    "v100_sxm2_32gb",
    "a100_sxm4_40gb",
    "a100_sxm4_80gb",
    "h100_sxm5_80gb",
    "h200_141gb",
    "l40s_48gb",
    "rtx4090_24gb",
    "mi300x_192gb",
}

PROFILES = available_profiles()

T = 1e12  # TFLOP/s -> FLOP/s


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12)


# --------------------------------------------------------------------------- loading


def test_required_profiles_are_shipped() -> None:
    missing = REQUIRED - set(PROFILES)
    assert not missing, f"missing hardware profiles: {sorted(missing)}"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_by_name(name: str) -> None:
    hw = load_hardware(name)
    assert hw.name == name, "the `name:` key must match the file name"
    assert hw.display_name
    assert hw.source_file.endswith(f"{name}.yaml")
    assert hw.intra_node_kind in LINK_KINDS
    assert {d for d, _ in hw.peak_flops_per_s} == set(DTYPES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_by_path(name: str) -> None:
    by_path = load_hardware(str(HARDWARE_DIR / f"{name}.yaml"))
    assert by_path == load_hardware(name)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_is_physically_plausible(name: str) -> None:
    hw = load_hardware(name)
    assert 8 * 2**30 <= hw.memory_bytes <= 512 * 2**30
    assert hw.peak("fp32") > 0
    # Tensor-core half precision is never slower than plain FP32 on these parts.
    assert max(hw.peak("fp16"), hw.peak("bf16")) >= hw.peak("fp32")
    for d in DTYPES:
        assert hw.peak(d) >= 0
    # bf16, where supported, runs at the fp16 rate on every shipped GPU.
    if hw.peak("bf16") > 0:
        assert hw.peak("bf16") == hw.peak("fp16")
    # Links are slower than the GPU's own memory; the NIC is slower than the intra-node link.
    assert hw.pcie_bandwidth_bytes_per_s < hw.hbm_bandwidth_bytes_per_s
    assert hw.intra_node_bandwidth_bytes_per_s < hw.hbm_bandwidth_bytes_per_s
    assert hw.nic_bandwidth_bytes_per_s <= hw.intra_node_bandwidth_bytes_per_s
    # 8 per HGX/DGX/OAM node; 72 in an NVL72 rack (one NVLink domain).
    assert 1 <= hw.gpus_per_node <= 16 or hw.gpus_per_node == 72
    assert 0 < hw.intra_node_latency_s < 1e-4
    # an effective per-step latency may be a fitted cluster mean (EFA: 149 us, its [fit])
    assert 0 < hw.inter_node_latency_s < 1e-3
    assert hw.oversubscription >= 1.0
    assert 256 * MIB <= hw.cuda_context_bytes <= 4096 * MIB
    assert hw.host_memory_bytes >= hw.memory_bytes
    assert 0 < hw.efficiency.matmul <= 1
    assert 0 < hw.efficiency.memory_bound <= 1
    assert 0 < hw.efficiency.collective <= 1


# --------------------------------------------------------------------------- datasheet numbers


def test_v100_datasheet_numbers() -> None:
    hw = load_hardware("v100_sxm2_32gb")
    assert hw.peak("fp16") == approx(125 * T)
    assert hw.peak("fp32") == approx(15.7 * T)
    assert hw.peak("bf16") == 0 and hw.peak("tf32") == 0 and hw.peak("fp8") == 0
    assert hw.hbm_bandwidth_bytes_per_s == approx(900 * GB)
    assert hw.memory_bytes == 32510 * MIB
    assert hw.intra_node_kind == "nvlink"
    assert hw.intra_node_bandwidth_bytes_per_s == approx(150 * GB)  # 6 NVLink2 x 25 GB/s
    assert hw.nic_bandwidth_bytes_per_s == approx(50e9 / 8)  # 4x EDR 100 Gb/s for 8 GPUs
    assert hw.cuda_context_bytes == 1343 * MIB  # HF "Model training anatomy", measured on V100
    assert hw.host_memory_bytes == 512 * 2**30


def test_a100_datasheet_numbers() -> None:
    a80 = load_hardware("a100_sxm4_80gb")
    a40 = load_hardware("a100_sxm4_40gb")
    for hw in (a80, a40):
        assert hw.peak("bf16") == approx(312 * T)
        assert hw.peak("fp16") == approx(312 * T)
        assert hw.peak("tf32") == approx(156 * T)
        assert hw.peak("fp32") == approx(19.5 * T)
        assert hw.peak("int8") == approx(624 * T)
        assert hw.peak("fp8") == 0
        assert hw.intra_node_kind == "nvswitch"
        assert hw.intra_node_bandwidth_bytes_per_s == approx(300 * GB)
        assert hw.pcie_bandwidth_bytes_per_s == approx(32 * GB)
        assert hw.nic_bandwidth_bytes_per_s == approx(200e9 / 8)
    assert a80.hbm_bandwidth_bytes_per_s == approx(2039 * GB)
    assert a40.hbm_bandwidth_bytes_per_s == approx(1555 * GB)
    assert a80.memory_bytes == 81251 * MIB
    assert a40.memory_bytes == 40536 * MIB
    assert a80.host_memory_bytes == 2048 * 2**30
    assert a40.host_memory_bytes == 1024 * 2**30


def test_h100_and_h200_datasheet_numbers() -> None:
    h100 = load_hardware("h100_sxm5_80gb")
    h200 = load_hardware("h200_141gb")
    # Same GH100 die: identical dense peaks (H100 whitepaper figures).
    assert h100.peak_flops_per_s == h200.peak_flops_per_s
    for hw in (h100, h200):
        assert hw.peak("bf16") == approx(989.4 * T)
        assert hw.peak("fp16") == approx(989.4 * T)
        assert hw.peak("fp8") == approx(1978.9 * T)
        assert hw.peak("tf32") == approx(494.7 * T)
        assert hw.peak("fp32") == approx(66.9 * T)
        assert hw.intra_node_kind == "nvswitch"
        assert hw.intra_node_bandwidth_bytes_per_s == approx(450 * GB)  # 900 GB/s bidirectional
        assert hw.pcie_bandwidth_bytes_per_s == approx(64 * GB)
        assert hw.nic_bandwidth_bytes_per_s == approx(400e9 / 8)
        assert hw.host_memory_bytes == 2048 * 2**30
    assert h100.hbm_bandwidth_bytes_per_s == approx(3350 * GB)
    assert h200.hbm_bandwidth_bytes_per_s == approx(4800 * GB)
    assert h100.memory_bytes == 81089 * MIB
    assert h200.memory_bytes == 143156 * MIB


def test_efa_profile_differs_from_h100_only_in_the_network() -> None:
    """h100_sxm5_80gb_efa is the same GPU and NVSwitch node as h100_sxm5_80gb; only the
    inter-node numbers are its own, fitted to the Ultra-Scale Playbook's EFA collective
    benchmarks (tests/test_collectives.py refits them), and NCCL's protocols and algorithms on
    that network (aws-ofi-nccl forces Simple; the cluster's measured all-reduce is a tree whose
    levels do not pipeline)."""
    h100, efa = load_hardware("h100_sxm5_80gb"), load_hardware("h100_sxm5_80gb_efa")
    same = replace(efa, name=h100.name, display_name=h100.display_name,
                   source_file=h100.source_file,
                   nic_bandwidth_bytes_per_s=h100.nic_bandwidth_bytes_per_s,
                   inter_node_latency_s=h100.inter_node_latency_s,
                   oversubscription=h100.oversubscription, nccl_protocols=h100.nccl_protocols,
                   nccl_algorithms=h100.nccl_algorithms,
                   nccl_tree_pipelined=h100.nccl_tree_pipelined)  # fmt: skip
    assert same == h100
    assert efa.nccl_protocols == ("simple",)
    assert efa.nccl_algorithms == ("ring", "tree", "nvls_tree", "pairwise")
    assert efa.nccl_tree_pipelined is False and h100.nccl_tree_pipelined is True
    assert efa.nic_bandwidth_bytes_per_s == approx(395.75e9 / 8)
    assert efa.inter_node_latency_s == approx(148.95e-6)
    assert efa.oversubscription == 1.0


def test_grand_teton_h100_differs_from_h100_in_its_memory_and_power_only() -> None:
    """h100_sxm5_96gb_hbm2e (Meta's Grand Teton H100, torchtitan's benchmarks) is the GH100 chip
    and node of h100_sxm5_80gb with what torchtitan's benchmark files state of it: 96 GB HBM2e
    at 2.4 TB/s (benchmarks/llama3_h100_202412_torchtitan.md, "Hardware"), pointwise kernels at
    2.2 of those 2.4 TB/s (torchao roofline_utils.py, pct_achievable_mem_bw 0.92 "on Meta's H100
    variant"), 96 GiB less the 80 GB part's 831 MiB that CUDA does not expose, and a 500 W
    power limit whose peak the file puts "between SXM and NVL": the midpoint of the two
    datasheets' dense peaks (bf16 835.5 and 989.4 TFLOP/s), every dtype alike."""
    h100, gt = load_hardware("h100_sxm5_80gb"), load_hardware("h100_sxm5_96gb_hbm2e")
    assert gt.hbm_bandwidth_bytes_per_s == approx(2400 * GB)
    assert gt.efficiency.memory_bound == 0.92
    assert gt.memory_bytes == (96 * 1024 - (80 * 1024 - 81089)) * MIB == 97473 * MIB
    nvl = {"fp32": 60, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5, "fp8": 1670.5}
    for dtype, low in nvl.items():
        assert abs(gt.peak(dtype) / ((low * 1e12 + h100.peak(dtype)) / 2) - 1) < 2e-4, dtype
    same = replace(gt, name=h100.name, display_name=h100.display_name,
                   source_file=h100.source_file, memory_bytes=h100.memory_bytes,
                   hbm_bandwidth_bytes_per_s=h100.hbm_bandwidth_bytes_per_s,
                   efficiency=h100.efficiency,
                   peak_flops_per_s=h100.peak_flops_per_s)  # fmt: skip
    assert same == h100
    assert replace(gt.efficiency, memory_bound=h100.efficiency.memory_bound) == h100.efficiency
    # pointwise work at 2,208 GB/s against the 80 GB part's 3,350 x 0.80 = 2,680
    assert h100.hbm_bandwidth_bytes_per_s == approx(3350 * GB)
    assert h100.efficiency.memory_bound == 0.80


def test_a800_is_the_a100_with_400_gb_per_s_nvlink() -> None:
    """The A800 SXM4 80GB (China's export A100): the A100 80GB's die, memory and rates, NVLink
    cut from 600 to 400 GB/s bidirectional (200 per direction)."""
    a100, a800 = load_hardware("a100_sxm4_80gb"), load_hardware("a800_sxm4_80gb")
    assert a800.intra_node_bandwidth_bytes_per_s == approx(200 * GB)
    assert a100.intra_node_bandwidth_bytes_per_s == approx(300 * GB)
    same = replace(a800, name=a100.name, display_name=a100.display_name,
                   source_file=a100.source_file,
                   intra_node_bandwidth_bytes_per_s=a100.intra_node_bandwidth_bytes_per_s,
                   nccl_channels_one_node=a100.nccl_channels_one_node)  # fmt: skip
    assert same == a100
    assert a800.nccl_channels_one_node == 0  # the A100 node's 24 not carried to fewer links


def test_ada_datasheet_numbers() -> None:
    l40s = load_hardware("l40s_48gb")
    assert l40s.peak("bf16") == approx(362.05 * T)
    assert l40s.peak("fp8") == approx(733 * T)
    assert l40s.peak("fp32") == approx(91.6 * T)
    assert l40s.hbm_bandwidth_bytes_per_s == approx(864 * GB)
    assert l40s.memory_bytes == 45589 * MIB
    assert l40s.intra_node_kind == "pcie"

    g = load_hardware("rtx4090_24gb")
    # GeForce: FP32-accumulate tensor rate (what mixed-precision training uses) is half of FP16-accumulate.
    assert g.peak("bf16") == approx(165.2 * T)
    assert g.peak("fp16") == approx(165.2 * T)
    assert g.peak("fp32") == approx(82.6 * T)
    assert g.hbm_bandwidth_bytes_per_s == approx(1008 * GB)
    assert g.memory_bytes == 24563 * MIB
    assert g.intra_node_kind == "pcie"
    for hw in (l40s, g):
        assert hw.pcie_bandwidth_bytes_per_s == approx(32 * GB)  # PCIe Gen4 x16


def test_mi300x_datasheet_numbers() -> None:
    hw = load_hardware("mi300x_192gb")
    assert hw.peak("bf16") == approx(1307.4 * T)
    assert hw.peak("fp16") == approx(1307.4 * T)
    assert hw.peak("fp8") == approx(2614.9 * T)
    assert hw.peak("tf32") == approx(653.7 * T)
    assert hw.peak("fp32") == approx(163.4 * T)
    assert hw.hbm_bandwidth_bytes_per_s == approx(5300 * GB)
    assert hw.memory_bytes == 196592 * MIB
    assert hw.intra_node_kind == "xgmi"
    # 7 Infinity Fabric links x 64 GB/s per direction
    assert hw.intra_node_bandwidth_bytes_per_s == approx(448 * GB)
    assert hw.pcie_bandwidth_bytes_per_s == approx(64 * GB)
    assert hw.nic_bandwidth_bytes_per_s == approx(400e9 / 8)


# --------------------------------------------------------------------------- source comments


def _profile_files() -> list[Path]:
    return sorted(HARDWARE_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", _profile_files(), ids=lambda p: p.stem)
def test_every_number_cites_a_source(path: Path) -> None:
    text = path.read_text()
    defined = defined_tags(text)
    assert "Sources:" in text, "header must list its sources"
    assert defined, "header must define source tags like `#  [ds]  <document>`"
    numbers = [ln for ln in cited_lines(text) if ln.numeric]
    assert len(numbers) >= 15, "expected the numeric keys of a full profile"
    uncited = [f"{ln.number}: {ln.key}: {ln.value}" for ln in numbers if not ln.tags]
    undefined = [f"{ln.number}: [{t}]" for ln in numbers for t in ln.tags if t not in defined]
    assert not uncited, "numbers without a [source] comment:\n" + "\n".join(uncited)
    assert not undefined, "source tags not listed in the header:\n" + "\n".join(undefined)


def test_cited_lines_read_tags_markers_and_numbers() -> None:
    """The citation grammar: tags in order, lower case, [secondary] dropped; a number is any
    float-like value (underscores allowed), a list or a word is not; comment lines skipped."""
    text = ("#  [ds]   a datasheet\n"
            "  matmul: 0.72   # [VAL] fitted; [ds] [secondary] datasheet\n"
            "name: t4  # [ds]\n"
            "cpu_adam_params_per_s: 1.0e9\n"
            "memory_gib: 14_748  # [torch]\n"
            "# matmul: 0.1  # [est]\n")  # fmt: skip
    lines = cited_lines(text)
    assert [(ln.number, ln.key, ln.tags, ln.numeric) for ln in lines] == [
        (2, "matmul", ("val", "ds"), True), (3, "name", ("ds",), False),
        (4, "cpu_adam_params_per_s", (), True), (5, "memory_gib", ("torch",), True)]  # fmt: skip
    assert defined_tags(text) == {"ds"}


# --------------------------------------------------------------------------- bad profiles


def _good() -> dict:
    return {
        "name": "test_gpu",
        "display_name": "Test GPU",
        "memory_gib": 80,
        "peak_tflops": {"fp32": 19.5, "fp16": 312, "bf16": 312},
        "hbm_bandwidth_gb_per_s": 2039,
        "gpus_per_node": 8,
        "intra_node": {"kind": "nvswitch", "bandwidth_gb_per_s": 300, "latency_us": 3},
        "pcie_bandwidth_gb_per_s": 32,
        "nic_bandwidth_gbit_per_s": 200,
        "cuda_context_mib": 1024,
        "host_memory_gib": 2048,
    }


def _write(tmp_path: Path, data: dict) -> str:
    p = tmp_path / "gpu.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_minimal_profile_loads_with_defaults(tmp_path: Path) -> None:
    hw = load_hardware(_write(tmp_path, _good()))
    assert hw.memory_bytes == 80 * 2**30
    assert hw.peak("bf16") == approx(312 * T)
    assert hw.peak("fp8") == 0  # unspecified dtype -> unsupported
    assert hw.nic_bandwidth_bytes_per_s == approx(25e9)
    assert hw.efficiency.matmul == 0.7
    assert hw.efficiency.optimizer is None  # the optimizer step uses memory_bound
    assert hw.oversubscription == 1.0


def test_optimizer_efficiency_is_read(tmp_path: Path) -> None:
    """efficiency.optimizer (written by `simtrain calibrate`) is read and validated."""
    data = _good()
    data["efficiency"] = {"memory_bound": 0.2, "optimizer": 0.45}
    hw = load_hardware(_write(tmp_path, data))
    assert (hw.efficiency.memory_bound, hw.efficiency.optimizer) == (0.2, 0.45)


_DELETE = object()  # sentinel: remove the key instead of setting it


def _mutate(path: tuple[str, ...], value: object) -> dict:
    data = _good()
    target = data
    for k in path[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BAD = [
    pytest.param(("bogus_key",), 1, "bogus_key", "unknown key", id="unknown-key"),
    pytest.param(("memory_gib",), -80, "memory_gib", "must be >=", id="negative-memory"),
    pytest.param(("memory_gib",), "80GB", "memory_gib", "must be a number", id="memory-not-number"),
    pytest.param(("memory_gib",), _DELETE, "memory_gib", "missing", id="missing-memory"),
    pytest.param(
        ("peak_tflops", "fp64"), 9.7, "peak_tflops.fp64", "unknown dtype", id="unknown-dtype"
    ),
    pytest.param(("peak_tflops", "bf16"), -1, "peak_tflops.bf16", "must be >=", id="negative-peak"),
    pytest.param(
        ("intra_node", "kind"),
        "ethernet",
        "intra_node.kind",
        "unknown link kind",
        id="unknown-link",
    ),
    pytest.param(
        ("intra_node", "bandwidth_gb_per_s"),
        0,
        "intra_node.bandwidth_gb_per_s",
        "must be >=",
        id="zero-link-bw",
    ),
    pytest.param(("gpus_per_node",), 0, "gpus_per_node", "positive integer", id="zero-gpus"),
    pytest.param(
        ("gpus_per_node",), 8.5, "gpus_per_node", "positive integer", id="fractional-gpus"
    ),
    pytest.param(
        ("efficiency",), {"matmul": 1.5}, "efficiency.matmul", "(0, 1]", id="efficiency-above-1"
    ),
    pytest.param(
        ("efficiency",), {"mfu": 0.5}, "efficiency.mfu", "unknown key", id="efficiency-unknown-key"
    ),
    pytest.param(
        ("efficiency",), {"optimizer": 0}, "efficiency.optimizer", "(0, 1]", id="optimizer-zero"
    ),
    pytest.param(
        ("oversubscription",), 0.5, "oversubscription", "must be >=", id="oversubscription-below-1"
    ),
    pytest.param(
        ("collectives",),
        {"gpu_arch": "hoper"},
        "collectives.gpu_arch",
        "did you mean 'hopper'",
        id="nccl-arch-typo",
    ),  # fmt: skip
    pytest.param(
        ("collectives",), {"nvls": "yes"}, "collectives.nvls", "true or false", id="nvls-not-bool"
    ),  # fmt: skip
    pytest.param(
        ("collectives",),
        {"tree_pipelined": 0},
        "collectives.tree_pipelined",
        "true or false",
        id="tree-pipelined-not-bool",
    ),  # fmt: skip
    pytest.param(
        ("collectives",),
        {"protocols": ["ll256"]},
        "collectives.protocols",
        "ll | ll128 | simple",
        id="unknown-protocol",
    ),  # fmt: skip
    pytest.param(
        ("collectives",),
        {"algorithms": []},
        "collectives.algorithms",
        "non-empty",
        id="no-algorithm",
    ),  # fmt: skip
    pytest.param(
        ("collectives",),
        {"sharp": True},
        "collectives.sharp",
        "unknown key",
        id="collectives-unknown-key",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("path", "value", "key", "message"), BAD)
def test_bad_profile_names_the_key(
    tmp_path: Path, path: tuple[str, ...], value: object, key: str, message: str
) -> None:
    file = _write(tmp_path, _mutate(path, value))
    with pytest.raises(ConfigError) as info:
        load_hardware(file)
    err = info.value
    assert err.key == key
    assert err.file == file
    assert key in str(err)
    assert message in str(err)


def test_unknown_profile_name_lists_the_shipped_ones() -> None:
    """The names, in order, as far as the allowed list's room goes (errors.MAX_ALLOWED), with
    how many more and where all of them are listed; the nearest one suggested."""
    from simtrain.errors import MAX_ALLOWED

    with pytest.raises(ConfigError) as info:
        load_hardware("tpu_v5p")
    msg = str(info.value)
    assert "tpu_v5p" in msg and "`simtrain hardware`" in msg
    listed = msg.split("; allowed: ", 1)[1]
    names = listed.split(", ... (")[0].split(", ")
    assert names == list(PROFILES[: len(names)]) and len(", ".join(names)) <= MAX_ALLOWED
    if len(names) < len(PROFILES):
        assert listed.endswith(f"({len(PROFILES) - len(names)} more)")
    with pytest.raises(ConfigError) as info:
        load_hardware("h100_sxm5")
    assert "did you mean 'h100_sxm5_80gb'?" in str(info.value)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\npeak_tflops: {fp32: 1\n")
    with pytest.raises(ConfigError):
        load_hardware(str(p))


def test_compute_peak_falls_back_to_fp32() -> None:
    """A V100 has no bf16 rate: a bf16 step runs against its fp32 peak (15.7 TFLOP/s, NVIDIA
    V100 datasheet); an A100's bf16 peak is its own (312 TFLOP/s dense, A100 datasheet)."""
    v100 = load_hardware("v100_sxm2_32gb")
    assert v100.peak("bf16") == 0.0
    assert v100.compute_peak("bf16") == v100.peak("fp32") == pytest.approx(15.7e12)
    assert load_hardware("a100_sxm4_80gb").compute_peak("bf16") == pytest.approx(312e12)


# --------------------------------------------------------------------------- limits

NUMERIC_PATHS = [
    ("memory_gib",), ("peak_tflops", "fp32"), ("peak_tflops", "bf16"), ("hbm_bandwidth_gb_per_s",),
    ("intra_node", "bandwidth_gb_per_s"), ("intra_node", "latency_us"),
    ("pcie_bandwidth_gb_per_s",), ("nic_bandwidth_gbit_per_s",), ("inter_node_latency_us",),
    ("oversubscription",), ("cuda_context_mib",), ("host_memory_gib",),
    ("cpu_adam_params_per_s",), ("efficiency", "matmul"), ("efficiency", "optimizer"),
]  # fmt: skip


def _set(path: tuple[str, ...], value: object) -> dict:
    data = _good()
    target = data
    for k in path[:-1]:
        target = target.setdefault(k, {})
    target[path[-1]] = value
    return data


@pytest.mark.parametrize("path", NUMERIC_PATHS, ids=".".join)
@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), 10**400, 1e300],
    ids=["nan", "inf", "-inf", "400-digits", "1e300"],
)  # fmt: skip
def test_every_number_is_finite_and_bounded(tmp_path: Path, path: tuple[str, ...],
                                            value: object) -> None:  # fmt: skip
    """NaN and infinity were accepted in bandwidths, peaks and the CPU Adam rate; an integer
    too large for a float was an OverflowError in hardware._num."""
    file = _write(tmp_path, _set(path, value))
    with pytest.raises(ConfigError) as info:
        load_hardware(file)
    err = info.value
    assert err.key == ".".join(path) and err.file == file
    assert "\n" not in str(err) and len(str(err)) < 300


def test_fp32_peak_is_required(tmp_path: Path) -> None:
    """A profile without an fp32 rate (or with 0) made costs.compute.matmul_ns divide by zero
    for every dtype it has no rate for: compute_peak falls back to fp32."""
    for peaks in ({"bf16": 312}, {"fp32": 0, "bf16": 312}, {}):
        file = _write(tmp_path, _set(("peak_tflops",), peaks))
        with pytest.raises(ConfigError) as info:
            load_hardware(file)
        assert info.value.key == "peak_tflops.fp32" and "must be > 0" in str(info.value)


@pytest.mark.parametrize("name", PROFILES)
def test_every_dtype_has_a_peak_to_run_at(name: str) -> None:
    hw = load_hardware(name)
    assert all(hw.compute_peak(d) > 0 for d in DTYPES)


def test_gpus_per_node_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_hardware(_write(tmp_path, _set(("gpus_per_node",), 10**6)))
    assert info.value.key == "gpus_per_node" and "must be <=" in str(info.value)


@pytest.mark.parametrize("key", ["name", "display_name"])
@pytest.mark.parametrize(
    "value", [-5, float("nan"), "", ["a"]], ids=["neg", "nan", "empty", "list"]
)
def test_names_are_non_empty_strings(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        load_hardware(_write(tmp_path, _set((key,), value)))
    assert info.value.key == key


@pytest.mark.parametrize(
    ("path", "suggestion"),
    [(("memory_gb",), "memory_gib"), (("efficiency", "matmull"), "matmul"),
     (("intra_node", "latency"), "latency_us"), (("peak_tflops", "bf61"), "bf16")],
)  # fmt: skip
def test_unknown_keys_suggest_the_nearest(tmp_path: Path, path: tuple[str, ...],
                                          suggestion: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_hardware(_write(tmp_path, _set(path, 1)))
    assert info.value.key == ".".join(path)
    assert f"did you mean {suggestion!r}?" in str(info.value) and "allowed:" in str(info.value)


def test_alias_bomb_in_a_profile_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n" + yaml.safe_dump(_good()))
    with pytest.raises(ConfigError) as info:
        load_hardware(str(p))
    assert "expands to more than" in str(info.value)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
def test_fifo_profile_is_not_read(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "gpu.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load_hardware(str(fifo), "scn.yaml")
    assert info.value.key == "hardware"  # not a file: an unknown profile, listing the shipped


@pytest.mark.parametrize(
    ("path", "value"),
    [(("peak_tflops", "bf16"), 1e-300), (("efficiency", "matmul"), 1e-300),
     (("efficiency", "collective"), 1e-9)],
)  # fmt: skip
def test_tiny_rates_are_refused(tmp_path: Path, path: tuple[str, ...], value: float) -> None:
    """A rate of 1e-300 made a duration overflow a float (inf ns)."""
    with pytest.raises(ConfigError) as info:
        load_hardware(_write(tmp_path, _set(path, value)))
    assert info.value.key == ".".join(path) and "must be" in str(info.value)
