"""Evaluation: metrics per image and pooled, the statistics over them, and what reads
predictions tables (compare, breakdowns, the QIMS combined model).

Import from the submodules (``sonocad.evaluation.segmentation``, ``.bootstrap``, ...); nothing
is re-exported here, so ``import sonocad.evaluation`` stays cheap and adding a module does not
mean editing this file.
"""
