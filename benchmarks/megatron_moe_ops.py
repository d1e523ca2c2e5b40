"""Count the dispatched ATen ops of Megatron-Core's MoE layer on the CPU, by the regions its CUDA
graph scopes name: the numbers of ``simtrain.costs.host.MEGATRON_MOE_*_OPS``.

Not run in CI (it needs megatron-core, which simtrain does not depend on). To rerun:

    pip download megatron-core==0.16.1 --no-deps -d /tmp/mcore
    pip install --no-deps --target /tmp/mcore_pkg /tmp/mcore/megatron_core-0.16.1-*.whl
    MCORE_PATH=/tmp/mcore_pkg python benchmarks/megatron_moe_ops.py 1   # EP 1
    MCORE_PATH=/tmp/mcore_pkg python benchmarks/megatron_moe_ops.py 2   # EP 2 (two gloo ranks)

An MoELayer (Megatron's local spec: alltoall token dispatcher, softmax top-2 router with the
aux loss, moe_permute_fusion off, bf16) on (64, 2, 64) tokens, its SequentialMLP experts at 2
and 4 local experts so that the per-expert ops come out by difference; CUDA streams and events
stubbed (the host-side syncs are not ops); gloo has no bf16 all-to-all, so the all-to-all runs
in fp32 out of the counter's sight and counts as the one c10d op a GPU run dispatches. Printed
(2026-12-06, torch 2.13 CPU): EP 1 router 33 / 26, preprocess 14 / 0, rest 20 / 18; EP 2
router 33 / 26, preprocess 25 / 0, rest 36 / 33 (forward / backward).
"""

import contextlib
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode


class _S:
    def wait_stream(self, *a):
        pass

    def synchronize(self):
        pass

    def record_event(self, *a, **k):
        return _E()

    def wait_event(self, *a):
        pass


class _E:
    def record(self, *a, **k):
        pass

    def synchronize(self):
        pass

    def wait(self, *a):
        pass

    def query(self):
        return True


def _stub_cuda():
    torch.cuda.Stream = lambda *a, **k: _S()
    torch.cuda.Event = lambda *a, **k: _E()
    torch.cuda.current_stream = lambda *a, **k: _S()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.current_device = lambda: "cpu"


ACTIVE = []


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0
        self.region = "rest"
        self.by = {}
        self.names = {}
        self.paused = False

    def __enter__(self):
        ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *a):
        ACTIVE.remove(self)
        return super().__exit__(*a)

    def tick(self, name):
        self.ops += 1
        self.by[self.region] = self.by.get(self.region, 0) + 1
        self.names.setdefault(self.region, []).append(name)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.paused:
            return func(*args, **(kwargs or {}))
        self.ops += 1
        self.by[self.region] = self.by.get(self.region, 0) + 1
        self.names.setdefault(self.region, []).append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _in_region(c, region, orig):
    """``orig`` wrapped so the counter ``c`` files its ops under ``region``, then back to the
    rest."""

    def wrapped(*a, **k):
        c.region = region
        try:
            return orig(*a, **k)
        finally:
            c.region = "rest"

    return wrapped


def run(rank, world, q, local_experts_list, topk):
    warnings.filterwarnings("ignore")
    sys.path.insert(0, os.environ.get("MCORE_PATH", ""))
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = "29533"
    _stub_cuda()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    real_a2a = dist.all_to_all_single

    def a2a(
        output, input, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False
    ):
        # gloo has no bf16 all-to-all: run it in fp32 out of the counter's sight and count the
        # one c10d op the GPU run dispatches
        for c in ACTIVE:
            c.paused = True
        try:
            o = torch.empty(output.shape, dtype=torch.float32)
            osz = None if output_split_sizes is None else [int(v) for v in output_split_sizes]
            isz = None if input_split_sizes is None else [int(v) for v in input_split_sizes]
            real_a2a(o, input.float(), osz, isz, group=group)
            output.copy_(o.to(output.dtype))
        finally:
            for c in ACTIVE:
                c.paused = False
        for c in ACTIVE:
            c.tick("alltoall_base_")
        return None

    dist.all_to_all_single = a2a
    torch.distributed.all_to_all_single = a2a
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(1, 1, expert_model_parallel_size=world)
    import megatron.core.transformer.moe.moe_utils as mu

    for n in (
        "te_general_gemm",
        "fused_compute_score_for_moe_aux_loss",
        "fused_moe_aux_loss",
        "fused_permute",
        "fused_permute_with_probs",
        "fused_sort_chunks_by_index",
        "fused_sort_chunks_by_index_with_probs",
        "fused_topk_with_score_function",
        "fused_unpermute",
    ):
        if not hasattr(mu, n):
            setattr(mu, n, None)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import build_module
    from megatron.core.transformer.transformer_config import TransformerConfig

    out = {}
    for local in local_experts_list:
        E = local * world
        torch.manual_seed(0)
        cfg = TransformerConfig(
            num_layers=1,
            hidden_size=64,
            num_attention_heads=4,
            ffn_hidden_size=128,
            gated_linear_unit=True,
            activation_func=F.silu,
            normalization="RMSNorm",
            add_bias_linear=False,
            bf16=True,
            params_dtype=torch.bfloat16,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            use_cpu_initialization=True,
            num_moe_experts=E,
            moe_router_topk=topk,
            moe_ffn_hidden_size=32,
            moe_token_dispatcher_type="alltoall",
            moe_router_load_balancing_type="aux_loss",
            moe_aux_loss_coeff=1e-3,
            moe_grouped_gemm=False,
            moe_permute_fusion=False,
            expert_model_parallel_size=world,
        )
        spec = get_gpt_layer_local_spec(num_experts=E, moe_grouped_gemm=False)
        moe = build_module(spec.submodules.mlp, config=cfg).to(torch.bfloat16)
        x = torch.randn(64, 2, 64, dtype=torch.bfloat16, requires_grad=True)
        for _ in range(2):  # the second pass, warm
            c = Counter()
            orig_route, orig_pre = moe.route, moe.preprocess

            moe.route = _in_region(c, "router", orig_route)
            moe.preprocess = _in_region(c, "preprocess", orig_pre)
            with c:
                y = moe(x)
                y = y[0] if isinstance(y, tuple) else y
                loss = y.float().sum()
            fwd = dict(c.by)
            fnames = dict(c.names)
            moe.route, moe.preprocess = orig_route, orig_pre
            with Counter() as cb:
                loss.backward()
            bwd = cb.ops
            bnames = cb.names.get("rest", [])
            moe.zero_grad(set_to_none=True)
            x.grad = None
        # the router alone, forward and backward (its aux loss rides on the probs' backward)
        xr = torch.randn(64, 2, 64, dtype=torch.bfloat16, requires_grad=True)
        for _ in range(2):
            with Counter() as cr:
                probs, rmap = moe.router(xr)
                lr = probs.float().sum()
            rf = cr.ops
            with Counter() as crb:
                lr.backward()
            rb = crb.ops
            rbn = crb.names.get("rest", [])
            xr.grad = None
            moe.zero_grad(set_to_none=True)
        out[local] = dict(
            fwd=fwd, bwd=bwd, router_alone=(rf, rb), fnames=fnames, bnames=bnames, rbnames=rbn
        )
    if rank == 0:
        q.put(out)
    dist.destroy_process_group()


HARNESS = (2, 4)  # loss = y.float().sum(): _to_copy, sum / ones_like, expand, _to_copy, x's grad
ROUTER_HARNESS_BWD = 4  # the router alone: the same, its input's gradient


if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=run, args=(r, world, q, [2, 4], 2)) for r in range(world)]
    for p in procs:
        p.start()
    out = q.get()
    for p in procs:
        p.join()
    two, four = out[2], out[4]
    per_f = (four["fwd"]["rest"] - two["fwd"]["rest"]) / 2
    per_b = (four["bwd"] - two["bwd"]) / 2
    router_f, router_b = two["fwd"]["router"], two["router_alone"][1] - ROUTER_HARNESS_BWD
    pre_f = two["fwd"]["preprocess"]
    rest_f = two["fwd"]["rest"] - 2 * per_f - HARNESS[0]
    rest_b = two["bwd"] - 2 * per_b - HARNESS[1] - router_b
    print(
        f"EP {world}: per expert {per_f:g} / {per_b:g}; router {router_f} / {router_b}, "
        f"preprocess {pre_f} / 0, rest {rest_f:g} / {rest_b:g} (forward / backward)"
    )
    if "-v" in sys.argv:
        for k, v in two["fnames"].items():
            print("forward", k, v)
        print("backward", two["bnames"])
        print("router backward", two["rbnames"])
