"""Inference: the Predictor (torch and ONNX Runtime back ends), the detector, the decision rule
and ONNX export."""
