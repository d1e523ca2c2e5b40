"""Shared fixtures: the project's published measured runs, loaded once per test session."""

from __future__ import annotations

import pytest

from simtrain.apps.validate import PACKAGED_PATH, Record, load_records


@pytest.fixture(scope="session")
def published_records() -> dict[str, Record]:
    """measured/published_runs.yaml by record id (the file ``simtrain validate`` reads)."""
    return {r.id: r for r in load_records(PACKAGED_PATH)}
