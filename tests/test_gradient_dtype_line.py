"""A bf16 scenario under runtime megatron_core reduces bf16 gradients (Megatron-Core's DDP
default), where Megatron-LM's script keeps fp32 ones: ``simtrain memory`` and ``run`` say which
is simulated and how to get the other (a user review, 2026-12-07)."""

from __future__ import annotations

from click.testing import CliRunner

from simtrain.cli import main
from simtrain.report.tables import gradient_dtype_line
from simtrain.spec.scenario import load_scenario

TP = "scenarios/llama3_70b_tp_overlap.yaml"  # megatron_core, bf16


def test_said_only_for_megatron_core_bf16_with_16_bit_reduction() -> None:
    assert "runtime.grad_reduce_dtype=fp32" in gradient_dtype_line(load_scenario(TP))
    for sets in (["runtime.grad_reduce_dtype=fp32"], ["training.precision=bf16_fp32_grads"],
                 ["runtime.name=torchtitan"], ["training.precision=fp16"]):  # fmt: skip
        assert gradient_dtype_line(load_scenario(TP, sets)) == "", sets


def test_memory_prints_it_and_the_fp32_buffer_costs_two_bytes_a_parameter() -> None:
    out = CliRunner().invoke(main, ["memory", TP])
    assert out.exit_code == 0 and "gradients        bf16, reduced in bf16" in out.output
    from simtrain.costs.memory import estimate_memory

    sc = load_scenario(TP)
    a = estimate_memory(sc).stages[0]
    b = estimate_memory(load_scenario(TP, ["runtime.grad_reduce_dtype=fp32"])).stages[0]
    assert b.category("gradients") - a.category("gradients") == 2 * a.trainable
