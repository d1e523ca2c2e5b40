"""Command-line interface: thin wrappers that load, call the library, and print."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from simtrain.errors import MAX_ECHO, ConfigError, SimtrainError, one_line
from simtrain.spec.limits import MAX_GPUS

SET_HELP = "Override a scenario key, e.g. --set training.micro_batch=2 (repeatable)."


def _set_once(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """--set gives each key once (spec.scenario.check_overrides_once): a repeated key, or a
    mapping set after a key inside it, is a usage error instead of the last one silently
    winning."""
    from simtrain.spec.scenario import check_overrides_once

    try:
        check_overrides_once(value)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return value


STRICT_HELP = "Exit with code 3 when the scenario does not fit in GPU memory (0 without --strict)."
EXIT_DOES_NOT_FIT = 3  # --strict: the scenario does not fit (2 is bad input)
#: The formats `simtrain import` and `run --from` read (= apps.importers.KINDS; tests check).
IMPORT_KINDS = ("megatron", "deepspeed", "torchtitan", "nanotron")
MODEL_HELP = ("deepspeed: the model, a Hugging Face config.json or a simtrain preset (a "
              "ds_config names none).")  # fmt: skip
GPUS_HELP = "The job's GPU count, where the file gives none (or another)."

# `simtrain schedule` prints a GPU x step grid for people to read; its work and output grow with
# pp x microbatches x virtual stages (the naive schedule: with pp² x microbatches). At these
# maxima the slowest schedule answers in about 2 s (interleaved 32 x 128 x 8, 1.2 MB of grid).
MAX_SCHEDULE_PP = 32
MAX_SCHEDULE_MICROBATCHES = 128
MAX_SCHEDULE_VIRTUAL_STAGES = 8

#: A count as a command line writes it: the ASCII digits, with an optional sign (and ASCII
#: blanks around them; str.strip() also takes an ideographic space).
_ASCII_INT = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*")


class WholeNumber(click.IntRange):
    """click's IntRange on the digits 0-9 alone: Python's int() also reads "1_0" as 10 and
    another script's digits ("٤" as 4), which a command line means as neither. Without bounds
    its help names no range (IntRange's would print "x<=None")."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not _ASCII_INT.fullmatch(value):
            self.fail(f"{value!r} is not a whole number written in the digits 0-9", param, ctx)
        return super().convert(value, param, ctx)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.min is None and self.max is None:
            self.name = "integer"  # its metavar: INTEGER, as click.INT's

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so that the interpreter's final flush
    does not raise again (Python docs, signal: "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test runner's capture)
        pass


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Domain errors become one line on stderr and exit code 2 -- never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SimtrainError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except BrokenPipeError:  # `simtrain run ... | head`: the reader left; nothing to say
            _quiet_stdout()
            sys.exit(0)
        except OSError as exc:  # an output folder or file the system refuses (--out /dev/null/x)
            where = exc.filename if exc.filename is not None else "output"
            click.echo(f"error: {one_line(str(where), MAX_ECHO)}: cannot write: "
                       f"{exc.strerror or exc}", err=True)  # fmt: skip
            sys.exit(2)

    return wrapper


class _Group(click.Group):
    """Usage errors (a missing value, an unknown option, a folder given as a file) are one line
    on stderr starting with "error:", exit code 2 -- like every other bad input."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.UsageError as exc:
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except click.exceptions.ClickException as exc:
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simtrain")
def main() -> None:
    """simtrain: will this model fit, and how fast will a training step run?"""


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document.")
@click.option("--explain", is_flag=True, help="Write out the arithmetic line by line.")
@click.option("--set", "overrides", multiple=True, help=SET_HELP, callback=_set_once)
@click.option("--strict", is_flag=True, help=STRICT_HELP)
@_errors
def memory(scenario: str, as_json: bool, explain: bool, overrides: tuple[str, ...],
           strict: bool) -> None:  # fmt: skip
    """Memory per GPU by category, per pipeline stage; does it fit? If not, the cheapest changes
    that would make it fit."""
    from simtrain.apps.simulate import probe_phase_memory
    from simtrain.costs.memory import estimate_memory
    from simtrain.report.tables import (
        dumps,
        gradient_dtype_line,
        memory_table,
        probe_phase_note,
    )
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario(scenario, overrides)
    rep = estimate_memory(sc)
    probe = probe_phase_memory(sc)  # LP-FT: both phases must fit
    fits = rep.fits and (probe is None or probe.fits)
    if as_json:
        doc = rep.to_json()
        if probe is not None:
            doc["probe_phase"] = {"peak_memory_bytes": probe.peak_memory_bytes,
                                  "fits": probe.fits}  # fmt: skip
        click.echo(dumps(doc), nl=False)
    else:
        if explain:
            from simtrain.report.explain import explain_memory

            click.echo("\n".join(explain_memory(sc, rep)))
            click.echo("")
        click.echo(memory_table(rep))
        if line := gradient_dtype_line(sc):
            click.echo(line)
        if probe is not None:
            click.echo(probe_phase_note(probe))
        _fit_advice(scenario, overrides, fits)
    _strict_exit(strict, fits)


def _fit_advice(scenario: str, overrides: tuple[str, ...], fits: bool) -> None:
    """Under a "does not fit" verdict: the cheapest changes that would make it fit."""
    if fits:
        return
    from simtrain.apps.fit import advice_text, fit_changes

    try:
        text = advice_text(fit_changes(scenario, overrides))
    except SimtrainError as exc:  # the verdict stands; only the advice is missing
        text = f"(no suggestions: {exc})"
    click.echo("\n" + text)


def _warn(message: str) -> None:
    click.echo(message, err=True)


#: ``--threads`` of measure and calibrate: torch.set_num_threads asks OpenMP for that many
#: threads, which a count far above the machine's only oversubscribes and a huge one exhausts.
#: 1,024 is above the hardware threads of a two-socket server of 2024-25 (AMD EPYC 9965:
#: 2 x 192 cores x 2 threads = 768).
MAX_TORCH_THREADS = 1024


def _strict_exit(strict: bool, fits: bool) -> None:
    if strict and not fits:
        click.get_current_context().exit(EXIT_DOES_NOT_FIT)


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the measurement as JSON.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda")
@click.option("--threads", type=WholeNumber(min=1, max=MAX_TORCH_THREADS), default=None,
              help="torch CPU threads while measuring (use the value the profile was calibrated "
              "with) [torch's default]")  # fmt: skip
@click.option("--set", "overrides", multiple=True, help=SET_HELP, callback=_set_once)
@_errors
def measure(scenario: str, as_json: bool, device: str, threads: int | None,
            overrides: tuple[str, ...]) -> None:  # fmt: skip
    """Build the scenario's model in PyTorch and measure one real training step (extra: measure)."""
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario(scenario, overrides)
    try:
        from simtrain.torchref.measure import measure_step
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SimtrainError(
            f"simtrain measure needs PyTorch: pip install 'simtrain[measure]' ({exc})"
        ) from None
    from simtrain.costs.memory import estimate_memory
    from simtrain.report.tables import dumps

    res = measure_step(sc.model, sc.training, device=device, threads=threads, file=scenario)
    pred = estimate_memory(sc).stages[0]
    doc = {
        "schema_version": 1,
        "scenario": sc.name,
        "device": res.device,
        "torch_version": res.torch_version,
        "step_time_s": res.step_time_s,
        "measured_bytes": {
            "parameters": res.parameter_bytes,
            "master_weights": res.master_weight_bytes,
            "gradients": res.gradient_bytes,
            "optimizer_states": res.optimizer_state_bytes,
            "activations": res.activation_bytes,
            "peak": res.peak_bytes,
        },
        "predicted_bytes": {k: v for k, v in pred.memory_bytes if k != "cuda_context"},
    }
    if as_json:
        click.echo(dumps(doc), nl=False)
        return
    click.echo(
        f"{sc.name} on {res.device} (torch {res.torch_version}): step {res.step_time_s:.3f} s"
    )
    click.echo(f"{'category':<18}{'measured B':>16}{'predicted B':>16}{'error %':>10}")
    for k, v in doc["measured_bytes"].items():
        p = (
            pred.peak_memory_bytes - pred.category("cuda_context")
            if k == "peak"
            else pred.category(k)
        )
        err = 100.0 * (p - v) / v if v else 0.0
        click.echo(f"{k:<18}{v:>16,}{p:>16,}{err:>10.1f}")


@main.command()
@click.argument("name")
@click.option("--pp", type=WholeNumber(1, MAX_SCHEDULE_PP), default=4, show_default=True,
              help=f"Pipeline stages (at most {MAX_SCHEDULE_PP}).")  # fmt: skip
@click.option("--microbatches", "-m", type=WholeNumber(1, MAX_SCHEDULE_MICROBATCHES),
              default=8, show_default=True,
              help=f"Micro-batches (at most {MAX_SCHEDULE_MICROBATCHES}).")  # fmt: skip
@click.option("--virtual-stages", "-v", type=WholeNumber(1, MAX_SCHEDULE_VIRTUAL_STAGES),
              default=1, show_default=True,
              help="Model chunks per GPU, interleaved (at most "
              f"{MAX_SCHEDULE_VIRTUAL_STAGES}).")  # fmt: skip
@click.option("--microbatch-group", "-n", type=WholeNumber(0, MAX_SCHEDULE_MICROBATCHES),
              default=0, show_default=True,
              help="Interleaved schedules: micro-batches per model chunk in a row, N "
              "(Megatron's --microbatch-group-size-per-virtual-pipeline-stage; 0: pp).")  # fmt: skip
@_errors
def schedule(name: str, pp: int, microbatches: int, virtual_stages: int,
             microbatch_group: int) -> None:  # fmt: skip
    """Print a pipeline schedule as a GPU x step grid (e.g. gpipe, 1f1b, interleaved, zb_h1),
    then the same schedule played with unit times ('.' = idle) and its bubble ratio."""
    from simtrain.schedules import build_schedule, format_grid, format_timeline, simulate_unit
    from simtrain.schedules import traits as schedule_traits

    traits = schedule_traits(name)
    if not traits.takes_chunks(virtual_stages):  # (dualpipe -v 8 ran 2, silently: fuzzing)
        fixed = traits.chunks_per_rank  # ZB-V, DualPipeV: 2
        raise ConfigError(None, "--virtual-stages", f"{name} runs {fixed} model chunks per GPU",
                          virtual_stages, f"1 or {fixed}")  # fmt: skip
    if virtual_stages > 1 and not traits.virtual:
        from simtrain.schedules.registry import multi_chunk_schedules

        raise ConfigError(None, "--virtual-stages", f"{name} runs one model chunk per GPU; the "
                          f"schedules with more: {', '.join(multi_chunk_schedules())}",
                          virtual_stages, "1")  # fmt: skip
    virtual_stages = schedule_traits(name).chunks(virtual_stages)
    place = schedule_traits(name).placement  # DualPipe: two pipelines ("dual")
    sched = build_schedule(name, pp, microbatches, virtual_stages, microbatch_group)
    click.echo("order of actions per GPU (stage, kind, micro-batch):")
    click.echo(format_grid(sched))
    click.echo("\nplayed in time, one cell per action ('.' is idle):")
    click.echo(format_timeline(sched, pp, virtual_stages, place))
    durations = {"F": 1, "B": 2, "I": 1, "W": 1}
    makespan, busy = simulate_unit(sched, pp, virtual_stages, durations, place)
    bubble = 1 - sum(busy.values()) / (pp * makespan)
    click.echo(
        f"\nbubble ratio {float(bubble):.3f} (idle fraction of GPU time with t_F = t_I = t_W = 1, t_B = 2)"
    )


def _nonempty_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--out ''`` (an unset shell variable, ``--out "$DIR"``) was taken as no --out: the
    default folder, silently. Now a usage error."""
    if value is not None and not value.strip():
        raise click.BadParameter("an empty path (an unset shell variable?)")
    return value


def _out_folder(**kw: Any) -> Callable[[Any], Any]:
    """A command's ``--out`` folder: never an empty path (:func:`_nonempty_path`)."""
    return click.option("--out", callback=_nonempty_path, type=click.Path(file_okay=False), **kw)


def _out_file(**kw: Any) -> Callable[[Any], Any]:
    """A command's ``--out`` file: never an empty path (:func:`_nonempty_path`)."""
    return click.option("--out", callback=_nonempty_path, type=click.Path(dir_okay=False), **kw)


def _out_dir(out: str | None, name: str) -> Path:
    """The output folder, created; one that cannot be (a name too long, under /proc, ...) is a
    one-line error naming --out."""
    folder = Path(out) if out else Path("plots") / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(None, "--out", f"cannot create the folder ({exc.strerror})",
                          str(folder)) from None  # fmt: skip
    return folder


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@_out_folder(help="Output folder [plots/<name>/].")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout.")
@click.option("--no-plots", is_flag=True, help="Skip gantt.png and memory.png.")
@click.option("--set", "overrides", multiple=True, help=SET_HELP, callback=_set_once)
@click.option("--strict", is_flag=True, help=STRICT_HELP)
@click.option("--from", "from_kind", type=click.Choice(IMPORT_KINDS), default=None,
              help="SCENARIO is a configuration of this framework, imported as `simtrain import` "
              "does (settings not simulated are listed on stderr).")  # fmt: skip
@click.option("--model", "from_model", default=None, help=MODEL_HELP)
@click.option("--gpus", type=WholeNumber(1, MAX_GPUS), default=None, help=GPUS_HELP)
@_errors
def run(scenario: str, out: str | None, as_json: bool, no_plots: bool, overrides: tuple[str, ...],
        strict: bool, from_kind: str | None, from_model: str | None,
        gpus: int | None) -> None:  # fmt: skip
    """Simulate one training step: table, summary.json, trace.json, gantt.png, memory.png. If it
    does not fit, the cheapest changes that would make it fit."""
    from simtrain.apps.simulate import simulate_lp_ft, simulate_scenario
    from simtrain.report.progress import ProgressBar, run_later
    from simtrain.report.tables import dumps, run_summary, run_table
    from simtrain.report.trace import write_chrome_trace
    from simtrain.spec.scenario import load_scenario

    bar = ProgressBar(later=run_later(not no_plots))  # on stderr, only past 2 s
    if from_kind:
        from simtrain.apps.importers import load_foreign

        sc = load_foreign(from_kind, scenario, from_model, gpus, overrides, _warn)
    elif from_model is not None or gpus is not None:
        raise click.UsageError("--model and --gpus go with --from")
    else:
        sc = load_scenario(scenario, overrides)
    bar("simulating", 0, 1)
    # LP-FT with both phases' steps: both simulated, the finetune phase shown (plots, trace)
    phased = simulate_lp_ft(sc) if sc.training.peft.two_phase else None
    res = phased.main if phased else simulate_scenario(sc)
    fits = phased.fits if phased else res.memory.fits
    bar("simulating", 1, 1)
    folder = _out_dir(out, sc.name)
    summary = run_summary(res, phased)
    (folder / "summary.json").write_text(dumps(summary))
    cap = sc.hardware.memory_bytes

    def trace() -> object:
        return write_chrome_trace(res.timeline, folder / "trace.json", capacity_bytes=cap,
                                  metadata={"scenario": sc.name, "simtrain": "trace"},
                                  progress=bar)  # fmt: skip

    if no_plots:
        trace()
    else:
        from simtrain.report.plot import gantt, memory_plot, run_concurrently

        shown = " (LP-FT finetune phase)" if phased else ""

        title = (
            f"{sc.name}: {sc.parallelism.schedule}, pp {sc.parallelism.pp}, m {sc.num_microbatches}"
            + shown
        )
        run_concurrently([  # the three files at once where the machine allows
            lambda: gantt(res.timeline, folder / "gantt.png", title=title,
                          bubble_ratio=res.metrics.bubble_ratio),
            lambda: memory_plot(res.timeline, folder / "memory.png", capacity_bytes=cap,
                                title=f"{sc.name}: memory per GPU" + shown),
            trace,
        ])  # fmt: skip
    bar.close()
    if as_json:
        click.echo(dumps(summary), nl=False)
    else:
        click.echo(run_table(res, phased))
        if from_kind and not fits:  # the advice reads a scenario file
            import tempfile

            from simtrain.apps.importers import foreign_as_file

            with tempfile.TemporaryDirectory() as tmp:
                path = foreign_as_file(from_kind, scenario, from_model, gpus, tmp)
                _fit_advice(str(path), overrides, fits)
        else:
            _fit_advice(scenario, overrides, fits)
        click.echo(
            f"\nwrote {folder}/summary.json, trace.json"
            + ("" if no_plots else ", gantt.png, memory.png")
        )
    _strict_exit(strict, fits)


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@_out_folder(help="Output folder [plots/<name>/].")
@click.option("--set", "overrides", multiple=True, help=SET_HELP, callback=_set_once)
@_errors
def topology(scenario: str, out: str | None, overrides: tuple[str, ...]) -> None:
    """Draw the cluster's network (topology.png) and print injection and bisection bandwidth."""
    from simtrain.layout.topology import build_topology, draw_topology, topology_summary
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario(scenario, overrides)
    c = sc.cluster
    G = build_topology(sc.hardware, c.nodes, c.gpus_per_node, last_node_gpus=c.last_node_gpus)
    click.echo(topology_summary(sc.hardware, c.nodes, c.gpus_per_node, G, c.last_node_gpus))
    folder = _out_dir(out, sc.name)
    png = draw_topology(G, folder / "topology.png")
    click.echo(f"\nwrote {png}")


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document.")
@_errors
def hardware(name: str | None, as_json: bool) -> None:
    """The shipped GPU profiles side by side, or one (NAME or a .yaml path) with its sources."""
    from simtrain.apps.hardware_list import hardware_command

    click.echo(hardware_command(name, as_json), nl=False)


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option(
    "--variants",
    required=True,
    help="Comma-separated: amp,checkpointing,lora,... or key=value lists.",
)
@click.option("--ladder", is_flag=True, help="Apply the variants cumulatively.")
@_out_folder(help="Output folder [plots/<name>/compare/].")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document.")
@click.option("--set", "overrides", multiple=True, help=SET_HELP, callback=_set_once)
@_errors
def compare(scenario: str, variants: str, ladder: bool, out: str | None, as_json: bool,
            overrides: tuple[str, ...]) -> None:  # fmt: skip
    """What each memory/speed technique buys and costs: table, CSV, JSON, ladder.png, tradeoff.png."""
    from simtrain.apps.compare import compare_command

    click.echo(compare_command(scenario, variants, ladder, out, as_json, overrides), nl=False)


@main.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document.")
@_out_folder(help="Output folder [plots/<plan name>/].")
@click.option("--workers", type=WholeNumber(min=1), default=None,
              help="Processes for the full simulations (more than the CPUs run as the CPUs) "
              "[the CPU count].")  # fmt: skip
@click.option(
    "--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True
)
@click.option("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786.")
@click.option("--top", type=WholeNumber(), default=None, help="Layouts simulated in full [32].")
@_errors
def plan(plan_file: str, as_json: bool, out: str | None, workers: int | None, executor: str,
         scheduler: str | None, top: int | None) -> None:  # fmt: skip
    """Find the layout and hardware that train a model soonest or cheapest (PLAN.yaml)."""
    from simtrain.apps.plan import plan_command

    click.echo(plan_command(plan_file, as_json, out, workers, executor, scheduler, top), nl=False)


@main.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document.")
@click.option("--only", default=None, help="Only records of this source key (e.g. megatron_sc21).")
@click.option("--by", type=click.Choice(["record", "family"]), default="record", show_default=True,
              help="record: a row per record and metric; family: figures per source family.")  # fmt: skip
@_out_folder(default="plots/validate", show_default=True)
@_errors
def validate(path: str | None, as_json: bool, only: str | None, by: str, out: str) -> None:
    """Simulate measured runs (default: the published runs in measured/) and report the error."""
    from simtrain.apps.validate import validate_command

    click.echo(validate_command(path, as_json, only, out, by), nl=False)


@main.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@_out_file(required=True, help="hardware/NAME.yaml")
@click.option("--threads", type=WholeNumber(min=1, max=MAX_TORCH_THREADS), default=None,
              help="torch CPU threads while calibrating [torch's default]")  # fmt: skip
@_errors
def calibrate(device: str, out: str, threads: int | None) -> None:
    """Measure matmul FLOP/s and memory bandwidth here and write a hardware profile (extra: measure)."""
    from simtrain.torchref.calibrate import calibrate_command

    click.echo(calibrate_command(device, out, threads=threads), nl=False)


@main.command("fit-network")
@click.argument("base")
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_out_file(required=True, help="hardware/NAME.yaml")
@click.option("--name", default=None, help="The profile's name [the --out file's stem].")
@_errors
def fit_network(base: str, logs: tuple[str, ...], out: str, name: str | None) -> None:
    """Fit a hardware profile's NVLink and network to your cluster's nccl-tests logs (largest
    message of each; logs inside one node fit NVLink, across nodes the network) and write it."""
    from simtrain.apps.network_fit import fit_network_command

    click.echo(fit_network_command(base, list(logs), out, name), nl=False)


@main.command("import")
@click.argument("kind", type=click.Choice(IMPORT_KINDS))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", default=None, help=MODEL_HELP)
@click.option("--gpus", type=WholeNumber(1, MAX_GPUS), default=None, help=GPUS_HELP)
@_out_file(help="Write the YAML here [stdout].")
@click.option("--set", "overrides", multiple=True, help=SET_HELP, callback=_set_once)
@click.option("--strict", is_flag=True, help="Exit 2 when the file has a setting simtrain "
              "does not simulate (without it they are listed on stderr and in the YAML).")  # fmt: skip
@_errors
def import_(kind: str, file: str, model: str | None, gpus: int | None, out: str | None,
            overrides: tuple[str, ...], strict: bool) -> None:  # fmt: skip
    """Translate a Megatron-LM script or flags file, a DeepSpeed ds_config.json (with --model),
    a torchtitan TOML or a nanotron YAML into a scenario YAML; every setting it does not
    simulate is listed."""
    import shlex

    from simtrain.apps.importers import import_command

    words = ["simtrain", "import", kind, file]
    words += (["--model", model] if model else []) + (["--gpus", str(gpus)] if gpus else [])
    words += [w for o in overrides for w in ("--set", o)]
    command = " ".join(shlex.quote(w) for w in words)
    click.echo(import_command(kind, file, model, gpus, out, overrides, strict, command, _warn),
               nl=False)  # fmt: skip


@main.command()
@click.argument("kind", type=click.Choice(["scenario", "plan"]), default="scenario",
                required=False)  # fmt: skip
@_out_file(help="Write the schema here [stdout].")
@_errors
def schema(kind: str, out: str | None) -> None:
    """Print the JSON Schema (draft 2020-12) of scenario or plan files, generated from the
    validation code; editors use it through the yaml-language-server modeline (README)."""
    from simtrain.apps.schema import schema_json

    text = schema_json(kind)
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)
