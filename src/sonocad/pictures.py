"""The two pictures of a prediction that `sonocad predict` writes and the web viewer shows.

- `overlay_picture`: the lesion outline (and the boxes a person drew, when it came from them); for
  each lesion its longest diameter and the longest diameter across it as caliper lines with their
  lengths (mm when the pixel spacing is known, px otherwise), the longest numbered "1:", "2:" ...
  where there is more than one lesion; and a caption with the final class, its probability, the
  decision's reason and the low-confidence flag. A detector's instances each get their box, labelled
  with number, class and score, and their own longest diameter.
- `heatmap_picture`: the lesion probability in a perceptual colour map (inferno), blended on
  the image with alpha growing with probability, and a colour bar.

Both keep the image's size. Text and line widths scale with the image, with a floor, so a 200 px
and a 1,000 px image are both legible; boxes go in the corner that covers the least lesion.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from sonocad.measure import Diameter, longest_diameter
from sonocad.visual import PREDICTION_COLOUR, colour_map_blend, colour_table, draw_outlines, to_rgb8

if TYPE_CHECKING:  # at run time not needed, and it would import torch
    from sonocad.predictions import Instance, Prediction

DIAMETER_COLOUR = (255, 214, 0)  # yellow: apart from the red outline and from grey tissue
GRAD_CAM_LABEL = "Grad-CAM relevance"  # a classifier's heatmap is not a lesion probability
HEAT_MAP = "inferno"  # perceptually uniform, and legible in grey print
_MAX_ALPHA = 0.6  # at probability 1 the tissue's texture still shows through
_VISIBLE = 0.25  # the probability from which the heat shows: a box should not cover it
_TEXT = (255, 255, 255)
_INSTANCE_COLOURS = {"malignant": (255, 96, 96), "benign": (96, 200, 255)}  # box outlines
_BOX = (0, 0, 0)
PROMPT_COLOUR = (0, 230, 118)  # green: a box a person drew, apart from the red outline
_HALO = (0, 0, 0)  # under the diameter line, so it stands out on bright tissue
_TICKS = (0.0, 0.5, 1.0)
# Where a caption may break when it is too wide, best first: between its parts, before the
# reason in brackets, between words.
_BREAKS = ((r" · ", " · "), (r" (?=\()", " "), (r" ", " "))

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in pixels


@dataclass(frozen=True)
class _Style:
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    line_height: int  # ascent + descent of the font
    pad: int  # inside a text box, and between a box and the image edge
    line: int  # width of drawn lines

    @classmethod
    def for_size(cls, width: int, height: int) -> _Style:
        # About 1/32 of the short side (16 px on a BUSI image), never under 12 px.
        size = max(12, round(min(width, height) / 32))
        font = ImageFont.load_default(size=size)
        ascent, descent = font.getmetrics()
        return cls(font, ascent + descent, max(2, size // 4),
                   max(1, round(max(width, height) / 300)))  # as `draw_outlines`


def caption(prediction: Prediction) -> str:
    """'malignant 0.91', or with a rule 'benign 0.38 (lesion outlined) · low confidence'; a
    detector's 'malignant 0.93 · 2 lesions' (its best instance) or 'no lesion found'."""
    if prediction.instances is not None:
        if not prediction.instances:
            return "no lesion found"
        best, count = prediction.instances[0], len(prediction.instances)
        return f"{best.label} {best.score:.2f}" + (f" · {count} lesions" if count > 1 else "")
    label = prediction.final_class
    text = f"{label} {prediction.class_probabilities[label]:.2f}"
    decision = prediction.decision
    if decision is not None and decision.reason:
        text += f" ({decision.reason})"
    if decision is not None and decision.low_confidence:
        text += " · low confidence"
    return text


def overlay_picture(pixels: np.ndarray, prediction: Prediction,
                    spacing_mm: tuple[float, float] | None) -> np.ndarray:
    """The image (uint8 RGB, its own size) with the lesion outline, the longest diameter and
    its length, and the class caption; a classifier's shows only the caption."""
    mask = prediction.mask
    canvas = (to_rgb8(pixels) if mask is None
              else draw_outlines(pixels, [(mask, PREDICTION_COLOUR)]))
    image = PILImage.fromarray(canvas)
    style = _Style.for_size(*image.size)
    draw = ImageDraw.Draw(image)
    instances = prediction.instances
    lines = (_wrap(caption(prediction), _fits(style, image.width))
             if prediction.class_probabilities or instances is not None else [])
    for x0, y0, x1, y1 in prediction.prompt_boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=PROMPT_COLOUR, width=style.line)
    taken: list[Box] = []
    if lines:  # placed first, so the diameter's label keeps off it; drawn last, over all
        taken.append(_corner(image.size, _text_size(style, lines), mask, style.pad,
                             ("top-left", "top-right", "bottom-left", "bottom-right")))
    labels = [(_draw_instance_box(draw, style, instance, label, image.size), [label])
              for instance, label in _instance_labels(instances or [])]
    taken += [box for box, _ in labels]  # the diameters' lengths keep off the labels too
    for diameter, prefix in _calipers(prediction, spacing_mm):
        taken.append(_draw_diameter(draw, style, diameter, image.size, taken, prefix))
    for box, text in labels:  # over the lines, legible
        _draw_text_box(draw, style, text, box)
    if lines:
        _draw_text_box(draw, style, lines, taken[0])
    return np.asarray(image)


def _calipers(prediction: Prediction, spacing_mm: tuple[float, float] | None
              ) -> list[tuple[Diameter, str]]:
    """(diameter, label prefix) to draw: each lesion's two diameters, or each detected
    instance's longest (numbered by its box's label)."""
    if prediction.instances is not None:
        found = (longest_diameter(instance.mask, spacing_mm) for instance in prediction.instances)
        return [(diameter, "") for diameter in found if diameter is not None]
    lesions = prediction.lesions(spacing_mm)
    numbered = len(lesions) > 1
    calipers = []
    for lesion in lesions:
        calipers.append((lesion.diameter, f"{lesion.number}: " if numbered else ""))
        if lesion.perpendicular is not None and lesion.perpendicular.length_px > 0:
            calipers.append((lesion.perpendicular, ""))
    return calipers


def _instance_labels(instances: Sequence[Instance]) -> list[tuple[Instance, str]]:
    return [(instance, f"{number} {instance.label} {instance.score:.2f}")
            for number, instance in enumerate(instances, start=1)]


def _draw_instance_box(draw: ImageDraw.ImageDraw, style: _Style, instance: Instance,
                       label: str, size: tuple[int, int]) -> Box:
    """Draw the instance's box; return where its label goes: just above the box, or inside
    it where there is no room above."""
    colour = _INSTANCE_COLOURS.get(instance.label, _TEXT)
    x0, y0, x1, y1 = (round(v) for v in instance.box)
    draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour,
                   width=style.line)
    width, height = _text_size(style, [label])
    left = min(max(x0, 0), max(size[0] - width, 0))
    top = y0 - height if y0 - height >= 0 else min(y0, max(size[1] - height, 0))
    return left, top, left + width, top + height


def heat_label(prediction: Prediction) -> str:
    """What a prediction's heatmap shows: a classifier's is Grad-CAM (no lesion map), a
    detector's the score of the instances under each pixel."""
    if prediction.lesion_probability is None:
        return GRAD_CAM_LABEL
    return "instance score" if prediction.instances is not None else "lesion probability"


def heatmap_picture(pixels: np.ndarray, probability: np.ndarray,
                    label: str = "lesion probability") -> np.ndarray:
    """The image (uint8 RGB, its own size) with `probability` ([0, 1], its size) blended on
    in `HEAT_MAP`, and a colour bar titled `label` with ticks 0, 0.5 and 1."""
    image = PILImage.fromarray(colour_map_blend(pixels, probability, HEAT_MAP, _MAX_ALPHA))
    style = _Style.for_size(*image.size)
    _draw_colour_bar(image, style, probability, label)
    return np.asarray(image)


# --- the diameter -------------------------------------------------------------------------

def diameter_label(diameter: Diameter) -> str:
    """'18.4 mm', or '212 px' where the spacing is unknown."""
    if math.isnan(diameter.length_mm):
        return f"{diameter.length_px:.0f} px"
    return f"{diameter.length_mm:.1f} mm"


def _draw_diameter(draw: ImageDraw.ImageDraw, style: _Style, diameter: Diameter,
                   size: tuple[int, int], taken: list[Box], prefix: str = "") -> Box:
    """A caliper: the line between the two ends with a tick across each, and `prefix` and the
    length in a box beyond one end, where it covers no lesion (all of it lies between the
    ticks) and no box in `taken`. Returns that box."""
    start, end = _xy(diameter.start), _xy(diameter.end)
    along = _unit(end[0] - start[0], end[1] - start[1])
    across = (-along[1], along[0])
    tick = max(3, style.line_height // 3)
    segments = [(start, end)] + [((x - across[0] * tick, y - across[1] * tick),
                                  (x + across[0] * tick, y + across[1] * tick))
                                 for x, y in (start, end)]
    for colour, width in ((_HALO, style.line + 2), (DIAMETER_COLOUR, style.line)):
        for a, b in segments:
            draw.line([a, b], fill=colour, width=width)
    lines = [prefix + diameter_label(diameter)]
    text_size = _text_size(style, lines)
    options = [_beyond(end, along, text_size, tick + style.pad, size),
               _beyond(start, (-along[0], -along[1]), text_size, tick + style.pad, size)]
    box = min(options, key=lambda option: (_overlaps(option[0], taken), option[1]))[0]
    _draw_text_box(draw, style, lines, box)
    return box


def _beyond(point: tuple[float, float], direction: tuple[float, float],
            text_size: tuple[int, int], gap: int, size: tuple[int, int]) -> tuple[Box, float]:
    """A box of `text_size` just past `point` in `direction`, moved inside the image, and how
    far it had to be moved."""
    width, height = text_size
    # How far the centre must go along `direction` for the whole box to clear `point`.
    reach = gap + abs(direction[0]) * width / 2 + abs(direction[1]) * height / 2
    left = point[0] + direction[0] * reach - width / 2
    top = point[1] + direction[1] * reach - height / 2
    inside_left = min(max(left, 0), max(size[0] - width, 0))
    inside_top = min(max(top, 0), max(size[1] - height, 0))
    box = (round(inside_left), round(inside_top), round(inside_left) + width,
           round(inside_top) + height)
    return box, math.hypot(inside_left - left, inside_top - top)


def _xy(row_col: tuple[int, int]) -> tuple[float, float]:
    return float(row_col[1]), float(row_col[0])


def _unit(dx: float, dy: float) -> tuple[float, float]:
    length = math.hypot(dx, dy)
    return (dx / length, dy / length) if length else (1.0, 0.0)  # one pixel: label to the right


def _overlaps(box: Box, others: Sequence[Box]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3]
               for o in others)


# --- the colour bar -----------------------------------------------------------------------

def _draw_colour_bar(image: PILImage.Image, style: _Style, probability: np.ndarray,
                     label: str) -> None:
    """Title, a gradient bar and tick labels under it, in a box in the corner with the least
    probability under it."""
    pad, line_height = style.pad, style.line_height
    bar_width = max(round(style.font.getlength(label)), 6 * line_height)
    bar_height = max(6, line_height * 2 // 3)
    size = (bar_width + 2 * pad, 2 * line_height + bar_height + 4 * pad)
    box = _corner(image.size, size, probability, pad,
                  ("bottom-right", "top-right", "bottom-left", "top-left"))
    draw = ImageDraw.Draw(image)
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=_BOX)
    left, top = box[0] + pad, box[1] + pad
    draw.text((left, top), label, font=style.font, fill=_TEXT, anchor="la")
    bar_top = top + line_height + pad
    image.paste(PILImage.fromarray(_gradient(bar_width, bar_height)), (left, bar_top))
    for value in _TICKS:
        x = left + round(value * (bar_width - 1))
        draw.line([(x, bar_top + bar_height), (x, bar_top + bar_height + pad)], fill=_TEXT,
                  width=style.line)
        anchor = {0.0: "la", 1.0: "ra"}.get(value, "ma")  # the end labels stay in the box
        draw.text((x, bar_top + bar_height + pad), f"{value:g}", font=style.font, fill=_TEXT,
                  anchor=anchor)


def _gradient(width: int, height: int) -> np.ndarray:
    table = colour_table(HEAT_MAP)
    row = table[np.linspace(0, 255, width).round().astype(np.intp)]
    return np.ascontiguousarray(np.broadcast_to(row, (height, width, 3)))


# --- text boxes ---------------------------------------------------------------------------

def _text_size(style: _Style, lines: Sequence[str]) -> tuple[int, int]:
    width = max(round(style.font.getlength(line)) for line in lines)
    return width + 2 * style.pad, len(lines) * style.line_height + 2 * style.pad


def _draw_text_box(draw: ImageDraw.ImageDraw, style: _Style, lines: Sequence[str],
                   box: Box) -> None:
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=_BOX)
    for number, line in enumerate(lines):
        draw.text((box[0] + style.pad, box[1] + style.pad + number * style.line_height), line,
                  font=style.font, fill=_TEXT, anchor="la")


def _fits(style: _Style, image_width: int) -> Callable[[str], bool]:
    room = image_width - 4 * style.pad  # the box's padding and its distance from the edges
    return lambda text: style.font.getlength(text) <= room


def _wrap(text: str, fits: Callable[[str], bool], level: int = 0) -> list[str]:
    """`text` as lines that fit, broken at the best `_BREAKS` that will do (a word too long
    for the image stays whole)."""
    if fits(text) or level == len(_BREAKS):
        return [text]
    pattern, glue = _BREAKS[level]
    lines: list[str] = []
    for part in re.split(pattern, text):
        if lines and fits(lines[-1] + glue + part):
            lines[-1] += glue + part
        else:
            lines += _wrap(part, fits, level + 1)
    return lines


def _corner(image_size: tuple[int, int], box_size: tuple[int, int],
            weight: np.ndarray | None, inset: int, order: Sequence[str]) -> Box:
    """The box of `box_size` in the corner, `inset` from the edges, that covers the fewest
    pixels of `weight` (lesion mask or probability) at `_VISIBLE` or more; ties go to the first
    in `order`."""
    width, height = image_size
    box_width, box_height = box_size
    left = {"left": inset, "right": max(width - inset - box_width, 0)}
    top = {"top": inset, "bottom": max(height - inset - box_height, 0)}
    boxes = []
    for corner in order:
        vertical, horizontal = corner.split("-")
        x, y = left[horizontal], top[vertical]
        boxes.append((x, y, x + box_width, y + box_height))
    if weight is None:
        return boxes[0]
    return min(boxes, key=lambda b: np.count_nonzero(weight[b[1]:b[3], b[0]:b[2]] >= _VISIBLE))
