"""Which groups of sites hurt SAM most when quantized: calibrate once per bit-width, switch groups.

For each bit-width the recipe is calibrated once on the calibration images; then, for every group
(:mod:`.groups`) and role (all its sites, its weights, its activations), only that group's
quantizers fake-quantize (``mode="only"``: the others stay off, i.e. float) or every quantizer but
the group's (``mode="all_but"``), and the model's outputs on the same calibration images are
compared with the float model's (:class:`Damage`: mask-logit MSE, mask IoU against the float
masks, IoU-prediction error).

Forward passes, for I calibration images, B bit-widths and M measurements per bit-width (groups ×
roles), E of them touching an image-encoder site: one float pass (I encoder + I decoder passes),
the calibration passes of each bit-width, then per bit-width E·I + I encoder passes and M·I decoder
passes: a measurement that leaves the encoder as it is for every decoder group reuses one
embedding per image. On SAM-B (12 blocks, ~70 encoder products) this is ~70·I encoder passes per
bit-width and role, so it runs on a GPU in minutes; the decoder's measurements cost little.
:attr:`SensitivityResult.passes` holds the counts a run made.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import glob
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from segment_anything.modeling import Sam

from ptqsam.analysis.groups import GRANULARITIES, ROLES, Group, model_groups
from ptqsam.bits import bits_label
from ptqsam.passes import SampleLoop
from ptqsam.calibration.runner import calibrate
from ptqsam.data.samples import CalibrationSample
from ptqsam.errors import AnalysisError
from ptqsam.fingerprint import fingerprint, mismatch
from ptqsam.inference import Prediction
from ptqsam.instrument import attached_quantizers, disabled, forward_hooks, instrument, quantizing, switched
from ptqsam.instrument.recipe import Recipe, load_recipe
from ptqsam.io import json_text, write_or_rescue, write_text_atomic
from ptqsam.models.blocks import part_of
from quantizers import Mode

log = logging.getLogger("ptqsam")
#: ``only``: quantize only the group (the rest float); ``all_but``: quantize all but the group.
MODES = ("only", "all_but")
#: What ranks groups: mask-logit MSE, 1 − mask IoU against float, mean |Δ predicted IoU|.
METRICS = ("mse", "iou_loss", "iou_error")
METRIC_LABELS = {"mse": "mask-logit MSE", "iou_loss": "1 - mask IoU against float",
                 "iou_error": "mean |error of predicted IoU|"}
FORMAT, VERSION = "ptqsam-sensitivity", 2
CSV_FIELDS = ("group", "block", "role", "bits", "sites", "mse", "iou", "iou_error", "score")


@dataclass(frozen=True)
class Damage:
    """How far a model's outputs are from the float model's on the same images and prompts.

    Arguments:
      mse: mean squared difference of the low-resolution mask logits (every prompt, every mask).
      iou: mean over prompts of the IoU between the two models' best masks (each picked by its
        own predicted IoU, as evaluation does; two empty masks agree).
      iou_error: mean absolute difference of the predicted IoUs (every prompt, every mask).
    """

    mse: float
    iou: float
    iou_error: float

    def score(self, metric: str) -> float:
        """The damage as one number, larger is worse (one of :data:`METRICS`)."""
        check_choice(metric, METRICS, "metric")
        return {"mse": self.mse, "iou_loss": 1.0 - self.iou, "iou_error": self.iou_error}[metric]


@dataclass(frozen=True)
class SensitivityRow:
    """The damage of one group and role at one bit-width (``w_bits``/``a_bits`` of the calibration)."""

    group: str
    role: str
    w_bits: int
    a_bits: int
    damage: Damage

    @property
    def bits(self) -> str:
        """The bits its role's sites ran at: ``W4A4`` (role all), ``W4`` or ``A4``."""
        return {"all": bits_label(self.w_bits, self.a_bits), "weight": f"W{self.w_bits}",
                "activation": f"A{self.a_bits}"}[self.role]


@dataclass
class SensitivityResult:
    """A sensitivity study: its settings, groups, rows and what it cost.

    Arguments:
      settings: how it was run (recipe, bits, granularity, mode, roles, images, ...).
      groups: the groups measured, in model order.
      rows: one per group, role and bit-width.
      baselines: ``bits label -> Damage`` of the fully quantized model (what ``all_but`` rows recover from).
      passes: encoder and decoder forward passes of the measurements (calibration not counted).
      seconds: wall time of the float pass, of each calibration and of each bit-width's measurements.
      cpu_seconds: the same in CPU time of the process.
    """

    settings: dict[str, Any]
    groups: list[Group]
    rows: list[SensitivityRow]
    baselines: dict[str, Damage] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def score(self, row: SensitivityRow, metric: str = "mse") -> float:
        """Larger = more sensitive: the row's damage (``only``), or the damage removed by keeping
        the group float (``all_but``: baseline − row)."""
        if self.settings["mode"] == "only":
            return row.damage.score(metric)
        return self.baselines[bits_label(row.w_bits, row.a_bits)].score(metric) - row.damage.score(metric)

    def scores(self, metric: str = "mse", role: str = "all", bits: str | None = None) -> dict[str, float]:
        """``group -> score`` of the rows of ``role`` (at the bits label ``bits``, default: the first)."""
        label = bits or self.settings["bits"][0]
        return {r.group: self.score(r, metric) for r in self.rows
                if r.role == role and bits_label(r.w_bits, r.a_bits) == label}

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the fingerprint of :attr:`settings` (what the study is bound to)."""
        return {"format": FORMAT, "version": VERSION, "settings": self.settings,
                "fingerprint": fingerprint(self.settings),
                "groups": [g.to_dict() for g in self.groups],
                "rows": [{"group": r.group, "role": r.role, "w_bits": r.w_bits, "a_bits": r.a_bits,
                          **asdict(r.damage)} for r in self.rows],
                "baselines": {label: asdict(d) for label, d in self.baselines.items()},
                "passes": self.passes, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SensitivityResult":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise AnalysisError(f"not a sensitivity result (format {FORMAT!r} expected)")
        if data.get("version") != VERSION:
            raise AnalysisError(f"a sensitivity result of version {data.get('version')!r}; this ptqsam reads "
                                f"version {VERSION}: run `ptqsam sensitivity` again")
        changed = mismatch(data.get("fingerprint"), fingerprint(data["settings"]))
        if changed:
            raise AnalysisError(f"the sensitivity result's settings do not match its fingerprint ({', '.join(changed)}): "
                                "the file was altered; run `ptqsam sensitivity` again")
        rows = [SensitivityRow(r["group"], r["role"], r["w_bits"], r["a_bits"],
                               Damage(r["mse"], r["iou"], r["iou_error"])) for r in data["rows"]]
        return cls(data["settings"], [Group.from_dict(g) for g in data["groups"]], rows,
                   {label: Damage(**d) for label, d in data["baselines"].items()}, data["passes"], data["seconds"],
                   data.get("cpu_seconds", {}))

    def write(self, out_dir: str | Path, metric: str = "mse") -> list[Path]:
        """``sensitivity.json`` (everything) and ``sensitivity.csv`` (a row per measurement, with
        its ``metric`` score) under ``out_dir``."""
        out = Path(out_dir)
        blocks = {g.name: g.block or "" for g in self.groups}
        sizes = {g.name: g for g in self.groups}
        text = io.StringIO()
        writer = csv.DictWriter(text, CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({"group": r.group, "block": blocks[r.group], "role": r.role, "bits": r.bits,
                             "sites": len(sizes[r.group].role_sites(r.role)), **asdict(r.damage),
                             "score": self.score(r, metric)})
        data = json_text(self.to_dict())
        return [write_or_rescue(out / "sensitivity.json", lambda file: file.write(data)),
                write_text_atomic(out / "sensitivity.csv", text.getvalue())]


def load_sensitivity(path: str | Path) -> SensitivityResult:
    """A result written by :meth:`SensitivityResult.write` (its JSON file, or the folder holding it)."""
    path = Path(path)
    path = path / "sensitivity.json" if path.is_dir() else path
    if not path.is_file():
        raise AnalysisError(f"no sensitivity result at {path}: run `ptqsam sensitivity` first")
    try:
        return SensitivityResult.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise AnalysisError(f"{path} is not a readable sensitivity result: {error!r}") from None


def check_choice(value: Any, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise AnalysisError(f"{what} must be one of {tuple(choices)}, got {value!r}")
    return value


def sensitivity_study(
    model: Sam,
    recipe: Recipe | str,
    bits: Sequence[tuple[int, int]],
    samples: Sequence[CalibrationSample],
    granularity: str = "unit",
    roles: Sequence[str] = ("all",),
    mode: str = "only",
    exclude: Iterable[str] = (),
    search_rows: int | None = None,
    reconstruction: Mapping[str, Any] | None = None,
) -> SensitivityResult:
    """Calibrate ``recipe`` once per ``(w_bits, a_bits)`` in ``bits`` and measure every group.

    Arguments:
      model: a float SAM-family model (instrumented here; calibrated copies are made of it).
      recipe: a :class:`Recipe`, shipped name or YAML path.
      bits: the bit-widths, e.g. ``[(4, 4), (6, 6), (8, 8)]``.
      samples: calibration images: they calibrate and they are measured on.
      granularity: ``site``, ``unit`` or ``block`` (see :func:`.groups.model_groups`).
      roles: which sites of each group a measurement quantizes (:data:`.groups.ROLES`); allocation
        with separate weight and activation bits needs ``("weight", "activation")``.
      mode: ``only`` or ``all_but`` (:data:`MODES`).
      exclude: site patterns kept float, as in :func:`~ptqsam.calibration.calibrate`.
      search_rows, reconstruction: as in :func:`~ptqsam.calibration.calibrate`.
    """
    recipe = load_recipe(recipe)
    check_choice(granularity, GRANULARITIES, "granularity")
    check_choice(mode, MODES, "mode")
    for role in roles:
        check_choice(role, ROLES, "role")
    if not bits or not samples:
        raise AnalysisError("a sensitivity study needs at least one bit-width and one calibration image")
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    instrument(model)
    result = SensitivityResult(
        {"recipe": recipe.to_dict(), "bits": [bits_label(w, a) for w, a in bits], "granularity": granularity,
         "mode": mode, "roles": list(roles), "exclude": list(exclude), "search_rows": search_rows,
         "reconstruction": dict(reconstruction or {}),
         "image_ids": [s.image_id for s in samples], "num_prompts": sum(len(s.prompts) for s in samples)}, [], [])
    with _timed(result, "float_pass"):
        reference = reference_predictions(model, samples)
    for w_bits, a_bits in bits:
        label = bits_label(w_bits, a_bits)
        with _timed(result, f"calibrate_{label}"):
            calibrated = copy.deepcopy(model)
            calibrate(calibrated, recipe, w_bits, a_bits, samples, exclude, progress=False, search_rows=search_rows,
                      reconstruction=reconstruction)
        groups = model_groups(calibrated, granularity)
        if result.groups and [g.sites for g in groups] != [g.sites for g in result.groups]:
            raise AnalysisError(f"recipe {recipe.name!r} quantizes other sites at {label}")
        result.groups = groups
        with _timed(result, f"measure_{label}"):
            _measure(result, GroupMeter(calibrated, samples, reference, mode), w_bits, a_bits, roles)
        log.info("sensitivity %s: %d groups in %.1f s", label, len(groups), result.seconds[f"measure_{label}"])
    return result


def _measure(result: SensitivityResult, meter: "GroupMeter", w_bits: int, a_bits: int, roles: Sequence[str]) -> None:
    """Every group and role of ``result`` measured with ``meter``, added to its rows and pass counts."""
    if meter.mode == "all_but":
        result.baselines[bits_label(w_bits, a_bits)] = meter.measure(None)
    for group in result.groups:
        for role in roles:
            if group.role_sites(role):
                result.rows.append(SensitivityRow(group.name, role, w_bits, a_bits, meter.measure(group.role_sites(role))))
    for key, count in meter.passes.items():
        result.passes[key] = result.passes.get(key, 0) + count


@contextlib.contextmanager
def _timed(result: SensitivityResult, name: str) -> Iterator[None]:
    """Records the block's wall time in ``result.seconds`` and its CPU time (every thread of the
    process) in ``result.cpu_seconds``: on a shared machine the CPU time is the steadier figure."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    result.seconds[name] = round(time.perf_counter() - wall, 3)
    result.cpu_seconds[name] = round(time.process_time() - cpu, 3)


def reference_predictions(model: Sam, samples: Sequence[CalibrationSample]) -> list[Prediction]:
    """The float model's predictions on ``samples`` (attached quantizers off), on the CPU."""
    with disabled(model):
        return [_cpu(p) for _, p in SampleLoop(model, samples, encoder_float=False, progress=False).predictions("float")]


class GroupMeter:
    """Measures the :class:`Damage` of switching groups of one calibrated model, counting encoder
    and decoder passes (:attr:`passes`).

    Measurements that leave every image-encoder site as it is (decoder groups) share one
    :class:`SampleLoop` that computes each image's embedding once.

    Arguments:
      model: a calibrated model (its quantizers off).
      samples: the images and prompts to run.
      reference: the float model's predictions on them (:func:`reference_predictions`).
      mode: ``only`` (quantize the group, the rest float) or ``all_but`` (quantize all but the group).
    """

    def __init__(self, model: Sam, samples: Sequence[CalibrationSample], reference: list[Prediction],
                 mode: str) -> None:
        self.model, self.reference, self.mode = model, reference, mode
        self.fixed_encoder = SampleLoop(model, samples, encoder_float=True, progress=False)
        self.full = SampleLoop(model, samples, encoder_float=False, progress=False)
        self.passes = {"encoder": 0, "decoder": 0}
        self.quantized = set(attached_quantizers(model))

    def measure(self, group_sites: Sequence[str] | None) -> Damage:
        """The damage with ``group_sites`` switched (None: every quantizer on); sites without a
        quantizer switch nothing."""
        touches_encoder = group_sites is None or any(part_of(s) == "image_encoder" for s in group_sites)
        loop = self.full if touches_encoder else self.fixed_encoder
        hooks = [(self.model.image_encoder, lambda *_: self._count("encoder")),
                 (self.model.mask_decoder, lambda *_: self._count("decoder"))]
        with forward_hooks(hooks), self._switched(group_sites):
            predictions = [_cpu(p) for _, p in loop.predictions("sensitivity")]
        return damage(self.reference, predictions)

    def _switched(self, group_sites: Sequence[str] | None) -> contextlib.AbstractContextManager:
        if group_sites is None:
            return quantizing(self.model)
        patterns = [glob.escape(s) for s in group_sites if s in self.quantized]
        if self.mode == "only":
            return quantizing(self.model, patterns)
        stack = contextlib.ExitStack()
        stack.enter_context(quantizing(self.model))
        if patterns:
            stack.enter_context(switched(self.model, Mode.OFF, patterns))
        return stack

    def _count(self, what: str) -> None:
        self.passes[what] += 1


def damage(reference: Sequence[Prediction], predictions: Sequence[Prediction]) -> Damage:
    """:class:`Damage` of ``predictions`` against ``reference`` (same samples, same prompts)."""
    if len(reference) != len(predictions) or not reference:
        raise AnalysisError(f"{len(predictions)} predictions for {len(reference)} reference samples")
    squared = elements = abs_iou = iou_count = 0.0
    ious: list[torch.Tensor] = []
    for ref, pred in zip(reference, predictions):
        ref_logits, logits = ref.low_res_logits.double(), pred.low_res_logits.double().cpu()
        squared += float((logits - ref_logits).square().sum())
        elements += ref_logits.numel()
        abs_iou += float((pred.iou_predictions.double().cpu() - ref.iou_predictions.double()).abs().sum())
        iou_count += ref.iou_predictions.numel()
        ious.append(_mask_iou(_best(ref_logits, ref.iou_predictions), _best(logits, pred.iou_predictions.cpu())))
    return Damage(squared / elements, float(torch.cat(ious).mean()), abs_iou / iou_count)


def _best(logits: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """Each prompt's mask (binarised at logit 0) with the highest predicted IoU, N x h x w."""
    index = iou.argmax(dim=1)
    return logits[torch.arange(index.numel()), index] > 0.0


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row IoU of two N x h x w boolean mask stacks; two empty masks agree (1.0)."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _cpu(p: Prediction) -> Prediction:
    """A prediction reduced to what :func:`damage` reads, on the CPU (mask logits at the image
    size are dropped: they are an upsampling of the low-resolution ones)."""
    return Prediction(torch.empty(0), p.iou_predictions.float().cpu(), p.low_res_logits.float().cpu())
