"""A token embedding kept whole on every TP rank (runtime ``tp_replicated_embedding``,
KempnerForge's plan) against the vocabulary-parallel one: its states are not split by tp, and
its forward issues no collective. Checked against PyTorch's DTensor on a fake process group
(``simtrain.torchref.tp_plans.measure_embedding``) and the closed form V·h·(1 − 1/tp)."""

from __future__ import annotations

import pytest

from simtrain.costs import comm
from simtrain.costs.comm import tp_edge_collectives
from simtrain.costs.memory import estimate_memory
from simtrain.costs.workload import chunk_param_count
from simtrain.layout.step import resolve
from simtrain.spec.scenario import parse_scenario

VOCAB, HIDDEN = 1024, 64
TINY = {"layers": 4, "hidden": HIDDEN, "heads": 4, "kv_heads": 4, "ffn_hidden": 128,
        "vocab": VOCAB, "max_positions": 512, "mlp": "swiglu", "norm": "rmsnorm",
        "positions": "rotary", "bias": False, "tied_embeddings": False}  # fmt: skip


def scenario(replicated: bool, tp: int = 4, sp: bool = True, dp: int = 1, zero: int = 0):
    data = {
        "name": "embedding",
        "model": TINY,
        "hardware": "h100_sxm5_80gb",
        "training": {"seq_len": 16, "global_batch": 4 * dp, "micro_batch": 2, "precision": "bf16"},
        "parallelism": {"dp": dp, "tp": tp, "pp": 1, "sequence_parallel": sp, "zero_stage": zero},
        "runtime": {"name": "torchtitan", "tp_replicated_embedding": replicated},
    }
    return parse_scenario(data, "test.yaml")


@pytest.mark.parametrize(("tp", "dp", "zero"), [(4, 1, 0), (2, 1, 0), (4, 2, 3)])
def test_the_whole_table_on_every_rank(tp, dp, zero) -> None:
    """The GPU holding the embedding holds V·h·(1 − 1/tp) more parameters, over the ZeRO-3
    group where it shards them; its parameter bytes grow by as many 16-bit values."""
    whole, split = scenario(True, tp, dp=dp, zero=zero), scenario(False, tp, dp=dp, zero=zero)
    more = VOCAB * HIDDEN - VOCAB * HIDDEN // tp
    assert chunk_param_count(whole, 0, resolve(whole)) - chunk_param_count(
        split, 0, resolve(split)) == more  # fmt: skip

    def params(sc) -> int:
        return dict(estimate_memory(sc).stages[0].memory_bytes)["parameters"]

    assert params(whole) - params(split) == 2 * more // (dp if zero == 3 else 1)


@pytest.mark.parametrize("sp", [True, False])
def test_its_forward_issues_no_collective(monkeypatch, sp) -> None:
    unit = 10**12
    monkeypatch.setattr(comm, "collective_ns", lambda *a, **k: unit)
    for replicated in (True, False):
        sc = scenario(replicated, sp=sp)
        want = (0 if replicated else 1, (2 if replicated else 1) if sp else 0)
        assert tp_edge_collectives(sc, embedding=True, head=False) == want
        ns = comm.tp_edges_ns(sc, resolve(sc), embedding=True, head=False)
        assert tuple(x // unit for x in ns) == want


@pytest.mark.parametrize("replicated", [True, False])
def test_pytorch_issues_and_holds_what_the_model_says(replicated) -> None:
    """DTensor on a fake 4-rank group, the embedding's output into the first block's norm and
    residual: the vocab-parallel embedding reduce-scatters forward and all-gathers back; the
    replicated one all-gathers back twice (the norm's and the residual's Replicate -> Shard(1));
    its weight is 4x the shard."""
    pytest.importorskip("torch")
    from simtrain.torchref.tp_plans import measure_embedding

    got = measure_embedding(replicated, 4, vocab=256, hidden=64)
    sc = scenario(replicated)
    assert (sum(got.forward.values()), sum(got.backward.values())) == tp_edge_collectives(
        sc, embedding=True, head=False)  # fmt: skip
    assert got.backward == {"all_gather": 2 if replicated else 1}
    assert got.saved_bytes == 4 * 256 * 64 // (1 if replicated else 4)


def test_refused_with_tied_embeddings_or_without_tp(tmp_path) -> None:
    """A tied output layer shares the embedding's weight and is vocab-parallel; at tp 1 there
    is nothing to replicate: each is one error naming the key."""
    from simtrain.errors import ConfigError

    data = {
        "name": "embedding", "model": {**TINY, "tied_embeddings": True},
        "hardware": "h100_sxm5_80gb",
        "training": {"seq_len": 16, "global_batch": 4, "micro_batch": 2, "precision": "bf16"},
        "parallelism": {"dp": 1, "tp": 4, "pp": 1, "sequence_parallel": True},
        "runtime": {"name": "torchtitan", "tp_replicated_embedding": True},
    }  # fmt: skip
    with pytest.raises(ConfigError) as e:
        parse_scenario(data, "tied.yaml")
    assert "runtime.tp_replicated_embedding" in str(e.value)
    assert "model.tied_embeddings" in str(e.value)
    import json

    from simtrain.spec.scenario import load_scenario

    data["model"]["tied_embeddings"] = False
    data["parallelism"] = {"dp": 1, "tp": 1, "pp": 1}
    f = tmp_path / "tp1.yaml"
    f.write_text(json.dumps(data))  # (JSON is YAML)
    with pytest.raises(ConfigError) as e:
        load_scenario(str(f))
    assert "runtime.tp_replicated_embedding" in str(e.value) and "tp = 1" in str(e.value)
