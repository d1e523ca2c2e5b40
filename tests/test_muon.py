"""The Muon optimizer (costs.muon) and Kimi K2, the model Megatron-Bridge trains with it.

Independent values: PyTorch's own ``torch.optim.Muon`` state (measured with the reference
model), the Newton-Schulz iteration's FLOPs counted from its three matmuls, and Kimi K2's
parameter count from its config.json fields by hand."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from simtrain.apps.importers.megatron import import_megatron_flags
from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate.records import load_records
from simtrain.apps.validate.translate import record_to_scenario
from simtrain.costs.memory import estimate_memory
from simtrain.costs.muon import (
    NS_STEPS,
    Matrix,
    matrix_ns,
    muon_params,
    rank_muon_elements,
    rank_muon_ns,
)
from simtrain.costs.params import ParamTensor, layer_param_tensors, mtp_param_tensors
from simtrain.errors import ConfigError
from simtrain.layout.step import resolve
from simtrain.report.explain import explain_memory
from simtrain.spec.model import PRESETS, ModelSpec, from_hf_config
from simtrain.spec.scenario import PeftSpec, Scenario, TrainingSpec, load_scenario, parse_scenario

torch = pytest.importorskip("torch")

from simtrain.torchref.measure import measure_step  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GPT = ModelSpec("tiny-gpt", layers=2, hidden=64, heads=4, kv_heads=4, ffn_hidden=256, vocab=256,
                max_positions=128)  # fmt: skip
LLAMA = ModelSpec("tiny-llama", layers=2, hidden=64, heads=4, kv_heads=2, ffn_hidden=172,
                  vocab=256, max_positions=128, mlp="swiglu", tied_embeddings=False,
                  positions="rotary", bias=False, norm="rmsnorm")  # fmt: skip


def scenario(optimizer: str = "muon", zero: int = 1, dp: int = 8, tp: int = 1,
             model: dict[str, Any] | None = None) -> Scenario:  # fmt: skip
    return parse_scenario({
        "name": "muon", "model": model or {"preset": "llama3-8b"}, "hardware": "h100_sxm5_80gb",
        "cluster": {"nodes": max(1, dp * tp // 8), "gpus_per_node": min(8, dp * tp)},
        "training": {"seq_len": 2048, "global_batch": dp, "micro_batch": 1,
                     "precision": "bf16", "optimizer": optimizer, "recompute": "full"},
        "parallelism": {"dp": dp, "tp": tp, "pp": 1, "zero_stage": zero},
    }, "muon.yaml")  # fmt: skip


# --- memory: one momentum per matrix element, Adam's two elsewhere --------------------------


@pytest.mark.parametrize(("spec", "peft"), [(GPT, "none"), (LLAMA, "none"), (GPT, "prefix"),
                                           (LLAMA, "lora")], ids=["gpt", "llama", "gpt-prefix",
                                                                 "llama-lora"])  # fmt: skip
def test_states_equal_pytorch_muon(spec: ModelSpec, peft: str) -> None:
    """PyTorch's Muon (one fp32 ``momentum_buffer`` per matrix) beside AdamW (two fp32 moments)
    on the embeddings, the head, the vectors and prefix tuning's tables: the measured state
    bytes equal the model's byte for byte, and neither Adam's (8 B a parameter) nor momentum's
    (4 B); with LoRA only the adapters' (the base frozen)."""
    t = TrainingSpec(seq_len=16, micro_batch=2, precision="fp32", optimizer="muon")
    if peft != "none":
        t = replace(t, peft=PeftSpec(method=peft, prefix_length=4, rank=4,
                                     target_modules=("q", "v")))  # fmt: skip
    measured = measure_step(spec, t, steps=1).optimizer_state_bytes
    sc = parse_scenario({"name": "t", "model": {"preset": "gpt2"}, "hardware": "a100_sxm4_80gb",
                         "training": {"seq_len": 16, "global_batch": 2, "micro_batch": 2,
                                      "precision": "fp32", "optimizer": "muon"},
                         "parallelism": {"dp": 1, "tp": 1, "pp": 1}}, "t.yaml")  # fmt: skip
    sc = replace(sc, model=spec, training=t)
    modelled = dict(estimate_memory(sc).stages[0].memory_bytes)["optimizer_states"]
    n = estimate_memory(sc).stages[0].trainable
    assert modelled == measured
    if peft == "none":  # matrices and the rest
        assert 4 * n < measured < 8 * n
    else:  # prefix tables: Adam's only; LoRA's A and B: matrices only
        assert measured == {"prefix": 8, "lora": 4}[peft] * n


def test_states_closed_form_llama() -> None:
    """Llama 3 8B under ZeRO-1 over 8 GPUs: (4 B x the block matrices + 8 B x the embedding,
    the head and the norms) / 8, from the model's widths."""
    m = PRESETS["llama3-8b"]
    h, f, kv = m.hidden, m.ffn_hidden, m.kv_dim
    matrices = m.layers * (h * h + 2 * h * kv + h * h + 3 * h * f)
    rest = m.total_params() - matrices
    got = dict(estimate_memory(scenario()).stages[0].memory_bytes)["optimizer_states"]
    assert got == pytest.approx((4 * matrices + 8 * rest) / 8, abs=16)
    adam = dict(estimate_memory(scenario("adamw")).stages[0].memory_bytes)["optimizer_states"]
    assert adam - got == pytest.approx(4 * matrices / 8, abs=16)


# --- compute: the Newton-Schulz iterations --------------------------------------------------


def test_newton_schulz_gemms() -> None:
    """Per iteration X·Xᵀ (2m²n), A·A (2m³) and B·X (2m²n), m the smaller side, 5 iterations:
    a square matrix is three m³ GEMMs a step, a tall one costs what its transpose does, a wide
    one by hand."""
    hw = scenario().hardware
    assert NS_STEPS == 5
    assert matrix_ns(Matrix(4096, 4096), scenario()) == pytest.approx(
        5 * 3 * _gemm_ns(4096, 4096, 4096, hw), rel=1e-12)  # fmt: skip
    wide = matrix_ns(Matrix(1024, 8192), scenario())
    assert wide == pytest.approx(_ns_by_hand(1024, 8192, hw), rel=1e-12)
    assert matrix_ns(Matrix(8192, 1024), scenario()) == wide


def test_fused_parameters() -> None:
    """Megatron-Core's parameters: a fused linear_qkv is one parameter of three matrices
    (muon_split_qkv), a fused linear_fc1 one parameter of one h x 2f matrix; unfused, each
    linear its own; embeddings and vectors none; a block's tensors twice over, twice the
    parameters."""
    m = PRESETS["llama3-8b"]
    h, f, q, kv = m.hidden, m.ffn_hidden, m.q_dim, m.kv_dim
    ts = layer_param_tensors(m, TrainingSpec(optimizer="muon"))
    fused = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "fc1", "up": "fc1"}
    got = [[(x.rows, x.cols) for x in p.matrices] for p in muon_params(ts, fused)]
    assert sorted(got) == sorted([[(h, q), (h, kv), (h, kv)], [(q, h)], [(h, 2 * f)], [(f, h)]])
    assert len(muon_params(ts, {})) == 7
    assert len(muon_params(ts + ts, fused)) == 8
    assert not muon_params([ParamTensor("wte", 100, 8, True), ParamTensor("n", 8, 1, True)], {})


def _gemm_ns(a: int, b: int, c: int, hw) -> float:  # noqa: ANN001
    """2abc FLOPs at the profile's bf16 rate with the GEMM shape term, by hand."""
    eff, L = hw.efficiency.matmul, hw.efficiency.gemm_edge_elements
    return 1e9 * 2 * a * b * c * (1 + L / a + L / b + L / c) / (989.4e12 * eff)  # H100 bf16 peak


def _ns_by_hand(rows: int, cols: int, hw) -> float:  # noqa: ANN001
    m, n = sorted((rows, cols))
    return 5 * (2 * _gemm_ns(m, m, n, hw) + _gemm_ns(m, m, m, hw))


def _adam_traffic_ns(elements: float, hw) -> float:  # noqa: ANN001
    """The scalar Adam's second fp32 state read and written, at the optimizer's HBM rate."""
    eff = hw.efficiency.optimizer or hw.efficiency.memory_bound
    return 1e9 * elements * 2 * 4 / (hw.hbm_bandwidth_bytes_per_s * eff)


def test_llama_iterations_by_hand() -> None:
    """Llama 3 8B on 8 H100s, ZeRO-1 (Megatron-LM's runtime: gate and up one fc1; Q, K, V
    apart, muon_split_qkv): 32 x (q, k, v, o, fc1, down) Newton-Schulz times, 4 of each per
    rank, plus Adam's second state on the embeddings, head and norms / 8."""
    sc = scenario()
    hw, m = sc.hardware, PRESETS["llama3-8b"]
    h, f, kv = m.hidden, m.ffn_hidden, m.kv_dim
    mats = [(h, h), (h, kv), (h, kv), (h, h), (h, 2 * f), (f, h)]
    ns = 32 * sum(_ns_by_hand(r, c, hw) for r, c in mats) / 8
    rest = m.total_params() - 32 * sum(r * c for r, c in mats)
    got = rank_muon_ns(sc, resolve(sc), 0)
    assert got == pytest.approx(ns + _adam_traffic_ns(rest / 8, hw), abs=1)  # ns, rounded
    assert rank_muon_ns(scenario("adamw"), resolve(scenario("adamw")), 0) == 0


def test_whole_matrices_bound_the_share() -> None:
    """The layer-wise optimizer hands out whole matrices: with more ZeRO ranks (256) than
    matrices (192) the busiest rank does the largest one, fc1's, not 1/256 of the total; ZeRO
    0 does all of them."""
    hw, m = scenario().hardware, PRESETS["llama3-8b"]
    h, f = m.hidden, m.ffn_hidden
    big = scenario(dp=256)
    rest = m.total_params() - 32 * (2 * h * h + 2 * h * m.kv_dim + 3 * h * f)
    want = _ns_by_hand(h, 2 * f, hw) + _adam_traffic_ns(rest / 256, hw)
    assert rank_muon_ns(big, resolve(big), 0) == pytest.approx(want, abs=1)
    one, zero = scenario(zero=1), scenario(zero=0)
    assert rank_muon_ns(zero, resolve(zero), 0) > 7.9 * rank_muon_ns(one, resolve(one), 0)


def test_experts_over_the_expert_data_parallel_group() -> None:
    """An MoE model (Qwen3-30B-A3B, 48 MoE blocks, ep 4 over dp 8: expert-dp 2), by hand: the
    dense parameters (q/k/v, o, the router) over the 8 ZeRO ranks, the 32 local experts' fc1
    (h x 2f) and down (f x h) over the 2 expert-dp ranks, Adam's second state on the
    embeddings and norms over 8."""
    sc = scenario(model={"preset": "qwen3-30b-a3b"}, dp=8)
    sc = replace(sc, parallelism=replace(sc.parallelism, ep=4))
    m, hw = sc.model, sc.hardware
    assert sc.parallelism.expert_dp == 2 and m.moe_layers == m.layers == 48
    h, q, kv, e, f = m.hidden, m.q_dim, m.kv_dim, m.num_experts, m.expert_ffn
    dense = (_ns_by_hand(h, q, hw) + 2 * _ns_by_hand(h, kv, hw) + _ns_by_hand(q, h, hw)
             + _ns_by_hand(h, e, hw))  # fmt: skip
    experts = (e // 4) * (_ns_by_hand(h, 2 * f, hw) + _ns_by_hand(f, h, hw))
    rest = 2 * m.vocab * h + 48 * (2 * h + 2 * m.head_dim) + h  # untied; norms, q/k norms
    want = 48 * dense / 8 + 48 * experts / 2 + _adam_traffic_ns(rest / 8, hw)
    assert rank_muon_ns(sc, resolve(sc), 0) == pytest.approx(want, abs=1)


def test_each_model_chunk_assigned_apart() -> None:
    """Megatron-Core lays each model chunk's parameters out apart: Llama 3 8B at pp 4 x vp 4
    over dp 64 has 8 parameters a chunk (2 blocks x q/k/v, o, fc1, down) for 64 ranks, so the
    busiest rank of every chunk does its fc1, and a middle rank's 4 chunks add up to 4 fc1s
    (not its 32 parameters spread over 64 ranks); Adam's second state on its 8 blocks' norms."""
    sc = parse_scenario({
        "name": "chunks", "model": {"preset": "llama3-8b"}, "hardware": "h100_sxm5_80gb",
        "cluster": {"nodes": 32, "gpus_per_node": 8},
        "training": {"seq_len": 2048, "global_batch": 256, "micro_batch": 1,
                     "precision": "bf16", "optimizer": "muon"},
        "parallelism": {"dp": 64, "tp": 1, "pp": 4, "virtual_stages": 4,
                        "schedule": "interleaved", "zero_stage": 1},
    }, "chunks.yaml")  # fmt: skip
    m, hw = sc.model, sc.hardware
    want = 4 * _ns_by_hand(m.hidden, 2 * m.ffn_hidden, hw) + _adam_traffic_ns(
        8 * 2 * m.hidden / 64, hw)  # fmt: skip
    assert rank_muon_ns(sc, resolve(sc), 1) == pytest.approx(want, abs=1)


def test_expert_vectors_over_expert_dp() -> None:
    """GPT-OSS's biases are Adam's: the routed experts' over the 2 expert-dp ranks, as their
    matrices, the rest over the 8 ZeRO ranks. Removing the biases removes exactly that
    traffic (the matrices, and so the iterations, stay)."""
    sc = scenario(model={"preset": "gpt-oss-20b"}, dp=8)
    sc = replace(sc, parallelism=replace(sc.parallelism, ep=4))
    no_bias = replace(sc, model=replace(sc.model, bias=False))

    def vectors(model: ModelSpec) -> tuple[int, int]:  # (experts', the rest's) per block
        ts = [x for x in layer_param_tensors(model, sc.training, ep=4) if x.cols == 1]
        exp = sum(x.numel for x in ts if x.name.startswith("expert"))
        return exp, sum(x.numel for x in ts) - exp

    (e1, d1), (e0, d0) = vectors(sc.model), vectors(no_bias.model)
    assert e1 > e0 and d1 > d0
    layers = sc.model.layers
    want = _adam_traffic_ns(layers * ((e1 - e0) / 2 + (d1 - d0) / 8), sc.hardware)
    got = rank_muon_ns(sc, resolve(sc), 0) - rank_muon_ns(no_bias, resolve(no_bias), 0)
    assert got == pytest.approx(want, abs=2)


def test_step_pays_the_iterations() -> None:
    """The simulated optimizer time against AdamW's, by hand: Muon adds its Newton-Schulz
    iterations and the scalar Adam's second state on the embeddings, head and norms, and drops
    AdamW's second state (an fp32 read and write) on the whole ZeRO-1 shard (Llama 3 8B / 8)."""
    mu, ad = scenario(), scenario("adamw")
    t_mu = dict(simulate_scenario(mu).metrics.time_breakdown_s)["optimizer"]
    t_ad = dict(simulate_scenario(ad).metrics.time_breakdown_s)["optimizer"]
    hw, m = mu.hardware, PRESETS["llama3-8b"]
    h, f, kv = m.hidden, m.ffn_hidden, m.kv_dim
    mats = [(h, h), (h, kv), (h, kv), (h, h), (h, 2 * f), (f, h)]
    ns = 32 * sum(_ns_by_hand(r, c, hw) for r, c in mats) / 8
    rest = m.total_params() - 32 * sum(r * c for r, c in mats)
    shard = m.total_params() / 8
    want = ns + _adam_traffic_ns(rest / 8, hw) - _adam_traffic_ns(shard, hw)
    assert 1e9 * (t_mu - t_ad) == pytest.approx(want, abs=2)  # ns: each action rounded up


def test_mtp_modules_and_lora_matrices_apart() -> None:
    """Each MTP module's eh_proj is its own matrix (two modules: two); LoRA's A and B are
    matrices of their own, gate's and up's never merged as their fused weights are, and the
    frozen base weights none."""
    m = replace(PRESETS["deepseek-v3"], mtp_layers=2)
    t = TrainingSpec(optimizer="muon")
    got = muon_params(mtp_param_tensors(m, t), {"gate": "fc1", "up": "fc1"})
    assert [[(x.rows, x.cols) for x in p.matrices] for p in got] == [[(2 * m.hidden, m.hidden)]] * 2
    lora = replace(t, peft=PeftSpec(method="lora", rank=8, target_modules=("q", "gate", "up")))
    got = muon_params(layer_param_tensors(PRESETS["llama3-8b"], lora),
                      {"gate": "fc1", "up": "fc1"})  # fmt: skip
    h, f = 4096, PRESETS["llama3-8b"].ffn_hidden
    assert sorted((x.rows, x.cols) for p in got for x in p.matrices) == sorted(
        [(h, 8), (8, h), (h, 8), (8, f), (h, 8), (8, f)])  # fmt: skip


# --- Kimi K2 ---------------------------------------------------------------------------------

KIMI_K2 = {  # moonshotai/Kimi-K2-Instruct config.json (the fields the reader takes)
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
    "num_attention_heads": 64, "num_key_value_heads": 64, "kv_lora_rank": 512,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "n_routed_experts": 384, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "moe_layer_freq": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    "topk_method": "noaux_tc", "scoring_func": "sigmoid", "num_nextn_predict_layers": 0,
    "vocab_size": 163840, "tie_word_embeddings": False, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6, "rope_theta": 50000.0,
}  # fmt: skip


def _kimi_by_hand() -> int:
    """Kimi K2's parameters from its config's fields: MLA (q_a, q_a norm, q_b, kv_a, kv_a
    norm, kv_b, o), two RMSNorms a block, one dense MLP block, 60 MoE blocks of 384 experts +
    1 shared + a router with its correction bias, untied embedding and head, final norm."""
    h, heads, v, ql, kvl, nope, rope, vd = 7168, 64, 163840, 1536, 512, 128, 64, 128
    mla = (h * ql + ql + ql * heads * (nope + rope) + h * (kvl + rope) + kvl
           + kvl * heads * (nope + vd) + heads * vd * h)  # fmt: skip
    expert = 3 * h * 2048
    moe = 384 * expert + expert + h * 384 + 384
    return 61 * (mla + 2 * h) + 3 * h * 18432 + 60 * moe + 2 * v * h + h


def test_kimi_k2_preset_and_config(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    import json

    p.write_text(json.dumps(KIMI_K2))
    assert PRESETS["kimi-k2"].total_params() == _kimi_by_hand() == 1_026_408_232_448
    assert from_hf_config(p).total_params() == _kimi_by_hand()
    read, preset = from_hf_config(p), PRESETS["kimi-k2"]  # n_group 1: no group limit
    assert (read.router_groups, read.router_group_topk) == (preset.router_groups, 0) == (0, 0)


def test_bridge_kimi_rows_run_muon_on_the_recipe_layout() -> None:
    """Megatron-Bridge's Kimi K2 rows: Muon (the recipe's dist_muon) and the recipe's 61-layer
    layout for pp 4 x vp 4 (embedding + 4 layers, 14 x 4, 1 layer + loss)."""
    recs = [r for r in load_records(ROOT / "measured" / "mbridge_26x.yaml") if "Kimi" in r.id]
    assert len(recs) == 4
    sc = record_to_scenario(recs[0])
    assert isinstance(sc, Scenario), sc
    assert sc.training.optimizer == "muon"
    assert sc.model.total_params() == _kimi_by_hand()
    assert sc.parallelism.layer_split == (4,) * 15 + (1,)


@pytest.mark.parametrize(
    ("flags", "zero"),
    [("--optimizer muon", 0), ("--optimizer muon --use-distributed-optimizer", 1),
     ("--optimizer dist_muon", 1)],
)  # fmt: skip
def test_megatron_importer_reads_muon(flags: str, zero: int) -> None:
    """Megatron-LM's --optimizer muon, and dist_muon (muon with the layer-wise distributed
    optimizer, as --use-distributed-optimizer with muon: arguments.py l.1724-1736): Muon,
    ZeRO-1's sharing where distributed; nothing listed unsupported."""
    base = ("--num-layers 2 --hidden-size 256 --num-attention-heads 4 --seq-length 512 "
            "--max-position-embeddings 512 --micro-batch-size 1 --global-batch-size 8 --bf16")  # fmt: skip
    imp = import_megatron_flags([*base.split(), *flags.split()], gpus=8)
    assert imp.data["training"]["optimizer"] == "muon"
    assert int(imp.data["parallelism"].get("zero_stage", 0)) == zero
    assert not [u for u in imp.unsupported if "optimizer" in u]
    for extra, flag in (("--use-megatron-fsdp --data-parallel-sharding-strategy optim",
                         "--use-megatron-fsdp"),
                        ("--use-distributed-optimizer --num-distributed-optimizer-instances 2",
                         "--num-distributed-optimizer-instances")):  # fmt: skip
        other = import_megatron_flags([*base.split(), *flags.split(), *extra.split()], gpus=8)
        assert any(flag in u for u in other.unsupported), extra
        assert int(other.data["parallelism"].get("zero_replicas", 1)) == 1
    # arguments.py l.1738-1739: Torch-FSDP2 and Megatron-FSDP (or its old name) both refused
    # with Muon, each named as given; the sharding strategy is read, not reported unknown
    for extra in ("--use-torch-fsdp2", "--use-custom-fsdp --data-parallel-sharding-strategy optim"):
        other = import_megatron_flags([*base.split(), *flags.split(), *extra.split()], gpus=8)
        first = extra.split()[0]
        assert [u.split(":")[0] for u in other.unsupported] == [first], other.unsupported
        assert int(other.data["parallelism"].get("zero_stage", 0)) == zero
        assert not [a for a in other.assumptions if "not a flag" in a]
    aware = import_megatron_flags(
        [
            *base.split(),
            *flags.split(),
            "--use-precision-aware-optimizer",
            "--exp-avg-dtype",
            "bf16",
            "--exp-avg-sq-dtype",
            "bf16",
        ],
        gpus=8,
    )
    assert "optimizer_state_dtype" not in aware.data["training"]
    assert any("--use-precision-aware-optimizer" in u for u in aware.unsupported)


@pytest.mark.parametrize(
    ("change", "key"),
    [({"parallelism": {"zero_stage": 2}}, "parallelism.zero_stage"),
     ({"parallelism": {"zero_stage": 3}}, "parallelism.zero_stage"),
     ({"training": {"offload": {"optimizer": True}}}, "training.offload.optimizer"),
     ({"training": {"optimizer_state_dtype": "bf16"}}, "training.optimizer_state_dtype"),
     ({"training": {"precision": "bf16", "master_weights": "remainder"}},
      "training.master_weights"),
        ({"parallelism": {"zero_replicas": 2}}, "parallelism.zero_replicas")],
)  # fmt: skip
def test_refused_where_not_modelled(change: dict[str, Any], key: str) -> None:
    """ZeRO-2/3 (sharded gradients, every matrix gathered first), the host step and
    Megatron-Core's precision-aware storage (Adam's only): clear errors naming the key and the
    allowed values."""
    data = {"name": "m", "model": {"preset": "gpt2"}, "hardware": "a100_sxm4_80gb",
            "cluster": {"nodes": 1, "gpus_per_node": 8},
            "training": {"seq_len": 128, "global_batch": 8, "micro_batch": 1,
                         "optimizer": "muon"},
            "parallelism": {"dp": 8, "tp": 1, "pp": 1, "zero_stage": 1}}  # fmt: skip
    for section, values in change.items():
        data[section] = {**data[section], **values}
    with pytest.raises(ConfigError) as e:
        parse_scenario(data, "m.yaml")
    assert key in str(e.value) and "muon" in str(e.value)


def test_explain_names_the_split() -> None:
    """``simtrain memory --explain``: the matrix and other elements it prints weigh 4 B and
    8 B into the optimizer states, and the matrices are Llama 3 8B's block linears."""
    sc = scenario(zero=0, dp=1)
    rep = estimate_memory(sc)
    line = next(x for x in explain_memory(sc, rep) if x.strip().startswith("Muon:"))
    mats, rest = (int(n.replace(",", "")) for n in re.findall(r"the (?:other )?([\d,]+)", line))
    m = PRESETS["llama3-8b"]
    h, f, kv = m.hidden, m.ffn_hidden, m.kv_dim
    assert mats == m.layers * (2 * h * h + 2 * h * kv + 3 * h * f)
    assert 4 * mats + 8 * rest == dict(rep.stages[0].memory_bytes)["optimizer_states"]


def test_explain_counts_what_memory_counts() -> None:
    """The explain line's matrix and other elements sum to the stage's trainable parameters,
    also where a chunk of the V holds the head without the embedding (DeepSeek-V3's DualPipeV,
    its MTP module sharing rank 0's embedding)."""
    sc = load_scenario(ROOT / "scenarios" / "deepseek_v3_2048gpu.yaml")
    sc = replace(sc, training=replace(sc.training, optimizer="muon"))
    rep = estimate_memory(sc)
    for sm in rep.stages[:2]:
        mats, rest = rank_muon_elements(sc, resolve(sc), sm.stage)
        assert mats + rest == sm.trainable


@pytest.mark.parametrize("field, value", [("n_group", -1), ("n_group", True), ("n_group", 1.5),
                                          ("n_group", []), ("topk_group", 1.5),
                                          ("topk_group", -2), ("q_lora_rank", 1.5),
                                          ("q_lora_rank", [])])  # fmt: skip
def test_deepseek_group_and_latent_fields_must_be_whole(tmp_path: Path, field: str,
                                                        value: object) -> None:  # fmt: skip
    """n_group -1, [] or true became 0 (no group limit), q_lora_rank 1.5 became 1 and
    topk_group 1.5 became 1 (int() of each; a fuzz campaign): an error naming the field."""
    import json

    from simtrain.errors import ConfigError

    p = tmp_path / "config.json"
    p.write_text(json.dumps({**KIMI_K2, field: value}))
    with pytest.raises(ConfigError) as info:
        from_hf_config(p)
    assert info.value.key == field


def test_deepseek_null_latent_and_groups_are_still_read(tmp_path: Path) -> None:
    """q_lora_rank and n_group may be null (transformers' defaults: q_proj straight from h, no
    group limit)."""
    import json

    p = tmp_path / "config.json"
    p.write_text(json.dumps({**KIMI_K2, "q_lora_rank": None, "n_group": None}))
    m = from_hf_config(p)
    assert m.q_lora_rank == 0 and m.router_groups == 0
