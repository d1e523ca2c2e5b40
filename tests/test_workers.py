"""Worker processes on this machine (simtrain.apps.workers): a request is clamped to the CPUs
(``simtrain plan --workers 100000`` had the kernel kill the run on a 24 GiB machine), 0 or
fewer is refused, and ``SIMTRAIN_WORKERS`` is read as ASCII digits (``"²"`` passed
``str.isdigit`` and was int()'s traceback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from simtrain.apps.plan.execute import LocalExecutor
from simtrain.apps.validate.predict import _default_workers
from simtrain.apps.workers import WORKERS_ENV, cpu_count, env_workers, local_workers
from simtrain.cli import main
from simtrain.errors import ConfigError

PLAN = Path(__file__).resolve().parents[1] / "plans" / "llama3_8b.yaml"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux's process affinity")
def test_cpu_count_is_this_process_affinity() -> None:
    assert cpu_count() == len(os.sched_getaffinity(0)) >= 1


@pytest.mark.parametrize("requested", [1, 2, 3, 64, 100_000])
def test_a_request_is_clamped_to_the_cpus(requested: int) -> None:
    assert local_workers(requested) == min(requested, cpu_count())
    assert LocalExecutor(requested).workers == min(requested, cpu_count())  # no pool started


def test_the_default_is_the_cpus_under_its_cap() -> None:
    assert local_workers(None) == local_workers(0) == cpu_count()  # (0: the executors' default)
    assert local_workers(-3) == 1
    assert local_workers(None, default_cap=1) == 1
    assert local_workers(None, default_cap=10**6) == cpu_count()


def test_env_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert env_workers() is None
    assert _default_workers() == min(4, cpu_count())
    monkeypatch.setenv(WORKERS_ENV, " 1 ")
    assert env_workers() == 1 and _default_workers() == 1
    monkeypatch.setenv(WORKERS_ENV, "0")  # serial, as before
    assert env_workers() == 1 and _default_workers() == 1
    monkeypatch.setenv(WORKERS_ENV, "100000")
    assert env_workers() == 100_000 and _default_workers() == cpu_count()


@pytest.mark.parametrize("raw", ["-2", "²", "1.5", "two", "3x", "auto"])
def test_env_workers_refuses_what_is_not_a_count(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(WORKERS_ENV, raw)
    with pytest.raises(ConfigError) as info:
        env_workers()
    assert info.value.key == WORKERS_ENV


def test_validate_names_a_bad_env_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's one-line error, no traceback, before any record is read: it had come after
    the translation, whose progress line (printed after report.progress's 2 s delay) then
    came first on a busy machine (the CI run at 308d292, 605 s, failed so)."""
    monkeypatch.setenv(WORKERS_ENV, "²")
    r = CliRunner().invoke(main, ["validate", "--only", "megatron_sc21"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert r.stderr.strip().startswith(f"error: {WORKERS_ENV}:")


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_plan_refuses_fewer_than_one_worker(workers: str) -> None:
    """--workers 0 and -3 were read as the default and as 1, silently."""
    r = CliRunner().invoke(main, ["plan", str(PLAN), "--workers", workers])
    assert r.exit_code == 2 and "--workers" in r.output, r.output


def test_plan_top_has_the_plan_files_bound() -> None:
    """--top 99,999,999,999 was accepted (every layout simulated in full) where a plan file's
    top is at most MAX_TOP: the option takes the same bound."""
    from simtrain.apps.plan.file import MAX_TOP

    r = CliRunner().invoke(main, ["plan", str(PLAN), "--top", str(MAX_TOP + 1)])
    assert r.exit_code == 2 and f"--top: must be 1 to {MAX_TOP:,}" in r.stderr, r.output


def test_compare_takes_at_most_max_variants() -> None:
    """150 variants of a 2,048-GPU scenario ran past a minute (a fuzz campaign): more than
    MAX_VARIANTS is a one-line error naming --variants, before anything is simulated."""
    from simtrain.apps.compare.command import MAX_VARIANTS

    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "gpipe_8gpu.yaml"
    many = ",".join(["amp"] * (MAX_VARIANTS + 1))
    r = CliRunner().invoke(main, ["compare", str(scenario), "--variants", many])
    assert r.exit_code == 2 and f"at most {MAX_VARIANTS} side by side" in r.stderr, r.output
