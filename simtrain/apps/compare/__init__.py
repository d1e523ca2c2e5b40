"""``simtrain compare``: what each memory-saving technique buys (GiB) and costs (seconds).

The lecture's question "how to optimize?" answered on the user's own model and GPU. A *variant*
is a named list of ``--set``-style overrides (``key.path=value``). Built-ins cover the lecture's
list: mixed precision, gradient checkpointing, smaller batches, gradient accumulation, PEFT
(LoRA, QLoRA, prefix and prompt tuning, adapters, linear probing), CPU offload and ZeRO; any
``key=value`` list is a variant too.

Two modes:

- **alone** (default): every variant is applied to the baseline by itself;
- **ladder** (``--ladder``): each variant is applied on top of the previous ones, so the rows walk
  from the baseline to the scenario with every technique (the lecture's 84 GB -> 33 GB walk).
  A ladder row is exactly the scenario file loaded with all the overrides so far.

Every number comes from the memory model and the simulated step (:func:`simulate_scenario`); no
technique has a fixed cost: checkpointing costs the recompute forward the engine plays,
frozen weights skip their weight-gradient matmuls, offload pays PCIe transfers and a CPU Adam
step, ZeRO pays its collectives.

Variants whose overrides depend on the scenario are functions of the *current* scenario (the
baseline in alone mode, the previous rung in ladder mode): ``half_batch`` and ``grad_accum_4``
(its batch sizes), ``amp`` and ``qlora`` (bf16, or fp16 on GPUs without bf16), ``qlora`` (the
model's linear modules), ``zero1/2/3`` (dp = all GPUs of the scenario; a 1-GPU scenario, or one
with dp = 1, becomes pure data parallelism over 8 GPUs of one node, resp. over all its GPUs,
each GPU keeping its micro-batches, so the global batch grows with dp; the row's note says so).

**Modules.** ``variants`` (the built-ins and ``--variants`` parsing), ``run`` (:func:`compare`,
one :class:`VariantRow` per variant), ``tables`` (terminal table, CSV), ``plots`` (ladder and trade-off
pictures) and ``command`` (the files written and what is printed).
"""

from simtrain.apps.compare.command import compare_command
from simtrain.apps.compare.run import VariantRow, compare
from simtrain.apps.compare.variants import BUILTIN_VARIANTS, parse_variant, split_variants

# What other modules import from simtrain.apps.compare (the command, tests).
__all__ = [
    "BUILTIN_VARIANTS", "VariantRow", "compare", "compare_command", "parse_variant", "split_variants",
]  # fmt: skip
