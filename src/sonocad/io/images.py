"""Read any supported image file into one `Image`: uint8 or uint16, grey (H, W) or RGB (H, W, 3).

PNG, JPEG, BMP and TIFF go through Pillow; DICOM (by suffix, or by its preamble for files
without one) through `sonocad.io.dicom`. How Pillow modes map to pixels:
  1 -> uint8 0/255;  L, LA -> L;  P, PA -> L when every colour used is grey, else RGB;
  RGB, RGBA, CMYK, YCbCr -> RGB (alpha dropped);  I;16, I;16B -> uint16, widened to the full
  16-bit range from the fewest of 8/10/12/14/16 bits that hold the image's largest value (a
  12-bit scan in a 16-bit PNG would otherwise reach the model 16 times too dark; Pillow does not
  read the sBIT chunk that could say so);
  I (int32) and F (float) -> uint16: whole numbers within 0..65535 are kept as they are,
  anything else is stretched linearly from the image's min..max onto 0..65535.
Other modes (LAB TIFF, say) are refused. EXIF orientation is applied, so pixels are upright
as a viewer shows them. 16-bit RGB PNGs arrive as 8-bit RGB (Pillow reads them so).

Every page of a multi-page TIFF is a frame, as every frame of a DICOM cine loop is (an animated
PNG or a multi-picture JPEG gives its first picture only). Sizes are checked against
`MAX_IMAGE_PIXELS` and `MIN_IMAGE_SIDE` from the file's header, before any pixel is decoded, and
a file of more than `MAX_FRAMES` frames or pages is refused. A TIFF's pages are walked one by
one, at most one past that limit, never counted whole: Pillow's page count reads every page
header, in a time that grows with the square of their number (367 s for 100,000 pages).

`iter_frames` (what `predict`, `outline` and `serve` read) also finds where the scan lies in a
non-DICOM screen capture (`sonocad.io.scan_area`) and gives each such frame that area as its
one region, marked estimated; `read_image` (training and `evaluate`) gives pixels alone, as the
data sets' masks are drawn on whole images.
"""

from __future__ import annotations

import itertools
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from sonocad.errors import InputError
from sonocad.io.pixels import (
    MAX_IMAGE_PIXELS,
    Image,
    check_frame_count,
    check_size,
    significant_bits,
    stretch_to_dtype,
    widen_to_16_bits,
)
from sonocad.io.scan_area import estimate_scan_area

_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
_DICOM_SUFFIXES = frozenset({".dcm"})
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}) | _DICOM_SUFFIXES

_TO_RGB = frozenset({"RGBA", "CMYK", "YCbCr"})
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what Pillow raises for bad files


def read_image(path: str | Path) -> Image:
    """The image in `path`; for a multi-frame DICOM or a multi-page TIFF, its first frame."""
    path = _checked_file(path)
    if is_dicom(path):
        # imported on use: pydicom is slow to import
        from sonocad.io.dicom import read_dicom

        return read_dicom(path)
    return _read_with_pillow(path)


def iter_frames(path: str | Path) -> Iterator[Image]:
    """Every frame of a DICOM cine loop or page of a TIFF; any other image yields once.

    The header (every page's, for a TIFF) is checked on call, so a file that is not an image,
    is too large or has too many frames fails at once; pixels are decoded one frame at a time as
    they are asked for, so memory does not grow with the number of frames. A screen capture's
    frames (PNG, JPEG, BMP, TIFF) carry its estimated scan area, where one is found, as their
    region.
    """
    path = _checked_file(path)
    if is_dicom(path):
        from sonocad.io.dicom import iter_dicom_frames

        return iter_dicom_frames(path)
    _check_pages(path)
    return _pillow_pages(path)


def numbered_frames(path: str | Path) -> Iterator[tuple[int | None, Image]]:
    """(None, image) for a single image; (1, frame), (2, frame), ... for a cine loop or a
    multi-page TIFF: the frame numbers every command names its outputs with."""
    frames = iter_frames(path)
    first, second = next(frames, None), next(frames, None)
    if first is None:
        raise InputError(Path(path), "file has no frames")
    if second is None:
        yield None, first
        return
    yield from enumerate(itertools.chain([first, second], frames), start=1)


def is_image_file(path: str | Path) -> bool:
    """A file `read_image` is meant for: a known suffix, or a suffix-less DICOM file."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    # DICOMDIR is the index of a DICOM CD, not an image
    return path.suffix == "" and path.name.upper() != "DICOMDIR" and _has_dicom_preamble(path)


def _checked_file(path: str | Path) -> Path:
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot access file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(path, "not a regular file")
    if info.st_size == 0:
        raise InputError(path, "file is empty")
    return path


def is_dicom(path: Path) -> bool:
    """A DICOM file by its suffix, or by the part-10 preamble of a file without one."""
    return path.suffix.lower() in _DICOM_SUFFIXES or _has_dicom_preamble(path)


def _has_dicom_preamble(path: Path) -> bool:
    """True when the file starts as DICOM part 10 does: 128 bytes, then b"DICM"."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _read_with_pillow(path: Path) -> Image:
    with _pillow_errors(path), PILImage.open(path, formats=_PIL_FORMATS) as image:
        return _decoded_page(path, image)


def _check_pages(path: Path) -> None:
    """The page count and every page's size, from the headers alone (seeking a TIFF page reads
    its tags only), walking at most one page past the limit."""
    with _pillow_errors(path), PILImage.open(path, formats=_PIL_FORMATS) as image:
        for count in itertools.count(1):
            if not _seek_page(image, count - 1):
                return
            check_frame_count(path, count)
            check_size(path, *image.size)


def _pillow_pages(path: Path) -> Iterator[Image]:
    # The error context is entered around each step, never across a yield: it holds a
    # warnings filter, which must not leak into the caller's code between frames.
    with _pillow_errors(path):
        image = PILImage.open(path, formats=_PIL_FORMATS)
    with image:
        for index in itertools.count():
            with _pillow_errors(path):
                if not _seek_page(image, index):
                    return
                page = _decoded_page(path, image)
            area = estimate_scan_area(page.pixels)
            yield page if area is None else replace(page, regions=(area,))


def _seek_page(image: PILImage.Image, index: int) -> bool:
    """Select page `index` of an open file; False past its last page. A TIFF's pages are images
    of their own; APNG frames and MPO pictures are not scans, so other files have one page."""
    if index and image.format != "TIFF":
        return False
    try:
        image.seek(index)  # one page on from the last: never Pillow's n_frames, which reads all
    except EOFError:
        return False
    return True


def _decoded_page(path: Path, image: PILImage.Image) -> Image:
    """The current page of an open file: its size checked, then decoded and made upright."""
    check_size(path, *image.size)
    ImageOps.exif_transpose(image, in_place=True)  # decodes; a truncated file fails here
    return Image(_pixels_of(path, image))


@contextmanager
def _pillow_errors(path: Path) -> Iterator[None]:
    """Pillow's exceptions as InputErrors naming `path`; its bomb warning silenced."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from its own threshold; MAX_IMAGE_PIXELS is the limit here
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            yield
    except PILImage.DecompressionBombError as exc:
        # Pillow refuses, before our own check can run, anything over twice its limit
        raise InputError(path, f"image too large (over {2 * PILImage.MAX_IMAGE_PIXELS:,} "
                               f"pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels per image "
                               "or frame)") from exc
    except PILImage.UnidentifiedImageError as exc:
        raise InputError(path, "not a PNG, JPEG, BMP, TIFF or DICOM image") from exc
    except _PIL_ERRORS as exc:
        reason = getattr(exc, "strerror", None) or exc  # "Permission denied", not "[Errno 13] ..."
        raise InputError(path, f"cannot read image ({reason})") from exc


def _pixels_of(path: Path, image: PILImage.Image) -> np.ndarray:
    # np.array, not np.asarray: Pillow's arrays are read-only, and callers may edit in place
    mode = image.mode
    if mode in ("RGB", "L"):
        return np.array(image)
    if mode in ("1", "LA"):
        return np.array(image.convert("L"))
    if mode in ("P", "PA"):
        rgb = np.array(image.convert("RGB"))
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        return np.ascontiguousarray(rgb[..., 0]) if grey else rgb
    if mode in _TO_RGB:
        return np.array(image.convert("RGB"))
    if mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16)  # native byte order, whatever the file's
        return widen_to_16_bits(pixels, significant_bits(pixels))
    if mode in ("I", "F"):
        values = np.asarray(image)
        if not np.isfinite(values).all():
            raise InputError(path, "image has NaN or infinite pixel values")
        return _as_uint16(values)
    raise InputError(path, f"unsupported image mode {mode!r}")


def _as_uint16(values: np.ndarray) -> np.ndarray:
    whole = values.dtype.kind in "iu" or np.array_equal(values, np.rint(values))
    if whole and values.min() >= 0 and values.max() <= np.iinfo(np.uint16).max:
        return values.astype(np.uint16)
    return stretch_to_dtype(values, np.uint16)
