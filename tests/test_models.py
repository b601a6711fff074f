"""The model registry, the output contracts and the pretrained-weight paths (never online)."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torchvision.models._api as weights_api  # where torchvision fetches weights

from sonocad.errors import SonocadError
from sonocad.models import create_model, list_models, model_task, register_model


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may download weights: every torchvision fetch fails as it would offline."""
    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise URLError(f"network disabled in tests: {url}")
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", refuse)


def test_list_models_by_task() -> None:
    segmentation = set(list_models("segmentation"))
    classification = set(list_models("classification"))
    detection = set(list_models("detection"))
    multitask = set(list_models("multitask"))
    assert segmentation >= {"u2net", "u2netp", "u2net_lite", "unet", "fcn_resnet101",
                            "deeplabv3_resnet101"}
    assert classification >= {"resnext50_32x4d", "resnet34", "resnet50", "alexnet"}
    assert detection >= {"maskrcnn_resnet101_fpn"}
    assert multitask >= {"efficientnet_lite0_unet"}
    assert not segmentation & classification and not detection & (segmentation | classification)
    assert list_models() == sorted(segmentation | classification | detection | multitask)
    assert model_task("u2net_lite") == "segmentation"
    assert model_task("maskrcnn_resnet101_fpn") == "detection"
    assert list_models("regression") == []  # tasks are sonocad.tasks' to know (test_tasks)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(SonocadError, match="unknown model 'u3net'.*u2netp"):
        create_model("u3net")
    with pytest.raises(SonocadError, match="unknown model"):
        model_task("u3net")


def test_unknown_argument_is_a_user_error() -> None:
    with pytest.raises(SonocadError, match="u2netp.*num_clases"):
        create_model("u2netp", num_clases=2)


def test_registering_a_name_twice_fails() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_model("unet", task="segmentation")(lambda: torch.nn.Identity())


@pytest.mark.parametrize("name, kwargs, classes, size, aux", [
    ("u2netp", {}, 1, (64, 64), 6),  # default: one lesion logit
    ("u2net_lite", {"num_classes": 2}, 2, (72, 40), 6),  # not divisible by 32
    ("u2net", {}, 1, (64, 64), 6),
    ("unet", {"num_classes": 2}, 2, (70, 50), 0),  # odd sizes on the way down
    ("fcn_resnet101", {"num_classes": 2}, 2, (64, 64), 1),
    ("deeplabv3_resnet101", {"aux_loss": False}, 1, (64, 64), 0),
])
def test_segmentation_contract(name: str, kwargs: dict, classes: int, size: tuple[int, int],
                               aux: int) -> None:
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *size))
    assert set(outputs) == {"out", "aux"}
    assert outputs["out"].shape == (2, classes, *size)
    assert len(outputs["aux"]) == aux
    assert all(side.shape == (2, classes, *size) for side in outputs["aux"])


def test_u2net_fused_output_is_the_fusion_of_its_side_maps() -> None:
    model = create_model("u2netp").eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
        fused = model.fuse(torch.cat(outputs["aux"], dim=1))
    torch.testing.assert_close(outputs["out"], fused)


def test_u2net_parameter_counts_match_the_paper() -> None:
    # Qin et al. 2020: U2-Net 176.3 MB (44.0 M), U2-Net+ (small) 4.7 MB (1.13 M).
    lite = _params(create_model("u2netp"))
    assert lite == pytest.approx(1.13e6, rel=0.02)
    assert _params(create_model("u2net_lite")) == lite
    assert _params(create_model("u2net")) == pytest.approx(44.0e6, rel=0.02)


def test_unet_width_and_depth_are_configurable() -> None:
    small = create_model("unet", base_width=8, depth=3)
    assert _params(small) < _params(create_model("unet")) / 10
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 3, 40, 40))["out"].shape == (1, 1, 40, 40)


@pytest.mark.parametrize("name, kwargs, classes", [
    ("resnext50_32x4d", {}, 3),  # default: normal / benign / malignant
    ("resnet34", {}, 3),
    ("resnet50", {"num_classes": 5}, 5),
    ("alexnet", {"num_classes": 5}, 5),  # its head sits in a Sequential, not in .fc
])
def test_classification_contract(name: str, kwargs: dict, classes: int) -> None:
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, classes)


def test_maskrcnn_eval_and_train_forward() -> None:
    model = create_model("maskrcnn_resnet101_fpn", min_size=128, max_size=128)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    image = torch.rand(3, 128, 128)
    model.eval()
    with torch.no_grad():
        (prediction,) = model([image])
    assert {"boxes", "labels", "scores", "masks"} <= set(prediction)
    assert prediction["masks"].shape[1:] == (1, 128, 128)

    mask = torch.zeros(1, 128, 128, dtype=torch.uint8)
    mask[:, 40:80, 30:90] = 1
    target = {"boxes": torch.tensor([[30.0, 40.0, 90.0, 80.0]]),
              "labels": torch.tensor([2]), "masks": mask}
    model.train()
    losses = model([image], [target])
    assert {"loss_classifier", "loss_box_reg", "loss_mask"} <= set(losses)
    assert all(torch.isfinite(loss) for loss in losses.values())


def test_imagenet_weights_load_into_the_backbone_with_a_new_head(
        monkeypatch: pytest.MonkeyPatch) -> None:
    imagenet = create_model("resnet34", num_classes=1000).state_dict()
    imagenet = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v
                for k, v in imagenet.items()}
    requested = []

    def serve(url: str, *args: object, **kwargs: object) -> dict:
        requested.append(url)
        return imagenet
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", serve)

    model = create_model("resnet34", pretrained="imagenet")
    assert requested == ["https://download.pytorch.org/models/resnet34-b627a593.pth"]
    assert torch.all(model.conv1.weight == 0.5)
    assert model.fc.out_features == 3 and not torch.all(model.fc.weight == 0.5)


@pytest.mark.parametrize("name", ["resnet34", "maskrcnn_resnet101_fpn"])
def test_imagenet_offline_is_a_one_line_error(name: str) -> None:
    with pytest.raises(SonocadError) as caught:
        create_model(name, pretrained="imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert "could not fetch ImageNet weights" in message and "model.pretrained=none" in message
    assert "checkpoints" in message  # where to place the file by hand


def test_pretrained_none_never_downloads() -> None:
    # The autouse fixture makes any fetch fail, so building at all proves nothing was fetched.
    assert create_model("resnet34", pretrained="none").fc.out_features == 3
    assert create_model("resnet34", pretrained=None).fc.out_features == 3


@pytest.mark.parametrize("name, pretrained", [("resnet34", "bogus"), ("u2netp", "imagenet")])
def test_unknown_pretrained_tag_errors(name: str, pretrained: str) -> None:
    with pytest.raises(SonocadError, match=f"no '{pretrained}' weights"):
        create_model(name, pretrained=pretrained)
