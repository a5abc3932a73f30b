"""build_model: layouts of the released checkpoints, determinism, packaged weights, the testbed."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from segment_anything import sam_model_registry

from ptqsam.errors import PtqsamError
from ptqsam.models import zoo
from ptqsam.models.testbed import TestbedConfig
from ptqsam.models.zoo import MODEL_TYPES, build_model, image_size, is_tiny_vit

# The TinySAM checkpoint layout (key -> shape, in checkpoint order), from REFERENCE.md §1.
TINYSAM_SHAPES = json.loads((Path(__file__).parent / "tinysam_state_dict_shapes.json").read_text())


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("model_type", ["tinysam", "mobilesam"])
def test_tiny_vit_layout_equals_released_checkpoint(model_type: str) -> None:
    state = build_model(model_type).state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == list(TINYSAM_SHAPES.items())
    assert len(state) == 439
    assert sum(v.numel() for v in state.values()) == 10_140_231
    assert sum(math.prod(shape) for shape in TINYSAM_SHAPES.values()) == 10_140_231


def test_tinysam_parameter_counts_match_reference() -> None:
    model = build_model("tinysam")
    encoder = model.image_encoder
    head = numel(encoder.head) + numel(encoder.norm_head)
    assert round(numel(encoder) / 1e6, 2) == 6.07
    assert round((numel(encoder) - head) / 1e6, 2) == 5.74
    assert round(numel(model.prompt_encoder) / 1e3, 1) == 6.2
    assert round(numel(model.mask_decoder) / 1e6, 2) == 4.06


def test_tinysam_encoder_full_size_forward() -> None:
    model = build_model("tinysam")
    with torch.no_grad():
        image = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
        embedding = model.image_encoder(image)
    assert embedding.shape == (1, 256, 64, 64)
    assert torch.isfinite(embedding).all()


def test_vit_b_is_segment_anything_registry_model_from_seed() -> None:
    model = build_model("vit_b", seed=3)
    torch.manual_seed(3)
    reference = sam_model_registry["vit_b"]()
    assert not model.training
    assert image_size(model) == 1024 and not is_tiny_vit(model)
    expected = reference.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_unknown_model_type_lists_known_ones() -> None:
    with pytest.raises(PtqsamError, match="unknown model type 'vit_x'") as error:
        build_model("vit_x")
    assert all(name in str(error.value) for name in MODEL_TYPES)
    assert set(MODEL_TYPES) == {"vit_b", "vit_l", "vit_h", "tinysam", "mobilesam", "testbed"}


def test_random_init_is_deterministic_and_leaves_global_rng_alone(random_testbed) -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first, second = random_testbed(), random_testbed()
    other = random_testbed(seed=1)
    assert torch.equal(torch.rand(3), expected_draw)
    second_state = second.state_dict()
    assert all(torch.equal(v, second_state[k]) for k, v in first.state_dict().items())
    assert not torch.equal(first.mask_decoder.iou_token.weight, other.mask_decoder.iou_token.weight)


def test_random_init_is_logged(caplog: pytest.LogCaptureFixture, random_testbed) -> None:
    with caplog.at_level(logging.INFO, logger="ptqsam"):
        random_testbed(seed=4)
    assert "no checkpoint: testbed randomly initialised with seed 4" in caplog.text


def test_packaged_fp16_weights_load_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = build_model("testbed", seed=9).state_dict()
    weights = {k: v.half() if v.is_floating_point() else v for k, v in source.items()}
    packaged = tmp_path / "testbed.pt"
    torch.save(weights, packaged)
    monkeypatch.setitem(zoo.PACKAGED_WEIGHTS, "testbed", packaged)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ptqsam"):
        model = build_model("testbed")
    assert "randomly initialised" not in caplog.text and str(packaged) in caplog.text
    for key, value in model.state_dict().items():
        assert value.dtype == (torch.float32 if value.is_floating_point() else weights[key].dtype)
        assert torch.equal(value, weights[key].to(value.dtype))


def test_missing_packaged_weights_fall_back_to_random_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(zoo.PACKAGED_WEIGHTS, "testbed", tmp_path / "absent.pt")
    with caplog.at_level(logging.INFO, logger="ptqsam"):
        build_model("testbed", seed=2)
    assert "no checkpoint: testbed randomly initialised with seed 2" in caplog.text


def test_testbed_architecture_and_config_record() -> None:
    config = TestbedConfig()
    model = build_model("testbed")
    encoder = model.image_encoder
    assert image_size(model) == 256 and not is_tiny_vit(model)
    assert encoder.patch_embed.proj.stride == (16, 16)
    assert encoder.pos_embed.shape == (1, 16, 16, 192)
    assert [block.window_size for block in encoder.blocks] == [8, 8, 0, 8, 8, 0]
    assert encoder.blocks[0].attn.num_heads == 6 and encoder.blocks[0].attn.use_rel_pos
    assert model.prompt_encoder.image_embedding_size == (16, 16)
    assert model.mask_decoder.transformer_dim == 128 and model.mask_decoder.num_mask_tokens == 4
    assert model.mask_decoder.transformer.layers[0].mlp.lin1.out_features == 512
    assert TestbedConfig(**dataclasses.asdict(config)) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.image_size = 512  # type: ignore[misc]


def test_testbed_box_prompt_gives_masks_at_image_size(box_prediction, testbed_image) -> None:
    model = build_model("testbed")
    single = box_prediction(model, testbed_image, [30.0, 40.0, 200.0, 180.0], multimask=False)
    multi = box_prediction(model, testbed_image, [30.0, 40.0, 200.0, 180.0], multimask=True)
    assert single["masks"].shape == (1, 1, 256, 256) and single["masks"].dtype == torch.bool
    assert multi["masks"].shape == (1, 3, 256, 256)
    assert multi["iou_predictions"].shape == (1, 3)
    assert multi["low_res_logits"].shape == (1, 3, 64, 64)
    assert torch.isfinite(multi["low_res_logits"]).all()


def test_tiny_vit_helpers() -> None:
    model = build_model("mobilesam")
    assert is_tiny_vit(model) and image_size(model) == 1024 and not model.training
