"""The torch-free inference path: numpy / Pillow preprocessing equal to the torch evaluation
transform, the bundled model's ONNX twin equal to its checkpoint, and `sonocad predict` with
the bundled model never importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sonocad.data.phantom import make_phantom
from sonocad.inference import predictor as predictor_module
from sonocad.inference.predictor import Predictor
from sonocad.io.images import read_image
from sonocad.model_input import InputSpec, model_input, restore_size
from sonocad.tasks import get_task
from sonocad.transforms import TransformConfig, to_model_input
from sonocad.transforms import restore_size as torch_restore_size

CONFIGS = [{}, {"normalize": "imagenet"}, {"keep_aspect": False, "normalize": "unit"},
           {"grayscale": False}, {"clahe": True, "despeckle": "median"},
           {"input_size": [192, 320]}]


def images() -> list[np.ndarray]:
    """Phantoms of several shapes and depths: grey, RGB, 16-bit, tall, wide, tiny."""
    grey = [make_phantom("benign", size=shape, seed=seed).image
            for seed, shape in enumerate([(300, 420), (512, 256), (97, 130)])]
    rgb = np.repeat(grey[0][:, :, None], 3, axis=2)
    rgb[..., 0] //= 2  # a tint, so that colour handling shows
    deep = grey[1].astype(np.uint16) * 257
    return [*grey, rgb, deep]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(c) or "default")
def test_preprocessing_equals_the_torch_evaluation_transform(config: dict) -> None:
    spec, torch_config = InputSpec.from_dict(config), TransformConfig.from_dict(config)
    for pixels in images():
        ours = model_input(pixels, spec)
        reference = to_model_input(pixels, torch_config).numpy()
        assert ours.shape == reference.shape and ours.dtype == np.float32
        # the bound is 1/255 of the input range; the two agree far closer
        np.testing.assert_allclose(ours, reference, atol=1e-4)


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: ",".join(c) or "default")
def test_restoring_the_size_equals_torch(config: dict) -> None:
    spec, torch_config = InputSpec.from_dict(config), TransformConfig.from_dict(config)
    logits = np.random.default_rng(0).normal(0, 4, spec.size).astype(np.float32)
    for shape in [(300, 420), (97, 130), (512, 256)]:
        ours = restore_size(logits, shape, spec)
        reference = torch_restore_size(torch.from_numpy(logits)[None], shape, torch_config)[0]
        np.testing.assert_allclose(ours, reference.numpy(), atol=1e-3)


def test_the_task_table_is_the_tasks_own() -> None:
    for name, (lesion_map, class_scores) in predictor_module._TASK_OUTPUTS.items():
        task = get_task(name)
        assert (task.lesion_map, task.class_scores) == (lesion_map, class_scores)


def test_the_training_keys_stay_out_of_the_inference_spec() -> None:
    spec = InputSpec.from_dict({"input_size": 128, "augment": {"hflip": True}})
    assert spec.size == (128, 128) and not hasattr(spec, "augment")
    with pytest.raises(Exception, match="unknown transform key"):
        InputSpec.from_dict({"input_sise": 128})


@pytest.mark.slow
def test_the_bundled_onnx_twin_gives_the_checkpoints_masks_on_busi(busi_root: Path) -> None:
    """100 BUSI images. The lean path (numpy preprocessing and resizing, the shipped ONNX file)
    against the torch evaluation transform and torch resizing, run on the same ONNX model and
    on the shipped checkpoint under torch: the same calls, and the same masks but for pixels on
    the 0.5 contour itself (|logit| < 1e-3, float arithmetic in another order: a handful in 40
    million)."""
    paths = sorted(busi_root.glob("*/* ([0-9]*).png"))[::7][:100]
    assert len(paths) == 100
    lean = Predictor.default(backend="onnx")
    assert lean.checkpoint is None and lean.backend == "onnx"
    heavy = Predictor.default(backend="torch")
    spec, config = lean.transform_config, TransformConfig.from_dict(heavy.info.transform)
    contour, pixels_seen = [], 0
    for start in range(0, len(paths), 10):
        images = [read_image(path).pixels for path in paths[start:start + 10]]
        ours = lean.predict(images)
        torch_inputs = np.stack([to_model_input(image, config).numpy() for image in images])
        for runner in (lean.runner, heavy.runner):
            lesion, classes = runner(torch_inputs)
            probabilities = torch.softmax(torch.from_numpy(classes), 1).numpy()
            for i, (image, prediction) in enumerate(zip(images, ours)):
                logits = torch_restore_size(torch.from_numpy(lesion[i]), image.shape[:2],
                                            config)[0].numpy()
                differ = prediction.mask != (logits > 0)
                assert np.abs(logits[differ]).max(initial=0) < 1e-3
                contour.append(int(differ.sum()))
                np.testing.assert_allclose(list(prediction.class_probabilities.values()),
                                           probabilities[i], atol=1e-4)
        pixels_seen += sum(image.shape[0] * image.shape[1] for image in images)
    assert sum(contour) <= 2 * pixels_seen * 1e-6
    assert spec.size == config.size


def test_predict_with_the_bundled_model_never_imports_torch(tmp_path: Path) -> None:
    image = tmp_path / "scan.png"
    from PIL import Image as PILImage

    PILImage.fromarray(make_phantom("malignant", size=(200, 240), seed=3).image).save(image)
    script = ("import sys, json; from sonocad.cli import main; "
              f"code = main(['predict', {str(image)!r}, '--out', {str(tmp_path / 'out')!r}]); "
              "print(json.dumps([code, sorted(m for m in sys.modules "
              "if m.split('.')[0] in ('torch', 'torchvision'))]))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    code, loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert code == 0 and loaded == []
    assert (tmp_path / "out" / "predictions.csv").is_file()
