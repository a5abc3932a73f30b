"""Bad input, table-driven, through the command line: every case must exit non-zero with one clear
line naming the problem, no traceback, no "internal error", and nothing written (each failure comes
before any work that would write).

Cases are generated per command from its options (``--device``, ``--out``, ``--state``,
``--recipe``, ``--bits``, ``--checkpoint``, ``--images``, a config argument), so a new command
inherits them: give its minimal arguments in :data:`REQUIRED` (the test fails until it is there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from ptqsam.cli import main

#: command -> (the arguments it needs to run, files those arguments name); a new command adds a line
REQUIRED: dict[str, tuple[list[str], dict[str, Any]]] = {
    "demo": ([], {}),
    "calibrate": (["--calib-images", "1"], {}),
    "evaluate": ([], {}),
    "inspect": ([], {}),
    "sweep": (["{tmp}/ok.yaml"], {"ok.yaml": "synthetic_images: 1\ncalib_images: 1\nout: res\n"}),
    "plot": (["{tmp}/res"], {"res/": None}),
    "sensitivity": (["--calib-images", "1"], {}),
    "allocate": (["{study}", "--budget", "W8A8", "--out", "{tmp}/mixed.yaml"], {}),
    "accuracy-control": (["{study}", "--target", "0.5", "--synthetic-images", "2", "--control-images", "1"], {}),
    "pareto": (["--calib-images", "1", "--synthetic-images", "1"], {}),
    "compare": (["{tmp}/a", "{tmp}/b"], {"a/report.json": '{"settings": {}, "rows": []}',
                                       "b/report.json": '{"settings": {}, "rows": []}'}),
}
#: commands reading --images/--annotations: the extra arguments that make them read images, and the
#: start of the message when no image is usable (evaluate: nothing to evaluate; calibration: no sample)
READS_IMAGES = {
    "evaluate": ([], "nothing to evaluate"),
    "calibrate": ([], "none of the calibration images"),
    "inspect": (["--stats-images", "1"], "none of the calibration images"),
    "sensitivity": ([], "none of the calibration images"),
    "accuracy-control": ([], "none of the calibration images"),
    "pareto": ([], "none of the calibration images"),
}
DEAD_RULE = {"name": "dead", "rules": [{"include": ["*.weight"], "spec": {"bits": "W"}},
                                       {"include": ["*.inptu"], "spec": {"bits": "A"}}]}


@dataclass
class Case:
    """One bad input: the command line, the files it needs, the exit code and the fragment(s) of the
    error line. File values: text, bytes, None (a folder), or ``write(path, assets)``."""

    id: str
    args: list[str]
    message: str | tuple[str, ...]
    files: dict[str, Any] = field(default_factory=dict)
    code: int = 1


def _recipe_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


WEIGHTS_ONLY = _recipe_yaml({"name": "r", "rules": DEAD_RULE["rules"][:1]})


def _rule_spec(**spec: Any) -> str:
    return _recipe_yaml({"name": "typed", "rules": [{"include": ["*.weight"], "spec": {"bits": "W", **spec}}]})


RECIPE_FILES: list[tuple[str, Any, str]] = [
    ("rule-matching-no-site", _recipe_yaml(DEAD_RULE), "rules[1] (include ['*.inptu'])"),
    ("symmetric-not-bool", _rule_spec(symmetric="yes"), "symmetric must be true or false"),
    ("axis-not-int", _rule_spec(granularity={"kind": "channel", "axis": "0"}), "granularity axis"),
    ("observer-list", _rule_spec(observer=["minmax"]), "unknown observer"),
    ("log-per-channel", _rule_spec(quantizer="log", granularity={"kind": "channel"}), "implements granularity"),
    ("bits-float", _rule_spec(bits=8.0), "bits must be an integer"),
    ("transform-option-typed", _recipe_yaml({**DEAD_RULE, "rules": DEAD_RULE["rules"][:1], "transforms": [
        {"kind": "bimodal_fold", "sites": ["*"], "options": {"seed": "x"}}]}), "seed must be an integer"),
    ("empty", "", "recipe must be a mapping"),
    ("not-yaml", "rules: [", "not valid YAML"),
    ("not-utf8", b"\xff\xfe\x00", "cannot read recipe file"),
]


def _state(change: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    """A writer of the real state file changed by ``change``."""
    def write(path: Path, assets: dict) -> None:
        data = torch.load(assets["state"], weights_only=True)
        change(data)
        torch.save(data, path)
    return write


def _nan_site(data: dict) -> None:
    entry = next(iter(data["sites"].values()))
    name = next(k for k, v in entry["state"].items() if v.is_floating_point())
    entry["state"][name] = torch.full_like(entry["state"][name], float("nan"))


def _study(change: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    """A writer of the real sensitivity study changed by ``change``."""
    def write(path: Path, assets: dict) -> None:
        data = json.loads((assets["study"] / "sensitivity.json").read_text())
        change(data)
        path.write_text(json.dumps(data))
    return write


def _resealed(change: Callable[[dict], None]) -> Callable[[Path, dict], None]:
    """A writer of the real study with its settings changed by ``change`` and a fingerprint that
    matches them (a study made under other settings, not an altered file)."""
    def edit(data: dict) -> None:
        from ptqsam.fingerprint import fingerprint

        change(data["settings"])
        data["fingerprint"] = fingerprint(data["settings"])
    return _study(edit)


#: allocate's arguments; a study argument follows (click takes the last --out)
ALLOCATE = ["allocate", "--out", "{tmp}/mixed.yaml", "--budget", "W8A8"]

STATE_FILES: list[tuple[str, Any, list[str], str]] = [
    ("missing", {}, ["--state", "{tmp}/none.pt"], "does not exist"),
    ("zero-bytes", {"s.pt": b""}, ["--state", "{tmp}/s.pt"], "cannot read"),
    ("garbage", {"s.pt": b"\x00garbage" * 10}, ["--state", "{tmp}/s.pt"], "cannot read"),
    ("truncated", {"s.pt": lambda p, a: p.write_bytes(a["state"].read_bytes()[:5000])}, ["--state", "{tmp}/s.pt"],
     "cannot read"),
    ("other-format", {"s.pt": lambda p, a: torch.save({"format": "x"}, p)}, ["--state", "{tmp}/s.pt"],
     "not a ptqsam calibrated-state file"),
    ("no-sites", {"s.pt": _state(lambda d: d.pop("sites"))}, ["--state", "{tmp}/s.pt"], "incomplete or corrupt"),
    ("site-entry-broken", {"s.pt": _state(lambda d: d["sites"].update({next(iter(d["sites"])): 3}))},
     ["--state", "{tmp}/s.pt"], "incomplete or corrupt"),
    ("nan-parameters", {"s.pt": _state(_nan_site)}, ["--state", "{tmp}/s.pt"], "NaN or Inf"),
    ("old-version", {"s.pt": _state(lambda d: d.update(version=1))}, ["--state", "{tmp}/s.pt"], "version 1"),
    ("other-weights", {"other.pth": lambda p, a: torch.save(a["other_weights"], p)},
     ["--state", "{state}", "--checkpoint", "{tmp}/other.pth"], "calibrated on other weights"),
    ("other-model-type", {}, ["--state", "{state}", "--model", "tinysam"], "model type 'testbed', not 'tinysam'"),
]

CONFIGS: list[tuple[str, Any, str]] = [
    ("empty", "", "is empty"),
    ("comment-only", "# nothing\n", "is empty"),
    ("a-list", "- testbed\n", "config must be a mapping"),
    ("not-yaml", "models: [testbed\n", "not valid YAML"),
    ("not-utf8", b"\xff\xfe\x00models", "cannot read config file"),
    ("unknown-key", "modelz: [testbed]\n", "unknown config key"),
    ("quantize-encoder-string", "quantize_encoder: 'no'\n", "quantize_encoder must be true or false"),
    ("multimask-number", "multimask: 1\n", "multimask must be true or false"),
    ("bits-number", "bits: 8\n", "bits must be a list of strings"),
    ("bits-mixed", "bits: [W8A8, 8]\n", "bits must be a list of strings"),
    ("bits-impossible", "bits: [W1A8]\n", "weight bits"),
    ("bits-empty", "bits: []\n", "bits must be a non-empty list"),
    ("checkpoints-string", "checkpoints: ckpt.pth\n", "checkpoints must be a mapping"),
    ("checkpoints-other-model", "checkpoints: {vit_b: x.pth}\n", "not in models"),
    ("out-list", "out: [a, b]\n", "out must be a string"),
    ("out-number", "out: 5\n", "out must be a string"),
    ("out-empty", "out: ''\n", "out must be a folder name"),
    ("out-is-a-file", {"config": "out: {tmp}/taken\n", "taken": "x"}, "is a file, not a folder"),
    ("model-unknown", "models: [vitb]\n", "models must be one of"),
    ("seed-negative", "seed: -1\n", "seed must be >= 0"),
    ("calib-images-zero", "calib_images: 0\n", "calib_images must be >= 1"),
    ("calib-images-bool", "calib_images: true\n", "calib_images must be an integer"),
    ("eval-images-float", "eval_images: 1.5\n", "eval_images must be an integer"),
    ("search-rows-zero", "search_rows: 0\n", "search_rows must be >= 1"),
    ("prompt-unknown", "prompt: scribble\n", "prompt must be one of"),
    ("images-alone", "images: x\n", "images and annotations go together"),
    ("detections-prompt-alone", "prompt: detections\n", "needs a detections file"),
    ("recipe-unknown", "recipes: [nope]\n", "unknown recipe 'nope'"),
    ("recipe-rule-matching-no-site", {"config": "recipes: [{tmp}/dead.yaml]\n", "dead.yaml": _recipe_yaml(DEAD_RULE)},
     "rules[1]"),
    ("recipes-sharing-cells", {"config": "recipes: [{tmp}/a/r.yaml, {tmp}/b/r.yaml]\n", "a/r.yaml": WEIGHTS_ONLY,
                               "b/r.yaml": WEIGHTS_ONLY}, "would share cell files"),
    ("device-cuda", "device: cuda\n", "no CUDA device"),
]


def _command_cases(name: str, command: click.Command) -> list[Case]:
    """The cases a command gets from its options."""
    assert name in REQUIRED, f"new command {name!r}: add its minimal arguments to REQUIRED in {__file__}"
    base, base_files = REQUIRED[name]
    params = {p.name: p for p in command.params}
    cases = []

    def case(label: str, extra: list[str], message: str, files: dict | None = None, code: int = 1) -> None:
        cases.append(Case(f"{name}:{label}", [name, *base, *extra], message, {**base_files, **(files or {})}, code))

    if "device" in params:
        case("device-cuda", ["--device", "cuda"], "no CUDA device")
    out = next((p for p in command.params if "--out" in getattr(p, "opts", [])), None)
    if out is not None:
        folder = isinstance(out.type, click.Path) and not out.type.file_okay
        if folder:  # click checks an existing path of the wrong kind itself (a usage error, exit 2)
            case("out-is-a-file", ["--out", "{tmp}/taken"], "is a file", {"taken": "x"}, code=2)
        else:
            case("out-is-a-folder", ["--out", "{tmp}/taken"], "is a directory", {"taken/": None}, code=2)
        case("out-under-a-file", ["--out", "{tmp}/taken/inner/x"], "is a file", {"taken": "x"})
    if "state" in params:
        for label, files, extra, message in STATE_FILES:
            case(f"state-{label}", extra, message, files)
    if "recipe" in params:
        case("recipe-unknown", ["--recipe", "nope"], "unknown recipe 'nope'")
        for label, content, message in RECIPE_FILES:
            case(f"recipe-{label}", ["--recipe", "{tmp}/r.yaml"], message, {"r.yaml": content})
    if "recipes" in params:
        case("recipes-unknown", ["--recipes", "minmax,nope"], "unknown recipe 'nope'")
    if "bits" in params:
        case("bits-impossible", ["--bits", "W1A8"], "weight bits")
        case("bits-garbled", ["--bits", "eight"], "'eight'")
    if "checkpoint" in params:
        case("checkpoint-missing", ["--checkpoint", "{tmp}/none.pth"], "checkpoint not found")
        case("checkpoint-garbage", ["--checkpoint", "{tmp}/c.pth"], "c.pth is not a", {"c.pth": b"garbage"})
        case("checkpoint-truncated", ["--checkpoint", "{tmp}/c.pth"], "not a readable PyTorch checkpoint",
             {"c.pth": lambda p, a: p.write_bytes(a["state"].read_bytes()[:3000])})
        case("checkpoint-other-model", ["--model", "tinysam", "--checkpoint", "{tmp}/c.pth"],
             "is not a tinysam checkpoint", {"c.pth": lambda p, a: torch.save(a["other_weights"], p)})
    if "seed" in params:
        case("seed-negative", ["--seed", "-1"], "seed must be >= 0")
    if "images" in params and isinstance(params["images"].type, click.Path):
        _data_cases(name, case)
    if any(isinstance(p, click.Argument) and p.name == "config_path" for p in command.params):
        for label, content, message in CONFIGS:
            files = content if isinstance(content, dict) else {"config": content}
            files = {("c.yaml" if k == "config" else k): v for k, v in files.items()}
            cases.append(Case(f"{name}:config-{label}", [name, "{tmp}/c.yaml"], message, files))
        cases.append(Case(f"{name}:config-missing", [name, "{tmp}/none.yaml"], "config file not found"))
    return cases


def _data_cases(name: str, case: Callable) -> None:
    """Datasets with nothing usable in them: each command says so (evaluate with the skip counts)."""
    assert name in READS_IMAGES, f"new command {name!r} reads images: add it to READS_IMAGES in {__file__}"
    extra, empty = READS_IMAGES[name]
    data = [*extra, "--images", "{tmp}/d/images", "--annotations", "{tmp}/d/a.json"]
    case("images-without-annotations", [*extra, "--images", "{tmp}"], "go together")
    case("annotations-not-json", data, "not valid JSON", {"d/images/": None, "d/a.json": "{"})
    case("annotations-missing", [*extra, "--images", "{tmp}/d", "--annotations", "{tmp}/none.json"], "not found",
         {"d/": None})
    outside = "the dataset has no readable image" if name != "evaluate" else empty
    for label, writer, first, skip in (
            ("zero-area", _dataset(area=0), empty, "'zero_area': 1"),
            ("path-outside-images", _dataset(file_name="../outside.png"), outside, "'path_outside_images': 1"),
            ("float-image-out-of-range", _dataset(float_pixels=2.0), empty, "'unsupported_image': 1")):
        case(f"data-{label}", data, (first, skip) if name == "evaluate" else (first,), {"d/": writer})


def _dataset(area: float = 100.0, file_name: str = "1.png", float_pixels: float | None = None):
    """A writer of a one-image COCO dataset (16x16, one 4x4 square annotated)."""
    def write(folder: Path, assets: dict) -> None:
        (folder / "images").mkdir(parents=True)
        image_path = (folder / "images" / file_name)
        if float_pixels is None:
            Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(image_path)
        else:
            image_path = image_path.with_suffix(".tif")
            Image.fromarray(np.full((16, 16), float_pixels, dtype=np.float32)).save(image_path)
        name = image_path.name if file_name == "1.png" else file_name
        annotation = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 4, 4], "area": area, "iscrowd": 0,
                      "segmentation": [[4, 4, 8, 4, 8, 8, 4, 8]]}
        (folder / "a.json").write_text(json.dumps({"images": [{"id": 1, "file_name": name, "height": 16, "width": 16}],
                                                   "annotations": [annotation]}))
    return write


OTHER_CASES = [
    Case("calibrate:calib-images-zero", ["calibrate", "--calib-images", "0"], "--calib-images must be >= 1"),
    Case("calibrate:search-rows-zero", ["calibrate", "--search-rows", "0"], "--search-rows must be >= 1"),
    Case("calibrate:recon-drop-prob-out-of-range", ["calibrate", "--recon-drop-prob", "2"],
         "--recon-drop-prob must be"),
    Case("calibrate:detections-without-their-prompt", ["calibrate", "--detections", "{tmp}/d.json"],
         "--detections prompts the images only with --prompt detections", {"d.json": "[]"}),
    Case("calibrate:detections-missing", ["calibrate", "--prompt", "detections", "--detections", "{tmp}/none.json"],
         "not found"),
    Case("inspect:kind-unknown", ["inspect", "--kind", "nonsense"], "is not one of 'weight'", code=2),
    Case("calibrate:calib-images-not-a-number", ["calibrate", "--calib-images", "abc"], "not a valid integer", code=2),
    Case("evaluate:eval-images-negative", ["evaluate", "--eval-images", "-1"], "--eval-images must be >= 0"),
    Case("evaluate:detections-prompt-alone", ["evaluate", "--prompt", "detections"], "needs a detections file"),
    Case("evaluate:detections-missing", ["evaluate", "--detections", "{tmp}/none.json"], "not found"),
    Case("inspect:stats-images-negative", ["inspect", "--stats-images", "-1"], "stats-images"),
    Case("demo:images-zero", ["demo", "--images", "0"], "--images must be >= 1"),
    Case("demo:calib-images-zero", ["demo", "--calib-images", "0"], "--calib-images must be >= 1"),
    Case("plot:no-report", ["plot", "{tmp}/res"], "no report.json", {"res/": None}),
    Case("plot:report-not-json", ["plot", "{tmp}/res"], "cannot read report", {"res/report.json": "{"}),
    Case("plot:report-without-rows", ["plot", "{tmp}/res"], "has no 'rows' list", {"res/report.json": "{}"}),
    Case("plot:missing-results", ["plot", "{tmp}/none"], "does not exist", code=2),
    Case("sensitivity:top-zero", ["sensitivity", "--top", "0"], "--top must be >= 1"),
    Case("sensitivity:bits-empty", ["sensitivity", "--bits", ","], "at least one bit-width"),
    Case("allocate:study-other-format", [*ALLOCATE, "{tmp}/s.json"], "not a sensitivity result", {"s.json": "{}"}),
    Case("allocate:study-not-json", [*ALLOCATE, "{tmp}/s.json"], "not a readable sensitivity result",
         {"s.json": "{"}),
    Case("allocate:study-altered", [*ALLOCATE, "{tmp}/s.json"], "the file was altered",
         {"s.json": _study(lambda d: d["settings"].update(bits=["W4A4"]))}),
    Case("allocate:study-old-version", [*ALLOCATE, "{tmp}/s.json"], "version 1",
         {"s.json": _study(lambda d: d.update(version=1))}),
    Case("allocate:study-other-weights", [*ALLOCATE, "{tmp}/s.json"], "the study measured weights",
         {"s.json": _resealed(lambda s: s.update(weights="random-seed7"))}),
    Case("allocate:study-without-model", [*ALLOCATE, "{tmp}/s.json"], "does not record its model (weights missing)",
         {"s.json": _resealed(lambda s: s.pop("weights"))}),
    Case("allocate:budget-garbled", [*ALLOCATE, "{study}", "--budget", "W5"], "a budget is 'W<w>A<a>'"),
    Case("allocate:budget-kind-unknown", [*ALLOCATE, "{study}", "--budget", "flops=3"], "budget kind must be"),
    Case("allocate:budget-unreachable", [*ALLOCATE, "{study}", "--budget", "W4A4"], "no choice of the candidate"),
    Case("allocate:candidates-garbled", [*ALLOCATE, "{study}", "--budget", "W8A8", "--candidates", "4,x"],
         "--candidates takes a comma list"),
    Case("allocate:candidates-unmeasured", [*ALLOCATE, "{study}", "--budget", "W8A8", "--candidates", "4"],
         "no sensitivity row to choose from"),
    Case("accuracy-control:target-negative", ["accuracy-control", "{study}", "--target", "-0.1"], "--target must be"),
    Case("accuracy-control:start-garbled", ["accuracy-control", "{study}", "--target", "0.1", "--start", "four"],
         "'four'"),
    Case("evaluate:reference-missing", ["evaluate", "--reference", "{tmp}/none.json"], "--reference"),
    Case("evaluate:reference-not-json", ["evaluate", "--reference", "{tmp}/f.json"], "cannot be read", {"f.json": "{"}),
    Case("evaluate:reference-not-a-record", ["evaluate", "--reference", "{tmp}/f.json"],
         "not the record of a float run", {"f.json": "{}"}),
    Case("sweep:latex-under-a-file", ["sweep", "{tmp}/ok.yaml", "--latex", "{tmp}/taken/t.tex"], "is a file",
         {"ok.yaml": "synthetic_images: 1\ncalib_images: 1\nout: res\n", "taken": "x"}),
    Case("compare:one-folder", ["compare", "{tmp}/a"], "two results folders or more", {"a/": None}),
    Case("compare:not-results", ["compare", "{tmp}/a", "{tmp}/b"], "neither a report.json", {"a/": None, "b/": None}),
    Case("compare:report-not-json", ["compare", "{tmp}/a", "{tmp}/b"], "cannot read",
         {"a/report.json": "{", "b/": None}),
    Case("compare:missing-results", ["compare", "{tmp}/none", "{tmp}/b"], "does not exist", {"b/": None}, code=2),
    Case("compare:latex-under-a-file", ["compare", "{tmp}/a", "{tmp}/b", "--latex", "{tmp}/taken/t.tex"], "is a file",
         {"a/": None, "b/": None, "taken": "x"}),
    Case("pareto:nothing", ["pareto", "--bits", ","], "nothing to compare"),
    Case("pareto:mixed-with-placeholders", ["pareto", "--bits", "W8A8", "--mixed", "{tmp}/r.yaml",
                                            "--synthetic-images", "1"], "explicit bits", {"r.yaml": WEIGHTS_ONLY}),
]

CASES = [c for name, command in sorted(main.commands.items()) for c in _command_cases(name, command)] + OTHER_CASES


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_dataset_dir) -> dict[str, Any]:
    """A real calibrated state of the packaged testbed (minmax W8A8 on one image), and other weights."""
    from ptqsam.calibration import calibrate, calibration_samples, save_calibrated
    from ptqsam.data import CocoDataset
    from ptqsam.models import build_model

    folder = tmp_path_factory.mktemp("bad_input_assets")
    model = build_model("testbed")
    other = {k: v.clone() for k, v in model.state_dict().items()}
    next(v for v in other.values() if v.is_floating_point()).view(-1)[0] += 1.0
    samples = calibration_samples(CocoDataset(tiny_dataset_dir / "images", tiny_dataset_dir / "annotations.json"), 1, 0)
    report = calibrate(model, "minmax", 8, 8, samples, progress=False)
    save_calibrated(model, folder / "state.pt", report, "minmax", "testbed", 8, 8)
    with pytest.MonkeyPatch.context() as patch:  # the study's generated calibration images land in folder
        patch.chdir(folder)
        study = CliRunner().invoke(main, ["sensitivity", "--recipe", str(_final_attention(folder)), "--bits", "W8A8",
                                          "--calib-images", "1", "--out", str(folder / "study")])
    assert study.exit_code == 0, study.output
    return {"state": folder / "state.pt", "other_weights": other, "study": folder / "study"}


def _final_attention(folder: Path) -> Path:
    """A recipe quantizing only the decoder's final attention (a sensitivity study of it is quick)."""
    final = "mask_decoder.transformer.final_attn_token_to_image"
    path = folder / "final.yaml"
    path.write_text(_recipe_yaml({"name": "final", "rules": [
        {"include": [f"{final}.*.weight"], "spec": {"bits": "W"}},
        {"include": [f"{final}.*.input", f"{final}.probs"], "spec": {"bits": "A"}}]}))
    return path


def _materialise(tmp: Path, files: dict[str, Any], assets: dict[str, Any]) -> None:
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif callable(content):
            content(path, assets)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp)))


def _tree(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*")}


def test_the_table_is_large_and_covers_every_command():
    covered = {case.id.split(":")[0] for case in CASES}
    assert covered == set(main.commands) and len(CASES) >= 100
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_fails_with_one_clear_line_and_writes_nothing(case, assets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # defaults such as ./results land here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on machines with a GPU
    _materialise(tmp_path, case.files, assets)
    before = _tree(tmp_path)
    args = [arg.replace("{tmp}", str(tmp_path)).replace("{state}", str(assets["state"])).replace(
        "{study}", str(assets["study"])) for arg in case.args]
    result = CliRunner().invoke(main, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == case.code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    fragments = (case.message,) if isinstance(case.message, str) else case.message
    assert lines and lines[-1].lower().startswith("error:") and all(f in lines[-1] for f in fragments), lines
    assert _tree(tmp_path) == before, "a failed command wrote files"
