"""Build observers and quantizers from specs (name -> class registries)."""

from __future__ import annotations

from importlib import import_module

from quantizers.modules.base import Quantizer
from quantizers.observers.base import Observer
from quantizers.spec import QuantSpec

OBSERVERS: dict[str, str] = {
    "minmax": "quantizers.observers.minmax:MinMaxObserver",
    "avg_minmax": "quantizers.observers.minmax:AvgMinMaxObserver",
    "ema_minmax": "quantizers.observers.minmax:EMAMinMaxObserver",
    "percentile": "quantizers.observers.histogram:PercentileObserver",
    "kl": "quantizers.observers.histogram:KLObserver",
    "mse": "quantizers.observers.mse:MSEObserver",
}

QUANTIZERS: dict[str, str] = {
    "uniform": "quantizers.modules.uniform:UniformQuantizer",
    "log": "quantizers.modules.log:LogQuantizer",
    "twin_softmax": "quantizers.modules.twin:TwinSoftmaxQuantizer",
    "twin_gelu": "quantizers.modules.twin:TwinGeluQuantizer",
}


def _resolve(path: str) -> type:
    module, name = path.split(":")
    return getattr(import_module(module), name)


def build_observer(spec: QuantSpec) -> Observer:
    """The observer named by ``spec.observer``."""
    return _resolve(OBSERVERS[spec.observer])(spec)


def build_quantizer(spec: QuantSpec) -> Quantizer:
    """The quantizer named by ``spec.quantizer``."""
    return _resolve(QUANTIZERS[spec.quantizer])(spec)
