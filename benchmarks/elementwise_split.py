"""Element-wise work of a transformer layer: backward time / forward time, measured.

simtrain.costs.compute charges the backward of the element-wise ops (norms, GeLU, softmax, dropout,
residual adds) ``elementwise_backward_factor`` x the forward's bytes (measured here: 1.1 in bf16,
1.25 in fp32 on an H200). This script times the
same ops with PyTorch's own kernels (F.layer_norm, tanh GeLU, masked softmax, dropout) on a
Megatron-style layer's per-GPU shapes, forward alone and forward + backward, and prints the ratio
next to the cost model's byte counts.

Run (CUDA, or CPU with a small shape):
  python benchmarks/elementwise_split.py [--device cuda] [--dtype bf16] [--shape B S H HEADS TP]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.costs.compute import block_elementwise_bytes, elementwise_backward_factor  # noqa: E402
from simtrain.spec.model import ModelSpec  # noqa: E402
from simtrain.spec.scenario import TrainingSpec  # noqa: E402


def run(device: str, dtype_name: str, b: int, s: int, h: int, heads: int, tp: int,
        repeats: int) -> dict:  # fmt: skip
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    g = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*size: int):
        return torch.randn(*size, generator=g).to(dev, dtype).requires_grad_(True)

    def const(*size: int):
        return torch.randn(*size, generator=g).to(dev, dtype)

    hp = heads // tp
    x, attn_out, mlp_out = leaf(b, s, h), leaf(b, s, h), leaf(b, s, h)
    up, scores = leaf(b, s, 4 * h // tp), leaf(b, hp, s, s)
    w1, b1, w2, b2 = leaf(h), leaf(h), leaf(h), leaf(h)
    grads = [const(b, s, h), const(b, hp, s, s), const(b, s, h), const(b, s, 4 * h // tp),
             const(b, s, h)]  # fmt: skip
    mask = torch.ones(s, s, dtype=torch.bool, device=dev).triu(1)
    leaves = (x, attn_out, mlp_out, up, scores, w1, b1, w2, b2)

    def forward():
        for t in leaves:
            t.grad = None
        n1 = F.layer_norm(x, (h,), w1, b1)
        p = torch.softmax((scores * (1.0 / math.sqrt(h // heads))).masked_fill(mask, -1e4), -1)
        p = F.dropout(p, 0.1)  # attention dropout
        x2 = x + F.dropout(attn_out, 0.1)  # hidden dropout + residual
        n2 = F.layer_norm(x2, (h,), w2, b2)
        gl = F.gelu(up, approximate="tanh")
        y = x2 + F.dropout(mlp_out, 0.1)
        return [n1, p, n2, gl, y]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up
        torch.autograd.backward(forward(), grads)
    fwd = [timed(forward) for _ in range(repeats)]
    both = [timed(lambda: torch.autograd.backward(forward(), grads)) for _ in range(repeats)]
    f, fb = statistics.median(fwd), statistics.median(both)
    m = ModelSpec("layer", 1, h, heads, heads, 4 * h, 51200, s, dropout=0.1, flash_attention=False)
    t = TrainingSpec(seq_len=s, global_batch=b, micro_batch=b, precision=dtype_name)
    fb_bytes = block_elementwise_bytes(m, t, tp)
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": dtype_name, "shape": [b, s, h, heads, tp],
        "forward_s": f, "backward_s": fb - f, "backward_over_forward": (fb - f) / f,
        "forward_bytes_per_s": fb_bytes[0] / f,
        "model_backward_over_forward": elementwise_backward_factor(2 if dtype_name != "fp32" else 4),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--shape", type=int, nargs=5, default=[4, 2048, 6144, 64, 8],
                    help="micro-batch, sequence, hidden, heads, tensor-parallel degree "
                    "(default: Korthikanti et al. 2022 Table 4's 22B layer, tp 8)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    r = run(args.device, args.dtype, *args.shape, args.repeats)
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
