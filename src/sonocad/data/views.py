"""Views: a random window of a training image, so that "normal" is learned from every scanner.

Only one data set (BUSI, one scanner) has normal images; every lesion image, from any scanner,
is mostly normal tissue. A *tissue view* is a window of a lesion image that keeps clear of the
lesion (its bounding box grown by `margin` of the image side): it is trained on as a normal
image with an empty mask. So that a window's zoom and shape carry no class, lesion images also
give *lesion views* (a window of the same size distribution that holds the whole lesion) and
normal images give windows anywhere, all drawn alike: each side a share of the image's from
`scale`, independently (so the aspect varies too).

A view is drawn for a share `p` of the training items, with the item's own seed, so training
stays reproducible and resumable; validation and evaluation never see views. Where no window of
the drawn size keeps clear of the lesion (or holds it), the item stays whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SIDE = 32  # pixels: a smaller window holds too little tissue to call


@dataclass(frozen=True)
class ViewConfig:
    p: float  # share of training items cut to a view
    tissue: float = 0.5  # share of a lesion image's views that keep clear of the lesion
    scale: tuple[float, float] = (0.35, 0.75)  # a window side as a share of the image's
    margin: float = 0.05  # kept clear around the lesion's box, as a share of the image side

    def __post_init__(self) -> None:
        low, high = self.scale
        if not (0 <= self.p <= 1 and 0 <= self.tissue <= 1 and 0 < low <= high <= 1
                and 0 <= self.margin < 0.5):
            raise ValueError("need 0 <= p, tissue <= 1, 0 < scale low <= high <= 1 and "
                             f"0 <= margin < 0.5; got {self}")


@dataclass(frozen=True)
class View:
    pixels: np.ndarray
    mask: np.ndarray
    tissue: bool  # a lesion image's lesion-free window: its label is "normal"


def draw_view(pixels: np.ndarray, mask: np.ndarray, config: ViewConfig,
              rng: np.random.Generator) -> View:
    """The item as it is, or a view of it (see the module's docstring)."""
    whole = View(pixels, mask, tissue=False)
    if rng.random() >= config.p:
        return whole
    height, width = mask.shape
    size = tuple(max(MIN_SIDE, round(side * rng.uniform(*config.scale)))
                 for side in (height, width))
    if size[0] >= height or size[1] >= width:
        return whole
    if not mask.any():
        corner = (rng.integers(0, height - size[0] + 1), rng.integers(0, width - size[1] + 1))
        return _cut(pixels, mask, corner, size, tissue=False)
    box = _box(mask)
    if rng.random() < config.tissue:
        corner = _clear_of(box, (height, width), size, config.margin, rng)
        if corner is not None:
            return _cut(pixels, mask, corner, size, tissue=True)
    corner = _holding(box, (height, width), size, rng)
    return whole if corner is None else _cut(pixels, mask, corner, size, tissue=False)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of every lesion pixel, bottom and right exclusive."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1


def _clear_of(box: tuple[int, int, int, int], shape: tuple[int, int], size: tuple[int, int],
              margin: float, rng: np.random.Generator) -> tuple[int, int] | None:
    """A window corner whose window lies wholly above, below, left or right of the grown box
    (one of the sides with room, drawn evenly), or None."""
    (height, width), (h, w) = shape, size
    top, left, bottom, right = box
    grow_y, grow_x = round(margin * height), round(margin * width)
    top, bottom = max(top - grow_y, 0), min(bottom + grow_y, height)
    left, right = max(left - grow_x, 0), min(right + grow_x, width)
    # Per side: the range of corner rows and of corner columns that keeps the window clear.
    sides = [((0, top - h), (0, width - w)), ((bottom, height - h), (0, width - w)),
             ((0, height - h), (0, left - w)), ((0, height - h), (right, width - w))]
    open_sides = [side for side in sides if side[0][0] <= side[0][1] and side[1][0] <= side[1][1]]
    if not open_sides:
        return None
    (y0, y1), (x0, x1) = open_sides[rng.integers(len(open_sides))]
    return int(rng.integers(y0, y1 + 1)), int(rng.integers(x0, x1 + 1))


def _holding(box: tuple[int, int, int, int], shape: tuple[int, int], size: tuple[int, int],
             rng: np.random.Generator) -> tuple[int, int] | None:
    """A window corner whose window holds the whole box, or None when the box is larger."""
    corner = []
    for low_edge, high_edge, side, extent in ((box[0], box[2], shape[0], size[0]),
                                              (box[1], box[3], shape[1], size[1])):
        first, last = max(high_edge - extent, 0), min(low_edge, side - extent)
        if first > last:
            return None
        corner.append(int(rng.integers(first, last + 1)))
    return corner[0], corner[1]


def _cut(pixels: np.ndarray, mask: np.ndarray, corner: tuple[int, int], size: tuple[int, int],
         tissue: bool) -> View:
    (y, x), (h, w) = corner, size
    return View(pixels[y:y + h, x:x + w], mask[y:y + h, x:x + w], tissue)


def tissue_view(pixels: np.ndarray, mask: np.ndarray, config: ViewConfig,
                rng: np.random.Generator, tries: int = 20) -> View | None:
    """A lesion-free window of a lesion image drawn as training draws them (sizes from
    `config.scale`, `config.margin` clear of the lesion), trying up to `tries` sizes; None when
    none fits. Validation and the proxy test of "normal" on every scanner use it."""
    always = ViewConfig(p=1.0, tissue=1.0, scale=config.scale, margin=config.margin)
    for _ in range(tries):
        view = draw_view(pixels, mask, always, rng)
        if view.tissue:
            return view
    return None
