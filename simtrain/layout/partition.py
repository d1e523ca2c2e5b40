"""How the model's layers are split over pipeline stages and virtual stages (chunks).

The one place that splits the model: memory, costs, lowering and the planner read the split
through the resolved step (``layout.step``)."""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import ParallelSpec


def chunk_layers(layers: int, pp: int, v: int = 1) -> dict[int, tuple[int, int]]:
    """Virtual stage -> layers [start, end): stage k holds layers k·L/(p·v) up to (k+1)·L/(p·v);
    it lives on rank k % p (Megatron interleaved layout, Narayanan et al. 2021 §2.2.2)."""
    per = layers // (pp * v)
    return {k: (k * per, (k + 1) * per) for k in range(pp * v)}


@dataclass(frozen=True, slots=True)
class StageBlocks:
    """What one chunk (virtual stage) holds: decoder layers [lo, hi) (possibly none under a
    compute-balanced split), and whether it holds the embedding and the final norm + LM head +
    loss."""

    lo: int
    hi: int
    embedding: bool
    head: bool

    @property
    def layers(self) -> int:
        return self.hi - self.lo


def compute_balanced_stages(m: ModelSpec, pp: int) -> list[StageBlocks]:
    """nanotron's pipeline split (models/base.py ``build_model``; costs from
    ``LlamaModel.get_block_compute_costs``): blocks in model order [embedding, L decoder layers,
    final norm, LM head, fp32 cast, loss] with costs 0, ``4·h² + 3·f·h`` each (attention
    projections + MLP), 0, ``V·h``, 0, 0. Thresholds ``T_r = C·(r+1)/pp`` over the total cost C;
    walking the cumulative cost c, a block goes to the current rank r and r advances by one when
    c > T_r. The embedding stays on rank 0. So the LM head counts as ``V·h / (4h² + 3fh)``
    layers and the last rank gets that many fewer: the 1B sweep model (h 2048, f 8192,
    V 131072) on pp = 2 puts 11 of 16 layers on rank 0."""
    layer_cost = 4 * m.hidden * m.hidden + 3 * m.ffn_hidden * m.hidden
    costs = [0] + [layer_cost] * m.layers + [0, m.vocab * m.hidden, 0, 0]
    total = sum(costs)
    rank_of: list[int] = []
    r, c = 0, 0
    for cost in costs:
        c += cost
        rank_of.append(r)
        if c * pp > total * (r + 1) and r < pp - 1:  # c > total·(r+1)/pp, in integers
            r += 1
    out = []
    for k in range(pp):
        layers = [i for i in range(m.layers) if rank_of[1 + i] == k]
        lo = layers[0] if layers else 0
        hi = layers[-1] + 1 if layers else 0
        out.append(StageBlocks(lo, hi, k == 0, rank_of[m.layers + 2] == k))
    return out


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
    :func:`chunk_layers` (the first chunk holds the embedding, the last the head);
    ``compute_balanced``: nanotron's :func:`compute_balanced_stages` (one chunk per rank);
    ``embedding_as_layer``: DeepSpeed's :func:`embedding_as_layer_stages` (one chunk per rank)."""
    if p.layer_split == "compute_balanced" and p.virtual_stages == 1:
        return dict(enumerate(compute_balanced_stages(m, p.pp)))
    if p.layer_split == "embedding_as_layer" and p.virtual_stages == 1:
        return dict(enumerate(embedding_as_layer_stages(m, p.pp)))
    return {
        k: StageBlocks(lo, hi, lo == 0, hi == m.layers)
        for k, (lo, hi) in chunk_layers(m.layers, p.pp, p.virtual_stages).items()
    }


def empty_stages(chunks: dict[int, StageBlocks] | tuple[StageBlocks, ...]) -> list[int]:
    """Chunks that hold no decoder layer, no embedding and no head: a GPU with no work for the
    whole step (bubble 1.0). Only ``compute_balanced`` makes them: its thresholds count the LM
    head as V·h / (4h² + 3fh) layers, so with a vocabulary large against the blocks the head's
    rank comes before the last, and the ranks after it get only nanotron's zero-cost blocks
    (fp32 cast, loss) or none. nanotron runs the first kind (the loss is computed there), but
    simtrain computes the loss with the head, so here such a stage has nothing to do."""
    items = chunks.items() if isinstance(chunks, dict) else enumerate(chunks)
    return [k for k, c in sorted(items) if not (c.layers or c.embedding or c.head)]
