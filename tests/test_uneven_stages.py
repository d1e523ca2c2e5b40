"""Uneven pipeline stages (issue 14 item 6): Megatron-Core's first/last stage layers and
account-for-embedding/loss split, an explicit per-chunk ``layer_split`` list, DeepSpeed's and
torchtitan's own uneven splits, and that memory, timing and validate follow the counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.apps.importers import import_config
from simtrain.apps.importers.common import load_imported
from simtrain.apps.importers.megatron import layout_decoder_counts
from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate.records import Record
from simtrain.apps.validate.splits import pipeline_split
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.layout.partition import (
    deepspeed_balanced_2022,
    from_counts,
    split_layers,
    torchtitan_split,
    torchtitan_split_2412,
)
from simtrain.layout.step import resolve
from simtrain.spec.scenario import ParallelSpec, Scenario, parse_scenario
from simtrain.spec.stage_split import megatron_chunk_layers, megatron_split_problem


def megatron_reference(layers: int, pp: int, vp: int | None, first: int | None,
                       last: int | None, emb: bool = False, loss: bool = False
                       ) -> dict[tuple[int, int], tuple[int, int]]:  # fmt: skip
    """(pp_rank, vp_stage) -> (offset, layers to build), transcribed independently from
    Megatron-LM d98e8a64 transformer_block.py get_num_layers_to_build and transformer_layer.py
    get_transformer_layer_offset (None = the argument unset), branch for branch."""
    out = {}
    for r in range(pp):
        for j in range(vp or 1):
            # get_num_layers_to_build
            if first is not None or last is not None:
                todo, left = layers, pp
                if first is not None:
                    todo, left = todo - first, left - 1
                if last is not None:
                    todo, left = todo - last, left - 1
                per_rank = todo // left if left > 0 else 0
                if r == 0 and first is not None:
                    per_rank = first
                if r == pp - 1 and last is not None:
                    per_rank = last
            else:
                per_rank = (layers + emb + loss) // pp
            n = per_rank // vp if vp else per_rank
            if emb and j == 0 and r == 0:
                n -= 1
            if loss and j == (vp or 1) - 1 and r == pp - 1:
                n -= 1
            # get_transformer_layer_offset
            if first is not None or last is not None:
                mid_stages = pp - (first is not None) - (last is not None)
                f0, l0 = first or 0, last or 0
                mid = layers - f0 - l0
                mid_rank = r if first is None else r - 1
                if vp:
                    fc, lc, mc = f0 // vp, l0 // vp, mid // vp
                    total = fc + mc + lc
                    off = j * total if r == 0 else j * total + fc + mid_rank * (mc // mid_stages)
                else:
                    per = mid // mid_stages if mid_stages > 0 else 0
                    off = 0 if r == 0 else mid_rank * per + f0
            else:
                per_rank_all = (layers + emb + loss) // pp
                if vp:
                    per_v = per_rank_all // vp
                    off = j * per_v * pp + r * per_v
                else:
                    off = r * per_rank_all
                if emb and not (r == 0 and j == 0):
                    off -= 1
            out[(r, j)] = (off, n)
    return out


CASES = [
    # (layers, pp, vp, first, last, emb, loss)
    (126, 16, None, 7, 7, False, False),  # Llama 3 405B: first and last stage one layer fewer
    (126, 16, None, None, None, True, True),  # the same counts by Megatron-Bridge's recipe flags
    (126, 16, 4, None, None, True, True),  # mbridge2511 GB200 Llama 3.1 405B: pp16 vp4
    (126, 16, 8, None, None, True, True),  # 1 layer per chunk: the end chunks hold none
    (30, 4, None, 6, None, False, False),
    (30, 4, None, None, 6, False, False),
    (32, 4, 2, 6, 10, False, False),
    (40, 3, 2, 8, 12, False, False),
    (10, 2, None, 4, 6, False, False),  # pp 2: no middle stage
    (63, 8, None, None, None, True, False),
    (24, 4, 3, None, None, False, False),
]


@pytest.mark.parametrize("layers,pp,vp,first,last,emb,loss", CASES)
def test_megatron_chunk_layers_are_megatrons(layers: int, pp: int, vp: int | None,
                                             first: int | None, last: int | None, emb: bool,
                                             loss: bool) -> None:  # fmt: skip
    """Counts and offsets: chunk k = j·pp + r holds Megatron's layers to build, consecutive
    (offset of each chunk = the sum of the counts before it, in chunk order)."""
    v = vp or 1
    assert megatron_split_problem(layers, pp, v, first or 0, last or 0, emb, loss) is None
    counts = megatron_chunk_layers(layers, pp, v, first or 0, last or 0, emb, loss)
    ref = megatron_reference(layers, pp, vp, first, last, emb, loss)
    assert len(counts) == pp * v and sum(counts) == layers
    blocks = from_counts(counts)
    for (r, j), (off, n) in ref.items():
        k = j * pp + r
        assert (blocks[k].lo, blocks[k].layers) == (off, n), (r, j, blocks[k], off, n)


def test_llama3_405b_layouts() -> None:
    """Llama 3 405B (126 layers, pp 16): 7 layers on the first and last stage, 8 in between,
    whether given as first/last = 7 or by counting the embedding and the loss as a layer; with
    one layer per model chunk (v = 8) the first chunk holds only the embedding and the last
    only the output and loss (Llama 3 paper §3.3.2's balanced pipeline)."""
    by_first_last = megatron_chunk_layers(126, 16, 1, 7, 7)
    by_account = megatron_chunk_layers(126, 16, 1, 0, 0, True, True)
    assert by_first_last == by_account == [7] + [8] * 14 + [7]
    v8 = megatron_chunk_layers(126, 16, 8, 0, 0, True, True)
    assert v8[0] == 0 and v8[-1] == 0 and set(v8[1:-1]) == {1}
    vp4 = megatron_chunk_layers(126, 16, 4, 0, 0, True, True)
    assert vp4 == [1] + [2] * 62 + [1]


def test_deepspeed_and_torchtitan_splits() -> None:
    """DeepSpeed's partition_balanced (pre-#4312) over type:transformer: 78 layers on 12
    stages are 7 x 11 and 1 (bigscience chronicles-prequel.md: 'the last stage has 1 block,
    while the rest have 7'); divisible counts stay even. torchtitan 9dec370's generated split
    points for Llama 3.1 405B (126 layers)."""
    assert deepspeed_balanced_2022(78, 12) == [7] * 11 + [1]
    assert deepspeed_balanced_2022(72, 12) == [6] * 12
    assert deepspeed_balanced_2022(80, 10) == [8] * 10
    assert torchtitan_split_2412(126, 8) == [15] + [16] * 6 + [15]
    assert torchtitan_split_2412(126, 16) == [7] + [8] * 14 + [7]
    assert torchtitan_split_2412(32, 8) == [4] * 8


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.integers(2, 16), st.integers(1, 4), st.integers(0, 40),
       st.integers(0, 40), st.booleans(), st.booleans())  # fmt: skip
def test_counts_sum_to_layers(layers: int, pp: int, v: int, first: int, last: int,
                              emb: bool, loss: bool) -> None:  # fmt: skip
    """Whenever Megatron accepts the split, the counts sum to the layers, each chunk holds at
    least one layer (only the embedding's and the loss's chunk may hold none, and then only by
    the account-for flags), and the first and last stage hold what was asked."""
    if first or last:
        emb = loss = False
    if megatron_split_problem(layers, pp, v, first, last, emb, loss) is not None:
        return
    counts = megatron_chunk_layers(layers, pp, v, first, last, emb, loss)
    assert sum(counts) == layers and len(counts) == pp * v
    inner = counts[1:-1] if (emb or loss) else counts
    assert all(n >= 1 for n in inner) and all(n >= 0 for n in counts)
    rank = [sum(counts[j * pp + r] for j in range(v)) for r in range(pp)]
    if first:
        assert rank[0] == first
    if last:
        assert rank[-1] == last


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=12))
def test_explicit_list_is_the_split(counts: list[int]) -> None:
    """An explicit list gives each stage exactly its layers, in order, the embedding on the
    first and the head on the last."""
    layers = sum(counts)
    sc = _scenario(layers, pp=len(counts), split=counts)
    chunks = resolve(sc).chunks
    assert [c.layers for c in chunks] == counts
    assert [c.lo for c in chunks] == [sum(counts[:k]) for k in range(len(counts))]
    assert chunks[0].embedding and chunks[-1].head
    assert not any(c.embedding for c in chunks[1:]) and not any(c.head for c in chunks[:-1])


def _scenario(layers: int, pp: int, split: Any = "uniform", v: int = 1, gb: int = 16,
              **par: Any) -> Scenario:  # fmt: skip
    data = {
        "model": {"layers": layers, "hidden": 256, "heads": 4, "vocab": 1024, "max_positions": 256},
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": 128, "global_batch": gb, "micro_batch": 1},
        "parallelism": {"pp": pp, "layer_split": split, "virtual_stages": v,
                        "schedule": "interleaved" if v > 1 else "1f1b", **par},
    }  # fmt: skip
    return parse_scenario(data, "test.yaml")


def test_uniform_list_equals_uniform() -> None:
    """An explicit even list is the uniform split, number for number."""
    a = simulate_scenario(_scenario(8, 4)).metrics
    b = simulate_scenario(_scenario(8, 4, [2, 2, 2, 2])).metrics
    assert a.step_time_s == b.step_time_s and a.bubble_ratio == b.bubble_ratio


def _compute_ns(res: Any) -> list[int]:
    """Nanoseconds of forward and backward compute per rank (the timeline's F and B spans)."""
    out: dict[int, int] = {}
    for s in res.timeline.spans:
        if s.stream == "compute" and s.kind in ("F", "B"):
            out[s.rank] = out.get(s.rank, 0) + s.duration_ns
    return [out[r] for r in sorted(out)]


def test_a_stage_with_more_layers_takes_proportionally_longer() -> None:
    """A stage's forward and backward time is its layers' (the middle stages hold no embedding
    and no head): 6 layers take 3 x as long as 2, and the step follows the slowest stage."""
    sc = _scenario(16, 4, [4, 2, 6, 4], gb=32)
    res = simulate_scenario(sc)
    ns = _compute_ns(res)
    assert abs(ns[2] - 3 * ns[1]) <= 3 * 32 * 2  # integer ns rounding per span
    even = simulate_scenario(_scenario(16, 4, gb=32))
    even_ns = _compute_ns(even)
    assert abs(even_ns[1] - 2 * ns[1]) <= 4 * 32 * 2  # 4 layers vs 2: twice
    assert res.metrics.step_time_s > even.metrics.step_time_s
    assert res.metrics.step_time_s * 1e9 >= ns[2]  # the 6-layer stage bounds the step


def test_interleaved_unequal_chunks() -> None:
    """Interleaved schedule with chunks of unequal sizes (first/last stage 2 layers in 2
    chunks, middle ranks 4): each rank's busy time follows its layers."""
    sc = _scenario(12, 4, v=2, gb=16, first_stage_layers=2, last_stage_layers=2)
    st_ = resolve(sc)
    assert [c.layers for c in st_.chunks] == [1, 2, 2, 1, 1, 2, 2, 1]
    assert [st_.rank_layers(r) for r in range(4)] == [2, 4, 4, 2]
    ns = _compute_ns(simulate_scenario(sc))
    assert ns[1] == ns[2]  # 2 + 2 layers each
    # the end ranks: 1 + 1 layers, plus the embedding (rank 0) or the head (rank 3)
    assert ns[1] / 2 <= ns[0] < ns[1] and ns[1] / 2 <= ns[3]


def test_memory_per_stage_follows_the_counts() -> None:
    """Parameters per stage are the stage's layers (plus the ends): a middle stage with 6
    layers holds 3 x the parameters of one with 2, and its activations per micro-batch too."""
    rep = estimate_memory(_scenario(16, 4, [4, 2, 6, 4]))
    s1, s2 = rep.stages[1], rep.stages[2]
    assert s2.params == 3 * s1.params
    assert s2.activation_bytes_per_microbatch == 3 * s1.activation_bytes_per_microbatch
    assert [s.layers for s in rep.stages][2] == ((6, 12),)


BAD = [
    ({"layer_split": [4, 4, 4]}, "parallelism.layer_split", "has 3 entries"),
    ({"layer_split": [4, 4, 4, 5]}, "parallelism.layer_split", "sums to 17"),
    ({"layer_split": [8, 0, 4, 4]}, "parallelism.layer_split", "at least one layer"),
    ({"layer_split": [4, 4, "x", 4]}, "parallelism.layer_split", "list of integers"),
    ({"layer_split": "compute_balanced", "first_stage_layers": 2},
     "parallelism.first_stage_layers", "uniform"),
    ({"layer_split": [4, 4, 4, 4], "last_stage_layers": 4}, "parallelism.last_stage_layers",
     "explicit"),
    ({"first_stage_layers": 3, "last_stage_layers": 4}, "parallelism.first_stage_layers",
     "16 - 3 - 4 = 9"),
    ({"first_stage_layers": -1}, "parallelism.first_stage_layers", "must be"),
    ({"first_stage_layers": 20}, "parallelism.first_stage_layers", "middle layers"),
    ({"first_stage_layers": 4, "account_for_loss": True}, "parallelism.first_stage_layers",
     "account_for"),
    ({"account_for_embedding": True}, "parallelism.account_for_embedding", "17"),
]  # fmt: skip


@pytest.mark.parametrize("par,key,words", BAD)
def test_bad_splits_are_config_errors(par: dict[str, Any], key: str, words: str) -> None:
    par = dict(par)
    with pytest.raises(ConfigError) as e:
        _scenario(16, 4, **{"split": par.pop("layer_split", "uniform")}, **par)
    assert e.value.key == key, str(e.value)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_bad_virtual_stage_splits() -> None:
    with pytest.raises(ConfigError, match="multiple of parallelism.virtual_stages = 2"):
        _scenario(16, 4, v=2, first_stage_layers=3, last_stage_layers=3)
    with pytest.raises(ConfigError, match="pp x virtual_stages = 4 x 2 = 8"):
        _scenario(16, 4, [4, 4, 4, 4], v=2)
    # one entry per chunk in chunk order j·pp + r
    sc = _scenario(16, 4, [1, 2, 2, 1, 3, 3, 2, 2], v=2)
    assert [resolve(sc).rank_layers(r) for r in range(4)] == [4, 5, 4, 3]


def test_default_and_divisible_unchanged() -> None:
    """The defaults change nothing: a uniform split with no uneven key is Megatron's even one."""
    p = ParallelSpec(pp=4)
    sc = _scenario(16, 4)
    assert split_layers(sc.model, p) == split_layers(sc.model, sc.parallelism)
    assert (p.first_stage_layers, p.last_stage_layers, p.account_for_embedding) == (0, 0, False)


BASE = ("--num-layers 126 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 "
        "--max-position-embeddings 2048 --micro-batch-size 1 --global-batch-size 64 "
        "--vocab-size 50000 --bf16 --pipeline-model-parallel-size 16 ")  # fmt: skip


def _import(tmp_path: Path, text: str) -> Scenario:
    f = tmp_path / "flags.txt"
    f.write_text(text)
    imp = import_config("megatron", f, gpus=16)
    assert not any("pipeline" in u for u in imp.unsupported), imp.unsupported
    return load_imported(imp)


def test_import_megatron_uneven_flags(tmp_path: Path) -> None:
    sc = _import(tmp_path, BASE + "--decoder-first-pipeline-num-layers 7 "
                 "--decoder-last-pipeline-num-layers 7")  # fmt: skip
    p = sc.parallelism
    assert (p.first_stage_layers, p.last_stage_layers) == (7, 7)
    assert [resolve(sc).rank_layers(r) for r in range(16)] == [7] + [8] * 14 + [7]
    sc = _import(tmp_path, BASE + "--account-for-embedding-in-pipeline-split "
                 "--account-for-loss-in-pipeline-split --num-virtual-stages-per-pipeline-rank 4")  # fmt: skip
    p = sc.parallelism
    assert (p.account_for_embedding, p.account_for_loss, p.virtual_stages) == (True, True, 4)
    assert [c.layers for c in resolve(sc).chunks] == [1] + [2] * 62 + [1]
    # --num-layers-per-virtual-pipeline-stage counts the embedding and the loss (arguments.py)
    sc = _import(tmp_path, BASE + "--account-for-embedding-in-pipeline-split "
                 "--account-for-loss-in-pipeline-split --num-layers-per-virtual-pipeline-stage 2")  # fmt: skip
    assert sc.parallelism.virtual_stages == 4


def test_validate_records_use_their_frameworks_split() -> None:
    """The records issue 14 names are expressible, each with its framework's split."""
    from simtrain.apps.validate.records import load_record_files, resolve_paths
    from simtrain.apps.validate.translate import record_to_scenario

    want = {
        "bloom_prequel_02-26_182B_L78_H13824_a64_dp8tp4pp12_mbs2_gbs2048_fp16": [7] * 11 + [1],
        "bloom_prequel_02-27_195B_L106_H12288_a64_dp8tp4pp12_mbs2_gbs2048_fp16":
            [8] + [9] * 10 + [8],
        "mbridge2511_GB200_LLAMA3.1_405B_256gpu": [1] + [2] * 62 + [1],
        "torchtitan_2412_t5_405b_512gpu_Interleaved1F1B": [7] + [8] * 14 + [7],
        "torchtitan_2412_t6_405b_512gpu_fsdp8_cp1_seq32768": [15] + [16] * 6 + [15],
    }  # fmt: skip
    recs = {r.id: r for r in load_record_files(resolve_paths(None)) if r.id in want}
    assert set(recs) == set(want)
    for rid, counts in want.items():
        sc = record_to_scenario(recs[rid])
        assert isinstance(sc, Scenario), (rid, sc)
        assert [c.layers for c in resolve(sc).chunks] == counts, rid


def test_extrapolated_step_time_is_the_simulated_one_for_uneven_stages() -> None:
    """validate extrapolates long steps from short ones: with uneven stages the fill is not
    affine from m = 1, so it starts at m = pp and equals the full simulation."""
    from simtrain.apps.validate.predict import predicted_step_time

    sc = _scenario(16, 4, [4, 2, 6, 4], gb=64)
    full = simulate_scenario(sc).metrics.step_time_s
    assert predicted_step_time(sc) == pytest.approx(full, rel=1e-9)


def test_torchtitan_split() -> None:
    """torchtitan's generate_llm_fqn_per_model_part (4a950eaa): L + 1 + 1 effective layers over
    S stages, the first (L + 2) mod S one more, minus the embedding's and the output's weight
    at the ends; the counts add up to L. Llama 3 8B (32 layers) on 16 stages: 2, 3, 2 x 13, 1."""
    assert torchtitan_split(32, 16) == [2, 3] + [2] * 13 + [1]
    assert torchtitan_split(30, 8) == [3] + [4] * 6 + [3]  # = embedding_as_layer on pp 8
    assert torchtitan_split(126, 16, 0, 0) == [8] * 14 + [7] * 2
    for layers, s, i, o in ((32, 16, 1, 1), (126, 8, 2, 3), (61, 4, 0, 1)):
        assert sum(torchtitan_split(layers, s, i, o)) == layers


def test_import_torchtitan_looped_schedule_split(tmp_path: Path) -> None:
    """A looped schedule (2 stages per rank by default) takes torchtitan's own split of the
    32 layers over its 16 stages, not an even one."""
    src = Path(__file__).parent / "fixtures" / "importers" / "torchtitan_llama3_8b.toml"
    text = src.read_text().replace("pipeline_parallel_degree = 1", "pipeline_parallel_degree = 8\n"
                                   'pipeline_parallel_schedule = "Interleaved1F1B"')  # fmt: skip
    text = text.replace("local_batch_size = 1", "local_batch_size = 8")
    f = tmp_path / "tt.toml"
    f.write_text(text)
    sc = load_imported(import_config("torchtitan", f, gpus=8))
    p = sc.parallelism
    assert (p.pp, p.virtual_stages, p.schedule) == (8, 2, "interleaved")
    assert p.layer_split == tuple(torchtitan_split(32, 16))
    assert [c.layers for c in resolve(sc).chunks] == torchtitan_split(32, 16)


@pytest.mark.parametrize(("v", "split"), [
    (2, [4, 4, 4] + [3] * 12 + [0]),
    (2, [4, 4, 4] + [3] * 11 + [2, 1]),
    (3, [3, 3] + [2] * 21 + [0]),
])  # fmt: skip
def test_extrapolated_interleaved_step_with_uneven_chunks_is_the_simulated_one(
    v: int, split: list[int]
) -> None:
    """Interleaved chunks of unequal sizes (GPT-2 XL, pp 8, m 72): the step is affine in m only
    from (v + 1)·pp on (the warm-up's (v - 1)·pp extra forwards), so validate extrapolates from
    there (review: from m = pp it was 615 ms short of the full simulation at m 72)."""
    from simtrain.apps.validate.predict import predicted_step_time
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario("scenarios/interleaved_8gpu.yaml", [
        "runtime=megatron_core", "training.global_batch=576", f"parallelism.virtual_stages={v}",
        f"parallelism.layer_split={split}"])  # fmt: skip
    full = simulate_scenario(sc).metrics.step_time_s
    assert predicted_step_time(sc) == pytest.approx(full, rel=1e-9)


@pytest.mark.parametrize(
    ("name", "pp", "vp", "layout", "mtp", "source"),
    [("Kimi_K2", 4, 4, "Etttt|(tttt|)*14tL", 0, "_get_kimi_k2_pipeline_layout"),
     ("Kimi_K2", 16, 2, "Et|(tt|)*30L", 0, "perf_recipes/kimi/h100/kimi_k2.py"),
     ("DeepSeekV3", 2, 8, "Et*4|(t*4|)*14tmL", 1, "perf_recipes/deepseek/gb300"),
     ("DeepSeekV3", 8, 4, "Et|(tt|)*30mL", 1, "deepseek_llm_pretrain.py l.175 at 00b7660b")],
)  # fmt: skip
def test_bridge_recipe_layouts(name: str, pp: int, vp: int, layout: str, mtp: int,
                               source: str) -> None:  # fmt: skip
    """Megatron-Bridge's 61-layer layouts equal the recipes' own layout strings (copied from
    the recipes, Kimi K2's (4, 4) written from its list form), read by Megatron-Core's rules
    (the importer's ``layout_decoder_counts``), and the note names where each is read."""
    rec = Record(id="r", kind="training_run", source="s", source_key="megatron_bridge",
                 model={"name": name}, training={}, hardware={}, measured={},
                 parallelism={"pp": pp, "virtual_stages": vp})  # fmt: skip
    notes: list[str] = []
    split = pipeline_split(rec, dict(rec.parallelism), 61, notes)["layer_split"]
    assert layout_decoder_counts(layout, pp, 61, mtp) == (split, vp)
    assert source in notes[0]
