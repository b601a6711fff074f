"""What made an output folder: ``provenance.json`` beside the results of `predict`,
`evaluate` and `explain`.

It records each model (its registry name, task, the file it was read from with that file's
SHA-256, whether it is the bundled default model, the sonocad version that trained it), the back
end that ran it, the sonocad version that wrote the folder and the command line of the process.
The predictions table keeps its own format; this file sits beside it. The folder's marker
(``.sonocad-output.json``, `sonocad.io.outputs`) holds the same beside the command's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sonocad.inference.predictor import BUNDLED_ONNX
from sonocad.io.atomic import write_json
from sonocad.io.digest import file_sha256
from sonocad.io.outputs import MARKER, PROVENANCE, made_by, read_marker
from sonocad.meta import CheckpointMeta

if TYPE_CHECKING:  # at run time not needed, and it would import torch
    from sonocad.checkpoint import Checkpoint
    from sonocad.inference.predictor import Predictor


def model_record(meta: CheckpointMeta, path: str | Path | None, *,
                 bundled: bool = False) -> dict[str, Any]:
    """One model's entry: name, task, file (absolute) and its SHA-256; file and hash are None
    for a checkpoint made in memory (through the Python API), which has no file."""
    path = None if path is None else Path(path).resolve()
    return {"name": meta.model.name, "task": meta.task,
            "file": None if path is None else str(path),
            "sha256": None if path is None else file_sha256(path), "bundled": bundled,
            "trained_with_sonocad": meta.sonocad_version}


def predictor_record(predictor: Predictor,
                     source: str | Path | Checkpoint | None) -> dict[str, Any]:
    """The entry of the model `predictor` was opened from: `source` as given to it (a path or
    a loaded checkpoint), or None for the bundled model, whose ONNX twin or checkpoint is the
    file, as the predictor's back end chose."""
    if source is None and predictor.checkpoint is None:  # the bundled model's ONNX twin
        with as_file(files("sonocad").joinpath(*BUNDLED_ONNX)) as path:
            return model_record(predictor.info, path, bundled=True)
    if source is None:
        return model_record(predictor.info, predictor.checkpoint.path, bundled=True)
    return model_record(predictor.info,
                        source if isinstance(source, str | Path) else source.path)


def write_provenance(out: str | Path, models: Sequence[dict[str, Any]], backend: str) -> None:
    """``out/provenance.json`` for an output made with `models` on `backend`, and the same in
    the marker of `out` (a folder `claim_output_dir` claimed), so that the marker alone says
    what made the folder."""
    out = Path(out)
    provenance = {"models": list(models), "backend": backend, **made_by()}
    write_json(out / PROVENANCE, provenance)
    write_json(out / MARKER, {**read_marker(out), **provenance})
