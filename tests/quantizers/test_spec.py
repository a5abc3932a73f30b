"""QuantSpec and Granularity: dict / YAML round trips and validation messages."""

from __future__ import annotations

import pytest
import yaml

from quantizers.errors import QuantizationError
from dataclasses import fields

from quantizers.registry import OBSERVERS
from quantizers.spec import Granularity, QuantSpec

SPECS = [
    QuantSpec(),
    QuantSpec(bits=4, symmetric=True, signed=False, observer="percentile", observer_options={"percentile": 99.9}),
    QuantSpec(bits=6, granularity=Granularity("channel", -1), observer="mse", observer_options={"p": 2.4, "steps": 50}),
    QuantSpec(bits=16, granularity={"kind": "group", "axis": 1, "group_size": 64}, observer="kl"),
    QuantSpec(bits=2, quantizer="log", quantizer_options={"taus": [1, 2, 4], "p": 2.4}),
    QuantSpec(search="hessian", search_options={"alpha": 0.01, "beta": 1.2, "n": 100}),
]


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_through_dict(spec: QuantSpec) -> None:
    data = spec.to_dict()
    assert QuantSpec.from_dict(data) == spec
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # only plain built-in types


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_through_yaml(spec: QuantSpec) -> None:
    assert QuantSpec.from_yaml(spec.to_yaml()) == spec


def test_yaml_written_by_hand_is_read() -> None:
    text = "bits: 6\nsymmetric: true\ngranularity: channel\nobserver: mse\nobserver_options: {p: 2.4}\n"
    spec = QuantSpec.from_yaml(text)
    assert spec == QuantSpec(bits=6, symmetric=True, granularity=Granularity("channel"), observer="mse",
                             observer_options={"p": 2.4})


@pytest.mark.parametrize(
    "granularity",
    [Granularity(), Granularity("channel", 2), Granularity("channel", -1), Granularity("group", 0, 32)],
)
def test_granularity_round_trip(granularity: Granularity) -> None:
    assert Granularity.from_value(granularity.to_dict()) == granularity
    assert Granularity.from_value(granularity) is granularity


def test_granularity_from_a_kind_name() -> None:
    assert Granularity.from_value("channel") == Granularity("channel", 0)


def test_options_are_copied_so_the_caller_cannot_mutate_a_spec() -> None:
    options = {"p": 2.0}
    spec = QuantSpec(observer="mse", observer_options=options)
    options["p"] = 3.0
    assert spec.observer_options == {"p": 2.0}


def test_replace_validates_the_new_spec() -> None:
    assert QuantSpec().replace(bits=4).bits == 4
    with pytest.raises(QuantizationError, match="bits"):
        QuantSpec().replace(bits=20)


@pytest.mark.parametrize("bits", [1, 17, 0, True, "8", 8.0, None])
def test_bad_bits_are_rejected_naming_the_value(bits) -> None:
    with pytest.raises(QuantizationError, match=f"bits must be an integer in \\[2, 16\\], got {bits!r}"):
        QuantSpec(bits=bits)


@pytest.mark.parametrize(
    "data,names",
    [
        ({"bits": 8, "colour": "red"}, ["unknown quant spec key", "colour"]),
        ({"observer": "median"}, ["unknown observer", "median"]),
        ({"quantizer": "ternary"}, ["unknown quantizer", "ternary"]),
        ({"search": "genetic"}, ["unknown search", "genetic"]),
        ({"observer": "mse", "observer_options": {"q": 2}}, ["observer 'mse' option", "q"]),
        ({"observer": "minmax", "observer_options": {"p": 2}}, ["observer 'minmax' option", "p"]),
        ({"quantizer": "log", "quantizer_options": {"base": 2}}, ["quantizer 'log' option", "base"]),
        ({"observer_options": [1]}, ["observer_options must be a mapping"]),
        ({"symmetric": "yes"}, ["symmetric must be true or false", "yes"]),
        ({"granularity": 3}, ["granularity must be a string or a mapping"]),
        ({"granularity": {"kind": "channel", "size": 3}}, ["unknown granularity key", "size"]),
        ({"granularity": "row"}, ["granularity kind", "row"]),
        ({"granularity": {"kind": "group"}}, ["group_size >= 1"]),
        ({"granularity": {"kind": "channel", "group_size": 4}}, ["group_size is only meaningful"]),
    ],
)
def test_bad_specs_are_rejected_naming_the_problem(data: dict, names: list[str]) -> None:
    with pytest.raises(QuantizationError) as caught:
        QuantSpec.from_dict(data)
    for name in names:
        assert name in str(caught.value)


def test_a_spec_must_be_a_mapping() -> None:
    with pytest.raises(QuantizationError, match="must be a mapping, got list"):
        QuantSpec.from_dict([("bits", 8)])
    with pytest.raises(QuantizationError, match="must be a mapping"):
        QuantSpec.from_yaml("- 8\n- 4\n")


@pytest.mark.parametrize("observer", sorted(OBSERVERS))
def test_every_observer_accepts_its_documented_options(observer: str) -> None:
    documented = OBSERVERS.get(observer).options
    options = {f.name: getattr(documented(), f.name) for f in fields(documented)}
    assert QuantSpec(observer=observer, observer_options=options).observer_options == options
