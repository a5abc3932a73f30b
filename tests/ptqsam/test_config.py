"""ExperimentConfig: YAML round trip and clear errors."""

from __future__ import annotations

import pytest

from ptqsam.config import ConfigError, ExperimentConfig


def test_yaml_round_trip(tmp_path):
    config = ExperimentConfig(models=["testbed", "tinysam"], recipes=["ptq4sam"], bits=["W6A6"], calib_images=8,
                              checkpoints={"tinysam": "/x/tinysam_42.3.pth"}, prompt="center_point",
                              calib_images_dir="/x/train2017", calib_annotations="/x/instances_train2017.json")
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert ExperimentConfig.from_yaml(path) == config
    for changes in ({"calib_sets": [3, 7], "float_sites": ["mask_decoder.*"]}, {"calib_sets": 3, "float_sites": "ptq4sam"}):
        changed = config.replace(**changes)
        path.write_text(changed.to_yaml())
        assert ExperimentConfig.from_yaml(path) == changed


def test_calibration_seeds():
    assert ExperimentConfig(seed=5).calibration_seeds() == (5,)
    assert ExperimentConfig(seed=5, calib_sets=3).calibration_seeds() == (5, 6, 7)
    assert ExperimentConfig(seed=5, calib_sets=[9, 2]).calibration_seeds() == (9, 2)


@pytest.mark.parametrize("data, message", [
    ({"modelz": ["testbed"]}, "modelz"),
    ({"prompt": "scribble"}, "scribble"),
    ({"device": "tpu"}, "tpu"),
    ({"images": "/x"}, "images and annotations"),
    ({"calib_annotations": "/x.json"}, "calib_images_dir and calib_annotations"),
    ({"calib_images": 0}, "calib_images"),
    ({"prompt": "detections"}, "detections"),
    ({"bits": []}, "bits"),
    ({"calib_sets": 0}, "calib_sets"),
    ({"calib_sets": [1, 1]}, "calib_sets"),
    ({"calib_sets": [1.5]}, "calib_sets"),
    ({"calib_sets": [-1, -2]}, "calib_sets"),
    ({"calib_sets": [2**64]}, "calib_sets"),
    ({"seed": 2**64}, r"seed must be <= 9223372036854775807"),
    ({"recipes": ["minmax", "gptq"], "recipe_bits": {"gptq": []}}, r"recipe_bits gives recipe\(s\) \['gptq'\] no bits"),
    ({"bits": ["W8A8", "w8a8"]}, r"config bits lists \['W8A8'\] more than once"),
    ({"recipes": ["minmax", "minmax"]}, r"config recipes lists \['minmax'\] more than once"),
    ({"float_sites": ""}, "float_sites"),
    ({"float_sites": ["a", 3]}, "float_sites"),
])
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ExperimentConfig.from_yaml(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [testbed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ExperimentConfig.from_yaml(bad)


def test_empty_file_and_wrong_types_are_errors(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match="is empty"):
        ExperimentConfig.from_yaml(empty)
    for data, message in (({"quantize_encoder": "no"}, "quantize_encoder must be true or false"),
                          ({"bits": 8}, "bits must be a list of strings"),
                          ({"checkpoints": "x.pth"}, "checkpoints must be a mapping"),
                          ({"out": ["a"]}, "out must be a string")):
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig.from_dict(data)
    assert ExperimentConfig.from_dict({"quantize_encoder": False, "checkpoints": None, "bits": "W4A4"}).bits == ("W4A4",)
