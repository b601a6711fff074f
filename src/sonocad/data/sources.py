"""Data sources: the data sets a model trains or is scored on, each with its own frozen split.

A recipe names them under ``data.sources`` (paths relative to the directory sonocad runs in):

    data:
      sources:
        - {name: busi, path: ../shared/datasets/busi/Dataset_BUSI_with_GT,
           split: benchmarks/splits/busi.json}
        - {name: busbra, path: ../shared/datasets/busbra/BUSBRA,
           split: benchmarks/splits/busbra.json, weight: 0.7}

``weight`` is how many times, on average, each of the source's training images is drawn per
epoch (1: once; 0.5: half of them, a different half each epoch). The command line says the
same with ``--data DIR --split FILE`` given once per source (``--data`` overrides the recipe).

``data.replay`` lists sources in the same form that are trained on but never validated on:
fine-tuning on a hospital's images keeps a share of the original data in every epoch, so the
model does not forget it, while the model is chosen on the hospital's validation images alone.
They join whatever ``--data`` gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sonocad.data.adapters import open_dataset
from sonocad.data.sample import Sample
from sonocad.errors import SonocadError

DataArg = Sequence[str | Path] | str | Path | None  # one data set or split, several, or none


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    split: Path
    weight: float = 1.0
    validated: bool = True  # False: a replay source, trained on only

    def open(self, layout: str | None = None) -> list[Sample]:
        """The source's samples, each tagged with this source's name."""
        return [replace(s, source=self.name) for s in open_dataset(self.path, layout)]


def resolve_sources(recipe_sources: Sequence[Mapping[str, Any]] | None, data: DataArg = None,
                    split: DataArg = None, replay: Sequence[Mapping[str, Any]] | None = None
                    ) -> list[Source]:
    """The sources to use: `data` / `split` (one split per data set) when given, else the
    recipe's ``data.sources``; then the recipe's ``data.replay`` sources."""
    data, split = _as_list(data), _as_list(split)
    if data:
        if len(split) != len(data):
            raise SonocadError(f"give one --split per --data (got {len(data)} data sets and "
                               f"{len(split)} splits)")
        sources = [Source(_default_name(Path(d)), Path(d), Path(s)) for d, s in zip(data, split)]
    elif recipe_sources:
        sources = [_from_recipe(entry, i) for i, entry in enumerate(recipe_sources)]
    else:
        raise SonocadError("no training data: give --data DIR --split FILE, or name "
                           "data.sources in the recipe")
    sources += [replace(_from_recipe(entry, i, "data.replay"), validated=False)
                for i, entry in enumerate(replay or [])]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise SonocadError(f"data source names must differ (got {', '.join(names)}): give "
                           "different data sets, or name them in the recipe's data.sources")
    return sources


def _from_recipe(entry: Mapping[str, Any], index: int, key: str = "data.sources") -> Source:
    if not isinstance(entry, Mapping) or not {"path", "split"} <= set(entry):
        raise SonocadError(f"{key}[{index}] needs a path and a split")
    unknown = set(entry) - {"name", "path", "split", "weight"}
    if unknown:
        raise SonocadError(f"{key}[{index}]: unknown key(s) {', '.join(sorted(unknown))}")
    weight = _positive(entry.get("weight", 1.0), f"{key}[{index}].weight")
    path = Path(entry["path"])
    return Source(str(entry.get("name") or _default_name(path)), path, Path(entry["split"]),
                  weight)


def class_weights(value: Any) -> dict[str, float]:
    """The recipe's ``data.class_weights`` (class -> draws per epoch of its images), checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SonocadError("data.class_weights must map class names to numbers, e.g. "
                           "{normal: 1.5}")
    return {str(k): _positive(v, f"data.class_weights.{k}") for k, v in value.items()}


def _positive(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise SonocadError(f"{where} must be a positive number, got {value!r}")
    return number


def _default_name(path: Path) -> str:
    """The data set's own name where its layout says (busi, busbra), else its folder's."""
    try:
        first = open_dataset(path)[0]
    except SonocadError:
        first = None
    return (first.source if first and first.source else path.stem).lower()


def _as_list(value: DataArg) -> list[str | Path]:
    if value is None:
        return []
    return [value] if isinstance(value, str | Path) else list(value)
