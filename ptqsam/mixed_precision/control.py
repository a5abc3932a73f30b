"""Accuracy control: raise the most sensitive groups one by one until the loss is within a target.

As NNCF's accuracy-aware quantization, on SAM's groups: start with every group at a uniform low
bit-width; in order of decreasing sensitivity at that bit-width, move one group at a time to a
higher bit-width (or keep it float) and measure Δ mIoU against the float model on a held-out set
of images; stop at the first assignment with Δ mIoU >= −target. Each measurement assembles the
model from the two uniform calibrations (:func:`~.recipes.assemble`): nothing is recalibrated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

from segment_anything.modeling import Sam

from ptqsam.analysis.groups import Group
from ptqsam.analysis.sensitivity import SensitivityResult
from ptqsam.data.coco import CocoDataset
from ptqsam.errors import AllocationError
from ptqsam.evaluation.evaluator import EvalOptions, evaluate
from ptqsam.instrument import quantizing
from ptqsam.mixed_precision.allocation import Choice, group_choices
from ptqsam.mixed_precision.costs import ModelCosts
from ptqsam.mixed_precision.recipes import assemble

#: ``measure(bits_by_site) -> Δ mIoU`` (quantized − float; sites absent are float).
Measure = Callable[[Mapping[str, int]], float]


@dataclass(frozen=True)
class ControlStep:
    """One measured assignment: the group raised to reach it (None: the uniform start)."""

    step: int
    group: str | None
    delta_miou: float
    costs: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ControlResult:
    """The trajectory, the first and last assignments, and whether the last meets the target."""

    steps: tuple[ControlStep, ...]
    start_bits: dict[str, int]
    bits_by_site: dict[str, int]
    reached: bool
    target: float


def ranked_groups(result: SensitivityResult, w_bits: int, a_bits: int, metric: str = "mse") -> list[Group]:
    """The study's groups, most sensitive first at uniform ``w_bits``/``a_bits`` (ties: model order)."""
    choices = group_choices(result, metric)

    def score(group: Group) -> float:
        choice = Choice(w_bits if group.weights else None, a_bits if group.activations else None)
        if choice not in choices[group.name]:
            raise AllocationError(f"the study has no row for group {group.name} at {choice.label}")
        return choices[group.name][choice]

    order = {g.name: i for i, g in enumerate(result.groups)}
    return sorted(result.groups, key=lambda g: (-score(g), order[g.name]))


def accuracy_control(
    groups: Sequence[Group],
    low: tuple[int, int],
    high: tuple[int, int] | None,
    measure: Measure,
    target: float,
    costs: ModelCosts,
    max_steps: int | None = None,
) -> ControlResult:
    """Raise ``groups`` in the order given from ``low`` to ``high`` (``(w_bits, a_bits)``; None:
    float) until ``measure`` says Δ mIoU >= −``target``, or every group (or ``max_steps``) is raised."""
    if target < 0:
        raise AllocationError(f"the target is a tolerated mIoU loss (>= 0), got {target!r}")
    bits: dict[str, int] = {}
    for group in groups:
        bits.update(_choice(group, low).bits_for(group))
    start = dict(bits)
    delta = measure(bits)
    steps = [ControlStep(0, None, delta, costs.of(bits))]
    limit = len(groups) if max_steps is None else min(max_steps, len(groups))
    for index, group in enumerate(groups[:limit], start=1):
        if delta >= -target:
            break
        for site in group.sites:
            bits.pop(site)
        if high is not None:
            bits.update(_choice(group, high).bits_for(group))
        delta = measure(bits)
        steps.append(ControlStep(index, group.name, delta, costs.of(bits)))
    return ControlResult(tuple(steps), start, dict(bits), delta >= -target, target)


def _choice(group: Group, bits: tuple[int, int]) -> Choice:
    return Choice(bits[0] if group.weights else None, bits[1] if group.activations else None)


class HeldOutMeasure:
    """Δ mIoU on held-out images of the model :func:`~.recipes.assemble` makes from ``calibrated``.

    Arguments:
      calibrated: models calibrated at the bit-widths the assignments use.
      dataset, image_ids, options: the held-out images and the prompt protocol.
      float_miou: the float model's mIoU on them.
    """

    def __init__(self, calibrated: Sequence[Sam], dataset: CocoDataset, image_ids: Sequence[int],
                 options: EvalOptions, float_miou: float) -> None:
        self.calibrated, self.dataset, self.image_ids = list(calibrated), dataset, list(image_ids)
        self.options, self.float_miou = options, float_miou

    def __call__(self, bits_by_site: Mapping[str, int]) -> float:
        model = assemble(self.calibrated, bits_by_site)
        with quantizing(model):
            result = evaluate(model, self.dataset, self.image_ids, self.options, progress=False)
        return result.metrics["miou"] - self.float_miou
