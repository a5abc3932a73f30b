"""The sweep configs under experiments/testbed run on the shipped testbed and its generated data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptqsam.config import ExperimentConfig
from ptqsam.instrument.recipe import load_recipe

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "testbed").glob("*.yaml"))


def test_there_are_testbed_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_testbed_config_is_valid(path: Path):
    config = ExperimentConfig.from_yaml(path)
    assert config.models == ("testbed",) and config.images is None
    for recipe in config.recipes:
        load_recipe(recipe)
