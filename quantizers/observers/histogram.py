"""Histogram observers: Percentile and KL (TensorRT entropy calibration).

Both keep, per quantization group, a fixed-bin histogram of ``|x|`` on ``[0, hist_range)`` plus
the running min and max, and choose a clipping magnitude ``amax`` from the histogram.

``hist_range`` is the smallest power of two above the running ``max |x|`` of the group (0 while
every value seen is 0). A power of two makes the histogram exact and independent of the order of
the data: ``x`` falls in bin ``floor(x · 2^-k · bins)`` (the power-of-two scaling is exact), and
when a batch widens the range ``d`` doublings, old bin ``i`` lies wholly inside new bin
``floor(i / 2^d)``, so the counts move without splitting. Histograms of different data therefore
merge exactly (:meth:`HistogramObserver.merge`: a stream, or shards on several processes, give the
same counts bit for bit). At least half of the bins lie on the observed values. Memory is
``groups × bins`` counts, whatever the number of batches.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.uniform import group_rows, qparams_from_minmax
from quantizers.observers.base import Observer
from quantizers.observers.blocks import row_blocks
from quantizers.observers.minmax import batch_minmax
from quantizers.options import Options, check_int, check_number
from quantizers.registry import register_observer
from quantizers.spec import QuantSpec


def power_of_two_above(amax: torch.Tensor) -> torch.Tensor:
    """Per group, the smallest power of two strictly above ``amax`` (float64; 0 where ``amax`` is 0)."""
    _, exponent = torch.frexp(amax.double())  # amax = m · 2^e with m in [0.5, 1), so amax < 2^e
    return torch.where(amax > 0, torch.ldexp(torch.ones_like(amax, dtype=torch.float64), exponent), 0.0)


def abs_histogram(rows: torch.Tensor, upper: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-row counts of ``|rows|`` in ``bins`` equal bins on ``[0, upper)`` (float64, ``(groups, bins)``).

    ``upper`` is a power of two per row, above every value of the row (or 0: the row is all zeros
    and counts in bin 0). The rows are read in bounded blocks, in float64, where ``x / upper`` is
    exact for any float32 ``x`` (float32 would overflow ``1 / upper`` for tiny ranges).
    """
    counts = torch.zeros(rows.shape[0], bins, dtype=torch.float64, device=rows.device)
    inverse = torch.where(upper > 0, 1.0 / upper.double(), 0.0)  # exact: upper is a power of two
    for groups, block in row_blocks(rows):
        index = block.double().abs_().mul_(inverse[groups, None]).mul_(bins).clamp_(max=bins - 1).long()
        index += torch.arange(index.shape[0], device=index.device).unsqueeze(1) * bins
        counts[groups] += torch.bincount(index.reshape(-1), minlength=index.shape[0] * bins).reshape(-1, bins)
    return counts


def widen(counts: torch.Tensor, old_range: torch.Tensor, new_range: torch.Tensor) -> torch.Tensor:
    """Per-row counts on ``[0, old_range)`` moved to as many bins on ``[0, new_range)``, both powers
    of two (``new_range >= old_range``): old bin ``i`` lies wholly in new bin ``floor(i / 2^d)``,
    ``d = log2(new_range / old_range)``, so counts move whole. A zero ``old_range`` (only zeros seen)
    keeps everything in bin 0."""
    bins = counts.shape[1]
    _, old_exponent = torch.frexp(old_range.double())
    _, new_exponent = torch.frexp(new_range.double())
    doublings = torch.where(old_range > 0, new_exponent - old_exponent, 62).clamp(0, 62).long()
    index = torch.arange(bins, device=counts.device).unsqueeze(0) >> doublings.unsqueeze(1)
    return torch.zeros_like(counts).scatter_add_(1, index, counts)


@dataclass(frozen=True)
class PercentileOptions(Options):
    """``percentile``: in (0, 100] (default 99.99); ``bins``: histogram bins, >= 2 (default 2048)."""

    percentile: float = 99.99
    bins: int = 2048

    def __post_init__(self) -> None:
        check_number(self.percentile, "percentile option 'percentile'", lambda v: 0 < v <= 100, "a number in (0, 100]")
        check_int(self.bins, "percentile option 'bins'", 2)


@dataclass(frozen=True)
class KLOptions(Options):
    """``bins``: histogram bins, >= 2 (default 2048); ``start_bin``: smallest cut, in [1, bins]
    (default 128)."""

    bins: int = 2048
    start_bin: int = 128

    def __post_init__(self) -> None:
        check_int(self.bins, "kl option 'bins'", 2)
        check_int(self.start_bin, "kl option 'start_bin'", 1, self.bins)


class HistogramObserver(Observer):
    """Streaming per-group ``|x|`` histogram; subclasses turn it into a clipping magnitude.

    qparams cover ``[max(min, −amax), min(max, amax)]``: both sides are clipped at ``amax``, and an
    observed min or max already inside keeps its value (affine specs stay tight on one-sided data).

    Arguments:
      spec: the spec; its options hold ``bins``.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.bins = int(self.options.bins)
        self.register_buffer("hist", torch.empty(0, dtype=torch.float64))
        self.register_buffer("hist_range", torch.empty(0, dtype=torch.float64))
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))

    splits = False  # a batch's histogram depends on the range seen so far (shards merge instead)

    def _summarize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _absorb(self, x: torch.Tensor) -> None:
        lo, hi = batch_minmax(x, self.spec.granularity)
        upper = power_of_two_above(torch.maximum(-lo, hi))
        if self.hist.numel() == 0:
            self.min_val, self.max_val, self.hist_range = lo, hi, upper
            self.hist = torch.zeros(lo.numel(), self.bins, dtype=torch.float64, device=lo.device)
        else:
            if lo.numel() != self.min_val.numel():
                raise QuantizationError(
                    f"{type(self).__name__}: batch has {lo.numel()} groups, earlier batches {self.min_val.numel()}"
                )
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
            self._widen_to(torch.maximum(self.hist_range, upper))
        self.hist += abs_histogram(group_rows(x, self.spec.granularity), self.hist_range, self.bins)

    def _widen_to(self, upper: torch.Tensor) -> None:
        if bool((upper > self.hist_range).any()):
            self.hist = widen(self.hist, self.hist_range, upper)
            self.hist_range = upper

    def merge(self, others: list[Observer]) -> None:
        """Add the histograms of copies that observed other data: each moves to the widest range
        (:func:`widen`, exact) and the counts are summed, so the result equals one stream over all
        the data bit for bit (counts are whole numbers in float64)."""
        parts = [o for o in [self, *others] if o.hist.numel()]  # type: ignore[attr-defined]
        if not parts:
            return
        widest = torch.stack([p.hist_range for p in parts]).amax(0)
        hist = torch.zeros_like(parts[0].hist)
        for part in parts:
            hist += widen(part.hist, part.hist_range, widest)
        self.min_val = torch.stack([p.min_val for p in parts]).amin(0)
        self.max_val = torch.stack([p.max_val for p in parts]).amax(0)
        self.hist, self.hist_range = hist, widest
        self.num_batches.fill_(sum(int(o.num_batches) for o in [self, *others]))

    @property
    def bin_width(self) -> torch.Tensor:
        """Width of one bin per group (float64)."""
        return self.hist_range / self.bins

    def _calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        observed = torch.maximum(-self.min_val, self.max_val)
        amax = torch.minimum(self._histogram_amax().float(), observed)
        lo = torch.maximum(self.min_val, -amax).clamp(max=0.0)
        hi = torch.minimum(self.max_val, amax).clamp(min=0.0)
        return qparams_from_minmax(lo, hi, self.spec.bits, self.spec.symmetric, self.spec.signed)

    @abstractmethod
    def _histogram_amax(self) -> torch.Tensor:
        """Clipping magnitude per group from :attr:`hist` (may exceed the observed max)."""
        ...


@register_observer("percentile", PercentileOptions)
class PercentileObserver(HistogramObserver):
    """``amax`` = the ``percentile``-th percentile of ``|x|`` (linear inside the histogram bin).

    Arguments:
      spec: the spec; options :class:`PercentileOptions`.
    """

    def _histogram_amax(self) -> torch.Tensor:
        counts = self.hist
        cumulative = counts.cumsum(1)
        target = cumulative[:, -1:] * (self.options.percentile / 100.0)
        bin_index = torch.searchsorted(cumulative, target).clamp_(max=self.bins - 1)
        in_bin = counts.gather(1, bin_index)
        before = cumulative.gather(1, bin_index) - in_bin
        fraction = torch.where(in_bin > 0, (target - before) / in_bin, 1.0)
        return ((bin_index + fraction) * self.bin_width.unsqueeze(1)).squeeze(1)


def _prefix(values: torch.Tensor) -> torch.Tensor:
    """``out[i] = values[:i].sum()`` (length ``len(values) + 1``)."""
    return torch.cat([values.new_zeros(1), values.cumsum(0)])


def kl_cut(counts: torch.Tensor, levels: int, start_bin: int) -> int:
    """TensorRT entropy calibration on one float64 histogram: how many bins to keep.

    For every cut ``i`` from ``max(start_bin, levels)`` to one past the last non-empty bin, the
    reference ``P`` is ``counts[:i]`` with the mass beyond folded into bin ``i − 1``. ``Q`` merges
    the unfolded ``counts[:i]`` into ``levels`` chunks of ``i // levels`` bins (the last chunk takes
    the remainder) and spreads each chunk's mass evenly over the bins where ``P > 0``. Both are
    normalised and the argmin of KL(P‖Q) is returned (the smallest cut on ties). Where ``P > 0`` but
    ``Q = 0`` (folded outliers in a chunk with no mass of its own) the divergence is infinite, so
    that cut is never chosen (MXNet smooths both instead); the uncut candidate is always finite.

    The sums over bins are rewritten with prefix sums, ``Σ_j p_j log(p_j / q_j) =
    Σ_j p_j log p_j − Σ_k P_k log q_k`` per chunk ``k``, so all cuts cost ``O(cuts × levels)``.
    """
    end = int(counts.nonzero().max()) + 1  # a histogram of observed data is never empty
    first = max(start_bin, levels)
    if first > end:
        return end
    cuts = torch.arange(first, end + 1, device=counts.device)
    mass_below, occupied_below = _prefix(counts), _prefix((counts > 0).double())
    total = mass_below[-1]
    tail = total - mass_below[cuts]
    last = counts[cuts - 1] + tail  # the last kept bin with the outliers folded in

    width = (cuts // levels).unsqueeze(1)
    starts = torch.arange(levels, device=counts.device) * width
    stops = torch.cat([starts[:, 1:], cuts.unsqueeze(1)], dim=1)
    chunk_mass = mass_below[stops] - mass_below[starts]
    occupied = occupied_below[stops] - occupied_below[starts]
    occupied[:, -1] += ((tail > 0) & (counts[cuts - 1] == 0)).double()
    merged = torch.where(occupied > 0, chunk_mass / occupied.clamp(min=1.0), 0.0)
    folded_mass = chunk_mass.clone()
    folded_mass[:, -1] += tail

    entropy_terms = _prefix(torch.xlogy(counts, counts))
    self_term = entropy_terms[cuts - 1] + torch.xlogy(last, last)
    cross_term = torch.xlogy(folded_mass, merged).sum(1)
    divergence = (self_term - cross_term) / total - torch.log(total / mass_below[cuts])
    divergence[((folded_mass > 0) & (merged == 0)).any(1)] = float("inf")
    return int(cuts[divergence.argmin()])


@register_observer("kl", KLOptions)
class KLObserver(HistogramObserver):
    """``amax`` = the cut minimising KL(P‖Q) between the clipped ``|x|`` histogram and its merge
    into ``2^(b−1)`` levels (TensorRT entropy calibration, see :func:`kl_cut`).

    The threshold is the upper edge of the last kept bin, ``i · bin_width`` (TensorRT writes
    ``(i + 0.5) · bin_width``). Candidate cuts stop one past the last non-empty bin; when
    ``2^(b−1)`` exceeds that, no cut is tried and the observed max is used.

    Arguments:
      spec: the spec; options :class:`KLOptions`.
    """

    def _histogram_amax(self) -> torch.Tensor:
        levels = 2 ** (self.spec.bits - 1)
        cuts = torch.tensor([kl_cut(row, levels, self.options.start_bin) for row in self.hist], dtype=torch.float64,
                            device=self.hist.device)
        return cuts * self.bin_width
