"""Hardware profiles: one GPU kind and the node it sits in, read from ``hardware/*.yaml``.

YAML keys carry their unit (``memory_gib``, ``peak_tflops``, ``hbm_bandwidth_gb_per_s``,
``nic_bandwidth_gbit_per_s``, ``latency_us``); the frozen :class:`HardwareProfile` holds SI base
units (bytes, FLOP/s, bytes/s, seconds). GB = 1e9 bytes, GiB = 2**30 bytes, Gbit = 1e9 bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simtrain.errors import ConfigError, unknown_key, unknown_value
from simtrain.spec.limits import as_float, check_range
from simtrain.spec.yamlfile import is_file, load_yaml
from simtrain.units import GB, GIB, MIB

# mxfp8 / nvfp4 / mxfp4: the block-scaled formats of Blackwell (NVIDIA Blackwell Architecture Technical
# Brief: MXFP8 at the FP8 rate, NVFP4 and MXFP4 at the FP4 rate) and CDNA 4 (AMD CDNA 4 whitepaper: MXFP8,
# MXFP6, MXFP4); 0 on every GPU whose profile gives no rate for them.
DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "mxfp8", "nvfp4", "mxfp4")
LINK_KINDS = ("nvswitch", "nvlink", "pcie", "xgmi", "infinity_fabric")

# Where shipped profiles live: <repo>/hardware next to the package.
HARDWARE_DIR = Path(__file__).resolve().parents[2] / "hardware"


#: The kind of source each efficiency.matmul tag names (``HardwareProfile.matmul_source_kind``):
#: [val] fitted on training runs, [own] another profile's value fitted so on the same die,
#: [gemm] a measured GEMM table, [mm] a GEMM benchmark, [meas] ``simtrain calibrate``'s
#: measurement, [est] an estimate.
MATMUL_SOURCE_KINDS = {"val": "training runs", "own": "training runs", "gemm": "GEMMs",
                       "mm": "GEMMs", "meas": "GEMMs", "est": "an estimate"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Achievable fractions of peak; calibration constants, documented in each profile."""

    matmul: float  # large GEMM FLOP/s / dense peak
    memory_bound: float  # achieved HBM bandwidth / peak, for element-wise work
    collective: float  # NCCL bus bandwidth / link bandwidth
    # achieved bytes/s of the optimizer step / HBM bandwidth; None: memory_bound. Set by
    # `simtrain calibrate` from its torch.optim.AdamW measurement (calibrate.measure_adam): the
    # optimizer's streaming kernels and the activations' element-wise kernels differ on a CPU.
    optimizer: float | None = None
    # Grouped GEMM FLOP/s (the routed experts of an MoE layer, one kernel over many small
    # per-expert GEMMs: TE / cuBLASLt grouped GEMM, Megatron-Core --moe-grouped-gemm) / dense
    # peak; None: matmul (no measurement on this GPU).
    grouped_matmul: float | None = None
    # GEMM shape term L (elements): a linear layer's (M x K) @ (K x N) GEMM takes
    # 2·M·N·K·(1 + L/M + L/N + L/K) / (peak · matmul), so small and skinny GEMMs roll off and
    # ``matmul`` is the rate of an unboundedly large one (costs.compute.gemm_edge). 0: no term.
    gemm_edge_elements: float = 0.0

    @property
    def grouped(self) -> float:
        """The grouped-GEMM efficiency, ``matmul`` where the profile has no measurement."""
        return self.matmul if self.grouped_matmul is None else self.grouped_matmul


#: FlashAttention kernels a profile may price and a runtime may call (runtime
#: ``attention_kernel``): Dao's FlashAttention-2 (the flash-attn 2 package; PyTorch's SDPA flash
#: backend), FlashAttention-3 (flash-attn's Hopper kernels) and cuDNN's fused attention
#: (Transformer Engine's FusedAttention; PyTorch's SDPA cuDNN backend).
ATTENTION_KERNELS = ("fa2", "fa3", "cudnn")


@dataclass(frozen=True, slots=True)
class FlashClass:
    """One FlashAttention kernel's class on this GPU (``attention_kernels.<kernel>``;
    costs.attention_shape): a causal call's forward and backward rate of its causal FLOPs over
    the dense 16-bit peak at unbounded parallelism and length and at the reference head dim
    (``costs.compute.REFERENCE_HEAD_DIM``), and each one's edges: its time is
    x (1 + R / (b·H·s)) for few query rows (under-filled GPU), x (1 + S / s) for short
    sequences (each thread block's fixed work, and the causal diagonal, over fewer key blocks)
    and x (1 + D / d) / (1 + D / d_ref) for a head dim d below the reference (the softmax's
    exponentials, a fixed cost per score, over fewer matmul FLOPs per score)."""

    kernel: str
    forward: float
    backward: float
    forward_rows_edge: float = 0.0
    backward_rows_edge: float = 0.0
    forward_seq_edge: float = 0.0
    backward_seq_edge: float = 0.0
    forward_head_dim_edge: float = 0.0
    backward_head_dim_edge: float = 0.0


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    name: str
    display_name: str
    memory_bytes: int
    peak_flops_per_s: tuple[tuple[str, float], ...]  # (dtype, dense FLOP/s); 0 if unsupported
    hbm_bandwidth_bytes_per_s: float
    gpus_per_node: int
    intra_node_kind: str
    intra_node_bandwidth_bytes_per_s: float  # per GPU, per direction
    intra_node_latency_s: float
    pcie_bandwidth_bytes_per_s: float  # host <-> GPU, per direction
    nic_bandwidth_bytes_per_s: float  # per GPU, per direction
    inter_node_latency_s: float
    oversubscription: float  # leaf-to-spine oversubscription ratio of the fat tree (1 = full)
    cuda_context_bytes: int
    host_memory_bytes: int  # per node
    # CPU optimizer throughput for offload (DeepSpeed CPUAdam) of the node's host, shared by the
    # GPUs of the node that step at once (costs.offload.cpu_adam_ns)
    cpu_adam_params_per_s: float
    efficiency: Efficiency
    source_file: str = ""
    # The first source tag of the profile's efficiency.matmul line (:func:`cited_lines`): "est"
    # where it is an estimate, "meas" where `simtrain calibrate` measured it, ...; "" for a
    # profile built without its file
    matmul_tag: str = ""
    # How NCCL runs on this machine (the ``collectives:`` section; costs.collectives.nccl_time_s):
    # the GPU generation NCCL tunes for, whether the NVSwitch does NVLink SHARP (NVLS), and the
    # protocols the network allows (empty: all of LL, LL128, Simple).
    gpu_arch: str = "ampere"
    nvls: bool = False
    nccl_protocols: tuple[str, ...] = ()
    nccl_algorithms: tuple[str, ...] = ()  # empty: every algorithm NCCL has for the op
    # False: a tree all-reduce's levels across nodes do not pipeline (each costs the network
    # term again; costs/collectives.tree_network_s)
    nccl_tree_pipelined: bool = True
    # Channels (rings, each with its tree) NCCL opens for a communicator whose GPUs are all on
    # one node (logged "Channel xx/N"; 0 = not known: NCCL buffer memory not modelled here;
    # costs.nccl_memory).
    nccl_channels_one_node: int = 0
    # Streaming multiprocessors (compute units); 0 = not given. Communication kernels that run
    # on SMs (DeepEP) take their share from the compute that overlaps them.
    sm_count: int = 0
    # FlashAttention kernel classes measured on this GPU, one per kernel (empty: none; the
    # attention core of a flash model is then priced as GEMM FLOPs at ``efficiency.matmul``).
    attention_kernels: tuple[FlashClass, ...] = ()
    # GPUs in one host (one operating system, one hostname), where a node's NVLink domain spans
    # several hosts (a GB200 NVL72 rack: 18 compute trays of 4 GPUs); 0: the node is one host.
    # Only for reading measurements that name their hosts (apps.network_fit).
    gpus_per_host: int = 0
    # Per-direction bandwidth of the direct links between one pair of GPUs of a node without a
    # switch (``intra_node.pair_bandwidth_gb_per_s``: a full mesh, as an HGX 4-GPU board's
    # NVLink or MI300X's xGMI); 0: a switch serves any pair at the GPU's whole intra-node
    # bandwidth (:meth:`intra_group_bandwidth`).
    intra_node_pair_bandwidth_bytes_per_s: float = 0.0

    @property
    def host_gpus(self) -> int:
        """GPUs per host: ``gpus_per_host``, or the whole node where the node is one host."""
        return self.gpus_per_host or self.gpus_per_node

    def intra_group_bandwidth(self, members: int) -> float:
        """Bytes/s per GPU per direction inside a node for a group of ``members`` GPUs of it.
        Through a switch (NVSwitch, a PCIe switch) any group gets the GPU's intra-node bandwidth
        B. On a full mesh a GPU reaches the group's other members over their pair links only:
        min(B, (members − 1)·b) with b the pair bandwidth, what rings spread over every pair
        link of the group carry (NCCL opens several channels, each a ring, over the links it
        finds: NVIDIA/nccl src/graph/search.cc). Two GPUs of an MI300X platform have one xGMI
        link between them, 64 of the GPU's 448 GB/s."""
        pair = self.intra_node_pair_bandwidth_bytes_per_s
        if pair <= 0 or members < 2:
            return self.intra_node_bandwidth_bytes_per_s
        return min(self.intra_node_bandwidth_bytes_per_s, (members - 1) * pair)

    def flash_class(self, kernel: str) -> FlashClass | None:
        """The class of ``kernel`` (one of :data:`ATTENTION_KERNELS`); None: not measured here."""
        return next((c for c in self.attention_kernels if c.kernel == kernel), None)

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype`` (one of :data:`DTYPES`)."""
        for name, value in self.peak_flops_per_s:
            if name == dtype:
                return value
        raise KeyError(dtype)

    @property
    def matmul_is_estimate(self) -> bool:
        """Whether the large-GEMM efficiency is an estimate (its line tagged [est]: no GEMM or
        training run measured on this GPU): what the tables, compare and plan caveat."""
        return self.matmul_tag == "est"

    @property
    def matmul_source_kind(self) -> str:
        """The kind of source of the large-GEMM efficiency, from its line's tag
        (:data:`MATMUL_SOURCE_KINDS`): "training runs" (fitted end to end, so it also carries
        what those runs lost beyond the modelled costs), "GEMMs" (a GEMM measurement), "an
        estimate", or "not stated"."""
        return MATMUL_SOURCE_KINDS.get(self.matmul_tag, "not stated")

    def compute_peak(self, dtype: str) -> float:
        """The peak a step computing in ``dtype`` runs against: that dtype's, or fp32's where
        the GPU has no rate for it (bf16 on a V100 runs through the fp32 units)."""
        return self.peak(dtype) or self.peak("fp32")


# Largest value of every number of a profile, in its YAML unit: far above any GPU (H200:
# 141 GB, 4.8 TB/s, 989 TFLOP/s bf16; a calibrated CPU profile: its RAM, ~2 TB), and small
# enough that no duration or byte count overflows. Each minimum is given where it is read;
# efficiencies are in (0, 1].
#: The two directions of a FlashAttention class (``attention_kernels.<kernel>``).
FLASH_DIRECTIONS = ("forward", "backward")
MAXIMA = {
    "memory_gib": 1e6, "peak_tflops": 1e6, "hbm_bandwidth_gb_per_s": 1e6,
    "bandwidth_gb_per_s": 1e6, "latency_us": 1e6, "pcie_bandwidth_gb_per_s": 1e6,
    "pair_bandwidth_gb_per_s": 1e6,
    "nic_bandwidth_gbit_per_s": 1e7, "inter_node_latency_us": 1e6, "oversubscription": 1e3,
    "cuda_context_mib": 1e6, "host_memory_gib": 1e7, "cpu_adam_params_per_s": 1e15,
    "gemm_edge_elements": 1e6,
    # attention_kernels' edges: R beyond any GPU's query rows (SimuMax's fits: 9,216-55,296),
    # S beyond any sequence (the fits: 272-528 tokens; the fit grid stops at 8,192)
    **{f"{d}_rows_edge": 1e9 for d in FLASH_DIRECTIONS},
    **{f"{d}_seq_edge": 1e7 for d in FLASH_DIRECTIONS},
    # D in head-dim elements (the fits: 13-18; the H100's none-hidden bounds, its matmul over its
    # exponential rate / 4 forward, / 10 backward: 63 and 25): a bound against typos, not a fit
    **{f"{d}_head_dim_edge": 1e4 for d in FLASH_DIRECTIONS},
}  # fmt: skip
#: GPUs in one node of a profile (NVL72 racks: 72).
MAX_GPUS_PER_NODE = 1024
#: Smallest non-zero peak (TFLOP/s: 1 MFLOP/s) and efficiency: with the largest FLOP and byte
#: counts the limits allow, a duration stays below 1e40 ns, far inside a float.
MIN_PEAK_TFLOPS = 1e-6
MIN_FRACTION = 1e-6


def _num(data: dict[str, Any], key: str, file: str, prefix: str = "", minimum: float = 0.0,
         default: float | None = None) -> float:  # fmt: skip
    """A finite number in [minimum, MAXIMA[key or its section]]."""
    full = f"{prefix}{key}"
    if key not in data:
        if default is not None:
            return default
        raise ConfigError(file, full, "missing required key")
    v = as_float(data[key], file, full)
    check_range(v, file, full, minimum, MAXIMA.get(key, MAXIMA.get(prefix.rstrip("."), 1e15)))
    return v


HW_KEYS = {
    "name", "display_name", "memory_gib", "peak_tflops", "hbm_bandwidth_gb_per_s", "gpus_per_node",
    "intra_node", "pcie_bandwidth_gb_per_s", "nic_bandwidth_gbit_per_s", "inter_node_latency_us",
    "oversubscription", "cuda_context_mib", "host_memory_gib", "cpu_adam_params_per_s",
    "efficiency", "collectives", "sm_count", "attention_kernels", "gpus_per_host",
}  # fmt: skip
COLLECTIVES_KEYS = ("gpu_arch", "nvls", "protocols", "algorithms", "tree_pipelined",
                    "nccl_channels_one_node")  # fmt: skip
NCCL_ALGORITHMS = ("ring", "tree", "nvls", "nvls_tree", "pat", "pairwise")
GPU_ARCHS = ("volta", "ampere", "hopper", "blackwell")
NCCL_PROTOCOLS = ("ll", "ll128", "simple")
INTRA_KEYS = ("kind", "bandwidth_gb_per_s", "latency_us", "pair_bandwidth_gb_per_s")
#: Intra-node link kinds without a switch: a full mesh of direct links between the GPUs.
MESH_KINDS = ("nvlink", "xgmi", "infinity_fabric")
EFFICIENCY_KEYS = ("matmul", "memory_bound", "collective", "optimizer", "grouped_matmul",
                   "gemm_edge_elements")  # fmt: skip
#: The keys of one ``attention_kernels.<kernel>`` class: both rates, each with optional edges.
FLASH_KEYS = (*FLASH_DIRECTIONS, *(f"{d}_{e}_edge" for d in FLASH_DIRECTIONS
                                   for e in ("rows", "seq", "head_dim")))  # fmt: skip
#: Largest FlashAttention rate over the profile's peak: a calibrated profile's peak is a
#: measured GEMM rate, which attention kernels can beat (README, "kernel classes"); a datasheet
#: profile's kernels stay far below it (B200: 0.53 / 0.42). A bound against typos, not a fit.
FLASH_RATE_MAX = 2.0


#: Dtypes every profile states (0 where the GPU has no such rate): a missing one would run at
#: the fp32 rate without a word (compute_peak), as a profile copied without its bf16 line did
#: (H100: 33.6 ms -> 254.9 ms a step). Every shipped profile writes them.
REQUIRED_DTYPES = ("fp32", "fp16", "bf16")


def _peaks(peaks: Any, file: str) -> tuple[tuple[str, float], ...]:
    """``peak_tflops``: (dtype, FLOP/s) for every dtype, 0 where not given; fp32 (> 0), fp16
    and bf16 required (:data:`REQUIRED_DTYPES`)."""
    if not isinstance(peaks, dict):
        raise ConfigError(file, "peak_tflops", "must be a mapping dtype -> TFLOP/s", peaks)
    for k in peaks:
        if k not in DTYPES:
            raise unknown_value(file, f"peak_tflops.{k}", k, DTYPES, "dtype")
    if "fp32" not in peaks:
        raise ConfigError(file, "peak_tflops.fp32", "missing: the dense fp32 TFLOP/s, which "
                          "must be > 0 (every GPU computes in fp32)")  # fmt: skip
    peak = tuple((d, _num(peaks, d, file, "peak_tflops.", default=0.0) * 1e12) for d in DTYPES)
    if dict(peak)["fp32"] <= 0:  # compute_peak falls back to it: a step never divides by 0
        raise ConfigError(
            file, "peak_tflops.fp32", "must be > 0: every GPU computes in fp32, and a dtype "
            "without a rate runs at the fp32 one", peaks.get("fp32"),
        )  # fmt: skip
    for d in REQUIRED_DTYPES[1:]:
        if d not in peaks:
            raise ConfigError(file, f"peak_tflops.{d}", f"missing: the dense {d} TFLOP/s; "
                              "write 0 if the GPU has no such rate (it then runs at the fp32 "
                              "one)")  # fmt: skip
    for d, v in peak:
        if 0 < v < MIN_PEAK_TFLOPS * 1e12:
            raise ConfigError(file, f"peak_tflops.{d}", f"must be 0 (no rate) or >= "
                              f"{MIN_PEAK_TFLOPS:g}", v / 1e12)  # fmt: skip
    return peak


def _efficiency(eff: Any, file: str) -> Efficiency:
    """``efficiency``: each fraction in [MIN_FRACTION, 1], with the defaults."""
    if not isinstance(eff, dict):
        raise ConfigError(file, "efficiency", "must be a mapping", eff)
    for k in eff:
        if isinstance(k, str) and k.startswith("flash_"):
            raise ConfigError(file, f"efficiency.{k}", "moved: a FlashAttention class is "
                              "given per kernel, attention_kernels.<kernel>."
                              f"{k.removeprefix('flash_')}", eff[k],
                              " | ".join(ATTENTION_KERNELS))  # fmt: skip
        if k not in EFFICIENCY_KEYS:
            raise unknown_key(file, k, "efficiency.", EFFICIENCY_KEYS)
    efficiency = Efficiency(
        matmul=_num(eff, "matmul", file, "efficiency.", default=0.7),
        memory_bound=_num(eff, "memory_bound", file, "efficiency.", default=0.8),
        collective=_num(eff, "collective", file, "efficiency.", default=0.8),
        optimizer=_num(eff, "optimizer", file, "efficiency.") if "optimizer" in eff else None,
        grouped_matmul=(
            _num(eff, "grouped_matmul", file, "efficiency.") if "grouped_matmul" in eff else None
        ),
        gemm_edge_elements=_num(eff, "gemm_edge_elements", file, "efficiency.", default=0.0),
    )
    opt = 1.0 if efficiency.optimizer is None else efficiency.optimizer
    for k, v in (("matmul", efficiency.matmul), ("memory_bound", efficiency.memory_bound),
                 ("collective", efficiency.collective), ("optimizer", opt),
                 ("grouped_matmul", efficiency.grouped)):  # fmt: skip
        if not 0 < v <= 1:
            raise ConfigError(file, f"efficiency.{k}", "must be in (0, 1]", v)
        if v < MIN_FRACTION:
            raise ConfigError(file, f"efficiency.{k}", f"must be >= {MIN_FRACTION:g}", v)
    return efficiency


def _attention_kernels(data: Any, file: str) -> tuple[FlashClass, ...]:
    """``attention_kernels``: kernel -> {forward, backward, and optional *_rows_edge,
    *_seq_edge, *_head_dim_edge}; each rate in (0, FLASH_RATE_MAX] (a rate is of the profile's peak, which a
    calibrated profile sets to its measured GEMM rate: the attention kernel may beat it)."""
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise ConfigError(file, "attention_kernels", "must be a mapping kernel -> class", data,
                          " | ".join(ATTENTION_KERNELS))  # fmt: skip
    classes = []
    for kernel, cls in data.items():
        where = f"attention_kernels.{kernel}"
        if kernel not in ATTENTION_KERNELS:
            raise unknown_value(file, where, kernel, ATTENTION_KERNELS, "kernel")
        if not isinstance(cls, dict):
            raise ConfigError(file, where, "must be a mapping with forward and backward", cls)
        for k in cls:
            if k not in FLASH_KEYS:
                raise unknown_key(file, k, f"{where}.", FLASH_KEYS)
        rates = []
        for d in FLASH_DIRECTIONS:
            if d not in cls:
                raise ConfigError(file, f"{where}.{d}", "missing: a kernel class needs both "
                                  "directions' rates")  # fmt: skip
            rates.append(as_float(cls[d], file, f"{where}.{d}"))
            check_range(rates[-1], file, f"{where}.{d}", MIN_FRACTION, FLASH_RATE_MAX)
        edges = {k: _num(cls, k, file, f"{where}.", default=0.0) for k in FLASH_KEYS[2:]}
        classes.append(FlashClass(kernel, *rates, **edges))
    return tuple(classes)


def _collectives(data: Any, file: str) -> dict[str, Any]:
    """``collectives``: gpu_arch (NCCL's tuning row), nvls, protocols and algorithms (default:
    all), tree_pipelined (default true), nccl_channels_one_node (default 0: not known)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(file, "collectives", "must be a mapping", data)
    for k in data:
        if k not in COLLECTIVES_KEYS:
            raise unknown_key(file, k, "collectives.", COLLECTIVES_KEYS)
    out: dict[str, Any] = {}
    if "gpu_arch" in data:
        if data["gpu_arch"] not in GPU_ARCHS:
            raise unknown_value(file, "collectives.gpu_arch", data["gpu_arch"], GPU_ARCHS,
                                "GPU architecture")  # fmt: skip
        out["gpu_arch"] = data["gpu_arch"]
    for key, field in (("nvls", "nvls"), ("tree_pipelined", "nccl_tree_pipelined")):
        if key in data:
            if not isinstance(data[key], bool):
                raise ConfigError(file, f"collectives.{key}", "must be true or false", data[key])
            out[field] = data[key]
    if "protocols" in data:
        protos = data["protocols"]
        if (
            not isinstance(protos, list)
            or not protos
            or any(x not in NCCL_PROTOCOLS for x in protos)
        ):
            raise ConfigError(file, "collectives.protocols", "must be a non-empty list of "
                              "protocols", protos, " | ".join(NCCL_PROTOCOLS))  # fmt: skip
        out["nccl_protocols"] = tuple(dict.fromkeys(protos))
    if "algorithms" in data:
        algos = data["algorithms"]
        if not isinstance(algos, list) or not algos or any(x not in NCCL_ALGORITHMS for x in algos):
            raise ConfigError(file, "collectives.algorithms", "must be a non-empty list of "
                              "algorithms", algos, " | ".join(NCCL_ALGORITHMS))  # fmt: skip
        out["nccl_algorithms"] = tuple(dict.fromkeys(algos))
    if "nccl_channels_one_node" in data:
        n = data["nccl_channels_one_node"]
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 64:
            raise ConfigError(file, "collectives.nccl_channels_one_node",
                              "must be an integer in 0..64 (NCCL's MAXCHANNELS: 32 in 2.10, 64 in "
                              "2.30)", n)  # fmt: skip
        out["nccl_channels_one_node"] = n
    return out


def _pair_bandwidth_gb(intra: dict[str, Any], gpus_per_node: int, file: str) -> float:
    """``intra_node.pair_bandwidth_gb_per_s`` (0 when absent): only on a mesh kind, positive, at
    most the GPU's ``intra_node.bandwidth_gb_per_s`` B (a pair's links are some of the GPU's),
    and with (gpus_per_node − 1) pairs reaching B (a group of the whole node uses every link of
    its GPUs; within 6 digits, as fit-network writes them)."""
    key = "pair_bandwidth_gb_per_s"
    if key not in intra:
        return 0.0
    if intra["kind"] not in MESH_KINDS:
        raise ConfigError(file, f"intra_node.{key}", f"applies only to a mesh without a switch "
                          f"(intra_node.kind one of {', '.join(MESH_KINDS)}), not "
                          f"intra_node.kind {intra['kind']}: a switch serves every pair at "
                          "intra_node.bandwidth_gb_per_s")  # fmt: skip
    pair = _num(intra, key, file, "intra_node.", 1e-9)
    whole = _num(intra, "bandwidth_gb_per_s", file, "intra_node.", 1e-9)
    if pair > whole:
        raise ConfigError(file, f"intra_node.{key}", f"must be at most intra_node."
                          f"bandwidth_gb_per_s = {whole:g} (one pair's links are some of the "
                          "GPU's)", pair)  # fmt: skip
    if (gpus_per_node - 1) * pair < whole * (1 - 1e-5):
        raise ConfigError(file, f"intra_node.{key}", f"x (gpus_per_node - 1) = "
                          f"{(gpus_per_node - 1) * pair:g} must reach intra_node.bandwidth_gb_per_s"
                          f" = {whole:g}: a group of the whole node uses every link of its GPUs "
                          "(a mesh of gpus_per_node GPUs)", pair)  # fmt: skip
    return pair


def parse_hardware(data: Any, file: str) -> HardwareProfile:
    """Validate a hardware mapping (already parsed from YAML) into a profile."""
    if not isinstance(data, dict):
        raise ConfigError(file, "<root>", "a hardware profile must be a mapping")
    unknown = sorted((k for k in data if k not in HW_KEYS), key=str)
    if unknown:
        raise unknown_key(file, unknown[0], "", sorted(HW_KEYS))
    peak = _peaks(data.get("peak_tflops"), file)
    intra = data.get("intra_node")
    if not isinstance(intra, dict):
        raise ConfigError(
            file, "intra_node", "must be a mapping with kind, bandwidth_gb_per_s, latency_us"
        )
    if intra.get("kind") not in LINK_KINDS:
        raise unknown_value(file, "intra_node.kind", intra.get("kind"), LINK_KINDS, "link kind")
    for k in intra:
        if k not in INTRA_KEYS:
            raise unknown_key(file, k, "intra_node.", INTRA_KEYS)
    efficiency = _efficiency(data.get("efficiency", {}), file)
    gpn = data.get("gpus_per_node")
    if not isinstance(gpn, int) or isinstance(gpn, bool) or gpn < 1:
        raise ConfigError(file, "gpus_per_node", "must be a positive integer", gpn)
    if gpn > MAX_GPUS_PER_NODE:
        raise ConfigError(file, "gpus_per_node", f"must be <= {MAX_GPUS_PER_NODE:,}", gpn)
    pair_gb = _pair_bandwidth_gb(intra, gpn, file)
    gph = data.get("gpus_per_host", 0)
    if not isinstance(gph, int) or isinstance(gph, bool) or gph < 0 or (gph and gpn % gph):
        raise ConfigError(file, "gpus_per_host", f"must be an integer dividing gpus_per_node = "
                          f"{gpn} (0: the node is one host)", gph)  # fmt: skip
    sms = data.get("sm_count", 0)
    if not isinstance(sms, int) or isinstance(sms, bool) or not 0 <= sms <= 2**16:
        raise ConfigError(file, "sm_count", "must be an integer in 0 .. 65536 (0: not given)", sms)
    for k in ("name", "display_name"):
        if k in data and (not isinstance(data[k], str) or not data[k].strip()):
            raise ConfigError(file, k, "must be a non-empty string", data[k])
    nccl = _collectives(data.get("collectives"), file)
    if nccl.get("nvls") and intra["kind"] != "nvswitch":
        raise ConfigError(file, "collectives.nvls", "NVLink SHARP runs in an NVSwitch: true "
                          f"needs intra_node.kind nvswitch, not {intra['kind']}", True)  # fmt: skip
    return HardwareProfile(
        name=str(data.get("name", Path(file).stem)),
        display_name=str(data.get("display_name", data.get("name", Path(file).stem))),
        memory_bytes=int(_num(data, "memory_gib", file, minimum=0.001) * GIB),
        peak_flops_per_s=peak,
        hbm_bandwidth_bytes_per_s=_num(data, "hbm_bandwidth_gb_per_s", file, minimum=1e-9) * GB,
        gpus_per_node=gpn,
        intra_node_kind=str(intra["kind"]),
        intra_node_bandwidth_bytes_per_s=_num(
            intra, "bandwidth_gb_per_s", file, "intra_node.", 1e-9
        )
        * GB,
        intra_node_latency_s=_num(intra, "latency_us", file, "intra_node.", default=2.0) * 1e-6,
        intra_node_pair_bandwidth_bytes_per_s=pair_gb * GB,
        pcie_bandwidth_bytes_per_s=_num(data, "pcie_bandwidth_gb_per_s", file, minimum=1e-9) * GB,
        nic_bandwidth_bytes_per_s=_num(data, "nic_bandwidth_gbit_per_s", file, minimum=1e-9)
        * 1e9
        / 8,
        inter_node_latency_s=_num(data, "inter_node_latency_us", file, default=5.0) * 1e-6,
        oversubscription=_num(data, "oversubscription", file, minimum=1.0, default=1.0),
        cuda_context_bytes=int(_num(data, "cuda_context_mib", file) * MIB),
        host_memory_bytes=int(_num(data, "host_memory_gib", file) * GIB),
        cpu_adam_params_per_s=_num(data, "cpu_adam_params_per_s", file, minimum=1.0, default=1e9),
        efficiency=efficiency,
        source_file=file,
        sm_count=sms,
        gpus_per_host=gph if gph != gpn else 0,
        attention_kernels=_attention_kernels(data.get("attention_kernels"), file),
        **nccl,
    )


# --------------------------------------------------------------------------- source citations
# A profile cites the source of each number in the comment of its line, as bracketed tags
# (`matmul: 0.72  # [val] ...`) that its header defines (`#  [val]   <document>`); [secondary]
# qualifies a citation and names no source. tests/test_hardware.py checks every number has one;
# `simtrain hardware` reads efficiency.matmul's.

_KEY_LINE = re.compile(
    r"^\s*(?P<key>[A-Za-z_]\w*)\s*:\s*(?P<value>[^#]*?)\s*(?:#(?P<comment>.*))?$"
)
_TAG = re.compile(r"\[([A-Za-z0-9]+)\]")
_HEADER_TAG = re.compile(r"^#\s+\[([A-Za-z0-9]+)\]")
CITATION_MARKERS = frozenset({"secondary"})


@dataclass(frozen=True, slots=True)
class CitedLine:
    """One ``key: value  # comment`` line of a profile and the source tags of its comment."""

    number: int  # 1-based line number
    key: str
    value: str
    tags: tuple[str, ...]  # lower case, in order, without CITATION_MARKERS

    @property
    def numeric(self) -> bool:
        try:
            float(self.value.replace("_", ""))
        except ValueError:
            return False
        return True


def cited_lines(text: str) -> list[CitedLine]:
    """Every ``key: value`` line of a profile's text (comment lines skipped), with its tags."""
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#") or not (m := _KEY_LINE.match(line)):
            continue
        tags = [t.lower() for t in _TAG.findall(m["comment"] or "")]
        out.append(CitedLine(no, m["key"], m["value"],
                             tuple(t for t in tags if t not in CITATION_MARKERS)))  # fmt: skip
    return out


def source_tag(text: str, key: str) -> str:
    """The first source tag of the first ``key:`` line of a profile's text, "" where none."""
    line = next((ln for ln in cited_lines(text) if ln.key == key), None)
    return line.tags[0] if line and line.tags else ""


def defined_tags(text: str) -> set[str]:
    """The source tags a profile's header defines (``#  [tag]   <document>`` lines)."""
    return {m.group(1).lower() for line in text.splitlines() if (m := _HEADER_TAG.match(line))}


def available_profiles() -> list[str]:
    """Names of the shipped profiles (files in hardware/)."""
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


def load_hardware(name_or_path: str, file: str | None = None, key: str = "hardware",
                  base_dir: Path | None = None) -> HardwareProfile:  # fmt: skip
    """Load a profile by shipped name (``a100_sxm4_80gb``) or by path (absolute, or relative to
    ``base_dir`` -- the scenario's folder -- or to the working directory)."""
    candidates = []
    p = Path(name_or_path)
    is_path = p.suffix in (".yaml", ".yml")
    if is_path:
        if base_dir is not None and not p.is_absolute():
            candidates.append(base_dir / p)
        candidates.append(p)
    elif "/" in name_or_path or "\\" in name_or_path or name_or_path in ("", ".", ".."):
        # a name is a file of the hardware folder, never a path out of it (../hardware/x was
        # resolved against the folder: a fuzz campaign)
        raise ConfigError(file, key, "a profile name has no folder; give a path as a .yaml "
                          "file", name_or_path, ", ".join(available_profiles()))  # fmt: skip
    else:
        candidates.append(HARDWARE_DIR / f"{name_or_path}.yaml")
    for c in candidates:
        if is_file(c):
            hw = parse_hardware(load_yaml(c), str(c))
            return replace(hw, matmul_tag=source_tag(c.read_text(encoding="utf-8"), "matmul"))
    if is_path:  # (was "unknown hardware profile" for a path that is not there)
        raise ConfigError(file, key, "hardware profile file not found", name_or_path)
    raise unknown_value(
        file,
        key,
        name_or_path,
        available_profiles(),
        "hardware profile (a name `simtrain hardware` lists, or a .yaml path)",
        nearest_to="" if is_path else None,
        sep=", ",
    )  # a missing file: no name
