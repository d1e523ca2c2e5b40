"""Wall time of `simulate_scenario` for 8 to 16,384 GPUs (scale by symmetry: one GPU per stage).

Prints, per case: GPUs, layout, micro-batches, engine tasks, SimPy events, wall time of the
whole simulation (memory model + lowering + engine + metrics) and events/s. Run:
    python benchmarks/bench_simulation.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from simtrain.apps.simulate import simulate_scenario
from simtrain.spec.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    ("8 GPUs: GPT-2 XL, PP 8, GPipe", "scenarios/gpipe_8gpu.yaml", []),
    ("64 GPUs: Llama-2 13B ZeRO-3", "scenarios/zero3_64gpu.yaml", []),
    (
        "1,024 GPUs: GPT-3 175B, TP 8 PP 16 DP 8, 1F1B, m=192",
        "scenarios/gpt3_175b_1024gpu.yaml",
        [],
    ),
    (
        "1,024 GPUs, as above, runtime megatron_core (host stream, blocking p2p, NCCL choice)",
        "scenarios/gpt3_175b_1024gpu.yaml",
        ["runtime=megatron_core"],
    ),
    (
        "1,024 GPUs, as above, runtime nanotron_bench (host polls every metadata message)",
        "scenarios/gpt3_175b_1024gpu.yaml",
        ["runtime=nanotron_bench"],
    ),
    (
        "16,384 GPUs: GPT-3 175B, TP 8 PP 16 DP 128, 1F1B, m=64",
        "scenarios/gpt3_175b_1024gpu.yaml",
        [
            "cluster.nodes=2048",
            "parallelism.dp=128",
            "training.global_batch=8192",
        ],
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'case':<58}{'tasks':>8}{'events':>9}{'wall s':>9}{'events/s':>11}")
    for label, path, overrides in CASES:
        sc = load_scenario(ROOT / path, overrides)
        best = float("inf")
        res = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = simulate_scenario(sc)
            best = min(best, time.perf_counter() - t0)
        assert res is not None
        tasks = len(res.timeline.spans)
        ev = res.timeline.events_processed
        print(f"{label:<58}{tasks:>8,}{ev:>9,}{best:>9.3f}{ev / best:>11,.0f}")


if __name__ == "__main__":
    main()
