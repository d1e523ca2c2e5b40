"""Speed of the memory model (``costs.memory.estimate_memory``) on one core, per scenario.

The planner screens thousands of layouts through it, and a runtime whose reserved figure holds
the row-parallel outputs pending their NCCL reduce-scatter (``nccl_record_streams``: nanotron)
reads each chunk's host and GPU times there too (``costs.chunk_time``). Prints, for each
shipped scenario and for the Ultra-Scale Playbook's 1B model at tp 8 under ``nanotron`` with
the key on and off, the best of ``--repeats`` timings of ``--n`` calls (ms per call): warm (the
same scenario again: its resolved step and block communication cached, as within one layout)
and cold (those caches cleared before each call, as for a planner's next layout).

Run:  python benchmarks/bench_memory.py [--n 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.costs import memory  # noqa: E402
from simtrain.costs.memory import estimate_memory  # noqa: E402
from simtrain.layout import step as layout_step  # noqa: E402
from simtrain.spec.scenario import load_scenario, parse_scenario  # noqa: E402

#: The Ultra-Scale Playbook sweep's 1B model (nanotron scripts/scaling_benchmarks.py).
MODEL_1B = {"layers": 16, "hidden": 2048, "heads": 32, "ffn_hidden": 8192, "vocab": 131072,
            "mlp": "swiglu", "norm": "rmsnorm", "positions": "rotary", "bias": False,
            "tied_embeddings": True, "flash_attention": True, "dropout": 0.0}  # fmt: skip


def playbook_1b(record_streams: bool):  # noqa: ANN201 (a Scenario)
    """The 1B model at tp 8, micro-batch 8, 8 micro-batches, under ``nanotron``."""
    return parse_scenario({
        "name": "bench", "model": MODEL_1B, "hardware": "h100_sxm5_80gb",
        "runtime": {"name": "nanotron", "nccl_record_streams": record_streams},
        "cluster": {"nodes": 1, "gpus_per_node": 8},
        "training": {"seq_len": 4096, "global_batch": 64, "micro_batch": 8,
                     "precision": "bf16_fp32_grads", "optimizer": "adamw",
                     "cross_entropy": "sharded"},
        "parallelism": {"tp": 8, "dp": 1, "sequence_parallel": True},
    }, "bench.yaml")  # fmt: skip


def _clear() -> None:
    memory._block_comm.cache_clear()
    layout_step._resolve.cache_clear()


def ms_per_call(sc, n: int, repeats: int, cold: bool) -> float:  # noqa: ANN001
    estimate_memory(sc)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            if cold:
                _clear()
            estimate_memory(sc)
        best = min(best, (time.perf_counter() - t) / n)
    return 1e3 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cases = [
        (f"nanotron 1B tp 8, nccl_record_streams {on}", playbook_1b(on)) for on in (True, False)
    ]
    cases += [(p.stem, load_scenario(p)) for p in sorted((ROOT / "scenarios").glob("*.yaml"))]
    width = max(len(name) for name, _ in cases)
    print(f"{'scenario':<{width}}  ms per estimate_memory call, warm / cold "
          f"(best of {args.repeats} x {args.n})")  # fmt: skip
    for name, sc in cases:
        warm = ms_per_call(sc, args.n, args.repeats, cold=False)
        cold = ms_per_call(sc, args.n, args.repeats, cold=True)
        print(f"{name:<{width}}  {warm:8.3f} / {cold:8.3f}")


if __name__ == "__main__":
    main()
