"""NCCL's connection buffers (costs.nccl_memory) against hand counts from NCCL 2.10.3's code:
the per-protocol buffer sizes, the connections of a ring plus its tree on one channel, the
communicators a Megatron-DeepSpeed GPU belongs to, and the gate (device-level memory only)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from simtrain.costs import nccl_memory as nm
from simtrain.costs.memory import stage_memory
from simtrain.errors import ConfigError
from simtrain.spec.hardware import load_hardware
from simtrain.spec.runtime import load_runtime, parse_runtime
from simtrain.spec.scenario import parse_scenario
from simtrain.units import MIB

# One connection: P2P 6 + 6 MiB (src/transport/p2p.cc, 2 MiB CUDA_IPC_MIN rounding); NET
# send LL128 + Simple, receive LL + LL128 + Simple (src/transport/net.cc, GPUDirect RDMA).
P2P = 12 * MIB
NET = (4_915_200 + 4_194_304) + (524_288 + 4_915_200 + 4_194_304)


def test_buffer_sizes_are_nccl_2_10_defaults() -> None:
    assert nm.LL_BUFF_BYTES == 524_288  # 8 lines x 512 threads x 8 steps x 16 B
    assert nm.LL128_BUFF_BYTES == 4_915_200  # 120 x 640 x 8 x 8 B
    assert nm.SIMPLE_BUFF_BYTES == 4 * MIB
    assert nm.P2P_SEND_BYTES == nm.P2P_RECV_BYTES == 6 * MIB
    assert nm.NET_SEND_BYTES + nm.NET_RECV_BYTES == NET == 18_743_296


def test_btree_matches_nccls_illustration() -> None:
    # src/graph/trees.cc, 14 ranks: 0 -> 8; 8 -> 4, 12; 4 -> 2, 6; 12 -> 10, 13; 2 -> 1, 3
    assert nm.btree(14, 0)[:3] == (-1, -1, 8)
    assert nm.btree(14, 8)[:3] == (0, 4, 12)
    assert nm.btree(14, 12)[:3] == (8, 10, 13)
    assert nm.btree(14, 2)[:3] == (4, 1, 3)
    assert nm.btree(14, 13)[:3] == (12, -1, -1)
    # second tree, even count: mirrored (rank 13 is the root's mirror: no parent)
    assert nm.dtree(14, 13, 1)[0] == -1
    assert nm.dtree(14, 5, 1)[0] == 14 - 1 - nm.btree(14, 8)[0]


def test_one_node_tp4_hand_count() -> None:
    # ring 0>1>2>3>0 and the tree chain's way back 1>0, 2>1, 3>2: 7 P2P connections a channel,
    # 24 channels, over 4 GPUs: 7 x 12 MiB x 24 / 4 = 504 MiB
    assert nm.communicator_bytes(4, 4, 24) == 504 * MIB
    # two GPUs: the ring's 0>1, 1>0 are the tree's too: 2 x 12 MiB x 24 / 2
    assert nm.communicator_bytes(2, 2, 24) == 288 * MIB


def test_two_nodes_one_gpu_each() -> None:
    # a pipeline pair across nodes: 2 NET connections, 2 channels (one NIC, doubled), 2 GPUs
    assert nm.communicator_bytes(2, 1, 24) == 2 * NET * 2 / 2
    # never more channels across nodes than on one node
    assert nm.communicator_bytes(2, 1, 1) == 2 * NET * 1 / 2


def test_dp8_over_four_nodes_hand_count() -> None:
    # 8 ranks, 2 per node. Ring: P2P 0>1 2>3 4>5 6>7, NET 1>2 3>4 5>6 7>0; chain back: P2P
    # 1>0 3>2 5>4 7>6. Tree 0 over nodes (btree 4: 0 root, 2 under 0, 1 and 3 under 2):
    # node 2's GPU 4 <-> node 0's GPU 0; node 1 (first child) <-> node 2's GPU 5; node 3
    # (second) <-> GPU 4: 6 NET. Tree 1 (mirrored): 0 <-> 2, 2 <-> 6, 4 <-> 3 of which 3>4 is
    # the ring's: 5 NET. Channels: 2 x 2 GPUs = 4, two per tree.
    per_channel_tree0 = 8 * P2P + (4 + 6) * NET
    per_channel_tree1 = 8 * P2P + (4 + 5) * NET
    expected = (2 * per_channel_tree0 + 2 * per_channel_tree1) / 8
    assert nm.communicator_bytes(8, 2, 24) == expected == 139_362_304


def test_megatron_deepspeed_communicators() -> None:
    groups = load_runtime("deepspeed").nccl_communicators
    first = nm.stage_communicators(groups, tp=4, cp=1, dp=8, pp=12, stage=0, gpus_per_node=8,
                                   tied_embeddings=True)  # fmt: skip
    shapes = {c.group: (c.ranks, c.gpus_per_node, c.count) for c in first}
    assert shapes == {"tp": (4, 4, 1), "dp": (8, 2, 1), "model_parallel": (48, 4, 1),
                      "pipeline": (12, 1, 1), "pp_pairs": (2, 1, 1), "embedding": (2, 1, 1),
                      "world": (384, 8, 1)}  # fmt: skip
    middle = nm.stage_communicators(groups, tp=4, cp=1, dp=8, pp=12, stage=5, gpus_per_node=8,
                                    tied_embeddings=True)  # fmt: skip
    mid = {c.group: c.count for c in middle}
    assert mid["pp_pairs"] == 2 and "embedding" not in mid
    one_gpu = nm.stage_communicators(groups, tp=1, cp=1, dp=1, pp=1, stage=0, gpus_per_node=8,
                                     tied_embeddings=True)  # fmt: skip
    assert one_gpu == []


def _scenario(reported: str) -> Any:
    data: dict[str, Any] = {
        "name": "nccl",
        "model": {"preset": "llama2-7b", "layers": 4},
        "hardware": "a100_sxm4_80gb",
        "cluster": {"nodes": 2, "gpus_per_node": 8},
        "runtime": {"name": "deepspeed", "memory_reported": reported},
        "training": {
            "seq_len": 2048,
            "global_batch": 16,
            "micro_batch": 1,
            "precision": "bf16",
            "optimizer": "adamw",
        },  # fmt: skip
        "parallelism": {"tp": 4, "dp": 2, "pp": 2},
    }
    return parse_scenario(copy.deepcopy(data), "nccl.yaml")


def test_counted_only_in_device_level_memory() -> None:
    smi, torch_ = _scenario("nvidia_smi"), _scenario("allocated")
    for stage in (0, 1):
        a, b = stage_memory(smi, stage), stage_memory(torch_, stage)
        assert b.breakdown.nccl_bytes == 0
        # tp 4 on a node (504 MiB), dp 2 on a node (288 MiB), model_parallel tp x pp = 8 over
        # 2 nodes 4 a node, pipeline and pp pair and (llama: untied) no embedding group,
        # world 16 over 2 nodes
        comms = nm.stage_communicators(smi.runtime.nccl_communicators, 4, 1, 2, 2, stage, 8,
                                       smi.model.tied_embeddings)  # fmt: skip
        want = nm.nccl_buffer_bytes(comms, 24)
        assert want > (504 + 288) * MIB
        assert a.breakdown.nccl_bytes == want
        assert a.peak_memory_bytes - b.peak_memory_bytes == want


def test_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="nccl_communicators"):
        parse_runtime({"name": "x", "nccl_communicators": ["tp", "tensor"]}, "rt.yaml")
    with pytest.raises(ConfigError, match="nccl_communicators"):
        parse_runtime({"name": "x", "nccl_communicators": "tp"}, "rt.yaml")
    hw = load_hardware("a100_sxm4_80gb")
    assert hw.nccl_channels_one_node == 24
    from simtrain.spec.hardware import HARDWARE_DIR, parse_hardware
    from simtrain.spec.yamlfile import load_yaml

    data = load_yaml(HARDWARE_DIR / "a100_sxm4_80gb.yaml")
    data["collectives"]["nccl_channels_one_node"] = 65
    with pytest.raises(ConfigError, match="nccl_channels_one_node"):
        parse_hardware(data, "hw.yaml")
