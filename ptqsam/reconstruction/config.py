"""Settings of block reconstruction (AdaRound / BRECQ / QDrop / PTQ4SAM-L), as a recipe declares them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from ptqsam.errors import RecipeError
from ptqsam.typed import check_fields, reject_unknown_keys

UNITS = ("block", "layer", "stage")
LOSSES = ("mse", "fisher")


@dataclass(frozen=True)
class ReconstructionConfig:
    """How the quantized model is reconstructed after calibration, unit by unit in model order.

    Defaults are PTQ4SAM-L's (QDrop's code): 20,000 iterations per unit, one calibration image
    per iteration, AdaRound weight rounding with Adam at 1e-3, LSQ activation scales with Adam at
    4e-5 (cosine to 0), λ = 0.01, β from 20 to 2 after a 20 % warm-up.

    Arguments:
      unit: ``block`` (the model's blocks: BRECQ, QDrop, PTQ4SAM-L), ``layer`` (each Linear /
        convolution alone: AdaRound) or ``stage`` (SAQ-SAM: the ViT encoder's windowed blocks up
        to and including each global-attention block as one unit, other blocks alone).
      iterations: optimisation steps per unit.
      batch_size: calibration images per step (all their prompts), drawn with replacement.
      weight_lr: Adam learning rate of AdaRound's rounding logits.
      activation_lr: Adam learning rate of the learned activation scales (cosine schedule to 0).
      learn_activations: learn the activation quantizers' scales (LSQ; log quantizers: s, τ fixed).
      round_weights: learn the weight rounding (AdaRound) of uniform weight quantizers.
      drop_prob: QDrop: probability that an activation element stays float during
        reconstruction, and that a block input element comes from the float model instead of the
        quantized prefix (0: no dropping, BRECQ).
      loss: ``mse`` (block output against the float model's) or ``fisher`` (each element weighted
        by ``(|g| + 1)²``, g the gradient at the float block output of the task loss of the float
        model's masks against their own binarisation: BRECQ's Fisher diagonal as its code computes
        it; BRECQ takes g from the KL divergence of the quantized model's output from the float one).
      round_loss_weight: λ of the rounding regulariser.
      response_weight: α of SAQ-SAM's prompt-aware term (0: none): the error of the mask decoder's
        response computed from the unit's output by the float rest of the model
        (:mod:`ptqsam.reconstruction.response`), added to the unit's output error.
      beta_start, beta_end: β of the regulariser, annealed linearly after the warm-up.
      warmup: fraction of the iterations without the regulariser.
      seed: seed of the image draws and of the drop masks.
      cache_bytes: cached block inputs/targets kept in memory (per process under ``torchrun``); the
        rest spills to disk.
      query_chunk: query rows of a ViT attention map computed at a time while a unit learns (maps
        with more rows only: SAM-B's global blocks, never the testbed's 256), each chunk recomputed
        in the backward pass so that no whole map is kept (0: whole maps). Without dropping the
        values equal the whole map's up to float summation order; with QDrop the chunks draw their
        masks in another order (the same statistics, other elements), so results computed with
        another ``query_chunk`` (or before it existed) are not reproduced bit for bit.
      reference_drop_bug: reproduce PTQ4SAM's evaluation bug deliberately: after each block its
        layer-input quantizers keep dropping ``drop_prob`` of their elements, later blocks and the
        evaluation included (for comparison with published numbers only; results are marked).
    """

    unit: str = field(default="block", metadata={"choices": UNITS})
    iterations: int = field(default=20000, metadata={"min": 1})
    batch_size: int = field(default=1, metadata={"min": 1})
    weight_lr: float = field(default=1e-3, metadata={"min": 0.0})
    activation_lr: float = field(default=4e-5, metadata={"min": 0.0})
    learn_activations: bool = True
    round_weights: bool = True
    drop_prob: float = field(default=0.5, metadata={"min": 0.0})
    loss: str = field(default="mse", metadata={"choices": LOSSES})
    round_loss_weight: float = field(default=0.01, metadata={"min": 0.0})
    response_weight: float = field(default=0.0, metadata={"min": 0.0})
    beta_start: float = field(default=20.0, metadata={"min": 0.0})
    beta_end: float = field(default=2.0, metadata={"min": 0.0})
    warmup: float = field(default=0.2, metadata={"min": 0.0})
    seed: int = field(default=0, metadata={"min": 0})
    cache_bytes: int = field(default=2 * 2**30, metadata={"min": 1})
    query_chunk: int = field(default=1024, metadata={"min": 0})
    reference_drop_bug: bool = False

    def __post_init__(self) -> None:
        check_fields(self, RecipeError, "reconstruction")
        for name in ("weight_lr", "activation_lr", "beta_start", "beta_end"):
            if getattr(self, name) == 0:
                raise RecipeError(f"reconstruction {name} must be > 0, got 0")
        for name in ("drop_prob", "warmup"):
            if getattr(self, name) >= 1.0:
                raise RecipeError(f"reconstruction {name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.response_weight > 0 and self.batch_size != 1:
            raise RecipeError("reconstruction response_weight > 0 needs batch_size 1 (one image's prompts per step)")
        if self.reference_drop_bug and self.drop_prob == 0.0:
            raise RecipeError("reconstruction reference_drop_bug needs drop_prob > 0 (the bug leaves it on)")

    def beta(self, step: int) -> float:
        """β at step ``step`` (0-based): ``beta_start`` during the warm-up, then linear to ``beta_end``."""
        start = self.warmup * self.iterations
        if step < start:
            return self.beta_start
        progress = (step - start) / max(self.iterations - start, 1)
        return self.beta_end + (self.beta_start - self.beta_end) * max(0.0, 1.0 - progress)

    def regularised(self, step: int) -> bool:
        """Whether the rounding regulariser counts at step ``step`` (after the warm-up)."""
        return step >= self.warmup * self.iterations

    def with_overrides(self, overrides: Mapping[str, Any]) -> "ReconstructionConfig":
        """A copy with some fields replaced (validated; unknown keys raise)."""
        _known(overrides)
        return replace(self, **dict(overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReconstructionConfig":
        _known(data)
        return cls(**dict(data))


def _known(data: Any) -> None:
    reject_unknown_keys(data, ReconstructionConfig, "reconstruction", RecipeError)
