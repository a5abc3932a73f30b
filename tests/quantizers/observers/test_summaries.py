"""Deferred observation: summaries folded in order give the streaming state exactly; histograms merge
exactly too."""

from __future__ import annotations

import copy

import pytest
import torch

from quantizers.modules.base import Mode
from quantizers.registry import OBSERVERS, build_observer, build_quantizer
from quantizers.spec import Granularity, QuantSpec

SPLITTING = sorted(kind for kind in OBSERVERS if OBSERVERS.get(kind).cls.splits)
HISTOGRAMS = sorted(kind for kind in OBSERVERS if not OBSERVERS.get(kind).cls.splits)


def _batches(count: int, seed: int = 0, shape: tuple[int, ...] = (6, 40)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1 + i) + 0.3 * i for i in range(count)]


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_every_kind_is_either_splitting_or_histogram():
    assert SPLITTING and HISTOGRAMS == ["kl", "percentile"]


@pytest.mark.parametrize("kind", SPLITTING)
@pytest.mark.parametrize("granularity", [Granularity(), Granularity("channel", 0)])
def test_summaries_folded_later_give_the_streamed_state(kind, granularity):
    spec = QuantSpec(bits=4, observer=kind, granularity=granularity)
    streamed, folded = build_observer(spec), build_observer(spec)
    batches = _batches(5)
    for x in batches:
        streamed(x)
    summaries = [folded.summarize(x) for x in batches]
    assert int(folded.num_batches) == 0  # summarizing leaves the state alone
    for summary in summaries:
        folded.absorb(summary)
    _assert_same_state(streamed, folded)
    assert all(torch.equal(a, b) for a, b in zip(streamed.calculate_qparams(), folded.calculate_qparams()))


@pytest.mark.parametrize("spec", [QuantSpec(bits=4, quantizer="log"), QuantSpec(bits=4, quantizer="twin_softmax"),
                                  QuantSpec(bits=4, quantizer="twin_gelu"), QuantSpec(bits=4, observer="ema_minmax")])
def test_quantizers_defer_to_the_same_state(spec):
    streamed, deferred = build_quantizer(spec), build_quantizer(spec)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(2, 8, 8, generator=g).softmax(-1), torch.randn(2, 8, 4, generator=g)) for _ in range(3)]
    streamed.mode = deferred.mode = Mode.OBSERVE
    deferred.deferred = []
    for x, v in batches:
        context = (v,) if spec.quantizer == "log" else ()
        streamed(x, *context)
        deferred(x, *context)
    assert deferred.splits() and len(deferred.deferred) == 3
    for summary in deferred.deferred:
        deferred.absorb(summary)
    _assert_same_state(streamed, deferred)


def _streamed_and_merged(kind: str, batches: list[torch.Tensor], copies: int):
    """One observer over every batch, and ``copies`` observers over consecutive slices merged."""
    spec = QuantSpec(bits=4, observer=kind, observer_options={"bins": 256})
    streamed = build_observer(spec)
    for x in batches:
        streamed(x)
    parts = [build_observer(spec) for _ in range(copies)]
    for i, x in enumerate(batches):
        parts[i * copies // len(batches)](x)
    merged = copy.deepcopy(parts[0])
    merged.merge(parts[1:])
    return streamed, merged


@pytest.mark.parametrize("kind", HISTOGRAMS)
@pytest.mark.parametrize("copies", [2, 3])
def test_histograms_of_shards_merge_to_the_streamed_state(kind, copies):
    # the batches widen the range as they go, so each shard ends at a different range
    streamed, merged = _streamed_and_merged(kind, _batches(6), copies)
    _assert_same_state(streamed, merged)
    assert torch.equal(merged._histogram_amax(), streamed._histogram_amax())
