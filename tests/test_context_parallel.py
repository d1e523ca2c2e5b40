"""Context parallelism (``parallelism.cp``): per-GPU work and memory / cp, Megatron-Core's
tp-cp-dp-pp placement, the Transformer Engine ring exchange against its closed form, gradients
reduced over dp x cp, the ring on its own stream, bad input, importers, validate and planner."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from simtrain.apps.importers import import_config
from simtrain.apps.importers.common import load_imported
from simtrain.apps.plan.file import parse_plan
from simtrain.apps.plan.layouts import cp_degrees, enumerate_layouts, scenario_data
from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate.records import load_records
from simtrain.apps.validate.translate import SkipReason, translate
from simtrain.costs import comm
from simtrain.costs.collectives import node_links
from simtrain.costs.compute import block_flops, chunk_costs, hardware_flops_per_step
from simtrain.costs.cp import (
    cp_ring_buffer_bytes,
    ring_layer,
    ring_message_bytes,
    torch_elementwise_bytes,
)
from simtrain.costs.memory import estimate_memory
from simtrain.costs.workload import rank_work
from simtrain.errors import ConfigError
from simtrain.layout.placement import Groups, Placement
from simtrain.layout.step import resolve
from simtrain.report.trace import chrome_trace
from simtrain.spec.scenario import Scenario, cp_rank_training, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
CP_SCENARIO = ROOT / "scenarios" / "llama3_8b_cp.yaml"


def scenario(cp: int = 1, dp: int = 1, tp: int = 1, pp: int = 1, **over: Any) -> Scenario:
    """Llama 3 8B (4 layers) on s = 4,096 tokens, bf16, flash attention."""
    data: dict[str, Any] = {
        "name": "cp",
        "model": {"preset": "llama3-8b", "layers": 4, "flash_attention": True},
        "hardware": "h100_sxm5_80gb",
        "training": {
            "seq_len": 4096,
            "global_batch": 4 * dp,
            "micro_batch": 1,
            "precision": "bf16",
            "optimizer": "adamw",
        },  # fmt: skip
        "parallelism": {"dp": dp, "tp": tp, "pp": pp, "cp": cp},
    }
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_scenario(copy.deepcopy(data), "cp.yaml")


# ---- spec and placement


def test_gpus_are_dp_tp_pp_cp_and_the_cluster_must_match() -> None:
    sc = scenario(cp=4, dp=2, tp=2)
    assert sc.parallelism.gpus == 16 and sc.cluster.gpus == 16 and resolve(sc).gpus == 16
    with pytest.raises(ConfigError) as e:
        scenario(cp=4, dp=2, tp=2, cluster={"nodes": 1, "gpus_per_node": 8})
    assert "tp x pp x dp x cp = 2 x 1 x 2 x 4 = 16" in str(e.value)


@pytest.mark.parametrize(("over", "key", "words"), [
    ({"training": {"seq_len": 4100}}, "parallelism.cp", "2 x cp = 8 must divide training.seq_len"),
    ({"model": {"preset": "llama3-8b", "layers": 4, "flash_attention": False}},
     "parallelism.cp", "flash"),
    ({"training": {"seq_len": 4096, "peft": {"method": "prefix"}}}, "parallelism.cp", "prefix"),
    ({"training": {"seq_len": 4096, "peft": {"method": "prompt"}}}, "parallelism.cp", "prompt"),
    ({"parallelism": {"dp": 2, "dp_mode": "naive"}}, "parallelism.dp_mode", "ddp"),
    ({"parallelism": {"cp": 0}}, "parallelism.cp", "positive"),
])  # fmt: skip
def test_bad_cp_is_one_config_error(over: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        scenario(cp=4, **over)
    assert e.value.key == key and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_placement_is_megatron_tp_cp_dp_pp() -> None:
    """Megatron-Core parallel_state order "tp-cp-ep-dp-pp": rank = tp_r + tp·(cp_r + cp·(dp_r +
    dp·pp_r)); the strides of Groups give every rank its id."""
    tp, cp, dp, pp = 2, 4, 2, 3
    g = Groups(dp=dp, tp=tp, pp=pp, cp=cp)
    ids = set()
    for p_r in range(pp):
        for d_r in range(dp):
            for c_r in range(cp):
                for t_r in range(tp):
                    megatron = t_r + tp * (c_r + cp * (d_r + dp * p_r))
                    ours = (p_r * g.pp_stride + d_r * g.dp_stride + c_r * g.cp_stride
                            + t_r * g.tp_stride)  # fmt: skip
                    assert ours == megatron
                    ids.add(ours)
    assert ids == set(range(g.gpus)) and g.gpus == 48 and g.dp_cp == 8
    # The ring leaves an 8-GPU node only when tp·cp > 8.
    assert not Placement(Groups(1, 2, 1, 4), 8).cp_crosses_nodes
    assert Placement(Groups(1, 4, 1, 4), 8).cp_crosses_nodes
    assert Placement(Groups(1, 8, 1, 2), 8).cp_crosses_nodes


# ---- per-GPU work and memory


@pytest.mark.parametrize("cp", [2, 4])
def test_flops_per_gpu_are_the_cp1_flops_over_cp(cp: int) -> None:
    one, many = scenario(), scenario(cp=cp)
    for first, last in ((True, False), (False, False), (False, True)):
        a, b = chunk_costs(one, 4, first, last), chunk_costs(many, 4, first, last)
        assert b.forward_flops == a.forward_flops / cp
        assert b.backward_flops == a.backward_flops / cp
    t = one.training
    full, mine = block_flops(one.model, t), block_flops(one.model, cp_rank_training(t, cp))
    # Causal load balancing: the core (QK^T, attention·V: 4·b·s·s·h) splits evenly too.
    assert mine.attention_core == full.attention_core / cp == 4 * 4096 * 4096 * 4096 / cp
    assert mine.projections == full.projections / cp


@pytest.mark.parametrize("cp", [2, 4])
def test_work_over_all_gpus_is_conserved(cp: int) -> None:
    """All GPUs together execute the same FLOPs whether the sequence is split or not."""
    assert hardware_flops_per_step(scenario(cp=cp)) == hardware_flops_per_step(scenario())
    full = {"recompute": "full"}
    assert hardware_flops_per_step(scenario(cp=cp, training=full)) == hardware_flops_per_step(
        scenario(training=full))  # fmt: skip


@pytest.mark.parametrize("cp", [2, 4])
def test_activations_per_gpu_are_the_cp1_ones_over_cp(cp: int) -> None:
    for rc in ("none", "selective", "full"):
        one = estimate_memory(scenario(training={"recompute": rc})).stages[0]
        many = estimate_memory(scenario(cp=cp, training={"recompute": rc})).stages[0]
        assert many.activation_bytes_per_microbatch * cp == one.activation_bytes_per_microbatch
        assert many.category("activations") * cp == one.category("activations")
        assert dict(many.recompute_working_set_bytes)[0] * cp == dict(
            one.recompute_working_set_bytes)[0]  # fmt: skip
        # Model states do not change (no ZeRO here); buffers: the loss / cp plus the ring.
        for c in ("parameters", "master_weights", "gradients", "optimizer_states"):
            assert many.category(c) == one.category(c)
        loss1, loss_cp = dict(one.loss_bytes)[0], dict(many.loss_bytes)[0]
        assert loss_cp * cp == loss1
        ring = max(cp, 4) * 2 * 2 * (4096 // cp) * 1024  # max(cp, 4) · K, K = 2·e·(s/cp)·kv_dim
        assert many.category("buffers") == one.category("buffers") - loss1 + loss_cp + ring


def test_128k_does_not_fit_at_cp1_and_fits_at_cp8_by_the_formula() -> None:
    """The shipped scenario: Llama 3 8B, 131,072 tokens, 8 H100s, ZeRO-1 over dp x cp = 8."""
    cp8 = load_scenario(CP_SCENARIO)
    cp1 = load_scenario(CP_SCENARIO, ["parallelism.cp=1", "parallelism.dp=8"])
    a, b = estimate_memory(cp8).stages[0], estimate_memory(cp1).stages[0]
    assert a.fits and not b.fits
    for c in ("parameters", "master_weights", "gradients", "optimizer_states", "cuda_context"):
        assert a.category(c) == b.category(c)  # ZeRO-1 over 8 GPUs in both
    # Full recompute: per micro-batch each layer keeps its input, 2·b·s·h bytes (32 layers),
    # plus embedding ids and the head's saved tensors; at cp 8 exactly an eighth of all of it.
    assert b.category("activations") == 8 * a.category("activations")
    assert a.breakdown is not None and a.breakdown.per_layer_bytes == 2 * 16384 * 4096
    k = 2 * 2 * 16384 * 1024  # K and V of 16,384 tokens, 8 kv heads x 128, bf16
    assert ring_message_bytes(cp8) == k == 67_108_864
    assert cp_ring_buffer_bytes(cp8) == 8 * k
    loss_a, loss_b = dict(a.loss_bytes)[0], dict(b.loss_bytes)[0]
    assert loss_a == 2 * 4 * 16384 * 128256 and loss_b == 8 * loss_a  # two fp32 b·s·V tensors
    assert a.category("buffers") == b.category("buffers") - loss_b + loss_a + 8 * k


# ---- the ring


def test_ring_message_bytes_and_times_are_the_closed_form() -> None:
    """K = 2·e·b·(s/cp)·kv_dim/tp; forward (cp−1) messages of K, backward K, (cp−2) x 2K, K,
    each α + bytes/B on the intra-node link (Transformer Engine AttnFuncWithCPAndKVP2P)."""
    sc = scenario(cp=4, tp=2)
    k = 2 * 2 * 1 * (4096 // 4) * 1024 // 2
    assert ring_message_bytes(sc) == k == 2_097_152
    hw = sc.hardware
    bw = hw.intra_node_bandwidth_bytes_per_s * hw.efficiency.collective
    t1 = 1e9 * (hw.intra_node_latency_s + k / bw)
    t2 = 1e9 * (hw.intra_node_latency_s + 2 * k / bw)
    r = ring_layer(sc, attention_forward_ns=0.0)
    assert r.forward_transfer_ns == pytest.approx(3 * t1, rel=1e-12)
    assert r.backward_transfer_ns == pytest.approx(2 * t1 + 2 * t2, rel=1e-12)
    assert (r.forward_exposed_ns, r.backward_exposed_ns) == (
        r.forward_transfer_ns,
        r.backward_transfer_ns,
    )
    # Each step overlaps 1/cp of the attention: exposed only beyond it.
    a = 4 * (t1 - 100.0)  # a forward step takes t1 − 100 ns, a backward step 2(t1 − 100) ns
    r = ring_layer(sc, attention_forward_ns=a)
    assert r.forward_exposed_ns == pytest.approx(3 * 100.0, rel=1e-9)
    assert r.backward_exposed_ns == pytest.approx(
        2 * max(0.0, t1 - 2 * (t1 - 100)) + 2 * max(0.0, t2 - 2 * (t1 - 100)), rel=1e-9
    )
    assert ring_layer(sc, attention_forward_ns=1e12).forward_exposed_ns == 0.0
    # Across nodes (tp 8 x cp 2 > 8 GPUs per node) the ring runs on the NIC.
    far = scenario(cp=2, tp=8)
    inter = node_links(far.hardware)[1]
    k = 2 * 2 * 2048 * 1024 // 8
    assert ring_layer(far, 0.0).forward_transfer_ns == pytest.approx(
        1e9 * (inter.latency_s + k / inter.bandwidth_bytes_per_s), rel=1e-12
    )


TORCH_CP = {"name": "torchtitan", "cp_attention": "torch_allgather", "attention_repeat_kv": True}


def test_torch_allgather_message_is_every_query_heads_k_and_v() -> None:
    """torchtitan repeats K/V to all 32 heads before SDPA: K = 2·2 B·(4096/4)·(32·128)/2, four
    times the 8 kv heads' (the same scenario's Transformer Engine message)."""
    sc = scenario(cp=4, tp=2, runtime=TORCH_CP)
    assert ring_message_bytes(sc) == 2 * 2 * 1024 * 4096 // 2 == 8_388_608
    assert ring_message_bytes(scenario(cp=4, tp=2)) * 4 == ring_message_bytes(sc)


def test_torch_allgather_times_are_the_closed_form() -> None:
    """PyTorch context_parallel (rotate_method allgather): forward one ring all-gather of the
    K/V, (cp−1) x K bytes + (cp−1) x α, hidden under step 0's attention (1/cp of it); backward
    the all-gather again and cp fp32 dK/dV messages of 2K (bf16 K), each hidden under the next
    step's attention but the last."""
    sc = scenario(cp=4, tp=2, runtime=TORCH_CP)
    k = 8_388_608
    hw = sc.hardware
    bw = hw.intra_node_bandwidth_bytes_per_s * hw.efficiency.collective
    lat = hw.intra_node_latency_s
    ag = 1e9 * (3 * k / bw + 3 * lat)
    d = 1e9 * (lat + 2 * k / bw)
    r = ring_layer(sc, attention_forward_ns=0.0)
    assert r.message_bytes == k
    assert r.forward_transfer_ns == pytest.approx(ag, rel=1e-12)
    assert r.backward_transfer_ns == pytest.approx(ag + 4 * d, rel=1e-12)
    assert r.forward_exposed_ns == pytest.approx(ag, rel=1e-12)
    assert r.backward_exposed_ns == pytest.approx(ag + 4 * d, rel=1e-12)
    # attention long enough to hide every message but the last dK/dV
    r = ring_layer(sc, attention_forward_ns=1e12)
    assert r.forward_exposed_ns == 0.0
    assert r.backward_exposed_ns == pytest.approx(d, rel=1e-12)
    # a forward step of 100 ns less than the all-gather: 100 ns of it exposed
    r = ring_layer(sc, attention_forward_ns=4 * (ag - 100.0))
    assert r.forward_exposed_ns == pytest.approx(100.0, rel=1e-6)


def test_torch_allgather_working_memory_is_the_gathered_kv_and_fp32_grads() -> None:
    """cp 4, tp 2, s 4096, bf16: K = 8 MiB (all 32 heads), Q = 2·1024·4096/2 = 4 MiB,
    D = 16 MiB (fp32 dK/dV). Forward: 4 gathered + 1 concatenated K = 40 MiB; backward beside
    them the fp32 dQ 8 MiB, 4 D = 64 MiB (received, partially updated, sent, receiving) and the
    step's 16-bit dQ, dK, dV 12 MiB: 124 MiB."""
    mib = 1 << 20
    sc = scenario(cp=4, tp=2, runtime=TORCH_CP)
    assert cp_ring_buffer_bytes(sc) == (40 + 8 + 64 + 12) * mib
    te = scenario(cp=4, tp=2)
    assert cp_ring_buffer_bytes(te) == 4 * 2 * mib  # max(cp, 4)·K with the 8 kv heads' K
    assert cp_ring_buffer_bytes(scenario(cp=1, runtime=TORCH_CP)) == 0


def test_torch_allgather_merge_work_is_counted_by_hand() -> None:
    """cp 4, tp 2: Q = 4 MiB, K = 8 MiB, D = 16 MiB. Forward: K/V concatenations 3 x 2K = 48,
    fp32 upcasts 4 x 3Q = 48, merges 3 x 16Q = 192, the cast back 3Q = 12: 300 MiB. Backward:
    zeros 2Q + D = 24, K/V concatenations 48, step 0's dK/dV add 2D + K = 40, three partial
    updates 3 x (3D + K/2) = 156, four dK/dV concatenations and dQ adds 4 x (2D + 5Q) = 208,
    casts back 3Q + D + K = 36: 512 MiB. Each is element-wise time in the chunk's forward
    (and recompute) and backward, beyond the exchange's exposed time."""
    mib = 1 << 20
    sc = scenario(cp=4, tp=2, runtime=TORCH_CP)
    assert torch_elementwise_bytes(sc) == (300 * mib, 512 * mib)
    r = ring_layer(sc, attention_forward_ns=1e12)
    assert (r.forward_elementwise_bytes, r.backward_elementwise_bytes) == (300 * mib, 512 * mib)
    assert torch_elementwise_bytes(scenario(cp=1, runtime=TORCH_CP)) == (0.0, 0.0)
    assert ring_layer(scenario(cp=4, tp=2), 0.0).forward_elementwise_bytes == 0.0
    hw = sc.hardware
    ns = 1e9 * 300 * mib / (hw.hbm_bandwidth_bytes_per_s * hw.efficiency.memory_bound)
    with_merge = chunk_costs(sc, 4, False, False)
    # the same chunk with the exchange hidden and no merge: TE's ring on an idle link
    no_merge = chunk_costs(scenario(cp=4, tp=2, runtime={"name": "torchtitan",
                                                           "cp_attention": "te_p2p"}),
                           4, False, False)  # fmt: skip
    fwd = ring_layer(sc, 0.0)  # exposure depends on the attention time: take the chunk's own
    assert with_merge.forward_ns - no_merge.forward_ns >= 4 * ns - 1
    assert with_merge.forward_ns - no_merge.forward_ns <= 4 * (ns + fwd.forward_exposed_ns) + 1


def test_torchtitan_runs_torch_context_parallel() -> None:
    """The torchtitan profile names PyTorch's context_parallel, and K/V at their kv heads
    (torchtitan since ff0829c1); its benchmark records ran the K/V repeat; a bad value is one
    ConfigError naming the key and the choices."""
    sc = scenario(cp=2, runtime="torchtitan")
    assert sc.runtime.cp_attention == "torch_allgather" and not sc.runtime.attention_repeat_kv
    recs = load_records(ROOT / "measured" / "more_runs_2026-12.yaml")
    titan = [translate(r) for r in recs if r.id.startswith("torchtitan_")]
    assert titan and all(not isinstance(tr, SkipReason) for tr in titan)
    assert all(tr.scenario.runtime.attention_repeat_kv for tr in titan)  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as e:
        scenario(cp=2, runtime={"name": "torchtitan", "cp_attention": "ring"})
    assert "cp_attention" in str(e.value) and "te_p2p | torch_allgather" in str(e.value)


def test_exposed_ring_time_is_in_the_action_and_the_ring_is_on_its_own_stream() -> None:
    sc = scenario(cp=2, tp=8)  # cross-node ring, short sequence: partly exposed
    one = scenario(tp=8, dp=1)
    c, base = chunk_costs(sc, 4, True, False), chunk_costs(one, 4, True, False)
    ring = ring_layer(sc, 1e9 * block_flops(sc.model, cp_rank_training(sc.training, 2), 8)
                      .attention_core / (sc.hardware.compute_peak("bf16")
                                         * sc.hardware.efficiency.matmul))  # fmt: skip
    assert ring.forward_exposed_ns > 0
    assert c.ring_forward_ns == pytest.approx(4 * ring.forward_transfer_ns, abs=1)
    assert c.forward_ns < base.forward_ns  # half the tokens, even with the exposed ring
    res = simulate_scenario(sc)
    spans = res.timeline.spans
    rings = [s for s in spans if s.stream == "cp"]
    forwards = [s for s in spans if s.stream == "compute" and s.kind == "F"]
    backwards = [s for s in spans if s.stream == "compute" and s.kind == "B"]
    # One ring per forward and per backward (the last backward runs in gradient-bucket slices).
    assert len(rings) == len(forwards) + len({b.microbatch for b in backwards})
    assert len(rings) == 2 * sc.num_microbatches
    assert {s.kind for s in rings} == {"CP"}
    for f in forwards:  # the ring starts with its action and ends within it
        r = next(s for s in rings if s.microbatch == f.microbatch and "dK" not in s.name)
        assert r.start_ns == f.start_ns and r.end_ns <= f.end_ns
    trace = chrome_trace(res.timeline)
    names = {e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "thread_name"}  # fmt: skip
    assert "cp" in names
    assert not [s for s in simulate_scenario(one).timeline.spans if s.stream == "cp"]


def test_gradients_are_reduced_over_dp_x_cp() -> None:
    """Megatron-Core reduces gradients over the dp x cp group: at dp 1, cp 2 the reduction is
    the one dp 2, cp 1 runs (same group size, GPUs tp apart), and ZeRO shards over dp x cp."""
    a, b = scenario(cp=2, dp=1), scenario(cp=1, dp=2)
    sa, sb = resolve(a), resolve(b)
    ma, mb = estimate_memory(a).stages[0], estimate_memory(b).stages[0]
    wa = rank_work(a, sa, 0, ma.params, ma.trainable)
    wb = rank_work(b, sb, 0, mb.params, mb.trainable)
    assert wa.bucket_ns == wb.bucket_ns and wa.bucket_ns and sum(wa.bucket_ns) > 0
    assert comm.dp_ns(a, sa, "all_reduce", 1e9) == comm.dp_ns(b, sb, "all_reduce", 1e9) > 0
    assert any(s.stream == "dp" for s in simulate_scenario(a).timeline.spans)
    z1 = estimate_memory(scenario(cp=2, dp=2, parallelism={"dp": 2, "cp": 2, "zero_stage": 1}))
    z0 = estimate_memory(scenario(cp=2, dp=2))
    assert z1.stages[0].category("optimizer_states") * 4 == z0.stages[0].category(
        "optimizer_states")  # fmt: skip
    assert not resolve(a).gradients_transient


def test_default_cp_changes_nothing() -> None:
    sc = scenario()
    assert sc.parallelism.cp == 1 and cp_rank_training(sc.training, 1) is sc.training
    assert replace(sc.parallelism, cp=1) == sc.parallelism


# ---- importers, validate, planner


def test_megatron_and_torchtitan_import_cp(tmp_path: Path) -> None:
    f = tmp_path / "flags.txt"
    f.write_text("--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 8192 "
                 "--max-position-embeddings 8192 --micro-batch-size 1 --global-batch-size 64 "
                 "--vocab-size 50000 --bf16 --tensor-model-parallel-size 2 "
                 "--context-parallel-size 4 --use-flash-attn")  # fmt: skip
    imp = import_config("megatron", f, gpus=16)
    sc = load_imported(imp)
    assert (sc.parallelism.tp, sc.parallelism.cp, sc.parallelism.dp) == (2, 4, 2)
    assert not any("context-parallel" in u for u in imp.unsupported)
    toml = (ROOT / "tests/fixtures/importers/torchtitan_llama3_8b.toml").read_text()
    assert "context_parallel_degree = 1" in toml
    g = tmp_path / "tt.toml"
    g.write_text(toml.replace("context_parallel_degree = 1", "context_parallel_degree = 2"))
    imp = import_config("torchtitan", g, gpus=16)
    sc = load_imported(imp)
    assert sc.parallelism.cp == 2 and sc.parallelism.gpus == 16
    assert not any("context_parallel" in u for u in imp.unsupported)


def test_validate_expresses_cp_records() -> None:
    """The torchtitan 405B CP 8 record is a CP 8 scenario: 126 layers over pp 8 with
    torchtitan's own uneven split (15, 16 x 6, 15), flash attention."""
    recs = {r.id: r for r in load_records(ROOT / "measured" / "more_runs_2026-12.yaml")}
    rec = recs["torchtitan_2412_t6_405b_512gpu_fsdp1_cp8_seq262144"]
    tr = translate(rec)
    assert not isinstance(tr, SkipReason)
    p = tr.scenario.parallelism
    assert (p.cp, p.tp, p.pp, p.dp, p.gpus) == (8, 8, 8, 1, 512)
    assert p.layer_split == (15, 16, 16, 16, 16, 16, 16, 15)
    assert tr.scenario.model.flash_attention
    tr = translate(replace(rec, model={**rec.model, "layers": 128}))
    assert not isinstance(tr, SkipReason) and tr.scenario.parallelism.cp == 8


def test_planner_searches_cp_where_the_sequence_allows() -> None:
    base: dict[str, Any] = {
        "name": "long", "model": {"preset": "llama3-8b", "flash_attention": True},
        "tokens": 1e10, "training": {"seq_len": 65536, "global_batch": 8, "precision": "bf16"},
        "hardware": [{"name": "h100_sxm5_80gb", "price_per_gpu_hour": 4.0}],
        "gpus": 8, "fixed": {"tp": [1], "pp": [1], "zero_stage": [1], "recompute": ["full"],
                             "micro_batch": [1]},
    }  # fmt: skip
    plan = parse_plan(copy.deepcopy(base), "p.yaml", ROOT)
    assert cp_degrees(plan) == (1, 2, 4, 8)  # 65,536 / 16 = 4,096 < 8,192 tokens per GPU
    lays = enumerate_layouts(plan, 32, 32)
    assert sorted(lay.cp for lay in lays) == [1, 2, 4, 8]
    lay = next(x for x in lays if x.cp == 8)
    assert (lay.dp, lay.gpus) == (1, 8)
    assert scenario_data(plan, lay)["parallelism"]["cp"] == 8
    short = copy.deepcopy(base)
    short["training"]["seq_len"] = 8192
    assert cp_degrees(parse_plan(short, "p.yaml", ROOT)) == (1,)
    fixed = copy.deepcopy(base)
    fixed["fixed"]["cp"] = [2]
    assert cp_degrees(parse_plan(fixed, "p.yaml", ROOT)) == (2,)


def test_schema_has_cp() -> None:
    schema = json.loads((ROOT / "schemas" / "scenario.schema.json").read_text())
    text = json.dumps(schema)
    assert '"cp"' in text


def test_an_mla_ring_message_carries_k_and_v_at_their_own_widths() -> None:
    """Multi-head latent attention's K is heads x (qk_nope + qk_rope) = 128 x 192 wide, its V
    heads x v_head_dim = 128 x 128 (DeepSeek-V3): TE's ring sends torch.cat of both, so a
    rank's message for s/cp = 2,048 bf16 tokens is 2 x 2,048 x (24,576 + 16,384) B (review:
    V was priced at K's width, 20 % more)."""
    from simtrain.costs.cp import ring_message_bytes
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario("scenarios/llama3_8b_cp.yaml", [
        "model.preset=deepseek-v3", "model.layers=4", "model.first_dense_layers=1",
        "model.mtp_layers=0", "training.seq_len=16384"])  # fmt: skip
    assert (sc.parallelism.cp, sc.parallelism.tp) == (8, 1)
    assert ring_message_bytes(sc) == 2 * 2048 * (128 * 192 + 128 * 128)
