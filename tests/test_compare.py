"""simtrain compare: each technique moves the categories it should, costs time from the
simulation, and a ladder rung is exactly the scenario with all the overrides so far."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from simtrain.apps.compare import (
    BUILTIN_VARIANTS,
    VariantRow,
    compare,
    compare_command,
    parse_variant,
    split_variants,
)
from simtrain.apps.simulate import simulate_scenario
from simtrain.errors import ConfigError
from simtrain.spec.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
WALK = str(ROOT / "scenarios/lecture_walk_gpt2xl.yaml")
DDP = str(ROOT / "scenarios/ddp_8gpu.yaml")
GIB = 2**30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LECTURE_LADDER = ["amp", "checkpointing", "grad_accum_4", "lora", "qlora", "zero3"]
ALL_CATEGORIES = ("parameters", "stashed_weights", "master_weights", "gradients",
                  "optimizer_states", "activations", "cuda_context", "buffers")  # fmt: skip
# Keys of a row that describe how it was reached rather than what it is.
PROVENANCE = ("name", "description", "note", "overrides", "cumulative_overrides")


@pytest.fixture(scope="module")
def alone() -> dict[str, VariantRow]:
    """Every built-in variant alone against the lecture's fp32 baseline."""
    comp = compare(WALK, list(BUILTIN_VARIANTS))
    assert not comp.ladder and comp.rows[0].name == "baseline"
    return {r.name: r for r in comp.rows}


@pytest.fixture(scope="module")
def ladder():
    return compare(WALK, LECTURE_LADDER, ladder=True)


def cats(row: VariantRow) -> dict[str, int]:
    return dict(row.memory_bytes)


def changed(a: VariantRow, b: VariantRow) -> set[str]:
    return {c for c in ALL_CATEGORIES if cats(a)[c] != cats(b)[c]}


def forward_s(scenario: str, overrides: tuple[str, ...] = ()) -> float:
    """Seconds of forward (F) spans in the simulated step, from the timeline."""
    tl = simulate_scenario(load_scenario(scenario, overrides)).timeline
    return sum(s.duration_ns for s in tl.spans if s.kind == "F") / 1e9


# ---------------------------------------------------------------------------------------------
# The baseline: the lecture's first slide


def test_baseline_is_the_lecture_first_slide(alone: dict[str, VariantRow]) -> None:
    base = alone["baseline"]
    assert 84e9 <= base.peak_memory_bytes <= 88.5e9
    assert not base.fits
    assert base.gpus == 1 and base.trainable_params == base.params == 1_557_611_200
    # Same settings as the seed scenario: the two files give the same memory.
    seed = compare(str(ROOT / "scenarios/seed_1p5b_fp32.yaml"), []).rows[0]
    assert seed.memory_bytes == base.memory_bytes
    assert seed.peak_memory_bytes == base.peak_memory_bytes


# ---------------------------------------------------------------------------------------------
# Each technique moves the categories it should and no others


def test_amp_moves_model_states_and_halves_activations(alone: dict[str, VariantRow]) -> None:
    base, amp = alone["baseline"], alone["amp"]
    # buffers: the step casts the 16-bit gradients to fp32 master gradients (4 B/param)
    assert changed(base, amp) == {"parameters", "master_weights", "gradients", "activations",
                                  "buffers"}  # fmt: skip
    n = base.params
    assert cats(amp)["buffers"] - cats(base)["buffers"] == 4 * n
    assert cats(amp)["parameters"] == cats(base)["parameters"] // 2 == 2 * n
    assert cats(amp)["gradients"] == cats(base)["gradients"] // 2
    assert cats(base)["master_weights"] == 0 and cats(amp)["master_weights"] == 4 * n
    assert cats(amp)["optimizer_states"] == cats(base)["optimizer_states"] == 8 * n
    ratio = cats(amp)["activations"] / cats(base)["activations"]
    assert 0.4 <= ratio <= 0.6, ratio
    assert amp.overrides == ("training.precision=bf16",)


def test_mixed_precision_is_faster_where_16_bit_peak_exceeds_fp32() -> None:
    sc = load_scenario(WALK)
    assert sc.hardware.peak("bf16") > sc.hardware.peak("fp32")  # A100: 312 vs 19.5 TFLOP/s
    base, amp = compare(WALK, ["amp"]).rows
    assert amp.step_time_s < base.step_time_s / 4  # the matmuls dominate the step


def test_checkpointing_changes_only_activations_and_adds_a_forward(
    alone: dict[str, VariantRow],
) -> None:
    base, ck = alone["baseline"], alone["checkpointing"]
    assert changed(base, ck) == {"activations"}
    assert cats(ck)["activations"] < cats(base)["activations"] / 5
    extra = ck.step_time_s - base.step_time_s
    fwd = forward_s(WALK)
    assert 0.5 * fwd <= extra <= 1.2 * fwd, (extra, fwd)
    assert dict(ck.time_breakdown_s)["recompute"] > 0 == dict(base.time_breakdown_s)["recompute"]


def test_selective_recompute_changes_only_activations(alone: dict[str, VariantRow]) -> None:
    base, sel = alone["baseline"], alone["selective_recompute"]
    assert changed(base, sel) == {"activations"}
    assert cats(alone["checkpointing"])["activations"] < cats(sel)["activations"]
    assert cats(sel)["activations"] < cats(base)["activations"]
    assert base.step_time_s < sel.step_time_s < alone["checkpointing"].step_time_s


def test_lora_keeps_the_base_and_removes_most_gradients_and_states(
    alone: dict[str, VariantRow],
) -> None:
    base, lora = alone["baseline"], alone["lora"]
    assert cats(base)["parameters"] <= cats(lora)["parameters"] <= 1.01 * cats(base)["parameters"]
    for c in ("gradients", "optimizer_states"):
        assert cats(lora)[c] < 0.05 * cats(base)[c], c
    assert lora.trainable_params < 0.01 * lora.params
    assert cats(lora)["cuda_context"] == cats(base)["cuda_context"]
    # Frozen weights skip their weight-gradient matmuls.
    assert lora.step_time_s < 0.85 * base.step_time_s


def test_qlora_quantises_the_base_and_targets_every_linear_module(
    alone: dict[str, VariantRow],
) -> None:
    base, q = alone["baseline"], alone["qlora"]
    sc = load_scenario(WALK, q.cumulative_overrides)
    assert sc.training.peft.method == "qlora" and sc.training.precision == "bf16"
    assert set(sc.training.peft.target_modules) == set(sc.model.linear_weight_shapes())
    assert cats(q)["parameters"] < cats(base)["parameters"] / 6  # 4 bits instead of 32
    assert cats(q)["master_weights"] == 0
    assert cats(q)["optimizer_states"] < 0.05 * cats(base)["optimizer_states"]


def test_peft_methods_train_few_parameters(alone: dict[str, VariantRow]) -> None:
    base = alone["baseline"]
    for name in ("prefix", "prompt", "adapter", "linear_probe"):
        r = alone[name]
        assert r.trainable_params < 0.06 * base.trainable_params, name
        assert cats(r)["optimizer_states"] < 0.06 * cats(base)["optimizer_states"], name
    # Linear probing: no gradient flows through the blocks, so they save no activations.
    assert cats(alone["linear_probe"])["activations"] < 0.1 * cats(base)["activations"]


def test_offload_moves_optimizer_states_to_the_host(alone: dict[str, VariantRow]) -> None:
    base, off = alone["baseline"], alone["offload"]
    assert base.host_memory_bytes == 0
    assert cats(off)["optimizer_states"] == 0
    # Adam's states, and DeepSpeed's pinned fp32 master partition (fp32 training: a host copy
    # of the GPU's fp32 weights), fp32 gradient buffer and 16-bit (here fp32) parameter buffer:
    # 4 + 4 + 4 B per parameter (costs.offload; one micro-batch: no accumulator).
    n = base.trainable_params
    assert off.host_memory_bytes == cats(base)["optimizer_states"] + 12 * n
    # Buffers may lose the GPU-side temporaries of the optimizer step (it now runs on the CPU).
    assert changed(base, off) <= {"optimizer_states", "buffers"}
    assert cats(off)["buffers"] <= cats(base)["buffers"]
    assert off.step_time_s > base.step_time_s  # PCIe transfers and a CPU Adam step


def test_zero_stages_shrink_per_gpu_model_states(alone: dict[str, VariantRow]) -> None:
    base, z1, z2, z3 = (alone[k] for k in ("baseline", "zero1", "zero2", "zero3"))
    dp = 8
    for z in (z1, z2, z3):
        assert z.gpus == dp  # a 1-GPU scenario: ZeRO over the 8 GPUs of one node
        assert "1 GPU" in z.note
        assert cats(z)["activations"] == cats(base)["activations"]  # same micro-batches per GPU
        assert -(-cats(base)["optimizer_states"] // dp) == cats(z)["optimizer_states"]
    assert cats(z1)["gradients"] == cats(base)["gradients"]
    assert cats(z1)["parameters"] == cats(base)["parameters"]
    assert cats(z2)["gradients"] == -(-cats(base)["gradients"] // dp)
    assert cats(z2)["parameters"] == cats(base)["parameters"]
    assert cats(z3)["parameters"] == -(-cats(base)["parameters"] // dp)
    model_states = ("parameters", "master_weights", "gradients", "optimizer_states")
    totals = [sum(cats(r)[c] for c in model_states) for r in (base, z1, z2, z3)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4


def test_zero_on_a_data_parallel_scenario_only_sets_the_stage() -> None:
    base, z = compare(DDP, ["zero2"]).rows
    assert z.overrides == ("parallelism.zero_stage=2",) and z.gpus == base.gpus == 8
    assert cats(z)["gradients"] == -(-cats(base)["gradients"] // 8)


def test_batch_variants_are_functions_of_the_current_scenario() -> None:
    comp = compare(WALK, ["half_batch", "half_batch", "grad_accum_4"], ladder=False)
    setups = [dict(r.setup) for r in comp.rows]
    assert [(s["micro_batch"], s["global_batch"]) for s in setups] == [(12, 12), (6, 6), (6, 6),
                                                                       (3, 12)]  # fmt: skip
    comp = compare(WALK, ["half_batch", "half_batch"], ladder=True)
    assert [dict(r.setup)["micro_batch"] for r in comp.rows] == [12, 6, 3]
    assert [dict(r.setup)["global_batch"] for r in comp.rows] == [12, 6, 3]
    half = comp.rows[1]
    assert changed(comp.rows[0], half) <= {"activations", "buffers", "gradients"}
    assert 0.4 < cats(half)["activations"] / cats(comp.rows[0])["activations"] < 0.6
    with pytest.raises(ConfigError, match="half_batch"):
        compare(WALK, ["half_batch", "half_batch", "half_batch"], ladder=True)  # 3 is odd


def test_grad_accum_keeps_the_global_batch_and_cuts_activations(
    alone: dict[str, VariantRow],
) -> None:
    base, ga = alone["baseline"], alone["grad_accum_4"]
    assert dict(ga.setup)["global_batch"] == 12 and dict(ga.setup)["microbatches"] == 4
    assert cats(ga)["activations"] < 0.3 * cats(base)["activations"]
    assert ga.tokens_per_s == pytest.approx(base.tokens_per_s, rel=0.05)


# ---------------------------------------------------------------------------------------------
# The ladder


def test_ladder_rungs_equal_the_scenario_with_all_overrides(ladder) -> None:
    rows = ladder.rows
    assert [r.name for r in rows] == ["baseline", *LECTURE_LADDER]
    for r in rows:
        direct = compare(WALK, [], overrides=r.cumulative_overrides).rows[0].to_json()
        got = r.to_json()
        for k in PROVENANCE:
            got.pop(k), direct.pop(k)
        assert got == direct, r.name
    # Cumulative, not each alone: the checkpointing rung is in bf16 (and 10x faster).
    ck_alone = compare(WALK, ["checkpointing"]).rows[1]
    assert dict(rows[2].setup)["precision"] == "bf16" != dict(ck_alone.setup)["precision"]
    assert rows[2].step_time_s < ck_alone.step_time_s / 4
    assert rows[2].cumulative_overrides == ("training.precision=bf16", "training.recompute=full")


def test_ladder_walks_the_lecture_from_88_to_33_gb(ladder) -> None:
    peaks = [r.peak_memory_bytes for r in ladder.rows]
    assert peaks == sorted(peaks, reverse=True)
    assert 84e9 <= peaks[0] <= 88.5e9 and not ladder.rows[0].fits
    # amp + checkpointing + accumulation, the lecture's second slide: it counts 26.8 GB; the
    # step's fp32 master gradients (4 B/param) add 6.2 GB and set the peak, so accumulation no
    # longer lowers it (measured on an H200 at b 6: 30.22 GiB, measured/simtrain_h200.yaml)
    assert 32e9 <= peaks[3] <= 33e9 and peaks[3] == peaks[2]
    assert all(r.fits for r in ladder.rows[1:])
    assert peaks[-1] < 5e9


def test_at_peak_composition_sums_to_the_peak(ladder) -> None:
    for r in ladder.rows:
        assert sum(v for _, v in r.at_peak_bytes) == r.peak_memory_bytes, r.name


# ---------------------------------------------------------------------------------------------
# Variants: names, ad-hoc lists, errors


def test_unknown_variant_is_a_config_error_listing_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        compare(WALK, ["amp", "turbo"])
    msg = str(exc.value)
    assert "turbo" in msg and "qlora" in msg and "zero3" in msg and "KEY=VALUE" in msg
    with pytest.raises(ConfigError):
        compare_command(WALK, "amp,turbo", False, "/nonexistent-never-written", False, ())


def test_adhoc_variants(tmp_path: Path) -> None:
    comp = compare(WALK, ["short:training.seq_len=512", "training.micro_batch=6"])
    base, short, mb6 = comp.rows
    assert short.name == "short" and short.overrides == ("training.seq_len=512",)
    assert dict(short.setup)["seq_len"] == 512
    assert 0.4 < cats(short)["activations"] / cats(base)["activations"] < 0.6
    assert mb6.name == "micro_batch=6" and dict(mb6.setup)["micro_batch"] == 6
    with pytest.raises(ConfigError, match="variant 'bad'"):
        compare(WALK, ["bad:training.precision=fp8"])


def test_split_variants_keeps_adhoc_lists_together() -> None:
    assert split_variants("amp, checkpointing") == ["amp", "checkpointing"]
    assert split_variants("amp,x:training.seq_len=512,training.micro_batch=6,lora") == [
        "amp", "x:training.seq_len=512,training.micro_batch=6", "lora",
    ]  # fmt: skip
    specs = split_variants("t:training.peft.method=lora,training.peft.target_modules=q,k,v,zero1")
    assert specs == ["t:training.peft.method=lora,training.peft.target_modules=q,k,v", "zero1"]
    v = parse_variant(specs[0])
    assert v.overrides(load_scenario(WALK))[0] == (
        "training.peft.method=lora", "training.peft.target_modules=q,k,v",
    )  # fmt: skip
    assert split_variants("a:training.seq_len=512,b:training.micro_batch=6") == [
        "a:training.seq_len=512", "b:training.micro_batch=6",
    ]  # fmt: skip


def test_a_key_set_twice_in_one_variant_is_an_error_naming_both() -> None:
    """Issue 15: ``training.micro_batch=2,training.micro_batch=4`` is one ad-hoc variant (a comma
    continues it) whose second value used to win silently."""
    with pytest.raises(ConfigError) as exc:
        compare_command(WALK, "training.micro_batch=2,training.micro_batch=4", False,
                        "/nonexistent-never-written", False, ())  # fmt: skip
    msg = str(exc.value)
    assert "training.micro_batch twice" in msg
    assert "'training.micro_batch=2'" in msg and "'training.micro_batch=4'" in msg
    assert "a:training.micro_batch=2,b:training.micro_batch=4" in msg  # how to compare both
    with pytest.raises(ConfigError, match="training.seq_len twice"):
        parse_variant("x:training.seq_len=512, training.seq_len =256")
    with pytest.raises(ConfigError, match="training.peft and training.peft.rank, which overlap"):
        parse_variant("x:training.peft={method: lora},training.peft.rank=4")
    # named, the two are side by side
    assert [parse_variant(v).name for v in split_variants(
        "a:training.micro_batch=2,b:training.micro_batch=4")] == ["a", "b"]  # fmt: skip


@pytest.mark.parametrize(
    "variants",
    ["a:training.seq_len=512,a:training.micro_batch=6",
     "x:training.seq_len=512,amp,x:training.micro_batch=6", "baseline:training.seq_len=512"],
)  # fmt: skip
def test_one_name_for_two_different_variants_is_an_error(variants: str) -> None:
    """Rows are told apart by name; the same variant twice stays allowed (a ladder of
    half_batch,half_batch halves twice: test_batch_variants_are_functions_of_the_current_scenario)."""
    with pytest.raises(ConfigError) as exc:
        compare_command(WALK, variants, False, "/nonexistent-never-written", False, ())
    msg = str(exc.value)
    assert msg.startswith("--variants:") and (
        "two different variants" in msg or "'baseline'" in msg
    )
    assert "\n" not in msg


# ---------------------------------------------------------------------------------------------
# Outputs


def test_compare_command_writes_table_csv_json_and_pictures(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    text = compare_command(WALK, "amp,checkpointing,offload", True, str(out), False, ())
    assert "baseline" in text and "checkpointing" in text and "GiB" in text
    assert "--set training.recompute=full" in text
    files = {p.name for p in out.iterdir()}
    assert files == {"compare.csv", "compare.json", "ladder.png", "tradeoff.png"}
    for png in ("ladder.png", "tradeoff.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    doc = json.loads((out / "compare.json").read_text())
    assert doc["schema_version"] == 1 and doc["mode"] == "ladder"
    assert [r["name"] for r in doc["rows"]] == ["baseline", "amp", "checkpointing", "offload"]
    for r in doc["rows"]:
        assert set(r["memory_bytes"]) == set(ALL_CATEGORIES)
        for k in ("peak_memory_bytes", "fits", "step_time_s", "tokens_per_s", "mfu",
                  "trainable_params", "host_memory_bytes"):  # fmt: skip
            assert k in r
    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [r["variant"] for r in rows] == ["baseline", "amp", "checkpointing", "offload"]
    assert int(rows[-1]["host_memory_bytes"]) > 0
    assert int(rows[1]["peak_memory_bytes"]) == doc["rows"][1]["peak_memory_bytes"]
    # --json prints the same deterministic document that was written.
    again = compare_command(WALK, "amp,checkpointing,offload", True, str(out), True, ())
    assert again == (out / "compare.json").read_text()


def test_zero_variants_shard_over_the_context_parallel_ranks() -> None:
    """A scenario with dp 1 but cp 8 (llama3_8b_cp) already has 8 data x context-parallel
    ranks: the ZeRO variants set the stage there, with no re-layout (review: they set dp to all
    8 GPUs beside cp 8, a 64-GPU layout on 8 GPUs, and failed)."""
    from simtrain.apps.compare.variants import BUILTIN_VARIANTS
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario("scenarios/llama3_8b_cp.yaml")
    assert (sc.parallelism.dp, sc.parallelism.cp) == (1, 8)
    for stage in (1, 2, 3):
        overrides, note = BUILTIN_VARIANTS[f"zero{stage}"][1](sc)
        assert overrides == (f"parallelism.zero_stage={stage}",) and note == ""
        assert load_scenario("scenarios/llama3_8b_cp.yaml", list(overrides)).parallelism.gpus == 8


def test_compare_names_each_rows_mfu_peak_and_estimated_gpus(tmp_path) -> None:
    """fp32 at 63.6 % MFU beside AMP at 55.3 % read as if AMP were slower: the footnote names
    each row's peak; a GPU with an estimated efficiency is named with the caveat."""
    from click.testing import CliRunner

    from simtrain.cli import main

    out = CliRunner().invoke(main, ["compare", "scenarios/gpipe_8gpu.yaml", "--variants",
                                    "fp32:training.precision=fp32,mi300:hardware=mi300x_192gb",
                                    "--out", str(tmp_path)])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "fp32: the fp32 peak 19.5 TFLOP/s" in out.output
    assert "baseline: the bf16 peak 312 TFLOP/s" in out.output
    assert "estimated GPU efficiency: mi300x_192gb: efficiency.matmul is an estimate" in out.output
