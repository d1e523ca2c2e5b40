"""``simtrain plan``: load the plan, search, write the files, print the table or JSON."""

from __future__ import annotations

from pathlib import Path

from simtrain.apps.plan.execute import DaskExecutor, make_executor
from simtrain.apps.plan.file import MAX_TOP, load_plan
from simtrain.apps.plan.output import plan_table, write_best_yaml, write_csv, write_pareto
from simtrain.apps.plan.progress import Progress, ProgressBar, work_after
from simtrain.apps.plan.search import run_plan
from simtrain.errors import ConfigError

#: the table prints the plan's ``top`` (or --top) proposals, at most this many rows (every
#: layout is in plan.csv)
MAX_TABLE_ROWS = 50


def plan_command(
    plan_path: str,
    as_json: bool = False,
    out_dir: str | None = None,
    workers: int | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    top: int | None = None,
    progress: Progress | None = None,
) -> str:
    """What ``simtrain plan PLAN.yaml [--json] [--out DIR] [--workers N] [--executor
    local|dask] [--scheduler ADDRESS] [--top N]`` prints; writes plan.csv, pareto.png and
    best.yaml into ``out_dir`` (default ``plots/<plan name>``). Progress goes to stderr."""
    from simtrain.report.tables import dumps

    plan = load_plan(plan_path)
    if top is not None and not 1 <= top <= MAX_TOP:
        # (the plan file's own top is bounded alike; 99,999,999,999 simulated every layout)
        raise ConfigError(None, "--top", f"must be 1 to {MAX_TOP:,}", top)
    if executor == "dask" or scheduler:
        ex = DaskExecutor(scheduler, workers)
    else:
        ex = make_executor(executor, workers, None)
    n = plan.top if top is None else top  # select_candidates simulates at most n + n // 4
    bar = ProgressBar(later=work_after(n + n // 4)) if progress is None else None
    result = run_plan(plan, ex, top, progress or bar)
    if bar is not None:
        bar.close()
    folder = Path(out_dir) if out_dir else Path("plots") / plan.name
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(result, folder / "plan.csv")
    write_pareto(result, folder / "pareto.png")
    wrote_best = write_best_yaml(result, folder / "best.yaml")
    if as_json:
        return dumps(result.to_json())
    files = ["plan.csv", "pareto.png"] + (["best.yaml"] if wrote_best else [])
    table = plan_table(result, rows=min(n, MAX_TABLE_ROWS))
    return table + f"\n\nwrote {folder}/" + ", ".join(files) + "\n"
