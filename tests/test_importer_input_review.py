"""Importers on hostile or template input (review): every bad value is a ConfigError naming the
foreign file's key or flag, never a Python traceback, never read as something else; the
Hugging Face Trainer's ``"auto"`` values are resolved as the Trainer resolves them where the
importer can (transformers integrations/deepspeed.py HfTrainerDeepSpeedConfig
.trainer_config_finalize: reduce_bucket_size = h·h, stage3_prefetch_bucket_size = int(0.9·h·h),
stage3_param_persistence_threshold = 10·h) and are a need naming the key, met by ``--set``,
where it cannot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from simtrain.apps.importers import import_config
from simtrain.apps.importers.common import load_imported, with_overrides
from simtrain.apps.importers.deepspeed import import_deepspeed_config
from simtrain.apps.importers.shell import read_command
from simtrain.cli import main
from simtrain.errors import ConfigError

# ------------------------------------------------------------------------------------ DeepSpeed

DS_BASE: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                           "bf16": {"enabled": True}}  # fmt: skip


def _ds(tmp_path: Path, cfg: dict[str, Any], model: str = "llama3-8b", gpus: int = 8):
    f = tmp_path / "ds_config.json"
    f.write_text(json.dumps(cfg))
    return import_config("deepspeed", f, model, gpus)


def _ds_error(tmp_path: Path, cfg: dict[str, Any], **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _ds(tmp_path, cfg, **kw)
    return info.value


def test_deepspeed_hf_auto_buckets_resolved_from_the_hidden_size(tmp_path: Path) -> None:
    """reduce_bucket_size "auto" is hidden² elements (Llama 3 8B: 4096² in bf16 = 33.55 MB);
    the stage-3 tunings' "auto" are recorded with the Trainer's values."""
    imp = _ds(tmp_path, {**DS_BASE, "zero_optimization": {
        "stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9}})  # fmt: skip
    sc = load_imported(imp, ["training.seq_len=2048"])
    assert sc.parallelism.bucket_mb == pytest.approx(4096 * 4096 * 2 / 1e6)
    assert sc.parallelism.zero3_max_live_params == 10**9
    text = " ".join(imp.assumptions)
    assert "reduce_bucket_size 'auto': hidden_size² = 16,777,216" in text
    assert "int(0.9 x hidden_size²) = 15,099,494" in text  # int(0.9 x 4096²)
    assert "10 x hidden_size = 40,960" in text


@pytest.mark.parametrize(("section", "value"), [
    *((s, v) for s in ("zero_optimization", "bf16", "optimizer") for v in ([], 0, "", "false")),
    # a boolean false too, but for zero_optimization: DeepSpeed's deprecated switch (below)
    ("bf16", False), ("optimizer", False),
])  # fmt: skip
def test_deepspeed_an_empty_non_object_section_is_an_error(tmp_path: Path, section: str,
                                                           value: Any) -> None:  # fmt: skip
    """A "zero_optimization": [] (or 0, "") was read as no section: ZeRO stage 0, without a
    word (the peak doubled), and "bf16": [] as fp32 (a fuzz campaign)."""
    err = _ds_error(tmp_path, {**DS_BASE, section: value})
    assert err.key == section and "JSON object" in err.message


@pytest.mark.parametrize(("on", "stage"), [(False, 0), (True, 1)])
def test_deepspeed_zero_optimization_as_a_switch(tmp_path: Path, on: bool, stage: int) -> None:
    """DeepSpeed still reads its deprecated "zero_optimization": true / false as stage 1 / 0
    (runtime/zero/config.py read_zero_config_deprecated); the review of the change above found
    false refused."""
    imp = _ds(tmp_path, {**DS_BASE, "zero_optimization": on})
    assert load_imported(imp, ["training.seq_len=2048"]).parallelism.zero_stage == stage
    assert any("deprecated switch" in a for a in imp.assumptions)


@pytest.mark.parametrize(("key", "value"), [("stage3_param_persistence_threshold", -1),
                                            ("stage3_prefetch_bucket_size", "x"),
                                            ("contiguous_gradients", "x"),
                                            ("round_robin_gradients", 1)])  # fmt: skip
def test_deepspeed_tunings_are_typed(tmp_path: Path, key: str, value: Any) -> None:
    """ZeRO tunings simtrain does not model were listed as read whatever their value (-1, "x");
    DeepSpeed's config model refuses them."""
    zero = {"stage": 3, key: value}
    err = _ds_error(tmp_path, {**DS_BASE, "zero_optimization": zero})
    assert err.key == f"zero_optimization.{key}"
    zero[key] = True if key in ("contiguous_gradients", "round_robin_gradients") else 1e5
    assert _ds(tmp_path, {**DS_BASE, "zero_optimization": zero})


def test_deepspeed_hf_auto_bucket_from_a_config_json(tmp_path: Path) -> None:
    """The hidden size of a Hugging Face config.json (GPT-2's n_embd 768)."""
    hf = tmp_path / "config.json"
    hf.write_text(json.dumps({"model_type": "gpt2", "n_embd": 768, "n_layer": 2, "n_head": 12,
                              "vocab_size": 50257, "n_positions": 1024}))  # fmt: skip
    imp = _ds(tmp_path, {**DS_BASE, "zero_optimization": {"stage": 2,
                                                          "reduce_bucket_size": "auto"}},
              model=str(hf))  # fmt: skip
    sc = load_imported(imp, ["training.seq_len=1024"])
    assert sc.parallelism.bucket_mb == pytest.approx(768 * 768 * 2 / 1e6)


def test_deepspeed_hf_auto_bucket_without_a_hidden_size_is_a_need() -> None:
    cfg = {**DS_BASE, "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}
    imp = import_deepspeed_config(cfg, {"name": "no shape"}, 8, "ds.json")
    with pytest.raises(ConfigError) as info:
        with_overrides(imp, ["training.seq_len=16"])
    assert info.value.key == "zero_optimization.reduce_bucket_size"
    assert "--set parallelism.bucket_mb" in info.value.message
    data = with_overrides(imp, ["training.seq_len=16", "parallelism.bucket_mb=25"])
    assert data["parallelism"]["bucket_mb"] == 25


@pytest.mark.parametrize("value", [None, "lots", [5]])
def test_deepspeed_reduce_bucket_size_of_a_wrong_type(tmp_path: Path, value: Any) -> None:
    err = _ds_error(tmp_path, {**DS_BASE, "zero_optimization": {"stage": 3,
                                                                "reduce_bucket_size": value}})  # fmt: skip
    assert err.key == "zero_optimization.reduce_bucket_size"
    assert "must be a number" in err.message


def test_deepspeed_max_live_parameters_auto_is_a_need(tmp_path: Path) -> None:
    """The Trainer fills no "auto" in stage3_max_live_parameters: --set gives it."""
    imp = _ds(tmp_path, {**DS_BASE, "zero_optimization": {
        "stage": 3, "stage3_max_live_parameters": "auto"}})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_imported(imp, ["training.seq_len=2048"])
    assert info.value.key == "zero_optimization.stage3_max_live_parameters"
    assert "--set parallelism.zero3_max_live_params" in info.value.message
    sc = load_imported(
        imp, ["training.seq_len=2048", "parallelism.zero3_max_live_params=500000000"]
    )
    assert sc.parallelism.zero3_max_live_params == 500_000_000


@pytest.mark.parametrize("value", ["lots", None, 2.5, -1, 1e400])
def test_deepspeed_max_live_parameters_bad(tmp_path: Path, value: Any) -> None:
    err = _ds_error(tmp_path, {**DS_BASE, "zero_optimization": {
        "stage": 3, "stage3_max_live_parameters": value}})  # fmt: skip
    assert err.key == "zero_optimization.stage3_max_live_parameters"


@pytest.mark.parametrize("value", ["two", "auto", 2.5, -2, None, True])
def test_deepspeed_autotp_size_bad(tmp_path: Path, value: Any) -> None:
    """Named as tensor_parallel.autotp_size (a negative size was reported as train_batch_size)."""
    err = _ds_error(tmp_path, {**DS_BASE, "tensor_parallel": {"autotp_size": value}})
    assert err.key == "tensor_parallel.autotp_size"


@pytest.mark.parametrize(("value", "tp"), [(0, 1), (1, 1), (2, 2), (2.0, 2)])
def test_deepspeed_autotp_size_good(tmp_path: Path, value: Any, tp: int) -> None:
    imp = _ds(tmp_path, {**DS_BASE, "tensor_parallel": {"autotp_size": value}})
    assert (imp.data["parallelism"]["tp"], imp.data["parallelism"]["dp"]) == (tp, 8 // tp)


def test_deepspeed_precision_auto_names_the_switch_and_the_override(tmp_path: Path) -> None:
    cfg = {"train_micro_batch_size_per_gpu": 1, "fp16": {"enabled": "auto"},
           "bf16": {"enabled": "auto"}}  # fmt: skip
    imp = _ds(tmp_path, cfg)
    with pytest.raises(ConfigError) as info:
        load_imported(imp, ["training.seq_len=2048"])
    err = info.value
    assert err.key == "fp16.enabled and bf16.enabled"
    assert "'auto' cannot be resolved from the file" in err.message
    assert "--set training.precision=bf16" in err.message
    assert "contradicts" not in str(err)
    sc = load_imported(imp, ["training.seq_len=2048", "training.precision=bf16"])
    assert sc.training.precision == "bf16"
    # fp16 false, bf16 auto: still bf16 or fp32
    imp = _ds(tmp_path, {**cfg, "fp16": {"enabled": False}})
    with pytest.raises(ConfigError) as info:
        load_imported(imp, ["training.seq_len=2048"])
    assert info.value.key == "bf16.enabled"
    # bf16 true: fp16 "auto" can only be false (DeepSpeed refuses both)
    imp = _ds(tmp_path, {**cfg, "bf16": {"enabled": True}})
    assert imp.data["training"]["precision"] == "bf16"
    assert any("fp16.enabled 'auto': false" in a for a in imp.assumptions)


@pytest.mark.parametrize(("value", "precision"), [
    ("false", "fp32"), ("FALSE", "fp32"), ("true", "bf16"), ("True", "bf16"), (False, "fp32"),
])  # fmt: skip
def test_deepspeed_boolean_strings(tmp_path: Path, value: Any, precision: str) -> None:
    """ "false" is false (was the truthiness of a non-empty string: bf16)."""
    imp = _ds(tmp_path, {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": value}})
    assert imp.data["training"]["precision"] == precision


@pytest.mark.parametrize("value", ["no", "yes", "0", "", 1, [True], {"a": 1}])
def test_deepspeed_boolean_nonsense(tmp_path: Path, value: Any) -> None:
    err = _ds_error(tmp_path, {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": value}})
    assert err.key == "bf16.enabled" and err.allowed == "true | false"
    err = _ds_error(tmp_path, {**DS_BASE, "zero_optimization": {"stage": 3,
                                                                "overlap_comm": value}})  # fmt: skip
    assert err.key == "zero_optimization.overlap_comm"


def test_deepspeed_overlap_comm_false_string(tmp_path: Path) -> None:
    imp = _ds(tmp_path, {**DS_BASE, "zero_optimization": {"stage": 3, "overlap_comm": "false"}})
    assert imp.data["runtime"]["overlap_grad_reduce"] is False
    imp = _ds(tmp_path, {**DS_BASE, "zero_optimization": {"stage": 2, "reduce_scatter": "false"}})
    assert imp.data["runtime"]["zero_grad_reduction"] == "all_reduce"


def test_deepspeed_batch_auto_is_a_need(tmp_path: Path) -> None:
    """A Trainer template's batch sizes ("auto" all three) are needs met by --set."""
    imp = _ds(tmp_path, {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                         "gradient_accumulation_steps": "auto", "bf16": {"enabled": True}})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_imported(imp, ["training.seq_len=2048"])
    assert info.value.key == "train_micro_batch_size_per_gpu"
    assert "--set training.micro_batch" in info.value.message
    with pytest.raises(ConfigError, match="train_batch_size: 'auto'"):
        load_imported(imp, ["training.seq_len=2048", "training.micro_batch=2"])
    sc = load_imported(imp, ["training.seq_len=2048", "training.micro_batch=2",
                             "training.global_batch=32"])  # fmt: skip
    assert (sc.training.micro_batch, sc.training.global_batch, sc.parallelism.dp) == (2, 32, 8)


@pytest.mark.parametrize(("cfg", "key"), [
    ({"torch_autocast": {"enabled": True, "dtype": "torch.float8"}}, "torch_autocast.dtype"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "gpu"}}},
     "zero_optimization.offload_param.device"),
    ({"zero_optimization": {"stage": 1, "offload_optimizer": ["cpu"]}},
     "zero_optimization.offload_optimizer"),
    ({"train_batch_size": 1e300}, "train_batch_size"),
    ({"train_micro_batch_size_per_gpu": float("inf")}, "train_micro_batch_size_per_gpu"),
])  # fmt: skip
def test_deepspeed_other_nonsense(tmp_path: Path, cfg: dict[str, Any], key: str) -> None:
    err = _ds_error(tmp_path, {"train_micro_batch_size_per_gpu": 1, **cfg})
    assert err.key == key


def test_deepspeed_cli_null_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({**DS_BASE, "zero_optimization": {"stage": 3,
                                                              "reduce_bucket_size": None}}))  # fmt: skip
    r = CliRunner().invoke(main, ["import", "deepspeed", str(f), "--model", "gpt2", "--gpus", "8",
                                  "--set", "training.seq_len=1024"])  # fmt: skip
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    assert "zero_optimization.reduce_bucket_size" in err


# ----------------------------------------------------------------------------------- torchtitan

TT_BASE = """[model]
name = "llama3"
flavor = "debugmodel"
{model}
[training]
local_batch_size = 8
seq_len = 2048
[parallelism]
{par}
"""
PP2 = 'pipeline_parallel_degree = 2\npipeline_parallel_schedule = "Interleaved1F1B"\n'


def _tt(tmp_path: Path, par: str = "", model: str = "", extra: str = ""):
    f = tmp_path / "job.toml"
    f.write_text(TT_BASE.format(model=model, par=par) + extra)
    return import_config("torchtitan", f)


def _tt_error(tmp_path: Path, **kw: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _tt(tmp_path, **kw)
    return info.value


@pytest.mark.parametrize("value", ['"2"', "2.5", "-1", "0", "100", "3"])
def test_torchtitan_layers_per_stage_bad(tmp_path: Path, value: str) -> None:
    """A string or a fraction (a TypeError before), a non-positive value, or one that leaves
    fewer than 2 stages per rank (100: 1 stage) or a number of stages pp does not divide
    (3: ceil(8 / 3) = 3 stages)."""
    err = _tt_error(tmp_path, par=PP2 + f"pipeline_parallel_layers_per_stage = {value}")
    assert err.key == "parallelism.pipeline_parallel_layers_per_stage"


@pytest.mark.parametrize(("lps", "virtual"), [(2, 2), (1, 4)])
def test_torchtitan_layers_per_stage_good(tmp_path: Path, lps: int, virtual: int) -> None:
    """debugmodel: 6 layers + the embedding and the output weighing 1 each: ceil(8 / lps)."""
    imp = _tt(tmp_path, par=PP2 + f"pipeline_parallel_layers_per_stage = {lps}")
    assert imp.data["parallelism"]["virtual_stages"] == virtual


@pytest.mark.parametrize("value", ["5", '"float8"', "{a = 1}", "[1]"])
def test_torchtitan_converters_bad(tmp_path: Path, value: str) -> None:
    err = _tt_error(tmp_path, model=f"converters = {value}")
    assert err.key == "model.converters"


@pytest.mark.parametrize("value", ['["always"]', "1", '"sometimes"'])
def test_torchtitan_reshard_bad(tmp_path: Path, value: str) -> None:
    err = _tt_error(tmp_path, par=f"data_parallel_shard_degree = 8\n"
                    f"fsdp_reshard_after_forward = {value}")  # fmt: skip
    assert err.key == "parallelism.fsdp_reshard_after_forward"


def test_torchtitan_pipeline_microbatch_named(tmp_path: Path) -> None:
    """pp > 1: the micro-batch is pipeline_parallel_microbatch_size, not local_batch_size."""
    err = _tt_error(tmp_path, par="pipeline_parallel_degree = 2\n"
                    "pipeline_parallel_microbatch_size = 0")  # fmt: skip
    assert err.key == "parallelism.pipeline_parallel_microbatch_size"
    imp = _tt(tmp_path, par="pipeline_parallel_degree = 2\npipeline_parallel_microbatch_size = 2")
    assert dict(imp.origins)["training.micro_batch"] == (
        "parallelism.pipeline_parallel_microbatch_size"
    )


@pytest.mark.parametrize(("par", "extra", "key"), [
    ("pipeline_parallel_degree = 2\npipeline_parallel_first_stage_less_layers = -5", "",
     "parallelism.pipeline_parallel_first_stage_less_layers"),
    ("pipeline_parallel_degree = 2\npipeline_parallel_last_stage_less_layers = 10000000000000000000000",
     "", "parallelism.pipeline_parallel_last_stage_less_layers"),
    ("", '[activation_checkpoint]\nmode = ["full"]\n', "activation_checkpoint.mode"),
    ("", "[compile]\nenable = \"yes\"\n", "compile.enable"),
    ("", "[optimizer]\nname = [\"AdamW\"]\n", "optimizer.name"),
    ("enable_async_tensor_parallel = \"no\"", "", "parallelism.enable_async_tensor_parallel"),
])  # fmt: skip
def test_torchtitan_other_nonsense(tmp_path: Path, par: str, extra: str, key: str) -> None:
    assert _tt_error(tmp_path, par=par, extra=extra).key == key


def test_torchtitan_boolean_string(tmp_path: Path) -> None:
    imp = _tt(tmp_path, extra='[compile]\nenable = "false"\n')
    assert "eager_elementwise" not in imp.data["runtime"]
    imp = _tt(tmp_path, extra='[compile]\nenable = "true"\n')
    assert imp.data["runtime"]["eager_elementwise"] is False


# ------------------------------------------------------------------------------------- nanotron

NT_BASE: dict[str, Any] = {
    "model": {"dtype": "bfloat16", "model_config": {
        "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 8,
        "intermediate_size": 512, "vocab_size": 1000}},
    "parallelism": {"dp": 2, "tp": 1, "pp": 1},
    "tokens": {"sequence_length": 128, "micro_batch_size": 2},
}  # fmt: skip


def _nt(tmp_path: Path, edit) -> Any:
    cfg = json.loads(json.dumps(NT_BASE))
    edit(cfg)
    f = tmp_path / "config.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return import_config("nanotron", f)


def _nt_error(tmp_path: Path, edit) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _nt(tmp_path, edit)
    return info.value


def test_nanotron_huge_vocabulary(tmp_path: Path) -> None:
    """A 400-digit vocabulary: an OverflowError before."""
    err = _nt_error(tmp_path, lambda c: c["model"]["model_config"].update(vocab_size=9 * 10**400))
    assert err.key == "model.model_config.vocab_size" and "must be <=" in err.message
    err = _nt_error(tmp_path, lambda c: c["model"].update(make_vocab_size_divisible_by=10**300))
    assert err.key == "model.make_vocab_size_divisible_by"
    # the padding itself, in integers: 1,000 to a multiple of 3 x tp 1
    imp = _nt(tmp_path, lambda c: c["model"].update(make_vocab_size_divisible_by=3))
    assert imp.data["model"]["vocab"] == 1002


@pytest.mark.parametrize(("value", "recompute"), [
    ("false", "none"), ("False", "none"), ("true", "full"), (True, "full"), (False, "none"),
])  # fmt: skip
def test_nanotron_recompute_layer_strings(tmp_path: Path, value: Any, recompute: str) -> None:
    imp = _nt(tmp_path, lambda c: c["parallelism"].update(recompute_layer=value))
    assert imp.data["training"]["recompute"] == recompute


@pytest.mark.parametrize(("edit", "key"), [
    (lambda c: c["parallelism"].update(recompute_layer="off"), "parallelism.recompute_layer"),
    (lambda c: c["model"]["model_config"].update(tie_word_embeddings="no"),
     "model.model_config.tie_word_embeddings"),
    (lambda c: c["parallelism"].update(tp_linear_async_communication="yes"),
     "parallelism.tp_linear_async_communication"),
    (lambda c: c.update(optimizer={"optimizer_factory": ["adam"]}), "optimizer.optimizer_factory"),
    (lambda c: c.update(optimizer={"optimizer_factory": {"name": ["adam"]}}),
     "optimizer.optimizer_factory.name"),
    (lambda c: c["model"].update(model_config=["x"]), "model.model_config"),
    (lambda c: c["tokens"].update(micro_batch_size=10**30), "tokens.micro_batch_size"),
])  # fmt: skip
def test_nanotron_nonsense_named(tmp_path: Path, edit, key: str) -> None:
    assert _nt_error(tmp_path, edit).key == key


# ------------------------------------------------------------------------------------- Megatron

MG_BASE = ("--num-layers 4 --hidden-size 256 --num-attention-heads 8 --seq-length 128 "
           "--max-position-embeddings 128 --micro-batch-size 1 --global-batch-size 8 "
           "--vocab-size 1000 --bf16 ")  # fmt: skip


def _mg(tmp_path: Path, text: str, name: str = "flags.txt"):
    f = tmp_path / name
    f.write_text(text)
    return import_config("megatron", f, gpus=8)


@pytest.mark.parametrize("flags", [
    "--tensor-model-parallel-size 0", "--tensor-model-parallel-size -2",
    "--model-parallel-size 0", "--pipeline-model-parallel-size 0",
    "--context-parallel-size -1", "--expert-model-parallel-size 0", "--micro-batch-size 0",
    "--global-batch-size 0", "--make-vocab-size-divisible-by -128",
    "--make-vocab-size-divisible-by 0", "--seq-length 0", "--num-layers 0",
    "--hidden-size -256", "--num-attention-heads 0", "--num-query-groups 0",
    "--ffn-hidden-size 0", "--max-position-embeddings 0", "--ddp-bucket-size 0",
    "--recompute-granularity full --recompute-method block --recompute-num-layers -3",
    "--decoder-first-pipeline-num-layers -1",
    "--pipeline-model-parallel-size 2 --num-virtual-stages-per-pipeline-rank 0",
    "--optimizer-cpu-offload --optimizer-offload-fraction 2",
    "--vocab-size 9" + "0" * 400, "--ddp-bucket-size 9" + "0" * 400,
    "--hidden-dropout nan",
])  # fmt: skip
def test_megatron_zero_negative_and_huge_values_name_the_flag(tmp_path: Path, flags: str) -> None:
    """Read as the flag's value (0 was read as absent: tp 1, micro-batch 1, the default
    padding; -128 padded the vocabulary down; a 400-digit vocabulary overflowed a float)."""
    flag = flags.split()[-2]
    with pytest.raises(ConfigError) as info:
        _mg(tmp_path, MG_BASE + flags)
    assert info.value.key == flag, info.value
    assert "missing" not in info.value.message and "absent" not in info.value.message


def test_megatron_vocabulary_padding_in_integers(tmp_path: Path) -> None:
    imp = _mg(
        tmp_path, MG_BASE + "--make-vocab-size-divisible-by 128 --tensor-model-parallel-size 2"
    )
    assert imp.data["model"]["vocab"] == 1024  # 1,000 up to a multiple of 256
    with pytest.raises(ConfigError) as info:  # padded past the vocabulary limit
        _mg(tmp_path, MG_BASE + "--make-vocab-size-divisible-by 16777216 "
            "--tensor-model-parallel-size 2")  # fmt: skip
    assert info.value.key == "--make-vocab-size-divisible-by"


SCRIPT = """#!/bin/bash
NL={nl}
torchrun --nproc_per_node 8 pretrain_gpt.py --num-layers $NL --hidden-size 256 \\
    --num-attention-heads 8 --seq-length 128 --vocab-size 1000
"""


@pytest.mark.parametrize(("nl", "layers"), [
    ("$(( 4 ))", 4), ("$((2*2))", 4), ("$(( 2 * 3 ))", 6), ('"$(( 12 / 3 ))"', 4),
    ("$(( 2 ))$(( 1 ))", 21),
])  # fmt: skip
def test_shell_arithmetic_with_spaces(tmp_path: Path, nl: str, layers: int) -> None:
    imp = _mg(tmp_path, SCRIPT.format(nl=nl), "train.sh")
    assert imp.data["model"]["layers"] == layers


def test_shell_arithmetic_with_variables_and_spaces() -> None:
    cmd = read_command("A=4\nB=$(( A * 2 ))\npython pretrain_gpt.py --x $B --y $(( $A + 1 ))\n",
                       "t.sh")  # fmt: skip
    assert cmd is not None and cmd.args == ("--x", "8", "--y", "5")
    # bash's syntax error (two operands): not squeezed into 23, left unexpanded
    cmd = read_command("B=$(( 2 3 ))\npython pretrain_gpt.py --x $B\n", "t.sh")
    assert cmd is not None and "23" not in cmd.args


@pytest.mark.parametrize(("dtype", "precision"), [
    ("torch.bfloat16", "amp_bf16"), ("bf16", "amp_bf16"), ("bfloat16", "amp_bf16"),
    ("torch.float16", "amp_fp16"), ("fp16", "amp_fp16"), ("half", "amp_fp16"),
])  # fmt: skip
def test_deepspeed_autocast_dtype_names_are_deepspeeds(tmp_path: Path, dtype: str,
                                                      precision: str) -> None:  # fmt: skip
    """torch_autocast.dtype takes the names DeepSpeed's DtypeEnum takes (deepspeed/runtime/
    config.py at edaa72212: fp16 = "torch.float16", "fp16", "float16", "half"; bf16 =
    "torch.bfloat16", "bf16", "bfloat16"); "torch.bf16" and "bfloat" are not (both were
    accepted: "bfloat" by a misread of the enum, l.106)."""
    imp = _ds(tmp_path, {"train_micro_batch_size_per_gpu": 1,
                         "torch_autocast": {"enabled": True, "dtype": dtype}})  # fmt: skip
    sc = load_imported(imp, ["training.seq_len=2048"])
    assert sc.training.precision == precision
    for bad in ("torch.bf16", "bfloat"):
        err = _ds_error(tmp_path, {"train_micro_batch_size_per_gpu": 1,
                                   "torch_autocast": {"enabled": True, "dtype": bad}})  # fmt: skip
        assert err.key == "torch_autocast.dtype"


# ----------------------------------------------------------- a fuzz campaign's finds (2026-12-07)


def test_declare_keeps_its_arrays_dashed_items() -> None:
    """``declare -a EXTRA=(--bf16 --use-distributed-optimizer)``: declare's options are dropped,
    the array's items are not (they were: the distributed optimizer silently lost)."""
    cmd = read_command("declare -a EXTRA=(--bf16 --use-distributed-optimizer)\n"
                       "torchrun pretrain_gpt.py --num-layers 2 ${EXTRA[@]}\n", "t.sh")  # fmt: skip
    assert cmd is not None and cmd.args == ("--num-layers", "2", "--bf16",
                                            "--use-distributed-optimizer")  # fmt: skip
    cmd = read_command("declare -x -r A=4\npython pretrain_gpt.py --x $A\n", "t.sh")
    assert cmd is not None and cmd.args == ("--x", "4")


def test_a_variable_that_doubles_itself_is_refused() -> None:
    """``A=$A$A`` forty times grew to 2^41 characters (killed at 60 s): past MAX_VALUE, an
    error naming the variable and the line."""
    from simtrain.apps.importers.shell import MAX_VALUE

    text = "A=xx\n" + "A=$A$A\n" * 40 + "python pretrain_gpt.py --x $A\n"
    with pytest.raises(ConfigError) as info:
        read_command(text, "t.sh")
    assert info.value.key == "A" and f"{MAX_VALUE:,}" in info.value.message


def test_a_long_open_quote_is_read_in_linear_time() -> None:
    """An open quote followed by thousands of lines was re-read whole at every line (5,000 lines:
    past 60 s); lines that cannot close it now join it unread. The string is the same: the
    quote closes on the last line and the command after it is found."""
    lines = "\n".join(f"--flag{i} {i}" for i in range(20_000))
    cmd = read_command(f'X="{lines}"\npython pretrain_gpt.py --y $X\n', "t.sh")
    assert cmd is not None and cmd.args[:3] == ("--y", "--flag0", "0")
    assert len(cmd.args) == 1 + 2 * 20_000
    arr = read_command("A=(\n" + lines + "\n)\npython pretrain_gpt.py ${A[@]}\n", "t.sh")
    assert arr is not None and len(arr.args) == 2 * 20_000 and arr.args[-1] == "19999"


def _counting_lexes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count shell.py's word splits (shell.split_words: the work of reading a script, not its wall
    time)."""
    from simtrain.apps.importers import shell

    count = [0]
    real = shell.split_words

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(shell, "split_words", counted)
    return count


@pytest.mark.parametrize("item", ['"--x"', "'--x'", "--it's-ok", '"a\\"b"'])
def test_quoted_lines_in_an_open_array_or_string_are_read_alone(monkeypatch, item: str) -> None:
    """An array of 10,000 quoted items, or a string of 10,000 lines that each hold a quote
    character, were lexed whole at every line (10,000: past 60 s; a fuzz campaign): each line
    is now read alone from the quote state it starts in (shell._scan), the buffer lexed once
    where a line closes it. Counted in shlex readings: a handful, not one a line; the words
    are the same."""
    count = _counting_lexes(monkeypatch)
    n = 2_000
    if item in ('"--x"', "'--x'"):
        arr = read_command("A=(\n" + "\n".join([item] * n) + "\n)\npython pretrain_gpt.py "
                           "${A[@]}\n", "t.sh")  # fmt: skip
        assert arr is not None and arr.args == ("--x",) * n
    else:  # a string over n lines, each with a quote character of the other kind or escaped
        from simtrain.apps.importers.shell import _logical_lines

        body = "\n".join(["a'b"] * n) if item == "--it's-ok" else "\n".join(['x\\"y'] * n)
        lines = _logical_lines(f'X="{body}"\npython pretrain_gpt.py --y 1\n', "t.sh")
        assert [(start, text.count("\n")) for start, text, _w in lines[:2]] == [
            (1, n - 1),
            (n + 1, 0),
        ]
        assert lines[0][2] == ["X=" + body.replace('\\"', '"')]  # shlex's word, unchanged
    assert count[0] < 10


def test_an_array_that_doubles_itself_is_refused() -> None:
    """``A=(${A[@]} ${A[@]})`` forty-five times ran out of memory (MemoryError, a fuzz
    campaign): past MAX_VALUE characters, an error naming the array and the line."""
    from simtrain.apps.importers.shell import MAX_VALUE

    for grow in ("A=(${A[@]} ${A[@]})\n", "A+=(${A[@]})\n"):
        text = "A=(x y)\n" + grow * 45 + "python pretrain_gpt.py ${A[@]}\n"
        with pytest.raises(ConfigError) as info:
            read_command(text, "t.sh")
        assert info.value.key == "A" and f"{MAX_VALUE:,}" in info.value.message


def test_a_word_that_would_grow_past_the_limit_is_not_built() -> None:
    """A word of many references to a long variable or array ("$V$V..." or "${A[@]}..."): its
    length is reckoned before it is built, an error naming the variable it is assigned to, or
    the line (at the real MAX_VALUE, 1 MiB: shell.split_words reads such a line in one pass, where
    shlex took tens of seconds)."""
    from simtrain.apps.importers.shell import MAX_VALUE

    big = "v" * (MAX_VALUE * 6 // 10)
    for ref, setup in (("$V", f"V={big}\n"), ("${A[@]}", f"A=({big})\n")):
        for line, key in ((f'W="{ref}{ref}"', "W"), (f'python pretrain_gpt.py --x "{ref}{ref}"',
                                                     "line 2")):  # fmt: skip
            with pytest.raises(ConfigError) as info:
                read_command(setup + line + "\n", "t.sh")
            assert info.value.key == key and f"grows past {MAX_VALUE:,}" in info.value.message
    ok = read_command(f"V={big}\npython pretrain_gpt.py --x $V\n", "t.sh")
    assert ok is not None and ok.args == ("--x", big)


@pytest.mark.parametrize("launcher", ["--nproc_per_node -8 --nnodes -1",
                                      "--nproc_per_node 8 --nnodes -2"])  # fmt: skip
def test_negative_launcher_counts_are_errors(tmp_path: Path, launcher: str) -> None:
    """-8 GPUs a node x -1 nodes read as 8 GPUs: now an error naming the launcher's flag."""
    f = tmp_path / "train.sh"
    f.write_text(f"torchrun {launcher} pretrain_gpt.py --num-layers 2 --hidden-size 256 "
                 "--num-attention-heads 8 --seq-length 128 --vocab-size 1000\n")  # fmt: skip
    with pytest.raises(ConfigError) as info:
        import_config("megatron", f)
    assert info.value.key in ("--nproc_per_node", "--nnodes")


@pytest.mark.parametrize(("layout", "count"), [("Et*999999999999|L", "999999999999"),
                                                ("(tttt)*99999999999999|L", "99999999999999"),
                                                ("Et*4097|L", "4097")])  # fmt: skip
def test_megatron_layout_repeat_counts_are_bounded(tmp_path: Path, layout: str,
                                                   count: str) -> None:  # fmt: skip
    """A layout's ``*n`` past MAX_LAYOUT_REPEAT (4,096) is an error naming the flag, not a string
    of 10^12 characters (MemoryError)."""
    with pytest.raises(ConfigError) as info:
        _mg(tmp_path, MG_BASE + f"--pipeline-model-parallel-size 2 "
            f"--pipeline-model-parallel-layout {layout}")  # fmt: skip
    assert info.value.key == "--pipeline-model-parallel-layout"
    assert count[:12] in info.value.message


@pytest.mark.parametrize("extra", ['[activation_checkpoint]\nmode = "selective"\n'
                                   'selective_ac_option = "²"\n',
                                   "[job]\nx = " + "[" * 600 + "]" * 600 + "\n",
                                   "[job]\nx = 9" + "0" * 5000 + "\n"])  # fmt: skip
def test_torchtitan_digit_look_alikes_and_deep_toml(tmp_path: Path, extra: str) -> None:
    """ "²" passes str.isdigit but not int(); tomllib raises RecursionError on deep arrays and
    ValueError on a 5,000-digit integer, neither a TOMLDecodeError: each a ConfigError."""
    with pytest.raises(ConfigError):
        _tt(tmp_path, extra=extra)


def test_nccl_tests_size_look_alikes_are_not_rows(tmp_path: Path) -> None:
    """A table row whose size is "²" or 5,000 digits is no row (int() refused it: a traceback);
    a rank of 5,000 digits is no rank line."""
    from simtrain.apps.network_fit import parse_nccl_tests

    log = ("# nThread 1 nGpus 1 minBytes 8 maxBytes 1073741824 step: 2(factor) warmup iters: 5\n"
           "#  Rank  0 Group  0 Pid 1 on node-0 device  0 [0x00] NVIDIA H100\n"
           "#  Rank  1 Group  0 Pid 2 on node-0 device  1 [0x00] NVIDIA H100\n"
           "#       size         count      type   redop    root     time   algbw   busbw #wrong\n"
           "  1073741824     268435456     float    none      -1   5000.0  214.7  107.4    0\n"
           "           ²             1     float    none      -1      1.0    1.0    1.0    0\n"
           "  9" + "0" * 5000 + "   1  float  none  -1  1.0  1.0  1.0  0\n"
           "#  Rank 9" + "0" * 5000 + " Group 0 Pid 3 on node-9 device 0\n")  # fmt: skip
    parsed = parse_nccl_tests(log, "all_gather_perf.log")
    assert parsed.size_bytes == 1073741824 and parsed.ranks == 2


def test_deepspeed_stage_as_a_float_is_written_as_an_integer(tmp_path: Path) -> None:
    """``"stage": 3.0`` equals 3 and was written as ``zero_stage: 3.0``."""
    imp = _ds(tmp_path, {**DS_BASE, "zero_optimization": {"stage": 3.0}})
    stage = imp.data["parallelism"]["zero_stage"]
    assert stage == 3 and type(stage) is int


def test_megatron_unknown_transformer_impl_is_an_error(tmp_path: Path) -> None:
    """``--transformer-impl banana`` was read as "not Transformer Engine" (no flash attention)
    without a word: Megatron-Core's Literal allows transformer_engine, local and
    inference_optimized."""
    with pytest.raises(ConfigError) as info:
        _mg(tmp_path, MG_BASE + "--transformer-impl banana")
    assert info.value.key == "--transformer-impl" and "transformer_engine" in str(info.value)
    assert _mg(tmp_path, MG_BASE + "--transformer-impl local").data["model"]["layers"] == 4


def test_megatron_layout_nested_repeats_are_bounded_in_total(tmp_path: Path) -> None:
    """Each *n within bounds, the whole past them: (t*4096 x 4)*4096 is 33 characters that
    unroll to 67,108,865 (a review of the bound above)."""
    with pytest.raises(ConfigError) as info:
        _mg(tmp_path, MG_BASE + "--pipeline-model-parallel-size 2 "
            "--pipeline-model-parallel-layout (" + "t*4096" * 4 + ")*4096|L")  # fmt: skip
    assert info.value.key == "--pipeline-model-parallel-layout" and "unrolls" in str(info.value)


def test_a_comment_ending_in_a_backslash_inside_an_array_drops_only_itself() -> None:
    """A comment line inside an array is dropped at its line end, backslash and all (bash): the
    next item stays (the linear-time shortcut had joined them, losing --bf16; a review)."""
    cmd = read_command("A=(\n  # note \\\n  --bf16\n  --x 1\n)\npython pretrain_gpt.py ${A[@]}\n",
                       "t.sh")  # fmt: skip
    assert cmd is not None and cmd.args == ("--bf16", "--x", "1")


def test_a_command_of_many_whole_array_references_is_refused() -> None:
    """160 "${A[@]}" over an array of 262,144 items built 42 million arguments (1.3 GB; a
    review of the fuzz fixes): the command's expanded words stop at MAX_VALUE characters, an
    error naming the line; an environment prefix on that line is not the culprit named."""
    text = ("A=(x)\n" + "A=(${A[@]} ${A[@]})\n" * 18
            + "CUDA_DEVICE_MAX_CONNECTIONS=1 python pretrain_gpt.py "
            + " ".join(["${A[@]}"] * 160) + "\n")  # fmt: skip
    with pytest.raises(ConfigError) as info:
        read_command(text, "t.sh")
    assert info.value.key == "line 20" and "the command grows past" in info.value.message


def test_a_variable_as_long_as_the_limit_may_be_copied() -> None:
    """W=$V with V just under MAX_VALUE: W is as long as V, not longer (the reference's own
    text is not counted on top of its value)."""
    from simtrain.apps.importers.shell import MAX_VALUE

    v = "v" * (MAX_VALUE - 100)
    cmd = read_command(f"V={v}\nW=$V\npython pretrain_gpt.py --x $W\n", "t.sh")
    assert cmd is not None and cmd.args == ("--x", v)
    with pytest.raises(ConfigError):  # one more character over: refused
        read_command(f"V={v}\nW=${{V}}{'w' * 101}\n", "t.sh")


def test_arrays_the_quote_scanner_reads_right() -> None:
    """Balanced quotes the line-by-line reading settles (a review): a quoted ")" inside an
    item does not close the array (the old reader closed it there and lost --num-layers); a
    line that closes the array and opens a quote closed lines later ends the array all the
    same; "$(nproc)x" (a ")" inside a word) closes nothing."""
    a = read_command('A=(\n --name "run-$(date +%s)"\n --num-layers 2\n)\n'
                     "python pretrain_gpt.py ${A[@]}\n", "t.sh")  # fmt: skip
    assert a is not None and a.args == ("--name", "run-$(date +%s)", "--num-layers", "2")
    b = read_command('OPTS=(\n --num-layers 2\n) && echo "set,\nlaunching"\n'
                     "python pretrain_gpt.py ${OPTS[@]}\n", "t.sh")  # fmt: skip
    assert b is not None and b.program == "pretrain_gpt.py" and b.args[:2] == ("--num-layers", "2")
    c = read_command("A=(\n" + "--x=$(nproc)x\n" * 50 + ")\npython pretrain_gpt.py ${A[@]}\n",
                     "t.sh")  # fmt: skip
    assert c is not None and c.args == ("--x=$(nproc)x",) * 50


def test_words_with_a_paren_inside_are_read_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An array of 2,000 lines holding a ")" inside a word ($(nproc)x) was lexed whole at
    every line (2,500: 18.6 s): a ")" closes the array only at a word's end. Counted in shlex
    readings."""
    count = _counting_lexes(monkeypatch)
    c = read_command("A=(\n" + "--x=$(nproc)x\n" * 2_000 + ")\npython pretrain_gpt.py ${A[@]}\n",
                     "t.sh")  # fmt: skip
    assert c is not None and len(c.args) == 2_000 and count[0] < 10


@pytest.mark.parametrize("flag, value", [("--attention-dropout", "-1"), ("--attention-dropout", "5"),
                                         ("--hidden-dropout", "1"), ("--hidden-dropout", "1e9")])  # fmt: skip
def test_a_dropout_rate_outside_0_1_is_refused(tmp_path: Path, flag: str, value: str) -> None:
    """Megatron's dropout flags are probabilities: -1, 5 and 1e9 were read as rates (-1 as no
    dropout; a fuzz campaign). An error naming the flag; 0 and 0.1 still import."""
    f = tmp_path / "train.sh"
    base = ("torchrun pretrain_gpt.py --num-layers 2 --hidden-size 256 --num-attention-heads 8 "
            "--seq-length 128 --vocab-size 1000")  # fmt: skip
    f.write_text(f"{base} {flag} {value}\n")
    with pytest.raises(ConfigError) as info:
        import_config("megatron", str(f), gpus=8)
    assert info.value.key == flag and "[0, 1)" in info.value.message
    for ok in ("0", "0.1"):
        f.write_text(f"{base} {flag} {ok}\n")
        assert import_config("megatron", str(f), gpus=8)


def test_an_array_ends_at_its_own_paren() -> None:
    """An array's ``)`` is the one that balances its ``(`` (a review): a ``$(...)`` ending a word
    inside it (``$(nvidia-smi -L | wc -l)``) closed it early and lost --nnodes; what follows
    its ``)`` on the line (``) ; NOTE=x``) went into the array, and the ";" then ended the
    launch command where the array was expanded, losing every flag after it; ``--x=$(nproc) )``
    lost the item's own ")"."""
    text = (
        "DIST=(\n    --nproc_per_node $(nvidia-smi -L | wc -l)\n    --nnodes 1\n)\n"
        "MODEL=(\n    --num-layers 24 # (the paper's)\n    --hidden-size $((2 * 512))\n) ; NOTE=x\n"
        "TRAIN=( --micro-batch-size 2 --x=$(nproc) ) && B=(\n  --bf16\n)\n"
        "torchrun ${DIST[@]} pretrain_gpt.py ${MODEL[@]} ${TRAIN[@]} ${B[@]} --seq-length 2048\n"
    )
    c = read_command(text, "t.sh")
    assert c is not None and c.program == "pretrain_gpt.py"
    assert c.launcher == ("torchrun", "--nproc_per_node", "$(nvidia-smi", "-L", "|", "wc", "-l)",
                          "--nnodes", "1")  # fmt: skip
    assert c.args == ("--num-layers", "24", "--hidden-size", "1024", "--micro-batch-size", "2",
                      "--x=$(nproc)", "--bf16", "--seq-length", "2048")  # fmt: skip
    assert c.variables["NOTE"] == "x"


@pytest.mark.parametrize("item", ['"a)"', "'(b'", "\\)", "c # )"])
def test_quoted_escaped_or_commented_parens_do_not_count(item: str) -> None:
    c = read_command(f"A=(\n --x {item}\n --y 2\n)\npython pretrain_gpt.py ${{A[@]}}\n", "t.sh")
    assert c is not None and c.args[-2:] == ("--y", "2")


MEG_BASE = ("torchrun pretrain_gpt.py --num-layers 8 --hidden-size 1024 --num-attention-heads 16 "
            "--seq-length 2048 --max-position-embeddings 2048 --micro-batch-size 2 "
            "--global-batch-size 64 --bf16 --vocab-size 32000")  # fmt: skip


@pytest.mark.parametrize(("extra", "flag"), [
    ("--group-query-attention nan --num-query-groups 4", "--group-query-attention"),
    ("--openai-gelu 1", "--openai-gelu"),
    ("--recompute-granularity full --recompute-method uniform --recompute-num-layers 0",
     "--recompute-num-layers"),
])  # fmt: skip
def test_megatron_values_argparse_would_refuse(tmp_path: Path, extra: str, flag: str) -> None:
    """A value after an on/off flag (argparse: "unrecognized arguments") was dropped without a
    word, and the uniform recompute method's chunks of 0 layers (which never advance) were
    read as chunks of one (a fuzz campaign)."""
    f = tmp_path / "train.sh"
    f.write_text(f"{MEG_BASE} {extra}\n")
    with pytest.raises(ConfigError) as info:
        import_config("megatron", str(f), gpus=8)
    assert info.value.key == flag
    f.write_text(f"{MEG_BASE} {extra.replace(' nan', '').replace(' 1', '').replace(' 0', ' 1')}\n")
    assert import_config("megatron", str(f), gpus=8)


@pytest.mark.parametrize("tail", [";", " ;", " &&", " # done", " ;  # done"])
def test_an_array_closed_before_an_operator_keeps_its_last_item(tail: str) -> None:
    """TRAIN=(... --bf16); kept "--bf16);" as an item, so the import ran in fp32 with only a
    warning (the review): the ")" and the operator after it are cut off."""
    c = read_command(f"A=(--x 1 --bf16){tail}\npython pretrain_gpt.py ${{A[@]}}\n", "t.sh")
    assert c is not None and c.args == ("--x", "1", "--bf16")


def test_megatron_negative_capacity_factor_is_dropless(tmp_path: Path) -> None:
    """Megatron-Core sets a negative --moe-expert-capacity-factor to None, dropless
    (transformer_config.py __post_init__); 0 is an error; the uniform recompute error names
    the flag the script gives."""
    moe = (f"{MEG_BASE} --num-experts 8 --moe-router-topk 2 --expert-model-parallel-size 1 "
           "--moe-expert-capacity-factor")  # fmt: skip
    f = tmp_path / "train.sh"
    f.write_text(f"{moe} -1\n")
    imp = import_config("megatron", str(f), gpus=8)
    assert "capacity_factor" not in imp.data["model"]
    assert any("dropless" in a for a in imp.assumptions)
    f.write_text(f"{moe} 0\n")
    with pytest.raises(ConfigError, match="--moe-expert-capacity-factor"):
        import_config("megatron", str(f), gpus=8)
    f.write_text(f"{MEG_BASE} --checkpoint-activations --checkpoint-num-layers 0\n")
    with pytest.raises(ConfigError) as info:
        import_config("megatron", str(f), gpus=8)
    assert info.value.key == "--checkpoint-num-layers"


def test_an_array_holding_a_hash_inside_a_word_closes() -> None:
    """A=(--n ${#B[@]} --y 2) never closed: its "#" was read as a comment (shlex's reading;
    bash's comment starts a word), so the rest of the script went into the array and no
    launch was found (the review). Lengths expand as bash's: ${#B[@]} the items, ${#V} the
    characters; one of a name the script does not set stays as written (and is reported)."""
    c = read_command("B=(a b c)\nV=hello\nA=(--n ${#B[@]} --y 2)\nNN=$(( ${#B[@]} * 8 ))\n"
                     "python pretrain_gpt.py ${A[@]} --nn $NN --v ${#V} --u ${#U[@]}\n",
                     "t.sh")  # fmt: skip
    assert c is not None
    assert c.args == ("--n", "3", "--y", "2", "--nn", "24", "--v", "5", "--u", "${#U[@]}")


@pytest.mark.parametrize(("value", "stage"), [("3", 3), ("0", 0), (" 2", 2), (1.0, 1)])
def test_deepspeed_stage_as_deepspeed_reads_it(tmp_path: Path, value: Any, stage: int) -> None:
    """DeepSpeed validates zero_optimization with pydantic (ZeroStageEnum(int, Enum), lax): the
    string "3" is stage 3 there, and so here."""
    imp = _ds(tmp_path, {**DS_BASE, "zero_optimization": {"stage": value}})
    sc = load_imported(imp, ["training.seq_len=2048"])
    assert sc.parallelism.zero_stage == stage


@pytest.mark.parametrize("value", ["three", "4", "-1", "", "\u00b3", True, None, 2.5])
def test_deepspeed_stage_bad(tmp_path: Path, value: Any) -> None:
    """Named errors, never a traceback ("\u00b3", a superscript 3, is a digit to str.isdigit
    but no integer to int(): the first reading of a string stage raised ValueError on it)."""
    err = _ds_error(tmp_path, {**DS_BASE, "zero_optimization": {"stage": value}})
    assert err.key == "zero_optimization.stage" and "0 | 1 | 2 | 3" in str(err)
