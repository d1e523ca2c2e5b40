"""nanotron's fp32 gradient accumulation per micro-batch (runtime grads_freed_per_microbatch;
nanotron optim/gradient_accumulator.py FP32GradientAccumulator.backward at 2411b022: after each
``loss.backward()`` every bf16 ``.grad`` is added into its fp32 buffer, then set to None),
against closed forms written out here:

* time: each backward is followed by one add that reads the 2-byte gradient and reads and
  writes the 4-byte buffer, 10 bytes per trainable parameter at the memory-bound rate
  (HBM bandwidth x ``efficiency.memory_bound``): a single-GPU step of m > 1 micro-batches
  grows by m such adds (with one micro-batch on one GPU the 16-bit gradients are transient,
  ``costs.memory``: the optimizer step reads them);
* memory: the timeline holds the 16-bit gradients only from a backward's end to its add's end,
  and its peak equals the memory model's (the third moment of ``costs.memory``);
* without an fp32 buffer (plain bf16) nothing changes.

* host: one dispatched ``add_`` per trainable tensor after each backward (a host-bound step
  pays them).
"""

from __future__ import annotations

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.spec.scenario import parse_scenario

MODEL = {"layers": 4, "hidden": 1024, "heads": 16, "ffn_hidden": 4096, "vocab": 32000,
         "mlp": "swiglu", "norm": "rmsnorm", "positions": "rotary", "bias": False,
         "flash_attention": True, "dropout": 0.0}  # fmt: skip


def _scenario(freed: bool, precision: str = "bf16_fp32_grads", m: int = 4, pp: int = 1,
              host_us: float = 0, fused: bool = True, **par):  # fmt: skip
    return parse_scenario(
        {
            "name": "acc",
            "model": MODEL,
            "hardware": "h100_sxm5_80gb",
            "training": {
                "seq_len": 1024,
                "global_batch": m,
                "micro_batch": 1,
                "precision": precision,
                "optimizer": "adamw",
            },
            "parallelism": {
                "dp": 1,
                "tp": 1,
                "pp": pp,
                **({"schedule": "1f1b"} if pp > 1 else {}),
                **par,
            },  # fmt: skip
            # no host time: the GPU's adds are then on the step's critical path
            "runtime": {
                "name": "nanotron",
                "grads_freed_per_microbatch": freed,
                "host_us_per_op": host_us,
                "fused_qkv": fused,
                "fused_gate_up": fused,
            },
        },  # fmt: skip
        "acc.yaml",
    )


@pytest.mark.parametrize("m", [2, 4, 8])
def test_each_microbatch_pays_one_fp32_add_of_its_gradients(m):
    on, off = _scenario(True, m=m), _scenario(False, m=m)
    res_on, res_off = simulate_scenario(on), simulate_scenario(off)
    trainable = res_on.memory.gpus[0].trainable
    hw = on.hardware
    add_s = 10 * trainable / (hw.hbm_bandwidth_bytes_per_s * hw.efficiency.memory_bound)
    acc = [s for s in res_on.timeline.spans if s.kind == "ACC"]
    assert len(acc) == m
    assert all(s.duration_ns == pytest.approx(add_s * 1e9, abs=1) for s in acc)
    # the adds sit on the compute stream between backward and the next forward
    grow = res_on.metrics.step_time_s - res_off.metrics.step_time_s
    assert grow == pytest.approx(m * add_s, rel=0.02)


@pytest.mark.parametrize("pp", [1, 2])
def test_the_timeline_holds_the_16_bit_gradients_only_through_the_add(pp):
    sc = _scenario(True, m=4, pp=pp)
    res = simulate_scenario(sc)
    for sm, st in zip(res.memory.gpus, res.metrics.stages, strict=True):
        assert st.peak_memory_bytes == sm.peak_memory_bytes
        assert sm.freed_gradient_bytes == 2 * sm.trainable  # bf16 gradients
    rank0 = [s for s in res.timeline.memory if s.rank == 0 and s.category == "gradients"]
    sm = res.memory.gpus[0]
    fp32 = dict(sm.memory_bytes)["gradients"] - sm.freed_gradient_bytes
    assert rank0[0].bytes == fp32  # at t = 0: the fp32 buffer only
    assert max(s.bytes for s in rank0) == fp32 + sm.freed_gradient_bytes
    assert rank0[-1].bytes == fp32  # freed after the last add


def test_plain_bf16_has_no_add():
    sc = _scenario(True, precision="bf16")
    res = simulate_scenario(sc)
    assert not [s for s in res.timeline.spans if s.kind == "ACC"]
    assert res.memory.gpus[0].freed_gradient_bytes == 0


@pytest.mark.parametrize(
    ("par", "adds"),
    [
        ({"dp": 2, "zero_stage": 1}, True),
        ({"tp": 2}, True),
        ({"dp": 2, "zero_stage": 2}, False),  # ZeRO-2/3 shard the gradients: nanotron has none
        ({"dp": 2, "zero_stage": 3}, False),
        ({"dp": 2, "dp_mode": "data_parallel"}, False),
        ({"pp": 2, "schedule": "interleaved", "virtual_stages": 2}, False),  # 2 chunks per rank
        ({"pp": 2, "schedule": "zb_v"}, False),
        ({"pp": 2, "schedule": "zb_h1"}, True),
        ({"pp": 2, "schedule": "gpipe"}, True),
    ],
)  # fmt: skip
def test_the_add_only_where_nanotron_frees_its_gradients_and_memory_agrees(par, adds):
    """nanotron frees the 16-bit gradients after each backward with ZeRO-0/1, one chunk per
    rank and DDP; elsewhere they stay all step and nothing is added. Either way the
    timeline's peak equals the memory model's on every GPU."""
    par = dict(par)
    pp = par.pop("pp", 1)
    res = simulate_scenario(_scenario(True, m=4, pp=pp, **par))
    acc = [s for s in res.timeline.spans if s.kind == "ACC"]
    assert bool(acc) == adds
    for sm, st in zip(res.memory.gpus, res.metrics.stages, strict=True):
        assert st.peak_memory_bytes == sm.peak_memory_bytes
        assert sm.freed_gradient_bytes >= 0


def test_the_add_follows_the_backward_tp_collectives():
    """tp 2: the backward's TP all-reduce ends before its add starts (nanotron adds after
    ``loss.backward()``, which runs the collectives)."""
    res = simulate_scenario(_scenario(True, m=4, tp=2))
    spans = res.timeline.spans
    for acc in (s for s in spans if s.kind == "ACC"):
        tp = [s for s in spans if s.kind == "TP" and s.microbatch == acc.microbatch
              and s.end_ns <= acc.start_ns]  # fmt: skip
        assert tp, acc.name


@pytest.mark.parametrize("m", [2, 4])
def test_the_host_dispatches_one_add_per_trainable_tensor(m):
    """Host-bound (1 ms per dispatched op): each backward's host time grows by one add per
    trainable tensor, nanotron's Python loop of ``fp32_grad.add_`` (gradient_accumulator.py
    l.214-226). This block has 6 (qkv_proj and gate_up_proj fused, o, down, two norms): 4 x 6,
    + the embedding (tied: the head's weight too), + the final norm = 26; the step grows by
    m x 26 ms."""
    from simtrain.costs.host import trainable_tensor_count

    on, off = _scenario(True, m=m, host_us=1000.0), _scenario(False, m=m, host_us=1000.0)
    assert trainable_tensor_count(on, 0, 4, True, True) == 26
    unfused = _scenario(True, m=m, host_us=1000.0, fused=False)
    assert trainable_tensor_count(unfused, 0, 4, True, True) == 4 * 9 + 2
    grow = simulate_scenario(on).metrics.step_time_s - simulate_scenario(off).metrics.step_time_s
    assert grow == pytest.approx(m * 26e-3, rel=1e-3)


def test_tensor_count_fuses_biases_and_counts_a_rank_s_experts():
    """A fused Q/K/V (gate/up) projection is one weight and one bias (nanotron's qkv_proj with
    attention_bias); an MoE rank holds E/ep experts' tensors; dense first blocks are dense."""
    from simtrain.costs.host import trainable_tensor_count

    def count(fused: bool, **model):
        doc = {"name": "acc", "model": {**MODEL, **model}, "hardware": "h100_sxm5_80gb",
               "training": {"seq_len": 1024, "global_batch": 4, "micro_batch": 1,
                            "precision": "bf16_fp32_grads", "optimizer": "adamw"},
               "parallelism": {"dp": 1, "tp": 1, "pp": 1},
               "runtime": {"name": "nanotron", "fused_qkv": fused, "fused_gate_up": fused}}  # fmt: skip
        sc = parse_scenario(doc, "acc.yaml")
        return trainable_tensor_count(sc, 0, 1, False, False)

    assert count(False) - count(True) == 3  # q, k, v -> 1; gate, up -> 1
    assert count(False, qkv_bias=True) - count(True, qkv_bias=True) == 5  # + q, k, v biases -> 1
    assert count(True, qkv_bias=True) == count(True) + 1
    moe = {"num_experts": 8, "experts_per_token": 2, "moe_ffn_hidden": 1024}
    doc = {"name": "acc", "model": {**MODEL, **moe}, "hardware": "h100_sxm5_80gb",
           "cluster": {"nodes": 1, "gpus_per_node": 8},
           "training": {"seq_len": 1024, "global_batch": 32, "micro_batch": 1,
                        "precision": "bf16_fp32_grads", "optimizer": "adamw"},
           "parallelism": {"dp": 8, "tp": 1, "pp": 1, "ep": 8},
           "runtime": {"name": "nanotron"}}  # fmt: skip
    one_expert = trainable_tensor_count(parse_scenario(doc, "acc.yaml"), 0, 1, False, False)
    doc["parallelism"]["ep"] = 1
    eight = trainable_tensor_count(parse_scenario(doc, "acc.yaml"), 0, 1, False, False)
    assert eight - one_expert == 7 * 2  # seven more experts, fused gate/up + down each


def test_split_backward_dispatches_the_adds_with_w():
    """With I and W split (zero-bubble schedules) the adds follow W: their host time is W's."""
    from simtrain.sim.lowering.ir import ChunkDurations

    c = ChunkDurations(forward_ns=10, input_grad_ns=30, weight_grad_ns=10, host_forward_ns=100,
                       host_backward_ns=200, host_accum_ns=50)  # fmt: skip
    assert (c.host_ns("F"), c.host_ns("B")) == (100, 250)
    assert (c.host_ns("I"), c.host_ns("W")) == (150, 50 + 50)
