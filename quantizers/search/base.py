"""Scale searches as registered parts: each names the grids it can search."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantizers.registry import register_search

if TYPE_CHECKING:
    from quantizers.spec import QuantSpec


class ScaleSearch:
    """A calibration-time scale search, registered with its options dataclass
    (:func:`~quantizers.registry.register_search`). The algorithm itself runs on cached tensors
    (e.g. :mod:`quantizers.search.hessian`); this class says which specs it can serve."""

    @classmethod
    def check_spec(cls, spec: "QuantSpec") -> None:
        """Raise :class:`~quantizers.errors.QuantizationError` if the search cannot search ``spec``'s grid."""


@register_search("none")
class NoSearch(ScaleSearch):
    """No search: the observer's statistics give the qparams."""
