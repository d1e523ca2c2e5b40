"""A full recompute that stops early (runtime ``recompute_early_stop``,
``costs.compute.recompute_stops_early``): PyTorch's non-reentrant checkpoint stops replaying a
block once it has re-saved the block's last saved tensor, the input of the MLP's last linear,
so that GEMM and the TP reduction after it are not run again.

Checked against PyTorch itself (``torch.utils.checkpoint`` on a Llama block: the backward's
matmul FLOPs with and without early stop, ``torch.utils.flop_counter``), the closed form
2·T·f·h of the skipped GEMM, and the TP counts against their pricing."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtrain.costs import comm
from simtrain.costs.comm import tp_block_collectives
from simtrain.costs.compute import chunk_costs, recompute_skips_last_gemm, recompute_stops_early
from simtrain.spec.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, FFN, HEADS, MICRO, SEQ = 64, 128, 4, 2, 16
TINY = {"layers": 4, "hidden": HIDDEN, "heads": HEADS, "kv_heads": HEADS, "ffn_hidden": FFN,
        "vocab": 1024, "max_positions": 512, "mlp": "swiglu", "norm": "rmsnorm",
        "positions": "rotary", "bias": False, "tied_embeddings": False}  # fmt: skip


def scenario(early_stop: bool = True, recompute: str = "full", tp: int = 1, sp: bool = False,
             model: dict | None = None, precision: str = "bf16", **runtime):  # fmt: skip
    data = {
        "name": "early_stop",
        "model": {**TINY, **(model or {})},
        "hardware": "h100_sxm5_80gb",
        "training": {
            "seq_len": SEQ,
            "global_batch": 4,
            "micro_batch": MICRO,
            "precision": precision,
            "recompute": recompute,
        },  # fmt: skip
        "parallelism": {"dp": 1, "tp": tp, "pp": 1, "sequence_parallel": sp},
        "runtime": {"name": "torchtitan", "recompute_early_stop": early_stop, **runtime},
    }
    return parse_scenario(data, "test.yaml")


def recompute_flops(sc) -> float:
    return chunk_costs(sc, 1, first=False, last=False).recompute_flops


# ---------------------------------------------------------------------------------------------
# PyTorch's own recompute (needs torch)


def _backward_flops(early_stop: bool | None, dropout: float = 0.0) -> tuple[int, int]:
    """(matmul FLOPs, mm calls) of one backward of a checkpointed Llama block (None: no
    checkpoint)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.checkpoint import checkpoint
    from torch.utils.flop_counter import FlopCounterMode

    from simtrain.torchref.tp_plans import LlamaBlock

    class Matmuls(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.overloadpacket is torch.ops.aten.mm
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    block = LlamaBlock(HIDDEN, HEADS, FFN)

    def run(x):
        y = block(x)
        return torch.nn.functional.dropout(y, dropout) if dropout else y

    x = torch.randn(MICRO, SEQ, HIDDEN, requires_grad=True)
    y = run(x) if early_stop is None else checkpoint(run, x, use_reentrant=False,
                                                     early_stop=early_stop)  # fmt: skip
    flops, mm = FlopCounterMode(display=False), Matmuls()
    with flops, mm:
        y.sum().backward()
    by_op = flops.get_flop_counts()["Global"]
    return sum(n for op, n in by_op.items() if "mm" in str(op)), mm.n


def test_pytorch_skips_the_mlps_last_gemm_when_it_stops_early() -> None:
    """Early stop leaves out exactly the down projection's 2·T·f·h FLOPs (one of its 15
    matmuls); a full replay adds the whole forward's 7 linears."""
    pytest.importorskip("torch")
    plain, plain_mm = _backward_flops(None)
    stop, stop_mm = _backward_flops(True)
    full, full_mm = _backward_flops(False)
    down = 2 * MICRO * SEQ * FFN * HIDDEN
    assert full - stop == down and (full_mm, stop_mm) == (plain_mm + 7, plain_mm + 6)
    # simtrain: the recompute's FLOPs differ by the same GEMM
    assert recompute_flops(scenario(False)) - recompute_flops(scenario(True)) == down
    # ... and its linears' replayed FLOPs are the flop counter's matmuls: the recompute less
    # the attention core, which the counter files under SDPA, 4·b·s²·h (causal not halved)
    core = 4 * MICRO * SEQ**2 * HIDDEN
    assert stop - plain == recompute_flops(scenario(True)) - core


def test_pytorch_replays_the_gemm_when_a_dropout_follows_it() -> None:
    """A dropout after the MLP saves its mask after the down projection ran: nothing skipped,
    and simtrain does not skip it either."""
    pytest.importorskip("torch")
    assert _backward_flops(True, dropout=0.1) == _backward_flops(False, dropout=0.1)
    assert not recompute_stops_early(scenario(model={"dropout": 0.1}))


@pytest.mark.parametrize(
    ("change", "stops", "skips_gemm"),
    [
        ({}, True, True),
        ({"runtime": False}, False, False),  # Megatron, DeepSpeed: their checkpointing replays
        ({"recompute": "selective_op"}, False, False),
        ({"model": {"post_norms": True}}, False, False),  # the post-norm saves after the linear
        ({"model": {"parallel_residual": True}}, False, False),
        # a quantizing autograd Function packs its saved tensors after its forward: the GEMM
        # replayed, the reduction after it not
        ({"precision": "fp8_tensorwise"}, True, False),
    ],
)  # fmt: skip
def test_where_the_recompute_stops_early(change, stops, skips_gemm) -> None:
    sc = scenario(change.get("runtime", True), change.get("recompute", "full"),
                  model=change.get("model"), precision=change.get("precision", "bf16"))  # fmt: skip
    assert recompute_stops_early(sc) is stops
    assert recompute_skips_last_gemm(sc) is skips_gemm


def test_pytorch_replays_a_functions_gemm_but_not_the_reduction_after_it() -> None:
    """An autograd Function as the last linear (torchao float8's matmul): PyTorch's early stop
    replays its GEMM, which packs its saved tensors after running, and stops there, before
    the reduction the output hook would run; without early stop it replays both."""
    pytest.importorskip("torch")
    import torch
    from torch.utils.checkpoint import checkpoint

    calls = {"gemm": 0, "after": 0}

    class Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            calls["gemm"] += 1
            ctx.save_for_backward(x, w)
            return x @ w.t()

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g @ w, g.t() @ x

    w1, w2 = (torch.randn(8, 8, requires_grad=True) for _ in range(2))

    def block(x):
        y = Linear.apply(torch.relu(x @ w1.t()), w2)
        calls["after"] += 1  # where RowwiseParallel's output reduction runs
        return y * 1.0

    for early_stop, replayed in ((True, (1, 0)), (False, (1, 1))):
        out = checkpoint(block, torch.randn(4, 8, requires_grad=True), use_reentrant=False,
                         early_stop=early_stop)  # fmt: skip
        calls.update(gemm=0, after=0)
        out.sum().backward()
        assert (calls["gemm"], calls["after"]) == replayed


# ---------------------------------------------------------------------------------------------
# TP: the block's last reduction is not replayed


@pytest.mark.parametrize(
    ("sp", "redistribution", "want"),
    [
        (False, "per_block", (2, 2 + 1)),  # the attention's all-reduce replayed, not the MLP's
        (True, "per_block", (4, 4 + 3)),  # 2 all-gathers and the attention's reduce-scatter
        (True, "per_linear", (7, 7 + 6)),  # 5 all-gathers and one reduce-scatter
    ],
)  # fmt: skip
def test_the_recompute_leaves_the_last_reduction_out(sp, redistribution, want) -> None:
    sc = scenario(tp=4, sp=sp, tp_input_redistribution=redistribution)
    assert tp_block_collectives(sc) == want
    # a full replay: the whole forward's again, one more
    replay = scenario(False, tp=4, sp=sp, tp_input_redistribution=redistribution)
    assert tp_block_collectives(replay) == (want[0], want[1] + 1)


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("early_stop", [False, True])
def test_the_recompute_prices_its_count(monkeypatch, sp, early_stop) -> None:
    from simtrain.costs.chunk_time import tp_recompute_block
    from simtrain.layout.step import resolve

    unit = 10**12
    monkeypatch.setattr(comm, "collective_ns", lambda *a, **k: unit)
    sc = scenario(early_stop, tp=4, sp=sp)
    step = resolve(sc)
    forward = comm.tp_forward_block(sc, step)[0]
    backward = comm.tp_backward_block(sc, step)[0] + tp_recompute_block(sc, step, 1)[0]
    assert (forward // unit, backward // unit) == tp_block_collectives(sc)


def test_an_overlapped_recompute_leaves_out_the_last_pair() -> None:
    """Async TP (tp_comm_overlap, each collective pipelined with its GEMM group): the replay is
    the forward's first three pairs, the attention's input gather and output reduce-scatter and
    the MLP's input gather, written out here; the MLP output's reduce-scatter, pipelined with
    the down projection, is not replayed."""
    from simtrain.costs.chunk_time import tp_recompute_block
    from simtrain.costs.compute import tp_linear_group_ns
    from simtrain.layout.step import resolve

    on = scenario(True, tp=4, sp=True, tp_comm_overlap=True)
    step = resolve(on)
    ag, rs = comm.tp_halves_ns(on, step)
    group = tp_linear_group_ns(on)
    first_three = comm.paired_ns(group, 4, ((ag, "attn_in"), (rs, "attn_out"), (ag, "mlp_in")))
    assert tp_recompute_block(on, step, 3) == tuple(3 * x for x in first_three)
    assert comm.tp_last_reduction(on, step)[0] == comm.pipelined_exposed_ns(rs, group["mlp_out"], 4)


# ---------------------------------------------------------------------------------------------
# Where the flag comes from


def _titan(tmp_path: Path, ac: str, compile_on: bool = False):
    from simtrain.apps.importers import import_config

    src = (ROOT / "tests" / "fixtures" / "importers" / "torchtitan_llama3_8b.toml").read_text()
    src = src.replace('mode = "selective"\nselective_ac_option = "op"', ac)
    if compile_on:
        src = src.replace("[compile]\nenable = false", "[compile]\nenable = true")
    f = tmp_path / "job.toml"
    f.write_text(src)
    return import_config("torchtitan", f).data


@pytest.mark.parametrize(
    ("ac", "compile_on", "want"),
    [
        ('mode = "full"\nearly_stop = true', False, True),
        ('mode = "full"\nearly_stop = false', False, None),
        ('mode = "full"', False, None),  # torchtitan's default since 25413d22: false
        ('mode = "full"', True, True),  # a compiled graph recomputes only what backward reads
        ('mode = "selective"\nselective_ac_option = "op"\nearly_stop = true', False, None),
    ],
)  # fmt: skip
def test_the_torchtitan_importer_reads_early_stop(tmp_path, ac, compile_on, want) -> None:
    data = _titan(tmp_path, ac, compile_on)
    assert data["runtime"].get("recompute_early_stop") is want


def test_validate_reads_it_from_the_frameworks(default_records) -> None:
    from simtrain.apps.validate.translate import translate

    def scenario_of(rid: str):  # noqa: ANN202
        return translate(default_records[rid])

    titan = scenario_of("torchtitan_2506_asynctp_70B_256gpu_bf16_vanillaTP")
    assert recompute_stops_early(titan.scenario)
    assert any("25413d22" in n for n in titan.assumptions)
    fp8 = scenario_of("torchtitan_2412_t4_70b_256gpu_2D").scenario
    assert recompute_stops_early(fp8) and not recompute_skips_last_gemm(fp8)
    kf = scenario_of("kempner_mfu_7b_4gpu_fsdp4").scenario
    fms = scenario_of("fms_fsdp_llama2_34b_128gpu_fsdp_ac_bs8").scenario
    assert recompute_stops_early(kf) and recompute_stops_early(fms)
