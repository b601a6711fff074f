"""Atomic writes: a reader never sees a half-written output, and a crash leaves the old file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image as PILImage

from sonocad.io.outputs import check_write, record_write


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path` in one step (a link
    at `path` is replaced, never followed)."""
    path = Path(path)
    check_write(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A short temporary name: a file name near the 255-byte limit still has room for it.
    fd, tmp = tempfile.mkstemp(prefix=".sonocad-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        record_write(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as JSON; a non-finite number (an area in mm from an absurd spacing, say) is written
    as null: JSON has no Infinity or NaN, and strict readers refuse them."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default,
                      allow_nan=False)
    write_text(path, text + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    return value


def save_png(path: str | Path, pixels: np.ndarray, compress_level: int = 6) -> None:
    """Save a uint8/uint16/bool array (H x W or H x W x 3/4) as PNG, atomically; a bool mask
    as 0/255. `compress_level` is zlib's (0-9; Pillow's default 6)."""
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    with atomic_open(path, "wb") as handle:
        PILImage.fromarray(pixels).save(handle, format="PNG", compress_level=compress_level)


def save_jpeg(path: str | Path, pixels: np.ndarray, quality: int = 90) -> None:
    """Save a uint8 grey or RGB array as JPEG, atomically (lossy: for pictures, never masks)."""
    with atomic_open(path, "wb") as handle:
        PILImage.fromarray(pixels).save(handle, format="JPEG", quality=quality)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
