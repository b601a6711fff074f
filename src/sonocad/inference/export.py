"""`sonocad export`: a checkpoint as a self-describing ONNX model for ONNX Runtime.

The graph takes the checkpoint's preprocessed input, float32 (N, 3, H, W) with N free and (H, W)
the checkpoint's input size, and returns its logits, named by the task
(`sonocad.tasks.Task.output_names`): lesion logits (N, 1, H, W) and/or class logits (N, K). Pre-
and post-processing stay in Python, shared with the torch back end: run the file with
``Predictor(path, backend="onnx")``. The checkpoint's meta (task, class names, transform, model
name and arguments, recipe, ...) is stored as JSON in the model's metadata under `META_KEY`, so
the ONNX file needs nothing beside it.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch

from sonocad.checkpoint import Checkpoint, bundled_checkpoint, load_checkpoint
from sonocad.errors import SonocadError
from sonocad.inference.logits import LogitsOnly, check_task
from sonocad.io.atomic import write_bytes
from sonocad.io.outputs import claim_output_file
from sonocad.meta import META_KEY
from sonocad.transforms import TransformConfig

PACKAGE = Path(__file__).resolve().parents[1]  # the installed sonocad: never written into

INPUT_NAME = "image"
DEFAULT_OPSET = 17


def export_onnx(checkpoint_path: str | Path, out_path: str | Path | None = None, *,
                opset: int = DEFAULT_OPSET, half_weights: bool = False) -> Path:
    """Write `checkpoint_path` ("default": the bundled model) as ONNX to `out_path` (default:
    beside it, suffix .onnx, except for the bundled model, whose folder is the installed
    package: it needs an `out_path`); `half_weights` stores the weights in half precision
    (`onnx_model_bytes`)."""
    bundled = str(checkpoint_path) == "default"
    checkpoint = bundled_checkpoint() if bundled else load_checkpoint(checkpoint_path)
    if out_path is None:
        if bundled or checkpoint.path.resolve().is_relative_to(PACKAGE):
            raise SonocadError("the bundled model lives in the installed package: give --out "
                               "FILE.onnx (its ONNX twin ships beside it already)")
        out_path = checkpoint.path.with_suffix(".onnx")
    out_path = Path(out_path)
    claim_output_file(out_path, inputs=[] if bundled else [Path(checkpoint_path)])
    write_bytes(out_path, onnx_model_bytes(checkpoint, opset=opset, half_weights=half_weights))
    return out_path


def onnx_model_bytes(checkpoint: Checkpoint, *, opset: int = DEFAULT_OPSET,
                     half_weights: bool = False) -> bytes:
    """The serialised, checked ONNX model of `checkpoint`, its meta in the metadata. With
    `half_weights` its float weights are stored in half precision, each cast to float32 as the
    graph starts (ONNX Runtime folds the casts when it loads the file): half the bytes, the
    same arithmetic, and the same values as a checkpoint already saved in half precision."""
    task = check_task(checkpoint.task, "onnx")
    size = TransformConfig.from_dict(checkpoint.info.transform).size
    module = LogitsOnly(checkpoint.build_model(), task)
    outputs = list(task.output_names)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript-based exporter warns that it is deprecated; the torch.export-based
            # one needs onnxscript, which sonocad does not depend on.
            warnings.simplefilter("ignore", DeprecationWarning)
            # Folding batch norm into the convolutions here would make weights that half
            # precision rounds; ONNX Runtime folds them itself, in float32, when it loads.
            torch.onnx.export(module, (torch.zeros(1, 3, *size),), buffer, dynamo=False,
                              do_constant_folding=not half_weights,
                              opset_version=opset, input_names=[INPUT_NAME],
                              output_names=outputs,
                              dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]})
    except torch.onnx.errors.OnnxExporterError as exc:
        # torch's message runs to pages (the graph); its first sentence says what failed.
        reason = str(exc).strip().splitlines()[0].split(". ")[0].rstrip(".")
        raise SonocadError(f"cannot export model {checkpoint.info.model.name!r} "
                           f"to ONNX: {reason}") from exc
    model = onnx.load_model_from_string(buffer.getvalue())
    if half_weights:
        _store_half(model.graph)
    onnx.helper.set_model_props(model, {META_KEY: json.dumps(checkpoint.meta)})
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _store_half(graph: onnx.GraphProto) -> None:
    """Every float32 weight of `graph` stored as float16 and cast back where the graph starts."""
    casts = []
    for weight in graph.initializer:
        if weight.data_type != onnx.TensorProto.FLOAT:
            continue
        name, values = weight.name, onnx.numpy_helper.to_array(weight).astype(np.float16)
        weight.CopyFrom(onnx.numpy_helper.from_array(values, f"{name}::half"))
        casts.append(onnx.helper.make_node("Cast", [weight.name], [name],
                                           to=onnx.TensorProto.FLOAT))
    for position, cast in enumerate(casts):
        graph.node.insert(position, cast)
