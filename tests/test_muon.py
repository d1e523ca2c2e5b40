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
from simtrain.costs.compute import optimizer_step_ns
from simtrain.costs.memory import estimate_memory
from simtrain.costs.muon import NS_STEPS, Matrix, muon_matrices, rank_muon_ns
from simtrain.costs.params import ParamTensor, layer_param_tensors
from simtrain.errors import ConfigError
from simtrain.layout.step import resolve
from simtrain.report.explain import explain_memory
from simtrain.spec.model import PRESETS, ModelSpec, from_hf_config
from simtrain.spec.scenario import Scenario, TrainingSpec, parse_scenario

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


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
def test_states_equal_pytorch_muon(spec: ModelSpec) -> None:
    """PyTorch's Muon (one fp32 ``momentum_buffer`` per matrix) beside AdamW (two fp32 moments)
    on the embeddings, the head and the vectors: the measured state bytes equal the model's
    byte for byte, and neither Adam's (8 B a parameter) nor momentum's (4 B)."""
    t = TrainingSpec(seq_len=16, micro_batch=2, precision="fp32", optimizer="muon")
    measured = measure_step(spec, t, steps=1).optimizer_state_bytes
    sc = parse_scenario({"name": "t", "model": {"preset": "gpt2"}, "hardware": "a100_sxm4_80gb",
                         "training": {"seq_len": 16, "global_batch": 2, "micro_batch": 2,
                                      "precision": "fp32", "optimizer": "muon"},
                         "parallelism": {"dp": 1, "tp": 1, "pp": 1}}, "t.yaml")  # fmt: skip
    sc = replace(sc, model=spec)
    modelled = dict(estimate_memory(sc).stages[0].memory_bytes)["optimizer_states"]
    n = spec.total_params()
    assert modelled == measured
    assert 4 * n < measured < 8 * n


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


def test_newton_schulz_flops() -> None:
    """Per iteration X·Xᵀ (2m²n), A·A (2m³) and B·X (2m²n), m the smaller side; 5 iterations."""
    assert NS_STEPS == 5
    assert Matrix(4096, 4096, False).flops == 5 * (2 + 2 + 2) * 4096**3
    wide = Matrix(1024, 8192, False).flops
    assert wide == 5 * (2 * 1024**2 * 8192 * 2 + 2 * 1024**3)
    assert Matrix(8192, 1024, False).flops == wide  # a tall matrix is transposed


def test_fused_linears_are_one_matrix() -> None:
    """Q, K, V fused as linear_qkv (h x (q + 2kv)) and gate/up as linear_fc1 (h x 2f): one
    matrix each, as Megatron-Core orthogonalises them; apart without fusion."""
    m = PRESETS["llama3-8b"]
    ts = layer_param_tensors(m, TrainingSpec(optimizer="muon"))
    fused = muon_matrices(ts, {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "fc1", "up": "fc1"})
    shapes = sorted((x.rows, x.cols) for x in fused)
    h, f = m.hidden, m.ffn_hidden
    assert shapes == sorted([(h, h + 2 * m.kv_dim), (h, h), (h, 2 * f), (f, h)])
    assert len(muon_matrices(ts, {})) == 7
    assert not muon_matrices([ParamTensor("wte", 100, 8, True), ParamTensor("n", 8, 1, True)], {})


def test_work_shared_over_the_zero_group() -> None:
    """The layer-wise distributed optimizer: each of dp ranks orthogonalises 1/dp of the work
    under ZeRO-1; without it every replica all of it; Adam none."""
    sc1, sc0 = scenario(zero=1), scenario(zero=0)
    one, zero = rank_muon_ns(sc1, resolve(sc1), 0), rank_muon_ns(sc0, resolve(sc0), 0)
    assert one > 0
    assert zero == pytest.approx(8 * one, rel=1e-6)
    assert rank_muon_ns(scenario("adamw"), resolve(scenario("adamw")), 0) == 0


def test_step_pays_the_iterations() -> None:
    """The simulated optimizer time grows by the rank's Newton-Schulz time (the momentum's
    traffic is one state's, below Adam's two)."""
    mu, ad = scenario(), scenario("adamw")
    t_mu = dict(simulate_scenario(mu).metrics.time_breakdown_s)["optimizer"]
    t_ad = dict(simulate_scenario(ad).metrics.time_breakdown_s)["optimizer"]
    ns = rank_muon_ns(mu, resolve(mu), 0) / 1e9
    shard = PRESETS["llama3-8b"].total_params() // 8
    traffic = [optimizer_step_ns(shard, x.training, x.hardware) / 1e9 for x in (mu, ad)]
    assert traffic[0] < traffic[1]
    assert t_mu - t_ad == pytest.approx(ns + traffic[0] - traffic[1], abs=2e-6)


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


@pytest.mark.parametrize(
    ("change", "key"),
    [({"parallelism": {"zero_stage": 2}}, "parallelism.zero_stage"),
     ({"parallelism": {"zero_stage": 3}}, "parallelism.zero_stage"),
     ({"training": {"offload": {"optimizer": True}}}, "training.offload.optimizer")],
)  # fmt: skip
def test_refused_where_not_modelled(change: dict[str, Any], key: str) -> None:
    """ZeRO-2/3 (sharded gradients, every matrix gathered first) and the host step: clear
    errors naming the key and the allowed values."""
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
