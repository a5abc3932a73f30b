"""docs/extending.md runs as written and lists every key of the recipe schema and every registered part.

Its ``# file: NAME`` blocks are written to a fresh folder on the Python path; its other Python blocks
run there, in order, in one namespace (as a reader would paste them into one session).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

from ptqsam.instrument.recipe import TRANSFORM_CONFIGS, Recipe, Rule, Transform
from ptqsam.reconstruction.config import ReconstructionConfig
from quantizers import OBSERVERS, QUANTIZERS, SEARCHES, Granularity, QuantSpec

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCKS = re.findall(r"```(python|yaml)\n(.*?)```", PAGE.read_text(), flags=re.S)
FILE = re.compile(r"# file: (\S+)\n")


def files(blocks=BLOCKS) -> dict[str, str]:
    """The page's ``# file: NAME`` blocks: name -> text."""
    return {match[1]: code for _, code in blocks if (match := FILE.match(code))}


def _registered() -> dict[str, set[str]]:
    return {registry.what: set(registry) for registry in (QUANTIZERS, OBSERVERS, SEARCHES)}


@pytest.fixture
def page_folder(tmp_path, monkeypatch):
    """A folder holding the page's files, on the Python path, as the working folder; the parts the
    page registers and the modules it imports are forgotten afterwards."""
    for name, code in files().items():
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before, modules = _registered(), set(sys.modules)
    yield tmp_path
    for registry in (QUANTIZERS, OBSERVERS, SEARCHES):
        for name in set(registry) - before[registry.what]:
            registry.unregister(name)
    for module in [name[:-3] for name in files() if name.endswith(".py")]:
        if module not in modules:
            sys.modules.pop(module, None)


def test_the_page_has_its_walk_throughs():
    assert {"pow2_quantizer.py", "absmean_observer.py", "pow2.yaml", "schema-example.yaml"} <= set(files())
    for heading in ("## The recipe schema", "## A quantizer kind", "## An observer", "## A model", "## A metric"):
        assert heading in PAGE.read_text()


def test_the_blocks_run(page_folder):
    namespace: dict = {}
    scripts = [code for lang, code in BLOCKS if lang == "python" and not FILE.match(code)]
    assert len(scripts) >= 5
    for index, code in enumerate(scripts):
        exec(compile(code, f"docs/extending.md python block {index}", "exec"), namespace)
    assert {"pow2", "absmean"} <= set(QUANTIZERS) | set(OBSERVERS)


def _documented_keys() -> set[str]:
    """Every key a recipe file may hold (the ``extends`` extras included)."""
    keys = {"extends", "prepend_rules"}
    for cls in (Recipe, Rule, Transform, QuantSpec, Granularity, ReconstructionConfig, *TRANSFORM_CONFIGS.values()):
        keys |= {field.name for field in dataclasses.fields(cls)}
    return keys


def test_every_schema_key_is_documented():
    text = PAGE.read_text()
    missing = sorted(key for key in _documented_keys() if f"`{key}`" not in text and f"{key}:" not in text)
    assert not missing, f"docs/extending.md does not document {missing}"


def test_every_registered_part_and_option_is_documented():
    text = PAGE.read_text()
    missing = []
    for registry in (QUANTIZERS, OBSERVERS, SEARCHES):
        for name in registry:
            entry = registry.get(name)
            missing += [f"{registry.what} {name}"] if f"`{name}`" not in text else []
            missing += [f"{name} option {f.name}" for f in dataclasses.fields(entry.options) if f"`{f.name}`" not in text]
    assert not missing, f"docs/extending.md does not document {missing}"


def test_the_schema_example_uses_every_top_level_key():
    example = files()["schema-example.yaml"]
    top = set(re.findall(r"^(\w+):", example, flags=re.M))
    assert top == {field.name for field in dataclasses.fields(Recipe)} | {"extends", "prepend_rules"}
