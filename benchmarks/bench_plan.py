"""Speed of `simtrain plan` on one core: the closed-form pre-screen and the full simulations.

Prints
1. pre-screen layouts/s for GPT-3 175B on 1,024 A100s (every layout of that plan): the whole
   per-layout screen (layout checks + memory model + closed-form estimate), and the closed-form
   estimate alone (target >= 1,000 layouts/s);
2. the same for random chunks of the full plans/gpt3_175b.yaml search (64-1,024 GPUs, two
   hardware profiles), each chunk in the planner's cache-friendly order;
3. full simulations/s (``simulate_scenario(detail=False)``, as the planner runs them) of the
   best 1,024-GPU candidates (target >= 20/s):
   on one core (best of 3, wall and CPU time), through the planner's process pool (all cores),
   and where a simulation's time goes (cProfile, own time by module).

Run:  python benchmarks/bench_plan.py [--sims 8] [--sample 3000]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from collections import defaultdict
from pathlib import Path

from simtrain.apps.plan import (
    LocalExecutor,
    build_context,
    closed_form_step_s,
    enumerate_layouts,
    layout_scenario,
    load_plan,
    memory_check,
    parse_plan,
    scenario_data,
    screen_layout,
    select_candidates,
    simulate_layout,
)
from simtrain.apps.plan.search import _chunks
from simtrain.apps.simulate import simulate_scenario
from simtrain.errors import ConfigError
from simtrain.spec.scenario import parse_scenario
from simtrain.spec.yamlfile import load_yaml

ROOT = Path(__file__).resolve().parent.parent


def screen_rate(plan, layouts, label: str) -> list:
    """Screen ``layouts`` in the planner's order (``plan._chunks``), timing each piece."""
    ctx = build_context(plan)
    order = [lay for chunk in _chunks(layouts, 256) for lay in chunk]
    t0 = time.perf_counter()
    rows = [screen_layout(ctx, lay) for lay in order]
    dt = time.perf_counter() - t0
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r.status] += 1
    print(f"{label}: {len(rows):,} layouts in {dt:.2f} s = {len(rows) / dt:,.0f} layouts/s "
          f"({dict(counts)})")  # fmt: skip
    # The pieces, layout by layout in the same order (so the schedule cache behaves the same).
    t_build = t_mem = t_cf = 0.0
    n_sc = n_fit = 0
    for lay in order:
        t0 = time.perf_counter()
        try:
            sc = layout_scenario(ctx.bases[(lay.hardware, lay.global_batch)], lay, ctx.file)
        except ConfigError:
            t_build += time.perf_counter() - t0
            continue
        t1 = time.perf_counter()
        stages = memory_check(sc)
        t2 = time.perf_counter()
        t_build += t1 - t0
        t_mem += t2 - t1
        n_sc += 1
        if all(s.fits for s in stages):
            closed_form_step_s(sc, stages)
            t_cf += time.perf_counter() - t2
            n_fit += 1
    print(f"  build + check_layout {len(order) / t_build:>10,.0f} layouts/s")
    print(f"  memory model         {n_sc / t_mem:>10,.0f} layouts/s "
          f"(stage_memory on the first and last stage)")  # fmt: skip
    if n_fit:
        print(f"  closed-form estimate {n_fit / t_cf:>10,.0f} layouts/s (the {n_fit:,} that fit)")
    return rows


def simulation_rate(plan, rows, n_sims: int) -> tuple[list, list]:
    """Simulate the closed-form top ``n_sims`` as the planner does, one core, best of 3."""
    cands = select_candidates(rows, "time", n_sims)[:n_sims]
    scs = [parse_scenario(scenario_data(plan, r.layout), "bench", ROOT) for r in cands]
    walls, cpus = [], []
    for sc in scs:
        best_wall = best_cpu = float("inf")
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            res = simulate_scenario(sc, detail=False)  # as the planner runs it
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        walls.append(best_wall)
        cpus.append(best_cpu)
        p = sc.parallelism
        print(f"  tp {p.tp} pp {p.pp} dp {p.dp} {p.schedule:<11} m {sc.num_microbatches:>4} "
              f"{len(res.timeline.spans):>7,} tasks {res.timeline.events_processed:>8,} events "
              f"{best_wall:7.3f} s wall {best_cpu:7.3f} s CPU")  # fmt: skip
    n = len(walls)
    print(f"  one core: {n / sum(cpus):.2f} simulations/s by CPU time, {n / sum(walls):.2f} by wall "
          f"time (mean {sum(cpus) / n:.3f} s CPU each)")  # fmt: skip
    return scs, cpus


def pool_rate(plan, rows, n_sims: int) -> None:
    """The planner's own path: scenario mappings through the process pool (parse + simulate)."""
    cands = select_candidates(rows, "time", n_sims)[:n_sims]
    ex = LocalExecutor()  # its workers: the CPUs this process may run on
    workers = ex.workers
    items = [(scenario_data(plan, r.layout), plan.file, str(ROOT)) for r in cands] * 2
    list(ex.map_unordered(simulate_layout, items[:workers]))  # start the workers
    t0 = time.perf_counter()
    list(ex.map_unordered(simulate_layout, items))
    dt = time.perf_counter() - t0
    ex.close()
    print(
        f"  planner pool, {workers} workers: {len(items)} simulations in {dt:.2f} s = "
        f"{len(items) / dt:.2f} simulations/s (wall)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=8, help="1,024-GPU layouts to simulate")
    ap.add_argument("--sample", type=int, default=3000, help="layouts sampled from the full plan")
    args = ap.parse_args()

    data = load_yaml(ROOT / "plans" / "gpt3_175b.yaml")
    data["hardware"] = [{"name": "a100_sxm4_80gb", "price_per_gpu_hour": 2.0}]
    data["gpus"] = 1024
    plan_1024 = parse_plan(data, "gpt3_1024", ROOT)
    layouts = enumerate_layouts(plan_1024, 96, 96)
    print("1. pre-screen, one core")
    rows = screen_rate(plan_1024, layouts, "GPT-3 175B, 1,024 A100s, every layout")

    full = load_plan(ROOT / "plans" / "gpt3_175b.yaml")
    all_layouts = enumerate_layouts(full, 96, 96)
    chunks = _chunks(all_layouts, 256)
    picked = random.Random(0).sample(chunks, min(max(args.sample // 256, 1), len(chunks)))
    sample = [lay for c in picked for lay in c]
    print(f"\n2. plans/gpt3_175b.yaml: {len(all_layouts):,} layouts in all")
    screen_rate(full, sample, f"{len(picked)} random chunks of the planner's order")

    print(f"\n3. full simulations of 1,024-GPU layouts (the closed-form top {args.sims}), one core"
          " (best of 3; CPU = this process's CPU time, the figure on an idle core)")  # fmt: skip
    print("a) plans/gpt3_175b.yaml at 1,024 A100s (every option)")
    scs, cpus = simulation_rate(plan_1024, rows, args.sims)
    pool_rate(plan_1024, rows, args.sims)
    old = load_plan(ROOT / "plans" / "gpt3_175b_megatron2021.yaml")
    print("b) plans/gpt3_175b_megatron2021.yaml (Megatron-LM 2021 options: m = 48-192, "
          "interleaved)")  # fmt: skip
    ctx = build_context(old)
    old_rows = [screen_layout(ctx, lay) for lay in enumerate_layouts(old, 96, 96)]
    simulation_rate(old, old_rows, args.sims)
    pool_rate(old, old_rows, args.sims)

    # Where the time goes: own time by module for the slowest candidate.
    sc = scs[max(range(len(cpus)), key=cpus.__getitem__)]
    prof = cProfile.Profile()
    prof.enable()
    simulate_scenario(sc, detail=False)
    prof.disable()
    st = pstats.Stats(prof)
    by_module: dict[str, float] = defaultdict(float)
    for (file, _line, _fn), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        name = Path(file).name if "simtrain" in file else (
            "simpy" if "simpy" in file else ("python stdlib" if file.startswith(("/", "<")) else file)
        )  # fmt: skip
        by_module[name] += tt
    tot = sum(by_module.values())
    print("  profile of the slowest (own time by module, cProfile):")
    for name, tt in sorted(by_module.items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {name:<22}{100 * tt / tot:5.1f} %")


if __name__ == "__main__":
    main()
