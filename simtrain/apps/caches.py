"""simtrain's memoisation as a whole: every ``functools`` cache its modules hold (the resolved
step, layer tensors, schedules, per-scenario costs), cleared at once, so that a rerun
recomputes everything (tests/test_invariants.py) and a benchmark can time a planner's next,
unseen layout (benchmarks/bench_memory.py)."""

from __future__ import annotations

import sys


def clear_caches() -> None:
    """Clear every ``functools`` cache defined in a loaded simtrain module."""
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "simtrain" or name.startswith("simtrain.")):
            continue
        for obj in list(vars(mod).values()):
            if (
                callable(getattr(obj, "cache_clear", None))
                and getattr(obj, "__module__", "") == name
            ):
                obj.cache_clear()
