"""Reconstruction settings (validation, β schedule), recipes that extend others, the loss, and
QDrop's input mixing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ptqsam.errors import RecipeError
from ptqsam.instrument import Recipe, load_recipe
from ptqsam.reconstruction import ReconstructionConfig
from ptqsam.reconstruction.cache import TensorCache
from ptqsam.reconstruction.reconstruct import _Batch, _unit_inputs, reconstruction_loss


def test_beta_is_constant_during_the_warm_up_then_linear_to_its_end():
    config = ReconstructionConfig(iterations=100, warmup=0.2, beta_start=20.0, beta_end=2.0)
    assert [config.beta(t) for t in (0, 19)] == [20.0, 20.0]
    assert config.beta(20) == 20.0 and config.beta(60) == pytest.approx(11.0) and config.beta(100) == 2.0
    assert not config.regularised(19) and config.regularised(20)


@pytest.mark.parametrize("changes, message", [
    ({"unit": "window"}, "unit"), ({"iterations": 0}, "iterations"), ({"iterations": 2.5}, "iterations"),
    ({"drop_prob": 1.0}, "drop_prob"), ({"weight_lr": 0}, "weight_lr"), ({"loss": "kl"}, "loss"),
    ({"learn_activations": "yes"}, "learn_activations"), ({"warmup": 1.0}, "warmup"),
    ({"reference_drop_bug": True, "drop_prob": 0.0}, "needs drop_prob"), ({"steps": 3}, "unknown reconstruction key"),
])
def test_bad_settings_are_refused_naming_them(changes, message):
    with pytest.raises(RecipeError, match=message):
        ReconstructionConfig.from_dict(changes)


def test_a_recipe_extends_another_and_merges_its_reconstruction(tmp_path):
    (tmp_path / "base.yaml").write_text(load_recipe("qdrop").to_yaml())
    (tmp_path / "child.yaml").write_text("name: child\nextends: base.yaml\nreconstruction: {iterations: 7}\n")
    child, base = load_recipe(tmp_path / "child.yaml"), load_recipe("qdrop")
    assert child.name == "child" and child.rules == base.rules and child.keep_float == base.keep_float
    assert child.reconstruction_config() == base.reconstruction_config().with_overrides({"iterations": 7})
    assert Recipe.from_dict(child.to_dict()) == child  # the resolved recipe round-trips without extends
    (tmp_path / "loop.yaml").write_text("name: loop\nextends: loop.yaml\n")
    with pytest.raises(RecipeError, match="loop"):
        load_recipe(tmp_path / "loop.yaml")
    assert load_recipe("minmax").reconstruction_config() is None


def test_the_loss_sums_channels_averages_the_rest_and_weights_by_fisher_diagonal():
    out = torch.zeros(2, 3, 4)
    target = torch.ones(2, 3, 4)
    assert float(reconstruction_loss(out, target, None, channel_axis=-1)) == 4.0  # 4 channels, each error 1
    assert float(reconstruction_loss(out, target, None, channel_axis=1)) == 3.0
    assert float(reconstruction_loss((out, out[:, :1]), (target, target[:, :1]), None, -1)) == 8.0  # summed over outputs
    grads = (torch.full((2, 3, 4), -0.5),)
    assert float(reconstruction_loss(out, target, grads, -1)) == 4.0 * 1.5 ** 2  # (|g| + 1)², as BRECQ's code
    # SAM's mask loss gives gradients of ~1e-6 at a block output: the Fisher loss must stay the MSE
    # loss's size, not vanish with g² (~1e-12), which left the rounding to the regulariser alone
    tiny = (torch.full((2, 3, 4), 1e-6),)
    assert float(reconstruction_loss(out, target, tiny, -1)) == pytest.approx(4.0, rel=1e-5)
    assert float(reconstruction_loss(target, target, None, -1)) == 0.0


def test_qdrop_mixes_block_inputs_elementwise_with_its_probability():
    config = ReconstructionConfig(drop_prob=0.3)
    batch = _Batch(inputs=((torch.zeros(100, 100),), {"pe": torch.zeros(10)}),  # the quantized prefix's
                   float_inputs=((torch.ones(100, 100),), {"pe": torch.ones(10)}), targets=None, grads=None,
                   decoder_calls=None, target_responses=None)
    (x,), kwargs = _unit_inputs(batch, config, torch.Generator().manual_seed(0))
    assert set(x.unique().tolist()) == {0.0, 1.0}  # every element comes from one side or the other
    assert abs(float(x.mean()) - 0.3) < 0.02  # the float model's with probability drop_prob
    assert kwargs["pe"].shape == (10,)
    # float inputs cached for the response term alone: no mixing without QDrop
    assert _unit_inputs(batch, ReconstructionConfig(drop_prob=0.0), torch.Generator()) is batch.inputs


def test_the_unit_cache_spills_beyond_its_budget_and_reads_back_exactly():
    items = [((torch.randn(50, 8),), {"k": torch.randn(3)}) for _ in range(4)]
    cache = TensorCache(budget=2 * (50 * 8 + 3) * 4)  # room for two items in memory
    for item in items:
        cache.append(item)
    assert len(cache) == 4 and cache.spilled == 2
    for i, ((x,), kwargs) in enumerate(items):
        (y,), loaded = cache[i]
        assert torch.equal(x, y) and torch.equal(kwargs["k"], loaded["k"])
    folder = cache._spill.name
    cache.close()
    assert len(cache) == 0 and not Path(folder).exists()
