"""Models of the zoo (SAM ViT-B/L/H, TinySAM, MobileSAM, testbed) and checkpoint loading."""

from ptqsam.models.checkpoint import checkpoint_sha256, load_checkpoint, read_state_dict
from ptqsam.models.testbed import TestbedConfig, build_testbed
from ptqsam.models.tiny_vit import TinyViT
from ptqsam.models.zoo import MODEL_TYPES, build_model, image_size, is_tiny_vit

__all__ = [
    "MODEL_TYPES",
    "TestbedConfig",
    "TinyViT",
    "build_model",
    "build_testbed",
    "checkpoint_sha256",
    "image_size",
    "is_tiny_vit",
    "load_checkpoint",
    "read_state_dict",
]
