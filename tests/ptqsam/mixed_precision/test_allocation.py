"""Bit allocation: the ILP against brute force, budgets met exactly, budget parsing, errors."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptqsam.analysis.groups import Group
from ptqsam.analysis.sensitivity import Damage, SensitivityResult, SensitivityRow
from ptqsam.errors import AllocationError
from ptqsam.mixed_precision.allocation import Budget, Choice, allocate, group_choices, parse_budget
from ptqsam.mixed_precision.costs import ModelCosts, ProductCost

BITS = (4, 6, 8)


def _instance(sizes: list[tuple[int, int, int]]) -> tuple[list[Group], ModelCosts]:
    """Groups g0, g1, ... each a layer (weight, input) with ``(weight numel, input numel, MACs)``."""
    groups = [Group(f"g{i}", (f"g{i}.w",), (f"g{i}.a",)) for i in range(len(sizes))]
    costs = ModelCosts({f"g{i}.w": w for i, (w, _, _) in enumerate(sizes)},
                       {f"g{i}.a": a for i, (_, a, _) in enumerate(sizes)},
                       tuple(ProductCost(f"g{i}", f"g{i}.a", f"g{i}.w", m) for i, (_, _, m) in enumerate(sizes)),
                       17, frozenset(s for g in groups for s in g.sites))
    return groups, costs


def _brute_force(groups, choices, costs, budgets) -> float | None:
    best = None
    for picked in itertools.product(*(sorted(choices[g.name], key=lambda c: (c.w_bits, c.a_bits)) for g in groups)):
        bits = {s: b for g, c in zip(groups, picked) for s, b in c.bits_for(g).items()}
        spent = costs.of(bits)
        if all(spent[b.kind] <= b.limit for b in budgets):
            total = sum(choices[g.name][c] for g, c in zip(groups, picked))
            best = total if best is None else min(best, total)
    return best


@settings(max_examples=40, deadline=None)
@given(data=st.data(), count=st.integers(1, 3), kinds=st.sets(st.sampled_from(
    ["weight_bits", "activation_bits", "size_mb", "gbops"]), min_size=1, max_size=2))
def test_ilp_equals_brute_force_and_meets_the_budgets(data, count, kinds):
    sizes = [data.draw(st.tuples(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 10**7))) for _ in range(count)]
    groups, costs = _instance(sizes)
    scores = st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False)
    choices = {g.name: {Choice(w, a): data.draw(scores) for w in BITS for a in BITS} for g in groups}
    budgets = []
    for kind in sorted(kinds):
        low, high = costs.uniform(4, 4)[kind], costs.uniform(8, 8)[kind]
        budgets.append(Budget(kind, data.draw(st.floats(low * 0.98, high * 1.01))))
    expected = _brute_force(groups, choices, costs, budgets)
    if expected is None:
        with pytest.raises(AllocationError, match="no choice of the candidate bits meets"):
            allocate(groups, choices, costs, budgets)
        return
    result = allocate(groups, choices, costs, budgets)
    assert result.sensitivity == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert all(result.costs[b.kind] <= b.limit for b in budgets)
    assert result.costs == costs.of(result.bits_by_site)
    assert set(result.bits_by_site) == costs.domain


def test_a_budget_met_with_equality_is_met_exactly():
    groups, costs = _instance([(1000, 10, 5), (3000, 10, 5), (500, 10, 5)])
    choices = {g.name: {Choice(w, 8): 1.0 / w for w in BITS} for g in groups}  # more bits, less damage
    tight = costs.of({"g0.w": 8, "g1.w": 4, "g2.w": 6, "g0.a": 8, "g1.a": 8, "g2.a": 8})["weight_bits"]
    result = allocate(groups, choices, costs, [Budget("weight_bits", tight)])
    assert result.costs["weight_bits"] <= tight
    assert result.sensitivity == pytest.approx(_brute_force(groups, choices, costs, [Budget("weight_bits", tight)]))
    everything = allocate(groups, choices, costs, [Budget("weight_bits", 8.0)])
    assert {c.w_bits for c in everything.choices.values()} == {8}


def test_budget_texts():
    _, costs = _instance([(1000, 200, 10**6), (100, 50, 10**5)])
    assert parse_budget("W5A6", costs) == [Budget("weight_bits", 5.0, "W5A6"), Budget("activation_bits", 6.0, "W5A6")]
    assert parse_budget("size_mb=0.25", costs) == [Budget("size_mb", 0.25, "size_mb=0.25")]
    assert parse_budget("gbops=W6A6", costs)[0].limit == pytest.approx(costs.uniform(6, 6)["gbops"])
    for text, match in (("latency=3", "kind"), ("size_mb=small", "number or a bits label"), ("5", "W<w>A<a>"),
                        ("size_mb=-1", "positive")):
        with pytest.raises(AllocationError, match=match):
            parse_budget(text, costs)


def test_bops_need_each_product_inside_one_group():
    groups, costs = _instance([(100, 100, 100)])
    split = [Group("w", ("g0.w",), ()), Group("a", (), ("g0.a",))]
    choices = {"w": {Choice(b, None): 0.0 for b in BITS}, "a": {Choice(None, b): 0.0 for b in BITS}}
    assert allocate(split, choices, costs, [Budget("weight_bits", 6.0)]).costs["weight_bits"] <= 6.0
    with pytest.raises(AllocationError, match="span two groups"):
        allocate(split, choices, costs, [Budget("gbops", 1.0)])
    with pytest.raises(AllocationError, match="at least one budget"):
        allocate(groups, {"g0": {Choice(4, 4): 0.0}}, costs, [])


def _study(roles: list[str], rows: list[SensitivityRow]) -> SensitivityResult:
    groups = [Group("lin", ("lin.weight",), ("lin.input",)), Group("mm", (), ("mm.query", "mm.key"))]
    return SensitivityResult({"roles": roles, "mode": "only", "bits": ["W4A4", "W8A8"]}, groups, rows)


def test_group_choices_add_weight_and_activation_rows():
    def row(group, role, bits, mse):
        return SensitivityRow(group, role, bits, bits, Damage(mse, 1.0, 0.0))
    rows = [row("lin", "weight", 4, 1.0), row("lin", "weight", 8, 0.1), row("lin", "activation", 4, 2.0),
            row("lin", "activation", 8, 0.2), row("mm", "activation", 4, 5.0), row("mm", "activation", 8, 0.5)]
    choices = group_choices(_study(["weight", "activation"], rows))
    assert choices["lin"] == {Choice(4, 4): 3.0, Choice(4, 8): 1.2, Choice(8, 4): 2.1, Choice(8, 8): pytest.approx(0.3)}
    assert choices["mm"] == {Choice(None, 4): 5.0, Choice(None, 8): 0.5}
    whole = group_choices(_study(["all"], [row("lin", "all", 4, 3.0), row("mm", "all", 8, 0.4)]))
    assert whole == {"lin": {Choice(4, 4): 3.0}, "mm": {Choice(None, 8): 0.4}}
    assert group_choices(_study(["weight", "activation"], rows), candidates=[8]) == {
        "lin": {Choice(8, 8): pytest.approx(0.3)}, "mm": {Choice(None, 8): 0.5}}
    with pytest.raises(AllocationError, match="among the candidate bits"):
        group_choices(_study(["weight", "activation"], rows), candidates=[6])
    with pytest.raises(AllocationError, match="role"):
        group_choices(_study(["weight"], rows))


def test_split_rows_measured_under_two_calibrations_count_with_the_choices_own():
    def row(role, w_bits, a_bits, mse):
        return SensitivityRow("lin", role, w_bits, a_bits, Damage(mse, 1.0, 0.0))
    rows = [row("weight", 4, 4, 1.0), row("activation", 4, 4, 2.0),  # calibrated at W4A4
            row("weight", 4, 8, 1.5), row("activation", 4, 8, 0.3),  # W4A8: its W4 row differs
            row("weight", 8, 8, 0.1), row("activation", 8, 8, 0.2)]
    study = _study(["weight", "activation"], rows)
    study.groups = study.groups[:1]
    assert group_choices(study)["lin"] == {
        Choice(4, 4): 3.0, Choice(4, 8): pytest.approx(1.8), Choice(8, 4): pytest.approx(2.1),
        Choice(8, 8): pytest.approx(0.3)}  # W8A4 was not calibrated: its rows' first calibrations


def test_an_excess_below_the_solver_tolerance_is_not_accepted():
    groups, costs = _instance([(10**8, 10, 5), (1, 10, 5)])
    choices = {g.name: {Choice(w, 8): 1.0 / w for w in (4, 8)} for g in groups}
    over = costs.of({"g0.w": 4, "g1.w": 8, "g0.a": 8, "g1.a": 8})["weight_bits"]
    budget = Budget("weight_bits", over - 1e-9)  # (4, 8) is over by a relative 2.5e-10: (4, 4) is the answer
    result = allocate(groups, choices, costs, [budget])
    assert {g: c.w_bits for g, c in result.choices.items()} == {"g0": 4, "g1": 4}


def test_a_budget_of_a_uniform_setting_admits_that_setting(random_testbed):
    """``gbops=W6A6`` is met exactly by uniform W6A6: the bound, scaled back to whole bit-operations,
    must not fall a rounding error short of it (it did for the testbed's decoder: uniform W6A6, the
    least damage, was shut out and a group was put at 4 bits)."""
    from ptqsam.analysis.groups import model_groups
    from ptqsam.instrument import instrument, sites
    from ptqsam.mixed_precision.costs import model_costs

    model = instrument(random_testbed())
    names = [n for n, s in sites(model).items() if s.kind != "output" and not n.startswith("image_encoder")]
    groups = model_groups(model, "unit", names)
    costs = model_costs(model, {s for g in groups for s in g.sites})
    for kind in ("gbops", "size_mb"):
        budgets = parse_budget(f"{kind}=W6A6", costs)
        choices = {g.name: {Choice(b if g.weights else None, b if g.activations else None): float(b == 4)
                            for b in (4, 6)} for g in groups}
        result = allocate(groups, choices, costs, budgets)
        assert result.sensitivity == 0.0, kind  # uniform W6A6
