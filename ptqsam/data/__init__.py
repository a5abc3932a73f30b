"""Datasets and prompts: a COCO-format reader, SAM prompts, and a synthetic dataset generator."""

from ptqsam.data.coco import (SKIP_REASONS, CocoDataset, ImageInfo, Instance, Sample, SkipCounter, xywh_to_xyxy,
                              xyxy_to_xywh)
from ptqsam.data.prompts import (PROMPT_KINDS, Detections, PromptSet, box_center, gt_prompts, instance_rng, mask_box,
                                 random_mask_points)
from ptqsam.data.samples import CalibrationSample, calibration_samples, choose_image_ids
from ptqsam.data.synthetic import CATEGORIES, SyntheticDataset, generate_dataset, split_ids, visible_masks

__all__ = [
    "CATEGORIES", "PROMPT_KINDS", "SKIP_REASONS", "CalibrationSample", "CocoDataset", "Detections", "ImageInfo", "Instance", "PromptSet",
    "Sample", "SkipCounter", "SyntheticDataset", "box_center", "calibration_samples", "choose_image_ids", "generate_dataset", "gt_prompts", "instance_rng",
    "mask_box", "random_mask_points", "split_ids", "visible_masks", "xywh_to_xyxy", "xyxy_to_xywh",
]
