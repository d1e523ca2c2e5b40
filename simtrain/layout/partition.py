"""How the model's layers are split over pipeline stages and virtual stages (chunks).

The one place that splits the model: memory, costs, lowering and the planner read the split
through the resolved step (``layout.step``)."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

from simtrain.errors import ConfigError
from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import ParallelSpec
from simtrain.spec.stage_split import chunk_layer_counts, uneven_keys


def chunk_layers(layers: int, pp: int, v: int = 1) -> dict[int, tuple[int, int]]:
    """Virtual stage -> layers [start, end): stage k holds layers k·L/(p·v) up to (k+1)·L/(p·v);
    it lives on rank k % p (Megatron interleaved layout, Narayanan et al. 2021 §2.2.2)."""
    per = layers // (pp * v)
    return {k: (k * per, (k + 1) * per) for k in range(pp * v)}


#: The loss's two parts, as nanotron's two pipeline blocks after the LM head hold them
#: (models/llama.py LlamaModel ``cast_to_fp32``, LlamaForTraining ``loss``): the logits' cast
#: to fp32 and the cross-entropy (simtrain computes both with the LM head unless a split puts
#: them on later chunks).
LOSS_PARTS = ("fp32 cast", "loss")


@dataclass(frozen=True, slots=True)
class StageBlocks:
    """What one chunk (virtual stage) holds: decoder layers [lo, hi) (possibly none under a
    compute-balanced split), and whether it holds the embedding and the final norm + LM head +
    loss. On the head's chunk, blocks ``model.layers`` .. ``hi - 1`` are the transformer blocks
    of the multi-token-prediction modules the step trains (``layout.step``;
    ``spec.scenario.trained_mtp_modules``)."""

    lo: int
    hi: int
    embedding: bool
    head: bool
    # nanotron's blocks after the LM head that this chunk holds while the LM head sits on an
    # earlier chunk (:func:`compute_balanced_stages`): "fp32 cast" and / or "loss", in order
    tail: tuple[str, ...] = ()
    # on the LM head's chunk: its fp32 cast and loss run on later chunks (their ``tail``)
    loss_apart: bool = False

    @property
    def layers(self) -> int:
        return self.hi - self.lo

    @property
    def loss_parts(self) -> tuple[str, ...]:
        """The parts of the loss this chunk computes (:data:`LOSS_PARTS`): both on the head's
        chunk, none there when they run apart (``loss_apart``), a tail chunk's own."""
        if self.head and not self.loss_apart:
            return LOSS_PARTS
        return self.tail

    @property
    def output_kind(self) -> str:
        """What the chunk sends the next one, forward (the gradient of it comes back): "hidden"
        (a b·s·h activation), "logits" (the LM head's, in the activation dtype) or
        "fp32_logits" (the fp32 cast's, to a chunk holding only the loss)."""
        if self.head and self.loss_apart:
            return "logits"
        if self.tail == ("fp32 cast",):
            return "fp32_logits"
        return "hidden"


def nanotron_block_ranks(m: ModelSpec, pp: int) -> list[int]:
    """The pipeline rank of each of nanotron's PipelineBlocks, in model order: [embedding,
    L decoder layers, final norm, LM head, fp32 cast, loss]. nanotron models/base.py
    ``build_model`` (huggingface/nanotron@2411b022): costs from ``LlamaModel.
    get_block_compute_costs`` (decoder layer ``4·heads·d_qkv·h + 3·f·h``, LM head ``V·h``, every
    other block 0), cumulative costs ``np.cumsum``, thresholds ``C·((r + 1) / pp)`` in float64;
    each block goes to the current rank, which then advances by one if the block's cumulative
    cost exceeds its threshold. Emulated operation for operation (numpy compares the int64
    cumulative cost with the float64 threshold as float64), so a block that crosses a
    threshold stays on the current rank, and the zero-cost blocks after the LM head land on the
    ranks after it when the LM head's rank is not the last."""
    layer_cost = 4 * m.heads * m.head_dim * m.hidden + 3 * m.ffn_hidden * m.hidden
    costs = [0] + [layer_cost] * m.layers + [0, m.vocab * m.hidden, 0, 0]
    cumulative = list(itertools.accumulate(costs))
    thresholds = [float(cumulative[-1]) * ((r + 1) / pp) for r in range(pp)]
    out: list[int] = []
    r = 0
    for c in cumulative:
        out.append(r)
        if float(c) > thresholds[r]:  # never past pp - 1: c <= C = thresholds[pp - 1]
            r += 1
    return out


def compute_balanced_stages(m: ModelSpec, pp: int) -> list[StageBlocks]:
    """nanotron's pipeline split (:func:`nanotron_block_ranks`), one chunk per rank: the LM
    head counts as ``V·h / (4h² + 3fh)`` layers, so the last rank gets that many fewer; the 1B
    sweep model (h 2048, f 8192, V 131072) on pp = 2 puts 11 of 16 layers on rank 0.

    simtrain computes the final norm with the LM head (with pp <= layers nanotron never parts
    them). When the LM head lands before the last rank, the fp32 cast and the loss go to the
    ranks after it: the last rank alone holds both ("fp32 cast + loss"), or the two last ranks
    one each; such a chunk's ``tail`` names them and the head's chunk is ``loss_apart``
    (the logits then cross the pipeline: :meth:`StageBlocks.output_kind`). A rank with no
    block at all (a vocabulary large enough to put the LM head three or more ranks before the
    last) is a ConfigError naming ``parallelism.layer_split``
    (:func:`compute_balanced_problem`): nanotron's engine still counts it in every rank's
    warm-up, which simtrain's schedules do not."""
    why = compute_balanced_problem(m, pp)
    if why:
        raise ConfigError(None, "parallelism.layer_split", why, "compute_balanced")
    rank_of = nanotron_block_ranks(m, pp)
    head_rank = rank_of[m.layers + 2]
    out = []
    for k in range(pp):
        layers = [i for i in range(m.layers) if rank_of[1 + i] == k]
        tail = tuple(name for name, r in zip(LOSS_PARTS, rank_of[m.layers + 3 :], strict=True)
                     if r == k and k != head_rank)  # fmt: skip
        lo = layers[0] if layers else 0
        hi = layers[-1] + 1 if layers else 0
        out.append(StageBlocks(lo, hi, k == 0, head_rank == k, tail,
                               loss_apart=head_rank == k != rank_of[-1]))  # fmt: skip
    return out


def compute_balanced_problem(m: ModelSpec, pp: int) -> str:
    """Why simtrain cannot model nanotron's split of ``m`` over ``pp`` ranks (empty: it can):
    the ranks that would hold no block at all (no decoder layer, embedding, LM head, fp32 cast
    or loss). One line of bounded length whatever ``pp``."""
    rank_of = nanotron_block_ranks(m, pp)
    bad = [r for r in range(pp) if r not in set(rank_of)]
    if not bad:
        return ""
    return (f"nanotron's split (models/base.py build_model) leaves stage(s) {_ranges(bad)} of "
            f"parallelism.pp = {pp} with no block (the LM head lands on stage "
            f"{rank_of[m.layers + 2]}, the loss on {rank_of[-1]}), which simtrain does not "
            "model: use fewer stages or layer_split: uniform")  # fmt: skip


def _ranges(xs: list[int]) -> str:
    """Sorted integers as ranges: [1, 2, 3, 5] -> '1-3, 5' (at most 4 ranges shown)."""
    runs: list[tuple[int, int]] = []
    for x in xs:
        if runs and x == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], x)
        else:
            runs.append((x, x))
    parts = [f"{a}" if a == b else (f"{a}, {b}" if b == a + 1 else f"{a}-{b}") for a, b in runs]
    more = f", ... ({len(parts) - 4} more)" if len(parts) > 4 else ""
    return ", ".join(parts[:4]) + more


def embedding_as_layer_stages(m: ModelSpec, pp: int) -> list[StageBlocks]:
    """DeepSpeed's pipeline partition ``type:transformer|embedding`` (Megatron-DeepSpeed, BLOOM):
    the items [embedding, L decoder layers, tied embedding / LM head] each weigh 1 and are split
    into ``pp`` contiguous parts as evenly as possible, the first ``(L + 2) mod pp`` parts one
    item larger (deepspeed/runtime/utils.py ``partition_uniform``). BLOOM-176B (70 layers, pp 12):
    embedding + 5 layers, 10 x 6 layers, 5 layers + head (bigscience tr11-176B-ml README)."""
    items = m.layers + 2
    size, extra = divmod(items, pp)
    out, start = [], 0
    for k in range(pp):
        end = start + size + (1 if k < extra else 0)
        lo, hi = max(start - 1, 0), min(end - 1, m.layers)  # item i >= 1 is layer i - 1
        out.append(StageBlocks(lo, max(hi, lo), start == 0, end == items))
        start = end
    return out


def split_layers(m: ModelSpec, p: ParallelSpec) -> dict[int, StageBlocks]:
    """Virtual stage -> what it holds, by ``parallelism.layer_split``: the one place that splits
    the model over pipeline stages for memory, costs and timing. ``uniform``: Megatron's
    :func:`chunk_layers`, or with ``first_stage_layers`` / ``last_stage_layers`` /
    ``account_for_embedding`` / ``account_for_loss`` Megatron-Core's uneven rule
    (:func:`spec.stage_split.megatron_chunk_layers`); a list: those layers per chunk in chunk
    order (:func:`from_counts`); ``compute_balanced``: nanotron's :func:`compute_balanced_stages`
    (one chunk per rank); ``embedding_as_layer``: DeepSpeed's :func:`embedding_as_layer_stages`
    (one chunk per rank). The first chunk holds the embedding, the last the head."""
    if p.layer_split == "compute_balanced" and p.virtual_stages == 1:
        return dict(enumerate(compute_balanced_stages(m, p.pp)))
    if p.layer_split == "embedding_as_layer" and p.virtual_stages == 1:
        return dict(enumerate(embedding_as_layer_stages(m, p.pp)))
    counts = chunk_layer_counts(m.layers, p)
    if counts is not None and (isinstance(p.layer_split, tuple) or uneven_keys(p)):
        return dict(enumerate(from_counts(counts)))
    return {
        k: StageBlocks(lo, hi, lo == 0, hi == m.layers)
        for k, (lo, hi) in chunk_layers(m.layers, p.pp, p.virtual_stages).items()
    }


def from_counts(counts: list[int] | tuple[int, ...]) -> list[StageBlocks]:
    """Chunks holding ``counts[k]`` consecutive decoder layers each, in the order of ``k``; the
    first holds the embedding, the last the final norm, LM head and loss (Megatron: pre_process
    on the first virtual stage of rank 0, post_process on the last of rank pp-1). A chunk may
    hold no layer (Megatron's account-for split with one layer per chunk)."""
    starts = [0, *itertools.accumulate(counts)]
    n = len(counts)
    return [StageBlocks(starts[k], starts[k + 1], k == 0, k == n - 1) for k in range(n)]


def deepspeed_balanced_2022(layers: int, pp: int) -> list[int]:
    """Decoder layers per stage of DeepSpeed's pipeline partition ``type:transformer`` (binary
    weights: 1 per transformer layer, 0 for the embedding, norm and head specs) with the
    ``partition_balanced`` of 2020-2023 (microsoft/DeepSpeed deepspeed/runtime/utils.py before
    2bdf061f, #4312): a binary search for the smallest bottleneck (eps 1e-3) that ``_lprobe``'s
    greedy fill meets, then that fill; each stage takes layers up to the bottleneck, so the last
    stage gets what is left. Megatron-DeepSpeed's GPTModelPipe hard-coded it before 00f5f889
    (2022-02-28). BLOOM prequel, 78 layers on pp 12: 7 x 11 and 1 ("the last stage has 1 block,
    while the rest have 7", bigscience chronicles-prequel.md 'Re-do'). Emulated on the
    prefix sums of the layers alone: the zero-weight specs move no boundary's layer count
    (checked against DeepSpeed's own functions at 2bdf061f^ for every layers <= 129, pp <= 24
    with up to 7 zero-weight specs around the layers: the same counts)."""
    if layers <= pp:
        return [1 if k < layers else 0 for k in range(pp)]
    prefix = list(range(1, layers + 1))  # prefix_sum_inc of the binary weights

    def probe(bottleneck: float) -> tuple[list[int], bool]:
        parts = [0] + [layers] * pp
        bsum = bottleneck
        chunk = layers // pp
        step = chunk
        for p in range(1, pp):
            while step < layers and prefix[step] < bsum:
                step += chunk
            parts[p] = bisect.bisect_left(prefix, bsum, lo=step - chunk, hi=min(step, layers))
            if parts[p] == layers:
                return parts, prefix[-1] - prefix[parts[p - 1]] < bottleneck
            bsum = prefix[parts[p] - 1] + bottleneck
        return parts, bsum >= prefix[-1]

    eps = 1e-3
    lower, upper = layers / pp, float(layers)
    while upper > lower + eps:
        mid = lower + (upper - lower) / 2
        if probe(mid)[1]:
            upper = mid
        else:
            lower = mid + eps
    parts, ok = probe(upper)
    assert ok
    return [parts[k + 1] - parts[k] for k in range(pp)]


def torchtitan_split(layers: int, stages: int, input_weight: int = 1,
                     output_weight: int = 1) -> list[int]:  # fmt: skip
    """Decoder layers per pipeline stage (model chunk) of torchtitan's
    ``generate_llm_fqn_per_model_part`` (torchtitan/distributed/pipeline_parallel.py at
    4a950eaa, unchanged at b5bcd76c): the embedding weighs ``input_weight`` layers and the norm +
    output ``output_weight`` (``pipeline_parallel_first/last_stage_less_layers``, default 1
    each); the ``L + in + out`` effective layers go ``// S`` to each stage, the first
    ``mod S`` stages one more; the first stage then holds ``in`` fewer decoder layers, the last
    ``out`` fewer. 32 layers on 16 stages: 2, 3, 2 x 13, 1. Stage ``k`` runs on rank
    ``k mod pp`` (loop style)."""
    if stages == 1:
        return [layers]
    base, extra = divmod(layers + input_weight + output_weight, stages)
    out = [base + (1 if k < extra else 0) for k in range(stages)]
    out[0] -= input_weight
    out[-1] -= output_weight
    return out


def torchtitan_split_2412(layers: int, stages: int) -> list[int]:
    """Decoder layers per pipeline stage (model chunk) of torchtitan's default split points at
    9dec370a (2024-12-26, the Llama 3.1 405B benchmark's commit), ``generate_split_points`` in
    torchtitan/parallelisms/pipelining_utils.py: stage 0 gets ``L // S`` layers, the next
    stages ``L // S + 1`` while ``L mod S`` extra layers remain, the rest ``L // S``, the last
    stage what is left. ``S`` = pp (1F1B) or 2·pp (interleaved: stage ``k`` on rank ``k mod pp``).
    126 layers: pp 8 -> 15, 16 x 6, 15; 16 stages -> 7, 8 x 14, 7."""
    base, extra = divmod(layers, stages)
    cuts, current = [], 0
    for i in range(stages - 1):
        if i == 0 or extra == 0:
            current += base
        else:
            current += base + 1
            extra -= 1
        cuts.append(current)
    bounds = [0, *cuts, layers]
    return [bounds[k + 1] - bounds[k] for k in range(stages)]


def empty_stages(chunks: dict[int, StageBlocks] | tuple[StageBlocks, ...]) -> list[int]:
    """Chunks that hold no decoder layer, no embedding, no head and no part of the loss: a GPU
    with no work for the whole step (bubble 1.0). No split makes one: ``uniform`` and
    ``embedding_as_layer`` give every chunk a layer or an end, and ``compute_balanced`` raises
    instead
    (:func:`compute_balanced_problem`). Kept for the invariant checks."""
    items = chunks.items() if isinstance(chunks, dict) else enumerate(chunks)
    return [k for k, c in sorted(items) if not (c.layers or c.embedding or c.head or c.tail)]
