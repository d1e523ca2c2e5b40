"""The tensor-parallel exchange of a layer: an all-reduce without sequence parallelism, a
reduce-scatter plus an all-gather with it (Korthikanti et al. 2022 §4.2.2). NCCL has no tree
all-gather or reduce-scatter, so a tree/NVLS-tree all-reduce never prices the SP exchange."""

from __future__ import annotations

import copy
from typing import Any

from simtrain.costs import collectives as coll
from simtrain.costs.comm import tp_allreduce_ns
from simtrain.layout.step import resolve
from simtrain.spec.scenario import Scenario, parse_scenario


def scenario(tp: int, sp: bool) -> Scenario:
    data: dict[str, Any] = {
        "name": "tp",
        "model": {"preset": "llama2-7b", "layers": 2, "flash_attention": True},
        "hardware": "h100_sxm5_80gb",  # NCCL: ring, tree, NVLS; InfiniBand across nodes
        "runtime": {"name": "megatron_core", "collective_algorithm": "nccl"},
        "training": {
            "seq_len": 4096,
            "global_batch": 1,
            "micro_batch": 1,
            "precision": "bf16",
            "optimizer": "adamw",
        },  # fmt: skip
        "parallelism": {"tp": tp, "sequence_parallel": sp},
    }
    return parse_scenario(copy.deepcopy(data), "tp.yaml")


def _nccl(sc: Scenario, op: str, size: float, n: int, g: int) -> float:
    hw = sc.hardware
    intra, inter = coll.node_links(hw)
    return coll.nccl_time_s(op, size, n, intra=intra, inter=inter, gpus_per_node=g,
                            nvls=hw.nvls, protocols=hw.nccl_protocols or None,
                            algorithms=hw.nccl_algorithms or None,
                            arch=hw.gpu_arch).time_s  # fmt: skip


def test_sequence_parallel_is_a_reduce_scatter_and_an_all_gather_across_nodes() -> None:
    sc = scenario(16, sp=True)  # 16 GPUs: 2 nodes of 8
    step = resolve(sc)
    size = 4096 * 4096 * 2  # b·s·h bf16 bytes of Llama 2 7B, one sequence
    assert step.boundary_bytes == size
    rs = _nccl(sc, "reduce_scatter", size, 16, 8)
    ag = _nccl(sc, "all_gather", size, 16, 8)
    assert tp_allreduce_ns(sc, step) == round(1e9 * rs) + round(1e9 * ag)
    # Without SP the same exchange is one all-reduce, for which NCCL picks its fastest
    # algorithm; here that is not a ring (ring AR = RS + AG plus the multi-node plateau).
    no_sp = scenario(16, sp=False)
    ar = coll.nccl_time_s("all_reduce", size, 16, intra=coll.node_links(sc.hardware)[0],
                          inter=coll.node_links(sc.hardware)[1], gpus_per_node=8,
                          nvls=sc.hardware.nvls, protocols=sc.hardware.nccl_protocols or None,
                          algorithms=sc.hardware.nccl_algorithms or None,
                          arch=sc.hardware.gpu_arch)  # fmt: skip
    assert ar.algorithm != "ring"
    assert tp_allreduce_ns(no_sp, resolve(no_sp)) == round(1e9 * ar.time_s)
    assert tp_allreduce_ns(no_sp, resolve(no_sp)) != tp_allreduce_ns(sc, step)


def test_tp_one_has_no_exchange() -> None:
    sc = scenario(1, sp=False)
    assert tp_allreduce_ns(sc, resolve(sc)) == 0
