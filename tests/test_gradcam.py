"""Grad-CAM / Grad-CAM++ and `sonocad explain`: the maps, the model left untouched, the files.

The acceptance test trains a tiny CNN on phantoms and checks that its heatmap lands on the lesion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from scipy import ndimage
from torch import nn

from conftest import png, unet_checkpoint, write_checkpoint
from sonocad.data.phantom import make_phantom
from sonocad.errors import SonocadError
from sonocad.explain import Explainer, default_target_layer, explain, grad_cam
from sonocad.explain import runner as runner_module
from sonocad.inference.predictor import Predictor
from sonocad.models import create_model
from sonocad.pictures import heatmap_picture
from sonocad.transforms import TransformConfig, to_model_input

CLASSES = ["normal", "benign", "malignant"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny tensors gain nothing from threads, and on a busy CPU extra threads cost seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cam_net(channels: int = 8, classes: int = 3) -> nn.Sequential:
    """conv -> ReLU -> global average pool -> linear: the network CAM (Zhou et al. 2016) needs."""
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def _image(height: int = 24, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _normalised(cam: torch.Tensor) -> np.ndarray:
    cam = torch.relu(cam)
    return (cam / cam.max()).numpy()


# --- grad_cam -----------------------------------------------------------------------------

def test_map_is_float32_in_unit_range_at_the_input_size() -> None:
    torch.manual_seed(0)
    cam = grad_cam(_cam_net(), _image(40, 56))
    assert cam.shape == (40, 56) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)


def test_gradcam_and_gradcam_plus_plus_match_their_closed_forms_for_a_gap_linear_head() -> None:
    # With global average pooling and a linear head, d score / d A_c(x, y) = w_c / (H W)
    # everywhere, so Grad-CAM is CAM, relu(sum_c w_c A_c), and Grad-CAM++ weighs channel c by
    # H W relu(g_c) / (2 + S_c g_c), with g_c = w_c / (H W) and S_c = sum_xy A_c.
    torch.manual_seed(1)
    model, image, target = _cam_net(), _image(), 2
    with torch.no_grad():
        activations = model[1](model[0](image))[0]  # (C, H, W)
    w = model[4].weight[target].detach()
    area = activations.shape[1] * activations.shape[2]
    cam = torch.einsum("c,chw->hw", w, activations)
    g = w / area
    plus_weights = area * torch.relu(g) / (2 + activations.sum(dim=(1, 2)) * g)
    plus = torch.einsum("c,chw->hw", plus_weights, activations)

    got = grad_cam(model, image, target_class=target, layer="1")
    got_plus = grad_cam(model, image, target_class=target, layer=model[1], method="gradcam++")
    np.testing.assert_allclose(got, _normalised(cam), atol=1e-5)
    np.testing.assert_allclose(got_plus, _normalised(plus), atol=1e-5)
    assert not np.allclose(got, got_plus, atol=1e-2)  # the two methods differ here


def test_target_class_is_respected_and_defaults_to_the_predicted_class() -> None:
    torch.manual_seed(2)
    model, image = _cam_net(), _image()
    predicted = int(model(image).argmax())
    maps = [grad_cam(model, image, target_class=k) for k in range(3)]
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])
    np.testing.assert_array_equal(grad_cam(model, image), maps[predicted])


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_model_is_left_as_it_was_even_when_the_call_fails() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model.train()
    model[0].weight.requires_grad_(False)  # a partly frozen model keeps its freezing
    model[6].eval()  # and mixed train/eval modes survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]

    first = grad_cam(model, _image(seed=4), target_class=1)
    second = grad_cam(model, _image(seed=4), target_class=1)
    with pytest.raises(SonocadError, match="out of range"):
        grad_cam(model, _image(), target_class=5)

    np.testing.assert_array_equal(first, second)  # eval mode: dropout and batch stats off
    assert _hooks(model) == 0
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert [m.training for m in model.modules()] == modes


def test_a_fully_frozen_model_under_no_grad_still_gets_a_map() -> None:
    torch.manual_seed(5)
    model = _cam_net().requires_grad_(False)
    with torch.no_grad():
        cam = grad_cam(model, _image())
    assert cam.max() == pytest.approx(1.0)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name, expected", [
    ("resnext50_32x4d", lambda m: m.layer4),
    ("resnet34", lambda m: m.layer4),
    ("resnet50", lambda m: m.layer4),
    ("alexnet", lambda m: m.features[10]),  # its last convolution
])
def test_default_target_layer_is_the_last_convolutional_block(
        name: str, expected: Callable[[nn.Module], nn.Module]) -> None:
    torch.manual_seed(6)
    model = create_model(name, num_classes=3).eval()
    assert default_target_layer(model) is expected(model)
    for method in ("gradcam", "gradcam++"):
        cam = grad_cam(model, _image(64, 64), method=method)
        assert cam.shape == (64, 64) and np.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1
    assert _hooks(model) == 0


def test_bad_arguments_are_clear_errors() -> None:
    model = _cam_net()
    with pytest.raises(SonocadError, match="unknown explanation method 'cam'"):
        grad_cam(model, _image(), method="cam")
    with pytest.raises(SonocadError, match=r"one image as \(1, C, H, W\)"):
        grad_cam(model, _image()[0])
    with pytest.raises(SonocadError, match="no layer 'head'"):
        grad_cam(model, _image(), layer="head")
    with pytest.raises(SonocadError, match="did not run"):
        grad_cam(model, _image(), layer=nn.Conv2d(3, 3, 1))
    with pytest.raises(SonocadError, match="explains classifiers"):
        grad_cam(create_model("unet", base_width=4, depth=2), _image(32, 32))
    with pytest.raises(SonocadError, match="no Conv2d layer"):
        default_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
    assert _hooks(model) == 0


# --- acceptance: a trained classifier's heatmap peaks on the lesion -----------------------

SIZE = (64, 64)
TRANSFORM = TransformConfig(input_size=64)


def _lesion_only(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A malignant lesion (and its 3-pixel rim) pasted into the "normal" phantom of the same seed,
    which shares its tissue and speckle; and the pasted region. Without the acoustic shadow the
    lesion casts, the lesion is the only evidence for its class, so that is where the heatmap
    must look (a model may rightly use a shadow, but that is not what this test checks)."""
    lesion = make_phantom("malignant", size=SIZE, seed=seed)
    normal = make_phantom("normal", size=SIZE, seed=seed)
    region = ndimage.binary_dilation(lesion.mask, iterations=3)
    return np.where(region, lesion.image, normal.image), region


def _tiny_cnn() -> nn.Sequential:
    def block(inputs: int, outputs: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs),
                             nn.ReLU())

    return nn.Sequential(block(3, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2),
                         block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> float:
    """Adam with a cosine schedule (so batch-norm statistics settle); the training accuracy."""
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    model.train()
    for _ in range(steps):
        batch = torch.randperm(len(x))[:32]
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def test_trained_classifier_heatmap_is_on_the_lesion() -> None:
    torch.manual_seed(1)
    seeds = range(1000, 1030)
    images = [make_phantom("normal", size=SIZE, seed=s).image for s in seeds]
    images += [_lesion_only(s)[0] for s in seeds]
    x = torch.stack([to_model_input(image, TRANSFORM) for image in images])
    y = torch.tensor([0] * len(seeds) + [1] * len(seeds))
    model = _tiny_cnn()
    assert _train(model, x, y) >= 0.9

    ratios = []
    for seed in range(99999, 100009):  # held out
        image, region = _lesion_only(seed)
        cam = grad_cam(model, to_model_input(image, TRANSFORM)[None], target_class=1)
        ratios.append(cam[region].mean() / max(cam[~region].mean(), 1e-6))
    # Mean heat on the lesion at least twice that elsewhere, for most held-out images.
    assert sum(ratio >= 2 for ratio in ratios) >= 7, [round(float(r), 1) for r in ratios]


# --- explain: checkpoints and files -------------------------------------------------------

@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-34 (random weights) whose head bias makes "malignant" the prediction."""
    torch.manual_seed(7)
    model = create_model("resnet34", num_classes=3)
    with torch.no_grad():  # small weights: the bias decides, the gradients stay nonzero
        model.fc.weight.mul_(1e-3)
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 4.0]))
    path = tmp_path_factory.mktemp("ckpt") / "cls.pt"
    return write_checkpoint(path, "classification", "resnet34", {"num_classes": 3}, CLASSES,
                            model.state_dict(), input_size=64)


def _png(path: Path, size: tuple[int, int] = (48, 80), seed: int = 0) -> Path:
    return png(path, seed, size, label="malignant")


def test_explain_writes_a_heatmap_per_image_and_reports_bad_inputs(
        tmp_path: Path, classifier: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = _png(tmp_path / "a" / "x.png"), _png(tmp_path / "b" / "x.png", seed=1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    missing = tmp_path / "missing.png"
    result = explain(classifier, [first, broken, second, missing], tmp_path / "out")

    assert [Path(f.path) for f in result.failures] == [broken, missing] and not result.ok
    stderr = capsys.readouterr().err.splitlines()
    assert len(stderr) == 2 and "broken.png" in stderr[0] and "missing.png" in stderr[1]
    assert [Path(r["heatmap"]).name for r in result.rows] == ["x_heatmap.png", "x_2_heatmap.png"]
    expected = Predictor(classifier).predict([np.asarray(PILImage.open(first))])[0]
    row = result.rows[0]
    assert row["file"] == str(first) and row["method"] == "gradcam"
    assert row["predicted_class"] == "malignant"
    assert row["probability"] == pytest.approx(expected.class_probabilities["malignant"])
    written = np.asarray(PILImage.open(row["heatmap"]))
    pixels = np.asarray(PILImage.open(first))
    caption = f"Grad-CAM of malignant ({row['probability']:.2f})"
    np.testing.assert_array_equal(
        written, heatmap_picture(pixels, Explainer(classifier)(pixels).heat, caption))
    assert result.pictures == 2


def test_classifier_map_is_taken_back_from_the_letterboxed_input_to_the_image(
        classifier: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 48 x 80 image fills rows 13..50 of the 64 x 64 input; the bars above and below are cut.
    def left_half_and_bars(model: nn.Module, image: torch.Tensor, **_: object) -> np.ndarray:
        cam = np.zeros(image.shape[-2:], np.float32)
        cam[:, :32] = 1
        cam[:10] = cam[-10:] = 1
        return cam

    monkeypatch.setattr(runner_module, "grad_cam", left_half_and_bars)
    pixels = make_phantom("malignant", size=(48, 80)).image
    heat = Explainer(classifier)(pixels).heat
    assert heat.shape == (48, 80) and heat.dtype == np.float32
    assert (heat[:, :36] > 0.95).all() and (heat[:, 44:] < 0.05).all()


def test_segmentation_heatmap_is_the_lesion_probability(tmp_path: Path) -> None:
    # every pixel: lesion probability sigmoid(1)
    checkpoint = unet_checkpoint(tmp_path / "seg.pt", 1.0)
    image = _png(tmp_path / "in" / "y.png")
    result = explain(checkpoint, [image], tmp_path / "out", method="gradcam++")

    (row,) = result.rows
    assert row["method"] == "lesion_probability" and "predicted_class" not in row
    pixels = np.asarray(PILImage.open(image))
    expected = heatmap_picture(pixels, np.full(pixels.shape, 1 / (1 + np.exp(-1.0)), np.float32),
                               "lesion probability")
    np.testing.assert_array_equal(np.asarray(PILImage.open(row["heatmap"])), expected)


def test_explain_refuses_bad_arguments(tmp_path: Path, classifier: Path) -> None:
    with pytest.raises(SonocadError, match="unknown explanation method"):
        explain(classifier, [], tmp_path / "out", method="lime")
    (tmp_path / "file").write_text("")
    with pytest.raises(SonocadError, match="not a folder"):
        explain(classifier, [], tmp_path / "file")
    with pytest.raises(SonocadError, match="no such checkpoint"):
        explain(tmp_path / "none.pt", [], tmp_path / "out")


def test_explain_gives_the_default_models_class_call_its_own_grad_cam(tmp_path) -> None:
    """The multitask default model: lesion probability and, now, Grad-CAM of the class head,
    which looks at the lesion; --method gradcam++ gives another map (it was ignored)."""
    from importlib.resources import files

    from sonocad.data.phantom import make_phantom
    from sonocad.explain.runner import Explainer, explain

    default = Path(str(files("sonocad") / "weights" / "default.pt"))
    phantom = make_phantom("malignant", size=(200, 260), seed=0)
    cam = Explainer(default).explain_class(phantom.image)
    lesion = phantom.mask.astype(bool)
    assert cam.method == "gradcam" and cam.predicted_class == "malignant"
    assert cam.heat[lesion].mean() > 3 * cam.heat[~lesion].mean()
    # The map follows the class asked for: "normal" looks elsewhere than "malignant".
    other = Explainer(default).explain_class(phantom.image, target="normal")
    assert other.predicted_class == "normal" and other.probability < cam.probability
    assert np.abs(other.heat - cam.heat).mean() > 0.05
    assert np.corrcoef(other.heat.ravel(), cam.heat.ravel())[0, 1] < 0.9
    with pytest.raises(SonocadError, match="unknown class 'cyst'"):
        Explainer(default).explain_class(phantom.image, target="cyst")

    image = tmp_path / "in" / "scan.png"
    image.parent.mkdir()
    PILImage.fromarray(phantom.image).save(image)
    maps = {}
    for method in ("gradcam", "gradcam++"):
        (row,) = explain(default, [image], tmp_path / method, method=method).rows
        assert row["method"] == "lesion_probability" and row["class_method"] == method
        assert row["predicted_class"] == "malignant"
        maps[method] = np.array(PILImage.open(row["class_heatmap"]))
    assert (maps["gradcam"] != maps["gradcam++"]).any()


def test_explain_takes_every_frame_of_a_multi_page_input_as_predict_does(tmp_path) -> None:
    from importlib.resources import files

    from sonocad.data.phantom import make_phantom
    from sonocad.explain.runner import explain

    default = Path(str(files("sonocad") / "weights" / "default.pt"))
    pages = [PILImage.fromarray(make_phantom("benign", size=(64, 80), seed=i).image)
             for i in range(3)]
    loop = tmp_path / "loop.tif"
    pages[0].save(loop, save_all=True, append_images=pages[1:])
    rows = explain(default, [loop], tmp_path / "out").rows
    assert [row["frame"] for row in rows] == [1, 2, 3]
    assert [Path(row["heatmap"]).name for row in rows] == [
        f"loop_frame00{i}_heatmap.png" for i in (1, 2, 3)]
    assert all(Path(row["class_heatmap"]).is_file() for row in rows)
