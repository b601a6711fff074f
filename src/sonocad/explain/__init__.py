"""Explanations: Grad-CAM / Grad-CAM++ for classifiers, probability heatmaps for segmenters."""

from sonocad.explain.gradcam import METHODS, Method, default_target_layer, grad_cam
from sonocad.explain.runner import Explainer, ExplainResult, Explanation, explain

__all__ = ["METHODS", "ExplainResult", "Explainer", "Explanation", "Method",
           "default_target_layer", "explain", "grad_cam"]
