"""Two PyTorch DTensor tensor-parallel plans of a Llama block, run on a fake process group to
count the collectives they issue and the bytes autograd saves (runtime
``tp_input_redistribution``: ``costs.compute.column_linears``, ``costs.activations``).

* ``per_block``: torchtitan's plan (9dec370a torchtitan/parallelisms/parallelize_llama.py
  l.172-192): ``PrepareModuleInput`` redistributes the attention's and the feed-forward's input
  to Replicate once, the projections are plain ``ColwiseParallel``.
* ``per_linear``: KempnerForge's (distributed/tensor_parallel.py l.59-78 at 01b461a7): q, k, v,
  gate and up each ``ColwiseParallel(input_layouts=Shard(1))`` (with sequence parallelism;
  ``Replicate()`` without), no ``PrepareModuleInput``.

The fake process group (``torch.testing._internal.distributed.fake_pg``) issues every
collective through ``c10d_functional`` without moving data; ``CommDebugMode`` counts them. No
GPU and no second process are needed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.testing._internal.distributed.fake_pg import FakeStore

PLANS = ("per_block", "per_linear")
COLUMN_LINEARS = ("attention.q", "attention.k", "attention.v", "mlp.gate", "mlp.up")


class _Attention(nn.Module):
    """q, k, v and the output projection around a causal SDPA (MHA)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (p(x).view(b, s, -1, x.shape[-1] // self.heads).transpose(1, 2)
                   for p in (self.q, self.k, self.v))  # fmt: skip
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(b, s, -1))


class _MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) · up(x))."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(hidden, ffn, bias=False), nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaBlock(nn.Module):
    """A pre-norm Llama block (RMSNorm, attention, RMSNorm, SwiGLU MLP)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention_norm, self.ffn_norm = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.attention, self.mlp = _Attention(hidden, heads), _MLP(hidden, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.ffn_norm(x))


def tp_plan(plan: str, sequence_parallel: bool) -> dict:
    """The ``parallelize_module`` plan of :class:`LlamaBlock` (``plan`` in :data:`PLANS`)."""
    if plan not in PLANS:
        raise ValueError(f"unknown TP plan {plan!r}: {' | '.join(PLANS)}")
    seq = Shard(1) if sequence_parallel else Replicate()
    out: dict = {"attention.o": RowwiseParallel(output_layouts=seq),
                 "mlp.down": RowwiseParallel(output_layouts=seq)}  # fmt: skip
    if sequence_parallel:
        out |= {"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel()}
    for name in COLUMN_LINEARS:
        out[name] = (
            ColwiseParallel(input_layouts=seq) if plan == "per_linear" else ColwiseParallel()
        )
    if plan == "per_block":
        for name in ("attention", "mlp"):
            out[name] = PrepareModuleInput(
                input_layouts=(seq,), desired_input_layouts=(Replicate(),)
            )
    return out


@dataclass(frozen=True)
class BlockComm:
    """What one forward and backward of a TP block issued and saved: collectives by kind
    (``all_gather``, ``reduce_scatter``, ``all_reduce``) and the bytes of the distinct storages
    autograd saved during the forward."""

    forward: dict[str, int]
    backward: dict[str, int]
    saved_bytes: int


#: The ``c10d_functional`` ops counted, by the name :class:`BlockComm` files them under.
_COLLECTIVES = {"all_gather_into_tensor": "all_gather", "reduce_scatter_tensor": "reduce_scatter",
                "all_reduce": "all_reduce"}  # fmt: skip


def _counts(mode: CommDebugMode) -> dict[str, int]:
    out: dict[str, int] = {}
    for op, n in mode.get_comm_counts().items():
        key = _COLLECTIVES.get(str(op).rsplit(".", 1)[-1], str(op))
        out[key] = out.get(key, 0) + n
    return out


@contextmanager
def _fake_group(tp: int) -> Iterator[DeviceMesh]:
    """A 1-D mesh of ``tp`` ranks on PyTorch's fake process group (the default group,
    destroyed on exit)."""
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=tp)
    try:
        yield init_device_mesh("cpu", (tp,))
    finally:
        dist.destroy_process_group()


def measure_block(plan: str, tp: int, sequence_parallel: bool, micro_batch: int = 2,
                  seq_len: int = 16, hidden: int = 64, heads: int = 4,
                  ffn: int = 128) -> BlockComm:  # fmt: skip
    """Run one bf16 forward and backward of a :class:`LlamaBlock` under ``plan`` over a fake
    ``tp``-rank group and count (:class:`BlockComm`). Initialises and destroys the default
    process group."""
    with _fake_group(tp) as mesh:
        torch.manual_seed(0)
        block = parallelize_module(LlamaBlock(hidden, heads, ffn).to(torch.bfloat16), mesh,
                                   tp_plan(plan, sequence_parallel))  # fmt: skip
        s = seq_len // tp if sequence_parallel else seq_len
        x = torch.randn(micro_batch, s, hidden, dtype=torch.bfloat16, requires_grad=True)
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            local = t._local_tensor if isinstance(t, DTensor) else t
            st = local.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
            return t

        forward = CommDebugMode()
        with forward, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = block(x)
        backward = CommDebugMode()
        with backward:
            y.float().sum().backward()
        # the block's input is the checkpoint any recompute keeps, not counted as saved
        storages.pop(x.untyped_storage().data_ptr(), None)
        return BlockComm(_counts(forward), _counts(backward), sum(storages.values()))


class _EmbeddingStem(nn.Module):
    """The token embedding and what the first block does with its output: its norm (where a
    sequence-parallel block takes its input) and its residual add (a branch's output, here the
    norm's, added to it)."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.token_embedding, self.norm = nn.Embedding(vocab, hidden), nn.RMSNorm(hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens)
        h = self.norm(x)
        if isinstance(h, DTensor) and not isinstance(x, DTensor):
            h = h.to_local()  # torchtitan: the sharded residual stream is a local tensor
        return x + h  # KempnerForge: the Replicate output plus a Shard(1) branch


def measure_embedding(replicated: bool, tp: int, micro_batch: int = 2, seq_len: int = 16,
                      vocab: int = 256, hidden: int = 64) -> BlockComm:  # fmt: skip
    """One forward and backward of a token embedding feeding a SequenceParallel norm over a
    fake ``tp``-rank group: torchtitan's vocab-parallel embedding (``RowwiseParallel(
    input_layouts=Replicate(), output_layouts=Shard(1))``, 9dec370a parallelize_llama.py) or
    KempnerForge's ``replicated`` one (the whole table, its output wrapped as a Replicate
    DTensor: distributed/tensor_parallel.py l.122-132 at 01b461a7). ``saved_bytes``: the
    embedding weight's local bytes."""
    with _fake_group(tp) as mesh:
        torch.manual_seed(0)
        stem = _EmbeddingStem(vocab, hidden)
        if replicated:
            stem.token_embedding.register_forward_hook(
                lambda _m, _i, out: DTensor.from_local(out, mesh, [Replicate()])
            )
            plan: dict = {"norm": SequenceParallel()}
        else:
            plan = {"token_embedding": RowwiseParallel(input_layouts=Replicate(),
                                                       output_layouts=Shard(1)),
                    "norm": SequenceParallel()}  # fmt: skip
        stem = parallelize_module(stem, mesh, plan)
        tokens = torch.randint(0, vocab, (micro_batch, seq_len))
        forward = CommDebugMode()
        with forward:
            y = stem(tokens)
        backward = CommDebugMode()
        with backward, warnings.catch_warnings():
            # (the norm's input, the embedding's output, is what needs a gradient here)
            warnings.filterwarnings("ignore", "Full backward hook is firing")
            (y.to_local() if isinstance(y, DTensor) else y).float().sum().backward()
        w = stem.token_embedding.weight
        local = w.to_local() if isinstance(w, DTensor) else w
        return BlockComm(_counts(forward), _counts(backward), local.numel() * local.element_size())


def measure_block_compiled(plan: str, tp: int, micro_batch: int = 2, seq_len: int = 16,
                           hidden: int = 64, heads: int = 4, ffn: int = 128) -> BlockComm:  # fmt: skip
    """The collectives of :class:`LlamaBlock` under ``plan`` with sequence parallelism as
    torch.compile's AOT autograd leaves them: the joint graph split by the min-cut partitioner,
    which runs ``fx_graph_cse`` first (torch 2.13 ``_functorch/partitioners.py``), counted in
    the forward and backward graphs it hands to the compilers (identity compilers: no
    inductor). ``saved_bytes`` 0 (not measured here). Initialises and destroys the default
    process group."""
    import collections

    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    graphs: dict[str, dict[str, int]] = {}

    def counting(which: str):  # noqa: ANN202
        def compiler(gm: torch.fx.GraphModule, _example: object):  # noqa: ANN202
            found = collections.Counter()
            for node in gm.graph.nodes:
                op = str(node.target).split(".")
                if len(op) > 1 and op[0] == "_c10d_functional" and op[1] in _COLLECTIVES:
                    found[_COLLECTIVES[op[1]]] += 1
            graphs[which] = dict(found)
            return gm.forward

        return compiler

    with _fake_group(tp) as mesh:
        torch.manual_seed(0)
        block = parallelize_module(LlamaBlock(hidden, heads, ffn), mesh, tp_plan(plan, True))
        backend = aot_autograd(fw_compiler=counting("forward"), bw_compiler=counting("backward"),
                               partition_fn=min_cut_rematerialization_partition)  # fmt: skip
        x = torch.randn(micro_batch, seq_len // tp, hidden, requires_grad=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = torch.compile(block, backend=backend)(x)
                (y.to_local() if isinstance(y, DTensor) else y).sum().backward()
        finally:
            torch._dynamo.reset()
        return BlockComm(graphs.get("forward", {}), graphs.get("backward", {}), 0)


def measure_shard_copies(plan: str, tp: int, micro_batch: int = 2, seq_len: int = 16,
                         hidden: int = 64, heads: int = 4,
                         ffn: int = 128) -> tuple[int, int]:  # fmt: skip
    """(forward, backward) bytes the ``aten.cat`` calls of one bf16 :class:`LlamaBlock` under
    ``plan`` with sequence parallelism write, counted with a ``TorchDispatchMode`` over a fake
    ``tp``-rank group: the copies DTensor's functional collectives make around each
    all-gather from and reduce-scatter to Shard(1) (runtime ``tp_shard_copies``,
    ``costs.compute.tp_shard_copy_bytes``, which prices a read and a write of each)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Cats(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.cat.default:
                self.bytes += out.numel() * out.element_size()
            return out

    with _fake_group(tp) as mesh:
        torch.manual_seed(0)
        block = parallelize_module(LlamaBlock(hidden, heads, ffn).to(torch.bfloat16), mesh,
                                   tp_plan(plan, True))  # fmt: skip
        x = torch.randn(micro_batch, seq_len // tp, hidden, dtype=torch.bfloat16,
                        requires_grad=True)  # fmt: skip
        forward, backward = _Cats(), _Cats()
        with forward:
            y = block(x)
        with backward:
            y.float().sum().backward()
        return forward.bytes, backward.bytes
