"""Runtime profiles (``runtimes/*.yaml``, ``spec.runtime``) and the mechanisms they switch on
in lowering, against closed forms written out here from the lowering input's own durations.

* eager dispatch: when the host is slower than the GPU, a single GPU's step is the sum of the
  host times of its actions plus the optimizer step (the GPU waits for every kernel); when it
  is faster, the step is the GPU's (the host runs ahead);
* TP communication overlap: each action costs max(compute, TP) instead of their sum;
* ZeRO-1/2 parameter all-gather overlapped with the next forward: only the first bucket's
  gather is exposed;
* metadata messages: one link latency each;
* blocking receives change nothing while the host costs nothing.
"""

from __future__ import annotations

import pytest

from simtrain.apps.simulate import build_lowering_input, simulate_scenario
from simtrain.costs import collectives as coll
from simtrain.costs.comm import hop_send_ns
from simtrain.costs.host import layer_ops
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.layout.step import resolve
from simtrain.spec.runtime import (
    DEFAULT_RUNTIME,
    KEYS,
    available_runtimes,
    load_runtime,
    runtime_settings,
)
from simtrain.spec.scenario import load_scenario, parse_scenario

REQUIRED = {"megatron_lm_2021", "megatron_lm_2022", "megatron_core", "deepspeed", "nanotron",
            "torchtitan", "llm_foundry", "pytorch_eager"}  # fmt: skip

TINY = {"layers": 4, "hidden": 256, "heads": 4, "kv_heads": 4, "ffn_hidden": 1024,
        "vocab": 1024, "max_positions": 512}  # fmt: skip


def scenario(runtime=None, **par):
    gb = 8 * par.get("dp", 1)
    data = {
        "name": "rt",
        "model": TINY,
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": 128, "global_batch": gb, "micro_batch": 2, "precision": "bf16"},
        "parallelism": {"dp": 1, "tp": 1, "pp": 1, **par},
    }
    if runtime is not None:
        data["runtime"] = runtime
    return parse_scenario(data, "test.yaml")


def scenario_file(tmp_path, runtime, **par):
    """The same scenario read from a file, as ``simtrain run`` reads it."""
    import yaml

    gb = 8 * par.get("dp", 1)
    data = {
        "name": "rt", "model": TINY, "hardware": "a100_sxm4_80gb", "runtime": runtime,
        "training": {"seq_len": 128, "global_batch": gb, "micro_batch": 2, "precision": "bf16"},
        "parallelism": {"dp": 1, "tp": 1, "pp": 1, **par},
    }  # fmt: skip
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_scenario(path)


def step_ns(sc) -> int:
    return simulate_scenario(sc).timeline.makespan_ns


# ---------------------------------------------------------------------------------------------
# Profiles and their input checks


def test_every_required_runtime_is_shipped_and_loads():
    assert REQUIRED <= set(available_runtimes())
    for name in available_runtimes():
        rt = load_runtime(name)
        assert rt.name == name
        assert set(runtime_settings(rt)) <= set(KEYS)


def test_every_field_is_a_key_of_its_type():
    """Each profile field is a YAML key in the one table of its type (a new int or float field
    needs its range in INTS / FLOATS; a new str field its CHOICES): nothing is settable in
    Python but not in a profile, nothing is parsed as another type."""
    from dataclasses import fields

    from simtrain.spec.runtime import BOOLS, CHOICES, FLOATS, INTS, LISTS, RuntimeProfile

    table = {"bool": set(BOOLS), "int": set(INTS), "float": set(FLOATS), "str": set(CHOICES),
             "tuple[str, ...]": set(LISTS)}  # fmt: skip
    for f in fields(RuntimeProfile):
        if f.name in ("name", "display_name", "source_file"):
            continue
        homes = [t for t, keys in table.items() if f.name in keys]
        assert homes == [f.type], (f.name, f.type, homes)


def test_every_profile_value_names_its_source():
    """Each profile cites its sources in a header: at least one [tag] defined there."""
    from simtrain.spec.runtime import RUNTIMES_DIR

    for path in RUNTIMES_DIR.glob("*.yaml"):
        text = path.read_text()
        header = [ln for ln in text.splitlines() if ln.startswith("#")]
        assert any("Sources" in ln for ln in header), path.name


def test_a_scenario_without_runtime_runs_the_default_profile():
    plain, named = scenario(), scenario(DEFAULT_RUNTIME)
    assert plain.runtime == named.runtime
    assert step_ns(plain) == step_ns(named)


def test_runtime_overrides_apply_on_top_of_the_named_profile():
    sc = scenario({"name": "nanotron", "host_us_per_op": 3})
    assert sc.runtime.name == "nanotron"
    assert sc.runtime.host_us_per_op == 3
    assert sc.runtime.p2p == load_runtime("nanotron").p2p


@pytest.mark.parametrize(
    ("runtime", "par", "key", "words"),
    [
        ("megatron", {}, "runtime", "allowed: deepspeed"),
        ({"name": "nanotron", "tp_comm_overlp": True}, {}, "runtime.tp_comm_overlp", "did you mean"),
        ({"p2p": "sync"}, {}, "runtime.p2p", "async | blocking"),
        ({"host_us_per_op": -1}, {}, "runtime.host_us_per_op", ">="),
        ({"host_us_per_op": ".nan"}, {}, "runtime.host_us_per_op", ""),
        ({"tp_comm_overlap": "yes"}, {}, "runtime.tp_comm_overlap", "true or false"),
        ({"tp_comm_overlap": True}, {}, "runtime.tp_comm_overlap", "parallelism.tp = 1"),
        ({"overlap_param_gather": True}, {}, "runtime.overlap_param_gather",
         "parallelism.zero_stage = 0"),
        ({"p2p_messages_forward": 0}, {}, "runtime.p2p_messages_forward", ""),
        (7, {}, "runtime", "mapping"),
    ],
)  # fmt: skip
def test_bad_runtime_is_one_line_naming_the_key(tmp_path, runtime, par, key, words):
    with pytest.raises(ConfigError) as e:
        scenario_file(tmp_path, runtime, **par)
    msg = str(e.value)
    assert "\n" not in msg
    assert key in msg
    assert words in msg


# ---------------------------------------------------------------------------------------------
# Eager dispatch: the host stream


def test_host_bound_step_is_the_sum_of_host_times_plus_the_optimizer():
    """pp 1, 4 micro-batches, 1 ms per op: every GPU action is far shorter than issuing it, so
    each waits for the host; the optimizer step waits for the last host op."""
    us = 1000.0
    sc = scenario({"name": "pytorch_eager", "host_us_per_op": us})
    inp = build_lowering_input(sc, estimate_memory(sc))
    ops = layer_ops(sc.model)
    layers = sc.model.layers
    c = inp.chunks[0]
    assert c.host_forward_ns == round(1e9 * us * 1e-6 * layers * ops.forward)
    assert c.host_backward_ns == round(1e9 * us * 1e-6 * layers * ops.backward)
    assert (
        c.forward_ns < c.host_forward_ns and c.input_grad_ns + c.weight_grad_ns < c.host_backward_ns
    )
    m = sc.num_microbatches
    expected = m * (c.host_forward_ns + c.host_backward_ns) + inp.ranks[0].optimizer_ns
    assert step_ns(sc) == expected


def test_gpu_bound_step_is_unchanged_up_to_the_first_host_op():
    """A fast host runs ahead: the step grows by at most what the first action waits."""
    base = step_ns(scenario({"name": "pytorch_eager", "host_us_per_op": 0}))
    fast = scenario({"name": "pytorch_eager", "host_us_per_op": 0.001})
    inp = build_lowering_input(fast, estimate_memory(fast))
    first = inp.chunks[0].host_forward_ns
    assert base <= step_ns(fast) <= base + first


def test_cuda_graphs_pay_no_host_time():
    graphs = scenario({"name": "pytorch_eager", "host_us_per_op": 1000, "dispatch": "cuda_graphs"})
    assert step_ns(graphs) == step_ns(scenario({"name": "pytorch_eager", "host_us_per_op": 0}))


def test_blocking_receives_cost_nothing_when_the_host_costs_nothing():
    par = {"pp": 4, "schedule": "1f1b"}
    a = scenario({"p2p": "async"}, **par)
    b = scenario({"p2p": "blocking"}, **par)
    assert step_ns(a) == step_ns(b)


def test_blocking_receives_never_speed_a_pipeline_up():
    par = {"pp": 4, "schedule": "1f1b"}
    for us in (5, 50, 500):
        a = scenario({"p2p": "async", "host_us_per_op": us}, **par)
        b = scenario({"p2p": "blocking", "host_us_per_op": us}, **par)
        assert step_ns(b) >= step_ns(a)


def test_metadata_messages_cost_one_latency_each():
    par = {"pp": 2, "schedule": "1f1b"}
    one = scenario({"p2p_messages_forward": 1, "p2p_messages_backward": 1}, **par)
    six = scenario({"p2p_messages_forward": 6, "p2p_messages_backward": 3}, **par)
    intra, _ = coll.node_links(one.hardware)
    lat_ns = 1e9 * intra.latency_s
    s1, s6 = resolve(one), resolve(six)
    assert hop_send_ns(six, s6, 0, 1) - hop_send_ns(one, s1, 0, 1) == pytest.approx(
        5 * lat_ns, abs=1
    )
    assert hop_send_ns(six, s6, 1, 0) - hop_send_ns(one, s1, 1, 0) == pytest.approx(
        2 * lat_ns, abs=1
    )


# ---------------------------------------------------------------------------------------------
# Overlap switches


def test_tp_overlap_costs_max_instead_of_sum_per_action():
    """pp 1, tp 2: without overlap every action is compute + its TP all-reduces; with it, the
    larger of the two. The step differs by the sum over actions of the smaller one."""
    plain = scenario({"tp_comm_overlap": False}, tp=2)
    over = scenario({"tp_comm_overlap": True}, tp=2)
    c = build_lowering_input(plain, estimate_memory(plain)).chunks[0]
    m = plain.num_microbatches
    fwd_c, fwd_tp = c.forward_ns, c.tp_forward_ns
    bwd_c, bwd_tp = c.input_grad_ns + c.weight_grad_ns + c.recompute_ns, c.tp_backward_ns
    assert fwd_tp > 0 and bwd_tp > 0
    saved = m * (min(fwd_c, fwd_tp) + min(bwd_c, bwd_tp))
    assert step_ns(plain) - step_ns(over) == saved


def test_overlapped_param_gather_exposes_only_the_first_bucket():
    par = {"dp": 8, "zero_stage": 1}
    plain = scenario({"overlap_param_gather": False}, **par)
    over = scenario({"overlap_param_gather": True}, **par)
    w_plain = build_lowering_input(plain, estimate_memory(plain)).ranks[0]
    w_over = build_lowering_input(over, estimate_memory(over)).ranks[0]
    assert w_over.post_opt_ns == 0
    first, rest = w_over.pre_gather_ns
    assert 0 < first <= w_plain.post_opt_ns
    assert first + rest >= w_plain.post_opt_ns  # the same bytes, in buckets
    assert step_ns(over) <= step_ns(plain)


def test_no_grad_overlap_reduces_once_after_the_backward():
    par = {"dp": 8}
    over_sc = scenario({"overlap_grad_reduce": True}, **par)
    once_sc = scenario({"overlap_grad_reduce": False}, **par)
    over = build_lowering_input(over_sc, estimate_memory(over_sc)).ranks[0]
    once = build_lowering_input(once_sc, estimate_memory(once_sc)).ranks[0]
    assert over.bucket_ns and not over.grad_sync_ns
    assert once.grad_sync_ns and not once.bucket_ns


def test_fp32_gradient_reduction_moves_twice_the_bytes_of_bf16():
    from simtrain.costs.comm import grad_sync_ns

    par = {"dp": 8}
    b16 = scenario({"overlap_grad_reduce": False, "grad_reduce_dtype": "grad"}, **par)
    f32 = scenario({"overlap_grad_reduce": False, "grad_reduce_dtype": "fp32"}, **par)
    w16 = build_lowering_input(b16, estimate_memory(b16)).ranks[0]
    w32 = build_lowering_input(f32, estimate_memory(f32)).ranks[0]
    step = resolve(b16)
    trainable = estimate_memory(b16).stages[0].trainable
    assert w16.grad_sync_ns == grad_sync_ns(b16, step, trainable * 2)[0]
    assert w32.grad_sync_ns == grad_sync_ns(f32, resolve(f32), trainable * 4)[0]


def test_zero3_per_gpu_nic_gathers_at_one_nic_per_gpu():
    """DeepSpeed's ZeRO-3 (runtimes/deepspeed.yaml [sc21z]): a gather across nodes moves each
    GPU's bytes through its own NIC: (n−1)/n·S/B_nic + (n−1)·α, the ring of one GPU per node."""
    par = {"dp": 32, "zero_stage": 3}
    node = scenario({"zero3_per_gpu_nic": False}, **par)
    nic = scenario({"zero3_per_gpu_nic": True}, **par)
    c_node = build_lowering_input(node, estimate_memory(node)).chunks[0]
    c_nic = build_lowering_input(nic, estimate_memory(nic)).chunks[0]
    sm = estimate_memory(nic).stages[0]
    size = sm.params * 2 // nic.model.layers  # bf16 parameters of one layer
    _, inter = coll.node_links(nic.hardware)
    n = 32
    expected = (n - 1) / n * size / inter.bandwidth_bytes_per_s + (n - 1) * inter.latency_s
    assert c_nic.gather_ns_per_layer == round(1e9 * expected)
    assert c_nic.gather_ns_per_layer > c_node.gather_ns_per_layer


def test_an_overlap_with_nothing_to_overlap_does_not_apply_outside_a_scenario_file():
    """A plan's layouts (parse_scenario) keep the runtime's overlap options; where a layout
    has no TP or ZeRO-1/2 all-gather they do nothing."""
    on = scenario({"tp_comm_overlap": True, "overlap_param_gather": True})
    off = scenario({"tp_comm_overlap": False, "overlap_param_gather": False})
    assert step_ns(on) == step_ns(off)


def test_megatron_core_gradient_buffer_is_fp32_and_adam_is_fused():
    """Megatron-Core keeps the gradients in its DDP buffer, fp32 when reduced in fp32
    (param_and_grad_buffer.py: grad_dtype = torch.float if grad_reduce_in_fp32), and steps a
    fused multi-tensor Adam (core/optimizer/__init__.py): gradients = 4 B x trainable, no
    master-gradient copy, no Adam temporaries. Against the same layout under the default
    runtime (16-bit gradients, fp32 master gradients and single-tensor Adam temporaries)."""
    base = {
        "name": "mc",
        "model": {"preset": "gpt2"},
        "hardware": "a100_sxm4_80gb",
        "cluster": {"nodes": 1, "gpus_per_node": 2},
        "training": {"seq_len": 256, "global_batch": 4, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"dp": 2, "tp": 1, "pp": 1, "zero_stage": 1},
    }
    mc = parse_scenario(
        {**base, "runtime": {"name": "megatron_core", "grad_reduce_dtype": "fp32"}}, "mc.yaml"
    )
    plain = parse_scenario(base, "plain.yaml")
    a, b = estimate_memory(mc).stages[0], estimate_memory(plain).stages[0]
    assert a.trainable == b.trainable > 0
    assert a.category("gradients") == 4 * a.trainable
    assert b.category("gradients") == 2 * b.trainable
    assert a.optimizer_working_bytes == 0
    # default: fp32 master gradients of the ZeRO-1 shard + 2 x the largest tensor's shard
    assert b.optimizer_working_bytes >= 4 * (b.trainable // 2)
    # the buffer is persistent: never transient, even on one GPU with one micro-batch
    one = {**base, "cluster": {"nodes": 1, "gpus_per_node": 1}}
    one["training"] = {**base["training"], "global_batch": 1}
    one["parallelism"] = {"dp": 1, "tp": 1, "pp": 1}
    solo = parse_scenario({**one, "runtime": "megatron_core"}, "solo.yaml")
    assert estimate_memory(solo).stages[0].transient_gradient_bytes == 0
    assert estimate_memory(parse_scenario(one, "solo.yaml")).stages[0].transient_gradient_bytes
