"""GPT-J and GPTBigCode (StarCoder 1, SantaCoder) configs, and biases on the MLP only
(``model.mlp_bias``: GPT-J's fc_in / fc_out, GPT-NeoX's ``attention_bias: false``, Nemotron's
``mlp_bias``). Before, a GPT-J or GPTBigCode config.json was read as GPT-2 (its n_embd field):
learned positions, a sequential block, biases everywhere, every head's K and V. Independent
values: transformers' own parameter counts and the PyTorch reference's measured bytes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hf_configs import HF, write_config

from simtrain.errors import ConfigError
from simtrain.spec.model import ModelSpec, from_hf_config


def test_gptj_6b() -> None:
    """EleutherAI/gpt-j-6b config.json: 6,050,882,784 parameters in transformers 4.46.3's
    GPTJForCausalLM (meta device), rotary on 64 of each head's 256 dimensions, one ln_1 for
    both branches, biases on the MLP and the LM head only."""
    m = from_hf_config(HF / "gpt-j-6b.json")
    assert m.total_params() == 6_050_882_784
    assert (m.positions, m.rotary_fraction, m.parallel_residual, m.shared_norm) == (
        "rotary", 0.25, True, True)  # fmt: skip
    assert (m.bias, m.mlp_bias, m.head_bias, m.tied_embeddings) == (False, True, True, False)


def test_gpt_bigcode_is_multi_query(tmp_path: Path) -> None:
    """GPTBigCode (StarCoderBase-1B's shape): GPT-2's block with one K/V head (multi_query, its
    default): 1,137,207,296 parameters in transformers' GPTBigCodeForCausalLM; without
    multi_query every head keeps its own."""
    cfg = {"model_type": "gpt_bigcode", "n_embd": 2048, "n_head": 16, "n_layer": 24,
           "n_positions": 8192, "vocab_size": 49152, "n_inner": 8192}  # fmt: skip
    m = from_hf_config(write_config(tmp_path, cfg))
    assert (m.total_params(), m.kv_heads, m.positions, m.mlp) == (1_137_207_296, 1, "learned",
                                                                  "gelu")  # fmt: skip
    assert from_hf_config(write_config(tmp_path, {**cfg, "multi_query": False})).kv_heads == 16


def test_gpt_neox_without_attention_biases(tmp_path: Path) -> None:
    """GPT-NeoX's attention_bias false keeps the MLP's biases: 162,286,080 parameters for
    pythia-160m's shape (transformers' GPTNeoXForCausalLM), 4h a layer fewer than with them."""
    cfg = {**json.loads((HF / "pythia-160m.json").read_text()), "attention_bias": False}
    m = from_hf_config(write_config(tmp_path, cfg))
    assert (m.bias, m.mlp_bias, m.total_params()) == (False, True, 162_286_080)


def test_other_n_embd_configs_are_not_gpt2(tmp_path: Path) -> None:
    """A model_type with GPT-2's field names that simtrain does not read (CodeGen) is an error
    listing the ones it reads; a config without model_type is still read as GPT-2."""
    cfg = {"n_embd": 256, "n_head": 4, "n_layer": 2, "vocab_size": 1000, "n_positions": 512}
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, {**cfg, "model_type": "codegen"}))
    assert ei.value.key == "model_type" and "gptj" in str(ei.value.allowed)
    assert from_hf_config(write_config(tmp_path, cfg)).positions == "learned"


@pytest.mark.parametrize(("change", "key"), [({"rotary_dim": 512}, "rotary_dim"),
                                             ({"rotary_dim": 0}, "rotary_dim"),
                                             ({"rotary_dim": "64"}, "rotary_dim"),
                                             ({"rotary_dim": 1}, "rotary_dim"),
                                             ({"rotary_dim": None}, "rotary_dim")])  # fmt: skip
def test_bad_rotary_dim(tmp_path: Path, change: dict, key: str) -> None:
    cfg = {**json.loads((HF / "gpt-j-6b.json").read_text()), **change}
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, cfg))
    assert ei.value.key == key


def test_mlp_bias_measured() -> None:
    """GPT-J's biases (MLP and LM head) in the PyTorch reference: parameter bytes equal the
    model's, and the saved activations are the unbiased block's (a bias's gradient is its
    output gradient summed)."""
    pytest.importorskip("torch")
    from reference_pairs import measure_and_estimate

    from simtrain.spec.scenario import TrainingSpec

    base = ModelSpec("gptj-tiny", 2, 64, 4, 4, 256, 256, 256, positions="rotary",
                     rotary_fraction=0.25, parallel_residual=True, shared_norm=True, bias=False,
                     tied_embeddings=False, flash_attention=True)  # fmt: skip
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="fp32")
    acts = {}
    for m in (base, replace(base, mlp_bias=True, head_bias=True)):
        r, mb = measure_and_estimate(m, t)
        assert r.parameter_bytes == mb["parameters"]
        acts[m.mlp_bias] = (r.activation_bytes, mb["activations"])
    assert acts[True] == acts[False]
    biased = replace(base, mlp_bias=True)
    assert biased.total_params() - base.total_params() == 2 * (256 + 64)  # (f + h) a layer


def test_mlp_bias_not_with_experts() -> None:
    from simtrain.spec.model import PRESETS, validate_model

    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["mixtral-8x7b"], mlp_bias=True), "s.yaml")
    assert ei.value.key == "model.mlp_bias"


@pytest.mark.parametrize(("change", "total"), [
    # LlamaForCausalLM (transformers 4.46.3, meta device) of a 2-layer, h 256 shape
    ({}, 1_963_264),
    ({"mlp_bias": True}, 1_966_528),  # LlamaMLP's gate / up / down biases
    ({"attention_bias": True, "mlp_bias": True}, 1_968_064),  # q, k, v, o_proj's too
])  # fmt: skip
def test_llama_biases(tmp_path: Path, change: dict, total: int) -> None:
    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 1000, **change}  # fmt: skip
    assert from_hf_config(write_config(tmp_path, cfg)).total_params() == total


def test_llama_attention_bias_alone_is_refused(tmp_path: Path) -> None:
    """Llama's attention_bias puts biases on o_proj too, which no key says without the MLP's:
    an error naming the field (it was read as Q/K/V biases, o_proj's h a layer missing)."""
    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
           "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000,
           "attention_bias": True}  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, cfg))
    assert ei.value.key == "attention_bias"


def test_absent_rotary_dim_is_the_default(tmp_path: Path) -> None:
    """GPTJConfig's rotary_dim default (64) applies where the field is absent, and the error on
    a narrower head says so."""
    cfg = json.loads((HF / "gpt-j-6b.json").read_text())
    del cfg["rotary_dim"]
    assert from_hf_config(write_config(tmp_path, cfg)).rotary_fraction == 0.25
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, {**cfg, "n_head": 128}))  # 32-wide heads
    assert ei.value.key == "rotary_dim" and "absent: 64" in ei.value.message
