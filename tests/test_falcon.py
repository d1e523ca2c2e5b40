"""Falcon (``model_type`` falcon and its legacy RefinedWeb / RefinedWebModel configs) and the
one-norm parallel block it brings (``model.shared_norm``: Falcon-7B's input_layernorm, GPT-J's
ln_1, PaLM's formula). Independent values: transformers' own parameter count of each config,
the closed forms of what one norm fewer takes away, and PyTorch's saved bytes (the reference
model measured on the CPU)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hf_configs import HF, write_config

from simtrain.costs.compute import FUSED_OP_ACCESSES, block_elementwise_bytes
from simtrain.costs.params import layer_param_tensors
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS, from_hf_config, validate_model
from simtrain.spec.scenario import TrainingSpec, parse_scenario


@pytest.mark.parametrize(("file", "total"), [
    # sum(p.numel() for p in FalconForCausalLM(FalconConfig(**config)).parameters()) with
    # transformers 4.46.3 on the meta device (the tied lm_head once)
    ("falcon-7b.json", 6_921_720_704),
    ("falcon-40b-refinedweb.json", 41_303_293_952),
    ("falcon-180b.json", 178_557_088_768),
    ("falcon-rw-1b.json", 1_311_625_216),
    ("falcon-11b.json", 10_836_484_096),
])  # fmt: skip
def test_transformers_counts(file: str, total: int) -> None:
    assert from_hf_config(HF / file).total_params() == total


@pytest.mark.parametrize(("file", "fields"), [
    # the original layout: multi_query's one KV head, one input_layernorm for both branches
    ("falcon-7b.json", {"kv_heads": 1, "parallel_residual": True, "shared_norm": True,
                        "positions": "rotary", "bias": False, "tied_embeddings": True}),
    # new_decoder_architecture: n_head_kv groups, ln_attn and ln_mlp
    ("falcon-40b-refinedweb.json", {"layers": 60, "heads": 128, "kv_heads": 8,
                                    "parallel_residual": True, "shared_norm": False}),
    # num_ln_in_parallel_attn 1: one norm in the new layout too
    ("falcon-11b.json", {"kv_heads": 8, "shared_norm": True, "max_positions": 8192}),
    # Falcon-RW: sequential, ALiBi, biases, MHA
    ("falcon-rw-1b.json", {"kv_heads": 32, "parallel_residual": False, "shared_norm": False,
                           "positions": "alibi", "bias": True}),
])  # fmt: skip
def test_fields(file: str, fields: dict) -> None:
    m = from_hf_config(HF / file)
    assert {k: getattr(m, k) for k in fields} == fields


def test_legacy_refinedwebmodel_is_falcon_7b(tmp_path: Path) -> None:
    """Falcon-7B's first config (model_type RefinedWebModel, n_layer / n_head) is the model its
    later falcon config describes."""
    cfg = json.loads((HF / "falcon-7b.json").read_text())
    legacy = {
        k: v
        for k, v in cfg.items()
        if k not in ("num_hidden_layers", "num_attention_heads", "new_decoder_architecture")
    }
    legacy.update(model_type="RefinedWebModel", n_layer=32, n_head=71)  # fmt: skip
    got = from_hf_config(write_config(tmp_path, legacy))
    assert replace(got, name="f") == replace(from_hf_config(HF / "falcon-7b.json"), name="f")


@pytest.mark.parametrize(("change", "key"), [
    ({"new_decoder_architecture": True, "parallel_attn": False}, "parallel_attn"),
    ({"apply_residual_connection_post_layernorm": True},
     "apply_residual_connection_post_layernorm"),
    ({"new_decoder_architecture": True, "num_ln_in_parallel_attn": 3}, "num_ln_in_parallel_attn"),
    ({"num_kv_heads": "8"}, "num_kv_heads"),
    ({"ffn_hidden_size": 1.5}, "ffn_hidden_size"),
])  # fmt: skip
def test_what_falcon_cannot_say(tmp_path: Path, change: dict, key: str) -> None:
    cfg = {**json.loads((HF / "falcon-7b.json").read_text()), **change}
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, cfg))
    assert ei.value.key == key


@pytest.mark.parametrize(("name", "file"), [
    ("falcon-7b", "falcon-7b.json"), ("falcon-40b", "falcon-40b-refinedweb.json"),
    ("falcon-180b", "falcon-180b.json"),
])  # fmt: skip
def test_presets_are_their_configs(name: str, file: str) -> None:
    assert replace(from_hf_config(HF / file), name=name) == PRESETS[name]


def test_one_norm_fewer_parameters() -> None:
    """A shared norm drops one LayerNorm a block: 2h parameters (weight and bias), in the
    count and in the per-tensor list the memory model sums."""
    m = PRESETS["falcon-7b"]
    two = replace(m, shared_norm=False)
    assert two.total_params() - m.total_params() == m.layers * 2 * m.hidden
    t = TrainingSpec(seq_len=2048, global_batch=1, micro_batch=1)
    names = {p.name for p in layer_param_tensors(m, t, 1)}
    assert "norm1.weight" in names and "norm2.weight" not in names
    assert sum(p.numel for p in layer_param_tensors(two, t, 1)) - sum(
        p.numel for p in layer_param_tensors(m, t, 1)) == 2 * m.hidden  # fmt: skip


@pytest.mark.parametrize("sp", [False, True])
def test_one_norm_pass_fewer(sp: bool) -> None:
    """The block's fused element-wise bytes lose one norm's read and write of h per token (on
    s/t tokens under sequence parallelism), the backward in proportion."""
    m, tp = PRESETS["falcon-40b"], 4
    t = TrainingSpec(seq_len=2048, global_batch=2, micro_batch=2, precision="bf16")
    shared = replace(m, shared_norm=True)
    f2, b2 = block_elementwise_bytes(m, t, tp, sp=sp)
    f1, b1 = block_elementwise_bytes(shared, t, tp, sp=sp)
    one = FUSED_OP_ACCESSES["rmsnorm"] * 2 * 2 * 2048 * m.hidden / (tp if sp else 1)
    assert f2 - f1 == pytest.approx(one)
    assert b2 / f2 == pytest.approx(b1 / f1)


def test_shared_norm_needs_the_parallel_block() -> None:
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["gpt2"], shared_norm=True), "s.yaml")
    assert ei.value.key == "model.shared_norm" and "parallel_residual" in ei.value.message


def test_a_preset_made_sequential_drops_its_shared_norm() -> None:
    """falcon-7b run with parallel_residual: false is a sequential block with two norms (the
    preset's shared norm does not become an error on a key the user never wrote); given with
    it, the error names model.shared_norm."""

    def sc(model: dict):
        return parse_scenario({"name": "f", "model": model, "hardware": "a100_sxm4_80gb",
                               "training": {"seq_len": 512, "global_batch": 1, "micro_batch": 1},
                               "parallelism": {}}, "f.yaml")  # fmt: skip

    m = sc({"preset": "falcon-7b", "parallel_residual": False}).model
    assert (m.parallel_residual, m.shared_norm) == (False, False)
    assert m.total_params() == PRESETS["falcon-7b"].total_params() + m.layers * 2 * m.hidden
    with pytest.raises(ConfigError) as ei:
        sc({"preset": "falcon-7b", "parallel_residual": False, "shared_norm": True})
    assert ei.value.key == "model.shared_norm"


@pytest.mark.parametrize(("file", "change", "want"), [
    # FalconAttention drops the probabilities on the ALiBi path only: rotary, no dropout at all
    ("falcon-7b.json", {"attention_dropout": 0.1}, (0.0, True)),
    ("falcon-7b.json", {"attention_dropout": 0.1, "alibi": True}, (0.1, True)),
    ("falcon-7b.json", {"hidden_dropout": 0.1}, (0.1, False)),
    # the sequential block drops the attention's output at attention_dropout's rate
    ("falcon-rw-1b.json", {"attention_dropout": 0.1}, (0.1, True)),
    ("falcon-rw-1b.json", {"hidden_dropout": 0.1}, (0.1, False)),
])  # fmt: skip
def test_falcon_dropouts(tmp_path: Path, file: str, change: dict, want: tuple) -> None:
    """(model.dropout, model.attention_dropout) as transformers 4.46's FalconAttention and
    FalconDecoderLayer apply them (a review found rotary configs charged the probabilities'
    masks: falcon-7b at s 2048 with attention_dropout 0.1, 53.8 GiB of activations for 26.6)."""
    cfg = {**json.loads((HF / file).read_text()), **change}
    m = from_hf_config(write_config(tmp_path, cfg))
    assert (m.dropout, m.attention_dropout) == want
    if not m.dropout:
        t = TrainingSpec(seq_len=2048, global_batch=1, micro_batch=1, precision="bf16")
        plain = from_hf_config(HF / file)
        from simtrain.costs.activations import layer_activation_bytes

        assert layer_activation_bytes(m, t) == layer_activation_bytes(plain, t)


@pytest.mark.parametrize("lns", [2, 7])
def test_original_layout_takes_one_norm(tmp_path: Path, lns: int) -> None:
    """Without new_decoder_architecture, num_ln_in_parallel_attn 2 builds ln_attn / ln_mlp that
    transformers' forward never reaches (it fails): an error naming the field."""
    cfg = {**json.loads((HF / "falcon-7b.json").read_text()), "num_ln_in_parallel_attn": lns}
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, cfg))
    assert ei.value.key == "num_ln_in_parallel_attn"


def test_n_embed_keeps_falcon_s_mlp_width(tmp_path: Path) -> None:
    """FalconConfig takes n_embed as the hidden size but computes ffn_hidden_size from its
    hidden_size argument (4 x 4,544 by default): 9,516,800 parameters, as FalconForCausalLM
    builds this config (transformers 4.46.3, meta device)."""
    cfg = {"model_type": "falcon", "n_embed": 128, "num_attention_heads": 4,
           "num_hidden_layers": 2, "vocab_size": 1000}  # fmt: skip
    m = from_hf_config(write_config(tmp_path, cfg))
    assert (m.hidden, m.ffn_hidden, m.total_params()) == (128, 4 * 4544, 9_516_800)
