"""Input checks: NaN/Inf checks deferred to the end of a block, on every kernel path."""

from __future__ import annotations

import pytest
import torch

from quantizers.errors import QuantizationError
from quantizers.functional.checks import check_peak, deferred_peak_checks
from quantizers.functional.twin import TwinGrid, twin_fake_quantize
from quantizers.functional.uniform import fake_quantize

pytestmark = pytest.mark.usefixtures("kernel_path")

SCALE, ZERO = torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return fake_quantize(x, SCALE, ZERO, -128, 127)


def _with(value: float) -> torch.Tensor:
    x = torch.linspace(-1, 1, 64)
    x[17] = value
    return x


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_input_raises_at_the_call_outside_a_block_and_at_its_end_inside(value: float) -> None:
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        _quantize(_with(value))
    reached_the_end = False
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        with deferred_peak_checks():
            _quantize(_with(0.5))
            _quantize(_with(value))  # no error yet: nothing waits on this check
            reached_the_end = True
    assert reached_the_end


def test_finite_inputs_pass_inside_a_block() -> None:
    with deferred_peak_checks():
        out = _quantize(_with(0.5))
    assert torch.equal(out, _quantize(_with(0.5)))


def test_the_outer_end_reports_a_nan_of_an_inner_block() -> None:
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        with deferred_peak_checks():
            with deferred_peak_checks():
                _quantize(_with(float("nan")))
            _quantize(_with(0.25))


def test_checks_that_a_decision_waits_on_are_never_deferred() -> None:
    with deferred_peak_checks(), pytest.raises(QuantizationError, match="observed tensor"):
        check_peak(torch.tensor(float("inf")), "observed tensor")


def test_a_block_that_raises_keeps_its_own_error_and_drops_its_pending_checks() -> None:
    with pytest.raises(KeyError):
        with deferred_peak_checks():
            _quantize(_with(float("nan")))
            raise KeyError("the body's own error")
    with deferred_peak_checks():  # nothing left over from the block above
        _quantize(_with(0.5))


def test_twin_inputs_are_checked_by_the_end_of_the_block() -> None:
    x = _with(float("nan")).abs()
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        with deferred_peak_checks():
            twin_fake_quantize(x, TwinGrid.softmax(8, 4))
