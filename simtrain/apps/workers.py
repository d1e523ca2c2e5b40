"""How many worker processes a command starts on this machine.

simtrain's simulations are CPU-bound Python: a process per CPU is as fast as it gets, and each
process more costs memory without speed (``simtrain plan --workers 100000`` had the kernel kill
a 24 GiB machine's run). A request is clamped to the CPUs here. The CLI refuses 0 or fewer
(``--workers``); here None and 0 mean the default, as the executors always read them.
"""

from __future__ import annotations

import os

from simtrain.errors import ConfigError

#: The environment variable that sets ``simtrain validate``'s processes.
WORKERS_ENV = "SIMTRAIN_WORKERS"


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity where the platform tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


def local_workers(requested: int | None, default_cap: int | None = None) -> int:
    """Processes for a pool on this machine: ``requested`` clamped to 1..:func:`cpu_count`,
    or (None or 0) the CPU count, at most ``default_cap``."""
    cpus = cpu_count()
    if not requested:
        return min(cpus, default_cap) if default_cap else cpus
    return max(1, min(requested, cpus))


def env_workers() -> int | None:
    """:data:`WORKERS_ENV` as a whole number of processes (None when unset or empty; 0 runs
    serially, as it always did); a ConfigError naming it for anything but ASCII digits ("²"
    passes ``str.isdigit`` and was int()'s ValueError; "-1" and "auto" had silently been the
    default)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise ConfigError(None, WORKERS_ENV, "not a whole number of processes", raw,
                          "0 (serial), 1, 2, ... (more than the CPUs run as the CPUs)")  # fmt: skip
    return max(1, int(raw))
