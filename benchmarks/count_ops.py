"""ATen ops one eager training step dispatches: the unit of a host-overhead model.

In eager PyTorch every op costs host time (Python, dispatcher, kernel launch). When the GPU work
of an op is shorter than that, the step is host-bound: measured/simtrain_h200.yaml's
simtrain_h200_tiny_fp32_b4 and simtrain_h200_gpt2_bf16_b8 take 7 x and 3 x their predicted GPU
time, measured/published_runs.yaml's hf_single_gpu_bert_large_fp16 and
hf_single_gpu_bert_large_ga4_gc_fp16 2.5 x and 3.6 x (`simtrain validate`). This script counts the ops of simtrain's reference decoder
(``simtrain.torchref.opcount.count_dispatched_ops``) for a scenario's model and training settings, per
phase and per layer, so that a measured step-time gap can be divided by them.

Run:  python benchmarks/count_ops.py scenarios/seed_1p5b_fp32.yaml [--set key=value ...]
      (counted on the CPU with a short sequence: the counts do not depend on shapes)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.spec.scenario import load_scenario  # noqa: E402
from simtrain.torchref.opcount import count_dispatched_ops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    sc = load_scenario(args.scenario, overrides=args.overrides)
    m, t = sc.model, sc.training
    # Op counts do not depend on sizes: count on a narrow copy of the model, one short sequence.
    small = replace(m, hidden=64, heads=4, kv_heads=4 if m.kv_heads == m.heads else 2,
                    ffn_hidden=256, vocab=512, max_positions=64)  # fmt: skip
    tt = replace(t, seq_len=32, micro_batch=1, global_batch=1)
    one = count_dispatched_ops(replace(small, layers=1), tt)
    two = count_dispatched_ops(replace(small, layers=2), tt)
    full = count_dispatched_ops(small, tt)
    print(f"{sc.name}: {m.layers} layers, {t.precision}, recompute {t.recompute}, "
          f"{t.optimizer}, cross_entropy {t.cross_entropy}")  # fmt: skip
    print(f"{'phase':<10}{'ops':>9}{'non-view':>10}{'per layer':>11}{'non-view':>10}")
    for phase in ("forward", "backward", "optimizer"):
        per = getattr(two, phase) - getattr(one, phase)
        per_k = getattr(two, phase + "_kernels") - getattr(one, phase + "_kernels")
        print(f"{phase:<10}{getattr(full, phase):>9,}{getattr(full, phase + '_kernels'):>10,}"
              f"{per:>11,}{per_k:>10,}")  # fmt: skip
    print(f"{'step':<10}{full.total:>9,}{full.total_kernels:>10,}")
    print("(optimizer counted on the CPU: CUDA's foreach kernels fuse its per-tensor ops)")


if __name__ == "__main__":
    main()
