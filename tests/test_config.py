"""Scenario loading: shipped scenarios load; every error names the file, the key path and the
value; ``--set`` overrides; YAML 1.2 floats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from simtrain.errors import (
    MAX_ALLOWED,
    MAX_ECHO,
    MAX_MESSAGE,
    MIN_ALLOWED,
    ConfigError,
    echo,
    unknown_value,
)
from simtrain.schedules import SCHEDULES
from simtrain.spec.limits import (
    FLOAT_RANGES,
    INT_RANGES,
    MAX_GPUS,
    MAX_MICROBATCH_LAYERS,
)
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.scenario import OPTIMIZERS, apply_override, load_scenario
from simtrain.spec.yamlfile import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_yaml, parse_yaml

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
        ("model.mlp", "geglu", ("gelu", "swiglu", "relu", "relu2")),
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


def test_apply_override_on_a_named_runtime_keeps_the_name() -> None:
    """``runtime: megatron_core`` with ``--set runtime.tp_backward_overlap=false`` is
    ``runtime: {name: megatron_core, tp_backward_overlap: false}``; other strings stay leaves."""
    d: dict[str, Any] = {"runtime": "megatron_core", "hardware": "h100_sxm5_80gb"}
    apply_override(d, "runtime.tp_backward_overlap=false")
    assert d["runtime"] == {"name": "megatron_core", "tp_backward_overlap": False}
    with pytest.raises(ConfigError, match="hardware: is not a mapping"):
        apply_override(d, "hardware.memory_gib=40")


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


@pytest.mark.parametrize(("text", "value"), [("17:04", "17:04"), ("12:30.5", "12:30.5"),
                                           ("010", "010"), ("-007", "-007"), ("0x10", 16),
                                           ("0b11", 3), ("1_024", 1024), ("0", 0), ("-0", 0)])  # fmt: skip
def test_yaml_11_base_60_and_octal_are_strings(text: str, value: object) -> None:
    """YAML 1.1 read ``17:04`` as 1,024 (base 60) and ``010`` as 8 (octal): a clock time or a
    zero-padded number became another number without a word (a fuzz campaign: seq_len 17:04
    ran at 1,024 tokens). As in YAML 1.2 they are strings, refused where a number is wanted."""
    assert parse_yaml(f"x: {text}", "f.yaml")["x"] == value


@pytest.mark.parametrize("value", ["17:04", "010"])
def test_a_clock_time_or_octal_seq_len_is_refused(tmp_path: Path, value: str) -> None:
    p = tmp_path / "e.yaml"
    p.write_text("model: {preset: gpt2}\nhardware: a100_sxm4_80gb\n"
                 f"training: {{global_batch: 8, micro_batch: 1, seq_len: {value}}}\n")  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        load_scenario(p)
    assert ei.value.key == "training.seq_len" and value in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        load_scenario("scenarios/gpipe_8gpu.yaml", [f"training.seq_len={value}"])
    assert ei.value.file == "--set" and ei.value.key == "training.seq_len"


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


# ---------------------------------------------------------------------------------------------
# Limits (spec.limits, spec.yamlfile): every number has a range, floats are finite, files and
# documents are bounded; every failure is a one-line ConfigError naming the file and the key.


SCENARIO_INT_KEYS = sorted(k for k in INT_RANGES if k.split(".")[0] != "model")
MODEL_INT_KEYS = sorted(k for k in INT_RANGES if k.split(".")[0] == "model")


def _one_line(err: ConfigError) -> str:
    msg = str(err)
    assert "\n" not in msg and len(msg) < 1000, msg
    return msg


@pytest.mark.parametrize("key", SCENARIO_INT_KEYS + MODEL_INT_KEYS)
def test_every_integer_has_an_upper_bound(tmp_path: Path, key: str) -> None:
    hi = INT_RANGES[key][1]
    err = _error(tmp_path, _with(key, hi + 1))
    assert err.key == key and f"must be <= {hi:,}" in _one_line(err)


@pytest.mark.parametrize("key", SCENARIO_INT_KEYS)
def test_every_integer_has_a_lower_bound(tmp_path: Path, key: str) -> None:
    lo = INT_RANGES[key][0]
    err = _error(tmp_path, _with(key, lo - 1))
    assert err.key == key and f"(got {lo - 1})" in _one_line(err)


@pytest.mark.parametrize("key", sorted({"parallelism.zero3_max_live_params"}))
def test_zero_is_allowed_where_it_means_none(tmp_path: Path, key: str) -> None:
    assert load_scenario(_write(tmp_path, _with(key, 0)))


@pytest.mark.parametrize("value", [10**400, 1e300, -(10**30)], ids=["400-digits", "1e300", "-1e30"])
def test_huge_integers_are_refused_not_overflowed(tmp_path: Path, value: Any) -> None:
    for key in ("training.seq_len", "parallelism.pp", "model.vocab", "cluster.nodes"):
        err = _error(tmp_path, _with(key, value))
        assert err.key == key
        assert len(_one_line(err)) < 200  # a 401-digit integer is not echoed whole


@pytest.mark.parametrize("key", sorted(FLOAT_RANGES) + ["model.dropout"])
@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), 10**400],
    ids=["nan", "inf", "-inf", "400-digits"],
)  # fmt: skip
def test_floats_must_be_finite(tmp_path: Path, key: str, value: float) -> None:
    data = _with(key, value)
    if key.startswith("training.peft."):
        data["training"]["peft"]["method"] = "lora"
    err = _error(tmp_path, data)
    assert err.key == key
    assert "finite" in _one_line(err) or "must be in [0, 1)" in str(err)


def test_nan_written_in_yaml_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "nan.yaml"
    p.write_text(
        "model: {preset: gpt2}\nhardware: a100_sxm4_80gb\nparallelism: {bucket_mb: .nan}\n"
    )
    with pytest.raises(ConfigError) as ei:
        load_scenario(p)
    assert ei.value.key == "parallelism.bucket_mb" and "finite" in str(ei.value)


@pytest.mark.parametrize("bucket_mb", [1e-9, 0.0])
def test_bucket_below_one_byte_is_refused(tmp_path: Path, bucket_mb: float) -> None:
    """costs.comm.ddp_buckets takes int(bucket_mb * 1e6) bytes a bucket: 0 would divide by 0."""
    err = _error(tmp_path, _with("parallelism.bucket_mb", bucket_mb))
    assert err.key == "parallelism.bucket_mb"


@pytest.mark.parametrize(
    "name", [-5, float("nan"), "", "   ", ["a"], "a/b", "..", "x" * 200, "a\nb"]
)
def test_name_must_be_a_non_empty_string(tmp_path: Path, name: Any) -> None:
    err = _error(tmp_path, _with("name", name))
    assert err.key == "name"
    _one_line(err)


def test_name_left_out_or_null_is_the_file_stem(tmp_path: Path) -> None:
    d = _with("name", None)
    assert load_scenario(_write(tmp_path, d, "stem_name.yaml")).name == "stem_name"


def test_description_must_be_a_string(tmp_path: Path) -> None:
    assert _error(tmp_path, _with("description", 5)).key == "description"


def test_model_preset_must_be_a_string(tmp_path: Path) -> None:
    assert _error(tmp_path, _with("model.preset", ["gpt2"])).key == "model.preset"


# Cross-field limits: GPUs, pipeline actions, micro-batches x layers, activation bytes, buckets


def test_too_many_gpus(tmp_path: Path) -> None:
    d = _with("parallelism.dp", MAX_GPUS)
    d["parallelism"]["tp"] = 2
    d["training"]["global_batch"] = 2 * MAX_GPUS
    d["training"]["micro_batch"] = 2
    err = _error(tmp_path, d)
    assert err.key == "parallelism" and f"{MAX_GPUS:,}" in str(err)


def test_too_many_microbatch_layers(tmp_path: Path) -> None:
    """A huge global batch was minutes of simulation and then a MemoryError in the schedule
    generators; now it is refused at load, naming the key and the limit."""
    d = _with("training.global_batch", 16_000_000)
    d["training"]["micro_batch"] = 1
    err = _error(tmp_path, d)
    assert err.key == "training.global_batch" and f"{MAX_MICROBATCH_LAYERS:,}" in str(err)
    d["training"]["global_batch"] = MAX_MICROBATCH_LAYERS // 12  # gpt2: 12 layers
    assert load_scenario(_write(tmp_path, d))
    d["parallelism"]["pp"] = 12  # 12 stages x 21,845 micro-batches: the same bound
    assert load_scenario(_write(tmp_path, d)).parallelism.pp == 12
    d["training"]["global_batch"] = MAX_MICROBATCH_LAYERS // 12 + 1
    assert _error(tmp_path, d).key == "training.global_batch"


def test_activation_bytes_bounded(tmp_path: Path) -> None:
    """The schedule walk sums activation bytes as int64: an exabyte-scale layout is refused,
    not wrapped (it raised OverflowError in activation_peak_of_states)."""
    d = _with("model", {"layers": 64, "hidden": 65536, "heads": 64, "vocab": 2**24,
                        "max_positions": 2**24, "positions": "rotary"})  # fmt: skip
    d["training"].update(seq_len=2**22, micro_batch=64, global_batch=64)
    err = _error(tmp_path, d)
    assert err.key == "training" and "2^62" in str(err)


def test_too_many_ddp_buckets(tmp_path: Path) -> None:
    d = _with("parallelism.dp", 2)
    d["parallelism"]["bucket_mb"] = 1e-6  # one-byte buckets of 124M parameters' gradients
    err = _error(tmp_path, d)
    assert err.key == "parallelism.bucket_mb" and "buckets" in str(err)


# The default cluster (no ``cluster:``): exactly the layout's GPUs, the last node partial


def test_default_cluster_fits_the_layout(tmp_path: Path) -> None:
    """pp 12 on 8-GPU servers was refused ("cluster: nodes x gpus_per_node = 16 GPUs but tp x pp
    x dp = 12", blaming a key the file does not contain): now a node of 8 and one of 4."""
    d = _with("model.preset", "gpt2-large")  # 36 layers
    d["parallelism"]["pp"] = 12
    d["training"]["global_batch"] = 24
    sc = load_scenario(_write(tmp_path, d))
    c = sc.cluster
    assert (c.nodes, c.gpus_per_node, c.gpus) == (2, 8, 12) and c.last_node_gpus == 4
    # Within one node, and whole nodes, are as before (the shipped scenarios' goldens).
    d["parallelism"]["pp"] = 4
    c = load_scenario(_write(tmp_path, d)).cluster
    assert (c.nodes, c.gpus_per_node, c.last_node_gpus) == (1, 4, 0)
    d["parallelism"].update(pp=4, dp=4)
    c = load_scenario(_write(tmp_path, d)).cluster
    assert (c.nodes, c.gpus_per_node, c.last_node_gpus) == (2, 8, 0)


def test_last_node_gpus_is_not_a_yaml_key(tmp_path: Path) -> None:
    err = _error(tmp_path, _with("cluster", {"nodes": 1, "gpus_per_node": 1, "last_node_gpus": 1}))
    assert err.key == "cluster.last_node_gpus" and "unknown key" in str(err)


def test_explicit_cluster_must_still_match(tmp_path: Path) -> None:
    err = _error(tmp_path, _with("cluster", {"nodes": 2, "gpus_per_node": 8}))
    assert err.key == "cluster"


# Errors that help: the nearest allowed key and value; --set named for what it set


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("training.micro_bach", "micro_batch"), ("parallelism.schedul", "schedule"),
     ("modle", "model"), ("training.peft.rnk", "rank"), ("cluster.node", "nodes")],
)  # fmt: skip
def test_unknown_key_suggests_the_nearest(tmp_path: Path, key: str, suggestion: str) -> None:
    err = _error(tmp_path, _with(key, 1))
    msg = _one_line(err)
    assert err.key == key
    assert f"did you mean {suggestion!r}?" in msg and "allowed:" in msg


def test_unknown_key_without_a_near_one_lists_only(tmp_path: Path) -> None:
    msg = str(_error(tmp_path, _with("training.zzzzzz", 1)))
    assert "did you mean" not in msg and "allowed: seq_len" in msg


def test_unknown_value_suggests_the_nearest(tmp_path: Path) -> None:
    msg = str(_error(tmp_path, _with("parallelism.schedule", "1f1f")))
    assert "did you mean '1f1b'?" in msg and "allowed: naive | gpipe | 1f1b" in msg


def test_unknown_value_helper_names_key_value_nearest_and_all() -> None:
    """errors.unknown_value, which the scenario, hardware, runtime, plan and table loaders share:
    the nearest allowed value to the one bad item (not to the whole list), every allowed value."""
    err = unknown_value("f.yaml", "fixed.precision", ["bf16", "fp33"], ("fp32", "bf16"),
                        nearest_to="fp33")  # fmt: skip
    msg = str(err)
    assert msg.startswith("f.yaml: fixed.precision: unknown value; did you mean 'fp32'?")
    assert "(got ['bf16', 'fp33'])" in msg and msg.endswith("allowed: fp32 | bf16")
    assert "did you mean" not in str(unknown_value(None, "k", "zzzz", ("fp32",), "dtype"))
    assert str(unknown_value(None, "k", "zzzz", ("fp32",), "dtype")).startswith("k: unknown dtype")


def test_set_errors_name_set(tmp_path: Path) -> None:
    p = _write(tmp_path, BASE, "base.yaml")
    with pytest.raises(ConfigError) as ei:
        load_scenario(p, ["training.micro_batch=0"])
    assert ei.value.file == "--set" and str(ei.value).startswith("--set: training.micro_batch")
    with pytest.raises(ConfigError) as ei:
        load_scenario(p, ["training.micro_bach=2"])
    assert ei.value.file == "--set" and "did you mean 'micro_batch'?" in str(ei.value)
    with pytest.raises(ConfigError) as ei:  # a whole section set by --set
        load_scenario(p, ["parallelism={pp: 5}"])
    assert ei.value.file == "--set" and ei.value.key == "parallelism.pp"
    with pytest.raises(ConfigError) as ei:  # another key made invalid: file and --set named
        load_scenario(p, ["training.micro_batch=3"])
    msg = str(ei.value)
    assert msg.startswith(f"{p} with --set training.micro_batch=3: training.global_batch")
    with pytest.raises(ConfigError) as ei:  # an error in the file itself names the file alone
        bad = _write(tmp_path, _with("training.bogus", 1), "bad.yaml")
        load_scenario(bad, ["training.micro_batch=4"])
    assert ei.value.file == str(bad)


def test_set_key_path_depth_is_bounded() -> None:
    with pytest.raises(ConfigError) as ei:
        apply_override({}, "a." * (MAX_DEPTH + 1) + "b=1")
    assert "--set" in _one_line(ei.value)


def test_set_value_is_parsed_within_the_limits() -> None:
    with pytest.raises(ConfigError) as ei:
        apply_override({}, "name=" + "[" * 100 + "]" * 100)
    assert str(ei.value).startswith("--set:")


# Values echoed in errors are cut to ~80 characters


@pytest.mark.parametrize(
    "value",
    ["x" * 7_000_000, list(range(1_000_000)), {str(i): i for i in range(100_000)}, 10**5000,
     [[[[[[[[[[[[["deep"]]]]]]]]]]]]], "line\nbreak"],
    ids=["7MB-string", "1M-list", "100k-dict", "5000-digits", "deep-list", "newline"],
)  # fmt: skip
def test_echo_is_short_and_one_line(value: Any) -> None:
    text = echo(value)
    assert len(text) <= MAX_ECHO and "\n" not in text
    err = ConfigError("f.yaml", "k\nk" * 1000, "bad", value, "a | b")
    assert "\n" not in str(err) and len(str(err)) < 300


def test_allowed_list_shrinks_to_the_message_room() -> None:
    """A long key, message and echoed value leave the allowed list less room: the message
    (without its file name) stays within MAX_MESSAGE, the list keeps at least MIN_ALLOWED
    characters of names and says how many it left out; a short message keeps MAX_ALLOWED."""
    names = ", ".join(f"profile_{i:03d}" for i in range(200))
    long = ConfigError("plan.yaml", "hardware[0].name", "unknown hardware profile (a name "
                       "`simtrain hardware` lists, or a .yaml path)", "ab" * 1000, names)  # fmt: skip
    text = str(long)
    assert len(text) - len("plan.yaml: ") <= MAX_MESSAGE
    listed = text.split("; allowed: ", 1)[1]
    assert listed.endswith("more)") and len(listed.split(", ... (")[0]) >= MIN_ALLOWED - 20
    short = str(ConfigError("f.yaml", "k", "bad", None, names)).split("; allowed: ", 1)[1]
    assert MAX_ALLOWED - 20 <= len(short.split(", ... (")[0]) <= MAX_ALLOWED
    # a list the cut would not shorten stays whole
    few = ", ".join(["a" * 158, "b", "c"])  # cut: 158 a's + ", ... (2 more)", longer
    assert str(ConfigError("f.yaml", "k" * 70, "m" * 300, "v" * 90, few)).endswith(few)


def test_echo_of_a_recursive_list() -> None:
    a: list[Any] = []
    a.append(a)
    assert len(echo(a)) <= MAX_ECHO


def test_echo_keeps_short_values_as_repr() -> None:
    for v in ("q", 3, 2.5, None, True, ["q", "x"], {"a": 1}, (1,), float("nan")):
        assert echo(v) == repr(v)


# YAML documents and files


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused() -> None:
    """ "Billion laughs": 10 levels of 10 aliases expand to 10^10 values from 500 bytes."""
    with pytest.raises(ConfigError) as ei:
        parse_yaml(_bomb(), "bomb.yaml")
    assert "expands to more than" in _one_line(ei.value) and "bomb.yaml" in str(ei.value)


def test_aliases_within_the_limit_are_fine() -> None:
    data = parse_yaml(_bomb(3), "ok.yaml")  # 10^4 values
    assert len(data["a3"]) == 10 and data["a3"][0] is data["a2"]


def test_merge_keys_count_as_expanded() -> None:
    text = "b0: &b0 {" + ", ".join(f"k{i}: {i}" for i in range(50)) + "}\n"
    text += "".join(
        f"b{i}: &b{i} {{<<: [*b{i - 1}, *b{i - 1}, *b{i - 1}]}}\n" for i in range(1, 12)
    )
    with pytest.raises(ConfigError):
        parse_yaml(text, "merge.yaml")


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_yaml("a: &a [1, *a]\n", "rec.yaml")
    assert "nested deeper" in str(ei.value)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 100_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    """RecursionError in parse_scenario (echoing the value) before; now refused at parse."""
    with pytest.raises(ConfigError) as ei:
        parse_yaml("x: " + "[" * depth + "]" * depth, "deep.yaml")
    _one_line(ei.value)


def test_nesting_within_the_limit_is_fine() -> None:
    d = MAX_DEPTH - 2
    assert parse_yaml("x: " + "[" * d + "]" * d, "ok.yaml")["x"]


def test_too_many_values_are_refused_before_composing() -> None:
    text = "x: [" + "1," * MAX_NODES + "1]\n"  # 0.5 MB, more values than the limit
    with pytest.raises(ConfigError) as ei:
        parse_yaml(text, "many.yaml")
    assert f"more than {MAX_NODES:,} values" in str(ei.value)


def test_integer_of_5000_digits_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_yaml("x: " + "9" * 5000, "digits.yaml")
    assert "digits.yaml" in _one_line(ei.value)


def test_file_larger_than_the_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_text("description: " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ConfigError) as ei:
        load_scenario(p)
    assert "larger than 10 MiB" in _one_line(ei.value) and "big.yaml" in str(ei.value)


def test_folder_is_not_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_yaml(tmp_path)
    assert "folder" in str(ei.value)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
def test_fifo_is_not_read(tmp_path: Path) -> None:
    """A FIFO given as the scenario blocked forever: it is opened without blocking and refused."""
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as ei:
        load_scenario(fifo)
    assert "not a regular file" in str(ei.value) and "fifo.yaml" in str(ei.value)


def test_device_is_not_read() -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(ConfigError) as ei:
        load_yaml("/dev/zero")
    assert "not a regular file" in str(ei.value)


@pytest.mark.parametrize("bad", ["x" * 5000 + ".yaml", "a\0b.yaml"])
def test_impossible_paths_are_config_errors(tmp_path: Path, bad: str) -> None:
    err = _error(tmp_path, _with("hardware", bad))
    assert err.key == "hardware" and "hardware profile file not found" in _one_line(err)
    err = _error(tmp_path, _with("model", {"hf_config": bad}))
    assert err.key == "model.hf_config"
