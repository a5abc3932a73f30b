"""Channel-aware grouping (CAG): per-channel qparams merged by k-means at the milestones down to
the final number of groups, every channel in one group, learnable scales kept learnable."""

from __future__ import annotations

import pytest
import torch

from quantizers import Granularity, Mode, QuantSpec, build_quantizer
from quantizers.errors import QuantizationError

SPEC = QuantSpec(bits=4, granularity=Granularity("channel", -1), observer="avg_minmax", quantizer="channel_groups")


def _calibrated(spec: QuantSpec = SPEC):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=generator) * torch.linspace(0.1, 5, 64) + torch.linspace(-2, 2, 64)
    quantizer = build_quantizer(spec)
    quantizer.observe(x)
    quantizer.finalize()
    quantizer.mode = Mode.QUANTIZE
    return quantizer, x


def test_before_grouping_it_is_the_per_channel_uniform_quantizer():
    quantizer, x = _calibrated()
    uniform = build_quantizer(SPEC.replace(quantizer="uniform"))
    uniform.observe(x)
    uniform.finalize()
    assert torch.equal(quantizer.fake_quantize(x), uniform.fake_quantize(x))
    assert quantizer.num_groups == 64 and quantizer.milestones() == (0.2, 0.4, 0.6, 0.8)


def test_the_milestones_halve_the_groups_down_to_g_and_every_channel_is_in_one():
    quantizer, x = _calibrated()
    quantizer.learn()
    for index, expected in enumerate((32, 16, 8, 4)):
        scale, zero_point = (v.detach().clone() for v in quantizer.group_qparams())
        quantizer.at_milestone(index)
        labels = quantizer.channel_group
        assert quantizer.num_groups == expected and set(labels.tolist()) == set(range(expected))
        assert labels.shape == (64,)
        for group in range(expected):  # each group: mean scale, rounded mean zero point of its channels
            members = labels == group
            assert float(quantizer.scale.detach()[group]) == pytest.approx(float(scale[members].double().mean()), rel=1e-6)
            assert int(quantizer.zero_point[group]) == round(float(zero_point[members].double().mean()))
        assert isinstance(quantizer.scale, torch.nn.Parameter)  # still learned
    out = quantizer.fake_quantize(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert quantizer.scale.grad.shape == (4,)
    with pytest.raises(QuantizationError, match="milestone 4"):
        quantizer.at_milestone(4)


def test_grouping_saves_and_loads():
    quantizer, x = _calibrated(SPEC.replace(quantizer_options={"groups": 2, "milestones": [0.5]}))
    quantizer.at_milestone(0)
    assert quantizer.num_groups == 2
    fresh = build_quantizer(quantizer.spec)
    fresh.load_state_dict(quantizer.state_dict())
    assert torch.equal(fresh.fake_quantize(x), quantizer.fake_quantize(x))
    assert "2 groups" in fresh.levels().description


@pytest.mark.parametrize("options, message", [({"groups": 0}, "groups"), ({"milestones": [0.5, 0.2]}, "increasing"),
                                              ({"milestones": [1.0]}, "increasing")])
def test_bad_options_are_refused(options, message):
    with pytest.raises(QuantizationError, match=message):
        SPEC.replace(quantizer_options=options)


def test_a_group_scale_learns_with_lsqs_gradient_for_all_of_its_channels():
    """LSQ scales a step's gradient by 1/sqrt(N·qmax), N = the elements the step quantizes: for a
    group's scale, every element of all its channels (not one channel's, which would leave the
    gradient √(group size) too large)."""
    quantizer, x = _calibrated()
    quantizer.learn()
    for index in range(4):
        quantizer.at_milestone(index)
    quantizer.fake_quantize(x).square().sum().backward()
    sizes = torch.bincount(quantizer.channel_group).tolist()
    assert len(set(sizes)) > 1  # groups of several sizes
    for group in range(quantizer.num_groups):
        members = quantizer.channel_group == group
        alone = build_quantizer(SPEC.replace(quantizer="uniform", granularity=Granularity("tensor")))
        alone.set_qparams(quantizer.scale.detach()[group].reshape(1), quantizer.zero_point[group].reshape(1))
        alone.learn()
        alone.mode = Mode.QUANTIZE
        alone.fake_quantize(x[:, members].contiguous()).square().sum().backward()
        torch.testing.assert_close(quantizer.scale.grad[group], alone.scale.grad.reshape(()), rtol=1e-5, atol=0)
