"""Checkpoint loading: round trips, accepted wrappers, and one clear error per bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ptqsam.errors import CheckpointError
from ptqsam.models.checkpoint import checkpoint_sha256, load_checkpoint, read_state_dict
from ptqsam.models.zoo import build_model


@pytest.fixture
def testbed_file(tmp_path: Path, random_testbed) -> Path:
    path = tmp_path / "testbed.pt"
    torch.save(random_testbed(seed=1).state_dict(), path)
    return path


def assert_same_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_testbed_round_trip_gives_identical_outputs(
    testbed_file: Path, box_prediction, testbed_image, random_testbed
) -> None:
    source = random_testbed(seed=1)
    loaded = build_model("testbed", checkpoint=testbed_file, seed=0)
    box = [10.0, 20.0, 120.0, 250.0]
    expected = box_prediction(source, testbed_image, box, multimask=True)
    got = box_prediction(loaded, testbed_image, box, multimask=True)
    assert torch.equal(got["low_res_logits"], expected["low_res_logits"])
    assert torch.equal(got["iou_predictions"], expected["iou_predictions"])
    assert not torch.equal(
        got["low_res_logits"],
        box_prediction(random_testbed(seed=0), testbed_image, box, True)["low_res_logits"],
    )


def test_tinysam_round_trip(tmp_path: Path) -> None:
    state = build_model("tinysam", seed=1).state_dict()
    path = tmp_path / "tinysam.pth"
    torch.save(state, path)
    model = build_model("tinysam", checkpoint=path, seed=0)
    assert_same_state(model, state)
    assert not model.training


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_nested_state_dict_is_accepted(tmp_path: Path, wrapper: str) -> None:
    state = build_model("testbed", seed=1).state_dict()
    path = tmp_path / "nested.pt"
    torch.save({wrapper: state, "epoch": 3}, path)
    model = build_model("testbed", seed=0)
    load_checkpoint(model, path, "testbed")
    assert_same_state(model, state)


def test_fp16_checkpoint_is_cast_to_model_dtype(tmp_path: Path) -> None:
    state = build_model("testbed", seed=1).state_dict()
    path = tmp_path / "half.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    model = build_model("testbed", checkpoint=path)
    weight = model.mask_decoder.iou_token.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, state["mask_decoder.iou_token.weight"].half().float())


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "sam.pth"
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {path}"):
        build_model("testbed", checkpoint=path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_state_dict(tmp_path)  # a directory is not a checkpoint file


def test_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match=f"{path} is not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_truncated_file_is_not_a_checkpoint(testbed_file: Path) -> None:
    data = testbed_file.read_bytes()
    testbed_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint .*truncated"):
        read_state_dict(testbed_file)


@pytest.mark.parametrize(
    "content, described",
    [
        ([1, 2, 3], "got a list"),
        ({"weights": "abc"}, r"got a dict of 1 entries \(str\)"),
        ({}, r"got a dict of 0 entries \(empty\)"),
        ({"model": {"a": 1}}, r"got a dict of 1 entries \(dict\)"),
    ],
)
def test_pickle_without_state_dict_is_rejected(tmp_path: Path, content, described: str) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=f"is not a state dict checkpoint.*{described}"):
        read_state_dict(path)


def test_pickled_whole_model_is_rejected_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        read_state_dict(path)


def test_non_finite_weights_are_rejected(tmp_path: Path) -> None:
    state = build_model("testbed", seed=1).state_dict()
    state["mask_decoder.iou_token.weight"][0, 5] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or Inf values in 'mask_decoder.iou_token"):
        read_state_dict(path)


def test_checkpoint_of_another_model_type_names_type_and_keys(testbed_file: Path) -> None:
    model = build_model("tinysam")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(model, testbed_file, "tinysam")
    message = str(error.value)
    assert "expected model type 'tinysam'" in message
    assert "missing keys (296): image_encoder.patch_embed.seq.0.c.weight, " in message
    assert "unexpected keys (87): image_encoder.pos_embed, " in message
    assert (
        "shape mismatches (134): image_encoder.neck.0.weight "
        "(checkpoint [128, 192, 1, 1] vs model [256, 320, 1, 1])"
    ) in message
    assert_same_state(model, before)  # nothing loaded


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    state = build_model("testbed", seed=1).state_dict()
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 64)
    path = tmp_path / "resized.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        build_model("testbed", checkpoint=path)
    message = str(error.value)
    assert "not a testbed checkpoint" in message
    assert (
        "shape mismatches (1): mask_decoder.iou_token.weight (checkpoint [1, 64] vs model [1, 128])"
    ) in message
    assert "missing" not in message and "unexpected" not in message


def test_long_mismatch_lists_are_cut_with_a_count(testbed_file: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing keys \(296\): (\S+, ){4}\S+ and 291 more"):
        build_model("tinysam", checkpoint=testbed_file)


def test_sha256_id(tmp_path: Path) -> None:
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert checkpoint_sha256(path) == "ba7816bf8f01"  # SHA-256("abc"), FIPS 180-2 test vector
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint_sha256(tmp_path / "absent.pt")


def test_integers_where_the_model_holds_floats_are_refused(tmp_path: Path) -> None:
    state = build_model("testbed", seed=1).state_dict()
    state["mask_decoder.iou_token.weight"] = torch.full((1, 128), 3, dtype=torch.int64)
    path = tmp_path / "integers.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"dtype mismatches \(1\): mask_decoder.iou_token.weight "
                                              r"\(checkpoint torch.int64 vs model torch.float32\)"):
        build_model("testbed", checkpoint=path)


def test_an_empty_checkpoint_path_is_a_missing_file_for_the_weights_id_too(random_testbed) -> None:
    from ptqsam.models.zoo import weights_id

    for describe in (lambda: build_model("testbed", checkpoint=""), lambda: weights_id("testbed", "", 0)):
        with pytest.raises(CheckpointError, match="checkpoint not found"):
            describe()
