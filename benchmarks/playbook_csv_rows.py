"""The Ultra-Scale Playbook sweep's whole CSV, beyond the chart rows in measured/: every run
put through validate's translation as a nanotron record (the chart records' sources and
conventions, the row's model shape, layout, batch and ZeRO stage), and simtrain's error per
group. Nothing is added to measured/ and nothing is fitted: a held-out check.

The CSV is the one the sweep's runs wrote (nanotron's helpers.log_throughput columns, plus
``status`` / ``oom_error`` from each job's log); a copy is in eyao600/Rapid-LLM
(validation_scripts/huggingface_data/bench_final2_mod_add.csv at 9a8d0a10; measured/README.md).
Per run: tokens/s ('tok/s/gpu' x GPUs), the reserved peak ('Mem Res (GB)', GiB: the chart's
"GPU memory"), the allocated peak after the backward ('Mem Alloc (GB)': the optimizer step's),
and the fit verdict (a run that completed fits; status OOM with oom_error true does not;
'Other' failures are left out). Each run under the code it ran: job id >= 14097150 (after the
sweep's "pp fix", scaling_benchmarks.py l.512-518 at e24d2483) main's ``nanotron`` profile,
earlier jobs the bench branch's ``nanotron_bench`` (``--one-runtime`` puts every run on the
source's default). Each run's links are the ones its job measured before training (the
'AllGather / ReduceScatter (GB/s)' columns and their 'Intra-node' ones,
simtrain/apps/validate/job_network.py;
``--no-job-network``: the EFA profile's for every run). Run:
    python benchmarks/playbook_csv_rows.py PATH/TO/bench_final2_mod_add.csv [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from simtrain.apps.validate.job_network import (
    NANOTRON_TEST_BYTES,
    has_ring_test,
    job_hardware,
    measurements,
    read_job_network,
)
from simtrain.apps.validate.measured import compare_record
from simtrain.apps.validate.records import Record, load_record_files, resolve_paths
from simtrain.apps.validate.translate import translate
from simtrain.apps.workers import local_workers
from simtrain.costs.link_fit import measured_time_s
from simtrain.costs.memory import estimate_memory
from simtrain.spec.hardware import load_hardware

#: the sweep's pp fix: its script re-ran the pp > 1 layouts of earlier jobs (e24d2483 l.512-518)
FIX_JOB = 14097150
#: the chart record whose source, notes and conventions every run takes (its shape is replaced)
TEMPLATE = "usp_1B_n1_dp8_tp1_pp1_mbs1_ga32_z1"


#: the columns the script reads
COLUMNS = ("job_id", "status", "oom_error", "dp", "tp", "pp", "mbs", "batch_accum", "zero_stage",
           "hidden_size", "num_layers", "num_heads", "num_kv_heads", "interm_dim", "seq_len",
           "vocab_size", "tok/s/gpu", "Mem Alloc (GB)", "Mem Res (GB)", "AllGather (GB/s)",
           "ReduceScatter (GB/s)", "AllReduce (GB/s)", "AG Intra-node (GB/s)",
           "RS Intra-node (GB/s)", "AR Intra-node (GB/s)")  # fmt: skip
#: the job's own bandwidth tests (nanotron measure_bandwidth: 1 GiB over the job's GPUs and over
#: one node's) ->
#: the record's hardware.network_measured keys (simtrain/apps/validate/job_network.py)
NETWORK_COLUMNS = {"AllGather (GB/s)": "all_gather_busbw_gb_per_s",
                   "ReduceScatter (GB/s)": "reduce_scatter_busbw_gb_per_s",
                   "AllReduce (GB/s)": "all_reduce_busbw_gb_per_s",
                   "AG Intra-node (GB/s)": "intra_node_all_gather_busbw_gb_per_s",
                   "RS Intra-node (GB/s)": "intra_node_reduce_scatter_busbw_gb_per_s",
                   "AR Intra-node (GB/s)": "intra_node_all_reduce_busbw_gb_per_s"}  # fmt: skip


def layout_key(rec: Record) -> tuple:
    """What tells two runs of one job apart: the layout, batch, ZeRO stage and shape."""
    p, t, m = rec.parallelism, rec.training, rec.model
    return (p.get("dp"), p.get("tp"), p.get("pp"), t.get("micro_batch"), t.get("grad_accum"),
            p.get("zero_stage"), m.get("hidden"), m.get("layers"))  # fmt: skip


#: the model keys a record in measured/ must share with its CSV row
SHAPE_KEYS = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "tied_embeddings")


def job_of(rec: Record) -> int:
    """The job id of a record row_record made (its id is ``csv_<job>``)."""
    return int(rec.id.split("_")[1])


def _num(v: str) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def row_record(row: dict[str, str], template: Record, one_runtime: bool,
               job_network: bool = True) -> Record | None:  # fmt: skip
    """A CSV row as a nanotron record (None: a crash that is not out of memory, or a row
    without its shape). ``job_network``: the row's own bandwidth test is the record's
    ``hardware.network_measured`` (the template's is never carried over)."""
    status, oom = row["status"], row["oom_error"] == "True"
    if status not in ("Success", "OOM") or (status == "OOM" and not oom):
        return None
    need = ("dp", "tp", "pp", "mbs", "batch_accum", "zero_stage", "hidden_size", "num_layers",
            "num_heads", "seq_len", "vocab_size")  # fmt: skip
    if any(_num(row[k]) is None for k in need):
        return None
    dp, tp, pp, mbs, acc, z, h, layers, heads, seq, vocab = (int(_num(row[k])) for k in need)
    ffn = int(_num(row["interm_dim"]) or 4 * h)
    kv = int(_num(row["num_kv_heads"]) or heads)  # the script's NUM_KEY_VALUE_HEADS None
    model = {"name": f"nanotron Llama-like h{h} L{layers}", "layers": layers, "hidden": h,
             "heads": heads, "kv_heads": kv, "ffn_hidden": ffn, "seq_len": seq, "vocab": vocab,
             "tied_embeddings": ffn < 10_000}  # scaling_benchmarks.py create_config  # fmt: skip
    training = {**template.training, "global_batch": mbs * acc * dp, "micro_batch": mbs,
                "grad_accum": acc}  # fmt: skip
    # every run: tp_mode REDUCE_SCATTER (sequence parallelism), the 1F1B engine
    parallelism = {**template.parallelism, "tp": tp, "pp": pp, "dp": dp, "zero_stage": z,
                   "schedule": "1f1b" if pp > 1 else "none",
                   "sequence_parallel": True}  # fmt: skip
    hardware = {k: v for k, v in template.hardware.items() if k != "network_measured"}
    hardware["num_gpus"] = dp * tp * pp
    net = {key: v for col, key in NETWORK_COLUMNS.items() if (v := _num(row[col])) and v > 0}
    if job_network and has_ring_test(net):
        hardware["network_measured"] = {**net, "size_bytes": NANOTRON_TEST_BYTES}
    measured: dict[str, object] = {}
    if status == "Success":
        tok = _num(row["tok/s/gpu"])
        if tok:
            measured["tokens_per_s"] = tok * dp * tp * pp
        for key, col in (("peak_mem_gb", "Mem Res (GB)"), ("step_peak_mem_gb", "Mem Alloc (GB)")):
            if (v := _num(row[col])) is not None and v > 0:
                measured[key] = v
    else:
        measured["outcome"] = "oom"
    job = int(_num(row["job_id"]) or 0)
    runtime = "" if one_runtime else ("nanotron" if job >= FIX_JOB else "nanotron_bench")
    return replace(template, id=f"csv_{job}", model=model, training=training,
                   parallelism=parallelism, hardware=hardware, measured=measured,
                   runtime=runtime, notes=f"job {job}")  # fmt: skip


def compare(rec: Record) -> list[tuple[str, str, float, float, float]]:
    """(group, metric, measured, predicted, error %) of one run; [] when it is not expressible.
    A wrong fit verdict adds ("missed", "peak_share", measured fit, predicted fit, the predicted
    peak as a share of the GPU's memory); a run with a reserved peak adds ("held", "pending_bytes",
    0, the row-parallel outputs its reserved figure holds back, 0)."""
    tr = translate(rec)
    if not hasattr(tr, "scenario"):
        return []
    p = rec.parallelism
    after = job_of(rec) >= FIX_JOB
    group = "pp 1" if p["pp"] == 1 else f"pp > 1, {'after' if after else 'before'} the fix"
    out = [(group, c.metric, float(c.measured), float(c.predicted), c.error_pct)
           for c in compare_record(tr)]  # fmt: skip
    rep = estimate_memory(tr.scenario)
    for _g, metric, meas, pred, err in list(out):
        if metric == "fits" and err:
            share = max(s.peak_memory_bytes / s.capacity_bytes for s in rep.gpus)
            out.append(("missed", "peak_share", meas, pred, share))
        if metric == "peak_memory_bytes":
            pending = max(g.pending_collective_bytes for g in rep.gpus)
            out.append(("held", "pending_bytes", 0.0, float(pending), 0.0))
    return out


def print_zero1_lead(recs: list[Record], results: list) -> None:
    """runtimes/nanotron_bench.yaml [z1gap]: the pp-1 runs' tokens/s error by gradient
    accumulation (1, 2, 4, >= 8 micro-batches), and the pp-1 jobs of one layout run at ZeRO-0
    and ZeRO-1 (same shape, dp, tp, micro-batch, accumulation): ZeRO-1's step minus ZeRO-0's,
    measured and simulated, by TP inside a node (tp <= 8) or across nodes."""
    by_ga: dict[int, list[float]] = defaultdict(list)
    steps: dict[tuple, dict[int, tuple[float, float]]] = defaultdict(dict)
    for rec, res in zip(recs, results, strict=True):
        p, t = rec.parallelism, rec.training
        if p["pp"] != 1:
            continue
        for _g, metric, meas, pred, err in res:
            if metric != "tokens_per_s" or not (meas > 0 and pred > 0):
                continue
            by_ga[min(t["grad_accum"], 8)].append(err)
            tokens = t["global_batch"] * rec.model["seq_len"]
            key = (rec.model["hidden"], rec.model["layers"], p["dp"], p["tp"],
                   t["micro_batch"], t["grad_accum"])  # fmt: skip
            steps[key][p["zero_stage"]] = (tokens / meas, tokens / pred)
    if by_ga:
        print("pp 1 tokens/s by gradient accumulation, median error: " + ", ".join(
            f"ga {'>= 8' if ga == 8 else ga} {statistics.median(e):+.1f} % (n {len(e)})"
            for ga, e in sorted(by_ga.items())))  # fmt: skip
    for name, inside in (("tp <= 8", True), ("tp >= 16", False)):
        pairs = [(z[1][0] - z[0][0], z[1][1] - z[0][1]) for k, z in steps.items()
                 if 0 in z and 1 in z and (k[3] <= 8) == inside]  # fmt: skip
        if pairs:
            meas = [m for m, _ in pairs]
            print(f"pp 1 ZeRO-1 minus ZeRO-0 step, {name}: {len(pairs)} pairs, ZeRO-1 slower in "
                  f"{sum(m > 0 for m in meas)}; measured {min(meas):+.3f} .. {max(meas):+.3f} s "
                  f"(median {statistics.median(meas):+.3f}), simulated median "
                  f"{statistics.median(s for _, s in pairs):+.3f} s")  # fmt: skip


#: the node test's all-gather (GB/s) that tells the sweep's two kinds of job apart: 241-243
#: (quartiles) on the slow kind, 263-264 on the other (runtimes/nanotron.yaml [ppfix])
FAST_NODE_AG_GB_PER_S = 250


def print_issue_costs(recs: list[Record]) -> None:
    """The jobs' own tests across nodes, one per job, by how validate reads them
    (``job_network.job_hardware``): slower than the EFA profile's links (NVLink fitted to the
    job's node test) as the host's cost of issuing a collective, else as faster links; per
    node count, the median time per GPU of each (constant for a cost per rank, falling with
    the GPUs for a link). Then by the kind the node test tells (:data:`FAST_NODE_AG_GB_PER_S`):
    the median all-gather bus bandwidth, that x nodes (constant for a cost per rank), and how
    many of the kind validate reads as an issue cost."""
    efa = load_hardware("h100_sxm5_80gb_efa")
    # job -> (read as an issue cost, nodes, test time per GPU, fast kind, all-gather GB/s)
    seen: dict[int, tuple[bool, int, float, bool, float]] = {}
    for rec in recs:
        net = read_job_network(rec.hardware, rec.hardware["num_gpus"])
        if net is None or net.node is None or job_of(rec) in seen:
            continue
        tests = [m for m in measurements(efa, net) if m.gpus > efa.gpus_per_node]
        if not tests:
            continue
        per_gpu = statistics.geometric_mean(measured_time_s(m) for m in tests) / tests[0].gpus
        issue = job_hardware(efa, "nccl", net).collective_issue_us_per_rank > 0
        node_ag = net.node.busbw_bytes_per_s.get("all_gather", 0) / 1e9
        ag = next((m.busbw_bytes_per_s / 1e9 for m in tests if m.op == "all_gather"), 0.0)
        seen[job_of(rec)] = (issue, tests[0].gpus // efa.gpus_per_node, per_gpu,
                             node_ag >= FAST_NODE_AG_GB_PER_S, ag)  # fmt: skip
    for issue in (True, False):
        by_nodes: dict[int, list[float]] = defaultdict(list)
        for read, nodes, per_gpu, _fast, _ag in seen.values():
            if read == issue:
                by_nodes[nodes].append(per_gpu)
        print(f"jobs whose test across nodes ran {'slower' if issue else 'no slower'} than the "
              f"EFA profile's links ({'an issue cost' if issue else 'their links'}): "
              f"{sum(map(len, by_nodes.values()))}; the test's time per GPU, median by nodes: "
              + ", ".join(f"{n} {1e3 * statistics.median(v):.3f} ms (n {len(v)})"
                          for n, v in sorted(by_nodes.items())))  # fmt: skip
    # the kinds by the node test of every job that has one, their medians and their order
    node_tests: dict[int, tuple[float, float | None]] = {}  # job -> node all-gather, all-reduce
    for rec in recs:
        sec = rec.hardware.get("network_measured", {})
        if ag := sec.get("intra_node_all_gather_busbw_gb_per_s"):
            node_tests[job_of(rec)] = (ag, sec.get("intra_node_all_reduce_busbw_gb_per_s"))
    fast_of = {j: ag >= FAST_NODE_AG_GB_PER_S for j, (ag, _ar) in node_tests.items()}
    for fast in (True, False):
        mine = [node_tests[j] for j, f in fast_of.items() if f == fast]
        if not mine:
            continue
        ars = [ar for _ag, ar in mine if ar]
        print(f"node test {'>=' if fast else '<'} {FAST_NODE_AG_GB_PER_S} GB/s: {len(mine)} jobs, "
              f"median all-gather {statistics.median(ag for ag, _ar in mine):.1f}, all-reduce "
              f"{statistics.median(ars) if ars else float('nan'):.1f} GB/s")  # fmt: skip
    # in job order: the leading fast jobs, the span from the first slow job to the last fast
    # one (both kinds), the trailing slow jobs
    jobs = sorted(fast_of)
    order = [fast_of[j] for j in jobs]
    if False in order and True in order:
        first = order.index(False)
        last = len(order) - 1 - order[::-1].index(True)  # the last fast job
        span = order[first : last + 1]
        mixed = (f"{span.count(False)} slow with {span.count(True)} fast among them (jobs "
                 f"{jobs[first]}-{jobs[last]}), " if span else "")  # fmt: skip
        print(f"in job order: the first {first} fast, then {mixed}the last "
              f"{len(order) - last - 1} slow")  # fmt: skip
    for fast in (False, True):
        kind: dict[int, list[tuple[bool, float]]] = defaultdict(list)
        for read, nodes, _per_gpu, is_fast, ag in seen.values():
            if is_fast == fast:
                kind[nodes].append((read, ag))
        print(f"jobs whose node all-gather test is {'>=' if fast else '<'} "
              f"{FAST_NODE_AG_GB_PER_S} GB/s, by nodes: median all-gather GB/s, x nodes, read "
              "as an issue cost: "
              + ", ".join(f"{n} {(a := statistics.median(ag for _r, ag in v)):.1f} x {n} = "
                          f"{a * n:.0f}, {sum(r for r, _ag in v)} of {len(v)}"
                          for n, v in sorted(kind.items())))  # fmt: skip


def print_layer_floors(recs: list[Record], results: list) -> None:
    """What a layer costs per micro-batch, measured (the run's step / (micro-batches x layers
    per stage)), at micro-batch <= 2 (little GPU work to hide a host's), for the runs that do
    not poll (pp 1, and pipelines after the fix), median by tp and by the kind of job its node
    test tells (:data:`FAST_NODE_AG_GB_PER_S`)."""
    floors: dict[tuple[bool, int], list[float]] = defaultdict(list)
    for rec, res in zip(recs, results, strict=True):
        p, t = rec.parallelism, rec.training
        node = rec.hardware.get("network_measured", {}).get("intra_node_all_gather_busbw_gb_per_s")
        if not node or t["micro_batch"] > 2 or (p["pp"] > 1 and job_of(rec) < FIX_JOB):
            continue
        for _g, metric, meas, _pred, _err in res:
            if metric == "tokens_per_s" and meas > 0:
                step = t["global_batch"] * rec.model["seq_len"] / meas
                floors[(node >= FAST_NODE_AG_GB_PER_S, p["tp"])].append(
                    step / (t["grad_accum"] * rec.model["layers"] / p["pp"])
                )
    errors: dict[tuple[bool, str, str], list[float]] = defaultdict(list)
    for rec, res in zip(recs, results, strict=True):
        p = rec.parallelism
        node = rec.hardware.get("network_measured", {}).get("intra_node_all_gather_busbw_gb_per_s")
        if not node or (p["pp"] > 1 and job_of(rec) < FIX_JOB):
            continue
        group = ("pp 1" if p["pp"] == 1 else "pp > 1 after the fix",
                 "tp 1" if p["tp"] == 1 else "tp 2-8" if p["tp"] <= 8 else "tp 16-32")  # fmt: skip
        errors[(node >= FAST_NODE_AG_GB_PER_S, *group)] += [
            err for _g, metric, _m, _p, err in res if metric == "tokens_per_s"
        ]
    for fast in (True, False):
        print(f"tokens/s error, node all-gather {'>=' if fast else '<'} {FAST_NODE_AG_GB_PER_S} "
              "GB/s, median: " + ", ".join(f"{pp} {tp} {statistics.median(v):+.1f} % (n {len(v)})"
                                           for (f, pp, tp), v in sorted(errors.items())
                                           if f == fast and v))  # fmt: skip
    for fast in (True, False):
        print(f"measured time per layer per micro-batch at micro-batch <= 2, pp 1 and post-fix "
              f"pipelines, node all-gather {'>=' if fast else '<'} {FAST_NODE_AG_GB_PER_S} GB/s, "
              "median: "
              + ", ".join(f"tp {tp} {1e3 * statistics.median(v):.1f} ms (n {len(v)})"
                          for (kind, tp), v in sorted(floors.items()) if kind == fast))  # fmt: skip


#: print_two_codes' odd runs: a node all-reduce test under a quarter of the jobs' medians (their
#: kinds' 425 and 458 GB/s), and a reserved peak within 11.2 GiB of the H100's 79.2
SLOW_NODE_AR_GB_PER_S = 100
NEAR_FULL_GIB = 68
#: the CSV columns that tell a job's runs apart: the model shape and the layout the script
#: reads (its ``name`` is not one the script needs)
LAYOUT_COLUMNS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "interm_dim",
                  "vocab_size", "seq_len", "dp", "tp", "pp", "mbs", "batch_accum",
                  "zero_stage")  # fmt: skip


def _tokens_error(rec: Record) -> float | None:
    """simtrain's tokens/s error (%) on one run, or None where it has no tokens/s."""
    return next((err for _g, m, _a, _b, err in compare(rec) if m == "tokens_per_s"), None)


def print_two_codes(recs: list[Record], results: list, rows: list[dict[str, str]],
                    workers: int) -> None:  # fmt: skip
    """The post-fix pipeline runs by the code their time matches: each run simulated again
    under the polling profile (nanotron_bench, the code before the fix) and put with the
    profile whose tokens/s is nearer its own (|log| of the ratio); per side the count, the
    median error under each profile, the measured loss per micro-batch against main's code
    ((measured - simulated step) / micro-batches), the reserved peak's median error (the
    same under both profiles) and how many runs measured an odd node test or a near-full GPU
    (:data:`SLOW_NODE_AR_GB_PER_S`, :data:`NEAR_FULL_GIB`); then the CSV's jobs that logged two
    rows of one layout (runtimes/nanotron.yaml [ppfix], TWO MODES)."""
    post = [(rec, res) for rec, res in zip(recs, results, strict=True)
            if rec.parallelism["pp"] > 1 and job_of(rec) >= FIX_JOB
            and any(m == "tokens_per_s" for _g, m, _a, _b, _e in res)]  # fmt: skip
    if not post:
        return
    polled = [replace(rec, runtime="nanotron_bench") for rec, _res in post]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=local_workers(workers)) as ex:
            bench = list(ex.map(_tokens_error, polled, chunksize=16))
    else:
        bench = [_tokens_error(r) for r in polled]
    sides: dict[bool, list[tuple[float, float, float, float | None]]] = defaultdict(list)
    # per side: runs whose node all-reduce test read below SLOW_NODE_AR_GB_PER_S, and runs
    # whose reserved peak was within NEAR_FULL_GIB of the GPU
    odd: dict[bool, list[int]] = defaultdict(lambda: [0, 0, 0])
    for (rec, res), b_err in zip(post, bench, strict=True):
        d = {m: (meas, pred, err) for _g, m, meas, pred, err in res}
        meas, pred, err = d["tokens_per_s"]
        if b_err is None:
            continue
        tokens = rec.training["global_batch"] * rec.model["seq_len"]
        loss = (tokens / meas - tokens / pred) / rec.training["grad_accum"]
        polls = abs(math.log1p(b_err / 100)) < abs(math.log1p(err / 100))
        res_err = d["peak_memory_bytes"][2] if "peak_memory_bytes" in d else None
        sides[polls].append((err, b_err, loss, res_err))
        node_ar = rec.hardware.get("network_measured", {}).get(
            "intra_node_all_reduce_busbw_gb_per_s", 1e9
        )
        slow_node = node_ar < SLOW_NODE_AR_GB_PER_S
        near_full = float(rec.measured.get("peak_mem_gb", 0)) >= NEAR_FULL_GIB
        odd[polls][0] += slow_node
        odd[polls][1] += near_full
        odd[polls][2] += slow_node or near_full
    for polls, v in sorted(sides.items()):
        q = statistics.quantiles([x[2] for x in v], n=4) if len(v) > 1 else [v[0][2]] * 3
        reserved = [x[3] for x in v if x[3] is not None]
        print(f"post-fix pipelines nearer the {'polling' if polls else 'fixed'} code: {len(v)} of "
              f"{sum(map(len, sides.values()))}; tokens/s median error under main's profile "
              f"{statistics.median(x[0] for x in v):+.1f} %, under nanotron_bench "
              f"{statistics.median(x[1] for x in v):+.1f} %; loss per micro-batch against main's "
              f"code quartiles {' / '.join(f'{x:.2f}' for x in q)} s; reserved peak median "
              f"{f'{statistics.median(reserved):+.1f} %' if reserved else 'none'}; node "
              f"all-reduce test < {SLOW_NODE_AR_GB_PER_S} GB/s: {odd[polls][0]}, reserved >= "
              f"{NEAR_FULL_GIB} GiB: {odd[polls][1]}, either: {odd[polls][2]}")  # fmt: skip
    by_job: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in rows:
        if row["status"] == "Success" and row["tok/s/gpu"]:
            layout = ", ".join(f"{c} {row[c]}" for c in LAYOUT_COLUMNS)
            by_job[(row["job_id"], layout)].append(row["tok/s/gpu"])
    twice = {k: v for k, v in by_job.items() if len(v) > 1}
    print(f"jobs that logged one layout twice: {len(twice)}"
          + "".join(f"; job {j} ({layout}): {' and '.join(v)} tok/s/GPU"
                    for (j, layout), v in sorted(twice.items())))  # fmt: skip


def print_reserved_lead(recs: list[Record], results: list) -> None:
    """The reserved-memory residual (runtimes/nanotron.yaml [gap], [rstr]): at pp 1 and tp > 1,
    the reserved peak's excess over simtrain's in units of two full b·s·h bf16 tensors per
    layer on the rank (each layer's two row-parallel outputs, the NCCL reduce-scatters'
    inputs), median by kind of job, after the modelled pending reduce-scatter inputs
    (costs.memory.pending_reduce_scatter_bytes); the CSV's reserved MAPE; and, on the fast kind's
    runs, the share the model holds some back for and the median held back in those units."""
    ratio: dict[bool, list[float]] = defaultdict(list)
    errors, held = [], []
    for rec, res in zip(recs, results, strict=True):
        p, t, m = rec.parallelism, rec.training, rec.model
        node = rec.hardware.get("network_measured", {}).get("intra_node_all_gather_busbw_gb_per_s")
        lead = bool(node) and p["pp"] == 1 and p["tp"] > 1
        fast = lead and node >= FAST_NODE_AG_GB_PER_S
        unit = 2 * t["micro_batch"] * m["seq_len"] * m["hidden"] * 2 * m["layers"] / p["pp"]
        for _g, metric, meas, pred, err in res:
            if metric == "pending_bytes" and fast:
                held.append(pred / unit)
            if metric != "peak_memory_bytes":
                continue
            if lead:
                ratio[fast].append((meas - pred) / unit)
            errors.append(abs(err))
    for fast, v in sorted(ratio.items(), reverse=True):
        print(f"reserved excess left at pp 1, tp > 1, node all-gather {'>=' if fast else '<'} "
              f"{FAST_NODE_AG_GB_PER_S} GB/s: {statistics.median(v):.2f} x two b.s.h per layer "
              f"(median, n {len(v)})")  # fmt: skip
    if errors:
        some = [h for h in held if h > 0]
        print(
            f"reserved peak MAPE {statistics.fmean(errors):.1f} %; of the fast kind's pp-1 tp > 1 "
            f"runs the model holds back pending reduce-scatter inputs for "
            f"{100 * len(some) / max(len(held), 1):.0f} % of {len(held)}"
            + (f", median {statistics.median(some):.2f} x two b.s.h per layer" if some else "")
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="the sweep's CSV (bench_final2_mod_add.csv)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--one-runtime",
        action="store_true",
        help="every run under the source's default profile (nanotron_bench)",
    )
    ap.add_argument(
        "--no-job-network",
        action="store_true",
        help="every run on the EFA profile's links, not on its job's own bandwidth tests",
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N rows (a quick look)")
    args = ap.parse_args(argv)
    records = {r.id: r for r in load_record_files(resolve_paths(None))}
    template = records[TEMPLATE]
    shipped = {(int(j), *layout_key(r)): r for r in records.values()
               if r.source_key == "nanotron" for j in re.findall(r"job (\d+)", r.notes)}  # fmt: skip
    with open(args.csv, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            print(f"{args.csv}: not the sweep's CSV: no column {', '.join(missing)} "
                  f"(needs {', '.join(COLUMNS)})", file=sys.stderr)  # fmt: skip
            return 2
        rows = list(reader)
    if args.limit:
        rows = rows[: args.limit]
    recs = [
        r
        for row in rows
        if (r := row_record(row, template, args.one_runtime, not args.no_job_network))
    ]
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as ex:
            results = list(ex.map(compare, recs, chunksize=16))
    else:
        results = [compare(r) for r in recs]
    stats: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    # the wrong fit verdicts' predicted peak / GPU memory: (ran out of memory?) -> shares
    missed: dict[bool, list[float]] = defaultdict(list)
    for rec, res in zip(recs, results, strict=True):
        held = "in measured/" if (job_of(rec), *layout_key(rec)) in shipped else "held out"
        for group, metric, meas, _pred, err in res:
            if metric == "peak_share":
                missed[not meas].append(err)
                continue
            if metric == "pending_bytes":  # (print_reserved_lead reads it)
                continue
            for g in (group, "all"):
                stats[(held, g, metric)].append(err)
                stats[("all runs", g, metric)].append(err)
    print(f"{len(rows)} CSV rows, {len(recs)} runs compared (completed or out of memory)")
    # the records in measured/ against their own CSV rows: the shape each was simulated with
    differ = sorted(ship.id for rec in recs
                    if (ship := shipped.get((job_of(rec), *layout_key(rec)))) is not None
                    and any(ship.model.get(k) != rec.model[k] for k in SHAPE_KEYS))  # fmt: skip
    print(f"records in measured/ whose shape differs from their CSV row ({', '.join(SHAPE_KEYS)}): "
          f"{len(differ)}" + (f": {', '.join(differ)}" if differ else ""))  # fmt: skip
    print(f"{'set':<13}{'group':<26}{'metric':<19}{'n':>6}{'MAPE %':>9}{'median %':>10}"
          f"{'|median| %':>11}")  # fmt: skip
    for (held, group, metric), errs in sorted(stats.items()):
        if metric in ("fits",):
            right = sum(e == 0 for e in errs)
            print(
                f"{held:<13}{group:<26}{metric:<19}{len(errs):>6}  {100 * right / len(errs):.1f} % right"
            )
            continue
        if metric not in ("tokens_per_s", "peak_memory_bytes", "step_memory_bytes"):
            continue
        print(f"{held:<13}{group:<26}{metric:<19}{len(errs):>6}"
              f"{statistics.fmean(map(abs, errs)):>9.1f}{statistics.median(errs):>+10.1f}"
              f"{statistics.median(map(abs, errs)):>11.1f}")  # fmt: skip
    # what the post-fix pipeline runs lose against the model, per layer per micro-batch:
    # (measured - simulated step time) / (micro-batches x layers per stage), median per tp
    lost: dict[int, list[float]] = defaultdict(list)
    for rec, res in zip(recs, results, strict=True):
        p, t = rec.parallelism, rec.training
        if p["pp"] == 1 or job_of(rec) < FIX_JOB:
            continue
        for _g, metric, meas, pred, _err in res:
            if metric == "tokens_per_s" and meas > 0 and pred > 0:
                tokens = t["global_batch"] * rec.model["seq_len"]
                per = t["grad_accum"] * rec.model["layers"] / p["pp"]
                lost[p["tp"]].append((tokens / meas - tokens / pred) / per)
    if lost:
        print("pp > 1 after the fix, (measured - simulated step) per layer per micro-batch, "
              "median: " + ", ".join(f"tp {tp} {1e3 * statistics.median(v):+.1f} ms (n {len(v)})"
                                     for tp, v in sorted(lost.items())))  # fmt: skip
    # the reserved peak's miss at pp 1, tp >= 16, by the software the job ran: its node test's
    # all-gather (the kind of job, FAST_NODE_AG_GB_PER_S; runtimes/nanotron.yaml [gap])
    regime: dict[bool, list[float]] = defaultdict(list)
    for rec, res in zip(recs, results, strict=True):
        node_ag = rec.hardware.get("network_measured", {}).get(
            "intra_node_all_gather_busbw_gb_per_s"
        )
        if rec.parallelism["pp"] == 1 and rec.parallelism["tp"] >= 16 and node_ag:
            regime[node_ag >= FAST_NODE_AG_GB_PER_S].extend(err for _g, m, _a, _b, err in res
                                          if m == "peak_memory_bytes")  # fmt: skip
    if regime:
        print("reserved peak at pp 1, tp >= 16, by the job's node all-gather test: "
              + ", ".join(f"{'>=' if hi else '<'} {FAST_NODE_AG_GB_PER_S} GB/s median {statistics.median(v):+.1f} % "
                          f"(n {len(v)})" for hi, v in sorted(regime.items(), reverse=True) if v))  # fmt: skip
    print_issue_costs(recs)
    print_zero1_lead(recs, results)
    print_layer_floors(recs, results)
    print_reserved_lead(recs, results)
    print_two_codes(recs, results, rows, args.workers)
    for oom, shares in sorted(missed.items()):
        q = statistics.quantiles(shares, n=4) if len(shares) > 1 else shares * 3
        print(f"wrong fit verdicts, {'ran out of memory' if oom else 'ran'} where predicted "
              f"{'to fit' if oom else 'not to'}: {len(shares)}; predicted peak / GPU memory "
              f"quartiles {' / '.join(f'{100 * x:.0f}' for x in q)} %")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
