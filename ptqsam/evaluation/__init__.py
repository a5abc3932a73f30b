"""Evaluation: segmentation metrics (mIoU by COCO size bucket, COCO mask AP)."""

from ptqsam.evaluation.metrics import (AP_KEYS, BUCKETS, MaskApResult, MiouAccumulator, MiouSummary, bucket_of,
                                       mask_ap, mask_iou, mask_result, prompt_score)

__all__ = [
    "AP_KEYS", "BUCKETS", "MaskApResult", "MiouAccumulator", "MiouSummary", "bucket_of", "mask_ap", "mask_iou",
    "mask_result", "prompt_score",
]
