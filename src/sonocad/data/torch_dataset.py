"""A torch Dataset over `Sample`s: decoded pixels cached once, transforms seeded per item.

The batch sampler hands each item a seed derived from (run seed, epoch, position), so the
augmentation an image gets does not depend on the number of workers or on whether training
was interrupted and resumed. With `views` (`sonocad.data.views`), a seeded item may first be
cut to a window: a lesion-free window of a lesion image is then a normal item.

Items are dicts: "image", "index", and what the task adds (`sonocad.tasks.Task.item`: "mask",
"label" or, for detection, "target"). `collate` batches them for every task.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from sonocad.data.sample import Sample
from sonocad.data.views import ViewConfig, draw_view
from sonocad.errors import SonocadError
from sonocad.progress import progress

ItemKey = tuple[int, int]  # (sample index, augmentation seed)


class ItemTask(Protocol):
    """What the dataset asks of its task (`sonocad.tasks.Task`)."""

    reads_masks: bool

    def item(self, sample: Sample, mask: torch.Tensor, class_names: Sequence[str]
             ) -> dict[str, Any]: ...


class SampleDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], task: ItemTask, class_names: Sequence[str],
                 transform: Callable[..., Any], *, cache: bool = True,
                 views: ViewConfig | None = None) -> None:
        self.samples = list(samples)
        self.task = task
        self.class_names = list(class_names)
        self.transform = transform
        self.views = views
        self._cache: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        if cache:
            self._cache = [self._load(i) for i in progress(range(len(self.samples)), "loading",
                                                                   unit="images")]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | ItemKey) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        pixels, mask = self._cache[index] if self._cache is not None else self._load(index)
        sample = self.samples[index]
        if self.views is not None and seed is not None and mask is not None:
            view = draw_view(pixels, mask, self.views, np.random.default_rng(seed))
            pixels, mask = view.pixels, view.mask
            if view.tissue:
                sample = dataclasses.replace(sample, label="normal")
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            image, mask_tensor = self.transform(pixels, mask)
        return {"image": image, "index": index,
                **self.task.item(sample, mask_tensor, self.class_names)}

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        sample = self.samples[index]
        pixels = sample.load_image().pixels
        if not self.task.reads_masks:
            return pixels, None
        mask = sample.load_mask(pixels.shape[:2])
        # An image without an annotation file (a normal scan) has no lesion.
        return pixels, mask if mask is not None else np.zeros(pixels.shape[:2], dtype=bool)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`default_collate`, except that detection targets (any number of lesions per image) stay
    a list of dicts, as torchvision's detection models take them."""
    batch = default_collate([{k: v for k, v in item.items() if k != "target"} for item in items])
    if "target" in items[0]:
        batch["target"] = [item["target"] for item in items]
    return batch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator fixed by (run seed, epoch) alone, whatever the global RNG has done."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class EpochBatches(Sampler[list[ItemKey]]):
    """Global batches from an epoch order fixed by (seed, epoch); each DDP rank takes its slice.

    Rank r of W takes items [r*B/W, (r+1)*B/W) of every global batch of B, so W processes see
    exactly the batches one process would. `start` skips batches already trained on (resume).
    `draws` (one per item, default 1) is how often an item is drawn per epoch on average: the
    whole part every epoch, the fractional part as a seeded draw without replacement, so an
    epoch always holds `epoch_size(draws)` items (data-source and class weights).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                 world: int = 1, start: int = 0, draws: Sequence[float] | None = None) -> None:
        if batch_size % world:
            raise SonocadError(f"batch size {batch_size} does not divide over {world} processes")
        if draws is not None and len(draws) != n:
            raise SonocadError(f"{len(draws)} draw weights for {n} items")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world, self.start = rank, world, start
        self.draws = None if draws is None or all(d == 1 for d in draws) else list(draws)
        self.size = n if self.draws is None else self.epoch_size(self.draws)

    def __len__(self) -> int:
        return max(self.batches_per_epoch(self.size, self.batch_size) - self.start, 0)

    @staticmethod
    def epoch_size(draws: Sequence[float]) -> int:
        return math.floor(sum(draws) + 0.5)

    @staticmethod
    def batches_per_epoch(n: int, batch_size: int) -> int:
        # Drop the last partial batch (batch norm and equal DDP shards), unless that is all.
        return max(n // batch_size, 1) if n else 0

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        if self.draws is None:
            return torch.randperm(self.n, generator=generator)
        weights = torch.tensor(self.draws, dtype=torch.float64)
        counts = weights.floor().long()
        missing = self.size - int(counts.sum())
        if missing > 0:
            counts[torch.multinomial(weights - weights.floor(), missing, replacement=False,
                                     generator=generator)] += 1
        items = torch.repeat_interleave(torch.arange(self.n), counts)
        return items[torch.randperm(len(items), generator=generator)]

    def __iter__(self) -> Iterator[list[ItemKey]]:
        generator = epoch_generator(self.seed, self.epoch)
        order = self._order(generator)
        item_seeds = torch.randint(0, 2**31 - 1, (len(order),), generator=generator)
        per_rank = min(self.batch_size, len(order)) // self.world
        for b in range(self.start, self.batches_per_epoch(len(order), self.batch_size)):
            first = b * self.batch_size + self.rank * per_rank
            positions = range(first, first + per_rank)
            yield [(int(order[p]), int(item_seeds[p])) for p in positions]
