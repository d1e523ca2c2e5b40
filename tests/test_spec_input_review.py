"""Review of simtrain's input readers (scenario, hardware, config.json, --set): duplicate YAML
keys, required peak rates, config.json head_dim and field names, hf_config paths, prompt
tuning's positions. Each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simtrain.costs.compute import block_flops
from simtrain.errors import ConfigError
from simtrain.spec.hardware import HARDWARE_DIR, available_profiles, load_hardware
from simtrain.spec.model import from_hf_config
from simtrain.spec.scenario import (
    TrainingSpec,
    apply_override,
    check_overrides_once,
    load_scenario,
)
from simtrain.spec.yamlfile import load_yaml, parse_yaml

REPO = Path(__file__).resolve().parents[1]
SCENARIO = """name: s
model: {preset: gpt2}
hardware: h100_sxm5_80gb
training: {seq_len: 1024, global_batch: 64, micro_batch: 8}
parallelism: {dp: 8}
"""
LLAMA = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
         "num_hidden_layers": 2, "intermediate_size": 11008, "vocab_size": 32000}  # fmt: skip
GPT2 = {"model_type": "gpt2", "n_embd": 768, "n_head": 12, "n_layer": 2, "vocab_size": 50257}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _config_error(fn, *args) -> ConfigError:  # noqa: ANN001
    with pytest.raises(ConfigError) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return info.value


# --------------------------------------------------------------------------- 1. duplicate keys


def test_section_given_twice_is_refused(tmp_path: Path) -> None:
    """`training:` twice kept the second section silently."""
    p = _write(tmp_path / "dup.yaml", SCENARIO + "training: {seq_len: 512, global_batch: 8}\n")
    err = _config_error(load_scenario, p)
    assert err.file == str(p) and err.key == "training"
    assert "lines 4 and 6" in str(err) and "twice" in str(err)


def test_key_given_twice_in_a_flow_mapping_names_its_path(tmp_path: Path) -> None:
    text = SCENARIO.replace("{seq_len: 1024,", "{seq_len: 1024, seq_len: 2048,")
    err = _config_error(load_scenario, _write(tmp_path / "dup2.yaml", text))
    assert err.key == "training.seq_len" and "on line 4" in str(err)


def test_quoted_and_plain_key_are_the_same_key() -> None:
    err = _config_error(parse_yaml, 'a:\n  b: 1\n  "b": 2\n', "f.yaml")
    assert err.key == "a.b" and "lines 2 and 3" in str(err)


def test_duplicate_inside_a_list_entry_names_its_index() -> None:
    err = _config_error(parse_yaml, "runs:\n  - {x: 1}\n  - {x: 1, y: 2, x: 3}\n", "r.yaml")
    assert err.key == "runs[1].x"


def test_merge_keys_may_be_overridden() -> None:
    """`<<: *base` then a key of base is YAML's way to override it: not a duplicate."""
    data = parse_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n", "m.yaml")
    assert data["other"] == {"x": 3, "y": 2}


def test_hardware_key_given_twice_is_refused(tmp_path: Path) -> None:
    text = (HARDWARE_DIR / "h100_sxm5_80gb.yaml").read_text() + "memory_gib: 8000\n"
    p = _write(tmp_path / "hw.yaml", text)
    err = _config_error(load_hardware, str(p))
    assert err.file == str(p) and err.key == "memory_gib" and "twice" in str(err)


def test_every_shipped_yaml_file_has_each_key_once() -> None:
    files = [f for d in ("hardware", "scenarios", "measured", "plans", "runtimes")
             for f in sorted((REPO / d).rglob("*.yaml"))]  # fmt: skip
    assert len(files) > 27
    for f in files:
        load_yaml(f)


def test_duplicate_key_in_a_set_value_names_the_full_path() -> None:
    d: dict = {}
    err = _config_error(apply_override, d, "training.peft={method: lora, rank: 4, rank: 8}")
    assert err.file == "--set" and err.key == "training.peft.rank"


def test_invalid_set_value_names_the_key() -> None:
    """`--set 'training.seq_len=[1'` said "--set: line 2: invalid YAML"."""
    err = _config_error(apply_override, {}, "training.seq_len=[1")
    assert err.file == "--set" and err.key == "training.seq_len"
    assert "invalid YAML" in str(err) and "line 2" not in str(err)


def test_repeated_set_of_one_key_is_refused() -> None:
    """`--set training.micro_batch=2 --set training.micro_batch=4` kept 4 silently."""
    ov = ("training.micro_batch=2", "training.micro_batch=4")
    err = _config_error(check_overrides_once, ov)
    assert err.key == "--set" and "training.micro_batch twice" in str(err)
    assert "silently" in str(err)
    # ` training.micro_batch ` with spaces and a doubled dot is the same key
    _config_error(check_overrides_once, ("training.micro_batch=2", " training..micro_batch =4"))


def test_set_of_a_mapping_after_a_key_inside_it_is_refused() -> None:
    ov = ("training.peft.rank=4", "training.peft={method: lora}")
    err = _config_error(check_overrides_once, ov)
    assert "training.peft" in str(err) and "lost" in str(err)


def test_set_of_a_key_inside_a_mapping_set_before_is_kept() -> None:
    """A mapping set first, then a key inside it, refines it: both take effect."""
    refine = ("training.peft={method: lora}", "training.peft.rank=4")
    check_overrides_once(refine)
    check_overrides_once(("training.micro_batch=2", "training.global_batch=16"))
    check_overrides_once(())
    sc = load_scenario("scenarios/colab_t4_qlora_7b.yaml", list(refine))
    assert (sc.training.peft.method, sc.training.peft.rank) == ("lora", 4)


# --------------------------------------------------------------------------- 2. peak rates


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_missing_half_precision_peak_is_refused(tmp_path: Path, dtype: str) -> None:
    """The H100 profile without its bf16 line ran bf16 at the fp32 rate (33.6 -> 254.9 ms)."""
    text = (HARDWARE_DIR / "h100_sxm5_80gb.yaml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith(f"  {dtype}:")]
    p = _write(tmp_path / "nohalf.yaml", "\n".join(lines) + "\n")
    err = _config_error(load_hardware, str(p))
    assert err.file == str(p) and err.key == f"peak_tflops.{dtype}"
    assert "write 0 if the GPU has no such rate" in str(err)


def test_missing_fp32_peak_is_refused(tmp_path: Path) -> None:
    text = (HARDWARE_DIR / "h100_sxm5_80gb.yaml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("  fp32:")]
    err = _config_error(load_hardware, str(_write(tmp_path / "n.yaml", "\n".join(lines))))
    assert err.key == "peak_tflops.fp32"


def test_zero_peak_still_means_no_such_rate(tmp_path: Path) -> None:
    text = (HARDWARE_DIR / "h100_sxm5_80gb.yaml").read_text()
    lines = [("  bf16: 0" if ln.startswith("  bf16:") else ln) for ln in text.splitlines()]
    hw = load_hardware(str(_write(tmp_path / "zero.yaml", "\n".join(lines))))
    assert hw.peak("bf16") == 0 and hw.compute_peak("bf16") == hw.peak("fp32")


def test_every_shipped_profile_states_its_peaks() -> None:
    """Each shipped file writes its fp32, fp16 and bf16 peaks itself (0 where the GPU has no
    such rate), read from the YAML, not from the loader that now requires them."""
    for name in available_profiles():
        doc = load_yaml(HARDWARE_DIR / f"{name}.yaml")
        assert {"fp32", "fp16", "bf16"} <= set(doc["peak_tflops"]), name
        assert doc["peak_tflops"]["fp32"] > 0, name


# --------------------------------------------------------------------------- 3. head_dim


def _cfg(tmp_path: Path, cfg: dict, name: str = "config.json") -> Path:
    return _write(tmp_path / name, json.dumps(cfg))


NEMO = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 5120,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "intermediate_size": 14336, "num_hidden_layers": 40, "vocab_size": 131072,
        "max_position_embeddings": 1024000, "tie_word_embeddings": False,
        "rope_theta": 1000000.0, "sliding_window": None}  # fmt: skip


def test_mistral_nemo_head_dim_is_counted(tmp_path: Path) -> None:
    """head_dim 128 (not 5120 / 32 = 160): Mistral-Nemo-Base-2407 has 12,247,782,400
    parameters (reported 12,772,070,400 before)."""
    m = from_hf_config(_cfg(tmp_path, NEMO))
    assert m.head_dim == 128 and m.q_dim == 4096 and m.kv_dim == 1024
    assert m.total_params() == 12_247_782_400
    f = block_flops(m, TrainingSpec(seq_len=1024, micro_batch=1))
    h = 5120
    assert f.projections == 2 * 1024 * (h * (4096 + 2 * 1024) + 4096 * h + 3 * h * 14336)
    assert f.attention_core == 4 * 1024 * 1024 * 4096


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mixtral"])
def test_head_dim_is_read_for_llama_style_kinds(tmp_path: Path, kind: str) -> None:
    cfg = {**LLAMA, "model_type": kind, "head_dim": 64}
    assert from_hf_config(_cfg(tmp_path, cfg)).q_dim == 32 * 64


def test_head_dim_equal_to_hidden_over_heads_changes_nothing(tmp_path: Path) -> None:
    from dataclasses import replace

    plain = from_hf_config(_cfg(tmp_path, LLAMA, "a.json"))
    same = from_hf_config(_cfg(tmp_path, {**LLAMA, "head_dim": 128}, "b.json"))
    # (each is named by its file since 2026-12-07: a.json "a", b.json "b")
    assert (plain.name, same.name) == ("a", "b")
    assert replace(same, name=plain.name) == plain and same.head_size == 0


def test_head_dim_zero_is_refused(tmp_path: Path) -> None:
    err = _config_error(from_hf_config, _cfg(tmp_path, {**LLAMA, "head_dim": 0}))
    assert err.key == "head_dim"


# --------------------------------------------------------------------------- 4. hf_config paths


def test_relative_hf_config_is_found_next_to_the_scenario_first(tmp_path: Path,
                                                               monkeypatch) -> None:  # noqa: ANN001  # fmt: skip
    """The same scenario gave a different model from a folder with its own config.json."""
    scen = _write(tmp_path / "scen" / "s.yaml", "model: {hf_config: config.json}\n"
                  "hardware: h100_sxm5_80gb\ntraining: {seq_len: 512, global_batch: 1}\n")  # fmt: skip
    _cfg(tmp_path / "scen", LLAMA)
    _cfg(tmp_path / "cwd", {**GPT2, "n_positions": 1024})
    monkeypatch.chdir(tmp_path / "scen")
    here = load_scenario(scen).model
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_scenario(scen).model == here and here.positions == "rotary"


def test_relative_hf_config_falls_back_to_the_working_directory(tmp_path: Path,
                                                                monkeypatch) -> None:  # noqa: ANN001  # fmt: skip
    scen = _write(tmp_path / "scen" / "s.yaml", "model: {hf_config: config.json}\n"
                  "hardware: h100_sxm5_80gb\ntraining: {seq_len: 512, global_batch: 1}\n")  # fmt: skip
    _cfg(tmp_path / "cwd", LLAMA)
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_scenario(scen).model.positions == "rotary"


# --------------------------------------------------------------------------- 5. prompt tuning


def _prompt_scenario(tmp_path: Path, seq_len: int) -> Path:
    return _write(tmp_path / "p.yaml", "model: {preset: gpt2}\nhardware: h100_sxm5_80gb\n"
                  f"training: {{seq_len: {seq_len}, global_batch: 8, micro_batch: 1,\n"
                  "  peft: {method: prompt, prompt_length: 32}}\n")  # fmt: skip


def test_prompt_tuning_cannot_run_past_learned_positions(tmp_path: Path) -> None:
    """GPT-2 at seq_len 1024 with 32 virtual tokens needs 1,056 of its 1,024 positions."""
    err = _config_error(load_scenario, _prompt_scenario(tmp_path, 1024))
    assert err.key == "training.peft.prompt_length" and "1056" in str(err)
    assert "max_positions = 1024" in str(err)
    assert load_scenario(_prompt_scenario(tmp_path, 992)).training.seq_len_effective == 1024


# --------------------------------------------------------------------------- 6. config.json names


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({**LLAMA, "num_key_value_heads": 5}, "num_key_value_heads"),
        ({**LLAMA, "num_key_value_heads": 0}, "num_key_value_heads"),  # was taken as heads
        ({**LLAMA, "num_attention_heads": 0}, "num_attention_heads"),
        ({**LLAMA, "num_attention_heads": 31}, "num_attention_heads"),
        ({**LLAMA, "num_hidden_layers": 2000}, "num_hidden_layers"),
        ({**LLAMA, "attention_dropout": 1.5}, "attention_dropout"),
        ({**LLAMA, "max_position_embeddings": None}, "max_position_embeddings"),
        ({**LLAMA, "tie_word_embeddings": "false"}, "tie_word_embeddings"),  # was True
        ({**GPT2, "n_positions": None}, "n_positions"),
        ({**GPT2, "resid_pdrop": 1.5}, "resid_pdrop"),
        ({**GPT2, "n_layer": 2000}, "n_layer"),
        ({**GPT2, "n_head": 7}, "n_head"),
        ({**LLAMA, "model_type": "mixtral", "num_local_experts": 2, "num_experts_per_tok": 4},
         "num_experts_per_tok"),
    ],
)  # fmt: skip
def test_config_json_errors_name_its_fields(tmp_path: Path, cfg: dict, field: str) -> None:
    p = _cfg(tmp_path, cfg)
    err = _config_error(from_hf_config, p)
    assert err.file == str(p) and err.key == field
    assert "model." not in err.key and "<field>" not in str(err)


def test_divisibility_message_names_config_fields(tmp_path: Path) -> None:
    err = _config_error(from_hf_config, _cfg(tmp_path, {**LLAMA, "num_key_value_heads": 5}))
    assert "num_attention_heads=32" in str(err)


def test_scenario_shape_keys_still_name_model_keys(tmp_path: Path) -> None:
    """A scenario's own model keys (on top of a config.json) keep their model.* names."""
    _cfg(tmp_path, LLAMA)
    p = _write(tmp_path / "s.yaml", "model: {hf_config: config.json, kv_heads: 5}\n"
               "hardware: h100_sxm5_80gb\ntraining: {seq_len: 512, global_batch: 1}\n")  # fmt: skip
    err = _config_error(load_scenario, p)
    assert err.file == str(p) and err.key == "model.kv_heads"


@pytest.mark.parametrize("path", ["training..micro_batch", ".training.micro_batch",
                                  "training.micro_batch."])  # fmt: skip
def test_an_empty_key_in_a_set_path_is_an_error(path: str) -> None:
    """An empty key (two dots, a dot at an end) was dropped, the path read as
    training.micro_batch (a fuzz campaign): now an error naming the path as given."""
    d: dict = {"training": {"micro_batch": 1}}
    err = _config_error(apply_override, d, f"{path}=2")
    assert err.key == path and "empty key" in err.message
    assert d == {"training": {"micro_batch": 1}}  # nothing set


@pytest.mark.parametrize("raw", ["null", "~", "Null"])
def test_set_null_on_a_mapping_the_file_sets_is_an_error(raw: str) -> None:
    """``--set training=null`` dropped the file's whole training block for the defaults (the
    scenario ran with another batch, precision and optimizer; a fuzz campaign)."""
    d: dict = {"training": {"micro_batch": 1, "precision": "fp16"}}
    err = _config_error(apply_override, d, f"training={raw}")
    assert err.key == "training" and "micro_batch, precision" in err.message
    assert d == {"training": {"micro_batch": 1, "precision": "fp16"}}  # nothing set
    # a leaf, or a mapping the file does not set, may still be null
    apply_override(d, "training.micro_batch=null")
    apply_override(d, "cluster=null")
    assert d == {"training": {"micro_batch": None, "precision": "fp16"}, "cluster": None}


@pytest.mark.parametrize("assignment", ["model.capacity_factor=-1", "model.capacity_factor=1.5",
                                        "model.moe_load_imbalance=0", "model.router_bias=true",
                                        "model.router_score_bias=true",
                                        "model.shared_expert_gate=true"])  # fmt: skip
def test_routing_keys_on_a_dense_model_are_an_error(tmp_path: Path, assignment: str) -> None:
    """A dense model (num_experts 0) took capacity_factor -1 and moe_load_imbalance 0 without a
    word (an MoE model refuses them); now each MoE-only key names num_experts."""
    p = _write(tmp_path / "s.yaml", SCENARIO)
    err = _config_error(load_scenario, p, [assignment])
    assert err.file == "--set" and err.key == assignment.split("=")[0]
    assert "num_experts > 0" in err.message
    load_scenario(p, ["model.capacity_factor=0", "model.moe_load_imbalance=1"])  # the defaults


MIXTRAL = {**LLAMA, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}
QWEN3_MOE = {**LLAMA, "model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8,
             "moe_intermediate_size": 768}  # fmt: skip


@pytest.mark.parametrize("field", ["num_local_experts", "num_experts", "n_routed_experts",
                                   "moe_intermediate_size", "kv_lora_rank"])  # fmt: skip
def test_a_config_without_model_type_but_with_experts_is_an_error(tmp_path: Path,
                                                                  field: str) -> None:  # fmt: skip
    """Mixtral's config.json without model_type was read as a dense Llama: 7.2B parameters
    instead of 46.7B, the experts dropped without a word (a fuzz campaign)."""
    untyped = {k: v for k, v in LLAMA.items() if k != "model_type"}
    err = _config_error(from_hf_config, _cfg(tmp_path, {**untyped, field: 8}))
    assert err.key == "model_type" and field in err.message and "mixtral" in str(err)
    assert from_hf_config(_cfg(tmp_path, untyped)).num_experts == 0  # a plain one still reads


@pytest.mark.parametrize(("base", "field", "value"), [
    (QWEN3_MOE, "moe_intermediate_size", 0), (QWEN3_MOE, "num_experts", 0),
    (QWEN3_MOE, "num_experts_per_tok", -1), (MIXTRAL, "num_local_experts", 0),
    (MIXTRAL, "num_experts_per_tok", True),
])  # fmt: skip
def test_zero_experts_or_expert_width_is_an_error(tmp_path: Path, base: dict, field: str,
                                                  value: object) -> None:  # fmt: skip
    """moe_intermediate_size 0 made Qwen3-30B-A3B's 128 experts intermediate_size wide (233B
    parameters), and num_experts 0 a dense model (a fuzz campaign)."""
    err = _config_error(from_hf_config, _cfg(tmp_path, {**base, field: value}))
    assert err.key == field
    assert from_hf_config(_cfg(tmp_path, base)).num_experts > 0


@pytest.mark.parametrize("value", [1.5, True])
def test_deepseek_moe_layer_freq_must_be_an_integer(tmp_path: Path, value: object) -> None:
    cfg = {**LLAMA, "model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
           "moe_intermediate_size": 256, "kv_lora_rank": 64, "qk_nope_head_dim": 32,
           "qk_rope_head_dim": 16, "v_head_dim": 32, "moe_layer_freq": value}  # fmt: skip
    err = _config_error(from_hf_config, _cfg(tmp_path, cfg))
    assert err.key == "moe_layer_freq"
    cfg["moe_layer_freq"] = 1
    assert from_hf_config(_cfg(tmp_path, cfg)).num_experts == 8


@pytest.mark.parametrize(("assignment", "says"), [("training={}", "training mapping"),
                                                  ("runtime=null", "megatron_core"),
                                                  ("runtime={}", "megatron_core")])  # fmt: skip
def test_an_empty_mapping_or_a_null_runtime_is_refused_too(assignment: str, says: str) -> None:
    """--set training={} dropped the training block as null did (a review's run, 2026-12-07:
    54.47 s -> 1.40 s a step; the input is refused now, so not re-measurable), and
    runtime=null the runtime the file names for the default profile (the review)."""
    err = _config_error(load_scenario, "scenarios/llama3_8b_cp.yaml", [assignment])
    assert err.file == "--set" and says in err.message
    assert load_scenario("scenarios/llama3_8b_cp.yaml", ["runtime=megatron_core"])
