"""A run's model card: the author's MODEL_CARD.md, the bundled model's card, or one generated
from the checkpoint, which describes itself (model, recipe, data, split, selection)."""

from __future__ import annotations

from importlib.resources import as_file, files
from typing import Any

import torch

from sonocad.checkpoint import BUNDLED_MODEL, Checkpoint, load_checkpoint
from sonocad.meta import CheckpointMeta
from sonocad.report.html import Html, join, table, tag
from sonocad.report.markdown import render_markdown
from sonocad.report.sources import Run

CARD_NAME = "MODEL_CARD.md"


def model_card(run: Run) -> tuple[Html, str]:
    """(the card as HTML, where it came from)."""
    own = run.folder / CARD_NAME if run.folder is not None else None
    if own is not None and own.is_file():
        return render_markdown(own.read_text(encoding="utf-8")), str(own)
    bundled = files("sonocad").joinpath(*BUNDLED_MODEL[:-1], CARD_NAME)
    if bundled.is_file() and (run.bundled or run.checkpoint is not None
                              and _is_bundled_model(run.checkpoint)):
        return (render_markdown(bundled.read_text(encoding="utf-8")),
                "the bundled default model's card")
    if run.checkpoint is None:
        return (tag("p", "No card: the checkpoint is not where the evaluation's "
                         "provenance.json says."), f"none ({run.model_file} is not there)")
    hint = (f" (write a {CARD_NAME} into the run folder to replace it)" if run.folder else
            "; the other folds' models differ from it in their training and validation folds"
            if run.pooled else "")
    return generated_card(run), f"generated from {run.checkpoint.path or run.model_file}{hint}"


def generated_card(run: Run) -> Html:
    """Model, recipe, data, split and selection, as far as the checkpoint records them."""
    meta = run.info
    recipe, model = meta.recipe or {}, meta.model
    rows = [
        ("Model", model.name + (f" ({_pairs(model.args)})" if model.args else "")),
        ("Description", recipe.get("description") or "not recorded"),
        ("Task", meta.task),
        ("Classes", ", ".join(meta.class_names) or "none"),
        ("Input", describe_transform(meta.transform)),
        *(_recipe_rows(recipe) if recipe else [("Recipe", "not recorded")]),
        *(_data_rows(meta.data) if meta.data else [("Training data", "not recorded")]),
        *([("Adapted from", _origin(meta.init))] if meta.init else []),
        ("Selection", selection(meta)),
        ("Evaluation", f"{run.evaluation.get('split', 'an unrecorded subset')}, "
                       f"{run.evaluation.get('n_images', '?')} images (results above)"),
        ("Version", f"sonocad {meta.sonocad_version or '?'}"),
    ]
    return join([table(None, rows),
                 tag("p", "Intended use: research on breast ultrasound. Not a medical device; "
                          "not for diagnosis. Its numbers hold for the test data above and may "
                          "not carry over to other scanners, sites or populations.",
                     class_="small")])


def _origin(init: dict[str, Any]) -> str:
    """What a fine-tuned model started from (`sonocad train --init`)."""
    start = ("the bundled default model" if init.get("from") == "default"
             else str(init.get("from")))
    sources = "; ".join(f"{s.get('name')} ({s.get('n_train', '?')} training images)"
                        for s in init.get("sources", []))
    return (f"{start} (sonocad {init.get('sonocad_version') or '?'}, epoch "
            f"{init.get('epoch', '?')}), itself trained on " + (sources or "unrecorded data"))


def _recipe_rows(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    train, optimizer = recipe.get("train", {}), recipe.get("optimizer", {})
    steps = f", at most {train['max_steps']} steps" if train.get("max_steps") else ""
    return [
        ("Pretrained weights", recipe.get("model", {}).get("pretrained") or "none"),
        ("Loss", _loss(recipe.get("loss", {}))),
        ("Optimiser", f"{optimizer.get('name', '?')}, learning rate {optimizer.get('lr', '?')}, "
                      f"weight decay {optimizer.get('weight_decay', 0)}"),
        ("Schedule", f"{recipe.get('scheduler', {}).get('name', 'none')}; batch size "
                     f"{train.get('batch_size', '?')}, epochs {train.get('epochs', '?')}{steps}"),
    ]


def data_sets(data: dict[str, Any]) -> str | None:
    """The training data set's path, or its sources' names ("busi, busbra"); None where the
    checkpoint records neither."""
    names = [str(source.get("name")) for source in data.get("sources") or []]
    return data.get("path") or ", ".join(names) or None


def _data_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("Training data", f"{data.get('n_train', '?')} images (subsets "
                          f"{', '.join(data.get('train_subsets') or ['?'])}) of "
                          f"{data_sets(data) or 'an unrecorded data set'}"),
        ("Split", f"{data.get('split', 'not recorded')} (validation subset "
                  f"{data.get('val_subset', '?')}, {data.get('n_val', '?')} images)"),
    ]


def describe_transform(transform: dict[str, Any]) -> str:
    """'256 px, keep aspect, grey, imagenet normalisation; augment: hflip, rotation'."""
    if not transform:
        return "not recorded"
    parts = [f"{transform.get('input_size', '?')} px",
             "aspect kept (letterboxed)" if transform.get("keep_aspect") else "stretched",
             "grey" if transform.get("grayscale") else "colour",
             f"{transform.get('normalize', 'no')} normalisation"]
    if transform.get("despeckle"):
        parts.append(f"despeckle {transform['despeckle']}")
    if transform.get("clahe"):
        parts.append("CLAHE")
    augment = ", ".join(transform.get("augment") or {}) or "none"
    return f"{', '.join(parts)}; augmentation: {augment}"


def selection(meta: CheckpointMeta) -> str:
    """How best.pt was chosen: the metric, its value and when."""
    metric = meta.select_metric
    if not metric:
        return "not recorded"
    value = meta.metrics.get(metric)
    mode = (meta.recipe or {}).get("train", {}).get("select_mode", "max")
    at = f"{value:.3f} " if isinstance(value, float) else ""
    epoch, step = ("?" if n is None else n for n in (meta.epoch, meta.step))
    return (f"best validation {metric} ({mode}imum): {at}at epoch {epoch}, step {step}; the "
            "test subset was not used")


def _loss(loss: dict[str, Any]) -> str:
    text = loss.get("name") or "default for the task"
    if loss.get("classification"):
        text += f" + cross-entropy (weight {loss['classification'].get('weight', 1)})"
    return text


def _pairs(args: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in args.items())


def _is_bundled_model(checkpoint: Checkpoint) -> bool:
    """True when the run's weights are the bundled default model's, tensor for tensor (in the
    bundle's precision, should it have been stored smaller)."""
    resource = files("sonocad").joinpath(*BUNDLED_MODEL)
    if not resource.is_file():
        return False
    with as_file(resource) as path:
        bundled = load_checkpoint(path)
    if bundled.info.model.name != checkpoint.info.model.name or \
            bundled.state_dict.keys() != checkpoint.state_dict.keys():
        return False
    return all(torch.equal(tensor, checkpoint.state_dict[key].to(tensor.dtype))
               for key, tensor in bundled.state_dict.items())
