"""sonocad: AI for breast ultrasound — segmentation, classification, detection, statistics."""

__version__ = "0.1.0"
