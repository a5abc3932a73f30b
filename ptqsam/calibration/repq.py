"""RepQ-ViT's post-LayerNorm reparameterisation as a calibration transform on SAM's ViT blocks.

A float pass gathers the per-channel min and max of each block's ``norm1`` and ``norm2`` outputs;
each is then folded (:mod:`quantizers.transforms.repq`) into its LayerNorm and the Linear that
reads it (``attn.qkv``, ``mlp.lin1``), so one per-tensor quantizer fits the reparameterised input.

SAM's windowed blocks pad the ``norm1`` output with zeros up to a multiple of the window before
``qkv``, and the attention does not mask the padded tokens: after the fold a zero there would stand
for ``x = r·b``, not 0, and change the border windows. The block is therefore given a forward that
pads with ``−b`` (the image of 0), which keeps the float output unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn

from ptqsam.instrument.hooks import forward_hooks
from quantizers.transforms.repq import fold_into, fold_parameters

#: key of the folds in the saved calibration state's ``extra``
STATE_KEY = "repq_fold"
#: (LayerNorm, Linear reading it) inside a SAM ViT block
PAIRS = (("norm1", "attn.qkv"), ("norm2", "mlp.lin1"))


class FoldPaddedBlock(Block):
    """SAM's ViT block whose window padding holds ``pad_value`` (the folded image of 0) instead of 0."""

    pad_value: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
            if pad_hw != (H, W):
                ones = torch.ones((shortcut.shape[0], H, W, 1), dtype=x.dtype, device=x.device)
                inside, _ = window_partition(ones, self.window_size)
                x = torch.where(inside.bool(), x, self.pad_value.to(x.dtype))
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def fold_targets(model: nn.Module, matches: Callable[[str], bool]) -> dict[str, str]:
    """``LayerNorm path -> Linear path`` of every SAM ViT block whose path matches (other modules
    matching the patterns are left alone)."""
    return {f"{name}.{norm}": f"{name}.{linear}" for name, module in model.named_modules()
            if matches(name) and isinstance(module, Block) for norm, linear in PAIRS}


def repq_fold_pass(model: nn.Module, targets: dict[str, str], run_float: Callable[[], None]) -> dict[str, dict]:
    """Run the float model (``run_float``), then fold every target; returns per LayerNorm the
    Linear, the ratios r and shifts b (plain lists, saved with the state)."""
    modules = dict(model.named_modules())
    ranges = {name: _ChannelRange() for name in targets}
    with forward_hooks((modules[name], ranges[name]) for name in targets):
        run_float()
    folds = {}
    for norm, linear in targets.items():
        ratio, shift = fold_parameters(ranges[norm].min_val, ranges[norm].max_val)
        folds[norm] = {"linear": linear, "ratio": ratio.tolist(), "shift": shift.tolist()}
    reapply_repq(model, folds)
    return folds


def reapply_repq(model: nn.Module, folds: dict[str, dict]) -> None:
    """Fold saved ratios and shifts into a model (freshly built, or just measured)."""
    modules = dict(model.named_modules())
    for norm, entry in folds.items():
        layer_norm, linear = modules[norm], modules[entry["linear"]]
        ratio = torch.tensor(entry["ratio"], dtype=torch.float64, device=linear.weight.device)
        shift = torch.tensor(entry["shift"], dtype=torch.float64, device=linear.weight.device)
        fold_into(layer_norm, linear, ratio, shift)
        block = modules[norm.rpartition(".")[0]]
        if norm.endswith("norm1") and block.window_size > 0:
            block.__class__ = FoldPaddedBlock
            block.register_buffer("pad_value", (-shift).to(linear.weight.dtype), persistent=False)


class _ChannelRange:
    """Running per-channel (last dimension) min and max of a module's output."""

    def __init__(self) -> None:
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        flat = output.detach().reshape(-1, output.shape[-1]).float()
        low, high = flat.amin(dim=0), flat.amax(dim=0)
        self.min_val = low if self.min_val is None else torch.minimum(self.min_val, low)
        self.max_val = high if self.max_val is None else torch.maximum(self.max_val, high)

