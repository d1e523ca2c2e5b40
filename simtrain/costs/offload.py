"""CPU offload as DeepSpeed runs it: what crosses PCIe, when, and what the host computes.

ZeRO-Offload (Ren et al. 2021, "ZeRO-Offload: Democratizing Billion-Scale Model Training",
§4: fp32 master weights and optimizer states on the CPU, gradients down and 16-bit parameters
up over PCIe, Adam on the CPU; §4.2: the gradient copies overlap the backward, bucket by
bucket) and ZeRO-Infinity's parameter offload (Rajbhandari et al. 2021 §5: each GPU's
parameter partition in host memory, brought up layer by layer ahead of its all-gather). The
mechanism follows deepspeedai/DeepSpeed@edaa7221267243c7be7fb49c5d5f5c4fb97b4641:

- ``deepspeed/runtime/zero/stage_1_and_2.py`` ``copy_grads_in_partition``: at the gradient
  accumulation boundary each reduced bucket's partition is cast to fp32 on the GPU and copied
  into the pinned fp32 gradient buffer of the host
  (``async_inplace_copy_grad_to_fp32_buffer_from_gpu``: ``src_tensor.to(fp32)`` then
  ``copy_(non_blocking=True)``), so 4 B per partition parameter cross PCIe downwards; with
  gradient accumulation every backward also round-trips the 16-bit gradients through a pinned
  host accumulator (``async_accumulate_grad_in_cpu_via_gpu``: up with ``accumulate_gradients``
  when ``micro_step_id > 0``, down with ``copy_gradients_to_cpu``).
- ``step``: ``_optimizer_step`` runs DeepSpeedCPUAdam (``deepspeed/ops/adam/cpu_adam.py``) on
  the host's fp32 partition, then the result is cast into the pinned 16-bit buffer
  (``param_buffer_of_bit16_for_cpu_offload_groups``) and copied up
  (``bit16_partitions[partition_id].data.copy_(..., non_blocking=True)``): prec.param B per
  partition parameter.
- ``deepspeed/runtime/zero/partition_parameters.py`` (``offload_param``): the partition
  (``ds_tensor``) lives in host memory and ``_all_gather`` copies it to the GPU before the
  collective (``param_ds_tensor.to(device)``); ``partitioned_param_coordinator.py``
  ``fetch_sub_module`` prefetches the next sub-modules (``stage3_prefetch_bucket_size``).

Host pinned memory (``pin_memory: true``, DeepSpeed's default for ``offload_optimizer`` and
``offload_param``: ``deepspeed/runtime/zero/offload_config.py`` l.45, l.75): the
fp32 master partition (``get_accelerator().pin_memory(weights_partition)``), its fp32 gradient
buffer (``single_partition_of_fp32_groups[i].grad``), the 16-bit parameter buffer, and with
gradient accumulation the 16-bit accumulator; Adam's states are plain host tensors
(``torch.zeros_like`` of the partition in DeepSpeedCPUAdam).
"""

from __future__ import annotations

import math

from simtrain.spec.hardware import HardwareProfile
from simtrain.spec.scenario import Scenario

#: Bytes per parameter of the gradient DeepSpeed copies to the host at the boundary: fp32
#: (``master_weights_and_grads_dtype``), whatever the training precision.
FP32_GRAD_BYTES = 4
#: Bytes per parameter of DeepSpeed's fp32 master partition on the host
#: (``single_partition_of_fp32_groups``: an fp32 clone of the partition, whatever the precision).
MASTER_BYTES = 4


def pcie_ns(nbytes: float, hw: HardwareProfile) -> int:
    """One copy between GPU and host: ``nbytes / pcie_bandwidth`` (per direction, the profile's
    ``pcie_bandwidth_gb_per_s``), rounded up to whole ns."""
    return math.ceil(1e9 * nbytes / hw.pcie_bandwidth_bytes_per_s) if nbytes > 0 else 0


def cpu_adam_ns(params: int, hw: HardwareProfile, host_ranks: int = 1) -> int:
    """DeepSpeedCPUAdam over ``params`` parameters: ``cpu_adam_params_per_s`` is the node's
    host (the profiles' two sockets; ``simtrain calibrate`` measures one process on all cores),
    shared by the ``host_ranks`` GPUs of the node whose ranks step at the same time (each
    DeepSpeed rank runs its own CPU-Adam on its partition after the same boundary):
    ``params x host_ranks / rate``."""
    rate = hw.cpu_adam_params_per_s / max(host_ranks, 1)
    return math.ceil(1e9 * params / rate) if params > 0 else 0


def boundary_grad_bytes(shard: int, grad_bytes: int, microbatches: int) -> int:
    """Bytes copied down at the accumulation boundary for a partition of ``shard`` parameters:
    the fp32 gradient (4 B each) and, with gradient accumulation (``microbatches`` > 1), the
    16-bit accumulated gradient as well (``grad_bytes`` each): at edaa7221
    ``copy_grads_in_partition`` (stage_1_and_2.py l.1650-1666) runs
    ``async_accumulate_grad_in_cpu_via_gpu`` (up, then ``copy_gradients_to_cpu`` down) whenever
    ``micro_step_id > 0``, the boundary included, before the fp32 copy."""
    return shard * (FP32_GRAD_BYTES + (grad_bytes if microbatches > 1 else 0))


def pinned_host_bytes(shard: int, param_bytes: int, grad_bytes: int, microbatches: int) -> int:
    """Pinned host bytes of optimizer offload for a partition of ``shard`` parameters: fp32
    master weights and fp32 gradients (4 + 4 B), the 16-bit parameter buffer, and with gradient
    accumulation the 16-bit gradient accumulator."""
    return shard * (
        MASTER_BYTES + FP32_GRAD_BYTES + param_bytes + (grad_bytes if microbatches > 1 else 0)
    )


def offload_per_layer(sc: Scenario) -> bool:
    """Whether offload's copies hang off ZeRO-3's per-layer slices (``costs.workload``'s
    ``_offload_chunks``) rather than the rank's gradient buckets: ZeRO-3 sharded over dp x cp,
    or with its parameters offloaded (each layer fetched from the host)."""
    p, t = sc.parallelism, sc.training
    return p.zero_stage == 3 and (p.dp_cp > 1 or t.offload.parameters)


def accumulates_through_host(sc: Scenario) -> bool:
    """Whether every backward before the boundary round-trips its 16-bit gradients through the
    host accumulator: only where the gradients are reduced and copied at every backward, ZeRO-2
    (``partition_gradients``) and a lone GPU; ZeRO-1 reduces at the boundary only
    (``reduce_ready_partitions_and_remove_grads``, stage_1_and_2.py l.1767-1769, edaa7221)."""
    return sc.parallelism.zero_stage != 1


def updated_params_cross_pcie(sc: Scenario) -> bool:
    """Whether the CPU step's updated 16-bit partition is copied up: not when the parameters
    themselves are offloaded (ZeRO-Infinity): the partition lives on the host, and the next
    forward's per-layer fetches bring it up."""
    return not sc.training.offload.parameters
