"""The one loop over calibration samples (each image encoded, all its prompts decoded in one call)
and the task loss of the passes that need gradients.

Every pass that runs a model over samples (calibration statistics, the bimodal fold, the Hessian
search's capture, activation analysis, reconstruction) goes through :class:`SampleLoop`; it reuses
the float embeddings when the image encoder stays float. :func:`task_loss` gives the Hessian-guided
search and the Fisher-weighted reconstruction loss their output gradients.

A loop :meth:`~SampleLoop.with_mask_prompts` also gives each prompt a mask prompt, as SAM's
iterative refinement does: the float model's best low-resolution mask logits for that prompt. Only
such a loop reaches the sites of the mask-prompt path (:data:`~ptqsam.models.blocks.MASK_PROMPT_SITES`).
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from ptqsam.data.samples import CalibrationSample
from ptqsam.inference import ImageEmbedding, Prediction, SamRunner
from ptqsam.instrument.modes import disabled
from ptqsam.progress import bar


class SampleLoop:
    """Runs ``model`` over ``samples``, reusing float embeddings where that is valid.

    Arguments:
      model: the model (instrumented or not; its quantizers' modes are the caller's business).
      samples: images with their prompts.
      encoder_float: the image encoder stays float for the whole loop's life, so each image's
        embedding is computed once and reused by every pass.
      progress: show a progress bar per pass.
      first_index: the index of ``samples[0]`` in the whole calibration set (a process's shard
        under ``torchrun`` starts further on); ``before_each`` is given whole-set indices.
    """

    def __init__(self, model: Sam, samples: Sequence[CalibrationSample], encoder_float: bool, progress: bool,
                 first_index: int = 0) -> None:
        self.runner = SamRunner(model)
        self.samples = samples
        self.first_index = first_index
        self.encoder_float = encoder_float
        self.progress = progress
        self.embeddings: dict[int, ImageEmbedding] = {}
        self.mask_prompts = False

    def embed(self, sample: CalibrationSample) -> ImageEmbedding:
        """The sample's image embedding (cached while the encoder is float)."""
        if self.encoder_float and sample.image_id in self.embeddings:
            return self.embeddings[sample.image_id]
        embedding = self.runner.embed(sample.image)
        if self.encoder_float:
            self.embeddings[sample.image_id] = embedding
        return embedding

    def embed_all(self) -> None:
        """Compute (and keep) every sample's embedding now (only while the encoder stays float)."""
        if self.encoder_float:
            with torch.inference_mode():
                for sample in self._iterate("embed"):
                    self.embed(sample)

    def with_mask_prompts(self) -> SampleLoop:
        """The same loop (samples, embeddings shared) whose decoder calls also give each prompt a mask
        prompt: the float model's low-resolution mask logits of its best mask (by predicted IoU) for
        that prompt, as SAM's iterative refinement feeds back a prediction."""
        loop = copy.copy(self)
        loop.mask_prompts = True
        return loop

    def decode(self, embedding: ImageEmbedding, sample: CalibrationSample) -> Prediction:
        """Every prompt of the sample in one decoder call (multimask output)."""
        p = sample.prompts
        masks = self._mask_prompts(embedding, sample) if self.mask_prompts else None
        return self.runner.decode(embedding, p.boxes, p.points, p.point_labels, multimask=True, masks=masks)

    def _mask_prompts(self, embedding: ImageEmbedding, sample: CalibrationSample) -> torch.Tensor:
        """N x 1 x h x w: per prompt, the low-resolution logits of the float model's best mask."""
        p = sample.prompts
        with torch.no_grad(), disabled(self.runner.model):
            first = self.runner.decode(embedding, p.boxes, p.points, p.point_labels, multimask=True)
        rows = torch.arange(first.low_res_logits.shape[0], device=first.low_res_logits.device)
        return first.low_res_logits[rows, first.iou_predictions.argmax(dim=1)].unsqueeze(1)

    def run(self, description: str, before_each: Callable[[int], None] | None = None, decode: bool = True) -> None:
        """One pass without gradients; ``before_each(i)`` is called before sample ``i`` (whole-set
        index). ``decode=False`` only embeds the images (a pass over the encoder alone)."""
        for _ in self.predictions(description, before_each, decode):
            pass

    def predictions(self, description: str, before_each: Callable[[int], None] | None = None, decode: bool = True
                    ) -> Iterator[tuple[CalibrationSample, Prediction | None]]:
        """One pass without gradients, yielding each sample with its prediction (``None`` without
        ``decode``; the consumer runs under ``torch.inference_mode`` too); ``before_each(i)`` is
        called before sample ``i`` (whole-set index)."""
        with torch.inference_mode():
            for i, sample in enumerate(self._iterate(description), start=self.first_index):
                if before_each is not None:
                    before_each(i)
                embedding = self.embed(sample)
                yield sample, self.decode(embedding, sample) if decode else None

    def forget_embeddings(self) -> None:
        """Drop the cached embeddings (the encoder's weights changed)."""
        self.embeddings.clear()

    def run_with_grad(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], needs_encoder: bool,
                      description: str) -> None:
        """One pass with ``loss_fn(low_res_logits).backward()`` per sample; the encoder runs (with
        gradients) when ``needs_encoder`` or when it is not float, else cached embeddings are used."""
        for sample in self._iterate(description):
            with torch.enable_grad():
                if needs_encoder or not self.encoder_float:
                    x, input_size, original_size = self.runner.prepare(sample.image)
                    embedding = ImageEmbedding(self.runner.model.image_encoder(x.requires_grad_(True)),
                                               input_size, original_size)
                else:
                    cached = self.embed(sample)
                    features = cached.features.detach().clone().requires_grad_(True)
                    embedding = ImageEmbedding(features, cached.input_size, cached.original_size)
                loss_fn(self.decode(embedding, sample).low_res_logits).backward()

    def _iterate(self, description: str) -> Iterable[CalibrationSample]:
        return bar(self.samples, enabled=self.progress, desc=description, leave=False)


class StopForward(Exception):
    """Raised by a hook to end a forward once it has seen what it needed (see :func:`each_sample`)."""


def each_sample(loop: SampleLoop, run: Callable[[CalibrationSample], None]) -> None:
    """``run(sample)`` for every sample of ``loop``; a :class:`StopForward` ends that sample's run."""
    for sample in loop.samples:
        try:
            run(sample)
        except StopForward:
            pass


def task_loss(low_res_logits: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of the mask logits (N prompts × masks × h × w) against the (detached) binary
    masks they give: each prompt's BCE (mean over its pixels) and Dice, summed over the prompts.
    Summed, not averaged: a prompt's gradient is then the same whatever the number of prompts on
    its image (a mean over an image's P prompts weighs each prompt's squared gradient, the Hessian
    metric's weight, by 1/P²)."""
    target = (low_res_logits > 0).float().detach()
    bce = F.binary_cross_entropy_with_logits(low_res_logits, target, reduction="none").flatten(1).mean(1)
    p = low_res_logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return (bce + dice).sum()
