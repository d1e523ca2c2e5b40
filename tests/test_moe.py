"""Mixture-of-experts layers (issue 14 items 1-2): exact parameter counts, the Hugging Face
importer, FLOPs, memory and expert parallelism.

Every expected count is an independent published integer:
- Mixtral-8x7B 46,702,792,704 (issue 14; HF mistralai/Mixtral-8x7B-v0.1), 12.9B active
  (Mistral AI, "Mixtral of experts", 2023 blog and arXiv:2401.04088 §2: "12.9B active");
- Qwen1.5-MoE-A2.7B 14,315,784,192 (KerasHub qwen_moe preset ``params``; HF card "14.3B in
  total and 2.7B activated");
- Qwen3-30B-A3B 30,532,122,624 (HF Qwen/Qwen3-30B-A3B model.safetensors.index.json total_size
  61,064,245,248 bytes in bf16 / 2; GGUF general.parameter_count); card: 3.3B activated;
- gpt-oss-20b 20,914,757,184 and gpt-oss-120b 116,829,156,672 (GGUF general.parameter_count of
  the MXFP4 checkpoints; OpenAI gpt-oss model card Table 1: 20.91B / 116.83B total, 3.61B /
  5.13B active, which counts the unembedding but not the embedding).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS, from_hf_config

MOE_DATA = Path(__file__).parent / "data" / "moe"

TOTALS = {
    "mixtral-8x7b": 46_702_792_704,
    "mixtral-8x22b": 140_620_634_112,  # HF mistralai/Mixtral-8x22B-v0.1 safetensors total
    "qwen1.5-moe-a2.7b": 14_315_784_192,
    "qwen3-30b-a3b": 30_532_122_624,
    # by hand: 94 x (q 4096·8192 + k, v 2·4096·512 + o 8192·4096 + q/k norms 2·128 + norms
    # 2·4096 + router 4096·128 + 128 experts 3·4096·1536) + embedding and head 2·151936·4096
    # + final norm 4096
    "qwen3-235b-a22b": 235_093_634_560,
    "gpt-oss-20b": 20_914_757_184,
    "gpt-oss-120b": 116_829_156_672,
}


@pytest.mark.parametrize(("name", "count"), sorted(TOTALS.items()))
def test_moe_total_parameters_are_the_published_integers(name: str, count: int) -> None:
    assert PRESETS[name].total_params() == count


def test_mixtral_active_parameters_by_hand() -> None:
    """Per layer: attention 2·4096² + 2·4096·1024, 2 of the 8 SwiGLU experts 3·4096·14336
    each, router 4096·8, two RMSNorms; plus embedding and untied head 2·32000·4096 and the final
    norm: 12,879,925,248 = Mistral's "12.9B active"."""
    layer = 2 * 4096**2 + 2 * 4096 * 1024 + 2 * 3 * 4096 * 14336 + 4096 * 8 + 2 * 4096
    expected = 32 * layer + 2 * 32000 * 4096 + 4096
    m = PRESETS["mixtral-8x7b"]
    assert m.active_params() == expected == 12_879_925_248
    assert round(m.active_params() / 1e9, 1) == 12.9


@pytest.mark.parametrize(
    ("name", "published_b", "less_embedding"),
    [
        ("mixtral-8x22b", 39, False),  # Mistral's Mixtral 8x22B announcement: 39B active
        ("qwen1.5-moe-a2.7b", 2.7, False),  # HF card: 2.7B activated
        ("qwen3-30b-a3b", 3.3, False),  # HF card: 3.3B activated
        ("qwen3-235b-a22b", 22, False),  # HF card: 22B activated (22.19)
        ("gpt-oss-20b", 3.61, True),  # OpenAI card: active, unembedding but no embedding
        ("gpt-oss-120b", 5.13, True),
    ],
)
def test_moe_active_parameters_match_the_model_cards(name: str, published_b: float,
                                                     less_embedding: bool) -> None:  # fmt: skip
    m = PRESETS[name]
    n = m.active_params() - (m.vocab * m.hidden if less_embedding else 0)
    # Cards round (2.69 -> 2.7) or truncate (3.35 -> 3.3): within one unit of the last digit.
    unit = 10.0 ** -len(str(published_b).split(".")[1]) if "." in str(published_b) else 1.0
    assert abs(n / 1e9 - published_b) < unit


def test_dense_counts_unchanged_by_the_moe_fields() -> None:
    m = PRESETS["llama3-8b"]
    assert m.active_params() == m.total_params() == 8_030_261_248
    assert not m.is_moe and m.moe_layers == 0


@pytest.mark.parametrize(
    ("fixture", "preset"),
    [
        ("mixtral_8x7b_config.json", "mixtral-8x7b"),
        ("qwen1.5_moe_a2.7b_config.json", "qwen1.5-moe-a2.7b"),
        ("qwen3_30b_a3b_config.json", "qwen3-30b-a3b"),
        ("gpt_oss_20b_config.json", "gpt-oss-20b"),
    ],
)
def test_hf_config_import_of_moe_models(fixture: str, preset: str) -> None:
    """The real config.json (tests/data/moe/SOURCES.md) gives the preset's shape and count."""
    m = from_hf_config(MOE_DATA / fixture)
    assert m.total_params() == TOTALS[preset]
    p = PRESETS[preset]
    for f in ("num_experts", "experts_per_token", "expert_ffn", "shared_experts", "shared_ffn",
              "head_dim", "q_dim", "kv_dim"):  # fmt: skip
        assert getattr(m, f) == getattr(p, f), f
    assert m.active_params() == p.active_params()


def test_hf_config_sparse_step_other_than_one_is_refused(tmp_path: Path) -> None:
    cfg = (MOE_DATA / "qwen3_30b_a3b_config.json").read_text()
    f = tmp_path / "config.json"
    f.write_text(cfg.replace('"decoder_sparse_step": 1', '"decoder_sparse_step": 2'))
    with pytest.raises(ConfigError) as ei:
        from_hf_config(f)
    assert ei.value.key == "decoder_sparse_step"


def test_shared_expert_and_first_dense_layers_by_hand() -> None:
    """A small model: 4 layers, the first dense; 4 experts of 32, top-2, one shared expert of
    64 with its gate; SwiGLU, no biases, RMSNorm, h 16, untied vocab 10."""
    base = PRESETS["mixtral-8x7b"]
    m = replace(base, name="tiny", layers=4, hidden=16, heads=2, kv_heads=2, ffn_hidden=48,
                vocab=10, num_experts=4, experts_per_token=2, moe_ffn_hidden=32,
                shared_experts=1, shared_expert_ffn_hidden=64, shared_expert_gate=True,
                first_dense_layers=1)  # fmt: skip
    attn = 4 * 16 * 16
    dense = attn + 3 * 16 * 48 + 2 * 16
    moe_all = attn + 4 * 3 * 16 * 32 + 3 * 16 * 64 + 16 * 4 + 16 + 2 * 16
    moe_act = attn + 2 * 3 * 16 * 32 + 3 * 16 * 64 + 16 * 4 + 16 + 2 * 16
    ends = 2 * 10 * 16 + 16
    assert m.total_params() == dense + 3 * moe_all + ends
    assert m.active_params() == dense + 3 * moe_act + ends
    assert [m.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
    assert m.dense_layers_in(0, 2) == 1 and m.dense_layers_in(2, 4) == 0


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"experts_per_token": 9}, "model.experts_per_token"),
        ({"experts_per_token": 0}, "model.experts_per_token"),
        ({"first_dense_layers": 32}, "model.first_dense_layers"),
        ({"moe_load_imbalance": 0.5}, "model.moe_load_imbalance"),
        ({"moe_load_imbalance": 4.5}, "model.moe_load_imbalance"),  # > E/k = 4
        ({"capacity_factor": -1.0}, "model.capacity_factor"),
        ({"num_experts": 0, "experts_per_token": 2}, "model.experts_per_token"),
        ({"num_experts": -1}, "model.num_experts"),
    ],
)
def test_bad_moe_fields_name_the_key(changes: dict, key: str) -> None:
    from simtrain.spec.model import validate_model

    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["mixtral-8x7b"], **changes))
    assert ei.value.key == key


# ---------------------------------------------------------------------------------------------
# Costs: FLOPs, parameters and activations per rank

ROOT = Path(__file__).parent.parent
MIXTRAL = ROOT / "scenarios" / "mixtral_8x7b_ep8.yaml"


def _mixtral(*overrides: str):
    from simtrain.spec.scenario import load_scenario

    return load_scenario(MIXTRAL, list(overrides))


@pytest.mark.parametrize("name", ["mixtral-8x7b", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b"])
def test_moe_block_flops_equal_a_dense_block_of_k_experts_plus_router(name: str) -> None:
    """Closed form: an MoE block costs what a dense block with an FFN of k·f_e + S·f_s costs,
    plus the router, 2·T·h·E, and Qwen2-MoE's shared-expert gate, 2·T·h, per forward."""
    from simtrain.costs.compute import block_flops
    from simtrain.spec.scenario import TrainingSpec

    m = PRESETS[name]
    t = TrainingSpec(seq_len=1024, micro_batch=2)
    width = m.experts_per_token * m.expert_ffn + m.shared_experts * m.shared_ffn
    dense = replace(m, num_experts=0, experts_per_token=0, moe_ffn_hidden=0, shared_experts=0,
                    shared_expert_ffn_hidden=0, shared_expert_gate=False, ffn_hidden=width)  # fmt: skip
    T = 2 * 1024
    router = 2 * T * m.hidden * (m.num_experts + (1 if m.shared_expert_gate else 0))
    moe_bf, dense_bf = block_flops(m, t), block_flops(dense, t)
    assert moe_bf.forward == pytest.approx(dense_bf.forward + router, rel=1e-15)
    assert moe_bf.input_grad == pytest.approx(dense_bf.input_grad + router, rel=1e-15)
    assert moe_bf.attention_core == dense_bf.attention_core


def test_mixtral_block_flops_by_hand() -> None:
    """Mixtral per token forward: 2·(2·4096² + 2·4096·1024) attention projections,
    2·2·3·4096·14336 for the two routed SwiGLU experts, 2·4096·8 router; 4·s·q for QKᵀ and
    attention·V (q = 4096)."""
    from simtrain.costs.compute import block_flops
    from simtrain.spec.scenario import TrainingSpec

    s = 4096
    t = TrainingSpec(seq_len=s, micro_batch=1)
    per_token = 2 * (2 * 4096**2 + 2 * 4096 * 1024) + 2 * 2 * 3 * 4096 * 14336 + 2 * 4096 * 8
    expected = s * per_token + 4 * s * s * 4096
    assert block_flops(PRESETS["mixtral-8x7b"], t).forward == expected


def test_model_flops_count_the_active_experts_only() -> None:
    """MFU's numerator: 6 x (k active experts) per token and layer, not 6 x all E."""
    from simtrain.costs.compute import model_flops_per_step

    sc = _mixtral()
    m = sc.model
    few = model_flops_per_step(sc)
    all_experts = model_flops_per_step(replace(sc, model=replace(m, experts_per_token=8)))
    tokens = sc.training.global_batch * sc.training.seq_len
    expert = 2 * 3 * m.hidden * m.expert_ffn  # forward FLOPs per token of one expert
    assert all_experts - few == pytest.approx(3 * m.layers * tokens * expert * 6, rel=1e-12)


def test_expert_parameters_per_rank_divide_by_ep() -> None:
    """Stage 1 of the Mixtral scenario holds 8 MoE blocks; with ep 8 each GPU keeps 1 of the 8
    experts: 16-bit parameters 2·8·(attention + 1 expert + router + norms)."""
    from simtrain.costs.memory import stage_memory

    m = PRESETS["mixtral-8x7b"]
    attn, expert = m.attention_params(), m.mlp_params(m.expert_ffn)
    router_norms = m.hidden * 8 + 2 * m.hidden
    for ep in (1, 2, 8):
        sm = stage_memory(_mixtral(f"parallelism.ep={ep}"), 1)
        assert sm.category("parameters") == 2 * 8 * (attn + (8 // ep) * expert + router_norms)


def test_zero1_shards_experts_over_the_expert_data_parallel_group() -> None:
    """Distributed optimizer: fp32 master weights of the dense part / dp (16), of the experts
    / (dp / ep) = 2 (Megatron-Core expert_data_parallel_group)."""
    from math import ceil

    from simtrain.costs.memory import stage_memory

    m = PRESETS["mixtral-8x7b"]
    dense_part = 8 * (m.attention_params() + m.hidden * 8 + 2 * m.hidden)
    experts = 8 * m.mlp_params(m.expert_ffn)  # one local expert per layer with ep 8
    sm = stage_memory(_mixtral(), 1)
    assert sm.category("master_weights") == ceil(4 * dense_part / 16) + ceil(4 * experts / 2)


def test_moe_saved_tensors_closed_form() -> None:
    """One Mixtral MoE block, b = 1, s = 4096, bf16, tp 1, load 1: fc1 input 2·k·sb·h, fc1
    output 2·2·k·sb·f, fc2 input 2·k·sb·f, probabilities 4·k·sb, router softmax 4·sb·E,
    indices 8·k·sb."""
    from simtrain.costs.moe import moe_saved_tensors

    m = PRESETS["mixtral-8x7b"]
    sb, k, h, f, E = 4096, 2, 4096, 14336, 8
    total = sum(n for _, n, _ in moe_saved_tensors(m, sb, 2))
    assert (
        total
        == 2 * k * sb * h + 4 * k * sb * f + 2 * k * sb * f + 4 * k * sb + 4 * sb * E + 8 * k * sb
    )
    # The busiest rank under an imbalance of 1.5 keeps 1.5 x the expert-token tensors.
    busy = sum(n for _, n, _ in moe_saved_tensors(m, sb, 2, load=1.5))
    assert busy - total == pytest.approx(
        0.5 * (2 * k * sb * h + 6 * k * sb * f + 4 * k * sb), abs=4
    )


def test_imbalance_slows_only_expert_parallel_ranks() -> None:
    """ep = 1 runs every expert on every routed token: the imbalance changes nothing; with ep 8
    the busiest rank does 1.5 x the routed-expert work; a capacity factor of 1.25 caps it."""
    from simtrain.costs.compute import chunk_block_flops

    base = chunk_block_flops(_mixtral("parallelism.ep=1"), 8, 8).forward
    assert chunk_block_flops(_mixtral("parallelism.ep=1", "model.moe_load_imbalance=1.5"), 8,
                             8).forward == base  # fmt: skip
    busy = chunk_block_flops(_mixtral("model.moe_load_imbalance=1.5"), 8, 8).forward
    capped = chunk_block_flops(_mixtral("model.moe_load_imbalance=1.5",
                                        "model.capacity_factor=1.25"), 8, 8).forward  # fmt: skip
    routed = 8 * 4096 * 2 * 2 * 3 * 4096 * 14336  # 8 layers, k = 2 experts, per micro-batch
    assert busy - base == pytest.approx(0.5 * routed, rel=1e-12)
    assert capped - base == pytest.approx(0.25 * routed, rel=1e-12)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["parallelism.ep=3"], "parallelism.ep"),  # does not divide 8 experts
        (
            [
                "parallelism.ep=8",
                "parallelism.dp=4",
                "parallelism.pp=16",
                "training.global_batch=64",
            ],
            "parallelism.ep",
        ),  # does not divide dp 4
        (["model.preset=llama3-8b", "model.num_experts=0"], "parallelism.ep"),  # dense
        (
            ["parallelism.tp=2", "parallelism.dp=8", "parallelism.ep=8"],
            "parallelism.sequence_parallel",
        ),
        (["model.experts_per_token=9"], "model.experts_per_token"),
        (["training.peft.method=lora"], "training.peft.method"),
        (["training.recompute=selective_op"], "training.recompute"),
    ],
)
def test_bad_expert_parallel_layouts_name_the_key(overrides: list[str], key: str) -> None:
    from simtrain.spec.scenario import load_scenario

    with pytest.raises(ConfigError) as ei:
        load_scenario(MIXTRAL, overrides)
    assert ei.value.key == key
    assert "\n" not in str(ei.value)


# ---------------------------------------------------------------------------------------------
# Expert parallelism: the all-to-alls in the timeline, expert-data-parallel gradients


def test_a2a_bytes_closed_form() -> None:
    """Send buffer of one dispatch on an EP rank: T/tp tokens x k x h x 2 bytes x load."""
    from simtrain.costs.moe import a2a_bytes

    m = PRESETS["mixtral-8x7b"]
    assert a2a_bytes(m, 4096, 2) == 4096 * 2 * 4096 * 2
    assert a2a_bytes(m, 4096, 2, tp=2, load=1.5) == 4096 / 2 * 2 * 4096 * 2 * 1.5


def test_ep_alltoall_inside_a_node_is_the_pairwise_exchange_over_nvlink() -> None:
    """ep 8 GPUs of one DGX: (ep−1)/ep of the send buffer over the GPU's NVLink bandwidth,
    plus ep − 1 latencies (nccl-tests alltoall: busBw = algBw·(n−1)/n)."""
    from simtrain.costs import collectives as coll
    from simtrain.costs.comm import ep_alltoall_ns
    from simtrain.layout.step import resolve

    sc = _mixtral()
    intra, _ = coll.node_links(sc.hardware)
    size = 4096 * 2 * 4096 * 2
    expected = 7 / 8 * size / intra.bandwidth_bytes_per_s + 7 * intra.latency_s
    assert ep_alltoall_ns(sc, resolve(sc)) == round(1e9 * expected)
    busy = _mixtral("model.moe_load_imbalance=2.0")
    expected2 = 7 / 8 * 2 * size / intra.bandwidth_bytes_per_s + 7 * intra.latency_s
    assert ep_alltoall_ns(busy, resolve(busy)) == round(1e9 * expected2)


def test_ep_alltoall_across_nodes_goes_through_each_gpus_nic() -> None:
    """4 GPUs per node: the EP group of 8 spans 2 nodes; each GPU sends 3/8 of its buffer over
    NVLink and 4/8 through its own NIC, concurrently, plus 7 network latencies."""
    from simtrain.costs import collectives as coll
    from simtrain.costs.comm import ep_alltoall_ns
    from simtrain.costs.workload import nic_plan
    from simtrain.layout.step import resolve

    sc = _mixtral("cluster.nodes=16", "cluster.gpus_per_node=4")
    intra, inter = coll.node_links(sc.hardware)
    size = 4096 * 2 * 4096 * 2
    t = max(3 / 8 * size / intra.bandwidth_bytes_per_s, 4 / 8 * size / inter.bandwidth_bytes_per_s)
    step = resolve(sc)
    assert ep_alltoall_ns(sc, step) == round(1e9 * (t + 7 * inter.latency_s))
    assert nic_plan(sc, step).crossing("A2A", 0)[0]
    assert not nic_plan(_mixtral(), resolve(_mixtral())).crossing("A2A", 0)[0]


def test_the_alltoalls_are_in_the_timeline(monkeypatch) -> None:
    """Every forward and backward of a chunk with MoE layers is followed by one "A2A" op on the
    collective stream of 2 x its MoE layers x one all-to-all (dispatch + combine); 16
    micro-batches x (F + B) x 4 pipeline ranks; none without EP. (Without EP every GPU reduces
    all the experts' gradients over dp, whose NCCL kernels slow the backward they overlap,
    sim.lowering.sms: held at 0 SMs here, so that the step compares the all-to-alls alone.)"""
    monkeypatch.setattr("simtrain.apps.simulate.nccl_kernel_sms", lambda sc: 0)
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.comm import ep_alltoall_ns
    from simtrain.layout.step import resolve

    sc = _mixtral()
    res = simulate_scenario(sc)
    a2a = [s for s in res.timeline.spans if s.kind == "A2A"]
    assert len(a2a) == 16 * 2 * 4
    assert {s.stream for s in a2a} == {"collective"}
    one = ep_alltoall_ns(sc, resolve(sc))
    assert {s.end_ns - s.start_ns for s in a2a if s.name.startswith("EP all-to-all")} == {
        2 * 8 * one
    }
    none = simulate_scenario(_mixtral("parallelism.ep=1"))
    assert not [s for s in none.timeline.spans if s.kind == "A2A"]
    # The all-to-alls lengthen the step by at least their exposed time on the critical path.
    assert res.metrics.step_time_s > none.metrics.step_time_s


def test_expert_gradients_reduce_over_the_expert_data_parallel_group() -> None:
    """With ep 8 of dp 16 the experts' gradients are reduce-scattered over 2 ranks in buckets
    of their own, after the dense buckets over 16."""
    from simtrain.costs import comm
    from simtrain.costs.memory import estimate_memory
    from simtrain.costs.workload import expert_params, rank_work
    from simtrain.layout.step import resolve

    sc = _mixtral()
    step = resolve(sc)
    sm = estimate_memory(sc).stages[1]
    exp = expert_params(sc, step, 1)
    m = sc.model
    assert exp == 8 * m.mlp_params(m.expert_ffn)  # one expert in each of 8 MoE blocks
    work = rank_work(sc, step, 1, sm.params, sm.trainable)
    dense = comm.bucket_group_ns(sc, step, "reduce_scatter", 2 * (sm.trainable - exp))
    experts = comm.expert_bucket_group_ns(sc, step, "reduce_scatter", 2 * exp)
    assert work.bucket_ns == dense + experts
    assert comm.edp_ns(sc, step, "reduce_scatter", 1e6) != comm.dp_ns(
        sc, step, "reduce_scatter", 1e6
    )


# ---------------------------------------------------------------------------------------------
# Multi-head latent attention and DeepSeek-V3


def test_deepseek_v3_main_model_is_671_026_419_200_parameters() -> None:
    """DeepSeek-V3 main model, every tensor of the checkpoint's layers 0-60 plus embedding, head
    and final norm: 671,026,419,200 (a tensor-by-tensor recount of the HF checkpoint headers;
    README_WEIGHTS.md: "671B"). By hand: MLA 187,107,328 per layer; 3 dense SwiGLU blocks of
    18432; 58 MoE blocks of 256 + 1 experts of 2048 with router and score-correction bias."""
    m = PRESETS["deepseek-v3"]
    h = 7168
    mla = h * 1536 + 1536 + 1536 * 128 * 192 + h * 576 + 512 + 512 * 128 * 256 + 128 * 128 * h
    assert m.attention_params() == mla == 187_107_328
    expert = 3 * h * 2048
    dense_block = mla + 3 * h * 18432 + 2 * h
    moe_block = mla + 257 * expert + 256 * h + 256 + 2 * h
    assert m.total_params() == 3 * dense_block + 58 * moe_block + 2 * 129280 * h + h
    assert m.total_params() == 671_026_419_200


def test_deepseek_v3_activated_parameters_match_readme_weights() -> None:
    """README_WEIGHTS.md: 36.6B activated (output head counted, input embedding not)."""
    m = PRESETS["deepseek-v3"]
    assert round((m.active_params() - m.vocab * m.hidden) / 1e9, 1) == 36.6


def test_deepseek_v3_checkpoint_total_with_its_mtp_module() -> None:
    """HF deepseek-ai/DeepSeek-V3 safetensors metadata: total 684,531,386,000 elements, of which
    F32 41,555,600. The checkpoint is the main model, the MTP module (mtp_params) with its own
    copies of the embedding and the head (README_WEIGHTS.md: shared in use, stored in layer 61),
    and the FP8 block scales, which are all the F32 tensors but the 59 routers' 256-entry
    e_score_correction_bias: an exact balance. The MTP module's transformer block alone is
    README_WEIGHTS.md's "11.5B unique parameters" (eh_proj and its three norms add 0.1B)."""
    m = PRESETS["deepseek-v3"]
    copies = 2 * m.vocab * m.hidden
    scales = 41_555_600 - 59 * 256
    assert m.total_params() + m.mtp_params() + copies + scales == 684_531_386_000
    assert round(m.moe_layer_params() / 1e9, 1) == 11.5
    assert m.mtp_params() - m.moe_layer_params() == 2 * m.hidden**2 + 3 * m.hidden


def test_deepseek_v3_hf_config_import() -> None:
    m = from_hf_config(MOE_DATA / "deepseek_v3_config.json")
    assert m.total_params() == 671_026_419_200
    assert m.mtp_params() == PRESETS["deepseek-v3"].mtp_params()
    assert m.active_params() == PRESETS["deepseek-v3"].active_params()
    assert (m.first_dense_layers, m.kv_lora_rank, m.q_dim, m.v_dim) == (
        3,
        512,
        128 * 192,
        128 * 128,
    )


def test_mla_flops_by_hand() -> None:
    """One DeepSeek-V3 MoE block forward, b = 1, s = 4096: 2·s·(latent and head projections)
    + 2·s²·heads·(192 + 128) for Q·Kᵀ and A·V + the MoE FFN (8 routed + 1 shared expert of
    2048, router 256)."""
    from simtrain.costs.compute import block_flops
    from simtrain.spec.scenario import TrainingSpec

    m = PRESETS["deepseek-v3"]
    s, h = 4096, 7168
    t = TrainingSpec(seq_len=s, micro_batch=1)
    proj = m.attention_params() - 1536 - 512  # the matmul weights (no norms)
    core = 2 * s * s * 128 * (192 + 128)
    ffn = 2 * s * (3 * h * 2048 * 9 + h * 256)
    bf = block_flops(m, t)
    assert bf.attention_core == core
    assert bf.forward == pytest.approx(2 * s * proj + core + ffn, rel=1e-15)


def test_mla_parameters_split_over_tp_as_megatron() -> None:
    """TP 8: q_b, kv_b column-parallel, o row-parallel (1/8 each), the q_a / kv_a
    down-projections and their norms replicated (Megatron-Core MLA)."""
    from simtrain.costs.params import layer_param_tensors
    from simtrain.spec.scenario import TrainingSpec

    m = PRESETS["deepseek-v3"]
    h = 7168
    tensors = {x.name: x.numel for x in layer_param_tensors(m, TrainingSpec(), tp=8, moe=False)}
    assert tensors["q_a.weight"] == h * 1536 and tensors["kv_a.weight"] == h * 576
    assert tensors["q_b.weight"] == 1536 * 128 * 192 // 8
    assert tensors["kv_b.weight"] == 512 * 128 * 256 // 8
    assert tensors["o.weight"] == 128 * 128 * h // 8
    assert tensors["q_a_layernorm.weight"] == 1536 and tensors["kv_a_layernorm.weight"] == 512


def test_deepseek_v3_first_dense_layers_on_the_first_stage() -> None:
    """With pp 1 the one chunk holds all 61 blocks: 3 dense + 58 MoE blocks' FLOPs."""
    from simtrain.costs.compute import block_flops, chunk_block_flops
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario(
        MIXTRAL,
        [
            "model.preset=deepseek-v3",
            "parallelism.pp=1",
            "parallelism.ep=8",
            "training.seq_len=1024",
            "cluster.nodes=2",
        ],
    )
    t, m = sc.training, sc.model
    cb = chunk_block_flops(sc, 61, 0)
    expected = 3 * block_flops(m, t, moe=False).forward + 58 * block_flops(m, t).forward
    assert cb.forward == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"kv_lora_rank": 0}, "model.q_lora_rank"),
        ({"v_head_dim": 0}, "model.kv_lora_rank"),
        ({"bias": True}, "model.kv_lora_rank"),
    ],
)
def test_bad_mla_fields_name_the_key(changes: dict, key: str) -> None:
    from simtrain.spec.model import validate_model

    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["deepseek-v3"], **changes))
    assert ei.value.key == key


# ---------------------------------------------------------------------------------------------
# The planner searches ep


def test_planner_searches_ep_over_the_divisors_of_dp_and_the_experts() -> None:
    """plans/mixtral_8x7b.yaml: 64 GPUs at tp 1, pp 4 give dp 16, so ep in {1, 2, 4, 8} (the
    divisors of 16 that divide 8 experts); at tp 2 every ep > 1 comes with sequence
    parallelism (Megatron-Core), ep 1 keeps the plan's sequence_parallel options."""
    from simtrain.apps.plan import load_plan
    from simtrain.apps.plan.layouts import enumerate_layouts

    plan = load_plan(ROOT / "plans" / "mixtral_8x7b.yaml")
    lays = enumerate_layouts(plan, 32, 32, 8)
    at = {(x.ep, x.sequence_parallel) for x in lays if x.gpus == 64 and x.tp == 1}
    assert {ep for ep, _ in at} == {1, 2, 4, 8}
    assert all(sp for ep, sp in {(x.ep, x.sequence_parallel) for x in lays if x.tp == 2} if ep > 1)
    dense = enumerate_layouts(plan, 32, 32, 0)
    assert {x.ep for x in dense} == {1}
    assert len(dense) == len([x for x in lays if x.ep == 1])


def test_plan_of_an_moe_model_runs_and_reports_ep() -> None:
    from simtrain.apps.plan import load_plan, run_plan

    res = run_plan(load_plan(ROOT / "plans" / "mixtral_8x7b.yaml"))
    best = res.to_json()["best"]
    assert best and any(row.get("ep", 1) > 1 for row in best)


def test_hardware_flops_do_not_grow_with_the_imbalance() -> None:
    """The imbalance moves expert work to the busiest rank (its time grows), not the FLOPs all
    GPUs execute together."""
    from simtrain.costs.compute import chunk_costs, hardware_flops_per_step

    even, busy = _mixtral(), _mixtral("model.moe_load_imbalance=1.5")
    assert hardware_flops_per_step(busy) == hardware_flops_per_step(even)
    assert chunk_costs(busy, 8, False, False, 8).forward_ns > chunk_costs(even, 8, False, False,
                                                                         8).forward_ns  # fmt: skip


def test_expert_all_to_all_and_its_buffers_carry_one_gpus_tokens_under_context_parallelism():
    """With cp the GPU routes only its s/cp tokens of each sequence (Megatron-Core
    get_batch_on_this_cp_rank): the all-to-all message and the dispatch buffers are half at
    cp 2 (same ep, same micro-batch), as a2a_bytes of half the tokens. The EP group is tp GPUs
    apart at any cp (Megatron-Core d98e8a64 parallel_state.py l.887-896: the expert grid
    orders tp-ep-dp-pp with no CP dimension): at tp 1 the 8 EP ranks are one node's GPUs 0-7,
    CP ranks among them, not every other GPU over two nodes."""
    from pathlib import Path

    from simtrain.costs import comm
    from simtrain.costs.memory import estimate_memory
    from simtrain.costs.moe import a2a_bytes, moe_load
    from simtrain.layout.step import resolve
    from simtrain.spec.scenario import load_scenario

    path = Path(__file__).resolve().parent.parent / "scenarios" / "mixtral_8x7b_ep8.yaml"
    one = load_scenario(path, ["parallelism.pp=1", "parallelism.dp=64", "training.global_batch=64"])
    two = load_scenario(path, ["parallelism.pp=1", "parallelism.dp=32", "parallelism.cp=2",
                               "training.global_batch=64"])  # fmt: skip
    m = one.model
    for sc, tokens in ((one, 4096), (two, 2048)):
        step = resolve(sc)
        size = a2a_bytes(m, tokens, step.precision.act_mm, 1, moe_load(m, 8))
        want = comm.collective_ns(sc, step, "all_to_all", size, 8, sc.parallelism.tp)
        assert comm.ep_alltoall_ns(sc, step) == want
        assert not step.placement.group_crosses_nodes(8, sc.parallelism.tp)
    b1 = estimate_memory(one).stages[0].breakdown.buffers
    b2 = estimate_memory(two).stages[0].breakdown.buffers
    assert b1 > b2


def test_routed_experts_run_at_the_grouped_gemm_efficiency():
    """Kernel class: the routed experts' GEMMs (one grouped GEMM over the local experts) at
    ``efficiency.grouped_matmul``, every other GEMM at ``matmul``. On the B200 profile (SimuMax's
    measured 0.302 and 0.498 with the GEMM shape term): forward = (F - G + L·E) / (peak x 0.498) + G / (peak x 0.302) + bytes /
    (HBM x memory_bound), G = 2·T·h·3·k·f_e / tp (SwiGLU). A profile without the key prices
    them as dense GEMMs (the H100's: G / (peak x matmul))."""

    from simtrain.costs.compute import block_flops, chunk_costs
    from simtrain.spec.scenario import parse_scenario

    def sc(hw: str):
        return parse_scenario({
            "name": "moe", "hardware": hw, "runtime": "megatron_core",
            "model": {"preset": "mixtral-8x7b", "layers": 2, "flash_attention": True},
            "cluster": {"nodes": 1, "gpus_per_node": 8},
            "training": {"seq_len": 1024, "global_batch": 8, "micro_batch": 1,
                         "precision": "bf16"},
            "parallelism": {"dp": 8, "tp": 1, "pp": 1, "ep": 8, "zero_stage": 1},
        }, "moe.yaml")  # fmt: skip

    b200 = sc("b200_180gb")
    m, t, hw = b200.model, b200.training, b200.hardware
    bf = block_flops(m, t, 1)
    assert bf.grouped == 2 * 1024 * 3 * m.hidden * m.experts_per_token * m.expert_ffn
    assert 0 < bf.grouped < bf.forward
    eff = hw.efficiency
    assert (eff.matmul, eff.grouped) == (0.498, 0.302)
    peak = hw.compute_peak("bf16")
    mem = bf.elementwise_bytes_fwd / (hw.hbm_bandwidth_bytes_per_s * eff.memory_bound)

    # the dense GEMMs with their shape term, L x Σ 2·M·N·K·(1/M + 1/N + 1/K) (worked by hand:
    # Mixtral's fused QKV N = 4096 + 2·1024, O, both K = 4096 over M = 1024 tokens; the router
    # N = 8 experts, K = 4096 over the same tokens at tp 1)
    def edge(m_: int, n: int, k: int) -> float:
        return 2 * m_ * n * k * (1 / m_ + 1 / n + 1 / k)

    e = edge(1024, 6144, 4096) + edge(1024, 4096, 4096) + edge(1024, 8, 4096)
    assert eff.gemm_edge_elements == 40
    # the attention core (flash attention) is the B200's class of the kernel Megatron-Core calls
    # (cuDNN's): its causal half at e_f x 1 / (1 + R_f / rows), rows = b·H·s = 32 x 1,024
    # (test_attention_tables.py)
    core = bf.attention_core
    fa = hw.flash_class("cudnn")
    flash = core / 2 / (peak * fa.forward) * (1 + fa.forward_rows_edge / (32 * 1024))
    dense_f = bf.forward - bf.grouped - core + eff.gemm_edge_elements * e
    gemm = dense_f / (peak * eff.matmul) + bf.grouped / (peak * eff.grouped)
    assert chunk_costs(b200, 1, False, False, lo=0).forward_ns == pytest.approx(
        1e9 * (gemm + flash + mem), abs=2)  # fmt: skip
    h100 = sc("h100_sxm5_80gb")
    hh = h100.hardware
    assert hh.efficiency.grouped_matmul is None and hh.efficiency.grouped == hh.efficiency.matmul
    mem_h = bf.elementwise_bytes_fwd / (hh.hbm_bandwidth_bytes_per_s * hh.efficiency.memory_bound)
    assert hh.efficiency.gemm_edge_elements == 150  # the same shapes' term, at the H100's L
    peak_h = hh.compute_peak("bf16")
    dense = (bf.forward - core + 150 * e) / (peak_h * hh.efficiency.matmul)
    # and its cuDNN class, of the FlashAttention-3 paper's H100 sweep: x (1 + S / s), s = 1,024
    fa_h = hh.flash_class("cudnn")
    flash_h = core / 2 / (peak_h * fa_h.forward) * (1 + fa_h.forward_seq_edge / 1024)
    assert chunk_costs(h100, 1, False, False, lo=0).forward_ns == pytest.approx(
        1e9 * (dense + flash_h + mem_h), abs=2)  # fmt: skip


def test_expert_gradients_are_reduced_over_the_context_parallel_ranks_too() -> None:
    """Mixtral 8x7B, dp 8 = ep 8: without CP every rank holds its own experts (expert-dp 1: no
    expert reduction); with cp 2 the two CP ranks of a DP rank hold the same experts, and
    Megatron-Core's expert-dp = dp·cp / ep = 2 reduces their gradients (and ZeRO shards their
    states over them, as the memory model does: half the experts' optimizer states)."""
    from simtrain.costs import comm
    from simtrain.costs.memory import stage_memory
    from simtrain.costs.workload import expert_params, rank_optimizer_shard, rank_work
    from simtrain.layout.step import resolve

    works = {}
    for cp in (1, 2):
        sc = _mixtral(
            "parallelism.dp=8",
            f"parallelism.cp={cp}",
            f"cluster.nodes={4 * cp}",
            "parallelism.zero_stage=1",
            "runtime.overlap_grad_reduce=false",
        )
        step = resolve(sc)
        sm = stage_memory(sc, 0)
        exp = expert_params(sc, step, 0)
        dense = sm.trainable - exp
        shard = rank_optimizer_shard(sc, step, 0, sm.trainable)
        assert shard == -(-dense // (8 * cp)) + -(-exp // cp)
        edp = comm.edp_ns(sc, step, "all_reduce", 1e9)
        tp, ep = sc.parallelism.tp, sc.parallelism.ep
        assert edp == (
            0 if cp == 1 else comm.collective_ns(sc, step, "all_reduce", 1e9, 2, tp * ep)
        )
        works[cp] = rank_work(sc, step, 0, sm.params, sm.trainable).grad_sync_ns
    assert works[2] > works[1]


def test_the_optimizer_steps_temporaries_shard_experts_over_the_expert_dp_group() -> None:
    """Mixtral 8x7B (dp 16, ep 8, ZeRO-1: expert states over dp / ep = 2 ranks): the step's
    fp32 master gradients are as many as the fp32 master weights the rank holds (both of its
    shard: dense parameters / 16, the experts' / 2), and PyTorch's single-tensor Adam adds two
    fp32 temporaries of the largest tensor it updates, an expert matrix h x f = 4,096 x 14,336
    halved (review: the experts were divided by dp = 16, 465.6 MB against 3.14 GB)."""
    sc = _mixtral()
    from simtrain.costs.memory import stage_memory

    s = stage_memory(sc, 1)
    assert (sc.parallelism.dp, sc.parallelism.ep, sc.parallelism.zero_stage) == (16, 8, 1)
    assert s.optimizer_working_bytes == s.category("master_weights") + 2 * 4 * (4096 * 14336 // 2)


def test_torchao_float8_on_experts_is_refused() -> None:
    """torchao's float8 linears cast per dense linear module (costs.fp8), not per routed
    expert: an MoE model under fp8_tensorwise / fp8_rowwise is a clear error naming the key and
    the recipes that are modelled (review: its casts were priced as a dense MLP's)."""
    for precision in ("fp8_tensorwise", "fp8_rowwise"):
        with pytest.raises(ConfigError, match="torchao's float8") as ei:
            _mixtral(f"training.precision={precision}")
        assert ei.value.key == "training.precision" and "fp8_current" in str(ei.value)


def test_relu_experts_save_one_tensor_fewer() -> None:
    """ReLU keeps its output, which is fc2's input (as the dense MLP: costs.activations._mlp):
    an MoE block of ReLU experts saves one k·sb·f_e·load·e/t tensor fewer than GeLU's (and
    the shared experts' sb·S·f_s·e/t), squared ReLU as many as GeLU."""
    from dataclasses import replace

    from simtrain.costs.moe import moe_saved_tensors
    from simtrain.spec.model import PRESETS

    m = replace(PRESETS["qwen1.5-moe-a2.7b"], mlp="gelu")
    sb, e, tp = 4096, 2, 2

    def total(kind: str) -> int:
        return sum(b for _, b, _ in moe_saved_tensors(replace(m, mlp=kind), sb, e, tp))

    one = m.experts_per_token * sb * m.expert_ffn * e // tp
    shared = sb * m.shared_experts * m.shared_ffn * e // tp
    assert total("gelu") - total("relu") == one + shared
    assert total("relu2") == total("gelu")


def test_expert_data_parallel_group_is_dp_cp_over_ep():
    """Megatron-Core's expert grid (d98e8a64 parallel_state.py l.887-896): expert-dp = world /
    (etp·ep·pp) = dp·cp / ep, its members tp·ep GPUs apart; every user of the group reads it
    from ParallelSpec.expert_dp (memory's ZeRO shard, the optimizer's shard, edp_ns)."""
    from pathlib import Path

    from simtrain.costs import comm
    from simtrain.layout.step import resolve
    from simtrain.spec.scenario import ParallelSpec, load_scenario

    assert ParallelSpec(dp=4, cp=2, ep=4).expert_dp == 2
    assert ParallelSpec(dp=4, ep=4).expert_dp == 1 and ParallelSpec(dp=8).expert_dp == 8
    path = Path(__file__).resolve().parent.parent / "scenarios" / "mixtral_8x7b_ep8.yaml"
    sc = load_scenario(path, ["parallelism.pp=1", "parallelism.dp=32", "parallelism.cp=2",
                              "training.global_batch=64", "parallelism.zero_stage=1"])  # fmt: skip
    step = resolve(sc)
    p = sc.parallelism
    assert p.expert_dp == 8
    want = comm.collective_ns(sc, step, "all_reduce", 1e9, 8, p.tp * p.ep)
    assert comm.edp_ns(sc, step, "all_reduce", 1e9) == want


def test_ep_divides_dp_times_cp():
    """Megatron-Core's expert grid needs ep | dp·cp (expert-dp = world / (tp·ep·pp)), not ep | dp:
    dp 4 x cp 4 takes ep 8 (expert-dp 2); ep 32 > dp·cp is refused, naming dp x cp."""
    from pathlib import Path

    from simtrain.errors import ConfigError
    from simtrain.spec.scenario import load_scenario

    path = Path(__file__).resolve().parent.parent / "scenarios" / "mixtral_8x7b_ep8.yaml"
    base = ["parallelism.dp=4", "parallelism.cp=4", "training.global_batch=64",
            "model.flash_attention=true"]  # fmt: skip
    sc = load_scenario(path, [*base, "parallelism.ep=8"])
    assert sc.parallelism.expert_dp == 2
    with pytest.raises(ConfigError) as ei:
        load_scenario(path, [*base, "parallelism.ep=32", "model.num_experts=32"])
    assert ei.value.key == "parallelism.ep" and "dp x cp = 16" in ei.value.message


def test_te_fp8_experts_save_quantized_inputs() -> None:
    """Under Transformer Engine FP8 an MoE block saves what TE's GroupedLinear and Megatron's
    router keep (TE grouped_linear.py l.896-936 at d0067d0d: each expert split's column-wise
    quantized input; Megatron moe_utils.py l.1382: the router's 16-bit input). Qwen3-30B-A3B's
    block at b·s = 4096, tp 1, MXFP8 against bf16, written out here: fc1 input k·sb·h and fc2
    input k·sb·f_e go from 2 B to 1 B + 1/32 B (an E8M0 scale per 32 values); the MLP input
    the bf16 block keeps once (2·sbh, one storage for router and experts) stays the router's
    2·sbh; fc1's output (the activation's input) stays 16-bit."""
    from simtrain.costs.activations import layer_saved_tensors
    from simtrain.spec.scenario import TrainingSpec

    m = PRESETS["qwen3-30b-a3b"]
    sb, k, h, f = 4096, m.experts_per_token, m.hidden, m.expert_ffn
    bf16 = TrainingSpec(micro_batch=1, global_batch=8, seq_len=sb, precision="bf16")
    mx = replace(bf16, precision="mxfp8")

    def saved(t: TrainingSpec) -> dict[str, int]:
        return {x.name: x.bytes for x in layer_saved_tensors(m, t)}

    a, b = saved(bf16), saved(mx)
    assert b["expert fc1 input (permuted tokens), FP8"] == k * sb * h + k * sb * h // 32
    assert b["expert fc2 input, FP8"] == k * sb * f + k * sb * f // 32
    assert b["mlp input (router)"] == a["mlp input (gate, up)"] == 2 * sb * h
    name = "expert fc1 output (activation input)"
    assert b[name] == a[name] == 2 * 2 * k * sb * f
    # nothing else in the MoE part changes; the attention's inputs are TE's FP8 copies too
    moe_a = sum(v for n, v in a.items() if "expert" in n or "rout" in n or "mlp input" in n)
    moe_b = sum(v for n, v in b.items() if "expert" in n or "rout" in n or "mlp input" in n)
    assert moe_a - moe_b == (k * sb * h + k * sb * f) - (k * sb * h + k * sb * f) // 32


def _folded(*overrides: str):
    """Qwen3-235B-A22B over 256 H100s as Megatron-Bridge's H100 recipe lays it out: tp 2,
    pp 8 x vp 4 (embedding and loss counted as layers), dp 16, ep over tp x dp."""
    from simtrain.spec.scenario import parse_scenario

    data = {
        "name": "folded", "model": {"preset": "qwen3-235b-a22b"},
        "hardware": "h100_sxm5_80gb", "runtime": "megatron_core",
        "cluster": {"nodes": 32, "gpus_per_node": 8},
        "training": {"seq_len": 4096, "global_batch": 1024, "micro_batch": 1,
                     "precision": "bf16", "recompute": "none"},
        "parallelism": {"dp": 16, "tp": 2, "pp": 8, "virtual_stages": 4,
                        "schedule": "interleaved", "zero_stage": 1, "sequence_parallel": True,
                        "ep": 16, "account_for_embedding": True, "account_for_loss": True},
    }  # fmt: skip
    for o in overrides:
        key, value = o.split("=")
        data["parallelism"][key] = int(value)
    return parse_scenario(data, "folded.yaml")


def test_whole_experts_fold_the_ep_group_over_tp() -> None:
    """Megatron-Core's expert grid (parallel_state.py l.887-896 at d98e8a64) is etp x ep x
    expert-dp x pp: with expert_tensor_parallel_size 1 ("MoE parallel folding") the EP group
    may span the TP ranks. At etp·ep = 32 either way a GPU holds the same expert bytes (16
    local experts split in two, or 4 whole ones ... here 8 / 2 and 4 / 1), the expert-dp group
    is tp·dp / (etp·ep), and the EP group's members are etp GPUs apart."""
    from simtrain.costs import comm
    from simtrain.costs.memory import estimate_memory
    from simtrain.costs.params import EXPERT_PREFIX, moe_param_tensors
    from simtrain.layout.step import resolve

    split, whole = _folded(), _folded("expert_tp=1", "ep=32")
    m = split.model
    assert (split.parallelism.etp, whole.parallelism.etp) == (2, 1)
    assert split.parallelism.expert_dp == whole.parallelism.expert_dp == 1
    assert _folded("expert_tp=1").parallelism.expert_dp == 2  # 32 / (1 x 16)

    def experts(sc) -> int:
        p = sc.parallelism
        return sum(x.numel for x in moe_param_tensors(m, p.tp, p.ep, True, p.etp)
                   if x.name.startswith(EXPERT_PREFIX))  # fmt: skip

    # 8 local experts of 3 x 4096 x 1536 / 2, or 4 whole ones
    assert experts(split) == experts(whole) == 4 * 3 * 4096 * 1536
    assert (estimate_memory(split).stages[0].category("parameters")
            == estimate_memory(whole).stages[0].category("parameters"))  # fmt: skip
    # the dispatch all-to-all: ep 16 GPUs 2 apart (4 nodes of 8), or 32 consecutive (4 nodes)
    for sc, stride in ((split, 2), (whole, 1)):
        step = resolve(sc)
        size = m.experts_per_token * 4096 // 2 * m.hidden * 2
        assert comm.ep_alltoall_ns(sc, step) == comm.collective_ns(
            sc, step, "all_to_all", size, sc.parallelism.ep, stride
        )


def test_whole_experts_keep_their_own_sequence_shard() -> None:
    """With whole experts nothing is all-gathered over TP before them: fc1's input (and the
    probabilities) are the rank's own s/t share of the expert-token pairs, half of what the
    expert-TP group's gather leaves at tp 2; fc1's output and fc2's input are as many bytes
    (half the pairs, twice the columns)."""
    from simtrain.costs.moe import moe_saved_tensors

    m = PRESETS["qwen3-235b-a22b"]
    sb, k, h, f = 4096, m.experts_per_token, m.hidden, m.expert_ffn
    split = {n: b for n, b, _ in moe_saved_tensors(m, sb, 2, tp=2)}
    whole = {n: b for n, b, _ in moe_saved_tensors(m, sb, 2, tp=2, etp=1)}
    name = "expert fc1 input (permuted tokens)"
    assert split[name] == 2 * k * sb * h and whole[name] == 2 * k * sb * h // 2
    assert whole["routing probabilities (fp32)"] == 4 * k * sb // 2
    for n in ("expert fc1 output (activation input)", "expert fc2 input"):
        assert split[n] == whole[n] == (4 if "fc1" in n else 2) * k * sb * f // 2


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (("expert_tp=3",), "parallelism.expert_tp", "0 | 1 | 2"),
        (("expert_tp=1", "ep=1"), "parallelism.expert_tp", "parallelism.ep"),
        (("expert_tp=1", "ep=64"), "parallelism.ep", "tp x dp x cp / expert_tp = 32"),
    ],
)  # fmt: skip
def test_expert_tp_errors_name_the_key(overrides: tuple[str, ...], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        _folded(*overrides)
    assert key in str(e.value) and words in str(e.value)


def test_megatron_importer_reads_expert_tensor_parallel_size() -> None:
    from simtrain.apps.importers.megatron import import_megatron_flags

    words = ("--num-layers 4 --hidden-size 1024 --num-attention-heads 8 --seq-length 1024 "
             "--micro-batch-size 1 --global-batch-size 16 --bf16 --vocab-size 32000 "
             "--num-experts 16 --moe-router-topk 2 --expert-model-parallel-size 8 "
             "--tensor-model-parallel-size 2 --sequence-parallel").split()  # fmt: skip
    assert "expert_tp" not in import_megatron_flags(words, gpus=16).data["parallelism"]
    folded = import_megatron_flags([*words, "--expert-tensor-parallel-size", "1"], gpus=16)
    assert folded.data["parallelism"]["expert_tp"] == 1


def test_te_fp8_moe_block_at_tp2_with_shared_experts() -> None:
    """Qwen1.5-MoE-A2.7B (4 shared experts of 1,408 = one of 5,632, gated) at tp 2 with
    sequence parallelism, FP8 current scaling, b·s = 4096, written out: the router keeps its
    sequence shard in 16 bits (2·sb·h/t), the shared experts' fc1 its FP8 copy (sb·h/t + the
    tensor's 4-B scale), the experts' fc1 input the whole gathered k·sb·h in FP8 (no per-tensor
    scale counted), fc2's inputs per TP rank (k·sb·f_e/t, sb·S·f_s/t) in FP8; with ReLU experts
    fc2 keeps its FP8 copy beside the activation's 16-bit output."""
    from simtrain.costs.activations import layer_saved_tensors
    from simtrain.spec.scenario import TrainingSpec

    m = PRESETS["qwen1.5-moe-a2.7b"]
    sb, k, h, f, tp = 4096, m.experts_per_token, m.hidden, m.expert_ffn, 2
    fs = m.shared_experts * m.shared_ffn
    t = TrainingSpec(micro_batch=1, global_batch=8, seq_len=sb, precision="fp8_current")

    def saved(mm) -> dict[str, tuple[int, str]]:
        return {x.name: (x.bytes, x.formula)
                for x in layer_saved_tensors(mm, t, tp=tp, sequence_parallel=True)}  # fmt: skip

    s = saved(m)
    assert s["mlp input (router)"][0] == 2 * sb * h // tp
    assert s["mlp input (shared experts), FP8"][0] == sb * h // tp + 4
    assert s["expert fc1 input (permuted tokens), FP8"] == (k * sb * h, "1·k·sb·h·load")
    assert s["expert fc2 input, FP8"][0] == k * sb * f // tp
    assert s["shared experts fc2 input, FP8"][0] == sb * fs // tp
    relu = saved(replace(m, mlp="relu"))
    assert relu["expert fc2 input, FP8"][0] == k * sb * f // tp
    assert relu["expert fc1 output (activation output = fc2 input)"][0] == 2 * k * sb * f // tp
    # a dense first block of an MoE model keeps the dense MLP's FP8 input
    ds = {x.name for x in layer_saved_tensors(PRESETS["deepseek-v3"], t, moe=False)}
    assert "mlp input (gate, up), FP8" in ds and "mlp input (router)" not in ds


def test_moe_block_tp_collectives_by_expert_tp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under sequence parallelism an MoE block's TP collectives are the attention's pair and
    its FFN's (comm.moe_tp_pairs): at expert-TP = tp the alltoall dispatcher's all-gather and
    reduce-scatter of the k·load token copies (token_dispatcher.py dispatch_postprocess /
    combine_preprocess over the expert-TP group), with whole experts none. Priced at their
    bytes (collective_ns returning the message size), written out: Qwen3-235B, b·s·h =
    4096 x 4096 in bf16 = 33,554,432 B a pair member, k = 8. The chunks sum MoE blocks."""
    from simtrain.costs import comm
    from simtrain.costs.chunk_time import chunk_durations
    from simtrain.layout.step import resolve

    monkeypatch.setattr(comm, "collective_ns", lambda sc, step, op, size, *a, **k: int(size))
    bsh = 4096 * 4096 * 2
    for sc, ffn in ((_folded(), 2 * 8 * bsh), (_folded("expert_tp=1", "ep=32"), 0)):
        step = resolve(sc)
        assert comm.tp_forward_block(sc, step, moe=True) == (2 * bsh + ffn, 0)
        assert comm.tp_forward_block(sc, step) == (4 * bsh, 0)  # a dense block's two pairs
        c = chunk_durations(sc, step)[1]  # every block of Qwen3-235B is an MoE block
        assert c.tp_forward_ns == (c.layers[1] - c.layers[0]) * (2 * bsh + ffn)
    whole = _folded("expert_tp=1", "ep=32")
    assert comm.moe_tp_pairs(whole, resolve(whole)) == ()


def test_whole_experts_strides_and_fp8_copies() -> None:
    """The expert-dp group of whole experts at ep 16 (tp 2 x dp 16 / 16 = 2 ranks) has members
    etp·ep = 16 GPUs apart; TE's FP8 copies of the experts follow the expert bytes: at etp·ep
    fixed the same, at etp 1 and ep 16 twice the split ones (8 whole experts, not 8 halves)."""
    from simtrain.costs import comm
    from simtrain.costs.fp8 import weight_cache_bytes
    from simtrain.layout.step import resolve
    from simtrain.spec.precision import PRECISIONS

    sc = _folded("expert_tp=1")
    step = resolve(sc)
    assert sc.parallelism.expert_dp == 2
    size = 1e9
    assert comm.edp_ns(sc, step, "all_reduce", size) == comm.collective_ns(
        sc, step, "all_reduce", size, 2, 16
    )
    m, mx = sc.model, PRECISIONS["mxfp8"]
    split = weight_cache_bytes(m, mx, "blackwell", 2, True, 16)
    folded = weight_cache_bytes(m, mx, "blackwell", 2, True, 32, 1)
    whole = weight_cache_bytes(m, mx, "blackwell", 2, True, 16, 1)
    # the extra 4 whole experts' weights (3 x 4096 x 1536 each), row- and column-wise MXFP8
    # on Blackwell (1 B a value + an E8M0 scale per 32)
    assert split == folded
    assert whole - split == 2 * (4 * 3 * 4096 * 1536) * 33 // 32


def test_moe_tp_pairs_scale_the_dispatcher_not_the_shared_experts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """comm.moe_tp_pairs at expert-TP = tp, priced at their bytes (collective_ns returning the
    message size): the dispatcher's all-gather and reduce-scatter carry k·load b·s·h (the
    busiest EP rank's load), the shared experts' one b·s·h, as a dense MLP's. Qwen1.5-MoE-A2.7B
    (4 experts a token, a shared expert), b·s·h = 2048 x 2048 in bf16 = 8,388,608 B; tp 2,
    ep 2, imbalance 1 and 1.5."""
    from simtrain.costs import comm
    from simtrain.layout.step import resolve
    from simtrain.spec.scenario import parse_scenario

    monkeypatch.setattr(comm, "collective_ns", lambda sc, step, op, size, *a, **k: int(size))
    bsh = 2048 * 2048 * 2
    for imbalance, k in ((1.0, 4), (1.5, 6)):
        sc = parse_scenario({
            "name": "q", "model": {"preset": "qwen1.5-moe-a2.7b",
                                   "moe_load_imbalance": imbalance},
            "hardware": "h100_sxm5_80gb", "runtime": "megatron_core",
            "cluster": {"nodes": 1, "gpus_per_node": 8},
            "training": {"seq_len": 2048, "global_batch": 8, "micro_batch": 1},
            "parallelism": {"dp": 4, "tp": 2, "pp": 1, "ep": 2, "sequence_parallel": True},
        }, "q.yaml")  # fmt: skip
        pairs = comm.moe_tp_pairs(sc, resolve(sc))
        assert pairs == (("dispatcher", k * bsh, k * bsh), ("shared", bsh, bsh))


def test_deepep_spans_the_nodes_of_its_expert_tp_stride(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepEP's EP group has its members etp GPUs apart (comm.deepep_alltoall_ns): Qwen3-235B
    on 8-GPU nodes at tp 2, ep 16 is 16 GPUs 2 apart, over 4 nodes (4 a node); with whole
    experts, 16 consecutive GPUs over 2 nodes: the node count the dispatch is sized for
    (costs.moe.deepep_a2a_bytes' ``nodes``)."""
    from simtrain.costs import comm
    from simtrain.layout.step import resolve
    from simtrain.spec.scenario import parse_scenario

    seen: list[int] = []

    def record(m, tokens, value_bytes, ep, nodes, *a, **k):
        seen.append(nodes)
        return 0.0, 0.0

    monkeypatch.setattr(comm, "deepep_a2a_bytes", record)
    for par in ({}, {"expert_tp": 1}):
        sc = parse_scenario({
            "name": "d", "model": {"preset": "qwen3-235b-a22b"}, "hardware": "h100_sxm5_80gb",
            "runtime": {"name": "megatron_core", "moe_dispatcher": "deepep"},
            "cluster": {"nodes": 32, "gpus_per_node": 8},
            "training": {"seq_len": 4096, "global_batch": 1024, "micro_batch": 1},
            "parallelism": {"dp": 16, "tp": 2, "pp": 8, "virtual_stages": 4,
                            "schedule": "interleaved", "zero_stage": 1,
                            "sequence_parallel": True, "ep": 16, "account_for_embedding": True,
                            "account_for_loss": True, **par}}, "d.yaml")  # fmt: skip
        comm.deepep_alltoall_ns(sc, resolve(sc), 4096, 2)
    assert seen == [4, 2]


def test_whole_experts_shrink_the_stage_activations() -> None:
    """Through the stage memory (costs.memory.SaveFlags carries the expert-TP size): at tp 2
    with whole experts each MoE layer keeps half the expert-token pairs' fc1 input and
    probabilities of the expert-TP gather's, 2·k·sb·h/2 + 4·k·sb/2 bytes less a layer (Qwen3-
    235B, b·s = 4096, bf16, k = 8, h = 4096)."""
    from simtrain.costs.memory import estimate_memory

    split = estimate_memory(_folded()).stages[1].breakdown.per_layer_bytes
    whole = estimate_memory(_folded("expert_tp=1", "ep=32")).stages[1].breakdown.per_layer_bytes
    k, sb, h = 8, 4096, 4096
    assert split - whole == 2 * k * sb * h // 2 + 4 * k * sb // 2
