"""Inference: the Predictor (torch and ONNX Runtime back ends) and export."""
