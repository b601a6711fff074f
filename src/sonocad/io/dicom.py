"""DICOM pixel data and pixel spacing through pydicom, and nothing else from the file.

Only group 0028 (image pixel description) and three geometry elements are parsed, so patient
attributes are never decoded and cannot reach an output, a log or an error message.

How stored values become output pixels:
* RGB, YBR_FULL, YBR_FULL_422 -> RGB (pydicom converts YBR); PALETTE COLOR -> RGB via its LUT.
* MONOCHROME1/2: the modality LUT (rescale) and then the VOI LUT or window are applied where
  the file carries them -- that is the picture the sonographer saw -- and are no-ops otherwise.
  Results within the stored range 0..2**BitsStored-1 keep their scale (the usual ultrasound
  case, so cine frames keep one scale); anything else (signed, rescaled to other units) is
  stretched per frame from its min..max onto the output range. MONOCHROME1 is then inverted so
  that bright is high. Output is uint8 for BitsStored <= 8, else uint16 widened from
  BitsStored to the full 16-bit range (4095 -> 65535 for 12 bits): divided by 65535 as every
  uint16 input is, a 12-bit frame would otherwise reach the model 16 times too dark.

Rows x Columns are checked against the pixel budget (`sonocad.io.images.check_size`) from the
header, before any pixel data is read. The budget is per frame: frames are decoded one at a
time, so a cine loop's memory does not grow with its length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import DicomDictionary, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    get_decoder,
    iter_pixels,
)

from sonocad.errors import InputError
from sonocad.io.pixels import Image, check_size, stretch_to_dtype, widen_to_16_bits

_GEOMETRY_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing", "SequenceOfUltrasoundRegions")
_HEADER_TAGS = [tag for tag in DicomDictionary if tag >> 16 == 0x0028] + [
    tag_for_keyword(keyword) for keyword in (*_GEOMETRY_KEYWORDS, "PixelData")
]
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422"})  # pydicom returns these as RGB
_PALETTE = "PALETTE COLOR"
_CENTIMETRES = 3  # PhysicalUnitsX/YDirection code for cm (DICOM PS3.3 C.8.5.5.1.15)
# What pydicom raises for malformed files; our own bugs (TypeError, say) still surface as such.
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError,
                  IndexError, OSError, EOFError, struct.error)


def read_dicom(path: Path) -> Image:
    """The first frame of a DICOM file."""
    frames = list(_frames(path, indices=[0]))  # list: decodes one frame and closes the file
    if not frames:
        raise InputError(path, "DICOM file has no frames")
    return frames[0]


def iter_dicom_frames(path: Path) -> Iterator[Image]:
    """Every frame of a DICOM file; the header is checked now, frames are decoded one by one."""
    return _frames(path, indices=None)


def _frames(path: Path, indices: Iterable[int] | None) -> Iterator[Image]:
    header = _read_header(path)
    spacing = pixel_spacing_mm(header)
    return _decode(path, header, spacing, indices)


def _decode(path: Path, header: Dataset, spacing: tuple[float, float] | None,
            indices: Iterable[int] | None) -> Iterator[Image]:
    try:
        for frame in iter_pixels(path, indices=indices):
            yield Image(_display_pixels(frame, header), spacing)
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"cannot decode DICOM pixel data ({exc})") from exc


def _read_header(path: Path) -> Dataset:
    try:
        # defer_size: the pixel data is left on disk; iter_pixels reads it frame by frame
        header = pydicom.dcmread(path, specific_tags=_HEADER_TAGS, defer_size=1024)
    except InvalidDicomError as exc:
        raise InputError(path, "not a DICOM file (no DICM preamble)") from exc
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"cannot read DICOM header ({exc})") from exc
    syntax = header.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise InputError(path, "DICOM file has no transfer syntax (truncated file meta?)")
    if "PixelData" not in header:
        raise InputError(path, "DICOM file has no pixel data")
    interpretation = header.get("PhotometricInterpretation")
    if interpretation not in _GREY | _COLOUR | {_PALETTE}:
        raise InputError(path, f"unsupported DICOM photometric interpretation {interpretation!r}")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(path, f"DICOM transfer syntax {syntax.name!r} is not supported") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise InputError(path, f"{syntax.name} pixel data needs a decoder plugin that is not "
                               f"installed (any of: {needs})")
    _check_frame_size(path, header)
    return header


def _check_frame_size(path: Path, header: Dataset) -> None:
    rows, columns = header.get("Rows"), header.get("Columns")
    if rows is None or columns is None:
        raise InputError(path, "DICOM file has no image size (Rows, Columns)")
    check_size(path, int(columns), int(rows))


def _display_pixels(frame: np.ndarray, header: Dataset) -> np.ndarray:
    interpretation = header.PhotometricInterpretation
    if interpretation == _PALETTE:
        rgb = apply_color_lut(frame, header)
        # 8-bit entries are often stored in 16-bit words, which pydicom returns as uint16
        nominal_bits = header.RedPaletteColorLookupTableDescriptor[2]
        return rgb.astype(np.uint8) if nominal_bits == 8 else rgb
    if interpretation in _COLOUR:
        return frame
    bits = min(int(header.BitsStored), 16)
    dtype = np.uint8 if bits <= 8 else np.uint16
    top = 2**bits - 1
    values = apply_voi_lut(apply_modality_lut(frame, header), header)
    if values.dtype.kind == "f":  # a new array from a LUT, never the frame: rounded in place
        values = np.rint(values, out=values)
    if values.min() < 0 or values.max() > top:
        values, top = stretch_to_dtype(values, dtype), np.iinfo(dtype).max
    pixels = values.astype(dtype)
    if interpretation == "MONOCHROME1":
        pixels = top - pixels
    return widen_to_16_bits(pixels, int(top).bit_length()) if dtype == np.uint16 else pixels


def pixel_spacing_mm(header: Dataset) -> tuple[float, float] | None:
    """(row, column) mm per pixel from PixelSpacing, else ImagerPixelSpacing, else the
    ultrasound regions (cm there); None when the file does not say."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = header.get(keyword)
        if value is not None and len(value) == 2 and min(value) > 0:
            return float(value[0]), float(value[1])
    return _ultrasound_region_spacing(header)


def _ultrasound_region_spacing(header: Dataset) -> tuple[float, float] | None:
    # Several calibrated regions (a dual view, say) may disagree; then no single spacing holds.
    found = {
        (round(abs(region.PhysicalDeltaY) * 10, 9), round(abs(region.PhysicalDeltaX) * 10, 9))
        for region in header.get("SequenceOfUltrasoundRegions", [])
        if region.get("PhysicalUnitsXDirection") == _CENTIMETRES
        and region.get("PhysicalUnitsYDirection") == _CENTIMETRES
        and region.get("PhysicalDeltaX") and region.get("PhysicalDeltaY")
    }
    return found.pop() if len(found) == 1 else None
