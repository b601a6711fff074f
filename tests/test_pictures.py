"""The overlay and heatmap pictures (`sonocad.pictures`) and the diameter they draw."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from sonocad.data.phantom import make_phantom
from sonocad.measure import (
    Diameter,
    lesion_measurements,
    longest_diameter,
    perpendicular_diameter,
)
from sonocad.pictures import DIAMETER_COLOUR, HEAT_MAP, caption, heatmap_picture, overlay_picture
from sonocad.predictions import Decision, Prediction
from sonocad.visual import PREDICTION_COLOUR, colour_table, to_rgb8

GREY = 128
CLASSES = {"normal": 0.1, "benign": 0.7, "malignant": 0.2}


@pytest.fixture
def drawn_text(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[float, float], str]]:
    """Every (position, text) the pictures write, in order."""
    texts: list[tuple[tuple[float, float], str]] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        texts.append((tuple(xy), text))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return texts


def _ellipse(shape: tuple[int, int], centre: tuple[int, int], semi_rows: int,
             semi_cols: int) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return ((rows - centre[0]) / semi_rows) ** 2 + ((cols - centre[1]) / semi_cols) ** 2 <= 1


def _lesion(mask: np.ndarray, classes: dict[str, float] | None = None) -> Prediction:
    return Prediction(mask.astype(np.float32) * 0.9, classes)


def _grey(height: int, width: int) -> np.ndarray:
    return np.full((height, width), GREY, np.uint8)


def _colour(picture: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (picture == colour).all(axis=2)


def _box(where: np.ndarray) -> tuple[int, int, int, int]:
    """top, left, bottom, right (exclusive) of the True pixels."""
    rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
    return rows[0], cols[0], rows[-1] + 1, cols[-1] + 1


def _assert_drawn_along(picture: np.ndarray, segments: list[Diameter], reach: float) -> None:
    """The diameter colour lies on each segment start-end, and only near one of them."""
    near = np.zeros(len(np.argwhere(_colour(picture, DIAMETER_COLOUR))), bool)
    for segment in segments:
        start_, end_ = np.asarray(segment.start, float), np.asarray(segment.end, float)
        length = np.linalg.norm(end_ - start_)
        along = (end_ - start_) / length
        for t in np.linspace(0, 1, 25):
            row, col = np.round(start_ + t * (end_ - start_)).astype(int)
            assert tuple(picture[row, col]) == DIAMETER_COLOUR
        points = np.argwhere(_colour(picture, DIAMETER_COLOUR)) - start_
        projection = points @ along
        distance = np.abs(points @ np.array([-along[1], along[0]]))
        near |= ((projection >= -reach) & (projection <= length + reach) & (distance <= reach))
    assert near.all()


# --- the measurement ----------------------------------------------------------------------

def _all_pixels_diameter(mask: np.ndarray, spacing: tuple[float, float]) -> float:
    """The search over every lesion pixel that `lesion_measurements` used before."""
    points = np.argwhere(mask).astype(np.float64) * np.asarray(spacing)
    if len(points) == 0:
        return math.nan
    if len(points) > 3:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:
            pass
    return float(pdist(points).max()) if len(points) > 1 else 0.0


def _random_mask(rng: np.random.Generator, kind: int) -> np.ndarray:
    height, width = (int(v) for v in rng.integers(1, 48, 2))
    if kind == 0:  # scattered pixels, any density
        return rng.random((height, width)) < rng.uniform(0, 0.3)
    if kind == 1:  # blobs
        seeds = rng.random((height, width)) < 0.02
        return ndimage.binary_dilation(seeds, iterations=int(rng.integers(1, 5)))
    mask = np.zeros((height, width), bool)  # a line, any slope: collinear pixels
    row, col = rng.integers(0, height), rng.integers(0, width)
    step_row, step_col = rng.integers(-2, 3, 2)
    for t in range(int(rng.integers(1, 40))):
        if 0 <= row + t * step_row < height and 0 <= col + t * step_col < width:
            mask[row + t * step_row, col + t * step_col] = True
    return mask


def test_measurements_are_those_of_the_search_over_every_pixel() -> None:
    rng = np.random.default_rng(0)
    for number in range(600):
        mask = _random_mask(rng, number % 3)
        for spacing in (None, (0.1, 0.1), (0.07, 0.21), (0.3, 0.011)):
            sizes = lesion_measurements(mask, spacing)
            expected_px = _all_pixels_diameter(mask, (1.0, 1.0))
            assert sizes["diameter_px"] == expected_px or math.isnan(expected_px)
            assert math.isnan(sizes["diameter_px"]) == math.isnan(expected_px)
            if spacing is not None:
                expected_mm = _all_pixels_diameter(mask, spacing)
                assert sizes["diameter_mm"] == expected_mm or math.isnan(expected_mm)
                assert sizes["area_mm2"] == mask.sum() * spacing[0] * spacing[1]
            assert sizes["area_px"] == mask.sum()
            diameter = longest_diameter(mask, spacing)
            if diameter is not None:  # the ends are lesion pixels the length apart
                assert mask[diameter.start] and mask[diameter.end]
                assert diameter.length_px == pytest.approx(math.dist(diameter.start,
                                                                     diameter.end))


def test_whole_image_lesion_is_measured_corner_to_corner() -> None:
    diameter = longest_diameter(np.ones((300, 400), bool), (0.1, 0.2))
    assert {diameter.start, diameter.end} in ({(0, 0), (299, 399)}, {(0, 399), (299, 0)})
    assert diameter.length_mm == pytest.approx(math.hypot(29.9, 79.8))
    assert longest_diameter(np.zeros((5, 5), bool)) is None


# --- the overlay --------------------------------------------------------------------------

def test_diameter_drawn_on_an_ellipse_phantom_is_the_measured_one(drawn_text) -> None:
    image = make_phantom("normal", size=(200, 260), seed=0).image
    mask = _ellipse(image.shape, (100, 130), semi_rows=25, semi_cols=60)  # 120 px across
    picture = overlay_picture(image, _lesion(mask), None)

    diameter = longest_diameter(mask)
    assert {diameter.start, diameter.end} == {(100, 70), (100, 190)}
    assert diameter.length_px == lesion_measurements(mask)["diameter_px"] == 120
    across = perpendicular_diameter(mask, diameter)
    assert {across.start, across.end} == {(75, 130), (125, 130)} and across.length_px == 50
    _assert_drawn_along(picture, [diameter, across], reach=8)
    assert [text for _, text in drawn_text] == ["120 px", "50 px"]
    (left, top), _ = drawn_text[0]
    assert left > 190 or left < 70  # beyond one end: off the lesion
    assert _colour(picture, PREDICTION_COLOUR).sum() > 200  # the outline
    assert picture.shape == (200, 260, 3) and picture.dtype == np.uint8

    drawn_text.clear()
    overlay_picture(image, _lesion(mask), (0.1, 0.1))
    assert [text for _, text in drawn_text] == ["12.0 mm", "5.0 mm"]


def test_diameter_in_mm_is_the_longest_in_mm_where_rows_and_columns_differ(drawn_text) -> None:
    image = make_phantom("normal", size=(200, 260), seed=0).image
    mask = _ellipse(image.shape, (100, 130), semi_rows=40, semi_cols=60)
    # 80 rows of 0.2 mm (16 mm) beat 120 columns of 0.1 mm (12 mm).
    picture = overlay_picture(image, _lesion(mask), (0.2, 0.1))

    diameter = longest_diameter(mask, (0.2, 0.1))
    assert {diameter.start, diameter.end} == {(60, 130), (140, 130)}
    assert diameter.length_mm == pytest.approx(16.0) and diameter.length_px == 80
    assert lesion_measurements(mask, (0.2, 0.1))["diameter_mm"] == pytest.approx(16.0)
    across = perpendicular_diameter(mask, diameter, (0.2, 0.1))
    assert {across.start, across.end} == {(100, 70), (100, 190)}
    assert across.length_mm == pytest.approx(12.0)
    _assert_drawn_along(picture, [diameter, across], reach=8)
    assert [text for _, text in drawn_text] == ["16.0 mm", "12.0 mm"]


def test_caption_says_class_probability_reason_and_flag(drawn_text) -> None:
    decision = Decision(final_class="benign", reason="lesion outlined", uncertainty=0.7,
                        low_confidence=True)
    prediction = Prediction(None, {"normal": 0.5, "benign": 0.38, "malignant": 0.12}, decision)
    assert caption(prediction) == "benign 0.38 (lesion outlined) · low confidence"
    overlay_picture(_grey(600, 800), prediction, None)
    assert [text for _, text in drawn_text] == [caption(prediction)]

    drawn_text.clear()  # too wide for 200 px: broken between its parts, nothing lost
    picture = overlay_picture(_grey(200, 200), prediction, None)
    assert " ".join(text for _, text in drawn_text) == caption(prediction).replace(" · ", " ")
    assert len(drawn_text) > 1
    top, left, bottom, right = _box(_colour(picture, (0, 0, 0)))
    assert left > 0 and right < 200  # the box fits


def test_classifier_overlay_is_the_image_with_only_its_caption(drawn_text) -> None:
    image = make_phantom("benign", size=(200, 260), seed=1).image
    picture = overlay_picture(image, Prediction(None, CLASSES), None)
    assert [text for _, text in drawn_text] == ["benign 0.70"]
    assert not _colour(picture, PREDICTION_COLOUR).any()
    assert not _colour(picture, DIAMETER_COLOUR).any()
    top, left, bottom, right = _box((picture != to_rgb8(image)).any(axis=2))
    assert top < 5 and left < 5 and bottom < 50 and right < 130  # a box top left, no more


@pytest.mark.parametrize(("side", "low", "high"), [(200, 0.08, 0.2), (1000, 0.03, 0.08)])
def test_caption_box_is_legible_and_in_proportion(side: int, low: float, high: float) -> None:
    picture = overlay_picture(_grey(side, side), Prediction(None, CLASSES), None)
    box = _colour(picture, (0, 0, 0))
    top, left, bottom, right = _box(box)
    assert bottom - top >= 18  # 12 px text at least, and its padding
    assert low <= (bottom - top) / side <= high
    inside = picture[top:bottom, left:right]
    assert (inside.min(axis=2) > 200).sum() > 0.05 * inside.shape[0] * inside.shape[1]  # text


@pytest.mark.parametrize("side", [200, 1000])
def test_lines_grow_with_the_image(side: int) -> None:
    mask = _ellipse((side, side), (side // 2, side // 2), side // 8, side // 4)
    picture = overlay_picture(_grey(side, side), _lesion(mask), None)
    width = max(1, round(side / 300))
    # Down a column off the lesion's width caliper (the middle) to the line: the outline's top
    top = picture[: side // 2, side // 2 + side // 6]
    assert _colour(top[:, None], PREDICTION_COLOUR).sum() == width
    across = picture[:, side // 2 - side // 8]  # crosses the diameter line
    assert _colour(across[:, None], DIAMETER_COLOUR).sum() == width


def test_caption_keeps_off_the_lesion(drawn_text) -> None:
    mask = _ellipse((300, 400), (60, 80), 45, 70)  # top left, where a caption goes first
    picture = overlay_picture(_grey(300, 400), _lesion(mask, CLASSES), None)
    (left, top), text = drawn_text[-1]  # the caption, written last
    assert text == "benign 0.70" and left > 200 and top < 10  # top right instead
    black = _colour(picture, (0, 0, 0))
    assert black[top, left - 1] and not mask[: top + 20, left - 5:].any()


def test_sixteen_bit_and_rgb_images() -> None:
    phantom = make_phantom("benign", size=(120, 160), seed=2)
    sixteen = phantom.image.astype(np.uint16) * 257 + 1000
    rgb = np.stack([phantom.image, phantom.image // 2, 255 - phantom.image], axis=2)
    for pixels in (sixteen, rgb):
        before = pixels.copy()
        prediction = _lesion(phantom.mask, CLASSES)
        for picture in (overlay_picture(pixels, prediction, (0.1, 0.1)),
                        heatmap_picture(pixels, prediction.lesion_probability)):
            assert picture.shape == (120, 160, 3) and picture.dtype == np.uint8
            same = (picture == to_rgb8(pixels)).all(axis=2)
            assert same.mean() > 0.5  # the image, drawn on
        assert np.array_equal(pixels, before)


# --- the heatmap --------------------------------------------------------------------------

def test_heatmap_blends_with_alpha_growing_with_probability() -> None:
    probability = np.zeros((200, 260), np.float32)
    probability[50:80, 20:60] = 1.0
    probability[50:80, 80:120] = 0.3
    picture = heatmap_picture(_grey(200, 260), probability).astype(int)
    table = colour_table(HEAT_MAP).astype(int)
    assert (picture[100:150, 20:120] == GREY).all()  # no probability: the tissue as it is
    full, low = picture[60, 30], picture[60, 100]
    assert np.abs(full - (0.4 * GREY + 0.6 * table[255])).max() <= 1
    assert np.abs(low - (0.82 * GREY + 0.18 * table[round(0.3 * 255)])).max() <= 1


def test_heatmap_has_a_colour_bar_with_ticks_and_label(drawn_text) -> None:
    for side in (200, 1000):
        drawn_text.clear()
        picture = heatmap_picture(_grey(side, side), np.zeros((side, side), np.float32))
        changed = (picture != GREY).any(axis=2)
        top, left, bottom, right = _box(changed)
        assert bottom > 0.9 * side and right > 0.9 * side  # bottom right, where nothing is
        assert 0.05 <= (bottom - top) / side <= 0.3 and (right - left) / side <= 0.6
        bar = picture[top:bottom, left:right].reshape(-1, 3)
        table = colour_table(HEAT_MAP)
        for level in (0, 255):  # the colour map's ends
            assert (bar == table[level]).all(axis=1).any()
        assert [text for _, text in drawn_text] == ["lesion probability", "0", "0.5", "1"]


def test_colour_bar_keeps_off_the_lesion() -> None:
    probability = np.zeros((200, 260), np.float32)
    probability[120:, 150:] = 0.9  # the bottom right, where the bar goes first
    picture = heatmap_picture(_grey(200, 260), probability)
    box = (picture == 0).all(axis=2)  # the bar's black box
    top, left, bottom, right = _box(box)
    assert bottom < 100 and left > 130  # moved to the top right
