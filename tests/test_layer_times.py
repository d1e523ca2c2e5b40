"""One transformer block's forward and backward (``costs.chunk_time.block_times_ns``) and the
element-wise work sequence parallelism splits, against closed forms and Korthikanti et al.
2022 Table 4 (time per transformer layer of the 22B model, tp 8, micro-batch 4, A100-SXM4-80GB)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.validate import compare_record, translate
from simtrain.costs.chunk_time import block_times_ns, chunk_durations
from simtrain.costs.compute import block_elementwise_bytes
from simtrain.layout.step import resolve
from simtrain.spec.scenario import load_scenario

GPT3 = "scenarios/gpt3_175b_1024gpu.yaml"  # TP 8 x PP 16 x DP 8, GeLU, dropout 0.1

TABLE4 = (
    "korthikanti22_t4_22B_layer_no_recompute",
    "korthikanti22_t4_22B_layer_sp_only",
    "korthikanti22_t4_22B_layer_full_recompute",
    "korthikanti22_t4_22B_layer_selective_recompute",
    "korthikanti22_t4_22B_layer_selective_plus_sp",
)


@pytest.mark.parametrize(("dropout", "per_token"), [(0.0, 10), (0.1, 15)])
def test_sequence_parallelism_splits_the_ops_outside_the_tp_region(dropout, per_token) -> None:
    """Two norms (read + write h) and two residual adds (2 reads + 1 write) per token, and with
    dropout two dropouts (read, write, 1-byte mask: 2.5 h), run on s/t tokens under sequence
    parallelism (Korthikanti et al. 2022 §4.2.2): 10·h (15·h) elements per token less by a
    factor t; the GeLU and the attention core, inside the TP region, are split by t either way."""
    sc = load_scenario(GPT3)
    m, t, tp = replace(sc.model, dropout=dropout), sc.training, sc.parallelism.tp
    assert m.mlp == "gelu" and not m.flash_attention and tp == 8
    plain, plain_b = block_elementwise_bytes(m, t, tp)
    split, split_b = block_elementwise_bytes(m, t, tp, sp=True)
    e = 2  # bf16 / fp16 activations
    outside = e * t.micro_batch * t.seq_len * per_token * m.hidden
    assert plain - split == pytest.approx(outside * (1 - 1 / tp), rel=1e-12)
    assert split_b / split == pytest.approx(plain_b / plain, rel=1e-12)
    assert block_elementwise_bytes(m, t, 1, sp=True) == block_elementwise_bytes(m, t, 1)


@pytest.mark.parametrize(("path", "overrides"), [
    (GPT3, ["parallelism.pp=1", "parallelism.dp=128", "parallelism.sequence_parallel=true"]),
    (GPT3, ["parallelism.pp=1", "parallelism.dp=128", "training.recompute=selective"]),
    ("scenarios/mixtral_8x7b_ep8.yaml", ["parallelism.pp=1", "parallelism.dp=64",
                                         "training.recompute=full"]),
])  # fmt: skip
def test_block_times_are_the_per_layer_terms_of_a_chunk(path, overrides) -> None:
    """A one-stage chunk of L blocks minus one of L − 1 blocks (the embedding and head cancel)
    is :func:`block_times_ns` of one block: forward = compute + the forward's exposed TP
    collectives (+ an MoE block's all-to-alls); backward = input and weight gradients +
    recompute + the exposed collectives (+ the all-to-alls of the backward and of a full
    recompute)."""
    sc = load_scenario(path, overrides)
    fewer = replace(sc, model=replace(sc.model, layers=sc.model.layers - 1))
    a = chunk_durations(sc, resolve(sc))[0]
    b = chunk_durations(fewer, resolve(fewer))[0]

    def diff(*fields: str) -> int:
        return sum(getattr(a, f) - getattr(b, f) for f in fields)

    fwd, bwd = block_times_ns(sc, resolve(sc))
    assert abs(fwd - diff("forward_ns", "tp_forward_ns", "ep_forward_ns")) <= 2  # ns rounded up
    assert abs(bwd - diff("input_grad_ns", "weight_grad_ns", "recompute_ns", "tp_backward_ns",
                          "tp_recompute_ns", "ep_backward_ns", "ep_recompute_ns")) <= 4  # fmt: skip
    if sc.model.is_moe:
        assert diff("ep_forward_ns") > 0


@pytest.fixture(scope="module")
def table4(published_records) -> dict[str, dict[str, tuple[float, float]]]:
    out = {}
    for rid in TABLE4:
        tr = translate(published_records[rid])
        out[rid] = {c.metric: (float(c.measured), float(c.predicted)) for c in compare_record(tr)}
    return out


def test_table4_layer_backward_times(table4) -> None:
    """Korthikanti et al. 2022 Table 4, every row: the backward within 5 % (predicted -4.7 to
    +3.3 %; -0.7 to +3.9 % before 2026-12-06's A100 rates)."""
    for rid, got in table4.items():
        bm, bp = got["layer_backward_s"]
        assert abs(bp / bm - 1) < 0.05, (rid, bm, bp)


@pytest.mark.xfail(strict=True, reason="+11.3 % on the rows without sequence parallelism")
def test_table4_layer_forward_times(table4) -> None:
    """Korthikanti et al. 2022 Table 4, every row: the forward within 10 %. Too slow: +4.8 %
    with sequence parallelism, +11.3 % without (+6.0 / +9.6 % with the A100's rates before
    2026-12-06: matmul 0.72, memory_bound 0.80; now its GEMM table's 0.79 and the fitted
    0.63, whose slower element-wise passes the forward's norms, dropouts and s x s scores pay;
    README, "where it is wrong"). Strict: a change that brings it within 10 % is noticed."""
    for rid, got in table4.items():
        fm, fp = got["layer_forward_s"]
        assert abs(fp / fm - 1) < 0.10, (rid, fm, fp)


def _sp_saving(table4, metric: str) -> tuple[float, float]:
    """(measured, predicted) time sequence parallelism saves in Table 4's 22B layer (the
    no-recompute row against the SP-only row)."""
    plain = table4["korthikanti22_t4_22B_layer_no_recompute"]
    sp = table4["korthikanti22_t4_22B_layer_sp_only"]
    return plain[metric][0] - sp[metric][0], plain[metric][1] - sp[metric][1]


@pytest.mark.xfail(strict=True, reason="over-predicted: 0.33 ms saved, measured 0.05-0.15 ms")
def test_table4_sequence_parallelism_backward_saving(table4) -> None:
    """Sequence parallelism in the backward (Table 4: 11.9 -> 11.8 ms, its norms and dropouts
    on s/t tokens less the row-parallel linears' exposed backward all-gathers): the table
    prints 0.1 ms, so the measured saving is 0.05-0.15 ms; predicted 0.09 ms with the A100's
    element-wise rate at its 0.80 estimate, 0.33 ms at the fitted 0.63 (2026-12-06: its
    element-wise bytes on s/t tokens save more at the slower rate). (Before the element-wise
    split the backward grew 0.8 ms.) Strict: a change that brings it into the band is
    noticed."""
    measured, predicted = _sp_saving(table4, "layer_backward_s")
    assert measured == pytest.approx(0.1e-3, abs=1e-9)
    assert 0.05e-3 <= predicted <= 0.15e-3, predicted


@pytest.mark.xfail(strict=True, reason="over-predicted: 1.03 ms saved, measured 0.4-0.6 ms")
def test_table4_sequence_parallelism_forward_saving(table4) -> None:
    """Sequence parallelism in the forward (Table 4: 7.7 -> 7.2 ms, printed to 0.1 ms: a
    0.4-0.6 ms saving). Predicted 1.03 ms (0.81 ms before the A100's element-wise rate was
    fitted at 0.63, 2026-12-06): the norms' and dropouts' bytes on s/t tokens save
    more than Megatron's fused kernels did (README, "where it is wrong"); strict, so that a
    change bringing it into the band is noticed. (Before the element-wise split: 0.00 ms.)"""
    measured, predicted = _sp_saving(table4, "layer_forward_s")
    assert measured == pytest.approx(0.5e-3, abs=1e-9)
    assert 0.4e-3 <= predicted <= 0.6e-3, predicted


def test_table4_known_misses_stay_as_documented(table4) -> None:
    """The three strict xfails above, pinned where their reasons say they are, so that a
    change cannot move them unseen: the forward +11.3 % at worst (rows without sequence
    parallelism, +4.8 % with it), sequence parallelism saving 0.33 ms of the backward and
    1.03 ms of the forward."""
    worst = max(fp / fm - 1 for fm, fp in (g["layer_forward_s"] for g in table4.values()))
    assert 0.105 < worst < 0.12, worst
    assert 0.30e-3 < _sp_saving(table4, "layer_backward_s")[1] < 0.36e-3
    assert 0.98e-3 < _sp_saving(table4, "layer_forward_s")[1] < 1.08e-3


def test_block_times_name_a_block_of_the_model() -> None:
    sc = load_scenario(GPT3)
    step = resolve(sc)
    block_times_ns(sc, step, sc.model.layers - 1)
    for bad in (-1, sc.model.layers):
        with pytest.raises(ValueError, match="blocks 0 .."):
            block_times_ns(sc, step, bad)


def test_layer_timing_without_a_micro_batch_is_skipped(published_records) -> None:
    """What a per-layer timer timed depends on the micro-batch: a record without one is
    skipped with the reason, not simulated at an assumed size."""
    rec = published_records[TABLE4[0]]
    bare = replace(rec, training={k: v for k, v in rec.training.items() if k != "micro_batch"})
    assert "micro_batch" in translate(bare).reason
