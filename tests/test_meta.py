"""A model file's meta: checked once (`read_meta`), then read by attribute (`CheckpointMeta`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sonocad.checkpoint import bundled_checkpoint
from sonocad.errors import InputError
from sonocad.meta import CheckpointMeta, read_meta

BARE = {"task": "segmentation", "model": {"name": "unet"},
        "class_names": ["background", "lesion"], "transform": {"input_size": 64}}


def test_a_checkpoints_meta_reads_by_attribute_as_stored() -> None:
    loaded = bundled_checkpoint()  # a trained file: it has the whole training record
    info, stored = loaded.info, loaded.meta
    assert (info.task, info.model.name, info.model.args) == (
        stored["task"], stored["model"]["name"], stored["model"].get("args", {}))
    assert info.class_names == tuple(stored["class_names"])
    assert (info.recipe, info.data, info.select_metric, info.epoch, info.decision) == (
        stored["recipe"], stored["data"], stored["select_metric"], stored["epoch"],
        stored["decision"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.task = "classification"  # type: ignore[misc]


def test_a_file_without_a_training_record_reads_it_as_absent(tmp_path: Path) -> None:
    info = read_meta(tmp_path / "hand-made.pt", BARE)
    assert isinstance(info, CheckpointMeta) and info.model.args == {}
    assert (info.recipe, info.decision, info.tta, info.init, info.epoch) == (None,) * 5
    assert info.data == {} and info.metrics == {}


def test_a_meta_missing_a_field_names_the_file_and_the_key(tmp_path: Path) -> None:
    meta = {key: value for key, value in BARE.items() if key != "class_names"}
    with pytest.raises(InputError, match=r"x\.onnx: damaged sonocad ONNX model: "
                                         r"meta\['class_names'\]"):
        read_meta(tmp_path / "x.onnx", meta, "ONNX model")
