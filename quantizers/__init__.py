"""quantizers: generic fake-quantization numerics (knows nothing of SAM).

Layers: ``functional`` (pure tensor functions) → ``observers`` and ``modules`` (stateful, state in
buffers) → ``search`` and ``transforms`` (calibration-time algorithms on cached tensors).
Configuration is :class:`~quantizers.spec.QuantSpec`.
"""

from quantizers.errors import QuantizationError
from quantizers.modules.base import Mode, Quantizer
from quantizers.modules.factory import build_observer, build_quantizer
from quantizers.spec import Granularity, QuantSpec

__all__ = ["Granularity", "Mode", "QuantSpec", "Quantizer", "QuantizationError", "build_observer", "build_quantizer"]
