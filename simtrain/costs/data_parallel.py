"""``torch.nn.DataParallel`` (``parallelism.dp_mode: data_parallel``) as PyTorch runs it.

One Python process drives the n GPUs of a node from GPU 0 (torch 2.13,
torch/nn/parallel/data_parallel.py, ``DataParallel.forward``, lines 172-197). Each call:

* ``scatter_kwargs`` chunks the inputs along the batch onto the n GPUs
  (scatter_gather.py; ``Scatter.forward`` → ``comm.scatter``);
* ``replicate`` (replicate.py, lines 118-151) copies the module onto every GPU, its parameters
  through ``Broadcast.apply`` → ``comm.broadcast_coalesced`` from ``device_ids[0]``
  (_functions.py, lines 10-36; nn/parallel/comm.py line 50, NCCL under
  ``torch._C._broadcast_coalesced``): every step, every micro-batch;
* ``parallel_apply`` runs each replica's forward in a Python thread of its own
  (parallel_apply.py, lines 80-135): the threads share one interpreter, so under the GIL the
  host issues the n forwards one after another (``host_forward_ns``, scaled here by n). An
  upper bound: the generated bindings release the GIL around each ATen call
  (pytorch/pytorch tools/autograd/templates/python_variable_methods_dispatch.h, "wrappers
  around ATen functions that release the GIL"), so only the Python part of an op's host time
  is serial; with none of it serial the forwards cost one replica's host time (what
  ``runtime.host_us_per_op: 0`` shows when the host is not the bottleneck). The backward is
  issued by the autograd engine's C++ thread per device: one replica's host time;
* ``gather`` concatenates the outputs on GPU 0 (``Gather.forward`` → ``comm.gather``), where the
  loss is computed: for a language model the logits, n·b·s·V elements;
* backward: ``Gather.backward`` scatters the output gradient back (_functions.py line 117),
  and ``Broadcast.backward`` is ``ReduceAddCoalesced`` (lines 39-72): the replicas'
  gradients summed onto GPU 0 (``comm.reduce_add_coalesced``, ``nccl.reduce`` on the
  10 MB-coalesced buffers, comm.py lines 96-168), where the real module's ``.grad`` live;
* only the module on GPU 0 has leaf parameters: the optimizer steps there and holds its state.
  A replica's parameters are ``Broadcast`` outputs (no ``.grad``, no optimizer state); their
  gradients exist from its backward until the reduction.

Durations use ``costs.comm.collective_ns`` over the n GPUs of the node (one ring or NCCL's
choice): broadcast and reduce ``S/B``, scatter and gather ``(n−1)/n·S/B`` (nccl-tests
bus factors, ``costs.collectives``). No buffers are broadcast: simtrain's models register none
(GPT-2's causal-mask buffer is non-persistent and rebuilt, rotary tables are recomputed).
"""

from __future__ import annotations

from dataclasses import replace

from simtrain.costs import comm
from simtrain.costs.activations import loss_saved_bytes, loss_transient_bytes
from simtrain.costs.compute import head_elementwise_bytes, memory_bound_ns
from simtrain.layout.step import ResolvedStep
from simtrain.sim.lowering import DataParallelPlan
from simtrain.spec.scenario import Scenario

#: Bytes per input token id scattered to the replicas (torch.long).
TOKEN_ID_BYTES = 8


def is_data_parallel(sc: Scenario) -> bool:
    """Whether ``sc`` runs ``torch.nn.DataParallel`` over more than one GPU."""
    return sc.parallelism.dp_mode == "data_parallel" and sc.parallelism.dp > 1


def gathered_logits_bytes(sc: Scenario, step: ResolvedStep) -> int:
    """The outputs ``Gather`` concatenates on GPU 0 for one forward: every replica's logits,
    n·b·s·V elements in the matmul dtype (the LM head's output under autocast;
    ``ResolvedStep.logits_bytes`` each)."""
    return sc.parallelism.dp * step.logits_bytes


def gpu0_loss_bytes(sc: Scenario, step: ResolvedStep) -> int:
    """GPU 0's loss memory beyond the gathered logits: the loss over the whole n·b batch, what
    it saves for backward and its working memory (``activations.loss_saved_bytes`` and
    ``loss_transient_bytes`` of n·b sequences; no GPU saves them for its own rows), and the
    gradient of the gathered logits (n·b·s·V, matmul dtype) before ``Gather.backward``
    scatters it."""
    n, t = sc.parallelism.dp, sc.training
    whole = replace(t, micro_batch=n * t.micro_batch)
    loss = loss_saved_bytes(sc.model, whole) + loss_transient_bytes(sc.model, whole)
    return loss + gathered_logits_bytes(sc, step)


def gpu0_extra_loss_bytes(sc: Scenario, step: ResolvedStep) -> int:
    """What GPU 0 holds during the loss instead of one micro-batch's loss working memory: the
    gathered logits plus :func:`gpu0_loss_bytes` (``costs.memory`` counts it where the last
    chunk's loss would be)."""
    return gathered_logits_bytes(sc, step) + gpu0_loss_bytes(sc, step)


def data_parallel_plan(sc: Scenario, step: ResolvedStep, params: int, trainable: int,
                       gpu0_grad_bytes: int, replica_grad_bytes: int) -> DataParallelPlan:  # fmt: skip
    """The per-micro-batch transfers and GPU 0's extra work of ``torch.nn.DataParallel``
    (module docstring), for ``params`` parameters of which ``trainable`` have gradients: reduced
    in their own dtype (``reduce_add_coalesced`` of the replicas' ``.grad``; a framework's
    reduction dtype does not apply), and held, until the reduction, as the memory model counts
    them on GPU 0 and on a replica (``StageMemory.reduce_gradient_bytes``)."""
    n, prec = sc.parallelism.dp, step.precision
    tokens = n * step.micro_batch * step.seq_len_effective

    def ns(op: str, size: float) -> int:
        return comm.collective_ns(sc, step, op, size, n, 1)

    logits = gathered_logits_bytes(sc, step)
    fwd, bwd = head_elementwise_bytes(sc.model, sc.training)
    return DataParallelPlan(
        scatter_inputs_ns=ns("gather", TOKEN_ID_BYTES * tokens),
        broadcast_ns=ns("broadcast", params * prec.param),
        gather_ns=ns("gather", logits),
        # GPU 0's head computes its own rows' loss; the other n − 1 replicas' rows it computes
        # here, memory-bound like the head's (compute.head_elementwise_bytes).
        loss_ns=round((n - 1) * memory_bound_ns(fwd + bwd, sc.hardware)),
        scatter_grad_ns=ns("gather", logits),
        reduce_ns=ns("reduce", trainable * prec.grad),
        gathered_bytes=logits,
        loss_bytes=gpu0_loss_bytes(sc, step),
        gpu0_grad_bytes=gpu0_grad_bytes,
        replica_grad_bytes=replica_grad_bytes,
    )
