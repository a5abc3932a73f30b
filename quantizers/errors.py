"""The one exception type of the quantizers library."""


class QuantizationError(ValueError):
    """Invalid quantization input or configuration; the message names the problem."""
