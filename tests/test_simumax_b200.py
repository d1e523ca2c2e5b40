"""SimuMax's measured Megatron-Core runs on one DGX B200 (``measured/simumax_b200.yaml``), read
through the Megatron importer from each run's own arguments (one code path with
``simtrain import megatron``): the per-rank peak of ``torch.cuda.max_memory_allocated`` against
simtrain's peak without the CUDA context (which the allocator does not count).

Issue 14's target: the memory of expert-parallel layouts within 10 % of a published per-rank
measurement. The DeepSeek-V2/V3 rows (EP 4 and 8, MLA, capacity factor 1, one dense layer) are
that measurement. The step times are reported by ``simtrain validate``, not asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtrain.apps.importers import import_config
from simtrain.apps.importers.common import load_imported
from simtrain.apps.importers.megatron import layer_pattern
from simtrain.costs.memory import estimate_memory
from simtrain.spec.yamlfile import load_yaml

RECORDS = load_yaml(Path(__file__).parents[1] / "measured" / "simumax_b200.yaml")
MIB = 2**20


def _scenario(rec: dict, tmp_path: Path):
    script = tmp_path / f"{rec['id']}.sh"
    script.write_text("torchrun --nproc_per_node 8 --nnodes 1 pretrain_gpt.py "
                      + rec["native"]["args"] + "\n")  # fmt: skip
    return load_imported(import_config("megatron", script), ["hardware=b200_180gb"])


def _peak_allocated_error(rec: dict, tmp_path: Path) -> float:
    sc = _scenario(rec, tmp_path)
    pred = estimate_memory(sc).peak_memory_bytes - sc.hardware.cuda_context_bytes
    meas = rec["measured"]["peak_mem_mib"] * MIB
    return pred / meas - 1


def test_records_are_the_release_table():
    """43 rows: the release's formal table (36 non-VPP rows and 7 CP rows), each with its
    arguments; 12 of them expert-parallel."""
    assert len(RECORDS) == 43
    assert len({r["id"] for r in RECORDS}) == 43
    assert sum("--num-experts" in r["native"]["args"] for r in RECORDS) == 12


@pytest.mark.parametrize(
    "rec",
    [r for r in RECORDS if "--num-experts" in r["native"]["args"]],
    ids=lambda r: r["id"].removeprefix("simumax_b200_"),
)
def test_expert_parallel_peak_memory_within_10_percent(rec: dict, tmp_path: Path):
    """DeepSeek-V2/V3 under EP 4/8: measured -1.8 .. -1.1 % when written (Megatron-Core's fp32
    gradient buffer and fused Adam: runtime megatron_core)."""
    assert abs(_peak_allocated_error(rec, tmp_path)) <= 0.10


def test_every_row_peak_memory_within_2_percent(tmp_path: Path):
    """All 43 rows (dense tp 1-8, pp 1-2, cp 4-8 up to 131,072 tokens): measured -6.4 .. +7.6 %
    when written (before the gradient buffer was fp32 and Adam fused, -28 .. +18 %); the
    131,072-token tp-2 cp-4 row then went to +10.6 % under the all-to-all CP it ran (TE's
    out_part saved beside the out-projection's input, costs/cp.py), a known miss until the loss
    became the one the runs ran (--cross-entropy-loss-fusion --cross-entropy-fusion-impl te:
    the gradient written into the 16-bit logits, no fp32 copies): -5.9 .. +7.1 %. With
    Megatron-Core's fused SwiGLU (its input saved, not silu's output) and the cached dummy
    weight gradients of Transformer Engine's linears and of Megatron's output layer (runtime
    fused_swiglu, te_dummy_wgrad; tests/test_megatron_mlp_memory.py): -1.2 .. +0.2 %, 2 % held
    here (the fused SwiGLU alone -8.3 .. -2.0 %; with the decoder's dummies only -2.9 .. -0.6 %)."""
    errors = {r["id"]: _peak_allocated_error(r, tmp_path) for r in RECORDS}
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert abs(errors[worst]) <= 0.02, (worst, errors[worst])


def test_imported_deepseek_layout(tmp_path: Path):
    """The importer reads the run's MLA, MoE pattern and recompute flags as Megatron does:
    ``([0]*1+[1]*3)*1`` = one dense layer first; ``--recompute-method block
    --recompute-num-layers 0`` = no layer recomputed; capacity factor 1; EP 8 x DP 8."""
    rec = next(r for r in RECORDS if r["id"].endswith("deepseekv3_l4_tp1_ep8_pp1_dp8_mbc4_cef"))
    sc = _scenario(rec, tmp_path)
    m = sc.model
    assert (m.first_dense_layers, m.num_experts, m.experts_per_token) == (1, 256, 8)
    assert (m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim) == (
        1536, 512, 128, 64)  # fmt: skip
    assert m.capacity_factor == 1.0 and sc.training.recompute == "none"
    assert (sc.parallelism.ep, sc.parallelism.dp, sc.parallelism.zero_stage) == (8, 8, 1)
    assert sc.runtime.grad_reduce_dtype == "fp32" and sc.runtime.grads_in_reduce_buffer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("([0]*1+[1]*3)*1", [0, 1, 1, 1]),
        ("([0]*3+[1]*58)*1", [0] * 3 + [1] * 58),
        ("[1,0,1,0]", [1, 0, 1, 0]),
        ("([1]+[0])*2", [1, 0, 1, 0]),
        ("__import__('os')", None),
        ("[2]*3", None),
        ("[1]*10**9", None),
        ("(", None),
    ],
)
def test_layer_pattern(text: str, expected: list[int] | None):
    assert layer_pattern(text) == expected
