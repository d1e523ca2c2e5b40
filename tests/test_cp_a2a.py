"""Context parallelism as the all-to-all (runtime ``cp_attention: a2a``: DeepSpeed-Ulysses,
Megatron-Core ``--cp-comm-type a2a``): the exchanged bytes and times against their closed form,
the attention as one head-split call over the whole sequence, a sliding window under it, the
output saved on both sides of the exchange, bad input, the runtimes and importers that pick it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from simtrain.apps.importers import import_config
from simtrain.apps.importers.common import load_imported
from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.activations import layer_activation_bytes, layer_saved_tensors
from simtrain.costs.collectives import node_links
from simtrain.costs.compute import (
    block_flops,
    chunk_costs,
    flash_core,
    flash_kernel_flops,
    window_core_saving,
    window_keys,
)
from simtrain.costs.cp import a2a_layer, cp_ring_buffer_bytes, ring_layer
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.spec.runtime import load_runtime
from simtrain.spec.scenario import Scenario, cp_rank_training, parse_scenario

A2A = {"name": "megatron_lm_2021", "cp_attention": "a2a"}  # ring collectives: a closed form
S = 16384


def scenario(cp: int = 1, tp: int = 1, runtime: dict | None = None, **over: Any) -> Scenario:
    """Llama 3 8B (4 layers; 32 heads, 8 K/V heads of 128) on 16,384 tokens, bf16, flash."""
    data: dict[str, Any] = {
        "name": "a2a",
        "model": {"preset": "llama3-8b", "layers": 4, "flash_attention": True},
        "hardware": "h100_sxm5_80gb",
        "training": {
            "seq_len": S,
            "global_batch": 4,
            "micro_batch": 1,
            "precision": "bf16",
            "optimizer": "adamw",
        },  # fmt: skip
        "parallelism": {"dp": 1, "tp": tp, "pp": 1, "cp": cp},
        "runtime": dict(A2A if runtime is None else runtime),
    }
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_scenario(copy.deepcopy(data), "a2a.yaml")


def test_exchanged_bytes_and_times_are_the_closed_form() -> None:
    """Each direction four all-to-alls over the CP group: Q and O of b·(s/cp)·heads·d·e/tp
    bytes, K and V of b·(s/cp)·kv_heads·d·e/tp, (cp−1)/cp of each over the NVLink ring link
    plus (cp−1) latencies (nccl-tests all-to-all bus factor); all exposed; 4 bytes of copies per
    byte exchanged."""
    sc = scenario(cp=4, tp=2)
    q = 2 * (S // 4) * 32 * 128 // 2
    k = 2 * (S // 4) * 8 * 128 // 2
    assert (q, k) == (16_777_216, 4_194_304)
    hw = sc.hardware
    bw = hw.intra_node_bandwidth_bytes_per_s * hw.efficiency.collective
    lat = hw.intra_node_latency_s
    one = [1e9 * (3 / 4 * x / bw + 3 * lat) for x in (q, k, k, q)]
    r = a2a_layer(sc)
    # (each collective a whole number of ns: costs.comm.collective_ns)
    assert r.forward_transfer_ns == pytest.approx(sum(one), abs=4)
    assert r.backward_transfer_ns == r.forward_transfer_ns
    assert (r.forward_exposed_ns, r.backward_exposed_ns) == (
        r.forward_transfer_ns, r.backward_transfer_ns)  # fmt: skip
    assert r.forward_elementwise_bytes == r.backward_elementwise_bytes == 4 * (2 * q + 2 * k)
    # ring_layer dispatches on the runtime; an attention time changes nothing (no overlap)
    assert ring_layer(sc, 1e12) == r
    assert cp_ring_buffer_bytes(sc) == 2 * (q + 2 * k)
    # across nodes (tp 4 x cp 4 > 8 GPUs a node; 32 K/V heads): each GPU sends (g−1)/n of
    # each tensor over NVLink and (n−g)/n through its NIC at once (g = 2 of the group a node)
    mha = {"preset": "llama3-8b", "layers": 4, "flash_attention": True, "kv_heads": 32}
    far = scenario(cp=4, tp=4, model=mha)
    intra, inter = node_links(hw)
    x = 2 * (S // 4) * 32 * 128 // 4  # Q = K = V = O
    t = max(1 / 4 * x / intra.bandwidth_bytes_per_s, 2 / 4 * x / inter.bandwidth_bytes_per_s)
    assert a2a_layer(far).forward_transfer_ns == pytest.approx(
        4e9 * (t + 3 * inter.latency_s), abs=4)  # fmt: skip


def test_the_ring_and_the_all_to_all_are_different_exchanges() -> None:
    """Same scenario: the ring moves (cp−1) K/V chunks and hides them under the attention; the
    all-to-all moves Q, K, V, O once and hides nothing."""
    ring = ring_layer(scenario(cp=4, runtime={"name": "megatron_lm_2021"}), 1e12)
    a2a = ring_layer(scenario(cp=4), 1e12)
    assert ring.forward_exposed_ns == 0.0 < a2a.forward_exposed_ns
    assert ring.forward_elementwise_bytes == 0.0 < a2a.forward_elementwise_bytes


def test_attention_is_one_call_over_the_whole_sequence_on_heads_over_cp() -> None:
    """Per GPU the core's FLOPs are the ring's (cp_rank_training); on the H100's classes (no
    under-fill edge, R = 0) the all-to-all's call of s queries on 32/cp heads takes exactly the
    cp = 1 call's time / cp, while the ring's steps of s/cp queries pay the short-sequence edge
    (1 + S/s') at s' = s/cp."""
    one, a2a = scenario(), scenario(cp=4)
    ring = scenario(cp=4, runtime={"name": "megatron_lm_2021"})
    cls = one.hardware.flash_class(one.runtime.attention_kernel)
    assert cls is not None and cls.forward_rows_edge == 0 and cls.forward_seq_edge > 0
    t1 = one.training
    f1 = flash_core(one, t1, block_flops(one.model, t1), "bf16", True)
    t4 = cp_rank_training(a2a.training, 4)
    bf4 = block_flops(a2a.model, t4)
    fa = flash_core(a2a, t4, bf4, "bf16", True)
    fr = flash_core(ring, t4, bf4, "bf16", True)
    assert f1 is not None and fa is not None and fr is not None
    assert fa.forward_flops == fr.forward_flops == f1.forward_flops / 4
    assert fa.forward_ns == pytest.approx(f1.forward_ns / 4, rel=1e-12)
    assert fa.backward_ns == pytest.approx(f1.backward_ns / 4, rel=1e-12)
    e = cls.forward_seq_edge
    assert fr.forward_ns == pytest.approx(fa.forward_ns * (1 + e / (S / 4)) / (1 + e / S),
                                          rel=1e-12)  # fmt: skip


def test_a_sliding_window_runs_under_the_all_to_all_only() -> None:
    """A window of w keys over s = 16,384: each query sees w − w²/(2s) keys on average
    (4,096 − 512 = 3,584 at w = 4,096) of the whole sequence, not of the GPU's s/cp."""
    win = {"preset": "llama3-8b", "layers": 4, "flash_attention": True, "sliding_window": 4096}
    sc = scenario(cp=4, model=win)
    assert window_keys(S, 4096) == 4096 - 4096**2 / (2 * S) == 3584
    t = cp_rank_training(sc.training, 4)
    core = block_flops(sc.model, t).attention_core
    assert core == 4 * (S // 4) * S * 4096
    fwd, _ = flash_kernel_flops(core, t, 4096)
    assert fwd == core * 3584 / S
    assert window_core_saving(sc.model, t, 1.0) == 1 - 3584 / (S / 2)
    # the windowed chunk is cheaper than the causal one, by the window's share of the core
    full = scenario(cp=4)
    assert (
        chunk_costs(sc, 4, False, False).forward_ns < chunk_costs(full, 4, False, False).forward_ns
    )
    for rt in ({"name": "megatron_lm_2021"}, {"name": "torchtitan"}):
        with pytest.raises(ConfigError) as exc:
            scenario(cp=4, model=win, runtime=rt)
        assert exc.value.key == "parallelism.cp" and "cp_attention: a2a" in str(exc.value)
    simulate_scenario(sc)  # runs end to end


@pytest.mark.parametrize(("cp", "tp", "key"), [(16, 1, "model.kv_heads"), (8, 2, "model.kv_heads"),
                                               (3, 1, "model.heads")])  # fmt: skip
def test_heads_must_split_over_cp(cp: int, tp: int, key: str) -> None:
    """TE: "cp_comm_type='a2a' requires num_heads % cp_size == 0 for Q, K, V" (per TP rank)."""
    with pytest.raises(ConfigError) as exc:
        scenario(cp=cp, tp=tp, training={"seq_len": 6 * S} if cp == 3 else {})
    assert exc.value.key == "parallelism.cp" and key in str(exc.value)
    assert "te_p2p" in str(exc.value)
    scenario(cp=cp, tp=tp, runtime={"name": "megatron_lm_2021"},
             training={"seq_len": 6 * S} if cp == 3 else {})  # the ring has no such rule  # fmt: skip


def test_the_output_is_saved_on_both_sides_of_the_exchange() -> None:
    """TE saves the kernel's out_part; the out-projection keeps the exchanged-back out_: one
    more b·(s/cp)·h·e/tp per layer; a selective recompute drops the kernel's copy; the ring
    and the all-to-all otherwise save the same bytes."""
    ring, a2a = scenario(cp=4, runtime={"name": "megatron_lm_2021"}), scenario(cp=4)
    t = cp_rank_training(a2a.training, 4)
    extra = 2 * (S // 4) * 4096
    names = [x.name for x in layer_saved_tensors(a2a.model, t, cp_a2a=True)]
    assert "attention output before the CP all-to-all (flash)" in names
    for rc, more in (("none", extra), ("selective", 0), ("full", 0)):
        tr = cp_rank_training(scenario(cp=4, training={"recompute": rc}).training, 4)
        assert (layer_activation_bytes(a2a.model, tr, cp_a2a=True)
                - layer_activation_bytes(a2a.model, tr)) == more  # fmt: skip
    mr, ma = estimate_memory(ring).stages[0], estimate_memory(a2a).stages[0]
    assert ma.activation_bytes_per_microbatch - mr.activation_bytes_per_microbatch == 4 * extra
    # a frozen out-projection (LoRA on q, v) keeps no input: the kernel's output is the only copy
    lora = {"seq_len": S, "peft": {"method": "lora", "rank": 8, "target_modules": ["q", "v"]}}
    tl = cp_rank_training(scenario(cp=4, training=lora).training, 4)
    assert layer_activation_bytes(a2a.model, tl, cp_a2a=True) == layer_activation_bytes(
        a2a.model, tl)  # fmt: skip


def test_deepspeed_runs_ulysses_and_megatron_imports_a2a(tmp_path: Path) -> None:
    assert load_runtime("deepspeed").cp_attention == "a2a"
    assert load_runtime("megatron_core").cp_attention == "te_p2p"
    f = tmp_path / "flags.txt"
    f.write_text("--num-layers 4 --hidden-size 4096 --num-attention-heads 32 "
                 "--group-query-attention --num-query-groups 8 --ffn-hidden-size 14336 "
                 "--seq-length 16384 --max-position-embeddings 16384 --micro-batch-size 1 "
                 "--global-batch-size 4 --bf16 --use-mcore-models --transformer-impl "
                 "transformer_engine --swiglu --normalization RMSNorm "
                 "--position-embedding-type rope --context-parallel-size 4 "
                 "--cp-comm-type a2a --vocab-size 128256")  # fmt: skip
    imp = import_config("megatron", f, gpus=4)
    assert not [u for u in imp.unsupported if "cp-comm-type" in u]
    sc = load_imported(imp)
    assert sc.parallelism.cp == 4 and sc.runtime.cp_attention == "a2a"


def test_the_timeline_names_the_all_to_all() -> None:
    res = simulate_scenario(scenario(cp=2))
    names = {s.name.split(" mb")[0] for s in res.timeline.spans if s.stream == "cp"}
    assert any(n.startswith("CP all-to-all Q, K, V, O") for n in names), names
    assert any(n.startswith("CP all-to-all dO, dQ, dK, dV") for n in names), names


def test_cached_blocks_of_a_reserved_figure_are_one_gpus_tokens() -> None:
    """DeepSpeed's flat ZeRO-1 step in a reserved figure reuses the blocks the backward freed
    (costs.memory.cached_activation_blocks): the largest tensor one layer of the stage's walk
    saves (its own list since the read-through: a second derivation had drifted, whole
    sequence and no runtime flags, 4x here) and the head's loss over the GPU's s/cp tokens;
    the walk's largest tensors against their closed forms, with and without a flag that
    changes which one it is."""
    from simtrain.costs.activations import loss_saved_bytes
    from simtrain.costs.memory import cached_activation_blocks, flat_step_buffers
    from simtrain.layout.step import resolve

    sc = scenario(cp=4, runtime={"name": "deepspeed", "memory_reported": "reserved"},
                  parallelism={"dp": 2, "zero_stage": 1}, training={"global_batch": 8},
                  cluster={"nodes": 1, "gpus_per_node": 8})  # fmt: skip
    step = resolve(sc)
    assert flat_step_buffers(sc, step)
    stage = estimate_memory(sc).stages[0]
    blocks = cached_activation_blocks(sc, stage.breakdown.saved, 4, True, 2)
    largest = max(x.bytes for x in stage.breakdown.saved)
    t = cp_rank_training(sc.training, 4)
    assert blocks == (largest, largest, loss_saved_bytes(sc.model, t, 1))
    assert largest == 234_881_024  # SiLU and up outputs, 2 x 2 B x (s/cp 4,096) x ffn 14,336
    # a runtime flag that changes the largest tensor: DTensor TP's saved all-gathered input
    # (b·(s/cp)·h whole: 2 B x 8,192 x 4,096) over a narrow MLP's SiLU and up outputs (/tp)
    rt = {"name": "deepspeed", "memory_reported": "reserved", "tp_saves_gathered_input": True}
    sc = scenario(cp=2, tp=4, runtime=rt, model={"ffn_hidden": 4096},
                  parallelism={"dp": 2, "zero_stage": 1, "sequence_parallel": True},
                  training={"global_batch": 8}, cluster={"nodes": 2, "gpus_per_node": 8})  # fmt: skip
    stage = estimate_memory(sc).stages[0]
    largest = max(x.bytes for x in stage.breakdown.saved)
    assert largest == 2 * (S // 2) * 4096 == 67_108_864
    assert cached_activation_blocks(sc, stage.breakdown.saved, 4, False, 2) == (largest, largest)
