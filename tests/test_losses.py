import torch

from sonocad.tasks import get_task
from sonocad.tasks.losses import dice_loss, soft_dice_per_image, weighted_dice_loss

BIG = 30.0  # a logit whose sigmoid is 1 to float precision


def masks():
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1  # image 0 has a 16-pixel lesion, image 1 none
    return target


def test_perfect_prediction_has_near_zero_dice_loss_even_for_an_empty_image():
    target = masks()
    logits = (target * 2 - 1) * BIG
    assert dice_loss(logits, target).item() < 1e-4


def test_dice_is_per_image_then_averaged():
    target = masks()
    logits = torch.full_like(target, -BIG)  # predicts nothing anywhere
    per_image = soft_dice_per_image(torch.sigmoid(logits), target)
    # image 0: (0 + 1) / (16 + 1); image 1 (empty, empty): (0 + 1) / (0 + 1)
    assert torch.allclose(per_image, torch.tensor([1 / 17, 1.0]), atol=1e-5)
    assert abs(dice_loss(logits, target).item() - (1 - (1 / 17 + 1) / 2)) < 1e-5


def test_weighted_dice_weights_the_lesion_term():
    target = masks()[:1]
    logits = torch.full_like(target, -BIG)
    lesion_only = weighted_dice_loss(logits, target, [0.0, 1.0]).item()
    background_only = weighted_dice_loss(logits, target, [1.0, 0.0]).item()
    assert abs(lesion_only - (1 - 1 / 17)) < 1e-5
    assert background_only < 0.2  # the background is almost all correct
    mixed = weighted_dice_loss(logits, target, [1.0, 3.0]).item()
    assert abs(mixed - (background_only + 3 * lesion_only) / 4) < 1e-5


def test_deep_supervision_adds_weighted_side_outputs():
    target = masks()
    good, bad = (target * 2 - 1) * BIG, torch.full_like(target, -BIG)
    loss = get_task("segmentation").build_loss({"name": "dice", "args": {"aux_weight": 0.5}})
    alone = loss({"out": good, "aux": []}, target).item()
    with_aux = loss({"out": good, "aux": [bad, bad]}, target).item()
    assert abs(with_aux - alone - 2 * 0.5 * dice_loss(bad, target).item()) < 1e-5


def test_classification_loss_uses_class_weights():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([1, 1])
    plain = get_task("classification").build_loss({"name": "cross_entropy"})(logits, labels)
    classification = get_task("classification")
    weighted = classification.build_loss({"name": None,
                                          "args": {"class_weights": [1.0, 2.0]}})(logits, labels)
    assert torch.isclose(plain, weighted)  # both samples in class 1: weights cancel in the mean
    logits, mixed = torch.tensor([[2.0, 0.0], [0.0, 0.5]]), torch.tensor([0, 1])
    assert not torch.isclose(
        classification.build_loss({"args": {"class_weights": [1.0, 5.0]}})(logits, mixed),
        classification.build_loss({})(logits, mixed))
