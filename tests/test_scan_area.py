"""The scan area of a screen capture: found among text, a body marker, a colour bar and caliper
labels, analysed on its own by `predict`, and never found in a scan that fills its image."""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from sonocad.cli import main
from sonocad.data.phantom import make_phantom
from sonocad.io.images import iter_frames, read_image
from sonocad.io.scan_area import estimate_scan_area
from sonocad.predictions import read_predictions

SCREEN = (600, 800)  # height, width
AT = (150, 100)  # where the scan's top-left corner is pasted (x, y)
SCAN = (320, 420)  # height, width: 28 % of the screen


def _capture(scan: np.ndarray, screen: tuple[int, int] = SCREEN,
             at: tuple[int, int] = AT) -> np.ndarray:
    """`scan` (grey) on a black screen, as a scanner shows it: the patient's name and settings
    above, depth numbers and ticks down its left side, a body marker, a grey bar and a colour
    bar to the right, and caliper labels below it and a caliper mark on it."""
    height, width = screen
    (x, y), rows = at, scan.shape[0]
    screen_image = PILImage.new("RGB", (width, height))
    screen_image.paste(PILImage.fromarray(scan).convert("RGB"), at)
    draw = ImageDraw.Draw(screen_image)
    large, small = ImageFont.load_default(size=18), ImageFont.load_default(size=13)
    draw.text((10, 8), "DOE^JANE   ID 0012345   2026-12-06 10:42", fill="white", font=large)
    draw.text((10, 34), "L12-5  MI 0.8  TIS 0.4  Gn 52  DR 60  FR 27", fill="white", font=small)
    for depth in range(6):  # cm, down the scan's left edge
        tick = y + depth * (rows - 1) // 5
        draw.line([(x - 8, tick), (x - 2, tick)], fill="white")
        draw.text((x - 26, tick - 7), str(depth), fill="white", font=small)
    draw.ellipse([20, height - 90, 80, height - 30], outline="white", width=2)  # body marker
    draw.line([(35, height - 60), (65, height - 45)], fill="white", width=3)  # probe position
    for step in range(200):
        hue = PILImage.new("HSV", (1, 1), (step * 255 // 200, 255, 255)).convert("RGB")
        draw.line([(width - 40, 100 + step), (width - 25, 100 + step)], fill=hue.getpixel((0, 0)))
        draw.line([(width - 70, 100 + step), (width - 60, 100 + step)],
                  fill=(step * 255 // 200,) * 3)
    draw.text((x, y + rows + 10), "D1  1.23 cm   D2  0.87 cm", fill=(255, 255, 0), font=large)
    draw.text((x + 30, y + rows + 34), "Area 0.84 cm2", fill="white", font=small)
    draw.text((x + 20, y + 20), "+", fill=(255, 255, 0), font=large)
    return np.array(screen_image)


def _pasted(scan: np.ndarray, at: tuple[int, int] = AT) -> tuple[int, int, int, int]:
    return at[0], at[1], at[0] + scan.shape[1], at[1] + scan.shape[0]


def _close(box: tuple[int, int, int, int], expected: tuple[int, int, int, int],
           pixels: int) -> bool:
    return all(abs(a - b) <= pixels for a, b in zip(box, expected))


@pytest.mark.parametrize("label", ["normal", "benign", "malignant"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_scan_area_of_a_phantom_capture_is_where_the_scan_was_pasted(label, seed):
    scan = make_phantom(label, size=SCAN, seed=seed).image
    area = estimate_scan_area(_capture(scan))
    assert area is not None and area.estimated and area.spacing_mm is None
    assert _close(area.box, _pasted(scan), 1)


def test_the_scan_area_of_a_real_busi_capture_is_where_the_scan_was_pasted(busi_root):
    scan = read_image(busi_root / "benign" / "benign (4).png").pixels  # 471 x 562, grey
    area = estimate_scan_area(_capture(scan, screen=(700, 900), at=(140, 90)))
    assert area is not None and _close(area.box, _pasted(scan, (140, 90)), 1)


def test_a_scan_in_a_tinted_grey_map_is_found():
    """A scanner's sepia map colours the scan, but less than half saturated: still grey."""
    scan = make_phantom("benign", size=SCAN, seed=0).image
    x0, y0, x1, y1 = _pasted(scan)
    capture = _capture(scan)
    capture[y0:y1, x0:x1] = (capture[y0:y1, x0:x1] * np.array([1.0, 0.85, 0.65])).astype(np.uint8)
    area = estimate_scan_area(capture)
    assert area is not None and _close(area.box, (x0, y0, x1, y1), 1)


def test_a_jpeg_capture_is_found_to_within_a_jpeg_block():
    """JPEG's ringing beside the scan's bright edges is texture too: the box may take in up to
    a block (8 px) of the black screen beside it, never less of the scan."""
    scan = make_phantom("benign", size=SCAN, seed=1).image
    encoded = io.BytesIO()
    PILImage.fromarray(_capture(scan)).save(encoded, "JPEG", quality=75)
    area = estimate_scan_area(np.array(PILImage.open(encoded)))
    assert area is not None and _close(area.box, _pasted(scan), 8)
    x0, y0, x1, y1 = area.box
    px0, py0, px1, py1 = _pasted(scan)
    assert x0 <= px0 + 1 and y0 <= py0 + 1 and x1 >= px1 - 1 and y1 >= py1 - 1


def test_a_dark_lesion_at_the_scan_edge_is_not_cut_off():
    """Flat black (no speckle) reads as the screen's background; the area is the box around
    the scan's texture, so a notch at its edge does not move the box."""
    scan = make_phantom("normal", size=SCAN, seed=0).image.copy()
    rows, cols = np.ogrid[:SCAN[0], :SCAN[1]]
    at_left = ((rows - 160) / 45) ** 2 + (cols / 70) ** 2 <= 1
    at_bottom = ((rows - SCAN[0]) / 50) ** 2 + ((cols - 250) / 60) ** 2 <= 1
    scan[at_left | at_bottom] = 0
    area = estimate_scan_area(_capture(scan))
    assert area is not None and _close(area.box, _pasted(scan), 1)


def test_a_scan_that_fills_its_image_gets_no_region(tmp_path):
    phantom = make_phantom("benign", size=SCAN, seed=0, calipers=True, text=True).image
    assert estimate_scan_area(phantom) is None
    # nor a scan on a screen cut close, with text above it but the scan touching three sides
    cut = _capture(phantom)[40:AT[1] + SCAN[0], AT[0]:AT[0] + SCAN[1]]
    assert estimate_scan_area(cut) is None
    path = tmp_path / "scan.png"
    PILImage.fromarray(phantom).save(path)
    assert next(iter_frames(path)).regions == ()


def test_a_real_busi_image_gets_no_region(busi_root):
    for name in ("benign (4)", "malignant (10)", "normal (1)"):
        image = read_image(busi_root / name.split()[0] / f"{name}.png")
        assert estimate_scan_area(image.pixels) is None, name


@pytest.mark.parametrize("shape", [(512, 512), (512, 512, 3)])
def test_the_estimate_works_in_a_few_bytes_a_pixel(shape):
    """A 4096 x 4096 capture (the largest image read) costs under 128 MiB on top of its
    pixels; the estimate is made per frame and freed before the next."""
    noise = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    tracemalloc.start()
    try:
        estimate_scan_area(noise)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * shape[0] * shape[1]


def test_only_iter_frames_reads_the_scan_area(tmp_path):
    """`predict`, `outline` and `serve` read frames; training and `evaluate` read whole
    images, as the data sets' masks are drawn on them."""
    scan = make_phantom("benign", size=SCAN, seed=0).image
    path = tmp_path / "capture.png"
    PILImage.fromarray(_capture(scan)).save(path)
    (region,) = next(iter_frames(path)).regions
    assert region.estimated and _close(region.box, _pasted(scan), 1)
    assert read_image(path).regions == ()


def test_predict_outlines_nothing_outside_the_estimated_scan_area(tmp_path, lesion_everywhere):
    scan = make_phantom("normal", size=SCAN, seed=0).image
    path = tmp_path / "capture.png"
    PILImage.fromarray(_capture(scan)).save(path)
    assert main(["predict", str(lesion_everywhere), str(path), "--out", str(tmp_path / "out"),
                 "--outputs", "mask,table"]) == 0
    (row,) = read_predictions(tmp_path / "out" / "predictions.csv")
    assert row["scan_area"] == "estimated"
    (region,) = next(iter_frames(path)).regions
    assert _close(region.box, _pasted(scan), 1)
    x0, y0, x1, y1 = region.box
    mask = np.array(PILImage.open(tmp_path / "out" / "masks" / "capture.png")) > 0
    assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)
    (lesion,) = json.loads(row["lesions"])
    assert lesion["box"] == [x0, y0, x1, y1] and lesion["region"] == 1


def _benign_scan(source: str, request: pytest.FixtureRequest
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[int, int]]:
    """(scan, its lesion mask, screen size, where it is pasted) of a phantom or of BUSI's
    benign (4), whose lesion the bundled model finds."""
    if source == "phantom":
        phantom = make_phantom("benign", size=SCAN, seed=0)
        return phantom.image, phantom.mask, SCREEN, AT
    folder = request.getfixturevalue("busi_root") / "benign"
    scan = read_image(folder / "benign (4).png").pixels
    truth = read_image(folder / "benign (4)_mask.png").pixels > 0
    return scan, truth, (700, 900), (140, 90)


@pytest.mark.parametrize("source", ["phantom", "busi"])
def test_predict_measures_the_bundled_models_lesions_inside_the_scan_area(source, request,
                                                                          tmp_path):
    """The bundled model on a capture of a benign scan: the table says the area was
    estimated, nothing outside it is lesion, every lesion lies inside it and the main one is
    the scan's own lesion."""
    scan, truth, screen, at = _benign_scan(source, request)
    path = tmp_path / "capture.png"
    PILImage.fromarray(_capture(scan, screen, at)).save(path)
    assert main(["predict", str(path), "--out", str(tmp_path / "out"),
                 "--outputs", "mask,table"]) == 0
    (row,) = read_predictions(tmp_path / "out" / "predictions.csv")
    assert row["scan_area"] == "estimated" and row["lesion_count"] >= 1
    (region,) = next(iter_frames(path)).regions
    assert _close(region.box, _pasted(scan, at), 1)
    x0, y0, x1, y1 = region.box
    outside = np.array(PILImage.open(tmp_path / "out" / "masks" / "capture.png")) > 0
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    lesions = json.loads(row["lesions"])
    for lesion in lesions:
        bx0, by0, bx1, by1 = lesion["box"]
        assert x0 <= bx0 and bx1 <= x1 and y0 <= by0 and by1 <= y1
        assert lesion["diameter_px"] <= np.hypot(bx1 - bx0, by1 - by0)
    rows, cols = np.nonzero(truth)  # the main lesion is the scan's own, where it lies
    bx0, by0, bx1, by1 = lesions[0]["box"]
    assert bx0 <= at[0] + cols.mean() < bx1 and by0 <= at[1] + rows.mean() < by1


def test_a_plain_image_is_analysed_whole(tmp_path, lesion_everywhere):
    path = tmp_path / "scan.png"
    PILImage.fromarray(make_phantom("benign", size=SCAN, seed=0).image).save(path)
    assert main(["predict", str(lesion_everywhere), str(path), "--out", str(tmp_path / "out"),
                 "--outputs", "table"]) == 0
    (row,) = read_predictions(tmp_path / "out" / "predictions.csv")
    assert row["scan_area"] is None and row["lesion_area_px"] == SCAN[0] * SCAN[1]
