"""The registry: parts register next to their class, specs are checked against it, builders use it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from quantizers import OBSERVERS, QUANTIZERS, SEARCHES, Options, QuantSpec, Quantizer, build_quantizer
from quantizers.errors import QuantizationError
from quantizers.options import check_int
from quantizers.registry import Registry


def test_every_shipped_part_is_registered_with_an_options_dataclass():
    assert list(QUANTIZERS) == ["channel_groups", "hluq", "log", "twin_gelu", "twin_softmax", "uniform"]
    assert list(OBSERVERS) == ["avg_minmax", "ema_minmax", "kl", "minmax", "mse", "percentile"]
    assert list(SEARCHES) == ["gptq", "hessian", "none", "pcc"]
    for registry in (QUANTIZERS, OBSERVERS, SEARCHES):
        for name in registry:
            entry = registry.get(name)
            assert entry.cls.kind == name and issubclass(entry.options, Options)
            entry.options()  # the defaults are valid


def test_a_spec_builds_the_options_dataclass_and_rejects_unknown_keys_and_bad_values():
    spec = QuantSpec(observer="mse", observer_options={"p": 2.4}, quantizer="log", quantizer_options={"taus": [2]})
    assert spec.observer_config.p == 2.4 and spec.observer_config.steps == 100
    assert spec.quantizer_config.taus == (2.0,)
    with pytest.raises(QuantizationError, match="unknown observer 'mse' option key.*'q'"):
        QuantSpec(observer="mse", observer_options={"q": 1})
    with pytest.raises(QuantizationError, match="mse option 'steps'"):
        QuantSpec(observer="mse", observer_options={"steps": 0})


def test_registering_a_name_twice_with_another_class_is_refused():
    registry: Registry = Registry("thing")

    @registry.register("a")
    class A:
        pass

    registry.register("a")(A)  # the same class again is harmless
    with pytest.raises(QuantizationError, match="already registered"):
        @registry.register("a")
        class B:
            pass
    with pytest.raises(QuantizationError, match="unknown thing 'b'; choose one of \\['a'\\]"):
        registry.get("b")
    with pytest.raises(QuantizationError, match="Options dataclass"):
        registry.register("c", options=dict)


@dataclass(frozen=True)
class _ClipOptions(Options):
    fraction_percent: int = 50

    def __post_init__(self) -> None:
        check_int(self.fraction_percent, "fraction_percent", 1, 100)


def test_a_new_kind_is_one_class_and_its_decorator():
    @QUANTIZERS.register("toy_clip", _ClipOptions)
    class ClipQuantizer(Quantizer):
        """Clips to a fraction of the largest |x| seen."""

        def __init__(self, spec: QuantSpec) -> None:
            super().__init__(spec)
            self.register_buffer("amax", torch.zeros(()))

        def observe(self, x, *context):
            self.amax = torch.maximum(self.amax, x.abs().max())

        def _finalize(self):
            self.amax = self.amax * self.spec.quantizer_config.fraction_percent / 100

        def fake_quantize(self, x):
            return x.clamp(-self.amax, self.amax)

    try:
        with pytest.raises(QuantizationError, match="fraction_percent"):
            QuantSpec(quantizer="toy_clip", quantizer_options={"fraction_percent": 0})
        quantizer = build_quantizer(QuantSpec(quantizer="toy_clip", quantizer_options={"fraction_percent": 25}))
        assert isinstance(quantizer, ClipQuantizer)
        quantizer.observe(torch.tensor([-4.0, 2.0]))
        quantizer.finalize()
        assert torch.equal(quantizer.fake_quantize(torch.tensor([-3.0, 0.5, 3.0])), torch.tensor([-1.0, 0.5, 1.0]))
        assert quantizer.levels() is None and quantizer.summary().startswith("toy_clip 8b tensor")
    finally:
        QUANTIZERS.unregister("toy_clip")
    with pytest.raises(QuantizationError, match="unknown quantizer 'toy_clip'"):
        QuantSpec(quantizer="toy_clip")


@pytest.mark.parametrize("changes, message", [
    ({"symmetric": False}, "symmetric: true"),
    ({"symmetric": True, "signed": False}, "signed: true"),
    ({"symmetric": True, "granularity": {"kind": "group", "axis": 0, "group_size": 4}}, "per-tensor or per-channel"),
])
def test_the_hessian_search_refuses_grids_it_cannot_search(changes, message):
    spec = QuantSpec(search="hessian", **changes)  # a spec on its own may name any search ...
    with pytest.raises(QuantizationError, match=message):
        spec.check_search()  # ... but the search says it cannot serve it
    QuantSpec(search="hessian", symmetric=True).check_search()
    QuantSpec(search="hessian", quantizer="twin_softmax").check_search()  # twin grids are fitted on the objective
