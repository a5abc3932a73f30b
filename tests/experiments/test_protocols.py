"""Every protocol config under experiments/protocols is a valid sweep config with the settings of
the protocol it reproduces."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptqsam.config import ExperimentConfig
from ptqsam.instrument.recipe import load_recipe, parse_bits
from ptqsam.models import MODEL_TYPES

PROTOCOLS = Path(__file__).resolve().parents[2] / "experiments" / "protocols"
CONFIGS = sorted(PROTOCOLS.rglob("*.yaml"))
OFFICIAL_CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
    "tinysam": "tinysam_42.3.pth",
    "mobilesam": "mobile_sam.pt",
}


def load(path: Path) -> ExperimentConfig:
    return ExperimentConfig.from_yaml(path)


def in_folder(folder: str) -> list[Path]:
    return [path for path in CONFIGS if path.parent.name == folder]


def test_every_protocol_folder_has_configs():
    assert {path.parent.name for path in CONFIGS} == {"ptq4sam", "q_tinysam", "gt_box_miou"}
    assert all(path.parent.parent == PROTOCOLS for path in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_is_valid(path: Path):
    config = load(path)
    for recipe in config.recipes:
        load_recipe(recipe)
    for bits in config.bits:
        parse_bits(bits)
    assert set(config.models) <= set(MODEL_TYPES)
    assert set(config.checkpoints) == set(config.models)
    for model, checkpoint in config.checkpoints.items():
        assert Path(checkpoint).name == OFFICIAL_CHECKPOINTS[model]
    paths = [config.images, config.annotations, config.detections, config.out, *config.checkpoints.values()]
    assert all(p is None or not Path(p).is_absolute() for p in paths), "paths are relative to the data root"
    assert config.images == "data/coco/val2017"
    assert config.annotations == "data/coco/annotations/instances_val2017.json"
    assert config.eval_images == 0 and config.quantize_encoder


def test_results_folders_differ():
    # A sweep skips the cells already in its results folder: two protocols sharing one would mix.
    outs = [load(path).out for path in CONFIGS]
    assert len(set(outs)) == len(outs)


@pytest.mark.parametrize("path", in_folder("ptq4sam"), ids=lambda p: p.stem)
def test_ptq4sam_settings(path: Path):
    config = load(path)
    assert config.models[0] in ("vit_b", "vit_l", "vit_h") and len(config.models) == 1
    assert config.prompt == "detections" and config.detections
    assert (config.calib_images, config.multimask, config.score_with_iou) == (32, False, True)
    assert "ptq4sam" in config.recipes and set(config.bits) == {"W6A6", "W4A4"}
    assert {"qdrop", "ptq4sam-l", "ptq4sam-l-reference-bug"} <= set(config.recipes)  # fixed / bug-compatible pair
    assert {"ahcptq", "saq-sam", "repq-vit", "gptq"} <= set(config.recipes)  # the 2025-26 methods
    for recipe in ("ahcptq", "saq-sam", "repq-vit", "gptq"):
        assert f"`{recipe}`" in path.read_text()  # its published number (or that none exists) and differences
    fixed, bug = (load_recipe(name).reconstruction_config() for name in ("ptq4sam-l", "ptq4sam-l-reference-bug"))
    assert fixed.iterations == 20000 and fixed.drop_prob == 0.5 and fixed.with_overrides({"reference_drop_bug": True}) == bug


@pytest.mark.parametrize("path", in_folder("q_tinysam"), ids=lambda p: p.stem)
def test_q_tinysam_settings(path: Path):
    config = load(path)
    assert config.models[0] in ("tinysam", "mobilesam") and len(config.models) == 1
    assert config.prompt == "detections" and Path(config.detections).name == "vitdet_h_val2017.json"
    assert (config.calib_images, config.multimask, config.score_with_iou) == (8, True, False)
    assert "ptq4vit" in config.recipes and set(config.bits) == {"W8A8", "W6A6"}


def test_gt_box_miou_covers_the_survey_models():
    configs = [load(path) for path in in_folder("gt_box_miou")]
    assert sorted(m for c in configs for m in c.models) == ["mobilesam", "tinysam", "vit_h"]
    for config in configs:
        assert config.prompt == "box" and config.detections is None and config.multimask
