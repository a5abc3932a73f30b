"""Accuracy control: raises groups in order, stops as soon as the target holds, reports the trajectory."""

from __future__ import annotations

import pytest

from ptqsam.analysis.groups import Group
from ptqsam.analysis.sensitivity import Damage, SensitivityResult, SensitivityRow
from ptqsam.errors import AllocationError
from ptqsam.mixed_precision.control import accuracy_control, ranked_groups
from ptqsam.mixed_precision.costs import ModelCosts, ProductCost

GROUPS = [Group(f"g{i}", (f"g{i}.w",), (f"g{i}.a",)) for i in range(5)] + [Group("mm", (), ("mm.q", "mm.k"))]
COSTS = ModelCosts({f"g{i}.w": 100 for i in range(5)}, {**{f"g{i}.a": 10 for i in range(5)}, "mm.q": 5, "mm.k": 5},
                   (ProductCost("mm", "mm.q", "mm.k", 1000),), 0, frozenset(s for g in GROUPS for s in g.sites))


class FakeMeasure:
    """Δ mIoU = −0.1 + 0.03 per group fully above 4 bits (float counts too); records every call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, int]] = []

    def __call__(self, bits):
        self.calls.append(dict(bits))
        raised = [g for g in GROUPS if all(bits.get(s, 32) > 4 for s in g.sites)]
        return -0.1 + 0.03 * len(raised)


@pytest.mark.parametrize("high", [(8, 8), None])
def test_stops_at_the_first_step_that_meets_the_target(high):
    measure = FakeMeasure()
    result = accuracy_control(GROUPS, (4, 4), high, measure, target=0.02, costs=COSTS)
    assert [s.group for s in result.steps] == [None, "g0", "g1", "g2"]  # -0.1, -0.07, -0.04, -0.01
    assert result.reached and result.steps[-1].delta_miou == pytest.approx(-0.01)
    assert len(measure.calls) == 4  # no measurement after the target holds
    assert result.start_bits == measure.calls[0] and set(result.start_bits.values()) == {4}
    raised = {s for g in GROUPS[:3] for s in g.sites}
    if high is None:
        assert set(result.bits_by_site) == COSTS.domain - raised  # raised groups kept float
    else:
        assert {s for s, b in result.bits_by_site.items() if b == 8} == raised
    assert result.steps[0].costs == COSTS.uniform(4, 4)
    assert result.steps[-1].costs == COSTS.of(result.bits_by_site)
    assert result.steps[1].costs["weight_bits"] > result.steps[0].costs["weight_bits"]


def test_no_step_when_the_start_meets_the_target_and_a_report_when_nothing_does():
    start_only = accuracy_control(GROUPS, (4, 4), (8, 8), FakeMeasure(), target=0.2, costs=COSTS)
    assert len(start_only.steps) == 1 and start_only.reached
    unreachable = accuracy_control(GROUPS, (4, 4), (8, 8), lambda bits: -0.5, target=0.01, costs=COSTS)
    assert not unreachable.reached and len(unreachable.steps) == len(GROUPS) + 1
    capped = accuracy_control(GROUPS, (4, 4), (8, 8), lambda bits: -0.5, target=0.01, costs=COSTS, max_steps=2)
    assert len(capped.steps) == 3 and not capped.reached
    with pytest.raises(AllocationError, match="target"):
        accuracy_control(GROUPS, (4, 4), (8, 8), FakeMeasure(), target=-0.1, costs=COSTS)


def test_groups_ranked_by_their_sensitivity_at_the_start_bits():
    def row(group, role, mse, bits=4):
        return SensitivityRow(group, role, bits, bits, Damage(mse, 1.0, 0.0))
    rows = [row("g0", "weight", 0.1), row("g0", "activation", 0.1), row("g1", "weight", 0.5),
            row("g1", "activation", 0.0), row("mm", "activation", 0.3), row("g1", "weight", 9.0, bits=8)]
    study = SensitivityResult({"roles": ["weight", "activation"], "mode": "only", "bits": ["W4A4"]},
                              [GROUPS[0], GROUPS[1], GROUPS[5]], rows)
    assert [g.name for g in ranked_groups(study, 4, 4)] == ["g1", "mm", "g0"]
    with pytest.raises(AllocationError, match="no row for group"):
        ranked_groups(study, 6, 6)
