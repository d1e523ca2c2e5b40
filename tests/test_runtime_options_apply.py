"""A runtime option that cannot apply to the scenario is an error naming both keys (issue 13:
"an option that cannot apply (e.g. tp_comm_overlap with tp 1) is a clear error naming both
keys"). A fuzz campaign found these accepted without a word on a dp-only scenario, the step
time and peak unchanged: spec.scenario.unused_runtime_options."""

from __future__ import annotations

import json

import pytest

from simtrain.apps.compare.variants import BUILTIN_VARIANTS
from simtrain.errors import ConfigError
from simtrain.spec.scenario import load_scenario, unused_runtime_options

DDP = "scenarios/ddp_8gpu.yaml"  # GPT-2 XL, dp 8 on A100s, no flash attention


@pytest.mark.parametrize(("option", "names"), [
    ("cp_attention=a2a", "parallelism.cp = 1"),
    ("pipeline_keeps_stage_outputs=true", "parallelism.pp = 1"),
    ("pipeline_keeps_last_outputs=true", "parallelism.pp = 1"),
    ("zero3_per_gpu_nic=true", "parallelism.zero_stage = 0"),
    ("zero3_gather_copy_out=true", "parallelism.zero_stage = 0"),
    ("moe_implementation=megatron_core", "model.num_experts"),
    ("moe_dispatch_sms=100", "parallelism.ep 1"),
    ("sliding_window_kernel=false", "model.sliding_window"),
    ("tp_gather_buffers=8", "parallelism.tp 1"),
    ("attention_kernel=fa3", "model.flash_attention"),
])  # fmt: skip
def test_an_option_the_scenario_has_nothing_for_is_an_error(option: str, names: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_scenario(DDP, [f"runtime.{option}"])
    assert exc.value.key == f"runtime.{option.split('=')[0]}" and names in exc.value.message


def test_the_profiles_own_value_and_a_layout_that_uses_it_are_kept() -> None:
    """The profile's value may be written out; the same options load where they apply."""
    load_scenario(DDP, ["runtime.cp_attention=te_p2p", "runtime.tp_gather_buffers=0"])
    load_scenario(DDP, ["parallelism.zero_stage=3", "runtime.zero3_per_gpu_nic=true"])
    load_scenario("scenarios/zero3_64gpu.yaml", ["parallelism.dp=32", "parallelism.tp=2",
                  "parallelism.zero_stage=0", "parallelism.sequence_parallel=true",
                  "runtime.tp_gather_buffers=2"])  # fmt: skip
    load_scenario("scenarios/llama3_8b_cp.yaml", ["runtime.cp_attention=a2a"])
    load_scenario("scenarios/mixtral_8x7b_ep8.yaml", ["runtime.moe_implementation=megatron_core"])


def test_fa3_off_hopper_is_an_error() -> None:
    """FlashAttention-3 runs on Hopper only: on an A100 it is an error; fa2 or cudnn, whose
    class a profile may lack, is priced as GEMM FLOPs instead (as `simtrain run` says)."""
    sc = load_scenario(DDP, ["model.flash_attention=true"])
    assert "attention_kernel" not in unused_runtime_options(sc)
    with pytest.raises(ConfigError) as exc:
        load_scenario(DDP, ["model.flash_attention=true", "runtime.attention_kernel=fa3"])
    assert "a100_sxm4_80gb is not one" in exc.value.message
    load_scenario(DDP, ["model.flash_attention=true", "runtime.attention_kernel=cudnn"])
    load_scenario(DDP, ["model.flash_attention=true", "runtime.attention_kernel=fa3",
                        "hardware=h100_sxm5_80gb"])  # fmt: skip


def test_compare_turns_off_a_pipeline_option_when_a_variant_removes_the_pipeline() -> None:
    """compare's ZeRO variants re-lay a dp-1 pipeline out as data parallelism (pp 1): the
    scenario's pipeline option goes back to the profile's value, said in the note."""
    base = ["runtime.pipeline_keeps_stage_outputs=true"]
    sc = load_scenario("scenarios/gpipe_8gpu.yaml", base)
    ov, note = BUILTIN_VARIANTS["zero1"][1](sc)
    assert "runtime.pipeline_keeps_stage_outputs=false" in ov and "pipeline_keeps" in note
    assert load_scenario("scenarios/gpipe_8gpu.yaml", [*base, *ov]).parallelism.pp == 1


def test_tiny_runtime_buckets_name_the_runtime_key() -> None:
    """runtime.reduce_bucket_elements 5 was refused as parallelism.bucket_mb 1e-05, a key and a
    value the user never wrote (a fuzz campaign)."""
    with pytest.raises(ConfigError) as exc:
        load_scenario("scenarios/zero3_64gpu.yaml", ["runtime.reduce_bucket_elements=5"])
    assert exc.value.key == "runtime.reduce_bucket_elements" and exc.value.file == "--set"
    assert "4,194,304" in exc.value.message


@pytest.mark.parametrize("option", [{"moe_dispatcher": "deepep"}, {"moe_fp8_dispatch": True},
                                    {"sliding_window_kernel": False}])  # fmt: skip
def test_a_plans_runtime_option_its_model_rules_out_is_an_error(option: dict) -> None:
    """A plan for a dense model with runtime moe_dispatcher deepep planned every layout without
    it, the option dropped without a word (a fuzz campaign): no layout of the model can use it.
    An option a layout may use (tp_comm_overlap) is left to each layout (apps.plan.layouts)."""
    from simtrain.apps.plan.file import parse_plan
    from simtrain.spec.yamlfile import load_yaml

    data = load_yaml("plans/llama3_8b.yaml")
    data["runtime"] = {"name": "megatron_core", **option}
    with pytest.raises(ConfigError) as exc:
        parse_plan(data, "plan.yaml")
    assert exc.value.key == f"runtime.{next(iter(option))}" and "llama3" in exc.value.message
    data["runtime"] = {"name": "megatron_core", "tp_comm_overlap": True}
    parse_plan(data, "plan.yaml")


def test_compare_turns_off_tp_buffers_when_a_variant_removes_tp() -> None:
    """A dp-1 nanotron layout with tp 4 and sequence parallelism re-laid out at tp 1 by the ZeRO
    variants: the scenario file's tp_gather_buffers goes back to the profile's value (the
    review found the variant refused)."""
    base = ["parallelism.dp=1", "cluster.nodes=2"]
    sc = load_scenario("scenarios/nanotron_playbook_polling.yaml", base)
    assert sc.parallelism.tp > 1 and sc.parallelism.sequence_parallel
    ov, note = BUILTIN_VARIANTS["zero1"][1](sc)
    assert any(o.startswith("runtime.tp_gather_buffers=") for o in ov) and "tp_gather" in note
    assert (
        load_scenario("scenarios/nanotron_playbook_polling.yaml", [*base, *ov]).parallelism.tp == 1
    )


def test_zero3_nic_needs_stage_3_and_the_window_kernel_flash() -> None:
    """zero3_per_gpu_nic is read by ZeRO-3's per-layer collectives only (stage 2 gave the same
    step time either way), the window kernel by the flash attention path only (the review)."""
    with pytest.raises(ConfigError, match="zero_stage = 2"):
        load_scenario("scenarios/zero3_64gpu.yaml", ["parallelism.zero_stage=2",
                                                     "runtime.zero3_per_gpu_nic=true"])  # fmt: skip
    load_scenario("scenarios/zero3_64gpu.yaml", ["parallelism.zero_stage=2",
                                                 "runtime.zero3_gather_copy_out=true"])  # fmt: skip
    with pytest.raises(ConfigError, match="flash_attention false"):
        load_scenario(DDP, ["model.sliding_window=512", "runtime.sliding_window_kernel=false"])


def test_a_planned_best_yaml_runs_without_the_options_its_layout_cannot_use(tmp_path) -> None:
    """A plan's runtime cp_attention a2a went into a cp-1 layout's best.yaml, which simtrain run
    then refused (the review): each layout's scenario drops what it has nothing for."""
    from simtrain.apps.plan.file import parse_plan
    from simtrain.apps.plan.layouts import Layout, scenario_data
    from simtrain.spec.yamlfile import load_yaml

    data = load_yaml("plans/llama3_8b.yaml")
    data["runtime"] = {"name": "megatron_core", "cp_attention": "a2a",
                       "pipeline_keeps_stage_outputs": True, "tp_comm_overlap": True}  # fmt: skip
    plan = parse_plan(data, "plan.yaml")
    lay = Layout("h100_sxm5_80gb", 64, 1, 1, 64, 1, 1, "full", "1f1b", 1, 512)
    sc_data = scenario_data(plan, lay)
    assert sc_data["runtime"] == {"name": "megatron_core"}
    path = tmp_path / "best.yaml"
    path.write_text(json.dumps(sc_data))  # (JSON is YAML)
    assert load_scenario(path).parallelism.cp == 1


def test_the_smallest_bucket_hint_is_accepted_and_is_the_smallest() -> None:
    """The hint the bucket-count error prints, read from its message: Mixtral 8x7B with 65,536
    experts (369,446,101,454,848 parameters) needs buckets of at least P·4 / 2^22 bytes =
    352.33126 MB. The printed hint (352.3314: rounded up to 1e-4 MB, one step of margin) loads;
    352.3312, below the bound, is refused. (It printed with :g, 352.331 MB, which the same check
    refused: a review found it.)"""
    import re

    sets = ["model.preset=mixtral-8x7b", "model.num_experts=65536"]
    with pytest.raises(ConfigError) as exc:
        load_scenario(DDP, [*sets, "parallelism.bucket_mb=1"])
    assert "369,446,101,454,848 parameters" in exc.value.message
    found = re.search(r"at least ([0-9.]+) MB", exc.value.message)
    assert found is not None
    hint = found.group(1)
    assert hint == "352.3314"  # ceil(P·4 / 2^22) bytes = 352,331,277 B, to 1e-4 MB and a step
    assert load_scenario(DDP, [*sets, f"parallelism.bucket_mb={hint}"]).parallelism.bucket_mb \
        == float(hint)  # fmt: skip
    with pytest.raises(ConfigError):
        load_scenario(DDP, [*sets, f"parallelism.bucket_mb={float(hint) - 2e-4:.4f}"])
