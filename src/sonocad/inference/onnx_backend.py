"""The ONNX Runtime back end: one InferenceSession behind the Predictor's `Runner` interface.

It runs a ``.onnx`` file from `sonocad export` (its meta comes from the file's metadata, checked
as a checkpoint's is: `sonocad.meta.read_meta`) without importing torch, or a checkpoint,
exported in memory first. It uses as many threads as torch does where torch is loaded (the two
back ends share one CPU budget), else ONNX Runtime's default (the physical cores), with every
graph optimisation on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from sonocad.errors import InputError
from sonocad.meta import META_KEY, CheckpointMeta, read_meta

if TYPE_CHECKING:
    from sonocad.checkpoint import Checkpoint

# What ONNX Runtime raises for a file that is not a usable model (they derive from Exception).
_LOAD_ERRORS = (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail,
                ort_errors.NotImplemented, ort_errors.InvalidArgument)


class OnnxRunner:
    def __init__(self, session: ort.InferenceSession, info: CheckpointMeta) -> None:
        self.session, self.info = session, info
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def from_file(cls, path: str | Path) -> OnnxRunner:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such ONNX model")
        try:
            session = _session(str(path))
        except _LOAD_ERRORS as exc:
            raise InputError(path, f"not a readable ONNX model ({type(exc).__name__})") from None
        text = session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if text is None:
            raise InputError(path, f"not a sonocad ONNX model (no {META_KEY!r} metadata; "
                                   f"export it with `sonocad export`)")
        try:
            meta = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(path, f"its {META_KEY!r} metadata is not valid JSON") from None
        return cls(session, read_meta(path, meta, "ONNX model"))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> OnnxRunner:
        from sonocad.inference.export import onnx_model_bytes  # torch: a checkpoint needs it

        return cls(_session(onnx_model_bytes(checkpoint)), checkpoint.info)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        feed = np.ascontiguousarray(batch, dtype=np.float32)
        return tuple(self.session.run(None, {self.input_name: feed}))


def _session(model: str | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if "torch" in sys.modules:  # share torch's thread budget (a user may have set it)
        options.intra_op_num_threads = sys.modules["torch"].get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep rather than spin: spinning steals a shared CPU from the rest of the
    # run (preprocessing, writing outputs, torch) and from other processes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
