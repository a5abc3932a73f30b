"""quantizers: generic fake-quantization numerics (knows nothing of SAM).

Layers: ``functional`` (pure tensor functions) → ``observers``, ``modules`` and ``parts`` (stateful,
state in buffers) → ``search`` and ``transforms`` (calibration-time algorithms on cached tensors).
Configuration is :class:`~quantizers.spec.QuantSpec`; quantizer kinds, observers, searches and
rounding parts register themselves in :mod:`quantizers.registry`.
"""

from quantizers.errors import QuantizationError
from quantizers.levels import GridLevels
from quantizers.modules.base import Mode, Quantizer
from quantizers.options import Options
from quantizers.registry import (OBSERVERS, QUANTIZERS, SEARCHES, build_observer, build_quantizer, register_observer,
                                 register_quantizer, register_search)
from quantizers.spec import Granularity, QuantSpec

from quantizers.registry import import_parts

# Every module of these packages is imported, so its parts register themselves: adding a
# quantizer kind, observer, search or rounding part is one new module with its decorator.
import_parts(("quantizers.modules", "quantizers.observers", "quantizers.search", "quantizers.parts"))

__all__ = [
    "OBSERVERS", "QUANTIZERS", "SEARCHES", "Granularity", "GridLevels", "Mode", "Options", "QuantSpec", "Quantizer",
    "QuantizationError", "build_observer", "build_quantizer", "register_observer", "register_quantizer",
    "register_search",
]
