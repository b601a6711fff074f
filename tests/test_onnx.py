"""ONNX export and the ONNX Runtime back end: self-describing files, parity with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image as PILImage

from conftest import EXIT_FATAL, run_cli, write_checkpoint
from sonocad.checkpoint import BUNDLED_MODEL, Checkpoint, load_checkpoint, save_checkpoint
from sonocad.data.phantom import make_phantom
from sonocad.errors import InputError, SonocadError
from sonocad.inference.export import META_KEY, PACKAGE, export_onnx, onnx_model_bytes
from sonocad.inference.predictor import Predictor
from sonocad.model_input import InputSpec
from sonocad.models import create_model
from sonocad.workflows.predict import predict

MODELS = {  # name -> (task, builder args, class names)
    "u2net_lite": ("segmentation", {}, ["background", "lesion"]),
    "unet": ("segmentation", {"base_width": 4, "depth": 2}, ["background", "lesion"]),
    "resnet34": ("classification", {"num_classes": 3}, ["normal", "benign", "malignant"]),
    "efficientnet_lite0_unet": ("multitask", {"num_classes": 3},
                                ["normal", "benign", "malignant"]),
}


def _checkpoint(path: Path, name: str) -> Path:
    task, args, class_names = MODELS[name]
    torch.manual_seed(0)
    model = create_model(name, **args)
    return write_checkpoint(path, task, name, args, class_names, model.state_dict(),
                            input_size=64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint, its ONNX export at the default path)."""
    folder = tmp_path_factory.mktemp("models")
    pairs = {}
    for name in MODELS:
        checkpoint = _checkpoint(folder / f"{name}.pt", name)
        pairs[name] = checkpoint, export_onnx(checkpoint)
    return pairs


def _images(count: int) -> list[np.ndarray]:
    # Different sizes and aspect ratios, so letterboxing and restoring the size are exercised.
    sizes = [(60, 80), (96, 64), (64, 64)]
    return [make_phantom("malignant", size=sizes[i % 3], seed=i).image for i in range(count)]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_runtime_matches_torch(exported: dict[str, tuple[Path, Path]], name: str,
                                    batch: int) -> None:
    checkpoint, onnx_path = exported[name]
    torch_predictor = Predictor(checkpoint)
    onnx_predictor = Predictor(onnx_path, backend="onnx")
    images = _images(batch)

    model_input = np.random.default_rng(batch).normal(size=(batch, 3, 64, 64)).astype(np.float32)
    for ours, theirs in zip(onnx_predictor.runner(model_input),
                            torch_predictor.runner(model_input), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(onnx_predictor.predict(images), torch_predictor.predict(images),
                            strict=True):
        task = MODELS[name][0]
        if task in ("segmentation", "multitask"):
            assert ours.lesion_probability.shape == theirs.lesion_probability.shape
            np.testing.assert_allclose(ours.lesion_probability, theirs.lesion_probability,
                                       atol=1e-4)
        if task in ("classification", "multitask"):
            assert ours.class_probabilities.keys() == theirs.class_probabilities.keys()
            np.testing.assert_allclose(list(ours.class_probabilities.values()),
                                       list(theirs.class_probabilities.values()), atol=1e-4)


def test_exported_file_describes_itself(exported: dict[str, tuple[Path, Path]]) -> None:
    checkpoint, onnx_path = exported["u2net_lite"]
    assert onnx_path == checkpoint.with_suffix(".onnx")
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model, full_check=True)
    meta = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])
    assert meta == load_checkpoint(checkpoint).meta
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 64]

    predictor = Predictor(onnx_path, backend="onnx")
    assert predictor.checkpoint is None
    assert predictor.task.name == "segmentation"
    assert predictor.class_names == ["background", "lesion"]
    assert predictor.transform_config == InputSpec(input_size=64)
    options = predictor.runner.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()


def test_a_checkpoint_runs_on_the_onnx_back_end_directly(
        exported: dict[str, tuple[Path, Path]]) -> None:
    checkpoint, _ = exported["unet"]
    predictor = Predictor(checkpoint, backend="onnx")
    assert predictor.checkpoint is not None
    (ours,) = predictor.predict(_images(1))
    (theirs,) = Predictor(checkpoint).predict(_images(1))
    np.testing.assert_allclose(ours.lesion_probability, theirs.lesion_probability, atol=1e-4)


def test_predict_command_gives_the_same_table_on_both_back_ends(
        exported: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    checkpoint, onnx_path = exported["unet"]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(_images(3)):
        PILImage.fromarray(image).save(folder / f"{i}.png")
    torch_rows = predict([folder], tmp_path / "torch", checkpoint=checkpoint).rows
    onnx_rows = predict([folder], tmp_path / "onnx", checkpoint=onnx_path, backend="onnx").rows
    assert [r["image_id"] for r in onnx_rows] == ["0.png", "1.png", "2.png"]
    for ours, theirs in zip(onnx_rows, torch_rows, strict=True):
        assert ours["lesion_area_px"] == pytest.approx(theirs["lesion_area_px"], abs=2)


def test_export_to_a_chosen_path_and_never_over_the_checkpoint(
        exported: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    checkpoint, _ = exported["unet"]
    out = export_onnx(checkpoint, tmp_path / "sub" / "model.onnx", opset=18)
    assert out.is_file() and onnx.load(out).opset_import[0].version == 18
    with pytest.raises(InputError, match="is the input"):
        export_onnx(checkpoint, checkpoint)


def test_unusable_models_are_clear_errors(exported: dict[str, tuple[Path, Path]],
                                          tmp_path: Path) -> None:
    checkpoint, onnx_path = exported["unet"]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(InputError, match="garbage.onnx: not a readable ONNX model"):
        Predictor(garbage, backend="onnx")

    foreign = onnx.load(onnx_path)
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(InputError, match="not a sonocad ONNX model"):
        Predictor(tmp_path / "foreign.onnx", backend="onnx")

    with pytest.raises(InputError, match="onnx back end"):
        Predictor(onnx_path)
    with pytest.raises(SonocadError, match="unknown back end"):
        Predictor(checkpoint, backend="tensorrt")
    with pytest.raises(InputError, match="no such ONNX model"):
        Predictor(tmp_path / "missing.onnx", backend="onnx")

    detection = Checkpoint({**load_checkpoint(checkpoint).meta, "task": "detection"}, {})
    with pytest.raises(SonocadError, match="torch back end only"):
        onnx_model_bytes(detection)


def test_flip_averaging_is_the_mean_of_the_image_and_its_mirror_on_both_back_ends(
        exported: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    checkpoint, _ = exported["efficientnet_lite0_unet"]
    loaded = load_checkpoint(checkpoint)
    flipped = tmp_path / "tta.pt"
    save_checkpoint(flipped, Checkpoint({**loaded.meta, "tta": "hflip"}, loaded.state_dict))
    plain = Predictor(checkpoint)
    batch = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    lesion, classes = plain.runner(batch)
    mirror_lesion, mirror_classes = plain.runner(np.ascontiguousarray(batch[..., ::-1]))
    for backend in ("torch", "onnx"):
        averaged_lesion, averaged_classes = Predictor(flipped, backend=backend).runner(batch)
        np.testing.assert_allclose(averaged_lesion, (lesion + mirror_lesion[..., ::-1]) / 2,
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(averaged_classes, (classes + mirror_classes) / 2,
                                   rtol=1e-4, atol=1e-4)
    save_checkpoint(flipped, Checkpoint({**loaded.meta, "tta": "rot90"}, loaded.state_dict))
    with pytest.raises(InputError, match="tta 'rot90' is not a known test-time augmentation"):
        Predictor(flipped)


def test_an_ensemble_averages_its_members_logits_and_exports(
        exported: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    from sonocad.models.ensemble import ensemble_state_dict

    checkpoint, _ = exported["efficientnet_lite0_unet"]
    first = load_checkpoint(checkpoint)
    torch.manual_seed(1)
    second_state = create_model("efficientnet_lite0_unet", num_classes=3).state_dict()
    spec = first.meta["model"]
    joined = tmp_path / "ensemble.pt"
    save_checkpoint(joined, Checkpoint(
        {**first.meta, "model": {"name": "ensemble", "args": {"members": [spec, spec]}}},
        ensemble_state_dict([first.state_dict, second_state])))
    second = tmp_path / "second.pt"
    save_checkpoint(second, Checkpoint(first.meta, second_state))
    batch = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    outputs = [Predictor(path).runner(batch) for path in (checkpoint, second)]
    for backend in ("torch", "onnx"):
        lesion, classes = Predictor(joined, backend=backend).runner(batch)
        np.testing.assert_allclose(lesion, (outputs[0][0] + outputs[1][0]) / 2,
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(classes, (outputs[0][1] + outputs[1][1]) / 2,
                                   rtol=1e-4, atol=1e-4)


def test_the_bundled_model_is_never_exported_into_the_installed_package(capsys):
    for name in ("default", PACKAGE.joinpath(*BUNDLED_MODEL)):
        code, lines = run_cli(["export", name], capsys)
        assert code == EXIT_FATAL and "give --out" in lines[-1]
