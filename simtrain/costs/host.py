"""Host (CPU) time of issuing a micro-batch's kernels in eager PyTorch.

In eager mode every ATen op costs host time (Python, the dispatcher, the kernel launch) before
its kernel can run. The GPU runs behind the host; when an action's kernels are shorter than the
host time of issuing them, the GPU waits for the host and the action takes the host's time
(``sim.lowering.passes.host_pass`` runs this on a per-rank "host" stream). A runtime that
replays CUDA graphs pays none of it (``spec.runtime.RuntimeProfile.host_s_per_op``).

Host time of an action = dispatched ops × the runtime's host seconds per op. The op counts are
those of simtrain's reference decoder block (``simtrain.torchref``), counted with
``torch.utils._python_dispatch.TorchDispatchMode`` by ``benchmarks/count_ops.py`` (every op,
views included: a view costs host time but launches no kernel), per layer and micro-batch;
``tests/test_host.py`` recounts them with torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.costs.compute import fused_linear_names
from simtrain.costs.data_parallel import is_data_parallel
from simtrain.costs.params import embedding_param_tensors, head_param_tensors, layer_param_tensors
from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import Scenario


@dataclass(frozen=True, slots=True)
class LayerOps:
    """Dispatched ATen ops of one decoder block for one micro-batch."""

    forward: int
    backward: int  # without recompute
    recompute_full: int  # extra backward ops under full recompute (the replayed forward)


#: (mlp, flash attention) -> ops per block, counted by benchmarks/count_ops.py on
#: scenarios/3d_128gpu.yaml (torch 2.13, CPU; counts do not depend on sizes or device):
#: gpt3-13b (GeLU, LayerNorm) and llama3-8b (SwiGLU, RMSNorm, rotary) presets, recompute none
#: and full; the ReLU and squared-ReLU blocks on gpt3-13b's architecture with that MLP
#: (count_dispatched_ops, torch 2.13: ReLU's saved output adds a detach; squared ReLU runs relu
#: and pow, and pow, mul, mul and threshold_backward backward). Selective recompute replays
#: only the attention core (a handful of ops): counted as none. tests/test_runtime.py recounts
#: every entry.
LAYER_OPS: dict[tuple[str, bool], LayerOps] = {
    ("gelu", True): LayerOps(forward=61, backward=129, recompute_full=98),
    ("gelu", False): LayerOps(forward=77, backward=148, recompute_full=116),
    ("swiglu", True): LayerOps(forward=72, backward=127, recompute_full=117),
    ("swiglu", False): LayerOps(forward=96, backward=151, recompute_full=143),
    ("relu", True): LayerOps(forward=62, backward=130, recompute_full=97),
    ("relu", False): LayerOps(forward=78, backward=149, recompute_full=115),
    ("relu2", True): LayerOps(forward=63, backward=133, recompute_full=100),
    ("relu2", False): LayerOps(forward=79, backward=152, recompute_full=118),
}


def layer_ops(m: ModelSpec) -> LayerOps:
    """Ops of one block of ``m`` (its MLP kind, with or without flash attention)."""
    return LAYER_OPS[(m.mlp, m.flash_attention)]


def action_host_ns(sc: Scenario, layers: int) -> tuple[int, int]:
    """(forward, backward) host ns of one micro-batch through ``layers`` blocks: the backward
    includes the replayed forward under full recompute and under selective_op (which replays
    the whole forward op by op, cached outputs included); one interpreter issues every
    data-parallel replica's forward (GIL, ``torch.nn.DataParallel``). 0 when the runtime does
    not model host time. The simulation's and the planner's."""
    per_op = sc.runtime.host_s_per_op
    if per_op <= 0 or layers <= 0:
        return 0, 0
    ops = layer_ops(sc.model)
    replay = sc.training.recompute in ("full", "selective_op")
    bwd = ops.backward + (ops.recompute_full if replay else 0)
    forward = round(1e9 * per_op * layers * ops.forward)
    if is_data_parallel(sc):
        forward *= sc.parallelism.dp
    return forward, round(1e9 * per_op * layers * bwd)


def trainable_tensor_count(sc: Scenario, lo: int, hi: int, embedding: bool, head: bool) -> int:
    """Trainable parameter tensors one GPU holds of blocks [lo, hi) (plus the embedding's and the
    head's): one per weight and bias, a fused Q/K/V or gate/up projection one weight and one
    bias (runtime ``fused_qkv`` / ``fused_gate_up``: nanotron's qkv_proj and gate_up_proj); an
    MoE block's experts the rank's E/ep, its dense first blocks dense."""
    m, t, p, rt = sc.model, sc.training, sc.parallelism, sc.runtime
    fused = fused_linear_names(rt.fused_qkv, rt.fused_gate_up)

    def fuse(name: str) -> str:  # "expert3.gate.weight" -> "expert3.fc1.weight"
        *owner, part, kind = ["", *name.split(".")]
        return ".".join([*owner, fused.get(part, part), kind])

    def per_layer(moe: bool) -> int:
        tensors = layer_param_tensors(m, t, p.tp, moe=moe, ep=p.ep)
        return len({fuse(x.name) for x in tensors if x.trainable})

    moe = hi - lo - m.dense_layers_in(lo, hi)
    n = (hi - lo - moe) * per_layer(False) + (moe * per_layer(True) if moe else 0)
    if embedding:
        n += sum(1 for x in embedding_param_tensors(m, t, p.tp) if x.trainable)
    if head:
        n += sum(1 for x in head_param_tensors(m, t, p.tp, p.pp) if x.trainable)
    return n


def accumulation_host_ns(sc: Scenario, tensors: int) -> int:
    """Host time of adding each trainable tensor's 16-bit gradient into its fp32 buffer after a
    backward (nanotron FP32GradientAccumulator.backward, optim/gradient_accumulator.py
    l.206-226 at 2411b022: a Python loop over the parameters, one ``fp32_grad.add_`` each):
    ``tensors`` dispatched ops; 0 when the runtime does not model host time."""
    return round(1e9 * sc.runtime.host_s_per_op * tensors)
