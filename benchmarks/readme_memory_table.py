"""Print README's "memory model against PyTorch" table: each case measured by the PyTorch
reference (simtrain.torchref, one CPU step, torch 2.13) beside simtrain's estimate of the same
model on one GPU (saved activations, and the step's peak less the CUDA context).

    python benchmarks/readme_memory_table.py
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simtrain.spec.scenario import PeftSpec, TrainingSpec  # noqa: E402
from simtrain.torchref.measure import measure_step  # noqa: E402
from simtrain.torchref.pairs import GPT_TINY, LLAMA_TINY, estimate_stage  # noqa: E402

GPT = replace(GPT_TINY, dropout=0.1)
ROWS = [
    ("GPT fp32, math attention, dropout 0.1", GPT, "fp32", False, "none", "none", "adamw"),
    ("GPT fp32, SDPA", GPT, "fp32", True, "none", "none", "adamw"),
    ("GPT bf16 autocast (amp_bf16), SDPA", GPT, "amp_bf16", True, "none", "none", "adamw"),
    ("GPT bf16 + fp32 master", GPT, "bf16", True, "none", "none", "adamw"),
    ("GPT fp32, full checkpointing", GPT, "fp32", True, "full", "none", "adamw"),
    ("GPT fp32, full checkpointing + LoRA (q, v)", GPT, "fp32", True, "full", "lora", "adamw"),
    ("GPT bf16 autocast, full checkpointing", GPT, "amp_bf16", True, "full", "none", "adamw"),
    ("GPT fp32, LoRA (q, v)", GPT, "fp32", True, "none", "lora", "adamw"),
    ("GPT fp32, linear probing", GPT, "fp32", True, "none", "linear_probe", "adamw"),
    ("Llama bf16 + LoRA", LLAMA_TINY, "bf16", True, "none", "lora", "adamw"),
    ("Llama fp32, full checkpointing, SGD", LLAMA_TINY, "fp32", True, "full", "none", "sgd"),
]


def pct(predicted: int, measured: int) -> str:
    return f"{100 * (predicted / measured - 1):+.1f} %".replace("-", "−")


def main() -> None:
    for name, m, prec, flash, rec, peft, opt in ROWS:
        spec = replace(m, flash_attention=flash, dropout=m.dropout if not flash else 0.0)
        t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=prec,
                         optimizer=opt, recompute=rec, peft=PeftSpec(method=peft))  # fmt: skip
        measured = measure_step(spec, t, steps=1)
        st = estimate_stage(spec, t)
        c = dict(st.memory_bytes)
        ws = max((b for _, b in st.recompute_working_set_bytes), default=0)
        saved, peak = c["activations"] - ws, st.peak_memory_bytes - c["cuda_context"]
        print(f"| {name} | {measured.activation_bytes:,} / {saved:,} "
              f"({pct(saved, measured.activation_bytes)}) | {measured.peak_bytes:,} / {peak:,} "
              f"({pct(peak, measured.peak_bytes)}) |")  # fmt: skip


if __name__ == "__main__":
    main()
