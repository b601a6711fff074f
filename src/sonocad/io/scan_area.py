"""The scan area of a screen capture: where the ultrasound image lies on a scanner's screen saved
as PNG, JPEG, BMP or TIFF, found from the pixels alone, so that the model analyses the scan and
not the text, body marker, colour bar and caliper labels around it. (A DICOM file names its
calibrated regions itself: `sonocad.io.dicom`.)

The scan is the largest area of grey ultrasound texture:
1. scan-like pixels: grey (colour bars and coloured graphics are saturated) and either textured
   (speckle varies from pixel to pixel) or not dark (a smooth part of the scan); a screen's
   background is flat and dark;
2. an opening by a square of `GLYPH_SIDE` of the image's shorter side removes whatever is
   thinner: text, depth-scale ticks, a body marker's outline, calipers and their labels, a
   narrow grey bar;
3. the box around the largest remaining area, its holes filled (a dark lesion inside the scan),
   together with every area at least a quarter its size (the parts of a scan that a flat-black
   cyst spanning its width cuts apart).
The box is used only where it lies clear of at least three of the image's four edges (a screen
shows text or panels around its scan) and covers at least `MIN_COVER` of the image. Otherwise
the image is taken to be the scan itself: BUSI and BUS-BRA are scans cropped from their
screens, as is a capture cut to its scan, and none of their images gets a region
(benchmarks/scan_area.py).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from sonocad.io.pixels import Region

GLYPH_SIDE = 0.03  # of the shorter side: 23 px on a 1024 x 768 screen, over any glyph's stroke
MIN_COVER = 0.2  # of the image: a smaller area is a thumbnail or a scrap of the scan
_CLEAR = 0.02  # of the image's side: the least gap between the box and an edge it is clear of
_TEXTURE = 3  # grey levels (of 255) between a 3 x 3 window's brightest and darkest pixels
_DARK = 8  # grey level (of 255) up to which a flat pixel is background
_PART = 0.25  # of the largest area: a smaller one is not a part of the scan


def estimate_scan_area(pixels: np.ndarray) -> Region | None:
    """The scan's box in a screen capture (uint8 / uint16, grey or RGB), as a region with no
    spacing of its own and marked estimated; None where the image is the scan itself."""
    height, width = pixels.shape[:2]
    side = max(3, round(min(height, width) * GLYPH_SIDE) // 2 * 2 + 1)  # odd: stays centred
    # The opening is taken after a one-pixel erosion: the 3 x 3 texture window reaches one pixel
    # past every edge, so the box would otherwise be a pixel too large on each side.
    solid = _max_filter(_min_filter(_scan_like(pixels), side + 2), side)
    labels, count = ndimage.label(ndimage.binary_fill_holes(solid))
    if not count:
        return None
    found = ndimage.find_objects(labels)
    # counted box by box: np.bincount would copy the labels to 64 bits (8 bytes a pixel)
    sizes = [int((labels[box] == label).sum()) for label, box in enumerate(found, start=1)]
    least = _PART * max(sizes)
    boxes = np.array([(cols.start, rows.start, cols.stop, rows.stop)
                      for (rows, cols), size in zip(found, sizes) if size >= least])
    x0, y0, x1, y1 = (int(v) for v in (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)))
    gaps = (x0, y0, width - x1, height - y1)
    clear = sum(gap > 0 and gap >= _CLEAR * length
                for gap, length in zip(gaps, (width, height, width, height)))
    if clear < 3 or (x1 - x0) * (y1 - y0) < MIN_COVER * height * width:
        return None
    return Region((x0, y0, x1, y1), None, estimated=True)


def _scan_like(pixels: np.ndarray) -> np.ndarray:
    """uint8 0/1 (H, W): grey pixels that are textured or not dark (step 1)."""
    values = (pixels >> 8).astype(np.uint8) if pixels.dtype == np.uint16 else pixels
    if values.ndim == 2:
        grey, coloured = values, np.zeros(values.shape, bool)
    else:
        red, green, blue = values[..., 0], values[..., 1], values[..., 2]
        # channel by channel: numpy's reductions over a last axis of 3 are ten times slower
        high = np.maximum(np.maximum(red, green), blue)
        chroma = high - np.minimum(np.minimum(red, green), blue)
        # over half saturated: a colour bar or coloured graphics, not grey nor a scanner's tinted
        # grey map (sepia, blue)
        coloured = (chroma > 16) & (chroma > high >> 1)
        del high, chroma  # freed before the grey and texture arrays: a lower peak
        grey = ((red.astype(np.uint16) + green + blue) // 3).astype(np.uint8)
    spread = _max_filter(grey, 3)
    spread -= _min_filter(grey, 3)  # never below 0: a window's max is >= its min
    return (~coloured & ((spread >= _TEXTURE) | (grey > _DARK))).astype(np.uint8)


# Square min / max filters by OpenCV's erosion and dilation: the same values as scipy.ndimage's
# (outside the image counts for nothing in either), seven to a hundred times faster, so the
# estimate costs a few milliseconds of the image's time, not as much as the model.
def _min_filter(values: np.ndarray, side: int) -> np.ndarray:
    return cv2.erode(values, np.ones((side, side), np.uint8))


def _max_filter(values: np.ndarray, side: int) -> np.ndarray:
    return cv2.dilate(values, np.ones((side, side), np.uint8))
