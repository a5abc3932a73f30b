"""Experiment configuration: one frozen dataclass shared by the CLI and sweeps; YAML round-trip."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ptqsam.bits import normal_bits, parse_bits
from ptqsam.constants import DEVICES, EVAL_PROMPT_KINDS, MODEL_TYPES
from ptqsam.errors import ConfigError, PtqsamError
from ptqsam.reconstruction.config import ReconstructionConfig
from ptqsam.typed import check_fields, reject_unknown_keys

#: the largest seed: torch's generators take a signed 64-bit seed
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ExperimentConfig:
    """What a sweep runs: models × recipes × bit-widths on one dataset.

    Arguments:
      models: model types (``vit_b``, ``tinysam``, ``testbed``, ...).
      checkpoints: model type -> checkpoint path (absent: packaged testbed weights or random init).
      recipes: shipped recipe names or YAML paths; ``float`` is always run as the baseline.
      bits: bit-widths such as ``W8A8``.
      recipe_bits: recipe -> its own bit-widths (instead of ``bits``), e.g. a slow reconstruction
        recipe at W4A4 only.
      reconstruction: overrides of the recipes' reconstruction settings (fields of
        :class:`~ptqsam.reconstruction.ReconstructionConfig`, e.g. ``{iterations: 500}``); recipes
        without reconstruction ignore them.
      images, annotations: COCO-format image folder and instances JSON (absent: a synthetic set).
      detections: COCO results JSON of a detector (needed for mask AP / ``detections`` prompts).
      prompt: prompt kind (``box``, ``tight_box``, ``center_point``, ``random_points``; or
        ``detections``: detector boxes only, for mask AP).
      num_points: k for the ``random_points`` prompt.
      calib_images: images used for calibration (chosen by ``seed``).
      calib_images_dir, calib_annotations: COCO-format image folder and instances JSON to calibrate
        on (PTQ4SAM: COCO train2017). Absent: generated data is calibrated on a separately
        generated set; a given ``images`` dataset is calibrated on its own images (with a warning).
      calib_sets: calibrate each quantized cell on this many calibration sets (seeds ``seed``,
        ``seed + 1``, ...), or on the sets of these seeds (a list); the cell keeps every run and the
        report gives mean ± std and min/max over them. Generated data: each seed generates its own
        set; a given calibration dataset: each seed chooses its own ``calib_images`` images.
      float_sites: a protocol float list imposed on every recipe so that a comparison quantizes the
        same sites: a recipe name (its ``keep_float``, e.g. ``ptq4sam``) or a list of fnmatch patterns
        on site names. It REPLACES each recipe's own ``keep_float``. None: each recipe's own list.
      own_float_variants: with ``float_sites``, each recipe whose own list differs also runs as
        the variant ``<recipe>[own-float]`` (its own ``keep_float``).
      workers: compute the quantized cells of a model in this many worker processes at once (the
        float cell runs first, in this process); every cell then runs on one torch thread, so its
        numbers do not depend on the machine's thread count (which changes summation order, hence
        the last bits). 1: one after the other, here. A script calling a sweep with workers needs
        the ``if __name__ == "__main__":`` guard (worker processes are spawned and import it).
      search_rows: Hessian-guided search: score the candidates of each unit on at most this many
        seeded-random rows of its calibration cache (the ``max_rows`` search option; a recipe that
        sets it keeps its own). None: every row, as the papers do.
      eval_images: limit on evaluated images (0 = all).
      quantize_encoder: quantize the image encoder too (else it stays float and its embeddings are
        computed once).
      multimask: three masks per prompt, best by predicted IoU (else one).
      score_with_iou: mask AP score = detector score × predicted IoU (PTQ4SAM) instead of the
        detector score alone.
      synthetic_images: size of the generated dataset when no ``images`` are given.
      seed: every random choice derives from it.
      device: ``cpu`` or ``cuda``.
      out: results folder.

    Every field is checked for its type and range when the config is made (:mod:`ptqsam.typed`);
    a single string is accepted for ``models``, ``recipes`` and ``bits``, and null for
    ``checkpoints``.
    """

    models: tuple[str, ...] = field(default=("testbed",), metadata={"choices": MODEL_TYPES})
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    recipes: tuple[str, ...] = ("minmax",)
    bits: tuple[str, ...] = ("W8A8",)
    recipe_bits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    reconstruction: Mapping[str, Any] = field(default_factory=dict)
    images: str | None = None
    annotations: str | None = None
    detections: str | None = None
    prompt: str = field(default="box", metadata={"choices": EVAL_PROMPT_KINDS})
    num_points: int = field(default=1, metadata={"min": 1})
    calib_images: int = field(default=32, metadata={"min": 1})
    calib_images_dir: str | None = None
    calib_annotations: str | None = None
    calib_sets: int | tuple[int, ...] = 1
    float_sites: str | tuple[str, ...] | None = None
    own_float_variants: bool = True
    workers: int = field(default=1, metadata={"min": 1})
    search_rows: int | None = field(default=None, metadata={"min": 1})
    eval_images: int = field(default=0, metadata={"min": 0})
    quantize_encoder: bool = True
    multimask: bool = True
    score_with_iou: bool = True
    synthetic_images: int = field(default=24, metadata={"min": 1})
    seed: int = field(default=0, metadata={"min": 0, "max": MAX_SEED})
    device: str = field(default="cpu", metadata={"choices": DEVICES})
    out: str = "results"

    def __post_init__(self) -> None:
        for name in ("models", "recipes", "bits"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, (getattr(self, name),))
        if self.checkpoints is None:
            object.__setattr__(self, "checkpoints", {})
        check_fields(self, ConfigError, "config")
        for name in ("models", "recipes", "bits"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty list of strings, got an empty list")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "checkpoints", dict(self.checkpoints))
        object.__setattr__(self, "recipe_bits", {k: tuple(v) for k, v in self.recipe_bits.items()})
        object.__setattr__(self, "reconstruction", dict(self.reconstruction))
        self._check_values()

    def _check_values(self) -> None:
        """The checks that involve several fields or more than a type and a range."""
        for label in [*self.bits, *(b for labels in self.recipe_bits.values() for b in labels)]:
            try:
                parse_bits(label)
            except PtqsamError as error:
                raise ConfigError(f"config bits: {error}") from None
        extra = sorted(set(self.recipe_bits) - set(self.recipes))
        if extra:
            raise ConfigError(f"recipe_bits names recipe(s) {extra} that are not in recipes {list(self.recipes)}")
        empty = sorted(name for name, labels in self.recipe_bits.items() if not labels)
        if empty:  # would drop the recipe's every cell without a word
            raise ConfigError(f"recipe_bits gives recipe(s) {empty} no bits: give at least one, or leave them out")
        for name, labels in (("models", self.models), ("recipes", self.recipes),
                             ("bits", [normal_bits(b) for b in self.bits])):
            twice = sorted({label for label in labels if list(labels).count(label) > 1})
            if twice:
                raise ConfigError(f"config {name} lists {twice} more than once")
        try:
            ReconstructionConfig().with_overrides(self.reconstruction)
        except PtqsamError as error:
            raise ConfigError(f"config {error}") from None
        strangers = sorted(set(self.checkpoints) - set(self.models))
        if strangers:
            raise ConfigError(f"checkpoints name model(s) {strangers} that are not in models {list(self.models)}")
        if not self.out:
            raise ConfigError("config out must be a folder name, got ''")
        if (self.images is None) != (self.annotations is None):
            raise ConfigError("images and annotations go together: give both or neither")
        if (self.calib_images_dir is None) != (self.calib_annotations is None):
            raise ConfigError("calib_images_dir and calib_annotations go together: give both or neither")
        if self.prompt == "detections" and not self.detections:
            raise ConfigError("prompt 'detections' needs a detections file")
        self._check_calib_sets()
        self._check_float_sites()

    def _check_calib_sets(self) -> None:
        value = self.calib_sets
        if isinstance(value, (list, tuple)):
            if not value or len(set(value)) != len(value) or any(not 0 <= seed <= MAX_SEED for seed in value):
                raise ConfigError(f"config calib_sets must be a positive integer or a list of distinct integer "
                                  f"seeds in [0, {MAX_SEED}], got {value!r}")
            object.__setattr__(self, "calib_sets", tuple(value))
        elif value < 1:
            raise ConfigError(f"config calib_sets must be a positive integer or a list of distinct integer seeds, "
                              f"got {value!r}")

    def _check_float_sites(self) -> None:
        value = self.float_sites
        if isinstance(value, (list, tuple)):
            if not all(value):
                raise ConfigError(f"config float_sites patterns must be non-empty strings, got {value!r}")
            object.__setattr__(self, "float_sites", tuple(value))
        elif value == "":
            raise ConfigError("config float_sites must be a recipe name, a list of site patterns or null, got ''")

    def calibration_seeds(self) -> tuple[int, ...]:
        """The seed of each calibration set (see ``calib_sets``)."""
        if isinstance(self.calib_sets, tuple):
            return self.calib_sets
        return tuple(self.seed + i for i in range(self.calib_sets))

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return ExperimentConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("models", "recipes", "bits", "calib_sets", "float_sites"):
            if isinstance(data[name], tuple):
                data[name] = list(data[name])
        data["recipe_bits"] = {k: list(v) for k, v in data["recipe_bits"].items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        reject_unknown_keys(data, cls, "config")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ExperimentConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if data is None:
            raise ConfigError(f"config file {path} is empty: give at least the models, recipes and bits to run")
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

