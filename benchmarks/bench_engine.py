"""Benchmark of the SimPy engine on synthetic 1F1B pipeline task graphs.

Run: ``python benchmarks/bench_engine.py [--repeat N]``. Times are the best of N runs of
``simulate`` alone (graph building is shown separately); "events" is ``events_processed``
(SimPy ``env.step()`` calls); events/s and tasks/s divide by the best wall time.

Each pipeline rank gets a compute stream (F and B in 1F1B order: warm-up forwards, steady
one-forward-one-backward, cool-down backwards) and a p2p stream (RECV_F, SEND_F, RECV_B, SEND_B
in the order the compute stream needs them). F allocates activations that B frees; RECV_F
allocates a receive buffer that F frees. The "+links" case routes every send over a link shared
by 4 neighbouring ranks, which exercises the bandwidth-sharing manager.

The 1F1B ordering is written inline (PipeDream-Flush / Megatron-LM non-interleaved schedule,
Narayanan et al., SC'21, section 2.2) so this file does not depend on ``simtrain.schedules``.
"""

from __future__ import annotations

import argparse
import time

from simtrain.sim.engine import Task, simulate

F_NS = 1_000_000
B_NS = 2_000_000
SEND_NS = 200_000
RECV_NS = 5_000
ACT_BYTES = 256 * 2**20
BUF_BYTES = 16 * 2**20
LINK_BYTES = 16 * 2**20
LINK_BW = 25e9  # bytes/s
LINK_GROUP = 4  # ranks per shared link in the "+links" case


def one_f_one_b(stage: int, pp: int, m: int) -> list[tuple[str, int]]:
    """Compute order of ``stage``: [("F", mb) | ("B", mb)] in 1F1B order."""
    warmup = min(pp - stage - 1, m)
    order = [("F", mb) for mb in range(warmup)]
    for i in range(m - warmup):
        order += [("F", warmup + i), ("B", i)]
    order += [("B", mb) for mb in range(m - warmup, m)]
    return order


def build(pp: int, m: int, links: bool = False) -> list[Task]:
    ids: dict[tuple[str, int, int], int] = {}

    def tid(kind: str, stage: int, mb: int) -> int:
        return ids.setdefault((kind, stage, mb), len(ids))

    tasks: list[Task] = []
    for s in range(pp):
        p2p: list[Task] = []
        for kind, mb in one_f_one_b(s, pp, m):
            label = f"{kind} mb{mb} s{s}"
            if kind == "F":
                deps: tuple[int, ...] = ()
                free: tuple[tuple[str, int], ...] = ()
                if s > 0:
                    p2p.append(_p2p("RECV_F", s, mb, tid, (tid("SEND_F", s - 1, mb),), links))
                    deps = (tid("RECV_F", s, mb),)
                    free = (("buffers", BUF_BYTES),)
                tasks.append(
                    Task(
                        tid("F", s, mb), s, "compute", "F", label, F_NS, deps,
                        alloc=(("activations", ACT_BYTES),), free=free, microbatch=mb, stage=s,
                    )
                )  # fmt: skip
                if s < pp - 1:
                    p2p.append(_p2p("SEND_F", s, mb, tid, (tid("F", s, mb),), links))
            else:
                deps = ()
                if s < pp - 1:
                    p2p.append(_p2p("RECV_B", s, mb, tid, (tid("SEND_B", s + 1, mb),), links))
                    deps = (tid("RECV_B", s, mb),)
                tasks.append(
                    Task(
                        tid("B", s, mb), s, "compute", "B", label, B_NS, deps,
                        free=(("activations", ACT_BYTES),), microbatch=mb, stage=s,
                    )
                )  # fmt: skip
                if s > 0:
                    p2p.append(_p2p("SEND_B", s, mb, tid, (tid("B", s, mb),), links))
        tasks += p2p
    return tasks


def _p2p(kind: str, s: int, mb: int, tid, deps: tuple[int, ...], links: bool) -> Task:
    send = kind.startswith("SEND")
    return Task(
        id=tid(kind, s, mb),
        rank=s,
        stream="p2p",
        kind=kind,
        name=f"{kind} mb{mb} s{s}",
        duration_ns=(SEND_NS if send else RECV_NS) if not (links and send) else 10_000,
        deps=deps,
        alloc=(("buffers", BUF_BYTES),) if kind == "RECV_F" else (),
        microbatch=mb,
        stage=s,
        link=f"ib:{s // LINK_GROUP}" if links and send else None,
        link_bytes=LINK_BYTES if links and send else 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; best is shown")
    args = parser.parse_args()
    cases = [(4, 8, False), (8, 32, False), (16, 64, False), (32, 128, False), (16, 64, True)]
    print(
        f"{'case':<20}{'tasks':>8}{'build s':>9}{'wall s':>9}{'cpu s':>8}{'events':>9}"
        f"{'events/s':>11}{'tasks/s':>10}{'makespan ms':>13}"
    )
    for pp, m, links in cases:
        t0 = time.perf_counter()
        tasks = build(pp, m, links)
        build_s = time.perf_counter() - t0
        init = {s: {"parameters": 2**30} for s in range(pp)}
        bw = {f"ib:{g}": LINK_BW for g in range(pp // LINK_GROUP + 1)} if links else None
        best = best_cpu = float("inf")
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            tl = simulate(tasks, initial_memory=init, link_bandwidth_bytes_per_s=bw)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        name = f"pp={pp},m={m}" + (" +links" if links else "")
        print(
            f"{name:<20}{len(tasks):>8}{build_s:>9.3f}{best:>9.3f}{best_cpu:>8.3f}"
            f"{tl.events_processed:>9}"
            f"{tl.events_processed / best:>11,.0f}{len(tasks) / best:>10,.0f}"
            f"{tl.makespan_ns / 1e6:>13.2f}"
        )


if __name__ == "__main__":
    main()
