"""The registry of parts: quantizer kinds, observers and scale searches, by name.

A class registers itself where it is defined, with the frozen :class:`~quantizers.options.Options`
dataclass of its options::

    @register_observer("minmax")
    class MinMaxObserver(Observer): ...

    @register_quantizer("log", LogOptions)
    class LogQuantizer(Quantizer): ...

so adding a part touches one module. :class:`~quantizers.spec.QuantSpec` checks names and options
against these registries; :func:`build_quantizer` and :func:`build_observer` build from a spec.
Importing :mod:`quantizers` imports every module of its part packages (:func:`import_parts`), so
every shipped part is registered.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Mapping, TypeVar

from quantizers.errors import QuantizationError
from quantizers.options import Options

if TYPE_CHECKING:
    from quantizers.modules.base import Quantizer
    from quantizers.observers.base import Observer
    from quantizers.spec import QuantSpec

PartT = TypeVar("PartT", bound=type)


@dataclass(frozen=True)
class Entry(Generic[PartT]):
    """One registered part: its name, class and options dataclass."""

    name: str
    cls: PartT
    options: type[Options]


class Registry(Generic[PartT]):
    """Name -> :class:`Entry` for one kind of part (iterating yields the names, sorted).

    Arguments:
      what: the kind of part, for messages (``"observer"``, ``"quantizer"``, ``"search"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[PartT]] = {}

    def register(self, name: str, options: type[Options] = Options) -> Callable[[PartT], PartT]:
        """Class decorator: register the class under ``name`` with its ``options`` dataclass.

        The class gets ``kind`` (its name) and ``Options`` attributes. A name can be registered once.
        """
        if not isinstance(name, str) or not name:
            raise QuantizationError(f"a {self.what} needs a non-empty name, got {name!r}")
        if not (isinstance(options, type) and issubclass(options, Options)):
            raise QuantizationError(f"{self.what} {name!r}: options must be an Options dataclass, got {options!r}")

        def decorate(cls: PartT) -> PartT:
            if name in self._entries and self._entries[name].cls is not cls:
                raise QuantizationError(f"{self.what} {name!r} is already registered by {self._entries[name].cls}")
            cls.kind, cls.Options = name, options
            self._entries[name] = Entry(name, cls, options)
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register a temporary part)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Entry[PartT]:
        """The entry of ``name``; an unknown name raises naming the choices."""
        if not isinstance(name, str) or name not in self._entries:
            raise QuantizationError(f"unknown {self.what} {name!r}; choose one of {sorted(self._entries)}")
        return self._entries[name]

    def options(self, name: str, data: Mapping[str, Any]) -> Options:
        """The validated options of ``name`` built from the plain mapping ``data``."""
        if not isinstance(data, Mapping):
            raise QuantizationError(f"{self.what}_options must be a mapping, got {data!r}")
        return self.get(name).options.from_mapping(data, f"{self.what} {name!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


QUANTIZERS: Registry[type["Quantizer"]] = Registry("quantizer")
OBSERVERS: Registry[type["Observer"]] = Registry("observer")
SEARCHES: Registry[type] = Registry("search")

register_quantizer = QUANTIZERS.register
register_observer = OBSERVERS.register
register_search = SEARCHES.register


def build_quantizer(spec: "QuantSpec") -> "Quantizer":
    """The quantizer of kind ``spec.quantizer``, configured by ``spec``."""
    return QUANTIZERS.get(spec.quantizer).cls(spec)


def build_observer(spec: "QuantSpec") -> "Observer":
    """The observer named by ``spec.observer``, configured by ``spec``."""
    return OBSERVERS.get(spec.observer).cls(spec)


def import_parts(packages: tuple[str, ...]) -> None:
    """Import every module of ``packages`` (dotted names), so the parts they define register."""
    for package in packages:
        root = importlib.import_module(package)
        for info in pkgutil.iter_modules(root.__path__, prefix=package + "."):
            importlib.import_module(info.name)
