"""Evaluate a (quantized or float) SAM on a COCO-format dataset with one prompt protocol.

Per image: one encoder call (or a cached float embedding), then every prompt in one batched decoder
call. Metrics: mIoU against the ground truth (all / small / medium / large), agreement (mean IoU
against a reference run's masks on the same prompts, e.g. the float model), and mask AP from
detector-box prompts (pycocotools).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np
import torch
from pycocotools import mask as mask_utils
from segment_anything.modeling import Sam

from ptqsam import distributed
from ptqsam.data.coco import CocoDataset, Sample, SkipCounter
from ptqsam.data.prompts import Detections, PromptSet, gt_prompts
from ptqsam.embedding_cache import EmbeddingCache
from ptqsam.errors import DataError, PtqsamError
from ptqsam.evaluation.metrics import MiouAccumulator, mask_ap, mask_iou, mask_result, prompt_score
from ptqsam.inference import ImageEmbedding, SamRunner
from ptqsam.models.testbed import warn_untrained_single_mask
from ptqsam.progress import bar


@dataclass(frozen=True)
class EvalOptions:
    """How prompts are made and masks chosen.

    Arguments:
      prompt: ground-truth prompt kind (``box``, ``tight_box``, ``center_point``,
        ``random_points``) for mIoU, or ``detections`` to evaluate mask AP only.
      num_points: points per instance for ``random_points``.
      multimask: three masks per prompt, keep the one with the highest predicted IoU; else one
        (the testbed's single-mask output was never trained: :func:`evaluate` warns).
      score_with_iou: AP score = detector score × predicted IoU (PTQ4SAM) instead of the
        detector score alone.
      seed: seed of random point prompts.
    """

    prompt: str = "box"
    num_points: int = 1
    multimask: bool = True
    score_with_iou: bool = True
    seed: int = 0


@dataclass
class EvalResult:
    """Metrics of one run, its predicted masks (RLE, by prompt), the skipped-data counts and the IoU
    of every instance the mIoU averages (``[image_id, annotation_id, iou]``, in evaluation order)."""

    metrics: dict[str, Any]
    masks: dict[tuple[int, str, int], dict] = field(repr=False)
    skips: dict[str, int]
    num_images: int
    num_prompts: int
    instance_ious: list[list] = field(default_factory=list, repr=False)


def prompt_sets(sample: Sample, options: EvalOptions, detections: Detections | None) -> list[PromptSet]:
    """The prompt batches of one image under ``options``."""
    sets = []
    if options.prompt != "detections" and sample.instances:
        sets.append(gt_prompts(sample.image_id, sample.instances, options.prompt, options.num_points, options.seed))
    if detections is not None:
        dets = detections.for_image(sample.image_id)
        if len(dets):
            sets.append(dets)
    return sets


def predict(runner: SamRunner, embedding: ImageEmbedding, prompts: PromptSet, multimask: bool):
    """Best mask (bool, N x H x W numpy) and its predicted IoU for each prompt, in one decoder call."""
    prediction = runner.decode(embedding, prompts.boxes, prompts.points, prompts.point_labels, multimask)
    logits, iou = prediction.best()
    masks = (logits > runner.model.mask_threshold).cpu().numpy()
    return masks, iou.float().cpu().numpy()


def encode(runner: SamRunner, sample: Sample, cache: EmbeddingCache | None, key: Callable[[int], str] | None):
    """The image embedding, from ``cache`` when it has it (float encoder only; the caller decides)."""
    if cache is not None and key is not None:
        cached = cache.get(key(sample.image_id))
        if cached is not None:
            return ImageEmbedding(cached.features.to(runner.device), cached.input_size, cached.original_size)
    embedding = runner.embed(sample.image)
    if cache is not None and key is not None:
        cache.put(key(sample.image_id), embedding)
    return embedding


@torch.inference_mode()
def evaluate(
    model: Sam,
    dataset: CocoDataset,
    image_ids: Iterable[int] | None = None,
    options: EvalOptions = EvalOptions(),
    detections: Detections | None = None,
    reference: EvalResult | None = None,
    cache: EmbeddingCache | None = None,
    cache_key: Callable[[int], str] | None = None,
    progress: bool = True,
    description: str = "evaluate",
) -> EvalResult:
    """Run ``model`` over ``image_ids`` (default: all) and measure.

    Under ``torchrun`` each process evaluates its contiguous shard of ``image_ids``
    (:func:`~ptqsam.distributed.shard`: every image exactly once); rank 0 gathers the per-instance
    results in the one-process order and computes the metrics once (bit-identical to one process),
    and every rank returns them (the predicted masks only on rank 0; ``reference`` is only read there).

    Arguments:
      model: the model, already in the mode to evaluate (float, or inside ``quantizing``).
      dataset: images and ground truth.
      options: prompt protocol.
      detections: detector boxes for mask AP (optional).
      reference: a run on the same images and prompts (e.g. float) to measure agreement with.
      cache, cache_key: reuse float embeddings (only valid while the image encoder is float).

    Raises:
      DataError: no image gave a single prompt (no usable instance or detection): an empty
        evaluation is not a result. The message gives the skip counts.

    Example (``ptqsam evaluate``; mask AP: ``detections=Detections("dets.json")``)::

        >>> from ptqsam import EvalOptions
        >>> reference = evaluate(model, dataset, progress=False)
        >>> points = evaluate(model, dataset, options=EvalOptions("center_point"), reference=reference, progress=False)
        >>> 0 < reference.metrics["miou"] <= 1, "agreement" in points.metrics
        (True, True)
    """
    if distributed.is_main():
        warn_untrained_single_mask(model, options.multimask)
    if detections is not None:
        _check_categories(detections, dataset)
    elif options.prompt == "detections":
        raise DataError("the 'detections' prompt evaluates mask AP of detector boxes: pass detections")
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    repeated = sorted(i for i, n in Counter(image_ids).items() if n > 1)
    if repeated:
        raise DataError(f"image ids listed more than once: {repeated[:10]} (each image would count as often)")
    local = _predict_images(model, dataset, distributed.shard(image_ids), options, detections, cache, cache_key,
                            progress, description)
    parts = distributed.gather_parts([local])
    result: EvalResult | PtqsamError | None = None
    if parts is not None:
        try:
            result = _measure(parts, dataset, image_ids, options, detections, reference)
        except PtqsamError as error:
            result = error  # raised on every rank
    shared = distributed.broadcast(replace(result, masks={}) if isinstance(result, EvalResult) and
                                   distributed.active() else result)
    outcome = result if distributed.is_main() else shared
    if isinstance(outcome, PtqsamError):
        raise outcome
    return outcome


@dataclass
class _Predictions:
    """What one process's images gave: per-instance ``(image_id, annotation_id, iou, area)``,
    detection results, masks, counts, the skip counter and the ids of the images read (all in the
    images' order)."""

    instances: list[tuple[int, int, float, float]]
    results: list[dict]
    masks: dict[tuple[int, str, int], dict]
    num_images: int
    num_prompts: int
    skips: SkipCounter
    image_ids: list[int]


def _predict_images(model: Sam, dataset: CocoDataset, image_ids: list[int], options: EvalOptions,
                    detections: Detections | None, cache: EmbeddingCache | None,
                    cache_key: Callable[[int], str] | None, progress: bool, description: str) -> _Predictions:
    """Predict every prompt of ``image_ids`` (this process's images)."""
    runner = SamRunner(model)
    out = _Predictions([], [], {}, 0, 0, dataset.skips, [])
    # mIoU over every annotation, crowds included (the protocol's evaluator has no iscrowd filter)
    samples = dataset.samples(image_ids, include_crowd=True, keep_empty=detections is not None)
    for sample in bar(samples, enabled=progress, total=len(image_ids), desc=description, leave=False):
        out.num_images += 1
        out.image_ids.append(sample.image_id)
        prompt_batches = prompt_sets(sample, options, detections)
        if not prompt_batches:
            continue
        embedding = encode(runner, sample, cache, cache_key)
        for prompts in prompt_batches:
            pred, pred_iou = predict(runner, embedding, prompts, options.multimask)
            out.num_prompts += len(prompts)
            for row in range(len(prompts)):
                key = (sample.image_id, prompts.source, int(prompts.ids[row]))
                out.masks[key] = mask_utils.encode(np.asfortranarray(pred[row]))
                if prompts.source == "annotation":
                    out.instances.append(_gt_iou(sample, int(prompts.ids[row]), pred[row]))
                else:
                    score = prompt_score(float(prompts.scores[row]), float(pred_iou[row]),
                                         "detector_x_iou" if options.score_with_iou else "detector")
                    out.results.append(mask_result(sample.image_id, int(prompts.category_ids[row]), pred[row], score))
    return out


def _measure(parts: list[_Predictions], dataset: CocoDataset, image_ids: list[int], options: EvalOptions,
             detections: Detections | None, reference: EvalResult | None) -> EvalResult:
    """The metrics of every process's predictions, folded in the one-process order."""
    for part in parts[1:]:
        dataset.skips.update(part.skips)
    read = [i for p in parts for i in p.image_ids]
    skips = _with_detection_skips(dataset.skips.as_dict(), detections, read)
    num_images, num_prompts = sum(p.num_images for p in parts), sum(p.num_prompts for p in parts)
    if not num_prompts:
        skipped = {reason: count for reason, count in skips.items() if count}
        raise DataError(f"nothing to evaluate: {num_images} of {len(image_ids)} image(s) read, none with a usable "
                        f"instance or detection (skipped: {skipped or 'nothing'})")
    miou, instance_ious = MiouAccumulator(), []
    for image_id, annotation_id, iou, area in (item for p in parts for item in p.instances):
        if miou.add(iou, area):
            instance_ious.append([image_id, annotation_id, iou])
    masks = {key: rle for p in parts for key, rle in p.masks.items()}
    metrics: dict[str, Any] = {}
    if options.prompt != "detections":
        metrics.update(miou.summary().as_dict())
    if detections is not None:
        results = [r for p in parts for r in p.results]
        # the images read: one skipped (unreadable, wrong size) would count its objects as misses
        ap = mask_ap(dataset, results, read)
        metrics.update({k: v for k, v in ap.as_dict().items() if k != "note"})
    if reference is not None:
        metrics["agreement"] = agreement(masks, reference.masks)
    return EvalResult(metrics, masks, skips, num_images, num_prompts, instance_ious)


def _with_detection_skips(skips: dict[str, int], detections: Detections | None, read: list[int]) -> dict[str, int]:
    """``skips`` with the detector boxes left unprompted on the images read (``degenerate_detection``)."""
    if detections is None:
        return skips
    images = set(read)
    unprompted = sum(image_id in images for image_id, _ in detections.skips.keys("degenerate_detection"))
    return {**skips, "degenerate_detection": unprompted}


def _check_categories(detections: Detections, dataset: CocoDataset) -> None:
    """DataError, before any prediction, for detections of a category the ground truth lacks:
    COCOeval would drop them without a word (a detector's 0-based labels give AP 0)."""
    known = set(dataset.coco.cats)
    unknown = sorted(detections.category_ids - known)
    if unknown:
        raise DataError(f"detections file {detections.path}: category id(s) {unknown[:10]} are not categories of "
                        f"the ground truth ({sorted(known)[:10]}{' …' if len(known) > 10 else ''}); "
                        "0-based detector labels?")


def _gt_iou(sample: Sample, annotation_id: int, pred: np.ndarray) -> tuple[int, int, float, float]:
    """``(image_id, annotation_id, iou, area)`` of one instance."""
    instance = next(inst for inst in sample.instances if inst.annotation_id == annotation_id)
    return sample.image_id, annotation_id, float(mask_iou(pred, instance.mask)), instance.area


def agreement(masks: dict, reference: dict) -> float | None:
    """Mean IoU between masks and the reference run's masks of the same prompts."""
    keys = [k for k in masks if k in reference]
    if not keys:
        return None
    return float(np.mean([_rle_iou(masks[k], reference[k]) for k in keys]))


def _rle_iou(a: dict, b: dict) -> float:
    """IoU of two RLE masks; two empty masks agree (1.0), as in :func:`mask_iou`."""
    if not mask_utils.area(a) and not mask_utils.area(b):
        return 1.0
    return float(mask_utils.iou([a], [b], [0])[0, 0])


def masks_to_json(masks: dict) -> list[list]:
    """A run's masks as JSON-ready entries ``[image_id, source, annotation id, RLE]``."""
    return [[image_id, source, ann_id, {"size": rle["size"], "counts": rle["counts"].decode("ascii")}]
            for (image_id, source, ann_id), rle in masks.items()]


def masks_from_json(entries: list[list]) -> dict:
    """The inverse of :func:`masks_to_json`."""
    return {(image_id, source, ann_id): {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            for image_id, source, ann_id, rle in entries}
