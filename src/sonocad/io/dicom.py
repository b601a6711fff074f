"""DICOM pixel data and pixel spacing through pydicom, and nothing else from the file.

Only group 0028 (image pixel description), three geometry elements and the pixel data (with
its offset tables) are parsed, so patient attributes are never decoded and cannot reach an
output, a log or an error message.

How stored values become output pixels:
* RGB, YBR_FULL, YBR_FULL_422 -> RGB (pydicom converts YBR); YBR_RCT, YBR_ICT (JPEG 2000
  only) -> RGB (the JPEG 2000 decoder undoes the colour transform); PALETTE COLOR -> RGB via its
  LUT, read in the file's byte order (pydicom 3.0.2 reads a big-endian file's 16-bit LUT data
  byte-swapped, 256 times too dark: see `_little_endian_palette`). Colour comes out in the
  machine's byte order, whatever the file's.
* MONOCHROME1/2: the modality LUT (rescale) and then the VOI LUT or window are applied where
  the file carries them -- that is the picture the sonographer saw -- and are no-ops otherwise.
  Results within the stored range 0..2**BitsStored-1 keep their scale (the usual ultrasound
  case, so cine frames keep one scale); anything else (signed, rescaled to other units) is
  stretched per frame from its min..max onto the output range. MONOCHROME1 is then inverted so
  that bright is high. Output is uint8 for BitsStored <= 8, else uint16 widened from
  BitsStored to the full 16-bit range (4095 -> 65535 for 12 bits): divided by 65535 as every
  uint16 input is, a 12-bit frame would otherwise reach the model 16 times too dark.

JPEG Baseline is decoded by Pillow (libjpeg-turbo), which decodes all of it, whatever else is
installed: lossy JPEG decoders round differently (pylibjpeg's libjpeg: up to 5 levels on 2 % of a
frame), and a model input must not change because someone installed pylibjpeg for JPEG Lossless.
A syntax whose decoder is not installed is refused naming the packages to install
(docs/dicom.md lists the supported syntaxes).

Numbers the reading depends on (NumberOfFrames, PixelSpacing, ImagerPixelSpacing, rescale,
window, the ultrasound regions' physical deltas) must be finite numbers: text or NaN there is
refused naming the attribute, as is a rescale or window that makes a pixel NaN or infinite (an
all-black frame would otherwise be predicted). A spacing of zero or less means "not
calibrated" and is passed over.

Decode budgets, all checked before the decoder allocates anything:
* Rows x Columns against the pixel budget (`sonocad.io.pixels.check_size`), and NumberOfFrames
  against `MAX_FRAMES`, from the header. The budget is per frame: frames are decoded one at a
  time, so a cine loop's memory does not grow with its length.
* A compressed frame's own size: JPEG and JPEG-LS frame headers (SOF), the JPEG 2000 SIZ
  segment, and for RLE the bytes each segment decodes to, read from the codestream just before
  that frame is decoded; a frame that disagrees with Rows x Columns is refused. Decoders
  allocate what the codestream says, whatever the header says (an 11.5 KB file with a 256 x 256
  header and a 40000 x 40000 JPEG-LS codestream took 4.3 GB).
* Deflated Explicit VR Little Endian is inflated in memory, up to `MAX_INFLATED_BYTES`, and then
  read as the plain file it holds (pydicom would inflate it whole before reading a tag, and
  its frame reader cannot read it at all).
"""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import DicomDictionary, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    as_pixel_options,
    get_decoder,
    iter_pixels,
)
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from sonocad.errors import InputError
from sonocad.io.codestreams import j2k_frame_size, jpeg_frame_size, rle_problem
from sonocad.io.pixels import (
    MAX_IMAGE_PIXELS,
    Image,
    Region,
    check_frame_count,
    check_size,
    stretch_to_dtype,
    widen_to_16_bits,
)

_GEOMETRY_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing", "SequenceOfUltrasoundRegions")
_HEADER_TAGS = [tag for tag in DicomDictionary if tag >> 16 == 0x0028] + [
    tag_for_keyword(keyword) for keyword in (*_GEOMETRY_KEYWORDS, "ExtendedOffsetTable",
                                             "ExtendedOffsetTableLengths", "PixelData")
]
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422"})  # pydicom returns these as RGB
# JPEG 2000's reversible and irreversible colour transforms, which its decoder undoes (RGB out);
# the standard allows them in JPEG 2000 pixel data only.
_J2K_COLOUR = frozenset({"YBR_RCT", "YBR_ICT"})
_PALETTE = "PALETTE COLOR"
_LUT_DATA = tuple(f"{colour}PaletteColorLookupTableData"
                  for colour in ("Red", "Green", "Blue", "Alpha"))
_CENTIMETRES = 3  # PhysicalUnitsX/YDirection code for cm (DICOM PS3.3 C.8.5.5.1.15)
_MIN_REGION_SIDE = 32  # a tissue region narrower than this is a strip, not a view
# Decimal and integer strings that decoding or measuring uses, and how many values each holds
# (None: one or more). pydicom keeps a value it cannot parse as text, and parses "NaN": either
# way, arithmetic would fail or go black.
_NUMBERS = {"NumberOfFrames": 1, "PixelSpacing": 2, "ImagerPixelSpacing": 2, "RescaleSlope": 1,
            "RescaleIntercept": 1, "WindowCenter": None, "WindowWidth": None}
# What pydicom raises for malformed files; our own bugs (TypeError, say) still surface as such.
_DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError,
                  IndexError, OSError, EOFError, struct.error)
# A Deflated file is inflated in memory before a tag can be read. It may hold one frame at the
# pixel budget in its costliest form (RGB, 16 bits: 6 bytes a pixel) and 1 MiB of attributes;
# a 1.5 MB file inflating to 1.5 GB is refused once past that.
MAX_INFLATED_BYTES = 6 * MAX_IMAGE_PIXELS + 2**20
_INFLATE_CHUNK = 2**20


def read_dicom(path: Path) -> Image:
    """The first frame of a DICOM file."""
    with closing(_frames(path)) as frames:  # closed after one frame: the rest stay undecoded
        first = next(frames, None)
    if first is None:
        raise InputError(path, "DICOM file has no frames")
    return first


def iter_dicom_frames(path: Path) -> Iterator[Image]:
    """Every frame of a DICOM file; the header is checked now, frames are decoded one by one."""
    return _frames(path)


def dicom_frame_count(path: Path) -> int:
    """How many frames the file holds, from its header (checked as for reading)."""
    return _frame_count(path, _read_header(path, _dataset_source(path)))


def _frames(path: Path) -> Iterator[Image]:
    source = _dataset_source(path)
    header = _read_header(path, source)
    spacing = _pixel_spacing_mm(path, header)
    return _decode(path, source, header, spacing, _tissue_regions(header))


def _decode(path: Path, source: Path | bytes, header: Dataset,
            spacing: tuple[float, float] | None,
            regions: tuple[Region, ...]) -> Iterator[Image]:
    try:
        for frame in _stored_frames(path, source, header):
            yield Image(_display_pixels(path, frame, header), spacing, regions)
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"cannot decode DICOM pixel data ({exc})") from exc


# --- the file and its header -------------------------------------------------------------------

def _dataset_source(path: Path) -> Path | bytes:
    """The file itself or, for Deflated Explicit VR Little Endian, the plain Explicit VR Little
    Endian file it holds, inflated in memory within `MAX_INFLATED_BYTES`."""
    try:
        with open(path, "rb") as handle:
            preamble = read_preamble(handle, force=False)
            meta = FileMetaDataset(read_dataset(handle, is_implicit_VR=False,
                                                is_little_endian=True, stop_when=_past_meta))
            if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                return path
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            plain = io.BytesIO()
            plain.write(preamble + b"DICM")
            write_file_meta_info(plain, meta, enforce_standard=False)
            _inflate(path, handle, plain)
            return plain.getvalue()
    except InvalidDicomError as exc:
        raise InputError(path, "not a DICOM file (no DICM preamble)") from exc
    except zlib.error as exc:
        raise InputError(path, f"cannot inflate its Deflated DICOM data set ({exc})") from exc
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"cannot read DICOM header ({exc})") from exc


def _past_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0002  # the file meta is group 0002


def _inflate(path: Path, deflated: BinaryIO, into: BinaryIO) -> None:
    """Raw deflate data from `deflated` into `into`; InputError as soon as it passes
    `MAX_INFLATED_BYTES`."""
    size = 0
    for piece in _inflated_pieces(deflated):
        size += len(piece)
        if size > MAX_INFLATED_BYTES:
            raise InputError(path, f"its Deflated DICOM data set inflates to more than "
                                   f"{MAX_INFLATED_BYTES / 2**20:.0f} MiB, the limit (one RGB "
                                   f"16-bit frame of {MAX_IMAGE_PIXELS:,} pixels)")
        into.write(piece)


def _inflated_pieces(deflated: BinaryIO) -> Iterator[bytes]:
    """Raw deflate data (DICOM PS3.5 A.5) inflated at most `_INFLATE_CHUNK` bytes at a time."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = b""
    while pending or (pending := deflated.read(_INFLATE_CHUNK)):
        yield inflater.decompress(pending, _INFLATE_CHUNK)
        pending = inflater.unconsumed_tail
    yield inflater.flush()


def _readable(source: Path | bytes) -> Path | BinaryIO:
    """What pydicom reads: the file's path, or a new reader over the inflated bytes."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _read_header(path: Path, source: Path | bytes) -> Dataset:
    try:
        # defer_size: native pixel data is left on disk; iter_pixels reads it frame by frame
        header = pydicom.dcmread(_readable(source), specific_tags=_HEADER_TAGS, defer_size=1024)
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
    if interpretation not in _GREY | _COLOUR | _J2K_COLOUR | {_PALETTE}:
        raise InputError(path, f"unsupported DICOM photometric interpretation {interpretation!r}")
    if interpretation in _J2K_COLOUR and syntax not in JPEG2000TransferSyntaxes:
        raise InputError(path, f"DICOM photometric interpretation {interpretation!r} is for "
                               f"JPEG 2000 pixel data only, not {syntax.name}")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InputError(path, f"DICOM transfer syntax {syntax.name!r} is not supported") from None
    if not decoder.is_available:
        # pydicom names GDCM by its module; the package to install is python-gdcm
        needs = "; ".join(decoder.missing_dependencies).replace("requires gdcm",
                                                                 "requires python-gdcm")
        raise InputError(path, f"{syntax.name} pixel data needs a decoder plugin that is not "
                               f"installed (any of: {needs}; docs/dicom.md)")
    for keyword in _NUMBERS:
        _finite_numbers(path, header, keyword)
    _check_frame_size(path, header)
    check_frame_count(path, _frame_count(path, header))
    return header


def _check_frame_size(path: Path, header: Dataset) -> None:
    rows, columns = header.get("Rows"), header.get("Columns")
    if rows is None or columns is None:
        raise InputError(path, "DICOM file has no image size (Rows, Columns)")
    check_size(path, int(columns), int(rows))


def _frame_count(path: Path, header: Dataset) -> int:
    count = as_pixel_options(header)["number_of_frames"]  # 1 where absent, as pydicom reads it
    if not isinstance(count, int) or count < 1:
        raise InputError(path, f"DICOM NumberOfFrames {str(count)!r} is not a whole number of "
                               "frames")
    return count


def _finite_numbers(path: Path, header: Dataset, keyword: str) -> list[float]:
    """The values of a decimal or integer string element of `_NUMBERS` as floats ([] when
    absent or empty); InputError naming it when one is text, NaN or infinite, or when it holds
    another number of values."""
    value = header.get(keyword)
    if value is None or value == "":
        return []
    values = list(value) if isinstance(value, MultiValue) else [value]
    count = _NUMBERS[keyword] or len(values)
    if (len(values) != count or any(isinstance(v, str) for v in values)
            or not np.isfinite(np.asarray(values, float)).all()):
        text = "\\".join(map(str, values))  # as the file writes several values
        wanted = "a finite number" if count == 1 else f"{count} finite numbers"
        raise InputError(path, f"DICOM {keyword} '{_shortened(text)}' is not {wanted}")
    return [float(v) for v in values]


def _shortened(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- frames: each compressed frame's own size checked before it is decoded ---------------------

def _stored_frames(path: Path, source: Path | bytes, header: Dataset) -> Iterator[np.ndarray]:
    """Each frame's stored values, decoded one at a time by pydicom. A compressed frame's
    codestream is split off as pydicom splits it and checked before pydicom decodes it."""
    syntax = header.file_meta.TransferSyntaxUID
    with closing(iter_pixels(_readable(source), decoding_plugin=_plugin(syntax))) as frames:
        if not syntax.is_encapsulated:
            yield from frames
            return
        with closing(_codestreams(source, header)) as codestreams:
            for number, codestream in enumerate(codestreams, start=1):
                _check_codestream(path, number, codestream, header)
                frame = next(frames, None)
                if frame is None:
                    return
                yield frame


def _plugin(syntax: UID) -> str:
    """Pillow for JPEG Baseline (see the module's docstring), else "": pydicom's first
    available plugin, and the next where it fails."""
    pillow = syntax == JPEGBaseline8Bit and "pillow" in get_decoder(syntax).available_plugins
    return "pillow" if pillow else ""


def _codestreams(source: Path | bytes, header: Dataset) -> Iterator[bytes]:
    """Each frame's codestream, read frame by frame from where the header read left the pixel
    data (in memory when small, else on disk), never more than the header's frame count (JPEG
    fragments without an offset table can split into more)."""
    options = as_pixel_options(header)
    element = header.get_item("PixelData", keep_deferred=True)
    if element.value is None:
        data = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        data.seek(element.value_tell)
    else:
        data = io.BytesIO(element.value)
    with data:
        codestreams = generate_frames(data, number_of_frames=options["number_of_frames"],
                                      extended_offsets=options.get("extended_offsets"))
        yield from itertools.islice(codestreams, options["number_of_frames"])


def _check_codestream(path: Path, number: int, codestream: bytes, header: Dataset) -> None:
    syntax = header.file_meta.TransferSyntaxUID
    rows, columns = int(header.Rows), int(header.Columns)
    if syntax == RLELossless:
        problem = rle_problem(codestream, rows * columns)
        if problem:
            raise InputError(path, f"frame {number}: {problem} (Rows x Columns is {rows} x "
                                   f"{columns}); refused before decoding")
        return
    codec, frame_size = _FRAME_SIZE_READERS.get(syntax, (syntax.name, None))
    if frame_size is None:
        raise InputError(path, f"DICOM transfer syntax {syntax.name!r} is not supported (its "
                               "frames' size cannot be checked before decoding)")
    size = frame_size(codestream)
    if size is None:
        raise InputError(path, f"frame {number}: no {codec} frame header (SOF or SIZ) found "
                               "in its codestream")
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(path, f"image too large: frame {number}'s {codec} codestream is "
                               f"{width} x {height} pixels (the header says {columns} x {rows}; "
                               f"the limit is {MAX_IMAGE_PIXELS:,} pixels per image or frame)")
    if (width, height) != (columns, rows):
        raise InputError(path, f"frame {number}'s {codec} codestream is {width} x {height} "
                               f"pixels, but the header says {columns} x {rows}")


_FRAME_SIZE_READERS: dict[str, tuple[str, Callable[[bytes], tuple[int, int] | None]]] = {
    **{syntax: ("JPEG", jpeg_frame_size) for syntax in JPEGTransferSyntaxes},
    **{syntax: ("JPEG-LS", jpeg_frame_size) for syntax in JPEGLSTransferSyntaxes},
    **{syntax: ("JPEG 2000", j2k_frame_size) for syntax in JPEG2000TransferSyntaxes},
}


# --- stored values to display pixels -----------------------------------------------------------

def _display_pixels(path: Path, frame: np.ndarray, header: Dataset) -> np.ndarray:
    interpretation = header.PhotometricInterpretation
    if interpretation == _PALETTE:
        rgb = apply_color_lut(frame, _little_endian_palette(header))
        # 8-bit entries are often stored in 16-bit words, which pydicom returns as uint16
        nominal_bits = header.RedPaletteColorLookupTableDescriptor[2]
        return rgb.astype(np.uint8) if nominal_bits == 8 else rgb
    if interpretation in _COLOUR | _J2K_COLOUR:
        # 16-bit samples of a big-endian file come in its byte order; the machine's from here
        return frame.astype(frame.dtype.newbyteorder("="), copy=False)
    bits = min(int(header.BitsStored), 16)
    dtype = np.uint8 if bits <= 8 else np.uint16
    top = 2**bits - 1
    values = apply_voi_lut(apply_modality_lut(frame, header), header)
    if values.dtype.kind == "f":  # a new array from a LUT, never the frame: rounded in place
        if not np.isfinite(values).all():  # finite rescale and window values can overflow
            raise InputError(path, "its rescale or window values make pixels NaN or infinite")
        values = np.rint(values, out=values)
    if values.min() < 0 or values.max() > top:
        values, top = stretch_to_dtype(values, dtype), np.iinfo(dtype).max
    pixels = values.astype(dtype)
    if interpretation == "MONOCHROME1":
        pixels = top - pixels
    return widen_to_16_bits(pixels, int(top).bit_length()) if dtype == np.uint16 else pixels


def _little_endian_palette(header: Dataset) -> Dataset:
    """`header` or, for a big-endian file with (unsegmented) Palette Color LUT data, a
    little-endian stand-in holding its LUT. pydicom 3.0.2's apply_color_lut reads such data in
    the machine's byte order, not the file's (segmented LUTs it reads right), so a big-endian
    file's 16-bit entries came out byte-swapped and its picture 256 times too dark. Re-encoded
    little-endian and declared so, the LUT reads right in a pydicom that honours the byte order
    too."""
    if header.file_meta.TransferSyntaxUID.is_little_endian or _LUT_DATA[0] not in header:
        return header
    descriptor = header["RedPaletteColorLookupTableDescriptor"]  # the one pydicom reads
    entries = descriptor.value[0] or 2**16  # 0 means 2**16 entries
    stand_in = Dataset()
    stand_in.file_meta = FileMetaDataset()
    stand_in.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    stand_in[descriptor.tag] = descriptor
    for keyword in _LUT_DATA:
        if keyword in header:
            element = header[keyword]
            data = element.value
            if len(data) == 2 * entries:  # 16-bit entries (8-bit ones have no byte order)
                data = np.frombuffer(data, ">u2").astype("<u2").tobytes()
            stand_in[element.tag] = DataElement(element.tag, element.VR, data)
    return stand_in


# --- pixel spacing -----------------------------------------------------------------------------

def _pixel_spacing_mm(path: Path, header: Dataset) -> tuple[float, float] | None:
    """(row, column) mm per pixel from PixelSpacing, else ImagerPixelSpacing, else the
    ultrasound regions (cm there); None when the file does not say."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _finite_numbers(path, header, keyword)
        if values and min(values) > 0:
            return values[0], values[1]
    return _ultrasound_region_spacing(path, header)


def _tissue_regions(header: Dataset) -> tuple[Region, ...]:
    """The 2-D tissue regions (RegionSpatialFormat 1, RegionDataType 1) of the ultrasound
    regions, clipped to the image, each with its own spacing where it is calibrated in cm (its
    deltas were checked by `_ultrasound_region_spacing`); () where there are none."""
    rows, columns = int(header.Rows), int(header.Columns)
    found = []
    for region in header.get("SequenceOfUltrasoundRegions", []):
        corners = [region.get(f"RegionLocation{name}") for name in
                   ("MinX0", "MinY0", "MaxX1", "MaxY1")]
        if (region.get("RegionSpatialFormat"), region.get("RegionDataType")) != (1, 1) or \
                not all(isinstance(value, int) for value in corners):
            continue
        x0, y0 = max(corners[0], 0), max(corners[1], 0)
        x1, y1 = min(corners[2] + 1, columns), min(corners[3] + 1, rows)  # inclusive in DICOM
        if x1 - x0 < _MIN_REGION_SIDE or y1 - y0 < _MIN_REGION_SIDE:
            continue
        deltas = region.get("PhysicalDeltaY"), region.get("PhysicalDeltaX")
        calibrated = (region.get("PhysicalUnitsXDirection") == _CENTIMETRES
                      and region.get("PhysicalUnitsYDirection") == _CENTIMETRES
                      and all(isinstance(d, float) and np.isfinite(d) and d for d in deltas))
        spacing = tuple(round(abs(d) * 10, 9) for d in deltas) if calibrated else None
        found.append(Region((x0, y0, x1, y1), spacing))
    return tuple(found)


def _ultrasound_region_spacing(path: Path, header: Dataset) -> tuple[float, float] | None:
    # Several calibrated regions (a dual view, say) may disagree; then no single spacing holds.
    found = set()
    for region in header.get("SequenceOfUltrasoundRegions", []):
        if not (region.get("PhysicalUnitsXDirection") == _CENTIMETRES
                and region.get("PhysicalUnitsYDirection") == _CENTIMETRES):
            continue
        deltas = region.get("PhysicalDeltaY"), region.get("PhysicalDeltaX")
        if not all(isinstance(delta, float) for delta in deltas):
            continue  # absent or empty
        if not np.isfinite(deltas).all():
            raise InputError(path, "DICOM SequenceOfUltrasoundRegions has a PhysicalDeltaX or "
                                   f"PhysicalDeltaY that is not a finite number ({deltas})")
        if all(deltas):
            found.add(tuple(round(abs(delta) * 10, 9) for delta in deltas))
    return found.pop() if len(found) == 1 else None
