"""The Pareto run cache: a record is reused only under the settings that made it."""

from __future__ import annotations

import logging

import pytest

from ptqsam.mixed_precision.pareto import RunCache

RECIPE = {"name": "r", "rules": []}


@pytest.fixture
def cache(tmp_path):
    cache = RunCache(tmp_path, {"weights": "sha-a", "seed": 0})
    cache.put("r W4A4", RECIPE, 4, 4, {"site": 4}, {"miou": 0.5})
    return cache


def test_a_record_is_reused_under_the_same_settings_only(cache, tmp_path, caplog):
    assert cache.get("r W4A4", RECIPE, 4, 4)["metrics"] == {"miou": 0.5}
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        assert cache.get("r W4A4", RECIPE, 6, 6) is None
        assert RunCache(tmp_path, {"weights": "sha-b", "seed": 0}).get("r W4A4", RECIPE, 4, 4) is None
        assert cache.get("r W4A4", {**RECIPE, "name": "s"}, 4, 4) is None
    changed = ["(a_bits, w_bits)", "(key.weights)", "(recipe.name)"]
    assert len(caplog.messages) == 3 and all(c in m for c, m in zip(changed, caplog.messages)), caplog.messages


@pytest.mark.parametrize("content", ["", "{", "[1]", '{"key": null}', "\udcff"])
def test_an_unreadable_record_is_run_again(cache, tmp_path, caplog, content):
    path = next(tmp_path.glob("*.json"))
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.WARNING, logger="ptqsam"):
        assert cache.get("r W4A4", RECIPE, 4, 4) is None
    assert "cannot read" in caplog.text
