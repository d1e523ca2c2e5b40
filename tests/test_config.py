"""Scenario loading: shipped scenarios load; every error names the file, the key path and the
value; ``--set`` overrides; YAML 1.2 floats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from simtrain.errors import ConfigError
from simtrain.schedules import SCHEDULES
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.scenario import OPTIMIZERS, apply_override, load_scenario
from simtrain.spec.yamlfile import parse_yaml

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
DATA = Path(__file__).parent / "data"

BASE: dict[str, Any] = {
    "name": "t",
    "model": {"preset": "gpt2"},
    "hardware": "a100_sxm4_80gb",
    "training": {
        "seq_len": 128,
        "global_batch": 8,
        "micro_batch": 2,
        "precision": "bf16",
        "optimizer": "adamw",
        "peft": {"method": "none"},
    },  # fmt: skip
    "parallelism": {"dp": 1, "tp": 1, "pp": 1},
}


def _write(tmp_path: Path, data: dict[str, Any], name: str = "scn.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _with(path: str, value: Any) -> dict[str, Any]:
    """A deep copy of BASE with ``path`` (dotted) set to ``value``."""
    import copy

    d = copy.deepcopy(BASE)
    node = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return d


def _error(tmp_path: Path, data: dict[str, Any], name: str = "scn.yaml") -> ConfigError:
    p = _write(tmp_path, data, name)
    with pytest.raises(ConfigError) as ei:
        load_scenario(p)
    return ei.value


# ---------------------------------------------------------------------------------------------
# Shipped scenarios


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
    assert sc.parallelism.gpus == sc.cluster.gpus
    assert sc.source == str(path)


def test_shipped_scenarios_exist() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {"seed_1p5b_fp32", "seed_1p5b_amp_ckpt", "gpipe_8gpu"} <= names


def test_seed_scenarios_content() -> None:
    fp32 = load_scenario(ROOT / "scenarios/seed_1p5b_fp32.yaml")
    assert fp32.model.total_params() == 1_557_611_200
    assert fp32.training.precision == "fp32" and fp32.training.optimizer == "adam"
    amp = load_scenario(ROOT / "scenarios/seed_1p5b_amp_ckpt.yaml")
    assert amp.training.recompute == "full"
    g = load_scenario(ROOT / "scenarios/gpipe_8gpu.yaml")
    # m = B / (b·d) = 64 / (8·1) = 8 micro-batches.
    assert g.num_microbatches == 8 and g.parallelism.pp == 8
    assert g.tokens_per_step == 64 * 1024


def test_base_scenario_is_valid(tmp_path: Path) -> None:
    sc = load_scenario(_write(tmp_path, BASE))
    assert sc.training.micro_batch == 2
    assert sc.num_microbatches == 4
    # default cluster: exactly the GPUs the layout needs
    assert sc.cluster.gpus == 1


def test_hf_config_relative_to_scenario() -> None:
    sc = load_scenario(DATA / "qwen2_scenario.yaml")
    assert sc.model.total_params() == 494_032_768  # HF Qwen/Qwen2-0.5B


# ---------------------------------------------------------------------------------------------
# Errors: unknown keys, types, enum values


@pytest.mark.parametrize(
    "key",
    ["bogus", "model.bogus", "training.bogus", "training.peft.bogus", "parallelism.bogus",
     "training.offload.bogus", "cluster.bogus"],
)  # fmt: skip
def test_unknown_key_at_each_level(tmp_path: Path, key: str) -> None:
    err = _error(tmp_path, _with(key, 1), "unknown_key.yaml")
    msg = str(err)
    assert "unknown_key.yaml" in msg
    assert key in msg
    assert err.key == key
    assert "unknown key" in msg


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("training.micro_batch", "two", "integer"),
        ("training.micro_batch", 2.5, "integer"),
        ("training.micro_batch", True, "integer"),
        ("training.seq_len", [1024], "integer"),
        ("training.precision", 16, "string"),
        ("parallelism.sequence_parallel", "yes", "true or false"),
        ("model.dropout", "high", "number"),
        ("model.flash_attention", 1, "true or false"),
        ("training.peft.rank", "eight", "integer"),
        ("parallelism.dp", {"a": 1}, "integer"),
    ],
)
def test_wrong_type(tmp_path: Path, key: str, value: Any, kind: str) -> None:
    err = _error(tmp_path, _with(key, value), "wrong_type.yaml")
    msg = str(err)
    assert "wrong_type.yaml" in msg
    assert err.key == key
    assert key in msg
    assert repr(value) in msg
    assert kind in msg


def test_wrong_type_section_not_mapping(tmp_path: Path) -> None:
    err = _error(tmp_path, _with("training.peft", "lora"))
    assert err.key == "training.peft"
    assert "mapping" in str(err) and "'lora'" in str(err)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("training.precision", "fp8", PRECISIONS),
        ("training.optimizer", "lion", OPTIMIZERS),
        ("training.recompute", "some", ("none", "selective", "full")),
        ("training.cross_entropy", "liger", ("standard", "fused")),
        ("parallelism.schedule", "chimera", SCHEDULES),
        ("training.peft.method", "ia3", ("lora", "qlora", "prefix", "bitfit")),
        ("parallelism.zero_stage", 4, ("0", "1", "2", "3")),
        ("parallelism.dp_mode", "fsdp", ("ddp", "naive")),
        ("model.mlp", "relu", ("gelu", "swiglu")),
        ("model.norm", "batchnorm", ("layernorm", "rmsnorm")),
    ],
)
def test_unknown_enum_lists_allowed(tmp_path: Path, key: str, value: Any, allowed: tuple) -> None:
    err = _error(tmp_path, _with(key, value), "enum.yaml")
    msg = str(err)
    assert "enum.yaml" in msg
    assert err.key == key and key in msg
    assert repr(value) in msg
    for a in allowed:
        assert str(a) in msg.split("allowed:")[1]


def test_unknown_lora_target(tmp_path: Path) -> None:
    err = _error(tmp_path, _with("training.peft", {"method": "lora", "target_modules": ["q", "x"]}))
    assert err.key == "training.peft.target_modules"
    assert "'x'" in str(err) and "gate" in str(err)


def test_unknown_preset(tmp_path: Path) -> None:
    err = _error(tmp_path, _with("model.preset", "gpt-17"), "preset.yaml")
    assert err.key == "model.preset"
    assert "preset.yaml" in str(err) and "gpt-17" in str(err) and "gpt2-xl" in str(err)


@pytest.mark.parametrize(
    ("key", "value"),
    [("training.global_batch", 0), ("training.micro_batch", -1), ("parallelism.tp", 0)],
)
def test_non_positive(tmp_path: Path, key: str, value: int) -> None:
    err = _error(tmp_path, _with(key, value))
    assert err.key == key and f"(got {value})" in str(err)


def test_missing_required(tmp_path: Path) -> None:
    d = dict(BASE)
    del d["model"]
    err = _error(tmp_path, d)
    assert err.key == "model"
    d = dict(BASE)
    del d["hardware"]
    assert _error(tmp_path, d).key == "hardware"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_scenario(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(ei.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("model: {preset: gpt2\nhardware: [\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(p)
    assert "bad.yaml" in str(ei.value) and "\n" not in str(ei.value)


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "binary.yaml"
    p.write_bytes(b"\xff\xfe\x00model: 1\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(p)
    assert "binary.yaml" in str(ei.value)


def test_root_not_mapping(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(p)
    assert "list.yaml" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# Layouts that do not divide


def test_layers_vs_pp(tmp_path: Path) -> None:
    # gpt2: 12 layers; pp = 5 does not divide them.
    d = _with("parallelism.pp", 5)
    err = _error(tmp_path, d, "layers_pp.yaml")
    msg = str(err)
    assert "layers_pp.yaml" in msg and "parallelism.pp" in msg and "(got 5)" in msg
    assert "12" in msg  # the number of layers


def test_heads_vs_tp(tmp_path: Path) -> None:
    # gpt2: 12 heads; tp = 8 does not divide them.
    err = _error(tmp_path, _with("parallelism.tp", 8), "heads_tp.yaml")
    msg = str(err)
    assert "heads_tp.yaml" in msg and "parallelism.tp" in msg and "(got 8)" in msg
    assert "12" in msg


def test_kv_heads_vs_tp(tmp_path: Path) -> None:
    d = _with("model", {"layers": 2, "hidden": 256, "heads": 8, "kv_heads": 2, "vocab": 1000})
    d["parallelism"]["tp"] = 4
    err = _error(tmp_path, d, "kv_tp.yaml")
    assert err.key == "parallelism.tp" and "(got 4)" in str(err)


def test_global_batch_vs_micro_batch_dp(tmp_path: Path) -> None:
    # micro_batch 2 x dp 2 = 4 does not divide global_batch 10.
    d = _with("training.global_batch", 10)
    d["parallelism"]["dp"] = 2
    err = _error(tmp_path, d, "gb.yaml")
    msg = str(err)
    assert "gb.yaml" in msg and "training.global_batch" in msg and "(got 10)" in msg
    assert "4" in msg


def test_gpu_count_vs_layout(tmp_path: Path) -> None:
    d = _with("cluster", {"nodes": 1, "gpus_per_node": 8})
    d["parallelism"]["dp"] = 2
    err = _error(tmp_path, d, "gpus.yaml")
    msg = str(err)
    assert "gpus.yaml" in msg and err.key == "cluster"
    assert "8 GPUs" in msg and "= 2" in msg


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("parallelism.sequence_parallel", True, "parallelism.sequence_parallel"),
        ("parallelism.virtual_stages", 2, "parallelism.virtual_stages"),
        ("training.seq_len", 2048, "training.seq_len"),  # gpt2 has 1024 learned positions
    ],
)
def test_other_layout_errors(tmp_path: Path, path: str, value: Any, key: str) -> None:
    err = _error(tmp_path, _with(path, value))
    assert err.key == key


def test_zero_needs_ddp(tmp_path: Path) -> None:
    d = _with("parallelism", {"dp": 2, "zero_stage": 1, "dp_mode": "naive"})
    assert _error(tmp_path, d).key == "parallelism.zero_stage"


def test_qlora_needs_16_bit(tmp_path: Path) -> None:
    d = _with("training.precision", "fp32")
    d["training"]["peft"] = {"method": "qlora"}
    assert _error(tmp_path, d).key == "training.precision"


# ---------------------------------------------------------------------------------------------
# --set overrides


def test_apply_override_nested_and_typed() -> None:
    d: dict[str, Any] = {"training": {"micro_batch": 1}}
    apply_override(d, "training.micro_batch=2")
    apply_override(d, "training.peft.method=lora")  # creates the intermediate mapping
    apply_override(d, "training.peft.target_modules=[q, k, v]")
    apply_override(d, "parallelism.sequence_parallel=true")
    apply_override(d, "model.dropout=0.1")
    apply_override(d, "training.lr=3e-4")
    apply_override(d, "hardware=h100_sxm5_80gb")
    apply_override(d, "name=a=b")  # only the first '=' splits
    assert d["training"]["micro_batch"] == 2 and type(d["training"]["micro_batch"]) is int
    assert d["training"]["peft"] == {"method": "lora", "target_modules": ["q", "k", "v"]}
    assert d["parallelism"]["sequence_parallel"] is True
    assert d["model"]["dropout"] == 0.1
    assert d["training"]["lr"] == 3e-4 and isinstance(d["training"]["lr"], float)
    assert d["hardware"] == "h100_sxm5_80gb"
    assert d["name"] == "a=b"


@pytest.mark.parametrize(
    "bad",
    ["training.micro_batch", "=3", "training.micro_batch=[1", "training.micro_batch.x=1"],
)
def test_apply_override_invalid(bad: str) -> None:
    d: dict[str, Any] = {"training": {"micro_batch": 1}}
    with pytest.raises(ConfigError) as ei:
        apply_override(d, bad)
    assert "--set" in str(ei.value)


def test_load_scenario_with_overrides(tmp_path: Path) -> None:
    p = _write(tmp_path, BASE)
    sc = load_scenario(p, ["training.micro_batch=4", "training.peft.method=lora",
                           "training.peft.rank=16", "model.preset=gpt2-medium",
                           "parallelism.zero_stage=0"])  # fmt: skip
    assert sc.training.micro_batch == 4 and sc.num_microbatches == 2
    assert sc.training.peft.method == "lora" and sc.training.peft.rank == 16
    assert sc.model.total_params() == 354_823_168
    # the file on disk is not changed
    assert load_scenario(p).training.micro_batch == 2


def test_override_error_names_key(tmp_path: Path) -> None:
    p = _write(tmp_path, BASE, "ovr.yaml")
    with pytest.raises(ConfigError) as ei:
        load_scenario(p, ["training.micro_batch=3"])  # 3 does not divide 8
    assert ei.value.key == "training.global_batch" and "ovr.yaml" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        load_scenario(p, ["training.bogus=1"])
    assert ei.value.key == "training.bogus"


# ---------------------------------------------------------------------------------------------
# YAML 1.2 floats


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e9", 1e9), ("300e9", 300e9), ("1.5e-3", 1.5e-3), ("-2E+4", -2e4), ("1.0e+9", 1e9),
     ("0.5", 0.5), ("7", 7)],
)  # fmt: skip
def test_yaml_floats(text: str, value: float) -> None:
    v = parse_yaml(f"x: {text}", "f.yaml")["x"]
    assert v == value
    assert isinstance(v, int if text == "7" else float)


@pytest.mark.parametrize("text", ["-.5", ".5e3"])
def test_yaml_12_leading_dot_floats(text: str) -> None:
    assert parse_yaml(f"x: {text}", "f.yaml")["x"] == float(text)


def test_yaml_float_in_scenario(tmp_path: Path) -> None:
    p = tmp_path / "e.yaml"
    p.write_text(
        "model: {preset: gpt2, dropout: 1e-1}\nhardware: a100_sxm4_80gb\n"
        "training: {global_batch: 1.6e1, micro_batch: 2, seq_len: 1.28e2}\n"
    )
    sc = load_scenario(p)
    assert sc.model.dropout == 0.1
    assert sc.training.global_batch == 16 and type(sc.training.global_batch) is int
    assert sc.training.seq_len == 128
