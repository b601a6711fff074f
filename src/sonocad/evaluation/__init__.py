"""Evaluation: metrics per image and pooled, and the statistics over them.

Import from the submodules (``sonocad.evaluation.segmentation``, ``.bootstrap``, ...); nothing
is re-exported here, so ``import sonocad.evaluation`` stays cheap and adding a module does not
mean editing this file.
"""
