"""Capacity planning (``simtrain.apps.plan``) and whole-run time (``simtrain.apps.goodput``).

The planner's proposals must be layouts the simulator accepts and says fit; GPT-3 175B on 1,024
A100s is checked against Narayanan et al. 2021; local and Dask executors must agree; with
failures off, time-to-train is tokens / throughput exactly; the checkpoint interval is Young's
and Daly's closed forms.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from simtrain.apps.goodput import (
    LLAMA3_MTBF_ALL_INTERRUPTIONS_GPU_HOURS,
    LLAMA3_MTBF_GPU_HOURS,
    NO_FAILURES,
    FailureModel,
    daly_interval_s,
    expected_wall_s,
    run_estimate,
    young_interval_s,
)
from simtrain.apps.plan import (
    BEST_KEYS,
    CSV_COLUMNS,
    Layout,
    LocalExecutor,
    ProgressBar,
    build_context,
    closed_form_step_s,
    enumerate_layouts,
    layout_scenario,
    load_plan,
    memory_check,
    pareto_front,
    parse_plan,
    plan_command,
    plan_table,
    run_plan,
    scenario_data,
    screen_layout,
    select_candidates,
)
from simtrain.apps.plan.file import MAX_FIXED_CHOICES, MAX_GLOBAL_BATCHES
from simtrain.apps.plan.layouts import MAX_LAYOUTS
from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate import ONE_BUCKET_MB, SkipReason, translate
from simtrain.costs.compute import eq3_flops
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.spec.limits import MAX_GPUS
from simtrain.spec.scenario import load_scenario, parse_scenario
from simtrain.spec.yamlfile import load_yaml

#: The layout Narayanan et al. 2021 ran GPT-3 175B with on 1,024 A100s (tp 8 x pp 16 x dp 8,
#: 1F1B, full recompute, global batch 1536; megatron_readme2021_gpt3_175B_1024gpu).
NARAYANAN_2021_LAYOUT = Layout("a100_sxm4_80gb", 1024, 8, 16, 8, 0, 1, "full", "1f1b", 1, 1536)

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "plans"

# Narayanan et al. 2021 (SC'21) §5.1 / Eq. 4 example: GPT-3 175B on 1,024 A100s at 140 TFLOP/s
# per GPU (Eq. 3 FLOPs: activation recompute counted); ../shared/measured/published_runs.yaml
# megatron_readme2021_gpt3_175B_1024gpu: 138 TFLOP/s, tp 8 x pp 16 x dp 8, 1F1B, full recompute.
NARAYANAN_TFLOPS = 140.0

SMALL: dict[str, Any] = {
    "name": "small",
    "model": {"preset": "gpt3-1.3b"},
    "tokens": 2.0e10,
    "training": {"seq_len": 2048, "global_batch": 64, "precision": "bf16", "optimizer": "adamw"},
    "hardware": [
        {"name": "a100_sxm4_40gb", "price_per_gpu_hour": 1.5},
        {"name": "h100_sxm5_80gb", "price_per_gpu_hour": 4.0},
    ],
    "gpus": {"min": 8, "max": 16},
    "constraints": {"deadline_days": 30, "budget": 1.0e5},
    "fixed": {"tp": [1, 2], "pp": [1, 2], "zero_stage": [0, 3], "recompute": ["none", "full"]},
    "top": 4,
}

GPT3_1024: dict[str, Any] = {
    "name": "gpt3_1024",
    "model": {"preset": "gpt3-175b"},
    "tokens": 300e9,
    "training": {"seq_len": 2048, "global_batch": 1536, "precision": "bf16", "optimizer": "adamw"},
    "hardware": [{"name": "a100_sxm4_80gb", "price_per_gpu_hour": 2.0}],
    "gpus": 1024,
    "failures": {"enabled": False},
}


def _plan(data: dict[str, Any], **changes: Any) -> Any:
    d = copy.deepcopy(data)
    d.update(changes)
    return parse_plan(d, "plan.yaml", ROOT)


def eq3_tflops_per_gpu(sc: Any, tokens_per_s: float) -> float:
    """Narayanan et al. 2021 Eq. 3 FLOPs per iteration (``costs.eq3_flops``: recompute counted
    whether or not it runs) over the time of one iteration at ``tokens_per_s``, per GPU, in
    TFLOP/s."""
    m, t = sc.model, sc.training
    b, s = t.global_batch, t.seq_len
    flops = eq3_flops(b, s, m.layers, m.hidden, m.vocab)
    step_s = b * s / tokens_per_s
    return flops / step_s / sc.parallelism.gpus / 1e12


@pytest.fixture(scope="module")
def small_result() -> Any:
    return run_plan(_plan(SMALL), LocalExecutor(2))


# ---------------------------------------------------------------------------------------------
# Plan files


@pytest.mark.parametrize(
    "name", ["gpt3_175b.yaml", "gpt3_175b_megatron2021.yaml", "llama3_8b.yaml"]
)
def test_shipped_plans_load(name: str) -> None:
    plan = load_plan(PLANS / name)
    assert plan.tokens > 0 and plan.hardware and plan.global_batches


def test_gpt3_plan_is_the_issue_example() -> None:
    plan = load_plan(PLANS / "gpt3_175b.yaml")
    assert plan.tokens == 300e9 and plan.global_batches == (1536,)
    assert plan.training["seq_len"] == 2048 and plan.training["precision"] == "bf16"
    assert [(h.name, h.price_per_gpu_hour) for h in plan.hardware] == [
        ("a100_sxm4_80gb", 2.0),
        ("h100_sxm5_80gb", 4.0),
    ]
    assert (plan.gpus_min, plan.gpus_max) == (64, 1024)
    assert plan.constraints.deadline_days == 60 and plan.constraints.budget == 5e6


def _plan_error(path: tuple[str, ...], value: Any) -> ConfigError:
    """The ConfigError of SMALL with the key at ``path`` set to ``value``."""
    d = copy.deepcopy(SMALL)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as exc:
        parse_plan(d, "p.yaml", ROOT)
    return exc.value


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("colour",), "red", "colour"),
        (("training", "batch"), 8, "training.batch"),
        (("hardware",), [{"name": "a100_sxm4_80gb", "cost": 1}], "hardware[0].cost"),
        (("gpus",), {"min": 8, "most": 64}, "gpus.most"),
        (("constraints",), {"deadline": 3}, "constraints.deadline"),
        (("fixed",), {"tensor_parallel": 2}, "fixed.tensor_parallel"),
        (("failures",), {"mtbf": 5}, "failures.mtbf"),
        (("parallelism",), {"bucket": 5}, "parallelism.bucket"),
    ],
)
def test_unknown_keys_name_file_key_and_allowed(path: tuple[str, ...], value: Any,
                                                key: str) -> None:  # fmt: skip
    exc = _plan_error(path, value)
    assert exc.file == "p.yaml" and exc.key == key
    assert exc.allowed  # what is allowed is listed


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("fixed",), {"schedule": "1f2b"}, "fixed.schedule"),
        (("fixed",), {"zero_stage": 4}, "fixed.zero_stage"),
        (("hardware",), [{"name": "tpu_v9", "price_per_gpu_hour": 1}], "hardware[0].name"),
        (("training", "precision"), "fp12", "training.precision"),
        (("training", "micro_batch"), 2, "training.micro_batch"),
        (("model", "preset"), "gpt5", "model.preset"),
        (("tokens",), "lots", "tokens"),
        (("objective",), "fun", "objective"),
        (("parallelism",), {"layer_split": "random"}, "parallelism.layer_split"),
        (("parallelism",), {"bucket_mb": -1}, "parallelism.bucket_mb"),
        (("parallelism",), {"tp": 2}, "parallelism.tp"),  # searched: belongs in fixed
    ],
)
def test_bad_values_are_config_errors(path: tuple[str, ...], value: Any, key: str) -> None:
    exc = _plan_error(path, value)
    assert exc.key == key


def test_global_batch_forms_and_gpu_forms() -> None:
    assert _plan(SMALL, training={**SMALL["training"], "global_batch": [128, 64]}).global_batches == (64, 128)  # fmt: skip
    rng = {**SMALL["training"], "global_batch": {"min": 64, "max": 512}}
    assert _plan(SMALL, training=rng).global_batches == (64, 128, 256, 512)
    step = {**SMALL["training"], "global_batch": {"min": 64, "max": 256, "step": 64}}
    assert _plan(SMALL, training=step).global_batches == (64, 128, 192, 256)
    p = _plan(SMALL, gpus={"min": 2, "max": 40})
    assert [g for g in range(1, 41) if g in _gpu_counts(p)] == [2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 40]
    p = _plan(SMALL, gpus=[16, 8], constraints={"max_gpus": 8})
    assert _gpu_counts(p) == [8]


def _gpu_counts(plan: Any) -> list[int]:
    from simtrain.apps.plan import gpu_counts

    return gpu_counts(plan, 8)


# ---------------------------------------------------------------------------------------------
# Screening is the scenario path, and the memory check is estimate_memory's


def test_layout_scenario_is_what_parse_scenario_builds() -> None:
    """The fast per-layout path builds the same Scenario (and the same rejections) as
    parse_scenario on the layout's scenario mapping, i.e. as a scenario file would."""
    plan = _plan(GPT3_1024)
    ctx = build_context(plan)
    layouts = enumerate_layouts(plan, 96, 96)
    random.Random(3).shuffle(layouts)
    n_ok = n_bad = 0
    for lay in layouts[:150]:
        base = ctx.bases[(lay.hardware, lay.global_batch)]
        data = scenario_data(plan, lay)
        try:
            slow = parse_scenario(data, plan.file, ROOT)
        except ConfigError as exc:
            with pytest.raises(ConfigError) as fast_exc:
                layout_scenario(base, lay, plan.file)
            assert str(fast_exc.value) == str(exc)
            n_bad += 1
            continue
        assert layout_scenario(base, lay, plan.file) == slow
        n_ok += 1
    assert n_ok > 50 and n_bad > 5


def test_memory_check_matches_estimate_memory() -> None:
    """The first and last stages carry the peak of every stage (all schedules, ZeRO stages,
    recompute modes and micro-batches), and a layout fits iff estimate_memory says so."""
    plan = _plan(GPT3_1024, gpus=[64, 256, 1024])
    ctx = build_context(plan)
    layouts = enumerate_layouts(plan, 96, 96)
    random.Random(7).shuffle(layouts)
    seen = {"fit": 0, "no_fit": 0}
    schedules = set()
    for lay in layouts:
        try:
            sc = layout_scenario(ctx.bases[(lay.hardware, lay.global_batch)], lay, plan.file)
        except ConfigError:
            continue
        stages = memory_check(sc)
        full = estimate_memory(sc)
        fits = all(s.fits for s in stages)
        assert fits == full.fits, lay
        if fits:
            assert max(s.peak_memory_bytes for s in stages) == full.peak_memory_bytes, lay
        seen["fit" if fits else "no_fit"] += 1
        schedules.add(lay.schedule)
        if sum(seen.values()) >= 120:
            break
    assert seen["fit"] >= 10 and seen["no_fit"] >= 10
    assert schedules == {"1f1b", "interleaved", "zb_h1", "gpipe"}


# ---------------------------------------------------------------------------------------------
# Proposals fit, reasons are recorded, outputs


def test_no_proposed_layout_does_not_fit(small_result: Any) -> None:
    res = small_result
    assert res.best, "the small plan has feasible layouts"
    for r in res.best:
        sc = parse_scenario(scenario_data(res.plan, r.layout), "best", ROOT)
        assert estimate_memory(sc).fits
        sim = simulate_scenario(sc)
        cap = sc.hardware.memory_bytes
        assert max(s.peak_memory_bytes for s in sim.metrics.stages) <= cap
        assert sim.metrics.step_time_s == r.step_time_s  # the ranking's numbers are the sim's
        assert r.meets_constraints and r.days <= 30 and r.cost <= 1e5
    # every fitting layout passed the memory model; every other one says why
    for r in res.rows:
        assert r.status in ("rejected", "no_fit", "estimated", "simulated")
        if r.status in ("rejected", "no_fit"):
            assert r.reason
        if r.status == "no_fit":
            assert r.reason.startswith("does not fit: ") and "short by" in r.reason


def test_best_is_sorted_by_days_then_cost(small_result: Any) -> None:
    days = [(r.days, r.cost) for r in small_result.best]
    assert days == sorted(days)
    assert small_result.feasible >= len(small_result.best)


def test_plan_command_outputs(tmp_path: Path) -> None:
    plan_file = tmp_path / "small.yaml"
    import yaml

    plan_file.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "out"
    text = plan_command(str(plan_file), as_json=False, out_dir=str(out), workers=1,
                        executor="local", scheduler=None, top=3)  # fmt: skip
    assert "best vs runner-up" in text and "headroom GiB" in text and "MFU" in text
    doc = json.loads(plan_command(str(plan_file), as_json=True, out_dir=str(out), workers=1,
                                  executor="local", scheduler=None, top=3))  # fmt: skip
    assert doc["schema_version"] == 1
    assert isinstance(doc["evaluated"], int) and isinstance(doc["feasible"], int)
    assert doc["best"] and all(set(b) == set(BEST_KEYS) for b in doc["best"])
    assert doc["best"] == sorted(doc["best"], key=lambda b: (b["days"], b["cost"]))
    # plan.csv: every evaluated layout, with status and reason
    rows = list(csv.DictReader(io.StringIO((out / "plan.csv").read_text())))
    assert len(rows) == doc["evaluated"] and tuple(rows[0]) == CSV_COLUMNS
    assert {r["status"] for r in rows} >= {"rejected", "no_fit", "simulated"}
    assert all(r["reason"] for r in rows if r["status"] in ("rejected", "no_fit"))
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # best.yaml is a scenario simtrain run accepts, and it is the best layout
    sc = load_scenario(out / "best.yaml")
    b = doc["best"][0]
    p = sc.parallelism
    assert (sc.hardware.name, p.gpus, p.tp, p.pp, p.dp, p.zero_stage) == (
        b["hardware"], b["gpus"], b["tp"], b["pp"], b["dp"], b["zero_stage"])  # fmt: skip
    assert simulate_scenario(sc).metrics.step_time_s == b["step_time_s"]
    # deterministic
    again = plan_command(str(plan_file), as_json=True, out_dir=str(out), workers=2,
                         executor="local", scheduler=None, top=3)  # fmt: skip
    assert json.loads(again) == doc


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        # GPT-3 175B on at most 16 A100 40 GB: nothing fits; the closest miss is named.
        (
            {
                "model": {"preset": "gpt3-175b"},
                "hardware": [{"name": "a100_sxm4_40gb"}],
                "constraints": {},
            },
            "closest: ",
        ),  # fmt: skip
        # A free price list: every cost is 0 (no log axis for the Pareto plot).
        (
            {"hardware": [{"name": "a100_sxm4_40gb", "price_per_gpu_hour": 0}], "constraints": {}},
            "best vs runner-up",
        ),  # fmt: skip
    ],
)
def test_plan_command_edge_cases_are_results(tmp_path: Path, changes: dict, expect: str) -> None:
    """Nothing fitting, or costing nothing, is a result with a table and a plot, not a crash."""
    import yaml

    plan_file = tmp_path / "edge.yaml"
    plan_file.write_text(yaml.safe_dump({**SMALL, **changes}))
    out = tmp_path / "out"
    text = plan_command(str(plan_file), as_json=False, out_dir=str(out), workers=1,
                        executor="local", scheduler=None, top=2)  # fmt: skip
    assert expect in text
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if expect == "closest: ":
        assert "no layout fits" in text and "short by" in text
        assert not (out / "best.yaml").exists()


def test_local_and_dask_give_identical_rankings(tmp_path: Path) -> None:
    distributed = pytest.importorskip("dask.distributed")
    import yaml

    plan_file = tmp_path / "small.yaml"
    plan_file.write_text(yaml.safe_dump(SMALL))
    local = plan_command(str(plan_file), as_json=True, out_dir=str(tmp_path / "a"), workers=2,
                         executor="local", scheduler=None, top=3)  # fmt: skip
    with distributed.LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cl:
        dask = plan_command(str(plan_file), as_json=True, out_dir=str(tmp_path / "b"),
                            workers=2, executor="dask", scheduler=cl.scheduler_address,
                            top=3)  # fmt: skip
    assert json.loads(local)["best"]
    assert dask == local
    assert (tmp_path / "a" / "plan.csv").read_text() == (tmp_path / "b" / "plan.csv").read_text()


def test_ctrl_c_returns_best_so_far() -> None:
    plan = _plan(SMALL)
    calls = {"n": 0}

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "simulating" and done >= 1:
            raise KeyboardInterrupt

    res = run_plan(plan, LocalExecutor(1), top=4, progress=progress)
    assert res.interrupted and "interrupted" in res.note
    assert res.simulated == 1 and len(res.ranked) == 1

    def early(phase: str, done: int, total: int) -> None:
        calls["n"] += 1
        if phase == "screening" and done > 0:
            raise KeyboardInterrupt

    res = run_plan(plan, LocalExecutor(1), top=4, progress=early, chunk_size=64)
    assert res.interrupted and "while screening" in res.note
    assert 0 < res.evaluated < len(enumerate_layouts(plan, 24, 16))
    assert res.ranked and all(r.status == "estimated" for r in res.ranked)  # closed-form best


def test_progress_bar_prints_eta() -> None:
    out, now = io.StringIO(), [0.0]
    bar = ProgressBar(out, clock=lambda: now[0])  # the bar of simtrain.report.progress
    bar("screening", 0, 100)
    now[0] = 20.0  # as if 20 s went by
    bar("screening", 50, 100)
    assert "ETA 20 s" in out.getvalue() and "50.0 %" in out.getvalue()


def test_pareto_front() -> None:
    pts = [(1.0, 5.0), (2.0, 3.0), (2.5, 4.0), (3.0, 1.0), (1.0, 6.0)]
    assert pareto_front(pts) == [0, 1, 3]


@pytest.mark.parametrize("split", ["uniform", "compute_balanced", "embedding_as_layer"])
def test_closed_form_follows_the_layer_split(split: str) -> None:
    """The pre-screen splits layers as parallelism.layer_split does (layout.partition.split_layers):
    GPT-3 1.3B on pp 8, within 3 % of the simulation for every split (the uniform split's
    estimate was 21 % high for the other two before)."""
    data = {"name": "s", "model": {"preset": "gpt3-1.3b"}, "hardware": "a100_sxm4_80gb",
            "cluster": {"nodes": 1, "gpus_per_node": 8},
            "training": {"seq_len": 2048, "global_batch": 64, "micro_batch": 1},
            "parallelism": {"pp": 8, "schedule": "1f1b", "layer_split": split}}  # fmt: skip
    sc = parse_scenario(data, "s.yaml", ROOT)
    est = closed_form_step_s(sc, memory_check(sc))
    assert est == pytest.approx(simulate_scenario(sc, detail=False).metrics.step_time_s, rel=0.03)


@pytest.mark.parametrize(("runtime", "reduce"), [("deepspeed", "grad"), ("torchtitan", "fp32")])
def test_closed_form_prices_zero3_as_the_simulation(runtime: str, reduce: str) -> None:
    """ZeRO-3's per-layer gathers and reduce-scatters, priced by one function for both
    (costs.workload.zero3_layer_comm_ns): DeepSpeed's through each GPU's own NIC
    (zero3_per_gpu_nic; the planner once used the node's and put Llama 3 8B on 16 GPUs at
    0.571 s against the simulated 0.982 s), torchtitan's gradients in fp32. Within 3 %."""
    data = {"name": "z3", "model": {"preset": "llama3-8b"}, "hardware": "h100_sxm5_80gb",
            "runtime": {"name": runtime, "grad_reduce_dtype": reduce},
            "cluster": {"nodes": 2, "gpus_per_node": 8},
            "training": {"seq_len": 4096, "global_batch": 16, "micro_batch": 1,
                         "precision": "bf16"},
            "parallelism": {"dp": 16, "zero_stage": 3}}  # fmt: skip
    sc = parse_scenario(data, "z3.yaml", ROOT)
    est = closed_form_step_s(sc, memory_check(sc))
    assert est == pytest.approx(simulate_scenario(sc, detail=False).metrics.step_time_s, rel=0.03)


def test_closed_form_tracks_the_simulation(small_result: Any) -> None:
    """The pre-screen only ranks; its step times stay near the full simulation's."""
    errs = [abs(r.est_step_time_s / r.step_time_s - 1) for r in small_result.rows
            if r.status == "simulated"]  # fmt: skip
    assert errs and max(errs) < 0.15 and sorted(errs)[len(errs) // 2] < 0.05


# ---------------------------------------------------------------------------------------------
# GPT-3 175B on 1,024 A100 80 GB vs Narayanan et al. 2021


@pytest.fixture(scope="module")
def gpt3_2021_features() -> Any:
    """The search restricted to what Megatron-LM offered in 2021, on the model it ran
    (``plans/gpt3_175b_megatron2021.yaml``: dropout 0.1, vocabulary 51,200, fp16, full
    recompute, 1F1B or interleaved 1F1B, no ZeRO, one-bucket "local" DDP; Narayanan et al.
    2021 §5; the conventions ``simtrain validate`` uses for the megatron_sc21 records)."""
    return run_plan(load_plan(PLANS / "gpt3_175b_megatron2021.yaml"), LocalExecutor(2))


def test_megatron2021_plan_pins_what_validate_assumes(published_records: dict) -> None:
    """The 2021 plan is the same setting as the validated Megatron records, not a tuned one."""
    plan = load_plan(PLANS / "gpt3_175b_megatron2021.yaml")
    assert plan.parallelism == {"bucket_mb": ONE_BUCKET_MB}
    assert plan.model == {"preset": "gpt3-175b", "dropout": 0.1, "vocab": 51200}
    assert plan.fixed == {"recompute": ("full",), "schedule": ("1f1b", "interleaved"),
                          "zero_stage": (0,)}  # fmt: skip
    assert plan.gpu_counts == (1024,) and plan.global_batches == (1536,)
    rec = published_records["megatron_readme2021_gpt3_175B_1024gpu"]
    tr = translate(rec)
    assert not isinstance(tr, SkipReason)
    lay = NARAYANAN_2021_LAYOUT
    ours = parse_scenario(scenario_data(plan, lay), "plan", ROOT)
    m, v = ours.model, tr.scenario.model
    assert (m.dropout, m.vocab, m.layers, m.hidden) == (v.dropout, v.vocab, v.layers, v.hidden)
    assert ours.training.precision == tr.scenario.training.precision
    assert ours.parallelism == tr.scenario.parallelism


def test_gpt3_1024_a100_2021_features_against_the_published_layout(
    gpt3_2021_features: Any, published_records: dict
) -> None:
    """The search's best layout against the one Narayanan et al. 2021 ran at 1,024 GPUs (tp 8
    x pp 16 x dp 8, 1F1B, full recompute; megatron_readme2021_gpt3_175B_1024gpu: 32.0 s a
    step, 138 TFLOP/s): simtrain's step for that layout within 10 % of the measured 32.0 s,
    and the best at least as fast but at most 15 % faster than it (what choosing the layout
    could plausibly buy; since 2026-12-06, the A100's GEMM rate from its GEMM table, the best,
    tp 4 x pp 16 x dp 16 interleaved, estimates 164 TFLOP/s against the published 140)."""
    res = gpt3_2021_features
    best = res.best[0]
    assert best.layout.gpus == 1024 and best.layout.recompute == "full"
    sc = parse_scenario(scenario_data(res.plan, best.layout), "best", ROOT)
    tflops = eq3_tflops_per_gpu(sc, best.tokens_per_s)
    # With full recompute Eq. 3 counts exactly the FLOPs executed: the simulator's own figure.
    assert tflops == pytest.approx(best.tflops_per_gpu, rel=0.01)
    measured = published_records["megatron_readme2021_gpt3_175B_1024gpu"].measured["step_time_s"]
    theirs = NARAYANAN_2021_LAYOUT
    pub = parse_scenario(scenario_data(res.plan, theirs), "theirs", ROOT)
    t_pub = simulate_scenario(pub, detail=False).metrics.step_time_s
    assert t_pub == pytest.approx(measured, rel=0.10), t_pub
    assert best.step_time_s <= t_pub <= 1.15 * best.step_time_s, (best.step_time_s, t_pub)
    for r in res.best:  # every proposal fits by the memory model
        assert estimate_memory(parse_scenario(scenario_data(res.plan, r.layout), "b", ROOT)).fits


def test_gpt3_1024_rejections_say_why(gpt3_2021_features: Any) -> None:
    rows = gpt3_2021_features.rows
    rejected = [r for r in rows if r.status == "rejected"]
    assert any("must be a multiple of micro_batch x dp" in r.reason for r in rejected)
    assert any("must divide model.layers" in r.reason for r in rejected)  # interleaved v=2
    no_fit = [r for r in rows if r.status == "no_fit"]
    assert no_fit and all("short by" in r.reason and "GiB in " in r.reason for r in no_fit)
    assert all(r.reason for r in rejected)


# Korthikanti et al. 2022 (arXiv 2205.05198) Table 5: GPT-3 175B on 64 A100 80 GB with sequence
# parallelism and selective recompute, MFU 51.4 % (../shared/measured/published_runs.yaml
# korthikanti22_t5_175B_sp_selective): the best published MFU for this model on A100s.
KORTHIKANTI_175B_MFU = 0.514


@pytest.fixture(scope="module")
def gpt3_unrestricted() -> Any:
    """The full search (every schedule, ZeRO stage and recompute) at 1,024 A100 80 GB, on the
    model Megatron-LM ran (dropout 0.1, vocabulary 51,200, as in the 2021 plan)."""
    model = {"preset": "gpt3-175b", "dropout": 0.1, "vocab": 51200}
    return run_plan(_plan(GPT3_1024, model=model), LocalExecutor(2), top=4)


def test_gpt3_1024_a100_unrestricted_mfu_within_15pct_of_korthikanti(
    gpt3_unrestricted: Any,
) -> None:
    best = gpt3_unrestricted.best[0]
    assert best.layout.gpus == 1024
    assert abs(best.mfu / KORTHIKANTI_175B_MFU - 1) <= 0.15, best.mfu


@pytest.mark.xfail(
    strict=True,
    reason="unrestricted, the planner's best GPT-3 175B layout on 1,024 A100s (tp 4 x pp 8 x "
    "dp 32, ZB-H1, selective recompute, ZeRO-1: 20.40 s/step, MFU 52.0 %, Korthikanti et al. "
    "2022 measured 51.4 %) runs at ~216 Eq.-3 TFLOP/s per GPU, +54 % over Narayanan et al. "
    "2021's 140 (Eq. 3 counts a full recompute this layout does not run); reported, not tuned",
)
def test_gpt3_1024_a100_unrestricted_within_15pct_of_narayanan(gpt3_unrestricted: Any) -> None:
    res = gpt3_unrestricted
    best = res.best[0]
    sc = parse_scenario(scenario_data(res.plan, best.layout), "best", ROOT)
    assert abs(eq3_tflops_per_gpu(sc, best.tokens_per_s) / NARAYANAN_TFLOPS - 1) <= 0.15


# ---------------------------------------------------------------------------------------------
# Whole-run time


def test_no_failures_time_to_train_is_tokens_over_throughput() -> None:
    for tokens, tps in ((300e9, 161_665.3), (1e12, 987_654.321), (7, 3)):
        run = run_estimate(tokens, tps, 1024, 2.0, 2.45e12, NO_FAILURES)
        assert run.compute_s == tokens / tps and run.expected_s == tokens / tps
        assert run.days == tokens / tps / 86400 and run.goodput == 1.0
        assert run.cost == tokens / tps / 3600 * 1024 * 2.0
    # the same through a plan: failures: {enabled: false}
    plan = _plan(SMALL, failures={"enabled": False})
    ctx = build_context(plan)
    for lay in enumerate_layouts(plan, 24, 16)[:400]:
        r = screen_layout(ctx, lay)
        if r.status == "estimated":
            assert r.est_days * 86400 == pytest.approx(plan.tokens / r.est_tokens_per_s, rel=1e-15)


def test_young_daly_interval_closed_form() -> None:
    delta, mtbf = 30.0, 50 * 3600.0
    assert young_interval_s(delta, mtbf) == math.sqrt(2 * delta * mtbf)
    x = delta / (2 * mtbf)
    assert daly_interval_s(delta, mtbf) == pytest.approx(
        math.sqrt(2 * delta * mtbf) * (1 + math.sqrt(x) / 3 + x / 9) - delta, rel=1e-15
    )
    assert daly_interval_s(3.0, 1.0) == 1.0  # δ >= 2M: checkpoint every MTBF
    # a run: system MTBF = per-GPU MTBF / GPUs, the interval is Young's, goodput below 1
    fm = FailureModel(checkpoint_s=delta, restart_s=600.0)
    run = run_estimate(300e9, 160_000.0, 1024, 2.0, 0.0, fm)
    m = LLAMA3_MTBF_GPU_HOURS * 3600 / 1024
    assert run.system_mtbf_s == pytest.approx(m)
    assert run.checkpoint_interval_s == math.sqrt(2 * delta * m)
    assert run.expected_s == expected_wall_s(run.compute_s, run.checkpoint_interval_s, delta,
                                             600.0, m)  # fmt: skip
    assert 0.9 < run.goodput < 1.0
    # Young's interval is (near) optimal for Daly's expected time
    t = run.checkpoint_interval_s
    for f in (0.5, 0.8, 1.25, 2.0):
        assert expected_wall_s(run.compute_s, t * f, delta, 600.0, m) > run.expected_s
    # failures off but a fixed interval: only the checkpoint writes
    run = run_estimate(1e9, 1e4, 8, 1.0, 0.0,
                       FailureModel(mtbf_gpu_hours=None, checkpoint_interval_s=900.0,
                                    checkpoint_s=9.0))  # fmt: skip
    assert run.expected_s == pytest.approx(1e5 * 909 / 900)


def test_llama3_mtbf_default() -> None:
    # Llama 3 §3.3.4: 419 unexpected of 466 interruptions in 54 days on 16,384 H100s
    assert LLAMA3_MTBF_GPU_HOURS == pytest.approx(54 * 24 * 16384 / 419)
    assert round(LLAMA3_MTBF_GPU_HOURS) == 50_677
    assert round(LLAMA3_MTBF_ALL_INTERRUPTIONS_GPU_HOURS) == 45_566
    assert FailureModel().mtbf_gpu_hours == LLAMA3_MTBF_GPU_HOURS


def test_select_candidates_adds_frontier(small_result: Any) -> None:
    rows = small_result.rows
    est = [r._replace(status="estimated") if r.status == "simulated" else r for r in rows]
    chosen = select_candidates(est, "time", 4)
    assert 4 <= len(chosen) <= 5
    assert len({r.layout for r in chosen}) == len(chosen)


def test_shipped_plan_yaml_uses_yaml12_floats() -> None:
    data = load_yaml(PLANS / "gpt3_175b.yaml")
    assert data["tokens"] == 300e9 and data["constraints"]["budget"] == 5e6


def test_planner_fast_path_gives_the_same_step_and_peak() -> None:
    """The planner simulates with intra-node TP all-reduces folded into their compute
    (simulate_scenario(detail=False)): for a random sample of layouts of every schedule, ZeRO
    stage and recompute, the step time, MFU and every stage's peak memory equal the detailed
    run's exactly, with fewer tasks whenever tp > 1."""
    plan = _plan(SMALL, fixed={"tp": [1, 2, 4, 8], "pp": [1, 2, 4]}, gpus={"min": 8, "max": 32})
    ctx = build_context(plan)
    layouts = enumerate_layouts(plan, 24, 32)
    random.Random(11).shuffle(layouts)
    checked = fewer = 0
    for lay in layouts:
        try:
            sc = layout_scenario(ctx.bases[(lay.hardware, lay.global_batch)], lay, plan.file)
        except ConfigError:
            continue
        if sc.num_microbatches > 16:
            continue
        a, b = simulate_scenario(sc), simulate_scenario(sc, detail=False)
        assert b.timeline.makespan_ns == a.timeline.makespan_ns, lay
        assert b.metrics.mfu == a.metrics.mfu
        assert [s.peak_memory_bytes for s in b.metrics.stages] == [
            s.peak_memory_bytes for s in a.metrics.stages
        ], lay
        fewer += len(b.timeline.spans) < len(a.timeline.spans)
        checked += 1
        if checked == 40:
            break
    assert checked == 40 and fewer >= 10


# ---------------------------------------------------------------------------------------------
# Limits of a plan file: every number bounded and finite, the search bounded before it starts,
# a run that never finishes an error, not an OverflowError.


HUGE = 10**400


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("gpus",), {"min": 1, "max": 1e15}, "gpus.max"),
        (("gpus",), [8, MAX_GPUS + 1], "gpus"),
        (("gpus",), {"min": HUGE, "max": HUGE}, "gpus.min"),
        (("training", "global_batch"), {"min": 1, "max": 1e15, "step": 1},
         "training.global_batch.max"),
        (("training", "global_batch"), {"min": 1, "max": 10**6, "step": 1},
         "training.global_batch.step"),
        (("training", "global_batch"), list(range(1, MAX_GLOBAL_BATCHES + 2)),
         "training.global_batch"),
        (("tokens",), HUGE, "tokens"),
        (("tokens",), float("inf"), "tokens"),
        (("tokens",), 1e-300, "tokens"),
        (("constraints",), {"budget": float("nan")}, "constraints.budget"),
        (("constraints",), {"deadline_days": float("inf")}, "constraints.deadline_days"),
        (("constraints",), {"max_gpus": HUGE}, "constraints.max_gpus"),
        (("hardware",), [{"name": "a100_sxm4_40gb", "price_per_gpu_hour": float("nan")}],
         "hardware[0].price_per_gpu_hour"),
        (("hardware",), ["a100_sxm4_40gb"] * (MAX_FIXED_CHOICES + 1), "hardware"),
        (("failures",), {"checkpoint_interval": float("inf")}, "failures.checkpoint_interval"),
        (("failures",), {"mtbf_gpu_hours": float("nan")}, "failures.mtbf_gpu_hours"),
        (("failures",), {"restart_s": HUGE}, "failures.restart_s"),
        (("fixed",), {"tp": HUGE}, "fixed.tp"),
        (("fixed",), {"micro_batch": list(range(1, MAX_FIXED_CHOICES + 2))}, "fixed.micro_batch"),
        (("parallelism",), {"bucket_mb": float("nan")}, "parallelism.bucket_mb"),
        (("top",), 10**6, "top"),
        (("name",), -5, "name"),
        (("name",), float("nan"), "name"),
        (("description",), ["x"], "description"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)  # fmt: skip
def test_plan_numbers_are_bounded_and_finite(path: tuple[str, ...], value: Any, key: str) -> None:
    exc = _plan_error(path, value)
    assert exc.file == "p.yaml" and exc.key == key
    assert "\n" not in str(exc) and len(str(exc)) < 400


def test_too_many_layouts_is_refused_before_building_them() -> None:
    """gpus up to 4,096 and 7 global batches: 625,242 layouts, counted (not built) and refused."""
    plan = _plan(SMALL, gpus={"min": 1, "max": 4096}, fixed={},
                 training={**SMALL["training"], "global_batch": {"min": 64, "max": 4096}})  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        enumerate_layouts(plan, 24, 16)
    assert exc.value.key == "gpus" and f"at most {MAX_LAYOUTS:,}" in str(exc.value)


def test_too_many_combinations_is_refused() -> None:
    plan = _plan(SMALL, gpus={"min": 1, "max": MAX_GPUS}, fixed={"tp": list(range(1, 65))},
                 training={**SMALL["training"], "global_batch": list(range(8, 8 * 65, 8))})  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        enumerate_layouts(plan, 24, 16)
    assert exc.value.key == "gpus" and "combinations" in str(exc.value)


def test_layout_count_is_the_layouts_built() -> None:
    """The count that refuses a search is exactly the number of layouts it would build."""
    from simtrain.apps.plan.layouts import _group_layouts, _group_size, _groups

    plan = _plan(SMALL, fixed={"pp": [1, 2, 4], "micro_batch": [1, 3]}, gpus={"min": 8, "max": 64})
    grids = [(hw, list(range(8, 65)), (1, 2, 4), (1, 2, 4)) for hw in plan.hardware]
    for hw_name, gb, g, tp, pp, dp, cp in _groups(plan, grids):
        built = _group_layouts(plan, hw_name, gb, g, tp, pp, dp, (False,), cp)
        gpn = next(h.gpus_per_node for h in plan.hardware if h.name == hw_name)
        assert len(built) == _group_size(plan, gb, pp, dp, (False,), 0, tp, cp, gpn)
    layouts = enumerate_layouts(plan, 24, 16)
    assert len(layouts) == len(set(layouts)) > 0


def test_expected_wall_overflow_is_infinite_not_an_error() -> None:
    """e^{R/M} past float range raised OverflowError in goodput.expected_wall_s."""
    assert expected_wall_s(1e6, 10.0, 1.0, 1e9, 1e-3) == math.inf
    assert expected_wall_s(1e6, 1e9, 1.0, 1.0, 1e-3) == math.inf


def test_a_run_that_never_finishes_is_a_config_error() -> None:
    fm = FailureModel(mtbf_gpu_hours=1e-6, restart_s=1e9)
    with pytest.raises(ConfigError) as exc:
        run_estimate(1e12, 1e5, 1024, 2.0, 1e12, fm)
    assert exc.value.key == "failures" and "never finishes" in str(exc.value)


def test_a_run_past_the_age_of_the_universe_never_finishes() -> None:
    """A finite but astronomical expected time (Daly's e^(R/M): restarts of 700 s against a
    system MTBF of 4.5 s: 2.2e81 days) is refused as an infinite one is, the days named (a fuzz
    campaign, 2026-12-07: such a plan offered 4.14e+84 days as its best layout, and its Pareto
    chart crashed matplotlib's log axis past ~1e250); just under the bound, an answer."""
    from simtrain.apps.goodput import NEVER_S

    fm = FailureModel(mtbf_gpu_hours=0.01, restart_s=700.0)
    wall = expected_wall_s(1e7, 30.0, 100.0, 700.0, 4.5)
    assert math.isfinite(wall) and wall > NEVER_S
    with pytest.raises(ConfigError) as exc:
        run_estimate(1e12, 1e5, 8, 2.0, 1e12, fm)
    assert exc.value.key == "failures" and "age of the universe" in str(exc.value)
    assert "on 8 GPUs" in str(exc.value)
    ok = run_estimate(1e12, 1e5, 8, 2.0, 1e12, FailureModel(mtbf_gpu_hours=1000.0))
    assert ok.expected_s < NEVER_S


def test_big_numbers_keep_a_space_between_columns() -> None:
    """The plan table's days (9 wide) and cost (14 wide) cells switch to 3 significant digits
    before they would touch the column before: 5,130,320.92 days printed as '5130320.92' ran
    into the headroom ('9.405130320.92')."""
    from simtrain.apps.plan.output import _big

    assert _big(5130320.92, ".2f", 9) == "5.13e+06"
    assert _big(12345.67, ".2f", 9) == "12345.67"  # 8 characters: a space left
    assert _big(123456.78, ".2f", 9) == "1.23e+05"  # 9 would touch the column before
    assert _big(3940086468.0, ",.0f", 14) == "3,940,086,468"
    assert _big(39400864680.0, ",.0f", 14) == "3.94e+10"


def test_free_gpus_cost_nothing_not_nan() -> None:
    run = run_estimate(1e12, 1e5, 64, 0.0, 1e12, FailureModel())
    assert run.cost == 0.0 and math.isfinite(run.days)


def test_config_error_survives_a_worker_process() -> None:
    """Raised in a screening worker, a ConfigError is pickled back whole."""
    import pickle

    err = ConfigError("p.yaml", "failures", "never finishes", 1.5, "a | b")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.key == "failures"


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
def test_plan_fifo_is_not_read(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as exc:
        load_plan(fifo)
    assert "not a regular file" in str(exc.value)


def test_a_plan_runs_every_layout_under_its_runtime() -> None:
    """``runtime:`` in a plan reaches every layout's scenario (the fast per-layout path too);
    its overlap options apply where a layout has the communication, and a bad value is the
    same one-line error a scenario file gives."""
    rt = {"name": "megatron_core", "tp_comm_overlap": True, "overlap_grad_reduce": True}
    plan = _plan(GPT3_1024, runtime=rt)
    ctx = build_context(plan)
    layouts = enumerate_layouts(plan, 96, 96)
    lay = next(x for x in layouts if x.tp > 1)
    base = ctx.bases[(lay.hardware, lay.global_batch)]
    fast = layout_scenario(base, lay, plan.file)
    assert fast == parse_scenario(scenario_data(plan, lay), plan.file, ROOT)
    assert fast.runtime.name == "megatron_core" and fast.runtime.tp_comm_overlap
    with pytest.raises(ConfigError) as info:
        _plan(GPT3_1024, runtime={"name": "megatron"})
    assert "runtime" in str(info.value) and "megatron_core" in str(info.value)


def _plan_in_a_daemon(path: str) -> int:
    from click.testing import CliRunner

    from simtrain.cli import main

    return CliRunner().invoke(main, ["plan", "--json", "--workers", "4", path, "--out",
                                     str(Path(path).parent / "out")]).exit_code  # fmt: skip


def test_plan_with_workers_inside_a_daemonic_process(tmp_path: Path) -> None:
    """Fuzz campaign of 2026-12-03 (plan-002): ``--workers`` in a daemonic process (a worker of
    another pool) was a traceback; the screen then runs in that process."""
    import multiprocessing as mp

    import yaml

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(copy.deepcopy(SMALL)))
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply(_plan_in_a_daemon, (str(plan),)) == 0


MIXTRAL_PLAN: dict[str, Any] = {
    "name": "moe",
    "model": {"preset": "mixtral-8x7b", "flash_attention": True},
    "tokens": 1e12,
    "training": {"seq_len": 4096, "global_batch": 256, "precision": "bf16", "optimizer": "adamw"},
    "hardware": [{"name": "h100_sxm5_80gb", "price_per_gpu_hour": 4.0}],
    "gpus": 64,
    "fixed": {"pp": [4], "tp": [1], "micro_batch": [1], "recompute": ["none"], "zero_stage": [1],
              "precision": ["bf16", "fp8_current"]},
}  # fmt: skip


def test_moe_plan_searches_the_overlapping_schedules_and_precisions() -> None:
    """A model with experts and no fixed schedule also tries combined 1F1B (with its virtual
    stages) and DualPipeV; fixed.precision is searched like any fixed choice, and FP8 on a GPU
    without an FP8 rate is screened out with check_layout's reason (A100: no fp8 peak)."""
    from simtrain.apps.plan.screen import layout_scenario
    from simtrain.spec.scenario import parse_scenario

    hw = [*MIXTRAL_PLAN["hardware"], {"name": "a100_sxm4_80gb", "price_per_gpu_hour": 2.0}]
    plan = _plan(MIXTRAL_PLAN, hardware=hw)
    layouts = enumerate_layouts(plan, 32, 32, experts=8)
    scheds = {x.schedule for x in layouts}
    assert {"combined_1f1b", "dualpipe_v", "dualpipe", "1f1b", "interleaved"} <= scheds
    dense = enumerate_layouts(plan, 32, 32, experts=0)
    assert not {"combined_1f1b", "dualpipe_v", "dualpipe"} & {x.schedule for x in dense}
    assert {x.virtual_stages for x in layouts if x.schedule == "combined_1f1b"} == {2}
    assert {x.precision for x in layouts} == {"bf16", "fp8_current"}
    lay = next(x for x in layouts if x.schedule == "combined_1f1b" and x.ep == 8
               and x.precision == "fp8_current" and x.hardware == "h100_sxm5_80gb")  # fmt: skip
    data = scenario_data(plan, lay)
    assert data["training"]["precision"] == "fp8_current"
    sc = parse_scenario(data, "plan.yaml")
    assert sc.training.precision == "fp8_current" and sc.parallelism.schedule == "combined_1f1b"
    a100 = next(x for x in layouts if x.hardware == "a100_sxm4_80gb" and x.precision
                == "fp8_current")  # fmt: skip
    base = parse_scenario(scenario_data(plan, a100._replace(precision="bf16")), "plan.yaml")
    with pytest.raises(ConfigError, match="training.precision"):
        layout_scenario(base, a100, "plan.yaml")
    with pytest.raises(ConfigError, match="fixed.precision"):
        _plan(SMALL, fixed={"precision": ["fp9"]})


def test_layout_scenarios_drop_runtime_options_they_have_nothing_for() -> None:
    """A plan's DeepEP + FP8-dispatch runtime on a layout without expert parallelism or FP8:
    the layout's scenario (best.yaml) leaves those options out, so it passes the checks a
    scenario file gets (spec.scenario.check_runtime_options refuses them); an EP layout in FP8
    keeps them. The same runtime as a scenario file's on an ep 1 layout is refused."""
    from simtrain.spec.scenario import check_runtime_options, parse_scenario

    rt = {"name": "megatron_core", "moe_dispatcher": "deepep", "moe_fp8_dispatch": True}
    fixed = {**MIXTRAL_PLAN["fixed"], "schedule": ["1f1b"], "ep": [1, 8]}
    plan = _plan(MIXTRAL_PLAN, fixed=fixed, runtime=rt)
    layouts = enumerate_layouts(plan, 32, 32, experts=8)
    for lay in layouts:
        data = scenario_data(plan, lay)
        runtime = data["runtime"]
        assert ("moe_dispatcher" in runtime) == (lay.ep > 1)
        assert ("moe_fp8_dispatch" in runtime) == (lay.ep > 1 and lay.precision == "fp8_current")
        sc = parse_scenario(data, "plan.yaml")
        check_runtime_options(sc, runtime, "best.yaml")  # as loading best.yaml does
        refused = lay.ep == 1 or lay.precision != "fp8_current"
        with pytest.raises(ConfigError, match="runtime.moe") if refused else nullcontext():
            check_runtime_options(sc, rt, "best.yaml")


def test_layout_scenarios_drop_graph_scopes_under_full_recompute() -> None:
    """A plan's per-layer CUDA graphs (runtime.cuda_graph_scope) on a full-recompute layout:
    Megatron captures full recompute only in a whole-iteration graph, so the layout's scenario
    leaves the scopes out and passes the check a scenario file gets; the other layouts keep
    them."""
    from simtrain.spec.scenario import check_runtime_options, parse_scenario

    rt = {"name": "megatron_core", "cuda_graph_scope": ["attn", "moe_router", "moe_preprocess"]}
    fixed = {**MIXTRAL_PLAN["fixed"], "schedule": ["1f1b"], "recompute": ["none", "full"]}
    plan = _plan(MIXTRAL_PLAN, fixed=fixed, runtime=rt)
    layouts = enumerate_layouts(plan, 32, 32, experts=8)
    assert {lay.recompute for lay in layouts} == {"none", "full"}
    for lay in layouts:
        data = scenario_data(plan, lay)
        assert ("cuda_graph_scope" in data["runtime"]) == (lay.recompute != "full")
        check_runtime_options(parse_scenario(data, "plan.yaml"), data["runtime"], "best.yaml")


@pytest.mark.parametrize(("sp", "pp", "schedule", "tp"), [
    (True, 1, "1f1b", 16), (False, 1, "1f1b", 16),
    (True, 2, "zb_h1", 16), (False, 2, "zb_h1", 32),  # I and W apart: the I action's collectives
])  # fmt: skip
def test_closed_form_prices_the_tp_overlap_as_the_simulation(sp: bool, pp: int, schedule: str,
                                                             tp: int) -> None:  # fmt: skip
    """--tp-comm-overlap on two nodes of TP (16): with sequence parallelism each collective
    pipelined with its GEMM, the exposed excess after the action; without it the collectives
    beside all of the action's compute (passes.tp_pass). The pre-screen prices both as the
    simulation lowers them: within 3 % (the pooled form was 48 % high before: 0.113 s against
    0.076 s). No host
    time (host_us_per_op 0): this small step would be host-bound, which the pre-screen does not
    price."""
    data = {"name": "tpo", "model": {"preset": "llama2-7b", "layers": 8, "flash_attention": True},
            "hardware": "h100_sxm5_80gb",
            "runtime": {"name": "megatron_core", "tp_comm_overlap": True, "host_us_per_op": 0},
            "cluster": {"nodes": tp * pp // 8, "gpus_per_node": 8},
            "training": {"seq_len": 4096, "global_batch": 8, "micro_batch": 1,
                         "precision": "bf16"},
            "parallelism": {"tp": tp, "pp": pp, "schedule": schedule,
                            "sequence_parallel": sp}}  # fmt: skip
    sc = parse_scenario(data, "tpo.yaml", ROOT)
    est = closed_form_step_s(sc, memory_check(sc))
    assert est == pytest.approx(simulate_scenario(sc, detail=False).metrics.step_time_s, rel=0.03)


@pytest.mark.parametrize(("pp", "schedule"), [(1, "1f1b"), (2, "1f1b"), (2, "zb_h1")])
def test_closed_form_is_host_bound_where_the_simulation_is(pp: int, schedule: str) -> None:
    """A small step whose host issues kernels slower than the GPU runs them (Megatron-Core's
    eager dispatch, host_us_per_op 26: Llama 2 7B, 8 layers, tp 16): the pre-screen takes each
    action's longer of GPU and host time, as the simulation's host stream makes it wait (it
    priced the GPU alone before: a third of the simulated 0.333 s at pp 1). Within 0.5 %
    (measured: 0.0 %, -0.19 %, -0.17 %; an I/W host split half and half would be -1.1 % on
    zb_h1)."""
    data = {"name": "host", "model": {"preset": "llama2-7b", "layers": 8, "flash_attention": True},
            "hardware": "h100_sxm5_80gb", "runtime": "megatron_core",
            "cluster": {"nodes": 2 * pp, "gpus_per_node": 8},
            "training": {"seq_len": 4096, "global_batch": 8, "micro_batch": 1,
                         "precision": "bf16"},
            "parallelism": {"tp": 16, "pp": pp, "schedule": schedule,
                            "sequence_parallel": True}}  # fmt: skip
    sc = parse_scenario(data, "host.yaml", ROOT)
    assert sc.runtime.host_us_per_op > 0
    est = closed_form_step_s(sc, memory_check(sc))
    sim = simulate_scenario(sc, detail=False)
    assert est == pytest.approx(sim.metrics.step_time_s, rel=0.005)
    busy = dict(sim.metrics.time_breakdown_s)
    assert busy["host_exposed"] > 0  # the simulation is host-bound here


def test_memory_check_finds_a_middle_stage_peak_of_an_uneven_split() -> None:
    """With layer counts that differ by rank (DeepSpeed's embedding_as_layer: the embedding and
    the head each weigh a layer, so stage 1 holds more layers than stage 0 and as many micro-
    batches almost), the peak may be on a middle stage: the check sees it, and a layout fits iff
    estimate_memory says so (review: Llama-3-8B tp 4 pp 16, micro-batch 4, was estimated to fit
    with stage 1 at 94.4 of 79.3 GiB)."""
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario("scenarios/llama3_8b_cp.yaml", [
        "parallelism.cp=1", "parallelism.tp=4", "parallelism.pp=16", "parallelism.dp=2",
        "cluster.nodes=16", "parallelism.zero_stage=3", "training.micro_batch=4",
        "training.global_batch=512", "training.seq_len=8192", "training.recompute=none",
        "parallelism.layer_split=embedding_as_layer"])  # fmt: skip
    stages = memory_check(sc)
    full = estimate_memory(sc)
    assert not full.fits and all(s.fits for s in stages) == full.fits
    assert max(s.peak_memory_bytes for s in stages) == full.peak_memory_bytes


def test_the_table_tells_searched_choices_apart() -> None:
    """The schedule column names what a plan searched beyond the layout: sequence parallelism
    (sp), a fixed.precision choice, and the global batch where the plan has more than one
    (review: two rows with the same layout at global batch 256 and 1,024 read the same)."""
    from simtrain.apps.plan.layouts import Layout
    from simtrain.apps.plan.output import _schedule_text

    lay = Layout("h100_sxm5_80gb", 64, 2, 2, 16, 1, 1, "none", "interleaved", 2, 1024,
                 sequence_parallel=True, precision="fp8_current")  # fmt: skip
    assert _schedule_text(lay) == "interleaved v2 sp fp8_current"
    assert _schedule_text(lay, batches=2) == "interleaved v2 sp fp8_current gb1024"


def test_a_gpu_count_the_run_never_finishes_on_is_one_rejected_layout(tmp_path) -> None:
    """A failure model under which the run never finishes on 64 GPUs (mtbf 0.1 GPU-hours: past
    the age of the universe) rejects those layouts, naming why, and the plan goes on with the
    8-GPU ones (review: the first such layout aborted the whole plan); their astronomical days
    (7.5e+10) print in one cell."""
    from click.testing import CliRunner

    from simtrain.cli import main

    plan = tmp_path / "hopeless.yaml"
    plan.write_text(
        "name: hopeless\nmodel: {preset: llama3-8b, flash_attention: true}\ntokens: 1.0e12\n"
        "training: {seq_len: 8192, global_batch: 512, precision: bf16, optimizer: adamw}\n"
        "hardware: [{name: h100_sxm5_80gb, price_per_gpu_hour: 4.0}]\ngpus: [8, 64]\n"
        "failures: {mtbf_gpu_hours: 0.1}\n"
        "fixed: {tp: 1, pp: 1, zero_stage: 3, micro_batch: 1, recompute: none}\ntop: 2\n"
    )
    r = CliRunner().invoke(main, ["plan", str(plan), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "out" / "plan.csv").open()))
    assert any(x["gpus"] == "64" and "never finishes" in x["reason"] for x in rows)
    line = next(x for x in r.stdout.splitlines() if x.lstrip().startswith("1 "))
    assert len(line) < 160 and "e+" in line


def test_layouts_all_rejected_name_the_reason(tmp_path: Path) -> None:
    """Every layout rejected by the layout checks (tp 3 with 32 heads) said "no layout fits";
    now the most common reason, with its key."""
    import yaml

    plan_file = tmp_path / "tp3.yaml"
    plan_file.write_text(yaml.safe_dump({**SMALL, "gpus": 12, "fixed": {"tp": [3], "pp": [1]}}))
    text = plan_command(str(plan_file), as_json=False, out_dir=str(tmp_path / "out"), workers=1,
                        executor="local", scheduler=None, top=2)  # fmt: skip
    assert "no layout passes the layout checks" in text and "no layout fits" not in text
    assert "parallelism.tp: must divide model.heads" in text  # the reason names the key
    # tp 3 over 8-16 GPUs (whole nodes of 8): no layout at all, said so
    plan_file.write_text(yaml.safe_dump({**SMALL, "fixed": {"tp": [3], "pp": [1]}}))
    text = plan_command(str(plan_file), as_json=False, out_dir=str(tmp_path / "out2"),
                        workers=1, executor="local", scheduler=None, top=2)  # fmt: skip
    assert "no layout to evaluate" in text and "no layout fits" not in text


def test_micro_batches_searched_are_every_divisor_up_to_8() -> None:
    """A replica's batch of 12 tries micro-batches 1, 2, 3, 4 and 6 (only powers of two before:
    6, which fits where 12 does not, was never tried)."""
    plan = _plan(
        SMALL,
        training={**SMALL["training"], "global_batch": 96},
        gpus=8,
        fixed={"tp": [1], "pp": [1], "zero_stage": [0], "recompute": ["none"]},
    )
    mbs = sorted({lay.micro_batch for lay in enumerate_layouts(plan, 24, 32)})
    assert mbs == [1, 2, 3, 4, 6]  # 96 / dp 8 = 12


def test_near_ties_fall_to_memory_headroom() -> None:
    """Two layouts 2 ns apart in step time are equally fast: the one with more headroom ranks
    first (raw floats ranked the 2 ns first), on either side of any rounding boundary (6
    significant digits put 2.2245450001 and 2.2245449999 apart); a real difference (above
    TIE_FRACTION) still ranks by time."""
    from simtrain.apps.plan.rank import TIE_FRACTION, rank_rows

    a = run_plan(_plan(SMALL), LocalExecutor(1)).ranked[0]
    assert a.status == "simulated"
    for base in (a.days, 2.2245449999):
        lo = a._replace(days=base)
        roomy = a._replace(
            days=base * (1 + 1e-10) if base != 2.2245449999 else 2.2245450001,
            capacity_bytes=a.capacity_bytes + 2**30,
            layout=a.layout._replace(micro_batch=a.layout.micro_batch + 1),
        )
        assert rank_rows([lo, roomy], "time")[0] is roomy
        slower = roomy._replace(days=base * (1 + 10 * TIE_FRACTION))
        assert rank_rows([lo, slower], "time")[0] is lo


def test_rows_on_an_estimated_gpu_are_marked(tmp_path: Path) -> None:
    """A GPU whose efficiency.matmul is an estimate (MI300X) is marked in the table with the
    caveat `simtrain run` prints (it won plans unmarked: a review of the CLI)."""
    import yaml

    plan_file = tmp_path / "est.yaml"
    hardware = [{"name": "mi300x_192gb", "price_per_gpu_hour": 4.0},
                {"name": "h100_sxm5_80gb", "price_per_gpu_hour": 4.0}]  # fmt: skip
    plan_file.write_text(yaml.safe_dump({**SMALL, "hardware": hardware}))
    text = plan_command(str(plan_file), as_json=False, out_dir=str(tmp_path / "out"), workers=1,
                        executor="local", scheduler=None, top=4)  # fmt: skip
    assert "mi300x_192gb*" in text and "h100_sxm5_80gb*" not in text
    assert "* mi300x_192gb: efficiency.matmul is an estimate" in text


_ZERO2 = {"name": "z2", "model": {"preset": "gpt3-13b", "flash_attention": True},
          "hardware": "a100_sxm4_80gb", "cluster": {"nodes": 4, "gpus_per_node": 8},
          "training": {"seq_len": 2048, "global_batch": 128, "micro_batch": 2,
                       "precision": "bf16", "optimizer": "adamw"},
          "parallelism": {"dp": 4, "tp": 2, "pp": 4, "schedule": "1f1b", "zero_stage": 2}}  # fmt: skip


@pytest.mark.parametrize("changes", [
    {},
    {"runtime": "deepspeed", "parallelism": {"tp": 1, "pp": 1, "dp": 32, "zero_stage": 2},
     "training": {"micro_batch": 1}},  # no overlap: every piece waits
    {"cluster": {"nodes": 16, "gpus_per_node": 2}, "parallelism": {"tp": 1, "pp": 4, "dp": 8,
     "schedule": "dualpipe", "zero_stage": 2}, "training": {"micro_batch": 1, "seq_len": 256}},
])  # fmt: skip
def test_zero2_closed_form_follows_the_simulation(changes: dict) -> None:
    """The planner's ZeRO-2 term (every micro-batch's reduce-scatter beside the compute, or
    waited for without overlap; DualPipe's micro-batches each through half the rank's chunks)
    within 5 % of the simulation (it was +77 % under DualPipe: a review, 2026-12-05)."""
    from simtrain.apps.plan.estimate import closed_form_step_s

    data = copy.deepcopy(_ZERO2)
    for k, v in changes.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    sc = parse_scenario(data, "z2.yaml")
    sim = simulate_scenario(sc, detail=False).metrics.step_time_s
    closed = closed_form_step_s(sc, estimate_memory(sc).stages)
    assert abs(closed / sim - 1) < 0.05, (closed, sim)
    if sc.runtime.name == "deepspeed":  # what ZeRO-2 adds over ZeRO-1, as the simulation adds it
        one = parse_scenario({**data, "parallelism": {**data["parallelism"], "zero_stage": 1}},
                             "z1.yaml")  # fmt: skip
        sim_1 = simulate_scenario(one, detail=False).metrics.step_time_s
        closed_1 = closed_form_step_s(one, estimate_memory(one).stages)
        assert sim - sim_1 > 0.1 * sim  # (the reduction every micro-batch, not hidden)
        assert (closed - closed_1) == pytest.approx(sim - sim_1, rel=0.1)


def test_memory_headroom_turns_a_near_full_layout_away(small_result: Any) -> None:
    """constraints.memory_headroom h: a layout whose peak leaves less than h of the GPU free is
    ``no_fit`` at screening with the share it leaves (rounded down); one with more room keeps
    its status; the table names the constraint and counts those it turned away; a fitting row
    at >= 85 % of the GPU is flagged. Out of (0, 0.9] is an error naming the key."""
    fitting = [r for r in small_result.rows if r.fits and r.capacity_bytes]
    ratios = sorted(r.peak_memory_bytes / r.capacity_bytes for r in fitting)
    h = 1 - ratios[len(ratios) // 2]  # half of the fitting layouts leave less free than this
    plan = _plan(SMALL, constraints={**SMALL["constraints"], "memory_headroom": round(h, 3)})
    assert plan.constraints.memory_headroom == round(h, 3)
    ctx = build_context(plan)
    turned = kept = 0
    for r in fitting:
        row = screen_layout(ctx, r.layout)
        free = 1 - row.peak_memory_bytes / row.capacity_bytes
        if free < round(h, 3):
            assert row.status == "no_fit" and "memory_headroom" in row.reason, row
            shown = math.floor(1000 * free) / 10  # rounded down: never the limit itself
            assert f"leaves {shown:.1f} % of the GPU's memory free" in row.reason
            turned += 1
        else:
            assert row.status == "estimated"
            kept += 1
    assert turned and kept
    res = run_plan(plan, LocalExecutor(2))
    for r in res.best:
        assert r.peak_memory_bytes <= (1 - round(h, 3)) * r.capacity_bytes
    text = plan_table(res)
    assert f"{100 * round(h, 3):g} % of each GPU's memory left free" in text.splitlines()[0]
    n = sum(1 for r in res.rows if r.status == "no_fit" and "memory_headroom" in r.reason)
    assert n >= turned and f"({n:,} of them only for the memory headroom)" in text
    plain = plan_table(small_result)
    assert "! #" not in plain  # its best rows hold 12-77 % of the GPU
    assert "memory_headroom" not in plain.splitlines()[0]
    # the second row at 85 % of its GPU (costs.memory.NEAR_CAPACITY) is flagged, only it
    best = list(small_result.best)
    best[1] = best[1]._replace(peak_memory_bytes=math.ceil(0.85 * best[1].capacity_bytes))
    near = plan_table(dataclasses.replace(small_result, best=tuple(best)))
    assert "\n! #2: within 15 % of the GPU's memory" in near and "#1" not in near.split("! ")[1]
    for value in (0, 0.95, "a", True):
        with pytest.raises(ConfigError, match="constraints.memory_headroom"):
            _plan(SMALL, constraints={"memory_headroom": value})


def test_memory_headroom_after_the_full_simulation(small_result: Any) -> None:
    """The full simulation's peak (the timeline's, if higher) is held to the headroom too
    (search._finish): a simulated layout whose timeline peak crosses it becomes no_fit."""
    from simtrain.apps.plan.search import _finish
    from simtrain.apps.plan.simulate import SimOutcome

    plan = _plan(SMALL, constraints={**SMALL["constraints"], "memory_headroom": 0.2})
    ctx = build_context(plan)
    row = next(r for r in small_result.rows if r.status == "simulated"
               and r.peak_memory_bytes < 0.5 * r.capacity_bytes)  # fmt: skip
    screened = screen_layout(ctx, row.layout)
    assert screened.status == "estimated"
    cap = screened.capacity_bytes
    for timeline, status in ((int(0.5 * cap), "simulated"), (int(0.9 * cap), "no_fit")):
        sim = SimOutcome(row.step_time_s, row.tokens_per_s, row.mfu, row.tflops_per_gpu,
                         screened.peak_memory_bytes, timeline, cap, True)  # fmt: skip
        res = _finish(plan, ctx, [screened], {row.layout: sim}, False, "", 0.0)
        assert res.rows[0].status == status, res.rows[0]
        if status == "no_fit":
            assert "leaves 10.0 % of the GPU's memory free" in res.rows[0].reason


def test_a_plan_with_whole_experts_searches_the_folded_ep_group() -> None:
    """parallelism.expert_tp: 1 (whole experts, Megatron-Bridge's MoE recipes): the planner
    searches ep over the divisors of tp x dp (and the experts), so at tp 2 an EP group larger
    than dp is a candidate, never ep 1 at tp 2; each candidate is a valid scenario."""
    from simtrain.spec.scenario import parse_scenario

    fixed = {**MIXTRAL_PLAN["fixed"], "tp": [2], "pp": [8], "schedule": ["1f1b"],
             "precision": ["bf16"]}  # fmt: skip
    plan = _plan(MIXTRAL_PLAN, fixed=fixed, parallelism={"expert_tp": 1})
    layouts = enumerate_layouts(plan, 32, 32, experts=8)
    # 64 GPUs / (tp 2 x pp 8): dp 4; tp x dp = 8, the divisors of the 8 experts but 1
    assert {x.dp for x in layouts} == {4} and {x.ep for x in layouts} == {2, 4, 8}
    folded = next(x for x in layouts if x.ep == 8)  # an EP group twice dp
    sc = parse_scenario(scenario_data(plan, folded), "plan.yaml")
    assert (sc.parallelism.etp, sc.parallelism.ep, sc.parallelism.expert_dp) == (1, 8, 1)
    default = enumerate_layouts(_plan(MIXTRAL_PLAN, fixed=fixed), 32, 32, experts=8)
    assert {x.ep for x in default} == {1, 2, 4}  # divisors of dp 4
