"""LP-FT as two phases with its total cost (Kumar et al. 2022 §4) and QLoRA's paged optimizer
(Dettmers et al. 2023 §3; bitsandbytes' ``is_paged`` states in unified memory)."""

from __future__ import annotations

import json
from math import ceil
from pathlib import Path

import pytest

from simtrain.apps.simulate import lp_ft_phases, simulate_lp_ft, simulate_scenario
from simtrain.costs.memory import estimate_memory, paged_peak
from simtrain.costs.params import layer_param_tensors, paged_state_bytes, trainable_params
from simtrain.errors import ConfigError
from simtrain.report.tables import run_summary
from simtrain.spec.model import preset
from simtrain.spec.precision import PAGED_MIN_NUMEL
from simtrain.spec.scenario import PeftSpec, TrainingSpec, load_scenario

ROOT = Path(__file__).resolve().parent.parent
LP_FT = ROOT / "scenarios" / "lp_ft_gpt2.yaml"
QLORA = ROOT / "scenarios" / "qlora_paged_13b_4090.yaml"
# A small LP-FT run (fast to simulate, small enough for the PyTorch reference model).
TINY = (
    "model={layers: 2, hidden: 64, heads: 4, vocab: 256, max_positions: 128}",
    "training.seq_len=64",
    "training.global_batch=8",
    "training.micro_batch=4",
)


def _error(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as ei:
        load_scenario(path, overrides)
    text = str(ei.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------------------------
# LP-FT: two phases


def test_two_phase_cost_is_the_sum_of_the_single_phase_runs() -> None:
    """Each phase: steps x the step time of a run of that phase alone (its own scenario, with
    ``phase:`` given through the parser); the total: their sums; the peak: the larger; the
    tokens steps x global batch x sequence."""
    sc = load_scenario(LP_FT)
    phased = simulate_lp_ft(sc)
    pe = sc.training.peft
    steps = {"probe": pe.probe_steps, "finetune": pe.finetune_steps}
    assert steps == {"probe": 2000, "finetune": 10000}
    alone = {}
    for ph in steps:
        one = load_scenario(LP_FT, (f"training.peft={{method: lp_ft, phase: {ph}}}",))
        alone[ph] = simulate_scenario(one)
    costs = {c.phase: c for c in phased.costs}
    for ph, n in steps.items():
        c, res = costs[ph], alone[ph]
        assert c.steps == n
        assert c.step_time_s == res.metrics.step_time_s
        assert c.time_s == n * res.metrics.step_time_s
        assert c.tokens == n * 32 * 1024
        assert c.gpu_hours == pytest.approx(n * res.metrics.step_time_s / 3600, rel=1e-12)
        assert c.peak_memory_bytes == res.memory.peak_memory_bytes
        assert c.trainable_params == res.memory.trainable_params
    t = phased.total
    assert t.steps == 12000
    assert t.time_s == pytest.approx(sum(steps[p] * alone[p].metrics.step_time_s for p in steps))
    assert t.tokens == 12000 * 32 * 1024
    assert t.gpu_hours == pytest.approx(t.time_s / 3600)
    assert t.peak_memory_bytes == max(r.memory.peak_memory_bytes for r in alone.values())
    assert t.fits == all(r.memory.fits for r in alone.values())
    # the probe trains the head only: its step is cheaper and its peak lower
    assert costs["probe"].step_time_s < costs["finetune"].step_time_s
    assert costs["probe"].peak_memory_bytes < costs["finetune"].peak_memory_bytes
    assert phased.main.timeline.makespan_ns == alone["finetune"].timeline.makespan_ns


def test_two_phase_summary_has_phases_and_the_peak_over_both() -> None:
    sc = load_scenario(LP_FT)
    phased = simulate_lp_ft(sc)
    doc = run_summary(phased.main, phased)
    assert set(doc["phases"]) == {"probe", "finetune", "total", "shown"}
    assert doc["phases"]["shown"] == "finetune"
    assert doc["phases"]["probe"]["steps"] == 2000
    assert doc["phases"]["total"]["time_s"] == phased.total.time_s
    assert doc["peak_memory_bytes"] == phased.total.peak_memory_bytes
    assert doc["fits"] is phased.total.fits
    assert "phases" not in run_summary(phased.main)  # a one-phase run's summary has none


def test_peak_is_the_max_and_fits_only_if_both_fit() -> None:
    """On a 24 GB card with micro-batch 64 the finetune phase does not fit and the probe does:
    the run does not fit, its peak is the finetune phase's."""
    sc = load_scenario(LP_FT, ("hardware=rtx4090_24gb", "training.micro_batch=32"))
    phased = simulate_lp_ft(sc)
    probe, ft = phased.costs
    assert probe.fits and not ft.fits
    assert not phased.fits and phased.total.peak_memory_bytes == ft.peak_memory_bytes


def test_probe_phase_trains_the_head_only_as_the_pytorch_reference() -> None:
    """The probe phase's trainable parameters: a fresh untied head, vocab x hidden, counted the
    same by the cost model and by the PyTorch reference model (``requires_grad``)."""
    torch = pytest.importorskip("torch")
    from simtrain.torchref.measure import build_reference_model

    sc = load_scenario(LP_FT, TINY)
    (probe_name, _, probe), (_, _, ft) = lp_ft_phases(sc)
    assert probe_name == "probe" and probe.training.peft.phase == "probe"
    for one, expected in ((probe, 256 * 64), (ft, sc.model.total_params())):
        model = build_reference_model(one.model, one.training)
        counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert isinstance(next(model.parameters()), torch.Tensor)
        assert counted == expected == trainable_params(one.model, one.training)
    phased = simulate_lp_ft(sc)
    assert [c.trainable_params for c in phased.costs] == [256 * 64, sc.model.total_params()]


def test_phase_only_is_the_one_phase_spec() -> None:
    pe = PeftSpec(method="lp_ft", probe_steps=3, finetune_steps=5)
    assert pe.two_phase and not pe.phase_only("probe").two_phase
    assert pe.phase_only("probe") == PeftSpec(method="lp_ft", phase="probe")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (("training.peft.phase=probe",), ["training.peft.phase", "probe_steps"]),
        (("training.peft.probe_steps=0",), ["training.peft.probe_steps", "positive"]),
        (("training.peft.finetune_steps=-5",), ["training.peft.finetune_steps", "positive"]),
        (("training.peft={method: lp_ft, probe_steps: 10}",), ["training.peft.finetune_steps"]),
        (("training.peft.method=lora",), ["training.peft.probe_steps", "lp_ft"]),
        (("training.peft.probe_steps=1.5",), ["training.peft.probe_steps", "integer"]),
    ],
)
def test_lp_ft_bad_input(overrides: tuple[str, ...], words: list[str]) -> None:
    text = _error(LP_FT, *overrides)
    for w in words:
        assert w in text


# ---------------------------------------------------------------------------------------------
# Paged optimizer

# Llama-2-13B, LoRA r = 64 on every linear: per layer 64 x (q, k, v, o: 4 x (5120 + 5120);
# gate, up: 2 x (5120 + 13824); down: 13824 + 5120) = 6,258,688 parameters, 40 layers.
LORA_13B = 40 * 64 * (4 * 10240 + 3 * (5120 + 13824))


def test_lora_parameters_of_the_qlora_scenario() -> None:
    sc = load_scenario(QLORA)
    assert LORA_13B == 250_347_520 == trainable_params(sc.model, sc.training)


def test_paged_bytes_are_what_does_not_fit_bounded_by_the_states() -> None:
    """paged = min(pageable, max(0, need - capacity)), with need the peak of the same scenario
    without paging (the plain memory model) and pageable = 2 fp32 Adam states of every LoRA
    tensor (all >= 1e5 elements here)."""
    sc = load_scenario(QLORA)
    cap = sc.hardware.memory_bytes
    pageable = 2 * 4 * LORA_13B
    for mb, paged_expected_all in ((4, False), (10, False), (16, True)):
        sets = (f"training.micro_batch={mb}", f"training.global_batch={mb}")
        paged = estimate_memory(load_scenario(QLORA, sets)).stages[0]
        plain = estimate_memory(
            load_scenario(QLORA, (*sets, "training.peft.paged_optimizer=false"))
        ).stages[0]
        need = plain.peak_memory_bytes
        assert plain.pageable_bytes == plain.paged_bytes == 0
        assert paged.pageable_bytes == pageable
        assert paged.peak_memory_bytes_unpaged == need
        assert paged.paged_bytes == min(pageable, max(0, need - cap))
        assert (paged.paged_bytes == pageable) is paged_expected_all
        assert paged.peak_memory_bytes == need - paged.paged_bytes
    # micro-batch 4 fits as it is: nothing paged; 10 fits only with paging; 16 not even then
    rep = estimate_memory(sc)
    s = rep.stages[0]
    assert 0 < s.paged_bytes < pageable
    assert rep.fits and s.peak_memory_bytes == cap
    assert s.peak_memory_bytes_unpaged > cap
    doc = rep.to_json()
    assert doc["paged_bytes"] == s.paged_bytes and doc["fits_unpaged"] is False
    assert dict(s.peak_memory_bytes_by_category)["optimizer_states"] == pageable - s.paged_bytes
    assert sum(dict(s.peak_memory_bytes_by_category).values()) == s.peak_memory_bytes


def test_paged_peak_keeps_the_optimizer_moment() -> None:
    """The optimizer step needs every state back: when its moment is the larger, paging at the
    activation peak does not lower the peak."""
    at_walk = {"optimizer_states": 100, "activations": 900}
    at_opt = {"optimizer_states": 100, "activations": 0, "buffers": 950}
    peak, paged = paged_peak(at_walk, at_opt, pageable=100, capacity=960)
    assert paged == 40 and sum(peak.values()) == 1050 and peak == at_opt
    peak, paged = paged_peak(at_walk, {"optimizer_states": 100}, pageable=100, capacity=960)
    assert paged == 40 and sum(peak.values()) == 960 and peak["optimizer_states"] == 60


def test_only_tensors_of_1e5_elements_are_paged() -> None:
    """bitsandbytes' get_state_buffer pages a state only for p.numel() >= 1e5: LoRA r = 16 on
    Llama-2-7B's q (4096 x 16 = 65,536 elements per matrix) pages nothing, r = 32 (131,072)
    every matrix; 8-bit Adam pages its two 1-byte states, not the absmax."""
    m = preset("llama2-7b")

    def pageable(rank: int, optimizer: str = "adamw") -> int:
        peft = PeftSpec(method="qlora", rank=rank, target_modules=("q",), paged_optimizer=True)
        t = TrainingSpec(precision="bf16", optimizer=optimizer, peft=peft)
        return paged_state_bytes(layer_param_tensors(m, t), t)

    assert 4096 * 16 < PAGED_MIN_NUMEL <= 4096 * 32
    assert pageable(16) == 0
    assert pageable(32) == 8 * 2 * 4096 * 32
    assert pageable(32, "adam8bit") == 2 * 2 * 4096 * 32
    off = TrainingSpec(peft=PeftSpec(method="qlora", rank=32, target_modules=("q",)))
    assert paged_state_bytes(layer_param_tensors(m, off), off) == 0


def test_paging_time_is_the_evicted_bytes_over_pcie() -> None:
    """The prefetch before the optimizer step and the eviction each take paged / PCIe rate; the
    eviction hides under the forward, the prefetch adds to the step exactly; the timeline's
    memory peak is the memory model's paged peak."""
    sc = load_scenario(QLORA)
    paged_run = simulate_scenario(sc)
    plain = simulate_scenario(load_scenario(QLORA, ("training.peft.paged_optimizer=false",)))
    paged = paged_run.memory.stages[0].paged_bytes
    ns = ceil(1e9 * paged / sc.hardware.pcie_bandwidth_bytes_per_s)
    spans = {s.kind: s for s in paged_run.timeline.spans if s.stream == "paging"}
    assert set(spans) == {"PAGE_OUT", "PAGE_IN"}
    assert spans["PAGE_OUT"].start_ns == 0 and spans["PAGE_OUT"].duration_ns == ns
    assert spans["PAGE_IN"].duration_ns == ns
    opt = next(s for s in paged_run.timeline.spans if s.kind == "OPT")
    assert opt.start_ns == spans["PAGE_IN"].end_ns
    assert paged_run.timeline.makespan_ns == plain.timeline.makespan_ns + ns
    assert paged_run.timeline.peak_memory_bytes(0) == paged_run.memory.peak_memory_bytes
    doc = run_summary(paged_run)
    assert doc["paging_s"] == {"page_out": ns / 1e9, "prefetch": ns / 1e9}


def test_nothing_paged_costs_nothing() -> None:
    """A paged optimizer that does not need to evict (micro-batch 4 fits) runs as the plain one."""
    sets = ("training.micro_batch=4", "training.global_batch=4")
    a = simulate_scenario(load_scenario(QLORA, sets))
    b = simulate_scenario(load_scenario(QLORA, (*sets, "training.peft.paged_optimizer=false")))
    assert a.memory.stages[0].paged_bytes == 0
    assert a.timeline.makespan_ns == b.timeline.makespan_ns
    assert not [s for s in a.timeline.spans if s.stream == "paging"]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (("training.peft.method=none",), ["training.peft.paged_optimizer", "method"]),
        (("training.optimizer=sgd",), ["training.optimizer", "adam | adamw | adam8bit"]),
        (("training.optimizer=adafactor",), ["training.optimizer", "paged"]),
        (("training.offload.optimizer=true",), ["paged_optimizer", "training.offload.optimizer"]),
        (
            (
                "cluster.gpus_per_node=2",
                "parallelism.dp=2",
                "parallelism.zero_stage=1",
                "training.global_batch=20",
            ),
            ["paged_optimizer", "zero_stage"],
        ),  # fmt: skip
        (
            (
                "cluster.gpus_per_node=2",
                "parallelism.dp=2",
                "parallelism.dp_mode=data_parallel",
                "training.global_batch=20",
            ),
            ["paged_optimizer", "data_parallel"],
        ),  # fmt: skip
        (("training.peft.paged_optimizer=1",), ["training.peft.paged_optimizer"]),
    ],
)
def test_paged_optimizer_bad_input(overrides: tuple[str, ...], words: list[str]) -> None:
    text = _error(QLORA, *overrides)
    for w in words:
        assert w in text


def test_cli_shows_both_phases_and_the_paging(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from simtrain.cli import main

    out = CliRunner().invoke(main, ["run", str(LP_FT), "--out", str(tmp_path), "--no-plots"])
    assert out.exit_code == 0, out.output
    assert "LP-FT finetune phase" in out.output
    total = next(line for line in out.output.splitlines() if line.startswith("total "))
    assert "12,000" in total and "393,216,000" in total
    mem = CliRunner().invoke(main, ["memory", str(LP_FT)])
    assert mem.exit_code == 0 and "the probe phase peaks at 6.42 GiB (fits)" in mem.output
    paged = CliRunner().invoke(main, ["memory", str(QLORA)])
    assert paged.exit_code == 0
    assert "paged out (GiB)           1.52" in paged.output
    assert "(without paging: peak 25.50 GiB)" in paged.output
    plain = CliRunner().invoke(
        main, ["memory", str(QLORA), "--strict", "--set", "training.peft.paged_optimizer=false"]
    )
    assert plain.exit_code == 3 and "does not fit" in plain.output


def test_memory_json_and_strict_see_both_phases(tmp_path: Path) -> None:
    """``simtrain memory --json`` names the probe phase's peak too, and --strict's exit code is
    the same with and without --json (both phases must fit)."""
    from click.testing import CliRunner

    from simtrain.cli import main

    out = CliRunner().invoke(main, ["memory", str(LP_FT), "--json"])
    assert out.exit_code == 0, out.output
    probe = json.loads(out.output)["probe_phase"]
    assert probe["fits"] and probe["peak_memory_bytes"] > 0
    text = CliRunner().invoke(main, ["memory", str(LP_FT)])
    assert f"the probe phase peaks at {probe['peak_memory_bytes'] / 2**30:,.2f} GiB" in text.output
