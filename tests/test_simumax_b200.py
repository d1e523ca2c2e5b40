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


#: Rows past the 10 % bound, each a strict xfail below (a known miss, not a tuned bound).
MEMORY_MISSES = {
    # The 131,072-token CP rows were already over-predicted under the ring (+7.6 %, +5.4 %);
    # they ran --cp-comm-type a2a, whose output saved on both sides of the all-to-all (TE's
    # out_part and the out-projection's input: costs/cp.py) adds 268 MB a layer: +10.6 %.
    # That copy is read from TE's code (save_for_backward(out_part) beside the returned out_),
    # not measured: of the seven CP rows it moved, three of the four at 32,768 tokens came
    # closer (-0.7 -> +0.1, -4.0 -> -3.2, -5.6 -> -5.2 %; +1.1 -> +2.3 %), the three at 131,072
    # went further (+7.6 -> +10.6, +5.4 -> +7.5, +1.1 -> +3.5 %).
    "simumax_b200_llama3_70b_l12_tp2_cp4_pp1_dp1_seq131072_mbc4_cef":
        "over-predicted at 131,072 tokens (+10.6 %): an s-proportional excess not found",
}  # fmt: skip


def test_every_row_peak_memory_within_10_percent(tmp_path: Path):
    """42 of the 43 rows (dense tp 1-8, pp 1-2, cp 4-8 up to 131,072 tokens), the 43rd a known
    miss (:data:`MEMORY_MISSES`, a strict xfail below):
    measured -6.4 .. +7.6 % when written (-6.4 .. +7.5 % since the CP rows run the all-to-all
    they ran); before the gradient buffer was fp32 and Adam fused, -28 .. +18 %."""
    errors = {r["id"]: _peak_allocated_error(r, tmp_path) for r in RECORDS
              if r["id"] not in MEMORY_MISSES}  # fmt: skip
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert abs(errors[worst]) <= 0.10, (worst, errors[worst])


@pytest.mark.parametrize(
    "rec",
    [pytest.param(r, marks=pytest.mark.xfail(strict=True, reason=MEMORY_MISSES[r["id"]]))
     for r in RECORDS if r["id"] in MEMORY_MISSES],
    ids=lambda r: r["id"].removeprefix("simumax_b200_"),
)  # fmt: skip
def test_known_memory_misses_stay_visible(rec: dict, tmp_path: Path):
    assert abs(_peak_allocated_error(rec, tmp_path)) <= 0.10


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
