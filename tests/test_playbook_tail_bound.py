"""benchmarks/playbook_tail_bound.py's figures that runtimes/nanotron.yaml [ppfix] quotes: the two
post-fix pp-32 runs whose split puts the LM head, the fp32 cast and the loss on ranks of their
own ran faster than the network's bound on their own logits traffic (measured / bound 0.63 and
0.73), and the bound is m x the busier direction of the busiest tail rank."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from simtrain.apps.validate.translate import translate

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "playbook_tail_bound.py"


@pytest.mark.parametrize(("rid", "out_ms", "measured_over_bound"), [
    ("usp_8B_n32_dp4_tp2_pp32_mbs1_ga64_z1", 35.90, 0.63),
    ("usp_8B_n32_dp8_tp1_pp32_mbs1_ga32_z1", 70.91, 0.73),
])  # fmt: skip
def test_the_two_pp32_runs_beat_their_bound(published_records: dict, rid: str, out_ms: float,
                                            measured_over_bound: float) -> None:  # fmt: skip
    spec = importlib.util.spec_from_file_location("playbook_tail_bound", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rec = published_records[rid]
    sc = translate(rec).scenario
    rank, out, in_ = mod.tail_bound(sc)
    assert rank == 30 and out == pytest.approx(out_ms, abs=0.01)
    bound_s = sc.num_microbatches * max(out, in_) / 1e3
    measured_s = sc.tokens_per_step / float(rec.measured["tokens_per_s"])
    assert measured_s / bound_s == pytest.approx(measured_over_bound, abs=0.005)
