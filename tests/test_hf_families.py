"""Hugging Face config.json files of the decoders beyond Llama and GPT-2 (``spec.model``:
``_hf_other`` and the Llama-style kinds phi3 and gemma): parameter counts against the figures
their model cards, papers and PyTorch sums publish, and the settings each config cannot say.

The config files in tests/data/hf are the models' own config.json (fields the importer does
not read left out where they are long, e.g. rope_scaling)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_configs import DROP, HF, write_config

from simtrain.errors import ConfigError
from simtrain.spec.model import from_hf_config


def _embedding(m) -> int:
    """The token embedding and an untied head: what the model cards call embedding parameters."""
    return m.vocab * m.hidden * (1 if m.tied_embeddings else 2)


@pytest.mark.parametrize(("file", "total"), [
    # BLOOM model card (bigscience/bloom): "176,247,271,424 parameters: 3,596,615,680 embedding
    # parameters, 70 layers, 112 attention heads"
    ("bloom-176b.json", 176_247_271_424),
    ("bloom-560m.json", 559_214_592),  # bigscience/bloom-560m card: 559,214,592 parameters
    ("gemma-2b.json", 2_506_172_416),  # huggingface.co/google/gemma-2b/discussions/36
    # sum(p.numel()) of the loaded models, printed by independent public scripts
    ("opt-125m.json", 125_239_296),
    ("opt-1.3b.json", 1_315_758_080),
    ("phi-3-mini-4k.json", 3_821_079_552),
    ("pythia-160m.json", 162_322_944),
])  # fmt: skip
def test_published_totals(file: str, total: int) -> None:
    assert from_hf_config(HF / file).total_params() == total


@pytest.mark.parametrize(("file", "non_embedding"), [
    # Pythia model card (EleutherAI/pythia-*), "Non-Embedding Params": all but embed_in and
    # embed_out (the final LayerNorm counted)
    ("pythia-160m.json", 85_056_000),
    ("pythia-1.4b.json", 1_208_602_624),
    # Gemma paper (arXiv 2403.08295) Table 2: 2B non-embedding 1,981,884,416
    ("gemma-2b.json", 1_981_884_416),
])  # fmt: skip
def test_published_non_embedding(file: str, non_embedding: int) -> None:
    m = from_hf_config(HF / file)
    assert m.total_params() - _embedding(m) == non_embedding


def test_bloom_embedding_parameters() -> None:
    m = from_hf_config(HF / "bloom-176b.json")
    assert m.vocab * m.hidden == 3_596_615_680
    assert (m.positions, m.embedding_norm, m.ffn_hidden, m.max_positions) == (
        "alibi", True, 4 * 14336, 2048)  # fmt: skip


@pytest.mark.parametrize(("file", "billions"), [
    ("starcoder2-3b.json", 3.03),  # bigcode/starcoder2-3b: 3.03B (tied: untied would be 3.18B)
    ("minitron-4b.json", 4.19),  # nvidia/Minitron-4B-Base: 4.19B (head_dim 128, relu2)
])  # fmt: skip
def test_published_rounded_totals(file: str, billions: float) -> None:
    assert round(from_hf_config(HF / file).total_params() / 1e9, 2) == billions


def test_nemotron4_340b_from_the_report(tmp_path: Path) -> None:
    """Nemotron-4 340B technical report (arXiv 2406.11704) §2.1: 96 layers, hidden 18,432, 96
    heads, 8 KV heads, vocabulary 256,000, squared ReLU, untied: "9.4 billion embedding
    parameters and 331.6 billion non-embedding parameters"."""
    cfg = {"model_type": "nemotron", "hidden_size": 18432, "num_hidden_layers": 96,
           "num_attention_heads": 96, "num_key_value_heads": 8, "intermediate_size": 73728,
           "vocab_size": 256000, "max_position_embeddings": 4096}  # fmt: skip
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = from_hf_config(p)
    assert (m.mlp, m.tied_embeddings, m.bias, m.norm) == ("relu2", False, False, "layernorm")
    assert round(_embedding(m) / 1e9, 1) == 9.4
    assert round((m.total_params() - _embedding(m)) / 1e9, 1) == 331.6


@pytest.mark.parametrize(("file", "fields"), [
    ("opt-125m.json", {"mlp": "relu", "positions": "learned", "max_positions": 2050,
                       "tied_embeddings": True, "bias": True, "dropout": 0.1}),
    ("pythia-160m.json", {"mlp": "gelu", "positions": "rotary", "tied_embeddings": False,
                          "bias": True, "norm": "layernorm"}),
    ("starcoder2-3b.json", {"mlp": "gelu", "kv_heads": 2, "tied_embeddings": True,
                            "dropout": 0.1, "max_positions": 16384}),
    ("minitron-4b.json", {"mlp": "relu2", "head_dim": 128, "kv_heads": 8, "bias": False}),
    ("gemma-2b.json", {"mlp": "swiglu", "head_dim": 256, "kv_heads": 1, "norm": "rmsnorm",
                       "tied_embeddings": True}),
    ("phi-3-mini-4k.json", {"mlp": "swiglu", "tied_embeddings": False, "bias": False}),
])  # fmt: skip
def test_fields(file: str, fields: dict) -> None:
    m = from_hf_config(HF / file)
    assert {k: getattr(m, k) for k in fields} == fields


def test_opt_350m_projection_is_refused() -> None:
    with pytest.raises(ConfigError) as ei:
        from_hf_config(HF / "opt-350m.json")
    assert ei.value.key == "word_embed_proj_dim" and "not expressible" in ei.value.message


@pytest.mark.parametrize(("base", "change", "key"), [
    ("opt-125m.json", {"do_layer_norm_before": False}, "do_layer_norm_before"),
    ("minitron-4b.json", {"attention_bias": True, "mlp_bias": False}, "mlp_bias"),
    ("opt-125m.json", {"ffn_dim": None}, "ffn_dim"),
    ("bloom-560m.json", {"n_layer": "24"}, "n_layer"),
])  # fmt: skip
def test_settings_a_config_cannot_say(tmp_path: Path, base: str, change: dict, key: str) -> None:
    p = write_config(tmp_path, base, change)
    with pytest.raises(ConfigError) as ei:
        from_hf_config(p)
    assert ei.value.key == key and ei.value.file == str(p)


def test_unknown_type_lists_the_new_ones(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "mamba", "hidden_size": 64}))
    with pytest.raises(ConfigError) as ei:
        from_hf_config(p)
    for kind in (
        "opt",
        "gpt_neox",
        "bloom",
        "phi3",
        "gemma",
        "starcoder2",
        "nemotron",
        "falcon",
        "phi",
        "gptj",
        "gpt_bigcode",
    ):
        assert kind in str(ei.value.allowed)


def test_gemma_7b_reads_head_dim(tmp_path: Path) -> None:
    """google/gemma-7b: 16 heads of 256 on hidden 3,072 (not 3,072 / 16 = 192): the Gemma
    paper's Table 2 7B non-embedding count, 7,751,248,896, needs head_dim."""
    cfg = {"model_type": "gemma", "head_dim": 256, "hidden_act": "gelu", "hidden_size": 3072,
           "intermediate_size": 24576, "max_position_embeddings": 8192,
           "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 16,
           "vocab_size": 256000}  # fmt: skip
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = from_hf_config(p)
    assert m.total_params() - _embedding(m) == 7_751_248_896


@pytest.mark.parametrize(("name", "file"), [
    ("opt-125m", "opt-125m.json"), ("opt-1.3b", "opt-1.3b.json"),
    ("pythia-160m", "pythia-160m.json"), ("pythia-1.4b", "pythia-1.4b.json"),
    ("bloom-176b", "bloom-176b.json"), ("gemma-2b", "gemma-2b.json"),
    ("phi-3-mini", "phi-3-mini-4k.json"),
])  # fmt: skip
def test_presets_are_their_configs(name: str, file: str) -> None:
    """A preset is the model its config.json describes (dropout aside: the configs of Pythia,
    Gemma and Phi-3 set none, OPT's 0.1 as the preset)."""
    from dataclasses import replace

    from simtrain.spec.model import PRESETS

    imported = from_hf_config(HF / file)
    assert replace(imported, name=name) == PRESETS[name]


@pytest.mark.parametrize(("name", "non_embedding"), [
    # Pythia model card "Non-Embedding Params"
    ("pythia-70m", 18_915_328), ("pythia-410m", 302_311_424), ("pythia-1b", 805_736_448),
    ("pythia-2.8b", 2_517_652_480),
    ("gemma-7b", 7_751_248_896),  # Gemma paper Table 2
])  # fmt: skip
def test_preset_non_embedding_counts(name: str, non_embedding: int) -> None:
    from simtrain.spec.model import PRESETS

    m = PRESETS[name]
    assert m.total_params() - _embedding(m) == non_embedding


def test_nemotron_presets_match_the_reports() -> None:
    """Nemotron-4 15B (arXiv 2402.16819 §2): "3.2 billion embedding parameters and 12.5 billion
    non-embedding" (2 x 256,000 x 6,144 = 3.146B: the report rounds up); 340B (arXiv
    2406.11704 §2.1): 9.4B and 331.6B."""
    from simtrain.spec.model import PRESETS

    for name, emb, rest in (("nemotron-4-15b", 3.2, 12.5), ("nemotron-4-340b", 9.4, 331.6)):
        m = PRESETS[name]
        assert abs(_embedding(m) / 1e9 - emb) < 0.06
        assert round((m.total_params() - _embedding(m)) / 1e9, 1) == rest


@pytest.mark.parametrize(("base", "change", "fields"), [
    # OPTConfig: dropout 0.1 on the residual branches, attention_dropout 0.0
    ("opt-125m.json", {}, {"dropout": 0.1, "attention_dropout": False}),
    ("opt-125m.json", {"attention_dropout": 0.1}, {"dropout": 0.1, "attention_dropout": True}),
    # Starcoder2Config defaults num_key_value_heads to 2
    ("starcoder2-3b.json", {"num_key_value_heads": DROP}, {"kv_heads": 2}),
    # GemmaConfig defaults head_dim to 256 (gemma-7b: 16 heads on hidden 3,072)
    ("gemma-2b.json", {"head_dim": DROP, "num_attention_heads": 16, "num_key_value_heads": 16},
     {"head_dim": 256}),
    # BloomConfig: n_embed, where given, is the hidden size
    ("bloom-560m.json", {"n_embed": 2048}, {"hidden": 2048, "ffn_hidden": 8192}),
    # GPT-NeoX: attention dropout alone is counted at its rate (the residual masks too)
    ("pythia-160m.json", {"attention_dropout": 0.1}, {"dropout": 0.1, "attention_dropout": True}),
])  # fmt: skip
def test_transformers_defaults_and_dropouts(tmp_path: Path, base, change, fields) -> None:
    m = from_hf_config(write_config(tmp_path, base, change))
    assert {k: getattr(m, k) for k in fields} == fields


@pytest.mark.parametrize(("base", "change", "key"), [
    ("starcoder2-3b.json", {"residual_dropout": "abc"}, "residual_dropout"),
    ("opt-125m.json", {"dropout": {}}, "dropout"),
    ("opt-125m.json", {"attention_dropout": 1.0}, "attention_dropout"),
    ("opt-125m.json", {"hidden_size": 0}, "hidden_size"),
    ("opt-125m.json", {"_remove_final_layer_norm": True}, "_remove_final_layer_norm"),
    ("bloom-560m.json", {"hidden_dropout": True}, "hidden_dropout"),
])  # fmt: skip
def test_bad_values_name_their_field(tmp_path: Path, base: str, change: dict, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, base, change))
    assert ei.value.key == key


@pytest.mark.parametrize(("file", "field"), [("olmo-2-1b.json", "hidden_act"),
                                             ("gemma-2b.json", "hidden_activation")])  # fmt: skip
def test_llama_style_activation_is_checked_not_shape(tmp_path: Path, file: str,
                                                      field: str) -> None:  # fmt: skip
    """A Llama-style MLP is gated whatever its activation: another name keeps the shape, a name
    that is not one is an error naming the field (it had been ignored)."""
    base = from_hf_config(HF / file)
    other = from_hf_config(write_config(tmp_path, file, {field: "relu"}))
    assert other.mlp == base.mlp == "swiglu"
    assert other.total_params() == base.total_params()
    for bad in (0, [], ""):
        with pytest.raises(ConfigError) as info:
            from_hf_config(write_config(tmp_path, file, {field: bad}))
        assert info.value.key == field
