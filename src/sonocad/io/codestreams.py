"""The size a compressed DICOM frame will decode to, read from its codestream before any
decoder runs: the codestream, not the DICOM header, decides how much a decoder allocates, so a
256 x 256 header may front a 40000 x 40000 codestream.

JPEG and JPEG-LS: the first frame header (SOF); JPEG 2000: the SIZ segment; RLE: the length
each PackBits segment decodes to, counted from its run headers without decoding.
"""

from __future__ import annotations

import re
import struct

# A marker as libjpeg and CharLS find one: 0xFF (fill bytes: more of them), then a code that
# is neither 0x00 (a stuffed zero) nor 0xFF; any bytes before it are skipped, as libjpeg does.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
_JPEG_SOF = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}  # JPEG; JPEG-LS SOF55
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: markers alone


def jpeg_frame_size(codestream: bytes) -> tuple[int, int] | None:
    """(width, height) in the first frame header (SOF) of a JPEG or JPEG-LS codestream, found
    segment by segment from SOI as the decoders find it. pydicom's own parser stops at fill
    bytes where the decoders skip them, so a codestream could show it one frame header and the
    decoder another."""
    if not codestream.startswith(b"\xff\xd8"):
        return None
    position = 2
    while match := _JPEG_MARKER.search(codestream, position):
        marker, position = match[1][0], match.end()
        if marker in _JPEG_SOF:  # length (2), precision (1), height (2), width (2)
            if len(codestream) < position + 7:
                return None
            height, width = struct.unpack_from(">HH", codestream, position + 3)
            return width, height
        if marker in (_JPEG_SOS, _JPEG_EOI):
            return None
        if marker not in _JPEG_NO_LENGTH:
            if len(codestream) < position + 2:
                return None
            position += struct.unpack_from(">H", codestream, position)[0]
    return None


_J2K_START = b"\xff\x4f\xff\x51"  # SOC, then SIZ: how every JPEG 2000 codestream begins


def j2k_frame_size(codestream: bytes) -> tuple[int, int] | None:
    """(width, height) in the SIZ segment of a JPEG 2000 codestream (ISO 15444-1 A.5.1): bare,
    as DICOM stores it, or in the 'jp2c' box of a JP2 file (some writers keep that header)."""
    start = 0 if codestream.startswith(_J2K_START) else _jp2_codestream_start(codestream)
    if start is None or codestream[start:start + 4] != _J2K_START or \
            len(codestream) < start + 24:
        return None
    width, height, left, top = struct.unpack_from(">4I", codestream, start + 8)
    return width - left, height - top


def _jp2_codestream_start(data: bytes) -> int | None:
    """Where the contiguous codestream box ('jp2c') of a JP2 file starts, box by box."""
    position = 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if length == 1 and position + 16 <= len(data):  # a 64-bit length follows the type
            length, header = struct.unpack_from(">Q", data, position + 8)[0], 16
        if kind == b"jp2c":
            return position + header
        if length < header:  # 0: the box runs to the end of the file, so no jp2c follows
            return None
        position += length
    return None


def rle_problem(codestream: bytes, plane: int) -> str | None:
    """Why an RLE frame (DICOM PS3.5 G) cannot be decoded within its Rows x Columns bytes per
    segment, or None. pydicom decodes each segment whole before comparing its length, and two
    bytes of PackBits can ask for 128: a small file could take gigabytes."""
    if len(codestream) < 64:
        return "RLE header cut short"
    count, *offsets = struct.unpack_from("<16I", codestream)
    if count > 15:
        return f"RLE header announces {count} segments (at most 15)"
    ends = [*offsets[1:count], len(codestream)]
    limit = plane + 128  # one run of slack: pydicom takes a segment a little long (it warns of
    # padding) and drops what is past the plane
    for segment, (start, end) in enumerate(zip(offsets[:count], ends), start=1):
        if _packbits_length(codestream[start:end], limit) > limit:
            return f"RLE segment {segment} decodes to more than Rows x Columns bytes"
    return None


# PackBits, by header byte: the bytes it decodes to (a literal run: the next header + 1 bytes;
# a replicate run: the next byte 257 - header times; 128: nothing) and the bytes it takes.
_PACKBITS_OUTPUT = [h + 1 if h < 128 else 257 - h if h > 128 else 0 for h in range(256)]
_PACKBITS_INPUT = [h + 2 if h < 128 else 2 if h > 128 else 1 for h in range(256)]


def _packbits_length(data: bytes, limit: int) -> int:
    """Bytes PackBits `data` decodes to, counted without decoding (at about half the time
    pydicom takes to decode it); stops once past `limit`."""
    length = position = 0
    end, output, step = len(data), _PACKBITS_OUTPUT, _PACKBITS_INPUT
    while position < end:
        header = data[position]
        length += output[header]
        position += step[header]
        if length > limit:
            break
    return length
