"""CPU offload as DeepSpeed runs it (costs.offload, passes.offload_pass): PCIe copies and the CPU
Adam step against their closed forms, their order and their overlap with the backward, the
memory they move to the host, and the options that do not apply."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from simtrain.apps.importers import import_config
from simtrain.apps.importers.common import load_imported
from simtrain.apps.plan.estimate import closed_form_step_s
from simtrain.apps.simulate import SimulationResult, simulate_scenario
from simtrain.cli import main
from simtrain.costs import comm
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.sim.timeline import Span
from simtrain.spec.scenario import Scenario, parse_scenario


def scenario(
    dp: int = 1, zero: int = 0, micro: int = 4, accum: int = 1, parameters: bool = False
) -> Scenario:
    """GPT-2 (124M) on ``dp`` A100s, ``accum`` micro-batches of ``micro`` sequences of 512."""
    data: dict[str, Any] = {
        "name": "offload",
        "model": {"preset": "gpt2", "flash_attention": True},
        "hardware": "a100_sxm4_80gb",
        "cluster": {"nodes": 1, "gpus_per_node": dp},
        "training": {
            "seq_len": 512,
            "global_batch": micro * accum * dp,
            "micro_batch": micro,
            "precision": "bf16",
            "optimizer": "adam",
            "offload": {"optimizer": True, "parameters": parameters},
        },  # fmt: skip
        "parallelism": {"dp": dp, "tp": 1, "pp": 1, "zero_stage": zero},
    }
    return parse_scenario(copy.deepcopy(data), "test.yaml")


def spans(res: SimulationResult, stream: str, kind: str | None = None) -> list[Span]:
    out = [s for s in res.timeline.spans_of(0, stream) if kind is None or s.kind == kind]
    return sorted(out, key=lambda s: s.start_ns)


def ns(nbytes: float, per_s: float) -> int:
    return math.ceil(1e9 * nbytes / per_s)


@pytest.fixture(scope="module")
def single() -> SimulationResult:
    return simulate_scenario(scenario())


def test_cpu_adam_and_pcie_copies_match_their_closed_forms(single: SimulationResult) -> None:
    """One GPU, one micro-batch: CPU Adam = N / cpu_adam_params_per_s; the fp32 gradients down
    (4 B each) in one copy per 25 MB gradient bucket, bytes / PCIe bandwidth each; the 16-bit
    parameters up (2 B each) once."""
    hw, n = single.scenario.hardware, single.memory.trainable_params
    bw = hw.pcie_bandwidth_bytes_per_s
    (opt,) = spans(single, "cpu")
    assert opt.kind == "OPT" and opt.duration_ns == ns(n, hw.cpu_adam_params_per_s)
    assert not [s for s in spans(single, "compute") if s.kind == "OPT"]  # not on the GPU
    (up,) = spans(single, "h2d")
    assert up.duration_ns == ns(2 * n, bw)
    down = spans(single, "d2h")
    sizes = comm.buckets(single.scenario.parallelism.bucket_mb, 2 * n)
    assert len(down) == len(sizes) > 1
    assert [s.duration_ns for s in down] == [ns(4 * n * x / sum(sizes), bw) for x in sizes]
    assert abs(sum(s.duration_ns for s in down) - 1e9 * 4 * n / bw) <= len(down)


def test_gradient_copies_overlap_the_backward_and_the_update_waits_for_them(
    single: SimulationResult,
) -> None:
    """Bucket i's copy leaves when backward slice i has ended and PCIe is free (ZeRO-Offload
    §4.2; here each 50 MB fp32 copy takes longer than its slice, so they queue); CPU Adam
    starts after the last copy, the parameters go up after it and end the step, less than the
    serial sum of GPU work, copies and CPU step."""
    slices = spans(single, "compute", "B")
    down, (opt,), (up,) = spans(single, "d2h"), spans(single, "cpu"), spans(single, "h2d")
    assert len(slices) == len(down)
    free = 0
    for b, d in zip(slices, down, strict=True):
        assert d.start_ns == max(b.end_ns, free)
        free = d.end_ns
    assert down[0].start_ns < slices[-1].end_ns  # the copies run under the backward
    assert opt.start_ns == max(d.end_ns for d in down) == down[-1].end_ns
    assert up.start_ns == opt.end_ns and single.timeline.makespan_ns == up.end_ns
    busy = sum(s.duration_ns for s in spans(single, "compute"))
    serial = busy + sum(d.duration_ns for d in down) + opt.duration_ns + up.duration_ns
    assert single.timeline.makespan_ns < serial


def test_copies_hide_under_a_longer_backward() -> None:
    """Longer slices (micro-batch 16): every copy ends within the next slice, and the step is
    the end of the backward + the last bucket's copy + CPU Adam + the copy up, exactly."""
    res = simulate_scenario(scenario(micro=16))
    slices = spans(res, "compute", "B")
    down, (opt,), (up,) = spans(res, "d2h"), spans(res, "cpu"), spans(res, "h2d")
    for b, d in zip(slices, down, strict=True):
        assert d.start_ns == b.end_ns
    assert res.timeline.makespan_ns == (
        slices[-1].end_ns + down[-1].duration_ns + opt.duration_ns + up.duration_ns
    )


def test_time_breakdown_counts_the_cpu_step_as_optimizer_and_still_sums(
    single: SimulationResult,
) -> None:
    m = single.metrics
    b = dict(m.time_breakdown_s)
    (opt,) = spans(single, "cpu")
    assert b["optimizer"] == pytest.approx(opt.duration_ns / 1e9, abs=1e-9)
    total = sum(v for k, v in b.items() if k != "communication_total")
    assert total == pytest.approx(m.step_time_s, abs=1e-9)


def test_zero2_copies_each_reduced_bucket_partition() -> None:
    """ZeRO-2 over 2 GPUs: each copy follows its bucket's reduce-scatter and moves that bucket's
    half (the partition); CPU Adam updates N/2 parameters on each of the two ranks, which
    share the node's host (cpu_adam_params_per_s is the node's): N/2 x 2 / rate."""
    res = simulate_scenario(scenario(dp=2, zero=2))
    hw, n = res.scenario.hardware, res.memory.trainable_params
    rs, down = spans(res, "dp", "DP"), spans(res, "d2h")
    assert len(rs) == len(down) > 1
    for r, d in zip(rs, down, strict=True):
        assert d.start_ns >= r.end_ns
    shard = n // 2
    sizes = comm.buckets(res.scenario.parallelism.bucket_mb, 2 * n)
    bw = hw.pcie_bandwidth_bytes_per_s
    assert [d.duration_ns for d in down] == [ns(4 * shard * x / sum(sizes), bw) for x in sizes]
    (opt,) = spans(res, "cpu")
    assert opt.duration_ns == ns(shard, hw.cpu_adam_params_per_s / 2)
    # the updated shards go up, then ZeRO-2 all-gathers them
    (up,) = spans(res, "h2d")
    (ag,) = [s for s in spans(res, "dp") if s.kind == "AG"]
    assert up.start_ns == opt.end_ns and ag.start_ns >= up.end_ns


def test_gradient_accumulation_round_trips_through_the_host_accumulator() -> None:
    """Two micro-batches: the first backward copies its 16-bit gradients down (2 B each); at
    the boundary each bucket's accumulator comes up, then its fp32 and 16-bit gradients go down
    (4 + 2 B each) (DeepSpeed ``async_accumulate_grad_in_cpu_via_gpu``)."""
    res = simulate_scenario(scenario(accum=2))
    hw, n = res.scenario.hardware, res.memory.trainable_params
    bw = hw.pcie_bandwidth_bytes_per_s
    down, up = spans(res, "d2h"), spans(res, "h2d")
    sizes = comm.buckets(res.scenario.parallelism.bucket_mb, 2 * n)
    k, total = len(sizes), sum(sizes)
    assert len(down) == 1 + k and len(up) == k + 1
    assert down[0].duration_ns == ns(2 * n, bw)
    assert [d.duration_ns for d in down[1:]] == [ns(6 * n * x / total, bw) for x in sizes]
    assert [u.duration_ns for u in up[:-1]] == [ns(2 * n * x / total, bw) for x in sizes]
    for u, d in zip(up[:-1], down[1:], strict=True):
        assert d.start_ns >= u.end_ns  # accumulate on the GPU, then copy down
    assert up[-1].name == "H2D updated params" and up[-1].duration_ns == ns(2 * n, bw)


def test_parameter_offload_fetches_every_layer_before_its_gather() -> None:
    """ZeRO-3 over 2 GPUs with parameter offload: before every layer slice (forward and
    backward) its partition (1/dp of the layer's 16-bit parameters) comes up over PCIe, then
    the all-gather runs; the fetch is prefetched one slice ahead like the gather."""
    res = simulate_scenario(scenario(dp=2, zero=3, parameters=True))
    sm = res.memory.stages[0]
    layers = res.scenario.model.layers
    bw = res.scenario.hardware.pcie_bandwidth_bytes_per_s
    fetch = [s for s in spans(res, "h2d") if s.name.startswith("H2D params")]
    assert len(fetch) == 2 * layers  # forward and backward of one micro-batch
    assert {s.duration_ns for s in fetch} == {ns(sm.params / layers / 2 * 2, bw)}
    gathers = {s.name.removeprefix("AG "): s for s in spans(res, "gather", "AG")}
    for f in fetch:
        assert gathers[f.name.removeprefix("H2D ")].start_ns >= f.end_ns
    # ZeRO-3 with optimizer offload: a gradient copy after every layer's reduce-scatter
    rs = spans(res, "dp", "RS")
    down = spans(res, "d2h")
    assert len(down) == len(rs) == layers
    assert all(d.start_ns >= r.end_ns for r, d in zip(rs, down, strict=True))


def test_parameter_offload_moves_the_partition_to_pinned_host_memory() -> None:
    """Parameters leave the GPU for the host (pinned); the GPU keeps two layers' 16-bit
    parameters (the current and the prefetched one) as a buffer, as ZeRO-3 without offload
    gathers them on one GPU too (into buffers of their own: DeepSpeed's ``ds_tensor``
    partition and the gathered ``param.data``; FSDP2's all-gather outputs)."""

    def stage(parameters: bool):  # noqa: ANN202
        return estimate_memory(scenario(zero=3, parameters=parameters)).stages[0]

    off, on = stage(False), stage(True)
    c_off, c_on = dict(off.memory_bytes), dict(on.memory_bytes)
    layers = 12
    assert c_off["parameters"] == 2 * off.params and c_on["parameters"] == 0
    assert on.host_memory_bytes - off.host_memory_bytes == c_off["parameters"]
    assert on.pinned_host_memory_bytes - off.pinned_host_memory_bytes == c_off["parameters"]
    # the two gathered 16-bit layers are what ZeRO-3 holds beyond ZeRO-0, with or without offload
    plain = dict(estimate_memory(scenario(zero=0)).stages[0].memory_bytes)
    assert c_on["buffers"] == c_off["buffers"] == plain["buffers"] + 2 * 2 * (off.params // layers)
    for k in ("gradients", "activations", "master_weights", "optimizer_states"):
        assert c_on[k] == c_off[k]


def test_pinned_host_bytes_of_optimizer_offload() -> None:
    """fp32 master partition + fp32 gradient buffer + 16-bit parameter buffer (4 + 4 + 2 B),
    + the 16-bit accumulator (2 B) with gradient accumulation; Adam's states (8 B) are on the
    host but not pinned."""
    for accum, per in ((1, 10), (2, 12)):
        st = estimate_memory(scenario(accum=accum)).stages[0]
        assert st.pinned_host_memory_bytes == per * st.trainable
        assert st.host_memory_bytes == (per + 8) * st.trainable


def test_parameter_offload_needs_zero3() -> None:
    for zero in (0, 1, 2):
        with pytest.raises(ConfigError) as e:
            scenario(dp=2, zero=zero, parameters=True)
        text = str(e.value)
        assert "\n" not in text and "training.offload.parameters" in text
        assert "zero_stage = 3" in text and f"not {zero}" in text


def test_the_estimate_follows_the_engine() -> None:
    """The planner's closed form (cost of the fit suggestions) within 5 % of the engine."""
    cases = (scenario(), scenario(dp=2, zero=2), scenario(dp=2, zero=3, parameters=True), xl())
    for sc in cases:
        est = closed_form_step_s(sc, estimate_memory(sc).stages)
        sim = simulate_scenario(sc).metrics.step_time_s
        assert est == pytest.approx(sim, rel=0.05), sc.parallelism


def test_deepspeed_offload_param_imports(tmp_path: Path) -> None:
    """``offload_param`` (ZeRO-Infinity) with stage 3 becomes ``training.offload.parameters``;
    under stage 2 it is listed as not applying."""
    f = tmp_path / "ds.json"
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
           "bf16": {"enabled": True},
           "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True},
                                 "offload_optimizer": {"device": "cpu", "pin_memory": True}}}  # fmt: skip
    f.write_text(json.dumps(cfg))
    imp = import_config("deepspeed", f, "gpt2", 8)
    sc = load_imported(imp, ["training.seq_len=1024"])
    assert sc.training.offload.parameters and sc.training.offload.optimizer
    assert imp.unsupported == ()
    cfg["zero_optimization"]["stage"] = 2
    f.write_text(json.dumps(cfg))
    imp = import_config("deepspeed", f, "gpt2", 8)
    assert any("offload_param" in u and "ZeRO-3" in u for u in map(str, imp.unsupported))
    sc = load_imported(imp, ["training.seq_len=1024"])
    assert not sc.training.offload.parameters and sc.training.offload.optimizer


def test_pcie_and_cpu_lanes_are_trace_threads_and_gantt_rows(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps({
        "name": "off", "model": {"preset": "gpt2"}, "hardware": "a100_sxm4_80gb",
        "cluster": {"nodes": 1, "gpus_per_node": 1},
        "training": {"seq_len": 256, "global_batch": 2, "micro_batch": 1,
                     "offload": {"optimizer": True}},
        "parallelism": {"dp": 1, "tp": 1, "pp": 1}}))  # fmt: skip
    from click.testing import CliRunner

    r = CliRunner().invoke(main, ["run", str(f), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "  pinned (GiB)" not in r.output  # the run table has no host rows; memory has
    trace = json.loads((tmp_path / "o" / "trace.json").read_text())
    threads = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert {"compute", "cpu", "d2h", "h2d"} <= threads
    assert (tmp_path / "o" / "gantt.png").stat().st_size > 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["stages"][0]["pinned_host_memory_bytes"] > 0
    m = CliRunner().invoke(main, ["memory", str(f)])
    assert "pinned (GiB)" in m.output


# ---------------------------------------------------------------------------------------------
# Activation offload (DeepSpeed cpu_checkpointing)


def xl(pp: int = 1, schedule: str = "1f1b", v: int = 1, activations: bool = True) -> Scenario:
    """GPT-2 XL, full recompute, 8 micro-batches of 4 x 1024 per pipeline."""
    data: dict[str, Any] = {
        "name": "act",
        "model": {"preset": "gpt2-xl", "flash_attention": True},
        "hardware": "a100_sxm4_80gb",
        "cluster": {"nodes": 1, "gpus_per_node": pp},
        "training": {"seq_len": 1024, "global_batch": 32, "micro_batch": 4, "precision": "bf16",
                     "optimizer": "adam", "recompute": "full",
                     "offload": {"activations": activations}},
        "parallelism": {"dp": 1, "tp": 1, "pp": pp, "schedule": schedule, "virtual_stages": v},
    }  # fmt: skip
    return parse_scenario(copy.deepcopy(data), "test.yaml")


def test_activation_offload_copies_the_checkpoints_and_waits_for_them() -> None:
    """One GPU, 8 micro-batches: each forward's checkpoints (the 48 block inputs, 2·b·s·h B
    each) go down alongside it and come back before its backward, which waits for them; the
    copies down hide under the forward, so the step is longer by exactly 8 copies up."""
    on, off = simulate_scenario(xl()), simulate_scenario(xl(activations=False))
    sc, bw = on.scenario, on.scenario.hardware.pcie_bandwidth_bytes_per_s
    ckpt = 2 * 4 * 1024 * sc.model.hidden * sc.model.layers
    assert dict(on.memory.stages[0].offloaded_activation_bytes) == {0: ckpt}
    down, up = spans(on, "d2h"), spans(on, "h2d")
    fwd, rec = spans(on, "compute", "F"), spans(on, "compute", "R")
    assert len(down) == len(up) == len(fwd) == len(rec) == 8
    assert {s.duration_ns for s in down + up} == {ns(ckpt, bw)}
    for f, d, u, r in zip(fwd, down, up, rec, strict=True):
        assert d.start_ns == f.start_ns and d.end_ns < f.end_ns  # overlapped with the forward
        assert u.start_ns == f.end_ns and r.start_ns == u.end_ns  # the backward waits
    assert on.timeline.makespan_ns == off.timeline.makespan_ns + 8 * ns(ckpt, bw)


@pytest.mark.parametrize(("schedule", "v"), [("gpipe", 1), ("1f1b", 1), ("interleaved", 2)])
def test_activation_offload_memory_model_is_the_trace(schedule: str, v: int) -> None:
    """On 4 stages the GPU keeps one chunk's checkpoints (plus the head's saved tensors, which
    cpu_checkpointing does not move) instead of every micro-batch in flight; the memory model's
    peak is the trace's, and the host holds the checkpoints the GPU no longer does."""
    on, off = simulate_scenario(xl(4, schedule, v)), simulate_scenario(xl(4, schedule, v, False))
    for s_on, s_off, t_on in zip(on.memory.stages, off.memory.stages, on.metrics.stages,
                                 strict=True):  # fmt: skip
        assert t_on.peak_memory_bytes == s_on.peak_memory_bytes
        a_on, a_off = dict(s_on.memory_bytes), dict(s_off.memory_bytes)
        ckpt = dict(s_on.offloaded_activation_bytes)
        assert a_on["activations"] <= a_off["activations"]
        assert s_on.host_memory_bytes == s_on.pinned_host_memory_bytes >= max(ckpt.values())
    first_on, first_off = on.memory.stages[0], off.memory.stages[0]
    if schedule == "gpipe":  # all 8 micro-batches in flight on stage 0 without offload
        one = max(dict(first_on.offloaded_activation_bytes).values())
        assert first_on.host_memory_bytes == 8 * one
        assert (
            dict(first_off.memory_bytes)["activations"] - dict(first_on.memory_bytes)["activations"]
            == 7 * one
        )


def test_activation_offload_needs_full_recompute_and_a_whole_backward() -> None:
    for change, words in ((("training", "recompute", "selective"), ("recompute = full",)),
                          (("parallelism", "schedule", "zb_h1"), ("split backward", "zb_h1"))):  # fmt: skip
        data = {"name": "act", "model": {"preset": "gpt2-xl"}, "hardware": "a100_sxm4_80gb",
                "cluster": {"nodes": 1, "gpus_per_node": 4},
                "training": {"seq_len": 1024, "global_batch": 32, "micro_batch": 4,
                             "recompute": "full", "offload": {"activations": True}},
                "parallelism": {"dp": 1, "tp": 1, "pp": 4}}  # fmt: skip
        section, key, value = change
        data[section][key] = value
        with pytest.raises(ConfigError) as e:
            parse_scenario(data, "test.yaml")
        text = str(e.value)
        assert "\n" not in text and "training.offload.activations" in text
        assert all(w in text for w in words), text


def test_deepspeed_cpu_checkpointing_imports(tmp_path: Path) -> None:
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                             "bf16": {"enabled": True}, "zero_optimization": {"stage": 1},
                             "activation_checkpointing": {"cpu_checkpointing": True}}))  # fmt: skip
    imp = import_config("deepspeed", f, "gpt2", 8)
    sc = load_imported(imp, ["training.seq_len=1024"])
    assert sc.training.recompute == "full" and sc.training.offload.activations
    assert imp.unsupported == ()


def test_zero1_reduces_and_copies_at_the_boundary_only() -> None:
    """ZeRO-1 reduces (and so copies to the host) only at the accumulation boundary
    (DeepSpeed edaa7221 stage_1_and_2.py l.1767-1769 ``reduce_ready_partitions_and_remove_grads``:
    ``partition_gradients or is_gradient_accumulation_boundary``); ZeRO-2 round-trips each
    earlier backward's 16-bit gradients through the host accumulator."""
    names = {z: [s.name for s in spans(simulate_scenario(scenario(dp=2, zero=z, accum=3)), "d2h")]
             for z in (1, 2)}  # fmt: skip
    assert not any("mb0" in n or "mb1" in n for n in names[1]), names[1]
    assert any("mb0" in n for n in names[2]) and any("mb1" in n for n in names[2])


def test_offloaded_parameters_are_not_copied_up_after_the_step() -> None:
    """With offload_param the updated 16-bit partition lives on the host (ZeRO-Infinity): no
    'updated params' copy up after the CPU step; the next forward fetches each layer."""
    with_params = spans(simulate_scenario(scenario(dp=2, zero=3, parameters=True)), "h2d")
    without = spans(simulate_scenario(scenario(dp=2, zero=3)), "h2d")
    assert not any("updated params" in s.name for s in with_params)
    assert any("updated params" in s.name for s in without)


def test_optimizer_offload_refuses_pipedream() -> None:
    """PipeDream steps after every micro-batch; DeepSpeed's offload steps once per mini-batch."""
    data = {
        "name": "pd", "model": {"preset": "gpt2"}, "hardware": "a100_sxm4_80gb",
        "cluster": {"nodes": 1, "gpus_per_node": 4},
        "training": {"seq_len": 128, "global_batch": 8, "micro_batch": 1,
                     "offload": {"optimizer": True}},
        "parallelism": {"dp": 1, "tp": 1, "pp": 4, "schedule": "pipedream"},
    }  # fmt: skip
    with pytest.raises(ConfigError, match="training.offload.optimizer"):
        parse_scenario(data, "pd.yaml")
