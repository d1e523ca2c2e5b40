"""The interleaved schedules' micro-batch groups (``parallelism.microbatch_group_size``, N):
Megatron-Core's ``microbatch_group_size_per_vp_stage`` and torch's ScheduleInterleaved1F1B
rounds. Checked against Megatron's own documented examples, torch 2.13's per-rank orders
action for action, the closed-form bubble and warm-up, and the scenario's errors."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from torch_pipelining import interleaved_1f1b

from simtrain.apps.importers import import_config
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError, ScheduleError
from simtrain.schedules import interleaved, peak_in_flight, validate_schedule
from simtrain.schedules.actions import Action
from simtrain.schedules.generators import (
    check_group,
    combined_1f1b,
    schedule_table,
    torch_group_override,
    torch_rounds_group,
)
from simtrain.schedules.unit_time import simulate_unit
from simtrain.spec.scenario import load_scenario

SCENARIO = "scenarios/interleaved_8gpu.yaml"  # pp 8, v 2, micro_batch 8, dp 1


def test_schedule_table_is_megatrons_documented_example() -> None:
    """Megatron-Core model_parallel_config.py (d98e8a64) documents the forward order of rank 0
    at PP 2, VP 2: N 2, M 4 -> 0 1 0 1 2 3 2 3; N 3, M 5 -> 0 1 2 0 1 2 3 4 3 4."""
    assert [mb for mb, _ in schedule_table(4, 2, 2)] == [0, 1, 0, 1, 2, 3, 2, 3]
    assert [mb for mb, _ in schedule_table(5, 2, 3)] == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]
    assert [c for _, c in schedule_table(5, 2, 3)] == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    forwards = [a.microbatch for a in interleaved(2, 5, 2, 3)[0] if a.kind == "F"]
    assert forwards == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]


@pytest.mark.parametrize("pp", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("v", [2, 3, 4])
def test_groups_are_torchs_interleaved_order(pp: int, v: int) -> None:
    """torch's ScheduleInterleaved1F1B, built by its own __init__ (tests/torch_pipelining.py),
    accepts exactly the m :func:`torch_rounds_group` gives a group for, with that group as its
    rounds; with it simtrain's order is torch's, action for action, for every m up to 24 torch
    accepts: m not a multiple of pp, and m < pp (one round)."""
    seen = 0
    for m in range(1, 25):
        got = interleaved_1f1b(pp, m, v)
        assert (got is None) == (torch_rounds_group(pp, m) is None), (pp, v, m)
        if got is None:
            continue
        theirs, n = got
        assert n == torch_rounds_group(pp, m), (pp, v, m)
        ours = interleaved(pp, m, v, n)
        assert {r: acts[:-1] for r, acts in ours.items()} == theirs, (pp, v, m, n)
        seen += 1
    assert seen >= 12  # (pp 2: 14 of the 24 m; torch refuses m that its rounds do not divide)


def test_the_group_override_by_hand() -> None:
    """What a torch-pipelining record or config sets: pp 4, m 8 -> two rounds of 4, the default
    (0); m 10 -> two rounds of 5; m 3 -> one round of 3; m 9 -> two rounds do not divide 9,
    torch refuses (None)."""
    assert [torch_group_override(4, m) for m in (8, 10, 3, 9)] == [0, 5, 3, None]


@pytest.mark.parametrize("pp", [2, 3, 4, 8])
@pytest.mark.parametrize("v", [2, 3])
def test_every_accepted_group_is_a_valid_step_with_the_closed_form_bubble(pp: int, v: int) -> None:
    """Every N that :func:`check_group` accepts gives a deadlock-free order; with N >= pp and
    unit chunk times (F 1/v, B 2/v) the makespan is 3m + 3(p - 1)/v, the bubble
    (p - 1)/(v·m + p - 1) of Narayanan et al. 2021 §2.2.2, whatever N; each rank's activation
    peak is Megatron's warm-up plus one, min(2(p - r - 1) + (v - 1)·N + 1, v·m), and combined
    1F1B's one more. Groups that are refused are exactly those outside Megatron-Core's [pp, m]
    (but torch's one group of m < pp for interleaved) and the short last groups."""
    durations = {"F": Fraction(1, v), "B": Fraction(2, v)}
    for m in range(1, 21):
        for n in range(1, m + 1):
            try:
                check_group("interleaved", pp, m, n)
            except ScheduleError:
                assert (n < pp and not n == m < pp) or 0 < m % n < pp
                continue
            order = interleaved(pp, m, v, n)
            validate_schedule(order, pp, m, v)
            if n < pp:  # torch's one round of m < pp: Megatron-Core's combined 1F1B refuses it
                with pytest.raises(ScheduleError, match=r"\[pp = "):
                    combined_1f1b(pp, m, v, n)
                continue
            combined = combined_1f1b(pp, m, v, n)
            validate_schedule(combined, pp, m, v)
            assert peak_in_flight(combined) == {
                r: min(2 * (pp - r - 1) + (v - 1) * n + 2, v * m) for r in range(pp)
            }, (pp, v, m, n)
            makespan, _ = simulate_unit(order, pp, v, durations)
            assert makespan == 3 * m + Fraction(3 * (pp - 1), v), (pp, v, m, n)
            expected = {r: min(2 * (pp - r - 1) + (v - 1) * n + 1, v * m) for r in range(pp)}
            assert peak_in_flight(order) == expected, (pp, v, m, n)


def test_default_group_is_pp_and_errors_list_what_works() -> None:
    assert interleaved(4, 8, 2) == interleaved(4, 8, 2, 4)
    with pytest.raises(ScheduleError, match="last group of 2 .*work for m = 6: 6"):
        interleaved(4, 6, 2)
    with pytest.raises(ScheduleError, match="must not exceed .*work for m = 6: 6"):
        interleaved(4, 6, 2, 7)
    with pytest.raises(ScheduleError, match=r"\[pp = 4, m = 6\].*work for m = 6: 6"):
        interleaved(4, 6, 2, 3)  # (N = 3 adds bubbles, N = 2 deadlocks: Megatron refuses both)
    with pytest.raises(ScheduleError, match=r"work for m = 3: 3"):
        interleaved(4, 3, 2)  # m < pp: the default group pp is too big, torch's m is offered
    with pytest.raises(ScheduleError, match="needs v > 1"):
        interleaved(4, 8, 1, 4)
    validate_schedule(interleaved(4, 6, 2, 6), 4, 6, 2)  # one group of 6
    validate_schedule(interleaved(4, 3, 2, 3), 4, 3, 2)  # torch's m < pp: one round of 3


def test_groups_below_pp_are_what_megatron_refuses() -> None:
    """Megatron-Core's [pp, m] range is not arbitrary: built regardless of the check, N = 2 at
    pp 4 deadlocks (its warm-up waits on a backward its own later forwards feed) and N = 3
    runs, slower than the closed form."""
    from simtrain.schedules.generators import _interleaved_rank

    def raw(pp: int, m: int, v: int, n: int) -> dict[int, list[Action]]:
        return {r: [*_interleaved_rank(r, pp, m, v, 0, n), Action(r, "OPT")] for r in range(pp)}

    with pytest.raises(ScheduleError, match="deadlock"):
        validate_schedule(raw(4, 6, 2, 2), 4, 6, 2)
    validate_schedule(raw(4, 6, 2, 3), 4, 6, 2)
    makespan, _ = simulate_unit(raw(4, 6, 2, 3), 4, 2, {"F": Fraction(1, 2), "B": Fraction(1)})
    assert makespan > 3 * 6 + Fraction(3 * 3, 2)


def test_scenario_group_moves_memory_not_time() -> None:
    """pp 8, v 2, m 16: N 16 instead of 8 holds (v - 1)·8 = 8 more chunk micro-batches on
    rank 0 (warm-up 14 + N, capped at v·m = 32), so more activation memory; the step time
    moves by less than 0.1 % (the bubble does not depend on N)."""
    base = load_scenario(SCENARIO, ["training.global_batch=128"])
    wide = load_scenario(SCENARIO, ["training.global_batch=128",
                                    "parallelism.microbatch_group_size=16"])  # fmt: skip
    a, b = estimate_memory(base), estimate_memory(wide)
    assert b.stages[0].peak_memory_bytes > a.stages[0].peak_memory_bytes
    # in whole-stage units: (14 + N + 1) / v chunk micro-batches on rank 0, v·m / v on rank 7
    assert a.stages[0].microbatches_in_flight == (14 + 8 + 1) / 2
    assert b.stages[0].microbatches_in_flight == min(14 + 16 + 1, 32) / 2
    assert a.stages[-1].microbatches_in_flight == b.stages[-1].microbatches_in_flight - 4
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.layout.step import resolve

    assert resolve(wide).schedule == interleaved(8, 16, 2, 16)  # the simulation plays N = 16
    assert resolve(base).schedule == interleaved(8, 16, 2)
    ta = simulate_scenario(base, detail=False).metrics.step_time_s
    tb = simulate_scenario(wide, detail=False).metrics.step_time_s
    assert abs(tb - ta) / ta < 1e-3  # (the orders differ: the two schedule checks above)


def test_scenario_allows_microbatches_pp_does_not_divide() -> None:
    """m = 12 over pp 8: refused with Megatron's default group (the last group, 4, is short of
    pp), accepted as one group of 12."""
    with pytest.raises(ConfigError) as e:
        load_scenario(SCENARIO, ["training.global_batch=96"])
    assert e.value.key == "training.global_batch" and "groups that work for m = 12: 12" in str(
        e.value
    )
    sc = load_scenario(SCENARIO, ["training.global_batch=96",
                                  "parallelism.microbatch_group_size=12"])  # fmt: skip
    assert sc.num_microbatches == 12 and estimate_memory(sc).stages


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["parallelism.microbatch_group_size=9", "training.global_batch=96"], "last group of 3"),
        (["parallelism.microbatch_group_size=4"], "must be in [pp = 8, m = 8]"),
        (["parallelism.microbatch_group_size=9"], "must not exceed"),
        (["parallelism.microbatch_group_size=8", "parallelism.virtual_stages=1"],
         "virtual_stages > 1"),
        (["parallelism.microbatch_group_size=8", "parallelism.schedule=1f1b",
          "parallelism.virtual_stages=1"], "interleaved or combined_1f1b"),
        (["parallelism.microbatch_group_size=-1"], ">= 0"),
    ],
)  # fmt: skip
def test_scenario_errors_name_the_key(sets: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_scenario(SCENARIO, sets)
    assert e.value.key == "parallelism.microbatch_group_size"
    assert needle in str(e.value)


def _megatron(tmp_path: Path, extra: str) -> object:
    f = tmp_path / "train.sh"
    f.write_text(
        "torchrun pretrain_gpt.py --num-layers 16 --hidden-size 1024 --num-attention-heads 16 "
        "--seq-length 1024 --max-position-embeddings 1024 --micro-batch-size 1 "
        "--global-batch-size 12 --pipeline-model-parallel-size 4 --bf16 " + extra
    )
    return import_config("megatron", f, model=None, gpus=4)


def test_megatron_importer_reads_the_group(tmp_path: Path) -> None:
    """--microbatch-group-size-per-virtual-pipeline-stage (model_parallel_config.py): 12
    micro-batches over pp 4, v 2 in one group of 6 (12 % 6 = 0); below pp Megatron raises;
    without virtual stages the flag has no effect."""
    flag = "--microbatch-group-size-per-virtual-pipeline-stage"
    imp = _megatron(tmp_path, f"--num-virtual-stages-per-pipeline-rank 2 {flag} 6")
    assert imp.data["parallelism"]["microbatch_group_size"] == 6
    with pytest.raises(ConfigError) as e:
        _megatron(tmp_path, f"--num-virtual-stages-per-pipeline-rank 2 {flag} 3")
    assert e.value.key == flag
    imp = _megatron(tmp_path, f"{flag} 6")
    assert "microbatch_group_size" not in imp.data["parallelism"]


def _torchtitan(tmp_path: Path, local_batch: int, global_batch: int = -1) -> object:
    f = tmp_path / "job.toml"
    f.write_text(
        '[model]\nname = "llama3"\nflavor = "debugmodel"\n'
        f"[training]\nlocal_batch_size = {local_batch}\nglobal_batch_size = {global_batch}\n"
        "seq_len = 2048\n"
        '[parallelism]\npipeline_parallel_degree = 4\npipeline_parallel_schedule = "Interleaved1F1B"\n'
        "pipeline_parallel_layers_per_stage = 1\n"
    )
    return import_config("torchtitan", f)


@pytest.mark.parametrize(
    ("local_batch", "global_batch", "group"),
    [(8, -1, None), (10, -1, 5), (6, -1, 6), (3, -1, 3), (10, 20, 5), (6, 18, 6)],
)
def test_torchtitan_importer_takes_torchs_rounds(tmp_path: Path, local_batch: int,
                                                 global_batch: int, group: int | None) -> None:  # fmt: skip
    """torch's rounds of each pass's m = local_batch_size // pipeline_parallel_microbatch_size
    micro-batches (torchtitan runs the schedule once per gradient-accumulation step): m = 8 ->
    2 rounds of 4 = pp (no key); 10 -> 2 of 5; 6 -> 1 of 6; 3 < pp -> 1 of 3; the same with 2
    or 3 accumulation steps (global 20, 18), whose simulated m stays a multiple of the group;
    m = 9 -> 2 rounds do not divide 9, torch's ValueError, named on local_batch_size."""
    imp = _torchtitan(tmp_path, local_batch, global_batch)
    assert imp.data["parallelism"].get("microbatch_group_size") == group
    with pytest.raises(ConfigError) as e:
        _torchtitan(tmp_path, 9, 36)
    assert e.value.key == "training.local_batch_size" and "10" in str(e.value)


def test_fit_advice_offers_the_smaller_group() -> None:
    """pp 8, v 2, micro-batch 9, m 16 in groups of 16 does not fit an 80 GB GPU; groups of 8
    (pp) hold (v - 1)·8 = 8 chunk micro-batches fewer on every rank and fit at the same
    closed-form step time, so the advice lists that change, cost x1.00."""
    from simtrain.apps.fit import fit_changes

    sets = ["training.micro_batch=9", "training.global_batch=144",
            "parallelism.microbatch_group_size=16"]  # fmt: skip
    advice = fit_changes(SCENARIO, sets)
    assert not advice.fits
    group = [f for f in advice.fixes if f.changes[0].family == "microbatch_group"]
    assert len(group) == 1 and group[0].overrides == ("parallelism.microbatch_group_size=8",)
    assert group[0].fits and round(group[0].cost, 3) == 1.0
    assert "8 fewer chunk micro-batches in rank 0" in group[0].label  # 30 - 22


def test_a_pp_change_takes_the_smallest_group_of_its_micro_batches() -> None:
    """pp 4, dp 2, m 10 in groups of 5 -> pp 8, dp 1 (same GPUs): m 20, which pp 8 does not
    divide; Megatron takes N in [8, 20] with 20 % N 0 or >= 8: 8 (rest 4) and 9 (rest 2) no,
    10 yes. The advice's overrides give 10 (a reset to the default pp would be refused), and
    the scenario they make loads."""
    from simtrain.apps.fit import _group_reset

    sets = ["parallelism.pp=4", "parallelism.dp=2", "training.micro_batch=4",
            "training.global_batch=80", "parallelism.microbatch_group_size=5"]  # fmt: skip
    sc = load_scenario(SCENARIO, sets)
    assert sc.num_microbatches == 10
    reset = _group_reset(sc, 8, 1)
    assert reset == ("parallelism.microbatch_group_size=10",)
    moved = load_scenario(SCENARIO, [*sets, "parallelism.pp=8", "parallelism.dp=1", *reset])
    assert moved.num_microbatches == 20
    with pytest.raises(ConfigError):
        load_scenario(SCENARIO, [*sets, "parallelism.pp=8", "parallelism.dp=1",
                                 "parallelism.microbatch_group_size=0"])  # fmt: skip


def test_a_pp_change_sets_a_group_the_scenario_never_set() -> None:
    """No explicit group, m = 24 (global 192, micro-batch 8, dp 1): pp 8 divides it, pp 16 does
    not, and Megatron refuses the default group 16 (a last group of 8 < pp); the smallest it
    takes is 24 (24 % N = 0 or >= 16 for N in 16..24: only 24). The advice's pp change carries
    it and its scenario loads; at pp 8 (the default works) nothing changes."""
    from simtrain.apps.fit import _group_reset

    sets = ["training.global_batch=192", "model.layers=64"]
    sc = load_scenario(SCENARIO, sets)
    assert sc.num_microbatches == 24 and not sc.parallelism.microbatch_group_size
    reset = _group_reset(sc, 16, 1)
    assert reset == ("parallelism.microbatch_group_size=24",)
    with pytest.raises(ConfigError, match="last group of 8"):
        load_scenario(SCENARIO, [*sets, "parallelism.pp=16", "cluster.nodes=2"])
    moved = load_scenario(SCENARIO, [*sets, "parallelism.pp=16", "cluster.nodes=2", *reset])
    assert moved.parallelism.microbatch_group_size == 24
    assert _group_reset(sc, 8, 1) == ()


def test_validate_translation_takes_torchs_rounds() -> None:
    """A record on a torch-pipelining runtime (torchtitan) with interleaving and micro-batches
    pp does not divide: validate reads torch's rounds (6 over pp 4: one round of 6); the same
    record on Megatron-Core is refused, its group being the user's unstated setting."""
    from simtrain.apps.validate.records import Record
    from simtrain.apps.validate.translate import SkipReason, translate

    def record(runtime: str, **training: int) -> Record:
        return Record(id="r", kind="training_run", source="mine", source_key="mine",  # type: ignore[call-arg]
                      runtime=runtime,
                      model={"layers": 16, "hidden": 1024, "heads": 16, "seq_len": 1024,
                             "vocab": 32000},
                      training={"global_batch": 6, "micro_batch": 1, "precision": "bf16",
                                **training},
                      parallelism={"tp": 1, "pp": 4, "dp": 1, "virtual_stages": 2,
                                   "schedule": "interleaved 1F1B"},
                      hardware={"gpu": "H100-SXM5-80GB", "num_gpus": 4},
                      measured={"step_time_s": 1.0}, notes="")  # fmt: skip

    tr = translate(record("torchtitan"))
    assert not isinstance(tr, SkipReason), tr
    assert tr.scenario.parallelism.microbatch_group_size == 6
    assert isinstance(translate(record("megatron_core")), SkipReason)
    # torch runs the schedule once a gradient-accumulation pass: a local batch of 10 in two
    # passes (global 20) is rounds of 10 // 2 = 5 over pp 4, as the torchtitan importer reads
    # it (test_torchtitan_importer_takes_torchs_rounds: (10, 20) -> 5), not the step's m = 20
    # (which pp divides: no group)
    acc = translate(record("torchtitan", global_batch=20, local_batch=10))
    assert not isinstance(acc, SkipReason), acc
    assert acc.scenario.parallelism.microbatch_group_size == 5


def test_planner_gives_interleaved_layouts_their_smallest_group() -> None:
    """The planner's interleaved layouts whose micro-batches pp does not divide run in the
    smallest group Megatron-Core takes, as a user would pass it: GPT-3 175B on 1,024 GPUs,
    tp 1 x pp 16 x dp 64, micro-batch 1 -> m = 24, groups of 24 (24 % 16..23 all leave a last
    group under 16); pp 8, m 20 -> 10; a layout pp divides keeps the default. The fast path
    and a scenario file build the same scenario."""
    from simtrain.apps.plan.file import load_plan
    from simtrain.apps.plan.layouts import Layout, layout_group, scenario_data
    from simtrain.apps.plan.screen import build_context, layout_scenario
    from simtrain.schedules.generators import smallest_group
    from simtrain.spec.scenario import parse_scenario

    assert (smallest_group(16, 24), smallest_group(8, 20), smallest_group(8, 12)) == (24, 10, 12)
    assert (smallest_group(8, 16), smallest_group(8, 5)) == (0, 0)
    plan = load_plan("plans/gpt3_175b_megatron2021.yaml")
    lay = Layout("a100_sxm4_80gb", 1024, 1, 16, 64, 0, 1, "full", "interleaved", 2, 1536)
    assert layout_group(lay) == 24
    assert layout_group(lay._replace(schedule="1f1b", virtual_stages=1)) == 0
    assert layout_group(lay._replace(dp=32, micro_batch=3)) == 0  # m = 16: pp divides it
    data = scenario_data(plan, lay)
    assert data["parallelism"]["microbatch_group_size"] == 24
    fast = layout_scenario(build_context(plan).bases[(lay.hardware, 1536)], lay, plan.file)
    assert fast == parse_scenario(data, plan.file, Path("."))
    assert fast.parallelism.microbatch_group_size == 24


def test_memory_explain_names_the_group() -> None:
    """``simtrain memory --explain`` says which group the warm-up counts and each stage's
    warm-up: N = 12 for m = 12 over pp 8, v 2: stage r 2(7 - r) + 12, at most v·m = 24 (stage 0
    24, not 26; stage 7 12); Mixtral's combined 1F1B at pp 4, v 2, N = pp: one more,
    2(3 - r) + 4 + 1 (stage 0 11, stage 3 5); and the default pp."""
    from simtrain.report.explain import explain_memory

    sc = load_scenario(SCENARIO, ["training.global_batch=96",
                                  "parallelism.microbatch_group_size=12"])  # fmt: skip
    text = "\n".join(explain_memory(sc, estimate_memory(sc)))
    for warmup in (24, 22, 12):  # stages 0, 2, 7
        assert f"groups of 12 micro-batches per chunk: {warmup} warm-up forwards" in text
    assert "(2(pp - r - 1) + (v - 1)·12, at most v·m)" in text
    moe = load_scenario("scenarios/mixtral_8x7b_ep8.yaml", ["parallelism.schedule=combined_1f1b",
                                                            "parallelism.virtual_stages=2"])  # fmt: skip
    text = "\n".join(explain_memory(moe, estimate_memory(moe)))
    for warmup in (11, 9, 7, 5):
        assert f"groups of 4 micro-batches per chunk: {warmup} warm-up forwards" in text
    assert "(2(pp - r - 1) + (v - 1)·4 + 1, at most v·m)" in text
    base = load_scenario(SCENARIO)
    assert "groups of 8 micro-batches" in "\n".join(explain_memory(base, estimate_memory(base)))


def test_interleaved_with_one_chunk_is_1f1b_whatever_m() -> None:
    """schedule interleaved with virtual_stages 1 runs 1F1B (generators.interleaved, v == 1),
    which takes any m: m = 12 over pp 8 loads and steps exactly as schedule 1f1b does (the
    scenario check had refused it, a rule left from before the micro-batch groups)."""
    from simtrain.apps.simulate import simulate_scenario

    sets = ["parallelism.virtual_stages=1", "training.global_batch=96"]
    one = load_scenario(SCENARIO, sets)
    assert one.num_microbatches == 12
    plain = load_scenario(SCENARIO, [*sets, "parallelism.schedule=1f1b"])
    assert (simulate_scenario(one, detail=False).metrics.step_time_s
            == simulate_scenario(plain, detail=False).metrics.step_time_s)  # fmt: skip
