"""Pass 3 of lowering: every transfer that leaves the node goes on its GPU's NIC, a link the
engine shares between overlapping transfers (pipeline sends, DP and ZeRO collectives,
cross-node TP).

Each such task keeps its latency as a fixed part and turns the rest into bytes at the NIC's
bandwidth, so a transfer alone takes exactly its alpha-beta time and overlapping ones slow each
other down (the engine's processor-sharing links)."""

from __future__ import annotations

from simtrain.sim.engine import Task
from simtrain.sim.lowering.ir import NicPlan


def share_nics(tasks: list[Task], plan: NicPlan) -> tuple[list[Task], dict[str, float]]:
    """(tasks, link name -> bandwidth in bytes/s)."""
    bw = plan.bandwidth_bytes_per_s
    links: dict[str, float] = {}
    out = []
    for t in tasks:
        # the "tp" stream's spans (passes.tp_overlap_span_pass) show collectives already
        # priced as hidden under the GEMMs: they take no NIC share (as before they were drawn)
        if t.stream in ("compute", "tp") or t.duration_ns == 0:
            out.append(t)
            continue
        cross, lat_s = plan.crossing(t.kind, t.stage)
        if not cross:
            out.append(t)
            continue
        lat_ns = min(round(lat_s * 1e9), t.duration_ns)
        name = f"nic:{t.rank}"
        links[name] = bw
        nbytes = round((t.duration_ns - lat_ns) * bw / 1e9)
        out.append(t._replace(duration_ns=lat_ns, link=name, link_bytes=nbytes))
    return out, links
