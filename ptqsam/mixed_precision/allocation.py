"""Bit allocation: a bit-width per group minimising the summed sensitivity under budgets.

Each group takes one choice of (weight bits, activation bits) among the candidates its
sensitivity rows were measured at. With rows per role (``weight`` / ``activation``) the choices
are every pair and a choice's sensitivity is its weight row's score plus its activation row's,
each from the calibration at the choice's own pair where the study made one (else from the first
calibration at that row's bits);
with rows of role ``all`` the choices are the measured bit-widths. Damages are assumed additive
(across groups and roles): the usual assumption of integer-programming allocation (HAWQ-V3,
Sony MCT, Mix-QSAM). Every cost kind (:mod:`.costs`) is linear in the choices when each product's
operands lie in one group, so the problem is a 0/1 integer program, solved by
``scipy.optimize.milp`` (HiGHS branch and bound, relative gap 0). Budget rows are written in
integer counts (element·bits, BOPs), so that no assignment over budget fits within the solver's
feasibility tolerance, and the assignment is checked against the budgets with the same cost
function that reports the costs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ptqsam.analysis.groups import Group
from ptqsam.analysis.sensitivity import SensitivityResult
from ptqsam.bits import parse_bits
from ptqsam.errors import AllocationError, RecipeError
from ptqsam.mixed_precision.costs import COST_KINDS, ModelCosts

#: The objective is shifted (each group's cheapest choice at 0) and scaled to this total range,
#: so that HiGHS's absolute gap (1e-6) is negligible whatever the metric's magnitude.
OBJECTIVE_RANGE = 1e6
#: A chosen assignment may exceed a budget by this relative amount (solver round-off) at most.
BUDGET_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Choice:
    """The bits of a group's weights and of its activations (None: the group has none)."""

    w_bits: int | None
    a_bits: int | None

    def bits_for(self, group: Group) -> dict[str, int]:
        """``site -> bits`` of the group's sites under this choice."""
        return {**{s: self.w_bits for s in group.weights}, **{s: self.a_bits for s in group.activations}}

    @property
    def label(self) -> str:
        return "".join(f"{p}{b}" for p, b in (("W", self.w_bits), ("A", self.a_bits)) if b is not None)


@dataclass(frozen=True)
class Budget:
    """An upper limit on one cost kind (:data:`~.costs.COST_KINDS`); ``text`` says where it came from."""

    kind: str
    limit: float
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in COST_KINDS:
            raise AllocationError(f"budget kind must be one of {COST_KINDS}, got {self.kind!r}")
        if not np.isfinite(self.limit) or self.limit <= 0:
            raise AllocationError(f"a budget limit must be a positive number, got {self.limit!r}")

    def describe(self) -> str:
        source = f" (= {self.text})" if self.text and self.text != f"{self.limit:g}" else ""
        return f"{self.kind} <= {self.limit:.6g}{source}"


def parse_budget(text: str, costs: ModelCosts) -> list[Budget]:
    """``"W5A5"``: average weight bits <= 5 and average activation bits <= 5 (the averages of
    uniform W5A5); ``"kind=value"``: a number, or a bits label meaning that uniform bit-width's
    cost (``"gbops=W6A6"``, ``"size_mb=W4A8"``)."""
    kind, sep, value = text.strip().partition("=")
    if not sep:
        try:
            w_bits, a_bits = parse_bits(text)
        except RecipeError:
            raise AllocationError(f"a budget is 'W<w>A<a>' or '<kind>=<value>' with kind in {COST_KINDS}, "
                                  f"got {text!r}") from None
        return [Budget("weight_bits", float(w_bits), text), Budget("activation_bits", float(a_bits), text)]
    kind, value = kind.strip(), value.strip()
    if kind not in COST_KINDS:
        raise AllocationError(f"budget kind must be one of {COST_KINDS}, got {kind!r} in {text!r}")
    try:
        return [Budget(kind, float(value), text)]
    except ValueError:
        pass
    try:
        w_bits, a_bits = parse_bits(value)
    except RecipeError:
        raise AllocationError(f"budget value must be a number or a bits label like W6A6, got {value!r}") from None
    return [Budget(kind, costs.uniform(w_bits, a_bits)[kind], text)]


@dataclass(frozen=True)
class Allocation:
    """What :func:`allocate` chose: a choice per group, the bits per site, the predicted summed
    sensitivity and the costs of the assignment."""

    choices: dict[str, Choice]
    bits_by_site: dict[str, int]
    sensitivity: float
    costs: dict[str, float]
    budgets: tuple[Budget, ...]

    def summary(self) -> dict[str, Any]:
        """What ``ptqsam allocate`` prints: the budgets, the costs, the predicted summed sensitivity
        and how many groups got each choice."""
        counts = Counter(choice.label for choice in self.choices.values())
        return {"budgets": [b.describe() for b in self.budgets], "costs": self.costs,
                "predicted_sensitivity": self.sensitivity, "choices": dict(sorted(counts.items()))}


def group_choices(result: SensitivityResult, metric: str = "mse",
                  candidates: Collection[int] | None = None) -> dict[str, dict[Choice, float]]:
    """``group -> {choice: sensitivity}`` from a study's rows (see the module docstring), keeping
    the choices whose bits are all among ``candidates`` (default: every measured bit-width)."""
    roles = set(result.settings["roles"])
    split = {"weight", "activation"} <= roles
    if not split and "all" not in roles:
        raise AllocationError(f"allocation needs rows of role 'all' or of both 'weight' and 'activation', "
                              f"the study has {sorted(roles)}")
    # (group, role) -> the role's bits -> calibration (w_bits, a_bits) -> score, in the study's order
    by_role: dict[tuple[str, str], dict[int, dict[tuple[int, int], float]]] = {}
    for row in result.rows:
        bits = row.w_bits if row.role == "weight" else row.a_bits
        by_role.setdefault((row.group, row.role), {}).setdefault(bits, {})[(row.w_bits, row.a_bits)] = \
            result.score(row, metric)
    unmeasured = {None: {(None, None): 0.0}}
    choices = {}
    for group in result.groups:
        if split:
            weights = by_role.get((group.name, "weight"), {}) if group.weights else unmeasured
            activations = by_role.get((group.name, "activation"), {}) if group.activations else unmeasured
            options = {Choice(w, a): _calibrated_at(sw, (w, a)) + _calibrated_at(sa, (w, a))
                       for w, sw in weights.items() for a, sa in activations.items()}
        else:
            options = {Choice(row.w_bits if group.weights else None, row.a_bits if group.activations else None):
                       result.score(row, metric) for row in result.rows if row.group == group.name and row.role == "all"}
        if candidates is not None:
            options = {c: v for c, v in options.items() if {c.w_bits, c.a_bits} - {None} <= set(candidates)}
        if not options:
            raise AllocationError(f"group {group.name} has no sensitivity row to choose from"
                                  + ("" if candidates is None else f" among the candidate bits {sorted(candidates)}"))
        choices[group.name] = options
    return choices


def _calibrated_at(scores: dict[tuple, float], pair: tuple) -> float:
    """The score of a role's row from the calibration at ``pair`` where the study has one, else from
    its first calibration at that role's bits (a weight row W4 comes from W4A4 and from W4A8, and
    a joint search such as ``ptq4vit``'s fits the weights against the activations' bits)."""
    return scores.get(pair, next(iter(scores.values())))


def allocate(groups: Sequence[Group], choices: Mapping[str, Mapping[Choice, float]], costs: ModelCosts,
             budgets: Sequence[Budget]) -> Allocation:
    """The choice per group minimising the summed sensitivity with every budget met (exact 0/1 ILP)."""
    if not budgets:
        raise AllocationError("an allocation needs at least one budget")
    if any(b.kind == "gbops" for b in budgets):
        _check_products_inside_groups(groups, costs)
    variables = [(g, c, float(s)) for g in groups for c, s in sorted(choices[g.name].items(), key=_order)]
    base = costs.of({})
    contribution = [costs.of(c.bits_for(g)) for g, c, _ in variables]
    rows, lower, upper = [], [], []
    for group in groups:
        rows.append([1.0 if g is group else 0.0 for g, _, _ in variables])
        lower.append(1.0)
        upper.append(1.0)
    for budget in budgets:  # in integer counts, so the solver's tolerance (1e-6) cannot let an excess pass
        unit = costs.unit(budget.kind)
        rows.append(np.round([(c[budget.kind] - base[budget.kind]) * unit for c in contribution]))
        lower.append(-np.inf)
        upper.append(_whole_counts((budget.limit - base[budget.kind]) * unit, budget.limit * unit))
    with _solver_output_hidden():
        solution = milp(_objective(variables), integrality=np.ones(len(variables)), bounds=Bounds(0, 1),
                        constraints=LinearConstraint(np.array(rows), lower, upper), options={"mip_rel_gap": 0.0})
    if solution.x is None:
        raise AllocationError(f"no choice of the candidate bits meets {_describe(budgets)} "
                              f"({solution.message.strip()}); {_cheapest(groups, choices, costs, budgets)}")
    picked = [variables[i] for i in np.flatnonzero(solution.x > 0.5)]
    chosen = {g.name: c for g, c, _ in picked}
    bits = {site: b for g, c, _ in picked for site, b in c.bits_for(g).items()}
    result = Allocation(chosen, bits, sum(s for _, _, s in picked), costs.of(bits), tuple(budgets))
    _check_budgets(result)
    return result


def _whole_counts(room: float, scale: float) -> float:
    """The most whole counts ``room`` allows. ``room`` comes from costs in reported units (GBOPs,
    MB, average bits) scaled back to counts, so a limit met exactly by an assignment (a budget of
    ``gbops=W6A6``, say) can land a rounding error below its integer: that error (relative to the
    limit's own size, ~1e-16) is forgiven, a whole count never is."""
    return float(np.floor(room + 1e-13 * max(1.0, abs(scale))))


@contextlib.contextmanager
def _solver_output_hidden() -> Iterator[None]:
    """Standard output (file descriptor 1) sent to the null device: HiGHS prints debugging lines
    (``HighsMipSolverData::transformNewIntegerFeasibleSolution ...``) from C++ even with ``disp``
    off, which would corrupt the JSON that ``ptqsam allocate`` prints."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _order(item: tuple[Choice, float]) -> tuple:
    choice = item[0]
    return (choice.w_bits or 0, choice.a_bits or 0)


def _objective(variables: list[tuple[Group, Choice, float]]) -> np.ndarray:
    """Sensitivities shifted so each group's least is 0 and scaled to :data:`OBJECTIVE_RANGE`."""
    least: dict[str, float] = {}
    most: dict[str, float] = {}
    for group, _, s in variables:
        least[group.name] = min(least.get(group.name, s), s)
        most[group.name] = max(most.get(group.name, s), s)
    total = sum(most[name] - least[name] for name in least)
    shifted = np.array([s - least[g.name] for g, _, s in variables])
    return shifted * (OBJECTIVE_RANGE / total) if total > 0 else shifted


def _check_products_inside_groups(groups: Sequence[Group], costs: ModelCosts) -> None:
    home = {site: g.name for g in groups for site in g.sites}
    split = [p.name for p in costs.products if p.a in home and p.b in home and home[p.a] != home[p.b]]
    if split:
        raise AllocationError(f"a BOPs budget needs both operands of each product in one group; {len(split)} "
                              f"product(s), e.g. {split[:3]}, span two groups: use unit or block granularity")


def _check_budgets(allocation: Allocation) -> None:
    for budget in allocation.budgets:
        spent = allocation.costs[budget.kind]
        if spent > budget.limit + BUDGET_TOLERANCE * abs(budget.limit):
            raise AllocationError(f"the solver's assignment costs {budget.kind} = {spent:.9g}, over {budget.describe()}")


def _cheapest(groups: Sequence[Group], choices, costs: ModelCosts, budgets: Sequence[Budget]) -> str:
    """The least each budgeted cost can be with these candidates (why nothing fits)."""
    parts = []
    for kind in dict.fromkeys(b.kind for b in budgets):
        bits = {}
        for group in groups:
            best = min(choices[group.name], key=lambda c: costs.of(c.bits_for(group))[kind])
            bits.update(best.bits_for(group))
        parts.append(f"{kind} >= {costs.of(bits)[kind]:.6g}")
    return "the candidates give at best " + ", ".join(parts)


def _describe(budgets: Sequence[Budget]) -> str:
    return " and ".join(b.describe() for b in budgets)
