"""nanotron's compute-balanced pipeline split (``parallelism.layer_split: compute_balanced``)
against a line-by-line transcription of nanotron's own loop, and the layouts simtrain refuses.

nanotron (huggingface/nanotron@2411b022a75fb7f7561a1bb4166706da5e1b76de) assigns its
PipelineBlocks to pipeline ranks in ``src/nanotron/models/base.py`` ``build_model``, with the
costs of ``src/nanotron/models/llama.py`` ``LlamaModel.get_block_compute_costs``. The blocks,
in ``named_modules`` order: ``token_position_embeddings``, ``decoder[0..L-1]``,
``final_layer_norm``, ``lm_head``, ``cast_to_fp32`` (LlamaModel) and ``loss``
(LlamaForTraining). Only the decoder layers and the LM head cost anything, so when the LM head
lands before the last rank the fp32 cast, the loss (and nothing at all) go to the ranks after
it: nanotron runs such ranks (the cast and the loss receive the logits over p2p, and
``output_pp_rank`` may be a rank with no block that only sends the labels).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.apps.validate.records import SkipReason
from simtrain.apps.validate.translate import record_to_scenario
from simtrain.errors import ConfigError
from simtrain.layout.partition import (
    compute_balanced_problem,
    compute_balanced_stages,
    nanotron_block_ranks,
)
from simtrain.spec.model import ModelSpec


def nanotron_build_model_ranks(m: ModelSpec, pp: int) -> tuple[list[int], int]:
    """(rank of each block, ``output_pp_rank``): nanotron models/base.py ``build_model``
    (lines 214-235 at 2411b022), transcribed with numpy as there."""
    d_qkv = m.hidden // m.heads
    layer = 4 * m.heads * d_qkv * m.hidden + 3 * m.ffn_hidden * m.hidden  # LlamaDecoderLayer
    head = m.vocab * m.hidden  # TensorParallelColumnLinear (the lm_head)
    block_compute_costs = [0] + [layer] * m.layers + [0, head, 0, 0]
    block_cumulative_costs = np.cumsum(block_compute_costs)
    thresholds = [block_cumulative_costs[-1] * ((rank + 1) / pp) for rank in range(pp)]
    assert thresholds[-1] >= block_cumulative_costs[-1]
    target_pp_rank_idx = 0
    ranks = []
    for cumulative_cost in block_cumulative_costs:
        assert target_pp_rank_idx < pp
        ranks.append(target_pp_rank_idx)
        if cumulative_cost > thresholds[target_pp_rank_idx]:
            target_pp_rank_idx += 1
    return ranks, target_pp_rank_idx


@st.composite
def models(draw: st.DrawFn) -> tuple[ModelSpec, int]:
    heads = draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64]))
    hidden = heads * draw(st.sampled_from([8, 16, 64, 128]))
    layers = draw(st.integers(1, 96))
    m = ModelSpec(
        "m",
        layers,
        hidden,
        heads,
        heads,
        hidden * draw(st.integers(1, 8)),
        draw(st.sampled_from([256, 1000, 32000, 50257, 128256, 131072, 250880])),
        256,
    )
    return m, draw(st.integers(1, layers))


@settings(max_examples=400, deadline=None)
@given(models())
def test_block_ranks_are_nanotrons(mp: tuple[ModelSpec, int]) -> None:
    m, pp = mp
    ranks, _ = nanotron_build_model_ranks(m, pp)
    assert nanotron_block_ranks(m, pp) == ranks


@pytest.mark.parametrize("layers,hidden,ffn,vocab,pp", [(42, 4096, 12288, 131072, 17),
                                                         (43, 128, 384, 256, 34)])  # fmt: skip
def test_a_tie_in_exact_arithmetic_goes_as_numpys_float64(layers: int, hidden: int, ffn: int,
                                                          vocab: int, pp: int) -> None:  # fmt: skip
    """A cumulative cost equal to its threshold in exact arithmetic (c·pp = C·(r+1)) moves to
    the next rank when ``C * ((r + 1) / pp)`` rounds below c in float64: the integer test
    simtrain used (c·pp > C·(r+1)) kept the block's successor on the same rank."""
    m = ModelSpec("m", layers, hidden, 1, 1, ffn, vocab, 256)
    ranks = nanotron_block_ranks(m, pp)
    assert ranks == nanotron_build_model_ranks(m, pp)[0]
    total = sum([4 * hidden * hidden + 3 * ffn * hidden] * layers) + vocab * hidden
    integer, r, c = [], 0, 0
    for cost in [0] + [4 * hidden * hidden + 3 * ffn * hidden] * layers + [0, vocab * hidden, 0, 0]:
        c += cost
        integer.append(r)
        if c * pp > total * (r + 1):
            r += 1
    assert integer != ranks


@settings(max_examples=300, deadline=None)
@given(models())
def test_every_stage_works_or_the_split_is_an_error(mp: tuple[ModelSpec, int]) -> None:
    """Invariant 1 (issue 15): every stage holds one of nanotron's blocks (a decoder layer, the
    embedding, the LM head, the fp32 cast or the loss), each as nanotron places it; a split
    that leaves a rank with no block at all is a ConfigError naming parallelism.layer_split and
    parallelism.pp, on one line, exactly when nanotron leaves such a rank."""
    m, pp = mp
    ranks, _ = nanotron_build_model_ranks(m, pp)
    # With pp <= layers (a layout check) no block is heavier than a stage's share C/pp, so
    # the final norm always sits with the LM head, as simtrain computes it.
    assert ranks[m.layers + 1] == ranks[m.layers + 2]
    try:
        stages = compute_balanced_stages(m, pp)
    except ConfigError as e:
        text = str(e)
        assert e.key == "parallelism.layer_split" and "parallelism.pp" in text and "\n" not in text
        assert len(text) < 400
        assert set(range(pp)) - set(ranks)
        assert compute_balanced_problem(m, pp) in text
        return
    assert set(ranks) == set(range(pp))
    assert not compute_balanced_problem(m, pp)
    head, cast, loss = ranks[m.layers + 2 :]
    for k, s in enumerate(stages):
        assert s.layers or s.embedding or s.head or s.tail, (k, s)
        assert s.layers == sum(1 for r in ranks[1 : m.layers + 1] if r == k)
        assert s.head == (k == head) and s.loss_apart == (k == head and loss != head)
        held = tuple(n for n, r in (("fp32 cast", cast), ("loss", loss)) if r == k)
        assert s.loss_parts == held and s.tail == (() if k == head else held)
    # the loss's two parts, each on one stage, in model order; the stages after the head
    # hold nothing else (and the head is on one of the last three stages)
    assert [p for s in stages for p in s.loss_parts] == ["fp32 cast", "loss"]
    assert all(not (s.layers or s.embedding) for s in stages[head + 1 :])
    assert head >= pp - 3


def test_published_nanotron_layouts() -> None:
    """The Ultra-Scale Playbook sweep records whose split puts the fp32 cast and the loss after
    the LM head: the last stage holds both (33 records) or each of the two last stages one
    (6); with 16 layers of h 2048 on pp 16 the LM head lands on rank 12, the cast on 13, the
    loss on 14 and nothing on rank 15 (nanotron's output_pp_rank, which only sends the labels):
    10 records, which validate skips with the error's text."""
    from simtrain.apps.validate.records import load_records, resolve_path

    refused: collections.Counter[str] = collections.Counter()
    tails: collections.Counter[tuple[tuple[str, ...], ...]] = collections.Counter()
    kept = 0
    for rec in load_records(resolve_path(None)):
        if rec.source_key != "nanotron":
            continue
        tr = record_to_scenario(rec)
        why = tr.reason if isinstance(tr, SkipReason) else compute_balanced_problem(
            tr.model, tr.parallelism.pp)  # fmt: skip
        if "nanotron's split" in why:
            refused[why[why.index("stage(s)") : why.index(" with no")]] += 1
        elif not isinstance(tr, SkipReason):
            kept += 1
            if tr.parallelism.layer_split == "compute_balanced":
                stages = compute_balanced_stages(tr.model, tr.parallelism.pp)
                tail = tuple(s.tail for s in stages if s.tail)
                if tail:
                    tails[tail] += 1
    assert refused == {"stage(s) 15 of parallelism.pp = 16": 10}
    assert tails == {(("fp32 cast", "loss"),): 33, (("fp32 cast",), ("loss",)): 6}
    assert kept == 456
    m = ModelSpec("m", 16, 2048, 32, 32, 8192, 131072, 256)
    ranks, output_rank = nanotron_build_model_ranks(m, 16)
    assert ranks[17:] == [12, 12, 13, 14] and output_rank == 15  # rank 15: no block at all
