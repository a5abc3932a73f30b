"""Running SAM on one image with a batch of prompts: preprocess, encode, decode, postprocess.

The same steps as ``segment_anything.SamPredictor``, split so that the image embedding can be
computed once (and cached when the image encoder stays in float) and every prompt of an image goes
through the decoder in one batched call. No ``torch.no_grad`` here: calibration needs gradients;
evaluation callers wrap calls in ``torch.inference_mode``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from ptqsam.errors import DataError
from quantizers.functional.checks import deferred_peak_checks


@dataclass(frozen=True)
class ImageEmbedding:
    """An encoded image: the encoder output and the sizes needed to map masks back."""

    features: torch.Tensor  # 1 x C x h x w
    input_size: tuple[int, int]  # (H, W) after resizing, before padding
    original_size: tuple[int, int]  # (H, W) of the original image


@dataclass(frozen=True)
class Prediction:
    """Decoder outputs for N prompts with C masks each (C = 3 multimask, 1 single)."""

    mask_logits: torch.Tensor  # N x C x H x W at the original image size
    iou_predictions: torch.Tensor  # N x C
    low_res_logits: torch.Tensor  # N x C x h x w

    def masks(self, threshold: float = 0.0) -> torch.Tensor:
        return self.mask_logits > threshold

    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt, the mask logits (N x H x W) and IoU of the mask with the highest predicted IoU."""
        index = self.iou_predictions.argmax(dim=1)
        rows = torch.arange(index.numel(), device=index.device)
        return self.mask_logits[rows, index], self.iou_predictions[rows, index]


class SamRunner:
    """Encodes images and decodes batches of box / point prompts with one Sam model.

    Arguments:
      model: a segment_anything ``Sam`` (instrumented or not).
    """

    def __init__(self, model: Sam) -> None:
        self.model = model
        self.transform = ResizeLongestSide(model.image_encoder.img_size)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """HxWx3 uint8 RGB -> (normalised, padded 1x3xSxS input, input_size, original_size)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            raise DataError(f"expected an HxWx3 uint8 RGB image, got {type(image).__name__} of shape {shape}")
        resized = self.transform.apply_image(image)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        return self.model.preprocess(x.float()), input_size, (int(image.shape[0]), int(image.shape[1]))

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Run the image encoder on one image."""
        x, input_size, original_size = self.prepare(image)
        with deferred_peak_checks():  # quantized inputs are checked for NaN/Inf together, at the end
            features = self.model.image_encoder(x)
        return ImageEmbedding(features, input_size, original_size)

    def decode(
        self,
        embedding: ImageEmbedding,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        multimask: bool = True,
        masks: torch.Tensor | None = None,
    ) -> Prediction:
        """All prompts of one image in one decoder call.

        Arguments:
          embedding: from :meth:`embed`.
          boxes: N x 4 XYXY boxes in original image pixels, or None.
          points: N x K x 2 (x, y) points in original image pixels, or None.
          labels: N x K point labels (1 foreground, 0 background); required with ``points``.
          multimask: three masks per prompt (take the best by predicted IoU) or one.
          masks: N x 1 x h x w low-resolution mask logits as mask prompts (SAM's ``mask_input``:
            iterative refinement feeds back a previous prediction's ``low_res_logits``), or None.
        """
        coords = box_tensor = None
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            box_tensor = self._tensor(self.transform.apply_boxes(boxes, embedding.original_size))
        if points is not None:
            if labels is None:
                raise DataError("point prompts need labels")
            points = np.asarray(points, dtype=np.float64)
            coords = (
                self._tensor(self.transform.apply_coords(points, embedding.original_size)),
                torch.as_tensor(np.asarray(labels), dtype=torch.int, device=self.device),
            )
        if coords is None and box_tensor is None:
            raise DataError("decode needs box or point prompts")
        with deferred_peak_checks():
            sparse, dense = self.model.prompt_encoder(points=coords, boxes=box_tensor, masks=masks)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=embedding.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        logits = self.model.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        return Prediction(logits, iou, low_res)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float, device=self.device)
