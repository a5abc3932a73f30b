"""PTQ4SAM's bimodal integration as a calibration pass: detect bimodal keys in float, fold signs."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ptqsam.instrument.hooks import forward_hooks
from quantizers.transforms.bimodal import BimodalConfig, channel_signs, detect_bimodal, fold_signs

#: key of the per-attention signs in the saved calibration state's ``extra``.
STATE_KEY = "bimodal_fold"


class _KeyStatistics:
    """Per-channel sums of one key projection's output and a bounded sample of its values."""

    def __init__(self, max_values: int, seed: int) -> None:
        self.sums: torch.Tensor | None = None
        self.count = 0
        self.low, self.high = math.inf, -math.inf  # of every value, not only the sample's
        self.values: list[torch.Tensor] = []
        self.max_values = max_values
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        k = output.detach().float().reshape(-1, output.shape[-1])
        sums = k.sum(dim=0).cpu()  # the statistics travel between processes, each with its own GPU
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += k.shape[0]
        self.low, self.high = min(self.low, float(k.min())), max(self.high, float(k.max()))
        keep = torch.randperm(k.numel(), generator=self.generator)[: self.max_values]
        self.values.append(k.reshape(-1)[keep.to(k.device)].cpu())  # only the sample leaves the device

    def __getstate__(self) -> dict:  # a generator does not pickle; its state does (handed between processes)
        return {**self.__dict__, "generator": self.generator.get_state()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, generator=torch.Generator().set_state(state["generator"]))


def attention_modules(model: nn.Module, matches: Callable[[str], bool]) -> dict[str, nn.Module]:
    """Modules whose path matches and that have a ``q_proj``/``k_proj`` pair."""
    return {
        name: module
        for name, module in model.named_modules()
        if matches(name) and isinstance(getattr(module, "k_proj", None), nn.Linear)
    }


def bimodal_fold_pass(
    targets: dict[str, nn.Module], run_float: Callable[[], None], config: BimodalConfig,
    relay: Callable[[dict, Callable[[dict], dict]], dict] | None = None,
) -> dict[str, dict]:
    """Run the float model (``run_float`` goes over the calibration set), then fold the signs of
    each target whose keys are bimodal. Returns, per target, whether it was bimodal, the peaks and
    the signs folded (None when not bimodal).

    ``relay(statistics, observe)``: how the key statistics travel when several processes hold
    parts of the calibration set (:func:`ptqsam.distributed.in_rank_order`: they are gathered in the
    one-process order, the sampling generator included)."""
    def observe(stats: dict[str, _KeyStatistics]) -> dict[str, _KeyStatistics]:
        with forward_hooks((targets[name].k_proj, stats[name]) for name in targets):
            run_float()
        return stats

    stats = {name: _KeyStatistics(config.max_values, config.seed) for name in targets}
    stats = observe(stats) if relay is None else relay(stats, observe)
    report = {}
    for name, module in targets.items():
        detection = detect_bimodal(torch.cat(stats[name].values), config, (stats[name].low, stats[name].high))
        signs = None
        if detection.is_bimodal:
            signs = channel_signs((stats[name].sums / stats[name].count)[None])
            fold_signs(module.q_proj, module.k_proj, signs)
        report[name] = {
            "bimodal": bool(detection.is_bimodal),
            "peaks": [float(p) for p in detection.peaks],
            "signs": None if signs is None else signs.tolist(),
        }
    return report


def reapply_folds(model: nn.Module, folds: dict[str, dict]) -> None:
    """Fold saved signs into a freshly built model (the weights as they were at calibration)."""
    modules = dict(model.named_modules())
    for name, entry in folds.items():
        if entry.get("signs") is not None:
            module = modules[name]
            fold_signs(module.q_proj, module.k_proj, torch.tensor(entry["signs"], dtype=module.k_proj.weight.dtype))
