"""ptqsam: post-training quantization research toolkit for SAM, TinySAM and MobileSAM."""

__version__ = "0.1.0"
