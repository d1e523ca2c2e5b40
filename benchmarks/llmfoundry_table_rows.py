"""llm-foundry's benchmark tables beyond the 37 rows in measured/: every row of
scripts/train/benchmarking/README.md put through validate's translation (each as a copy of a
shipped MosaicML record of the same GPU and precision, with the row's model size, sequence
length, GPUs, batch, recompute, throughput and MFU), and the error of simtrain's tokens/s per
table. Nothing is added to measured/ and nothing is fitted: a held-out check. Run:
    python benchmarks/llmfoundry_table_rows.py PATH/TO/llm-foundry/scripts/train/benchmarking/README.md
(mosaicml/llm-foundry 8c8dd48f7 gave, 2026-12-05: H100 BF16 61 rows MAPE 19.7 %, A100 80 GB
amp_bf16 46 rows 16.0 %, A100 40 GB bf16 66 rows 8.7 %, H100 FP8 5 rows 41.9 %.)
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from simtrain.apps.validate.predict import predicted_step_time
from simtrain.apps.validate.records import load_record_files, resolve_paths
from simtrain.apps.validate.translate import translate

#: a table row: Model | SeqLen | # GPUs | GPU | MFU | HFU | Model TFLOP | MicroBatchSize |
#: GradAccum | GlobalBatchSize | S/s | T/s | T/s/GPU | GlobalBatchSize (T) | Precision | MP Mode |
#: Sharding Strategy | Activation Checkpointing | Activation CPUOffload | NumParams
COLUMNS = 20


def table_rows(text: str) -> list[dict]:
    """Every data row of the README's tables, by column."""
    out = []
    for line in text.splitlines():
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) < COLUMNS or not c[1].isdigit():
            continue
        out.append({"size": c[0], "seq": int(c[1]), "gpus": int(c[2]), "gpu": c[3],
                    "mfu": float(c[4]), "mbs": int(c[7]), "ga": int(c[8]), "gbs": int(c[9]),
                    "tps": float(c[11]), "precision": c[14], "ac": c[17] == "True",
                    "params": int(c[19])})  # fmt: skip
    return out


def row_id(r: dict) -> str:
    """The id measured/ gives such a row (mpt_<gpu>_<precision>_<size>_s.._n.._mbs.._ga.._gbs.._ac..)."""
    return (f"mpt_{r['gpu']}_{r['precision']}_{r['size']}_s{r['seq']}_n{r['gpus']}_mbs{r['mbs']}"
            f"_ga{r['ga']}_gbs{r['gbs']}_ac{r['ac']}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("readme")
    args = ap.parse_args()
    shipped = {r.id: r for r in load_record_files(resolve_paths(None)) if r.id.startswith("mpt_")}
    shapes = {r.model["name"].split("-", 1)[1]: r.model for r in shipped.values()}
    errors: dict[str, list[float]] = {}
    with open(args.readme, encoding="utf-8") as fh:
        rows = table_rows(fh.read())
    for r in rows:
        rid = row_id(r)
        group = f"{r['gpu']} {r['precision']}"
        base = next(
            (b for b in shipped.values() if b.id.startswith(f"mpt_{r['gpu']}_{r['precision']}_")),
            None,
        )
        if rid in shipped or base is None or r["size"] not in shapes:
            continue
        model = {**shapes[r["size"]], "seq_len": r["seq"], "params_b": r["params"] / 1e9}
        training = {**base.training, "global_batch": r["gbs"], "micro_batch": r["mbs"],
                    "grad_accum": r["ga"],
                    "recompute": "full (FSDP activation checkpointing)" if r["ac"] else "none"}  # fmt: skip
        rec = replace(base, id=rid, model=model, training=training,
                      parallelism={**base.parallelism, "dp": r["gpus"]},
                      hardware={**base.hardware, "num_gpus": r["gpus"]},
                      measured={"tokens_per_s": r["tps"], "mfu": r["mfu"] / 100})  # fmt: skip
        tr = translate(rec)
        if not hasattr(tr, "scenario"):
            print(f"skipped {rid}: {tr.reason}")
            continue
        predicted = r["gbs"] * r["seq"] / predicted_step_time(tr.scenario)
        errors.setdefault(group, []).append(100 * (predicted / r["tps"] - 1))
    print(f"{len(rows)} rows, {sum(row_id(r) in shipped for r in rows)} in measured/")
    for group, e in sorted(errors.items()):
        print(
            f"{group:24} n {len(e):3}  MAPE {statistics.mean(map(abs, e)):5.1f} %  "
            f"median {statistics.median(e):+5.1f} %  max |e| {max(map(abs, e)):5.1f} %"
        )


if __name__ == "__main__":
    main()
