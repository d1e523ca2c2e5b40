"""Model shapes: exact parameter counts against published numbers and closed forms, and the
Hugging Face ``config.json`` importer.

Every expected number is independent of the code: a count published on a Hugging Face model card
or safetensors index, a paper's number, or a closed form written out here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest

from simtrain.errors import ConfigError
from simtrain.spec.limits import INT_RANGES, MAX_PARAMS
from simtrain.spec.model import PRESETS, ModelSpec, from_hf_config, preset, validate_model

DATA = Path(__file__).parent / "data"

# ---------------------------------------------------------------------------------------------
# Published parameter counts

PUBLISHED = {
    # HF model cards / config.json (GPT2LMHeadModel, tied LM head counted once).
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    # HF safetensors totals (meta-llama/*).
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "llama3-405b": 405_853_388_800,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
    # HF safetensors totals (mistralai/Mistral-7B-v0.3, Qwen/Qwen2.5-*)
    "mistral-7b": 7_248_023_552,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-14b": 14_770_033_664,
    "qwen2.5-32b": 32_763_876_352,
    "qwen2.5-72b": 72_706_203_648,
    # tests/test_hf_families.py gives each source: the BLOOM and bloom-560m model cards, the
    # Gemma-2B count (google/gemma-2b discussion 36), PyTorch sums of the loaded OPT, Pythia and
    # Phi-3 checkpoints
    "bloom-176b": 176_247_271_424,
    "gemma-2b": 2_506_172_416,
    "opt-125m": 125_239_296,
    "opt-1.3b": 1_315_758_080,
    "phi-3-mini": 3_821_079_552,
    "pythia-160m": 162_322_944,
}


@pytest.mark.parametrize(("name", "count"), sorted(PUBLISHED.items()))
def test_published_parameter_counts(name: str, count: int) -> None:
    assert PRESETS[name].total_params() == count


def test_gpt3_175b_is_175_billion() -> None:
    # Brown et al. 2020, Table 2.1: 175.0B parameters (rounded); within 0.5 %.
    n = PRESETS["gpt3-175b"].total_params()
    assert abs(n - 175e9) / 175e9 < 0.005


def test_aliases_and_case() -> None:
    assert preset("GPT2-small") == PRESETS["gpt2"]
    assert preset("gpt2-1.5b").total_params() == 1_557_611_200
    with pytest.raises(ConfigError) as ei:
        preset("gpt5")
    assert ei.value.key == "model.preset"
    assert "gpt5" in str(ei.value)
    assert "llama2-7b" in str(ei.value)  # the allowed names are listed


def _narayanan_eq2(layers: int, hidden: int, vocab: int, seq: int) -> Fraction:
    """Narayanan et al. 2021 Eq. 2 as printed: P = 12 l h^2 (1 + 13/(12h) + (V+s)/(12 l h))."""
    n_l, h = layers, hidden
    return 12 * n_l * h * h * (1 + Fraction(13, 12 * h) + Fraction(vocab + seq, 12 * n_l * h))


@pytest.mark.parametrize(
    "name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-1.3b", "gpt3-175b"]
)
def test_narayanan_eq2(name: str) -> None:
    """Eq. 2 expands to 12lh^2 + 13lh + (V+s)h: per layer 4h^2+4h (QKV+O with biases) + 8h^2+5h
    (4h MLP with biases) + 4h (two LayerNorms) = 12h^2 + 13h, plus V·h tokens and s·h positions.
    It leaves out the *final* LayerNorm (weight + bias = 2h), so the exact count is Eq. 2 + 2h
    (GPT-2 small: 124,438,272 + 1,536 = 124,439,808, the published count)."""
    m = PRESETS[name]
    assert m.tied_embeddings and m.positions == "learned" and m.bias and m.norm == "layernorm"
    assert m.ffn_hidden == 4 * m.hidden and m.kv_heads == m.heads
    eq2 = _narayanan_eq2(m.layers, m.hidden, m.vocab, m.max_positions)
    assert eq2.denominator == 1
    assert (
        eq2
        == 12 * m.layers * m.hidden**2
        + 13 * m.layers * m.hidden
        + (m.vocab + m.max_positions) * m.hidden
    )
    assert m.total_params() == eq2 + 2 * m.hidden


def test_narayanan_eq2_gpt2_small_by_hand() -> None:
    assert _narayanan_eq2(12, 768, 50257, 1024) == 124_438_272
    assert 124_438_272 + 2 * 768 == PUBLISHED["gpt2"]


def test_custom_gpt_shape_matches_eq2() -> None:
    m = ModelSpec("x", layers=7, hidden=320, heads=5, kv_heads=5, ffn_hidden=1280, vocab=1000,
                  max_positions=64)  # fmt: skip
    assert m.total_params() == _narayanan_eq2(7, 320, 1000, 64) + 2 * 320


def test_gqa_llama_layer_by_hand() -> None:
    """Llama-2-70B block: W_q, W_o h x h; W_k, W_v h x (8·128); SwiGLU 3·h·f; two RMSNorms h."""
    m = PRESETS["llama2-70b"]
    h, kv, f = 8192, 8 * 128, 28672
    assert m.layer_params() == 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    assert m.total_params() == 80 * m.layer_params() + 2 * 32000 * h + h


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json import


@pytest.mark.parametrize(
    ("file", "count"),
    [
        ("gpt2_config.json", 124_439_808),  # HF gpt2
        ("llama_config.json", 6_738_415_616),  # HF meta-llama/Llama-2-7b-hf
        ("mistral_config.json", 7_241_732_096),  # HF mistralai/Mistral-7B-v0.1
        ("qwen2_config.json", 494_032_768),  # HF Qwen/Qwen2-0.5B
    ],
)
def test_hf_config_counts(file: str, count: int) -> None:
    assert from_hf_config(DATA / file).total_params() == count


def test_hf_config_fields() -> None:
    g = from_hf_config(DATA / "gpt2_config.json")
    assert (g.layers, g.hidden, g.heads, g.ffn_hidden, g.vocab, g.max_positions) == (
        12, 768, 12, 3072, 50257, 1024,
    )  # fmt: skip
    assert g.mlp == "gelu" and g.tied_embeddings and g.positions == "learned"
    assert g.dropout == pytest.approx(0.1)
    m = from_hf_config(DATA / "mistral_config.json")
    assert (m.kv_heads, m.head_dim, m.kv_dim) == (8, 128, 1024)
    assert m.mlp == "swiglu" and not m.tied_embeddings and m.positions == "rotary"
    q = from_hf_config(DATA / "qwen2_config.json")
    # Qwen2-0.5B: biases on Q, K, V only (896 + 2·128 per layer); tied embeddings.
    assert q.qkv_bias and not q.bias and q.tied_embeddings
    assert q.attention_params() == 2 * 896 * 896 + 2 * 896 * 128 + 896 + 2 * 128
    lm = from_hf_config(DATA / "llama_config.json")
    assert replace(lm, name="llama2-7b") == PRESETS["llama2-7b"]


def test_hf_config_missing_file() -> None:
    with pytest.raises(ConfigError) as ei:
        from_hf_config(DATA / "does_not_exist.json")
    assert ei.value.key == "model.hf_config"
    assert "does_not_exist.json" in str(ei.value)


def test_hf_config_missing_field_names_the_key() -> None:
    with pytest.raises(ConfigError) as ei:
        from_hf_config(DATA / "llama_missing_hidden.json")
    assert ei.value.key == "hidden_size"
    assert "hidden_size" in str(ei.value)
    assert "llama_missing_hidden.json" in str(ei.value)


def test_hf_config_invalid_json() -> None:
    with pytest.raises(ConfigError) as ei:
        from_hf_config(DATA / "broken_config.json")
    assert ei.value.key == "model.hf_config"
    assert "broken_config.json" in str(ei.value)


def test_hf_config_unsupported_type(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "t5", "d_model": 512, "num_layers": 6}))
    with pytest.raises(ConfigError) as ei:
        from_hf_config(p)
    assert ei.value.key == "model_type"
    assert "t5" in str(ei.value)


def test_hf_config_bert_is_rejected() -> None:
    with pytest.raises(ConfigError) as ei:
        from_hf_config(DATA / "bert_config.json")
    assert ei.value.key == "model_type"


@pytest.mark.parametrize(
    ("content", "key"),
    [
        pytest.param(
            {"model_type": "llama", "hidden_size": "4096x", "num_attention_heads": 32,
             "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000},
            "hidden_size",
            id="string-int",
        ),
        pytest.param(
            {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": None,
             "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000},
            "num_attention_heads",
            id="null-int",
        ),
        pytest.param(
            [1, 2],
            "model.hf_config",
            id="list-root",
        ),
    ],
)  # fmt: skip
def test_hf_config_bad_values_are_config_errors(tmp_path: Path, content: object, key: str) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as ei:
        from_hf_config(p)
    assert key in str(ei.value)


def test_hf_config_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_bytes(b"\xff\xfe\x00{}")
    with pytest.raises(ConfigError) as ei:
        from_hf_config(p)
    assert ei.value.key == "model.hf_config"


# ---------------------------------------------------------------------------------------------
# Limits: config.json is read like a YAML file (a regular file of at most 10 MiB) and every
# shape has a range (spec.limits.INT_RANGES), whatever it comes from.


GPT2_CFG = {"model_type": "gpt2", "n_embd": 768, "n_head": 12, "n_layer": 12, "vocab_size": 50257}


def _cfg(tmp_path: Path, text: str) -> ConfigError:
    p = tmp_path / "config.json"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        from_hf_config(p, "scn.yaml")
    assert "\n" not in str(ei.value) and len(str(ei.value)) < 400
    return ei.value


def test_hf_config_deep_nesting(tmp_path: Path) -> None:
    """json.loads raised RecursionError on 100,000 nested lists."""
    err = _cfg(tmp_path, "[" * 100_000 + "]" * 100_000)
    assert err.key == "model.hf_config" and "nested too deeply" in str(err)


def test_hf_config_integer_of_5000_digits(tmp_path: Path) -> None:
    err = _cfg(tmp_path, json.dumps(GPT2_CFG)[:-1] + ', "n_positions": ' + "9" * 5000 + "}")
    assert err.key == "model.hf_config"


@pytest.mark.parametrize("field", ["n_layer", "n_embd", "vocab_size", "n_positions"])
def test_hf_config_huge_shape_is_refused(tmp_path: Path, field: str) -> None:
    err = _cfg(tmp_path, json.dumps({**GPT2_CFG, field: 10**400}))
    assert err.key == field and "must be <=" in str(err)  # the config.json field, named


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400"])
def test_hf_config_non_finite_dropout(tmp_path: Path, value: str) -> None:
    err = _cfg(tmp_path, json.dumps(GPT2_CFG)[:-1] + f', "resid_pdrop": {value}}}')
    assert err.key == "resid_pdrop"


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
def test_hf_config_fifo_is_not_read(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as ei:
        from_hf_config(fifo, "scn.yaml")
    assert ei.value.key == "model.hf_config" and "not a regular file" in str(ei.value)


@pytest.mark.parametrize(
    "field", sorted(k.split(".")[1] for k in INT_RANGES if k.startswith("model."))
)
def test_every_shape_has_a_range(field: str) -> None:
    hi = INT_RANGES[f"model.{field}"][1]
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["gpt2"], **{field: hi + 1}), "f.yaml")
    assert ei.value.key == f"model.{field}"


def test_parameter_count_is_bounded() -> None:
    big = replace(PRESETS["gpt2"], layers=1024, hidden=2**20, heads=16, kv_heads=16,
                  ffn_hidden=2**22)  # fmt: skip
    assert big.total_params() > MAX_PARAMS
    with pytest.raises(ConfigError) as ei:
        validate_model(big, "f.yaml")
    assert ei.value.key == "model" and "parameters" in str(ei.value)


def test_largest_presets_are_far_inside_the_limits() -> None:
    for spec in PRESETS.values():
        assert validate_model(spec) is spec
        assert spec.total_params() < MAX_PARAMS / 1000


def test_find_preset_strict_and_loose() -> None:
    """One lookup of preset names: strict (case and aliases: the scenario's model.preset, the
    DeepSpeed importer's --model) and loose (letters and digits: a record's model name)."""
    from simtrain.spec.model import find_preset

    assert find_preset("GPT2-small") == "gpt2" and find_preset("gpt3") == "gpt3-175b"
    assert find_preset("GPT-3 175B") is None  # strict: not a name (no normalising)
    assert find_preset("GPT-3 175B", loose=True) == "gpt3-175b"
    assert find_preset("Nemotron-340B", loose=True) == "nemotron-4-340b"
    assert find_preset("OPT 1.3B", loose=True) == "opt-1.3b"
    assert find_preset("LLaMA-65B", loose=True) is None and find_preset("", loose=True) is None
